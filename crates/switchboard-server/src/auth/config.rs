//! [`AuthConfig`], the `auth` section of the configuration, and [`AuthConfigError`].

use std::{fmt, time::Duration};

use serde::Deserialize;

/// The `auth` section of the configuration.
///
/// Deserialised with unknown fields refused; every field has a default. It is checked as a
/// whole by [`Verifier::new`](super::Verifier::new), which names the offending key in its
/// error. Example (TOML):
///
/// ```toml
/// [auth]
/// algorithms = ["HS256", "RS256"]
/// secret = "a long random string"
/// audience = "switchboard"
/// leeway = 5
///
/// [[auth.public_keys]]
/// kid = "2025-01"
/// algorithm = "RS256"
/// pem = """
/// -----BEGIN PUBLIC KEY-----
/// ...
/// -----END PUBLIC KEY-----
/// """
/// ```
///
/// `Debug` prints the secret as `<redacted>`.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// The shared secret for HS256, HS384 and HS512. Its UTF-8 bytes are the HMAC key (it is
    /// not base64-decoded). Required when `algorithms` lists an HMAC algorithm. Default: none
    /// (dev mode fills it from [`load_or_create_dev_secret`](super::load_or_create_dev_secret)).
    pub secret: Option<String>,
    /// The key id (`kid`) of `secret`. An HMAC token that names a `kid` is refused with
    /// `unknown_key` unless it is this one (some issuers always set a `kid`: configure theirs
    /// here). Default: unset (HMAC tokens must not name a `kid`).
    pub secret_kid: Option<String>,
    /// Public keys for the asymmetric algorithms (RS*, PS*, ES256, ES384, EdDSA), in PEM.
    /// Default: none.
    pub public_keys: Vec<PublicKeyConfig>,
    /// The algorithms a token may be signed with, by their JWT names (`"HS256"`, `"RS256"`,
    /// `"ES256"`, `"EdDSA"`, ...). A token with any other `alg` (including `"none"`) is refused
    /// with `algorithm_not_allowed`. Default: `["HS256"]`.
    pub algorithms: Vec<String>,
    /// When set, a token must carry this value in `aud` (a string, or an array containing
    /// it); otherwise `bad_audience`. When unset, `aud` is not checked. Default: unset.
    pub audience: Option<String>,
    /// When set, a token's `iss` must equal it; otherwise `bad_issuer`. When unset, `iss` is
    /// not checked. Default: unset.
    pub issuer: Option<String>,
    /// Allowed clock skew, in seconds, for `exp` and `nbf`. At most 3600. Default: 5.
    pub leeway: u64,
    /// Whether a connection without a token is accepted as the anonymous user `""`.
    /// A token that is present but invalid is refused all the same. Default: false.
    pub anonymous: bool,
    /// The name of a cookie the token may be read from (last in the order of 2.1).
    /// Default: unset (cookies are not read).
    pub token_cookie: Option<String>,
    /// The query parameter the token may be read from. Default: `"token"`.
    pub query_param: String,
    /// First-message authentication (docs/protocol.md 2.2): an upgrade without a token is
    /// accepted, and the connection must then send `{"type": "auth", "token": …}` first,
    /// within `limits.auth_timeout`, or be closed with 4001. An upgrade that carries a token
    /// is still authenticated at the handshake. Default: false.
    pub first_message: bool,
    /// A JSON Web Key Set (RFC 7517) of public keys, besides `public_keys`: `file:///path`,
    /// `https://…`, or `http://` to a loopback host only (tests, a sidecar). Read at start
    /// (an error then stops the server), refreshed every `jwks_refresh` and when a token
    /// names an unknown `kid` (at most once per 10 s); a failed refresh keeps the last good
    /// set. Keys are used for the algorithms of `algorithms` only. Default: unset.
    pub jwks: Option<String>,
    /// A PEM file of CA certificates trusted for an `https://` `jwks`, besides the system's
    /// trust store (an identity provider behind a private CA). Default: unset.
    pub jwks_ca: Option<String>,
    /// How often the `jwks` set is fetched again. At least 1 s. Default: 5 minutes.
    #[serde(deserialize_with = "crate::config::duration")]
    pub jwks_refresh: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            secret: None,
            secret_kid: None,
            public_keys: Vec::new(),
            algorithms: vec!["HS256".to_owned()],
            audience: None,
            issuer: None,
            leeway: 5,
            anonymous: false,
            token_cookie: None,
            query_param: "token".to_owned(),
            first_message: false,
            jwks: None,
            jwks_ca: None,
            jwks_refresh: Duration::from_secs(300),
        }
    }
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("public_keys", &self.public_keys)
            .field("algorithms", &self.algorithms)
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .field("leeway", &self.leeway)
            .field("anonymous", &self.anonymous)
            .field("token_cookie", &self.token_cookie)
            .field("query_param", &self.query_param)
            .field("first_message", &self.first_message)
            .field("jwks", &self.jwks)
            .field("jwks_ca", &self.jwks_ca)
            .field("jwks_refresh", &self.jwks_refresh)
            .finish()
    }
}

/// One public key of [`AuthConfig::public_keys`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicKeyConfig {
    /// The key id. A token whose header has a `kid` is verified with the key of that id only
    /// (`unknown_key` when there is none); a token without `kid` is tried against every key of
    /// its algorithm. Ids must be unique.
    #[serde(default)]
    pub kid: Option<String>,
    /// The one algorithm this key verifies, e.g. `"RS256"`, `"ES256"`, `"EdDSA"`. It must also
    /// be listed in [`AuthConfig::algorithms`].
    pub algorithm: String,
    /// The public key in PEM: `-----BEGIN PUBLIC KEY-----` (SPKI, any of the algorithms) or
    /// `-----BEGIN RSA PUBLIC KEY-----` (PKCS#1, RSA only). Private keys are refused.
    pub pem: String,
}

/// A problem in the `auth` configuration, found by [`Verifier::new`](super::Verifier::new).
///
/// Displays as `<key>: <message>`, e.g.
/// `auth.public_keys[0].pem: not a valid PEM key`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct AuthConfigError {
    /// The configuration key at fault, with its full path, e.g. `auth.algorithms[1]`.
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

impl AuthConfigError {
    /// An error about `key` (the full path, e.g. `"auth.secret"`).
    pub(super) fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        AuthConfigError {
            key: key.into(),
            message: message.into(),
        }
    }
}
