//! The server library's error types: [`Error`] for a connection or the server,
//! [`Refused`] for a request of the service that it will not carry out (what the v1
//! protocol sends as an `error` frame and the server API as an HTTP status), and
//! [`Refusal`] for an upgrade or stream request refused before a connection exists.
//!
//! It stands below every other module of the crate: it imports none of them.

use std::borrow::Cow;

use http::StatusCode;

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
}

/// A refused upgrade: the HTTP status and JSON body to answer with.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The status (401, 403, 429, 503, ...).
    pub status: StatusCode,
    /// The JSON body, `{"error": ..., "reason": ...}` by convention.
    pub body: serde_json::Value,
    /// Extra headers (e.g. `Retry-After`).
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

impl Refusal {
    /// A refusal with `{"error": error, "reason": reason}`.
    pub fn new(status: StatusCode, error: &str, reason: &str) -> Self {
        Refusal {
            status,
            body: serde_json::json!({"error": error, "reason": reason}),
            headers: Vec::new(),
        }
    }

    /// 400 `bad_request`: the upgrade request lacks something the route needs.
    pub fn bad_request(reason: &str) -> Self {
        Refusal::new(StatusCode::BAD_REQUEST, "bad_request", reason)
    }

    /// 401 `unauthorized`: no credentials, or credentials that do not verify.
    pub fn unauthorized(reason: &str) -> Self {
        Refusal::new(StatusCode::UNAUTHORIZED, "unauthorized", reason)
    }

    /// 403 `forbidden`: a known user who may not connect here.
    pub fn forbidden(reason: &str) -> Self {
        Refusal::new(StatusCode::FORBIDDEN, "forbidden", reason)
    }

    /// 429 `too_many_requests`, with `Retry-After` in whole seconds (at least 1).
    pub fn too_many_requests(reason: &str, retry_after: std::time::Duration) -> Self {
        Refusal::new(StatusCode::TOO_MANY_REQUESTS, "too_many_requests", reason)
            .retry_after(retry_after)
    }

    /// 503 `unavailable`, with `Retry-After` in whole seconds (at least 1).
    pub fn unavailable(reason: &str, retry_after: std::time::Duration) -> Self {
        Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", reason)
            .retry_after(retry_after)
    }

    /// Adds `Retry-After` (whole seconds, rounded up, at least 1).
    pub fn retry_after(mut self, after: std::time::Duration) -> Self {
        let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
        self.headers.push((
            http::header::RETRY_AFTER,
            http::HeaderValue::from(secs.max(1)),
        ));
        self
    }
}
