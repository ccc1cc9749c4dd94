//! TLS on the listener (`[tls]`): every surface over TLS (a WebSocket of the v1 protocol and
//! of the echo route, an SSE stream, /healthz, the server API), a plaintext request refused
//! cleanly, and reloading the certificate: new connections get the new one, an open WebSocket
//! stays usable, a broken key keeps the old certificate. The certificates come from an rcgen
//! CA of the test's own, in a temporary directory; the client is tokio-rustls trusting it.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use bytes::BytesMut;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls_pki_types::{CertificateDer, ServerName};
use switchboard_protocol::{
    Role,
    codec::{Decoder, DecoderConfig, Encoder, Message},
    frame::OpCode,
    handshake::ClientHandshake,
};
use switchboard_server::{
    Node,
    auth::{HmacAlgorithm, MintClaims, mint},
    config::{ApiKeyConfig, Config},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_rustls::client::TlsStream;

const SECRET: &str = "switchboard-tls-tests-secret-0123456789abcdef";
const API_KEY: &str = "tls-tests-api-key-0123456789";
const T: Duration = Duration::from_secs(10);

/// A CA of the test's own and the server's certificate and key files, signed by it.
struct Pki {
    dir: tempfile::TempDir,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
}

impl Pki {
    fn new() -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = params.self_signed(&ca_key).unwrap();
        let pki = Pki {
            dir: tempfile::tempdir().unwrap(),
            ca,
            ca_key,
        };
        pki.issue();
        pki
    }

    /// The CA's certificate in a PEM file (what clients are given with `ca`).
    fn ca_file(&self) -> PathBuf {
        let path = self.dir.path().join("ca.pem");
        std::fs::write(&path, self.ca.pem()).unwrap();
        path
    }

    fn cert_path(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    fn key_path(&self) -> PathBuf {
        self.dir.path().join("key.pem")
    }

    /// A new key and certificate for 127.0.0.1 and localhost, written over the files; the
    /// certificate's DER.
    fn issue(&self) -> CertificateDer<'static> {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap()
            .signed_by(&key, &self.ca, &self.ca_key)
            .unwrap();
        std::fs::write(self.cert_path(), cert.pem()).unwrap();
        std::fs::write(self.key_path(), key.serialize_pem()).unwrap();
        cert.der().clone()
    }

    fn connector(&self) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        #[allow(deprecated, reason = "the ring provider is what this build has")]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}

struct Running {
    node: Node,
    addr: SocketAddr,
    pki: Pki,
    shutdown: tokio_util::sync::CancellationToken,
    served: tokio::task::JoinHandle<bool>,
}

impl Running {
    async fn tls(&self) -> TlsStream<TcpStream> {
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        let name = ServerName::try_from("127.0.0.1").unwrap();
        tokio::time::timeout(T, self.pki.connector().connect(name, tcp))
            .await
            .expect("handshake in time")
            .expect("the server's certificate verifies against the test CA")
    }

    /// A GET over TLS (`connection: close`): the status and the body.
    async fn get(&self, target: &str, headers: &[(&str, &str)]) -> (u16, String) {
        let mut s = self.tls().await;
        let mut req = format!("GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(T, s.read_to_end(&mut out))
            .await
            .expect("the answer in time")
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        (head[9..12].parse().unwrap(), body.to_owned())
    }

    async fn ws(&self, target: &str) -> Wss {
        Wss::connect(self.tls().await, target).await
    }
}

async fn start() -> Running {
    let pki = Pki::new();
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        personal_rooms: false,
        ..Config::default()
    };
    config.auth.secret = Some(SECRET.into());
    config.echo.path = Some("/echo".into());
    config.api.keys.push(ApiKeyConfig {
        name: "test".into(),
        key: API_KEY.into(),
    });
    config.tls.cert = Some(pki.cert_path());
    config.tls.key = Some(pki.key_path());
    let node = Node::new(config).unwrap();
    let server = node.server().bind().await.unwrap();
    assert!(server.is_tls());
    let addr = server.local_addr().unwrap();
    let shutdown = server.shutdown_token();
    let served = tokio::spawn(server.run(std::future::pending()));
    Running {
        node,
        addr,
        pki,
        shutdown,
        served,
    }
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

/// A WebSocket client over a TLS stream (the protocol crate's handshake and codec).
struct Wss {
    stream: TlsStream<TcpStream>,
    decoder: Decoder,
    encoder: Encoder,
    rbuf: BytesMut,
}

impl Wss {
    async fn connect(mut stream: TlsStream<TcpStream>, target: &str) -> Wss {
        let hs = ClientHandshake::new("localhost", target, &[], false, &[]);
        stream.write_all(&hs.request).await.unwrap();
        let mut rbuf = BytesMut::with_capacity(4096);
        loop {
            let n = tokio::time::timeout(T, stream.read_buf(&mut rbuf))
                .await
                .expect("the handshake answer in time")
                .unwrap();
            assert!(n > 0, "closed during the handshake");
            if let Some((_, used)) = hs.parse_response(&rbuf).unwrap() {
                let _ = rbuf.split_to(used);
                break;
            }
        }
        Wss {
            stream,
            decoder: Decoder::new(Role::Client, DecoderConfig::default(), None),
            encoder: Encoder::new(Role::Client, None, usize::MAX),
            rbuf,
        }
    }

    async fn send(&mut self, text: &str) {
        let mut out = BytesMut::new();
        self.encoder.encode(OpCode::Text, text.as_bytes(), &mut out);
        self.stream.write_all(&out).await.unwrap();
    }

    /// The next text message (pings are skipped).
    async fn text(&mut self) -> String {
        loop {
            if let Some(m) = self.decoder.decode(&mut self.rbuf).unwrap() {
                match m {
                    Message::Text(t) => return t.as_str().to_owned(),
                    Message::Ping(_) | Message::Pong(_) => continue,
                    other => panic!("expected a text message, got {other:?}"),
                }
            }
            let n = tokio::time::timeout(T, self.stream.read_buf(&mut self.rbuf))
                .await
                .expect("a message in time")
                .unwrap();
            assert!(n > 0, "the connection closed");
        }
    }

    async fn json(&mut self) -> serde_json::Value {
        serde_json::from_str(&self.text().await).unwrap()
    }
}

/// The certificate a TLS stream's server presented.
fn presented(s: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    s.get_ref().1.peer_certificates().unwrap()[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_surface_is_served_over_tls() {
    let running = start().await;
    // WebSocket, v1 protocol: welcome, subscribe, publish, the publication comes back.
    let mut ws = running.ws(&format!("/ws?token={}", token("alice"))).await;
    let welcome = ws.json().await;
    assert_eq!(
        (welcome["type"].as_str(), welcome["user"].as_str()),
        (Some("welcome"), Some("alice")),
        "{welcome}"
    );
    ws.send(r#"{"type":"subscribe","id":1,"room":"chat"}"#)
        .await;
    assert_eq!(ws.json().await["type"], "reply");
    ws.send(r#"{"type":"publish","id":2,"room":"chat","data":{"n":7}}"#)
        .await;
    let mut got = Vec::new();
    while got.len() < 2 {
        let m = ws.json().await;
        got.push(m["type"].as_str().unwrap().to_owned());
        if m["type"] == "message" {
            assert_eq!(m["data"]["n"], 7, "{m}");
        }
    }
    got.sort();
    assert_eq!(got, ["message", "reply"]);
    // The echo route: a message of more than one TLS record comes back whole.
    let mut echo = running.ws("/echo").await;
    let big = "x".repeat(60_000);
    echo.send(&big).await;
    assert_eq!(echo.text().await, big);
    echo.send("hello").await;
    assert_eq!(echo.text().await, "hello");

    // SSE: the stream (served off hyper) starts with its welcome event.
    let mut sse = running.tls().await;
    let req = format!(
        "GET /sse?room=chat HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\nAuthorization: Bearer {}\r\n\r\n",
        token("bob")
    );
    sse.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    while !String::from_utf8_lossy(&raw).contains("event: welcome") {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(T, sse.read(&mut buf))
            .await
            .expect("the SSE welcome in time")
            .unwrap();
        assert!(
            n > 0,
            "the stream closed: {}",
            String::from_utf8_lossy(&raw)
        );
        raw.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&raw).to_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    // A publication reaches the stream.
    running
        .node
        .publish(
            "chat",
            switchboard_server::node::Publish {
                data: bytes::Bytes::from_static(b"{\"n\":8}"),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    while !String::from_utf8_lossy(&raw).contains("\"n\":8") {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(T, sse.read(&mut buf))
            .await
            .expect("the SSE publication in time")
            .unwrap();
        assert!(n > 0, "the stream closed");
        raw.extend_from_slice(&buf[..n]);
    }

    // Plain HTTP surfaces, through hyper.
    let (status, body) = running.get("/healthz", &[]).await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    let auth = format!("apikey {API_KEY}");
    let (status, body) = running
        .get("/api/info", &[("Authorization", auth.as_str())])
        .await;
    assert_eq!(status, 200, "{body}");
    let info: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(info.to_string().contains(running.node.id()), "{info}");
    let (status, body) = running.get("/metrics", &[]).await;
    assert_eq!(status, 200);
    assert!(body.contains("switchboard_"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_request_to_the_tls_port_is_closed() {
    let running = start().await;
    let mut tcp = TcpStream::connect(running.addr).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    // The server closes the connection (at most a TLS alert first); no HTTP answer.
    let _ = tokio::time::timeout(T, tcp.read_to_end(&mut out))
        .await
        .expect("the connection closed in time");
    assert!(!out.starts_with(b"HTTP/"), "{out:?}");
    // The server goes on serving.
    assert_eq!(running.get("/healthz", &[]).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_serves_the_new_certificate_and_keeps_open_connections() {
    let running = start().await;
    let mut before = running.ws("/echo").await;
    let old = presented(&before.stream);
    assert_eq!(presented(&running.tls().await), old);

    let new = running.pki.issue();
    assert_ne!(new, old);
    assert!(running.node.reload_tls().unwrap());
    assert_eq!(presented(&running.tls().await), new);
    // The connection opened before the reload keeps its session and works.
    before.send("still here").await;
    assert_eq!(before.text().await, "still here");
    let mut after = running.ws("/echo").await;
    after.send("new").await;
    assert_eq!(after.text().await, "new");

    // A broken key: the error names tls.key and the certificate stays.
    std::fs::write(running.pki.key_path(), "not a key\n").unwrap();
    let e = running.node.reload_tls().unwrap_err().to_string();
    assert!(e.contains("tls.key"), "{e}");
    assert!(e.contains("no private key in"), "{e}");
    assert_eq!(presented(&running.tls().await), new);
    // A key of another certificate is refused too.
    let other = KeyPair::generate().unwrap();
    std::fs::write(running.pki.key_path(), other.serialize_pem()).unwrap();
    let e = running.node.reload_tls().unwrap_err().to_string();
    assert!(e.contains("tls.key"), "{e}");
    // A missing certificate names tls.cert.
    std::fs::remove_file(running.pki.cert_path()).unwrap();
    let e = running.node.reload_tls().unwrap_err().to_string();
    assert!(e.contains("tls.cert") && e.contains("cannot read"), "{e}");
    assert_eq!(presented(&running.tls().await), new);
    before.send("and still").await;
    assert_eq!(before.text().await, "and still");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_unreadable_tls_files_does_not_start() {
    let pki = Pki::new();
    let mut config = Config::default();
    config.auth.secret = Some(SECRET.into());
    config.tls.cert = Some(pki.dir.path().join("missing.pem"));
    config.tls.key = Some(pki.key_path());
    let e = Node::new(config.clone()).unwrap_err().to_string();
    assert!(
        e.contains("tls.cert") && e.contains("cannot read") && e.contains("missing.pem"),
        "{e}"
    );
    config.tls.cert = Some(pki.cert_path());
    config.tls.key = Some(pki.cert_path());
    let e = Node::new(config).unwrap_err().to_string();
    assert!(
        e.contains("tls.key") && e.contains("no private key in"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_speaks_wss_with_a_ca_file() {
    let running = start().await;
    let ca = running.pki.ca_file();
    // The plain WebSocket client: the echo route.
    let options = switchboard_client::WsOptions {
        ca: Some(ca.clone()),
        ..Default::default()
    };
    let url = format!("wss://127.0.0.1:{}/echo", running.addr.port());
    let mut ws = switchboard_client::WsStream::connect(&url, &options)
        .await
        .unwrap();
    ws.send_text("over tls").await.unwrap();
    match tokio::time::timeout(T, ws.recv()).await.unwrap().unwrap() {
        Some(Message::Text(t)) => assert_eq!(t.as_str(), "over tls"),
        other => panic!("{other:?}"),
    }
    // Without the CA the server's certificate is not trusted.
    let e = switchboard_client::WsStream::connect(&url, &Default::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.to_lowercase().contains("certificate"), "{e}");
    // The protocol client: welcome, subscribe, publish and receive.
    let mut options = switchboard_client::ClientOptions::new(format!(
        "wss://127.0.0.1:{}/ws",
        running.addr.port()
    ));
    options.ca = Some(ca);
    options.token = Some(token("carol"));
    let client = switchboard_client::Client::connect(options).await.unwrap();
    assert_eq!(client.welcome().user, "carol");
    let mut sub = client.subscribe("chat").await.unwrap();
    client
        .publish("chat", &serde_json::json!({"n": 9}), Default::default())
        .await
        .unwrap();
    let event = tokio::time::timeout(T, sub.recv()).await.unwrap().unwrap();
    assert!(format!("{event:?}").contains("9"), "{event:?}");
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_tls_connections_without_waiting_for_clients() {
    let running = start().await;
    let mut ws = running.ws("/echo").await;
    ws.send("before").await;
    assert_eq!(ws.text().await, "before");
    // An idle keep-alive HTTPS connection, and one that never sends a request.
    let mut idle = running.tls().await;
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let _silent = running.tls().await;
    let started = std::time::Instant::now();
    running.shutdown.cancel();
    // The WebSocket is closed with 1001 over TLS; the client answers the close.
    loop {
        if let Some(m) = ws.decoder.decode(&mut ws.rbuf).unwrap() {
            match m {
                Message::Close(frame) => {
                    assert_eq!(frame.unwrap().code.0, 1001);
                    break;
                }
                _ => continue,
            }
        }
        let n = tokio::time::timeout(T, ws.stream.read_buf(&mut ws.rbuf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed without a close frame");
    }
    let mut out = BytesMut::new();
    ws.encoder.encode_close(None, &mut out);
    ws.stream.write_all(&out).await.unwrap();
    // Every connection drains (the relays do not wait for the silent clients).
    let drained = tokio::time::timeout(T, running.served)
        .await
        .unwrap()
        .unwrap();
    assert!(drained);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}

/// Megabytes both ways at once through the relay: every message comes back whole and in
/// order (the socket pair and rustls' buffers under backpressure). The client keeps at most
/// 16 messages (640 KB) unanswered, so that it is not a slow consumer (4500 beyond 1 MiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_echo_in_both_directions_at_once() {
    let running = start().await;
    let ws = running.ws("/echo").await;
    let Wss {
        stream,
        mut decoder,
        mut encoder,
        mut rbuf,
    } = ws;
    let (mut rd, mut wr) = tokio::io::split(stream);
    const N: usize = 300;
    const SIZE: usize = 40_000;
    let window = Arc::new(tokio::sync::Semaphore::new(16));
    let permits = window.clone();
    let writer = tokio::spawn(async move {
        for i in 0..N {
            permits.acquire().await.unwrap().forget();
            let text = vec![b'a' + (i % 26) as u8; SIZE];
            let mut out = BytesMut::new();
            encoder.encode(OpCode::Binary, &text, &mut out);
            wr.write_all(&out).await.unwrap();
        }
        wr
    });
    let mut got = 0;
    while got < N {
        if let Some(m) = decoder.decode(&mut rbuf).unwrap() {
            match m {
                Message::Binary(b) => {
                    let want = b'a' + (got % 26) as u8;
                    assert_eq!(b.len(), SIZE);
                    assert!(b.iter().all(|c| *c == want), "message {got}");
                    got += 1;
                    window.add_permits(1);
                }
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("{other:?}"),
            }
            continue;
        }
        let n = tokio::time::timeout(T, rd.read_buf(&mut rbuf))
            .await
            .expect("echoes keep coming")
            .unwrap();
        assert!(n > 0, "closed after {got} messages");
    }
    writer.await.unwrap();
}
