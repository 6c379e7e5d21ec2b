//! The reads a safety report is made of, in the store (either backend): alarms of a
//! period, the longest open, the catalogue's points with a room, hazard
//! counts and patrols done. The figures are worked out in
//! `inspection/report.rs`.

use crate::args;
use crate::inspection::report::Hazards;
use crate::store::sql::{Db, SqlError};

/// What the report needs of one alarm raised in the period.
pub struct AlarmTimes {
    pub level: u8,
    pub category: String,
    pub raised_at: i64,
    pub ack_at: Option<i64>,
    pub cleared_at: Option<i64>,
    pub inhibited: bool,
}

/// Alarms raised in `[from, to)`, at `site` or everywhere.
pub fn alarm_times(
    c: Db<'_>,
    site: Option<&str>,
    from: i64,
    to: i64,
) -> Result<Vec<AlarmTimes>, SqlError> {
    let rows = c.rows(
        "SELECT level, category, raised_at, ack_at, cleared_at, inhibited FROM alarms
         WHERE raised_at >= $1 AND raised_at < $2 AND (CAST($3 AS TEXT) IS NULL OR site = $3)
           AND drill IS NULL",
        args![from, to, site],
    )?;
    rows.iter()
        .map(|r| {
            Ok(AlarmTimes {
                level: r.get(0)?,
                category: r.get(1)?,
                raised_at: r.get(2)?,
                ack_at: r.get(3)?,
                cleared_at: r.get(4)?,
                inhibited: r.get(5)?,
            })
        })
        .collect()
}

/// An alarm of the period with how long it stayed open.
pub struct OpenAlarm {
    pub serial: i64,
    pub rule: String,
    pub name: String,
    pub level: u8,
    pub site: String,
    pub room: String,
    pub raised_at: i64,
    pub cleared_at: Option<i64>,
    pub open_ms: i64,
}

/// The `limit` alarms raised in `[from, to)` that stayed open longest,
/// counting those still open until `until`.
pub fn longest_open(
    c: Db<'_>,
    site: Option<&str>,
    (from, to, until): (i64, i64, i64),
    limit: u32,
) -> Result<Vec<OpenAlarm>, SqlError> {
    let rows = c.rows(
        "SELECT serial, rule, name, level, site, room, raised_at, cleared_at,
                COALESCE(cleared_at, $4) - raised_at AS open_ms
         FROM alarms WHERE raised_at >= $1 AND raised_at < $2 AND (CAST($3 AS TEXT) IS NULL OR site = $3)
           AND drill IS NULL
         ORDER BY open_ms DESC, serial LIMIT $5",
        args![from, to, site, until, limit],
    )?;
    rows.iter()
        .map(|r| {
            Ok(OpenAlarm {
                serial: r.get(0)?,
                rule: r.get(1)?,
                name: r.get(2)?,
                level: r.get(3)?,
                site: r.get(4)?,
                room: r.get(5)?,
                raised_at: r.get(6)?,
                cleared_at: r.get(7)?,
                open_ms: r.get(8)?,
            })
        })
        .collect()
}

/// A catalogued point with a room.
pub struct PointRow {
    pub id: i64,
    pub site: String,
    pub room: String,
    pub point: String,
    pub device: String,
    pub quantity: String,
    pub first_seen: i64,
}

/// Points with a room, in existence before `to`.
pub fn points(c: Db<'_>, site: Option<&str>, to: i64) -> Result<Vec<PointRow>, SqlError> {
    let rows = c.rows(
        "SELECT id, site, room, point, device, quantity, first_seen FROM points
         WHERE room <> '' AND first_seen < $1 AND (CAST($2 AS TEXT) IS NULL OR site = $2)
         ORDER BY site, room, point",
        args![to, site],
    )?;
    rows.iter()
        .map(|r| {
            Ok(PointRow {
                id: r.get(0)?,
                site: r.get(1)?,
                room: r.get(2)?,
                point: r.get(3)?,
                device: r.get(4)?,
                quantity: r.get(5)?,
                first_seen: r.get(6)?,
            })
        })
        .collect()
}

/// The first hourly rollup bucket of a point (its first reading by event time).
pub fn first_hour(c: Db<'_>, point_id: i64) -> Result<Option<i64>, SqlError> {
    c.value(
        "SELECT MIN(bucket) FROM rollup_1h WHERE point_id = $1",
        args![point_id],
    )
}

/// Hazards found, closed, overdue and open in `[from, to)` (proposals and
/// dismissed ones are not hazards).
pub fn hazard_counts(
    c: Db<'_>,
    site: Option<&str>,
    from: i64,
    to: i64,
) -> Result<Hazards, SqlError> {
    let r = c
        .row(
            "SELECT
               COUNT(*) FILTER (WHERE found_at >= $1 AND found_at < $2),
               COUNT(*) FILTER (WHERE found_at >= $1 AND found_at < $2 AND grade = 'major'),
               COUNT(*) FILTER (WHERE status = 'closed' AND closed_at >= $1 AND closed_at < $2),
               COUNT(*) FILTER (WHERE deadline IS NOT NULL AND deadline < $2
                                  AND (closed_at IS NULL OR closed_at > deadline)
                                  AND (closed_at IS NULL OR closed_at >= $1)),
               COUNT(*) FILTER (WHERE found_at < $2 AND (closed_at IS NULL OR closed_at >= $2)),
               COUNT(*) FILTER (WHERE found_at < $2 AND (closed_at IS NULL OR closed_at >= $2)
                                  AND grade = 'major')
             FROM hazards
             WHERE status NOT IN ('proposed', 'dismissed') AND (CAST($3 AS TEXT) IS NULL OR site = $3)",
            args![from, to, site],
        )?
        .ok_or(SqlError::Column {
            index: 0,
            wanted: "a row of counts",
            found: "no row",
        })?;
    Ok(Hazards {
        opened: r.get(0)?,
        opened_major: r.get(1)?,
        closed: r.get(2)?,
        overdue: r.get(3)?,
        open_at_end: r.get(4)?,
        open_major_at_end: r.get(5)?,
    })
}

/// Automatic and manual patrol records of a room with slots in `[from, to)`.
pub fn patrols_done(
    c: Db<'_>,
    (site, room): (&str, &str),
    from: i64,
    to: i64,
) -> Result<(i64, i64), SqlError> {
    let r = c.row(
        "SELECT COUNT(*) FILTER (WHERE kind = 'auto'), COUNT(*) FILTER (WHERE kind = 'manual')
         FROM patrols WHERE site = $1 AND room = $2 AND slot >= $3 AND slot < $4",
        args![site, room, from, to],
    )?;
    match r {
        Some(r) => Ok((r.get(0)?, r.get(1)?)),
        None => Ok((0, 0)),
    }
}
