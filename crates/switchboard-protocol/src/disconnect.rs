//! Why a connection ends: every close code of the contract (docs/protocol.md section 7.2)
//! in one table, with the reason the server sends and whether a client reconnects.
//!
//! The server closes connections only with a [`Disconnect`]; the Rust client decides whether
//! to reconnect with [`Disconnect::from_code`]; `docs/schema/close-codes.json` is this table
//! written out for other clients (a test keeps the two equal).

use std::borrow::Cow;

use crate::close::{CloseCode, CloseFrame};

/// A close the server sends: its code, its reason and whether the client should reconnect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    /// The close code.
    pub code: CloseCode,
    /// The reason sent in the close frame (at most 123 bytes are sent).
    pub reason: Cow<'static, str>,
    /// Whether a client reconnects (with backoff) after this close.
    pub reconnect: bool,
}

/// One row of the close-code table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseCodeEntry {
    /// A stable name for the code (`slow_consumer`), used by SDKs.
    pub name: &'static str,
    /// What the server sends.
    pub disconnect: Disconnect,
    /// What it means, for people.
    pub meaning: &'static str,
}

const fn entry(
    name: &'static str,
    code: u16,
    reason: &'static str,
    reconnect: bool,
    meaning: &'static str,
) -> CloseCodeEntry {
    CloseCodeEntry {
        name,
        disconnect: Disconnect::fixed(code, reason, reconnect),
        meaning,
    }
}

/// Every close code of the contract, in code order.
pub const CLOSE_CODES: &[CloseCodeEntry] = &[
    entry("normal", 1000, "", false, "normal closure"),
    entry(
        "going_away",
        1001,
        "server shutting down",
        true,
        "the server is going away (shutdown, restart)",
    ),
    entry(
        "protocol_error",
        1002,
        "protocol error",
        false,
        "the peer broke RFC 6455",
    ),
    entry(
        "unsupported_data",
        1003,
        "unsupported data",
        false,
        "a message of a kind the route does not accept",
    ),
    entry(
        "invalid_payload",
        1007,
        "invalid UTF-8",
        false,
        "a text message or close reason that is not valid UTF-8",
    ),
    entry(
        "policy_violation",
        1008,
        "policy violation",
        false,
        "the peer broke a rule of the server",
    ),
    entry(
        "message_too_big",
        1009,
        "message too big",
        false,
        "a message larger than max_message_size",
    ),
    entry(
        "internal_error",
        1011,
        "internal error",
        true,
        "the server failed; reconnecting may help",
    ),
    entry(
        "unauthorized",
        4001,
        "unauthorized",
        false,
        "first-message authentication failed or timed out",
    ),
    entry(
        "unsupported_protocol",
        4002,
        "unsupported protocol version",
        false,
        "the client speaks a protocol version the server does not",
    ),
    entry(
        "disconnected",
        4003,
        "disconnected",
        false,
        "disconnected by the server; do not reconnect",
    ),
    entry(
        "slow_consumer",
        4500,
        "slow consumer",
        true,
        "the connection's outbound queue passed its byte bound",
    ),
    entry(
        "token_expired",
        4501,
        "token expired",
        true,
        "the token expired without refresh; reconnect with a fresh token",
    ),
    entry(
        "rate_limited",
        4502,
        "rate limit exceeded",
        true,
        "the message rate limit was exceeded for too long; reconnect after backoff",
    ),
    entry(
        "reconnect",
        4503,
        "disconnected, reconnect",
        true,
        "disconnected by the server; reconnecting is allowed",
    ),
    entry(
        "idle_timeout",
        4504,
        "idle timeout",
        true,
        "nothing was received within idle_timeout",
    ),
];

impl Disconnect {
    const fn fixed(code: u16, reason: &'static str, reconnect: bool) -> Disconnect {
        Disconnect {
            code: CloseCode(code),
            reason: Cow::Borrowed(reason),
            reconnect,
        }
    }

    /// 1000: normal closure.
    pub const NORMAL: Disconnect = Disconnect::fixed(1000, "", false);
    /// 1001: the server is shutting down.
    pub const GOING_AWAY: Disconnect = Disconnect::fixed(1001, "server shutting down", true);
    /// 1011: the server failed.
    pub const INTERNAL: Disconnect = Disconnect::fixed(1011, "internal error", true);
    /// 4001: authentication failed.
    pub const UNAUTHORIZED: Disconnect = Disconnect::fixed(4001, "unauthorized", false);
    /// 4003: disconnected by the server, do not reconnect.
    pub const DISCONNECTED: Disconnect = Disconnect::fixed(4003, "disconnected", false);
    /// 4500: slow consumer.
    pub const SLOW_CONSUMER: Disconnect = Disconnect::fixed(4500, "slow consumer", true);
    /// 4501: token expired.
    pub const TOKEN_EXPIRED: Disconnect = Disconnect::fixed(4501, "token expired", true);
    /// 4502: message rate exceeded for too long.
    pub const RATE_LIMITED: Disconnect = Disconnect::fixed(4502, "rate limit exceeded", true);
    /// 4503: disconnected by the server, reconnect allowed.
    pub const RECONNECT: Disconnect = Disconnect::fixed(4503, "disconnected, reconnect", true);
    /// 4504: idle timeout.
    pub const IDLE_TIMEOUT: Disconnect = Disconnect::fixed(4504, "idle timeout", true);

    /// A close with `code` and `reason` that the table does not hold (an application's own
    /// code); whether a client reconnects follows the rule of [`Disconnect::reconnects`].
    pub fn custom(code: u16, reason: impl Into<Cow<'static, str>>) -> Disconnect {
        Disconnect {
            code: CloseCode(code),
            reason: reason.into(),
            reconnect: Disconnect::reconnects(code),
        }
    }

    /// The same close with another reason.
    pub fn with_reason(mut self, reason: impl Into<Cow<'static, str>>) -> Disconnect {
        self.reason = reason.into();
        self
    }

    /// The table's entry for `code`, or a [`Disconnect::custom`] one with an empty reason.
    pub fn from_code(code: u16) -> Disconnect {
        match CLOSE_CODES.iter().find(|e| e.disconnect.code.0 == code) {
            Some(e) => e.disconnect.clone(),
            None => Disconnect::custom(code, ""),
        }
    }

    /// The client's rule for any code: 1000, 1002, 1003, 1007, 1008, 1009 and 4000–4499 are
    /// terminal; everything else (1001, 1006, 1011, 4500–4999, ...) reconnects with backoff.
    pub const fn reconnects(code: u16) -> bool {
        !matches!(code, 1000 | 1002 | 1003 | 1007 | 1008 | 1009 | 4000..=4499)
    }

    /// The close frame that carries it.
    pub fn close_frame(&self) -> CloseFrame {
        CloseFrame::new(self.code, &self.reason)
    }

    /// The table's name for the code, if it has one.
    pub fn name(&self) -> Option<&'static str> {
        CLOSE_CODES
            .iter()
            .find(|e| e.disconnect.code == self.code)
            .map(|e| e.name)
    }
}

impl std::fmt::Display for Disconnect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.reason.is_empty() {
            write!(f, "{}", self.code.0)
        } else {
            write!(f, "{} ({})", self.code.0, self.reason)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_follows_the_client_rule_and_is_in_code_order() {
        for e in CLOSE_CODES {
            let d = &e.disconnect;
            assert_eq!(d.reconnect, Disconnect::reconnects(d.code.0), "{}", e.name);
            assert!(d.code.is_valid_on_wire(), "{}", e.name);
            assert_eq!(Disconnect::from_code(d.code.0), *d);
            assert_eq!(d.name(), Some(e.name));
        }
        assert!(
            CLOSE_CODES
                .windows(2)
                .all(|w| w[0].disconnect.code.0 < w[1].disconnect.code.0)
        );
        let names: std::collections::HashSet<_> = CLOSE_CODES.iter().map(|e| e.name).collect();
        assert_eq!(names.len(), CLOSE_CODES.len());
    }

    #[test]
    fn the_named_constants_are_their_codes() {
        let pairs = [
            (Disconnect::NORMAL, 1000),
            (Disconnect::GOING_AWAY, 1001),
            (Disconnect::INTERNAL, 1011),
            (Disconnect::UNAUTHORIZED, 4001),
            (Disconnect::DISCONNECTED, 4003),
            (Disconnect::SLOW_CONSUMER, 4500),
            (Disconnect::TOKEN_EXPIRED, 4501),
            (Disconnect::RATE_LIMITED, 4502),
            (Disconnect::RECONNECT, 4503),
            (Disconnect::IDLE_TIMEOUT, 4504),
        ];
        for (d, code) in pairs {
            assert_eq!(
                d,
                Disconnect::from_code(code),
                "the constant is the table's row"
            );
        }
    }

    #[test]
    fn codes_outside_the_table_follow_the_rule() {
        assert!(!Disconnect::from_code(4100).reconnect);
        assert!(Disconnect::from_code(4700).reconnect);
        assert!(Disconnect::from_code(1006).reconnect);
        assert_eq!(
            Disconnect::custom(4321, "game over")
                .close_frame()
                .reason_str(),
            "game over"
        );
    }
}
