//! Where the Redis broker's connections go: one Redis at a fixed address (`broker.url`), or
//! the primary of a Sentinel-monitored set (`broker.sentinel`), asked of the sentinels again
//! whenever a connection is made.
//!
//! Owns the [`Target`] (resolving to a [`Client`] of the current primary, through
//! [`redis::sentinel`]: this module does not speak the Sentinel protocol itself), the
//! commands connection ([`Primary`]: a [`ConnectionManager`] that is rebuilt on a freshly
//! resolved primary when a command fails with `READONLY`, `NOREPLICAS`, `MASTERDOWN` or an
//! I/O error, and moved when a `WAIT` falls short and the sentinels name another primary)
//! and the `WAIT` after a publication ([`Primary::wait_for_replicas`]). The pub/sub
//! connection resolves the target at each of its reconnects (`connect_pubsub`), and
//! reconnects when the commands connection moved elsewhere ([`Primary::moves`]).
//!
//! [`connect_commands`] is the one place the commands connection is set up: a Redis Cluster
//! connection would be another arm there.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use tokio::sync::watch;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{
    Client, Cmd, ConnectionInfo, ErrorKind, IntoConnectionInfo, Pipeline, RedisError, RedisFuture,
    RedisResult, Value,
};

use super::{BrokerError, RedisBrokerConfig, unavailable};

/// A Sentinel-monitored Redis: the sentinels to ask and the name of the set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSentinelConfig {
    /// The sentinels, `redis://[user:password@]host:port` each (usually three or more).
    pub urls: Vec<String>,
    /// The name the sentinels monitor the set under (`sentinel monitor <master> …`).
    pub master: String,
    /// The user of the data nodes (primary and replicas), when they require one.
    pub username: Option<String>,
    /// The password of the data nodes, when they require one.
    pub password: Option<String>,
    /// After each stored publication, how many replicas must have it before the publish is
    /// acknowledged (`WAIT`); 0 acknowledges as soon as the primary has it. Default 1.
    pub wait_for_replicas: u32,
}

impl Default for RedisSentinelConfig {
    fn default() -> Self {
        Self {
            urls: Vec::new(),
            master: String::new(),
            username: None,
            password: None,
            wait_for_replicas: 1,
        }
    }
}

/// Where the node's connections go.
pub(super) enum Target {
    /// One Redis at a fixed address: the [`ConnectionManager`] reconnects to it by itself.
    Url(Client),
    /// The current primary of a Sentinel-monitored set.
    Sentinel {
        sentinels: Vec<ConnectionInfo>,
        master: String,
        node: SentinelNodeConnectionInfo,
        timeout: Duration,
    },
}

impl Target {
    /// The target of `config`, checked but not contacted.
    pub(super) fn new(config: &RedisBrokerConfig) -> Result<Target, BrokerError> {
        let invalid = |what: &str, e: RedisError| BrokerError::Unavailable {
            message: format!("invalid redis {what}: {e}"),
            source: Some(Box::new(e)),
        };
        let Some(s) = &config.sentinel else {
            let client = Client::open(config.url.as_str())
                .map_err(|e| invalid(&format!("url '{}'", config.url), e))?;
            return Ok(Target::Url(client));
        };
        let sentinels = s
            .urls
            .iter()
            .map(|u| {
                u.as_str()
                    .into_connection_info()
                    .map_err(|e| invalid(&format!("sentinel url '{u}'"), e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if sentinels.is_empty() {
            return Err(BrokerError::Unavailable {
                message: "redis: no sentinel urls".to_owned(),
                source: None,
            });
        }
        let node = SentinelNodeConnectionInfo {
            tls_mode: None,
            redis_connection_info: Some(redis::RedisConnectionInfo {
                username: s.username.clone(),
                password: s.password.clone(),
                ..Default::default()
            }),
        };
        Ok(Target::Sentinel {
            sentinels,
            master: s.master.clone(),
            node,
            timeout: config.timeout,
        })
    }

    /// The longest wait between two attempts to reach the primary: with sentinels at most
    /// 500 ms, since the sentinels (not the dead primary) are asked and a new primary is
    /// named a few seconds after a failure; each extra second of backoff would be one more
    /// second of unavailability.
    pub(super) fn retry_cap(&self, max_backoff: Duration) -> Duration {
        match self {
            Target::Url(_) => max_backoff,
            Target::Sentinel { .. } => max_backoff.min(Duration::from_millis(500)),
        }
    }

    /// Whether the primary can move (a failover): then failed commands re-resolve it.
    pub(super) fn is_sentinel(&self) -> bool {
        matches!(self, Target::Sentinel { .. })
    }

    /// A client of the current primary. With sentinels: asks them (in turn, until one
    /// answers) for the set's primary and checks that it says it is one (`ROLE`), within the
    /// broker's timeout.
    pub(super) async fn resolve(&self) -> RedisResult<Client> {
        match self {
            Target::Url(client) => Ok(client.clone()),
            Target::Sentinel {
                sentinels,
                master,
                node,
                timeout,
            } => {
                // A fresh SentinelClient each time: it is only parsed addresses, and nothing
                // (no lock, no cached connection to a dead sentinel) is shared between calls.
                let mut client = SentinelClient::build(
                    sentinels.clone(),
                    master.clone(),
                    Some(node.clone()),
                    SentinelServerType::Master,
                )?;
                match tokio::time::timeout(*timeout, client.async_get_client()).await {
                    Ok(resolved) => resolved,
                    Err(_) => Err(RedisError::from((
                        ErrorKind::IoError,
                        "the sentinels did not name a reachable primary in time",
                    ))),
                }
            }
        }
    }

    /// What the target is, for errors: the url, or the sentinels and the set's name. No
    /// password.
    pub(super) fn describe(&self) -> String {
        match self {
            Target::Url(client) => format!("{}", client.get_connection_info().addr),
            Target::Sentinel {
                sentinels, master, ..
            } => {
                let addrs: Vec<String> = sentinels.iter().map(|s| s.addr.to_string()).collect();
                format!("the primary '{master}' of sentinels {}", addrs.join(", "))
            }
        }
    }
}

/// Whether `e` says the connection no longer reaches a writable primary: the node is a
/// replica now (`READONLY`), the primary refuses writes for want of replicas (`NOREPLICAS`),
/// a replica lost its primary (`MASTERDOWN`), or the connection failed.
fn primary_lost(e: &RedisError) -> bool {
    matches!(e.kind(), ErrorKind::ReadOnly | ErrorKind::MasterDown)
        || e.code() == Some("NOREPLICAS")
        || e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
}

struct Current {
    manager: ConnectionManager,
    /// Bumped at each rebuild, so that the failures of an older manager do not rebuild again.
    generation: u64,
    /// The primary's address (`host:port`).
    addr: String,
}

struct Shared {
    target: Arc<Target>,
    settings: ConnectionManagerConfig,
    current: Mutex<Current>,
    /// A rebuild is under way: other failures wait for it rather than start another.
    rebuilding: AtomicBool,
    /// A check that the primary did not move is under way (after a `WAIT` shortfall).
    checking: AtomicBool,
    /// Where the pub/sub connection is, so that it follows the commands to a new primary.
    pubsub_addr: Mutex<Option<String>>,
    /// The generation of the newest manager, for calls that wait for a rebuild.
    generations: watch::Sender<u64>,
    max_backoff: Duration,
    /// How long a call waits for a rebuild under way (the broker's timeout).
    timeout: Duration,
}

/// The node's commands connection: a multiplexed [`ConnectionManager`] on the target's
/// primary. Cheap to clone; each clone is a [`ConnectionLike`] for one call.
#[derive(Clone)]
pub(super) struct Primary {
    shared: Arc<Shared>,
    manager: ConnectionManager,
    generation: u64,
}

/// Makes the node's commands connection to `target` (the one place where it is set up).
pub(super) async fn connect_commands(
    target: Arc<Target>,
    config: &RedisBrokerConfig,
) -> Result<Primary, BrokerError> {
    let settings = ConnectionManagerConfig::new()
        .set_connection_timeout(config.timeout)
        .set_response_timeout(config.timeout)
        .set_number_of_retries(2)
        .set_max_delay(config.max_backoff.as_millis() as u64);
    let (manager, addr) = manager(&target, &settings)
        .await
        .map_err(|e| unavailable(format!("connecting to {}", target.describe()), e))?;
    let shared = Arc::new(Shared {
        target: target.clone(),
        settings,
        current: Mutex::new(Current {
            manager: manager.clone(),
            generation: 0,
            addr,
        }),
        rebuilding: AtomicBool::new(false),
        checking: AtomicBool::new(false),
        pubsub_addr: Mutex::new(None),
        generations: watch::Sender::new(0),
        max_backoff: target.retry_cap(config.max_backoff),
        timeout: config.timeout,
    });
    Ok(Primary {
        shared,
        manager,
        generation: 0,
    })
}

/// A manager on the target's current primary, and the primary's address.
async fn manager(
    target: &Target,
    settings: &ConnectionManagerConfig,
) -> RedisResult<(ConnectionManager, String)> {
    let client = target.resolve().await?;
    let addr = client.get_connection_info().addr.to_string();
    let manager = client
        .get_connection_manager_with_config(settings.clone())
        .await?;
    Ok((manager, addr))
}

impl Primary {
    /// The connection to use for the next call: the newest manager.
    pub(super) fn get(&self) -> Primary {
        let current = self
            .shared
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Primary {
            shared: self.shared.clone(),
            manager: current.manager.clone(),
            generation: current.generation,
        }
    }

    /// Waits until `replicas` replicas have every write this connection made (`WAIT`), for
    /// at most half the broker's timeout (the other half is left to the reply). Fails with
    /// `unavailable` when fewer have it by then: the write may not survive a failover.
    pub(super) async fn wait_for_replicas(
        &mut self,
        replicas: u32,
        timeout: Duration,
    ) -> Result<(), BrokerError> {
        let wait = (timeout / 2).as_millis().max(1) as u64;
        let acked: u32 = redis::cmd("WAIT")
            .arg(replicas)
            .arg(wait)
            .query_async(self)
            .await
            .map_err(|e| unavailable("waiting for replicas", e))?;
        if acked < replicas {
            // Also what a primary that the sentinels replaced while it stayed up (a graceful
            // failover, a partition) says until they demote it: look for a new one.
            self.check_primary();
            return Err(BrokerError::Unavailable {
                message: format!(
                    "redis: the publication reached {acked} of the {replicas} replicas it must \
                     (broker.sentinel.wait_for_replicas) within {wait} ms; it may not survive \
                     a failover"
                ),
                source: None,
            });
        }
        Ok(())
    }

    /// Called with each failed call's error: when it says the primary is gone and the target
    /// can move, resolves the primary again and replaces the manager, in the background
    /// (the failed call itself fails: retrying a write that may have been applied is the
    /// client's decision, with its idempotency key).
    fn failed(&self, e: &RedisError) {
        if !self.shared.target.is_sentinel() || !primary_lost(e) {
            return;
        }
        let stale = self
            .shared
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .generation
            != self.generation;
        if stale || self.shared.rebuilding.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::warn!(error = %e, "redis primary lost; asking the sentinels for the new one");
        tokio::spawn(rebuild(Arc::downgrade(&self.shared)));
    }
}

/// Resolves the primary and replaces the manager, retrying with backoff until it succeeds or
/// the broker is dropped.
async fn rebuild(shared: Weak<Shared>) {
    let min = Duration::from_millis(50);
    let mut backoff = min;
    loop {
        let Some(s) = shared.upgrade() else { return };
        match manager(&s.target, &s.settings).await {
            Ok((manager, addr)) => {
                s.replace(manager, addr);
                s.rebuilding.store(false, Ordering::Release);
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "redis primary not found yet");
                let max = s.max_backoff;
                drop(s);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(max);
            }
        }
    }
}

impl Shared {
    /// Makes `manager` (on `addr`) the one of the next calls, and tells the calls waiting.
    fn replace(&self, manager: ConnectionManager, addr: String) {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        tracing::info!(primary = %addr, "redis commands connection on the primary the sentinels name");
        current.manager = manager;
        current.addr = addr;
        current.generation += 1;
        let generation = current.generation;
        drop(current);
        self.generations.send_replace(generation);
    }
}

/// Asks the sentinels once which node is the primary; moves the commands connection there
/// when it is not the current one.
async fn check(shared: Weak<Shared>) {
    let Some(s) = shared.upgrade() else { return };
    if let Ok(client) = s.target.resolve().await {
        let addr = client.get_connection_info().addr.to_string();
        let current = s
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .addr
            .clone();
        if addr != current {
            match manager(&s.target, &s.settings).await {
                Ok((manager, addr)) => s.replace(manager, addr),
                Err(e) => tracing::warn!(error = %e, "redis: the new primary is not reachable yet"),
            }
        }
    }
    s.checking.store(false, Ordering::Release);
}

impl Primary {
    /// In the background, asks the sentinels whether the primary moved, and follows it.
    fn check_primary(&self) {
        if self.shared.target.is_sentinel() && !self.shared.checking.swap(true, Ordering::AcqRel) {
            tokio::spawn(check(Arc::downgrade(&self.shared)));
        }
    }

    /// Records that the pub/sub connection was made to `addr`.
    pub(super) fn pubsub_at(&self, addr: &redis::ConnectionAddr) {
        *self
            .shared
            .pubsub_addr
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(addr.to_string());
    }

    /// Changes of the commands connection's primary, for [`Primary::pubsub_elsewhere`].
    pub(super) fn moves(&self) -> watch::Receiver<u64> {
        self.shared.generations.subscribe()
    }

    /// Whether the commands connection is on another primary than the pub/sub connection:
    /// then the pub/sub connection reconnects (and finds the new primary).
    pub(super) fn pubsub_elsewhere(&self) -> bool {
        let commands = self
            .shared
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .addr
            .clone();
        self.shared
            .pubsub_addr
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_some_and(|p| *p != commands)
    }

    /// Before a call: while the primary is being looked for again, waits (at most the
    /// broker's timeout) for the new manager rather than send the call to the old one, whose
    /// own reconnection to the dead address would hold it for several seconds.
    async fn current(&mut self) -> RedisResult<()> {
        if !self.shared.rebuilding.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut generations = self.shared.generations.subscribe();
        let newer = generations.wait_for(|g| *g > self.generation);
        if tokio::time::timeout(self.shared.timeout, newer)
            .await
            .is_err()
        {
            return Err(RedisError::from((
                ErrorKind::IoError,
                "the primary is being looked for again (failover)",
            )));
        }
        *self = self.get();
        Ok(())
    }
}

impl ConnectionLike for Primary {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            self.current().await?;
            let reply = self.manager.req_packed_command(cmd).await;
            if let Err(e) = &reply {
                self.failed(e);
            }
            reply
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            self.current().await?;
            let reply = self.manager.req_packed_commands(cmd, offset, count).await;
            if let Err(e) = &reply {
                self.failed(e);
            }
            reply
        })
    }

    fn get_db(&self) -> i64 {
        self.manager.get_db()
    }
}

#[cfg(test)]
#[path = "sentinel_tests.rs"]
mod tests;
