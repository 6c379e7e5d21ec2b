//! The collector's self-metrics, rendered in the Prometheus text format at
//! `/metrics`. Plain atomics: cheap on the ingest path, no registry needed.

use roomguard_protocol::health::Failing;
use serde::Serialize;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Sum and count of durations (a summary without quantiles).
#[derive(Debug, Default)]
pub struct Timer {
    micros: Counter,
    count: Counter,
}

impl Timer {
    pub fn observe(&self, d: Duration) {
        self.micros.add(d.as_micros() as u64);
        self.count.inc();
    }
}

/// Reasons a message is rejected; one counter each.
pub const REJECT_REASONS: [&str; 9] = [
    "too_large",
    "malformed",
    "unknown_version",
    "identity_mismatch",
    "invalid",
    "bad_topic",
    "bad_status",
    "too_many_points",
    "unauthenticated",
];

#[derive(Debug, Default)]
pub struct Metrics {
    pub messages_received: Counter,
    pub batches_accepted: Counter,
    pub readings_accepted: Counter,
    pub rejected: [Counter; REJECT_REASONS.len()],
    pub batches_stored: Counter,
    pub readings_stored: Counter,
    pub readings_duplicate: Counter,
    pub batches_duplicate: Counter,
    pub store_errors: Counter,
    /// Acknowledgements that found the MQTT request queue full and waited.
    pub acks_deferred: Counter,
    pub store_write_seconds: Timer,
    pub rollup_minutes: Counter,
    pub rows_expired: Counter,
    pub maintain_seconds: Timer,
    pub checkpoint_seconds: Timer,
    /// Pages in the WAL at the last checkpoint.
    pub wal_pages: Gauge,
    pub write_queue_depth: Gauge,
    pub sink_lines_sent: Counter,
    pub sink_lines_dropped: Counter,
    pub sink_lines_rejected: Counter,
    pub sink_errors: Counter,
    pub sink_backlog_lines: Gauge,
    pub sink_backlog_bytes: Gauge,
    /// Poll-to-commit time of the newest live (not backfill) batch, ms.
    pub ingest_lag_ms: Gauge,
    pub broker_connected: Gauge,
    /// The connection confirmations go out on (`<client_id>-confirm`).
    pub confirm_connected: Gauge,
    pub broker_connects: Counter,
    pub alarms_raised: Counter,
    pub alarms_cleared: Counter,
    pub notifications_sent: Counter,
    pub notification_failures: Counter,
    pub notifications_dead: Counter,
    /// Outbox rows waiting to be delivered (sampled when /metrics is read).
    pub notifications_pending: Gauge,
    /// Store writes (batches, statuses, maintenance) failing, since when.
    pub store_failing: Failing,
    /// WAL checkpoints failing, since when (the WAL grows meanwhile).
    pub checkpoint_failing: Failing,
    /// The store file's last integrity check.
    pub integrity: std::sync::Mutex<Integrity>,
}

/// What the last integrity check (SQLite's `quick_check`) of the store found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Integrity {
    /// Not checked yet, or a check is running.
    #[default]
    Checking,
    Ok {
        checked_at: i64,
    },
    Damaged {
        checked_at: i64,
        detail: String,
    },
    /// The check could not run (the file could not be opened for it).
    Unchecked {
        detail: String,
    },
}

/// Whether the collector is fit to take readings, and if not, why.
#[derive(Debug, Serialize)]
pub struct Health {
    /// "ok" or "degraded".
    pub status: &'static str,
    /// What makes it degraded, in words.
    pub reasons: Vec<String>,
    pub broker_connected: bool,
    pub integrity: Integrity,
}

impl Metrics {
    fn integrity(&self) -> Integrity {
        self.integrity
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_integrity(&self, i: Integrity) {
        *self.integrity.lock().unwrap_or_else(|e| e.into_inner()) = i;
    }

    /// True once a check found the store file damaged: nothing more is
    /// written into it.
    pub fn store_damaged(&self) -> bool {
        matches!(self.integrity(), Integrity::Damaged { .. })
    }

    /// Health as `/healthz` reports it: degraded while the broker is away,
    /// the store has failed for longer than `health::GRACE`, or its file is damaged.
    pub fn health(&self) -> Health {
        let broker_connected = self.broker_connected.get() == 1;
        let integrity = self.integrity();
        let mut reasons = Vec::new();
        if !broker_connected {
            reasons.push("not connected to the MQTT broker".to_owned());
        }
        if let Some(why) = self.store_failing.unhealthy() {
            reasons.push(format!("store writes failing: {why}"));
        }
        if let Some(why) = self.checkpoint_failing.unhealthy() {
            reasons.push(format!("store checkpoints failing (its WAL grows): {why}"));
        }
        if let Integrity::Damaged { detail, .. } = &integrity {
            reasons.push(format!("store file damaged, not written: {detail}"));
        }
        Health {
            status: if reasons.is_empty() { "ok" } else { "degraded" },
            reasons,
            broker_connected,
            integrity,
        }
    }

    /// Counts a rejection under `reason`, one of [`REJECT_REASONS`].
    pub fn reject(&self, reason: &str) {
        if let Some(i) = REJECT_REASONS.iter().position(|r| *r == reason) {
            self.rejected[i].inc();
        }
    }

    pub fn rejected_total(&self) -> u64 {
        self.rejected.iter().map(Counter::get).sum()
    }

    pub fn render(&self) -> String {
        let mut out = String::with_capacity(2048);
        let mut counter = |name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        counter(
            "roomguard_messages_received_total",
            "MQTT messages received.",
            self.messages_received.get(),
        );
        counter(
            "roomguard_batches_accepted_total",
            "Batches that passed validation.",
            self.batches_accepted.get(),
        );
        counter(
            "roomguard_readings_accepted_total",
            "Readings in accepted batches.",
            self.readings_accepted.get(),
        );
        counter(
            "roomguard_batches_stored_total",
            "Batches committed to the store.",
            self.batches_stored.get(),
        );
        counter(
            "roomguard_readings_stored_total",
            "Readings committed to the store (one repeated under another batch number is also counted as a duplicate once found).",
            self.readings_stored.get(),
        );
        counter(
            "roomguard_readings_duplicate_total",
            "Readings received again and not stored twice.",
            self.readings_duplicate.get(),
        );
        counter(
            "roomguard_batches_duplicate_total",
            "Batches received again (same agent and sequence) and skipped.",
            self.batches_duplicate.get(),
        );
        counter(
            "roomguard_store_errors_total",
            "Failed store writes.",
            self.store_errors.get(),
        );
        counter(
            "roomguard_acks_deferred_total",
            "Acknowledgements to the broker that waited for room in the MQTT client's queue.",
            self.acks_deferred.get(),
        );
        counter(
            "roomguard_broker_connects_total",
            "Successful broker connections.",
            self.broker_connects.get(),
        );
        counter(
            "roomguard_alarms_raised_total",
            "Alarms raised (including late and suppressed ones).",
            self.alarms_raised.get(),
        );
        counter(
            "roomguard_alarms_cleared_total",
            "Alarms cleared.",
            self.alarms_cleared.get(),
        );
        counter(
            "roomguard_notifications_sent_total",
            "Notifications delivered to a channel.",
            self.notifications_sent.get(),
        );
        counter(
            "roomguard_notification_failures_total",
            "Failed delivery attempts (each is retried).",
            self.notification_failures.get(),
        );
        counter(
            "roomguard_notifications_dead_total",
            "Notifications given up after their channel's max_attempts.",
            self.notifications_dead.get(),
        );
        let _ = writeln!(
            out,
            "# HELP roomguard_messages_rejected_total Messages refused, by reason.\n# TYPE roomguard_messages_rejected_total counter"
        );
        for (reason, c) in REJECT_REASONS.iter().zip(self.rejected.iter()) {
            let _ = writeln!(
                out,
                "roomguard_messages_rejected_total{{reason=\"{reason}\"}} {}",
                c.get()
            );
        }
        let _ = writeln!(
            out,
            "# HELP roomguard_store_write_seconds Time spent in store transactions.\n# TYPE roomguard_store_write_seconds summary\nroomguard_store_write_seconds_sum {}\nroomguard_store_write_seconds_count {}",
            self.store_write_seconds.micros.get() as f64 / 1e6,
            self.store_write_seconds.count.get()
        );
        let _ = writeln!(
            out,
            "# HELP roomguard_store_maintain_seconds Time spent on rollups and retention.\n# TYPE roomguard_store_maintain_seconds summary\nroomguard_store_maintain_seconds_sum {}\nroomguard_store_maintain_seconds_count {}\n# HELP roomguard_rollup_minutes_total Point-minutes whose rollups were recomputed.\n# TYPE roomguard_rollup_minutes_total counter\nroomguard_rollup_minutes_total {}\n# HELP roomguard_rows_expired_total Rows deleted by retention.\n# TYPE roomguard_rows_expired_total counter\nroomguard_rows_expired_total {}",
            self.maintain_seconds.micros.get() as f64 / 1e6,
            self.maintain_seconds.count.get(),
            self.rollup_minutes.get(),
            self.rows_expired.get()
        );
        let _ = writeln!(
            out,
            "# HELP roomguard_store_checkpoint_seconds Time spent copying the WAL into the database file (beside the writer).\n# TYPE roomguard_store_checkpoint_seconds summary\nroomguard_store_checkpoint_seconds_sum {}\nroomguard_store_checkpoint_seconds_count {}\n# HELP roomguard_store_wal_pages Pages in the write-ahead log at the last checkpoint.\n# TYPE roomguard_store_wal_pages gauge\nroomguard_store_wal_pages {}",
            self.checkpoint_seconds.micros.get() as f64 / 1e6,
            self.checkpoint_seconds.count.get(),
            self.wal_pages.get()
        );
        let _ = writeln!(
            out,
            "# HELP roomguard_ingest_lag_seconds From poll to commit, of the last transaction's live batches (worst).\n# TYPE roomguard_ingest_lag_seconds gauge\nroomguard_ingest_lag_seconds {}",
            self.ingest_lag_ms.get() as f64 / 1000.0
        );
        for (name, kind, help, v) in [
            (
                "roomguard_influx_lines_sent_total",
                "counter",
                "Lines the InfluxDB sink wrote.",
                self.sink_lines_sent.get(),
            ),
            (
                "roomguard_influx_lines_dropped_total",
                "counter",
                "Lines the InfluxDB sink dropped: its backlog bound, or it could not keep up.",
                self.sink_lines_dropped.get(),
            ),
            (
                "roomguard_influx_lines_rejected_total",
                "counter",
                "Lines InfluxDB refused (4xx) and the sink dropped.",
                self.sink_lines_rejected.get(),
            ),
            (
                "roomguard_influx_errors_total",
                "counter",
                "Failed writes to InfluxDB, retried.",
                self.sink_errors.get(),
            ),
            (
                "roomguard_influx_backlog_lines",
                "gauge",
                "Lines waiting to be written to InfluxDB.",
                self.sink_backlog_lines.get(),
            ),
            (
                "roomguard_influx_backlog_bytes",
                "gauge",
                "Compressed bytes waiting to be written to InfluxDB.",
                self.sink_backlog_bytes.get(),
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP roomguard_write_queue_depth Batches waiting for the store writer.\n# TYPE roomguard_write_queue_depth gauge\nroomguard_write_queue_depth {}",
            self.write_queue_depth.get()
        );
        let _ = writeln!(
            out,
            "# HELP roomguard_notifications_pending Notifications waiting in the outbox.\n# TYPE roomguard_notifications_pending gauge\nroomguard_notifications_pending {}",
            self.notifications_pending.get()
        );
        let _ = writeln!(
            out,
            "# HELP roomguard_broker_connected 1 while connected to the MQTT broker.\n# TYPE roomguard_broker_connected gauge\nroomguard_broker_connected {}",
            self.broker_connected.get()
        );
        let integrity_ok = match self.integrity() {
            Integrity::Checking | Integrity::Unchecked { .. } => None,
            Integrity::Ok { .. } => Some(1),
            Integrity::Damaged { .. } => Some(0),
        };
        let _ = writeln!(
            out,
            "# HELP roomguard_store_failing_seconds How long store writes have been failing (0: they work).\n# TYPE roomguard_store_failing_seconds gauge\nroomguard_store_failing_seconds {}\n\
             # HELP roomguard_store_checkpoint_failing_seconds How long WAL checkpoints have been failing (0: they work).\n# TYPE roomguard_store_checkpoint_failing_seconds gauge\nroomguard_store_checkpoint_failing_seconds {}\n\
             # HELP roomguard_healthy 1 when /healthz says ok.\n# TYPE roomguard_healthy gauge\nroomguard_healthy {}",
            self.store_failing.seconds(),
            self.checkpoint_failing.seconds(),
            u8::from(self.health().reasons.is_empty()),
        );
        if let Some(ok) = integrity_ok {
            let _ = writeln!(
                out,
                "# HELP roomguard_store_integrity_ok 1 when the last integrity check of the store file passed, 0 when it found damage (absent while checking).\n# TYPE roomguard_store_integrity_ok gauge\nroomguard_store_integrity_ok {ok}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP roomguard_confirm_connected 1 while the connection that confirms batches to agents is up.\n# TYPE roomguard_confirm_connected gauge\nroomguard_confirm_connected {}",
            self.confirm_connected.get()
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejections_are_rendered_by_reason() {
        let m = Metrics::default();
        m.reject("identity_mismatch");
        m.reject("identity_mismatch");
        m.reject("malformed");
        let text = m.render();
        assert!(
            text.contains("roomguard_messages_rejected_total{reason=\"identity_mismatch\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("roomguard_messages_rejected_total{reason=\"malformed\"} 1"),
            "{text}"
        );
        assert_eq!(m.rejected_total(), 3);
    }

    #[test]
    fn every_protocol_reject_reason_has_a_counter() {
        use roomguard_protocol::RejectReason as R;
        for r in [
            R::TooLarge(0),
            R::Malformed(String::new()),
            R::UnknownVersion(0),
            R::IdentityMismatch {
                payload_site: String::new(),
                payload_agent: String::new(),
                topic_site: String::new(),
                topic_agent: String::new(),
            },
            R::Invalid(String::new()),
        ] {
            assert!(REJECT_REASONS.contains(&r.label()), "{}", r.label());
        }
    }
}
