//! The library API: what an application implements to run its own protocol on Switchboard's
//! transport (`PROTOCOL.md` section 10). The standalone v1 protocol and the echo route are
//! themselves handlers built on it.
//!
//! A [`Handler`] is attached to a path with [`crate::route::Route`]. For each upgrade request
//! the route calls [`Handler::authenticate`]; an accepted connection then gets its own task,
//! which calls the other hooks in order with a [`Connection`] it owns: no locks, and replies
//! sent from a hook are written together with everything else queued for the connection in
//! one vectored write when the hook returns.

use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, AtomicU8, AtomicU16, AtomicU32, AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, StatusCode, Uri};
use switchboard_protocol::{
    CloseCode, CloseFrame, PreparedMessage,
    codec::{Encoder, Utf8Bytes},
    deflate::DeflateParams,
    frame::OpCode,
};
use tokio::time::Instant;

use crate::transport::outbound::{Outbound, PushError};

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

/// The part of a connection that other tasks may hold: its queue and what fan-out needs to
/// choose the bytes to send it.
#[derive(Debug)]
pub struct ConnShared {
    pub(crate) id: Arc<str>,
    pub(crate) outbound: Outbound,
    pub(crate) deflate: Option<DeflateParams>,
    /// Set while at least one subscribe of this connection is reading history: live
    /// publications of those rooms are held back until the reply is queued (see
    /// [`ConnShared::begin_subscribe`]). One atomic load on the fan-out path otherwise.
    pending: AtomicBool,
    held: Mutex<Holds>,
    /// Something arrived since the sweeper's last visit (`transport::registry`).
    seen: AtomicBool,
    /// Visits in a row that found nothing arrived (the sweeper's own counter, saturating).
    missed: AtomicU16,
    /// A close the server asked for (1001 shutdown, 4504 idle); 0: none.
    close_request: AtomicU16,
    /// Where the registry keeps this connection: shard, and index in it.
    shard: AtomicU8,
    index: AtomicU32,
    /// The [`Connection::set_timer`] deadline in whole milliseconds after [`timer_base`]
    /// (rounded up), 0 for none. Far deadlines live only here: the sweeper arms the
    /// connection's timer when one comes near (see `transport::registry`).
    deadline: AtomicU64,
    /// The task should look at `deadline` (set by `set_timer` and by the sweeper).
    deadline_changed: AtomicBool,
}

/// The instant timer deadlines count from: the first use, in this process.
fn timer_base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

#[derive(Debug)]
struct Held {
    room: Arc<str>,
    /// Held frames with their stream position (`None`: ephemeral, join, leave).
    frames: Vec<(Option<Position>, Bytes)>,
    /// After the reply: its position; events at or below it are stale and dropped.
    floor: Option<Position>,
}

/// The holds and floors of a connection: exactly as many slots as rooms being subscribed or
/// holding a floor (a floor stays until the room's next event, so idle connections keep
/// theirs), and no allocation when there are none. A boxed slice rather than a `Vec`: one word
/// less in every connection, for changes that happen once per subscribe.
#[derive(Debug, Default)]
struct Holds(Box<[Held]>);

impl Holds {
    fn edit(&mut self, f: impl FnOnce(&mut Vec<Held>)) {
        let mut holds = std::mem::take(&mut self.0).into_vec();
        f(&mut holds);
        self.0 = holds.into_boxed_slice();
    }

    fn push(&mut self, hold: Held) {
        self.edit(|holds| {
            holds.reserve_exact(1);
            holds.push(hold);
        });
    }

    fn remove(&mut self, i: usize) {
        self.edit(|holds| {
            holds.swap_remove(i);
        });
    }

    fn retain(&mut self, keep: impl FnMut(&Held) -> bool) {
        self.edit(|holds| holds.retain(keep));
    }
}

impl std::ops::Deref for Holds {
    type Target = [Held];
    fn deref(&self) -> &[Held] {
        &self.0
    }
}

impl std::ops::DerefMut for Holds {
    fn deref_mut(&mut self) -> &mut [Held] {
        &mut self.0
    }
}

/// A publication's (epoch, offset).
type Position = (Arc<str>, u64);

impl ConnShared {
    pub(crate) fn new(id: Arc<str>, limit: usize, deflate: Option<DeflateParams>) -> Self {
        ConnShared {
            id,
            outbound: Outbound::new(limit),
            deflate,
            pending: AtomicBool::new(false),
            held: Mutex::new(Holds::default()),
            seen: AtomicBool::new(true),
            missed: AtomicU16::new(0),
            close_request: AtomicU16::new(0),
            shard: AtomicU8::new(0),
            index: AtomicU32::new(0),
            deadline: AtomicU64::new(0),
            deadline_changed: AtomicBool::new(false),
        }
    }

    /// Records that bytes arrived from the peer (for the idle timeout).
    pub(crate) fn mark_seen(&self) {
        self.seen.store(true, Ordering::Relaxed);
    }

    /// The sweeper's visit: how many visits in a row found nothing arrived.
    pub(crate) fn visit(&self) -> u16 {
        if self.seen.swap(false, Ordering::Relaxed) {
            self.missed.store(0, Ordering::Relaxed);
            0
        } else {
            // Only the sweeper writes it: a load and a store are enough.
            let missed = self.missed.load(Ordering::Relaxed).saturating_add(1);
            self.missed.store(missed, Ordering::Relaxed);
            missed
        }
    }

    /// Asks the connection task to close with `code` (the first request wins).
    pub(crate) fn request_close(&self, code: u16) {
        let _ = self
            .close_request
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire);
        self.outbound.wake();
    }

    /// Whether a close was asked for and not yet taken.
    pub(crate) fn has_close_request(&self) -> bool {
        !matches!(self.close_request.load(Ordering::Acquire), 0 | u16::MAX)
    }

    /// Takes the close the server asked for, if any.
    pub(crate) fn take_close_request(&self) -> Option<u16> {
        if self.close_request.load(Ordering::Relaxed) == 0 {
            return None;
        }
        match self.close_request.swap(u16::MAX, Ordering::AcqRel) {
            0 | u16::MAX => None,
            code => Some(code),
        }
    }

    /// Records the timer's deadline (`None`: no timer) for the task and the sweeper.
    fn set_deadline(&self, at: Option<Instant>) {
        let ms = at.map_or(0, |at| {
            let since = at.saturating_duration_since(timer_base());
            // Rounded up, so that the timer never fires before `at`; 0 means none.
            (since.as_nanos().div_ceil(1_000_000) as u64).max(1)
        });
        self.deadline.store(ms, Ordering::Relaxed);
        self.deadline_changed.store(true, Ordering::Release);
    }

    /// The timer's deadline, if one is set.
    fn deadline(&self) -> Option<Instant> {
        match self.deadline.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(timer_base() + Duration::from_millis(ms)),
        }
    }

    /// The sweeper's check: a deadline before `horizon` wakes the task to arm its timer.
    pub(crate) fn arm_deadline_before(&self, horizon: Instant) {
        if self.deadline().is_some_and(|at| at <= horizon) {
            self.deadline_changed.store(true, Ordering::Release);
            self.outbound.wake();
        }
    }

    /// Records where the registry keeps this connection (under the shard's lock).
    pub(crate) fn set_slot(&self, shard: usize, index: usize) {
        self.shard.store(shard as u8, Ordering::Relaxed);
        self.index.store(index as u32, Ordering::Relaxed);
    }

    /// The registry shard and index of this connection (the index is only stable under the
    /// shard's lock).
    pub(crate) fn slot(&self) -> (usize, usize) {
        (
            self.shard.load(Ordering::Relaxed) as usize,
            self.index.load(Ordering::Relaxed) as usize,
        )
    }

    /// The connection id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Queues a message prepared once for many recipients: a reference count, no copy.
    pub(crate) fn send_prepared(&self, message: &PreparedMessage) -> Result<(), PushError> {
        self.outbound.push(message.frame_for(self.deflate.as_ref()))
    }

    /// Delivers an event of `room`: a publication at `position` (epoch, offset), or an
    /// ephemeral publication or join/leave (`None`). While a subscribe to `room` is reading
    /// history, the event is held back; right after it, events the reply already covered
    /// (still in flight in the node's channel) are dropped.
    pub(crate) fn deliver(
        &self,
        room: &str,
        position: Option<(&Arc<str>, u64)>,
        message: &PreparedMessage,
    ) -> Result<(), PushError> {
        if self.pending.load(Ordering::Acquire) {
            let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(i) = held.iter().position(|h| &*h.room == room) {
                let h = &mut held[i];
                match (&h.floor, position) {
                    (None, _) => {
                        let position = position.map(|(e, o)| (e.clone(), o));
                        h.frames
                            .push((position, message.frame_for(self.deflate.as_ref())));
                        return Ok(());
                    }
                    (Some((epoch, top)), Some((e, o))) if epoch == e && o <= *top => return Ok(()),
                    (Some(_), Some(_)) => {
                        // The first event past the reply: per-room order makes every later
                        // one newer too, so the room goes back to the plain path.
                        held.remove(i);
                        if held.is_empty() {
                            self.pending.store(false, Ordering::Release);
                        }
                    }
                    (Some(_), None) => {}
                }
            }
        }
        self.send_prepared(message)
    }

    /// Starts holding back events of `room`. Call before joining the room in the hub, then
    /// make sure the node is subscribed, read the stream position or history, and call
    /// [`ConnShared::end_subscribe`] (the procedure of `broker`'s module docs).
    pub(crate) fn begin_subscribe(&self, room: &Arc<str>) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.retain(|h| h.room != *room);
        held.push(Held {
            room: room.clone(),
            frames: Vec::new(),
            floor: None,
        });
        self.pending.store(true, Ordering::Release);
    }

    /// Queues `first` (the subscribe reply or `subscribed` push), then the held events in
    /// order, dropping publications of the reply's epoch at or below its offset (the reply
    /// covers them). Runs under the hold lock, so a concurrent delivery waits and lands after
    /// them. The room then keeps the reply's position as a floor until the first event past
    /// it arrives, because events published before the read may still be in flight to this
    /// node: in order, no gap, no duplicate. `top: None` (the subscribe failed) drops what
    /// was held.
    pub(crate) fn end_subscribe(
        &self,
        room: &str,
        top: Option<(&Arc<str>, u64)>,
        first: Option<Bytes>,
    ) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(frame) = first {
            let _ = self.outbound.push(frame);
        }
        if let Some(i) = held.iter().position(|h| &*h.room == room) {
            match top {
                Some((epoch, offset)) => {
                    let h = &mut held[i];
                    let mut past_floor = false;
                    for (position, frame) in h.frames.drain(..) {
                        let covered =
                            matches!(&position, Some((e, o)) if e == epoch && *o <= offset);
                        past_floor |= position.is_some() && !covered;
                        if !covered {
                            let _ = self.outbound.push(frame);
                        }
                    }
                    if past_floor {
                        held.remove(i);
                    } else {
                        h.frames = Vec::new();
                        h.floor = Some((epoch.clone(), offset));
                    }
                }
                None => {
                    held.remove(i);
                }
            }
        }
        if held.is_empty() {
            self.pending.store(false, Ordering::Release);
        }
    }

    /// Forgets any hold or floor of `room` (the connection left it).
    pub(crate) fn forget(&self, room: &str) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.retain(|h| &*h.room != room);
        if held.is_empty() {
            self.pending.store(false, Ordering::Release);
        }
    }
}

/// The rooms of a connection: a sorted vector, exactly as long as needed. Most connections
/// are in a room or two, where a tree's node (about 200 bytes) would cost more than the rooms.
#[derive(Debug, Default)]
pub(crate) struct RoomSet(Vec<Arc<str>>);

impl RoomSet {
    fn find(&self, room: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|r| (**r).cmp(room))
    }

    /// Adds `room`; `false` if it was there.
    pub(crate) fn insert(&mut self, room: Arc<str>) -> bool {
        match self.find(&room) {
            Ok(_) => false,
            Err(i) => {
                if self.0.len() == self.0.capacity() && self.0.len() < 4 {
                    self.0.reserve_exact(1);
                }
                self.0.insert(i, room);
                true
            }
        }
    }

    /// Removes `room` and returns it.
    pub(crate) fn take(&mut self, room: &str) -> Option<Arc<str>> {
        let i = self.find(room).ok()?;
        let room = self.0.remove(i);
        if self.0.is_empty() {
            self.0 = Vec::new();
        }
        Some(room)
    }

    pub(crate) fn contains(&self, room: &str) -> bool {
        self.find(room).is_ok()
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Arc<str>> {
        self.0.iter()
    }
}

impl IntoIterator for RoomSet {
    type Item = Arc<str>;
    type IntoIter = std::vec::IntoIter<Arc<str>>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
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
    pub(crate) hub: Option<crate::hub::Hub>,
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
        // Relaxed first: the common case (nothing changed) is one plain load.
        if !self.shared.deadline_changed.load(Ordering::Relaxed)
            || !self.shared.deadline_changed.swap(false, Ordering::Acquire)
        {
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
        self.shared.deadline.store(0, Ordering::Relaxed);
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

    /// Closes the connection with `code` and `reason` once everything queued before is written.
    pub fn close(&mut self, code: u16, reason: &str) {
        if self.close.is_none() {
            self.close = Some(Box::new(CloseFrame::new(CloseCode(code), reason)));
        }
    }
}
