//! Abuse limits that are pure bookkeeping (docs/protocol.md 7.4, docs/security.md "Limits"):
//! the per-connection command rate limit, and the check that a publication's `data` is JSON
//! every client of ours parses.
//!
//! It owns no connection and no task: the protocol surface (`v1`, `http::api`) asks it and
//! answers with the documented error. It must not know about transports or the broker.

use tokio::time::Instant;

use crate::config::LimitsConfig;

/// A connection's command bucket: six bytes, no timer, nothing allocated. A generic cell rate
/// algorithm (GCRA): one "theoretical arrival time" stands for the whole token bucket.
///
/// Packed so that it fits in the padding of the v1 session next to a `bool` (the session must
/// stay 16 bytes, see `v1::Session`).
#[derive(Debug, Default, Clone, Copy)]
#[repr(C, packed)]
pub struct CommandBucket {
    /// When the bucket is full again, in milliseconds of [`now_ms`] (wrapping); 0 or any
    /// value in the past: full.
    tat: u32,
    /// When the current excess began, in tenths of a second of [`now_ms`] (wrapping, never 0);
    /// 0: no excess.
    excess_since: u16,
}

/// What the limiter says about one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Serve it.
    Allowed,
    /// Answer `rate_limited`; the next command is accepted after this many milliseconds.
    Limited {
        /// `retry_after_ms` of the error.
        retry_after_ms: u32,
    },
    /// The excess lasted `limits.rate_limit_close_after`: close with 4502.
    Close,
}

/// The command rate limit of a configuration (`limits.commands_per_second`,
/// `limits.commands_burst`, `limits.rate_limit_close_after`).
#[derive(Debug, Clone, Copy)]
pub struct CommandRate {
    /// Milliseconds one command costs (1000 / rate).
    interval: u32,
    /// How far ahead of now the bucket may run: `(burst - 1) × interval`.
    tau: u32,
    /// Tenths of a second of excess before closing; 0: never close.
    close_after: u16,
}

/// Milliseconds since the first call in this process, wrapping after 49 days: the bucket only
/// ever compares times less than a few seconds apart (see [`CommandRate::check`]).
pub fn now_ms() -> u32 {
    static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let base = *BASE.get_or_init(Instant::now);
    Instant::now().saturating_duration_since(base).as_millis() as u32
}

impl CommandRate {
    /// The limit configured, or `None` when `commands_per_second` is 0 (off).
    pub fn from_config(limits: &LimitsConfig) -> Option<CommandRate> {
        let rate = limits.commands_per_second;
        if rate == 0 {
            return None;
        }
        let interval = (1000 / rate).max(1);
        let tau = limits.commands_burst.max(1).saturating_sub(1) * interval;
        let close_after = (limits.rate_limit_close_after.as_millis() / 100).min(u16::MAX as u128);
        Some(CommandRate {
            interval,
            tau,
            close_after: close_after as u16,
        })
    }

    /// Takes one command from `bucket` at `now` (from [`now_ms`]).
    pub fn check(&self, bucket: &mut CommandBucket, now: u32) -> Verdict {
        let tat = bucket.tat;
        // How far the bucket runs ahead of now. It is never more than `tau + interval`: a
        // larger (or negative) difference is a time long past that wrapped around, so the
        // bucket is full.
        let ahead = tat.wrapping_sub(now);
        let ahead = if tat == 0
            || ahead as i32 <= 0
            || ahead > self.tau.saturating_add(self.interval)
        {
            0
        } else {
            ahead
        };
        if ahead <= self.tau {
            bucket.tat = now.wrapping_add(ahead).wrapping_add(self.interval);
            // The excess ends once the bucket has refilled to half its burst: a client that
            // merely exceeds now and then is never closed.
            if bucket.excess_since != 0 && ahead <= self.tau / 2 {
                bucket.excess_since = 0;
            }
            return Verdict::Allowed;
        }
        let tenths = ((now / 100) as u16).max(1);
        let since = bucket.excess_since;
        if since == 0 {
            bucket.excess_since = tenths;
        } else if self.close_after != 0 && tenths.wrapping_sub(since) >= self.close_after {
            return Verdict::Close;
        }
        Verdict::Limited {
            retry_after_ms: ahead - self.tau,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn rate(per_second: u32, burst: u32, close_after: Duration) -> CommandRate {
        CommandRate::from_config(&LimitsConfig {
            commands_per_second: per_second,
            commands_burst: burst,
            rate_limit_close_after: close_after,
            ..LimitsConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn burst_then_rate() {
        let r = rate(50, 100, Duration::from_secs(10));
        let mut b = CommandBucket::default();
        let t0 = 1_000_000;
        for i in 0..100 {
            assert_eq!(r.check(&mut b, t0), Verdict::Allowed, "command {i}");
        }
        assert_eq!(
            r.check(&mut b, t0),
            Verdict::Limited { retry_after_ms: 20 }
        );
        // One more every 20 ms.
        assert_eq!(r.check(&mut b, t0 + 20), Verdict::Allowed);
        assert!(matches!(r.check(&mut b, t0 + 20), Verdict::Limited { .. }));
        // Idle for two seconds: the whole burst again.
        for _ in 0..100 {
            assert_eq!(r.check(&mut b, t0 + 2_100), Verdict::Allowed);
        }
    }

    #[test]
    fn sustained_excess_closes_and_occasional_does_not() {
        let r = rate(50, 100, Duration::from_secs(10));
        let mut b = CommandBucket::default();
        let mut now = 5_000;
        // 100 commands per second, twice the rate: closed after 10 s of it.
        let mut closed_at = None;
        for _ in 0..3_000 {
            if r.check(&mut b, now) == Verdict::Close {
                closed_at = Some(now);
                break;
            }
            now += 10;
        }
        let closed_at = closed_at.expect("closed");
        assert!(
            (10_000..=12_500).contains(&(closed_at - 5_000)),
            "{closed_at}"
        );
        // A burst every few seconds is refused in part but never closed.
        let mut b = CommandBucket::default();
        for second in 0..30u32 {
            for _ in 0..150 {
                assert_ne!(r.check(&mut b, 100_000 + second * 3_000), Verdict::Close);
            }
        }
    }

    #[test]
    fn wraps_around() {
        let r = rate(50, 2, Duration::from_secs(10));
        let mut b = CommandBucket::default();
        let t = u32::MAX - 10;
        assert_eq!(r.check(&mut b, t), Verdict::Allowed);
        assert_eq!(r.check(&mut b, t), Verdict::Allowed);
        assert!(matches!(r.check(&mut b, t), Verdict::Limited { .. }));
        assert_eq!(r.check(&mut b, t.wrapping_add(45)), Verdict::Allowed);
        // Long past: full again.
        assert_eq!(r.check(&mut b, t.wrapping_add(3_000_000)), Verdict::Allowed);
        assert_eq!(r.check(&mut b, t.wrapping_add(3_000_000)), Verdict::Allowed);
    }

    #[test]
    fn bucket_is_small() {
        assert_eq!(std::mem::size_of::<CommandBucket>(), 6);
        assert!(CommandRate::from_config(&LimitsConfig {
            commands_per_second: 0,
            ..LimitsConfig::default()
        })
        .is_none());
    }
}
