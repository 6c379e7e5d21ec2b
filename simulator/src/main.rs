//! `roomguard-sim`: serves the demo site over Modbus TCP (a gateway with
//! every device behind it), Modbus RTU on a serial line, and SNMP (UPS and
//! PDU), and takes drill scenarios from the command line, HTTP and stdin.
//! `roomguard-sim fleet` plays many small sites with their agents instead
//! (`roomguard_sim::fleet`).

use anyhow::Context;
use clap::{Parser, Subcommand};
use roomguard_sim::fleet::{self, AgentSettings, Drill, FleetSite};
use roomguard_sim::model::Scenario;
use roomguard_sim::{bench_site, control, modbus, snmp, Simulator, TICK};
use std::future::IntoFuture;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinSet;

#[derive(Parser)]
#[command(
    version,
    about = "RoomGuard site simulator: Modbus and SNMP devices with drill scenarios",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    site: Args,
}

#[derive(Subcommand)]
enum Command {
    /// Many small sites, each with its own Modbus gateway and scenario, and
    /// their agents (the real agent, in this process, each with its own
    /// spool and MQTT connection) publishing to a broker.
    Fleet(FleetArgs),
}

#[derive(clap::Args)]
struct FleetArgs {
    /// How many sites.
    #[arg(long, default_value_t = 50)]
    sites: usize,
    /// Agents per site (1–3); a site's rooms are split among them.
    #[arg(long, default_value_t = 2)]
    agents: usize,
    /// Site ids are this followed by 1, 2, ….
    #[arg(long, default_value = "site-")]
    prefix: String,
    /// Broker URL the agents publish to; given again, the next ones are
    /// their fallbacks (mqtt.fallback_urls).
    #[arg(long, required = true)]
    broker: Vec<String>,
    /// Each agent's spool and sequence go under DIR/SITE/AGENT.
    #[arg(long, default_value = "var/fleet")]
    state_dir: PathBuf,
    /// How often each device is polled (e.g. 2s, 500ms).
    #[arg(long, default_value = "2s", value_parser = fleet::parse_duration)]
    interval: Duration,
    /// File holding the collector's [agents] secret: agents sign with the
    /// keys derived from it (every agent needs a key).
    #[arg(long)]
    agent_secret_file: PathBuf,
    /// Broker login of every agent.
    #[arg(long)]
    mqtt_username: Option<String>,
    #[arg(long, requires = "mqtt_username")]
    mqtt_password_file: Option<PathBuf>,
    /// Each agent serves /metrics on a free port (named in its ready line).
    #[arg(long)]
    agent_metrics: bool,
    /// HTTP control: GET /sites, and each site's /sites/SITE/scenario.
    #[arg(long, default_value = "127.0.0.1:5081")]
    control: SocketAddr,
    /// A drill at a time after start: SITE@TIME=SCENARIO, e.g.
    /// site-3@30s=smoke, site-3@2m=normal. May be given more than once.
    #[arg(long)]
    drill: Vec<Drill>,
    /// Noise seed of the first site (the next ones count up).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Simulated seconds per real second.
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
}

#[derive(clap::Args)]
struct Args {
    /// Modbus TCP gateway listen address (port 0 picks a free port; the ready line tells which).
    #[arg(long, default_value = "127.0.0.1:5020")]
    modbus: SocketAddr,
    /// HTTP control listen address.
    #[arg(long, default_value = "127.0.0.1:5080")]
    control: SocketAddr,
    /// SNMP v1/v2c agent of the UPS (UPS-MIB), UDP.
    #[arg(long, default_value = "127.0.0.1:1161")]
    snmp_ups: SocketAddr,
    /// SNMP v1/v2c agent of the metered PDU (PowerNet-MIB outlet table), UDP.
    #[arg(long, default_value = "127.0.0.1:1162")]
    snmp_pdu: SocketAddr,
    /// More SNMP agents on one port, told apart by community: `eaton` (XUPS-MIB
    /// UPS), `liebert` (precision air conditioner), `geist` and `apc-env`
    /// (environment probes), `apc-ats` (transfer switch).
    #[arg(long, default_value = "127.0.0.1:1164")]
    snmp_annex: SocketAddr,
    /// Community both SNMP agents answer to.
    #[arg(long, default_value = "public")]
    snmp_community: String,
    /// Also serve every device as Modbus RTU on this serial port (e.g. one end
    /// of a socat pty pair). May be given more than once.
    #[arg(long)]
    rtu: Vec<String>,
    #[arg(long, default_value_t = 9600)]
    rtu_baud: u32,
    /// Scenario at start: normal, ac_failure, thermal_runaway, mains_failure, smoke,
    /// phase_unbalance, gas_leak, co_rise, earth_leakage, insulation_fault, door_open,
    /// ventilation_failure, ats_transfer, battery_test.
    #[arg(long, default_value = "normal")]
    scenario: Scenario,
    /// Noise seed, for repeatable runs.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Simulated seconds per real second.
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// Benchmark mode: serve this many extra Modbus TCP devices, each on its
    /// own port, each with `--bench-registers` holding registers.
    #[arg(long, default_value_t = 0)]
    bench_devices: u16,
    #[arg(long, default_value_t = 100)]
    bench_registers: u16,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal, never in a log file or journal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    if let Some(Command::Fleet(args)) = cli.command {
        return run_fleet(args).await;
    }
    let args = cli.site;
    anyhow::ensure!(
        args.speed.is_finite() && args.speed > 0.0,
        "--speed must be a positive number"
    );
    anyhow::ensure!(
        (1..=125).contains(&args.bench_registers),
        "--bench-registers must be 1–125"
    );

    let sim = Simulator::new(args.scenario, args.seed, args.speed);
    let modbus_listener = TcpListener::bind(args.modbus)
        .await
        .with_context(|| format!("cannot listen for Modbus TCP on {}", args.modbus))?;
    let control_listener = TcpListener::bind(args.control)
        .await
        .with_context(|| format!("cannot listen for control HTTP on {}", args.control))?;
    let ups_socket = UdpSocket::bind(args.snmp_ups)
        .await
        .with_context(|| format!("cannot listen for SNMP (UPS) on {}", args.snmp_ups))?;
    let pdu_socket = UdpSocket::bind(args.snmp_pdu)
        .await
        .with_context(|| format!("cannot listen for SNMP (PDU) on {}", args.snmp_pdu))?;
    let annex_socket = UdpSocket::bind(args.snmp_annex)
        .await
        .with_context(|| format!("cannot listen for SNMP (annex) on {}", args.snmp_annex))?;
    let annex_addr = annex_socket.local_addr()?;
    let modbus_addr = modbus_listener.local_addr()?;
    let control_addr = control_listener.local_addr()?;
    let ups_addr = ups_socket.local_addr()?;
    let pdu_addr = pdu_socket.local_addr()?;

    let mut tasks: JoinSet<anyhow::Result<()>> = JoinSet::new();
    let service = modbus::SiteService::gateway(sim.site());
    tasks.spawn(async move {
        modbus::serve(modbus_listener, service)
            .await
            .context("Modbus TCP server")
    });
    let app = control::router(sim.clone());
    tasks.spawn(async move {
        axum::serve(control_listener, app)
            .into_future()
            .await
            .context("control server")
    });
    let community = args.snmp_community.clone().into_bytes();
    tasks.spawn(snmp_task(ups_socket, sim.ups_mib(), community.clone()));
    tasks.spawn(snmp_task(pdu_socket, sim.pdu_mib(), community));
    let annex = sim.annex_mibs();
    tasks.spawn(async move {
        snmp::serve_by_community(annex_socket, annex)
            .await
            .context("SNMP annex agents")
    });
    for path in args.rtu.clone() {
        let service = modbus::SiteService::serial_line(sim.site());
        let baud = args.rtu_baud;
        tasks.spawn(async move {
            modbus::serve_rtu(&path, baud, service)
                .await
                .with_context(|| format!("Modbus RTU on {path}"))
        });
    }

    let bench = Arc::new(RwLock::new(bench_site(args.bench_registers, 0)));
    let mut bench_addrs = Vec::new();
    for _ in 0..args.bench_devices {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        bench_addrs.push(listener.local_addr()?);
        let service = modbus::SiteService::gateway(bench.clone());
        tasks.spawn(async move {
            modbus::serve(listener, service)
                .await
                .context("bench Modbus server")
        });
    }

    tasks.spawn({
        let sim = sim.clone();
        let bench_registers = args.bench_registers;
        let benching = args.bench_devices > 0;
        async move {
            let mut every = tokio::time::interval(TICK);
            let mut n = 0u64;
            loop {
                every.tick().await;
                sim.tick();
                if benching {
                    n += 1;
                    *bench.write().unwrap_or_else(|p| p.into_inner()) =
                        bench_site(bench_registers, n);
                }
            }
        }
    });
    tokio::spawn(control::read_commands(sim.clone(), tokio::io::stdin()));

    // Tests and scripts wait for this line rather than sleeping.
    println!(
        "{}",
        serde_json::json!({
            "event": "ready",
            "modbus": modbus_addr,
            "control": control_addr,
            "snmp_ups": ups_addr,
            "snmp_pdu": pdu_addr,
            "snmp_annex": annex_addr,
            "rtu": args.rtu,
            "bench": bench_addrs,
        })
    );
    tracing::info!(%modbus_addr, %control_addr, %ups_addr, %pdu_addr, scenario = %args.scenario, "simulator serving");

    tokio::select! {
        Some(res) = tasks.join_next() => match res {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(anyhow::anyhow!("a simulator task failed: {e}")),
        },
        _ = tokio::signal::ctrl_c() => {
            tracing::info!("interrupted, stopping");
            Ok(())
        }
    }
}

async fn snmp_task(
    socket: UdpSocket,
    mib: Arc<RwLock<snmp::Mib>>,
    community: Vec<u8>,
) -> anyhow::Result<()> {
    snmp::serve(socket, mib, community)
        .await
        .context("SNMP agent")
}

/// Runs a fleet until SIGINT or SIGTERM, then stops every agent the way a
/// lone agent stops (its last batches confirmed where it can).
async fn run_fleet(args: FleetArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=fleet::ROOMS.len()).contains(&args.agents),
        "--agents must be 1–{}",
        fleet::ROOMS.len()
    );
    anyhow::ensure!(args.sites >= 1, "--sites must be at least 1");
    anyhow::ensure!(
        args.speed.is_finite() && args.speed > 0.0,
        "--speed must be a positive number"
    );
    let f = &args.agent_secret_file;
    let secret = std::fs::read_to_string(f)
        .with_context(|| format!("--agent-secret-file: cannot read {}", f.display()))?
        .trim()
        .to_owned();
    let settings = AgentSettings {
        brokers: args.broker.clone(),
        state_dir: args.state_dir.clone(),
        interval: args.interval,
        secret,
        username: args.mqtt_username.clone(),
        password_file: args.mqtt_password_file.clone(),
        metrics: args.agent_metrics,
    };

    let mut tasks: JoinSet<anyhow::Result<()>> = JoinSet::new();
    let mut sites = Vec::with_capacity(args.sites);
    for i in 1..=args.sites {
        let sim = Simulator::new(Scenario::Normal, args.seed + i as u64 - 1, args.speed);
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let modbus = listener.local_addr()?;
        let service = modbus::SiteService::gateway(sim.site());
        tasks.spawn(async move {
            modbus::serve(listener, service)
                .await
                .context("Modbus TCP server")
        });
        sites.push(FleetSite {
            id: format!("{}{i}", args.prefix),
            sim,
            modbus,
        });
    }
    // Every agent's configuration is checked before any of them starts.
    let mut agents = Vec::new();
    for site in &sites {
        for n in 1..=args.agents {
            let text = fleet::agent_toml(&settings, &site.id, n, args.agents, site.modbus)
                .map_err(anyhow::Error::msg)?;
            let name = PathBuf::from(format!("fleet:{}/{}", site.id, fleet::agent_id(n)));
            let agent = roomguard_agent::config::AgentConfig::parse(&text, &name)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            agents.push(agent);
        }
    }
    for d in &args.drill {
        fleet::find(&sites, &d.site).map_err(|e| anyhow::anyhow!("--drill: {e}"))?;
    }
    let sites = Arc::new(sites);

    let control_listener = TcpListener::bind(args.control)
        .await
        .with_context(|| format!("cannot listen for control HTTP on {}", args.control))?;
    let control_addr = control_listener.local_addr()?;
    let app = control::fleet_router(sites.clone());
    tasks.spawn(async move {
        axum::serve(control_listener, app)
            .into_future()
            .await
            .context("control server")
    });
    tasks.spawn({
        let sites = sites.clone();
        async move {
            let mut every = tokio::time::interval(TICK);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                every.tick().await;
                for s in sites.iter() {
                    s.sim.tick();
                }
            }
        }
    });
    let started = tokio::time::Instant::now();
    for d in args.drill.clone() {
        let sites = sites.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(started + d.at).await;
            if let Ok(s) = fleet::find(&sites, &d.site) {
                tracing::info!(site = %d.site, scenario = %d.scenario, "scheduled drill");
                s.sim.set_scenario(d.scenario);
            }
        });
    }
    tokio::spawn({
        let sites = sites.clone();
        async move {
            use tokio::io::AsyncBufReadExt;
            let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if !line.trim().is_empty() {
                    if let Err(e) = fleet::command(&sites, &line) {
                        eprintln!("{e}");
                    }
                }
            }
        }
    });

    let (stop, stopping) = tokio::sync::watch::channel(false);
    let mut running = JoinSet::new();
    let count = agents.len();
    for agent in agents {
        let span =
            tracing::info_span!("agent", site = %agent.config.site, agent = %agent.config.agent);
        let mut stopping = stopping.clone();
        let shutdown = async move {
            let _ = stopping.wait_for(|s| *s).await;
        };
        running.spawn(tracing::Instrument::instrument(
            async move {
                if let Err(e) = roomguard_agent::run::run(agent, shutdown).await {
                    tracing::error!(error = %e, "agent stopped");
                }
            },
            span,
        ));
    }
    // Tests and scripts wait for this line; each agent prints its own ready
    // line (with its site and id) too.
    println!(
        "{}",
        serde_json::json!({
            "event": "fleet-ready",
            "control": control_addr,
            "sites": sites.iter().map(|s| serde_json::json!({"site": s.id, "modbus": s.modbus})).collect::<Vec<_>>(),
            "agents": count,
        })
    );
    tracing::info!(sites = sites.len(), agents = count, %control_addr, "fleet running");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let result = tokio::select! {
        Some(res) = tasks.join_next() => match res {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(anyhow::anyhow!("a fleet task failed: {e}")),
        },
        _ = tokio::signal::ctrl_c() => Ok(()),
        _ = term.recv() => Ok(()),
    };
    tracing::info!("stopping the agents");
    let _ = stop.send(true);
    while running.join_next().await.is_some() {}
    println!(
        "{}",
        serde_json::json!({"event": "fleet-stopped", "agents": count})
    );
    result
}
