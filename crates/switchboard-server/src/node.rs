//! A node: one Switchboard process. It owns the hub (local rooms and members), the broker
//! (what nodes share), the token verifier and the configuration, and assembles the routes
//! the server serves.
//!
//! Broker events reach the node through one ordered channel per runtime worker, chosen by a
//! hash of the room ([`Dispatchers`]): each room stays on one dispatcher task, so its events
//! keep their order, while fan-out of different rooms runs on every core. A dispatcher encodes
//! each publication once as a `message` push, frames it once (a [`PreparedMessage`]) and
//! hands the same bytes to every local member of the room.

use std::{
    hash::{BuildHasher, RandomState},
    sync::Arc,
};

use bytes::Bytes;
use switchboard_protocol::{PreparedMessage, frame::OpCode, wire};
use tokio::sync::mpsc;

use crate::{
    Route, RouteOptions,
    auth::Verifier,
    broker::{
        Broker, BrokerError, HistoryQuery, MemoryBroker, NodeEvent, NodeSink, StreamPosition,
    },
    config::{Config, NamespaceConfig},
    echo::Echo,
    fanout::RawFanout,
    handler::ConnShared,
    hub::{Change, Hub},
    server::{Server, ServerBuilder},
    session::Protocol,
};

/// Stripes of the per-room lock that serialises node-level subscribe/unsubscribe.
const ROOM_LOCKS: usize = 256;

/// One Switchboard process. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Node {
    pub(crate) inner: Arc<NodeInner>,
}

pub(crate) struct NodeInner {
    pub(crate) config: Config,
    pub(crate) id: String,
    pub(crate) hub: Hub,
    pub(crate) broker: Arc<dyn Broker>,
    pub(crate) verifier: Verifier,
    pub(crate) default_namespace: NamespaceConfig,
    room_locks: Box<[tokio::sync::Mutex<()>]>,
    hasher: RandomState,
}

impl std::fmt::Debug for NodeInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.id)
            .field("listen", &self.config.listen)
            .finish_non_exhaustive()
    }
}

/// Why a node could not be built.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The `auth` section is unusable.
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthConfigError),
}

/// What a connection's subscription read: the reply's position and, with `since`, whether
/// and what it recovered.
#[derive(Debug)]
pub(crate) struct Subscribed {
    pub(crate) position: StreamPosition,
    pub(crate) recovered: Option<bool>,
    pub(crate) publications: Vec<Arc<crate::broker::Publication>>,
}

impl Node {
    /// Builds a node with the in-memory broker. Must be called inside a tokio runtime (it
    /// spawns the dispatchers).
    pub fn new(config: Config) -> Result<Node, NodeError> {
        Self::with_broker(config, |sink| Arc::new(MemoryBroker::new(sink)))
    }

    /// Builds a node on the broker that `broker` makes for the node's event sink. Must be
    /// called inside a tokio runtime: it spawns one dispatcher per runtime worker.
    pub fn with_broker(
        config: Config,
        broker: impl FnOnce(Arc<dyn NodeSink>) -> Arc<dyn Broker>,
    ) -> Result<Node, NodeError> {
        let verifier = Verifier::new(&config.auth)?;
        let workers = tokio::runtime::Handle::current().metrics().num_workers();
        let (sink, receivers) = Dispatchers::new(workers);
        let broker = broker(Arc::new(sink));
        let threshold = config.websocket.compression.threshold.as_usize();
        let hub = Hub::new(threshold);
        let id = config
            .node_id
            .clone()
            .unwrap_or_else(|| format!("n_{}", crate::ids::random_base62(8)));
        let inner = Arc::new(NodeInner {
            default_namespace: NamespaceConfig::default(),
            id,
            hub: hub.clone(),
            broker,
            verifier,
            room_locks: (0..ROOM_LOCKS)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            hasher: RandomState::new(),
            config,
        });
        for events in receivers {
            tokio::spawn(dispatch(hub.clone(), events, threshold));
        }
        Ok(Node { inner })
    }

    /// The node's id.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The hub of local rooms.
    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    /// The broker.
    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.inner.broker
    }

    /// The routes of this configuration: the protocol route and, when configured, the echo route.
    pub fn routes(&self) -> Vec<Route> {
        let c = &self.inner.config;
        let mut routes = vec![Route::new(
            &c.websocket.path,
            Protocol::new(self.clone()),
            RouteOptions::from_config(&c.websocket).with_protocols(&[wire::SUBPROTOCOL]),
        )];
        if let Some(path) = &c.echo.path {
            routes.push(Route::new(
                path,
                Echo,
                RouteOptions::from_config(&c.websocket),
            ));
        }
        if let Some(path) = &c.raw_fanout.path {
            let options = RouteOptions::from_config(&c.websocket);
            routes.push(Route::new(path, RawFanout, options));
        }
        routes
    }

    /// A server builder with this node's routes and settings.
    pub fn server(&self) -> ServerBuilder {
        let c = &self.inner.config;
        let mut b = Server::builder(c.listen)
            .hub(self.inner.hub.clone())
            .drain_timeout(c.shutdown.drain_timeout)
            .backlog(c.listen_backlog);
        for r in self.routes() {
            b = b.route(r);
        }
        b
    }

    /// The options of `room`'s namespace, or `None` when strict namespaces refuse it.
    pub(crate) fn namespace(&self, room: &str) -> Option<&NamespaceConfig> {
        let ns = wire::namespace(room);
        match self.inner.config.namespace(ns) {
            Some(n) => Some(n),
            None if self.inner.config.strict_namespaces
                && !(ns == "user" && self.inner.config.personal_rooms) =>
            {
                None
            }
            None => Some(&self.inner.default_namespace),
        }
    }

    fn room_lock(&self, room: &str) -> &tokio::sync::Mutex<()> {
        let i = self.inner.hasher.hash_one(room) as usize % ROOM_LOCKS;
        &self.inner.room_locks[i]
    }

    /// Subscribes a connection to `room` with exact recovery (the procedure in `broker`'s
    /// module docs). On success the caller queues its reply with
    /// [`ConnShared::end_subscribe`]; on error this has undone everything.
    pub(crate) async fn subscribe(
        &self,
        conn: &Arc<ConnShared>,
        room: &Arc<str>,
        since: Option<StreamPosition>,
    ) -> Result<Subscribed, BrokerError> {
        conn.begin_subscribe(room);
        let joined = {
            let _guard = self.room_lock(room).lock().await;
            match self.inner.hub.join(room, conn) {
                Change::First => match self.inner.broker.subscribe(room).await {
                    Ok(()) => Ok(()),
                    Err(e) => {
                        self.inner.hub.leave(room, conn);
                        Err(e)
                    }
                },
                _ => Ok(()),
            }
        };
        if let Err(e) = joined {
            conn.end_subscribe(room, None, None);
            return Err(e);
        }
        let read = match since {
            None => self
                .inner
                .broker
                .position(room)
                .await
                .map(|position| Subscribed {
                    position,
                    recovered: None,
                    publications: Vec::new(),
                }),
            Some(since) => match self
                .inner
                .broker
                .history(room, HistoryQuery::recovery(since))
                .await
            {
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
            },
        };
        if read.is_err() {
            conn.end_subscribe(room, None, None);
            self.leave(room, conn).await;
        }
        read
    }

    /// Removes a connection from `room` on this node, unsubscribing the node when it was the
    /// last local member.
    pub(crate) async fn leave(&self, room: &str, conn: &ConnShared) {
        let _guard = self.room_lock(room).lock().await;
        if self.inner.hub.leave(room, conn) == Change::Last
            && let Err(e) = self.inner.broker.unsubscribe(room).await
        {
            tracing::warn!(room, error = %e, "broker unsubscribe failed");
        }
    }
}

/// The node's [`NodeSink`]: one channel per dispatcher task, chosen by a hash of the room.
struct Dispatchers {
    senders: Box<[mpsc::UnboundedSender<NodeEvent>]>,
    hasher: RandomState,
}

impl Dispatchers {
    /// `n` channels (at least one), and their receiving ends for the dispatcher tasks.
    fn new(n: usize) -> (Dispatchers, Vec<mpsc::UnboundedReceiver<NodeEvent>>) {
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..n.max(1)).map(|_| mpsc::unbounded_channel()).unzip();
        let sink = Dispatchers {
            senders: senders.into(),
            hasher: RandomState::new(),
        };
        (sink, receivers)
    }

    fn index(&self, room: &str) -> usize {
        match self.senders.len() {
            1 => 0,
            n => self.hasher.hash_one(room) as usize % n,
        }
    }
}

impl NodeSink for Dispatchers {
    /// A dropped receiver (the node shutting down) loses the event.
    fn deliver(&self, event: NodeEvent) {
        let _ = self.senders[self.index(event.room())].send(event);
    }
}

/// Encodes each broker event once and fans it out to the room's local members, in the order
/// the broker delivered it.
async fn dispatch(hub: Hub, mut events: mpsc::UnboundedReceiver<NodeEvent>, threshold: usize) {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    while let Some(event) = events.recv().await {
        buf.clear();
        let (room, position, exclude) = match &event {
            NodeEvent::Publication(p) => {
                if p.ephemeral {
                    wire::encode_ephemeral_push_raw(&mut buf, &p.room, &p.data, p.from.as_deref());
                } else {
                    wire::encode_message_push_raw(
                        &mut buf,
                        &p.room,
                        &p.epoch,
                        p.offset,
                        &p.data,
                        p.from.as_deref(),
                    );
                }
                (
                    &p.room,
                    p.position().map(|_| (&p.epoch, p.offset)),
                    p.exclude.as_deref(),
                )
            }
            NodeEvent::Join { room, member } | NodeEvent::Leave { room, member } => {
                let info = member.info.as_deref();
                let kind = match event {
                    NodeEvent::Join { .. } => wire::MemberPushKind::Join,
                    _ => wire::MemberPushKind::Leave,
                };
                wire::encode_member_push_raw(
                    &mut buf,
                    kind,
                    room,
                    &member.user,
                    &member.connection,
                    info,
                );
                (room, None, Some(&*member.connection))
            }
        };
        let message = PreparedMessage::new(OpCode::Text, Bytes::copy_from_slice(&buf), threshold);
        hub.deliver(room, position, &message, exclude);
        if buf.capacity() > 64 * 1024 {
            buf = Vec::with_capacity(1024);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::PresenceEntry;

    fn join(room: &str, connection: usize) -> NodeEvent {
        NodeEvent::Join {
            room: room.into(),
            member: PresenceEntry {
                connection: connection.to_string().into(),
                user: "".into(),
                info: None,
            },
        }
    }

    #[test]
    fn dispatchers_keep_each_room_on_one_channel_in_order_and_spread_rooms() {
        let (sink, mut receivers) = Dispatchers::new(8);
        for i in 0..10 {
            for r in 0..64 {
                sink.deliver(join(&format!("room:{r}"), i));
            }
        }
        let mut channel_of = std::collections::HashMap::new();
        for (c, rx) in receivers.iter_mut().enumerate() {
            let mut next = std::collections::HashMap::new();
            while let Ok(NodeEvent::Join { room, member }) = rx.try_recv() {
                assert_eq!(*channel_of.entry(room.clone()).or_insert(c), c, "{room}");
                let expected = next.entry(room.clone()).or_insert(0);
                assert_eq!(
                    &*member.connection,
                    expected.to_string(),
                    "{room} out of order"
                );
                *expected += 1;
            }
            assert!(next.values().all(|n| *n == 10), "every event arrives");
        }
        assert_eq!(channel_of.len(), 64);
        let used: std::collections::HashSet<_> = channel_of.values().collect();
        assert!(used.len() > 1, "64 rooms all on one of 8 dispatchers");
    }
}
