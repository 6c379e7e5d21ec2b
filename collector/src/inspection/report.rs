//! Monthly and yearly safety reports, per site or for all sites: alarms by
//! level and category with time to acknowledge and to clear, the longest
//! open alarms, data completeness per room, minutes beyond each limit,
//! hazards opened, closed and overdue, patrols done against planned, drills.
//!
//! Everything is read on one connection. Work is bounded by
//! the rollup tiers: completeness from 1-hour buckets, minutes beyond a
//! limit from the 1-minute buckets of only those hours whose extremes crossed it.

use super::figures::{self, Schedule};
use super::InspectionError;
use crate::alarm::rules::{PointLabels, RuleSet};
use crate::store::inspection::{rollups, Tier};
use crate::store::reports::{self as store, PointRow};
use crate::store::rollup::HOUR_MS;
use crate::store::sql::Db;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// A calendar month or year in the report's time zone.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Period {
    /// `2026-11` or `2026`.
    pub label: String,
    pub from: i64,
    pub to: i64,
}

/// The month `2026-11` in `tz`.
pub fn month(label: &str, tz: &jiff::tz::TimeZone) -> Result<Period, String> {
    let bad = || format!("month: {label:?} is not a month like 2026-11");
    let (y, m) = label.split_once('-').ok_or_else(bad)?;
    let (y, m): (i16, i8) = (y.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    let first = jiff::civil::Date::new(y, m, 1).map_err(|_| bad())?;
    let next = first
        .checked_add(jiff::Span::new().months(1))
        .map_err(|_| bad())?;
    let ms = |d: jiff::civil::Date| -> Result<i64, String> {
        Ok(d.to_zoned_datetime(tz.clone())
            .map_err(|e| e.to_string())?
            .timestamp()
            .as_millisecond())
    };
    Ok(Period {
        label: format!("{y:04}-{m:02}"),
        from: ms(first)?,
        to: ms(next)?,
    })
}

/// The twelve months of `year` in `tz`.
pub fn months_of(year: &str, tz: &jiff::tz::TimeZone) -> Result<Vec<Period>, String> {
    let y: i16 = year
        .parse()
        .ok()
        .filter(|y| (1970..=9998).contains(y))
        .ok_or_else(|| format!("year: {year:?} is not a year like 2026"))?;
    (1..=12)
        .map(|m| month(&format!("{y}-{m:02}"), tz))
        .collect()
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AlarmRow {
    pub level: u8,
    pub category: String,
    pub raised: i64,
    pub inhibited: i64,
    pub acknowledged: i64,
    /// Seconds from raise to acknowledgement: mean and median.
    pub ack_mean_s: Option<f64>,
    pub ack_median_s: Option<f64>,
    pub cleared: i64,
    pub clear_mean_s: Option<f64>,
    pub clear_median_s: Option<f64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LongOpen {
    pub serial: i64,
    pub rule: String,
    pub name: String,
    /// From the loaded rules; the stored (English) name when the rule is gone.
    pub name_zh: String,
    pub level: u8,
    pub site: String,
    pub room: String,
    pub raised_at: i64,
    pub cleared_at: Option<i64>,
    /// Until cleared, or until the period's end (or now) when still open.
    pub open_s: i64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RoomCompleteness {
    pub site: String,
    pub room: String,
    pub points: usize,
    /// Mean over the room's points of the share of expected readings that arrived.
    pub completeness: f64,
    /// The least complete point.
    pub worst_point: String,
    pub worst: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Exceedance {
    pub site: String,
    pub room: String,
    pub point: String,
    pub rule: String,
    pub level: u8,
    pub kind: &'static str,
    pub limit: f64,
    /// Minutes in which some reading was beyond the limit.
    pub minutes: i64,
}

#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct Hazards {
    pub opened: i64,
    pub opened_major: i64,
    pub closed: i64,
    /// Not closed by their deadline (which fell before the period's end),
    /// and not closed before the period began.
    pub overdue: i64,
    pub open_at_end: i64,
    /// The zeroing figure: the target is 0.
    pub open_major_at_end: i64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PatrolRow {
    pub site: String,
    pub room: String,
    pub planned: i64,
    pub done: i64,
    pub manual: i64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub site: Option<String>,
    pub period: Period,
    pub time_zone: String,
    /// The period's end, or the time the report was made if earlier.
    pub until: i64,
    pub alarms: Vec<AlarmRow>,
    pub longest_open: Vec<LongOpen>,
    pub completeness: Vec<RoomCompleteness>,
    pub exceedance: Vec<Exceedance>,
    pub hazards: Hazards,
    pub patrols: Vec<PatrolRow>,
    pub drills: Vec<Value>,
}

/// A year, month by month.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct YearReport {
    pub site: Option<String>,
    pub year: String,
    pub time_zone: String,
    pub months: Vec<Report>,
}

pub struct Inputs<'a> {
    pub rules: Option<&'a RuleSet>,
    pub schedule: &'a Schedule,
    /// The report's time zone: months and times in it.
    pub tz: &'a jiff::tz::TimeZone,
    /// The site's (`http.time_zone`): patrol slots follow its wall clock
    /// whatever zone the report is read in.
    pub schedule_tz: &'a jiff::tz::TimeZone,
    pub now: i64,
}

pub fn build(
    c: Db<'_>,
    site: Option<&str>,
    period: &Period,
    inp: &Inputs,
) -> Result<Report, InspectionError> {
    let until = period.to.min(inp.now);
    let alarms_on = c.has_table("alarms")?;
    Ok(Report {
        site: site.map(str::to_owned),
        period: period.clone(),
        time_zone: inp.tz.iana_name().unwrap_or("UTC").to_owned(),
        until,
        alarms: if alarms_on {
            alarms(c, site, period)?
        } else {
            Vec::new()
        },
        longest_open: if alarms_on {
            longest(c, site, period, until, inp.rules)?
        } else {
            Vec::new()
        },
        completeness: completeness(c, site, period.from, until)?,
        exceedance: exceedance(c, site, period.from, until, inp.rules)?,
        hazards: hazards(c, site, period)?,
        patrols: patrols(c, site, period, until, inp)?,
        drills: crate::store::inspection::drills(c, site, period.from, period.to)?,
    })
}

pub fn build_year(
    c: Db<'_>,
    site: Option<&str>,
    year: &str,
    inp: &Inputs,
) -> Result<YearReport, InspectionError> {
    let months = months_of(year, inp.tz).map_err(InspectionError::Invalid)?;
    Ok(YearReport {
        site: site.map(str::to_owned),
        year: year.to_owned(),
        time_zone: inp.tz.iana_name().unwrap_or("UTC").to_owned(),
        months: months
            .iter()
            .filter(|m| m.from <= inp.now)
            .map(|m| build(c, site, m, inp))
            .collect::<Result<_, _>>()?,
    })
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

fn alarms(c: Db<'_>, site: Option<&str>, p: &Period) -> Result<Vec<AlarmRow>, InspectionError> {
    type Acc = (i64, i64, Vec<f64>, Vec<f64>);
    let mut by: BTreeMap<(u8, String), Acc> = BTreeMap::new();
    for a in store::alarm_times(c, site, p.from, p.to)? {
        let e = by.entry((a.level, a.category)).or_default();
        e.0 += 1;
        e.1 += i64::from(a.inhibited);
        let after = |t: i64| (t - a.raised_at).max(0) as f64 / 1000.0;
        e.2.extend(a.ack_at.map(after));
        e.3.extend(a.cleared_at.map(after));
    }
    Ok(by
        .into_iter()
        .map(
            |((level, category), (raised, inhibited, ack, clear))| AlarmRow {
                level,
                category,
                raised,
                inhibited,
                acknowledged: ack.len() as i64,
                ack_mean_s: mean(&ack),
                ack_median_s: (!ack.is_empty()).then(|| figures::median(ack.clone())),
                cleared: clear.len() as i64,
                clear_mean_s: mean(&clear),
                clear_median_s: (!clear.is_empty()).then(|| figures::median(clear.clone())),
            },
        )
        .collect())
}

fn longest(
    c: Db<'_>,
    site: Option<&str>,
    p: &Period,
    until: i64,
    rules: Option<&RuleSet>,
) -> Result<Vec<LongOpen>, InspectionError> {
    Ok(store::longest_open(c, site, (p.from, p.to, until), 10)?
        .into_iter()
        .map(|a| {
            let name_zh = rules
                .and_then(|rs| rs.index(&a.rule).map(|i| rs.rules[i].name_zh.clone()))
                .unwrap_or_else(|| a.name.clone());
            LongOpen {
                serial: a.serial,
                rule: a.rule,
                name: a.name,
                name_zh,
                level: a.level,
                site: a.site,
                room: a.room,
                raised_at: a.raised_at,
                cleared_at: a.cleared_at,
                open_s: a.open_ms.max(0) / 1000,
            }
        })
        .collect())
}

/// Points with a room, in existence before `to`.
fn points(c: Db<'_>, site: Option<&str>, to: i64) -> Result<Vec<PointRow>, InspectionError> {
    Ok(store::points(c, site, to)?)
}

/// The hour of a point's first reading, by event time (`first_seen` is when
/// the collector received it: late for a backlog).
fn existed_from(c: Db<'_>, p: &PointRow) -> Result<i64, crate::store::sql::SqlError> {
    let first = store::first_hour(c, p.id)?;
    Ok(first.unwrap_or((p.first_seen + HOUR_MS - 1).div_euclid(HOUR_MS) * HOUR_MS))
}

fn completeness(
    c: Db<'_>,
    site: Option<&str>,
    from: i64,
    until: i64,
) -> Result<Vec<RoomCompleteness>, InspectionError> {
    let mut rooms: BTreeMap<(String, String), Vec<(String, f64)>> = BTreeMap::new();
    // Only whole hours are judged (rollups are by hour).
    let to = until.div_euclid(HOUR_MS) * HOUR_MS;
    for p in points(c, site, to)? {
        let start = from.max(existed_from(c, &p)?);
        let Some(share) = figures::completeness(
            &rollups(c, Tier::Hour, p.id, start, to)?,
            HOUR_MS,
            start,
            to,
        ) else {
            continue;
        };
        rooms
            .entry((p.site, p.room))
            .or_default()
            .push((p.point, share));
    }
    Ok(rooms
        .into_iter()
        .map(|((site, room), v)| {
            let (worst_point, worst) = v
                .iter()
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .cloned()
                .unwrap_or_default();
            RoomCompleteness {
                completeness: v.iter().map(|x| x.1).sum::<f64>() / v.len() as f64,
                points: v.len(),
                site,
                room,
                worst_point,
                worst,
            }
        })
        .collect())
}

fn exceedance(
    c: Db<'_>,
    site: Option<&str>,
    from: i64,
    until: i64,
    rules: Option<&RuleSet>,
) -> Result<Vec<Exceedance>, InspectionError> {
    let Some(rules) = rules else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for p in points(c, site, until)? {
        let limits = rules.limits(
            &p.site,
            &PointLabels {
                quantity: &p.quantity,
                room: &p.room,
                device: &p.device,
                point: &p.point,
            },
        );
        if limits.is_empty() {
            continue;
        }
        // Hours first: only an hour whose extremes crossed a limit can hold
        // a minute that did. The first and last hours may be partial.
        let hours = rollups(
            c,
            Tier::Hour,
            p.id,
            from.div_euclid(HOUR_MS) * HOUR_MS,
            until,
        )?;
        for l in &limits {
            let mut minutes = 0i64;
            for h in hours.iter().filter(|h| figures::is_beyond(h, l)) {
                let m = rollups(
                    c,
                    Tier::Minute,
                    p.id,
                    h.start.max(from),
                    (h.start + HOUR_MS).min(until),
                )?;
                minutes += figures::beyond(&m, l) as i64;
            }
            if minutes > 0 {
                out.push(Exceedance {
                    site: p.site.clone(),
                    room: p.room.clone(),
                    point: p.point.clone(),
                    rule: l.rule.clone(),
                    level: l.level,
                    kind: if l.above { "above" } else { "below" },
                    limit: l.value,
                    minutes,
                });
            }
        }
    }
    Ok(out)
}

fn hazards(c: Db<'_>, site: Option<&str>, p: &Period) -> Result<Hazards, InspectionError> {
    Ok(store::hazard_counts(c, site, p.from, p.to)?)
}

fn patrols(
    c: Db<'_>,
    site: Option<&str>,
    p: &Period,
    until: i64,
    inp: &Inputs,
) -> Result<Vec<PatrolRow>, InspectionError> {
    let mut rooms: BTreeMap<(String, String), i64> = BTreeMap::new();
    for pt in points(c, site, until)? {
        if !rooms.contains_key(&(pt.site.clone(), pt.room.clone())) {
            let first = crate::store::patrols::room_first_reading(c, &pt.site, &pt.room)?
                .unwrap_or(pt.first_seen);
            rooms.insert((pt.site, pt.room), first);
        }
    }
    let mut out = Vec::new();
    for ((site, room), existed) in rooms {
        // Planned: the slots from the room's first reading up to now.
        let planned = figures::slots(
            inp.schedule,
            inp.schedule_tz,
            p.from.max(existed) - 1,
            until - 1,
        )
        .len() as i64;
        // Done: counted from the same start as planned.
        let (auto, manual) = store::patrols_done(c, (&site, &room), p.from.max(existed), p.to)?;
        out.push(PatrolRow {
            site,
            room,
            planned,
            done: auto,
            manual,
        });
    }
    Ok(out)
}
