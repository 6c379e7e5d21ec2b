//! The embedded store: SQLite in WAL mode, written by one thread in batched
//! transactions, read by any number of short-lived read-only connections
//! (WAL readers never block the writer).
//!
//! Schema: a point catalogue (`points`, which also holds each point's latest
//! value) and samples keyed by `(point_id, ts)` in a WITHOUT ROWID table, so a
//! sample costs one B-tree entry and a point's history is one range scan.
//! `batches` remembers each agent's batches by sequence number, so a batch
//! delivered twice (the agent resends what it was not sure arrived) is
//! recognised and skipped whole.

use super::pending::{self, Pending, Sample, SharedPending, SLICES};
use super::{retention, rollup, AgentRow, LatestRow, StoreError, WriteStats};
use crate::alarm::engine::Transition;
use crate::store::alarms::{AlarmSetup, Recorder, SWEEP_EVERY};
use crate::store::sql::{self, Conn};
use roomguard_protocol::{Batch, Quality, Status};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;

/// Bumped whenever the schema changes; checked at open.
pub(crate) const SCHEMA_VERSION: i64 = 8;

/// The store's own tables (alarms and inspection add theirs).
pub(crate) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS points (
    id          INTEGER PRIMARY KEY,
    site        TEXT NOT NULL,
    point       TEXT NOT NULL,
    agent       TEXT NOT NULL,
    room        TEXT NOT NULL,
    device      TEXT NOT NULL,
    quantity    TEXT NOT NULL,
    unit        TEXT NOT NULL,
    first_seen  INTEGER NOT NULL,
    last_seen   INTEGER NOT NULL,
    last_ts     INTEGER,
    last_value  REAL,
    last_text   TEXT,
    last_bad    TEXT,
    UNIQUE (site, point)
);
CREATE TABLE IF NOT EXISTS samples (
    point_id INTEGER NOT NULL,
    ts       INTEGER NOT NULL,
    value    REAL,
    text     TEXT,
    bad      TEXT,
    PRIMARY KEY (point_id, ts)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS staging (
    id   INTEGER PRIMARY KEY,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    site        TEXT NOT NULL,
    agent       TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    device      TEXT NOT NULL,
    polled_at   INTEGER NOT NULL,
    readings    INTEGER NOT NULL,
    backfill    INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (site, agent, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS batches_by_time ON batches (polled_at);
CREATE TABLE IF NOT EXISTS rollup_1m (
    point_id INTEGER NOT NULL,
    bucket   INTEGER NOT NULL,
    n        INTEGER NOT NULL,
    min      REAL NOT NULL,
    max      REAL NOT NULL,
    sum      REAL NOT NULL,
    last_ts  INTEGER NOT NULL,
    last     REAL NOT NULL,
    PRIMARY KEY (point_id, bucket)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rollup_1h (
    point_id INTEGER NOT NULL,
    bucket   INTEGER NOT NULL,
    n        INTEGER NOT NULL,
    min      REAL NOT NULL,
    max      REAL NOT NULL,
    sum      REAL NOT NULL,
    last_ts  INTEGER NOT NULL,
    last     REAL NOT NULL,
    PRIMARY KEY (point_id, bucket)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rollup_dirty (
    point_id INTEGER NOT NULL,
    bucket   INTEGER NOT NULL,
    PRIMARY KEY (point_id, bucket)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS agents (
    site        TEXT NOT NULL,
    agent       TEXT NOT NULL,
    state       TEXT NOT NULL,
    status_json TEXT NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (site, agent)
);
"#;

/// Catalogue fields of a point, cached by the writer to avoid a lookup per reading.
#[derive(Debug, Clone)]
struct PointMeta {
    id: i64,
    agent: String,
    room: String,
    device: String,
    quantity: String,
    unit: String,
}

/// Catalogue entries by site, then point id (nested so lookups borrow `&str`).
type PointCache = HashMap<String, HashMap<String, PointMeta>>;

/// The single writer. Owns its connection; not shared between threads.
pub struct SqliteWriter {
    conn: Connection,
    path: std::path::PathBuf,
    points: PointCache,
    dirty: rollup::Dirty,
    retention: retention::Cursor,
    policy: retention::Policy,
    /// Maintenance calls since the last retention step.
    since_retention: u32,
    /// The alarm engine and record, when alarms are on.
    alarms: Option<Recorder>,
    alarm_setup: Option<AlarmSetup>,
    /// Maintenance calls since the last alarm sweep.
    since_sweep: u32,
    /// Readings in `staging`, not yet in samples (see `pending`).
    pending: SharedPending,
    /// The slice of points moved into samples next.
    next_slice: usize,
    /// Staging rows and how many slices are still to be moved before all
    /// of their readings are in samples (then the row is deleted).
    staged: VecDeque<(i64, usize)>,
    /// Batches were written since the last maintenance call.
    busy: bool,
    /// What the integrity check at open found (never `Damaged`: such a
    /// file is not opened for writing).
    checked: Check,
    /// The newest `at` of each agent's statuses: an older one is a replay.
    status_at: HashMap<(String, String), i64>,
}

/// What SQLite's `quick_check` found in a store file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    Ok,
    Damaged(String),
    /// Stopped at its time limit: to be finished in the background.
    Unfinished,
}

/// How long the integrity check at open may take; a larger file is
/// checked to the end in the background while the collector runs.
pub const OPEN_CHECK_BUDGET: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs SQLite's `quick_check` (pages, B-trees, records; not index
/// contents, which `integrity_check` adds at several times the cost) on
/// `conn`, interrupted after `budget` when one is given.
pub fn quick_check(
    conn: &Connection,
    budget: Option<std::time::Duration>,
) -> Result<Check, rusqlite::Error> {
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let watchdog = budget.map(|b| {
        let handle = conn.get_interrupt_handle();
        std::thread::spawn(move || {
            if stopped.recv_timeout(b) == Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
                handle.interrupt();
            }
        })
    });
    let rows = conn.prepare("PRAGMA quick_check(20)").and_then(|mut stmt| {
        stmt.query_map([], |r| r.get::<_, String>(0))?
            .collect::<Result<Vec<String>, _>>()
    });
    drop(stop);
    if let Some(w) = watchdog {
        let _ = w.join();
    }
    match rows {
        Ok(rows) if rows.len() == 1 && rows[0] == "ok" => Ok(Check::Ok),
        Ok(rows) => Ok(Check::Damaged(rows.join("; "))),
        Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::OperationInterrupted) => {
            Ok(Check::Unfinished)
        }
        Err(e) if is_damage(&e) => Ok(Check::Damaged(e.to_string())),
        Err(e) => Err(e),
    }
}

/// SQLite's own word that a file is not a sound database.
fn is_damage(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
    )
}

/// What one maintenance call did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Maintained {
    /// Minutes whose rollups were recomputed.
    pub minutes: usize,
    /// Rows deleted by retention.
    pub expired: u64,
    /// Readings moved from staging that samples already had.
    pub duplicates: u64,
}

/// The writer's page cache, in KiB.
const WRITER_CACHE_KIB: i64 = 256 * 1024;
/// WAL pages after which the writer checkpoints itself (512 MiB at 4 KiB pages);
/// normally the checkpoint thread keeps the WAL far smaller.
const WAL_BACKSTOP_PAGES: i64 = 131_072;
/// WAL bytes kept on disk after a reset.
const WAL_KEEP_BYTES: i64 = 64 * 1024 * 1024;

/// Pending readings below which a maintenance call moves them all.
const MOVE_ALL_BELOW: usize = 50_000;

/// Dirty minutes recomputed per maintenance call.
const ROLLUP_STEP: usize = 2_000;
/// Retention runs every this many maintenance calls.
const RETENTION_EVERY: u32 = 10;

fn apply_pragmas(conn: &Connection) -> Result<(), rusqlite::Error> {
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

impl SqliteWriter {
    /// Opens (creating when missing) the database at `path` and its schema.
    pub fn open(path: &Path) -> Result<SqliteWriter, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        }
        let open_err = |e: rusqlite::Error| {
            if is_damage(&e) {
                StoreError::Damaged {
                    path: path.to_owned(),
                    detail: e.to_string(),
                }
            } else {
                StoreError::Open {
                    path: path.to_owned(),
                    message: e.to_string(),
                }
            }
        };
        let conn = Connection::open(path).map_err(open_err)?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(open_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Open {
                path: path.to_owned(),
                message: format!("cannot switch to WAL mode (journal_mode is {mode})"),
            });
        }
        // NORMAL is durable across process crashes in WAL mode; only an OS
        // crash or power loss can lose the last transactions.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        // Readings of thousands of points land all over the samples B-tree;
        // with SQLite's default 2 MB cache every insert missed it, read its
        // page back from the OS and spilled dirty pages to the WAL in the
        // middle of the transaction. 256 MiB holds the hot leaves of a
        // province's points.
        conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)
            .map_err(open_err)?;
        // Checkpoints are run by their own thread (`checkpoint`), not at
        // commit by the writer, which spent a quarter of its time copying
        // pages there. This is only the backstop should that thread fall
        // behind: the writer then checkpoints itself.
        conn.pragma_update(None, "wal_autocheckpoint", WAL_BACKSTOP_PAGES)
            .map_err(open_err)?;
        // Once reset, the WAL file is truncated back to this size.
        conn.pragma_update(None, "journal_size_limit", WAL_KEEP_BYTES)
            .map_err(open_err)?;
        apply_pragmas(&conn).map_err(open_err)?;
        // Before anything is written: a damaged file is refused with the
        // way out, not written into until it fails in some other way.
        let checked = match quick_check(&conn, Some(OPEN_CHECK_BUDGET)).map_err(open_err)? {
            Check::Damaged(detail) => {
                return Err(StoreError::Damaged {
                    path: path.to_owned(),
                    detail,
                })
            }
            c => c,
        };
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(open_err)?;
        let tables: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table'",
                [],
                |r| r.get(0),
            )
            .map_err(open_err)?;
        match (version, tables) {
            // Idempotent: a file made by a development build of this
            // version may lack a column added to it later.
            (SCHEMA_VERSION, _) => super::schema::upgrade_to_8(&conn).map_err(open_err)?,
            // New file, or an older version, which lacked only tables that
            // are created here; rollups of existing samples are computed by
            // the maintenance steps after the upgrade.
            (0, 0) | (2, _) | (3, _) | (4, _) | (5, _) | (6, _) | (7, _) => {
                conn.execute_batch(SCHEMA).map_err(open_err)?;
                conn.execute_batch(super::schema::ALARMS).map_err(open_err)?;
                super::schema::init_inspection(&conn).map_err(open_err)?;
                // Version 8: alarms name the drill they were raised in and
                // their incident, and every drill has an end (a planned one
                // where none was given).
                super::schema::upgrade_to_8(&conn).map_err(open_err)?;
                if (1..4).contains(&version) {
                    conn.execute_batch(
                        "INSERT OR IGNORE INTO rollup_dirty (point_id, bucket)
                         SELECT DISTINCT point_id, ts - (ts % 60000) FROM samples WHERE value IS NOT NULL",
                    )
                    .map_err(open_err)?;
                }
                conn.pragma_update(None, "user_version", SCHEMA_VERSION).map_err(open_err)?;
            }
            (v, _) => {
                return Err(StoreError::Open {
                    path: path.to_owned(),
                    message: format!(
                        "the file has store schema version {v}; this build reads version {SCHEMA_VERSION}. \
                         Keep the old file elsewhere and start with a new one."
                    ),
                })
            }
        }
        let pending: SharedPending = Arc::new(std::sync::RwLock::new(Pending::new()));
        pending::register(path, &pending);
        let mut writer = SqliteWriter {
            conn,
            path: path.to_owned(),
            points: HashMap::new(),
            dirty: rollup::Dirty::default(),
            retention: retention::Cursor::default(),
            policy: retention::Policy::default(),
            since_retention: 0,
            alarms: None,
            alarm_setup: None,
            since_sweep: 0,
            pending,
            next_slice: 0,
            staged: VecDeque::new(),
            busy: false,
            checked,
            status_at: HashMap::new(),
        };
        writer.replay_staging()?;
        Ok(writer)
    }

    fn pending(&self) -> std::sync::RwLockWriteGuard<'_, Pending> {
        pending::write(&self.pending)
    }

    /// Moves what a previous run left in `staging` (it stopped, or crashed,
    /// before moving it) into samples.
    fn replay_staging(&mut self) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        let mut readings = Vec::new();
        {
            let mut stmt = tx.prepare("SELECT id, data FROM staging ORDER BY id")?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                let id: i64 = r.get(0)?;
                let data: Vec<u8> = r.get(1)?;
                match pending::decode(&data) {
                    Some(mut v) => readings.append(&mut v),
                    None => tracing::error!(id, "damaged staging row skipped"),
                }
            }
        }
        if readings.is_empty() {
            return Ok(());
        }
        let n = readings.len();
        let mut stats = WriteStats::default();
        let mut refs: Vec<(i64, &Sample)> = readings.iter().map(|(p, s)| (*p, s)).collect();
        insert_samples(
            &tx,
            &mut self.dirty,
            &mut refs,
            roomguard_protocol::clock::now_ms(),
            &mut stats,
        )?;
        tx.execute("DELETE FROM staging", [])?;
        tx.commit()?;
        tracing::info!(
            readings = n,
            already_there = stats.duplicates,
            "readings of the last run moved from staging into samples"
        );
        Ok(())
    }

    /// After a failed transaction: the slice it was moving waits again, and
    /// what it did in the catalogue and the rollup marks is undone too (a
    /// point id it created may be given to another point next time).
    fn rolled_back(&mut self) {
        self.pending().not_moved();
        self.dirty.forget_uncommitted();
        self.points.clear();
    }

    /// Once committed: what was moved is in samples, what is new waits.
    fn after_commit(
        &mut self,
        fresh: Vec<(i64, Sample)>,
        staged: VecDeque<(i64, usize)>,
        next: usize,
    ) {
        let mut p = self.pending();
        p.moved();
        p.add(fresh);
        drop(p);
        self.staged = staged;
        self.next_slice = next;
    }

    /// Moves every pending reading into samples: at a clean stop, so that
    /// other processes (a report, sqlite3) find them there.
    pub fn move_pending(&mut self) -> Result<u64, StoreError> {
        self.move_all()
    }

    /// Every pending reading into samples, when ingest is idle.
    fn move_all(&mut self) -> Result<u64, StoreError> {
        let idle = pending::read(&self.pending).is_empty();
        if idle && self.staged.is_empty() {
            return Ok(0);
        }
        let tx = self.conn.transaction()?;
        let mut stats = WriteStats::default();
        let moved = move_slices(
            &tx,
            &mut self.dirty,
            &self.pending,
            Slices {
                staged: &self.staged,
                next: self.next_slice,
                all: true,
                now_ms: roomguard_protocol::clock::now_ms(),
            },
            &mut Vec::new(),
            None,
            &mut stats,
        );
        let result = moved.and_then(|m| {
            tx.commit()?;
            Ok(m)
        });
        match result {
            Ok((staged, next)) => {
                self.after_commit(Vec::new(), staged, next);
                Ok(stats.duplicates)
            }
            Err(e) => {
                self.rolled_back();
                Err(e)
            }
        }
    }

    /// Turns the alarm engine on, restoring its state from the store.
    pub fn with_alarms(mut self, setup: AlarmSetup, now_ms: i64) -> Result<Self, StoreError> {
        self.alarms = Some(sql::now(Recorder::load(
            Conn::Lite(&self.conn),
            setup.rules.clone(),
            setup.routes.clone(),
            setup.escalation.clone(),
            now_ms,
            None,
        ))?);
        self.alarm_setup = Some(setup);
        Ok(self)
    }

    /// What the integrity check at open found.
    pub fn checked(&self) -> &Check {
        &self.checked
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Notifications queued since the last call.
    pub fn take_notifications(&mut self) -> usize {
        self.alarms.as_mut().map_or(0, Recorder::take_queued)
    }

    /// Alarms raised and cleared since the last call.
    pub fn take_alarm_counts(&mut self) -> (u64, u64) {
        self.alarms.as_mut().map_or((0, 0), Recorder::take_counts)
    }

    /// The engine, for diagnostics and tests.
    pub fn alarm_recorder(&self) -> Option<&Recorder> {
        self.alarms.as_ref()
    }

    /// After a failed transaction the engine is ahead of the store: rebuild
    /// it from what was committed (the uncommitted batches come again).
    fn reload_alarms(&mut self, now_ms: i64) {
        let Some(setup) = self.alarm_setup.clone() else {
            return;
        };
        match sql::now(Recorder::load(
            Conn::Lite(&self.conn),
            setup.rules,
            setup.routes,
            setup.escalation,
            now_ms,
            None,
        )) {
            Ok(r) => self.alarms = Some(r),
            Err(e) => {
                tracing::error!(error = %e, "cannot reload the alarm engine; alarms are off until restart")
            }
        }
    }

    /// Timers of the alarm engine (delays, silence) and, every few calls,
    /// held notifications and escalation; in its own small transaction.
    fn alarm_tick(&mut self, now_ms: i64) -> Result<(), StoreError> {
        let Some(rec) = self.alarms.as_mut() else {
            return Ok(());
        };
        let mut out: Vec<Transition> = Vec::new();
        rec.engine.tick(now_ms, &mut out);
        self.since_sweep += 1;
        let sweep = self.since_sweep >= SWEEP_EVERY;
        if out.is_empty() && !sweep {
            // Timers that changed nothing persist nothing; state changes
            // without transitions (a delay started) are written with the
            // next transaction.
            return Ok(());
        }
        // IMMEDIATE: it reads (silences) before it writes, and a deferred
        // transaction could not upgrade if the sender or the API committed
        // in between. On any error `maintain` rebuilds the engine once.
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        sql::now(rec.record(Conn::Lite(&tx), &out, now_ms))?;
        if sweep {
            self.since_sweep = 0;
            sql::now(rec.sweep(Conn::Lite(&tx), now_ms))?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Sets how long each tier is kept.
    pub fn with_retention(mut self, policy: retention::Policy) -> Self {
        self.policy = policy;
        self
    }

    /// Bounds the writer's page cache to `mib` MiB (`store.cache_mib`): most
    /// of the collector's resident memory once the store is larger than it.
    pub fn with_cache_mib(self, mib: u32) -> Result<Self, StoreError> {
        self.conn
            .pragma_update(None, "cache_size", -(i64::from(mib) * 1024))?;
        Ok(self)
    }

    /// One bounded step of background work: rollups of closed dirty minutes,
    /// and now and then a retention step. Called between ingest transactions.
    pub fn maintain(&mut self, now_ms: i64) -> Result<Maintained, StoreError> {
        if let Err(e) = self.alarm_tick(now_ms) {
            self.reload_alarms(now_ms);
            return Err(e);
        }
        // Idle, or few waiting: everything into samples (and so into the
        // rollups) now. Under heavy ingest each transaction moves a slice.
        let waiting = pending::read(&self.pending).len();
        let duplicates = if !std::mem::take(&mut self.busy) || waiting < MOVE_ALL_BELOW {
            self.move_all()?
        } else {
            0
        };
        let minutes = rollup::step(&mut self.conn, &mut self.dirty, now_ms, ROLLUP_STEP)?;
        self.since_retention += 1;
        let expired = if self.since_retention >= RETENTION_EVERY {
            self.since_retention = 0;
            retention::step(&mut self.conn, &mut self.retention, &self.policy, now_ms)?
        } else {
            0
        };
        Ok(Maintained {
            minutes,
            expired,
            duplicates,
        })
    }

    /// Stores `batches` in one transaction.
    pub fn write_batches(
        &mut self,
        batches: &[Batch],
        now_ms: i64,
    ) -> Result<WriteStats, StoreError> {
        self.busy = true;
        let result = self.write_batches_tx(batches, now_ms);
        if result.is_err() {
            self.rolled_back();
            self.reload_alarms(now_ms);
        }
        result
    }

    fn write_batches_tx(
        &mut self,
        batches: &[Batch],
        now_ms: i64,
    ) -> Result<WriteStats, StoreError> {
        let tx = self.conn.transaction()?;
        let mut stats = WriteStats::default();
        // Batches stored for the first time: only these are judged.
        let mut fresh: Vec<usize> = Vec::new();
        // (point id, event time, batch, reading) of every reading to store.
        let mut rows: Vec<(i64, i64, u32, u32)> = Vec::new();
        {
            let mut seen = tx.prepare_cached(
                "INSERT INTO batches (site, agent, seq, device, polled_at, readings, backfill, received_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT DO NOTHING",
            )?;
            for (bi, batch) in batches.iter().enumerate() {
                let row = params![
                    batch.site,
                    batch.agent,
                    // SQLite integers are signed; the cast is one-to-one.
                    batch.seq as i64,
                    batch.device,
                    batch.polled_at,
                    batch.readings.len() as i64,
                    batch.backfill,
                    now_ms
                ];
                if seen.execute(row)? == 0 {
                    if same_batch_stored(&tx, batch)? {
                        stats.duplicate_batches += 1;
                        stats.duplicates += batch.readings.len() as u64;
                        continue;
                    }
                    // A different batch under a known number: the agent lost
                    // its state directory and counts again. Store it, say so.
                    tracing::warn!(site = %batch.site, agent = %batch.agent, seq = batch.seq,
                        "agent reused a sequence number (was its state directory reset?); storing the new batch");
                    tx.prepare_cached(
                        "UPDATE batches SET device = ?4, polled_at = ?5, readings = ?6, backfill = ?7, received_at = ?8
                         WHERE site = ?1 AND agent = ?2 AND seq = ?3",
                    )?
                    .execute(row)?;
                }
                let source = Source {
                    site: &batch.site,
                    agent: &batch.agent,
                    device: &batch.device,
                };
                for meta in &batch.points {
                    describe_point(&tx, &mut self.points, &source, meta, now_ms)?;
                }
                rows.reserve(batch.readings.len());
                for (ri, r) in batch.readings.iter().enumerate() {
                    let id = point_id(&tx, &mut self.points, &source, &r.point, now_ms)?;
                    // Batches per transaction and readings per batch are far below u32::MAX.
                    rows.push((id, r.ts, bi as u32, ri as u32));
                }
                stats.batches += 1;
                fresh.push(bi);
            }
        }
        // In key order, a transaction walks the samples B-tree once from left
        // to right; in arrival order every reading of a busy site lands on
        // another point's leaf page. Ties keep arrival order, so the newest
        // reading of a point is the last of its run.
        rows.sort_unstable();
        // Readings go to `staging` (one blob) and wait in memory; a slice
        // of the points moves into samples per transaction (see `pending`).
        let mut new_samples: Vec<(i64, Sample)> = Vec::with_capacity(rows.len());
        {
            for &(id, ts, bi, ri) in &rows {
                let r = &batches[bi as usize].readings[ri as usize];
                let (value, text, bad) = match &r.quality {
                    Quality::Good => (r.value, r.text.as_deref(), None),
                    Quality::Bad(reason) => (None, None, Some(reason.as_str())),
                };
                stats.readings += 1;
                new_samples.push((
                    id,
                    Sample {
                        ts,
                        value,
                        text: text.map(Into::into),
                        bad: bad.map(Into::into),
                    },
                ));
            }
        }
        let staged_id = if new_samples.is_empty() {
            None
        } else {
            let mut blob = Vec::with_capacity(new_samples.len() * 25);
            pending::encode(&new_samples, &mut blob);
            tx.prepare_cached("INSERT INTO staging (data) VALUES (?1)")?
                .execute([blob])?;
            Some(tx.last_insert_rowid())
        };
        let (staged, next) = move_slices(
            &tx,
            &mut self.dirty,
            &self.pending,
            Slices {
                staged: &self.staged,
                next: self.next_slice,
                all: false,
                now_ms,
            },
            &mut new_samples,
            staged_id,
            &mut stats,
        )?;
        if let Some(rec) = self.alarms.as_mut() {
            let mut out = Vec::new();
            for &bi in &fresh {
                rec.engine.observe(&batches[bi], now_ms, &mut out);
            }
            sql::now(rec.record(Conn::Lite(&tx), &out, now_ms))?;
        }
        tx.commit()?;
        self.after_commit(new_samples, staged, next);
        Ok(stats)
    }

    /// Records an agent's latest status.
    pub fn write_status(&mut self, status: &Status, now_ms: i64) -> Result<(), StoreError> {
        // A signed status can still be replayed by anyone who saw it: an old
        // "online" would hide an agent that has died. Statuses carry the
        // agent's time, so one not newer than the newest seen is dropped.
        // (The last will has none; a replayed one shows the agent offline
        // until its next status.)
        if let Some(at) = status.at {
            let key = (status.site.clone(), status.agent.clone());
            let newest = match self.status_at.get(&key) {
                Some(&t) => Some(t),
                None => self
                    .conn
                    .query_row(
                        "SELECT json_extract(status_json, '$.at') FROM agents WHERE site = ?1 AND agent = ?2",
                        params![status.site, status.agent],
                        |r| r.get::<_, Option<i64>>(0),
                    )
                    .optional()?
                    .flatten(),
            };
            if newest.is_some_and(|t| at <= t) {
                tracing::debug!(site = %status.site, agent = %status.agent, at, "status not newer than the last one: ignored as a replay");
                return Ok(());
            }
        }
        let state = serde_json::to_value(status.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let json = String::from_utf8_lossy(&status.to_json()).into_owned();
        self.conn.execute(
            "INSERT INTO agents (site, agent, state, status_json, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (site, agent) DO UPDATE SET state = excluded.state,
                 status_json = excluded.status_json, updated_at = excluded.updated_at",
            params![status.site, status.agent, state, json, now_ms],
        )?;
        if let Some(at) = status.at {
            self.status_at
                .insert((status.site.clone(), status.agent.clone()), at);
        }
        Ok(())
    }
}

/// Where the round of slices stands.
struct Slices<'a> {
    staged: &'a VecDeque<(i64, usize)>,
    next: usize,
    /// Move every slice (ingest is idle).
    all: bool,
    /// When (for the catalogue's `last_seen`).
    now_ms: i64,
}

/// Moves slices of pending readings, and `fresh`'s readings of those
/// slices, into samples: one slice per transaction, more while too many
/// wait (or all). Deletes the staging rows whose readings are all in
/// samples then. Returns the staging bookkeeping and the next slice, to
/// keep once the transaction commits.
fn move_slices(
    tx: &rusqlite::Transaction<'_>,
    dirty: &mut rollup::Dirty,
    pending: &SharedPending,
    round: Slices<'_>,
    fresh: &mut Vec<(i64, Sample)>,
    staged_id: Option<i64>,
    stats: &mut WriteStats,
) -> Result<(VecDeque<(i64, usize)>, usize), StoreError> {
    let lock = || pending::write(pending);
    let mut staged = round.staged.clone();
    if let Some(id) = staged_id {
        staged.push_back((id, SLICES));
    }
    let mut k = round.next;
    let mut moved = 0;
    loop {
        let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(fresh)
            .into_iter()
            .partition(|r| pending::slice_of(r.0) == k);
        *fresh = rest;
        {
            // Inserted by reference, not copied: only this thread changes
            // pending readings, and readers only read them meanwhile.
            let p = pending::read(pending);
            let mut readings: Vec<(i64, &Sample)> = p
                .slice(k)
                .iter()
                .flat_map(|(id, v)| v.iter().map(move |s| (*id, s)))
                .chain(mine.iter().map(|(id, s)| (*id, s)))
                .collect();
            insert_samples(tx, dirty, &mut readings, round.now_ms, stats)?;
        }
        lock().start_moving(k);
        for s in staged.iter_mut() {
            s.1 = s.1.saturating_sub(1);
        }
        k = (k + 1) % SLICES;
        moved += 1;
        let waiting = pending::read(pending).waiting() + fresh.len();
        let more = moved < SLICES && (round.all || waiting > pending::MAX_PENDING);
        if !more {
            break;
        }
    }
    let mut done = None;
    while staged.front().is_some_and(|s| s.1 == 0) {
        done = staged.pop_front().map(|s| s.0);
    }
    if let Some(id) = done {
        tx.execute("DELETE FROM staging WHERE id <= ?1", [id])?;
    }
    Ok((staged, k))
}

/// Inserts readings into samples in key order (older arrivals first among
/// equal keys, so the first stored wins) and marks their minutes for rollup.
fn insert_samples(
    tx: &rusqlite::Transaction<'_>,
    dirty: &mut rollup::Dirty,
    readings: &mut [(i64, &Sample)],
    now_ms: i64,
    stats: &mut WriteStats,
) -> Result<(), StoreError> {
    // Stable: equal keys keep arrival order.
    readings.sort_by_key(|(p, s)| (*p, s.ts));
    let mut insert = tx.prepare_cached(
        "INSERT OR IGNORE INTO samples (point_id, ts, value, text, bad) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    // The catalogue's latest value moves with the samples: updating it at
    // every commit wrote every point's catalogue row each time. Readers add
    // what is still pending (`SqliteReader::latest`).
    let mut latest = tx.prepare_cached(
        "UPDATE points SET last_ts = ?2, last_value = ?3, last_text = ?4, last_bad = ?5, last_seen = ?6
         WHERE id = ?1 AND (last_ts IS NULL OR last_ts <= ?2)",
    )?;
    for (k, (id, s)) in readings.iter().enumerate() {
        let (text, bad) = (s.text.as_deref(), s.bad.as_deref());
        if insert.execute(params![id, s.ts, s.value, text, bad])? == 0 {
            stats.duplicates += 1;
        } else if s.good_value().is_some() {
            dirty.mark(tx, *id, s.ts)?;
        }
        // The point's newest reading (the last to arrive, of equal times).
        if readings.get(k + 1).is_none_or(|next| next.0 != *id) {
            latest.execute(params![id, s.ts, s.value, text, bad, now_ms])?;
        }
    }
    Ok(())
}

/// Whether the batch stored under `batch`'s number is this very batch.
fn same_batch_stored(tx: &rusqlite::Transaction<'_>, batch: &Batch) -> Result<bool, StoreError> {
    let stored: Option<(String, i64)> = tx
        .prepare_cached(
            "SELECT device, polled_at FROM batches WHERE site = ?1 AND agent = ?2 AND seq = ?3",
        )?
        .query_row(params![batch.site, batch.agent, batch.seq as i64], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    Ok(stored
        .is_some_and(|(device, polled_at)| device == batch.device && polled_at == batch.polled_at))
}

/// Where a batch came from.
struct Source<'a> {
    site: &'a str,
    agent: &'a str,
    device: &'a str,
}

/// Records what a point is (from a batch's point descriptions), when that
/// differs from what the catalogue holds.
fn describe_point(
    tx: &rusqlite::Transaction<'_>,
    cache: &mut PointCache,
    src: &Source<'_>,
    m: &roomguard_protocol::PointMeta,
    now_ms: i64,
) -> Result<(), StoreError> {
    // The common case, an unchanged description, allocates nothing.
    if let Some(c) = cache.get(src.site).and_then(|points| points.get(&*m.id)) {
        if c.agent == src.agent
            && c.device == src.device
            && c.room == *m.room
            && c.quantity == *m.quantity
            && c.unit == *m.unit
        {
            return Ok(());
        }
    }
    tx.prepare_cached(
        "INSERT INTO points (site, point, agent, room, device, quantity, unit, first_seen, last_seen)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)
         ON CONFLICT (site, point) DO UPDATE SET agent = excluded.agent, room = excluded.room,
             device = excluded.device, quantity = excluded.quantity, unit = excluded.unit",
    )?
    .execute(params![src.site, &*m.id, src.agent, &*m.room, src.device, &*m.quantity, &*m.unit, now_ms])?;
    let id: i64 = tx
        .prepare_cached("SELECT id FROM points WHERE site = ?1 AND point = ?2")?
        .query_row(params![src.site, &*m.id], |row| row.get(0))?;
    cache.entry(src.site.to_owned()).or_default().insert(
        m.id.to_string(),
        PointMeta {
            id,
            agent: src.agent.to_owned(),
            room: m.room.to_string(),
            device: src.device.to_owned(),
            quantity: m.quantity.to_string(),
            unit: m.unit.to_string(),
        },
    );
    Ok(())
}

/// The catalogue id of a reading's point. A point never described yet (a
/// collector that started after the agent last sent descriptions) gets an
/// entry with empty labels, filled in when its description arrives.
fn point_id(
    tx: &rusqlite::Transaction<'_>,
    cache: &mut PointCache,
    src: &Source<'_>,
    point: &str,
    now_ms: i64,
) -> Result<i64, StoreError> {
    if let Some(c) = cache.get(src.site).and_then(|points| points.get(point)) {
        return Ok(c.id);
    }
    let known = tx
        .prepare_cached("SELECT id, agent, room, device, quantity, unit FROM points WHERE site = ?1 AND point = ?2")?
        .query_row(params![src.site, point], |row| {
            Ok(PointMeta {
                id: row.get(0)?,
                agent: row.get(1)?,
                room: row.get(2)?,
                device: row.get(3)?,
                quantity: row.get(4)?,
                unit: row.get(5)?,
            })
        })
        .optional()?;
    let meta = match known {
        Some(meta) => meta,
        None => {
            tx.prepare_cached(
                "INSERT INTO points (site, point, agent, room, device, quantity, unit, first_seen, last_seen)
                 VALUES (?1, ?2, ?3, '', ?4, '', '', ?5, ?5)",
            )?
            .execute(params![src.site, point, src.agent, src.device, now_ms])?;
            PointMeta {
                id: tx.last_insert_rowid(),
                agent: src.agent.to_owned(),
                room: String::new(),
                device: src.device.to_owned(),
                quantity: String::new(),
                unit: String::new(),
            }
        }
    };
    let id = meta.id;
    cache
        .entry(src.site.to_owned())
        .or_default()
        .insert(point.to_owned(), meta);
    Ok(id)
}

/// A second connection to the store the writer created, used by one thread.
fn open_existing(path: &Path, mode: OpenFlags) -> Result<Connection, StoreError> {
    let conn =
        Connection::open_with_flags(path, mode | OpenFlags::SQLITE_OPEN_NO_MUTEX).map_err(|e| {
            StoreError::Open {
                path: path.to_owned(),
                message: e.to_string(),
            }
        })?;
    apply_pragmas(&conn)?;
    Ok(conn)
}

/// Checks the store file at `path` to the end, on a read-only connection of
/// its own (beside a running writer: WAL readers do not block it).
pub fn check_file(path: &Path) -> Result<Check, StoreError> {
    let conn = open_existing(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    Ok(quick_check(&conn, None)?)
}

/// Copies committed pages from the WAL into the database file beside the
/// writer: a PASSIVE checkpoint neither waits for nor blocks the writer or
/// any reader, and the writer resets the WAL once it has all been copied.
pub struct Checkpointer {
    conn: Connection,
}

impl Checkpointer {
    pub fn open(path: &Path) -> Result<Checkpointer, StoreError> {
        Ok(Checkpointer {
            conn: open_existing(path, OpenFlags::SQLITE_OPEN_READ_WRITE)?,
        })
    }

    /// One checkpoint; returns the pages in the WAL and how many of them
    /// are now in the database file.
    pub fn run(&self) -> Result<(i64, i64), StoreError> {
        Ok(self
            .conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get(1)?, r.get(2)?))
            })?)
    }
}

/// A point's latest value as the catalogue has it (none yet: no time).
struct CatalogueRow {
    ts: Option<i64>,
    row: LatestRow,
}

impl CatalogueRow {
    fn into_row(self) -> Option<LatestRow> {
        Some(LatestRow {
            ts: self.ts?,
            ..self.row
        })
    }
}

/// A read-only view for API requests. Cheap to open; one per request.
pub struct SqliteReader {
    pub(super) conn: Connection,
    /// Readings the writer (in this process) has not moved into samples yet.
    pub(super) pending: Option<SharedPending>,
}

impl SqliteReader {
    /// The read-only connection, for queries of other modules (reports).
    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    pub fn open(path: &Path) -> Result<SqliteReader, StoreError> {
        Ok(SqliteReader {
            conn: open_existing(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?,
            pending: pending::lookup(path),
        })
    }

    /// The latest reading of every point, optionally of one site or room.
    pub fn latest(
        &self,
        site: Option<&str>,
        room: Option<&str>,
    ) -> Result<Vec<LatestRow>, StoreError> {
        let moves = || self.pending.as_ref().map(|p| pending::read(p).moves());
        // A reading that moves from pending into the catalogue between the
        // query and the overlay would be in neither: then read again.
        let mut attempt = 0;
        loop {
            let before = moves();
            let rows = self.latest_in_catalogue(site, room)?;
            attempt += 1;
            let Some(p) = &self.pending else {
                return Ok(rows.into_iter().filter_map(|(_, r)| r.into_row()).collect());
            };
            let p = pending::read(p);
            if Some(p.moves()) != before && attempt < 3 {
                continue;
            }
            return Ok(rows
                .into_iter()
                .filter_map(|(id, mut r)| {
                    // A newer reading waiting replaces the catalogue's.
                    if let Some(s) = p.newest(id).filter(|s| r.ts.is_none_or(|t| s.ts >= t)) {
                        r.ts = Some(s.ts);
                        r.row.value = s.value;
                        r.row.text = s.text.as_deref().map(str::to_owned);
                        r.row.bad = s.bad.as_deref().map(str::to_owned);
                    }
                    r.into_row()
                })
                .collect());
        }
    }

    /// Every point's catalogue row (its latest value as far as samples go).
    fn latest_in_catalogue(
        &self,
        site: Option<&str>,
        room: Option<&str>,
    ) -> Result<Vec<(i64, CatalogueRow)>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT site, point, agent, room, device, quantity, unit, last_ts, last_value, last_bad, last_text, id
             FROM points
             WHERE (?1 IS NULL OR site = ?1) AND (?2 IS NULL OR room = ?2)
             ORDER BY site, room, device, point",
        )?;
        let rows = stmt.query_map(params![site, room], |row| {
            Ok((
                row.get(11)?,
                CatalogueRow {
                    ts: row.get(7)?,
                    row: LatestRow {
                        site: row.get(0)?,
                        point: row.get(1)?,
                        agent: row.get(2)?,
                        room: row.get(3)?,
                        device: row.get(4)?,
                        quantity: row.get(5)?,
                        unit: row.get(6)?,
                        ts: 0,
                        value: row.get(8)?,
                        bad: row.get(9)?,
                        text: row.get(10)?,
                    },
                },
            ))
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Every agent's last status, as it sent it, with when it arrived.
    pub fn agents(&self) -> Result<Vec<AgentRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT site, agent, state, status_json, updated_at FROM agents ORDER BY site, agent",
        )?;
        let rows = stmt.query_map([], |row| {
            let json: String = row.get(3)?;
            Ok(AgentRow {
                site: row.get(0)?,
                agent: row.get(1)?,
                state: row.get(2)?,
                status: serde_json::from_str(&json).unwrap_or(serde_json::Value::Null),
                updated_at: row.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Number of stored samples (for health and tests).
    pub fn sample_count(&self) -> Result<i64, StoreError> {
        let waiting = self
            .pending
            .as_ref()
            .map_or(0, |p| pending::read(p).len() as i64);
        let stored: i64 = self
            .conn
            .query_row("SELECT count(*) FROM samples", [], |r| r.get(0))
            .optional()?
            .unwrap_or(0);
        Ok(stored + waiting)
    }

    /// `point`'s readings not yet in samples, `from <= ts < to`, in time order.
    /// Taken before samples are read: a reading leaves `pending` only once it
    /// is committed to samples, so read in this order none is missed (and
    /// one in both is merged away).
    pub(super) fn pending_range(&self, point: i64, from: i64, to: i64) -> Vec<Sample> {
        self.pending
            .as_ref()
            .map_or_else(Vec::new, |p| pending::read(p).range(point, from, to))
    }
}

/// Copies the store at `src` to a new file `dest` while it may be written:
/// SQLite's online backup, a consistent snapshot taken in steps so the
/// writer is never held for long. `progress(done, total)` after each step.
pub fn backup(
    src: &Path,
    dest: &Path,
    mut progress: impl FnMut(i32, i32),
) -> Result<(), StoreError> {
    if dest.exists() {
        return Err(StoreError::Open {
            path: dest.to_owned(),
            message: "already exists; a backup never overwrites a file".into(),
        });
    }
    let open_err = |path: &Path| {
        let path = path.to_owned();
        move |e: rusqlite::Error| StoreError::Open {
            path,
            message: e.to_string(),
        }
    };
    let from = Connection::open_with_flags(src, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(open_err(src))?;
    apply_pragmas(&from)?;
    let mut to = Connection::open(dest).map_err(open_err(dest))?;
    let backup = rusqlite::backup::Backup::new(&from, &mut to)?;
    loop {
        // 1,000 pages (4 MB) a step, then a pause for the writer.
        let step = backup.step(1000)?;
        let p = backup.progress();
        progress(p.pagecount - p.remaining, p.pagecount);
        match step {
            rusqlite::backup::StepResult::Done => break,
            _ => std::thread::sleep(std::time::Duration::from_millis(5)),
        }
    }
    drop(backup);
    drop(to);
    // Readings still in staging go into the copy's samples and rollups, so
    // whatever reads the archive (a report, sqlite3) finds every reading.
    let settle = || -> Result<(), StoreError> {
        let mut copy = SqliteWriter::open(dest)?;
        while rollup::step(
            &mut copy.conn,
            &mut copy.dirty,
            roomguard_protocol::clock::now_ms(),
            ROLLUP_STEP,
        )? > 0
        {}
        Ok(())
    };
    settle().inspect_err(|_| {
        // No half-made archive left behind to be mistaken for a good one.
        let _ = std::fs::remove_file(dest);
        let _ = std::fs::remove_file(format!("{}-wal", dest.display()));
    })
}

/// Whether the store has table `name` (the alarm tables exist only with
/// alarms on).
pub(crate) fn table_exists(c: &Connection, name: &str) -> Result<bool, rusqlite::Error> {
    c.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)",
        [name],
        |r| r.get(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use roomguard_protocol::{PointMeta, Reading, PROTOCOL_VERSION};

    fn batch(seq: u64, ts: i64, value: f64) -> Batch {
        Batch {
            v: PROTOCOL_VERSION,
            site: "s".into(),
            agent: "a".into(),
            seq,
            device: "d".into(),
            polled_at: ts,
            backfill: false,
            points: vec![
                PointMeta {
                    id: "d.t".into(),
                    room: "r".into(),
                    quantity: "temperature".into(),
                    unit: "°C".into(),
                },
                PointMeta {
                    id: "d.h".into(),
                    room: "r".into(),
                    quantity: "humidity".into(),
                    unit: "%RH".into(),
                },
            ],
            readings: vec![
                Reading {
                    point: "d.t".into(),
                    value: Some(value),
                    text: None,
                    ts,
                    quality: Quality::Good,
                },
                Reading {
                    point: "d.h".into(),
                    value: None,
                    text: None,
                    ts,
                    quality: Quality::Bad("timeout".into()),
                },
            ],
        }
    }

    #[test]
    fn a_replayed_older_status_is_ignored_so_a_dead_agent_cannot_be_shown_online() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let online = |at| Status {
            at: Some(at),
            state: roomguard_protocol::AgentState::Online,
            ..Status::offline("s", "a")
        };
        let state = || {
            SqliteReader::open(&path).unwrap().agents().unwrap()[0]
                .state
                .clone()
        };
        let mut w = SqliteWriter::open(&path).unwrap();
        w.write_status(&online(1_000), 0).unwrap();
        w.write_status(&Status::offline("s", "a"), 0).unwrap();
        assert_eq!(state(), "offline");
        w.write_status(&online(1_000), 0).unwrap();
        assert_eq!(state(), "offline", "a replay of the old status");
        w.write_status(&online(2_000), 0).unwrap();
        assert_eq!(state(), "online");
        drop(w);
        // After a restart the newest time comes from the stored status.
        let mut w = SqliteWriter::open(&path).unwrap();
        w.write_status(&online(1_500), 0).unwrap();
        let row = &SqliteReader::open(&path).unwrap().agents().unwrap()[0];
        assert_eq!(row.status["at"], 2_000);
    }

    #[test]
    fn latest_is_the_newest_by_event_time_even_when_older_data_arrives_later() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let mut w = SqliteWriter::open(&path).unwrap();
        w.write_batches(&[batch(2, 2_000_000_000_000, 25.0)], 0)
            .unwrap();
        w.write_batches(&[batch(1, 1_999_999_999_000, 21.0)], 0)
            .unwrap();
        let r = SqliteReader::open(&path).unwrap();
        let latest = r.latest(None, None).unwrap();
        let t = latest.iter().find(|l| l.point == "d.t").unwrap();
        assert_eq!((t.ts, t.value), (2_000_000_000_000, Some(25.0)));
        let h = latest.iter().find(|l| l.point == "d.h").unwrap();
        assert_eq!((h.value, h.bad.as_deref()), (None, Some("timeout")));
        assert_eq!(r.sample_count().unwrap(), 4);
    }

    fn samples_in_btree(path: &Path) -> i64 {
        let c = Connection::open(path).unwrap();
        c.query_row("SELECT count(*) FROM samples", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn readings_waiting_in_staging_are_seen_by_history_and_survive_a_crash() {
        use crate::store::history::{Plan, Series, Tier};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let mut w = SqliteWriter::open(&path).unwrap();
        let t = 2_000_000_000_000;
        // Three transactions, each moving one of the sixteen slices: the
        // temperature point's last reading still waits.
        for seq in 1..=3 {
            w.write_batches(&[batch(seq, t + seq as i64 * 1000, 20.0 + seq as f64)], 0)
                .unwrap();
        }
        let waiting = 6 - samples_in_btree(&path);
        assert!(waiting > 0, "some readings wait in staging");
        let r = SqliteReader::open(&path).unwrap();
        assert_eq!(r.sample_count().unwrap(), 6);
        let id = r.points_named(None, "d.t").unwrap()[0].id;
        let raw = Plan {
            from: t,
            to: t + 10_000,
            tier: Tier::Raw,
            step: None,
        };
        let Series::Raw(samples) = r.history(id, &raw).unwrap() else {
            panic!("raw")
        };
        let values: Vec<Option<f64>> = samples.iter().map(|s| s.value).collect();
        assert_eq!(values, vec![Some(21.0), Some(22.0), Some(23.0)]);
        let latest = r.latest(None, None).unwrap();
        let t_latest = latest.iter().find(|l| l.point == "d.t").unwrap();
        assert_eq!((t_latest.ts, t_latest.value), (t + 3000, Some(23.0)));
        // An online backup holds them in its samples.
        let copy = dir.path().join("copy.sqlite");
        backup(&path, &copy, |_, _| {}).unwrap();
        assert_eq!(samples_in_btree(&copy), 6);
        // Killed: the writer never stops cleanly, nothing is moved.
        std::mem::forget(w);
        let _w = SqliteWriter::open(&path).unwrap();
        assert_eq!(samples_in_btree(&path), 6, "replayed from staging at open");
        let staged: i64 = Connection::open(&path)
            .unwrap()
            .query_row("SELECT count(*) FROM staging", [], |r| r.get(0))
            .unwrap();
        assert_eq!(staged, 0);
    }

    #[test]
    fn the_same_reading_twice_is_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let mut w = SqliteWriter::open(&path).unwrap();
        let s1 = w
            .write_batches(&[batch(1, 2_000_000_000_000, 25.0)], 0)
            .unwrap();
        let s2 = w
            .write_batches(&[batch(1, 2_000_000_000_000, 25.0)], 0)
            .unwrap();
        assert_eq!((s1.readings, s1.duplicates), (2, 0));
        assert_eq!((s2.readings, s2.duplicates), (0, 2));
        assert_eq!(s2.duplicate_batches, 1, "recognised by agent and sequence");
        // The same readings under another number are still stored once: they
        // are found to be repeats when they move from staging into samples.
        let s3 = w
            .write_batches(&[batch(9, 2_000_000_000_000, 25.0)], 0)
            .unwrap();
        assert_eq!(s3.duplicate_batches, 0);
        let m = w.maintain(0).unwrap();
        assert_eq!(s3.duplicates + m.duplicates, 2);
        let r = SqliteReader::open(&path).unwrap();
        assert_eq!(r.sample_count().unwrap(), 2);
    }

    #[test]
    fn a_reused_sequence_number_with_new_readings_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SqliteWriter::open(&dir.path().join("db.sqlite")).unwrap();
        w.write_batches(&[batch(1, 2_000_000_000_000, 25.0)], 0)
            .unwrap();
        // The agent's state was wiped: it counts from 1 again.
        let s = w
            .write_batches(&[batch(1, 2_000_000_100_000, 26.0)], 0)
            .unwrap();
        assert_eq!((s.readings, s.duplicate_batches), (2, 0));
    }

    #[test]
    fn a_point_moved_to_another_room_is_updated_in_the_catalogue() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let mut w = SqliteWriter::open(&path).unwrap();
        w.write_batches(&[batch(1, 2_000_000_000_000, 25.0)], 0)
            .unwrap();
        let mut b = batch(2, 2_000_000_001_000, 26.0);
        b.points[0].room = "r2".into();
        w.write_batches(&[b], 0).unwrap();
        let r = SqliteReader::open(&path).unwrap();
        assert_eq!(r.latest(None, Some("r2")).unwrap().len(), 1);
    }
}

#[cfg(test)]
mod description_tests {
    use super::*;
    use roomguard_protocol::{PointMeta as Meta, Reading, PROTOCOL_VERSION};

    #[test]
    fn readings_before_their_description_are_kept_and_labelled_when_it_arrives() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let mut w = SqliteWriter::open(&path).unwrap();
        let reading = |ts| Reading {
            point: "d.t".into(),
            value: Some(20.0),
            text: None,
            ts,
            quality: Quality::Good,
        };
        let mut b = Batch {
            v: PROTOCOL_VERSION,
            site: "s".into(),
            agent: "a".into(),
            seq: 1,
            device: "d".into(),
            polled_at: 2_000_000_000_000,
            backfill: false,
            points: vec![],
            readings: vec![reading(2_000_000_000_000)],
        };
        w.write_batches(std::slice::from_ref(&b), 0).unwrap();
        let r = SqliteReader::open(&path).unwrap();
        let row = r.latest(None, None).unwrap().remove(0);
        assert_eq!(
            (row.room.as_str(), row.device.as_str(), row.value),
            ("", "d", Some(20.0))
        );

        b.seq = 2;
        b.readings = vec![reading(2_000_000_001_000)];
        b.points = vec![Meta {
            id: "d.t".into(),
            room: "battery-room".into(),
            quantity: "temperature".into(),
            unit: "°C".into(),
        }];
        w.write_batches(&[b], 0).unwrap();
        let row = r.latest(None, None).unwrap().remove(0);
        assert_eq!(
            (row.room.as_str(), row.quantity.as_str()),
            ("battery-room", "temperature")
        );
        assert_eq!(r.sample_count().unwrap(), 2);
    }
}
