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
                roomguard_protocol::conf::refused_by_validate(&config, &e);
                Ok(())
            }
        },
        Command::Run { config } => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info".into()),
                )
                .with_writer(std::io::stderr)
                // Colour codes only on a terminal, never in a log file or journal.
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .init();
            let agent = match AgentConfig::load(&config) {
                Ok(agent) => agent,
                Err(e) => {
                    eprintln!("{e}");
                    std::process::exit(2);
                }
            };
            keep_heap_between_bursts();
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
                roomguard_agent::run::run(agent, roomguard_protocol::clock::shutdown_signal()).await
            })?;
            Ok(())
        }
    }
}

/// Polls arrive in bursts (devices share a few phases per interval), each
/// allocating and freeing a few hundred KiB. glibc gave that back to the
/// kernel after every burst (`brk`) and faulted it back in, zeroed, at the
/// next: several system calls and a hundred page faults a second, for
/// nothing. Keeping up to 2 MiB of free heap costs that much memory at most.
fn keep_heap_between_bursts() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it is called before
    // any other thread exists.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 2 << 20);
        // Setting the trim threshold fixes the mmap threshold too (glibc
        // stops adapting it); keep bursts' buffers on the heap.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}
