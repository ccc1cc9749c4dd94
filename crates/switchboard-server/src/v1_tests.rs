//! The v1 handler's rules without sockets: a real [`Node`] (its memory broker, hub and
//! dispatchers), connections built by hand, the [`Handler`] hooks called directly, and what
//! each connection would write read back from its outbound queue and decoded as a client
//! would.

use std::{
    collections::VecDeque,
    sync::atomic::{AtomicUsize, Ordering},
};

use serde_json::{Value, json};
use switchboard_protocol::{
    Role,
    codec::{Decoder, DecoderConfig, Encoder, Message, Utf8Bytes},
};

use super::*;
use crate::{
    auth::{HmacAlgorithm, MintClaims, mint},
    config::{Config, NamespaceConfig, PublishPolicy, SubscribePolicy},
    conn::ConnShared,
};

const SECRET: &str = "switchboard-v1-unit-tests-secret-0123456789";

/// How long a test waits for an event the dispatcher delivers before it fails.
const WAIT: Duration = Duration::from_secs(5);

/// The namespaces of these tests (strict: any other namespace is unknown). Join and leave
/// pushes are off except in `room`, so that a connection receives only what a test expects.
fn config() -> Config {
    let mut c = Config::default();
    c.auth.secret = Some(SECRET.into());
    c.node_id = Some("n_test".into());
    c.strict_namespaces = true;
    let ns = |subscribe, publish| NamespaceConfig {
        subscribe,
        publish,
        join_leave: false,
        ..NamespaceConfig::default()
    };
    use {PublishPolicy as P, SubscribePolicy as S};
    c.namespaces
        .insert("chat".into(), ns(S::Anyone, P::Subscribers));
    c.namespaces.insert("feed".into(), ns(S::Anyone, P::None));
    c.namespaces
        .insert("board".into(), ns(S::Anyone, P::Authenticated));
    c.namespaces
        .insert("members".into(), ns(S::Authenticated, P::Subscribers));
    c.namespaces
        .insert("vip".into(), ns(S::Claim, P::Subscribers));
    c.namespaces
        .insert("tok".into(), ns(S::Token, P::Subscribers));
    c.namespaces.insert(
        "small".into(),
        NamespaceConfig {
            max_subscribers: Some(1),
            ..ns(S::Anyone, P::Subscribers)
        },
    );
    c.namespaces.insert(
        "quiet".into(),
        NamespaceConfig {
            presence: false,
            ..ns(S::Anyone, P::Subscribers)
        },
    );
    c.namespaces.insert(
        "room".into(),
        NamespaceConfig {
            join_leave: true,
            ..ns(S::Anyone, P::Subscribers)
        },
    );
    c
}

fn user(id: &str, rooms: &[&str], expires: Option<u64>) -> User {
    User {
        id: id.into(),
        info: None,
        expires,
        rooms: rooms.iter().map(|r| r.to_string()).collect(),
    }
}

fn anonymous() -> User {
    User::default()
}

fn token(claims: MintClaims) -> String {
    mint(SECRET.as_bytes(), HmacAlgorithm::HS256, &claims)
}

/// A node and the protocol it serves.
struct Server {
    node: Node,
    protocol: Protocol,
}

impl Server {
    /// Must run inside a tokio runtime: the node spawns its dispatchers.
    fn new(configure: impl FnOnce(&mut Config)) -> Server {
        let mut config = config();
        configure(&mut config);
        let node = Node::new(config).expect("the configuration is valid");
        Server {
            protocol: Protocol::new(node.clone()),
            node,
        }
    }

    /// A connection as the route builds it, before `on_connect`.
    fn connection(&self, user: User) -> Peer {
        static NEXT: AtomicUsize = AtomicUsize::new(1);
        let id = format!("c_test{}", NEXT.fetch_add(1, Ordering::Relaxed));
        let conn = Connection {
            shared: Arc::new(ConnShared::new(id.into(), 1 << 20, None)),
            user: User::shared(user),
            rooms: Default::default(),
            encoder: Encoder::new(Role::Server, None, usize::MAX),
            close: None,
            route: Arc::new(crate::handler::RouteShared {
                hub: self.node.hub().clone(),
                node: Some(self.node.clone()),
                registry: Arc::new(crate::transport::registry::Registry::default()),
            }),
            timer: None,
            admitted: None,
            state: Session::default(),
        };
        Peer {
            conn,
            protocol: self.protocol.clone(),
            decoder: Decoder::new(Role::Client, DecoderConfig::default(), None),
            received: VecDeque::new(),
        }
    }

    /// A connection after `on_connect`, its `welcome` taken.
    async fn connect(&self, user: User) -> (Peer, Value) {
        let mut peer = self.connection(user);
        peer.protocol.on_connect(&mut peer.conn).await;
        let welcome = peer.push().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        (peer, welcome)
    }

    /// How many connections `room`'s presence counts.
    async fn presence_count(&self, room: &str) -> usize {
        self.node
            .presence(room, None, 100)
            .await
            .unwrap()
            .connections
    }
}

/// One connection, and what it would have written to its client.
struct Peer {
    conn: Connection<Session>,
    protocol: Protocol,
    decoder: Decoder,
    /// Decoded messages not yet looked at, in the order they were queued.
    received: VecDeque<Value>,
}

impl Peer {
    fn id(&self) -> String {
        self.conn.id().to_owned()
    }

    /// Decodes whatever is queued now (as the task would write it) into `received`.
    fn drain(&mut self) {
        let mut bytes = self
            .conn
            .shared
            .outbound
            .take_written()
            .expect("the queue did not overflow");
        while let Some(message) = self.decoder.decode(&mut bytes).expect("valid frames") {
            match message {
                Message::Text(t) => self
                    .received
                    .push_back(serde_json::from_str(t.as_str()).expect("JSON")),
                other => panic!("a text message was expected, not {other:?}"),
            }
        }
        assert!(bytes.is_empty(), "a partial frame was queued");
    }

    /// The next message, waiting (at most [`WAIT`]) for one the dispatcher delivers.
    async fn push(&mut self) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            self.drain();
            if let Some(m) = self.received.pop_front() {
                return m;
            }
            let ready = std::future::poll_fn(|cx| self.conn.shared.outbound.poll_ready(cx));
            if tokio::time::timeout_at(deadline, ready).await.is_err() {
                panic!("no message within {WAIT:?}");
            }
        }
    }

    /// Asserts that nothing is queued now nor waiting to be looked at.
    fn nothing_more(&mut self) {
        self.drain();
        assert!(self.received.is_empty(), "unexpected: {:?}", self.received);
    }

    /// Sends a text message and returns the reply or error that answers it (matched by
    /// `id`; with no id, the first error). Pushes queued meanwhile stay in `received`.
    async fn call(&mut self, command: Value) -> Value {
        let text = Utf8Bytes::from(command.to_string());
        self.protocol
            .on_message(&mut self.conn, Incoming::Text(text))
            .await;
        self.answer(command.get("id").cloned().unwrap_or(Value::Null))
    }

    /// Takes the reply or error with `id` (null: an error without id) queued by a hook.
    fn answer(&mut self, id: Value) -> Value {
        self.drain();
        let i = self
            .received
            .iter()
            .position(|m| (m["type"] == "reply" || m["type"] == "error") && m["id"] == id)
            .unwrap_or_else(|| panic!("no answer with id {id} in {:?}", self.received));
        self.received.remove(i).unwrap()
    }

    /// `call`, expecting a reply: its result.
    async fn ok(&mut self, command: Value) -> Value {
        let answer = self.call(command.clone()).await;
        assert_eq!(answer["type"], "reply", "{command} -> {answer}");
        answer["result"].clone()
    }

    /// `call`, expecting an error: its code.
    async fn refused(&mut self, command: Value) -> String {
        let answer = self.call(command.clone()).await;
        assert_eq!(answer["type"], "error", "{command} -> {answer}");
        assert!(
            answer["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{answer}"
        );
        answer["code"].as_str().unwrap().to_owned()
    }

    async fn subscribe(&mut self, room: &str) -> Value {
        self.ok(json!({"id": 1, "type": "subscribe", "room": room}))
            .await
    }

    async fn control(&mut self, control: Control) {
        self.protocol.on_control(&mut self.conn, control).await;
    }

    fn rooms(&self) -> Vec<&str> {
        self.conn.rooms().collect()
    }
}

fn keys(v: &Value) -> Vec<&str> {
    let mut keys: Vec<_> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
    keys.sort();
    keys
}

#[tokio::test]
async fn welcome_carries_the_personal_room_and_the_claimed_rooms_but_not_refused_ones() {
    let s = Server::new(|_| {});
    let expires = now_unix() + 3600;
    // Refused claims: a namespace the node does not serve, another user's personal room.
    let alice = user("alice", &["vip:gold", "nope:1", "user:bob"], Some(expires));
    let (mut a, welcome) = s.connect(alice).await;
    assert_eq!(welcome["connection"], a.id());
    assert_eq!(welcome["user"], "alice");
    assert_eq!(welcome["node"], "n_test");
    assert_eq!(welcome["expires"], expires);
    let ping = s.node.config().websocket.ping_interval.as_secs();
    assert_eq!(welcome["ping_interval"], ping);
    assert_eq!(keys(&welcome["rooms"]), ["user:alice", "vip:gold"]);
    assert_eq!(welcome["rooms"]["vip:gold"]["offset"], 0);
    assert!(welcome["rooms"]["vip:gold"]["epoch"].is_string());
    assert_eq!(a.rooms(), ["user:alice", "vip:gold"]);
    for room in ["user:alice", "vip:gold"] {
        assert_eq!(s.presence_count(room).await, 1, "{room}");
    }
    assert!(s.node.hub().members("nope:1").is_none());
    assert!(s.node.hub().members("user:bob").is_none());

    // The rooms are live: a publication continues at the welcome's position.
    let publish = Publish {
        data: Bytes::from_static(b"{\"n\":1}"),
        ..Publish::default()
    };
    s.node.publish("vip:gold", publish).await.unwrap();
    let m = a.push().await;
    assert_eq!(m["type"], "message");
    assert_eq!(m["room"], "vip:gold");
    assert_eq!(m["epoch"], welcome["rooms"]["vip:gold"]["epoch"]);
    assert_eq!(m["offset"], 1);
    assert_eq!(m["data"], json!({"n": 1}));
    a.nothing_more();

    // Anonymous connections have no personal room.
    let (mut anon, welcome) = s.connect(anonymous()).await;
    assert_eq!(welcome["user"], "");
    assert_eq!(welcome["expires"], Value::Null);
    assert_eq!(keys(&welcome["rooms"]), Vec::<&str>::new());
    anon.nothing_more();
}

#[tokio::test]
async fn welcome_subscribes_no_more_rooms_than_the_connection_may_have() {
    let s = Server::new(|c| c.limits.subscriptions_per_connection = 2);
    let (_, welcome) = s.connect(user("alice", &["vip:a", "vip:b"], None)).await;
    assert_eq!(keys(&welcome["rooms"]), ["user:alice", "vip:a"]);
    assert!(s.node.hub().members("vip:b").is_none());
}

#[tokio::test]
async fn subscribe_refusals_leave_nothing_behind() {
    let s = Server::new(|_| {});
    let (mut a, _) = s.connect(user("alice", &["vip:gold"], None)).await;
    let sub = |room: &str| json!({"id": 7, "type": "subscribe", "room": room});
    assert_eq!(a.refused(sub("bad room")).await, "bad_room");
    assert_eq!(a.refused(sub("")).await, "bad_room");
    assert_eq!(a.refused(sub("nope:1")).await, "unknown_namespace");
    assert_eq!(a.refused(sub("user:bob")).await, "forbidden");
    assert_eq!(a.refused(sub("vip:silver")).await, "forbidden");
    assert_eq!(a.refused(sub("tok:x")).await, "forbidden");
    let for_y = token(MintClaims {
        sub: "alice".into(),
        ttl: Some(Duration::from_secs(60)),
        room: Some("tok:y".into()),
        ..MintClaims::default()
    });
    let with =
        |room: &str, t: &str| json!({"id": 8, "type": "subscribe", "room": room, "token": t});
    assert_eq!(a.refused(with("tok:x", &for_y)).await, "forbidden");
    for room in ["nope:1", "user:bob", "vip:silver", "tok:x"] {
        assert!(s.node.hub().members(room).is_none(), "{room}");
    }
    assert_eq!(a.rooms(), ["user:alice", "vip:gold"]);

    // Allowed: by the policy, by the claim, with the right subscription token.
    let reply = a.subscribe("chat:a").await;
    assert_eq!(reply["room"], "chat:a");
    assert_eq!(reply["offset"], 0);
    assert!(reply["epoch"].is_string());
    assert_eq!(reply.get("recovered"), None, "no 'since', no 'recovered'");
    a.ok(with("tok:y", &for_y)).await;
    assert_eq!(a.refused(sub("chat:a")).await, "already_subscribed");
    assert_eq!(a.refused(sub("vip:gold")).await, "already_subscribed");
    assert_eq!(a.rooms(), ["chat:a", "tok:y", "user:alice", "vip:gold"]);

    // Namespaces for authenticated users only.
    let (mut anon, _) = s.connect(anonymous()).await;
    assert_eq!(anon.refused(sub("members:x")).await, "forbidden");
    a.subscribe("members:x").await;
    anon.nothing_more();
    a.nothing_more();
}

#[tokio::test]
async fn subscribe_recovers_what_was_missed_since_a_position() {
    let s = Server::new(|_| {});
    let (mut a, _) = s.connect(anonymous()).await;
    let first = a.subscribe("chat:r").await;
    for n in 1..=3 {
        a.ok(json!({"id": n, "type": "publish", "room": "chat:r", "data": n}))
            .await;
    }
    for n in 1..=3 {
        assert_eq!(a.push().await["offset"], n);
    }
    a.ok(json!({"id": 4, "type": "unsubscribe", "room": "chat:r"}))
        .await;
    let since = json!({"epoch": first["epoch"], "offset": 1});
    let reply = a
        .ok(json!({"id": 5, "type": "subscribe", "room": "chat:r", "since": since}))
        .await;
    assert_eq!(reply["recovered"], true);
    assert_eq!(reply["offset"], 3);
    let offsets: Vec<_> = reply["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].clone())
        .collect();
    assert_eq!(offsets, [json!(2), json!(3)]);

    // Another epoch cannot be recovered from.
    a.ok(json!({"id": 6, "type": "unsubscribe", "room": "chat:r"}))
        .await;
    let since = json!({"epoch": "not-the-epoch", "offset": 1});
    let reply = a
        .ok(json!({"id": 7, "type": "subscribe", "room": "chat:r", "since": since}))
        .await;
    assert_eq!(reply["recovered"], false);
    assert_eq!(reply["publications"], json!([]));
    a.nothing_more();
}

#[tokio::test]
async fn subscriptions_per_connection_are_limited() {
    let s = Server::new(|c| c.limits.subscriptions_per_connection = 3);
    // The personal room counts.
    let (mut b, _) = s.connect(user("bob", &[], None)).await;
    b.subscribe("chat:a").await;
    b.subscribe("chat:b").await;
    let sub_c = json!({"id": 3, "type": "subscribe", "room": "chat:c"});
    assert_eq!(b.refused(sub_c.clone()).await, "limit_exceeded");
    assert!(s.node.hub().members("chat:c").is_none());
    // A server-side subscription is refused too, silently (nobody waits for an answer).
    b.control(Control::Subscribe("chat:c".into())).await;
    b.nothing_more();
    assert_eq!(b.rooms(), ["chat:a", "chat:b", "user:bob"]);

    b.ok(json!({"id": 4, "type": "unsubscribe", "room": "chat:a"}))
        .await;
    b.ok(sub_c).await;
    assert_eq!(b.rooms(), ["chat:b", "chat:c", "user:bob"]);
}

#[tokio::test]
async fn max_subscribers_limits_a_room() {
    let s = Server::new(|_| {});
    let (mut a, _) = s.connect(anonymous()).await;
    let (mut b, _) = s.connect(anonymous()).await;
    a.subscribe("small:1").await;
    let sub = json!({"id": 2, "type": "subscribe", "room": "small:1"});
    assert_eq!(b.refused(sub.clone()).await, "limit_exceeded");
    assert_eq!(s.node.hub().members("small:1").unwrap().len(), 1);
    assert_eq!(s.presence_count("small:1").await, 1);
    assert_eq!(b.rooms(), Vec::<&str>::new());
    // Another room of the namespace has its own count.
    b.subscribe("small:2").await;

    a.ok(json!({"id": 3, "type": "unsubscribe", "room": "small:1"}))
        .await;
    b.ok(sub).await;
    assert_eq!(s.presence_count("small:1").await, 1);
}

#[tokio::test]
async fn publish_follows_the_namespace_policy() {
    let s = Server::new(|_| {});
    let (mut a, _) = s.connect(user("alice", &[], None)).await;
    let (mut anon, _) = s.connect(anonymous()).await;
    let publish = |room: &str| json!({"id": 9, "type": "publish", "room": room, "data": "x"});

    assert_eq!(a.refused(publish("user:alice")).await, "forbidden");
    assert_eq!(a.refused(publish("chat:p")).await, "not_subscribed");
    a.subscribe("feed:p").await;
    assert_eq!(a.refused(publish("feed:p")).await, "forbidden");
    assert_eq!(anon.refused(publish("board:p")).await, "forbidden");
    assert_eq!(a.refused(publish("nope:p")).await, "unknown_namespace");
    assert_eq!(a.refused(publish("bad room")).await, "bad_room");
    // Nothing was published by a refused publish.
    let history = s.node.history("feed:p", None, None, false).await.unwrap();
    assert_eq!(history.position.offset, 0);

    // `authenticated`: any user, subscribed or not.
    let reply = a.ok(publish("board:p")).await;
    assert_eq!(reply["room"], "board:p");
    assert_eq!(reply["offset"], 1);

    // `subscribers`: once subscribed; the publisher gets its own publication by default.
    let sub = a.subscribe("chat:p").await;
    let reply = a
        .ok(json!({"id": 10, "type": "publish", "room": "chat:p", "data": {"text": "hi"}}))
        .await;
    assert_eq!(
        reply,
        json!({"room": "chat:p", "epoch": sub["epoch"], "offset": 1})
    );
    let m = a.push().await;
    assert_eq!(m["type"], "message");
    assert_eq!(m["offset"], 1);
    assert_eq!(m["data"], json!({"text": "hi"}));
    assert_eq!(m["from"], json!({"user": "alice", "connection": a.id()}));
    a.nothing_more();
    anon.nothing_more();
}

#[tokio::test]
async fn echo_false_leaves_out_the_publisher_only() {
    let s = Server::new(|_| {});
    let (mut a, _) = s.connect(anonymous()).await;
    let (mut b, _) = s.connect(anonymous()).await;
    a.subscribe("chat:e").await;
    b.subscribe("chat:e").await;
    let quiet =
        json!({"id": 1, "type": "publish", "room": "chat:e", "data": "first", "echo": false});
    assert_eq!(a.ok(quiet).await["offset"], 1);
    let loud = json!({"id": 2, "type": "publish", "room": "chat:e", "data": "second"});
    assert_eq!(a.ok(loud).await["offset"], 2);
    // Per-room order: had `first` reached the publisher, it would come before `second`.
    let m = a.push().await;
    assert_eq!((&m["data"], &m["offset"]), (&json!("second"), &json!(2)));
    for (data, offset) in [("first", 1), ("second", 2)] {
        let m = b.push().await;
        assert_eq!((&m["data"], &m["offset"]), (&json!(data), &json!(offset)));
    }
    a.nothing_more();
    b.nothing_more();
}

#[tokio::test]
async fn presence_and_history_need_a_subscription() {
    let s = Server::new(|_| {});
    let (mut a, _) = s.connect(user("alice", &[], None)).await;
    let presence = json!({"id": 1, "type": "presence", "room": "chat:h"});
    let history = json!({"id": 2, "type": "history", "room": "chat:h"});
    assert_eq!(a.refused(presence.clone()).await, "not_subscribed");
    assert_eq!(a.refused(history.clone()).await, "not_subscribed");

    a.subscribe("chat:h").await;
    a.ok(json!({"id": 3, "type": "publish", "room": "chat:h", "data": 5}))
        .await;
    let p = a.ok(presence).await;
    assert_eq!(p["connections"], 1);
    assert_eq!(p["users"], 1);
    assert_eq!(
        p["members"],
        json!([{"user": "alice", "connection": a.id()}])
    );
    let h = a.ok(history).await;
    assert_eq!(h["offset"], 1);
    assert_eq!(h["publications"][0]["offset"], 1);
    assert_eq!(h["publications"][0]["data"], 5);
    assert_eq!(a.push().await["offset"], 1);

    // Presence off for the namespace: refused even when subscribed.
    a.subscribe("quiet:h").await;
    let quiet = json!({"id": 4, "type": "presence", "room": "quiet:h"});
    assert_eq!(a.refused(quiet).await, "forbidden");
    a.nothing_more();
}

#[tokio::test]
async fn unsubscribe_needs_a_subscription_and_leaves_presence() {
    let s = Server::new(|_| {});
    let (mut a, _) = s.connect(anonymous()).await;
    let unsub = |room: &str| json!({"id": 1, "type": "unsubscribe", "room": room});
    assert_eq!(a.refused(unsub("chat:u")).await, "not_subscribed");
    assert_eq!(a.refused(unsub("bad room")).await, "bad_room");
    a.subscribe("chat:u").await;
    assert_eq!(s.presence_count("chat:u").await, 1);
    assert_eq!(a.ok(unsub("chat:u")).await, json!({}));
    assert_eq!(a.rooms(), Vec::<&str>::new());
    assert_eq!(s.presence_count("chat:u").await, 0);
    assert!(s.node.hub().members("chat:u").is_none());
    assert_eq!(a.refused(unsub("chat:u")).await, "not_subscribed");
    a.nothing_more();
}

#[tokio::test]
async fn refresh_needs_a_valid_token_of_the_same_user() {
    let s = Server::new(|_| {});
    let (mut a, _) = s.connect(user("alice", &[], Some(now_unix() + 60))).await;
    let refresh = |t: &str| json!({"id": 1, "type": "refresh", "token": t});
    let ttl = Some(Duration::from_secs(7200));
    let bob = token(MintClaims {
        sub: "bob".into(),
        ttl,
        ..MintClaims::default()
    });
    let before = a.conn.user.expires;
    assert_eq!(a.refused(refresh(&bob)).await, "forbidden");
    assert_eq!(a.refused(refresh("not.a.token")).await, "unauthorized");
    assert_eq!(
        a.conn.user.expires, before,
        "a refused refresh changes nothing"
    );

    let alice = token(MintClaims {
        sub: "alice".into(),
        ttl,
        ..MintClaims::default()
    });
    let reply = a.ok(refresh(&alice)).await;
    let expires = reply["expires"].as_u64().expect("'expires' is a number");
    assert!(expires >= now_unix() + 7000, "{reply}");
    assert_eq!(a.conn.user.expires, Some(expires));
    assert!(
        a.conn.shared.deadline().is_some(),
        "the expiry timer is set"
    );
    a.nothing_more();
}

#[tokio::test]
async fn other_commands_and_a_binary_message() {
    let s = Server::new(|_| {});
    let (mut a, _) = s.connect(anonymous()).await;
    a.protocol
        .on_message(&mut a.conn, Incoming::Binary(Bytes::from_static(b"{}")))
        .await;
    let error = a.answer(Value::Null);
    assert_eq!(error["type"], "error");
    assert_eq!(error["code"], "bad_request");
    // The connection goes on.
    let pong = {
        let text = Utf8Bytes::from(json!({"id": 2, "type": "ping"}).to_string());
        a.protocol
            .on_message(&mut a.conn, Incoming::Text(text))
            .await;
        a.push().await
    };
    assert_eq!(pong, json!({"type": "pong", "id": 2}));
    let auth = json!({"id": 3, "type": "auth", "token": "x"});
    assert_eq!(a.refused(auth).await, "bad_request");
    let rpc = json!({"id": 4, "type": "rpc", "method": "m", "data": {}});
    assert_eq!(a.refused(rpc).await, "unavailable");
    assert_eq!(
        a.refused(json!({"id": 5, "type": "subscribe"})).await,
        "bad_request"
    );
    assert!(a.conn.close.is_none(), "errors never close the connection");
    a.nothing_more();
}

#[tokio::test]
async fn control_subscribe_and_unsubscribe_push_subscribed_and_unsubscribed() {
    let s = Server::new(|_| {});
    let (mut a, _) = s.connect(anonymous()).await;
    a.control(Control::Subscribe("chat:s".into())).await;
    let pushed = a.push().await;
    assert_eq!(pushed["type"], "subscribed");
    assert_eq!(pushed["room"], "chat:s");
    assert_eq!(pushed["offset"], 0);
    assert!(pushed["epoch"].is_string());
    assert_eq!(a.rooms(), ["chat:s"]);
    assert_eq!(s.presence_count("chat:s").await, 1);
    // Already subscribed: nothing to say.
    a.control(Control::Subscribe("chat:s".into())).await;
    // A room the node does not serve: refused, logged, nothing pushed.
    a.control(Control::Subscribe("nope:s".into())).await;
    assert!(s.node.hub().members("nope:s").is_none());
    a.nothing_more();

    a.control(Control::Unsubscribe("chat:s".into())).await;
    let pushed = a.push().await;
    assert_eq!(
        pushed,
        json!({"type": "unsubscribed", "room": "chat:s", "reason": "server"})
    );
    assert_eq!(a.rooms(), Vec::<&str>::new());
    assert_eq!(s.presence_count("chat:s").await, 0);
    // Not subscribed: nothing to say.
    a.control(Control::Unsubscribe("chat:s".into())).await;
    a.nothing_more();

    a.control(Control::Close(Disconnect::TOKEN_EXPIRED)).await;
    assert_eq!(
        a.conn.close.as_deref(),
        Some(&Disconnect::TOKEN_EXPIRED.close_frame())
    );
}

#[tokio::test]
async fn on_close_leaves_every_room() {
    let s = Server::new(|_| {});
    let (mut a, _) = s.connect(user("alice", &["vip:gold"], None)).await;
    let (mut b, _) = s.connect(anonymous()).await;
    b.subscribe("room:c").await;
    a.subscribe("room:c").await;
    a.subscribe("chat:c").await;
    let join = b.push().await;
    assert_eq!(join["type"], "join");
    assert_eq!(join["member"]["connection"], a.id());
    let rooms = ["chat:c", "room:c", "user:alice", "vip:gold"];
    assert_eq!(a.rooms(), rooms);

    a.protocol.on_close(&mut a.conn, None).await;
    assert_eq!(a.rooms(), Vec::<&str>::new());
    for room in rooms {
        let page = s.node.presence(room, None, 100).await.unwrap();
        assert!(
            page.members.iter().all(|m| *m.connection != *a.id()),
            "{room}"
        );
    }
    assert_eq!(s.presence_count("room:c").await, 1, "b stays");
    for room in ["chat:c", "user:alice", "vip:gold"] {
        assert_eq!(s.presence_count(room).await, 0, "{room}");
        assert!(s.node.hub().members(room).is_none(), "{room}");
    }
    let leave = b.push().await;
    assert_eq!(leave["type"], "leave");
    assert_eq!(leave["member"]["connection"], a.id());
    b.nothing_more();
}

#[tokio::test]
async fn the_expiry_timer_asks_for_a_refresh_then_closes_with_4501() {
    let s = Server::new(|_| {});
    let (mut a, _) = s.connect(user("alice", &[], Some(now_unix() + 20))).await;
    a.protocol.on_timer(&mut a.conn).await;
    let pushed = a.push().await;
    assert_eq!(pushed["type"], "refresh_required");
    assert_eq!(
        Some(pushed["expires"].as_u64().unwrap()),
        a.conn.user.expires
    );
    assert!(a.conn.shared.deadline().is_some());
    // Asked once only.
    a.protocol.on_timer(&mut a.conn).await;
    a.nothing_more();
    assert!(a.conn.close.is_none());

    Arc::make_mut(&mut a.conn.user).expires = Some(now_unix() - 1);
    a.protocol.on_timer(&mut a.conn).await;
    assert_eq!(
        a.conn.close.as_deref(),
        Some(&Disconnect::TOKEN_EXPIRED.close_frame())
    );

    // No expiry: the timer has nothing to do.
    let (mut b, _) = s.connect(user("bob", &[], None)).await;
    b.protocol.on_timer(&mut b.conn).await;
    b.nothing_more();
    assert!(b.conn.close.is_none());
}

/// The command rate limit (7.4): the burst, then `rate_limited` with `retry_after_ms` and the
/// command's id, one more command per interval, and 4502 when the excess goes on.
#[tokio::test(start_paused = true)]
async fn commands_beyond_the_rate_are_refused_then_closed_with_4502() {
    let s = Server::new(|c| {
        c.limits.commands_per_second = 10;
        c.limits.commands_burst = 3;
        c.limits.rate_limit_close_after = Duration::from_secs(1);
    });
    let (mut a, _) = s.connect(anonymous()).await;
    async fn ping(a: &mut Peer, id: u64) -> Value {
        let text = Utf8Bytes::from(json!({"id": id, "type": "ping"}).to_string());
        a.protocol
            .on_message(&mut a.conn, Incoming::Text(text))
            .await;
        a.drain();
        let i = a
            .received
            .iter()
            .position(|m| m["id"] == id)
            .unwrap_or_else(|| panic!("no answer to ping {id}: {:?}", a.received));
        a.received.remove(i).unwrap()
    }
    for id in 1..=3 {
        assert_eq!(ping(&mut a, id).await["type"], "pong");
    }
    let refused = ping(&mut a, 4).await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "rate_limited", "{refused}");
    assert_eq!(refused["retry_after_ms"], 100, "{refused}");
    // A malformed command is counted and refused the same way, without an id.
    let text = Utf8Bytes::from("{not json");
    a.protocol
        .on_message(&mut a.conn, Incoming::Text(text))
        .await;
    assert_eq!(a.answer(Value::Null)["code"], "rate_limited");
    tokio::time::advance(Duration::from_millis(100)).await;
    assert_eq!(ping(&mut a, 5).await["type"], "pong");
    assert!(a.conn.close.is_none(), "refusals alone do not close");
    // Twice the rate: refused in part, then closed once it lasted a second.
    let mut id = 6;
    while a.conn.close.is_none() {
        assert!(id < 100, "not closed after {id} commands");
        tokio::time::advance(Duration::from_millis(50)).await;
        let text = Utf8Bytes::from(json!({"id": id, "type": "ping"}).to_string());
        a.protocol
            .on_message(&mut a.conn, Incoming::Text(text))
            .await;
        id += 1;
    }
    // The excess began with command 4 (at 0 ms); command 5 (at 100 ms) left the bucket less
    // than half full, so it went on; a second later comes the close.
    assert!((20..=30).contains(&id), "closed after {id} commands");
    let close = a.conn.close.as_ref().unwrap();
    assert_eq!(close.code.0, 4502);
    let metrics = s.node.metrics().encode();
    let counted = metrics
        .lines()
        .find(|l| l.contains("rate_limited_commands") && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no rate_limited counter in\n{metrics}"));
    assert!(counted >= 2.0, "{counted}");
}

/// Without a limit (`commands_per_second = 0`) a burst of any size is served.
#[tokio::test]
async fn commands_per_second_zero_turns_the_limit_off() {
    let s = Server::new(|c| c.limits.commands_per_second = 0);
    let (mut a, _) = s.connect(anonymous()).await;
    for id in 1..=300 {
        let text = Utf8Bytes::from(json!({"id": id, "type": "ping"}).to_string());
        a.protocol
            .on_message(&mut a.conn, Incoming::Text(text))
            .await;
    }
    a.drain();
    assert_eq!(a.received.len(), 300);
    assert!(a.received.iter().all(|m| m["type"] == "pong"));
}

/// `data` a client of ours could not parse is refused with `bad_request` naming `data`, and
/// nothing is stored.
#[tokio::test]
async fn publish_refuses_data_clients_cannot_parse() {
    let s = Server::new(|_| {});
    let (mut a, _) = s.connect(user("alice", &[], None)).await;
    a.subscribe("chat:d").await;
    for (id, data) in [
        (1, r#""a\udc00""#),
        (2, "-1e400"),
        (3, &"7".repeat(500)[..]),
    ] {
        let text = format!(r#"{{"id":{id},"type":"publish","room":"chat:d","data":{data}}}"#);
        a.protocol
            .on_message(&mut a.conn, Incoming::Text(Utf8Bytes::from(text)))
            .await;
        let answer = a.answer(json!(id));
        assert_eq!(answer["code"], "bad_request", "{answer}");
        assert!(
            answer["message"].as_str().unwrap().contains("'data'"),
            "{answer}"
        );
    }
    let h = s.node.history("chat:d", None, None, false).await.unwrap();
    assert!(h.publications.is_empty());
}

/// Above `join_leave_max_members` members a room sends no join or leave pushes (a join costs
/// O(1) pushes, not O(members)); presence still counts everyone.
#[tokio::test]
async fn big_rooms_send_no_join_or_leave_pushes() {
    const MAX: usize = 50;
    const MEMBERS: usize = 200;
    let s = Server::new(|c| {
        c.namespaces.get_mut("room").unwrap().join_leave_max_members = MAX;
    });
    let mut peers: Vec<Peer> = Vec::new();
    for i in 0..MEMBERS {
        let (mut p, _) = s.connect(anonymous()).await;
        p.subscribe("room:big").await;
        peers.push(p);
        // The joins of the 2nd to the MAX-th member reach the first (waiting for each, so
        // that the room is as small at delivery as it was at the join).
        if (1..MAX).contains(&i) {
            let join = peers[0].push().await;
            assert_eq!(join["type"], "join", "{join}");
        }
    }
    assert_eq!(s.presence_count("room:big").await, MEMBERS);
    // Events of a room are delivered in order: once the marker arrives, every join pushed
    // before it has too.
    async fn until_marker(s: &Server, p: &mut Peer, marker: &str) -> Vec<Value> {
        s.node
            .publish(
                "room:big",
                Publish {
                    data: Bytes::from(format!("\"{marker}\"")),
                    ..Publish::default()
                },
            )
            .await
            .unwrap();
        let mut before = Vec::new();
        loop {
            let m = p.push().await;
            if m["type"] == "message" && m["data"] == marker {
                return before;
            }
            before.push(m);
        }
    }
    // None after the MAX-th.
    let first = &mut peers[0];
    let before = until_marker(&s, first, "m1").await;
    assert!(before.is_empty(), "{before:?}");
    // A leave from a room above the threshold is not pushed either.
    let mut last = peers.pop().unwrap();
    last.protocol.on_close(&mut last.conn, None).await;
    let before = until_marker(&s, &mut peers[0], "m2").await;
    assert!(before.is_empty(), "{before:?}");
    assert_eq!(s.presence_count("room:big").await, MEMBERS - 1);
}

/// The join storm of the security issue: 10,000 members joining one room at once with the
/// default `join_leave_max_members` (1,000) cost at most the pushes of the first 1,000 joins
/// to at most 1,000 members (a join is pushed only while the room is that small, when it
/// happens and when it is delivered), not 10,000 × 9,999 / 2 = 50 million; presence still
/// counts all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_members_join_one_room_without_a_storm() {
    const MEMBERS: usize = 10_000;
    let s = Server::new(|_| {});
    let max = s.node.config().namespaces["room"].join_leave_max_members;
    assert_eq!(max, 1000, "the default threshold");
    let mut peers = Vec::with_capacity(MEMBERS);
    for _ in 0..MEMBERS {
        let (mut p, _) = s.connect(anonymous()).await;
        p.subscribe("room:storm").await;
        peers.push(p);
    }
    assert_eq!(s.presence_count("room:storm").await, MEMBERS);
    s.node
        .publish(
            "room:storm",
            Publish {
                data: Bytes::from_static(b"\"marker\""),
                ..Publish::default()
            },
        )
        .await
        .unwrap();
    // Every push of the room before the marker, on every member: the joins, in room order.
    let mut joins = 0usize;
    for p in &mut peers {
        loop {
            let m = p.push().await;
            if m["type"] == "message" && m["data"] == "marker" {
                break;
            }
            assert_eq!(m["type"], "join", "{m}");
            joins += 1;
        }
    }
    assert!(joins <= max * (max - 1), "{joins} join pushes");
}
