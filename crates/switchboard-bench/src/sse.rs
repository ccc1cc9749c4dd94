//! A Server-Sent Events subscriber (`bench fanout --transport sse`): one `GET /sse?room=…`
//! stream over plain HTTP/1.1, its chunked body decoded and split into events.

use std::{ops::Range, time::Duration};

use memchr::memmem;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::{conn::ConnError, target::Target};

/// An open event stream.
#[derive(Debug)]
pub(crate) struct SseConn {
    stream: TcpStream,
    /// Bytes read and not yet dechunked.
    raw: Vec<u8>,
    /// The decoded body; events are taken from its front.
    body: Vec<u8>,
    /// Where the next event starts in `body`.
    start: usize,
}

impl SseConn {
    /// Opens `path` (with its query) on `target`, with an `Authorization` value when given.
    pub(crate) async fn open(
        target: &Target,
        path: &str,
        authorization: Option<&str>,
    ) -> Result<SseConn, ConnError> {
        let connect = async {
            let mut stream = TcpStream::connect(target.addr).await?;
            let _ = stream.set_nodelay(true);
            let mut req = format!(
                "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n",
                target.host
            );
            if let Some(a) = authorization {
                req.push_str(&format!("Authorization: {a}\r\n"));
            }
            req.push_str("\r\n");
            stream.write_all(req.as_bytes()).await?;
            Ok::<_, std::io::Error>(stream)
        };
        let stream = tokio::time::timeout(Duration::from_secs(15), connect)
            .await
            .map_err(|_| ConnError::Timeout("connecting the event stream"))?
            .map_err(ConnError::Io)?;
        let mut conn = SseConn {
            stream,
            raw: Vec::with_capacity(16 * 1024),
            body: Vec::new(),
            start: 0,
        };
        let head_end = loop {
            if let Some(i) = memmem::find(&conn.raw, b"\r\n\r\n") {
                break i;
            }
            if conn.raw.len() > 64 * 1024 {
                return Err(ConnError::Handshake("response head too long".into()));
            }
            conn.fill().await?;
        };
        let head = String::from_utf8_lossy(&conn.raw[..head_end]).into_owned();
        if !head.starts_with("HTTP/1.1 200") {
            let line = head.lines().next().unwrap_or("").to_string();
            return Err(ConnError::Handshake(format!(
                "event stream refused: {line}"
            )));
        }
        conn.raw.drain(..head_end + 4);
        Ok(conn)
    }

    async fn fill(&mut self) -> Result<usize, ConnError> {
        if self.raw.capacity() - self.raw.len() < 8 * 1024 {
            self.raw.reserve(16 * 1024);
        }
        match self.stream.read_buf(&mut self.raw).await {
            Ok(0) => Err(ConnError::Eof),
            Ok(n) => Ok(n),
            Err(e) => Err(ConnError::Io(e)),
        }
    }

    /// Reads what arrived and decodes the complete chunks of it.
    pub(crate) async fn read_some(&mut self) -> Result<usize, ConnError> {
        if self.start > 0 {
            self.body.drain(..self.start);
            self.start = 0;
        }
        let n = self.fill().await?;
        let mut at = 0;
        loop {
            let rest = &self.raw[at..];
            let Some(line) = memmem::find(rest, b"\r\n") else {
                break;
            };
            let size = std::str::from_utf8(&rest[..line])
                .ok()
                .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok())
                .ok_or(ConnError::Protocol("bad chunk size"))?;
            if rest.len() < line + 2 + size + 2 {
                break;
            }
            if size == 0 {
                return Err(ConnError::Eof);
            }
            self.body
                .extend_from_slice(&rest[line + 2..line + 2 + size]);
            at += line + 2 + size + 2;
        }
        self.raw.drain(..at);
        Ok(n)
    }

    /// The next complete event (its lines, without the blank line that ends it).
    pub(crate) fn next_event(&mut self) -> Option<Range<usize>> {
        let from = self.start;
        let end = from + memmem::find(&self.body[from..], b"\n\n")?;
        self.start = end + 2;
        Some(from..end)
    }

    /// The decoded body (index it with [`SseConn::next_event`]'s ranges).
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.body
    }
}
