//! The broker: what the nodes of a Switchboard cluster share.
//!
//! A [`Broker`] assigns offsets to publications, keeps each room's history
//! and presence, and delivers every publication of a room to every **node**
//! subscribed to that room. It knows nothing about connections or sockets:
//! the hub (the node-local registry of connections per room) subscribes the
//! *node* to a room once, when the room's first local subscriber arrives, and
//! unsubscribes it when the last one leaves; the hub then fans each delivered
//! event out to its local connections. [`memory::MemoryBroker`] serves a
//! single process, [`redis::RedisBroker`] several nodes on one Redis (a NATS broker
//! implements the same trait later), and
//! `conformance` (the `conformance` feature) is the suite every implementation must pass.
//!
//! # Streams, offsets and epochs
//!
//! Each room has a **stream**: an epoch (a short random string chosen when the
//! stream is created) and a top offset (`0` for a new stream). A non-ephemeral
//! publication gets offset `top + 1`, so offsets are gap-free within an epoch
//! and never reused. [`Broker::position`] creates the stream if it does not
//! exist. [`Broker::remove_history`] drops the retained publications and
//! gives the stream a **new epoch** while the offset counter **continues**
//! (the next publication after top `41` is `42` in the new epoch): offsets of
//! a room never go backwards while the broker keeps its state, and a `since`
//! from the old epoch is refused with [`BrokerError::EpochMismatch`]. A broker
//! that *loses* a stream (a restarted in-memory broker, a flushed Redis)
//! starts a new stream with a new epoch at offset `0`.
//!
//! Ephemeral publications are delivered but neither stored nor numbered: they
//! carry `offset == 0` and an empty epoch and do not advance the top.
//!
//! # Delivery to the node
//!
//! Each broker instance is one node's handle and is built with that node's
//! [`NodeSink`]. Events reach the sink:
//!
//! - only for rooms the node is subscribed to ([`Broker::subscribe`] has
//!   returned and [`Broker::unsubscribe`] has not been called since);
//! - exactly once per subscribed node (subscribing twice is subscribing once);
//! - **in offset order per room**, together with the room's join and leave
//!   events in the order the broker took them. Different rooms are not
//!   ordered with respect to each other.
//!
//! The memory broker never loses an event. A broker over a remote transport
//! (Redis pub/sub) can lose events when its connection drops; it must then
//! tell the hub through a control event (`NodeEvent` is `#[non_exhaustive]`
//! for that), so that the hub can make its connections resubscribe and
//! recover.
//!
//! [`NodeSink::deliver`] may be called while the broker holds an internal
//! lock (the memory broker calls it under the room's shard lock, which is how
//! it keeps offset order): it must not block, must not await and must not call
//! back into the broker. Sending on a [`tokio::sync::mpsc::UnboundedSender`]
//! (which implements `NodeSink`) is the intended use: one task of the hub
//! drains the receiver in order. If the hub spreads the work over several
//! tasks, it must keep every room on one of them so that per-room order holds.
//!
//! # What the hub must do
//!
//! ## Node subscriptions
//!
//! 1. Serialize [`Broker::subscribe`] and [`Broker::unsubscribe`] per room
//!    (for example a per-room async mutex or state machine): the broker makes
//!    each call idempotent, but does not define the outcome of a `subscribe`
//!    and an `unsubscribe` of the same room racing each other.
//! 2. Call `subscribe` when the first local connection joins a room and
//!    `unsubscribe` when the last one leaves. Events may still arrive for a
//!    room shortly after `unsubscribe` returned (they were in flight in the
//!    sink): drop events for rooms with no local connection.
//!
//! ## Subscribing a connection, with or without recovery (the exact-recovery race)
//!
//! A client subscribing with `since` must get exactly the publications it
//! missed and then every later one as a live push, no gap and no duplicate,
//! while others publish concurrently. The broker side of this is the ordering
//! guarantee above plus "subscribe before read"; the hub does the rest. For a
//! connection `C` subscribing to room `R`:
//!
//! 1. **Register `C` in `R` as *syncing*** with an empty buffer. From now on,
//!    every event the hub's dispatcher handles for `R` is appended to `C`'s
//!    buffer instead of being written to `C` (other connections of `R` are
//!    served as usual).
//! 2. **Make sure the node is subscribed**: if `C` is the first local
//!    connection of `R`, call `broker.subscribe(R)` and await it (under the
//!    per-room serialization above). On error: remove `C` (and undo the node
//!    subscription if no other connection uses it) and answer `unavailable`.
//! 3. **Read, only after step 2 returned**:
//!    - with `since`: `broker.history(R, HistoryQuery::recovery(since))`:
//!      - `Ok(h)` with `h.recoverable`: the reply is `epoch = h.position.epoch`,
//!        `offset = h.position.offset`, `recovered: true`,
//!        `publications = h.publications` (already oldest first);
//!      - `Ok(h)` with `!h.recoverable`: reply with `h.position`,
//!        `recovered: false`, no publications;
//!      - `Err(BrokerError::EpochMismatch { current, .. })`: reply with
//!        `current`, `recovered: false`, no publications;
//!    - without `since`: `broker.position(R)`; reply with it, no `recovered`;
//!    - any other error: undo steps 1 and 2, answer `unavailable`.
//! 4. **Reply, then drain, atomically with respect to the dispatcher** (hold
//!    whatever lock the dispatcher takes to choose between "buffer" and
//!    "write" for `C`): put the reply on `C`'s outbound queue, then go through
//!    the buffer in order and, for each event:
//!    - a non-ephemeral publication `p` with `p.epoch == reply.epoch` and
//!      `p.offset <= reply.offset`: **drop it** (the reply covers it, or it is
//!      older than what the client asked for);
//!    - anything else (later offsets, other epochs, ephemeral publications,
//!      join/leave): write it to `C`, in buffer order;
//!
//!    then mark `C` *live*: later events go straight to `C`.
//!
//! Why this is exact: `subscribe` returned before the read began, so every
//! publication the read did not include (offset above `reply.offset` in the
//! reply's epoch) was numbered after the node's subscription was in place and
//! therefore reaches the sink; `C` was registered before that, so it lands in
//! `C`'s buffer or goes to `C` live. A publication the read did include may
//! also arrive through the sink (it was in flight): the drop rule removes it.
//! The sink is in offset order and the buffer is drained in order, so the
//! client sees `reply.offset + 1, + 2, ...` with no gap and no duplicate.
//!
//! The one imperfect case is harmless: if `remove_history` runs during steps
//! 2–4, a publication of the *old* epoch may be in the buffer when the reply
//! carries the new one. It is written (the rule cannot tell an old epoch from
//! a newer one without assuming offsets never restart); the client sees an
//! epoch change and reloads, as it must for any epoch change. Dropping it
//! instead could silently lose a publication of a stream recreated after a
//! broker lost its state.
//!
//! The same procedure serves every room of an SSE stream's cursor, and the
//! server-side subscriptions of section 4.3 (with `position` for their
//! `subscribed` push).
//!
//! ## Everything else
//!
//! - **Echo**: put the publishing connection's id in
//!   [`PublishOptions::exclude`] when the client sent `echo: false`; the hub
//!   skips that connection when fanning the publication out.
//! - **Limits** are the hub's: it clamps `history`'s `limit` to the
//!   namespace's `history_size` (and defaults it), clamps presence `limit` to
//!   1000, checks idempotency keys' length, and passes the namespace's
//!   `history_size` and `history_ttl` in every [`PublishOptions`].
//! - **Errors**: [`BrokerError::EpochMismatch`] is `recovered: false` for
//!   `subscribe` and `bad_request` naming the epoch for `history`;
//!   [`BrokerError::InvalidCursor`] is `bad_request`;
//!   [`BrokerError::Unavailable`] is `unavailable` (nothing was published).
//! - **Presence** entries are keyed by connection id: add on subscribe (when
//!   the namespace has presence), remove on unsubscribe and on disconnect.
//!   Join and leave pushes go through [`Broker::publish_join`] and
//!   [`Broker::publish_leave`] so that every node sees them.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The suite every broker passes; built for the crate's own tests and with the
/// `conformance` feature (for other brokers' tests), not into the release library.
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod memory;
pub mod redis;

pub use memory::{MemoryBroker, MemoryBrokerConfig};
pub use redis::{RedisBroker, RedisBrokerConfig, RedisSentinelConfig};

/// A boxed, `Send` future: what [`Broker`]'s methods return, so that the trait
/// stays object-safe and the hub can hold an `Arc<dyn Broker>`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A position in a room's stream: the recovery key of docs/protocol.md 4.2 and 6.
///
/// Serializes as `{"epoch": "…", "offset": 41}`, the wire form of `since`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StreamPosition {
    /// The stream's epoch: changes whenever the stream's history is lost or removed.
    pub epoch: Arc<str>,
    /// An offset within the epoch; a stream's top is the offset of its latest
    /// publication (`0` for a stream without any).
    pub offset: u64,
}

impl StreamPosition {
    /// A position from its parts.
    pub fn new(epoch: impl Into<Arc<str>>, offset: u64) -> Self {
        Self {
            epoch: epoch.into(),
            offset,
        }
    }
}

impl fmt::Display for StreamPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.epoch, self.offset)
    }
}

/// One publication, as delivered to nodes and returned from history.
///
/// Shared as `Arc<Publication>`: the broker allocates it once and every node,
/// history slot and connection queue holds the same one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    /// The room it was published to.
    pub room: Arc<str>,
    /// Its offset in the room's stream; `0` when [`ephemeral`](Self::ephemeral).
    pub offset: u64,
    /// The stream's epoch at publication; empty when [`ephemeral`](Self::ephemeral).
    pub epoch: Arc<str>,
    /// The raw JSON of the publication's `data`, as given to [`Broker::publish`].
    pub data: Bytes,
    /// The raw JSON of the `from` object (`{"user", "connection", "info"}`);
    /// `None` for publications through the server API.
    pub from: Option<Bytes>,
    /// A connection that must not receive this publication as a live push:
    /// the publisher, when it asked for `echo: false`. Not part of the wire
    /// message. Recovery and history still include the publication.
    pub exclude: Option<Arc<str>>,
    /// Whether it is ephemeral: delivered live only, never stored or numbered.
    pub ephemeral: bool,
}

impl Publication {
    /// Its stream position; `None` for an ephemeral publication.
    pub fn position(&self) -> Option<StreamPosition> {
        (!self.ephemeral).then(|| StreamPosition {
            epoch: self.epoch.clone(),
            offset: self.offset,
        })
    }
}

/// Options of one [`Broker::publish`]; the hub fills them from the room's
/// namespace configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishOptions {
    /// Deliver only: no offset, not stored (docs/protocol.md 5).
    pub ephemeral: bool,
    /// A key that makes a retried publish a no-op: within `history_ttl` of the
    /// first publish with this key to this room, a publish with the same key
    /// publishes nothing and returns the first one's result with
    /// [`PublishResult::duplicate`] set. Keys are per room.
    pub idempotency_key: Option<String>,
    /// How many publications the room's history keeps; `0` keeps none (and
    /// drops what was kept).
    pub history_size: usize,
    /// How long a publication stays in history, and how long its idempotency
    /// key is remembered.
    pub history_ttl: Duration,
    /// Copied to [`Publication::exclude`]: the publishing connection when it
    /// asked for `echo: false`.
    pub exclude: Option<Arc<str>>,
}

impl Default for PublishOptions {
    /// Not ephemeral, no key, no exclusion, and the protocol's namespace
    /// defaults: `history_size` 100, `history_ttl` 5 minutes.
    fn default() -> Self {
        Self {
            ephemeral: false,
            idempotency_key: None,
            history_size: 100,
            history_ttl: Duration::from_secs(300),
            exclude: None,
        }
    }
}

/// What [`Broker::publish`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishResult {
    /// The publication's position; `None` when it is ephemeral. For a
    /// duplicate, the first publication's.
    pub position: Option<StreamPosition>,
    /// The idempotency key was already used: nothing was published, and
    /// `position` is the first publication's.
    pub duplicate: bool,
}

/// A history read (docs/protocol.md 6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Return the publications after this position (exclusive), oldest first;
    /// the epoch must be the stream's, or the read fails with
    /// [`BrokerError::EpochMismatch`].
    pub since: Option<StreamPosition>,
    /// At most this many publications; `0` reads only the stream's position;
    /// `usize::MAX` means all that are retained. The broker applies no other
    /// limit than what it retains: the hub clamps.
    pub limit: usize,
    /// Without `since`: `false` starts at the oldest retained publication
    /// (oldest first), `true` at the newest (newest first, for "the last 50
    /// messages"). Ignored with `since`, which always reads oldest first.
    pub reverse: bool,
}

impl HistoryQuery {
    /// Everything after `since`, oldest first: the read of the recovery
    /// procedure in the module docs.
    pub fn recovery(since: StreamPosition) -> Self {
        Self {
            since: Some(since),
            limit: usize::MAX,
            reverse: false,
        }
    }
}

impl Default for HistoryQuery {
    /// No `since`, no limit, oldest first.
    fn default() -> Self {
        Self {
            since: None,
            limit: usize::MAX,
            reverse: false,
        }
    }
}

/// The answer to a history read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryResult {
    /// The stream's top at the moment of the read (epoch and latest offset).
    pub position: StreamPosition,
    /// The publications, in the order [`HistoryQuery`] describes.
    pub publications: Vec<Arc<Publication>>,
    /// With `since`: whether every publication after `since` up to the top is
    /// still retained, so that `publications` (when not cut by `limit`) is
    /// exactly what the client missed. `false` when some were dropped (size,
    /// ttl, `history_size` 0) or `since` is beyond the top; `publications`
    /// then holds what is retained after `since`. Always `true` without
    /// `since`.
    pub recoverable: bool,
}

/// One presence member: a connection subscribed to a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceEntry {
    /// The connection's id: the key of the entry.
    pub connection: Arc<str>,
    /// The connection's user id (`""` for anonymous).
    pub user: Arc<str>,
    /// The raw JSON of the user's `info` claim, if any.
    pub info: Option<Bytes>,
}

/// One page of a room's presence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresencePage {
    /// The members of this page, ordered by connection id.
    pub members: Vec<PresenceEntry>,
    /// The cursor of the next page; `None` on the last page.
    pub next_cursor: Option<String>,
    /// How many connections the room has (all pages).
    pub connections: usize,
    /// How many distinct users the room has (all pages).
    pub users: usize,
}

/// An event a broker delivers to a node's [`NodeSink`].
///
/// `#[non_exhaustive]`: cluster brokers will add control events (cluster-wide
/// subscribe and disconnect commands of the server API, loss of delivery);
/// the hub ignores variants it does not know.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum NodeEvent {
    /// A publication to a room the node is subscribed to.
    Publication(Arc<Publication>),
    /// A connection joined a room the node is subscribed to ([`Broker::publish_join`]).
    Join {
        /// The room.
        room: Arc<str>,
        /// Who joined.
        member: PresenceEntry,
    },
    /// A connection left a room the node is subscribed to ([`Broker::publish_leave`]).
    Leave {
        /// The room.
        room: Arc<str>,
        /// Who left.
        member: PresenceEntry,
    },
    /// Events of `room` (`None`: of every room) may have been lost on the way to this node
    /// (a remote broker's subscription connection dropped and came back). The node catches
    /// each such room's members up from history, or tells them `recovered: false`.
    Lost {
        /// The room, or `None` for every room.
        room: Option<Arc<str>>,
    },
    /// A command for every node ([`Broker::command`]).
    Command(ClusterCommand),
    /// A message of an application's own protocol for a room's members
    /// ([`Broker::broadcast`]): delivered as it is, not numbered, not stored.
    Broadcast {
        /// The room.
        room: Arc<str>,
        /// The message.
        message: RawMessage,
    },
}

/// A message the library API broadcasts to a room ([`Broker::broadcast`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMessage {
    /// A binary message (text otherwise: then `payload` is UTF-8).
    pub binary: bool,
    /// The message.
    pub payload: Bytes,
    /// A connection that must not receive it (the sender, unless it asked to).
    pub exclude: Option<Arc<str>>,
}

impl NodeEvent {
    /// The room the event is about; `None` for events about no one room (commands, a loss
    /// of every room).
    pub fn room(&self) -> Option<&Arc<str>> {
        match self {
            NodeEvent::Publication(p) => Some(&p.room),
            NodeEvent::Join { room, .. } | NodeEvent::Leave { room, .. } => Some(room),
            NodeEvent::Lost { room } => room.as_ref(),
            NodeEvent::Broadcast { room, .. } => Some(room),
            NodeEvent::Command(_) => None,
        }
    }
}

/// A command for every node of the cluster ([`Broker::command`]): the server API's per-user
/// commands reach a user's connections wherever they are.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClusterCommand {
    /// Close every connection of `user` with this close code and reason.
    Disconnect {
        /// The user id.
        user: Arc<str>,
        /// The close code (a row of the close-code table, or an application's own).
        code: u16,
        /// The close reason.
        reason: String,
    },
    /// Subscribe every connection of `user` to `room`.
    Subscribe {
        /// The user id.
        user: Arc<str>,
        /// The room.
        room: Arc<str>,
    },
    /// Unsubscribe every connection of `user` from `room`.
    Unsubscribe {
        /// The user id.
        user: Arc<str>,
        /// The room.
        room: Arc<str>,
    },
}

/// Where a broker delivers a node's events.
///
/// `deliver` may be called while the broker holds an internal lock: it must
/// not block, not await and not call back into the broker. Implemented for
/// `tokio::sync::mpsc::UnboundedSender<NodeEvent>` (the intended sink: one
/// hub task drains the receiver in order) and for closures.
pub trait NodeSink: Send + Sync + 'static {
    /// Takes one event. Events of a room arrive in the room's order.
    fn deliver(&self, event: NodeEvent);
}

impl NodeSink for tokio::sync::mpsc::UnboundedSender<NodeEvent> {
    /// Sends the event; a dropped receiver (the node shutting down) loses it.
    fn deliver(&self, event: NodeEvent) {
        let _ = self.send(event);
    }
}

impl<F> NodeSink for F
where
    F: Fn(NodeEvent) + Send + Sync + 'static,
{
    fn deliver(&self, event: NodeEvent) {
        self(event)
    }
}

impl fmt::Debug for dyn Broker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Broker")
    }
}

/// Why a broker call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// A history read's `since` names an epoch the room no longer has (its
    /// history was removed or lost). `subscribe` answers `recovered: false`
    /// with `current`; `history` answers `bad_request` naming `since`.
    #[error("since is from epoch '{since}' but the room is at epoch '{}'", current.epoch)]
    EpochMismatch {
        /// The epoch the caller gave.
        since: Arc<str>,
        /// The stream's current top.
        current: StreamPosition,
    },
    /// A presence cursor that this broker did not produce (`bad_request`).
    #[error("invalid presence cursor")]
    InvalidCursor,
    /// A new room would take the broker past its bound on rooms and no room could be
    /// evicted (`limit_exceeded`); nothing was done.
    #[error("{message}")]
    LimitExceeded {
        /// What is full, for the client.
        message: String,
    },
    /// The broker cannot serve the call (a remote backend is unreachable or
    /// timed out); nothing was published (`unavailable`).
    #[error("broker unavailable: {message}")]
    Unavailable {
        /// What went wrong, for logs.
        message: String,
        /// The underlying error, if any.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

// Here rather than in `error`, which stands below every module of the crate.
impl crate::error::Refused {
    /// A failed broker call: `limit_exceeded` when the broker is full (`limits.max_rooms`),
    /// otherwise `unavailable` (the broker cannot serve the request now); nothing was done.
    pub fn broker(error: &BrokerError) -> Self {
        if let BrokerError::LimitExceeded { message } = error {
            tracing::debug!(error = %error, "broker refused: full");
            return Self::limit_exceeded(message.clone());
        }
        tracing::warn!(error = %error, "broker call failed");
        Self::new(
            switchboard_protocol::wire::ErrorCode::Unavailable,
            "the broker cannot serve this now; nothing was done",
        )
    }
}

/// Who is in a room, across the cluster: one entry per subscribed connection.
///
/// Its own trait so that a deployment may keep presence apart from publications (another
/// store, or none); every [`Broker`] is one too. Entries of a broker whose entries expire
/// ([`Presence::presence_ttl`]) are refreshed by the node that added them, by adding them
/// again within the ttl.
pub trait Presence: Send + Sync + 'static {
    /// Adds `entry` to the room's presence, replacing an entry with the same
    /// connection id (brokers whose entries expire also refresh it).
    fn presence_add<'a>(
        &'a self,
        room: &'a str,
        entry: PresenceEntry,
    ) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Removes the connection's entry from the room's presence, if present.
    fn presence_remove<'a>(
        &'a self,
        room: &'a str,
        connection: &'a str,
    ) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// One page of the room's presence: at most `limit` members after
    /// `cursor` (`None` for the first page), ordered by connection id, with
    /// the room's counts. Walking the pages returns every member that is
    /// present for the whole walk exactly once, whatever is added or removed
    /// meanwhile. `limit` 0 returns only the counts. A cursor this broker did
    /// not produce fails with [`BrokerError::InvalidCursor`].
    fn presence_list<'a>(
        &'a self,
        room: &'a str,
        cursor: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<PresencePage, BrokerError>>;

    /// How long an entry lives unless added again; `None`: until removed (the memory
    /// broker: its entries live and die with the one process that holds them).
    fn presence_ttl(&self) -> Option<Duration> {
        None
    }

    /// Adds every `(room, entry)` of `entries` again: a node refreshing its entries within
    /// the ttl. By default one [`Presence::presence_add`] after another, going on past a
    /// failure (the first is returned); a remote store sends them in a few batches.
    fn presence_refresh<'a>(
        &'a self,
        entries: &'a [(Arc<str>, PresenceEntry)],
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let mut first = Ok(());
            for (room, entry) in entries {
                let added = self.presence_add(room, entry.clone()).await;
                if first.is_ok() {
                    first = added;
                }
            }
            first
        })
    }
}

/// What the nodes of a cluster share: numbered publications per room, their
/// history, presence ([`Presence`]), delivery to subscribed nodes and commands
/// to every node. See the module docs for the guarantees and for what the hub
/// must do.
///
/// Every method is a lazy future: nothing happens until it is polled.
pub trait Broker: Presence {
    /// Publishes `data` (raw JSON) to `room`, with `from` (raw JSON of the
    /// `from` object, `None` from the server API).
    ///
    /// A non-ephemeral publication gets the next offset of the room's current
    /// epoch (creating the stream if needed), is stored in history (unless
    /// `history_size` is 0), and is delivered to every subscribed node, in
    /// offset order. An ephemeral one is only delivered. With an
    /// `idempotency_key` seen in this room within `history_ttl`, nothing is
    /// published and the first publication's result is returned with
    /// `duplicate` set. On error nothing was published.
    fn publish<'a>(
        &'a self,
        room: &'a str,
        data: Bytes,
        from: Option<Bytes>,
        opts: PublishOptions,
    ) -> BoxFuture<'a, Result<PublishResult, BrokerError>>;

    /// Delivers [`NodeEvent::Join`] to every node subscribed to `room`, in
    /// order with the room's publications. Stores nothing.
    fn publish_join<'a>(
        &'a self,
        room: &'a str,
        member: PresenceEntry,
    ) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Delivers [`NodeEvent::Leave`] to every node subscribed to `room`, in
    /// order with the room's publications. Stores nothing.
    fn publish_leave<'a>(
        &'a self,
        room: &'a str,
        member: PresenceEntry,
    ) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Subscribes this node to `room`: once it has returned, every later
    /// event of the room reaches this node's sink, in order. Idempotent.
    fn subscribe<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Unsubscribes this node from `room`: no event published after it
    /// returned reaches the sink (events already in flight may). Idempotent.
    fn unsubscribe<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// The stream's top: its epoch and latest offset, creating the stream
    /// (new random epoch, offset 0) if it does not exist.
    fn position<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Result<StreamPosition, BrokerError>>;

    /// Reads the room's history as [`HistoryQuery`] says, creating the stream
    /// if it does not exist. Fails with [`BrokerError::EpochMismatch`] when
    /// `since` names another epoch.
    fn history<'a>(
        &'a self,
        room: &'a str,
        query: HistoryQuery,
    ) -> BoxFuture<'a, Result<HistoryResult, BrokerError>>;

    /// Removes the room's history: the stream gets a new epoch and keeps its
    /// offset counter. Returns the new position. Presence, subscriptions and
    /// idempotency keys are kept.
    fn remove_history<'a>(
        &'a self,
        room: &'a str,
    ) -> BoxFuture<'a, Result<StreamPosition, BrokerError>>;

    /// Subscribes this node to every room of `rooms` (a node resubscribing after a
    /// reconnect does it in one call). By default one [`Broker::subscribe`] after another;
    /// a remote broker sends one command. Stops at the first error.
    fn subscribe_many<'a>(
        &'a self,
        rooms: &'a [Arc<str>],
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            for room in rooms {
                self.subscribe(room).await?;
            }
            Ok(())
        })
    }

    /// Unsubscribes this node from every room of `rooms`; see [`Broker::subscribe_many`].
    fn unsubscribe_many<'a>(
        &'a self,
        rooms: &'a [Arc<str>],
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            for room in rooms {
                self.unsubscribe(room).await?;
            }
            Ok(())
        })
    }

    /// Delivers [`NodeEvent::Broadcast`] to every node subscribed to `room`, in order with
    /// the room's other events. Stores nothing.
    fn broadcast<'a>(
        &'a self,
        room: &'a str,
        message: RawMessage,
    ) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Sends `command` to every node of the cluster, this one included: each node's sink
    /// receives [`NodeEvent::Command`]. Commands are not ordered with publications.
    fn command<'a>(&'a self, command: ClusterCommand) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Whether the broker can serve calls now (`/readyz`). The memory broker
    /// always can.
    fn ready(&self) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(std::future::ready(Ok(())))
    }

    /// Tells the other nodes this node's figures and rooms (`/api/info`, `/api/rooms` on
    /// any node), for as long as its presence entries live: the node reports again within
    /// that time. A broker that serves one node keeps nothing.
    fn report<'a>(&'a self, _report: NodeReport) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(std::future::ready(Ok(())))
    }

    /// The latest reports of every live node, this one included if it reported; `None` when
    /// the broker serves one node only (the node then answers for itself).
    fn cluster(&self) -> BoxFuture<'_, Result<Option<Vec<NodeReport>>, BrokerError>> {
        Box::pin(std::future::ready(Ok(None)))
    }

    /// The cluster-wide connection counts of `limits.connections_per_user` and
    /// `limits.connections_per_ip`, when the broker keeps them; `None` when the broker serves
    /// one node only (the node's own counts are the deployment's).
    fn admission(&self) -> Option<Arc<dyn crate::limits::ClusterAdmission>> {
        None
    }
}

/// One node's figures and rooms, as reported to the cluster ([`Broker::report`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeReport {
    /// The node's id.
    pub id: String,
    /// The node's figures: a JSON object (the server API's `NodeInfo`).
    pub info: String,
    /// Its rooms with local subscribers, and how many each.
    pub rooms: Vec<(String, u64)>,
}
