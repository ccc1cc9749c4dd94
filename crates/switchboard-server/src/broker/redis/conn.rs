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
//! - cluster: a cluster connection for commands (routed by key slot, following `MOVED`) and,
//!   for the subscriptions, one RESP3 [`MultiplexedConnection`] per primary, from the slot
//!   map read at connect time (`CLUSTER SLOTS`), whose pushes are the messages of sharded
//!   channels (`SSUBSCRIBE`, each channel at its slot's owner). Messages are published with
//!   `SPUBLISH`, so that they travel only within the channel's shard. The pub/sub side is
//!   not a cluster connection on purpose: that one replaces a node's socket by itself (after
//!   a timeout, say) and resubscribes with one `SSUBSCRIBE` of every channel, which Redis
//!   refuses across slots, so the subscriptions would end without a word. Here any socket
//!   that drops pushes `Disconnection`, and a shard that moves away pushes `sunsubscribe`;
//!   either way the broker builds a new pub/sub connection on the current slot map and
//!   resubscribes everything, as on a single server.

use std::time::Duration;

use futures_util::{StreamExt as _, TryStreamExt as _};
use std::sync::Arc;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{
    AsyncConnectionConfig, Client, Cmd, ConnectionAddr, IntoConnectionInfo as _, Pipeline,
    ProtocolVersion, PushInfo, RedisError, RedisFuture, RedisResult, Value,
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
                let shards = Shards::connect(seeds, config, pushes).await?;
                Ok((PubSub::Cluster(Arc::new(shards)), None))
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
    Cluster(Arc<Shards>),
}

impl PubSub {
    /// Subscribes to `channels`: one `SUBSCRIBE` on a single server; on a cluster one
    /// `SSUBSCRIBE` per channel at its slot's owner (a call may not span slots), many in
    /// flight at once. A shard that moved since the connection was made answers `MOVED`:
    /// an error, and the broker reconnects on the new slot map.
    pub(super) async fn subscribe(&self, channels: &[Vec<u8>]) -> RedisResult<()> {
        match self {
            PubSub::Standalone(c) => c.clone().subscribe(channels).await,
            PubSub::Cluster(shards) => {
                let calls = channels
                    .iter()
                    .map(|channel| {
                        let mut conn = shards.owner(channel);
                        Box::pin(async move {
                            redis::cmd("SSUBSCRIBE")
                                .arg(channel)
                                .exec_async(&mut conn)
                                .await
                        }) as BoxFuture<'_, _>
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
            PubSub::Cluster(shards) => {
                redis::cmd("SUNSUBSCRIBE")
                    .arg(channel)
                    .exec_async(&mut shards.owner(channel))
                    .await
            }
        }
    }

    /// A `PING` that must come back (from every primary, on a cluster).
    pub(super) async fn ping(&self) -> RedisResult<()> {
        match self {
            PubSub::Standalone(c) => redis::cmd("PING").exec_async(&mut c.clone()).await,
            PubSub::Cluster(shards) => {
                let calls = shards
                    .conns
                    .iter()
                    .map(|c| {
                        let mut conn = c.clone();
                        Box::pin(async move { redis::cmd("PING").exec_async(&mut conn).await })
                            as BoxFuture<'_, _>
                    })
                    .collect();
                in_flight(calls).await.map(drop)
            }
        }
    }
}

/// The pub/sub connections to a Redis Cluster: one per primary, as the slot map stood when
/// they were made.
pub(super) struct Shards {
    /// Each slot's owner, an index into `conns`.
    owner: Box<[u16]>,
    conns: Vec<MultiplexedConnection>,
}

/// The slots of a Redis Cluster.
const SLOTS: usize = 16384;

impl Shards {
    /// Reads the slot map from the first seed that answers and connects to every primary
    /// in it; fails unless every slot has an owner (a cluster that is down or resharding
    /// is tried again by the broker's reconnect loop).
    async fn connect(
        seeds: &[String],
        config: &RedisBrokerConfig,
        pushes: mpsc::UnboundedSender<PushInfo>,
    ) -> RedisResult<Shards> {
        let async_config = || {
            AsyncConnectionConfig::new()
                .set_connection_timeout(config.timeout)
                .set_response_timeout(config.timeout)
        };
        let mut last_error = None;
        let mut map = None;
        for seed in seeds {
            let result = async {
                let info = seed.as_str().into_connection_info()?;
                let mut conn = Client::open(info.clone())?
                    .get_multiplexed_async_connection_with_config(&async_config())
                    .await?;
                let slots: Value = redis::cmd("CLUSTER")
                    .arg("SLOTS")
                    .query_async(&mut conn)
                    .await?;
                Ok::<_, RedisError>((info, slots))
            }
            .await;
            match result {
                Ok(found) => {
                    map = Some(found);
                    break;
                }
                Err(e) => last_error = Some(e),
            }
        }
        let Some((seed, slots)) = map else {
            return Err(last_error.unwrap_or_else(|| cluster_error("no seed nodes")));
        };
        let ranges = parse_cluster_slots(&slots)
            .ok_or_else(|| cluster_error("malformed CLUSTER SLOTS reply"))?;
        let mut primaries: Vec<(String, u16)> = Vec::new();
        let mut owner = vec![u16::MAX; SLOTS].into_boxed_slice();
        for (start, end, host, port) in ranges {
            // An empty host is the node the question went to.
            let host = match host.as_str() {
                "" | "?" => match &seed.addr {
                    ConnectionAddr::Tcp(h, _) => h.clone(),
                    _ => host,
                },
                _ => host,
            };
            let index = match primaries.iter().position(|p| p.0 == host && p.1 == port) {
                Some(i) => i,
                None => {
                    primaries.push((host, port));
                    primaries.len() - 1
                }
            };
            for slot in start..=end.min(SLOTS - 1) {
                owner[slot] = index as u16;
            }
        }
        if owner.contains(&u16::MAX) {
            return Err(cluster_error("not every slot has a primary"));
        }
        let mut conns = Vec::with_capacity(primaries.len());
        for (host, port) in primaries {
            let mut info = seed.clone();
            info.addr = ConnectionAddr::Tcp(host, port);
            info.redis.protocol = ProtocolVersion::RESP3;
            let config = async_config().set_push_sender(pushes.clone());
            conns.push(
                Client::open(info)?
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?,
            );
        }
        Ok(Shards { owner, conns })
    }

    /// The connection of the primary that owns `channel`'s slot.
    fn owner(&self, channel: &[u8]) -> MultiplexedConnection {
        self.conns[usize::from(self.owner[usize::from(key_slot(channel))])].clone()
    }
}

fn cluster_error(message: &'static str) -> RedisError {
    RedisError::from((redis::ErrorKind::ClusterDown, message))
}

/// `CLUSTER SLOTS`: `(first slot, last slot, primary host, primary port)` of each range.
fn parse_cluster_slots(reply: &Value) -> Option<Vec<(usize, usize, String, u16)>> {
    let Value::Array(ranges) = reply else {
        return None;
    };
    let int = |v: &Value| match v {
        Value::Int(i) => usize::try_from(*i).ok(),
        _ => None,
    };
    ranges
        .iter()
        .map(|range| {
            let Value::Array(range) = range else {
                return None;
            };
            let Some(Value::Array(primary)) = range.get(2) else {
                return None;
            };
            let host = match primary.first()? {
                Value::BulkString(b) => String::from_utf8(b.clone()).ok()?,
                Value::SimpleString(s) => s.clone(),
                Value::Nil => String::new(),
                _ => return None,
            };
            let port = u16::try_from(int(primary.get(1)?)?).ok()?;
            Some((int(range.first()?)?, int(range.get(1)?)?, host, port))
        })
        .collect()
}

/// The Redis Cluster slot of `key`: that of its hash tag (the part between the first `{`
/// and the next `}`, when not empty), else of the whole key, as Redis computes it.
pub(super) fn key_slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16::State::<crc16::XMODEM>::calculate(tagged.unwrap_or(key)) % SLOTS as u16
}

/// The Redis Cluster slot of a room's keys (`P:{R}:…`): that of their hash tag, the room's
/// name (valid names have no braces, so the tag is the whole name), as Redis computes it.
pub(super) fn slot(room: &str) -> u16 {
    crc16::State::<crc16::XMODEM>::calculate(room.as_bytes()) % SLOTS as u16
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
