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
//! is dropped at once (releasing the memory) and the connection task closes it with 4500. A
//! single frame larger than the bound is still accepted into an empty queue, so the bound
//! limits memory to `bound + max_message_size` and never makes a large message undeliverable.
//! Other recipients of the same room are unaffected: nobody waits for a slow consumer.

use std::{collections::VecDeque, sync::Mutex};

use bytes::Bytes;
use tokio::sync::Notify;

/// The shared side of a connection's queue.
#[derive(Debug)]
pub(crate) struct Outbound {
    inner: Mutex<Inner>,
    notify: Notify,
    limit: usize,
}

#[derive(Debug, Default)]
struct Inner {
    frames: VecDeque<Bytes>,
    /// Bytes queued or taken by the writer and not yet written.
    bytes: usize,
    state: State,
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

/// What the writer found when it drained the queue.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Drain {
    /// Frames moved into the writer's list (possibly none).
    Frames,
    /// The connection overflowed: close it with 4500.
    Overflowed,
}

impl Outbound {
    pub(crate) fn new(limit: usize) -> Self {
        Outbound {
            inner: Mutex::new(Inner::default()),
            notify: Notify::new(),
            limit,
        }
    }

    /// Queues a frame and wakes the connection task if the queue was empty.
    pub(crate) fn push(&self, frame: Bytes) -> Result<(), PushError> {
        let len = frame.len();
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match inner.state {
            State::Open => {}
            State::Overflowed | State::Closed => return Err(PushError::Closed),
        }
        if inner.bytes > 0 && inner.bytes + len > self.limit {
            inner.state = State::Overflowed;
            inner.frames = VecDeque::new();
            drop(inner);
            self.notify.notify_one();
            return Err(PushError::Overflow);
        }
        let wake = inner.frames.is_empty();
        inner.frames.push_back(frame);
        inner.bytes += len;
        drop(inner);
        if wake {
            self.notify.notify_one();
        }
        Ok(())
    }

    /// Moves every queued frame to the back of `into`.
    pub(crate) fn drain_into(&self, into: &mut VecDeque<Bytes>) -> Drain {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.state == State::Overflowed {
            return Drain::Overflowed;
        }
        if into.is_empty() {
            // Hand the writer the whole deque; the queue keeps the writer's empty one.
            std::mem::swap(&mut inner.frames, into);
        } else {
            into.extend(inner.frames.drain(..));
        }
        Drain::Frames
    }

    /// Records that `n` bytes reached the socket.
    pub(crate) fn written(&self, n: usize) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.bytes = inner.bytes.saturating_sub(n);
    }

    /// Refuses every later push and drops what is queued.
    pub(crate) fn close(&self) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.state == State::Open {
            inner.state = State::Closed;
        }
        inner.frames = VecDeque::new();
        inner.bytes = 0;
    }

    /// Bytes queued and not yet written.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).bytes
    }

    /// Waits until a push (or overflow) happens after the last drain.
    pub(crate) async fn notified(&self) {
        self.notify.notified().await
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
        assert_eq!(q.drain_into(&mut taken), Drain::Frames);
        assert_eq!(taken.len(), 2);
        // Taken but unwritten bytes still count.
        assert_eq!(q.push(Bytes::from_static(b"x")), Err(PushError::Overflow));
        assert_eq!(q.drain_into(&mut taken), Drain::Overflowed);
        assert_eq!(q.push(Bytes::from_static(b"x")), Err(PushError::Closed));
    }

    #[test]
    fn written_bytes_free_room() {
        let q = Outbound::new(10);
        q.push(Bytes::from_static(b"1234567890")).unwrap();
        let mut taken = VecDeque::new();
        q.drain_into(&mut taken);
        q.written(10);
        q.push(Bytes::from_static(b"1234567890")).unwrap();
        assert_eq!(q.queued_bytes(), 10);
    }

    #[test]
    fn a_frame_larger_than_the_bound_fits_an_empty_queue() {
        let q = Outbound::new(4);
        q.push(Bytes::from(vec![0; 100])).unwrap();
        assert_eq!(q.push(Bytes::from_static(b"x")), Err(PushError::Overflow));
    }
}
