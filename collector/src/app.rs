//! The collector's wiring: the embedded broker (or an external one), the
//! store writer with the alarm engine, the notification sender, the sinks,
//! the inspection round, ingest and the API, run until a signal; and the
//! commands that work on a store (report). `main.rs` only parses the
//! command line and calls these.

use crate::config::CollectorConfig;
use crate::{alarm, api, broker, confirm, ingest, metrics::Metrics, sinks::influx, store};
use anyhow::Context;
use roomguard_protocol::conf::BrokerUrl;
use std::path::PathBuf;
use std::sync::Arc;

/// Ingests, stores and serves until Ctrl-C or SIGTERM.
pub async fn run(cfg: CollectorConfig) -> anyhow::Result<()> {
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
                let password = crate::auth::random_hex(24);
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
    let (writer, reads) = open_store(&cfg).await?;
    let mut writer = writer;
    // In a cluster the leases decide which sites this node writes for; the
    // lease rounds start now, before ingest, so its first subscriptions
    // follow them.
    let mut cluster_stop = None;
    let cluster = if cfg.cluster.enabled {
        let c = crate::cluster::Cluster::new(&cfg.cluster, format!("http://{}", cfg.http.listen));
        writer = match writer {
            store::backend::Writer::Postgres(p) => {
                store::backend::Writer::Postgres(p.in_cluster(c.clone()))
            }
            store::backend::Writer::Sqlite(_) => {
                anyhow::bail!("cluster.enabled: needs store.backend = \"postgres\"")
            }
        };
        let target = cfg.store.postgres().map_err(anyhow::Error::msg)?;
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(crate::cluster::lease::run(c.clone(), target, done_tx));
        cluster_stop = Some(done_rx);
        tracing::info!(node = %c.node, partitions = c.partitions, lease = ?c.lease, "cluster mode: sites are shared with the other nodes");
        Some(c)
    } else {
        None
    };
    let wake = Arc::new(tokio::sync::Notify::new());
    let alarms = if cfg.alarms.enabled {
        let rules = Arc::new(cfg.alarms.rules().map_err(|e| anyhow::anyhow!("{e}"))?);
        let setup = store::alarms::AlarmSetup {
            rules: rules.clone(),
            routes: cfg.alarms.routes(),
            escalation: cfg.alarms.escalation(),
        };
        writer = writer.with_alarms(setup, roomguard_protocol::clock::now_ms())?;
        let sender = alarm::notify::Sender::new(
            &cfg.alarms.channels,
            reads.clone(),
            wake.clone(),
            metrics.clone(),
            &cfg.http.time_zone,
            cfg.alarms.link.clone(),
        )
        .map_err(anyhow::Error::msg)?;
        let sender = match &cluster {
            Some(c) => sender.claiming(c.node.clone(), c.lease),
            None => sender,
        };
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
            inboxes: cfg
                .alarms
                .channels
                .iter()
                .filter(|c| c.kind == alarm::notify::ChannelKind::Inbox)
                .map(|c| c.id.clone())
                .collect(),
            link: cfg.alarms.link.clone(),
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
            let mut catalogue = influx::Catalogue::new();
            let points = reads
                .points(store::history::PointFilter::default())
                .await
                .context("influx: the point catalogue for tags")?;
            for p in points {
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
    let live = Arc::new(crate::live::Live::default());
    let wake_inspection = wake.clone();
    tokio::spawn(live.clone().run());
    if let Some(c) = &cluster {
        // Dashboards open on this node show every site, wherever it is held.
        let (to_peers, frames) = tokio::sync::mpsc::channel(64);
        live.share_with_peers(to_peers);
        let target = cfg.store.postgres().map_err(anyhow::Error::msg)?;
        tokio::spawn(crate::cluster::push::run(
            live.clone(),
            c.clone(),
            target,
            frames,
        ));
    }
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
        let inspector = crate::inspection::task::Inspector {
            records: reads.clone(),
            cfg: cfg.inspection.clone(),
            rules: alarms.as_ref().map(|a| a.rules.clone()),
            routes: cfg.alarms.routes(),
            tz: jiff::tz::TimeZone::get(&cfg.http.time_zone)
                .context("http.time_zone: unknown time zone")?,
            wake: wake_inspection,
            live: live.clone(),
            cluster: cluster.clone(),
        };
        tokio::spawn(Arc::new(inspector).run());
    }

    // Bound before the first admin is made: a one-time password printed by a
    // start that then fails on a busy port would be shown for nothing.
    let listener = tokio::net::TcpListener::bind(cfg.http.listen)
        .await
        .with_context(|| format!("http.listen: cannot listen on {}", cfg.http.listen))?;
    let auth_store = match &reads {
        store::backend::Reads::Sqlite(path) => {
            store::auth::AuthStore::sqlite(path).map_err(|e| anyhow::anyhow!("auth: {e}"))?
        }
        store::backend::Reads::Postgres(pg) => {
            store::auth::AuthStore::postgres(pg.clone(), tokio::runtime::Handle::current())
        }
    };
    let auth = Arc::new(crate::auth::Auth::new(auth_store, &cfg.auth));
    first_admin(auth.clone(), cfg.auth.clone()).await?;
    if !cfg.auth.enabled {
        tracing::warn!(
            "authentication is off (auth.enabled = false): anyone who reaches the API is an admin"
        );
    }
    let http_addr = listener.local_addr()?;
    if let Some(c) = &cluster {
        c.bound(http_addr);
    }
    let app = api::router(Arc::new(api::AppState {
        names: cfg.names.clone(),
        secure_cookies: cfg.http.tls.is_some(),
        reads,
        metrics: metrics.clone(),
        time_zone: cfg.http.time_zone.clone(),
        retention: cfg.store.retention.policy(),
        alarms,
        auth,
        live: live.clone(),
        ui_dir: cfg.http.ui_dir.clone(),
        inspection: cfg.inspection.clone(),
        cluster: cluster.clone(),
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
            // One session per node: each subscribes to its own sites.
            client_id: match &cluster {
                Some(c) => format!("{}-{}", cfg.mqtt.client_id, c.node),
                None => cfg.mqtt.client_id.clone(),
            },
            max_points_per_agent: cfg.store.max_points_per_agent,
            secret: Arc::new(
                roomguard_protocol::AgentSecret::new(
                    &cfg.agents.secret().map_err(anyhow::Error::msg)?,
                )
                .map_err(|e| anyhow::anyhow!("agents.secret: {e}"))?,
            ),
            cluster: cluster.clone(),
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
    if let (Some(c), Some(done)) = (&cluster, cluster_stop) {
        // Written what was queued: hand the partitions over now rather
        // than at their expiry.
        c.leaving.store(true, std::sync::atomic::Ordering::Relaxed);
        match tokio::time::timeout(c.lease, done).await {
            Ok(_) => tracing::info!("cluster: leases handed over"),
            Err(_) => {
                tracing::warn!("cluster: could not hand the leases over; they expire by themselves")
            }
        }
    }
    Ok(())
}

/// Makes the first admin when there is no user, printing its one-time
/// password. PostgreSQL that cannot be reached yet is waited for in the
/// background (logins fail with 503 meanwhile), as the writer waits.
async fn first_admin(
    auth: Arc<crate::auth::Auth>,
    cfg: crate::auth::AuthConfig,
) -> anyhow::Result<()> {
    // One password for every attempt, so an admin made by an attempt whose
    // answer was lost is recognised (and its password said) by the next.
    let generated = crate::auth::random_hex(12);
    let attempt = {
        let (auth, cfg) = (auth.clone(), cfg.clone());
        move || auth.first_admin(&cfg, &generated)
    };
    let first = tokio::task::spawn_blocking(attempt.clone()).await?;
    let say = |password: Option<String>| {
        if let Some(password) = password {
            // Shown once, here; only its hash is kept.
            println!(
                "{}",
                serde_json::json!({"event": "admin_created", "user": "admin", "password": password})
            );
            tracing::warn!("created user admin with a one-time password printed on standard output; change it (POST /api/v1/users/admin/password)");
        }
    };
    match first {
        Ok(password) => say(password),
        Err(crate::auth::AuthError::Store(e)) if e.is_unreachable() => {
            tokio::spawn(async move {
                let mut wait = std::time::Duration::from_secs(1);
                loop {
                    tokio::time::sleep(wait).await;
                    match tokio::task::spawn_blocking(attempt.clone()).await {
                        Ok(Ok(password)) => return say(password),
                        Ok(Err(crate::auth::AuthError::Store(e))) if e.is_unreachable() => {}
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "cannot check for the first admin yet")
                        }
                        Err(e) => return tracing::error!(error = %e, "first admin check failed"),
                    }
                    wait = (wait * 2).min(std::time::Duration::from_secs(30));
                }
            });
        }
        Err(e) => anyhow::bail!("auth: {e}"),
    }
    Ok(())
}

/// The store's writer and reads, by `store.backend`.
///
/// PostgreSQL that cannot be reached now is not a reason to stop: the
/// writer connects when it can (retrying with backoff, `/healthz` saying
/// why, nothing acknowledged meanwhile). A setting PostgreSQL refuses (a
/// wrong password, a missing database, one of another application, a schema
/// newer than this build) stops the start with the setting named.
async fn open_store(
    cfg: &CollectorConfig,
) -> anyhow::Result<(store::backend::Writer, store::backend::Reads)> {
    use store::backend::{PgReads, PgWriting, Reads, Writer};
    match cfg.store.backend {
        crate::config::Backend::Sqlite => {
            let writer = store::sqlite::SqliteWriter::open(&cfg.store.path)?
                .with_retention(cfg.store.retention.policy())
                .with_cache_mib(cfg.store.cache_mib)?;
            Ok((
                Writer::Sqlite(writer),
                Reads::Sqlite(cfg.store.path.clone()),
            ))
        }
        crate::config::Backend::Postgres => {
            let target = cfg.store.postgres().map_err(anyhow::Error::msg)?;
            match store::postgres::writer::PgWriter::open(&target).await {
                Ok(_) => tracing::info!("PostgreSQL store ready"),
                Err(e) => {
                    let e = store::StoreError::from(e);
                    if !e.is_unreachable() {
                        return Err(e.into());
                    }
                    tracing::error!(error = %e, "PostgreSQL cannot be reached; the store writer keeps trying, and nothing is acknowledged until it can");
                }
            }
            Ok((
                Writer::Postgres(PgWriting::new(target.clone(), cfg.store.retention.policy())),
                Reads::Postgres(Arc::new(PgReads::new(target))),
            ))
        }
    }
}

/// The embedded broker's login for the collector itself, when it has users.
const INTERNAL_USER: &str = "roomguard-collector-internal";

/// `roomguard-collector report`: builds the report on a read-only
/// connection and writes it; returns the files written.
pub fn report(
    cfg: &CollectorConfig,
    month: Option<String>,
    year: Option<String>,
    site: Option<String>,
    format: &str,
    lang: &str,
    out: &std::path::Path,
) -> anyhow::Result<Vec<PathBuf>> {
    use crate::inspection::{render, report};
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
    // The store: the SQLite file, or a PostgreSQL connection driven by a
    // runtime of one worker (the report's reads block this thread).
    let reader;
    let rt;
    let client;
    let db = match cfg.store.backend {
        crate::config::Backend::Sqlite => {
            reader = store::sqlite::SqliteReader::open(&cfg.store.path)?;
            // The report reads only; an older file is upgraded by the
            // collector when it starts, not here.
            let version: i64 = reader
                .conn()
                .pragma_query_value(None, "user_version", |r| r.get(0))?;
            anyhow::ensure!(
                version == store::sqlite::SCHEMA_VERSION,
                "{}: store schema version {version}, this build reads {}: start the collector once \
                 (it upgrades the store), then make the report",
                cfg.store.path.display(),
                store::sqlite::SCHEMA_VERSION
            );
            store::sql::Db::lite(reader.conn())
        }
        crate::config::Backend::Postgres => {
            let target = cfg.store.postgres().map_err(anyhow::Error::msg)?;
            rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()?;
            let mut c = rt.block_on(store::postgres::connect_to(&target))?;
            // Refuses a newer schema, as the collector does.
            let name = target.config.get_dbname().unwrap_or("").to_owned();
            rt.block_on(store::postgres::migrate::migrate(&mut c, &name))?;
            client = c;
            store::sql::Db::pg(store::sql::Conn::Pg(&client), rt.handle())
        }
    };
    let inp = report::Inputs {
        rules: rules.as_ref(),
        schedule: &schedule,
        tz: &tz,
        schedule_tz: &tz,
        now: roomguard_protocol::clock::now_ms(),
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
            Built::Month(report::build(db, site, &p, &inp)?)
        }
        (None, Some(y)) => Built::Year(report::build_year(db, site, &y, &inp)?),
        (None, None) => anyhow::bail!("give --month or --year"),
    };
    // `--out -`: the report on standard output (html and json), to pipe or mail.
    let to_stdout = out == std::path::Path::new("-");
    anyhow::ensure!(
        !(to_stdout && format == "csv"),
        "--out -: csv is a folder of tables; give a folder, or use --format html or json for standard output"
    );
    let write = |path: &std::path::Path, text: String| {
        if to_stdout {
            use std::io::Write;
            return std::io::stdout()
                .lock()
                .write_all(text.as_bytes())
                .context("standard output");
        }
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
        ("json", Built::Month(r)) => write(out, render::json(r, &tz))?,
        ("json", Built::Year(r)) => write(out, render::json(r, &tz))?,
        (_, Built::Month(r)) => write(out, render::html_month(r, lang, &tz))?,
        (_, Built::Year(r)) => write(out, render::html_year(r, lang, &tz))?,
    }
    if format != "csv" && !to_stdout {
        written.push(out.to_owned());
    }
    Ok(written)
}

/// Completes on Ctrl-C or SIGTERM, after ending the open event streams
/// (the HTTP server waits for every connection to finish).
async fn shutdown_signal(live: Arc<crate::live::Live>) {
    roomguard_protocol::clock::shutdown_signal().await;
    live.close();
}

/// What `backup` says for a store on PostgreSQL.
pub const POSTGRES_BACKUP: &str = "store.backend = \"postgres\": RoomGuard does not copy a \
PostgreSQL store itself; back it up with PostgreSQL's own tools, as for any database: \
pg_dump -Fc (a logical copy of the one database) or pg_basebackup with WAL archiving \
(the whole cluster, restorable to any moment). See docs/POSTGRES.md, Backups.";

/// `roomguard-collector migrate`: copies the configured SQLite store into
/// the PostgreSQL database at `url`, saying how far it got on standard error.
pub fn migrate(
    cfg: &CollectorConfig,
    url: &str,
    password: Option<&str>,
    ca_file: Option<&std::path::Path>,
    chunk: usize,
) -> anyhow::Result<Vec<store::postgres::transfer::Copied>> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let target = store::postgres::target_of(url, password, ca_file).map_err(|e| {
        anyhow::anyhow!("--to: {}", e.to_string().trim_start_matches("store.url: "))
    })?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut last_said = (String::new(), std::time::Instant::now());
    let copied = rt
        .block_on(store::postgres::transfer::copy_store(
            &cfg.store.path,
            &target,
            chunk,
            |table, done, total| {
                // At each table's first chunk and its end, and once a second.
                let first = last_said.0 != table;
                if first
                    || done == total
                    || last_said.1.elapsed() >= std::time::Duration::from_secs(1)
                {
                    eprintln!("migrate: {table} {done}/{total} rows");
                    last_said = (table.to_owned(), std::time::Instant::now());
                }
            },
        ))
        .map_err(|e| {
            // The command's own names for the settings the errors name.
            anyhow::anyhow!(
                "{}",
                e.to_string()
                    .replace("store.url", "--to")
                    .replace("store.password", "--password-file (or PGPASSWORD)")
                    .replace("store.ca_file", "--ca-file")
            )
        })?;
    Ok(copied)
}
