//! `roomguard-agent`: parse flags, load the config, run until a signal.

use anyhow::Context;
use clap::{Parser, Subcommand};
use roomguard_agent::config::{AgentConfig, SAMPLE};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    version,
    about = "RoomGuard edge agent: polls Modbus and SNMP devices and publishes readings to MQTT"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Poll the configured devices and publish their readings.
    Run {
        /// Agent configuration file (TOML).
        config: PathBuf,
    },
    /// Check a configuration file and report every problem by its path.
    Validate { config: PathBuf },
    /// Print a commented sample configuration.
    SampleConfig,
    /// Print the built-in device profiles.
    Profiles,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args.command {
        Command::SampleConfig => {
            print!("{SAMPLE}");
            Ok(())
        }
        Command::Profiles => {
            for (file, text) in roomguard_agent::profiles::Profiles::built_in() {
                println!("# ---- {file}\n{text}");
            }
            Ok(())
        }
        Command::Validate { config } => match AgentConfig::load(&config) {
            Ok(agent) => {
                for w in &agent.warnings {
                    eprintln!("warning: {w}");
                }
                println!(
                    "{}: ok ({} devices on {} Modbus buses and SNMP, {} scalar points)",
                    config.display(),
                    agent.device_count(),
                    agent.buses.len(),
                    agent.point_count()
                );
                Ok(())
            }
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(2);
            }
        },
        Command::Run { config } => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info".into()),
                )
                .with_writer(std::io::stderr)
                .init();
            let agent = match AgentConfig::load(&config) {
                Ok(agent) => agent,
                Err(e) => {
                    eprintln!("{e}");
                    std::process::exit(2);
                }
            };
            // One thread: an agent spends its life waiting on devices, and a
            // single-threaded runtime has no cross-thread wake-ups and no
            // per-thread allocator arenas, which keeps CPU and memory small
            // on the boxes it runs on.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            for w in &agent.warnings {
                tracing::warn!("{w}");
            }
            runtime.block_on(async {
                let cfg = &agent.config;
                tracing::info!(site = %cfg.site, agent = %cfg.agent, broker = %cfg.mqtt.url, "agent starting");
                roomguard_agent::run::run(agent, shutdown_signal()).await
            })?;
            Ok(())
        }
    }
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
