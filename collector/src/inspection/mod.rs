//! What inspectors pull from RoomGuard (docs/INSPECTION.md): patrol records
//! written on a schedule and by hand, the hazard register with its zeroing
//! view, drills, and monthly and yearly safety reports.
//!
//! - `figures.rs`: pure arithmetic (completeness, minutes beyond a limit,
//!   patrol slots);
//! - `hazard.rs`: the register, its status machine and append-only trail;
//! - `patrol.rs`: automatic and manual patrol records (immutable);
//! - `report.rs`: the monthly and yearly figures; `render.rs`: CSV and
//!   printable HTML;
//! - `task.rs`: the background round (patrols due, hazards proposed from
//!   alarms, overdue hazards told through the alarm channels).

pub mod figures;
pub mod hazard;
pub mod patrol;
pub mod render;
pub mod report;
pub mod task;

use roomguard_protocol::conf::{option_duration, Problems};
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum InspectionError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("store: {0}")]
    Store(#[from] rusqlite::Error),
    #[error("store: {0}")]
    Record(#[from] crate::store::sql::SqlError),
}

/// `[inspection]`: when patrols are due, and how hazards follow alarms.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InspectionConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// A patrol record per room this often, from local midnight…
    #[serde(default = "default_every", with = "roomguard_protocol::conf::duration")]
    pub patrol_every: Duration,
    /// …or at these local times of day (shift changes), e.g. ["08:00", "20:00"].
    #[serde(default)]
    pub patrol_at: Vec<String>,
    /// A level-1 alarm proposes a hazard for its room.
    #[serde(default = "yes")]
    pub propose_from_critical: bool,
    /// A rule raised this many times in one room within `recurring_within`
    /// proposes a hazard (0: never).
    #[serde(default = "default_recurring")]
    pub recurring_count: u32,
    #[serde(
        default = "default_within",
        with = "roomguard_protocol::conf::duration"
    )]
    pub recurring_within: Duration,
    /// Overdue hazards are told through the alarm channels, again this often.
    #[serde(
        default = "default_repeat",
        with = "roomguard_protocol::conf::duration"
    )]
    pub overdue_repeat: Duration,
    /// Manual patrol checklist; the built-in one when empty.
    #[serde(default)]
    pub checklist: Vec<ChecklistItem>,
    /// Only for tests and drills on a fast clock: the patrol round runs this often.
    #[serde(default, with = "option_duration")]
    pub round: Option<Duration>,
}

fn yes() -> bool {
    true
}
fn default_every() -> Duration {
    Duration::from_secs(2 * 3600)
}
fn default_recurring() -> u32 {
    3
}
fn default_within() -> Duration {
    Duration::from_secs(7 * 86_400)
}
fn default_repeat() -> Duration {
    Duration::from_secs(86_400)
}

impl Default for InspectionConfig {
    fn default() -> Self {
        InspectionConfig {
            enabled: true,
            patrol_every: default_every(),
            patrol_at: Vec::new(),
            propose_from_critical: true,
            recurring_count: default_recurring(),
            recurring_within: default_within(),
            overdue_repeat: default_repeat(),
            checklist: Vec::new(),
            round: None,
        }
    }
}

/// One thing a person checks on a walk-through.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ChecklistItem {
    pub id: String,
    pub en: String,
    pub zh: String,
}

/// What the 2025 notice asks patrols to look at in machine, distribution and
/// battery rooms (DOMAIN.md): fire, explosion and electrical hazards.
pub fn builtin_checklist() -> Vec<ChecklistItem> {
    [
        (
            "extinguishers",
            "Extinguishers present, in date, pressure in the green",
            "灭火器齐全、在有效期内、压力正常",
        ),
        (
            "gas_suppression",
            "Gas suppression system armed, no fault lamp",
            "气体灭火系统处于自动状态、无故障指示",
        ),
        (
            "emergency_lighting",
            "Emergency lighting and exit signs work",
            "应急照明和疏散指示正常",
        ),
        (
            "fire_doors",
            "Fire doors close and are not blocked",
            "防火门能关闭、未被堵塞",
        ),
        (
            "battery_ventilation",
            "Battery-room ventilation runs; no smell of electrolyte",
            "蓄电池室通风正常、无电解液气味",
        ),
        (
            "battery_condition",
            "No swollen, leaking or hot battery blocks",
            "电池无鼓胀、漏液、过热",
        ),
        (
            "cable_trenches",
            "Cable trenches covered, dry, fire-stopped",
            "电缆沟盖板完好、无积水、防火封堵完好",
        ),
        (
            "distribution_panels",
            "Distribution panels closed, no burning smell or hot spots",
            "配电柜门关闭、无焦糊味和过热点",
        ),
        (
            "flammables",
            "No flammable materials or clutter stored in the room",
            "机房内无易燃物品和杂物堆放",
        ),
        (
            "water_ingress",
            "No water ingress, leaks or condensation",
            "无进水、漏水、凝露",
        ),
    ]
    .into_iter()
    .map(|(id, en, zh)| ChecklistItem {
        id: id.into(),
        en: en.into(),
        zh: zh.into(),
    })
    .collect()
}

impl InspectionConfig {
    pub fn checklist(&self) -> Vec<ChecklistItem> {
        if self.checklist.is_empty() {
            builtin_checklist()
        } else {
            self.checklist.clone()
        }
    }

    pub fn schedule(&self) -> figures::Schedule {
        if self.patrol_at.is_empty() {
            figures::Schedule::Every(self.patrol_every.as_millis() as i64)
        } else {
            let mut m: Vec<i64> = self
                .patrol_at
                .iter()
                .filter_map(|t| time_of_day(t))
                .collect();
            m.sort_unstable();
            m.dedup();
            figures::Schedule::At(m)
        }
    }

    pub fn check(&self, p: &mut Problems) {
        let every = self.patrol_every.as_secs();
        if self.patrol_at.is_empty()
            && (every < 60 || 86_400 % every != 0 || self.patrol_every.subsec_nanos() != 0)
        {
            p.push(
                "inspection.patrol_every",
                "must divide a day into whole periods (e.g. 1h, 2h, 4h, 8h, 12h, 24h) and be at least 1m",
            );
        }
        for (i, t) in self.patrol_at.iter().enumerate() {
            if time_of_day(t).is_none() {
                p.push(
                    format!("inspection.patrol_at[{i}]"),
                    format!("{t:?} is not a time of day like \"08:00\""),
                );
            }
        }
        if self.round.is_some_and(|r| r < Duration::from_secs(1)) {
            p.push("inspection.round", "must be at least 1s");
        }
        if self.overdue_repeat < Duration::from_secs(60) {
            p.push("inspection.overdue_repeat", "must be at least 1m");
        }
        let mut ids = std::collections::HashSet::new();
        for (i, c) in self.checklist.iter().enumerate() {
            if c.id.is_empty() || !ids.insert(c.id.clone()) {
                p.push(
                    format!("inspection.checklist[{i}].id"),
                    "must be set and unique",
                );
            }
        }
    }
}

/// Minutes after midnight of "HH:MM".
fn time_of_day(s: &str) -> Option<i64> {
    let (h, m) = s.split_once(':')?;
    let (h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
    ((0..24).contains(&h) && (0..60).contains(&m)).then_some(h * 60 + m)
}

/// A drill: a simulator scenario or a real exercise, as run.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewDrill {
    pub site: String,
    #[serde(default)]
    pub room: String,
    pub scenario: String,
    #[serde(default)]
    pub note: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_patrol_period_must_divide_the_day() {
        let mut p = Problems::default();
        let cfg = InspectionConfig {
            patrol_every: Duration::from_secs(7 * 3600),
            ..Default::default()
        };
        cfg.check(&mut p);
        assert!(format!("{p:?}").contains("inspection.patrol_every"));
        let shifts = InspectionConfig {
            patrol_at: vec!["08:00".into(), "25:00".into()],
            ..Default::default()
        };
        let mut p = Problems::default();
        shifts.check(&mut p);
        assert!(format!("{p:?}").contains("inspection.patrol_at[1]"));
        assert_eq!(
            InspectionConfig {
                patrol_at: vec!["20:00".into(), "08:00".into()],
                ..Default::default()
            }
            .schedule(),
            figures::Schedule::At(vec![480, 1200])
        );
    }
}
