//! The hazard register (隐患台账): every hidden hazard from the moment it is
//! found until it is verified closed, with an append-only trail of who
//! changed what. The status machine and the rules of a new hazard are pure
//! ([`next`], [`check_new`]); the store keeps them (`store/hazards.rs`).

use serde::{Deserialize, Serialize};

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
    /// The serial of the alarm that proposed it, so the register links to it.
    pub alarm: Option<i64>,
}

/// Where a hazard came from: `manual`, `alarm` (a level-1 alarm) or
/// `recurring` (a rule that kept firing), with that rule and alarm.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub source: &'a str,
    pub rule: Option<&'a str>,
    pub alarm: Option<i64>,
}

impl Origin<'_> {
    pub const MANUAL: Origin<'static> = Origin {
        source: "manual",
        rule: None,
        alarm: None,
    };
}

impl Hazard {
    /// Past its deadline and not yet handed over for verification.
    pub fn overdue_at(&self, now: i64) -> bool {
        matches!(self.status, Status::Open | Status::Rectifying)
            && self.deadline.is_some_and(|d| d < now)
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::hazards::*;
    use crate::store::sql::Db;
    use rusqlite::Connection;
    use serde_json::json;

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
        let c = store();
        let h = create(
            Db::lite(&c),
            &new_hazard(),
            "inspector-1",
            Status::Open,
            Origin::MANUAL,
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
            Db::lite(&c),
            h.id,
            &edit,
            Some(Action::StartRectification),
            None,
            "inspector-1",
            2_000,
        )
        .unwrap();
        assert_eq!(h2.status, Status::Rectifying);
        let trail = events(Db::lite(&c), h.id).unwrap();
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
            Db::lite(&c),
            h.id,
            &evidence,
            Some(Action::SubmitForVerification),
            None,
            "wang",
            3_000,
        )
        .unwrap();
        let e = change(
            Db::lite(&c),
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
            Db::lite(&c),
            h.id,
            &rename,
            Some(Action::Verify),
            None,
            "li",
            3_200
        )
        .is_err());
        assert!(change(
            Db::lite(&c),
            h.id,
            &Edit::default(),
            Some(Action::Verify),
            None,
            "li",
            3_300
        )
        .is_err());
        let closed = change(
            Db::lite(&c),
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
        let c = store();
        let h = create(
            Db::lite(&c),
            &new_hazard(),
            "i",
            Status::Open,
            Origin::MANUAL,
            0,
        )
        .unwrap();
        let mut general = new_hazard();
        general.grade = "general".into();
        create(Db::lite(&c), &general, "i", Status::Open, Origin::MANUAL, 0).unwrap();
        let edit = Edit {
            owner: Some("li".into()),
            deadline: Some(1_000),
            plan: Some("p".into()),
            ..Default::default()
        };
        change(
            Db::lite(&c),
            h.id,
            &edit,
            Some(Action::StartRectification),
            None,
            "i",
            10,
        )
        .unwrap();
        let z = zeroing(Db::lite(&c), 2_000).unwrap();
        assert_eq!(z.len(), 1);
        assert_eq!(z[0]["open_major"], 2 - 1);
        assert_eq!(z[0]["open"], 2);
        assert_eq!(z[0]["overdue_major"], 1);
    }
}
