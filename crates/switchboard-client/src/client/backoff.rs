//! Reconnect backoff: exponential with full jitter.

use std::time::Duration;

use rand::Rng;

/// When and how the client reconnects after losing its connection.
///
/// The delay before reconnect attempt `n` (counting failures since the last stable
/// connection from 0) is drawn uniformly from `[0, min(max, initial * 2^n)]` ("full
/// jitter"), so that clients dropped together by a restarting server do not come back
/// together.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReconnectPolicy {
    /// Whether to reconnect at all (default `true`).
    pub enabled: bool,
    /// The ceiling of the first delay (default 250 ms).
    pub initial: Duration,
    /// The largest ceiling (default 10 s).
    pub max: Duration,
    /// Give up after this many failed attempts in a row (default: never).
    pub max_attempts: Option<u32>,
    /// A connection that stayed up this long resets the attempt count, so the next loss
    /// reconnects quickly again (default 10 s). A server that accepts and drops at once
    /// keeps the delays growing.
    pub reset_after: Duration,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        ReconnectPolicy {
            enabled: true,
            initial: Duration::from_millis(250),
            max: Duration::from_secs(10),
            max_attempts: None,
            reset_after: Duration::from_secs(10),
        }
    }
}

impl ReconnectPolicy {
    /// A policy that never reconnects.
    pub fn disabled() -> Self {
        ReconnectPolicy {
            enabled: false,
            ..ReconnectPolicy::default()
        }
    }

    /// The default policy with other delays.
    pub fn with_delays(initial: Duration, max: Duration) -> Self {
        ReconnectPolicy {
            initial,
            max,
            ..ReconnectPolicy::default()
        }
    }

    /// The ceiling of the delay before attempt `n` (from 0): `min(max, initial * 2^n)`.
    pub fn ceiling(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n.min(31)).unwrap_or(u32::MAX);
        self.initial
            .checked_mul(factor)
            .unwrap_or(Duration::MAX)
            .min(self.max)
    }

    /// The delay before attempt `n` (from 0): uniform in `[0, ceiling(n)]`.
    pub fn delay(&self, n: u32) -> Duration {
        let ceiling = u64::try_from(self.ceiling(n).as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rand::rng().random_range(0..=ceiling))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_double_up_to_the_max() {
        let p = ReconnectPolicy::default();
        let ms = |n| p.ceiling(n).as_millis();
        assert_eq!(
            (0..8).map(ms).collect::<Vec<_>>(),
            [250, 500, 1000, 2000, 4000, 8000, 10_000, 10_000]
        );
        assert_eq!(p.ceiling(u32::MAX), Duration::from_secs(10));
        let huge = ReconnectPolicy::with_delays(Duration::from_secs(1 << 40), Duration::MAX);
        assert_eq!(huge.ceiling(40), Duration::MAX);
    }

    #[test]
    fn delays_are_full_jitter_within_bounds() {
        let p = ReconnectPolicy::default();
        for n in 0..12 {
            let ceiling = p.ceiling(n);
            let delays: Vec<Duration> = (0..2000).map(|_| p.delay(n)).collect();
            assert!(delays.iter().all(|d| *d <= ceiling), "attempt {n}");
            // Full jitter: spread over the whole range, not clustered near the ceiling.
            let low = delays.iter().filter(|d| **d < ceiling / 4).count();
            let high = delays.iter().filter(|d| **d > ceiling * 3 / 4).count();
            assert!(
                low > 300 && high > 300,
                "attempt {n}: {low} low, {high} high"
            );
        }
        let zero = ReconnectPolicy::with_delays(Duration::ZERO, Duration::ZERO);
        assert_eq!(zero.delay(3), Duration::ZERO);
    }
}
