//! Authentication (placeholder until the JWT module lands).

use serde::Deserialize;

/// Authentication options.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// HMAC secret.
    pub secret: Option<String>,
}
