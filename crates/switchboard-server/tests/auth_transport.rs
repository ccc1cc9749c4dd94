//! Authentication and transport controls over real sockets (docs/protocol.md 2.2, 7.2, 7.3,
//! docs/security.md): first-message authentication and its 4001 closes, the origin
//! allow-list, trusted proxies' `X-Forwarded-For`, the HTTP/1.0 upgrade refusal.

#[path = "support/raw_http.rs"]
mod raw_http;

use std::{net::SocketAddr, time::Duration};

use raw_http::upgrade;
use switchboard_client::{WsOptions, WsStream};
use switchboard_protocol::codec::Message;
use switchboard_server::{
    Node,
    auth::{HmacAlgorithm, MintClaims, mint},
    config::Config,
};

const SECRET: &str = "switchboard-auth-transport-tests-secret-0123456789";
const T: Duration = Duration::from_secs(10);

async fn start(configure: impl FnOnce(&mut Config)) -> SocketAddr {
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        personal_rooms: false,
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

fn token(user: &str, ttl: Duration) -> String {
    mint(
        SECRET.as_bytes(),
        HmacAlgorithm::HS256,
        &MintClaims {
            sub: user.into(),
            ttl: Some(ttl),
            ..MintClaims::default()
        },
    )
}

fn first_message(c: &mut Config) {
    c.auth.first_message = true;
}

async fn connect(addr: SocketAddr, query: &str) -> WsStream {
    WsStream::connect(&format!("ws://{addr}/ws{query}"), &WsOptions::default())
        .await
        .unwrap()
}

async fn next(ws: &mut WsStream) -> Option<Message> {
    tokio::time::timeout(T, ws.recv())
        .await
        .expect("a message in time")
        .unwrap()
}

async fn json(ws: &mut WsStream) -> serde_json::Value {
    match next(ws).await {
        Some(Message::Text(t)) => serde_json::from_str(t.as_str()).unwrap(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

/// The close frame that must come next: its code and reason.
async fn closed(ws: &mut WsStream) -> (u16, String) {
    match next(ws).await {
        Some(Message::Close(Some(frame))) => (frame.code.0, frame.reason_str().to_owned()),
        other => panic!("expected a close frame, got {other:?}"),
    }
}

// --- first-message authentication (2.2) ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_message_auth_is_answered_with_welcome() {
    let addr = start(first_message).await;
    let mut ws = connect(addr, "").await;
    let t = token("alice", Duration::from_secs(3600));
    ws.send_text(&format!(r#"{{"type":"auth","id":1,"token":"{t}"}}"#))
        .await
        .unwrap();
    let welcome = json(&mut ws).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    assert_eq!(welcome["user"], "alice");
    assert!(welcome["expires"].as_u64().is_some());
    // An authenticated connection: commands work, and `auth` again is bad_request.
    ws.send_text(r#"{"type":"ping","id":2}"#).await.unwrap();
    assert_eq!(json(&mut ws).await["type"], "pong");
    ws.send_text(&format!(r#"{{"type":"auth","id":3,"token":"{t}"}}"#))
        .await
        .unwrap();
    let e = json(&mut ws).await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("bad_request")),
        "{e}"
    );
    assert_eq!(e["id"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_message_mode_still_accepts_a_handshake_token() {
    let addr = start(first_message).await;
    let t = token("bob", Duration::from_secs(3600));
    let mut ws = connect(addr, &format!("?token={t}")).await;
    let welcome = json(&mut ws).await;
    assert_eq!(
        (welcome["type"].as_str(), welcome["user"].as_str()),
        (Some("welcome"), Some("bob"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_message_other_than_auth_closes_with_4001() {
    let addr = start(first_message).await;
    let mut ws = connect(addr, "").await;
    ws.send_text(r#"{"type":"ping","id":1}"#).await.unwrap();
    let (code, reason) = closed(&mut ws).await;
    assert_eq!(code, 4001);
    assert_eq!(reason, "expected auth first");

    // Not JSON at all: the same.
    let mut ws = connect(addr, "").await;
    ws.send_text("hello").await.unwrap();
    assert_eq!(closed(&mut ws).await.0, 4001);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_first_message_token_closes_with_4001_and_its_reason() {
    let addr = start(first_message).await;
    for (t, reason) in [
        ("not-a-jwt".to_owned(), "malformed"),
        (
            mint(
                b"another-secret-of-enough-length-0123456789",
                HmacAlgorithm::HS256,
                &MintClaims {
                    sub: "mallory".into(),
                    ..MintClaims::default()
                },
            ),
            "bad_signature",
        ),
        (String::new(), "missing"),
    ] {
        let mut ws = connect(addr, "").await;
        ws.send_text(&format!(r#"{{"type":"auth","id":1,"token":"{t}"}}"#))
            .await
            .unwrap();
        assert_eq!(closed(&mut ws).await, (4001, reason.to_owned()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_first_message_within_the_auth_timeout_closes_with_4001() {
    let addr = start(|c| {
        first_message(c);
        c.limits.auth_timeout = Duration::from_millis(300);
    })
    .await;
    let started = std::time::Instant::now();
    let mut ws = connect(addr, "").await;
    assert_eq!(closed(&mut ws).await, (4001, "auth_timeout".to_owned()));
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_first_message_mode_an_upgrade_without_token_is_401() {
    let addr = start(|_| {}).await;
    let (answer, _) = upgrade(addr, 1, "HTTP/1.1", "/ws", &[]).await;
    assert_eq!(answer.status, 401);
    assert_eq!(answer.json()["reason"], "missing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_waiting_for_auth_count_against_the_per_ip_cap() {
    let addr = start(|c| {
        first_message(c);
        c.limits.connections_per_ip = 1;
    })
    .await;
    let (first, _held) = upgrade(addr, 31, "HTTP/1.1", "/ws", &[]).await;
    assert_eq!(first.status, 101);
    let (second, _) = upgrade(addr, 31, "HTTP/1.1", "/ws", &[]).await;
    assert_eq!(second.status, 429);
    assert_eq!(second.json()["reason"], "connections_per_ip");
}

// --- origins (7.3) ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origins_listed_or_same_are_allowed_others_get_403() {
    let addr = start(|c| c.websocket.allowed_origins = vec!["https://app.example".into()]).await;
    let target = format!("/ws?token={}", token("carol", Duration::from_secs(3600)));
    let same = format!("http://{addr}");
    for (origin, status) in [
        (Some("https://app.example"), 101),
        (Some(same.as_str()), 101),
        (None, 101),
        (Some("https://evil.example"), 403),
        (Some("null"), 403),
    ] {
        let headers: Vec<(&str, &str)> = origin.map(|o| ("origin", o)).into_iter().collect();
        let (answer, _) = upgrade(addr, 1, "HTTP/1.1", &target, &headers).await;
        assert_eq!(answer.status, status, "{origin:?}: {answer:?}");
        if status == 403 {
            assert_eq!(answer.header("content-type"), Some("application/json"));
            let body = answer.json();
            assert_eq!(body["error"], "origin_not_allowed");
            assert!(body["reason"].as_str().is_some_and(|r| !r.is_empty()));
        }
    }
    // SSE streams are held to the same list.
    let (sse, _) = raw_http::get(
        addr,
        "/sse?room=news",
        &[("origin", "https://evil.example")],
    )
    .await;
    assert_eq!(sse.status, 403);
    assert_eq!(sse.json()["error"], "origin_not_allowed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_server_is_same_origin_only_and_star_allows_all() {
    let addr = start(|_| {}).await;
    let target = format!("/ws?token={}", token("dave", Duration::from_secs(3600)));
    let (answer, _) = upgrade(
        addr,
        1,
        "HTTP/1.1",
        &target,
        &[("origin", "https://app.example")],
    )
    .await;
    assert_eq!(answer.status, 403);

    let addr = start(|c| c.websocket.allowed_origins = vec!["*".into()]).await;
    let (answer, _) = upgrade(
        addr,
        1,
        "HTTP/1.1",
        &target,
        &[("origin", "https://app.example")],
    )
    .await;
    assert_eq!(answer.status, 101);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn development_mode_allows_any_origin() {
    let addr = start(|c| c.dev = Some(true)).await;
    let target = format!("/ws?token={}", token("erin", Duration::from_secs(3600)));
    let (answer, _) = upgrade(
        addr,
        1,
        "HTTP/1.1",
        &target,
        &[("origin", "https://anything.example")],
    )
    .await;
    assert_eq!(answer.status, 101);
}

#[test]
fn a_bad_allowed_origin_is_an_error_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(
        &file,
        "[websocket]\nallowed_origins = [\"https://ok.example\", \"app.example\"]\n",
    )
    .unwrap();
    let e = Config::load(&switchboard_server::config::Sources {
        file: Some(file),
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("websocket.allowed_origins[1]"), "{e}");
}

// --- trusted proxies ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_counts_only_from_trusted_proxies() {
    let addr = start(|c| {
        c.trusted_proxies = vec!["127.0.0.41/32".parse().unwrap()];
        c.limits.connections_per_ip = 1;
    })
    .await;
    let target = format!("/ws?token={}", token("frank", Duration::from_secs(3600)));
    let xff = |ip: &'static str| [("x-forwarded-for", ip)];
    // Through the trusted proxy: one connection per forwarded client, however many the proxy
    // carries.
    let (a, _a) = upgrade(addr, 41, "HTTP/1.1", &target, &xff("203.0.113.1")).await;
    assert_eq!(a.status, 101, "{a:?}");
    let (b, _b) = upgrade(addr, 41, "HTTP/1.1", &target, &xff("6.6.6.6, 203.0.113.2")).await;
    assert_eq!(b.status, 101, "{b:?}");
    let (c, _) = upgrade(addr, 41, "HTTP/1.1", &target, &xff("203.0.113.1")).await;
    assert_eq!(
        c.status, 429,
        "the cap applies to the forwarded client: {c:?}"
    );
    assert_eq!(c.json()["reason"], "connections_per_ip");

    // From an untrusted peer the header is ignored: a new spoofed address buys nothing.
    let (d, _d) = upgrade(addr, 42, "HTTP/1.1", &target, &xff("198.51.100.1")).await;
    assert_eq!(d.status, 101, "{d:?}");
    let (e, _) = upgrade(addr, 42, "HTTP/1.1", &target, &xff("198.51.100.2")).await;
    assert_eq!(e.status, 429, "{e:?}");
}

#[test]
fn a_bad_trusted_proxy_is_an_error_naming_the_key() {
    let e = Config::load(&switchboard_server::config::Sources {
        flags: vec![(
            "trusted_proxies".into(),
            toml::Value::Array(vec!["10.0.0.0/8".into(), "10.0.0.0/40".into()]),
        )],
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("trusted_proxies"), "{e}");
    assert!(e.contains("prefix"), "{e}");
}

// --- HTTP/1.0 (7.3) ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http10_upgrade_is_400_with_the_json_body() {
    let addr = start(|_| {}).await;
    let target = format!("/ws?token={}", token("gina", Duration::from_secs(3600)));
    let (answer, _) = upgrade(addr, 1, "HTTP/1.0", &target, &[]).await;
    assert_eq!(answer.status, 400, "{answer:?}");
    assert_eq!(
        answer.json(),
        serde_json::json!({"error": "bad_request", "reason": "a WebSocket upgrade needs HTTP/1.1"})
    );
}
