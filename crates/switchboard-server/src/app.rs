//! Assembly: the routes a node's configuration serves and the server that serves them.
//!
//! The node is the service and knows no route; the v1 protocol and the built-in routes are
//! handlers over it; this module puts them on their paths. The HTTP server API, SSE and the
//! metrics endpoint join the same server here (`ServerBuilder::http`).

use std::sync::Arc;

use switchboard_protocol::wire;

use crate::{
    Route, RouteOptions,
    broker::{Broker, BrokerError, RedisBroker, RedisBrokerConfig, RedisSentinelConfig},
    builtin::{Echo, RawFanout},
    config::{BrokerKind, Config},
    node::{Node, NodeError},
    origin::OriginPolicy,
    server::{Server, ServerBuilder},
    v1::Protocol,
};

impl Node {
    /// Builds the node its configuration describes, on the broker of `broker.kind`: the
    /// in-memory one, or Redis (connected before this returns; an unreachable Redis is an
    /// error naming `broker.url` or `broker.sentinel`). Must be called inside a tokio runtime.
    ///
    /// A key set of `auth.jwks` that is fetched over the network is loaded here too (an
    /// error names `auth.jwks`); [`Node::new`] leaves it to the first token with a `kid`.
    pub async fn from_config(config: Config) -> Result<Node, NodeError> {
        let node = Self::from_config_inner(config).await?;
        node.access().verifier().load_jwks().await?;
        Ok(node)
    }

    async fn from_config_inner(config: Config) -> Result<Node, NodeError> {
        match config.broker.kind {
            BrokerKind::Memory => Node::new(config),
            BrokerKind::Redis => {
                let b = &config.broker;
                let redis = RedisBrokerConfig {
                    url: b.url.clone().unwrap_or_default(),
                    sentinel: b.sentinel.as_ref().map(|s| RedisSentinelConfig {
                        urls: s.urls.clone(),
                        master: s.master.clone(),
                        username: s.username.clone(),
                        password: s.password.clone(),
                        wait_for_replicas: s.wait_for_replicas,
                    }),
                    cluster: b.cluster.clone().unwrap_or_default(),
                    prefix: b.prefix.clone(),
                    presence_ttl: b.presence_ttl,
                    sweep_interval: b.sweep_interval,
                    timeout: b.timeout,
                    ..RedisBrokerConfig::default()
                };
                let key = if b.sentinel.is_some() {
                    "broker.sentinel"
                } else if b.cluster.is_some() {
                    "broker.cluster"
                } else {
                    "broker.url"
                };
                Node::with_broker(config, |sink| async move {
                    match RedisBroker::connect(redis, sink).await {
                        Ok(broker) => Ok(Arc::new(broker) as Arc<dyn Broker>),
                        Err(e) => Err(BrokerError::Unavailable {
                            message: format!("{e} (key '{key}')"),
                            source: None,
                        }),
                    }
                })
                .await
            }
        }
    }

    /// The routes of this configuration: the protocol route and, when configured, the echo
    /// and raw fan-out routes.
    pub fn routes(&self) -> Vec<Route> {
        let c = self.config();
        // Development mode serves pages from anywhere (a local dev server on another port).
        let options = || {
            let mut o = RouteOptions::from_config(&c.websocket);
            if c.dev == Some(true) {
                o.origins = OriginPolicy::Any;
            }
            o
        };
        let mut routes = vec![Route::new(
            &c.websocket.path,
            Protocol::new(self.clone()),
            options().with_protocols(&[wire::SUBPROTOCOL]),
        )];
        if let Some(path) = &c.echo.path {
            routes.push(Route::new(path, Echo, options()));
        }
        if let Some(path) = &c.raw_fanout.path {
            routes.push(Route::new(path, RawFanout, options()));
        }
        routes
    }

    /// A server builder with this node's routes and settings, and the server API under
    /// `/api`; `/readyz` asks the broker.
    pub fn server(&self) -> ServerBuilder {
        let c = self.config();
        let mut b = Server::builder(c.listen)
            .node(self.clone())
            .drain_timeout(c.shutdown.drain_timeout)
            .backlog(c.listen_backlog)
            .max_connections(c.limits.max_connections)
            .max_request_head(c.limits.max_request_head.as_usize())
            .trusted_proxies(c.trusted_proxies.clone());
        // Development mode serves one developer and benchmarks from one machine: no limits
        // per user or per IP there (docs/security.md).
        let mut local = crate::limits::LocalAdmission::from_config(&c.limits, c.dev == Some(true));
        // A broker shared by several nodes counts their connections together.
        if let Some(cluster) = self.broker().admission() {
            self.metrics().watch_cluster_admission(cluster.clone());
            local = local.with_cluster(cluster);
        }
        let admission = local
            .limits_anything()
            .then(|| std::sync::Arc::new(local) as std::sync::Arc<dyn crate::limits::Admission>);
        if let Some(a) = &admission {
            b = b.admission(a.clone());
        }
        for r in self.routes() {
            b = b.route(r);
        }
        if c.sse.enabled {
            b = b
                .http(crate::transport::sse::router(self.clone(), admission))
                .direct_path(&c.sse.path);
        }
        // The demo page: in development mode (its token endpoint only there) or when asked for.
        let dev = c.dev == Some(true);
        if dev || c.demo {
            b = b.http(crate::demo::router(c.auth.secret.clone().filter(|_| dev)));
        }
        b.api(crate::http::api::ServerApi::new(self.clone()))
    }
}
