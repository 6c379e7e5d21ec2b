//! Inspectors' endpoints: hazards, patrols, drills and reports
//! (docs/INSPECTION.md). Times in answers are RFC 3339 in `tz`; times in
//! requests take the same forms as history (`2026-12-01`, `now+7d`…).

use super::history::{bad, parse_time, show, zone};
use super::{body, ApiError, AppState};
use crate::auth::{Role, User};
use crate::inspection::hazard::{Action, Edit, Filter, Hazard, NewHazard, Origin, Status};
use crate::inspection::report::{self, Inputs};
use crate::inspection::{patrol, render, InspectionError, NewDrill};
use crate::store::sql::Db;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use jiff::tz::TimeZone;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// A manual patrol may carry photos: its body may be this large.
pub const PATROL_BODY: usize = 12 * 1024 * 1024;

impl From<InspectionError> for ApiError {
    fn from(e: InspectionError) -> Self {
        let code = match &e {
            InspectionError::Invalid(_) => StatusCode::BAD_REQUEST,
            InspectionError::NotFound(_) => StatusCode::NOT_FOUND,
            InspectionError::Conflict(_) => StatusCode::CONFLICT,
            InspectionError::Store(_) | InspectionError::Record(_) => {
                tracing::error!(error = %e, "inspection store access failed");
                StatusCode::SERVICE_UNAVAILABLE
            }
        };
        ApiError(code, e.to_string())
    }
}

/// Runs `f` in one transaction on the record, on the blocking pool.
async fn with_conn<T, F>(st: &AppState, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(Db<'_>) -> Result<T, InspectionError> + Send + 'static,
{
    Ok(st.reads.blocking(true, f).await?)
}

/// Runs `f`, which only reads, on the record, on the blocking pool.
async fn reading<T, F>(st: &AppState, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(Db<'_>) -> Result<T, InspectionError> + Send + 'static,
{
    Ok(st.reads.blocking(false, f).await?)
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(v)| v).map_err(|e| bad(e.body_text()))
}

fn may_inspect(user: &User) -> Result<(), ApiError> {
    if matches!(user.role, Role::Inspector | Role::Admin) {
        Ok(())
    } else {
        Err(ApiError(
            StatusCode::FORBIDDEN,
            format!(
                "{} ({}) may not do this: accepting, dismissing and verifying hazards is for inspectors and admins",
                user.name,
                user.role.as_str()
            ),
        ))
    }
}

fn hazard_json(h: &Hazard, tz: &TimeZone, now: i64) -> Value {
    let t = |v: Option<i64>| v.map(|ms| show(ms, tz));
    json!({
        "id": h.id, "site": h.site, "room": h.room, "category": h.category, "grade": h.grade,
        "description": h.description, "found_by": h.found_by, "found_at": show(h.found_at, tz),
        "owner": h.owner, "deadline": t(h.deadline), "plan": h.plan, "status": h.status,
        "evidence": h.evidence, "verifier": h.verifier, "closed_at": t(h.closed_at),
        "source": h.source, "rule": h.rule, "alarm": h.alarm, "overdue": h.overdue_at(now),
        "updated_at": show(h.updated_at, tz),
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HazardsQuery {
    site: Option<String>,
    room: Option<String>,
    status: Option<String>,
    grade: Option<String>,
    /// Only those still to be driven to zero.
    #[serde(default)]
    open: bool,
    limit: Option<u32>,
    tz: Option<String>,
}

pub async fn hazards(
    State(st): State<Arc<AppState>>,
    q: Result<Query<HazardsQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = query(q)?;
    let tz = zone(q.tz.as_deref(), &st)?;
    let status = match q.status.as_deref() {
        Some(s) => Some(Status::parse(s).ok_or_else(|| {
            bad(format!(
                "status: {s:?} is not one of proposed, open, rectifying, awaiting_verification, closed, dismissed"
            ))
        })?),
        None => None,
    };
    let limit = q.limit.unwrap_or(500);
    if !(1..=5000).contains(&limit) {
        return Err(bad("limit: 1–5000"));
    }
    let f = Filter {
        site: q.site,
        room: q.room,
        status,
        grade: q.grade,
        open_only: q.open,
    };
    let now = roomguard_protocol::clock::now_ms();
    let list = reading(&st, move |c| crate::store::hazards::list(c, &f, limit)).await?;
    Ok(Json(json!({
        "hazards": list.iter().map(|h| hazard_json(h, &tz, now)).collect::<Vec<_>>()
    })))
}

/// [`NewHazard`] with its deadline as text.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HazardBody {
    /// RFC 3339, a local date, or now+30d.
    #[serde(default)]
    deadline: Option<String>,
    site: String,
    room: String,
    category: String,
    grade: String,
    description: String,
    #[serde(default)]
    owner: Option<String>,
    #[serde(default)]
    plan: Option<String>,
}

pub async fn create_hazard(
    State(st): State<Arc<AppState>>,
    Extension(user): Extension<User>,
    b: Result<Json<HazardBody>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let b = body(b)?;
    let tz = zone(None, &st)?;
    let deadline = b
        .deadline
        .as_deref()
        .map(|d| deadline(d, &tz))
        .transpose()?;
    let new = NewHazard {
        site: b.site,
        room: b.room,
        category: b.category,
        grade: b.grade,
        description: b.description,
        owner: b.owner,
        deadline,
        plan: b.plan,
    };
    let now = roomguard_protocol::clock::now_ms();
    let h = with_conn(&st, move |c| {
        crate::store::hazards::create(c, &new, &user.name, Status::Open, Origin::MANUAL, now)
    })
    .await?;
    st.live.alarms_changed();
    Ok((StatusCode::CREATED, Json(hazard_json(&h, &tz, now))))
}

pub async fn hazard(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = id_of(&id, "hazard")?;
    let tz = zone(None, &st)?;
    let now = roomguard_protocol::clock::now_ms();
    let (h, events) = reading(&st, move |c| {
        Ok((
            crate::store::hazards::get(c, id)?,
            crate::store::hazards::events(c, id)?,
        ))
    })
    .await?;
    let mut v = hazard_json(&h, &tz, now);
    v["events"] = Value::Array(
        events
            .into_iter()
            .map(|mut e| {
                if let Some(at) = e["at"].as_i64() {
                    e["at"] = json!(show(at, &tz));
                }
                // Deadlines in the trail read like every other time.
                if let Some(pair) = e["changes"]["deadline"].as_array_mut() {
                    for v in pair {
                        if let Some(ms) = v.as_i64() {
                            *v = json!(show(ms, &tz));
                        }
                    }
                }
                e
            })
            .collect(),
    );
    Ok(Json(v))
}

/// A hazard's deadline: a date means the end of that day; it may not be in
/// the past.
fn deadline(s: &str, tz: &TimeZone) -> Result<i64, ApiError> {
    let now = jiff::Timestamp::now();
    let ms = match s.parse::<jiff::civil::Date>() {
        Ok(d) if s.len() == 10 => d
            .tomorrow()
            .and_then(|n| n.to_zoned_datetime(tz.clone()))
            .map(|z| z.timestamp().as_millisecond() - 1)
            .map_err(|e| bad(format!("deadline: {s:?}: {e}")))?,
        _ => parse_time("deadline", s, tz, now)?,
    };
    if ms < now.as_millisecond() {
        return Err(bad(format!("deadline: {s:?} is in the past")));
    }
    Ok(ms)
}

fn id_of(s: &str, what: &str) -> Result<i64, ApiError> {
    s.parse()
        .map_err(|_| bad(format!("{s:?} is not a {what} id")))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeBody {
    #[serde(default)]
    action: Option<Action>,
    #[serde(default)]
    note: Option<String>,
    #[serde(default)]
    deadline: Option<String>,
    #[serde(default)]
    owner: Option<String>,
    #[serde(default)]
    plan: Option<String>,
    #[serde(default)]
    evidence: Option<String>,
    #[serde(default)]
    grade: Option<String>,
    #[serde(default)]
    description: Option<String>,
}

pub async fn change_hazard(
    State(st): State<Arc<AppState>>,
    Extension(user): Extension<User>,
    Path(id): Path<String>,
    b: Result<Json<ChangeBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = id_of(&id, "hazard")?;
    let b = body(b)?;
    if matches!(
        b.action,
        Some(Action::Accept | Action::Dismiss | Action::Verify)
    ) {
        may_inspect(&user)?;
    }
    let tz = zone(None, &st)?;
    let edit = Edit {
        owner: b.owner,
        deadline: b
            .deadline
            .as_deref()
            .map(|d| deadline(d, &tz))
            .transpose()?,
        plan: b.plan,
        evidence: b.evidence,
        grade: b.grade,
        description: b.description,
    };
    let now = roomguard_protocol::clock::now_ms();
    let (action, note) = (b.action, b.note);
    let h = with_conn(&st, move |c| {
        crate::store::hazards::change(c, id, &edit, action, note.as_deref(), &user.name, now)
    })
    .await?;
    st.live.alarms_changed();
    Ok(Json(hazard_json(&h, &tz, now)))
}

pub async fn zeroing(State(st): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let now = roomguard_protocol::clock::now_ms();
    let sites = reading(&st, move |c| crate::store::hazards::zeroing(c, now)).await?;
    Ok(Json(json!({ "sites": sites, "target": "open_major = 0" })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatrolsQuery {
    site: Option<String>,
    room: Option<String>,
    kind: Option<String>,
    from: Option<String>,
    to: Option<String>,
    limit: Option<u32>,
    tz: Option<String>,
}

fn period(
    from: Option<&str>,
    to: Option<&str>,
    default_from: &str,
    tz: &TimeZone,
) -> Result<(i64, i64), ApiError> {
    let now = jiff::Timestamp::now();
    let from = parse_time("from", from.unwrap_or(default_from), tz, now)?;
    let to = parse_time("to", to.unwrap_or("now"), tz, now)?;
    if from >= to {
        return Err(bad("from: must be before to"));
    }
    Ok((from, to))
}

fn times(v: &mut Value, keys: &[&str], tz: &TimeZone) {
    for k in keys {
        if let Some(ms) = v[*k].as_i64() {
            v[*k] = json!(show(ms, tz));
        }
    }
}

pub async fn patrols(
    State(st): State<Arc<AppState>>,
    q: Result<Query<PatrolsQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = query(q)?;
    let tz = zone(q.tz.as_deref(), &st)?;
    let (from, to) = period(q.from.as_deref(), q.to.as_deref(), "now-7d", &tz)?;
    if let Some(k) = q
        .kind
        .as_deref()
        .filter(|k| !matches!(*k, "auto" | "manual"))
    {
        return Err(bad(format!("kind: {k:?} is not auto or manual")));
    }
    let limit = q.limit.unwrap_or(200);
    if !(1..=5000).contains(&limit) {
        return Err(bad("limit: 1–5000"));
    }
    let f = patrol::Filter {
        site: q.site,
        room: q.room,
        kind: q.kind,
        from,
        to: to + 1,
    };
    let mut list = reading(&st, move |c| crate::store::patrols::list(c, &f, limit)).await?;
    for p in &mut list {
        times(p, &["slot", "at", "period_from", "period_to"], &tz);
    }
    Ok(Json(json!({ "patrols": list })))
}

pub async fn patrol(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = id_of(&id, "patrol")?;
    let tz = zone(None, &st)?;
    let mut p = reading(&st, move |c| crate::store::patrols::get(c, id)).await?;
    times(
        &mut p,
        &["at", "period_from", "period_to", "signed_at"],
        &tz,
    );
    if let Some(points) = p["points"].as_array_mut() {
        for pt in points {
            times(pt, &["ts"], &tz);
        }
    }
    Ok(Json(p))
}

pub async fn photo(
    State(st): State<Arc<AppState>>,
    Path((id, n)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let id = id_of(&id, "patrol")?;
    let n: i64 = n
        .parse()
        .map_err(|_| bad(format!("{n:?} is not a photo number")))?;
    let (ct, data) = reading(&st, move |c| crate::store::patrols::photo(c, id, n)).await?;
    Ok(([(header::CONTENT_TYPE, ct)], data).into_response())
}

pub async fn checklist(State(st): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({ "items": st.inspection.checklist() }))
}

pub async fn record_patrol(
    State(st): State<Arc<AppState>>,
    Extension(user): Extension<User>,
    b: Result<Json<patrol::ManualPatrol>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let m = body(b)?;
    let list = st.inspection.checklist();
    let tz = zone(None, &st)?;
    let now = roomguard_protocol::clock::now_ms();
    // Photos decoded and checked before the transaction (megabytes of them
    // must not hold SQLite's write lock, and ingest, meanwhile).
    let (m, list, photos) = tokio::task::spawn_blocking(move || {
        let photos = patrol::check_manual(&m, &list)?;
        Ok::<_, InspectionError>((m, list, photos))
    })
    .await
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    let mut p = with_conn(&st, move |c| {
        patrol::record_checked(c, &m, &list, photos, &user.name, now)
    })
    .await?;
    times(
        &mut p,
        &["at", "period_from", "period_to", "signed_at"],
        &tz,
    );
    Ok((StatusCode::CREATED, Json(p)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrillBody {
    site: String,
    #[serde(default)]
    room: String,
    scenario: String,
    #[serde(default)]
    note: Option<String>,
    #[serde(default)]
    started_at: Option<String>,
    #[serde(default)]
    ended_at: Option<String>,
}

pub async fn record_drill(
    State(st): State<Arc<AppState>>,
    Extension(user): Extension<User>,
    b: Result<Json<DrillBody>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let b = body(b)?;
    let tz = zone(None, &st)?;
    let now = jiff::Timestamp::now();
    let started = parse_time(
        "started_at",
        b.started_at.as_deref().unwrap_or("now"),
        &tz,
        now,
    )?;
    let ended = b
        .ended_at
        .as_deref()
        .map(|e| parse_time("ended_at", e, &tz, now))
        .transpose()?;
    let drill = NewDrill {
        site: b.site,
        room: b.room,
        scenario: b.scenario,
        note: b.note,
    };
    let mut d = with_conn(&st, move |c| {
        let now = roomguard_protocol::clock::now_ms();
        let d =
            crate::store::inspection::record_drill(c, &drill, (started, ended), &user.name, now)?;
        let until = d["ended_at"]
            .as_i64()
            .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
            .map(|t| t.to_string())
            .unwrap_or_default();
        let detail = format!(
            "{} ({} in {} {}, until {until})",
            d["id"], drill.scenario, drill.site, drill.room
        );
        c.wait(crate::store::auth::audit_in(
            c.conn(),
            &user.name,
            "drill.declare",
            &detail,
            roomguard_protocol::clock::now_ms(),
        ))?;
        Ok(d)
    })
    .await?;
    tracing::info!(id = %d["id"], site = %d["site"], room = %d["room"], scenario = %d["scenario"], "drill declared");
    times(&mut d, &["started_at", "ended_at"], &tz);
    Ok((StatusCode::CREATED, Json(d)))
}

/// Ends a running drill now (`POST /api/v1/drills/{id}/end`, no body):
/// alarms raised from now on are real again.
pub async fn end_drill(
    State(st): State<Arc<AppState>>,
    Extension(user): Extension<User>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id: i64 = id
        .parse()
        .map_err(|_| InspectionError::Invalid(format!("{id:?} is not a drill id")))?;
    let tz = zone(None, &st)?;
    let mut d = with_conn(&st, move |c| {
        let now = roomguard_protocol::clock::now_ms();
        let d = crate::store::inspection::end_drill(c, id, now)?;
        c.wait(crate::store::auth::audit_in(
            c.conn(),
            &user.name,
            "drill.end",
            &id.to_string(),
            now,
        ))?;
        Ok(d)
    })
    .await?;
    times(&mut d, &["started_at", "ended_at"], &tz);
    Ok(Json(d))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrillsQuery {
    site: Option<String>,
    from: Option<String>,
    to: Option<String>,
    tz: Option<String>,
}

pub async fn drills(
    State(st): State<Arc<AppState>>,
    q: Result<Query<DrillsQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = query(q)?;
    let tz = zone(q.tz.as_deref(), &st)?;
    let (from, to) = period(q.from.as_deref(), q.to.as_deref(), "now-365d", &tz)?;
    let site = q.site;
    let mut list = reading(&st, move |c| {
        crate::store::inspection::drills(c, site.as_deref(), from, to + 1)
    })
    .await?;
    for d in &mut list {
        times(d, &["started_at", "ended_at"], &tz);
    }
    Ok(Json(json!({ "drills": list })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportQuery {
    month: Option<String>,
    year: Option<String>,
    site: Option<String>,
    format: Option<String>,
    table: Option<String>,
    lang: Option<String>,
    tz: Option<String>,
}

/// Reports built at once: each may read for a while, and a blocking task
/// runs on after its request gave up, so more are turned away, not queued.
static REPORT_SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// `GET /api/v1/reports/monthly?month=2026-11` and `/yearly?year=2026`.
pub async fn report(
    State(st): State<Arc<AppState>>,
    Path(kind): Path<String>,
    q: Result<Query<ReportQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let tz = zone(q.tz.as_deref(), &st)?;
    let format = q.format.clone().unwrap_or_else(|| "json".into());
    if !matches!(format.as_str(), "json" | "csv" | "html") {
        return Err(bad(format!("format: {format:?} is not json, csv or html")));
    }
    let lang = match q.lang.as_deref() {
        None => render::Lang::Zh,
        Some(l) => {
            render::Lang::parse(l).ok_or_else(|| bad(format!("lang: {l:?} is not en or zh-CN")))?
        }
    };
    if format == "csv" {
        match q.table.as_deref() {
            Some(t) if render::TABLES.contains(&t) => {}
            Some(t) => {
                return Err(bad(format!(
                    "table: {t:?} is not one of {}",
                    render::TABLES.join(", ")
                )))
            }
            None => {
                return Err(bad(format!(
                    "table: CSV is one table at a time; give one of {}",
                    render::TABLES.join(", ")
                )))
            }
        }
    }
    let Ok(_slot) = REPORT_SLOTS.try_acquire() else {
        return Err(ApiError(
            StatusCode::TOO_MANY_REQUESTS,
            "another report is being built; try again in a moment".into(),
        ));
    };
    let rules = st.alarms.as_ref().map(|a| a.rules.clone());
    let schedule = st.inspection.schedule();
    let site_tz = zone(None, &st)?;
    let site = q.site.clone();
    let table = q.table.clone();
    let tz2 = tz.clone();
    let (body, ct, name) = match kind.as_str() {
        "monthly" => {
            let m = q
                .month
                .as_deref()
                .ok_or_else(|| bad("month: give the month, like 2026-11"))?;
            let p = report::month(m, &tz).map_err(bad)?;
            reading(&st, move |c| {
                let inp = Inputs {
                    rules: rules.as_deref(),
                    schedule: &schedule,
                    tz: &tz2,
                    schedule_tz: &site_tz,
                    now: roomguard_protocol::clock::now_ms(),
                };
                let rep = report::build(c, site.as_deref(), &p, &inp)?;
                Ok(match format.as_str() {
                    "csv" => (
                        render::csv(&rep, table.as_deref().unwrap_or(""), &tz2).unwrap_or_default(),
                        "text/csv; charset=utf-8",
                        format!("report-{}-{}.csv", p.label, table.unwrap_or_default()),
                    ),
                    "html" => (
                        render::html_month(&rep, lang, &tz2),
                        "text/html; charset=utf-8",
                        format!("report-{}.html", p.label),
                    ),
                    _ => (
                        render::json(&rep, &tz2),
                        "application/json",
                        format!("report-{}.json", p.label),
                    ),
                })
            })
            .await?
        }
        "yearly" => {
            let y = q
                .year
                .clone()
                .ok_or_else(|| bad("year: give the year, like 2026"))?;
            report::months_of(&y, &tz).map_err(bad)?;
            reading(&st, move |c| {
                let inp = Inputs {
                    rules: rules.as_deref(),
                    schedule: &schedule,
                    tz: &tz2,
                    schedule_tz: &site_tz,
                    now: roomguard_protocol::clock::now_ms(),
                };
                let rep = report::build_year(c, site.as_deref(), &y, &inp)?;
                Ok(match format.as_str() {
                    "csv" => (
                        render::csv_year(&rep, table.as_deref().unwrap_or(""), &tz2)
                            .unwrap_or_default(),
                        "text/csv; charset=utf-8",
                        format!("report-{y}-{}.csv", table.unwrap_or_default()),
                    ),
                    "html" => (
                        render::html_year(&rep, lang, &tz2),
                        "text/html; charset=utf-8",
                        format!("report-{y}.html"),
                    ),
                    _ => (
                        render::json(&rep, &tz2),
                        "application/json",
                        format!("report-{y}.json"),
                    ),
                })
            })
            .await?
        }
        other => {
            return Err(ApiError(
                StatusCode::NOT_FOUND,
                format!("no report kind {other:?}: monthly or yearly"),
            ))
        }
    };
    let disposition = if ct.starts_with("text/csv") {
        format!("attachment; filename=\"{name}\"")
    } else {
        format!("inline; filename=\"{name}\"")
    };
    Ok((
        [
            (header::CONTENT_TYPE, ct.to_owned()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        body,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_date_means_the_end_of_that_day_and_the_past_is_refused() {
        let tz = TimeZone::get("Asia/Shanghai").unwrap();
        let ms = deadline("2099-12-31", &tz).unwrap();
        let end: i64 = "2099-12-31T16:00:00Z"
            .parse::<jiff::Timestamp>()
            .unwrap()
            .as_millisecond();
        assert_eq!(ms, end - 1, "23:59:59.999 on the 31st, Shanghai time");
        let e = deadline("2020-01-01", &tz).unwrap_err();
        assert!(e.1.contains("in the past"), "{}", e.1);
        assert!(deadline("2099-12-31T08:00", &tz).is_ok());
    }
}
