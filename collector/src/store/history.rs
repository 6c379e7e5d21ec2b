//! History queries: which tier answers a question (raw samples, 1-minute or
//! 1-hour rollups), how its rows fold into the buckets asked for, and the
//! bounds that keep any query's work finite. Planning and folding are pure;
//! the reader runs the one range scan per point that a plan needs.

use super::retention::Policy;
use super::rollup::{Agg, HOUR_MS, MINUTE_MS};
use super::sqlite::SqliteReader;
use super::StoreError;
use rusqlite::params;
use serde::Serialize;
use thiserror::Error;

/// Most buckets (or raw samples) per point in one answer.
pub const MAX_POINTS_PER_SERIES: i64 = 10_000;
/// Most points in one question.
pub const MAX_SERIES: usize = 500;
/// Most values in one answer, over all its points.
pub const MAX_VALUES: i64 = 2_000_000;
/// Longest range a question may span.
pub const MAX_RANGE_MS: i64 = 20 * 366 * 86_400_000;
/// Raw samples without aggregation are served for at most this range.
pub const MAX_RAW_RANGE_MS: i64 = 86_400_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Raw,
    Minute,
    Hour,
}

impl Tier {
    pub fn name(self) -> &'static str {
        match self {
            Tier::Raw => "raw",
            Tier::Minute => "1m",
            Tier::Hour => "1h",
        }
    }
}

/// How a question will be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub from: i64,
    /// Exclusive.
    pub to: i64,
    pub tier: Tier,
    /// Bucket width; `None`: raw samples as they are.
    pub step: Option<i64>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("from ({from}) is not before to ({to})")]
    Reversed { from: String, to: String },
    #[error("the range spans more than 20 years")]
    TooLong,
    #[error("step must be at least 1s")]
    StepTooSmall,
    #[error("step {step_s}s gives {buckets} points per series, more than {MAX_POINTS_PER_SERIES}: use a larger step or a shorter range")]
    TooManyBuckets { step_s: i64, buckets: i64 },
    #[error("raw samples are served for ranges up to 1 day; give a step for longer ranges")]
    RawTooLong,
    #[error("{series} points × {per_series} values each is more than {MAX_VALUES} values: ask for fewer points or a larger step")]
    TooManyValues { series: usize, per_series: i64 },
    #[error("at most {MAX_SERIES} points per question")]
    TooManySeries,
}

/// Steps an automatic choice rounds up to, in seconds.
const NICE_STEPS: &[i64] = &[
    1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400,
    172_800, 604_800, 2_592_000,
];

/// Plans a question over `[from, to)`. `step`: `Some(Some(ms))` a given
/// step, `Some(None)` raw samples, `None` chosen to give about 1,000 points.
/// `now` and `policy` let a tier whose data has expired give way to the
/// next coarser one.
pub fn plan(
    from: i64,
    to: i64,
    step: Option<Option<i64>>,
    series: usize,
    now: i64,
    policy: &Policy,
) -> Result<Plan, PlanError> {
    if from >= to {
        return Err(PlanError::Reversed {
            from: from.to_string(),
            to: to.to_string(),
        });
    }
    let range = to - from;
    if range > MAX_RANGE_MS {
        return Err(PlanError::TooLong);
    }
    if series > MAX_SERIES {
        return Err(PlanError::TooManySeries);
    }
    let step = match step {
        Some(None) => {
            if range > MAX_RAW_RANGE_MS {
                return Err(PlanError::RawTooLong);
            }
            return Ok(Plan {
                from,
                to,
                tier: Tier::Raw,
                step: None,
            });
        }
        Some(Some(s)) if s < 1_000 => return Err(PlanError::StepTooSmall),
        Some(Some(s)) => s,
        None => {
            let wanted = (range / 1_000).max(1_000);
            NICE_STEPS
                .iter()
                .map(|s| s * 1_000)
                .find(|s| *s >= wanted)
                .unwrap_or(wanted)
        }
    };
    let buckets = (range + step - 1) / step;
    if buckets > MAX_POINTS_PER_SERIES {
        return Err(PlanError::TooManyBuckets {
            step_s: step / 1_000,
            buckets,
        });
    }
    if buckets.saturating_mul(series as i64) > MAX_VALUES {
        return Err(PlanError::TooManyValues {
            series,
            per_series: buckets,
        });
    }
    let kept = |d: std::time::Duration| now - d.as_millis() as i64;
    let mut tier = if step < MINUTE_MS {
        Tier::Raw
    } else if step < HOUR_MS {
        Tier::Minute
    } else {
        Tier::Hour
    };
    // The finest tier still holding the start of the range.
    if tier == Tier::Raw && from < kept(policy.raw) {
        tier = Tier::Minute;
    }
    if tier == Tier::Minute && from < kept(policy.minute) {
        tier = Tier::Hour;
    }
    Ok(Plan {
        from,
        to,
        tier,
        step: Some(step),
    })
}

/// One bucket of an answer: where it starts, and what fell in it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    pub start: i64,
    pub agg: Agg,
}

impl std::ops::Deref for Bucket {
    type Target = Agg;
    fn deref(&self) -> &Agg {
        &self.agg
    }
}

/// Folds rows of a tier (time, aggregate; a raw sample is an aggregate of
/// one), in time order, into buckets of `step` starting at `from`; empty
/// buckets are left out, so gaps in the data stay visible.
pub fn fold(rows: impl IntoIterator<Item = (i64, Agg)>, from: i64, step: i64) -> Vec<Bucket> {
    let mut out: Vec<Bucket> = Vec::new();
    for (ts, agg) in rows {
        let start = from + (ts - from).div_euclid(step) * step;
        match out.last_mut() {
            Some(b) if b.start == start => b.agg.merge(&agg),
            _ => out.push(Bucket { start, agg }),
        }
    }
    out
}

/// A point of the catalogue.
#[derive(Debug, Clone, Serialize)]
pub struct PointRow {
    #[serde(skip)]
    pub id: i64,
    pub site: String,
    pub point: String,
    pub agent: String,
    pub room: String,
    pub device: String,
    pub quantity: String,
    pub unit: String,
    pub first_seen: i64,
    pub last_seen: i64,
    pub last_ts: Option<i64>,
}

/// Filters of `GET /api/v1/points`; all optional.
#[derive(Debug, Default, Clone)]
pub struct PointFilter {
    pub site: Option<String>,
    pub room: Option<String>,
    pub device: Option<String>,
    pub quantity: Option<String>,
}

/// A raw sample as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub ts: i64,
    pub value: Option<f64>,
    pub text: Option<String>,
    pub bad: Option<String>,
}

/// What a plan returns for one point.
#[derive(Debug, Clone, PartialEq)]
pub enum Series {
    Raw(Vec<Sample>),
    Buckets(Vec<Bucket>),
}

const POINT_COLUMNS: &str =
    "id, site, point, agent, room, device, quantity, unit, first_seen, last_seen, last_ts";

fn point_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<PointRow> {
    Ok(PointRow {
        id: r.get(0)?,
        site: r.get(1)?,
        point: r.get(2)?,
        agent: r.get(3)?,
        room: r.get(4)?,
        device: r.get(5)?,
        quantity: r.get(6)?,
        unit: r.get(7)?,
        first_seen: r.get(8)?,
        last_seen: r.get(9)?,
        last_ts: r.get(10)?,
    })
}

impl SqliteReader {
    /// The catalogue, filtered.
    pub fn points(&self, f: &PointFilter) -> Result<Vec<PointRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {POINT_COLUMNS} FROM points
             WHERE (?1 IS NULL OR site = ?1) AND (?2 IS NULL OR room = ?2)
               AND (?3 IS NULL OR device = ?3) AND (?4 IS NULL OR quantity = ?4)
             ORDER BY site, room, device, point"
        ))?;
        let rows = stmt.query_map(params![f.site, f.room, f.device, f.quantity], point_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every point named `point` (in `site`, if given): more than one means
    /// the name is ambiguous without a site.
    pub fn points_named(
        &self,
        site: Option<&str>,
        point: &str,
    ) -> Result<Vec<PointRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {POINT_COLUMNS} FROM points WHERE point = ?2 AND (?1 IS NULL OR site = ?1) ORDER BY site"
        ))?;
        let rows = stmt.query_map(params![site, point], point_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// One point's history by `plan`: one range scan of one tier.
    pub fn history(&self, point_id: i64, plan: &Plan) -> Result<Series, StoreError> {
        // Only raw answers read samples; pending readings are taken first.
        let waiting = if plan.tier == Tier::Raw {
            self.pending_range(point_id, plan.from, plan.to)
        } else {
            Vec::new()
        };
        let Some(step) = plan.step else {
            let mut stmt = self.conn.prepare_cached(
                "SELECT ts, value, text, bad FROM samples WHERE point_id = ?1 AND ts >= ?2 AND ts < ?3
                 ORDER BY ts LIMIT ?4",
            )?;
            let rows = stmt.query_map(
                params![point_id, plan.from, plan.to, MAX_POINTS_PER_SERIES + 1],
                |r| {
                    Ok(Sample {
                        ts: r.get(0)?,
                        value: r.get(1)?,
                        text: r.get(2)?,
                        bad: r.get(3)?,
                    })
                },
            )?;
            let stored: Vec<Sample> = rows.collect::<Result<_, _>>()?;
            let waiting = waiting
                .into_iter()
                .map(|s| Sample {
                    ts: s.ts,
                    value: s.value,
                    text: s.text.map(String::from),
                    bad: s.bad.map(String::from),
                })
                .collect();
            let mut all = super::pending::merge(stored, waiting, |s| s.ts);
            all.truncate(MAX_POINTS_PER_SERIES as usize + 1);
            return Ok(Series::Raw(all));
        };
        let rows: Vec<(i64, Agg)> = match plan.tier {
            Tier::Raw => {
                let mut stmt = self.conn.prepare_cached(
                    "SELECT ts, value FROM samples WHERE point_id = ?1 AND ts >= ?2 AND ts < ?3
                       AND value IS NOT NULL AND bad IS NULL ORDER BY ts",
                )?;
                let rows = stmt.query_map(params![point_id, plan.from, plan.to], |r| {
                    let ts = r.get(0)?;
                    Ok((ts, Agg::sample(ts, r.get(1)?)))
                })?;
                let stored: Vec<(i64, Agg)> = rows.collect::<Result<_, _>>()?;
                // A time whose first reading was bad has no good one to add.
                let waiting = waiting
                    .iter()
                    .filter_map(|s| Some((s.ts, Agg::sample(s.ts, s.good_value()?))))
                    .collect();
                super::pending::merge(stored, waiting, |r| r.0)
            }
            Tier::Minute | Tier::Hour => {
                // `table` is one of two constants.
                let table = if plan.tier == Tier::Minute {
                    "rollup_1m"
                } else {
                    "rollup_1h"
                };
                let width = if plan.tier == Tier::Minute {
                    MINUTE_MS
                } else {
                    HOUR_MS
                };
                let mut stmt = self.conn.prepare_cached(&format!(
                    "SELECT bucket, n, min, max, sum, last_ts, last FROM {table}
                     WHERE point_id = ?1 AND bucket >= ?2 AND bucket < ?3 ORDER BY bucket"
                ))?;
                // Buckets that merely overlap the start are left out rather
                // than attributed to the wrong step.
                let first = plan.from + (width - plan.from.rem_euclid(width)) % width;
                let rows = stmt.query_map(params![point_id, first, plan.to], |r| {
                    let agg = Agg {
                        n: r.get(1)?,
                        min: r.get(2)?,
                        max: r.get(3)?,
                        sum: r.get(4)?,
                        last_ts: r.get(5)?,
                        last: r.get(6)?,
                    };
                    Ok((r.get(0)?, agg))
                })?;
                rows.collect::<Result<_, _>>()?
            }
        };
        Ok(Series::Buckets(fold(rows, plan.from, step)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;
    const DAY: i64 = 86_400_000;

    fn p(from: i64, to: i64, step: Option<Option<i64>>) -> Result<Plan, PlanError> {
        plan(from, to, step, 1, NOW, &Policy::default())
    }

    #[test]
    fn the_tier_follows_the_step() {
        let h = p(NOW - 3_600_000, NOW, Some(Some(10_000))).unwrap();
        assert_eq!((h.tier, h.step), (Tier::Raw, Some(10_000)));
        let d = p(NOW - DAY, NOW, Some(Some(300_000))).unwrap();
        assert_eq!(d.tier, Tier::Minute);
        let y = p(NOW - 365 * DAY, NOW, Some(Some(DAY))).unwrap();
        assert_eq!(y.tier, Tier::Hour);
    }

    #[test]
    fn without_a_step_about_a_thousand_points_come_back() {
        let plan = p(NOW - 90 * DAY, NOW, None).unwrap();
        let buckets = 90 * DAY / plan.step.unwrap();
        assert!((300..=1_000).contains(&buckets), "{buckets}");
        assert_eq!(plan.tier, Tier::Hour, "90 days at a 3-hour step");
    }

    #[test]
    fn an_expired_tier_gives_way_to_a_coarser_one() {
        // 10-second steps over data older than raw retention: from the minutes.
        let old = NOW - 100 * DAY;
        let plan = p(old, old + 3_600_000, Some(Some(10_000))).unwrap();
        assert_eq!(plan.tier, Tier::Minute);
    }

    #[test]
    fn absurd_questions_are_refused_with_a_reason() {
        assert!(matches!(
            p(NOW, NOW - 1, None),
            Err(PlanError::Reversed { .. })
        ));
        assert_eq!(
            p(NOW - DAY, NOW, Some(Some(10))),
            Err(PlanError::StepTooSmall)
        );
        assert!(matches!(
            p(NOW - 365 * DAY, NOW, Some(Some(1_000))),
            Err(PlanError::TooManyBuckets { .. })
        ));
        assert_eq!(
            p(NOW - 2 * DAY, NOW, Some(None)),
            Err(PlanError::RawTooLong)
        );
        assert_eq!(p(0, NOW, None), Err(PlanError::TooLong));
        assert_eq!(
            plan(
                NOW - DAY,
                NOW,
                None,
                MAX_SERIES + 1,
                NOW,
                &Policy::default()
            ),
            Err(PlanError::TooManySeries)
        );
    }

    #[test]
    fn folding_keeps_min_max_mean_and_the_newest_last() {
        let rows = [(1_000, 5.0), (9_000, 1.0), (4_000, 9.0), (12_000, 2.0)];
        // 4,000 arrived late; it still belongs to the first bucket.
        let mut sorted: Vec<(i64, Agg)> =
            rows.iter().map(|&(t, v)| (t, Agg::sample(t, v))).collect();
        sorted.sort_by_key(|r| r.0);
        let b = fold(sorted, 0, 10_000);
        assert_eq!(b.len(), 2);
        assert_eq!((b[0].n, b[0].min, b[0].max, b[0].last), (3, 1.0, 9.0, 1.0));
        assert_eq!(b[0].mean(), 5.0);
        assert_eq!((b[1].start, b[1].n, b[1].last), (10_000, 1, 2.0));
    }

    #[test]
    fn the_mean_of_equal_values_is_that_value_not_one_ulp_above() {
        let same: Vec<(i64, Agg)> = (0..3).map(|t| (t, Agg::sample(t, 0.4))).collect();
        let b = fold(same, 0, 10_000);
        assert_eq!((b[0].min, b[0].mean(), b[0].max), (0.4, 0.4, 0.4));
    }
}

/// Rollups and history through the real writer and reader on a temp file.
#[cfg(test)]
mod store_tests {
    use super::*;
    use crate::store::sqlite::SqliteWriter;
    use roomguard_protocol::{Batch, PointMeta, Quality, Reading, PROTOCOL_VERSION};

    const T0: i64 = 1_800_000_000_000 - 1_800_000_000_000 % HOUR_MS;

    fn batch(seq: u64, readings: &[(i64, f64)]) -> Batch {
        Batch {
            v: PROTOCOL_VERSION,
            site: "s".into(),
            agent: "a".into(),
            seq,
            device: "d".into(),
            polled_at: readings[0].0,
            backfill: false,
            points: vec![PointMeta {
                id: "d.t".into(),
                room: "r".into(),
                quantity: "temperature".into(),
                unit: "°C".into(),
            }],
            readings: readings
                .iter()
                .map(|&(ts, v)| Reading {
                    point: "d.t".into(),
                    value: Some(v),
                    text: None,
                    ts,
                    quality: Quality::Good,
                })
                .collect(),
        }
    }

    fn open() -> (tempfile::TempDir, SqliteWriter, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let w = SqliteWriter::open(&path).unwrap();
        (dir, w, path)
    }

    fn settle(w: &mut SqliteWriter, now: i64) {
        while w.maintain(now).unwrap().minutes > 0 {}
    }

    fn buckets(path: &std::path::Path, plan: &Plan) -> Vec<Bucket> {
        let r = SqliteReader::open(path).unwrap();
        let id = r.points_named(None, "d.t").unwrap()[0].id;
        match r.history(id, plan).unwrap() {
            Series::Buckets(b) => b,
            Series::Raw(_) => panic!("raw"),
        }
    }

    #[test]
    fn rollups_are_right_even_when_readings_arrive_late_and_out_of_order() {
        let (_d, mut w, path) = open();
        // Minute 0: 10, 20; minute 1: 5. Then, after the rollups ran, a late
        // reading for minute 0 (backfill) and a repeat that must not count twice.
        w.write_batches(&[batch(1, &[(T0 + 1_000, 10.0), (T0 + 2_000, 20.0)])], T0)
            .unwrap();
        w.write_batches(&[batch(2, &[(T0 + 61_000, 5.0)])], T0)
            .unwrap();
        settle(&mut w, T0 + 10 * MINUTE_MS);
        w.write_batches(&[batch(3, &[(T0 + 500, 30.0)])], T0)
            .unwrap();
        w.write_batches(&[batch(1, &[(T0 + 1_000, 10.0), (T0 + 2_000, 20.0)])], T0)
            .unwrap();
        settle(&mut w, T0 + 10 * MINUTE_MS);

        let minute = Plan {
            from: T0,
            to: T0 + 2 * MINUTE_MS,
            tier: Tier::Minute,
            step: Some(MINUTE_MS),
        };
        let b = buckets(&path, &minute);
        assert_eq!(b.len(), 2);
        assert_eq!(
            (b[0].n, b[0].min, b[0].max, b[0].mean()),
            (3, 10.0, 30.0, 20.0)
        );
        assert_eq!(b[0].last, 20.0, "last by event time, not arrival");
        assert_eq!((b[1].n, b[1].last), (1, 5.0));

        let hour = Plan {
            from: T0,
            to: T0 + HOUR_MS,
            tier: Tier::Hour,
            step: Some(HOUR_MS),
        };
        let h = buckets(&path, &hour);
        assert_eq!(h.len(), 1);
        assert_eq!((h[0].n, h[0].min, h[0].max, h[0].last), (4, 5.0, 30.0, 5.0));
        assert_eq!(h[0].sum, 65.0);
    }

    #[test]
    fn every_tier_gives_the_same_answer_for_the_same_buckets() {
        let (_d, mut w, path) = open();
        let readings: Vec<(i64, f64)> = (0..360)
            .map(|i| (T0 + i * 10_000, (i % 37) as f64))
            .collect();
        for (seq, chunk) in readings.chunks(6).enumerate() {
            w.write_batches(&[batch(seq as u64 + 1, chunk)], T0)
                .unwrap();
        }
        settle(&mut w, T0 + 2 * HOUR_MS);
        let from_raw = buckets(
            &path,
            &Plan {
                from: T0,
                to: T0 + HOUR_MS,
                tier: Tier::Raw,
                step: Some(HOUR_MS),
            },
        );
        let from_minutes = buckets(
            &path,
            &Plan {
                from: T0,
                to: T0 + HOUR_MS,
                tier: Tier::Minute,
                step: Some(HOUR_MS),
            },
        );
        let from_hours = buckets(
            &path,
            &Plan {
                from: T0,
                to: T0 + HOUR_MS,
                tier: Tier::Hour,
                step: Some(HOUR_MS),
            },
        );
        assert_eq!(from_raw, from_minutes);
        assert_eq!(from_raw, from_hours);
        assert_eq!(from_raw[0].n, 360);
    }

    #[test]
    fn retention_removes_old_rows_of_every_tier_in_steps() {
        let (_d, w, path) = open();
        let mut w = w.with_retention(crate::store::retention::Policy {
            raw: std::time::Duration::from_secs(86_400),
            minute: std::time::Duration::from_secs(2 * 86_400),
            hour: std::time::Duration::from_secs(3 * 86_400),
        });
        w.write_batches(&[batch(1, &[(T0, 1.0)])], T0).unwrap();
        settle(&mut w, T0 + HOUR_MS);
        let now = T0 + 10 * 86_400_000;
        let mut expired = 0;
        for _ in 0..20 {
            expired += w.maintain(now).unwrap().expired;
        }
        // One sample, its minute, its hour, and the batch register entry.
        assert_eq!(expired, 4);
        let r = SqliteReader::open(&path).unwrap();
        assert_eq!(r.sample_count().unwrap(), 0);
    }
}
