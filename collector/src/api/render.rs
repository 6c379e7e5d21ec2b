//! Fast writers for large answers: a month of 500 points is 360,000 values,
//! and building a `serde_json::Value` per value, or formatting each time
//! through a time-zone lookup, costs most of a second. Here times are
//! formatted from a cached offset (looked up again only past the zone's next
//! transition) and numbers with `itoa`/`ryu`, straight into the body.

use jiff::tz::TimeZone;
use jiff::Timestamp;

/// Writes RFC 3339 times with the offset of one time zone.
pub struct TimeWriter {
    tz: TimeZone,
    /// `[from, until)` in ms, and the offset in seconds that holds there.
    span: Option<(i64, i64, i32)>,
}

impl TimeWriter {
    pub fn new(tz: TimeZone) -> TimeWriter {
        TimeWriter { tz, span: None }
    }

    fn offset(&mut self, ms: i64) -> i32 {
        if let Some((from, until, secs)) = self.span {
            if from <= ms && ms < until {
                return secs;
            }
        }
        let Ok(ts) = Timestamp::from_millisecond(ms) else {
            return 0;
        };
        let secs = self.tz.to_offset(ts).seconds();
        let until = self
            .tz
            .following(ts)
            .next()
            .map_or(i64::MAX, |t| t.timestamp().as_millisecond());
        self.span = Some((ms, until, secs));
        secs
    }

    /// Appends `ms` (since the epoch) as `2026-11-01T08:00:00+08:00`, with
    /// `.mmm` when there are milliseconds.
    pub fn write(&mut self, out: &mut Vec<u8>, ms: i64) {
        let off = self.offset(ms);
        let local = ms.div_euclid(1000) + i64::from(off);
        let (days, secs) = (local.div_euclid(86_400), local.rem_euclid(86_400));
        let (y, m, d) = civil_from_days(days);
        push_padded(out, y, 4);
        out.push(b'-');
        push_padded(out, m, 2);
        out.push(b'-');
        push_padded(out, d, 2);
        out.push(b'T');
        push_padded(out, secs / 3600, 2);
        out.push(b':');
        push_padded(out, secs / 60 % 60, 2);
        out.push(b':');
        push_padded(out, secs % 60, 2);
        let frac = ms.rem_euclid(1000);
        if frac != 0 {
            out.push(b'.');
            push_padded(out, frac, 3);
        }
        out.push(if off < 0 { b'-' } else { b'+' });
        let a = i64::from(off.unsigned_abs());
        push_padded(out, a / 3600, 2);
        out.push(b':');
        push_padded(out, a / 60 % 60, 2);
    }
}

fn push_padded(out: &mut Vec<u8>, v: i64, width: usize) {
    let mut buf = itoa::Buffer::new();
    let s = buf.format(v);
    for _ in s.len()..width {
        out.push(b'0');
    }
    out.extend_from_slice(s.as_bytes());
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (the well-known era-based algorithm; exact for every i32 year).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

pub fn push_i64(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// A finite number as JSON or CSV writes it; `null` (JSON) otherwise.
pub fn push_f64(out: &mut Vec<u8>, v: f64) {
    if v.is_finite() {
        out.extend_from_slice(ryu::Buffer::new().format_finite(v).as_bytes());
    } else {
        out.extend_from_slice(b"null");
    }
}

/// A JSON string, escaped.
pub fn push_json_str(out: &mut Vec<u8>, s: &str) {
    // Writing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// A CSV field: quoted when it holds a comma, quote or line break.
pub fn push_csv_text(out: &mut Vec<u8>, s: &str) {
    if s.contains([',', '"', '\n', '\r']) {
        out.push(b'"');
        out.extend_from_slice(s.replace('"', "\"\"").as_bytes());
        out.push(b'"');
    } else {
        out.extend_from_slice(s.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(tz: &str, ms: i64) -> String {
        let mut w = TimeWriter::new(TimeZone::get(tz).unwrap());
        let mut out = Vec::new();
        w.write(&mut out, ms);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn times_read_back_as_the_same_instant_with_the_zone_offset() {
        let tz = TimeZone::get("Asia/Shanghai").unwrap();
        let mut w = TimeWriter::new(tz.clone());
        // Across Shanghai's 1988 summer time, and today, at odd steps.
        let starts = [575_000_000_000i64, 1_795_000_000_000, 0, 951_782_400_000];
        for start in starts {
            for i in 0..2_000i64 {
                let ms = start + i * 3_599_977;
                let mut out = Vec::new();
                w.write(&mut out, ms);
                let s = String::from_utf8(out).unwrap();
                let back: Timestamp = s.parse().unwrap();
                assert_eq!(back.as_millisecond(), ms, "{s}");
                let suffix = &s[s.len() - 6..];
                let sign = if suffix.starts_with('-') { -1 } else { 1 };
                let secs = sign
                    * (suffix[1..3].parse::<i32>().unwrap() * 3600
                        + suffix[4..6].parse::<i32>().unwrap() * 60);
                assert_eq!(secs, tz.to_offset(back).seconds(), "{s}");
            }
        }
        assert_eq!(fmt("Asia/Shanghai", 0), "1970-01-01T08:00:00+08:00");
        assert_eq!(fmt("UTC", 1_500), "1970-01-01T00:00:01.500+00:00");
        assert_eq!(fmt("America/New_York", 0), "1969-12-31T19:00:00-05:00");
    }

    #[test]
    fn numbers_and_text_are_written_as_json_and_csv_expect() {
        let mut out = Vec::new();
        push_f64(&mut out, 24.5);
        out.push(b' ');
        push_f64(&mut out, f64::NAN);
        out.push(b' ');
        push_json_str(&mut out, "a\"b");
        out.push(b' ');
        push_csv_text(&mut out, "a,\"b\"");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "24.5 null \"a\\\"b\" \"a,\"\"b\"\"\""
        );
    }
}
