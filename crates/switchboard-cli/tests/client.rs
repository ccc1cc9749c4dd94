//! The protocol client (`switchboard-client`) end to end: against the real `switchboard`
//! binary over loopback, and against a scripted fake server where the test needs the server
//! to do something exact (never answer, send duplicates, close with a given code).

mod common;

use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::BytesMut;
use common::ServerProcess;
use serde_json::{Value, json};
use switchboard_client::{
    Client, ClientOptions, ConnectionState, Disconnect, Error, ErrorCode, Event, HistoryQuery,
    MessagePush, PublishOptions, ReconnectPolicy, StreamPosition, Subscription, SubscriptionEvent,
    TokenProvider,
};
use switchboard_protocol::{
    CloseCode, CloseFrame, Role,
    codec::{Decoder, DecoderConfig, Encoder, Message},
    frame::OpCode,
    handshake::accept_key,
};
use switchboard_server::auth::{self, HmacAlgorithm, MintClaims};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{
        Semaphore,
        broadcast::{self, error::RecvError},
    },
};

/// The servers of these tests are configured with this secret (not development mode).
const SECRET: &str = "client-tests-secret-0123456789abcdefghij";

/// How long any awaited event may take before the test fails.
const T: Duration = Duration::from_secs(10);

fn token(user: &str) -> String {
    let claims = MintClaims {
        sub: user.into(),
        ttl: Some(Duration::from_secs(3600)),
        ..MintClaims::default()
    };
    auth::mint(SECRET.as_bytes(), HmacAlgorithm::HS256, &claims)
}

fn start_server(args: &[&str]) -> ServerProcess {
    // These tests publish as fast as the client goes: no command rate limit.
    ServerProcess::start_with_env(
        args,
        &[
            ("SWITCHBOARD_AUTH__SECRET", SECRET),
            ("SWITCHBOARD_LIMITS__COMMANDS_PER_SECOND", "0"),
        ],
    )
}

/// Options with a token for `user` and quick reconnects.
fn options(url: &str, user: &str) -> ClientOptions {
    let mut options = ClientOptions::new(url);
    options.token = Some(token(user));
    options.reconnect =
        ReconnectPolicy::with_delays(Duration::from_millis(20), Duration::from_millis(200));
    options
}

async fn connect(server: &ServerProcess, user: &str) -> Client {
    Client::connect(options(&server.ws_url("/ws"), user))
        .await
        .expect("connect")
}

async fn next(sub: &mut Subscription) -> SubscriptionEvent {
    tokio::time::timeout(T, sub.recv())
        .await
        .expect("a subscription event within 10 s")
        .expect("the subscription is open")
}

async fn next_message(sub: &mut Subscription) -> MessagePush {
    match next(sub).await {
        SubscriptionEvent::Message(m) => m,
        other => panic!("expected a message, got {other:?}"),
    }
}

fn data(m: &MessagePush) -> Value {
    serde_json::from_str(m.data.get()).unwrap()
}

/// Waits for the first event that `want` accepts.
async fn wait_event(
    events: &mut broadcast::Receiver<Event>,
    want: impl Fn(&Event) -> bool,
) -> Event {
    tokio::time::timeout(T, async {
        loop {
            match events.recv().await {
                Ok(event) if want(&event) => return event,
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => panic!("the event stream ended"),
            }
        }
    })
    .await
    .expect("the awaited event within 10 s")
}

fn no_echo() -> PublishOptions {
    PublishOptions {
        echo: false,
        ..PublishOptions::default()
    }
}

// ------------------------------------------------------------------ against the real server

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_publish_receive_and_the_other_commands() {
    let server = start_server(&[]);
    let alice = connect(&server, "alice").await;
    let bob = connect(&server, "bob").await;
    let welcome = alice.welcome();
    assert_eq!(welcome.user, "alice");
    assert!(welcome.rooms.contains_key("user:alice"), "{welcome:?}");
    assert!(matches!(alice.state(), ConnectionState::Connected { .. }));

    let mut alice_events = alice.events();
    let mut a = alice.subscribe("chat:lobby").await.unwrap();
    assert_eq!(
        (a.room(), a.info().offset, a.info().recovered),
        ("chat:lobby", 0, None)
    );
    let mut b = bob.subscribe("chat:lobby").await.unwrap();
    let Event::Join(join) = wait_event(&mut alice_events, |e| matches!(e, Event::Join(_))).await
    else {
        unreachable!()
    };
    assert_eq!(
        (join.room.as_str(), &*join.member.user),
        ("chat:lobby", "bob")
    );

    // Publish, receive (with echo), without echo, ephemeral.
    let reply = bob
        .publish(
            "chat:lobby",
            &json!({"text": "hi"}),
            PublishOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!((&*reply.room, reply.offset), ("chat:lobby", Some(1)));
    let epoch = reply.epoch.clone().unwrap().into_owned();
    let m = next_message(&mut a).await;
    assert_eq!((m.offset, data(&m)), (Some(1), json!({"text": "hi"})));
    assert_eq!(m.from.as_ref().map(|f| &*f.user), Some("bob"));
    assert_eq!(next_message(&mut b).await.offset, Some(1));
    let reply = bob
        .publish("chat:lobby", "second", no_echo())
        .await
        .unwrap();
    assert_eq!(reply.offset, Some(2));
    let reply = bob
        .publish("chat:lobby", &3, PublishOptions::default())
        .await
        .unwrap();
    assert_eq!(reply.offset, Some(3));
    // Bob's next message is 3: 2 was not echoed.
    assert_eq!(next_message(&mut b).await.offset, Some(3));
    let m = next_message(&mut a).await;
    assert_eq!((m.offset, data(&m)), (Some(2), json!("second")));
    assert_eq!(next_message(&mut a).await.offset, Some(3));
    let ephemeral = PublishOptions {
        ephemeral: true,
        ..PublishOptions::default()
    };
    let reply = alice
        .publish("chat:lobby", &json!({"typing": true}), ephemeral)
        .await
        .unwrap();
    assert_eq!((reply.epoch, reply.offset), (None, None));
    let m = next_message(&mut b).await;
    assert!(m.is_ephemeral());
    assert_eq!(data(&m), json!({"typing": true}));

    // Presence, history, ping.
    let presence = alice.presence("chat:lobby", None, None).await.unwrap();
    assert_eq!((presence.connections, presence.users), (2, 2));
    let history = alice
        .history("chat:lobby", HistoryQuery::default())
        .await
        .unwrap();
    let offsets: Vec<u64> = history.publications.iter().map(|p| p.offset).collect();
    assert_eq!(offsets, [1, 2, 3]);
    let query = HistoryQuery {
        since: Some(StreamPosition::new(epoch.clone(), 2)),
        ..HistoryQuery::default()
    };
    let history = alice.history("chat:lobby", query).await.unwrap();
    assert_eq!(history.publications.len(), 1);
    assert_eq!(history.publications[0].offset, 3);
    alice.ping().await.unwrap();

    // Errors.
    let e = alice
        .publish("chat:other", &1, no_echo())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotSubscribed), "{e}");
    let e = alice.subscribe("bad room!").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::BadRoom), "{e}");
    let e = alice.subscribe("chat:lobby").await.unwrap_err();
    assert!(matches!(e, Error::Usage(_)), "{e}");

    // Unsubscribe ends the subscription; subscribe with since recovers.
    bob.unsubscribe("chat:lobby").await.unwrap();
    assert!(tokio::time::timeout(T, b.recv()).await.unwrap().is_none());
    let mut b = bob
        .subscribe_with(
            "chat:lobby",
            Some(StreamPosition::new(epoch.clone(), 1)),
            None,
        )
        .await
        .unwrap();
    assert_eq!(b.info().recovered, Some(true));
    let m = next_message(&mut b).await;
    assert_eq!((m.offset, data(&m)), (Some(2), json!("second")));
    assert_eq!(next_message(&mut b).await.offset, Some(3));
    // A since of another epoch: a reset first.
    bob.unsubscribe("chat:lobby").await.unwrap();
    let mut b = bob
        .subscribe_with("chat:lobby", Some(StreamPosition::new("old", 7)), None)
        .await
        .unwrap();
    assert_eq!(b.info().recovered, Some(false));
    match next(&mut b).await {
        SubscriptionEvent::Reset { epoch: e, offset } => assert_eq!((e, offset), (epoch, 3)),
        other => panic!("expected a reset, got {other:?}"),
    }

    // Dropping a subscription unsubscribes: Alice sees Bob leave a third time.
    drop(b);
    for _ in 0..3 {
        wait_event(
            &mut alice_events,
            |e| matches!(e, Event::Leave(p) if p.member.user == "bob"),
        )
        .await;
    }
    let presence = alice.presence("chat:lobby", None, None).await.unwrap();
    assert_eq!(presence.connections, 1);

    // The personal room is adopted, not subscribed twice.
    let personal = alice.subscribe("user:alice").await.unwrap();
    assert_eq!(personal.info().epoch, welcome.rooms["user:alice"].epoch);

    // Close: final, and calls fail.
    alice.close().await;
    assert!(matches!(
        alice.state(),
        ConnectionState::Closed {
            disconnect: Some(Disconnect {
                code: CloseCode(1000),
                ..
            }),
            ..
        }
    ));
    assert!(matches!(alice.ping().await, Err(Error::Closed(_))));
    // The subscription ends: what was delivered, then the end.
    let mut last = None;
    while let Some(event) = tokio::time::timeout(T, a.recv()).await.unwrap() {
        last = Some(event);
    }
    assert!(
        matches!(last, Some(SubscriptionEvent::Unsubscribed { .. })),
        "{last:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_report_the_status() {
    let server = start_server(&[]);
    let mut options = ClientOptions::new(server.ws_url("/ws"));
    let e = Client::connect(options.clone()).await.unwrap_err();
    assert_eq!(e.http_status(), Some(401), "{e}");
    assert!(e.to_string().contains("missing"), "{e}");
    options.token = Some("not.a.jwt".into());
    let e = Client::connect(options).await.unwrap_err();
    assert_eq!(e.http_status(), Some(401), "{e}");
    assert!(e.to_string().contains("malformed"), "{e}");
}

/// A server process on a given address (ServerProcess always listens on port 0), killed on
/// drop.
struct ServerAt {
    child: Child,
    _dir: tempfile::TempDir,
}

impl ServerAt {
    fn start(addr: SocketAddr) -> Self {
        use std::io::{BufRead, BufReader};
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(["serve", "--listen", &addr.to_string()])
            .current_dir(dir.path())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env("SWITCHBOARD_AUTH__SECRET", SECRET)
            .env("SWITCHBOARD_LIMITS__COMMANDS_PER_SECOND", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        loop {
            let line = rx
                .recv_timeout(Duration::from_secs(20))
                .expect("the restarted server printed 'listening'");
            if line.contains("listening") {
                break;
            }
        }
        ServerAt { child, _dir: dir }
    }
}

impl Drop for ServerAt {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_means_a_reset_with_the_new_epoch() {
    let mut first = start_server(&[]);
    let addr = first.addr;
    let client = connect(&first, "alice").await;
    let mut events = client.events();
    let mut sub = client.subscribe("chat:restart").await.unwrap();
    let mut old_epoch = String::new();
    for i in 1..=3u64 {
        let reply = client
            .publish("chat:restart", &i, PublishOptions::default())
            .await
            .unwrap();
        old_epoch = reply.epoch.unwrap().into_owned();
        assert_eq!(next_message(&mut sub).await.offset, Some(i));
    }

    // SIGTERM: the server closes with 1001, the client reconnects with backoff.
    assert!(first.terminate().success());
    let disconnected = wait_event(&mut events, |e| matches!(e, Event::Disconnected { .. })).await;
    assert!(
        matches!(
            disconnected,
            Event::Disconnected {
                disconnect: Some(Disconnect {
                    code: CloseCode(1001),
                    reconnect: true,
                    ..
                }),
                reconnect: true,
                ..
            }
        ),
        "{disconnected:?}"
    );
    // While nothing listens, attempts fail and the delays stay within their ceilings.
    let policy =
        ReconnectPolicy::with_delays(Duration::from_millis(20), Duration::from_millis(200));
    for n in 1..=3u32 {
        match wait_event(&mut events, |e| matches!(e, Event::Reconnecting { .. })).await {
            Event::Reconnecting { attempt, delay } => {
                assert_eq!(attempt, n);
                assert!(delay <= policy.ceiling(n - 1), "attempt {n}: {delay:?}");
            }
            _ => unreachable!(),
        }
        wait_event(&mut events, |e| matches!(e, Event::ReconnectFailed { .. })).await;
    }

    let _second = ServerAt::start(addr);
    wait_event(&mut events, |e| matches!(e, Event::Connected(_))).await;
    let (epoch, offset) = match next(&mut sub).await {
        SubscriptionEvent::Reset { epoch, offset } => (epoch, offset),
        other => panic!("expected a reset, got {other:?}"),
    };
    assert_ne!(epoch, old_epoch);
    assert_eq!(offset, 0);
    // Live again, in the new epoch (offset 1 again is not a duplicate).
    client
        .publish("chat:restart", "after", PublishOptions::default())
        .await
        .unwrap();
    let m = next_message(&mut sub).await;
    assert_eq!((m.epoch.as_deref(), m.offset), (Some(&*epoch), Some(1)));
    assert_eq!(data(&m), json!("after"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_recovers_every_publication_exactly_once() {
    const ROOM: &str = "chat:recover";
    let server = start_server(&[]);
    // The token provider is the gate of reconnects: the test decides when it may happen.
    let gate = Arc::new(Semaphore::new(1));
    let calls = Arc::new(AtomicU32::new(0));
    let provider = {
        let (gate, calls) = (Arc::clone(&gate), Arc::clone(&calls));
        TokenProvider::new(move || {
            let (gate, calls) = (Arc::clone(&gate), Arc::clone(&calls));
            async move {
                gate.acquire().await?.forget();
                calls.fetch_add(1, Ordering::SeqCst);
                Ok(token("alice"))
            }
        })
    };
    let mut alice_options = options(&server.ws_url("/ws"), "alice");
    alice_options.token_provider = Some(provider);
    let alice = Client::connect(alice_options).await.unwrap();
    let bob = connect(&server, "bob").await;
    let mut events = alice.events();
    let mut sub = alice.subscribe(ROOM).await.unwrap();
    let _bob_sub = bob.subscribe(ROOM).await.unwrap();

    let publish = |range: std::ops::RangeInclusive<u64>| {
        let bob = bob.clone();
        async move {
            for i in range {
                let reply = bob
                    .publish(ROOM, &json!({"i": i}), no_echo())
                    .await
                    .unwrap();
                assert_eq!(reply.offset, Some(i));
            }
        }
    };
    publish(1..=30).await;
    for i in 1..=30 {
        assert_eq!(next_message(&mut sub).await.offset, Some(i));
    }

    alice.debug_drop_connection();
    wait_event(&mut events, |e| {
        matches!(
            e,
            Event::Disconnected {
                reconnect: true,
                ..
            }
        )
    })
    .await;
    // Published while Alice is certainly away (her reconnect waits for the gate)...
    publish(31..=80).await;
    // ...and while she resubscribes (at most 90 missed in all: the history keeps 100).
    let more = tokio::spawn(publish(81..=120));
    gate.add_permits(1);
    let mut offsets = Vec::new();
    while offsets.last() != Some(&120) {
        match next(&mut sub).await {
            SubscriptionEvent::Message(m) => {
                assert_eq!(data(&m), json!({"i": m.offset.unwrap()}));
                offsets.push(m.offset.unwrap());
            }
            other => panic!("expected only messages, got {other:?}"),
        }
    }
    assert_eq!(offsets, (31..=120).collect::<Vec<_>>());
    more.await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert!(sub.try_recv().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_close_code_is_not_followed_by_a_reconnect() {
    let server = start_server(&["--max-message-size", "1024"]);
    let client = connect(&server, "alice").await;
    let mut events = client.events();
    let _sub = client.subscribe("chat:big").await.unwrap();
    let e = client
        .publish("chat:big", &"x".repeat(2048), no_echo())
        .await
        .unwrap_err();
    assert_eq!(e.close_code(), Some(1009), "{e}");
    let (disconnect, reason) = tokio::time::timeout(T, client.closed()).await.unwrap();
    assert_eq!(disconnect.map(|d| d.code.0), Some(1009), "{reason}");
    // The client has stopped: its complete event history has no reconnect.
    let mut seen = Vec::new();
    while let Ok(event) = events.try_recv() {
        seen.push(event);
    }
    assert!(
        seen.iter().any(|e| matches!(
            e,
            Event::Disconnected {
                disconnect: Some(Disconnect {
                    code: CloseCode(1009),
                    reconnect: false,
                    ..
                }),
                reconnect: false,
                ..
            }
        )),
        "{seen:?}"
    );
    assert!(
        !seen
            .iter()
            .any(|e| matches!(e, Event::Reconnecting { .. } | Event::Connected(_))),
        "{seen:?}"
    );
    assert_eq!(client.ping().await.unwrap_err().close_code(), Some(1009));
}

// ------------------------------------------------------------------ against a fake server

/// A scripted server: the handshake, then whatever the test sends.
struct Fake {
    listener: TcpListener,
}

impl Fake {
    async fn bind() -> Self {
        Fake {
            listener: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        }
    }

    fn url(&self) -> String {
        format!("ws://{}/ws", self.listener.local_addr().unwrap())
    }

    async fn accept(&self) -> FakeConn {
        let (mut stream, _) = tokio::time::timeout(T, self.listener.accept())
            .await
            .expect("a connection within 10 s")
            .unwrap();
        let mut buf = BytesMut::new();
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(stream.read_buf(&mut buf).await.unwrap() > 0);
        };
        let head = String::from_utf8(buf.split_to(end).to_vec()).unwrap();
        let conn = FakeConn {
            stream,
            rbuf: buf,
            decoder: Decoder::new(Role::Server, DecoderConfig::default(), None),
            encoder: Encoder::new(Role::Server, None, 0),
            head,
        };
        let key = conn.header("sec-websocket-key").unwrap();
        let response = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\nSec-WebSocket-Protocol: switchboard.v1\r\n\r\n",
            accept_key(key.as_bytes())
        );
        let mut conn = conn;
        conn.stream.write_all(response.as_bytes()).await.unwrap();
        conn
    }

    /// Accepts and sends `welcome`.
    async fn accept_welcomed(&self) -> FakeConn {
        let mut conn = self.accept().await;
        conn.send(
            json!({"type": "welcome", "connection": "c_fake", "user": "alice",
            "node": "fake", "expires": null, "ping_interval": 25, "version": "1", "rooms": {}}),
        )
        .await;
        conn
    }
}

struct FakeConn {
    stream: TcpStream,
    rbuf: BytesMut,
    decoder: Decoder,
    encoder: Encoder,
    head: String,
}

impl FakeConn {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }

    async fn send(&mut self, message: Value) {
        let mut out = BytesMut::new();
        self.encoder
            .encode(OpCode::Text, message.to_string().as_bytes(), &mut out);
        self.stream.write_all(&out).await.unwrap();
    }

    async fn close(&mut self, code: u16) {
        let mut out = BytesMut::new();
        self.encoder
            .encode_close(Some(&CloseFrame::new(CloseCode(code), "bye")), &mut out);
        self.stream.write_all(&out).await.unwrap();
    }

    async fn recv(&mut self) -> Option<Message> {
        loop {
            if let Some(m) = self.decoder.decode(&mut self.rbuf).unwrap() {
                return Some(m);
            }
            if self.stream.read_buf(&mut self.rbuf).await.unwrap_or(0) == 0 {
                return None;
            }
        }
    }

    /// The next command from the client.
    async fn command(&mut self) -> Value {
        tokio::time::timeout(T, async {
            loop {
                match self.recv().await {
                    Some(Message::Text(text)) => {
                        return serde_json::from_str(text.as_str()).unwrap();
                    }
                    Some(Message::Close(frame)) => panic!("the client closed: {frame:?}"),
                    None => panic!("the client went away"),
                    Some(_) => {}
                }
            }
        })
        .await
        .expect("a command within 10 s")
    }

    /// Answers the next command, which must be a `ping`: once the client has the `pong`, it
    /// has handled everything sent before it.
    async fn answer_ping(&mut self) {
        let ping = self.command().await;
        assert_eq!(ping["type"], "ping", "{ping}");
        self.send(json!({"type": "pong", "id": ping["id"]})).await;
    }

    /// Waits for the client's subscribe to `room`, checks its `since`, answers with `result`.
    async fn expect_subscribe(&mut self, room: &str, since: Value, mut result: Value) {
        let command = self.command().await;
        assert_eq!(command["type"], "subscribe", "{command}");
        assert_eq!(command["room"], room, "{command}");
        assert_eq!(command["since"], since, "{command}");
        result["room"] = json!(room);
        self.send(json!({"type": "reply", "id": command["id"], "result": result}))
            .await;
    }
}

fn message(room: &str, epoch: &str, offset: u64) -> Value {
    json!({"type": "message", "room": room, "epoch": epoch, "offset": offset, "data": {"n": offset}})
}

fn fake_options(url: &str) -> ClientOptions {
    let mut options = ClientOptions::new(url);
    options.reconnect =
        ReconnectPolicy::with_delays(Duration::from_millis(10), Duration::from_millis(50));
    options
}

async fn connect_fake(fake: &Fake, options: ClientOptions) -> (Client, FakeConn) {
    let (client, conn) = tokio::join!(Client::connect(options), fake.accept_welcomed());
    (client.unwrap(), conn)
}

#[tokio::test]
async fn commands_time_out_and_late_answers_are_ignored() {
    let fake = Fake::bind().await;
    let mut options = fake_options(&fake.url());
    options.command_timeout = Duration::from_millis(300);
    let (client, mut conn) = connect_fake(&fake, options).await;
    let start = Instant::now();
    let (result, ping) = tokio::join!(client.ping(), conn.command());
    assert!(matches!(result, Err(Error::Timeout(_))), "{result:?}");
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert!(start.elapsed() < T);
    // The late pong answers nobody; the next command works.
    conn.send(json!({"type": "pong", "id": ping["id"]})).await;
    let (result, ()) = tokio::join!(client.ping(), conn.answer_ping());
    result.unwrap();
    let one = json!([1]);
    let (result, publish) = tokio::join!(
        client.publish("r", &one, PublishOptions::default()),
        conn.command()
    );
    assert!(matches!(result, Err(Error::Timeout(_))), "{result:?}");
    assert_eq!(publish["data"], json!([1]));
}

#[tokio::test]
async fn duplicates_are_dropped_and_renewals_carry_the_last_offset() {
    let fake = Fake::bind().await;
    let (client, mut conn) = connect_fake(&fake, fake_options(&fake.url())).await;
    let mut events = client.events();

    // A live message before the reply, at or below its offset, is not delivered; one after
    // it is, after the reply.
    let (sub, ()) = tokio::join!(client.subscribe("r"), async {
        let command = conn.command().await;
        assert_eq!(command["since"], Value::Null);
        conn.send(message("r", "e1", 5)).await;
        conn.send(message("r", "e1", 6)).await;
        conn.send(json!({"type": "reply", "id": command["id"],
            "result": {"room": "r", "epoch": "e1", "offset": 5, "publications": []}}))
            .await;
    });
    let mut sub = sub.unwrap();
    for offset in [6, 7, 7, 6, 8] {
        conn.send(message("r", "e1", offset)).await;
    }
    let (result, ()) = tokio::join!(client.ping(), conn.answer_ping());
    result.unwrap();
    for offset in [6, 7, 8] {
        assert_eq!(next_message(&mut sub).await.offset, Some(offset));
    }
    assert!(sub.try_recv().is_err(), "nothing else");

    // 4503: reconnect, renew with since = the last offset, recovered publications first.
    conn.close(4503).await;
    let mut conn = fake.accept_welcomed().await;
    conn.expect_subscribe(
        "r",
        json!({"epoch": "e1", "offset": 8}),
        json!({"epoch": "e1", "offset": 10, "recovered": true, "publications": [
            {"offset": 8, "data": {"n": 8}}, {"offset": 9, "data": {"n": 9}},
            {"offset": 10, "data": {"n": 10}, "from": {"user": "bob", "connection": "c2"}}]}),
    )
    .await;
    conn.send(message("r", "e1", 10)).await;
    conn.send(message("r", "e1", 11)).await;
    for offset in [9, 10, 11] {
        let m = next_message(&mut sub).await;
        assert_eq!((m.offset, data(&m)), (Some(offset), json!({"n": offset})));
        if offset == 10 {
            assert_eq!(m.from.as_ref().map(|f| &*f.user), Some("bob"));
        }
    }

    // An abnormal closure: reconnect; not recoverable: a reset, then live messages.
    drop(conn);
    let mut conn = fake.accept_welcomed().await;
    conn.expect_subscribe(
        "r",
        json!({"epoch": "e1", "offset": 11}),
        json!({"epoch": "e2", "offset": 3, "recovered": false, "publications": []}),
    )
    .await;
    conn.send(message("r", "e2", 3)).await;
    conn.send(message("r", "e2", 4)).await;
    match next(&mut sub).await {
        SubscriptionEvent::Reset { epoch, offset } => assert_eq!((&*epoch, offset), ("e2", 3)),
        other => panic!("expected a reset, got {other:?}"),
    }
    let m = next_message(&mut sub).await;
    assert_eq!((m.epoch.as_deref(), m.offset), (Some("e2"), Some(4)));

    // Pushes that belong to no subscription go to the event stream.
    conn.send(json!({"type": "error", "id": null, "code": "bad_request", "message": "x"}))
        .await;
    conn.send(json!({"type": "shiny", "x": 1})).await;
    conn.send(message("other", "e", 1)).await;
    wait_event(
        &mut events,
        |e| matches!(e, Event::Error { code, .. } if code == "bad_request"),
    )
    .await;
    wait_event(
        &mut events,
        |e| matches!(e, Event::Unknown { kind, .. } if kind == "shiny"),
    )
    .await;
    wait_event(
        &mut events,
        |e| matches!(e, Event::Message(m) if m.room == "other"),
    )
    .await;
}

#[tokio::test]
async fn a_subscriber_that_does_not_drain_gets_lagged() {
    let fake = Fake::bind().await;
    let mut options = fake_options(&fake.url());
    options.subscription_capacity = 2;
    let (client, mut conn) = connect_fake(&fake, options).await;
    let (sub, ()) = tokio::join!(
        client.subscribe("r"),
        conn.expect_subscribe("r", Value::Null, json!({"epoch": "e", "offset": 0}))
    );
    let mut sub = sub.unwrap();
    for offset in 1..=5 {
        conn.send(message("r", "e", offset)).await;
    }
    let (result, ()) = tokio::join!(client.ping(), conn.answer_ping());
    result.unwrap();
    // The channel held two; three were dropped while it was full.
    assert_eq!(next_message(&mut sub).await.offset, Some(1));
    assert_eq!(next_message(&mut sub).await.offset, Some(2));
    assert!(sub.try_recv().is_err());
    conn.send(message("r", "e", 6)).await;
    let (result, ()) = tokio::join!(client.ping(), conn.answer_ping());
    result.unwrap();
    assert!(matches!(
        next(&mut sub).await,
        SubscriptionEvent::Lagged { skipped: 3 }
    ));
    assert_eq!(next_message(&mut sub).await.offset, Some(6));
}

#[tokio::test]
async fn close_codes_decide_whether_to_reconnect() {
    for code in [1001, 1011, 4500, 4501, 4502, 4503, 4504] {
        let fake = Fake::bind().await;
        let (client, mut conn) = connect_fake(&fake, fake_options(&fake.url())).await;
        let mut events = client.events();
        conn.close(code).await;
        let _again = fake.accept_welcomed().await;
        wait_event(&mut events, |e| matches!(e, Event::Connected(_))).await;
        assert!(matches!(client.state(), ConnectionState::Connected { .. }));
    }
    for code in [1000, 1002, 1003, 1007, 1008, 1009, 4000, 4001, 4003, 4499] {
        let fake = Fake::bind().await;
        let (client, mut conn) = connect_fake(&fake, fake_options(&fake.url())).await;
        let pending = tokio::spawn({
            let client = client.clone();
            async move { client.ping().await }
        });
        conn.command().await; // the ping is in flight when the close comes
        conn.close(code).await;
        let (closed, _) = tokio::time::timeout(T, client.closed()).await.unwrap();
        // The error carries the server's close as sent, with the contract's verdict.
        let expected = Disconnect::from_code(code).with_reason("bye");
        assert!(!expected.reconnect);
        assert_eq!(closed, Some(expected));
        let e = pending.await.unwrap().unwrap_err();
        assert_eq!(e.disconnect(), closed.as_ref(), "{e}");
        // No second connection was attempted: the driver is gone.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), fake.listener.accept())
                .await
                .is_err(),
            "close code {code} was followed by a reconnect"
        );
    }
}

#[tokio::test]
async fn the_token_provider_serves_every_connection_and_refreshes() {
    let fake = Fake::bind().await;
    let counter = Arc::new(AtomicU32::new(0));
    let mut options = fake_options(&fake.url());
    options.token_provider = Some(TokenProvider::new({
        let counter = Arc::clone(&counter);
        move || {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            async move { Ok(format!("tok-{n}")) }
        }
    }));
    let (client, mut conn) = connect_fake(&fake, options).await;
    assert_eq!(
        conn.header("authorization").as_deref(),
        Some("Bearer tok-1")
    );
    conn.close(4501).await;
    let mut conn = fake.accept_welcomed().await;
    assert_eq!(
        conn.header("authorization").as_deref(),
        Some("Bearer tok-2")
    );
    conn.send(json!({"type": "refresh_required", "expires": 1_767_225_600u64}))
        .await;
    let refresh = conn.command().await;
    assert_eq!(
        (&refresh["type"], &refresh["token"]),
        (&json!("refresh"), &json!("tok-3"))
    );
    conn.send(
        json!({"type": "reply", "id": refresh["id"], "result": {"expires": 1_767_229_200u64}}),
    )
    .await;
    let (result, ()) = tokio::join!(client.ping(), conn.answer_ping());
    result.unwrap();
}
