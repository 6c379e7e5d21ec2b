//! Delivery of the outbox: every queued notification to its channel, in
//! order per alarm and channel, retried with capped backoff, a dead letter
//! after too many failures. Rows stay in the store, so a restart resumes
//! where it stopped; each carries an idempotency key (`serial:kind`) that
//! receivers can use to drop the one duplicate a crash between sending and
//! recording could cause.
//!
//! Channels: a generic JSON webhook (docs/ALARMS.md), Prometheus
//! Alertmanager API v2, DingTalk, WeCom and Feishu group robots.

use super::record::level_name;
use crate::metrics::Metrics;
use roomguard_protocol::conf::{self, Secret};
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelKind {
    Webhook,
    Alertmanager,
    Dingtalk,
    Wecom,
    Feishu,
    Email,
}

/// A notification channel as configured (`[[alarms.channels]]`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig {
    pub id: String,
    pub kind: ChannelKind,
    /// Webhook or robot URL; Alertmanager's base URL (`/api/v2/alerts` is added).
    pub url: String,
    /// Signing secret of DingTalk and Feishu robots: `{ env = "…" }` or `{ file = "…" }`.
    #[serde(default)]
    pub secret: Option<Secret>,
    /// Alarm levels this channel takes.
    #[serde(default = "all_levels")]
    pub levels: Vec<u8>,
    /// Receives only escalations of unacknowledged alarms (the second target).
    #[serde(default)]
    pub escalation_only: bool,
    #[serde(default = "default_timeout", with = "conf::duration")]
    pub timeout: Duration,
    /// Attempts before a notification becomes a dead letter.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// Language of text messages: `zh` or `en`.
    #[serde(default = "default_language")]
    pub language: String,
    /// Email: the sender address.
    #[serde(default)]
    pub from: Option<String>,
    /// Email: recipients.
    #[serde(default)]
    pub to: Vec<String>,
    /// Email: SMTP user name (the password is `secret`).
    #[serde(default)]
    pub username: Option<String>,
}

fn all_levels() -> Vec<u8> {
    vec![1, 2, 3, 4]
}
fn default_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_attempts() -> u32 {
    12
}
fn default_language() -> String {
    "zh".into()
}

impl ChannelConfig {
    pub fn check(&self, path: &str, p: &mut conf::Problems) {
        if self.id.is_empty() || self.id.len() > 64 {
            p.push(format!("{path}.id"), "must be 1–64 characters");
        }
        if self.kind == ChannelKind::Email {
            self.check_email(path, p);
        } else if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            p.push(
                format!("{path}.url"),
                format!("{:?} is not an http:// or https:// URL", self.url),
            );
        } else if reqwest::Url::parse(&self.url).is_err() {
            p.push(
                format!("{path}.url"),
                format!("{:?} is not a valid URL", self.url),
            );
        }
        if self.levels.is_empty() || self.levels.iter().any(|l| !(1..=4).contains(l)) {
            p.push(format!("{path}.levels"), "must list levels 1 to 4");
        }
        if !(1..=1000).contains(&self.max_attempts) {
            p.push(format!("{path}.max_attempts"), "must be 1 to 1000");
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(120) {
            p.push(format!("{path}.timeout"), "must be between 0 and 2m");
        }
        if !matches!(self.language.as_str(), "zh" | "en") {
            p.push(format!("{path}.language"), "must be zh or en");
        }
        match (&self.secret, self.kind) {
            (Some(s), ChannelKind::Dingtalk | ChannelKind::Feishu) => match s.resolve() {
                Err(e) => p.push(format!("{path}.secret"), e),
                Ok(None) => p.push(format!("{path}.secret"), "give one of value, env, file"),
                Ok(Some(_)) if s.is_inline() => tracing::warn!(
                    channel = %self.id,
                    "{path}.secret is written in the configuration file; prefer env or file"
                ),
                Ok(Some(_)) => {}
            },
            (Some(s), ChannelKind::Email) => match s.resolve() {
                Err(e) => p.push(format!("{path}.secret"), e),
                Ok(_) if s.is_inline() => tracing::warn!(
                    channel = %self.id,
                    "{path}.secret (the SMTP password) is written in the configuration file; prefer env or file"
                ),
                Ok(_) => {}
            },
            (Some(_), _) => p.push(
                format!("{path}.secret"),
                "only DingTalk and Feishu robots sign their messages, and email logs in with it",
            ),
            (None, _) => {}
        }
    }

    fn check_email(&self, path: &str, p: &mut conf::Problems) {
        if !(self.url.starts_with("smtp://") || self.url.starts_with("smtps://")) {
            p.push(
                format!("{path}.url"),
                format!(
                    "{:?}: email takes smtp://host:port (add ?tls=required for STARTTLS) or smtps://host:port",
                    self.url
                ),
            );
        } else if self.url.contains('@') {
            p.push(
                format!("{path}.url"),
                "put the user in `username` and the password in `secret`, not in the URL",
            );
        } else if let Err(e) = mailer(self, None) {
            p.push(format!("{path}.url"), e);
        }
        match self
            .from
            .as_deref()
            .map(str::parse::<lettre::message::Mailbox>)
        {
            None => p.push(format!("{path}.from"), "email needs a sender address"),
            Some(Err(e)) => p.push(format!("{path}.from"), e.to_string()),
            Some(Ok(_)) => {}
        }
        if self.to.is_empty() {
            p.push(format!("{path}.to"), "email needs at least one recipient");
        }
        for (i, to) in self.to.iter().enumerate() {
            if let Err(e) = to.parse::<lettre::message::Mailbox>() {
                p.push(format!("{path}.to[{i}]"), e.to_string());
            }
        }
    }

    /// Whether the channel is told about acknowledgements and repeats.
    pub fn lifecycle(&self) -> bool {
        self.kind != ChannelKind::Alertmanager
    }
}

/// A channel ready to send.
struct Channel {
    cfg: ChannelConfig,
    secret: Option<String>,
    mailer: Option<lettre::AsyncSmtpTransport<lettre::Tokio1Executor>>,
}

/// The SMTP transport of an email channel: `smtp://` plain (a local relay),
/// `smtp://…?tls=required` STARTTLS, `smtps://` TLS; rustls either way.
fn mailer(
    c: &ChannelConfig,
    password: Option<&str>,
) -> Result<lettre::AsyncSmtpTransport<lettre::Tokio1Executor>, String> {
    let mut b = lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::from_url(&c.url)
        .map_err(|e| format!("{:?}: {e}", c.url))?
        .timeout(Some(c.timeout));
    if let (Some(user), Some(pass)) = (&c.username, password) {
        b = b.credentials(lettre::transport::smtp::authentication::Credentials::new(
            user.clone(),
            pass.to_owned(),
        ));
    }
    Ok(b.build())
}

/// Sends the outbox. Runs until the process ends.
pub struct Sender {
    channels: Vec<Channel>,
    store: PathBuf,
    wake: Arc<Notify>,
    metrics: Arc<Metrics>,
    client: reqwest::Client,
    time_zone: jiff::tz::TimeZone,
    /// Site URL put in links of messages, if known.
    link: Option<String>,
}

/// How often active alarms are sent to Alertmanager again; it resolves an
/// alert it has not heard of for `resolve_timeout` (5 min by default).
const ALERTMANAGER_REFRESH: Duration = Duration::from_secs(60);
/// Longest wait between attempts.
const MAX_BACKOFF_MS: i64 = 5 * 60_000;
/// Notifications in flight at once.
const IN_FLIGHT: usize = 16;

/// One queued notification.
#[derive(Debug, Clone)]
struct Row {
    id: i64,
    channel: String,
    key: String,
    kind: String,
    payload: String,
    attempts: u32,
}

impl Sender {
    pub fn new(
        channels: &[ChannelConfig],
        store: PathBuf,
        wake: Arc<Notify>,
        metrics: Arc<Metrics>,
        time_zone: &str,
        link: Option<String>,
    ) -> Result<Sender, String> {
        let channels = channels
            .iter()
            .map(|c| {
                let secret = match &c.secret {
                    Some(s) => s
                        .resolve()
                        .map_err(|e| format!("alarms.channels {}: secret: {e}", c.id))?,
                    None => None,
                };
                let mailer = match c.kind {
                    ChannelKind::Email => Some(mailer(c, secret.as_deref())?),
                    _ => None,
                };
                Ok(Channel {
                    cfg: c.clone(),
                    secret,
                    mailer,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let client = reqwest::Client::builder()
            .user_agent(concat!("roomguard-collector/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Sender {
            channels,
            store,
            wake,
            metrics,
            client,
            time_zone: jiff::tz::TimeZone::get(time_zone).unwrap_or(jiff::tz::TimeZone::UTC),
            link,
        })
    }

    pub async fn run(self) {
        let this = Arc::new(self);
        let conn = match Connection::open(&this.store) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "notification sender cannot open the store; no notifications will be sent");
                return;
            }
        };
        let _ = conn.busy_timeout(Duration::from_secs(5));
        let conn = Arc::new(std::sync::Mutex::new(conn));
        let mut refresh = tokio::time::interval(ALERTMANAGER_REFRESH);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = this.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = refresh.tick() => {
                    this.refresh_alertmanager(&conn).await;
                    continue;
                }
            }
            // Until nothing is due: a burst larger than one round goes on at once.
            loop {
                let rows = {
                    let conn = conn.clone();
                    tokio::task::spawn_blocking(move || {
                        due(&conn.lock().unwrap_or_else(|p| p.into_inner()), now_ms())
                    })
                    .await
                    .unwrap_or_else(|e| {
                        // A panic reading the outbox: said, and tried again next round.
                        tracing::error!(error = %e, "reading the notification outbox failed");
                        Ok(Vec::new())
                    })
                };
                let rows = match rows {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot read the notification outbox");
                        break;
                    }
                };
                if rows.is_empty() {
                    break;
                }
                let mut set = tokio::task::JoinSet::new();
                for row in rows {
                    let this = this.clone();
                    set.spawn(async move {
                        let result = this.deliver(&row).await;
                        (row, result)
                    });
                }
                let mut results = Vec::new();
                while let Some(done) = set.join_next().await {
                    if let Ok(r) = done {
                        results.push(r);
                    }
                }
                let conn2 = conn.clone();
                let this2 = this.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    let conn = conn2.lock().unwrap_or_else(|p| p.into_inner());
                    for (row, result) in results {
                        this2.settle(&conn, &row, result);
                    }
                })
                .await;
            }
        }
    }

    /// Records the outcome of one delivery.
    fn settle(&self, conn: &Connection, row: &Row, result: Result<(), String>) {
        let now = now_ms();
        let outcome = match result {
            Ok(()) => {
                self.metrics.notifications_sent.inc();
                tracing::info!(channel = %row.channel, key = %row.key, "notification delivered");
                conn.execute(
                    "UPDATE outbox SET state = 'sent', sent_at = ?2, attempts = attempts + 1, last_error = NULL WHERE id = ?1",
                    params![row.id, now],
                )
            }
            Err(e) => {
                self.metrics.notification_failures.inc();
                let attempts = row.attempts + 1;
                let max = self.channel(&row.channel).map_or(1, |c| c.cfg.max_attempts);
                if attempts >= max {
                    self.metrics.notifications_dead.inc();
                    tracing::error!(channel = %row.channel, key = %row.key, attempts, error = %e,
                        "notification gave up: kept as a dead letter (GET /api/v1/notifications?state=dead)");
                    conn.execute(
                        "UPDATE outbox SET state = 'dead', attempts = ?2, last_error = ?3 WHERE id = ?1",
                        params![row.id, attempts, e],
                    )
                } else {
                    let backoff = backoff_ms(attempts, row.id);
                    tracing::warn!(channel = %row.channel, key = %row.key, attempts, retry_in_ms = backoff, error = %e, "notification failed; will retry");
                    conn.execute(
                        "UPDATE outbox SET attempts = ?2, last_error = ?3, next_at = ?4 WHERE id = ?1",
                        params![row.id, attempts, e, now + backoff],
                    )
                }
            }
        };
        if let Err(e) = outcome {
            tracing::error!(error = %e, key = %row.key, "cannot record a delivery; it may be sent again");
        }
    }

    fn channel(&self, id: &str) -> Option<&Channel> {
        self.channels.iter().find(|c| c.cfg.id == id)
    }

    async fn deliver(&self, row: &Row) -> Result<(), String> {
        let Some(ch) = self.channel(&row.channel) else {
            return Err(format!("channel {:?} is no longer configured", row.channel));
        };
        let doc: Value =
            serde_json::from_str(&row.payload).map_err(|e| format!("unreadable payload: {e}"))?;
        if let Some(mailer) = &ch.mailer {
            return self.email(ch, mailer, row, &doc).await;
        }
        let (url, body) = match ch.cfg.kind {
            ChannelKind::Email => return Err("email channel without an SMTP transport".into()),
            ChannelKind::Webhook => (ch.cfg.url.clone(), doc.clone()),
            ChannelKind::Alertmanager => (
                alertmanager_url(&ch.cfg.url),
                json!([alertmanager_alert(&doc, self.link.as_deref())]),
            ),
            ChannelKind::Wecom => (
                ch.cfg.url.clone(),
                json!({"msgtype": "markdown", "markdown": {"content": self.text(&doc, &ch.cfg.language)}}),
            ),
            ChannelKind::Dingtalk => {
                let text = self.text(&doc, &ch.cfg.language);
                let title = text.lines().next().unwrap_or("RoomGuard").to_owned();
                let url = match &ch.secret {
                    Some(secret) => {
                        let ts = now_ms();
                        let sign = dingtalk_sign(secret, ts);
                        let sep = if ch.cfg.url.contains('?') { '&' } else { '?' };
                        format!(
                            "{}{sep}timestamp={ts}&sign={}",
                            ch.cfg.url,
                            url_encode(&sign)
                        )
                    }
                    None => ch.cfg.url.clone(),
                };
                (
                    url,
                    json!({"msgtype": "markdown", "markdown": {"title": title, "text": text}}),
                )
            }
            ChannelKind::Feishu => {
                let text = self.text(&doc, &ch.cfg.language);
                let mut body = json!({"msg_type": "text", "content": {"text": text}});
                if let Some(secret) = &ch.secret {
                    let ts = now_ms() / 1000;
                    body["timestamp"] = json!(ts.to_string());
                    body["sign"] = json!(feishu_sign(secret, ts));
                }
                (ch.cfg.url.clone(), body)
            }
        };
        let response = self
            .client
            .post(&url)
            .timeout(ch.cfg.timeout)
            .header("Idempotency-Key", &row.key)
            .header("X-RoomGuard-Kind", &row.kind)
            .json(&body)
            .send()
            .await
            .map_err(|e| format!("{}: {}", ch.cfg.id, error_chain(&e)))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(format!(
                "HTTP {status}: {}",
                text.chars().take(300).collect::<String>()
            ));
        }
        // Robots answer 200 with an error code in the body.
        if matches!(
            ch.cfg.kind,
            ChannelKind::Dingtalk | ChannelKind::Wecom | ChannelKind::Feishu
        ) {
            if let Ok(v) = serde_json::from_str::<Value>(&text) {
                let code = v
                    .get("errcode")
                    .or_else(|| v.get("code"))
                    .and_then(Value::as_i64)
                    .unwrap_or(0);
                if code != 0 {
                    let msg = v
                        .get("errmsg")
                        .or_else(|| v.get("msg"))
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    return Err(format!("robot refused the message: code {code} {msg}"));
                }
            }
        }
        Ok(())
    }

    /// One email; its Message-ID is the notification's key, so a repeat of
    /// the same notification is recognisable as such by mail systems.
    async fn email(
        &self,
        ch: &Channel,
        mailer: &lettre::AsyncSmtpTransport<lettre::Tokio1Executor>,
        row: &Row,
        doc: &Value,
    ) -> Result<(), String> {
        use lettre::AsyncTransport;
        let text = self.text(doc, &ch.cfg.language);
        let subject = text.lines().next().unwrap_or("RoomGuard").to_owned();
        let from = ch.cfg.from.as_deref().unwrap_or("");
        let mut b = lettre::Message::builder()
            .from(from.parse().map_err(|e| format!("from: {e}"))?)
            .subject(subject)
            .message_id(Some(format!(
                "<{}.{}@roomguard>",
                row.key.replace(':', "."),
                ch.cfg.id
            )))
            .header(lettre::message::header::ContentType::TEXT_PLAIN);
        for to in &ch.cfg.to {
            b = b.to(to.parse().map_err(|e| format!("to {to}: {e}"))?);
        }
        let message = b.body(text).map_err(|e| e.to_string())?;
        mailer
            .send(message)
            .await
            .map(|_| ())
            .map_err(|e| format!("{}: {}", ch.cfg.id, error_chain(&e)))
    }

    /// Re-sends every active, notified alarm to Alertmanager channels.
    async fn refresh_alertmanager(&self, conn: &Arc<std::sync::Mutex<Connection>>) {
        let targets: Vec<&Channel> = self
            .channels
            .iter()
            .filter(|c| c.cfg.kind == ChannelKind::Alertmanager && !c.cfg.escalation_only)
            .collect();
        if targets.is_empty() {
            return;
        }
        let conn = conn.clone();
        let docs = tokio::task::spawn_blocking(move || -> Result<Vec<Value>, rusqlite::Error> {
            let conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            let mut st = conn.prepare(
                "SELECT payload FROM outbox o WHERE kind = 'raise' AND state = 'sent'
                   AND EXISTS (SELECT 1 FROM alarms a WHERE a.serial = o.serial AND a.cleared_at IS NULL)",
            )?;
            let rows = st.query_map([], |r| r.get::<_, String>(0))?;
            let mut out = Vec::new();
            for p in rows {
                if let Ok(v) = serde_json::from_str(&p?) {
                    out.push(v);
                }
            }
            Ok(out)
        })
        .await;
        let Ok(Ok(mut docs)) = docs else { return };
        docs.sort_by_key(|d| d["serial"].as_u64());
        docs.dedup_by_key(|d| d["serial"].as_u64());
        for ch in targets {
            let alerts: Vec<Value> = docs
                .iter()
                .filter(|d| {
                    ch.cfg
                        .levels
                        .contains(&(d["level"].as_u64().unwrap_or(4) as u8))
                })
                .map(|d| alertmanager_alert(d, self.link.as_deref()))
                .collect();
            if alerts.is_empty() {
                continue;
            }
            let sent = self
                .client
                .post(alertmanager_url(&ch.cfg.url))
                .timeout(ch.cfg.timeout)
                .json(&alerts)
                .send()
                .await;
            if let Err(e) = sent.and_then(|r| r.error_for_status()) {
                tracing::warn!(channel = %ch.cfg.id, error = %error_chain(&e), "cannot refresh active alarms in Alertmanager");
            }
        }
    }

    /// A short text message for robots, in `language`.
    fn text(&self, d: &Value, language: &str) -> String {
        let zh = language == "zh";
        let s = |k: &str| d[k].as_str().unwrap_or("").to_owned();
        let level = d["level"].as_u64().unwrap_or(4) as u8;
        let (en, lz) = level_name(level);
        let kind = d["kind"].as_str().unwrap_or("");
        let head = match (kind, zh) {
            ("raise", true) => format!("【{lz}告警】{}", s("name_zh")),
            ("clear", true) => format!("【告警恢复】{}", s("name_zh")),
            ("ack", true) => format!("【告警已确认】{}", s("name_zh")),
            ("repeat", true) => format!("【未确认提醒】{}", s("name_zh")),
            ("escalate", true) => format!("【告警升级】{}", s("name_zh")),
            ("hazard_overdue", true) => format!("【隐患逾期】{}", s("name_zh")),
            ("hazard_overdue", false) => format!("[hazard overdue] {}", s("name")),
            ("raise", false) => format!("[{en} alarm] {}", s("name")),
            ("clear", false) => format!("[cleared] {}", s("name")),
            ("ack", false) => format!("[acknowledged] {}", s("name")),
            ("repeat", false) => format!("[still unacknowledged] {}", s("name")),
            (_, false) => format!("[escalated] {}", s("name")),
            (_, true) => s("name_zh"),
        };
        let time = |k: &str| {
            d[k].as_i64()
                .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
                .map(|t| {
                    t.to_zoned_datetime(self.time_zone.clone())
                        .strftime("%Y-%m-%d %H:%M:%S %:z")
                        .to_string()
                })
                .unwrap_or_default()
        };
        let value = d["value"]
            .as_f64()
            .map(|v| format!("{v}"))
            .unwrap_or_else(|| "-".into());
        let mut lines = vec![head];
        if zh {
            lines.push(format!("站点：{}　房间：{}", s("site"), s("room")));
            lines.push(format!(
                "设备：{}　测点：{}　值：{value}",
                s("device"),
                s("point")
            ));
            lines.push(format!("发生：{}", time("raised_at")));
            if kind == "clear" {
                lines.push(format!("恢复：{}", time("cleared_at")));
            }
            if kind == "ack" {
                lines.push(format!(
                    "确认人：{}　{}",
                    s("acknowledged_by"),
                    s("comment")
                ));
            }
            if d["late"].as_bool() == Some(true) {
                lines.push("（迟报：事件发生时未能及时上报，时间为实际发生时间）".into());
            }
            if !s("advice_zh").is_empty() {
                lines.push(format!("处置：{}", s("advice_zh")));
            }
            lines.push(format!("流水号：{}　依据：{}", d["serial"], s("source")));
        } else {
            lines.push(format!("Site: {}  Room: {}", s("site"), s("room")));
            lines.push(format!(
                "Device: {}  Point: {}  Value: {value}",
                s("device"),
                s("point")
            ));
            lines.push(format!("Raised: {}", time("raised_at")));
            if kind == "clear" {
                lines.push(format!("Cleared: {}", time("cleared_at")));
            }
            if kind == "ack" {
                lines.push(format!(
                    "Acknowledged by {}: {}",
                    s("acknowledged_by"),
                    s("comment")
                ));
            }
            if d["late"].as_bool() == Some(true) {
                lines.push("(Late: this happened while it could not be reported; times are when it happened)".into());
            }
            if !s("advice").is_empty() {
                lines.push(format!("Do: {}", s("advice")));
            }
            lines.push(format!("Serial {}  Source: {}", d["serial"], s("source")));
        }
        if let Some(link) = &self.link {
            lines.push(format!("{link}/#alarm/{}", d["serial"]));
        }
        lines.join("\n\n")
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// Notifications due now, the oldest first; for each alarm and channel only
/// the first undelivered one, so a clear never overtakes its raise.
fn due(conn: &Connection, now: i64) -> Result<Vec<Row>, rusqlite::Error> {
    let mut st = conn.prepare_cached(
        "SELECT id, channel, key, kind, payload, attempts FROM outbox o
         WHERE state = 'pending' AND next_at <= ?1
           AND NOT EXISTS (SELECT 1 FROM outbox e WHERE e.channel = o.channel AND e.serial = o.serial
                           AND e.state = 'pending' AND e.id < o.id)
         ORDER BY id LIMIT ?2",
    )?;
    let rows = st.query_map(params![now, IN_FLIGHT as i64], |r| {
        Ok(Row {
            id: r.get(0)?,
            channel: r.get(1)?,
            key: r.get(2)?,
            kind: r.get(3)?,
            payload: r.get(4)?,
            attempts: r.get(5)?,
        })
    })?;
    rows.collect()
}

/// Outbox rows by state, for the API.
pub fn outbox(
    conn: &Connection,
    state: Option<&str>,
    limit: usize,
) -> Result<Vec<Value>, rusqlite::Error> {
    let mut st = conn.prepare(
        "SELECT id, channel, key, serial, kind, state, attempts, next_at, last_error, created_at, sent_at
         FROM outbox WHERE (?1 IS NULL OR state = ?1) ORDER BY id DESC LIMIT ?2",
    )?;
    let rows = st.query_map(params![state, limit as i64], |r| {
        Ok(json!({
            "id": r.get::<_, i64>(0)?,
            "channel": r.get::<_, String>(1)?,
            "key": r.get::<_, String>(2)?,
            "serial": r.get::<_, i64>(3)?,
            "kind": r.get::<_, String>(4)?,
            "state": r.get::<_, String>(5)?,
            "attempts": r.get::<_, i64>(6)?,
            "next_at": r.get::<_, i64>(7)?,
            "last_error": r.get::<_, Option<String>>(8)?,
            "created_at": r.get::<_, i64>(9)?,
            "sent_at": r.get::<_, Option<i64>>(10)?,
        }))
    })?;
    rows.collect()
}

/// Puts a dead letter back in the queue (after the receiver is fixed).
/// Not when a later notification of the same alarm reached the channel:
/// sent now, an old raise would arrive after its clear.
pub fn retry_dead(conn: &Connection, id: i64, now: i64) -> Result<bool, rusqlite::Error> {
    let n = conn.execute(
        "UPDATE outbox SET state = 'pending', attempts = 0, next_at = ?2 WHERE id = ?1 AND state = 'dead'
           AND NOT EXISTS (SELECT 1 FROM outbox l WHERE l.serial = outbox.serial AND l.channel = outbox.channel
                           AND l.id > outbox.id AND l.state = 'sent')",
        params![id, now],
    )?;
    Ok(n == 1)
}

/// Pending notifications, for the metrics page.
pub fn backlog(conn: &Connection) -> Result<(i64, i64), rusqlite::Error> {
    conn.query_row(
        "SELECT coalesce(sum(state = 'pending'), 0), coalesce(sum(state = 'dead'), 0) FROM outbox",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()
    .map(|v| v.unwrap_or((0, 0)))
}

/// Exponential from 1 s, capped, with jitter so many failed notifications
/// do not retry in step.
fn backoff_ms(attempts: u32, salt: i64) -> i64 {
    let base = 1_000i64
        .saturating_mul(1 << attempts.min(12))
        .min(MAX_BACKOFF_MS);
    let jitter = (salt.wrapping_mul(2_654_435_761) ^ now_ms()).rem_euclid(base / 4 + 1);
    base - base / 8 + jitter
}

fn alertmanager_url(base: &str) -> String {
    format!("{}/api/v2/alerts", base.trim_end_matches('/'))
}

fn rfc3339(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// An Alertmanager v2 alert. Labels identify the alarm (its serial), so a
/// repeated post updates the same alert; a cleared alarm has `endsAt`.
fn alertmanager_alert(d: &Value, link: Option<&str>) -> Value {
    let s = |k: &str| d[k].as_str().unwrap_or("").to_owned();
    let level = d["level"].as_u64().unwrap_or(4) as u8;
    let mut alert = json!({
        "labels": {
            "alertname": s("rule"),
            "severity": level_name(level).0,
            "level": level.to_string(),
            "category": s("category"),
            "site": s("site"),
            "room": s("room"),
            "device": s("device"),
            "point": s("point"),
            "serial": d["serial"].to_string(),
        },
        "annotations": {
            "summary": s("name"),
            "summary_zh": s("name_zh"),
            "advice": s("advice"),
            "source": s("source"),
            "value": d["value"].to_string(),
        },
        "startsAt": rfc3339(d["raised_at"].as_i64().unwrap_or(0)),
    });
    if let Some(end) = d["cleared_at"].as_i64() {
        alert["endsAt"] = json!(rfc3339(end));
    }
    if let Some(link) = link {
        alert["generatorURL"] = json!(format!("{link}/#alarm/{}", d["serial"]));
    }
    alert
}

/// DingTalk: base64(HMAC-SHA256(secret, "{timestamp}\n{secret}")), timestamp in ms.
pub fn dingtalk_sign(secret: &str, ts_ms: i64) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    crate::base64::encode(ring::hmac::sign(&key, format!("{ts_ms}\n{secret}").as_bytes()).as_ref())
}

/// Feishu: base64(HMAC-SHA256(key = "{timestamp}\n{secret}", empty message)), timestamp in s.
pub fn feishu_sign(secret: &str, ts_s: i64) -> String {
    let key = ring::hmac::Key::new(
        ring::hmac::HMAC_SHA256,
        format!("{ts_s}\n{secret}").as_bytes(),
    );
    crate::base64::encode(ring::hmac::sign(&key, b"").as_ref())
}

/// Percent-encoding of a query value (the robots' signatures).
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn now_ms() -> i64 {
    crate::store::now_ms()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn robot_signatures_match_an_independent_implementation() {
        assert_eq!(
            dingtalk_sign("SEC123", 1_700_000_000_000),
            DINGTALK_EXPECTED
        );
        assert_eq!(feishu_sign("SEC123", 1_700_000_000), FEISHU_EXPECTED);
    }

    const DINGTALK_EXPECTED: &str = "lkcPI1uoxBY1gUnCnnPH1Kkru0Hqjo7rFpA3haIVhEQ=";
    const FEISHU_EXPECTED: &str = "j/tImR0k8vYXRsYw0+GHVQkV1v/J/8obOuMU7PE/KDo=";

    #[test]
    fn url_encoding_escapes_base64_symbols() {
        assert_eq!(url_encode("a+b/c="), "a%2Bb%2Fc%3D");
    }

    #[test]
    fn an_alertmanager_alert_names_the_alarm_and_ends_when_cleared() {
        let d = json!({"rule": "fire.smoke", "level": 1, "serial": 7, "site": "s", "room": "r", "name": "Smoke",
                       "raised_at": 1_700_000_000_000i64, "cleared_at": 1_700_000_060_000i64});
        let a = alertmanager_alert(&d, None);
        assert_eq!(a["labels"]["alertname"], "fire.smoke");
        assert_eq!(a["labels"]["severity"], "critical");
        assert_eq!(a["labels"]["serial"], "7");
        assert_eq!(a["startsAt"], "2023-11-14T22:13:20Z");
        assert_eq!(a["endsAt"], "2023-11-14T22:14:20Z");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff_ms(1, 1) < backoff_ms(4, 1));
        assert!(backoff_ms(30, 1) <= MAX_BACKOFF_MS + MAX_BACKOFF_MS / 4);
    }
}
