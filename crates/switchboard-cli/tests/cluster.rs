//! Several `switchboard serve` processes on one Redis (`SWITCHBOARD_BROKER__KIND=redis`)
//! behave as one server: the same offsets on every node, three nodes' clients agreeing on one
//! order, on presence, joins and leaves, recovery on another node, Redis
//! going away and coming back without a lost publication (or, when Redis itself lost one,
//! the stream forking so that nothing is skipped), and the presence of a killed node
//! expiring with `leave` events. Each test starts its own `redis-server` on a free port.

mod common;
mod protocol_common;

use std::time::{Duration, Instant};

use protocol_common::{Client, SECRET, T, TestServer};
use serde_json::{Value, json};

#[path = "../../switchboard-server/tests/support/redis_server.rs"]
mod redis_server;

use redis_server::RedisServer;

/// One node: a `switchboard serve` on the test's Redis.
type Node = TestServer;

fn node(redis: &RedisServer, env: &[(&str, &str)]) -> Node {
    let config = format!(
        "personal_rooms = false\n\
         [auth]\nsecret = \"{SECRET}\"\n\
         [namespaces.chat]\nsubscribe = \"anyone\"\njoin_leave = false\n\
         [namespaces.pres]\nsubscribe = \"anyone\"\n"
    );
    let url = redis.url();
    let mut vars = vec![
        ("SWITCHBOARD_BROKER__KIND", "redis"),
        ("SWITCHBOARD_BROKER__URL", url.as_str()),
    ];
    vars.extend_from_slice(env);
    TestServer::start_with_env(&config, &vars)
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
    let (n1, n2) = (node(&redis, &[]), node(&redis, &[]));
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
    let reply = b.subscribe_since("chat:r", &epoch, 10).await;
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
    let keys = format!("[{{name = \"test\", key = \"{API_KEY}\"}}]");
    let env = [
        ("SWITCHBOARD_BROKER__TIMEOUT", "500ms"),
        ("SWITCHBOARD_API__KEYS", keys.as_str()),
    ];
    let (n1, n2) = (node(&redis, &env), node(&redis, &env));
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
    // The server API says so too: 503 `unavailable` with Retry-After, nothing published.
    let body = r#"{"room": "chat:r", "data": {"n": 0}}"#;
    let (status, text) = common::http(
        n2.process.addr,
        &format!(
            "POST /api/publish HTTP/1.1\r\nHost: x\r\nX-API-Key: {API_KEY}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    );
    assert_eq!(status, 503, "{text}");
    assert!(text.to_ascii_lowercase().contains("retry-after:"), "{text}");
    assert!(text.contains(r#""code":"unavailable""#), "{text}");

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
    // Nothing was lost: the stream goes on (in a new epoch, as after any Redis takeover)
    // with no `recovered: false` anywhere.
    for client in [&mut a, &mut b] {
        let rest = client.sync().await;
        assert!(
            !rest
                .iter()
                .any(|m| m["type"] == "subscribed" && m["recovered"] == false),
            "a reset after a lossless restart: {rest:?}"
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

/// A Redis that comes back without its last publication (restarted from an older
/// snapshot, like a promoted replica the last writes had not reached) must not give that
/// publication's offset to another one unnoticed: the subscriber that had the lost one is
/// told `recovered: false`, and the stream goes on in a new epoch, in which a `since` up to
/// what Redis kept still recovers exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_lost_a_publication_forks_the_stream_never_reusing_its_offset() {
    let mut redis = RedisServer::start();
    let n1 = node(&redis, &[("SWITCHBOARD_BROKER__TIMEOUT", "500ms")]);
    let mut publisher = n1.connect("pat").await;
    publisher.subscribe("chat:r").await;
    let mut a = n1.connect("alice").await;
    let epoch = a.subscribe("chat:r").await["epoch"].clone();
    for n in 1..=2 {
        publish(&mut publisher, "chat:r", n).await;
    }
    assert_eq!(redis.cli(&["SAVE"]).as_deref(), Some("OK"));
    publish(&mut publisher, "chat:r", 3).await;
    for n in 1..=3 {
        assert_eq!(message(&mut a, "chat:r").await, (n, n));
    }

    // SIGKILL and a start from the snapshot: publication 3 is gone from Redis.
    redis.restart();
    let deadline = Instant::now() + T;
    let result = loop {
        let answer = publisher
            .request(json!({"type": "publish", "room": "chat:r", "data": {"n": 4}}))
            .await;
        if answer["type"] == "reply" {
            break answer["result"].clone();
        }
        assert_eq!(answer["code"], "unavailable", "{answer}");
        assert!(Instant::now() < deadline, "redis did not come back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(result["offset"], 3, "{result}");
    assert_ne!(
        result["epoch"], epoch,
        "offset 3 given again in the same epoch"
    );

    // Alice had the lost 3: told so, in the new epoch, never silently skipping it. Where
    // the stream goes on after the notice depends on whether the node saw the new 3 live
    // or found it in history when it reconnected; either way nothing after it is missed.
    let reset = a
        .expect("recovered: false", |m| {
            m["type"] == "subscribed" && m["room"] == "chat:r" && m["recovered"] == false
        })
        .await;
    assert_eq!(reset["epoch"], result["epoch"], "{reset}");
    let continues = reset["offset"].as_u64().unwrap();
    assert!(continues <= 3, "{reset}");
    publish(&mut publisher, "chat:r", 5).await;
    for (offset, n) in [(3, 4), (4, 5)] {
        if offset > continues {
            let next = a.push("message", "chat:r").await;
            assert_eq!(
                (&next["offset"], &next["data"]["n"]),
                (&json!(offset), &json!(n))
            );
            assert_eq!(next["epoch"], result["epoch"]);
        }
    }

    // Recovery: from 2 (kept by Redis) exactly the new 3; from the lost 3, nothing.
    let mut b = n1.connect("bob").await;
    let reply = b.subscribe_since("chat:r", &epoch, 2).await;
    assert_eq!(reply["recovered"], true, "{reply}");
    assert_eq!(reply["epoch"], result["epoch"], "{reply}");
    let recovered: Vec<(u64, u64)> = reply["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["offset"].as_u64().unwrap(),
                p["data"]["n"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(recovered, [(3, 4), (4, 5)]);
    let mut c = n1.connect("carol").await;
    let reply = c.subscribe_since("chat:r", &epoch, 3).await;
    assert_eq!(reply["recovered"], false, "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_presence_expires_with_leave_events() {
    let redis = RedisServer::start();
    let env = [
        ("SWITCHBOARD_BROKER__PRESENCE_TTL", "1s"),
        ("SWITCHBOARD_BROKER__SWEEP_INTERVAL", "200ms"),
    ];
    let (mut n1, n2) = (node(&redis, &env), node(&redis, &env));
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

const API_KEY: &str = "cluster-test-key-0123456789";

/// `GET path` on `node`'s server API: the JSON body.
fn api_get(node: &Node, path: &str) -> Value {
    let (status, text) = common::http(
        node.process.addr,
        &format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nX-API-Key: {API_KEY}\r\nConnection: close\r\n\r\n"
        ),
    );
    assert_eq!(status, 200, "{path}: {text}");
    serde_json::from_str(&text[text.find("\r\n\r\n").unwrap() + 4..]).unwrap()
}

/// Asks `path` until `check` accepts the answer: another node's report arrives within a
/// third of `presence_ttl`, and nothing announces it.
fn api_until(node: &Node, path: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = api_get(node, path);
        if check(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{path} never as expected: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn room_list(v: &Value) -> Vec<(String, u64)> {
    v["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["room"].as_str().unwrap().to_owned(),
                r["subscribers"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_info_and_rooms_list_every_live_node_and_room() {
    let redis = RedisServer::start();
    let keys = format!("[{{name = \"test\", key = \"{API_KEY}\"}}]");
    let env = [
        ("SWITCHBOARD_BROKER__PRESENCE_TTL", "1500ms"),
        ("SWITCHBOARD_API__KEYS", keys.as_str()),
    ];
    let (n1, mut n2) = (node(&redis, &env), node(&redis, &env));
    let mut a = n1.connect("alice").await;
    a.subscribe("chat:one").await;
    a.subscribe("chat:both").await;
    let mut b = n2.connect("bob").await;
    b.subscribe("chat:both").await;
    b.subscribe("chat:two").await;
    let mut b2 = n2.connect("bob").await;
    b2.subscribe("chat:two").await;

    let want = |v: &Value| {
        room_list(v)
            == [
                ("chat:both".to_owned(), 2),
                ("chat:one".to_owned(), 1),
                ("chat:two".to_owned(), 2),
            ]
    };
    // Both nodes answer for the whole deployment.
    api_until(&n1, "/api/rooms", want);
    api_until(&n2, "/api/rooms", want);
    let two = api_get(&n1, "/api/rooms?prefix=chat:t");
    assert_eq!(room_list(&two), [("chat:two".to_owned(), 2)], "{two}");

    let info = api_until(&n1, "/api/info", |v| {
        v["nodes"].as_array().unwrap().len() == 2
            && v["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .all(|n| n["rooms"] == 2)
    });
    let nodes = info["nodes"].as_array().unwrap();
    assert_ne!(nodes[0]["id"], nodes[1]["id"], "{info}");
    let mut figures: Vec<(u64, u64, u64)> = nodes
        .iter()
        .map(|n| {
            (
                n["connections"].as_u64().unwrap(),
                n["users"].as_u64().unwrap(),
                n["subscriptions"].as_u64().unwrap(),
            )
        })
        .collect();
    figures.sort_unstable();
    assert_eq!(figures, [(1, 1, 2), (2, 1, 3)], "{info}");

    // A node killed: its report expires with its presence ttl, and its rooms go with it.
    n2.process.child.kill().unwrap();
    n2.process.child.wait().unwrap();
    drop((b, b2));
    let info = api_until(&n1, "/api/info", |v| {
        v["nodes"].as_array().unwrap().len() == 1
    });
    assert_eq!(info["nodes"][0]["connections"], 1, "{info}");
    let rooms = api_get(&n1, "/api/rooms");
    assert_eq!(
        room_list(&rooms),
        [("chat:both".to_owned(), 1), ("chat:one".to_owned(), 1)],
        "{rooms}"
    );
}

/// The `connection` of every member in a `presence` reply, sorted.
fn member_ids(present: &Value) -> Vec<String> {
    let mut ids: Vec<String> = present["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["connection"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_agree_on_order_presence_joins_and_leaves() {
    let redis = RedisServer::start();
    let nodes = [node(&redis, &[]), node(&redis, &[]), node(&redis, &[])];
    // Two subscribers on each node, one after another: each sees the joins of those after it.
    let mut subs = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        for j in 0..2 {
            let mut c = node.connect(&format!("user{i}{j}")).await;
            c.subscribe("pres:all").await;
            subs.push(c);
        }
    }
    let ids: Vec<String> = subs.iter().map(Client::id).collect();
    for (k, c) in subs.iter_mut().enumerate() {
        let mut joined = Vec::new();
        for _ in k + 1..ids.len() {
            let join = c.push("join", "pres:all").await;
            joined.push(join["member"]["connection"].as_str().unwrap().to_string());
        }
        assert_eq!(joined, ids[k + 1..], "joins seen by subscriber {k}");
    }
    // Every node lists the same members.
    let mut expected = ids.clone();
    expected.sort();
    for (k, c) in subs.iter_mut().enumerate() {
        let present = c.ok(json!({"type": "presence", "room": "pres:all"})).await;
        assert_eq!(
            member_ids(&present),
            expected,
            "presence on subscriber {k}'s node"
        );
    }

    // A publisher on each node (publishing needs a subscription), all at once: one order,
    // seen by everyone.
    const EACH: u64 = 30;
    let mut sends = tokio::task::JoinSet::new();
    for (p, node) in nodes.iter().enumerate() {
        let mut client = node.connect(&format!("pub{p}")).await;
        client.subscribe("pres:all").await;
        expected.push(client.id());
        sends.spawn(async move {
            for n in 1..=EACH {
                client.publish("pres:all", json!({ "p": p, "n": n })).await;
            }
            client
        });
    }
    let _publishers = sends.join_all().await;
    let mut orders = Vec::new();
    for c in &mut subs {
        let mut order = Vec::new();
        for _ in 0..3 * EACH {
            let m = c.push("message", "pres:all").await;
            order.push((
                m["offset"].as_u64().unwrap(),
                m["data"]["p"].as_u64().unwrap(),
                m["data"]["n"].as_u64().unwrap(),
            ));
        }
        let rest = c.sync().await;
        assert!(
            rest.iter().all(|m| m["type"] != "message"),
            "a duplicate: {rest:?}"
        );
        orders.push(order);
    }
    let first = &orders[0];
    let offsets: Vec<u64> = first.iter().map(|(o, _, _)| *o).collect();
    assert_eq!(
        offsets,
        (1..=3 * EACH).collect::<Vec<_>>(),
        "gap-free offsets"
    );
    for p in 0..3 {
        let ns: Vec<u64> = first
            .iter()
            .filter(|(_, q, _)| *q == p)
            .map(|(_, _, n)| *n)
            .collect();
        assert_eq!(
            ns,
            (1..=EACH).collect::<Vec<_>>(),
            "publisher {p} in its order"
        );
    }
    for (k, order) in orders.iter().enumerate() {
        assert_eq!(order, first, "subscriber {k} saw another order");
    }

    // One leaves: everyone else sees its leave, and every node lists the rest.
    let gone = subs.remove(0);
    drop(gone);
    expected.retain(|id| *id != ids[0]);
    expected.sort();
    for (k, c) in subs.iter_mut().enumerate() {
        let leave = c.push("leave", "pres:all").await;
        assert_eq!(
            leave["member"]["connection"],
            ids[0].as_str(),
            "leave seen by {k}"
        );
        let present = c.ok(json!({"type": "presence", "room": "pres:all"})).await;
        assert_eq!(member_ids(&present), expected, "presence after the leave");
    }
}
