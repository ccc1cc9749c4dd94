//! The open connections of a route, and the one task that keeps them alive: pings, idle
//! timeouts and the shutdown close, for all of them.
//!
//! A timer per connection would cost every idle connection a timer entry and a future
//! (hundreds of bytes); here a connection is one pointer in a shard. The sweeper visits one of
//! [`SHARDS`] shards every `ping_interval / SHARDS`, so each connection is visited once per
//! ping interval and the pings of many connections are spread over the interval instead of
//! leaving in one burst. Per connection it queues a ping and checks whether anything arrived
//! since the last visit: after `ceil(idle_timeout / ping_interval)` visits with nothing, the
//! connection is asked to close with 4504 (so between `idle_timeout` and `idle_timeout +
//! ping_interval` of silence, as with a per-connection ticker). A connection with bytes still
//! to write gets no ping on that visit: it is busy, and a ping must not push its queue past
//! its bound while a large frame is on its way out.
//!
//! Handler timers ([`crate::Connection::set_timer`]) work the same way: a deadline more than two
//! ping intervals away is only a number in the connection's shared state, and the visit that
//! finds it nearer wakes the task to arm a timer entry for it. A token that expires in an hour
//! costs its connection nothing until the last minute or so.

use std::{
    sync::{
        Arc, Mutex, MutexGuard, Weak,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use switchboard_protocol::{Disconnect, PreparedMessage, codec::DecoderConfig};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::conn::ConnShared;

/// Shards of the registry: the sweeper visits one per tick.
pub(crate) const SHARDS: usize = 16;

/// The connections of one route on one server, and what they share.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    /// The route's decoder settings (kept here rather than in every connection).
    pub(crate) decoder: DecoderConfig,
    /// The route's ping interval: the sweeper visits every connection once per interval.
    ping_interval: Duration,
    /// Silence after which the sweeper closes a connection with 4504.
    idle_timeout: Duration,
    shards: [Mutex<Vec<Arc<ConnShared>>>; SHARDS],
    next: AtomicUsize,
    /// Set before the shutdown sweep: connections registered later close themselves.
    closing: AtomicBool,
}

impl Registry {
    /// An empty registry for connections that decode with `decoder`, swept every
    /// `ping_interval` and closed after `idle_timeout` of silence.
    pub(crate) fn new(
        decoder: DecoderConfig,
        ping_interval: Duration,
        idle_timeout: Duration,
    ) -> Self {
        Registry {
            decoder,
            ping_interval,
            idle_timeout,
            ..Registry::default()
        }
    }

    /// How far ahead a connection's timer is armed: two ping intervals, so that the sweeper,
    /// which visits every connection once per interval, sees each deadline before it is due.
    pub(crate) fn timer_horizon(&self) -> Duration {
        self.ping_interval.saturating_mul(2)
    }

    fn shard(&self, i: usize) -> MutexGuard<'_, Vec<Arc<ConnShared>>> {
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a connection; returns whether the server is shutting down (then the connection
    /// must close itself with 1001: the shutdown sweep may have passed its shard already).
    pub(crate) fn insert(&self, conn: &Arc<ConnShared>) -> bool {
        let s = self.next.fetch_add(1, Ordering::Relaxed) % SHARDS;
        let mut shard = self.shard(s);
        conn.set_slot(s, shard.len());
        shard.push(conn.clone());
        drop(shard);
        self.closing.load(Ordering::Acquire)
    }

    /// Removes a connection added with [`Registry::insert`].
    pub(crate) fn remove(&self, conn: &ConnShared) {
        let (s, _) = conn.slot();
        let mut shard = self.shard(s);
        // Read the index under the lock: removals of others move connections around.
        let (_, i) = conn.slot();
        if shard.get(i).is_some_and(|c| std::ptr::eq(&**c, conn)) {
            shard.swap_remove(i);
            if let Some(moved) = shard.get(i) {
                moved.set_slot(s, i);
            }
            if shard.capacity() > 64 && shard.len() < shard.capacity() / 4 {
                let keep = shard.len() * 2;
                shard.shrink_to(keep);
            }
        }
    }

    /// Pings every connection of shard `s` and asks those silent for `max_missed` visits in a
    /// row to close with 4504.
    fn sweep(&self, s: usize, max_missed: u16) {
        let horizon = Instant::now() + self.timer_horizon();
        // One ping for the WebSocket connections of this visit, stamped with its send time so
        // that the pongs measure the round trip (`switchboard_ping_rtt_seconds`).
        let ping = crate::metrics::timed_ping();
        let shard = self.shard(s);
        for conn in shard.iter() {
            conn.outbound.trim();
            conn.arm_deadline_before(horizon);
            if conn.visit() >= max_missed {
                conn.request_close_code(Disconnect::IDLE_TIMEOUT.code.0);
            } else {
                let keepalive = match conn.wire {
                    switchboard_protocol::WireForm::WebSocket(_) => ping.clone(),
                    _ => conn.keepalive(),
                };
                conn.outbound.push_ping(keepalive);
            }
        }
    }

    /// Queues `message` to every connection of the route but `exclude`.
    pub(crate) fn broadcast(&self, message: &PreparedMessage, exclude: Option<&ConnShared>) {
        for s in 0..SHARDS {
            // A snapshot of the shard: pushing takes each connection's own lock.
            let conns: Vec<Arc<ConnShared>> = self.shard(s).clone();
            for conn in conns {
                if !exclude.is_some_and(|e| std::ptr::eq(e, &*conn)) {
                    let _ = conn.send_prepared(message);
                }
            }
        }
    }

    /// Asks every connection to close with 1001, now and whenever one registers later.
    fn close_all(&self) {
        self.closing.store(true, Ordering::Release);
        for s in 0..SHARDS {
            for conn in self.shard(s).iter() {
                conn.request_close_code(Disconnect::GOING_AWAY.code.0);
            }
        }
    }
}

/// Runs the sweeps of `registry` until `shutdown`, then asks every connection to close with
/// 1001 and returns. Ends by itself, too, when the registry is gone (server dropped).
pub(crate) async fn run_sweeper(registry: Weak<Registry>, shutdown: CancellationToken) {
    let Some((ping_interval, idle_timeout)) = registry
        .upgrade()
        .map(|r| (r.ping_interval, r.idle_timeout))
    else {
        return;
    };
    let tick = (ping_interval / SHARDS as u32).max(Duration::from_millis(1));
    // At most 65,535 ping intervals (a counter of two bytes per connection).
    let max_missed = idle_timeout
        .as_nanos()
        .div_ceil(ping_interval.as_nanos().max(1))
        .clamp(1, u16::MAX as u128) as u16;
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + tick, tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shard = 0;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                if let Some(registry) = registry.upgrade() {
                    registry.close_all();
                }
                return;
            }
            _ = ticker.tick() => {}
        }
        let Some(registry) = registry.upgrade() else {
            return;
        };
        registry.sweep(shard, max_missed);
        shard = (shard + 1) % SHARDS;
    }
}
