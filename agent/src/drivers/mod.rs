//! Device drivers. Modbus devices are polled per bus (`modbus::bus`), SNMP
//! devices each by their own task (`snmp`); both hand their polls to the
//! publisher as [`DevicePoll`]s. Drivers are a closed set, so there is no
//! plugin registry: the runner starts one kind of task per kind of device.

pub mod modbus;
pub mod snmp;

use roomguard_protocol::{PointMeta, Reading};
use std::sync::Arc;
use std::time::Duration;

/// What one poll of a device produced.
#[derive(Debug)]
pub struct PollResult {
    /// One reading per configured point, good or bad.
    pub readings: Vec<Reading>,
    /// The first failure of the poll, if any, for the device's health.
    pub error: Option<String>,
}

impl PollResult {
    /// True when at least one reading is good.
    pub fn any_good(&self) -> bool {
        self.readings.iter().any(|r| r.quality.is_good())
    }
}

/// A poll on its way to the publisher.
#[derive(Debug)]
pub struct DevicePoll {
    pub device: String,
    pub polled_at: i64,
    pub latency: Duration,
    pub result: PollResult,
    /// The poll started later than its schedule by more than its interval:
    /// the bus (or agent) cannot keep up with the configured rates.
    pub overrun: bool,
    /// Requests made and registers (or bits) read, for the agent's metrics.
    pub requests: u32,
    pub registers: u32,
    /// What the device's points are; the publisher sends it along now and then.
    pub meta: Arc<[PointMeta]>,
    /// Reads split so far because the device refused them whole.
    pub reads_split: u32,
}

/// Exponential backoff with jitter for a failing device: it is retried at
/// growing intervals (capped) so a dead device costs its bus little time.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Backoff {
    /// Delay before the next attempt after `failures` consecutive failures,
    /// with `jitter01` in [0, 1) spreading retries of many devices apart.
    pub fn delay(&self, failures: u32, jitter01: f64) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        let exp = self
            .base
            .saturating_mul(1u32 << failures.saturating_sub(1).min(16));
        exp.min(self.cap)
            .mul_f64(1.0 + 0.25 * jitter01.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let b = Backoff {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(30),
        };
        let d: Vec<u64> = (0..8).map(|f| b.delay(f, 0.0).as_secs()).collect();
        assert_eq!(d, vec![0, 1, 2, 4, 8, 16, 30, 30]);
        assert!(b.delay(3, 0.99) > b.delay(3, 0.0));
        assert!(b.delay(40, 0.5) <= Duration::from_secs(38));
    }
}
