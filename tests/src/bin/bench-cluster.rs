//! Cluster benchmark (issue 22): three collectors in cluster mode on one
//! PostgreSQL behind one Mosquitto, each started by this program, with one
//! simulator and a real agent per site (the small machine-room agent of the
//! cluster tests). Two figures:
//!
//! - **alarm latency** outside a takeover: fire drills on every site at
//!   once, from each smoke reading's own event time (`raised_at`,
//!   `cleared_at` of the notification) to the webhook receiver holding it;
//! - **takeover time**: kill -9 of the node holding most partitions, to
//!   every one of its partitions held by a survivor (read from
//!   `cluster_leases` every 100 ms), then the node restarted and the
//!   partitions balanced again; repeated.
//!
//!   cargo build --release --workspace --bins
//!   cd /tmp && /work/main/target/release/bench-cluster [--sites 6] [--cycles 5] [--kills 3] [--lease 10] [--renew 2]

use anyhow::{Context, Result};
use roomguard_e2e::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};

const PARTITIONS: u32 = 64;
const DB: &str = "bench";

fn start_node(
    root: &std::path::Path,
    id: &str,
    store: &str,
    broker: &str,
    hook: &str,
    (lease, renew): (u64, u64),
) -> Result<(Proc, String)> {
    let dir = root.join(id);
    std::fs::create_dir_all(&dir)?;
    let conf = cluster_node_toml(id, PARTITIONS, lease, renew, hook, "0s");
    let (proc, http, _) = start_collector_stored(&dir, store, Some(broker), &conf)?;
    Ok((proc, http))
}

/// Live site partitions per owner, from the database.
fn owners(pg: &Postgres) -> Result<HashMap<String, usize>> {
    let text = pg.psql(
        DB,
        "SELECT owner || ' ' || count(*) FROM cluster_leases
         WHERE part >= 0 AND owner IS NOT NULL AND expires_at > now() GROUP BY owner",
    )?;
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (o, n) = l.split_once(' ').context("owner and count")?;
            Ok((o.to_owned(), n.parse()?))
        })
        .collect()
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or(-1)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let sites = arg("--sites", 6) as usize;
    let cycles = arg("--cycles", 5) as usize;
    let kills = arg("--kills", 3) as usize;
    let timing = (arg("--lease", 10), arg("--renew", 2));
    let pg = Postgres::start()?.context("PostgreSQL is not installed")?;
    let dir = tempfile::tempdir_in(std::env::current_dir()?)?;
    let root = dir.path();
    let broker = Mosquitto::start(root)?.context("Mosquitto is not installed")?;
    pg.psql("postgres", &format!("CREATE DATABASE {DB}"))?;
    let store = pg_store_toml(root, &pg, DB, Postgres::PASSWORD)?;
    let hook = Receiver::start().await?;
    let ids = ["n1", "n2", "n3"];
    let mut nodes: HashMap<&str, Proc> = HashMap::new();
    for id in ids {
        let (p, _) = start_node(root, id, &store, &broker.url(), &hook.url, timing)?;
        nodes.insert(id, p);
    }
    let (_sim, sim) = start_simulator(root, &[])?;
    let mut agents = Vec::new();
    for i in 0..sites {
        let site = format!("site-{i}");
        let adir = root.join(&site);
        std::fs::create_dir_all(&adir)?;
        let conf = small_site_agent_toml(&site, &sim, &broker.url(), &adir.join("state"));
        agents.push(start_agent(&adir, &conf)?);
    }
    let balanced = |live: &[&str]| -> Result<bool> {
        let o = owners(&pg)?;
        let share = (PARTITIONS as usize).div_ceil(live.len());
        Ok(o.values().sum::<usize>() == PARTITIONS as usize
            && o.keys().all(|n| live.contains(&n.as_str()))
            && live.iter().all(|n| o.get(*n).is_some_and(|c| *c <= share)))
    };
    eventually(Duration::from_secs(120), "partitions balanced", || async {
        balanced(&ids).ok()?.then_some(())
    })
    .await?;
    eventually(Duration::from_secs(120), "every site stored", || async {
        let n: usize = pg
            .psql(DB, "SELECT count(DISTINCT site) FROM batches")
            .ok()?
            .parse()
            .ok()?;
        (n == sites).then_some(())
    })
    .await?;

    // Alarm latency: every site's smoke heads raise and clear together.
    let client = http_client();
    let switch = |scenario: &'static str| drill(&client, &sim.control, scenario);
    let count = |kind: &'static str| {
        hook.received()
            .iter()
            .filter(|r| r.body["kind"] == kind && r.body["rule"] == "fire.smoke")
            .count()
    };
    for cycle in 0..cycles {
        switch("smoke").await?;
        // Both heads of every site (the second comes 20 s into the drill).
        eventually(Duration::from_secs(60), "raises", || async {
            (count("raise") >= (cycle + 1) * sites * 2).then_some(())
        })
        .await?;
        switch("normal").await?;
        eventually(Duration::from_secs(60), "clears", || async {
            (count("clear") >= (cycle + 1) * sites * 2).then_some(())
        })
        .await?;
    }
    let lat = notification_latencies(&hook.received(), |r| r.body["rule"] == "fire.smoke");
    println!(
        "{{\"figure\":\"alarm_latency\",\"nodes\":3,\"sites\":{sites},\"notifications\":{},\"p50_ms\":{},\"p99_ms\":{},\"max_ms\":{},\"repeated_keys\":{}}}",
        lat.len(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(-1),
        hook.duplicates().len()
    );

    // Takeover after kill -9, repeated.
    let mut takeovers = Vec::new();
    for _ in 0..kills {
        let o = owners(&pg)?;
        let (victim, held) = o
            .iter()
            .max_by_key(|(_, n)| **n)
            .map(|(n, c)| (n.clone(), *c))
            .context("somebody holds partitions")?;
        let id = *ids.iter().find(|i| **i == victim).context("a node")?;
        nodes.get_mut(id).context("its process")?.kill();
        let killed = Instant::now();
        loop {
            let o = owners(&pg)?;
            if !o.contains_key(&victim) && o.values().sum::<usize>() == PARTITIONS as usize {
                break;
            }
            anyhow::ensure!(killed.elapsed() < Duration::from_secs(120), "no takeover");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let took = killed.elapsed();
        println!(
            "{{\"figure\":\"takeover\",\"node\":{victim:?},\"partitions\":{held},\"seconds\":{:.2},\"lease_s\":{},\"renew_s\":{}}}",
            took.as_secs_f64(),
            timing.0,
            timing.1
        );
        takeovers.push(took.as_secs_f64());
        let (p, _) = start_node(root, id, &store, &broker.url(), &hook.url, timing)?;
        nodes.insert(id, p);
        eventually(Duration::from_secs(120), "balanced again", || async {
            balanced(&ids).ok()?.then_some(())
        })
        .await?;
    }
    takeovers.sort_by(f64::total_cmp);
    println!(
        "{{\"figure\":\"takeover_summary\",\"kills\":{},\"min_s\":{:.2},\"max_s\":{:.2}}}",
        takeovers.len(),
        takeovers.first().copied().unwrap_or(-1.0),
        takeovers.last().copied().unwrap_or(-1.0)
    );
    drop(agents);
    Ok(())
}
