//! The server API (`/api`) over loopback: every call, every error status, and what the
//! WebSocket clients see of it (publications without `from`, `subscribed` pushes, 4003/4503).

use std::{net::SocketAddr, time::Duration};

use serde_json::{Value, json};
use switchboard_client::{WsOptions, WsStream};
use switchboard_protocol::codec::Message;
use switchboard_server::{
    Node,
    auth::{HmacAlgorithm, MintClaims, mint},
    config::{ApiKeyConfig, ByteSize, Config},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "switchboard-api-tests-secret-0123456789";
const KEY: &str = "api-tests-key-0123456789";
const T: Duration = Duration::from_secs(10);

async fn start(keys: bool) -> SocketAddr {
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        personal_rooms: false,
        ..Config::default()
    };
    config.auth.secret = Some(SECRET.into());
    config.api.max_body_size = ByteSize(4096);
    if keys {
        config.api.keys.push(ApiKeyConfig {
            name: "tests".into(),
            key: KEY.into(),
        });
    }
    let node = Node::new(config).unwrap();
    let server = node.server().bind().await.unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(server.run(std::future::pending()));
    addr
}

struct Answer {
    status: u16,
    head: String,
    body: Value,
}

/// One HTTP/1.1 request on a fresh connection, written by hand.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &str,
) -> Answer {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(T, s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    Answer {
        status: head[9..12].parse().unwrap(),
        head: head.to_ascii_lowercase(),
        body: serde_json::from_str(body).unwrap_or(Value::Null),
    }
}

async fn call(addr: SocketAddr, path: &str, body: Value) -> Answer {
    let key = format!("Authorization: apikey {KEY}");
    request(
        addr,
        "POST",
        path,
        &[&key, "Content-Type: application/json"],
        &body.to_string(),
    )
    .await
}

async fn get(addr: SocketAddr, path: &str) -> Answer {
    request(addr, "GET", path, &[&format!("X-API-Key: {KEY}")], "").await
}

async fn connect(addr: SocketAddr, user: &str) -> WsStream {
    let token = mint(
        SECRET.as_bytes(),
        HmacAlgorithm::HS256,
        &MintClaims {
            sub: user.into(),
            ttl: Some(Duration::from_secs(3600)),
            ..MintClaims::default()
        },
    );
    let mut ws = WsStream::connect(
        &format!("ws://{addr}/ws?token={token}"),
        &WsOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(json_msg(&mut ws).await["type"], "welcome");
    ws
}

async fn json_msg(ws: &mut WsStream) -> Value {
    match tokio::time::timeout(T, ws.recv()).await.unwrap().unwrap() {
        Some(Message::Text(t)) => serde_json::from_str(t.as_str()).unwrap(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

async fn close_code(ws: &mut WsStream) -> u16 {
    loop {
        match tokio::time::timeout(T, ws.recv()).await.unwrap().unwrap() {
            Some(Message::Close(Some(frame))) => return frame.code.0,
            Some(Message::Text(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_reaches_subscribers_without_from_and_retries_are_idempotent() {
    let addr = start(true).await;
    let mut ws = connect(addr, "alice").await;
    ws.send_text(r#"{"type":"subscribe","id":1,"room":"chat"}"#)
        .await
        .unwrap();
    assert_eq!(json_msg(&mut ws).await["id"], 1);

    let body = json!({"room": "chat", "data": {"n": 1}, "idempotency_key": "k1"});
    let first = call(addr, "/api/publish", body.clone()).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.body["room"], "chat");
    assert_eq!(first.body["offset"], 1);
    let push = json_msg(&mut ws).await;
    assert_eq!(push["type"], "message", "{push}");
    assert_eq!(push["data"]["n"], 1);
    assert!(push.get("from").is_none(), "{push}");

    let retry = call(addr, "/api/publish", body).await;
    assert_eq!(retry.body, first.body);
    let second = call(addr, "/api/publish", json!({"room": "chat", "data": "two"})).await;
    assert_eq!(second.body["offset"], 2);
    assert_eq!(
        json_msg(&mut ws).await["data"],
        "two",
        "the retry published nothing"
    );

    let h = call(addr, "/api/history", json!({"room": "chat"})).await;
    assert_eq!(h.status, 200, "{}", h.body);
    assert_eq!(h.body["offset"], 2);
    assert_eq!(h.body["publications"].as_array().unwrap().len(), 2);
    let epoch = h.body["epoch"].as_str().unwrap().to_owned();
    let h = call(
        addr,
        "/api/history",
        json!({"room": "chat", "since": {"epoch": epoch, "offset": 1}, "reverse": true}),
    )
    .await;
    assert_eq!(h.body["publications"][0]["data"], "two");

    let b = call(
        addr,
        "/api/broadcast",
        json!({"rooms": ["chat", "other", "bad room"], "data": 3}),
    )
    .await;
    assert_eq!(b.status, 200, "{}", b.body);
    assert_eq!(b.body["results"][0]["offset"], 3);
    assert_eq!(b.body["results"][1]["offset"], 1);
    assert_eq!(b.body["results"][2]["error"]["code"], "bad_room");

    let p = call(addr, "/api/presence", json!({"room": "chat"})).await;
    assert_eq!(p.body["connections"], 1, "{}", p.body);
    assert_eq!(p.body["members"][0]["user"], "alice");

    let r = get(addr, "/api/rooms?prefix=ch").await;
    assert_eq!(
        r.body,
        json!({"rooms": [{"room": "chat", "subscribers": 1}]})
    );
    let i = get(addr, "/api/info").await;
    assert_eq!(i.body["nodes"][0]["connections"], 1, "{}", i.body);
    assert_eq!(i.body["nodes"][0]["subscriptions"], 1);

    let removed = call(addr, "/api/history/remove", json!({"room": "chat"})).await;
    assert_eq!((removed.status, removed.body), (200, json!({})));
    let h = call(addr, "/api/history", json!({"room": "chat"})).await;
    assert_ne!(h.body["epoch"], epoch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_calls_subscribe_unsubscribe_and_disconnect() {
    let addr = start(true).await;
    let mut a = connect(addr, "alice").await;
    let mut b = connect(addr, "bob").await;
    let s = call(
        addr,
        "/api/subscribe",
        json!({"user": "alice", "room": "news"}),
    )
    .await;
    assert_eq!(s.body, json!({"connections": 1}));
    let push = json_msg(&mut a).await;
    assert_eq!(
        (push["type"].as_str(), push["room"].as_str()),
        (Some("subscribed"), Some("news"))
    );
    let u = call(
        addr,
        "/api/unsubscribe",
        json!({"user": "alice", "room": "news"}),
    )
    .await;
    assert_eq!(u.body, json!({"connections": 1}));
    assert_eq!(json_msg(&mut a).await["type"], "unsubscribed");

    let d = call(addr, "/api/disconnect", json!({"user": "alice"})).await;
    assert_eq!(d.body, json!({"connections": 1}));
    assert_eq!(close_code(&mut a).await, 4003);
    let d = call(
        addr,
        "/api/disconnect",
        json!({"user": "bob", "reconnect": true}),
    )
    .await;
    assert_eq!(d.status, 200);
    assert_eq!(close_code(&mut b).await, 4503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_has_its_status_and_a_json_error() {
    let addr = start(true).await;
    let publish = r#"{"room":"chat","data":1}"#;
    let json_ct = "Content-Type: application/json";
    let key = format!("X-API-Key: {KEY}");

    let missing = request(addr, "POST", "/api/publish", &[json_ct], publish).await;
    assert_eq!(
        (missing.status, missing.body["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let bad = request(
        addr,
        "POST",
        "/api/publish",
        &[json_ct, "X-API-Key: not-the-key-at-all"],
        publish,
    )
    .await;
    assert_eq!(bad.status, 401);

    let bad_field = call(addr, "/api/publish", json!({"room": 5, "data": 1})).await;
    assert_eq!(bad_field.status, 400);
    assert!(
        bad_field.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("'room'"),
        "{}",
        bad_field.body
    );
    let unknown = call(
        addr,
        "/api/publish",
        json!({"room": "a", "data": 1, "extra": 1}),
    )
    .await;
    assert_eq!(unknown.status, 400);
    assert!(
        unknown.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("extra")
    );
    let bad_room = call(
        addr,
        "/api/publish",
        json!({"room": "no spaces", "data": 1}),
    )
    .await;
    assert_eq!(
        (bad_room.status, bad_room.body["error"]["code"].as_str()),
        (400, Some("bad_room"))
    );
    let not_json = request(addr, "POST", "/api/publish", &[&key, json_ct], "{").await;
    assert_eq!(not_json.status, 400);

    let not_found = get(addr, "/api/nothing").await;
    assert_eq!(not_found.status, 404);
    assert!(not_found.body["error"]["message"].is_string());
    let wrong_method = get(addr, "/api/publish").await;
    assert_eq!(wrong_method.status, 405);
    assert!(
        wrong_method.head.contains("\r\nallow: post"),
        "{}",
        wrong_method.head
    );
    assert!(wrong_method.body["error"]["code"].is_string());

    let big = format!(r#"{{"room":"chat","data":"{}"}}"#, "x".repeat(5000));
    let too_big = request(addr, "POST", "/api/publish", &[&key, json_ct], &big).await;
    assert_eq!(
        (too_big.status, too_big.body["error"]["code"].as_str()),
        (413, Some("limit_exceeded"))
    );
    let text = request(
        addr,
        "POST",
        "/api/publish",
        &[&key, "Content-Type: text/plain"],
        publish,
    )
    .await;
    assert_eq!(text.status, 415);

    // The document needs no key and lists the calls.
    let doc = request(addr, "GET", "/api/openapi.json", &[], "").await;
    assert_eq!(doc.status, 200);
    assert!(doc.body["paths"]["/api/publish"]["post"].is_object());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_keys_the_api_says_none_are_configured() {
    let addr = start(false).await;
    let a = call(addr, "/api/publish", json!({"room": "chat", "data": 1})).await;
    assert_eq!(a.status, 401);
    assert!(
        a.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no API keys are configured")
    );
}

/// `data` that a client of ours could not parse (a lone surrogate escape, a number a double
/// cannot hold) is refused with 400 naming `data`, by `publish` and by `broadcast`.
#[tokio::test]
async fn data_clients_cannot_parse_is_refused_naming_data() {
    let addr = start(true).await;
    let key = format!("X-API-Key: {KEY}");
    let json_ct = "Content-Type: application/json";
    // Longer than any number a client needs (this server's bodies are small).
    let long = "9".repeat(600);
    for data in [r#""\ud800""#, "1e999999", long.as_str()] {
        for (path, body) in [
            (
                "/api/publish",
                format!(r#"{{"room":"chat","data":{data}}}"#),
            ),
            (
                "/api/broadcast",
                format!(r#"{{"rooms":["chat"],"data":{data}}}"#),
            ),
        ] {
            let a = request(addr, "POST", path, &[&key, json_ct], &body).await;
            assert_eq!(
                a.status,
                400,
                "{path} {}: {}",
                &data[..data.len().min(20)],
                a.body
            );
            let message = a.body["error"]["message"].as_str().unwrap();
            assert!(message.contains("'data'"), "{message}");
        }
    }
    let ok = call(
        addr,
        "/api/publish",
        json!({"room": "chat", "data": "\u{e9}"}),
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
}
