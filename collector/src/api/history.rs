//! `GET /api/v1/points` and `GET /api/v1/history`: the catalogue, and any
//! point's history at a resolution the store can answer from one tier
//! (store/history.rs plans it). Times go out in RFC 3339 with the offset of
//! the asked time zone (`tz`, default from `http.time_zone`); they are
//! stored in UTC. JSON by default, CSV with `format=csv` or `Accept: text/csv`.

use super::{read_store, ApiError, AppState};
use crate::store::history::{self, PointFilter, PointRow, Series};
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

fn bad(msg: impl Into<String>) -> ApiError {
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

fn zone(asked: Option<&str>, st: &AppState) -> Result<TimeZone, ApiError> {
    let name = asked.unwrap_or(&st.time_zone);
    TimeZone::get(name).map_err(|_| {
        bad(format!(
            "tz: {name:?} is not a known IANA time zone (e.g. Asia/Shanghai)"
        ))
    })
}

/// `t` in `tz` as RFC 3339 with its offset.
fn show(ms: i64, tz: &TimeZone) -> String {
    match Timestamp::from_millisecond(ms) {
        Ok(t) => {
            let offset = tz.to_offset(t);
            t.display_with_offset(offset).to_string()
        }
        Err(_) => ms.to_string(),
    }
}

/// A time parameter: RFC 3339 with offset, a local date or date-time in
/// `tz`, `now`, or `now-<duration>` (e.g. `now-24h`).
fn parse_time(name: &str, s: &str, tz: &TimeZone, now: Timestamp) -> Result<i64, ApiError> {
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
    let rows = read_store(&st, move |r| r.points(&filter)).await?;
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
                    csv_text(&p.unit),
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
    let site = q.site.clone();
    let answer = read_store(&st, move |r| {
        let mut out = Vec::with_capacity(names.len());
        for name in &names {
            let found = r.points_named(site.as_deref(), name)?;
            match found.len() {
                0 => {
                    return Ok(Err((
                        StatusCode::NOT_FOUND,
                        match &site {
                            Some(s) => format!("point: no point {name:?} in site {s:?}"),
                            None => format!("point: no point {name:?}"),
                        },
                    )))
                }
                1 => {}
                _ => {
                    let sites: Vec<&str> = found.iter().map(|p| p.site.as_str()).collect();
                    return Ok(Err((
                        StatusCode::BAD_REQUEST,
                        format!(
                            "point: {name:?} exists in several sites ({}); give site=…",
                            sites.join(", ")
                        ),
                    )));
                }
            }
            let p = found.into_iter().next().expect("one");
            let series = r.history(p.id, &plan)?;
            out.push((p, series));
        }
        Ok(Ok(out))
    })
    .await?
    .map_err(|(code, msg)| ApiError(code, msg))?;
    if let Some((p, Series::Raw(s))) = answer.iter().find(
        |(_, s)| matches!(s, Series::Raw(v) if v.len() as i64 > history::MAX_POINTS_PER_SERIES),
    ) {
        return Err(bad(format!(
            "{}: more than {} raw samples in the range (got {}+); give a step or a shorter range",
            p.point,
            history::MAX_POINTS_PER_SERIES,
            s.len()
        )));
    }
    let step_text = plan.step.map(|s| format!("{}s", s as f64 / 1000.0));
    Ok(match fmt {
        Format::Json => {
            let series: Vec<Value> = answer
                .iter()
                .map(|(p, s)| {
                    let values: Vec<Value> = match s {
                        Series::Raw(v) => v
                            .iter()
                            .map(|x| {
                                let mut o = json!({ "t": show(x.ts, &tz), "v": x.value,
                                    "quality": if x.bad.is_none() { "good" } else { "bad" } });
                                if let Some(t) = &x.text {
                                    o["text"] = json!(t);
                                }
                                if let Some(b) = &x.bad {
                                    o["reason"] = json!(b);
                                }
                                o
                            })
                            .collect(),
                        Series::Buckets(b) => b
                            .iter()
                            .map(|b| {
                                json!({ "t": show(b.start, &tz), "n": b.n, "min": b.min,
                                "max": b.max, "mean": b.mean(), "last": b.last })
                            })
                            .collect(),
                    };
                    json!({ "site": p.site, "point": p.point, "room": p.room, "device": p.device,
                        "quantity": p.quantity, "unit": p.unit, "values": values })
                })
                .collect();
            Json(json!({
                "from": show(plan.from, &tz), "to": show(plan.to, &tz),
                "tz": tz.iana_name().unwrap_or("UTC"), "tier": plan.tier.name(), "step": step_text,
                "series": series,
            }))
            .into_response()
        }
        Format::Csv => {
            let raw = plan.step.is_none();
            let mut out = String::from(if raw {
                "site,point,time,value,text,quality,reason\n"
            } else {
                "site,point,time,n,min,max,mean,last\n"
            });
            for (p, s) in &answer {
                match s {
                    Series::Raw(v) => {
                        for x in v {
                            let _ = writeln!(
                                out,
                                "{},{},{},{},{},{},{}",
                                p.site,
                                p.point,
                                show(x.ts, &tz),
                                x.value.map(|v| v.to_string()).unwrap_or_default(),
                                x.text.as_deref().map(csv_text).unwrap_or_default(),
                                if x.bad.is_none() { "good" } else { "bad" },
                                x.bad.as_deref().map(csv_text).unwrap_or_default()
                            );
                        }
                    }
                    Series::Buckets(b) => {
                        for b in b {
                            let _ = writeln!(
                                out,
                                "{},{},{},{},{},{},{},{}",
                                p.site,
                                p.point,
                                show(b.start, &tz),
                                b.n,
                                b.min,
                                b.max,
                                b.mean(),
                                b.last
                            );
                        }
                    }
                }
            }
            csv(out)
        }
    })
}

/// A text field for CSV: quoted when it holds a comma, quote or line break.
fn csv_text(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
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

    #[test]
    fn csv_text_is_quoted_only_when_needed() {
        assert_eq!(csv_text("°C"), "°C");
        assert_eq!(csv_text("a,\"b\""), "\"a,\"\"b\"\"\"");
    }
}
