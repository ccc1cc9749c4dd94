//! Calls to the application backend: the connect, subscribe, publish and rpc proxies
//! (docs/protocol.md 9.1, docs/proxies.md).
//!
//! A node has one [`Proxies`]: one pooled HTTP/1.1 client (keep-alive connections to the
//! backend are reused across calls and connections), one endpoint per configured proxy, and
//! one semaphore bounding the calls in flight. A call that finds the semaphore full is
//! answered `unavailable` at once: queueing would let a slow backend hold an unbounded number
//! of client commands (and their memory) on this node. There are no retries: a command the
//! backend may have seen is not sent twice behind the client's back.
//!
//! Every call is a `POST` of a JSON object, answered with a JSON object: either the proxy's
//! answer or `{"error": {"code", "message"}}`. Anything else (another status than 2xx, a
//! body that is not such an object, no answer within the proxy's `timeout`) is a failure,
//! which the client sees as `unavailable` (connect: 503).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use switchboard_protocol::wire::ErrorCode;
use tokio::sync::Semaphore;

pub use crate::metrics::{ProxyKind, ProxyResult};
use crate::{
    Refusal, User,
    config::{NamespaceConfig, NamespaceProxy, ProxiesConfig, ProxyConfig},
    error::Refused,
    metrics::Metrics,
};

/// Largest backend answer read; a longer one is a failure (the answer is held in memory
/// while it is parsed, and a publication's data is bounded by what clients may send anyway).
const MAX_ANSWER: usize = 1 << 20;
/// Longest backend error message passed on to a client, in bytes.
const MAX_MESSAGE: usize = 256;
/// Idle keep-alive connections to the backend are closed after this long.
const POOL_IDLE: Duration = Duration::from_secs(60);

/// The pooled client's connector: `https://` endpoints in TLS, `http://` ones in the clear.
type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// One configured proxy endpoint.
#[derive(Debug)]
struct Endpoint {
    uri: Uri,
    timeout: Duration,
    /// The client request headers passed on, lower case.
    headers: Vec<HeaderName>,
}

impl Endpoint {
    fn new(config: &ProxyConfig) -> Option<Endpoint> {
        // `Config::load` validated these; a hand-built configuration with a bad URL simply has
        // no such proxy (logged), rather than a node that cannot be built.
        let uri = match config.url.parse::<Uri>() {
            Ok(u) => u,
            Err(e) => {
                tracing::error!(url = %config.url, error = %e, "proxy url is invalid; proxy off");
                return None;
            }
        };
        let headers = config
            .headers
            .iter()
            .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok())
            .collect();
        Some(Endpoint {
            uri,
            timeout: config.timeout,
            headers,
        })
    }
}

/// The node's backend proxies: see the module docs.
pub struct Proxies {
    client: Client<Connector, Full<Bytes>>,
    endpoints: [Option<Endpoint>; 4],
    permits: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Proxies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxies")
            .field("endpoints", &self.endpoints)
            .field("available_permits", &self.permits.available_permits())
            .finish()
    }
}

/// The backend's refusal: `{"error": {"code", "message"}}`.
#[derive(Debug, Deserialize)]
struct BackendError {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

#[derive(Debug, Deserialize)]
struct ErrorProbe {
    #[serde(default)]
    error: Option<BackendError>,
}

/// Reads a field that may be `null` as `Some(null)`: `"data": null` replaces data with `null`,
/// a missing `data` keeps it.
pub(crate) fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

/// The connect proxy's answer.
#[derive(Debug, Deserialize)]
pub struct ConnectAnswer {
    /// The user id, 1 to 128 bytes (`""`: an anonymous connection).
    pub user: String,
    /// Expiry in unix seconds (the connection is closed with 4501 then).
    #[serde(default)]
    pub expires: Option<u64>,
    /// Shown to others in presence, join and leave: a JSON object of at most 1 KiB.
    #[serde(default)]
    pub info: Option<Box<RawValue>>,
    /// Rooms subscribed at connect, as a token's `rooms` claim.
    #[serde(default)]
    pub rooms: Vec<String>,
}

/// An answer that may carry `data` (publish: the replacement; rpc: the result).
#[derive(Debug, Deserialize)]
pub struct DataAnswer {
    /// `Some` when the answer has a `data` field, `null` included.
    #[serde(default, deserialize_with = "present")]
    pub data: Option<Box<RawValue>>,
}

impl Proxies {
    /// The TLS client of the `https://` endpoints: the system's trust store and
    /// `proxies.ca`. Without an `https://` URL nor a `proxies.ca` it trusts nothing, so that
    /// nodes without TLS backends do not read the system's store.
    pub fn tls(
        config: &ProxiesConfig,
    ) -> Result<Arc<rustls::ClientConfig>, crate::tls::TlsConfigError> {
        let https = [
            &config.connect,
            &config.subscribe,
            &config.publish,
            &config.rpc,
        ]
        .into_iter()
        .flatten()
        .any(|p| p.url.starts_with("https://"));
        let tls = if https || config.ca.is_some() {
            crate::tls::client_config(config.ca.as_deref(), "proxies").map_err(|e| match e {
                crate::tls::TlsError::Ca(m) => crate::tls::TlsConfigError {
                    key: "proxies.ca",
                    message: m,
                },
                crate::tls::TlsError::Tls(m) => crate::tls::TlsConfigError {
                    key: "proxies",
                    message: m,
                },
            })?
        } else {
            #[allow(deprecated, reason = "the ring provider is what this build has")]
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| crate::tls::TlsConfigError {
                    key: "proxies",
                    message: format!("TLS: {e}"),
                })?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        };
        Ok(Arc::new(tls))
    }

    /// The proxies of `config`, calling `https://` endpoints with `tls` (from
    /// [`Proxies::tls`]), counting into `metrics`.
    pub fn new(
        config: &ProxiesConfig,
        tls: Arc<rustls::ClientConfig>,
        metrics: Arc<Metrics>,
    ) -> Proxies {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_secs(5)));
        // `https://` URLs need the connector to hand the stream on to TLS.
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(Arc::unwrap_or_clone(tls))
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .build(connector);
        let endpoint = |c: &Option<ProxyConfig>| c.as_ref().and_then(Endpoint::new);
        Proxies {
            client,
            endpoints: [
                endpoint(&config.connect),
                endpoint(&config.subscribe),
                endpoint(&config.publish),
                endpoint(&config.rpc),
            ],
            permits: Arc::new(Semaphore::new(config.max_in_flight.max(1))),
            metrics,
        }
    }

    /// Whether `kind` is configured.
    pub fn configured(&self, kind: ProxyKind) -> bool {
        self.endpoints[kind as usize].is_some()
    }

    /// The configured headers of `kind` found in `headers`, as the call's `headers` object
    /// (names in lower case; repeated headers joined with `, `, cookies with `; `).
    pub fn pass_headers(&self, kind: ProxyKind, headers: &HeaderMap) -> PassedHeaders {
        let mut out = serde_json::Map::new();
        let Some(endpoint) = &self.endpoints[kind as usize] else {
            return out;
        };
        for name in &endpoint.headers {
            let values: Vec<&str> = headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            if values.is_empty() {
                continue;
            }
            let sep = if name == header::COOKIE { "; " } else { ", " };
            out.insert(name.as_str().to_owned(), values.join(sep).into());
        }
        out
    }

    /// The request headers the subscribe, publish and rpc proxies pass on, taken from the
    /// request that opens a connection: `None` (nothing kept with the connection) when those
    /// proxies pass none or the request has none of them.
    pub fn command_headers(&self, headers: &HeaderMap) -> Option<Box<PassedHeaders>> {
        let mut out = serde_json::Map::new();
        for kind in [ProxyKind::Subscribe, ProxyKind::Publish, ProxyKind::Rpc] {
            out.append(&mut self.pass_headers(kind, headers));
        }
        (!out.is_empty()).then(|| Box::new(out))
    }

    /// Of the headers kept by [`Proxies::command_headers`], those `kind` passes on.
    fn kept_headers(&self, kind: ProxyKind, kept: Option<&PassedHeaders>) -> PassedHeaders {
        let (Some(endpoint), Some(kept)) = (&self.endpoints[kind as usize], kept) else {
            return PassedHeaders::new();
        };
        endpoint
            .headers
            .iter()
            .filter_map(|name| {
                let (k, v) = kept.get_key_value(name.as_str())?;
                Some((k.clone(), v.clone()))
            })
            .collect()
    }

    /// Calls `kind` with `body`: the answer's bytes when the backend allowed, its refusal
    /// (code mapped by [`backend_code`]) when it refused, `unavailable` when the call failed.
    /// A proxy that is not configured is `unavailable` too.
    pub async fn call(&self, kind: ProxyKind, body: &impl Serialize) -> Result<Bytes, Refused> {
        let Some(endpoint) = &self.endpoints[kind as usize] else {
            return Err(unavailable(kind, "is not configured"));
        };
        let Ok(_permit) = self.permits.try_acquire() else {
            self.metrics.proxy_call(kind, ProxyResult::Overloaded, None);
            tracing::warn!(
                proxy = kind.as_str(),
                "backend call refused: proxies.max_in_flight calls already in flight"
            );
            return Err(unavailable(kind, "is busy (too many calls in flight)"));
        };
        let body = serde_json::to_vec(body).map_err(|_| unavailable(kind, "failed"))?;
        let started = Instant::now();
        let outcome = tokio::time::timeout(endpoint.timeout, self.send(endpoint, body)).await;
        let elapsed = Some(started.elapsed());
        let answer = match outcome {
            Err(_) => {
                self.metrics.proxy_call(kind, ProxyResult::Timeout, elapsed);
                tracing::warn!(proxy = kind.as_str(), timeout = ?endpoint.timeout, "backend call timed out");
                return Err(unavailable(kind, "timed out"));
            }
            Ok(Err(why)) => {
                self.metrics.proxy_call(kind, ProxyResult::Error, elapsed);
                tracing::warn!(proxy = kind.as_str(), error = %why, "backend call failed");
                return Err(unavailable(kind, "failed"));
            }
            Ok(Ok(answer)) => answer,
        };
        match serde_json::from_slice::<ErrorProbe>(&answer) {
            Ok(ErrorProbe { error: None }) => {
                self.metrics.proxy_call(kind, ProxyResult::Ok, elapsed);
                Ok(answer)
            }
            Ok(ErrorProbe { error: Some(e) }) => {
                self.metrics.proxy_call(kind, ProxyResult::Refused, elapsed);
                let mut message = e.message;
                if message.is_empty() {
                    message = format!("refused by the application ({} proxy)", kind.as_str());
                }
                truncate(&mut message, MAX_MESSAGE);
                Err(Refused::new(backend_code(&e.code), message))
            }
            Err(e) => {
                self.metrics.proxy_call(kind, ProxyResult::Error, elapsed);
                tracing::warn!(proxy = kind.as_str(), error = %e, "backend answer is not a JSON object");
                Err(unavailable(kind, "failed"))
            }
        }
    }

    /// One POST, its answer's body when the status is 2xx.
    async fn send(&self, endpoint: &Endpoint, body: Vec<u8>) -> Result<Bytes, String> {
        let request = Request::builder()
            .method(Method::POST)
            .uri(endpoint.uri.clone())
            .header(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )
            .header(header::ACCEPT, HeaderValue::from_static("application/json"))
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| format!("{e:?}"))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("the backend answered {status}"));
        }
        let body = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?;
        Ok(body.to_bytes())
    }
}

/// Request headers passed on in a call's `headers` object (lower-case names).
pub type PassedHeaders = serde_json::Map<String, serde_json::Value>;

/// The body of a subscribe call.
#[derive(Serialize)]
struct SubscribeCall<'a> {
    user: &'a str,
    connection: &'a str,
    room: &'a str,
    headers: PassedHeaders,
}

/// The body of a publish call.
#[derive(Serialize)]
struct PublishCall<'a> {
    user: &'a str,
    connection: &'a str,
    room: &'a str,
    data: &'a RawValue,
    headers: PassedHeaders,
}

/// The body of an rpc call.
#[derive(Serialize)]
struct RpcCall<'a> {
    user: &'a str,
    connection: &'a str,
    method: &'a str,
    data: &'a RawValue,
    headers: PassedHeaders,
}

/// The body of a connect call.
#[derive(Serialize)]
struct ConnectCall<'a> {
    connection: &'a str,
    transport: &'static str,
    ip: Option<String>,
    headers: PassedHeaders,
}

/// Most rooms a connect answer may subscribe a connection to (more are dropped, as the
/// connection could not hold them: `limits.subscriptions_per_connection` is lower).
const MAX_CONNECT_ROOMS: usize = 1024;

impl Proxies {
    /// The subscribe proxy's decision for `room`, when its namespace `ns` uses it (after the
    /// namespace's own policy allowed). `Ok` when the namespace does not use it. `headers`:
    /// the connection's [`Proxies::command_headers`].
    pub async fn check_subscribe(
        &self,
        ns: &NamespaceConfig,
        user: &User,
        connection: &str,
        room: &str,
        headers: Option<&PassedHeaders>,
    ) -> Result<(), Refused> {
        if !ns.proxies.contains(&NamespaceProxy::Subscribe) {
            return Ok(());
        }
        let call = SubscribeCall {
            user: &user.id,
            connection,
            room,
            headers: self.kept_headers(ProxyKind::Subscribe, headers),
        };
        self.call(ProxyKind::Subscribe, &call).await.map(drop)
    }

    /// The publish proxy's decision for a publication of `data` to `room`, when its
    /// namespace `ns` uses it: `Ok(Some(replacement))` when the backend replaced the data,
    /// `Ok(None)` to publish `data` as it is.
    pub async fn check_publish(
        &self,
        ns: &NamespaceConfig,
        user: &User,
        connection: &str,
        room: &str,
        data: &RawValue,
        headers: Option<&PassedHeaders>,
    ) -> Result<Option<Bytes>, Refused> {
        if !ns.proxies.contains(&NamespaceProxy::Publish) {
            return Ok(None);
        }
        let call = PublishCall {
            user: &user.id,
            connection,
            room,
            data,
            headers: self.kept_headers(ProxyKind::Publish, headers),
        };
        let answer = self.call(ProxyKind::Publish, &call).await?;
        let answer: DataAnswer = serde_json::from_slice(&answer).map_err(|e| {
            tracing::warn!(error = %e, "publish proxy answer is not {{\"data\"?}}");
            unavailable(
                ProxyKind::Publish,
                "answered something else than {\"data\"?}",
            )
        })?;
        let Some(data) = answer.data else {
            return Ok(None);
        };
        // The replacement is stored and replayed like a client's data: the same refusal of
        // values clients would parse differently (docs/protocol.md 5).
        if let Err(e) = crate::limits::check_data(data.get()) {
            tracing::warn!(error = %e, "publish proxy replaced data with an unsafe value");
            return Err(unavailable(
                ProxyKind::Publish,
                "answered data that cannot be published",
            ));
        }
        Ok(Some(Bytes::copy_from_slice(data.get().as_bytes())))
    }

    /// The rpc proxy's answer to `method` with `data`: the `data` of the answer (`null` when
    /// it has none). `unavailable` without an rpc proxy.
    pub async fn rpc(
        &self,
        user: &User,
        connection: &str,
        method: &str,
        data: &RawValue,
        headers: Option<&PassedHeaders>,
    ) -> Result<Box<RawValue>, Refused> {
        if !self.configured(ProxyKind::Rpc) {
            return Err(Refused::new(
                ErrorCode::Unavailable,
                "no RPC proxy is configured",
            ));
        }
        let call = RpcCall {
            user: &user.id,
            connection,
            method,
            data,
            headers: self.kept_headers(ProxyKind::Rpc, headers),
        };
        let answer = self.call(ProxyKind::Rpc, &call).await?;
        let answer: DataAnswer = serde_json::from_slice(&answer).map_err(|e| {
            tracing::warn!(error = %e, "rpc proxy answer is not {{\"data\"?}}");
            unavailable(ProxyKind::Rpc, "answered something else than {\"data\"?}")
        })?;
        Ok(answer
            .data
            .unwrap_or_else(|| RawValue::from_string("null".into()).expect("null is JSON")))
    }

    /// Who a connection without a token is, according to the connect proxy: 401 when the
    /// backend refuses, 503 when it cannot answer. Call it only when the proxy is configured.
    pub async fn connect(
        &self,
        connection: &str,
        transport: crate::metrics::Transport,
        client_ip: Option<std::net::IpAddr>,
        headers: &HeaderMap,
    ) -> Result<User, Refusal> {
        let call = ConnectCall {
            connection,
            transport: transport.as_str(),
            ip: client_ip.map(|ip| ip.to_string()),
            headers: self.pass_headers(ProxyKind::Connect, headers),
        };
        let failed = |message: &str| {
            let mut r = Refusal::unavailable("connect_proxy", Duration::from_secs(1));
            r.body["message"] = message.into();
            r
        };
        let answer = match self.call(ProxyKind::Connect, &call).await {
            Ok(a) => a,
            Err(r) if r.code == ErrorCode::Unavailable => return Err(failed(&r.message)),
            Err(r) => {
                let mut refusal = Refusal::unauthorized("connect_proxy");
                refusal.body["message"] = r.message.as_ref().into();
                return Err(refusal);
            }
        };
        let answer: ConnectAnswer = serde_json::from_slice(&answer).map_err(|e| {
            tracing::warn!(error = %e, "connect proxy answer is not {{\"user\", ...}}");
            failed("the application backend (connect proxy) answered without a valid 'user'")
        })?;
        if answer.user.len() > 128 {
            tracing::warn!("connect proxy answered a user id over 128 bytes");
            return Err(failed(
                "the application backend (connect proxy) answered a user id over 128 bytes",
            ));
        }
        let info = match answer.info {
            None => None,
            Some(i) if i.get().starts_with('{') && i.get().len() <= 1024 => {
                Some(Bytes::copy_from_slice(i.get().as_bytes()))
            }
            Some(_) => {
                tracing::warn!(
                    "connect proxy answered an info that is not an object of at most 1 KiB"
                );
                return Err(failed(
                    "the application backend (connect proxy) answered an invalid 'info'",
                ));
            }
        };
        let mut rooms = answer.rooms;
        rooms.truncate(MAX_CONNECT_ROOMS);
        Ok(User {
            id: answer.user.as_str().into(),
            info,
            expires: answer.expires,
            rooms,
        })
    }
}

/// `unavailable` for a failed call of `kind`.
fn unavailable(kind: ProxyKind, what: &str) -> Refused {
    Refused::new(
        ErrorCode::Unavailable,
        format!(
            "the application backend ({} proxy) {what}; nothing was done",
            kind.as_str()
        ),
    )
}

/// The error code a client gets for a backend's `error.code`: the codes of docs/protocol.md
/// 7.1 that make sense for an application's refusal pass through, anything else (a code of
/// the application's own, such as `permission_denied`) is `forbidden`.
pub fn backend_code(code: &str) -> ErrorCode {
    match code {
        "bad_request" => ErrorCode::BadRequest,
        "unauthorized" => ErrorCode::Unauthorized,
        "limit_exceeded" => ErrorCode::LimitExceeded,
        "unavailable" => ErrorCode::Unavailable,
        "internal" => ErrorCode::Internal,
        _ => ErrorCode::Forbidden,
    }
}

fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_codes_map_to_protocol_codes() {
        assert_eq!(backend_code("bad_request"), ErrorCode::BadRequest);
        assert_eq!(backend_code("permission_denied"), ErrorCode::Forbidden);
        assert_eq!(backend_code(""), ErrorCode::Forbidden);
        assert_eq!(backend_code("rate_limited"), ErrorCode::Forbidden);
    }

    #[test]
    fn data_null_is_present_and_missing_data_is_not() {
        let a: DataAnswer = serde_json::from_str(r#"{"data": null}"#).unwrap();
        assert_eq!(a.data.map(|d| d.get().to_owned()).as_deref(), Some("null"));
        let a: DataAnswer = serde_json::from_str("{}").unwrap();
        assert!(a.data.is_none());
    }

    #[test]
    fn long_messages_are_cut_on_a_char_boundary() {
        let mut s = "é".repeat(200);
        truncate(&mut s, 255);
        assert_eq!(s.len(), 254);
    }

    #[test]
    fn only_configured_headers_are_passed_on() {
        let config = ProxiesConfig {
            connect: Some(ProxyConfig {
                url: "http://127.0.0.1:1/connect".into(),
                timeout: Duration::from_secs(1),
                headers: vec!["Cookie".into(), "X-Forwarded-For".into()],
            }),
            ..ProxiesConfig::default()
        };
        let tls = Proxies::tls(&config).unwrap();
        let p = Proxies::new(&config, tls, Arc::new(Metrics::default()));
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1"));
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        h.append(header::AUTHORIZATION, HeaderValue::from_static("secret"));
        let passed = p.pass_headers(ProxyKind::Connect, &h);
        assert_eq!(
            serde_json::Value::Object(passed),
            serde_json::json!({"cookie": "a=1; b=2"})
        );
        assert!(p.pass_headers(ProxyKind::Rpc, &h).is_empty());
        // No command proxy passes headers: a connection keeps nothing.
        assert!(p.command_headers(&h).is_none());
    }

    #[test]
    fn command_proxies_get_only_their_own_headers() {
        let proxy = |headers: &[&str]| {
            Some(ProxyConfig {
                url: "http://127.0.0.1:1/p".into(),
                timeout: Duration::from_secs(1),
                headers: headers.iter().map(|h| (*h).into()).collect(),
            })
        };
        let config = ProxiesConfig {
            subscribe: proxy(&["Cookie"]),
            rpc: proxy(&["Authorization", "X-Tenant"]),
            publish: proxy(&[]),
            ..ProxiesConfig::default()
        };
        let tls = Proxies::tls(&config).unwrap();
        let p = Proxies::new(&config, tls, Arc::new(Metrics::default()));
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("s=1"));
        h.append(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        h.append(header::USER_AGENT, HeaderValue::from_static("curl"));
        let kept = p
            .command_headers(&h)
            .expect("subscribe and rpc pass headers");
        assert_eq!(
            serde_json::Value::Object((*kept).clone()),
            serde_json::json!({"cookie": "s=1", "authorization": "Bearer x"})
        );
        let of = |kind| serde_json::Value::Object(p.kept_headers(kind, Some(&kept)));
        assert_eq!(
            of(ProxyKind::Subscribe),
            serde_json::json!({"cookie": "s=1"})
        );
        assert_eq!(
            of(ProxyKind::Rpc),
            serde_json::json!({"authorization": "Bearer x"})
        );
        assert_eq!(of(ProxyKind::Publish), serde_json::json!({}));
    }
}
