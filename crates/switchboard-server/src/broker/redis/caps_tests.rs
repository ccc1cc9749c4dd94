//! The cluster-wide counts on a real `redis-server`: atomic under racing nodes, given back on
//! release, kept alive by the refresh, and gone within `presence_ttl` when a node vanishes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::super::{RedisBroker, RedisBrokerConfig};
use crate::broker::{Broker, NodeEvent, NodeSink};
use crate::limits::{AdmissionRefused, ClusterAdmission, ClusterSlot, CountKey};

// The broker's tests load the support file; a second `mod` of it would be a second copy.
use super::super::tests::redis_server::RedisServer;

struct Nothing;

impl NodeSink for Nothing {
    fn deliver(&self, _event: NodeEvent) {}
}

async fn node(redis: &RedisServer, ttl: Duration) -> (RedisBroker, Arc<dyn ClusterAdmission>) {
    let config = RedisBrokerConfig {
        url: redis.url(),
        prefix: "caps".to_owned(),
        presence_ttl: ttl,
        ..RedisBrokerConfig::default()
    };
    let broker = RedisBroker::connect(config, Arc::new(Nothing))
        .await
        .expect("connecting to the test's redis-server");
    let admission = broker.admission().expect("the redis broker counts");
    (broker, admission)
}

/// One new connection counted in `key`: its slot.
async fn admit(
    a: &Arc<dyn ClusterAdmission>,
    key: CountKey<'_>,
    limit: u32,
) -> Result<ClusterSlot, AdmissionRefused> {
    let mut slot = None;
    a.admit(key, limit, &mut slot).await?;
    Ok(slot.expect("an admitted connection has a slot"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_admissions_on_two_nodes_never_exceed_the_limit() {
    let redis = RedisServer::start();
    let ttl = Duration::from_secs(20);
    let ((_b1, a1), (_b2, a2)) = (node(&redis, ttl).await, node(&redis, ttl).await);
    let tries = (0..40).map(|i| {
        let a = if i % 2 == 0 { a1.clone() } else { a2.clone() };
        tokio::spawn(async move {
            let r = admit(&a, CountKey::User("u"), 5).await;
            (a, r)
        })
    });
    let mut admitted = Vec::new();
    let mut refused = 0;
    for t in tries.collect::<Vec<_>>() {
        match t.await.unwrap() {
            (a, Ok(slot)) => admitted.push((a, slot)),
            (_, Err(AdmissionRefused::ConnectionsPerUser)) => refused += 1,
            (_, other) => panic!("{other:?}"),
        }
    }
    assert_eq!((admitted.len(), refused), (5, 35));
    // Per IP is another count.
    let ip = "192.0.2.1".parse().unwrap();
    let by_ip = admit(&a1, CountKey::Ip(ip), 1).await.unwrap();
    assert_eq!(
        admit(&a2, CountKey::Ip(ip), 1).await,
        Err(AdmissionRefused::ConnectionsPerIp)
    );

    // A release lets exactly one more in, on either node (the removal is the writer's).
    let (a, slot) = admitted.pop().unwrap();
    a.release(slot);
    let deadline = Instant::now() + Duration::from_secs(5);
    let slot = loop {
        match admit(&a2, CountKey::User("u"), 5).await {
            Ok(slot) => break slot,
            Err(_) => {
                assert!(Instant::now() < deadline, "the release was not applied");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    assert!(admit(&a1, CountKey::User("u"), 5).await.is_err());
    a2.release(slot);

    // One connection counted per IP and per user in one slot: its release gives both back.
    let ip2 = "192.0.2.2".parse().unwrap();
    let mut both = None;
    a1.admit(CountKey::Ip(ip2), 1, &mut both).await.unwrap();
    a1.admit(CountKey::User("w"), 1, &mut both).await.unwrap();
    assert_eq!(
        admit(&a2, CountKey::User("w"), 1).await,
        Err(AdmissionRefused::ConnectionsPerUser)
    );
    // A refusal leaves the slot's other count alone.
    let mut refused_slot = None;
    a2.admit(CountKey::Ip(ip2), 1, &mut refused_slot)
        .await
        .unwrap_err();
    assert_eq!(refused_slot, None);
    a1.release(both.unwrap());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (user, ip) = (
            admit(&a2, CountKey::User("w"), 1).await,
            admit(&a2, CountKey::Ip(ip2), 1).await,
        );
        if let (Ok(_), Ok(_)) = (&user, &ip) {
            break;
        }
        // One of the two may have got in already: give it back and try both again.
        for slot in [user.ok(), ip.ok()].into_iter().flatten() {
            a2.release(slot);
        }
        assert!(Instant::now() < deadline, "the release was not applied");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    a1.release(by_ip);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_nodes_connections_are_refreshed_and_a_vanished_nodes_expire() {
    let redis = RedisServer::start();
    let ttl = Duration::from_millis(600);
    let (b1, a1) = node(&redis, ttl).await;
    let (_b2, a2) = node(&redis, ttl).await;
    let held = [
        admit(&a1, CountKey::User("v"), 2).await.unwrap(),
        admit(&a1, CountKey::User("v"), 2).await.unwrap(),
    ];
    // Three ttls later the refresh has kept them.
    tokio::time::sleep(ttl * 3).await;
    assert_eq!(
        admit(&a2, CountKey::User("v"), 2).await,
        Err(AdmissionRefused::ConnectionsPerUser)
    );
    // The node vanishes without releasing anything: its members expire.
    let gone = Instant::now();
    drop((b1, a1, held));
    let deadline = gone + Duration::from_secs(5);
    while admit(&a2, CountKey::User("v"), 2).await.is_err() {
        assert!(Instant::now() < deadline, "the vanished node still counts");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        gone.elapsed() <= ttl + Duration::from_millis(500),
        "counted {:?} after the node vanished, beyond presence_ttl",
        gone.elapsed()
    );
}
