//! Ingest benchmark (issue #5): 1,000 simulated agents publish batches of 50
//! readings through a real Mosquitto into the collector (release build, its
//! SQLite store), at rising rates; for each, the readings/s stored and the
//! worst ingest lag (poll to commit, from the collector's own metric). In the
//! same run, the two limits it sits between: the broker's ceiling (1 KiB QoS 1
//! messages through Mosquitto to `mosquitto_sub > /dev/null`) and a bare
//! batched SQLite insert of the same rows.
//!
//!   cargo build --release --workspace --bins
//!   cd /tmp && /work/main/target/release/bench-ingest [--seconds 20]

use anyhow::{Context, Result};
use roomguard_e2e::*;
use roomguard_protocol::Topic;
use rumqttc::{AsyncClient, QoS};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const AGENTS: usize = 1_000;
const READINGS: usize = 50;
/// Publishing connections; each speaks for AGENTS / CONNECTIONS agents.
const CONNECTIONS: usize = 8;

fn bare_sqlite(rows: i64) -> Result<f64> {
    let dir = tempfile::tempdir_in(std::env::current_dir()?)?;
    let conn = rusqlite::Connection::open(dir.path().join("bare.db"))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.execute_batch(
        "CREATE TABLE samples (point_id INTEGER NOT NULL, ts INTEGER NOT NULL, value REAL, text TEXT, bad TEXT,
         PRIMARY KEY (point_id, ts)) WITHOUT ROWID;",
    )?;
    let started = Instant::now();
    let per_tx = 25_000;
    let mut done = 0;
    let t0 = 1_800_000_000_000i64;
    while done < rows {
        let tx = conn.unchecked_transaction()?;
        {
            let mut ins = tx.prepare_cached("INSERT OR IGNORE INTO samples (point_id, ts, value, text, bad) VALUES (?1, ?2, ?3, NULL, NULL)")?;
            for i in done..(done + per_tx).min(rows) {
                // The same shape as the load below: 50,000 points, one reading each per round.
                let point = i % 50_000;
                let ts = t0 + (i / 50_000) * 1_000;
                ins.execute(rusqlite::params![point, ts, 20.0 + (i % 97) as f64 / 10.0])?;
            }
        }
        tx.commit()?;
        done += per_tx;
    }
    Ok(rows as f64 / started.elapsed().as_secs_f64())
}

/// `text` without terminal colour codes (the collector's log has them).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ ... letter
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The broker's ceiling: `count` 1 KiB QoS 1 messages to mosquitto_sub > /dev/null.
async fn broker_ceiling(broker: &Mosquitto, count: usize) -> Result<f64> {
    let sub = external("mosquitto_sub", "mosquitto-clients").context("mosquitto_sub")?;
    let mut child = Command::new(sub)
        .args(broker.client_args())
        .args(["-q", "1", "-t", "ceiling/#", "-C", &count.to_string()])
        .stdout(Stdio::null())
        .spawn()?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let clients = bench_publishers(broker.port, "ceiling", CONNECTIONS).await?;
    let payload = vec![b'x'; 1024];
    let started = Instant::now();
    let per = count / CONNECTIONS + 1;
    let mut tasks = Vec::new();
    for (i, c) in clients.into_iter().enumerate() {
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..per {
                let _ = c
                    .publish(
                        format!("ceiling/{i}"),
                        QoS::AtLeastOnce,
                        false,
                        payload.clone(),
                    )
                    .await;
            }
        }));
    }
    // Bounded: the test broker queues at most 100,000 messages per client.
    let waited = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::task::spawn_blocking(move || child.wait()),
    )
    .await
    .context("mosquitto_sub did not receive them all within 2 minutes")???;
    anyhow::ensure!(waited.success(), "mosquitto_sub failed");
    let rate = count as f64 / started.elapsed().as_secs_f64();
    for t in tasks {
        t.abort();
    }
    Ok(rate)
}

fn batch(agent: usize, seq: u64, at: i64) -> Vec<u8> {
    let (a, d, p) = (
        format!("edge-{agent:04}"),
        format!("dev-{agent:04}"),
        format!("a{agent:04}"),
    );
    bench_batch(&a, &d, &p, READINGS, seq, at)
}

/// Publishes at `rate` readings/s for `seconds`; returns (offered, stored/s, worst lag s).
async fn ingest_at(
    clients: &[AsyncClient],
    http: &str,
    rate: f64,
    seconds: u64,
    seq: &mut u64,
) -> Result<(f64, f64, f64)> {
    let client = http_client();
    let batches_per_s = rate / READINGS as f64;
    let stored_before = metric(&client, http, "roomguard_readings_stored_total").await;
    let started = Instant::now();
    let mut sent = 0u64;
    let mut agent = 0usize;
    // A fresh round of sequence numbers: the previous step stopped part way
    // through one, and reusing its numbers would store batches as "reused".
    *seq += 1;
    let mut worst_lag = 0.0f64;
    let mut pacer = Pacer::new(batches_per_s);
    let mut next_sample = Instant::now() + Duration::from_secs(1);
    while started.elapsed() < Duration::from_secs(seconds) {
        let due = pacer.due().await;
        let now = roomguard_protocol::clock::now_ms();
        for _ in 0..due {
            agent = (agent + 1) % AGENTS;
            if agent == 0 {
                *seq += 1;
            }
            let c = &clients[agent % clients.len()];
            let topic = Topic::batch("bench", &format!("edge-{agent:04}"));
            if c.try_publish(topic, QoS::AtLeastOnce, false, batch(agent, *seq, now))
                .is_ok()
            {
                sent += 1;
            }
        }
        if Instant::now() >= next_sample {
            next_sample += Duration::from_secs(1);
            let text = client
                .get(format!("{http}/metrics"))
                .send()
                .await?
                .text()
                .await?;
            let lag = text
                .lines()
                .find_map(|l| l.strip_prefix("roomguard_ingest_lag_seconds "))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0);
            if started.elapsed() > Duration::from_secs(3) {
                worst_lag = worst_lag.max(lag);
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let stored = metric(&client, http, "roomguard_readings_stored_total").await - stored_before;
    let offered = sent as f64 * READINGS as f64 / elapsed;
    Ok((offered, stored as f64 / elapsed, worst_lag))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let seconds = arg("--seconds", 20);
    let dir = tempfile::tempdir_in(std::env::current_dir()?)?;
    let bare = bare_sqlite(2_000_000)?;
    println!("bare SQLite: {bare:.0} rows/s (batched INSERT OR IGNORE, transactions of 25,000, WAL, synchronous=NORMAL)");

    let broker = Mosquitto::start(dir.path())?.context("mosquitto is needed")?;
    let ceiling = broker_ceiling(&broker, 60_000).await?;
    println!("broker ceiling: {ceiling:.0} messages/s (1 KiB, QoS 1, {CONNECTIONS} publishers, to mosquitto_sub > /dev/null) = {:.0} readings/s at {READINGS} a message", ceiling * READINGS as f64);

    let (_collector, http, _) = start_collector(dir.path(), Some(&broker.url()))?;
    let clients = bench_publishers(broker.port, "load", CONNECTIONS).await?;
    let mut seq = 0;
    println!("| offered readings/s | stored readings/s | worst ingest lag |");
    println!("|---|---|---|");
    // `--rates 200000,300000` runs only those steps.
    let args: Vec<String> = std::env::args().collect();
    let rates: Vec<f64> = args
        .iter()
        .position(|a| a == "--rates")
        .and_then(|i| args.get(i + 1))
        .map(|list| {
            list.split(',')
                .filter_map(|r| r.trim().parse().ok())
                .collect()
        })
        .unwrap_or_else(|| {
            vec![
                50_000.0, 100_000.0, 150_000.0, 200_000.0, 250_000.0, 300_000.0,
            ]
        });
    for rate in rates {
        let (offered, stored, lag) = ingest_at(&clients, &http, rate, seconds, &mut seq).await?;
        println!("| {offered:.0} | {stored:.0} | {lag:.2} s |");
        // Let the queue drain before the next step.
        tokio::time::sleep(Duration::from_secs(5)).await;
        if lag > 5.0 {
            break;
        }
    }
    // What the collector complained of, if anything: a step that fell behind
    // is easier to explain with it.
    let log = std::fs::read_to_string(dir.path().join("collector.stderr.log")).unwrap_or_default();
    let complaints: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    println!("collector warnings and errors: {}", complaints.len());
    // Counted by message (the text before the first field), most frequent first.
    let mut kinds: std::collections::BTreeMap<String, (usize, String)> = Default::default();
    for l in &complaints {
        let plain = strip_ansi(l);
        let message = plain
            .split_once(": ")
            .map_or(plain.as_str(), |(_, m)| m)
            .split(' ')
            .take_while(|w| !w.contains('='))
            .collect::<Vec<_>>()
            .join(" ");
        let kind = kinds.entry(message).or_insert_with(|| (0, plain.clone()));
        kind.0 += 1;
    }
    let mut kinds: Vec<(usize, String)> = kinds.into_values().collect();
    kinds.sort_by_key(|k| std::cmp::Reverse(k.0));
    for (n, first) in kinds.iter().take(8) {
        println!("  {n} ×, the first: {first}");
    }
    Ok(())
}
