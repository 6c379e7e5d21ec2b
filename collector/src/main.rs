//! `roomguard-collector`: parse flags, load the config, wire ingest, store,
//! broker and API, run until a signal.

use anyhow::Context;
use clap::{Parser, Subcommand};
use roomguard_collector::config::{CollectorConfig, SAMPLE};
use roomguard_collector::{alarm, api, broker, confirm, influx, ingest, metrics::Metrics, store};
use roomguard_protocol::conf::BrokerUrl;
use std::path::PathBuf;
use std::sync::Arc;

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
        /// The file (html, json) or folder (csv) to write.
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
            let written = report_cmd(&cfg, month, year, site, &format, &lang, &out)?;
            println!(
                "{}",
                serde_json::json!({
                    "event": "report", "files": written,
                    "seconds": started.elapsed().as_secs_f64(),
                })
            );
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
                eprintln!("{e}");
                std::process::exit(2);
            }
        },
        Command::Run { config } => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info,rumqttd=warn".into()),
                )
                .with_writer(std::io::stderr)
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
                .block_on(run(cfg))
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

async fn run(cfg: CollectorConfig) -> anyhow::Result<()> {
    // HTTPS (the InfluxDB sink) uses rustls with the ring provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let metrics = Arc::new(Metrics::default());
    let mut security = cfg.mqtt.security.clone();
    let mut mqtts = None;
    let broker_url = match cfg.broker() {
        Some(url) => url.map_err(anyhow::Error::msg)?,
        None => {
            let mut users = std::collections::HashMap::new();
            for (i, u) in cfg.mqtt.embedded_users.iter().enumerate() {
                let pw = u
                    .password
                    .resolve()
                    .map_err(|e| anyhow::anyhow!("mqtt.embedded_users[{i}].password: {e}"))?
                    .unwrap_or_default();
                users.insert(u.name.clone(), pw);
            }
            if !users.is_empty() {
                // The collector's own login, new at every start, never written down.
                let password = roomguard_collector::auth::random_hex(24);
                users.insert(INTERNAL_USER.to_owned(), password.clone());
                security.username = Some(INTERNAL_USER.to_owned());
                security.password = Some(roomguard_protocol::conf::Secret {
                    value: Some(password),
                    ..Default::default()
                });
            }
            let addr = broker::start(
                cfg.mqtt.embedded_listen,
                roomguard_protocol::MAX_PAYLOAD_BYTES * 2,
                users,
                cfg.mqtt.embedded_log_mib,
            )?;
            if let Some(t) = &cfg.mqtt.embedded_tls {
                let config = api::tls::server_config_with(
                    &t.cert_file,
                    &t.key_file,
                    t.client_ca_file.as_deref(),
                )
                .map_err(|e| anyhow::anyhow!("mqtt.embedded_tls: {e}"))?;
                let listener =
                    tokio::net::TcpListener::bind(t.listen)
                        .await
                        .with_context(|| {
                            format!("mqtt.embedded_tls.listen: cannot listen on {}", t.listen)
                        })?;
                mqtts = Some(listener.local_addr()?);
                let listener = api::tls::TlsListener::new(listener, config)?;
                tokio::spawn(broker::serve_tls(listener, addr));
            }
            BrokerUrl {
                host: addr.ip().to_string(),
                port: addr.port(),
                tls: false,
            }
        }
    };
    let mut writer = store::sqlite::SqliteWriter::open(&cfg.store.path)?
        .with_retention(cfg.store.retention.policy())
        .with_cache_mib(cfg.store.cache_mib)?;
    let wake = Arc::new(tokio::sync::Notify::new());
    let alarms = if cfg.alarms.enabled {
        let rules = Arc::new(cfg.alarms.rules().map_err(|e| anyhow::anyhow!("{e}"))?);
        let setup = store::sqlite::AlarmSetup {
            rules: rules.clone(),
            routes: cfg.alarms.routes(),
            escalation: cfg.alarms.escalation(),
        };
        writer = writer.with_alarms(setup, store::now_ms())?;
        let sender = alarm::notify::Sender::new(
            &cfg.alarms.channels,
            cfg.store.path.clone(),
            wake.clone(),
            metrics.clone(),
            &cfg.http.time_zone,
            cfg.alarms.link.clone(),
        )
        .map_err(anyhow::Error::msg)?;
        tokio::spawn(sender.run());
        tracing::info!(
            rules = rules.rules.len(),
            channels = cfg.alarms.channels.len(),
            "alarm engine on"
        );
        Some(Arc::new(api::alarms::AlarmsApi {
            rules,
            routes: cfg.alarms.routes(),
            wake: wake.clone(),
        }))
    } else {
        tracing::warn!("alarms are off (alarms.enabled = false)");
        None
    };
    let confirmations = Arc::new(confirm::Confirmations::default());
    let sink = match &cfg.influx {
        Some(influx) => {
            let settings = influx
                .settings()
                .map_err(|e| anyhow::anyhow!("influx.token: {e}"))?;
            // Tags for points described before this start.
            let reader = store::sqlite::SqliteReader::open(&cfg.store.path)?;
            let mut catalogue = influx::Catalogue::new();
            for p in reader.points(&store::history::PointFilter::default())? {
                let tags = influx::PointTags {
                    room: p.room,
                    quantity: p.quantity,
                    unit: p.unit,
                };
                catalogue.entry(p.site).or_default().insert(p.point, tags);
            }
            tracing::info!(url = %influx.url, bucket = %influx.bucket, "writing readings to InfluxDB too");
            Some(influx::spawn(settings, catalogue, metrics.clone())?)
        }
        None => None,
    };
    let live = Arc::new(roomguard_collector::live::Live::default());
    let wake_inspection = wake.clone();
    tokio::spawn(live.clone().run());
    let (store_tx, writer_thread) = store::spawn_writer(
        writer,
        metrics.clone(),
        confirmations.clone(),
        sink,
        wake,
        live.clone(),
    )
    .context("cannot start the store writer")?;

    if cfg.inspection.enabled {
        let inspector = roomguard_collector::inspection::task::Inspector {
            store: cfg.store.path.clone(),
            cfg: cfg.inspection.clone(),
            rules: alarms.as_ref().map(|a| a.rules.clone()),
            routes: cfg.alarms.routes(),
            tz: jiff::tz::TimeZone::get(&cfg.http.time_zone)
                .context("http.time_zone: unknown time zone")?,
            wake: wake_inspection,
            live: live.clone(),
        };
        tokio::spawn(Arc::new(inspector).run());
    }

    // Bound before the first admin is made: a one-time password printed by a
    // start that then fails on a busy port would be shown for nothing.
    let listener = tokio::net::TcpListener::bind(cfg.http.listen)
        .await
        .with_context(|| format!("http.listen: cannot listen on {}", cfg.http.listen))?;
    let (auth, admin_password) = roomguard_collector::auth::Auth::init(&cfg.store.path, &cfg.auth)
        .map_err(|e| anyhow::anyhow!("auth: {e}"))?;
    if let Some(password) = admin_password {
        // Shown once, here; only its hash is kept.
        println!(
            "{}",
            serde_json::json!({"event": "admin_created", "user": "admin", "password": password})
        );
        tracing::warn!("created user admin with a one-time password printed on standard output; change it (POST /api/v1/users/admin/password)");
    }
    if !cfg.auth.enabled {
        tracing::warn!(
            "authentication is off (auth.enabled = false): anyone who reaches the API is an admin"
        );
    }
    let auth = Arc::new(auth);
    let http_addr = listener.local_addr()?;
    let app = api::router(Arc::new(api::AppState {
        secure_cookies: cfg.http.tls.is_some(),
        store_path: cfg.store.path.clone(),
        metrics: metrics.clone(),
        time_zone: cfg.http.time_zone.clone(),
        retention: cfg.store.retention.policy(),
        alarms,
        auth,
        live: live.clone(),
        ui_dir: cfg.http.ui_dir.clone(),
        inspection: cfg.inspection.clone(),
    }));

    // Files named in [mqtt.security] were read at load; read them again now
    // so one that vanished since stops the start instead of ingest.
    security
        .apply(
            &broker_url,
            &mut rumqttc::MqttOptions::new("check", broker_url.host.clone(), broker_url.port),
        )
        .map_err(|e| anyhow::anyhow!("mqtt.security: {e}"))?;
    let ingest = tokio::spawn(ingest::run(
        ingest::Settings {
            broker: broker_url.clone(),
            security,
            client_id: cfg.mqtt.client_id.clone(),
            max_points_per_agent: cfg.store.max_points_per_agent,
            secret: Arc::new(
                roomguard_protocol::AgentSecret::new(
                    &cfg.agents.secret().map_err(anyhow::Error::msg)?,
                )
                .map_err(|e| anyhow::anyhow!("agents.secret: {e}"))?,
            ),
        },
        metrics.clone(),
        store_tx,
        confirmations,
    ));

    // Scripts and tests wait for this line instead of sleeping.
    println!(
        "{}",
        serde_json::json!({
            "event": "ready",
            "http": http_addr,
            "https": cfg.http.tls.is_some(),
            "mqtt": format!("{}:{}", broker_url.host, broker_url.port),
            "mqtts": mqtts,
        })
    );
    tracing::info!(%http_addr, broker = %format!("{}:{}", broker_url.host, broker_url.port), "collector serving");

    match &cfg.http.tls {
        Some(t) => {
            let config = api::tls::server_config(&t.cert_file, &t.key_file)
                .map_err(|e| anyhow::anyhow!("http.tls: {e}"))?;
            api::serve::serve(
                api::tls::TlsListener::new(listener, config)?,
                app,
                shutdown_signal(live),
            )
            .await;
        }
        None => api::serve::serve(listener, app, shutdown_signal(live)).await,
    }

    tracing::info!("shutting down: finishing queued writes");
    ingest.abort();
    let _ = ingest.await;
    // The writer stops once the last sender (held by ingest) is gone, after
    // committing what was queued.
    let _ = tokio::task::spawn_blocking(move || writer_thread.join()).await;
    Ok(())
}

/// The embedded broker's login for the collector itself, when it has users.
const INTERNAL_USER: &str = "roomguard-collector-internal";

/// `roomguard-collector report`: builds the report on a read-only
/// connection and writes it; returns the files written.
fn report_cmd(
    cfg: &CollectorConfig,
    month: Option<String>,
    year: Option<String>,
    site: Option<String>,
    format: &str,
    lang: &str,
    out: &std::path::Path,
) -> anyhow::Result<Vec<PathBuf>> {
    use roomguard_collector::inspection::{render, report};
    let lang = render::Lang::parse(lang).context("--lang: en or zh-CN")?;
    anyhow::ensure!(
        matches!(format, "html" | "json" | "csv"),
        "--format: html, json or csv"
    );
    let tz = jiff::tz::TimeZone::get(&cfg.http.time_zone).context("http.time_zone")?;
    let rules = if cfg.alarms.enabled {
        Some(cfg.alarms.rules().map_err(|e| anyhow::anyhow!("{e}"))?)
    } else {
        None
    };
    let schedule = cfg.inspection.schedule();
    let reader = store::sqlite::SqliteReader::open(&cfg.store.path)?;
    let inp = report::Inputs {
        rules: rules.as_ref(),
        schedule: &schedule,
        tz: &tz,
        schedule_tz: &tz,
        now: store::now_ms(),
    };
    let site = site.as_deref();
    // The report as its renderings, each made only when asked for.
    enum Built {
        Month(report::Report),
        Year(report::YearReport),
    }
    let built = match (month, year) {
        (Some(m), _) => {
            let p = report::month(&m, &tz).map_err(anyhow::Error::msg)?;
            Built::Month(report::build(reader.conn(), site, &p, &inp)?)
        }
        (None, Some(y)) => Built::Year(report::build_year(reader.conn(), site, &y, &inp)?),
        (None, None) => anyhow::bail!("give --month or --year"),
    };
    let write = |path: &std::path::Path, text: String| {
        std::fs::write(path, text).with_context(|| path.display().to_string())
    };
    let mut written = Vec::new();
    match (format, &built) {
        ("csv", b) => {
            std::fs::create_dir_all(out).with_context(|| out.display().to_string())?;
            for t in render::TABLES {
                let path = out.join(format!("{t}.csv"));
                let text = match b {
                    Built::Month(r) => render::csv(r, t, &tz),
                    Built::Year(r) => render::csv_year(r, t, &tz),
                };
                write(&path, text.unwrap_or_default())?;
                written.push(path);
            }
        }
        ("json", Built::Month(r)) => write(out, serde_json::to_string_pretty(r)?)?,
        ("json", Built::Year(r)) => write(out, serde_json::to_string_pretty(r)?)?,
        (_, Built::Month(r)) => write(out, render::html_month(r, lang, &tz))?,
        (_, Built::Year(r)) => write(out, render::html_year(r, lang, &tz))?,
    }
    if format != "csv" {
        written.push(out.to_owned());
    }
    Ok(written)
}

/// Completes on Ctrl-C or SIGTERM, after ending the open event streams
/// (the HTTP server waits for every connection to finish).
async fn shutdown_signal(live: Arc<roomguard_collector::live::Live>) {
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
    live.close();
}
