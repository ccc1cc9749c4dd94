//! One error enum per layer, one variant per violation.

use crate::close::CloseCode;

/// A violation of RFC 6455 / RFC 7692 by the peer, or a configured limit it passed. Each maps
/// to the close code the connection is closed with ([`ProtocolError::close_code`]).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolError {
    /// RSV2/RSV3 set, or RSV1 set without permessage-deflate negotiated (or on a control or continuation frame).
    #[error("reserved bits set: rsv1={rsv1} rsv2={rsv2} rsv3={rsv3}")]
    ReservedBits {
        /// RSV1
        rsv1: bool,
        /// RSV2
        rsv2: bool,
        /// RSV3
        rsv3: bool,
    },
    /// An opcode RFC 6455 reserves (3-7, 11-15).
    #[error("reserved opcode {0:#x}")]
    ReservedOpCode(u8),
    /// A frame from a client without a mask (server role), or a masked frame from a server (client role).
    #[error("frame masking is wrong for this role")]
    BadMasking,
    /// A control frame with more than 125 bytes of payload.
    #[error("control frame of {0} bytes (at most 125)")]
    ControlFrameTooLong(u64),
    /// A fragmented control frame (FIN clear on ping/pong/close).
    #[error("fragmented control frame")]
    FragmentedControlFrame,
    /// A continuation frame with no message in progress.
    #[error("continuation frame without a message in progress")]
    UnexpectedContinuation,
    /// A new text/binary frame while a fragmented message is in progress.
    #[error("new data frame while a fragmented message is in progress")]
    ExpectedContinuation,
    /// A 64-bit length with the most significant bit set, or a non-minimal length encoding where the RFC forbids it.
    #[error("invalid payload length")]
    BadLength,
    /// Invalid UTF-8 in a text message or a close reason.
    #[error("invalid UTF-8 in a text message or close reason")]
    InvalidUtf8,
    /// A close frame with a one-byte payload or a code that must not be sent.
    #[error("invalid close frame payload (code {0:?})")]
    BadClosePayload(Option<u16>),
    /// The message (after decompression) would exceed the configured maximum.
    #[error("message of at least {size} bytes exceeds the maximum of {max}")]
    MessageTooBig {
        /// Bytes seen so far (at least).
        size: u64,
        /// The configured maximum.
        max: usize,
    },
    /// The compressed payload could not be inflated.
    #[error("invalid deflate data: {0}")]
    BadDeflate(String),
}

impl ProtocolError {
    /// The close code to send for this error: 1009 for size, 1007 for UTF-8, 1002 otherwise.
    pub fn close_code(&self) -> CloseCode {
        match self {
            ProtocolError::MessageTooBig { .. } => CloseCode::TOO_BIG,
            ProtocolError::InvalidUtf8 => CloseCode::INVALID_PAYLOAD,
            _ => CloseCode::PROTOCOL_ERROR,
        }
    }
}

/// Why an opening handshake was refused. [`HandshakeError::status`] gives the HTTP status.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeError {
    /// Not a GET request.
    #[error("method must be GET")]
    Method,
    /// `Upgrade: websocket` missing.
    #[error("missing or wrong Upgrade header (expected 'websocket')")]
    NoUpgrade,
    /// `Connection: upgrade` missing.
    #[error("missing or wrong Connection header (expected 'upgrade')")]
    NoConnectionUpgrade,
    /// `Sec-WebSocket-Version` missing or not 13 (answered with 426 and `Sec-WebSocket-Version: 13`).
    #[error("unsupported Sec-WebSocket-Version (expected 13)")]
    Version,
    /// `Sec-WebSocket-Key` missing or not 16 bytes of base64.
    #[error("missing or invalid Sec-WebSocket-Key")]
    Key,
    /// The client offered subprotocols of which none is supported.
    #[error("none of the offered subprotocols is supported")]
    Subprotocol,
    /// A malformed `Sec-WebSocket-Extensions` header.
    #[error("malformed Sec-WebSocket-Extensions: {0}")]
    Extensions(String),
    /// The HTTP request or response could not be parsed.
    #[error("malformed HTTP: {0}")]
    Http(String),
    /// (Client side) the server answered with another status than 101.
    #[error("server refused the upgrade: {status}{}{message}", if message.is_empty() { "" } else { " " })]
    Refused {
        /// The HTTP status (`401`, `429`, …).
        status: u16,
        /// The reason phrase and the start of the body, for people.
        message: String,
    },
    /// (Client side) a 101 whose `Sec-WebSocket-Accept` is not the one for the key sent.
    #[error("wrong Sec-WebSocket-Accept")]
    AcceptKey,
}

impl HandshakeError {
    /// The HTTP status a server answers with: 426 for [`HandshakeError::Version`], 400 otherwise.
    pub fn status(&self) -> u16 {
        match self {
            HandshakeError::Version => 426,
            _ => 400,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes() {
        let too_big = ProtocolError::MessageTooBig {
            size: 70_000,
            max: 65_536,
        };
        assert_eq!(too_big.close_code(), CloseCode::TOO_BIG);
        assert_eq!(
            ProtocolError::InvalidUtf8.close_code(),
            CloseCode::INVALID_PAYLOAD
        );
        for err in [
            ProtocolError::ReservedBits {
                rsv1: false,
                rsv2: true,
                rsv3: false,
            },
            ProtocolError::ReservedOpCode(3),
            ProtocolError::BadMasking,
            ProtocolError::ControlFrameTooLong(126),
            ProtocolError::FragmentedControlFrame,
            ProtocolError::UnexpectedContinuation,
            ProtocolError::ExpectedContinuation,
            ProtocolError::BadLength,
            ProtocolError::BadClosePayload(Some(1005)),
            ProtocolError::BadDeflate("invalid block type".into()),
        ] {
            assert_eq!(err.close_code(), CloseCode::PROTOCOL_ERROR, "{err}");
        }
    }

    #[test]
    fn statuses() {
        assert_eq!(HandshakeError::Version.status(), 426);
        assert_eq!(HandshakeError::Key.status(), 400);
        assert_eq!(HandshakeError::Subprotocol.status(), 400);
    }
}
