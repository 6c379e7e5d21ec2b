//! PostgreSQL ingest benchmark (issue 21), first figures: the store's own
//! PostgreSQL writer (batch register, catalogue, binary COPY into a
//! temporary table, then into the partitioned samples with ON CONFLICT DO
//! NOTHING, latest values, rollup marks) against a bare binary COPY of the
//! same rows into a table of the same shape, in one run, on a PostgreSQL
//! cluster of its own. Rounds of batches as the writer thread would take
//! them under load; 50,000 points, a reading each per round.
//!
//!   cargo build --release -p roomguard-e2e --bin bench-pg-ingest
//!   target/release/bench-pg-ingest [--rounds 20] [--points 50000] [--per-batch 50]

use anyhow::Result;
use futures_util::pin_mut;
use roomguard_collector::store::postgres::{self, writer::PgWriter};
use roomguard_e2e::*;
use roomguard_protocol::{Batch, Label, Quality, Reading, PROTOCOL_VERSION};
use std::time::Instant;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;

fn round(points: usize, per_batch: usize, r: usize, t0: i64) -> Vec<Batch> {
    let ts = t0 + r as i64 * 1_000;
    (0..points / per_batch)
        .map(|b| Batch {
            v: PROTOCOL_VERSION,
            site: "bench".into(),
            agent: format!("agent-{:04}", b % 1000).as_str().into(),
            seq: (r * 1_000_000 + b) as u64,
            device: format!("dev-{b:05}").as_str().into(),
            polled_at: ts,
            backfill: false,
            points: Vec::new(),
            readings: (0..per_batch)
                .map(|i| Reading {
                    point: Label::from(format!("dev-{b:05}.p{i:03}").as_str()),
                    value: Some(20.0 + ((r + i) % 97) as f64 / 10.0),
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
    let rounds = arg("rounds", 20) as usize;
    let points = arg("points", 50_000) as usize;
    let per_batch = arg("per-batch", 50) as usize;
    let pg = Postgres::start()?.ok_or_else(|| anyhow::anyhow!("PostgreSQL is not installed"))?;
    pg.psql("postgres", "CREATE DATABASE roomguard")?;
    let cfg = postgres::settings(&pg.url("roomguard"), Some(Postgres::PASSWORD))?;
    let mut w = PgWriter::open(&postgres::Target {
        config: cfg.clone(),
        tls: None,
    })
    .await?;
    let t0 = roomguard_protocol::clock::now_ms() - rounds as i64 * 1_000;
    // The first round makes the catalogue; it is not timed.
    w.write_batches(&round(points, per_batch, 0, t0), t0, None)
        .await?;
    let started = Instant::now();
    let mut stored = 0;
    for r in 1..=rounds {
        stored += w
            .write_batches(&round(points, per_batch, r, t0), t0, None)
            .await?
            .readings;
    }
    let writer_rate = stored as f64 / started.elapsed().as_secs_f64();

    // The bare COPY: the same rows, ids known, into a table of the same shape.
    let c = postgres::connect(&cfg).await?;
    c.batch_execute(
        "CREATE TABLE bare (point_id BIGINT NOT NULL, ts BIGINT NOT NULL, value DOUBLE PRECISION,
           text TEXT, bad TEXT, PRIMARY KEY (point_id, ts)) PARTITION BY RANGE (ts);",
    )
    .await?;
    let (_, lo, _) = postgres::migrate::partition_for(t0);
    c.batch_execute(&format!(
        "CREATE TABLE bare_p PARTITION OF bare FOR VALUES FROM ({lo}) TO ({})",
        lo + 2 * 86_400_000
    ))
    .await?;
    let started = Instant::now();
    let mut copied = 0u64;
    for r in 1..=rounds {
        let ts = t0 + r as i64 * 1_000;
        let sink = c
            .copy_in("COPY bare (point_id, ts, value, text, bad) FROM STDIN (FORMAT binary)")
            .await?;
        let writer = BinaryCopyInWriter::new(
            sink,
            &[Type::INT8, Type::INT8, Type::FLOAT8, Type::TEXT, Type::TEXT],
        );
        pin_mut!(writer);
        let none: Option<&str> = None;
        for p in 0..points as i64 {
            let v = Some(20.0 + ((r as i64 + p) % 97) as f64 / 10.0);
            writer.as_mut().write(&[&p, &ts, &v, &none, &none]).await?;
        }
        copied += writer.finish().await?;
    }
    let bare_rate = copied as f64 / started.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "points": points, "rounds": rounds, "readings_per_batch": per_batch,
            "writer_readings_per_s": writer_rate.round(),
            "bare_copy_readings_per_s": bare_rate.round(),
            "writer_vs_bare": (bare_rate / writer_rate * 100.0).round() / 100.0,
        })
    );
    Ok(())
}
