//! RoomGuard edge agent: polls the devices of one site's rooms and publishes
//! their readings to MQTT, one batch per device poll.
//!
//! `config` is the typed configuration, `drivers` the device protocols (pure
//! planners and codecs inside, I/O at the edges), `seq` the restart-proof batch
//! numbering, and `run` wires them to the broker.

pub mod config;
pub mod drivers;
pub mod run;
pub mod seq;
