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

use std::{io::IoSlice, net::SocketAddr, time::Duration};

use axum::{Router, body::Body};
use bytes::{Bytes, BytesMut};
use http::{Request, header};
use http_body_util::BodyExt;
use hyper::body::Body as _;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_util::sync::CancellationToken;
use tower::Service;

use crate::{limits::HandshakeTicket, route::PeerAddr, transport::sse::ShutdownToken};

/// How long a client may take to send its request head (hyper's `header_read_timeout` for
/// every other request).
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Most headers a request may have, hyper's limit for every other request (beyond: 431).
const MAX_HEADERS: usize = 100;

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
    n >= want
        && &buf[..4] == b"GET "
        && &buf[4..4 + path.len()] == path.as_bytes()
        && matches!(buf[want - 1], b'?' | b' ')
}

/// Serves one request on `stream` (see the module doc). When the response has a body to
/// write (a stream), returns it unwritten: the caller spawns [`Streaming::write`] as a task of
/// its own. The task that accepted the connection is sized for hyper's connection state too
/// (well over 1 KiB), and a stream lives for hours; its own task is sized for writing the body
/// alone (test `the_stream_task_stays_small`).
pub(crate) async fn serve(
    mut stream: TcpStream,
    peer: SocketAddr,
    mut router: Router,
    shutdown: CancellationToken,
    ticket: Option<HandshakeTicket>,
    max_request_head: usize,
) -> Option<Streaming> {
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
    let http10 = req.version() == http::Version::HTTP_10;
    let resp = match router.call(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    // The head was read: the stream is counted by its route from here on.
    drop(ticket);
    let (parts, body) = resp.into_parts();
    let length = body.size_hint().exact();
    let chunked = length.is_none() && !http10;
    let head = response_head(parts, length, chunked, http10);
    if let Err(e) = stream.write_all(&head).await {
        tracing::debug!(error = %e, %peer, "sse connection ended");
        return None;
    }
    Some(Streaming {
        stream,
        body,
        chunked,
    })
}

/// A response whose head was written and whose body is still to be written.
pub(crate) struct Streaming {
    stream: TcpStream,
    body: Body,
    chunked: bool,
}

impl Streaming {
    /// Writes the body, then closes the connection.
    pub(crate) fn write(self) -> impl Future<Output = ()> + Send + 'static {
        // Not an `async` block around `write_body`: the block would keep its own copy of
        // the socket and body beside the future's.
        write_body(self.stream, self.body, self.chunked)
    }
}

/// Reads and parses a request head; `Err(Some(status))` is answered, `Err(None)` just closes.
async fn read_head(
    stream: &mut TcpStream,
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
async fn write_status_only(
    stream: &mut TcpStream,
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

/// Writes the body: as chunks when `chunked` (else as it is, until the close), each frame
/// written as it comes. Ends when the body ends, or when the peer closes or sends anything (a
/// stream's client only listens).
async fn write_body(mut stream: TcpStream, mut body: Body, chunked: bool) {
    let (mut read, mut write) = stream.split();
    // One byte tells that the client sent something (see below).
    let mut probe = [0u8; 1];
    let ended = loop {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            // A listening client sends nothing: EOF, an error or bytes all end the stream.
            _ = read.read(&mut probe) => break Ok(false),
        };
        let mut batch = match frame {
            None => break Ok(true),
            Some(Err(_)) => break Ok(false),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    let mut batch = Vec::with_capacity(MAX_BATCH);
                    batch.push(data);
                    batch
                }
                Err(_) => continue,
            },
        };
        // What else the body has ready goes out in the same chunk and the same write: a
        // stream's queued events are shared bytes, one frame each.
        let mut end = false;
        while batch.len() < MAX_BATCH {
            let next = std::future::poll_fn(|cx| {
                std::task::Poll::Ready(std::pin::Pin::new(&mut body).poll_frame(cx))
            })
            .await;
            match next {
                std::task::Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        batch.push(data);
                    }
                }
                std::task::Poll::Ready(_) => {
                    end = true;
                    break;
                }
                std::task::Poll::Pending => break,
            }
        }
        if let Err(e) = write_chunk(&mut write, &batch, chunked).await {
            break Err(e);
        }
        if end {
            break Ok(true);
        }
    };
    // The last chunk tells the client the stream ended as the server meant it to.
    let last = match ended {
        Ok(true) if chunked => write.write_all(b"0\r\n\r\n").await,
        Ok(_) => Ok(()),
        Err(e) => Err(e),
    };
    if let Err(e) = last.and(write.shutdown().await) {
        tracing::debug!(error = %e, "sse connection ended");
    }
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

/// Writes `frames` as one chunk (or as they are, when not `chunked`) with vectored writes.
async fn write_chunk(
    write: &mut (impl tokio::io::AsyncWrite + Unpin),
    frames: &[Bytes],
    chunked: bool,
) -> std::io::Result<()> {
    let len: usize = frames.iter().map(Bytes::len).sum();
    if len == 0 {
        return Ok(());
    }
    let mut size = [0u8; 20];
    let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(frames.len() + 2);
    if chunked {
        slices.push(IoSlice::new(chunk_size(&mut size, len)));
    }
    slices.extend(frames.iter().map(|f| IoSlice::new(f)));
    if chunked {
        slices.push(IoSlice::new(b"\r\n"));
    }
    let mut slices = &mut slices[..];
    while !slices.is_empty() {
        let n = write.write_vectored(slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}

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

    /// The stream's task lives as long as the stream: what it holds is memory per idle
    /// stream (docs/benchmarks.md). tokio's task is the future plus 104 bytes (header, stage
    /// tag, trailer) and the server's `TaskTracker` token 8, rounded up to 128 bytes: up to
    /// 400 bytes of future is a task of 512 bytes (a jemalloc size class), 408 one of 640.
    #[tokio::test]
    async fn the_stream_task_stays_small() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stream = TcpStream::connect(addr).await.unwrap();
        let task = Streaming {
            stream,
            body: Body::empty(),
            chunked: true,
        }
        .write();
        let size = std::mem::size_of_val(&task);
        assert!(size <= 400, "the stream's task future is {size} bytes");
    }
}
