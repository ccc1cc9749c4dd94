use std::sync::Arc;
use std::time::Duration;

use super::super::conformance::Backend;
use std::sync::atomic::Ordering;

use super::*;

#[path = "../../../tests/support/redis_server.rs"]
pub(super) mod redis_server;

use redis_server::RedisServer;

/// The Redis broker as a conformance backend: one `redis-server` per test, a fresh key
/// prefix per call of `nodes`, real time for ttls.
struct Redis(RedisServer);

impl Redis {
    fn start() -> Redis {
        Redis(RedisServer::start())
    }

    fn config(&self, prefix: &str) -> RedisBrokerConfig {
        RedisBrokerConfig {
            url: self.0.url(),
            prefix: prefix.to_owned(),
            ..RedisBrokerConfig::default()
        }
    }
}

/// One broker per sink, each connected with `config` of one fresh prefix (so that tests
/// sharing a Redis do not see each other's rooms).
fn connect_nodes<'a>(
    sinks: Vec<Arc<dyn NodeSink>>,
    config: impl Fn(&str) -> RedisBrokerConfig + Send + 'a,
) -> BoxFuture<'a, Vec<Arc<dyn Broker>>> {
    Box::pin(async move {
        let prefix = format!("t{}", crate::ids::random_base62(8));
        let mut brokers = Vec::new();
        for sink in sinks {
            let broker = RedisBroker::connect(config(&prefix), sink)
                .await
                .expect("connecting to the test's redis");
            brokers.push(Arc::new(broker) as Arc<dyn Broker>);
        }
        brokers
    })
}

impl Backend for Redis {
    fn nodes(&self, sinks: Vec<Arc<dyn NodeSink>>) -> BoxFuture<'_, Vec<Arc<dyn Broker>>> {
        connect_nodes(sinks, |prefix| self.config(prefix))
    }

    fn advance(&self, by: Duration) -> BoxFuture<'_, ()> {
        Box::pin(tokio::time::sleep(by))
    }

    fn quiet_period(&self) -> Duration {
        Duration::from_millis(100)
    }
}

crate::broker_conformance_tests!(real_time Redis::start());

#[path = "../../../tests/support/redis_cluster.rs"]
pub(super) mod redis_cluster;

/// The suite against a Redis Cluster of three primaries (one per test), through its seed
/// nodes: sharded pub/sub, every room's keys on its own slot.
mod on_a_cluster {
    use super::redis_cluster::RedisCluster;
    use super::*;

    struct Cluster(RedisCluster);

    impl Backend for Cluster {
        fn nodes(&self, sinks: Vec<Arc<dyn NodeSink>>) -> BoxFuture<'_, Vec<Arc<dyn Broker>>> {
            connect_nodes(sinks, |prefix| RedisBrokerConfig {
                cluster: self.0.urls(),
                prefix: prefix.to_owned(),
                ..RedisBrokerConfig::default()
            })
        }

        fn advance(&self, by: Duration) -> BoxFuture<'_, ()> {
            Box::pin(tokio::time::sleep(by))
        }

        fn quiet_period(&self) -> Duration {
            Duration::from_millis(100)
        }
    }

    crate::broker_conformance_tests!(real_time Cluster(RedisCluster::start(3)));

    fn config(cluster: &RedisCluster) -> RedisBrokerConfig {
        RedisBrokerConfig {
            cluster: cluster.urls(),
            prefix: format!("t{}", crate::ids::random_base62(8)),
            ..RedisBrokerConfig::default()
        }
    }

    /// Keys in the database of the node on `port`.
    fn dbsize(port: u16) -> u64 {
        redis_cluster::cli(port, &["dbsize"])
            .expect("redis-cli dbsize")
            .parse()
            .unwrap()
    }

    /// A reshard that moves a subscribed room's slot ends its sharded subscription (Redis
    /// pushes `sunsubscribe`): the node notices, resubscribes on the new slot map and
    /// signals the possible loss, and the room's publications reach it again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn follows_a_room_whose_slot_moves() {
        let cluster = RedisCluster::start(3);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let broker = RedisBroker::connect(config(&cluster), Arc::new(tx))
            .await
            .unwrap();
        let room: Arc<str> = Arc::from("r0");
        broker
            .subscribe_many(std::slice::from_ref(&room))
            .await
            .unwrap();
        broker
            .publish(
                &room,
                Bytes::from_static(b"1"),
                None,
                PublishOptions::default(),
            )
            .await
            .unwrap();
        assert!(matches!(rx.recv().await, Some(NodeEvent::Publication(_))));

        let slot = conn::slot(&room);
        let owner = cluster.owner_of(slot);
        tokio::task::block_in_place(|| cluster.move_slot(slot, (owner + 1) % 3));
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some(NodeEvent::Lost { room: None })) => {}
            other => panic!("the ended subscription went unnoticed: {other:?}"),
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let p = deliver_when_back(&broker, &mut rx, &room, b"2", deadline).await;
        assert_eq!(&*p.data, b"2");
    }

    /// The slot the broker groups a room's calls by is the one Redis gives its keys.
    #[test]
    fn room_slots_are_redis_slots() {
        let cluster = RedisCluster::start(3);
        for room in ["r0", "chat:lobby", "user:alice", "a/b=c@d.e_f-g"] {
            let key = format!("sb:{{{room}}}:p");
            let slot: u16 = redis_cluster::cli(cluster.ports()[0], &["cluster", "keyslot", &key])
                .expect("redis-cli cluster keyslot")
                .parse()
                .unwrap();
            assert_eq!(conn::slot(room), slot, "{room}");
        }
    }

    /// The index of expired entries and the rooms are on different slots: the sweep still
    /// removes each entry once, with its `leave`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn expired_presence_is_swept_on_every_slot() {
        let cluster = RedisCluster::start(3);
        let rooms = ["r0", "r1", "r2", "r3", "r4", "r5", "r6", "r7"];
        expired_presence_is_swept(config(&cluster), &rooms).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn presence_refresh_in_batches_over_slots() {
        let cluster = RedisCluster::start(3);
        presence_refresh_keeps_entries(config(&cluster)).await;
    }

    /// Node reports, server API commands and connection counts (one key per user, on many
    /// slots) work across two nodes of a cluster.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reports_commands_and_counts() {
        use crate::limits::CountKey;

        let cluster = RedisCluster::start(3);
        let config = RedisBrokerConfig {
            presence_ttl: Duration::from_millis(600),
            ..config(&cluster)
        };
        let (tx_a, _rx_a) = tokio::sync::mpsc::unbounded_channel();
        let (tx_b, mut rx_b) = tokio::sync::mpsc::unbounded_channel();
        let a = RedisBroker::connect(config.clone(), Arc::new(tx_a))
            .await
            .unwrap();
        let b = RedisBroker::connect(config, Arc::new(tx_b)).await.unwrap();

        a.report(NodeReport {
            id: "a".into(),
            info: "{}".into(),
            rooms: vec![("r".into(), 2)],
        })
        .await
        .unwrap();
        let reports = b.cluster().await.unwrap().unwrap();
        assert_eq!(reports.len(), 1);
        assert_eq!(
            (reports[0].id.as_str(), &reports[0].rooms[..]),
            ("a", &[("r".to_owned(), 2)][..])
        );

        let command = ClusterCommand::Disconnect {
            user: "u".into(),
            code: 4000,
            reason: "bye".into(),
        };
        a.command(command.clone()).await.unwrap();
        match tokio::time::timeout(Duration::from_secs(5), rx_b.recv()).await {
            Ok(Some(NodeEvent::Command(c))) => assert_eq!(c, command),
            other => panic!("no command: {other:?}"),
        }

        let (on_a, on_b) = (a.admission().unwrap(), b.admission().unwrap());
        let users: Vec<String> = (0..12).map(|i| format!("u{i}")).collect();
        let mut slots = Vec::new();
        for user in &users {
            let mut slot = None;
            on_a.admit(CountKey::User(user), 1, &mut slot)
                .await
                .unwrap();
            slots.push(slot.unwrap());
        }
        // Past the ttl: kept by a's refresh (a pipeline over many slots).
        tokio::time::sleep(Duration::from_millis(800)).await;
        for user in &users {
            let mut slot = None;
            assert!(
                on_b.admit(CountKey::User(user), 1, &mut slot)
                    .await
                    .is_err(),
                "{user}"
            );
        }
        // Released (removals over many slots): b admits each.
        for slot in slots {
            on_a.release(slot);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        for user in &users {
            loop {
                let mut slot = None;
                if on_b.admit(CountKey::User(user), 1, &mut slot).await.is_ok() {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{user} never released"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// A primary killed and started again (empty): the node notices, resubscribes every
    /// room on every primary once the cluster is back, signals the loss, and delivers again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn survives_a_primary_restart() {
        let mut cluster = RedisCluster::start(3);
        let config = RedisBrokerConfig {
            timeout: Duration::from_millis(500),
            max_backoff: Duration::from_millis(200),
            ..config(&cluster)
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let broker = RedisBroker::connect(config, Arc::new(tx)).await.unwrap();
        let rooms: Vec<Arc<str>> = (0..12).map(|i| Arc::from(format!("r{i}"))).collect();
        broker.subscribe_many(&rooms).await.unwrap();
        let opts = PublishOptions::default();
        for room in &rooms {
            broker
                .publish(room, Bytes::from_static(b"1"), None, opts.clone())
                .await
                .unwrap();
        }
        for _ in &rooms {
            assert!(matches!(rx.recv().await, Some(NodeEvent::Publication(_))));
        }
        assert!(
            dbsize(cluster.ports()[0]) > 0,
            "no room on the first primary"
        );

        cluster.stop(0);
        let down = tokio::time::Instant::now();
        while broker.inner.connected.load(Ordering::Relaxed) {
            assert!(
                down.elapsed() < Duration::from_secs(5),
                "the loss was not noticed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(broker.ready().await.is_err());
        tokio::task::block_in_place(|| cluster.restart(0));
        match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
            Ok(Some(NodeEvent::Lost { room: None })) => {}
            other => panic!("no loss signal: {other:?}"),
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        for room in &rooms {
            deliver_when_back(&broker, &mut rx, room, b"2", deadline).await;
        }
    }
}

#[test]
fn key_slots_follow_redis_hash_tags() {
    use super::conn::{key_slot, slot};
    // `CLUSTER KEYSLOT foo` and `somekey` on Redis 7.
    assert_eq!(key_slot(b"foo"), 12182);
    assert_eq!(key_slot(b"somekey"), 11058);
    assert_eq!(key_slot(b"{foo}.bar"), 12182);
    // An empty tag counts for nothing: the whole key is hashed; only the first `{` opens.
    assert_eq!(key_slot(b"{}foo"), slot("{}foo"));
    assert_eq!(key_slot(b"x{{foo}}"), slot("{foo"));
    // A room's channel is in its room's slot, as its keys are.
    assert_eq!(key_slot(b"P:{chat:lobby}:c"), slot("chat:lobby"));
}

#[test]
fn messages_round_trip() {
    let empty: Arc<str> = Arc::from("");
    let body = encode_body(b"{\"n\":1}", Some(b"{\"user\":\"u\"}"), Some("c1"));
    let mut payload = b"pAbC\n42\n".to_vec();
    payload.extend_from_slice(&body);
    match decode_event(Arc::from("r"), &payload, &empty) {
        Some(NodeEvent::Publication(p)) => {
            assert_eq!((&*p.epoch, p.offset), ("AbC", 42));
            assert_eq!(&p.data[..], b"{\"n\":1}");
            assert_eq!(p.from.as_deref(), Some(&b"{\"user\":\"u\"}"[..]));
            assert_eq!(p.exclude.as_deref(), Some("c1"));
        }
        other => panic!("{other:?}"),
    }
    let member = PresenceEntry {
        connection: "c:1\n".into(),
        user: "u:2".into(),
        info: None,
    };
    match decode_event(Arc::from("r"), &encode_member(b'l', &member), &empty) {
        Some(NodeEvent::Leave { member: m, .. }) => assert_eq!(m, member),
        other => panic!("{other:?}"),
    }
    for command in [
        ClusterCommand::Disconnect {
            user: "u".into(),
            code: 4001,
            reason: "bye: now".into(),
        },
        ClusterCommand::Subscribe {
            user: "u".into(),
            room: "a:b".into(),
        },
    ] {
        assert_eq!(
            decode_command(&encode_command(&command).unwrap()),
            Some(command)
        );
    }
    assert!(decode_event(Arc::from("r"), b"p\n", &empty).is_none());
    assert!(decode_event(Arc::from("r"), b"x", &empty).is_none());
}

/// A broker on `url` that notices a lost Redis and reconnects quickly, for the restart tests.
fn quick_reconnect(url: String) -> RedisBrokerConfig {
    RedisBrokerConfig {
        url,
        timeout: Duration::from_millis(500),
        max_backoff: Duration::from_millis(200),
        ..RedisBrokerConfig::default()
    }
}

/// Publishes `body` to `room` until Redis takes it (the connections reconnect on their own
/// schedule after a restart or a move), failing the test at `deadline`.
async fn publish_when_back(
    broker: &RedisBroker,
    room: &str,
    body: &'static [u8],
    deadline: tokio::time::Instant,
) -> PublishResult {
    loop {
        let published = broker
            .publish(
                room,
                Bytes::from_static(body),
                None,
                PublishOptions::default(),
            )
            .await;
        match published {
            Ok(r) => return r,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{room}: no publish: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Publishes `body` to `room` until the node receives it back, publishing again after each
/// reconnect it announces (a loaded machine may miss a PING; the hub would catch up from
/// history) and passing over earlier publications of other rooms; fails at `deadline`.
async fn deliver_when_back(
    broker: &RedisBroker,
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<NodeEvent>,
    room: &str,
    body: &'static [u8],
    deadline: tokio::time::Instant,
) -> Arc<Publication> {
    'published: loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{room}: not delivered again"
        );
        publish_when_back(broker, room, body, deadline).await;
        loop {
            match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
                Ok(Some(NodeEvent::Publication(p))) if *p.room == *room => return p,
                Ok(Some(NodeEvent::Lost { room: None })) => continue 'published,
                Ok(Some(NodeEvent::Publication(_))) => {}
                other => panic!("{room}: {other:?}"),
            }
        }
    }
}

/// A node whose Redis goes away: calls fail with `unavailable`, `ready` fails, and once
/// Redis is back the node resubscribes its rooms, signals the loss, and delivers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_redis_restart() {
    let mut server = RedisServer::start_persistent();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let broker = RedisBroker::connect(quick_reconnect(server.url()), Arc::new(tx))
        .await
        .unwrap();
    broker.subscribe("r").await.unwrap();
    let opts = PublishOptions::default();
    let first = broker
        .publish("r", Bytes::from_static(b"1"), None, opts.clone())
        .await
        .unwrap();
    assert!(matches!(rx.recv().await, Some(NodeEvent::Publication(_))));
    broker.ready().await.unwrap();

    server.stop();
    let err = broker
        .publish("r", Bytes::from_static(b"2"), None, opts.clone())
        .await
        .expect_err("redis is down");
    assert!(matches!(err, BrokerError::Unavailable { .. }), "{err:?}");
    assert!(broker.ready().await.is_err());

    server.restart();
    // The node signals the loss once it has resubscribed.
    match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
        Ok(Some(NodeEvent::Lost { room: None })) => {}
        other => panic!("no loss signal: {other:?}"),
    }
    broker.ready().await.unwrap();
    // The room is subscribed again; the stream survived (persistent server).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let next = publish_when_back(&broker, "r", b"3", deadline).await;
    let (first, next) = (first.position.unwrap(), next.position.unwrap());
    // Another Redis process: the stream forks (publish.lua), going on from its offsets, and
    // a position of the old epoch recovers in the new one.
    assert_ne!(next.epoch, first.epoch);
    assert_eq!(next.offset, first.offset + 1);
    match rx.recv().await {
        Some(NodeEvent::Publication(p)) => assert_eq!(p.offset, next.offset),
        other => panic!("{other:?}"),
    }
    let h = broker
        .history("r", HistoryQuery::recovery(first.clone()))
        .await
        .unwrap();
    assert!(h.recoverable);
    assert_eq!(h.position, next);
    let offsets: Vec<u64> = h.publications.iter().map(|p| p.offset).collect();
    assert_eq!(offsets, [next.offset]);
}

/// Redis restarted from a snapshot without the last publication, which a subscriber got:
/// the next publication takes its offset in a new epoch, positions up to the snapshot
/// recover in it, the lost one's does not, and removing the history ends the old epoch's
/// positions too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_lost_a_publication_forks_the_stream() {
    let mut server = RedisServer::start();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let broker = RedisBroker::connect(quick_reconnect(server.url()), Arc::new(tx))
        .await
        .unwrap();
    let opts = PublishOptions::default();
    for body in ["1", "2"] {
        broker
            .publish("r", Bytes::from(body), None, opts.clone())
            .await
            .unwrap();
    }
    assert_eq!(server.cli(&["SAVE"]).as_deref(), Some("OK"));
    let lost = broker
        .publish("r", Bytes::from_static(b"3"), None, opts.clone())
        .await
        .unwrap()
        .position
        .unwrap();
    assert_eq!(lost.offset, 3);

    server.restart();
    match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
        Ok(Some(NodeEvent::Lost { room: None })) => {}
        other => panic!("no loss signal: {other:?}"),
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let next = publish_when_back(&broker, "r", b"4", deadline)
        .await
        .position
        .unwrap();
    assert_eq!(next.offset, 3);
    assert_ne!(
        next.epoch, lost.epoch,
        "offset 3 given again in the same epoch"
    );

    let kept = StreamPosition::new(&*lost.epoch, 2);
    let h = broker
        .history("r", HistoryQuery::recovery(kept.clone()))
        .await
        .unwrap();
    assert!(h.recoverable);
    let got: Vec<(u64, &[u8], &str)> = h
        .publications
        .iter()
        .map(|p| (p.offset, &p.data[..], &*p.epoch))
        .collect();
    assert_eq!(got, [(3, &b"4"[..], &*next.epoch)]);
    match broker.history("r", HistoryQuery::recovery(lost)).await {
        Err(BrokerError::EpochMismatch { current, .. }) => assert_eq!(current, next),
        other => panic!("the lost publication's position recovered: {other:?}"),
    }

    broker.remove_history("r").await.unwrap();
    match broker.history("r", HistoryQuery::recovery(kept)).await {
        Err(BrokerError::EpochMismatch { .. }) => {}
        other => panic!("a position from before the removal recovered: {other:?}"),
    }
}

/// Presence entries that nobody refreshes expire, and the sweep publishes their `leave`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_presence_is_swept_with_a_leave() {
    let server = RedisServer::start();
    let base = RedisBrokerConfig {
        url: server.url(),
        ..RedisBrokerConfig::default()
    };
    expired_presence_is_swept(base, &["r"]).await;
}

/// A node with `base`'s Redis adds a member to each of `rooms` and vanishes; a watcher's
/// sweep removes them with a `leave` each.
async fn expired_presence_is_swept(base: RedisBrokerConfig, rooms: &[&str]) {
    let config = |sweep| RedisBrokerConfig {
        presence_ttl: Duration::from_millis(300),
        sweep_interval: sweep,
        ..base.clone()
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let watcher = RedisBroker::connect(config(Duration::from_millis(100)), Arc::new(tx))
        .await
        .unwrap();
    let (gone_tx, _gone_rx) = tokio::sync::mpsc::unbounded_channel();
    let gone = RedisBroker::connect(config(Duration::ZERO), Arc::new(gone_tx))
        .await
        .unwrap();
    let member = PresenceEntry {
        connection: "c1".into(),
        user: "alice".into(),
        info: Some(Bytes::from_static(b"{\"a\":1}")),
    };
    for room in rooms {
        watcher.subscribe(room).await.unwrap();
        gone.presence_add(room, member.clone()).await.unwrap();
    }
    drop(gone);
    assert_eq!(
        watcher
            .presence_list(rooms[0], None, 10)
            .await
            .unwrap()
            .connections,
        1
    );
    let mut left = std::collections::BTreeSet::new();
    while left.len() < rooms.len() {
        match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
            Ok(Some(NodeEvent::Leave { room, member: m })) => {
                assert_eq!(m, member);
                assert!(left.insert(room.to_string()), "a second leave in {room}");
            }
            other => panic!("no leave after {left:?}: {other:?}"),
        }
    }
    let rooms: std::collections::BTreeSet<String> = rooms.iter().map(|r| r.to_string()).collect();
    assert_eq!(left, rooms);
    for room in &rooms {
        let page = watcher.presence_list(room, None, 10).await.unwrap();
        assert_eq!((page.connections, page.users), (0, 0));
    }
}

/// A frozen Redis (sockets open, nothing answers) is noticed by the pub/sub connection's PING:
/// `ready` fails, and once Redis thaws the node reconnects and signals the loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_is_noticed_and_survived() {
    let server = RedisServer::start();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let config = RedisBrokerConfig {
        url: server.url(),
        timeout: Duration::from_millis(200),
        max_backoff: Duration::from_millis(200),
        ..RedisBrokerConfig::default()
    };
    let broker = RedisBroker::connect(config, Arc::new(tx)).await.unwrap();
    broker.subscribe("r").await.unwrap();
    server.pause();
    let frozen = tokio::time::Instant::now();
    while broker.inner.connected.load(Ordering::Relaxed) {
        assert!(
            frozen.elapsed() < Duration::from_secs(5),
            "the frozen connection was not noticed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(broker.ready().await.is_err());
    server.resume();
    match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
        Ok(Some(NodeEvent::Lost { room: None })) => {}
        other => panic!("no loss signal: {other:?}"),
    }
    let published = broker
        .publish(
            "r",
            Bytes::from_static(b"1"),
            None,
            PublishOptions::default(),
        )
        .await;
    let published = match published {
        Ok(p) => p,
        // The command connection may still be on its way back.
        Err(_) => {
            tokio::time::sleep(Duration::from_millis(500)).await;
            broker
                .publish(
                    "r",
                    Bytes::from_static(b"1"),
                    None,
                    PublishOptions::default(),
                )
                .await
                .unwrap()
        }
    };
    match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
        Ok(Some(NodeEvent::Publication(p))) => {
            assert_eq!(Some(p.offset), published.position.map(|p| p.offset))
        }
        other => panic!("{other:?}"),
    }
}

/// A node's refresh in batches keeps every entry alive past the ttl, and adds entries Redis
/// lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_refresh_in_batches() {
    let server = RedisServer::start();
    let base = RedisBrokerConfig {
        url: server.url(),
        ..RedisBrokerConfig::default()
    };
    presence_refresh_keeps_entries(base).await;
}

/// 600 entries over three rooms, refreshed past their ttl, stay; unrefreshed, they go.
async fn presence_refresh_keeps_entries(base: RedisBrokerConfig) {
    // A ttl of 1 s and a refresh every 200 ms: refreshed for 1.4 s, the entries outlive
    // their ttl. A refresh of 600 entries may take several hundred ms on a loaded machine,
    // which a ttl of 400 ms (twice the period) did not leave.
    let ttl = Duration::from_secs(1);
    let config = RedisBrokerConfig {
        presence_ttl: ttl,
        sweep_interval: Duration::from_millis(50),
        ..base
    };
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let broker = RedisBroker::connect(config, Arc::new(tx)).await.unwrap();
    let entries: Vec<(Arc<str>, PresenceEntry)> = (0..600)
        .map(|i| {
            let room: Arc<str> = format!("r{}", i % 3).into();
            let entry = PresenceEntry {
                connection: format!("c{i:03}").into(),
                user: format!("u{}", i % 10).into(),
                info: None,
            };
            (room, entry)
        })
        .collect();
    for _ in 0..7 {
        broker.presence_refresh(&entries).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for room in ["r0", "r1", "r2"] {
        let page = broker.presence_list(room, None, 0).await.unwrap();
        assert_eq!((page.connections, page.users), (200, 10), "{room}");
    }
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    assert_eq!(
        broker
            .presence_list("r0", None, 0)
            .await
            .unwrap()
            .connections,
        0
    );
}

/// What comes from Redis is decoded without panicking, whatever it is: random bytes and
/// every truncation and byte flip of valid messages.
#[test]
fn decoding_never_panics() {
    let empty: Arc<str> = Arc::from("");
    let member = PresenceEntry {
        connection: "c1".into(),
        user: "alice".into(),
        info: Some(Bytes::from_static(b"{\"a\":1}")),
    };
    let mut valid = vec![
        [
            b"pE1\n7\n".as_slice(),
            &encode_body(b"{}", Some(b"{}"), Some("c")),
        ]
        .concat(),
        [b"e\n".as_slice(), &encode_body(b"1", None, None)].concat(),
        encode_member(b'j', &member),
        encode_member(b'l', &member),
        b"b\n13:c1hello".to_vec(),
    ];
    let command = ClusterCommand::Disconnect {
        user: "u".into(),
        code: 4000,
        reason: "r".into(),
    };
    valid.push(encode_command(&command).unwrap());
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let decode = |bytes: &[u8]| {
        let _ = decode_event(Arc::from("r"), bytes, &empty);
        let _ = decode_command(bytes);
        let _ = decode_body(bytes);
        let _ = decode_entry(Arc::from("c"), bytes);
    };
    for message in &valid {
        for cut in 0..=message.len() {
            decode(&message[..cut]);
        }
        for _ in 0..200 {
            let mut m = message.clone();
            let at = next() as usize % m.len();
            m[at] = next() as u8;
            decode(&m);
        }
    }
    for _ in 0..2000 {
        let len = next() as usize % 40;
        let bytes: Vec<u8> = (0..len)
            .map(|_| b"0123456789:-+\npejlbdsu"[next() as usize % 22])
            .collect();
        decode(&bytes);
    }
}

/// The fuzz target's seeds (fuzz/seeds/redis_payload) decode as what they stand for, and the
/// decoders survive every truncation and one-byte change of them (the fuzz target does far
/// more; this runs in every test run).
#[test]
fn payload_decoders_read_the_seeds_and_survive_their_mutations() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/redis_payload");
    let empty: Arc<str> = Arc::from("");
    let mut seeds = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let seed = std::fs::read(&path).unwrap();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let decoded = match name.as_str() {
            "disconnect" | "subscribe" | "unsubscribe" => decode_command(&seed).is_some(),
            _ => decode_event(Arc::from("r"), &seed, &empty).is_some(),
        };
        assert!(decoded, "seed {name} does not decode");
        for end in 0..=seed.len() {
            fuzz_decode(&seed[..end]);
        }
        for i in 0..seed.len() {
            for byte in [0u8, b'\n', b':', b'-', b'+', b'9', 0xff] {
                let mut m = seed.clone();
                m[i] = byte;
                fuzz_decode(&m);
            }
        }
        seeds += 1;
    }
    assert!(seeds >= 8, "{seeds} seeds in {}", dir.display());
}
