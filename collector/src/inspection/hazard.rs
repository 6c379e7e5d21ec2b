//! The hazard register (隐患台账): every hidden hazard from the moment it is
//! found until it is verified closed, with an append-only trail of who
//! changed what. The status machine is pure ([`next`]); storage is plain SQL
//! on the caller's connection, one transaction per change.

use super::InspectionError;
use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Where a hazard stands. `Proposed` and `Dismissed` are for hazards the
/// collector proposed from alarms: a person accepts (→ open) or dismisses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Proposed,
    Open,
    Rectifying,
    AwaitingVerification,
    Closed,
    Dismissed,
}

impl Status {
    pub const ALL: [Status; 6] = [
        Status::Proposed,
        Status::Open,
        Status::Rectifying,
        Status::AwaitingVerification,
        Status::Closed,
        Status::Dismissed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Proposed => "proposed",
            Status::Open => "open",
            Status::Rectifying => "rectifying",
            Status::AwaitingVerification => "awaiting_verification",
            Status::Closed => "closed",
            Status::Dismissed => "dismissed",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// Still to be driven to zero.
    pub fn is_open(self) -> bool {
        matches!(
            self,
            Status::Open | Status::Rectifying | Status::AwaitingVerification
        )
    }
}

pub const CATEGORIES: [&str; 5] = [
    "fire",
    "explosion",
    "electrical",
    "environment",
    "construction",
];
pub const GRADES: [&str; 2] = ["major", "general"];

/// What someone does to a hazard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// A proposed hazard is real: it is now open.
    Accept,
    /// A proposed hazard is not one.
    Dismiss,
    /// Rectification starts (owner, deadline and plan must be set).
    StartRectification,
    /// The owner says it is fixed, with evidence.
    SubmitForVerification,
    /// Someone other than the owner checked the evidence: closed.
    Verify,
    /// Verification failed: back to rectification.
    Reject,
}

impl Action {
    /// The name in the API and the trail.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Accept => "accept",
            Action::Dismiss => "dismiss",
            Action::StartRectification => "start_rectification",
            Action::SubmitForVerification => "submit_for_verification",
            Action::Verify => "verify",
            Action::Reject => "reject",
        }
    }
}

/// The fields a transition needs, as the hazard has them now.
#[derive(Debug, Clone, Default)]
pub struct Facts<'a> {
    pub owner: Option<&'a str>,
    pub deadline: Option<i64>,
    pub plan: Option<&'a str>,
    pub evidence: Option<&'a str>,
}

/// The status after `action`, or why it is not allowed. `actor` is who acts.
pub fn next(status: Status, action: Action, facts: &Facts, actor: &str) -> Result<Status, String> {
    use Action as A;
    use Status as S;
    let missing = |what: &str| Err(format!("{what} must be set first"));
    match (status, action) {
        (S::Proposed, A::Accept) => Ok(S::Open),
        (S::Proposed, A::Dismiss) => Ok(S::Dismissed),
        (S::Open, A::StartRectification) => {
            if facts.owner.is_none_or(str::is_empty) {
                missing("owner")
            } else if facts.deadline.is_none() {
                missing("deadline")
            } else if facts.plan.is_none_or(str::is_empty) {
                missing("plan (the rectification plan)")
            } else {
                Ok(S::Rectifying)
            }
        }
        (S::Rectifying, A::SubmitForVerification) => {
            if facts.evidence.is_none_or(str::is_empty) {
                missing("evidence (what shows it is fixed)")
            } else {
                Ok(S::AwaitingVerification)
            }
        }
        (S::AwaitingVerification, A::Verify) => {
            if facts.owner == Some(actor) {
                Err(format!(
                    "{actor} owns this hazard; someone else must verify its closure"
                ))
            } else {
                Ok(S::Closed)
            }
        }
        (S::AwaitingVerification, A::Reject) => Ok(S::Rectifying),
        (s, a) => Err(format!(
            "cannot {} a hazard that is {}",
            a.as_str().replace('_', " "),
            s.as_str().replace('_', " ")
        )),
    }
}

/// A hazard as stored.
#[derive(Debug, Clone, Serialize)]
pub struct Hazard {
    pub id: i64,
    pub site: String,
    pub room: String,
    pub category: String,
    pub grade: String,
    pub description: String,
    pub found_by: String,
    pub found_at: i64,
    pub owner: Option<String>,
    pub deadline: Option<i64>,
    pub plan: Option<String>,
    pub status: Status,
    pub evidence: Option<String>,
    pub verifier: Option<String>,
    pub closed_at: Option<i64>,
    /// `manual`, `alarm` (a level-1 alarm) or `recurring` (a rule that kept firing).
    pub source: String,
    /// The alarm rule it was proposed from.
    pub rule: Option<String>,
    pub overdue_told_at: Option<i64>,
    pub updated_at: i64,
}

impl Hazard {
    /// Past its deadline and not yet handed over for verification.
    pub fn overdue_at(&self, now: i64) -> bool {
        matches!(self.status, Status::Open | Status::Rectifying)
            && self.deadline.is_some_and(|d| d < now)
    }
}

const COLUMNS: &str = "id, site, room, category, grade, description, found_by, found_at, owner, \
     deadline, plan, status, evidence, verifier, closed_at, source, rule, overdue_told_at, updated_at";

fn from_row(r: &Row) -> rusqlite::Result<Hazard> {
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
    })
}

/// A hazard to register.
#[derive(Debug, Clone)]
pub struct NewHazard {
    pub site: String,
    pub room: String,
    pub category: String,
    pub grade: String,
    pub description: String,
    pub owner: Option<String>,
    /// ms since the epoch (the API parses times).
    pub deadline: Option<i64>,
    pub plan: Option<String>,
}

pub fn check_new(h: &NewHazard) -> Result<(), String> {
    if !CATEGORIES.contains(&h.category.as_str()) {
        return Err(format!(
            "category: {:?} is not one of {}",
            h.category,
            CATEGORIES.join(", ")
        ));
    }
    if !GRADES.contains(&h.grade.as_str()) {
        return Err(format!("grade: {:?} is not major or general", h.grade));
    }
    for (field, v) in [("site", &h.site), ("room", &h.room)] {
        if v.trim().is_empty() || v.len() > 128 {
            return Err(format!("{field}: must be 1–128 characters"));
        }
    }
    if h.description.trim().is_empty() || h.description.len() > 4000 {
        return Err("description: must be 1–4000 characters".into());
    }
    Ok(())
}

/// Registers a hazard found by `by` (a person, or `roomguard` for proposals).
pub fn create(
    c: &Connection,
    h: &NewHazard,
    by: &str,
    status: Status,
    source: &str,
    rule: Option<&str>,
    now: i64,
) -> Result<Hazard, InspectionError> {
    check_new(h).map_err(InspectionError::Invalid)?;
    c.execute(
        "INSERT INTO hazards (site, room, category, grade, description, found_by, found_at, owner,
                              deadline, plan, status, source, rule, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?7)",
        params![
            h.site,
            h.room,
            h.category,
            h.grade,
            h.description,
            by,
            now,
            h.owner,
            h.deadline,
            h.plan,
            status.as_str(),
            source,
            rule
        ],
    )?;
    let id = c.last_insert_rowid();
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
    c: &Connection,
    hazard: i64,
    at: i64,
    by: &str,
    action: &str,
    changes: &Value,
) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO hazard_events (hazard, at, by, action, changes) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![hazard, at, by, action, changes.to_string()],
    )?;
    Ok(())
}

pub fn get(c: &Connection, id: i64) -> Result<Hazard, InspectionError> {
    c.query_row(
        &format!("SELECT {COLUMNS} FROM hazards WHERE id = ?1"),
        [id],
        from_row,
    )
    .optional()?
    .ok_or(InspectionError::NotFound(format!("no hazard {id}")))
}

/// Its trail, oldest first.
pub fn events(c: &Connection, id: i64) -> Result<Vec<Value>, InspectionError> {
    let mut st = c.prepare_cached(
        "SELECT at, by, action, changes FROM hazard_events WHERE hazard = ?1 ORDER BY id",
    )?;
    let rows = st.query_map([id], |r| {
        let changes: String = r.get(3)?;
        Ok(json!({
            "at": r.get::<_, i64>(0)?,
            "by": r.get::<_, String>(1)?,
            "action": r.get::<_, String>(2)?,
            "changes": serde_json::from_str::<Value>(&changes).unwrap_or(Value::Null),
        }))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Filters for [`list`]; `None` means any.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub site: Option<String>,
    pub room: Option<String>,
    pub status: Option<Status>,
    pub grade: Option<String>,
    /// Only those still to be driven to zero (open, rectifying, awaiting verification).
    pub open_only: bool,
}

pub fn list(c: &Connection, f: &Filter, limit: u32) -> Result<Vec<Hazard>, InspectionError> {
    let mut st = c.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM hazards
         WHERE (?1 IS NULL OR site = ?1) AND (?2 IS NULL OR room = ?2)
           AND (?3 IS NULL OR status = ?3) AND (?4 IS NULL OR grade = ?4)
           AND (?5 = 0 OR status IN ('open', 'rectifying', 'awaiting_verification'))
         ORDER BY CASE grade WHEN 'major' THEN 0 ELSE 1 END, found_at DESC, id DESC
         LIMIT ?6"
    ))?;
    let rows = st.query_map(
        params![
            f.site,
            f.room,
            f.status.map(Status::as_str),
            f.grade,
            f.open_only,
            limit
        ],
        from_row,
    )?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Field changes a person may make at any open stage.
#[derive(Debug, Clone, Default)]
pub struct Edit {
    pub owner: Option<String>,
    pub deadline: Option<i64>,
    pub plan: Option<String>,
    pub evidence: Option<String>,
    pub grade: Option<String>,
    pub description: Option<String>,
}

/// Applies `edit` and then `action` (either may be empty) as one change by
/// `by`, recorded in the trail with every field's old and new value.
pub fn change(
    c: &mut Connection,
    id: i64,
    edit: &Edit,
    action: Option<Action>,
    note: Option<&str>,
    by: &str,
    now: i64,
) -> Result<Hazard, InspectionError> {
    let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let old = get(&tx, id)?;
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
        let submitted_by: Option<String> = tx
            .query_row(
                "SELECT by FROM hazard_events WHERE hazard = ?1 AND action = 'submit_for_verification'
                 ORDER BY id DESC LIMIT 1",
                [id],
                |r| r.get(0),
            )
            .optional()?;
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
    tx.execute(
        "UPDATE hazards SET owner = ?2, deadline = ?3, plan = ?4, evidence = ?5, grade = ?6,
                description = ?7, status = ?8, verifier = ?9, closed_at = ?10, updated_at = ?11
         WHERE id = ?1",
        params![
            id,
            new.owner,
            new.deadline,
            new.plan,
            new.evidence,
            new.grade,
            new.description,
            new.status.as_str(),
            new.verifier,
            new.closed_at,
            now
        ],
    )?;
    let action_name = action.map_or("edit", Action::as_str);
    event(&tx, id, now, by, action_name, &Value::Object(changes))?;
    let h = get(&tx, id)?;
    tx.commit()?;
    Ok(h)
}

/// Per site: open major hazards (the target is zero), all open, overdue, and
/// the age of the oldest open one.
pub fn zeroing(c: &Connection, now: i64) -> Result<Vec<Value>, InspectionError> {
    let mut st = c.prepare_cached(
        "SELECT site,
                SUM(grade = 'major'),
                COUNT(*),
                SUM(status IN ('open', 'rectifying') AND deadline IS NOT NULL AND deadline < ?1),
                SUM(grade = 'major' AND status IN ('open', 'rectifying') AND deadline IS NOT NULL AND deadline < ?1),
                MIN(found_at),
                SUM(?1 - found_at <= 7 * 86400000),
                SUM(?1 - found_at > 7 * 86400000 AND ?1 - found_at <= 30 * 86400000),
                SUM(?1 - found_at > 30 * 86400000)
         FROM hazards WHERE status IN ('open', 'rectifying', 'awaiting_verification')
         GROUP BY site ORDER BY site",
    )?;
    let rows = st.query_map([now], |r| {
        let oldest: Option<i64> = r.get(5)?;
        Ok(json!({
            "site": r.get::<_, String>(0)?,
            "open_major": r.get::<_, i64>(1)?,
            "open": r.get::<_, i64>(2)?,
            "overdue": r.get::<_, i64>(3)?,
            "overdue_major": r.get::<_, i64>(4)?,
            "oldest_open_days": oldest.map(|t| (now - t) / 86_400_000),
            "age": { "under_7_days": r.get::<_, i64>(6)?, "7_to_30_days": r.get::<_, i64>(7)?,
                     "over_30_days": r.get::<_, i64>(8)? },
        }))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Whether a hazard for this room and rule is already proposed or open, so
/// an alarm that keeps firing proposes it once.
pub fn already_tracked(
    c: &Connection,
    site: &str,
    room: &str,
    rule: &str,
) -> Result<bool, InspectionError> {
    Ok(c.query_row(
        "SELECT EXISTS (SELECT 1 FROM hazards WHERE site = ?1 AND room = ?2 AND rule = ?3
                        AND status IN ('proposed', 'open', 'rectifying', 'awaiting_verification'))",
        params![site, room, rule],
        |r| r.get(0),
    )?)
}

/// Overdue hazards that were not told about in the last `repeat_ms`.
pub fn due_overdue(
    c: &Connection,
    now: i64,
    repeat_ms: i64,
) -> Result<Vec<Hazard>, InspectionError> {
    let mut st = c.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM hazards
         WHERE status IN ('open', 'rectifying') AND deadline IS NOT NULL AND deadline < ?1
           AND (overdue_told_at IS NULL OR overdue_told_at <= ?1 - ?2)
         ORDER BY id LIMIT 100"
    ))?;
    let rows = st.query_map(params![now, repeat_ms], from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn mark_told(c: &Connection, id: i64, now: i64) -> Result<(), InspectionError> {
    c.execute(
        "UPDATE hazards SET overdue_told_at = ?2 WHERE id = ?1",
        params![id, now],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts<'a>() -> Facts<'a> {
        Facts {
            owner: Some("li"),
            deadline: Some(1),
            plan: Some("replace the cable"),
            evidence: Some("photo of new cable"),
        }
    }

    #[test]
    fn a_hazard_walks_from_open_to_closed_and_only_that_way() {
        let f = facts();
        let s = next(Status::Open, Action::StartRectification, &f, "li").unwrap();
        assert_eq!(s, Status::Rectifying);
        let s = next(s, Action::SubmitForVerification, &f, "li").unwrap();
        assert_eq!(s, Status::AwaitingVerification);
        assert_eq!(
            next(s, Action::Reject, &f, "wang").unwrap(),
            Status::Rectifying
        );
        assert_eq!(next(s, Action::Verify, &f, "wang").unwrap(), Status::Closed);
        let err = next(Status::Open, Action::Verify, &f, "wang").unwrap_err();
        assert_eq!(err, "cannot verify a hazard that is open");
    }

    #[test]
    fn action_names_are_the_ones_the_api_takes() {
        for a in [
            Action::Accept,
            Action::Dismiss,
            Action::StartRectification,
            Action::SubmitForVerification,
            Action::Verify,
            Action::Reject,
        ] {
            assert_eq!(serde_json::to_value(a).unwrap(), a.as_str());
        }
    }

    #[test]
    fn the_owner_cannot_verify_their_own_rectification() {
        let err = next(Status::AwaitingVerification, Action::Verify, &facts(), "li").unwrap_err();
        assert!(err.contains("someone else"), "{err}");
    }

    #[test]
    fn rectification_needs_an_owner_a_deadline_and_a_plan() {
        let mut f = facts();
        f.plan = None;
        let err = next(Status::Open, Action::StartRectification, &f, "li").unwrap_err();
        assert!(err.starts_with("plan"), "{err}");
        f = facts();
        f.evidence = Some("");
        let err = next(Status::Rectifying, Action::SubmitForVerification, &f, "li").unwrap_err();
        assert!(err.starts_with("evidence"), "{err}");
    }

    fn store() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(crate::store::schema::HAZARDS).unwrap();
        c
    }

    fn new_hazard() -> NewHazard {
        NewHazard {
            site: "s".into(),
            room: "battery-room".into(),
            category: "explosion".into(),
            grade: "major".into(),
            description: "exhaust fan seized".into(),
            owner: None,
            deadline: None,
            plan: None,
        }
    }

    #[test]
    fn every_change_is_in_an_append_only_trail() {
        let mut c = store();
        let h = create(
            &c,
            &new_hazard(),
            "inspector-1",
            Status::Open,
            "manual",
            None,
            1_000,
        )
        .unwrap();
        let edit = Edit {
            owner: Some("li".into()),
            deadline: Some(5_000),
            plan: Some("replace the fan".into()),
            ..Default::default()
        };
        let h2 = change(
            &mut c,
            h.id,
            &edit,
            Some(Action::StartRectification),
            None,
            "inspector-1",
            2_000,
        )
        .unwrap();
        assert_eq!(h2.status, Status::Rectifying);
        let trail = events(&c, h.id).unwrap();
        assert_eq!(trail.len(), 2);
        assert_eq!(trail[1]["changes"]["status"], json!(["open", "rectifying"]));
        assert_eq!(trail[1]["changes"]["owner"], json!([null, "li"]));
        assert!(c.execute("DELETE FROM hazard_events", []).is_err());
        assert!(c.execute("UPDATE hazard_events SET by = 'x'", []).is_err());
        // Overdue after its deadline until handed over for verification.
        assert!(h2.overdue_at(6_000));
        assert!(!h2.overdue_at(4_000));
        // Handed over by wang (not the owner), so wang cannot verify, nor
        // can li by renaming the owner on the way.
        let evidence = Edit {
            evidence: Some("new fan".into()),
            ..Default::default()
        };
        change(
            &mut c,
            h.id,
            &evidence,
            Some(Action::SubmitForVerification),
            None,
            "wang",
            3_000,
        )
        .unwrap();
        let e = change(
            &mut c,
            h.id,
            &Edit::default(),
            Some(Action::Verify),
            None,
            "wang",
            3_100,
        )
        .unwrap_err();
        assert!(e.to_string().contains("someone else"), "{e}");
        let rename = Edit {
            owner: Some("zhao".into()),
            ..Default::default()
        };
        assert!(change(
            &mut c,
            h.id,
            &rename,
            Some(Action::Verify),
            None,
            "li",
            3_200
        )
        .is_err());
        assert!(change(
            &mut c,
            h.id,
            &Edit::default(),
            Some(Action::Verify),
            None,
            "li",
            3_300
        )
        .is_err());
        let closed = change(
            &mut c,
            h.id,
            &Edit::default(),
            Some(Action::Verify),
            None,
            "inspector-2",
            3_400,
        )
        .unwrap();
        assert_eq!(closed.status, Status::Closed);
    }

    #[test]
    fn zeroing_counts_open_major_hazards_and_overdue_per_site() {
        let mut c = store();
        let h = create(&c, &new_hazard(), "i", Status::Open, "manual", None, 0).unwrap();
        let mut general = new_hazard();
        general.grade = "general".into();
        create(&c, &general, "i", Status::Open, "manual", None, 0).unwrap();
        let edit = Edit {
            owner: Some("li".into()),
            deadline: Some(1_000),
            plan: Some("p".into()),
            ..Default::default()
        };
        change(
            &mut c,
            h.id,
            &edit,
            Some(Action::StartRectification),
            None,
            "i",
            10,
        )
        .unwrap();
        let z = zeroing(&c, 2_000).unwrap();
        assert_eq!(z.len(), 1);
        assert_eq!(z[0]["open_major"], 2 - 1);
        assert_eq!(z[0]["open"], 2);
        assert_eq!(z[0]["overdue_major"], 1);
    }
}
