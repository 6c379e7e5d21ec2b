//! The hazard register in the store (either backend): hazards and their
//! append-only trail, each change in the caller's transaction. The status machine and the rules of a
//! new hazard are pure, in `inspection/hazard.rs`.

use crate::args;
use crate::inspection::hazard::{
    check_new, next, Action, Edit, Facts, Filter, Hazard, NewHazard, Origin, Status, GRADES,
};
use crate::inspection::InspectionError;
use crate::store::sql::{Db, Row, SqlError};
use serde_json::{json, Value};

const COLUMNS: &str = "id, site, room, category, grade, description, found_by, found_at, owner, \
     deadline, plan, status, evidence, verifier, closed_at, source, rule, overdue_told_at, updated_at, alarm";
fn from_row(r: &Row) -> Result<Hazard, SqlError> {
    let status: String = r.get(11)?;
    Ok(Hazard {
        id: r.get(0)?,
        site: r.get(1)?,
        room: r.get(2)?,
        category: r.get(3)?,
        grade: r.get(4)?,
        description: r.get(5)?,
        found_by: r.get(6)?,
        found_at: r.get(7)?,
        owner: r.get(8)?,
        deadline: r.get(9)?,
        plan: r.get(10)?,
        status: Status::parse(&status).unwrap_or(Status::Open),
        evidence: r.get(12)?,
        verifier: r.get(13)?,
        closed_at: r.get(14)?,
        source: r.get(15)?,
        rule: r.get(16)?,
        overdue_told_at: r.get(17)?,
        updated_at: r.get(18)?,
        alarm: r.get(19)?,
    })
}
/// Registers a hazard found by `by` (a person, or `roomguard` for proposals).
pub fn create(
    c: Db<'_>,
    h: &NewHazard,
    by: &str,
    status: Status,
    origin: Origin<'_>,
    now: i64,
) -> Result<Hazard, InspectionError> {
    check_new(h).map_err(InspectionError::Invalid)?;
    let id: i64 = c.value(
        "INSERT INTO hazards (site, room, category, grade, description, found_by, found_at, owner,
                              deadline, plan, status, source, rule, updated_at, alarm)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $7, $14) RETURNING id",
        args![
            &h.site,
            &h.room,
            &h.category,
            &h.grade,
            &h.description,
            by,
            now,
            &h.owner,
            h.deadline,
            &h.plan,
            status.as_str(),
            origin.source,
            origin.rule,
            origin.alarm
        ],
    )?;
    let mut changes = serde_json::Map::new();
    for (k, v) in [
        ("status", json!(status.as_str())),
        ("site", json!(h.site)),
        ("room", json!(h.room)),
        ("category", json!(h.category)),
        ("grade", json!(h.grade)),
        ("description", json!(h.description)),
        ("owner", json!(h.owner)),
        ("deadline", json!(h.deadline)),
        ("plan", json!(h.plan)),
    ] {
        if !v.is_null() {
            changes.insert(k.into(), json!([null, v]));
        }
    }
    event(c, id, now, by, "create", &Value::Object(changes))?;
    get(c, id)
}
fn event(
    c: Db<'_>,
    hazard: i64,
    at: i64,
    by: &str,
    action: &str,
    changes: &Value,
) -> Result<(), SqlError> {
    c.exec(
        "INSERT INTO hazard_events (hazard, at, by, action, changes) VALUES ($1, $2, $3, $4, $5)",
        args![hazard, at, by, action, &changes.to_string()],
    )?;
    Ok(())
}
pub fn get(c: Db<'_>, id: i64) -> Result<Hazard, InspectionError> {
    c.row(
        &format!("SELECT {COLUMNS} FROM hazards WHERE id = $1"),
        args![id],
    )?
    .as_ref()
    .map(from_row)
    .transpose()?
    .ok_or(InspectionError::NotFound(format!("no hazard {id}")))
}
/// Its trail, oldest first.
pub fn events(c: Db<'_>, id: i64) -> Result<Vec<Value>, InspectionError> {
    let rows = c.rows(
        "SELECT at, by, action, changes FROM hazard_events WHERE hazard = $1 ORDER BY id",
        args![id],
    )?;
    rows.iter()
        .map(|r| {
            let changes: String = r.get(3)?;
            Ok(json!({
                "at": r.get::<i64>(0)?,
                "by": r.get::<String>(1)?,
                "action": r.get::<String>(2)?,
                "changes": serde_json::from_str::<Value>(&changes).unwrap_or(Value::Null),
            }))
        })
        .collect()
}
pub fn list(c: Db<'_>, f: &Filter, limit: u32) -> Result<Vec<Hazard>, InspectionError> {
    let rows = c.rows(
        &format!(
            "SELECT {COLUMNS} FROM hazards
             WHERE (CAST($1 AS TEXT) IS NULL OR site = $1) AND (CAST($2 AS TEXT) IS NULL OR room = $2)
               AND (CAST($3 AS TEXT) IS NULL OR status = $3) AND (CAST($4 AS TEXT) IS NULL OR grade = $4)
               AND ($5 = FALSE OR status IN ('open', 'rectifying', 'awaiting_verification'))
             ORDER BY CASE grade WHEN 'major' THEN 0 ELSE 1 END, found_at DESC, id DESC
             LIMIT $6"
        ),
        args![
            &f.site,
            &f.room,
            f.status.map(Status::as_str),
            &f.grade,
            f.open_only,
            limit
        ],
    )?;
    Ok(rows.iter().map(from_row).collect::<Result<_, _>>()?)
}
/// Applies `edit` and then `action` (either may be empty) as one change by
/// `by`, recorded in the trail with every field's old and new value; `c`
/// is a transaction (the change and its trail commit together).
pub fn change(
    c: Db<'_>,
    id: i64,
    edit: &Edit,
    action: Option<Action>,
    note: Option<&str>,
    by: &str,
    now: i64,
) -> Result<Hazard, InspectionError> {
    let old = get(c, id)?;
    if matches!(old.status, Status::Closed | Status::Dismissed) {
        return Err(InspectionError::Conflict(format!(
            "hazard {id} is {}; it can no longer change",
            old.status.as_str()
        )));
    }
    if let Some(g) = &edit.grade {
        if !GRADES.contains(&g.as_str()) {
            return Err(InspectionError::Invalid(format!(
                "grade: {g:?} is not major or general"
            )));
        }
    }
    if old.status == Status::AwaitingVerification && edit.owner.is_some() {
        return Err(InspectionError::Conflict(
            "the owner cannot change while the fix awaits verification; reject it first".into(),
        ));
    }
    if action == Some(Action::Verify) {
        // Four eyes: neither the owner nor whoever handed it over may verify.
        let submitted_by: Option<String> = c
            .row(
                "SELECT by FROM hazard_events WHERE hazard = $1 AND action = 'submit_for_verification'
                 ORDER BY id DESC LIMIT 1",
                args![id],
            )?
            .map(|r| r.get(0))
            .transpose()?;
        if submitted_by.as_deref() == Some(by) {
            return Err(InspectionError::Conflict(format!(
                "{by} handed this fix over for verification; someone else must verify it"
            )));
        }
    }
    let mut new = old.clone();
    if let Some(v) = &edit.owner {
        new.owner = Some(v.clone());
    }
    if edit.deadline.is_some() {
        new.deadline = edit.deadline;
    }
    if let Some(v) = &edit.plan {
        new.plan = Some(v.clone());
    }
    if let Some(v) = &edit.evidence {
        new.evidence = Some(v.clone());
    }
    if let Some(v) = &edit.grade {
        new.grade = v.clone();
    }
    if let Some(v) = &edit.description {
        new.description = v.clone();
    }
    if let Some(a) = action {
        let facts = Facts {
            owner: new.owner.as_deref(),
            deadline: new.deadline,
            plan: new.plan.as_deref(),
            evidence: new.evidence.as_deref(),
        };
        new.status = next(old.status, a, &facts, by).map_err(InspectionError::Conflict)?;
        if new.status == Status::Closed {
            new.verifier = Some(by.to_owned());
            new.closed_at = Some(now);
        }
        if new.status == Status::Dismissed {
            new.closed_at = Some(now);
        }
    }
    let mut changes = serde_json::Map::new();
    let mut diff = |k: &str, a: Value, b: Value| {
        if a != b {
            changes.insert(k.into(), json!([a, b]));
        }
    };
    diff("owner", json!(old.owner), json!(new.owner));
    diff("deadline", json!(old.deadline), json!(new.deadline));
    diff("plan", json!(old.plan), json!(new.plan));
    diff("evidence", json!(old.evidence), json!(new.evidence));
    diff("grade", json!(old.grade), json!(new.grade));
    diff(
        "description",
        json!(old.description),
        json!(new.description),
    );
    diff("status", json!(old.status), json!(new.status));
    diff("verifier", json!(old.verifier), json!(new.verifier));
    if let Some(n) = note.filter(|n| !n.is_empty()) {
        changes.insert("note".into(), json!(n));
    }
    if changes.is_empty() {
        return Err(InspectionError::Invalid("nothing to change".into()));
    }
    c.exec(
        "UPDATE hazards SET owner = $2, deadline = $3, plan = $4, evidence = $5, grade = $6,
                description = $7, status = $8, verifier = $9, closed_at = $10, updated_at = $11
         WHERE id = $1",
        args![
            id,
            &new.owner,
            new.deadline,
            &new.plan,
            &new.evidence,
            &new.grade,
            &new.description,
            new.status.as_str(),
            &new.verifier,
            new.closed_at,
            now
        ],
    )?;
    let action_name = action.map_or("edit", Action::as_str);
    event(c, id, now, by, action_name, &Value::Object(changes))?;
    get(c, id)
}
/// Per site: open major hazards (the target is zero), all open, overdue, and
/// the age of the oldest open one.
pub fn zeroing(c: Db<'_>, now: i64) -> Result<Vec<Value>, InspectionError> {
    // COUNT … FILTER, not SUM of a comparison: PostgreSQL's comparisons
    // are booleans, which it does not add up. Ages in ms as literals (7 and
    // 30 days): PostgreSQL multiplies two small literals as 32-bit integers,
    // and 30 days of ms does not fit.
    // Proposed hazards are not open ones (nobody has accepted them yet), but
    // a proposed major one is counted on its own: it may become the site's
    // zeroing figure once someone looks at it.
    let rows = c.rows(
        "SELECT site,
                COUNT(*) FILTER (WHERE grade = 'major' AND status <> 'proposed'),
                COUNT(*) FILTER (WHERE status <> 'proposed'),
                COUNT(*) FILTER (WHERE status IN ('open', 'rectifying') AND deadline IS NOT NULL AND deadline < $1),
                COUNT(*) FILTER (WHERE grade = 'major' AND status IN ('open', 'rectifying')
                                   AND deadline IS NOT NULL AND deadline < $1),
                MIN(found_at) FILTER (WHERE status <> 'proposed'),
                COUNT(*) FILTER (WHERE status <> 'proposed' AND $1 - found_at <= 604800000),
                COUNT(*) FILTER (WHERE status <> 'proposed' AND $1 - found_at > 604800000 AND $1 - found_at <= 2592000000),
                COUNT(*) FILTER (WHERE status <> 'proposed' AND $1 - found_at > 2592000000),
                COUNT(*) FILTER (WHERE grade = 'major' AND status = 'proposed')
         FROM hazards WHERE status IN ('proposed', 'open', 'rectifying', 'awaiting_verification')
         GROUP BY site ORDER BY site",
        args![now],
    )?;
    rows.iter()
        .map(|r| {
            let oldest: Option<i64> = r.get(5)?;
            Ok(json!({
                "site": r.get::<String>(0)?,
                "open_major": r.get::<i64>(1)?,
                "open": r.get::<i64>(2)?,
                "overdue": r.get::<i64>(3)?,
                "overdue_major": r.get::<i64>(4)?,
                "proposed_major": r.get::<i64>(9)?,
                "oldest_open_days": oldest.map(|t| (now - t) / 86_400_000),
                "age": { "under_7_days": r.get::<i64>(6)?, "7_to_30_days": r.get::<i64>(7)?,
                         "over_30_days": r.get::<i64>(8)? },
            }))
        })
        .collect()
}
/// Whether a hazard for this room and rule is already proposed or open, so
/// an alarm that keeps firing proposes it once.
pub fn already_tracked(
    c: Db<'_>,
    site: &str,
    room: &str,
    rule: &str,
) -> Result<bool, InspectionError> {
    Ok(c.value(
        "SELECT EXISTS (SELECT 1 FROM hazards WHERE site = $1 AND room = $2 AND rule = $3
                        AND status IN ('proposed', 'open', 'rectifying', 'awaiting_verification'))",
        args![site, room, rule],
    )?)
}
/// Overdue hazards that were not told about in the last `repeat_ms`.
pub fn due_overdue(c: Db<'_>, now: i64, repeat_ms: i64) -> Result<Vec<Hazard>, InspectionError> {
    let rows = c.rows(
        &format!(
            "SELECT {COLUMNS} FROM hazards
             WHERE status IN ('open', 'rectifying') AND deadline IS NOT NULL AND deadline < $1
               AND (overdue_told_at IS NULL OR overdue_told_at <= $1 - $2)
             ORDER BY id LIMIT 100"
        ),
        args![now, repeat_ms],
    )?;
    Ok(rows.iter().map(from_row).collect::<Result<_, _>>()?)
}
pub fn mark_told(c: Db<'_>, id: i64, now: i64) -> Result<(), InspectionError> {
    c.exec(
        "UPDATE hazards SET overdue_told_at = $2 WHERE id = $1",
        args![id, now],
    )?;
    Ok(())
}
