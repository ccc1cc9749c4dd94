//! The Redis broker's connections, to one server or to a Redis Cluster.
//!
//! Owns how a node reaches Redis: [`Connector`] builds both connections from the
//! configuration (the one place that knows standalone from cluster), [`Commands`] carries
//! commands, pipelines and scripts, and [`PubSub`] the node's subscriptions. The rest of the
//! broker is written once for both topologies:
//!
//! - standalone (one server at `broker.url`, or the primary the sentinels of
//!   `broker.sentinel` name, resolved by `sentinel::Target`): a `sentinel::Primary` (a
//!   [`ConnectionManager`](redis::aio::ConnectionManager) that follows the primary) for commands and a RESP3
//!   [`MultiplexedConnection`] whose pushes are the subscriptions' messages (`SUBSCRIBE`);
//! - cluster: a cluster connection for commands (routed by key slot, following `MOVED`) and a
//!   second RESP3 cluster connection whose node connections push the messages of sharded
//!   channels (`SSUBSCRIBE`, one slot per call as Redis requires). Messages are published
//!   with `SPUBLISH`, so that they travel only within the channel's shard. The cluster
//!   connection's own resubscription after it reconnects a node (one `SSUBSCRIBE` of every
//!   channel, which Redis refuses across slots) is not relied on: any node socket that drops
//!   pushes `Disconnection`, and the broker then builds a new pub/sub connection and
//!   resubscribes everything, as on a single server.

use std::time::Duration;

use futures_util::{StreamExt as _, TryStreamExt as _};
use std::sync::Arc;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{
    AsyncConnectionConfig, Client, Cmd, ConnectionAddr, Pipeline, ProtocolVersion, PushInfo,
    RedisError, RedisFuture, RedisResult, Value,
};
use tokio::sync::mpsc;

use super::sentinel::{self, Primary, Target};
use super::{RedisBrokerConfig, unavailable};
use crate::broker::{BoxFuture, BrokerError};

/// Calls in flight at once when one operation takes many single-slot calls (subscribing
/// every room after a reconnect, a cross-slot batch on a cluster).
const CONCURRENCY: usize = 64;

/// Builds a node's connections from its configuration, again at every reconnect.
pub(super) enum Connector {
    /// One Redis server: `broker.url`, or the primary of `broker.sentinel`.
    Standalone(Arc<Target>),
    /// A Redis Cluster reached through its seed nodes (`broker.cluster`).
    Cluster {
        /// The commands connection's client: RESP2, no pushes.
        commands: Box<ClusterClient>,
        /// The seed nodes, for each new pub/sub client (RESP3, pushes to a new sender).
        seeds: Vec<String>,
    },
}

impl Connector {
    /// The connector of `config`: cluster when `config.cluster` names seed nodes.
    pub(super) fn new(config: &RedisBrokerConfig) -> Result<Connector, BrokerError> {
        if config.cluster.is_empty() {
            return Ok(Connector::Standalone(Arc::new(Target::new(config)?)));
        }
        // Built now, so that a bad seed url fails at start rather than at the first call.
        let commands = cluster_builder(config, &config.cluster)
            .build()
            .map_err(|e| BrokerError::Unavailable {
                message: format!("invalid redis cluster seed nodes {:?}: {e}", config.cluster),
                source: Some(Box::new(e)),
            })?;
        Ok(Connector::Cluster {
            commands: Box::new(commands),
            seeds: config.cluster.clone(),
        })
    }

    /// Whether messages go through sharded channels (`SPUBLISH`, `SSUBSCRIBE`).
    pub(super) fn sharded(&self) -> bool {
        matches!(self, Connector::Cluster { .. })
    }

    /// Where the node connects, for error messages.
    pub(super) fn describe(&self) -> String {
        match self {
            Connector::Standalone(target) => target.describe(),
            Connector::Cluster { seeds, .. } => format!("the redis cluster {seeds:?}"),
        }
    }

    /// The commands connection; it reconnects by itself afterwards.
    pub(super) async fn commands(
        &self,
        config: &RedisBrokerConfig,
    ) -> Result<Commands, BrokerError> {
        match self {
            Connector::Standalone(target) => Ok(Commands::Standalone(
                sentinel::connect_commands(target.clone(), config).await?,
            )),
            Connector::Cluster { commands, .. } => {
                let conn = commands
                    .get_async_connection()
                    .await
                    .map_err(|e| unavailable(format!("connecting to {}", self.describe()), e))?;
                Ok(Commands::Cluster(conn))
            }
        }
    }

    /// The longest wait between two reconnections: shorter with sentinels, which name a new
    /// primary soon after a failover.
    pub(super) fn retry_cap(&self, max_backoff: Duration) -> Duration {
        match self {
            Connector::Standalone(target) => target.retry_cap(max_backoff),
            Connector::Cluster { .. } => max_backoff,
        }
    }

    /// A new pub/sub connection whose pushes (messages, and `Disconnection` when a socket
    /// drops) go to `pushes`, and, on a single server, its address.
    pub(super) async fn pubsub(
        &self,
        config: &RedisBrokerConfig,
        pushes: mpsc::UnboundedSender<PushInfo>,
    ) -> RedisResult<(PubSub, Option<ConnectionAddr>)> {
        match self {
            Connector::Standalone(target) => {
                let async_config = AsyncConnectionConfig::new()
                    .set_connection_timeout(config.timeout)
                    .set_response_timeout(config.timeout)
                    .set_push_sender(pushes);
                // Resolved at every (re)connect: after a failover, the sentinels name the
                // new primary.
                let primary = target.resolve().await?;
                let mut info = primary.get_connection_info().clone();
                let addr = info.addr.clone();
                info.redis.protocol = ProtocolVersion::RESP3;
                let conn = Client::open(info)?
                    .get_multiplexed_async_connection_with_config(&async_config)
                    .await?;
                Ok((PubSub::Standalone(conn), Some(addr)))
            }
            Connector::Cluster { seeds, .. } => {
                let client: ClusterClient = cluster_builder(config, seeds)
                    .use_protocol(ProtocolVersion::RESP3)
                    .push_sender(pushes)
                    .build()?;
                Ok((PubSub::Cluster(client.get_async_connection().await?), None))
            }
        }
    }
}

fn cluster_builder(config: &RedisBrokerConfig, seeds: &[String]) -> ClusterClientBuilder {
    ClusterClientBuilder::new(seeds.to_vec())
        .connection_timeout(config.timeout)
        .response_timeout(config.timeout)
        // A few quick retries ride out a failover's MOVED and reconnects; beyond, the call
        // fails with `unavailable` like a standalone one.
        .retries(2)
        .min_retry_wait(10)
        .max_retry_wait(millis(config.max_backoff))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The commands connection: scripts and commands go through it as through any
/// [`ConnectionLike`]; on a cluster each is routed to the owner of its first key's slot.
#[derive(Clone)]
pub(super) enum Commands {
    /// One server, reconnecting by itself (and following a Sentinel failover).
    Standalone(Primary),
    /// A cluster: one multiplexed connection per node, routed by slot.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Commands {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Commands::Standalone(c) => c.req_packed_command(cmd),
            Commands::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Commands::Standalone(c) => c.req_packed_commands(cmd, offset, count),
            Commands::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Commands::Standalone(c) => c.get_db(),
            Commands::Cluster(c) => c.get_db(),
        }
    }
}

impl Commands {
    /// The connection for the next call: on a single server the newest manager (a failover
    /// replaces it).
    pub(super) fn get(&self) -> Commands {
        match self {
            Commands::Standalone(p) => Commands::Standalone(p.get()),
            Commands::Cluster(c) => Commands::Cluster(c.clone()),
        }
    }

    /// The single server's connection (where `WAIT` and the Sentinel bookkeeping live).
    pub(super) fn primary(&self) -> Option<&Primary> {
        match self {
            Commands::Standalone(p) => Some(p),
            Commands::Cluster(_) => None,
        }
    }

    /// The single server's connection, mutably.
    pub(super) fn primary_mut(&mut self) -> Option<&mut Primary> {
        match self {
            Commands::Standalone(p) => Some(p),
            Commands::Cluster(_) => None,
        }
    }
    /// Runs `pipe`'s commands, whose keys may be in different slots, ignoring their replies:
    /// one pipeline on a single server; on a cluster each command on its own (a cluster
    /// pipeline must stay within one slot), many in flight at once.
    pub(super) async fn exec_any_slots(&self, pipe: &Pipeline) -> RedisResult<()> {
        match self {
            Commands::Standalone(c) => pipe.exec_async(&mut c.clone()).await,
            Commands::Cluster(c) => {
                let calls = pipe
                    .cmd_iter()
                    .map(|cmd| {
                        let mut conn = c.clone();
                        Box::pin(async move { cmd.exec_async(&mut conn).await }) as BoxFuture<'_, _>
                    })
                    .collect();
                in_flight(calls).await.map(drop)
            }
        }
    }
}

/// The pub/sub connection: subscriptions whose messages arrive as pushes.
#[derive(Clone)]
pub(super) enum PubSub {
    /// One RESP3 connection: `SUBSCRIBE`.
    Standalone(MultiplexedConnection),
    /// RESP3 connections to every primary: `SSUBSCRIBE`, each channel at its slot's owner.
    Cluster(ClusterConnection),
}

impl PubSub {
    /// Subscribes to `channels`: one `SUBSCRIBE` on a single server; on a cluster one
    /// `SSUBSCRIBE` per channel (a call may not span slots), many in flight at once.
    pub(super) async fn subscribe(&self, channels: &[Vec<u8>]) -> RedisResult<()> {
        match self {
            PubSub::Standalone(c) => c.clone().subscribe(channels).await,
            PubSub::Cluster(c) => {
                let calls = channels
                    .iter()
                    .map(|channel| {
                        let mut conn = c.clone();
                        Box::pin(async move { conn.ssubscribe(channel).await }) as BoxFuture<'_, _>
                    })
                    .collect();
                in_flight(calls).await.map(drop)
            }
        }
    }

    /// Unsubscribes from one channel.
    pub(super) async fn unsubscribe(&self, channel: &[u8]) -> RedisResult<()> {
        match self {
            PubSub::Standalone(c) => c.clone().unsubscribe(channel).await,
            PubSub::Cluster(c) => c.clone().sunsubscribe(channel).await,
        }
    }

    /// A `PING` that must come back (from every primary, on a cluster).
    pub(super) async fn ping(&self) -> RedisResult<()> {
        match self {
            PubSub::Standalone(c) => redis::cmd("PING").exec_async(&mut c.clone()).await,
            PubSub::Cluster(c) => redis::cmd("PING").exec_async(&mut c.clone()).await,
        }
    }
}

/// The Redis Cluster slot of a room's keys (`P:{R}:…`): that of their hash tag, the room's
/// name (valid names have no braces, so the tag is the whole name), as Redis computes it.
pub(super) fn slot(room: &str) -> u16 {
    crc16::State::<crc16::XMODEM>::calculate(room.as_bytes()) % 16384
}

/// Runs `calls`, [`CONCURRENCY`] at a time, until all succeed or one fails. (Boxed: the
/// futures of a closure over borrowed data trip the compiler's `Send` proofs otherwise.)
pub(super) async fn in_flight<'a, T, E>(
    calls: Vec<BoxFuture<'a, Result<T, E>>>,
) -> Result<Vec<T>, E> {
    futures_util::stream::iter(calls)
        .buffer_unordered(CONCURRENCY)
        .try_collect()
        .await
}

/// Connects the pub/sub connection and maps its failure for the broker; on a single server
/// tells `commands` where it went (so that it follows the commands to a new primary).
pub(super) async fn connect_pubsub(
    connector: &Connector,
    commands: &Commands,
    config: &RedisBrokerConfig,
    pushes: mpsc::UnboundedSender<PushInfo>,
) -> Result<PubSub, BrokerError> {
    let (pubsub, addr) = connector
        .pubsub(config, pushes)
        .await
        .map_err(|e: RedisError| {
            unavailable(format!("connecting pub/sub to {}", connector.describe()), e)
        })?;
    if let (Some(primary), Some(addr)) = (commands.primary(), addr) {
        primary.pubsub_at(&addr);
    }
    Ok(pubsub)
}
