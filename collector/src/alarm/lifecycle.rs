//! What an alarm's transitions and its age mean for the people told about
//! it: whether a raise is told now, held by a maintenance window or
//! explained by another alarm; which channels hear a raise, a clear, an
//! acknowledgement, a reminder or an escalation; when an unacknowledged
//! alarm is repeated and escalated. Pure: the store applies these decisions
//! in the transaction that records the transition, so every backend decides
//! alike and the rules are tested without a database.

use super::engine::Ts;
use super::rules::glob;
use serde::{Deserialize, Serialize};

/// A maintenance window: alarms it covers are recorded, not told, until it ends.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Silence {
    pub id: i64,
    pub site: Option<String>,
    pub room: Option<String>,
    pub rule: Option<String>,
    pub reason: String,
    pub owner: String,
    pub starts_at: i64,
    pub ends_at: i64,
    pub created_at: i64,
    pub ended_at: Option<i64>,
    pub ended_by: Option<String>,
}

impl Silence {
    /// Whether the window covers an alarm of `rule` in `site`/`room` at `at`.
    pub fn matches(&self, site: &str, room: &str, rule: &str, at: Ts) -> bool {
        self.ended_at.is_none()
            && self.starts_at <= at
            && at < self.ends_at
            && self.site.as_deref().is_none_or(|s| s == site)
            && self.room.as_deref().is_none_or(|r| r == room)
            && self.rule.as_deref().is_none_or(|g| glob(g, rule))
    }
}

/// A declared drill: alarms raised inside it, in its site (and room, when
/// it names one), are drill alarms — marked, notified as drills where a
/// channel wants them, and kept out of the real counts of reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drill {
    pub id: i64,
    pub site: String,
    /// Empty: the whole site.
    pub room: String,
    pub started_at: Ts,
    pub ended_at: Ts,
    /// When it was declared: nothing before that is its (less a minute,
    /// for agents' clocks), so a drill declared afterwards over a past time
    /// cannot turn real alarms, even ones still in a spool, into its own.
    pub declared_at: Ts,
}

/// How far before its declaration a drill still takes alarms: the agents'
/// clocks and the collector's differ a little.
pub const DECLARED_SLACK_MS: Ts = 60_000;

impl Drill {
    /// Whether an alarm in `site`/`room` whose condition began at `at`
    /// belongs to this drill. Event time, not the time it was recorded: a
    /// drill's alarms that arrive late from a spool are still the drill's.
    pub fn covers(&self, site: &str, room: &str, at: Ts) -> bool {
        self.site == site
            && (self.room.is_empty() || self.room == room)
            && self.started_at.max(self.declared_at - DECLARED_SLACK_MS) <= at
            && at < self.ended_at
    }
}

/// The drill an alarm belongs to, if any (the latest started, should two
/// overlap).
pub fn drill_of(drills: &[Drill], (site, room): (&str, &str), at: Ts) -> Option<i64> {
    drills
        .iter()
        .filter(|d| d.covers(site, room, at))
        .max_by_key(|d| (d.started_at, d.id))
        .map(|d| d.id)
}

/// Where notifications go, as the lifecycle needs to know it: which levels
/// and which kinds of notification a channel takes.
#[derive(Debug, Clone)]
pub struct Route {
    pub channel: String,
    pub levels: Vec<u8>,
    /// Receives only escalations (the second target).
    pub escalation_only: bool,
    /// Takes acknowledgements and repeats (Alertmanager does not: it has
    /// its own repeat and no acknowledgement).
    pub lifecycle: bool,
    /// Takes drill alarms (marked as drills).
    pub drills: bool,
}

/// Unacknowledged alarms of `levels` are sent again every `repeat_every_ms`,
/// and after `escalate_after_ms` to the escalation channels too (0: never).
#[derive(Debug, Clone)]
pub struct Escalation {
    pub levels: Vec<u8>,
    pub repeat_every_ms: i64,
    pub escalate_after_ms: i64,
}

/// A raise recorded this much after the event is judged against the windows
/// open now rather than then: a backlog from an outage must not be told
/// because its window has since ended.
pub const LATE_AFTER_MS: i64 = 60_000;

/// How a raise is recorded and whether it is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Raise {
    /// The window holding it back, told when that ends.
    pub silenced_by: Option<i64>,
    /// Why it is not told now, for the audit trail.
    pub why: Option<String>,
    pub tell: bool,
}

/// Decides a raise at `at` (the event), recorded at `now`.
pub fn on_raise(
    inhibited: bool,
    silences: &[Silence],
    (site, room, rule): (&str, &str, &str),
    at: Ts,
    now: Ts,
) -> Raise {
    let silenced_by = silences
        .iter()
        .find(|s| s.matches(site, room, rule, at.max(now - LATE_AFTER_MS)))
        .map(|s| s.id);
    let why = match (inhibited, silenced_by) {
        (true, _) => Some("inhibited by an active alarm that explains it".to_owned()),
        (_, Some(id)) => Some(format!("silenced by maintenance window {id}")),
        _ => None,
    };
    Raise {
        silenced_by,
        why,
        tell: !inhibited && silenced_by.is_none(),
    }
}

/// An alarm whose explanation cleared: the window that now holds it, if
/// any; otherwise it is told at once.
pub fn on_release(
    silences: &[Silence],
    (site, room, rule): (&str, &str, &str),
    now: Ts,
) -> Option<i64> {
    silences
        .iter()
        .find(|s| s.matches(site, room, rule, now))
        .map(|s| s.id)
}

/// A raise held by a window is told once no window covers it any more.
pub fn held_raise_due(
    silences: &[Silence],
    (site, room, rule): (&str, &str, &str),
    now: Ts,
) -> bool {
    !silences.iter().any(|s| s.matches(site, room, rule, now))
}

/// A notification about one alarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Note {
    Raise,
    /// A clear, to wherever the raise went; `escalated`: the escalation
    /// channels heard of it and hear its end.
    Clear {
        escalated: bool,
    },
    Ack,
    /// The `n`th reminder of an unacknowledged alarm.
    Repeat(i64),
    Escalate,
}

impl Note {
    /// The kind as stored and sent (`X-RoomGuard-Kind`).
    pub fn kind(self) -> &'static str {
        match self {
            Note::Raise => "raise",
            Note::Clear { .. } => "clear",
            Note::Ack => "ack",
            Note::Repeat(_) => "repeat",
            Note::Escalate => "escalate",
        }
    }

    /// The idempotency key of this notification of alarm `serial`: the same
    /// notification queued twice is one row, and a receiver seeing the key
    /// again knows it is a repeat delivery.
    pub fn key(self, serial: u64) -> String {
        match self {
            Note::Repeat(n) => format!("{serial}:repeat{n}"),
            other => format!("{serial}:{}", other.kind()),
        }
    }

    /// Whether `route` takes this notification of an alarm of `level`
    /// (`drill`: raised inside a declared drill).
    pub fn goes_to(self, route: &Route, level: u8, drill: bool) -> bool {
        if !route.levels.contains(&level) || (drill && !route.drills) {
            return false;
        }
        match self {
            Note::Raise => !route.escalation_only,
            Note::Clear { escalated } => !route.escalation_only || escalated,
            Note::Ack | Note::Repeat(_) => route.lifecycle && !route.escalation_only,
            Note::Escalate => route.lifecycle && route.escalation_only,
        }
    }
}

/// The reminders due now for an unacknowledged, notified alarm of `level`,
/// told at `notified_at`.
pub fn reminders(
    e: &Escalation,
    level: u8,
    notified_at: Ts,
    escalated: bool,
    now: Ts,
) -> Vec<Note> {
    let mut out = Vec::new();
    if !e.levels.contains(&level) {
        return out;
    }
    let age = now - notified_at;
    if e.repeat_every_ms > 0 && age >= e.repeat_every_ms {
        out.push(Note::Repeat(age / e.repeat_every_ms));
    }
    if e.escalate_after_ms > 0 && age >= e.escalate_after_ms && !escalated {
        out.push(Note::Escalate);
    }
    out
}

pub fn level_name(level: u8) -> (&'static str, &'static str) {
    match level {
        1 => ("critical", "一级"),
        2 => ("major", "二级"),
        3 => ("minor", "三级"),
        _ => ("hint", "四级"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    fn window(id: i64, room: Option<&str>, rule: Option<&str>, from: Ts, to: Ts) -> Silence {
        Silence {
            id,
            site: Some("s".into()),
            room: room.map(str::to_owned),
            rule: rule.map(str::to_owned),
            reason: "work".into(),
            owner: "ops".into(),
            starts_at: from,
            ends_at: to,
            created_at: from,
            ended_at: None,
            ended_by: None,
        }
    }

    fn route(channel: &str, escalation_only: bool, lifecycle: bool) -> Route {
        Route {
            channel: channel.into(),
            levels: vec![1, 2, 3],
            escalation_only,
            lifecycle,
            drills: true,
        }
    }

    const AT: (&str, &str, &str) = ("s", "battery-room", "explosion.h2_alarm");

    #[test]
    fn a_raise_is_told_unless_a_window_holds_it_or_an_alarm_explains_it() {
        let w = [window(
            7,
            Some("battery-room"),
            Some("explosion.*"),
            0,
            10 * MIN,
        )];
        assert_eq!(
            on_raise(false, &[], AT, MIN, MIN),
            Raise {
                silenced_by: None,
                why: None,
                tell: true
            }
        );
        let held = on_raise(false, &w, AT, MIN, MIN);
        assert_eq!((held.silenced_by, held.tell), (Some(7), false));
        assert!(held.why.unwrap().contains("window 7"));
        let explained = on_raise(true, &[], AT, MIN, MIN);
        assert!(!explained.tell && explained.why.unwrap().contains("inhibited"));
        // Another room, or another rule, is not covered.
        assert!(
            on_raise(
                false,
                &w,
                ("s", "machine-room", "explosion.h2_alarm"),
                MIN,
                MIN
            )
            .tell
        );
        assert!(on_raise(false, &w, ("s", "battery-room", "fire.smoke"), MIN, MIN).tell);
    }

    #[test]
    fn an_alarm_belongs_to_the_drill_of_its_site_and_room_while_the_drill_runs() {
        let d = |id, room: &str, from, to| Drill {
            id,
            site: "s".into(),
            room: room.into(),
            started_at: from,
            ended_at: to,
            declared_at: from,
        };
        let drills = [
            d(1, "battery-room", 0, 10 * MIN),
            d(2, "", 5 * MIN, 20 * MIN),
        ];
        assert_eq!(drill_of(&drills, ("s", "battery-room"), MIN), Some(1));
        // Another room of the site: only the site-wide drill covers it.
        assert_eq!(drill_of(&drills, ("s", "machine-room"), MIN), None);
        assert_eq!(drill_of(&drills, ("s", "machine-room"), 6 * MIN), Some(2));
        // Both cover it: the one started last.
        assert_eq!(drill_of(&drills, ("s", "battery-room"), 6 * MIN), Some(2));
        // The end is not inside; another site never is.
        assert_eq!(drill_of(&drills, ("s", "battery-room"), 20 * MIN), None);
        assert_eq!(drill_of(&drills, ("t", "battery-room"), MIN), None);
        // Declared afterwards over a past time: it takes nothing from before
        // its declaration (less the clocks' slack).
        let late = [Drill {
            declared_at: 30 * MIN,
            ..d(3, "", 0, 60 * MIN)
        }];
        assert_eq!(drill_of(&late, ("s", "battery-room"), 10 * MIN), None);
        assert_eq!(
            drill_of(&late, ("s", "battery-room"), 29 * MIN + 30_000),
            Some(3)
        );
    }

    #[test]
    fn a_late_raise_is_judged_by_the_windows_open_when_it_is_recorded() {
        // Raised during an outage inside a window that ended since: the
        // backlog is told now, not held by a window long gone.
        let w = [window(1, None, None, 0, 10 * MIN)];
        assert!(on_raise(false, &w, AT, 5 * MIN, 30 * MIN).tell);
        // Recorded within a minute of the event: the window at the event holds it.
        assert!(!on_raise(false, &w, AT, 5 * MIN, 5 * MIN + 30_000).tell);
    }

    #[test]
    fn a_held_raise_is_due_when_its_window_ends_and_a_release_may_be_held_again() {
        let w = [window(3, None, None, 0, 10 * MIN)];
        assert!(!held_raise_due(&w, AT, 9 * MIN));
        assert!(held_raise_due(&w, AT, 10 * MIN));
        assert_eq!(on_release(&w, AT, 9 * MIN), Some(3));
        assert_eq!(on_release(&w, AT, 11 * MIN), None);
    }

    #[test]
    fn each_kind_of_notification_goes_to_its_channels() {
        let pager = route("pager", false, true);
        let alertmanager = route("am", false, false);
        let boss = route("boss", true, true);
        let takes = |n: Note| -> Vec<&str> {
            [&pager, &alertmanager, &boss]
                .into_iter()
                .filter(|r| n.goes_to(r, 2, false))
                .map(|r| r.channel.as_str())
                .collect()
        };
        assert_eq!(takes(Note::Raise), ["pager", "am"]);
        assert_eq!(takes(Note::Clear { escalated: false }), ["pager", "am"]);
        assert_eq!(
            takes(Note::Clear { escalated: true }),
            ["pager", "am", "boss"]
        );
        assert_eq!(takes(Note::Ack), ["pager"]);
        assert_eq!(takes(Note::Repeat(1)), ["pager"]);
        assert_eq!(takes(Note::Escalate), ["boss"]);
        // A level the channel does not take: nothing.
        assert!(!Note::Raise.goes_to(&pager, 4, false));
        // A channel that does not take drills hears nothing of them.
        let quiet = Route {
            drills: false,
            ..pager.clone()
        };
        assert!(Note::Raise.goes_to(&quiet, 1, false));
        assert!(!Note::Raise.goes_to(&quiet, 1, true));
        assert!(Note::Raise.goes_to(&pager, 1, true));
    }

    #[test]
    fn reminders_repeat_each_period_and_escalate_once() {
        let e = Escalation {
            levels: vec![1, 2],
            repeat_every_ms: 15 * MIN,
            escalate_after_ms: 30 * MIN,
        };
        assert!(reminders(&e, 1, 0, false, 14 * MIN).is_empty());
        assert_eq!(reminders(&e, 1, 0, false, 15 * MIN), [Note::Repeat(1)]);
        assert_eq!(
            reminders(&e, 1, 0, false, 31 * MIN),
            [Note::Repeat(2), Note::Escalate]
        );
        assert_eq!(reminders(&e, 1, 0, true, 31 * MIN), [Note::Repeat(2)]);
        assert!(
            reminders(&e, 3, 0, false, 60 * MIN).is_empty(),
            "level 3 is not reminded"
        );
        // The same reminder asked for twice has the same key: queued once.
        assert_eq!(Note::Repeat(2).key(12), "12:repeat2");
        assert_eq!(Note::Clear { escalated: true }.key(12), "12:clear");
    }
}
