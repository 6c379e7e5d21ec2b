//! `roomguard-sim`: serves the demo site over Modbus TCP (a gateway with
//! every device behind it), Modbus RTU on a serial line, and SNMP (UPS and
//! PDU), and takes drill scenarios from the command line, HTTP and stdin.

use anyhow::Context;
use clap::Parser;
use roomguard_sim::model::Scenario;
use roomguard_sim::{bench_site, control, modbus, snmp, Simulator, TICK};
use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinSet;

#[derive(Parser)]
#[command(
    version,
    about = "RoomGuard site simulator: Modbus and SNMP devices with drill scenarios"
)]
struct Args {
    /// Modbus TCP gateway listen address (port 0 picks a free port; the ready line tells which).
    #[arg(long, default_value = "127.0.0.1:5020")]
    modbus: SocketAddr,
    /// HTTP control listen address.
    #[arg(long, default_value = "127.0.0.1:5080")]
    control: SocketAddr,
    /// SNMP v1/v2c agent of the UPS (UPS-MIB), UDP.
    #[arg(long, default_value = "127.0.0.1:1161")]
    snmp_ups: SocketAddr,
    /// SNMP v1/v2c agent of the metered PDU (PowerNet-MIB outlet table), UDP.
    #[arg(long, default_value = "127.0.0.1:1162")]
    snmp_pdu: SocketAddr,
    /// More SNMP agents on one port, told apart by community: `eaton` (XUPS-MIB
    /// UPS), `liebert` (precision air conditioner), `geist` and `apc-env`
    /// (environment probes), `apc-ats` (transfer switch).
    #[arg(long, default_value = "127.0.0.1:1164")]
    snmp_annex: SocketAddr,
    /// Community both SNMP agents answer to.
    #[arg(long, default_value = "public")]
    snmp_community: String,
    /// Also serve every device as Modbus RTU on this serial port (e.g. one end
    /// of a socat pty pair). May be given more than once.
    #[arg(long)]
    rtu: Vec<String>,
    #[arg(long, default_value_t = 9600)]
    rtu_baud: u32,
    /// Scenario at start: normal, ac_failure, thermal_runaway, mains_failure, smoke,
    /// phase_unbalance, gas_leak, co_rise, earth_leakage, insulation_fault, door_open,
    /// ventilation_failure, ats_transfer, battery_test.
    #[arg(long, default_value = "normal")]
    scenario: Scenario,
    /// Noise seed, for repeatable runs.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Simulated seconds per real second.
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// Benchmark mode: serve this many extra Modbus TCP devices, each on its
    /// own port, each with `--bench-registers` holding registers.
    #[arg(long, default_value_t = 0)]
    bench_devices: u16,
    #[arg(long, default_value_t = 100)]
    bench_registers: u16,
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
    anyhow::ensure!(
        (1..=125).contains(&args.bench_registers),
        "--bench-registers must be 1–125"
    );

    let sim = Simulator::new(args.scenario, args.seed, args.speed);
    let modbus_listener = TcpListener::bind(args.modbus)
        .await
        .with_context(|| format!("cannot listen for Modbus TCP on {}", args.modbus))?;
    let control_listener = TcpListener::bind(args.control)
        .await
        .with_context(|| format!("cannot listen for control HTTP on {}", args.control))?;
    let ups_socket = UdpSocket::bind(args.snmp_ups)
        .await
        .with_context(|| format!("cannot listen for SNMP (UPS) on {}", args.snmp_ups))?;
    let pdu_socket = UdpSocket::bind(args.snmp_pdu)
        .await
        .with_context(|| format!("cannot listen for SNMP (PDU) on {}", args.snmp_pdu))?;
    let annex_socket = UdpSocket::bind(args.snmp_annex)
        .await
        .with_context(|| format!("cannot listen for SNMP (annex) on {}", args.snmp_annex))?;
    let annex_addr = annex_socket.local_addr()?;
    let modbus_addr = modbus_listener.local_addr()?;
    let control_addr = control_listener.local_addr()?;
    let ups_addr = ups_socket.local_addr()?;
    let pdu_addr = pdu_socket.local_addr()?;

    let mut tasks: JoinSet<anyhow::Result<()>> = JoinSet::new();
    let service = modbus::SiteService::gateway(sim.site());
    tasks.spawn(async move {
        modbus::serve(modbus_listener, service)
            .await
            .context("Modbus TCP server")
    });
    let app = control::router(sim.clone());
    tasks.spawn(async move {
        axum::serve(control_listener, app)
            .into_future()
            .await
            .context("control server")
    });
    let community = args.snmp_community.clone().into_bytes();
    tasks.spawn(snmp_task(ups_socket, sim.ups_mib(), community.clone()));
    tasks.spawn(snmp_task(pdu_socket, sim.pdu_mib(), community));
    let annex = sim.annex_mibs();
    tasks.spawn(async move {
        snmp::serve_by_community(annex_socket, annex)
            .await
            .context("SNMP annex agents")
    });
    for path in args.rtu.clone() {
        let service = modbus::SiteService::serial_line(sim.site());
        let baud = args.rtu_baud;
        tasks.spawn(async move {
            modbus::serve_rtu(&path, baud, service)
                .await
                .with_context(|| format!("Modbus RTU on {path}"))
        });
    }

    let bench = Arc::new(RwLock::new(bench_site(args.bench_registers, 0)));
    let mut bench_addrs = Vec::new();
    for _ in 0..args.bench_devices {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        bench_addrs.push(listener.local_addr()?);
        let service = modbus::SiteService::gateway(bench.clone());
        tasks.spawn(async move {
            modbus::serve(listener, service)
                .await
                .context("bench Modbus server")
        });
    }

    tasks.spawn({
        let sim = sim.clone();
        let bench_registers = args.bench_registers;
        let benching = args.bench_devices > 0;
        async move {
            let mut every = tokio::time::interval(TICK);
            let mut n = 0u64;
            loop {
                every.tick().await;
                sim.tick();
                if benching {
                    n += 1;
                    *bench.write().unwrap_or_else(|p| p.into_inner()) =
                        bench_site(bench_registers, n);
                }
            }
        }
    });
    tokio::spawn(control::read_commands(sim.clone(), tokio::io::stdin()));

    // Tests and scripts wait for this line rather than sleeping.
    println!(
        "{}",
        serde_json::json!({
            "event": "ready",
            "modbus": modbus_addr,
            "control": control_addr,
            "snmp_ups": ups_addr,
            "snmp_pdu": pdu_addr,
            "snmp_annex": annex_addr,
            "rtu": args.rtu,
            "bench": bench_addrs,
        })
    );
    tracing::info!(%modbus_addr, %control_addr, %ups_addr, %pdu_addr, scenario = %args.scenario, "simulator serving");

    tokio::select! {
        Some(res) = tasks.join_next() => match res {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(anyhow::anyhow!("a simulator task failed: {e}")),
        },
        _ = tokio::signal::ctrl_c() => {
            tracing::info!("interrupted, stopping");
            Ok(())
        }
    }
}

async fn snmp_task(
    socket: UdpSocket,
    mib: Arc<RwLock<snmp::Mib>>,
    community: Vec<u8>,
) -> anyhow::Result<()> {
    snmp::serve(socket, mib, community)
        .await
        .context("SNMP agent")
}
