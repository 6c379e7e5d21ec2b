//! A fleet of small simulated sites and their agents in one process
//! (`roomguard-sim fleet`), with an independent ledger per agent built from
//! the ready and stopped lines each agent prints.

use crate::ledger::{self, Ledger};
use crate::{workspace_bin, Proc, AGENT_SECRET, MQTT_PASSWORD, MQTT_USER};
use anyhow::{ensure, Context, Result};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// One in-process agent of the fleet.
pub struct FleetAgent {
    pub site: String,
    pub agent: String,
    /// Base URL of its `/metrics`.
    pub metrics: String,
    pub ledger: Ledger,
}

pub struct Fleet {
    pub proc: Proc,
    /// The fleet's control address (`host:port`).
    pub control: String,
    pub sites: Vec<String>,
    pub agents: Vec<FleetAgent>,
}

impl Fleet {
    /// Starts `sites` sites × `agents` agents publishing to `broker`, with
    /// the test secret and broker login, devices polled every second, and
    /// waits until every agent is ready.
    pub fn start(dir: &Path, broker: &str, sites: usize, agents: usize) -> Result<Fleet> {
        Fleet::start_with(dir, broker, sites, agents, &[])
    }

    /// [`Fleet::start`] with more arguments (`--drill …`).
    pub fn start_with(
        dir: &Path,
        broker: &str,
        sites: usize,
        agents: usize,
        extra: &[&str],
    ) -> Result<Fleet> {
        std::fs::create_dir_all(dir)?;
        let secret = dir.join("agent-secret");
        std::fs::write(&secret, AGENT_SECRET)?;
        let password = dir.join("mqtt-password");
        std::fs::write(&password, MQTT_PASSWORD)?;
        let mut cmd = Command::new(workspace_bin("roomguard-sim"));
        cmd.arg("fleet")
            .args(["--sites", &sites.to_string()])
            .args(["--agents", &agents.to_string()])
            .args(["--broker", broker])
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--agent-secret-file")
            .arg(&secret)
            .args(["--mqtt-username", MQTT_USER])
            .arg("--mqtt-password-file")
            .arg(&password)
            .args([
                "--agent-metrics",
                "--control",
                "127.0.0.1:0",
                "--interval",
                "1s",
            ])
            .args(extra);
        let mut proc = Proc::spawn("fleet", cmd, dir)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut fleet = None;
        let mut ready = Vec::new();
        // The fleet's line and each agent's, in whatever order they come.
        while fleet.is_none() || ready.len() < sites * agents {
            let v = proc.next_json(deadline)?;
            if v["event"] == "fleet-ready" {
                fleet = Some(v);
            } else if v["event"] == "ready" {
                ready.push(v);
            }
        }
        let fleet = fleet.context("fleet-ready")?;
        let mut all = Vec::new();
        for r in ready {
            let mut ledger = Ledger::default();
            ledger.started(&r)?;
            all.push(FleetAgent {
                site: r["site"].as_str().context("site")?.to_owned(),
                agent: r["agent"].as_str().context("agent")?.to_owned(),
                metrics: ledger::agent_metrics_url(&r)?,
                ledger,
            });
        }
        all.sort_by(|a, b| (&a.site, &a.agent).cmp(&(&b.site, &b.agent)));
        Ok(Fleet {
            proc,
            control: fleet["control"].as_str().context("control")?.to_owned(),
            sites: fleet["sites"]
                .as_array()
                .context("sites")?
                .iter()
                .filter_map(|s| s["site"].as_str().map(str::to_owned))
                .collect(),
            agents: all,
        })
    }

    /// The control address of one site, for [`crate::drill`].
    pub fn site_control(&self, site: &str) -> String {
        format!("{}/sites/{site}", self.control)
    }

    /// Waits until every agent's spool has drained, then stops the fleet
    /// and closes every agent's ledger with its stopped line.
    pub async fn drain_and_stop(&mut self, client: &reqwest::Client) -> Result<()> {
        for a in &self.agents {
            ledger::drained(client, &a.metrics)
                .await
                .with_context(|| format!("{}/{}", a.site, a.agent))?;
        }
        let out = self.proc.terminate(Duration::from_secs(60))?;
        for a in &mut self.agents {
            let mine: Vec<String> = out
                .iter()
                .filter(|l| {
                    serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| {
                        v["site"] == a.site.as_str() && v["agent"] == a.agent.as_str()
                    })
                })
                .cloned()
                .collect();
            a.ledger
                .stopped(&mine)
                .with_context(|| format!("{}/{}", a.site, a.agent))?;
        }
        ensure!(
            out.iter().any(|l| l.contains("\"fleet-stopped\"")),
            "the fleet did not say it stopped"
        );
        Ok(())
    }
}
