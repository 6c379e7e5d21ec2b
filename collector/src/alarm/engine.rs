//! The rule engine, pure: readings and a clock in, alarm transitions out.
//! No I/O, no wall clock of its own; the store persists what it reports and
//! restores it after a restart.
//!
//! Every rule that selects a point becomes an *instance* (rule × point, rule ×
//! room for composites, rule × agent for agent silence). An instance has a
//! condition (with hysteresis) and a phase: normal → pending (raise delay) →
//! active → clearing (clear delay) → normal. Time is event time: a reading is
//! judged at the time it was taken, and delays run on each agent's clock (the
//! newest reading time it sent), so a backlog replayed in order raises and
//! clears at the times things happened, not when they arrived.
//!
//! A reading older than one already judged for its instance (a backlog sent
//! after live data, as agents do after an outage) goes to a second, *late*
//! machine for that instance: alarms it finds are recorded with their real
//! times and flagged late; if the live machine already raised the same
//! episode, the late one only moves its start back.

use super::rules::{Cond, Need, Params, RuleSet};
use roomguard_protocol::{Batch, PointMeta, Quality};
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;

/// Milliseconds since the Unix epoch.
pub type Ts = i64;

/// Samples kept per rate-of-rise window at most (oldest dropped first).
const MAX_WINDOW: usize = 1024;
/// How far ahead of the wall clock a reading may be judged.
const FUTURE_TOLERANCE_MS: i64 = 5_000;
/// A late machine with no late reading for this long (wall clock) is done.
const LATE_IDLE_MS: i64 = 15_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    #[default]
    Normal,
    Pending {
        since: Ts,
    },
    Active {
        serial: u64,
        raised_at: Ts,
    },
    Clearing {
        serial: u64,
        raised_at: Ts,
        since: Ts,
    },
}

impl Phase {
    pub fn serial(&self) -> Option<u64> {
        match *self {
            Phase::Active { serial, .. } | Phase::Clearing { serial, .. } => Some(serial),
            _ => None,
        }
    }

    fn raised_at(&self) -> Option<Ts> {
        match *self {
            Phase::Active { raised_at, .. } | Phase::Clearing { raised_at, .. } => Some(raised_at),
            _ => None,
        }
    }
}

/// One timeline of an instance: its condition and phase.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Machine {
    pub cond: bool,
    #[serde(flatten)]
    pub phase: Phase,
    /// Newest reading judged (or, for silence, newest good reading).
    pub last_ts: Option<Ts>,
    /// The value that last changed the condition.
    pub value: Option<f64>,
    /// When the condition last became true.
    pub began: Option<Ts>,
    /// The last episode that ended: raised at, cleared at. A late reading
    /// inside it is part of an alarm already recorded (a node taking over
    /// a site is sent, after newer ones, batches its previous holder
    /// received but never committed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<(Ts, Ts)>,
    #[serde(skip)]
    window: VecDeque<(Ts, f64)>,
}

/// What happened to an alarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Raise,
    Clear,
    /// A late reading showed an active alarm began earlier than recorded.
    Correct,
    /// The alarm that inhibited this one cleared: it may now be notified.
    Release,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Raise => "raise",
            Kind::Clear => "clear",
            Kind::Correct => "correct",
            Kind::Release => "release",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub kind: Kind,
    pub serial: u64,
    pub instance: usize,
    /// Event time of the transition.
    pub at: Ts,
    /// When the condition began (for a raise: before the raise delay).
    pub began_at: Ts,
    pub value: Option<f64>,
    /// Found in readings that arrived after later ones (an outage's backlog).
    pub late: bool,
    /// Explained by an active inhibiting alarm at the same site.
    pub inhibited: bool,
}

/// Serials `from..end` given the numbers `to` ([`Engine::renumber`]).
#[derive(Debug, Clone)]
pub struct Renumbered {
    from: u64,
    end: u64,
    to: Vec<u64>,
}

impl Renumbered {
    pub fn apply(&self, serial: u64) -> u64 {
        if (self.from..self.end).contains(&serial) {
            self.to
                .get((serial - self.from) as usize)
                .copied()
                .unwrap_or(serial)
        } else {
            serial
        }
    }
}

/// What an instance watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Point,
    Room,
    /// One device's points (`every` composites).
    Device,
    Agent,
}

#[derive(Debug, Clone)]
pub struct Instance {
    pub rule: usize,
    pub scope: Scope,
    pub site: Arc<str>,
    pub agent: Arc<str>,
    pub room: Arc<str>,
    pub device: Arc<str>,
    /// The point, for point instances.
    pub point: Arc<str>,
    pub params: Params,
    pub live: Machine,
    late: Option<(Box<Machine>, Ts)>,
    pub inhibited: bool,
    /// Agent whose clock times this instance's delays.
    clock: usize,
    /// Composite instances counting this one's condition.
    parents: Vec<usize>,
    /// For composites: member instances.
    members: Vec<usize>,
    /// Its point was relabelled: it judges nothing any more.
    retired: bool,
}

impl Instance {
    /// A fresh instance; `labels` are site, agent, room, device, point
    /// (empty where the scope has none), timed by agent `clock`.
    fn new(
        rule: usize,
        scope: Scope,
        labels: [Arc<str>; 5],
        params: Params,
        clock: usize,
    ) -> Instance {
        let [site, agent, room, device, point] = labels;
        Instance {
            rule,
            scope,
            site,
            agent,
            room,
            device,
            point,
            params,
            live: Machine::default(),
            late: None,
            inhibited: false,
            clock,
            parents: Vec::new(),
            members: Vec::new(),
            retired: false,
        }
    }

    /// Key under which the instance's state is persisted.
    pub fn key(&self, rules: &RuleSet) -> String {
        let id = &rules.rules[self.rule].id;
        match self.scope {
            Scope::Point => format!("{id}|{}|p|{}", self.site, self.point),
            Scope::Room => format!("{id}|{}|r|{}", self.site, self.room),
            Scope::Device => format!("{id}|{}|d|{}", self.site, self.device),
            Scope::Agent => format!("{id}|{}|a|{}", self.site, self.agent),
        }
    }
}

/// State of an instance as persisted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Saved {
    pub live: Machine,
    #[serde(default)]
    pub inhibited: bool,
}

struct AgentClock {
    site: Arc<str>,
    agent: Arc<str>,
    /// Newest event time received (never ahead of the wall clock).
    clock: Ts,
    /// Wall time of the last batch received.
    seen: Ts,
    /// Agent-silence instances.
    instances: Vec<usize>,
    /// Point-silence instances timed by this agent's clock.
    silent: Vec<usize>,
    /// Running raise and clear delays: (due on this agent's clock, instance),
    /// soonest first. An entry whose instance has moved on is skipped when due.
    timed: BinaryHeap<Reverse<(Ts, usize)>>,
}

/// A composite instance's group: site, room, device (empty for a room
/// composite), rule.
type GroupKey = (Arc<str>, Arc<str>, Arc<str>, usize);

struct PointEntry {
    agent: usize,
    room: Arc<str>,
    device: Arc<str>,
    quantity: Arc<str>,
    instances: Vec<usize>,
}

pub struct Engine {
    rules: Arc<RuleSet>,
    instances: Vec<Instance>,
    points: HashMap<Arc<str>, HashMap<Arc<str>, PointEntry>>,
    agents: Vec<AgentClock>,
    /// Agents by site, then agent id (nested so lookups borrow `&str`).
    agent_index: HashMap<Arc<str>, HashMap<Arc<str>, usize>>,
    /// Composite instances by (site, room, device, rule); the device is
    /// empty for room composites.
    rooms: HashMap<GroupKey, usize>,
    /// Active alarms per (site, rule), for inhibition.
    active: HashMap<(Arc<str>, usize), u32>,
    /// Rules containing each rule (composites), and rules it inhibits.
    parents_of: Vec<Vec<usize>>,
    inhibits: Vec<Vec<usize>>,
    next_serial: u64,
    /// Agent silence counts from here at the earliest: the collector was not
    /// listening before it started.
    started: Ts,
    dirty: Vec<bool>,
    dirty_list: Vec<usize>,
    saved: HashMap<String, Saved>,
    /// Inhibited alarms whose cause cleared: (instance, serial, due on its
    /// agent's clock). Released then if still active and unexplained.
    releases: Vec<(usize, u64, Ts)>,
    /// (instance, reading) pairs of the batch being judged.
    work: Vec<(usize, usize)>,
    /// Clears of retired instances, handed out with the next transitions.
    retired_out: Vec<Transition>,
}

/// What an inhibiting alarm explained usually clears within moments of it
/// (the UPS leaves battery as mains returns); only what is still active
/// this long after is notified.
const RELEASE_GRACE_MS: i64 = 30_000;

impl Engine {
    /// An engine for `rules`, numbering new alarms from `next_serial`.
    /// `saved` is persisted state, applied as instances are created.
    pub fn new(
        rules: Arc<RuleSet>,
        next_serial: u64,
        started: Ts,
        saved: HashMap<String, Saved>,
    ) -> Engine {
        let n = rules.rules.len();
        let mut parents_of = vec![Vec::new(); n];
        let mut inhibits = vec![Vec::new(); n];
        for (i, r) in rules.rules.iter().enumerate() {
            if let Cond::Composite { of, .. } = &r.cond {
                for m in of {
                    parents_of[*m].push(i);
                }
            }
            for by in &r.inhibited_by {
                inhibits[*by].push(i);
            }
        }
        Engine {
            rules,
            instances: Vec::new(),
            points: HashMap::new(),
            agents: Vec::new(),
            agent_index: HashMap::new(),
            rooms: HashMap::new(),
            active: HashMap::new(),
            parents_of,
            inhibits,
            // Above every serial held in saved state too: building-block
            // (feeds_only) alarms are numbered but never recorded.
            next_serial: saved
                .values()
                .filter_map(|s| s.live.phase.serial())
                .map(|s| s + 1)
                .fold(next_serial.max(1), u64::max),
            started,
            dirty: Vec::new(),
            dirty_list: Vec::new(),
            saved,
            releases: Vec::new(),
            work: Vec::new(),
            retired_out: Vec::new(),
        }
    }

    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }

    pub fn instance(&self, i: usize) -> &Instance {
        &self.instances[i]
    }

    pub fn instances(&self) -> &[Instance] {
        &self.instances
    }

    /// Instances whose persisted state changed since the last call.
    pub fn take_dirty(&mut self) -> Vec<(String, Saved)> {
        let list = std::mem::take(&mut self.dirty_list);
        list.into_iter()
            .map(|i| {
                self.dirty[i] = false;
                let inst = &self.instances[i];
                (
                    inst.key(&self.rules),
                    Saved {
                        live: inst.live.clone(),
                        inhibited: inst.inhibited,
                    },
                )
            })
            .collect()
    }

    fn mark(&mut self, i: usize) {
        if !self.dirty[i] {
            self.dirty[i] = true;
            self.dirty_list.push(i);
        }
    }

    fn agent(&mut self, site: &str, agent: &str) -> usize {
        if let Some(i) = self.agent_index.get(site).and_then(|m| m.get(agent)) {
            return *i;
        }
        let (site, agent): (Arc<str>, Arc<str>) = (site.into(), agent.into());
        let a = self.agents.len();
        self.agents.push(AgentClock {
            site: site.clone(),
            agent: agent.clone(),
            clock: i64::MIN,
            seen: i64::MIN,
            instances: Vec::new(),
            silent: Vec::new(),
            timed: BinaryHeap::new(),
        });
        self.agent_index
            .entry(site.clone())
            .or_default()
            .insert(agent.clone(), a);
        for rule in 0..self.rules.rules.len() {
            if self.rules.rules[rule].cond != Cond::AgentSilent {
                continue;
            }
            let params = self.rules.params(rule, &site, "");
            if !params.enabled {
                continue;
            }
            let empty: Arc<str> = "".into();
            let labels = [
                site.clone(),
                agent.clone(),
                empty.clone(),
                empty.clone(),
                empty,
            ];
            let i = self.push(Instance::new(rule, Scope::Agent, labels, params, a));
            self.agents[a].instances.push(i);
        }
        a
    }

    fn push(&mut self, mut inst: Instance) -> usize {
        if let Some(s) = self.saved.remove(&inst.key(&self.rules)) {
            inst.live = s.live;
            inst.inhibited = s.inhibited;
            if inst.live.phase.serial().is_some() {
                *self
                    .active
                    .entry((inst.site.clone(), inst.rule))
                    .or_default() += 1;
            }
        }
        let due = due_of(&inst);
        let clock = inst.clock;
        self.instances.push(inst);
        self.dirty.push(false);
        let i = self.instances.len() - 1;
        if let Some(due) = due {
            self.agents[clock].timed.push(Reverse((due, i)));
        }
        i
    }

    /// Learns (or relearns) what a point is. Instances are created for every
    /// enabled rule that selects it.
    pub fn describe(&mut self, site: &str, agent: &str, device: &str, meta: &PointMeta) {
        let a = self.agent(site, agent);
        if let Some(e) = self.points.get(site).and_then(|m| m.get(&*meta.id)) {
            if *e.room == *meta.room
                && *e.quantity == *meta.quantity
                && *e.device == *device
                && e.agent == a
            {
                return;
            }
            // Relabelled (moved room, new quantity, another device or
            // agent): its rules are matched again, and the old instances
            // retire, their alarms cleared so nothing stays raised by a
            // point that no longer exists as it was.
            tracing::info!(site, point = %meta.id, "point relabelled; its rules are matched again");
            let old = e.instances.clone();
            for i in old {
                self.retire(i);
            }
        }
        let site_arc: Arc<str> = self.agents[a].site.clone();
        let agent_arc = self.agents[a].agent.clone();
        let room: Arc<str> = meta.room.clone();
        let device: Arc<str> = device.into();
        let mut ids = Vec::new();
        for rule in 0..self.rules.rules.len() {
            let r = &self.rules.rules[rule];
            if matches!(r.cond, Cond::AgentSilent | Cond::Composite { .. })
                || !self
                    .rules
                    .selects(rule, &meta.quantity, &meta.room, device.as_ref(), &meta.id)
            {
                continue;
            }
            let params = self.rules.params(rule, site, &meta.room);
            if !params.enabled {
                continue;
            }
            let labels = [
                site_arc.clone(),
                agent_arc.clone(),
                room.clone(),
                device.clone(),
                meta.id.clone(),
            ];
            let i = self.push(Instance::new(rule, Scope::Point, labels, params, a));
            ids.push(i);
            if self.rules.rules[rule].cond == Cond::Silent {
                self.agents[a].silent.push(i);
            }
            // Composites in this room (or of this device) that count this rule.
            for parent_rule in self.parents_of[rule].clone() {
                let c = self.group_instance(parent_rule, &site_arc, &room, &device, a);
                if let Some(c) = c {
                    self.instances[c].members.push(i);
                    self.instances[i].parents.push(c);
                }
            }
        }
        self.points.entry(site_arc).or_default().insert(
            meta.id.clone(),
            PointEntry {
                agent: a,
                room,
                device,
                quantity: meta.quantity.clone(),
                instances: ids,
            },
        );
    }

    /// Takes an instance out of service: it leaves its composites and
    /// silence and timer lists behave as if it were gone; an alarm it held
    /// is cleared now (queued for the next `observe` or `tick`).
    fn retire(&mut self, i: usize) {
        let mut out = std::mem::take(&mut self.retired_out);
        let at = self.agents[self.instances[i].clock].clock.max(self.started);
        if let Some(serial) = self.instances[i].live.phase.serial() {
            self.instances[i].live.cond = false;
            self.instances[i].live.phase = Phase::Normal;
            let began = self.instances[i].live.began.unwrap_or(at);
            self.emit(i, Kind::Clear, serial, at, began, None, false, &mut out);
        } else if self.instances[i].live.cond {
            self.instances[i].live.cond = false;
            self.instances[i].live.phase = Phase::Normal;
        }
        self.instances[i].retired = true;
        self.mark(i);
        for p in self.instances[i].parents.clone() {
            self.instances[p].members.retain(|&m| m != i);
            self.recompute_composite(p, at, &mut out);
        }
        self.retired_out = out;
    }

    /// The composite instance of `rule` for this room, or for this device
    /// of the room when the rule groups by device (`every`).
    fn group_instance(
        &mut self,
        rule: usize,
        site: &Arc<str>,
        room: &Arc<str>,
        device: &Arc<str>,
        a: usize,
    ) -> Option<usize> {
        let per_device = matches!(
            self.rules.rules[rule].cond,
            Cond::Composite {
                need: Need::Every,
                ..
            }
        );
        let empty: Arc<str> = "".into();
        let group = if per_device {
            device.clone()
        } else {
            empty.clone()
        };
        let key = (site.clone(), room.clone(), group.clone(), rule);
        if let Some(i) = self.rooms.get(&key) {
            return Some(*i);
        }
        let params = self.rules.params(rule, site, room);
        if !params.enabled {
            return None;
        }
        let labels = [
            site.clone(),
            self.agents[a].agent.clone(),
            room.clone(),
            group,
            empty,
        ];
        let scope = if per_device {
            Scope::Device
        } else {
            Scope::Room
        };
        let i = self.push(Instance::new(rule, scope, labels, params, a));
        self.rooms.insert(key, i);
        // A composite can be a member of another composite.
        for parent_rule in self.parents_of[rule].clone() {
            if let Some(c) = self.group_instance(parent_rule, site, room, device, a) {
                self.instances[c].members.push(i);
                self.instances[i].parents.push(c);
            }
        }
        Some(i)
    }

    /// Fills rate windows and last-seen times from stored readings after a
    /// restart, without raising anything.
    pub fn warm(&mut self, site: &str, point: &str, ts: Ts, value: Option<f64>, good: bool) {
        let Some(e) = self.points.get(site).and_then(|m| m.get(point)) else {
            return;
        };
        for &i in &e.instances {
            let inst = &mut self.instances[i];
            let rule = &self.rules.rules[inst.rule];
            match (&rule.cond, value) {
                (Cond::Rise { window_ms, .. }, Some(v)) if good => {
                    push_window(&mut inst.live.window, ts, v, *window_ms);
                }
                (Cond::Silent, _) if good => {
                    inst.live.last_ts = inst.live.last_ts.max(Some(ts));
                }
                _ => {}
            }
        }
        let a = self
            .instances
            .get(e.instances.first().copied().unwrap_or(usize::MAX))
            .map(|i| i.clock);
        if let Some(a) = a {
            self.agents[a].clock = self.agents[a].clock.max(ts);
        }
    }

    /// Judges a stored batch. `now` is the wall clock (caps agent clocks,
    /// so a device with a clock in the future cannot fire every timer).
    pub fn observe(&mut self, batch: &Batch, now: Ts, out: &mut Vec<Transition>) {
        let a = self.agent(&batch.site, &batch.agent);
        for meta in &batch.points {
            self.describe(&batch.site, &batch.agent, &batch.device, meta);
        }
        out.append(&mut self.retired_out);
        self.agents[a].seen = self.agents[a].seen.max(now);
        // Agent silence ends with any batch.
        for k in 0..self.agents[a].instances.len() {
            let i = self.agents[a].instances[k];
            self.step_live(i, now, false, None, out);
        }
        let Some(site_points) = self.points.get(&*batch.site) else {
            return;
        };
        // Collected first: judging needs `&mut self`. The buffer is reused.
        let mut work = std::mem::take(&mut self.work);
        work.clear();
        for (ri, r) in batch.readings.iter().enumerate() {
            if let Some(e) = site_points.get(&*r.point) {
                work.extend(e.instances.iter().map(|&i| (i, ri)));
            }
        }
        let mut clock = self.agents[a].clock;
        for r in &batch.readings {
            clock = clock.max(r.ts.min(now));
        }
        self.agents[a].clock = clock;
        for &(i, ri) in &work {
            let r = &batch.readings[ri];
            let good = r.quality == Quality::Good;
            // A device clock running ahead is judged at the wall clock, so
            // one early reading cannot make every later one look late.
            let ts = r.ts.min(now + FUTURE_TOLERANCE_MS);
            self.judge(i, ts, r.value, r.text.as_deref(), good, now, out);
        }
        self.work = work;
        // Delays that ran out with the readings' time.
        let clock = self.agents[a].clock.min(now);
        self.run_timers(a, clock, out);
    }

    /// One reading for one instance.
    #[allow(clippy::too_many_arguments)]
    fn judge(
        &mut self,
        i: usize,
        ts: Ts,
        value: Option<f64>,
        text: Option<&str>,
        good: bool,
        now: Ts,
        out: &mut Vec<Transition>,
    ) {
        let inst = &self.instances[i];
        let rule = &self.rules.rules[inst.rule];
        let late = inst.live.last_ts.is_some_and(|last| ts <= last) && rule.cond != Cond::Silent;
        if late {
            if inst.live.last_ts == Some(ts) {
                return; // the same time again: nothing new
            }
            self.judge_late(i, ts, value, text, good, now, out);
            return;
        }
        let inst = &mut self.instances[i];
        let Some(cond) = evaluate(
            &rule.cond,
            &inst.params,
            &mut inst.live,
            ts,
            value,
            text,
            good,
        ) else {
            return;
        };
        if cond != inst.live.cond {
            inst.live.value = value;
        }
        self.step_live(i, ts, cond, value, out);
    }

    /// Applies a new condition to an instance's live machine at `ts`.
    fn step_live(
        &mut self,
        i: usize,
        ts: Ts,
        cond: bool,
        value: Option<f64>,
        out: &mut Vec<Transition>,
    ) {
        let inst = &mut self.instances[i];
        let was = inst.live.cond;
        let before = inst.live.phase;
        if cond && !was {
            inst.live.began = Some(ts);
        }
        inst.live.cond = cond;
        let params = inst.params;
        let step = advance(&mut inst.live, params, ts, &mut self.next_serial);
        let changed = was != cond || before != inst.live.phase;
        if before != inst.live.phase {
            if let Some(due) = due_of(inst) {
                let a = inst.clock;
                self.agents[a].timed.push(Reverse((due, i)));
            }
        }
        if changed {
            self.mark(i);
        }
        if let Some((kind, serial, at, began)) = step {
            self.emit(i, kind, serial, at, began, value, false, out);
        }
        if was != cond {
            for p in self.instances[i].parents.clone() {
                self.recompute_composite(p, ts, out);
            }
        }
    }

    fn recompute_composite(&mut self, c: usize, ts: Ts, out: &mut Vec<Transition>) {
        let inst = &self.instances[c];
        let Cond::Composite { of, need } = &self.rules.rules[inst.rule].cond else {
            return;
        };
        let members = &inst.members;
        let true_of = |rule: usize| {
            members
                .iter()
                .filter(|&&m| self.instances[m].rule == rule && self.instances[m].live.cond)
                .count()
        };
        let cond = match need {
            Need::All => of.iter().all(|&r| true_of(r) > 0),
            Need::Any => of.iter().any(|&r| true_of(r) > 0),
            Need::Every => {
                !members.is_empty() && members.iter().all(|&m| self.instances[m].live.cond)
            }
            Need::AtLeast(_) => {
                let k = inst.params.threshold.max(1.0) as usize;
                of.iter().map(|&r| true_of(r)).sum::<usize>() >= k
            }
        };
        self.step_live(c, ts, cond, None, out);
    }

    #[allow(clippy::too_many_arguments)]
    fn emit(
        &mut self,
        i: usize,
        kind: Kind,
        serial: u64,
        at: Ts,
        began: Ts,
        value: Option<f64>,
        late: bool,
        out: &mut Vec<Transition>,
    ) {
        let (site, rule) = (self.instances[i].site.clone(), self.instances[i].rule);
        let mut inhibited = false;
        match kind {
            Kind::Raise => {
                inhibited = self.rules.rules[rule]
                    .inhibited_by
                    .iter()
                    .any(|&by| self.active.get(&(site.clone(), by)).is_some_and(|n| *n > 0));
                if !late {
                    self.instances[i].inhibited = inhibited;
                    *self.active.entry((site.clone(), rule)).or_default() += 1;
                }
            }
            Kind::Clear => {
                if !late {
                    inhibited = std::mem::take(&mut self.instances[i].inhibited);
                    if let Some(n) = self.active.get_mut(&(site.clone(), rule)) {
                        *n = n.saturating_sub(1);
                    }
                }
            }
            Kind::Correct | Kind::Release => {}
        }
        out.push(Transition {
            kind,
            serial,
            instance: i,
            at,
            began_at: began,
            value,
            late,
            inhibited,
        });
        // The last active alarm of an inhibiting rule cleared: what it
        // explained may now be told.
        if kind == Kind::Clear
            && !late
            && self
                .active
                .get(&(site.clone(), rule))
                .is_none_or(|n| *n == 0)
        {
            for &target in &self.inhibits[rule].clone() {
                let still = self.rules.rules[target]
                    .inhibited_by
                    .iter()
                    .any(|&by| self.active.get(&(site.clone(), by)).is_some_and(|n| *n > 0));
                if still {
                    continue;
                }
                for j in 0..self.instances.len() {
                    let inst = &self.instances[j];
                    if inst.rule == target && inst.inhibited && inst.site == site {
                        if let Some(serial) = inst.live.phase.serial() {
                            self.releases.push((j, serial, at + RELEASE_GRACE_MS));
                        }
                    }
                }
            }
        }
        self.mark(i);
    }

    /// A reading older than the instance's newest: judged on the late machine.
    #[allow(clippy::too_many_arguments)]
    fn judge_late(
        &mut self,
        i: usize,
        ts: Ts,
        value: Option<f64>,
        text: Option<&str>,
        good: bool,
        now: Ts,
        out: &mut Vec<Transition>,
    ) {
        let rule = self.instances[i].rule;
        let cond_kind = self.rules.rules[rule].cond.clone();
        let params = self.instances[i].params;
        let inst = &mut self.instances[i];
        let (late, touched) = inst.late.get_or_insert_with(|| (Box::default(), now));
        *touched = now;
        if late.last_ts.is_some_and(|last| ts <= last) {
            return; // older still: out of order within the backlog itself
        }
        let Some(cond) = evaluate(&cond_kind, &params, late, ts, value, text, good) else {
            return;
        };
        if cond && !late.cond {
            late.began = Some(ts);
            late.value = value;
        }
        late.cond = cond;
        let live_phase = inst.live.phase;
        let live_ended = inst.live.ended;
        let late_serial = late.phase.serial();
        let mut scratch = self.next_serial;
        let step = advance(late, params, ts, &mut scratch);
        let Some((kind, _, at, began)) = step else {
            return;
        };
        match kind {
            Kind::Raise => match live_phase.raised_at() {
                // The live machine raised this episode when data resumed;
                // the backlog shows when it really began.
                Some(raised) if raised > at => {
                    let serial = live_phase.serial().unwrap_or_default();
                    late.phase = Phase::Active {
                        serial: NOT_OWN,
                        raised_at: at,
                    };
                    self.emit(i, Kind::Correct, serial, at, began, value, true, out);
                }
                // An alarm from before the gap, still going: nothing new.
                Some(_) => {
                    late.phase = Phase::Active {
                        serial: NOT_OWN,
                        raised_at: at,
                    };
                }
                // Inside the episode the live machine raised and cleared.
                None if live_ended.is_some_and(|(from, to)| from <= at && at <= to) => {
                    late.phase = Phase::Active {
                        serial: NOT_OWN,
                        raised_at: at,
                    };
                }
                None => {
                    let serial = self.next_serial;
                    self.next_serial += 1;
                    late.phase = Phase::Active {
                        serial,
                        raised_at: at,
                    };
                    self.emit(i, Kind::Raise, serial, at, began, value, true, out);
                }
            },
            Kind::Clear => {
                // Only what the late machine raised itself is its to clear.
                if let Some(serial) = late_serial.filter(|s| *s != NOT_OWN) {
                    self.emit(i, Kind::Clear, serial, at, began, value, true, out);
                }
            }
            _ => {}
        }
    }

    /// Timers: raise and clear delays that have run out on each agent's
    /// clock, point and agent silence, late machines that are done.
    pub fn tick(&mut self, now: Ts, out: &mut Vec<Transition>) {
        out.append(&mut self.retired_out);
        self.release_due(now, out);
        for a in 0..self.agents.len() {
            // Agent silence runs on the wall clock.
            let seen = self.agents[a].seen.max(self.started);
            for k in 0..self.agents[a].instances.len() {
                let i = self.agents[a].instances[k];
                let limit = self.instances[i].params.threshold as i64;
                if now - seen >= limit && !self.instances[i].live.cond {
                    self.step_live(i, seen + limit, true, None, out);
                } else if self.instances[i].live.cond {
                    let at = now;
                    self.timers(i, at, out);
                }
            }
            self.tick_agent(a, now, out);
        }
        for i in 0..self.instances.len() {
            if let Some((m, touched)) = &self.instances[i].late {
                if now - touched >= LATE_IDLE_MS {
                    // The backlog is over. An alarm it raised that is still
                    // active ends where the backlog ends.
                    let end = m.last_ts.unwrap_or(now);
                    let began = m.began.unwrap_or(end);
                    let raised_at = m.phase.raised_at().unwrap_or(end);
                    let own = out_serial_of_late(&self.instances[i])
                        .filter(|s| self.instances[i].live.phase.serial() != Some(*s));
                    self.instances[i].late = None;
                    let live = &self.instances[i].live;
                    match own {
                        // Still true in the live data, its delay running: the
                        // same episode. The live machine takes the alarm over
                        // rather than clearing it and raising another.
                        Some(serial)
                            if live.cond && matches!(live.phase, Phase::Pending { .. }) =>
                        {
                            self.instances[i].live.phase = Phase::Active { serial, raised_at };
                            let key = (self.instances[i].site.clone(), self.instances[i].rule);
                            *self.active.entry(key).or_default() += 1;
                            self.mark(i);
                        }
                        Some(serial) => {
                            self.emit(i, Kind::Clear, serial, end, began, None, true, out)
                        }
                        None => {}
                    }
                }
            }
        }
    }

    /// Releases inhibited alarms whose grace after their cause cleared is over.
    fn release_due(&mut self, now: Ts, out: &mut Vec<Transition>) {
        if self.releases.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut self.releases);
        for (j, serial, due) in pending {
            let inst = &self.instances[j];
            if inst.live.phase.serial() != Some(serial) || !inst.inhibited {
                continue; // cleared meanwhile (recorded as inhibited), or released
            }
            if self.agents[inst.clock].clock.min(now) < due {
                self.releases.push((j, serial, due));
                continue;
            }
            let still = self.rules.rules[inst.rule].inhibited_by.iter().any(|&by| {
                self.active
                    .get(&(inst.site.clone(), by))
                    .is_some_and(|n| *n > 0)
            });
            if still {
                continue; // explained again; released when that clears
            }
            self.instances[j].inhibited = false;
            self.mark(j);
            out.push(Transition {
                kind: Kind::Release,
                serial,
                instance: j,
                at: due,
                began_at: due,
                value: None,
                late: false,
                inhibited: false,
            });
        }
    }

    /// Point silence (on the agent's clock) and running delays.
    fn tick_agent(&mut self, a: usize, now: Ts, out: &mut Vec<Transition>) {
        let clock = self.agents[a].clock.min(now);
        if clock == i64::MIN {
            return;
        }
        let silent = std::mem::take(&mut self.agents[a].silent);
        for &i in &silent {
            if self.instances[i].retired {
                continue;
            }
            let limit = self.instances[i].params.threshold as i64;
            // A point never heard from in good health is silent since this
            // engine started listening.
            let last = self.instances[i].live.last_ts.unwrap_or(self.started);
            if !self.instances[i].live.cond && clock - last >= limit {
                self.step_live(i, last + limit, true, None, out);
            }
        }
        self.agents[a].silent = silent;
        self.run_timers(a, clock, out);
    }

    /// Delays of agent `a`'s instances that ran out by `clock`.
    fn run_timers(&mut self, a: usize, clock: Ts, out: &mut Vec<Transition>) {
        while let Some(&Reverse((due, i))) = self.agents[a].timed.peek() {
            if due > clock {
                break;
            }
            self.agents[a].timed.pop();
            // Checks the phase it is in now: a stale entry does nothing.
            self.timers(i, clock, out);
        }
    }

    /// Moves pending and clearing phases whose delay ran out by `clock`.
    fn timers(&mut self, i: usize, clock: Ts, out: &mut Vec<Transition>) {
        if self.instances[i].retired {
            return;
        }
        let m = &self.instances[i].live;
        let due = match m.phase {
            Phase::Pending { since } => {
                m.cond && clock - since >= self.instances[i].params.delay_ms
            }
            Phase::Clearing { since, .. } => {
                !m.cond && clock - since >= self.instances[i].params.clear_delay_ms
            }
            _ => false,
        };
        if due {
            let cond = m.cond;
            let value = m.value;
            self.step_live(i, clock, cond, value, out);
        }
    }

    /// The serial the next new alarm gets.
    pub fn next_serial(&self) -> u64 {
        self.next_serial
    }

    /// Gives the serials numbered since `from` (those in `from..next`) the
    /// numbers `to` instead, in order: on PostgreSQL serials come from one
    /// sequence shared by every node's engine, and another node may have
    /// taken the ones this engine counted on. Returns the mapping to apply
    /// to transitions already handed out.
    pub fn renumber(&mut self, from: u64, to: Vec<u64>) -> Renumbered {
        let end = self.next_serial;
        debug_assert_eq!(to.len() as u64, end - from);
        let next = to.last().map_or(end, |l| l + 1);
        let r = Renumbered { from, end, to };
        let phase = |p: &mut Phase| match p {
            Phase::Active { serial, .. } | Phase::Clearing { serial, .. } => {
                *serial = r.apply(*serial)
            }
            _ => {}
        };
        for inst in &mut self.instances {
            phase(&mut inst.live.phase);
            if let Some((late, _)) = &mut inst.late {
                phase(&mut late.phase);
            }
        }
        for (_, serial, _) in &mut self.releases {
            *serial = r.apply(*serial);
        }
        for t in &mut self.retired_out {
            t.serial = r.apply(t.serial);
        }
        self.next_serial = next;
        r
    }

    /// The longest rate-of-rise window watching a point, if any.
    pub fn window_of(&self, site: &str, point: &str) -> Option<Ts> {
        let e = self.points.get(site)?.get(point)?;
        e.instances
            .iter()
            .filter_map(|&i| match self.rules.rules[self.instances[i].rule].cond {
                Cond::Rise { window_ms, .. } => Some(window_ms),
                _ => None,
            })
            .max()
    }

    /// Points known, for tests and diagnostics.
    pub fn point_count(&self) -> usize {
        self.points.values().map(HashMap::len).sum()
    }

    /// The point's labels, if known.
    pub fn point(&self, site: &str, point: &str) -> Option<(&str, &str, &str)> {
        self.points
            .get(site)
            .and_then(|m| m.get(point))
            .map(|e| (&*e.room, &*e.device, &*e.quantity))
    }
}

/// When the running delay of `inst` (if any) runs out.
fn due_of(inst: &Instance) -> Option<Ts> {
    match inst.live.phase {
        Phase::Pending { since } => Some(since.saturating_add(inst.params.delay_ms)),
        Phase::Clearing { since, .. } => Some(since.saturating_add(inst.params.clear_delay_ms)),
        _ => None,
    }
}

/// The serial of an alarm the late machine raised itself (not one it found
/// the live machine already holds).
fn out_serial_of_late(inst: &Instance) -> Option<u64> {
    inst.late
        .as_ref()
        .and_then(|(m, _)| m.phase.serial())
        .filter(|s| *s != NOT_OWN)
}

/// Marks a late machine's active episode as the live machine's alarm: it is
/// the live machine's to clear, not the late one's. Serials start at 1.
const NOT_OWN: u64 = 0;

fn push_window(w: &mut VecDeque<(Ts, f64)>, ts: Ts, v: f64, window_ms: i64) {
    if w.back().is_some_and(|(t, _)| *t >= ts) {
        return;
    }
    w.push_back((ts, v));
    while w.front().is_some_and(|(t, _)| ts - t > window_ms) || w.len() > MAX_WINDOW {
        w.pop_front();
    }
}

/// The condition after one reading; `None` when the reading says nothing
/// about it (bad quality, no value).
fn evaluate(
    cond: &Cond,
    p: &Params,
    m: &mut Machine,
    ts: Ts,
    value: Option<f64>,
    text: Option<&str>,
    good: bool,
) -> Option<bool> {
    if let Cond::Silent = cond {
        if good {
            // A backlog's older readings never move it back.
            m.last_ts = m.last_ts.max(Some(ts));
        }
        return good.then_some(false);
    }
    m.last_ts = Some(ts);
    if !good {
        return None;
    }
    let x = p.threshold;
    Some(match cond {
        Cond::Above => {
            let v = value?;
            if m.cond {
                v >= x - p.hysteresis && (p.hysteresis > 0.0 || v > x)
            } else {
                v > x
            }
        }
        Cond::Below => {
            let v = value?;
            if m.cond {
                v <= x + p.hysteresis && (p.hysteresis > 0.0 || v < x)
            } else {
                v < x
            }
        }
        Cond::Rise { per_ms, window_ms } => {
            let v = value?;
            push_window(&mut m.window, ts, v, *window_ms);
            let (t0, v0) = *m.window.front()?;
            // Judged once the window is at least half full, so two noisy
            // samples a second apart cannot look like a fire.
            if ts - t0 < window_ms / 2 || ts == t0 {
                false
            } else {
                (v - v0) / (ts - t0) as f64 * *per_ms as f64 >= x
            }
        }
        Cond::Equals => (value? - x).abs() < 1e-9,
        Cond::Text(t) => text? == t,
        Cond::Bit(b) => {
            let v = value?;
            v.is_finite() && ((v as i64) >> b) & 1 == 1
        }
        Cond::Silent | Cond::AgentSilent | Cond::Composite { .. } => return None,
    })
}

/// Moves a machine's phase for its (already updated) condition at `ts`.
/// Returns the transition, if one happened: (kind, serial, at, began).
fn advance(
    m: &mut Machine,
    p: Params,
    ts: Ts,
    next_serial: &mut u64,
) -> Option<(Kind, u64, Ts, Ts)> {
    let raised_at = m.phase.raised_at();
    let step = advance_phase(m, p, ts, next_serial);
    if let (Some((Kind::Clear, _, at, _)), Some(raised)) = (step, raised_at) {
        m.ended = Some((raised, at));
    }
    step
}

fn advance_phase(
    m: &mut Machine,
    p: Params,
    ts: Ts,
    next_serial: &mut u64,
) -> Option<(Kind, u64, Ts, Ts)> {
    let began = m.began.unwrap_or(ts);
    match m.phase {
        Phase::Normal if m.cond => {
            if p.delay_ms <= 0 {
                let serial = *next_serial;
                *next_serial += 1;
                m.phase = Phase::Active {
                    serial,
                    raised_at: ts,
                };
                Some((Kind::Raise, serial, ts, began))
            } else {
                m.phase = Phase::Pending { since: ts };
                None
            }
        }
        Phase::Pending { .. } if !m.cond => {
            m.phase = Phase::Normal;
            None
        }
        Phase::Pending { since } if ts - since >= p.delay_ms => {
            let serial = *next_serial;
            *next_serial += 1;
            let at = since + p.delay_ms;
            m.phase = Phase::Active {
                serial,
                raised_at: at,
            };
            Some((Kind::Raise, serial, at, since))
        }
        Phase::Active { serial, raised_at } if !m.cond => {
            if p.clear_delay_ms <= 0 {
                m.phase = Phase::Normal;
                Some((Kind::Clear, serial, ts, began))
            } else {
                m.phase = Phase::Clearing {
                    serial,
                    raised_at,
                    since: ts,
                };
                None
            }
        }
        Phase::Clearing {
            serial, raised_at, ..
        } if m.cond => {
            m.phase = Phase::Active { serial, raised_at };
            None
        }
        Phase::Clearing { serial, since, .. } if ts - since >= p.clear_delay_ms => {
            m.phase = Phase::Normal;
            Some((Kind::Clear, serial, since + p.clear_delay_ms, began))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use roomguard_protocol::{Reading, PROTOCOL_VERSION};
    use std::path::PathBuf;

    const RULES: &str = r#"
pack = "t"
[[rule]]
id = "t.hot"
name = "hot"
category = "environment"
level = 3
source = "test"
when = { above = 27.0, hysteresis = 1.0 }
select = { quantity = ["temperature"] }
clear_delay = "0s"

[[rule]]
id = "t.hot_slow"
name = "hot for a while"
category = "environment"
level = 2
source = "test"
when = { above = 40.0 }
select = { quantity = ["temperature"] }
delay = "60s"
clear_delay = "20s"

[[rule]]
id = "t.rise"
name = "rising"
category = "fire"
level = 2
source = "test"
when = { rise = 8.0, per = "1m", window = "1m" }
select = { quantity = ["temperature"] }
delay = "0s"

[[rule]]
id = "t.smoke"
name = "smoke"
category = "fire"
level = 2
life_safety = true
source = "test"
when = { equals = 1 }
select = { quantity = ["smoke"] }
clear_delay = "0s"

[[rule]]
id = "t.two_heads"
name = "two heads"
category = "fire"
level = 1
life_safety = true
source = "test"
when = { at_least = 2, of = ["t.smoke"] }
clear_delay = "0s"

[[rule]]
id = "t.fire"
name = "smoke and heat"
category = "fire"
level = 1
life_safety = true
source = "test"
when = { all = ["t.smoke", "t.hot"] }
clear_delay = "0s"

[[rule]]
id = "t.mains"
name = "mains failure"
category = "electrical"
level = 1
source = "test"
when = { below = 100.0 }
select = { quantity = ["voltage"] }
delay = "0s"
clear_delay = "0s"

[[rule]]
id = "t.on_battery"
name = "ups on battery"
category = "electrical"
level = 2
source = "test"
when = { text = "on_battery" }
select = { quantity = ["ups_output_source"] }
delay = "0s"
clear_delay = "0s"
inhibited_by = ["t.mains"]

[[rule]]
id = "t.fault"
name = "fault bit"
category = "explosion"
level = 2
source = "test"
when = { bit = 2 }
select = { quantity = ["fault_word"] }
delay = "0s"
clear_delay = "0s"

[[rule]]
id = "t.silent"
name = "sensor silent"
category = "environment"
level = 3
source = "test"
when = { silent = "5m" }
select = { quantity = ["humidity"] }
clear_delay = "0s"

[[rule]]
id = "t.agent"
name = "agent silent"
category = "environment"
level = 2
source = "test"
when = { agent_silent = "2m" }
clear_delay = "0s"
"#;

    const T0: Ts = 1_700_000_000_000;
    const S: Ts = 1000;

    /// One batch of site `s`, agent `a`, polled at `ts`.
    fn batch_of(seq: u64, ts: Ts, readings: Vec<Reading>) -> Batch {
        Batch {
            v: PROTOCOL_VERSION,
            site: "s".into(),
            agent: "a".into(),
            seq,
            device: "dev".into(),
            polled_at: ts,
            backfill: false,
            points: Vec::new(),
            readings,
        }
    }

    /// A good reading of `point`.
    fn good(point: &str, ts: Ts, value: f64, text: Option<&str>) -> Reading {
        Reading {
            point: point.into(),
            value: Some(value),
            text: text.map(str::to_owned),
            ts,
            quality: Quality::Good,
        }
    }

    /// An engine with the built-in rule packs.
    fn builtin_engine() -> Engine {
        let rules = RuleSet::builtin_with(Vec::new()).unwrap();
        Engine::new(Arc::new(rules), 1, T0, HashMap::new())
    }

    struct Site {
        engine: Engine,
        seq: u64,
        out: Vec<Transition>,
    }

    fn meta(id: &str, room: &str, quantity: &str) -> PointMeta {
        PointMeta {
            id: id.into(),
            room: room.into(),
            quantity: quantity.into(),
            unit: "".into(),
        }
    }

    impl Site {
        fn new() -> Site {
            Self::restored(1, HashMap::new())
        }

        fn restored(next: u64, saved: HashMap<String, Saved>) -> Site {
            let rules = RuleSet::from_texts(&[(PathBuf::from("t.toml"), RULES.into())], Vec::new())
                .unwrap();
            let mut engine = Engine::new(Arc::new(rules), next, T0, saved);
            for (id, room, q) in [
                ("temp", "mr", "temperature"),
                ("smoke1", "mr", "smoke"),
                ("smoke2", "mr", "smoke"),
                ("volts", "pd", "voltage"),
                ("ups", "pd", "ups_output_source"),
                ("faults", "br", "fault_word"),
                ("rh", "mr", "humidity"),
            ] {
                engine.describe("s", "a", "dev", &meta(id, room, q));
            }
            Site {
                engine,
                seq: 0,
                out: Vec::new(),
            }
        }

        fn send(&mut self, point: &str, ts: Ts, value: f64) -> Vec<Transition> {
            self.send_reading(point, ts, Some(value), None, false)
        }

        fn send_reading(
            &mut self,
            point: &str,
            ts: Ts,
            value: Option<f64>,
            text: Option<&str>,
            backfill: bool,
        ) -> Vec<Transition> {
            // The wall clock is never behind the newest reading here.
            self.observe(point, ts, value, text, backfill, ts.max(T0) + 100 * S)
        }

        /// A reading with the wall clock given.
        fn send_at(&mut self, point: &str, ts: Ts, value: f64, now: Ts) {
            self.observe(point, ts, Some(value), None, false, now);
        }

        fn observe(
            &mut self,
            point: &str,
            ts: Ts,
            value: Option<f64>,
            text: Option<&str>,
            backfill: bool,
            now: Ts,
        ) -> Vec<Transition> {
            self.seq += 1;
            let batch = Batch {
                backfill,
                ..batch_of(
                    self.seq,
                    ts,
                    vec![Reading {
                        point: point.into(),
                        value,
                        text: text.map(str::to_owned),
                        ts,
                        quality: Quality::Good,
                    }],
                )
            };
            let mut out = Vec::new();
            self.engine.observe(&batch, now, &mut out);
            self.out.extend(out.iter().cloned());
            out
        }

        fn tick(&mut self, now: Ts) -> Vec<Transition> {
            let mut out = Vec::new();
            self.engine.tick(now, &mut out);
            self.out.extend(out.iter().cloned());
            out
        }

        fn of(&self, rule: &str) -> Vec<(Kind, Ts, bool)> {
            let r = self.engine.rules().index(rule).unwrap();
            self.out
                .iter()
                .filter(|t| self.engine.instance(t.instance).rule == r)
                .map(|t| (t.kind, t.at, t.late))
                .collect()
        }
    }

    /// Issue 20: the UPS profile labelled its battery voltage `dc_voltage`,
    /// so a healthy 41 V UPS battery string raised the −48 V plant's
    /// under-voltage (46.1 V). The shipped profile's quantity for it, fed
    /// 41 V to the built-in rules, raises nothing; a −48 V plant at 41 V does.
    #[test]
    fn a_ups_battery_at_41_volts_raises_no_dc_plant_alarm() {
        let profile = include_str!("../../../configs/profiles/ups-mib.toml");
        let block = &profile[profile.find("id = \"battery_voltage\"").unwrap()..];
        let quantity = block
            .lines()
            .find_map(|l| l.trim().strip_prefix("quantity = \""))
            .and_then(|q| q.strip_suffix('"'))
            .unwrap();
        let mut engine = builtin_engine();
        engine.describe(
            "s",
            "a",
            "ups",
            &meta("ups.battery_voltage", "pd", quantity),
        );
        engine.describe("s", "a", "rect", &meta("rect.bus", "pd", "dc_voltage"));
        let mut out = Vec::new();
        for (i, point) in ["ups.battery_voltage", "rect.bus"].iter().enumerate() {
            for k in 0..30 {
                let ts = T0 + k * 10 * S + i as Ts;
                let batch = batch_of(
                    (i * 100 + k as usize) as u64,
                    ts,
                    vec![good(point, ts, 41.0, None)],
                );
                engine.observe(&batch, ts + S, &mut out);
            }
        }
        let raised: Vec<(String, String)> = out
            .iter()
            .filter(|t| t.kind == Kind::Raise)
            .map(|t| {
                let inst = engine.instance(t.instance);
                (
                    engine.rules().rules[inst.rule].id.clone(),
                    inst.point.to_string(),
                )
            })
            .collect();
        assert!(
            raised.iter().all(|(_, p)| p != "ups.battery_voltage"),
            "{quantity}: {raised:?}"
        );
        assert!(
            raised
                .iter()
                .any(|(r, p)| r == "electrical.dc_undervoltage" && p == "rect.bus"),
            "{raised:?}"
        );
    }

    /// Drill for electrical.ups_runtime_low (issue 20): a UPS reporting 0
    /// minutes left on mains raised nothing, right, and on battery nothing
    /// either. Now: on battery with 8 minutes left it raises; on mains with
    /// 0, or on battery with 30, it stays quiet; back on mains it clears.
    #[test]
    fn ups_runtime_low_fires_only_on_battery_with_minutes_short() {
        let mut engine = builtin_engine();
        engine.describe(
            "s",
            "a",
            "ups",
            &meta("ups.source", "pd", "ups_output_source"),
        );
        engine.describe(
            "s",
            "a",
            "ups",
            &meta("ups.minutes", "pd", "ups_runtime_remaining"),
        );
        let mut seq = 0;
        let mut out = Vec::new();
        let mut poll = |engine: &mut Engine, ts: Ts, source: &str, minutes: f64| {
            seq += 1;
            let code = if source == "on_battery" { 5.0 } else { 3.0 };
            let batch = batch_of(
                seq,
                ts,
                vec![
                    good("ups.source", ts, code, Some(source)),
                    good("ups.minutes", ts, minutes, None),
                ],
            );
            let mut o = Vec::new();
            engine.observe(&batch, ts + S, &mut o);
            o
        };
        let runtime_low = engine.rules().index("electrical.ups_runtime_low").unwrap();
        let of_rule = |engine: &Engine, o: &[Transition]| -> Vec<Kind> {
            o.iter()
                .filter(|t| engine.instance(t.instance).rule == runtime_low)
                .map(|t| t.kind)
                .collect()
        };
        // On mains with an empty estimate, then on battery with plenty left.
        for k in 0..10 {
            out.extend(poll(&mut engine, T0 + k * 10 * S, "normal", 0.0));
        }
        for k in 10..20 {
            out.extend(poll(&mut engine, T0 + k * 10 * S, "on_battery", 30.0));
        }
        assert!(of_rule(&engine, &out).is_empty(), "quiet otherwise");
        // On battery, 8 minutes left: raised once.
        for k in 20..30 {
            out.extend(poll(&mut engine, T0 + k * 10 * S, "on_battery", 8.0));
        }
        assert_eq!(of_rule(&engine, &out), [Kind::Raise]);
        // Mains is back: cleared.
        for k in 30..40 {
            out.extend(poll(&mut engine, T0 + k * 10 * S, "normal", 8.0));
        }
        assert_eq!(of_rule(&engine, &out), [Kind::Raise, Kind::Clear]);
    }

    /// Issue 20, item 7: with L3 at 0 V and L1/L2 healthy the collector
    /// raised a room-wide mains failure. Now one phase lost is phase loss on
    /// that phase; every phase of the meter lost is mains failure (which
    /// explains the phase losses); a single-line UPS whose input is lost is a
    /// supply lost too, while its output lines never count as its supply.
    #[test]
    fn one_phase_lost_is_phase_loss_and_every_phase_lost_is_mains_failure() {
        let mut engine = builtin_engine();
        let points = [
            ("m.voltage_a", "m"),
            ("m.voltage_b", "m"),
            ("m.voltage_c", "m"),
            ("ups.input.1.voltage", "ups"),
            ("ups.output.1.voltage", "ups"),
        ];
        for (id, device) in points {
            engine.describe("s", "a", device, &meta(id, "pd", "voltage"));
        }
        let rules = engine.rules().clone();
        let mut seq = 0;
        let mut t = T0;
        // Polls every 10 s for `secs` with these volts (a, b, c, ups in, ups out).
        let mut run = |engine: &mut Engine, secs: i64, v: [f64; 5]| {
            let mut o = Vec::new();
            for _ in 0..secs / 10 {
                seq += 1;
                t += 10 * S;
                let readings = points
                    .iter()
                    .zip(v)
                    .map(|((id, _), v)| good(id, t, v, None))
                    .collect();
                engine.observe(&batch_of(seq, t, readings), t + S, &mut o);
            }
            o
        };
        // Recorded transitions (building blocks are never recorded).
        let told = |engine: &Engine, o: &[Transition]| -> Vec<(String, String, Kind, bool)> {
            o.iter()
                .filter(|tr| !rules.rules[engine.instance(tr.instance).rule].feeds_only)
                .map(|tr| {
                    let i = engine.instance(tr.instance);
                    let room_or_point = if i.point.is_empty() {
                        &i.room
                    } else {
                        &i.point
                    };
                    (
                        rules.rules[i.rule].id.clone(),
                        room_or_point.to_string(),
                        tr.kind,
                        tr.inhibited,
                    )
                })
                .collect()
        };
        let healthy = [230.0; 5];
        assert!(run(&mut engine, 300, healthy).is_empty(), "healthy: quiet");
        // Notified: recorded and not explained by another alarm.
        let notified = |o: Vec<(String, String, Kind, bool)>| -> Vec<(String, String, Kind)> {
            o.into_iter()
                .filter(|x| !x.3)
                .map(|(r, p, k, _)| (r, p, k))
                .collect()
        };
        // L3 lost, L1 and L2 healthy: phase loss on L3 only.
        let o = run(&mut engine, 300, [230.0, 230.0, 0.0, 230.0, 230.0]);
        assert_eq!(
            notified(told(&engine, &o)),
            [(
                "electrical.phase_loss".to_owned(),
                "m.voltage_c".to_owned(),
                Kind::Raise,
            )]
        );
        let o = run(&mut engine, 300, healthy);
        assert!(
            told(&engine, &o).iter().all(|x| x.2 == Kind::Clear),
            "L3 back: cleared: {o:?}"
        );
        // Every phase of the meter lost: mains failure, which explains the
        // three phase losses raised after it.
        let o = run(&mut engine, 300, [0.0, 0.0, 0.0, 230.0, 230.0]);
        let o = told(&engine, &o);
        assert_eq!(
            notified(o.clone()),
            [(
                "electrical.mains_failure".to_owned(),
                "pd".to_owned(),
                Kind::Raise,
            )]
        );
        let explained: Vec<_> = o
            .iter()
            .filter(|x| x.0 == "electrical.phase_loss")
            .map(|x| (x.1.as_str(), x.2, x.3))
            .collect();
        assert_eq!(
            explained,
            [
                ("m.voltage_a", Kind::Raise, true),
                ("m.voltage_b", Kind::Raise, true),
                ("m.voltage_c", Kind::Raise, true)
            ]
        );
        let o = run(&mut engine, 300, healthy);
        assert!(
            told(&engine, &o).iter().all(|x| x.2 == Kind::Clear),
            "all cleared: {o:?}"
        );
        // The UPS's output alone at 0 V is no mains failure…
        let o = run(&mut engine, 300, [230.0, 230.0, 230.0, 230.0, 0.0]);
        assert!(
            told(&engine, &o)
                .iter()
                .all(|(r, _, _, _)| r != "electrical.mains_failure"),
            "{o:?}"
        );
        run(&mut engine, 300, healthy);
        // …its one input line lost is.
        let o = run(&mut engine, 300, [230.0, 230.0, 230.0, 0.0, 230.0]);
        assert!(
            told(&engine, &o).contains(&(
                "electrical.mains_failure".to_owned(),
                "pd".to_owned(),
                Kind::Raise,
                false
            )),
            "{o:?}"
        );
    }

    #[test]
    fn flapping_inside_the_hysteresis_band_raises_and_clears_once() {
        let mut s = Site::new();
        let values = [26.0, 27.5, 26.5, 27.2, 26.1, 27.9, 26.2, 25.9, 26.5, 27.1];
        for (k, v) in values.iter().enumerate() {
            s.send("temp", T0 + k as i64 * S, *v);
        }
        // Raised at 27.5, held through 26.1…27.9 (above 26), cleared at 25.9, raised again at 27.1.
        assert_eq!(
            s.of("t.hot"),
            vec![
                (Kind::Raise, T0 + S, false),
                (Kind::Clear, T0 + 7 * S, false),
                (Kind::Raise, T0 + 9 * S, false)
            ]
        );
    }

    #[test]
    fn a_raise_delay_needs_the_condition_to_hold_on_the_agents_clock() {
        let mut s = Site::new();
        s.send("temp", T0, 41.0);
        s.send("temp", T0 + 30 * S, 41.0);
        assert!(s.of("t.hot_slow").is_empty());
        // Dips below: the delay starts again.
        s.send("temp", T0 + 40 * S, 39.0);
        s.send("temp", T0 + 50 * S, 42.0);
        s.send("temp", T0 + 100 * S, 42.0);
        assert!(s.of("t.hot_slow").is_empty());
        // A reading of another point moves the agent's clock past the delay.
        s.send("rh", T0 + 111 * S, 40.0);
        assert_eq!(s.of("t.hot_slow"), vec![(Kind::Raise, T0 + 110 * S, false)]);
        // Clear delay: back above within 20 s keeps the same alarm.
        s.send("temp", T0 + 120 * S, 35.0);
        s.send("temp", T0 + 130 * S, 41.0);
        s.send("temp", T0 + 140 * S, 35.0);
        s.send("temp", T0 + 161 * S, 35.0);
        assert_eq!(
            s.of("t.hot_slow"),
            vec![
                (Kind::Raise, T0 + 110 * S, false),
                (Kind::Clear, T0 + 160 * S, false)
            ]
        );
        let serials: Vec<u64> = s
            .out
            .iter()
            .filter(|t| s.engine.instance(t.instance).rule == 1)
            .map(|t| t.serial)
            .collect();
        assert_eq!(serials[0], serials[1], "raise and clear share one serial");
    }

    #[test]
    fn a_pending_alarm_is_raised_by_the_timer_when_no_reading_follows() {
        let mut s = Site::new();
        s.send("temp", T0, 45.0);
        s.send("rh", T0 + 59 * S, 40.0);
        assert!(s.of("t.hot_slow").is_empty());
        s.send("rh", T0 + 61 * S, 40.0);
        assert_eq!(s.of("t.hot_slow"), vec![(Kind::Raise, T0 + 60 * S, false)]);
    }

    #[test]
    fn rate_of_rise_is_measured_over_the_window() {
        let mut s = Site::new();
        // 2 °C/min: nothing.
        for k in 0..60 {
            s.send("temp", T0 + k * S, 20.0 + k as f64 * 2.0 / 60.0);
        }
        assert!(s.of("t.rise").is_empty());
        // 12 °C/min from here on.
        let base = T0 + 60 * S;
        for k in 0..40 {
            s.send("temp", base + k * S, 22.0 + k as f64 * 0.2);
        }
        let raised = s.of("t.rise");
        assert_eq!(raised.len(), 1, "{raised:?}");
        assert_eq!(raised[0].0, Kind::Raise);
        assert!(raised[0].1 > base && raised[0].1 < base + 40 * S);
    }

    #[test]
    fn states_bits_and_texts() {
        let mut s = Site::new();
        s.send("faults", T0, 3.0); // bits 0 and 1
        assert!(s.of("t.fault").is_empty());
        s.send("faults", T0 + S, 4.0);
        s.send("faults", T0 + 2 * S, 0.0);
        assert_eq!(
            s.of("t.fault"),
            vec![
                (Kind::Raise, T0 + S, false),
                (Kind::Clear, T0 + 2 * S, false)
            ]
        );
        s.send_reading("ups", T0, Some(3.0), Some("normal"), false);
        s.send_reading("ups", T0 + S, Some(5.0), Some("on_battery"), false);
        assert_eq!(s.of("t.on_battery"), vec![(Kind::Raise, T0 + S, false)]);
    }

    #[test]
    fn two_smoke_heads_or_smoke_and_heat_confirm_a_fire() {
        let mut s = Site::new();
        s.send("temp", T0, 24.0);
        s.send("smoke1", T0 + S, 1.0);
        assert_eq!(s.of("t.smoke").len(), 1);
        assert!(s.of("t.two_heads").is_empty() && s.of("t.fire").is_empty());
        s.send("temp", T0 + 2 * S, 30.0);
        assert_eq!(s.of("t.fire"), vec![(Kind::Raise, T0 + 2 * S, false)]);
        s.send("smoke2", T0 + 3 * S, 1.0);
        assert_eq!(s.of("t.two_heads"), vec![(Kind::Raise, T0 + 3 * S, false)]);
        s.send("smoke1", T0 + 4 * S, 0.0);
        assert_eq!(
            s.of("t.two_heads"),
            vec![
                (Kind::Raise, T0 + 3 * S, false),
                (Kind::Clear, T0 + 4 * S, false)
            ]
        );
        // Smoke 2 and heat still: the confirmed fire stays.
        assert_eq!(s.of("t.fire").len(), 1);
    }

    #[test]
    fn mains_failure_inhibits_ups_on_battery_and_releases_it_if_still_on_after_a_grace() {
        let mut s = Site::new();
        s.send("volts", T0, 0.0);
        let t = s.send_reading("ups", T0 + S, Some(5.0), Some("on_battery"), false);
        assert_eq!(t.len(), 1);
        assert!(t[0].inhibited, "{t:?}");
        // Mains back, UPS still on battery: the UPS alarm is released.
        let t = s.send("volts", T0 + 2 * S, 220.0);
        let kinds: Vec<Kind> = t.iter().map(|t| t.kind).collect();
        assert_eq!(kinds, vec![Kind::Clear]);
        // Released only once its grace is over and it is still active.
        s.send("volts", T0 + 31 * S, 220.0);
        assert!(s.tick(T0 + 31 * S).is_empty());
        s.send("volts", T0 + 33 * S, 220.0);
        let t = s.tick(T0 + 33 * S);
        assert_eq!((t[0].kind, t[0].at), (Kind::Release, T0 + 32 * S));
        let t = s.send_reading("ups", T0 + 34 * S, Some(3.0), Some("normal"), false);
        assert_eq!((t[0].kind, t[0].inhibited), (Kind::Clear, false));
        // An inhibited alarm that clears soon after its cause is never told.
        s.send("volts", T0 + 40 * S, 0.0);
        s.send_reading("ups", T0 + 41 * S, Some(5.0), Some("on_battery"), false);
        s.send("volts", T0 + 42 * S, 220.0);
        let t = s.send_reading("ups", T0 + 45 * S, Some(3.0), Some("normal"), false);
        assert_eq!((t[0].kind, t[0].inhibited), (Kind::Clear, true));
        s.send("volts", T0 + 100 * S, 220.0);
        assert!(s.tick(T0 + 100 * S).is_empty());
    }

    #[test]
    fn a_silent_point_raises_on_its_agents_clock_and_clears_with_data() {
        let mut s = Site::new();
        s.send("rh", T0, 40.0);
        s.send("temp", T0 + 299 * S, 24.0);
        s.tick(T0 + 299 * S);
        assert!(s.of("t.silent").is_empty());
        s.send("temp", T0 + 301 * S, 24.0);
        s.tick(T0 + 301 * S);
        assert_eq!(s.of("t.silent"), vec![(Kind::Raise, T0 + 300 * S, false)]);
        s.send("rh", T0 + 302 * S, 40.0);
        assert_eq!(s.of("t.silent")[1], (Kind::Clear, T0 + 302 * S, false));
    }

    #[test]
    fn a_silent_agent_raises_on_the_wall_clock_and_clears_with_its_next_batch() {
        let mut s = Site::new();
        s.send("temp", T0, 24.0);
        let seen = T0 + 100 * S; // the wall clock the harness passes
        s.tick(seen + 119 * S);
        assert!(s.of("t.agent").is_empty());
        s.tick(seen + 121 * S);
        assert_eq!(s.of("t.agent"), vec![(Kind::Raise, seen + 120 * S, false)]);
        s.tick(seen + 200 * S);
        assert_eq!(s.of("t.agent").len(), 1, "raised once");
        s.send("temp", T0 + 300 * S, 24.0);
        assert_eq!(s.of("t.agent")[1].0, Kind::Clear);
    }

    #[test]
    fn an_alarm_inside_an_outage_is_recorded_late_with_its_real_times() {
        let mut s = Site::new();
        s.send("smoke1", T0, 0.0);
        // Data resumes at +100 s (live first), then the backlog arrives.
        s.send("smoke1", T0 + 100 * S, 0.0);
        for k in 1..100 {
            let v = if (30..40).contains(&k) { 1.0 } else { 0.0 };
            s.send_reading("smoke1", T0 + k * S, Some(v), None, true);
        }
        assert_eq!(
            s.of("t.smoke"),
            vec![
                (Kind::Raise, T0 + 30 * S, true),
                (Kind::Clear, T0 + 40 * S, true)
            ]
        );
    }

    #[test]
    fn a_backlog_moves_the_start_of_an_alarm_raised_when_data_resumed() {
        let mut s = Site::new();
        s.send("smoke1", T0, 0.0);
        let live = s.send("smoke1", T0 + 100 * S, 1.0);
        assert_eq!(live[0].kind, Kind::Raise);
        for k in 1..100 {
            let v = if k >= 60 { 1.0 } else { 0.0 };
            s.send_reading("smoke1", T0 + k * S, Some(v), None, true);
        }
        // The backlog ends and the late machine goes idle: nothing more.
        s.tick(T0 + 1_000 * S);
        let smoke = s.of("t.smoke");
        assert_eq!(
            smoke,
            vec![
                (Kind::Raise, T0 + 100 * S, false),
                (Kind::Correct, T0 + 60 * S, true)
            ]
        );
        let serials: Vec<u64> = s.out.iter().map(|t| t.serial).collect();
        assert_eq!(serials[0], serials[1]);
    }

    #[test]
    fn a_backlog_alarm_still_on_where_the_backlog_ends_is_closed_there() {
        let mut s = Site::new();
        s.send("smoke1", T0, 0.0);
        s.send("smoke1", T0 + 100 * S, 0.0);
        for k in 1..50 {
            let v = if k >= 45 { 1.0 } else { 0.0 };
            s.send_reading("smoke1", T0 + k * S, Some(v), None, true);
        }
        s.tick(T0 + 1_000 * S);
        assert_eq!(
            s.of("t.smoke"),
            vec![
                (Kind::Raise, T0 + 45 * S, true),
                (Kind::Clear, T0 + 49 * S, true)
            ]
        );
    }

    #[test]
    fn restored_state_neither_raises_again_nor_loses_the_clear() {
        let mut s = Site::new();
        s.send("temp", T0, 45.0);
        s.send("temp", T0 + 61 * S, 45.0);
        assert_eq!(s.of("t.hot_slow").len(), 1);
        // Pending on another rule at the moment of the "crash".
        let saved: HashMap<String, Saved> = s.engine.take_dirty().into_iter().collect();
        let next = s.engine.next_serial();
        let mut r = Site::restored(next, saved);
        r.send("temp", T0 + 62 * S, 45.0);
        assert!(
            r.of("t.hot_slow").is_empty(),
            "no second raise: {:?}",
            r.out
        );
        r.send("temp", T0 + 70 * S, 20.0);
        r.send("temp", T0 + 91 * S, 20.0);
        assert_eq!(r.of("t.hot_slow"), vec![(Kind::Clear, T0 + 90 * S, false)]);
        assert_eq!(r.of("t.hot"), vec![(Kind::Clear, T0 + 70 * S, false)]);
    }

    #[test]
    fn renumbered_alarms_clear_under_the_numbers_the_store_gave() {
        let mut s = Site::new();
        s.send("smoke1", T0, 1.0);
        let n = s.engine.next_serial() - 1;
        assert!(n >= 1);
        // Another node took 1..: the store gave 100, 102, ….
        let to: Vec<u64> = (0..n).map(|i| 100 + 2 * i).collect();
        let r = s.engine.renumber(1, to.clone());
        assert_eq!(r.apply(1), 100);
        assert_eq!(r.apply(0), 0, "outside the range: unchanged");
        assert_eq!(s.engine.next_serial(), to[to.len() - 1] + 1);
        s.send("smoke1", T0 + S, 0.0);
        s.tick(T0 + 100 * S);
        let cleared: Vec<u64> = s
            .out
            .iter()
            .filter(|t| t.kind == Kind::Clear)
            .map(|t| t.serial)
            .collect();
        assert!(
            cleared.contains(&100),
            "cleared under its new number: {cleared:?}"
        );
    }

    #[test]
    fn a_node_taking_over_a_site_raises_nothing_again_for_older_readings_it_is_sent() {
        // The first node judged smoke up to +10 s and committed.
        let mut s = Site::new();
        for k in 0..=10 {
            s.send("smoke1", T0 + k * S, 1.0);
        }
        assert_eq!(s.of("t.smoke").len(), 1);
        let saved: HashMap<String, Saved> = s.engine.take_dirty().into_iter().collect();
        let mut r = Site::restored(s.engine.next_serial(), saved);
        // The new holder gets a live batch first, then the batches the
        // first node received but never committed (older).
        r.send("smoke1", T0 + 14 * S, 1.0);
        for k in 11..=13 {
            r.send("smoke1", T0 + k * S, 1.0);
        }
        r.tick(T0 + 200 * S);
        assert!(r.of("t.smoke").is_empty(), "raised again: {:?}", r.out);
        // The smoke is gone and the alarm cleared; then come older readings
        // still showing it (sent again after the newer ones).
        r.send("smoke1", T0 + 30 * S, 0.0);
        assert_eq!(r.of("t.smoke"), vec![(Kind::Clear, T0 + 30 * S, false)]);
        for k in 15..=29 {
            r.send("smoke1", T0 + k * S, 1.0);
        }
        r.tick(T0 + 400 * S);
        assert_eq!(
            r.of("t.smoke").len(),
            1,
            "no late alarm inside the episode already recorded: {:?}",
            r.out
        );
    }

    #[test]
    fn a_relabelled_point_clears_what_its_old_rules_held_and_leaves_its_composites() {
        let mut s = Site::new();
        s.send("smoke1", T0, 1.0);
        s.send("smoke2", T0 + S, 1.0);
        assert_eq!(s.of("t.two_heads").len(), 1);
        // smoke2 is now described as another room's detector.
        s.engine
            .describe("s", "a", "dev", &meta("smoke2", "other-room", "smoke"));
        s.send("smoke1", T0 + 2 * S, 1.0);
        // Cleared when the relabel was seen, at the agent's clock then.
        assert_eq!(
            s.of("t.two_heads"),
            [(Kind::Raise, T0 + S, false), (Kind::Clear, T0 + S, false)]
        );
        let smoke: Vec<Kind> = s.of("t.smoke").iter().map(|t| t.0).collect();
        assert_eq!(
            smoke,
            [Kind::Raise, Kind::Raise, Kind::Clear],
            "the old smoke2 alarm cleared"
        );
        // Its new instance judges its readings again.
        s.send("smoke2", T0 + 3 * S, 1.0);
        assert_eq!(s.of("t.smoke").len(), 4);
    }

    #[test]
    fn a_backlog_alarm_still_true_in_live_data_is_taken_over_not_cleared() {
        let mut s = Site::new();
        s.send("temp", T0, 20.0);
        // Live data resumes at +100 s, hot; t.hot_slow (60 s delay) is pending.
        s.send("temp", T0 + 100 * S, 45.0);
        for k in 1..100 {
            s.send_reading("temp", T0 + k * S, Some(45.0), None, true);
        }
        s.tick(T0 + 1_000 * S);
        let hot: Vec<(Kind, bool)> = s.of("t.hot_slow").iter().map(|t| (t.0, t.2)).collect();
        assert_eq!(
            hot,
            [(Kind::Raise, true)],
            "one alarm, raised from the backlog, not cleared"
        );
        // The live machine owns it now and clears it when it cools.
        s.send("temp", T0 + 1_001 * S, 20.0);
        s.send("temp", T0 + 1_030 * S, 20.0);
        let hot: Vec<Kind> = s.of("t.hot_slow").iter().map(|t| t.0).collect();
        assert_eq!(hot, [Kind::Raise, Kind::Clear]);
    }

    #[test]
    fn a_reading_from_the_future_is_judged_at_the_wall_clock() {
        let mut s = Site::new();
        let now = T0 + 5 * S;
        // The wall clock says T0 + 5 s; this reading claims T0 + 1 h.
        s.send_at("smoke1", T0 + 3_600 * S, 1.0, now);
        s.send_at("smoke1", T0 + 11 * S, 0.0, T0 + 11 * S);
        let kinds: Vec<(Kind, bool)> = s.of("t.smoke").iter().map(|t| (t.0, t.2)).collect();
        assert_eq!(
            kinds,
            [(Kind::Raise, false), (Kind::Clear, false)],
            "the later reading is live, not late"
        );
    }

    /// Found by the property test below: a backlog reading merged into the
    /// live alarm must leave its clear to the live machine.
    #[test]
    fn a_backlog_merged_into_a_live_alarm_does_not_clear_it_again() {
        let mut s = Site::new();
        s.send_reading("ups", T0, Some(5.0), Some("on_battery"), false);
        s.send_reading("ups", T0 - S, Some(5.0), Some("on_battery"), true);
        s.send_reading("ups", T0 + S, Some(3.0), Some("normal"), false);
        s.tick(T0 + 115 * S);
        let kinds: Vec<Kind> = s.of("t.on_battery").iter().map(|t| t.0).collect();
        assert_eq!(kinds, [Kind::Raise, Kind::Correct, Kind::Clear]);
    }

    proptest::proptest! {
        /// Any readings, in any order and with any gaps, and any ticks: no
        /// panic, and every alarm is raised once and cleared at most once,
        /// after its raise.
        #[test]
        fn each_alarm_is_raised_once_and_cleared_at_most_once(
            steps in proptest::collection::vec((0usize..7, -200i64..400, -50.0f64..300.0, proptest::prelude::any::<bool>()), 1..300),
        ) {
            let mut s = Site::new();
            let points = ["temp", "smoke1", "smoke2", "volts", "ups", "faults", "rh"];
            for (p, dt, v, tick) in steps {
                let ts = T0 + dt * S;
                if tick {
                    s.tick(ts + 100 * S);
                } else if points[p] == "ups" {
                    let text = if v > 100.0 { "on_battery" } else { "normal" };
                    s.send_reading("ups", ts, Some(v.round()), Some(text), false);
                } else {
                    let v = if points[p].starts_with("smoke") { (v > 100.0) as u8 as f64 } else { v };
                    s.send_reading(points[p], ts, Some(v), None, dt < 0);
                }
            }
            let mut raised = std::collections::HashSet::new();
            let mut cleared = std::collections::HashSet::new();
            for t in &s.out {
                match t.kind {
                    Kind::Raise => proptest::prop_assert!(raised.insert(t.serial), "raised twice: {t:?}"),
                    Kind::Clear => {
                        proptest::prop_assert!(raised.contains(&t.serial), "cleared before raised: {t:?}");
                        proptest::prop_assert!(cleared.insert(t.serial), "cleared twice: {t:?}");
                    }
                    Kind::Correct | Kind::Release => {
                        proptest::prop_assert!(raised.contains(&t.serial), "{t:?}");
                        proptest::prop_assert!(!cleared.contains(&t.serial) || t.kind == Kind::Correct, "{t:?}");
                    }
                }
            }
        }
    }
}
