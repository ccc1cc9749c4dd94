//! Several `switchboard serve` processes on one Redis Cluster
//! (`SWITCHBOARD_BROKER__KIND=redis`, `SWITCHBOARD_BROKER__CLUSTER=[seed nodes]`) behave as
//! one server: publications made on either node reach both in one order, with the same
//! offsets, through sharded pub/sub. The test starts its own three-primary cluster on free
//! ports.

mod common;
mod protocol_common;

use protocol_common::{SECRET, TestServer};
use serde_json::json;

#[path = "../../switchboard-server/tests/support/redis_cluster.rs"]
mod redis_cluster;

use redis_cluster::RedisCluster;

/// One node: a `switchboard serve` on the test's Redis Cluster.
fn node(cluster: &RedisCluster) -> TestServer {
    let config = format!(
        "personal_rooms = false\n\
         [auth]\nsecret = \"{SECRET}\"\n\
         [namespaces.chat]\nsubscribe = \"anyone\"\njoin_leave = false\n"
    );
    // The TOML array form; a comma-separated list works too (docs/configuration.md).
    let seeds = format!(
        "[{}]",
        cluster
            .urls()
            .iter()
            .map(|u| format!("\"{u}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let vars = [
        ("SWITCHBOARD_BROKER__KIND", "redis"),
        ("SWITCHBOARD_BROKER__CLUSTER", seeds.as_str()),
    ];
    TestServer::start_with_env(&config, &vars)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_a_redis_cluster_deliver_each_others_publications_in_order() {
    let cluster = RedisCluster::start(3);
    let (n1, n2) = (node(&cluster), node(&cluster));
    let mut a = n1.connect("alice").await;
    let mut b = n2.connect("bob").await;
    // Several rooms, so that they land on different slots (and most likely primaries).
    let rooms = ["chat:r1", "chat:r2", "chat:r3", "chat:r4"];
    for room in rooms {
        let ra = a.subscribe(room).await;
        let rb = b.subscribe(room).await;
        assert_eq!(ra["epoch"], rb["epoch"], "{ra} {rb}");
    }
    for n in 1..=10u64 {
        for room in rooms {
            let publisher = if n % 2 == 1 { &mut a } else { &mut b };
            publisher.publish(room, json!({ "n": n })).await;
        }
    }
    for client in [&mut a, &mut b] {
        for room in rooms {
            for n in 1..=10 {
                let push = client.push("message", room).await;
                assert_eq!(
                    (push["offset"].as_u64(), push["data"]["n"].as_u64()),
                    (Some(n), Some(n)),
                    "{room}: {push}"
                );
            }
        }
    }
}
