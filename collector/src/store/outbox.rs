//! The notification outbox in the SQLite store: rows due for delivery, their
//! outcomes, the API's listing and the dead-letter retry. Rows are written by
//! the alarm record in the transaction of the transition they tell
//! (`store/alarms.rs`); the delivery loop (`alarm/notify/`) only reads and
//! settles them here. Every statement runs on either backend.

use crate::args;
use crate::store::sql::{Conn, SqlError};
use serde_json::{json, Value};

/// One queued notification.
#[derive(Debug, Clone)]
pub struct Row {
    pub id: i64,
    pub channel: String,
    pub key: String,
    pub kind: String,
    pub payload: String,
    pub attempts: u32,
}

/// What became of one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Sent,
    /// Failed; tried again at `next_at`.
    Retry {
        error: String,
        next_at: i64,
    },
    /// Failed for the last time: kept as a dead letter.
    Dead {
        error: String,
    },
}

/// Records the outcome of a delivery of `row` at `now`.
pub async fn settle(db: Conn<'_>, row: &Row, outcome: &Outcome, now: i64) -> Result<(), SqlError> {
    let attempts = row.attempts + 1;
    // A receiver's answer is quoted in the error; PostgreSQL's text holds
    // no NUL, and one would keep the row from ever being settled.
    let clean = |e: &str| e.replace('\0', "\u{fffd}");
    match outcome {
        Outcome::Sent => db.exec(
            "UPDATE outbox SET state = 'sent', sent_at = $2, attempts = attempts + 1, last_error = NULL WHERE id = $1",
            args![row.id, now],
        ).await,
        Outcome::Dead { error } => db.exec(
            "UPDATE outbox SET state = 'dead', attempts = $2, last_error = $3 WHERE id = $1",
            args![row.id, attempts, &clean(error)],
        ).await,
        Outcome::Retry { error, next_at } => db.exec(
            "UPDATE outbox SET attempts = $2, last_error = $3, next_at = $4 WHERE id = $1",
            args![row.id, attempts, &clean(error), *next_at],
        ).await,
    }
    .map(|_| ())
}

/// The documents of every raise told and not yet cleared (Alertmanager's
/// minutely refresh), one per alarm.
pub async fn active_told(db: Conn<'_>) -> Result<Vec<Value>, SqlError> {
    let rows = db
        .rows(
            "SELECT payload FROM outbox o WHERE kind = 'raise' AND state = 'sent'
           AND EXISTS (SELECT 1 FROM alarms a WHERE a.serial = o.serial AND a.cleared_at IS NULL)",
            &[],
        )
        .await?;
    let mut out: Vec<Value> = Vec::new();
    for p in rows {
        if let Ok(v) = serde_json::from_str(&p.get::<String>(0)?) {
            out.push(v);
        }
    }
    out.sort_by_key(|d| d["serial"].as_u64());
    out.dedup_by_key(|d| d["serial"].as_u64());
    Ok(out)
}

/// How long a node's claim on outbox rows keeps other nodes off them: far
/// longer than one delivery round (every channel has a timeout below it).
const CLAIM_SECS: i64 = 120;

/// Notifications due now, the oldest first; for each alarm and channel only
/// the first undelivered one, so a clear never overtakes its raise.
///
/// In a cluster (`claim`: this node and the lease in seconds), the rows
/// are claimed for [`CLAIM_SECS`] by the database's clock, skipping rows
/// another node is claiming at this moment (`SKIP LOCKED`) or holds a live
/// claim on. The claim of a node no longer live (not seen within a lease,
/// or gone cleanly) counts for nothing: its rows are sent again at once,
/// with the same idempotency key.
pub async fn due(
    db: Conn<'_>,
    now: i64,
    limit: usize,
    claim: Option<(&str, f64)>,
) -> Result<Vec<Row>, SqlError> {
    let rows = match claim {
        None => db.rows(
            "SELECT id, channel, key, kind, payload, attempts FROM outbox o
             WHERE state = 'pending' AND next_at <= $1
               AND NOT EXISTS (SELECT 1 FROM outbox e WHERE e.channel = o.channel AND e.serial = o.serial
                               AND e.state = 'pending' AND e.id < o.id)
             ORDER BY id LIMIT $2",
            args![now, limit],
        ).await?,
        Some((node, lease_s)) => db.rows(
            "UPDATE outbox SET claimed_by = $3, claim_until = now() + make_interval(secs => $4)
             WHERE id IN (
                 SELECT id FROM outbox o
                 WHERE state = 'pending' AND next_at <= $1
                   AND (claim_until IS NULL OR claim_until < now() OR claimed_by = $3
                        OR NOT EXISTS (SELECT 1 FROM cluster_nodes n WHERE n.node = o.claimed_by
                                         AND NOT n.leaving AND n.seen_at > now() - make_interval(secs => $5)))
                   AND NOT EXISTS (SELECT 1 FROM outbox e WHERE e.channel = o.channel AND e.serial = o.serial
                                   AND e.state = 'pending' AND e.id < o.id)
                 ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED)
             RETURNING id, channel, key, kind, payload, attempts",
            args![now, limit, node, CLAIM_SECS as f64, lease_s],
        ).await?,
    };
    let mut rows: Vec<Row> = rows
        .iter()
        .map(|r| {
            Ok(Row {
                id: r.get(0)?,
                channel: r.get(1)?,
                key: r.get(2)?,
                kind: r.get(3)?,
                payload: r.get(4)?,
                attempts: r.get(5)?,
            })
        })
        .collect::<Result<_, SqlError>>()?;
    rows.sort_by_key(|r| r.id);
    Ok(rows)
}

/// Outbox rows by state, for the API.
pub async fn list(db: Conn<'_>, state: Option<&str>, limit: usize) -> Result<Vec<Value>, SqlError> {
    let rows = db.rows(
        "SELECT id, channel, key, serial, kind, state, attempts, next_at, last_error, created_at, sent_at
         FROM outbox WHERE (CAST($1 AS TEXT) IS NULL OR state = $1) ORDER BY id DESC LIMIT $2",
        args![state, limit],
    ).await?;
    rows.iter()
        .map(|r| {
            Ok(json!({
                "id": r.get::<i64>(0)?,
                "channel": r.get::<String>(1)?,
                "key": r.get::<String>(2)?,
                "serial": r.get::<i64>(3)?,
                "kind": r.get::<String>(4)?,
                "state": r.get::<String>(5)?,
                "attempts": r.get::<i64>(6)?,
                "next_at": r.get::<i64>(7)?,
                "last_error": r.get::<Option<String>>(8)?,
                "created_at": r.get::<i64>(9)?,
                "sent_at": r.get::<Option<i64>>(10)?,
            }))
        })
        .collect()
}

/// The newest `limit` notifications delivered to `channel`: (id, channel,
/// sent at, document).
pub async fn sent_to(
    db: Conn<'_>,
    channel: &str,
    limit: usize,
) -> Result<Vec<(i64, String, i64, Value)>, SqlError> {
    let rows = db
        .rows(
            "SELECT id, channel, sent_at, payload FROM outbox
             WHERE channel = $1 AND state = 'sent' ORDER BY id DESC LIMIT $2",
            args![channel, limit],
        )
        .await?;
    rows.iter()
        .map(|r| {
            let payload: String = r.get(3)?;
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get::<Option<i64>>(2)?.unwrap_or_default(),
                serde_json::from_str(&payload).unwrap_or(Value::Null),
            ))
        })
        .collect()
}

/// Puts a dead letter back in the queue (after the receiver is fixed).
/// Not when a later notification of the same alarm reached the channel:
/// sent now, an old raise would arrive after its clear.
pub async fn retry_dead(db: Conn<'_>, id: i64, now: i64) -> Result<bool, SqlError> {
    let n = db.exec(
        "UPDATE outbox SET state = 'pending', attempts = 0, next_at = $2 WHERE id = $1 AND state = 'dead'
           AND NOT EXISTS (SELECT 1 FROM outbox l WHERE l.serial = outbox.serial AND l.channel = outbox.channel
                           AND l.id > outbox.id AND l.state = 'sent')",
        args![id, now],
    ).await?;
    Ok(n == 1)
}

/// Queues a notification that is not an alarm's (an overdue hazard: a
/// negative serial) once per (channel, key); how many rows were added.
pub async fn enqueue(
    db: Conn<'_>,
    (channel, key): (&str, &str),
    serial: i64,
    kind: &str,
    payload: &str,
    now: i64,
) -> Result<usize, SqlError> {
    Ok(db
        .exec(
            "INSERT INTO outbox (channel, key, serial, kind, payload, next_at, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $6) ON CONFLICT DO NOTHING",
            args![channel, key, serial, kind, payload, now],
        )
        .await? as usize)
}
