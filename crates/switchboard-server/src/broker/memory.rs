//! The in-memory broker: one process, no persistence.
//!
//! State lives in a map room → room state, split over
//! [`MemoryBrokerConfig::shards`] shards, each a `std::sync::Mutex<HashMap>`
//! that is held only for the synchronous body of one call and never across an
//! await. A room's state is its stream (epoch, top offset, history ring), the
//! nodes subscribed to it, its presence and its idempotency keys.
//!
//! - **Epochs** are 8 random base62 characters, drawn when a room's stream is
//!   created and by [`Broker::remove_history`], so a restarted process (or a
//!   second `MemoryBroker`) gives every room a new epoch and old positions do
//!   not recover.
//! - **History** is a ring of at most `history_size` publications with
//!   contiguous offsets ending at the top. Each expires `history_ttl` after it
//!   was published; a publication never outlives a newer one (when the ttl is
//!   lowered, older entries are cut to the newer one's expiry), so what is
//!   retained is always a contiguous suffix of the stream. Expired entries are
//!   dropped on access and by the sweep.
//! - **Idempotency keys** are kept per room until `history_ttl` after their
//!   publication, at most [`MemoryBrokerConfig::max_idempotency_keys`] per
//!   room (the oldest are forgotten first).
//! - **Delivery**: [`NodeSink::deliver`] is called under the room's shard lock,
//!   right after the offset is assigned: that is what keeps each room's
//!   deliveries in offset order. The only allocation per publication is the
//!   `Arc<Publication>`.
//! - **Memory is bounded**: a sweep every [`MemoryBrokerConfig::sweep_interval`]
//!   (a task on the tokio runtime current at construction; none outside a
//!   runtime) drops expired history and keys, and removes rooms that have no
//!   subscribed node, no retained publication, no presence and no live key and
//!   have not been used for [`MemoryBrokerConfig::meta_ttl`]. Keeping an
//!   idle stream's epoch and top that long lets a client that is up to date
//!   recover (`since` at the top) even when nothing is retained. The sweep
//!   also gives back the spare capacity of history rings, key sets and shard
//!   maps that have shrunk.
//! - **Budgets** ([`MemoryBrokerConfig::history_memory`],
//!   [`MemoryBrokerConfig::max_rooms`]): the bytes of retained publications and
//!   the number of rooms are counted node-wide. Past the history budget, the
//!   history of the rooms used least recently (rooms without a subscribed node
//!   first) is dropped until the total is 10 % under it: the rooms keep their
//!   epoch and top, so a client recovering from one of them gets
//!   `recovered: false`, never a wrong answer. At the room bound, a new room
//!   first evicts the rooms used least recently that have no subscribed node and
//!   no presence (10 % of the bound at once, so that the scans are amortised); a
//!   client recovering in an evicted room finds a new epoch. Only when nothing
//!   can be evicted is the new room refused ([`BrokerError::LimitExceeded`]).
//!   Evictions scan the shards one at a time and never hold two shard locks.
//! - **Small rooms are cheap**: every authenticated connection has a personal
//!   room with one member, so a room's state is boxed (the shard maps' spare
//!   slots stay small), idempotency keys are allocated only when used, and
//!   presence is a sorted `Vec` up to `SMALL_PRESENCE` members and a
//!   `BTreeMap` with per-user counters above it.
//!
//! Several nodes can share one state ([`MemoryBroker::connect_node`]), which is
//! how multi-node behaviour is tested in one process.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::hash::BuildHasher;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use rand::distr::Alphanumeric;
use tokio::time::Instant;

use super::{
    BoxFuture, Broker, BrokerError, ClusterCommand, HistoryQuery, HistoryResult, NodeEvent,
    NodeSink, Presence as PresenceStore, PresenceEntry, PresencePage, Publication, PublishOptions,
    PublishResult, RawMessage, StreamPosition,
};

/// Settings of a [`MemoryBroker`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryBrokerConfig {
    /// How many lock shards the room map is split over. Default 32.
    pub shards: usize,
    /// How often the background sweep runs; `Duration::ZERO` runs none
    /// (expired entries are then dropped only when their room is used).
    /// Default 5 s.
    pub sweep_interval: Duration,
    /// How long an unused room with nothing retained keeps its epoch and top
    /// before it is removed. Default 10 minutes.
    pub meta_ttl: Duration,
    /// How many idempotency keys a room remembers at most. Default 10 000.
    pub max_idempotency_keys: usize,
    /// How long a presence entry lives unless its node adds it again (then the sweep drops
    /// it); `None`: until removed. Default `None`: one process holds every entry, and they
    /// live and die with it. Set, it behaves as a cluster broker's presence does.
    pub presence_ttl: Option<Duration>,
    /// Bytes of retained publications (data, `from` and bookkeeping) across every room,
    /// beyond which the least recently used rooms' history is dropped (see the module
    /// docs). 0: no budget. Default 0.
    pub history_memory: usize,
    /// Rooms with state at most; a new room past it evicts idle rooms or is refused
    /// (see the module docs). 0: no bound. Default 0.
    pub max_rooms: usize,
}

impl Default for MemoryBrokerConfig {
    fn default() -> Self {
        Self {
            shards: 32,
            sweep_interval: Duration::from_secs(5),
            meta_ttl: Duration::from_secs(600),
            max_idempotency_keys: 10_000,
            presence_ttl: None,
            history_memory: 0,
            max_rooms: 0,
        }
    }
}

/// One node's handle on an in-memory broker.
///
/// Dropping it unsubscribes its node from every room.
pub struct MemoryBroker {
    shared: Arc<Shared>,
    node: u64,
    sink: Arc<dyn NodeSink>,
}

impl fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBroker")
            .field("node", &self.node)
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl MemoryBroker {
    /// A broker with the default configuration, delivering to `sink`.
    pub fn new(sink: Arc<dyn NodeSink>) -> Self {
        Self::with_config(MemoryBrokerConfig::default(), sink)
    }

    /// A broker with `config`, delivering to `sink`. Starts the sweep task on
    /// the current tokio runtime, if there is one.
    pub fn with_config(config: MemoryBrokerConfig, sink: Arc<dyn NodeSink>) -> Self {
        let shards = config.shards.max(1);
        let shared = Arc::new(Shared {
            shards: (0..shards).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            empty: Arc::from(""),
            next_node: AtomicU64::new(1),
            nodes: Mutex::new(vec![(0, sink.clone())]),
            presence_expiry: Mutex::new(HashMap::new()),
            history_bytes: AtomicUsize::new(0),
            room_count: AtomicUsize::new(0),
            evicting: Mutex::new(()),
            on_budget: std::sync::OnceLock::new(),
            config,
        });
        spawn_sweeper(&shared);
        Self {
            shared,
            node: 0,
            sink,
        }
    }

    /// Another node on the same state, delivering to `sink`: publications of
    /// either reach both when both are subscribed. For tests of multi-node
    /// behaviour in one process.
    pub fn connect_node(&self, sink: Arc<dyn NodeSink>) -> MemoryBroker {
        let node = self.shared.next_node.fetch_add(1, Ordering::Relaxed);
        self.shared
            .nodes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((node, sink.clone()));
        MemoryBroker {
            shared: self.shared.clone(),
            node,
            sink,
        }
    }

    /// Runs the sweep now (it also runs periodically): drops expired history
    /// and keys and removes idle rooms.
    pub fn sweep(&self) {
        self.shared.sweep(Instant::now());
    }

    /// How many rooms have state (for metrics and tests).
    pub fn rooms(&self) -> usize {
        self.shared.room_count.load(Ordering::Relaxed)
    }

    /// Calls `observer` with what the budgets do (evictions, refused rooms) and how many
    /// rooms each time, for the node's metrics. The first observer set stays.
    pub fn on_budget(&self, observer: BudgetObserver) {
        let _ = self.shared.on_budget.set(observer);
    }

    /// Bytes of retained publications, as [`MemoryBrokerConfig::history_memory`] counts
    /// them.
    pub fn history_bytes(&self) -> usize {
        self.shared.history_bytes.load(Ordering::Relaxed)
    }

    fn do_publish(
        &self,
        room: &str,
        data: Bytes,
        from: Option<Bytes>,
        opts: PublishOptions,
    ) -> Result<PublishResult, BrokerError> {
        let now = Instant::now();
        let shared = &self.shared;
        // An ephemeral publication without a key to a room that does not exist: nobody is
        // subscribed and there is nothing to remember, so no room is made for it.
        let create = !opts.ephemeral || opts.idempotency_key.is_some();
        let Some(result) = shared.room_op(room, now, create, |state| {
            Self::publish_in(shared, state, now, data, from, opts)
        })?
        else {
            return Ok(PublishResult {
                position: None,
                duplicate: false,
            });
        };
        if shared.config.history_memory > 0
            && shared.history_bytes.load(Ordering::Relaxed) > shared.config.history_memory
        {
            shared.evict_history();
        }
        Ok(result)
    }

    /// A publication in `state` (under its shard lock).
    fn publish_in(
        shared: &Shared,
        state: &mut RoomState,
        now: Instant,
        data: Bytes,
        from: Option<Bytes>,
        opts: PublishOptions,
    ) -> PublishResult {
        if let Some(key) = &opts.idempotency_key
            && let Some(position) = state.keys.as_ref().and_then(|keys| keys.get(key, now))
        {
            return PublishResult {
                position,
                duplicate: true,
            };
        }
        let position = if opts.ephemeral {
            let publication = Arc::new(Publication {
                room: state.name.clone(),
                offset: 0,
                // Shared, so that an ephemeral publication allocates only
                // its `Arc<Publication>`.
                epoch: shared.empty.clone(),
                data,
                from,
                exclude: opts.exclude,
                ephemeral: true,
            });
            deliver(&state.subscribers, NodeEvent::Publication(publication));
            None
        } else {
            state.top += 1;
            let publication = Arc::new(Publication {
                room: state.name.clone(),
                offset: state.top,
                epoch: state.epoch.clone(),
                data,
                from,
                exclude: opts.exclude,
                ephemeral: false,
            });
            state.store(
                publication.clone(),
                now,
                opts.history_size,
                opts.history_ttl,
                &shared.history_bytes,
            );
            deliver(&state.subscribers, NodeEvent::Publication(publication));
            Some(state.position())
        };
        if let Some(key) = opts.idempotency_key {
            state.keys.get_or_insert_default().insert(
                key,
                position.clone(),
                now + opts.history_ttl,
                now,
                shared.config.max_idempotency_keys,
            );
        }
        PublishResult {
            position,
            duplicate: false,
        }
    }

    fn do_history(&self, room: &str, query: HistoryQuery) -> Result<HistoryResult, BrokerError> {
        let now = Instant::now();
        let shared = &self.shared;
        shared.with_room(room, now, |state| {
            state.trim(now, &shared.history_bytes);
            Self::history_in(state, query)
        })?
    }

    /// A history read of `state` (under its shard lock).
    fn history_in(state: &RoomState, query: HistoryQuery) -> Result<HistoryResult, BrokerError> {
        let position = state.position();
        let history = &state.history;
        let Some(since) = query.since else {
            let take = query.limit.min(history.len());
            let publications = if query.reverse {
                history
                    .iter()
                    .rev()
                    .take(take)
                    .map(|s| s.publication.clone())
                    .collect()
            } else {
                history
                    .iter()
                    .take(take)
                    .map(|s| s.publication.clone())
                    .collect()
            };
            return Ok(HistoryResult {
                position,
                publications,
                recoverable: true,
            });
        };
        if since.epoch != state.epoch {
            return Err(BrokerError::EpochMismatch {
                since: since.epoch,
                current: position,
            });
        }
        if since.offset > state.top {
            return Ok(HistoryResult {
                position,
                publications: Vec::new(),
                recoverable: false,
            });
        }
        // Retained offsets are first..=top, contiguous; history is empty when
        // nothing is retained.
        let first = history
            .front()
            .map_or(state.top + 1, |s| s.publication.offset);
        let recoverable = since.offset + 1 >= first;
        let skip = usize::try_from((since.offset + 1).saturating_sub(first)).unwrap_or(usize::MAX);
        let publications = history
            .iter()
            .skip(skip)
            .take(query.limit)
            .map(|s| s.publication.clone())
            .collect();
        Ok(HistoryResult {
            position,
            publications,
            recoverable,
        })
    }

    fn do_presence_list(
        &self,
        room: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<PresencePage, BrokerError> {
        let after = cursor.map(decode_cursor).transpose()?;
        let map = self.shared.lock(room);
        let Some(state) = map.get(room) else {
            return Ok(PresencePage {
                members: Vec::new(),
                next_cursor: None,
                connections: 0,
                users: 0,
            });
        };
        let presence = &state.presence;
        let connections = presence.len();
        let users = presence.users();
        if limit == 0 {
            return Ok(PresencePage {
                members: Vec::new(),
                next_cursor: None,
                connections,
                users,
            });
        }
        let (members, more) = presence.page(after.as_deref(), limit);
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
    }

    fn deliver_member(&self, room: &str, member: PresenceEntry, join: bool) {
        let map = self.shared.lock(room);
        if let Some(state) = map.get(room) {
            let room = state.name.clone();
            let event = if join {
                NodeEvent::Join { room, member }
            } else {
                NodeEvent::Leave { room, member }
            };
            deliver(&state.subscribers, event);
        }
    }
}

impl Drop for MemoryBroker {
    fn drop(&mut self) {
        self.shared
            .nodes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|(node, _)| *node != self.node);
        for shard in self.shared.shards.iter() {
            let mut map = shard.lock().unwrap_or_else(PoisonError::into_inner);
            for state in map.values_mut() {
                state.unsubscribe(self.node);
            }
        }
    }
}

impl Broker for MemoryBroker {
    fn publish<'a>(
        &'a self,
        room: &'a str,
        data: Bytes,
        from: Option<Bytes>,
        opts: PublishOptions,
    ) -> BoxFuture<'a, Result<PublishResult, BrokerError>> {
        Box::pin(async move { self.do_publish(room, data, from, opts) })
    }

    fn broadcast<'a>(
        &'a self,
        room: &'a str,
        message: RawMessage,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        let map = self.shared.lock(room);
        if let Some(state) = map.get(room) {
            let room = state.name.clone();
            deliver(&state.subscribers, NodeEvent::Broadcast { room, message });
        }
        drop(map);
        Box::pin(std::future::ready(Ok(())))
    }

    fn publish_join<'a>(
        &'a self,
        room: &'a str,
        member: PresenceEntry,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            self.deliver_member(room, member, true);
            Ok(())
        })
    }

    fn publish_leave<'a>(
        &'a self,
        room: &'a str,
        member: PresenceEntry,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            self.deliver_member(room, member, false);
            Ok(())
        })
    }

    fn subscribe<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let now = Instant::now();
            self.shared.with_room(room, now, |state| {
                if !state.subscribers.iter().any(|(node, _)| *node == self.node) {
                    // Most rooms have one node: no spare slots.
                    state.subscribers.reserve_exact(1);
                    state.subscribers.push((self.node, self.sink.clone()));
                }
            })
        })
    }

    fn unsubscribe<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let mut map = self.shared.lock(room);
            if let Some(state) = map.get_mut(room) {
                state.unsubscribe(self.node);
                state.touched = Instant::now();
            }
            Ok(())
        })
    }

    fn position<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Result<StreamPosition, BrokerError>> {
        Box::pin(async move {
            self.shared
                .with_room(room, Instant::now(), |state| state.position())
        })
    }

    fn history<'a>(
        &'a self,
        room: &'a str,
        query: HistoryQuery,
    ) -> BoxFuture<'a, Result<HistoryResult, BrokerError>> {
        Box::pin(async move { self.do_history(room, query) })
    }

    fn remove_history<'a>(
        &'a self,
        room: &'a str,
    ) -> BoxFuture<'a, Result<StreamPosition, BrokerError>> {
        Box::pin(async move {
            let now = Instant::now();
            let shared = &self.shared;
            // An existing room loses its history and gets a new epoch; a new one has neither.
            let removed = shared.room_op(room, now, false, |state| {
                state.clear_history(&shared.history_bytes);
                state.epoch = new_epoch();
                state.position()
            })?;
            match removed {
                Some(position) => Ok(position),
                None => shared.with_room(room, now, |state| state.position()),
            }
        })
    }

    fn command<'a>(&'a self, command: ClusterCommand) -> BoxFuture<'a, Result<(), BrokerError>> {
        let nodes: Vec<_> = self
            .shared
            .nodes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(_, sink)| sink.clone())
            .collect();
        for sink in nodes {
            sink.deliver(NodeEvent::Command(command.clone()));
        }
        Box::pin(std::future::ready(Ok(())))
    }
}

impl PresenceStore for MemoryBroker {
    fn presence_add<'a>(
        &'a self,
        room: &'a str,
        entry: PresenceEntry,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let now = Instant::now();
            if let Some(ttl) = self.shared.config.presence_ttl {
                self.shared
                    .presence_expiry
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert((Arc::from(room), entry.connection.clone()), now + ttl);
            }
            self.shared
                .with_room(room, now, |state| state.presence.add(entry))
        })
    }

    fn presence_ttl(&self) -> Option<Duration> {
        self.shared.config.presence_ttl
    }

    fn presence_remove<'a>(
        &'a self,
        room: &'a str,
        connection: &'a str,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let mut map = self.shared.lock(room);
            if let Some(state) = map.get_mut(room) {
                state.presence.remove(connection);
                state.touched = Instant::now();
            }
            drop(map);
            if self.shared.config.presence_ttl.is_some() {
                self.shared
                    .presence_expiry
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&(Arc::from(room), Arc::from(connection)));
            }
            Ok(())
        })
    }

    fn presence_list<'a>(
        &'a self,
        room: &'a str,
        cursor: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<PresencePage, BrokerError>> {
        Box::pin(async move { self.do_presence_list(room, cursor, limit) })
    }
}

/// Rooms are boxed: a `RoomState` is much larger than a pointer, and a hash
/// table keeps up to half of its slots spare.
type Rooms = HashMap<Arc<str>, Box<RoomState>>;

/// What a [`MemoryBroker`]'s budgets did, with a number of rooms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetEvent {
    /// Rooms whose history was dropped ([`MemoryBrokerConfig::history_memory`]).
    HistoryDropped,
    /// Idle rooms forgotten ([`MemoryBrokerConfig::max_rooms`]).
    RoomsForgotten,
    /// A new room refused ([`MemoryBrokerConfig::max_rooms`]).
    RoomRefused,
}

/// Told of [`BudgetEvent`]s.
pub type BudgetObserver = Arc<dyn Fn(BudgetEvent, usize) + Send + Sync>;

type Shard = Mutex<Rooms>;

/// When each (room, connection) presence entry expires, with a presence ttl.
type PresenceExpiry = HashMap<(Arc<str>, Arc<str>), Instant>;

struct Shared {
    shards: Box<[Shard]>,
    hasher: RandomState,
    /// The epoch of ephemeral publications.
    empty: Arc<str>,
    next_node: AtomicU64,
    /// Every node's sink, for [`Broker::command`].
    nodes: Mutex<Vec<(u64, Arc<dyn NodeSink>)>>,
    /// With a presence ttl: when each (room, connection) entry expires unless added again.
    presence_expiry: Mutex<PresenceExpiry>,
    /// What [`MemoryBrokerConfig::history_memory`] counts: [`stored_cost`] of every retained
    /// publication.
    history_bytes: AtomicUsize,
    /// Rooms in the shard maps.
    room_count: AtomicUsize,
    /// One eviction at a time (they scan every shard).
    evicting: Mutex<()>,
    /// Told of evictions and refusals ([`MemoryBroker::on_budget`]).
    on_budget: std::sync::OnceLock<BudgetObserver>,
    config: MemoryBrokerConfig,
}

impl Shared {
    fn lock(&self, room: &str) -> MutexGuard<'_, Rooms> {
        let index = (self.hasher.hash_one(room) % self.shards.len() as u64) as usize;
        // A panicking sink must not take the broker down with it: the state
        // is consistent between statements that touch it.
        self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn sweep(&self, now: Instant) {
        let expired: Vec<(Arc<str>, Arc<str>)> = {
            let mut expiry = self
                .presence_expiry
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let expired = expiry
                .iter()
                .filter(|(_, at)| **at <= now)
                .map(|(key, _)| key.clone())
                .collect();
            expiry.retain(|_, at| *at > now);
            expired
        };
        for (room, connection) in expired {
            if let Some(state) = self.lock(&room).get_mut(&room) {
                state.presence.remove(&connection);
            }
        }
        for shard in self.shards.iter() {
            let mut map = shard.lock().unwrap_or_else(PoisonError::into_inner);
            map.retain(|_, state| {
                state.sweep(now, self.config.max_idempotency_keys, &self.history_bytes);
                let remove = state.removable(now, self.config.meta_ttl);
                if remove {
                    self.room_count.fetch_sub(1, Ordering::Relaxed);
                }
                !remove
            });
            shrink_spare(&mut *map);
        }
    }
}

fn spawn_sweeper(shared: &Arc<Shared>) {
    let period = shared.config.sweep_interval;
    if period.is_zero() {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let weak: Weak<Shared> = Arc::downgrade(shared);
    runtime.spawn(async move {
        let mut ticks = tokio::time::interval_at(Instant::now() + period, period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let Some(shared) = weak.upgrade() else { break };
            shared.sweep(Instant::now());
        }
    });
}

/// Calls every subscribed node's sink, moving the event into the last one.
fn deliver(subscribers: &[(u64, Arc<dyn NodeSink>)], event: NodeEvent) {
    if let Some(((_, last), rest)) = subscribers.split_last() {
        for (_, sink) in rest {
            sink.deliver(event.clone());
        }
        last.deliver(event);
    }
}

impl Shared {
    /// Runs `f` on the room's state under its shard lock, the state created (with a new
    /// stream) if it does not exist, and marked as used now. A new room past
    /// [`MemoryBrokerConfig::max_rooms`] evicts idle rooms first, and is refused when none
    /// can be.
    fn with_room<R>(
        &self,
        room: &str,
        now: Instant,
        f: impl FnOnce(&mut RoomState) -> R,
    ) -> Result<R, BrokerError> {
        self.room_op(room, now, true, f)
            .map(|r| r.expect("a room is created when missing"))
    }

    /// [`Shared::with_room`], but a missing room is created only when `create` (else `Ok(None)`,
    /// decided under the same lock).
    fn room_op<R>(
        &self,
        room: &str,
        now: Instant,
        create: bool,
        f: impl FnOnce(&mut RoomState) -> R,
    ) -> Result<Option<R>, BrokerError> {
        let max = self.config.max_rooms;
        for attempt in 0..2 {
            let mut map = self.lock(room);
            if !map.contains_key(room) {
                if !create {
                    return Ok(None);
                }
                if max > 0 && self.room_count.load(Ordering::Relaxed) >= max {
                    drop(map);
                    if attempt == 0 {
                        self.evict_rooms();
                    }
                    continue;
                }
                let name: Arc<str> = Arc::from(room);
                map.insert(name.clone(), Box::new(RoomState::new(name, now)));
                self.room_count.fetch_add(1, Ordering::Relaxed);
            }
            let state = map.get_mut(room).expect("present or inserted above");
            state.touched = now;
            return Ok(Some(f(state)));
        }
        self.tell(BudgetEvent::RoomRefused, 1);
        Err(BrokerError::LimitExceeded {
            message: format!(
                "this node holds limits.max_rooms = {max} rooms and every one is in use; \
                 no new room can be created now"
            ),
        })
    }

    fn tell(&self, event: BudgetEvent, rooms: usize) {
        if rooms == 0 {
            return;
        }
        if let Some(observer) = self.on_budget.get() {
            observer(event, rooms);
        }
    }

    /// Brings the rooms 10 % under [`MemoryBrokerConfig::max_rooms`] by removing the least
    /// recently used rooms that have no subscribed node and no presence (those without
    /// idempotency keys first).
    fn evict_rooms(&self) {
        let max = self.config.max_rooms;
        let _one = self.evicting.lock().unwrap_or_else(PoisonError::into_inner);
        if self.room_count.load(Ordering::Relaxed) < max {
            return; // another caller just did it
        }
        let target = max - max.div_ceil(10);
        let mut idle: Vec<(bool, Instant, Arc<str>)> = Vec::new();
        for shard in self.shards.iter() {
            let map = shard.lock().unwrap_or_else(PoisonError::into_inner);
            idle.extend(
                map.values()
                    .filter(|s| s.subscribers.is_empty() && s.presence.is_empty())
                    .map(|s| (s.keys.is_some(), s.touched, s.name.clone())),
            );
        }
        idle.sort_unstable_by_key(|a| (a.0, a.1));
        let mut evicted = 0usize;
        for (_, _, name) in idle {
            if self.room_count.load(Ordering::Relaxed) <= target {
                break;
            }
            let mut map = self.lock(&name);
            // Used again since the scan: keep it.
            if map
                .get(&name)
                .is_some_and(|s| s.subscribers.is_empty() && s.presence.is_empty())
                && let Some(mut state) = map.remove(&name)
            {
                state.clear_history(&self.history_bytes);
                self.room_count.fetch_sub(1, Ordering::Relaxed);
                evicted += 1;
            }
        }
        self.tell(BudgetEvent::RoomsForgotten, evicted);
        tracing::info!(
            evicted,
            max_rooms = max,
            "limits.max_rooms reached: the least recently used idle rooms were forgotten"
        );
    }

    /// Brings the retained bytes 10 % under [`MemoryBrokerConfig::history_memory`] by
    /// dropping the history of the least recently used rooms (rooms without a subscribed
    /// node first). Skipped while another eviction runs.
    fn evict_history(&self) {
        let budget = self.config.history_memory;
        let Ok(_one) = self.evicting.try_lock() else {
            return;
        };
        if self.history_bytes.load(Ordering::Relaxed) <= budget {
            return;
        }
        let target = budget - budget / 10;
        let mut kept: Vec<(bool, Instant, Arc<str>)> = Vec::new();
        for shard in self.shards.iter() {
            let map = shard.lock().unwrap_or_else(PoisonError::into_inner);
            kept.extend(
                map.values()
                    .filter(|s| !s.history.is_empty())
                    .map(|s| (!s.subscribers.is_empty(), s.touched, s.name.clone())),
            );
        }
        kept.sort_unstable_by_key(|a| (a.0, a.1));
        let mut rooms = 0usize;
        for (_, _, name) in kept {
            if self.history_bytes.load(Ordering::Relaxed) <= target {
                break;
            }
            if let Some(state) = self.lock(&name).get_mut(&name) {
                state.clear_history(&self.history_bytes);
                rooms += 1;
            }
        }
        self.tell(BudgetEvent::HistoryDropped, rooms);
        tracing::info!(
            rooms,
            history_memory = budget,
            "limits.history_memory reached: the least recently used rooms' history was dropped"
        );
    }
}

/// What one retained publication counts against [`MemoryBrokerConfig::history_memory`]:
/// its data and `from`, and its bookkeeping (the `Publication`, its `Arc` counts and its
/// slot in the ring).
fn stored_cost(p: &Publication) -> usize {
    const BOOKKEEPING: usize =
        std::mem::size_of::<Publication>() + 16 + std::mem::size_of::<Stored>();
    p.data.len() + p.from.as_ref().map_or(0, Bytes::len) + BOOKKEEPING
}

fn new_epoch() -> Arc<str> {
    // Drawn into a stack buffer: the `Arc` is the only allocation.
    let mut epoch = [0u8; 8];
    for (byte, c) in epoch.iter_mut().zip(rand::rng().sample_iter(&Alphanumeric)) {
        *byte = c;
    }
    Arc::from(std::str::from_utf8(&epoch).expect("alphanumeric is ASCII"))
}

/// Gives back a collection's spare capacity once its length has dropped to a
/// quarter of it, keeping room to double: one that shrinks and grows back is
/// not reallocated every time, and one that empties frees everything.
fn shrink_spare<C: Spare>(collection: &mut C) {
    let (len, capacity) = collection.len_and_capacity();
    if capacity > 0 && len <= capacity / 4 {
        collection.shrink_to(len * 2);
    }
}

/// The collections [`shrink_spare`] works on.
trait Spare {
    fn len_and_capacity(&self) -> (usize, usize);
    fn shrink_to(&mut self, min_capacity: usize);
}

impl<T> Spare for Vec<T> {
    fn len_and_capacity(&self) -> (usize, usize) {
        (self.len(), self.capacity())
    }
    fn shrink_to(&mut self, min_capacity: usize) {
        Vec::shrink_to(self, min_capacity);
    }
}

impl<T> Spare for VecDeque<T> {
    fn len_and_capacity(&self) -> (usize, usize) {
        (self.len(), self.capacity())
    }
    fn shrink_to(&mut self, min_capacity: usize) {
        VecDeque::shrink_to(self, min_capacity);
    }
}

impl<K: Eq + std::hash::Hash, V, S: BuildHasher> Spare for HashMap<K, V, S> {
    fn len_and_capacity(&self) -> (usize, usize) {
        (self.len(), self.capacity())
    }
    fn shrink_to(&mut self, min_capacity: usize) {
        HashMap::shrink_to(self, min_capacity);
    }
}

struct RoomState {
    name: Arc<str>,
    epoch: Arc<str>,
    top: u64,
    /// Contiguous offsets ending at `top`, expiries non-decreasing.
    history: VecDeque<Stored>,
    /// At most one entry per node, without spare capacity.
    subscribers: Vec<(u64, Arc<dyn NodeSink>)>,
    presence: Presence,
    /// Allocated at the first keyed publication and dropped by the sweep when
    /// no key is left: most rooms never see one.
    keys: Option<Box<IdempotencyKeys>>,
    touched: Instant,
}

struct Stored {
    publication: Arc<Publication>,
    expires: Instant,
}

impl RoomState {
    fn new(name: Arc<str>, now: Instant) -> Self {
        Self {
            name,
            epoch: new_epoch(),
            top: 0,
            history: VecDeque::new(),
            subscribers: Vec::new(),
            presence: Presence::default(),
            keys: None,
            touched: now,
        }
    }

    fn unsubscribe(&mut self, node: u64) {
        let before = self.subscribers.len();
        self.subscribers.retain(|(n, _)| *n != node);
        if self.subscribers.len() != before {
            self.subscribers.shrink_to_fit();
        }
    }

    /// Drops expired history and keys and gives back spare capacity.
    fn sweep(&mut self, now: Instant, max_keys: usize, bytes: &AtomicUsize) {
        self.trim(now, bytes);
        shrink_spare(&mut self.history);
        if let Some(keys) = &mut self.keys {
            keys.sweep(now, max_keys);
            if keys.map.is_empty() {
                self.keys = None;
            } else {
                shrink_spare(&mut keys.map);
                shrink_spare(&mut keys.order);
            }
        }
    }

    fn position(&self) -> StreamPosition {
        StreamPosition {
            epoch: self.epoch.clone(),
            offset: self.top,
        }
    }

    fn store(
        &mut self,
        publication: Arc<Publication>,
        now: Instant,
        size: usize,
        ttl: Duration,
        bytes: &AtomicUsize,
    ) {
        if size == 0 {
            self.clear_history(bytes);
            return;
        }
        let expires = now + ttl;
        // Keep expiries non-decreasing so that what is retained stays a
        // contiguous suffix: an older publication never outlives a newer one.
        for stored in self.history.iter_mut().rev() {
            if stored.expires <= expires {
                break;
            }
            stored.expires = expires;
        }
        while self.history.len() >= size {
            self.pop_front(bytes);
        }
        let len = self.history.len();
        if len == self.history.capacity() {
            // Double, but never past the bound: a ring of 100 would
            // otherwise get 128 slots.
            self.history.reserve_exact(len.max(4).min(size - len));
        }
        bytes.fetch_add(stored_cost(&publication), Ordering::Relaxed);
        self.history.push_back(Stored {
            publication,
            expires,
        });
        self.trim(now, bytes);
    }

    fn trim(&mut self, now: Instant, bytes: &AtomicUsize) {
        while self.history.front().is_some_and(|s| s.expires <= now) {
            self.pop_front(bytes);
        }
    }

    fn pop_front(&mut self, bytes: &AtomicUsize) {
        if let Some(stored) = self.history.pop_front() {
            bytes.fetch_sub(stored_cost(&stored.publication), Ordering::Relaxed);
        }
    }

    /// Drops every retained publication (epoch and top stay).
    fn clear_history(&mut self, bytes: &AtomicUsize) {
        let freed: usize = self
            .history
            .iter()
            .map(|s| stored_cost(&s.publication))
            .sum();
        bytes.fetch_sub(freed, Ordering::Relaxed);
        self.history = VecDeque::new();
    }

    fn removable(&self, now: Instant, meta_ttl: Duration) -> bool {
        self.subscribers.is_empty()
            && self.history.is_empty()
            && self.presence.is_empty()
            && self.keys.as_ref().is_none_or(|keys| keys.map.is_empty())
            && now.saturating_duration_since(self.touched) >= meta_ttl
    }
}

/// Up to this many members a room's presence is a sorted `Vec`: one entry
/// costs its 64 bytes, where a `BTreeMap` allocates a node for 11 entries
/// even for one member. Above it, joins and leaves stay O(log n).
const SMALL_PRESENCE: usize = 32;

/// A large presence turns small again at this size: below
/// [`SMALL_PRESENCE`], so that a room hovering around the threshold is not
/// converted at every join and leave.
const SMALL_PRESENCE_AGAIN: usize = SMALL_PRESENCE / 2;

/// A room's presence, keyed and ordered by connection id.
enum Presence {
    /// Sorted by connection id, ids distinct. Distinct users are counted by
    /// scanning, which is cheap at this size.
    Small(Vec<PresenceEntry>),
    /// Boxed: only a few rooms are large, and it keeps `Presence` small.
    Large(Box<LargePresence>),
}

struct LargePresence {
    members: BTreeMap<Arc<str>, PresenceEntry>,
    /// Connections per user.
    users: HashMap<Arc<str>, usize>,
}

impl Default for Presence {
    fn default() -> Self {
        Presence::Small(Vec::new())
    }
}

impl Presence {
    fn len(&self) -> usize {
        match self {
            Presence::Small(members) => members.len(),
            Presence::Large(large) => large.members.len(),
        }
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many distinct users have a connection.
    fn users(&self) -> usize {
        match self {
            Presence::Small(members) => members
                .iter()
                .enumerate()
                .filter(|(i, entry)| !members[..*i].iter().any(|e| e.user == entry.user))
                .count(),
            Presence::Large(large) => large.users.len(),
        }
    }

    fn add(&mut self, entry: PresenceEntry) {
        match self {
            Presence::Small(members) => {
                match members.binary_search_by(|e| e.connection.cmp(&entry.connection)) {
                    Ok(i) => members[i] = entry,
                    Err(i) if members.len() < SMALL_PRESENCE => {
                        // Double from one: a personal room's single member
                        // gets a single slot.
                        if members.len() == members.capacity() {
                            members.reserve_exact(members.len().max(1));
                        }
                        members.insert(i, entry);
                    }
                    Err(_) => {
                        let mut large = LargePresence {
                            members: BTreeMap::new(),
                            users: HashMap::new(),
                        };
                        for member in std::mem::take(members) {
                            large.add(member);
                        }
                        large.add(entry);
                        *self = Presence::Large(Box::new(large));
                    }
                }
            }
            Presence::Large(large) => large.add(entry),
        }
    }

    fn remove(&mut self, connection: &str) {
        match self {
            Presence::Small(members) => {
                if let Ok(i) = members.binary_search_by(|e| (*e.connection).cmp(connection)) {
                    members.remove(i);
                    shrink_spare(members);
                }
            }
            Presence::Large(large) => {
                if let Some(old) = large.members.remove(connection) {
                    large.forget_user(&old.user);
                }
                if large.members.len() <= SMALL_PRESENCE_AGAIN {
                    let mut members = Vec::with_capacity(large.members.len());
                    // In key order: the `Vec` comes out sorted.
                    members.extend(std::mem::take(&mut large.members).into_values());
                    *self = Presence::Small(members);
                }
            }
        }
    }

    /// At most `limit` members with a connection id above `after`, in order,
    /// and whether more follow them.
    fn page(&self, after: Option<&str>, limit: usize) -> (Vec<PresenceEntry>, bool) {
        match self {
            Presence::Small(members) => {
                let start = after.map_or(0, |after| {
                    members.partition_point(|e| &*e.connection <= after)
                });
                let rest = &members[start..];
                let take = limit.min(rest.len());
                (rest[..take].to_vec(), rest.len() > take)
            }
            Presence::Large(large) => {
                let lower = match after {
                    Some(after) => Bound::Excluded(after),
                    None => Bound::Unbounded,
                };
                let mut range = large
                    .members
                    .range::<str, _>((lower, Bound::Unbounded))
                    .map(|(_, entry)| entry);
                let members = range.by_ref().take(limit).cloned().collect();
                (members, range.next().is_some())
            }
        }
    }
}

impl LargePresence {
    fn add(&mut self, entry: PresenceEntry) {
        let user = entry.user.clone();
        if let Some(old) = self.members.insert(entry.connection.clone(), entry) {
            self.forget_user(&old.user);
        }
        *self.users.entry(user).or_insert(0) += 1;
    }

    fn forget_user(&mut self, user: &str) {
        if let Some(count) = self.users.get_mut(user) {
            *count -= 1;
            if *count == 0 {
                self.users.remove(user);
            }
        }
    }
}

#[derive(Default)]
struct IdempotencyKeys {
    map: HashMap<Arc<str>, (Option<StreamPosition>, Instant)>,
    /// Keys in insertion order with the expiry they were inserted with; an
    /// entry whose expiry differs from the map's is stale (the key was reused
    /// after expiring) and is skipped.
    order: VecDeque<(Arc<str>, Instant)>,
}

impl IdempotencyKeys {
    fn get(&self, key: &str, now: Instant) -> Option<Option<StreamPosition>> {
        match self.map.get(key) {
            Some((position, expires)) if *expires > now => Some(position.clone()),
            _ => None,
        }
    }

    fn insert(
        &mut self,
        key: String,
        position: Option<StreamPosition>,
        expires: Instant,
        now: Instant,
        max: usize,
    ) {
        let key: Arc<str> = Arc::from(key);
        self.map.insert(key.clone(), (position, expires));
        self.order.push_back((key, expires));
        self.sweep(now, max);
    }

    fn sweep(&mut self, now: Instant, max: usize) {
        while let Some((key, inserted_expiry)) = self.order.front() {
            let live = match self.map.get(key) {
                Some((_, expires)) if expires == inserted_expiry => {
                    if *expires > now && self.map.len() <= max {
                        break;
                    }
                    true
                }
                _ => false,
            };
            let (key, _) = self.order.pop_front().expect("front exists");
            if live {
                self.map.remove(&key);
            }
        }
    }
}

pub(super) fn encode_cursor(connection: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(connection.len() * 2);
    for byte in connection.bytes() {
        out.push(HEX[usize::from(byte >> 4)] as char);
        out.push(HEX[usize::from(byte & 0xf)] as char);
    }
    out
}

pub(super) fn decode_cursor(cursor: &str) -> Result<String, BrokerError> {
    fn nibble(c: u8) -> Result<u8, BrokerError> {
        match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            _ => Err(BrokerError::InvalidCursor),
        }
    }
    let bytes = cursor.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return Err(BrokerError::InvalidCursor);
    }
    let decoded = bytes
        .chunks_exact(2)
        .map(|pair| Ok(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect::<Result<Vec<u8>, BrokerError>>()?;
    String::from_utf8(decoded).map_err(|_| BrokerError::InvalidCursor)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::super::HistoryQuery;
    use super::super::conformance::{self, Backend};
    use super::*;

    /// The memory broker as a conformance backend: a fresh state per call,
    /// tokio's clock for ttls.
    struct Memory;

    impl Backend for Memory {
        fn nodes(&self, sinks: Vec<Arc<dyn NodeSink>>) -> BoxFuture<'_, Vec<Arc<dyn Broker>>> {
            Box::pin(async move {
                let mut sinks = sinks.into_iter();
                let first = MemoryBroker::new(sinks.next().expect("one sink at least"));
                let others: Vec<MemoryBroker> = sinks.map(|s| first.connect_node(s)).collect();
                std::iter::once(first)
                    .chain(others)
                    .map(|b| Arc::new(b) as Arc<dyn Broker>)
                    .collect()
            })
        }

        fn advance(&self, by: Duration) -> BoxFuture<'_, ()> {
            Box::pin(tokio::time::advance(by))
        }
    }

    crate::broker_conformance_tests!(Memory);

    /// The whole suite in one go, on a paused single-threaded runtime.
    #[tokio::test(start_paused = true)]
    async fn run_all_paused() {
        assert_eq!(conformance::UNTIMED.len() + conformance::TIMED.len(), 25);
        conformance::run_all(&Memory).await;
    }

    fn counting() -> (Arc<dyn NodeSink>, Arc<AtomicUsize>) {
        let count = Arc::new(AtomicUsize::new(0));
        let c = count.clone();
        let sink = move |_event: NodeEvent| {
            c.fetch_add(1, Ordering::SeqCst);
        };
        (Arc::new(sink), count)
    }

    fn opts() -> PublishOptions {
        PublishOptions::default()
    }

    fn since(p: &StreamPosition, offset: u64) -> HistoryQuery {
        HistoryQuery {
            since: Some(StreamPosition {
                epoch: p.epoch.clone(),
                offset,
            }),
            limit: 100,
            reverse: false,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn past_the_history_budget_the_least_recently_used_rooms_lose_their_history_first() {
        let (sink, _) = counting();
        let kib = Bytes::from(vec![b'1'; 1024]);
        let cost = 1024
            + stored_cost(&Publication {
                room: Arc::from(""),
                offset: 0,
                epoch: Arc::from(""),
                data: Bytes::new(),
                from: None,
                exclude: None,
                ephemeral: false,
            });
        let config = MemoryBrokerConfig {
            sweep_interval: Duration::ZERO,
            history_memory: 20 * cost,
            ..MemoryBrokerConfig::default()
        };
        let b = MemoryBroker::with_config(config, sink);
        // A subscribed room, used first: it keeps its history while idle rooms have some.
        b.subscribe("watched").await.unwrap();
        b.publish("watched", kib.clone(), None, opts())
            .await
            .unwrap();
        let watched = b.position("watched").await.unwrap();
        tokio::time::advance(Duration::from_millis(1)).await;
        for room in 0..30 {
            b.publish(&format!("r{room}"), kib.clone(), None, opts())
                .await
                .unwrap();
            tokio::time::advance(Duration::from_millis(1)).await;
            assert!(b.history_bytes() <= 20 * cost, "{}", b.history_bytes());
        }
        assert_eq!(b.history_bytes() % cost, 0, "exact accounting");
        // The oldest idle rooms lost their history: recovering from before it is not
        // possible (never a wrong answer); the newest kept theirs, and so did the
        // subscribed room.
        let r0 = b.position("r0").await.unwrap();
        assert_eq!(r0.offset, 1, "the room keeps its epoch and top");
        let h = b.history("r0", since(&r0, 0)).await.unwrap();
        assert!(!h.recoverable && h.publications.is_empty());
        let r29 = b.position("r29").await.unwrap();
        let h = b.history("r29", since(&r29, 0)).await.unwrap();
        assert!(h.recoverable && h.publications.len() == 1);
        let h = b.history("watched", since(&watched, 0)).await.unwrap();
        assert!(h.recoverable && h.publications.len() == 1, "{h:?}");
        // Removing history and the sweep give the bytes back.
        for room in 0..30 {
            b.remove_history(&format!("r{room}")).await.unwrap();
        }
        b.remove_history("watched").await.unwrap();
        assert_eq!(b.history_bytes(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn at_max_rooms_idle_rooms_are_evicted_and_only_rooms_in_use_refuse() {
        let (sink, _) = counting();
        let config = MemoryBrokerConfig {
            sweep_interval: Duration::ZERO,
            max_rooms: 10,
            ..MemoryBrokerConfig::default()
        };
        let b = MemoryBroker::with_config(config, sink);
        for room in 0..5 {
            b.subscribe(&format!("s{room}")).await.unwrap();
        }
        let old = b.position("i0").await.unwrap();
        tokio::time::advance(Duration::from_millis(1)).await;
        for room in 1..100 {
            b.publish(&format!("i{room}"), Bytes::from_static(b"1"), None, opts())
                .await
                .unwrap();
            tokio::time::advance(Duration::from_millis(1)).await;
            assert!(b.rooms() <= 10, "{}", b.rooms());
        }
        // The oldest idle room was forgotten: it comes back with a new epoch.
        let again = b.position("i0").await.unwrap();
        assert_ne!(again.epoch, old.epoch);
        // The subscribed rooms were never evicted.
        for room in 0..5 {
            let p = b.position(&format!("s{room}")).await.unwrap();
            assert_eq!(p.offset, 0);
        }
        let fresh = MemoryBroker::with_config(
            MemoryBrokerConfig {
                sweep_interval: Duration::ZERO,
                max_rooms: 2,
                ..MemoryBrokerConfig::default()
            },
            counting().0,
        );
        let refused = Arc::new(AtomicUsize::new(0));
        let seen = refused.clone();
        fresh.on_budget(Arc::new(move |event, n| {
            if event == BudgetEvent::RoomRefused {
                seen.fetch_add(n, Ordering::SeqCst);
            }
        }));
        fresh.subscribe("a").await.unwrap();
        fresh.subscribe("b").await.unwrap();
        let e = fresh.subscribe("c").await.unwrap_err();
        assert!(matches!(e, BrokerError::LimitExceeded { .. }), "{e:?}");
        assert!(e.to_string().contains("limits.max_rooms"), "{e}");
        let e = fresh
            .publish("c", Bytes::from_static(b"1"), None, opts())
            .await
            .unwrap_err();
        assert!(matches!(e, BrokerError::LimitExceeded { .. }), "{e:?}");
        // Existing rooms are served as before.
        fresh
            .publish("a", Bytes::from_static(b"1"), None, opts())
            .await
            .unwrap();
        assert_eq!(refused.load(Ordering::SeqCst), 2, "both refusals were told");
        fresh.unsubscribe("b").await.unwrap();
        fresh.subscribe("c").await.unwrap();
        assert_eq!(fresh.rooms(), 2);
    }

    #[tokio::test]
    async fn epochs_are_eight_base62_chars_and_differ_per_room() {
        let (sink, _) = counting();
        let b = MemoryBroker::new(sink);
        let x = b.position("x").await.unwrap().epoch;
        let y = b.position("y").await.unwrap().epoch;
        for e in [&x, &y] {
            assert_eq!(e.len(), 8);
            assert!(e.bytes().all(|c| c.is_ascii_alphanumeric()), "{e}");
        }
        assert_ne!(x, y);
    }

    #[tokio::test(start_paused = true)]
    async fn sweep_removes_only_idle_empty_rooms() {
        let (sink, _) = counting();
        let config = MemoryBrokerConfig {
            sweep_interval: Duration::ZERO,
            meta_ttl: Duration::from_secs(60),
            ..MemoryBrokerConfig::default()
        };
        let b = MemoryBroker::with_config(config, sink);
        b.position("idle").await.unwrap();
        b.subscribe("subscribed").await.unwrap();
        b.presence_add(
            "present",
            PresenceEntry {
                connection: Arc::from("c"),
                user: Arc::from("u"),
                info: None,
            },
        )
        .await
        .unwrap();
        let ttl = |secs| PublishOptions {
            history_ttl: Duration::from_secs(secs),
            ..opts()
        };
        b.publish("history", Bytes::from_static(b"1"), None, ttl(300))
            .await
            .unwrap();
        let keyed = PublishOptions {
            idempotency_key: Some("k".into()),
            history_size: 0,
            ..ttl(600)
        };
        b.publish("keyed", Bytes::from_static(b"1"), None, keyed)
            .await
            .unwrap();
        assert_eq!(b.rooms(), 5);

        tokio::time::advance(Duration::from_secs(30)).await;
        b.sweep();
        assert_eq!(b.rooms(), 5, "nothing is idle for meta_ttl yet");
        tokio::time::advance(Duration::from_secs(31)).await;
        b.sweep();
        assert_eq!(b.rooms(), 4, "the idle room goes");
        tokio::time::advance(Duration::from_secs(300)).await;
        b.sweep();
        assert_eq!(b.rooms(), 3, "the room whose history expired goes");
        tokio::time::advance(Duration::from_secs(300)).await;
        b.sweep();
        assert_eq!(b.rooms(), 2, "the room whose key expired goes");
        b.unsubscribe("subscribed").await.unwrap();
        b.presence_remove("present", "c").await.unwrap();
        tokio::time::advance(Duration::from_secs(61)).await;
        b.sweep();
        assert_eq!(b.rooms(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn background_sweep_runs() {
        let (sink, _) = counting();
        let config = MemoryBrokerConfig {
            sweep_interval: Duration::from_secs(1),
            meta_ttl: Duration::from_secs(10),
            ..MemoryBrokerConfig::default()
        };
        let b = MemoryBroker::with_config(config, sink);
        b.position("idle").await.unwrap();
        assert_eq!(b.rooms(), 1);
        // Paused time advances by itself while the runtime idles.
        tokio::time::sleep(Duration::from_secs(12)).await;
        assert_eq!(b.rooms(), 0);
    }

    #[test]
    fn works_without_a_runtime_at_construction() {
        let (sink, count) = counting();
        let b = MemoryBroker::new(sink);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            b.subscribe("r").await.unwrap();
            b.publish("r", Bytes::from_static(b"1"), None, opts())
                .await
                .unwrap();
        });
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn dropping_a_node_unsubscribes_it() {
        let (sink_a, count_a) = counting();
        let (sink_b, count_b) = counting();
        let a = MemoryBroker::new(sink_a);
        let b = a.connect_node(sink_b);
        a.subscribe("r").await.unwrap();
        b.subscribe("r").await.unwrap();
        a.publish("r", Bytes::from_static(b"1"), None, opts())
            .await
            .unwrap();
        drop(b);
        a.publish("r", Bytes::from_static(b"2"), None, opts())
            .await
            .unwrap();
        assert_eq!(count_a.load(Ordering::SeqCst), 2);
        assert_eq!(count_b.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn idempotency_keys_are_bounded() {
        let (sink, _) = counting();
        let config = MemoryBrokerConfig {
            max_idempotency_keys: 3,
            ..MemoryBrokerConfig::default()
        };
        let b = MemoryBroker::with_config(config, sink);
        let key = |k: &str| PublishOptions {
            idempotency_key: Some(k.to_owned()),
            ..opts()
        };
        for k in ["a", "b", "c", "d"] {
            let r = b.publish("r", Bytes::new(), None, key(k)).await.unwrap();
            assert!(!r.duplicate);
        }
        let d = b.publish("r", Bytes::new(), None, key("d")).await.unwrap();
        assert!(d.duplicate);
        let a = b.publish("r", Bytes::new(), None, key("a")).await.unwrap();
        assert!(!a.duplicate, "the oldest key is forgotten past the bound");
        assert_eq!(a.position.unwrap().offset, 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lower_ttl_cuts_older_publications() {
        let (sink, _) = counting();
        let b = MemoryBroker::new(sink);
        let ttl = |secs| PublishOptions {
            history_ttl: Duration::from_secs(secs),
            ..opts()
        };
        b.publish("r", Bytes::new(), None, ttl(100)).await.unwrap();
        b.publish("r", Bytes::new(), None, ttl(100)).await.unwrap();
        b.publish("r", Bytes::new(), None, ttl(10)).await.unwrap();
        tokio::time::advance(Duration::from_secs(5)).await;
        let h = b.history("r", HistoryQuery::default()).await.unwrap();
        assert_eq!(h.publications.len(), 3);
        tokio::time::advance(Duration::from_secs(6)).await;
        let h = b.history("r", HistoryQuery::default()).await.unwrap();
        assert!(h.publications.is_empty(), "retained history stays a suffix");
        assert_eq!(h.position.offset, 3);
    }

    #[tokio::test]
    async fn remove_history_of_an_unknown_room_creates_it() {
        let (sink, _) = counting();
        let b = MemoryBroker::new(sink);
        let p = b.remove_history("r").await.unwrap();
        assert_eq!(p.offset, 0);
        assert_eq!(b.position("r").await.unwrap(), p);
    }

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        for id in ["", "c_7Hk2", "ünïcødé", "a:b/c"] {
            assert_eq!(decode_cursor(&encode_cursor(id)).unwrap(), id);
        }
        for bad in ["0", "zz", "AB", "ff", "c3"] {
            assert!(
                matches!(decode_cursor(bad), Err(BrokerError::InvalidCursor)),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_panicking_sink_does_not_poison_the_broker() {
        let b = MemoryBroker::new(Arc::new(|_event: NodeEvent| panic!("sink")));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            b.subscribe("r").await.unwrap();
            let publish = std::panic::AssertUnwindSafe(b.publish(
                "r",
                Bytes::new(),
                None,
                PublishOptions::default(),
            ));
            let caught = std::panic::catch_unwind(|| {
                futures_poll_once(publish);
            });
            assert!(caught.is_err());
            b.unsubscribe("r").await.unwrap();
            let r = b
                .publish("r", Bytes::new(), None, PublishOptions::default())
                .await
                .unwrap();
            assert_eq!(r.position.unwrap().offset, 2);
        });
    }

    fn entry(connection: &str, user: &str) -> PresenceEntry {
        PresenceEntry {
            connection: Arc::from(connection),
            user: Arc::from(user),
            info: Some(Bytes::from(format!("{{\"name\":\"{user}\"}}"))),
        }
    }

    fn is_large(presence: &Presence) -> bool {
        matches!(presence, Presence::Large(_))
    }

    /// Every member, walking `presence` in pages of `limit` as
    /// `do_presence_list` does.
    fn walk(presence: &Presence, limit: usize) -> Vec<PresenceEntry> {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let (page, more) = presence.page(after.as_deref(), limit);
            assert!(page.len() <= limit);
            assert!(!more || page.len() == limit, "a short page is the last");
            all.extend(page.iter().cloned());
            match (more, page.last()) {
                (true, Some(last)) => after = Some(last.connection.to_string()),
                _ => return all,
            }
        }
    }

    /// Checks `presence` against a reference map: counts, order, and pages
    /// of several sizes, from the start and from every member.
    fn assert_matches(presence: &Presence, reference: &BTreeMap<String, PresenceEntry>) {
        let expected: Vec<PresenceEntry> = reference.values().cloned().collect();
        let users: std::collections::HashSet<&str> = reference.values().map(|e| &*e.user).collect();
        assert_eq!(presence.len(), reference.len());
        assert_eq!(presence.is_empty(), reference.is_empty());
        assert_eq!(presence.users(), users.len());
        for limit in [1, 3, 7, 100] {
            assert_eq!(walk(presence, limit), expected, "pages of {limit}");
        }
        for (i, after) in reference.keys().enumerate() {
            let (page, more) = presence.page(Some(after), 5);
            let rest = &expected[i + 1..];
            assert_eq!(page, rest[..rest.len().min(5)]);
            assert_eq!(more, rest.len() > 5);
        }
        // A cursor between members, or past all of them.
        let (page, _) = presence.page(Some("c00a"), usize::MAX);
        let later: Vec<PresenceEntry> = reference
            .range::<str, _>((Bound::Excluded("c00a"), Bound::Unbounded))
            .map(|(_, e)| e.clone())
            .collect();
        assert_eq!(page, later);
        assert_eq!(presence.page(Some("~"), 10), (Vec::new(), false));
    }

    #[test]
    fn presence_changes_representation_at_the_thresholds() {
        let mut presence = Presence::default();
        let mut reference = BTreeMap::new();
        // Added in an order that is not the sorted one.
        let ids: Vec<String> = (0..SMALL_PRESENCE + 1)
            .map(|i| format!("c{:02}", (i * 7) % (SMALL_PRESENCE + 1)))
            .collect();
        for (i, id) in ids.iter().enumerate() {
            let e = entry(id, &format!("u{}", i % 5));
            presence.add(e.clone());
            reference.insert(id.clone(), e);
            assert_eq!(
                is_large(&presence),
                i + 1 > SMALL_PRESENCE,
                "{} members",
                i + 1
            );
            assert_matches(&presence, &reference);
        }
        // Replacing keeps the count and may change the user.
        let replaced = entry(&ids[3], "someone else");
        presence.add(replaced.clone());
        reference.insert(ids[3].clone(), replaced);
        assert_matches(&presence, &reference);
        // Large until the lower threshold, so that joins and leaves around
        // the upper one do not convert every time.
        for id in ids.iter().rev() {
            presence.remove(id);
            reference.remove(id);
            assert_eq!(is_large(&presence), reference.len() > SMALL_PRESENCE_AGAIN);
            assert_matches(&presence, &reference);
            presence.remove(id);
            assert_matches(&presence, &reference);
        }
        let Presence::Small(members) = &presence else {
            panic!("an empty presence is small")
        };
        assert_eq!(members.capacity(), 0, "an empty presence holds no memory");
    }

    #[test]
    fn presence_matches_a_reference_under_churn() {
        // A fixed xorshift: the same sequence every run.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        let mut presence = Presence::default();
        let mut reference: BTreeMap<String, PresenceEntry> = BTreeMap::new();
        let (mut to_large, mut to_small) = (0, 0);
        let mut growing = true;
        for _ in 0..4000 {
            if reference.len() >= 60 {
                growing = false;
            } else if reference.len() <= 3 {
                growing = true;
            }
            let id = format!("c{:03}", next(200));
            let was_large = is_large(&presence);
            if next(10) < if growing { 7 } else { 3 } {
                let e = entry(&id, &format!("u{}", next(12)));
                presence.add(e.clone());
                reference.insert(id, e);
            } else {
                // Mostly a member, sometimes an id that may not be one.
                let id = match reference.len() {
                    0 => id,
                    len if next(5) > 0 => {
                        let nth = usize::try_from(next(len as u64)).unwrap();
                        reference.keys().nth(nth).unwrap().clone()
                    }
                    _ => id,
                };
                presence.remove(&id);
                reference.remove(&id);
            }
            match (was_large, is_large(&presence)) {
                (false, true) => to_large += 1,
                (true, false) => to_small += 1,
                _ => {}
            }
            assert_matches(&presence, &reference);
        }
        assert!(to_large >= 3 && to_small >= 3, "{to_large} {to_small}");
    }

    #[tokio::test]
    async fn presence_paging_survives_a_change_of_representation() {
        let (sink, _) = counting();
        let b = MemoryBroker::new(sink);
        let id = |i: usize| format!("c{i:02}");
        let n = SMALL_PRESENCE + 8;
        for i in 0..n {
            b.presence_add("r", entry(&id(i), &format!("u{}", i % 3)))
                .await
                .unwrap();
        }
        let page = b.presence_list("r", None, 6).await.unwrap();
        assert_eq!((page.connections, page.users), (n, 3));
        let mut seen: Vec<String> = page
            .members
            .iter()
            .map(|m| m.connection.to_string())
            .collect();
        // Shrink to a small presence, removing the cursor's own member too.
        for i in 5..n - 10 {
            b.presence_remove("r", &id(i)).await.unwrap();
        }
        assert!(!is_large(&b.shared.lock("r")["r"].presence));
        let mut cursor = page.next_cursor;
        while let Some(after) = cursor {
            let page = b.presence_list("r", Some(&after), 6).await.unwrap();
            assert_eq!((page.connections, page.users), (15, 3));
            seen.extend(page.members.iter().map(|m| m.connection.to_string()));
            cursor = page.next_cursor;
        }
        let expected: Vec<String> = (0..6).chain(n - 10..n).map(id).collect();
        assert_eq!(seen, expected);
        // And back up, with a cursor taken from the small presence.
        let page = b.presence_list("r", None, 4).await.unwrap();
        for i in 5..n - 10 {
            b.presence_add("r", entry(&id(i), "v")).await.unwrap();
        }
        assert!(is_large(&b.shared.lock("r")["r"].presence));
        let rest = b
            .presence_list("r", page.next_cursor.as_deref(), 1000)
            .await
            .unwrap();
        assert_eq!((rest.connections, rest.users), (n, 4));
        let rest: Vec<String> = rest
            .members
            .iter()
            .map(|m| m.connection.to_string())
            .collect();
        assert_eq!(rest, (4..n).map(id).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_personal_room_holds_no_spare_capacity() {
        let (sink, _) = counting();
        let b = MemoryBroker::new(sink);
        b.subscribe("user:1").await.unwrap();
        b.position("user:1").await.unwrap();
        b.presence_add("user:1", entry("c1", "1")).await.unwrap();
        {
            let map = b.shared.lock("user:1");
            let state = &map["user:1"];
            assert_eq!(state.subscribers.capacity(), 1);
            let Presence::Small(members) = &state.presence else {
                panic!("one member is small")
            };
            assert_eq!(members.capacity(), 1);
            assert!(state.keys.is_none());
            assert_eq!(state.history.capacity(), 0);
        }
        b.presence_remove("user:1", "c1").await.unwrap();
        b.unsubscribe("user:1").await.unwrap();
        let map = b.shared.lock("user:1");
        let state = &map["user:1"];
        assert_eq!(state.subscribers.capacity(), 0);
        assert!(matches!(&state.presence, Presence::Small(m) if m.capacity() == 0));
    }

    #[tokio::test(start_paused = true)]
    async fn history_and_keys_give_back_memory() {
        let (sink, _) = counting();
        let config = MemoryBrokerConfig {
            sweep_interval: Duration::ZERO,
            ..MemoryBrokerConfig::default()
        };
        let b = MemoryBroker::with_config(config, sink);
        let keyed = |k: usize| PublishOptions {
            idempotency_key: Some(format!("k{k}")),
            history_size: 10,
            history_ttl: Duration::from_secs(60),
            ..opts()
        };
        for k in 0..25 {
            b.publish("r", Bytes::new(), None, keyed(k)).await.unwrap();
        }
        {
            let map = b.shared.lock("r");
            let state = &map["r"];
            assert_eq!(state.history.len(), 10);
            assert_eq!(
                state.history.capacity(),
                10,
                "the ring never grows past its bound"
            );
            assert_eq!(state.keys.as_ref().map(|k| k.map.len()), Some(25));
        }
        let h = b.history("r", HistoryQuery::default()).await.unwrap();
        let offsets: Vec<u64> = h.publications.iter().map(|p| p.offset).collect();
        assert_eq!(offsets, (16..=25).collect::<Vec<_>>());
        tokio::time::advance(Duration::from_secs(61)).await;
        b.sweep();
        let map = b.shared.lock("r");
        let state = &map["r"];
        assert_eq!(state.history.capacity(), 0);
        assert!(state.keys.is_none());
    }

    #[cfg(target_pointer_width = "64")]
    #[test]
    fn room_state_sizes() {
        use std::mem::size_of;
        // What one room costs inline; the heap adds its name, its epoch, one
        // subscriber slot and one 64-byte presence entry.
        assert_eq!(size_of::<PresenceEntry>(), 64);
        assert_eq!(size_of::<Presence>(), 24);
        assert_eq!(size_of::<Option<Box<IdempotencyKeys>>>(), 8);
        assert!(size_of::<RoomState>() <= 144, "{}", size_of::<RoomState>());
        // A shard map's slot: key and box.
        assert_eq!(size_of::<(Arc<str>, Box<RoomState>)>(), 24);
    }

    /// Polls a future once on this thread (it is ready at once).
    fn futures_poll_once<F: std::future::Future>(f: F) {
        let mut f = std::pin::pin!(f);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let _ = f.as_mut().poll(&mut cx);
    }
}
