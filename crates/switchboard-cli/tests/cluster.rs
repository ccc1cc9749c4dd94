//! Several `switchboard serve` processes on one Redis (`SWITCHBOARD_BROKER__KIND=redis`)
//! behave as one server: the same offsets on every node, recovery on another node, Redis
//! going away and coming back without a lost publication, and the presence of a killed node
//! expiring with `leave` events. Each test starts its own `redis-server` on a free port.

mod common;
mod protocol_common;

use std::time::{Duration, Instant};

use common::{ServerProcess, get};
use protocol_common::{Client, SECRET, T, token};
use serde_json::{Value, json};

#[path = "../../switchboard-server/tests/support/redis_server.rs"]
mod redis_server;

use redis_server::RedisServer;

/// One node: a `switchboard serve` on the test's Redis.
struct Node {
    process: ServerProcess,
    _dir: tempfile::TempDir,
}

impl Node {
    fn start(redis: &RedisServer, env: &[(&str, &str)]) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("switchboard.toml");
        let config = format!(
            "personal_rooms = false\n\
             [auth]\nsecret = \"{SECRET}\"\n\
             [namespaces.chat]\nsubscribe = \"anyone\"\njoin_leave = false\n\
             [namespaces.pres]\nsubscribe = \"anyone\"\n"
        );
        std::fs::write(&path, config).unwrap();
        let url = redis.url();
        let mut vars = vec![
            ("SWITCHBOARD_BROKER__KIND", "redis"),
            ("SWITCHBOARD_BROKER__URL", url.as_str()),
        ];
        vars.extend_from_slice(env);
        let process = ServerProcess::start_with_env(&["--config", path.to_str().unwrap()], &vars);
        Node { process, _dir: dir }
    }

    async fn connect(&self, user: &str) -> Client {
        Client::connect(&self.process.ws_url("/ws"), Some(&token(user))).await
    }

    fn ready(&self) -> u16 {
        get(self.process.addr, "/readyz").0
    }
}

/// The next `message` push of `room`: its offset and its data's `n`.
async fn message(client: &mut Client, room: &str) -> (u64, u64) {
    let push = client.push("message", room).await;
    (
        push["offset"].as_u64().expect("a numbered publication"),
        push["data"]["n"].as_u64().unwrap(),
    )
}

/// Publishes `{"n": n}`, returning the reply's result.
async fn publish(client: &mut Client, room: &str, n: u64) -> Value {
    client.publish(room, json!({ "n": n })).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_deliver_each_others_publications_and_recover_on_the_other() {
    let redis = RedisServer::start();
    let (n1, n2) = (Node::start(&redis, &[]), Node::start(&redis, &[]));
    let mut a = n1.connect("alice").await;
    let mut b = n2.connect("bob").await;
    let ra = a.subscribe("chat:r").await;
    let rb = b.subscribe("chat:r").await;
    assert_eq!(ra["epoch"], rb["epoch"], "{ra} {rb}");
    assert_eq!(
        (ra["offset"].as_u64(), rb["offset"].as_u64()),
        (Some(0), Some(0))
    );
    let epoch = ra["epoch"].clone();

    // Publishers on both nodes: one order, the same offsets everywhere.
    for n in 1..=10 {
        let publisher = if n % 2 == 1 { &mut a } else { &mut b };
        publish(publisher, "chat:r", n).await;
    }
    for client in [&mut a, &mut b] {
        for n in 1..=10 {
            assert_eq!(message(client, "chat:r").await, (n, n));
        }
    }

    // Bob drops off node 2 having seen offset 10; alice goes on; bob comes back on node 1.
    drop(b);
    for n in 11..=15 {
        publish(&mut a, "chat:r", n).await;
    }
    let mut b = n1.connect("bob").await;
    let reply = b
        .ok(json!({"type": "subscribe", "room": "chat:r",
                   "since": {"epoch": epoch, "offset": 10}}))
        .await;
    assert_eq!(reply["recovered"], true, "{reply}");
    assert_eq!(reply["epoch"], epoch);
    let recovered: Vec<u64> = reply["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(recovered, [11, 12, 13, 14, 15]);
    publish(&mut a, "chat:r", 16).await;
    assert_eq!(message(&mut b, "chat:r").await, (16, 16));
    let rest = b.sync().await;
    assert!(
        rest.iter().all(|m| m["type"] != "message"),
        "a duplicate: {rest:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_and_restarted_mid_stream_loses_nothing() {
    let mut redis = RedisServer::start_persistent();
    let env = [("SWITCHBOARD_BROKER__TIMEOUT", "500ms")];
    let (n1, n2) = (Node::start(&redis, &env), Node::start(&redis, &env));
    let mut publisher = n1.connect("pat").await;
    let mut a = n1.connect("alice").await;
    let mut b = n2.connect("bob").await;
    for client in [&mut publisher, &mut a, &mut b] {
        client.subscribe("chat:r").await;
    }
    let mut published = Vec::new();
    for n in 1..=5 {
        publish(&mut publisher, "chat:r", n).await;
        published.push(n);
    }
    assert_eq!((n1.ready(), n2.ready()), (200, 200));

    redis.stop();
    publisher
        .err(
            json!({"type": "publish", "room": "chat:r", "data": {"n": 0}}),
            "unavailable",
        )
        .await;
    assert_eq!((n1.ready(), n2.ready()), (503, 503));

    redis.restart();
    // Publish as soon as the node can: some of these may be numbered before the nodes'
    // pub/sub connections are back, and must reach the subscribers all the same.
    let deadline = Instant::now() + T;
    let mut n = 6;
    while n <= 15 {
        let answer = publisher
            .request(json!({"type": "publish", "room": "chat:r", "data": {"n": n}}))
            .await;
        if answer["type"] == "reply" {
            published.push(n);
            n += 1;
        } else {
            assert_eq!(answer["code"], "unavailable", "{answer}");
            assert!(Instant::now() < deadline, "redis did not come back");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for client in [&mut a, &mut b] {
        let mut seen = Vec::new();
        for offset in 1..=15 {
            let (o, n) = message(client, "chat:r").await;
            assert_eq!(o, offset, "offsets out of order after {seen:?}");
            seen.push(n);
        }
        assert_eq!(
            seen, published,
            "every subscriber ends with the complete sequence"
        );
    }
    let deadline = Instant::now() + T;
    while (n1.ready(), n2.ready()) != (200, 200) {
        assert!(
            Instant::now() < deadline,
            "/readyz did not come back to 200"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_presence_expires_with_leave_events() {
    let redis = RedisServer::start();
    let env = [
        ("SWITCHBOARD_BROKER__PRESENCE_TTL", "1s"),
        ("SWITCHBOARD_BROKER__SWEEP_INTERVAL", "200ms"),
    ];
    let (mut n1, n2) = (Node::start(&redis, &env), Node::start(&redis, &env));
    let mut x = n2.connect("xavier").await;
    x.subscribe("pres:r").await;
    // A namespace without join and leave: presence, but no leave when the entry expires.
    x.subscribe("chat:quiet").await;
    let mut y = n1.connect("yann").await;
    y.subscribe("pres:r").await;
    y.subscribe("chat:quiet").await;
    let join = x.push("join", "pres:r").await;
    assert_eq!(join["member"]["user"], "yann");
    let present = x.ok(json!({"type": "presence", "room": "pres:r"})).await;
    assert_eq!(present["connections"], 2, "{present}");

    // SIGKILL: the node says nothing; its entries expire.
    let killed = Instant::now();
    n1.process.child.kill().unwrap();
    n1.process.child.wait().unwrap();
    let leave = x.push("leave", "pres:r").await;
    assert_eq!(leave["member"]["user"], "yann");
    assert_eq!(leave["member"]["connection"], join["member"]["connection"]);
    assert!(
        killed.elapsed() < Duration::from_secs(3),
        "left after {:?}, beyond presence_ttl + sweep_interval",
        killed.elapsed()
    );
    let present = x.ok(json!({"type": "presence", "room": "pres:r"})).await;
    assert_eq!(present["connections"], 1, "{present}");
    let quiet = x
        .ok(json!({"type": "presence", "room": "chat:quiet"}))
        .await;
    assert_eq!(quiet["connections"], 1, "{quiet}");
    let pushes = x.sync().await;
    assert!(
        pushes.iter().all(|p| p["room"] != "chat:quiet"),
        "a push in a namespace without join and leave: {pushes:?}"
    );
    // The refresh keeps the live node's entry beyond the ttl.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let present = x.ok(json!({"type": "presence", "room": "pres:r"})).await;
    assert_eq!(present["connections"], 1, "{present}");
    drop(y);
}
