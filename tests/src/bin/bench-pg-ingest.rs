//! PostgreSQL ingest benchmark (issue 21), first figures: the store's own
//! PostgreSQL writer (batch register, catalogue, binary COPY into a
//! temporary table, then into the partitioned samples with ON CONFLICT DO
//! NOTHING, latest values, rollup marks) against a bare binary COPY of the
//! same rows into a table of the same shape, in one run, on a PostgreSQL
//! cluster of its own. Rounds of batches as the writer thread would take
//! them under load; 50,000 points, a reading each per round.
//!
//! With `--alarms 1` the points are machine-room inlet temperatures (in
//! range) and the writer runs the default rule set's engine and record in
//! each transaction, as the collector does with alarms on.
//!
//!   cargo build --release -p roomguard-e2e --bin bench-pg-ingest
//!   target/release/bench-pg-ingest [--rounds 20] [--points 50000] [--per-batch 50] [--alarms 1]

use anyhow::Result;
use roomguard_collector::config::AlarmsConfig;
use roomguard_collector::store::alarms::Recorder;
use roomguard_collector::store::postgres::{self, writer::PgWriter};
use roomguard_collector::store::sql::Conn;
use roomguard_e2e::*;
use roomguard_protocol::{Batch, Label, PointMeta, Quality, Reading, PROTOCOL_VERSION};
use std::time::Instant;

/// Round `r`; `described` puts each point in the catalogue as a
/// machine-room inlet temperature (the first round of an alarm run), and
/// `alarms` keeps values within the inlet limits (18–27 °C).
fn round(
    points: usize,
    per_batch: usize,
    r: usize,
    t0: i64,
    (described, alarms): (bool, bool),
) -> Vec<Batch> {
    let ts = t0 + r as i64 * 1_000;
    let value = |i: usize| {
        if alarms {
            21.0 + ((r + i) % 20) as f64 / 10.0
        } else {
            20.0 + ((r + i) % 97) as f64 / 10.0
        }
    };
    let name = |b: usize, i: usize| format!("dev-{b:05}.inlet-p{i:03}");
    (0..points / per_batch)
        .map(|b| Batch {
            v: PROTOCOL_VERSION,
            site: "bench".into(),
            agent: format!("agent-{:04}", b % 1000).as_str().into(),
            seq: (r * 1_000_000 + b) as u64,
            device: format!("dev-{b:05}").as_str().into(),
            polled_at: ts,
            backfill: false,
            points: if described {
                (0..per_batch)
                    .map(|i| PointMeta {
                        id: name(b, i).as_str().into(),
                        room: "machine-room".into(),
                        quantity: "temperature".into(),
                        unit: "°C".into(),
                    })
                    .collect()
            } else {
                Vec::new()
            },
            readings: (0..per_batch)
                .map(|i| Reading {
                    point: Label::from(name(b, i).as_str()),
                    value: Some(value(i)),
                    text: None,
                    ts,
                    quality: Quality::Good,
                })
                .collect(),
        })
        .collect()
}

#[tokio::main]
async fn main() -> Result<()> {
    let rounds = arg("--rounds", 20) as usize;
    let points = arg("--points", 50_000) as usize;
    let per_batch = arg("--per-batch", 50) as usize;
    let pg = Postgres::start()?.ok_or_else(|| anyhow::anyhow!("PostgreSQL is not installed"))?;
    pg.psql("postgres", "CREATE DATABASE roomguard")?;
    let cfg = postgres::settings(&pg.url("roomguard"), Some(Postgres::PASSWORD))?;
    let mut w = PgWriter::open(&postgres::Target {
        config: cfg.clone(),
        tls: None,
    })
    .await?;
    let alarms = arg("--alarms", 0) == 1;
    let t0 = roomguard_protocol::clock::now_ms() - rounds as i64 * 1_000;
    // The first round makes the catalogue; it is not timed.
    let mut rec = None;
    if alarms {
        w.write_batches(&round(points, per_batch, 0, t0, (true, true)), t0, None)
            .await?;
        let cfg = AlarmsConfig::default();
        let rules = std::sync::Arc::new(cfg.rules().map_err(|e| anyhow::anyhow!("{e}"))?);
        let loaded = Recorder::load(
            Conn::Pg(w.client()),
            rules,
            cfg.routes(),
            cfg.escalation(),
            t0,
            None,
        );
        rec = Some(loaded.await?);
    } else {
        w.write_batches(&round(points, per_batch, 0, t0, (false, false)), t0, None)
            .await?;
    }
    let started = Instant::now();
    let mut stored = 0;
    for r in 1..=rounds {
        let batches = round(points, per_batch, r, t0, (false, alarms));
        stored += w
            .write_batches(&batches, t0 + r as i64 * 1_000, rec.as_mut())
            .await?
            .readings;
    }
    let writer_rate = stored as f64 / started.elapsed().as_secs_f64();

    // The bare COPY: the same rows, ids known, into a table of the same shape.
    let bare_rate = pg.bare_copy_rate("roomguard", points, rounds).await?;
    println!(
        "{}",
        serde_json::json!({
            "points": points, "rounds": rounds, "readings_per_batch": per_batch, "alarms": alarms,
            "writer_readings_per_s": writer_rate.round(),
            "bare_copy_readings_per_s": bare_rate.round(),
            "writer_vs_bare": (bare_rate / writer_rate * 100.0).round() / 100.0,
        })
    );
    Ok(())
}
