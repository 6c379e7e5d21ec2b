//! `GET /api/v1/points` and `GET /api/v1/history`: the catalogue, and any
//! point's history at a resolution the store can answer from one tier
//! (store/history.rs plans it). Times go out in RFC 3339 with the offset of
//! the asked time zone (`tz`, default from `http.time_zone`); they are
//! stored in UTC. JSON by default, CSV with `format=csv` or `Accept: text/csv`.

use super::render::{push_csv_text, push_f64, push_i64, push_json_str, TimeWriter};
use super::{ApiError, AppState};
use crate::store::history::{self, PointFilter, PointRow, Series};
use crate::store::StoreError;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde::Deserialize;
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::sync::Arc;

type QueryResult<T> = Result<Query<T>, axum::extract::rejection::QueryRejection>;

pub(super) fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Csv,
}

fn format(asked: Option<&str>, headers: &HeaderMap) -> Result<Format, ApiError> {
    match asked {
        Some("json") => Ok(Format::Json),
        Some("csv") => Ok(Format::Csv),
        Some(other) => Err(bad(format!("format: {other:?} is not json or csv"))),
        None => {
            let accept = headers
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            Ok(if accept.contains("text/csv") {
                Format::Csv
            } else {
                Format::Json
            })
        }
    }
}

pub(super) fn zone(asked: Option<&str>, st: &AppState) -> Result<TimeZone, ApiError> {
    let name = asked.unwrap_or(&st.time_zone);
    TimeZone::get(name).map_err(|_| {
        bad(format!(
            "tz: {name:?} is not a known IANA time zone (e.g. Asia/Shanghai)"
        ))
    })
}

/// `t` in `tz` as RFC 3339 with its offset.
pub(super) fn show(ms: i64, tz: &TimeZone) -> String {
    match Timestamp::from_millisecond(ms) {
        Ok(t) => {
            let offset = tz.to_offset(t);
            t.display_with_offset(offset).to_string()
        }
        Err(_) => ms.to_string(),
    }
}

/// A time parameter: RFC 3339 with offset, a local date or date-time in
/// `tz`, `now`, `now-<duration>` (e.g. `now-24h`) or `now+<duration>`.
pub(super) fn parse_time(
    name: &str,
    s: &str,
    tz: &TimeZone,
    now: Timestamp,
) -> Result<i64, ApiError> {
    let err = || {
        bad(format!(
            "{name}: {s:?} is not a time; use RFC 3339 (2026-11-01T08:00:00+08:00), a local date or date-time, now, or now-24h"
        ))
    };
    let t = if s == "now" {
        now
    } else if let Some(ago) = s.strip_prefix("now-") {
        let d = roomguard_protocol::conf::parse_duration(ago)
            .map_err(|e| bad(format!("{name}: {e}")))?;
        let span = jiff::SignedDuration::try_from(d).map_err(|_| err())?;
        now.checked_sub(span).map_err(|_| err())?
    } else if let Some(ahead) = s.strip_prefix("now+") {
        let d = roomguard_protocol::conf::parse_duration(ahead)
            .map_err(|e| bad(format!("{name}: {e}")))?;
        let span = jiff::SignedDuration::try_from(d).map_err(|_| err())?;
        now.checked_add(span).map_err(|_| err())?
    } else if let Ok(t) = s.parse::<Timestamp>() {
        t
    } else if let Ok(dt) = s.parse::<jiff::civil::DateTime>() {
        tz.to_timestamp(dt).map_err(|_| err())?
    } else if let Ok(d) = s.parse::<jiff::civil::Date>() {
        tz.to_timestamp(d.to_datetime(jiff::civil::Time::midnight()))
            .map_err(|_| err())?
    } else {
        return Err(err());
    };
    Ok(t.as_millisecond())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointsQuery {
    site: Option<String>,
    room: Option<String>,
    device: Option<String>,
    quantity: Option<String>,
    tz: Option<String>,
    format: Option<String>,
}

pub async fn points(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    query: QueryResult<PointsQuery>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| bad(e.body_text()))?;
    let fmt = format(q.format.as_deref(), &headers)?;
    let tz = zone(q.tz.as_deref(), &st)?;
    let filter = PointFilter {
        site: q.site,
        room: q.room,
        device: q.device,
        quantity: q.quantity,
    };
    let rows = st.reads.points(filter).await?;
    Ok(match fmt {
        Format::Json => {
            let points: Vec<Value> = rows.iter().map(|p| point_json(p, &tz)).collect();
            Json(json!({ "points": points })).into_response()
        }
        Format::Csv => {
            let mut out = String::from(
                "site,point,agent,room,device,quantity,unit,first_seen,last_seen,last_ts\n",
            );
            for p in &rows {
                let _ = writeln!(
                    out,
                    "{},{},{},{},{},{},{},{},{},{}",
                    p.site,
                    p.point,
                    p.agent,
                    p.room,
                    p.device,
                    p.quantity,
                    {
                        let mut u = Vec::new();
                        push_csv_text(&mut u, &p.unit);
                        String::from_utf8(u).unwrap_or_default()
                    },
                    show(p.first_seen, &tz),
                    show(p.last_seen, &tz),
                    p.last_ts.map(|t| show(t, &tz)).unwrap_or_default()
                );
            }
            csv(out)
        }
    })
}

fn point_json(p: &PointRow, tz: &TimeZone) -> Value {
    json!({
        "site": p.site, "point": p.point, "agent": p.agent, "room": p.room,
        "device": p.device, "quantity": p.quantity, "unit": p.unit,
        "first_seen": show(p.first_seen, tz), "last_seen": show(p.last_seen, tz),
        "last_ts": p.last_ts.map(|t| show(t, tz)),
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// One point id or several, comma-separated.
    point: Option<String>,
    site: Option<String>,
    from: Option<String>,
    to: Option<String>,
    step: Option<String>,
    tz: Option<String>,
    format: Option<String>,
}

pub async fn history(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    query: QueryResult<HistoryQuery>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| bad(e.body_text()))?;
    let fmt = format(q.format.as_deref(), &headers)?;
    let tz = zone(q.tz.as_deref(), &st)?;
    let names: Vec<String> = q
        .point
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect();
    if names.is_empty() {
        return Err(bad(
            "point: give one point id, or several separated by commas",
        ));
    }
    let now = Timestamp::now();
    let to = match &q.to {
        Some(s) => parse_time("to", s, &tz, now)?,
        None => now.as_millisecond(),
    };
    let from = match &q.from {
        Some(s) => parse_time("from", s, &tz, now)?,
        None => to - 3_600_000,
    };
    let step = match q.step.as_deref() {
        None | Some("auto") => None,
        Some("raw") => Some(None),
        Some(s) => {
            let d = roomguard_protocol::conf::parse_duration(s)
                .map_err(|e| bad(format!("step: {e}")))?;
            Some(Some(d.as_millis().min(i64::MAX as u128) as i64))
        }
    };
    let plan = history::plan(
        from,
        to,
        step,
        names.len(),
        now.as_millisecond(),
        &st.retention,
    )
    .map_err(|e| bad(e.to_string()))?;
    // Every name is looked up before anything is sent, so an unknown point
    // is a 404, not a broken answer.
    let (site, lookup) = (q.site.clone(), names);
    let found = st.reads.points_named(site.clone(), lookup.clone()).await?;
    let points =
        resolve(found, site.as_deref(), &lookup).map_err(|(code, msg)| ApiError(code, msg))?;
    let mut head = Vec::with_capacity(512);
    let ctype = match fmt {
        Format::Json => {
            let mut t = TimeWriter::new(tz.clone());
            head.extend_from_slice(b"{\"from\":\"");
            t.write(&mut head, plan.from);
            head.extend_from_slice(b"\",\"to\":\"");
            t.write(&mut head, plan.to);
            head.extend_from_slice(b"\",\"tz\":");
            push_json_str(&mut head, tz.iana_name().unwrap_or("UTC"));
            head.extend_from_slice(b",\"tier\":");
            push_json_str(&mut head, plan.tier.name());
            head.extend_from_slice(b",\"step\":");
            match plan.step {
                Some(s) => push_json_str(&mut head, &format!("{}s", s as f64 / 1000.0)),
                None => head.extend_from_slice(b"null"),
            }
            head.extend_from_slice(b",\"series\":[");
            "application/json"
        }
        Format::Csv => {
            head.extend_from_slice(if plan.step.is_none() {
                b"site,point,time,value,text,quality,reason\n".as_slice()
            } else {
                b"site,point,time,n,min,max,mean,last\n".as_slice()
            });
            "text/csv; charset=utf-8"
        }
    };
    let tail: &'static [u8] = match fmt {
        Format::Json => b"]}",
        Format::Csv => b"",
    };
    let mut pieces = render_pieces(st.reads.clone(), points, plan, tz, fmt);
    if plan.step.is_none() {
        // Raw answers can still be refused (too many samples in a series),
        // so they are whole before anything is sent; they are bounded by
        // MAX_POINTS_PER_SERIES.
        let mut body = head;
        while let Some(piece) = pieces.recv().await {
            let piece = piece
                .map_err(ApiError::from)?
                .map_err(|(code, msg)| ApiError(code, msg))?;
            body.extend_from_slice(&piece);
        }
        body.extend_from_slice(tail);
        return Ok(([(header::CONTENT_TYPE, ctype)], body).into_response());
    }
    // Bucketed answers go out as their pieces are rendered: the client
    // receives the first while the rest are being read, and a month of
    // 500 points is never held whole in memory. The first piece is awaited
    // before answering, so a store that cannot be read is still a 500.
    if let Some(first) = pieces.recv().await {
        let first = first
            .map_err(ApiError::from)?
            .map_err(|(code, msg)| ApiError(code, msg))?;
        head.extend_from_slice(&first);
    }
    let metrics = st.metrics.clone();
    let body = futures_util::stream::unfold(
        (Some(head), Some(pieces), Some(tail)),
        move |(mut head, mut pieces, mut tail)| {
            let metrics = metrics.clone();
            async move {
                if let Some(h) = head.take() {
                    return Some((Ok(axum::body::Bytes::from(h)), (None, pieces, tail)));
                }
                let next = pieces.as_mut()?.recv().await;
                let msg = match next {
                    Some(Ok(Ok(piece))) => {
                        return Some((Ok(axum::body::Bytes::from(piece)), (None, pieces, tail)))
                    }
                    None => {
                        return tail
                            .take()
                            .filter(|t| !t.is_empty())
                            .map(|t| (Ok(axum::body::Bytes::from_static(t)), (None, None, None)))
                    }
                    Some(Ok(Err((_, msg)))) => msg,
                    Some(Err(e)) => e.to_string(),
                };
                // The status line is gone: the answer ends broken rather than
                // silently short, and the failure is logged and counted.
                tracing::error!(error = %msg, "history answer cut short");
                metrics.store_errors.inc();
                Some((Err(std::io::Error::other(msg)), (None, None, None)))
            }
        },
    );
    Ok((
        [(header::CONTENT_TYPE, ctype)],
        axum::body::Body::from_stream(body),
    )
        .into_response())
}

type Refusal = (StatusCode, String);

/// The one point each name means, from every point of each name.
fn resolve(
    found: Vec<Vec<PointRow>>,
    site: Option<&str>,
    names: &[String],
) -> Result<Vec<PointRow>, Refusal> {
    let mut out = Vec::with_capacity(names.len());
    for (name, found) in names.iter().zip(found) {
        match found.len() {
            0 => {
                let msg = match site {
                    Some(s) => format!("point: no point {name:?} in site {s:?}"),
                    None => format!("point: no point {name:?}"),
                };
                return Err((StatusCode::NOT_FOUND, msg));
            }
            1 => out.extend(found),
            _ => {
                let sites: Vec<&str> = found.iter().map(|p| p.site.as_str()).collect();
                return Err((
                    StatusCode::BAD_REQUEST,
                    format!(
                        "point: {name:?} exists in several sites ({}); give site=…",
                        sites.join(", ")
                    ),
                ));
            }
        }
    }
    Ok(out)
}

/// Points per rendered piece of an answer.
const PIECE_POINTS: usize = 25;

type Piece = Result<Result<Vec<u8>, Refusal>, StoreError>;

/// Reads and renders `points` in pieces, one per core at a time (on SQLite
/// each on its own read-only connection); the pieces arrive in order.
/// JSON pieces are series objects separated by commas and start with one
/// when they are not the first.
fn render_pieces(
    reads: crate::store::backend::Reads,
    points: Vec<PointRow>,
    plan: history::Plan,
    tz: TimeZone,
    fmt: Format,
) -> tokio::sync::mpsc::Receiver<Piece> {
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pieces: Vec<std::sync::Arc<[PointRow]>> = points
        .chunks(PIECE_POINTS)
        .map(std::sync::Arc::from)
        .collect();
    tokio::spawn(async move {
        let mut running = std::collections::VecDeque::new();
        let mut pieces = pieces.into_iter().enumerate();
        loop {
            while running.len() < cores {
                let Some((i, piece)) = pieces.next() else {
                    break;
                };
                let (reads, tz) = (reads.clone(), tz.clone());
                running.push_back(tokio::spawn(async move {
                    let points = piece.clone();
                    reads
                        .with_histories(piece, plan, move |series| {
                            render_piece(&points, series, i > 0, tz, fmt)
                        })
                        .await?
                }));
            }
            let Some(next) = running.pop_front() else {
                return;
            };
            let piece = next
                .await
                .unwrap_or_else(|e| Err(StoreError::Task(e.to_string())));
            let failed = !matches!(piece, Ok(Ok(_)));
            // The client went away, or the answer is over: stop reading.
            if tx.send(piece).await.is_err() || failed {
                return;
            }
        }
    });
    rx
}

/// Reads and renders some of an answer's points, one series at a time.
fn render_piece(
    points: &[PointRow],
    series: &mut dyn FnMut(usize) -> Result<Series, StoreError>,
    after_first: bool,
    tz: TimeZone,
    fmt: Format,
) -> Piece {
    let mut t = TimeWriter::new(tz);
    let mut out = Vec::new();
    for (k, p) in points.iter().enumerate() {
        let series = series(k)?;
        if let Series::Raw(v) = &series {
            if v.len() as i64 > history::MAX_POINTS_PER_SERIES {
                return Ok(Err((
                    StatusCode::BAD_REQUEST,
                    format!(
                        "{}: more than {} raw samples in the range; give a step or a shorter range",
                        p.point,
                        history::MAX_POINTS_PER_SERIES
                    ),
                )));
            }
        }
        let values = match &series {
            Series::Raw(v) => v.len(),
            Series::Buckets(b) => b.len(),
        };
        out.reserve(128 + 110 * values);
        match fmt {
            Format::Json => {
                if k > 0 || after_first {
                    out.push(b',');
                }
                series_json(p, &series, &mut t, &mut out);
            }
            Format::Csv => series_csv(p, &series, &mut t, &mut out),
        }
    }
    Ok(Ok(out))
}

fn series_json(p: &PointRow, s: &Series, t: &mut TimeWriter, out: &mut Vec<u8>) {
    for (j, (key, value)) in [
        ("site", &p.site),
        ("point", &p.point),
        ("room", &p.room),
        ("device", &p.device),
        ("quantity", &p.quantity),
        ("unit", &p.unit),
    ]
    .into_iter()
    .enumerate()
    {
        out.push(if j == 0 { b'{' } else { b',' });
        push_json_str(out, key);
        out.push(b':');
        push_json_str(out, value);
    }
    out.extend_from_slice(b",\"values\":[");
    match s {
        Series::Raw(v) => {
            for (k, x) in v.iter().enumerate() {
                if k > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(b"{\"t\":\"");
                t.write(out, x.ts);
                out.extend_from_slice(b"\",\"v\":");
                push_f64(out, x.value.unwrap_or(f64::NAN));
                out.extend_from_slice(if x.bad.is_none() {
                    b",\"quality\":\"good\"".as_slice()
                } else {
                    b",\"quality\":\"bad\"".as_slice()
                });
                if let Some(text) = &x.text {
                    out.extend_from_slice(b",\"text\":");
                    push_json_str(out, text);
                }
                if let Some(reason) = &x.bad {
                    out.extend_from_slice(b",\"reason\":");
                    push_json_str(out, reason);
                }
                out.push(b'}');
            }
        }
        Series::Buckets(b) => {
            for (k, b) in b.iter().enumerate() {
                if k > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(b"{\"t\":\"");
                t.write(out, b.start);
                out.extend_from_slice(b"\",\"n\":");
                push_i64(out, b.n);
                for (key, v) in [
                    (b",\"min\":".as_slice(), b.min),
                    (b",\"max\":".as_slice(), b.max),
                    (b",\"mean\":".as_slice(), b.mean()),
                    (b",\"last\":".as_slice(), b.last),
                ] {
                    out.extend_from_slice(key);
                    push_f64(out, v);
                }
                out.push(b'}');
            }
        }
    }
    out.extend_from_slice(b"]}");
}

fn series_csv(p: &PointRow, s: &Series, t: &mut TimeWriter, out: &mut Vec<u8>) {
    let head = |out: &mut Vec<u8>, t: &mut TimeWriter, ts: i64| {
        out.extend_from_slice(p.site.as_bytes());
        out.push(b',');
        out.extend_from_slice(p.point.as_bytes());
        out.push(b',');
        t.write(out, ts);
    };
    match s {
        Series::Raw(v) => {
            for x in v {
                head(out, t, x.ts);
                out.push(b',');
                if let Some(v) = x.value {
                    push_f64(out, v);
                }
                out.push(b',');
                push_csv_text(out, x.text.as_deref().unwrap_or(""));
                out.extend_from_slice(if x.bad.is_none() { b",good," } else { b",bad," });
                push_csv_text(out, x.bad.as_deref().unwrap_or(""));
                out.push(b'\n');
            }
        }
        Series::Buckets(b) => {
            for b in b {
                head(out, t, b.start);
                out.push(b',');
                push_i64(out, b.n);
                for v in [b.min, b.max, b.mean(), b.last] {
                    out.push(b',');
                    push_f64(out, v);
                }
                out.push(b'\n');
            }
        }
    }
}

fn csv(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_in_every_accepted_form() {
        let tz = TimeZone::get("Asia/Shanghai").unwrap();
        let now: Timestamp = "2026-11-28T04:00:00Z".parse().unwrap();
        let ms = |s: &str| parse_time("from", s, &tz, now).unwrap();
        let expect: Timestamp = "2026-11-01T00:00:00+08:00".parse().unwrap();
        assert_eq!(ms("2026-11-01T00:00:00+08:00"), expect.as_millisecond());
        assert_eq!(
            ms("2026-11-01"),
            expect.as_millisecond(),
            "a date is local midnight"
        );
        assert_eq!(ms("2026-11-01T00:00:00"), expect.as_millisecond());
        assert_eq!(ms("now"), now.as_millisecond());
        assert_eq!(ms("now-24h"), now.as_millisecond() - 86_400_000);
        assert!(parse_time("from", "yesterday", &tz, now).is_err());
    }

    #[test]
    fn output_times_carry_the_zone_offset() {
        let tz = TimeZone::get("Asia/Shanghai").unwrap();
        assert_eq!(show(0, &tz), "1970-01-01T08:00:00+08:00");
    }

    proptest::proptest! {
        /// Any time parameter: a time or a 400 naming the parameter; never a panic.
        #[test]
        fn any_time_parameter_parses_or_is_refused(s in "(now[-+])?[0-9a-zA-Z:.+ -]{0,40}") {
            let tz = TimeZone::get("Asia/Shanghai").unwrap();
            let now: Timestamp = "2026-11-28T04:00:00Z".parse().unwrap();
            if let Err(e) = parse_time("from", &s, &tz, now) {
                proptest::prop_assert_eq!(e.0, StatusCode::BAD_REQUEST);
                proptest::prop_assert!(e.1.starts_with("from"));
            }
        }
    }
}
