//! The Redis broker on a real Sentinel set (`tests/support/redis_sentinel.rs`): it finds the
//! primary through the sentinels, follows a graceful failover (where the old primary stays
//! up), and does not acknowledge a publication that no replica has when `wait_for_replicas`
//! asks for one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::super::{RedisBroker, RedisBrokerConfig, RedisSentinelConfig};
use crate::broker::{Broker, BrokerError, NodeEvent, PublishOptions};

#[path = "../../../tests/support/redis_sentinel.rs"]
mod redis_sentinel;

use redis_sentinel::{MASTER, RedisSentinelSet};

fn config(set: &RedisSentinelSet, wait_for_replicas: u32) -> RedisBrokerConfig {
    RedisBrokerConfig {
        url: String::new(),
        sentinel: Some(RedisSentinelConfig {
            urls: set.sentinel_urls(),
            master: MASTER.to_owned(),
            wait_for_replicas,
            ..RedisSentinelConfig::default()
        }),
        prefix: format!("t{}", crate::ids::random_base62(8)),
        // Half of it is the `WAIT` for the replica's ack: 1 s, for a loaded machine on which
        // 250 ms was seen to run out before the first publication's ack.
        timeout: Duration::from_secs(2),
        ..RedisBrokerConfig::default()
    }
}

async fn publish(broker: &RedisBroker, n: u64) -> Result<u64, BrokerError> {
    let data = Bytes::from(n.to_string());
    let opts = PublishOptions {
        idempotency_key: Some(format!("k{n}")),
        ..PublishOptions::default()
    };
    let result = broker.publish("r", data, None, opts).await?;
    Ok(result.position.expect("a stored publication").offset)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_a_graceful_failover() {
    // Two replicas: the promoted one keeps one for `wait_for_replicas` (the old primary
    // rejoins as a replica only when the sentinels demote it, about 10 s later).
    let set = RedisSentinelSet::start(2);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let broker = RedisBroker::connect(config(&set, 1), Arc::new(tx))
        .await
        .expect("the sentinels name the primary");
    broker.subscribe("r").await.unwrap();
    assert_eq!(publish(&broker, 1).await.unwrap(), 1);

    let old = set.failover();
    let new = tokio::task::block_in_place(|| set.wait_for_failover(old));
    assert_ne!(old, new);
    // The old primary stays a primary (without replicas) until the sentinels demote it,
    // about 10 s later: its WAIT finds no replica, the node asks the sentinels, moves both
    // connections to the new primary and publishes there, where the stream continues.
    let deadline = Instant::now() + Duration::from_secs(20);
    let offset = loop {
        match publish(&broker, 2).await {
            Ok(offset) => break offset,
            Err(e) => {
                assert!(matches!(e, BrokerError::Unavailable { .. }), "{e:?}");
                assert!(
                    Instant::now() < deadline,
                    "no publish after the failover: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(offset, 2, "the stream continues on the new primary");
    // Both publications reach the node's pub/sub, in order (a loss signal may come between
    // them, when the pub/sub connection moved).
    let mut offsets = Vec::new();
    while offsets.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some(NodeEvent::Publication(p))) => offsets.push(p.offset),
            Ok(Some(NodeEvent::Lost { .. })) => {}
            other => panic!("after {offsets:?}: {other:?}"),
        }
    }
    assert_eq!(offsets, [1, 2]);
    broker.ready().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publication_no_replica_has_is_not_acknowledged() {
    let mut set = RedisSentinelSet::start(1);
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let waiting = RedisBroker::connect(config(&set, 1), Arc::new(tx.clone()))
        .await
        .unwrap();
    assert_eq!(publish(&waiting, 1).await.unwrap(), 1);

    for port in set.replica_ports() {
        set.kill(port);
    }
    let e = publish(&waiting, 2).await.expect_err("no replica has it");
    assert!(
        matches!(&e, BrokerError::Unavailable { message, .. } if message.contains("wait_for_replicas")),
        "{e:?}"
    );
    // Without waiting, the primary alone acknowledges.
    let alone = RedisBroker::connect(config(&set, 0), Arc::new(tx))
        .await
        .unwrap();
    assert_eq!(publish(&alone, 3).await.unwrap(), 1, "its own prefix");
}
