//! The node as a service, over loopback: the per-user commands reach every connection of a
//! user through its control inbox, and the v1 protocol answers them with its pushes.

use std::time::Duration;

use switchboard_client::{WsOptions, WsStream};
use switchboard_protocol::codec::Message;
use switchboard_server::{
    Disconnect, Node,
    auth::{HmacAlgorithm, MintClaims, mint},
    config::{Config, NamespaceConfig},
};

const SECRET: &str = "switchboard-service-tests-secret-0123456789";
const T: Duration = Duration::from_secs(10);

struct Running {
    node: Node,
    addr: std::net::SocketAddr,
    shutdown: tokio_util::sync::CancellationToken,
}

async fn start() -> Running {
    // Join and leave pushes are not what this test is about: keep the streams to the pushes
    // of the commands.
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        personal_rooms: false,
        ..Config::default()
    };
    config.auth.secret = Some(SECRET.into());
    let news = NamespaceConfig {
        join_leave: false,
        ..NamespaceConfig::default()
    };
    config.namespaces.insert("news".into(), news);
    let node = Node::new(config).unwrap();
    let server = node.server().bind().await.unwrap();
    let addr = server.local_addr().unwrap();
    let shutdown = server.shutdown_token();
    tokio::spawn(server.run(std::future::pending()));
    Running {
        node,
        addr,
        shutdown,
    }
}

async fn connect(running: &Running, user: &str) -> WsStream {
    let token = mint(
        SECRET.as_bytes(),
        HmacAlgorithm::HS256,
        &MintClaims {
            sub: user.into(),
            ttl: Some(Duration::from_secs(3600)),
            ..MintClaims::default()
        },
    );
    let url = format!("ws://{}/ws?token={token}", running.addr);
    let mut ws = WsStream::connect(&url, &WsOptions::default())
        .await
        .unwrap();
    assert_eq!(json(&mut ws).await["type"], "welcome");
    ws
}

async fn next(ws: &mut WsStream) -> Option<Message> {
    tokio::time::timeout(T, ws.recv()).await.unwrap().unwrap()
}

async fn json(ws: &mut WsStream) -> serde_json::Value {
    match next(ws).await {
        Some(Message::Text(t)) => serde_json::from_str(t.as_str()).unwrap(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_commands_reach_every_connection_of_the_user_and_no_other() {
    let running = start().await;
    let mut a1 = connect(&running, "alice").await;
    let mut a2 = connect(&running, "alice").await;
    let mut b = connect(&running, "bob").await;
    let node = &running.node;
    assert_eq!(node.info().connections, 3);
    assert_eq!(node.info().users, 2);

    // Subscribe every connection of alice: each gets the push, then the room's publications.
    node.subscribe_user("alice", "news:today").await.unwrap();
    for ws in [&mut a1, &mut a2] {
        let push = json(ws).await;
        assert_eq!(push["type"], "subscribed", "{push}");
        assert_eq!(push["room"], "news:today");
    }
    let published = node
        .publish(
            "news:today",
            switchboard_server::node::Publish {
                data: bytes::Bytes::from_static(br#"{"n":1}"#),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(published.position.unwrap().offset, 1);
    for ws in [&mut a1, &mut a2] {
        let push = json(ws).await;
        assert_eq!(push["type"], "message", "{push}");
        assert_eq!(push["data"]["n"], 1);
    }
    assert_eq!(node.rooms("news:").len(), 1);

    // Unsubscribe: a push, and nothing more from the room.
    node.unsubscribe_user("alice", "news:today").await.unwrap();
    for ws in [&mut a1, &mut a2] {
        let push = json(ws).await;
        assert_eq!(push["type"], "unsubscribed", "{push}");
        assert_eq!(push["reason"], "server");
    }
    assert!(node.rooms("news:").is_empty());

    // A bad room is refused before anything is asked of a connection.
    let refused = node.subscribe_user("alice", "").await.unwrap_err();
    assert_eq!(refused.code.as_str(), "bad_room");

    // Disconnect with a reason of our own: both of alice's connections close with it.
    node.disconnect_user("alice", Disconnect::DISCONNECTED.with_reason("banned"))
        .await
        .unwrap();
    for ws in [&mut a1, &mut a2] {
        match next(ws).await {
            Some(Message::Close(Some(frame))) => {
                assert_eq!(frame.code.0, 4003);
                assert_eq!(frame.reason_str(), "banned");
            }
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
    // Bob was not touched: he still answers a ping.
    b.send_text(r#"{"type":"ping","id":1}"#).await.unwrap();
    assert_eq!(json(&mut b).await["type"], "pong");
    node.disconnect_user("nobody", Disconnect::RECONNECT)
        .await
        .unwrap();
    running.shutdown.cancel();
}
