//! The inspection round's storage in the SQLite store: rollup buckets as the
//! patrols and reports judge them, drills, and the round's own state.

use crate::inspection::figures::Bucket;
use crate::inspection::{InspectionError, NewDrill};
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::{json, Value};

/// A rollup tier to read.
#[derive(Debug, Clone, Copy)]
pub enum Tier {
    Minute,
    Hour,
}
/// A point's rollup buckets of `tier` in `[from, to)`, oldest first.
pub fn rollups(
    c: &Connection,
    tier: Tier,
    point_id: i64,
    from: i64,
    to: i64,
) -> Result<Vec<Bucket>, rusqlite::Error> {
    let sql = match tier {
        Tier::Minute => "SELECT bucket, n, min, max FROM rollup_1m WHERE point_id = ?1 AND bucket >= ?2 AND bucket < ?3 ORDER BY bucket",
        Tier::Hour => "SELECT bucket, n, min, max FROM rollup_1h WHERE point_id = ?1 AND bucket >= ?2 AND bucket < ?3 ORDER BY bucket",
    };
    let mut st = c.prepare_cached(sql)?;
    let rows = st.query_map(params![point_id, from, to], |r| {
        Ok(Bucket {
            start: r.get(0)?,
            n: r.get(1)?,
            min: r.get(2)?,
            max: r.get(3)?,
        })
    })?;
    rows.collect()
}
pub fn record_drill(
    c: &Connection,
    d: &NewDrill,
    started_at: i64,
    ended_at: Option<i64>,
    by: &str,
) -> Result<Value, InspectionError> {
    if d.site.trim().is_empty() || d.scenario.trim().is_empty() {
        return Err(InspectionError::Invalid(
            "site and scenario must be given".into(),
        ));
    }
    if ended_at.is_some_and(|e| e < started_at) {
        return Err(InspectionError::Invalid(
            "ended_at: before started_at".into(),
        ));
    }
    c.execute(
        "INSERT INTO drills (site, room, scenario, started_at, ended_at, by, note)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![d.site, d.room, d.scenario, started_at, ended_at, by, d.note],
    )?;
    let id = c.last_insert_rowid();
    Ok(
        json!({"id": id, "site": d.site, "room": d.room, "scenario": d.scenario,
              "started_at": started_at, "ended_at": ended_at, "by": by, "note": d.note}),
    )
}
pub fn drills(
    c: &Connection,
    site: Option<&str>,
    from: i64,
    to: i64,
) -> Result<Vec<Value>, InspectionError> {
    let mut st = c.prepare_cached(
        "SELECT id, site, room, scenario, started_at, ended_at, by, note FROM drills
         WHERE (?1 IS NULL OR site = ?1) AND started_at >= ?2 AND started_at < ?3
         ORDER BY started_at",
    )?;
    let rows = st.query_map(params![site, from, to], |r| {
        Ok(json!({
            "id": r.get::<_, i64>(0)?, "site": r.get::<_, String>(1)?,
            "room": r.get::<_, String>(2)?, "scenario": r.get::<_, String>(3)?,
            "started_at": r.get::<_, i64>(4)?, "ended_at": r.get::<_, Option<i64>>(5)?,
            "by": r.get::<_, String>(6)?, "note": r.get::<_, Option<String>>(7)?,
        }))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
/// A number kept between rounds (the last alarm looked at, …).
pub fn state_get(c: &Connection, key: &str) -> Result<Option<i64>, rusqlite::Error> {
    c.query_row(
        "SELECT value FROM inspection_state WHERE key = ?1",
        [key],
        |r| r.get(0),
    )
    .optional()
}
pub fn state_set(c: &Connection, key: &str, value: i64) -> Result<(), rusqlite::Error> {
    c.execute(
        "INSERT INTO inspection_state (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )?;
    Ok(())
}
