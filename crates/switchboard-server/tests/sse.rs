//! Server-Sent Events streams over loopback (docs/protocol.md section 8), read with a raw
//! `TcpStream` that decodes the chunked event stream.

use std::time::Duration;

use bytes::Bytes;
use switchboard_server::{
    Node,
    auth::{HmacAlgorithm, MintClaims, mint},
    config::Config,
    node::Publish,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const SECRET: &str = "switchboard-sse-tests-secret-0123456789abcdef";
const T: Duration = Duration::from_secs(10);

struct Running {
    node: Node,
    addr: std::net::SocketAddr,
}

async fn start(edit: impl FnOnce(&mut Config)) -> Running {
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        personal_rooms: false,
        ..Config::default()
    };
    config.auth.secret = Some(SECRET.into());
    edit(&mut config);
    let node = Node::new(config).unwrap();
    let server = node.server().bind().await.unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(server.run(std::future::pending()));
    Running { node, addr }
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

/// One event of the stream: its name, `id:` and data.
#[derive(Debug, Clone, Default)]
struct Event {
    name: String,
    id: Option<String>,
    data: String,
}

impl Event {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).unwrap()
    }
}

struct Sse {
    stream: TcpStream,
    raw: Vec<u8>,
    body: Vec<u8>,
    status: u16,
    headers: String,
    ended: bool,
}

impl Sse {
    async fn open(addr: std::net::SocketAddr, target: &str, headers: &[(&str, &str)]) -> Sse {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let mut req =
            format!("GET {target} HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut sse = Sse {
            stream,
            raw: Vec::new(),
            body: Vec::new(),
            status: 0,
            headers: String::new(),
            ended: false,
        };
        loop {
            if let Some(end) = sse.raw.windows(4).position(|w| w == b"\r\n\r\n") {
                sse.headers = String::from_utf8_lossy(&sse.raw[..end]).to_lowercase();
                sse.status = sse.headers[9..12].parse().unwrap();
                sse.raw.drain(..end + 4);
                break;
            }
            assert!(
                sse.fill().await,
                "connection closed before the response head"
            );
        }
        sse
    }

    async fn fill(&mut self) -> bool {
        let mut buf = [0u8; 8192];
        let n = tokio::time::timeout(T, self.stream.read(&mut buf))
            .await
            .expect("timed out waiting for the stream")
            .unwrap_or(0);
        self.raw.extend_from_slice(&buf[..n]);
        n > 0
    }

    /// Moves complete chunks from `raw` to `body`.
    fn dechunk(&mut self) {
        loop {
            let Some(line) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                return;
            };
            let size =
                usize::from_str_radix(std::str::from_utf8(&self.raw[..line]).unwrap().trim(), 16)
                    .unwrap();
            if self.raw.len() < line + 2 + size + 2 {
                return;
            }
            if size == 0 {
                self.ended = true;
            }
            self.body
                .extend_from_slice(&self.raw[line + 2..line + 2 + size]);
            self.raw.drain(..line + 2 + size + 2);
        }
    }

    /// The next event (comments and `retry:` skipped), or `None` at the end of the stream.
    async fn next(&mut self) -> Option<Event> {
        loop {
            self.dechunk();
            while let Some(end) = self.body.windows(2).position(|w| w == b"\n\n") {
                let block = String::from_utf8(self.body[..end].to_vec()).unwrap();
                self.body.drain(..end + 2);
                let mut event = Event {
                    name: "message".into(),
                    ..Event::default()
                };
                let mut data = Vec::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        event.name = v.into();
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        event.id = Some(v.into());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push(v);
                    }
                }
                if !data.is_empty() {
                    event.data = data.join("\n");
                    return Some(event);
                }
            }
            if self.ended || !self.fill().await {
                return None;
            }
        }
    }

    async fn expect(&mut self, name: &str) -> Event {
        let e = self.next().await.expect("the stream ended");
        assert_eq!(e.name, name, "{e:?}");
        e
    }

    /// Reads until the stream ends; the events read on the way.
    async fn until_end(&mut self) -> Vec<Event> {
        let mut seen = Vec::new();
        while let Some(e) = self.next().await {
            seen.push(e);
        }
        seen
    }
}

async fn publish(node: &Node, room: &str, n: u64) -> u64 {
    node.publish(
        room,
        Publish {
            data: Bytes::from(format!(r#"{{"n":{n}}}"#)),
            ..Default::default()
        },
    )
    .await
    .unwrap()
    .position
    .unwrap()
    .offset
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn welcome_messages_with_cursors_and_join_leave() {
    let running = start(|_| {}).await;
    let t = token("alice", Duration::from_secs(3600));
    let auth = format!("Bearer {t}");
    let mut sse = Sse::open(
        running.addr,
        "/sse?room=chat:a&room=chat:b",
        &[("Authorization", &auth)],
    )
    .await;
    assert_eq!(sse.status, 200);
    assert!(sse.headers.contains("content-type: text/event-stream"));
    assert!(sse.headers.contains("cache-control: no-cache"));
    assert!(sse.headers.contains("x-accel-buffering: no"));
    let welcome = sse.expect("welcome").await.json();
    assert_eq!(welcome["user"], "alice");
    assert!(welcome["connection"].as_str().unwrap().starts_with("c_"));
    assert!(welcome["expires"].as_u64().is_some());
    // Our own join is not sent to us (as with WebSocket).

    publish(&running.node, "chat:a", 1).await;
    let m = sse.expect("message").await;
    assert_eq!(m.json()["data"]["n"], 1);
    let id = m.id.clone().expect("a publication carries the cursor");
    let cursor = switchboard_protocol::sse::decode_cursor(&id, 2).unwrap();
    assert_eq!(cursor.len(), 2, "the cursor covers every room: {cursor:?}");
    assert!(cursor.iter().any(|(r, _, o)| r == "chat:a" && *o == 1));
    assert!(cursor.iter().any(|(r, _, o)| r == "chat:b" && *o == 0));

    // A second member of chat:b joins and leaves.
    let mut other = Sse::open(
        running.addr,
        &format!(
            "/sse?room=chat:b&token={}",
            token("bob", Duration::from_secs(3600))
        ),
        &[],
    )
    .await;
    other.expect("welcome").await;
    let join = sse.expect("join").await.json();
    assert_eq!(
        (join["room"].as_str(), join["member"]["user"].as_str()),
        (Some("chat:b"), Some("bob"))
    );
    drop(other);
    let leave = sse.expect("leave").await.json();
    assert_eq!(leave["member"]["user"], "bob");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_with_last_event_id_recovers_exactly_what_was_missed() {
    let running = start(|_| {}).await;
    let target = format!(
        "/sse?room=chat:r&token={}",
        token("alice", Duration::from_secs(3600))
    );
    let mut sse = Sse::open(running.addr, &target, &[]).await;
    sse.expect("welcome").await;
    publish(&running.node, "chat:r", 1).await;
    let id = sse.expect("message").await.id.unwrap();
    drop(sse);
    for n in 2..=4 {
        publish(&running.node, "chat:r", n).await;
    }
    let mut sse = Sse::open(running.addr, &target, &[("Last-Event-ID", &id)]).await;
    sse.expect("welcome").await;
    let mut got = Vec::new();
    while got.len() < 3 {
        let e = sse.next().await.unwrap();
        if e.name == "message" {
            got.push(e.json()["data"]["n"].as_u64().unwrap());
        }
    }
    assert_eq!(got, [2, 3, 4]);
    publish(&running.node, "chat:r", 5).await;
    loop {
        let e = sse.next().await.unwrap();
        if e.name == "message" {
            assert_eq!(e.json()["data"]["n"], 5, "live follows, no duplicate");
            break;
        }
    }
    // The same with `?since=`.
    let mut again = Sse::open(running.addr, &format!("{target}&since={id}"), &[]).await;
    again.expect("welcome").await;
    let mut got = Vec::new();
    while got.len() < 4 {
        let e = again.next().await.unwrap();
        if e.name == "message" {
            got.push(e.json()["data"]["n"].as_u64().unwrap());
        }
    }
    assert_eq!(got, [2, 3, 4, 5]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_whose_history_was_removed_gets_a_reset() {
    let running = start(|_| {}).await;
    let target = format!(
        "/sse?room=chat:h&token={}",
        token("alice", Duration::from_secs(3600))
    );
    let mut sse = Sse::open(running.addr, &target, &[]).await;
    sse.expect("welcome").await;
    publish(&running.node, "chat:h", 1).await;
    let id = loop {
        let e = sse.next().await.unwrap();
        if e.name == "message" {
            break e.id.unwrap();
        }
    };
    drop(sse);
    running.node.history_remove("chat:h").await.unwrap();
    let mut sse = Sse::open(running.addr, &target, &[("Last-Event-ID", &id)]).await;
    sse.expect("welcome").await;
    let reset = sse.expect("reset").await;
    let data = reset.json();
    assert_eq!(data["room"], "chat:h");
    assert!(
        data["epoch"].is_string() && data["offset"].is_u64(),
        "{data}"
    );
    assert!(reset.id.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_json_statuses_before_the_stream() {
    let running = start(|c| c.personal_rooms = true).await;
    let t = token("alice", Duration::from_secs(3600));
    let cases = [
        ("/sse?room=chat:x".to_string(), 401),
        ("/sse?room=chat:x&token=garbage".to_string(), 401),
        (format!("/sse?token={t}"), 400),
        (format!("/sse?room=user:bob&token={t}"), 403),
        (
            format!("/sse?room=chat:x&since=v1.nonsense!&token={t}"),
            400,
        ),
    ];
    for (target, status) in cases {
        let mut sse = Sse::open(running.addr, &target, &[]).await;
        assert_eq!(sse.status, status, "{target}");
        assert!(sse.headers.contains("application/json"), "{target}");
        while !sse.raw.ends_with(b"}") && sse.fill().await {}
        let body = String::from_utf8_lossy(&sse.raw).to_string();
        assert!(body.contains("\"error\""), "{target}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_and_the_server_api_end_the_stream() {
    let running = start(|_| {}).await;
    let target = format!(
        "/sse?room=chat:e&token={}",
        token("alice", Duration::from_secs(2))
    );
    let mut sse = Sse::open(running.addr, &target, &[]).await;
    sse.expect("welcome").await;
    sse.until_end().await;
    assert!(sse.ended, "the stream ends with its last chunk");

    let target = format!(
        "/sse?room=chat:e&token={}",
        token("bob", Duration::from_secs(3600))
    );
    let mut sse = Sse::open(running.addr, &target, &[]).await;
    sse.expect("welcome").await;
    running
        .node
        .disconnect_user("bob", switchboard_server::Disconnect::GOING_AWAY)
        .await
        .unwrap();
    sse.until_end().await;
    assert!(sse.ended);
}

/// An expiry more than two ping intervals away arms no timer when the stream opens: the
/// sweeper's visit that finds it near wakes the stream to arm one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_far_expiry_is_armed_by_the_sweeper() {
    let running = start(|c| c.sse.ping_interval = Duration::from_millis(200)).await;
    let target = format!(
        "/sse?room=chat:f&token={}",
        token("alice", Duration::from_secs(2))
    );
    let opened = std::time::Instant::now();
    let mut sse = Sse::open(running.addr, &target, &[]).await;
    sse.expect("welcome").await;
    sse.until_end().await;
    assert!(sse.ended, "the stream ends with its last chunk");
    // Pings kept it alive until then: it ended at the expiry (whole seconds, so 1 to 2 s).
    assert!(opened.elapsed() >= Duration::from_millis(900));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_stream_ends() {
    let running =
        start(|c| c.websocket.outbound_queue = switchboard_server::config::ByteSize(16 * 1024))
            .await;
    let target = format!(
        "/sse?room=chat:s&token={}",
        token("alice", Duration::from_secs(3600))
    );
    let mut sse = Sse::open(running.addr, &target, &[]).await;
    sse.expect("welcome").await;
    // Nobody reads: the kernel's buffers fill, hyper stops asking, the queue passes its bound.
    let big = "x".repeat(32 * 1024);
    for _ in 0..200 {
        running
            .node
            .publish(
                "chat:s",
                Publish {
                    data: Bytes::from(format!(r#""{big}""#)),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
    }
    let events = sse.until_end().await;
    assert!(sse.ended, "the stream ends");
    let messages = events.iter().filter(|e| e.name == "message").count();
    assert!(
        messages < 200,
        "{messages} of 200 arrived: the stream should have ended early"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_streams_get_pings_and_shutdown_ends_them() {
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        personal_rooms: false,
        ..Config::default()
    };
    config.auth.secret = Some(SECRET.into());
    config.sse.ping_interval = Duration::from_millis(100);
    let node = Node::new(config).unwrap();
    let server = node.server().bind().await.unwrap();
    let addr = server.local_addr().unwrap();
    let shutdown = server.shutdown_token();
    let run = tokio::spawn(server.run(std::future::pending()));
    let target = format!(
        "/sse?room=chat:p&token={}",
        token("alice", Duration::from_secs(3600))
    );
    let mut sse = Sse::open(addr, &target, &[]).await;
    sse.expect("welcome").await;
    // Comments are not events: look for one in what the stream sent.
    loop {
        sse.dechunk();
        if sse.body.windows(8).any(|w| w == b": ping\n\n") {
            break;
        }
        assert!(sse.fill().await, "the stream ended before a ping");
    }
    shutdown.cancel();
    sse.until_end().await;
    assert!(sse.ended, "shutdown ends the stream with its last chunk");
    assert!(
        tokio::time::timeout(T, run).await.unwrap().unwrap(),
        "drained in time"
    );
}
