//! A connection's outbound queue, bounded in bytes.
//!
//! Everything sent to a connection (its own replies, fan-out from rooms, pings) goes through
//! one queue of already-encoded frames. Producers never wait and never allocate per frame
//! beyond the queue slot: a frame is a [`Bytes`] (for fan-out a reference to bytes shared
//! by every recipient). The connection task drains the whole queue on each wake-up and writes
//! it with one vectored write.
//!
//! # Slow consumers
//! The bound counts bytes queued and not yet written to the socket. A push that would take a
//! non-empty queue past the bound is refused and marks the connection *overflowed*: its queue
//! is dropped at once (releasing the memory) and the connection task closes it with 4500.
//!
//! A frame larger than the bound is still accepted when no other such frame is waiting, and
//! until it is written the bound counts only what is queued after it (a pong, the next
//! publication). A large message is never undeliverable, and a queue holds at most twice the
//! bound plus one message.
//!
//! Other recipients of the same room are unaffected: nobody waits for a slow consumer.

use std::{
    collections::VecDeque,
    sync::{Mutex, MutexGuard},
    task::{Context, Poll, Waker},
};

use bytes::Bytes;

/// A queue buffer this small is freed as soon as it empties.
const SMALL: usize = 4;

/// The shared side of a connection's queue.
#[derive(Debug)]
pub(crate) struct Outbound {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    frames: VecDeque<Bytes>,
    /// Bytes queued or taken by the writer and not yet written.
    bytes: usize,
    /// Where the unwritten frame larger than the bound ends, counted in unwritten bytes
    /// (0: there is none). The bound counts only the bytes queued after it.
    big_end: usize,
    /// The first frame is partly written: it must be finished before anything else, or the
    /// peer sees a broken stream (also when the queue overflows and only a close follows).
    partial: bool,
    state: State,
    /// The bound in bytes (in the padding of this struct: every idle connection has one).
    limit: u32,
    /// The connection task, when it found nothing to do. Kept here rather than in a
    /// `Notify` so that a push takes one lock and an idle connection one word.
    waker: Option<Waker>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    #[default]
    Open,
    Overflowed,
    Closed,
}

/// Why a push was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PushError {
    /// The connection passed its bound and is being closed with 4500.
    Overflow,
    /// The connection is closing or closed.
    Closed,
}

/// The queue overflowed: close the connection with 4500.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Overflowed;

impl Outbound {
    /// A queue bounded to `limit` bytes (at most 4 GiB).
    pub(crate) fn new(limit: usize) -> Self {
        Outbound {
            inner: Mutex::new(Inner {
                limit: u32::try_from(limit).unwrap_or(u32::MAX),
                ..Inner::default()
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a frame and wakes the connection task if it is waiting.
    pub(crate) fn push(&self, frame: Bytes) -> Result<(), PushError> {
        let len = frame.len();
        let mut inner = self.lock();
        match inner.state {
            State::Open => {}
            State::Overflowed | State::Closed => return Err(PushError::Closed),
        }
        let limit = inner.limit as usize;
        let refused = if len > limit {
            inner.big_end > 0
        } else {
            inner.bytes - inner.big_end + len > limit
        };
        if refused {
            inner.state = State::Overflowed;
            if inner.partial {
                inner.frames.truncate(1);
                inner.frames.shrink_to_fit();
            } else {
                inner.frames = VecDeque::new();
            }
            unlock_and_wake(inner);
            return Err(PushError::Overflow);
        }
        if len > limit {
            inner.big_end = inner.bytes + len;
        }
        enqueue(inner, frame);
        Ok(())
    }

    /// Queues a server ping, but only into a queue with nothing unwritten: a connection that
    /// is still writing needs no ping, and a ping must never push a queue past its bound
    /// while a large frame is on its way out.
    pub(crate) fn push_ping(&self, frame: Bytes) {
        let inner = self.lock();
        if inner.state != State::Open || inner.bytes > 0 || !inner.frames.is_empty() {
            return;
        }
        enqueue(inner, frame);
    }

    /// Wakes the connection task (it looks at its close request).
    pub(crate) fn wake(&self) {
        unlock_and_wake(self.lock());
    }

    /// Ready when there are frames to write or the queue overflowed; otherwise the task is
    /// woken by the next push.
    pub(crate) fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut inner = self.lock();
        if !inner.frames.is_empty() || inner.state == State::Overflowed {
            return Poll::Ready(());
        }
        match &inner.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => inner.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// While the socket is not writable: ready only when the queue overflowed (to close at
    /// once); otherwise the task is woken by the next push or close request.
    pub(crate) fn poll_overflow(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut inner = self.lock();
        if inner.state == State::Overflowed {
            return Poll::Ready(());
        }
        match &inner.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => inner.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Moves every queued frame to `into` (which must be empty) for writing; after the write,
    /// [`Outbound::put_back`] returns what is left. After an overflow only a partly written
    /// frame is handed over, to be finished before the close frame.
    pub(crate) fn take(&self, into: &mut VecDeque<Bytes>) -> Result<(), Overflowed> {
        let mut inner = self.lock();
        std::mem::swap(&mut inner.frames, into);
        inner.partial = false;
        match inner.state {
            State::Overflowed => Err(Overflowed),
            State::Open | State::Closed => Ok(()),
        }
    }

    /// Records that `written` bytes reached the socket and puts the frames not yet written
    /// back in front of anything pushed meanwhile (`partial`: the first one is partly
    /// written). Returns whether the queue is now empty. An empty queue keeps no allocation:
    /// idle connections hold no buffers.
    pub(crate) fn put_back(
        &self,
        mut rest: VecDeque<Bytes>,
        written: usize,
        partial: bool,
    ) -> bool {
        let mut inner = self.lock();
        inner.bytes = inner.bytes.saturating_sub(written);
        inner.big_end = inner.big_end.saturating_sub(written);
        match inner.state {
            State::Open => {}
            State::Overflowed => {
                if partial && inner.frames.is_empty() {
                    rest.truncate(1);
                    inner.frames = rest;
                    inner.partial = true;
                }
                return false;
            }
            State::Closed => return true,
        }
        if rest.is_empty() {
            if inner.frames.is_empty() {
                // A connection that writes bursts keeps its buffer until the sweeper's next
                // visit ([`Outbound::trim`]) instead of growing a new one for every burst;
                // one that sent a few frames (a ping, a reply) keeps none.
                if rest.capacity() > SMALL && inner.frames.capacity() == 0 {
                    inner.frames = rest;
                }
                return true;
            }
            if inner.frames.capacity() == 0 {
                // Frames arrived while we wrote: keep our buffer for them.
                rest.extend(inner.frames.drain(..));
                inner.frames = rest;
            }
            return false;
        }
        rest.extend(inner.frames.drain(..));
        inner.frames = rest;
        inner.partial = partial;
        false
    }

    /// Takes back a buffer whose frames were all written, when the queue has none: a stream
    /// that writes bursts reuses it as [`Outbound::put_back`] lets a WebSocket connection,
    /// until the sweeper trims it ([`Outbound::trim`]).
    pub(crate) fn recycle(&self, mut spent: VecDeque<Bytes>) {
        if spent.capacity() <= SMALL {
            return;
        }
        spent.clear();
        let mut inner = self.lock();
        if inner.state == State::Open && inner.frames.capacity() == 0 {
            inner.frames = spent;
        }
    }

    /// Releases the buffer of an empty queue (the sweeper calls it on every visit, so a
    /// connection that went quiet holds no buffer after one ping interval).
    pub(crate) fn trim(&self) {
        let mut inner = self.lock();
        if inner.frames.is_empty() && inner.frames.capacity() > 0 {
            inner.frames = VecDeque::new();
        }
    }

    /// Refuses every later push and drops what is queued.
    pub(crate) fn close(&self) {
        let mut inner = self.lock();
        if inner.state == State::Open {
            inner.state = State::Closed;
        }
        inner.frames = VecDeque::new();
        inner.bytes = 0;
        inner.big_end = 0;
        inner.waker = None;
    }

    /// Whether the connection is closing or closed (pushes are refused).
    pub(crate) fn is_closed(&self) -> bool {
        self.lock().state != State::Open
    }

    /// Bytes queued and not yet written.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.lock().bytes
    }
}

/// Appends `frame` to the queue, then lets go of the lock and wakes the connection task.
fn enqueue(mut inner: MutexGuard<'_, Inner>, frame: Bytes) {
    inner.bytes += frame.len();
    inner.frames.push_back(frame);
    unlock_and_wake(inner);
}

#[cfg(test)]
impl Outbound {
    /// For tests that stand in for the connection task: takes every queued frame, as one
    /// buffer of wire bytes, and counts it written. Takes again until the queue is empty,
    /// since a dispatcher on another thread may queue more meanwhile.
    pub(crate) fn take_written(&self) -> Result<bytes::BytesMut, Overflowed> {
        let mut bytes = bytes::BytesMut::new();
        loop {
            let mut frames = VecDeque::new();
            self.take(&mut frames)?;
            let before = bytes.len();
            for f in &frames {
                bytes.extend_from_slice(f);
            }
            if self.put_back(VecDeque::new(), bytes.len() - before, false) {
                return Ok(bytes);
            }
        }
    }
}

/// Lets go of the lock, then wakes the connection task if it was waiting for the queue.
fn unlock_and_wake(mut inner: MutexGuard<'_, Inner>) {
    let waker = inner.waker.take();
    drop(inner);
    if let Some(w) = waker {
        w.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_counts_unwritten_bytes_and_overflow_releases_memory() {
        let q = Outbound::new(10);
        q.push(Bytes::from_static(b"123456")).unwrap();
        q.push(Bytes::from_static(b"7890")).unwrap();
        let mut taken = VecDeque::new();
        assert_eq!(q.take(&mut taken), Ok(()));
        assert_eq!(taken.len(), 2);
        // Taken but unwritten bytes still count.
        assert_eq!(q.push(Bytes::from_static(b"x")), Err(PushError::Overflow));
        assert!(!q.put_back(taken, 0, false));
        let mut again = VecDeque::new();
        assert_eq!(q.take(&mut again), Err(Overflowed));
        assert!(again.is_empty(), "the queue is released");
        assert_eq!(q.push(Bytes::from_static(b"x")), Err(PushError::Closed));
    }

    #[test]
    fn written_bytes_free_room() {
        let q = Outbound::new(10);
        q.push(Bytes::from_static(b"1234567890")).unwrap();
        let mut taken = VecDeque::new();
        q.take(&mut taken).unwrap();
        taken.clear();
        assert!(q.put_back(taken, 10, false));
        q.push(Bytes::from_static(b"1234567890")).unwrap();
        assert_eq!(q.queued_bytes(), 10);
    }

    #[test]
    fn a_frame_larger_than_the_bound_fits_behind_a_ping() {
        let q = Outbound::new(4);
        q.push(Bytes::from_static(b"\x89\x00")).unwrap();
        q.push(Bytes::from(vec![0; 100])).unwrap();
        q.push(Bytes::from_static(b"abcd")).unwrap();
        assert_eq!(q.push(Bytes::from_static(b"e")), Err(PushError::Overflow));
    }

    #[test]
    fn a_frame_larger_than_the_bound_is_accepted_and_the_bound_counts_what_follows() {
        let q = Outbound::new(4);
        q.push(Bytes::from(vec![0; 100])).unwrap();
        // Not a second large frame while the first is unwritten.
        assert_eq!(q.push(Bytes::from(vec![0; 5])), Err(PushError::Overflow));

        let q = Outbound::new(4);
        q.push(Bytes::from(vec![0; 100])).unwrap();
        // A pong or the next small message fits beside it, up to the bound.
        q.push(Bytes::from_static(b"ab")).unwrap();
        let mut taken = VecDeque::new();
        q.take(&mut taken).unwrap();
        taken[0] = taken[0].slice(70..);
        assert!(!q.put_back(taken, 70, true));
        q.push(Bytes::from_static(b"cd")).unwrap();
        assert_eq!(q.queued_bytes(), 34);
        assert_eq!(q.push(Bytes::from_static(b"e")), Err(PushError::Overflow));
        let mut last = VecDeque::new();
        assert_eq!(q.take(&mut last), Err(Overflowed));
        assert_eq!(last.len(), 1, "only the partly written frame is finished");

        // Once the large frame is written, the bound counts everything again.
        let q = Outbound::new(4);
        q.push(Bytes::from(vec![0; 100])).unwrap();
        q.push(Bytes::from_static(b"ab")).unwrap();
        let mut taken = VecDeque::new();
        q.take(&mut taken).unwrap();
        let rest = taken.split_off(1);
        assert!(!q.put_back(rest, 100, false));
        q.push(Bytes::from_static(b"cd")).unwrap();
        assert_eq!(q.push(Bytes::from_static(b"e")), Err(PushError::Overflow));
    }

    #[test]
    fn a_partly_written_frame_survives_overflow_and_goes_first() {
        let q = Outbound::new(10);
        q.push(Bytes::from_static(b"abcdef")).unwrap();
        q.push(Bytes::from_static(b"gh")).unwrap();
        let mut taken = VecDeque::new();
        q.take(&mut taken).unwrap();
        // Three bytes of the first frame reached the socket.
        taken[0] = taken[0].slice(3..);
        q.push(Bytes::from_static(b"ij")).unwrap();
        assert!(!q.put_back(taken, 3, true));
        let mut next = VecDeque::new();
        q.take(&mut next).unwrap();
        assert_eq!(next, [&b"def"[..], b"gh", b"ij"]);
        // Still partly written when the queue overflows: only that frame is kept.
        next[0] = next[0].slice(1..);
        assert_eq!(q.push(Bytes::from(vec![0; 8])), Err(PushError::Overflow));
        assert!(!q.put_back(next, 1, true));
        let mut last = VecDeque::new();
        assert_eq!(q.take(&mut last), Err(Overflowed));
        assert_eq!(last, [&b"ef"[..]]);
    }

    #[test]
    fn a_ping_never_overflows_a_queue_still_writing_a_large_frame() {
        let q = Outbound::new(10);
        q.push(Bytes::from(vec![0; 100])).unwrap();
        let mut taken = VecDeque::new();
        q.take(&mut taken).unwrap();
        taken[0] = taken[0].slice(60..);
        assert!(!q.put_back(taken, 60, true));
        // 40 bytes of the large frame are still unwritten: no ping, and no overflow.
        q.push_ping(Bytes::from_static(b"\x89\x00"));
        let mut next = VecDeque::new();
        assert_eq!(q.take(&mut next), Ok(()));
        assert_eq!(next.len(), 1);
        assert!(q.put_back(next.split_off(1), 40, false));
        q.push_ping(Bytes::from_static(b"\x89\x00"));
        assert_eq!(q.queued_bytes(), 2);
    }

    #[test]
    fn an_idle_queue_keeps_no_allocation_and_wakes_its_task() {
        let q = Outbound::new(100);
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(q.poll_ready(&mut cx).is_pending());
        q.push(Bytes::from_static(b"x")).unwrap();
        assert!(q.poll_ready(&mut cx).is_ready());
        let mut taken = VecDeque::new();
        q.take(&mut taken).unwrap();
        taken.clear();
        assert!(q.put_back(taken, 1, false));
        assert_eq!(q.lock().frames.capacity(), 0);
        // A burst's buffer is kept for the next burst until the sweeper trims it.
        for _ in 0..16 {
            q.push(Bytes::from_static(b"x")).unwrap();
        }
        let mut taken = VecDeque::new();
        q.take(&mut taken).unwrap();
        taken.clear();
        assert!(q.put_back(taken, 16, false));
        assert!(q.lock().frames.capacity() >= 16);
        q.trim();
        assert_eq!(q.lock().frames.capacity(), 0);
    }
}
