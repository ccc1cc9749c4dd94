//! The library API over loopback: a custom handler served in-process, driven by a real client.

use std::sync::{Arc, Mutex};

use switchboard_client::{WsOptions, WsStream};
use switchboard_protocol::{CloseCode, codec::Message, frame::OpCode};
use switchboard_server::{
    Accepted, Broadcast, CloseFrame, Connection, Disconnect, Handler, Incoming, Refusal, Route,
    RouteOptions, Server, StatusCode, UpgradeContext, User,
};

/// Who closed, with which code.
type Closed = Arc<Mutex<Vec<(String, Option<u16>)>>>;

#[derive(Clone, Default)]
struct Relay {
    closed: Closed,
}

impl Handler for Relay {
    type State = ();

    async fn authenticate(&self, request: &UpgradeContext<'_>) -> Result<Accepted<()>, Refusal> {
        match request.uri.query().and_then(|q| q.strip_prefix("user=")) {
            Some(u) => Ok(Accepted {
                user: User {
                    id: u.into(),
                    ..User::default()
                },
                state: (),
            }),
            None => Err(Refusal::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing",
            )),
        }
    }

    async fn on_connect(&self, conn: &mut Connection<()>) {
        conn.join("room").await;
        let id = conn.user().id.to_string();
        conn.send_text(&format!("hello {id}"));
    }

    async fn on_message(&self, conn: &mut Connection<()>, message: Incoming) {
        match &message {
            Incoming::Text(t) if t.as_str() == "bye" => {
                conn.close(Disconnect::DISCONNECTED.with_reason("asked to leave"))
            }
            Incoming::Text(t) if t.as_str() == "rooms" => {
                let rooms: Vec<_> = conn.rooms().map(str::to_string).collect();
                conn.send_text(&rooms.join(","));
            }
            Incoming::Text(_) => {
                conn.broadcast(&["room"], message, Broadcast::others())
                    .await
            }
            Incoming::Binary(b) => conn.send_binary(b),
        }
    }

    async fn on_close(&self, conn: &mut Connection<()>, close: Option<&CloseFrame>) {
        self.closed
            .lock()
            .unwrap()
            .push((conn.user().id.to_string(), close.map(|c| c.code.0)));
    }
}

/// A server running `route` on a free loopback port, until `stop`.
struct Serving {
    addr: std::net::SocketAddr,
    shutdown: tokio_util::sync::CancellationToken,
    running: tokio::task::JoinHandle<bool>,
}

impl Serving {
    async fn start(route: Route) -> Serving {
        let server = Server::builder("127.0.0.1:0".parse().unwrap())
            .route(route)
            .bind()
            .await
            .unwrap();
        Serving {
            addr: server.local_addr().unwrap(),
            shutdown: server.shutdown_token(),
            running: tokio::spawn(server.run(std::future::pending())),
        }
    }

    /// Shuts the server down; whether it drained within its timeout.
    async fn stop(self) -> bool {
        self.shutdown.cancel();
        self.running.await.unwrap()
    }
}

async fn text(ws: &mut WsStream) -> String {
    match tokio::time::timeout(std::time::Duration::from_secs(10), ws.recv())
        .await
        .unwrap()
        .unwrap()
    {
        Some(Message::Text(t)) => t.as_str().to_string(),
        other => panic!("expected text, got {other:?}"),
    }
}

#[tokio::test]
async fn handler_hooks_broadcast_and_close() {
    let relay = Relay::default();
    let serving =
        Serving::start(Route::new("/relay", relay.clone(), RouteOptions::default())).await;
    let addr = serving.addr;

    let url = |user: &str| format!("ws://{addr}/relay?user={user}");
    let refused = WsStream::connect(&format!("ws://{addr}/relay"), &WsOptions::default())
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("401"), "{refused}");

    let mut a = WsStream::connect(&url("ada"), &WsOptions::default())
        .await
        .unwrap();
    let mut b = WsStream::connect(&url("bob"), &WsOptions::default())
        .await
        .unwrap();
    assert_eq!(text(&mut a).await, "hello ada");
    assert_eq!(text(&mut b).await, "hello bob");

    // Broadcast excludes the sender.
    a.send_text("hi all").await.unwrap();
    assert_eq!(text(&mut b).await, "hi all");
    a.send_text("rooms").await.unwrap();
    assert_eq!(
        text(&mut a).await,
        "room",
        "ada did not get her own broadcast, and is in 'room'"
    );

    b.send(OpCode::Binary, &[9, 8, 7]).await.unwrap();
    assert_eq!(
        b.recv().await.unwrap(),
        Some(Message::Binary(vec![9, 8, 7].into()))
    );

    // close(code, reason) from a hook.
    b.send_text("bye").await.unwrap();
    match b.recv().await.unwrap() {
        Some(Message::Close(Some(f))) => assert_eq!(
            (f.code, f.reason_str()),
            (CloseCode(4003), "asked to leave")
        ),
        other => panic!("{other:?}"),
    }
    b.close(Some(&CloseFrame::new(CloseCode(4003), "")))
        .await
        .unwrap();
    assert_eq!(b.recv().await.unwrap(), None);

    serving.shutdown.cancel();
    match a.recv().await.unwrap() {
        Some(Message::Close(Some(f))) => assert_eq!(f.code, CloseCode::GOING_AWAY),
        other => panic!("{other:?}"),
    }
    a.close(None).await.unwrap();
    assert!(serving.stop().await, "drained within the timeout");
    let closed = relay.closed.lock().unwrap().clone();
    assert!(
        closed.contains(&("bob".to_string(), Some(4003))),
        "{closed:?}"
    );
    assert!(closed.iter().any(|(u, _)| u == "ada"), "{closed:?}");
}

/// Sets a timer two seconds out at connect; "cancel" cancels it, "echo" answers at once.
#[derive(Clone, Default)]
struct Timed;

/// Further than two ping intervals of [`Timed`]'s route: only the sweeper can arm it.
const TIMED_AFTER: std::time::Duration = std::time::Duration::from_secs(2);

impl Handler for Timed {
    type State = ();

    async fn authenticate(&self, _: &UpgradeContext<'_>) -> Result<Accepted<()>, Refusal> {
        Ok(Accepted {
            user: User::default(),
            state: (),
        })
    }

    async fn on_connect(&self, conn: &mut Connection<()>) {
        conn.set_timer(Some(tokio::time::Instant::now() + TIMED_AFTER));
    }

    async fn on_message(&self, conn: &mut Connection<()>, message: Incoming) {
        match &message {
            Incoming::Text(t) if t.as_str() == "cancel" => conn.set_timer(None),
            _ => conn.send_text("echo"),
        }
    }

    async fn on_timer(&self, conn: &mut Connection<()>) {
        conn.send_text("timer");
    }
}

#[tokio::test]
async fn a_far_timer_fires_on_time_and_a_cancelled_one_never() {
    let mut options = RouteOptions::default();
    options.ping_interval = std::time::Duration::from_millis(400);
    let serving = Serving::start(Route::new("/timed", Timed, options)).await;
    let url = format!("ws://{}/timed", serving.addr);

    let started = tokio::time::Instant::now();
    let mut kept = WsStream::connect(&url, &WsOptions::default())
        .await
        .unwrap();
    let mut cancelled = WsStream::connect(&url, &WsOptions::default())
        .await
        .unwrap();
    cancelled.send_text("cancel").await.unwrap();

    assert_eq!(text(&mut kept).await, "timer");
    assert!(
        started.elapsed() >= TIMED_AFTER,
        "the timer fired after {:?}, before its deadline",
        started.elapsed()
    );
    // Its deadline has passed too: had it fired, "timer" would come before the answer.
    cancelled.send_text("now").await.unwrap();
    assert_eq!(text(&mut cancelled).await, "echo");

    drop((kept, cancelled));
    serving.stop().await;
}

#[tokio::test]
async fn a_message_larger_than_the_outbound_bound_leaves_room_for_a_pong() {
    let mut options = RouteOptions::default();
    options.max_message_size = 16 << 20;
    options.outbound_queue = 64 * 1024;
    let serving = Serving::start(Route::new(
        "/echo",
        switchboard_server::builtin::Echo,
        options,
    ))
    .await;
    let url = format!("ws://{}/echo", serving.addr);

    let plain = WsOptions {
        deflate: false,
        ..WsOptions::default()
    };
    let mut ws = WsStream::connect(&url, &plain).await.unwrap();
    // More than the kernel's socket buffers on both sides hold: the echo is still being
    // written, far past the 64 KiB bound, when the ping's pong is queued behind it.
    let big = vec![7u8; 14 << 20];
    ws.send(OpCode::Binary, &big).await.unwrap();
    ws.send(OpCode::Ping, b"still there?").await.unwrap();
    match ws.recv_any().await.unwrap() {
        Some(Message::Binary(b)) => assert!(b.len() == big.len() && b.iter().all(|x| *x == 7)),
        Some(Message::Close(close)) => panic!("closed instead of echoing: {close:?}"),
        _ => panic!("expected the echo first"),
    }
    assert_eq!(
        ws.recv_any().await.unwrap(),
        Some(Message::Pong(bytes::Bytes::from_static(b"still there?")))
    );

    drop(ws);
    serving.stop().await;
}

/// A route speaking JSON: a tagged enum of message types in, JSON out, refusals by
/// constructor.
#[derive(Clone, Default)]
struct Talk;

#[derive(serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum TalkIn {
    Say { text: String },
    Shout { text: String },
}

impl Handler for Talk {
    type State = ();

    async fn authenticate(&self, request: &UpgradeContext<'_>) -> Result<Accepted<()>, Refusal> {
        match request.uri.query() {
            Some("full") => Err(Refusal::too_many_requests(
                "room full",
                std::time::Duration::from_millis(1500),
            )),
            _ => Ok(Accepted {
                user: User::default(),
                state: (),
            }),
        }
    }

    async fn on_message(&self, conn: &mut Connection<()>, message: Incoming) {
        match conn.parse_json::<TalkIn>(&message) {
            Some(TalkIn::Say { text }) => conn
                .send_json(&serde_json::json!({"type": "said", "text": text}))
                .unwrap(),
            Some(TalkIn::Shout { text }) => {
                let json = serde_json::json!({"type": "shouted", "text": text}).to_string();
                conn.broadcast_route(Incoming::Text(json.into()), Broadcast::everyone());
            }
            None => {}
        }
    }
}

#[tokio::test]
async fn json_messages_errors_refusals_and_route_broadcasts() {
    let serving = Serving::start(Route::new("/talk", Talk, RouteOptions::default())).await;
    let url = format!("ws://{}/talk", serving.addr);
    let refused = WsStream::connect(&format!("{url}?full"), &WsOptions::default())
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("429"), "{refused}");

    let mut a = WsStream::connect(&url, &WsOptions::default())
        .await
        .unwrap();
    let mut b = WsStream::connect(&url, &WsOptions::default())
        .await
        .unwrap();
    let json = |s: String| serde_json::from_str::<serde_json::Value>(&s).unwrap();

    a.send_text(r#"{"type":"say","text":"hi"}"#).await.unwrap();
    assert_eq!(json(text(&mut a).await)["text"], "hi");

    // Bad JSON, a missing field, an unknown type: the documented error, naming the field;
    // the connection stays open.
    for (bad, names) in [
        ("{not json", "key must be a string"),
        (r#"{"type":"say"}"#, "text"),
        (r#"{"type":"sing","text":"la"}"#, "sing"),
    ] {
        a.send_text(bad).await.unwrap();
        let error = json(text(&mut a).await);
        assert_eq!(error["type"], "error", "{bad}");
        assert_eq!(error["code"], "bad_request", "{bad}");
        let message = error["message"].as_str().unwrap();
        assert!(message.contains(names), "{bad}: {message}");
    }
    a.send(OpCode::Binary, &[1]).await.unwrap();
    assert!(
        json(text(&mut a).await)["message"]
            .as_str()
            .unwrap()
            .contains("binary")
    );

    // To every connection of the route, the sender included.
    b.send_text(r#"{"type":"shout","text":"all"}"#)
        .await
        .unwrap();
    for ws in [&mut a, &mut b] {
        let got = json(text(ws).await);
        assert_eq!(got["type"], "shouted");
        assert_eq!(got["text"], "all");
    }
    drop((a, b));
    assert!(serving.stop().await);
}
