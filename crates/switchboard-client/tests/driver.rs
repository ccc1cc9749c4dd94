//! The client's driver against the server library served in the test process (real sockets
//! over loopback): a reconnect after every close the contract lets a client reconnect after,
//! recovery of what was published meanwhile, no reconnect after a terminal close (the error
//! carries the server's `Disconnect`), and the token-expired path.
//!
//! The server closes a connection with a chosen code through a route of the test's own,
//! `/kick`: the v1 protocol ([`Protocol`]) wrapped in a handler whose `on_message` hook closes
//! the connection instead when the test has armed it.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use serde_json::{Value, json};
use switchboard_client::{
    CLOSE_CODES, Client, ClientOptions, ConnectionState, Disconnect, Error, Event, MessagePush,
    PublishOptions, ReconnectPolicy, Subscription, SubscriptionEvent, TokenProvider,
};
use switchboard_protocol::wire;
use switchboard_server::{
    Accepted, CloseFrame, Connection, Handler, Incoming, Node, Refusal, Route, RouteOptions,
    UpgradeContext,
    auth::{self, AuthConfig, HmacAlgorithm, MintClaims},
    config::Config,
    v1::{Protocol, Session},
};
use tokio::sync::{
    Semaphore,
    broadcast::{self, error::RecvError},
};

/// The servers of these tests verify tokens with this secret.
const SECRET: &str = "driver-tests-secret-0123456789abcdefghij";

/// How long any awaited event may take before the test fails.
const T: Duration = Duration::from_secs(10);

const ROOM: &str = "chat:driver";

/// The v1 protocol, except that the first message after [`Kicker::kick`] is answered by
/// closing the connection with the armed close.
#[derive(Clone)]
struct Kicker {
    protocol: Protocol,
    armed: Arc<Mutex<Option<Disconnect>>>,
    /// Connections accepted on the route, to count reconnects.
    connections: Arc<AtomicU32>,
}

impl Kicker {
    /// The next message from a client of the route makes the server close with `close`.
    fn kick(&self, close: Disconnect) {
        *self.armed.lock().unwrap() = Some(close);
    }

    fn connections(&self) -> u32 {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Handler for Kicker {
    type State = Session;

    async fn authenticate(
        &self,
        request: &UpgradeContext<'_>,
    ) -> Result<Accepted<Session>, Refusal> {
        self.protocol.authenticate(request).await
    }

    async fn on_connect(&self, conn: &mut Connection<Session>) {
        self.connections.fetch_add(1, Ordering::SeqCst);
        self.protocol.on_connect(conn).await;
    }

    async fn on_message(&self, conn: &mut Connection<Session>, message: Incoming) {
        let armed = self.armed.lock().unwrap().take();
        match armed {
            // The message (a command) goes unanswered: it is in flight when the close comes.
            Some(close) => conn.close(close),
            None => self.protocol.on_message(conn, message).await,
        }
    }

    async fn on_close(&self, conn: &mut Connection<Session>, close: Option<&CloseFrame>) {
        self.protocol.on_close(conn, close).await;
    }

    async fn on_timer(&self, conn: &mut Connection<Session>) {
        self.protocol.on_timer(conn).await;
    }

    async fn on_error(&self, conn: &mut Connection<Session>, error: &switchboard_server::Error) {
        self.protocol.on_error(conn, error).await;
    }
}

/// A node serving the protocol at `/ws` and the [`Kicker`] at `/kick`, on a free loopback
/// port, until the test's runtime ends.
struct Serving {
    addr: SocketAddr,
    kicker: Kicker,
}

impl Serving {
    async fn start() -> Serving {
        let config = Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            auth: AuthConfig {
                secret: Some(SECRET.into()),
                // Expiry is exact: the token-expired test counts on it.
                leeway: 0,
                ..AuthConfig::default()
            },
            ..Config::default()
        };
        let node = Node::new(config.clone()).expect("node");
        let kicker = Kicker {
            protocol: Protocol::new(node.clone()),
            armed: Arc::default(),
            connections: Arc::default(),
        };
        let options =
            RouteOptions::from_config(&config.websocket).with_protocols(&[wire::SUBPROTOCOL]);
        let server = node
            .server()
            .route(Route::new("/kick", kicker.clone(), options))
            .bind()
            .await
            .expect("bind");
        let addr = server.local_addr().unwrap();
        tokio::spawn(server.run(std::future::pending()));
        Serving { addr, kicker }
    }

    fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }
}

fn token(user: &str, ttl: Duration) -> String {
    let claims = MintClaims {
        sub: user.into(),
        ttl: Some(ttl),
        ..MintClaims::default()
    };
    auth::mint(SECRET.as_bytes(), HmacAlgorithm::HS256, &claims)
}

/// Options with an hour's token for `user` and quick reconnects.
fn options(url: &str, user: &str) -> ClientOptions {
    let mut options = ClientOptions::new(url);
    options.token = Some(token(user, Duration::from_secs(3600)));
    options.reconnect =
        ReconnectPolicy::with_delays(Duration::from_millis(10), Duration::from_millis(100));
    options
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

/// Waits for [`Event::Disconnected`] and returns its close and whether the client reconnects.
async fn disconnected(events: &mut broadcast::Receiver<Event>) -> (Option<Disconnect>, bool) {
    match wait_event(events, |e| matches!(e, Event::Disconnected { .. })).await {
        Event::Disconnected {
            disconnect,
            reconnect,
            ..
        } => (disconnect, reconnect),
        _ => unreachable!(),
    }
}

async fn next_message(sub: &mut Subscription) -> MessagePush {
    match tokio::time::timeout(T, sub.recv()).await {
        Ok(Some(SubscriptionEvent::Message(m))) => m,
        Ok(other) => panic!("expected a message, got {other:?}"),
        Err(_) => panic!("no message within 10 s"),
    }
}

fn no_echo() -> PublishOptions {
    PublishOptions {
        echo: false,
        ..PublishOptions::default()
    }
}

async fn publish(client: &Client, range: std::ops::RangeInclusive<u64>) {
    for i in range {
        let reply = client
            .publish(ROOM, &json!({ "i": i }), no_echo())
            .await
            .unwrap();
        assert_eq!(reply.offset, Some(i));
    }
}

#[tokio::test]
async fn every_reconnecting_close_is_followed_by_a_reconnect() {
    let serving = Serving::start().await;
    let client = Client::connect(options(&serving.url("/kick"), "alice"))
        .await
        .unwrap();
    let mut events = client.events();
    // Every row of the table that reconnects (1001, 1011, 4500–4504), and a code outside it.
    let closes = CLOSE_CODES
        .iter()
        .map(|e| e.disconnect.clone())
        .filter(|d| d.reconnect)
        .chain([Disconnect::custom(4700, "application says later")]);
    for (n, close) in closes.enumerate() {
        serving.kicker.kick(close.clone());
        let e = client.ping().await.unwrap_err();
        assert!(matches!(e, Error::ConnectionLost), "{close}: {e}");
        let (received, reconnect) = disconnected(&mut events).await;
        assert_eq!(received.as_ref(), Some(&close));
        assert!(reconnect, "{close}");
        wait_event(&mut events, |e| matches!(e, Event::Connected(_))).await;
        assert_eq!(serving.kicker.connections(), n as u32 + 2, "{close}");
        client.ping().await.expect("the new connection answers");
    }
}

#[tokio::test]
async fn publications_missed_while_away_are_recovered_once_in_order() {
    let serving = Serving::start().await;
    // The token provider is the gate of reconnects: the test decides when one may happen.
    let gate = Arc::new(Semaphore::new(1));
    let mut alice_options = options(&serving.url("/kick"), "alice");
    alice_options.token_provider = Some(TokenProvider::new({
        let gate = Arc::clone(&gate);
        move || {
            let gate = Arc::clone(&gate);
            async move {
                gate.acquire().await?.forget();
                Ok(token("alice", Duration::from_secs(3600)))
            }
        }
    }));
    let alice = Client::connect(alice_options).await.unwrap();
    let bob = Client::connect(options(&serving.url("/ws"), "bob"))
        .await
        .unwrap();
    let mut events = alice.events();
    let mut sub = alice.subscribe(ROOM).await.unwrap();
    let _bob_sub = bob.subscribe(ROOM).await.unwrap();
    publish(&bob, 1..=3).await;
    for i in 1..=3 {
        assert_eq!(next_message(&mut sub).await.offset, Some(i));
    }

    serving.kicker.kick(Disconnect::RECONNECT);
    assert!(matches!(alice.ping().await, Err(Error::ConnectionLost)));
    assert_eq!(
        disconnected(&mut events).await,
        (Some(Disconnect::RECONNECT), true)
    );
    // Published while Alice is certainly away: her reconnect waits for the gate.
    publish(&bob, 4..=10).await;
    gate.add_permits(1);

    let info = match wait_event(&mut events, |e| matches!(e, Event::Resubscribed { .. })).await {
        Event::Resubscribed { room, info } => {
            assert_eq!(room, ROOM);
            info
        }
        _ => unreachable!(),
    };
    assert_eq!((info.offset, info.recovered), (10, Some(true)), "{info:?}");
    // The recovered publications were delivered before the event: each once, in order.
    let mut recovered = Vec::new();
    while let Ok(event) = sub.try_recv() {
        match event {
            SubscriptionEvent::Message(m) => {
                let data: Value = serde_json::from_str(m.data.get()).unwrap();
                assert_eq!(data, json!({ "i": m.offset.unwrap() }));
                recovered.push(m.offset.unwrap());
            }
            other => panic!("expected only messages, got {other:?}"),
        }
    }
    assert_eq!(recovered, (4..=10).collect::<Vec<_>>());
    // Live again, right after them.
    publish(&bob, 11..=11).await;
    assert_eq!(next_message(&mut sub).await.offset, Some(11));
    assert!(sub.try_recv().is_err());
    assert_eq!(serving.kicker.connections(), 2);
}

#[tokio::test]
async fn a_terminal_close_ends_the_client_with_the_servers_disconnect() {
    let serving = Serving::start().await;
    // Every row of the table that does not reconnect (1000, 1002, ..., 4001–4003), and a
    // code outside it in the terminal range.
    let closes = CLOSE_CODES
        .iter()
        .map(|e| e.disconnect.clone())
        .filter(|d| !d.reconnect)
        .chain([Disconnect::custom(4100, "game over")]);
    for (n, close) in closes.enumerate() {
        let client = Client::connect(options(&serving.url("/kick"), "alice"))
            .await
            .unwrap();
        let mut events = client.events();
        serving.kicker.kick(close.clone());
        // The command in flight fails with the close, as does every later call.
        let e = client.ping().await.unwrap_err();
        assert_eq!(e.disconnect(), Some(&close), "{e}");
        let (received, reason) = tokio::time::timeout(T, client.closed()).await.unwrap();
        assert_eq!(received.as_ref(), Some(&close), "{reason}");
        assert!(matches!(
            client.state(),
            ConnectionState::Closed { disconnect: Some(d), .. } if d == close
        ));
        assert!(matches!(client.ping().await, Err(Error::Closed(Some(d))) if d == close));
        // The client has stopped: its whole event history has no reconnect.
        let mut seen = Vec::new();
        while let Ok(event) = events.try_recv() {
            seen.push(event);
        }
        assert!(
            seen.iter().any(|e| matches!(
                e,
                Event::Disconnected { disconnect: Some(d), reconnect: false, .. } if *d == close
            )),
            "{close}: {seen:?}"
        );
        assert!(
            !seen
                .iter()
                .any(|e| matches!(e, Event::Reconnecting { .. } | Event::Connected(_))),
            "{close}: {seen:?}"
        );
        assert_eq!(serving.kicker.connections(), n as u32 + 1, "{close}");
    }
}

#[tokio::test]
async fn an_expired_token_reconnects_with_a_fresh_one_from_the_provider() {
    let serving = Serving::start().await;
    // Call 1 connects with a token that expires within two seconds, call 2 (the refresh the
    // server asks for at once, that close to expiry) fails, call 3 (the reconnect after
    // 4501) gets an hour.
    let calls = Arc::new(AtomicU32::new(0));
    let mut alice_options = options(&serving.url("/ws"), "alice");
    alice_options.token_provider = Some(TokenProvider::new({
        let calls = Arc::clone(&calls);
        move || {
            let call = calls.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                match call {
                    1 => Ok(token("alice", Duration::from_secs(2))),
                    2 => Err("the identity provider is down".into()),
                    _ => Ok(token("alice", Duration::from_secs(3600))),
                }
            }
        }
    }));
    let alice = Client::connect(alice_options).await.unwrap();
    let mut events = alice.events();
    let first_expiry = alice.welcome().expires.expect("the token's exp");
    let _sub = alice.subscribe(ROOM).await.unwrap();

    let (received, reconnect) = disconnected(&mut events).await;
    assert_eq!(received, Some(Disconnect::TOKEN_EXPIRED));
    assert!(reconnect);
    let welcome = match wait_event(&mut events, |e| matches!(e, Event::Connected(_))).await {
        Event::Connected(welcome) => welcome,
        _ => unreachable!(),
    };
    assert!(
        welcome.expires.unwrap() > first_expiry + 3000,
        "{welcome:?}"
    );
    match wait_event(&mut events, |e| matches!(e, Event::Resubscribed { .. })).await {
        Event::Resubscribed { info, .. } => assert_eq!(info.recovered, Some(true)),
        _ => unreachable!(),
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    alice.ping().await.unwrap();
}

#[tokio::test]
async fn an_expired_fixed_token_ends_the_client_at_the_refused_reconnect() {
    let serving = Serving::start().await;
    let mut alice_options = options(&serving.url("/ws"), "alice");
    alice_options.token = Some(token("alice", Duration::from_secs(2)));
    let alice = Client::connect(alice_options).await.unwrap();
    let mut events = alice.events();

    let (received, reconnect) = disconnected(&mut events).await;
    assert_eq!(received, Some(Disconnect::TOKEN_EXPIRED));
    assert!(
        reconnect,
        "4501 reconnects: the token might have been refreshed"
    );
    // It was not: the reconnect is refused with 401, which nothing can mend. (Within the
    // second of `exp` the server still accepts the token and closes with 4501 again at once:
    // its verifier takes `exp` as the last valid second, its session as the first expired
    // one; hence no count of attempts here.)
    let (close, reason) = tokio::time::timeout(T, alice.closed()).await.unwrap();
    assert_eq!(close, None, "{reason}");
    assert!(reason.contains("401"), "{reason}");
    let mut seen = Vec::new();
    while let Ok(event) = events.try_recv() {
        seen.push(event);
    }
    assert!(
        matches!(seen.last(), Some(Event::ReconnectFailed { error, .. }) if error.contains("401")),
        "{seen:?}"
    );
    assert!(
        seen.iter().all(|e| match e {
            Event::Disconnected { disconnect, .. } =>
                *disconnect == Some(Disconnect::TOKEN_EXPIRED),
            Event::ReconnectFailed { error, .. } => error.contains("401"),
            _ => true,
        }),
        "{seen:?}"
    );
}
