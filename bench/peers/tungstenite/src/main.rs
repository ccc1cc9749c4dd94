//! tokio-tungstenite peer of `bench/compare.sh`.
//!
//! ```text
//! tungstenite-peer PORT
//! ```
//!
//! - `/echo` sends every text or binary message back to its sender.
//! - `/fanout` sends every message to every other connection of the route through a
//!   `tokio::sync::broadcast` channel (each receiver skips its own messages). A connection
//!   that falls more than the channel's capacity behind loses messages (`Lagged`), which the
//!   generator reports as incomplete delivery.
//!
//! The plain way to write it: one task per connection, the multi-threaded runtime (one worker
//! when pinned to one core), default tungstenite settings. Listens on 127.0.0.1 only.

use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::{SinkExt, StreamExt};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::broadcast,
};
use tokio_tungstenite::tungstenite::{
    Message,
    handshake::server::{Request, Response},
};

/// Messages a slow receiver may fall behind before it loses some.
const CAPACITY: usize = 4096;

#[tokio::main]
async fn main() {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(9004);
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind 127.0.0.1");
    let (tx, _) = broadcast::channel::<(u64, Message)>(CAPACITY);
    println!("tokio-tungstenite listening on 127.0.0.1:{port}");
    let ids = AtomicU64::new(0);
    let accept = async {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let id = ids.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(connection(stream, id, tx.clone()));
        }
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        () = accept => {}
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

// The handshake callback's error type is tungstenite's (an HTTP response).
#[allow(clippy::result_large_err)]
async fn connection(stream: TcpStream, id: u64, tx: broadcast::Sender<(u64, Message)>) {
    let mut path = String::new();
    let callback = |req: &Request, resp: Response| {
        path = req.uri().path().to_string();
        Ok(resp)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
        return;
    };
    let (mut write, mut read) = ws.split();
    match path.as_str() {
        "/echo" => {
            // `forward` feeds messages while more are ready and flushes when none are.
            let _ = read
                .filter(|m| std::future::ready(matches!(m, Ok(m) if m.is_text() || m.is_binary())))
                .forward(write)
                .await;
        }
        "/fanout" => {
            let mut rx = tx.subscribe();
            loop {
                tokio::select! {
                    m = read.next() => match m {
                        Some(Ok(m)) if m.is_text() || m.is_binary() => {
                            let _ = tx.send((id, m));
                        }
                        Some(Ok(_)) => {}
                        _ => return,
                    },
                    r = rx.recv() => {
                        let mut next = r;
                        // Feed everything already queued, then flush once.
                        loop {
                            match next {
                                Ok((from, m)) => {
                                    if from != id && write.feed(m).await.is_err() {
                                        return;
                                    }
                                }
                                Err(broadcast::error::RecvError::Lagged(_)) => {}
                                Err(broadcast::error::RecvError::Closed) => return,
                            }
                            next = match rx.try_recv() {
                                Ok(v) => Ok(v),
                                Err(broadcast::error::TryRecvError::Lagged(n)) => {
                                    Err(broadcast::error::RecvError::Lagged(n))
                                }
                                Err(_) => break,
                            };
                        }
                        if write.flush().await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
        _ => {
            let _ = write.close().await;
        }
    }
}
