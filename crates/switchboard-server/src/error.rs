//! The server library's error type.

/// An error seen by a connection or the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The peer broke RFC 6455 / 7692 or passed a limit; the connection closes with
    /// [`switchboard_protocol::ProtocolError::close_code`].
    #[error("protocol error: {0}")]
    Protocol(#[from] switchboard_protocol::ProtocolError),
    /// The socket failed.
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),
}
