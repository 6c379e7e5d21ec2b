//! Agent polling benchmark: 100 simulated Modbus TCP devices (each its own
//! port) of 100 holding registers, polled at 1 Hz for a minute, one QoS 1
//! message per device poll to a real Mosquitto. Reports requests per cycle
//! against the planner's minimum, CPU seconds per million registers read
//! (user + system time of the agent process from /proc), and peak RSS.
//!
//! Build release binaries first, then run:
//!   cargo build --release --workspace --bins
//!   target/release/bench-agent-poll [--devices 100] [--registers 100] [--seconds 60] [--pin]
//!
//! `--pin` puts the agent on the last core and the simulator and Mosquitto on
//! the others, so they do not compete for one core.

use anyhow::{bail, Context, Result};
use roomguard_e2e::*;
use std::time::{Duration, Instant};

/// Pins a process (all its threads) to `cpus` with taskset.
fn pin(cpus: &str, pid: u32) -> Result<()> {
    let status = std::process::Command::new("taskset")
        .args(["-a", "-c", "-p", cpus, &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .context("taskset (util-linux)")?;
    anyhow::ensure!(status.success(), "taskset failed for pid {pid}");
    Ok(())
}

fn peak_rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("VmHWM")
}

/// Sum of one metric over all devices, from the agent's /metrics.
async fn metric_sum(client: &reqwest::Client, url: &str, name: &str) -> Result<f64> {
    let text = client.get(url).send().await?.text().await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

#[tokio::main]
async fn main() -> Result<()> {
    let devices = arg("--devices", 100);
    let registers = arg("--registers", 100);
    let seconds = arg("--seconds", 60);
    let dir = tempfile::tempdir()?;
    let Some(broker) = Mosquitto::start(dir.path())? else {
        bail!("mosquitto is needed for this benchmark");
    };
    let (sim_proc, sim) = start_simulator(
        dir.path(),
        &[
            "--bench-devices",
            &devices.to_string(),
            "--bench-registers",
            &registers.to_string(),
        ],
    )?;
    anyhow::ensure!(
        sim.bench.len() as u64 == devices,
        "simulator served {} devices",
        sim.bench.len()
    );

    // The devices share one profile, as a site's identical sensors do.
    let profiles = dir.path().join("profiles");
    std::fs::create_dir_all(&profiles)?;
    let mut profile = String::from(
        "name = \"bench-device\"\ndriver = \"modbus\"\ndescription = \"benchmark device\"\nfollows = \"roomguard-sim benchmark devices: holding registers 0..N\"\n",
    );
    for r in 0..registers {
        profile.push_str(&format!(
            "[[points]]\nid = \"r{r:03}\"\nquantity = \"counter\"\ntable = \"holding\"\naddress = {r}\ntype = \"uint16\"\n"
        ));
    }
    std::fs::write(profiles.join("bench-device.toml"), profile)?;
    let mut toml = format!(
        // No collector here, so nothing would confirm batches: the broker's
        // PUBACK ends their stay in the spool (confirm = "broker"), which keeps
        // the spool in its steady state, one append and one ack per batch.
        "site = \"bench\"\nagent = \"edge-bench\"\nstate_dir = {:?}\nprofiles_dir = {:?}\n[mqtt]\nurl = {:?}\n[metrics]\nlisten = \"127.0.0.1:0\"\n[spool]\nconfirm = \"broker\"\n",
        dir.path().join("state").display().to_string(),
        profiles.display().to_string(),
        broker.url()
    );
    for (i, addr) in sim.bench.iter().enumerate() {
        toml.push_str(&format!(
            "[[modbus]]\nid = \"dev-{i:03}\"\nroom = \"room-{}\"\naddress = {addr:?}\nunit = 1\ninterval = \"1s\"\nprofile = \"bench-device\"\n",
            i % 10
        ));
    }
    let mut agent = start_agent(dir.path(), &toml)?;
    let ready = agent.wait_ready(Duration::from_secs(30))?;
    let metrics = format!(
        "http://{}/metrics",
        ready["metrics"].as_str().context("metrics address")?
    );
    let pid = agent.pid();
    // On a 2-core machine the agent, the simulator and Mosquitto compete for
    // cores; pinning the agent to the last core and the others to the rest
    // takes most of the run-to-run scatter out of the agent's CPU figure.
    if std::env::args().any(|a| a == "--pin") {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        if cores >= 2 {
            let last = (cores - 1).to_string();
            let rest = format!("0-{}", cores - 2);
            pin(&last, agent.pid())?;
            pin(&rest, sim_proc.pid())?;
            pin(&rest, broker.proc.pid())?;
        }
    }
    let client = http_client();

    // Warm up: connections open, first polls spread over the interval.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let cpu0 = cpu_seconds(pid)?;
    let regs0 = metric_sum(&client, &metrics, "roomguard_agent_registers_total").await?;
    let reqs0 = metric_sum(&client, &metrics, "roomguard_agent_requests_total").await?;
    let polls0 = metric_sum(&client, &metrics, "roomguard_agent_polls_total").await?;
    let batches0 = metric_sum(&client, &metrics, "roomguard_agent_batches_published_total").await?;
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let wall = started.elapsed().as_secs_f64();
    let cpu1 = cpu_seconds(pid)?;
    let (user, sys) = (cpu1.0 - cpu0.0, cpu1.1 - cpu0.1);
    let cpu = user + sys;
    let regs = metric_sum(&client, &metrics, "roomguard_agent_registers_total").await? - regs0;
    let reqs = metric_sum(&client, &metrics, "roomguard_agent_requests_total").await? - reqs0;
    let polls = metric_sum(&client, &metrics, "roomguard_agent_polls_total").await? - polls0;
    let batches =
        metric_sum(&client, &metrics, "roomguard_agent_batches_published_total").await? - batches0;
    let overruns = metric_sum(&client, &metrics, "roomguard_agent_cycle_overruns_total").await?;
    let failed = metric_sum(&client, &metrics, "roomguard_agent_failed_polls_total").await?;
    let rss = peak_rss_kib(pid)?;
    // One read per device covers 100 contiguous registers: the minimum is one request per poll.
    let min_requests_per_cycle = devices * registers.div_ceil(125);
    let cycles = polls / devices as f64;

    println!("| measure | value |\n|---|---|");
    println!("| devices × registers, interval | {devices} × {registers}, 1 s |");
    println!("| measured for | {wall:.1} s |");
    println!("| polls (cycles) | {polls:.0} ({cycles:.1}) |");
    println!(
        "| requests per cycle / planner minimum | {:.1} / {min_requests_per_cycle} |",
        reqs / cycles
    );
    println!("| registers read | {regs:.0} |");
    println!("| MQTT messages (QoS 1, one per poll) | {batches:.0} |");
    println!("| agent CPU user + system | {user:.2} s + {sys:.2} s = {cpu:.2} s |");
    println!(
        "| CPU seconds per million registers | {:.3} |",
        cpu / (regs / 1e6)
    );
    println!("| peak RSS (VmHWM) | {:.1} MB |", rss as f64 / 1024.0);
    println!("| failed polls / overruns | {failed:.0} / {overruns:.0} |");
    agent.kill();
    Ok(())
}
