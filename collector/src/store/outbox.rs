//! The notification outbox in the SQLite store: rows due for delivery, their
//! outcomes, the API's listing and the dead-letter retry. Rows are written by
//! the alarm record in the transaction of the transition they tell
//! (`store/alarms.rs`); the delivery loop (`alarm/notify/`) only reads and
//! settles them here.

use rusqlite::{params, Connection};
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
pub fn settle(
    conn: &Connection,
    row: &Row,
    outcome: &Outcome,
    now: i64,
) -> Result<(), rusqlite::Error> {
    let attempts = row.attempts + 1;
    match outcome {
        Outcome::Sent => conn.execute(
            "UPDATE outbox SET state = 'sent', sent_at = ?2, attempts = attempts + 1, last_error = NULL WHERE id = ?1",
            params![row.id, now],
        ),
        Outcome::Dead { error } => conn.execute(
            "UPDATE outbox SET state = 'dead', attempts = ?2, last_error = ?3 WHERE id = ?1",
            params![row.id, attempts, error],
        ),
        Outcome::Retry { error, next_at } => conn.execute(
            "UPDATE outbox SET attempts = ?2, last_error = ?3, next_at = ?4 WHERE id = ?1",
            params![row.id, attempts, error, next_at],
        ),
    }
    .map(|_| ())
}

/// The documents of every raise told and not yet cleared (Alertmanager's
/// minutely refresh), one per alarm.
pub fn active_told(conn: &Connection) -> Result<Vec<Value>, rusqlite::Error> {
    let mut st = conn.prepare_cached(
        "SELECT payload FROM outbox o WHERE kind = 'raise' AND state = 'sent'
           AND EXISTS (SELECT 1 FROM alarms a WHERE a.serial = o.serial AND a.cleared_at IS NULL)",
    )?;
    let rows = st.query_map([], |r| r.get::<_, String>(0))?;
    let mut out: Vec<Value> = Vec::new();
    for p in rows {
        if let Ok(v) = serde_json::from_str(&p?) {
            out.push(v);
        }
    }
    out.sort_by_key(|d| d["serial"].as_u64());
    out.dedup_by_key(|d| d["serial"].as_u64());
    Ok(out)
}

/// Notifications due now, the oldest first; for each alarm and channel only
/// the first undelivered one, so a clear never overtakes its raise.
pub fn due(conn: &Connection, now: i64, limit: usize) -> Result<Vec<Row>, rusqlite::Error> {
    let mut st = conn.prepare_cached(
        "SELECT id, channel, key, kind, payload, attempts FROM outbox o
         WHERE state = 'pending' AND next_at <= ?1
           AND NOT EXISTS (SELECT 1 FROM outbox e WHERE e.channel = o.channel AND e.serial = o.serial
                           AND e.state = 'pending' AND e.id < o.id)
         ORDER BY id LIMIT ?2",
    )?;
    let rows = st.query_map(params![now, limit as i64], |r| {
        Ok(Row {
            id: r.get(0)?,
            channel: r.get(1)?,
            key: r.get(2)?,
            kind: r.get(3)?,
            payload: r.get(4)?,
            attempts: r.get(5)?,
        })
    })?;
    rows.collect()
}

/// Outbox rows by state, for the API.
pub fn list(
    conn: &Connection,
    state: Option<&str>,
    limit: usize,
) -> Result<Vec<Value>, rusqlite::Error> {
    let mut st = conn.prepare(
        "SELECT id, channel, key, serial, kind, state, attempts, next_at, last_error, created_at, sent_at
         FROM outbox WHERE (?1 IS NULL OR state = ?1) ORDER BY id DESC LIMIT ?2",
    )?;
    let rows = st.query_map(params![state, limit as i64], |r| {
        Ok(json!({
            "id": r.get::<_, i64>(0)?,
            "channel": r.get::<_, String>(1)?,
            "key": r.get::<_, String>(2)?,
            "serial": r.get::<_, i64>(3)?,
            "kind": r.get::<_, String>(4)?,
            "state": r.get::<_, String>(5)?,
            "attempts": r.get::<_, i64>(6)?,
            "next_at": r.get::<_, i64>(7)?,
            "last_error": r.get::<_, Option<String>>(8)?,
            "created_at": r.get::<_, i64>(9)?,
            "sent_at": r.get::<_, Option<i64>>(10)?,
        }))
    })?;
    rows.collect()
}

/// Puts a dead letter back in the queue (after the receiver is fixed).
/// Not when a later notification of the same alarm reached the channel:
/// sent now, an old raise would arrive after its clear.
pub fn retry_dead(conn: &Connection, id: i64, now: i64) -> Result<bool, rusqlite::Error> {
    let n = conn.execute(
        "UPDATE outbox SET state = 'pending', attempts = 0, next_at = ?2 WHERE id = ?1 AND state = 'dead'
           AND NOT EXISTS (SELECT 1 FROM outbox l WHERE l.serial = outbox.serial AND l.channel = outbox.channel
                           AND l.id > outbox.id AND l.state = 'sent')",
        params![id, now],
    )?;
    Ok(n == 1)
}

/// Queues a notification that is not an alarm's (an overdue hazard: a
/// negative serial) once per (channel, key); how many rows were added.
pub fn enqueue(
    c: &Connection,
    (channel, key): (&str, &str),
    serial: i64,
    kind: &str,
    payload: &str,
    now: i64,
) -> Result<usize, rusqlite::Error> {
    c.execute(
        "INSERT INTO outbox (channel, key, serial, kind, payload, next_at, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6) ON CONFLICT DO NOTHING",
        params![channel, key, serial, kind, payload, now],
    )
}
