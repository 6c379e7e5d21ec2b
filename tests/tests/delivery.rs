//! Delivery through faults, on a real Mosquitto: readings the agent published
//! reach the store exactly once even when the collector is killed (SIGKILL)
//! in the middle of ingest and started again. An independent `mosquitto_sub`
//! records what was published, and the store is counted directly.

use anyhow::{Context, Result};
use roomguard_e2e::*;
use serde_json::Value;
use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A child process that is killed when the test ends, passing or failing.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Unique (point, event time) pairs in the published batches recorded by
/// `mosquitto_sub -v` in `file`, and how many readings that was in all.
fn published(file: &Path) -> Result<(HashSet<(String, i64)>, usize)> {
    let mut set = HashSet::new();
    let mut total = 0;
    for line in BufReader::new(std::fs::File::open(file)?).lines() {
        let line = line?;
        let Some((_topic, payload)) = line.split_once(' ') else {
            continue;
        };
        let Ok(batch) = serde_json::from_str::<Value>(payload) else {
            continue;
        };
        for r in batch["readings"].as_array().into_iter().flatten() {
            if let (Some(p), Some(t)) = (r["p"].as_str(), r["t"].as_i64()) {
                total += 1;
                set.insert((p.to_owned(), t));
            }
        }
    }
    Ok((set, total))
}

fn stored(db: &Path) -> Result<HashSet<(String, i64)>> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut stmt =
        conn.prepare("SELECT p.point, s.ts FROM samples s JOIN points p ON p.id = s.point_id")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[tokio::test(flavor = "multi_thread")]
async fn collector_killed_during_ingest_and_restarted_loses_no_reading() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let Some(broker) = Mosquitto::start(dir.path())? else {
        return Ok(());
    };
    let Some(sub) = external("mosquitto_sub", "mosquitto-clients") else {
        return Ok(());
    };
    // The independent record of everything published (QoS 1, its own session).
    let record = dir.path().join("published.txt");
    let _observer = KillOnDrop(
        Command::new(sub)
            .args(broker.client_args())
            .args(["-q", "1", "-v"])
            .args(["-t", "roomguard/v1/+/+/batch", "-i", "observer"])
            .stdout(std::fs::File::create(&record)?)
            .stderr(Stdio::null())
            .spawn()?,
    );
    // Give the observer its subscription before anything is published.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (_sim, sim) = start_simulator(dir.path(), &[])?;
    let (mut collector, http, _) = start_collector(dir.path(), Some(&broker.url()))?;
    let agent_conf = demo_agent_config(&sim, &broker.url(), &dir.path().join("agent-state"))?;
    let mut agent = start_agent(dir.path(), &agent_conf)?;
    let client = reqwest::Client::new();
    eventually(Duration::from_secs(60), "readings flowing", || async {
        latest_point(&client, &http, "br-h2-1.h2").await.map(|_| ())
    })
    .await?;

    // Kill the collector mid-stream; the agent keeps publishing meanwhile and
    // the broker keeps the collector's messages for its persistent session.
    tokio::time::sleep(Duration::from_secs(2)).await;
    collector.kill();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (collector2, http2, _) = start_collector(dir.path(), Some(&broker.url()))?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    agent.kill();

    // Everything published must be stored, once.
    let db = dir.path().join("store.db");
    let deadline = Instant::now() + Duration::from_secs(60);
    let (sent, sent_total) = loop {
        let (sent, total) = published(&record)?;
        let have = stored(&db)?;
        if sent.is_subset(&have) || Instant::now() > deadline {
            break (sent, total);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let have = stored(&db)?;
    let missing: Vec<_> = sent.difference(&have).take(5).collect();
    println!(
        "readings sent {sent_total} (unique {}), stored {}, duplicates not stored {}",
        sent.len(),
        have.len(),
        sent_total - sent.len()
    );
    assert!(missing.is_empty(), "not stored: {missing:?} …");
    assert_eq!(
        have.len(),
        sent.len(),
        "the store holds readings nobody published"
    );
    let health = get_json(&client, &format!("{http2}/healthz"))
        .await
        .context("healthz")?;
    assert_eq!(health["broker_connected"], true);
    drop(collector2);
    Ok(())
}
