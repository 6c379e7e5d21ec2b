//! `roomguard-sim`: serves the demo site over Modbus TCP and takes drill
//! scenarios from the command line, HTTP and stdin.

use anyhow::Context;
use clap::Parser;
use roomguard_sim::model::Scenario;
use roomguard_sim::{control, modbus, Simulator, TICK};
use std::future::IntoFuture;
use std::net::SocketAddr;
use tokio::net::TcpListener;

#[derive(Parser)]
#[command(
    version,
    about = "RoomGuard site simulator: Modbus TCP devices with drill scenarios"
)]
struct Args {
    /// Modbus TCP listen address (port 0 picks a free port; the ready line tells which).
    #[arg(long, default_value = "127.0.0.1:5020")]
    modbus: SocketAddr,
    /// HTTP control listen address.
    #[arg(long, default_value = "127.0.0.1:5080")]
    control: SocketAddr,
    /// Scenario at start: normal, ac_failure, thermal_runaway, mains_failure, smoke.
    #[arg(long, default_value = "normal")]
    scenario: Scenario,
    /// Noise seed, for repeatable runs.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Simulated seconds per real second.
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    anyhow::ensure!(
        args.speed.is_finite() && args.speed > 0.0,
        "--speed must be a positive number"
    );

    let sim = Simulator::new(args.scenario, args.seed, args.speed);
    let modbus_listener = TcpListener::bind(args.modbus)
        .await
        .with_context(|| format!("cannot listen for Modbus TCP on {}", args.modbus))?;
    let control_listener = TcpListener::bind(args.control)
        .await
        .with_context(|| format!("cannot listen for control HTTP on {}", args.control))?;
    let modbus_addr = modbus_listener.local_addr()?;
    let control_addr = control_listener.local_addr()?;

    let ticker = {
        let sim = sim.clone();
        async move {
            let mut every = tokio::time::interval(TICK);
            loop {
                every.tick().await;
                sim.tick();
            }
        }
    };
    tokio::spawn(control::read_commands(sim.clone(), tokio::io::stdin()));

    // Tests and scripts wait for this line rather than sleeping.
    println!(
        "{}",
        serde_json::json!({"event": "ready", "modbus": modbus_addr, "control": control_addr})
    );
    tracing::info!(%modbus_addr, %control_addr, scenario = %args.scenario, "simulator serving");

    let service = modbus::SiteService::new(sim.site());
    tokio::select! {
        () = ticker => Ok(()),
        res = modbus::serve(modbus_listener, service) => res.context("Modbus server stopped"),
        res = axum::serve(control_listener, control::router(sim.clone())).into_future() => {
            res.context("control server stopped")
        }
        _ = tokio::signal::ctrl_c() => {
            tracing::info!("interrupted, stopping");
            Ok(())
        }
    }
}
