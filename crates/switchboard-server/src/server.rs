//! The listener: HTTP/1.1 and WebSocket on one port, health endpoints, and graceful shutdown.
//!
//! Shutdown (SIGTERM/SIGINT or the future given to [`Server::run`]): stop accepting, answer
//! new upgrade requests with 503, close every WebSocket with 1001, let in-flight HTTP requests
//! finish, and wait at most `shutdown.drain_timeout` for all of it before returning.

use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{Router, body::Body, extract::State, routing::get};
use http::{Request, StatusCode};
use http_body_util::Either;
use hyper_util::rt::TokioIo;
use switchboard_protocol::codec::DecoderConfig;
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::Service;

pub use crate::tls::{ServerTls, TlsConfigError};

/// Why `[tls]` could not be loaded: the name [`TlsConfigError`] had first, kept for callers.
pub type ServerTlsError = TlsConfigError;
use crate::{
    broker::Broker,
    handler::RouteShared,
    http::api::ServerApi,
    hub::Hub,
    limits::{Admission, Cidr, HandshakeTicket},
    metrics::{Metrics, Transport},
    node::Node,
    route::{PeerAddr, Route, RouteContext, json_response},
    transport::{
        direct,
        registry::{Registry, run_sweeper},
    },
};

/// A bound server, ready to run.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    drain_timeout: Duration,
    health: Arc<Health>,
    /// Each WebSocket route's connections, swept by a task of their own.
    sweeps: Vec<Arc<Registry>>,
    /// Handshakes in progress per IP (`None`: not limited).
    admission: Option<Arc<dyn Admission>>,
    /// Largest request head read (hyper's read buffer bound).
    max_request_head: usize,
    metrics: Arc<Metrics>,
    /// Requests for this path (SSE streams) are served off hyper ([`crate::transport::direct`]).
    direct_path: Option<Arc<str>>,
    trusted_proxies: Arc<[Cidr]>,
    /// TLS on every connection (`[tls]`); `None`: plain TCP.
    tls: Option<Arc<ServerTls>>,
    /// The server API's fast path, asked before the router.
    api: Option<ServerApi>,
}

#[derive(Debug, Default)]
struct Health {
    ready: AtomicBool,
    /// Asked on every `/readyz`: a node whose broker cannot serve is not ready.
    broker: Option<Arc<dyn Broker>>,
    /// A node above its memory budget is not ready either (it refuses new connections).
    memory: Option<Arc<crate::limits::MemoryBudget>>,
}

/// Builds a [`Server`] from routes.
#[derive(Debug)]
pub struct ServerBuilder {
    listen: SocketAddr,
    routes: Vec<Route>,
    http: Option<Router>,
    drain_timeout: Duration,
    hub: Hub,
    broker: Option<Arc<dyn Broker>>,
    node: Option<Node>,
    backlog: u32,
    metrics_enabled: bool,
    admission: Option<Arc<dyn Admission>>,
    max_connections: usize,
    max_request_head: usize,
    direct_path: Option<Arc<str>>,
    trusted_proxies: Vec<Cidr>,
    tls: Option<Arc<ServerTls>>,
    api: Option<ServerApi>,
}

impl Server {
    /// A builder listening on `listen`.
    pub fn builder(listen: SocketAddr) -> ServerBuilder {
        ServerBuilder {
            listen,
            routes: Vec::new(),
            http: None,
            drain_timeout: Duration::from_secs(10),
            hub: Hub::new(128),
            broker: None,
            node: None,
            backlog: 1024,
            metrics_enabled: true,
            admission: None,
            max_connections: 0,
            max_request_head: DEFAULT_MAX_REQUEST_HEAD,
            direct_path: None,
            trusted_proxies: Vec::new(),
            tls: None,
            api: None,
        }
    }

    /// Whether connections are served over TLS (`https://`, `wss://`).
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// A token that, when cancelled, starts the graceful shutdown.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Serves until `signal` completes (or the shutdown token is cancelled), then shuts down
    /// gracefully. Returns whether every connection finished within the drain timeout.
    pub async fn run(self, signal: impl Future<Output = ()> + Send) -> bool {
        let Server {
            listener,
            router,
            shutdown,
            tracker,
            drain_timeout,
            health,
            sweeps,
            admission,
            max_request_head,
            metrics,
            direct_path,
            trusted_proxies,
            tls,
            api,
        } = self;
        for registry in sweeps {
            tracker.spawn(run_sweeper(Arc::downgrade(&registry), shutdown.clone()));
        }
        health.ready.store(true, Ordering::Relaxed);
        let mut signal = std::pin::pin!(signal);
        loop {
            tokio::select! {
                _ = &mut signal => break,
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // EMFILE and friends: back off briefly instead of spinning.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    // Handshakes in progress count against the peer's per-IP limit: requests
                    // without a token hold a bounded amount of memory per IP.
                    // A trusted proxy's connections carry many clients: they are counted per
                    // forwarded client at the upgrade, not here per proxy.
                    let proxy = trusted_proxies.iter().any(|c| c.contains(peer.ip()));
                    let ticket = match admission.as_ref().filter(|_| !proxy) {
                        Some(a) => match HandshakeTicket::begin(a, peer.ip()) {
                            Some(t) => Some(t),
                            None => {
                                metrics.connection_refused(Transport::WebSocket, 429, false);
                                // Over TLS a plaintext answer would be garbage, and a
                                // handshake is what the limit saves: the connection closes.
                                if tls.is_none() {
                                    tracker.spawn(refuse_tcp(stream));
                                }
                                continue;
                            }
                        },
                        None => None,
                    };
                    let _ = stream.set_nodelay(true);
                    let router = router.clone();
                    let shutdown = shutdown.clone();
                    let direct_path = direct_path.clone();
                    let router = Routers { router, api: api.clone() };
                    if let Some(tls) = &tls {
                        let conn = TlsConn {
                            peer,
                            router,
                            shutdown,
                            ticket,
                            max_request_head,
                            direct_path,
                            tracker: tracker.clone(),
                        };
                        tracker.spawn(serve_tls(tls.acceptor(), stream, conn));
                        continue;
                    }
                    let streams = tracker.clone();
                    tracker.spawn(async move {
                        if let Some(path) = direct_path
                            && direct::wants(&stream, &path).await
                        {
                            // A stream outlives this task, which is sized for hyper too.
                            let answered = direct::serve(
                                stream, peer, router.router, shutdown, ticket, max_request_head,
                            );
                            if let Some(body) = answered.await {
                                streams.spawn(body.write());
                            }
                        } else {
                            serve_http(stream, peer, router, shutdown, ticket, max_request_head).await;
                        }
                    });
                }
            }
        }
        health.ready.store(false, Ordering::Relaxed);
        shutdown.cancel();
        drop(listener);
        tracker.close();
        tracing::info!(connections = tracker.len(), drain_timeout = ?drain_timeout, "shutting down");
        let drained = tokio::time::timeout(drain_timeout, tracker.wait())
            .await
            .is_ok();
        if drained {
            tracing::info!("shutdown complete");
        } else {
            tracing::warn!(
                remaining = tracker.len(),
                "drain timeout passed; exiting with connections open"
            );
        }
        drained
    }
}

/// The default of `limits.max_request_head`: a 64 KiB token and the usual headers.
pub const DEFAULT_MAX_REQUEST_HEAD: usize = 80 * 1024;

/// The answer to a TCP connection refused before anything was read (too many connections
/// and handshakes from its IP): a 429 written at once, then the connection is closed.
const TCP_REFUSAL: &[u8] = b"HTTP/1.1 429 Too Many Requests\r\n\
content-type: application/json\r\nretry-after: 5\r\nconnection: close\r\ncontent-length: 59\r\n\r\n\
{\"error\":\"too_many_requests\",\"reason\":\"connections_per_ip\"}";

/// Writes [`TCP_REFUSAL`] and closes, reading (and dropping) what the client sends for a
/// moment so that the close does not become a reset that loses the answer.
async fn refuse_tcp(mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(TCP_REFUSAL).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        let mut left: usize = 64 * 1024;
        while left > 0 {
            match stream.read(&mut sink).await? {
                0 => break,
                n => left = left.saturating_sub(n),
            }
        }
        std::io::Result::Ok(())
    })
    .await;
}

/// What a TLS connection's plaintext side is served with (the arguments of a TCP one's).
struct TlsConn {
    peer: SocketAddr,
    router: Routers,
    shutdown: CancellationToken,
    ticket: Option<HandshakeTicket>,
    max_request_head: usize,
    direct_path: Option<Arc<str>>,
    tracker: TaskTracker,
}

/// How long a client may take over its TLS handshake (as over its request head).
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A TLS connection: the handshake (within [`TLS_HANDSHAKE_TIMEOUT`], counted by the peer's
/// handshake ticket), then the plaintext goes through a Unix socket pair: a relay task carries
/// it between rustls and one end, and the other end is served exactly as a TCP connection is
/// (SSE off hyper, hyper, the readiness-driven WebSocket loop), with the client's address.
/// rustls buffers plaintext that socket readiness knows nothing of, so the WebSocket loop
/// cannot drive it itself.
async fn serve_tls(
    acceptor: tokio_rustls::TlsAcceptor,
    stream: tokio::net::TcpStream,
    conn: TlsConn,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let peer = conn.peer;
    let handshake = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream));
    let mut tls = tokio::select! {
        r = handshake => match r {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, %peer, "tls handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "tls handshake timed out");
                return;
            }
        },
        _ = conn.shutdown.cancelled() => return,
    };
    // The first plaintext bytes decide, as a TCP connection's peeked ones do, whether the
    // request is for the SSE endpoint; they are passed on first.
    let mut first = [0u8; 128];
    let n = tokio::select! {
        r = tokio::time::timeout(crate::transport::direct::HEAD_TIMEOUT, tls.read(&mut first)) => match r {
            Ok(Ok(n)) if n > 0 => n,
            _ => return,
        },
        _ = conn.shutdown.cancelled() => return,
    };
    let (mut relay_end, local) = match tokio::net::UnixStream::pair() {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, %peer, "tls: no socket pair for the connection");
            return;
        }
    };
    if relay_end.write_all(&first[..n]).await.is_err() {
        return;
    }
    let direct = conn
        .direct_path
        .as_deref()
        .is_some_and(|path| crate::transport::direct::is_request_for(&first[..n], path));
    conn.tracker.spawn(crate::transport::tls_relay::run(
        tls,
        relay_end,
        conn.shutdown.clone(),
    ));
    let TlsConn {
        peer,
        router,
        shutdown,
        ticket,
        max_request_head,
        ..
    } = conn;
    if direct {
        let streams = conn.tracker.clone();
        conn.tracker.spawn(async move {
            let answered = direct::serve(
                local,
                peer,
                router.router,
                shutdown,
                ticket,
                max_request_head,
            );
            if let Some(body) = answered.await {
                streams.spawn(body.write());
            }
        });
    } else {
        conn.tracker.spawn(serve_http(
            local,
            peer,
            router,
            shutdown,
            ticket,
            max_request_head,
        ));
    }
}

/// What a connection's requests are answered by.
#[derive(Clone)]
struct Routers {
    router: Router,
    /// The server API's fast path, asked first ([`ServerApi::serves`]).
    api: Option<ServerApi>,
}

async fn serve_http<S>(
    stream: S,
    peer: SocketAddr,
    Routers { router, api }: Routers,
    shutdown: CancellationToken,
    ticket: Option<HandshakeTicket>,
    max_request_head: usize,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let token = crate::route::ShutdownToken(shutdown.clone());
    // The HTTP connection counts against its IP until it ends or is upgraded (the upgraded
    // connection is counted by the route): counting only up to the first request would let a
    // client send one small request and then hold unfinished heads uncounted.
    let _ticket = ticket;
    let service = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
        // The API's fast path first: it needs neither the router nor the extensions below
        // (each of which costs an allocation).
        let fast = api
            .as_ref()
            .filter(|_| ServerApi::serves(req.method(), req.uri().path()))
            .cloned();
        let mut router = router.clone();
        if fast.is_none() {
            req.extensions_mut().insert(PeerAddr(peer));
            // SSE streams end with the server.
            req.extensions_mut().insert(token.clone());
        }
        async move {
            match fast {
                Some(api) => Ok(api.call(req).await),
                None => router
                    .call(req.map(Body::new))
                    .await
                    .map(|r| r.map(Either::Right)),
            }
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        // hyper's default (about 400 KiB) would let every unauthenticated connection hold
        // that much; heads larger than this are answered 431.
        .max_buf_size(max_request_head.max(8192))
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, %peer, "http connection error");
            }
        }
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

impl ServerBuilder {
    /// Adds a WebSocket route.
    pub fn route(mut self, route: Route) -> Self {
        self.routes.push(route);
        self
    }

    /// Serves the server API: its routes, and its fast path ([`ServerApi::call`]) asked before
    /// the router.
    pub fn api(mut self, api: ServerApi) -> Self {
        self = self.http(api.router());
        self.api = Some(api);
        self
    }

    /// Merges plain HTTP routes (e.g. the server API).
    pub fn http(mut self, router: Router) -> Self {
        self.http = Some(match self.http.take() {
            Some(r) => r.merge(router),
            None => router,
        });
        self
    }

    /// How long shutdown waits for connections to close.
    pub fn drain_timeout(mut self, d: Duration) -> Self {
        self.drain_timeout = d;
        self
    }

    /// Uses this hub (shared with handlers that fan out).
    pub fn hub(mut self, hub: Hub) -> Self {
        self.hub = hub;
        self
    }

    /// Serves `node`'s service: its hub, its broker behind `/readyz`, and the library API's
    /// rooms and broadcasts through it (across the cluster).
    pub fn node(mut self, node: Node) -> Self {
        self.hub = node.hub().clone();
        self.tls = node.tls().cloned();
        self.broker = Some(node.broker().clone());
        self.node = Some(node);
        self
    }

    /// `/readyz` answers 503 while this broker's [`Broker::ready`] fails.
    pub fn broker(mut self, broker: Arc<dyn Broker>) -> Self {
        self.broker = Some(broker);
        self
    }

    /// The accept queue length (`listen(2)` backlog). Default 1024: connection bursts
    /// beyond the kernel's usual 128 would otherwise wait a second for a SYN retry.
    pub fn backlog(mut self, backlog: u32) -> Self {
        self.backlog = backlog;
        self
    }

    /// Counts connections per user and per IP, new connections per second per IP and
    /// handshakes in progress per IP with `admission` (default: no limits).
    pub fn admission(mut self, admission: Arc<dyn Admission>) -> Self {
        self.admission = Some(admission);
        self
    }

    /// Upgrades are answered 503 while the node has this many open connections (0, the
    /// default: no limit).
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = max;
        self
    }

    /// The largest request head read (at least 8 KiB); 431 beyond. Default
    /// [`DEFAULT_MAX_REQUEST_HEAD`].
    pub fn max_request_head(mut self, bytes: usize) -> Self {
        self.max_request_head = bytes.max(8192);
        self
    }

    /// Serves requests for `path` (a long-lived stream endpoint such as SSE's) on the socket
    /// directly instead of through hyper, so that an idle stream keeps no HTTP buffers. The
    /// response is the router's as for any request; the connection closes after it.
    pub(crate) fn direct_path(mut self, path: &str) -> Self {
        self.direct_path = Some(path.into());
        self
    }

    /// Reverse proxies whose `X-Forwarded-For` / `Forwarded` names the client (default: none;
    /// see [`crate::limits::client_ip`]).
    pub fn trusted_proxies(mut self, trusted: Vec<Cidr>) -> Self {
        self.trusted_proxies = trusted;
        self
    }

    /// Serves every connection over TLS with this certificate (default: plain TCP; a node's
    /// `[tls]` is taken by [`ServerBuilder::node`]).
    pub fn tls(mut self, tls: Arc<ServerTls>) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Whether `GET /metrics` is served (default: yes).
    pub fn metrics(mut self, enabled: bool) -> Self {
        self.metrics_enabled = enabled;
        self
    }

    /// Binds the listener.
    pub async fn bind(self) -> std::io::Result<Server> {
        let socket = if self.listen.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(self.listen)?;
        let listener = socket.listen(self.backlog)?;
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let health = Arc::new(Health {
            ready: AtomicBool::new(false),
            broker: self.broker.clone(),
            memory: self.node.as_ref().and_then(|n| n.memory_budget().cloned()),
        });
        let mut sweeps = Vec::new();
        let trusted_proxies: Arc<[Cidr]> = self.trusted_proxies.into();
        let mut router = Router::new()
            .route(
                "/healthz",
                get(|| async {
                    json_response(StatusCode::OK, &serde_json::json!({"status": "ok"}))
                }),
            )
            .route("/readyz", get(readyz).with_state(health.clone()));
        if self.metrics_enabled {
            // No auth: like the health endpoints, it is for the operator's network; put it
            // behind the proxy's access rules (docs/operations.md).
            let metrics = self.hub.metrics().clone();
            router = router.route(
                "/metrics",
                get(move || {
                    let metrics = metrics.clone();
                    async move {
                        axum::response::Response::builder()
                            .status(StatusCode::OK)
                            .header(http::header::CONTENT_TYPE, Metrics::CONTENT_TYPE)
                            .body(Body::from(metrics.encode()))
                            .expect("static response parts are valid")
                    }
                }),
            );
        }
        for route in self.routes {
            let upgrade = route.upgrade.clone();
            let registry = Arc::new(Registry::new(
                DecoderConfig::default().with_max_message_size(route.options.max_message_size),
                route.options.ping_interval,
                route.options.idle_timeout,
            ));
            sweeps.push(registry.clone());
            let ctx = RouteContext {
                route: Arc::new(RouteShared {
                    hub: self.hub.clone(),
                    node: self.node.clone(),
                    registry,
                }),
                shutdown: shutdown.clone(),
                tracker: tracker.clone(),
                admission: self.admission.clone(),
                max_connections: self.max_connections,
                trusted_proxies: trusted_proxies.clone(),
            };
            router = router.route(
                &route.path,
                axum::routing::any(move |req: Request<Body>| {
                    let upgrade = upgrade.clone();
                    let ctx = ctx.clone();
                    async move { upgrade(req, ctx).await }
                }),
            );
        }
        if let Some(http) = self.http {
            router = router.merge(http);
        }
        router = router.fallback(|| async {
            json_response(
                StatusCode::NOT_FOUND,
                &serde_json::json!({"error": "not_found", "reason": "no such route"}),
            )
        });
        Ok(Server {
            listener,
            router,
            shutdown,
            tracker,
            drain_timeout: self.drain_timeout,
            health,
            sweeps,
            admission: self.admission,
            max_request_head: self.max_request_head,
            metrics: self.hub.metrics().clone(),
            direct_path: self.direct_path,
            trusted_proxies,
            tls: self.tls,
            api: self.api,
        })
    }
}

async fn readyz(State(health): State<Arc<Health>>) -> axum::response::Response {
    if !health.ready.load(Ordering::Relaxed) {
        return json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"status": "not_ready"}),
        );
    }
    if let Some(memory) = &health.memory
        && memory.over()
    {
        return json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"status": "not_ready", "reason": "memory: above limits.max_memory"}),
        );
    }
    if let Some(broker) = &health.broker
        && let Err(e) = broker.ready().await
    {
        return json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"status": "not_ready", "reason": format!("broker: {e}")}),
        );
    }
    json_response(StatusCode::OK, &serde_json::json!({"status": "ready"}))
}

/// Completes on SIGTERM or SIGINT. The handlers are installed when this is called, not when
/// the future is first polled: a signal that arrives while the server is busy accepting its
/// first connections must shut it down gracefully, not kill it. Must be called inside a tokio
/// runtime.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
        let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
        async move {
            tokio::select! {
                _ = int.recv() => tracing::info!("SIGINT received"),
                _ = term.recv() => tracing::info!("SIGTERM received"),
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
