//! Two `switchboard serve` nodes on a Sentinel-monitored Redis (`broker.sentinel` from the
//! environment) follow its primary through a failover: the primary is killed with SIGKILL
//! mid-stream, publishes answer `unavailable` until the sentinels have promoted a replica,
//! and every subscriber ends with every acknowledged publication, in order, once (the
//! promoted replica forks the stream into a new epoch, announced with `recovered: true`).
//! The test starts its own Redis processes (a primary, two replicas, three sentinels) on
//! free ports.

mod common;
mod protocol_common;

use std::time::{Duration, Instant};

use protocol_common::{Client, SECRET, TestServer};
use serde_json::{Value, json};

#[path = "../../switchboard-server/tests/support/redis_sentinel.rs"]
mod redis_sentinel;

use redis_sentinel::{MASTER, RedisSentinelSet};

/// One node: a `switchboard serve` on the test's Sentinel set.
fn node(set: &RedisSentinelSet) -> TestServer {
    let config = format!(
        "personal_rooms = false\n\
         [auth]\nsecret = \"{SECRET}\"\n\
         [namespaces.chat]\nsubscribe = \"anyone\"\njoin_leave = false\n"
    );
    // One comma-separated variable, as an orchestrator would set it.
    let urls = set.sentinel_urls().join(",");
    let vars = [
        ("SWITCHBOARD_BROKER__KIND", "redis"),
        ("SWITCHBOARD_BROKER__SENTINEL__URLS", urls.as_str()),
        ("SWITCHBOARD_BROKER__SENTINEL__MASTER", MASTER),
        // Half of it is the `WAIT` for a replica's ack (as in the broker's sentinel tests, a
        // 500 ms timeout left 250 ms, which ran out on a loaded machine).
        ("SWITCHBOARD_BROKER__TIMEOUT", "2s"),
    ];
    TestServer::start_with_env(&config, &vars)
}

/// Publishes `{"n": n}` with an idempotency key until it is acknowledged (retrying on
/// `unavailable`, the same key each time so that a publish applied without its reply is not
/// stored twice); returns how many attempts failed.
async fn publish_until_acknowledged(client: &mut Client, n: u64, deadline: Instant) -> u32 {
    let mut failed = 0;
    loop {
        let answer = client
            .request(json!({
                "type": "publish", "room": "chat:r", "data": {"n": n},
                "idempotency_key": format!("k{n}"),
            }))
            .await;
        if answer["type"] == "reply" {
            return failed;
        }
        assert_eq!(answer["code"], "unavailable", "{answer}");
        assert!(
            Instant::now() < deadline,
            "publish {n} not acknowledged in time: {answer}"
        );
        failed += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The room's publications up to `{"n": last}`: (offset, n) each. A `recovered: false`
/// (history lost in the failover) fails the test, saying so; the `recovered: true` that
/// announces the promoted replica's new epoch is checked and passed over.
async fn stream_until(client: &mut Client, last: u64) -> Vec<(u64, u64)> {
    let mut seen = Vec::new();
    loop {
        let push = client
            .expect("a publication or a gap of chat:r", |v: &Value| {
                v["room"] == "chat:r" && (v["type"] == "message" || v["type"] == "subscribed")
            })
            .await;
        if push["type"] == "subscribed" {
            // The promoted replica forks the stream: it goes on in a new epoch from the
            // last offset delivered, announced with `recovered: true`.
            assert_eq!(
                push["recovered"], true,
                "history was lost in the failover (recovered: false) after {seen:?}: {push}"
            );
            let last = seen.last().map_or(0, |&(offset, _)| offset);
            assert_eq!(push["offset"], last, "{push} after {seen:?}");
            continue;
        }
        let n = push["data"]["n"].as_u64().unwrap();
        seen.push((push["offset"].as_u64().expect("a numbered publication"), n));
        if n == last {
            return seen;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_loses_no_acknowledged_publication() {
    // Two replicas: with wait_for_replicas = 1 (the default) the new primary needs one left
    // to acknowledge publications.
    let mut set = RedisSentinelSet::start(2);
    let (n1, n2) = (node(&set), node(&set));
    let mut publisher = n1.connect("pat").await;
    let mut a = n1.connect("alice").await;
    let mut b = n2.connect("bob").await;
    for client in [&mut publisher, &mut a, &mut b] {
        client.subscribe("chat:r").await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for n in 1..=5 {
        assert_eq!(
            publish_until_acknowledged(&mut publisher, n, deadline).await,
            0
        );
    }

    let old = set.kill_primary();
    let killed = Instant::now();
    // Publish on through the failover: the first acknowledged publish after the kill ends
    // the pause.
    let mut failures = 0;
    let mut pause = None;
    for n in 6..=20 {
        let failed = publish_until_acknowledged(&mut publisher, n, deadline).await;
        failures += failed;
        if failed > 0 && pause.is_none() {
            pause = Some(killed.elapsed());
        }
    }
    let pause = pause.unwrap_or_default();
    // Kept to the end: dropping the set stops its processes.
    let (_set, new) = tokio::task::spawn_blocking(move || {
        let new = set.wait_for_failover(old);
        (set, new)
    })
    .await
    .unwrap();
    eprintln!(
        "sentinel failover: primary {old} killed, {new} promoted; publishes answered \
         unavailable for {pause:?} ({failures} failed attempts)"
    );
    assert!(failures > 0, "the kill was noticed");
    assert!(pause < Duration::from_secs(30), "{pause:?}");

    // An end marker: nothing may follow the sequence but it.
    publish_until_acknowledged(&mut publisher, 99, deadline).await;
    let expected: Vec<(u64, u64)> = (1..=20)
        .map(|n| (n, n))
        .chain(std::iter::once((21, 99)))
        .collect();
    for (name, client) in [("alice", &mut a), ("bob", &mut b)] {
        assert_eq!(
            stream_until(client, 99).await,
            expected,
            "{name} has every acknowledged publication in order, once"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while (n1.ready(), n2.ready()) != (200, 200) {
        assert!(
            Instant::now() < deadline,
            "/readyz did not come back to 200"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
