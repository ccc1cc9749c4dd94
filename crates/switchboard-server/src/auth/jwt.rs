//! JWT verification ([`Verifier`], [`Claims`]) and minting ([`mint`]).

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

use super::config::{AuthConfig, AuthConfigError, PublicKeyConfig};
use super::error::AuthError;
use super::jwks::{Jwks, PublicKey, spawn_refresher};

/// The longest `sub` accepted, in bytes (protocol 2.1).
pub const MAX_SUB_BYTES: usize = 128;
/// The largest `info` accepted, in bytes of compact JSON (protocol 2.1).
pub const MAX_INFO_BYTES: usize = 1024;
/// The longest token accepted, in bytes; longer ones are `malformed` without being decoded.
/// (The `rooms` claim can legitimately hold 128 rooms of 200 bytes.)
pub const MAX_TOKEN_BYTES: usize = 64 * 1024;
/// The largest `leeway` accepted in the configuration, in seconds.
const MAX_LEEWAY_SECS: u64 = 3600;

/// The claims of a verified token.
///
/// `aud` and `iss` are checked by [`Verifier::verify`] when configured and not kept.
#[derive(Debug, Clone, Serialize)]
pub struct Claims {
    /// The user id: 1..=128 bytes.
    pub sub: String,
    /// Expiry, unix seconds; `None` for a token that never expires.
    pub exp: Option<u64>,
    /// Not-before, unix seconds, when present (already checked).
    pub nbf: Option<u64>,
    /// Issued-at, unix seconds, when present (informative, not checked).
    pub iat: Option<u64>,
    /// Rooms the connection is subscribed to at connect and may read (protocol 4.3). Empty
    /// when the claim is absent. Room names are not checked here.
    pub rooms: Vec<String>,
    /// Public information about the user shown in presence and join/leave: a JSON object of
    /// at most [`MAX_INFO_BYTES`] bytes, stored in compact form (insignificant whitespace
    /// removed, key order kept).
    pub info: Option<Box<RawValue>>,
    /// The room of a subscription token (protocol 4.2); `None` in connection tokens.
    pub room: Option<String>,
}

/// The claims as they arrive, before the checks of [`Claims`].
#[derive(Deserialize)]
struct WireClaims {
    sub: String,
    #[serde(default, deserialize_with = "numeric_date")]
    exp: Option<u64>,
    #[serde(default, deserialize_with = "numeric_date")]
    nbf: Option<u64>,
    #[serde(default, deserialize_with = "numeric_date")]
    iat: Option<u64>,
    #[serde(default)]
    rooms: Option<Vec<String>>,
    #[serde(default)]
    info: Option<Box<RawValue>>,
    #[serde(default)]
    room: Option<String>,
}

/// A JWT NumericDate: a non-negative number of seconds, possibly fractional (rounded as
/// jsonwebtoken rounds it for its own `exp`/`nbf` checks).
fn numeric_date<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    if let Some(v) = n.as_u64() {
        return Ok(Some(v));
    }
    match n.as_f64() {
        Some(f) if f.is_finite() && f >= 0.0 && f < u64::MAX as f64 => Ok(Some(f.round() as u64)),
        _ => Err(serde::de::Error::custom(
            "a date must be a non-negative number of seconds",
        )),
    }
}

/// The part of the JOSE header looked at before choosing a key.
#[derive(Deserialize)]
struct PeekHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    /// Critical extensions (RFC 7515 4.1.11): none is understood here, so a token that lists
    /// any (or has a `crit` at all) must be refused.
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

/// Verifies tokens against an [`AuthConfig`]. Built once at start-up; cheap to share
/// (`Send + Sync`; clone it or put it in an `Arc`).
#[derive(Clone)]
pub struct Verifier {
    /// The allowed algorithms, each with its ready `Validation` (jsonwebtoken refuses a
    /// `Validation` that mixes algorithm families, so there is one per algorithm).
    allowed: Vec<(Algorithm, Validation)>,
    secret: Option<DecodingKey>,
    /// The `kid` an HMAC token may name (`auth.secret_kid`).
    secret_kid: Option<String>,
    keys: Vec<PublicKey>,
    /// The `auth.jwks` key set, shared by every clone.
    jwks: Option<Arc<Jwks>>,
    anonymous: bool,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let algorithms: Vec<Algorithm> = self.allowed.iter().map(|(a, _)| *a).collect();
        let keys: Vec<(Option<&str>, Algorithm)> = self
            .keys
            .iter()
            .map(|k| (k.kid.as_deref(), k.algorithm))
            .collect();
        f.debug_struct("Verifier")
            .field("algorithms", &algorithms)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("keys", &keys)
            .field("jwks", &self.jwks.as_ref().map(|j| j.snapshot().len()))
            .field("anonymous", &self.anonymous)
            .finish()
    }
}

impl Verifier {
    /// Checks `cfg` and prepares the keys.
    ///
    /// Refused, with the key at fault: an unknown algorithm name; an HMAC algorithm without
    /// `secret`; an empty `secret`, `audience`, `issuer`, `query_param`, `token_cookie` or
    /// `kid`; a public key whose algorithm is HMAC, not in `algorithms`, or does not match the
    /// key; a PEM that is not a public key (private keys included); a duplicate `kid`; an
    /// asymmetric algorithm in `algorithms` without a key; `leeway` over 3600; and no key at
    /// all unless `anonymous` is on (then every token is refused with `unknown_key`).
    /// A secret shorter than 32 bytes, or one no allowed algorithm uses, is only a warning.
    pub fn new(cfg: &AuthConfig) -> Result<Verifier, AuthConfigError> {
        if cfg.leeway > MAX_LEEWAY_SECS {
            return Err(AuthConfigError::new(
                "auth.leeway",
                format!("at most {MAX_LEEWAY_SECS} seconds"),
            ));
        }
        if cfg.query_param.is_empty() {
            return Err(AuthConfigError::new(
                "auth.query_param",
                "must not be empty",
            ));
        }
        if cfg.token_cookie.as_deref() == Some("") {
            return Err(AuthConfigError::new(
                "auth.token_cookie",
                "must not be empty (leave it out to not read cookies)",
            ));
        }
        if cfg.audience.as_deref() == Some("") {
            return Err(AuthConfigError::new(
                "auth.audience",
                "must not be empty (leave it out to not check aud)",
            ));
        }
        if cfg.issuer.as_deref() == Some("") {
            return Err(AuthConfigError::new(
                "auth.issuer",
                "must not be empty (leave it out to not check iss)",
            ));
        }
        if cfg.secret.as_deref() == Some("") {
            return Err(AuthConfigError::new("auth.secret", "must not be empty"));
        }
        if cfg.secret_kid.is_some() && cfg.secret.is_none() {
            return Err(AuthConfigError::new(
                "auth.secret_kid",
                "set without auth.secret (it names the secret's key id)",
            ));
        }
        if cfg.secret_kid.as_deref() == Some("") {
            return Err(AuthConfigError::new(
                "auth.secret_kid",
                "must not be empty (leave it out when tokens name no kid)",
            ));
        }

        if cfg.secret.is_none() && cfg.public_keys.is_empty() && cfg.jwks.is_none() {
            if cfg.anonymous {
                tracing::info!("auth: no key configured, only anonymous connections are accepted");
                return Ok(Verifier {
                    allowed: Vec::new(),
                    secret: None,
                    secret_kid: None,
                    keys: Vec::new(),
                    jwks: None,
                    anonymous: true,
                });
            }
            return Err(AuthConfigError::new(
                "auth.secret",
                "no key configured: set auth.secret or auth.public_keys (or enable auth.anonymous)",
            ));
        }

        if cfg.algorithms.is_empty() {
            return Err(AuthConfigError::new(
                "auth.algorithms",
                "must list at least one algorithm",
            ));
        }
        let mut algorithms: Vec<(usize, Algorithm)> = Vec::with_capacity(cfg.algorithms.len());
        for (i, name) in cfg.algorithms.iter().enumerate() {
            let alg = parse_algorithm(name)
                .map_err(|msg| AuthConfigError::new(format!("auth.algorithms[{i}]"), msg))?;
            if alg.family() == AlgorithmFamily::Hmac && cfg.secret.is_none() {
                return Err(AuthConfigError::new(
                    "auth.secret",
                    format!(
                        "required by {name:?} in auth.algorithms (which defaults to [\"HS256\"]: \
                         list the algorithms of your public keys there)"
                    ),
                ));
            }
            if !algorithms.iter().any(|(_, a)| *a == alg) {
                algorithms.push((i, alg));
            }
        }

        let secret = cfg.secret.as_deref().map(|s| {
            if !algorithms
                .iter()
                .any(|(_, a)| a.family() == AlgorithmFamily::Hmac)
            {
                tracing::warn!(
                    "auth.secret is set but auth.algorithms allows no HMAC algorithm: it is unused"
                );
            }
            if s.len() < 32 {
                tracing::warn!("auth.secret is shorter than 32 bytes: use a long random secret");
            }
            DecodingKey::from_secret(s.as_bytes())
        });

        let mut keys: Vec<PublicKey> = Vec::with_capacity(cfg.public_keys.len());
        for (i, pk) in cfg.public_keys.iter().enumerate() {
            let key = parse_public_key(i, pk, &algorithms)?;
            if let Some(kid) = &key.kid
                && let Some(j) = keys.iter().position(|k| k.kid.as_ref() == Some(kid))
            {
                return Err(AuthConfigError::new(
                    format!("auth.public_keys[{i}].kid"),
                    format!("duplicate kid {kid:?} (also auth.public_keys[{j}])"),
                ));
            }
            keys.push(key);
        }

        // Keys of a JWKS arrive with the set (and may change): an algorithm without a
        // configured key is then the set's to serve.
        for (i, alg) in algorithms.iter().filter(|_| cfg.jwks.is_none()) {
            if alg.family() != AlgorithmFamily::Hmac && !keys.iter().any(|k| k.algorithm == *alg) {
                return Err(AuthConfigError::new(
                    format!("auth.algorithms[{i}]"),
                    format!(
                        "{:?} has no key: add one to auth.public_keys",
                        cfg.algorithms[*i]
                    ),
                ));
            }
        }

        let jwks = match &cfg.jwks {
            None => None,
            Some(url) => {
                if cfg.jwks_refresh < Duration::from_secs(1) {
                    return Err(AuthConfigError::new(
                        "auth.jwks_refresh",
                        "must be at least 1s",
                    ));
                }
                let asymmetric = algorithms
                    .iter()
                    .map(|(_, a)| *a)
                    .filter(|a| a.family() != AlgorithmFamily::Hmac)
                    .collect();
                let jwks = Arc::new(Jwks::new(url, cfg.jwks_ca.as_deref(), asymmetric)?);
                spawn_refresher(Arc::downgrade(&jwks), cfg.jwks_refresh);
                Some(jwks)
            }
        };

        let allowed = algorithms
            .iter()
            .map(|(_, alg)| (*alg, validation_for(*alg, cfg)))
            .collect();
        Ok(Verifier {
            allowed,
            secret,
            secret_kid: cfg.secret_kid.clone(),
            keys,
            jwks,
            anonymous: cfg.anonymous,
        })
    }

    /// Fetches the `auth.jwks` key set when it comes from the network (a `file://` set was
    /// read by [`Verifier::new`]); nothing to do without one. Called once at start-up by
    /// [`Node::from_config`](crate::Node::from_config): a set that cannot be fetched then
    /// is an error naming `auth.jwks`. Later refreshes keep the last good set on failure.
    pub async fn load_jwks(&self) -> Result<(), AuthConfigError> {
        let Some(jwks) = self.jwks.as_ref().filter(|j| j.is_remote()) else {
            return Ok(());
        };
        let n = jwks.refresh().await.map_err(|e| {
            AuthConfigError::new("auth.jwks", format!("cannot load the key set: {e}"))
        })?;
        tracing::info!(keys = n, "auth.jwks loaded");
        Ok(())
    }

    /// [`Verifier::authenticate`], and when the token names a `kid` that no key has and
    /// `auth.jwks` is set, the set is fetched again (at most once per 10 s) and the token
    /// verified once more: an identity provider's new key works from its first token.
    pub async fn authenticate_fresh(
        &self,
        token: Option<&str>,
    ) -> Result<Option<Claims>, AuthError> {
        match self.authenticate(token) {
            Err(AuthError::UnknownKey) => {}
            other => return other,
        }
        let Some(jwks) = &self.jwks else {
            return Err(AuthError::UnknownKey);
        };
        let names_kid = token
            .and_then(|t| peek_header(t.trim()).ok())
            .is_some_and(|h| h.kid.is_some());
        if names_kid && jwks.refresh_for_unknown_kid().await {
            return self.authenticate(token);
        }
        Err(AuthError::UnknownKey)
    }

    /// Whether a connection without a token is accepted (as the anonymous user `""`).
    #[must_use]
    pub fn anonymous_allowed(&self) -> bool {
        self.anonymous
    }

    /// Applies the rule of protocol 2.1 to what [`find_token`](super::find_token) found:
    /// no token (or an empty one) is `Ok(None)`, the anonymous user, when anonymous access is
    /// on and [`AuthError::Missing`] otherwise; a token is verified with
    /// [`Verifier::verify`]. A present but invalid token is refused even when anonymous
    /// access is on.
    pub fn authenticate(&self, token: Option<&str>) -> Result<Option<Claims>, AuthError> {
        match token.map(str::trim).filter(|t| !t.is_empty()) {
            None if self.anonymous => Ok(None),
            None => Err(AuthError::Missing),
            Some(token) => self.verify(token).map(Some),
        }
    }

    /// Verifies a connection token and returns its claims.
    ///
    /// In order: an empty token is [`AuthError::Missing`]; a token that is not three
    /// base64url parts with a JSON header, or whose header has `crit`, is `malformed`; an `alg` that is not allowed (or
    /// unknown, e.g. `none`) is `algorithm_not_allowed`; then the key is chosen: the secret
    /// for HMAC algorithms (a `kid` must be `auth.secret_kid`, else `unknown_key`), for the others the public key named by `kid`
    /// (`unknown_key` if there is none, `algorithm_not_allowed` if the key is for another
    /// algorithm), or without `kid` every key of that algorithm in turn. Then the signature
    /// (`bad_signature`), the claims' shape (`malformed`), `exp` (`expired`; a token without
    /// `exp` never expires), `nbf` (`not_yet_valid`), `iss` (`bad_issuer`) and `aud`
    /// (`bad_audience`) when configured (then they are required), and finally `sub`
    /// (1..=128 bytes) and `info` (an object of at most 1 KiB), both `malformed` otherwise.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        self.verify_inner(token).inspect_err(|e| {
            tracing::debug!(reason = e.reason(), "token refused");
        })
    }

    /// Verifies a subscription token (protocol 4.2) for `user` subscribing to `room`.
    ///
    /// The token must pass [`Verifier::verify`], carry `exp` and a `room` claim (else
    /// `malformed`), and have `sub == user` and `room == room` (else `bad_audience`: the
    /// token was issued for someone or something else). The caller answers any error with
    /// `forbidden`.
    pub fn verify_subscription_token(
        &self,
        token: &str,
        user: &str,
        room: &str,
    ) -> Result<(), AuthError> {
        let claims = self.verify(token)?;
        let Some(token_room) = claims.room.as_deref() else {
            tracing::debug!(
                reason = "malformed",
                "subscription token without room claim"
            );
            return Err(AuthError::Malformed);
        };
        if claims.exp.is_none() {
            tracing::debug!(reason = "malformed", "subscription token without exp");
            return Err(AuthError::Malformed);
        }
        if token_room != room || claims.sub != user {
            tracing::debug!(
                reason = "bad_audience",
                "subscription token for another user or room"
            );
            return Err(AuthError::BadAudience);
        }
        Ok(())
    }

    fn verify_inner(&self, token: &str) -> Result<Claims, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if token.len() > MAX_TOKEN_BYTES {
            tracing::debug!(len = token.len(), "token too long");
            return Err(AuthError::Malformed);
        }
        let header = peek_header(token)?;
        if header.crit.is_some() {
            tracing::debug!("token header has crit: no extension is understood");
            return Err(AuthError::Malformed);
        }
        if self.allowed.is_empty() {
            tracing::debug!("no key configured (anonymous-only)");
            return Err(AuthError::UnknownKey);
        }
        let Ok(alg) = Algorithm::from_str(&header.alg) else {
            tracing::debug!(alg = ?clip(&header.alg), "unknown alg");
            return Err(AuthError::AlgorithmNotAllowed);
        };
        let Some((_, validation)) = self.allowed.iter().find(|(a, _)| *a == alg) else {
            tracing::debug!(alg = ?clip(&header.alg), "alg not allowed");
            return Err(AuthError::AlgorithmNotAllowed);
        };
        let jwks = self.jwks.as_ref().map(|j| j.snapshot());
        let candidates =
            self.keys_for(alg, header.kid.as_deref(), jwks.as_deref().unwrap_or(&[]))?;
        for key in candidates {
            match jsonwebtoken::decode::<WireClaims>(token, key, validation) {
                Ok(data) => return claims_from_wire(data.claims),
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => continue,
                Err(e) => return Err(map_error(e.kind())),
            }
        }
        Err(AuthError::BadSignature)
    }

    /// The keys that may have signed a token of `alg` naming `kid`.
    /// `jwks` holds the keys of the `auth.jwks` set, after the configured ones.
    fn keys_for<'a>(
        &'a self,
        alg: Algorithm,
        kid: Option<&str>,
        jwks: &'a [PublicKey],
    ) -> Result<Vec<&'a DecodingKey>, AuthError> {
        if alg.family() == AlgorithmFamily::Hmac {
            // One secret: a token naming a key id must name the secret's (RFC 7515 4.1.4 leaves
            // the use of `kid` to the application; accepting any would hide a misissued token).
            if let Some(kid) = kid
                && self.secret_kid.as_deref() != Some(kid)
            {
                tracing::debug!(kid = ?clip(kid), "HMAC token names an unknown kid");
                return Err(AuthError::UnknownKey);
            }
            return self.secret.as_ref().map(|k| vec![k]).ok_or_else(|| {
                tracing::debug!("no secret for an HMAC token");
                AuthError::UnknownKey
            });
        }
        if let Some(kid) = kid {
            let Some(key) = self
                .keys
                .iter()
                .chain(jwks)
                .find(|k| k.kid.as_deref() == Some(kid))
            else {
                tracing::debug!(kid = ?clip(kid), "unknown kid");
                return Err(AuthError::UnknownKey);
            };
            if key.algorithm != alg {
                tracing::debug!(kid = ?clip(kid), "token alg is not the key's algorithm");
                return Err(AuthError::AlgorithmNotAllowed);
            }
            return Ok(vec![&key.key]);
        }
        let keys: Vec<&DecodingKey> = self
            .keys
            .iter()
            .chain(jwks)
            .filter(|k| k.algorithm == alg)
            .map(|k| &k.key)
            .collect();
        if keys.is_empty() {
            tracing::debug!("no key for the token's alg");
            return Err(AuthError::UnknownKey);
        }
        Ok(keys)
    }
}

/// At most the first 64 bytes of a client-supplied string, for logs (which print it with
/// `Debug`, escaping control characters).
fn clip(s: &str) -> &str {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Parses an algorithm name of the configuration.
fn parse_algorithm(name: &str) -> Result<Algorithm, String> {
    Algorithm::from_str(name).map_err(|_| {
        format!(
            "unknown algorithm {name:?} (one of HS256, HS384, HS512, RS256, RS384, RS512, \
             PS256, PS384, PS512, ES256, ES384, EdDSA)"
        )
    })
}

/// The `Validation` for tokens of `alg` under `cfg`.
fn validation_for(alg: Algorithm, cfg: &AuthConfig) -> Validation {
    let mut v = Validation::new(alg);
    // `exp` is optional: jsonwebtoken checks it only when present once it is not required.
    v.required_spec_claims = HashSet::new();
    v.validate_exp = true;
    v.validate_nbf = true;
    v.leeway = cfg.leeway;
    match &cfg.audience {
        Some(aud) => {
            v.set_audience(&[aud]);
            v.required_spec_claims.insert("aud".to_owned());
        }
        // Not configured: `aud` is ignored (jsonwebtoken would refuse any token carrying one).
        None => v.validate_aud = false,
    }
    if let Some(iss) = &cfg.issuer {
        v.set_issuer(&[iss]);
        v.required_spec_claims.insert("iss".to_owned());
    }
    v
}

/// Reads the key-choosing part of the header without trusting anything else.
fn peek_header(token: &str) -> Result<PeekHeader, AuthError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        tracing::debug!("token is not three dot-separated parts");
        return Err(AuthError::Malformed);
    };
    let json = URL_SAFE_NO_PAD.decode(header).map_err(|e| {
        tracing::debug!(error = %e, "header is not base64url");
        AuthError::Malformed
    })?;
    serde_json::from_slice(&json).map_err(|e| {
        tracing::debug!(error = %e, "header is not a JSON object with alg");
        AuthError::Malformed
    })
}

/// Maps a jsonwebtoken error to the reason of protocol 2.1.
fn map_error(kind: &ErrorKind) -> AuthError {
    let reason = match kind {
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::UnsupportedAlgorithm
        | ErrorKind::InvalidAlgorithmName => AuthError::AlgorithmNotAllowed,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidAudience => AuthError::BadAudience,
        ErrorKind::InvalidIssuer => AuthError::BadIssuer,
        ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => AuthError::BadAudience,
        ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => AuthError::BadIssuer,
        ErrorKind::InvalidKeyFormat
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_) => {
            // Keys are checked at start-up; this is a key jsonwebtoken could not use.
            tracing::warn!(error = ?kind, "auth: a configured key could not be used");
            AuthError::BadSignature
        }
        // InvalidToken, Base64, Json, Utf8, InvalidClaimFormat, other MissingRequiredClaim,
        // InvalidSubject, and whatever a later jsonwebtoken adds.
        _ => AuthError::Malformed,
    };
    tracing::debug!(error = ?kind, "jsonwebtoken refused the token");
    reason
}

/// Checks what jsonwebtoken does not: `sub` and `info`.
fn claims_from_wire(wire: WireClaims) -> Result<Claims, AuthError> {
    if wire.sub.is_empty() || wire.sub.len() > MAX_SUB_BYTES {
        tracing::debug!(len = wire.sub.len(), "sub must be 1..=128 bytes");
        return Err(AuthError::Malformed);
    }
    let info = match wire.info {
        None => None,
        Some(raw) => Some(check_info(raw)?),
    };
    Ok(Claims {
        sub: wire.sub,
        exp: wire.exp,
        nbf: wire.nbf,
        iat: wire.iat,
        rooms: wire.rooms.unwrap_or_default(),
        info,
        room: wire.room,
    })
}

/// `info` must be an object of at most [`MAX_INFO_BYTES`] in compact form.
fn check_info(raw: Box<RawValue>) -> Result<Box<RawValue>, AuthError> {
    if !raw.get().starts_with('{') {
        tracing::debug!("info is not an object");
        return Err(AuthError::Malformed);
    }
    let compact = match compact_json(raw.get()) {
        Cow::Borrowed(_) => raw,
        Cow::Owned(s) => RawValue::from_string(s).map_err(|_| AuthError::Malformed)?,
    };
    if compact.get().len() > MAX_INFO_BYTES {
        tracing::debug!(len = compact.get().len(), "info larger than 1 KiB");
        return Err(AuthError::Malformed);
    }
    Ok(compact)
}

/// Removes the whitespace outside strings of valid JSON text (borrowed when there is none).
fn compact_json(json: &str) -> Cow<'_, str> {
    let is_ws = |b: u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    let mut in_string = false;
    let mut escaped = false;
    let mut out: Option<Vec<u8>> = None;
    for (i, b) in json.bytes().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
        } else if is_ws(b) {
            out.get_or_insert_with(|| json.as_bytes()[..i].to_vec());
            continue;
        }
        if let Some(out) = &mut out {
            out.push(b);
        }
    }
    match out {
        // Only ASCII bytes were removed, so the rest is still UTF-8.
        Some(bytes) => String::from_utf8(bytes).map_or(Cow::Borrowed(json), Cow::Owned),
        None => Cow::Borrowed(json),
    }
}

/// Checks one entry of `auth.public_keys` and loads its key.
fn parse_public_key(
    i: usize,
    pk: &PublicKeyConfig,
    algorithms: &[(usize, Algorithm)],
) -> Result<PublicKey, AuthConfigError> {
    let alg_key = format!("auth.public_keys[{i}].algorithm");
    let pem_key = format!("auth.public_keys[{i}].pem");
    let alg = parse_algorithm(&pk.algorithm).map_err(|m| AuthConfigError::new(&alg_key, m))?;
    if alg.family() == AlgorithmFamily::Hmac {
        return Err(AuthConfigError::new(
            alg_key,
            format!(
                "{:?} is an HMAC algorithm: its key is auth.secret",
                pk.algorithm
            ),
        ));
    }
    if !algorithms.iter().any(|(_, a)| *a == alg) {
        return Err(AuthConfigError::new(
            alg_key,
            format!("{:?} is not in auth.algorithms", pk.algorithm),
        ));
    }
    if pk.kid.as_deref() == Some("") {
        return Err(AuthConfigError::new(
            format!("auth.public_keys[{i}].kid"),
            "must not be empty (leave it out for a key without id)",
        ));
    }

    // Indented multi-line strings of a config file: trim every line.
    let pem: String = pk
        .pem
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .flat_map(|l| [l, "\n"])
        .collect();
    let Some(label) = pem_label(&pem) else {
        return Err(AuthConfigError::new(pem_key, "not a valid PEM key"));
    };
    if label.contains("PRIVATE") {
        return Err(AuthConfigError::new(
            pem_key,
            "is a private key: configure its public key (openssl pkey -pubout)",
        ));
    }
    if label != "PUBLIC KEY" && label != "RSA PUBLIC KEY" {
        return Err(AuthConfigError::new(
            pem_key,
            format!("a PEM {label:?} block: expected \"PUBLIC KEY\""),
        ));
    }
    let bad = |what: &str| AuthConfigError::new(&pem_key, format!("not a valid {what} public key"));
    let key = match alg.family() {
        AlgorithmFamily::Rsa => {
            DecodingKey::from_rsa_pem(pem.as_bytes()).map_err(|_| bad("RSA"))?
        }
        AlgorithmFamily::Ec => {
            let key = DecodingKey::from_ec_pem(pem.as_bytes()).map_err(|_| bad("EC"))?;
            // An uncompressed SEC1 point: 1 + 2 * 32 bytes on P-256, 1 + 2 * 48 on P-384.
            let (len, curve) = if alg == Algorithm::ES256 {
                (65, "P-256")
            } else {
                (97, "P-384")
            };
            if key.try_get_as_bytes().map(<[u8]>::len) != Ok(len) {
                return Err(AuthConfigError::new(
                    pem_key,
                    format!("not a {curve} public key, as {:?} needs", pk.algorithm),
                ));
            }
            key
        }
        AlgorithmFamily::Ed => {
            let key = DecodingKey::from_ed_pem(pem.as_bytes()).map_err(|_| bad("Ed25519"))?;
            if key.try_get_as_bytes().map(<[u8]>::len) != Ok(32) {
                return Err(bad("Ed25519"));
            }
            key
        }
        AlgorithmFamily::Hmac => unreachable!("refused above"),
    };
    // Builds the verifier once, which parses EC and Ed points (an invalid point fails here
    // rather than on every token). The empty signature itself just does not verify.
    if jsonwebtoken::crypto::verify("", b"", &key, alg).is_err() {
        return Err(bad(&pk.algorithm));
    }
    Ok(PublicKey {
        kid: pk.kid.clone(),
        algorithm: alg,
        key,
    })
}

/// The label of the first `-----BEGIN <label>-----` line.
fn pem_label(pem: &str) -> Option<&str> {
    pem.lines().find_map(|l| {
        l.strip_prefix("-----BEGIN ")
            .and_then(|rest| rest.strip_suffix("-----"))
    })
}

/// The HMAC algorithms [`mint`] signs with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum HmacAlgorithm {
    /// HMAC with SHA-256.
    #[default]
    HS256,
    /// HMAC with SHA-384.
    HS384,
    /// HMAC with SHA-512.
    HS512,
}

impl HmacAlgorithm {
    /// The JWT name, e.g. `"HS256"`.
    pub fn as_str(self) -> &'static str {
        match self {
            HmacAlgorithm::HS256 => "HS256",
            HmacAlgorithm::HS384 => "HS384",
            HmacAlgorithm::HS512 => "HS512",
        }
    }

    fn algorithm(self) -> Algorithm {
        match self {
            HmacAlgorithm::HS256 => Algorithm::HS256,
            HmacAlgorithm::HS384 => Algorithm::HS384,
            HmacAlgorithm::HS512 => Algorithm::HS512,
        }
    }
}

impl fmt::Display for HmacAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for HmacAlgorithm {
    type Err = String;

    /// Parses `"HS256"`, `"HS384"` or `"HS512"` (ASCII case-insensitively).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            HmacAlgorithm::HS256,
            HmacAlgorithm::HS384,
            HmacAlgorithm::HS512,
        ]
        .into_iter()
        .find(|a| a.as_str().eq_ignore_ascii_case(s))
        .ok_or_else(|| format!("unknown HMAC algorithm {s:?} (one of HS256, HS384, HS512)"))
    }
}

/// What [`mint`] puts in a token. Build it with struct update syntax from `Default`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MintClaims {
    /// The user id (`sub`).
    pub sub: String,
    /// Lifetime: `exp` is now plus this, rounded down to the second. `None`: no `exp`, the
    /// token never expires (subscription tokens need one).
    pub ttl: Option<Duration>,
    /// The `rooms` claim; left out when empty.
    pub rooms: Vec<String>,
    /// The `info` claim (an object; [`Verifier::verify`] refuses one over 1 KiB).
    pub info: Option<serde_json::Map<String, serde_json::Value>>,
    /// The `room` claim of a subscription token.
    pub room: Option<String>,
    /// The `aud` claim, for servers that check it.
    pub audience: Option<String>,
    /// The `iss` claim, for servers that check it.
    pub issuer: Option<String>,
}

#[derive(Serialize)]
struct MintWire<'a> {
    sub: &'a str,
    iat: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    exp: Option<u64>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    rooms: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    info: Option<&'a serde_json::Map<String, serde_json::Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    room: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
}

/// Signs a token with a shared secret (`switchboard token`, tests, dev mode).
///
/// The header is `{"typ":"JWT","alg":"<alg>"}`; the claims are `sub`, `iat` (now), `exp`
/// (now + `ttl`, when given), and `rooms`, `info`, `room`, `aud`, `iss` when set. Nothing is
/// checked: [`Verifier::verify`] is the judge (an empty `sub`, say, gives a token it refuses).
#[must_use]
pub fn mint(secret: &[u8], alg: HmacAlgorithm, claims: &MintClaims) -> String {
    let now = jsonwebtoken::get_current_timestamp();
    let wire = MintWire {
        sub: &claims.sub,
        iat: now,
        exp: claims.ttl.map(|ttl| now.saturating_add(ttl.as_secs())),
        rooms: &claims.rooms,
        info: claims.info.as_ref(),
        room: claims.room.as_deref(),
        aud: claims.audience.as_deref(),
        iss: claims.issuer.as_deref(),
    };
    jsonwebtoken::encode(
        &Header::new(alg.algorithm()),
        &wire,
        &EncodingKey::from_secret(secret),
    )
    .expect("HMAC signing of serialisable claims cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_json_removes_only_whitespace_outside_strings() {
        assert!(matches!(compact_json(r#"{"a":1}"#), Cow::Borrowed(_)));
        assert_eq!(
            compact_json("{ \"a b\" :\t[ 1 , \"x\\\" y\" ],\n\"é ü\" : { } }"),
            r#"{"a b":[1,"x\" y"],"é ü":{}}"#
        );
        assert_eq!(compact_json(r#"{"k":"\\"  }"#), r#"{"k":"\\"}"#);
    }

    #[test]
    fn error_kinds_map_to_reasons() {
        let cases = [
            (ErrorKind::InvalidSignature, AuthError::BadSignature),
            (ErrorKind::InvalidAlgorithm, AuthError::AlgorithmNotAllowed),
            (ErrorKind::MissingAlgorithm, AuthError::AlgorithmNotAllowed),
            (ErrorKind::ExpiredSignature, AuthError::Expired),
            (ErrorKind::ImmatureSignature, AuthError::NotYetValid),
            (ErrorKind::InvalidAudience, AuthError::BadAudience),
            (ErrorKind::InvalidIssuer, AuthError::BadIssuer),
            (
                ErrorKind::MissingRequiredClaim("aud".into()),
                AuthError::BadAudience,
            ),
            (
                ErrorKind::MissingRequiredClaim("iss".into()),
                AuthError::BadIssuer,
            ),
            (
                ErrorKind::MissingRequiredClaim("sub".into()),
                AuthError::Malformed,
            ),
            (ErrorKind::InvalidToken, AuthError::Malformed),
            (
                ErrorKind::InvalidClaimFormat("exp".into()),
                AuthError::Malformed,
            ),
            (ErrorKind::InvalidSubject, AuthError::Malformed),
            (ErrorKind::InvalidEcdsaKey, AuthError::BadSignature),
        ];
        for (kind, reason) in cases {
            assert_eq!(map_error(&kind), reason, "{kind:?}");
        }
    }
}
