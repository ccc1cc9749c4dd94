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

// --- JWKS (auth.jwks) ---

/// The test keys and tokens of the JWKS tests, shared with the HTTPS ones.
mod jwks_keys {
    pub(crate) use super::jwks::{jwk, set, token};
}

mod jwks {
    use std::{
        net::SocketAddr,
        sync::{Arc, Mutex},
        time::Duration,
    };

    use axum::{Router, extract::State, http::StatusCode, routing::get};
    use base64::Engine;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use switchboard_server::{Node, config::Config};
    use tokio::sync::watch;

    use super::raw_http::upgrade;

    /// Two Ed25519 key pairs (test keys, made with `openssl genpkey -algorithm ed25519`).
    const KEYS: [(&str, &str); 2] = [
        (
            "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIDcu3vPs42LqZIdx3zmDX7f+S8W3goUVJwxvMkXRAa6e\n-----END PRIVATE KEY-----\n",
            "MCowBQYDK2VwAyEAXKuBWxuQSR+nyGOX4DUTOj2yv+QSGiGUBWnow8qSK3w=",
        ),
        (
            "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIM3GHkgB+FZYyundJiyv9LBsB9o08Zvtc/ZQdcFUdswe\n-----END PRIVATE KEY-----\n",
            "MCowBQYDK2VwAyEAYRpkT4vA00gyjyVdL1gjSE+yes1QGsSxwpZBNdxxYzs=",
        ),
    ];

    /// The JWK of key `i` under `kid`: the raw public key is the last 32 bytes of the SPKI.
    pub(crate) fn jwk(i: usize, kid: &str) -> serde_json::Value {
        let der = base64::engine::general_purpose::STANDARD
            .decode(KEYS[i].1)
            .unwrap();
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&der[der.len() - 32..]);
        serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig"})
    }

    pub(crate) fn set(keys: &[serde_json::Value]) -> String {
        serde_json::json!({ "keys": keys }).to_string()
    }

    /// A token of `user` signed with key `i`, naming `kid`.
    pub(crate) fn token(i: usize, kid: &str, user: &str) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(kid.into());
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600;
        jsonwebtoken::encode(
            &header,
            &serde_json::json!({"sub": user, "exp": exp}),
            &EncodingKey::from_ed_pem(KEYS[i].0.as_bytes()).unwrap(),
        )
        .unwrap()
    }

    /// A tiny JWKS endpoint: what it answers can be changed, and it counts the requests.
    struct Issuer {
        addr: SocketAddr,
        answer: Arc<Mutex<(StatusCode, String)>>,
        hits: watch::Receiver<u32>,
    }

    impl Issuer {
        async fn start(body: String) -> Issuer {
            type Shared = (Arc<Mutex<(StatusCode, String)>>, Arc<watch::Sender<u32>>);
            let answer = Arc::new(Mutex::new((StatusCode::OK, body)));
            let (tx, hits) = watch::channel(0u32);
            let app = Router::new()
                .route(
                    "/jwks.json",
                    get(|State((answer, hits)): State<Shared>| async move {
                        let (status, body) = answer.lock().unwrap().clone();
                        hits.send_modify(|n| *n += 1);
                        (status, body)
                    }),
                )
                .with_state((answer.clone(), Arc::new(tx)));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move { axum::serve(listener, app).await });
            Issuer { addr, answer, hits }
        }

        fn serve(&self, status: StatusCode, body: String) {
            *self.answer.lock().unwrap() = (status, body);
        }

        fn url(&self) -> String {
            format!("http://{}/jwks.json", self.addr)
        }

        /// Waits until the endpoint has been asked `n` times in all.
        async fn wait_hits(&mut self, n: u32) {
            tokio::time::timeout(super::T, self.hits.wait_for(|h| *h >= n))
                .await
                .expect("the JWKS endpoint is asked in time")
                .unwrap();
        }
    }

    fn config(jwks: String, refresh: Duration) -> Config {
        let mut c = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            personal_rooms: false,
            ..Config::default()
        };
        c.auth.algorithms = vec!["EdDSA".into()];
        c.auth.jwks = Some(jwks);
        c.auth.jwks_refresh = refresh;
        c
    }

    async fn serve(node: &Node) -> SocketAddr {
        let server = node.server().bind().await.unwrap();
        let addr = server.local_addr().unwrap();
        tokio::spawn(server.run(std::future::pending()));
        addr
    }

    async fn status(addr: SocketAddr, token: &str) -> (u16, serde_json::Value) {
        let (answer, _) = upgrade(addr, 1, "HTTP/1.1", &format!("/ws?token={token}"), &[]).await;
        let body = if answer.status == 101 {
            serde_json::Value::Null
        } else {
            answer.json()
        };
        (answer.status, body)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_new_kid_refreshes_the_set_and_an_unknown_one_is_unknown_key() {
        let mut issuer = Issuer::start(set(&[jwk(0, "k1")])).await;
        let node = Node::from_config(config(issuer.url(), Duration::from_secs(3600)))
            .await
            .unwrap();
        issuer.wait_hits(1).await;
        let addr = serve(&node).await;
        assert_eq!(status(addr, &token(0, "k1", "ann")).await.0, 101);

        // The provider rotates in a new key: its first token fetches the set again.
        issuer.serve(StatusCode::OK, set(&[jwk(0, "k1"), jwk(1, "k2")]));
        assert_eq!(status(addr, &token(1, "k2", "ann")).await.0, 101);
        assert_eq!(*issuer.hits.borrow(), 2);

        // A kid nobody publishes: unknown_key, and no second fetch within 10 s.
        let (code, body) = status(addr, &token(1, "k3", "ann")).await;
        assert_eq!((code, body["reason"].as_str()), (401, Some("unknown_key")));
        assert_eq!(*issuer.hits.borrow(), 2);
        // A key with the right kid but the wrong key material is a bad signature.
        let (code, body) = status(addr, &token(0, "k2", "ann")).await;
        assert_eq!(
            (code, body["reason"].as_str()),
            (401, Some("bad_signature"))
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_refresh_keeps_the_last_good_set() {
        let mut issuer = Issuer::start(set(&[jwk(0, "k1")])).await;
        let node = Node::from_config(config(issuer.url(), Duration::from_secs(3600)))
            .await
            .unwrap();
        let addr = serve(&node).await;
        issuer.serve(StatusCode::INTERNAL_SERVER_ERROR, "down".into());
        // An unknown kid makes the server ask (and fail) before it answers.
        let (code, body) = status(addr, &token(1, "k9", "bo")).await;
        assert_eq!((code, body["reason"].as_str()), (401, Some("unknown_key")));
        issuer.wait_hits(2).await;
        // The set of before still verifies.
        assert_eq!(status(addr, &token(0, "k1", "bo")).await.0, 101);
        // Not JSON at all: the same.
        issuer.serve(StatusCode::OK, "<html>".into());
        node.access().verifier().load_jwks().await.unwrap_err();
        assert!(
            node.access()
                .verifier()
                .verify(&token(0, "k1", "bo"))
                .is_ok()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_set_is_refreshed_on_schedule() {
        let mut issuer = Issuer::start(set(&[jwk(0, "k1")])).await;
        let node = Node::from_config(config(issuer.url(), Duration::from_secs(1)))
            .await
            .unwrap();
        issuer.serve(StatusCode::OK, set(&[jwk(1, "k2")]));
        // The first scheduled fetch is answered with the new set; the one after it proves
        // the first was applied (the refresher does one at a time).
        issuer.wait_hits(3).await;
        let verifier = node.access().verifier();
        assert!(verifier.verify(&token(1, "k2", "cy")).is_ok());
        // The rotated-out key is gone.
        assert!(verifier.verify(&token(0, "k1", "cy")).is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_set_that_cannot_be_loaded_at_start_is_an_error_naming_the_key() {
        let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/jwks.json", unused.local_addr().unwrap());
        drop(unused);
        let e = Node::from_config(config(url, Duration::from_secs(300)))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("auth.jwks: cannot load the key set"), "{e}");

        for url in [
            "http://jwks.example/keys",
            "ftp://x/keys",
            "file://relative",
        ] {
            let e = Node::new(config(url.into(), Duration::from_secs(300)))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("auth.jwks: "), "{e}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_set_is_read_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, set(&[jwk(1, "file-key")])).unwrap();
        let node = Node::new(config(
            format!("file://{}", path.display()),
            Duration::from_secs(300),
        ))
        .unwrap();
        let addr = serve(&node).await;
        assert_eq!(status(addr, &token(1, "file-key", "dee")).await.0, 101);
        let (code, body) = status(addr, &token(0, "file-key", "dee")).await;
        assert_eq!(
            (code, body["reason"].as_str()),
            (401, Some("bad_signature"))
        );
    }
}

mod jwks_https {
    use std::{sync::Arc, time::Duration};

    use http_body_util::Full;
    use hyper_util::rt::TokioIo;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    use switchboard_server::{Node, config::Config};

    use super::jwks_keys::{jwk, set, token};

    /// A JWKS endpoint over TLS with a certificate for 127.0.0.1 from a CA of its own;
    /// returns its URL and the CA's PEM.
    async fn start(body: String) -> (String, String) {
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
                let body = body.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |_req| {
                        let body = body.clone();
                        async move {
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                                bytes::Bytes::from(body),
                            )))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        (format!("https://{addr}/jwks.json"), ca_cert.pem())
    }

    fn config(url: String, ca: Option<String>) -> Config {
        let mut c = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..Config::default()
        };
        c.auth.algorithms = vec!["EdDSA".into()];
        c.auth.jwks = Some(url);
        c.auth.jwks_ca = ca;
        c.auth.jwks_refresh = Duration::from_secs(3600);
        c
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_https_set_is_fetched_with_the_configured_ca_and_refused_without_it() {
        let (url, ca_pem) = start(set(&[jwk(0, "tls-key")])).await;
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, ca_pem).unwrap();

        let node = Node::from_config(config(url.clone(), Some(ca.display().to_string())))
            .await
            .unwrap();
        assert!(
            node.access()
                .verifier()
                .verify(&token(0, "tls-key", "ivy"))
                .is_ok()
        );

        // Without the CA the server's certificate is not trusted: the start fails, naming
        // the key.
        let e = Node::from_config(config(url, None))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("auth.jwks: cannot load the key set: TLS"),
            "{e}"
        );

        // A CA file that is not one names auth.jwks_ca.
        let bogus = dir.path().join("bogus.pem");
        std::fs::write(&bogus, "not a certificate").unwrap();
        let e = Node::new(config(
            "https://127.0.0.1:1/jwks.json".into(),
            Some(bogus.display().to_string()),
        ))
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("auth.jwks_ca: "), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_can_send_its_token_as_the_first_message() {
    use switchboard_client::{Client, ClientOptions};
    let addr = start(first_message).await;
    let mut options = ClientOptions::new(format!("ws://{addr}/ws"));
    options.token = Some(token("hal", Duration::from_secs(3600)));
    options.token_as_first_message = true;
    let client = Client::connect(options.clone()).await.unwrap();
    assert_eq!(client.welcome().user, "hal");
    client.close().await;

    // A bad token: the 4001 close ends the attempt.
    options.token = Some("not-a-jwt".into());
    let e = Client::connect(options).await.unwrap_err();
    assert_eq!(e.close_code(), Some(4001), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_user_limit_applies_when_auth_names_the_user() {
    let addr = start(|c| {
        first_message(c);
        c.limits.connections_per_user = 1;
    })
    .await;
    let t = token("ivan", Duration::from_secs(3600));
    let mut first = connect(addr, &format!("?token={t}")).await;
    assert_eq!(json(&mut first).await["type"], "welcome");
    let mut second = connect(addr, "").await;
    second
        .send_text(&format!(r#"{{"type":"auth","id":1,"token":"{t}"}}"#))
        .await
        .unwrap();
    assert_eq!(
        closed(&mut second).await,
        (4503, "connections_per_user".to_owned())
    );
    // Another user is not affected.
    let mut third = connect(addr, "").await;
    let other = token("judy", Duration::from_secs(3600));
    third
        .send_text(&format!(r#"{{"type":"auth","id":1,"token":"{other}"}}"#))
        .await
        .unwrap();
    assert_eq!(json(&mut third).await["user"], "judy");
}
