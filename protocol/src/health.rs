//! Health both programs report: how long something has been failing, and why.
//!
//! One failure is not ill health (a write retried a moment later is fine);
//! a failure that lasts is. Each part that can fail (the collector's store
//! writes, its checkpoints, the agent's spool) keeps a [`Failing`]: a failure
//! starts the clock, the next success stops it, and `/healthz` turns
//! degraded once it has run past [`GRACE`].

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a failure may last before health says so.
pub const GRACE: Duration = Duration::from_secs(5);

/// Since when a part has been failing, and the latest reason.
#[derive(Debug, Default)]
pub struct Failing(Mutex<Option<(Instant, String)>>);

impl Failing {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(Instant, String)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// It failed: the clock starts (or goes on) and the reason is kept.
    pub fn failed(&self, why: impl std::fmt::Display) {
        let mut f = self.lock();
        let since = f.as_ref().map_or_else(Instant::now, |(t, _)| *t);
        *f = Some((since, why.to_string()));
    }

    /// It worked: the clock stops.
    pub fn succeeded(&self) {
        *self.lock() = None;
    }

    /// How long it has been failing, and why; `None` while it works.
    pub fn failing(&self) -> Option<(Duration, String)> {
        self.lock()
            .as_ref()
            .map(|(since, why)| (since.elapsed(), why.clone()))
    }

    /// Seconds it has been failing (0 while it works), for a gauge.
    pub fn seconds(&self) -> u64 {
        self.failing().map_or(0, |(d, _)| d.as_secs())
    }

    /// The reason, once it has failed for longer than [`GRACE`].
    pub fn unhealthy(&self) -> Option<String> {
        self.failing()
            .filter(|(d, _)| *d >= GRACE)
            .map(|(d, why)| format!("{why} (for {} s)", d.as_secs()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_is_ill_health_only_once_it_lasts_and_a_success_ends_it() {
        let f = Failing::default();
        assert!(f.failing().is_none());
        f.failed("disk full");
        let (d, why) = f.failing().unwrap();
        assert!(d < GRACE);
        assert_eq!(why, "disk full");
        assert!(f.unhealthy().is_none(), "not yet past the grace");
        // Backdate the start, as if it had been failing for a while.
        *f.lock() = Some((
            Instant::now() - GRACE - Duration::from_secs(1),
            "disk full".into(),
        ));
        f.failed("disk still full");
        let why = f.unhealthy().unwrap();
        assert!(why.starts_with("disk still full (for "), "{why}");
        assert!(f.seconds() >= GRACE.as_secs(), "the clock kept its start");
        f.succeeded();
        assert!(f.unhealthy().is_none());
        assert_eq!(f.seconds(), 0);
    }
}
