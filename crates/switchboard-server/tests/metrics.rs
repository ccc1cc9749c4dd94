//! `GET /metrics` over loopback: the counters move by exactly the traffic a test makes, and
//! every metric the Grafana dashboard queries is in a real scrape.

use std::{collections::HashMap, time::Duration};

use switchboard_client::{WsOptions, WsStream};
use switchboard_protocol::{CloseCode, CloseFrame, codec::Message};
use switchboard_server::{
    Node,
    auth::{HmacAlgorithm, MintClaims, mint},
    config::{Config, NamespaceConfig},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "switchboard-metrics-tests-secret-0123456789";
const T: Duration = Duration::from_secs(10);

async fn start() -> (Node, std::net::SocketAddr) {
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        personal_rooms: false,
        ..Config::default()
    };
    config.auth.secret = Some(SECRET.into());
    // No join/leave pushes: deliveries are the publications only.
    let chat = NamespaceConfig {
        join_leave: false,
        ..NamespaceConfig::default()
    };
    config.namespaces.insert("chat".into(), chat);
    let node = Node::new(config).unwrap();
    let server = node.server().bind().await.unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(server.run(std::future::pending()));
    (node, addr)
}

/// The body of `GET /metrics`, over a connection of its own.
async fn scrape_text(addr: std::net::SocketAddr) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(T, s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("application/openmetrics-text"), "{head}");
    body.to_string()
}

/// Samples by their name and labels as written, e.g. `switchboard_closes_total{...}`.
async fn scrape(addr: std::net::SocketAddr) -> HashMap<String, f64> {
    scrape_text(addr)
        .await
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect()
}

fn token(user: &str, secret: &str) -> String {
    mint(
        secret.as_bytes(),
        HmacAlgorithm::HS256,
        &MintClaims {
            sub: user.into(),
            ttl: Some(Duration::from_secs(3600)),
            ..MintClaims::default()
        },
    )
}

async fn json(ws: &mut WsStream) -> serde_json::Value {
    match tokio::time::timeout(T, ws.recv()).await.unwrap().unwrap() {
        Some(Message::Text(t)) => serde_json::from_str(t.as_str()).unwrap(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

async fn connect(addr: std::net::SocketAddr, user: &str) -> WsStream {
    let url = format!("ws://{addr}/ws?token={}", token(user, SECRET));
    let mut ws = WsStream::connect(&url, &WsOptions::default())
        .await
        .unwrap();
    assert_eq!(json(&mut ws).await["type"], "welcome");
    ws
}

fn moved(before: &HashMap<String, f64>, after: &HashMap<String, f64>, key: &str) -> f64 {
    let a = after.get(key).unwrap_or_else(|| panic!("no sample {key}"));
    a - before.get(key).copied().unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_by_exactly_the_traffic() {
    const N: usize = 4; // connections
    const K: usize = 3; // subscribers of the room
    const M: usize = 5; // publications
    let (_node, addr) = start().await;
    let before = scrape(addr).await;

    let mut clients = Vec::new();
    for i in 0..N {
        clients.push(connect(addr, &format!("u{i}")).await);
    }
    for (i, ws) in clients.iter_mut().take(K).enumerate() {
        let sub = format!(r#"{{"type":"subscribe","id":{i},"room":"chat:lobby"}}"#);
        ws.send_text(&sub).await.unwrap();
        assert_eq!(json(ws).await["type"], "reply");
    }
    // The first subscriber publishes (a publisher must be subscribed): it gets its own
    // publications too, interleaved with the replies.
    let mut pushes = vec![0; K];
    for n in 0..M {
        let publish = format!(r#"{{"type":"publish","id":{n},"room":"chat:lobby","data":{n}}}"#);
        clients[0].send_text(&publish).await.unwrap();
        loop {
            let got = json(&mut clients[0]).await;
            match got["type"].as_str() {
                Some("reply") => break,
                Some("message") => pushes[0] += 1,
                _ => panic!("{got}"),
            }
        }
    }
    for (ws, got) in clients.iter_mut().zip(&mut pushes) {
        while *got < M {
            assert_eq!(json(ws).await["type"], "message");
            *got += 1;
        }
    }
    // A token signed with another secret: refused at the handshake.
    let url = format!(
        "ws://{addr}/ws?token={}",
        token("x", "another-secret-0123456789-abcdef")
    );
    let refused = WsStream::connect(&url, &WsOptions::default()).await;
    assert!(refused.is_err());
    // Close two connections normally, and wait for the server to end them (TCP EOF comes
    // after the server counted the close).
    for mut ws in clients.drain(..2) {
        ws.close(Some(&CloseFrame::new(CloseCode(1000), "bye")))
            .await
            .unwrap();
        while let Ok(Some(_)) = tokio::time::timeout(T, ws.recv()).await.unwrap() {}
    }

    let after = scrape(addr).await;
    let ws = r#"{transport="websocket"}"#;
    let m = |key: &str| moved(&before, &after, key);
    assert_eq!(m(&format!("switchboard_connections{ws}")), (N - 2) as f64);
    assert_eq!(
        m(&format!("switchboard_connections_accepted_total{ws}")),
        N as f64
    );
    assert_eq!(
        m(r#"switchboard_closes_total{transport="websocket",code="1000"}"#),
        2.0
    );
    assert_eq!(
        m(r#"switchboard_connections_refused_total{transport="websocket",reason="unauthorized"}"#),
        1.0
    );
    assert_eq!(
        m(r#"switchboard_auth_failures_total{reason="bad_signature"}"#),
        1.0
    );
    // K subscribes and M publishes; close frames are not data messages.
    assert_eq!(
        m(&format!("switchboard_messages_in_total{ws}")),
        (K + M) as f64
    );
    assert_eq!(
        m(r#"switchboard_publications_total{namespace="chat"}"#),
        M as f64
    );
    assert_eq!(m("switchboard_deliveries_total"), (K * M) as f64);
    assert_eq!(
        m(r#"switchboard_broker_operations_total{operation="publish"}"#),
        M as f64
    );
    // Out: N welcomes, K subscribe replies, M publish replies, K*M pushes, 2 close frames
    // (and any pings of the sweeper: at least these).
    let out = m(&format!("switchboard_messages_out_total{ws}"));
    assert!(out >= (N + K + M + K * M + 2) as f64, "{out}");
    assert!(m(&format!("switchboard_bytes_in_total{ws}")) > 0.0);
    assert!(m(&format!("switchboard_bytes_out_total{ws}")) > 0.0);
}

/// An SSE stream's events, bytes and connection are counted under `transport="sse"`, and
/// publications delivered to it and to a WebSocket member are sampled for the
/// publish-to-write latency.
#[tokio::test]
async fn sse_traffic_and_publish_to_write_are_counted() {
    const M: usize = 5;
    let (_node, addr) = start().await;
    let before = scrape(addr).await;
    let mut ws = connect(addr, "writer").await;
    ws.send_text(r#"{"type":"subscribe","id":0,"room":"chat:feed"}"#)
        .await
        .unwrap();
    assert_eq!(json(&mut ws).await["type"], "reply");

    let mut sse = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "GET /sse?room=chat:feed HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\n\r\n",
        token("reader", SECRET)
    );
    sse.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut read_until = async |got: &mut Vec<u8>, what: &str, n: usize| {
        while String::from_utf8_lossy(got).matches(what).count() < n {
            let mut buf = [0u8; 4096];
            let k = tokio::time::timeout(T, sse.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(k > 0, "the stream ended: {}", String::from_utf8_lossy(got));
            got.extend_from_slice(&buf[..k]);
        }
    };
    read_until(&mut got, "event: welcome", 1).await;

    for n in 0..M {
        let publish = format!(r#"{{"type":"publish","id":{n},"room":"chat:feed","data":{n}}}"#);
        ws.send_text(&publish).await.unwrap();
    }
    let mut seen = 0;
    while seen < 2 * M {
        // M replies and M pushes, in any order.
        let t = json(&mut ws).await["type"].clone();
        assert!(t == "reply" || t == "message", "{t}");
        seen += 1;
    }
    read_until(&mut got, r#""type":"message""#, M).await;

    let after = scrape(addr).await;
    let sse_label = r#"{transport="sse"}"#;
    let m = |key: &str| moved(&before, &after, key);
    assert_eq!(m(&format!("switchboard_connections{sse_label}")), 1.0);
    assert_eq!(
        m(&format!(
            "switchboard_connections_accepted_total{sse_label}"
        )),
        1.0
    );
    // The welcome (with the retry line) and the M events, however they were batched.
    let events = m(&format!("switchboard_messages_out_total{sse_label}"));
    assert!((2.0..=(M + 1) as f64).contains(&events), "{events}");
    assert!(m(&format!("switchboard_bytes_out_total{sse_label}")) >= got.len() as f64 / 2.0);
    // Sampled, at most one per publication; the first publication is always sampled.
    let samples = m("switchboard_publish_to_write_seconds_count");
    assert!((1.0..=M as f64).contains(&samples), "{samples}");
}

/// The metric names in the dashboard's queries: `switchboard_` and the word after it.
fn dashboard_metrics(dashboard: &serde_json::Value) -> Vec<String> {
    let mut exprs = Vec::new();
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(o) => {
                for (k, v) in o {
                    match (k.as_str(), v) {
                        ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(dashboard, &mut exprs);
    assert!(!exprs.is_empty(), "the dashboard has no queries");
    let mut names = Vec::new();
    for e in exprs {
        let mut rest = e.as_str();
        while let Some(i) = rest.find("switchboard_") {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            names.push(tail[..end].to_string());
            rest = &tail[end..];
        }
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_of_the_grafana_dashboard_is_exported() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/grafana/switchboard.json"
    );
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(dashboard["title"].is_string(), "a dashboard has a title");
    let panels = dashboard["panels"]
        .as_array()
        .expect("a dashboard has panels");
    assert!(!panels.is_empty());
    for p in panels {
        assert!(p["type"].is_string() && p["title"].is_string(), "{p}");
        assert!(p["gridPos"].is_object(), "{p}");
    }

    let (node, addr) = start().await;
    // Families without samples until counted: the API's calls (the API counts them).
    node.metrics()
        .api_call("publish", 200, Some(Duration::from_millis(1)));
    let text = scrape_text(addr).await;
    let exported: std::collections::HashSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let names = dashboard_metrics(&dashboard);
    assert!(!names.is_empty());
    for name in names {
        assert!(
            exported.contains(name.as_str()),
            "the dashboard queries {name}, which /metrics does not export"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pongs_to_the_servers_pings_measure_the_round_trip() {
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    };
    config.auth.anonymous = true;
    config.websocket.ping_interval = Duration::from_millis(20);
    let node = Node::new(config).unwrap();
    let server = node.server().bind().await.unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(server.run(std::future::pending()));
    let key = "switchboard_ping_rtt_seconds_count";
    let before = scrape(addr).await.get(key).copied().unwrap();

    let mut ws = WsStream::connect(&format!("ws://{addr}/ws"), &WsOptions::default())
        .await
        .unwrap();
    let payload = loop {
        match tokio::time::timeout(T, ws.recv_any())
            .await
            .unwrap()
            .unwrap()
        {
            Some(Message::Ping(p)) => break p,
            Some(_) => {}
            None => panic!("closed"),
        }
    };
    ws.send(switchboard_protocol::frame::OpCode::Pong, &payload)
        .await
        .unwrap();
    // A pong of the client's own measures nothing.
    ws.send(switchboard_protocol::frame::OpCode::Pong, b"mine")
        .await
        .unwrap();
    // Input is handled in order: once the answer is here, both pongs were.
    ws.send_text(r#"{"type":"ping","id":1}"#).await.unwrap();
    loop {
        match tokio::time::timeout(T, ws.recv_any())
            .await
            .unwrap()
            .unwrap()
        {
            Some(Message::Text(t)) if t.as_str().contains("\"pong\"") => break,
            Some(_) => {}
            None => panic!("closed"),
        }
    }
    let text = scrape_text(addr).await;
    let after: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key} ")))
        .unwrap_or_else(|| panic!("no {key} in {text}"))
        .parse()
        .unwrap();
    assert_eq!(after - before, 1.0, "{text}");
}
