//! Delivery of the outbox: every queued notification to its channel, in
//! order per alarm and channel, retried with capped backoff, a dead letter
//! after too many failures. Rows stay in the store, so a restart resumes
//! where it stopped; each carries an idempotency key (`serial:kind`) that
//! receivers can use to drop the one duplicate a crash between sending and
//! recording could cause.
//!
//! Channels, one file each: a generic JSON `webhook` (docs/ALARMS.md),
//! Prometheus `alertmanager` API v2, `dingtalk`, `wecom` and `feishu` group
//! robots, `email`; `text` is the message people read. The outbox rows live
//! in the store (`store/outbox.rs`).

mod alertmanager;
pub mod dingtalk;
mod email;
pub mod feishu;
pub mod text;
mod webhook;
mod wecom;

use crate::metrics::Metrics;
use crate::store::backend::Reads;
use crate::store::outbox::{self, Outcome, Row};
use roomguard_protocol::clock::now_ms;
use roomguard_protocol::conf::{self, Secret};
use serde::{Deserialize, Serialize};
use serde_json::Value;
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
    /// Kept in the collector and shown on its Notifications page
    /// (`GET /api/v1/inbox`), as a robot's text: what on-call staff would
    /// receive, with no receiver to set up (the demo's channel).
    Inbox,
}

/// A notification channel as configured (`[[alarms.channels]]`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig {
    pub id: String,
    pub kind: ChannelKind,
    /// Webhook or robot URL; Alertmanager's base URL (`/api/v2/alerts` is
    /// added); an SMTP URL. None for the inbox.
    #[serde(default)]
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
    /// Takes alarms raised inside a declared drill, marked as drills
    /// (default): a drill exercises the on-call path too. `false` keeps a
    /// channel (a manager's, a regulator's) for real alarms only.
    #[serde(default = "yes")]
    pub drills: bool,
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

fn yes() -> bool {
    true
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
        } else if self.kind == ChannelKind::Inbox {
            if !self.url.is_empty() {
                p.push(format!("{path}.url"), "an inbox channel takes no url");
            }
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
        } else if let Err(e) = email::mailer(self, None) {
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
    mailer: Option<email::Mailer>,
}

/// What a channel posts for one notification.
pub struct Request {
    pub url: String,
    pub body: Value,
}

/// Sends the outbox. Runs until the process ends.
pub struct Sender {
    channels: Vec<Channel>,
    records: Reads,
    wake: Arc<Notify>,
    metrics: Arc<Metrics>,
    client: reqwest::Client,
    time_zone: jiff::tz::TimeZone,
    /// Site URL put in links of messages, if known.
    link: Option<String>,
    /// In a cluster, this node and the lease: rows are claimed before
    /// they are sent.
    claim: Option<(String, Duration)>,
}

/// How often active alarms are sent to Alertmanager again; it resolves an
/// alert it has not heard of for `resolve_timeout` (5 min by default).
const ALERTMANAGER_REFRESH: Duration = Duration::from_secs(60);
/// Longest wait between attempts.
const MAX_BACKOFF_MS: i64 = 5 * 60_000;
/// Notifications in flight at once.
const IN_FLIGHT: usize = 16;

impl Sender {
    pub fn new(
        channels: &[ChannelConfig],
        records: Reads,
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
                    ChannelKind::Email => Some(email::mailer(c, secret.as_deref())?),
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
            records,
            wake,
            metrics,
            client,
            time_zone: jiff::tz::TimeZone::get(time_zone).unwrap_or(jiff::tz::TimeZone::UTC),
            link,
            claim: None,
        })
    }

    /// Claims rows as node `node` before sending them (a cluster's nodes
    /// all send the outbox; see `outbox::due`).
    pub fn claiming(mut self, node: String, lease: Duration) -> Sender {
        self.claim = Some((node, lease));
        self
    }

    pub async fn run(self) {
        let this = Arc::new(self);
        let mut refresh = tokio::time::interval(ALERTMANAGER_REFRESH);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = this.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = refresh.tick() => {
                    this.refresh_alertmanager().await;
                    continue;
                }
            }
            // Until nothing is due: a burst larger than one round goes on at once.
            loop {
                let claim = this.claim.clone();
                let rows = match claim {
                    None => {
                        this.records
                            .read(async |db| outbox::due(db, now_ms(), IN_FLIGHT, None).await)
                            .await
                    }
                    Some((node, lease)) => {
                        this.records
                            .write(async move |db| {
                                let claim = Some((node.as_str(), lease.as_secs_f64()));
                                outbox::due(db, now_ms(), IN_FLIGHT, claim).await
                            })
                            .await
                    }
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
                let settled: Vec<(Row, Outcome)> = results
                    .into_iter()
                    .map(|(row, result)| {
                        let outcome = this.outcome(&row, result);
                        (row, outcome)
                    })
                    .collect();
                // Each outcome in a transaction of its own: on PostgreSQL a
                // statement that fails spoils its whole transaction, and one
                // row must not take the others' records with it.
                let now = now_ms();
                let mut unrecorded = 0;
                for (row, outcome) in settled {
                    let key = row.key.clone();
                    let written = this
                        .records
                        .write(async move |db| outbox::settle(db, &row, &outcome, now).await)
                        .await;
                    if let Err(e) = written {
                        tracing::error!(error = %e, %key, "cannot record a delivery; it may be sent again");
                        unrecorded += 1;
                    }
                }
                // What could not be recorded is still due: wait for the
                // next round rather than send it again at once.
                if unrecorded > 0 {
                    break;
                }
            }
        }
    }

    /// What one delivery's result means for its row (counted and logged).
    fn outcome(&self, row: &Row, result: Result<(), String>) -> Outcome {
        match result {
            Ok(()) => {
                self.metrics.notifications_sent.inc();
                tracing::info!(channel = %row.channel, key = %row.key, "notification delivered");
                Outcome::Sent
            }
            Err(e) => {
                self.metrics.notification_failures.inc();
                let attempts = row.attempts + 1;
                let max = self.channel(&row.channel).map_or(1, |c| c.cfg.max_attempts);
                if attempts >= max {
                    self.metrics.notifications_dead.inc();
                    tracing::error!(channel = %row.channel, key = %row.key, attempts, error = %e,
                        "notification gave up: kept as a dead letter (GET /api/v1/notifications?state=dead)");
                    Outcome::Dead { error: e }
                } else {
                    let backoff = backoff_ms(attempts, row.id);
                    tracing::warn!(channel = %row.channel, key = %row.key, attempts, retry_in_ms = backoff, error = %e, "notification failed; will retry");
                    Outcome::Retry {
                        error: e,
                        next_at: now_ms() + backoff,
                    }
                }
            }
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
        let text = || {
            text::text(
                &doc,
                &ch.cfg.language,
                &self.time_zone,
                self.link.as_deref(),
            )
        };
        let (url, secret) = (ch.cfg.url.as_str(), ch.secret.as_deref());
        let req = match ch.cfg.kind {
            // Kept where it is: a sent row of the outbox is the message.
            ChannelKind::Inbox => return Ok(()),
            ChannelKind::Email => {
                let Some(mailer) = &ch.mailer else {
                    return Err("email channel without an SMTP transport".into());
                };
                return email::send(&ch.cfg, mailer, &row.key, text()).await;
            }
            ChannelKind::Webhook => webhook::request(url, &doc),
            ChannelKind::Alertmanager => alertmanager::request(url, &doc, self.link.as_deref()),
            ChannelKind::Wecom => wecom::request(url, &text()),
            ChannelKind::Dingtalk => dingtalk::request(url, secret, &text(), now_ms()),
            ChannelKind::Feishu => feishu::request(url, secret, &text(), now_ms()),
        };
        let response = self
            .client
            .post(&req.url)
            .timeout(ch.cfg.timeout)
            .header("Idempotency-Key", &row.key)
            .header("X-RoomGuard-Kind", &row.kind)
            .json(&req.body)
            .send()
            .await
            .map_err(|e| format!("{}: {}", ch.cfg.id, error_chain(&e)))?;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(format!(
                "HTTP {status}: {}",
                body.chars().take(300).collect::<String>()
            ));
        }
        if matches!(
            ch.cfg.kind,
            ChannelKind::Dingtalk | ChannelKind::Wecom | ChannelKind::Feishu
        ) {
            if let Some(why) = robot_refused(&body) {
                return Err(why);
            }
        }
        Ok(())
    }

    /// Re-sends every active, notified alarm to Alertmanager channels.
    async fn refresh_alertmanager(&self) {
        let targets: Vec<&Channel> = self
            .channels
            .iter()
            .filter(|c| c.cfg.kind == ChannelKind::Alertmanager && !c.cfg.escalation_only)
            .collect();
        if targets.is_empty() {
            return;
        }
        let docs = self
            .records
            .read(async |db| outbox::active_told(db).await)
            .await;
        let docs = match docs {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read active alarms for Alertmanager");
                return;
            }
        };
        for ch in targets {
            let alerts: Vec<Value> = docs
                .iter()
                .filter(|d| {
                    ch.cfg
                        .levels
                        .contains(&(d["level"].as_u64().unwrap_or(4) as u8))
                        // A channel that takes no drills hears none, refreshed or not.
                        && (ch.cfg.drills || d["drill"].is_null())
                })
                .map(|d| alertmanager::alert(d, self.link.as_deref()))
                .collect();
            if alerts.is_empty() {
                continue;
            }
            let sent = self
                .client
                .post(alertmanager::url(&ch.cfg.url))
                .timeout(ch.cfg.timeout)
                .json(&alerts)
                .send()
                .await;
            if let Err(e) = sent.and_then(|r| r.error_for_status()) {
                tracing::warn!(channel = %ch.cfg.id, error = %error_chain(&e), "cannot refresh active alarms in Alertmanager");
            }
        }
    }
}

pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
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

/// Robots answer 200 with an error code in the body: what they refused.
fn robot_refused(body: &str) -> Option<String> {
    let v = serde_json::from_str::<Value>(body).ok()?;
    let code = v
        .get("errcode")
        .or_else(|| v.get("code"))
        .and_then(Value::as_i64)
        .unwrap_or(0);
    if code == 0 {
        return None;
    }
    let msg = v
        .get("errmsg")
        .or_else(|| v.get("msg"))
        .and_then(Value::as_str)
        .unwrap_or("");
    Some(format!("robot refused the message: code {code} {msg}"))
}

/// Percent-encoding of a query value (the robots' signatures).
pub(crate) fn url_encode(s: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_encoding_escapes_base64_symbols() {
        assert_eq!(url_encode("a+b/c="), "a%2Bb%2Fc%3D");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff_ms(1, 1) < backoff_ms(4, 1));
        assert!(backoff_ms(30, 1) <= MAX_BACKOFF_MS + MAX_BACKOFF_MS / 4);
    }

    #[test]
    fn a_robot_refusing_with_200_is_a_failure_naming_its_code() {
        assert_eq!(robot_refused(r#"{"errcode":0,"errmsg":"ok"}"#), None);
        assert_eq!(
            robot_refused(r#"{"errcode":310000,"errmsg":"sign not match"}"#).as_deref(),
            Some("robot refused the message: code 310000 sign not match")
        );
        assert!(robot_refused(r#"{"code":19021,"msg":"bad sign"}"#).is_some());
        assert_eq!(robot_refused("not json"), None);
    }
}
