//! The collector's configuration file, loaded and checked before anything
//! starts; every problem is reported by its path.

use crate::alarm::lifecycle::{Escalation, Route};
use crate::alarm::notify::ChannelConfig;
use crate::alarm::rules::{Override, RuleSet, RulesError};
use crate::sinks::influx::{Precision, SinkSettings};
use crate::store::retention::Policy;
use roomguard_protocol::conf::Secret;
use roomguard_protocol::conf::{self, BrokerUrl, ConfigError, Problems};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Environment variables `ROOMGUARD_COLLECTOR__MQTT__URL` and the like override keys.
pub const ENV_PREFIX: &str = "ROOMGUARD_COLLECTOR";

/// A commented sample, printed by `roomguard-collector sample-config`.
pub const SAMPLE: &str = include_str!("../sample-config.toml");

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CollectorConfig {
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub mqtt: MqttConfig,
    #[serde(default)]
    pub store: StoreConfig,
    /// Also write every stored reading to InfluxDB (or VictoriaMetrics); off when absent.
    #[serde(default)]
    pub influx: Option<InfluxConfig>,
    #[serde(default)]
    pub alarms: AlarmsConfig,
    #[serde(default)]
    pub auth: crate::auth::AuthConfig,
    /// Patrol records, hazards, reports (docs/INSPECTION.md).
    #[serde(default)]
    pub inspection: crate::inspection::InspectionConfig,
    /// How agents and the collector tell each other from impostors.
    #[serde(default)]
    pub agents: AgentsConfig,
    /// Several collectors sharing the sites (docs/SCALING.md); off by default.
    #[serde(default)]
    pub cluster: crate::cluster::ClusterConfig,
    /// The names people use for rooms and devices (`[[names]]`), shown with
    /// the ids engineers use.
    #[serde(default)]
    pub names: Vec<DisplayName>,
}

/// `[[names]]`: "3F 电池室" for a site's room (`room`) or device (`device`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DisplayName {
    pub site: String,
    #[serde(default)]
    pub room: Option<String>,
    #[serde(default)]
    pub device: Option<String>,
    /// The name (in Chinese, the default language of the pages).
    pub name: String,
    /// In English; `name` when absent.
    #[serde(default)]
    pub name_en: Option<String>,
}

impl DisplayName {
    fn check(&self, path: &str, p: &mut Problems) {
        if self.site.trim().is_empty() {
            p.push(format!("{path}.site"), "must name the site");
        }
        if self.room.is_some() == self.device.is_some() {
            p.push(path.to_owned(), "give exactly one of room, device");
        }
        for (k, v) in [
            ("name", Some(&self.name)),
            ("name_en", self.name_en.as_ref()),
        ] {
            if let Some(v) = v {
                if v.trim().is_empty() || v.chars().count() > 64 {
                    p.push(format!("{path}.{k}"), "must be 1–64 characters");
                }
            }
        }
    }
}

/// `[agents]`: the secret each agent's key is derived from
/// (docs/PROTOCOL.md#authentication).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AgentsConfig {
    /// `{ env = "…" }` or `{ file = "…" }`; at least 32 characters
    /// (`roomguard-collector gen-secret` makes one).
    #[serde(default)]
    pub secret: Secret,
}

impl AgentsConfig {
    /// The secret, read from where it is kept.
    pub fn secret(&self) -> Result<String, String> {
        match self.secret.resolve()? {
            Some(s) if s.len() >= roomguard_protocol::auth::MIN_SECRET_LEN => Ok(s),
            Some(_) => Err(format!(
                "must be at least {} characters; `roomguard-collector gen-secret` makes one",
                roomguard_protocol::auth::MIN_SECRET_LEN
            )),
            None => Err("missing: every agent's key is derived from it (it signs confirmations and checks batches); \
                 make one with `roomguard-collector gen-secret > /etc/roomguard/agent-secret` and give \
                 secret = { file = \"/etc/roomguard/agent-secret\" }".into()),
        }
    }
}

/// Safety alarms: which rules, their overrides, repeats and escalation,
/// and where notifications go (docs/ALARMS.md).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AlarmsConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// A directory of rule packs used instead of the built-in ones.
    #[serde(default)]
    pub rules_dir: Option<PathBuf>,
    /// Numbers changed per site and room (most specific wins).
    #[serde(default)]
    pub overrides: Vec<Override>,
    #[serde(default)]
    pub escalation: EscalationConfig,
    #[serde(default)]
    pub channels: Vec<ChannelConfig>,
    /// Base URL of this collector's web page, for links in messages.
    #[serde(default)]
    pub link: Option<String>,
}

impl Default for AlarmsConfig {
    fn default() -> Self {
        AlarmsConfig {
            enabled: true,
            rules_dir: None,
            overrides: Vec::new(),
            escalation: EscalationConfig::default(),
            channels: Vec::new(),
            link: None,
        }
    }
}

fn yes() -> bool {
    true
}

/// Unacknowledged alarms of `levels` are sent again every `repeat_every`
/// and, after `escalate_after`, to the channels marked `escalation_only`.
/// "0s" turns either off.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EscalationConfig {
    pub levels: Vec<u8>,
    #[serde(with = "conf::duration")]
    pub repeat_every: Duration,
    #[serde(with = "conf::duration")]
    pub escalate_after: Duration,
}

impl Default for EscalationConfig {
    fn default() -> Self {
        EscalationConfig {
            levels: vec![1, 2],
            repeat_every: Duration::from_secs(15 * 60),
            escalate_after: Duration::from_secs(30 * 60),
        }
    }
}

impl AlarmsConfig {
    /// The rules, from the built-in packs or `rules_dir`, with overrides.
    pub fn rules(&self) -> Result<RuleSet, RulesError> {
        match &self.rules_dir {
            Some(dir) => RuleSet::from_dir(dir, self.overrides.clone()),
            None => RuleSet::builtin_with(self.overrides.clone()),
        }
    }

    pub fn routes(&self) -> Vec<Route> {
        self.channels
            .iter()
            .map(|c| Route {
                channel: c.id.clone(),
                levels: c.levels.clone(),
                escalation_only: c.escalation_only,
                lifecycle: c.lifecycle(),
                drills: c.drills,
            })
            .collect()
    }

    pub fn escalation(&self) -> Escalation {
        let ms = |d: Duration| d.as_millis().min(i64::MAX as u128) as i64;
        Escalation {
            levels: self.escalation.levels.clone(),
            repeat_every_ms: ms(self.escalation.repeat_every),
            escalate_after_ms: ms(self.escalation.escalate_after),
        }
    }

    fn check(&self, p: &mut Problems) {
        if self.enabled {
            if let Err(e) = self.rules() {
                p.push("alarms", e.to_string());
            }
        }
        let mut ids = std::collections::HashSet::new();
        for (i, c) in self.channels.iter().enumerate() {
            let path = format!("alarms.channels[{i}]");
            c.check(&path, p);
            if !ids.insert(c.id.as_str()) {
                p.push(format!("{path}.id"), format!("{:?} is used twice", c.id));
            }
        }
        let e = &self.escalation;
        if e.levels.iter().any(|l| !(1..=4).contains(l)) {
            p.push("alarms.escalation.levels", "must list levels 1 to 4");
        }
        if !e.repeat_every.is_zero() && e.repeat_every < Duration::from_secs(60) {
            p.push(
                "alarms.escalation.repeat_every",
                "must be 0s (off) or at least 1m",
            );
        }
        if self.channels.iter().any(|c| c.escalation_only) && e.escalate_after.is_zero() {
            p.push(
                "alarms.escalation.escalate_after",
                "escalation channels are configured but escalation is off (0s)",
            );
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InfluxConfig {
    /// Base URL, `http://host:8086` or `https://…`; `/api/v2/write` is added.
    pub url: String,
    pub org: String,
    pub bucket: String,
    /// API token: `{ env = "INFLUX_TOKEN" }` or `{ file = "/etc/roomguard/influx-token" }`.
    #[serde(default)]
    pub token: Secret,
    #[serde(default = "default_precision")]
    pub precision: Precision,
    /// Lines per write request (at most).
    #[serde(default = "default_batch_lines")]
    pub batch_lines: usize,
    /// Written at least this often when there is anything to write.
    #[serde(default = "default_flush", with = "conf::duration")]
    pub flush_interval: Duration,
    /// Compressed backlog kept while InfluxDB is unreachable; beyond it the
    /// oldest lines are dropped and counted.
    #[serde(default = "default_max_buffer")]
    pub max_buffer_bytes: usize,
    #[serde(default = "default_influx_timeout", with = "conf::duration")]
    pub timeout: Duration,
}

fn default_precision() -> Precision {
    Precision::Ms
}
fn default_batch_lines() -> usize {
    5_000
}
fn default_flush() -> Duration {
    Duration::from_secs(1)
}
fn default_max_buffer() -> usize {
    64 << 20
}
fn default_influx_timeout() -> Duration {
    Duration::from_secs(10)
}

impl InfluxConfig {
    /// The sink's settings, with the token read from where it is kept.
    pub fn settings(&self) -> Result<SinkSettings, String> {
        Ok(SinkSettings {
            url: self.url.clone(),
            org: self.org.clone(),
            bucket: self.bucket.clone(),
            token: self.token.resolve()?,
            precision: self.precision,
            batch_lines: self.batch_lines,
            flush_interval: self.flush_interval,
            max_buffer_bytes: self.max_buffer_bytes,
            timeout: self.timeout,
        })
    }

    fn check(&self, p: &mut Problems) {
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            p.push(
                "influx.url",
                format!("{:?} is not an http:// or https:// URL", self.url),
            );
        } else if let Err(e) = self
            .settings()
            .and_then(|s| crate::sinks::influx::write_url(&s))
        {
            p.push("influx", e);
        }
        if self.org.is_empty() {
            p.push("influx.org", "must not be empty");
        }
        if self.bucket.is_empty() {
            p.push("influx.bucket", "must not be empty");
        }
        if let Err(e) = self.token.resolve() {
            p.push("influx.token", e);
        }
        if !(1..=100_000).contains(&self.batch_lines) {
            p.push("influx.batch_lines", "must be 1 to 100000");
        }
        if self.max_buffer_bytes < 1 << 20 {
            p.push(
                "influx.max_buffer_bytes",
                "must be at least 1048576 (1 MiB)",
            );
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of the API and the web page (port 0 picks a free port).
    #[serde(default = "default_http_listen")]
    pub listen: SocketAddr,
    /// IANA time zone of times in API answers unless a request names one.
    #[serde(default = "default_time_zone")]
    pub time_zone: String,
    /// Serve HTTPS with this certificate and key (PEM); plain HTTP when absent.
    #[serde(default)]
    pub tls: Option<HttpTls>,
    /// For UI development: serve the web UI from this folder (re-read on
    /// every request) instead of the files built into the binary.
    #[serde(default)]
    pub ui_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: default_http_listen(),
            time_zone: default_time_zone(),
            tls: None,
            ui_dir: None,
        }
    }
}

fn default_time_zone() -> String {
    "Asia/Shanghai".into()
}

fn default_http_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// External broker (`mqtt://host:port`). When absent, the collector starts
    /// its own embedded broker on `embedded_listen`.
    #[serde(default)]
    pub url: Option<String>,
    /// Where the embedded broker listens when no `url` is given.
    #[serde(default = "default_embedded_listen")]
    pub embedded_listen: SocketAddr,
    /// Fixed client id, so the broker keeps the collector's session.
    #[serde(default = "default_client_id")]
    pub client_id: String,
    /// TLS certificates and login for an external broker.
    #[serde(default)]
    pub security: roomguard_protocol::mqtt::Security,
    /// MQTT over TLS to the embedded broker, for agents on other machines.
    #[serde(default)]
    pub embedded_tls: Option<EmbeddedTls>,
    /// The embedded broker admits only these (by user name and password);
    /// the collector's own connection gets a login of its own.
    #[serde(default)]
    pub embedded_users: Vec<EmbeddedUser>,
    /// Let the embedded broker admit clients without a login: only for a
    /// closed test network. Off by default.
    #[serde(default)]
    pub embedded_anonymous: bool,
    /// Messages the embedded broker keeps per subscription, MiB (the
    /// collector has two): a backlog it can hold while the collector catches
    /// up, and memory it keeps once filled (docs/METRICS.md, Memory).
    #[serde(default = "default_embedded_log_mib")]
    pub embedded_log_mib: u32,
}

fn default_embedded_log_mib() -> u32 {
    64
}

/// A TLS listener in front of the embedded broker.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedTls {
    /// Where agents connect with `mqtts://` (e.g. `0.0.0.0:8883`).
    pub listen: SocketAddr,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// When given, clients must present a certificate signed by this CA.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

/// A login of the embedded broker.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedUser {
    pub name: String,
    /// `{ env = "…" }` or `{ file = "…" }`.
    pub password: Secret,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            url: None,
            embedded_listen: default_embedded_listen(),
            client_id: default_client_id(),
            security: Default::default(),
            embedded_tls: None,
            embedded_users: Vec::new(),
            embedded_anonymous: false,
            embedded_log_mib: default_embedded_log_mib(),
        }
    }
}

fn default_embedded_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 1883))
}

fn default_client_id() -> String {
    "roomguard-collector".into()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Where readings and records are kept: the embedded SQLite file
    /// (default, nothing to install) or a PostgreSQL database.
    #[serde(default)]
    pub backend: Backend,
    /// SQLite database file; created with its directory when missing.
    #[serde(default = "default_store_path")]
    pub path: PathBuf,
    /// PostgreSQL: the libpq URL (`postgresql://user@host:port/dbname`,
    /// `?host=/dir` for a Unix socket, `sslmode=disable|prefer|require`).
    #[serde(default)]
    pub url: Option<String>,
    /// PostgreSQL: the password, from an environment variable or a file.
    #[serde(default)]
    pub password: Option<Secret>,
    /// PostgreSQL: the CA certificate (PEM) the server's is checked
    /// against when TLS is used.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub retention: RetentionConfig,
    /// Distinct points one agent may name; batches beyond are refused
    /// (counted as `too_many_points`).
    #[serde(default = "default_max_points")]
    pub max_points_per_agent: usize,
    /// The store writer's page cache, MiB: the largest part of the
    /// collector's memory once the store outgrows it (docs/METRICS.md,
    /// Memory). Larger keeps ingest fast with many points.
    #[serde(default = "default_cache_mib")]
    pub cache_mib: u32,
}

fn default_cache_mib() -> u32 {
    256
}

fn default_max_points() -> usize {
    20_000
}

/// The store's backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    #[default]
    Sqlite,
    Postgres,
}

impl StoreConfig {
    /// Where PostgreSQL is and how to reach it; the password is read now
    /// (an environment variable or a file).
    pub fn postgres(&self) -> Result<crate::store::postgres::Target, String> {
        let url = self
            .url
            .as_deref()
            .ok_or("store.url: give the PostgreSQL URL")?;
        let password = match &self.password {
            Some(s) => s.resolve().map_err(|e| format!("store.password: {e}"))?,
            None => None,
        };
        crate::store::postgres::target_of(url, password.as_deref(), self.ca_file.as_deref())
            .map_err(|e| e.to_string())
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: Backend::Sqlite,
            url: None,
            password: None,
            ca_file: None,
            path: default_store_path(),
            retention: RetentionConfig::default(),
            max_points_per_agent: default_max_points(),
            cache_mib: default_cache_mib(),
        }
    }
}

/// How long each tier is kept.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    #[serde(with = "conf::duration")]
    pub raw: Duration,
    #[serde(with = "conf::duration")]
    pub minute: Duration,
    #[serde(with = "conf::duration")]
    pub hour: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        let p = Policy::default();
        RetentionConfig {
            raw: p.raw,
            minute: p.minute,
            hour: p.hour,
        }
    }
}

impl RetentionConfig {
    pub fn policy(&self) -> Policy {
        Policy {
            raw: self.raw,
            minute: self.minute,
            hour: self.hour,
        }
    }
}

fn default_store_path() -> PathBuf {
    PathBuf::from("var/roomguard.db")
}

impl CollectorConfig {
    pub fn load(file: &Path) -> Result<CollectorConfig, ConfigError> {
        let cfg: CollectorConfig = conf::load(file, ENV_PREFIX)?;
        cfg.check().into_result(file)?;
        Ok(cfg)
    }

    pub fn parse(text: &str, name: &Path) -> Result<CollectorConfig, ConfigError> {
        let cfg: CollectorConfig = conf::parse(text, name)?;
        cfg.check().into_result(name)?;
        Ok(cfg)
    }

    /// Secrets written in the file itself (`value = "…"`): they work, but
    /// config files get copied, shared and committed. One line per secret,
    /// naming where it is; `validate` prints them and `run` logs them.
    pub fn warnings(&self) -> Vec<String> {
        let mut inline: Vec<String> = Vec::new();
        let mut check = |at: String, s: Option<&Secret>| {
            if s.is_some_and(Secret::is_inline) {
                inline.push(at);
            }
        };
        check(
            "mqtt.security.password".into(),
            self.mqtt.security.password.as_ref(),
        );
        for (i, u) in self.mqtt.embedded_users.iter().enumerate() {
            check(
                format!("mqtt.embedded_users[{i}].password"),
                Some(&u.password),
            );
        }
        check("store.password".into(), self.store.password.as_ref());
        check(
            "influx.token".into(),
            self.influx.as_ref().map(|i| &i.token),
        );
        check(
            "auth.initial_admin_password".into(),
            self.auth.initial_admin_password.as_ref(),
        );
        for (i, t) in self.auth.tokens.iter().enumerate() {
            check(format!("auth.tokens[{i}].token"), Some(&t.token));
        }
        for (i, c) in self.alarms.channels.iter().enumerate() {
            check(format!("alarms.channels[{i}].secret"), c.secret.as_ref());
        }
        check("agents.secret".into(), Some(&self.agents.secret));
        inline
            .iter()
            .map(|at| roomguard_protocol::conf::inline_secret_warning(at))
            .collect()
    }

    /// The external broker, if one is configured.
    pub fn broker(&self) -> Option<Result<BrokerUrl, String>> {
        self.mqtt.url.as_deref().map(str::parse)
    }

    fn check(&self) -> Problems {
        let mut p = Problems::default();
        let mut named = std::collections::HashSet::new();
        for (i, n) in self.names.iter().enumerate() {
            let path = format!("names[{i}]");
            n.check(&path, &mut p);
            if !named.insert((&n.site, &n.room, &n.device)) {
                p.push(path, "names that room or device a second time");
            }
        }
        match self.broker() {
            Some(Err(e)) => p.push("mqtt.url", e),
            Some(Ok(url)) => self.mqtt.security.check(&url, "mqtt.security", &mut p),
            None => {}
        }
        if let Some(t) = &self.mqtt.embedded_tls {
            if self.mqtt.url.is_some() {
                p.push(
                    "mqtt.embedded_tls",
                    "is for the embedded broker; mqtt.url names an external one",
                );
            }
            if let Err(e) = crate::api::tls::server_config_with(
                &t.cert_file,
                &t.key_file,
                t.client_ca_file.as_deref(),
            ) {
                p.push("mqtt.embedded_tls", e);
            }
        }
        if let Some(t) = &self.mqtt.embedded_tls {
            if t.client_ca_file.is_none()
                && self.mqtt.embedded_users.is_empty()
                && !t.listen.ip().is_loopback()
            {
                p.push(
                    "mqtt.embedded_tls",
                    "would let anyone on the network publish: give client_ca_file, or embedded_users, or both",
                );
            }
            if !self.mqtt.embedded_listen.ip().is_loopback() {
                p.push(
                    "mqtt.embedded_listen",
                    "must be on loopback (127.0.0.1) when embedded_tls is on, or it stays an open plain-text door",
                );
            }
        }
        if self.mqtt.url.is_none()
            && self.mqtt.embedded_users.is_empty()
            && !self.mqtt.embedded_anonymous
        {
            p.push(
                "mqtt.embedded_users",
                "none: the embedded broker admits only its listed logins; add one per agent \
                 ([[mqtt.embedded_users]] name, password) or, on a closed test network only, \
                 set mqtt.embedded_anonymous = true",
            );
        }
        if let Err(e) = self.agents.secret() {
            p.push("agents.secret", e);
        }
        if self.mqtt.url.is_some() && !self.mqtt.embedded_users.is_empty() {
            p.push(
                "mqtt.embedded_users",
                "are for the embedded broker; mqtt.url names an external one",
            );
        }
        let mut names = std::collections::HashSet::new();
        for (i, u) in self.mqtt.embedded_users.iter().enumerate() {
            if u.name == "roomguard-collector-internal" {
                p.push(
                    format!("mqtt.embedded_users[{i}].name"),
                    "is reserved for the collector itself",
                );
            }
            if u.name.is_empty() || u.name.len() > 128 || !names.insert(u.name.as_str()) {
                p.push(
                    format!("mqtt.embedded_users[{i}].name"),
                    "must be 1–128 characters and unique",
                );
            }
            match u.password.resolve() {
                Ok(Some(pw)) if pw.chars().count() >= 12 => {}
                Ok(_) => p.push(
                    format!("mqtt.embedded_users[{i}].password"),
                    "must be at least 12 characters",
                ),
                Err(e) => p.push(format!("mqtt.embedded_users[{i}].password"), e),
            }
        }
        if self.mqtt.client_id.is_empty() || self.mqtt.client_id.len() > 128 {
            p.push("mqtt.client_id", "must be 1–128 characters");
        }
        if self.mqtt.url.is_none()
            && self.http.listen.port() != 0
            && self.mqtt.embedded_listen == self.http.listen
        {
            p.push("mqtt.embedded_listen", "is the same address as http.listen");
        }
        if !(4..=4096).contains(&self.mqtt.embedded_log_mib) {
            p.push("mqtt.embedded_log_mib", "must be 4 to 4096");
        }
        if !(8..=65_536).contains(&self.store.cache_mib) {
            p.push("store.cache_mib", "must be 8 to 65536");
        }
        if !(1..=1_000_000).contains(&self.store.max_points_per_agent) {
            p.push("store.max_points_per_agent", "must be 1 to 1000000");
        }
        match self.store.backend {
            Backend::Sqlite => {
                if self.store.path.as_os_str().is_empty() {
                    p.push("store.path", "must name a file");
                }
                for (key, set) in [
                    ("url", self.store.url.is_some()),
                    ("password", self.store.password.is_some()),
                    ("ca_file", self.store.ca_file.is_some()),
                ] {
                    if set {
                        p.push(
                            format!("store.{key}"),
                            "is for PostgreSQL; set store.backend = \"postgres\" to use it",
                        );
                    }
                }
            }
            Backend::Postgres => {
                if let Err(e) = self.store.postgres() {
                    let (at, msg) = e.split_once(": ").unwrap_or(("store.url", &e));
                    p.push(at, msg);
                }
            }
        }
        let r = &self.store.retention;
        for (key, d) in [("raw", r.raw), ("minute", r.minute), ("hour", r.hour)] {
            if d < Duration::from_secs(86_400) {
                p.push(format!("store.retention.{key}"), "must be at least 1d");
            }
        }
        if r.minute < r.raw || r.hour < r.minute {
            p.push(
                "store.retention",
                "coarser tiers must be kept at least as long as finer ones (raw ≤ minute ≤ hour)",
            );
        }
        if let Some(i) = &self.influx {
            i.check(&mut p);
        }
        self.alarms.check(&mut p);
        self.cluster
            .check(matches!(self.store.backend, Backend::Postgres), &mut p);
        if let Some(t) = &self.http.tls {
            if let Err(e) = crate::api::tls::server_config(&t.cert_file, &t.key_file) {
                p.push("http.tls", e);
            }
        }
        self.auth.check(&mut p);
        self.inspection.check(&mut p);
        if let Some(dir) = &self.http.ui_dir {
            if !dir.join("index.html").is_file() {
                p.push(
                    "http.ui_dir",
                    format!("{} has no index.html", dir.display()),
                );
            }
        }
        if jiff::tz::TimeZone::get(&self.http.time_zone).is_err() {
            p.push(
                "http.time_zone",
                format!(
                    "{:?} is not a known IANA time zone (e.g. Asia/Shanghai)",
                    self.http.time_zone
                ),
            );
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_and_demo_configs_are_valid() {
        // The sample reads its secrets from the environment.
        std::env::set_var(
            "ROOMGUARD_AGENT_SECRET",
            "sample-secret-sample-secret-sample-secret",
        );
        std::env::set_var("ROOMGUARD_EDGE01_MQTT_PASSWORD", "sample-password");
        CollectorConfig::parse(SAMPLE, Path::new("sample")).unwrap();
        CollectorConfig::parse(
            include_str!("../../configs/demo/collector.toml"),
            Path::new("demo"),
        )
        .unwrap();
    }

    #[test]
    fn secrets_written_in_the_file_are_named_in_warnings() {
        let cfg = CollectorConfig::parse(
            "[mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\n[mqtt.security]\nusername = \"c\"\n\
             password = { value = \"pw\" }\n[auth]\ninitial_admin_password = { env = \"PATH\" }\n\
             [agents]\nsecret = { env = \"PATH\" }\n",
            Path::new("t"),
        )
        .unwrap();
        let w = cfg.warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].starts_with("mqtt.security.password:"), "{w:?}");
    }

    const AGENTS: &str = "[agents]\nsecret = { value = \"0123456789abcdef0123456789abcdef\" }\n";

    /// The paths of a config's problems.
    fn problem_paths(text: &str) -> Vec<String> {
        let text = format!("[mqtt]\nembedded_anonymous = true\n{AGENTS}{text}");
        match CollectorConfig::parse(&text, Path::new("t")) {
            Ok(_) => Vec::new(),
            Err(e) => e.problems().iter().map(|p| p.path.clone()).collect(),
        }
    }

    #[test]
    fn the_postgres_backend_needs_its_url_and_a_password_kept_out_of_it() {
        assert_eq!(
            problem_paths("[store]\nbackend = \"postgres\"\n"),
            ["store.url"]
        );
        let pg = |store: &str| problem_paths(&format!("[store]\nbackend = \"postgres\"\n{store}"));
        assert!(pg("url = \"postgresql://rg@127.0.0.1:5432/rg\"\n").is_empty());
        assert_eq!(pg("url = \"mysql://rg@h/rg\"\n"), ["store.url"]);
        assert_eq!(
            pg("url = \"postgresql://rg:pw@h/rg\"\n"),
            ["store.url"],
            "no password in the URL"
        );
        assert_eq!(
            pg("url = \"postgresql://rg@h/rg\"\npassword = { file = \"/nonexistent/pw\" }\n"),
            ["store.password"]
        );
        assert_eq!(
            pg("url = \"postgresql://rg@h/rg?sslmode=require\"\n"),
            ["store.url"],
            "require needs ca_file"
        );
        // PostgreSQL settings on SQLite are a mistake, not ignored.
        assert_eq!(
            problem_paths("[store]\nurl = \"postgresql://rg@h/rg\"\n"),
            ["store.url"]
        );
    }

    #[test]
    fn an_anonymous_embedded_broker_and_a_missing_agent_secret_are_refused_by_default() {
        let err = CollectorConfig::parse("", Path::new("empty")).unwrap_err();
        let paths: Vec<String> = err.problems().iter().map(|p| p.path.clone()).collect();
        assert_eq!(paths, ["mqtt.embedded_users", "agents.secret"], "{err}");
        let cfg = CollectorConfig::parse(
            &format!("[mqtt]\nembedded_anonymous = true\n{AGENTS}"),
            Path::new("t"),
        )
        .unwrap();
        assert!(cfg.broker().is_none());
        assert_eq!(cfg.http.listen.port(), 8080);
        let err = CollectorConfig::parse(
            "[mqtt]\nembedded_anonymous = true\n[agents]\nsecret = { value = \"short\" }\n",
            Path::new("t"),
        )
        .unwrap_err();
        assert_eq!(err.problems()[0].path, "agents.secret");
    }

    #[test]
    fn bad_values_are_named_by_path() {
        let err =
            CollectorConfig::parse("[mqtt]\nurl = \"http://x\"\n", Path::new("c")).unwrap_err();
        assert_eq!(err.problems()[0].path, "mqtt.url");
        let err =
            CollectorConfig::parse("[http]\nlisten = \"nowhere\"\n", Path::new("c")).unwrap_err();
        assert_eq!(err.problems()[0].path, "http.listen");
        let err = CollectorConfig::parse("[store]\npth = \"x\"\n", Path::new("c")).unwrap_err();
        assert!(err.problems()[0].path.starts_with("store"), "{err}");
    }

    proptest::proptest! {
        /// Any text, or the sample with one byte changed: a configuration or
        /// problems named by path; never a panic.
        #[test]
        fn any_text_loads_or_is_refused_with_a_reason(text in "[\\[\\]a-z_.=\"0-9 \n{}:,-]{0,300}") {
            if let Err(e) = CollectorConfig::parse(&text, Path::new("fuzz")) {
                proptest::prop_assert!(!e.to_string().is_empty());
            }
        }

        #[test]
        fn a_mutated_sample_loads_or_is_refused_with_a_reason(at in 0usize..8000, byte in 0x20u8..0x7f) {
            let mut bytes = SAMPLE.as_bytes().to_vec();
            let i = at % bytes.len();
            bytes[i] = byte;
            let text = String::from_utf8_lossy(&bytes);
            if let Err(e) = CollectorConfig::parse(&text, Path::new("fuzz")) {
                proptest::prop_assert!(!e.to_string().is_empty());
            }
        }
    }
}
