//! The store's interface to the rest of the collector: one enum over the two
//! backends for the writer thread ([`Writer`]) and one for the API's reads
//! ([`Reads`]). An enum rather than traits: there are exactly two backends,
//! one blocking (SQLite on its own thread) and one async (tokio-postgres),
//! and a trait object would have to hide that difference behind boxed
//! futures in every method; a `match` keeps each side in its own idiom.

use super::alarms::{AlarmSetup, Recorder, SWEEP_EVERY};
use super::history::{Plan, PointFilter, PointRow, Series};
use super::postgres::reader::PgReader;
use super::postgres::writer::PgWriter;
use super::postgres::{maintain, PgError, Target};
use super::retention::Policy;
use super::sql::{Conn, Db, SqlError};
use super::sqlite::{Maintained, SqliteReader, SqliteWriter};
use super::{AgentRow, LatestRow, StoreError, WriteStats};
use roomguard_protocol::{Batch, Status};
use std::path::PathBuf;
use std::sync::Arc;

/// The writer thread's store.
// One per process, moved once into its thread: the variants' sizes do not
// matter, and boxing would only add a pointer to every write.
#[allow(clippy::large_enum_variant)]
pub enum Writer {
    Sqlite(SqliteWriter),
    Postgres(PgWriting),
}

impl Writer {
    pub fn write_batches(
        &mut self,
        batches: &[Batch],
        now_ms: i64,
    ) -> Result<WriteStats, StoreError> {
        match self {
            Writer::Sqlite(w) => w.write_batches(batches, now_ms),
            // A cluster's writer may take batches out: it needs its own list.
            Writer::Postgres(p) => p.write_batches(&mut batches.to_vec(), now_ms),
        }
    }

    /// Stores `batches` in one transaction. In a cluster, those of sites
    /// whose partitions this node does not hold are taken out first (the
    /// caller confirms only what is left).
    pub fn write_held(
        &mut self,
        batches: &mut Vec<Batch>,
        now_ms: i64,
    ) -> Result<WriteStats, StoreError> {
        match self {
            Writer::Sqlite(w) => w.write_batches(batches, now_ms),
            Writer::Postgres(p) => p.write_batches(batches, now_ms),
        }
    }

    pub fn write_status(&mut self, status: &Status, now_ms: i64) -> Result<(), StoreError> {
        match self {
            Writer::Sqlite(w) => w.write_status(status, now_ms),
            Writer::Postgres(p) => {
                // Every node hears every status; the holder records it.
                p.refresh_fence();
                if p.fence
                    .as_ref()
                    .is_some_and(|f| !f.holds_site(&status.site))
                {
                    return Ok(());
                }
                p.run(async |w, _, _| w.write_status(status, now_ms).await)
            }
        }
    }

    /// A step of background work: rollups of the minutes ingest marked, and
    /// (on PostgreSQL once a minute) retention.
    pub fn maintain(&mut self, now_ms: i64) -> Result<Maintained, StoreError> {
        match self {
            Writer::Sqlite(w) => w.maintain(now_ms),
            Writer::Postgres(p) => p.maintain(now_ms),
        }
    }

    /// At a clean stop: what waits in memory goes where readers look
    /// (SQLite: into samples; PostgreSQL: the newest readings into the
    /// catalogue).
    pub fn move_pending(&mut self) -> Result<u64, StoreError> {
        match self {
            Writer::Sqlite(w) => w.move_pending(),
            // The newest readings still waiting for the catalogue.
            Writer::Postgres(p) => {
                let now = roomguard_protocol::clock::now_ms();
                p.run(async |w, _, _| w.flush_latest(now).await).map(|()| 0)
            }
        }
    }

    /// Alarm transitions committed since the last call (raised, cleared).
    pub fn take_alarm_counts(&mut self) -> (u64, u64) {
        match self {
            Writer::Sqlite(w) => w.take_alarm_counts(),
            Writer::Postgres(p) => p.alarms.rec.as_mut().map_or((0, 0), Recorder::take_counts),
        }
    }

    /// Notifications queued since the last call.
    pub fn take_notifications(&mut self) -> usize {
        match self {
            Writer::Sqlite(w) => w.take_notifications(),
            Writer::Postgres(p) => p.alarms.rec.as_mut().map_or(0, Recorder::take_queued),
        }
    }

    /// Turns the alarm engine on; its state is loaded from the store
    /// (on PostgreSQL at the first connection, which may come later).
    pub fn with_alarms(self, setup: AlarmSetup, now_ms: i64) -> Result<Writer, StoreError> {
        Ok(match self {
            Writer::Sqlite(w) => Writer::Sqlite(w.with_alarms(setup, now_ms)?),
            Writer::Postgres(mut p) => {
                p.alarms.setup = Some(setup);
                p.alarms.first_at = Some(now_ms);
                Writer::Postgres(p)
            }
        })
    }
}

/// The alarm engine of the PostgreSQL writer.
#[derive(Default)]
pub struct PgAlarms {
    setup: Option<AlarmSetup>,
    /// Loaded from the database at the first connection, and again after
    /// a failed write (the engine ran ahead of what was committed).
    rec: Option<Recorder>,
    stale: bool,
    /// The engine's time at its first load (as SQLite's is loaded at
    /// `with_alarms`); later loads take the clock's.
    first_at: Option<i64>,
    /// Maintenance calls since the last sweep.
    since_sweep: u32,
}

impl PgAlarms {
    fn recorder(&mut self) -> Option<&mut Recorder> {
        self.rec.as_mut()
    }

    /// Loads the engine when it is on and not (or no longer) current; in a
    /// cluster, with the sites of the partitions held.
    async fn load(
        &mut self,
        client: &tokio_postgres::Client,
        fence: Option<&Fence>,
    ) -> Result<(), PgError> {
        let Some(setup) = self.setup.clone() else {
            return Ok(());
        };
        if self.rec.is_some() && !self.stale {
            return Ok(());
        }
        let now = self
            .first_at
            .unwrap_or_else(roomguard_protocol::clock::now_ms);
        let ours = |site: &str| fence.is_none_or(|f| f.holds_site(site));
        self.rec = Some(
            Recorder::load(
                Conn::Pg(client),
                setup.rules,
                setup.routes,
                setup.escalation,
                now,
                Some(&ours),
            )
            .await?,
        );
        if let Some(f) = fence {
            tracing::info!(
                partitions = f.held.parts.keys().filter(|p| **p >= 0).count(),
                "alarm engine loaded for the sites of the partitions held"
            );
        }
        self.stale = false;
        self.first_at = None;
        Ok(())
    }

    /// Timers of the engine and, every few calls, held notifications and
    /// escalation; in a transaction of their own.
    /// In a cluster the engine's transitions are fenced by the leases it
    /// was loaded with, and the sweep (repeats, escalation, held
    /// notifications of every site) is done by the maintenance lease's
    /// holder only.
    async fn tick(
        &mut self,
        client: &mut tokio_postgres::Client,
        now_ms: i64,
        fence: Option<&Fence>,
    ) -> Result<(), PgError> {
        let Some(rec) = self.rec.as_mut() else {
            return Ok(());
        };
        let mut out = Vec::new();
        rec.engine.tick(now_ms, &mut out);
        self.since_sweep += 1;
        let sweep = self.since_sweep >= SWEEP_EVERY
            && fence.is_none_or(|f| f.held.holds(crate::cluster::MAINTENANCE));
        if out.is_empty() && !sweep {
            return Ok(());
        }
        let tx = client.transaction().await?;
        rec.record(Conn::PgTx(&tx), &out, now_ms).await?;
        if sweep {
            self.since_sweep = 0;
            rec.sweep(Conn::PgTx(&tx), now_ms).await?;
        }
        if let Some(f) = fence {
            let mut parts = f.site_parts();
            if sweep {
                parts.push(crate::cluster::MAINTENANCE);
            }
            crate::cluster::lease::check(&tx, &f.cluster.node, &f.held, &parts).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// The cluster's leases as the writer last took them: it writes for these
/// partitions only, and every commit checks them (docs/SCALING.md).
#[derive(Clone)]
pub struct Fence {
    pub cluster: Arc<crate::cluster::Cluster>,
    pub held: Arc<crate::cluster::Held>,
}

impl Fence {
    pub fn holds_site(&self, site: &str) -> bool {
        self.held.holds(self.cluster.part_of(site))
    }

    /// The site partitions held (not the maintenance lease).
    pub fn site_parts(&self) -> Vec<i32> {
        self.held
            .parts
            .keys()
            .copied()
            .filter(|p| *p >= 0)
            .collect()
    }
}

/// PostgreSQL on the writer thread: a runtime of its own (the thread
/// blocks, as it does for SQLite), and a connection made when first needed
/// and made again after it broke. Until PostgreSQL answers, every write
/// fails with the reason, so nothing is acknowledged and `/healthz` says why.
pub struct PgWriting {
    target: Target,
    retention: Policy,
    /// Made on the writer thread at its first write: a runtime must not be
    /// dropped inside the async code that sets the writer up.
    rt: Option<tokio::runtime::Runtime>,
    writer: Option<PgWriter>,
    /// The newest readings a broken connection's writer still held for the
    /// catalogue, for the next writer.
    carried: std::collections::HashMap<i64, super::postgres::writer::Latest>,
    /// When retention last ran, ms.
    retained_at: i64,
    alarms: PgAlarms,
    /// In a cluster: the leases writes are for.
    fence: Option<Fence>,
}

/// Rollup minutes recomputed per maintenance step.
const ROLLUP_STEP: i64 = 2_000;

/// How often retention looks for day partitions to drop, ms.
const RETENTION_EVERY_MS: i64 = 60_000;

impl PgWriting {
    pub fn new(target: Target, retention: Policy) -> PgWriting {
        PgWriting {
            target,
            retention,
            rt: None,
            writer: None,
            carried: Default::default(),
            retained_at: 0,
            alarms: PgAlarms::default(),
            fence: None,
        }
    }

    /// Writes only for the partitions `cluster` holds, each commit fenced.
    pub fn in_cluster(mut self, cluster: Arc<crate::cluster::Cluster>) -> PgWriting {
        let held = cluster.held();
        self.fence = Some(Fence { cluster, held });
        self
    }

    /// Takes the cluster's leases anew when they changed since; the engine
    /// is then loaded again when its site partitions (or their epochs)
    /// changed, not for the maintenance lease alone: a load restarts the
    /// engine's silence timing.
    fn refresh_fence(&mut self) {
        if let Some(f) = &mut self.fence {
            if f.cluster.version() != f.held.version {
                let now = f.cluster.held();
                let sites = |h: &crate::cluster::Held| {
                    let mut v: Vec<(i32, i64)> = h
                        .parts
                        .iter()
                        .filter(|(p, _)| **p >= 0)
                        .map(|(p, e)| (*p, *e))
                        .collect();
                    v.sort_unstable();
                    v
                };
                if sites(&now) != sites(&f.held) {
                    self.alarms.stale = true;
                }
                f.held = now;
            }
        }
    }

    fn write_batches(
        &mut self,
        batches: &mut Vec<Batch>,
        now_ms: i64,
    ) -> Result<WriteStats, StoreError> {
        loop {
            self.refresh_fence();
            if let Some(f) = &self.fence {
                let before = batches.len();
                batches.retain(|b| f.holds_site(&b.site));
                let dropped = (before - batches.len()) as u64;
                if dropped > 0 {
                    f.cluster
                        .counts
                        .not_ours
                        .fetch_add(dropped, std::sync::atomic::Ordering::Relaxed);
                    tracing::debug!(
                        dropped,
                        "batches of sites held by other nodes: not stored, not confirmed"
                    );
                }
            }
            if batches.is_empty() {
                return Ok(WriteStats::default());
            }
            let result = self.run(async |w, alarms, fence| {
                w.write_fenced(batches, now_ms, alarms.recorder(), fence)
                    .await
            });
            match result {
                // Rolled back: what is left of the round is written at once.
                Err(StoreError::Postgres(PgError::Fenced(lost))) => {
                    if let Some(f) = &self.fence {
                        f.cluster.lost(&lost, &f.held);
                    }
                }
                other => return other,
            }
        }
    }

    /// Runs `f` on the connection, connecting (and migrating the schema)
    /// first when there is none; a connection that broke is dropped so the
    /// next call makes a new one.
    fn run<T>(
        &mut self,
        f: impl AsyncFnOnce(&mut PgWriter, &mut PgAlarms, Option<&Fence>) -> Result<T, PgError>,
    ) -> Result<T, StoreError> {
        if self.rt.is_none() {
            self.rt = Some(
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| StoreError::Task(e.to_string()))?,
            );
        }
        self.drop_if_broken();
        self.refresh_fence();
        let fence = self.fence.clone();
        let rt = self.rt.as_ref().expect("made above");
        let target = &self.target;
        let slot = &mut self.writer;
        let carried = &mut self.carried;
        let alarms = &mut self.alarms;
        let result = rt.block_on(async {
            if slot.is_none() {
                let mut w = PgWriter::open(target).await?;
                if let Some(f) = &fence {
                    // A node frozen inside a transaction (its lease rows
                    // locked for the check) delays a takeover by at most
                    // a lease: PostgreSQL ends the session then.
                    let ms = f.cluster.lease.as_millis();
                    w.client()
                        .batch_execute(&format!("SET idle_in_transaction_session_timeout = {ms}"))
                        .await?;
                }
                w.keep_pending_latest(std::mem::take(carried));
                *slot = Some(w);
                tracing::info!("connected to PostgreSQL");
            }
            let w = slot.as_mut().expect("connected above");
            alarms.load(w.client(), fence.as_ref()).await?;
            f(w, alarms, fence.as_ref()).await
        });
        if result.is_err() {
            // The engine may have run ahead of what was committed.
            self.alarms.stale = true;
            self.drop_if_broken();
        }
        result.map_err(StoreError::from)
    }

    /// Lets go of a connection that broke, keeping what its writer held
    /// for the catalogue for the next one.
    fn drop_if_broken(&mut self) {
        if let Some(mut w) = self.writer.take_if(|w| w.client().is_closed()) {
            let pending = w.take_pending_latest();
            super::postgres::writer::merge_latest(&mut self.carried, pending);
        }
    }

    fn maintain(&mut self, now_ms: i64) -> Result<Maintained, StoreError> {
        self.run(async |w, _, _| w.flush_latest(now_ms).await)?;
        match self.run(async |w, alarms, fence| alarms.tick(w.client_mut(), now_ms, fence).await) {
            Err(StoreError::Postgres(PgError::Fenced(lost))) => {
                if let Some(f) = &self.fence {
                    f.cluster.lost(&lost, &f.held);
                }
            }
            other => other?,
        }
        // Rollups and retention are for every site: one node does them.
        if self
            .fence
            .as_ref()
            .is_some_and(|f| !f.held.holds(crate::cluster::MAINTENANCE))
        {
            return Ok(Maintained::default());
        }
        let minutes = self.run(async |w, _, _| {
            maintain::rollup_step(w.client_mut(), now_ms, ROLLUP_STEP).await
        })?;
        let mut expired = 0;
        if now_ms - self.retained_at >= RETENTION_EVERY_MS {
            let policy = self.retention.clone();
            let (dropped, deleted) = self.run(async |w, _, _| {
                let step = maintain::retention_step(w.client_mut(), &policy, now_ms).await?;
                // A late reading for a dropped day makes its partition again.
                if step.0 > 0 {
                    w.forget_partitions();
                }
                Ok(step)
            })?;
            if dropped > 0 {
                tracing::info!(partitions = dropped, "raw samples past retention dropped");
            }
            expired = deleted;
            self.retained_at = now_ms;
        }
        Ok(Maintained {
            minutes,
            expired,
            duplicates: 0,
        })
    }
}

/// The API's reads. SQLite: a fresh read-only connection per request on
/// the blocking pool (WAL readers never wait for the writer). PostgreSQL:
/// a few clients shared by every request in turn (tokio-postgres pipelines
/// a request's queries), each made again when it broke.
#[derive(Clone)]
pub enum Reads {
    Sqlite(PathBuf),
    Postgres(Arc<PgReads>),
}

pub struct PgReads {
    target: Target,
    /// A few connections, taken in turn: one PostgreSQL connection is one
    /// server process, so queries on one client run one after another
    /// however many requests wait.
    clients: Vec<tokio::sync::Mutex<Option<Arc<PgReader>>>>,
    next: std::sync::atomic::AtomicUsize,
    /// The last failed connection: requests within a second of it fail at
    /// once instead of each waiting out its own connect timeout.
    failed: std::sync::Mutex<Option<(std::time::Instant, String)>>,
    /// The schema is known to be this build's (checked at the first
    /// connection, so no read meets a database the writer has not yet
    /// migrated).
    migrated: std::sync::atomic::AtomicBool,
    /// The connection for the record's transactions (acknowledgements,
    /// silences, the outbox): a transaction needs a connection of its own.
    writing: tokio::sync::Mutex<Option<tokio_postgres::Client>>,
}

impl PgReads {
    pub fn new(target: Target) -> PgReads {
        // As many as the cores that render answers, within reason.
        let n = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4));
        PgReads {
            target,
            clients: (0..n).map(|_| tokio::sync::Mutex::new(None)).collect(),
            next: Default::default(),
            failed: Default::default(),
            migrated: Default::default(),
            writing: Default::default(),
        }
    }

    /// The connection for transactions, connected again if it broke;
    /// held by one caller at a time.
    pub async fn writing(
        &self,
    ) -> Result<tokio::sync::MappedMutexGuard<'_, tokio_postgres::Client>, StoreError> {
        let mut slot = self.writing.lock().await;
        if slot.as_ref().is_none_or(|c| c.is_closed()) {
            // Through a reader first: it migrates and fails fast as they do.
            self.reader().await?;
            *slot = Some(super::postgres::connect_to(&self.target).await?);
        }
        Ok(tokio::sync::MutexGuard::map(slot, |c| {
            c.as_mut().expect("connected above")
        }))
    }

    /// The next client in turn, connected again if it broke.
    pub async fn reader(&self) -> Result<Arc<PgReader>, StoreError> {
        use std::sync::atomic::Ordering;
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.clients.len();
        let mut slot = self.clients[i].lock().await;
        if let Some(r) = slot.as_ref().filter(|r| !r.is_closed()) {
            return Ok(r.clone());
        }
        let recent = self.failed.lock().ok().and_then(|f| {
            f.as_ref()
                .filter(|(at, _)| at.elapsed() < std::time::Duration::from_secs(1))
                .map(|(_, why)| why.clone())
        });
        if let Some(why) = recent {
            return Err(super::postgres::PgError::Unreachable {
                target: super::postgres::target(&self.target.config),
                detail: why,
            }
            .into());
        }
        let mut client = match super::postgres::connect_to(&self.target).await {
            Ok(c) => c,
            Err(e @ super::postgres::PgError::Unreachable { .. }) => {
                if let (Ok(mut f), super::postgres::PgError::Unreachable { detail, .. }) =
                    (self.failed.lock(), &e)
                {
                    *f = Some((std::time::Instant::now(), detail.clone()));
                }
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        };
        if !self.migrated.load(Ordering::Acquire) {
            // Under the migration's advisory lock, as the writer's is.
            let db = self.target.config.get_dbname().unwrap_or("");
            super::postgres::migrate::migrate(&mut client, db).await?;
            self.migrated.store(true, Ordering::Release);
        }
        let r = Arc::new(PgReader::new(client));
        *slot = Some(r.clone());
        Ok(r)
    }
}

/// A failure to reach PostgreSQL, as the record's statements report it.
fn sql_error(e: StoreError) -> SqlError {
    match e {
        StoreError::Postgres(p) => SqlError::Postgres(p),
        other => SqlError::Task(other.to_string()),
    }
}

/// Runs a blocking SQLite read on its own connection.
async fn sqlite<T: Send + 'static>(
    path: &std::path::Path,
    query: impl FnOnce(&SqliteReader) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || query(&SqliteReader::open(&path)?))
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
}

impl Reads {
    /// Runs `f` on the record (alarms, outbox, inspection) for reading:
    /// SQLite on a connection of its own on the blocking pool, PostgreSQL
    /// on one of the readers. `f`'s future need not be `Send`: it is
    /// driven on a blocking thread.
    pub async fn read<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<SqlError> + Send + 'static,
        F: AsyncFnOnce(Conn<'_>) -> Result<T, E> + Send + 'static,
    {
        self.run(false, f).await
    }

    /// Runs `f` on the record in one transaction, committed when it
    /// succeeds (on SQLite an IMMEDIATE one: it holds the write lock from
    /// its first read, so it never fails to upgrade while the store writer
    /// commits).
    pub async fn write<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<SqlError> + Send + 'static,
        F: AsyncFnOnce(Conn<'_>) -> Result<T, E> + Send + 'static,
    {
        self.run(true, f).await
    }

    /// [`Reads::read`] (`write` false) or [`Reads::write`] for code that
    /// blocks (the inspection records), on the blocking pool.
    pub async fn blocking<T, E, F>(&self, write: bool, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<SqlError> + Send + 'static,
        F: FnOnce(Db<'_>) -> Result<T, E> + Send + 'static,
    {
        let task = match self {
            Reads::Sqlite(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || {
                    let mut c = rusqlite::Connection::open(&path).map_err(SqlError::from)?;
                    c.busy_timeout(std::time::Duration::from_secs(5))
                        .map_err(SqlError::from)?;
                    if !write {
                        return f(Db::lite(&c));
                    }
                    let tx = c
                        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                        .map_err(SqlError::from)?;
                    let out = f(Db::lite(&tx))?;
                    tx.commit().map_err(SqlError::from)?;
                    Ok(out)
                })
            }
            Reads::Postgres(pg) => {
                let pg = pg.clone();
                let handle = tokio::runtime::Handle::current();
                tokio::task::spawn_blocking(move || {
                    if !write {
                        let reader = handle.block_on(pg.reader()).map_err(sql_error)?;
                        return f(Db::pg(Conn::Pg(reader.client()), &handle));
                    }
                    let mut client = handle.block_on(pg.writing()).map_err(sql_error)?;
                    let tx = handle
                        .block_on(client.transaction())
                        .map_err(SqlError::from)?;
                    let out = f(Db::pg(Conn::PgTx(&tx), &handle))?;
                    handle.block_on(tx.commit()).map_err(SqlError::from)?;
                    Ok(out)
                })
            }
        };
        task.await
            .map_err(|e| E::from(SqlError::Task(e.to_string())))?
    }

    /// [`Reads::blocking`] with `f`'s future driven to its end on that
    /// thread: it need not be `Send`.
    async fn run<T, E, F>(&self, write: bool, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<SqlError> + Send + 'static,
        F: AsyncFnOnce(Conn<'_>) -> Result<T, E> + Send + 'static,
    {
        self.blocking(write, move |db| db.wait(f(db.conn()))).await
    }

    /// The latest reading of every point, optionally of one site or room.
    pub async fn latest(
        &self,
        site: Option<String>,
        room: Option<String>,
    ) -> Result<Vec<LatestRow>, StoreError> {
        match self {
            Reads::Sqlite(p) => {
                sqlite(p, move |r| r.latest(site.as_deref(), room.as_deref())).await
            }
            Reads::Postgres(pg) => Ok(pg
                .reader()
                .await?
                .latest(site.as_deref(), room.as_deref())
                .await?),
        }
    }

    pub async fn agents(&self) -> Result<Vec<AgentRow>, StoreError> {
        match self {
            Reads::Sqlite(p) => sqlite(p, |r| r.agents()).await,
            Reads::Postgres(pg) => Ok(pg.reader().await?.agents().await?),
        }
    }

    /// The point catalogue, filtered.
    pub async fn points(&self, filter: PointFilter) -> Result<Vec<PointRow>, StoreError> {
        match self {
            Reads::Sqlite(p) => sqlite(p, move |r| r.points(&filter)).await,
            Reads::Postgres(pg) => Ok(pg.reader().await?.points(&filter).await?),
        }
    }

    /// For each name, every point of that name (in `site`, if given).
    pub async fn points_named(
        &self,
        site: Option<String>,
        names: Vec<String>,
    ) -> Result<Vec<Vec<PointRow>>, StoreError> {
        match self {
            Reads::Sqlite(p) => {
                sqlite(p, move |r| {
                    names
                        .iter()
                        .map(|n| r.points_named(site.as_deref(), n))
                        .collect()
                })
                .await
            }
            Reads::Postgres(pg) => {
                let r = pg.reader().await?;
                let mut out = Vec::with_capacity(names.len());
                for n in &names {
                    out.push(r.points_named(site.as_deref(), n).await?);
                }
                Ok(out)
            }
        }
    }

    /// Runs `use_series` on the blocking pool with a way to read the
    /// series of `points[i]` by `plan`. On SQLite each is read when asked
    /// for, on one connection, so a caller rendering them one by one never
    /// holds them all; on PostgreSQL they are read (asynchronously) first.
    pub async fn with_histories<T: Send + 'static>(
        &self,
        points: Arc<[PointRow]>,
        plan: Plan,
        use_series: impl FnOnce(&mut dyn FnMut(usize) -> Result<Series, StoreError>) -> T
            + Send
            + 'static,
    ) -> Result<T, StoreError> {
        let blocking = |f: Box<dyn FnOnce() -> Result<T, StoreError> + Send>| async move {
            tokio::task::spawn_blocking(f)
                .await
                .map_err(|e| StoreError::Task(e.to_string()))?
        };
        match self {
            Reads::Sqlite(path) => {
                let path = path.clone();
                blocking(Box::new(move || {
                    let r = SqliteReader::open(&path)?;
                    Ok(use_series(&mut |i| r.history(points[i].id, &plan)))
                }))
                .await
            }
            Reads::Postgres(pg) => {
                let r = pg.reader().await?;
                // Asked together: tokio-postgres pipelines them on the one
                // connection instead of waiting a round trip for each.
                let read = futures_util::future::try_join_all(
                    points.iter().map(|pt| r.history(pt.id, &plan)),
                )
                .await?;
                let mut read: Vec<Option<Series>> = read.into_iter().map(Some).collect();
                blocking(Box::new(move || {
                    Ok(use_series(&mut |i| {
                        read.get_mut(i)
                            .and_then(Option::take)
                            .ok_or_else(|| StoreError::Task(format!("series {i} asked for twice")))
                    }))
                }))
                .await
            }
        }
    }
}
