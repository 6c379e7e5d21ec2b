//! One fault, one incident: which open incident a new alarm belongs to, and
//! whether it is told. Pure: the store reads the open incidents of the site
//! and applies the answer in the writer's transaction.
//!
//! An incident is named by the serial of its first alarm (the lead). A new
//! alarm joins an open incident of its site when the rule packs say one
//! explains the other (`inhibited_by`, either way: a mains failure and the
//! UPS on battery it causes, in whatever room), or when it is in the same
//! room and category and comes within [`SAME_ROOM_WINDOW_MS`] of the
//! incident's latest alarm (the second smoke head after the first). A
//! different category in the same room is a different incident: a fire after
//! a leak must be told as a fire. Drill alarms group only with alarms of the
//! same drill, real ones only with real ones.
//!
//! A joining alarm is told only when it is news (see [`tell_joining`]):
//! worse than what was told and is still active (a follow-up), a fire or
//! explosion alarm joining an equipment fault, or anything while nothing
//! told is active; otherwise it is recorded under the incident and shown
//! there. Clears, acknowledgements, reminders and escalation follow each
//! told alarm as before; when the last told one clears while others of the
//! incident go on, the most severe of those is told (the store does that).

use super::engine::Ts;
use super::rules::RuleSet;

/// How close in time alarms of one room and category must come to be one incident.
pub const SAME_ROOM_WINDOW_MS: i64 = 10 * 60_000;

/// An active alarm that belongs to an incident, as the grouping needs it.
#[derive(Debug, Clone)]
pub struct Member {
    pub incident: u64,
    pub rule: usize,
    pub room: String,
    pub category: String,
    pub raised_at: Ts,
    pub drill: Option<i64>,
}

/// The alarm being raised.
#[derive(Debug, Clone, Copy)]
pub struct Raising<'a> {
    pub rule: usize,
    pub room: &'a str,
    pub category: &'a str,
    pub at: Ts,
    pub drill: Option<i64>,
}

/// Whether the packs say one of the two rules explains the other.
fn related(rules: &RuleSet, a: usize, b: usize) -> bool {
    let by = |x: usize, y: usize| {
        rules
            .rules
            .get(x)
            .is_some_and(|r| r.inhibited_by.contains(&y))
    };
    by(a, b) || by(b, a)
}

/// The incident `new` joins among the site's active alarms, if any: one
/// linked by cause first, else the one whose latest alarm in the same room
/// and category is the most recent within the window.
pub fn place(rules: &RuleSet, new: &Raising, active: &[Member]) -> Option<u64> {
    let same_drill = |m: &&Member| m.drill == new.drill;
    if let Some(m) = active
        .iter()
        .filter(same_drill)
        .filter(|m| related(rules, m.rule, new.rule))
        .max_by_key(|m| (m.raised_at, m.incident))
    {
        return Some(m.incident);
    }
    active
        .iter()
        .filter(same_drill)
        .filter(|m| {
            !new.room.is_empty()
                && m.room == new.room
                && m.category == new.category
                && (new.at - m.raised_at).abs() <= SAME_ROOM_WINDOW_MS
        })
        .max_by_key(|m| (m.raised_at, m.incident))
        .map(|m| m.incident)
}

/// A told alarm of the incident that is still active: its level, and
/// whether it is a life-safety (fire, explosion) alarm.
pub type Told = (u8, bool);

/// Whether a joining alarm of `level` is told, given the told alarms of its
/// incident that are still active. Told when nothing told is active (the
/// lead was explained, held by a window, or has cleared: what goes on is
/// news), when it is worse than all of them (a follow-up), or when it is a
/// life-safety alarm and none of them is (smoke after a detector went
/// silent, hydrogen after a BMS fault: the hazard itself is news).
pub fn tell_joining(level: u8, life_safety: bool, told: &[Told]) -> bool {
    told.is_empty()
        || told.iter().all(|(l, _)| level < *l)
        || (life_safety && !told.iter().any(|(_, ls)| *ls))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    fn rules() -> RuleSet {
        RuleSet::builtin_with(Vec::new()).unwrap()
    }

    fn member(rules: &RuleSet, incident: u64, rule: &str, room: &str, at: Ts) -> Member {
        let i = rules.index(rule).unwrap();
        Member {
            incident,
            rule: i,
            room: room.into(),
            category: rules.rules[i].category.as_str().into(),
            raised_at: at,
            drill: None,
        }
    }

    fn raising<'a>(rules: &'a RuleSet, rule: &str, room: &'a str, at: Ts) -> Raising<'a> {
        let i = rules.index(rule).unwrap();
        Raising {
            rule: i,
            room,
            category: rules.rules[i].category.as_str(),
            at,
            drill: None,
        }
    }

    #[test]
    fn what_a_mains_failure_causes_joins_its_incident_in_any_room() {
        let r = rules();
        let open = [member(
            &r,
            7,
            "electrical.mains_failure",
            "distribution-room",
            0,
        )];
        // The machine room warms because its cooling lost power.
        let warm = raising(&r, "environment.inlet_temp_high", "machine-room", 20 * MIN);
        assert_eq!(place(&r, &warm, &open), Some(7));
        // A phase lost before the mains failure was confirmed: the mains
        // failure joins the phase loss's incident.
        let open = [member(
            &r,
            3,
            "electrical.phase_loss",
            "distribution-room",
            0,
        )];
        let mains = raising(&r, "electrical.mains_failure", "distribution-room", 6_000);
        assert_eq!(place(&r, &mains, &open), Some(3));
    }

    #[test]
    fn the_same_room_and_category_groups_within_the_window_and_not_after() {
        let r = rules();
        let open = [member(&r, 4, "fire.smoke", "machine-room", 0)];
        let second = raising(&r, "fire.confirmed_two_heads", "machine-room", 20_000);
        assert_eq!(place(&r, &second, &open), Some(4));
        let later = raising(&r, "fire.confirmed_two_heads", "machine-room", 11 * MIN);
        assert_eq!(place(&r, &later, &open), None);
        // Another room is another incident.
        let elsewhere = raising(&r, "fire.smoke", "battery-room", 20_000);
        assert_eq!(place(&r, &elsewhere, &open), None);
    }

    #[test]
    fn a_fire_after_a_leak_in_the_same_room_is_its_own_incident() {
        let r = rules();
        let open = [member(&r, 9, "environment.water_leak", "machine-room", 0)];
        let fire = raising(&r, "fire.smoke", "machine-room", MIN);
        assert_eq!(place(&r, &fire, &open), None);
    }

    #[test]
    fn drill_alarms_group_only_with_their_own_drill() {
        let r = rules();
        let mut drill = member(&r, 5, "fire.smoke", "machine-room", 0);
        drill.drill = Some(2);
        let real = raising(&r, "fire.confirmed_two_heads", "machine-room", 20_000);
        assert_eq!(place(&r, &real, std::slice::from_ref(&drill)), None);
        let same = Raising {
            drill: Some(2),
            ..real
        };
        assert_eq!(place(&r, &same, std::slice::from_ref(&drill)), Some(5));
    }

    #[test]
    fn a_cause_wins_over_a_room_and_the_latest_incident_over_an_older_one() {
        let r = rules();
        let open = [
            member(&r, 1, "electrical.voltage_high", "distribution-room", 0),
            member(&r, 2, "electrical.mains_failure", "distribution-room", 0),
            member(&r, 3, "electrical.breaker_trip", "distribution-room", MIN),
        ];
        let ups = raising(
            &r,
            "electrical.ups_on_battery",
            "distribution-room",
            2 * MIN,
        );
        assert_eq!(place(&r, &ups, &open), Some(2));
        let trip = raising(&r, "electrical.spd_failed", "distribution-room", 2 * MIN);
        assert_eq!(place(&r, &trip, &open), Some(3));
    }

    #[test]
    fn a_joining_alarm_is_told_only_when_it_is_news() {
        // Nothing told is active: told.
        assert!(tell_joining(2, false, &[]));
        // Worse than every told alarm still active: a follow-up.
        assert!(tell_joining(1, false, &[(2, false)]));
        assert!(!tell_joining(2, false, &[(2, false)]));
        assert!(!tell_joining(3, false, &[(1, false)]));
        assert!(!tell_joining(1, false, &[(2, false), (1, true)]));
        // Smoke (level 2) after a detector went silent (level 2): the fire is news.
        assert!(tell_joining(2, true, &[(2, false)]));
        // The second smoke head after the first: not news.
        assert!(!tell_joining(2, true, &[(2, true)]));
    }
}
