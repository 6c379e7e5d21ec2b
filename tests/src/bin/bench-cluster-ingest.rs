//! Cluster ingest benchmark (issue 22): three collectors in cluster mode
//! (release builds, alarms on with the default rules) on one PostgreSQL,
//! behind one Mosquitto, all started by this program on this machine.
//! 1,000 simulated agents spread over 100 sites publish signed batches of
//! 50 readings (50,000 points) at rising rates; for each step, the
//! readings/s the three nodes stored together, the worst ingest lag any of
//! them reported, and the CPU each process took. In the same run, before
//! the collectors start, a bare binary COPY of the same shape into the same
//! PostgreSQL: the ceiling the cluster is measured against.
//!
//!   cargo build --release --workspace --bins
//!   cd /tmp && /work/main/target/release/bench-cluster-ingest [--seconds 20] [--rates 100000,150000,200000]

use anyhow::{Context, Result};
use roomguard_e2e::*;
use roomguard_protocol::Topic;
use rumqttc::{AsyncClient, QoS};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const AGENTS: usize = 1_000;
const READINGS: usize = 50;
/// Publishing connections; each speaks for AGENTS / CONNECTIONS agents.
const CONNECTIONS: usize = 8;
const PARTITIONS: u32 = 64;
const DB: &str = "bench";

/// Agent `i`'s site: agents are spread evenly over `sites`.
fn site_of(i: usize, sites: usize) -> String {
    format!("bench-{:03}", i % sites)
}

/// The three nodes' metric `name`, summed or the largest.
async fn across(client: &reqwest::Client, nodes: &[String], name: &str) -> (f64, f64) {
    let mut sum = 0.0;
    let mut max = 0.0f64;
    for http in nodes {
        let text = match client.get(format!("{http}/metrics")).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => continue,
        };
        let v = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        sum += v;
        max = max.max(v);
    }
    (sum, max)
}

/// CPU seconds so far of each process measured.
fn cpu(procs: &[(String, u32)]) -> HashMap<String, f64> {
    procs
        .iter()
        .map(|(name, pid)| (name.clone(), tree_cpu_seconds(*pid)))
        .collect()
}

struct Step {
    offered: f64,
    stored: f64,
    worst_lag: f64,
    /// Cores used by each process during the step.
    cores: Vec<(String, f64)>,
}

/// Publishes at `rate` readings/s for `seconds`.
#[allow(clippy::too_many_arguments)]
async fn ingest_at(
    clients: &[AsyncClient],
    nodes: &[String],
    procs: &[(String, u32)],
    sites: usize,
    rate: f64,
    seconds: u64,
    seq: &mut u64,
) -> Result<Step> {
    let client = http_client();
    let (stored_before, _) = across(&client, nodes, "roomguard_readings_stored_total").await;
    let cpu_before = cpu(procs);
    let started = Instant::now();
    let mut sent = 0u64;
    let mut agent = 0usize;
    // A fresh round of sequence numbers (see bench-ingest).
    *seq += 1;
    let mut worst_lag = 0.0f64;
    let mut pacer = Pacer::new(rate / READINGS as f64);
    let mut next_sample = Instant::now() + Duration::from_secs(1);
    while started.elapsed() < Duration::from_secs(seconds) {
        let due = pacer.due().await;
        let now = roomguard_protocol::clock::now_ms();
        for _ in 0..due {
            agent = (agent + 1) % AGENTS;
            if agent == 0 {
                *seq += 1;
            }
            let site = site_of(agent, sites);
            let name = format!("edge-{agent:04}");
            let payload = bench_batch_of(
                &site,
                &name,
                &format!("dev-{agent:04}"),
                &format!("a{agent:04}"),
                READINGS,
                *seq,
                now,
            );
            let c = &clients[agent % clients.len()];
            if c.try_publish(Topic::batch(&site, &name), QoS::AtLeastOnce, false, payload)
                .is_ok()
            {
                sent += 1;
            }
        }
        if Instant::now() >= next_sample {
            next_sample += Duration::from_secs(1);
            let (_, lag) = across(&client, nodes, "roomguard_ingest_lag_seconds").await;
            if started.elapsed() > Duration::from_secs(3) {
                worst_lag = worst_lag.max(lag);
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (stored_after, _) = across(&client, nodes, "roomguard_readings_stored_total").await;
    let cpu_after = cpu(procs);
    // In the order of `procs`, as the table's header names them.
    let cores: Vec<(String, f64)> = procs
        .iter()
        .map(|(n, _)| (n.clone(), (cpu_after[n] - cpu_before[n]) / elapsed))
        .collect();
    Ok(Step {
        offered: sent as f64 * READINGS as f64 / elapsed,
        stored: (stored_after - stored_before) / elapsed,
        worst_lag,
        cores,
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let seconds = arg("--seconds", 20);
    let sites = arg("--sites", 100) as usize;
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
        .unwrap_or_else(|| vec![50_000.0, 100_000.0, 150_000.0, 200_000.0, 250_000.0]);

    // Sized as a server of this machine's memory would be (a quarter for
    // shared buffers), not as the tests' small cluster: the samples index
    // of 50,000 points is written all over at once.
    let shared_buffers = format!("shared_buffers={}MB", arg("--shared-buffers-mb", 2048));
    // `--statements 1`: where PostgreSQL's time went, by statement, at the end.
    let statements = arg("--statements", 0) == 1;
    let mut settings = vec![shared_buffers.as_str()];
    if statements {
        settings.push("shared_preload_libraries=pg_stat_statements");
    }
    let pg = Postgres::start_with(&settings)?.context("PostgreSQL is not installed")?;
    let dir = tempfile::tempdir_in(std::env::current_dir()?)?;
    let root = dir.path();
    pg.psql("postgres", "CREATE DATABASE bare")?;
    let bare = pg.bare_copy_rate("bare", 50_000, 20).await?;
    println!("bare binary COPY: {bare:.0} readings/s (50,000 points, 20 rounds, one COPY a round)");

    let broker = Mosquitto::start(root)?.context("Mosquitto is not installed")?;
    pg.psql("postgres", &format!("CREATE DATABASE {DB}"))?;
    if statements {
        // In a database of its own: the collector's refuses foreign tables.
        // The view shows every database's statements.
        pg.psql("bare", "CREATE EXTENSION pg_stat_statements")?;
    }
    let store = pg_store_toml(root, &pg, DB, Postgres::PASSWORD)?;
    let hook = Receiver::start().await?;
    let mut nodes = Vec::new();
    let mut procs = Vec::new();
    let mut running = Vec::new();
    for id in ["n1", "n2", "n3"] {
        let ndir = root.join(id);
        std::fs::create_dir_all(&ndir)?;
        let conf = cluster_node_toml(id, PARTITIONS, 10, 2, &hook.url, "0s");
        let (proc, http, _) = start_collector_stored(&ndir, &store, Some(&broker.url()), &conf)?;
        procs.push((id.to_owned(), proc.pid()));
        nodes.push(http);
        running.push(proc);
    }
    procs.push(("postgres".into(), pg.pid().context("postgres pid")?));
    procs.push(("mosquitto".into(), broker.proc.pid()));
    procs.push(("this load".into(), std::process::id()));

    let clients = bench_publishers(broker.port, "load", CONNECTIONS).await?;
    // Each agent says it is online, as a real one does when it connects:
    // that is how the nodes find the sites and subscribe to their batches.
    for agent in 0..AGENTS {
        let site = site_of(agent, sites);
        let name = format!("edge-{agent:04}");
        let status = roomguard_protocol::Status {
            state: roomguard_protocol::AgentState::Online,
            at: Some(roomguard_protocol::clock::now_ms()),
            ..roomguard_protocol::Status::offline(&site, &name)
        };
        let topic = Topic::status(&site, &name);
        let payload = signed(&topic, &status.to_json());
        clients[agent % clients.len()]
            .publish(topic, QoS::AtLeastOnce, true, payload)
            .await?;
    }
    eventually(
        Duration::from_secs(120),
        "every site registered",
        || async {
            let n: usize = pg
                .psql(DB, "SELECT count(*) FROM cluster_sites")
                .ok()?
                .parse()
                .ok()?;
            (n == sites).then_some(())
        },
    )
    .await?;
    let mut seq = 0;
    // Every node holds its share before the load starts, and every point
    // is in the catalogue (the first sight of a point costs more).
    let client = http_client();
    eventually(Duration::from_secs(120), "partitions balanced", || async {
        let c = get_json(&client, &format!("{}/api/v1/cluster", nodes[0])).await?;
        let held: usize = c["nodes"]
            .as_array()?
            .iter()
            .map(|n| n["partitions"].as_u64().unwrap_or(0) as usize)
            .sum();
        let live = c["nodes"]
            .as_array()?
            .iter()
            .filter(|n| n["live"] == true)
            .count();
        (held == PARTITIONS as usize && live == 3).then_some(())
    })
    .await?;
    ingest_at(&clients, &nodes, &procs, sites, 50_000.0, 5, &mut seq).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;

    println!(
        "| offered readings/s | stored readings/s | worst ingest lag | cores used: {} |",
        procs
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("|---|---|---|---|");
    for rate in rates {
        let s = ingest_at(&clients, &nodes, &procs, sites, rate, seconds, &mut seq).await?;
        println!(
            "| {:.0} | {:.0} | {:.2} s | {} |",
            s.offered,
            s.stored,
            s.worst_lag,
            s.cores
                .iter()
                .map(|(_, c)| format!("{c:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
        if s.worst_lag > 5.0 {
            break;
        }
    }
    let fenced = across(&client, &nodes, "roomguard_cluster_fenced_total")
        .await
        .0;
    let not_ours = across(&client, &nodes, "roomguard_cluster_batches_not_ours_total")
        .await
        .0;
    println!("fenced transactions {fenced}, batches not the receiving node's {not_ours}");
    if statements {
        println!("PostgreSQL's time by statement (ms total, calls, rows, the statement's start):");
        let top = pg.psql(
            "bare",
            "SELECT round(total_exec_time) || ' | ' || calls || ' | ' || rows || ' | ' || left(regexp_replace(query, '\\s+', ' ', 'g'), 110)
             FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = 'bench') ORDER BY total_exec_time DESC LIMIT 15",
        )?;
        println!("{top}");
    }
    Ok(())
}
