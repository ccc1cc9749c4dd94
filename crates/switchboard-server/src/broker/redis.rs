//! The Redis broker: several nodes on one Redis, or one Redis Cluster, behave as one server.
//!
//! Owns the Redis side of the [`Broker`] contract: the key layout, the Lua scripts (kept as
//! `.lua` files next to this module), the node's two connections and their reconnection
//! (built in `conn`, the one place that tells a single server from a cluster). It knows
//! nothing of connections, rooms' local members or the wire protocol: events go to the node's
//! [`NodeSink`] as for every broker.
//!
//! # Connections
//!
//! A node holds two Redis connections (on a cluster, two per primary), whatever its rooms and
//! clients:
//!
//! - **commands**: a multiplexed connection manager (publishes, history, presence), which
//!   pipelines concurrent calls on one socket and reconnects by itself (and, on Sentinel, is
//!   rebuilt on the new primary); on a cluster a cluster connection that routes each call to
//!   its key's slot owner and follows `MOVED`;
//! - **pub/sub**: a RESP3 multiplexed connection whose pushes are this node's events. The node
//!   subscribes to a room's channel once (the hub subscribes the node once per room) and to the
//!   deployment's command channel. When it drops (or leaves a PING unanswered for
//!   [`RedisBrokerConfig::timeout`]), the node reconnects with backoff,
//!   resubscribes every room (in **one** `SUBSCRIBE`; on a cluster one `SSUBSCRIBE` per room,
//!   many in flight), and then tells the hub
//!   [`NodeEvent::Lost`] for every room, so that subscribers are caught up from history (or
//!   told `recovered: false`): never a silent skip. Until then [`Broker::ready`] fails
//!   (`/readyz` 503) and subscribing fails with `unavailable`. On a cluster the channels are
//!   sharded (`SSUBSCRIBE`/`SPUBLISH`, Redis 7): a room's messages stay within the shard that
//!   holds its keys, and losing any primary's connection counts as a drop of the whole.
//!
//! Both go to a target (`sentinel.rs`): one Redis at a fixed address, or the primary that
//! a set of Redis Sentinels names, asked again at each pub/sub reconnect and whenever a
//! command fails with `READONLY`, `NOREPLICAS`, `MASTERDOWN` or an I/O error. With
//! sentinels, a stored publication is acknowledged once `wait_for_replicas` replicas have
//! it (`WAIT`), so that it survives a failover.
//!
//! # Key layout
//!
//! With the configured prefix `P` (default `sb`) and a room `R`; the room's keys share the
//! hash tag `{R}`, so that a room lives on one Redis Cluster slot and its scripts may touch
//! them all; the deployment's own keys share the tag `{g}`:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P:{R}:m` | hash | the stream: `epoch`, `top` offset; expires `meta_ttl` after last use (at least `history_ttl` after the last publication) |
//! | `P:{R}:h` | stream | history: entry id `<offset>-0`, fields `x` (expiry, ms) and `b` (the publication); `MAXLEN history_size`; expires with its newest publication |
//! | `P:{R}:k:<key>` | string | an idempotency key: the first publication's `epoch\noffset`, for `history_ttl` |
//! | `P:{R}:c` | channel | the room's events: publications, ephemeral publications, join, leave, broadcasts |
//! | `P:{R}:p`, `:pl`, `:pe`, `:pu` | hash, zset, zset, hash | presence: entries, connections in order, expiries, connections per user |
//! | `P:{g}:presence` | zset | every presence entry of the deployment by expiry, for the sweeps |
//! | `P:{g}:cmd` | channel | cluster commands ([`Broker::command`]) |
//! | `P:{g}:nodes`, `P:{g}:node:<id>`, `:r` | zset, string, hash | the nodes' reports ([`Broker::report`]) |
//! | `P:{u:<user>}:n`, `P:{ip:<ip>}:n` | zset | connections per user and per IP of the deployment (`caps`) |
//!
//! # Ordering and atomicity
//!
//! `publish.lua` checks the idempotency key, takes the next offset, appends to history and
//! `PUBLISH`es (`SPUBLISH` on a cluster) in one script: Redis runs scripts one at a time, so offsets are gap-free and
//! every node's pub/sub connection receives each room's publications in offset order. Join,
//! leave and broadcasts are plain `PUBLISH`es on the same channel. The epoch lives in the
//! stream's meta hash: when Redis loses it (flushed, restarted without persistence, expired),
//! the next call draws a new epoch at offset 0, and old positions no longer recover.
//!
//! # Presence
//!
//! Entries expire [`RedisBrokerConfig::presence_ttl`] after they were last added; the node
//! adds its entries again every third of it. Every node sweeps the deployment's expired
//! entries every [`RedisBrokerConfig::sweep_interval`]: it takes them from the index
//! (`presence_index.lua`, so that two sweeps never take the same entry) and removes them from
//! their rooms (`presence.lua`, one call per room), publishing a `leave` for each on its
//! room's channel: the entries of a killed node disappear, with `leave` events, within
//! `presence_ttl + sweep_interval`. A room's entries and the index are in different slots and
//! updated by two calls; an index entry without its room entry is dropped by the sweep, and a
//! room entry without its index entry is indexed again by its node's next refresh.
//!
//! # Connection limits
//!
//! `caps` counts connections per user and per IP across the nodes (`admit.lua`), for the
//! node's admission ([`Broker::admission`]); a killed node's connections stop counting within
//! `presence_ttl`.

use std::collections::HashMap;
use std::fmt;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use redis::{PushInfo, PushKind, RedisError, Script, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use self::conn::{Commands, Connector, PubSub};
use super::memory::{decode_cursor, encode_cursor};
use super::{
    BoxFuture, Broker, BrokerError, ClusterCommand, HistoryQuery, HistoryResult, NodeEvent,
    NodeReport, NodeSink, Presence, PresenceEntry, PresencePage, Publication, PublishOptions,
    PublishResult, RawMessage, StreamPosition,
};

/// Settings of a [`RedisBroker`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisBrokerConfig {
    /// The Redis server: `redis://[user:password@]host:port[/db]`. Unused with
    /// [`sentinel`](Self::sentinel) or [`cluster`](Self::cluster).
    pub url: String,
    /// A Sentinel-monitored Redis instead of `url`: the node follows its primary through
    /// failovers.
    pub sentinel: Option<RedisSentinelConfig>,
    /// Seed nodes of a Redis Cluster (`redis://host:port` each); when not empty, the broker
    /// connects to the cluster instead of [`url`](Self::url) and publishes through sharded
    /// channels (`SPUBLISH`, Redis 7 or later).
    pub cluster: Vec<String>,
    /// Prefix of every key and channel, so that several deployments can share one Redis.
    /// Default `sb`.
    pub prefix: String,
    /// How long a presence entry lives unless its node adds it again. Default 20 s.
    pub presence_ttl: Duration,
    /// How often the node removes expired presence entries (with their `leave` events).
    /// Default 5 s.
    pub sweep_interval: Duration,
    /// How long an unused stream keeps its epoch and top when nothing is retained. Default
    /// 10 minutes.
    pub meta_ttl: Duration,
    /// How long a call may wait for Redis before it fails with `unavailable`. Default 2 s.
    pub timeout: Duration,
    /// Longest wait between two reconnection attempts. Default 2 s.
    pub max_backoff: Duration,
}

impl Default for RedisBrokerConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".to_owned(),
            sentinel: None,
            cluster: Vec::new(),
            prefix: "sb".to_owned(),
            presence_ttl: Duration::from_secs(20),
            sweep_interval: Duration::from_secs(5),
            meta_ttl: Duration::from_secs(600),
            timeout: Duration::from_secs(2),
            max_backoff: Duration::from_secs(2),
        }
    }
}

/// The scripts, loaded once per process and by SHA afterwards (`EVALSHA`, falling back to
/// `EVAL` after a Redis restart).
struct Scripts {
    publish: Script,
    read: Script,
    remove_history: Script,
    presence: Script,
    presence_index: Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            publish: Script::new(include_str!("redis/publish.lua")),
            read: Script::new(include_str!("redis/read.lua")),
            remove_history: Script::new(include_str!("redis/remove_history.lua")),
            presence: Script::new(include_str!("redis/presence.lua")),
            presence_index: Script::new(include_str!("redis/presence_index.lua")),
        }
    }
}

/// One node's handle on a Redis broker.
///
/// Dropping it stops its tasks and closes its connections.
pub struct RedisBroker {
    inner: Arc<Inner>,
    tasks: Vec<JoinHandle<()>>,
    /// The cluster-wide connection counts (`caps`).
    admission: Arc<caps::RedisAdmission>,
}

struct Inner {
    config: RedisBrokerConfig,
    /// Builds the connections: to one server (`url`, or the sentinels' primary) or a
    /// cluster.
    connector: Connector,
    commands: Commands,
    /// The pub/sub connection while it is up.
    pubsub: Mutex<Option<PubSub>>,
    /// The channels this node is subscribed to, and their rooms: what a reconnect
    /// resubscribes, and how a message finds its room without allocating its name.
    channels: Mutex<HashMap<Box<[u8]>, Arc<str>>>,
    connected: AtomicBool,
    sink: Arc<dyn NodeSink>,
    scripts: Scripts,
    /// `PUBLISH`, or `SPUBLISH` on a cluster (sharded channels).
    publish: &'static str,
    command_channel: String,
    /// The deployment's presence expiry index.
    presence_index: String,
    /// The epoch of ephemeral publications.
    empty: Arc<str>,
}

impl fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBroker")
            .field("config", &self.inner.config)
            .field("connected", &self.inner.connected.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Drop for RedisBroker {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn unavailable(message: impl Into<String>, e: RedisError) -> BrokerError {
    BrokerError::Unavailable {
        message: format!("redis: {}: {e}", message.into()),
        source: Some(Box::new(e)),
    }
}

fn malformed(what: &str) -> BrokerError {
    BrokerError::Unavailable {
        message: format!("redis: unexpected reply to {what}"),
        source: None,
    }
}

impl RedisBroker {
    /// Connects to Redis as `config` says and starts the node's pub/sub and sweep tasks on
    /// the current tokio runtime. Fails when Redis cannot be reached now; once connected, the
    /// broker survives Redis going away and coming back.
    pub async fn connect(
        config: RedisBrokerConfig,
        sink: Arc<dyn NodeSink>,
    ) -> Result<RedisBroker, BrokerError> {
        let connector = Connector::new(&config)?;
        let commands = connector.commands(&config).await?;
        let command_channel = format!("{}:{{g}}:cmd", config.prefix);
        let presence_index = format!("{}:{{g}}:presence", config.prefix);
        let inner = Arc::new(Inner {
            publish: if connector.sharded() {
                "SPUBLISH"
            } else {
                "PUBLISH"
            },
            connector,
            commands,
            presence_index,
            pubsub: Mutex::new(None),
            channels: Mutex::new(HashMap::new()),
            connected: AtomicBool::new(false),
            sink,
            scripts: Scripts::new(),
            command_channel,
            empty: Arc::from(""),
            config,
        });
        // The first pub/sub connection is made here, so that a node starts subscribed.
        let (pushes, conn) = inner.connect_pubsub().await?;
        let pubsub = tokio::spawn(run_pubsub(inner.clone(), Some((pushes, conn))));
        let sweep = tokio::spawn(run_sweep(inner.clone()));
        let (admission, caps_writer) = caps::RedisAdmission::start(inner.clone());
        Ok(RedisBroker {
            inner,
            tasks: vec![pubsub, sweep, caps_writer],
            admission,
        })
    }

    /// Removes the deployment's expired presence entries now, publishing their `leave`
    /// events; returns how many. Every node does it every
    /// [`RedisBrokerConfig::sweep_interval`].
    pub async fn sweep(&self) -> Result<usize, BrokerError> {
        self.inner.sweep().await
    }
}

impl Inner {
    fn key(&self, room: &str, kind: &str) -> String {
        format!("{}:{{{room}}}:{kind}", self.config.prefix)
    }

    fn conn(&self) -> Commands {
        self.commands.get()
    }

    fn pubsub_conn(&self) -> Result<PubSub, BrokerError> {
        self.pubsub
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| BrokerError::Unavailable {
                message: "redis: the pub/sub connection is down, reconnecting".to_owned(),
                source: None,
            })
    }

    /// A new pub/sub connection subscribed to the command channel and every channel of
    /// `channels`: in one `SUBSCRIBE` on a single server, one `SSUBSCRIBE` per channel on a
    /// cluster.
    async fn connect_pubsub(
        &self,
    ) -> Result<(mpsc::UnboundedReceiver<PushInfo>, PubSub), BrokerError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let conn = conn::connect_pubsub(&self.connector, &self.commands, &self.config, tx).await?;
        let mut channels: Vec<Vec<u8>> = self
            .channels
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .map(|c| c.to_vec())
            .collect();
        channels.push(self.command_channel.clone().into_bytes());
        conn.subscribe(&channels)
            .await
            .map_err(|e| unavailable("resubscribing", e))?;
        *self.pubsub.lock().unwrap_or_else(PoisonError::into_inner) = Some(conn.clone());
        self.connected.store(true, Ordering::Relaxed);
        Ok((rx, conn))
    }

    /// Whether the channel of an `sunsubscribe` push (`[channel, count]`) is still one
    /// this node subscribes to.
    fn still_wanted(&self, data: &[Value]) -> bool {
        data.first().and_then(as_bytes).is_some_and(|channel| {
            channel == self.command_channel.as_bytes()
                || self
                    .channels
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .contains_key(channel)
        })
    }

    /// One pub/sub message: an event of a subscribed room, or a cluster command.
    fn on_message(&self, data: &[Value]) {
        let (Some(channel), Some(payload)) = (data.first(), data.get(1)) else {
            return;
        };
        let (Some(channel), Some(payload)) = (as_bytes(channel), as_bytes(payload)) else {
            return;
        };
        if channel == self.command_channel.as_bytes() {
            match decode_command(payload) {
                Some(command) => self.sink.deliver(NodeEvent::Command(command)),
                None => tracing::warn!("malformed cluster command on redis"),
            }
            return;
        }
        let room = self
            .channels
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(channel)
            .cloned();
        // In flight after this node unsubscribed: nobody here wants it.
        let Some(room) = room else { return };
        match decode_event(room, payload, &self.empty) {
            Some(event) => self.sink.deliver(event),
            None => tracing::warn!("malformed message on a room's redis channel"),
        }
    }

    /// Takes the expired entries from the deployment's index and removes them from their
    /// rooms (with their `leave`), one call per room; returns how many it removed.
    async fn sweep(&self) -> Result<usize, BrokerError> {
        const BATCH: usize = 1000;
        let mut total = 0;
        loop {
            let taken: Vec<Vec<u8>> = self
                .scripts
                .presence_index
                .key(&self.presence_index)
                .arg("take")
                .arg(BATCH)
                .invoke_async(&mut self.conn())
                .await
                .map_err(|e| unavailable("presence sweep", e))?;
            let mut rooms: HashMap<&str, Vec<&[u8]>> = HashMap::new();
            for member in &taken {
                let mut connection = member.as_slice();
                // Not written by this broker: nothing to remove.
                let Some(room) = take_field(&mut connection) else {
                    continue;
                };
                let Ok(room) = std::str::from_utf8(room) else {
                    continue;
                };
                rooms.entry(room).or_default().push(connection);
            }
            // Taken out of the index: an entry whose room call fails stays in its room until
            // its keys expire (twice presence_ttl), without its leave.
            let calls = rooms
                .into_iter()
                .map(|(room, connections)| {
                    Box::pin(self.expire(room, connections)) as BoxFuture<'_, _>
                })
                .collect();
            total += conn::in_flight(calls).await?.into_iter().sum::<usize>();
            if taken.len() < BATCH {
                return Ok(total);
            }
        }
    }

    /// Removes the expired entries among `connections` of `room` (with their `leave`) and
    /// indexes again those refreshed since the sweep took them; returns how many it removed.
    async fn expire(&self, room: &str, connections: Vec<&[u8]>) -> Result<usize, BrokerError> {
        let mut call = self.scripts.presence.prepare_invoke();
        call.key(self.key(room, "p"))
            .arg("expire")
            .arg(&self.config.prefix)
            .arg(self.publish)
            .arg(room);
        for connection in connections {
            call.arg(connection);
        }
        let reply: Vec<Value> = call
            .invoke_async(&mut self.conn())
            .await
            .map_err(|e| unavailable("presence sweep", e))?;
        let bad = || malformed("presence sweep");
        let removed = reply.first().and_then(as_u64).ok_or_else(bad)? as usize;
        let mut alive = Vec::new();
        for pair in reply.get(1..).unwrap_or_default().chunks_exact(2) {
            let connection = as_bytes(&pair[0]).ok_or_else(bad)?;
            let left = as_u64(&pair[1]).ok_or_else(bad)?;
            alive.push((index_member(room, connection), left));
        }
        self.index(alive).await?;
        Ok(removed)
    }

    /// Adds (or moves) entries of the deployment's presence index: `(member, ms left)`.
    async fn index(&self, entries: Vec<(Vec<u8>, u64)>) -> Result<(), BrokerError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut call = self.scripts.presence_index.prepare_invoke();
        call.key(&self.presence_index).arg("add");
        for (member, left) in entries {
            call.arg(member).arg(left);
        }
        call.invoke_async::<()>(&mut self.conn())
            .await
            .map_err(|e| unavailable("presence index", e))
    }

    async fn read(
        &self,
        room: &str,
        query: &HistoryQuery,
    ) -> Result<(StreamPosition, char, Vec<Arc<Publication>>), BrokerError> {
        let limit: i64 = i64::try_from(query.limit).unwrap_or(-1);
        let (since_epoch, since_offset) = match &query.since {
            Some(p) => (&*p.epoch, p.offset),
            None => ("", 0),
        };
        let reply: Vec<Value> = self
            .scripts
            .read
            .key(self.key(room, "m"))
            .key(self.key(room, "h"))
            .arg(crate::ids::random_base62(8))
            .arg(self.config.meta_ttl.as_millis() as u64)
            .arg(limit)
            .arg(if query.reverse { "1" } else { "0" })
            .arg(since_epoch)
            .arg(since_offset)
            .invoke_async(&mut self.conn())
            .await
            .map_err(|e| unavailable("history", e))?;
        let bad = || malformed("history");
        let epoch: Arc<str> = reply.first().and_then(as_str).ok_or_else(bad)?.into();
        let top = reply.get(1).and_then(as_u64).ok_or_else(bad)?;
        let status = reply
            .get(2)
            .and_then(as_bytes)
            .and_then(|s| s.first().copied())
            .ok_or_else(bad)? as char;
        let room: Arc<str> = Arc::from(room);
        let mut publications = Vec::with_capacity((reply.len().saturating_sub(3)) / 2);
        for pair in reply[3..].chunks_exact(2) {
            let offset = as_u64(&pair[0]).ok_or_else(bad)?;
            let body = as_bytes(&pair[1]).ok_or_else(bad)?;
            let (exclude, from, data) = decode_body(body).ok_or_else(bad)?;
            publications.push(Arc::new(Publication {
                room: room.clone(),
                offset,
                epoch: epoch.clone(),
                data,
                from,
                exclude,
                ephemeral: false,
            }));
        }
        Ok((StreamPosition { epoch, offset: top }, status, publications))
    }

    async fn publish_raw(&self, room: &str, message: Vec<u8>) -> Result<(), BrokerError> {
        let mut conn = self.conn();
        redis::cmd(self.publish)
            .arg(self.key(room, "c"))
            .arg(message)
            .exec_async(&mut conn)
            .await
            .map_err(|e| unavailable("publish", e))
    }
}

/// Keeps the pub/sub connection up: reads its pushes, and when it drops reconnects with
/// backoff, resubscribes every room at once and signals the possible loss to the hub.
async fn run_pubsub(
    inner: Arc<Inner>,
    mut current: Option<(mpsc::UnboundedReceiver<PushInfo>, PubSub)>,
) {
    let min = Duration::from_millis(50);
    let mut backoff = min;
    loop {
        let (mut pushes, conn) = match current.take() {
            Some(up) => up,
            None => match inner.connect_pubsub().await {
                Ok(up) => {
                    tracing::info!("redis pub/sub reconnected; catching rooms up from history");
                    backoff = min;
                    inner.sink.deliver(NodeEvent::Lost { room: None });
                    up
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "redis pub/sub reconnect failed");
                    tokio::time::sleep(backoff).await;
                    backoff =
                        (backoff * 2).min(inner.connector.retry_cap(inner.config.max_backoff));
                    continue;
                }
            },
        };
        // A connection can also die without a word (a frozen server, a cut without a reset):
        // a PING every `timeout` that goes unanswered counts as a drop.
        let mut health = tokio::time::interval(inner.config.timeout);
        health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        health.reset();
        // The commands connection found a new primary: this one follows (sentinel.rs).
        let mut moves = inner.commands.primary().map(sentinel::Primary::moves);
        loop {
            tokio::select! {
                Some(()) = primary_moved(&mut moves) => if inner
                    .commands
                    .primary()
                    .is_some_and(sentinel::Primary::pubsub_elsewhere)
                {
                    tracing::warn!("the redis primary moved; moving pub/sub there");
                    break;
                },
                push = pushes.recv() => match push {
                    Some(push) => match push.kind {
                        PushKind::Message | PushKind::SMessage => inner.on_message(&push.data),
                        PushKind::Disconnection => break,
                        // Not asked for (the room is still wanted): its slot moved to another
                        // shard, which ends the subscription there. Reconnect on the new map.
                        PushKind::SUnsubscribe if inner.still_wanted(&push.data) => {
                            tracing::warn!("a redis cluster shard moved; resubscribing on the new slot map");
                            break;
                        }
                        _ => {}
                    },
                    None => break,
                },
                _ = health.tick() => {
                    match tokio::time::timeout(inner.config.timeout, conn.ping()).await {
                        Ok(Ok(())) => {}
                        _ => {
                            tracing::warn!("redis pub/sub connection does not answer PING");
                            break;
                        }
                    }
                }
            }
        }
        inner.connected.store(false, Ordering::Relaxed);
        *inner.pubsub.lock().unwrap_or_else(PoisonError::into_inner) = None;
        drop(conn);
        tracing::warn!("redis pub/sub connection lost; reconnecting");
    }
}

/// Resolves when the commands connection moved to another primary (Sentinel); never on a
/// fixed server or a cluster.
async fn primary_moved(moves: &mut Option<tokio::sync::watch::Receiver<u64>>) -> Option<()> {
    match moves {
        Some(m) => m.changed().await.ok(),
        None => std::future::pending().await,
    }
}

/// Sweeps expired presence every `sweep_interval` while Redis is reachable.
async fn run_sweep(inner: Arc<Inner>) {
    let period = inner.config.sweep_interval;
    if period.is_zero() {
        return;
    }
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if !inner.connected.load(Ordering::Relaxed) {
            continue;
        }
        if let Err(e) = inner.sweep().await {
            tracing::debug!(error = %e, "presence sweep failed");
        }
    }
}

// ---------------------------------------------------------------- encoding

fn as_bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn as_str(v: &Value) -> Option<&str> {
    as_bytes(v).and_then(|b| std::str::from_utf8(b).ok())
}

fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        other => as_str(other)?.parse().ok(),
    }
}

/// `len:bytes`.
fn put_field(out: &mut Vec<u8>, field: &[u8]) {
    let _ = write!(out, "{}:", field.len());
    out.extend_from_slice(field);
}

/// `-` for none, `len:bytes` for some.
fn put_opt(out: &mut Vec<u8>, field: Option<&[u8]>) {
    match field {
        None => out.push(b'-'),
        Some(f) => put_field(out, f),
    }
}

fn take_field<'a>(input: &mut &'a [u8]) -> Option<&'a [u8]> {
    let colon = input.iter().position(|&b| b == b':')?;
    let len: usize = std::str::from_utf8(&input[..colon]).ok()?.parse().ok()?;
    let rest = &input[colon + 1..];
    let field = rest.get(..len)?;
    *input = &rest[len..];
    Some(field)
}

fn take_opt<'a>(input: &mut &'a [u8]) -> Option<Option<&'a [u8]>> {
    if let Some(rest) = input.strip_prefix(b"-") {
        *input = rest;
        return Some(None);
    }
    take_field(input).map(Some)
}

fn take_line<'a>(input: &mut &'a [u8]) -> Option<&'a [u8]> {
    let nl = input.iter().position(|&b| b == b'\n')?;
    let line = &input[..nl];
    *input = &input[nl + 1..];
    Some(line)
}

/// A publication's stored and published form: exclude, from, then the data.
fn encode_body(data: &[u8], from: Option<&[u8]>, exclude: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + from.map_or(0, <[u8]>::len) + 32);
    put_opt(&mut out, exclude.map(str::as_bytes));
    put_opt(&mut out, from);
    out.extend_from_slice(data);
    out
}

type Body = (Option<Arc<str>>, Option<Bytes>, Bytes);

fn decode_body(mut body: &[u8]) -> Option<Body> {
    let exclude = take_opt(&mut body)?
        .map(|e| std::str::from_utf8(e).map(Arc::from))
        .transpose()
        .ok()?;
    let from = take_opt(&mut body)?.map(Bytes::copy_from_slice);
    Some((exclude, from, Bytes::copy_from_slice(body)))
}

/// A presence entry's stored form: the user, then `-` or `+` and the info.
fn encode_entry(entry: &PresenceEntry) -> Vec<u8> {
    let mut out = Vec::new();
    put_field(&mut out, entry.user.as_bytes());
    match &entry.info {
        None => out.push(b'-'),
        Some(info) => {
            out.push(b'+');
            out.extend_from_slice(info);
        }
    }
    out
}

fn decode_entry(connection: Arc<str>, mut entry: &[u8]) -> Option<PresenceEntry> {
    let user = std::str::from_utf8(take_field(&mut entry)?).ok()?.into();
    let info = match entry.split_first()? {
        (b'-', _) => None,
        (b'+', info) => Some(Bytes::copy_from_slice(info)),
        _ => return None,
    };
    Some(PresenceEntry {
        connection,
        user,
        info,
    })
}

/// A join or leave message: `j\n` or `l\n`, the connection, the entry.
fn encode_member(kind: u8, member: &PresenceEntry) -> Vec<u8> {
    let mut out = vec![kind, b'\n'];
    put_field(&mut out, member.connection.as_bytes());
    out.extend_from_slice(&encode_entry(member));
    out
}

fn decode_event(room: Arc<str>, payload: &[u8], empty: &Arc<str>) -> Option<NodeEvent> {
    let (&kind, _) = payload.split_first()?;
    let mut rest = &payload[1..];
    let header = take_line(&mut rest)?;
    Some(match kind {
        b'p' => {
            let mut header = header;
            let epoch = std::str::from_utf8(header).ok()?;
            // The header is the epoch; the offset is on the next line.
            header = take_line(&mut rest)?;
            let offset: u64 = std::str::from_utf8(header).ok()?.parse().ok()?;
            let (exclude, from, data) = decode_body(rest)?;
            NodeEvent::Publication(Arc::new(Publication {
                room,
                offset,
                epoch: Arc::from(epoch),
                data,
                from,
                exclude,
                ephemeral: false,
            }))
        }
        b'e' => {
            let (exclude, from, data) = decode_body(rest)?;
            NodeEvent::Publication(Arc::new(Publication {
                room,
                offset: 0,
                epoch: empty.clone(),
                data,
                from,
                exclude,
                ephemeral: true,
            }))
        }
        b'j' | b'l' => {
            let connection = std::str::from_utf8(take_field(&mut rest)?).ok()?.into();
            let member = decode_entry(connection, rest)?;
            if kind == b'j' {
                NodeEvent::Join { room, member }
            } else {
                NodeEvent::Leave { room, member }
            }
        }
        b'b' => {
            let (&binary, mut rest) = rest.split_first()?;
            let exclude = take_opt(&mut rest)?
                .map(|e| std::str::from_utf8(e).map(Arc::from))
                .transpose()
                .ok()?;
            NodeEvent::Broadcast {
                room,
                message: RawMessage {
                    binary: binary == b'1',
                    payload: Bytes::copy_from_slice(rest),
                    exclude,
                },
            }
        }
        _ => return None,
    })
}

fn encode_command(command: &ClusterCommand) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    match command {
        ClusterCommand::Disconnect { user, code, reason } => {
            out.push(b'd');
            put_field(&mut out, user.as_bytes());
            put_field(&mut out, code.to_string().as_bytes());
            out.extend_from_slice(reason.as_bytes());
        }
        ClusterCommand::Subscribe { user, room } => {
            out.push(b's');
            put_field(&mut out, user.as_bytes());
            out.extend_from_slice(room.as_bytes());
        }
        ClusterCommand::Unsubscribe { user, room } => {
            out.push(b'u');
            put_field(&mut out, user.as_bytes());
            out.extend_from_slice(room.as_bytes());
        }
        #[allow(unreachable_patterns)]
        _ => return None,
    }
    Some(out)
}

fn decode_command(payload: &[u8]) -> Option<ClusterCommand> {
    let (&kind, mut rest) = payload.split_first()?;
    let user: Arc<str> = std::str::from_utf8(take_field(&mut rest)?).ok()?.into();
    Some(match kind {
        b'd' => {
            let code = std::str::from_utf8(take_field(&mut rest)?)
                .ok()?
                .parse()
                .ok()?;
            let reason = std::str::from_utf8(rest).ok()?.to_owned();
            ClusterCommand::Disconnect { user, code, reason }
        }
        b's' | b'u' => {
            let room = std::str::from_utf8(rest).ok()?.into();
            if kind == b's' {
                ClusterCommand::Subscribe { user, room }
            } else {
                ClusterCommand::Unsubscribe { user, room }
            }
        }
        _ => return None,
    })
}

/// Decodes `payload` as each message the Redis broker reads back from Redis (a pub/sub event,
/// a cluster command, a presence entry, a stored publication's body), for the fuzz target
/// `redis_payload` and its seeds' test. Never panics on any input; what decodes as a command,
/// an entry or a body encodes again to something that decodes to the same.
#[doc(hidden)]
pub fn fuzz_decode(payload: &[u8]) {
    let empty: Arc<str> = Arc::from("");
    let _ = decode_event(Arc::from("r"), payload, &empty);
    if let Some(command) = decode_command(payload) {
        let again = encode_command(&command).and_then(|c| decode_command(&c));
        assert_eq!(format!("{again:?}"), format!("{:?}", Some(&command)));
    }
    if let Some(entry) = decode_entry(Arc::from("c"), payload) {
        let again = decode_entry(Arc::from("c"), &encode_entry(&entry));
        assert_eq!(again.as_ref(), Some(&entry));
    }
    if let Some((exclude, from, data)) = decode_body(payload) {
        let again = encode_body(&data, from.as_deref(), exclude.as_deref());
        assert_eq!(decode_body(&again), Some((exclude, from, data)));
    }
}

/// A presence entry's member in the deployment's index: `<len>:<room><connection>`.
fn index_member(room: &str, connection: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(room.len() + connection.len() + 8);
    put_field(&mut out, room.as_bytes());
    out.extend_from_slice(connection);
    out
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

// ---------------------------------------------------------------- the trait

impl Broker for RedisBroker {
    fn publish<'a>(
        &'a self,
        room: &'a str,
        data: Bytes,
        from: Option<Bytes>,
        opts: PublishOptions,
    ) -> BoxFuture<'a, Result<PublishResult, BrokerError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let body = encode_body(&data, from.as_deref(), opts.exclude.as_deref());
            let idem = match &opts.idempotency_key {
                Some(key) => inner.key(room, &format!("k:{key}")),
                None => inner.key(room, "k"),
            };
            let mut conn = inner.conn();
            let reply: Vec<Value> = inner
                .scripts
                .publish
                .key(inner.key(room, "m"))
                .key(inner.key(room, "h"))
                .key(idem)
                .arg(crate::ids::random_base62(8))
                .arg(if opts.ephemeral { "1" } else { "0" })
                .arg(opts.history_size)
                .arg(millis(opts.history_ttl))
                .arg(millis(inner.config.meta_ttl))
                .arg(if opts.idempotency_key.is_some() {
                    "1"
                } else {
                    "0"
                })
                .arg(body)
                .arg(inner.key(room, "c"))
                .arg(inner.publish)
                .invoke_async(&mut conn)
                .await
                .map_err(|e| unavailable("publish", e))?;
            // On the same connection, so that WAIT covers this publication (sentinel.rs).
            let replicas = inner
                .config
                .sentinel
                .as_ref()
                .map_or(0, |s| s.wait_for_replicas);
            if replicas > 0
                && !opts.ephemeral
                && let Some(primary) = conn.primary_mut()
            {
                primary
                    .wait_for_replicas(replicas, inner.config.timeout)
                    .await?;
            }
            let bad = || malformed("publish");
            let duplicate = reply.first().and_then(as_u64).ok_or_else(bad)? == 1;
            let position = if duplicate {
                let previous = reply.get(1).and_then(as_str).ok_or_else(bad)?;
                match previous.split_once('\n') {
                    None => None,
                    Some((epoch, offset)) => Some(StreamPosition::new(
                        epoch,
                        offset.parse::<u64>().map_err(|_| bad())?,
                    )),
                }
            } else if reply.len() >= 3 {
                let epoch = reply.get(1).and_then(as_str).ok_or_else(bad)?;
                let offset = reply.get(2).and_then(as_u64).ok_or_else(bad)?;
                Some(StreamPosition::new(epoch, offset))
            } else {
                None
            };
            Ok(PublishResult {
                position,
                duplicate,
            })
        })
    }

    fn publish_join<'a>(
        &'a self,
        room: &'a str,
        member: PresenceEntry,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            self.inner
                .publish_raw(room, encode_member(b'j', &member))
                .await
        })
    }

    fn publish_leave<'a>(
        &'a self,
        room: &'a str,
        member: PresenceEntry,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            self.inner
                .publish_raw(room, encode_member(b'l', &member))
                .await
        })
    }

    fn subscribe<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let channel = inner.key(room, "c").into_bytes();
            inner
                .channels
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(channel.clone().into_boxed_slice())
                .or_insert_with(|| Arc::from(room));
            let result = match inner.pubsub_conn() {
                Ok(conn) => conn
                    .subscribe(std::slice::from_ref(&channel))
                    .await
                    .map_err(|e| unavailable("subscribe", e)),
                Err(e) => Err(e),
            };
            if result.is_err() {
                inner
                    .channels
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(channel.as_slice());
            }
            result
        })
    }

    fn unsubscribe<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let channel = inner.key(room, "c").into_bytes();
            inner
                .channels
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(channel.as_slice());
            // Down: the reconnect does not resubscribe it, which is the unsubscription.
            if let Ok(conn) = inner.pubsub_conn() {
                conn.unsubscribe(&channel)
                    .await
                    .map_err(|e| unavailable("unsubscribe", e))?;
            }
            Ok(())
        })
    }

    fn subscribe_many<'a>(
        &'a self,
        rooms: &'a [Arc<str>],
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let channels: Vec<Vec<u8>> = rooms
                .iter()
                .map(|r| inner.key(r, "c").into_bytes())
                .collect();
            {
                let mut map = inner
                    .channels
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                for (channel, room) in channels.iter().zip(rooms) {
                    map.entry(channel.clone().into_boxed_slice())
                        .or_insert_with(|| room.clone());
                }
            }
            let conn = inner.pubsub_conn()?;
            conn.subscribe(&channels)
                .await
                .map_err(|e| unavailable("subscribe", e))
        })
    }

    fn position<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Result<StreamPosition, BrokerError>> {
        Box::pin(async move {
            let query = HistoryQuery {
                limit: 0,
                ..HistoryQuery::default()
            };
            Ok(self.inner.read(room, &query).await?.0)
        })
    }

    fn history<'a>(
        &'a self,
        room: &'a str,
        query: HistoryQuery,
    ) -> BoxFuture<'a, Result<HistoryResult, BrokerError>> {
        Box::pin(async move {
            let (position, status, publications) = self.inner.read(room, &query).await?;
            if status == 'm' {
                let since = query.since.map(|s| s.epoch).unwrap_or_default();
                return Err(BrokerError::EpochMismatch {
                    since,
                    current: position,
                });
            }
            Ok(HistoryResult {
                position,
                publications,
                recoverable: status == '1',
            })
        })
    }

    fn remove_history<'a>(
        &'a self,
        room: &'a str,
    ) -> BoxFuture<'a, Result<StreamPosition, BrokerError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let (epoch, top): (String, u64) = inner
                .scripts
                .remove_history
                .key(inner.key(room, "m"))
                .key(inner.key(room, "h"))
                .arg(crate::ids::random_base62(8))
                .arg(millis(inner.config.meta_ttl))
                .invoke_async(&mut inner.conn())
                .await
                .map_err(|e| unavailable("remove history", e))?;
            Ok(StreamPosition::new(epoch, top))
        })
    }

    fn broadcast<'a>(
        &'a self,
        room: &'a str,
        message: RawMessage,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(message.payload.len() + 16);
            out.extend_from_slice(b"b\n");
            out.push(if message.binary { b'1' } else { b'0' });
            put_opt(&mut out, message.exclude.as_deref().map(str::as_bytes));
            out.extend_from_slice(&message.payload);
            self.inner.publish_raw(room, out).await
        })
    }

    fn command<'a>(&'a self, command: ClusterCommand) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let Some(payload) = encode_command(&command) else {
                return Ok(());
            };
            let mut conn = self.inner.conn();
            redis::cmd(self.inner.publish)
                .arg(&self.inner.command_channel)
                .arg(payload)
                .exec_async(&mut conn)
                .await
                .map_err(|e| unavailable("command", e))
        })
    }

    fn report<'a>(&'a self, report: NodeReport) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(self.inner.report(report))
    }

    fn cluster(&self) -> BoxFuture<'_, Result<Option<Vec<NodeReport>>, BrokerError>> {
        Box::pin(async move { self.inner.cluster().await.map(Some) })
    }

    fn admission(&self) -> Option<Arc<dyn crate::limits::ClusterAdmission>> {
        Some(self.admission.clone())
    }

    fn ready(&self) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            let inner = &self.inner;
            if !inner.connected.load(Ordering::Relaxed) {
                return Err(BrokerError::Unavailable {
                    message: "redis: the pub/sub connection is down, reconnecting".to_owned(),
                    source: None,
                });
            }
            redis::cmd("PING")
                .exec_async(&mut inner.conn())
                .await
                .map_err(|e| unavailable("ping", e))
        })
    }
}

/// Milliseconds since the Unix epoch: the nodes' reports expire by the wall clock, so that
/// every node agrees on them (within the clocks' skew, far below the ttl).
fn wall_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Inner {
    /// `P:{g}:nodes`: the reporting nodes by expiry; `P:{g}:node:<id>`: one's figures;
    /// `P:{g}:node:<id>:r`: its rooms → local subscribers. One hash tag, so that a report is
    /// one transaction on a cluster too.
    fn node_key(&self, id: &str, suffix: &str) -> String {
        format!("{}:{{g}}:node:{id}{suffix}", self.config.prefix)
    }

    fn nodes_key(&self) -> String {
        format!("{}:{{g}}:nodes", self.config.prefix)
    }

    async fn report(&self, report: NodeReport) -> Result<(), BrokerError> {
        let ttl = millis(self.config.presence_ttl).max(1);
        let rooms_key = self.node_key(&report.id, ":r");
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("SET")
            .arg(self.node_key(&report.id, ""))
            .arg(&report.info)
            .arg("PX")
            .arg(ttl)
            .ignore()
            .cmd("DEL")
            .arg(&rooms_key)
            .ignore();
        // HSET in batches, so that a node with many rooms sends bounded commands.
        for chunk in report.rooms.chunks(1000) {
            let cmd = pipe.cmd("HSET").arg(&rooms_key);
            for (room, n) in chunk {
                cmd.arg(room).arg(n);
            }
            cmd.ignore();
        }
        pipe.cmd("PEXPIRE")
            .arg(&rooms_key)
            .arg(ttl)
            .ignore()
            .cmd("ZADD")
            .arg(self.nodes_key())
            .arg(wall_millis() + ttl)
            .arg(&report.id)
            .ignore();
        pipe.exec_async(&mut self.conn())
            .await
            .map_err(|e| unavailable("node report", e))
    }

    async fn cluster(&self) -> Result<Vec<NodeReport>, BrokerError> {
        let nodes_key = self.nodes_key();
        let mut conn = self.conn();
        let (ids,): (Vec<String>,) = redis::pipe()
            .cmd("ZREMRANGEBYSCORE")
            .arg(&nodes_key)
            .arg("-inf")
            .arg(wall_millis())
            .ignore()
            .cmd("ZRANGE")
            .arg(&nodes_key)
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .map_err(|e| unavailable("node reports", e))?;
        let mut reports = Vec::with_capacity(ids.len());
        for id in ids {
            let (info, rooms): (Option<String>, HashMap<String, u64>) = redis::pipe()
                .cmd("GET")
                .arg(self.node_key(&id, ""))
                .cmd("HGETALL")
                .arg(self.node_key(&id, ":r"))
                .query_async(&mut conn)
                .await
                .map_err(|e| unavailable("node reports", e))?;
            // Gone between the two reads: it expired.
            if let Some(info) = info {
                let rooms = rooms.into_iter().collect();
                reports.push(NodeReport { id, info, rooms });
            }
        }
        Ok(reports)
    }
}

impl Presence for RedisBroker {
    fn presence_add<'a>(
        &'a self,
        room: &'a str,
        entry: PresenceEntry,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let ttl = millis(inner.config.presence_ttl);
            let mut call = inner.scripts.presence.prepare_invoke();
            call.key(inner.key(room, "p"))
                .arg("add")
                .arg(&inner.config.prefix)
                .arg(inner.publish)
                .arg(room)
                .arg(&*entry.connection)
                .arg(&*entry.user)
                .arg(encode_entry(&entry))
                .arg(ttl);
            let add = async {
                call.invoke_async::<()>(&mut inner.conn())
                    .await
                    .map_err(|e| unavailable("presence add", e))
            };
            // Both at once (one round trip of latency): either may land without the other,
            // which the sweep and the refresh tolerate (module doc, Presence).
            let index = inner.index(vec![(index_member(room, entry.connection.as_bytes()), ttl)]);
            futures_util::future::try_join(add, index).await.map(drop)
        })
    }

    fn presence_remove<'a>(
        &'a self,
        room: &'a str,
        connection: &'a str,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let inner = &self.inner;
            inner
                .scripts
                .presence
                .key(inner.key(room, "p"))
                .arg("remove")
                .arg(&inner.config.prefix)
                .arg(inner.publish)
                .arg(room)
                .arg(connection)
                .invoke_async::<()>(&mut inner.conn())
                .await
                .map_err(|e| unavailable("presence remove", e))?;
            // Left behind on failure, the index entry is dropped by a sweep once it expires.
            redis::cmd("ZREM")
                .arg(&inner.presence_index)
                .arg(index_member(room, connection.as_bytes()))
                .exec_async(&mut inner.conn())
                .await
                .map_err(|e| unavailable("presence remove", e))
        })
    }

    fn presence_list<'a>(
        &'a self,
        room: &'a str,
        cursor: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<PresencePage, BrokerError>> {
        Box::pin(async move {
            let after = cursor.map(decode_cursor).transpose()?;
            let inner = &self.inner;
            let reply: Vec<Value> = inner
                .scripts
                .presence
                .key(inner.key(room, "p"))
                .arg("list")
                .arg(&inner.config.prefix)
                .arg(inner.publish)
                .arg(room)
                .arg(after.as_deref().unwrap_or(""))
                .arg(limit)
                .invoke_async(&mut inner.conn())
                .await
                .map_err(|e| unavailable("presence", e))?;
            let bad = || malformed("presence");
            let connections = reply.first().and_then(as_u64).ok_or_else(bad)? as usize;
            let users = reply.get(1).and_then(as_u64).ok_or_else(bad)? as usize;
            let more = reply.get(2).and_then(as_u64).ok_or_else(bad)? == 1;
            let mut members = Vec::with_capacity(reply.len().saturating_sub(3) / 2);
            for pair in reply.get(3..).unwrap_or_default().chunks_exact(2) {
                let connection: Arc<str> = as_str(&pair[0]).ok_or_else(bad)?.into();
                let entry = as_bytes(&pair[1]).ok_or_else(bad)?;
                // Removed between the page and its read: skip it.
                if entry.is_empty() {
                    continue;
                }
                members.push(decode_entry(connection, entry).ok_or_else(bad)?);
            }
            let next_cursor = match (more, members.last()) {
                (true, Some(last)) => Some(encode_cursor(&last.connection)),
                _ => None,
            };
            Ok(PresencePage {
                members,
                next_cursor,
                connections,
                users,
            })
        })
    }

    fn presence_ttl(&self) -> Option<Duration> {
        Some(self.inner.config.presence_ttl)
    }

    fn presence_refresh<'a>(
        &'a self,
        entries: &'a [(Arc<str>, PresenceEntry)],
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        // A few hundred entries per script call: a node's whole presence in a few round trips,
        // without holding Redis for long in one script.
        const BATCH: usize = 256;
        Box::pin(async move {
            let inner = &self.inner;
            let ttl = millis(inner.config.presence_ttl);
            // A script call may only touch one slot: the entries grouped by their room's slot
            // (one group on a single server), many calls in flight at once.
            let mut slots: HashMap<u16, Vec<&(Arc<str>, PresenceEntry)>> = HashMap::new();
            for item in entries {
                let slot = if inner.connector.sharded() {
                    conn::slot(&item.0)
                } else {
                    0
                };
                slots.entry(slot).or_default().push(item);
            }
            let mut calls: Vec<BoxFuture<'_, Result<(), BrokerError>>> = Vec::new();
            for group in slots.values() {
                for batch in group.chunks(BATCH) {
                    let mut call = inner.scripts.presence.prepare_invoke();
                    call.key(inner.key(&batch[0].0, "p"))
                        .arg("refresh")
                        .arg(&inner.config.prefix)
                        .arg(inner.publish)
                        .arg(ttl);
                    for (room, entry) in batch.iter().copied() {
                        call.arg(&**room)
                            .arg(&*entry.connection)
                            .arg(&*entry.user)
                            .arg(encode_entry(entry));
                    }
                    calls.push(Box::pin(async move {
                        call.invoke_async::<()>(&mut inner.conn())
                            .await
                            .map_err(|e| unavailable("presence refresh", e))
                    }));
                }
            }
            conn::in_flight(calls).await?;
            // The index entries: those the sweeps lost, or took while they were refreshed.
            for batch in entries.chunks(BATCH) {
                let members = batch
                    .iter()
                    .map(|(room, entry)| (index_member(room, entry.connection.as_bytes()), ttl))
                    .collect();
                inner.index(members).await?;
            }
            Ok(())
        })
    }
}

mod caps;
mod conn;
mod sentinel;

pub use sentinel::RedisSentinelConfig;

#[cfg(test)]
mod tests;
