//! The transport-neutral state of one connection that other tasks may hold: its outbound
//! queue, the holds and floors of subscribes that are reading history, the sweeper's
//! bookkeeping and the requests other tasks make of it (a close, a control command).
//!
//! The hub keeps these in its rooms and user index; the transports (`transport::ws`, and SSE
//! later) drain the queue; the handler API ([`crate::Connection`]) wraps one for its hooks.

use std::{
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, AtomicU8, AtomicU16, AtomicU32, AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use switchboard_protocol::{Disconnect, PreparedMessage, WireForm, deflate::DeflateParams};
use tokio::time::Instant;

use crate::transport::outbound::{Outbound, PushError};

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

/// The part of a connection that other tasks may hold: its queue and what fan-out needs to
/// choose the bytes to send it.
#[derive(Debug)]
pub struct ConnShared {
    pub(crate) id: Arc<str>,
    pub(crate) outbound: Outbound,
    /// Which bytes the connection's transport takes (WebSocket with or without deflate, SSE).
    pub(crate) wire: WireForm,
    /// Set while at least one subscribe of this connection is reading history: live
    /// publications of those rooms are held back until the reply is queued (see
    /// [`ConnShared::begin_subscribe`]). One atomic load on the fan-out path otherwise.
    pending: AtomicBool,
    held: Mutex<Holds>,
    /// Something arrived since the sweeper's last visit (`transport::registry`).
    seen: AtomicBool,
    /// Visits in a row that found nothing arrived (the sweeper's own counter, saturating).
    missed: AtomicU16,
    /// A close the server asked for (1001 shutdown, 4504 idle; a code of the [`Disconnect`]
    /// table); [`CONTROL`]: none, but the control inbox has requests; 0: neither.
    close_request: AtomicU16,
    /// Where the registry keeps this connection: shard, and index in it.
    shard: AtomicU8,
    index: AtomicU32,
    /// The [`crate::Connection::set_timer`] deadline in whole milliseconds after [`timer_base`]
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

/// `close_request`'s value while the control inbox has requests and no close was asked for
/// (codes of the table are 1000 and up).
const CONTROL: u16 = 1;

/// A request another task makes of a connection, which only the connection's own task may
/// carry out because it changes what the task owns (its rooms, its close). Requests wait in
/// the connection's control inbox, kept by the hub ([`crate::hub::Hub::post`]) so that a
/// connection nobody writes to holds nothing for it; the task drains them in order
/// ([`crate::Handler::on_control`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Control {
    /// Close the connection.
    Close(Disconnect),
    /// Subscribe the connection to a room (a server-side subscription).
    Subscribe(Arc<str>),
    /// Unsubscribe the connection from a room.
    Unsubscribe(Arc<str>),
}

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
    /// A WebSocket connection's state (`deflate`: what it negotiated).
    pub(crate) fn new(id: Arc<str>, limit: usize, deflate: Option<DeflateParams>) -> Self {
        Self::with_wire(id, limit, WireForm::WebSocket(deflate))
    }

    /// The state of a connection whose transport takes `wire`, with an outbound queue bounded
    /// to `limit` bytes.
    pub(crate) fn with_wire(id: Arc<str>, limit: usize, wire: WireForm) -> Self {
        ConnShared {
            id,
            outbound: Outbound::new(limit),
            wire,
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

    /// Asks the task to close with `code`, a code of the [`Disconnect`] table (the first
    /// request wins over a later one).
    pub(crate) fn request_close_code(&self, code: u16) {
        let mut current = self.close_request.load(Ordering::Acquire);
        while matches!(current, 0 | CONTROL) {
            match self.close_request.compare_exchange(
                current,
                code,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(now) => current = now,
            }
        }
        self.outbound.wake();
    }

    /// Whether a close was asked for and not yet taken.
    pub(crate) fn has_close_request(&self) -> bool {
        !matches!(
            self.close_request.load(Ordering::Acquire),
            0 | CONTROL | u16::MAX
        )
    }

    /// Takes the close the server asked for, if any.
    pub(crate) fn take_close_request(&self) -> Option<Disconnect> {
        if matches!(self.close_request.load(Ordering::Relaxed), 0 | CONTROL) {
            return None;
        }
        match self.close_request.swap(u16::MAX, Ordering::AcqRel) {
            0 | CONTROL | u16::MAX => None,
            code => Some(Disconnect::from_code(code)),
        }
    }

    /// Records that the control inbox has requests, and wakes the task (unless a close was
    /// asked for: that wins, and the requests no longer matter).
    pub(crate) fn signal_control(&self) {
        if self
            .close_request
            .compare_exchange(0, CONTROL, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.outbound.wake();
        }
    }

    /// Whether the control inbox has requests for the task.
    pub(crate) fn has_control(&self) -> bool {
        self.close_request.load(Ordering::Acquire) == CONTROL
    }

    /// Clears the signal before the task drains the inbox (a request posted meanwhile
    /// signals again).
    pub(crate) fn take_control_signal(&self) -> bool {
        self.close_request
            .compare_exchange(CONTROL, 0, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Whether the connection is closing or closed.
    pub(crate) fn is_closed(&self) -> bool {
        self.outbound.is_closed()
    }

    /// Records the timer's deadline (`None`: no timer) for the task and the sweeper.
    pub(crate) fn set_deadline(&self, at: Option<Instant>) {
        let ms = at.map_or(0, |at| {
            let since = at.saturating_duration_since(timer_base());
            // Rounded up, so that the timer never fires before `at`; 0 means none.
            (since.as_nanos().div_ceil(1_000_000) as u64).max(1)
        });
        self.deadline.store(ms, Ordering::Relaxed);
        self.deadline_changed.store(true, Ordering::Release);
    }

    /// Whether the deadline changed since the task last looked (and it now looks).
    pub(crate) fn take_deadline_change(&self) -> bool {
        // Relaxed first: the common case (nothing changed) is one plain load.
        self.deadline_changed.load(Ordering::Relaxed)
            && self.deadline_changed.swap(false, Ordering::Acquire)
    }

    /// The armed timer fired: no deadline is left.
    pub(crate) fn clear_deadline(&self) {
        self.deadline.store(0, Ordering::Relaxed);
    }

    /// The timer's deadline, if one is set.
    pub(crate) fn deadline(&self) -> Option<Instant> {
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

    /// The permessage-deflate parameters of a WebSocket connection.
    pub(crate) fn deflate(&self) -> Option<DeflateParams> {
        self.wire.deflate()
    }

    /// What the sweeper sends an idle connection of this transport.
    pub(crate) fn keepalive(&self) -> bytes::Bytes {
        self.wire.keepalive()
    }

    /// The connection id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Queues a message prepared once for many recipients: a reference count, no copy.
    pub(crate) fn send_prepared(&self, message: &PreparedMessage) -> Result<(), PushError> {
        match message.bytes_for(&self.wire) {
            Some(bytes) => self.outbound.push(bytes),
            // Nothing this transport can carry (a binary message on SSE).
            None => Ok(()),
        }
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
                            .extend(message.bytes_for(&self.wire).map(|b| (position, b)));
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

#[cfg(test)]
#[path = "conn_tests.rs"]
mod tests;
