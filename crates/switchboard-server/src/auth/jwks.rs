//! `auth.jwks`: public keys from a JSON Web Key Set (RFC 7517), read from a file or fetched
//! over HTTP(S), cached, and refreshed on a schedule and when a token names an unknown `kid`.
//!
//! The set is swapped whole behind a lock held only to clone or replace an `Arc` (never across
//! an await); verifying a token reads a snapshot. A refresh that fails keeps the last good set
//! and logs a warning: an identity provider's outage must not log everybody out.

use std::{
    path::PathBuf,
    str::FromStr,
    sync::{Arc, Mutex, RwLock, Weak},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use jsonwebtoken::{
    Algorithm, DecodingKey,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse},
};
use tokio::time::Instant;

use super::config::AuthConfigError;

/// One public key: configured, or from the `auth.jwks` set.
#[derive(Clone)]
pub(super) struct PublicKey {
    pub(super) kid: Option<String>,
    pub(super) algorithm: Algorithm,
    pub(super) key: DecodingKey,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublicKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// Refreshes asked for by unknown `kid`s happen at most this often: a client sending made-up
/// key ids must not make the server hammer the identity provider.
pub(super) const UNKNOWN_KID_REFRESH: Duration = Duration::from_secs(10);
/// The largest key set read (a set of a few keys is a few KiB).
const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// How long one fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the set comes from.
#[derive(Debug, Clone)]
enum Source {
    File(PathBuf),
    Http(http::Uri),
    Https(http::Uri, Arc<rustls::ClientConfig>),
}

/// The key set of `auth.jwks` and its refresh state, shared by every clone of the verifier.
#[derive(Debug)]
pub(super) struct Jwks {
    source: Source,
    /// The display form of the source, for logs and errors.
    url: String,
    /// The algorithms a key may be used for (`auth.algorithms`, asymmetric ones).
    algorithms: Vec<Algorithm>,
    keys: RwLock<Arc<[PublicKey]>>,
    /// When the last refresh asked for by an unknown `kid` began.
    last_kid_refresh: Mutex<Option<Instant>>,
    /// One fetch at a time; others wait for its result.
    fetching: tokio::sync::Mutex<()>,
}

impl Jwks {
    /// Checks `url` (the key `auth.jwks`); a `file://` set is read at once.
    pub(super) fn new(
        url: &str,
        ca_file: Option<&str>,
        algorithms: Vec<Algorithm>,
    ) -> Result<Jwks, AuthConfigError> {
        let bad = |m: String| AuthConfigError::new("auth.jwks", m);
        let source = if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(bad(format!(
                    "'{url}': a file URL needs an absolute path (file:///etc/jwks.json)"
                )));
            }
            Source::File(PathBuf::from(path))
        } else if url.starts_with("https://") || url.starts_with("http://") {
            let uri = http::Uri::from_str(url).map_err(|e| bad(format!("'{url}': {e}")))?;
            let host = uri.host().unwrap_or_default();
            if uri.scheme_str() == Some("http") && !is_loopback(host) {
                return Err(bad(format!(
                    "'{url}': plain http:// is allowed for loopback hosts only; use https://"
                )));
            }
            if uri.scheme_str() == Some("https") {
                Source::Https(uri, Arc::new(tls_config(ca_file)?))
            } else {
                Source::Http(uri)
            }
        } else {
            return Err(bad(format!(
                "'{url}' must start with file://, https:// or http://"
            )));
        };
        let jwks = Jwks {
            source,
            url: url.to_owned(),
            algorithms,
            keys: RwLock::new(Arc::from(Vec::new())),
            last_kid_refresh: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
        };
        if let Source::File(path) = &jwks.source {
            let text = std::fs::read(path)
                .map_err(|e| bad(format!("cannot read {}: {e}", path.display())))?;
            let keys = jwks.parse(&text).map_err(bad)?;
            jwks.set(keys);
        }
        Ok(jwks)
    }

    /// Whether the set is fetched over the network (and so not read yet by [`Jwks::new`]).
    pub(super) fn is_remote(&self) -> bool {
        matches!(self.source, Source::Http(_) | Source::Https(..))
    }

    /// The keys now.
    pub(super) fn snapshot(&self) -> Arc<[PublicKey]> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, keys: Vec<PublicKey>) {
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::from(keys);
    }

    /// Fetches the set now and replaces the keys. A failure keeps the old keys and is
    /// returned (the caller logs it, or stops the start-up).
    pub(super) async fn refresh(&self) -> Result<usize, String> {
        let _one = self.fetching.lock().await;
        let body = match &self.source {
            Source::File(path) => tokio::fs::read(path)
                .await
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
            Source::Http(uri) => tokio::time::timeout(FETCH_TIMEOUT, fetch(uri, None))
                .await
                .map_err(|_| format!("no answer within {FETCH_TIMEOUT:?}"))??,
            Source::Https(uri, tls) => tokio::time::timeout(FETCH_TIMEOUT, fetch(uri, Some(tls)))
                .await
                .map_err(|_| format!("no answer within {FETCH_TIMEOUT:?}"))??,
        };
        let keys = self.parse(&body)?;
        let n = keys.len();
        self.set(keys);
        tracing::debug!(jwks = %self.url, keys = n, "auth.jwks refreshed");
        Ok(n)
    }

    /// A refresh because a token named an unknown `kid`: at most once per
    /// [`UNKNOWN_KID_REFRESH`]; a caller that comes while one runs waits for it. Returns
    /// whether the keys may have changed (worth verifying again).
    pub(super) async fn refresh_for_unknown_kid(&self) -> bool {
        let due = {
            let mut last = self
                .last_kid_refresh
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let due = last.is_none_or(|t| now.duration_since(t) >= UNKNOWN_KID_REFRESH);
            if due {
                *last = Some(now);
            }
            due
        };
        if !due {
            // A refresh in flight may bring the key: wait for it rather than refuse.
            if self.fetching.try_lock().is_err() {
                let _done = self.fetching.lock().await;
                return true;
            }
            return false;
        }
        match self.refresh().await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(jwks = %self.url, error = %e, "auth.jwks refresh for an unknown kid failed; keeping the last good key set");
                false
            }
        }
    }

    /// The keys of a JWKS document usable for `algorithms`; others are skipped with a log
    /// line (an identity provider often publishes keys for other uses too).
    fn parse(&self, body: &[u8]) -> Result<Vec<PublicKey>, String> {
        let set: JwkSet = serde_json::from_slice(body)
            .map_err(|e| format!("{}: not a JSON Web Key Set: {e}", self.url))?;
        let mut keys = Vec::with_capacity(set.keys.len());
        for jwk in &set.keys {
            match self.key(jwk) {
                Ok(k) => keys.push(k),
                Err(why) => {
                    tracing::debug!(jwks = %self.url, kid = ?jwk.common.key_id, why, "auth.jwks: key skipped")
                }
            }
        }
        if keys.is_empty() && !set.keys.is_empty() {
            tracing::warn!(jwks = %self.url, "auth.jwks has no key usable with auth.algorithms");
        }
        Ok(keys)
    }

    fn key(&self, jwk: &Jwk) -> Result<PublicKey, &'static str> {
        if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
            return Err("an encryption key");
        }
        let algorithm = match jwk.common.key_algorithm {
            Some(a) => {
                Algorithm::from_str(&a.to_string()).map_err(|_| "not a signing algorithm")?
            }
            None => self.guess_algorithm(&jwk.algorithm)?,
        };
        if !self.algorithms.contains(&algorithm) {
            return Err("its algorithm is not in auth.algorithms");
        }
        if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
            return Err("a symmetric key (secrets are not read from a key set)");
        }
        let key = DecodingKey::from_jwk(jwk).map_err(|_| "not a valid key")?;
        Ok(PublicKey {
            kid: jwk.common.key_id.clone(),
            algorithm,
            key,
        })
    }

    /// A key without `alg`: its curve says it for EC and OKP keys; an RSA key is used for
    /// the one RSA algorithm allowed, if there is exactly one.
    fn guess_algorithm(&self, params: &AlgorithmParameters) -> Result<Algorithm, &'static str> {
        match params {
            AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                EllipticCurve::P256 => Ok(Algorithm::ES256),
                EllipticCurve::P384 => Ok(Algorithm::ES384),
                _ => Err("an unsupported curve"),
            },
            AlgorithmParameters::OctetKeyPair(_) => Ok(Algorithm::EdDSA),
            AlgorithmParameters::RSA(_) => {
                let mut rsa = self.algorithms.iter().filter(|a| {
                    matches!(
                        a,
                        Algorithm::RS256
                            | Algorithm::RS384
                            | Algorithm::RS512
                            | Algorithm::PS256
                            | Algorithm::PS384
                            | Algorithm::PS512
                    )
                });
                match (rsa.next(), rsa.next()) {
                    (Some(a), None) => Ok(*a),
                    _ => Err("an RSA key without alg, and not exactly one RSA algorithm allowed"),
                }
            }
            _ => Err("no alg and no way to tell it"),
        }
    }
}

/// Refreshes `jwks` every `every` while anything holds it.
pub(super) fn spawn_refresher(jwks: Weak<Jwks>, every: Duration) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let Some(jwks) = jwks.upgrade() else {
                return;
            };
            if let Err(e) = jwks.refresh().await {
                tracing::warn!(jwks = %jwks.url, error = %e, "auth.jwks refresh failed; keeping the last good key set");
            }
        }
    });
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The TLS client of an `https://` set: the system's trust store and `ca_file`
/// (`auth.jwks_ca`); errors name the key at fault.
fn tls_config(ca_file: Option<&str>) -> Result<rustls::ClientConfig, AuthConfigError> {
    crate::tls::client_config(ca_file, "auth.jwks").map_err(|e| match e {
        crate::tls::TlsError::Ca(m) => AuthConfigError::new("auth.jwks_ca", m),
        crate::tls::TlsError::Tls(m) => AuthConfigError::new("auth.jwks", m),
    })
}

/// `GET uri` over HTTP/1.1, in TLS when `tls` is given (plain HTTP is for loopback only,
/// checked by [`Jwks::new`]); the body of a 200, at most [`MAX_JWKS_BYTES`].
async fn fetch(
    uri: &http::Uri,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<Vec<u8>, String> {
    let host = uri.host().ok_or("no host")?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri
        .port_u16()
        .unwrap_or(if tls.is_some() { 443 } else { 80 });
    let stream = tokio::net::TcpStream::connect((bare, port))
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    match tls {
        None => request(uri, host, stream).await,
        Some(tls) => {
            let name = rustls_pki_types::ServerName::try_from(bare.to_owned())
                .map_err(|e| format!("TLS: {e}"))?;
            let stream = tokio_rustls::TlsConnector::from(tls.clone())
                .connect(name, stream)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            request(uri, host, stream).await
        }
    }
}

async fn request<S>(uri: &http::Uri, host: &str, stream: S) -> Result<Vec<u8>, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or(host);
    let request = http::Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(http::header::HOST, authority)
        .header(
            http::header::ACCEPT,
            "application/json, application/jwk-set+json",
        )
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("HTTP: {e}"))?;
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        if response.status() != http::StatusCode::OK {
            return Err(format!("answered {}", response.status()));
        }
        let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map_err(|e| format!("reading the body: {e}"))?;
        Ok(body.to_bytes().to_vec())
    }
    .await;
    driver.abort();
    result
}
