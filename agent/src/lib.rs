//! RoomGuard edge agent: polls the devices of one site's rooms and publishes
//! their readings to MQTT, one batch per device poll.
//!
//! `config` is the typed configuration resolved against `profiles`, `drivers`
//! the device protocols (pure planners, codecs and value maps inside, I/O at
//! the edges), `seq` the restart-proof batch numbering, `metrics` the agent's
//! own counters, `spool` the on-disk store-and-forward log, `link` the
//! delivery from spool to broker and back, and `run` wires them together.

pub mod config;
pub mod derive;
pub mod drivers;
pub mod link;
pub mod metrics;
pub mod profiles;
pub mod run;
pub mod seq;
pub mod spool;
