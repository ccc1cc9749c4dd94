//! What the example tests share: a server on a free loopback port, clients that speak JSON.

#![allow(dead_code, unreachable_pub)] // each test binary uses its own part of it

use std::{net::SocketAddr, time::Duration};

use serde_json::Value;
use switchboard_client::{WsOptions, WsStream};
use switchboard_protocol::codec::Message;
use switchboard_server::{Route, Server};
use tokio_util::sync::CancellationToken;

/// How long any one expected message may take: generous, since the machine is shared.
pub const WAIT: Duration = Duration::from_secs(10);

/// A server running one route on 127.0.0.1:0, in this process, until [`Serving::stop`].
pub struct Serving {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    running: tokio::task::JoinHandle<bool>,
}

impl Serving {
    pub async fn start(route: Route) -> Serving {
        let server = Server::builder(([127, 0, 0, 1], 0).into())
            .route(route)
            .bind()
            .await
            .expect("bind 127.0.0.1:0");
        Serving {
            addr: server.local_addr().unwrap(),
            shutdown: server.shutdown_token(),
            running: tokio::spawn(server.run(std::future::pending())),
        }
    }

    /// `ws://ADDR{path_and_query}`.
    pub fn url(&self, path_and_query: &str) -> String {
        format!("ws://{}{path_and_query}", self.addr)
    }

    /// Shuts the server down and asserts it drained within its timeout.
    pub async fn stop(self) {
        self.shutdown.cancel();
        assert!(self.running.await.unwrap(), "drained within the timeout");
    }
}

/// A connected client.
pub async fn connect(url: &str) -> WsStream {
    tokio::time::timeout(WAIT, WsStream::connect(url, &WsOptions::default()))
        .await
        .expect("connected in time")
        .unwrap_or_else(|e| panic!("{url}: {e}"))
}

/// The error of an upgrade the server refuses (it names the HTTP status).
pub async fn refused(url: &str) -> String {
    match tokio::time::timeout(WAIT, WsStream::connect(url, &WsOptions::default()))
        .await
        .expect("answered in time")
    {
        Ok(_) => panic!("{url}: accepted, expected a refusal"),
        Err(e) => e.to_string(),
    }
}

/// Sends `value` as a JSON text message.
pub async fn send(ws: &mut WsStream, value: Value) {
    ws.send_text(&value.to_string()).await.unwrap();
}

/// The next message, which must be JSON text, within [`WAIT`].
pub async fn recv(ws: &mut WsStream) -> Value {
    match tokio::time::timeout(WAIT, ws.recv())
        .await
        .expect("a message in time")
        .unwrap()
    {
        Some(Message::Text(t)) => serde_json::from_str(t.as_str()).expect("JSON"),
        other => panic!("expected a JSON text message, got {other:?}"),
    }
}

/// The next message, asserting its `type`.
pub async fn expect(ws: &mut WsStream, kind: &str) -> Value {
    let got = recv(ws).await;
    assert_eq!(got["type"], kind, "{got}");
    got
}

/// The next message, asserting it is the error `code`; its message.
pub async fn expect_error(ws: &mut WsStream, code: &str) -> String {
    let got = expect(ws, "error").await;
    assert_eq!(got["code"], code, "{got}");
    got["message"].as_str().expect("a message").to_string()
}
