//! Configuration of a Modbus device and its points, as written in the agent's
//! TOML file, with the checks that catch a wrong register map before the agent
//! ever polls.

use roomguard_protocol::conf::Problems;
use roomguard_protocol::validate_id;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::time::Duration;

/// A Modbus device reached over TCP (a native Modbus TCP device, or a gateway
/// with the device behind it at `unit`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusDevice {
    /// Device id, unique within the agent.
    pub id: String,
    /// Room the device is in; points may override it.
    pub room: String,
    /// How often the device is polled.
    #[serde(
        default = "default_interval",
        with = "roomguard_protocol::conf::duration"
    )]
    pub interval: Duration,
    /// `host:port` of the device or gateway.
    pub address: String,
    /// Unit (slave) id, 0–247; 255 or 1 for most native TCP devices.
    #[serde(default = "default_unit")]
    pub unit: u8,
    /// Upper bound on each request's round trip.
    #[serde(
        default = "default_timeout",
        with = "roomguard_protocol::conf::duration"
    )]
    pub timeout: Duration,
    /// Largest run of unused registers a single read may span to save a
    /// request (0 reads only the registers the points use).
    #[serde(default = "default_max_gap")]
    pub max_gap: u16,
    pub points: Vec<ModbusPoint>,
}

fn default_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_unit() -> u8 {
    1
}
fn default_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_max_gap() -> u16 {
    8
}

/// Which of the four Modbus data tables a point lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Table {
    /// Function code 1.
    Coil,
    /// Function code 2.
    DiscreteInput,
    /// Function code 4.
    Input,
    /// Function code 3.
    Holding,
}

impl Table {
    pub fn is_bits(self) -> bool {
        matches!(self, Table::Coil | Table::DiscreteInput)
    }
}

/// How a point's value is encoded in its registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DataType {
    /// A coil or discrete input (0 or 1).
    Bool,
    /// One bit (`bit` = 0..15, 0 least significant) of a register.
    Bit,
    Int16,
    Uint16,
    Int32,
    Uint32,
    Int64,
    Uint64,
    Float32,
    Float64,
}

impl DataType {
    /// Registers (or bits, for `Bool`) the value occupies.
    pub fn width(self) -> u16 {
        match self {
            DataType::Bool | DataType::Bit | DataType::Int16 | DataType::Uint16 => 1,
            DataType::Int32 | DataType::Uint32 | DataType::Float32 => 2,
            DataType::Int64 | DataType::Uint64 | DataType::Float64 => 4,
        }
    }
}

/// Order of bytes within a multi-register value, named by where the most
/// significant byte `A` travels: `abcd` is big-endian (the Modbus default),
/// `cdab` swaps words (common on meters), `badc` swaps bytes within words,
/// `dcba` is fully little-endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WordOrder {
    #[default]
    Abcd,
    Cdab,
    Badc,
    Dcba,
}

/// One value read from the device.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusPoint {
    /// Point id, unique within the site: e.g. `mr-th-1.temperature`.
    pub id: String,
    /// What is measured (`temperature`, `humidity`, `smoke`, `h2_lfl`, …).
    pub quantity: String,
    /// Unit of the scaled value (`°C`, `%RH`, `V`); empty for states.
    #[serde(default)]
    pub unit: String,
    /// Room, when it differs from the device's.
    #[serde(default)]
    pub room: Option<String>,
    pub table: Table,
    /// Register or bit address, 0-based as on the wire (register 40001 is 0).
    pub address: u16,
    #[serde(rename = "type")]
    pub data_type: DataType,
    /// For `type = "bit"`: which bit of the register, 0 = least significant.
    #[serde(default)]
    pub bit: Option<u8>,
    #[serde(default)]
    pub order: WordOrder,
    /// value = raw × scale + offset.
    #[serde(default = "one")]
    pub scale: f64,
    #[serde(default)]
    pub offset: f64,
}

fn one() -> f64 {
    1.0
}

impl ModbusDevice {
    /// Checks the device at `path` (e.g. `devices[2]`), recording every problem.
    pub fn check(&self, path: &str, problems: &mut Problems, point_ids: &mut HashSet<String>) {
        if let Err(e) = validate_id(&self.id) {
            problems.push(format!("{path}.id"), format!("{:?} {e}", self.id));
        }
        if let Err(e) = validate_id(&self.room) {
            problems.push(format!("{path}.room"), format!("{:?} {e}", self.room));
        }
        if self.interval < Duration::from_millis(100) {
            problems.push(format!("{path}.interval"), "must be at least 100ms");
        }
        if self.address.parse::<std::net::SocketAddr>().is_err()
            && !self
                .address
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
        {
            problems.push(
                format!("{path}.address"),
                format!("{:?} is not host:port", self.address),
            );
        }
        if self.unit > 247 && self.unit != 255 {
            problems.push(
                format!("{path}.unit"),
                "must be 0–247 (or 255 for native TCP devices)",
            );
        }
        if self.timeout.is_zero() {
            problems.push(format!("{path}.timeout"), "must be more than zero");
        }
        if self.points.is_empty() {
            problems.push(
                format!("{path}.points"),
                "a device needs at least one point",
            );
        }
        for (i, p) in self.points.iter().enumerate() {
            p.check(&format!("{path}.points[{i}]"), problems, point_ids);
        }
    }
}

impl ModbusPoint {
    fn check(&self, path: &str, problems: &mut Problems, point_ids: &mut HashSet<String>) {
        if let Err(e) = validate_id(&self.id) {
            problems.push(format!("{path}.id"), format!("{:?} {e}", self.id));
        } else if !point_ids.insert(self.id.clone()) {
            problems.push(
                format!("{path}.id"),
                format!("{:?} is used by another point", self.id),
            );
        }
        if let Err(e) = validate_id(&self.quantity) {
            problems.push(
                format!("{path}.quantity"),
                format!("{:?} {e}", self.quantity),
            );
        }
        if let Some(room) = &self.room {
            if let Err(e) = validate_id(room) {
                problems.push(format!("{path}.room"), format!("{room:?} {e}"));
            }
        }
        let bits = self.table.is_bits();
        match (bits, self.data_type) {
            (true, DataType::Bool) => {}
            (true, t) => problems.push(
                format!("{path}.type"),
                format!("{t:?} cannot be read from {:?}; coils and discrete inputs hold only type \"bool\"", self.table),
            ),
            (false, DataType::Bool) => problems.push(
                format!("{path}.type"),
                "\"bool\" is for coils and discrete inputs; use \"bit\" with `bit = N` for a bit of a register",
            ),
            _ => {}
        }
        match (self.data_type, self.bit) {
            (DataType::Bit, None) => {
                problems.push(format!("{path}.bit"), "type \"bit\" needs bit = 0..15")
            }
            (DataType::Bit, Some(b)) if b > 15 => problems.push(
                format!("{path}.bit"),
                format!("{b} is not a bit of a 16-bit register (0..15)"),
            ),
            (t, Some(_)) if t != DataType::Bit => problems.push(
                format!("{path}.bit"),
                "only points of type \"bit\" take a bit number",
            ),
            _ => {}
        }
        if u32::from(self.address) + u32::from(self.data_type.width()) > 65_536 {
            problems.push(
                format!("{path}.address"),
                "the value runs past register 65535",
            );
        }
        if !self.scale.is_finite() || self.scale == 0.0 {
            problems.push(format!("{path}.scale"), "must be a finite, non-zero number");
        }
        if !self.offset.is_finite() {
            problems.push(format!("{path}.offset"), "must be a finite number");
        }
    }
}
