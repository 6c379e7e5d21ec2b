//! The HTTP side: health, self-metrics, the latest-values API and a plain live
//! page. Handlers read the store through short-lived read-only connections on
//! the blocking pool, so a slow query never holds up ingest.

pub mod alarms;
mod events;
mod history;
mod inspection;
mod render;
pub mod serve;
pub mod session;
pub mod tls;
pub mod ui;

use crate::metrics::Metrics;
use crate::store::retention::Policy;
use crate::store::{LatestRow, StoreError};
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;

pub struct AppState {
    /// Readings, the catalogue and agents, from either backend.
    pub reads: crate::store::backend::Reads,
    pub metrics: Arc<Metrics>,
    /// Default time zone of times in answers (`tz` overrides per request).
    pub time_zone: String,
    /// What each tier keeps, so history knows which tier still has the data.
    pub retention: Policy,
    /// Alarm actions, when alarms are on.
    pub alarms: Option<Arc<alarms::AlarmsApi>>,
    pub auth: Arc<crate::auth::Auth>,
    /// Served over HTTPS: session cookies are marked `Secure`.
    pub secure_cookies: bool,
    /// The live stream to dashboards.
    pub live: Arc<crate::live::Live>,
    /// Serve the UI from this folder instead of the embedded files.
    pub ui_dir: Option<PathBuf>,
    /// Patrol schedule and checklist, for the inspection endpoints.
    pub inspection: crate::inspection::InspectionConfig,
    /// This node's view of the cluster, when there is one.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// `[[names]]`: the names people use for rooms and devices.
    pub names: Vec<crate::config::DisplayName>,
}

/// `GET /api/v1/names`: the display names of rooms and devices
/// (`[[names]]`), for pages to show beside the ids.
async fn names(State(st): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let of = |room: bool| {
        st.names
            .iter()
            .filter(|n| n.room.is_some() == room)
            .map(|n| {
                serde_json::json!({
                    "site": n.site, "room": n.room, "device": n.device,
                    "name": n.name, "name_en": n.name_en.as_deref().unwrap_or(&n.name),
                })
            })
            .collect::<Vec<_>>()
    };
    Json(serde_json::json!({ "rooms": of(true), "devices": of(false) }))
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(ui::index))
        .route("/ui/{*path}", get(ui::asset))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/v1/latest", get(latest))
        .route("/api/v1/points", get(history::points))
        .route("/api/v1/history", get(history::history))
        .route("/api/v1/agents", get(agents))
        .route("/api/v1/cluster", get(cluster))
        .route("/api/v1/events", get(events::events))
        .route("/api/v1/alarms", get(alarms::list))
        .route("/api/v1/alarms/ack", post(alarms::acknowledge_many))
        .route("/api/v1/alarms/{serial}", get(alarms::one))
        .route("/api/v1/alarms/{serial}/ack", post(alarms::acknowledge))
        .route("/api/v1/alarms/{serial}/comment", post(alarms::comment))
        .route("/api/v1/alarms/{serial}/assign", post(alarms::assign))
        .route(
            "/api/v1/silences",
            get(alarms::silences).post(alarms::create_silence),
        )
        .route("/api/v1/silences/{id}/end", post(alarms::end_silence))
        .route("/api/v1/rules", get(alarms::rules))
        .route("/api/v1/limits", get(alarms::limits))
        .route("/api/v1/notifications", get(alarms::notifications))
        .route("/api/v1/inbox", get(alarms::inbox))
        .route("/api/v1/names", get(names))
        .route("/api/v1/notifications/{id}/retry", post(alarms::retry))
        .route(
            "/api/v1/hazards",
            get(inspection::hazards).post(inspection::create_hazard),
        )
        .route("/api/v1/hazards/zeroing", get(inspection::zeroing))
        .route(
            "/api/v1/hazards/{id}",
            get(inspection::hazard).post(inspection::change_hazard),
        )
        .route(
            "/api/v1/patrols",
            get(inspection::patrols)
                .post(inspection::record_patrol)
                .layer(axum::extract::DefaultBodyLimit::max(
                    inspection::PATROL_BODY,
                )),
        )
        .route("/api/v1/patrols/checklist", get(inspection::checklist))
        .route("/api/v1/patrols/{id}", get(inspection::patrol))
        .route("/api/v1/patrols/{id}/photos/{n}", get(inspection::photo))
        .route(
            "/api/v1/drills",
            get(inspection::drills).post(inspection::record_drill),
        )
        .route("/api/v1/drills/{id}/end", post(inspection::end_drill))
        .route("/api/v1/reports/{kind}", get(inspection::report))
        .route("/api/v1/login", post(session::login))
        .route("/api/v1/logout", post(session::logout))
        .route("/api/v1/me", get(session::me))
        .route(
            "/api/v1/users",
            get(session::users).post(session::create_user),
        )
        .route("/api/v1/users/{name}/password", post(session::set_password))
        .route(
            "/api/v1/tokens",
            get(session::tokens).post(session::create_token),
        )
        .route("/api/v1/tokens/{name}/revoke", post(session::revoke_token))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            session::guard,
        ))
        .layer(axum::middleware::from_fn(session::deadline))
        .layer(axum::middleware::from_fn(session::refuse_oversized))
        .layer(axum::middleware::from_fn(session::security_headers))
        .layer(axum::extract::DefaultBodyLimit::max(session::MAX_BODY))
        .with_state(state)
}

/// An API error: a status and a message naming what is wrong.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl From<axum::extract::rejection::JsonRejection> for ApiError {
    /// The rejection's own status: 413 for a body over the limit, 415 for
    /// a missing content type, 400 or 422 for what is not the JSON asked for.
    fn from(e: axum::extract::rejection::JsonRejection) -> Self {
        ApiError(e.status(), e.body_text())
    }
}

/// A JSON request body, or the error that names what is wrong with it.
pub(crate) fn body<T>(
    b: Result<Json<T>, axum::extract::rejection::JsonRejection>,
) -> Result<T, ApiError> {
    b.map(|Json(v)| v).map_err(ApiError::from)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "store read failed");
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store unavailable: {e}"),
        )
    }
}

/// A store read's failure as the API answers it.
fn unavailable<T>(r: Result<T, StoreError>) -> Result<T, ApiError> {
    r.map_err(ApiError::from)
}

async fn not_found() -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        "no such endpoint; see docs/API.md".into(),
    )
}

async fn healthz(State(st): State<Arc<AppState>>) -> Response {
    let mut health = st.metrics.health();
    if let Some(why) = st.cluster.as_ref().and_then(|c| c.refused()) {
        health
            .reasons
            .push(format!("cluster refuses this node: {why}"));
        health.status = "degraded";
    }
    let code = if health.reasons.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": health.status,
        "reasons": health.reasons,
        "broker_connected": health.broker_connected,
        "integrity": health.integrity,
        "readings_stored": st.metrics.readings_stored.get(),
        "messages_rejected": st.metrics.rejected_total(),
        "store_errors": st.metrics.store_errors.get(),
    });
    (code, Json(body)).into_response()
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    let mut text = st.metrics.render();
    if let Some(c) = &st.cluster {
        text.push_str(&c.render_metrics());
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// `GET /api/v1/cluster` (admins): the nodes, the partitions with their
/// owners, epochs and lease ages, and the sites in each, as the database
/// shows them; `this_node` is the node that answered.
async fn cluster(State(st): State<Arc<AppState>>) -> Response {
    let Some(c) = &st.cluster else {
        return (
            StatusCode::NOT_FOUND,
            Json(
                json!({"error": "this collector is not in a cluster ([cluster] enabled = false)"}),
            ),
        )
            .into_response();
    };
    let lease = c.lease;
    let answer = st
        .reads
        .read(async move |db| {
            Ok::<_, crate::store::sql::SqlError>(match db {
                crate::store::sql::Conn::Pg(client) => crate::cluster::lease::status(client, lease)
                    .await
                    .map_err(|e| e.to_string()),
                _ => Err("the cluster needs the PostgreSQL store".to_owned()),
            })
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
    match answer {
        Ok(mut v) => {
            v["this_node"] = json!(c.node);
            v["lease_ms"] = json!(lease.as_millis() as u64);
            Json(v).into_response()
        }
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": format!("cannot read the cluster's state: {e}")})),
        )
            .into_response(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LatestQuery {
    site: Option<String>,
    room: Option<String>,
}

/// One point's latest reading as the API shows it.
#[derive(Debug, Serialize)]
struct LatestJson {
    site: String,
    point: String,
    agent: String,
    room: String,
    device: String,
    quantity: String,
    unit: String,
    /// Event time, RFC 3339 (UTC).
    ts: String,
    value: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    quality: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

impl From<LatestRow> for LatestJson {
    fn from(r: LatestRow) -> Self {
        LatestJson {
            ts: rfc3339(r.ts),
            quality: if r.bad.is_none() { "good" } else { "bad" },
            reason: r.bad,
            site: r.site,
            point: r.point,
            agent: r.agent,
            room: r.room,
            device: r.device,
            quantity: r.quantity,
            unit: r.unit,
            value: r.value,
            text: r.text,
        }
    }
}

fn rfc3339(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| ms.to_string())
}

async fn latest(
    State(st): State<Arc<AppState>>,
    query: Result<Query<LatestQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.body_text()))?;
    let rows = unavailable(st.reads.latest(q.site, q.room).await)?;
    let points: Vec<LatestJson> = rows.into_iter().map(Into::into).collect();
    Ok(Json(json!({ "points": points })))
}

async fn agents(State(st): State<Arc<AppState>>) -> Result<Json<serde_json::Value>, ApiError> {
    let rows = unavailable(st.reads.agents().await)?;
    let agents: Vec<serde_json::Value> = rows
        .into_iter()
        .map(|a| {
            json!({
                "site": a.site,
                "agent": a.agent,
                "state": a.state,
                "received_at": rfc3339(a.updated_at),
                "devices": a.status.get("devices").cloned().unwrap_or_else(|| json!([])),
                "spool": a.status.get("spool").cloned(),
                "software": a.status.get("software").cloned(),
            })
        })
        .collect();
    Ok(Json(json!({ "agents": agents })))
}
