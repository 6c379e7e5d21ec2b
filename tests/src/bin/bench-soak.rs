//! Soak benchmark (issue 19): the collector with its embedded broker under
//! varied load, in cycles of five minutes, its resident memory sampled every
//! 10 s. Each cycle: steady load (agents × 50 readings a second, with junk
//! among it: unsigned and oversized messages), a burst, a crowd of idle
//! connections (logged in, and raw TCP that never says CONNECT), then
//! silence. Memory must come back in the silences, not climb cycle after
//! cycle. Also measured: resident memory per idle connection.
//!
//!   cargo build --release --workspace --bins
//!   cd /tmp && /work/main/target/release/bench-soak [--minutes 30] [--agents 200]

use anyhow::{Context, Result};
use roomguard_e2e::*;
use roomguard_protocol::Topic;
use rumqttc::{AsyncClient, MqttOptions, QoS};
use std::time::{Duration, Instant};

const READINGS: usize = 50;
const CONNECTIONS: usize = 8;
const CYCLE: Duration = Duration::from_secs(300);
const IDLE_CLIENTS: usize = 1_000;
const RAW_SOCKETS: usize = 500;

fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn client(port: u16, id: String, keep_alive: u64) -> (AsyncClient, tokio::task::JoinHandle<()>) {
    let mut opts = MqttOptions::new(id, "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(keep_alive));
    opts.set_credentials(MQTT_USER, MQTT_PASSWORD);
    opts.set_max_packet_size(1 << 20, 1 << 20);
    opts.set_inflight(200);
    let (client, mut eventloop) = AsyncClient::new(opts, 1_000);
    let task = tokio::spawn(async move {
        loop {
            if eventloop.poll().await.is_err() {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    });
    (client, task)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Steady,
    Burst,
    Crowd,
    Idle,
}

fn phase_at(into_cycle: Duration) -> Phase {
    match into_cycle.as_secs() {
        0..120 => Phase::Steady,
        120..180 => Phase::Burst,
        180..210 => Phase::Crowd,
        _ => Phase::Idle,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let minutes = arg("--minutes", 30);
    let agents = arg("--agents", 200) as usize;
    let dir = tempfile::tempdir_in(std::env::current_dir()?)?;
    let (collector, http, mqtt) = start_collector(dir.path(), None)?;
    let pid = collector.pid();
    let port: u16 = mqtt.rsplit(':').next().context("port")?.parse()?;
    let http_client = http_client();
    let publishers: Vec<(AsyncClient, _)> = (0..CONNECTIONS)
        .map(|c| client(port, format!("soak-{c}"), 30))
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = Instant::now();
    let end = started + Duration::from_secs(minutes * 60);
    let base = rss_mb(pid);
    println!("collector RSS at start: {base:.1} MB; {minutes} min, {agents} agents × {READINGS} readings/s steady, bursts of 100,000 readings/s offered, {IDLE_CLIENTS} idle logged-in connections and {RAW_SOCKETS} silent sockets in each crowd");
    println!("| minute | phase | collector RSS (MB) | readings stored | rejected |");
    println!("|---|---|---|---|---|");
    let mut seq = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut next_sample = Instant::now();
    let mut crowd: Vec<(AsyncClient, tokio::task::JoinHandle<()>)> = Vec::new();
    let mut raw: Vec<tokio::net::TcpStream> = Vec::new();
    let mut before_crowd = 0.0;
    let mut per_connection: Vec<f64> = Vec::new();
    let mut idle_rss: Vec<f64> = Vec::new();
    let mut peak = base;
    let mut last_phase = Phase::Steady;
    let mut junk = 0u64;
    let mut owed = 0.0f64;
    while Instant::now() < end {
        tick.tick().await;
        let into = started.elapsed().as_nanos() % CYCLE.as_nanos();
        let phase = phase_at(Duration::from_nanos(into as u64));
        if phase != last_phase {
            match phase {
                Phase::Crowd => {
                    before_crowd = rss_mb(pid);
                    for i in 0..IDLE_CLIENTS {
                        crowd.push(client(port, format!("idle-{seq}-{i}"), 60));
                    }
                    for _ in 0..RAW_SOCKETS {
                        if let Ok(s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                            raw.push(s);
                        }
                    }
                }
                Phase::Idle => {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    let with = rss_mb(pid);
                    per_connection.push((with - before_crowd) * 1024.0 / IDLE_CLIENTS as f64);
                    for (c, task) in crowd.drain(..) {
                        let _ = c.disconnect().await;
                        task.abort();
                    }
                    raw.clear();
                }
                Phase::Steady if last_phase == Phase::Idle => {
                    idle_rss.push(rss_mb(pid));
                }
                _ => {}
            }
            last_phase = phase;
        }
        let rate = match phase {
            Phase::Steady | Phase::Crowd => (agents * READINGS) as f64,
            Phase::Burst => 100_000.0,
            Phase::Idle => 0.0,
        };
        owed += rate / READINGS as f64 / 10.0;
        let now = roomguard_protocol::clock::now_ms();
        while owed >= 1.0 {
            owed -= 1.0;
            seq += 1;
            let agent = (seq as usize) % agents;
            let name = format!("edge-{agent:04}");
            let topic = Topic::batch("bench", &name);
            let payload = bench_batch(
                &name,
                &format!("dev-{agent:04}"),
                &format!("s{agent:04}"),
                READINGS,
                seq,
                now,
            );
            let (c, _) = &publishers[agent % CONNECTIONS];
            let _ = c.try_publish(topic, QoS::AtLeastOnce, false, payload);
        }
        // Junk among the steady load: unsigned, and signed but oversized.
        if phase == Phase::Steady && started.elapsed().as_millis() % 1000 < 100 {
            junk += 1;
            let topic = Topic::batch("bench", "edge-junk");
            let (c, _) = &publishers[0];
            let _ = c.try_publish(
                topic.clone(),
                QoS::AtLeastOnce,
                false,
                b"{\"v\":1,\"seq\":1}".to_vec(),
            );
            let big = format!(
                "{{\"v\":1,\"seq\":{junk},\"pad\":\"{}\"}}",
                "x".repeat(300 * 1024)
            );
            let _ = c.try_publish(
                topic.clone(),
                QoS::AtLeastOnce,
                false,
                signed(&topic, big.as_bytes()),
            );
        }
        if Instant::now() >= next_sample {
            next_sample += Duration::from_secs(10);
            let rss = rss_mb(pid);
            peak = peak.max(rss);
            if started.elapsed().as_secs() % 30 < 10 {
                let stored = metric(&http_client, &http, "roomguard_readings_stored_total").await;
                let rejected = metric(
                    &http_client,
                    &http,
                    "roomguard_messages_rejected_total{reason=\"too_large\"}",
                )
                .await
                    + metric(
                        &http_client,
                        &http,
                        "roomguard_messages_rejected_total{reason=\"unauthenticated\"}",
                    )
                    .await;
                println!(
                    "| {:.1} | {phase:?} | {rss:.1} | {stored} | {rejected} |",
                    started.elapsed().as_secs_f64() / 60.0
                );
            }
        }
    }
    let health = get_json(&http_client, &format!("{http}/healthz")).await;
    println!();
    println!(
        "collector RSS: start {base:.1} MB, peak {peak:.1} MB, at the end of each silence: {}",
        idle_rss
            .iter()
            .map(|r| format!("{r:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "resident memory per idle logged-in connection (crowd of {IDLE_CLIENTS}, plus {RAW_SOCKETS} silent sockets): {} KB",
        per_connection.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(", ")
    );
    println!(
        "health at the end: {}",
        health.map_or("unreachable".into(), |h| h.to_string())
    );
    Ok(())
}
