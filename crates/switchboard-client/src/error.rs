//! The client's error type.

use switchboard_protocol::{CloseFrame, Disconnect, HandshakeError, wire::ErrorCode};

/// What went wrong talking to a server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The URL is not usable.
    #[error("bad URL: {0}")]
    Url(String),
    /// The socket failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The server refused or botched the handshake.
    #[error("handshake: {0}")]
    Handshake(#[from] switchboard_protocol::HandshakeError),
    /// The server broke the WebSocket protocol.
    #[error("protocol: {0}")]
    Protocol(#[from] switchboard_protocol::ProtocolError),
    /// The connection closed: with the server's close (its code, its reason as sent and
    /// whether the contract lets a client reconnect after it, see [`Disconnect::from_code`]),
    /// or without a close frame (`None`). For the protocol client ([`crate::Client`]) this
    /// is final: it does not reconnect any more.
    #[error("connection closed{}", .0.as_ref().map(|d| format!(" with {d}")).unwrap_or_default())]
    Closed(Option<Disconnect>),
    /// The server answered a command with an `error` (docs/protocol.md section 7).
    #[error("server error {code}: {message}")]
    Server {
        /// The error code as sent (`"forbidden"`, `"not_subscribed"`, …); see
        /// [`Error::code`] for the typed code.
        code: String,
        /// The server's message for people.
        message: String,
        /// For `rate_limited`: how long to wait before sending more commands.
        retry_after_ms: Option<u64>,
    },
    /// No answer within the command timeout. The command may still have been carried out.
    #[error("no answer from the server within {0:?}")]
    Timeout(std::time::Duration),
    /// The connection was lost while the command was in flight: it may or may not have been
    /// carried out. The client reconnects by itself; retry (a `publish` with an
    /// `idempotency_key` can be retried safely).
    #[error("the connection was lost before the answer arrived")]
    ConnectionLost,
    /// The client refused the call before sending anything (e.g. subscribing twice to a room).
    #[error("{0}")]
    Usage(String),
    /// A value could not be encoded, or a reply could not be read.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// The server sent something this client did not expect (e.g. not `welcome` first).
    #[error("unexpected from the server: {0}")]
    Unexpected(String),
    /// The token provider failed.
    #[error("token provider: {0}")]
    Token(String),
}

impl Error {
    /// The typed error code of an [`Error::Server`], when this version knows it.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Server { code, .. } => ErrorCode::from_wire(code),
            _ => None,
        }
    }

    /// The HTTP status of a refused upgrade (`401`, `429`, …), when that is what happened.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            Error::Handshake(HandshakeError::Refused { status, .. }) => Some(*status),
            _ => None,
        }
    }

    /// The server's close of an [`Error::Closed`] with a close frame.
    pub fn disconnect(&self) -> Option<&Disconnect> {
        match self {
            Error::Closed(disconnect) => disconnect.as_ref(),
            _ => None,
        }
    }

    /// The close code of an [`Error::Closed`] with a close frame.
    pub fn close_code(&self) -> Option<u16> {
        self.disconnect().map(|d| d.code.0)
    }
}

/// The server's close as received: the table's row for its code (whether to reconnect comes
/// from there, [`Disconnect::from_code`]) with the reason the server actually sent.
pub(crate) fn received(frame: &CloseFrame) -> Disconnect {
    Disconnect::from_code(frame.code.0).with_reason(frame.reason_str().to_owned())
}
