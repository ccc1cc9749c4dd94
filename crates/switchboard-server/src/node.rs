//! A node: one Switchboard process, and **the service every surface calls**.
//!
//! The v1 protocol handler (and the HTTP server API, SSE and the proxies after it) call only
//! this API: [`Node::publish`], [`Node::broadcast`], [`Node::subscribe`],
//! [`Node::unsubscribe`], [`Node::presence`], [`Node::history`], [`Node::history_remove`],
//! the per-user commands ([`Node::subscribe_user`], [`Node::unsubscribe_user`],
//! [`Node::disconnect_user`]), [`Node::rooms`] and [`Node::info`]. Who may call what for a
//! client is [`Access`]'s to say; the node carries requests out: it owns the hub (local rooms,
//! members and users), the broker (what nodes share), the access policy and the
//! configuration. Route and server assembly live in `app`.
//!
//! Broker events reach the hub's dispatchers (`hub::dispatch`), which fan each one out to the
//! room's local members, encoded once.

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    sync::{Arc, Weak},
};

use bytes::Bytes;
use switchboard_protocol::Disconnect;

use crate::{
    access::Access,
    auth::Verifier,
    broker::{
        Broker, BrokerError, ClusterCommand, HistoryQuery, HistoryResult, MemoryBroker, NodeReport,
        NodeSink, PresenceEntry, PresencePage, PublishOptions, PublishResult, RawMessage,
        StreamPosition,
    },
    config::{Config, NamespaceConfig},
    conn::ConnShared,
    conn::User,
    error::Refused,
    hub::{Change, Hub, dispatch},
    metrics::{BrokerOp, Metrics},
};

/// Stripes of the per-room lock that serialises node-level subscribe/unsubscribe.
const ROOM_LOCKS: usize = 256;

/// One Switchboard process. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Node {
    inner: Arc<NodeInner>,
}

struct NodeInner {
    id: String,
    hub: Hub,
    broker: Arc<dyn Broker>,
    /// The node's sink, also told when the node subscribes to a room afresh.
    dispatchers: Arc<dispatch::Dispatchers>,
    access: Access,
    /// The application backend's proxies (docs/proxies.md).
    proxies: crate::proxy::Proxies,
    room_locks: Box<[tokio::sync::Mutex<()>]>,
    hasher: RandomState,
    /// With a broker whose presence entries expire: this node's entries, added again by a
    /// task of the node within the ttl. `None` (nothing kept) otherwise.
    presence: Option<LocalPresence>,
    /// When the node was built: its `uptime_s`.
    started: std::time::Instant,
    /// `limits.max_memory`, when set.
    memory: Option<Arc<crate::limits::MemoryBudget>>,
    /// The listener's certificate (`[tls]`), read when the node is built.
    tls: Option<Arc<crate::tls::ServerTls>>,
}

/// This node's presence entries, by room and connection (only kept when they must be
/// refreshed); bounded by the node's subscriptions.
type LocalPresence = std::sync::Mutex<HashMap<Arc<str>, HashMap<Arc<str>, PresenceEntry>>>;

impl std::fmt::Debug for NodeInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.id)
            .field("listen", &self.access.config().listen)
            .finish_non_exhaustive()
    }
}

/// Why a node could not be built.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The `auth` section is unusable.
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthConfigError),
    /// A configuration key is unusable (e.g. `proxies.ca` or `tls.cert` cannot be read).
    #[error("key '{key}': {message}")]
    Config {
        /// The key's dotted path.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// The broker could not be set up.
    #[error("broker: {0}")]
    Broker(#[from] BrokerError),
}

impl From<crate::tls::TlsConfigError> for NodeError {
    fn from(e: crate::tls::TlsConfigError) -> Self {
        NodeError::Config {
            key: e.key.into(),
            message: e.message,
        }
    }
}

/// A connection as a member of rooms: its shared state and who it is.
#[derive(Debug, Clone, Copy)]
pub struct Member<'a> {
    /// The connection's shared state (its queue and holds).
    pub conn: &'a Arc<ConnShared>,
    /// Its user.
    pub user: &'a User,
}

impl Member<'_> {
    fn presence(&self) -> PresenceEntry {
        PresenceEntry {
            connection: self.conn.id.clone(),
            user: self.user.id.clone(),
            info: self.user.info.clone(),
        }
    }
}

/// What a subscription read: the reply's position and, with `since`, whether and what it
/// recovered.
#[derive(Debug)]
pub struct Subscribed {
    /// The room's stream position the reply carries.
    pub position: StreamPosition,
    /// With `since`: whether the missed publications could be recovered.
    pub recovered: Option<bool>,
    /// With `since` and `recovered`: the missed publications, oldest first.
    pub publications: Vec<Arc<crate::broker::Publication>>,
}

/// A publication through the service: the same path for a client's `publish` and the server
/// API's, so both get the same offsets, history, fan-out and idempotency.
#[derive(Debug, Clone, Default)]
pub struct Publish {
    /// Raw JSON of `data`.
    pub data: Bytes,
    /// Raw JSON of the `from` object (`None` for the server API).
    pub from: Option<Bytes>,
    /// Delivered live only: not numbered, not stored.
    pub ephemeral: bool,
    /// Makes a retried publish a no-op within the room's `history_ttl`.
    pub idempotency_key: Option<String>,
    /// A connection that must not receive it live (the publisher with `echo: false`).
    pub exclude: Option<Arc<str>>,
}

/// A node's figures for the server API's `info`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NodeInfo {
    /// The node's id.
    pub id: String,
    /// Open connections on this node.
    pub connections: usize,
    /// Users with a connection on this node.
    pub users: usize,
    /// Rooms with a local member.
    pub rooms: usize,
}

impl Node {
    /// Builds a node with the in-memory broker. Must be called inside a tokio runtime (it
    /// spawns the dispatchers).
    pub fn new(config: Config) -> Result<Node, NodeError> {
        let memory = crate::broker::MemoryBrokerConfig {
            meta_ttl: config.limits.room_metadata_ttl,
            history_memory: config.limits.history_memory.as_usize(),
            max_rooms: config.limits.max_rooms,
            ..crate::broker::MemoryBrokerConfig::default()
        };
        let parts = Parts::new(config)?;
        let broker = Arc::new(MemoryBroker::with_config(memory, parts.dispatchers.clone()));
        let node = parts.assemble(broker.clone());
        // The budgets' evictions and refusals, in /metrics.
        let metrics = node.metrics().clone();
        broker.on_budget(Arc::new(move |event, rooms| {
            use crate::{broker::memory::BudgetEvent, metrics::Budget};
            let kind = match event {
                BudgetEvent::HistoryDropped => Budget::HistoryDropped,
                BudgetEvent::RoomsForgotten => Budget::RoomForgotten,
                BudgetEvent::RoomRefused => Budget::RoomRefused,
            };
            metrics.budget(kind, rooms as u64);
        }));
        Ok(node)
    }

    /// Builds a node on the broker that `broker` makes, asynchronously (a remote broker
    /// connects first), for the node's event sink. Must be called inside a tokio runtime: it
    /// spawns one dispatcher per runtime worker.
    pub async fn with_broker<F, Fut>(config: Config, broker: F) -> Result<Node, NodeError>
    where
        F: FnOnce(Arc<dyn NodeSink>) -> Fut,
        Fut: std::future::Future<Output = Result<Arc<dyn Broker>, BrokerError>>,
    {
        let parts = Parts::new(config)?;
        let broker = broker(parts.dispatchers.clone()).await?;
        Ok(parts.assemble(broker))
    }

    /// The listener's certificate when `[tls]` is configured.
    pub fn tls(&self) -> Option<&Arc<crate::tls::ServerTls>> {
        self.inner.tls.as_ref()
    }

    /// Reads the `[tls]` certificate and key again (what `SIGHUP` does): handshakes from now
    /// on get the new certificate; established connections keep theirs. On an error (naming
    /// `tls.cert` or `tls.key`) the previous certificate stays. `Ok(false)` without `[tls]`.
    pub fn reload_tls(&self) -> Result<bool, NodeError> {
        let Some(tls) = &self.inner.tls else {
            return Ok(false);
        };
        match tls.reload() {
            Ok(()) => {
                tracing::info!(cert = %tls.cert_path().display(), "tls: certificate reloaded");
                Ok(true)
            }
            Err(e) => {
                tracing::error!(key = e.key, error = %e.message, "tls: reload failed; the previous certificate stays");
                Err(e.into())
            }
        }
    }

    /// The node's id.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The hub of local rooms, members and users.
    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    /// The broker.
    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.inner.broker
    }

    /// What this node counts for `/metrics` (its hub's metrics).
    pub fn metrics(&self) -> &Arc<Metrics> {
        self.inner.hub.metrics()
    }

    /// The memory budget (`limits.max_memory`), when one is set.
    pub fn memory_budget(&self) -> Option<&Arc<crate::limits::MemoryBudget>> {
        self.inner.memory.as_ref()
    }

    /// The access policy.
    pub fn access(&self) -> &Access {
        &self.inner.access
    }

    /// The application backend's proxies.
    pub fn proxies(&self) -> &crate::proxy::Proxies {
        &self.inner.proxies
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        self.inner.access.config()
    }

    /// Runs a broker operation, counting it, its failure and its latency.
    async fn timed<T>(
        &self,
        op: BrokerOp,
        call: impl std::future::Future<Output = Result<T, BrokerError>>,
    ) -> Result<T, BrokerError> {
        let started = std::time::Instant::now();
        let result = call.await;
        self.metrics()
            .broker_op(op, result.is_ok(), started.elapsed());
        result
    }

    fn room_lock(&self, room: &str) -> &tokio::sync::Mutex<()> {
        let i = self.inner.hasher.hash_one(room) as usize % ROOM_LOCKS;
        &self.inner.room_locks[i]
    }

    /// Subscribes a connection to `room` with exact recovery (the procedure in `broker`'s
    /// module docs), then adds it to the room's presence and publishes its `join`.
    ///
    /// `reply` makes the frame that must reach the connection before any live event of the
    /// room (the subscribe reply or `subscribed` push), from what was read; it is queued with
    /// the held events in order. The namespace's `max_subscribers` is checked and the member
    /// joined under the room's lock, so concurrent subscribes never pass it on this node. On
    /// error nothing is left behind.
    pub async fn subscribe(
        &self,
        member: Member<'_>,
        room: &Arc<str>,
        since: Option<StreamPosition>,
        reply: impl FnOnce(&Subscribed) -> Option<Bytes>,
    ) -> Result<Subscribed, Refused> {
        let read = self.begin_subscribe(member, room, since).await?;
        let first = reply(&read);
        self.finish_subscribe(member, room, &read, first).await;
        Ok(read)
    }

    /// The first half of [`Node::subscribe`]: the member joins the room with its live events
    /// held back, and the position or history is read. Call [`Node::finish_subscribe`] next
    /// (several rooms may be begun before any is finished: the `welcome` of server-side
    /// subscriptions goes out before the events of any of its rooms). On error nothing is left
    /// behind.
    pub async fn begin_subscribe(
        &self,
        member: Member<'_>,
        room: &Arc<str>,
        since: Option<StreamPosition>,
    ) -> Result<Subscribed, Refused> {
        let ns = self.inner.access.room(room)?;
        let (hub, broker) = (&self.inner.hub, &self.inner.broker);
        let conn = member.conn;
        conn.begin_subscribe(room);
        let joined = {
            let _guard = self.room_lock(room).lock().await;
            match self.check_room_size(room, ns).await {
                Err(e) => Err(e),
                Ok(()) => match hub.join(room, conn) {
                    Change::First => {
                        // Before the subscribe, so that every event of the new subscription
                        // reaches the dispatcher after it.
                        self.inner.dispatchers.reset(room);
                        match self
                            .timed(BrokerOp::Subscribe, broker.subscribe(room))
                            .await
                        {
                            Ok(()) => Ok(()),
                            Err(e) => {
                                hub.leave(room, conn);
                                Err(Refused::broker(&e))
                            }
                        }
                    }
                    _ => Ok(()),
                },
            }
        };
        if let Err(e) = joined {
            conn.end_subscribe(room, None, None);
            return Err(e);
        }
        match self.read_for_subscribe(room, since).await {
            Ok(read) => Ok(read),
            Err(e) => {
                conn.end_subscribe(room, None, None);
                self.leave_hub(room, conn).await;
                Err(Refused::broker(&e))
            }
        }
    }

    /// The second half of [`Node::subscribe`]: queues `first`, then the held events past what
    /// was read, then adds the member to presence and publishes its `join`.
    pub async fn finish_subscribe(
        &self,
        member: Member<'_>,
        room: &Arc<str>,
        read: &Subscribed,
        first: Option<Bytes>,
    ) {
        let position = (&read.position.epoch, read.position.offset);
        member.conn.end_subscribe(room, Some(position), first);
        if let Some(ns) = self.inner.access.namespace(room) {
            self.after_join(member, room, ns).await;
        }
    }

    /// `limit_exceeded` when `room` already has its namespace's `max_subscribers`.
    async fn check_room_size(&self, room: &str, ns: &NamespaceConfig) -> Result<(), Refused> {
        let Some(max) = ns.max_subscribers else {
            return Ok(());
        };
        let page = self
            .inner
            .broker
            .presence_list(room, None, 0)
            .await
            .map_err(|e| Refused::broker(&e))?;
        let local = self.inner.hub.members(room).map(|m| m.len()).unwrap_or(0);
        if page.connections.max(local) >= max {
            return Err(Refused::limit_exceeded(format!(
                "room '{room}' has its maximum of {max} subscribers"
            )));
        }
        Ok(())
    }

    async fn read_for_subscribe(
        &self,
        room: &str,
        since: Option<StreamPosition>,
    ) -> Result<Subscribed, BrokerError> {
        let broker = &self.inner.broker;
        let Some(since) = since else {
            let position = broker.position(room).await?;
            return Ok(Subscribed {
                position,
                recovered: None,
                publications: Vec::new(),
            });
        };
        let history = broker.history(room, HistoryQuery::recovery(since));
        let read = self.timed(BrokerOp::History, history).await;
        if let Ok(h) = &read {
            self.metrics().recovery(h.recoverable);
        } else if let Err(BrokerError::EpochMismatch { .. }) = &read {
            self.metrics().recovery(false);
        }
        match read {
            Ok(h) if h.recoverable => Ok(Subscribed {
                position: h.position,
                recovered: Some(true),
                publications: h.publications,
            }),
            Ok(h) => Ok(Subscribed {
                position: h.position,
                recovered: Some(false),
                publications: Vec::new(),
            }),
            Err(BrokerError::EpochMismatch { current, .. }) => Ok(Subscribed {
                position: current,
                recovered: Some(false),
                publications: Vec::new(),
            }),
            Err(e) => Err(e),
        }
    }

    /// Whether a join or leave in `room` is pushed: the namespace's `join_leave`, and the
    /// room's members on this node (counted after the change) at most
    /// `join_leave_max_members`, so that a join into a big room costs O(1) pushes, not
    /// O(members).
    fn join_leave_pushed(&self, room: &str, ns: &NamespaceConfig) -> bool {
        ns.join_leave
            && (ns.join_leave_max_members == 0
                || self
                    .inner
                    .hub
                    .members(room)
                    .is_none_or(|m| m.len() <= ns.join_leave_max_members))
    }

    /// Presence and the join push after a subscription.
    async fn after_join(&self, member: Member<'_>, room: &Arc<str>, ns: &NamespaceConfig) {
        let broker = &self.inner.broker;
        let id = member.conn.id();
        if ns.presence {
            if let Some(local) = &self.inner.presence {
                local
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(room.clone())
                    .or_default()
                    .insert(member.conn.id.clone(), member.presence());
            }
            let add = broker.presence_add(room, member.presence());
            if let Err(e) = self.timed(BrokerOp::PresenceAdd, add).await {
                tracing::warn!(conn = %id, room = %room, error = %e, "presence add failed");
            }
        }
        if self.join_leave_pushed(room, ns)
            && let Err(e) = broker.publish_join(room, member.presence()).await
        {
            tracing::warn!(conn = %id, room = %room, error = %e, "join push failed");
        }
    }

    /// Removes a connection from `room`: presence, hub membership, then the leave push, so
    /// whoever sees the `leave` no longer finds the connection in `presence` nor counted
    /// against `max_subscribers`. The caller forgets the room in the connection's own set.
    pub async fn unsubscribe(&self, member: Member<'_>, room: &str) {
        let ns = self.inner.access.namespace(room);
        let broker = &self.inner.broker;
        let id = member.conn.id();
        if ns.is_some_and(|n| n.presence) {
            if let Some(local) = &self.inner.presence {
                let mut local = local.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(entries) = local.get_mut(room) {
                    entries.remove(&member.conn.id);
                    if entries.is_empty() {
                        local.remove(room);
                    }
                }
            }
            let remove = broker.presence_remove(room, &member.conn.id);
            if let Err(e) = self.timed(BrokerOp::PresenceRemove, remove).await {
                tracing::warn!(conn = %id, room, error = %e, "presence remove failed");
            }
        }
        member.conn.forget(room);
        self.leave_hub(room, member.conn).await;
        if ns.is_some_and(|n| self.join_leave_pushed(room, n))
            && let Err(e) = broker.publish_leave(room, member.presence()).await
        {
            tracing::warn!(conn = %id, room, error = %e, "leave push failed");
        }
    }

    /// Adds a connection to `room` for the library API's broadcasts (no recovery, presence
    /// or join push: that is [`Node::subscribe`]'s), subscribing the node when it is the
    /// room's first local member.
    pub async fn join_room(&self, conn: &Arc<ConnShared>, room: &Arc<str>) -> Result<(), Refused> {
        let _guard = self.room_lock(room).lock().await;
        if self.inner.hub.join(room, conn) == Change::First {
            self.inner.dispatchers.reset(room);
            if let Err(e) = self
                .timed(BrokerOp::Subscribe, self.inner.broker.subscribe(room))
                .await
            {
                self.inner.hub.leave(room, conn);
                return Err(Refused::broker(&e));
            }
        }
        Ok(())
    }

    /// Removes a connection added with [`Node::join_room`].
    pub async fn leave_room(&self, conn: &ConnShared, room: &str) {
        self.leave_hub(room, conn).await;
    }

    /// Sends a message of an application's own protocol to the members of `rooms` on every
    /// node, framed once per node (the library API's broadcast).
    pub async fn broadcast_raw(&self, rooms: &[&str], message: RawMessage) -> Result<(), Refused> {
        for room in rooms {
            self.timed(
                BrokerOp::Broadcast,
                self.inner.broker.broadcast(room, message.clone()),
            )
            .await
            .map_err(|e| Refused::broker(&e))?;
        }
        Ok(())
    }

    /// Removes a connection from `room` on this node, unsubscribing the node when it was the
    /// last local member.
    async fn leave_hub(&self, room: &str, conn: &ConnShared) {
        let _guard = self.room_lock(room).lock().await;
        if self.inner.hub.leave(room, conn) == Change::Last
            && let Err(e) = self
                .timed(BrokerOp::Unsubscribe, self.inner.broker.unsubscribe(room))
                .await
        {
            tracing::warn!(room, error = %e, "broker unsubscribe failed");
        }
    }

    /// Publishes to `room` with the namespace's history settings.
    pub async fn publish(
        &self,
        room: &str,
        publication: Publish,
    ) -> Result<PublishResult, Refused> {
        let ns = self.inner.access.room(room)?;
        let opts = PublishOptions {
            ephemeral: publication.ephemeral,
            idempotency_key: publication.idempotency_key,
            history_size: ns.history_size,
            history_ttl: ns.history_ttl,
            exclude: publication.exclude,
        };
        let started = std::time::Instant::now();
        let result = self
            .inner
            .broker
            .publish(room, publication.data, publication.from, opts)
            .await;
        let metrics = self.metrics();
        metrics.broker_op(BrokerOp::Publish, result.is_ok(), started.elapsed());
        if result.is_ok() {
            metrics.publication(room);
        }
        result.map_err(|e| Refused::broker(&e))
    }

    /// Publishes the same publication to several rooms, one after the other; one result per
    /// room, in the order given.
    pub async fn broadcast(
        &self,
        rooms: &[&str],
        publication: Publish,
    ) -> Vec<Result<PublishResult, Refused>> {
        let mut results = Vec::with_capacity(rooms.len());
        for room in rooms {
            results.push(self.publish(room, publication.clone()).await);
        }
        results
    }

    /// A page of `room`'s presence (`limit` clamped to 1000).
    pub async fn presence(
        &self,
        room: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<PresencePage, Refused> {
        self.inner.access.room(room)?;
        let list = self
            .inner
            .broker
            .presence_list(room, cursor, limit.min(1000));
        self.timed(BrokerOp::Presence, list)
            .await
            .map_err(|e| match e {
                BrokerError::InvalidCursor => {
                    Refused::bad_request("field 'cursor' is not a cursor this server gave")
                }
                e => Refused::broker(&e),
            })
    }

    /// `room`'s history; `limit` defaults to and is clamped at the namespace's `history_size`.
    pub async fn history(
        &self,
        room: &str,
        since: Option<StreamPosition>,
        limit: Option<usize>,
        reverse: bool,
    ) -> Result<HistoryResult, Refused> {
        let ns = self.inner.access.room(room)?;
        let query = HistoryQuery {
            since,
            limit: limit.unwrap_or(ns.history_size).min(ns.history_size),
            reverse,
        };
        self.timed(BrokerOp::History, self.inner.broker.history(room, query))
            .await
            .map_err(|e| match e {
                BrokerError::EpochMismatch { since, current } => Refused::bad_request(format!(
                    "field 'since.epoch': '{since}' is not the room's epoch '{}'",
                    current.epoch
                )),
                e => Refused::broker(&e),
            })
    }

    /// Drops `room`'s history; the stream gets a new epoch (clients then cannot recover
    /// across it and are told `recovered: false`).
    pub async fn history_remove(&self, room: &str) -> Result<(), Refused> {
        self.inner.access.room(room)?;
        self.timed(
            BrokerOp::HistoryRemove,
            self.inner.broker.remove_history(room),
        )
        .await
        .map(|_| ())
        .map_err(|e| Refused::broker(&e))
    }

    /// Asks every connection of `user`, on every node, to subscribe to `room` (each sends its
    /// client a `subscribed` push).
    pub async fn subscribe_user(&self, user: &str, room: &str) -> Result<(), Refused> {
        self.inner.access.room(room)?;
        self.command(ClusterCommand::Subscribe {
            user: user.into(),
            room: room.into(),
        })
        .await
    }

    /// Asks every connection of `user`, on every node, to unsubscribe from `room` (each sends
    /// its client an `unsubscribed` push).
    pub async fn unsubscribe_user(&self, user: &str, room: &str) -> Result<(), Refused> {
        crate::access::valid_room(room)?;
        self.command(ClusterCommand::Unsubscribe {
            user: user.into(),
            room: room.into(),
        })
        .await
    }

    /// Closes every connection of `user`, on every node, with `disconnect`.
    pub async fn disconnect_user(&self, user: &str, disconnect: Disconnect) -> Result<(), Refused> {
        self.command(ClusterCommand::Disconnect {
            user: user.into(),
            code: disconnect.code.0,
            reason: disconnect.reason.into_owned(),
        })
        .await
    }

    async fn command(&self, command: ClusterCommand) -> Result<(), Refused> {
        self.timed(BrokerOp::Command, self.inner.broker.command(command))
            .await
            .map_err(|e| Refused::broker(&e))
    }

    /// Rooms with local members whose name starts with `prefix`, with their member counts.
    pub fn rooms(&self, prefix: &str) -> Vec<(Arc<str>, usize)> {
        self.inner.hub.rooms(prefix)
    }

    /// Seconds since this node was built.
    pub fn uptime(&self) -> std::time::Duration {
        self.inner.started.elapsed()
    }

    /// This node's figures and rooms as the server API shows them (`/api/info`,
    /// `/api/rooms`) and as it reports them to the other nodes.
    pub fn report(&self) -> NodeReport {
        report_of(&self.inner)
    }

    /// Every live node's latest report (this node's own replaced by its figures now), or
    /// `None` when the broker serves this node only.
    pub async fn cluster(&self) -> Result<Option<Vec<NodeReport>>, BrokerError> {
        let Some(mut reports) = self.inner.broker.cluster().await? else {
            return Ok(None);
        };
        reports.retain(|r| r.id != self.inner.id);
        reports.push(self.report());
        Ok(Some(reports))
    }

    /// This node's figures.
    pub fn info(&self) -> NodeInfo {
        let hub = &self.inner.hub;
        NodeInfo {
            id: self.inner.id.clone(),
            connections: hub.connection_count(),
            users: hub.user_count(),
            rooms: hub.room_count(),
        }
    }
}

/// What a node is made of before its broker exists (the broker is built for its sink).
struct Parts {
    config: Config,
    verifier: Verifier,
    /// The proxies' TLS client, read at start so that a bad `proxies.ca` stops it.
    proxy_tls: Arc<rustls::ClientConfig>,
    /// The listener's certificate, read at start so that a bad `[tls]` stops it.
    tls: Option<Arc<crate::tls::ServerTls>>,
    dispatchers: Arc<dispatch::Dispatchers>,
    receivers: Vec<tokio::sync::mpsc::UnboundedReceiver<dispatch::Dispatch>>,
}

impl Parts {
    /// Checks the configuration's keys and makes one dispatcher channel per runtime worker.
    fn new(config: Config) -> Result<Parts, NodeError> {
        let no_key = config.auth.secret.is_none() && config.auth.public_keys.is_empty();
        let verifier = if no_key && config.proxies.connect.is_some() {
            // The connect proxy identifies every connection without a token, so a server
            // whose backend only uses cookies needs no key (a token then never verifies).
            Verifier::new(&crate::auth::AuthConfig {
                anonymous: true,
                ..config.auth.clone()
            })?
        } else {
            Verifier::new(&config.auth)?
        };
        let proxy_tls = crate::proxy::Proxies::tls(&config.proxies)?;
        let tls = match (&config.tls.cert, &config.tls.key) {
            (Some(cert), Some(key)) => Some(Arc::new(
                crate::tls::ServerTls::load(cert, key).map_err(NodeError::from)?,
            )),
            _ => None,
        };
        let workers = tokio::runtime::Handle::current().metrics().num_workers();
        let (sink, receivers) = dispatch::Dispatchers::new(workers);
        Ok(Parts {
            config,
            verifier,
            proxy_tls,
            tls,
            dispatchers: Arc::new(sink),
            receivers,
        })
    }

    /// The node on `broker`, its dispatchers spawned.
    fn assemble(self, broker: Arc<dyn Broker>) -> Node {
        let Parts {
            config,
            verifier,
            proxy_tls,
            tls,
            dispatchers,
            receivers,
        } = self;
        let threshold = config.websocket.compression.threshold.as_usize();
        let namespaces = config.namespaces.keys().cloned();
        let hub = Hub::with_metrics(
            threshold,
            Arc::new(crate::metrics::Metrics::new(namespaces)),
        );
        let proxies = crate::proxy::Proxies::new(&config.proxies, proxy_tls, hub.metrics().clone());
        let id = config
            .node_id
            .clone()
            .unwrap_or_else(|| format!("n_{}", crate::ids::random_base62(8)));
        let quiet: Arc<std::collections::HashSet<String>> = Arc::new(
            config
                .namespaces
                .iter()
                .filter(|(_, ns)| !ns.join_leave)
                .map(|(name, _)| name.clone())
                .collect(),
        );
        let max_members: Arc<HashMap<String, usize>> = Arc::new(
            config
                .namespaces
                .iter()
                .filter(|(_, ns)| ns.join_leave_max_members > 0)
                .map(|(name, ns)| (name.clone(), ns.join_leave_max_members))
                .collect(),
        );
        for events in receivers {
            let mut dispatcher = dispatch::Dispatcher::new(hub.clone(), broker.clone(), threshold);
            dispatcher.quiet = quiet.clone();
            dispatcher.max_members = max_members.clone();
            tokio::spawn(dispatcher.run(events));
        }
        let ttl = broker.presence_ttl();
        let memory = config
            .limits
            .max_memory
            .map(|m| Arc::new(crate::limits::MemoryBudget::new(m.0)));
        let node = Node {
            inner: Arc::new(NodeInner {
                id,
                hub,
                broker,
                dispatchers,
                access: Access::new(config, verifier),
                proxies,
                room_locks: (0..ROOM_LOCKS)
                    .map(|_| tokio::sync::Mutex::new(()))
                    .collect(),
                hasher: RandomState::new(),
                presence: ttl.map(|_| Default::default()),
                started: std::time::Instant::now(),
                memory,
                tls,
            }),
        };
        if let Some(ttl) = ttl {
            tokio::spawn(refresh_presence(Arc::downgrade(&node.inner), ttl));
        }
        node
    }
}

fn report_of(inner: &NodeInner) -> NodeReport {
    let hub = &inner.hub;
    let rooms: Vec<(String, u64)> = hub
        .rooms("")
        .into_iter()
        .map(|(room, n)| (room.to_string(), n as u64))
        .collect();
    let info = serde_json::json!({
        "id": inner.id,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": inner.started.elapsed().as_secs(),
        "connections": hub.connection_count(),
        "users": hub.user_count(),
        "subscriptions": rooms.iter().map(|(_, n)| n).sum::<u64>(),
        "rooms": rooms.len(),
    });
    NodeReport {
        id: inner.id.clone(),
        info: info.to_string(),
        rooms,
    }
}

/// Adds this node's presence entries again every third of the broker's ttl, so that they
/// live as long as their connections and no longer than a ttl after their node is gone. Ends
/// when the node is dropped.
async fn refresh_presence(node: Weak<NodeInner>, ttl: std::time::Duration) {
    let period = (ttl / 3).max(std::time::Duration::from_millis(10));
    // The first tick at once: the node's report appears as it starts (no entries yet).
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(inner) = node.upgrade() else { return };
        let Some(local) = &inner.presence else { return };
        // A copy, so that no lock is held across the broker's awaits.
        let entries: Vec<(Arc<str>, PresenceEntry)> = local
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .flat_map(|(room, entries)| entries.values().map(|e| (room.clone(), e.clone())))
            .collect();
        if let Err(e) = inner.broker.presence_refresh(&entries).await {
            tracing::warn!(entries = entries.len(), error = %e, "presence refresh failed");
        }
        // The node's report lives as long as its presence entries: renewed with them.
        if let Err(e) = inner.broker.report(report_of(&inner)).await {
            tracing::warn!(error = %e, "node report failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::broker::MemoryBrokerConfig;

    #[tokio::test(start_paused = true)]
    async fn presence_entries_outlive_the_ttl_while_their_node_refreshes_them() {
        let mut config = Config::default();
        config.auth.anonymous = true;
        let ttl = Duration::from_millis(300);
        let node = Node::with_broker(config, |sink| async move {
            let config = MemoryBrokerConfig {
                presence_ttl: Some(ttl),
                sweep_interval: Duration::from_millis(50),
                ..MemoryBrokerConfig::default()
            };
            Ok(Arc::new(MemoryBroker::with_config(config, sink)) as Arc<dyn Broker>)
        })
        .await
        .unwrap();
        let conn = Arc::new(ConnShared::new("c_alice".into(), 1 << 20, None));
        let user = User {
            id: "alice".into(),
            ..User::default()
        };
        let member = Member {
            conn: &conn,
            user: &user,
        };
        let room: Arc<str> = "chat:ttl".into();
        node.subscribe(member, &room, None, |_| None).await.unwrap();
        // An entry that no node refreshes: its node is gone.
        let orphan = PresenceEntry {
            connection: "c_gone".into(),
            user: "bob".into(),
            info: None,
        };
        node.broker().presence_add(&room, orphan).await.unwrap();
        assert_eq!(node.presence(&room, None, 10).await.unwrap().connections, 2);

        // The paused clock runs ahead while every task waits: four ttls pass.
        tokio::time::sleep(ttl * 4).await;
        let page = node.presence(&room, None, 10).await.unwrap();
        assert_eq!(page.connections, 1, "{page:?}");
        assert_eq!(&*page.members[0].connection, "c_alice");

        node.unsubscribe(member, &room).await;
        assert_eq!(node.presence(&room, None, 10).await.unwrap().connections, 0);
        tokio::time::sleep(ttl * 2).await;
        assert_eq!(
            node.presence(&room, None, 10).await.unwrap().connections,
            0,
            "an unsubscribed connection is not refreshed back"
        );
    }
}
