//! Inspectors' reports from a month of synthetic history. October 2026 is
//! played through the real store writer and alarm engine on a fast-forwarded
//! clock (event time is the agents' clock, so alarms happen at October
//! times), patrols are run at October slots, hazards and a drill are
//! recorded at October times, and the monthly report's figures are checked
//! against what the generator put in. Then the collector serves the
//! printable report, headless Chromium prints it to PDF, and the PDF's text
//! is checked for the report's headings; the CLI writes the CSV tables.

use anyhow::{ensure, Context, Result};
use roomguard_collector::config::AlarmsConfig;
use roomguard_collector::inspection::hazard::{Action, Edit, NewHazard, Origin, Status};
use roomguard_collector::inspection::report::{self, Inputs};
use roomguard_collector::inspection::task::Inspector;
use roomguard_collector::inspection::{InspectionConfig, NewDrill};
use roomguard_collector::store::alarms::AlarmSetup;
use roomguard_collector::store::alarms::{self as record, Action as AlarmAction};
use roomguard_collector::store::backend::Writer;
use roomguard_collector::store::sql::Db;
use roomguard_e2e::browser::Browser;
use roomguard_e2e::*;
use roomguard_protocol::{Batch, PointMeta, Quality, Reading, PROTOCOL_VERSION};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

const MIN: i64 = 60_000;
const HOUR: i64 = 3_600_000;
const DAY: i64 = 86_400_000;

/// 2026-10-01T00:00:00+08:00.
fn october() -> i64 {
    "2026-09-30T16:00:00Z"
        .parse::<jiff::Timestamp>()
        .unwrap()
        .as_millisecond()
}

/// What the generator does, so expectations follow from it.
struct Plan {
    start: i64,
    end: i64,
    /// Inlet above 27 °C (at 29 °C): [start, start + minutes).
    hot: [(i64, i64); 2],
    /// Inlet silent: [start, end).
    gap: (i64, i64),
    /// Hydrogen at 30 % LFL: [start, start + minutes).
    gas: (i64, i64),
    /// A declared drill in the battery room, [start, end), with hydrogen at
    /// 30 % LFL inside it for `gas.1` minutes from its fifth minute: its
    /// alarms are the drill's, never real ones.
    drill: (i64, i64),
}

fn plan() -> Plan {
    let o = october();
    Plan {
        start: o,
        end: o + 31 * DAY,
        hot: [
            (o + 2 * DAY + 10 * HOUR, 95),
            (o + 16 * DAY + 14 * HOUR, 40),
        ],
        gap: (o + 9 * DAY + 10 * HOUR, o + 9 * DAY + 16 * HOUR),
        gas: (o + 19 * DAY + 3 * HOUR, 10),
        drill: (o + 25 * DAY + 9 * HOUR, o + 25 * DAY + 9 * HOUR + 30 * MIN),
    }
}

fn reading(point: &str, ts: i64, value: f64) -> Reading {
    Reading {
        point: point.into(),
        value: Some(value),
        text: None,
        ts,
        quality: Quality::Good,
    }
}

fn batch(seq: u64, device: &str, meta: Option<PointMeta>, r: Reading) -> Batch {
    Batch {
        v: PROTOCOL_VERSION,
        site: "s".into(),
        agent: "a".into(),
        seq,
        device: device.into(),
        polled_at: r.ts,
        backfill: false,
        points: meta.into_iter().collect(),
        readings: vec![r],
    }
}

/// Plays the month through `w`; returns the writer's rules.
fn play(w: Writer, p: &Plan) -> Result<Arc<roomguard_collector::alarm::rules::RuleSet>> {
    let alarms = AlarmsConfig::default();
    let rules = Arc::new(alarms.rules().map_err(|e| anyhow::anyhow!("{e}"))?);
    let setup = AlarmSetup {
        rules: rules.clone(),
        routes: alarms.routes(),
        escalation: alarms.escalation(),
    };
    let mut w = w.with_alarms(setup, p.start)?;
    let meta = |id: &str, room: &str, q: &str, unit: &str| PointMeta {
        id: id.into(),
        room: room.into(),
        quantity: q.into(),
        unit: unit.into(),
    };
    let mut seq = 0;
    let mut hour = Vec::new();
    let mut t = p.start;
    while t < p.end {
        let hot = p.hot.iter().any(|(s, m)| t >= *s && t < s + m * MIN);
        let silent = t >= p.gap.0 && t < p.gap.1;
        let drill_gas = p.drill.0 + 5 * MIN;
        let gas = (t >= p.gas.0 && t < p.gas.0 + p.gas.1 * MIN)
            || (t >= drill_gas && t < drill_gas + p.gas.1 * MIN);
        let first = t == p.start;
        if !silent {
            seq += 1;
            hour.push(batch(
                seq,
                "mr-inlet-1",
                first.then(|| {
                    meta(
                        "mr-inlet-1.temperature",
                        "machine-room",
                        "temperature",
                        "°C",
                    )
                }),
                reading("mr-inlet-1.temperature", t, if hot { 29.0 } else { 22.0 }),
            ));
        }
        seq += 1;
        hour.push(batch(
            seq,
            "br-h2-1",
            first.then(|| meta("br-h2-1.h2", "battery-room", "h2_lfl", "%LFL")),
            reading("br-h2-1.h2", t, if gas { 30.0 } else { 0.5 }),
        ));
        t += MIN;
        if (t - p.start) % HOUR == 0 {
            w.write_batches(&hour, t)?;
            hour.clear();
            // Roll up as the collector would, once a minute has closed.
            while w.maintain(t)?.minutes > 0 {}
        }
    }
    // A minute after the last minute closed (PostgreSQL rolls a minute up
    // once a whole minute has passed since it closed, see its maintain.rs):
    // no point has been silent long enough for an alarm yet.
    while w.maintain(p.end + 60_000)?.minutes > 0 {}
    Ok(rules)
}

on_both!(a_month_of_history_gives_a_report_with_the_figures_that_were_put_in);

async fn a_month_of_history_gives_a_report_with_the_figures_that_were_put_in(
    store: TestStore,
) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (writer, reads, store_toml) = store.open(dir.path(), "inspection")?;
    let p = plan();
    // Inspection on from the first day, as the collector would have it
    // (hazards are proposed from alarms raised once it is on).
    reads
        .blocking(true, |c| {
            roomguard_collector::store::inspection::start_proposals(c)
        })
        .await?;
    // The hydrogen drill is declared before it runs, as on the day.
    let drill = reads
        .blocking(true, move |c| {
            roomguard_collector::store::inspection::record_drill(
                c,
                &NewDrill {
                    site: "s".into(),
                    room: "battery-room".into(),
                    scenario: "gas_leak".into(),
                    note: None,
                },
                (p.drill.0, Some(p.drill.1)),
                "inspector-1",
                p.drill.0 - HOUR,
            )
        })
        .await?;
    let drill_id = drill["id"].as_i64().context("drill id")?;
    // The writer blocks (on PostgreSQL it drives a runtime of its own).
    let rules = tokio::task::spawn_blocking(move || play(writer, &plan())).await??;
    let tz = jiff::tz::TimeZone::get("Asia/Shanghai")?;

    // The on-call engineer acknowledges the level-1 hydrogen alarm 10 minutes after it.
    let r2 = rules.clone();
    reads
        .write(async move |c| {
            let a = c
                .row(
                    "SELECT serial, raised_at FROM alarms WHERE rule = 'explosion.h2_alarm' AND drill IS NULL",
                    &[],
                )
                .await?
                .context("the hydrogen alarm")?;
            let (serial, raised_at): (u64, i64) = (a.get(0)?, a.get(1)?);
            record::act(
                c,
                &r2,
                &[],
                serial,
                "oncall-1",
                AlarmAction::Acknowledge {
                    comment: Some("fans on"),
                },
                raised_at + 10 * MIN,
            )
            .await?;
            Ok::<_, anyhow::Error>(())
        })
        .await?;
    reads
        .blocking(true, move |c| hazards_and_a_drill(c, &plan()))
        .await?;

    // Patrols at every 2-hour slot of the first ten days.
    let o = p.start;
    let cfg = InspectionConfig::default();
    let inspector = Arc::new(Inspector {
        records: reads.clone(),
        cfg: cfg.clone(),
        rules: Some(rules.clone()),
        routes: Vec::new(),
        tz: tz.clone(),
        wake: Arc::new(tokio::sync::Notify::new()),
        live: Arc::new(roomguard_collector::live::Live::default()),
        cluster: None,
    });
    let mut proposed = 0;
    for slot in (0..120).map(|i| o + i * 2 * HOUR) {
        let r = inspector.round(slot + MIN).await?;
        assert_eq!(r.patrols, 2, "both rooms patrolled at slot {slot}");
        proposed += r.proposed;
    }
    assert_eq!(
        proposed, 1,
        "the real level-1 hydrogen alarm proposes one hazard, the drill's none"
    );
    // The proposal names the alarm it came from.
    let (from, real_h2): (Option<i64>, i64) = reads
        .blocking(false, |c| {
            Ok::<_, anyhow::Error>((
                c.value("SELECT alarm FROM hazards WHERE status = 'proposed'", &[])?,
                c.value(
                    "SELECT serial FROM alarms WHERE rule = 'explosion.h2_alarm' AND drill IS NULL",
                    &[],
                )?,
            ))
        })
        .await?;
    assert_eq!(from, Some(real_h2));

    let month = report::month("2026-10", &tz).map_err(anyhow::Error::msg)?;
    assert_eq!((month.from, month.to), (p.start, p.end));
    let (rules2, tz2, month2) = (rules.clone(), tz.clone(), month.clone());
    let r = reads
        .blocking(false, move |c| {
            let schedule = cfg.schedule();
            let inp = Inputs {
                rules: Some(&rules2),
                schedule: &schedule,
                tz: &tz2,
                schedule_tz: &tz2,
                now: plan().end + DAY,
            };
            Ok::<_, anyhow::Error>(report::build(c, Some("s"), &month2, &inp)?)
        })
        .await?;

    // Alarms, by what was put in: each hot spell raises inlet-high (level 2)
    // and inlet-rising (level 3); the six silent hours raise sensor-silent
    // (level 3); the gas raises the 10 % (level 2) and 25 % (level 1) alarms.
    // The drill's gas raises the same two, counted only in the drill's row.
    let row = |level: u8, category: &str| {
        r.alarms
            .iter()
            .find(|a| a.level == level && a.category == category)
            .cloned()
            .with_context(|| format!("no level-{level} {category} row in {:?}", r.alarms))
    };
    assert_eq!(r.alarms.len(), 4, "{:?}", r.alarms);
    assert_eq!(row(2, "environment")?.raised, 2);
    assert_eq!(row(3, "environment")?.raised, 3);
    assert_eq!(row(2, "explosion")?.raised, 1);
    let l1 = row(1, "explosion")?;
    assert_eq!((l1.raised, l1.acknowledged), (1, 1));
    assert_eq!(l1.ack_mean_s, Some(600.0));
    // Cleared once the gas was gone: after its 10 minutes, within the clear
    // delay and one reading more.
    let clear = l1.clear_mean_s.context("cleared")?;
    ensure!(
        (600.0..=600.0 + 20.0 + 60.0).contains(&clear),
        "time to clear {clear}"
    );
    assert!(
        r.alarms.iter().all(|a| a.cleared == a.raised),
        "{:?}",
        r.alarms
    );
    assert_eq!(r.longest_open.len(), 7);

    // Minutes beyond each limit.
    let beyond = |rule: &str| {
        r.exceedance
            .iter()
            .find(|e| e.rule == rule)
            .map(|e| e.minutes)
    };
    assert_eq!(beyond("environment.inlet_temp_high"), Some(95 + 40));
    // Minutes beyond a limit come from the readings, the drill's included.
    assert_eq!(beyond("explosion.h2_warning"), Some(20));
    assert_eq!(beyond("explosion.h2_alarm"), Some(20));
    assert_eq!(r.exceedance.len(), 3, "{:?}", r.exceedance);

    // Completeness: six hours missing of 744.
    let room = |name: &str| r.completeness.iter().find(|c| c.room == name).cloned();
    let mr = room("machine-room").context("machine room")?;
    ensure!((mr.completeness - 738.0 / 744.0).abs() < 1e-9, "{mr:?}");
    assert_eq!(
        room("battery-room").context("battery room")?.completeness,
        1.0
    );

    // Hazards (the proposed one is not counted until someone accepts it).
    let h = &r.hazards;
    assert_eq!(
        (
            h.opened,
            h.opened_major,
            h.closed,
            h.overdue,
            h.open_at_end,
            h.open_major_at_end
        ),
        (2, 1, 1, 2, 2, 0),
        "{h:?}"
    );
    // The zeroing figures a day after the month: the two general hazards
    // still open are overdue, one 25 days old, one 43; no major one is open.
    let at = p.end + DAY;
    let zeroing = reads
        .blocking(false, move |c| {
            roomguard_collector::store::hazards::zeroing(c, at)
        })
        .await?;
    assert_eq!(zeroing.len(), 1, "{zeroing:?}");
    let z = &zeroing[0];
    assert_eq!(
        (
            &z["site"],
            &z["open_major"],
            &z["open"],
            &z["overdue"],
            &z["overdue_major"]
        ),
        (&json!("s"), &json!(0), &json!(2), &json!(2), &json!(0)),
        "{z}"
    );
    // The hazard proposed from the level-1 alarm is major and still waits
    // for a decision: counted apart from the zeroing figure.
    assert_eq!(z["proposed_major"], json!(1), "{z}");
    assert_eq!(
        z["age"],
        json!({"under_7_days": 0, "7_to_30_days": 1, "over_30_days": 1}),
        "{z}"
    );
    // Patrols: 12 a day planned for 31 days, done for the first 10.
    for row in &r.patrols {
        assert_eq!(
            (row.planned, row.done, row.manual),
            (372, 120, 0),
            "{row:?}"
        );
    }
    assert_eq!(r.patrols.len(), 2);
    assert_eq!(r.drills.len(), 2);
    // The hydrogen drill, with what it showed: both gas alarms, the first
    // (10 % LFL, at the first reading of 30 %) five minutes after its start.
    let d = r
        .drills
        .iter()
        .find(|d| d["id"] == json!(drill_id))
        .context("the hydrogen drill in the report")?;
    assert_eq!(
        (
            &d["room"],
            &d["alarms"],
            &d["worst_level"],
            &d["first_ack_s"]
        ),
        (&json!("battery-room"), &json!(2), &json!(1), &json!(null)),
        "{d}"
    );
    let first = d["first_alarm_s"].as_i64().context("time to first alarm")?;
    ensure!((300..=300 + 60).contains(&first), "{d}");
    // The other drill raised nothing.
    assert!(r.drills.iter().any(|d| d["alarms"] == json!(0)));

    // A patrol record says what a person walking the room would see.
    let slot = p.hot[0].0 + 2 * HOUR;
    let text: String = reads
        .blocking(false, move |c| {
            c.value(
                "SELECT record FROM patrols WHERE room = 'machine-room' AND slot = $1",
                roomguard_collector::args![slot],
            )
        })
        .await?;
    let rec: serde_json::Value = serde_json::from_str(&text)?;
    let inlet = &rec["points"][0];
    assert_eq!(inlet["max"], 29.0, "{rec}");
    let high = inlet["limits"]
        .as_array()
        .and_then(|l| {
            l.iter()
                .find(|l| l["rule"] == "environment.inlet_temp_high")
        })
        .context("inlet limit in the patrol")?;
    assert_eq!(high["minutes_beyond"], 95);
    printable_report_and_csv(dir.path(), &store_toml).await
}

/// The hazards and the drill of October, at October times: one major
/// found and closed, one general still open past its October deadline,
/// one from September overdue since.
fn hazards_and_a_drill(c: Db<'_>, p: &Plan) -> Result<()> {
    let o = p.start;
    let new = |grade: &str, what: &str| NewHazard {
        site: "s".into(),
        room: "battery-room".into(),
        category: "explosion".into(),
        grade: grade.into(),
        description: what.into(),
        owner: Some("li".into()),
        deadline: None,
        plan: Some("fix it".into()),
    };
    let h1 = roomguard_collector::store::hazards::create(
        c,
        &new("major", "exhaust fan seized"),
        "inspector-1",
        Status::Open,
        Origin::MANUAL,
        o + 4 * DAY,
    )?;
    let deadline = |d: i64| Edit {
        deadline: Some(d),
        ..Default::default()
    };
    roomguard_collector::store::hazards::change(
        c,
        h1.id,
        &deadline(o + 14 * DAY),
        Some(Action::StartRectification),
        None,
        "li",
        o + 5 * DAY,
    )?;
    let evidence = Edit {
        evidence: Some("new fan, photo".into()),
        ..Default::default()
    };
    roomguard_collector::store::hazards::change(
        c,
        h1.id,
        &evidence,
        Some(Action::SubmitForVerification),
        None,
        "li",
        o + 10 * DAY,
    )?;
    roomguard_collector::store::hazards::change(
        c,
        h1.id,
        &Edit::default(),
        Some(Action::Verify),
        None,
        "inspector-1",
        o + 11 * DAY,
    )?;
    let h2 = roomguard_collector::store::hazards::create(
        c,
        &new("general", "cable tray unsealed"),
        "inspector-1",
        Status::Open,
        Origin::MANUAL,
        o + 7 * DAY,
    )?;
    roomguard_collector::store::hazards::change(
        c,
        h2.id,
        &deadline(o + 19 * DAY),
        Some(Action::StartRectification),
        None,
        "li",
        o + 8 * DAY,
    )?;
    let h3 = roomguard_collector::store::hazards::create(
        c,
        &new("general", "extinguisher out of date"),
        "inspector-1",
        Status::Open,
        Origin::MANUAL,
        o - 11 * DAY,
    )?;
    roomguard_collector::store::hazards::change(
        c,
        h3.id,
        &deadline(o - DAY),
        Some(Action::StartRectification),
        None,
        "li",
        o - 10 * DAY,
    )?;
    roomguard_collector::store::inspection::record_drill(
        c,
        &NewDrill {
            site: "s".into(),
            room: "battery-room".into(),
            scenario: "thermal_runaway".into(),
            note: None,
        },
        (o + 20 * DAY, Some(o + 20 * DAY + HOUR)),
        "inspector-1",
        o + 20 * DAY,
    )?;

    Ok(())
}

/// The collector serves the printable report; Chromium prints it to PDF;
/// the CLI writes the CSV tables.
async fn printable_report_and_csv(dir: &Path, store_toml: &str) -> Result<()> {
    let (_collector, http, _) = start_collector_stored(dir, store_toml, None, "")?;
    // The CLI: one CSV file per table, beside the running collector.
    let csv_dir = dir.join("csv");
    let status = std::process::Command::new(workspace_bin("roomguard-collector"))
        .args(["report"])
        .arg(dir.join("collector.toml"))
        .args([
            "--month", "2026-10", "--site", "s", "--format", "csv", "--out",
        ])
        .arg(&csv_dir)
        .status()?;
    ensure!(status.success(), "report CLI failed");
    let alarms = std::fs::read_to_string(csv_dir.join("alarms.csv"))?;
    ensure!(
        alarms.starts_with("period,level,category,raised"),
        "{alarms}"
    );
    ensure!(
        alarms.contains("2026-10,1,explosion,1,0,1,600.0,600.0"),
        "{alarms}"
    );
    let drills = std::fs::read_to_string(csv_dir.join("drills.csv"))?;
    ensure!(
        drills.starts_with("period,site,room,scenario,started_at,ended_at,alarms,worst_level"),
        "{drills}"
    );
    ensure!(drills.contains(",gas_leak,"), "{drills}");
    // `--out -`: the report on standard output, to pipe or mail.
    let piped = std::process::Command::new(workspace_bin("roomguard-collector"))
        .args(["report"])
        .arg(dir.join("collector.toml"))
        .args([
            "--month", "2026-10", "--site", "s", "--format", "json", "--out", "-",
        ])
        .output()?;
    ensure!(
        piped.status.success(),
        "{}",
        String::from_utf8_lossy(&piped.stderr)
    );
    let piped: serde_json::Value = serde_json::from_slice(&piped.stdout)?;
    assert_eq!(piped["period"]["from"], "2026-10-01T00:00:00+08:00");
    // The API's JSON gives times as RFC 3339 in the report's zone, as every
    // other answer does, never as raw milliseconds.
    let json = get_json(
        &http_client(),
        &format!("{http}/api/v1/reports/monthly?month=2026-10&site=s"),
    )
    .await
    .context("monthly report as JSON")?;
    assert_eq!(
        json["period"]["from"], "2026-10-01T00:00:00+08:00",
        "{}",
        json["period"]
    );
    let d = &json["drills"][0];
    ensure!(
        d["started_at"]
            .as_str()
            .is_some_and(|t| t.parse::<jiff::Timestamp>().is_ok())
            && d["ended_at"].is_string(),
        "{d}"
    );
    ensure!(json["until"].is_string(), "{}", json["until"]);
    let exceed = std::fs::read_to_string(csv_dir.join("exceedance.csv"))?;
    ensure!(
        exceed.contains("environment.inlet_temp_high,2,above,27,135"),
        "{exceed}"
    );

    let Some(pdftotext) = external("pdftotext", "poppler-utils") else {
        return Ok(());
    };
    let Some(browser) = Browser::start(dir, 1200, 900).await? else {
        return Ok(());
    };
    browser.goto(&format!("{http}/")).await?;
    browser
        .type_into("#login-user", "admin", Duration::from_secs(30))
        .await?;
    browser
        .type_into(
            "#login-password",
            "admin-test-password",
            Duration::from_secs(5),
        )
        .await?;
    browser
        .click("#login-submit", Duration::from_secs(5))
        .await?;
    browser
        .wait_for(
            "logged in",
            Duration::from_secs(30),
            "const w = document.querySelector('#whoami'); return w && w.textContent.trim() === 'admin';",
        )
        .await?;
    browser
        .goto(&format!(
            "{http}/api/v1/reports/monthly?month=2026-10&site=s&format=html&lang=zh-CN"
        ))
        .await?;
    if browser.find("h1", Duration::from_secs(30)).await.is_err() {
        let page = browser
            .eval("return document.body.innerText;", vec![])
            .await?;
        anyhow::bail!("no printable report: {page}");
    }
    let pdf = dir.join("report.pdf");
    browser.print_pdf(&pdf).await?;
    let out = std::process::Command::new(pdftotext)
        .arg("-layout")
        .arg(&pdf)
        .arg("-")
        .output()?;
    ensure!(out.status.success(), "pdftotext failed");
    let text = String::from_utf8_lossy(&out.stdout);
    for heading in [
        "安全生产月报 2026-10",
        "告警（按级别和类别）",
        "持续时间最长的告警",
        "各机房数据完整率",
        "各限值超限分钟数",
        "安全隐患",
        "巡检完成情况",
        "应急演练",
    ] {
        ensure!(
            text.contains(heading),
            "{heading:?} not in the PDF:\n{text}"
        );
    }
    let pages = text.matches('\u{c}').count();
    ensure!(pages >= 1, "the PDF has pages");
    std::fs::create_dir_all(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("artifacts"))?;
    std::fs::copy(
        &pdf,
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("artifacts/report-2026-10.pdf"),
    )?;

    Ok(())
}
