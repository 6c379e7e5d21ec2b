//! The independent record of what an agent numbered, checked against a
//! store: every batch an agent run numbered must be stored exactly once
//! (unless the agent reported dropping it), and the samples stored must be
//! exactly the readings those batches carried.
//!
//! Each agent run numbers its batches from the `first_seq` of its ready
//! line; the next run's ready line (or the graceful `stopped` line) says the
//! last number the run spooled.

use crate::Postgres;
use anyhow::{Context, Result};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

/// The batches each agent run numbered.
#[derive(Default)]
pub struct Ledger {
    /// First number of each run, and its last once known.
    runs: Vec<(u64, Option<u64>)>,
}

impl Ledger {
    /// Records a start from the agent's ready line.
    pub fn started(&mut self, ready: &Value) -> Result<()> {
        let on_disk = ready["spool"]["last_seq"].as_u64();
        self.close_last(on_disk);
        let first = ready["first_seq"]
            .as_u64()
            .context("ready line without first_seq")?;
        self.runs.push((first, None));
        Ok(())
    }

    /// Records a graceful stop from what the agent printed on the way out.
    pub fn stopped(&mut self, output: &[String]) -> Result<()> {
        let line = output
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["event"] == "stopped")
            .context("the agent printed no stopped line")?;
        self.close_last(line["last_seq"].as_u64());
        Ok(())
    }

    fn close_last(&mut self, last_on_disk: Option<u64>) {
        if let Some((first, last @ None)) = self.runs.last_mut() {
            // A number below the run's first is an older run's: this one spooled nothing.
            *last = Some(last_on_disk.filter(|l| *l >= *first).unwrap_or(*first - 1));
        }
    }

    pub fn numbered(&self) -> BTreeSet<u64> {
        self.runs
            .iter()
            .flat_map(|(first, last)| *first..=last.unwrap_or(first - 1))
            .collect()
    }
}

/// A store the ledger is checked against.
pub trait Stored {
    /// The agent's batches in the store: sequence number → readings carried.
    fn batches(&self) -> Result<BTreeMap<u64, i64>>;
    /// Readings stored.
    fn samples(&self) -> Result<i64>;
}

impl Stored for Path {
    fn batches(&self) -> Result<BTreeMap<u64, i64>> {
        stored_batches(self)
    }

    fn samples(&self) -> Result<i64> {
        let conn = rusqlite::Connection::open_with_flags(
            self,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )?;
        Ok(conn.query_row("SELECT count(*) FROM samples", [], |r| r.get(0))?)
    }
}

impl Stored for std::path::PathBuf {
    fn batches(&self) -> Result<BTreeMap<u64, i64>> {
        self.as_path().batches()
    }

    fn samples(&self) -> Result<i64> {
        self.as_path().samples()
    }
}

/// A PostgreSQL store: the server and the database's name.
pub struct PgStored<'a>(pub &'a Postgres, pub &'a str);

impl Stored for PgStored<'_> {
    fn batches(&self) -> Result<BTreeMap<u64, i64>> {
        pg_batches(self.0, self.1, "")
    }

    fn samples(&self) -> Result<i64> {
        Ok(self
            .0
            .psql(self.1, "SELECT count(*) FROM samples")?
            .parse()?)
    }
}

/// One agent's batches and samples in a PostgreSQL store several agents
/// share (a cluster's): the server, the database, the site and the agent.
pub struct PgAgentStored<'a>(pub &'a Postgres, pub &'a str, pub &'a str, pub &'a str);

impl Stored for PgAgentStored<'_> {
    fn batches(&self) -> Result<BTreeMap<u64, i64>> {
        pg_batches(
            self.0,
            self.1,
            &format!("WHERE site = '{}' AND agent = '{}'", self.2, self.3),
        )
    }

    fn samples(&self) -> Result<i64> {
        Ok(self
            .0
            .psql(
                self.1,
                &format!(
                    "SELECT count(*) FROM samples s JOIN points p ON p.id = s.point_id \
                     WHERE p.site = '{}' AND p.agent = '{}'",
                    self.2, self.3
                ),
            )?
            .parse()?)
    }
}

/// Batches in a PostgreSQL store (`filter`: a WHERE clause or nothing):
/// sequence number → readings carried.
fn pg_batches(pg: &Postgres, db: &str, filter: &str) -> Result<BTreeMap<u64, i64>> {
    let text = pg.psql(
        db,
        &format!("SELECT seq || ' ' || readings FROM batches {filter}"),
    )?;
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (seq, n) = l.split_once(' ').context("seq and readings")?;
            Ok((seq.parse()?, n.parse()?))
        })
        .collect()
}

/// The agent's batches in a SQLite store: sequence number → readings carried.
pub fn stored_batches(db: &Path) -> Result<BTreeMap<u64, i64>> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut stmt = conn.prepare("SELECT seq, readings FROM batches")?;
    let rows = stmt.query_map([], |r| {
        Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)?))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub struct Outcome {
    pub missing: Vec<u64>,
}

/// Waits until at most `allowed_missing.end()` numbered batches are missing
/// from the store, then checks that the number missing lies in
/// `allowed_missing` (what the agent reported dropping or discarding), that
/// the samples are exactly the stored batches' readings, and prints the
/// accounting.
pub async fn account<S: Stored + ?Sized>(
    name: &str,
    db: &S,
    ledger: &Ledger,
    allowed_missing: std::ops::RangeInclusive<usize>,
    duplicates: u64,
) -> Result<Outcome> {
    let numbered = ledger.numbered();
    let deadline = Instant::now() + Duration::from_secs(90);
    let (stored, missing) = loop {
        let stored = db.batches()?;
        let missing: Vec<u64> = numbered
            .iter()
            .filter(|s| !stored.contains_key(s))
            .copied()
            .collect();
        if missing.len() <= *allowed_missing.end() || Instant::now() > deadline {
            break (stored, missing);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let readings: i64 = stored.values().sum();
    // Readings reach the samples table from the store's staging a moment
    // after their batch is recorded (the agent has stopped, so the store
    // goes idle and moves them all within its next maintenance second).
    let settle = Instant::now() + Duration::from_secs(15);
    let samples = loop {
        let samples = db.samples()?;
        if samples >= readings || Instant::now() > settle {
            break samples;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    println!(
        "[{name}] batches numbered {}, stored {}, missing {}; readings in stored batches {readings}, samples stored {samples}; duplicate deliveries skipped {duplicates}",
        numbered.len(),
        stored.len(),
        missing.len(),
    );
    let foreign: Vec<_> = stored
        .keys()
        .filter(|s| !numbered.contains(s))
        .take(5)
        .collect();
    assert!(
        foreign.is_empty(),
        "stored batches no run numbered: {foreign:?}"
    );
    assert!(
        allowed_missing.contains(&missing.len()),
        "{} batches missing, expected {allowed_missing:?}: {:?}",
        missing.len(),
        &missing[..missing.len().min(20)]
    );
    assert_eq!(samples, readings, "each reading stored exactly once");
    Ok(Outcome { missing })
}

/// Waits until the agent owes nothing old: a few fresh batches awaiting
/// their confirmation at most (a graceful stop waits for those), nothing
/// older than 3 s (which would be a batch lost on the way, still to be sent
/// again).
pub async fn drained(client: &reqwest::Client, agent_http: &str) -> Result<()> {
    let waited = crate::eventually(
        Duration::from_secs(90),
        "the agent's spool to drain",
        || async {
            let pending =
                crate::metric(client, agent_http, "roomguard_agent_spool_pending_batches").await;
            let oldest = crate::metric(
                client,
                agent_http,
                "roomguard_agent_spool_oldest_age_seconds",
            )
            .await;
            (pending < 10 && oldest < 3).then_some(())
        },
    )
    .await;
    if waited.is_err() {
        // What the agent says it still owes, to tell a lost batch from a slow one.
        let page = match client.get(format!("{agent_http}/metrics")).send().await {
            Ok(resp) => resp.text().await.unwrap_or_default(),
            Err(e) => format!("(metrics unreachable: {e})"),
        };
        let owed: Vec<&str> = page
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| {
                ["spool", "sent", "confirmed", "resent", "broker"]
                    .iter()
                    .any(|k| l.starts_with(&format!("roomguard_agent_{k}")))
            })
            .collect();
        return waited.with_context(|| format!("agent metrics:\n{}", owed.join("\n")));
    }
    Ok(())
}

/// Starts an agent on `conf` and records its run in `ledger`.
pub fn start_run(dir: &Path, conf: &str, ledger: &mut Ledger) -> Result<(crate::Proc, Value)> {
    let mut agent = crate::start_agent(dir, conf)?;
    let ready = agent.wait_ready(Duration::from_secs(30))?;
    ledger.started(&ready)?;
    Ok((agent, ready))
}

/// The agent's metrics base URL from its ready line.
pub fn agent_metrics_url(ready: &Value) -> Result<String> {
    Ok(format!(
        "http://{}",
        ready["metrics"].as_str().context("agent metrics address")?
    ))
}
