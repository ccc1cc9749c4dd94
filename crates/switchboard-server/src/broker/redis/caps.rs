//! Cluster-wide connection caps: `limits.connections_per_user` and
//! `limits.connections_per_ip` counted across every node on the Redis (docs/scaling.md,
//! "Connection limits").
//!
//! One sorted set per user (`P:{u:<user>}:n`) and per client IP (`P:{ip:<ip>}:n`): a member
//! `<node>:<slot>` per open connection, scored by its expiry. `admit.lua` drops the expired
//! members, counts the rest and adds the new one only below the limit, in one script, so
//! that connections racing on several nodes cannot exceed it. The node's writer task removes
//! the member of a closed connection and, every third of `presence_ttl`, adds every member it
//! holds again with a new expiry: a killed node's members (and a lost removal) are gone within
//! `presence_ttl`, and counts Redis lost (a restart without persistence) are back within a
//! third of it. Keys expire `presence_ttl` after their last refresh.
//!
//! When Redis cannot be reached (or does not answer within `broker.timeout`), a connection
//! is admitted on the node's own counts (fail open) and its member is added by the next
//! refresh once Redis is back.

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::Script;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{Inner, millis, wall_millis};
use crate::limits::{AdmissionRefused, AdmitFuture, ClusterAdmission, ClusterSlot, CountKey};

/// Releases waiting for the writer; beyond, a release is dropped and its member expires.
const RELEASES: usize = 4096;
/// Commands per pipeline of the writer.
const BATCH: usize = 256;

/// The keys one connection is counted in: its IP's and its user's, each when counted.
type Keys = [Option<Box<str>>; 2];

/// One node's share of the cluster-wide connection counts.
pub(super) struct RedisAdmission {
    inner: Arc<Inner>,
    /// This process's name in the members: a node that restarts starts with no members.
    node: String,
    next: AtomicU32,
    /// The slots this node holds and their keys (the IP's, the user's): what the refresh
    /// adds again.
    held: Mutex<HashMap<u32, Keys>>,
    releases: mpsc::Sender<(u32, Box<str>)>,
    script: Script,
    /// Whether the last admission failed open (to log the change once).
    degraded: AtomicBool,
    /// Counts that failed open since the start, for `/metrics`.
    unchecked: AtomicU64,
}

impl fmt::Debug for RedisAdmission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisAdmission")
            .field("node", &self.node)
            .field("held", &self.held().len())
            .finish_non_exhaustive()
    }
}

impl RedisAdmission {
    /// The node's admission and its writer task (to abort with the broker).
    pub(super) fn start(inner: Arc<Inner>) -> (Arc<RedisAdmission>, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(RELEASES);
        let admission = Arc::new(RedisAdmission {
            inner,
            node: crate::ids::random_base62(12),
            next: AtomicU32::new(1),
            held: Mutex::new(HashMap::new()),
            releases: tx,
            script: Script::new(include_str!("admit.lua")),
            degraded: AtomicBool::new(false),
            unchecked: AtomicU64::new(0),
        });
        let task = tokio::spawn(run_writer(admission.clone(), rx));
        (admission, task)
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Keys>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn key(&self, key: CountKey<'_>) -> String {
        let prefix = &self.inner.config.prefix;
        match key {
            CountKey::User(user) => format!("{prefix}:{{u:{user}}}:n"),
            CountKey::Ip(ip) => format!("{prefix}:{{ip:{ip}}}:n"),
        }
    }

    /// A new slot id. Ids wrap after 2^32 connections of this process: one would be taken
    /// twice only by a connection that outlived four billion others.
    fn next_slot(&self) -> NonZeroU32 {
        loop {
            if let Some(id) = NonZeroU32::new(self.next.fetch_add(1, Ordering::Relaxed)) {
                return id;
            }
        }
    }

    fn member(&self, slot: u32) -> String {
        format!("{}:{slot}", self.node)
    }

    fn fail_open(&self, why: &str) {
        self.unchecked.fetch_add(1, Ordering::Relaxed);
        if !self.degraded.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                reason = why,
                "redis unreachable: connections per user and per IP are counted on this node only until it is back"
            );
        }
    }

    /// Removes the members of closed connections.
    async fn remove(&self, released: &[(u32, Box<str>)]) {
        let mut pipe = redis::pipe();
        for (slot, key) in released {
            pipe.cmd("ZREM")
                .arg(&**key)
                .arg(self.member(*slot))
                .ignore();
        }
        if let Err(e) = self.inner.conn().exec_any_slots(&pipe).await {
            // Not retried: the members expire within presence_ttl.
            tracing::debug!(error = %e, "releasing connection counts failed");
        }
    }

    /// Adds every member this node holds again with a new expiry (and its key's ttl).
    async fn refresh(&self) {
        if !self.inner.connected.load(Ordering::Relaxed) {
            return;
        }
        let ttl = millis(self.inner.config.presence_ttl);
        // A copy, so that no lock is held across the round trips; one a third of the ttl.
        let held: Vec<(u32, Box<str>)> = self
            .held()
            .iter()
            .flat_map(|(slot, keys)| keys.iter().flatten().map(|key| (*slot, key.clone())))
            .collect();
        for chunk in held.chunks(BATCH / 2) {
            let expiry = wall_millis() + ttl;
            let mut pipe = redis::pipe();
            for (slot, key) in chunk {
                pipe.cmd("ZADD")
                    .arg(&**key)
                    .arg(expiry)
                    .arg(self.member(*slot))
                    .ignore()
                    .cmd("PEXPIRE")
                    .arg(&**key)
                    .arg(ttl)
                    .ignore();
            }
            if let Err(e) = self.inner.conn().exec_any_slots(&pipe).await {
                tracing::debug!(error = %e, "refreshing connection counts failed");
                return;
            }
        }
    }
}

impl ClusterAdmission for RedisAdmission {
    fn admit<'a>(
        &'a self,
        key: CountKey<'a>,
        limit: u32,
        slot: &'a mut Option<ClusterSlot>,
    ) -> AdmitFuture<'a> {
        Box::pin(async move {
            let refused = match key {
                CountKey::User(_) => AdmissionRefused::ConnectionsPerUser,
                CountKey::Ip(_) => AdmissionRefused::ConnectionsPerIp,
            };
            let redis_key = self.key(key);
            // The connection's second count (its user's after its IP's) joins its first.
            let id = match slot {
                Some(s) => s.0,
                None => self.next_slot(),
            };
            // Down: no round trip that would only time out.
            if self.inner.connected.load(Ordering::Relaxed) {
                let ttl = millis(self.inner.config.presence_ttl);
                let now = wall_millis();
                let mut conn = self.inner.conn();
                let mut invocation = self.script.key(&redis_key);
                invocation
                    .arg(now)
                    .arg(self.member(id.get()))
                    .arg(now + ttl)
                    .arg(limit)
                    .arg(ttl);
                let call = invocation.invoke_async::<i64>(&mut conn);
                match tokio::time::timeout(self.inner.config.timeout, call).await {
                    Ok(Ok(1)) => {
                        if self.degraded.swap(false, Ordering::Relaxed) {
                            tracing::info!(
                                "redis reachable again: connections per user and per IP are counted cluster-wide"
                            );
                        }
                    }
                    Ok(Ok(_)) => return Err(refused),
                    Ok(Err(e)) => self.fail_open(&e.to_string()),
                    Err(_) => self.fail_open("no answer within broker.timeout"),
                }
            } else {
                self.fail_open("the connection is down");
            }
            // Counted in Redis, or to be by the next refresh once Redis is back.
            {
                let mut held = self.held();
                let keys = held.entry(id.get()).or_default();
                if let Some(free) = keys.iter_mut().find(|k| k.is_none()) {
                    *free = Some(redis_key.into_boxed_str());
                }
            }
            *slot = Some(ClusterSlot(id));
            Ok(())
        })
    }

    fn unchecked(&self) -> u64 {
        self.unchecked.load(Ordering::Relaxed)
    }

    fn release(&self, slot: ClusterSlot) {
        let slot = slot.0.get();
        let keys = self.held().remove(&slot);
        for key in keys.into_iter().flatten().flatten() {
            // Full (Redis slow or down): the member expires by itself within presence_ttl.
            let _ = self.releases.try_send((slot, key));
        }
    }
}

/// Removes released members and refreshes held ones, one after the other: a refresh never
/// adds again a member whose removal was already sent, so that a closed connection does not
/// linger.
async fn run_writer(admission: Arc<RedisAdmission>, mut releases: mpsc::Receiver<(u32, Box<str>)>) {
    let period = (admission.inner.config.presence_ttl / 3).max(Duration::from_millis(10));
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        tokio::select! {
            n = releases.recv_many(&mut batch, BATCH) => {
                if n == 0 {
                    return;
                }
                admission.remove(&batch).await;
                batch.clear();
            }
            _ = ticks.tick() => admission.refresh().await,
        }
    }
}

#[cfg(test)]
#[path = "caps_tests.rs"]
mod tests;
