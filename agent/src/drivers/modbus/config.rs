//! Configuration of Modbus buses, devices and points, as written in the
//! agent's TOML file and in device profiles, with the checks that catch a
//! wrong register map before the agent ever polls.

use roomguard_protocol::conf::{self, Problems};
use roomguard_protocol::validate_id;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

/// How a bus reaches its devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// Modbus TCP (MBAP framing) to a device or gateway.
    Tcp,
    /// Modbus RTU on a local serial port (RS-485/RS-232).
    Rtu,
    /// Modbus RTU frames carried over a TCP socket (transparent serial device servers).
    RtuOverTcp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    #[default]
    None,
    Even,
    Odd,
}

/// A line shared by devices: requests on one bus are strictly sequential.
/// TCP devices given by `address` alone get a bus of their own per address.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BusConfig {
    pub id: String,
    pub transport: Transport,
    /// `host:port`, for `tcp` and `rtu_over_tcp`.
    #[serde(default)]
    pub address: Option<String>,
    /// Serial device, for `rtu`: `/dev/ttyUSB0`, `/dev/ttyS1`.
    #[serde(default)]
    pub serial_port: Option<String>,
    #[serde(default = "default_baud")]
    pub baud_rate: u32,
    #[serde(default)]
    pub parity: Parity,
    #[serde(default = "default_data_bits")]
    pub data_bits: u8,
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
    /// Default per-request timeout for the bus's devices.
    #[serde(default = "default_timeout", with = "conf::duration")]
    pub timeout: Duration,
    /// Pause between two requests on the bus (slow devices and RS-485
    /// converters need it). On RTU lines the 3.5-character silent interval
    /// is always kept as well.
    #[serde(default, with = "conf::duration")]
    pub request_pause: Duration,
    /// Pause after (re)connecting before the first request.
    #[serde(default, with = "conf::duration")]
    pub connect_pause: Duration,
}

fn default_baud() -> u32 {
    9600
}
fn default_data_bits() -> u8 {
    8
}
fn default_stop_bits() -> u8 {
    1
}
fn default_timeout() -> Duration {
    Duration::from_secs(1)
}

impl BusConfig {
    /// The implicit bus of a TCP device given only by its address.
    pub fn tcp(address: &str) -> BusConfig {
        BusConfig {
            id: format!("tcp:{address}"),
            transport: Transport::Tcp,
            address: Some(address.to_owned()),
            serial_port: None,
            baud_rate: default_baud(),
            parity: Parity::None,
            data_bits: default_data_bits(),
            stop_bits: default_stop_bits(),
            timeout: default_timeout(),
            request_pause: Duration::ZERO,
            connect_pause: Duration::ZERO,
        }
    }

    /// The Modbus RTU silent interval between frames: 3.5 characters of 11
    /// bits, or a fixed 1.75 ms above 19200 baud (Modbus over serial line v1.02, 2.5.1.1).
    pub fn frame_gap(&self) -> Duration {
        match self.transport {
            Transport::Tcp => Duration::ZERO,
            _ if self.baud_rate > 19_200 => Duration::from_micros(1750),
            _ => Duration::from_secs_f64(3.5 * 11.0 / f64::from(self.baud_rate.max(1))),
        }
    }

    pub fn check(&self, path: &str, p: &mut Problems) {
        if validate_id(&self.id).is_err() {
            p.push(
                format!("{path}.id"),
                format!("{:?} is not a valid id", self.id),
            );
        }
        match self.transport {
            Transport::Tcp | Transport::RtuOverTcp => match &self.address {
                None => p.push(
                    format!("{path}.address"),
                    "a TCP bus needs address = \"host:port\"",
                ),
                Some(a) if !is_host_port(a) => {
                    p.push(format!("{path}.address"), format!("{a:?} is not host:port"))
                }
                _ => {}
            },
            Transport::Rtu => {
                if self.serial_port.as_deref().is_none_or(str::is_empty) {
                    p.push(
                        format!("{path}.serial_port"),
                        "an RTU bus needs serial_port = \"/dev/ttyUSB0\"",
                    );
                }
                if !(300..=921_600).contains(&self.baud_rate) {
                    p.push(format!("{path}.baud_rate"), "must be 300–921600");
                }
                if !(5..=8).contains(&self.data_bits) {
                    p.push(format!("{path}.data_bits"), "must be 5–8");
                }
                if !(1..=2).contains(&self.stop_bits) {
                    p.push(format!("{path}.stop_bits"), "must be 1 or 2");
                }
            }
        }
        if self.timeout.is_zero() {
            p.push(format!("{path}.timeout"), "must be more than zero");
        }
    }
}

pub fn is_host_port(a: &str) -> bool {
    a.parse::<std::net::SocketAddr>().is_ok()
        || a.rsplit_once(':')
            .is_some_and(|(h, port)| !h.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0))
}

/// A Modbus device as configured: where it is, and its points — from a
/// profile, from `points`, or both — with per-device overrides.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusDevice {
    /// Device id, unique within the site; point ids are `{device}.{point}`.
    pub id: String,
    /// Room the device is in; points may override it.
    pub room: String,
    /// A device profile (built in, or in `profiles_dir`) providing the points.
    #[serde(default)]
    pub profile: Option<String>,
    /// Bus the device is on (`[[modbus_buses]]` id), or …
    #[serde(default)]
    pub bus: Option<String>,
    /// … `host:port` of a Modbus TCP device or gateway (a bus of its own).
    #[serde(default)]
    pub address: Option<String>,
    /// Unit (slave) id, 1–247 on serial lines; 0–255 over TCP.
    #[serde(default = "default_unit")]
    pub unit: u8,
    /// Poll interval for points without one of their own.
    #[serde(default = "default_interval", with = "conf::duration")]
    pub interval: Duration,
    /// Per-request timeout; defaults to the bus's.
    #[serde(default, with = "conf::option_duration")]
    pub timeout: Option<Duration>,
    /// Largest run of unused registers one read may span to save a request.
    #[serde(default = "default_max_gap")]
    pub max_gap: u16,
    /// For devices that answer an exception when a read spans a register they
    /// do not define: reads cover only runs of configured registers.
    #[serde(default)]
    pub contiguous_only: bool,
    /// Most registers one read may ask for (1–125); default: the profile's,
    /// else the protocol's 125. A read the device refuses anyway (exception
    /// 02 or 03) is split into one read per point, and that plan is kept.
    #[serde(default)]
    pub max_read: Option<u16>,
    /// Word order for every multi-register point of this device, overriding
    /// the profile (the same meter model ships ABCD and CDAB).
    #[serde(default)]
    pub order: Option<WordOrder>,
    /// Changes to profile points, by point id.
    #[serde(default)]
    pub overrides: BTreeMap<String, PointOverride>,
    /// Points in addition to (or instead of) a profile's.
    #[serde(default)]
    pub points: Vec<ModbusPoint>,
}

fn default_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_unit() -> u8 {
    1
}
fn default_max_gap() -> u16 {
    8
}

/// Per-device changes to one profile point.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PointOverride {
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
    #[serde(default)]
    pub room: Option<String>,
    #[serde(default, with = "conf::option_duration")]
    pub interval: Option<Duration>,
    /// Replaces the point's "not available" raw values.
    #[serde(default)]
    pub not_available: Option<Vec<f64>>,
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
    /// ASCII text of `length` registers (two characters each), NULs and
    /// trailing spaces trimmed; reported as the reading's `text`.
    String,
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
    /// Point id within the device: `temperature` becomes `{device}.temperature`.
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
    /// For `type = "string"`: length in registers.
    #[serde(default)]
    pub length: Option<u16>,
    #[serde(default)]
    pub order: WordOrder,
    /// value = raw × scale + offset.
    #[serde(default = "one")]
    pub scale: f64,
    #[serde(default)]
    pub offset: f64,
    /// Raw values (as decoded, before scale and offset) the device answers
    /// for a value it does not have: -1, 32767 (0x7FFF), 65535 (0xFFFF),
    /// -9999. Such a reading is bad, "not available", never a value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_available: Vec<f64>,
    /// Poll this point at its own rate (a poll group): smoke every second,
    /// energy counters every minute.
    #[serde(default, with = "conf::option_duration")]
    pub interval: Option<Duration>,
}

fn one() -> f64 {
    1.0
}

impl ModbusPoint {
    /// Registers (or bits) the value occupies.
    pub fn width(&self) -> u16 {
        match self.data_type {
            DataType::Bool | DataType::Bit | DataType::Int16 | DataType::Uint16 => 1,
            DataType::Int32 | DataType::Uint32 | DataType::Float32 => 2,
            DataType::Int64 | DataType::Uint64 | DataType::Float64 => 4,
            DataType::String => self.length.unwrap_or(1).max(1),
        }
    }

    /// Checks the point at `path`; `ids` collects ids to find duplicates.
    pub fn check(&self, path: &str, p: &mut Problems, ids: &mut HashSet<String>) {
        if let Err(e) = validate_id(&self.id) {
            p.push(format!("{path}.id"), format!("{:?} {e}", self.id));
        } else if !ids.insert(self.id.clone()) {
            p.push(
                format!("{path}.id"),
                format!("{:?} is used by another point of this device", self.id),
            );
        }
        if let Err(e) = validate_id(&self.quantity) {
            p.push(
                format!("{path}.quantity"),
                format!("{:?} {e}", self.quantity),
            );
        }
        if let Some(room) = &self.room {
            if let Err(e) = validate_id(room) {
                p.push(format!("{path}.room"), format!("{room:?} {e}"));
            }
        }
        let is_bool = self.data_type == DataType::Bool;
        if self.table.is_bits() && !is_bool {
            p.push(
                format!("{path}.type"),
                format!(
                    "{:?} cannot be read from {:?}; coils and discrete inputs hold only type \"bool\"",
                    self.data_type, self.table
                ),
            );
        } else if !self.table.is_bits() && is_bool {
            p.push(
                format!("{path}.type"),
                "\"bool\" is for coils and discrete inputs; use \"bit\" with `bit = N` for a bit of a register",
            );
        }
        match (self.data_type, self.bit) {
            (DataType::Bit, None) => {
                p.push(format!("{path}.bit"), "type \"bit\" needs bit = 0..15")
            }
            (DataType::Bit, Some(b)) if b > 15 => p.push(
                format!("{path}.bit"),
                format!("{b} is not a bit of a 16-bit register (0..15)"),
            ),
            (t, Some(_)) if t != DataType::Bit => p.push(
                format!("{path}.bit"),
                "only points of type \"bit\" take a bit number",
            ),
            _ => {}
        }
        match (self.data_type, self.length) {
            (DataType::String, None) => p.push(
                format!("{path}.length"),
                "type \"string\" needs length = registers (1–125)",
            ),
            (DataType::String, Some(n)) if n == 0 || n > 125 => {
                p.push(format!("{path}.length"), "must be 1–125 registers")
            }
            (t, Some(_)) if t != DataType::String => p.push(
                format!("{path}.length"),
                "only points of type \"string\" take a length",
            ),
            _ => {}
        }
        if u32::from(self.address) + u32::from(self.width()) > 65_536 {
            p.push(
                format!("{path}.address"),
                "the value runs past address 65535",
            );
        }
        if !self.scale.is_finite() || self.scale == 0.0 {
            p.push(format!("{path}.scale"), "must be a finite, non-zero number");
        }
        if self.not_available.iter().any(|v| !v.is_finite()) {
            p.push(
                format!("{path}.not_available"),
                "lists raw values, finite numbers such as -1 or 32767",
            );
        }
        if !self.offset.is_finite() {
            p.push(format!("{path}.offset"), "must be a finite number");
        }
        if self
            .interval
            .is_some_and(|i| i < Duration::from_millis(100))
        {
            p.push(format!("{path}.interval"), "must be at least 100ms");
        }
    }

    /// Applies a device's override.
    pub fn apply(&mut self, o: &PointOverride) {
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
        if let Some(v) = &o.room {
            self.room = Some(v.clone());
        }
        if let Some(v) = o.interval {
            self.interval = Some(v);
        }
        if let Some(v) = &o.not_available {
            self.not_available = v.clone();
        }
    }
}
