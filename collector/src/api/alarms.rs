//! Alarm API: list and read alarms with their audit trail, acknowledge,
//! comment, assign; maintenance windows (silences); the loaded rules; the
//! notification outbox and its dead letters.
//!
//! Until users and roles exist (issue 9) the person acting is named in the
//! request body (`by`) and recorded in the audit trail.

use super::history::{bad, parse_time, show, zone};
use super::{body, ApiError, AppState};
use crate::alarm::lifecycle::{level_name, Route, Silence};
use crate::alarm::rules::{Cond, RuleSet};
use crate::auth::User;
use crate::store::alarms::{
    self as record, Action, AlarmFilter, AlarmRow, NewSilence, RecordError,
};
use crate::store::sql::Conn;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use jiff::tz::TimeZone;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use tokio::sync::Notify;

/// What the alarm endpoints need besides the store.
pub struct AlarmsApi {
    pub rules: Arc<RuleSet>,
    pub routes: Vec<Route>,
    /// Wakes the notification sender after an acknowledgement is queued.
    pub wake: Arc<Notify>,
    /// Channels of kind `inbox`, shown by `GET /api/v1/inbox`.
    pub inboxes: Vec<String>,
    /// `alarms.link`, for the message text.
    pub link: Option<String>,
}

/// Who acts: the logged-in user; with authentication off, whoever the body
/// names.
fn actor(user: &User, by: Option<String>) -> String {
    match by {
        Some(by) if user.name == "anonymous" => by,
        _ => user.name.clone(),
    }
}

/// Longest name of a person, comment or assignee accepted.
const MAX_NAME: usize = 128;
const MAX_TEXT: usize = 2_000;

impl From<RecordError> for ApiError {
    fn from(e: RecordError) -> Self {
        let code = match &e {
            RecordError::NoAlarm(_) | RecordError::NoSilence(_) => StatusCode::NOT_FOUND,
            RecordError::Invalid(_) => StatusCode::BAD_REQUEST,
            RecordError::Conflict(_) => StatusCode::CONFLICT,
            RecordError::Store(_) => {
                tracing::error!(error = %e, "alarm store access failed");
                StatusCode::SERVICE_UNAVAILABLE
            }
        };
        ApiError(code, e.to_string())
    }
}

fn api(st: &AppState) -> Result<Arc<AlarmsApi>, ApiError> {
    st.alarms.clone().ok_or_else(|| {
        ApiError(
            StatusCode::NOT_FOUND,
            "alarms are off on this collector (alarms.enabled = false)".into(),
        )
    })
}

/// Runs `f` in one transaction on the record.
async fn with_store<T, F>(st: &AppState, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: AsyncFnOnce(Conn<'_>) -> Result<T, RecordError> + Send + 'static,
{
    Ok(st.reads.write(f).await?)
}

/// Runs `f`, which only reads, on the record.
async fn reading<T, F>(st: &AppState, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: AsyncFnOnce(Conn<'_>) -> Result<T, RecordError> + Send + 'static,
{
    Ok(st.reads.read(f).await?)
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(v)| v).map_err(|e| bad(e.body_text()))
}

fn name(field: &str, v: &str) -> Result<(), ApiError> {
    if v.trim().is_empty() || v.len() > MAX_NAME || v.chars().any(char::is_control) {
        return Err(bad(format!(
            "{field}: must be 1–{MAX_NAME} printable characters"
        )));
    }
    Ok(())
}

fn text(field: &str, v: &str) -> Result<(), ApiError> {
    if v.len() > MAX_TEXT {
        return Err(bad(format!("{field}: at most {MAX_TEXT} bytes")));
    }
    Ok(())
}

/// An alarm as the API shows it: times in `tz`, names and advice from its rule.
fn alarm_json(a: &AlarmRow, rules: &RuleSet, tz: &TimeZone) -> Value {
    let rule = rules.index(&a.rule).map(|i| &rules.rules[i]);
    let (level_en, level_zh) = level_name(a.level);
    let t = |v: Option<i64>| v.map(|ms| show(ms, tz));
    json!({
        "serial": a.serial,
        "state": a.state,
        "rule": a.rule,
        "name": a.name,
        "name_zh": rule.map(|r| r.name_zh.as_str()),
        "level": a.level,
        "level_name": level_en,
        "level_name_zh": level_zh,
        "category": a.category,
        "site": a.site,
        "agent": a.agent,
        "room": a.room,
        "device": a.device,
        "point": a.point,
        "value": a.value,
        "began_at": show(a.began_at, tz),
        "raised_at": show(a.raised_at, tz),
        "cleared_at": t(a.cleared_at),
        "clear_value": a.clear_value,
        "late": a.late,
        "inhibited": a.inhibited,
        "silenced_by": a.silenced_by,
        "notified": a.notified,
        "drill": a.drill,
        "incident": a.incident,
        "acknowledged_by": a.ack_by,
        "acknowledged_at": t(a.ack_at),
        "comment": a.ack_comment,
        "assignee": a.assignee,
        "advice": rule.map(|r| r.advice.as_str()),
        "advice_zh": rule.map(|r| r.advice_zh.as_str()),
        "source": rule.map(|r| r.source.as_str()),
    })
}

fn silence_json(s: &Silence, tz: &TimeZone) -> Value {
    json!({
        "id": s.id,
        "site": s.site,
        "room": s.room,
        "rule": s.rule,
        "reason": s.reason,
        "owner": s.owner,
        "starts_at": show(s.starts_at, tz),
        "ends_at": show(s.ends_at, tz),
        "created_at": show(s.created_at, tz),
        "ended_at": s.ended_at.map(|t| show(t, tz)),
        "ended_by": s.ended_by,
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    state: Option<String>,
    site: Option<String>,
    room: Option<String>,
    rule: Option<String>,
    level: Option<u8>,
    from: Option<String>,
    to: Option<String>,
    drill: Option<bool>,
    limit: Option<usize>,
    tz: Option<String>,
}

pub async fn list(
    State(st): State<Arc<AppState>>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let a = api(&st)?;
    let q = query(q)?;
    let tz = zone(q.tz.as_deref(), &st)?;
    let now = jiff::Timestamp::now();
    let from = q
        .from
        .as_deref()
        .map(|s| parse_time("from", s, &tz, now))
        .transpose()?;
    let to =
        q.to.as_deref()
            .map(|s| parse_time("to", s, &tz, now))
            .transpose()?;
    if let (Some(f), Some(t)) = (from, to) {
        if f > t {
            return Err(bad("from is after to"));
        }
    }
    let filter = AlarmFilter {
        state: q.state,
        site: q.site,
        room: q.room,
        rule: q.rule,
        level: q.level,
        from,
        to,
        drill: q.drill,
        limit: q.limit,
    };
    let rows = reading(&st, async move |c| record::list(c, &filter).await).await?;
    let alarms: Vec<Value> = rows.iter().map(|r| alarm_json(r, &a.rules, &tz)).collect();
    Ok(Json(json!({ "alarms": alarms })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TzQuery {
    tz: Option<String>,
}

fn serial_of(s: &str) -> Result<u64, ApiError> {
    s.parse()
        .map_err(|_| bad(format!("{s:?} is not an alarm serial number")))
}

pub async fn one(
    State(st): State<Arc<AppState>>,
    Path(serial): Path<String>,
    q: Result<Query<TzQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let a = api(&st)?;
    let tz = zone(query(q)?.tz.as_deref(), &st)?;
    let serial = serial_of(&serial)?;
    let (alarm, events) = reading(&st, async move |c| {
        let alarm = record::alarm(c, serial)
            .await?
            .ok_or(RecordError::NoAlarm(serial))?;
        Ok((alarm, record::events(c, serial).await?))
    })
    .await?;
    let mut v = alarm_json(&alarm, &a.rules, &tz);
    v["events"] = events
        .iter()
        .map(|e| json!({"at": show(e.at, &tz), "kind": e.kind, "by": e.by, "text": e.text}))
        .collect();
    Ok(Json(v))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckBody {
    /// Only when authentication is off; otherwise the logged-in user acts.
    #[serde(default)]
    by: Option<String>,
    #[serde(default)]
    comment: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommentBody {
    /// Only when authentication is off; otherwise the logged-in user acts.
    #[serde(default)]
    by: Option<String>,
    text: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssignBody {
    /// Only when authentication is off; otherwise the logged-in user acts.
    #[serde(default)]
    by: Option<String>,
    to: String,
}

async fn act(
    st: Arc<AppState>,
    serial: String,
    by: String,
    action: impl FnOnce(&str) -> OwnedAction + Send + 'static,
) -> Result<Json<Value>, ApiError> {
    let a = api(&st)?;
    let serial = serial_of(&serial)?;
    name("by", &by)?;
    let rules = a.rules.clone();
    let routes = a.routes.clone();
    let (alarm, queued) = with_store(&st, async move |c| {
        let owned = action(&by);
        let act = match &owned {
            OwnedAction::Ack(comment) => Action::Acknowledge {
                comment: comment.as_deref(),
            },
            OwnedAction::Comment(t) => Action::Comment { text: t },
            OwnedAction::Assign(to) => Action::Assign { to },
        };
        record::act(
            c,
            &rules,
            &routes,
            serial,
            &by,
            act,
            roomguard_protocol::clock::now_ms(),
        )
        .await
    })
    .await?;
    if queued > 0 {
        a.wake.notify_one();
    }
    st.live.alarms_changed();
    let tz = zone(None, &st)?;
    Ok(Json(alarm_json(&alarm, &a.rules, &tz)))
}

/// An action with owned text, built inside the blocking task.
pub enum OwnedAction {
    Ack(Option<String>),
    Comment(String),
    Assign(String),
}

pub async fn acknowledge(
    State(st): State<Arc<AppState>>,
    Extension(user): Extension<User>,
    Path(serial): Path<String>,
    raw: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    // The body is optional: a bare POST acknowledges as the caller.
    let b: AckBody = if raw.iter().all(u8::is_ascii_whitespace) {
        AckBody::default()
    } else {
        serde_json::from_slice(&raw).map_err(|e| bad(format!("body: {e}")))?
    };
    if let Some(c) = &b.comment {
        text("comment", c)?;
    }
    act(st, serial, actor(&user, b.by), move |_| {
        OwnedAction::Ack(b.comment)
    })
    .await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkAckBody {
    serials: Vec<u64>,
    /// Only when authentication is off; otherwise the logged-in user acts.
    #[serde(default)]
    by: Option<String>,
    #[serde(default)]
    comment: Option<String>,
}

/// How many alarms one bulk acknowledgement may name.
const BULK_MAX: usize = 1_000;

/// Acknowledges a selection at once (`POST /api/v1/alarms/ack`), each with
/// its incident, in one transaction: `acknowledged` lists every alarm this
/// acknowledged (incident members included), `already` those acknowledged
/// before, `unknown` serials with no alarm.
pub async fn acknowledge_many(
    State(st): State<Arc<AppState>>,
    Extension(user): Extension<User>,
    b: Result<Json<BulkAckBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let a = api(&st)?;
    let b = body(b)?;
    if b.serials.is_empty() || b.serials.len() > BULK_MAX {
        return Err(bad(format!("serials: give 1 to {BULK_MAX} alarm serials")));
    }
    if let Some(c) = &b.comment {
        text("comment", c)?;
    }
    let by = actor(&user, b.by);
    name("by", &by)?;
    let (rules, routes) = (a.rules.clone(), a.routes.clone());
    // In serial order, as every acknowledgement and the sweep lock: two
    // selections that overlap wait for each other rather than deadlock.
    let mut serials = b.serials;
    serials.sort_unstable();
    serials.dedup();
    let (done, already, unknown, queued) = with_store(&st, async move |c| {
        let now = roomguard_protocol::clock::now_ms();
        let (mut done, mut already, mut unknown, mut queued) = (Vec::new(), Vec::new(), Vec::new(), 0);
        for serial in serials {
            if done.contains(&serial) {
                continue;
            }
            let act = Action::Acknowledge {
                comment: b.comment.as_deref(),
            };
            match record::act(c, &rules, &routes, serial, &by, act, now).await {
                Ok((alarm, q)) => {
                    queued += q;
                    // The incident's members were acknowledged with it.
                    for r in c
                        .rows(
                            "SELECT serial FROM alarms WHERE (incident = $1 OR serial = $1) AND ack_at = $2",
                            crate::args![alarm.incident, now],
                        )
                        .await?
                    {
                        let s: u64 = r.get(0)?;
                        if !done.contains(&s) {
                            done.push(s);
                        }
                    }
                }
                // Checked before anything is written: the transaction goes on.
                Err(RecordError::Conflict(_)) => already.push(serial),
                Err(RecordError::NoAlarm(_)) => unknown.push(serial),
                Err(e) => return Err(e),
            }
        }
        Ok((done, already, unknown, queued))
    })
    .await?;
    if queued > 0 {
        a.wake.notify_one();
    }
    st.live.alarms_changed();
    tracing::info!(count = done.len(), "alarms acknowledged together");
    Ok(Json(
        json!({ "acknowledged": done, "already": already, "unknown": unknown }),
    ))
}

pub async fn comment(
    State(st): State<Arc<AppState>>,
    Extension(user): Extension<User>,
    Path(serial): Path<String>,
    b: Result<Json<CommentBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let b = body(b)?;
    if b.text.trim().is_empty() {
        return Err(bad("text: must not be empty"));
    }
    text("text", &b.text)?;
    act(st, serial, actor(&user, b.by), move |_| {
        OwnedAction::Comment(b.text)
    })
    .await
}

pub async fn assign(
    State(st): State<Arc<AppState>>,
    Extension(user): Extension<User>,
    Path(serial): Path<String>,
    b: Result<Json<AssignBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let b = body(b)?;
    name("to", &b.to)?;
    act(st, serial, actor(&user, b.by), move |_| {
        OwnedAction::Assign(b.to)
    })
    .await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SilencesQuery {
    /// Ended and expired ones too.
    #[serde(default)]
    all: bool,
    tz: Option<String>,
}

pub async fn silences(
    State(st): State<Arc<AppState>>,
    q: Result<Query<SilencesQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    api(&st)?;
    let q = query(q)?;
    let tz = zone(q.tz.as_deref(), &st)?;
    let rows = reading(&st, async move |c| {
        record::list_silences(c, q.all, roomguard_protocol::clock::now_ms()).await
    })
    .await?;
    Ok(Json(
        json!({ "silences": rows.iter().map(|s| silence_json(s, &tz)).collect::<Vec<_>>() }),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SilenceBody {
    site: Option<String>,
    room: Option<String>,
    /// Rule id or glob (`electrical.*`).
    rule: Option<String>,
    reason: String,
    owner: String,
    /// RFC 3339, local date-time, `now` (default).
    starts_at: Option<String>,
    /// RFC 3339, local date-time, or `now+2h`.
    ends_at: String,
}

pub async fn create_silence(
    State(st): State<Arc<AppState>>,
    Extension(user): Extension<User>,
    b: Result<Json<SilenceBody>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let a = api(&st)?;
    let b = body(b)?;
    let tz = zone(None, &st)?;
    let now = jiff::Timestamp::now();
    let starts_at = b
        .starts_at
        .as_deref()
        .map(|s| parse_time("starts_at", s, &tz, now))
        .transpose()?;
    let ends_at = parse_time("ends_at", &b.ends_at, &tz, now)?;
    if let Some(rule) = &b.rule {
        if !a
            .rules
            .rules
            .iter()
            .any(|r| crate::alarm::rules::glob(rule, &r.id))
        {
            return Err(bad(format!(
                "rule: {rule:?} names no loaded rule (GET /api/v1/rules)"
            )));
        }
    }
    name("owner", &b.owner)?;
    text("reason", &b.reason)?;
    let new = NewSilence {
        site: b.site,
        room: b.room,
        rule: b.rule,
        reason: b.reason,
        owner: b.owner,
        starts_at,
        ends_at,
    };
    let s = with_store(&st, async move |c| {
        let s = record::create_silence(c, &new, roomguard_protocol::clock::now_ms()).await?;
        let detail = format!("{} (owner {}, reason {})", s.id, s.owner, s.reason);
        crate::store::auth::audit_in(
            c,
            &user.name,
            "silence.create",
            &detail,
            roomguard_protocol::clock::now_ms(),
        )
        .await?;
        Ok(s)
    })
    .await?;
    tracing::info!(id = s.id, owner = %s.owner, reason = %s.reason, "maintenance window created");
    st.live.alarms_changed();
    Ok((StatusCode::CREATED, Json(silence_json(&s, &tz))))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndBody {
    /// Only when authentication is off; otherwise the logged-in user acts.
    #[serde(default)]
    by: Option<String>,
}

pub async fn end_silence(
    State(st): State<Arc<AppState>>,
    Extension(user): Extension<User>,
    Path(id): Path<String>,
    b: Result<Json<EndBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    api(&st)?;
    let b = body(b)?;
    let by = actor(&user, b.by);
    name("by", &by)?;
    let id: i64 = id
        .parse()
        .map_err(|_| bad(format!("{id:?} is not a silence id")))?;
    let tz = zone(None, &st)?;
    let s = with_store(&st, async move |c| {
        let s = record::end_silence(c, id, &by, roomguard_protocol::clock::now_ms()).await?;
        crate::store::auth::audit_in(
            c,
            &by,
            "silence.end",
            &id.to_string(),
            roomguard_protocol::clock::now_ms(),
        )
        .await?;
        Ok(s)
    })
    .await?;
    st.live.alarms_changed();
    Ok(Json(silence_json(&s, &tz)))
}

pub async fn rules(State(st): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let a = api(&st)?;
    let rules: Vec<Value> = a
        .rules
        .rules
        .iter()
        .map(|r| {
            let condition = match &r.cond {
                Cond::Above => format!("above {}", r.base.threshold),
                Cond::Below => format!("below {}", r.base.threshold),
                Cond::Rise { per_ms, window_ms } => {
                    format!("rise {} per {} s over {} s", r.base.threshold, per_ms / 1000, window_ms / 1000)
                }
                Cond::Equals => format!("equals {}", r.base.threshold),
                Cond::Text(t) => format!("state {t}"),
                Cond::Bit(b) => format!("bit {b} set"),
                Cond::Silent => format!("silent {} s", r.base.threshold / 1000.0),
                Cond::AgentSilent => format!("agent silent {} s", r.base.threshold / 1000.0),
                Cond::Composite { of, need } => {
                    let ids: Vec<&str> = of.iter().map(|i| a.rules.rules[*i].id.as_str()).collect();
                    format!("{need:?} of {}", ids.join(", "))
                }
            };
            json!({
                "id": r.id,
                "name": r.name,
                "name_zh": r.name_zh,
                "category": r.category.as_str(),
                "level": r.base.level,
                "enabled": r.base.enabled,
                "condition": condition,
                "hysteresis": r.base.hysteresis,
                "delay_s": r.base.delay_ms as f64 / 1000.0,
                "clear_delay_s": r.base.clear_delay_ms as f64 / 1000.0,
                "inhibited_by": r.inhibited_by.iter().map(|i| a.rules.rules[*i].id.clone()).collect::<Vec<_>>(),
                "source": r.source,
                "advice": r.advice,
                "advice_zh": r.advice_zh,
            })
        })
        .collect();
    Ok(Json(json!({ "rules": rules })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationsQuery {
    state: Option<String>,
    limit: Option<usize>,
}

pub async fn notifications(
    State(st): State<Arc<AppState>>,
    q: Result<Query<NotificationsQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    api(&st)?;
    let q = query(q)?;
    if let Some(s) = q.state.as_deref() {
        if !matches!(s, "pending" | "sent" | "dead") {
            return Err(bad(format!("state: {s:?} is not pending, sent or dead")));
        }
    }
    let limit = q.limit.unwrap_or(200);
    if limit == 0 || limit > record::MAX_LIST {
        return Err(bad(format!("limit must be 1 to {}", record::MAX_LIST)));
    }
    let rows = reading(&st, async move |c| {
        Ok(crate::store::outbox::list(c, q.state.as_deref(), limit).await?)
    })
    .await?;
    Ok(Json(json!({ "notifications": rows })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboxQuery {
    lang: Option<String>,
    limit: Option<usize>,
    tz: Option<String>,
}

/// The messages the inbox channels received, newest first, each as the
/// text a robot or an email would carry (`lang`: `zh-CN` or `en`).
pub async fn inbox(
    State(st): State<Arc<AppState>>,
    q: Result<Query<InboxQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let a = api(&st)?;
    let q = query(q)?;
    let lang = match q.lang.as_deref().unwrap_or("zh-CN") {
        "zh-CN" | "zh" => "zh",
        "en" => "en",
        other => return Err(bad(format!("lang: {other:?} is not zh-CN or en"))),
    };
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > record::MAX_LIST {
        return Err(bad(format!("limit must be 1 to {}", record::MAX_LIST)));
    }
    let tz = zone(q.tz.as_deref(), &st)?;
    let channels = a.inboxes.clone();
    let rows = reading(&st, async move |c| {
        let mut all = Vec::new();
        for ch in &channels {
            all.extend(crate::store::outbox::sent_to(c, ch, limit).await?);
        }
        Ok(all)
    })
    .await?;
    let mut messages: Vec<(i64, Value)> = rows
        .into_iter()
        .map(|(id, channel, sent_at, doc)| {
            let text = crate::alarm::notify::text::text(&doc, lang, &tz, a.link.as_deref());
            (
                id,
                json!({
                    "id": id, "channel": channel, "key": doc["key"], "kind": doc["kind"],
                    "serial": doc["serial"], "level": doc["level"], "drill": doc["drill"],
                    "incident": doc["incident"], "sent_at": show(sent_at, &tz), "text": text,
                }),
            )
        })
        .collect();
    messages.sort_by_key(|(id, _)| std::cmp::Reverse(*id));
    messages.truncate(limit);
    Ok(Json(json!({
        "inbox": !a.inboxes.is_empty(),
        "messages": messages.into_iter().map(|(_, m)| m).collect::<Vec<_>>(),
    })))
}

pub async fn retry(
    State(st): State<Arc<AppState>>,
    Extension(user): Extension<User>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let a = api(&st)?;
    let id: i64 = id
        .parse()
        .map_err(|_| bad(format!("{id:?} is not a notification id")))?;
    let requeued = with_store(&st, async move |c| {
        let requeued =
            crate::store::outbox::retry_dead(c, id, roomguard_protocol::clock::now_ms()).await?;
        if requeued {
            crate::store::auth::audit_in(
                c,
                &user.name,
                "notification.retry",
                &id.to_string(),
                roomguard_protocol::clock::now_ms(),
            )
            .await?;
        }
        Ok(requeued)
    })
    .await?;
    if !requeued {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!("notification {id} is not a dead letter, or a later notification of its alarm reached the channel (sending it now would put them out of order)"),
        ));
    }
    a.wake.notify_one();
    Ok(Json(json!({ "id": id, "state": "pending" })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsQuery {
    point: String,
    #[serde(default)]
    site: Option<String>,
}

/// `GET /api/v1/limits?point=…[&site=…]`: the alarm thresholds a point is
/// held to, after overrides, for drawing on its chart. Empty with alarms off.
pub async fn limits(
    State(st): State<Arc<AppState>>,
    q: Result<Query<LimitsQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = query(q)?;
    let (point, site) = (q.point.clone(), q.site.clone());
    let found = st
        .reads
        .points_named(site, vec![point])
        .await?
        .pop()
        .unwrap_or_default();
    let p = match found.as_slice() {
        [] => {
            return Err(ApiError(
                StatusCode::NOT_FOUND,
                format!("point: no point {:?}", q.point),
            ))
        }
        [p] => p,
        several => {
            let sites: Vec<&str> = several.iter().map(|p| p.site.as_str()).collect();
            return Err(bad(format!(
                "point: {:?} exists in several sites ({}); give site=…",
                q.point,
                sites.join(", ")
            )));
        }
    };
    let Some(a) = st.alarms.clone() else {
        return Ok(Json(json!({ "limits": [] })));
    };
    let labels = crate::alarm::rules::PointLabels {
        quantity: &p.quantity,
        room: &p.room,
        device: &p.device,
        point: &p.point,
    };
    let limits: Vec<Value> = a
        .rules
        .limits(&p.site, &labels)
        .into_iter()
        .map(|l| {
            let rule = a.rules.index(&l.rule).map(|i| &a.rules.rules[i]);
            json!({
                "rule": l.rule,
                "name": rule.map(|r| r.name.as_str()),
                "name_zh": rule.map(|r| r.name_zh.as_str()),
                "level": l.level,
                "kind": if l.above { "above" } else { "below" },
                "value": l.value,
                "hysteresis": l.hysteresis,
            })
        })
        .collect();
    Ok(Json(
        json!({ "site": p.site, "point": p.point, "limits": limits }),
    ))
}
