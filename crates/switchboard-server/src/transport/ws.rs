//! One WebSocket connection's task: reads and decodes frames, calls the handler, writes
//! everything queued in vectored writes, sends pings, enforces the idle timeout, and runs the
//! close handshake.
//!
//! One task does it all with readiness (`readable`/`writable` + `try_*`), so no read buffer
//! exists while the connection is idle and no lock or channel sits between the reader and the
//! writer. Replies produced while handling a batch of input are written together after it.

use std::{collections::VecDeque, io, io::IoSlice, sync::Arc, time::Duration};

use bytes::{Buf, Bytes, BytesMut};
use switchboard_protocol::{
    CloseCode, CloseFrame, ProtocolError, Role,
    codec::{Decoder, DecoderConfig, Message},
    frame::OpCode,
};
use tokio::{net::TcpStream, time::Instant};
use tokio_util::sync::CancellationToken;

use super::outbound::Drain;
use crate::handler::{ConnShared, Connection, Handler, Incoming};

/// Bytes read per wake-up at most.
const READ_CHUNK: usize = 16 * 1024;
/// IoSlices per vectored write.
const MAX_IOV: usize = 64;
/// How long a slow consumer's close frame may wait behind the bytes the kernel already took.
const SLOW_CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long we wait for the peer's close frame (or EOF) after sending ours.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Per-connection transport settings, from the route.
#[derive(Debug, Clone)]
pub(crate) struct WsSettings {
    pub(crate) decoder: DecoderConfig,
    pub(crate) ping_interval: Duration,
    pub(crate) idle_timeout: Duration,
}

/// Why the connection loop ended.
enum End {
    /// Both close frames exchanged (or ours sent and the peer went away).
    Closed(Option<CloseFrame>),
    /// TCP ended without a close handshake.
    Abnormal,
}

pub(crate) async fn run<H: Handler>(
    handler: Arc<H>,
    mut stream: TcpStream,
    leftover: Bytes,
    mut conn: Connection<H::State>,
    settings: WsSettings,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    // `leftover` shares hyper's whole read buffer (8 KiB): copy what it holds, if anything,
    // and let it go, or every idle connection keeps that buffer alive.
    let rbuf = if leftover.is_empty() {
        BytesMut::new()
    } else {
        BytesMut::from(&leftover[..])
    };
    drop(leftover);
    let mut io = Io {
        pending: VecDeque::new(),
        partial: false,
        rbuf,
    };
    let mut decoder = Decoder::new(Role::Server, settings.decoder, conn.shared.deflate);
    let mut last_recv = Instant::now();
    let mut ping = tokio::time::interval_at(
        Instant::now() + settings.ping_interval,
        settings.ping_interval,
    );
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Set once we have sent our close frame: until then we wait for the peer's.
    let mut close_deadline: Option<Instant> = None;
    let mut sent_close: Option<CloseFrame> = None;

    handler.on_connect(&mut conn).await;

    let end = 'conn: loop {
        // Decode whatever is buffered (also the bytes hyper read past the upgrade request).
        loop {
            match decoder.decode(&mut io.rbuf) {
                Ok(None) => break,
                Ok(Some(msg)) => match msg {
                    Message::Text(t) if sent_close.is_none() => {
                        handler.on_message(&mut conn, Incoming::Text(t)).await
                    }
                    Message::Binary(b) if sent_close.is_none() => {
                        handler.on_message(&mut conn, Incoming::Binary(b)).await
                    }
                    Message::Text(_) | Message::Binary(_) => {}
                    Message::Ping(p) => {
                        if sent_close.is_none() {
                            conn.send(OpCode::Pong, &p);
                        }
                    }
                    Message::Pong(_) => {}
                    Message::Close(frame) => {
                        if sent_close.is_none() {
                            // Echo the peer's code (RFC 6455 5.5.1); an empty close gets an empty one.
                            let reply = frame.as_ref().map(|f| CloseFrame::new(f.code, ""));
                            send_close(&mut conn, reply.as_ref());
                            let _ = io.flush_all(&mut stream, &conn.shared).await;
                        }
                        break 'conn End::Closed(frame.or(sent_close));
                    }
                },
                Err(e) => {
                    tracing::debug!(error = %e, "protocol error");
                    let frame = CloseFrame::new(e.close_code(), &short_reason(&e));
                    handler
                        .on_error(&mut conn, &crate::Error::Protocol(e))
                        .await;
                    conn.close = None;
                    send_close(&mut conn, Some(&frame));
                    let _ = io.flush_all(&mut stream, &conn.shared).await;
                    break 'conn End::Closed(Some(frame));
                }
            }
        }
        if io.rbuf.is_empty() && decoder.is_idle() && io.rbuf.capacity() > 0 {
            // Idle connections hold no read buffer.
            io.rbuf = BytesMut::new();
        }

        // A hook (or another task through the queue) asked to close.
        if sent_close.is_none()
            && let Some(frame) = conn.close.take()
        {
            send_close(&mut conn, Some(&frame));
            sent_close = Some(frame);
            close_deadline = Some(Instant::now() + CLOSE_TIMEOUT);
        }

        match io.flush(&stream, &conn.shared) {
            Ok(_) => {}
            Err(FlushError::Overflow) => {
                tracing::info!(
                    queued = conn.shared.outbound.queued_bytes(),
                    "slow consumer, closing with 4500"
                );
                let frame = CloseFrame::new(CloseCode(4500), "slow consumer");
                // The queue is already released. What the kernel took goes first; the close
                // frame follows if the peer drains that within a short while, so a client
                // that was merely behind learns it may reconnect and recover.
                let mut buf = BytesMut::new();
                if io.partial
                    && let Some(rest) = io.pending.pop_front()
                {
                    buf.extend_from_slice(&rest);
                }
                io.pending = VecDeque::new();
                conn.encoder.encode_close(Some(&frame), &mut buf);
                let write = tokio::io::AsyncWriteExt::write_all(&mut stream, &buf);
                let _ = tokio::time::timeout(SLOW_CLOSE_TIMEOUT, write).await;
                break 'conn End::Closed(Some(frame));
            }
            Err(FlushError::Io(e)) => {
                tracing::debug!(error = %e, "write failed");
                break 'conn End::Abnormal;
            }
        }

        let deadline =
            close_deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(86400 * 365));
        tokio::select! {
            biased;
            _ = shutdown.cancelled(), if sent_close.is_none() => {
                conn.close(1001, "server shutting down");
            }
            _ = conn.shared.outbound.notified() => {}
            r = stream.readable() => {
                if r.is_err() { break 'conn End::Abnormal; }
                if io.rbuf.capacity() - io.rbuf.len() < READ_CHUNK / 2 {
                    io.rbuf.reserve(READ_CHUNK);
                }
                match stream.try_read_buf(&mut io.rbuf) {
                    Ok(0) => break 'conn if sent_close.is_some() { End::Closed(sent_close) } else { End::Abnormal },
                    Ok(_) => last_recv = Instant::now(),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => break 'conn End::Abnormal,
                }
            }
            _ = stream.writable(), if !io.pending.is_empty() => {}
            _ = ping.tick(), if sent_close.is_none() => {
                if last_recv.elapsed() >= settings.idle_timeout {
                    tracing::debug!("idle timeout");
                    conn.close(4504, "idle timeout");
                } else {
                    conn.send(OpCode::Ping, b"");
                }
            }
            _ = tokio::time::sleep_until(deadline), if close_deadline.is_some() => {
                break 'conn End::Closed(sent_close);
            }
            _ = tokio::time::sleep_until(conn.timer.unwrap_or(deadline)), if conn.timer.is_some() && sent_close.is_none() => {
                conn.timer = None;
                handler.on_timer(&mut conn).await;
            }
        }
    };

    conn.shared.outbound.close();
    let close = match &end {
        End::Closed(f) => f.clone(),
        End::Abnormal => None,
    };
    tracing::debug!(code = close.as_ref().map(|c| c.code.0), "connection closed");
    handler.on_close(&mut conn, close.as_ref()).await;
    // Rooms the handler did not leave itself (library API joins).
    if let Some(hub) = conn.hub.clone() {
        for room in std::mem::take(&mut conn.rooms) {
            hub.leave(&room, &conn.shared.id);
        }
    }
    // Server closes TCP first after the close handshake (RFC 6455 7.1.1); wait briefly for the
    // peer's FIN so unread bytes do not turn our close into a reset that loses the close frame.
    if matches!(end, End::Closed(_)) {
        lingering_close(stream).await;
    }
}

fn send_close<S>(conn: &mut Connection<S>, frame: Option<&CloseFrame>) {
    conn.encoder.encode_close(frame, &mut conn.scratch);
    let bytes = conn.scratch.split().freeze();
    let _ = conn.shared.outbound.push(bytes);
}

fn short_reason(e: &ProtocolError) -> String {
    let mut s = e.to_string();
    if s.len() > 120 {
        let mut cut = 120;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

async fn lingering_close(mut stream: TcpStream) {
    use tokio::io::AsyncWriteExt;
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 1024];
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            stream.readable().await?;
            match stream.try_read(&mut sink) {
                Ok(0) => return Ok::<_, io::Error>(()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    })
    .await;
}

enum FlushError {
    Overflow,
    Io(io::Error),
}

struct Io {
    /// Frames taken from the queue and not yet fully written.
    pending: VecDeque<Bytes>,
    /// Whether the first pending frame is partly written (it must be finished before any
    /// other frame, or the peer sees a broken stream).
    partial: bool,
    rbuf: BytesMut,
}

impl Io {
    /// Writes as much as the socket takes now. `Ok(true)` when everything queued is written.
    fn flush(&mut self, stream: &TcpStream, conn: &ConnShared) -> Result<bool, FlushError> {
        let outbound = &conn.outbound;
        // Checked on every flush, not only when the writer has caught up: a peer that never
        // drains keeps `pending` non-empty forever and must still be found out.
        if outbound.drain_into(&mut self.pending) == Drain::Overflowed {
            return Err(FlushError::Overflow);
        }
        loop {
            if self.pending.is_empty() {
                if outbound.drain_into(&mut self.pending) == Drain::Overflowed {
                    return Err(FlushError::Overflow);
                }
                if self.pending.is_empty() {
                    if self.pending.capacity() > 64 {
                        self.pending = VecDeque::new();
                    }
                    return Ok(true);
                }
            }
            let mut slices = [IoSlice::new(&[]); MAX_IOV];
            let mut n = 0;
            for (slot, frame) in slices.iter_mut().zip(self.pending.iter()) {
                *slot = IoSlice::new(frame);
                n += 1;
            }
            match stream.try_write_vectored(&slices[..n]) {
                Ok(0) => return Err(FlushError::Io(io::ErrorKind::WriteZero.into())),
                Ok(mut written) => {
                    outbound.written(written);
                    while written > 0 {
                        let front = self
                            .pending
                            .front_mut()
                            .expect("written bytes came from pending frames");
                        if front.len() <= written {
                            written -= front.len();
                            self.pending.pop_front();
                            self.partial = false;
                        } else {
                            front.advance(written);
                            self.partial = true;
                            written = 0;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(FlushError::Io(e)),
            }
        }
    }

    /// Writes everything queued, waiting for the socket, within the close timeout.
    async fn flush_all(&mut self, stream: &mut TcpStream, conn: &ConnShared) -> io::Result<()> {
        let deadline = Instant::now() + CLOSE_TIMEOUT;
        loop {
            match self.flush(stream, conn) {
                Ok(true) => return Ok(()),
                Ok(false) => {
                    tokio::time::timeout_at(deadline, stream.writable())
                        .await
                        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
                }
                Err(FlushError::Overflow) => return Err(io::ErrorKind::OutOfMemory.into()),
                Err(FlushError::Io(e)) => return Err(e),
            }
        }
    }
}
