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
//!   recover (`since` at the top) even when nothing is retained.
//!
//! Several nodes can share one state ([`MemoryBroker::connect_node`]), which is
//! how multi-node behaviour is tested in one process.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::hash::BuildHasher;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use rand::distr::Alphanumeric;
use tokio::time::Instant;

use super::{
    BoxFuture, Broker, BrokerError, HistoryQuery, HistoryResult, NodeEvent, NodeSink,
    PresenceEntry, PresencePage, Publication, PublishOptions, PublishResult, StreamPosition,
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
}

impl Default for MemoryBrokerConfig {
    fn default() -> Self {
        Self {
            shards: 32,
            sweep_interval: Duration::from_secs(5),
            meta_ttl: Duration::from_secs(600),
            max_idempotency_keys: 10_000,
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
            next_node: AtomicU64::new(1),
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
        MemoryBroker {
            shared: self.shared.clone(),
            node: self.shared.next_node.fetch_add(1, Ordering::Relaxed),
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
        self.shared
            .shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    fn do_publish(
        &self,
        room: &str,
        data: Bytes,
        from: Option<Bytes>,
        opts: PublishOptions,
    ) -> PublishResult {
        let now = Instant::now();
        let shared = &self.shared;
        let mut map = shared.lock(room);
        if opts.ephemeral && opts.idempotency_key.is_none() && !map.contains_key(room) {
            // Nobody is subscribed and there is nothing to remember.
            return PublishResult {
                position: None,
                duplicate: false,
            };
        }
        let state = room_mut(&mut map, room, now);
        if let Some(key) = &opts.idempotency_key
            && let Some(position) = state.keys.get(key, now)
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
                epoch: Arc::from(""),
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
            );
            deliver(&state.subscribers, NodeEvent::Publication(publication));
            Some(state.position())
        };
        if let Some(key) = opts.idempotency_key {
            state.keys.insert(
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
        let mut map = self.shared.lock(room);
        let state = room_mut(&mut map, room, now);
        state.trim(now);
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
        let connections = presence.members.len();
        let users = presence.users.len();
        if limit == 0 {
            return Ok(PresencePage {
                members: Vec::new(),
                next_cursor: None,
                connections,
                users,
            });
        }
        let lower = match &after {
            Some(after) => Bound::Excluded(after.as_str()),
            None => Bound::Unbounded,
        };
        let mut range = presence
            .members
            .range::<str, _>((lower, Bound::Unbounded))
            .map(|(_, entry)| entry);
        let members: Vec<PresenceEntry> = range.by_ref().take(limit).cloned().collect();
        let next_cursor = match (range.next(), members.last()) {
            (Some(_), Some(last)) => Some(encode_cursor(&last.connection)),
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
        for shard in self.shared.shards.iter() {
            let mut map = shard.lock().unwrap_or_else(PoisonError::into_inner);
            for state in map.values_mut() {
                state.subscribers.retain(|(node, _)| *node != self.node);
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
        Box::pin(async move { Ok(self.do_publish(room, data, from, opts)) })
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
            let mut map = self.shared.lock(room);
            let state = room_mut(&mut map, room, now);
            if !state.subscribers.iter().any(|(node, _)| *node == self.node) {
                state.subscribers.push((self.node, self.sink.clone()));
            }
            Ok(())
        })
    }

    fn unsubscribe<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let mut map = self.shared.lock(room);
            if let Some(state) = map.get_mut(room) {
                state.subscribers.retain(|(node, _)| *node != self.node);
                state.touched = Instant::now();
            }
            Ok(())
        })
    }

    fn position<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Result<StreamPosition, BrokerError>> {
        Box::pin(async move {
            let mut map = self.shared.lock(room);
            Ok(room_mut(&mut map, room, Instant::now()).position())
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
            let mut map = self.shared.lock(room);
            let existed = map.contains_key(room);
            let state = room_mut(&mut map, room, now);
            if existed {
                state.history.clear();
                state.epoch = new_epoch();
            }
            Ok(state.position())
        })
    }

    fn presence_add<'a>(
        &'a self,
        room: &'a str,
        entry: PresenceEntry,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let mut map = self.shared.lock(room);
            room_mut(&mut map, room, Instant::now()).presence.add(entry);
            Ok(())
        })
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

type Shard = Mutex<HashMap<Arc<str>, RoomState>>;

struct Shared {
    shards: Box<[Shard]>,
    hasher: RandomState,
    next_node: AtomicU64,
    config: MemoryBrokerConfig,
}

impl Shared {
    fn lock(&self, room: &str) -> MutexGuard<'_, HashMap<Arc<str>, RoomState>> {
        let index = (self.hasher.hash_one(room) % self.shards.len() as u64) as usize;
        // A panicking sink must not take the broker down with it: the state
        // is consistent between statements that touch it.
        self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn sweep(&self, now: Instant) {
        for shard in self.shards.iter() {
            let mut map = shard.lock().unwrap_or_else(PoisonError::into_inner);
            map.retain(|_, state| {
                state.trim(now);
                state.keys.sweep(now, self.config.max_idempotency_keys);
                !state.removable(now, self.config.meta_ttl)
            });
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

/// The room's state, created (with a new stream) if it does not exist, and
/// marked as used now.
fn room_mut<'m>(
    map: &'m mut HashMap<Arc<str>, RoomState>,
    room: &str,
    now: Instant,
) -> &'m mut RoomState {
    if !map.contains_key(room) {
        let name: Arc<str> = Arc::from(room);
        map.insert(name.clone(), RoomState::new(name, now));
    }
    let state = map.get_mut(room).expect("inserted above");
    state.touched = now;
    state
}

fn new_epoch() -> Arc<str> {
    let epoch: String = rand::rng()
        .sample_iter(&Alphanumeric)
        .take(8)
        .map(char::from)
        .collect();
    Arc::from(epoch)
}

struct RoomState {
    name: Arc<str>,
    epoch: Arc<str>,
    top: u64,
    /// Contiguous offsets ending at `top`, expiries non-decreasing.
    history: VecDeque<Stored>,
    subscribers: Vec<(u64, Arc<dyn NodeSink>)>,
    presence: Presence,
    keys: IdempotencyKeys,
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
            keys: IdempotencyKeys::default(),
            touched: now,
        }
    }

    fn position(&self) -> StreamPosition {
        StreamPosition {
            epoch: self.epoch.clone(),
            offset: self.top,
        }
    }

    fn store(&mut self, publication: Arc<Publication>, now: Instant, size: usize, ttl: Duration) {
        if size == 0 {
            self.history.clear();
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
        self.history.push_back(Stored {
            publication,
            expires,
        });
        while self.history.len() > size {
            self.history.pop_front();
        }
        self.trim(now);
    }

    fn trim(&mut self, now: Instant) {
        while self.history.front().is_some_and(|s| s.expires <= now) {
            self.history.pop_front();
        }
    }

    fn removable(&self, now: Instant, meta_ttl: Duration) -> bool {
        self.subscribers.is_empty()
            && self.history.is_empty()
            && self.presence.members.is_empty()
            && self.keys.map.is_empty()
            && now.saturating_duration_since(self.touched) >= meta_ttl
    }
}

#[derive(Default)]
struct Presence {
    members: BTreeMap<Arc<str>, PresenceEntry>,
    /// Connections per user.
    users: HashMap<Arc<str>, usize>,
}

impl Presence {
    fn add(&mut self, entry: PresenceEntry) {
        let user = entry.user.clone();
        if let Some(old) = self.members.insert(entry.connection.clone(), entry) {
            self.forget_user(&old.user);
        }
        *self.users.entry(user).or_insert(0) += 1;
    }

    fn remove(&mut self, connection: &str) {
        if let Some(old) = self.members.remove(connection) {
            self.forget_user(&old.user);
        }
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

fn encode_cursor(connection: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(connection.len() * 2);
    for byte in connection.bytes() {
        out.push(HEX[usize::from(byte >> 4)] as char);
        out.push(HEX[usize::from(byte & 0xf)] as char);
    }
    out
}

fn decode_cursor(cursor: &str) -> Result<String, BrokerError> {
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

    macro_rules! untimed {
        ($($name:ident),* $(,)?) => {$(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                conformance::$name(&Memory).await;
            }
        )*};
    }

    macro_rules! timed {
        ($($name:ident),* $(,)?) => {$(
            #[tokio::test(start_paused = true)]
            async fn $name() {
                conformance::$name(&Memory).await;
            }
        )*};
    }

    untimed![
        position_creates_stream,
        offsets_are_gap_free,
        rooms_are_independent,
        ephemeral_is_delivered_not_stored,
        history_forward_and_limit,
        history_reverse,
        history_since,
        history_size_bound,
        history_size_zero,
        history_epoch_mismatch,
        remove_history_changes_epoch,
        idempotency_same_key,
        idempotency_rooms_independent,
        idempotency_ephemeral,
        subscribe_unsubscribe,
        multi_node_delivery,
        join_leave_delivered,
        delivery_order_concurrent,
        recovery_race,
        presence_counts,
        presence_paging,
        presence_invalid_cursor,
    ];

    timed![history_ttl, history_ttl_keeps_position, idempotency_expires];

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

    /// Polls a future once on this thread (it is ready at once).
    fn futures_poll_once<F: std::future::Future>(f: F) {
        let mut f = std::pin::pin!(f);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let _ = f.as_mut().poll(&mut cx);
    }
}
