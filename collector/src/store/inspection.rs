//! The inspection round's storage: rollup buckets as the patrols and
//! reports judge them, drills, and the round's own state. Every statement
//! runs on either backend (`store/sql.rs`).

use crate::args;
use crate::inspection::figures::Bucket;
use crate::inspection::{InspectionError, NewDrill};
use crate::store::sql::{Db, SqlError};
use serde_json::{json, Value};

/// A rollup tier to read.
#[derive(Debug, Clone, Copy)]
pub enum Tier {
    Minute,
    Hour,
}
/// A point's rollup buckets of `tier` in `[from, to)`, oldest first.
pub fn rollups(
    c: Db<'_>,
    tier: Tier,
    point_id: i64,
    from: i64,
    to: i64,
) -> Result<Vec<Bucket>, SqlError> {
    let sql = match tier {
        Tier::Minute => "SELECT bucket, n, min, max FROM rollup_1m WHERE point_id = $1 AND bucket >= $2 AND bucket < $3 ORDER BY bucket",
        Tier::Hour => "SELECT bucket, n, min, max FROM rollup_1h WHERE point_id = $1 AND bucket >= $2 AND bucket < $3 ORDER BY bucket",
    };
    c.rows(sql, args![point_id, from, to])?
        .iter()
        .map(|r| {
            Ok(Bucket {
                start: r.get(0)?,
                n: r.get(1)?,
                min: r.get(2)?,
                max: r.get(3)?,
            })
        })
        .collect()
}
pub fn record_drill(
    c: Db<'_>,
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
    let id: i64 = c.value(
        "INSERT INTO drills (site, room, scenario, started_at, ended_at, by, note)
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        args![
            &d.site,
            &d.room,
            &d.scenario,
            started_at,
            ended_at,
            by,
            &d.note
        ],
    )?;
    Ok(
        json!({"id": id, "site": d.site, "room": d.room, "scenario": d.scenario,
              "started_at": started_at, "ended_at": ended_at, "by": by, "note": d.note}),
    )
}
pub fn drills(
    c: Db<'_>,
    site: Option<&str>,
    from: i64,
    to: i64,
) -> Result<Vec<Value>, InspectionError> {
    let rows = c.rows(
        "SELECT id, site, room, scenario, started_at, ended_at, by, note FROM drills
         WHERE (CAST($1 AS TEXT) IS NULL OR site = $1) AND started_at >= $2 AND started_at < $3
         ORDER BY started_at",
        args![site, from, to],
    )?;
    rows.iter()
        .map(|r| {
            Ok(json!({
                "id": r.get::<i64>(0)?, "site": r.get::<String>(1)?,
                "room": r.get::<String>(2)?, "scenario": r.get::<String>(3)?,
                "started_at": r.get::<i64>(4)?, "ended_at": r.get::<Option<i64>>(5)?,
                "by": r.get::<String>(6)?, "note": r.get::<Option<String>>(7)?,
            }))
        })
        .collect()
}
/// A number kept between rounds (the last alarm looked at, …).
pub fn state_get(c: Db<'_>, key: &str) -> Result<Option<i64>, SqlError> {
    c.row(
        "SELECT value FROM inspection_state WHERE key = $1",
        args![key],
    )?
    .map(|r| r.get(0))
    .transpose()
}
pub fn state_set(c: Db<'_>, key: &str, value: i64) -> Result<(), SqlError> {
    c.exec(
        "INSERT INTO inspection_state (key, value) VALUES ($1, $2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        args![key, value],
    )?;
    Ok(())
}
/// Hazards are proposed from alarms raised once inspection is on, not from
/// a store's whole history (one upgraded with years of alarms): the first
/// round starts after the newest alarm. (`WHERE TRUE`: SQLite would read
/// `ON CONFLICT` after a bare `FROM` as a join's `ON`.)
pub fn start_proposals(c: Db<'_>) -> Result<(), SqlError> {
    if c.has_table("alarms")? {
        c.exec(
            "INSERT INTO inspection_state (key, value)
             SELECT 'proposed_after_serial', COALESCE(MAX(serial), 0) FROM alarms WHERE TRUE
             ON CONFLICT (key) DO NOTHING",
            &[],
        )?;
    }
    Ok(())
}
