//! The server library's error types: [`Error`] for a connection or the server, and
//! [`Refused`] for a request of the service that it will not carry out (what the v1
//! protocol sends as an `error` frame and the server API as an HTTP status).

use std::borrow::Cow;

use switchboard_protocol::wire::ErrorCode;

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

/// A refused request: the error code of the contract (docs/protocol.md section 7.1) and a
/// message for people that names the field or the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct Refused {
    /// The contract's error code.
    pub code: ErrorCode,
    /// What was wrong.
    pub message: Cow<'static, str>,
}

impl Refused {
    /// A refusal with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Refused {
        Refused {
            code,
            message: message.into(),
        }
    }

    /// `forbidden`.
    pub fn forbidden(message: impl Into<Cow<'static, str>>) -> Refused {
        Refused::new(ErrorCode::Forbidden, message)
    }

    /// `not_subscribed`.
    pub fn not_subscribed(message: impl Into<Cow<'static, str>>) -> Refused {
        Refused::new(ErrorCode::NotSubscribed, message)
    }

    /// `bad_request`.
    pub fn bad_request(message: impl Into<Cow<'static, str>>) -> Refused {
        Refused::new(ErrorCode::BadRequest, message)
    }

    /// `limit_exceeded`.
    pub fn limit_exceeded(message: impl Into<Cow<'static, str>>) -> Refused {
        Refused::new(ErrorCode::LimitExceeded, message)
    }

    /// A failed broker call: `limit_exceeded` when the broker is full (`limits.max_rooms`),
    /// otherwise `unavailable` (the broker cannot serve the request now); nothing was done.
    pub fn broker(error: &crate::broker::BrokerError) -> Refused {
        if let crate::broker::BrokerError::LimitExceeded { message } = error {
            tracing::debug!(error = %error, "broker refused: full");
            return Refused::limit_exceeded(message.clone());
        }
        tracing::warn!(error = %error, "broker call failed");
        Refused::new(
            ErrorCode::Unavailable,
            "the broker cannot serve this now; nothing was done",
        )
    }
}
