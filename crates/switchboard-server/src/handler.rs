//! The library API: what an application implements to run its own protocol on Switchboard's
//! transport (`PROTOCOL.md` section 10). The standalone v1 protocol and the echo route are
//! themselves handlers built on it.
//!
//! A [`Handler`] is attached to a path with [`crate::route::Route`]. For each upgrade request
//! the route calls [`Handler::authenticate`]; an accepted connection then gets its own task,
//! which calls the other hooks in order with a [`Connection`] it owns: no locks, and replies
//! sent from a hook are written together with everything else queued for the connection in
//! one vectored write when the hook returns.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, StatusCode, Uri};
use switchboard_protocol::{
    CloseFrame, Disconnect, PreparedMessage,
    codec::{Encoder, Utf8Bytes},
    frame::OpCode,
};
use tokio::time::Instant;

use crate::{
    conn::{ConnShared, Control, RoomSet},
    hub::Hub,
};

/// What an upgrade request shows to [`Handler::authenticate`].
#[derive(Debug)]
pub struct UpgradeContext<'a> {
    /// The request headers.
    pub headers: &'a HeaderMap,
    /// The request URI (path and query).
    pub uri: &'a Uri,
    /// The peer's address.
    pub peer: Option<SocketAddr>,
    /// Every offered subprotocol, `bearer.*` entries included (for token extraction).
    pub protocols: &'a [String],
}

/// The identity of an accepted connection.
#[derive(Debug, Clone, Default)]
pub struct User {
    /// The user id (`sub`); `""` for anonymous connections.
    pub id: Arc<str>,
    /// Raw JSON object shown to others in presence (`info` claim).
    pub info: Option<Bytes>,
    /// Token expiry (unix seconds).
    pub expires: Option<u64>,
    /// Rooms from the token's `rooms` claim.
    pub rooms: Vec<String>,
}

impl User {
    /// `user` behind an `Arc`: anonymous connections (the default user) all share one.
    pub(crate) fn shared(user: User) -> Arc<User> {
        static ANONYMOUS: std::sync::LazyLock<Arc<User>> =
            std::sync::LazyLock::new(|| Arc::new(User::default()));
        let anonymous = user.id.is_empty()
            && user.info.is_none()
            && user.expires.is_none()
            && user.rooms.is_empty();
        if anonymous {
            ANONYMOUS.clone()
        } else {
            Arc::new(user)
        }
    }
}

/// An accepted upgrade: who connects and the handler's state for the connection.
#[derive(Debug)]
pub struct Accepted<S> {
    /// Who connects.
    pub user: User,
    /// The handler's per-connection state.
    pub state: S,
}

/// A refused upgrade: the HTTP status and JSON body to answer with.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The status (401, 403, 429, 503, ...).
    pub status: StatusCode,
    /// The JSON body, `{"error": ..., "reason": ...}` by convention.
    pub body: serde_json::Value,
    /// Extra headers (e.g. `Retry-After`).
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

impl Refusal {
    /// A refusal with `{"error": error, "reason": reason}`.
    pub fn new(status: StatusCode, error: &str, reason: &str) -> Self {
        Refusal {
            status,
            body: serde_json::json!({"error": error, "reason": reason}),
            headers: Vec::new(),
        }
    }
}

/// A data message from the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// Text (valid UTF-8).
    Text(Utf8Bytes),
    /// Binary.
    Binary(Bytes),
}

/// An application's protocol on one route. Each hook runs in the connection's own task.
pub trait Handler: Send + Sync + 'static {
    /// Per-connection state, owned by the connection task.
    type State: Send + 'static;

    /// Decides on an upgrade request before anything is allocated for the connection.
    fn authenticate(
        &self,
        request: &UpgradeContext<'_>,
    ) -> impl Future<Output = Result<Accepted<Self::State>, Refusal>> + Send;

    /// The connection is open; nothing has been received yet.
    fn on_connect(&self, conn: &mut Connection<Self::State>) -> impl Future<Output = ()> + Send {
        let _ = conn;
        async {}
    }

    /// A whole text or binary message arrived.
    fn on_message(
        &self,
        conn: &mut Connection<Self::State>,
        message: Incoming,
    ) -> impl Future<Output = ()> + Send;

    /// The connection closed: `close` is the peer's close frame, or the one the server sent,
    /// or `None` when the TCP connection ended without a close handshake (1006).
    fn on_close(
        &self,
        conn: &mut Connection<Self::State>,
        close: Option<&CloseFrame>,
    ) -> impl Future<Output = ()> + Send {
        let _ = (conn, close);
        async {}
    }

    /// The time set with [`Connection::set_timer`] has come.
    fn on_timer(&self, conn: &mut Connection<Self::State>) -> impl Future<Output = ()> + Send {
        let _ = conn;
        async {}
    }

    /// Another task asked something of this connection through its control inbox
    /// ([`Hub::post`]: the server API, per-user commands). By default a close closes,
    /// and a subscribe or unsubscribe joins or leaves the room in the hub.
    fn on_control(
        &self,
        conn: &mut Connection<Self::State>,
        control: Control,
    ) -> impl Future<Output = ()> + Send {
        match control {
            Control::Close(d) => conn.close(d),
            Control::Subscribe(room) => conn.join(&room),
            Control::Unsubscribe(room) => conn.leave(&room),
        }
        async {}
    }

    /// The peer broke the protocol or the socket failed; the connection is being closed.
    fn on_error(
        &self,
        conn: &mut Connection<Self::State>,
        error: &crate::Error,
    ) -> impl Future<Output = ()> + Send {
        let _ = (conn, error);
        async {}
    }
}

/// An open connection, as its handler sees it.
#[derive(Debug)]
pub struct Connection<S> {
    pub(crate) shared: Arc<ConnShared>,
    /// Shared by every anonymous connection ([`User::shared`]).
    pub(crate) user: Arc<User>,
    pub(crate) rooms: RoomSet,
    pub(crate) encoder: Encoder,
    /// A close asked for by a hook, sent once everything queued before it is written.
    pub(crate) close: Option<Box<CloseFrame>>,
    pub(crate) hub: Option<Hub>,
    /// The armed [`Handler::on_timer`] timer: none (no timer entry) unless its deadline
    /// (kept in [`ConnShared`]) is near.
    pub(crate) timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    /// The handler's state.
    pub state: S,
}

impl<S> Connection<S> {
    /// The connection id (`c_…`), also in every log line of the connection.
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// Who is connected.
    pub fn user(&self) -> &User {
        &self.user
    }

    /// The rooms this connection has joined.
    pub fn rooms(&self) -> impl Iterator<Item = &str> {
        self.rooms.iter().map(|r| &**r)
    }

    /// Sends a text message to this connection.
    pub fn send_text(&mut self, text: &str) {
        self.send(OpCode::Text, text.as_bytes());
    }

    /// Sends a binary message to this connection.
    pub fn send_binary(&mut self, data: &[u8]) {
        self.send(OpCode::Binary, data);
    }

    /// Sends a message prepared once for many recipients.
    pub fn send_prepared(&mut self, message: &PreparedMessage) {
        let _ = self.shared.send_prepared(message);
    }

    pub(crate) fn send(&mut self, opcode: OpCode, payload: &[u8]) {
        let frame = self.frame(opcode, payload);
        let _ = self.shared.outbound.push(frame);
    }

    /// Sends JSON we encoded ourselves (always UTF-8) as a text message.
    pub(crate) fn send_json(&mut self, json: &[u8]) {
        self.send(OpCode::Text, json);
    }

    /// Frames a text message for this connection without queueing it.
    pub(crate) fn frame_text(&mut self, payload: &[u8]) -> Bytes {
        self.frame(OpCode::Text, payload)
    }

    /// Frames a message in a buffer of its own: the frame may wait in the queue while
    /// others are written, so it shares no allocation that would outlive it.
    pub(crate) fn frame(&mut self, opcode: OpCode, payload: &[u8]) -> Bytes {
        let mut buf = BytesMut::new();
        self.encoder.encode(opcode, payload, &mut buf);
        buf.freeze()
    }

    /// Asks for [`Handler::on_timer`] at `at` (replacing an earlier request); `None` cancels.
    ///
    /// A deadline further away than two ping intervals costs no timer entry until it comes
    /// near: the route's sweeper looks at it once per ping interval.
    pub fn set_timer(&mut self, at: Option<Instant>) {
        // The task applies it ([`Connection::update_timer`]) before it next waits.
        self.shared.set_deadline(at);
    }

    /// After a hook or a sweeper visit changed the deadline: arms the timer when the deadline
    /// is less than `horizon` away, and otherwise holds none.
    pub(crate) fn update_timer(&mut self, horizon: Duration) {
        if !self.shared.take_deadline_change() {
            return;
        }
        let horizon = Instant::now() + horizon;
        match (self.shared.deadline(), &mut self.timer) {
            (Some(at), Some(timer)) if at <= horizon => {
                if timer.deadline() != at {
                    timer.as_mut().reset(at);
                }
            }
            (Some(at), None) if at <= horizon => {
                self.timer = Some(Box::pin(tokio::time::sleep_until(at)));
            }
            _ => self.timer = None,
        }
    }

    /// The armed timer fired: it is spent.
    pub(crate) fn timer_fired(&mut self) {
        self.timer = None;
        self.shared.clear_deadline();
    }

    /// Joins a room: later broadcasts to it reach this connection.
    pub fn join(&mut self, room: &str) {
        if let Some(hub) = &self.hub {
            let room: Arc<str> = room.into();
            if self.rooms.insert(room.clone()) {
                hub.join(&room, &self.shared);
            }
        }
    }

    /// Leaves a room.
    pub fn leave(&mut self, room: &str) {
        if let (Some(hub), Some(room)) = (&self.hub, self.rooms.take(room)) {
            hub.leave(&room, &self.shared);
        }
    }

    /// Sends `payload` (text or binary) to every member of `rooms` on this node, framed and
    /// compressed once, including this connection only when `include_self` is set.
    pub fn broadcast(&self, rooms: &[&str], payload: Incoming, include_self: bool) {
        let Some(hub) = &self.hub else { return };
        let threshold = self.encoder_threshold();
        let message = match payload {
            Incoming::Text(t) => PreparedMessage::new(OpCode::Text, t.into_bytes(), threshold),
            Incoming::Binary(b) => PreparedMessage::new(OpCode::Binary, b, threshold),
        };
        let exclude = if include_self {
            None
        } else {
            Some(&*self.shared.id)
        };
        for room in rooms {
            hub.broadcast(room, &message, exclude);
        }
    }

    fn encoder_threshold(&self) -> usize {
        self.hub
            .as_ref()
            .map(|h| h.compression_threshold())
            .unwrap_or(usize::MAX)
    }

    /// Closes the connection with `disconnect` (a row of [`switchboard_protocol::CLOSE_CODES`],
    /// or [`Disconnect::custom`]) once everything queued before is written.
    pub fn close(&mut self, disconnect: Disconnect) {
        if self.close.is_none() {
            self.close = Some(Box::new(disconnect.close_frame()));
        }
    }

    /// The shared state other tasks hold: give it to [`Hub::post`] with a [`Control`] to reach this connection.
    pub fn shared(&self) -> &Arc<ConnShared> {
        &self.shared
    }
}
