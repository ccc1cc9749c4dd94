//! The client's error type.

use switchboard_protocol::CloseFrame;

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
    /// The connection closed (with the server's close frame, if any).
    #[error("connection closed{}", .0.as_ref().map(|f| format!(" with {} {}", f.code.0, f.reason_str())).unwrap_or_default())]
    Closed(Option<CloseFrame>),
}
