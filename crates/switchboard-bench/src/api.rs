//! A publisher over the server API (`bench fanout --mode api`): one keep-alive HTTP/1.1
//! connection sending `POST /api/publish` requests, several in flight when asked (pipelined,
//! which HTTP/1.1 servers answer in order), and reading their responses.

use std::{ops::Range, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::{conn::ConnError, target::Target};

/// The path of the publish call.
pub(crate) const PUBLISH_PATH: &str = "/api/publish";

/// Longest response head accepted (the server's are a few hundred bytes).
const MAX_HEAD: usize = 16 * 1024;

/// One answered request.
#[derive(Debug)]
pub(crate) struct Answer {
    /// The HTTP status.
    pub(crate) status: u16,
    /// Where its body lies in [`ApiConn::bytes`].
    pub(crate) body: Range<usize>,
}

/// An open keep-alive connection to the server API.
#[derive(Debug)]
pub(crate) struct ApiConn {
    stream: TcpStream,
    /// Every request's head up to the `Content-Length` value.
    head: Vec<u8>,
    /// Requests queued and not yet written.
    out: Vec<u8>,
    /// A request body while it is built (its length goes in the head).
    body: Vec<u8>,
    /// Bytes read; responses are taken from its front.
    input: Vec<u8>,
    start: usize,
}

impl ApiConn {
    /// Connects to `target`'s address; requests go to `path` with `X-API-Key: key`.
    pub(crate) async fn open(target: &Target, path: &str, key: &str) -> Result<ApiConn, ConnError> {
        let stream = tokio::time::timeout(Duration::from_secs(15), TcpStream::connect(target.addr))
            .await
            .map_err(|_| ConnError::Timeout("connecting to the server API"))?
            .map_err(ConnError::Io)?;
        let _ = stream.set_nodelay(true);
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nX-API-Key: {key}\r\n\
             Content-Type: application/json\r\nContent-Length: ",
            target.host
        )
        .into_bytes();
        Ok(ApiConn {
            stream,
            head,
            out: Vec::with_capacity(4096),
            body: Vec::with_capacity(1024),
            input: Vec::with_capacity(8192),
            start: 0,
        })
    }

    /// Queues one request whose JSON body `put` writes.
    pub(crate) fn queue(&mut self, put: impl FnOnce(&mut Vec<u8>)) {
        self.body.clear();
        put(&mut self.body);
        self.out.extend_from_slice(&self.head);
        self.out
            .extend_from_slice(self.body.len().to_string().as_bytes());
        self.out.extend_from_slice(b"\r\n\r\n");
        self.out.extend_from_slice(&self.body);
    }

    /// Bytes queued and not yet written.
    pub(crate) fn pending_len(&self) -> usize {
        self.out.len()
    }

    /// Writes every queued request.
    pub(crate) async fn flush(&mut self) -> Result<(), ConnError> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Reads what arrived.
    pub(crate) async fn read_some(&mut self) -> Result<usize, ConnError> {
        if self.start > 0 {
            self.input.drain(..self.start);
            self.start = 0;
        }
        if self.input.capacity() - self.input.len() < 4096 {
            self.input.reserve(8192);
        }
        match self.stream.read_buf(&mut self.input).await {
            Ok(0) => Err(ConnError::Eof),
            Ok(n) => Ok(n),
            Err(e) => Err(ConnError::Io(e)),
        }
    }

    /// The next complete response, if one arrived whole.
    pub(crate) fn next_answer(&mut self) -> Result<Option<Answer>, ConnError> {
        let rest = &self.input[self.start..];
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        let head_len = match response.parse(rest) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if rest.len() > MAX_HEAD => {
                return Err(ConnError::Protocol("response head too long"));
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err(ConnError::Protocol("malformed HTTP response")),
        };
        let status = response.code.unwrap_or(0);
        let length = response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| {
                std::str::from_utf8(h.value)
                    .ok()?
                    .trim()
                    .parse::<usize>()
                    .ok()
            })
            .ok_or(ConnError::Protocol("a response without Content-Length"))?;
        if rest.len() < head_len + length {
            return Ok(None);
        }
        let from = self.start + head_len;
        self.start = from + length;
        Ok(Some(Answer {
            status,
            body: from..from + length,
        }))
    }

    /// What was read (index it with [`Answer::body`]).
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.input
    }
}
