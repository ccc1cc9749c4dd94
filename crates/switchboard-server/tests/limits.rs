//! Connection limits over real sockets (docs/protocol.md 7.3, 7.4): connections per user and
//! per IP, new connections per second per IP, handshakes in progress per IP, node capacity and
//! the request-head size limit. Clients come from several loopback addresses (127.0.0.x, the
//! socket bound before it connects) so that each test's IPs are its own.

use std::{net::SocketAddr, time::Duration};

#[path = "support/raw_http.rs"]
mod raw_http;
use raw_http::{Answer, read_answer, tcp};

use switchboard_server::{
    Node,
    auth::{HmacAlgorithm, MintClaims, mint},
    config::Config,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const SECRET: &str = "switchboard-limits-tests-secret-0123456789";
const T: Duration = Duration::from_secs(10);

async fn start(configure: impl FnOnce(&mut Config)) -> SocketAddr {
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    };
    config.auth.secret = Some(SECRET.into());
    configure(&mut config);
    let node = Node::new(config).unwrap();
    let server = node.server().bind().await.unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(server.run(std::future::pending()));
    addr
}

fn token(user: &str) -> String {
    mint(
        SECRET.as_bytes(),
        HmacAlgorithm::HS256,
        &MintClaims {
            sub: user.into(),
            ttl: Some(Duration::from_secs(3600)),
            ..MintClaims::default()
        },
    )
}

/// A WebSocket upgrade of `user` from `127.0.0.<from>`: the answer, and the connection (open
/// when the answer is a 101).
async fn upgrade(addr: SocketAddr, from: u8, user: &str) -> (Answer, TcpStream) {
    let mut s = tcp(addr, from).await;
    let request = format!(
        "GET /ws?token={} HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
         sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n",
        token(user)
    );
    s.write_all(request.as_bytes()).await.unwrap();
    let answer = read_answer(&mut s).await;
    (answer, s)
}

/// Upgrades until one is accepted: the server gives a closed connection's place back when its
/// task has ended, which a client cannot observe otherwise.
async fn upgrade_once_freed(addr: SocketAddr, from: u8, user: &str) -> TcpStream {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let (answer, s) = upgrade(addr, from, user).await;
        if answer.status == 101 {
            return s;
        }
        assert!(tokio::time::Instant::now() < deadline, "never freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn assert_refused(answer: &Answer, status: u16, reason: &str) {
    assert_eq!(answer.status, status, "{}{}", answer.head, answer.body);
    let body = answer.json();
    assert_eq!(body["reason"], reason, "{body}");
    let retry: u64 = answer
        .header("retry-after")
        .unwrap_or_else(|| panic!("no Retry-After in {}", answer.head))
        .parse()
        .unwrap();
    assert!(retry >= 1, "{retry}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_user_and_per_ip_are_capped_with_429() {
    let addr = start(|c| {
        c.limits.connections_per_user = 2;
        c.limits.connections_per_ip = 3;
        c.limits.new_connections_per_second_per_ip = 0;
    })
    .await;
    let (a1, _alice1) = upgrade(addr, 2, "alice").await;
    let (a2, alice2) = upgrade(addr, 2, "alice").await;
    assert_eq!((a1.status, a2.status), (101, 101));
    let (refused, _) = upgrade(addr, 2, "alice").await;
    assert_refused(&refused, 429, "connections_per_user");
    assert_eq!(refused.json()["error"], "too_many_requests");
    // alice's third connection is refused from any IP.
    let (refused, _) = upgrade(addr, 3, "alice").await;
    assert_refused(&refused, 429, "connections_per_user");
    // The third connection from 127.0.0.2 is bob's; the fourth is one too many for the IP.
    let (b, _bob) = upgrade(addr, 2, "bob").await;
    assert_eq!(b.status, 101);
    let (refused, _) = upgrade(addr, 2, "carol").await;
    assert_refused(&refused, 429, "connections_per_ip");
    // Another IP is served.
    let (c, _carol) = upgrade(addr, 3, "carol").await;
    assert_eq!(c.status, 101);
    // A closed connection gives its places back (user and IP).
    drop(alice2);
    let _alice3 = upgrade_once_freed(addr, 2, "alice").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_connections_per_second_per_ip_are_limited_with_429() {
    let addr = start(|c| {
        c.limits.new_connections_per_second_per_ip = 2;
        c.limits.new_connections_burst_per_ip = 4;
    })
    .await;
    let mut open = Vec::new();
    for n in 0..4 {
        let (a, s) = upgrade(addr, 6, &format!("u{n}")).await;
        assert_eq!(a.status, 101, "connection {n}");
        open.push(s);
    }
    let (refused, _) = upgrade(addr, 6, "u4").await;
    assert_refused(&refused, 429, "new_connections_per_ip");
    // Another IP has a bucket of its own.
    let (a, _s) = upgrade(addr, 7, "u4").await;
    assert_eq!(a.status, 101);
}

/// Clients that never finish their request head take up their IP's places and no other's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_flood_from_one_ip_leaves_another_ip_served() {
    const PER_IP: usize = 20;
    let addr = start(|c| {
        c.limits.connections_per_ip = PER_IP;
        c.limits.new_connections_per_second_per_ip = 0;
    })
    .await;
    let mut flood = Vec::new();
    for n in 0..PER_IP {
        let mut s = tcp(addr, 8).await;
        if n % 2 == 0 {
            // One small request answered does not make the connection free.
            s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
                .await
                .unwrap();
            assert_eq!(read_answer(&mut s).await.status, 200);
        }
        s.write_all(b"GET /ws HTTP/1.1\r\nhost: x\r\nx-slow: ")
            .await
            .unwrap();
        flood.push(s);
    }
    // The server counts a handshake when it accepts the connection, in the order they came:
    // the next one from the IP is refused at once, before it sends anything.
    let mut s = tcp(addr, 8).await;
    let refused = read_answer(&mut s).await;
    assert_refused(&refused, 429, "connections_per_ip");
    // Another IP is served.
    let (a, _s) = upgrade(addr, 9, "dave").await;
    assert_eq!(a.status, 101, "{}{}", a.head, a.body);
    // The flood ends: the IP is served again.
    drop(flood);
    let _s = upgrade_once_freed(addr, 8, "erin").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_max_connections_upgrades_get_503() {
    let addr = start(|c| c.limits.max_connections = 2).await;
    let (a, _s1) = upgrade(addr, 10, "u1").await;
    assert_eq!(a.status, 101);
    let (a, _s2) = upgrade(addr, 11, "u2").await;
    assert_eq!(a.status, 101);
    let (refused, _) = upgrade(addr, 12, "u3").await;
    assert_refused(&refused, 503, "capacity");
    assert_eq!(refused.json()["error"], "unavailable");
}

/// A request head past `limits.max_request_head` is refused (431) before it is all read; one
/// within it (a 64 KiB token fits) is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_heads_are_bounded() {
    let addr = start(|_| {}).await;
    let mut s = tcp(addr, 13).await;
    let pad = "a".repeat(70 * 1024);
    s.write_all(format!("GET /healthz HTTP/1.1\r\nhost: x\r\nx-pad: {pad}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    assert_eq!(read_answer(&mut s).await.status, 200);

    let mut s = tcp(addr, 13).await;
    let pad = "a".repeat(100 * 1024);
    // The server may stop reading (and close) before all of it is written.
    let _ = s
        .write_all(format!("GET /healthz HTTP/1.1\r\nhost: x\r\nx-pad: {pad}").as_bytes())
        .await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(T, s.read_to_end(&mut out))
        .await
        .expect("the server ends the connection");
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");

    // The SSE endpoint reads its own heads: its 431 carries the JSON of other refusals.
    let mut s = tcp(addr, 13).await;
    let _ = s
        .write_all(format!("GET /sse?room=chat:x HTTP/1.1\r\nhost: x\r\nx-pad: {pad}").as_bytes())
        .await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(T, s.read_to_end(&mut out))
        .await
        .expect("the server ends the connection");
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default();
    let body: serde_json::Value = serde_json::from_str(body).expect(&out);
    assert_eq!(body["error"], "bad_request", "{out}");
    assert_eq!(body["reason"], "request_head_too_large", "{out}");
}

/// SSE streams count as connections too: of their user, of their IP, of the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_streams_count_against_the_same_limits() {
    let addr = start(|c| {
        c.limits.connections_per_user = 2;
        c.limits.new_connections_per_second_per_ip = 0;
    })
    .await;
    async fn stream(addr: SocketAddr, from: u8, user: &str) -> (Answer, TcpStream) {
        let mut s = tcp(addr, from).await;
        let request = format!(
            "GET /sse?room=chat:x&token={} HTTP/1.1\r\nhost: x\r\naccept: text/event-stream\r\n\r\n",
            token(user)
        );
        s.write_all(request.as_bytes()).await.unwrap();
        (read_answer(&mut s).await, s)
    }
    let (a, _s1) = stream(addr, 14, "frank").await;
    assert_eq!(a.status, 200, "{}{}", a.head, a.body);
    // A WebSocket connection of the same user is the second.
    let (a, _s2) = upgrade(addr, 14, "frank").await;
    assert_eq!(a.status, 101);
    let (refused, _) = stream(addr, 15, "frank").await;
    assert_refused(&refused, 429, "connections_per_user");
}

/// Above `limits.max_memory` new connections (WebSocket and SSE) get 503 `memory` with
/// `Retry-After`, and `/readyz` says not ready; a node within its budget serves as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn above_max_memory_new_connections_get_503_and_readyz_is_not_ready() {
    // The test process holds this much resident (written, so that it is really resident),
    // far above the smallest budget allowed.
    let ballast = vec![1u8; 48 << 20];
    let addr =
        start(|c| c.limits.max_memory = Some(switchboard_server::config::ByteSize(16 << 20))).await;
    let (refused, _) = upgrade(addr, 30, "mo").await;
    assert_refused(&refused, 503, "memory");
    assert_eq!(refused.header("retry-after"), Some("5"));
    let mut s = tcp(addr, 30).await;
    s.write_all(
        format!(
            "GET /sse?room=chat:x&token={} HTTP/1.1\r\nhost: x\r\n\r\n",
            token("mo")
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    assert_refused(&read_answer(&mut s).await, 503, "memory");
    let (ready, _) = raw_http::get(addr, "/readyz", &[]).await;
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(ready.body.contains("max_memory"), "{}", ready.body);

    let roomy =
        start(|c| c.limits.max_memory = Some(switchboard_server::config::ByteSize(1 << 40))).await;
    let (a, _s) = upgrade(roomy, 31, "mo").await;
    assert_eq!(a.status, 101);
    let (ready, _) = raw_http::get(roomy, "/readyz", &[]).await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert!(ballast.iter().all(|b| *b == 1));
}

/// `limits.max_rooms` over a real connection: new rooms evict idle ones, and only when every
/// room is in use (subscribed) is a new one refused with `limit_exceeded`; existing rooms
/// keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_max_rooms_a_new_room_is_refused_only_when_every_room_is_in_use() {
    use switchboard_client::{WsOptions, WsStream};
    use switchboard_protocol::codec::Message;
    let addr = start(|c| {
        c.limits.max_rooms = 3;
        c.personal_rooms = false;
        c.namespaces.insert(
            "chat".into(),
            switchboard_server::config::NamespaceConfig {
                publish: switchboard_server::config::PublishPolicy::Authenticated,
                join_leave: false,
                ..Default::default()
            },
        );
    })
    .await;
    let url = format!("ws://{addr}/ws?token={}", token("rita"));
    let mut ws = WsStream::connect(&url, &WsOptions::default())
        .await
        .unwrap();
    async fn ask(ws: &mut WsStream, command: serde_json::Value) -> serde_json::Value {
        ws.send_text(&command.to_string()).await.unwrap();
        loop {
            let m = tokio::time::timeout(T, ws.recv()).await.unwrap().unwrap();
            let Some(Message::Text(t)) = m else {
                panic!("expected text, got {m:?}")
            };
            let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
            if v["id"] == command["id"] {
                return v;
            }
        }
    }
    // Publications to idle rooms never fail: the oldest idle rooms make way.
    for n in 0..10 {
        let room = format!("chat:idle{n}");
        let r = ask(
            &mut ws,
            serde_json::json!({"type": "publish", "id": n, "room": room, "data": n}),
        )
        .await;
        assert_eq!(r["type"], "reply", "{r}");
    }
    for n in 0..3 {
        let room = format!("chat:busy{n}");
        let r = ask(
            &mut ws,
            serde_json::json!({"type": "subscribe", "id": 100 + n, "room": room}),
        )
        .await;
        assert_eq!(r["type"], "reply", "{r}");
    }
    let r = ask(
        &mut ws,
        serde_json::json!({"type": "subscribe", "id": 200, "room": "chat:one-more"}),
    )
    .await;
    assert_eq!(
        (&r["type"], &r["code"]),
        (&"error".into(), &"limit_exceeded".into()),
        "{r}"
    );
    assert!(
        r["message"].as_str().unwrap().contains("limits.max_rooms"),
        "{r}"
    );
    let r = ask(
        &mut ws,
        serde_json::json!({"type": "publish", "id": 201, "room": "chat:one-more", "data": 1}),
    )
    .await;
    assert_eq!(r["code"], "limit_exceeded", "{r}");
    let r = ask(
        &mut ws,
        serde_json::json!({"type": "publish", "id": 202, "room": "chat:busy0", "data": 1}),
    )
    .await;
    assert_eq!(r["type"], "reply", "{r}");
    // A room given back makes room.
    let r = ask(
        &mut ws,
        serde_json::json!({"type": "unsubscribe", "id": 203, "room": "chat:busy1"}),
    )
    .await;
    assert_eq!(r["type"], "reply", "{r}");
    let r = ask(
        &mut ws,
        serde_json::json!({"type": "subscribe", "id": 204, "room": "chat:one-more"}),
    )
    .await;
    assert_eq!(r["type"], "reply", "{r}");
}

/// The room patterns of the security issue against the budgets, memory measured: publishing
/// once to each of 50,000 new rooms, then 60 KB publications to 8,000 rooms (503 MB before
/// the history budget). With `limits.max_rooms = 5000` and `limits.history_memory = 16 MiB`
/// the process's resident memory grows by far less than either pattern takes unbounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_room_patterns_stay_within_the_room_and_history_budgets() {
    use switchboard_server::{config::ByteSize, limits::resident_bytes, node::Publish};
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    };
    config.auth.secret = Some(SECRET.into());
    config.limits.max_rooms = 5000;
    config.limits.history_memory = ByteSize(16 << 20);
    let node = Node::new(config).unwrap();
    let before = resident_bytes().unwrap();
    for n in 0..50_000 {
        let data = bytes::Bytes::from(format!("{{\"n\":{n}}}"));
        node.publish(
            &format!("r{n}"),
            Publish {
                data,
                ..Publish::default()
            },
        )
        .await
        .unwrap();
    }
    for n in 0..8_000 {
        // A buffer of its own per publication, as publications from clients have.
        let data = bytes::Bytes::from(format!("\"{n:0>60000}\""));
        node.publish(
            &format!("big{n}"),
            Publish {
                data,
                ..Publish::default()
            },
        )
        .await
        .unwrap();
    }
    let grown = resident_bytes().unwrap().saturating_sub(before);
    // Unbounded: 50,000 rooms (about 70 MB) and 8,000 × 60 KB of history (480 MB).
    assert!(
        grown < 128 << 20,
        "resident memory grew by {} MiB",
        grown >> 20
    );
    // The newest rooms kept their history; the oldest were forgotten or lost theirs.
    let newest = node.history("big7999", None, None, false).await.unwrap();
    assert_eq!(newest.publications.len(), 1);
    let oldest = node.history("big0", None, None, false).await.unwrap();
    assert!(oldest.publications.is_empty());
    // The evictions are in the metrics.
    let text = node.metrics().encode();
    let count = |line: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(line))
            .unwrap_or_else(|| panic!("no {line} in {text}"))
            .trim()
            .parse()
            .unwrap()
    };
    assert!(count("switchboard_budget_evictions_total{budget=\"max_rooms\"}") >= 45_000);
    assert!(count("switchboard_budget_evictions_total{budget=\"history_memory\"}") > 0);
    assert_eq!(count("switchboard_rooms_refused_total"), 0);
}
