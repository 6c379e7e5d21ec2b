//! Configuration of SNMP devices, their scalar points and walked tables.

use roomguard_protocol::conf::{self, Problems};
use roomguard_protocol::validate_id;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SnmpVersion {
    V1,
    V2c,
    V3,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthProtocol {
    Md5,
    Sha,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PrivProtocol {
    Des,
    Aes,
}

pub use roomguard_protocol::conf::Secret;

/// SNMPv3 user-based security.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct V3Config {
    pub user: String,
    pub auth_protocol: AuthProtocol,
    pub auth_password: Secret,
    /// Without a privacy protocol the level is authNoPriv.
    #[serde(default)]
    pub priv_protocol: Option<PrivProtocol>,
    #[serde(default)]
    pub priv_password: Secret,
    /// The SNMPv3 context to read (proxies, agents serving several
    /// instances); empty: the default context.
    #[serde(default)]
    pub context_name: String,
}

/// How a value is turned into a reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueKind {
    /// The number as it is (Integer, Gauge32, Unsigned32, TimeTicks, numeric text).
    #[default]
    Gauge,
    /// A Counter32/Counter64 turned into a rate per second between polls.
    CounterRate,
    /// An enumeration: the number, and its state name from `map` as text.
    Enum,
    /// An OctetString reported as text.
    Text,
}

/// One scalar OID.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SnmpPoint {
    /// Point id within the device.
    pub id: String,
    /// Numeric OID, e.g. `1.3.6.1.2.1.33.1.4.1.0`.
    pub oid: String,
    pub quantity: String,
    #[serde(default)]
    pub unit: String,
    #[serde(default)]
    pub kind: ValueKind,
    #[serde(default = "one")]
    pub scale: f64,
    #[serde(default)]
    pub offset: f64,
    /// For `kind = "enum"`: value → state name, e.g. `{ "5" = "on_battery" }`.
    #[serde(default)]
    pub map: BTreeMap<String, String>,
    /// Raw values (before scale and offset) the agent answers for a value
    /// it does not have, e.g. -1: such a reading is bad, "not available".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_available: Vec<f64>,
}

fn one() -> f64 {
    1.0
}

/// A conceptual table walked with GETBULK; each row's index goes into the
/// point id: `{device}.{table}.{index}.{column}`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SnmpTable {
    /// Table id within the device, e.g. `outlet`.
    pub id: String,
    /// Columns, each like a scalar point whose `oid` is the column's (the row
    /// index follows it).
    pub columns: Vec<SnmpPoint>,
    /// A scalar saying how many rows really exist (UPS-MIB `upsInputNumLines`):
    /// rows numbered beyond it are phantoms (a single-phase UPS listing lines
    /// 2 and 3 at 0 V) and are ignored.
    #[serde(default)]
    pub rows_oid: Option<String>,
}

/// A notification a device family sends (profile `[[traps]]`): on arrival
/// the device is polled at once, and `set` gives a reading straight away.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrapDef {
    /// The MIB's name for it, for the log (`upsTrapOnBattery`).
    pub name: String,
    /// The notification's OID: snmpTrapOID for v2c/v3; a v1 trap is
    /// matched as `enterprise.0.specific` (RFC 3584).
    pub oid: String,
    #[serde(default)]
    pub set: Option<TrapSet>,
}

/// A reading a trap stands for: `point` (a scalar of the device) takes the
/// raw `value`, mapped like a polled one (`output_source` = 5 is
/// `on_battery`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrapSet {
    pub point: String,
    pub value: f64,
}

/// The agent's trap receiver (`[snmp_traps]`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrapListen {
    /// UDP address to receive on; the standard port 162 needs
    /// CAP_NET_BIND_SERVICE (or root).
    pub listen: std::net::SocketAddr,
}

/// An SNMP agent (UPS, PDU, environment monitor) to poll.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SnmpDevice {
    pub id: String,
    pub room: String,
    #[serde(default)]
    pub profile: Option<String>,
    /// `host:port` (port 161 when left out).
    pub address: String,
    pub version: SnmpVersion,
    /// Community for v1/v2c; prefer `community.env` or `community.file`.
    #[serde(default)]
    pub community: Secret,
    #[serde(default)]
    pub v3: Option<V3Config>,
    #[serde(default = "default_interval", with = "conf::duration")]
    pub interval: Duration,
    /// Wait for each reply; SNMP over UDP has no connection to tell failure.
    #[serde(default = "default_timeout", with = "conf::duration")]
    pub timeout: Duration,
    /// Resends after a timeout.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// OIDs asked per GET; agents refuse (tooBig) or choke on huge requests.
    #[serde(default = "default_max_oids")]
    pub max_oids_per_request: usize,
    /// GETBULK max-repetitions when walking tables (v2c/v3).
    #[serde(default = "default_max_repetitions")]
    pub max_repetitions: u32,
    /// Rows each table really has, by table id (`rows = { input = 1 }` for a
    /// single-phase UPS whose card lists three input lines): rows numbered
    /// beyond are ignored. Takes precedence over the table's `rows_oid`.
    #[serde(default)]
    pub rows: BTreeMap<String, u32>,
    /// Changes to profile points by id, or to table columns as `table.column`
    /// (scale, offset, unit, quantity, not_available, disabled).
    #[serde(default)]
    pub overrides: BTreeMap<String, SnmpOverride>,
    #[serde(default)]
    pub points: Vec<SnmpPoint>,
    #[serde(default)]
    pub tables: Vec<SnmpTable>,
    /// Notifications besides the profile's.
    #[serde(default)]
    pub traps: Vec<TrapDef>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SnmpOverride {
    #[serde(default)]
    pub disabled: bool,
    #[serde(default)]
    pub scale: Option<f64>,
    #[serde(default)]
    pub offset: Option<f64>,
    #[serde(default)]
    pub unit: Option<String>,
    #[serde(default)]
    pub quantity: Option<String>,
    /// Replaces the point's "not available" raw values.
    #[serde(default)]
    pub not_available: Option<Vec<f64>>,
}

fn default_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_retries() -> u32 {
    1
}
fn default_max_oids() -> usize {
    24
}
fn default_max_repetitions() -> u32 {
    16
}

/// Parses a dotted numeric OID (a leading dot is allowed).
pub fn parse_oid(s: &str) -> Result<Vec<u64>, String> {
    let parts: Result<Vec<u64>, _> = s
        .trim_start_matches('.')
        .split('.')
        .map(str::parse::<u64>)
        .collect();
    match parts {
        Ok(p) if p.len() >= 2 && p[0] <= 2 && p.iter().all(|&a| a <= u64::from(u32::MAX)) => Ok(p),
        _ => Err(format!(
            "{s:?} is not a numeric OID such as 1.3.6.1.2.1.33.1.4.1.0"
        )),
    }
}

impl SnmpPoint {
    pub fn apply(&mut self, o: &SnmpOverride) {
        if let Some(v) = o.scale {
            self.scale = v;
        }
        if let Some(v) = o.offset {
            self.offset = v;
        }
        if let Some(v) = &o.unit {
            self.unit = v.clone();
        }
        if let Some(v) = &o.quantity {
            self.quantity = v.clone();
        }
        if let Some(v) = &o.not_available {
            self.not_available = v.clone();
        }
    }

    /// How its values become readings.
    pub fn mapping(&self) -> super::map::Mapping<'_> {
        super::map::Mapping {
            kind: self.kind,
            scale: self.scale,
            offset: self.offset,
            map: &self.map,
            not_available: &self.not_available,
        }
    }
}

fn check_value(path: &str, pt: &SnmpPoint, p: &mut Problems, ids: &mut HashSet<String>) {
    let id = &pt.id;
    if let Err(e) = validate_id(id) {
        p.push(format!("{path}.id"), format!("{id:?} {e}"));
    } else if !ids.insert(id.to_owned()) {
        p.push(
            format!("{path}.id"),
            format!("{id:?} is used twice in this device"),
        );
    }
    if let Err(e) = parse_oid(&pt.oid) {
        p.push(format!("{path}.oid"), e);
    }
    if let Err(e) = validate_id(&pt.quantity) {
        p.push(format!("{path}.quantity"), format!("{:?} {e}", pt.quantity));
    }
    if !pt.scale.is_finite() || pt.scale == 0.0 {
        p.push(format!("{path}.scale"), "must be a finite, non-zero number");
    }
    if pt.not_available.iter().any(|v| !v.is_finite()) {
        p.push(
            format!("{path}.not_available"),
            "lists raw values, finite numbers such as -1",
        );
    }
}

impl SnmpDevice {
    /// Checks everything that does not need the profile: addressing,
    /// credentials, limits. Points are checked after profile resolution.
    pub fn check(&self, path: &str, p: &mut Problems) {
        if let Err(e) = validate_id(&self.id) {
            p.push(format!("{path}.id"), format!("{:?} {e}", self.id));
        }
        if let Err(e) = validate_id(&self.room) {
            p.push(format!("{path}.room"), format!("{:?} {e}", self.room));
        }
        if self.address.is_empty() || self.address.contains('/') {
            p.push(
                format!("{path}.address"),
                format!("{:?} is not host or host:port", self.address),
            );
        }
        match (self.version, &self.v3) {
            (SnmpVersion::V3, None) => p.push(
                format!("{path}.v3"),
                "version v3 needs a [v3] table: user, auth_protocol, auth_password",
            ),
            (SnmpVersion::V3, Some(v3)) => {
                if v3.user.is_empty() {
                    p.push(format!("{path}.v3.user"), "must not be empty");
                }
                match v3.auth_password.resolve() {
                    Ok(Some(pw)) if pw.len() < 8 => p.push(
                        format!("{path}.v3.auth_password"),
                        "SNMPv3 passwords need at least 8 characters",
                    ),
                    Ok(Some(_)) => {}
                    Ok(None) => p.push(
                        format!("{path}.v3.auth_password"),
                        "missing: give value, env or file",
                    ),
                    Err(e) => p.push(format!("{path}.v3.auth_password"), e),
                }
                if v3.priv_protocol.is_some() {
                    match v3.priv_password.resolve() {
                        Ok(Some(pw)) if pw.len() < 8 => p.push(
                            format!("{path}.v3.priv_password"),
                            "SNMPv3 passwords need at least 8 characters",
                        ),
                        Ok(Some(_)) => {}
                        Ok(None) => p.push(
                            format!("{path}.v3.priv_password"),
                            "missing: give value, env or file",
                        ),
                        Err(e) => p.push(format!("{path}.v3.priv_password"), e),
                    }
                }
            }
            (_, Some(_)) => p.push(format!("{path}.v3"), "only for version = \"v3\""),
            (_, None) => match self.community.resolve() {
                Ok(Some(_)) => {}
                Ok(None) => p.push(
                    format!("{path}.community"),
                    "v1/v2c need a community: value, env or file",
                ),
                Err(e) => p.push(format!("{path}.community"), e),
            },
        }
        if self.interval < Duration::from_millis(500) {
            p.push(format!("{path}.interval"), "must be at least 500ms");
        }
        if self.timeout.is_zero() {
            p.push(format!("{path}.timeout"), "must be more than zero");
        }
        if self.retries > 5 {
            p.push(format!("{path}.retries"), "at most 5");
        }
        if !(1..=128).contains(&self.max_oids_per_request) {
            p.push(format!("{path}.max_oids_per_request"), "must be 1–128");
        }
        if !(1..=100).contains(&self.max_repetitions) {
            p.push(format!("{path}.max_repetitions"), "must be 1–100");
        }
    }

    /// Checks resolved trap definitions against the device's scalars.
    pub fn check_traps(path: &str, traps: &[TrapDef], points: &[SnmpPoint], p: &mut Problems) {
        let mut oids = HashSet::new();
        for (i, t) in traps.iter().enumerate() {
            let tpath = format!("{path}.traps[{i}]");
            if t.name.trim().is_empty() {
                p.push(format!("{tpath}.name"), "must not be empty");
            }
            match parse_oid(&t.oid) {
                Err(e) => p.push(format!("{tpath}.oid"), e),
                Ok(oid) => {
                    if !oids.insert(oid) {
                        p.push(format!("{tpath}.oid"), "listed twice for this device");
                    }
                }
            }
            if let Some(set) = &t.set {
                if !points.iter().any(|pt| pt.id == set.point) {
                    p.push(
                        format!("{tpath}.set.point"),
                        format!("{:?} is not a scalar point of this device", set.point),
                    );
                }
                if !set.value.is_finite() || set.value.fract() != 0.0 {
                    p.push(
                        format!("{tpath}.set.value"),
                        "must be a whole number (the raw value)",
                    );
                }
            }
        }
    }

    /// Checks resolved points and tables.
    pub fn check_points(path: &str, points: &[SnmpPoint], tables: &[SnmpTable], p: &mut Problems) {
        let mut ids = HashSet::new();
        for (i, pt) in points.iter().enumerate() {
            check_value(&format!("{path}.points[{i}]"), pt, p, &mut ids);
        }
        for (t, table) in tables.iter().enumerate() {
            let tpath = format!("{path}.tables[{t}]");
            if let Err(e) = validate_id(&table.id) {
                p.push(format!("{tpath}.id"), format!("{:?} {e}", table.id));
            } else if !ids.insert(table.id.clone()) {
                p.push(
                    format!("{tpath}.id"),
                    format!("{:?} is used twice in this device", table.id),
                );
            }
            if table.columns.is_empty() {
                p.push(
                    format!("{tpath}.columns"),
                    "a table needs at least one column",
                );
            }
            if let Some(Err(e)) = table.rows_oid.as_deref().map(parse_oid) {
                p.push(format!("{tpath}.rows_oid"), e);
            }
            let mut col_ids = HashSet::new();
            for (c, col) in table.columns.iter().enumerate() {
                check_value(&format!("{tpath}.columns[{c}]"), col, p, &mut col_ids);
            }
        }
    }
}
