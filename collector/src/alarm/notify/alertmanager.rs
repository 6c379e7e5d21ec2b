//! Prometheus Alertmanager, API v2: each alarm is an alert labelled by its
//! serial, so posting it again updates it; a cleared alarm has `endsAt`.
//! Active alarms are posted again every minute (`refresh`), as Alertmanager
//! resolves alerts it stops hearing about.

use super::Request;
use crate::alarm::lifecycle::level_name;
use serde_json::{json, Value};

pub fn url(base: &str) -> String {
    format!("{}/api/v2/alerts", base.trim_end_matches('/'))
}

pub fn request(base: &str, doc: &Value, link: Option<&str>) -> Request {
    Request {
        url: url(base),
        body: json!([alert(doc, link)]),
    }
}

fn rfc3339(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// An Alertmanager v2 alert. Labels identify the alarm (its serial), so a
/// repeated post updates the same alert; a cleared alarm has `endsAt`.
pub fn alert(d: &Value, link: Option<&str>) -> Value {
    let s = |k: &str| d[k].as_str().unwrap_or("").to_owned();
    let level = d["level"].as_u64().unwrap_or(4) as u8;
    let mut alert = json!({
        "labels": {
            "alertname": s("rule"),
            "severity": level_name(level).0,
            "level": level.to_string(),
            "category": s("category"),
            "site": s("site"),
            "room": s("room"),
            "device": s("device"),
            "point": s("point"),
            "serial": d["serial"].to_string(),
        },
        "annotations": {
            "summary": s("name"),
            "summary_zh": s("name_zh"),
            "advice": s("advice"),
            "source": s("source"),
            "value": d["value"].to_string(),
        },
        "startsAt": rfc3339(d["raised_at"].as_i64().unwrap_or(0)),
    });
    if let Some(end) = d["cleared_at"].as_i64() {
        alert["endsAt"] = json!(rfc3339(end));
    }
    // A label, so Alertmanager routes can send drills elsewhere or nowhere.
    if let Some(id) = d["drill"].as_i64() {
        alert["labels"]["drill"] = json!(id.to_string());
    }
    if let Some(link) = link {
        alert["generatorURL"] = json!(format!("{link}/#alarm/{}", d["serial"]));
    }
    alert
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_alert_names_the_alarm_and_ends_when_cleared() {
        let d = json!({"rule": "fire.smoke", "level": 1, "serial": 7, "site": "s", "room": "r", "name": "Smoke",
                       "raised_at": 1_700_000_000_000i64, "cleared_at": 1_700_000_060_000i64});
        let a = alert(&d, None);
        assert_eq!(a["labels"]["alertname"], "fire.smoke");
        assert_eq!(a["labels"]["severity"], "critical");
        assert_eq!(a["labels"]["serial"], "7");
        assert_eq!(a["startsAt"], "2023-11-14T22:13:20Z");
        assert_eq!(a["endsAt"], "2023-11-14T22:14:20Z");
    }
}
