//! Many small sites and their agents in one process (`roomguard-sim
//! fleet`): for the cluster tests and benchmarks, and for trying a
//! collector the way a large operator runs it.
//!
//! Each site is a [`Simulator`] of its own (its own scenario and noise)
//! behind a Modbus TCP gateway on a port of its own. Each agent is the real
//! agent: the `roomguard-agent` library's `run`, with its own spool,
//! sequence file and MQTT connection, not an imitation of it. So the
//! numbering, spooling, resending and signing under test are the ones
//! deployed. One process rather than a hundred keeps 50 sites × 2 agents
//! within a small machine.
//!
//! A site's devices are split by room among its agents (machine room,
//! distribution room, battery room), as a site with one gateway per floor
//! would be. Drills are addressed per site, at start-relative times
//! (`--drill site-3@30s=smoke`), over HTTP or on stdin.

use crate::model::Scenario;
use crate::Simulator;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// One room's devices: id, Modbus unit (docs/SIMULATOR.md), profile.
type Room = (&'static str, &'static [(&'static str, u8, &'static str)]);

/// The devices of a fleet site, by room; each room is polled by one agent.
/// A subset of the demo site: what every small site has, and what the
/// fire, mains and hydrogen drills move.
pub const ROOMS: [Room; 3] = [
    (
        "machine-room",
        &[
            ("mr-th-inlet", 1, "generic-th-sensor"),
            ("mr-smoke-1", 3, "smoke-detector"),
            ("mr-smoke-2", 5, "smoke-detector"),
            ("mr-leak-1", 4, "water-leak"),
        ],
    ),
    (
        "distribution-room",
        &[
            ("pd-meter-1", 10, "three-phase-meter"),
            ("pd-breaker-1", 12, "breaker-monitor"),
        ],
    ),
    (
        "battery-room",
        &[
            ("br-h2-1", 20, "h2-detector"),
            ("br-th-1", 22, "generic-th-sensor"),
        ],
    ),
];

/// What the fleet's agents are told, besides their site and devices.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    /// Where they publish: `mqtt.url`, then `mqtt.fallback_urls`.
    pub brokers: Vec<String>,
    /// Each agent's spool and sequence live in `{state_dir}/{site}/{agent}`.
    pub state_dir: PathBuf,
    /// How often every device is polled.
    pub interval: Duration,
    /// The collector's `[agents] secret`: each agent signs with the key
    /// derived from it, as `roomguard-collector agent-key` would give.
    pub secret: String,
    /// Broker login shared by every agent.
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    /// Each agent serves `/metrics` on a port of its own (named in its
    /// ready line).
    pub metrics: bool,
}

/// The id of the `n`th agent of a site (from 1).
pub fn agent_id(n: usize) -> String {
    format!("edge-{n}")
}

/// The rooms agent `n` (from 1) of `agents` polls.
pub fn rooms_of(n: usize, agents: usize) -> impl Iterator<Item = &'static Room> {
    ROOMS
        .iter()
        .enumerate()
        .filter(move |(i, _)| i % agents == n - 1)
        .map(|(_, r)| r)
}

/// The configuration of agent `n` (from 1) of `agents` at `site`, whose
/// gateway is `modbus`: the agent's own TOML, parsed and checked by the
/// agent's own rules before it runs.
pub fn agent_toml(
    s: &AgentSettings,
    site: &str,
    n: usize,
    agents: usize,
    modbus: SocketAddr,
) -> Result<String, String> {
    let agent = agent_id(n);
    let state = s.state_dir.join(site).join(&agent);
    let (url, fallback) = s.brokers.split_first().ok_or("no broker given")?;
    let mut t = String::new();
    let _ = writeln!(t, "site = {site:?}\nagent = {agent:?}");
    let _ = writeln!(t, "state_dir = {:?}", state.display().to_string());
    let _ = writeln!(t, "[mqtt]\nurl = {url:?}\nstatus_interval = \"5s\"");
    if !fallback.is_empty() {
        let _ = writeln!(t, "fallback_urls = {fallback:?}");
    }
    let key = roomguard_protocol::AgentKey::derive_hex(&s.secret, site, &agent)
        .map_err(|e| format!("--agent-secret-file: {e}"))?;
    let _ = writeln!(t, "key = {{ value = {key:?} }}");
    if let Some(user) = &s.username {
        let _ = write!(t, "security = {{ username = {user:?}");
        if let Some(p) = &s.password_file {
            let _ = write!(t, ", password = {{ file = {:?} }}", p.display().to_string());
        }
        let _ = writeln!(t, " }}");
    }
    if s.metrics {
        let _ = writeln!(t, "[metrics]\nlisten = \"127.0.0.1:0\"");
    }
    let _ = writeln!(
        t,
        "[[modbus_buses]]\nid = \"gateway\"\ntransport = \"tcp\"\naddress = \"{modbus}\"\ntimeout = \"1s\""
    );
    let interval = format!("{}ms", s.interval.as_millis());
    for (room, devices) in rooms_of(n, agents) {
        for (id, unit, profile) in *devices {
            let _ = writeln!(
                t,
                "[[modbus]]\nid = {id:?}\nroom = {room:?}\nbus = \"gateway\"\nunit = {unit}\n\
                 profile = {profile:?}\ninterval = {interval:?}"
            );
        }
    }
    Ok(t)
}

/// A drill for one site at a time after the fleet started:
/// `site-3@30s=smoke` (`normal` ends it).
#[derive(Debug, Clone, PartialEq)]
pub struct Drill {
    pub site: String,
    pub at: Duration,
    pub scenario: Scenario,
}

impl FromStr for Drill {
    type Err = String;

    fn from_str(s: &str) -> Result<Drill, String> {
        let shape = || format!("drill {s:?}: expected SITE@TIME=SCENARIO, e.g. site-3@30s=smoke");
        let (site, rest) = s.split_once('@').ok_or_else(shape)?;
        let (at, scenario) = rest.split_once('=').ok_or_else(shape)?;
        if site.is_empty() {
            return Err(shape());
        }
        Ok(Drill {
            site: site.to_owned(),
            at: parse_duration(at).map_err(|e| format!("drill {s:?}: {e}"))?,
            scenario: scenario.parse().map_err(|e| format!("drill {s:?}: {e}"))?,
        })
    }
}

/// `90s`, `2m`, `1h`, `500ms`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a time such as 30s, 2m or 500ms"))?;
    Ok(match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m or h)")),
    })
}

/// One simulated site of the fleet.
pub struct FleetSite {
    pub id: String,
    pub sim: Arc<Simulator>,
    pub modbus: SocketAddr,
}

/// Finds a site by id, or says which exist.
pub fn find<'a>(sites: &'a [FleetSite], id: &str) -> Result<&'a FleetSite, String> {
    sites.iter().find(|s| s.id == id).ok_or_else(|| {
        let first = sites.first().map_or("", |s| s.id.as_str());
        let last = sites.last().map_or("", |s| s.id.as_str());
        format!("no site {id:?} in this fleet ({first} … {last})")
    })
}

/// A stdin command: `SITE SCENARIO`.
pub fn command(sites: &[FleetSite], line: &str) -> Result<(), String> {
    let mut words = line.split_whitespace();
    let (Some(site), Some(scenario), None) = (words.next(), words.next(), words.next()) else {
        return Err(format!(
            "{line:?}: expected SITE SCENARIO, e.g. site-3 smoke"
        ));
    };
    let scenario: Scenario = scenario.parse()?;
    find(sites, site)?.sim.set_scenario(scenario);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> AgentSettings {
        AgentSettings {
            brokers: vec![
                "mqtt://127.0.0.1:1883".into(),
                "mqtt://127.0.0.1:1884".into(),
            ],
            state_dir: "/tmp/fleet".into(),
            interval: Duration::from_secs(2),
            secret: "a-secret-long-enough-for-the-key-derivation".into(),
            username: Some("fleet".into()),
            password_file: Some(password_file()),
            metrics: true,
        }
    }

    /// A password file the agent's checks can read.
    fn password_file() -> PathBuf {
        let f = std::env::temp_dir().join(format!("roomguard-fleet-test-{}", std::process::id()));
        std::fs::write(&f, "fleet-password").unwrap();
        f
    }

    #[test]
    fn every_room_is_polled_by_exactly_one_agent() {
        for agents in 1..=ROOMS.len() {
            let mut seen: Vec<&str> = (1..=agents)
                .flat_map(|n| rooms_of(n, agents).map(|(room, _)| *room))
                .collect();
            seen.sort_unstable();
            let mut all: Vec<&str> = ROOMS.iter().map(|(r, _)| *r).collect();
            all.sort_unstable();
            assert_eq!(seen, all, "{agents} agents");
        }
    }

    #[test]
    fn an_agents_config_passes_the_agents_own_checks() {
        let s = settings();
        let gw: SocketAddr = "127.0.0.1:5020".parse().unwrap();
        let text = agent_toml(&s, "site-7", 2, 2, gw).unwrap();
        let agent =
            roomguard_agent::config::AgentConfig::parse(&text, std::path::Path::new("fleet.toml"))
                .unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(agent.config.site, "site-7");
        assert_eq!(agent.config.agent, "edge-2");
        assert_eq!(agent.config.mqtt.fallback_urls, ["mqtt://127.0.0.1:1884"]);
        assert!(agent.key.is_some());
        assert_eq!(agent.device_count(), 2, "the distribution room's");
        assert!(text.contains("/tmp/fleet/site-7/edge-2"));
    }

    #[test]
    fn drills_read_site_time_and_scenario() {
        assert_eq!(
            "site-3@90s=smoke".parse::<Drill>().unwrap(),
            Drill {
                site: "site-3".into(),
                at: Duration::from_secs(90),
                scenario: Scenario::Smoke,
            }
        );
        assert_eq!(
            "s@2m=normal".parse::<Drill>().unwrap().at,
            Duration::from_secs(120)
        );
        for bad in [
            "site-3",
            "site-3@=smoke",
            "@1s=smoke",
            "s@1x=smoke",
            "s@1s=fire",
        ] {
            assert!(bad.parse::<Drill>().is_err(), "{bad}");
        }
    }
}
