//! `switchboard bench` against a cluster: two `switchboard serve` nodes on one real
//! `redis-server` started by the test on a free port, the connections spread over both
//! (`--url` twice), Redis read with `--redis`. Small numbers, short runs: the assertions are
//! about what is counted, never speed.

mod common;

use std::{path::Path, process::Output};

use common::{ServerProcess, read_json, text};

#[path = "../../switchboard-server/tests/support/redis_server.rs"]
mod redis_server;

use redis_server::RedisServer;

/// `switchboard bench ARGS… --duration 1 --warmup 0 --quiet` with the development secret at
/// `secret`.
fn bench(args: &[&str], secret: &Path) -> Output {
    let args = [args, &["--duration", "1", "--warmup", "0", "--quiet"]].concat();
    common::bench(&args, &[("SWITCHBOARD_DEV_SECRET_FILE", secret)])
}

/// A node in development mode on `redis`, sharing the development secret at `secret` with
/// the other nodes and the bench.
fn node(redis: &RedisServer, secret: &Path) -> ServerProcess {
    let url = redis.url();
    ServerProcess::start_with_env(
        &[],
        &[
            ("SWITCHBOARD_BROKER__KIND", "redis"),
            ("SWITCHBOARD_BROKER__URL", url.as_str()),
            ("SWITCHBOARD_DEV_SECRET_FILE", secret.to_str().unwrap()),
        ],
    )
}

#[test]
fn cluster_fanout_and_idle_connections_over_two_nodes_on_one_redis() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("dev-secret");
    let nodes = [node(&redis, &secret), node(&redis, &secret)];
    let urls: Vec<String> = nodes.iter().map(|n| n.ws_url("/ws")).collect();
    let pids: Vec<String> = nodes.iter().map(|n| n.child.id().to_string()).collect();
    let cluster = [
        "--url",
        urls[0].as_str(),
        "--url",
        urls[1].as_str(),
        "--server-pid",
        pids[0].as_str(),
        "--server-pid",
        pids[1].as_str(),
    ];
    let redis_url = redis.url();

    // Fan-out: 20 subscribers, 10 on each node, the publisher on the first; every
    // publication crosses Redis to reach the second node's half.
    let json = dir.path().join("fanout.json");
    let out = bench(
        &[
            &["fanout", "--subscribers", "20", "--rate", "300"][..],
            &cluster,
            &["--redis", &redis_url, "--json", json.to_str().unwrap()],
        ]
        .concat(),
        &secret,
    );
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("commands per publication"), "{stdout}");
    let v = read_json(&json);
    let r = &v["results"];
    assert_eq!(v["config"]["urls"].as_array().unwrap().len(), 2);
    assert_eq!(r["connections"], 21, "{r}");
    let sent = r["sent"].as_u64().unwrap();
    assert!(sent >= 100, "{r}");
    assert_eq!(r["expected"], sent * 20, "{r}");
    assert_eq!(r["delivery_ratio"], 1.0, "{r}");
    assert_eq!(r["out_of_order"], 0, "{r}");
    let redis_stats = &r["redis"];
    assert_eq!(redis_stats["url"], redis_url.as_str());
    let per_publication = redis_stats["commands_per_publication"].as_f64().unwrap();
    assert!(per_publication >= 1.0, "{redis_stats}");
    // One stream entry and one pub/sub message per publication, whatever the number of
    // nodes and subscribers (a publication in flight at either end of the window may tip
    // the ratio by a little).
    for command in ["xadd", "publish", "evalsha"] {
        let n = redis_stats["calls_per_publication"][command]
            .as_f64()
            .unwrap_or(0.0);
        assert!((0.9..=1.1).contains(&n), "{command}: {redis_stats}");
    }
    assert!(
        redis_stats["used_memory_after_bytes"].as_u64().unwrap()
            > redis_stats["used_memory_before_bytes"].as_u64().unwrap(),
        "the room's history is in Redis: {redis_stats}"
    );

    // Idle connections, authenticated in one room: memory per node and in Redis.
    let json = dir.path().join("connect.json");
    let out = bench(
        &[
            &["connect", "--connections", "41", "--subscribe", "idle:room"][..],
            &cluster,
            &["--redis", &redis_url, "--json", json.to_str().unwrap()],
        ]
        .concat(),
        &secret,
    );
    assert!(out.status.success(), "{}", text(&out));
    let r = &read_json(&json)["results"];
    assert_eq!(r["connections"], 41, "{r}");
    let per_node = r["server"]["nodes"].as_array().unwrap();
    assert_eq!(per_node.len(), 2, "{r}");
    for (k, n) in per_node.iter().enumerate() {
        assert_eq!(n["pid"], nodes[k].child.id(), "{n}");
        assert_eq!(n["url"], urls[k].as_str(), "{n}");
        assert_eq!(n["connections"], [21, 20][k], "{n}");
        assert!(n["memory_per_connection_bytes"].is_number(), "{n}");
        assert!(n["rss_after_bytes"].as_u64().unwrap() > 0, "{n}");
    }
    // Presence entries of 41 members (and their personal rooms) live in Redis.
    let redis_stats = &r["redis"];
    assert!(
        redis_stats["memory_per_connection_bytes"].as_f64().unwrap() > 0.0,
        "{redis_stats}"
    );
}

#[test]
fn a_redis_that_is_not_loopback_or_not_there_is_refused_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("dev-secret");
    std::fs::write(&secret, "not used: the run never starts").unwrap();
    // A port nothing listens on: bound, read, released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let closed = format!("redis://127.0.0.1:{port}");
    for (redis, says) in [
        ("redis://10.1.2.3:6400", "loopback"),
        ("http://127.0.0.1:6400", "not a redis:// URL"),
        (closed.as_str(), "cannot connect"),
    ] {
        let out = bench(
            &[
                "fanout",
                "--url",
                "ws://127.0.0.1:9/ws",
                "--url",
                "ws://127.0.0.1:10/ws",
                "--redis",
                redis,
            ],
            &secret,
        );
        assert_eq!(out.status.code(), Some(2), "{redis}: {}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("--redis") && stderr.contains(says),
            "{redis}: {}",
            text(&out)
        );
    }
}
