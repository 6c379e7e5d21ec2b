//! Agent polling benchmark: 100 simulated Modbus TCP devices (each its own
//! port) of 100 holding registers, polled at 1 Hz for a minute, one QoS 1
//! message per device poll to a real Mosquitto. Reports requests per cycle
//! against the planner's minimum, CPU seconds per million registers read
//! (user + system time of the agent process from /proc), and peak RSS.
//!
//! The same devices are also polled by a plain C poller built on libmodbus
//! and libmosquitto (`tests/reference/modbus-mqtt-poller.c`, compiled here
//! with `cc` when Debian's libmodbus-dev and libmosquitto-dev are installed),
//! in alternating rounds, so the report compares the two under the same
//! conditions: on a shared virtual machine the CPU time of one and the same
//! binary varies by two or three times from hour to hour.
//!
//! Build release binaries first, then run:
//!   cargo build --release --workspace --bins
//!   target/release/bench-agent-poll [--devices 100] [--registers 100] [--seconds 60]
//!       [--rounds 3] [--pin] [--no-reference]
//!
//! `--pin` puts the poller being measured on the last core and the simulator
//! and Mosquitto on the others, so they do not compete for one core.

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

/// One poller's figures over the measured window.
struct Measured {
    user: f64,
    sys: f64,
    polls: f64,
    requests: f64,
    registers: f64,
    messages: f64,
    failed: f64,
    overruns: f64,
    rss_kib: u64,
    wall: f64,
}

impl Measured {
    fn cpu(&self) -> f64 {
        self.user + self.sys
    }
    fn per_million(&self) -> f64 {
        self.cpu() / (self.registers / 1e6)
    }
}

struct Setup {
    dir: tempfile::TempDir,
    broker: Mosquitto,
    sim_pid: u32,
    devices: Vec<String>,
    registers: u64,
    seconds: u64,
    pin: bool,
}

impl Setup {
    fn pin(&self, pid: u32) -> Result<()> {
        // On a 2-core machine the poller, the simulator and Mosquitto compete
        // for cores; this gives the poller the last one to itself.
        if !self.pin {
            return Ok(());
        }
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        if cores >= 2 {
            let last = (cores - 1).to_string();
            let rest = format!("0-{}", cores - 2);
            pin(&last, pid)?;
            pin(&rest, self.sim_pid)?;
            pin(&rest, self.broker.proc.pid())?;
        }
        Ok(())
    }
}

/// Warm-up: connections open, first polls spread over the interval.
const WARM_UP: Duration = Duration::from_secs(5);

async fn measure_agent(s: &Setup, round: u64) -> Result<Measured> {
    let state = s.dir.path().join(format!("state-{round}"));
    let mut toml = format!(
        // No collector here, so nothing would confirm batches: the broker's
        // PUBACK ends their stay in the spool (confirm = "broker"), which keeps
        // the spool in its steady state, one append and one ack per batch.
        "site = \"bench\"\nagent = \"edge-bench\"\nstate_dir = {:?}\nprofiles_dir = {:?}\n[mqtt]\nurl = {:?}\n[metrics]\nlisten = \"127.0.0.1:0\"\n[spool]\nconfirm = \"broker\"\n",
        state.display().to_string(),
        s.dir.path().join("profiles").display().to_string(),
        s.broker.url()
    );
    for (i, addr) in s.devices.iter().enumerate() {
        toml.push_str(&format!(
            "[[modbus]]\nid = \"dev-{i:03}\"\nroom = \"room-{}\"\naddress = {addr:?}\nunit = 1\ninterval = \"1s\"\nprofile = \"bench-device\"\n",
            i % 10
        ));
    }
    let mut agent = start_agent(s.dir.path(), &toml)?;
    let ready = agent.wait_ready(Duration::from_secs(30))?;
    let metrics = format!(
        "http://{}/metrics",
        ready["metrics"].as_str().context("metrics address")?
    );
    let pid = agent.pid();
    s.pin(pid)?;
    let client = http_client();
    tokio::time::sleep(WARM_UP).await;
    let count = |name: &'static str| {
        let (client, metrics) = (&client, &metrics);
        async move { metric_sum(client, metrics, name).await }
    };
    // Scraped before the CPU reading, as the end's scrapes come after it:
    // the window holds none of the benchmark's own requests.
    let regs0 = count("roomguard_agent_registers_total").await?;
    let reqs0 = count("roomguard_agent_requests_total").await?;
    let polls0 = count("roomguard_agent_polls_total").await?;
    let batches0 = count("roomguard_agent_batches_published_total").await?;
    let cpu0 = cpu_seconds(pid)?;
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(s.seconds)).await;
    let wall = started.elapsed().as_secs_f64();
    let cpu1 = cpu_seconds(pid)?;
    let m = Measured {
        user: cpu1.0 - cpu0.0,
        sys: cpu1.1 - cpu0.1,
        registers: count("roomguard_agent_registers_total").await? - regs0,
        requests: count("roomguard_agent_requests_total").await? - reqs0,
        polls: count("roomguard_agent_polls_total").await? - polls0,
        messages: count("roomguard_agent_batches_published_total").await? - batches0,
        overruns: count("roomguard_agent_cycle_overruns_total").await?,
        failed: count("roomguard_agent_failed_polls_total").await?,
        rss_kib: peak_rss_kib(pid)?,
        wall,
    };
    agent.kill();
    Ok(m)
}

/// Compiles the C poller; `None` (and why) when the libraries are missing.
fn build_reference(dir: &std::path::Path) -> Result<Option<std::path::PathBuf>> {
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("reference")
        .join("modbus-mqtt-poller.c");
    let exe = dir.join("modbus-mqtt-poller");
    let out = std::process::Command::new("cc")
        .args(["-O2", "-o"])
        .arg(&exe)
        .arg(&source)
        .args(["-I/usr/include/modbus", "-lmodbus", "-lmosquitto"])
        .output()
        .context("cc")?;
    if !out.status.success() {
        eprintln!(
            "the C reference poller did not build (install libmodbus-dev and libmosquitto-dev): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return Ok(None);
    }
    Ok(Some(exe))
}

/// Cumulative (polls, registers, failed) from the C poller's last line.
fn reference_counts(p: &mut Proc) -> Result<(f64, f64, f64)> {
    let line = p.last_line().context("the C poller printed nothing")?;
    let field = |name: &str| -> Result<f64> {
        let mut words = line.split_whitespace();
        words.find(|w| *w == name);
        words
            .next()
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("{name} in {line:?}"))
    };
    Ok((field("polls")?, field("registers")?, field("failed")?))
}

async fn measure_reference(s: &Setup, exe: &std::path::Path) -> Result<Measured> {
    let mut cmd = std::process::Command::new(exe);
    cmd.arg(s.broker.port.to_string())
        .arg(s.registers.to_string())
        .args(&s.devices);
    let mut p = Proc::spawn("reference", cmd, s.dir.path())?;
    p.wait_line("cycle", Duration::from_secs(30))?;
    let pid = p.pid();
    s.pin(pid)?;
    tokio::time::sleep(WARM_UP).await;
    let cpu0 = cpu_seconds(pid)?;
    let (polls0, regs0, _) = reference_counts(&mut p)?;
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(s.seconds)).await;
    let wall = started.elapsed().as_secs_f64();
    let cpu1 = cpu_seconds(pid)?;
    let (polls1, regs1, failed) = reference_counts(&mut p)?;
    let m = Measured {
        user: cpu1.0 - cpu0.0,
        sys: cpu1.1 - cpu0.1,
        polls: polls1 - polls0,
        requests: polls1 - polls0,
        registers: regs1 - regs0,
        messages: polls1 - polls0,
        failed,
        overruns: 0.0,
        rss_kib: peak_rss_kib(pid)?,
        wall,
    };
    p.kill();
    Ok(m)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let devices = arg("--devices", 100);
    let registers = arg("--registers", 100);
    let seconds = arg("--seconds", 60);
    let rounds = arg("--rounds", 1).max(1);
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
    let reference = if std::env::args().any(|a| a == "--no-reference") {
        None
    } else {
        build_reference(dir.path())?
    };
    let setup = Setup {
        broker,
        sim_pid: sim_proc.pid(),
        devices: sim.bench.clone(),
        registers,
        seconds,
        pin: std::env::args().any(|a| a == "--pin"),
        dir,
    };

    let mut agent_runs = Vec::new();
    let mut reference_runs = Vec::new();
    for round in 1..=rounds {
        // Taking turns at going first, so neither always has the quieter slot.
        let c_first = round % 2 == 0;
        if let (Some(exe), true) = (&reference, c_first) {
            reference_runs.push(measure_reference(&setup, exe).await?);
        }
        agent_runs.push(measure_agent(&setup, round).await?);
        if let (Some(exe), false) = (&reference, c_first) {
            reference_runs.push(measure_reference(&setup, exe).await?);
        }
    }

    // One read per device covers 100 contiguous registers: the minimum is one request per poll.
    let min_requests_per_cycle = devices * registers.div_ceil(125);
    println!("{devices} devices × {registers} registers, polled every 1 s, {seconds} s measured per run after a {WARM_UP:?} warm-up; rounds alternate the agent and the C poller (the C poller's requests are its polls: one read each by construction). CPU is user + system time from /proc in 10 ms ticks.\n");
    println!("| round | poller | CPU user + system | CPU-s per million registers | requests per cycle / minimum | messages | peak RSS | failed polls / overruns |");
    println!("|---|---|---|---|---|---|---|---|");
    let row = |round: usize, name: &str, m: &Measured| {
        let cycles = m.polls / devices as f64;
        println!(
            "| {round} | {name} | {:.2} s + {:.2} s = {:.2} s in {:.0} s | {:.3} | {:.1} / {min_requests_per_cycle} | {:.0} | {:.1} MB | {:.0} / {:.0} |",
            m.user,
            m.sys,
            m.cpu(),
            m.wall,
            m.per_million(),
            m.requests / cycles,
            m.messages,
            m.rss_kib as f64 / 1024.0,
            m.failed,
            m.overruns
        );
    };
    for (i, a) in agent_runs.iter().enumerate() {
        row(i + 1, "RoomGuard agent", a);
        if let Some(r) = reference_runs.get(i) {
            row(i + 1, "C (libmodbus + libmosquitto)", r);
        }
    }
    let agent_median = median(agent_runs.iter().map(Measured::per_million).collect());
    println!("\nagent: median {agent_median:.3} CPU-s per million registers");
    if !reference_runs.is_empty() {
        let c = median(reference_runs.iter().map(Measured::per_million).collect());
        let ratios: Vec<f64> = agent_runs
            .iter()
            .zip(&reference_runs)
            .map(|(a, r)| a.per_million() / r.per_million())
            .collect();
        println!(
            "C poller: median {c:.3}; agent / C per round: {} (median {:.2}×)",
            ratios
                .iter()
                .map(|r| format!("{r:.2}×"))
                .collect::<Vec<_>>()
                .join(", "),
            median(ratios.clone())
        );
    }
    drop(sim_proc);
    Ok(())
}
