//! Patrol records in the store, either backend (append-only: triggers refuse changes),
//! with their photos, and the catalogue and alarm reads a patrol is built
//! from. What a patrol says is decided in `inspection/patrol.rs`.

use crate::args;
use crate::inspection::patrol::{sha256_hex, Filter};
use crate::inspection::InspectionError;
use crate::store::sql::{Db, SqlError};
use serde_json::{json, Value};

/// Rooms known to the catalogue, as (site, room).
pub fn rooms(c: Db<'_>, site: Option<&str>) -> Result<Vec<(String, String)>, InspectionError> {
    let rows = c.rows(
        "SELECT DISTINCT site, room FROM points WHERE room <> '' AND (CAST($1 AS TEXT) IS NULL OR site = $1)
         ORDER BY site, room",
        args![site],
    )?;
    rows.iter().map(|r| Ok((r.get(0)?, r.get(1)?))).collect()
}
/// When a room's first reading was taken (event time where its rollups
/// know it, else when the collector first saw it): no patrol is due before.
pub fn room_first_reading(c: Db<'_>, site: &str, room: &str) -> Result<Option<i64>, SqlError> {
    c.value(
        "SELECT MIN(t) FROM (
           SELECT first_seen AS t FROM points WHERE site = $1 AND room = $2
           UNION ALL
           SELECT (SELECT MIN(bucket) FROM rollup_1m r WHERE r.point_id = p.id)
           FROM points p WHERE site = $1 AND room = $2) AS firsts",
        args![site, room],
    )
}
/// The room's alarms still active, most severe first (none with alarms off).
pub fn active_alarms(c: Db<'_>, site: &str, room: &str) -> Result<Vec<Value>, SqlError> {
    if !c.has_table("alarms")? {
        return Ok(Vec::new());
    }
    let rows = c.rows(
        "SELECT serial, rule, name, level, raised_at, ack_at, inhibited FROM alarms
         WHERE site = $1 AND room = $2 AND cleared_at IS NULL ORDER BY level, raised_at",
        args![site, room],
    )?;
    rows.iter()
        .map(|r| {
            Ok(json!({
                "serial": r.get::<i64>(0)?, "rule": r.get::<String>(1)?,
                "name": r.get::<String>(2)?, "level": r.get::<i64>(3)?,
                "raised_at": r.get::<i64>(4)?, "acknowledged": r.get::<Option<i64>>(5)?.is_some(),
                "inhibited": r.get::<bool>(6)?,
            }))
        })
        .collect()
}
/// Writes a record; `false` when one of this kind, room and slot exists.
#[allow(clippy::too_many_arguments)]
pub fn write(
    c: Db<'_>,
    site: &str,
    room: &str,
    kind: &str,
    slot: i64,
    at: i64,
    by: &str,
    record: &Value,
) -> Result<Option<i64>, InspectionError> {
    let text = record.to_string();
    let digest = sha256_hex(text.as_bytes());
    let row = c.row(
        "INSERT INTO patrols (site, room, kind, slot, at, by, period_from, period_to, record, digest)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING RETURNING id",
        args![
            site,
            room,
            kind,
            slot,
            at,
            by,
            record["period_from"].as_i64().unwrap_or(slot),
            record["period_to"].as_i64().unwrap_or(slot),
            &text,
            &digest
        ],
    )?;
    Ok(row.map(|r| r.get(0)).transpose()?)
}
/// Records in a period, newest first, with their summaries (not the whole record).
pub fn list(c: Db<'_>, f: &Filter, limit: u32) -> Result<Vec<Value>, InspectionError> {
    // The summary as JSON text, taken out of the record by the database.
    let summary = if c.is_postgres() {
        "(record::jsonb -> 'summary')::text"
    } else {
        "json_extract(record, '$.summary')"
    };
    let rows = c.rows(
        &format!(
            "SELECT id, site, room, kind, slot, at, by, period_from, period_to, {summary}, digest
             FROM patrols WHERE (CAST($1 AS TEXT) IS NULL OR site = $1) AND (CAST($2 AS TEXT) IS NULL OR room = $2)
               AND (CAST($3 AS TEXT) IS NULL OR kind = $3) AND slot >= $4 AND slot < $5
             ORDER BY slot DESC, id DESC LIMIT $6"
        ),
        args![&f.site, &f.room, &f.kind, f.from, f.to, limit],
    )?;
    rows.iter()
        .map(|r| {
            let summary: Option<String> = r.get(9)?;
            Ok(json!({
                "id": r.get::<i64>(0)?, "site": r.get::<String>(1)?, "room": r.get::<String>(2)?,
                "kind": r.get::<String>(3)?, "slot": r.get::<i64>(4)?, "at": r.get::<i64>(5)?,
                "by": r.get::<String>(6)?, "period_from": r.get::<i64>(7)?,
                "period_to": r.get::<i64>(8)?,
                "summary": summary.and_then(|s| serde_json::from_str::<Value>(&s).ok()),
                "digest": r.get::<String>(10)?,
            }))
        })
        .collect()
}
/// One record, whole, with its id, author and digest.
pub fn get(c: Db<'_>, id: i64) -> Result<Value, InspectionError> {
    let r = c
        .row(
            "SELECT record, at, by, digest FROM patrols WHERE id = $1",
            args![id],
        )?
        .ok_or(InspectionError::NotFound(format!("no patrol {id}")))?;
    let row: (String, i64, String, String) = (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
    let mut v: Value = serde_json::from_str(&row.0)
        .map_err(|e| InspectionError::Invalid(format!("patrol {id}: unreadable record: {e}")))?;
    v["id"] = json!(id);
    v["at"] = json!(row.1);
    v["by"] = json!(row.2);
    v["digest"] = json!(row.3);
    v["digest_ok"] = json!(sha256_hex(row.0.as_bytes()) == row.3);
    Ok(v)
}
/// Photo `n` (0-based) of a patrol: (content type, bytes).
pub fn photo(c: Db<'_>, id: i64, n: i64) -> Result<(String, Vec<u8>), InspectionError> {
    let r = c
        .row(
            "SELECT content_type, data FROM patrol_photos WHERE patrol = $1 ORDER BY id LIMIT 1 OFFSET $2",
            args![id, n],
        )?
        .ok_or(InspectionError::NotFound(format!("patrol {id} has no photo {n}")))?;
    Ok((r.get(0)?, r.get(1)?))
}

/// A catalogued point of a room, as a patrol judges it.
pub struct RoomPoint {
    pub id: i64,
    pub point: String,
    pub device: String,
    pub quantity: String,
    pub unit: String,
    pub last_ts: Option<i64>,
    pub value: Option<f64>,
    pub text: Option<String>,
    pub bad: Option<String>,
    pub first_seen: i64,
}

/// A room's points with their latest readings, by device and point.
pub fn room_points(c: Db<'_>, site: &str, room: &str) -> Result<Vec<RoomPoint>, SqlError> {
    let rows = c.rows(
        "SELECT id, point, device, quantity, unit, last_ts, last_value, last_text, last_bad, first_seen
         FROM points WHERE site = $1 AND room = $2 ORDER BY device, point",
        args![site, room],
    )?;
    rows.iter()
        .map(|r| {
            Ok(RoomPoint {
                id: r.get(0)?,
                point: r.get(1)?,
                device: r.get(2)?,
                quantity: r.get(3)?,
                unit: r.get(4)?,
                last_ts: r.get(5)?,
                value: r.get(6)?,
                text: r.get(7)?,
                bad: r.get(8)?,
                first_seen: r.get(9)?,
            })
        })
        .collect()
}

/// Whether the catalogue knows `room` at `site`.
pub fn room_known(c: Db<'_>, site: &str, room: &str) -> Result<bool, SqlError> {
    c.value(
        "SELECT EXISTS (SELECT 1 FROM points WHERE site = $1 AND room = $2)",
        args![site, room],
    )
}

/// Bytes of photos `by` has added to patrols since `since`.
pub fn photo_bytes_since(c: Db<'_>, by: &str, since: i64) -> Result<i64, SqlError> {
    c.value(
        "SELECT CAST(COALESCE(SUM(length(f.data)), 0) AS BIGINT) FROM patrol_photos f
         JOIN patrols p ON p.id = f.patrol WHERE p.by = $1 AND p.at > $2",
        args![by, since],
    )
}

/// A photo to keep with a record: (name, content type, SHA-256 hex, bytes).
pub type PhotoRow = (String, String, String, Vec<u8>);

/// Writes a walk-through and its photos in the caller's transaction; its
/// id, or a conflict when a record of this room by this time exists.
#[allow(clippy::too_many_arguments)]
pub fn write_manual(
    c: Db<'_>,
    site: &str,
    room: &str,
    by: &str,
    now: i64,
    record: &Value,
    photos: &[PhotoRow],
) -> Result<i64, InspectionError> {
    let id = write(c, site, room, "manual", now, now, by, record)?.ok_or_else(|| {
        InspectionError::Conflict("a patrol of this room by this time exists; try again".into())
    })?;
    for (name, content_type, hash, data) in photos {
        c.exec(
            "INSERT INTO patrol_photos (patrol, name, content_type, data, sha256) VALUES ($1, $2, $3, $4, $5)",
            args![id, name, content_type, data, hash],
        )?;
    }
    Ok(id)
}

/// Whether the automatic patrol of a room at `slot` is written.
pub fn auto_done(c: Db<'_>, site: &str, room: &str, slot: i64) -> Result<bool, SqlError> {
    c.value(
        "SELECT EXISTS (SELECT 1 FROM patrols WHERE site = $1 AND room = $2 AND kind = 'auto' AND slot = $3)",
        args![site, room, slot],
    )
}

/// Whether minutes of a room in `[from, to)` still wait to be rolled up
/// (a backlog being stored).
pub fn rollups_pending(
    c: Db<'_>,
    site: &str,
    room: &str,
    from: i64,
    to: i64,
) -> Result<bool, SqlError> {
    c.value(
        "SELECT EXISTS (SELECT 1 FROM rollup_dirty d JOIN points p ON p.id = d.point_id
                        WHERE p.site = $1 AND p.room = $2 AND d.bucket >= $3 AND d.bucket < $4)",
        args![site, room, from, to],
    )
}
