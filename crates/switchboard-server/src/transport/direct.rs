//! Long-lived HTTP/1.1 responses (SSE streams) written on the socket directly, outside hyper.
//!
//! hyper keeps a connection's read buffer (8 KiB) and write buffer for as long as the
//! connection lives, and writes each body frame through its own state machine: fine for a
//! request, but an SSE stream is a connection that lives for hours and receives most of the
//! node's fan-out. So a request whose first bytes are `GET <sse.path>` (peeked, nothing is
//! consumed) is read and parsed here (httparse), answered by the same router as every other
//! request, and its response written here: the head, then the body's frames as chunks, each
//! frame one vectored write without a copy. The head's buffer is gone before the stream starts,
//! so an idle stream holds its socket, its queue and its task, no buffers.
//!
//! The connection ends with the response (`connection: close`): a stream is the last request
//! of its connection, and a refusal is answered with a length and then the connection closes.
//! Anything else (a request that did not arrive in one piece, another path) goes to hyper.
//!
//! A connection here is a TCP connection, or the local end of a TLS connection's socket pair
//! (`server`): the code is generic over [`Stream`].

use std::{
    collections::VecDeque,
    io::IoSlice,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll, ready},
    time::Duration,
};

use axum::{Router, body::Body};
use bytes::{Bytes, BytesMut};
use http::{Request, header};
use hyper::body::Body as _;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpStream, UnixStream},
};
use tokio_util::sync::CancellationToken;
use tower::Service;

use crate::{
    limits::HandshakeTicket,
    route::{PeerAddr, ShutdownToken},
};

/// How long a client may take to send its request head (hyper's `header_read_timeout` for
/// every other request).
pub(crate) const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Most headers a request may have, hyper's limit for every other request (beyond: 431).
const MAX_HEADERS: usize = 100;

/// In the extensions of every request [`serve`] reads: its response may hand its body over as
/// [`Batches`] ([`BatchBody`]) rather than as an HTTP body.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Direct;

/// A body that gives its frames a batch at a time (an SSE stream's queue, taken whole): the
/// writer writes each batch as one vectored write, instead of asking a boxed HTTP body for
/// its frames one by one, which costs about as much as the rest of a delivery.
pub(crate) trait Batches: Send + 'static {
    /// The next frames (never an empty batch), or `None` once the body ended.
    fn poll_batch(&mut self, cx: &mut Context<'_>) -> Poll<Option<VecDeque<Bytes>>>;
    /// A written batch's buffer, emptied, to be reused for a later batch.
    fn recycle(&mut self, spent: VecDeque<Bytes>);
}

/// A response extension carrying the body as [`Batches`] (the response's own body is then
/// empty and ignored): only for a request with [`Direct`] in its extensions.
#[derive(Clone)]
pub(crate) struct BatchBody(pub(crate) Arc<Mutex<Option<Box<dyn Batches>>>>);

impl BatchBody {
    /// Wraps `body` to be put in a response's extensions.
    pub(crate) fn new(body: impl Batches) -> Self {
        BatchBody(Arc::new(Mutex::new(Some(Box::new(body)))))
    }
}

/// Where a response's body comes from.
enum Source {
    Body(Body),
    Batches(Box<dyn Batches>),
}

/// Whether the connection's first bytes are `GET <path>` followed by `?` or a space: a request
/// for the SSE endpoint. Waits for the first bytes (at most [`HEAD_TIMEOUT`]) without
/// consuming them; a request line that did not arrive whole in the first segment is `false`
/// (hyper serves it).
pub(crate) async fn wants(stream: &TcpStream, path: &str) -> bool {
    let mut buf = [0u8; 128];
    let want = 4 + path.len() + 1;
    if want > buf.len() {
        return false;
    }
    let n = match tokio::time::timeout(HEAD_TIMEOUT, stream.peek(&mut buf)).await {
        Ok(Ok(n)) => n,
        _ => return false,
    };
    is_request_for(&buf[..n], path)
}

/// Whether a connection's first bytes `first` are `GET <path>` followed by `?` or a space (a
/// TLS connection's first plaintext, or a TCP connection's peeked bytes).
pub(crate) fn is_request_for(first: &[u8], path: &str) -> bool {
    let want = 4 + path.len() + 1;
    first.len() >= want
        && &first[..4] == b"GET "
        && &first[4..4 + path.len()] == path.as_bytes()
        && matches!(first[want - 1], b'?' | b' ')
}

/// A connection served here: a TCP connection, or the local end of a TLS connection's pair.
/// The writer asks the socket's readiness (a listening client sends nothing: readable means
/// it closed or misbehaved) without holding a read future.
pub(crate) trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {
    /// The socket's read readiness.
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>>;
    /// A read that does not wait.
    fn try_read(&self, buf: &mut [u8]) -> std::io::Result<usize>;
}

macro_rules! stream {
    ($t:ty) => {
        impl Stream for $t {
            fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
                <$t>::poll_read_ready(self, cx)
            }
            fn try_read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
                <$t>::try_read(self, buf)
            }
        }
    };
}
stream!(TcpStream);
stream!(UnixStream);

/// Serves one request on `stream` (see the module doc). When the response has a body to
/// write (a stream), returns it unwritten: the caller spawns [`Streaming::write`] as a task of
/// its own. The task that accepted the connection is sized for hyper's connection state too
/// (well over 1 KiB), and a stream lives for hours; its own task is sized for writing the body
/// alone (test `the_stream_task_stays_small`).
pub(crate) async fn serve<S: Stream>(
    mut stream: S,
    peer: SocketAddr,
    mut router: Router,
    shutdown: CancellationToken,
    ticket: Option<HandshakeTicket>,
    max_request_head: usize,
) -> Option<Streaming<S>> {
    let mut req =
        match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream, max_request_head)).await {
            Ok(Ok(req)) => req,
            Ok(Err(Some(status))) => {
                let _ = write_status_only(&mut stream, status).await;
                return None;
            }
            Ok(Err(None)) | Err(_) => return None,
        };
    req.extensions_mut().insert(PeerAddr(peer));
    req.extensions_mut().insert(ShutdownToken(shutdown));
    req.extensions_mut().insert(Direct);
    let http10 = req.version() == http::Version::HTTP_10;
    let resp = match router.call(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    // The head was read: the stream is counted by its route from here on.
    drop(ticket);
    let (mut parts, body) = resp.into_parts();
    let batches = parts
        .extensions
        .remove::<BatchBody>()
        .and_then(|b| b.0.lock().unwrap_or_else(PoisonError::into_inner).take());
    let (source, length) = match batches {
        Some(b) => (Source::Batches(b), None),
        None => {
            let length = body.size_hint().exact();
            (Source::Body(body), length)
        }
    };
    let chunked = length.is_none() && !http10;
    let head = response_head(parts, length, chunked, http10);
    if let Err(e) = stream.write_all(&head).await {
        tracing::debug!(error = %e, %peer, "sse connection ended");
        return None;
    }
    Some(Streaming {
        stream,
        source,
        chunked,
    })
}

/// A response whose head was written and whose body is still to be written.
pub(crate) struct Streaming<S> {
    stream: S,
    source: Source,
    chunked: bool,
}

impl<S: Stream> Streaming<S> {
    /// Writes the body, then closes the connection.
    pub(crate) fn write(self) -> impl Future<Output = ()> + Send + 'static {
        Writer {
            stream: self.stream,
            source: self.source,
            chunked: self.chunked,
            batch: VecDeque::new(),
            written: 0,
            end: false,
            phase: Phase::Streaming,
        }
    }
}

/// Reads and parses a request head; `Err(Some(status))` is answered, `Err(None)` just closes.
async fn read_head<S: Stream>(
    stream: &mut S,
    max: usize,
) -> Result<Request<Body>, Option<http::StatusCode>> {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        if buf.len() >= max {
            return Err(Some(http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE));
        }
        let n = stream.read_buf(&mut buf).await.map_err(|_| None)?;
        if n == 0 {
            return Err(None);
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        match parsed.parse(&buf) {
            Ok(httparse::Status::Partial) => continue,
            Ok(httparse::Status::Complete(_)) => {
                return to_request(&parsed).ok_or(Some(http::StatusCode::BAD_REQUEST));
            }
            Err(httparse::Error::TooManyHeaders) => {
                return Err(Some(http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE));
            }
            Err(_) => return Err(Some(http::StatusCode::BAD_REQUEST)),
        }
    }
}

fn to_request(parsed: &httparse::Request<'_, '_>) -> Option<Request<Body>> {
    let mut req = Request::builder()
        .method(parsed.method?)
        .uri(parsed.path?)
        .version(match parsed.version? {
            0 => http::Version::HTTP_10,
            _ => http::Version::HTTP_11,
        });
    for h in parsed.headers.iter() {
        req = req.header(h.name, h.value);
    }
    req.body(Body::empty()).ok()
}

/// A status for a head that could not be read or parsed, then the close. The body is the
/// JSON of every other refusal (docs/protocol.md 7.3), so that clients need one parser.
async fn write_status_only<S: Stream>(
    stream: &mut S,
    status: http::StatusCode,
) -> std::io::Result<()> {
    let reason = if status == http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE {
        "request_head_too_large"
    } else {
        "bad_request"
    };
    let body = serde_json::json!({"error": "bad_request", "reason": reason}).to_string();
    let head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.shutdown().await
}

/// Writes the body: as chunks when `chunked` (else as it is, until the close), each batch of
/// frames one vectored write. Ends when the body ends, or when the peer closes or sends
/// anything (a stream's client only listens).
///
/// A future written by hand rather than an `async fn`: this is the stream's task for its whole
/// life, and an `async fn`'s future is laid out for all its awaits at once (320 bytes, a task
/// of 512; this one is about 100, a task of 256: the test `the_stream_task_stays_small`).
struct Writer<S> {
    stream: S,
    source: Source,
    chunked: bool,
    /// The frames of the chunk being written (empty between chunks, and without a buffer
    /// once the body has nothing ready: an idle stream holds no buffer).
    batch: VecDeque<Bytes>,
    /// Bytes of the chunk being written (head, frames and tail) that reached the socket.
    written: usize,
    /// The body ended while its last frames were gathered: they are the last chunk.
    end: bool,
    phase: Phase,
}

/// Where a [`Writer`] is.
#[derive(Clone, Copy)]
enum Phase {
    /// Writing the body's frames.
    Streaming,
    /// The body ended as the server meant it to: writing the last chunk (so many bytes of it
    /// written), which tells the client so.
    LastChunk(usize),
    /// Closing the connection.
    Shutdown,
}

/// The last chunk of a chunked body.
const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

impl<S: Stream> Future for Writer<S> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            match this.phase {
                Phase::Streaming => match this.poll_stream(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(true)) if this.chunked => this.phase = Phase::LastChunk(0),
                    Poll::Ready(Ok(_)) => this.phase = Phase::Shutdown,
                    Poll::Ready(Err(e)) => {
                        tracing::debug!(error = %e, "sse connection ended");
                        return Poll::Ready(());
                    }
                },
                Phase::LastChunk(n) => {
                    match Pin::new(&mut this.stream).poll_write(cx, &LAST_CHUNK[n..]) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Ok(k)) if k > 0 && n + k < LAST_CHUNK.len() => {
                            this.phase = Phase::LastChunk(n + k);
                        }
                        Poll::Ready(Ok(k)) if k > 0 => this.phase = Phase::Shutdown,
                        Poll::Ready(_) => return Poll::Ready(()),
                    }
                }
                Phase::Shutdown => {
                    return Pin::new(&mut this.stream).poll_shutdown(cx).map(|r| {
                        if let Err(e) = r {
                            tracing::debug!(error = %e, "sse connection ended");
                        }
                    });
                }
            }
        }
    }
}

impl<S: Stream> Writer<S> {
    /// Writes the body's frames as they come; `Ok(true)` when the body ended as the server
    /// meant it to, `Ok(false)` when it failed or the client sent something or closed.
    fn poll_stream(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<bool>> {
        loop {
            if self.batch.is_empty() {
                match self.fill(cx) {
                    Poll::Ready(Next::Data(())) => {}
                    Poll::Ready(Next::Skip) => continue,
                    Poll::Ready(Next::End) => return Poll::Ready(Ok(true)),
                    Poll::Ready(Next::Broken) => return Poll::Ready(Ok(false)),
                    // A listening client sends nothing: EOF, an error or bytes all end the
                    // stream. Read readiness is polled: the task keeps no read state.
                    Poll::Pending => loop {
                        // Idle: the batch buffer goes (kept only while events keep coming).
                        self.batch = VecDeque::new();
                        match self.stream.poll_read_ready(cx) {
                            Poll::Pending => return Poll::Pending,
                            Poll::Ready(Err(_)) => return Poll::Ready(Ok(false)),
                            // Readiness may be stale: only a read that would block clears it.
                            Poll::Ready(Ok(())) => match self.stream.try_read(&mut [0u8; 1]) {
                                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                                _ => return Poll::Ready(Ok(false)),
                            },
                        }
                    },
                }
                self.written = 0;
            }
            if let Err(e) = ready!(self.poll_write_chunk(cx)) {
                return Poll::Ready(Err(e));
            }
            match &mut self.source {
                Source::Batches(b) => b.recycle(std::mem::take(&mut self.batch)),
                Source::Body(_) => self.batch.clear(),
            }
            if self.end {
                return Poll::Ready(Ok(true));
            }
        }
    }

    /// Fills the empty `batch` with what the body has ready: a batch source's next batch, or
    /// an HTTP body's frames, as many as are ready (up to [`MAX_BATCH`]), so that they go out
    /// in the same chunk and the same write.
    fn fill(&mut self, cx: &mut Context<'_>) -> Poll<Next<()>> {
        let body = match &mut self.source {
            Source::Batches(b) => {
                return b.poll_batch(cx).map(|batch| match batch {
                    Some(batch) => {
                        self.batch = batch;
                        Next::Data(())
                    }
                    None => Next::End,
                });
            }
            Source::Body(body) => body,
        };
        match ready!(poll_data(body, cx)) {
            Next::Data(data) => {
                self.batch.reserve_exact(MAX_BATCH);
                self.batch.push_back(data);
            }
            Next::Skip => return Poll::Ready(Next::Skip),
            Next::End => return Poll::Ready(Next::End),
            Next::Broken => return Poll::Ready(Next::Broken),
        }
        while self.batch.len() < MAX_BATCH {
            match poll_data(body, cx) {
                Poll::Ready(Next::Data(data)) => self.batch.push_back(data),
                Poll::Ready(Next::Skip) => {}
                Poll::Ready(Next::End | Next::Broken) => {
                    self.end = true;
                    break;
                }
                Poll::Pending => break,
            }
        }
        Poll::Ready(Next::Data(()))
    }

    /// Writes `batch` as one chunk (or as it is, when not `chunked`), with vectored writes,
    /// from where `written` says.
    fn poll_write_chunk(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let len: usize = self.batch.iter().map(Bytes::len).sum();
        let mut size = [0u8; 20];
        let (head, tail): (&[u8], &[u8]) = if self.chunked && len > 0 {
            (chunk_size(&mut size, len), b"\r\n")
        } else {
            (b"", b"")
        };
        let total = head.len() + len + tail.len();
        while self.written < total {
            // The parts not yet written, rebuilt on each write (on the stack).
            let mut slices = [IoSlice::new(&[]); MAX_BATCH + 2];
            let mut count = 0;
            let mut skip = self.written;
            let parts = std::iter::once(head)
                .chain(self.batch.iter().map(|b| &b[..]))
                .chain(std::iter::once(tail));
            for part in parts {
                if count == slices.len() {
                    // A batch source's batch may be longer: the rest in the next write.
                    break;
                }
                if skip >= part.len() {
                    skip -= part.len();
                    continue;
                }
                slices[count] = IoSlice::new(&part[skip..]);
                skip = 0;
                count += 1;
            }
            let n = ready!(Pin::new(&mut self.stream).poll_write_vectored(cx, &slices[..count]))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        Poll::Ready(Ok(()))
    }
}

/// What the body gave: a small value, so that the writer's future keeps no `Frame` (a frame
/// may hold trailers, a whole header map).
enum Next<D = Bytes> {
    Data(D),
    /// Not data (trailers): nothing to write.
    Skip,
    /// The body ended as the server meant it to.
    End,
    /// The body failed, or the client sent something or closed.
    Broken,
}

fn poll_data(body: &mut Body, cx: &mut Context<'_>) -> Poll<Next> {
    Pin::new(body).poll_frame(cx).map(|frame| match frame {
        None => Next::End,
        Some(Err(_)) => Next::Broken,
        Some(Ok(frame)) => frame.into_data().map_or(Next::Skip, Next::Data),
    })
}

/// The response's status line and headers, with its framing (`content-length` or chunked)
/// and `connection: close`.
fn response_head(
    parts: http::response::Parts,
    length: Option<u64>,
    chunked: bool,
    http10: bool,
) -> Vec<u8> {
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(if http10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
    head.extend_from_slice(parts.status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if name == header::CONNECTION
            || name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
        {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    match length {
        Some(n) => head.extend_from_slice(format!("content-length: {n}\r\n").as_bytes()),
        None if chunked => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        None => {}
    }
    head.extend_from_slice(b"connection: close\r\n\r\n");
    head
}

/// Most body frames written at once (one vectored write of up to this many buffers, plus the
/// chunk's head and tail).
const MAX_BATCH: usize = 62;

/// `len` in hex followed by CRLF, the head of a chunk.
fn chunk_size(buf: &mut [u8; 20], len: usize) -> &[u8] {
    use std::io::Write;
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    let _ = write!(cursor, "{len:x}\r\n");
    let n = cursor.position() as usize;
    &buf[..n]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes_are_hex() {
        let mut buf = [0u8; 20];
        assert_eq!(chunk_size(&mut buf, 0), b"0\r\n");
        assert_eq!(chunk_size(&mut buf, 255), b"ff\r\n");
        assert_eq!(chunk_size(&mut buf, 65536), b"10000\r\n");
    }

    /// A body of frames given all at once.
    struct Frames(std::collections::VecDeque<Bytes>);

    impl hyper::body::Body for Frames {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(|b| Ok(hyper::body::Frame::data(b))))
        }
    }

    /// A chunk far larger than the socket's buffers leaves in many partial writes, each
    /// resumed where the last stopped; then the last chunk and the close.
    #[tokio::test]
    async fn a_chunk_written_in_parts_arrives_whole() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        let frames: Vec<Bytes> = (0..4u8)
            .map(|i| {
                Bytes::from(
                    (0..4 << 20)
                        .map(|j| (j % 251) as u8 ^ i)
                        .collect::<Vec<_>>(),
                )
            })
            .collect();
        let writer = tokio::spawn(
            Streaming {
                stream,
                source: Source::Body(Body::new(Frames(frames.iter().cloned().collect()))),
                chunked: true,
            }
            .write(),
        );
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        let expected: Vec<u8> = frames.concat();
        let head = format!("{:x}\r\n", expected.len());
        assert!(got.starts_with(head.as_bytes()));
        assert!(got.ends_with(b"\r\n0\r\n\r\n"));
        let data = &got[head.len()..got.len() - 7];
        assert!(data == &expected[..], "the chunk's data arrived intact");
    }

    /// The stream's task lives as long as the stream: what it holds is memory per idle
    /// stream (docs/benchmarks.md). tokio's task is the future plus 104 bytes (header, stage
    /// tag, trailer) and the server's `TaskTracker` token 8, rounded up to 128 bytes: up to
    /// 144 bytes of future is a task of 256 bytes (a jemalloc size class), 152 one of 384.
    #[tokio::test]
    async fn the_stream_task_stays_small() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stream = TcpStream::connect(addr).await.unwrap();
        let task = Streaming {
            stream,
            source: Source::Body(Body::empty()),
            chunked: true,
        }
        .write();
        let size = std::mem::size_of_val(&task);
        assert!(size <= 144, "the stream's task future is {size} bytes");
    }
}
