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
        matches!(self.0, 1000..=1003 | 1007..=1011 | 3000..=4999)
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
        CloseFrame {
            code,
            reason: Bytes::copy_from_slice(truncate_reason(reason.as_bytes())),
        }
    }

    /// The reason as text.
    pub fn reason_str(&self) -> &str {
        // `reason` is a public field, so it may have been set to anything: show nothing then.
        std::str::from_utf8(&self.reason).unwrap_or_default()
    }

    /// The close frame payload: the code in network byte order, then the reason.
    pub(crate) fn encode(&self, out: &mut [u8; 125]) -> usize {
        let reason = truncate_reason(&self.reason);
        out[..2].copy_from_slice(&self.code.0.to_be_bytes());
        out[2..2 + reason.len()].copy_from_slice(reason);
        2 + reason.len()
    }
}

/// A close reason cut to the 123 bytes a control frame leaves for it, at a character boundary.
fn truncate_reason(reason: &[u8]) -> &[u8] {
    const MAX: usize = 123;
    if reason.len() <= MAX {
        return reason;
    }
    // Back up over UTF-8 continuation bytes (0b10xx_xxxx) to the start of a character.
    let mut end = MAX;
    while end > 0 && reason[end] & 0xC0 == 0x80 {
        end -= 1;
    }
    &reason[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_valid_on_wire() {
        for code in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
        ] {
            assert!(CloseCode(code).is_valid_on_wire(), "{code}");
        }
        for code in [
            0, 999, 1004, 1005, 1006, 1012, 1013, 1014, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            assert!(!CloseCode(code).is_valid_on_wire(), "{code}");
        }
    }

    #[test]
    fn reason_is_truncated_at_a_char_boundary() {
        let frame = CloseFrame::new(CloseCode::NORMAL, "bye");
        assert_eq!(frame.reason_str(), "bye");
        // 61 two-byte characters = 122 bytes, plus one more would be 124.
        let long = "é".repeat(62);
        let frame = CloseFrame::new(CloseCode::GOING_AWAY, &long);
        assert_eq!(frame.reason.len(), 122);
        assert_eq!(frame.reason_str(), "é".repeat(61));
        let frame = CloseFrame::new(CloseCode::NORMAL, &"x".repeat(200));
        assert_eq!(frame.reason.len(), 123);
        let mut payload = [0; 125];
        assert_eq!(frame.encode(&mut payload), 125);
        assert_eq!(payload[..2], [0x03, 0xE8]);
    }
}
