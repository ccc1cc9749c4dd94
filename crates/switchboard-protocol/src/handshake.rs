//! The opening handshake (RFC 6455 section 4): validating a client's upgrade request, the
//! accept key, subprotocol selection per `PROTOCOL.md` 1 and 2.1, and the client's request
//! and response checks.

use crate::error::HandshakeError;

/// The GUID of RFC 6455 section 1.3.
pub const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
pub fn accept_key(key: &[u8]) -> String {
    let _ = key;
    todo!()
}

/// What a valid upgrade request asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeRequest {
    /// The `Sec-WebSocket-Accept` value to answer with.
    pub accept: String,
    /// Every offered subprotocol in order (comma-separated values of every
    /// `Sec-WebSocket-Protocol` header, trimmed).
    pub protocols: Vec<String>,
    /// Every `Sec-WebSocket-Extensions` header value, in order.
    pub extensions: Vec<String>,
}

/// Validates a server-side upgrade request: GET, `Upgrade: websocket`, `Connection` containing
/// `upgrade` (case-insensitive tokens), `Sec-WebSocket-Version: 13`, a key that is 16 bytes
/// of base64.
pub fn validate_request(
    method: &http::Method,
    headers: &http::HeaderMap,
) -> Result<UpgradeRequest, HandshakeError> {
    let _ = (method, headers);
    todo!()
}

/// Picks the subprotocol to answer with. Entries starting with `bearer.` are tokens, never
/// selected nor counted (PROTOCOL.md 2.1). No counted offers: `Ok(None)` (serve the default
/// version). Counted offers of which none is in `supported`: [`HandshakeError::Subprotocol`].
pub fn select_subprotocol<'a>(
    offered: &[String],
    supported: &[&'a str],
) -> Result<Option<&'a str>, HandshakeError> {
    let _ = (offered, supported);
    todo!()
}

/// The `bearer.<jwt>` entry among offered subprotocols, if any (PROTOCOL.md 2.1).
pub fn bearer_token(offered: &[String]) -> Option<&str> {
    offered.iter().find_map(|p| p.strip_prefix("bearer."))
}

/// Parses a raw HTTP/1.1 request head (used for the fuzz target and by raw-socket servers).
/// `Ok(None)` when the head is incomplete; otherwise the request and the head's length.
pub fn parse_request(buf: &[u8]) -> Result<Option<(http::Request<()>, usize)>, HandshakeError> {
    let _ = buf;
    todo!()
}

/// A client's handshake in progress: the request bytes to send and what to check in the answer.
#[derive(Debug, Clone)]
pub struct ClientHandshake {
    /// The request head to write to the socket.
    pub request: Vec<u8>,
    key: String,
}

/// What the server agreed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAccepted {
    /// The selected subprotocol.
    pub protocol: Option<String>,
    /// The agreed permessage-deflate parameters.
    pub deflate: Option<crate::deflate::DeflateParams>,
}

impl ClientHandshake {
    /// Builds a request for `host` (with port) and `path_and_query`, offering `protocols`,
    /// permessage-deflate when `deflate` is set, and extra headers (e.g. Authorization).
    pub fn new(
        host: &str,
        path_and_query: &str,
        protocols: &[&str],
        deflate: bool,
        extra_headers: &[(&str, &str)],
    ) -> Self {
        let _ = (host, path_and_query, protocols, deflate, extra_headers);
        let _ = &Self {
            request: Vec::new(),
            key: String::new(),
        }
        .key;
        todo!()
    }

    /// Parses the server's response head from `buf`. `Ok(None)`: incomplete. Otherwise what was
    /// agreed and the head's length; a non-101 status is [`HandshakeError::Refused`] with the
    /// status and body start, a wrong accept key or extension is an error.
    pub fn parse_response(
        &self,
        buf: &[u8],
    ) -> Result<Option<(ClientAccepted, usize)>, HandshakeError> {
        let _ = buf;
        todo!()
    }
}
