//! The agent's own metrics, served in the Prometheus text format at
//! `/metrics` when `[metrics] listen` is set: per device polls, failures,
//! requests, registers read, overruns and poll time; batches published.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

#[derive(Debug, Default)]
pub struct DeviceCounters {
    pub polls: AtomicU64,
    pub failed_polls: AtomicU64,
    pub requests: AtomicU64,
    pub registers: AtomicU64,
    pub overruns: AtomicU64,
    pub poll_micros: AtomicU64,
}

#[derive(Debug, Default)]
pub struct AgentMetrics {
    pub devices: BTreeMap<String, DeviceCounters>,
    pub batches_published: AtomicU64,
    pub readings_published: AtomicU64,
    pub broker_connected: AtomicU64,
}

impl AgentMetrics {
    pub fn new<'a>(devices: impl IntoIterator<Item = &'a str>) -> AgentMetrics {
        AgentMetrics {
            devices: devices
                .into_iter()
                .map(|d| (d.to_owned(), DeviceCounters::default()))
                .collect(),
            ..AgentMetrics::default()
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        type Field = fn(&DeviceCounters) -> &AtomicU64;
        let per_device: [(&str, &str, Field); 6] = [
            ("roomguard_agent_polls_total", "Device polls.", |c| &c.polls),
            (
                "roomguard_agent_failed_polls_total",
                "Polls without a single good reading.",
                |c| &c.failed_polls,
            ),
            (
                "roomguard_agent_requests_total",
                "Protocol requests sent.",
                |c| &c.requests,
            ),
            (
                "roomguard_agent_registers_total",
                "Registers, bits or SNMP values read.",
                |c| &c.registers,
            ),
            (
                "roomguard_agent_cycle_overruns_total",
                "Polls started a whole interval late.",
                |c| &c.overruns,
            ),
            (
                "roomguard_agent_poll_seconds_total",
                "Time spent polling.",
                |c| &c.poll_micros,
            ),
        ];
        for (name, help, field) in per_device {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (device, c) in &self.devices {
                let v = field(c).load(Relaxed);
                if name.ends_with("seconds_total") {
                    let _ = writeln!(out, "{name}{{device=\"{device}\"}} {}", v as f64 / 1e6);
                } else {
                    let _ = writeln!(out, "{name}{{device=\"{device}\"}} {v}");
                }
            }
        }
        for (name, help, v) in [
            (
                "roomguard_agent_batches_published_total",
                "Batches handed to the MQTT client.",
                &self.batches_published,
            ),
            (
                "roomguard_agent_readings_published_total",
                "Readings in those batches.",
                &self.readings_published,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP roomguard_agent_broker_connected 1 while connected to the broker.\n# TYPE roomguard_agent_broker_connected gauge\nroomguard_agent_broker_connected {}",
            self.broker_connected.load(Relaxed)
        );
        out
    }
}

/// `/metrics` and `/healthz` for the agent.
pub fn router(metrics: Arc<AgentMetrics>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(
                |axum::extract::State(m): axum::extract::State<Arc<AgentMetrics>>| async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        m.render(),
                    )
                        .into_response()
                },
            ),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(metrics)
}
