//! The conformance suite every [`Broker`] implementation must pass.
//!
//! Each check is a `pub async fn` taking a [`Backend`], which makes fresh,
//! isolated brokers; a backend's tests call each check from its own
//! `#[tokio::test]` (better failure reports), or [`run_all`] at once. The
//! checks panic on failure.
//!
//! The checks that need time to pass ([`TIMED`]) call [`Backend::advance`]:
//! the memory broker uses tokio's clock, so its tests run them on a paused
//! runtime (`#[tokio::test(start_paused = true)]`) and advance it; a remote
//! broker sleeps for real (the ttls used are a few hundred milliseconds).
//! The others ([`UNTIMED`]) run on any runtime; [`delivery_order_concurrent`]
//! and [`recovery_race`] are only meaningful on a multi-threaded one.
//!
//! Modelled on sockudo's history conformance suite; the recovery check drives
//! the exact procedure the module docs of the broker prescribe to the hub.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{
    BoxFuture, Broker, BrokerError, HistoryQuery, NodeEvent, NodeSink, PresenceEntry, Publication,
    PublishOptions, StreamPosition,
};

/// Makes brokers for the suite.
pub trait Backend: Send + Sync {
    /// Nodes on one fresh, empty backend (no room of a previous call is
    /// visible): node `i` delivers to `sinks[i]`.
    fn nodes(&self, sinks: Vec<Arc<dyn NodeSink>>) -> BoxFuture<'_, Vec<Arc<dyn Broker>>>;

    /// Lets `by` pass for the broker's clock: `tokio::time::advance` for a
    /// broker on tokio's paused clock, a real sleep for a remote one.
    fn advance(&self, by: Duration) -> BoxFuture<'_, ()>;

    /// How long to wait before concluding that an event will not arrive:
    /// zero for a broker that delivers before `publish` returns.
    fn quiet_period(&self) -> Duration {
        Duration::ZERO
    }
}

/// A check of the suite.
pub type Check = for<'a> fn(&'a dyn Backend) -> BoxFuture<'a, ()>;

macro_rules! checks {
    ($($name:ident),* $(,)?) => {
        &[$((stringify!($name), |b| Box::pin($name(b)))),*]
    };
}

/// The one list of the suite's checks, and what is made from it: the [`UNTIMED`] and
/// [`TIMED`] lists here, and a `#[tokio::test]` per check for a backend
/// (`switchboard_server::broker_conformance_tests!(backend)` in the backend's test module:
/// untimed checks on a multi-threaded runtime, timed ones on a paused clock;
/// `broker_conformance_tests!(real_time backend)` for a broker on real time: all of them on a
/// multi-threaded runtime).
#[macro_export]
macro_rules! broker_conformance_tests {
    (@list $mode:ident $($args:tt)*) => {
        $crate::broker_conformance_tests!(@go $mode ($($args)*)
            untimed [
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
                presence_invalid_cursor
            ]
            timed [history_ttl, history_ttl_keeps_position, idempotency_expires]);
    };
    (@go consts () untimed [$($u:ident),*] timed [$($t:ident),*]) => {
        /// The checks that do not need [`Backend::advance`], by name.
        pub const UNTIMED: &[(&str, Check)] = checks![$($u),*];
        /// The checks that let time pass with [`Backend::advance`], by name.
        pub const TIMED: &[(&str, Check)] = checks![$($t),*];
    };
    (@go tests ($backend:expr) untimed [$($u:ident),*] timed [$($t:ident),*]) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $u() {
                $crate::broker::conformance::$u(&$backend).await;
            }
        )*
        $(
            #[tokio::test(start_paused = true)]
            async fn $t() {
                $crate::broker::conformance::$t(&$backend).await;
            }
        )*
    };
    (@go real_tests ($backend:expr) untimed [$($u:ident),*] timed [$($t:ident),*]) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $u() {
                $crate::broker::conformance::$u(&$backend).await;
            }
        )*
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $t() {
                $crate::broker::conformance::$t(&$backend).await;
            }
        )*
    };
    // A remote broker's clock is real: every check on a multi-threaded runtime, the timed
    // ones sleeping for real.
    (real_time $backend:expr) => {
        $crate::broker_conformance_tests!(@list real_tests $backend);
    };
    ($backend:expr) => {
        $crate::broker_conformance_tests!(@list tests $backend);
    };
}

crate::broker_conformance_tests!(@list consts);

/// Runs every check, untimed ones first.
pub async fn run_all(backend: &dyn Backend) {
    for (_, check) in UNTIMED.iter().chain(TIMED) {
        check(backend).await;
    }
}

// ---------------------------------------------------------------- helpers

/// One node of a fresh backend and the events its sink received.
struct Node {
    broker: Arc<dyn Broker>,
    events: mpsc::UnboundedReceiver<NodeEvent>,
    quiet: Duration,
}

async fn nodes(backend: &dyn Backend, n: usize) -> Vec<Node> {
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..n).map(|_| mpsc::unbounded_channel()).unzip();
    let sinks = senders
        .into_iter()
        .map(|tx| Arc::new(tx) as Arc<dyn NodeSink>)
        .collect();
    let brokers = backend.nodes(sinks).await;
    assert_eq!(brokers.len(), n, "Backend::nodes returned the wrong count");
    brokers
        .into_iter()
        .zip(receivers)
        .map(|(broker, events)| Node {
            broker,
            events,
            quiet: backend.quiet_period(),
        })
        .collect()
}

async fn node(backend: &dyn Backend) -> Node {
    nodes(backend, 1).await.pop().expect("one node")
}

fn data(n: u64) -> Bytes {
    Bytes::from(format!("{{\"n\":{n}}}"))
}

fn opts() -> PublishOptions {
    PublishOptions {
        history_size: 1000,
        history_ttl: Duration::from_secs(3600),
        ..PublishOptions::default()
    }
}

fn keyed(key: &str) -> PublishOptions {
    PublishOptions {
        idempotency_key: Some(key.to_owned()),
        ..opts()
    }
}

fn member(connection: &str, user: &str) -> PresenceEntry {
    PresenceEntry {
        connection: Arc::from(connection),
        user: Arc::from(user),
        info: Some(Bytes::from(format!("{{\"name\":\"{user}\"}}"))),
    }
}

fn offsets(publications: &[Arc<Publication>]) -> Vec<u64> {
    publications.iter().map(|p| p.offset).collect()
}

impl Node {
    async fn publish(&self, room: &str, n: u64, opts: PublishOptions) -> Option<StreamPosition> {
        let result = self
            .broker
            .publish(room, data(n), None, opts)
            .await
            .expect("publish");
        assert!(
            !result.duplicate,
            "publish without a reused key was a duplicate"
        );
        result.position
    }

    async fn publish_n(&self, room: &str, count: u64) -> StreamPosition {
        let mut last = None;
        for n in 1..=count {
            last = self.publish(room, n, opts()).await;
        }
        last.expect("count > 0")
    }

    async fn history(&self, room: &str, query: HistoryQuery) -> super::HistoryResult {
        self.broker.history(room, query).await.expect("history")
    }

    async fn next(&mut self) -> NodeEvent {
        tokio::time::timeout(Duration::from_secs(10), self.events.recv())
            .await
            .expect("no event within 10 s")
            .expect("sink dropped")
    }

    async fn next_publication(&mut self) -> Arc<Publication> {
        match self.next().await {
            NodeEvent::Publication(p) => p,
            other => panic!("expected a publication, got {other:?}"),
        }
    }

    async fn expect_quiet(&mut self) {
        if self.quiet.is_zero() {
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(self.quiet).await;
        }
        if let Ok(event) = self.events.try_recv() {
            panic!("expected no event, got {event:?}");
        }
    }
}

// ---------------------------------------------------------------- streams

/// `position` creates a stream at offset 0 with a non-empty epoch, stable
/// across calls; another backend gives the same room another epoch.
pub async fn position_creates_stream(backend: &dyn Backend) {
    let a = node(backend).await;
    let p1 = a.broker.position("r").await.unwrap();
    assert_eq!(p1.offset, 0);
    assert!(!p1.epoch.is_empty());
    assert_eq!(a.broker.position("r").await.unwrap(), p1);
    let b = node(backend).await;
    let p2 = b.broker.position("r").await.unwrap();
    assert_ne!(p1.epoch, p2.epoch, "a fresh backend must draw a new epoch");
}

/// Offsets are 1, 2, 3, … in one epoch; publications are delivered with
/// every field intact, and the top follows.
pub async fn offsets_are_gap_free(backend: &dyn Backend) {
    let mut a = node(backend).await;
    let start = a.broker.position("r").await.unwrap();
    a.broker.subscribe("r").await.unwrap();
    let from = Bytes::from_static(br#"{"user":"u","connection":"c"}"#);
    for n in 1..=20 {
        let result = a
            .broker
            .publish(
                "r",
                data(n),
                Some(from.clone()),
                PublishOptions {
                    exclude: Some(Arc::from("c")),
                    ..opts()
                },
            )
            .await
            .unwrap();
        assert_eq!(
            result.position,
            Some(StreamPosition::new(start.epoch.clone(), n))
        );
        assert!(!result.duplicate);
    }
    for n in 1..=20 {
        let p = a.next_publication().await;
        assert_eq!(&*p.room, "r");
        assert_eq!(p.offset, n);
        assert_eq!(p.epoch, start.epoch);
        assert_eq!(p.data, data(n));
        assert_eq!(p.from.as_ref(), Some(&from));
        assert_eq!(p.exclude.as_deref(), Some("c"));
        assert!(!p.ephemeral);
        assert_eq!(
            p.position(),
            Some(StreamPosition::new(start.epoch.clone(), n))
        );
    }
    assert_eq!(
        a.broker.position("r").await.unwrap(),
        StreamPosition::new(start.epoch, 20)
    );
}

/// Each room has its own counter and epoch; events of one room do not reach
/// a node subscribed only to another.
pub async fn rooms_are_independent(backend: &dyn Backend) {
    let mut a = node(backend).await;
    a.broker.subscribe("x").await.unwrap();
    a.publish_n("x", 3).await;
    a.publish_n("y", 5).await;
    assert_eq!(a.broker.position("x").await.unwrap().offset, 3);
    assert_eq!(a.broker.position("y").await.unwrap().offset, 5);
    for n in 1..=3 {
        let p = a.next_publication().await;
        assert_eq!((&*p.room, p.offset), ("x", n));
    }
    a.expect_quiet().await;
}

/// Ephemeral publications are delivered (offset 0, empty epoch), return no
/// position, are not stored and take no offset.
pub async fn ephemeral_is_delivered_not_stored(backend: &dyn Backend) {
    let mut a = node(backend).await;
    a.broker.subscribe("r").await.unwrap();
    let eph = PublishOptions {
        ephemeral: true,
        ..opts()
    };
    assert_eq!(a.publish("r", 1, eph.clone()).await, None);
    let p = a.next_publication().await;
    assert!(p.ephemeral);
    assert_eq!((p.offset, &*p.epoch), (0, ""));
    assert_eq!(p.data, data(1));
    assert_eq!(p.position(), None);
    let h = a.history("r", HistoryQuery::default()).await;
    assert!(h.publications.is_empty());
    assert_eq!(h.position.offset, 0);
    assert_eq!(a.publish("r", 2, opts()).await.unwrap().offset, 1);
    assert_eq!(a.next_publication().await.offset, 1);
    // An ephemeral publication to a room nobody follows is fine too.
    assert_eq!(a.publish("nobody", 3, eph).await, None);
    a.expect_quiet().await;
}

// ---------------------------------------------------------------- history

/// Without `since`: oldest first, cut by `limit`; `limit` 0 reads only the top.
pub async fn history_forward_and_limit(backend: &dyn Backend) {
    let a = node(backend).await;
    let top = a.publish_n("r", 5).await;
    let all = a.history("r", HistoryQuery::default()).await;
    assert_eq!(all.position, top);
    assert!(all.recoverable);
    assert_eq!(offsets(&all.publications), [1, 2, 3, 4, 5]);
    assert_eq!(all.publications[2].data, data(3));
    let q = |limit| HistoryQuery {
        limit,
        ..HistoryQuery::default()
    };
    assert_eq!(offsets(&a.history("r", q(3)).await.publications), [1, 2, 3]);
    assert_eq!(
        offsets(&a.history("r", q(50)).await.publications),
        [1, 2, 3, 4, 5]
    );
    let none = a.history("r", q(0)).await;
    assert!(none.publications.is_empty());
    assert_eq!(none.position, top);
}

/// `reverse` without `since` starts at the newest, newest first.
pub async fn history_reverse(backend: &dyn Backend) {
    let a = node(backend).await;
    a.publish_n("r", 5).await;
    let q = |limit| HistoryQuery {
        limit,
        reverse: true,
        since: None,
    };
    assert_eq!(offsets(&a.history("r", q(2)).await.publications), [5, 4]);
    assert_eq!(
        offsets(&a.history("r", q(usize::MAX)).await.publications),
        [5, 4, 3, 2, 1]
    );
}

/// `since` is exclusive and reads oldest first (ignoring `reverse`); at the
/// top it is recoverable and empty; beyond the top it is not recoverable.
pub async fn history_since(backend: &dyn Backend) {
    let a = node(backend).await;
    let top = a.publish_n("r", 5).await;
    let at = |offset| StreamPosition::new(top.epoch.clone(), offset);

    let h = a.history("r", HistoryQuery::recovery(at(2))).await;
    assert!(h.recoverable);
    assert_eq!(h.position, top);
    assert_eq!(offsets(&h.publications), [3, 4, 5]);

    let h = a.history("r", HistoryQuery::recovery(at(0))).await;
    assert!(h.recoverable);
    assert_eq!(offsets(&h.publications), [1, 2, 3, 4, 5]);

    let limited = HistoryQuery {
        since: Some(at(1)),
        limit: 2,
        reverse: true,
    };
    let h = a.history("r", limited).await;
    assert!(h.recoverable);
    assert_eq!(offsets(&h.publications), [2, 3]);

    let h = a.history("r", HistoryQuery::recovery(at(5))).await;
    assert!(h.recoverable);
    assert!(h.publications.is_empty());

    let h = a.history("r", HistoryQuery::recovery(at(9))).await;
    assert!(!h.recoverable, "since beyond the top cannot be recovered");
    assert!(h.publications.is_empty());
}

/// History keeps the newest `history_size`; a `since` older than what is
/// retained is not recoverable, one at the edge is.
pub async fn history_size_bound(backend: &dyn Backend) {
    let a = node(backend).await;
    let small = || PublishOptions {
        history_size: 3,
        ..opts()
    };
    for n in 1..=5 {
        a.publish("r", n, small()).await;
    }
    let h = a.history("r", HistoryQuery::default()).await;
    assert_eq!(offsets(&h.publications), [3, 4, 5]);
    let at = |offset| StreamPosition::new(h.position.epoch.clone(), offset);
    let old = a.history("r", HistoryQuery::recovery(at(1))).await;
    assert!(!old.recoverable, "offset 2 is gone");
    let edge = a.history("r", HistoryQuery::recovery(at(2))).await;
    assert!(edge.recoverable);
    assert_eq!(offsets(&edge.publications), [3, 4, 5]);
}

/// `history_size` 0 stores nothing (and drops what was stored) but still
/// numbers publications; only `since` at the top recovers.
pub async fn history_size_zero(backend: &dyn Backend) {
    let a = node(backend).await;
    a.publish_n("r", 2).await;
    let off = PublishOptions {
        history_size: 0,
        ..opts()
    };
    let top = a.publish("r", 3, off).await.unwrap();
    assert_eq!(top.offset, 3);
    let h = a.history("r", HistoryQuery::default()).await;
    assert!(h.publications.is_empty());
    assert_eq!(h.position, top);
    let at = |offset| StreamPosition::new(top.epoch.clone(), offset);
    assert!(
        !a.history("r", HistoryQuery::recovery(at(2)))
            .await
            .recoverable
    );
    assert!(
        a.history("r", HistoryQuery::recovery(at(3)))
            .await
            .recoverable
    );
}

/// A `since` from another epoch fails with `EpochMismatch` carrying the top.
pub async fn history_epoch_mismatch(backend: &dyn Backend) {
    let a = node(backend).await;
    let top = a.publish_n("r", 2).await;
    let err = a
        .broker
        .history("r", HistoryQuery::recovery(StreamPosition::new("nope", 1)))
        .await
        .expect_err("another epoch must fail");
    match err {
        BrokerError::EpochMismatch { since, current } => {
            assert_eq!(&*since, "nope");
            assert_eq!(current, top);
        }
        other => panic!("expected EpochMismatch, got {other:?}"),
    }
}

/// `remove_history` drops the publications and draws a new epoch; offsets
/// continue; the old epoch no longer recovers; the new one does.
pub async fn remove_history_changes_epoch(backend: &dyn Backend) {
    let mut a = node(backend).await;
    a.broker.subscribe("r").await.unwrap();
    let old = a.publish_n("r", 3).await;
    for _ in 0..3 {
        a.next_publication().await;
    }
    let new = a.broker.remove_history("r").await.unwrap();
    assert_ne!(new.epoch, old.epoch);
    assert_eq!(new.offset, old.offset, "the offset counter continues");
    assert_eq!(a.broker.position("r").await.unwrap(), new);
    let h = a.history("r", HistoryQuery::default()).await;
    assert!(h.publications.is_empty());
    assert_eq!(h.position, new);
    let err = a
        .broker
        .history("r", HistoryQuery::recovery(old.clone()))
        .await
        .expect_err("old epoch");
    assert!(matches!(err, BrokerError::EpochMismatch { current, .. } if current == new));

    let next = a.publish("r", 4, opts()).await.unwrap();
    assert_eq!(next, StreamPosition::new(new.epoch.clone(), old.offset + 1));
    let p = a.next_publication().await;
    assert_eq!(
        (p.epoch.clone(), p.offset),
        (new.epoch.clone(), old.offset + 1)
    );
    let h = a.history("r", HistoryQuery::recovery(new)).await;
    assert!(h.recoverable);
    assert_eq!(offsets(&h.publications), [old.offset + 1]);
    // The node stays subscribed across the removal.
    a.expect_quiet().await;
}

// ---------------------------------------------------------------- idempotency

/// A repeated key returns the first position, publishes and delivers
/// nothing, stores nothing.
pub async fn idempotency_same_key(backend: &dyn Backend) {
    let mut a = node(backend).await;
    a.broker.subscribe("r").await.unwrap();
    let first = a
        .broker
        .publish("r", data(1), None, keyed("k1"))
        .await
        .unwrap();
    assert!(!first.duplicate);
    assert_eq!(a.next_publication().await.offset, 1);
    let again = a
        .broker
        .publish("r", data(2), None, keyed("k1"))
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.position, first.position);
    a.expect_quiet().await;
    let other = a
        .broker
        .publish("r", data(3), None, keyed("k2"))
        .await
        .unwrap();
    assert!(!other.duplicate);
    assert_eq!(other.position.unwrap().offset, 2);
    assert_eq!(a.next_publication().await.data, data(3));
    let h = a.history("r", HistoryQuery::default()).await;
    assert_eq!(offsets(&h.publications), [1, 2]);
    assert_eq!(h.publications[0].data, data(1));
}

/// Keys are per room.
pub async fn idempotency_rooms_independent(backend: &dyn Backend) {
    let a = node(backend).await;
    a.publish_n("y", 4).await;
    let x = a
        .broker
        .publish("x", data(1), None, keyed("k"))
        .await
        .unwrap();
    let y = a
        .broker
        .publish("y", data(1), None, keyed("k"))
        .await
        .unwrap();
    assert!(!x.duplicate && !y.duplicate);
    assert_eq!(x.position.unwrap().offset, 1);
    assert_eq!(y.position.unwrap().offset, 5);
}

/// A key also guards an ephemeral publication (which has no position).
pub async fn idempotency_ephemeral(backend: &dyn Backend) {
    let mut a = node(backend).await;
    a.broker.subscribe("r").await.unwrap();
    let eph = PublishOptions {
        ephemeral: true,
        ..keyed("k")
    };
    let first = a
        .broker
        .publish("r", data(1), None, eph.clone())
        .await
        .unwrap();
    assert_eq!((first.position, first.duplicate), (None, false));
    assert!(a.next_publication().await.ephemeral);
    let again = a.broker.publish("r", data(1), None, eph).await.unwrap();
    assert_eq!((again.position, again.duplicate), (None, true));
    a.expect_quiet().await;
}

// ---------------------------------------------------------------- delivery

/// No delivery before `subscribe` or after `unsubscribe`; subscribing twice
/// delivers once; unsubscribing an unsubscribed room is fine.
pub async fn subscribe_unsubscribe(backend: &dyn Backend) {
    let mut a = node(backend).await;
    a.broker.unsubscribe("r").await.unwrap();
    a.publish("r", 1, opts()).await;
    a.expect_quiet().await;
    a.broker.subscribe("r").await.unwrap();
    a.broker.subscribe("r").await.unwrap();
    a.publish("r", 2, opts()).await;
    assert_eq!(a.next_publication().await.offset, 2);
    a.expect_quiet().await;
    a.broker.unsubscribe("r").await.unwrap();
    a.publish("r", 3, opts()).await;
    a.expect_quiet().await;
    a.broker.subscribe("r").await.unwrap();
    a.publish("r", 4, opts()).await;
    assert_eq!(a.next_publication().await.offset, 4);
    a.expect_quiet().await;
}

/// Every subscribed node gets every publication, whichever node published;
/// unsubscribed nodes get none; nodes share offsets and history.
pub async fn multi_node_delivery(backend: &dyn Backend) {
    let mut ns = nodes(backend, 2).await;
    let mut b = ns.pop().unwrap();
    let mut a = ns.pop().unwrap();
    a.broker.subscribe("r").await.unwrap();
    b.publish("r", 1, opts()).await;
    assert_eq!(a.next_publication().await.offset, 1);
    b.expect_quiet().await;
    b.broker.subscribe("r").await.unwrap();
    a.publish("r", 2, opts()).await;
    b.publish("r", 3, opts()).await;
    for node in [&mut a, &mut b] {
        assert_eq!(node.next_publication().await.offset, 2);
        assert_eq!(node.next_publication().await.offset, 3);
    }
    b.broker.unsubscribe("r").await.unwrap();
    b.publish("r", 4, opts()).await;
    assert_eq!(a.next_publication().await.offset, 4);
    b.expect_quiet().await;
    let h = b.history("r", HistoryQuery::default()).await;
    assert_eq!(offsets(&h.publications), [1, 2, 3, 4]);
    assert_eq!(
        a.broker.position("r").await.unwrap(),
        b.broker.position("r").await.unwrap()
    );
}

/// Join and leave reach subscribed nodes, in order with publications.
pub async fn join_leave_delivered(backend: &dyn Backend) {
    let mut ns = nodes(backend, 2).await;
    let b = ns.pop().unwrap();
    let mut a = ns.pop().unwrap();
    a.broker.subscribe("r").await.unwrap();
    let m = member("c1", "alice");
    b.broker.publish_join("r", m.clone()).await.unwrap();
    b.publish("r", 1, opts()).await;
    b.broker.publish_leave("r", m.clone()).await.unwrap();
    match a.next().await {
        NodeEvent::Join { room, member } => assert_eq!((&*room, &member), ("r", &m)),
        other => panic!("expected join, got {other:?}"),
    }
    assert_eq!(a.next_publication().await.offset, 1);
    match a.next().await {
        NodeEvent::Leave { room, member } => assert_eq!((&*room, &member), ("r", &m)),
        other => panic!("expected leave, got {other:?}"),
    }
    b.broker.publish_join("other", m).await.unwrap();
    a.expect_quiet().await;
}

/// Concurrent publishers on two nodes and two rooms: every node sees each
/// room's offsets as exactly 1, 2, …, n in order, and the results are unique.
pub async fn delivery_order_concurrent(backend: &dyn Backend) {
    const TASKS: u64 = 6;
    const EACH: u64 = 50;
    let rooms = ["r1", "r2"];
    let mut ns = nodes(backend, 2).await;
    for n in &ns {
        for room in rooms {
            n.broker.subscribe(room).await.unwrap();
        }
    }
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let broker = ns[(t % 2) as usize].broker.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for i in 0..EACH {
                let room = rooms[((t + i) % 2) as usize];
                let r = broker.publish(room, data(i), None, opts()).await.unwrap();
                got.push((room, r.position.unwrap().offset));
                tokio::task::yield_now().await;
            }
            got
        }));
    }
    let mut results: HashMap<&str, BTreeSet<u64>> = HashMap::new();
    for task in tasks {
        for (room, offset) in task.await.unwrap() {
            assert!(
                results.entry(room).or_default().insert(offset),
                "offset reused"
            );
        }
    }
    let per_room = TASKS * EACH / 2;
    for room in rooms {
        let expected: BTreeSet<u64> = (1..=per_room).collect();
        assert_eq!(
            results[room], expected,
            "results of {room} are not 1..={per_room}"
        );
    }
    for n in &mut ns {
        let mut next: HashMap<Arc<str>, u64> = HashMap::new();
        for _ in 0..TASKS * EACH {
            let p = n.next_publication().await;
            let expected = next.entry(p.room.clone()).or_insert(1);
            assert_eq!(p.offset, *expected, "room {} out of order", p.room);
            *expected += 1;
        }
        n.expect_quiet().await;
    }
}

/// The exact-recovery race, driven exactly as the broker's module docs tell
/// the hub: a publisher on another node runs before, during and after the
/// subscribe; a client that saw up to some offset subscribes with `since`
/// (and another without), and each gets every later publication exactly
/// once, in order.
pub async fn recovery_race(backend: &dyn Backend) {
    let mut ns = nodes(backend, 2).await;
    let publisher = ns.pop().unwrap();
    let mut hub = ns.pop().unwrap();
    let seen = publisher.publish_n("r", 10).await;

    // The publisher may publish up to `allowed`; it returns once it reached
    // `allowed` after `stop` was set. The budget keeps it within history.
    let allowed = Arc::new(AtomicU64::new(50));
    let stop = Arc::new(AtomicBool::new(false));
    let broker = publisher.broker.clone();
    let (budget, stopped) = (allowed.clone(), stop.clone());
    let task = tokio::spawn(async move {
        let mut n = 10;
        loop {
            if n >= budget.load(SeqCst) {
                if stopped.load(SeqCst) && n >= budget.load(SeqCst) {
                    return n;
                }
                tokio::task::yield_now().await;
                continue;
            }
            n += 1;
            let r = broker.publish("r", data(n), None, opts()).await.unwrap();
            assert_eq!(r.position.unwrap().offset, n);
            if n.is_multiple_of(3) {
                tokio::task::yield_now().await;
            }
        }
    });
    while hub.broker.position("r").await.unwrap().offset < 50 {
        tokio::task::yield_now().await;
    }
    // Publishing goes on during steps 2 and 3.
    allowed.store(400, SeqCst);
    // Step 1 is implicit: every event the sink receives from now on is the
    // syncing connection's buffer. Step 2: subscribe the node.
    hub.broker.subscribe("r").await.unwrap();
    // Step 3: read, with `since` for one connection and without for another.
    let h = hub.history("r", HistoryQuery::recovery(seen.clone())).await;
    assert!(h.recoverable);
    let plain = hub.broker.position("r").await.unwrap();
    // And after them.
    allowed.store(600, SeqCst);
    stop.store(true, SeqCst);
    let last = task.await.unwrap();
    assert_eq!(last, 600);

    // Step 4: reply, then the buffer with the drop rule, then live (here the
    // buffer and the live events are one queue).
    let covered = |p: &Publication, reply: &StreamPosition| {
        !p.ephemeral && p.epoch == reply.epoch && p.offset <= reply.offset
    };
    let mut with_since: Vec<u64> = offsets(&h.publications);
    let mut without_since: Vec<u64> = Vec::new();
    loop {
        let p = hub.next_publication().await;
        if !covered(&p, &h.position) {
            with_since.push(p.offset);
        }
        if !covered(&p, &plain) {
            without_since.push(p.offset);
        }
        if p.offset == last {
            break;
        }
    }
    let expected: Vec<u64> = (seen.offset + 1..=last).collect();
    assert_eq!(
        with_since, expected,
        "recovery lost or repeated a publication"
    );
    let expected: Vec<u64> = (plain.offset + 1..=last).collect();
    assert_eq!(
        without_since, expected,
        "live delivery after position() is not exact"
    );
    hub.expect_quiet().await;
}

// ---------------------------------------------------------------- presence

/// Counts of connections and distinct users follow adds, replacements and
/// removals; a room without presence has an empty page.
pub async fn presence_counts(backend: &dyn Backend) {
    let a = node(backend).await;
    let p = &a.broker;
    let page = p.presence_list("r", None, 100).await.unwrap();
    assert_eq!(
        (page.connections, page.users, page.members.len()),
        (0, 0, 0)
    );
    assert_eq!(page.next_cursor, None);
    p.presence_add("r", member("c1", "alice")).await.unwrap();
    p.presence_add("r", member("c2", "alice")).await.unwrap();
    p.presence_add("r", member("c3", "bob")).await.unwrap();
    p.presence_add("r", member("c3", "bob")).await.unwrap();
    let page = p.presence_list("r", None, 100).await.unwrap();
    assert_eq!((page.connections, page.users), (3, 2));
    assert_eq!(
        page.members,
        [
            member("c1", "alice"),
            member("c2", "alice"),
            member("c3", "bob")
        ]
    );
    // Replacing an entry may change its user.
    p.presence_add("r", member("c2", "carol")).await.unwrap();
    let page = p.presence_list("r", None, 100).await.unwrap();
    assert_eq!((page.connections, page.users), (3, 3));
    p.presence_remove("r", "c1").await.unwrap();
    p.presence_remove("r", "c1").await.unwrap();
    p.presence_remove("r", "nobody").await.unwrap();
    let page = p.presence_list("r", None, 100).await.unwrap();
    assert_eq!((page.connections, page.users), (2, 2));
    let counts = p.presence_list("r", None, 0).await.unwrap();
    assert!(counts.members.is_empty());
    assert_eq!((counts.connections, counts.users), (2, 2));
    let other = p.presence_list("other", None, 10).await.unwrap();
    assert_eq!(other.connections, 0);
}

/// Paging returns every member present for the whole walk exactly once,
/// whatever is added or removed between pages; the last page has no cursor.
pub async fn presence_paging(backend: &dyn Backend) {
    let a = node(backend).await;
    let p = &a.broker;
    for i in 0..25 {
        p.presence_add("r", member(&format!("c{i:02}"), &format!("u{}", i % 7)))
            .await
            .unwrap();
    }
    let page = p.presence_list("r", None, 100).await.unwrap();
    assert_eq!((page.connections, page.users), (25, 7));
    assert_eq!(page.next_cursor, None);

    let mut seen: Vec<String> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = p.presence_list("r", cursor.as_deref(), 10).await.unwrap();
        assert!(page.members.len() <= 10);
        seen.extend(page.members.iter().map(|m| m.connection.to_string()));
        pages += 1;
        // Churn between pages: new members before and after the cursor, and
        // removal of members not yet and already returned.
        if pages == 1 {
            p.presence_add("r", member("c00a", "new")).await.unwrap();
            p.presence_add("r", member("c99", "new")).await.unwrap();
            p.presence_remove("r", "c03").await.unwrap();
            p.presence_remove("r", "c20").await.unwrap();
        }
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
        assert!(pages < 10, "paging does not end");
    }
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "a member was returned twice");
    for i in 0..25 {
        let id = format!("c{i:02}");
        if id != "c03" && id != "c20" {
            assert!(
                unique.contains(&id),
                "{id} was present throughout but not returned"
            );
        }
    }
    let page = p.presence_list("r", None, 1000).await.unwrap();
    assert_eq!(page.connections, 25);
}

/// A cursor the broker did not make is `InvalidCursor`.
pub async fn presence_invalid_cursor(backend: &dyn Backend) {
    let a = node(backend).await;
    a.broker.presence_add("r", member("c1", "u")).await.unwrap();
    let err = a
        .broker
        .presence_list("r", Some("not a cursor!"), 10)
        .await
        .expect_err("bad cursor");
    assert!(matches!(err, BrokerError::InvalidCursor), "{err:?}");
}

// ---------------------------------------------------------------- timed

/// Publications expire `history_ttl` after publication, oldest first; a
/// `since` before an expired one is not recoverable.
pub async fn history_ttl(backend: &dyn Backend) {
    let a = node(backend).await;
    let ttl = |ms| PublishOptions {
        history_ttl: Duration::from_millis(ms),
        ..opts()
    };
    // On real time a loaded machine can stretch the waits past the ttl of the publication
    // meant to be kept: such a round shows nothing, and runs again in another room.
    for round in 0..5 {
        let room = format!("r{round}");
        a.publish(&room, 1, ttl(400)).await;
        backend.advance(Duration::from_millis(200)).await;
        let second = tokio::time::Instant::now();
        let top = a.publish(&room, 2, ttl(400)).await.unwrap();
        backend.advance(Duration::from_millis(300)).await;
        let at = |offset| StreamPosition::new(top.epoch.clone(), offset);
        let h = a.history(&room, HistoryQuery::default()).await;
        let from_0 = a.history(&room, HistoryQuery::recovery(at(0))).await;
        let from_1 = a.history(&room, HistoryQuery::recovery(at(1))).await;
        if second.elapsed() >= Duration::from_millis(400) {
            continue;
        }
        assert_eq!(offsets(&h.publications), [2], "offset 1 expired at 400 ms");
        assert_eq!(h.position, top);
        assert!(!from_0.recoverable);
        assert!(from_1.recoverable);
        assert_eq!(offsets(&from_1.publications), [2]);
        return;
    }
    panic!("every round took longer than the history ttl: the machine is too loaded");
}

/// When everything expired the stream keeps its epoch and top: a client at
/// the top still recovers, and numbering continues.
pub async fn history_ttl_keeps_position(backend: &dyn Backend) {
    let a = node(backend).await;
    let short = PublishOptions {
        history_ttl: Duration::from_millis(200),
        ..opts()
    };
    a.publish("r", 1, short.clone()).await;
    let top = a.publish("r", 2, short.clone()).await.unwrap();
    backend.advance(Duration::from_millis(300)).await;
    let h = a.history("r", HistoryQuery::recovery(top.clone())).await;
    assert!(h.recoverable);
    assert!(h.publications.is_empty());
    assert_eq!(h.position, top);
    assert!(
        !a.history(
            "r",
            HistoryQuery::recovery(StreamPosition::new(top.epoch.clone(), 1))
        )
        .await
        .recoverable
    );
    let next = a.publish("r", 3, short).await.unwrap();
    assert_eq!(next, StreamPosition::new(top.epoch, 3));
}

/// An idempotency key is forgotten `history_ttl` after its publication.
pub async fn idempotency_expires(backend: &dyn Backend) {
    let a = node(backend).await;
    let key = PublishOptions {
        history_ttl: Duration::from_millis(300),
        ..keyed("k")
    };
    // As in `history_ttl`: a round stretched past the ttl by a loaded machine runs again.
    for round in 0..5 {
        let room = format!("r{round}");
        let started = tokio::time::Instant::now();
        let first = a
            .broker
            .publish(&room, data(1), None, key.clone())
            .await
            .unwrap();
        backend.advance(Duration::from_millis(100)).await;
        let again = a
            .broker
            .publish(&room, data(1), None, key.clone())
            .await
            .unwrap();
        if started.elapsed() >= Duration::from_millis(300) {
            continue;
        }
        assert!(again.duplicate);
        assert_eq!(again.position, first.position);
        backend.advance(Duration::from_millis(300)).await;
        let later = a.broker.publish(&room, data(1), None, key).await.unwrap();
        assert!(!later.duplicate, "the key should have expired");
        assert_eq!(later.position.unwrap().offset, 2);
        return;
    }
    panic!("every round took longer than the key's ttl: the machine is too loaded");
}
