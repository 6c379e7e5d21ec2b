//! Retention: raw samples, 1-minute and 1-hour rollups each kept for their
//! own period, and the batch register (which only needs to outlive an
//! agent's resends). Enforced by the writer in small steps between ingest
//! transactions: a few points per step, at most `ROWS_PER_DELETE` rows per
//! point and table per statement, so even switching retention on over years
//! of data never holds the writer for long.

use super::StoreError;
use rusqlite::{params, Connection, OptionalExtension};
use std::time::Duration;

/// Most rows one statement deletes.
const ROWS_PER_DELETE: i64 = 5_000;
/// Points visited per step.
const POINTS_PER_STEP: i64 = 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub raw: Duration,
    pub minute: Duration,
    pub hour: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        const DAY: u64 = 86_400;
        Policy {
            raw: Duration::from_secs(90 * DAY),
            minute: Duration::from_secs(2 * 365 * DAY),
            hour: Duration::from_secs(10 * 365 * DAY),
        }
    }
}

/// Where the round over the points has got to.
#[derive(Debug, Default)]
pub struct Cursor {
    after_point: i64,
}

/// One step; returns the rows deleted.
pub fn step(
    conn: &mut Connection,
    cursor: &mut Cursor,
    policy: &Policy,
    now_ms: i64,
) -> Result<u64, StoreError> {
    let tx = conn.transaction()?;
    let points: Vec<i64> = tx
        .prepare_cached("SELECT id FROM points WHERE id > ?1 ORDER BY id LIMIT ?2")?
        .query_map(params![cursor.after_point, POINTS_PER_STEP], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    cursor.after_point = points.last().copied().unwrap_or(0);
    let cutoff = |keep: Duration| now_ms.saturating_sub(keep.as_millis() as i64);
    let mut deleted = 0u64;
    for p in &points {
        // The timestamp of the oldest row past the bound's ROWS_PER_DELETE-th,
        // so one statement never deletes more than that.
        for (table, key, keep) in [
            ("samples", "ts", policy.raw),
            ("rollup_1m", "bucket", policy.minute),
            ("rollup_1h", "bucket", policy.hour),
        ] {
            let limit: Option<i64> = tx
                .prepare_cached(&format!(
                    "SELECT {key} FROM {table} WHERE point_id = ?1 ORDER BY {key} LIMIT 1 OFFSET ?2"
                ))?
                .query_row(params![p, ROWS_PER_DELETE], |r| r.get(0))
                .optional()?;
            let bound = limit.map_or(cutoff(keep), |l| l.min(cutoff(keep)));
            deleted += tx
                .prepare_cached(&format!(
                    "DELETE FROM {table} WHERE point_id = ?1 AND {key} < ?2"
                ))?
                .execute(params![p, bound])? as u64;
        }
    }
    // The batch register is kept as long as raw samples (an index on
    // polled_at finds the old ones).
    deleted += tx
        .prepare_cached(
            "DELETE FROM batches WHERE (site, agent, seq) IN
               (SELECT site, agent, seq FROM batches WHERE polled_at < ?1 ORDER BY polled_at LIMIT ?2)",
        )?
        .execute(params![cutoff(policy.raw), ROWS_PER_DELETE])? as u64;
    tx.commit()?;
    Ok(deleted)
}
