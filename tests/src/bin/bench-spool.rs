//! Spool benchmark. Two parts:
//!
//! 1. The spool alone (in-process, `roomguard_agent::spool`): batches of 20
//!    readings appended as the agent does (one `write` each, fsync once a
//!    second), then read back oldest first and confirmed in ranges, as the
//!    link does during a replay. Also appends with an fsync per batch.
//! 2. Replay after a long outage, end to end: one hour of 100 devices polled
//!    every 10 s (36,000 batches, 720,000 readings) is written into an
//!    agent's spool; then the real agent starts against a real Mosquitto and
//!    a collector, and we time until the collector has stored all of it.
//!    Once with the replay unthrottled (the ceiling), once at the default
//!    `replay_rate` (500 batches/s).
//!
//! Build release binaries first, then run:
//!   cargo build --release --workspace --bins
//!   target/release/bench-spool [--batches 200000] [--devices 100] [--minutes 60]

use anyhow::{Context, Result};
use roomguard_agent::spool::{Limits, OnFull, Spool, State};
use roomguard_e2e::*;
use roomguard_protocol::{Batch, Label, Quality, Reading, PROTOCOL_VERSION};
use std::path::Path;
use std::time::{Duration, Instant};

const SITE: &str = "bench-site";
const AGENT: &str = "edge-bench";
const READINGS: usize = 20;

fn limits(sync: Duration) -> Limits {
    Limits {
        max_bytes: 8 << 30,
        max_age: Duration::from_secs(30 * 86_400),
        on_full: OnFull::DropOldest,
        sync_interval: sync,
    }
}

/// A device poll of 20 readings as the agent encodes it (about 1 KB).
fn batch(seq: u64, device: usize, polled_at: i64) -> Batch {
    Batch {
        v: PROTOCOL_VERSION,
        site: SITE.into(),
        agent: AGENT.into(),
        seq,
        device: format!("dev-{device:03}"),
        polled_at,
        backfill: false,
        points: Vec::new(),
        readings: (0..READINGS)
            .map(|i| Reading {
                point: Label::from(format!("dev-{device:03}.p{i:02}").as_str()),
                value: Some(20.0 + (seq % 100) as f64 / 10.0 + i as f64),
                text: None,
                ts: polled_at,
                quality: Quality::Good,
            })
            .collect(),
    }
}

fn spool_alone(n: u64) -> Result<()> {
    let dir = tempfile::tempdir_in(std::env::current_dir()?)?;
    let payloads: Vec<(Vec<u8>, i64)> = (0..1000u64)
        .map(|i| {
            let b = batch(i + 1, (i % 100) as usize, 1_800_000_000_000 + i as i64);
            (b.to_json(), b.polled_at)
        })
        .collect();
    let bytes = payloads[0].0.len();
    let (mut spool, _) = Spool::open(dir.path(), limits(Duration::from_secs(1)))?;
    let started = Instant::now();
    for seq in 1..=n {
        let (p, t) = &payloads[(seq % 1000) as usize];
        spool.append(seq, *t, READINGS as u32, p)?;
        if seq % 1000 == 0 {
            spool.maintain(*t)?; // the agent's once-a-second upkeep (fsync when due)
        }
    }
    spool.sync()?;
    let t_in = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut cursor = None;
    let mut out = 0u64;
    let mut range_start = None;
    loop {
        let (c, found) = spool.next_unsent(cursor);
        cursor = Some(c);
        let Some(seq) = found else { break };
        let payload = spool.payload(seq)?.context("record unreadable")?;
        std::hint::black_box(roomguard_protocol::batch::mark_backfill(&payload));
        spool.set_state(seq, State::Sending);
        out += 1;
        let first = *range_start.get_or_insert(seq);
        // Confirmations come back in ranges (the collector gathers 100 ms).
        if seq - first == 99 {
            spool.finish(first, seq);
            range_start = None;
        }
    }
    if let Some(first) = range_start {
        spool.finish(first, n);
    }
    let t_out = started.elapsed().as_secs_f64();
    let rd = READINGS as f64;
    println!(
        "spool alone: {n} batches of {READINGS} readings ({bytes} bytes each)\n  in : {:>9.0} batches/s = {:>10.0} readings/s ({:.1} MB/s, fsync every second)\n  out: {:>9.0} batches/s = {:>10.0} readings/s (read back, marked backfill, confirmed in ranges of 100); {out} out, {} left",
        n as f64 / t_in,
        n as f64 * rd / t_in,
        n as f64 * bytes as f64 / t_in / 1e6,
        n as f64 / t_out,
        n as f64 * rd / t_out,
        spool.pending_batches(),
    );
    // An fsync per batch (sync_interval = "0s").
    let dir = tempfile::tempdir_in(std::env::current_dir()?)?;
    let (mut spool, _) = Spool::open(dir.path(), limits(Duration::ZERO))?;
    let m = (n / 50).max(200);
    let started = Instant::now();
    for seq in 1..=m {
        let (p, t) = &payloads[(seq % 1000) as usize];
        spool.append(seq, *t, READINGS as u32, p)?;
    }
    let t = started.elapsed().as_secs_f64();
    println!(
        "  in with an fsync per batch: {:>7.0} batches/s = {:>9.0} readings/s ({m} batches)",
        m as f64 / t,
        m as f64 * rd / t
    );
    Ok(())
}

/// Writes `devices` × `minutes` of 10-second polls into a spool at `dir`.
fn fill_outage(dir: &Path, devices: usize, minutes: u64) -> Result<(u64, i64)> {
    let (mut spool, _) = Spool::open(dir, limits(Duration::from_secs(1)))?;
    let start = roomguard_protocol::clock::now_ms() - minutes as i64 * 60_000;
    let mut seq = 0;
    for tick in 0..(minutes * 6) {
        let t = start + tick as i64 * 10_000;
        for d in 0..devices {
            seq += 1;
            let b = batch(seq, d, t + d as i64);
            spool.append(seq, b.polled_at, READINGS as u32, &b.to_json())?;
        }
    }
    spool.sync()?;
    Ok((seq, start))
}

async fn replay(devices: usize, minutes: u64, rate: Option<u32>) -> Result<()> {
    let dir = tempfile::tempdir_in(std::env::current_dir()?)?;
    let state = dir.path().join("agent-state");
    let (batches, _) = fill_outage(&state.join("spool"), devices, minutes)?;
    // The agent numbers new batches after the spooled ones.
    std::fs::write(state.join("sequence"), format!("{}\n", batches + 1))?;
    let broker = Mosquitto::start(dir.path())?.context("mosquitto is needed")?;
    let (_sim, sim) = start_simulator(dir.path(), &[])?;
    let (_collector, http, _) = start_collector(dir.path(), Some(&broker.url()))?;
    let rate = rate.unwrap_or(1_000_000);
    // One real device, so the agent also has live batches to send meanwhile.
    let conf = format!(
        "site = {SITE:?}\nagent = {AGENT:?}\nstate_dir = {:?}\n[mqtt]\nurl = {:?}\n{}[metrics]\nlisten = \"127.0.0.1:0\"\n[spool]\nreplay_rate = {rate}\n[[modbus]]\nid = \"th-1\"\nprofile = \"generic-th-sensor\"\naddress = {:?}\nunit = 1\nroom = \"r1\"\n",
        state.display().to_string(),
        broker.url(),
        agent_mqtt_toml(SITE, AGENT),
        sim.modbus,
    );
    let client = http_client();
    let mut agent = start_agent(dir.path(), &conf)?;
    let ready = agent.wait_ready(Duration::from_secs(60))?;
    let started = Instant::now();
    let agent_http = format!("http://{}", ready["metrics"].as_str().context("metrics")?);
    let target = batches;
    let mut last_print = Instant::now();
    loop {
        let stored = metric(&client, &http, "roomguard_batches_stored_total").await;
        // The live device's batches are stored too; wait for the whole backlog.
        let live = metric(&client, &agent_http, "roomguard_agent_sent_live_total").await;
        if stored >= target + live {
            break;
        }
        if last_print.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "  … {stored}/{target} stored after {:.0?}",
                started.elapsed()
            );
            last_print = Instant::now();
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(900),
            "replay did not finish in 15 minutes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let live = metric(&client, &agent_http, "roomguard_agent_sent_live_total").await;
    let backfill = metric(&client, &agent_http, "roomguard_agent_sent_backfill_total").await;
    let label = if rate >= 1_000_000 {
        "unthrottled".to_owned()
    } else {
        format!("replay_rate = {rate}")
    };
    println!(
        "replay ({label}): {batches} batches = {} readings ({devices} devices × {minutes} min at 10 s) stored in {secs:.1} s: {:.0} batches/s = {:.0} readings/s; live batches sent meanwhile {live}, backfill sent {backfill}",
        batches * READINGS as u64,
        batches as f64 / secs,
        (batches * READINGS as u64) as f64 / secs,
    );
    agent.kill();
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let n = arg("--batches", 200_000);
    let devices = arg("--devices", 100) as usize;
    let minutes = arg("--minutes", 60);
    spool_alone(n)?;
    replay(devices, minutes, None).await?;
    replay(devices, minutes, Some(500)).await?;
    Ok(())
}
