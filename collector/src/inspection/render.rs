//! Reports as CSV (one table per file) and as a printable HTML page with SVG
//! charts, in English or Chinese. The HTML is self-contained (no scripts, no
//! fetched assets) and paginates cleanly when printed to PDF from a browser.

use super::report::{Report, YearReport};
use std::fmt::Write as _;

/// The CSV tables of a report, by name.
pub const TABLES: [&str; 7] = [
    "alarms",
    "longest_open",
    "completeness",
    "exceedance",
    "hazards",
    "patrols",
    "drills",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    En,
    Zh,
}

impl Lang {
    pub fn parse(s: &str) -> Option<Lang> {
        match s {
            "en" => Some(Lang::En),
            "zh" | "zh-CN" => Some(Lang::Zh),
            _ => None,
        }
    }
}

fn csv_field(s: &str) -> String {
    // Text a spreadsheet would run as a formula is kept as text. Numbers
    // (a negative limit) stay numbers.
    let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) && s.parse::<f64>().is_err() {
        format!("'{s}")
    } else {
        s.to_owned()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

fn opt(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.1}")).unwrap_or_default()
}

/// A report as JSON with its times in RFC 3339 in the report's zone, as
/// every answer of the API gives times (the report itself keeps ms).
pub fn json<T: serde::Serialize>(r: &T, tz: &jiff::tz::TimeZone) -> String {
    const TIMES: [&str; 7] = [
        "from",
        "to",
        "until",
        "raised_at",
        "cleared_at",
        "started_at",
        "ended_at",
    ];
    fn walk(v: &mut serde_json::Value, tz: &jiff::tz::TimeZone) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m.iter_mut() {
                    let at = x.as_i64().filter(|_| TIMES.contains(&k.as_str()));
                    match at.and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok()) {
                        Some(t) => {
                            *x = serde_json::json!(t
                                .display_with_offset(tz.to_offset(t))
                                .to_string())
                        }
                        None => walk(x, tz),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(|x| walk(x, tz)),
            _ => {}
        }
    }
    let mut v = serde_json::to_value(r).unwrap_or(serde_json::Value::Null);
    walk(&mut v, tz);
    serde_json::to_string_pretty(&v).unwrap_or_default()
}

fn time(ms: i64, tz: &jiff::tz::TimeZone) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| {
            t.to_zoned_datetime(tz.clone())
                .strftime("%Y-%m-%d %H:%M")
                .to_string()
        })
        .unwrap_or_default()
}

/// One table as CSV; `None` for an unknown name.
pub fn csv(r: &Report, table: &str, tz: &jiff::tz::TimeZone) -> Option<String> {
    let mut out = String::new();
    let mut row = |fields: Vec<String>| {
        let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        out.push_str(&line.join(","));
        out.push_str("\r\n");
    };
    let period = r.period.label.clone();
    match table {
        "alarms" => {
            row([
                "period",
                "level",
                "category",
                "raised",
                "inhibited",
                "acknowledged",
                "ack_mean_s",
                "ack_median_s",
                "cleared",
                "clear_mean_s",
                "clear_median_s",
            ]
            .map(String::from)
            .to_vec());
            for a in &r.alarms {
                row(vec![
                    period.clone(),
                    a.level.to_string(),
                    a.category.clone(),
                    a.raised.to_string(),
                    a.inhibited.to_string(),
                    a.acknowledged.to_string(),
                    opt(a.ack_mean_s),
                    opt(a.ack_median_s),
                    a.cleared.to_string(),
                    opt(a.clear_mean_s),
                    opt(a.clear_median_s),
                ]);
            }
        }
        "longest_open" => {
            row([
                "period",
                "serial",
                "rule",
                "name",
                "level",
                "site",
                "room",
                "raised_at",
                "cleared_at",
                "open_s",
            ]
            .map(String::from)
            .to_vec());
            for a in &r.longest_open {
                row(vec![
                    period.clone(),
                    a.serial.to_string(),
                    a.rule.clone(),
                    a.name.clone(),
                    a.level.to_string(),
                    a.site.clone(),
                    a.room.clone(),
                    time(a.raised_at, tz),
                    a.cleared_at.map(|t| time(t, tz)).unwrap_or_default(),
                    a.open_s.to_string(),
                ]);
            }
        }
        "completeness" => {
            row([
                "period",
                "site",
                "room",
                "points",
                "completeness",
                "worst_point",
                "worst",
            ]
            .map(String::from)
            .to_vec());
            for c in &r.completeness {
                row(vec![
                    period.clone(),
                    c.site.clone(),
                    c.room.clone(),
                    c.points.to_string(),
                    format!("{:.4}", c.completeness),
                    c.worst_point.clone(),
                    format!("{:.4}", c.worst),
                ]);
            }
        }
        "exceedance" => {
            row([
                "period", "site", "room", "point", "rule", "level", "kind", "limit", "minutes",
            ]
            .map(String::from)
            .to_vec());
            for e in &r.exceedance {
                row(vec![
                    period.clone(),
                    e.site.clone(),
                    e.room.clone(),
                    e.point.clone(),
                    e.rule.clone(),
                    e.level.to_string(),
                    e.kind.to_owned(),
                    e.limit.to_string(),
                    e.minutes.to_string(),
                ]);
            }
        }
        "hazards" => {
            row([
                "period",
                "opened",
                "opened_major",
                "closed",
                "overdue",
                "open_at_end",
                "open_major_at_end",
            ]
            .map(String::from)
            .to_vec());
            let h = &r.hazards;
            row(vec![
                period.clone(),
                h.opened.to_string(),
                h.opened_major.to_string(),
                h.closed.to_string(),
                h.overdue.to_string(),
                h.open_at_end.to_string(),
                h.open_major_at_end.to_string(),
            ]);
        }
        "patrols" => {
            row(["period", "site", "room", "planned", "done", "manual"]
                .map(String::from)
                .to_vec());
            for p in &r.patrols {
                row(vec![
                    period.clone(),
                    p.site.clone(),
                    p.room.clone(),
                    p.planned.to_string(),
                    p.done.to_string(),
                    p.manual.to_string(),
                ]);
            }
        }
        "drills" => {
            row([
                "period",
                "site",
                "room",
                "scenario",
                "started_at",
                "ended_at",
                "alarms",
                "worst_level",
                "first_alarm_s",
                "first_ack_s",
                "by",
                "note",
            ]
            .map(String::from)
            .to_vec());
            for d in &r.drills {
                let s = |k: &str| d[k].as_str().unwrap_or("").to_owned();
                let t = |k: &str| d[k].as_i64().map(|v| time(v, tz)).unwrap_or_default();
                let n = |k: &str| d[k].as_i64().map(|v| v.to_string()).unwrap_or_default();
                row(vec![
                    period.clone(),
                    s("site"),
                    s("room"),
                    s("scenario"),
                    t("started_at"),
                    t("ended_at"),
                    n("alarms"),
                    n("worst_level"),
                    n("first_alarm_s"),
                    n("first_ack_s"),
                    s("by"),
                    s("note"),
                ]);
            }
        }
        _ => return None,
    }
    Some(out)
}

/// A year's table: the months one after another.
pub fn csv_year(y: &YearReport, table: &str, tz: &jiff::tz::TimeZone) -> Option<String> {
    let mut out = String::new();
    for (i, m) in y.months.iter().enumerate() {
        let t = csv(m, table, tz)?;
        // The header once.
        let body = if i == 0 {
            t.as_str()
        } else {
            t.split_once("\r\n").map_or("", |x| x.1)
        };
        out.push_str(body);
    }
    if y.months.is_empty() {
        return csv(&empty_like(y), table, tz);
    }
    Some(out)
}

fn empty_like(y: &YearReport) -> Report {
    Report {
        site: y.site.clone(),
        period: super::report::Period {
            label: y.year.clone(),
            from: 0,
            to: 0,
        },
        time_zone: y.time_zone.clone(),
        until: 0,
        alarms: vec![],
        longest_open: vec![],
        completeness: vec![],
        exceedance: vec![],
        hazards: Default::default(),
        patrols: vec![],
        drills: vec![],
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Words of the printable report.
struct Words {
    title_month: &'static str,
    title_year: &'static str,
    all_sites: &'static str,
    site: &'static str,
    generated: &'static str,
    alarms: &'static str,
    level: &'static str,
    category: &'static str,
    raised: &'static str,
    inhibited: &'static str,
    acked: &'static str,
    ack_time: &'static str,
    cleared: &'static str,
    clear_time: &'static str,
    longest: &'static str,
    name: &'static str,
    room: &'static str,
    raised_at: &'static str,
    open_for: &'static str,
    completeness: &'static str,
    points: &'static str,
    worst: &'static str,
    exceedance: &'static str,
    point: &'static str,
    limit: &'static str,
    minutes: &'static str,
    hazards: &'static str,
    opened: &'static str,
    opened_major: &'static str,
    closed: &'static str,
    overdue: &'static str,
    open_end: &'static str,
    open_major_end: &'static str,
    patrols: &'static str,
    planned: &'static str,
    done: &'static str,
    manual: &'static str,
    drills: &'static str,
    scenario: &'static str,
    started: &'static str,
    ended: &'static str,
    drill_alarms: &'static str,
    to_first_alarm: &'static str,
    to_first_ack: &'static str,
    whole_site: &'static str,
    drills_apart: &'static str,
    by: &'static str,
    none: &'static str,
    month_by_month: &'static str,
    month: &'static str,
    levels: [&'static str; 4],
}

const EN: Words = Words {
    title_month: "Monthly safety report",
    title_year: "Yearly safety summary",
    all_sites: "All sites",
    site: "Site",
    generated: "Figures up to",
    alarms: "Alarms by level and category",
    level: "Level",
    category: "Category",
    raised: "Raised",
    inhibited: "Inhibited",
    acked: "Acknowledged",
    ack_time: "Time to acknowledge (mean / median)",
    cleared: "Cleared",
    clear_time: "Time to clear (mean / median)",
    longest: "Longest-open alarms",
    name: "Alarm",
    room: "Room",
    raised_at: "Raised at",
    open_for: "Open for",
    completeness: "Data completeness per room",
    points: "Points",
    worst: "Least complete point",
    exceedance: "Minutes beyond each limit",
    point: "Point",
    limit: "Limit",
    minutes: "Minutes",
    hazards: "Hidden hazards",
    opened: "Opened",
    opened_major: "of which major",
    closed: "Closed",
    overdue: "Overdue",
    open_end: "Open at the end",
    open_major_end: "Major open at the end (target 0)",
    patrols: "Patrols done against planned",
    planned: "Planned",
    done: "Done",
    manual: "Manual walk-throughs",
    drills: "Drills",
    scenario: "Scenario",
    started: "Started",
    ended: "Ended",
    drill_alarms: "Alarms (worst)",
    to_first_alarm: "Start to first alarm",
    to_first_ack: "First alarm to acknowledgement",
    whole_site: "whole site",
    drills_apart:
        "Alarms raised inside a declared drill are counted here, not in the alarm tables above.",
    by: "By",
    none: "None.",
    month_by_month: "Month by month",
    month: "Month",
    levels: ["L1 critical", "L2 major", "L3 minor", "L4 hint"],
};

const ZH: Words = Words {
    title_month: "安全生产月报",
    title_year: "安全生产年度总结",
    all_sites: "全部站点",
    site: "站点",
    generated: "数据截至",
    alarms: "告警（按级别和类别）",
    level: "级别",
    category: "类别",
    raised: "告警数",
    inhibited: "被抑制",
    acked: "已确认",
    ack_time: "确认用时（平均 / 中位）",
    cleared: "已恢复",
    clear_time: "恢复用时（平均 / 中位）",
    longest: "持续时间最长的告警",
    name: "告警",
    room: "机房",
    raised_at: "发生时间",
    open_for: "持续",
    completeness: "各机房数据完整率",
    points: "测点数",
    worst: "完整率最低的测点",
    exceedance: "各限值超限分钟数",
    point: "测点",
    limit: "限值",
    minutes: "分钟",
    hazards: "安全隐患",
    opened: "新发现",
    opened_major: "其中重大隐患",
    closed: "已整改销号",
    overdue: "逾期未整改",
    open_end: "期末未销号",
    open_major_end: "期末重大隐患（目标清零）",
    patrols: "巡检完成情况",
    planned: "计划",
    done: "完成",
    manual: "人工巡检",
    drills: "应急演练",
    scenario: "演练科目",
    started: "开始时间",
    ended: "结束时间",
    drill_alarms: "告警数（最高级别）",
    to_first_alarm: "开始至首个告警",
    to_first_ack: "首个告警至确认",
    whole_site: "全站",
    drills_apart: "演练期间产生的告警只计入本节，不计入上方告警统计。",
    by: "组织人",
    none: "无。",
    month_by_month: "逐月情况",
    month: "月份",
    levels: ["一级", "二级", "三级", "四级"],
};

fn words(lang: Lang) -> &'static Words {
    match lang {
        Lang::En => &EN,
        Lang::Zh => &ZH,
    }
}

/// A duration in one style throughout the report (and the page):
/// "45 s", "1 min 49 s", "2 h 5 min", "3 d 4 h".
fn duration(s: f64) -> String {
    let n = s.max(0.0).round() as u64;
    match n {
        0..60 => format!("{n} s"),
        60..3600 => format!("{} min {} s", n / 60, n % 60),
        3600..86_400 => format!("{} h {} min", n / 3600, n % 3600 / 60),
        _ => format!("{} d {} h", n / 86_400, n % 86_400 / 3600),
    }
}

const STYLE: &str = "
body{font-family:'Noto Sans CJK SC','WenQuanYi Micro Hei','Microsoft YaHei',system-ui,sans-serif;color:#111;margin:24px;font-size:12px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:16px;margin:22px 0 8px;border-bottom:2px solid #333;padding-bottom:3px;break-after:avoid}
.meta{color:#444;margin-bottom:12px}table{border-collapse:collapse;width:100%;margin:6px 0;break-inside:auto}
th,td{border:1px solid #999;padding:3px 6px;text-align:left}th{background:#eee}td.n{text-align:right;font-variant-numeric:tabular-nums}
tr{break-inside:avoid}.chart{margin:6px 0}.zero{font-weight:bold}.bad{color:#a00;font-weight:bold}
section.month{break-before:page}@page{size:A4;margin:14mm}
";

/// Horizontal bars, one per (label, value) of `max`.
fn bars(items: &[(String, f64, String)], max: f64, colour: &str) -> String {
    let row_h = 18.0;
    let h = row_h * items.len() as f64 + 4.0;
    let mut s = format!(
        "<svg class=\"chart\" width=\"640\" height=\"{h}\" viewBox=\"0 0 640 {h}\" role=\"img\">"
    );
    for (i, (label, v, text)) in items.iter().enumerate() {
        let y = i as f64 * row_h + 2.0;
        let w = if max > 0.0 {
            (v / max * 380.0).max(0.0)
        } else {
            0.0
        };
        let _ = write!(
            s,
            "<text x=\"0\" y=\"{:.1}\" font-size=\"11\">{}</text><rect x=\"200\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{:.1}\" fill=\"{colour}\"/><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\">{}</text>",
            y + 12.0,
            esc(label),
            row_h - 5.0,
            200.0 + w + 4.0,
            y + 12.0,
            esc(text)
        );
    }
    s.push_str("</svg>");
    s
}

/// A category's name in `lang`.
fn category(c: &str, lang: Lang) -> &str {
    match (lang, c) {
        (Lang::Zh, "fire") => "火灾",
        (Lang::Zh, "explosion") => "爆炸",
        (Lang::Zh, "electrical") => "电气",
        (Lang::Zh, "environment") => "环境",
        (Lang::Zh, "construction") => "施工",
        (Lang::Zh, "system") => "系统",
        _ => c,
    }
}

fn month_body(r: &Report, lang: Lang, tz: &jiff::tz::TimeZone, out: &mut String) {
    let w = words(lang);
    let level_name = |l: u8| {
        w.levels
            .get(usize::from(l.clamp(1, 4)) - 1)
            .copied()
            .unwrap_or("")
    };
    // Alarms
    let _ = write!(out, "<h2>{}</h2>", w.alarms);
    if r.alarms.is_empty() {
        let _ = write!(out, "<p>{}</p>", w.none);
    } else {
        let mut per_level = [0i64; 4];
        for a in &r.alarms {
            per_level[usize::from(a.level.clamp(1, 4)) - 1] += a.raised;
        }
        let max = per_level.iter().copied().max().unwrap_or(0) as f64;
        let items: Vec<(String, f64, String)> = per_level
            .iter()
            .enumerate()
            .map(|(i, n)| (w.levels[i].to_owned(), *n as f64, n.to_string()))
            .collect();
        out.push_str(&bars(&items, max, "#c0392b"));
        let _ = write!(
            out,
            "<table><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr>",
            w.level, w.category, w.raised, w.inhibited, w.acked, w.ack_time, w.cleared, w.clear_time
        );
        for a in &r.alarms {
            let pair = |m: Option<f64>, d: Option<f64>| match (m, d) {
                (Some(m), Some(d)) => format!("{} / {}", duration(m), duration(d)),
                _ => "-".into(),
            };
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td></tr>",
                level_name(a.level), esc(category(&a.category, lang)), a.raised, a.inhibited, a.acknowledged,
                pair(a.ack_mean_s, a.ack_median_s), a.cleared, pair(a.clear_mean_s, a.clear_median_s)
            );
        }
        out.push_str("</table>");
    }
    // Longest open
    let _ = write!(out, "<h2>{}</h2>", w.longest);
    if r.longest_open.is_empty() {
        let _ = write!(out, "<p>{}</p>", w.none);
    } else {
        let _ = write!(
            out,
            "<table><tr><th>#</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr>",
            w.name, w.level, w.room, w.raised_at, w.open_for
        );
        for a in &r.longest_open {
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{} / {}</td><td>{}</td><td class=n>{}</td></tr>",
                a.serial, esc(if lang == Lang::Zh { &a.name_zh } else { &a.name }), level_name(a.level), esc(&a.site), esc(&a.room),
                time(a.raised_at, tz), duration(a.open_s as f64)
            );
        }
        out.push_str("</table>");
    }
    // Completeness
    let _ = write!(out, "<h2>{}</h2>", w.completeness);
    if r.completeness.is_empty() {
        let _ = write!(out, "<p>{}</p>", w.none);
    } else {
        let items: Vec<(String, f64, String)> = r
            .completeness
            .iter()
            .map(|c| {
                (
                    format!("{} / {}", c.site, c.room),
                    c.completeness * 100.0,
                    format!("{:.2} %", c.completeness * 100.0),
                )
            })
            .collect();
        out.push_str(&bars(&items, 100.0, "#2874a6"));
        let _ = write!(
            out,
            "<table><tr><th>{}</th><th>{}</th><th>{}</th><th>%</th><th>{}</th></tr>",
            w.site, w.room, w.points, w.worst
        );
        for c in &r.completeness {
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td class=n>{}</td><td class=n>{:.2}</td><td>{} ({:.2} %)</td></tr>",
                esc(&c.site), esc(&c.room), c.points, c.completeness * 100.0, esc(&c.worst_point), c.worst * 100.0
            );
        }
        out.push_str("</table>");
    }
    // Exceedance
    let _ = write!(out, "<h2>{}</h2>", w.exceedance);
    if r.exceedance.is_empty() {
        let _ = write!(out, "<p>{}</p>", w.none);
    } else {
        let _ = write!(
            out,
            "<table><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr>",
            w.room, w.point, w.limit, w.level, w.minutes
        );
        for e in &r.exceedance {
            let sign = if e.kind == "above" { "&gt;" } else { "&lt;" };
            let _ = write!(
                out,
                "<tr><td>{} / {}</td><td>{}</td><td>{sign} {} ({})</td><td>{}</td><td class=n>{}</td></tr>",
                esc(&e.site), esc(&e.room), esc(&e.point), e.limit, esc(&e.rule), level_name(e.level), e.minutes
            );
        }
        out.push_str("</table>");
    }
    // Hazards
    let h = &r.hazards;
    let _ = write!(
        out,
        "<h2>{}</h2><table><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr>\
         <tr><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n><span class=\"{}\">{}</span></td></tr></table>",
        w.hazards, w.opened, w.opened_major, w.closed, w.overdue, w.open_end, w.open_major_end,
        h.opened, h.opened_major, h.closed, h.overdue, h.open_at_end,
        if h.open_major_at_end == 0 { "zero" } else { "bad" }, h.open_major_at_end
    );
    // Patrols
    let _ = write!(out, "<h2>{}</h2>", w.patrols);
    if r.patrols.is_empty() {
        let _ = write!(out, "<p>{}</p>", w.none);
    } else {
        let _ = write!(
            out,
            "<table><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr>",
            w.site, w.room, w.planned, w.done, w.manual
        );
        for p in &r.patrols {
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td></tr>",
                esc(&p.site), esc(&p.room), p.planned, p.done, p.manual
            );
        }
        out.push_str("</table>");
    }
    // Drills
    let _ = write!(out, "<h2>{}</h2>", w.drills);
    if r.drills.is_empty() {
        let _ = write!(out, "<p>{}</p>", w.none);
    } else {
        let _ = write!(
            out,
            "<p>{}</p><table><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr>",
            w.drills_apart, w.scenario, w.room, w.started, w.ended, w.drill_alarms, w.to_first_alarm, w.to_first_ack, w.by
        );
        for d in &r.drills {
            let s = |k: &str| esc(d[k].as_str().unwrap_or(""));
            let t = |k: &str| d[k].as_i64().map(|t| time(t, tz)).unwrap_or_default();
            let secs = |k: &str| d[k].as_f64().map(duration).unwrap_or_else(|| "-".into());
            let room = match d["room"].as_str().unwrap_or("") {
                "" => w.whole_site.to_owned(),
                r => esc(r),
            };
            let alarms = match (d["alarms"].as_i64().unwrap_or(0), d["worst_level"].as_u64()) {
                (0, _) | (_, None) => "0".to_owned(),
                (n, Some(l)) => format!("{n} ({})", w.levels[(l.clamp(1, 4) - 1) as usize]),
            };
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{} / {}</td><td>{}</td><td>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td><td>{}</td></tr>",
                s("scenario"),
                s("site"),
                room,
                t("started_at"),
                t("ended_at"),
                alarms,
                secs("first_alarm_s"),
                secs("first_ack_s"),
                s("by")
            );
        }
        out.push_str("</table>");
    }
}

fn page(lang: Lang, title: &str, body: &str) -> String {
    let html_lang = if lang == Lang::Zh { "zh-CN" } else { "en" };
    format!(
        "<!doctype html><html lang=\"{html_lang}\"><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head><body>{body}</body></html>",
        esc(title)
    )
}

pub fn html_month(r: &Report, lang: Lang, tz: &jiff::tz::TimeZone) -> String {
    let w = words(lang);
    let site = r.site.clone().unwrap_or_else(|| w.all_sites.to_owned());
    let title = format!("{} {} · {}", w.title_month, r.period.label, site);
    let mut body = format!(
        "<h1>{}</h1><div class=\"meta\">{}: {} · {}: {} ({})</div>",
        esc(&title),
        w.site,
        esc(&site),
        w.generated,
        time(r.until, tz),
        esc(&r.time_zone)
    );
    month_body(r, lang, tz, &mut body);
    page(lang, &title, &body)
}

pub fn html_year(y: &YearReport, lang: Lang, tz: &jiff::tz::TimeZone) -> String {
    let w = words(lang);
    let site = y.site.clone().unwrap_or_else(|| w.all_sites.to_owned());
    let title = format!("{} {} · {}", w.title_year, y.year, site);
    let mut body = format!(
        "<h1>{}</h1><div class=\"meta\">{}: {} ({})</div>",
        esc(&title),
        w.site,
        esc(&site),
        esc(&y.time_zone)
    );
    // Month by month: alarms per level, hazards, patrols.
    let _ = write!(
        body,
        "<h2>{}</h2><table><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr>",
        w.month_by_month, w.month, w.levels[0], w.levels[1], w.levels[2], w.levels[3], w.opened, w.closed, w.open_major_end, w.patrols
    );
    let mut items = Vec::new();
    for m in &y.months {
        let mut per = [0i64; 4];
        for a in &m.alarms {
            per[usize::from(a.level.clamp(1, 4)) - 1] += a.raised;
        }
        let planned: i64 = m.patrols.iter().map(|p| p.planned).sum();
        let done: i64 = m.patrols.iter().map(|p| p.done).sum();
        let _ = write!(
            body,
            "<tr><td>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{done} / {planned}</td></tr>",
            m.period.label, per[0], per[1], per[2], per[3], m.hazards.opened, m.hazards.closed, m.hazards.open_major_at_end
        );
        let total: i64 = per.iter().sum();
        items.push((m.period.label.clone(), total as f64, total.to_string()));
    }
    body.push_str("</table>");
    let max = items.iter().map(|i| i.1).fold(0.0, f64::max);
    let _ = write!(body, "<h2>{}</h2>", w.alarms);
    body.push_str(&bars(&items, max, "#c0392b"));
    for m in &y.months {
        let _ = write!(
            body,
            "<section class=\"month\"><h1>{} {}</h1>",
            w.title_month, m.period.label
        );
        month_body(m, lang, tz, &mut body);
        body.push_str("</section>");
    }
    page(lang, &title, &body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspection::report::*;

    fn report() -> Report {
        Report {
            site: Some("s<1>".into()),
            period: Period {
                label: "2026-11".into(),
                from: 0,
                to: 1,
            },
            time_zone: "Asia/Shanghai".into(),
            until: 0,
            alarms: vec![AlarmRow {
                level: 1,
                category: "fire".into(),
                raised: 2,
                inhibited: 0,
                acknowledged: 1,
                ack_mean_s: Some(90.0),
                ack_median_s: Some(90.0),
                cleared: 2,
                clear_mean_s: Some(600.0),
                clear_median_s: Some(600.0),
            }],
            longest_open: vec![],
            completeness: vec![],
            exceedance: vec![],
            hazards: Hazards::default(),
            patrols: vec![],
            drills: vec![
                serde_json::json!({"site": "s", "room": "a,b", "scenario": "smoke", "started_at": 0, "by": "li"}),
            ],
        }
    }

    #[test]
    fn every_table_has_a_csv_and_fields_are_quoted() {
        let tz = jiff::tz::TimeZone::UTC;
        for t in TABLES {
            assert!(csv(&report(), t, &tz).is_some(), "{t}");
        }
        assert!(csv(&report(), "nope", &tz).is_none());
        let drills = csv(&report(), "drills", &tz).unwrap();
        assert!(drills.contains(",\"a,b\","), "{drills}");
        assert_eq!(csv_field("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(csv_field("-12.5"), "-12.5");
    }

    #[test]
    fn the_printable_report_is_escaped_and_in_the_chosen_language() {
        let tz = jiff::tz::TimeZone::UTC;
        let zh = html_month(&report(), Lang::Zh, &tz);
        assert!(zh.contains("安全生产月报") && zh.contains("lang=\"zh-CN\""));
        assert!(zh.contains("s&lt;1&gt;") && !zh.contains("s<1>"));
        assert!(!zh.contains("<script"));
        let en = html_month(&report(), Lang::En, &tz);
        assert!(
            en.contains("Monthly safety report") && en.contains("1 min 30 s / 1 min 30 s"),
            "{en}"
        );
    }
}
