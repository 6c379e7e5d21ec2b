//! Run-time control of the drill scenario: a small HTTP API and stdin lines.
//!
//! `GET /scenario` tells the scenario and how long it has run, `PUT /scenario`
//! with `{"scenario":"thermal_runaway"}` (or `POST /scenario/thermal_runaway`)
//! switches it, `GET /values` shows what every sensor reads now.
//!
//! A fleet (`roomguard-sim fleet`) serves the same under `/sites/{site}`
//! for each of its sites, and `GET /sites` lists them with their scenarios.

use crate::model::{Scenario, SiteValues};
use crate::Simulator;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

pub fn router(sim: Arc<Simulator>) -> Router {
    Router::new()
        .route("/scenario", get(current).put(switch_json))
        .route("/scenario/{name}", post(switch_path))
        .route("/values", get(values))
        .with_state(sim)
}

/// The control API of a fleet: each site's own under `/sites/{site}`.
pub fn fleet_router(sites: Arc<Vec<crate::fleet::FleetSite>>) -> Router {
    let mut r = Router::new();
    for site in sites.iter() {
        r = r.nest(&format!("/sites/{}", site.id), router(site.sim.clone()));
    }
    let known = sites.clone();
    r.route(
        "/sites/{site}/{*rest}",
        axum::routing::any(move |Path((site, _)): Path<(String, String)>| async move {
            let why = match crate::fleet::find(&known, &site) {
                Err(e) => e,
                Ok(_) => {
                    "no such request: GET …/scenario, PUT or POST …/scenario/NAME, GET …/values"
                        .into()
                }
            };
            (StatusCode::NOT_FOUND, Json(json!({ "error": why })))
        }),
    )
    .route(
        "/sites",
        get(move || async move {
            let list: Vec<_> = sites
                .iter()
                .map(|s| {
                    let (scenario, elapsed) = s.sim.scenario();
                    json!({
                        "site": s.id,
                        "modbus": s.modbus,
                        "scenario": scenario,
                        "running_for_s": elapsed.as_secs_f64(),
                    })
                })
                .collect();
            Json(list)
        }),
    )
}

async fn current(State(sim): State<Arc<Simulator>>) -> Json<serde_json::Value> {
    let (scenario, elapsed) = sim.scenario();
    Json(json!({ "scenario": scenario, "running_for_s": elapsed.as_secs_f64() }))
}

#[derive(Deserialize)]
struct SwitchBody {
    scenario: String,
}

async fn switch_json(State(sim): State<Arc<Simulator>>, Json(body): Json<SwitchBody>) -> Response {
    switch(&sim, &body.scenario)
}

async fn switch_path(State(sim): State<Arc<Simulator>>, Path(name): Path<String>) -> Response {
    switch(&sim, &name)
}

fn switch(sim: &Simulator, name: &str) -> Response {
    match name.parse::<Scenario>() {
        Ok(scenario) => {
            sim.set_scenario(scenario);
            Json(json!({ "scenario": scenario })).into_response()
        }
        Err(msg) => (StatusCode::BAD_REQUEST, Json(json!({ "error": msg }))).into_response(),
    }
}

async fn values(State(sim): State<Arc<Simulator>>) -> Json<SiteValues> {
    Json(sim.values())
}

/// Reads scenario names, one per line, until `input` ends.
pub async fn read_commands<R: AsyncRead + Unpin>(sim: Arc<Simulator>, input: R) {
    let mut lines = BufReader::new(input).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        match line.parse::<Scenario>() {
            Ok(scenario) => sim.set_scenario(scenario),
            Err(msg) => eprintln!("{msg}"),
        }
    }
}
