//! The agent's own metrics, served in the Prometheus text format at
//! `/metrics` when `[metrics] listen` is set: per device polls, failures,
//! requests, registers read, overruns and poll time; batches published;
//! the spool's backlog, drops and damage.

use crate::link::Link;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use roomguard_protocol::health::Failing;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

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
    pub spool_write_errors: AtomicU64,
    /// Spool writes (and syncs) failing, since when.
    pub spool_failing: Failing,
    /// SNMP notifications received, by outcome.
    pub traps: Arc<crate::drivers::snmp::trap::TrapCounters>,
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
                "Batches made from polls (each spooled, then sent).",
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
        let name = "roomguard_agent_snmp_traps_total";
        let _ = writeln!(out, "# HELP {name} SNMP notifications received, by outcome: known (acted on), unknown (in no profile), refused (community or credentials), unknown_source, malformed.\n# TYPE {name} counter");
        for (outcome, v) in self.traps.by_outcome() {
            let _ = writeln!(out, "{name}{{outcome=\"{outcome}\"}} {v}");
        }
        let _ = writeln!(
            out,
            "# HELP roomguard_agent_broker_connected 1 while connected to the broker.\n# TYPE roomguard_agent_broker_connected gauge\nroomguard_agent_broker_connected {}",
            self.broker_connected.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP roomguard_agent_spool_failing_seconds How long spool writes have been failing (0: they work).\n# TYPE roomguard_agent_spool_failing_seconds gauge\nroomguard_agent_spool_failing_seconds {}",
            self.spool_failing.seconds()
        );
        let _ = writeln!(
            out,
            "# HELP roomguard_agent_spool_write_errors_total Batches lost because the spool could not be written.\n# TYPE roomguard_agent_spool_write_errors_total counter\nroomguard_agent_spool_write_errors_total {}",
            self.spool_write_errors.load(Relaxed)
        );
        out
    }
}

/// The spool and link figures, read under the link's lock.
fn render_spool(link: &Mutex<Link>, out: &mut String) {
    let l = link.lock().unwrap_or_else(|e| e.into_inner());
    let s = l.spool_status();
    let c = l.spool().counters;
    let st = l.stats;
    let rows: [(&str, &str, &str, u64); 13] = [
        (
            "roomguard_agent_spool_pending_batches",
            "gauge",
            "Batches spooled and not yet confirmed.",
            s.pending_batches,
        ),
        (
            "roomguard_agent_spool_pending_bytes",
            "gauge",
            "Bytes of those batches.",
            s.pending_bytes,
        ),
        (
            "roomguard_agent_spool_disk_bytes",
            "gauge",
            "Bytes the spool's files take.",
            l.spool().total_bytes(),
        ),
        (
            "roomguard_agent_spool_appended_total",
            "counter",
            "Batches written to the spool.",
            c.appended,
        ),
        (
            "roomguard_agent_spool_dropped_batches_total",
            "counter",
            "Batches dropped by the size or age bound, never sent.",
            s.dropped_batches,
        ),
        (
            "roomguard_agent_spool_dropped_readings_total",
            "counter",
            "Readings in the dropped batches.",
            s.dropped_readings,
        ),
        (
            "roomguard_agent_spool_dropped_unconfirmed_total",
            "counter",
            "Batches dropped by a bound after sending, before confirmation.",
            s.dropped_unconfirmed,
        ),
        (
            "roomguard_agent_spool_discarded_records_total",
            "counter",
            "Damaged stretches discarded at start.",
            s.discarded_records,
        ),
        (
            "roomguard_agent_spool_syncs_total",
            "counter",
            "fsyncs of the spool: for batches left waiting unconfirmed, at a stop, and after every write when sync_interval is 0s.",
            c.syncs,
        ),
        (
            "roomguard_agent_sent_live_total",
            "counter",
            "Batches sent as they were polled.",
            st.sent_live,
        ),
        (
            "roomguard_agent_sent_backfill_total",
            "counter",
            "Batches sent late from the spool (backfill).",
            st.sent_backfill,
        ),
        (
            "roomguard_agent_confirmed_total",
            "counter",
            "Batches confirmed stored and removed from the spool.",
            st.confirmed,
        ),
        (
            "roomguard_agent_resent_unconfirmed_total",
            "counter",
            "Batches sent again because no confirmation came.",
            st.resent_unconfirmed,
        ),
    ];
    for (name, kind, help, v) in rows {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP roomguard_agent_confirmations_refused_total Messages on the confirmation topic ignored: not signed with this agent's key, naming batches never sent, or not a confirmation.\n# TYPE roomguard_agent_confirmations_refused_total counter"
    );
    for (reason, v) in [
        ("unauthenticated", st.confirms_unauthenticated),
        ("implausible", st.confirms_implausible),
        ("malformed", st.confirms_malformed),
    ] {
        let _ = writeln!(
            out,
            "roomguard_agent_confirmations_refused_total{{reason=\"{reason}\"}} {v}"
        );
    }
    if let Some(oldest) = s.oldest_ms {
        let age = (roomguard_protocol::clock::now_ms() - oldest).max(0) as f64 / 1000.0;
        let _ = writeln!(out, "# HELP roomguard_agent_spool_oldest_age_seconds Age of the oldest unconfirmed batch.\n# TYPE roomguard_agent_spool_oldest_age_seconds gauge\nroomguard_agent_spool_oldest_age_seconds {age}");
    }
}

type MetricsState = (Arc<AgentMetrics>, Arc<Mutex<Link>>);

/// `/metrics` and `/healthz` for the agent.
pub fn router(metrics: Arc<AgentMetrics>, link: Arc<Mutex<Link>>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(
                |axum::extract::State((m, link)): axum::extract::State<MetricsState>| async move {
                    let mut text = m.render();
                    render_spool(&link, &mut text);
                    (
                        [(
                            header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        text,
                    )
                        .into_response()
                },
            ),
        )
        .route(
            "/healthz",
            get(
                |axum::extract::State((m, _)): axum::extract::State<MetricsState>| async move {
                    // A spool that cannot be written loses every new batch:
                    // that is not a healthy agent, whatever else works.
                    match m.spool_failing.unhealthy() {
                        None => (axum::http::StatusCode::OK, "ok\n".to_owned()),
                        Some(why) => (
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            format!("degraded: spool cannot be written: {why}\n"),
                        ),
                    }
                },
            ),
        )
        .with_state((metrics, link))
}
