//! The text of a notification for people (robots, email): what happened,
//! where, the value, what to do, in Chinese or English.

use crate::alarm::lifecycle::level_name;
use jiff::tz::TimeZone;
use serde_json::Value;

/// A short text message for robots and email, in `language` (`zh` or
/// `en`), times in `tz`, with a link to the alarm when the site URL is known.
pub fn text(d: &Value, language: &str, tz: &TimeZone, link: Option<&str>) -> String {
    let zh = language == "zh";
    let s = |k: &str| d[k].as_str().unwrap_or("").to_owned();
    let level = d["level"].as_u64().unwrap_or(4) as u8;
    let (en, lz) = level_name(level);
    let kind = d["kind"].as_str().unwrap_or("");
    let head = match (kind, zh) {
        ("raise", true) => format!("【{lz}告警】{}", s("name_zh")),
        ("clear", true) => format!("【告警恢复】{}", s("name_zh")),
        ("ack", true) => format!("【告警已确认】{}", s("name_zh")),
        ("repeat", true) => format!("【未确认提醒】{}", s("name_zh")),
        ("escalate", true) => format!("【告警升级】{}", s("name_zh")),
        ("hazard_overdue", true) => format!("【隐患逾期】{}", s("name_zh")),
        ("hazard_overdue", false) => format!("[hazard overdue] {}", s("name")),
        ("raise", false) => format!("[{en} alarm] {}", s("name")),
        ("clear", false) => format!("[cleared] {}", s("name")),
        ("ack", false) => format!("[acknowledged] {}", s("name")),
        ("repeat", false) => format!("[still unacknowledged] {}", s("name")),
        (_, false) => format!("[escalated] {}", s("name")),
        (_, true) => s("name_zh"),
    };
    // A drill's alarm says so before anything else: nobody should run for
    // an extinguisher because of an exercise.
    let head = match (d["drill"].as_i64(), zh) {
        (Some(id), true) => format!("【演练 #{id}】{head}"),
        (Some(id), false) => format!("[DRILL #{id}] {head}"),
        (None, _) => head,
    };
    let time = |k: &str| {
        d[k].as_i64()
            .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
            .map(|t| {
                t.to_zoned_datetime(tz.clone())
                    .strftime("%Y-%m-%d %H:%M:%S %:z")
                    .to_string()
            })
            .unwrap_or_default()
    };
    let value = d["value"]
        .as_f64()
        .map(|v| format!("{v}"))
        .unwrap_or_else(|| "-".into());
    let mut lines = vec![head];
    // Part of an incident: say which, and what else it holds, so one message
    // tells the whole fault (another alarm of it is sent only when it is news).
    let serial = d["serial"].as_u64();
    let lead = d["incident"].as_u64();
    let others: Vec<String> = d["incident_alarms"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|m| m["serial"].as_u64() != serial)
                .take(8)
                .map(|m| {
                    let (en, lz) = level_name(m["level"].as_u64().unwrap_or(4) as u8);
                    let name = m["name"].as_str().unwrap_or("");
                    let over = m["cleared"].as_bool() == Some(true);
                    match (zh, over) {
                        (true, false) => format!("#{} {name}（{lz}）", m["serial"]),
                        (true, true) => format!("#{} {name}（{lz}，已恢复）", m["serial"]),
                        (false, false) => format!("#{} {name} ({en})", m["serial"]),
                        (false, true) => format!("#{} {name} ({en}, cleared)", m["serial"]),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    if let Some(lead) = lead.filter(|l| Some(*l) != serial) {
        lines.push(match zh {
            true => format!("属于事件 #{lead}"),
            false => format!("Part of incident #{lead}"),
        });
    }
    if !others.is_empty() {
        lines.push(match zh {
            true => format!("同一事件：{}", others.join("，")),
            false => format!("Same incident: {}", others.join(", ")),
        });
    }
    if zh {
        lines.push(format!("站点：{}　房间：{}", s("site"), s("room")));
        lines.push(format!(
            "设备：{}　测点：{}　值：{value}",
            s("device"),
            s("point")
        ));
        lines.push(format!("发生：{}", time("raised_at")));
        if kind == "clear" {
            lines.push(format!("恢复：{}", time("cleared_at")));
        }
        if kind == "ack" {
            lines.push(format!(
                "确认人：{}　{}",
                s("acknowledged_by"),
                s("comment")
            ));
        }
        if d["late"].as_bool() == Some(true) {
            lines.push("（迟报：事件发生时未能及时上报，时间为实际发生时间）".into());
        }
        if !s("advice_zh").is_empty() {
            lines.push(format!("处置：{}", s("advice_zh")));
        }
        lines.push(format!("流水号：{}　依据：{}", d["serial"], s("source")));
    } else {
        lines.push(format!("Site: {}  Room: {}", s("site"), s("room")));
        lines.push(format!(
            "Device: {}  Point: {}  Value: {value}",
            s("device"),
            s("point")
        ));
        lines.push(format!("Raised: {}", time("raised_at")));
        if kind == "clear" {
            lines.push(format!("Cleared: {}", time("cleared_at")));
        }
        if kind == "ack" {
            lines.push(format!(
                "Acknowledged by {}: {}",
                s("acknowledged_by"),
                s("comment")
            ));
        }
        if d["late"].as_bool() == Some(true) {
            lines.push(
                "(Late: this happened while it could not be reported; times are when it happened)"
                    .into(),
            );
        }
        if !s("advice").is_empty() {
            lines.push(format!("Do: {}", s("advice")));
        }
        lines.push(format!("Serial {}  Source: {}", d["serial"], s("source")));
    }
    if let Some(link) = link {
        lines.push(format!("{link}/#alarm/{}", d["serial"]));
    }
    lines.join("\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_follow_up_names_its_incident_and_what_else_it_holds() {
        let d = json!({"kind": "raise", "level": 1, "serial": 9, "name": "Mains failure",
            "name_zh": "市电停电", "incident": 7, "incident_alarms": [
                {"serial": 7, "name": "Phase loss", "level": 2},
                {"serial": 9, "name": "Mains failure", "level": 1}]});
        let tz = TimeZone::UTC;
        let en = text(&d, "en", &tz, None);
        assert!(en.contains("Part of incident #7"), "{en}");
        assert!(en.contains("Same incident: #7 Phase loss (major)"), "{en}");
        assert!(!en.contains("#9 Mains failure (critical)"), "{en}");
        let zh = text(&d, "zh", &tz, None);
        assert!(
            zh.contains("属于事件 #7") && zh.contains("#7 Phase loss（二级）"),
            "{zh}"
        );
        // The incident's first alarm alone: no incident lines.
        let lead = json!({"kind": "raise", "level": 2, "serial": 7, "name": "Phase loss",
            "incident": 7, "incident_alarms": [{"serial": 7, "name": "Phase loss", "level": 2}]});
        let en = text(&lead, "en", &tz, None);
        assert!(!en.contains("ncident"), "{en}");
    }

    #[test]
    fn a_drill_alarm_says_drill_first_in_either_language() {
        let d =
            json!({"kind": "raise", "level": 1, "name": "Smoke", "name_zh": "烟感", "drill": 4});
        let tz = TimeZone::UTC;
        assert!(text(&d, "en", &tz, None).starts_with("[DRILL #4] [critical alarm] Smoke"));
        assert!(text(&d, "zh", &tz, None).starts_with("【演练 #4】【一级告警】烟感"));
        let real = json!({"kind": "raise", "level": 1, "name": "Smoke", "drill": null});
        assert!(!text(&real, "en", &tz, None).contains("DRILL"));
    }

    #[test]
    fn a_raise_reads_level_place_value_and_advice_in_either_language() {
        let d = json!({"kind": "raise", "level": 1, "name": "Hydrogen", "name_zh": "氢气",
            "site": "s", "room": "battery-room", "device": "br-h2-1", "point": "br-h2-1.h2",
            "value": 27.5, "raised_at": 1_700_000_000_000i64, "serial": 9,
            "advice": "Ventilate", "advice_zh": "通风", "source": "GB"});
        let en = text(&d, "en", &TimeZone::UTC, Some("https://rg.example"));
        assert!(en.starts_with("[critical alarm] Hydrogen"), "{en}");
        assert!(
            en.contains("Value: 27.5") && en.contains("Do: Ventilate"),
            "{en}"
        );
        assert!(en.ends_with("https://rg.example/#alarm/9"), "{en}");
        let zh = text(&d, "zh", &TimeZone::UTC, None);
        assert!(
            zh.starts_with("【一级告警】氢气") && zh.contains("处置：通风"),
            "{zh}"
        );
    }
}
