//! RoomGuard edge agent: polls the devices of one site's rooms and publishes
//! their readings to MQTT, one batch per device poll.
//!
//! `config` is the typed configuration resolved against `profiles`, `drivers`
//! the device protocols (pure planners, codecs and value maps inside, I/O at
//! the edges), `seq` the restart-proof batch numbering, `metrics` the agent's
//! own counters, and `run` wires them to the broker.

pub mod config;
pub mod drivers;
pub mod metrics;
pub mod profiles;
pub mod run;
pub mod seq;
