//! One WebSocket connection's task: reads and decodes frames, calls the handler, writes
//! everything queued in vectored writes, and runs the close handshake.
//!
//! An idle connection is small: the task waits with one hand-written poll (socket readiness,
//! the queue's waker, and a timer only when the handler or a close handshake asked for one),
//! pings and idle timeouts come from the route's sweeper (`transport::registry`), and every
//! future that may be large (the handler's hooks, the close paths) is boxed for as long as it
//! runs, so none of them is part of the connection's resting state. There is no read buffer
//! while idle, and no lock or channel between the reader and the writer. Replies produced
//! while handling a batch of input are written together after it.

use std::{
    collections::VecDeque,
    future::{Future, poll_fn},
    io,
    io::IoSlice,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Buf, Bytes, BytesMut};
use switchboard_protocol::{
    CloseFrame, Disconnect, ProtocolError, Role,
    codec::{Decoder, DecoderConfig, Message},
    deflate::DeflateParams,
    frame::OpCode,
};
use tokio::{
    net::{TcpStream, UnixStream},
    time::{Instant, Sleep},
};

use super::outbound::Overflowed;
#[cfg(test)]
use super::registry::Registry;
#[cfg(test)]
use crate::handler::RouteShared;
use crate::{
    handler::{Connection, Handler, Incoming},
    metrics::Transport,
};

/// Bytes read per wake-up at most.
const READ_CHUNK: usize = 16 * 1024;
/// IoSlices per vectored write.
const MAX_IOV: usize = 64;
/// How long a slow consumer's close frame may wait behind the bytes the kernel already took.
const SLOW_CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long we wait for the peer's close frame (or EOF) after sending ours.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// A socket the connection loop drives by readiness (`try_read`/`try_write` when the kernel
/// says so, no buffers while idle): a TCP connection, or with `[tls]` the local end of a Unix
/// socket pair whose other end a relay task carries through rustls (`server::serve_tls`).
/// rustls' stream cannot be driven this way (it buffers plaintext the socket's readiness
/// knows nothing about), so the loop would keep its one shape for both.
pub(crate) trait Socket: tokio::io::AsyncWrite + Send + Sync + Unpin + 'static {
    fn nodelay(&self);
    fn try_read_buf(&self, buf: &mut BytesMut) -> io::Result<usize>;
    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize>;
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send;
    fn writable(&self) -> impl Future<Output = io::Result<()>> + Send;
}

macro_rules! socket {
    ($t:ty, $nodelay:expr) => {
        impl Socket for $t {
            fn nodelay(&self) {
                $nodelay(self)
            }
            fn try_read_buf(&self, buf: &mut BytesMut) -> io::Result<usize> {
                <$t>::try_read_buf(self, buf)
            }
            fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
                <$t>::try_read(self, buf)
            }
            fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
                <$t>::try_write_vectored(self, bufs)
            }
            fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                <$t>::poll_read_ready(self, cx)
            }
            fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                <$t>::poll_write_ready(self, cx)
            }
            fn readable(&self) -> impl Future<Output = io::Result<()>> + Send {
                <$t>::readable(self)
            }
            fn writable(&self) -> impl Future<Output = io::Result<()>> + Send {
                <$t>::writable(self)
            }
        }
    };
}
socket!(TcpStream, |s: &TcpStream| {
    let _ = s.set_nodelay(true);
});
socket!(UnixStream, |_: &UnixStream| {});

/// Why the connection loop ended.
enum End {
    /// Both close frames exchanged (or ours sent and the peer went away).
    Closed(Option<Box<CloseFrame>>),
    /// TCP ended without a close handshake.
    Abnormal,
}

/// What woke the connection.
enum Event {
    Readable,
    ReadFailed,
    /// The queue has frames (or overflowed), the socket took bytes again, or a close was
    /// requested: the loop looks at all of it.
    Output,
    Timer,
    CloseTimeout,
}

/// The connection's resting state, kept small: it is most of what an idle connection costs.
struct Ws<S, T> {
    stream: T,
    conn: Connection<S>,
    /// Input while bytes of an unfinished frame or message are held; none while idle.
    input: Option<Box<Input>>,
    /// The last write stopped at a full socket: wait for writability, not for the queue.
    write_blocked: bool,
    /// Set once we have sent our close frame: until then we wait for the peer's.
    sent_close: Option<Box<SentClose>>,
}

/// Our close frame, sent, and how long we wait for the peer's.
struct SentClose {
    frame: CloseFrame,
    deadline: Pin<Box<Sleep>>,
}

/// Received bytes not decoded yet, and the decoder's state.
struct Input {
    rbuf: BytesMut,
    decoder: Decoder,
}

/// Runs a connection until it closes. The caller has registered nothing: the connection is
/// added to `registry` here (for pings, idle timeout and shutdown) and removed at the end.
pub(crate) fn run<H: Handler, T: Socket>(
    handler: Arc<H>,
    stream: T,
    leftover: Bytes,
    conn: Connection<H::State>,
) -> impl Future<Output = ()> + Send {
    stream.nodelay();
    // `leftover` shares hyper's whole read buffer (8 KiB): copy what it holds, if anything,
    // and let it go, or every idle connection keeps that buffer alive.
    let input = (!leftover.is_empty()).then(|| {
        Box::new(Input {
            rbuf: BytesMut::from(&leftover[..]),
            decoder: Decoder::new(
                Role::Server,
                conn.route.registry.decoder,
                conn.shared.deflate(),
            ),
        })
    });
    drop(leftover);
    let mut ws = Ws {
        stream,
        conn,
        input,
        write_blocked: false,
        sent_close: None,
    };
    // An `async move` block that uses what it captures in place: an `async fn` would move its
    // arguments into locals and keep both copies for the task's whole life.
    async move {
        if ws.conn.route.registry.insert(&ws.conn.shared) {
            ws.conn
                .shared
                .request_close_code(Disconnect::GOING_AWAY.code.0);
        }
        ws.conn
            .route
            .hub
            .metrics()
            .connection_opened(Transport::WebSocket);
        // The user index: how the server API reaches every connection of a user.
        ws.conn
            .route
            .hub
            .add_connection(&ws.conn.user.id, &ws.conn.shared);
        Box::pin(handler.on_connect(&mut ws.conn)).await;
        let end = loop {
            // Decode whatever is buffered (also the bytes hyper read past the upgrade request).
            if let Some(input) = &mut ws.input
                && !input.rbuf.is_empty()
            {
                let closing = ws.sent_close.is_some();
                let mut messages = 0;
                let decoded = Box::pin(dispatch(
                    &*handler,
                    &mut ws.conn,
                    input,
                    closing,
                    &mut messages,
                ))
                .await;
                let metrics = ws.conn.route.hub.metrics();
                metrics.received(Transport::WebSocket, messages, 0);
                // Rare endings run in a future of their own, so their state is no part of
                // the connection's resting state.
                if let Some(end) = decoded {
                    break Box::pin(ws.end_input(&*handler, end)).await;
                }
            }
            if ws
                .input
                .as_ref()
                .is_some_and(|i| i.rbuf.is_empty() && i.decoder.is_reset())
            {
                // Idle connections hold no read buffer and no decoder state.
                if let Some(input) = ws.input.take() {
                    Input::release(input);
                }
            }

            // The server (shutdown, idle timeout) or a hook asked to close.
            if ws.sent_close.is_none() {
                if let Some(disconnect) = ws.conn.shared.take_close_request() {
                    tracing::debug!(%disconnect, "closing as asked");
                    ws.conn.close(disconnect);
                }
                // Requests of other tasks (the server API, per-user commands).
                if ws.conn.shared.has_control() {
                    Box::pin(drain_controls(&*handler, &mut ws.conn)).await;
                }
                if let Some(frame) = ws.conn.close.take() {
                    send_close(&mut ws.conn, Some(&*frame));
                    ws.sent_close = Some(Box::new(SentClose {
                        frame: *frame,
                        deadline: Box::pin(tokio::time::sleep(CLOSE_TIMEOUT)),
                    }));
                    ws.conn.set_timer(None);
                }
            }

            match ws.flush() {
                Ok(done) => ws.write_blocked = !done,
                Err(FlushError::Overflow(rest)) => {
                    let metrics = ws.conn.route.hub.metrics();
                    metrics.slow_consumer_closed(Transport::WebSocket);
                    break Box::pin(ws.slow_close(rest)).await;
                }
                Err(FlushError::Io(e)) => {
                    tracing::debug!(error = %e, "write failed");
                    break End::Abnormal;
                }
            }

            // A hook set a timer, or the sweeper found its deadline near.
            let horizon = ws.conn.route.registry.timer_horizon();
            ws.conn.update_timer(horizon);

            match poll_fn(|cx| ws.poll_event(cx)).await {
                Event::Readable => {
                    let (decoder, deflate) =
                        (ws.conn.route.registry.decoder, ws.conn.shared.deflate());
                    let input = ws
                        .input
                        .get_or_insert_with(|| Input::acquire(decoder, deflate));
                    if input.rbuf.capacity() - input.rbuf.len() < READ_CHUNK / 2 {
                        input.rbuf.reserve(READ_CHUNK);
                    }
                    match ws.stream.try_read_buf(&mut input.rbuf) {
                        Ok(0) => {
                            break match ws.take_sent_close() {
                                Some(frame) => End::Closed(Some(frame)),
                                None => End::Abnormal,
                            };
                        }
                        Ok(n) => {
                            ws.conn.shared.mark_seen();
                            let metrics = ws.conn.route.hub.metrics();
                            metrics.received(Transport::WebSocket, 0, n as u64);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(_) => break End::Abnormal,
                    }
                }
                Event::ReadFailed => break End::Abnormal,
                Event::Output => {}
                Event::Timer => {
                    ws.conn.timer_fired();
                    Box::pin(handler.on_timer(&mut ws.conn)).await;
                }
                Event::CloseTimeout => break End::Closed(ws.take_sent_close()),
            }
        };

        Box::pin(finish(&*handler, ws, end)).await;
    }
}

/// Hands every request waiting in the connection's control inbox to the handler, in order.
async fn drain_controls<H: Handler>(handler: &H, conn: &mut Connection<H::State>) {
    let route = conn.route.clone();
    for control in route.hub.take_controls(&conn.shared) {
        handler.on_control(conn, control).await;
    }
}

/// After the connection loop: the handler's `on_close`, the rooms it did not leave, and the
/// end of the TCP connection.
async fn finish<H: Handler, T: Socket>(handler: &H, ws: Ws<H::State, T>, end: End) {
    let Ws {
        stream, mut conn, ..
    } = ws;
    conn.shared.outbound.close();
    let route = conn.route.clone();
    route.registry.remove(&conn.shared);
    route.hub.remove_connection(&conn.user.id, &conn.shared);
    let close = match &end {
        End::Closed(f) => f.as_deref().cloned(),
        End::Abnormal => None,
    };
    tracing::debug!(code = close.as_ref().map(|c| c.code.0), "connection closed");
    let code = close.as_ref().map(|c| c.code.0);
    route
        .hub
        .metrics()
        .connection_closed(Transport::WebSocket, code);
    handler.on_close(&mut conn, close.as_ref()).await;
    // Rooms the handler did not leave itself (library API joins).
    for room in std::mem::take(&mut conn.rooms) {
        route.hub.leave(&room, &conn.shared);
    }
    // Server closes TCP first after the close handshake (RFC 6455 7.1.1); wait briefly for the
    // peer's FIN so unread bytes do not turn our close into a reset that loses the close frame.
    if matches!(end, End::Closed(_)) {
        lingering_close(stream).await;
    }
}

impl<S: Send + 'static, T: Socket> Ws<S, T> {
    /// Our close frame, once sent.
    fn take_sent_close(&mut self) -> Option<Box<CloseFrame>> {
        self.sent_close.take().map(|sent| Box::new(sent.frame))
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        if let Some(sent) = &mut self.sent_close
            && sent.deadline.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Event::CloseTimeout);
        }
        if let Some(timer) = &mut self.conn.timer
            && timer.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Event::Timer);
        }
        match self.stream.poll_read_ready(cx) {
            Poll::Ready(Ok(())) => return Poll::Ready(Event::Readable),
            Poll::Ready(Err(_)) => return Poll::Ready(Event::ReadFailed),
            Poll::Pending => {}
        }
        let outbound = &self.conn.shared.outbound;
        let output = if self.write_blocked {
            // A full socket: the queue only matters when it overflows.
            self.stream.poll_write_ready(cx).is_ready() || outbound.poll_overflow(cx).is_ready()
        } else {
            outbound.poll_ready(cx).is_ready()
        };
        // A close request wakes the task through the queue's waker, registered above.
        let asked = self.conn.shared.has_close_request() || self.conn.shared.has_control();
        if output || (self.sent_close.is_none() && asked) {
            return Poll::Ready(Event::Output);
        }
        Poll::Pending
    }

    /// Writes as much as the socket takes now. `Ok(true)` when everything queued is written.
    fn flush(&mut self) -> Result<bool, FlushError> {
        let outbound = &self.conn.shared.outbound;
        loop {
            // Taken before the queue: the sampled publication is among the frames taken.
            let probe = self.conn.route.hub.take_write_probe(&self.conn.shared);
            let mut frames = VecDeque::new();
            if outbound.take(&mut frames) == Err(Overflowed) {
                return Err(FlushError::Overflow(frames));
            }
            if frames.is_empty() {
                return Ok(true);
            }
            let mut written = 0;
            let mut sent = 0;
            let mut partial = false;
            let mut blocked = false;
            while !frames.is_empty() {
                let mut slices = [IoSlice::new(&[]); MAX_IOV];
                let mut n = 0;
                for (slot, frame) in slices.iter_mut().zip(frames.iter()) {
                    *slot = IoSlice::new(frame);
                    n += 1;
                }
                match self.stream.try_write_vectored(&slices[..n]) {
                    Ok(0) => return Err(FlushError::Io(io::ErrorKind::WriteZero.into())),
                    Ok(mut n) => {
                        written += n;
                        while n > 0 {
                            let front = frames
                                .front_mut()
                                .expect("written bytes came from queued frames");
                            if front.len() <= n {
                                n -= front.len();
                                frames.pop_front();
                                sent += 1;
                                partial = false;
                            } else {
                                front.advance(n);
                                partial = true;
                                n = 0;
                            }
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        blocked = true;
                        break;
                    }
                    Err(e) => return Err(FlushError::Io(e)),
                }
            }
            let empty = outbound.put_back(frames, written, partial);
            let metrics = self.conn.route.hub.metrics();
            metrics.sent(Transport::WebSocket, sent, written as u64);
            if let Some(at) = probe {
                if blocked {
                    self.conn
                        .route
                        .hub
                        .restore_write_probe(&self.conn.shared, at);
                } else {
                    metrics.observe_publish_to_write(at.elapsed());
                }
            }
            if blocked {
                return Ok(false);
            }
            if empty {
                return Ok(true);
            }
        }
    }

    /// Writes everything queued, waiting for the socket, within the close timeout.
    async fn flush_all(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + CLOSE_TIMEOUT;
        loop {
            match self.flush() {
                Ok(true) => return Ok(()),
                Ok(false) => {
                    tokio::time::timeout_at(deadline, self.stream.writable())
                        .await
                        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
                }
                Err(FlushError::Overflow(_)) => return Err(io::ErrorKind::OutOfMemory.into()),
                Err(FlushError::Io(e)) => return Err(e),
            }
        }
    }

    /// Closes a slow consumer with 4500: its queue is already released. What the kernel took
    /// of a frame goes first (the rest of that frame, in `rest`), and the close frame follows
    /// if the peer drains that within a short while, so a client that was merely behind
    /// learns it may reconnect and recover.
    async fn slow_close(&mut self, rest: VecDeque<Bytes>) -> End {
        tracing::info!(
            conn = %self.conn.shared.id,
            queued = self.conn.shared.outbound.queued_bytes(),
            "slow consumer, closing with 4500"
        );
        let frame = Disconnect::SLOW_CONSUMER.close_frame();
        let mut buf = BytesMut::new();
        for piece in rest {
            buf.extend_from_slice(&piece);
        }
        self.conn.encoder.encode_close(Some(&frame), &mut buf);
        let write = tokio::io::AsyncWriteExt::write_all(&mut self.stream, &buf);
        let _ = tokio::time::timeout(SLOW_CLOSE_TIMEOUT, write).await;
        End::Closed(Some(Box::new(frame)))
    }

    /// The input ended the connection: the peer's close frame (answered, unless we sent ours
    /// first) or a protocol error (closed with its code).
    async fn end_input<H: Handler<State = S>>(&mut self, handler: &H, end: InputEnd) -> End {
        match end {
            InputEnd::Close(frame) => {
                if self.sent_close.is_none() {
                    // Echo the peer's code (RFC 6455 5.5.1); an empty close gets an empty one.
                    let reply = frame.as_ref().map(|f| CloseFrame::new(f.code, ""));
                    send_close(&mut self.conn, reply.as_ref());
                    let _ = self.flush_all().await;
                }
                End::Closed(frame.map(Box::new).or_else(|| self.take_sent_close()))
            }
            InputEnd::Error(e) => {
                tracing::debug!(error = %e, "protocol error");
                let frame = CloseFrame::new(e.close_code(), &short_reason(&e));
                handler
                    .on_error(&mut self.conn, &crate::Error::Protocol(e))
                    .await;
                self.conn.close = None;
                send_close(&mut self.conn, Some(&frame));
                let _ = self.flush_all().await;
                End::Closed(Some(Box::new(frame)))
            }
        }
    }
}

/// How input ended the connection.
enum InputEnd {
    /// The peer's close frame (with its code and reason, if any).
    Close(Option<CloseFrame>),
    Error(ProtocolError),
}

thread_local! {
    /// Read buffers of connections that went idle, for the next connection of this thread
    /// that reads: a busy server reuses a few instead of allocating one per read. Boxed:
    /// a connection holds its input by the box it takes from here.
    #[allow(clippy::vec_box)]
    static SPARE_INPUTS: std::cell::RefCell<Vec<Box<Input>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Read buffers kept per thread at most.
const SPARE_INPUTS_MAX: usize = 8;

impl Input {
    /// An empty input with a fresh decoder, reusing a spare buffer of this thread if any.
    fn acquire(decoder: DecoderConfig, deflate: Option<DeflateParams>) -> Box<Input> {
        let decoder = Decoder::new(Role::Server, decoder, deflate);
        match SPARE_INPUTS.with_borrow_mut(Vec::pop) {
            Some(mut input) => {
                input.decoder = decoder;
                input
            }
            None => Box::new(Input {
                rbuf: BytesMut::new(),
                decoder,
            }),
        }
    }

    /// Gives an empty, reset input back to this thread's spares (or frees it).
    fn release(mut input: Box<Input>) {
        input.rbuf.clear();
        SPARE_INPUTS.with_borrow_mut(|spare| {
            if spare.len() < SPARE_INPUTS_MAX {
                spare.push(input);
            }
        });
    }
}

/// Decodes the buffered input and hands each message to the handler, until the bytes run out
/// (`None`) or the input ends the connection. Counts the data messages in `messages`.
async fn dispatch<H: Handler>(
    handler: &H,
    conn: &mut Connection<H::State>,
    input: &mut Input,
    closing: bool,
    messages: &mut u64,
) -> Option<InputEnd> {
    loop {
        let message = match input.decoder.decode(&mut input.rbuf) {
            Ok(Some(message)) => message,
            Ok(None) => return None,
            Err(e) => return Some(InputEnd::Error(e)),
        };
        if matches!(message, Message::Text(_) | Message::Binary(_)) {
            *messages += 1;
        }
        match message {
            Message::Text(t) if !closing => handler.on_message(conn, Incoming::Text(t)).await,
            Message::Binary(b) if !closing => handler.on_message(conn, Incoming::Binary(b)).await,
            Message::Text(_) | Message::Binary(_) => {}
            Message::Ping(p) => {
                if !closing {
                    conn.send(OpCode::Pong, &p);
                }
            }
            Message::Pong(p) => {
                if let Some(rtt) = crate::metrics::ping_rtt(&p) {
                    conn.route.hub.metrics().observe_ping_rtt(rtt);
                }
            }
            Message::Close(frame) => return Some(InputEnd::Close(frame)),
        }
    }
}

fn send_close<S>(conn: &mut Connection<S>, frame: Option<&CloseFrame>) {
    let mut buf = BytesMut::new();
    conn.encoder.encode_close(frame, &mut buf);
    let _ = conn.shared.outbound.push(buf.freeze());
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

async fn lingering_close<T: Socket>(mut stream: T) {
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
    /// The queue overflowed; the rest of a partly written frame, to finish before closing.
    Overflow(VecDeque<Bytes>),
    Io(io::Error),
}

#[cfg(test)]
mod tests {
    use switchboard_protocol::codec::Encoder;

    use super::*;
    use crate::{conn::ConnShared, handler::User};

    /// A connection of `route` over nothing yet, with the handler state `state`.
    fn connection<S>(route: RouteShared, state: S) -> Connection<S> {
        Connection {
            shared: Arc::new(ConnShared::new("c_test".into(), 1024, None)),
            user: Arc::new(User::default()),
            rooms: Default::default(),
            encoder: Encoder::new(Role::Server, None, usize::MAX),
            close: None,
            route: Arc::new(route),
            timer: None,
            admitted: None,
            state,
        }
    }

    /// What an idle connection costs is mostly this future (tokio adds about 100 bytes and
    /// rounds the task up to a multiple of 128): keep an eye on it.
    #[tokio::test]
    async fn the_connection_task_stays_small() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let route = RouteShared {
            hub: crate::hub::Hub::new(usize::MAX),
            node: None,
            registry: Arc::new(Registry::default()),
        };
        let conn = connection(route, ());
        let task = run(Arc::new(crate::builtin::Echo), stream, Bytes::new(), conn);
        let size = std::mem::size_of_val(&task);
        eprintln!("connection task future: {size} bytes");
        let shared = std::mem::size_of::<ConnShared>();
        eprintln!("shared connection state: {shared} bytes");
        // With the `Arc`'s two counters, 160 bytes: one of the allocator's size classes.
        assert!(
            shared <= 144,
            "the shared connection state is {shared} bytes"
        );
        // 288 bytes: with tokio's header and trailer the task fits in 384.
        assert!(size <= 288, "the connection task's future is {size} bytes");
        // The v1 protocol's connections too: its session state is part of every task.
        let mut config = crate::config::Config::default();
        config.auth.anonymous = true;
        let node = crate::node::Node::new(config).unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let route = RouteShared {
            hub: node.hub().clone(),
            node: Some(node.clone()),
            registry: Arc::new(Registry::default()),
        };
        let conn = connection(route, crate::v1::Session::default());
        let task = run(
            Arc::new(crate::v1::Protocol::new(node)),
            stream,
            Bytes::new(),
            conn,
        );
        let size = std::mem::size_of_val(&task);
        eprintln!("v1 protocol connection task future: {size} bytes");
        assert!(
            size <= 288,
            "the v1 connection task's future is {size} bytes"
        );
    }
}
