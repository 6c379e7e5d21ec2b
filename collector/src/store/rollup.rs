//! Rollups: per point, 1-minute and 1-hour buckets of count, min, max, sum
//! (mean = sum / count) and last value, of good numeric readings.
//!
//! Recomputed from what is stored rather than added to incrementally, so
//! they stay right whatever order readings arrive in: the writer marks each
//! (point, minute) that received a new reading as dirty, in the same
//! transaction as the reading; a maintenance step later recomputes dirty
//! minutes from the raw samples (a 60-row range scan each) and their hours
//! from the minutes, in bounded steps between ingest transactions. A backfill
//! an hour late just marks old minutes dirty again. Only closed minutes are
//! recomputed, so rollups trail the present by up to a minute plus a step;
//! the raw tier covers the newest data.

use super::StoreError;
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use std::collections::{BTreeSet, HashSet};

pub const MINUTE_MS: i64 = 60_000;
pub const HOUR_MS: i64 = 3_600_000;

/// Start of the bucket of width `width` holding `ts` (both ms since the epoch).
pub fn bucket(ts: i64, width: i64) -> i64 {
    ts - ts.rem_euclid(width)
}

/// Minutes marked dirty since their last recompute; remembered in memory so
/// the mark costs a write once per point and minute, not once per reading.
#[derive(Default)]
pub struct Dirty {
    marked: HashSet<(i64, i64)>,
    /// The last mark, so a run of one point's readings in one minute (the
    /// writer inserts in key order) skips even the set lookup.
    last: Option<(i64, i64)>,
}

impl Dirty {
    /// Marks the minute of `ts` for `point` (inside the writer's transaction).
    pub fn mark(&mut self, tx: &Transaction<'_>, point: i64, ts: i64) -> Result<(), StoreError> {
        let minute = bucket(ts, MINUTE_MS);
        if self.last == Some((point, minute)) {
            return Ok(());
        }
        self.last = Some((point, minute));
        if self.marked.insert((point, minute)) {
            tx.prepare_cached(
                "INSERT OR IGNORE INTO rollup_dirty (point_id, bucket) VALUES (?1, ?2)",
            )?
            .execute(params![point, minute])?;
        }
        Ok(())
    }

    /// Forgets marks whose transaction rolled back, so they are made again.
    pub fn forget_uncommitted(&mut self) {
        self.marked.clear();
        self.last = None;
    }
}

/// Count, min, max, sum and last (by event time) of good numeric readings:
/// a rollup row, a history bucket, or one raw sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Agg {
    pub n: i64,
    pub min: f64,
    pub max: f64,
    pub sum: f64,
    pub last_ts: i64,
    pub last: f64,
}

impl Agg {
    pub fn sample(ts: i64, v: f64) -> Agg {
        Agg {
            n: 1,
            min: v,
            max: v,
            sum: v,
            last_ts: ts,
            last: v,
        }
    }

    /// Adds `o` in, keeping the later of the two lasts.
    pub fn merge(&mut self, o: &Agg) {
        self.n += o.n;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
        self.sum += o.sum;
        if o.last_ts >= self.last_ts {
            self.last_ts = o.last_ts;
            self.last = o.last;
        }
    }

    pub fn mean(&self) -> f64 {
        // A sum of equal values divided back can land one ulp outside them
        // (0.4 × 3 / 3 = 0.4000000000000001): a mean above the maximum.
        (self.sum / self.n as f64).max(self.min).min(self.max)
    }
}

/// Recomputes up to `limit` dirty minutes that have closed by `now_ms`, and
/// the hours they belong to, in one transaction. Returns how many minutes.
pub fn step(
    conn: &mut Connection,
    dirty: &mut Dirty,
    now_ms: i64,
    limit: usize,
) -> Result<usize, StoreError> {
    let tx = conn.transaction()?;
    let closed_before = bucket(now_ms, MINUTE_MS);
    let work: Vec<(i64, i64)> = tx
        .prepare_cached("SELECT point_id, bucket FROM rollup_dirty WHERE bucket < ?1 LIMIT ?2")?
        .query_map(params![closed_before, limit as i64], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<Result<_, _>>()?;
    let mut hours = BTreeSet::new();
    for &(point, minute) in &work {
        let agg = aggregate_samples(&tx, point, minute, minute + MINUTE_MS)?;
        store(&tx, "rollup_1m", point, minute, agg)?;
        hours.insert((point, bucket(minute, HOUR_MS)));
        tx.prepare_cached("DELETE FROM rollup_dirty WHERE point_id = ?1 AND bucket = ?2")?
            .execute(params![point, minute])?;
    }
    for (point, hour) in hours {
        let agg = aggregate_minutes(&tx, point, hour, hour + HOUR_MS)?;
        store(&tx, "rollup_1h", point, hour, agg)?;
    }
    tx.commit()?;
    for key in &work {
        dirty.marked.remove(key);
        dirty.last = None;
    }
    Ok(work.len())
}

fn aggregate_samples(
    tx: &Transaction<'_>,
    point: i64,
    from: i64,
    to: i64,
) -> Result<Option<Agg>, StoreError> {
    const GOOD: &str =
        "point_id = ?1 AND ts >= ?2 AND ts < ?3 AND value IS NOT NULL AND bad IS NULL";
    aggregate(
        tx,
        &format!(
            "SELECT count(value), min(value), max(value), sum(value) FROM samples WHERE {GOOD}"
        ),
        &format!("SELECT ts, value FROM samples WHERE {GOOD} ORDER BY ts DESC LIMIT 1"),
        [point, from, to],
    )
}

fn aggregate_minutes(
    tx: &Transaction<'_>,
    point: i64,
    from: i64,
    to: i64,
) -> Result<Option<Agg>, StoreError> {
    const IN: &str = "point_id = ?1 AND bucket >= ?2 AND bucket < ?3";
    aggregate(
        tx,
        &format!(
            "SELECT coalesce(sum(n), 0), min(min), max(max), sum(sum) FROM rollup_1m WHERE {IN}"
        ),
        &format!("SELECT last_ts, last FROM rollup_1m WHERE {IN} ORDER BY bucket DESC LIMIT 1"),
        [point, from, to],
    )
}

/// Runs an aggregate query (count, min, max, sum) and a last-value query
/// (time, value) over the same rows.
fn aggregate(
    tx: &Transaction<'_>,
    totals: &str,
    last: &str,
    args: [i64; 3],
) -> Result<Option<Agg>, StoreError> {
    let (n, min, max, sum): (i64, Option<f64>, Option<f64>, Option<f64>) = tx
        .prepare_cached(totals)?
        .query_row(args, |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
    let last: Option<(i64, f64)> = tx
        .prepare_cached(last)?
        .query_row(args, |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    Ok(combine(n, min, max, sum, last))
}

fn combine(
    n: i64,
    min: Option<f64>,
    max: Option<f64>,
    sum: Option<f64>,
    last: Option<(i64, f64)>,
) -> Option<Agg> {
    match (n, min, max, sum, last) {
        (1.., Some(min), Some(max), Some(sum), Some((last_ts, last))) => Some(Agg {
            n,
            min,
            max,
            sum,
            last_ts,
            last,
        }),
        _ => None,
    }
}

/// Writes (or, when nothing is left in the bucket, deletes) one rollup row.
fn store(
    tx: &Transaction<'_>,
    table: &str,
    point: i64,
    b: i64,
    agg: Option<Agg>,
) -> Result<(), StoreError> {
    // `table` is one of two constants, never input.
    match agg {
        Some(a) => {
            tx.prepare_cached(&format!(
                "INSERT INTO {table} (point_id, bucket, n, min, max, sum, last_ts, last) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (point_id, bucket) DO UPDATE SET n = excluded.n, min = excluded.min, max = excluded.max,
                     sum = excluded.sum, last_ts = excluded.last_ts, last = excluded.last"
            ))?
            .execute(params![point, b, a.n, a.min, a.max, a.sum, a.last_ts, a.last])?;
        }
        None => {
            tx.prepare_cached(&format!(
                "DELETE FROM {table} WHERE point_id = ?1 AND bucket = ?2"
            ))?
            .execute(params![point, b])?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_start_on_the_boundary_before_their_readings_even_before_1970() {
        assert_eq!(bucket(125_000, MINUTE_MS), 120_000);
        assert_eq!(bucket(120_000, MINUTE_MS), 120_000);
        assert_eq!(bucket(-1, MINUTE_MS), -60_000);
        assert_eq!(bucket(3_600_000 * 5 + 7, HOUR_MS), 3_600_000 * 5);
    }
}
