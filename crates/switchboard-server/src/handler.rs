//! The library API: what an application implements to run its own protocol on Switchboard's
//! transport (docs/protocol.md section 10). The standalone v1 protocol and the echo route are
//! themselves handlers built on it.
//!
//! A [`Handler`] is attached to a path with [`crate::route::Route`]. For each upgrade request
//! the route calls [`Handler::authenticate`]; an accepted connection then gets its own task,
//! which calls the other hooks in order with a [`Connection`] it owns: no locks, and replies
//! sent from a hook are written together with everything else queued for the connection in
//! one vectored write when the hook returns.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Uri};
use switchboard_protocol::{
    CloseFrame, Disconnect, PreparedMessage,
    codec::{Encoder, Utf8Bytes},
    frame::OpCode,
};
use tokio::time::Instant;

pub use crate::conn::User;
// Where it lived first: `handler::Refusal` stays a path of the library API.
pub use crate::error::Refusal;
use crate::{
    broker::RawMessage,
    conn::{ConnShared, Control, RoomSet},
    hub::Hub,
    node::Node,
    transport::registry::Registry,
};

/// What an upgrade request shows to [`Handler::authenticate`].
#[derive(Debug)]
pub struct UpgradeContext<'a> {
    /// The request headers.
    pub headers: &'a HeaderMap,
    /// The request URI (path and query).
    pub uri: &'a Uri,
    /// The TCP peer's address (a proxy's, behind one).
    pub peer: Option<SocketAddr>,
    /// The client's address: the peer's, or behind a trusted proxy the one it forwards
    /// (`trusted_proxies`, [`crate::limits::client_ip`]).
    pub client_ip: Option<std::net::IpAddr>,
    /// Every offered subprotocol, `bearer.*` entries included (for token extraction).
    pub protocols: &'a [String],
    /// The id the connection will have if it is accepted (for the connect proxy's call).
    pub connection: &'a str,
}

/// An accepted upgrade: who connects and the handler's state for the connection.
#[derive(Debug)]
pub struct Accepted<S> {
    /// Who connects.
    pub user: User,
    /// The handler's per-connection state.
    pub state: S,
}

/// How a broadcast is sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Broadcast {
    /// Whether the sending connection gets it too. Default: no.
    pub include_self: bool,
}

impl Broadcast {
    /// To everyone but the sender (the default).
    pub fn others() -> Broadcast {
        Broadcast::default()
    }

    /// To everyone, the sender included.
    pub fn everyone() -> Broadcast {
        Broadcast { include_self: true }
    }
}

/// Frames a message with a connection's `encoder` (its deflate context) in a buffer of its
/// own ([`Connection::frame`]; also for code that borrows the encoder apart from the rest of
/// the connection).
pub(crate) fn frame_with(encoder: &mut Encoder, opcode: OpCode, payload: &[u8]) -> Bytes {
    let mut buf = BytesMut::new();
    encoder.encode(opcode, payload, &mut buf);
    buf.freeze()
}

/// `payload` framed once for many recipients.
fn prepare(payload: Incoming, threshold: usize) -> PreparedMessage {
    match payload {
        Incoming::Text(t) => PreparedMessage::new(OpCode::Text, t.into_bytes(), threshold),
        Incoming::Binary(b) => PreparedMessage::new(OpCode::Binary, b, threshold),
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

/// Why [`Incoming::json`] could not read a message.
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    /// A binary message where JSON (text) was expected.
    #[error("a binary message; JSON messages are text")]
    Binary,
    /// Not JSON, or not of the expected shape; names the field at fault (`type`, `room`, …).
    #[error("{0}")]
    Invalid(String),
}

impl Incoming {
    /// The message as JSON of type `T`, typically an enum of the route's message types tagged
    /// by a `type` field (`#[serde(tag = "type")]`). The error names the field at fault.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, JsonError> {
        let Incoming::Text(text) = self else {
            return Err(JsonError::Binary);
        };
        let mut de = serde_json::Deserializer::from_str(text.as_str());
        let error = match serde_path_to_error::deserialize::<_, T>(&mut de) {
            Ok(value) => {
                return de
                    .end()
                    .map(|()| value)
                    .map_err(|e| JsonError::Invalid(e.to_string()));
            }
            Err(e) => e,
        };
        let path = error.path().to_string();
        let inner = error.into_inner();
        if path != "." {
            return Err(JsonError::Invalid(format!("field '{path}': {inner}")));
        }
        let inner = inner.to_string();
        Err(JsonError::Invalid(
            match find_bad_field::<T>(text.as_str(), &inner) {
                Some(field) => format!("field '{field}': {inner}"),
                None => inner,
            },
        ))
    }
}

/// The field an error without a path is about. serde reads an internally tagged enum's fields
/// into a buffer before it picks the variant, so the path of a mistyped field is lost. The
/// field is found by removing one at a time: the one whose removal makes the message read (an
/// optional field), or turns the error into "missing field" and whose value the error quotes
/// (a required one; the tag's removal also gives "missing field", but the error does not
/// quote the tag). Only on the error path, and only for objects of a few fields.
fn find_bad_field<T: serde::de::DeserializeOwned>(text: &str, error: &str) -> Option<String> {
    const MAX_FIELDS: usize = 32;
    let serde_json::Value::Object(object) = serde_json::from_str(text).ok()? else {
        return None;
    };
    if object.len() > MAX_FIELDS {
        return None;
    }
    let mut missing = Vec::new();
    for key in object.keys() {
        let mut without = object.clone();
        without.remove(key);
        match serde_json::from_value::<T>(serde_json::Value::Object(without)) {
            Ok(_) => return Some(key.clone()),
            Err(e) if e.to_string().starts_with(&format!("missing field `{key}`")) => {
                missing.push(key)
            }
            Err(_) => {}
        }
    }
    // serde quotes a string as "many" and other values as `5`.
    let quoted = |value: &serde_json::Value| match value {
        serde_json::Value::String(s) => error.contains(&format!("\"{s}\"")),
        other => error.contains(&format!("`{other}`")),
    };
    missing
        .iter()
        .find(|key| quoted(&object[key.as_str()]))
        .map(|key| (*key).clone())
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
        async move {
            match control {
                Control::Close(d) => conn.close(d),
                Control::Subscribe(room) => conn.join(&room).await,
                Control::Unsubscribe(room) => conn.leave(&room).await,
            }
        }
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

/// What the connections of one route share: the hub, the node whose service rooms and
/// broadcasts go through (when the server has one), and the route's registry of connections.
#[derive(Debug)]
pub(crate) struct RouteShared {
    pub(crate) hub: Hub,
    pub(crate) node: Option<Node>,
    pub(crate) registry: Arc<Registry>,
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
    /// What the route's connections share (one pointer: every byte here is in every
    /// connection's task).
    pub(crate) route: Arc<RouteShared>,
    /// The armed [`Handler::on_timer`] timer: none (no timer entry) unless its deadline
    /// (kept in [`ConnShared`]) is near.
    pub(crate) timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    /// The connection's place in the per-user and per-IP counts, given back when the
    /// connection ends (`None` when the server limits nothing). Boxed: one word per task.
    #[allow(dead_code, reason = "held for its Drop, which gives the counts back")]
    pub(crate) admitted: Option<Box<crate::limits::Admitted>>,
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

    /// Sends `value` as a JSON text message.
    pub fn send_json<T: serde::Serialize + ?Sized>(
        &mut self,
        value: &T,
    ) -> Result<(), serde_json::Error> {
        let json = serde_json::to_vec(value)?;
        self.send(OpCode::Text, &json);
        Ok(())
    }

    /// Reads `message` as JSON of type `T` (typically an enum of the route's message types,
    /// tagged by a `type` field). When it is not, answers the peer with the documented error
    /// message `{"type": "error", "id": null, "code": "bad_request", "message": …}` (it names
    /// the field at fault) and returns `None`: the connection stays open.
    pub fn parse_json<T: serde::de::DeserializeOwned>(&mut self, message: &Incoming) -> Option<T> {
        match message.json::<T>() {
            Ok(value) => Some(value),
            Err(e) => {
                // The v1 protocol's error message, with no command id to answer.
                let error = serde_json::json!({
                    "type": "error",
                    "id": null,
                    "code": "bad_request",
                    "message": e.to_string(),
                });
                let _ = self.send_json(&error);
                None
            }
        }
    }

    /// Sends JSON we encoded ourselves (always UTF-8) as a text message.
    pub(crate) fn send_raw_json(&mut self, json: &[u8]) {
        self.send(OpCode::Text, json);
    }

    /// Frames a text message for this connection without queueing it.
    pub(crate) fn frame_text(&mut self, payload: &[u8]) -> Bytes {
        self.frame(OpCode::Text, payload)
    }

    /// Frames a message in a buffer of its own: the frame may wait in the queue while
    /// others are written, so it shares no allocation that would outlive it.
    pub(crate) fn frame(&mut self, opcode: OpCode, payload: &[u8]) -> Bytes {
        frame_with(&mut self.encoder, opcode, payload)
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
        arm_timer(
            &mut self.timer,
            self.shared.deadline(),
            Instant::now() + horizon,
        );
    }

    /// The armed timer fired: it is spent.
    pub(crate) fn timer_fired(&mut self) {
        self.timer = None;
        self.shared.clear_deadline();
    }

    /// Joins a room: later broadcasts to it reach this connection. On a server built from a
    /// [`Node`] the room spans every node of the cluster; otherwise it is this server's.
    pub async fn join(&mut self, room: &str) {
        let room: Arc<str> = room.into();
        if self.rooms.contains(&room) {
            return;
        }
        match &self.route.node {
            Some(node) => {
                if let Err(e) = node.join_room(&self.shared, &room).await {
                    tracing::warn!(conn = %self.id(), room = %room, reason = %e, "join failed");
                    return;
                }
            }
            None => {
                self.route.hub.join(&room, &self.shared);
            }
        }
        self.rooms.insert(room);
    }

    /// Leaves a room.
    pub async fn leave(&mut self, room: &str) {
        let Some(room) = self.rooms.take(room) else {
            return;
        };
        match &self.route.node {
            Some(node) => node.leave_room(&self.shared, &room).await,
            None => {
                self.route.hub.leave(&room, &self.shared);
            }
        }
    }

    /// Sends `payload` (text or binary) to every member of `rooms`, framed and compressed
    /// once per node: on every node of the cluster when the server was built from a [`Node`],
    /// otherwise on this server. This connection is left out unless `options` include it.
    pub async fn broadcast(&self, rooms: &[&str], payload: Incoming, options: Broadcast) {
        let exclude = (!options.include_self).then(|| self.shared.id.clone());
        if let Some(node) = &self.route.node {
            let (binary, payload) = match payload {
                Incoming::Text(t) => (false, t.into_bytes()),
                Incoming::Binary(b) => (true, b),
            };
            let message = RawMessage {
                binary,
                payload,
                exclude,
            };
            if let Err(e) = node.broadcast_raw(rooms, message).await {
                tracing::warn!(conn = %self.id(), reason = %e, "broadcast failed");
            }
            return;
        }
        let hub = &self.route.hub;
        let message = prepare(payload, hub.compression_threshold());
        for room in rooms {
            hub.broadcast(room, &message, exclude.as_deref());
        }
    }

    /// Sends `payload` to every connection of this route on this server, framed and
    /// compressed once.
    pub fn broadcast_route(&self, payload: Incoming, options: Broadcast) {
        let message = prepare(payload, self.route.hub.compression_threshold());
        let exclude = (!options.include_self).then_some(&*self.shared);
        self.route.registry.broadcast(&message, exclude);
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

/// Arms `timer` for `deadline` when it comes before `horizon` (resetting an armed one only when
/// the deadline moved), and otherwise holds none: a deadline far away costs no timer entry
/// (the route's sweeper looks at it). Connections and SSE streams share it.
pub(crate) fn arm_timer(
    timer: &mut Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    deadline: Option<Instant>,
    horizon: Instant,
) {
    match (deadline, timer.as_mut()) {
        (Some(at), Some(armed)) if at <= horizon => {
            if armed.deadline() != at {
                armed.as_mut().reset(at);
            }
        }
        (Some(at), None) if at <= horizon => {
            *timer = Some(Box::pin(tokio::time::sleep_until(at)));
        }
        _ => *timer = None,
    }
}
