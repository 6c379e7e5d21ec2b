//! The agent's configuration file: who it is, where its broker is, and which
//! devices it polls. Loaded, resolved against device profiles and checked
//! completely before anything starts; every problem is reported by its path.

use crate::drivers::modbus::config::{BusConfig, ModbusDevice, ModbusPoint, Transport};
use crate::drivers::modbus::plan::{plan_subset, ReadRequest};
use crate::drivers::snmp::config::{SnmpDevice, SnmpPoint, SnmpTable, TrapDef, TrapListen};
use crate::link::ConfirmBy;
use crate::profiles::{Profile, Profiles};
use crate::spool::{Limits, OnFull};
use roomguard_protocol::conf::{self, BrokerUrl, ConfigError, Problems, Secret};
use roomguard_protocol::{validate_id, AgentKey, Label, PointMeta};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Environment variables `ROOMGUARD_AGENT__MQTT__URL` and the like override keys.
pub const ENV_PREFIX: &str = "ROOMGUARD_AGENT";

/// A commented sample, printed by `roomguard-agent sample-config`.
pub const SAMPLE: &str = include_str!("../sample-config.toml");

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Site id: the building or station this agent watches.
    pub site: String,
    /// Agent id, unique within the site.
    pub agent: String,
    /// Where the agent keeps its state (the batch sequence number).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Extra device profiles (`*.toml`), besides the shipped ones.
    #[serde(default)]
    pub profiles_dir: Option<PathBuf>,
    pub mqtt: MqttConfig,
    /// The store-and-forward spool under `state_dir/spool`.
    #[serde(default)]
    pub spool: SpoolConfig,
    /// Prometheus `/metrics` for the agent itself; off when absent.
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
    /// Serial lines and shared gateways. TCP devices given by `address` need none.
    #[serde(default)]
    pub modbus_buses: Vec<BusConfig>,
    #[serde(default)]
    pub modbus: Vec<ModbusDevice>,
    #[serde(default)]
    pub snmp: Vec<SnmpDevice>,
    /// Receive SNMP traps and informs from the SNMP devices; off when absent.
    #[serde(default)]
    pub snmp_traps: Option<TrapListen>,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("var/agent")
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Broker URL, `mqtt://host:port`.
    pub url: String,
    /// Other nodes of the same broker cluster (production brokers are
    /// clusters without a load balancer in front): when the current one
    /// cannot be reached, the next is tried, in turn. Same login and TLS.
    #[serde(default)]
    pub fallback_urls: Vec<String>,
    /// Client id; default `roomguard-agent-{site}-{agent}`. Fixed, so the
    /// broker can keep the agent's session across reconnects.
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default = "default_keep_alive", with = "conf::duration")]
    pub keep_alive: Duration,
    /// How often the retained status is refreshed.
    #[serde(default = "default_status_interval", with = "conf::duration")]
    pub status_interval: Duration,
    /// TLS certificates and login for the broker.
    #[serde(default)]
    pub security: roomguard_protocol::mqtt::Security,
    /// This agent's key (64 hex digits, from `roomguard-collector agent-key`):
    /// signs what the agent publishes and checks the collector's
    /// confirmations (docs/PROTOCOL.md#authentication). Required with
    /// `spool.confirm = "collector"`.
    #[serde(default)]
    pub key: Option<Secret>,
}

fn default_keep_alive() -> Duration {
    Duration::from_secs(15)
}
fn default_status_interval() -> Duration {
    Duration::from_secs(10)
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// Disk the spool may use, in bytes.
    pub max_bytes: u64,
    /// Batches older than this are dropped (counted) even if there is room.
    #[serde(with = "conf::duration")]
    pub max_age: Duration,
    /// `drop_oldest` or `drop_newest`, when a batch does not fit.
    pub on_full: OnFull,
    /// How long a batch may wait unconfirmed before it is on disk (checked
    /// twice per interval); "0s": after every write.
    #[serde(with = "conf::duration")]
    pub sync_interval: Duration,
    /// Who confirms a batch so it can leave the spool: `collector` (stored,
    /// confirmed on the agent's `ack` topic) or `broker` (PUBACK).
    pub confirm: ConfirmBy,
    /// A batch delivered but not confirmed within this is sent again (only
    /// while the collector is confirming others).
    #[serde(with = "conf::duration")]
    pub confirm_timeout: Duration,
    /// Backlog batches sent per second after an outage (live batches are not limited).
    pub replay_rate: u32,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            max_bytes: 256 << 20,
            max_age: Duration::from_secs(7 * 86_400),
            on_full: OnFull::DropOldest,
            sync_interval: Duration::from_secs(1),
            confirm: ConfirmBy::Collector,
            confirm_timeout: Duration::from_secs(120),
            replay_rate: 500,
        }
    }
}

impl SpoolConfig {
    pub fn limits(&self) -> Limits {
        Limits {
            max_bytes: self.max_bytes,
            max_age: self.max_age,
            on_full: self.on_full,
            sync_interval: self.sync_interval,
        }
    }

    fn check(&self, p: &mut Problems) {
        if self.max_bytes < 64 * 1024 {
            p.push("spool.max_bytes", "must be at least 65536 (64 KiB)");
        }
        if self.max_age < Duration::from_secs(60) {
            p.push("spool.max_age", "must be at least 1m");
        }
        if self.sync_interval > Duration::from_secs(60) {
            p.push(
                "spool.sync_interval",
                "must be at most 1m: longer risks losing that much on a power cut",
            );
        }
        if self.confirm_timeout < Duration::from_secs(1) {
            p.push("spool.confirm_timeout", "must be at least 1s");
        }
        if self.replay_rate == 0 {
            p.push(
                "spool.replay_rate",
                "must be at least 1 batch per second, or the backlog is never sent",
            );
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the agent's `/metrics` (port 0 picks a free one).
    pub listen: SocketAddr,
}

/// A Modbus device ready to poll: its points resolved from profile and
/// config, planned into reads per poll group.
#[derive(Debug, Clone)]
pub struct ModbusSpec {
    pub id: String,
    pub room: String,
    pub unit: u8,
    pub timeout: Duration,
    /// Points with their full ids (`{device}.{point}`).
    pub points: Vec<ModbusPoint>,
    /// Each point's id as a shared label, made once for all its readings.
    pub labels: Vec<Label>,
    /// What the device's points are, sent to the collector from time to time.
    pub meta: Arc<[PointMeta]>,
    pub groups: Vec<PollGroup>,
    /// Points worked out from the others in each poll.
    pub derived: Vec<crate::derive::Derived>,
}

/// Points of one device polled at one rate, and the reads that fetch them.
#[derive(Debug, Clone)]
pub struct PollGroup {
    pub interval: Duration,
    pub requests: Vec<ReadRequest>,
}

/// A bus and the devices on it.
#[derive(Debug, Clone)]
pub struct BusSpec {
    pub bus: BusConfig,
    pub devices: Vec<ModbusSpec>,
}

/// An SNMP device ready to poll.
#[derive(Debug, Clone)]
pub struct SnmpSpec {
    pub device: SnmpDevice,
    /// Points and tables resolved from profile and config (ids within the device).
    /// Shared, so each poll walks them without copying.
    pub points: Arc<[SnmpPoint]>,
    pub tables: Arc<[SnmpTable]>,
    /// Notifications it sends: the profile's, then the device's own.
    pub traps: Vec<TrapDef>,
    /// The profile's derived points, with their descriptions (room left
    /// empty: the poller fills it in).
    pub derived: Vec<(crate::derive::Derived, PointMeta)>,
}

/// A loaded configuration with everything resolved.
#[derive(Debug, Clone)]
pub struct Agent {
    /// The file's settings; its `modbus` and `snmp` lists are emptied, their
    /// devices being in `buses` and `snmp` below.
    pub config: AgentConfig,
    pub buses: Vec<BusSpec>,
    pub snmp: Vec<SnmpSpec>,
    /// Secrets written in plain text in the file: worth a warning.
    pub warnings: Vec<String>,
    /// `mqtt.key`, read and checked.
    pub key: Option<AgentKey>,
}

impl Agent {
    pub fn device_count(&self) -> usize {
        self.buses.iter().map(|b| b.devices.len()).sum::<usize>() + self.snmp.len()
    }

    pub fn point_count(&self) -> usize {
        self.buses
            .iter()
            .flat_map(|b| &b.devices)
            .map(|d| d.points.len())
            .sum::<usize>()
            + self.snmp.iter().map(|s| s.points.len()).sum::<usize>()
    }
}

impl AgentConfig {
    /// Reads, resolves and checks `file`; every problem is reported at once.
    pub fn load(file: &Path) -> Result<Agent, ConfigError> {
        let cfg: AgentConfig = conf::load(file, ENV_PREFIX)?;
        cfg.resolve(file)
    }

    pub fn parse(text: &str, name: &Path) -> Result<Agent, ConfigError> {
        let cfg: AgentConfig = conf::parse(text, name)?;
        cfg.resolve(name)
    }

    pub fn client_id(&self) -> String {
        self.mqtt
            .client_id
            .clone()
            .unwrap_or_else(|| format!("roomguard-agent-{}-{}", self.site, self.agent))
    }

    pub fn broker(&self) -> Result<BrokerUrl, String> {
        self.mqtt.url.parse()
    }

    /// `mqtt.url` and then `mqtt.fallback_urls`, in the order tried.
    pub fn brokers(&self) -> Result<Vec<BrokerUrl>, String> {
        std::iter::once(&self.mqtt.url)
            .chain(&self.mqtt.fallback_urls)
            .map(|u| u.parse())
            .collect()
    }

    fn resolve(self, file: &Path) -> Result<Agent, ConfigError> {
        let mut p = Problems::default();
        if let Err(e) = validate_id(&self.site) {
            p.push("site", format!("{:?} {e}", self.site));
        }
        if let Err(e) = validate_id(&self.agent) {
            p.push("agent", format!("{:?} {e}", self.agent));
        }
        match self.broker() {
            Err(e) => p.push("mqtt.url", e),
            Ok(url) => self.mqtt.security.check(&url, "mqtt.security", &mut p),
        }
        for (i, u) in self.mqtt.fallback_urls.iter().enumerate() {
            match u.parse::<BrokerUrl>() {
                Err(e) => p.push(format!("mqtt.fallback_urls[{i}]"), e),
                Ok(url) => self.mqtt.security.check(&url, "mqtt.security", &mut p),
            }
        }
        if self.mqtt.keep_alive < Duration::from_secs(1) {
            p.push("mqtt.keep_alive", "must be at least 1s");
        }
        let key = self.key(&mut p);
        self.spool.check(&mut p);
        if self.modbus.is_empty() && self.snmp.is_empty() {
            p.push(
                "modbus",
                "no devices configured; the agent would have nothing to poll",
            );
        }
        if self.snmp_traps.is_some() && self.snmp.is_empty() {
            p.push(
                "snmp_traps",
                "no [[snmp]] device to receive traps from: traps are taken only from configured devices",
            );
        }
        let profiles_dir = self.profiles_dir.as_ref().map(|d| relative_to(file, d));
        let profiles = Profiles::load(profiles_dir.as_deref(), &mut p);

        let mut buses: BTreeMap<String, BusSpec> = BTreeMap::new();
        for (i, b) in self.modbus_buses.iter().enumerate() {
            b.check(&format!("modbus_buses[{i}]"), &mut p);
            if buses.contains_key(&b.id) {
                p.push(
                    format!("modbus_buses[{i}].id"),
                    format!("{:?} is used by another bus", b.id),
                );
            }
            buses.insert(
                b.id.clone(),
                BusSpec {
                    bus: b.clone(),
                    devices: Vec::new(),
                },
            );
        }
        let mut device_ids = HashSet::new();
        for (i, d) in self.modbus.iter().enumerate() {
            let path = format!("modbus[{i}]");
            if validate_id(&d.id).is_ok() && !device_ids.insert(d.id.clone()) {
                p.push(
                    format!("{path}.id"),
                    format!("{:?} is used by another device", d.id),
                );
            }
            let bus_id = match (&d.bus, &d.address) {
                (Some(bus), None) if buses.contains_key(bus) => Some(bus.clone()),
                (Some(bus), None) => {
                    p.push(
                        format!("{path}.bus"),
                        format!("no [[modbus_buses]] has id {bus:?}"),
                    );
                    None
                }
                (None, Some(addr)) if crate::drivers::modbus::config::is_host_port(addr) => {
                    let bus = BusConfig::tcp(addr);
                    let id = bus.id.clone();
                    buses.entry(id.clone()).or_insert(BusSpec {
                        bus,
                        devices: Vec::new(),
                    });
                    Some(id)
                }
                (None, Some(addr)) => {
                    p.push(
                        format!("{path}.address"),
                        format!("{addr:?} is not host:port"),
                    );
                    None
                }
                _ => {
                    p.push(
                        path.clone(),
                        "give either bus = \"<bus id>\" or address = \"host:port\"",
                    );
                    None
                }
            };
            // Points are checked even when the bus is wrong, so every problem shows at once.
            let bus = bus_id
                .as_ref()
                .and_then(|id| buses.get(id))
                .map_or_else(|| BusConfig::tcp("unknown:0"), |b| b.bus.clone());
            if bus.transport != Transport::Tcp && !(1..=247).contains(&d.unit) {
                p.push(format!("{path}.unit"), "must be 1–247 on a serial line");
            }
            let spec = resolve_modbus(d, &bus, &profiles, &path, &mut p);
            if let (Some(spec), Some(b)) = (spec, bus_id.and_then(|id| buses.get_mut(&id))) {
                b.devices.push(spec);
            }
        }

        let mut warnings = Vec::new();
        if self
            .mqtt
            .security
            .password
            .as_ref()
            .is_some_and(Secret::is_inline)
        {
            warnings.push(conf::inline_secret_warning("mqtt.security.password"));
        }
        if self.mqtt.key.as_ref().is_some_and(Secret::is_inline) {
            warnings.push(conf::inline_secret_warning("mqtt.key"));
        }
        let mut snmp = Vec::new();
        for (i, d) in self.snmp.iter().enumerate() {
            let path = format!("snmp[{i}]");
            d.check(&path, &mut p);
            if validate_id(&d.id).is_ok() && !device_ids.insert(d.id.clone()) {
                p.push(
                    format!("{path}.id"),
                    format!("{:?} is used by another device", d.id),
                );
            }
            if d.community.is_inline()
                || d.v3
                    .as_ref()
                    .is_some_and(|v| v.auth_password.is_inline() || v.priv_password.is_inline())
            {
                warnings.push(conf::inline_secret_warning(&path));
            }
            if let Some(spec) = resolve_snmp(d, &profiles, &path, &mut p) {
                snmp.push(spec);
            }
        }
        p.into_result(file)?;
        // The device lists now live, resolved, in `buses` and `snmp`: keeping
        // the raw copies would double the agent's largest data for nothing.
        let mut config = self;
        config.modbus = Vec::new();
        config.snmp = Vec::new();
        Ok(Agent {
            buses: buses
                .into_values()
                .filter(|b| !b.devices.is_empty())
                .collect(),
            snmp,
            warnings,
            key,
            config,
        })
    }

    /// `mqtt.key`, read from where it is kept; a problem when it is needed
    /// and missing, or not a key.
    fn key(&self, p: &mut Problems) -> Option<AgentKey> {
        let how = format!(
            "get it from the collector's host with `roomguard-collector agent-key <collector.toml> {} {}`",
            self.site, self.agent
        );
        match self.mqtt.key.as_ref().map(Secret::resolve) {
            None | Some(Ok(None)) => {
                if self.spool.confirm == ConfirmBy::Collector {
                    p.push(
                        "mqtt.key",
                        format!("missing: without it the collector's confirmations cannot be told from forged ones; {how}"),
                    );
                }
                None
            }
            Some(Err(e)) => {
                p.push("mqtt.key", e);
                None
            }
            Some(Ok(Some(text))) => match AgentKey::from_hex(&text) {
                Ok(k) => Some(k),
                Err(e) => {
                    p.push("mqtt.key", format!("{e}; {how}"));
                    None
                }
            },
        }
    }
}

fn relative_to(file: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_owned()
    } else {
        file.parent().unwrap_or(Path::new(".")).join(path)
    }
}

fn unknown_profile(name: &str, profiles: &Profiles) -> String {
    format!(
        "no profile named {name:?}; known: {}",
        profiles.names().join(", ")
    )
}

fn resolve_modbus(
    d: &ModbusDevice,
    bus: &BusConfig,
    profiles: &Profiles,
    path: &str,
    p: &mut Problems,
) -> Option<ModbusSpec> {
    if let Err(e) = validate_id(&d.id) {
        p.push(format!("{path}.id"), format!("{:?} {e}", d.id));
    }
    if let Err(e) = validate_id(&d.room) {
        p.push(format!("{path}.room"), format!("{:?} {e}", d.room));
    }
    if d.interval < Duration::from_millis(100) {
        p.push(format!("{path}.interval"), "must be at least 100ms");
    }
    if d.max_read
        .is_some_and(|n| !(1..=crate::drivers::modbus::plan::MAX_REGISTERS).contains(&n))
    {
        p.push(format!("{path}.max_read"), "must be 1–125 registers");
    }
    let mut points: Vec<ModbusPoint> = Vec::new();
    let mut derived_defs: &[crate::derive::DerivedDef] = &[];
    let mut profile_max_read = None;
    let mut profile_contiguous = false;
    if let Some(name) = &d.profile {
        match profiles.get(name) {
            Some(Profile::Modbus(prof)) => {
                points.extend(prof.points.iter().cloned());
                derived_defs = &prof.derived;
                profile_max_read = prof.max_read;
                profile_contiguous = prof.contiguous_only;
            }
            Some(Profile::Snmp(_)) => p.push(
                format!("{path}.profile"),
                format!("{name:?} is an SNMP profile"),
            ),
            None => p.push(format!("{path}.profile"), unknown_profile(name, profiles)),
        }
    }
    let profile_ids: HashSet<String> = points.iter().map(|pt| pt.id.clone()).collect();
    for (id, o) in &d.overrides {
        match points.iter_mut().find(|pt| &pt.id == id) {
            Some(pt) => pt.apply(o),
            None => p.push(
                format!("{path}.overrides.{id}"),
                "no such point in the profile",
            ),
        }
    }
    points.retain(|pt| !d.overrides.get(&pt.id).is_some_and(|o| o.disabled));
    if let Some(order) = d.order {
        for pt in &mut points {
            pt.order = order;
        }
    }
    let from_profile = points.len();
    points.extend(d.points.iter().cloned());
    if points.is_empty() {
        p.push(
            format!("{path}.points"),
            "a device needs a profile or at least one point",
        );
    }
    let mut ids = HashSet::new();
    for (i, pt) in points.iter().enumerate() {
        let ppath = if i < from_profile {
            format!(
                "{path}.profile({}).points[{i}]",
                d.profile.as_deref().unwrap_or("")
            )
        } else {
            format!("{path}.points[{}]", i - from_profile)
        };
        pt.check(&ppath, p, &mut ids);
    }
    for pt in &mut points {
        pt.id = format!("{}.{}", d.id, pt.id);
        if pt.room.is_none() {
            pt.room = Some(d.room.clone());
        }
    }
    // Poll groups: points sharing an interval are planned together.
    let mut by_interval: BTreeMap<Duration, Vec<usize>> = BTreeMap::new();
    for (i, pt) in points.iter().enumerate() {
        by_interval
            .entry(pt.interval.unwrap_or(d.interval))
            .or_default()
            .push(i);
    }
    let max_gap = if d.contiguous_only || profile_contiguous {
        0
    } else {
        d.max_gap
    };
    let max_read = d
        .max_read
        .or(profile_max_read)
        .unwrap_or(crate::drivers::modbus::plan::MAX_REGISTERS);
    let groups = by_interval
        .into_iter()
        .map(|(interval, idx)| PollGroup {
            interval,
            requests: plan_subset(&points, idx, max_gap, max_read),
        })
        .collect();
    let labels: Vec<Label> = points.iter().map(|p| Label::from(p.id.as_str())).collect();
    let mut meta: Vec<PointMeta> = points
        .iter()
        .zip(&labels)
        .map(|(p, id)| PointMeta {
            id: id.clone(),
            room: p.room.as_deref().unwrap_or(&d.room).into(),
            quantity: p.quantity.as_str().into(),
            unit: p.unit.as_str().into(),
        })
        .collect();
    let derived = resolve_derived(d, derived_defs, &labels, (&profile_ids, &ids), path, p);
    meta.extend(derived.iter().map(|(x, def)| PointMeta {
        id: x.label.clone(),
        room: d.room.as_str().into(),
        quantity: def.quantity.as_str().into(),
        unit: def.unit.as_str().into(),
    }));
    let derived = derived.into_iter().map(|(x, _)| x).collect();
    Some(ModbusSpec {
        id: d.id.clone(),
        room: d.room.clone(),
        unit: d.unit,
        timeout: d.timeout.unwrap_or(bus.timeout),
        points,
        labels,
        meta: meta.into(),
        groups,
        derived,
    })
}

/// A profile's derived points for one device. Every input must be a point
/// of the profile; a derived point whose input the device disabled (a
/// single-phase meter) is left out.
fn resolve_derived<'a>(
    d: &ModbusDevice,
    defs: &'a [crate::derive::DerivedDef],
    labels: &[Label],
    (profile_ids, ids): (&HashSet<String>, &HashSet<String>),
    path: &str,
    p: &mut Problems,
) -> Vec<(crate::derive::Derived, &'a crate::derive::DerivedDef)> {
    let mut out = Vec::new();
    for (i, def) in defs.iter().enumerate() {
        let dpath = format!(
            "{path}.profile({}).derived[{i}]",
            d.profile.as_deref().unwrap_or("")
        );
        let before = p.list().len();
        for (field, msg) in def.problems() {
            let at = if field.is_empty() {
                dpath.clone()
            } else {
                format!("{dpath}.{field}")
            };
            p.push(at, msg);
        }
        if ids.contains(&def.id) || defs[..i].iter().any(|other| other.id == def.id) {
            p.push(
                format!("{dpath}.id"),
                format!("{:?} is already a point of the device", def.id),
            );
        }
        let mut found = Vec::new();
        for input in def.inputs() {
            if !profile_ids.contains(input) {
                p.push(
                    dpath.clone(),
                    format!("{input:?} is not a point of the profile"),
                );
                continue;
            }
            let full = format!("{}.{input}", d.id);
            found.push(labels.iter().find(|l| ***l == *full).cloned());
        }
        if p.list().len() > before {
            continue;
        }
        // Disabled by the device's overrides: nothing to derive from.
        let Some(inputs) = found.into_iter().collect::<Option<Vec<Label>>>() else {
            continue;
        };
        out.push((def.resolve(&d.id, inputs), def));
    }
    out
}

/// An SNMP profile's derived points for one device. Inputs are scalar
/// points or table cells `table.row.column` (UPS input lines
/// `input.1.voltage`…); a device without such a row (a single-phase UPS)
/// simply gets no reading of it.
fn resolve_snmp_derived(
    device: &str,
    defs: &[crate::derive::DerivedDef],
    points: &[SnmpPoint],
    tables: &[SnmpTable],
    path: &str,
    p: &mut Problems,
) -> Vec<(crate::derive::Derived, PointMeta)> {
    let mut out = Vec::new();
    for (i, def) in defs.iter().enumerate() {
        let dpath = format!("{path}.derived[{i}]");
        let before = p.list().len();
        for (field, msg) in def.problems() {
            let at = if field.is_empty() {
                dpath.clone()
            } else {
                format!("{dpath}.{field}")
            };
            p.push(at, msg);
        }
        if points.iter().any(|pt| pt.id == def.id) || tables.iter().any(|t| t.id == def.id) {
            p.push(
                format!("{dpath}.id"),
                format!("{:?} is already a point or table of the device", def.id),
            );
        }
        let known = |input: &str| match input.split('.').collect::<Vec<_>>().as_slice() {
            [id] => points.iter().any(|pt| pt.id == *id),
            [table, row, column] => {
                row.parse::<u32>().is_ok()
                    && tables
                        .iter()
                        .any(|t| t.id == *table && t.columns.iter().any(|c| c.id == *column))
            }
            _ => false,
        };
        for input in def.inputs() {
            if !known(input) {
                p.push(
                    dpath.clone(),
                    format!("{input:?} is neither a scalar point nor a table cell (table.row.column) of the device"),
                );
            }
        }
        if p.list().len() > before {
            continue;
        }
        let inputs = def
            .inputs()
            .iter()
            .map(|input| Label::from(format!("{device}.{input}").as_str()))
            .collect();
        let derived = def.resolve(device, inputs);
        let meta = PointMeta {
            id: derived.label.clone(),
            room: Label::from(""),
            quantity: def.quantity.as_str().into(),
            unit: def.unit.as_str().into(),
        };
        out.push((derived, meta));
    }
    out
}

fn resolve_snmp(
    d: &SnmpDevice,
    profiles: &Profiles,
    path: &str,
    p: &mut Problems,
) -> Option<SnmpSpec> {
    let mut points = Vec::new();
    let mut tables = Vec::new();
    let mut traps = Vec::new();
    let mut derived_defs: &[crate::derive::DerivedDef] = &[];
    if let Some(name) = &d.profile {
        match profiles.get(name) {
            Some(Profile::Snmp(prof)) => {
                derived_defs = &prof.derived;
                points.extend(prof.points.iter().cloned());
                tables.extend(prof.tables.iter().cloned());
                traps.extend(prof.traps.iter().cloned());
            }
            Some(Profile::Modbus(_)) => p.push(
                format!("{path}.profile"),
                format!("{name:?} is a Modbus profile"),
            ),
            None => p.push(format!("{path}.profile"), unknown_profile(name, profiles)),
        }
    }
    // A point by its id, or a table's column as `table.column` (a card
    // sending UPS-MIB voltages in 0.1 V: `"input.voltage" = { scale = 0.1 }`).
    for (id, o) in &d.overrides {
        let found = match id.split_once('.') {
            None => points.iter_mut().find(|pt: &&mut SnmpPoint| &pt.id == id),
            Some((table, column)) => tables
                .iter_mut()
                .find(|t| t.id == table)
                .and_then(|t| t.columns.iter_mut().find(|c| c.id == column)),
        };
        match found {
            Some(pt) => pt.apply(o),
            None => p.push(
                format!("{path}.overrides.{id}"),
                "no such point (or table.column) in the profile",
            ),
        }
    }
    points.retain(|pt| !d.overrides.get(&pt.id).is_some_and(|o| o.disabled));
    for t in &mut tables {
        t.columns.retain(|c| {
            !d.overrides
                .get(&format!("{}.{}", t.id, c.id))
                .is_some_and(|o| o.disabled)
        });
    }
    points.extend(d.points.iter().cloned());
    tables.extend(d.tables.iter().cloned());
    for id in d.rows.keys() {
        if !tables.iter().any(|t| &t.id == id) {
            p.push(format!("{path}.rows.{id}"), "no such table");
        }
    }
    if points.is_empty() && tables.is_empty() {
        p.push(
            format!("{path}.points"),
            "a device needs a profile, points or tables",
        );
    }
    SnmpDevice::check_points(path, &points, &tables, p);
    traps.extend(d.traps.iter().cloned());
    SnmpDevice::check_traps(path, &traps, &points, p);
    let dpath = format!("{path}.profile({})", d.profile.as_deref().unwrap_or(""));
    let derived = resolve_snmp_derived(&d.id, derived_defs, &points, &tables, &dpath, p);
    Some(SnmpSpec {
        device: d.clone(),
        points: points.into(),
        tables: tables.into(),
        traps,
        derived,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `got` has a problem starting with `prefix` (its path, then what).
    fn assert_named(got: &[String], prefix: &str) {
        assert!(
            got.iter().any(|g| g.starts_with(prefix)),
            "no {prefix:?} in {got:?}"
        );
    }

    fn problems(text: &str) -> Vec<String> {
        match AgentConfig::parse(text, Path::new("agent.toml")) {
            Ok(_) => vec![],
            Err(e) => e.problems().iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn the_sample_config_is_valid() {
        // The sample reads its secrets from the environment.
        for var in [
            "ROOMGUARD_UPS_COMMUNITY",
            "ROOMGUARD_PDU_AUTH",
            "ROOMGUARD_PDU_PRIV",
        ] {
            std::env::set_var(var, "sample-secret");
        }
        std::env::set_var("ROOMGUARD_AGENT_KEY", "ab".repeat(32));
        assert_eq!(problems(SAMPLE), Vec::<String>::new());
    }

    #[test]
    fn the_demo_config_is_valid() {
        let demo = include_str!("../../configs/demo/agent.toml");
        assert_eq!(problems(demo), Vec::<String>::new());
    }

    #[test]
    fn every_semantic_problem_is_reported_at_once_by_path() {
        let text = r#"
            site = "site 1"
            agent = "edge-1"
            [mqtt]
            url = "http://broker"
            key = { value = "abababababababababababababababababababababababababababababababab" }
            [[modbus]]
            id = "th-1"
            room = "machine-room"
            address = "127.0.0.1:502"
            [[modbus.points]]
            id = "t"
            quantity = "temperature"
            table = "input"
            address = 0
            type = "int16"
            [[modbus.points]]
            id = "t"
            quantity = "temperature"
            table = "coil"
            address = 1
            type = "float32"
            [[modbus.points]]
            id = "b"
            quantity = "smoke"
            table = "input"
            address = 65535
            type = "bit"
        "#;
        let got = problems(text);
        let paths: Vec<&str> = got.iter().map(|s| s.split(':').next().unwrap()).collect();
        assert_eq!(
            paths,
            vec![
                "site",
                "mqtt.url",
                "modbus[0].points[1].id",
                "modbus[0].points[1].type",
                "modbus[0].points[2].bit",
            ],
            "{got:#?}"
        );
    }

    #[test]
    fn a_mistyped_key_is_named_with_its_path() {
        let text = r#"
            site = "s"
            agent = "a"
            [mqtt]
            url = "mqtt://127.0.0.1"
            key = { value = "abababababababababababababababababababababababababababababababab" }
            [[modbus]]
            id = "d"
            room = "r"
            address = "127.0.0.1:502"
            profile = "generic-th-sensor"
            [[modbus]]
            id = "e"
            room = "r"
            address = "127.0.0.1:502"
            [[modbus.points]]
            id = "x"
            quantity = "q"
            table = "input"
            address = -4
            type = "int16"
        "#;
        let got = problems(text);
        assert!(got[0].starts_with("modbus[1].points[0].address"), "{got:?}");
    }

    #[test]
    fn profiles_are_instantiated_with_overrides_and_poll_groups() {
        let text = r#"
            site = "s"
            agent = "a"
            [mqtt]
            url = "mqtt://127.0.0.1"
            key = { value = "abababababababababababababababababababababababababababababababab" }
            [[modbus]]
            id = "meter-1"
            room = "dist"
            address = "10.0.0.5:502"
            profile = "three-phase-meter"
            order = "cdab"
            interval = "2s"
            overrides = { voltage_c = { disabled = true }, current_a = { scale = 0.5 } }
        "#;
        let agent = AgentConfig::parse(text, Path::new("a.toml")).unwrap();
        let dev = &agent.buses[0].devices[0];
        assert!(dev.points.iter().all(|p| p.id.starts_with("meter-1.")));
        assert!(!dev.points.iter().any(|p| p.id == "meter-1.voltage_c"));
        let ia = dev
            .points
            .iter()
            .find(|p| p.id == "meter-1.current_a")
            .unwrap();
        assert_eq!(
            (ia.scale, ia.order),
            (0.5, crate::drivers::modbus::config::WordOrder::Cdab)
        );
        let intervals: Vec<u64> = dev.groups.iter().map(|g| g.interval.as_secs()).collect();
        assert_eq!(intervals, vec![2, 60], "energy is its own 60 s poll group");
        assert!(dev.derived.is_empty(), "no unbalance without phase C");
    }

    #[test]
    fn derived_points_are_described_with_their_inputs_resolved_to_the_device() {
        let text = r#"
            site = "s"
            agent = "a"
            [mqtt]
            url = "mqtt://127.0.0.1"
            key = { value = "abababababababababababababababababababababababababababababababab" }
            [[modbus]]
            id = "meter-1"
            room = "dist"
            address = "10.0.0.5:502"
            profile = "three-phase-meter"
        "#;
        let agent = AgentConfig::parse(text, Path::new("a.toml")).unwrap();
        let dev = &agent.buses[0].devices[0];
        assert_eq!(dev.derived.len(), 1);
        assert_eq!(&*dev.derived[0].label, "meter-1.voltage_unbalance");
        let crate::derive::Formula::Unbalance { of, min_mean } = &dev.derived[0].formula else {
            panic!("{:?}", dev.derived[0].formula)
        };
        let of: Vec<&str> = of.iter().map(|l| &**l).collect();
        assert_eq!(
            of,
            [
                "meter-1.voltage_a",
                "meter-1.voltage_b",
                "meter-1.voltage_c"
            ]
        );
        assert_eq!(*min_mean, 100.0);
        let meta = dev
            .meta
            .iter()
            .find(|m| &*m.id == "meter-1.voltage_unbalance")
            .unwrap();
        assert_eq!(
            (&*meta.quantity, &*meta.unit, &*meta.room),
            ("voltage_unbalance", "%", "dist")
        );
    }

    #[test]
    fn a_derived_point_naming_a_point_its_profile_lacks_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("th.toml"),
            r#"
            name = "my-th"
            driver = "modbus"
            description = "t"
            follows = "t"
            [[points]]
            id = "t"
            quantity = "temperature"
            unit = "°C"
            table = "input"
            address = 0
            type = "int16"
            [[derived]]
            id = "dp"
            quantity = "dew_point"
            unit = "°C"
            dew_point = { temperature = "t", humidity = "rh" }
            "#,
        )
        .unwrap();
        let text = format!(
            "site = \"s\"\nagent = \"a\"\nprofiles_dir = {:?}\n[mqtt]\nurl = \"mqtt://127.0.0.1\"\n\
             key = {{ value = \"abababababababababababababababababababababababababababababababab\" }}\n[[modbus]]\nid = \"d\"\nroom = \"r\"\naddress = \"10.0.0.5:502\"\nprofile = \"my-th\"\n",
            dir.path()
        );
        let got = problems(&text);
        assert!(
            got.iter()
                .any(|g| g.starts_with("modbus[0].profile(my-th).derived[0]")
                    && g.contains("\"rh\" is not a point of the profile")),
            "{got:?}"
        );
    }

    #[test]
    fn unknown_profiles_and_overrides_are_named() {
        let text = r#"
            site = "s"
            agent = "a"
            [mqtt]
            url = "mqtt://127.0.0.1"
            key = { value = "abababababababababababababababababababababababababababababababab" }
            [[modbus]]
            id = "x"
            room = "r"
            address = "10.0.0.5:502"
            profile = "no-such"
            [[modbus]]
            id = "y"
            room = "r"
            address = "10.0.0.5:502"
            profile = "generic-th-sensor"
            overrides = { temprature = { scale = 0.01 } }
        "#;
        let got = problems(text);
        assert_named(&got, "modbus[0].profile: no profile named \"no-such\"");
        assert_named(&got, "modbus[1].overrides.temprature");
    }

    #[test]
    fn overrides_reach_table_columns_and_sentinels_and_a_wrong_column_is_named() {
        let text = r#"
            site = "s"
            agent = "a"
            [mqtt]
            url = "mqtt://127.0.0.1"
            key = { value = "abababababababababababababababababababababababababababababababab" }
            [[snmp]]
            id = "ups"
            room = "r"
            profile = "ups-mib"
            address = "10.0.0.9"
            version = "v2c"
            community = { value = "public" }
            [snmp.overrides]
            "input.voltage" = { scale = 0.1 }
            "input.frequency" = { scale = 0.01 }
            "output.current" = { disabled = true }
            minutes_remaining = { not_available = [-1] }
        "#;
        let agent = AgentConfig::parse(text, Path::new("agent.toml")).unwrap();
        let ups = &agent.snmp[0];
        let column = |t: &str, c: &str| {
            ups.tables
                .iter()
                .find(|x| x.id == t)
                .and_then(|x| x.columns.iter().find(|y| y.id == c))
        };
        assert_eq!(column("input", "voltage").unwrap().scale, 0.1);
        assert_eq!(column("input", "frequency").unwrap().scale, 0.01);
        assert!(column("output", "current").is_none(), "disabled");
        assert!(column("output", "voltage").is_some(), "the others stay");
        let minutes = ups
            .points
            .iter()
            .find(|p| p.id == "minutes_remaining")
            .unwrap();
        assert_eq!(minutes.not_available, [-1.0]);

        let wrong = text
            .replace("\"input.voltage\"", "\"input.voltag\"")
            .replace("[snmp.overrides]", "rows = { inptu = 1 }\n[snmp.overrides]");
        let got = problems(&wrong);
        assert_named(&got, "snmp[0].overrides.input.voltag");
        assert_named(&got, "snmp[0].rows.inptu: no such table");
    }

    #[test]
    fn snmp_derived_points_take_table_cells_and_a_wrong_cell_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let profile = r#"
            name = "my-ups"
            driver = "snmp"
            description = "test"
            follows = "test"
            [[points]]
            id = "source"
            oid = "1.3.6.1.2.1.33.1.4.1.0"
            quantity = "ups_output_source"
            [[tables]]
            id = "input"
              [[tables.columns]]
              id = "voltage"
              oid = "1.3.6.1.2.1.33.1.3.3.1.3"
              quantity = "voltage"
            [[derived]]
            id = "unbalance"
            quantity = "voltage_unbalance"
            unit = "%"
            unbalance = ["input.1.voltage", "input.2.voltage", "input.3.voltag"]
        "#;
        std::fs::write(dir.path().join("my-ups.toml"), profile).unwrap();
        let text = format!(
            "site = \"s\"\nagent = \"a\"\nprofiles_dir = {:?}\n[mqtt]\nurl = \"mqtt://127.0.0.1\"\nkey = {{ value = \"abababababababababababababababababababababababababababababababab\" }}\n[[snmp]]\nid = \"ups\"\nroom = \"r\"\nprofile = \"my-ups\"\naddress = \"10.0.0.9\"\nversion = \"v2c\"\ncommunity = {{ value = \"public\" }}\n",
            dir.path().display().to_string()
        );
        let got = problems(&text);
        assert_named(
            &got,
            "snmp[0].profile(my-ups).derived[0]: \"input.3.voltag\" is neither",
        );
        std::fs::write(
            dir.path().join("my-ups.toml"),
            profile.replace("input.3.voltag\"", "input.3.voltage\""),
        )
        .unwrap();
        let agent = AgentConfig::parse(&text, Path::new("agent.toml")).unwrap();
        let (d, meta) = &agent.snmp[0].derived[0];
        assert_eq!(&*d.label, "ups.unbalance");
        assert_eq!(&*meta.quantity, "voltage_unbalance");
        let crate::derive::Formula::Unbalance { of, .. } = &d.formula else {
            panic!("{:?}", d.formula)
        };
        assert_eq!(&*of[2], "ups.input.3.voltage");
    }

    #[test]
    fn traps_come_from_the_profile_and_a_wrong_one_is_named_by_path() {
        let text = r#"
            site = "s"
            agent = "a"
            [mqtt]
            url = "mqtt://127.0.0.1"
            key = { value = "abababababababababababababababababababababababababababababababab" }
            [snmp_traps]
            listen = "127.0.0.1:10162"
            [[snmp]]
            id = "ups"
            room = "r"
            profile = "ups-mib"
            address = "10.0.0.9"
            version = "v2c"
            community = { value = "public" }
            [[snmp.traps]]
            name = "vendorOnBattery"
            oid = "1.3.6.1.4.1.99999.0.5"
            set = { point = "output_source", value = 5 }
        "#;
        let agent = AgentConfig::parse(text, Path::new("agent.toml")).unwrap();
        let names: Vec<&str> = agent.snmp[0]
            .traps
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        assert!(names.contains(&"upsTrapOnBattery") && names.contains(&"vendorOnBattery"));

        let wrong = text
            .replace("\"output_source\"", "\"output_sauce\"")
            .replace("1.3.6.1.4.1.99999.0.5", "1.3.6.1.2.1.33.2.1");
        let got = problems(&wrong);
        for want in [
            "snmp[0].traps[4].set.point: \"output_sauce\" is not a scalar point",
            "snmp[0].traps[4].oid: listed twice",
        ] {
            assert_named(&got, want);
        }
        let modbus_only = format!(
            "{}[[modbus]]\nid = \"th\"\nroom = \"r\"\naddress = \"127.0.0.1:502\"\nunit = 1\nprofile = \"generic-th-sensor\"\n",
            &text[..text.find("[[snmp]]").unwrap()]
        );
        let got = problems(&modbus_only);
        assert_named(&got, "snmp_traps: no [[snmp]] device");
    }

    #[test]
    fn the_meter_profile_reads_at_most_80_registers_and_a_device_may_lower_it() {
        let text = |extra: &str| {
            format!(
                "site = \"s\"\nagent = \"a\"\n[mqtt]\nurl = \"mqtt://127.0.0.1\"\n\
                 key = {{ value = \"{}\" }}\n[[modbus]]\nid = \"m\"\nroom = \"r\"\n\
                 address = \"10.0.0.5:502\"\nprofile = \"three-phase-meter\"\n{extra}",
                "ab".repeat(32)
            )
        };
        let counts = |extra: &str| -> Vec<u16> {
            let agent = AgentConfig::parse(&text(extra), Path::new("agent.toml")).unwrap();
            agent.buses[0].devices[0]
                .groups
                .iter()
                .flat_map(|g| g.requests.iter().map(|r| r.count))
                .collect()
        };
        // A point at 30087 added to the profile's: 88 registers from the first.
        let more = "max_gap = 60\n[[modbus.points]]\nid = \"thd\"\nquantity = \"voltage_thd\"\n\
                    table = \"input\"\naddress = 86\ntype = \"float32\"\n";
        assert!(counts(more).iter().all(|&c| c <= 80), "{:?}", counts(more));
        let lower = format!("max_read = 40\n{more}");
        assert!(counts(more).len() >= 2, "{:?}", counts(more));
        assert!(
            counts(&lower).iter().all(|&c| c <= 40),
            "{:?}",
            counts(&lower)
        );
        assert!(problems(&text("max_read = 200\n"))
            .iter()
            .any(|g| g.starts_with("modbus[0].max_read")));
    }

    #[test]
    fn devices_sharing_a_serial_bus_are_scheduled_together() {
        let text = r#"
            site = "s"
            agent = "a"
            [mqtt]
            url = "mqtt://127.0.0.1"
            key = { value = "abababababababababababababababababababababababababababababababab" }
            [[modbus_buses]]
            id = "rs485-1"
            transport = "rtu"
            serial_port = "/dev/ttyUSB0"
            baud_rate = 9600
            [[modbus]]
            id = "th-1"
            room = "r"
            bus = "rs485-1"
            unit = 1
            profile = "generic-th-sensor"
            [[modbus]]
            id = "th-2"
            room = "r"
            bus = "rs485-1"
            unit = 2
            profile = "generic-th-sensor"
            [[modbus]]
            id = "th-3"
            room = "r"
            bus = "rs485-2"
            unit = 0
            profile = "generic-th-sensor"
        "#;
        let got = problems(text);
        assert_eq!(
            got,
            vec!["modbus[2].bus: no [[modbus_buses]] has id \"rs485-2\"".to_string()]
        );
    }
}
