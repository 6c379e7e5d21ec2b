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
/// The longest a declared drill may last: every alarm inside one is kept
/// out of the real counts, so a drill may not cover a day of real alarms.
pub const DRILL_MAX_MS: i64 = 4 * 3_600_000;

/// Declares a drill at `declared_at` (`ended_at`: its planned end; 30
/// minutes when not given). Alarms whose condition begins inside it, and
/// not before its declaration, are drill alarms; nothing already recorded
/// is relabelled, so a drill declared afterwards cannot hide real alarms.
pub fn record_drill(
    c: Db<'_>,
    d: &NewDrill,
    (started_at, ended_at): (i64, Option<i64>),
    by: &str,
    declared_at: i64,
) -> Result<Value, InspectionError> {
    if d.site.trim().is_empty() || d.scenario.trim().is_empty() {
        return Err(InspectionError::Invalid(
            "site and scenario must be given".into(),
        ));
    }
    let ended_at = ended_at.unwrap_or(started_at + crate::store::schema::DRILL_DEFAULT_MS);
    if ended_at <= started_at {
        return Err(InspectionError::Invalid(
            "ended_at: not after started_at".into(),
        ));
    }
    if ended_at - started_at > DRILL_MAX_MS {
        return Err(InspectionError::Invalid(format!(
            "ended_at: a drill lasts at most {} hours (alarms inside it are kept out of the real counts)",
            DRILL_MAX_MS / 3_600_000
        )));
    }
    let id: i64 = c.value(
        "INSERT INTO drills (site, room, scenario, started_at, ended_at, by, note, declared_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
        args![
            &d.site,
            &d.room,
            &d.scenario,
            started_at,
            ended_at,
            by,
            &d.note,
            declared_at
        ],
    )?;
    drill(c, id)
}

/// Ends drill `id` at `now` if it is still running; its end stays where it
/// was if it has already passed.
pub fn end_drill(c: Db<'_>, id: i64, now: i64) -> Result<Value, InspectionError> {
    c.exec(
        "UPDATE drills SET ended_at = $2 WHERE id = $1 AND ended_at > $2 AND started_at <= $2",
        args![id, now],
    )?;
    drill(c, id)
}

pub fn drill(c: Db<'_>, id: i64) -> Result<Value, InspectionError> {
    let r = c.row(&format!("{DRILL_SELECT} WHERE d.id = $1"), args![id])?;
    match r {
        Some(r) => drill_json(&r),
        None => Err(InspectionError::NotFound(format!("no drill with id {id}"))),
    }
}

/// A drill with what its alarms show: how many, the worst level, how long
/// from its start to the first alarm, and from that to the first
/// acknowledgement.
const DRILL_SELECT: &str =
    "SELECT d.id, d.site, d.room, d.scenario, d.started_at, d.ended_at, d.by, d.note,
        (SELECT count(*) FROM alarms a WHERE a.drill = d.id),
        (SELECT min(a.level) FROM alarms a WHERE a.drill = d.id),
        (SELECT min(a.raised_at) FROM alarms a WHERE a.drill = d.id),
        (SELECT min(a.ack_at) FROM alarms a WHERE a.drill = d.id)
    FROM drills d";

fn drill_json(r: &crate::store::sql::Row) -> Result<Value, InspectionError> {
    let started: i64 = r.get(4)?;
    let first: Option<i64> = r.get(10)?;
    let ack: Option<i64> = r.get(11)?;
    let secs = |ms: i64| (ms.max(0) as f64 / 1000.0).round() as i64;
    Ok(json!({
        "id": r.get::<i64>(0)?, "site": r.get::<String>(1)?,
        "room": r.get::<String>(2)?, "scenario": r.get::<String>(3)?,
        "started_at": started, "ended_at": r.get::<i64>(5)?,
        "by": r.get::<String>(6)?, "note": r.get::<Option<String>>(7)?,
        "alarms": r.get::<i64>(8)?,
        "worst_level": r.get::<Option<i64>>(9)?,
        "first_alarm_s": first.map(|f| secs(f - started)),
        "first_ack_s": first.zip(ack).map(|(f, a)| secs(a - f)),
    }))
}

pub fn drills(
    c: Db<'_>,
    site: Option<&str>,
    from: i64,
    to: i64,
) -> Result<Vec<Value>, InspectionError> {
    let rows = c.rows(
        &format!(
            "{DRILL_SELECT}
             WHERE (CAST($1 AS TEXT) IS NULL OR d.site = $1) AND d.started_at >= $2 AND d.started_at < $3
             ORDER BY d.started_at"
        ),
        args![site, from, to],
    )?;
    rows.iter().map(drill_json).collect()
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
