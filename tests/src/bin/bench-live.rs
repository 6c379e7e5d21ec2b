//! Live-push benchmark (issue #7): a site of 2,000 points, each read once a
//! second, published to the collector's embedded broker; the collector's CPU
//! with no dashboard open, then with `--clients` (20) event streams open, and
//! how long a reading takes from its event time to arriving on a stream.
//! The difference between the two CPU figures is what the live push costs.
//!
//!   cargo build --release --workspace --bins
//!   cd /tmp && /work/main/target/release/bench-live [--seconds 30] [--clients 20]

use anyhow::{Context, Result};
use roomguard_e2e::*;
use roomguard_protocol::Topic;
use rumqttc::{AsyncClient, MqttOptions, QoS};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// 20 devices of 100 points: 2,000 points.
const DEVICES: usize = 20;
const POINTS: usize = 100;

fn batch(device: usize, seq: u64, at: i64) -> Vec<u8> {
    let (a, d, p) = (
        format!("edge-{device:02}"),
        format!("dev-{device:02}"),
        format!("d{device:02}"),
    );
    // Every value changes every second, the worst case for a push.
    bench_batch(&a, &d, &p, POINTS, seq, at)
}

/// Publishes every device's batch once a second until dropped.
async fn publish(port: u16) -> Result<tokio::task::JoinHandle<()>> {
    let mut opts = MqttOptions::new("bench-live", "127.0.0.1", port);
    opts.set_max_packet_size(1 << 20, 1 << 20);
    opts.set_credentials(MQTT_USER, MQTT_PASSWORD);
    let (client, mut eventloop) = AsyncClient::new(opts, 1_000);
    tokio::spawn(async move {
        loop {
            if eventloop.poll().await.is_err() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
    Ok(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut seq = 0u64;
        loop {
            tick.tick().await;
            seq += 1;
            let now = roomguard_protocol::clock::now_ms();
            for d in 0..DEVICES {
                let topic = Topic::batch("bench", &format!("edge-{d:02}"));
                let _ = client
                    .publish(topic, QoS::AtLeastOnce, false, batch(d, seq, now))
                    .await;
            }
        }
    }))
}

#[derive(Default)]
struct Seen {
    readings: AtomicU64,
    bytes: AtomicU64,
    latencies_ms: Mutex<Vec<i64>>,
}

/// One dashboard: reads the event stream, counts readings and their delay.
async fn dashboard(http: String, seen: Arc<Seen>) -> Result<()> {
    let client = http_client();
    let r = client.get(format!("{http}/api/v1/events")).send().await?;
    read_events(
        r,
        |n| {
            seen.bytes.fetch_add(n as u64, Ordering::Relaxed);
        },
        |event, data| {
            if event != "readings" {
                return Ok(());
            }
            let now = roomguard_protocol::clock::now_ms();
            let doc: serde_json::Value = serde_json::from_str(data)?;
            let points = doc["points"].as_array().context("points")?;
            seen.readings
                .fetch_add(points.len() as u64, Ordering::Relaxed);
            // One delay per frame: its oldest reading.
            let oldest = points
                .iter()
                .filter_map(|p| p["ts"].as_str()?.parse::<jiff::Timestamp>().ok())
                .map(|t| t.as_millisecond())
                .min();
            if let Some(ts) = oldest {
                seen.latencies_ms.lock().unwrap().push(now - ts);
            }
            Ok(())
        },
    )
    .await
}

fn cpu(pid: u32) -> Result<f64> {
    let (u, s) = cpu_seconds(pid)?;
    Ok(u + s)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let seconds = arg("--seconds", 30);
    let clients = arg("--clients", 20) as usize;
    let dir = tempfile::tempdir_in(std::env::current_dir()?)?;
    let (collector, http, mqtt) = start_collector(dir.path(), None)?;
    let pid = collector.pid();
    let port: u16 = mqtt.rsplit(':').next().context("port")?.parse()?;
    let _publisher = publish(port).await?;
    // Let every point be catalogued before measuring.
    tokio::time::sleep(Duration::from_secs(5)).await;

    let measure = |what: &'static str| async move {
        let c0 = cpu(pid)?;
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        let share = (cpu(pid)? - c0) / t0.elapsed().as_secs_f64() * 100.0;
        println!("collector CPU, {what}: {share:.1} % of one core");
        anyhow::Ok(share)
    };
    let idle = measure("no dashboard open").await?;

    let seen = Arc::new(Seen::default());
    let mut streams = Vec::new();
    for _ in 0..clients {
        let (http, seen) = (http.clone(), seen.clone());
        streams.push(tokio::spawn(async move {
            if let Err(e) = dashboard(http, seen).await {
                eprintln!("dashboard stream failed: {e:#}");
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    seen.latencies_ms.lock().unwrap().clear();
    let r0 = seen.readings.load(Ordering::Relaxed);
    let b0 = seen.bytes.load(Ordering::Relaxed);
    let t0 = Instant::now();
    let watched = measure("with dashboards open").await?;
    let elapsed = t0.elapsed().as_secs_f64();
    let per_client = (seen.readings.load(Ordering::Relaxed) - r0) as f64 / elapsed / clients as f64;
    let bytes = (seen.bytes.load(Ordering::Relaxed) - b0) as f64 / elapsed / clients as f64;
    let mut l = seen.latencies_ms.lock().unwrap().clone();
    l.sort_unstable();
    let pct = |p: f64| {
        l.get(((l.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(-1)
    };
    println!(
        "{clients} event streams: {per_client:.0} readings/s each ({:.0} KiB/s), push cost {:.1} % of one core",
        bytes / 1024.0,
        watched - idle
    );
    println!(
        "event time → on the stream (oldest reading of each frame): p50 {} ms, p99 {} ms, max {} ms over {} frames",
        pct(0.5),
        pct(0.99),
        l.last().copied().unwrap_or(-1),
        l.len()
    );
    // Before the collector goes, so its end is not reported as a failure.
    for s in streams {
        s.abort();
    }
    Ok(())
}
