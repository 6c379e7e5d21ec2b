//! Report benchmark (issue #8): the monthly report of a site of 200 rooms
//! with 10-second data. A month of such data is 270 k readings per point; the
//! report reads only the rollups, so the store is filled with the 1-minute and
//! 1-hour rollups that month of readings makes (6 and 360 readings a bucket),
//! with hot spells in a fifth of the rooms, a gap in some, and alarms. Then
//! `report::build` runs for the whole site, as the API and the CLI do.
//!
//! With `--postgres 1` the same store is then moved into a PostgreSQL the
//! bench starts (`roomguard-collector migrate`) and the report is made
//! from there too.
//!
//!   cargo build --release --workspace --bins
//!   cd /tmp && /work/main/target/release/bench-report [--rooms 200] [--sets 1] [--runs 5] [--postgres 1]

use anyhow::Context;
use anyhow::Result;
use roomguard_collector::config::AlarmsConfig;
use roomguard_collector::inspection::report::{self, Inputs};
use roomguard_collector::inspection::InspectionConfig;
use roomguard_collector::store::postgres;
use roomguard_collector::store::sql::{Conn, Db};
use roomguard_collector::store::sqlite::SqliteWriter;
use roomguard_e2e::{arg, migrate_to_postgres, write_collector_config, Postgres};
use rusqlite::params;
use std::time::Instant;

const MIN: i64 = 60_000;
const HOUR: i64 = 3_600_000;

fn main() -> Result<()> {
    let rooms = arg("--rooms", 200) as i64;
    // Points per room: 3 × sets (inlet temperature, humidity, hydrogen).
    let sets = arg("--sets", 1);
    let runs = arg("--runs", 5);
    let dir = tempfile::tempdir_in(std::env::current_dir()?)?;
    let path = dir.path().join("store.db");
    drop(SqliteWriter::open(&path)?);
    let tz = jiff::tz::TimeZone::get("Asia/Shanghai")?;
    let month = report::month("2026-10", &tz).map_err(anyhow::Error::msg)?;
    let started = Instant::now();
    let mut c = rusqlite::Connection::open(&path)?;
    c.pragma_update(None, "journal_mode", "WAL")?;
    c.pragma_update(None, "synchronous", "OFF")?;
    let tx = c.transaction()?;
    let quantities = [
        ("temperature", "°C", 22.0),
        ("humidity", "%RH", 45.0),
        ("h2_lfl", "%LFL", 0.5),
    ];
    let mut id = 0i64;
    let mut serial = 0i64;
    {
        let mut point = tx.prepare(
            "INSERT INTO points (id, site, point, agent, room, device, quantity, unit, first_seen, last_seen)
             VALUES (?1, 'bench', ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)",
        )?;
        let mut minute =
            tx.prepare("INSERT INTO rollup_1m VALUES (?1, ?2, 6, ?3, ?4, ?5, ?6, ?3)")?;
        let mut hour =
            tx.prepare("INSERT INTO rollup_1h VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?4)")?;
        let mut alarm = tx.prepare(
            "INSERT INTO alarms (serial, rule, name, level, category, site, agent, room, device, point,
                                 began_at, raised_at, value, cleared_at, ack_by, ack_at, updated_at)
             VALUES (?1, ?2, ?2, ?3, ?4, 'bench', 'edge', ?5, ?6, ?7, ?8, ?8, 29.0, ?9, 'oncall', ?10, ?9)",
        )?;
        for r in 0..rooms {
            let room = format!("room-{r:03}");
            let hot = r % 5 == 0;
            let gap = r % 7 == 0;
            for (set, (q, unit, base)) in
                (0..sets).flat_map(|s| quantities.iter().map(move |q| (s, *q)))
            {
                id += 1;
                let device = if q == "temperature" {
                    format!("r{r:03}-inlet{set}")
                } else {
                    format!("r{r:03}-{q}{set}")
                };
                point.execute(params![
                    id,
                    format!("{device}.{q}"),
                    format!("edge-{}", r / 10),
                    room,
                    device,
                    q,
                    unit,
                    month.from
                ])?;
                let mut t = month.from;
                while t < month.to {
                    let in_gap = gap && (t - month.from) / HOUR == 200;
                    if !in_gap {
                        // Two hours above 27 °C on the 10th in a fifth of the rooms.
                        let spell =
                            hot && q == "temperature" && (t - month.from) / HOUR == 9 * 24 + 14;
                        let v = if spell {
                            29.0
                        } else {
                            base + ((t / MIN) % 10) as f64 / 10.0
                        };
                        minute.execute(params![id, t, v, v + 0.05, v * 6.0, t + 50_000])?;
                        if (t - month.from) % HOUR == 0 {
                            let hv = if spell { 29.0 } else { base };
                            hour.execute(params![
                                id,
                                t,
                                360,
                                hv,
                                hv + 0.95,
                                hv * 360.0,
                                t + HOUR - 10_000
                            ])?;
                        }
                    }
                    t += MIN;
                }
                if hot && q == "temperature" {
                    serial += 1;
                    let at = month.from + (9 * 24 + 14) * HOUR;
                    alarm.execute(params![
                        serial,
                        "environment.inlet_temp_high",
                        2,
                        "environment",
                        room,
                        device,
                        format!("{device}.{q}"),
                        at,
                        at + 2 * HOUR,
                        at + 300_000
                    ])?;
                }
            }
        }
    }
    tx.commit()?;
    let rows: i64 = c.query_row("SELECT count(*) FROM rollup_1m", [], |r| r.get(0))?;
    println!(
        "store: {rooms} rooms, {id} points, {rows} one-minute rollups (a month of 10 s data), {serial} alarms, filled in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let rules = AlarmsConfig::default()
        .rules()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let schedule = InspectionConfig::default().schedule();
    let inp = Inputs {
        rules: Some(&rules),
        schedule: &schedule,
        tz: &tz,
        schedule_tz: &tz,
        now: month.to + HOUR,
    };
    let reader = roomguard_collector::store::sqlite::SqliteReader::open(&path)?;
    let report = |db: Db<'_>, backend: &str| -> Result<()> {
        for run in 1..=runs {
            let t0 = Instant::now();
            let r = report::build(db, Some("bench"), &month, &inp)?;
            let html = roomguard_collector::inspection::render::html_month(
                &r,
                roomguard_collector::inspection::render::Lang::Zh,
                &tz,
            );
            println!(
            "{backend} run {run}: monthly report in {:.2} s ({} rooms' completeness, {} limits exceeded, {} alarm rows, {} KiB of HTML)",
            t0.elapsed().as_secs_f64(),
            r.completeness.len(),
            r.exceedance.len(),
            r.alarms.len(),
            html.len() / 1024
        );
        }
        Ok(())
    };
    report(Db::lite(reader.conn()), "SQLite")?;
    if arg("--postgres", 0) == 1 {
        let pg = Postgres::start()?.context("PostgreSQL is not installed")?;
        let conf = write_collector_config(dir.path(), &path, None, "", "127.0.0.1:0")?;
        let started = Instant::now();
        migrate_to_postgres(dir.path(), &conf, &pg, "report")?;
        println!(
            "migrate to PostgreSQL in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        // A runtime of one worker drives the connection while the report's
        // reads block this thread, as the `report` command does.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let target = postgres::Target {
            config: postgres::settings(&pg.url("report"), Some(Postgres::PASSWORD))?,
            tls: None,
        };
        let client = rt.block_on(postgres::connect_to(&target))?;
        report(Db::pg(Conn::Pg(&client), rt.handle()), "PostgreSQL")?;
    }
    Ok(())
}
