//! The PostgreSQL backend of the store (issue 21, being built): where to
//! connect (the libpq URL operators paste from elsewhere, the password from
//! an environment variable or a file), connecting with errors that name the
//! setting at fault, and the versioned schema (`migrate.rs`).
//!
//! Not yet reachable from the configuration: ingest, reads and the alarm,
//! auth and inspection tables follow, behind the same store interface as
//! SQLite.

pub mod maintain;
pub mod migrate;
pub mod reader;
pub mod tls;
pub mod transfer;
pub mod writer;

use std::str::FromStr;
use thiserror::Error;
use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, Client, Config, NoTls, Notification};

#[derive(Debug, Error)]
pub enum PgError {
    #[error("store.url: {0}")]
    Url(String),
    #[error("store.url: cannot reach PostgreSQL at {target}: {detail}")]
    Unreachable { target: String, detail: String },
    #[error("store.password: PostgreSQL refused user {user:?}: {detail}")]
    Auth { user: String, detail: String },
    #[error("store.ca_file: no TLS with PostgreSQL at {target}: {detail}")]
    Tls { target: String, detail: String },
    #[error("store.url: database {0:?} does not exist (create it: createdb -O <user> {0})")]
    NoDatabase(String),
    #[error("store.url: database {db:?} holds tables of another application ({tables}); give RoomGuard a database of its own")]
    Foreign { db: String, tables: String },
    #[error("store.url: database {db:?} has RoomGuard schema version {found}; this build knows up to {known}. Run the newer collector, or restore a backup made for this version")]
    Newer { db: String, found: i32, known: i32 },
    #[error("postgres: {}", describe(.0))]
    Sql(#[from] tokio_postgres::Error),
    /// The alarm record's statements failed otherwise (a column of an
    /// unexpected type).
    #[error("alarm record: {0}")]
    Record(String),
    /// The lease check before a commit found partitions another node took
    /// over (docs/SCALING.md, Fencing); the transaction was rolled back.
    #[error(
        "cluster: partitions {0:?} are held by another node now; the transaction was rolled back"
    )]
    Fenced(Vec<i32>),
    /// Something went wrong with the cluster's own connections.
    #[error("{0}")]
    Cluster(String),
    /// The cluster refuses this node (a setting of its own, a node id
    /// already in use): it holds nothing until that changes.
    #[error("{0}")]
    Refused(String),
}

impl From<crate::store::alarms::RecordError> for PgError {
    fn from(e: crate::store::alarms::RecordError) -> Self {
        use crate::store::{alarms::RecordError, sql::SqlError};
        match e {
            RecordError::Store(SqlError::Postgres(p)) => p,
            other => PgError::Record(other.to_string()),
        }
    }
}

/// The server's own message and SQLSTATE where there is one (the client
/// error's text alone is just "db error").
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}

/// The connection settings from `store.url` (`postgresql://user@host:port/db`,
/// `?host=/dir` for a Unix socket, `sslmode=`) and the password.
pub fn settings(url: &str, password: Option<&str>) -> Result<Config, PgError> {
    if !(url.starts_with("postgresql://") || url.starts_with("postgres://")) {
        return Err(PgError::Url(format!(
            "{url:?} is not a postgresql:// URL (postgresql://user@host:port/dbname)"
        )));
    }
    let mut cfg = Config::from_str(url).map_err(|e| PgError::Url(format!("{e}")))?;
    if cfg.get_password().is_some() {
        return Err(PgError::Url(
            "put the password in store.password ({ env = \"…\" } or { file = \"…\" }), not in the URL".into(),
        ));
    }
    if cfg.get_dbname().is_none() {
        return Err(PgError::Url(
            "name the database: postgresql://user@host:port/dbname".into(),
        ));
    }
    if cfg.get_user().is_none() {
        return Err(PgError::Url(
            "name the user: postgresql://user@host:port/dbname".into(),
        ));
    }
    if let Some(p) = password {
        cfg.password(p);
    }
    cfg.application_name("roomguard-collector");
    cfg.connect_timeout(std::time::Duration::from_secs(10));
    // A server gone without a word (a network partition, a host powered
    // off) is noticed in about half a minute instead of TCP's fifteen: the
    // writer says so on /healthz and connects again.
    cfg.keepalives(true);
    cfg.keepalives_idle(std::time::Duration::from_secs(10));
    cfg.keepalives_interval(std::time::Duration::from_secs(5));
    cfg.keepalives_retries(3);
    cfg.tcp_user_timeout(std::time::Duration::from_secs(30));
    Ok(cfg)
}

/// Where to connect and how: the settings, and the CA to check the
/// server's certificate against when TLS is used.
#[derive(Clone)]
pub struct Target {
    pub config: Config,
    pub tls: Option<tls::RustlsConnect>,
}

/// The target from `store.url`, `store.password` and `store.ca_file`.
/// `sslmode=require` needs the CA file; `prefer` (libpq's default) uses TLS
/// when a CA file is given, and otherwise connects in the clear; `disable`
/// never uses TLS.
pub fn target_of(
    url: &str,
    password: Option<&str>,
    ca_file: Option<&std::path::Path>,
) -> Result<Target, PgError> {
    let config = settings(url, password)?;
    let tls = match (config.get_ssl_mode(), ca_file) {
        (SslMode::Disable, _) => None,
        (_, Some(ca)) => Some(tls::RustlsConnect::new(ca).map_err(PgError::Url)?),
        (SslMode::Require, None) => {
            return Err(PgError::Url(
                "sslmode=require needs store.ca_file, the CA certificate (PEM) that signed the server's".into(),
            ))
        }
        (_, None) => None,
    };
    Ok(Target { config, tls })
}

/// Connects in the clear (`sslmode` aside); see [`connect_to`].
pub async fn connect(cfg: &Config) -> Result<Client, PgError> {
    connect_to(&Target {
        config: cfg.clone(),
        tls: None,
    })
    .await
}

/// Connects, naming what is wrong when it cannot. The connection's task
/// runs on the current runtime until the client is dropped.
pub async fn connect_to(target: &Target) -> Result<Client, PgError> {
    let cfg = &target.config;
    let db = cfg.get_dbname().unwrap_or("").to_owned();
    let user = cfg.get_user().unwrap_or("").to_owned();
    let result = match &target.tls {
        Some(tls) => cfg
            .connect(tls.clone())
            .await
            .map(|(client, connection)| run(client, connection)),
        None => cfg
            .connect(NoTls)
            .await
            .map(|(client, connection)| run(client, connection)),
    };
    result.map_err(|e| classify(e, &db, &user, cfg))
}

/// Connects like [`connect_to`], and hands over the notifications the
/// session receives (after a `LISTEN`). The channel closes when the
/// connection ends; a slow reader holds the socket back rather than losing
/// any (PostgreSQL queues them meanwhile).
pub async fn connect_listening(
    target: &Target,
) -> Result<(Client, tokio::sync::mpsc::Receiver<Notification>), PgError> {
    let cfg = &target.config;
    let db = cfg.get_dbname().unwrap_or("").to_owned();
    let user = cfg.get_user().unwrap_or("").to_owned();
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    let client = match &target.tls {
        Some(tls) => cfg
            .connect(tls.clone())
            .await
            .map(|(client, connection)| listen(client, connection, tx)),
        None => cfg
            .connect(NoTls)
            .await
            .map(|(client, connection)| listen(client, connection, tx)),
    };
    client
        .map(|c| (c, rx))
        .map_err(|e| classify(e, &db, &user, cfg))
}

fn listen<S, T>(
    client: Client,
    mut connection: tokio_postgres::Connection<S, T>,
    tx: tokio::sync::mpsc::Sender<Notification>,
) -> Client
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if tx.send(n).await.is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "PostgreSQL connection ended");
                    return;
                }
                None => return,
            }
        }
    });
    client
}

/// Drives a connection until its client is dropped (or the server goes).
fn run<F>(client: Client, connection: F) -> Client
where
    F: std::future::Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "PostgreSQL connection ended");
        }
    });
    client
}

fn classify(e: tokio_postgres::Error, db: &str, user: &str, cfg: &Config) -> PgError {
    if let Some(code) = e.code() {
        let detail = e
            .as_db_error()
            .map_or_else(|| e.to_string(), |d| d.message().to_owned());
        if *code == SqlState::INVALID_PASSWORD
            || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
        {
            return PgError::Auth {
                user: user.to_owned(),
                detail,
            };
        }
        if *code == SqlState::INVALID_CATALOG_NAME {
            return PgError::NoDatabase(db.to_owned());
        }
        // Starting, recovering, shutting down, or full: worth waiting for,
        // like a server not yet listening.
        if [
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::TOO_MANY_CONNECTIONS,
        ]
        .contains(code)
        {
            return PgError::Unreachable {
                target: target(cfg),
                detail,
            };
        }
        return PgError::Sql(e);
    }
    // No SQLSTATE: the server was never reached (refused, timed out, no
    // such host), or it asked for a password none was given for.
    let detail = std::error::Error::source(&e).map_or_else(|| e.to_string(), ToString::to_string);
    let said = format!("{e} {detail}");
    if ["certificate", "TLS", "tls", "handshake"]
        .iter()
        .any(|w| said.contains(w))
    {
        return PgError::Tls {
            target: target(cfg),
            detail: if said.contains("does not support TLS") {
                "the server does not offer TLS (ssl = off in its postgresql.conf)".into()
            } else {
                detail
            },
        };
    }
    if detail.contains("password missing") {
        return PgError::Auth {
            user: user.to_owned(),
            detail: "the server asks for a password; give store.password".into(),
        };
    }
    PgError::Unreachable {
        target: target(cfg),
        detail,
    }
}

/// `host:port` (or the socket directory) the settings point at.
pub(crate) fn target(cfg: &Config) -> String {
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    match cfg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => format!("{h}:{port}"),
        Some(tokio_postgres::config::Host::Unix(p)) => format!("{}/.s.PGSQL.{port}", p.display()),
        None => format!("localhost:{port}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_is_the_libpq_form_and_the_password_stays_out_of_it() {
        let c = settings(
            "postgresql://rg@db.example:5433/roomguard?sslmode=require",
            Some("pw"),
        )
        .unwrap();
        assert_eq!(c.get_user(), Some("rg"));
        assert_eq!(c.get_dbname(), Some("roomguard"));
        assert_eq!(c.get_ports(), [5433]);
        assert_eq!(c.get_password(), Some(&b"pw"[..]));
        let sock = settings("postgresql://rg@/roomguard?host=/run/postgresql", None).unwrap();
        assert_eq!(target(&sock), "/run/postgresql/.s.PGSQL.5432");
        for (url, want) in [
            ("mysql://rg@h/db", "not a postgresql:// URL"),
            ("postgresql://rg:secret@h/db", "not in the URL"),
            ("postgresql://rg@h", "name the database"),
            ("postgresql://h/db", "name the user"),
        ] {
            let e = settings(url, None).unwrap_err().to_string();
            assert!(
                e.starts_with("store.url: ") && e.contains(want),
                "{url}: {e}"
            );
        }
    }
}
