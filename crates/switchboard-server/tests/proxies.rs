//! The backend proxies (docs/proxies.md) against a real axum backend on loopback: each
//! proxy's allow, refuse, replace, timeout and failure paths, the in-flight bound, and the
//! connect proxy resolving a cookie for a WebSocket and for an SSE stream.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Json, Router, extract::State, http::HeaderMap, routing::post};
use serde_json::{Value, json};
use switchboard_client::{WsOptions, WsStream};
use switchboard_protocol::codec::Message;
use switchboard_server::{
    Node,
    auth::{HmacAlgorithm, MintClaims, mint},
    config::{Config, NamespaceConfig, NamespaceProxy, ProxyConfig},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::{Notify, mpsc},
};

const SECRET: &str = "switchboard-proxy-tests-secret-0123456789abc";
const T: Duration = Duration::from_secs(10);

/// What the backend saw and how it holds requests.
#[derive(Default)]
struct Backend {
    /// Every call's path and body, in order.
    calls: Mutex<Vec<(String, Value)>>,
    /// Told when a `hold` rpc arrives.
    held: Mutex<Option<mpsc::UnboundedSender<()>>>,
    /// Releases the `hold` rpcs.
    release: Notify,
}

impl Backend {
    fn record(&self, path: &str, body: &Value) {
        self.calls.lock().unwrap().push((path.into(), body.clone()));
    }

    fn calls(&self, path: &str) -> Vec<Value> {
        let calls = self.calls.lock().unwrap();
        calls
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, b)| b.clone())
            .collect()
    }
}

fn refuse(code: &str, message: &str) -> Json<Value> {
    Json(json!({"error": {"code": code, "message": message}}))
}

async fn connect(
    State(b): State<Arc<Backend>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Json<Value> {
    b.record("connect", &body);
    let cookie = headers
        .get("cookie")
        .and_then(|c| c.to_str().ok())
        .unwrap_or("");
    assert!(headers.get("content-type").is_some());
    // The backend reads the cookie the server passed on in the body.
    let passed = body["headers"]["cookie"].as_str().unwrap_or("").to_owned();
    assert_eq!(
        cookie, "",
        "the server calls with its own headers, not the client's"
    );
    match passed.as_str() {
        "session=alice" => {
            Json(json!({"user": "alice", "info": {"name": "Alice"}, "rooms": ["pc:granted"]}))
        }
        "session=slow" => std::future::pending().await,
        "session=garbage" => Json(json!(["not", "an", "answer"])),
        _ => refuse("unauthorized", "no such session"),
    }
}

async fn subscribe(State(b): State<Arc<Backend>>, Json(body): Json<Value>) -> Json<Value> {
    b.record("subscribe", &body);
    match body["room"].as_str().unwrap_or("") {
        "pc:denied" => refuse("permission_denied", "not your room"),
        "pc:slow" => std::future::pending().await,
        _ => Json(json!({})),
    }
}

async fn publish(State(b): State<Arc<Backend>>, Json(body): Json<Value>) -> Json<Value> {
    b.record("publish", &body);
    match body["data"]["text"].as_str().unwrap_or("") {
        "replace" => Json(json!({"data": {"text": "replaced", "id": 7}})),
        "deny" => refuse("bad_request", "no shouting"),
        "slow" => std::future::pending().await,
        _ => Json(json!({})),
    }
}

async fn rpc(State(b): State<Arc<Backend>>, Json(body): Json<Value>) -> Json<Value> {
    b.record("rpc", &body);
    match body["method"].as_str().unwrap_or("") {
        "echo" => Json(json!({"data": {"you": body["user"], "sent": body["data"]}})),
        "deny" => refuse("forbidden", "not for you"),
        "slow" => std::future::pending().await,
        "hold" => {
            let released = b.release.notified();
            if let Some(tx) = &*b.held.lock().unwrap() {
                let _ = tx.send(());
            }
            released.await;
            Json(json!({"data": "released"}))
        }
        _ => Json(json!({})),
    }
}

/// Starts the backend on 127.0.0.1:0.
async fn backend() -> (Arc<Backend>, SocketAddr) {
    let state = Arc::new(Backend::default());
    let app = Router::new()
        .route("/connect", post(connect))
        .route("/subscribe", post(subscribe))
        .route("/publish", post(publish))
        .route("/rpc", post(rpc))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (state, addr)
}

/// An address nothing listens on (bound, then released).
async fn closed_port() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

fn proxy(backend: SocketAddr, path: &str, timeout: Duration) -> Option<ProxyConfig> {
    Some(ProxyConfig {
        url: format!("http://{backend}/{path}"),
        timeout,
        headers: if path == "connect" {
            vec!["Cookie".into()]
        } else {
            Vec::new()
        },
    })
}

struct Running {
    node: Node,
    addr: SocketAddr,
}

/// A server whose `pc` namespace uses the subscribe and publish proxies of `backend`.
async fn start(backend: SocketAddr, edit: impl FnOnce(&mut Config)) -> Running {
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        personal_rooms: false,
        ..Config::default()
    };
    config.auth.secret = Some(SECRET.into());
    let timeout = Duration::from_millis(300);
    config.proxies.connect = proxy(backend, "connect", timeout);
    config.proxies.subscribe = proxy(backend, "subscribe", timeout);
    config.proxies.publish = proxy(backend, "publish", timeout);
    config.proxies.rpc = proxy(backend, "rpc", timeout);
    config.namespaces.insert(
        "pc".into(),
        NamespaceConfig {
            join_leave: false,
            proxies: vec![NamespaceProxy::Subscribe, NamespaceProxy::Publish],
            ..NamespaceConfig::default()
        },
    );
    config.namespaces.insert(
        "plain".into(),
        NamespaceConfig {
            join_leave: false,
            ..NamespaceConfig::default()
        },
    );
    edit(&mut config);
    let node = Node::new(config).unwrap();
    let server = node.server().bind().await.unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(server.run(std::future::pending()));
    Running { node, addr }
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

/// A WebSocket with the given request headers; its welcome read.
async fn open_ws(running: &Running, query: &str, headers: &[(&str, &str)]) -> (WsStream, Value) {
    let options = WsOptions {
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..WsOptions::default()
    };
    let url = format!("ws://{}/ws{query}", running.addr);
    let mut ws = WsStream::connect(&url, &options).await.unwrap();
    let welcome = json_of(&mut ws).await;
    assert_eq!(welcome["type"], "welcome");
    (ws, welcome)
}

async fn with_token(running: &Running, user: &str) -> WsStream {
    open_ws(running, &format!("?token={}", token(user)), &[])
        .await
        .0
}

async fn json_of(ws: &mut WsStream) -> Value {
    match tokio::time::timeout(T, ws.recv()).await.unwrap().unwrap() {
        Some(Message::Text(t)) => serde_json::from_str(t.as_str()).unwrap(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

/// Sends `command` and returns the answer with its id (pushes before it are skipped).
async fn ask(ws: &mut WsStream, command: Value) -> Value {
    let id = command["id"].clone();
    ws.send_text(&command.to_string()).await.unwrap();
    loop {
        let v = json_of(ws).await;
        if v["id"] == id && (v["type"] == "reply" || v["type"] == "error") {
            return v;
        }
    }
}

/// The handshake's status and body, read with a raw request.
async fn handshake(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(T, stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        raw.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&raw).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let status: u16 = text[9..12].parse().unwrap();
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if raw.len() >= end + 4 + len {
                let body =
                    serde_json::from_slice(&raw[end + 4..end + 4 + len]).unwrap_or(Value::Null);
                return (status, body);
            }
        }
        assert!(n > 0, "connection closed before the answer");
    }
}

fn metric(node: &Node, line: &str) -> bool {
    node.metrics().encode().lines().any(|l| l == line)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_proxy_names_the_user_of_a_cookie_over_websocket() {
    let (backend, at) = backend().await;
    let running = start(at, |_| {}).await;
    let (mut ws, welcome) = open_ws(&running, "", &[("Cookie", "session=alice")]).await;
    assert_eq!(welcome["user"], "alice");
    // The answer's rooms are subscribed at connect, as a token's claim.
    assert!(welcome["rooms"]["pc:granted"].is_object(), "{welcome}");
    let calls = backend.calls("connect");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["connection"], welcome["connection"]);
    assert_eq!(calls[0]["transport"], "websocket");
    assert_eq!(calls[0]["ip"], "127.0.0.1");
    assert_eq!(calls[0]["headers"], json!({"cookie": "session=alice"}));
    // The info of the answer is the connection's `from`.
    let r = ask(
        &mut ws,
        json!({"type": "subscribe", "id": 1, "room": "plain:x"}),
    )
    .await;
    assert_eq!(r["type"], "reply", "{r}");
    ws.send_text(&json!({"type": "publish", "id": 2, "room": "plain:x", "data": 1}).to_string())
        .await
        .unwrap();
    let mut saw_message = false;
    for _ in 0..2 {
        let v = json_of(&mut ws).await;
        if v["type"] == "message" {
            assert_eq!(v["from"]["info"], json!({"name": "Alice"}));
            assert_eq!(v["from"]["user"], "alice");
            saw_message = true;
        }
    }
    assert!(saw_message);

    // A token wins: the proxy is not called.
    let (_ws, welcome) = open_ws(
        &running,
        &format!("?token={}", token("bob")),
        &[("Cookie", "session=alice")],
    )
    .await;
    assert_eq!(welcome["user"], "bob");
    assert_eq!(backend.calls("connect").len(), 1);
    assert!(metric(
        &running.node,
        r#"switchboard_proxy_calls_total{proxy="connect",result="ok"} 1"#
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_proxy_refusal_is_401_and_failures_are_503() {
    let (_backend, at) = backend().await;
    let running = start(at, |_| {}).await;
    let (status, body) = handshake(running.addr, "/ws", &[("Cookie", "session=nobody")]).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "unauthorized");
    assert_eq!(body["reason"], "connect_proxy");
    assert_eq!(body["message"], "no such session");

    let (status, body) = handshake(running.addr, "/ws", &[("Cookie", "session=slow")]).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "unavailable");
    let (status, _) = handshake(running.addr, "/ws", &[("Cookie", "session=garbage")]).await;
    assert_eq!(status, 503);
    assert!(metric(
        &running.node,
        r#"switchboard_proxy_calls_total{proxy="connect",result="timeout"} 1"#
    ));
    assert!(metric(
        &running.node,
        r#"switchboard_proxy_calls_total{proxy="connect",result="refused"} 1"#
    ));

    // Backend down.
    let down = start(closed_port().await, |_| {}).await;
    let (status, body) = handshake(down.addr, "/ws", &[("Cookie", "session=alice")]).await;
    assert_eq!(status, 503, "{body}");
    assert!(metric(
        &down.node,
        r#"switchboard_proxy_calls_total{proxy="connect",result="error"} 1"#
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_proxy_serves_sse_streams() {
    let (backend, at) = backend().await;
    let running = start(at, |_| {}).await;
    let mut stream = TcpStream::connect(running.addr).await.unwrap();
    stream
        .write_all(
            b"GET /sse?room=plain:news HTTP/1.1\r\nHost: localhost\r\nCookie: session=alice\r\n\r\n",
        )
        .await
        .unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&raw).contains("event: welcome") {
        let n = tokio::time::timeout(T, stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "stream ended: {}", String::from_utf8_lossy(&raw));
        raw.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains(r#""user":"alice""#), "{text}");
    let calls = backend.calls("connect");
    assert_eq!(calls[0]["transport"], "sse");

    // Refused by the backend: 401 before the stream starts; the subscribe proxy decides the
    // rooms of a stream too.
    let (status, body) = sse_status(running.addr, "/sse?room=plain:news", "session=x").await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = sse_status(running.addr, "/sse?room=pc:denied", "session=alice").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("not your room"), "{body}");
}

async fn sse_status(addr: SocketAddr, target: &str, cookie: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {target} HTTP/1.1\r\nHost: localhost\r\nCookie: {cookie}\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(T, stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        raw.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&raw).to_string();
        if text.contains("\r\n\r\n") && text.trim_end().ends_with('}') || n == 0 {
            return (text[9..12].parse().unwrap(), text);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_proxy_allows_refuses_and_fails_closed() {
    let (backend, at) = backend().await;
    let running = start(at, |_| {}).await;
    let mut ws = with_token(&running, "alice").await;
    let r = ask(
        &mut ws,
        json!({"type": "subscribe", "id": 1, "room": "pc:open"}),
    )
    .await;
    assert_eq!(r["type"], "reply", "{r}");
    let calls = backend.calls("subscribe");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["user"], "alice");
    assert_eq!(calls[0]["room"], "pc:open");
    assert!(calls[0]["connection"].as_str().unwrap().starts_with("c_"));

    let r = ask(
        &mut ws,
        json!({"type": "subscribe", "id": 2, "room": "pc:denied"}),
    )
    .await;
    assert_eq!(r["type"], "error");
    assert_eq!(
        r["code"], "forbidden",
        "an application code maps to forbidden"
    );
    assert_eq!(r["message"], "not your room");

    let r = ask(
        &mut ws,
        json!({"type": "subscribe", "id": 3, "room": "pc:slow"}),
    )
    .await;
    assert_eq!(r["code"], "unavailable", "{r}");

    // The static policy first: an anonymous-refused namespace never reaches the backend, and
    // a namespace without the proxy neither.
    let r = ask(
        &mut ws,
        json!({"type": "subscribe", "id": 4, "room": "plain:x"}),
    )
    .await;
    assert_eq!(r["type"], "reply");
    assert_eq!(backend.calls("subscribe").len(), 3);

    // Not subscribed after a refusal: publishing needs a subscription.
    let r = ask(
        &mut ws,
        json!({"type": "publish", "id": 5, "room": "pc:denied", "data": 1}),
    )
    .await;
    assert_eq!(r["code"], "not_subscribed", "{r}");
    assert!(backend.calls("publish").is_empty());

    let down = start(closed_port().await, |_| {}).await;
    let mut ws = with_token(&down, "alice").await;
    let r = ask(
        &mut ws,
        json!({"type": "subscribe", "id": 1, "room": "pc:open"}),
    )
    .await;
    assert_eq!(r["code"], "unavailable", "{r}");
    let r = ask(
        &mut ws,
        json!({"type": "subscribe", "id": 2, "room": "plain:open"}),
    )
    .await;
    assert_eq!(
        r["type"], "reply",
        "a namespace without the proxy does not depend on it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_proxy_allows_replaces_refuses_and_fails_closed() {
    let (backend, at) = backend().await;
    let running = start(at, |_| {}).await;
    let mut ws = with_token(&running, "alice").await;
    let r = ask(
        &mut ws,
        json!({"type": "subscribe", "id": 1, "room": "pc:chat"}),
    )
    .await;
    assert_eq!(r["type"], "reply", "{r}");

    let r = ask(
        &mut ws,
        json!({"type": "publish", "id": 2, "room": "pc:chat", "data": {"text": "hi"}, "echo": false}),
    )
    .await;
    assert_eq!(r["type"], "reply", "{r}");
    assert_eq!(r["result"]["offset"], 1);
    let r = ask(
        &mut ws,
        json!({"type": "publish", "id": 3, "room": "pc:chat", "data": {"text": "replace"}}),
    )
    .await;
    assert_eq!(r["result"]["offset"], 2, "{r}");
    let pushed = json_of(&mut ws).await;
    assert_eq!(pushed["type"], "message");
    assert_eq!(pushed["data"], json!({"text": "replaced", "id": 7}));
    let calls = backend.calls("publish");
    assert_eq!(calls[1]["data"], json!({"text": "replace"}));
    assert_eq!(calls[1]["user"], "alice");
    assert_eq!(calls[1]["room"], "pc:chat");

    let r = ask(
        &mut ws,
        json!({"type": "publish", "id": 4, "room": "pc:chat", "data": {"text": "deny"}}),
    )
    .await;
    assert_eq!(r["code"], "bad_request", "{r}");
    assert_eq!(r["message"], "no shouting");
    let r = ask(
        &mut ws,
        json!({"type": "publish", "id": 5, "room": "pc:chat", "data": {"text": "slow"}}),
    )
    .await;
    assert_eq!(r["code"], "unavailable", "{r}");

    // The replacement is what history keeps; refused publications are not there.
    let r = ask(
        &mut ws,
        json!({"type": "history", "id": 6, "room": "pc:chat"}),
    )
    .await;
    let pubs = r["result"]["publications"].as_array().unwrap().clone();
    assert_eq!(pubs.len(), 2, "{r}");
    assert_eq!(pubs[1]["data"], json!({"text": "replaced", "id": 7}));

    // The server API is never proxied.
    running
        .node
        .publish(
            "pc:chat",
            switchboard_server::node::Publish {
                data: bytes::Bytes::from_static(b"{\"text\":\"deny\"}"),
                from: None,
                ephemeral: false,
                idempotency_key: None,
                exclude: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(backend.calls("publish").len(), 4);
    assert!(metric(
        &running.node,
        r#"switchboard_proxy_calls_total{proxy="publish",result="timeout"} 1"#
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_answers_refuses_and_fails() {
    let (backend, at) = backend().await;
    let running = start(at, |_| {}).await;
    let mut ws = with_token(&running, "alice").await;
    let r = ask(
        &mut ws,
        json!({"type": "rpc", "id": 1, "method": "echo", "data": {"n": 1}}),
    )
    .await;
    assert_eq!(
        r,
        json!({"type": "reply", "id": 1, "result": {"data": {"you": "alice", "sent": {"n": 1}}}})
    );
    let call = &backend.calls("rpc")[0];
    assert_eq!(call["method"], "echo");
    assert!(call["connection"].as_str().unwrap().starts_with("c_"));
    // Without data: null; an answer without data: null.
    let r = ask(&mut ws, json!({"type": "rpc", "id": 2, "method": "other"})).await;
    assert_eq!(r["result"], json!({"data": null}), "{r}");
    assert_eq!(backend.calls("rpc")[1]["data"], Value::Null);
    let r = ask(&mut ws, json!({"type": "rpc", "id": 3, "method": "deny"})).await;
    assert_eq!(
        (&r["code"], &r["message"]),
        (&json!("forbidden"), &json!("not for you"))
    );
    let r = ask(&mut ws, json!({"type": "rpc", "id": 4, "method": "slow"})).await;
    assert_eq!(r["code"], "unavailable", "{r}");

    let down = start(closed_port().await, |_| {}).await;
    let mut ws = with_token(&down, "alice").await;
    let r = ask(&mut ws, json!({"type": "rpc", "id": 1, "method": "echo"})).await;
    assert_eq!(r["code"], "unavailable", "{r}");

    let none = start(at, |c| c.proxies.rpc = None).await;
    let mut ws = with_token(&none, "alice").await;
    let r = ask(&mut ws, json!({"type": "rpc", "id": 1, "method": "echo"})).await;
    assert_eq!(r["message"], "no RPC proxy is configured", "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_beyond_max_in_flight_are_unavailable_at_once() {
    let (backend, at) = backend().await;
    let (held_tx, mut held) = mpsc::unbounded_channel();
    *backend.held.lock().unwrap() = Some(held_tx);
    let running = start(at, |c| {
        c.proxies.max_in_flight = 2;
        c.proxies.rpc = proxy(at, "rpc", T * 3);
    })
    .await;
    // Commands of one connection run in order: one held call per connection.
    let mut holders = Vec::new();
    for i in 0..2 {
        let mut ws = with_token(&running, &format!("u{i}")).await;
        ws.send_text(&json!({"type": "rpc", "id": 1, "method": "hold"}).to_string())
            .await
            .unwrap();
        holders.push(ws);
    }
    for _ in 0..2 {
        tokio::time::timeout(T, held.recv()).await.unwrap().unwrap();
    }
    let mut third = with_token(&running, "u3").await;
    let started = std::time::Instant::now();
    let r = ask(
        &mut third,
        json!({"type": "rpc", "id": 1, "method": "echo"}),
    )
    .await;
    assert_eq!(r["code"], "unavailable", "{r}");
    assert!(
        started.elapsed() < T,
        "refused at once, not after the proxy's timeout"
    );
    assert_eq!(backend.calls("rpc").len(), 2, "the third call never left");
    assert!(metric(
        &running.node,
        r#"switchboard_proxy_calls_total{proxy="rpc",result="overloaded"} 1"#
    ));
    backend.release.notify_waiters();
    for ws in &mut holders {
        let r = json_of(ws).await;
        assert_eq!(r["result"]["data"], "released", "{r}");
    }
    // The permits are back.
    let r = ask(
        &mut third,
        json!({"type": "rpc", "id": 2, "method": "echo"}),
    )
    .await;
    assert_eq!(r["type"], "reply", "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_connects_with_a_cookie_and_calls_rpc() {
    let (_backend, at) = backend().await;
    let running = start(at, |_| {}).await;
    let mut options = switchboard_client::ClientOptions::new(format!("ws://{}/ws", running.addr));
    options.headers = vec![("Cookie".into(), "session=alice".into())];
    let client = switchboard_client::Client::connect(options).await.unwrap();
    assert_eq!(client.welcome().user, "alice");
    let result = client.rpc("echo", &json!({"n": 2})).await.unwrap();
    let data: Value = serde_json::from_str(result.data.get()).unwrap();
    assert_eq!(data, json!({"you": "alice", "sent": {"n": 2}}));
    let refused = client.rpc("deny", &Value::Null).await.unwrap_err();
    assert_eq!(
        refused.code(),
        Some(switchboard_protocol::wire::ErrorCode::Forbidden),
        "{refused}"
    );
    client.close().await;
}

/// `https://` backends: trusted through `proxies.ca`, refused (`unavailable`) otherwise.
mod https {
    use std::sync::Arc;

    use http_body_util::Full;
    use hyper_util::rt::TokioIo;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

    use super::*;

    /// An rpc backend over TLS with a certificate for 127.0.0.1 from a CA of its own, answering
    /// every call `{"data": "over tls"}`; its address and the CA's PEM.
    async fn tls_backend() -> (SocketAddr, String) {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&key, &ca_cert, &ca_key)
            .unwrap();
        #[allow(deprecated, reason = "the ring provider is what this build has")]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            bytes::Bytes::from_static(br#"{"data": "over tls"}"#),
                        )))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        (addr, ca_cert.pem())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rpc_over_https_with_a_trusted_ca_and_unavailable_without() {
        let (at, ca) = tls_backend().await;
        let dir = tempfile::tempdir().unwrap();
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, ca).unwrap();
        let https = |c: &mut Config| {
            c.proxies.rpc = Some(ProxyConfig {
                url: format!("https://{at}/rpc"),
                timeout: Duration::from_secs(5),
                headers: Vec::new(),
            });
        };
        let unused = closed_port().await;
        let trusted = start(unused, |c| {
            https(c);
            c.proxies.ca = Some(ca_path.to_str().unwrap().into());
        })
        .await;
        let mut ws = with_token(&trusted, "alice").await;
        let answer = ask(
            &mut ws,
            json!({"type": "rpc", "id": 1, "method": "m", "data": null}),
        )
        .await;
        assert_eq!(answer["type"], "reply", "{answer}");
        assert_eq!(answer["result"]["data"], "over tls");

        // The same backend, its CA not trusted: the call fails as documented.
        let untrusted = start(unused, https).await;
        let mut ws = with_token(&untrusted, "alice").await;
        let answer = ask(
            &mut ws,
            json!({"type": "rpc", "id": 2, "method": "m", "data": null}),
        )
        .await;
        assert_eq!(answer["type"], "error", "{answer}");
        assert_eq!(answer["code"], "unavailable");
        assert!(metric(
            &untrusted.node,
            r#"switchboard_proxy_calls_total{proxy="rpc",result="error"} 1"#
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unreadable_proxies_ca_stops_the_node_naming_the_key() {
        let mut config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..Config::default()
        };
        config.auth.secret = Some(SECRET.into());
        config.proxies.ca = Some("/nonexistent/ca.pem".into());
        let e = Node::new(config).unwrap_err().to_string();
        assert!(e.contains("proxies.ca"), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_proxies_see_the_headers_of_the_request_that_opened_the_connection() {
    let (backend, at) = backend().await;
    let with = |p: &mut Option<ProxyConfig>, headers: &[&str]| {
        p.as_mut().unwrap().headers = headers.iter().map(|h| (*h).into()).collect();
    };
    let running = start(at, |c| {
        with(&mut c.proxies.subscribe, &["Cookie", "X-Tenant"]);
        with(&mut c.proxies.publish, &["X-Tenant"]);
        with(&mut c.proxies.rpc, &["Authorization"]);
    })
    .await;
    let headers = [
        ("Cookie", "session=alice"),
        ("X-Tenant", "acme"),
        ("User-Agent", "test"),
    ];
    let (mut ws, welcome) = open_ws(&running, "", &headers).await;
    assert_eq!(welcome["user"], "alice");
    let r = ask(
        &mut ws,
        json!({"type": "subscribe", "id": 1, "room": "pc:room"}),
    )
    .await;
    assert_eq!(r["type"], "reply", "{r}");
    let r = ask(
        &mut ws,
        json!({"type": "publish", "id": 2, "room": "pc:room", "data": {"text": "hi"}}),
    )
    .await;
    assert_eq!(r["type"], "reply", "{r}");
    let r = ask(&mut ws, json!({"type": "rpc", "id": 3, "method": "echo"})).await;
    assert_eq!(r["type"], "reply", "{r}");
    assert_eq!(
        backend.calls("subscribe")[0]["headers"],
        json!({"cookie": "session=alice", "x-tenant": "acme"})
    );
    assert_eq!(
        backend.calls("publish")[0]["headers"],
        json!({"x-tenant": "acme"})
    );
    // The upgrade had no Authorization header: nothing to pass on.
    assert_eq!(backend.calls("rpc")[0]["headers"], json!({}));

    // An SSE stream's rooms are asked about with the stream request's headers.
    let mut stream = TcpStream::connect(running.addr).await.unwrap();
    stream
        .write_all(
            b"GET /sse?room=pc:feed HTTP/1.1\r\nHost: localhost\r\nCookie: session=alice\r\n\
              X-Tenant: beta\r\n\r\n",
        )
        .await
        .unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&raw).contains("event: welcome") {
        let n = tokio::time::timeout(T, stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "stream ended: {}", String::from_utf8_lossy(&raw));
        raw.extend_from_slice(&buf[..n]);
    }
    let calls = backend.calls("subscribe");
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[1]["room"], "pc:feed");
    assert_eq!(
        calls[1]["headers"],
        json!({"cookie": "session=alice", "x-tenant": "beta"})
    );
}
