//! Pure arithmetic behind patrol records and reports: how complete a point's
//! data is, how long it spent beyond a limit, when patrols are due. No I/O,
//! so every figure an inspector sees is tested on its own.

use crate::alarm::rules::Limit;

/// One rollup bucket of a point: its start, the number of good readings in
/// it, and their extremes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    pub start: i64,
    pub n: i64,
    pub min: f64,
    pub max: f64,
}

/// Share of expected readings that arrived in `[from, to)`, from buckets of
/// `width` ms (only buckets that hold readings are given, sorted by start).
///
/// A point's normal rate is not configured in the collector, so it is learnt
/// from the data itself: the median readings per non-empty bucket, divided
/// by the median distance between non-empty buckets (1 for a point read more
/// often than once a bucket; 5 for one read every five buckets). Medians
/// are not moved by an outage, which is exactly what this must not learn
/// from. `None` when there is no period to judge.
pub fn completeness(buckets: &[Bucket], width: i64, from: i64, to: i64) -> Option<f64> {
    if width <= 0 || to <= from {
        return None;
    }
    let periods = (to - from) as f64 / width as f64;
    let inside: Vec<&Bucket> = buckets
        .iter()
        .filter(|b| b.start >= from - width && b.start < to && b.n > 0)
        .collect();
    if inside.is_empty() {
        return Some(0.0);
    }
    let per_bucket = median(inside.iter().map(|b| b.n as f64).collect());
    let gap = if inside.len() < 2 {
        1.0
    } else {
        median(
            inside
                .windows(2)
                .map(|w| ((w[1].start - w[0].start) / width).max(1) as f64)
                .collect(),
        )
    };
    let expected = per_bucket / gap * periods;
    let arrived: f64 = inside.iter().map(|b| b.n as f64).sum();
    Some((arrived / expected).min(1.0))
}

/// Buckets (of one minute, for minutes) in which some reading was beyond
/// `limit`: above it for an `above` limit, below for a `below` one.
pub fn beyond(buckets: &[Bucket], limit: &Limit) -> usize {
    buckets
        .iter()
        .filter(|b| b.n > 0 && is_beyond(b, limit))
        .count()
}

pub fn is_beyond(b: &Bucket, limit: &Limit) -> bool {
    if limit.above {
        b.max > limit.value
    } else {
        b.min < limit.value
    }
}

/// Median of finite values (mean of the middle two); 0 when empty.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// When patrols are due: every `every` from local midnight, or at given
/// local times of day.
#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    Every(i64),
    /// Minutes after local midnight, sorted.
    At(Vec<i64>),
}

/// Patrol times in `(from, to]`, by the clock on the wall in `tz`: "08:00"
/// is 08:00 local on a day clocks change too. A time that does not exist
/// that day (skipped by a change) is taken as the first one after it.
pub fn slots(s: &Schedule, tz: &jiff::tz::TimeZone, from: i64, to: i64) -> Vec<i64> {
    let mut out = Vec::new();
    let Ok(start) = jiff::Timestamp::from_millisecond(from) else {
        return out;
    };
    // Seconds after local midnight.
    let times: Vec<i64> = match s {
        Schedule::Every(every) if *every >= 1000 => (0..)
            .map(|i| i * (every / 1000))
            .take_while(|t| *t < 86_400)
            .collect(),
        Schedule::Every(_) => return out,
        Schedule::At(minutes) => minutes.iter().map(|m| m * 60).collect(),
    };
    // From the day before `from`'s local date: a slot late on it may still
    // fall after `from`.
    let Ok(mut day) = start.to_zoned_datetime(tz.clone()).date().yesterday() else {
        return out;
    };
    loop {
        let Ok(midnight) = day.to_zoned_datetime(tz.clone()) else {
            break;
        };
        if midnight.timestamp().as_millisecond() > to {
            break;
        }
        for t in &times {
            let at = day.at((t / 3600) as i8, (t % 3600 / 60) as i8, (t % 60) as i8, 0);
            if let Ok(z) = at.to_zoned_datetime(tz.clone()) {
                let ms = z.timestamp().as_millisecond();
                if ms > from && ms <= to {
                    out.push(ms);
                }
            }
        }
        match day.tomorrow() {
            Ok(d) => day = d,
            Err(_) => break,
        }
    }
    // A skipped hour's slot lands on the next one's: once.
    out.sort_unstable();
    out.dedup();
    out
}

/// The latest slot at or before `now`, and the one before it (the period a
/// patrol at that slot covers).
pub fn current_slot(s: &Schedule, tz: &jiff::tz::TimeZone, now: i64) -> Option<(i64, i64)> {
    let recent = slots(s, tz, now - 3 * 86_400_000, now);
    match recent.as_slice() {
        [.., prev, last] => Some((*prev, *last)),
        [last] => Some((last - 86_400_000, *last)),
        [] => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIN: i64 = 60_000;

    fn minutes(n_per: i64, count: i64, skip: impl Fn(i64) -> bool) -> Vec<Bucket> {
        (0..count)
            .filter(|i| !skip(*i))
            .map(|i| Bucket {
                start: i * MIN,
                n: n_per,
                min: 20.0,
                max: 21.0,
            })
            .collect()
    }

    #[test]
    fn a_point_that_missed_six_hours_of_a_day_is_75_percent_complete() {
        let day = 24 * 60;
        let b = minutes(6, day, |i| (600..960).contains(&i));
        let c = completeness(&b, MIN, 0, day * MIN).unwrap();
        assert!((c - 0.75).abs() < 1e-9, "{c}");
    }

    #[test]
    fn a_point_read_every_five_minutes_is_complete_when_nothing_is_missing() {
        let b = minutes(1, 120, |i| i % 5 != 0);
        assert_eq!(completeness(&b, MIN, 0, 120 * MIN), Some(1.0));
        let half = minutes(1, 120, |i| i % 5 != 0 || i >= 60);
        let c = completeness(&half, MIN, 0, 120 * MIN).unwrap();
        assert!((c - 0.5).abs() < 1e-9, "{c}");
    }

    #[test]
    fn a_silent_point_is_zero_and_an_empty_period_is_not_judged() {
        assert_eq!(completeness(&[], MIN, 0, 10 * MIN), Some(0.0));
        assert_eq!(completeness(&[], MIN, 10, 10), None);
    }

    #[test]
    fn minutes_beyond_a_limit_count_each_minute_once() {
        let mut b = minutes(6, 10, |_| false);
        b[3].max = 28.0;
        b[4].max = 27.5;
        b[7].min = 17.0;
        let high = Limit {
            rule: "r".into(),
            level: 3,
            above: true,
            value: 27.0,
            hysteresis: 0.0,
        };
        assert_eq!(beyond(&b, &high), 2);
        let low = Limit {
            above: false,
            value: 18.0,
            ..high
        };
        assert_eq!(beyond(&b, &low), 1);
    }

    #[test]
    fn patrol_slots_follow_local_midnight_and_shift_times() {
        let tz = jiff::tz::TimeZone::get("Asia/Shanghai").unwrap();
        // 2026-11-01 00:00 +08:00 = 2026-10-31T16:00Z.
        let day: i64 = "2026-10-31T16:00:00Z"
            .parse::<jiff::Timestamp>()
            .unwrap()
            .as_millisecond();
        let every2h = slots(
            &Schedule::Every(2 * 3_600_000),
            &tz,
            day - 1,
            day + 86_400_000 - 1,
        );
        assert_eq!(every2h.len(), 12);
        assert_eq!(every2h[0], day);
        let shifts = slots(
            &Schedule::At(vec![8 * 60, 20 * 60]),
            &tz,
            day,
            day + 30 * 86_400_000,
        );
        assert_eq!(shifts.len(), 60);
        assert_eq!(shifts[0], day + 8 * 3_600_000);
        let (prev, last) = current_slot(
            &Schedule::At(vec![8 * 60, 20 * 60]),
            &tz,
            day + 9 * 3_600_000,
        )
        .unwrap();
        assert_eq!((prev, last), (day - 4 * 3_600_000, day + 8 * 3_600_000));
    }

    #[test]
    fn slots_keep_to_the_wall_clock_when_clocks_change() {
        let tz = jiff::tz::TimeZone::get("Europe/Berlin").unwrap();
        let ms = |s: &str| s.parse::<jiff::Timestamp>().unwrap().as_millisecond();
        // 2026-03-29: 02:00 CET → 03:00 CEST, a 23-hour day.
        let (from, to) = (
            ms("2026-03-28T23:00:00Z") - 1,
            ms("2026-03-29T22:00:00Z") - 1,
        );
        let hourly = slots(&Schedule::Every(3_600_000), &tz, from, to);
        assert_eq!(hourly.len(), 23, "{hourly:?}");
        assert!(hourly.windows(2).all(|w| w[1] - w[0] == 3_600_000));
        let eight = slots(&Schedule::At(vec![8 * 60]), &tz, from, to);
        assert_eq!(eight, [ms("2026-03-29T06:00:00Z")], "08:00 CEST");
        // 2026-10-25: 03:00 CEST → 02:00 CET, a 25-hour day; 08:00 is CET.
        let (from, to) = (
            ms("2026-10-24T22:00:00Z") - 1,
            ms("2026-10-25T23:00:00Z") - 1,
        );
        let eight = slots(&Schedule::At(vec![8 * 60]), &tz, from, to);
        assert_eq!(eight, [ms("2026-10-25T07:00:00Z")], "08:00 CET");
        let (prev, last) =
            current_slot(&Schedule::Every(3_600_000), &tz, ms("2026-10-25T02:30:00Z")).unwrap();
        assert!(last > prev, "a patrol never covers an empty period");
    }

    proptest! {
        #[test]
        fn completeness_is_a_share(
            n in proptest::collection::vec((0i64..5_000, 0i64..100), 0..200),
            width in 1i64..10_000,
            span in 1i64..10_000_000,
        ) {
            let mut b: Vec<Bucket> = n
                .iter()
                .map(|(i, k)| Bucket { start: i * width, n: *k, min: 0.0, max: 0.0 })
                .collect();
            b.sort_by_key(|x| x.start);
            b.dedup_by_key(|x| x.start);
            let c = completeness(&b, width, 0, span).unwrap();
            prop_assert!((0.0..=1.0).contains(&c), "{}", c);
        }
    }
}
