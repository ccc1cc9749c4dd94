//! [`AuthError`]: why a token was refused, with exactly the reasons of protocol 2.1.

/// Why a token was refused.
///
/// The variants are exactly the reasons of protocol section 2.1; [`AuthError::reason`] gives
/// the wire string and [`AuthError::unauthorized_body`] the JSON body of the `401` refusal.
/// The precise cause (which claim, which parse error) is logged at `debug` level where the
/// error is produced and deliberately not carried here, so that nothing more than the reason
/// can leak to a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum AuthError {
    /// No token was presented (`missing`).
    #[error("no token")]
    Missing,
    /// The token is not a well-formed JWT, or a claim has the wrong type, size or shape
    /// (`malformed`).
    #[error("malformed token")]
    Malformed,
    /// The signature does not match any key that could have signed the token
    /// (`bad_signature`).
    #[error("bad signature")]
    BadSignature,
    /// The token names a key (`kid`) that is not configured, or no key is configured for its
    /// algorithm (`unknown_key`).
    #[error("unknown key")]
    UnknownKey,
    /// The token's `alg` is not one of the configured algorithms, or not the algorithm of the
    /// key it names (`algorithm_not_allowed`).
    #[error("algorithm not allowed")]
    AlgorithmNotAllowed,
    /// `exp` is in the past, beyond the leeway (`expired`).
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future, beyond the leeway (`not_yet_valid`).
    #[error("token not yet valid")]
    NotYetValid,
    /// An audience is configured and the token's `aud` is missing or does not contain it;
    /// also a subscription token for another user or room (`bad_audience`).
    #[error("bad audience")]
    BadAudience,
    /// An issuer is configured and the token's `iss` is missing or different (`bad_issuer`).
    #[error("bad issuer")]
    BadIssuer,
}

impl AuthError {
    /// Every reason, in the order of protocol 2.1.
    pub const ALL: [AuthError; 9] = [
        AuthError::Missing,
        AuthError::Malformed,
        AuthError::BadSignature,
        AuthError::UnknownKey,
        AuthError::AlgorithmNotAllowed,
        AuthError::Expired,
        AuthError::NotYetValid,
        AuthError::BadAudience,
        AuthError::BadIssuer,
    ];

    /// The snake_case reason sent on the wire, e.g. `"bad_signature"`.
    #[must_use]
    pub fn reason(self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Malformed => "malformed",
            AuthError::BadSignature => "bad_signature",
            AuthError::UnknownKey => "unknown_key",
            AuthError::AlgorithmNotAllowed => "algorithm_not_allowed",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::BadAudience => "bad_audience",
            AuthError::BadIssuer => "bad_issuer",
        }
    }

    /// The HTTP status of a handshake refused for this reason: always `401 Unauthorized`.
    #[must_use]
    pub fn status(self) -> http::StatusCode {
        http::StatusCode::UNAUTHORIZED
    }

    /// The body of the `401` refusal (protocol 2.1 and 7), as JSON text:
    /// `{"error":"unauthorized","reason":"<reason>"}`.
    #[must_use]
    pub fn unauthorized_body(self) -> String {
        // Every reason is a fixed snake_case ASCII word: nothing to escape.
        format!(r#"{{"error":"unauthorized","reason":"{}"}}"#, self.reason())
    }

    /// The same body as [`AuthError::unauthorized_body`], as a JSON value.
    #[must_use]
    pub fn unauthorized_json(self) -> serde_json::Value {
        serde_json::json!({"error": "unauthorized", "reason": self.reason()})
    }
}
