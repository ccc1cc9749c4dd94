//! Routes: a path, a [`Handler`] and its transport options, and the upgrade that connects them.
//!
//! The upgrade is validated by the protocol crate; every refusal answers with its documented
//! status and a JSON body (docs/protocol.md section 7): 400 for a malformed upgrade or an
//! unsupported subprotocol, 426 for a version other than 13, and whatever the handler's
//! `authenticate` refuses with.

use std::{future::Future, net::SocketAddr, pin::Pin, sync::Arc, time::Duration};

use axum::body::Body;
use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use switchboard_protocol::{
    HandshakeError, Role,
    codec::Encoder,
    deflate::{self, DeflateConfig},
    handshake,
};
use tokio::net::{TcpStream, UnixStream};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;

use crate::{
    config::WebSocketConfig,
    conn::ConnShared,
    handler::{Connection, Handler, Refusal, RouteShared, UpgradeContext, User},
    limits::{self, Admission, Admitted, Cidr},
    metrics::Transport,
    origin::OriginPolicy,
    transport::ws,
};

/// Transport options of one route.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RouteOptions {
    /// Largest message accepted (after decompression); 1009 beyond it.
    pub max_message_size: usize,
    /// Outbound queue bound in bytes; 4500 beyond it.
    pub outbound_queue: usize,
    /// Server ping interval.
    pub ping_interval: Duration,
    /// Close with 4504 after this long without any frame from the peer.
    pub idle_timeout: Duration,
    /// permessage-deflate.
    pub deflate: DeflateConfig,
    /// Subprotocols this route speaks. Empty: it selects none and refuses none.
    pub protocols: Vec<&'static str>,
    /// Which browser origins may connect (403 `origin_not_allowed` otherwise).
    pub origins: OriginPolicy,
}

impl RouteOptions {
    /// Options from the `[websocket]` configuration section.
    pub fn from_config(ws: &WebSocketConfig) -> Self {
        RouteOptions {
            max_message_size: ws.max_message_size.as_usize(),
            outbound_queue: ws.outbound_queue.as_usize(),
            ping_interval: ws.ping_interval,
            idle_timeout: ws.idle_timeout,
            deflate: ws.compression.deflate_config(),
            protocols: Vec::new(),
            origins: OriginPolicy::from_list(&ws.allowed_origins),
        }
    }

    /// Sets the subprotocols the route speaks.
    pub fn with_protocols(mut self, protocols: &[&'static str]) -> Self {
        self.protocols = protocols.to_vec();
        self
    }
}

impl Default for RouteOptions {
    fn default() -> Self {
        Self::from_config(&WebSocketConfig::default())
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type UpgradeFn = dyn Fn(Request<Body>, RouteContext) -> BoxFuture<Response<Body>> + Send + Sync;

/// What the server lends a route for each upgrade.
#[derive(Debug, Clone)]
pub(crate) struct RouteContext {
    /// What the route's connections share: hub, node, registry.
    pub(crate) route: Arc<RouteShared>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) tracker: TaskTracker,
    /// The per-user and per-IP counts (`None`: not limited).
    pub(crate) admission: Option<Arc<dyn Admission>>,
    /// Open connections on the node beyond which upgrades get 503 (0: no limit).
    pub(crate) max_connections: usize,
    /// Peers whose `X-Forwarded-For` names the client (`trusted_proxies`).
    pub(crate) trusted_proxies: Arc<[Cidr]>,
}

/// A path served by a [`Handler`].
#[derive(Clone)]
pub struct Route {
    pub(crate) path: String,
    pub(crate) options: Arc<RouteOptions>,
    pub(crate) upgrade: Arc<UpgradeFn>,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Route {
    /// Serves `handler` at `path` with `options`.
    pub fn new<H: Handler>(path: &str, handler: H, options: RouteOptions) -> Self {
        let handler = Arc::new(handler);
        let options = Arc::new(options);
        let route_options = options.clone();
        let upgrade = move |req: Request<Body>, ctx: RouteContext| -> BoxFuture<Response<Body>> {
            let handler = handler.clone();
            let options = options.clone();
            Box::pin(async move {
                let metrics = ctx.route.hub.metrics().clone();
                let shutdown = ctx.shutdown.clone();
                let resp = upgrade(handler, options, req, ctx).await;
                let status = resp.status();
                if status != StatusCode::SWITCHING_PROTOCOLS {
                    let draining =
                        status == StatusCode::SERVICE_UNAVAILABLE && shutdown.is_cancelled();
                    metrics.connection_refused(Transport::WebSocket, status.as_u16(), draining);
                }
                resp
            })
        };
        Route {
            path: path.to_string(),
            options: route_options,
            upgrade: Arc::new(upgrade),
        }
    }
}

/// A JSON response `{"error": error, "reason": reason}`.
pub(crate) fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .expect("static response parts are valid")
}

fn handshake_refusal(e: &HandshakeError, supported: &[&str]) -> Response<Body> {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
    let mut body = serde_json::json!({
        "error": if status == StatusCode::UPGRADE_REQUIRED { "upgrade_required" } else { "bad_request" },
        "reason": e.to_string(),
    });
    if matches!(e, HandshakeError::Subprotocol) {
        body["supported"] = serde_json::json!(supported);
    }
    let mut resp = json_response(status, &body);
    if status == StatusCode::UPGRADE_REQUIRED {
        resp.headers_mut()
            .insert("sec-websocket-version", HeaderValue::from_static("13"));
    }
    resp
}

pub(crate) fn refusal_response(r: Refusal) -> Response<Body> {
    let mut resp = json_response(r.status, &r.body);
    for (k, v) in r.headers {
        resp.headers_mut().insert(k, v);
    }
    resp
}

/// The peer address, inserted into each request by the server.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeerAddr(pub(crate) SocketAddr);

/// The shutdown token of the server, which it puts on every request (the SSE registry's sweeper
/// ends every stream with it).
#[derive(Debug, Clone)]
pub(crate) struct ShutdownToken(pub(crate) CancellationToken);

async fn upgrade<H: Handler>(
    handler: Arc<H>,
    options: Arc<RouteOptions>,
    mut req: Request<Body>,
    ctx: RouteContext,
) -> Response<Body> {
    if ctx.shutdown.is_cancelled() {
        let r = Refusal::unavailable("shutting_down", Duration::from_secs(1));
        return refusal_response(r);
    }
    // RFC 6455 4.1: the opening handshake is an HTTP/1.1 request. An HTTP/1.0 connection
    // cannot be taken over, so it is refused here rather than failing at the upgrade.
    if req.version() < http::Version::HTTP_11 {
        return json_response(
            StatusCode::BAD_REQUEST,
            &serde_json::json!({"error": "bad_request", "reason": "a WebSocket upgrade needs HTTP/1.1"}),
        );
    }
    let up = match handshake::validate_request(req.method(), req.headers()) {
        Ok(up) => up,
        Err(e) => return handshake_refusal(&e, &options.protocols),
    };
    // A route that speaks no subprotocol selects none and refuses none (what clients offer
    // is theirs to check); one that does refuses offers it cannot serve.
    let protocol = if options.protocols.is_empty() {
        None
    } else {
        match handshake::select_subprotocol(&up.protocols, &options.protocols) {
            Ok(p) => p,
            Err(e) => return handshake_refusal(&e, &options.protocols),
        }
    };
    let deflate =
        match deflate::negotiate(up.extensions.iter().map(String::as_str), &options.deflate) {
            Ok(d) => d,
            Err(e) => return handshake_refusal(&e, &options.protocols),
        };
    if let Err(r) = options.origins.check(req.headers()) {
        return refusal_response(r);
    }
    let peer = req.extensions().get::<PeerAddr>().map(|p| p.0);
    let client_ip = peer.map(|p| limits::client_ip(p, req.headers(), &ctx.trusted_proxies));
    // Limits before the token is verified: refusing costs less than verifying.
    if ctx.max_connections > 0 && ctx.route.hub.connection_count() >= ctx.max_connections {
        return refusal_response(Refusal::unavailable("capacity", Duration::from_secs(1)));
    }
    if let Some(node) = &ctx.route.node
        && node.memory_budget().is_some_and(|m| m.over())
    {
        return refusal_response(limits::MemoryBudget::refusal());
    }
    let mut admitted = match (&ctx.admission, client_ip) {
        (Some(admission), Some(ip)) => match Admitted::open_ip(admission, ip).await {
            Ok(a) => Some(Box::new(a)),
            Err(r) => return refusal_response(r.refusal()),
        },
        _ => None,
    };
    // The id is made before `authenticate`, which may tell the application backend about
    // the connection (the connect proxy).
    let id = crate::ids::connection_id();
    let accepted = {
        let cx = UpgradeContext {
            headers: req.headers(),
            uri: req.uri(),
            peer,
            client_ip,
            protocols: &up.protocols,
            connection: &id,
        };
        match handler.authenticate(&cx).await {
            Ok(a) => a,
            Err(r) => return refusal_response(r),
        }
    };
    if let Some(admitted) = &mut admitted
        && let Err(r) = admitted.open_user(&accepted.user.id).await
    {
        return refusal_response(r.refusal());
    }
    let Some(on_upgrade) = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        return json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &serde_json::json!({"error": "internal", "reason": "connection cannot be upgraded"}),
        );
    };

    let mut resp = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "Upgrade")
        .header("sec-websocket-accept", &up.accept);
    if let Some(p) = protocol {
        resp = resp.header("sec-websocket-protocol", p);
    }
    let params = deflate.as_ref().map(|(p, _)| *p);
    if let Some((_, h)) = &deflate {
        resp = resp.header("sec-websocket-extensions", h.as_str());
    }

    // A span per connection costs hundreds of bytes in the subscriber's registry: it exists
    // only when debug logging is on. Lines of a connection logged at info and above carry
    // its id as a field instead.
    let span = Some(tracing::debug_span!("conn", id = %id)).filter(|s| !s.is_disabled());
    let conn_span = span.clone();
    let threshold = options.deflate.threshold;
    let route = ctx.route.clone();
    let tracker = ctx.tracker.clone();
    let task = async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        let user = User::shared(accepted.user);
        tracing::debug!(client = ?client_ip, user = %user.id, deflate = params.is_some(), "connected");
        let shared = Arc::new(ConnShared::new(id, options.outbound_queue, params));
        let conn = Connection {
            shared,
            user,
            rooms: Default::default(),
            encoder: Encoder::new(Role::Server, params, threshold),
            close: None,
            route,
            timer: None,
            admitted,
            state: accepted.state,
        };
        // A task of its own: this one holds what the upgrade needed until it ends. A TCP
        // connection, or the local end of a TLS connection's socket pair (server.rs).
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => {
                let task = ws::run(handler, parts.io.into_inner(), parts.read_buf, conn);
                spawn_connection(&tracker, conn_span, task);
            }
            Err(upgraded) => match upgraded.downcast::<TokioIo<UnixStream>>() {
                Ok(parts) => {
                    let task = ws::run(handler, parts.io.into_inner(), parts.read_buf, conn);
                    spawn_connection(&tracker, conn_span, task);
                }
                Err(_) => tracing::error!("upgraded connection is not a TCP or Unix stream"),
            },
        }
    };
    match span {
        Some(span) => ctx.tracker.spawn(task.instrument(span)),
        None => ctx.tracker.spawn(task),
    };
    resp.body(Body::empty()).expect("valid upgrade response")
}

/// Spawns a WebSocket connection's task, in its span when there is one.
fn spawn_connection(
    tracker: &TaskTracker,
    span: Option<tracing::Span>,
    task: impl Future<Output = ()> + Send + 'static,
) {
    match span {
        Some(span) => tracker.spawn(task.instrument(span)),
        None => tracker.spawn(task),
    };
}
