//! Background work on PostgreSQL, in bounded steps between ingest
//! transactions, with the same results as SQLite's (`store/rollup.rs`,
//! `store/retention.rs`): 1-minute rollups of the closed minutes ingest
//! marked (late data included), the hours they fall in, and retention —
//! raw samples by dropping whole day partitions, rollups and the batch
//! register by bounded deletes.

use super::migrate::partition_for;
use super::PgError;
use crate::store::retention::Policy;
use tokio_postgres::Client;

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 3_600_000;
/// Most rows one retention statement deletes.
const ROWS_PER_DELETE: i64 = 5_000;

/// Rolls up at most `limit` marked minutes that have closed by `now_ms`;
/// returns how many.
pub async fn rollup_step(client: &mut Client, now_ms: i64, limit: i64) -> Result<usize, PgError> {
    let tx = client.transaction().await?;
    // A minute is rolled up once a whole minute has passed since it closed:
    // a writer remembers the marks of its current minute, and clocks of
    // collector nodes differ by up to that much without a mark being missed.
    let closed_before = now_ms - now_ms.rem_euclid(MINUTE_MS) - MINUTE_MS;
    // SKIP LOCKED: a second collector on the same database takes other work.
    let work = tx
        .query(
            "SELECT point_id, bucket FROM rollup_dirty WHERE bucket < $1
             ORDER BY bucket LIMIT $2 FOR UPDATE SKIP LOCKED",
            &[&closed_before, &limit],
        )
        .await?;
    if work.is_empty() {
        return Ok(0);
    }
    let points: Vec<i64> = work.iter().map(|r| r.get(0)).collect();
    let buckets: Vec<i64> = work.iter().map(|r| r.get(1)).collect();
    // Each minute from its good samples; the last is the newest by event time.
    tx.execute(
        "INSERT INTO rollup_1m (point_id, bucket, n, min, max, sum, last_ts, last)
         SELECT w.p, w.b, count(s.value), min(s.value), max(s.value), sum(s.value),
                (array_agg(s.ts ORDER BY s.ts DESC))[1], (array_agg(s.value ORDER BY s.ts DESC))[1]
         FROM unnest($1::BIGINT[], $2::BIGINT[]) AS w(p, b)
         JOIN samples s ON s.point_id = w.p AND s.ts >= w.b AND s.ts < w.b + 60000
                       AND s.value IS NOT NULL AND s.bad IS NULL
         GROUP BY w.p, w.b
         ON CONFLICT (point_id, bucket) DO UPDATE SET n = excluded.n, min = excluded.min,
             max = excluded.max, sum = excluded.sum, last_ts = excluded.last_ts, last = excluded.last",
        &[&points, &buckets],
    )
    .await?;
    // A minute left without a good sample (its readings turned out bad) has none.
    tx.execute(
        "DELETE FROM rollup_1m r USING unnest($1::BIGINT[], $2::BIGINT[]) AS w(p, b)
         WHERE r.point_id = w.p AND r.bucket = w.b
           AND NOT EXISTS (SELECT 1 FROM samples s WHERE s.point_id = w.p AND s.ts >= w.b
                           AND s.ts < w.b + 60000 AND s.value IS NOT NULL AND s.bad IS NULL)",
        &[&points, &buckets],
    )
    .await?;
    // The hours those minutes are in, again from their minutes.
    let hours: Vec<i64> = buckets.iter().map(|b| b - b.rem_euclid(HOUR_MS)).collect();
    tx.execute(
        "INSERT INTO rollup_1h (point_id, bucket, n, min, max, sum, last_ts, last)
         SELECT m.point_id, h.hb, sum(m.n), min(m.min), max(m.max), sum(m.sum),
                (array_agg(m.last_ts ORDER BY m.bucket DESC))[1], (array_agg(m.last ORDER BY m.bucket DESC))[1]
         FROM (SELECT DISTINCT p, hb FROM unnest($1::BIGINT[], $2::BIGINT[]) AS x(p, hb)) h
         JOIN rollup_1m m ON m.point_id = h.p AND m.bucket >= h.hb AND m.bucket < h.hb + 3600000
         GROUP BY m.point_id, h.hb
         ON CONFLICT (point_id, bucket) DO UPDATE SET n = excluded.n, min = excluded.min,
             max = excluded.max, sum = excluded.sum, last_ts = excluded.last_ts, last = excluded.last",
        &[&points, &hours],
    )
    .await?;
    tx.execute(
        "DELETE FROM rollup_1h r USING (SELECT DISTINCT p, hb FROM unnest($1::BIGINT[], $2::BIGINT[]) AS x(p, hb)) h
         WHERE r.point_id = h.p AND r.bucket = h.hb
           AND NOT EXISTS (SELECT 1 FROM rollup_1m m WHERE m.point_id = h.p
                           AND m.bucket >= h.hb AND m.bucket < h.hb + 3600000)",
        &[&points, &hours],
    )
    .await?;
    tx.execute(
        "DELETE FROM rollup_dirty d USING unnest($1::BIGINT[], $2::BIGINT[]) AS w(p, b)
         WHERE d.point_id = w.p AND d.bucket = w.b",
        &[&points, &buckets],
    )
    .await?;
    tx.commit().await?;
    Ok(work.len())
}

/// One retention step: drops every day partition of raw samples wholly
/// past `policy.raw`, and deletes at most [`ROWS_PER_DELETE`] expired rows
/// from each rollup tier. Returns the partitions dropped and rows deleted.
pub async fn retention_step(
    client: &mut Client,
    policy: &Policy,
    now_ms: i64,
) -> Result<(usize, u64), PgError> {
    let cutoff = |keep: std::time::Duration| now_ms.saturating_sub(keep.as_millis() as i64);
    let raw_cutoff = cutoff(policy.raw);
    let partitions = client
        .query(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = 'samples'::regclass",
            &[],
        )
        .await?;
    let mut dropped = 0;
    for row in partitions {
        let name: String = row.get(0);
        // Names are ours (samples_YYYYMMDD); the day is read back from it.
        let Some(day_start) = day_of(&name) else {
            continue;
        };
        let (_, _, end) = partition_for(day_start);
        if end <= raw_cutoff {
            client
                .batch_execute(&format!("DROP TABLE IF EXISTS {name}"))
                .await?;
            dropped += 1;
        }
    }
    let mut deleted = 0;
    for (table, keep) in [("rollup_1m", policy.minute), ("rollup_1h", policy.hour)] {
        deleted += client
            .execute(
                &format!(
                    "DELETE FROM {table} WHERE ctid IN
                       (SELECT ctid FROM {table} WHERE bucket < $1 LIMIT $2)"
                ),
                &[&cutoff(keep), &ROWS_PER_DELETE],
            )
            .await?;
    }
    Ok((dropped, deleted))
}

/// The start of the day a partition name stands for.
fn day_of(name: &str) -> Option<i64> {
    let d = name.strip_prefix("samples_")?;
    if d.len() != 8 || !d.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let ts: jiff::Timestamp = format!("{}-{}-{}T00:00:00Z", &d[..4], &d[4..6], &d[6..])
        .parse()
        .ok()?;
    Some(ts.as_millisecond())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_name_gives_back_its_day() {
        let (name, from, _) = partition_for(1_796_600_000_000);
        assert_eq!(day_of(&name), Some(from));
        assert_eq!(day_of("samples_2026120"), None);
        assert_eq!(day_of("invoices_20261206"), None);
    }
}
