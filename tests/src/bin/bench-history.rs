//! History benchmark: the two questions of issue #5, asked over HTTP of a
//! running collector (release build) whose store this program prepares.
//!
//! 1. One point, 90 days at 10 s (777,600 samples) written through the
//!    collector's own writer, rollups computed by its maintenance steps;
//!    then the whole range at a 1,000-point step (7,776 s: the 1-hour tier).
//! 2. A month of 500 points at a 1-hour step (360,000 values in one answer).
//!    Their 1-hour rollup rows are inserted directly: computing them from
//!    130 million raw samples would take this machine an hour and measure
//!    nothing the first part does not.
//!
//! Also reports bytes on disk per stored sample.
//!
//!   cargo build --release --workspace --bins
//!   target/release/bench-history [--runs 20]

use anyhow::{Context, Result};
use roomguard_collector::store::sqlite::SqliteWriter;
use roomguard_e2e::*;
use roomguard_protocol::{Batch, Label, PointMeta, Quality, Reading, PROTOCOL_VERSION};
use std::path::Path;
use std::time::{Duration, Instant};

const DAY: i64 = 86_400_000;
const HOUR: i64 = 3_600_000;

fn one_point_90_days(path: &Path, end: i64) -> Result<(u64, f64, f64)> {
    let mut w = SqliteWriter::open(path)?;
    let start = end - 90 * DAY;
    let started = Instant::now();
    let mut samples = 0u64;
    // Day by day: 8,640 readings a batch, as a long backfill would arrive.
    for day in 0..90 {
        let day_start = start + day * DAY;
        let seq = day as u64 + 1;
        let readings = (0..8_640)
            .map(|i| {
                let ts = day_start + i * 10_000;
                Reading {
                    point: Label::from("br-th-1.temperature"),
                    value: Some(24.0 + ((ts / 600_000) % 50) as f64 / 10.0),
                    text: None,
                    ts,
                    quality: Quality::Good,
                }
            })
            .collect::<Vec<_>>();
        samples += readings.len() as u64;
        let batch = Batch {
            v: PROTOCOL_VERSION,
            site: "bench".into(),
            agent: "edge".into(),
            seq,
            device: "br-th-1".into(),
            polled_at: day_start,
            backfill: true,
            points: vec![PointMeta {
                id: "br-th-1.temperature".into(),
                room: "battery-room".into(),
                quantity: "temperature".into(),
                unit: "°C".into(),
            }],
            readings,
        };
        w.write_batches(&[batch], end)?;
    }
    let insert_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    while w.maintain(end)?.minutes > 0 {}
    let rollup_s = started.elapsed().as_secs_f64();
    Ok((samples, insert_s, rollup_s))
}

fn month_of_500_points(path: &Path, end: i64) -> Result<Vec<String>> {
    let conn = rusqlite::Connection::open(path)?;
    let tx = conn.unchecked_transaction()?;
    let mut names = Vec::new();
    for p in 0..500 {
        let name = format!("room{:02}-th-{p:03}.temperature", p / 50);
        tx.execute(
            "INSERT INTO points (site, point, agent, room, device, quantity, unit, first_seen, last_seen)
             VALUES ('bench', ?1, 'edge', ?2, ?3, 'temperature', '°C', ?4, ?4)",
            rusqlite::params![name, format!("room{:02}", p / 50), format!("th-{p:03}"), end],
        )?;
        let id = tx.last_insert_rowid();
        let mut ins = tx.prepare_cached(
            "INSERT INTO rollup_1h (point_id, bucket, n, min, max, sum, last_ts, last) VALUES (?1, ?2, 360, ?3, ?4, ?5, ?6, ?7)",
        )?;
        let first = end - end.rem_euclid(HOUR) - 30 * DAY;
        for h in 0..720 {
            let b = first + h * HOUR;
            let v = 20.0 + ((p + h) % 40) as f64 / 4.0;
            ins.execute(rusqlite::params![
                id,
                b,
                v - 0.5,
                v + 0.5,
                v * 360.0,
                b + HOUR - 10_000,
                v
            ])?;
        }
        names.push(name);
    }
    tx.commit()?;
    Ok(names)
}

/// Median and worst of `runs` timed GETs (whole answer received), the
/// median time to the first byte (the server's work: it builds the whole
/// body before sending), and the answer's size. Checks each is a 200.
async fn time_get(
    client: &reqwest::Client,
    url: &str,
    runs: usize,
) -> Result<(f64, f64, f64, usize)> {
    let mut times = Vec::with_capacity(runs);
    let mut first_byte = Vec::with_capacity(runs);
    let mut bytes = 0;
    for _ in 0..runs {
        let started = Instant::now();
        let resp = client.get(url).send().await?;
        first_byte.push(started.elapsed().as_secs_f64() * 1000.0);
        let status = resp.status();
        let body = resp.bytes().await?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(
            status.is_success(),
            "{status}: {}",
            String::from_utf8_lossy(&body)
        );
        bytes = body.len();
    }
    times.sort_by(f64::total_cmp);
    first_byte.sort_by(f64::total_cmp);
    Ok((
        times[times.len() / 2],
        times[times.len() - 1],
        first_byte[runs / 2],
        bytes,
    ))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let runs = arg("--runs", 20) as usize;
    let dir = tempfile::tempdir_in(std::env::current_dir()?)?;
    let db = dir.path().join("store.db");
    let end = roomguard_protocol::clock::now_ms();
    let (samples, insert_s, rollup_s) = one_point_90_days(&db, end)?;
    let size = std::fs::metadata(&db)?.len()
        + std::fs::metadata(db.with_extension("db-wal"))
            .map(|m| m.len())
            .unwrap_or(0);
    let conn = rusqlite::Connection::open(&db)?;
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
    let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let page: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    let minutes: i64 = conn.query_row("SELECT count(*) FROM rollup_1m", [], |r| r.get(0))?;
    drop(conn);
    println!(
        "one point, 90 days at 10 s: {samples} samples written in {insert_s:.1} s ({:.0}/s), {minutes} minute rollups computed in {rollup_s:.1} s",
        samples as f64 / insert_s
    );
    println!(
        "bytes on disk: {:.1} per sample, raw and rollups together ({} bytes in {pages} pages; {size} before checkpoint)",
        (pages * page) as f64 / samples as f64,
        pages * page
    );
    let names = month_of_500_points(&db, end)?;

    // The collector, on this store, with no agents.
    let conf = write_collector_config(dir.path(), &db, None, "", "127.0.0.1:0")?;
    measure("SQLite", dir.path(), &conf, end, &names, runs).await?;
    if arg("--postgres", 0) == 1 {
        // The same store moved into PostgreSQL by `migrate`, then served
        // from there.
        let pg = Postgres::start()?.context("PostgreSQL is not installed")?;
        let started = Instant::now();
        migrate_to_postgres(dir.path(), &conf, &pg, "history")?;
        let rows: i64 = pg.psql("history", "SELECT (SELECT count(*) FROM samples) + (SELECT count(*) FROM rollup_1m) + (SELECT count(*) FROM rollup_1h)")?.parse()?;
        let secs = started.elapsed().as_secs_f64();
        println!(
            "migrate to PostgreSQL: {rows} sample and rollup rows in {secs:.1} s ({:.0} rows/s)",
            rows as f64 / secs
        );
        let pg_dir = dir.path().join("pg");
        std::fs::create_dir_all(&pg_dir)?;
        let store = pg_store_toml(&pg_dir, &pg, "history", Postgres::PASSWORD)?;
        let conf = write_collector_config_with_store(&pg_dir, &store, None, "", "127.0.0.1:0")?;
        measure("PostgreSQL", &pg_dir, &conf, end, &names, runs).await?;
    }
    Ok(())
}

/// Starts the release collector on `conf` and times the history questions.
async fn measure(
    backend: &str,
    dir: &Path,
    conf: &Path,
    end: i64,
    names: &[String],
    runs: usize,
) -> Result<()> {
    let mut collector = spawn_collector(dir, conf)?;
    let (http, _) = collector_urls(&collector.wait_ready(Duration::from_secs(30))?)?;
    let client = http_client();
    println!("{backend}:");
    let from = jiff::Timestamp::from_millisecond(end - 90 * DAY)?;
    let to = jiff::Timestamp::from_millisecond(end)?;
    let url =
        format!("{http}/api/v1/history?point=br-th-1.temperature&from={from}&to={to}&step=7776s");
    let (median, worst, ttfb, bytes) = time_get(&client, &url, runs).await?;
    let doc: serde_json::Value = client.get(&url).send().await?.json().await?;
    let n = doc["series"][0]["values"].as_array().map_or(0, Vec::len);
    println!(
        "90 days of one point at a 1,000-point step (tier {}): {n} points, {bytes} bytes; median {median:.1} ms (first byte {ttfb:.1} ms), worst {worst:.1} ms over {runs} runs",
        doc["tier"]
    );

    let from = jiff::Timestamp::from_millisecond(end - 30 * DAY)?;
    let url = format!(
        "{http}/api/v1/history?point={}&from={from}&to={to}&step=1h",
        names.join(",")
    );
    let (median, worst, ttfb, bytes) = time_get(&client, &url, runs).await?;
    let csv_url = format!("{url}&format=csv");
    let (c_median, c_worst, c_ttfb, c_bytes) = time_get(&client, &csv_url, runs).await?;
    println!(
        "a month of 500 points at 1 h: JSON {bytes} bytes, median {median:.1} ms (first byte {ttfb:.1} ms), worst {worst:.1} ms; CSV {c_bytes} bytes, median {c_median:.1} ms (first byte {c_ttfb:.1} ms), worst {c_worst:.1} ms ({runs} runs each)"
    );
    collector.kill();
    Ok(())
}
