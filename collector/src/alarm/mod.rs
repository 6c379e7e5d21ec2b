//! Safety alarms: rule packs (`rules`), the pure rule engine (`engine`), the
//! grouping of alarms into incidents by cause (`incident`), the
//! pure lifecycle decisions (`lifecycle`: silences, who is told what, repeats
//! and escalation), and delivery to people (`notify`). The alarm record (its
//! tables, the transitions written with the readings that caused them, the
//! outbox) is in the store (`store/alarms.rs`).
//!
//! The engine runs inside the store writer: the readings of a transaction,
//! the alarm transitions they cause, the engine's changed state and the
//! notifications to send are committed together, so a crash can neither
//! lose a transition nor raise one twice.

pub mod engine;
pub mod incident;
pub mod lifecycle;
pub mod notify;
pub mod rules;
