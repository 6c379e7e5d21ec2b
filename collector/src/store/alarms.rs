//! The alarm record in the store: alarms with their lifecycle, the audit
//! trail of every change, silences, the engine's persisted state and the
//! notification outbox. Transitions are written by the store writer in the
//! same transaction as the readings that caused them; people's actions
//! (acknowledge, comment, assign, silences) by the API. Every statement
//! runs on either backend (`store/sql.rs`).

use crate::alarm::engine::{Engine, Kind, Saved, Transition, Ts};
use crate::alarm::incident::{self, Member, Raising};
use crate::alarm::lifecycle::{self, Note, LATE_AFTER_MS};
use crate::alarm::lifecycle::{level_name, Drill, Escalation, Route, Silence};
use crate::alarm::rules::RuleSet;
use crate::args;
use crate::store::sql::{Conn, Row, SqlError};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum RecordError {
    #[error("{0}")]
    Store(#[from] SqlError),
    #[error("no alarm with serial {0}")]
    NoAlarm(u64),
    #[error("no silence with id {0}")]
    NoSilence(i64),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
}

impl From<rusqlite::Error> for RecordError {
    fn from(e: rusqlite::Error) -> Self {
        RecordError::Store(e.into())
    }
}

impl From<tokio_postgres::Error> for RecordError {
    fn from(e: tokio_postgres::Error) -> Self {
        RecordError::Store(e.into())
    }
}

/// What the alarm record is built from, kept to rebuild it after a failed
/// transaction (its in-memory state ran ahead of what was committed).
#[derive(Clone)]
pub struct AlarmSetup {
    pub rules: Arc<RuleSet>,
    pub routes: Vec<Route>,
    pub escalation: Escalation,
}

/// Held notifications and escalation are looked at every this many
/// maintenance calls.
pub const SWEEP_EVERY: u32 = 5;

/// The alarm side of the store writer: the engine and where its transitions go.
pub struct Recorder {
    pub engine: Engine,
    routes: Vec<Route>,
    escalation: Escalation,
    /// Notifications queued in the current transaction.
    queued: usize,
    /// Raises and clears recorded since the last `take_counts`.
    counts: (u64, u64),
    /// The engine's next serial as far as the store's counter has handed
    /// serials out to it (PostgreSQL).
    serial_mark: u64,
}

/// Which sites an engine judges: in a cluster, those of the partitions its
/// node holds; otherwise every one.
pub type SiteFilter<'a> = Option<&'a dyn Fn(&str) -> bool>;

const SILENCE_COLUMNS: &str =
    "id, site, room, rule, reason, owner, starts_at, ends_at, created_at, ended_at, ended_by";

pub async fn active_silences(db: Conn<'_>, now: Ts) -> Result<Vec<Silence>, SqlError> {
    db.rows(
        &format!("SELECT {SILENCE_COLUMNS} FROM silences WHERE ended_at IS NULL AND ends_at > $1"),
        args![now],
    )
    .await?
    .iter()
    .map(silence_row)
    .collect()
}

/// The active alarms of `site` with their incidents, for grouping a new one.
async fn active_members(
    db: Conn<'_>,
    rules: &RuleSet,
    site: &str,
) -> Result<Vec<Member>, SqlError> {
    let mut out = Vec::new();
    for r in db
        .rows(
            "SELECT COALESCE(incident, serial), rule, room, category, raised_at, drill FROM alarms
             WHERE cleared_at IS NULL AND site = $1",
            args![site],
        )
        .await?
    {
        // A rule since removed from the packs links nothing.
        let Some(rule) = rules.index(&r.get::<String>(1)?) else {
            continue;
        };
        out.push(Member {
            incident: r.get(0)?,
            rule,
            room: r.get(2)?,
            category: r.get(3)?,
            raised_at: r.get(4)?,
            drill: r.get(5)?,
        });
    }
    Ok(out)
}

/// The told alarms of incident `lead` that are still active.
async fn told_active(
    db: Conn<'_>,
    rules: &RuleSet,
    lead: u64,
) -> Result<Vec<incident::Told>, SqlError> {
    let mut out = Vec::new();
    for r in db
        .rows(
            "SELECT level, rule FROM alarms
             WHERE (incident = $1 OR serial = $1) AND notified = TRUE AND cleared_at IS NULL",
            args![lead],
        )
        .await?
    {
        let level: i64 = r.get(0)?;
        let rule: String = r.get(1)?;
        let ls = rules
            .index(&rule)
            .is_some_and(|i| rules.rules[i].life_safety);
        out.push((level.clamp(1, 4) as u8, ls));
    }
    Ok(out)
}

/// Declared drills whose time overlaps `[from, to]` (event times).
pub async fn drills_between(db: Conn<'_>, from: Ts, to: Ts) -> Result<Vec<Drill>, SqlError> {
    db.rows(
        "SELECT id, site, room, started_at, ended_at, COALESCE(declared_at, started_at) FROM drills
         WHERE ended_at > $1 AND started_at <= $2",
        args![from, to],
    )
    .await?
    .iter()
    .map(|r| {
        Ok(Drill {
            id: r.get(0)?,
            site: r.get(1)?,
            room: r.get(2)?,
            started_at: r.get(3)?,
            ended_at: r.get(4)?,
            declared_at: r.get(5)?,
        })
    })
    .collect()
}

fn silence_row(r: &Row) -> Result<Silence, SqlError> {
    Ok(Silence {
        id: r.get(0)?,
        site: r.get(1)?,
        room: r.get(2)?,
        rule: r.get(3)?,
        reason: r.get(4)?,
        owner: r.get(5)?,
        starts_at: r.get(6)?,
        ends_at: r.get(7)?,
        created_at: r.get(8)?,
        ended_at: r.get(9)?,
        ended_by: r.get(10)?,
    })
}

/// How long delivered notifications are kept.
const OUTBOX_KEEP_MS: i64 = 30 * 86_400_000;

/// Points whose recent history is read at once when the engine loads: on
/// PostgreSQL their queries go out together (pipelined), not one round
/// trip each.
const WARM_AT_ONCE: usize = 500;

impl Recorder {
    /// Loads the engine's state from the store: the next serial, persisted
    /// instance state, the catalogue (so instances exist before readings
    /// arrive), and recent readings to refill rate windows.
    pub async fn load(
        db: Conn<'_>,
        rules: Arc<RuleSet>,
        routes: Vec<Route>,
        escalation: Escalation,
        now: Ts,
        only: SiteFilter<'_>,
    ) -> Result<Recorder, RecordError> {
        let mut next: i64 = db
            .value("SELECT coalesce(max(serial), 0) + 1 FROM alarms", &[])
            .await?;
        if db.is_postgres() {
            // Serials come from one sequence there (see `record`).
            let counter: i64 = db
                .value(
                    "SELECT CASE WHEN is_called THEN last_value + 1 ELSE last_value END FROM alarm_serials",
                    &[],
                )
                .await?;
            next = next.max(counter);
        }
        let ours = |site: &str| only.is_none_or(|f| f(site));
        let mut saved = HashMap::new();
        for r in db.rows("SELECT key, state FROM alarm_state", &[]).await? {
            let key: String = r.get(0)?;
            // `rule|site|scope|id`: another node's sites are its own.
            if !ours(key.split('|').nth(1).unwrap_or_default()) {
                continue;
            }
            let text: String = r.get(1)?;
            match serde_json::from_str::<Saved>(&text) {
                Ok(s) => {
                    saved.insert(key, s);
                }
                Err(e) => {
                    tracing::warn!(%key, error = %e, "unreadable alarm state; starting that rule fresh")
                }
            }
        }
        let mut engine = Engine::new(rules, next as u64, now, saved);
        // (point id, site, point) of every catalogued point.
        let mut points: Vec<(i64, String, String)> = Vec::new();
        for r in db
            .rows(
                "SELECT id, site, agent, point, room, device, quantity FROM points",
                &[],
            )
            .await?
        {
            let site: String = r.get(1)?;
            if !ours(&site) {
                continue;
            }
            let agent: String = r.get(2)?;
            let point: String = r.get(3)?;
            let device: String = r.get(5)?;
            let meta = roomguard_protocol::PointMeta {
                id: point.as_str().into(),
                room: r.get::<String>(4)?.into(),
                quantity: r.get::<String>(6)?.into(),
                unit: "".into(),
            };
            engine.describe(&site, &agent, &device, &meta);
            points.push((r.get(0)?, site, point));
        }
        // Rate windows and point silence from what is stored: the recent
        // history of points with a rate rule, and every point's newest good
        // reading (its newest reading may be a bad one).
        for chunk in points.chunks(WARM_AT_ONCE) {
            let reads = chunk.iter().map(|(id, site, point)| {
                let window = engine.window_of(site, point);
                async move {
                    let recent = match window {
                        Some(w) => {
                            db.rows(
                                "SELECT ts, value, bad IS NULL FROM samples WHERE point_id = $1
                                   AND ts >= (SELECT max(ts) FROM samples WHERE point_id = $1) - $2
                                 ORDER BY ts",
                                args![*id, w],
                            )
                            .await?
                        }
                        None => Vec::new(),
                    };
                    let good = db
                        .row(
                            "SELECT ts, value FROM samples WHERE point_id = $1 AND bad IS NULL
                             ORDER BY ts DESC LIMIT 1",
                            args![*id],
                        )
                        .await?;
                    Ok::<_, SqlError>((recent, good))
                }
            });
            let answers = futures_util::future::try_join_all(reads).await?;
            for ((_, site, point), (recent, good)) in chunk.iter().zip(answers) {
                for r in recent {
                    engine.warm(site, point, r.get(0)?, r.get(1)?, r.get(2)?);
                }
                if let Some(r) = good {
                    engine.warm(site, point, r.get(0)?, r.get(1)?, true);
                }
            }
        }
        Ok(Recorder {
            serial_mark: engine.next_serial(),
            engine,
            routes,
            escalation,
            queued: 0,
            counts: (0, 0),
        })
    }

    /// Notifications queued since the last call (the writer wakes the sender).
    pub fn take_queued(&mut self) -> usize {
        std::mem::take(&mut self.queued)
    }

    /// Raises and clears recorded since the last call.
    pub fn take_counts(&mut self) -> (u64, u64) {
        std::mem::take(&mut self.counts)
    }

    /// Writes `transitions` and the engine's changed state in `db` (the
    /// writer's transaction).
    pub async fn record(
        &mut self,
        db: Conn<'_>,
        transitions: &[Transition],
        now: Ts,
    ) -> Result<(), RecordError> {
        // On PostgreSQL the serials this engine numbered since the last
        // record are taken from one sequence every node shares (no lock, so
        // a frozen node holds nobody up; a rolled-back transaction leaves a
        // gap); where they differ from the engine's own, the engine's move.
        let next = self.engine.next_serial();
        let moved: Vec<Transition>;
        let mut transitions = transitions;
        if db.is_postgres() && next > self.serial_mark {
            let from = self.serial_mark;
            let k = (next - from) as i64;
            let mut given: Vec<u64> = Vec::with_capacity(k as usize);
            for r in db
                .rows(
                    "SELECT nextval('alarm_serials') FROM generate_series(1, $1::BIGINT)",
                    args![k],
                )
                .await?
            {
                given.push(r.get::<i64>(0)? as u64);
            }
            given.sort_unstable();
            if given.iter().copied().ne(from..next) {
                let r = self.engine.renumber(from, given);
                moved = transitions
                    .iter()
                    .map(|t| Transition {
                        serial: r.apply(t.serial),
                        ..t.clone()
                    })
                    .collect();
                transitions = &moved;
            }
        }
        self.serial_mark = self.engine.next_serial();
        if !transitions.is_empty() {
            let silences = active_silences(db, now).await?;
            let raises = transitions.iter().filter(|t| t.kind == Kind::Raise);
            let drills = match (
                raises.clone().map(|t| t.began_at).min(),
                raises.map(|t| t.began_at).max(),
            ) {
                (Some(from), Some(to)) => drills_between(db, from, to).await?,
                _ => Vec::new(),
            };
            for t in transitions {
                self.record_one(db, t, (&silences, &drills), now).await?;
            }
        }
        for (key, saved) in self.engine.take_dirty() {
            let text = serde_json::to_string(&saved).unwrap_or_default();
            db.exec(
                "INSERT INTO alarm_state (key, state) VALUES ($1, $2)
                 ON CONFLICT (key) DO UPDATE SET state = excluded.state",
                args![&key, &text],
            )
            .await?;
        }
        Ok(())
    }

    async fn record_one(
        &mut self,
        db: Conn<'_>,
        t: &Transition,
        (silences, drills): (&[Silence], &[Drill]),
        now: Ts,
    ) -> Result<(), RecordError> {
        let inst = self.engine.instance(t.instance);
        let rule = &self.engine.rules().rules[inst.rule];
        if rule.feeds_only {
            return Ok(());
        }
        let serial = t.serial as i64;
        let event = |kind: &'static str, text: Option<String>| async move {
            db.exec(
                "INSERT INTO alarm_events (serial, at, kind, by, text) VALUES ($1, $2, $3, 'rule', $4)",
                args![serial, t.at, kind, &text],
            )
            .await
        };
        match t.kind {
            Kind::Raise => {
                let raise = lifecycle::on_raise(
                    t.inhibited,
                    silences,
                    (&inst.site, &inst.room, &rule.id),
                    t.at,
                    now,
                );
                // By when its condition began: an alarm whose delay runs out
                // after the drill ended is still the drill's, and a fault that
                // began before the drill was declared is real.
                let drill = lifecycle::drill_of(drills, (&inst.site, &inst.room), t.began_at);
                let joins = incident::place(
                    self.engine.rules(),
                    &Raising {
                        rule: inst.rule,
                        room: &inst.room,
                        category: rule.category.as_str(),
                        at: t.at,
                        drill,
                    },
                    &active_members(db, self.engine.rules(), &inst.site).await?,
                );
                db.exec(
                    "INSERT INTO alarms (serial, rule, name, level, category, site, agent, room, device, point,
                        began_at, raised_at, value, late, inhibited, silenced_by, updated_at, drill, incident)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)
                     ON CONFLICT DO NOTHING",
                    args![
                        serial,
                        &rule.id,
                        &rule.name,
                        inst.params.level,
                        rule.category.as_str(),
                        &*inst.site,
                        &*inst.agent,
                        &*inst.room,
                        &*inst.device,
                        &*inst.point,
                        t.began_at,
                        t.at,
                        t.value,
                        t.late,
                        t.inhibited,
                        raise.silenced_by,
                        now,
                        drill,
                        joins.unwrap_or(t.serial)
                    ],
                )
                .await?;
                event("raise", raise.why).await?;
                if let Some(id) = drill {
                    event("drill", Some(format!("raised inside drill {id}"))).await?;
                }
                self.counts.0 += 1;
                let mut tell = raise.tell;
                if let Some(lead) = joins {
                    let told = told_active(db, self.engine.rules(), lead).await?;
                    let news = incident::tell_joining(inst.params.level, rule.life_safety, &told);
                    let text = match (raise.tell, news, told.is_empty()) {
                        (true, true, false) => format!("part of incident {lead}; told: news beside what was told of it"),
                        (true, false, _) => format!("part of incident {lead}; not told: what is told of it and still active covers it"),
                        _ => format!("part of incident {lead}"),
                    };
                    event("incident", Some(text)).await?;
                    tell &= news;
                }
                if tell {
                    self.notify_raise(db, t.serial, now).await?;
                }
            }
            Kind::Clear => {
                db.exec(
                    "UPDATE alarms SET cleared_at = $2, clear_value = $3, late = (late OR $4), updated_at = $5
                     WHERE serial = $1 AND cleared_at IS NULL",
                    args![serial, t.at, t.value, t.late, now],
                )
                .await?;
                event("clear", None).await?;
                self.counts.1 += 1;
                // A clear is told wherever its raise was: never a lost "resolved".
                let told = db
                    .row(
                        "SELECT notified, escalated FROM alarms WHERE serial = $1",
                        args![serial],
                    )
                    .await?;
                let (notified, escalated) = match told {
                    Some(r) => (r.get(0)?, r.get(1)?),
                    None => (false, false),
                };
                if notified {
                    // Escalation channels hear the end of what they were told.
                    self.enqueue(db, t.serial, Note::Clear { escalated }, now)
                        .await?;
                }
            }
            Kind::Correct => {
                db.exec(
                    "UPDATE alarms SET
                        began_at = CASE WHEN began_at < $2 THEN began_at ELSE $2 END,
                        raised_at = CASE WHEN raised_at < $3 THEN raised_at ELSE $3 END,
                        late = TRUE, updated_at = $4
                     WHERE serial = $1",
                    args![serial, t.began_at, t.at, now],
                )
                .await?;
                event(
                    "correct",
                    Some("readings from the outage show it began earlier".into()),
                )
                .await?;
            }
            Kind::Release => {
                db.exec(
                    "UPDATE alarms SET inhibited = FALSE, updated_at = $2 WHERE serial = $1",
                    args![serial, now],
                )
                .await?;
                event(
                    "release",
                    Some("the alarm that explained it has cleared".into()),
                )
                .await?;
                match lifecycle::on_release(silences, (&inst.site, &inst.room, &rule.id), now) {
                    // Told when the window ends, by the sweep.
                    Some(id) => {
                        db.exec(
                            "UPDATE alarms SET silenced_by = $2 WHERE serial = $1",
                            args![serial, id],
                        )
                        .await?;
                    }
                    None => self.notify_raise(db, t.serial, now).await?,
                }
            }
        }
        Ok(())
    }

    /// Queues the raise of `serial` once (it may have been held back).
    /// `notified_at` records that it was handled; `notified` means what it
    /// says: some channel took it. An alarm no channel takes (its level,
    /// a drill where no channel takes drills, no channel at all) stays
    /// `notified = false`, says why in its trail, and has no clear,
    /// acknowledgement or reminder sent either.
    async fn notify_raise(
        &mut self,
        db: Conn<'_>,
        serial: u64,
        now: Ts,
    ) -> Result<(), RecordError> {
        let first = db
            .exec(
                "UPDATE alarms SET notified_at = $2 WHERE serial = $1 AND notified = FALSE AND notified_at IS NULL",
                args![serial, now],
            )
            .await?;
        if first == 1 {
            let queued = enqueue(
                db,
                self.engine.rules(),
                &self.routes,
                serial,
                Note::Raise,
                now,
            )
            .await?;
            self.queued += queued;
            if queued > 0 {
                db.exec(
                    "UPDATE alarms SET notified = TRUE WHERE serial = $1",
                    args![serial],
                )
                .await?;
            } else {
                db.exec(
                    "INSERT INTO alarm_events (serial, at, kind, by, text) VALUES ($1, $2, 'untold', 'rule', 'no channel takes this alarm (its level, or a drill)')",
                    args![serial as i64, now],
                )
                .await?;
            }
        }
        Ok(())
    }

    /// Queues `note` about `serial` for every route it goes to.
    async fn enqueue(
        &mut self,
        db: Conn<'_>,
        serial: u64,
        note: Note,
        now: Ts,
    ) -> Result<(), RecordError> {
        self.queued += enqueue(db, self.engine.rules(), &self.routes, serial, note, now).await?;
        Ok(())
    }

    /// Background duties, every few seconds: raises held by a silence that
    /// has ended, repeats and escalation of unacknowledged alarms.
    pub async fn sweep(&mut self, db: Conn<'_>, now: Ts) -> Result<(), RecordError> {
        let silences = active_silences(db, now).await?;
        let held = db
            .rows(
                "SELECT serial, site, room, rule FROM alarms
                 WHERE cleared_at IS NULL AND notified = FALSE AND notified_at IS NULL
                   AND inhibited = FALSE AND silenced_by IS NOT NULL",
                &[],
            )
            .await?;
        for r in held {
            let (serial, site, room, rule): (u64, String, String, String) =
                (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
            if lifecycle::held_raise_due(&silences, (&site, &room, &rule), now) {
                self.notify_raise(db, serial, now).await?;
            }
        }
        // Delivered notifications are kept 30 days (for the record and for
        // /api/v1/notifications), then pruned in small steps.
        db.exec(
            "DELETE FROM outbox WHERE id IN
               (SELECT o.id FROM outbox o JOIN alarms a ON a.serial = o.serial
                WHERE o.state = 'sent' AND o.sent_at < $1 AND a.cleared_at IS NOT NULL LIMIT 1000)",
            args![now - OUTBOX_KEEP_MS],
        )
        .await?;
        // Overdue-hazard messages (negative serials, no alarm row) likewise.
        db.exec(
            "DELETE FROM outbox WHERE id IN
               (SELECT id FROM outbox WHERE serial < 0 AND state = 'sent' AND sent_at < $1 LIMIT 1000)",
            args![now - OUTBOX_KEEP_MS],
        )
        .await?;
        let e = self.escalation.clone();
        if e.repeat_every_ms <= 0 && e.escalate_after_ms <= 0 {
            return Ok(());
        }
        // On PostgreSQL the rows are locked and the condition checked again
        // after any wait: an acknowledgement committing meanwhile takes its
        // alarm out, so no repeat or escalation follows it. (SQLite's write
        // lock, held by the whole transaction, does the same.)
        let lock = if db.is_postgres() { " FOR UPDATE" } else { "" };
        let due = db
            .rows(
                &format!(
                    // A told alarm is repeated while it is active, or while
                    // anything of its incident is active and unacknowledged:
                    // its other alarms were grouped behind it, not told.
                    "SELECT serial, level, notified_at, escalated FROM alarms a
                     WHERE a.ack_at IS NULL AND a.notified = TRUE AND a.notified_at IS NOT NULL
                       AND (a.cleared_at IS NULL OR EXISTS (
                            SELECT 1 FROM alarms m WHERE m.incident = COALESCE(a.incident, a.serial)
                              AND m.cleared_at IS NULL AND m.ack_at IS NULL))
                     ORDER BY serial{lock}"
                ),
                &[],
            )
            .await?;
        for r in due {
            let (serial, level, since, escalated): (u64, u8, i64, bool) =
                (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
            for note in lifecycle::reminders(&e, level, since, escalated, now) {
                if note == Note::Escalate {
                    db.exec(
                        "UPDATE alarms SET escalated = TRUE WHERE serial = $1",
                        args![serial],
                    )
                    .await?;
                    db.exec(
                        "INSERT INTO alarm_events (serial, at, kind, by, text) VALUES ($1, $2, 'escalate', 'rule', 'unacknowledged: sent to the escalation channels')",
                        args![serial, now],
                    )
                    .await?;
                }
                self.enqueue(db, serial, note, now).await?;
            }
        }
        Ok(())
    }
}

/// Adds `note` about `serial` for every route it goes to (by the alarm's
/// level and the note's kind); returns how many were queued. The (channel,
/// key) pair is unique, so queuing the same notification twice is harmless.
async fn enqueue(
    db: Conn<'_>,
    rules: &RuleSet,
    routes: &[Route],
    serial: u64,
    note: Note,
    now: Ts,
) -> Result<usize, RecordError> {
    let Some(mut doc) = document(db, rules, serial, note.kind(), now).await? else {
        return Ok(0);
    };
    let level = doc["level"].as_u64().unwrap_or(4) as u8;
    let drill = !doc["drill"].is_null();
    let key = note.key(serial);
    // The body names the same key as the Idempotency-Key header.
    doc["key"] = json!(key);
    let payload = doc.to_string();
    let mut queued = 0;
    for r in routes.iter().filter(|r| note.goes_to(r, level, drill)) {
        queued += db
            .exec(
                "INSERT INTO outbox (channel, key, serial, kind, payload, next_at, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $6) ON CONFLICT DO NOTHING",
                args![&r.channel, &key, serial, note.kind(), &payload, now],
            )
            .await? as usize;
    }
    Ok(queued)
}

/// The notification document of an alarm: everything a receiver needs,
/// the same for every channel (channels format it their way).
pub async fn document(
    db: Conn<'_>,
    rules: &RuleSet,
    serial: u64,
    kind: &str,
    now: Ts,
) -> Result<Option<Value>, SqlError> {
    let Some(a) = alarm(db, serial).await? else {
        return Ok(None);
    };
    let rule = rules.index(&a.rule).map(|i| &rules.rules[i]);
    let event_at = match kind {
        "clear" => a.cleared_at.unwrap_or(now),
        _ => a.raised_at,
    };
    let (level_en, level_zh) = level_name(a.level);
    // The incident as it stands: a follow-up or a clear lists what it holds.
    let members: Vec<Value> = db
        .rows(
            "SELECT serial, rule, name, level, room, cleared_at FROM alarms
             WHERE incident = $1 OR serial = $1 ORDER BY serial LIMIT 50",
            args![a.incident],
        )
        .await?
        .iter()
        .map(|r| {
            Ok(json!({
                "serial": r.get::<i64>(0)?, "rule": r.get::<String>(1)?, "name": r.get::<String>(2)?,
                "level": r.get::<i64>(3)?, "room": r.get::<String>(4)?,
                "cleared": r.get::<Option<i64>>(5)?.is_some(),
            }))
        })
        .collect::<Result<_, SqlError>>()?;
    Ok(Some(json!({
        "key": format!("{serial}:{kind}"),
        "kind": kind,
        "serial": serial,
        "rule": a.rule,
        "name": a.name,
        "name_zh": rule.map(|r| r.name_zh.as_str()).unwrap_or(&a.name),
        "level": a.level,
        "level_name": level_en,
        "level_name_zh": level_zh,
        "category": a.category,
        "site": a.site,
        "room": a.room,
        "device": a.device,
        "point": a.point,
        "agent": a.agent,
        "value": a.value,
        "began_at": a.began_at,
        "raised_at": a.raised_at,
        "cleared_at": a.cleared_at,
        "acknowledged_by": a.ack_by,
        "acknowledged_at": a.ack_at,
        "comment": a.ack_comment,
        "assignee": a.assignee,
        // Told well after it happened: an outage's backlog, a silence or
        // inhibition that ended.
        "late": a.late || now - event_at > LATE_AFTER_MS,
        "advice": rule.map(|r| r.advice.as_str()).unwrap_or(""),
        "advice_zh": rule.map(|r| r.advice_zh.as_str()).unwrap_or(""),
        "source": rule.map(|r| r.source.as_str()).unwrap_or(""),
        // Raised inside a declared drill: receivers show it as a drill.
        "drill": a.drill,
        "incident": a.incident,
        "incident_alarms": members,
        "sent_at": now,
    })))
}

/// One alarm as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct AlarmRow {
    pub serial: u64,
    pub rule: String,
    pub name: String,
    pub level: u8,
    pub category: String,
    pub site: String,
    pub agent: String,
    pub room: String,
    pub device: String,
    pub point: String,
    pub began_at: i64,
    pub raised_at: i64,
    pub value: Option<f64>,
    pub cleared_at: Option<i64>,
    pub clear_value: Option<f64>,
    pub late: bool,
    pub inhibited: bool,
    pub silenced_by: Option<i64>,
    pub notified: bool,
    pub ack_by: Option<String>,
    pub ack_at: Option<i64>,
    pub ack_comment: Option<String>,
    pub assignee: Option<String>,
    /// The declared drill it was raised inside, if any.
    pub drill: Option<i64>,
    /// The serial of its incident's first alarm (its own when it leads one).
    pub incident: u64,
    /// active | acknowledged | cleared (not yet acknowledged) | closed
    pub state: &'static str,
}

const ALARM_COLUMNS: &str = "serial, rule, name, level, category, site, agent, room, device, point, began_at, raised_at,
    value, cleared_at, clear_value, late, inhibited, silenced_by, notified, ack_by, ack_at, ack_comment, assignee, drill,
    COALESCE(incident, serial)";

fn alarm_row(r: &Row) -> Result<AlarmRow, SqlError> {
    let cleared_at: Option<i64> = r.get(13)?;
    let ack_at: Option<i64> = r.get(20)?;
    let state = match (cleared_at.is_some(), ack_at.is_some()) {
        (false, false) => "active",
        (false, true) => "acknowledged",
        (true, false) => "cleared",
        (true, true) => "closed",
    };
    Ok(AlarmRow {
        serial: r.get(0)?,
        rule: r.get(1)?,
        name: r.get(2)?,
        level: r.get(3)?,
        category: r.get(4)?,
        site: r.get(5)?,
        agent: r.get(6)?,
        room: r.get(7)?,
        device: r.get(8)?,
        point: r.get(9)?,
        began_at: r.get(10)?,
        raised_at: r.get(11)?,
        value: r.get(12)?,
        cleared_at,
        clear_value: r.get(14)?,
        late: r.get(15)?,
        inhibited: r.get(16)?,
        silenced_by: r.get(17)?,
        notified: r.get(18)?,
        ack_by: r.get(19)?,
        ack_at,
        ack_comment: r.get(21)?,
        assignee: r.get(22)?,
        drill: r.get(23)?,
        incident: r.get(24)?,
        state,
    })
}

pub async fn alarm(db: Conn<'_>, serial: u64) -> Result<Option<AlarmRow>, SqlError> {
    db.row(
        &format!("SELECT {ALARM_COLUMNS} FROM alarms WHERE serial = $1"),
        args![serial],
    )
    .await?
    .as_ref()
    .map(alarm_row)
    .transpose()
}

/// Which alarms a list asks for.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AlarmFilter {
    /// `open` (default: active, or cleared but not acknowledged), `active`,
    /// `unacknowledged`, `cleared`, `all`.
    pub state: Option<String>,
    pub site: Option<String>,
    pub room: Option<String>,
    pub rule: Option<String>,
    /// Levels up to and including this one (1 = critical only).
    pub level: Option<u8>,
    /// Raised at or after, ms.
    pub from: Option<i64>,
    /// Raised before, ms.
    pub to: Option<i64>,
    /// `true`: only alarms raised inside a declared drill; `false`: only real ones.
    pub drill: Option<bool>,
    pub limit: Option<usize>,
}

pub const MAX_LIST: usize = 1_000;

pub async fn list(db: Conn<'_>, f: &AlarmFilter) -> Result<Vec<AlarmRow>, RecordError> {
    let state = match f.state.as_deref().unwrap_or("open") {
        "open" => "(cleared_at IS NULL OR ack_at IS NULL)",
        "active" => "cleared_at IS NULL",
        "unacknowledged" => "ack_at IS NULL",
        "cleared" => "cleared_at IS NOT NULL",
        "all" => "TRUE",
        other => {
            return Err(RecordError::Invalid(format!(
                "state {other:?} is not one of open, active, unacknowledged, cleared, all"
            )))
        }
    };
    if let Some(l) = f.level {
        if !(1..=4).contains(&l) {
            return Err(RecordError::Invalid("level must be 1 to 4".into()));
        }
    }
    let limit = f.limit.unwrap_or(200);
    if limit == 0 || limit > MAX_LIST {
        return Err(RecordError::Invalid(format!(
            "limit must be 1 to {MAX_LIST}"
        )));
    }
    let sql = format!(
        "SELECT {ALARM_COLUMNS} FROM alarms WHERE {state}
           AND (CAST($1 AS TEXT) IS NULL OR site = $1) AND (CAST($2 AS TEXT) IS NULL OR room = $2) AND (CAST($3 AS TEXT) IS NULL OR rule = $3)
           AND (CAST($4 AS BIGINT) IS NULL OR level <= $4) AND (CAST($5 AS BIGINT) IS NULL OR raised_at >= $5)
           AND (CAST($6 AS BIGINT) IS NULL OR raised_at < $6)
           AND (CAST($8 AS BOOLEAN) IS NULL OR (drill IS NOT NULL) = $8)
         ORDER BY level, raised_at DESC LIMIT $7"
    );
    let rows = db
        .rows(
            &sql,
            args![&f.site, &f.room, &f.rule, f.level, f.from, f.to, limit, f.drill],
        )
        .await?;
    Ok(rows.iter().map(alarm_row).collect::<Result<_, _>>()?)
}

/// One entry of an alarm's audit trail.
#[derive(Debug, Clone, Serialize)]
pub struct EventRow {
    pub at: i64,
    pub kind: String,
    pub by: String,
    pub text: Option<String>,
}

pub async fn events(db: Conn<'_>, serial: u64) -> Result<Vec<EventRow>, SqlError> {
    db.rows(
        "SELECT at, kind, by, text FROM alarm_events WHERE serial = $1 ORDER BY id",
        args![serial],
    )
    .await?
    .iter()
    .map(|r| {
        Ok(EventRow {
            at: r.get(0)?,
            kind: r.get(1)?,
            by: r.get(2)?,
            text: r.get(3)?,
        })
    })
    .collect()
}

/// A person's action on an alarm.
pub enum Action<'a> {
    Acknowledge { comment: Option<&'a str> },
    Comment { text: &'a str },
    Assign { to: &'a str },
}

/// Applies a person's action with its audit entry and, for an
/// acknowledgement (which takes the alarm's whole incident), its notification; `db` is a transaction the caller
/// commits (on SQLite an IMMEDIATE one: it takes the write lock before
/// reading, so it cannot fail to upgrade while the store writer commits).
/// Returns the alarm after.
pub async fn act(
    db: Conn<'_>,
    rules: &RuleSet,
    routes: &[Route],
    serial: u64,
    by: &str,
    action: Action<'_>,
    now: Ts,
) -> Result<(AlarmRow, usize), RecordError> {
    // On PostgreSQL the row is locked until commit, so two people
    // acknowledging at once do not both succeed. An acknowledgement takes
    // the whole incident: its rows are locked first, in serial order (as the
    // sweep locks), so two people acknowledging two alarms of one incident,
    // or the sweep, wait for each other rather than deadlock.
    let lock = if db.is_postgres() { " FOR UPDATE" } else { "" };
    if db.is_postgres() {
        if let Some(r) = db
            .row(
                "SELECT COALESCE(incident, serial) FROM alarms WHERE serial = $1",
                args![serial],
            )
            .await?
        {
            let inc: i64 = r.get(0)?;
            db.rows(
                "SELECT serial FROM alarms WHERE incident = $1 OR serial = $1 ORDER BY serial FOR UPDATE",
                args![inc],
            )
            .await?;
        }
    }
    let before = db
        .row(
            &format!("SELECT {ALARM_COLUMNS} FROM alarms WHERE serial = $1{lock}"),
            args![serial],
        )
        .await?
        .as_ref()
        .map(alarm_row)
        .transpose()?
        .ok_or(RecordError::NoAlarm(serial))?;
    let mut queued = 0;
    match action {
        Action::Acknowledge { comment } => {
            if let (Some(who), Some(at)) = (&before.ack_by, before.ack_at) {
                // An RFC 3339 time (UTC), never raw milliseconds, in what people read.
                let at = jiff::Timestamp::from_millisecond(at)
                    .map(|t| t.to_string())
                    .unwrap_or_else(|_| format!("{at} ms"));
                return Err(RecordError::Conflict(format!(
                    "alarm {serial} was already acknowledged by {who} at {at}"
                )));
            }
            db.exec(
                "UPDATE alarms SET ack_by = $2, ack_at = $3, ack_comment = $4, updated_at = $3 WHERE serial = $1",
                args![serial, by, now, comment],
            )
            .await?;
            db.exec(
                "INSERT INTO alarm_events (serial, at, kind, by, text) VALUES ($1, $2, 'ack', $3, $4)",
                args![serial, now, by, comment],
            )
            .await?;
            if before.notified {
                queued += enqueue(db, rules, routes, serial, Note::Ack, now).await?;
            }
            // One acknowledgement for the incident: its other alarms not yet
            // acknowledged are acknowledged with it, each in its own trail.
            let others = db
                .rows(
                    &format!(
                        "SELECT serial, notified FROM alarms
                         WHERE (incident = $1 OR serial = $1) AND serial <> $2 AND ack_at IS NULL{lock}"
                    ),
                    args![before.incident, serial],
                )
                .await?;
            let text = match comment {
                Some(c) => format!("with incident {} (#{serial}): {c}", before.incident),
                None => format!("with incident {} (#{serial})", before.incident),
            };
            for r in others {
                let (other, notified): (u64, bool) = (r.get(0)?, r.get(1)?);
                db.exec(
                    "UPDATE alarms SET ack_by = $2, ack_at = $3, ack_comment = $4, updated_at = $3 WHERE serial = $1",
                    args![other, by, now, comment],
                )
                .await?;
                db.exec(
                    "INSERT INTO alarm_events (serial, at, kind, by, text) VALUES ($1, $2, 'ack', $3, $4)",
                    args![other, now, by, &text],
                )
                .await?;
                if notified {
                    queued += enqueue(db, rules, routes, other, Note::Ack, now).await?;
                }
            }
        }
        Action::Comment { text } => {
            db.exec(
                "INSERT INTO alarm_events (serial, at, kind, by, text) VALUES ($1, $2, 'comment', $3, $4)",
                args![serial, now, by, text],
            )
            .await?;
        }
        Action::Assign { to } => {
            db.exec(
                "UPDATE alarms SET assignee = $2, updated_at = $3 WHERE serial = $1",
                args![serial, to, now],
            )
            .await?;
            db.exec(
                "INSERT INTO alarm_events (serial, at, kind, by, text) VALUES ($1, $2, 'assign', $3, $4)",
                args![serial, now, by, to],
            )
            .await?;
        }
    }
    let after = alarm(db, serial)
        .await?
        .ok_or(RecordError::NoAlarm(serial))?;
    Ok((after, queued))
}

/// A new maintenance window.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSilence {
    pub site: Option<String>,
    pub room: Option<String>,
    pub rule: Option<String>,
    pub reason: String,
    pub owner: String,
    /// Start, ms (default now).
    pub starts_at: Option<i64>,
    /// End, ms.
    pub ends_at: i64,
}

/// Longest maintenance window accepted: hot work is days, not months.
pub const MAX_SILENCE_MS: i64 = 30 * 86_400_000;

pub async fn create_silence(db: Conn<'_>, s: &NewSilence, now: Ts) -> Result<Silence, RecordError> {
    let starts = s.starts_at.unwrap_or(now);
    let bad = |m: &str| Err(RecordError::Invalid(m.to_owned()));
    if s.reason.trim().is_empty() {
        return bad("reason must say why (hot work, planned change, …)");
    }
    if s.owner.trim().is_empty() {
        return bad("owner must name who is responsible");
    }
    if s.site.is_none() && s.room.is_some() {
        return bad("a room silence needs its site");
    }
    if s.ends_at <= starts || s.ends_at <= now {
        return bad("ends_at must be in the future and after starts_at");
    }
    if s.ends_at - starts > MAX_SILENCE_MS {
        return bad("a maintenance window may last at most 30 days");
    }
    if [&s.site, &s.room, &s.rule]
        .iter()
        .any(|v| v.as_deref().is_some_and(|v| v.len() > 128))
        || s.reason.len() > 1000
        || s.owner.len() > 128
    {
        return bad("site, room, rule and owner are at most 128 characters, reason 1000");
    }
    let id: i64 = db
        .value(
            "INSERT INTO silences (site, room, rule, reason, owner, starts_at, ends_at, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
            args![&s.site, &s.room, &s.rule, &s.reason, &s.owner, starts, s.ends_at, now],
        )
        .await?;
    silence(db, id).await
}

pub async fn silence(db: Conn<'_>, id: i64) -> Result<Silence, RecordError> {
    db.row(
        &format!("SELECT {SILENCE_COLUMNS} FROM silences WHERE id = $1"),
        args![id],
    )
    .await?
    .as_ref()
    .map(silence_row)
    .transpose()?
    .ok_or(RecordError::NoSilence(id))
}

pub async fn list_silences(db: Conn<'_>, all: bool, now: Ts) -> Result<Vec<Silence>, RecordError> {
    if !all {
        return Ok(active_silences(db, now).await?);
    }
    Ok(db
        .rows(
            &format!("SELECT {SILENCE_COLUMNS} FROM silences ORDER BY id DESC LIMIT 1000"),
            &[],
        )
        .await?
        .iter()
        .map(silence_row)
        .collect::<Result<_, _>>()?)
}

pub async fn end_silence(db: Conn<'_>, id: i64, by: &str, now: Ts) -> Result<Silence, RecordError> {
    // Ending an ended silence changes nothing and is not an error: the
    // answer shows who ended it and when.
    db.exec(
        "UPDATE silences SET ended_at = $2, ended_by = $3 WHERE id = $1 AND ended_at IS NULL",
        args![id, now, by],
    )
    .await?;
    silence(db, id).await
}

/// An alarm looked at for a hazard proposal.
pub struct Raised {
    pub serial: i64,
    pub rule: String,
    pub name: String,
    pub level: i64,
    pub site: String,
    pub room: String,
    pub category: String,
    pub raised_at: i64,
}

/// Real alarms (not a drill's) with a serial above `after`, oldest first,
/// at most `limit`: what hazards are proposed from.
pub async fn raised_after(db: Conn<'_>, after: i64, limit: u32) -> Result<Vec<Raised>, SqlError> {
    db.rows(
        "SELECT serial, rule, name, level, site, room, category, raised_at FROM alarms
         WHERE serial > $1 AND drill IS NULL ORDER BY serial LIMIT $2",
        args![after, limit],
    )
    .await?
    .iter()
    .map(|r| {
        Ok(Raised {
            serial: r.get(0)?,
            rule: r.get(1)?,
            name: r.get(2)?,
            level: r.get(3)?,
            site: r.get(4)?,
            room: r.get(5)?,
            category: r.get(6)?,
            raised_at: r.get(7)?,
        })
    })
    .collect()
}

/// How often `rule` was raised for real (not in a drill) in a room in `(from, to]`.
pub async fn raise_count(
    db: Conn<'_>,
    (site, room, rule): (&str, &str, &str),
    from: i64,
    to: i64,
) -> Result<i64, SqlError> {
    db.value(
        "SELECT count(*) FROM alarms WHERE site = $1 AND room = $2 AND rule = $3
         AND raised_at > $4 AND raised_at <= $5 AND drill IS NULL",
        args![site, room, rule, from, to],
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sql::now as done;
    use crate::store::sqlite::SqliteWriter;
    use roomguard_protocol::{Batch, PointMeta, Quality, Reading, PROTOCOL_VERSION};
    use rusqlite::Connection;
    use std::path::PathBuf;

    const T0: i64 = 1_800_000_000_000;
    const MIN: i64 = 60_000;

    const RULES: &str = r#"
pack = "t"
[[rule]]
id = "t.smoke"
name = "smoke"
category = "fire"
level = 1
life_safety = true
source = "test"
select = { quantity = ["smoke"] }
when = { equals = 1 }
clear_delay = "0s"

[[rule]]
id = "t.heat"
name = "heat"
category = "fire"
level = 2
source = "test"
select = { quantity = ["heat"] }
when = { equals = 1 }
delay = "0s"
clear_delay = "0s"
"#;

    fn smoke(seq: u64, ts: i64, v: f64) -> Batch {
        one(seq, ts, ("d.smoke", "smoke"), v)
    }

    /// One reading of `point` (of `quantity`) in room `mr`.
    fn one(seq: u64, ts: i64, (point, quantity): (&str, &str), v: f64) -> Batch {
        Batch {
            v: PROTOCOL_VERSION,
            site: "s".into(),
            agent: "a".into(),
            seq,
            device: "d".into(),
            polled_at: ts,
            backfill: false,
            points: vec![PointMeta {
                id: point.into(),
                room: "mr".into(),
                quantity: quantity.into(),
                unit: "".into(),
            }],
            readings: vec![Reading {
                point: point.into(),
                value: Some(v),
                text: None,
                ts,
                quality: Quality::Good,
            }],
        }
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        path: PathBuf,
        writer: SqliteWriter,
    }

    fn fixture() -> Fixture {
        fixture_taking(vec![1, 2, 3, 4])
    }

    /// Channels that take alarms of `levels` only.
    fn fixture_taking(levels: Vec<u8>) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let rules = Arc::new(
            RuleSet::from_texts(&[(PathBuf::from("t.toml"), RULES.into())], Vec::new()).unwrap(),
        );
        let route = |channel: &str, escalation_only| Route {
            channel: channel.into(),
            levels: levels.clone(),
            escalation_only,
            lifecycle: true,
            drills: true,
        };
        let routes = vec![route("oncall", false), route("boss", true)];
        let setup = AlarmSetup {
            rules,
            routes,
            escalation: Escalation {
                levels: vec![1, 2],
                repeat_every_ms: 15 * MIN,
                escalate_after_ms: 30 * MIN,
            },
        };
        let writer = SqliteWriter::open(&path)
            .unwrap()
            .with_alarms(setup, T0)
            .unwrap();
        Fixture {
            _dir: dir,
            path,
            writer,
        }
    }

    impl Fixture {
        /// Enough maintenance calls at `now` for one sweep.
        fn sweep(&mut self, now: i64) {
            for _ in 0..5 {
                self.writer.maintain(now).unwrap();
            }
        }

        fn outbox(&self) -> Vec<String> {
            let conn = Connection::open(&self.path).unwrap();
            let mut st = conn
                .prepare("SELECT channel || ' ' || key FROM outbox ORDER BY id")
                .unwrap();
            let rows = st.query_map([], |r| r.get(0)).unwrap();
            rows.collect::<Result<_, _>>().unwrap()
        }
    }

    #[test]
    fn a_silenced_alarm_is_told_when_the_window_ends_and_its_clear_follows() {
        let mut f = fixture();
        let conn = Connection::open(&f.path).unwrap();
        let new = NewSilence {
            site: Some("s".into()),
            room: Some("mr".into()),
            rule: None,
            reason: "hot work".into(),
            owner: "eng".into(),
            starts_at: None,
            ends_at: T0 + 10 * MIN,
        };
        let s = done(create_silence(Conn::Lite(&conn), &new, T0 - 1)).unwrap();
        f.writer.write_batches(&[smoke(1, T0, 1.0)], T0).unwrap();
        assert!(f.outbox().is_empty());
        assert_eq!(
            done(alarm(Conn::Lite(&conn), 1))
                .unwrap()
                .unwrap()
                .silenced_by,
            Some(s.id)
        );
        f.sweep(T0 + 5 * MIN);
        assert!(f.outbox().is_empty(), "still inside the window");
        f.sweep(T0 + 11 * MIN);
        assert_eq!(f.outbox(), ["oncall 1:raise"]);
        f.writer
            .write_batches(&[smoke(2, T0 + 12 * MIN, 0.0)], T0 + 12 * MIN)
            .unwrap();
        assert_eq!(f.outbox(), ["oncall 1:raise", "oncall 1:clear"]);
    }

    #[test]
    fn an_alarm_raised_and_cleared_inside_a_window_is_recorded_and_never_told() {
        let mut f = fixture();
        let conn = Connection::open(&f.path).unwrap();
        let new = NewSilence {
            site: Some("s".into()),
            room: None,
            rule: Some("t.*".into()),
            reason: "planned change".into(),
            owner: "eng".into(),
            starts_at: None,
            ends_at: T0 + 10 * MIN,
        };
        done(create_silence(Conn::Lite(&conn), &new, T0 - 1)).unwrap();
        f.writer.write_batches(&[smoke(1, T0, 1.0)], T0).unwrap();
        f.writer
            .write_batches(&[smoke(2, T0 + MIN, 0.0)], T0 + MIN)
            .unwrap();
        f.sweep(T0 + 11 * MIN);
        assert!(f.outbox().is_empty());
        let a = done(alarm(Conn::Lite(&conn), 1)).unwrap().unwrap();
        assert_eq!(a.state, "cleared");
        let kinds: Vec<String> = done(events(Conn::Lite(&conn), 1))
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(kinds, ["raise", "clear"]);
    }

    #[test]
    fn one_fault_is_one_incident_told_once_and_again_only_when_it_gets_worse() {
        let mut f = fixture();
        let conn = Connection::open(&f.path).unwrap();
        // Heat first (level 2), then smoke (level 1) and a second smoke
        // head in the same room within seconds: one fire.
        f.writer
            .write_batches(&[one(1, T0, ("d.heat", "heat"), 1.0)], T0)
            .unwrap();
        f.writer
            .write_batches(
                &[one(2, T0 + 10_000, ("d.smoke", "smoke"), 1.0)],
                T0 + 10_000,
            )
            .unwrap();
        f.writer
            .write_batches(
                &[one(3, T0 + 20_000, ("d2.smoke", "smoke"), 1.0)],
                T0 + 20_000,
            )
            .unwrap();
        let all: Vec<AlarmRow> = (1..=3)
            .map(|s| done(alarm(Conn::Lite(&conn), s)).unwrap().unwrap())
            .collect();
        assert!(all.iter().all(|a| a.incident == 1), "{all:?}");
        // The first, and the smoke that made it worse; not the second head.
        assert_eq!(f.outbox(), ["oncall 1:raise", "oncall 2:raise"]);
        assert_eq!(
            all.iter().map(|a| a.notified).collect::<Vec<_>>(),
            [true, true, false]
        );
        // One acknowledgement takes the incident; only told alarms tell it.
        let rules =
            RuleSet::from_texts(&[(PathBuf::from("t.toml"), RULES.into())], Vec::new()).unwrap();
        let tx = conn.unchecked_transaction().unwrap();
        done(act(
            Conn::Lite(&tx),
            &rules,
            &[Route {
                channel: "oncall".into(),
                levels: vec![1, 2, 3, 4],
                escalation_only: false,
                lifecycle: true,
                drills: true,
            }],
            3,
            "eng",
            Action::Acknowledge { comment: None },
            T0 + MIN,
        ))
        .unwrap();
        tx.commit().unwrap();
        for s in 1..=3 {
            let a = done(alarm(Conn::Lite(&conn), s)).unwrap().unwrap();
            assert_eq!(a.ack_by.as_deref(), Some("eng"), "{a:?}");
        }
        assert_eq!(
            f.outbox(),
            [
                "oncall 1:raise",
                "oncall 2:raise",
                "oncall 1:ack",
                "oncall 2:ack"
            ]
        );
        // A heat alarm in the room after the window is a new incident.
        f.writer
            .write_batches(&[one(4, T0 + MIN, ("d.heat", "heat"), 0.0)], T0 + MIN)
            .unwrap();
        f.writer
            .write_batches(
                &[one(5, T0 + 12 * MIN, ("d.heat", "heat"), 1.0)],
                T0 + 12 * MIN,
            )
            .unwrap();
        let later = done(alarm(Conn::Lite(&conn), 4)).unwrap().unwrap();
        assert_eq!((later.rule.as_str(), later.incident), ("t.heat", 4));
    }

    #[test]
    fn a_told_alarm_that_cleared_is_repeated_while_its_incident_goes_on_unacknowledged() {
        let mut f = fixture();
        // Two heat detectors of one room: the second is grouped, not told.
        f.writer
            .write_batches(&[one(1, T0, ("d.heat", "heat"), 1.0)], T0)
            .unwrap();
        f.writer
            .write_batches(
                &[one(2, T0 + 10_000, ("d2.heat", "heat"), 1.0)],
                T0 + 10_000,
            )
            .unwrap();
        // The told one clears; the other goes on, unacknowledged.
        f.writer
            .write_batches(&[one(3, T0 + MIN, ("d.heat", "heat"), 0.0)], T0 + MIN)
            .unwrap();
        assert_eq!(f.outbox(), ["oncall 1:raise", "oncall 1:clear"]);
        f.sweep(T0 + 16 * MIN);
        assert_eq!(
            f.outbox(),
            ["oncall 1:raise", "oncall 1:clear", "oncall 1:repeat1"],
            "the incident is still unwatched"
        );
        // Once nothing of the incident is active, the reminders stop.
        f.writer
            .write_batches(
                &[one(4, T0 + 17 * MIN, ("d2.heat", "heat"), 0.0)],
                T0 + 17 * MIN,
            )
            .unwrap();
        f.sweep(T0 + 31 * MIN);
        assert_eq!(f.outbox().len(), 3, "{:?}", f.outbox());
    }

    #[test]
    fn an_alarm_no_channel_takes_is_not_marked_notified_and_its_trail_says_why() {
        let mut f = fixture_taking(vec![1]);
        let conn = Connection::open(&f.path).unwrap();
        f.writer
            .write_batches(&[one(1, T0, ("d.heat", "heat"), 1.0)], T0)
            .unwrap();
        f.sweep(T0 + 10_000);
        let a = done(alarm(Conn::Lite(&conn), 1)).unwrap().unwrap();
        assert!(!a.notified, "{a:?}");
        assert!(f.outbox().is_empty());
        let kinds: Vec<String> = done(events(Conn::Lite(&conn), 1))
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(kinds, ["raise", "untold"]);
        // Its clear is not told either; a level-1 alarm is.
        f.writer
            .write_batches(&[one(2, T0 + MIN, ("d.heat", "heat"), 0.0)], T0 + MIN)
            .unwrap();
        f.writer
            .write_batches(&[smoke(3, T0 + 2 * MIN, 1.0)], T0 + 2 * MIN)
            .unwrap();
        assert_eq!(f.outbox(), ["oncall 2:raise"]);
        assert!(done(alarm(Conn::Lite(&conn), 2)).unwrap().unwrap().notified);
    }

    #[test]
    fn bad_silences_are_refused_with_the_reason() {
        let f = fixture();
        let conn = Connection::open(&f.path).unwrap();
        let base = NewSilence {
            site: Some("s".into()),
            room: None,
            rule: None,
            reason: "x".into(),
            owner: "y".into(),
            starts_at: None,
            ends_at: T0 + MIN,
        };
        let cases = [
            (
                NewSilence {
                    reason: " ".into(),
                    ..base.clone()
                },
                "reason",
            ),
            (
                NewSilence {
                    ends_at: T0 - 1,
                    ..base.clone()
                },
                "future",
            ),
            (
                NewSilence {
                    ends_at: T0 + 31 * 86_400_000,
                    ..base.clone()
                },
                "30 days",
            ),
            (
                NewSilence {
                    site: None,
                    room: Some("r".into()),
                    ..base.clone()
                },
                "site",
            ),
        ];
        for (s, why) in cases {
            let err = done(create_silence(Conn::Lite(&conn), &s, T0))
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{err}");
        }
    }
}
