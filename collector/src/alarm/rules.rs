//! Rule definitions: the rule packs (`configs/rules/*.toml`, built into the
//! binary and replaceable by a directory), per-site and per-room overrides
//! from the collector's configuration, and their validation with errors by
//! path. Compiled rules are what the engine evaluates.

use roomguard_protocol::conf::{self, option_duration, Problems};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

/// The packs shipped with RoomGuard, built in so a collector needs no files.
pub const BUILTIN_PACKS: [(&str, &str); 4] = [
    (
        "fire.toml",
        include_str!("../../../configs/rules/fire.toml"),
    ),
    (
        "explosion.toml",
        include_str!("../../../configs/rules/explosion.toml"),
    ),
    (
        "electrical.toml",
        include_str!("../../../configs/rules/electrical.toml"),
    ),
    (
        "environment.toml",
        include_str!("../../../configs/rules/environment.toml"),
    ),
];

#[derive(Debug, Error)]
pub enum RulesError {
    #[error("{0}")]
    Config(#[from] conf::ConfigError),
    #[error("cannot read rule directory {dir}: {message}")]
    Dir { dir: PathBuf, message: String },
}

/// One rule pack file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PackFile {
    pub pack: String,
    #[serde(default)]
    pub description: String,
    #[serde(default, rename = "rule")]
    pub rules: Vec<RuleDef>,
}

/// Alarm categories, as the hazard register and reports group them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    Fire,
    Explosion,
    Electrical,
    Environment,
    System,
}

impl Category {
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Fire => "fire",
            Category::Explosion => "explosion",
            Category::Electrical => "electrical",
            Category::Environment => "environment",
            Category::System => "system",
        }
    }
}

/// A rule as written in a pack.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleDef {
    /// Stable id, `pack.name`; alarms, overrides and silences refer to it.
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub name_zh: String,
    pub category: Category,
    /// 1 critical (一级), 2 major (二级), 3 minor (三级), 4 hint (四级).
    pub level: u8,
    /// Where the number comes from (../shared/DOMAIN.md); shown with the alarm.
    pub source: String,
    /// What the person told should do.
    #[serde(default)]
    pub advice: String,
    #[serde(default)]
    pub advice_zh: String,
    /// Which points the rule watches.
    #[serde(default)]
    pub select: Select,
    pub when: When,
    /// Raise delay: the condition must hold this long. Default by level
    /// (60/120/180/240 s, China Tower B-interface), zero for life-safety
    /// rules and for rules with hysteresis.
    #[serde(default, with = "option_duration")]
    pub delay: Option<Duration>,
    /// Clear delay; default 20 s.
    #[serde(default, with = "option_duration")]
    pub clear_delay: Option<Duration>,
    /// Fire, gas over the alarm stage: never delayed by default.
    #[serde(default)]
    pub life_safety: bool,
    /// Rules whose active alarm at the same site explains this one (mains
    /// failure explains UPS on battery): recorded, not notified.
    #[serde(default)]
    pub inhibited_by: Vec<String>,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// A building block of composite rules and inhibition (a phase without
    /// voltage): evaluated, never recorded or notified on its own.
    #[serde(default)]
    pub feeds_only: bool,
}

fn yes() -> bool {
    true
}

/// Point selection: every given field must match. Globs take `*`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Select {
    #[serde(default)]
    pub quantity: Vec<String>,
    #[serde(default)]
    pub room: Option<String>,
    #[serde(default)]
    pub device: Option<String>,
    #[serde(default)]
    pub point: Option<String>,
    /// Points matching this glob are left out (a UPS's output lines are not
    /// its supply).
    #[serde(default)]
    pub except_point: Option<String>,
}

/// The condition, exactly one kind per rule.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct When {
    /// Raise above this value…
    pub above: Option<f64>,
    /// …or below this one;
    pub below: Option<f64>,
    /// clear only once back by this much (回差).
    pub hysteresis: Option<f64>,
    /// Rate of rise: at least this much per `per`, measured over `window`.
    pub rise: Option<f64>,
    #[serde(default, with = "option_duration")]
    pub per: Option<Duration>,
    #[serde(default, with = "option_duration")]
    pub window: Option<Duration>,
    /// The value equals this (states: 1 = alarm contact closed).
    pub equals: Option<f64>,
    /// The reading's state name equals this (`on_battery`).
    pub text: Option<String>,
    /// This bit of the value is set (fault words).
    pub bit: Option<u32>,
    /// The point sent no good reading for this long.
    #[serde(default, with = "option_duration")]
    pub silent: Option<Duration>,
    /// The whole agent sent nothing for this long.
    #[serde(default, with = "option_duration")]
    pub agent_silent: Option<Duration>,
    /// Composite over other rules' conditions in one room: all of them…
    pub all: Option<Vec<String>>,
    /// …any of them…
    pub any: Option<Vec<String>>,
    /// …or at least this many points' conditions among the rules in `of`.
    pub at_least: Option<usize>,
    pub of: Option<Vec<String>>,
    /// Per device: this point rule's condition is true on every point of
    /// one device it watches (all phases of a meter without voltage).
    pub every: Option<String>,
}

/// A compiled condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Cond {
    Above,
    Below,
    /// Rise per `per_ms`, over `window_ms`.
    Rise {
        per_ms: i64,
        window_ms: i64,
    },
    Equals,
    Text(String),
    Bit(u32),
    Silent,
    AgentSilent,
    Composite {
        of: Vec<usize>,
        need: Need,
    },
}

impl Cond {
    /// Whether `threshold` is a number an override may change.
    pub fn has_threshold(&self) -> bool {
        matches!(
            self,
            Cond::Above
                | Cond::Below
                | Cond::Rise { .. }
                | Cond::Equals
                | Cond::Composite {
                    need: Need::AtLeast(_),
                    ..
                }
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    All,
    Any,
    AtLeast(usize),
    /// Device-scoped: every watched point of one device (one member rule).
    Every,
}

/// Numbers of a rule for one instance, after overrides.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    pub enabled: bool,
    pub level: u8,
    /// Threshold, rise per period, state value, `at_least` count, or the
    /// silence in ms, by kind.
    pub threshold: f64,
    pub hysteresis: f64,
    pub delay_ms: i64,
    pub clear_delay_ms: i64,
}

/// A rule ready to evaluate.
#[derive(Debug, Clone)]
pub struct Rule {
    pub id: String,
    pub pack: String,
    pub name: String,
    pub name_zh: String,
    pub category: Category,
    pub source: String,
    pub advice: String,
    pub advice_zh: String,
    pub select: Select,
    pub cond: Cond,
    pub base: Params,
    /// Indexes of rules that inhibit this one.
    pub inhibited_by: Vec<usize>,
    pub feeds_only: bool,
    /// A fire or explosion alarm (the pack's `life_safety`): never grouped
    /// away behind an equipment alarm of its incident.
    pub life_safety: bool,
}

/// What a rule selects a point by.
#[derive(Debug, Clone, Copy)]
pub struct PointLabels<'a> {
    pub quantity: &'a str,
    pub room: &'a str,
    pub device: &'a str,
    pub point: &'a str,
}

/// A threshold a point is held to (see [`RuleSet::limits`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Limit {
    pub rule: String,
    pub level: u8,
    /// Raised above `value` (else below it).
    pub above: bool,
    pub value: f64,
    pub hysteresis: f64,
}

/// A change to some rules' numbers, for a site, a room of a site, or everywhere.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Override {
    /// Rule id, or a glob such as `environment.*`.
    pub rule: String,
    #[serde(default)]
    pub site: Option<String>,
    #[serde(default)]
    pub room: Option<String>,
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub level: Option<u8>,
    /// Replaces the rule's number (above/below/rise/equals/at_least).
    #[serde(default)]
    pub threshold: Option<f64>,
    #[serde(default)]
    pub hysteresis: Option<f64>,
    /// Replaces `silent` / `agent_silent`.
    #[serde(default, with = "option_duration")]
    pub silent: Option<Duration>,
    #[serde(default, with = "option_duration")]
    pub delay: Option<Duration>,
    #[serde(default, with = "option_duration")]
    pub clear_delay: Option<Duration>,
}

/// Every loaded rule and override.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
    by_id: HashMap<String, usize>,
    overrides: Vec<Override>,
}

/// Default raise delay of a level (China Tower B-interface).
pub fn level_delay(level: u8) -> Duration {
    Duration::from_secs(match level {
        1 => 60,
        2 => 120,
        3 => 180,
        _ => 240,
    })
}

pub const DEFAULT_CLEAR_DELAY: Duration = Duration::from_secs(20);

/// `*` matches any run of characters; everything else literally.
pub fn glob(pattern: &str, s: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = s.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for p in middle {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

fn ms(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

impl RuleSet {
    /// The built-in packs.
    pub fn builtin() -> Result<RuleSet, RulesError> {
        let packs = BUILTIN_PACKS
            .iter()
            .map(|(name, text)| Ok((PathBuf::from(name), (*text).to_owned())))
            .collect::<Result<Vec<_>, RulesError>>()?;
        Self::from_texts(&packs, Vec::new())
    }

    /// Every `*.toml` in `dir`, in name order.
    pub fn from_dir(dir: &Path, overrides: Vec<Override>) -> Result<RuleSet, RulesError> {
        let err = |e: std::io::Error| RulesError::Dir {
            dir: dir.to_owned(),
            message: e.to_string(),
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(err)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        let mut texts = Vec::new();
        for f in files {
            let text = std::fs::read_to_string(&f).map_err(err)?;
            texts.push((f, text));
        }
        Self::from_texts(&texts, overrides)
    }

    /// The built-in packs with `overrides`.
    pub fn builtin_with(overrides: Vec<Override>) -> Result<RuleSet, RulesError> {
        let mut set = Self::builtin()?;
        let mut p = Problems::default();
        set.check_overrides(&overrides, "alarms.overrides", &mut p);
        p.into_result(Path::new("collector configuration"))?;
        set.overrides = overrides;
        Ok(set)
    }

    /// Parses and checks packs given as (name, text); every problem is
    /// reported with its file and path.
    pub fn from_texts(
        packs: &[(PathBuf, String)],
        overrides: Vec<Override>,
    ) -> Result<RuleSet, RulesError> {
        let mut defs: Vec<(String, usize, RuleDef)> = Vec::new();
        for (name, text) in packs {
            let file: PackFile = conf::parse(text, name)?;
            for (i, d) in file.rules.into_iter().enumerate() {
                defs.push((format!("{}: rule[{i}]", name.display()), i, d));
                let _ = &file.pack;
            }
        }
        let mut p = Problems::default();
        let mut by_id = HashMap::new();
        for (idx, (path, _, d)) in defs.iter().enumerate() {
            if by_id.insert(d.id.clone(), idx).is_some() {
                p.push(format!("{path}.id"), format!("{:?} is defined twice", d.id));
            }
        }
        let mut rules = Vec::with_capacity(defs.len());
        for (path, _, d) in &defs {
            let path = format!("{path} ({})", d.id);
            match compile(d, &by_id, &path, &mut p) {
                Some(r) => rules.push(r),
                None => rules.push(placeholder(d)),
            }
        }
        // `every` groups one device's points, so it can only count a rule
        // that judges points, not another composite.
        for r in &rules {
            if let Cond::Composite {
                of,
                need: Need::Every,
            } = &r.cond
            {
                for &m in of {
                    if matches!(rules[m].cond, Cond::Composite { .. } | Cond::AgentSilent) {
                        p.push(
                            format!("rules: {}", r.id),
                            format!(
                                "when.every names {:?}, which does not judge points",
                                rules[m].id
                            ),
                        );
                    }
                }
            }
        }
        // Composites of composites must not loop (A in B, B in A would
        // latch true for ever).
        for (i, r) in rules.iter().enumerate() {
            if reaches(&rules, i, i, &mut vec![false; rules.len()]) {
                p.push(
                    format!("rules: {}", r.id),
                    "composite rules contain each other in a loop",
                );
            }
        }
        let mut set = RuleSet {
            rules,
            by_id,
            overrides: Vec::new(),
        };
        set.check_overrides(&overrides, "alarms.overrides", &mut p);
        let first = packs
            .first()
            .map(|(n, _)| n.clone())
            .unwrap_or_else(|| PathBuf::from("rules"));
        p.into_result(&first)?;
        set.overrides = overrides;
        Ok(set)
    }

    fn check_overrides(&self, overrides: &[Override], at: &str, p: &mut Problems) {
        for (i, o) in overrides.iter().enumerate() {
            let path = format!("{at}[{i}]");
            if !self.rules.iter().any(|r| glob(&o.rule, &r.id)) {
                p.push(
                    format!("{path}.rule"),
                    format!("{:?} names no loaded rule", o.rule),
                );
            }
            if o.room.is_some() && o.site.is_none() {
                p.push(format!("{path}.room"), "a room override needs its site too");
            }
            if let Some(l) = o.level {
                if !(1..=4).contains(&l) {
                    p.push(format!("{path}.level"), "must be 1 to 4");
                }
            }
            if o.threshold.is_some_and(|t| !t.is_finite()) {
                p.push(format!("{path}.threshold"), "must be a finite number");
            }
            // One number for rules of different kinds (a smoke contact and a
            // temperature) would be wrong for all but one of them.
            if o.threshold.is_some() || o.hysteresis.is_some() {
                let matched: Vec<&Rule> =
                    self.rules.iter().filter(|r| glob(&o.rule, &r.id)).collect();
                if let Some(r) = matched.iter().find(|r| !r.cond.has_threshold()) {
                    p.push(
                        format!("{path}.rule"),
                        format!("{:?} matches {}, which has no threshold; name the rules a threshold is for", o.rule, r.id),
                    );
                } else if matched.windows(2).any(|w| {
                    std::mem::discriminant(&w[0].cond) != std::mem::discriminant(&w[1].cond)
                        || w[0].select.quantity != w[1].select.quantity
                }) {
                    p.push(
                        format!("{path}.rule"),
                        format!("{:?} matches rules of different kinds or quantities; one threshold cannot suit them all", o.rule),
                    );
                }
            }
            if o.hysteresis.is_some_and(|h| !(h.is_finite() && h >= 0.0)) {
                p.push(format!("{path}.hysteresis"), "must be zero or more");
            }
        }
    }

    pub fn index(&self, id: &str) -> Option<usize> {
        self.by_id.get(id).copied()
    }

    /// The numbers of rule `idx` at `site`/`room`: the pack's, then global,
    /// site and room overrides in that order (the most specific wins).
    pub fn params(&self, idx: usize, site: &str, room: &str) -> Params {
        let rule = &self.rules[idx];
        let mut p = rule.base;
        let rank = |o: &Override| match (&o.site, &o.room) {
            (None, _) => 0,
            (Some(_), None) => 1,
            (Some(_), Some(_)) => 2,
        };
        for wanted in 0..3 {
            for o in &self.overrides {
                if rank(o) != wanted
                    || !glob(&o.rule, &rule.id)
                    || o.site.as_deref().is_some_and(|s| !glob(s, site))
                    || o.room.as_deref().is_some_and(|r| !glob(r, room))
                {
                    continue;
                }
                if let Some(v) = o.enabled {
                    p.enabled = v;
                }
                if let Some(v) = o.level {
                    p.level = v;
                }
                if let Some(v) = o.threshold {
                    if rule.cond.has_threshold() {
                        p.threshold = v;
                    }
                }
                if let Some(v) = o.silent {
                    if matches!(rule.cond, Cond::Silent | Cond::AgentSilent) {
                        p.threshold = ms(v) as f64;
                    }
                }
                if let Some(v) = o.hysteresis {
                    p.hysteresis = v;
                }
                if let Some(v) = o.delay {
                    p.delay_ms = ms(v);
                }
                if let Some(v) = o.clear_delay {
                    p.clear_delay_ms = ms(v);
                }
            }
        }
        p
    }

    /// The alarm limits on a point with these labels at `site`: every enabled
    /// threshold rule (above or below) that watches it, with its numbers
    /// after overrides, most severe first. For charts and patrol records.
    pub fn limits(&self, site: &str, labels: &PointLabels) -> Vec<Limit> {
        let mut out: Vec<Limit> = (0..self.rules.len())
            .filter(|&i| {
                let r = &self.rules[i];
                !r.feeds_only
                    && matches!(r.cond, Cond::Above | Cond::Below)
                    && self.selects(i, labels.quantity, labels.room, labels.device, labels.point)
            })
            .filter_map(|i| {
                let p = self.params(i, site, labels.room);
                let r = &self.rules[i];
                p.enabled.then(|| Limit {
                    rule: r.id.clone(),
                    level: p.level,
                    above: r.cond == Cond::Above,
                    value: p.threshold,
                    hysteresis: p.hysteresis,
                })
            })
            .collect();
        out.sort_by(|a, b| a.level.cmp(&b.level).then(a.rule.cmp(&b.rule)));
        out
    }

    /// Whether rule `idx` watches a point with these labels.
    pub fn selects(
        &self,
        idx: usize,
        quantity: &str,
        room: &str,
        device: &str,
        point: &str,
    ) -> bool {
        let s = &self.rules[idx].select;
        (s.quantity.is_empty() || s.quantity.iter().any(|q| q == quantity))
            && s.room.as_deref().is_none_or(|g| glob(g, room))
            && s.device.as_deref().is_none_or(|g| glob(g, device))
            && s.point.as_deref().is_none_or(|g| glob(g, point))
            && s.except_point.as_deref().is_none_or(|g| !glob(g, point))
    }
}

/// Whether composite `from` contains `target`, directly or through others.
fn reaches(rules: &[Rule], from: usize, target: usize, seen: &mut Vec<bool>) -> bool {
    let Cond::Composite { of, .. } = &rules[from].cond else {
        return false;
    };
    for &m in of {
        if m == target {
            return true;
        }
        if !seen[m] {
            seen[m] = true;
            if reaches(rules, m, target, seen) {
                return true;
            }
        }
    }
    false
}

/// Stands in for a rule that failed to compile, so indexes stay aligned
/// while every problem is collected; never used (loading fails).
fn placeholder(d: &RuleDef) -> Rule {
    Rule {
        id: d.id.clone(),
        pack: String::new(),
        name: d.name.clone(),
        name_zh: String::new(),
        category: d.category,
        source: String::new(),
        advice: String::new(),
        advice_zh: String::new(),
        select: Select::default(),
        cond: Cond::Equals,
        base: Params {
            enabled: false,
            level: 4,
            threshold: 0.0,
            hysteresis: 0.0,
            delay_ms: 0,
            clear_delay_ms: 0,
        },
        inhibited_by: Vec::new(),
        feeds_only: false,
        life_safety: false,
    }
}

fn compile(
    d: &RuleDef,
    by_id: &HashMap<String, usize>,
    path: &str,
    p: &mut Problems,
) -> Option<Rule> {
    let before = p.list().len();
    if d.id.is_empty() || d.id.len() > 64 || d.id.contains(['|', ' ']) {
        p.push(
            format!("{path}.id"),
            "must be 1–64 characters without spaces or '|'",
        );
    }
    if !(1..=4).contains(&d.level) {
        p.push(format!("{path}.level"), "must be 1 (critical) to 4 (hint)");
    }
    if d.source.trim().is_empty() {
        p.push(
            format!("{path}.source"),
            "every rule cites where its number comes from",
        );
    }
    let w = &d.when;
    let kinds = [
        w.above.is_some(),
        w.below.is_some(),
        w.rise.is_some(),
        w.equals.is_some(),
        w.text.is_some(),
        w.bit.is_some(),
        w.silent.is_some(),
        w.agent_silent.is_some(),
        w.all.is_some(),
        w.any.is_some(),
        w.at_least.is_some(),
        w.every.is_some(),
    ]
    .iter()
    .filter(|k| **k)
    .count();
    if kinds != 1 {
        p.push(
            format!("{path}.when"),
            "needs exactly one of above, below, rise, equals, text, bit, silent, agent_silent, all, any, at_least, every",
        );
        return None;
    }
    let finite = |v: f64, key: &str, p: &mut Problems| {
        if !v.is_finite() {
            p.push(format!("{path}.when.{key}"), "must be a finite number");
        }
        v
    };
    let hysteresis = w.hysteresis.unwrap_or(0.0);
    if !(hysteresis.is_finite() && hysteresis >= 0.0) {
        p.push(format!("{path}.when.hysteresis"), "must be zero or more");
    }
    let refs = |ids: &[String], key: &str, p: &mut Problems| -> Vec<usize> {
        if ids.is_empty() {
            p.push(format!("{path}.when.{key}"), "must name at least one rule");
        }
        ids.iter()
            .filter_map(|id| match by_id.get(id) {
                Some(i) => Some(*i),
                None => {
                    p.push(
                        format!("{path}.when.{key}"),
                        format!("{id:?} is not a rule"),
                    );
                    None
                }
            })
            .collect()
    };
    let (cond, threshold) = if let Some(v) = w.above {
        (Cond::Above, finite(v, "above", p))
    } else if let Some(v) = w.below {
        (Cond::Below, finite(v, "below", p))
    } else if let Some(v) = w.rise {
        let per = w.per.unwrap_or(Duration::from_secs(60));
        let window = w.window.unwrap_or(per);
        if per.is_zero() || window.is_zero() || window > Duration::from_secs(86_400) {
            p.push(
                format!("{path}.when.window"),
                "per and window must be between 0 and 1d",
            );
        }
        (
            Cond::Rise {
                per_ms: ms(per).max(1),
                window_ms: ms(window).max(1),
            },
            finite(v, "rise", p),
        )
    } else if let Some(v) = w.equals {
        (Cond::Equals, finite(v, "equals", p))
    } else if let Some(t) = &w.text {
        (Cond::Text(t.clone()), 0.0)
    } else if let Some(b) = w.bit {
        if b > 63 {
            p.push(format!("{path}.when.bit"), "must be 0 to 63");
        }
        (Cond::Bit(b.min(63)), 0.0)
    } else if let Some(s) = w.silent {
        (Cond::Silent, ms(s) as f64)
    } else if let Some(s) = w.agent_silent {
        (Cond::AgentSilent, ms(s) as f64)
    } else if let Some(ids) = &w.all {
        (
            Cond::Composite {
                of: refs(ids, "all", p),
                need: Need::All,
            },
            0.0,
        )
    } else if let Some(ids) = &w.any {
        (
            Cond::Composite {
                of: refs(ids, "any", p),
                need: Need::Any,
            },
            0.0,
        )
    } else if let Some(id) = &w.every {
        (
            Cond::Composite {
                of: refs(std::slice::from_ref(id), "every", p),
                need: Need::Every,
            },
            0.0,
        )
    } else {
        let k = w.at_least.unwrap_or(1);
        let ids = w.of.clone().unwrap_or_default();
        if k == 0 {
            p.push(format!("{path}.when.at_least"), "must be at least 1");
        }
        (
            Cond::Composite {
                of: refs(&ids, "of", p),
                need: Need::AtLeast(k),
            },
            k as f64,
        )
    };
    if let Cond::Composite { of, .. } = &cond {
        if of.contains(&by_id[&d.id]) {
            p.push(
                format!("{path}.when"),
                "a composite rule cannot contain itself",
            );
        }
    }
    // Silence rules carry their own duration; hysteresis and life-safety
    // rules take no delay (B-interface; DOMAIN.md).
    let default_delay =
        if d.life_safety || hysteresis > 0.0 || matches!(cond, Cond::Silent | Cond::AgentSilent) {
            Duration::ZERO
        } else {
            level_delay(d.level)
        };
    let inhibited_by = d
        .inhibited_by
        .iter()
        .filter_map(|id| match by_id.get(id) {
            Some(i) => Some(*i),
            None => {
                p.push(
                    format!("{path}.inhibited_by"),
                    format!("{id:?} is not a rule"),
                );
                None
            }
        })
        .collect();
    if p.list().len() > before {
        return None;
    }
    Some(Rule {
        id: d.id.clone(),
        pack: d.id.split('.').next().unwrap_or("").to_owned(),
        name: d.name.clone(),
        name_zh: if d.name_zh.is_empty() {
            d.name.clone()
        } else {
            d.name_zh.clone()
        },
        category: d.category,
        life_safety: d.life_safety,
        source: d.source.clone(),
        advice: d.advice.clone(),
        advice_zh: d.advice_zh.clone(),
        select: d.select.clone(),
        cond,
        base: Params {
            enabled: d.enabled,
            level: d.level,
            threshold,
            hysteresis,
            delay_ms: ms(d.delay.unwrap_or(default_delay)),
            clear_delay_ms: ms(d.clear_delay.unwrap_or(DEFAULT_CLEAR_DELAY)),
        },
        inhibited_by,
        feeds_only: d.feeds_only,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(text: &str) -> Result<RuleSet, RulesError> {
        RuleSet::from_texts(&[(PathBuf::from("t.toml"), text.to_owned())], Vec::new())
    }

    #[test]
    fn globs_match_prefixes_suffixes_and_middles() {
        assert!(glob("*", "anything"));
        assert!(glob("mr-*", "mr-th-1"));
        assert!(glob("*inlet*", "mr-th-inlet-2"));
        assert!(glob("a*c*e", "abcde"));
        assert!(!glob("a*c*e", "abcdf"));
        assert!(!glob("mr-*", "pd-1"));
        assert!(glob("exact", "exact") && !glob("exact", "exactly"));
    }

    #[test]
    fn the_builtin_packs_load_and_every_rule_cites_a_source() {
        let set = RuleSet::builtin().unwrap();
        assert!(set.rules.len() >= 30, "{} rules", set.rules.len());
        for r in &set.rules {
            assert!(!r.source.is_empty(), "{}", r.id);
            // Shown to users: the standard, or site practice to confirm;
            // never our own working notes.
            for internal in [".md", "(read)", "unverified"] {
                assert!(!r.source.contains(internal), "{}: {}", r.id, r.source);
            }
            assert!(!r.advice.is_empty(), "{} has no advice", r.id);
        }
    }

    #[test]
    fn delays_default_by_level_and_to_zero_for_life_safety_and_hysteresis() {
        let s = set(r#"
pack = "t"
[[rule]]
id = "t.a"
name = "a"
category = "environment"
level = 2
source = "x"
when = { above = 1.0 }
[[rule]]
id = "t.b"
name = "b"
category = "fire"
level = 1
life_safety = true
source = "x"
when = { equals = 1.0 }
[[rule]]
id = "t.c"
name = "c"
category = "environment"
level = 3
source = "x"
when = { below = 18.0, hysteresis = 1.0 }
"#)
        .unwrap();
        assert_eq!(s.rules[0].base.delay_ms, 120_000);
        assert_eq!(s.rules[0].base.clear_delay_ms, 20_000);
        assert_eq!(s.rules[1].base.delay_ms, 0);
        assert_eq!(s.rules[2].base.delay_ms, 0);
    }

    #[test]
    fn problems_name_the_file_rule_and_key() {
        let err = set(r#"
pack = "t"
[[rule]]
id = "t.a"
name = "a"
category = "fire"
level = 7
source = ""
when = { above = 1.0, below = 2.0 }
[[rule]]
id = "t.b"
name = "b"
category = "fire"
level = 1
source = "x"
when = { all = ["t.nope"] }
"#)
        .unwrap_err()
        .to_string();
        assert!(err.contains("rule[0] (t.a).level"), "{err}");
        assert!(err.contains("rule[0] (t.a).source"), "{err}");
        assert!(
            err.contains("rule[0] (t.a).when: needs exactly one"),
            "{err}"
        );
        assert!(
            err.contains("rule[1] (t.b).when.all: \"t.nope\" is not a rule"),
            "{err}"
        );
    }

    #[test]
    fn a_threshold_override_for_rules_of_different_kinds_is_refused() {
        let err = RuleSet::builtin_with(vec![Override {
            rule: "environment.*".into(),
            threshold: Some(28.0),
            ..Default::default()
        }])
        .unwrap_err()
        .to_string();
        assert!(err.contains("no threshold"), "{err}");
        let ok = RuleSet::builtin_with(vec![Override {
            rule: "environment.inlet_temp_high".into(),
            threshold: Some(28.0),
            ..Default::default()
        }]);
        assert!(ok.is_ok());
    }

    #[test]
    fn composites_that_contain_each_other_are_refused() {
        let err = set(r#"
pack = "t"
[[rule]]
id = "t.a"
name = "a"
category = "fire"
level = 1
source = "x"
when = { any = ["t.b"] }
[[rule]]
id = "t.b"
name = "b"
category = "fire"
level = 1
source = "x"
when = { any = ["t.a"] }
"#)
        .unwrap_err()
        .to_string();
        assert!(err.contains("loop"), "{err}");
    }

    #[test]
    fn a_points_limits_are_its_threshold_rules_after_overrides() {
        let s = RuleSet::builtin_with(vec![Override {
            rule: "environment.inlet_temp_high".into(),
            site: Some("s1".into()),
            threshold: Some(28.0),
            ..Default::default()
        }])
        .unwrap();
        let inlet = PointLabels {
            quantity: "temperature",
            room: "machine-room",
            device: "mr-inlet-1",
            point: "mr-inlet-1.temperature",
        };
        let limits = s.limits("s1", &inlet);
        let high = limits
            .iter()
            .find(|l| l.rule == "environment.inlet_temp_high")
            .expect("inlet high limit");
        assert!(high.above);
        assert_eq!(high.value, 28.0);
        let low = limits
            .iter()
            .find(|l| l.rule == "environment.inlet_temp_low")
            .expect("inlet low limit");
        assert!(!low.above);
        assert_eq!(low.value, 18.0);
        assert!(limits.windows(2).all(|w| w[0].level <= w[1].level));
        // Another site keeps the pack's number; a hot-aisle sensor is no inlet.
        assert!(s.limits("s2", &inlet).iter().any(|l| l.value == 27.0));
        let exhaust = PointLabels {
            device: "mr-exhaust-1",
            ..inlet
        };
        assert!(s
            .limits("s1", &exhaust)
            .iter()
            .all(|l| !l.rule.starts_with("environment.inlet")));
    }

    #[test]
    fn the_most_specific_override_wins() {
        let mut s = set(r#"
pack = "t"
[[rule]]
id = "t.hot"
name = "hot"
category = "environment"
level = 3
source = "x"
when = { above = 27.0 }
"#)
        .unwrap();
        s.overrides = vec![
            Override {
                rule: "t.*".into(),
                site: Some("s1".into()),
                room: Some("r1".into()),
                threshold: Some(30.0),
                ..Default::default()
            },
            Override {
                rule: "t.hot".into(),
                site: Some("s1".into()),
                threshold: Some(28.0),
                delay: Some(Duration::ZERO),
                ..Default::default()
            },
            Override {
                rule: "t.hot".into(),
                level: Some(2),
                ..Default::default()
            },
        ];
        let p = s.params(0, "s1", "r1");
        assert_eq!((p.threshold, p.delay_ms, p.level), (30.0, 0, 2));
        let p = s.params(0, "s1", "r2");
        assert_eq!(p.threshold, 28.0);
        let p = s.params(0, "s2", "r1");
        assert_eq!((p.threshold, p.delay_ms), (27.0, 180_000));
    }
}
