//! Authentication: JWT verification, token extraction, minting and the dev-mode secret.
//!
//! This module implements sections 2 (authentication) and 4.2 (subscription tokens) of the
//! protocol, and the `401` bodies of section 7.
//!
//! - [`AuthConfig`] is the `auth` section of the configuration; [`Verifier::new`] checks it
//!   once at start-up and reports problems as an [`AuthConfigError`] naming the key.
//! - [`Verifier::verify`] checks a connection token and returns its [`Claims`];
//!   [`Verifier::verify_subscription_token`] checks a subscription token (4.2);
//!   [`Verifier::authenticate`] adds the anonymous-access rule of 2.1.
//! - Every failure is an [`AuthError`], whose [`reason`](AuthError::reason) is the wire string
//!   of 2.1 and whose [`unauthorized_body`](AuthError::unauthorized_body) is the `401` body.
//! - [`find_token`] looks for the token on an upgrade (or SSE) request, in the order of 2.1.
//! - [`mint`] signs tokens with a shared secret (`switchboard token`, tests).
//! - [`load_or_create_dev_secret`] keeps the dev-mode secret in a file.
//!
//! Nothing here logs a token or a secret; failures are logged at `debug` level with their
//! cause, which is more precise than the wire reason.

mod config;
mod dev;
mod error;
mod extract;
pub(crate) use extract::percent_decode;
mod jwks;
mod jwt;

#[cfg(test)]
mod test_keys;
#[cfg(test)]
mod tests;

pub use self::config::{AuthConfig, AuthConfigError, PublicKeyConfig};
pub use self::dev::{
    DEFAULT_DEV_SECRET_PATH, DEV_SECRET_FILE_ENV, default_dev_secret_path,
    load_or_create_dev_secret,
};
pub use self::error::AuthError;
pub use self::extract::{BEARER_PROTOCOL_PREFIX, find_token, is_bearer_protocol};
pub use self::jwt::{
    Claims, HmacAlgorithm, MAX_INFO_BYTES, MAX_SUB_BYTES, MAX_TOKEN_BYTES, MintClaims, Verifier,
    mint,
};
