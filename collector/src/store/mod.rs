//! Storage of readings. The writer runs on its own thread (SQLite calls block)
//! and drains a bounded queue, committing whatever has accumulated in one
//! transaction: under load, batches grow and per-transaction cost is shared.

pub mod alarms;
pub mod auth;
pub mod backend;
pub mod hazards;
pub mod history;
pub mod inspection;
pub mod outbox;
pub mod patrols;
pub mod pending;
pub mod postgres;
pub mod reports;
pub mod retention;
pub mod rollup;
pub mod schema;
pub mod sql;
pub mod sqlite;

use crate::confirm::Confirmations;
use crate::metrics::{Integrity, Metrics};
use roomguard_protocol::clock::now_ms;
use roomguard_protocol::{Batch, Status};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use thiserror::Error;
use tokio::sync::mpsc;

/// Batches queued for the writer. When full, ingest waits, which stops
/// reading from the broker: back-pressure instead of unbounded memory.
/// Ingest also bounds the readings queued (`ingest::MAX_QUEUED_READINGS`).
pub const WRITE_QUEUE: usize = 8192;

/// Most readings committed in one transaction. Under load the writer takes
/// whatever has queued, up to this: a transaction's cost is mostly the B-tree
/// pages it touches, one or two per point whatever its readings, so larger
/// transactions store more readings per page written.
const MAX_READINGS_PER_TX: usize = 200_000;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("cannot open store {path}: {message}")]
    Open { path: PathBuf, message: String },
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{0}")]
    Postgres(#[from] crate::store::postgres::PgError),
    #[error("alarms: {0}")]
    Alarm(#[from] crate::store::alarms::RecordError),
    /// A blocking task reading the store panicked or was cancelled.
    #[error("store task failed: {0}")]
    Task(String),
    #[error("store {path} is damaged ({detail}); nothing more is written into it. {RECOVERY}", path = path.display())]
    Damaged { path: PathBuf, detail: String },
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        StoreError::Postgres(e.into())
    }
}

impl StoreError {
    /// PostgreSQL could not be reached (or the connection broke): worth
    /// waiting for, unlike a setting it refused.
    pub fn is_unreachable(&self) -> bool {
        use crate::store::postgres::PgError;
        match self {
            StoreError::Postgres(PgError::Unreachable { .. }) => true,
            StoreError::Postgres(PgError::Sql(e)) => e.is_closed(),
            _ => false,
        }
    }
}

/// What to do with a damaged store file.
pub const RECOVERY: &str = "To recover: stop the collector; move the file and its -wal and -shm \
     files aside; copy what can still be read into a new file with SQLite's own tool \
     (`sqlite3 old.db .recover | sqlite3 new.db`, Debian package sqlite3) and put the new \
     file at store.path, or start with an empty store. Agents resend what they still \
     hold in their spools (docs/API.md, Store integrity).";

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WriteStats {
    pub batches: u64,
    pub readings: u64,
    /// Readings already stored (same point and event time): not stored again.
    pub duplicates: u64,
    /// Batches already stored (same agent and sequence number): skipped whole.
    pub duplicate_batches: u64,
}

/// The latest reading of one point.
#[derive(Debug, Clone, Serialize)]
pub struct LatestRow {
    pub site: String,
    pub point: String,
    pub agent: String,
    pub room: String,
    pub device: String,
    pub quantity: String,
    pub unit: String,
    pub ts: i64,
    pub value: Option<f64>,
    /// State name or text, for enumerations and string points.
    pub text: Option<String>,
    pub bad: Option<String>,
}

/// An agent's last status.
#[derive(Debug, Clone, Serialize)]
pub struct AgentRow {
    pub site: String,
    pub agent: String,
    /// `online` or `offline`.
    pub state: String,
    /// The status document as the agent (or its last will) sent it.
    pub status: serde_json::Value,
    /// When the collector received it, ms since the epoch.
    pub updated_at: i64,
}

/// Acknowledges a message to the broker; called once what it carried is
/// committed (or deliberately dropped). A message never acknowledged is
/// delivered again after a reconnect, so nothing the collector took in is
/// lost by a crash between receiving and committing.
pub type Ack = Box<dyn FnOnce() + Send>;

/// What the writer is asked to store, with the acknowledgement to send once
/// it is committed.
pub enum WriteCmd {
    Batch(Batch, Option<Ack>),
    Status(Status, Option<Ack>),
    /// Time for a step of background work (rollups, retention).
    Maintain,
}

impl std::fmt::Debug for WriteCmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteCmd::Batch(b, _) => write!(f, "Batch({}/{}#{})", b.site, b.agent, b.seq),
            WriteCmd::Status(s, _) => write!(f, "Status({}/{})", s.site, s.agent),
            WriteCmd::Maintain => write!(f, "Maintain"),
        }
    }
}

/// Starts the writer thread; it stops when every sender is dropped.
pub fn spawn_writer(
    mut writer: backend::Writer,
    metrics: Arc<Metrics>,
    confirmations: Arc<Confirmations>,
    sink: Option<crate::sinks::influx::SinkHandle>,
    wake: Arc<tokio::sync::Notify>,
    live: Arc<crate::live::Live>,
) -> std::io::Result<(mpsc::Sender<WriteCmd>, std::thread::JoinHandle<()>)> {
    let (tx, mut rx) = mpsc::channel::<WriteCmd>(WRITE_QUEUE);
    let (stop, checkpoints) = match &writer {
        backend::Writer::Sqlite(w) => {
            let (stop, checkpoints) = spawn_checkpoints(w, &metrics)?;
            check_integrity(w, &metrics)?;
            (Some(stop), Some(checkpoints))
        }
        // PostgreSQL checks its own pages and writes its own WAL.
        backend::Writer::Postgres(_) => {
            metrics.set_integrity(Integrity::Ok {
                checked_at: now_ms(),
            });
            (None, None)
        }
    };
    let handle = std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || {
            let _stop_checkpoints = stop.map(|stop| StopOnDrop(stop, checkpoints));
            let mut batches = Vec::new();
            let mut acks: Vec<Ack> = Vec::new();
            let mut readings = 0;
            let mut maintain = false;
            let mut quiet = Quiet::default();
            while let Some(first) = rx.blocking_recv() {
                let mut next = Some(first);
                while let Some(cmd) = next.take() {
                    match cmd {
                        WriteCmd::Batch(b, ack) => {
                            readings += b.readings.len();
                            batches.push(b);
                            acks.extend(ack);
                        }
                        WriteCmd::Status(s, ack) => {
                            let written = until_written("status", &metrics, &rx, || {
                                intact(&writer, &metrics)?;
                                writer.write_status(&s, now_ms())
                            });
                            if written.is_some() {
                                acks.extend(ack);
                                live.agents_changed();
                            }
                        }
                        WriteCmd::Maintain => maintain = true,
                    }
                    if readings < MAX_READINGS_PER_TX {
                        next = rx.try_recv().ok();
                    }
                }
                metrics.write_queue_depth.set(rx.len() as u64);
                if !batches.is_empty() {
                    let started = Instant::now();
                    let written = until_written("batches", &metrics, &rx, || {
                        intact(&writer, &metrics)?;
                        writer.write_held(&mut batches, now_ms())
                    });
                    match written {
                        Some(stats) => {
                            metrics.batches_stored.add(stats.batches);
                            metrics.readings_stored.add(stats.readings);
                            metrics.readings_duplicate.add(stats.duplicates);
                            metrics.batches_duplicate.add(stats.duplicate_batches);
                            metrics.store_write_seconds.observe(started.elapsed());
                            let now = now_ms();
                            let lag = batches
                                .iter()
                                .filter(|b| !b.backfill)
                                .map(|b| now - b.polled_at)
                                .max();
                            if let Some(lag) = lag {
                                metrics.ingest_lag_ms.set(lag.max(0) as u64);
                            }
                            for b in &batches {
                                confirmations.stored(&b.site, &b.agent, b.seq);
                            }
                            live.stored(&batches);
                            // Handed over, not copied; never waits.
                            if let Some(sink) = &sink {
                                sink.offer(std::mem::take(&mut batches));
                            }
                        }
                        // Stopping: not acknowledged, so the broker delivers
                        // them again at the next start.
                        None => acks.clear(),
                    }
                    batches.clear();
                    readings = 0;
                }
                // Committed: now, and only now, the broker may forget them.
                for ack in acks.drain(..) {
                    ack();
                }
                tell(&mut writer, &metrics, &wake, &live);
                // Background work only between ingest transactions, in
                // steps small enough not to hold ingest up.
                if maintain {
                    quiet.tick(activity(&metrics));
                }
                if std::mem::take(&mut maintain) && !metrics.store_damaged() {
                    let started = Instant::now();
                    match writer.maintain(now_ms()) {
                        Ok(m) => {
                            // PostgreSQL answered: a store that could not be
                            // reached is healthy again even with no ingest.
                            if matches!(writer, backend::Writer::Postgres(_)) {
                                metrics.store_failing.succeeded();
                            }
                            tell(&mut writer, &metrics, &wake, &live);
                            metrics.rollup_minutes.add(m.minutes as u64);
                            metrics.rows_expired.add(m.expired);
                            metrics.readings_duplicate.add(m.duplicates);
                            metrics.maintain_seconds.observe(started.elapsed());
                        }
                        // PostgreSQL out of reach: ill health whether or not
                        // anything waits to be written.
                        Err(e) if e.is_unreachable() => {
                            metrics.store_errors.inc();
                            metrics.store_failing.failed(&e);
                        }
                        Err(e) => {
                            // Background work: retried at the next tick, and
                            // not ill health by itself (ingest writes say that).
                            tracing::error!(error = %e, "store maintenance failed; retried next time");
                            metrics.store_errors.inc();
                        }
                    }
                }
            }
            // A clean stop: what waits goes into samples, so a report or
            // sqlite3 reading the file afterwards finds every reading.
            if let Err(e) = writer.move_pending() {
                match writer {
                    backend::Writer::Sqlite(_) => tracing::error!(error = %e, "cannot move pending readings into samples at stop; they are moved at the next start"),
                    // Their samples are stored; only the catalogue's latest
                    // values of points that never report again stay older.
                    backend::Writer::Postgres(_) => tracing::warn!(error = %e, "cannot write the newest readings into the point catalogue at stop; each point's next reading puts it right"),
                }
            }
        })?;
    // One maintenance tick a second; the ticker holds only a weak sender, so
    // the writer still stops when ingest drops the last real one.
    let weak = tx.downgrade();
    std::thread::Builder::new()
        .name("store-ticker".into())
        .spawn(move || loop {
            std::thread::sleep(MAINTAIN_EVERY);
            let Some(tx) = weak.upgrade() else { return };
            // Skipped when the queue is full: the writer is busy anyway.
            let _ = tx.try_send(WriteCmd::Maintain);
        })?;
    Ok((tx, handle))
}

/// Checkpoints beside the writer, so it seldom stops to copy the WAL into
/// the database file itself (only if this thread falls far behind). The
/// writer stops it and waits for it when it ends, so the writer's
/// connection closes last and SQLite folds the WAL back into the file.
fn spawn_checkpoints(
    writer: &sqlite::SqliteWriter,
    metrics: &Arc<Metrics>,
) -> std::io::Result<(
    Arc<std::sync::atomic::AtomicBool>,
    std::thread::JoinHandle<()>,
)> {
    let checkpointer = sqlite::Checkpointer::open(writer.path())
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let cp_stop = stop.clone();
    let cp_metrics = metrics.clone();
    let checkpoints = std::thread::Builder::new()
        .name("store-checkpoint".into())
        .spawn(move || {
            let mut failing = false;
            loop {
                std::thread::park_timeout(CHECKPOINT_EVERY);
                if cp_stop.load(std::sync::atomic::Ordering::Acquire) {
                    return;
                }
                let started = Instant::now();
                match checkpointer.run() {
                    Ok((pages, _)) => {
                        cp_metrics.checkpoint_seconds.observe(started.elapsed());
                        cp_metrics.wal_pages.set(pages.max(0) as u64);
                        cp_metrics.checkpoint_failing.succeeded();
                        failing = false;
                    }
                    Err(e) => {
                        // Said once per run of failures, counted every time.
                        if !failing {
                            tracing::warn!(error = %e, "WAL checkpoint failed; tried again every 500 ms");
                        }
                        failing = true;
                        cp_metrics.store_errors.inc();
                        cp_metrics.checkpoint_failing.failed(&e);
                    }
                }
            }
        })?;
    Ok((stop, checkpoints))
}

/// The integrity check at open, finished in the background when the file
/// was too large to finish it then.
fn check_integrity(writer: &sqlite::SqliteWriter, metrics: &Arc<Metrics>) -> std::io::Result<()> {
    match writer.checked() {
        sqlite::Check::Ok => metrics.set_integrity(Integrity::Ok {
            checked_at: now_ms(),
        }),
        // Larger than the check at open could finish: the rest in the
        // background, and the writer stops if it finds damage.
        _ => {
            let (path, metrics) = (writer.path().to_owned(), metrics.clone());
            std::thread::Builder::new()
                .name("store-check".into())
                .spawn(move || {
                    let started = Instant::now();
                    let integrity = match sqlite::check_file(&path) {
                        Ok(sqlite::Check::Damaged(detail)) => {
                            tracing::error!(
                                "{}",
                                StoreError::Damaged {
                                    path: path.clone(),
                                    detail: detail.clone()
                                }
                            );
                            Integrity::Damaged {
                                checked_at: now_ms(),
                                detail,
                            }
                        }
                        Ok(_) => Integrity::Ok {
                            checked_at: now_ms(),
                        },
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot check the store's integrity");
                            Integrity::Unchecked {
                                detail: e.to_string(),
                            }
                        }
                    };
                    tracing::info!(
                        seconds = started.elapsed().as_secs_f64(),
                        ?integrity,
                        "store integrity checked in the background"
                    );
                    metrics.set_integrity(integrity);
                })?;
        }
    }
    Ok(())
}

/// Refuses to write into a file the integrity check found damaged (after it
/// opened: the check ran on in the background).
fn intact(writer: &backend::Writer, metrics: &Metrics) -> Result<(), StoreError> {
    if let (true, backend::Writer::Sqlite(writer)) = (metrics.store_damaged(), writer) {
        return Err(StoreError::Damaged {
            path: writer.path().to_owned(),
            detail: "found by the integrity check".into(),
        });
    }
    Ok(())
}

/// Runs a store write until it works; `None` only when the collector is
/// stopping (the queue's senders are gone).
///
/// A failed write is not given up: its messages keep their places in the
/// acknowledgement line (rumqttd ends a connection that acknowledges out of
/// order, and every reconnection delivers the window again), and their
/// agents keep them spooled. Meanwhile the queue fills, ingest stops
/// reading, the broker holds the rest, and `/healthz` says why. A full disk
/// freed, it goes on where it stopped.
fn until_written<T>(
    what: &str,
    metrics: &Metrics,
    rx: &mpsc::Receiver<WriteCmd>,
    mut write: impl FnMut() -> Result<T, StoreError>,
) -> Option<T> {
    let mut wait = std::time::Duration::from_millis(250);
    let mut failed = false;
    loop {
        match write() {
            Ok(t) => {
                if failed {
                    tracing::info!(what, "store writes work again");
                }
                metrics.store_failing.succeeded();
                return Some(t);
            }
            Err(e) => {
                metrics.store_errors.inc();
                metrics.store_failing.failed(&e);
                if !failed {
                    tracing::error!(error = %e, what, "store write failed; not acknowledged, tried again until it works");
                    failed = true;
                }
                if rx.is_closed() {
                    return None;
                }
                std::thread::sleep(wait);
                wait = (wait * 2).min(std::time::Duration::from_secs(5));
            }
        }
    }
}

/// Messages received and readings stored so far: unchanged over a second,
/// that second was quiet.
fn activity(metrics: &Metrics) -> u64 {
    metrics.readings_stored.get() + metrics.messages_received.get()
}

/// Hands freed memory back to the system once ingest has gone quiet.
///
/// glibc keeps what a burst freed (decoded batches, readings waiting in
/// memory, the broker's buffers) in its arenas, one per thread that
/// allocated: after 750,000 messages the collector stayed at 270 MB while
/// idle. `malloc_trim` returns the free pages of every arena; once per quiet
/// spell, so it costs nothing under load.
#[derive(Default)]
struct Quiet {
    last: u64,
    quiet_ticks: u32,
    trimmed: bool,
}

/// Maintenance ticks (seconds) without new messages before memory is trimmed.
const TRIM_AFTER_QUIET_TICKS: u32 = 10;

impl Quiet {
    fn tick(&mut self, activity: u64) {
        if activity != self.last {
            self.last = activity;
            self.quiet_ticks = 0;
            self.trimmed = false;
            return;
        }
        self.quiet_ticks += 1;
        if self.quiet_ticks >= TRIM_AFTER_QUIET_TICKS && !self.trimmed {
            self.trimmed = true;
            // SAFETY: malloc_trim only returns free memory to the system; it
            // takes the allocator's own locks and touches no live allocation.
            #[cfg(all(target_os = "linux", target_env = "gnu"))]
            unsafe {
                libc::malloc_trim(0);
            }
        }
    }
}

/// Stops the checkpoint thread and waits for it.
struct StopOnDrop(
    Arc<std::sync::atomic::AtomicBool>,
    Option<std::thread::JoinHandle<()>>,
);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
        if let Some(t) = self.1.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// Counts committed alarm transitions and wakes the notification sender
/// when they queued anything.
fn tell(
    writer: &mut backend::Writer,
    metrics: &Metrics,
    wake: &tokio::sync::Notify,
    live: &crate::live::Live,
) {
    let (raised, cleared) = writer.take_alarm_counts();
    if raised + cleared > 0 {
        live.alarms_changed();
    }
    metrics.alarms_raised.add(raised);
    metrics.alarms_cleared.add(cleared);
    if writer.take_notifications() > 0 {
        wake.notify_one();
    }
}

/// How often the WAL is copied into the database file.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// How often the writer does a step of background work.
const MAINTAIN_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;
    use roomguard_protocol::{Quality, Reading, PROTOCOL_VERSION};
    use std::sync::atomic::{AtomicBool, Ordering};

    fn batch() -> Batch {
        Batch {
            v: PROTOCOL_VERSION,
            site: "s".into(),
            agent: "a".into(),
            seq: 1,
            device: "d".into(),
            polled_at: now_ms(),
            backfill: false,
            points: Vec::new(),
            readings: vec![Reading {
                point: "d.t".into(),
                value: Some(1.0),
                text: None,
                ts: now_ms(),
                quality: Quality::Good,
            }],
        }
    }

    /// A file the background check found damaged after it opened: nothing
    /// more is written, nothing acknowledged, health says so; the writer
    /// still stops when the collector does.
    #[test]
    fn a_store_found_damaged_while_running_is_not_written_and_nothing_is_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let writer =
            backend::Writer::Sqlite(sqlite::SqliteWriter::open(&dir.path().join("s.db")).unwrap());
        let metrics = Arc::new(Metrics::default());
        let (tx, thread) = spawn_writer(
            writer,
            metrics.clone(),
            Arc::new(Confirmations::default()),
            None,
            Arc::new(tokio::sync::Notify::new()),
            Arc::new(crate::live::Live::default()),
        )
        .unwrap();
        metrics.set_integrity(Integrity::Damaged {
            checked_at: now_ms(),
            detail: "test".into(),
        });
        let acked = Arc::new(AtomicBool::new(false));
        let flag = acked.clone();
        tx.blocking_send(WriteCmd::Batch(
            batch(),
            Some(Box::new(move || flag.store(true, Ordering::SeqCst))),
        ))
        .unwrap();
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while metrics.store_failing.failing().is_none() && Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let (_, why) = metrics.store_failing.failing().expect("the write failed");
        assert!(why.contains("damaged"), "{why}");
        assert!(
            !acked.load(Ordering::SeqCst),
            "acknowledged without a commit"
        );
        assert_eq!(metrics.batches_stored.get(), 0);
        assert!(metrics
            .health()
            .reasons
            .iter()
            .any(|r| r.contains("damaged")));
        drop(tx);
        thread.join().unwrap();
        assert!(!acked.load(Ordering::SeqCst));
    }
}
