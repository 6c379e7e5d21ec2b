//! Ingest into PostgreSQL: the same promises as the SQLite writer, in one
//! transaction per round of batches. A batch already in the register is
//! skipped whole; readings go in by binary COPY straight into `samples`, or,
//! when that meets a reading already stored (same point and event time),
//! through a temporary table with `ON CONFLICT DO NOTHING`, so a repeat is
//! counted, not stored again;
//! the catalogue keeps each point's newest reading (a late backlog never
//! replaces a newer one) and the minutes waiting for their rollups.

use super::migrate::{ensure_days, migrate};
use super::{connect_to, PgError, Target};
use crate::store::alarms::Recorder;
use crate::store::backend::Fence;
use crate::store::sql::Conn;
use crate::store::WriteStats;
use futures_util::pin_mut;
use roomguard_protocol::{Batch, Quality, Status};
use std::collections::HashMap;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Transaction};

/// Catalogue ids by site, then point: looked up by `&str` without
/// allocating, once per reading.
type Ids = HashMap<String, HashMap<String, i64>>;

/// A reading to store: point id, event time, value, text, bad reason.
type Row<'a> = (i64, i64, Option<f64>, Option<&'a str>, Option<&'a str>);

/// Rollup minute, ms.
const MINUTE_MS: i64 = 60_000;

pub struct PgWriter {
    client: Client,
    /// Catalogue ids by (site, point); cleared after a failed transaction
    /// (an id made in it was never committed).
    points: Ids,
    /// Day partitions of `samples` known to exist (start of day, ms).
    partitions: std::collections::HashSet<i64>,
    /// (point, minute) of the current minute marked for rollup, committed.
    marked: std::collections::HashSet<(i64, i64)>,
    /// Each point's newest committed reading not yet in the catalogue.
    pending_latest: HashMap<i64, Latest>,
    /// When the catalogue last took the newest readings, and how long
    /// that took.
    latest_written: Option<(std::time::Instant, std::time::Duration)>,
    /// The newest status time seen per (site, agent), against replays.
    status_at: HashMap<(String, String), i64>,
}

/// A point's newest reading: event time, value, text, bad reason.
pub type Latest = (i64, Option<f64>, Option<String>, Option<String>);

/// How far the catalogue's latest readings may lag behind the samples.
/// Updating every point's catalogue row at every commit was two thirds of
/// a busy round's time (50,000 points); once a second, a round pays it at
/// most once a second, and `/latest` is at most this much behind.
const LATEST_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The catalogue update may take at most this share of the writer's time:
/// when tens of thousands of points change every second (a cluster's
/// database under load), it is made less often than [`LATEST_EVERY`]
/// rather than crowd out the samples. A third of PostgreSQL's time went to
/// it at 150,000 readings/s from 50,000 points (bench-cluster-ingest).
const LATEST_SHARE: u32 = 10;

/// Whether the catalogue's latest readings are due: a second after the
/// last update, or ten times as long as it took, whichever is later.
fn latest_due(
    written: Option<(std::time::Instant, std::time::Duration)>,
    now: std::time::Instant,
) -> bool {
    written.is_none_or(|(at, took)| now - at >= LATEST_EVERY.max(took * LATEST_SHARE))
}

impl PgWriter {
    /// Connects and brings the schema up to date.
    pub async fn open(target: &Target) -> Result<PgWriter, PgError> {
        let mut client = connect_to(target).await?;
        let db = target.config.get_dbname().unwrap_or("").to_owned();
        let applied = migrate(&mut client, &db).await?;
        if !applied.is_empty() {
            tracing::info!(?applied, "PostgreSQL schema migrated");
        }
        Ok(PgWriter {
            client,
            points: HashMap::new(),
            partitions: Default::default(),
            marked: Default::default(),
            pending_latest: HashMap::new(),
            latest_written: None,
            status_at: HashMap::new(),
        })
    }

    /// Stores `batches` in one transaction, with the alarm transitions
    /// they cause when `alarms` is given.
    pub async fn write_batches(
        &mut self,
        batches: &[Batch],
        now_ms: i64,
        alarms: Option<&mut Recorder>,
    ) -> Result<WriteStats, PgError> {
        self.write_fenced(batches, now_ms, alarms, None).await
    }

    /// As [`PgWriter::write_batches`], checking before the commit, when
    /// `fence` is given, that every site lease it holds still stands.
    pub async fn write_fenced(
        &mut self,
        batches: &[Batch],
        now_ms: i64,
        alarms: Option<&mut Recorder>,
        fence: Option<&Fence>,
    ) -> Result<WriteStats, PgError> {
        let result = self.write_batches_tx(batches, now_ms, alarms, fence).await;
        if result.is_err() {
            self.points.clear();
            self.partitions.clear();
        }
        result
    }

    async fn write_batches_tx(
        &mut self,
        batches: &[Batch],
        now_ms: i64,
        alarms: Option<&mut Recorder>,
        fence: Option<&Fence>,
    ) -> Result<WriteStats, PgError> {
        // Borrowed apart: the transaction holds the client.
        let PgWriter {
            client,
            points,
            partitions,
            marked,
            pending_latest,
            latest_written,
            status_at: _,
        } = self;
        let mut newly_marked: Vec<(i64, i64)> = Vec::new();
        let mut round_latest: HashMap<i64, Latest> = HashMap::new();
        let tx = client.transaction().await?;
        let mut stats = WriteStats::default();
        // (point id, event time, value, text, bad) of every reading to store.
        let mut rows: Vec<Row<'_>> = Vec::new();
        // The batches stored now (not repeats), for the alarm engine.
        let mut stored: Vec<&Batch> = Vec::new();
        // The whole round into the batch register in one statement; what it
        // did not take is a repeat (or a reused number), looked at one by one.
        let mut fresh: std::collections::HashSet<(String, String, i64)> = {
            let sites: Vec<&str> = batches.iter().map(|b| b.site.as_str()).collect();
            let agents: Vec<&str> = batches.iter().map(|b| b.agent.as_str()).collect();
            // BIGINT is signed; the cast is one-to-one.
            let seqs: Vec<i64> = batches.iter().map(|b| b.seq as i64).collect();
            let devices: Vec<&str> = batches.iter().map(|b| b.device.as_str()).collect();
            let polled: Vec<i64> = batches.iter().map(|b| b.polled_at).collect();
            let counts: Vec<i32> = batches.iter().map(|b| b.readings.len() as i32).collect();
            let backfill: Vec<bool> = batches.iter().map(|b| b.backfill).collect();
            tx.query(
                "INSERT INTO batches (site, agent, seq, device, polled_at, readings, backfill, received_at)
                 SELECT u.*, $8::BIGINT FROM unnest($1::TEXT[], $2::TEXT[], $3::BIGINT[], $4::TEXT[],
                                                    $5::BIGINT[], $6::INTEGER[], $7::BOOLEAN[]) AS u
                 ON CONFLICT DO NOTHING RETURNING site, agent, seq",
                &[&sites, &agents, &seqs, &devices, &polled, &counts, &backfill, &now_ms],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect()
        };
        for batch in batches {
            // The first of the round under its number takes it.
            let key = (batch.site.clone(), batch.agent.clone(), batch.seq as i64);
            if !fresh.remove(&key) {
                let same = tx
                    .query_opt(
                        "SELECT 1 FROM batches WHERE site = $1 AND agent = $2 AND seq = $3
                           AND device = $4 AND polled_at = $5",
                        &[
                            &batch.site,
                            &batch.agent,
                            &(batch.seq as i64),
                            &batch.device,
                            &batch.polled_at,
                        ],
                    )
                    .await?
                    .is_some();
                if same {
                    stats.duplicate_batches += 1;
                    stats.duplicates += batch.readings.len() as u64;
                    continue;
                }
                // A different batch under a known number: the agent lost its
                // state directory and counts again. Store it, say so.
                tracing::warn!(site = %batch.site, agent = %batch.agent, seq = batch.seq,
                    "agent reused a sequence number (was its state directory reset?); storing the new batch");
                tx.execute(
                    "UPDATE batches SET device = $4, polled_at = $5, readings = $6, backfill = $7, received_at = $8
                     WHERE site = $1 AND agent = $2 AND seq = $3",
                    &[
                        &batch.site,
                        &batch.agent,
                        &(batch.seq as i64),
                        &batch.device,
                        &batch.polled_at,
                        &(batch.readings.len() as i32),
                        &batch.backfill,
                        &now_ms,
                    ],
                )
                .await?;
            }
            for meta in &batch.points {
                let id: i64 = tx
                    .query_one(
                        "INSERT INTO points (site, point, agent, room, device, quantity, unit, first_seen, last_seen)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)
                         ON CONFLICT (site, point) DO UPDATE SET agent = excluded.agent, room = excluded.room,
                             device = excluded.device, quantity = excluded.quantity, unit = excluded.unit
                         RETURNING id",
                        &[
                            &batch.site,
                            &&*meta.id,
                            &batch.agent,
                            &&*meta.room,
                            &batch.device,
                            &&*meta.quantity,
                            &&*meta.unit,
                            &now_ms,
                        ],
                    )
                    .await?
                    .get(0);
                points
                    .entry(batch.site.to_string())
                    .or_default()
                    .insert(meta.id.to_string(), id);
            }
            for r in &batch.readings {
                let id = point_id(&tx, points, batch, &r.point, now_ms).await?;
                let (value, text, bad) = match &r.quality {
                    Quality::Good => (r.value, r.text.as_deref(), None),
                    Quality::Bad(reason) => (None, None, Some(reason.as_str())),
                };
                rows.push((id, r.ts, value, text, bad));
            }
            stored.push(batch);
            stats.batches += 1;
        }
        if !rows.is_empty() {
            // The days the readings fall on, not every day between the
            // oldest and newest: one reading from a device whose clock went
            // back to 2000 must not make ten thousand partitions.
            ensure_days(&tx, rows.iter().map(|r| r.1), partitions).await?;
            // Straight into samples: a reading already stored is rare (a
            // batch sent again is skipped whole by the register above), so
            // the COPY is tried first under a savepoint, and only when it
            // meets one do the readings go through a temporary table and
            // `ON CONFLICT DO NOTHING`, which costs twice the COPY.
            tx.batch_execute("SAVEPOINT copy_samples").await?;
            let stored = match copy_rows(&tx, "samples", &rows).await {
                Ok(n) => {
                    tx.batch_execute("RELEASE SAVEPOINT copy_samples").await?;
                    n
                }
                Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {
                    tx.batch_execute("ROLLBACK TO SAVEPOINT copy_samples")
                        .await?;
                    tx.batch_execute(
                        "CREATE TEMP TABLE IF NOT EXISTS incoming (
                            point_id BIGINT, ts BIGINT, value DOUBLE PRECISION, text TEXT, bad TEXT
                         ) ON COMMIT DELETE ROWS",
                    )
                    .await?;
                    copy_rows(&tx, "incoming", &rows).await?;
                    tx.execute(
                        "INSERT INTO samples (point_id, ts, value, text, bad)
                         SELECT point_id, ts, value, text, bad FROM incoming ON CONFLICT DO NOTHING",
                        &[],
                    )
                    .await?
                }
                Err(e) => return Err(e.into()),
            };
            stats.readings += stored;
            stats.duplicates += rows.len() as u64 - stored;
            // Each point's newest reading of the round, written into the
            // catalogue with those still pending when a second has passed,
            // else kept for later (once this round commits).
            for &(id, ts, value, text, bad) in &rows {
                let newer = round_latest.get(&id).is_none_or(|l: &Latest| l.0 <= ts);
                if newer {
                    round_latest.insert(
                        id,
                        (ts, value, text.map(str::to_owned), bad.map(str::to_owned)),
                    );
                }
            }
            // Minutes to roll up, each marked once: the current minute is
            // remembered until it closes (rollups wait a minute past it, see
            // maintain.rs), older ones are always marked (a late reading must
            // reach a minute that was rolled up already).
            let current = now_ms - now_ms.rem_euclid(MINUTE_MS);
            marked.retain(|&(_, m)| m >= current);
            let mut mark_points = Vec::new();
            let mut mark_minutes = Vec::new();
            let mut seen = std::collections::HashSet::new();
            for (id, ts, value, _, _) in &rows {
                if value.is_none() {
                    continue;
                }
                let minute = ts - ts.rem_euclid(MINUTE_MS);
                let key = (*id, minute);
                if marked.contains(&key) || !seen.insert(key) {
                    continue;
                }
                mark_points.push(*id);
                mark_minutes.push(minute);
            }
            if !mark_points.is_empty() {
                tx.execute(
                    "INSERT INTO rollup_dirty (point_id, bucket)
                     SELECT * FROM unnest($1::BIGINT[], $2::BIGINT[]) ON CONFLICT DO NOTHING",
                    &[&mark_points, &mark_minutes],
                )
                .await?;
            }
            newly_marked = seen.into_iter().filter(|&(_, m)| m >= current).collect();
        }
        // Alarm transitions commit with the readings that caused them.
        if let Some(rec) = alarms {
            let mut out = Vec::new();
            for b in stored {
                rec.engine.observe(b, now_ms, &mut out);
            }
            rec.record(Conn::PgTx(&tx), &out, now_ms).await?;
        }
        // In a cluster, last before the commit: do this node's leases
        // still stand (cluster/lease.rs)? All of them, not only these
        // batches' sites: the engine's changed state of any held site is
        // written with them.
        if let Some(f) = fence {
            crate::cluster::lease::check(&tx, &f.cluster.node, &f.held, &f.site_parts()).await?;
        }
        let due = latest_due(*latest_written, std::time::Instant::now());
        if due && !(pending_latest.is_empty() && round_latest.is_empty()) {
            // Those pending, each replaced by this round's when newer, and
            // this round's others: merged as written, never copied.
            let both = pending_latest
                .iter()
                .map(|(id, l)| match round_latest.get(id) {
                    Some(r) if r.0 >= l.0 => (id, r),
                    _ => (id, l),
                })
                .chain(
                    round_latest
                        .iter()
                        .filter(|(id, _)| !pending_latest.contains_key(id)),
                );
            let started = std::time::Instant::now();
            write_latest(&tx, both, now_ms).await?;
            let took = started.elapsed();
            tx.commit().await?;
            pending_latest.clear();
            *latest_written = Some((std::time::Instant::now(), took));
        } else {
            tx.commit().await?;
            merge_latest(pending_latest, round_latest);
        }
        marked.extend(newly_marked);
        Ok(stats)
    }

    /// Forgets which day partitions exist (retention dropped some).
    pub fn forget_partitions(&mut self) {
        self.partitions.clear();
    }

    /// The newest committed readings not yet in the catalogue, handed to
    /// the writer that replaces this one after its connection broke.
    pub fn take_pending_latest(&mut self) -> HashMap<i64, Latest> {
        std::mem::take(&mut self.pending_latest)
    }

    /// Takes over what [`PgWriter::take_pending_latest`] handed on.
    pub fn keep_pending_latest(&mut self, pending: HashMap<i64, Latest>) {
        merge_latest(&mut self.pending_latest, pending);
    }

    /// Writes the newest readings still pending into the catalogue (each
    /// maintenance step, and at a clean stop).
    pub async fn flush_latest(&mut self, now_ms: i64) -> Result<(), PgError> {
        if self.pending_latest.is_empty() {
            return Ok(());
        }
        let tx = self.client.transaction().await?;
        let started = std::time::Instant::now();
        write_latest(&tx, self.pending_latest.iter(), now_ms).await?;
        let took = started.elapsed();
        tx.commit().await?;
        self.pending_latest.clear();
        self.latest_written = Some((std::time::Instant::now(), took));
        Ok(())
    }

    /// Records an agent's latest status; one not newer than the newest seen
    /// (a replay of an old "online") is dropped, as on SQLite. The newest
    /// time is read from the stored document in Rust, never cast to jsonb
    /// in SQL: a status text PostgreSQL's jsonb refuses (`\u0000`) must not
    /// make every later status of that agent fail, and ingest with it.
    pub async fn write_status(&mut self, status: &Status, now_ms: i64) -> Result<(), PgError> {
        if let Some(at) = status.at {
            let key = (status.site.to_string(), status.agent.to_string());
            let newest = match self.status_at.get(&key) {
                Some(&t) => Some(t),
                None => self
                    .client
                    .query_opt(
                        "SELECT status_json FROM agents WHERE site = $1 AND agent = $2",
                        &[&status.site, &status.agent],
                    )
                    .await?
                    .and_then(|r| {
                        serde_json::from_str::<serde_json::Value>(r.get::<_, &str>(0))
                            .ok()?
                            .get("at")?
                            .as_i64()
                    }),
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
        self.client
            .execute(
                "INSERT INTO agents (site, agent, state, status_json, updated_at) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (site, agent) DO UPDATE SET state = excluded.state,
                     status_json = excluded.status_json, updated_at = excluded.updated_at",
                &[&status.site, &status.agent, &state, &json, &now_ms],
            )
            .await?;
        if let Some(at) = status.at {
            self.status_at
                .insert((status.site.to_string(), status.agent.to_string()), at);
        }
        Ok(())
    }

    /// The client, for reads in tests and tools.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The client, for maintenance steps (they run transactions).
    pub fn client_mut(&mut self) -> &mut Client {
        &mut self.client
    }
}

/// Adds `newer` to `into`, keeping each point's newest.
pub fn merge_latest(into: &mut HashMap<i64, Latest>, newer: HashMap<i64, Latest>) {
    for (id, l) in newer {
        match into.get(&id) {
            Some(have) if have.0 > l.0 => {}
            _ => {
                into.insert(id, l);
            }
        }
    }
}

/// Each point's newest reading into the catalogue, unless it has a newer one.
async fn write_latest<'a>(
    tx: &Transaction<'_>,
    latest: impl Iterator<Item = (&'a i64, &'a Latest)>,
    now_ms: i64,
) -> Result<(), tokio_postgres::Error> {
    let (mut ids, mut tss, mut values, mut texts, mut bads) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (id, (ts, value, text, bad)) in latest {
        ids.push(*id);
        tss.push(*ts);
        values.push(*value);
        texts.push(text.as_deref());
        bads.push(bad.as_deref());
    }
    tx.execute(
        "UPDATE points p SET last_ts = n.ts, last_value = n.value, last_text = n.text,
             last_bad = n.bad, last_seen = $6
         FROM unnest($1::BIGINT[], $2::BIGINT[], $3::FLOAT8[], $4::TEXT[], $5::TEXT[])
              AS n (point_id, ts, value, text, bad)
         WHERE p.id = n.point_id AND (p.last_ts IS NULL OR n.ts >= p.last_ts)",
        &[&ids, &tss, &values, &texts, &bads, &now_ms],
    )
    .await?;
    Ok(())
}

/// Writes `rows` into `table` by binary COPY; the rows written.
async fn copy_rows(
    tx: &Transaction<'_>,
    table: &str,
    rows: &[Row<'_>],
) -> Result<u64, tokio_postgres::Error> {
    let sink = tx
        .copy_in(&format!(
            "COPY {table} (point_id, ts, value, text, bad) FROM STDIN (FORMAT binary)"
        ))
        .await?;
    let writer = BinaryCopyInWriter::new(
        sink,
        &[Type::INT8, Type::INT8, Type::FLOAT8, Type::TEXT, Type::TEXT],
    );
    pin_mut!(writer);
    for (id, ts, value, text, bad) in rows {
        writer.as_mut().write(&[id, ts, value, text, bad]).await?;
    }
    writer.finish().await
}

/// The catalogue id of a reading's point. A point never described yet
/// gets an entry with empty labels, filled in when its description comes.
async fn point_id(
    tx: &Transaction<'_>,
    points: &mut Ids,
    batch: &Batch,
    point: &str,
    now_ms: i64,
) -> Result<i64, PgError> {
    if let Some(id) = points.get(&*batch.site).and_then(|p| p.get(point)) {
        return Ok(*id);
    }
    let id: i64 = tx
        .query_one(
            "INSERT INTO points (site, point, agent, room, device, quantity, unit, first_seen, last_seen)
             VALUES ($1, $2, $3, '', $4, '', '', $5, $5)
             ON CONFLICT (site, point) DO UPDATE SET last_seen = points.last_seen
             RETURNING id",
            &[&batch.site, &point, &batch.agent, &batch.device, &now_ms],
        )
        .await?
        .get(0);
    points
        .entry(batch.site.to_string())
        .or_default()
        .insert(point.to_owned(), id);
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn the_latest_readings_go_to_the_catalogue_each_second_while_that_is_cheap() {
        let at = Instant::now();
        assert!(latest_due(None, at));
        let quick = Some((at, Duration::from_millis(20)));
        assert!(!latest_due(quick, at + Duration::from_millis(900)));
        assert!(latest_due(quick, at + Duration::from_secs(1)));
    }

    #[test]
    fn a_costly_catalogue_update_is_made_less_often() {
        let at = Instant::now();
        let slow = Some((at, Duration::from_millis(300)));
        assert!(!latest_due(slow, at + Duration::from_secs(2)));
        assert!(latest_due(slow, at + Duration::from_secs(3)));
    }
}
