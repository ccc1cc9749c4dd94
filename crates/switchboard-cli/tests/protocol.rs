//! The v1 protocol (docs/protocol.md sections 1–7) over real sockets against the real binary:
//! the handshake and its refusals, `welcome`, every command with its replies and error paths,
//! pushes, expiry and refresh, liveness and size limits.

mod common;
mod protocol_common;

use std::{collections::BTreeSet, time::Duration};

use protocol_common::{
    Client, OP_CLOSE, OP_PING, OP_TEXT, RawWs, SECRET, T, TestServer, b64url, mint_token, now,
    raw_token, token,
};
use serde_json::{Value, json};
use switchboard_client::WsOptions;
use switchboard_protocol::{codec::Message, frame::OpCode};

/// The configuration most tests share: strict namespaces, one namespace per behaviour.
fn config() -> String {
    format!(
        r#"
node_id = "n1"
strict_namespaces = true

[auth]
secret = "{SECRET}"

[websocket]
max_message_size = "16KiB"
ping_interval = "7s"
idle_timeout = "60s"

[limits]
subscriptions_per_connection = 8

[namespaces.default]
[namespaces.chat]
[namespaces.news]
publish = "none"
[namespaces.vip]
subscribe = "claim"
[namespaces.priv]
subscribe = "token"
[namespaces.quiet]
presence = false
join_leave = false
[namespaces.small]
max_subscribers = 2
[namespaces.open]
subscribe = "anyone"
publish = "authenticated"
[namespaces.hist]
history_size = 5
"#
    )
}

fn server() -> TestServer {
    TestServer::start(&config())
}

fn hours(n: u64) -> Option<Duration> {
    Some(Duration::from_secs(3600 * n))
}

/// A raw upgrade request for `path` with extra header lines; returns (status, response text).
fn upgrade(addr: std::net::SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    common::http(addr, &req)
}

/// The JSON body of a raw HTTP response.
fn body_json(response: &str) -> Value {
    let body = &response[response.find("\r\n\r\n").expect("a complete head") + 4..];
    serde_json::from_str(body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {response}"))
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn offsets(publications: &Value) -> Vec<u64> {
    publications
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 2. Authentication, welcome, handshake

#[tokio::test]
async fn welcome_describes_the_connection_and_its_server_side_rooms() {
    let s = server();
    let before = now();
    let t = mint_token(
        "alice",
        hours(1),
        &["vip:gold", "chat:welcome", "not a room"],
        Some(json!({"name": "Alice"})),
        None,
    );
    let mut a = Client::connect(&s.url(), Some(&t)).await;
    let w = a.welcome.clone();
    assert!(w["connection"].as_str().unwrap().starts_with("c_"), "{w}");
    assert_eq!(w["user"], "alice");
    assert_eq!(w["node"], "n1");
    assert_eq!(w["version"], "1");
    assert_eq!(w["ping_interval"], 7);
    let expires = w["expires"].as_u64().expect("expires is the token's exp");
    assert!((before + 3600..=now() + 3600).contains(&expires), "{w}");
    // The personal room and the valid rooms of the `rooms` claim, each at its position.
    assert_eq!(
        keys(&w["rooms"]),
        set(&["user:alice", "vip:gold", "chat:welcome"]),
        "{w}"
    );
    for (room, pos) in w["rooms"].as_object().unwrap() {
        assert!(
            pos["epoch"].as_str().is_some_and(|e| !e.is_empty()),
            "{room}: {pos}"
        );
        assert_eq!(pos["offset"], 0, "{room}: {pos}");
    }
    // Nothing else at connect: no `subscribed` push, no join of itself.
    assert_eq!(a.sync().await, Vec::<Value>::new());

    // The subscriptions are real: presence lists alice with her info, resubscribing is refused.
    let p = a.ok(json!({"type": "presence", "room": "vip:gold"})).await;
    assert_eq!(
        p["members"],
        json!([{"user": "alice", "connection": a.id(), "info": {"name": "Alice"}}])
    );
    a.err(
        json!({"type": "subscribe", "room": "vip:gold"}),
        "already_subscribed",
    )
    .await;
    a.err(
        json!({"type": "subscribe", "room": "user:alice"}),
        "already_subscribed",
    )
    .await;
    let mut b = s.connect("bob").await;
    b.subscribe("chat:welcome").await;
    let r = b.publish("chat:welcome", json!({"n": 1})).await;
    assert_eq!(r["epoch"], w["rooms"]["chat:welcome"]["epoch"]);
    let m = a.push("message", "chat:welcome").await;
    assert_eq!(
        (m["offset"].as_u64(), &m["data"]),
        (Some(1), &json!({"n": 1}))
    );

    // A token without `exp`: `expires` is null (present, not left out).
    let c = Client::connect(&s.url(), Some(&mint_token("carol", None, &[], None, None))).await;
    assert!(c.welcome.as_object().unwrap().contains_key("expires"));
    assert_eq!(c.welcome["expires"], Value::Null);
    assert_eq!(keys(&c.welcome["rooms"]), set(&["user:carol"]));
}

#[tokio::test]
async fn rooms_claim_never_subscribes_to_unknown_namespaces_or_other_users_personal_rooms() {
    let s = server();
    let t = mint_token(
        "alice",
        hours(1),
        &["chat:ok", "nowhere:x", "user:bob", "user:alice"],
        None,
        None,
    );
    let mut a = Client::connect(&s.url(), Some(&t)).await;
    // strict_namespaces refuses `nowhere:*` for a subscribe; the claim cannot do more. A
    // personal room is only for that user's connections (docs/protocol.md 4.1).
    assert_eq!(
        keys(&a.welcome["rooms"]),
        set(&["user:alice", "chat:ok"]),
        "{}",
        a.welcome
    );
    a.err(
        json!({"type": "unsubscribe", "room": "user:bob"}),
        "not_subscribed",
    )
    .await;
}

/// A P-256 public key (from the server's auth test keys), only to make `unknown_key` reachable.
const EC_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEMmxpNBCM4snInTfnvDTBOLWwjQZ+
f+cLtv9+6o03KgQQKwEViXOvpW6oepwaX7gb+piaB2nEY+CmK84BrGw88w==
-----END PUBLIC KEY-----";

#[test]
fn handshake_refuses_bad_tokens_with_401_and_each_reason() {
    let s = TestServer::start(&format!(
        r#"
[auth]
secret = "{SECRET}"
algorithms = ["HS256", "ES256"]
audience = "sb-tests"
issuer = "https://issuer.test"
token_cookie = "sb_token"

[[auth.public_keys]]
kid = "k1"
algorithm = "ES256"
pem = """{EC_PUBLIC}"""
"#
    ));
    let addr = s.addr();
    let claims = |extra: Value| {
        let mut c = json!({"sub": "alice", "aud": "sb-tests", "iss": "https://issuer.test",
                           "exp": now() + 3600});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let hs256 = || jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    let good = raw_token(hs256(), &claims(json!({})), SECRET);
    let unknown_kid = format!(
        "{}.{}.{}",
        b64url(br#"{"alg":"ES256","typ":"JWT","kid":"nope"}"#),
        b64url(claims(json!({})).to_string().as_bytes()),
        b64url(&[7; 64])
    );
    let cases: Vec<(&str, Option<String>)> = vec![
        ("missing", None),
        ("malformed", Some("not-a-jwt".into())),
        ("malformed", Some("a.b.c".into())),
        (
            "bad_signature",
            Some(raw_token(
                hs256(),
                &claims(json!({})),
                "another-secret-another-secret-xx",
            )),
        ),
        ("unknown_key", Some(unknown_kid)),
        (
            "algorithm_not_allowed",
            Some(raw_token(
                jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS384),
                &claims(json!({})),
                SECRET,
            )),
        ),
        (
            "expired",
            Some(raw_token(
                hs256(),
                &claims(json!({"exp": now() - 600})),
                SECRET,
            )),
        ),
        (
            "not_yet_valid",
            Some(raw_token(
                hs256(),
                &claims(json!({"nbf": now() + 600})),
                SECRET,
            )),
        ),
        (
            "bad_audience",
            Some(raw_token(
                hs256(),
                &claims(json!({"aud": "someone-else"})),
                SECRET,
            )),
        ),
        (
            "bad_issuer",
            Some(raw_token(
                hs256(),
                &claims(json!({"iss": "https://evil.test"})),
                SECRET,
            )),
        ),
    ];
    for (reason, tok) in &cases {
        let auth = tok.as_ref().map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("Authorization", a)])
            .unwrap_or_default();
        let (status, resp) = upgrade(addr, "/ws", &headers);
        assert_eq!(status, 401, "{reason}: {resp}");
        assert!(
            resp.to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{resp}"
        );
        assert_eq!(
            body_json(&resp),
            json!({"error": "unauthorized", "reason": reason}),
            "{reason}"
        );
    }

    // Every source of 2.1 is accepted...
    let bearer = format!("Bearer {good}");
    let sub = format!("bearer.{good}, switchboard.v1");
    let cookie = format!("other=1; sb_token={good}");
    let query = format!("/ws?x=1&token={good}");
    assert_eq!(upgrade(addr, "/ws", &[("Authorization", &bearer)]).0, 101);
    assert_eq!(
        upgrade(addr, "/ws", &[("Sec-WebSocket-Protocol", &sub)]).0,
        101
    );
    assert_eq!(upgrade(addr, &query, &[]).0, 101);
    assert_eq!(upgrade(addr, "/ws", &[("Cookie", &cookie)]).0, 101);
    // ...and the first one found is the one used: a bad header is not rescued by a good query.
    let bad = raw_token(
        hs256(),
        &claims(json!({})),
        "another-secret-another-secret-xx",
    );
    let bad_bearer = format!("Bearer {bad}");
    let bad_sub = format!("bearer.{bad}");
    let (status, resp) = upgrade(addr, &query, &[("Authorization", &bad_bearer)]);
    assert_eq!(status, 401, "{resp}");
    assert_eq!(body_json(&resp)["reason"], "bad_signature");
    let (status, _) = upgrade(addr, &query, &[("Sec-WebSocket-Protocol", &bad_sub)]);
    assert_eq!(status, 401, "the subprotocol comes before the query");
    let bad_query = format!("/ws?token={bad}");
    let (status, _) = upgrade(addr, &bad_query, &[("Cookie", &cookie)]);
    assert_eq!(status, 401, "the query comes before the cookie");
}

#[tokio::test]
async fn subprotocol_is_selected_bearer_entries_are_never_echoed_and_unknown_ones_are_refused() {
    let s = server();
    let t = token("alice");
    // switchboard.v1 offered: selected.
    let mut opts = WsOptions {
        protocols: vec!["switchboard.v1".into()],
        deflate: false,
        ..Default::default()
    };
    opts.headers
        .push(("Authorization".into(), format!("Bearer {t}")));
    let c = Client::connect_with(&s.url(), &opts).await;
    assert_eq!(c.ws.accepted().protocol.as_deref(), Some("switchboard.v1"));
    // Nothing offered: version 1 is served without a subprotocol.
    let c = Client::connect(&s.url(), Some(&t)).await;
    assert_eq!(c.ws.accepted().protocol, None);
    assert_eq!(c.welcome["version"], "1");

    // The token as a `bearer.` entry (the browser way), with switchboard.v1.
    let opts = WsOptions {
        protocols: vec![format!("bearer.{t}"), "switchboard.v1".into()],
        deflate: false,
        ..Default::default()
    };
    let c = Client::connect_with(&s.url(), &opts).await;
    assert_eq!(c.welcome["user"], "alice");
    assert_eq!(c.ws.accepted().protocol.as_deref(), Some("switchboard.v1"));
    let offer = format!("bearer.{t}, switchboard.v1");
    let raw = RawWs::connect(s.addr(), "/ws", &[("Sec-WebSocket-Protocol", &offer)], None).await;
    let head = raw.head.to_ascii_lowercase();
    assert!(
        head.contains("sec-websocket-protocol: switchboard.v1\r\n"),
        "{head}"
    );
    assert!(!head.contains("bearer"), "the token is echoed: {head}");
    // Only a bearer entry: accepted, no subprotocol in the answer.
    let offer = format!("bearer.{t}");
    let mut raw =
        RawWs::connect(s.addr(), "/ws", &[("Sec-WebSocket-Protocol", &offer)], None).await;
    assert!(
        !raw.head
            .to_ascii_lowercase()
            .contains("sec-websocket-protocol"),
        "{}",
        raw.head
    );
    let (op, payload) = raw.frame(T).await.expect("welcome");
    assert_eq!(op, OP_TEXT);
    let welcome: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(
        (&welcome["type"], &welcome["user"]),
        (&json!("welcome"), &json!("alice"))
    );

    // Unsupported subprotocols (bearer entries not counted): 400 naming the supported ones.
    let bearer = format!("Bearer {t}");
    for offer in [
        "mqtt",
        "mqtt, wamp.2.json",
        &format!("bearer.{t}, switchboard.v2"),
    ] {
        let (status, resp) = upgrade(
            s.addr(),
            "/ws",
            &[
                ("Authorization", &bearer),
                ("Sec-WebSocket-Protocol", offer),
            ],
        );
        assert_eq!(status, 400, "{offer}: {resp}");
        let body = body_json(&resp);
        assert_eq!(body["error"], "bad_request", "{body}");
        assert!(body["reason"].is_string(), "{body}");
        assert_eq!(body["supported"], json!(["switchboard.v1"]), "{body}");
    }
}

#[tokio::test]
async fn other_handshake_refusals_and_deflate_on_the_protocol_route() {
    let s = server();
    let addr = s.addr();
    let bearer = format!("Bearer {}", token("alice"));
    // Not an upgrade: 400 with a JSON body.
    let (status, resp) = common::http(
        addr,
        &format!("GET /ws HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {bearer}\r\n\r\n"),
    );
    assert_eq!(status, 400, "{resp}");
    assert_eq!(body_json(&resp)["error"], "bad_request");
    // Another WebSocket version: 426 with Sec-WebSocket-Version: 13.
    let (status, resp) = common::http(
        addr,
        &format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\
             Authorization: {bearer}\r\n\r\n"
        ),
    );
    assert_eq!(status, 426, "{resp}");
    assert!(
        resp.to_ascii_lowercase()
            .contains("sec-websocket-version: 13"),
        "{resp}"
    );
    // No such route: 404.
    let (status, resp) = upgrade(addr, "/nope", &[("Authorization", &bearer)]);
    assert_eq!(status, 404, "{resp}");

    // permessage-deflate is negotiated when offered, and the protocol works through it.
    let opts = WsOptions {
        deflate: true,
        headers: vec![("Authorization".into(), bearer.clone())],
        ..Default::default()
    };
    let mut a = Client::connect_with(&s.url(), &opts).await;
    assert!(a.ws.accepted().deflate.is_some());
    a.subscribe("chat:deflate").await;
    let big = "compressible ".repeat(500);
    a.publish("chat:deflate", json!(big)).await;
    assert_eq!(a.push("message", "chat:deflate").await["data"], json!(big));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_protocol_connections_with_1001() {
    let mut s = server();
    let mut a = s.connect("alice").await;
    let pid = s.pid();
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
    assert_eq!(a.closed().await, Some(1001));
    drop(a);
    let status = tokio::task::block_in_place(|| s.process.child.wait().unwrap());
    assert_eq!(status.code(), Some(0));
}

// ---------------------------------------------------------------------------------------------
// 1. Framing: ids, replies, errors

#[tokio::test]
async fn replies_carry_number_and_string_ids_and_commands_without_id_get_no_reply() {
    let s = server();
    let mut a = s.connect("alice").await;
    for id in [
        json!(0),
        json!(9_007_199_254_740_991u64),
        json!("abc"),
        json!(""),
        json!("x".repeat(64)),
    ] {
        let pong = a.request(json!({"type": "ping", "id": id})).await;
        assert_eq!(pong, json!({"type": "pong", "id": id}));
        let err = a.request(json!({"type": "subscribe", "id": id})).await;
        assert_eq!((&err["type"], &err["id"]), (&json!("error"), &id), "{err}");
    }
    let r = a
        .request(json!({"type": "subscribe", "id": "sub-1", "room": "chat:ids"}))
        .await;
    assert_eq!((&r["type"], &r["id"]), (&json!("reply"), &json!("sub-1")));
    // Subscribe without `since`: no `recovered`, no publications.
    assert_eq!(
        keys(&r["result"]),
        set(&["room", "epoch", "offset", "publications"])
    );
    assert_eq!(r["result"]["publications"], json!([]));

    // Pipelined commands are answered in order.
    for i in 0..50 {
        a.send(&json!({"type": "ping", "id": i})).await;
    }
    for i in 0..50 {
        assert_eq!(a.recv().await, json!({"type": "pong", "id": i}));
    }

    // Invalid ids: bad_request with "id": null, naming the field.
    for id in [
        json!(9_007_199_254_740_992u64),
        json!(-1),
        json!(1.5),
        json!("y".repeat(65)),
        json!(true),
        json!({"a": 1}),
    ] {
        a.send(&json!({"type": "ping", "id": id})).await;
        let before = a.sync().await;
        assert_eq!(before.len(), 1, "{id}: {before:?}");
        let e = &before[0];
        assert_eq!(
            (&e["type"], &e["code"]),
            (&json!("error"), &json!("bad_request"))
        );
        assert!(
            e.as_object().unwrap().contains_key("id") && e["id"].is_null(),
            "{e}"
        );
        assert!(e["message"].as_str().unwrap().contains("'id'"), "{e}");
    }

    // `"id": null` is no id.
    a.send_text(r#"{"type":"ping","id":null}"#).await;
    assert_eq!(a.sync().await, vec![json!({"type": "pong"})]);

    // Without id: no reply, but the command is carried out.
    a.send(&json!({"type": "subscribe", "room": "chat:noid"}))
        .await;
    assert_eq!(a.sync().await, Vec::<Value>::new());
    let r = a.publish("chat:noid", json!("with id")).await;
    assert_eq!(r["offset"], 1);
    a.send(&json!({"type": "publish", "room": "chat:noid", "data": "no id"}))
        .await;
    let before = a.sync().await;
    assert!(
        before.iter().all(|v| v["type"] == "message"),
        "only message pushes may arrive: {before:?}"
    );
    let second = |v: &Value| v["type"] == "message" && v["offset"] == 2;
    let m = match before.into_iter().find(second) {
        Some(m) => m,
        None => a.expect("the second message", second).await,
    };
    assert_eq!(m["data"], "no id");
    // ...and a failing command without id gets an error with "id": null.
    a.send(&json!({"type": "subscribe", "room": "not a room"}))
        .await;
    let mut before = a.sync().await;
    before.retain(|v| v["type"] != "message");
    assert_eq!(before.len(), 1, "{before:?}");
    assert_eq!(before[0]["code"], "bad_room");
    assert!(before[0].as_object().unwrap().contains_key("id"));
    assert!(before[0]["id"].is_null());
}

#[tokio::test]
async fn malformed_commands_are_bad_request_naming_the_field_and_keep_the_connection() {
    let s = server();
    let mut a = s.connect("alice").await;
    let long_key = "k".repeat(129);
    // (text, code, what the message must name, id of the answer)
    let cases: Vec<(String, &str, &str, Value)> = vec![
        (
            r#"{"type":"ping","id":5,"#.into(),
            "bad_request",
            "invalid JSON",
            json!(5),
        ),
        (
            "not json".into(),
            "bad_request",
            "invalid JSON",
            Value::Null,
        ),
        ("[1,2]".into(), "bad_request", "object", Value::Null),
        (r#""ping""#.into(), "bad_request", "object", Value::Null),
        (r#"{"id":6}"#.into(), "bad_request", "'type'", json!(6)),
        (
            r#"{"id":7,"type":5}"#.into(),
            "bad_request",
            "'type'",
            json!(7),
        ),
        (
            r#"{"id":8,"type":"subscribe"}"#.into(),
            "bad_request",
            "'room'",
            json!(8),
        ),
        (
            r#"{"id":9,"type":"subscribe","room":5}"#.into(),
            "bad_request",
            "'room'",
            json!(9),
        ),
        (
            r#"{"id":10,"type":"subscribe","room":"chat:a","since":5}"#.into(),
            "bad_request",
            "'since'",
            json!(10),
        ),
        (
            r#"{"id":11,"type":"subscribe","room":"chat:a","since":{"epoch":"x"}}"#.into(),
            "bad_request",
            "'since.offset'",
            json!(11),
        ),
        (
            r#"{"id":12,"type":"subscribe","room":"chat:a","since":{"epoch":"x","offset":"1"}}"#
                .into(),
            "bad_request",
            "'since.offset'",
            json!(12),
        ),
        (
            r#"{"id":13,"type":"history","room":"chat:a","limit":-1}"#.into(),
            "bad_request",
            "'limit'",
            json!(13),
        ),
        (
            r#"{"id":14,"type":"publish","room":"chat:a","data":1,"echo":"yes"}"#.into(),
            "bad_request",
            "'echo'",
            json!(14),
        ),
        (
            r#"{"id":15,"type":"publish","room":"chat:a"}"#.into(),
            "bad_request",
            "'data'",
            json!(15),
        ),
        (
            r#"{"id":16,"type":"publish","room":"chat:a","room":"chat:b","data":1}"#.into(),
            "bad_request",
            "duplicate field 'room'",
            json!(16),
        ),
        (
            format!(
                r#"{{"id":17,"type":"publish","room":"chat:a","data":1,"idempotency_key":"{long_key}"}}"#
            ),
            "bad_request",
            "'idempotency_key'",
            json!(17),
        ),
        (
            r#"{"id":18,"type":"refresh"}"#.into(),
            "bad_request",
            "'token'",
            json!(18),
        ),
        (
            r#"{"id":19,"type":"presence","room":"chat:a","cursor":5}"#.into(),
            "bad_request",
            "'cursor'",
            json!(19),
        ),
        (
            r#"{"id":20,"type":"history","room":"chat:a","reverse":1}"#.into(),
            "bad_request",
            "'reverse'",
            json!(20),
        ),
        (
            r#"{"id":21,"type":"teleport","room":"chat:a"}"#.into(),
            "unknown_type",
            "teleport",
            json!(21),
        ),
    ];
    for (text, code, names, id) in &cases {
        a.send_text(text).await;
        let before = a.sync().await;
        assert_eq!(before.len(), 1, "{text}: {before:?}");
        let e = &before[0];
        assert_eq!(e["type"], "error", "{text}: {e}");
        assert_eq!(&e["code"], code, "{text}: {e}");
        assert_eq!(&e["id"], id, "{text}: {e}");
        let message = e["message"].as_str().unwrap();
        assert!(
            message.contains(names),
            "{text}: {message:?} should name {names}"
        );
    }

    // Unknown fields (and fields the type does not use) are ignored; null optionals are absent.
    let pong = a
        .request(json!({"type": "ping", "id": 30, "limit": "x", "future": {"a": [1]}}))
        .await;
    assert_eq!(pong, json!({"type": "pong", "id": 30}));
    let r = a
        .ok(
            json!({"type": "subscribe", "room": "chat:a", "since": null, "token": null,
                   "limit": null}),
        )
        .await;
    assert!(r.get("recovered").is_none(), "{r}");
    let r = a
        .ok(
            json!({"type": "history", "room": "chat:a", "limit": null, "since": null,
                   "reverse": null}),
        )
        .await;
    assert_eq!(r["publications"], json!([]));
    // rpc and auth: implemented as refusals.
    a.err(
        json!({"type": "rpc", "method": "orders.list", "data": {}}),
        "unavailable",
    )
    .await;
    let e = a
        .err(
            json!({"type": "auth", "token": token("alice")}),
            "bad_request",
        )
        .await;
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("already authenticated"),
        "{e}"
    );
    // None of that closed the connection.
    assert_eq!(a.sync().await, Vec::<Value>::new());
}

#[tokio::test]
async fn binary_message_is_bad_request_and_the_connection_stays_open() {
    let s = server();
    let mut a = s.connect("alice").await;
    a.ws.send(OpCode::Binary, &[0, 1, 2, 3]).await.unwrap();
    let before = a.sync().await;
    assert_eq!(before.len(), 1, "{before:?}");
    assert_eq!(before[0]["code"], "bad_request");
    assert!(before[0]["id"].is_null());
    assert!(before[0]["message"].as_str().unwrap().contains("binary"));
    a.subscribe("chat:bin").await;
}

// ---------------------------------------------------------------------------------------------
// 4. Rooms and subscriptions

#[tokio::test]
async fn room_names_namespaces_and_subscription_state_errors() {
    let s = server();
    let mut a = s.connect("alice").await;
    let long = "a".repeat(201);
    for room in ["", "not a room", "chat:ü", "chat:a#b", &long] {
        for t in ["subscribe", "unsubscribe", "publish", "presence", "history"] {
            let e = a
                .err(json!({"type": t, "room": room, "data": 1}), "bad_room")
                .await;
            assert!(e["message"].as_str().unwrap().contains("room"), "{e}");
        }
    }
    // 200 bytes of the allowed characters is a room (in the default namespace).
    let ok = format!("{}_-.@=/9", "A".repeat(193));
    assert_eq!(ok.len(), 200);
    a.subscribe(&ok).await;

    // strict_namespaces: a namespace that is not configured.
    for t in ["subscribe", "publish", "presence", "history"] {
        let e = a
            .err(
                json!({"type": t, "room": "nowhere:x", "data": 1}),
                "unknown_namespace",
            )
            .await;
        assert!(e["message"].as_str().unwrap().contains("'nowhere'"), "{e}");
    }

    // not_subscribed / already_subscribed.
    for t in ["unsubscribe", "publish", "presence", "history"] {
        a.err(
            json!({"type": t, "room": "chat:x", "data": 1}),
            "not_subscribed",
        )
        .await;
    }
    let r = a.subscribe("chat:x").await;
    assert_eq!(r["room"], "chat:x");
    a.err(
        json!({"type": "subscribe", "room": "chat:x"}),
        "already_subscribed",
    )
    .await;
    let r = a.ok(json!({"type": "unsubscribe", "room": "chat:x"})).await;
    assert_eq!(r, json!({}));
    a.err(
        json!({"type": "unsubscribe", "room": "chat:x"}),
        "not_subscribed",
    )
    .await;

    // After unsubscribe, publications no longer arrive. `a` subscribes before `c`, so the
    // fan-out reaches `a`'s queue before `c`'s: once `c` has the message, `a` would have it.
    a.subscribe("chat:gone").await;
    let mut c = s.connect("carol").await;
    c.subscribe("chat:gone").await;
    a.ok(json!({"type": "unsubscribe", "room": "chat:gone"}))
        .await;
    c.publish("chat:gone", json!("after")).await;
    c.push("message", "chat:gone").await;
    let before = a.sync().await;
    assert!(
        before.iter().all(|v| v["type"] != "message"),
        "message after unsubscribe: {before:?}"
    );
    // Resubscribing works and continues after the current offset.
    let r = a.subscribe("chat:gone").await;
    assert_eq!(r["offset"], 1);
}

#[tokio::test]
async fn forbidden_by_namespace_policy_personal_rooms_claims_and_tokens() {
    let s = server();
    let t = mint_token("alice", hours(1), &["vip:gold"], None, None);
    let mut a = Client::connect(&s.url(), Some(&t)).await;

    // publish = "none": subscribing is fine, publishing needs the server API.
    a.subscribe("news:today").await;
    let e = a
        .err(
            json!({"type": "publish", "room": "news:today", "data": 1}),
            "forbidden",
        )
        .await;
    assert!(e["message"].as_str().unwrap().contains("server API"), "{e}");

    // Personal rooms: only one's own, and never published to by clients.
    a.err(
        json!({"type": "subscribe", "room": "user:bob"}),
        "forbidden",
    )
    .await;
    a.err(
        json!({"type": "subscribe", "room": "user:alice:x"}),
        "forbidden",
    )
    .await;
    for room in ["user:alice", "user:bob"] {
        a.err(
            json!({"type": "publish", "room": room, "data": 1}),
            "forbidden",
        )
        .await;
    }
    // Unsubscribing from one's own personal room is allowed, and subscribing back too.
    a.ok(json!({"type": "unsubscribe", "room": "user:alice"}))
        .await;
    a.subscribe("user:alice").await;

    // subscribe = "claim": only the rooms of the `rooms` claim.
    a.err(
        json!({"type": "subscribe", "room": "vip:silver"}),
        "forbidden",
    )
    .await;
    a.ok(json!({"type": "unsubscribe", "room": "vip:gold"}))
        .await;
    a.subscribe("vip:gold").await;
    let mut b = s.connect("bob").await;
    b.err(
        json!({"type": "subscribe", "room": "vip:gold"}),
        "forbidden",
    )
    .await;

    // subscribe = "token": a subscription token for this user and room, with exp.
    let sub_token =
        |sub: &str, room: &str, ttl: Option<Duration>| mint_token(sub, ttl, &[], None, Some(room));
    // Each refusal with its documented message: the reason the token was refused.
    let needs_token = "this namespace needs a subscription token in 'token'";
    let refused = |reason: &str| format!("subscription token refused: {reason}");
    let cases = [
        (None, "no token", needs_token.to_string()),
        (
            Some(sub_token("alice", "priv:other", hours(1))),
            "another room",
            refused("bad_audience"),
        ),
        (
            Some(sub_token("bob", "priv:room", hours(1))),
            "another user",
            refused("bad_audience"),
        ),
        (
            Some(sub_token("alice", "priv:room", None)),
            "no exp",
            refused("malformed"),
        ),
        (Some(token("alice")), "no room claim", refused("malformed")),
        (
            Some("garbage".to_string()),
            "not a JWT",
            refused("malformed"),
        ),
        (
            Some(raw_token(
                jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
                &json!({"sub": "alice", "room": "priv:room", "exp": now() - 600}),
                SECRET,
            )),
            "expired",
            refused("expired"),
        ),
        (
            Some(raw_token(
                jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
                &json!({"sub": "alice", "room": "priv:room", "exp": now() + 3600}),
                "another-secret-of-at-least-32-bytes-0123456789",
            )),
            "signed with another secret",
            refused("bad_signature"),
        ),
    ];
    for (tok, why, message) in cases {
        let mut cmd = json!({"type": "subscribe", "room": "priv:room"});
        if let Some(tok) = tok {
            cmd["token"] = json!(tok);
        }
        let answer = a.request(cmd).await;
        assert_eq!(
            (&answer["type"], &answer["code"], &answer["message"]),
            (&json!("error"), &json!("forbidden"), &json!(message)),
            "{why}: {answer}"
        );
    }
    a.ok(json!({"type": "subscribe", "room": "priv:room",
               "token": sub_token("alice", "priv:room", hours(1))}))
        .await;
    assert_eq!(a.sync().await, Vec::<Value>::new());
}

#[tokio::test]
async fn anonymous_access_is_explicit_and_namespaces_decide() {
    let s = TestServer::start(&format!(
        r#"
[auth]
secret = "{SECRET}"
anonymous = true
[namespaces.open]
subscribe = "anyone"
publish = "authenticated"
[namespaces.lobby]
subscribe = "anyone"
"#
    ));
    let mut anon = Client::connect(&s.url(), None).await;
    let w = &anon.welcome;
    assert_eq!(w["user"], "");
    assert_eq!(w["expires"], Value::Null);
    assert_eq!(
        w["rooms"],
        json!({}),
        "no personal room for anonymous users"
    );
    // Default subscribe policy is "authenticated".
    anon.err(json!({"type": "subscribe", "room": "chat:x"}), "forbidden")
        .await;
    for room in ["user:", "user:alice"] {
        anon.err(json!({"type": "subscribe", "room": room}), "forbidden")
            .await;
    }
    anon.subscribe("open:x").await;
    anon.err(
        json!({"type": "publish", "room": "open:x", "data": 1}),
        "forbidden",
    )
    .await;
    anon.subscribe("lobby:x").await;
    let r = anon.publish("lobby:x", json!("hello")).await;
    assert_eq!(r["offset"], 1);
    let m = anon.push("message", "lobby:x").await;
    assert_eq!(m["from"]["user"], "");
    let p = anon
        .ok(json!({"type": "presence", "room": "lobby:x"}))
        .await;
    assert_eq!(p["members"][0]["user"], "");
    // An anonymous connection cannot become someone by refreshing.
    anon.err(
        json!({"type": "refresh", "token": token("alice")}),
        "forbidden",
    )
    .await;
    // Authenticated users still connect; a present but bad token is refused, not anonymous.
    let a = s.connect("alice").await;
    assert_eq!(a.welcome["user"], "alice");
    let bearer = "Bearer not-a-jwt";
    let (status, resp) = upgrade(s.addr(), "/ws", &[("Authorization", bearer)]);
    assert_eq!(status, 401, "{resp}");
    assert_eq!(body_json(&resp)["reason"], "malformed");
}

#[tokio::test]
async fn limits_on_subscriptions_per_connection_and_subscribers_per_room() {
    let s = server();
    let mut a = s.connect("alice").await;
    // 8 per connection, the personal room included.
    for i in 1..=7 {
        a.subscribe(&format!("chat:l{i}")).await;
    }
    let e = a
        .err(
            json!({"type": "subscribe", "room": "chat:l8"}),
            "limit_exceeded",
        )
        .await;
    assert!(e["message"].as_str().unwrap().contains('8'), "{e}");
    a.ok(json!({"type": "unsubscribe", "room": "chat:l1"}))
        .await;
    a.subscribe("chat:l8").await;

    // max_subscribers = 2 for small:*.
    let mut b = s.connect("bob").await;
    let mut c = s.connect("carol").await;
    let mut d = s.connect("dave").await;
    b.subscribe("small:room").await;
    c.subscribe("small:room").await;
    let e = d
        .err(
            json!({"type": "subscribe", "room": "small:room"}),
            "limit_exceeded",
        )
        .await;
    assert!(e["message"].as_str().unwrap().contains("small:room"), "{e}");
    // Another room of the namespace has its own count.
    d.subscribe("small:other").await;
    c.ok(json!({"type": "unsubscribe", "room": "small:room"}))
        .await;
    d.subscribe("small:room").await;
    // A disconnect frees the place too: once `b` has seen dave's leave, carol can come back.
    let dave = d.id();
    drop(d);
    b.expect("dave's leave", |v| {
        v["type"] == "leave" && v["room"] == "small:room" && v["member"]["connection"] == dave
    })
    .await;
    c.subscribe("small:room").await;
}

/// Many connections subscribing at the same moment to rooms with `max_subscribers = 2`: each
/// room ends with exactly two subscribers, and everyone else is refused with `limit_exceeded`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_subscribes_never_take_a_room_past_max_subscribers() {
    const CONNECTIONS: usize = 16;
    const ROOMS: usize = 10;
    let s = server();
    let mut clients = Vec::new();
    for n in 0..CONNECTIONS {
        clients.push(s.connect(&format!("racer{n}")).await);
    }
    for round in 0..ROOMS {
        let room = format!("small:race{round}");
        // Every subscribe is on the wire before any answer is read, so the server handles them
        // side by side.
        for c in &mut clients {
            c.send(&json!({"type": "subscribe", "id": round, "room": room}))
                .await;
        }
        let mut subscribed = Vec::new();
        for (n, c) in clients.iter_mut().enumerate() {
            let answer = c.answer(&json!(round)).await;
            match answer["type"].as_str() {
                Some("reply") => subscribed.push(n),
                _ => {
                    assert_eq!(answer["code"], "limit_exceeded", "{room}: {answer}");
                    assert!(
                        answer["message"].as_str().unwrap().contains(&room),
                        "{answer}"
                    );
                }
            }
        }
        assert_eq!(
            subscribed.len(),
            2,
            "{room}: {} subscribes succeeded at once with max_subscribers = 2",
            subscribed.len()
        );
        let presence = clients[subscribed[0]]
            .ok(json!({"type": "presence", "room": room, "limit": 0}))
            .await;
        assert_eq!(presence["connections"], 2, "{room}: {presence}");
        // Leave, so that no connection reaches subscriptions_per_connection.
        for &n in &subscribed {
            clients[n]
                .ok(json!({"type": "unsubscribe", "room": room}))
                .await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 5. Publications

#[tokio::test]
async fn publish_replies_with_the_offset_and_fans_out_with_from_and_echo() {
    let s = server();
    let t = mint_token("alice", hours(1), &[], Some(json!({"name": "A"})), None);
    let mut a = Client::connect(&s.url(), Some(&t)).await;
    let mut b = s.connect("bob").await;
    let sub = a.subscribe("chat:pub").await;
    let epoch = sub["epoch"].clone();
    b.subscribe("chat:pub").await;
    let r = a.publish("chat:pub", json!({"text": "hi"})).await;
    assert_eq!(r, json!({"room": "chat:pub", "epoch": epoch, "offset": 1}));
    let expected = json!({"type": "message", "room": "chat:pub", "epoch": epoch, "offset": 1,
        "data": {"text": "hi"},
        "from": {"user": "alice", "connection": a.id(), "info": {"name": "A"}}});
    assert_eq!(a.push("message", "chat:pub").await, expected);
    assert_eq!(b.push("message", "chat:pub").await, expected);

    // echo: false skips the publisher only.
    let r = a
        .ok(json!({"type": "publish", "room": "chat:pub", "data": 2, "echo": false}))
        .await;
    assert_eq!(r["offset"], 2);
    let r = a
        .ok(json!({"type": "publish", "room": "chat:pub", "data": 3, "echo": true}))
        .await;
    assert_eq!(r["offset"], 3);
    let m = a.push("message", "chat:pub").await;
    assert_eq!(
        m["offset"], 3,
        "the echo: false publication reached its publisher"
    );
    assert_eq!(b.push("message", "chat:pub").await["offset"], 2);
    assert_eq!(b.push("message", "chat:pub").await["offset"], 3);

    // `data` is any JSON value, passed as written; a member without info has no `info`.
    for data in [
        json!(null),
        json!("s"),
        json!(1.5),
        json!([1, {"a": []}]),
        json!({"deep": {"é": "ü"}}),
    ] {
        b.publish("chat:pub", data.clone()).await;
        let m = a.push("message", "chat:pub").await;
        assert_eq!(m["data"], data);
        assert_eq!(m["from"], json!({"user": "bob", "connection": b.id()}));
    }
    // Spliced verbatim, as the client wrote it: a fresh subscriber reads the raw frame.
    let mut v = s.connect("vera").await;
    v.subscribe("chat:pub").await;
    a.send_text(r#"{"type":"publish","id":77,"room":"chat:pub","data":{"b" : [1, 2.50]}}"#)
        .await;
    a.answer(&json!(77)).await;
    let text = match tokio::time::timeout(T, v.ws.recv()).await.unwrap().unwrap() {
        Some(Message::Text(t)) => t.as_str().to_string(),
        other => panic!("{other:?}"),
    };
    assert!(text.contains(r#""data":{"b" : [1, 2.50]}"#), "{text}");
}

#[tokio::test]
async fn ephemeral_publications_have_no_offset_and_are_not_kept() {
    let s = server();
    let mut a = s.connect("alice").await;
    let mut b = s.connect("bob").await;
    a.subscribe("chat:eph").await;
    b.subscribe("chat:eph").await;
    let r = a
        .ok(
            json!({"type": "publish", "room": "chat:eph", "data": {"typing": true},
                   "ephemeral": true}),
        )
        .await;
    assert_eq!(r, json!({"room": "chat:eph"}));
    let m = b.push("message", "chat:eph").await;
    assert_eq!(
        keys(&m),
        set(&["type", "room", "data", "from"]),
        "ephemeral push: {m}"
    );
    assert_eq!(m["data"], json!({"typing": true}));
    // It did not take an offset and is not in history.
    let r = a.publish("chat:eph", json!("kept")).await;
    assert_eq!(r["offset"], 1);
    let h = a.ok(json!({"type": "history", "room": "chat:eph"})).await;
    assert_eq!(offsets(&h["publications"]), vec![1]);
    assert_eq!(h["publications"][0]["data"], "kept");
}

#[tokio::test]
async fn idempotency_key_returns_the_first_offset_and_publishes_nothing_new() {
    let s = server();
    let mut a = s.connect("alice").await;
    let mut b = s.connect("bob").await;
    a.subscribe("chat:idem").await;
    a.subscribe("chat:idem2").await;
    b.subscribe("chat:idem").await;
    let first = a
        .ok(
            json!({"type": "publish", "room": "chat:idem", "data": "one",
                   "idempotency_key": "k1"}),
        )
        .await;
    assert_eq!(first["offset"], 1);
    // The retry (another payload, even) answers with the first offset.
    let again = a
        .ok(
            json!({"type": "publish", "room": "chat:idem", "data": "retry",
                   "idempotency_key": "k1"}),
        )
        .await;
    assert_eq!(again, first);
    // Keys are per room.
    let other = a
        .ok(json!({"type": "publish", "room": "chat:idem2", "data": "x",
                   "idempotency_key": "k1"}))
        .await;
    assert_eq!(other["offset"], 1);
    let next = a.publish("chat:idem", json!("two")).await;
    assert_eq!(next["offset"], 2);
    // Subscribers saw exactly two publications.
    let m1 = b.push("message", "chat:idem").await;
    let m2 = b.push("message", "chat:idem").await;
    assert_eq!((&m1["data"], &m1["offset"]), (&json!("one"), &json!(1)));
    assert_eq!((&m2["data"], &m2["offset"]), (&json!("two"), &json!(2)));
    let h = a.ok(json!({"type": "history", "room": "chat:idem"})).await;
    assert_eq!(offsets(&h["publications"]), vec![1, 2]);
}

// ---------------------------------------------------------------------------------------------
// 6. Presence and history

#[tokio::test]
async fn presence_pages_with_a_cursor_and_counts_connections_and_users() {
    let s = server();
    let alice_token = mint_token("alice", hours(1), &[], Some(json!({"n": "A"})), None);
    let mut clients = vec![
        Client::connect(&s.url(), Some(&alice_token)).await,
        Client::connect(&s.url(), Some(&alice_token)).await,
        s.connect("bob").await,
        s.connect("bob").await,
        s.connect("carol").await,
    ];
    for c in clients.iter_mut() {
        c.subscribe("chat:pres").await;
    }
    let ids: BTreeSet<String> = clients.iter().map(|c| c.id()).collect();
    let a = &mut clients[0];
    let mut seen = Vec::new();
    let mut cursor = Value::Null;
    let mut pages = Vec::new();
    loop {
        let p = a
            .ok(json!({"type": "presence", "room": "chat:pres", "limit": 2, "cursor": cursor}))
            .await;
        assert_eq!(
            (&p["connections"], &p["users"]),
            (&json!(5), &json!(3)),
            "{p}"
        );
        assert!(p.as_object().unwrap().contains_key("next_cursor"), "{p}");
        let members = p["members"].as_array().unwrap();
        pages.push(members.len());
        for m in members {
            if m["user"] == "alice" {
                assert_eq!(m["info"], json!({"n": "A"}), "{m}");
            } else {
                assert_eq!(keys(m), set(&["user", "connection"]), "{m}");
            }
            seen.push(m["connection"].as_str().unwrap().to_string());
        }
        cursor = p["next_cursor"].clone();
        if cursor.is_null() {
            break;
        }
        assert!(cursor.is_string(), "{p}");
    }
    assert_eq!(pages, vec![2, 2, 1]);
    assert_eq!(seen.len(), 5, "no member twice: {seen:?}");
    assert_eq!(seen.into_iter().collect::<BTreeSet<_>>(), ids);
    // Default limit: everyone in one page.
    let p = a.ok(json!({"type": "presence", "room": "chat:pres"})).await;
    assert_eq!(p["members"].as_array().unwrap().len(), 5);
    assert_eq!(p["next_cursor"], Value::Null);
    // A cursor the server did not give.
    let e = a
        .err(
            json!({"type": "presence", "room": "chat:pres", "cursor": "!!nope"}),
            "bad_request",
        )
        .await;
    assert!(e["message"].as_str().unwrap().contains("'cursor'"), "{e}");
    // limit 0: only the counts.
    let p = a
        .ok(json!({"type": "presence", "room": "chat:pres", "limit": 0}))
        .await;
    assert_eq!(
        p,
        json!({"members": [], "next_cursor": null, "connections": 5, "users": 3})
    );
    // Once a leave has arrived, presence no longer lists the one who left.
    let gone = clients.pop().unwrap();
    let gone_id = gone.id();
    drop(gone);
    let a = &mut clients[0];
    a.expect("carol's leave", |v| {
        v["type"] == "leave" && v["member"]["connection"] == gone_id
    })
    .await;
    let p = a.ok(json!({"type": "presence", "room": "chat:pres"})).await;
    assert_eq!(
        (&p["connections"], &p["users"]),
        (&json!(4), &json!(2)),
        "{p}"
    );
    assert!(
        p["members"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["connection"] != gone_id),
        "{p}"
    );
    // presence = false.
    a.subscribe("quiet:p").await;
    a.err(json!({"type": "presence", "room": "quiet:p"}), "forbidden")
        .await;
}

#[tokio::test]
async fn join_and_leave_reach_the_other_subscribers_only() {
    let s = server();
    let mut a = s.connect("alice").await;
    let mut b = s.connect("bob").await;
    a.subscribe("chat:jl").await;
    b.subscribe("chat:jl").await;
    let j = a.push("join", "chat:jl").await;
    assert_eq!(
        j,
        json!({"type": "join", "room": "chat:jl", "member": {"user": "bob", "connection": b.id()}})
    );
    // bob's join came before alice's next publication in the room's order; bob never got it.
    // (He may get alice's own join if the server had not fanned it out yet when he arrived.)
    a.publish("chat:jl", json!(1)).await;
    b.push("message", "chat:jl").await;
    let bob = b.id();
    assert!(
        b.backlog
            .iter()
            .all(|v| v["type"] != "join" || v["member"]["connection"] != bob),
        "bob got his own join: {:?}",
        b.backlog
    );
    // Unsubscribe: leave to the others.
    b.ok(json!({"type": "unsubscribe", "room": "chat:jl"}))
        .await;
    let l = a.push("leave", "chat:jl").await;
    assert_eq!(l["member"], json!({"user": "bob", "connection": b.id()}));
    // Disconnect (TCP dropped, no close handshake): leave too.
    let mut c = s.connect("carol").await;
    c.subscribe("chat:jl").await;
    let j = a.push("join", "chat:jl").await;
    let carol = c.id();
    assert_eq!(j["member"]["connection"], carol);
    drop(c);
    let l = a.push("leave", "chat:jl").await;
    assert_eq!(l["member"], json!({"user": "carol", "connection": carol}));

    // join_leave = false: nothing, not even for the others.
    a.subscribe("quiet:jl").await;
    b.subscribe("quiet:jl").await;
    b.publish("quiet:jl", json!("x")).await;
    a.push("message", "quiet:jl").await;
    b.ok(json!({"type": "unsubscribe", "room": "quiet:jl"}))
        .await;
    b.subscribe("quiet:jl").await;
    b.publish("quiet:jl", json!("y")).await;
    let m = a.push("message", "quiet:jl").await;
    assert_eq!(m["data"], "y");
    let frames = a.sync().await;
    assert!(
        frames
            .iter()
            .all(|v| v["room"] != "quiet:jl" || v["type"] == "message"),
        "{frames:?}"
    );
}

#[tokio::test]
async fn history_with_limit_reverse_since_and_epoch_errors() {
    let s = server();
    let mut a = s.connect("alice").await;
    a.err(
        json!({"type": "history", "room": "hist:h"}),
        "not_subscribed",
    )
    .await;
    let sub = a.subscribe("hist:h").await;
    let epoch = sub["epoch"].as_str().unwrap().to_string();
    let h = a.ok(json!({"type": "history", "room": "hist:h"})).await;
    assert_eq!(h, json!({"epoch": epoch, "offset": 0, "publications": []}));
    for i in 1..=8 {
        a.publish("hist:h", json!({"i": i})).await;
    }
    let history = |extra: Value| {
        let mut cmd = json!({"type": "history", "room": "hist:h"});
        for (k, v) in extra.as_object().unwrap() {
            cmd[k] = v.clone();
        }
        cmd
    };
    // history_size = 5: the last five are kept; the default limit is history_size.
    let h = a.ok(history(json!({}))).await;
    assert_eq!((&h["epoch"], &h["offset"]), (&json!(epoch), &json!(8)));
    assert_eq!(offsets(&h["publications"]), vec![4, 5, 6, 7, 8]);
    let p = &h["publications"][0];
    assert_eq!(keys(p), set(&["offset", "data", "from"]), "{p}");
    assert_eq!(p["data"], json!({"i": 4}));
    assert_eq!(p["from"]["user"], "alice");
    // limit and its clamp, reverse.
    let h = a.ok(history(json!({"limit": 2}))).await;
    assert_eq!(offsets(&h["publications"]), vec![4, 5]);
    let h = a.ok(history(json!({"limit": 2, "reverse": true}))).await;
    assert_eq!(offsets(&h["publications"]), vec![8, 7]);
    let h = a.ok(history(json!({"limit": 1000}))).await;
    assert_eq!(offsets(&h["publications"]), vec![4, 5, 6, 7, 8]);
    let h = a.ok(history(json!({"limit": 0}))).await;
    assert_eq!((&h["offset"], &h["publications"]), (&json!(8), &json!([])));
    // since: after that offset, oldest first (reverse ignored).
    let since = json!({"epoch": epoch, "offset": 6});
    let h = a.ok(history(json!({"since": since}))).await;
    assert_eq!(offsets(&h["publications"]), vec![7, 8]);
    let h = a
        .ok(history(
            json!({"since": since, "limit": 1, "reverse": true}),
        ))
        .await;
    assert_eq!(offsets(&h["publications"]), vec![7]);
    let h = a
        .ok(history(json!({"since": {"epoch": epoch, "offset": 8}})))
        .await;
    assert_eq!(h["publications"], json!([]));
    // since from another epoch: bad_request naming the epoch.
    let e = a
        .err(
            history(json!({"since": {"epoch": "e-old", "offset": 3}})),
            "bad_request",
        )
        .await;
    let message = e["message"].as_str().unwrap();
    assert!(
        message.contains("e-old") && message.contains(&epoch),
        "{message}"
    );
    assert!(message.contains("since.epoch"), "{message}");
}

// ---------------------------------------------------------------------------------------------
// 3. Liveness, 2.3 expiry and refresh, 7. limits

#[tokio::test]
async fn application_ping_is_answered_with_pong() {
    let s = server();
    let mut a = s.connect("alice").await;
    a.send_text(r#"{"type":"ping","id":3}"#).await;
    assert_eq!(a.recv().await, json!({"type": "pong", "id": 3}));
    a.send_text(r#"{"type":"ping"}"#).await;
    assert_eq!(a.recv().await, json!({"type": "pong"}));
    a.send_text(r#"{"type":"ping","id":"p"}"#).await;
    assert_eq!(a.recv().await, json!({"type": "pong", "id": "p"}));
}

#[tokio::test]
async fn refresh_extends_expiry_for_the_same_user_only() {
    let s = server();
    let mut a = s.connect("alice").await;
    let e1 = a.welcome["expires"].as_u64().unwrap();
    let r = a
        .ok(json!({"type": "refresh",
                   "token": mint_token("alice", hours(2), &[], None, None)}))
        .await;
    let e2 = r["expires"].as_u64().expect("expires");
    assert!(e2 >= e1 + 3599, "{e1} -> {e2}");
    assert_eq!(keys(&r), set(&["expires"]));
    // Another user: forbidden. A bad or expired token: unauthorized with the reason.
    a.err(
        json!({"type": "refresh", "token": token("bob")}),
        "forbidden",
    )
    .await;
    let e = a
        .err(
            json!({"type": "refresh", "token": "garbage"}),
            "unauthorized",
        )
        .await;
    assert!(e["message"].as_str().unwrap().contains("malformed"), "{e}");
    let expired = raw_token(
        jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "alice", "exp": now() - 600}),
        SECRET,
    );
    let e = a
        .err(json!({"type": "refresh", "token": expired}), "unauthorized")
        .await;
    assert!(e["message"].as_str().unwrap().contains("expired"), "{e}");
    // A token without exp: the connection no longer expires.
    let r = a
        .ok(json!({"type": "refresh", "token": mint_token("alice", None, &[], None, None)}))
        .await;
    assert_eq!(r, json!({"expires": null}));
    assert_eq!(a.sync().await, Vec::<Value>::new());
}

#[tokio::test]
async fn refresh_required_is_pushed_and_an_expired_connection_is_closed_with_4501() {
    let s = server();
    // `refreshed` expires before `lapsing`: if its refresh did not count, it would be closed
    // first. Its refresh must reach the server before its own expiry: 6 s (`exp` is in whole
    // seconds: 5 to 6) for two connects and a refresh on a loaded machine. `lapsing` expires
    // 3 s after it, which orders the two closes even with a late timer, and within `T` of any
    // moment after its token was minted, so `closed()` sees its close.
    // (Two users, so that neither sees the other's join in a shared personal room.)
    let mut refreshed = Client::connect(
        &s.url(),
        Some(&mint_token(
            "rita",
            Some(Duration::from_secs(6)),
            &[],
            None,
            None,
        )),
    )
    .await;
    let mut lapsing = Client::connect(
        &s.url(),
        Some(&mint_token(
            "lars",
            Some(Duration::from_secs(9)),
            &[],
            None,
            None,
        )),
    )
    .await;
    for c in [&mut refreshed, &mut lapsing] {
        let push = c.recv().await;
        assert_eq!(
            push,
            json!({"type": "refresh_required", "expires": c.welcome["expires"]}),
            "less than 30 s left: refresh_required right after the welcome"
        );
    }
    let r = refreshed
        .ok(json!({"type": "refresh", "token": token("rita")}))
        .await;
    assert!(r["expires"].as_u64().unwrap() > now() + 3000);
    assert_eq!(lapsing.closed().await, Some(4501));
    assert_eq!(refreshed.sync().await, Vec::<Value>::new());
}

#[tokio::test]
async fn a_token_expired_within_the_leeway_connects_and_is_closed_with_4501_at_once() {
    // A leeway of 60 s and a token expired 30 s ago: the connect has 30 s to happen within the
    // leeway (with the default 5 s, a slow connect could fall out of it).
    let s = TestServer::start(&format!(
        r#"
[auth]
secret = "{SECRET}"
leeway = 60
"#
    ));
    let t = raw_token(
        jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "alice", "exp": now() - 30}),
        SECRET,
    );
    let mut a = Client::connect(&s.url(), Some(&t)).await;
    assert!(a.welcome["expires"].as_u64().unwrap() < now());
    assert_eq!(a.closed().await, Some(4501));
}

#[tokio::test]
async fn idle_connection_is_closed_with_4504_and_pongs_keep_it_alive() {
    // Pings every second, and 4 s of silence allowed: each pong may come up to 3 s late on a
    // loaded machine without the connection being taken for idle.
    let s = TestServer::start(&format!(
        r#"
[auth]
secret = "{SECRET}"
[websocket]
ping_interval = "1s"
idle_timeout = "4s"
"#
    ));
    let bearer = format!("Bearer {}", token("alice"));
    let mut raw = RawWs::connect(s.addr(), "/ws", &[("Authorization", &bearer)], None).await;
    let (op, welcome) = raw.frame(T).await.unwrap();
    assert_eq!(op, OP_TEXT);
    assert_eq!(
        serde_json::from_slice::<Value>(&welcome).unwrap()["ping_interval"],
        1
    );
    // Answer pings for longer than idle_timeout: the connection stays open.
    let answering = std::time::Instant::now();
    let mut pings = 0;
    while answering.elapsed() < Duration::from_secs(6) {
        let (op, payload) = raw.frame(T).await.expect("a ping");
        assert_eq!(
            op, OP_PING,
            "expected a ping after {pings} answered, got opcode {op} {payload:?}"
        );
        let mut pong = vec![0x8a, 0x80 | payload.len() as u8, 0, 0, 0, 0];
        pong.extend_from_slice(&payload);
        tokio::io::AsyncWriteExt::write_all(&mut raw.stream, &pong)
            .await
            .unwrap();
        pings += 1;
    }
    // Then go silent: more pings, then close 4504.
    let code = loop {
        match raw.frame(T).await {
            Some((OP_PING, _)) => {}
            Some((OP_CLOSE, payload)) => break u16::from_be_bytes([payload[0], payload[1]]),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(code, 4504);
}

#[tokio::test]
async fn a_message_larger_than_max_message_size_closes_with_1009() {
    let s = server();
    let mut a = s.connect("alice").await;
    a.subscribe("chat:big").await;
    // Just under the limit (16 KiB): fine.
    let data = "x".repeat(16 * 1024 - 100);
    let r = a.publish("chat:big", json!(data)).await;
    assert_eq!(r["offset"], 1);
    let m = a.push("message", "chat:big").await;
    assert_eq!(m["data"].as_str().unwrap().len(), data.len());
    // Over it: 1009.
    let cmd = json!({"type": "publish", "room": "chat:big", "data": "y".repeat(16 * 1024)});
    a.send(&cmd).await;
    assert_eq!(a.closed().await, Some(1009));
}
