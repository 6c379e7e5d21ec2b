//! `roomguard-collector`: parses the command line, loads the configuration
//! and calls the library (`app` wires and runs the collector).

use anyhow::Context;
use clap::{Parser, Subcommand};
use roomguard_collector::config::{CollectorConfig, SAMPLE};
use roomguard_collector::{app, store};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    version,
    about = "RoomGuard collector: stores readings from MQTT and serves the API"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Ingest, store and serve.
    Run {
        /// Collector configuration file (TOML).
        config: PathBuf,
    },
    /// Check a configuration file and report every problem by its path.
    Validate { config: PathBuf },
    /// Print a commented sample configuration.
    SampleConfig,
    /// Print a new random secret for `[agents] secret` (64 hex digits).
    GenSecret,
    /// Print the key of one agent (its `mqtt.key`), derived from the
    /// configuration's `[agents] secret`.
    AgentKey {
        /// Collector configuration file (TOML).
        config: PathBuf,
        site: String,
        agent: String,
    },
    /// Copy the store to a new file while the collector runs (SQLite's
    /// online backup: a consistent snapshot, ingest is not stopped).
    Backup {
        /// Collector configuration file (TOML), for the store's path.
        config: PathBuf,
        /// The copy to write; must not exist yet.
        dest: PathBuf,
    },
    /// Copy a SQLite store into PostgreSQL (samples, rollups, alarms,
    /// outbox, users, audit, inspection records), resumable if
    /// interrupted, counts verified at the end. Stop the collector first.
    Migrate {
        /// Collector configuration file (TOML) of the SQLite store.
        config: PathBuf,
        /// The PostgreSQL database: postgresql://user@host:port/dbname.
        #[arg(long)]
        to: String,
        /// A file holding the password (else PGPASSWORD, else none).
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// The CA certificate (PEM) to check the server's against over TLS.
        #[arg(long)]
        ca_file: Option<PathBuf>,
        /// Rows per transaction (and per step an interrupted copy resumes from).
        #[arg(long, default_value_t = 50_000)]
        chunk_rows: usize,
    },
    /// Write a monthly or yearly safety report from the store (read-only;
    /// works beside a running collector or on a backup copy).
    Report {
        /// Collector configuration file (TOML): store, rules, time zone, patrol schedule.
        config: PathBuf,
        /// A month, like 2026-11.
        #[arg(long, conflicts_with = "year", required_unless_present = "year")]
        month: Option<String>,
        /// A year, like 2026: the months one by one.
        #[arg(long)]
        year: Option<String>,
        /// One site; all sites when absent.
        #[arg(long)]
        site: Option<String>,
        /// html (printable), json, or csv (a folder with one file per table).
        #[arg(long, default_value = "html")]
        format: String,
        /// zh-CN or en (html only).
        #[arg(long, default_value = "zh-CN")]
        lang: String,
        /// The file (html, json) or folder (csv) to write; `-` for standard
        /// output (html, json).
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args.command {
        Command::SampleConfig => {
            print!("{SAMPLE}");
            Ok(())
        }
        Command::GenSecret => {
            println!("{}", roomguard_collector::auth::random_hex(32));
            Ok(())
        }
        Command::AgentKey {
            config,
            site,
            agent,
        } => {
            let cfg = load_or_exit(&config);
            for (what, id) in [("site", &site), ("agent", &agent)] {
                if let Err(e) = roomguard_protocol::validate_id(id) {
                    eprintln!("{what} {id:?} {e}");
                    std::process::exit(2);
                }
            }
            let secret = cfg.agents.secret().map_err(anyhow::Error::msg)?;
            let key = roomguard_protocol::AgentKey::derive_hex(&secret, &site, &agent)
                .map_err(anyhow::Error::msg)?;
            println!("{key}");
            Ok(())
        }
        Command::Backup { config, dest } => {
            let cfg = load_or_exit(&config);
            if cfg.store.backend == roomguard_collector::config::Backend::Postgres {
                eprintln!("{}", app::POSTGRES_BACKUP);
                std::process::exit(2);
            }
            let started = std::time::Instant::now();
            store::sqlite::backup(&cfg.store.path, &dest, |done, total| {
                eprintln!("backup: {done}/{total} pages");
            })?;
            println!(
                "{}",
                serde_json::json!({
                    "event": "backup",
                    "from": cfg.store.path,
                    "to": dest,
                    "bytes": std::fs::metadata(&dest).map(|m| m.len()).unwrap_or(0),
                    "seconds": started.elapsed().as_secs_f64(),
                })
            );
            Ok(())
        }
        Command::Migrate {
            config,
            to,
            password_file,
            ca_file,
            chunk_rows,
        } => {
            let cfg = load_or_exit(&config);
            if cfg.store.backend != roomguard_collector::config::Backend::Sqlite {
                eprintln!("{}: store.backend: migrate copies a SQLite store; this one is already on PostgreSQL", config.display());
                std::process::exit(2);
            }
            let password = match password_file {
                Some(f) => Some(
                    std::fs::read_to_string(&f)
                        .map(|s| s.trim_end_matches(['\r', '\n']).to_owned())
                        .with_context(|| format!("--password-file {}", f.display()))?,
                ),
                None => std::env::var("PGPASSWORD").ok(),
            };
            let started = std::time::Instant::now();
            let copied = app::migrate(
                &cfg,
                &to,
                password.as_deref(),
                ca_file.as_deref(),
                chunk_rows.max(1),
            )?;
            println!(
                "{}",
                serde_json::json!({
                    "event": "migrated", "to": to, "tables": copied,
                    "seconds": started.elapsed().as_secs_f64(),
                })
            );
            Ok(())
        }
        Command::Report {
            config,
            month,
            year,
            site,
            format,
            lang,
            out,
        } => {
            let cfg = load_or_exit(&config);
            let started = std::time::Instant::now();
            let written = app::report(&cfg, month, year, site, &format, &lang, &out)?;
            let done = serde_json::json!({
                "event": "report", "files": written,
                "seconds": started.elapsed().as_secs_f64(),
            });
            // Standard output carries the report itself when `--out -`.
            if out.as_os_str() == "-" {
                eprintln!("{done}");
            } else {
                println!("{done}");
            }
            Ok(())
        }
        Command::Validate { config } => match CollectorConfig::load(&config) {
            Ok(cfg) => {
                for w in cfg.warnings() {
                    eprintln!("warning: {w}");
                }
                println!("{}: ok", config.display());
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
                        .unwrap_or_else(|_| "info,rumqttd=warn".into()),
                )
                .with_writer(std::io::stderr)
                // Colour codes only on a terminal, never in a log file or journal.
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .init();
            let cfg = match CollectorConfig::load(&config) {
                Ok(cfg) => {
                    for w in cfg.warnings() {
                        tracing::warn!("{w}");
                    }
                    cfg
                }
                Err(e) => {
                    eprintln!("{e}");
                    std::process::exit(2);
                }
            };
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?
                .block_on(app::run(cfg))
        }
    }
}

/// The configuration, or its problems on standard error and exit code 2.
fn load_or_exit(config: &std::path::Path) -> CollectorConfig {
    match CollectorConfig::load(config) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    }
}
