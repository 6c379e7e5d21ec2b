//! Time, chance and stopping, for both binaries: the wall clock in
//! milliseconds (the protocol's time unit), random spreads for polls and
//! retries, and the shutdown signal.

use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Wall-clock time in ms since the Unix epoch (0 for a clock before 1970).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A random number, good enough for spreading polls and retries: std's
/// hasher keys are seeded randomly per process and per call (no crate for this).
pub fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish()
}

/// A random duration in `[0, max)`, so many devices, agents or collectors
/// retrying at once spread out.
pub fn jitter(max: Duration) -> Duration {
    let nanos = max.as_nanos().max(1) as u64;
    Duration::from_nanos(random_u64() % nanos)
}

/// Completes on Ctrl-C or, on Unix, SIGTERM (what systemd and `kill` send).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_below_its_bound_and_spreads() {
        let max = Duration::from_millis(1000);
        let draws: Vec<Duration> = (0..200).map(|_| jitter(max)).collect();
        assert!(draws.iter().all(|d| *d < max));
        let distinct: std::collections::HashSet<_> = draws.iter().collect();
        assert!(distinct.len() > 100, "{} distinct of 200", distinct.len());
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
    }
}
