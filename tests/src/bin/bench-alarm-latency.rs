//! Alarm latency benchmark (issue #6): from the agent reading a changed value
//! to the webhook receiver holding the notification, for a zero-delay rule
//! (`fire.smoke`), across the real binaries: simulator → agent → MQTT
//! (the collector's embedded broker) → collector (rule engine, outbox) →
//! HTTP webhook. The start is the reading's own event time (`raised_at` /
//! `cleared_at` of the notification), so the wait for the next poll — up to
//! one poll interval — is not counted, as the issue asks.
//!
//!   cargo build --release --workspace --bins
//!   cd /tmp && /work/main/target/release/bench-alarm-latency [--cycles 60]

use anyhow::{Context, Result};
use roomguard_e2e::*;
use std::time::Duration;

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let cycles = arg("--cycles", 60) as usize;
    let dir = tempfile::tempdir_in(std::env::current_dir()?)?;
    let hook = Receiver::start().await?;
    let extra = format!(
        "[alarms]\n[[alarms.channels]]\nid = \"hook\"\nkind = \"webhook\"\nurl = {:?}\n\
         [[alarms.overrides]]\nrule = \"fire.*\"\nclear_delay = \"0s\"\n",
        hook.url
    );
    let (_collector, http, mqtt) = start_collector_with(dir.path(), None, &extra)?;
    let (_sim, sim) = start_simulator(dir.path(), &[])?;
    let agent_conf = demo_agent_config(&sim, &mqtt, &dir.path().join("agent-state"))?;
    let _agent = start_agent(dir.path(), &agent_conf)?;
    let client = http_client();
    eventually(Duration::from_secs(60), "readings", || async {
        latest_point(&client, &http, "mr-smoke-1.smoke").await
    })
    .await?;

    let switch = |scenario: &'static str| drill(&client, &sim.control, scenario);
    let count = |kind: &'static str| {
        hook.received()
            .iter()
            .filter(|r| r.body["kind"] == kind && r.body["point"] == "mr-smoke-1.smoke")
            .count()
    };
    for cycle in 0..cycles {
        switch("smoke").await?;
        eventually(Duration::from_secs(30), "raise", || async {
            (count("raise") > cycle).then_some(())
        })
        .await?;
        switch("normal").await?;
        eventually(Duration::from_secs(30), "clear", || async {
            (count("clear") > cycle).then_some(())
        })
        .await?;
    }

    let samples =
        notification_latencies(&hook.received(), |r| r.body["point"] == "mr-smoke-1.smoke");
    let pct = |p: f64| -> Result<i64> {
        let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
        samples.get(i).copied().context("no samples")
    };
    println!(
        "{{\"notifications\":{},\"p50_ms\":{},\"p90_ms\":{},\"p99_ms\":{},\"max_ms\":{},\"min_ms\":{}}}",
        samples.len(),
        pct(0.50)?,
        pct(0.90)?,
        pct(0.99)?,
        pct(1.0)?,
        pct(0.0)?
    );
    Ok(())
}
