//! Patrol records in the SQLite store (append-only: triggers refuse changes),
//! with their photos, and the catalogue and alarm reads a patrol is built
//! from. What a patrol says is decided in `inspection/patrol.rs`.

use crate::inspection::patrol::{sha256_hex, Filter};
use crate::inspection::InspectionError;
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::{json, Value};

/// Rooms known to the catalogue, as (site, room).
pub fn rooms(c: &Connection, site: Option<&str>) -> Result<Vec<(String, String)>, InspectionError> {
    let mut st = c.prepare_cached(
        "SELECT DISTINCT site, room FROM points WHERE room <> '' AND (?1 IS NULL OR site = ?1)
         ORDER BY site, room",
    )?;
    let rows = st.query_map([site], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}
/// When a room's first reading was taken (event time where its rollups
/// know it, else when the collector first saw it): no patrol is due before.
pub fn room_first_reading(
    c: &Connection,
    site: &str,
    room: &str,
) -> Result<Option<i64>, rusqlite::Error> {
    c.prepare_cached(
        "SELECT MIN(t) FROM (
           SELECT first_seen AS t FROM points WHERE site = ?1 AND room = ?2
           UNION ALL
           SELECT (SELECT MIN(bucket) FROM rollup_1m r WHERE r.point_id = p.id)
           FROM points p WHERE site = ?1 AND room = ?2)",
    )?
    .query_row(params![site, room], |r| r.get(0))
}
/// The room's alarms still active, most severe first (none with alarms off).
pub fn active_alarms(
    c: &Connection,
    site: &str,
    room: &str,
) -> Result<Vec<Value>, rusqlite::Error> {
    if !crate::store::sqlite::table_exists(c, "alarms")? {
        return Ok(Vec::new());
    }
    let mut st = c.prepare_cached(
        "SELECT serial, rule, name, level, raised_at, ack_at, inhibited FROM alarms
         WHERE site = ?1 AND room = ?2 AND cleared_at IS NULL ORDER BY level, raised_at",
    )?;
    let rows = st.query_map(params![site, room], |r| {
        Ok(json!({
            "serial": r.get::<_, i64>(0)?, "rule": r.get::<_, String>(1)?,
            "name": r.get::<_, String>(2)?, "level": r.get::<_, i64>(3)?,
            "raised_at": r.get::<_, i64>(4)?, "acknowledged": r.get::<_, Option<i64>>(5)?.is_some(),
            "inhibited": r.get::<_, bool>(6)?,
        }))
    })?;
    rows.collect()
}
/// Writes a record; `false` when one of this kind, room and slot exists.
#[allow(clippy::too_many_arguments)]
pub fn write(
    c: &Connection,
    site: &str,
    room: &str,
    kind: &str,
    slot: i64,
    at: i64,
    by: &str,
    record: &Value,
) -> Result<Option<i64>, InspectionError> {
    let text = record.to_string();
    let n = c.execute(
        "INSERT INTO patrols (site, room, kind, slot, at, by, period_from, period_to, record, digest)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) ON CONFLICT DO NOTHING",
        params![
            site,
            room,
            kind,
            slot,
            at,
            by,
            record["period_from"].as_i64().unwrap_or(slot),
            record["period_to"].as_i64().unwrap_or(slot),
            text,
            sha256_hex(text.as_bytes())
        ],
    )?;
    Ok((n == 1).then(|| c.last_insert_rowid()))
}
/// Records in a period, newest first, with their summaries (not the whole record).
pub fn list(c: &Connection, f: &Filter, limit: u32) -> Result<Vec<Value>, InspectionError> {
    let mut st = c.prepare_cached(
        "SELECT id, site, room, kind, slot, at, by, period_from, period_to, json_extract(record, '$.summary'), digest
         FROM patrols WHERE (?1 IS NULL OR site = ?1) AND (?2 IS NULL OR room = ?2)
           AND (?3 IS NULL OR kind = ?3) AND slot >= ?4 AND slot < ?5
         ORDER BY slot DESC, id DESC LIMIT ?6",
    )?;
    let rows = st.query_map(params![f.site, f.room, f.kind, f.from, f.to, limit], |r| {
        let summary: Option<String> = r.get(9)?;
        Ok(json!({
            "id": r.get::<_, i64>(0)?, "site": r.get::<_, String>(1)?, "room": r.get::<_, String>(2)?,
            "kind": r.get::<_, String>(3)?, "slot": r.get::<_, i64>(4)?, "at": r.get::<_, i64>(5)?,
            "by": r.get::<_, String>(6)?, "period_from": r.get::<_, i64>(7)?,
            "period_to": r.get::<_, i64>(8)?,
            "summary": summary.and_then(|s| serde_json::from_str::<Value>(&s).ok()),
            "digest": r.get::<_, String>(10)?,
        }))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
/// One record, whole, with its id, author and digest.
pub fn get(c: &Connection, id: i64) -> Result<Value, InspectionError> {
    let row = c
        .query_row(
            "SELECT record, at, by, digest FROM patrols WHERE id = ?1",
            [id],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                ))
            },
        )
        .optional()?
        .ok_or(InspectionError::NotFound(format!("no patrol {id}")))?;
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
pub fn photo(c: &Connection, id: i64, n: i64) -> Result<(String, Vec<u8>), InspectionError> {
    c.query_row(
        "SELECT content_type, data FROM patrol_photos WHERE patrol = ?1 ORDER BY id LIMIT 1 OFFSET ?2",
        params![id, n],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()?
    .ok_or(InspectionError::NotFound(format!("patrol {id} has no photo {n}")))
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
pub fn room_points(
    c: &Connection,
    site: &str,
    room: &str,
) -> Result<Vec<RoomPoint>, rusqlite::Error> {
    let mut st = c.prepare_cached(
        "SELECT id, point, device, quantity, unit, last_ts, last_value, last_text, last_bad, first_seen
         FROM points WHERE site = ?1 AND room = ?2 ORDER BY device, point",
    )?;
    let rows = st.query_map(params![site, room], |r| {
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
    })?;
    rows.collect()
}

/// Whether the catalogue knows `room` at `site`.
pub fn room_known(c: &Connection, site: &str, room: &str) -> Result<bool, rusqlite::Error> {
    c.query_row(
        "SELECT EXISTS (SELECT 1 FROM points WHERE site = ?1 AND room = ?2)",
        params![site, room],
        |r| r.get(0),
    )
}

/// Bytes of photos `by` has added to patrols since `since`.
pub fn photo_bytes_since(c: &Connection, by: &str, since: i64) -> Result<i64, rusqlite::Error> {
    c.query_row(
        "SELECT COALESCE(SUM(length(f.data)), 0) FROM patrol_photos f JOIN patrols p ON p.id = f.patrol
         WHERE p.by = ?1 AND p.at > ?2",
        params![by, since],
        |r| r.get(0),
    )
}

/// A photo to keep with a record: (name, content type, SHA-256 hex, bytes).
pub type PhotoRow = (String, String, String, Vec<u8>);

/// Writes a walk-through and its photos in one transaction; its id, or a
/// conflict when a record of this room by this time exists.
#[allow(clippy::too_many_arguments)]
pub fn write_manual(
    c: &mut Connection,
    site: &str,
    room: &str,
    by: &str,
    now: i64,
    record: &Value,
    photos: &[PhotoRow],
) -> Result<i64, InspectionError> {
    let tx = c.transaction()?;
    let id = write(&tx, site, room, "manual", now, now, by, record)?.ok_or_else(|| {
        InspectionError::Conflict("a patrol of this room by this time exists; try again".into())
    })?;
    for (name, content_type, hash, data) in photos {
        tx.execute(
            "INSERT INTO patrol_photos (patrol, name, content_type, data, sha256) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id, name, content_type, data, hash],
        )?;
    }
    tx.commit()?;
    Ok(id)
}

/// Whether the automatic patrol of a room at `slot` is written.
pub fn auto_done(
    c: &Connection,
    site: &str,
    room: &str,
    slot: i64,
) -> Result<bool, rusqlite::Error> {
    c.query_row(
        "SELECT EXISTS (SELECT 1 FROM patrols WHERE site = ?1 AND room = ?2 AND kind = 'auto' AND slot = ?3)",
        params![site, room, slot],
        |r| r.get(0),
    )
}

/// Whether minutes of a room in `[from, to)` still wait to be rolled up
/// (a backlog being stored).
pub fn rollups_pending(
    c: &Connection,
    site: &str,
    room: &str,
    from: i64,
    to: i64,
) -> Result<bool, rusqlite::Error> {
    c.query_row(
        "SELECT EXISTS (SELECT 1 FROM rollup_dirty d JOIN points p ON p.id = d.point_id
                        WHERE p.site = ?1 AND p.room = ?2 AND d.bucket >= ?3 AND d.bucket < ?4)",
        params![site, room, from, to],
        |r| r.get(0),
    )
}
