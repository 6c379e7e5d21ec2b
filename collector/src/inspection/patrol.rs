//! Patrol records. Automatic ones are written per room at each scheduled
//! slot: every point's value against its limits, its range and data
//! completeness since the previous slot, the room's active alarms and open
//! hazards. Manual ones are a person's walk-through: a checklist with pass or
//! fail, notes and photos, recorded under their login. Both are immutable
//! once written (triggers refuse UPDATE and DELETE) and carry a SHA-256 of
//! their stored text, so a copy can be checked against the original.

use super::figures;
use super::{ChecklistItem, InspectionError};
use crate::alarm::rules::{PointLabels, RuleSet};
use crate::store::inspection::{rollups, Tier};
use crate::store::patrols as store;
use crate::store::rollup::{bucket, MINUTE_MS};
use crate::store::sql::Db;
use serde::Deserialize;
use serde_json::{json, Value};

/// A point whose newest reading is older than this at patrol time is stale.
pub const STALE_MS: i64 = 15 * 60_000;
pub const MAX_PHOTOS: usize = 4;
pub const MAX_PHOTO_BYTES: usize = 2 * 1024 * 1024;
/// Photos one person may add in 24 hours.
pub const MAX_PHOTO_BYTES_PER_DAY: usize = 64 * 1024 * 1024;

pub fn sha256_hex(bytes: &[u8]) -> String {
    crate::auth::hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

/// The record of an automatic patrol of one room over `[from, to)`.
pub fn build_auto(
    c: Db<'_>,
    rules: Option<&RuleSet>,
    site: &str,
    room: &str,
    from: i64,
    to: i64,
) -> Result<Value, InspectionError> {
    let points = store::room_points(c, site, room)?;
    let mut out = Vec::with_capacity(points.len());
    let (mut beyond_now, mut stale, mut bad) = (0, 0, 0);
    let mut judged = Vec::new();
    for p in &points {
        let start = from.max(bucket(p.first_seen, MINUTE_MS));
        let buckets = rollups(c, Tier::Minute, p.id, from, to)?;
        // Rollups hold numbers only: a text point (a name, a string
        // register) is not judged, and neither is a point that did not
        // exist yet in the period.
        let text_only = p.value.is_none() && p.text.is_some();
        let completeness = if text_only {
            None
        } else {
            figures::completeness(&buckets, MINUTE_MS, start, to)
        };
        judged.extend(completeness);
        let (min, max) =
            buckets
                .iter()
                .fold((None, None), |(lo, hi): (Option<f64>, Option<f64>), b| {
                    (
                        Some(lo.map_or(b.min, |x| x.min(b.min))),
                        Some(hi.map_or(b.max, |x| x.max(b.max))),
                    )
                });
        let limits = rules
            .map(|r| {
                r.limits(
                    site,
                    &PointLabels {
                        quantity: &p.quantity,
                        room,
                        device: &p.device,
                        point: &p.point,
                    },
                )
            })
            .unwrap_or_default();
        let now_beyond: Vec<&str> = limits
            .iter()
            .filter(|l| {
                p.bad.is_none()
                    && p.value
                        .is_some_and(|v| if l.above { v > l.value } else { v < l.value })
            })
            .map(|l| l.rule.as_str())
            .collect();
        let status = if p.last_ts.is_none_or(|t| t < to - STALE_MS) {
            stale += 1;
            "stale"
        } else if p.bad.is_some() {
            bad += 1;
            "bad"
        } else if !now_beyond.is_empty() {
            beyond_now += 1;
            "beyond_limit"
        } else {
            "ok"
        };
        let limits_json: Vec<Value> = limits
            .iter()
            .map(|l| {
                json!({
                    "rule": l.rule, "level": l.level,
                    "kind": if l.above { "above" } else { "below" }, "value": l.value,
                    "minutes_beyond": figures::beyond(&buckets, l),
                })
            })
            .collect();
        out.push(json!({
            "point": p.point, "device": p.device, "quantity": p.quantity, "unit": p.unit,
            "value": p.value, "text": p.text, "ts": p.last_ts, "reason": p.bad,
            "status": status, "min": min, "max": max,
            "completeness": completeness.map(|c| (c * 1000.0).round() / 1000.0),
            "limits": limits_json,
        }));
    }
    let alarms = store::active_alarms(c, site, room)?;
    let hazards = open_hazards(c, site, room, to)?;
    let summary = json!({
        "points": points.len(),
        "beyond_limit": beyond_now,
        "stale": stale,
        "bad": bad,
        "completeness": if judged.is_empty() { Value::Null } else {
            json!((judged.iter().sum::<f64>() / judged.len() as f64 * 1000.0).round() / 1000.0)
        },
        "active_alarms": alarms.len(),
        "open_hazards": hazards.len(),
    });
    Ok(json!({
        "site": site, "room": room, "kind": "auto", "period_from": from, "period_to": to,
        "summary": summary, "points": out, "active_alarms": alarms, "open_hazards": hazards,
    }))
}

fn open_hazards(
    c: Db<'_>,
    site: &str,
    room: &str,
    now: i64,
) -> Result<Vec<Value>, InspectionError> {
    let f = super::hazard::Filter {
        site: Some(site.into()),
        room: Some(room.into()),
        open_only: true,
        ..Default::default()
    };
    Ok(crate::store::hazards::list(c, &f, 1000)?
        .into_iter()
        .map(|h| {
            json!({
                "id": h.id, "grade": h.grade, "category": h.category, "description": h.description,
                "status": h.status, "deadline": h.deadline, "overdue": h.overdue_at(now),
            })
        })
        .collect())
}

/// One answer on a walk-through.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Answer {
    pub id: String,
    pub pass: bool,
    #[serde(default)]
    pub note: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Photo {
    pub name: String,
    pub content_type: String,
    /// base64
    pub data: String,
}

/// A person's walk-through of a room.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManualPatrol {
    pub site: String,
    pub room: String,
    pub items: Vec<Answer>,
    #[serde(default)]
    pub note: Option<String>,
    #[serde(default)]
    pub photos: Vec<Photo>,
}

/// Checks and records a walk-through by `by` at `now`; answers must name
/// checklist items, photos must be JPEG, PNG or WebP within the limits.
pub fn record_manual(
    c: Db<'_>,
    m: &ManualPatrol,
    checklist: &[ChecklistItem],
    by: &str,
    now: i64,
) -> Result<Value, InspectionError> {
    let photos = check_manual(m, checklist)?;
    record_checked(c, m, checklist, photos, by, now)
}

/// What can be checked of a walk-through without the store, its photos
/// decoded: done before a transaction is opened, so decoding megabytes of
/// photos never holds the store's write lock.
pub fn check_manual(
    m: &ManualPatrol,
    checklist: &[ChecklistItem],
) -> Result<Vec<store::PhotoRow>, InspectionError> {
    let bad = |s: String| InspectionError::Invalid(s);
    for (field, v) in [("site", &m.site), ("room", &m.room)] {
        if v.trim().is_empty() || v.len() > 128 {
            return Err(bad(format!("{field}: must be 1–128 characters")));
        }
    }
    if m.note.as_ref().is_some_and(|n| n.len() > 4000) {
        return Err(bad("note: at most 4000 characters".into()));
    }
    if m.items.is_empty() {
        return Err(bad("items: answer at least one checklist item".into()));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, a) in m.items.iter().enumerate() {
        if !checklist.iter().any(|c| c.id == a.id) {
            return Err(bad(format!(
                "items[{i}].id: {:?} is not on the checklist (GET /api/v1/patrols/checklist)",
                a.id
            )));
        }
        if !seen.insert(a.id.as_str()) {
            return Err(bad(format!("items[{i}].id: {:?} is answered twice", a.id)));
        }
        if a.note.as_ref().is_some_and(|n| n.len() > 2000) {
            return Err(bad(format!("items[{i}].note: at most 2000 characters")));
        }
    }
    if m.photos.len() > MAX_PHOTOS {
        return Err(bad(format!("photos: at most {MAX_PHOTOS}")));
    }
    let mut photos = Vec::with_capacity(m.photos.len());
    for (i, p) in m.photos.iter().enumerate() {
        let data =
            crate::base64::decode(&p.data).map_err(|e| bad(format!("photos[{i}].data: {e}")))?;
        if data.len() > MAX_PHOTO_BYTES {
            return Err(bad(format!(
                "photos[{i}]: {} bytes; at most {MAX_PHOTO_BYTES}",
                data.len()
            )));
        }
        let magic_ok = match p.content_type.as_str() {
            "image/jpeg" => data.starts_with(&[0xFF, 0xD8, 0xFF]),
            "image/png" => data.starts_with(b"\x89PNG\r\n\x1a\n"),
            "image/webp" => data.len() > 12 && &data[..4] == b"RIFF" && &data[8..12] == b"WEBP",
            other => {
                return Err(bad(format!(
                    "photos[{i}].content_type: {other:?}; JPEG, PNG or WebP only"
                )))
            }
        };
        if !magic_ok {
            return Err(bad(format!(
                "photos[{i}]: the data is not a {} image",
                p.content_type
            )));
        }
        let name: String = p
            .name
            .chars()
            .filter(|c| !c.is_control())
            .take(200)
            .collect();
        photos.push((name, p.content_type.clone(), sha256_hex(&data), data));
    }
    Ok(photos)
}

/// Records a walk-through [`check_manual`] passed, with its photos, in the
/// caller's transaction.
pub fn record_checked(
    c: Db<'_>,
    m: &ManualPatrol,
    checklist: &[ChecklistItem],
    photos: Vec<store::PhotoRow>,
    by: &str,
    now: i64,
) -> Result<Value, InspectionError> {
    let bad = |s: String| InspectionError::Invalid(s);
    if !store::room_known(c, &m.site, &m.room)? {
        return Err(bad(format!(
            "room: no room {:?} at site {:?} (GET /api/v1/points)",
            m.room, m.site
        )));
    }
    // Records cannot be deleted: a day's photos per person are bounded so
    // that a runaway script cannot fill the disk.
    let new_bytes: usize = photos.iter().map(|p| p.3.len()).sum();
    if new_bytes > 0 {
        let today = store::photo_bytes_since(c, by, now - 86_400_000)?;
        if today as usize + new_bytes > MAX_PHOTO_BYTES_PER_DAY {
            return Err(bad(format!(
                "photos: {by} has sent {} MiB of photos in the last 24 h; at most {} MiB a day",
                today / (1024 * 1024),
                MAX_PHOTO_BYTES_PER_DAY / (1024 * 1024)
            )));
        }
    }
    let items: Vec<Value> = checklist
        .iter()
        .map(|item| match m.items.iter().find(|a| a.id == item.id) {
            Some(a) => json!({"id": item.id, "en": item.en, "zh": item.zh,
                              "result": if a.pass { "pass" } else { "fail" }, "note": a.note}),
            None => json!({"id": item.id, "en": item.en, "zh": item.zh, "result": "not_checked"}),
        })
        .collect();
    let failed = m.items.iter().filter(|a| !a.pass).count();
    let record = json!({
        "site": m.site, "room": m.room, "kind": "manual", "period_from": now, "period_to": now,
        "by": by, "signed_at": now, "note": m.note,
        "summary": {"checked": m.items.len(), "failed": failed,
                    "not_checked": checklist.len().saturating_sub(m.items.len()),
                    "photos": photos.len()},
        "items": items,
        "photos": photos.iter().map(|(n, t, h, d)| json!({"name": n, "content_type": t, "sha256": h, "bytes": d.len()})).collect::<Vec<_>>(),
    });
    let id = store::write_manual(c, &m.site, &m.room, by, now, &record, &photos)?;
    store::get(c, id)
}

/// Filters for [`list`].
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub site: Option<String>,
    pub room: Option<String>,
    pub kind: Option<String>,
    pub from: i64,
    pub to: i64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::patrols::photo;
    use crate::store::sql::Db;
    use rusqlite::Connection;

    fn store() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(crate::store::sqlite::SCHEMA).unwrap();
        crate::store::schema::init_inspection(&c).unwrap();
        c.execute(
            "INSERT INTO points (site, point, agent, room, device, quantity, unit, first_seen, last_seen)
             VALUES ('s', 'br-h2-1.h2', 'a', 'battery-room', 'br-h2-1', 'h2_lfl', '%LFL', 0, 0)",
            [],
        )
        .unwrap();
        c
    }

    #[test]
    fn a_manual_patrol_is_signed_immutable_and_refuses_what_is_not_on_the_checklist() {
        let c = store();
        let list = super::super::builtin_checklist();
        let png = b"\x89PNG\r\n\x1a\n0000";
        let m = ManualPatrol {
            site: "s".into(),
            room: "battery-room".into(),
            items: vec![
                Answer {
                    id: "extinguishers".into(),
                    pass: true,
                    note: None,
                },
                Answer {
                    id: "battery_ventilation".into(),
                    pass: false,
                    note: Some("fan 2 stopped".into()),
                },
            ],
            note: Some("night round".into()),
            photos: vec![Photo {
                name: "fan.png".into(),
                content_type: "image/png".into(),
                data: crate::base64::encode(png),
            }],
        };
        let r = record_manual(Db::lite(&c), &m, &list, "li", 1_000).unwrap();
        assert_eq!(r["by"], "li");
        assert_eq!(r["summary"]["failed"], 1);
        assert_eq!(r["summary"]["not_checked"], list.len() - 2);
        assert_eq!(r["digest_ok"], true);
        let id = r["id"].as_i64().unwrap();
        assert_eq!(photo(Db::lite(&c), id, 0).unwrap().1, png.to_vec());
        assert!(c.execute("UPDATE patrols SET by = 'x'", []).is_err());
        assert!(c.execute("DELETE FROM patrol_photos", []).is_err());

        let mut wrong = m.clone();
        wrong.items[0].id = "coffee_machine".into();
        let e = record_manual(Db::lite(&c), &wrong, &list, "li", 2_000).unwrap_err();
        assert!(e.to_string().contains("items[0].id"), "{e}");
        let mut fake = m.clone();
        fake.photos[0].content_type = "image/jpeg".into();
        let e = record_manual(Db::lite(&c), &fake, &list, "li", 3_000).unwrap_err();
        assert!(e.to_string().contains("not a image/jpeg image"), "{e}");
        let mut nowhere = m.clone();
        nowhere.room = "kitchen".into();
        let e = record_manual(Db::lite(&c), &nowhere, &list, "li", 4_000).unwrap_err();
        assert!(e.to_string().contains("no room"), "{e}");
    }
}
