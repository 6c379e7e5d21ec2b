//! The agent's retained status message and its last will.
//!
//! The broker keeps the newest status per agent, so a collector (or a person
//! with `mosquitto_sub`) learns every agent's state the moment it subscribes.
//! The last will, set at connect, replaces it with `offline` when the agent
//! vanishes without saying goodbye.

use crate::PROTOCOL_VERSION;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentState {
    Online,
    Offline,
}

/// Health of one device as the agent sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceHealth {
    pub device: String,
    /// Last poll that returned at least one good reading, ms since epoch.
    pub last_success: Option<i64>,
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
    /// Duration of the last poll in milliseconds.
    pub last_latency_ms: Option<u64>,
    /// Polls that started a whole interval late: the bus cannot keep up with
    /// the configured rates (slow device, long pauses, too many points).
    #[serde(default)]
    pub cycle_overruns: u64,
    /// Reads the device refused whole (Modbus exception 02/03) and that are
    /// made one point at a time since: the read plan the agent learned.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub reads_split: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub v: u32,
    pub site: String,
    pub agent: String,
    pub state: AgentState,
    /// When this status was written, ms since epoch; absent in the last will,
    /// whose time is only known to the broker.
    #[serde(default)]
    pub at: Option<i64>,
    /// Agent software version.
    #[serde(default)]
    pub software: Option<String>,
    #[serde(default)]
    pub devices: Vec<DeviceHealth>,
    /// The agent's store-and-forward spool: what waits to be confirmed and
    /// what was lost (dropped when full or too old, or found corrupt on disk).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spool: Option<SpoolStatus>,
}

/// Counters since the agent started, except `pending_*` (now).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpoolStatus {
    /// Batches written and not yet confirmed stored by the collector.
    pub pending_batches: u64,
    pub pending_bytes: u64,
    /// When the oldest pending batch was polled, ms since epoch.
    #[serde(default)]
    pub oldest_ms: Option<i64>,
    /// Batches (and the readings in them) dropped by the size or age bound
    /// before they were ever sent: lost.
    pub dropped_batches: u64,
    pub dropped_readings: u64,
    /// Batches dropped by a bound after they were sent but before the
    /// collector confirmed them: probably stored, not guaranteed.
    #[serde(default)]
    pub dropped_unconfirmed: u64,
    /// Records found damaged on disk at start (torn or corrupted) and discarded.
    pub discarded_records: u64,
    pub discarded_bytes: u64,
    /// Batches the collector refused for good (invalid), dropped from the spool.
    #[serde(default)]
    pub refused_batches: u64,
    /// Why the spool cannot be written, while it cannot (new batches are
    /// lost meanwhile); absent while it works.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_error: Option<String>,
}

impl Status {
    /// The last-will payload registered at connect.
    pub fn offline(site: &str, agent: &str) -> Status {
        Status {
            v: PROTOCOL_VERSION,
            site: site.into(),
            agent: agent.into(),
            state: AgentState::Offline,
            at: None,
            software: None,
            devices: Vec::new(),
            spool: None,
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes a status; identity checks are the caller's (it knows the topic).
    pub fn from_json(payload: &[u8]) -> Result<Status, serde_json::Error> {
        serde_json::from_slice(payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_will_reads_offline() {
        let s = Status::from_json(&Status::offline("s", "a").to_json()).unwrap();
        assert_eq!(s.state, AgentState::Offline);
        assert!(s.devices.is_empty());
    }
}
