//! Safety alarms: rule packs (`rules`), the pure rule engine (`engine`), the
//! pure lifecycle decisions (`lifecycle`: silences, who is told what, repeats
//! and escalation), the alarm record with its outbox (`record`), and
//! delivery to people (`notify`).
//!
//! The engine runs inside the store writer: the readings of a transaction,
//! the alarm transitions they cause, the engine's changed state and the
//! notifications to send are committed together, so a crash can neither
//! lose a transition nor raise one twice.

pub mod engine;
pub mod lifecycle;
pub mod notify;
pub mod record;
pub mod rules;
