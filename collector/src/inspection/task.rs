//! The inspection round, every 30 s on the blocking pool with a connection
//! of its own: the patrol of each room at its slot, hazards proposed from
//! critical and recurring alarms, overdue hazards told through the alarm
//! channels (outbox rows, so they are delivered like alarms: once, retried).

use super::{figures, hazard, patrol, InspectionConfig, InspectionError};
use crate::alarm::lifecycle::Route;
use crate::alarm::rules::RuleSet;
use crate::store::backend::Reads;
use crate::store::inspection::{start_proposals, state_get, state_set};
use crate::store::sql::Db;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// A patrol is written this long after its slot, so the slot's last
/// minute is rolled up.
const SETTLE_MS: i64 = 60_000;
const ROUND: Duration = Duration::from_secs(30);
/// Longest a patrol waits for its period's rollups.
const ROLLUP_WAIT_MS: i64 = 10 * 60_000;

pub struct Inspector {
    /// Where the inspection records are (either backend).
    pub records: Reads,
    pub cfg: InspectionConfig,
    pub rules: Option<Arc<RuleSet>>,
    pub routes: Vec<Route>,
    pub tz: jiff::tz::TimeZone,
    /// Wakes the notification sender.
    pub wake: Arc<Notify>,
    pub live: Arc<crate::live::Live>,
    /// In a cluster the round is the maintenance lease holder's alone.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// What one round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    pub patrols: usize,
    pub proposed: usize,
    pub overdue_told: usize,
}

impl Inspector {
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.cfg.round.unwrap_or(ROUND));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            if self
                .cluster
                .as_ref()
                .is_some_and(|c| !c.holds_maintenance())
            {
                continue;
            }
            match self.round(roomguard_protocol::clock::now_ms()).await {
                Ok(r) => {
                    if r.overdue_told > 0 {
                        self.wake.notify_one();
                    }
                    if r.proposed > 0 || r.patrols > 0 {
                        tracing::info!(
                            patrols = r.patrols,
                            proposed = r.proposed,
                            overdue_told = r.overdue_told,
                            "inspection round"
                        );
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "inspection round failed; retried next round")
                }
            }
        }
    }

    /// One round at `now`: the patrols, each written on its own (a
    /// transaction across every room would hold SQLite's write lock, and
    /// ingest, for the whole round), then the proposals and the overdue
    /// messages, each in a transaction.
    pub async fn round(self: &Arc<Self>, now: i64) -> Result<Round, InspectionError> {
        let me = self.clone();
        let patrols = self
            .records
            .blocking(false, move |c| me.patrols(c, now))
            .await?;
        let mut r = Round {
            patrols,
            ..Default::default()
        };
        // Proposals and overdue messages only with the alarm engine on
        // (PostgreSQL has the alarm tables either way).
        if self.rules.is_some() {
            let me = self.clone();
            r.proposed = self.records.blocking(true, move |c| me.propose(c)).await?;
            let me = self.clone();
            r.overdue_told = self
                .records
                .blocking(true, move |c| me.tell_overdue(c, now))
                .await?;
        }
        Ok(r)
    }

    /// The patrol of every room at the latest slot, if not written yet.
    fn patrols(&self, c: Db<'_>, now: i64) -> Result<usize, InspectionError> {
        let Some((from, slot)) =
            figures::current_slot(&self.cfg.schedule(), &self.tz, now - SETTLE_MS)
        else {
            return Ok(0);
        };
        let mut written = 0;
        for (site, room) in crate::store::patrols::rooms(c, None)? {
            // Not for a slot before the room's first reading: it was not
            // there to patrol (and the report plans none for it).
            let first = crate::store::patrols::room_first_reading(c, &site, &room)?;
            if first.is_none_or(|f| f > slot) {
                continue;
            }
            if crate::store::patrols::auto_done(c, &site, &room, slot)? {
                continue;
            }
            // Wait while the period's minutes are still being rolled up (a
            // backlog being stored): a record cannot be corrected later.
            // After ten minutes it is written as it stands.
            let pending = crate::store::patrols::rollups_pending(c, &site, &room, from, slot)?;
            if pending && now < slot + ROLLUP_WAIT_MS {
                continue;
            }
            let record = patrol::build_auto(c, self.rules.as_deref(), &site, &room, from, slot)?;
            if crate::store::patrols::write(
                c,
                &site,
                &room,
                "auto",
                slot,
                now,
                "roomguard",
                &record,
            )?
            .is_some()
            {
                written += 1;
            }
        }
        Ok(written)
    }

    /// Hazards proposed from alarms raised since the last round.
    fn propose(&self, c: Db<'_>) -> Result<usize, InspectionError> {
        // A store that had alarms before inspection was on: from now on.
        start_proposals(c)?;
        let after = state_get(c, "proposed_after_serial")?.unwrap_or(0);
        let alarms = c.wait(crate::store::alarms::raised_after(c.conn(), after, 500))?;
        let within = self.cfg.recurring_within.as_millis() as i64;
        let mut proposed = 0;
        for a in alarms.iter() {
            let crate::store::alarms::Raised {
                serial,
                rule,
                name,
                level,
                site,
                room,
                category,
                raised_at,
            } = a;
            if room.is_empty() || crate::store::hazards::already_tracked(c, site, room, rule)? {
                continue;
            }
            let critical = self.cfg.propose_from_critical && *level == 1;
            let times: i64 = if self.cfg.recurring_count > 0 {
                c.wait(crate::store::alarms::raise_count(
                    c.conn(),
                    (site, room, rule),
                    raised_at - within,
                    *raised_at,
                ))?
            } else {
                0
            };
            let recurring =
                self.cfg.recurring_count > 0 && times >= i64::from(self.cfg.recurring_count);
            if !critical && !recurring {
                continue;
            }
            let category = if hazard::CATEGORIES.contains(&category.as_str()) {
                category.clone()
            } else {
                "environment".into()
            };
            let (source, description) = if critical {
                (
                    "alarm",
                    format!("Proposed from level-1 alarm #{serial}: {name}"),
                )
            } else {
                (
                    "recurring",
                    format!(
                        "Proposed: {name} ({rule}) raised {times} times within {} days in this room (latest #{serial})",
                        within / 86_400_000
                    ),
                )
            };
            let new = hazard::NewHazard {
                site: site.clone(),
                room: room.clone(),
                category,
                grade: if *level == 1 { "major" } else { "general" }.into(),
                description,
                owner: None,
                deadline: None,
                plan: None,
            };
            crate::store::hazards::create(
                c,
                &new,
                "roomguard",
                hazard::Status::Proposed,
                hazard::Origin {
                    source,
                    rule: Some(rule),
                    alarm: Some(*serial),
                },
                *raised_at,
            )?;
            proposed += 1;
        }
        if let Some(last) = alarms.last() {
            state_set(c, "proposed_after_serial", last.serial)?;
        }
        Ok(proposed)
    }

    /// Outbox rows for hazards past their deadline, once per `overdue_repeat`.
    fn tell_overdue(&self, c: Db<'_>, now: i64) -> Result<usize, InspectionError> {
        let repeat = self.cfg.overdue_repeat.as_millis() as i64;
        let due = crate::store::hazards::due_overdue(c, now, repeat)?;
        let mut queued = 0;
        for h in &due {
            let level: u8 = if h.grade == "major" { 1 } else { 2 };
            let days = (now - h.deadline.unwrap_or(now)) / 86_400_000;
            let doc = json!({
                "kind": "hazard_overdue", "serial": -h.id, "hazard": h.id,
                "rule": "hazard.overdue",
                "name": format!("Hazard #{} overdue ({days} d): {}", h.id, h.description),
                "name_zh": format!("隐患#{}逾期未整改（{days}天）：{}", h.id, h.description),
                "level": level, "category": h.category, "site": h.site, "room": h.room,
                "device": "", "point": "", "value": null,
                "raised_at": h.found_at, "deadline": h.deadline, "late": false,
                "advice": format!("Owner: {}. Plan: {}. Close it, or agree a new deadline and record why.",
                                  h.owner.as_deref().unwrap_or("-"), h.plan.as_deref().unwrap_or("-")),
                "advice_zh": format!("责任人：{}。整改方案：{}。请完成整改，或商定新的期限并记录原因。",
                                     h.owner.as_deref().unwrap_or("-"), h.plan.as_deref().unwrap_or("-")),
                "source": "hazard register (隐患台账)",
            });
            let round = now / repeat.max(1);
            for route in self
                .routes
                .iter()
                .filter(|r| r.lifecycle && !r.escalation_only && r.levels.contains(&level))
            {
                let key = format!("hazard-{}:overdue:{round}", h.id);
                queued += c.wait(crate::store::outbox::enqueue(
                    c.conn(),
                    (&route.channel, &key),
                    -h.id,
                    "hazard_overdue",
                    &doc.to_string(),
                    now,
                ))?;
            }
            crate::store::hazards::mark_told(c, h.id, now)?;
        }
        if !due.is_empty() {
            self.live.alarms_changed();
        }
        Ok(queued)
    }
}
