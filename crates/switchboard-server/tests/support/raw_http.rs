//! Raw HTTP/1.x over a TCP socket for tests that must see exactly what the server answers
//! (status, headers, JSON body of a refusal) or send what a client library would not (an
//! HTTP/1.0 upgrade, a spoofed `X-Forwarded-For`, a chosen source address). Included with
//! `#[path]` by the tests that need it.

#![allow(dead_code, unreachable_pub)]

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

const T: Duration = Duration::from_secs(10);

/// A TCP connection to `addr` from the loopback address `127.0.0.<from>` (each test can have
/// IPs of its own for the per-IP limits).
pub async fn tcp(addr: SocketAddr, from: u8) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(IpAddr::from([127, 0, 0, from]), 0))
        .unwrap();
    socket.connect(addr).await.unwrap()
}

/// An answer's status, head and body (read when it has a `content-length`).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Answer {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then_some(v.trim())
        })
    }
}

/// Reads an answer's head, and its body when it has a `content-length`; byte by byte, so
/// that what follows a 101 stays in the socket.
pub async fn read_answer(stream: &mut TcpStream) -> Answer {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    tokio::time::timeout(T, async {
        while !buf.ends_with(b"\r\n\r\n") {
            let n = stream.read(&mut byte).await.unwrap();
            assert!(
                n > 0,
                "the connection ended after {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.push(byte[0]);
        }
    })
    .await
    .expect("an answer in time");
    let head = String::from_utf8(buf).unwrap();
    let status = head[9..12].parse().unwrap();
    let mut answer = Answer {
        status,
        head,
        body: String::new(),
    };
    if let Some(len) = answer.header("content-length") {
        let mut body = vec![0u8; len.parse().unwrap()];
        tokio::time::timeout(T, stream.read_exact(&mut body))
            .await
            .unwrap()
            .unwrap();
        answer.body = String::from_utf8(body).unwrap();
    }
    answer
}

/// Sends a WebSocket upgrade request for `target` (`HTTP/1.1` unless `version` says
/// otherwise) with `headers` besides the upgrade's own, from `127.0.0.<from>`; returns the
/// answer and the connection (open when the answer is a 101).
pub async fn upgrade(
    addr: SocketAddr,
    from: u8,
    version: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> (Answer, TcpStream) {
    let mut s = tcp(addr, from).await;
    let mut request = format!(
        "GET {target} {version}\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
         sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n"
    );
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        request.push_str(&format!("host: {addr}\r\n"));
    }
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    s.write_all(request.as_bytes()).await.unwrap();
    let answer = read_answer(&mut s).await;
    (answer, s)
}

/// A plain `GET` (e.g. an SSE stream) with `headers`; the answer's head (and body when it
/// has a length) and the connection.
pub async fn get(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> (Answer, TcpStream) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut request = format!("GET {target} HTTP/1.1\r\nhost: {addr}\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    s.write_all(request.as_bytes()).await.unwrap();
    let answer = read_answer(&mut s).await;
    (answer, s)
}
