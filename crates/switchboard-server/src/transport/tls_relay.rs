//! A TLS connection's relay: carries bytes between the client's rustls stream and the relay's
//! end of a Unix socket pair, whose other end is served as a TCP connection is
//! (`server::serve_tls`).
//!
//! An idle relay holds no buffer of its own: each wake-up reads into a buffer on the stack
//! and writes it on at once; only bytes the other side could not take yet are kept (on the
//! heap, until written). What an idle TLS connection costs beyond a TCP one is then rustls'
//! session (with its 4 KiB read buffer), the socket pair and this task.

use std::{
    future::{Future, poll_fn},
    io,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpStream, UnixStream},
};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

/// Bytes read per step (a TLS record carries at most 16 KiB).
const CHUNK: usize = 8 * 1024;

/// How long the relay waits for the client once the server's side has closed (close_notify
/// and FIN sent) before it drops the connection.
const LINGER: Duration = Duration::from_secs(5);

/// One direction: bytes read and not yet taken by the other side, and whether it ended.
#[derive(Default)]
struct Direction {
    pending: Vec<u8>,
    written: usize,
    /// The reading side ended: the end is passed on as a shutdown of the writing side.
    eof: bool,
    /// The shutdown was passed on: this direction is done.
    done: bool,
}

impl Direction {
    /// Moves bytes from `from` to `to` until `from` has nothing more for now (`Pending`, with
    /// wakers registered on both), or the direction ended (`Ready(Ok)`), or failed.
    fn pump<R, W>(&mut self, cx: &mut Context<'_>, from: &mut R, to: &mut W) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            while self.written < self.pending.len() {
                let n = ready!(Pin::new(&mut *to).poll_write(cx, &self.pending[self.written..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.written += n;
            }
            if !self.pending.is_empty() {
                // Written: the buffer goes, an idle relay keeps none.
                self.pending = Vec::new();
                self.written = 0;
            }
            if self.eof {
                ready!(Pin::new(&mut *to).poll_flush(cx))?;
                ready!(Pin::new(&mut *to).poll_shutdown(cx))?;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            let mut buf = [0u8; CHUNK];
            let mut read = ReadBuf::new(&mut buf);
            match Pin::new(&mut *from).poll_read(cx, &mut read) {
                Poll::Pending => {
                    // Nothing more to read: what the writer buffered (rustls' records) goes out.
                    ready!(Pin::new(&mut *to).poll_flush(cx))?;
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            let got = read.filled();
            if got.is_empty() {
                self.eof = true;
                continue;
            }
            let mut at = 0;
            while at < got.len() {
                match Pin::new(&mut *to).poll_write(cx, &got[at..]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => at += n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        self.pending = got[at..].to_vec();
                        return Poll::Pending;
                    }
                }
            }
        }
    }
}

/// Relays until both directions have ended (each side's end passed on as a shutdown:
/// close_notify and FIN to the client, EOF to the server's side), until either fails, or
/// [`LINGER`] after the server's side ended (at once when the server is shutting down).
pub(crate) async fn run(
    mut tls: TlsStream<TcpStream>,
    mut local: UnixStream,
    shutdown: CancellationToken,
) {
    let mut up = Direction::default();
    let mut down = Direction::default();
    let mut linger: Option<Pin<Box<tokio::time::Sleep>>> = None;
    let mut cancelled = std::pin::pin!(shutdown.cancelled());
    let ended = poll_fn(|cx| {
        let client = up.pump(cx, &mut tls, &mut local)?;
        let server = down.pump(cx, &mut local, &mut tls)?;
        if client.is_ready() && server.is_ready() {
            return Poll::Ready(Ok::<(), io::Error>(()));
        }
        if down.done {
            if cancelled.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(()));
            }
            let sleep = linger.get_or_insert_with(|| Box::pin(tokio::time::sleep(LINGER)));
            if sleep.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(()));
            }
        }
        Poll::Pending
    })
    .await;
    if let Err(e) = ended {
        tracing::debug!(error = %e, "tls relay ended");
    }
}
