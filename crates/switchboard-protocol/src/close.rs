//! Close codes (RFC 6455 section 7.4) and close frame payloads.

use bytes::Bytes;

/// A close status code. Any `u16` can be held; [`CloseCode::is_valid_on_wire`] says whether a
/// peer may send it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// 1000: normal closure.
    pub const NORMAL: CloseCode = CloseCode(1000);
    /// 1001: going away (server shutdown).
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    /// 1002: protocol error.
    pub const PROTOCOL_ERROR: CloseCode = CloseCode(1002);
    /// 1003: unsupported data.
    pub const UNSUPPORTED_DATA: CloseCode = CloseCode(1003);
    /// 1007: invalid payload data (bad UTF-8).
    pub const INVALID_PAYLOAD: CloseCode = CloseCode(1007);
    /// 1008: policy violation.
    pub const POLICY: CloseCode = CloseCode(1008);
    /// 1009: message too big.
    pub const TOO_BIG: CloseCode = CloseCode(1009);
    /// 1011: internal error.
    pub const INTERNAL: CloseCode = CloseCode(1011);

    /// Whether a peer may put this code in a close frame: 1000-1003, 1007-1011, 3000-4999.
    /// (1004-1006, 1015 and 1012-2999 are reserved or must not be sent.)
    pub fn is_valid_on_wire(self) -> bool {
        todo!()
    }
}

/// The payload of a close frame: a code and a UTF-8 reason of at most 123 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseFrame {
    /// The status code.
    pub code: CloseCode,
    /// The reason, valid UTF-8 (checked when parsed).
    pub reason: Bytes,
}

impl CloseFrame {
    /// A close frame with a code and a reason (truncated at a char boundary to 123 bytes).
    pub fn new(code: CloseCode, reason: &str) -> Self {
        let _ = (code, reason);
        todo!()
    }

    /// The reason as text.
    pub fn reason_str(&self) -> &str {
        todo!()
    }
}
