//! Device drivers: each polls one device and returns its readings. Drivers are
//! a closed set, so a plain enum dispatches to them.

pub mod modbus;

use roomguard_protocol::Reading;

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
