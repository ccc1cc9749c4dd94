//! Server configuration: a TOML file (`--config`), then `SWITCHBOARD_*` environment variables,
//! then command-line flags, each overriding the one before. `docs/configuration.md` documents
//! every key with its default; this module is the source of truth for both.
//!
//! Environment variables name a key path in upper case with `__` between sections:
//! `SWITCHBOARD_LISTEN`, `SWITCHBOARD_WEBSOCKET__MAX_MESSAGE_SIZE`. Values are read as TOML
//! values where they parse as one (numbers, booleans, arrays) and as strings otherwise.
//!
//! Every error names the key and where it came from (the file, the variable or the flag).

use std::{collections::BTreeMap, fmt, net::SocketAddr, path::PathBuf, time::Duration};

use serde::{Deserialize, Deserializer, de};
use switchboard_protocol::deflate::DeflateConfig;

/// The whole server configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address of the HTTP and WebSocket listener. Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Accept queue length of the listener. Default 1024.
    pub listen_backlog: u32,
    /// Development mode: a generated secret kept in a file, anonymous-friendly defaults and a
    /// loud log line saying so. On by default only when no configuration is given at all.
    pub dev: Option<bool>,
    /// Serve the demo chat page at `/` (always on in development mode). Default false.
    pub demo: bool,
    /// Logging.
    pub log: LogConfig,
    /// The WebSocket transport defaults, shared by every route unless a route overrides them.
    pub websocket: WebSocketConfig,
    /// Server-Sent Events (docs/protocol.md section 8).
    pub sse: SseConfig,
    /// The built-in echo route used by conformance tests and benchmarks.
    pub echo: EchoConfig,
    /// The raw fan-out route used by benchmarks.
    pub raw_fanout: EchoConfig,
    /// Graceful shutdown.
    pub shutdown: ShutdownConfig,
    /// Authentication of connections (docs/protocol.md section 2).
    pub auth: crate::auth::AuthConfig,
    /// Per-namespace room options (docs/protocol.md section 4.1), keyed by namespace name; the
    /// default namespace (rooms without `:`) is `""`... written as `[namespaces.default]`.
    pub namespaces: BTreeMap<String, NamespaceConfig>,
    /// Reject rooms of namespaces not listed in `namespaces`.
    pub strict_namespaces: bool,
    /// Subscribe every authenticated connection to its `user:<id>` room.
    pub personal_rooms: bool,
    /// Per-connection limits.
    pub limits: LimitsConfig,
    /// The node's id in logs and `welcome` (default: a random one).
    pub node_id: Option<String>,
    /// The server API under `/api` (docs/server-api.md).
    pub api: ApiConfig,
    /// The broker the node shares rooms through (docs/scaling.md).
    pub broker: BrokerConfig,
    /// Address ranges of the reverse proxies in front of the server (`"10.0.0.0/8"`,
    /// `"127.0.0.1"`, `"fd00::/8"`): a connection from one of them is taken to be from the
    /// right-most untrusted address of its `X-Forwarded-For` (or `Forwarded: for=`), for
    /// limits, logs and connect info. Default: none (headers are ignored; the TCP peer is the
    /// client).
    pub trusted_proxies: Vec<crate::net::Cidr>,
    /// Calls to the application backend (docs/proxies.md, docs/protocol.md 9.1).
    pub proxies: ProxiesConfig,
    /// TLS on the listener (every surface of the port: wss://, SSE, the API, /metrics).
    pub tls: TlsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            listen_backlog: 1024,
            dev: None,
            demo: false,
            log: LogConfig::default(),
            websocket: WebSocketConfig::default(),
            sse: SseConfig::default(),
            echo: EchoConfig::default(),
            raw_fanout: EchoConfig::default(),
            shutdown: ShutdownConfig::default(),
            auth: crate::auth::AuthConfig::default(),
            namespaces: BTreeMap::new(),
            strict_namespaces: false,
            personal_rooms: true,
            limits: LimitsConfig::default(),
            node_id: None,
            api: ApiConfig::default(),
            broker: BrokerConfig::default(),
            trusted_proxies: Vec::new(),
            proxies: ProxiesConfig::default(),
            tls: TlsConfig::default(),
        }
    }
}

/// `[tls]`: the listener's certificate. Both keys or neither; without them the port speaks
/// plain HTTP. The files are read at start and again on `SIGHUP` ([`crate::Node::reload_tls`]).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// A PEM file: the server's certificate first, then its intermediates. Default none.
    pub cert: Option<PathBuf>,
    /// A PEM file with the certificate's private key (PKCS#8, PKCS#1 or SEC1). Default none.
    pub key: Option<PathBuf>,
}

impl TlsConfig {
    /// Whether TLS is configured (both files named).
    pub fn enabled(&self) -> bool {
        self.cert.is_some() && self.key.is_some()
    }
}

/// Log output.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` (default) or `json`.
    pub format: LogFormat,
    /// A tracing filter directive, e.g. `info` or `switchboard_server=debug`. Default `info`.
    /// `RUST_LOG`, when set, wins.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// WebSocket transport options.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSocketConfig {
    /// Path of the protocol route (docs/protocol.md section 1). Default `/ws`.
    pub path: String,
    /// Largest message accepted, after decompression; larger ones close the connection with
    /// 1009. Default 64 KiB.
    pub max_message_size: ByteSize,
    /// Bound of a connection's outbound queue; a connection whose queue passes it is closed
    /// with 4500 (slow consumer). Default 1 MiB.
    pub outbound_queue: ByteSize,
    /// Interval of server pings. Default 25 s.
    #[serde(deserialize_with = "duration")]
    pub ping_interval: Duration,
    /// Close with 4504 when nothing arrives for this long. Default 60 s.
    #[serde(deserialize_with = "duration")]
    pub idle_timeout: Duration,
    /// permessage-deflate.
    pub compression: CompressionConfig,
    /// Origins (`https://host[:port]`) whose pages may open WebSocket connections and SSE
    /// streams besides the server's own origin (`Origin` host equal to `Host`); `"*"` allows
    /// every origin. Requests without `Origin` (not from a browser) are always allowed.
    /// Others get 403 `origin_not_allowed`. Development mode allows every origin.
    /// Default: empty (same origin only).
    pub allowed_origins: Vec<String>,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        WebSocketConfig {
            path: "/ws".into(),
            max_message_size: ByteSize(64 * 1024),
            outbound_queue: ByteSize(1024 * 1024),
            ping_interval: Duration::from_secs(25),
            idle_timeout: Duration::from_secs(60),
            compression: CompressionConfig::default(),
            allowed_origins: Vec::new(),
        }
    }
}

/// Server-Sent Events options (docs/protocol.md section 8).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SseConfig {
    /// Serve the SSE endpoint. Default true.
    pub enabled: bool,
    /// Path of the endpoint. Default `/sse`.
    pub path: String,
    /// Interval of `: ping` comments on a stream. Default 15 s.
    #[serde(deserialize_with = "duration")]
    pub ping_interval: Duration,
    /// The `retry:` a stream starts with: how long browsers wait before reconnecting, in
    /// milliseconds. Default 3000.
    pub retry_ms: u64,
}

impl Default for SseConfig {
    fn default() -> Self {
        SseConfig {
            enabled: true,
            path: "/sse".into(),
            ping_interval: Duration::from_secs(15),
            retry_ms: 3000,
        }
    }
}

/// permessage-deflate options (RFC 7692). The defaults keep no zlib state on idle connections.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompressionConfig {
    /// Negotiate permessage-deflate when a client offers it. Default true.
    pub enabled: bool,
    /// Messages shorter than this many bytes are sent uncompressed. Default 128.
    pub threshold: ByteSize,
    /// Keep the server's compression context between messages (hundreds of KiB per
    /// connection; compressed bytes can then no longer be shared across recipients). Default false.
    pub server_context_takeover: bool,
    /// Let clients keep their compression context (the server keeps an inflater per
    /// connection). Default false.
    pub client_context_takeover: bool,
    /// Largest window the server compresses with, 9..=15. Default 15.
    pub server_max_window_bits: u8,
    /// Largest window clients may compress with, 8..=15. Default 15.
    pub client_max_window_bits: u8,
}

impl Default for CompressionConfig {
    fn default() -> Self {
        let d = DeflateConfig::default();
        CompressionConfig {
            enabled: d.enabled,
            threshold: ByteSize(d.threshold as u64),
            server_context_takeover: d.server_context_takeover,
            client_context_takeover: d.client_context_takeover,
            server_max_window_bits: d.server_max_window_bits,
            client_max_window_bits: d.client_max_window_bits,
        }
    }
}

impl CompressionConfig {
    /// The protocol layer's view of these options.
    pub fn deflate_config(&self) -> DeflateConfig {
        let mut d = if self.enabled {
            DeflateConfig::default()
        } else {
            DeflateConfig::disabled()
        };
        d.threshold = self.threshold.0 as usize;
        d.server_context_takeover = self.server_context_takeover;
        d.client_context_takeover = self.client_context_takeover;
        d.server_max_window_bits = self.server_max_window_bits;
        d.client_max_window_bits = self.client_max_window_bits;
        d
    }
}

/// A built-in route that is off unless it has a path (`[echo]`, `[raw_fanout]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EchoConfig {
    /// Path of the route; off when absent.
    pub path: Option<String>,
}

/// Graceful shutdown.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// How long connections get to finish their close handshake after SIGTERM/SIGINT before
    /// the process exits anyway. Default 10 s.
    #[serde(deserialize_with = "duration")]
    pub drain_timeout: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// Who may subscribe to a namespace's rooms (docs/protocol.md 4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SubscribePolicy {
    /// Anyone, including anonymous connections.
    Anyone,
    /// Any authenticated user.
    Authenticated,
    /// Only with a subscription token.
    Token,
    /// Only rooms in the connection token's `rooms` claim.
    Claim,
}

/// Who may publish to a namespace's rooms from a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PublishPolicy {
    /// Connections subscribed to the room.
    Subscribers,
    /// Any authenticated connection.
    Authenticated,
    /// Nobody: the server API only.
    None,
}

/// Options of one namespace.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NamespaceConfig {
    /// Who may subscribe. Default `authenticated`.
    pub subscribe: SubscribePolicy,
    /// Who may publish. Default `subscribers`.
    pub publish: PublishPolicy,
    /// Publications kept per room; 0 turns history off. Default 100.
    pub history_size: usize,
    /// How long a publication is kept. Default 5 min.
    #[serde(deserialize_with = "duration")]
    pub history_ttl: Duration,
    /// Whether `presence` answers. Default true.
    pub presence: bool,
    /// Whether join/leave pushes are sent. Default true.
    pub join_leave: bool,
    /// Subscribers per room; none by default.
    pub max_subscribers: Option<usize>,
    /// Join and leave pushes are sent only while the room has at most this many members on
    /// the node (after the join, after the leave): above it a join would cost a push to every
    /// member, so none is sent (`presence` still answers). 0: no threshold. Default 1000.
    pub join_leave_max_members: usize,
    /// The proxies this namespace's rooms go through (`"subscribe"`, `"publish"`), each of
    /// which must be configured under `[proxies]`. Default none.
    pub proxies: Vec<NamespaceProxy>,
}

/// A proxy a namespace can opt in to (`namespaces.<ns>.proxies`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NamespaceProxy {
    /// The subscribe proxy decides every client `subscribe` (and SSE stream) of its rooms.
    Subscribe,
    /// The publish proxy decides (and may replace) every client `publish` to its rooms.
    Publish,
}

/// `[proxies]`: the application backend's HTTP endpoints (docs/proxies.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxiesConfig {
    /// Called when a connection arrives without a token; it names the user.
    pub connect: Option<ProxyConfig>,
    /// Called for subscriptions in namespaces that list `"subscribe"` in `proxies`.
    pub subscribe: Option<ProxyConfig>,
    /// Called for publications in namespaces that list `"publish"` in `proxies`.
    pub publish: Option<ProxyConfig>,
    /// Called for every `rpc` command.
    pub rpc: Option<ProxyConfig>,
    /// Backend calls in flight at once on this node, all proxies together; a call beyond it
    /// is answered `unavailable` at once rather than queued. Default 256.
    pub max_in_flight: usize,
    /// A PEM file of CA certificates trusted for `https://` proxy URLs, besides the system's
    /// trust store (a backend with a private CA). Default none.
    pub ca: Option<String>,
}

impl Default for ProxiesConfig {
    fn default() -> Self {
        ProxiesConfig {
            connect: None,
            subscribe: None,
            publish: None,
            rpc: None,
            max_in_flight: 256,
            ca: None,
        }
    }
}

/// One proxy endpoint (`[proxies.connect]`, ...).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// The endpoint, `http://host:port/path`. Required.
    pub url: String,
    /// How long a call may take before the client is answered `unavailable` (connect: 503).
    /// Default 5 s.
    #[serde(deserialize_with = "duration", default = "default_proxy_timeout")]
    pub timeout: Duration,
    /// Request headers of the client's HTTP request (the WebSocket upgrade or the SSE
    /// request) passed on in the call's `headers` object, e.g. `["Cookie"]`. For the
    /// subscribe, publish and rpc proxies these are the headers of the request that opened
    /// the connection (kept with the connection only when configured). Default none.
    #[serde(default)]
    pub headers: Vec<String>,
}

fn default_proxy_timeout() -> Duration {
    Duration::from_secs(5)
}

impl Default for NamespaceConfig {
    fn default() -> Self {
        NamespaceConfig {
            subscribe: SubscribePolicy::Authenticated,
            publish: PublishPolicy::Subscribers,
            history_size: 100,
            history_ttl: Duration::from_secs(300),
            presence: true,
            join_leave: true,
            max_subscribers: None,
            join_leave_max_members: 1000,
            proxies: Vec::new(),
        }
    }
}

/// Per-connection limits (docs/protocol.md section 7.4).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Subscriptions per connection. Default 128.
    pub subscriptions_per_connection: usize,
    /// Time a first-message-auth connection has to authenticate. Default 5 s.
    #[serde(deserialize_with = "duration")]
    pub auth_timeout: Duration,
    // --- limits engineer: command rate limit (docs/protocol.md 7.4, docs/security.md) ---
    /// Commands per second a connection may send on average (a token bucket); beyond it a
    /// command is answered `rate_limited`. 0 turns the limit off; at most 1000. Default 50.
    pub commands_per_second: u32,
    /// How many commands a connection may send at once above the average. Default 100.
    pub commands_burst: u32,
    /// Close with 4502 when a connection keeps exceeding the rate this long (its bucket does
    /// not refill to half its burst in between). Default 10 s.
    #[serde(deserialize_with = "duration")]
    pub rate_limit_close_after: Duration,
    // --- limits engineer: connection admission (docs/protocol.md 7.3, 7.4) ---
    /// Open connections per user on this node (anonymous connections are not counted);
    /// 429 beyond. 0: no limit. Default 5. Off in development mode.
    pub connections_per_user: usize,
    /// Open connections and handshakes in progress per client IP; 429 beyond. 0: no limit.
    /// Default 256. Off in development mode.
    pub connections_per_ip: usize,
    /// New connections per second per client IP (a token bucket); 429 beyond. 0: no limit;
    /// at most 1000. Default 20. Off in development mode.
    pub new_connections_per_second_per_ip: u32,
    /// New connections per client IP at once above the rate. Default 40.
    pub new_connections_burst_per_ip: u32,
    /// Open connections (WebSocket and SSE) on this node; 503 beyond. 0: no limit (default).
    pub max_connections: usize,
    /// Resident memory of the process above which new connections are refused with 503
    /// `memory` (and `/readyz` answers 503) until it is below again; open connections are not
    /// touched. Unset (default): no budget. At least 16 MiB. Linux only (read from /proc).
    pub max_memory: Option<ByteSize>,
    /// Largest HTTP request head (request line and headers) read before a request is
    /// answered; 431 beyond. At least 8 KiB. Default 80 KiB: a 64 KiB token and the usual
    /// headers.
    pub max_request_head: ByteSize,
    /// How long a room nobody uses, with no publication kept, keeps its epoch and last offset
    /// (so that a client recovering within it gets `recovered: false` rather than a wrong
    /// answer) before it is forgotten. Default 10 min.
    #[serde(deserialize_with = "duration")]
    pub room_metadata_ttl: Duration,
    /// Bytes of publications kept for recovery across every room of the node (the memory
    /// broker); beyond it the history of the rooms used least recently is dropped (their
    /// recovering clients get `recovered: false`). 0: no budget. Default 256 MiB.
    pub history_memory: ByteSize,
    /// Rooms the node keeps state for (the memory broker); a new room beyond it makes the
    /// node forget the least recently used idle rooms, and is refused with `limit_exceeded`
    /// when every room is in use. 0: no bound. Default 100,000.
    pub max_rooms: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            subscriptions_per_connection: 128,
            auth_timeout: Duration::from_secs(5),
            commands_per_second: 50,
            commands_burst: 100,
            rate_limit_close_after: Duration::from_secs(10),
            connections_per_user: 5,
            connections_per_ip: 256,
            new_connections_per_second_per_ip: 20,
            new_connections_burst_per_ip: 40,
            max_connections: 0,
            max_memory: None,
            max_request_head: ByteSize(80 * 1024),
            room_metadata_ttl: Duration::from_secs(600),
            history_memory: ByteSize(256 << 20),
            max_rooms: 100_000,
        }
    }
}

/// The server API (docs/protocol.md section 9, docs/server-api.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// The keys that may call `/api`, each with a name for the logs. None: `/api` answers 401
    /// (development mode adds a generated one).
    pub keys: Vec<ApiKeyConfig>,
    /// Largest request body accepted. Default 1 MiB.
    pub max_body_size: ByteSize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            keys: Vec::new(),
            max_body_size: ByteSize(1 << 20),
        }
    }
}

/// Which broker a node uses (`broker.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BrokerKind {
    /// In-process: one node, nothing shared.
    #[default]
    Memory,
    /// Several nodes on one Redis (`broker.url`), on a Sentinel-monitored Redis
    /// (`broker.sentinel`) or on one Redis Cluster (`broker.cluster`).
    Redis,
}

/// The broker: what the nodes of a deployment share (docs/scaling.md).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// `memory` (default) or `redis`.
    pub kind: BrokerKind,
    /// The Redis server of `kind = "redis"`: `redis://[user:password@]host:port[/db]`.
    pub url: Option<String>,
    /// Instead of `url`: the sentinels of a Sentinel-monitored Redis, whose primary the node
    /// follows through failovers.
    pub sentinel: Option<SentinelConfig>,
    /// Instead of `url`: seed nodes of a Redis Cluster (7 or later), `redis://host:port`
    /// each; a TOML array, or one comma-separated string (handy in
    /// `SWITCHBOARD_BROKER__CLUSTER`).
    #[serde(deserialize_with = "string_list")]
    pub cluster: Option<Vec<String>>,
    /// Prefix of every Redis key and channel. Default `sb`.
    pub prefix: String,
    /// How long a presence entry of a Redis deployment outlives its node's last refresh.
    /// Default 20 s.
    #[serde(deserialize_with = "duration")]
    pub presence_ttl: Duration,
    /// How often each node removes expired presence entries (with `leave` events). Default
    /// 5 s: a killed node's members are gone within `presence_ttl + sweep_interval`.
    #[serde(deserialize_with = "duration")]
    pub sweep_interval: Duration,
    /// How long a call may wait for Redis before it answers `unavailable`. Default 2 s.
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            kind: BrokerKind::Memory,
            url: None,
            sentinel: None,
            cluster: None,
            prefix: "sb".into(),
            presence_ttl: Duration::from_secs(20),
            sweep_interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
        }
    }
}

impl fmt::Debug for BrokerConfig {
    /// A password in the url stays out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cluster = self
            .cluster
            .as_ref()
            .map(|seeds| seeds.iter().map(|u| redact_url(u)).collect::<Vec<_>>());
        f.debug_struct("BrokerConfig")
            .field("kind", &self.kind)
            .field("url", &self.url.as_deref().map(redact_url))
            .field("sentinel", &self.sentinel)
            .field("cluster", &cluster)
            .field("prefix", &self.prefix)
            .field("presence_ttl", &self.presence_ttl)
            .field("sweep_interval", &self.sweep_interval)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A url with its password (`user:password@`) replaced, for logs.
fn redact_url(u: &str) -> String {
    match (u.find("://"), u.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}<redacted>{}", &u[..scheme + 3], &u[at..])
        }
        _ => u.to_owned(),
    }
}

/// `broker.sentinel`: a Redis whose primary a set of Redis Sentinels names (docs/scaling.md).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SentinelConfig {
    /// The sentinels: `redis://[user:password@]host:port` each. A list, or one string of
    /// comma-separated urls (as an environment variable gives it).
    #[serde(deserialize_with = "url_list")]
    pub urls: Vec<String>,
    /// The name the sentinels monitor the set under.
    pub master: String,
    /// The user of the data nodes, when they require one.
    pub username: Option<String>,
    /// The password of the data nodes, when they require one.
    pub password: Option<String>,
    /// How many replicas must have a stored publication before it is acknowledged (`WAIT`),
    /// so that it survives a failover. Default 1; 0 acknowledges on the primary alone.
    pub wait_for_replicas: u32,
}

impl Default for SentinelConfig {
    fn default() -> Self {
        SentinelConfig {
            urls: Vec::new(),
            master: String::new(),
            username: None,
            password: None,
            wait_for_replicas: 1,
        }
    }
}

impl fmt::Debug for SentinelConfig {
    /// Passwords stay out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let urls: Vec<String> = self.urls.iter().map(|u| redact_url(u)).collect();
        f.debug_struct("SentinelConfig")
            .field("urls", &urls)
            .field("master", &self.master)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("wait_for_replicas", &self.wait_for_replicas)
            .finish()
    }
}

/// A list of urls, or one string of them separated by commas.
fn url_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Urls {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Urls::deserialize(d)? {
        Urls::One(s) => s
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(String::from)
            .collect(),
        Urls::Many(v) => v,
    })
}

/// Shortest API key accepted, in bytes: shorter keys can be guessed.
pub const MIN_API_KEY_LEN: usize = 16;

/// One `[[api.keys]]` entry.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// Who holds the key: logged with every call (the key never is).
    pub name: String,
    /// The secret itself, at least [`MIN_API_KEY_LEN`] bytes.
    pub key: String,
}

impl fmt::Debug for ApiKeyConfig {
    /// The key stays out of logs and panics.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeyConfig")
            .field("name", &self.name)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// A size in bytes, written as an integer or a string with a unit: `"64KiB"`, `"16 MiB"`,
/// `"1GiB"`, `"512B"` (KB/MB/GB are taken as powers of 1024 too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// The size as `usize`.
    pub fn as_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

impl std::str::FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("'{s}' is not a size (examples: 65536, \"64KiB\", \"16MiB\")"))?;
        let mult = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1 << 10,
            "m" | "mb" | "mib" => 1 << 20,
            "g" | "gb" | "gib" => 1 << 30,
            other => {
                return Err(format!(
                    "unknown size unit '{other}' (use B, KiB, MiB or GiB)"
                ));
            }
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("size '{s}' is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size in bytes: an integer or a string such as \"64KiB\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// Deserializes a duration from a number of seconds or a string such as `"25s"`, `"5m"`, `"1h 30m"`.
/// A list of strings: a TOML array, or one comma-separated string (environment variables).
fn string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum List {
        Array(Vec<String>),
        Commas(String),
    }
    Ok(Some(match List::deserialize(d)? {
        List::Array(items) => items,
        List::Commas(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    }))
}

pub(crate) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct V;
    impl de::Visitor<'_> for V {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration: seconds as a number or a string such as \"25s\" or \"5m\"")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
            Ok(Duration::from_secs(v))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
            u64::try_from(v)
                .map(Duration::from_secs)
                .map_err(|_| E::custom("a duration cannot be negative"))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
            Duration::try_from_secs_f64(v).map_err(|e| E::custom(e.to_string()))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
            humantime::parse_duration(v).map_err(|e| E::custom(format!("'{v}': {e}")))
        }
    }
    d.deserialize_any(V)
}

/// A configuration error, for people: it names the key and its source.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("config file {path}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message (with line and column).
        message: String,
    },
    /// A key is unknown or has a bad value.
    #[error("{source_name}: key '{key}': {message}")]
    Key {
        /// Where the bad value came from: the file, an environment variable or a flag.
        source_name: String,
        /// The key's dotted path.
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

/// Where configuration values come from, merged in order.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    /// A TOML file.
    pub file: Option<PathBuf>,
    /// Environment variables (name, value); those not starting with `SWITCHBOARD_` are ignored.
    pub env: Vec<(String, String)>,
    /// Flag overrides as (dotted key, TOML value), e.g. `("listen", "127.0.0.1:9000")`.
    pub flags: Vec<(String, toml::Value)>,
}

/// Environment variables that are not configuration keys (read by the CLI itself).
const NON_KEY_ENV: &[&str] = &[
    "SWITCHBOARD_CONFIG",
    "SWITCHBOARD_DEV_SECRET_FILE",
    "SWITCHBOARD_URL",
];

impl Config {
    /// Loads and merges the sources; validates the result.
    pub fn load(sources: &Sources) -> Result<Config, ConfigError> {
        let mut table = toml::Table::new();
        let mut origin: BTreeMap<String, String> = BTreeMap::new();
        if let Some(path) = &sources.file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            table = text
                .parse::<toml::Table>()
                .map_err(|e| ConfigError::Syntax {
                    path: path.clone(),
                    message: e.to_string().trim_end().to_string(),
                })?;
            // Check the file on its own first so its errors name the file.
            deserialize(toml::Value::Table(table.clone()), &|_| {
                format!("config file {}", path.display())
            })?;
        }
        for (name, value) in &sources.env {
            let Some(rest) = name.strip_prefix("SWITCHBOARD_") else {
                continue;
            };
            if NON_KEY_ENV.contains(&name.as_str()) || rest.is_empty() {
                continue;
            }
            let key = rest.to_ascii_lowercase().replace("__", ".");
            insert(&mut table, &key, env_value(value));
            origin.insert(key, format!("environment variable {name}"));
        }
        for (key, value) in &sources.flags {
            insert(&mut table, key, value.clone());
            origin.insert(
                key.clone(),
                format!("flag --{}", key.replace(['.', '_'], "-")),
            );
        }
        let file_name = sources
            .file
            .as_ref()
            .map(|p| format!("config file {}", p.display()))
            .unwrap_or_else(|| "configuration".into());
        // Where a key's value came from: the last environment variable or flag that set it or
        // a table above it, else the file. A key given as `name[3]` is looked up as `name`.
        let source_of = |key: &str| {
            let key = key.split('[').next().unwrap_or(key);
            origin
                .iter()
                .find(|(k, _)| key == k.as_str() || key.starts_with(&format!("{k}.")))
                .map(|(_, o)| o.clone())
                .unwrap_or_else(|| file_name.clone())
        };
        let config = deserialize(toml::Value::Table(table), &source_of)?;
        config.validate(&source_of)?;
        Ok(config)
    }

    /// Whether this configuration runs in development mode: asked for with `dev = true`, or
    /// implied when nothing at all was configured.
    pub fn is_dev(&self, configured: bool) -> bool {
        self.dev.unwrap_or(!configured)
    }

    /// The options of the namespace of `room`.
    pub fn namespace(&self, ns: &str) -> Option<&NamespaceConfig> {
        self.namespaces
            .get(if ns.is_empty() { "default" } else { ns })
    }

    /// `broker.sentinel`: sentinels and the set's name are given, the sentinels as urls.
    fn validate_sentinel(
        s: &SentinelConfig,
        err: &dyn Fn(&str, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        if s.urls.is_empty() {
            return Err(err(
                "broker.sentinel.urls",
                "needs at least one sentinel (redis://host:26379)".into(),
            ));
        }
        for (i, u) in s.urls.iter().enumerate() {
            if !u.starts_with("redis://") {
                return Err(err(
                    &format!("broker.sentinel.urls[{i}]"),
                    format!("'{}' must start with redis://", redact_url(u)),
                ));
            }
        }
        if s.master.is_empty() {
            return Err(err(
                "broker.sentinel.master",
                "is required: the name the sentinels monitor the primary under".into(),
            ));
        }
        Ok(())
    }

    /// The `[proxies]` section and the namespaces' `proxies` lists.
    fn validate_proxies(
        &self,
        err: &dyn Fn(&str, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        let p = &self.proxies;
        if p.max_in_flight == 0 {
            return Err(err("proxies.max_in_flight", "must be at least 1".into()));
        }
        // Both decide who a tokenless upgrade is: the backend from its cookies, or the `auth`
        // message after it. One server cannot do both for the same client, so it is refused.
        if p.connect.is_some() && self.auth.first_message {
            return Err(err(
                "auth.first_message",
                "cannot be combined with proxies.connect (both decide who a connection without a token is); use one".into(),
            ));
        }
        for (name, proxy) in [
            ("connect", &p.connect),
            ("subscribe", &p.subscribe),
            ("publish", &p.publish),
            ("rpc", &p.rpc),
        ] {
            let Some(proxy) = proxy else { continue };
            let key = |k: &str| format!("proxies.{name}.{k}");
            match proxy.url.parse::<http::Uri>() {
                Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {
                }
                _ => {
                    return Err(err(
                        &key("url"),
                        format!(
                            "'{}' is not an http:// or https:// URL (example: \"http://127.0.0.1:8000/switchboard/{name}\")",
                            proxy.url
                        ),
                    ));
                }
            }
            if proxy.timeout < Duration::from_millis(10) {
                return Err(err(&key("timeout"), "must be at least 10ms".into()));
            }
            for (i, h) in proxy.headers.iter().enumerate() {
                if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                    return Err(err(
                        &format!("proxies.{name}.headers[{i}]"),
                        format!("'{h}' is not a valid header name"),
                    ));
                }
            }
        }
        for (ns, options) in &self.namespaces {
            for (i, proxy) in options.proxies.iter().enumerate() {
                let configured = match proxy {
                    NamespaceProxy::Subscribe => p.subscribe.is_some(),
                    NamespaceProxy::Publish => p.publish.is_some(),
                };
                if !configured {
                    let name = match proxy {
                        NamespaceProxy::Subscribe => "subscribe",
                        NamespaceProxy::Publish => "publish",
                    };
                    return Err(err(
                        &format!("namespaces.{ns}.proxies[{i}]"),
                        format!("'{name}' needs a [proxies.{name}] section with its url"),
                    ));
                }
            }
        }
        Ok(())
    }

    fn validate(&self, source_of: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
        let err = |key: &str, message: String| ConfigError::Key {
            source_name: source_of(key),
            key: key.to_string(),
            message,
        };
        for (key, path) in [
            ("websocket.path", Some(&self.websocket.path)),
            ("echo.path", self.echo.path.as_ref()),
        ] {
            if let Some(p) = path
                && !p.starts_with('/')
            {
                return Err(err(key, format!("'{p}' must start with '/'")));
            }
        }
        if self.echo.path.as_deref() == Some(self.websocket.path.as_str()) {
            return Err(err("echo.path", "must differ from websocket.path".into()));
        }
        if let Some(p) = self.raw_fanout.path.as_deref()
            && (p == self.websocket.path || Some(p) == self.echo.path.as_deref())
        {
            return Err(err(
                "raw_fanout.path",
                "must differ from websocket.path and echo.path".into(),
            ));
        }
        let c = &self.websocket.compression;
        if !(9..=15).contains(&c.server_max_window_bits) {
            return Err(err(
                "websocket.compression.server_max_window_bits",
                format!("{} is outside 9..=15", c.server_max_window_bits),
            ));
        }
        if !(8..=15).contains(&c.client_max_window_bits) {
            return Err(err(
                "websocket.compression.client_max_window_bits",
                format!("{} is outside 8..=15", c.client_max_window_bits),
            ));
        }
        if self.websocket.max_message_size.0 == 0 {
            return Err(err(
                "websocket.max_message_size",
                "must be at least 1 byte".into(),
            ));
        }
        let b = &self.broker;
        if b.kind == BrokerKind::Redis {
            let given: Vec<&str> = [
                ("broker.url", b.url.is_some()),
                ("broker.sentinel", b.sentinel.is_some()),
                ("broker.cluster", b.cluster.is_some()),
            ]
            .into_iter()
            .filter_map(|(key, set)| set.then_some(key))
            .collect();
            match given[..] {
                [] => {
                    return Err(err(
                        "broker.url",
                        "is required with kind = \"redis\" (redis://host:port), unless \
                         broker.sentinel (a Sentinel-monitored Redis) or broker.cluster (a \
                         Redis Cluster) is given"
                            .into(),
                    ));
                }
                [_] => {}
                [first, ..] => {
                    return Err(err(
                        first,
                        format!(
                            "{} are mutually exclusive: give broker.url for one Redis, \
                             broker.sentinel for a Sentinel-monitored one, broker.cluster for \
                             a Redis Cluster",
                            given.join(" and ")
                        ),
                    ));
                }
            }
            if let Some(u) = b.url.as_deref()
                && !u.starts_with("redis://")
                && !u.starts_with("redis+unix://")
            {
                return Err(err(
                    "broker.url",
                    "must start with redis:// (or redis+unix://)".into(),
                ));
            }
            if let Some(s) = &b.sentinel {
                Self::validate_sentinel(s, &err)?;
            }
            match b.cluster.as_deref() {
                Some([]) => {
                    return Err(err(
                        "broker.cluster",
                        "must name at least one seed node (redis://host:port)".into(),
                    ));
                }
                Some(seeds) => {
                    for (i, u) in seeds.iter().enumerate() {
                        if !u.starts_with("redis://") {
                            return Err(err(
                                &format!("broker.cluster[{i}]"),
                                format!("'{u}' must start with redis://"),
                            ));
                        }
                    }
                }
                None => {}
            }
        }
        if b.prefix.is_empty() || b.prefix.contains(['{', '}']) {
            return Err(err(
                "broker.prefix",
                format!("'{}' must be non-empty, without braces", b.prefix),
            ));
        }
        for (key, d) in [
            ("broker.presence_ttl", b.presence_ttl),
            ("broker.sweep_interval", b.sweep_interval),
            ("broker.timeout", b.timeout),
        ] {
            if d < Duration::from_millis(10) {
                return Err(err(key, "must be at least 10ms".into()));
            }
        }
        for (i, o) in self.websocket.allowed_origins.iter().enumerate() {
            crate::origin::check_entry(o)
                .map_err(|m| err(&format!("websocket.allowed_origins[{i}]"), m))?;
        }
        self.validate_proxies(&err)?;
        match (&self.tls.cert, &self.tls.key) {
            (Some(_), None) => {
                return Err(err(
                    "tls.key",
                    "is required with tls.cert (the certificate's private key, PEM)".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(err(
                    "tls.cert",
                    "is required with tls.key (the certificate chain, PEM)".into(),
                ));
            }
            _ => {}
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, k) in self.api.keys.iter().enumerate() {
            if k.name.trim().is_empty() {
                return Err(err(
                    &format!("api.keys[{i}].name"),
                    "must not be empty".into(),
                ));
            }
            if !names.insert(k.name.as_str()) {
                return Err(err(
                    &format!("api.keys[{i}].name"),
                    format!("'{}' names another key too; names must be unique", k.name),
                ));
            }
            if k.key.trim().len() < MIN_API_KEY_LEN {
                return Err(err(
                    &format!("api.keys[{i}].key"),
                    format!(
                        "must be at least {MIN_API_KEY_LEN} bytes (e.g. `openssl rand -base64 32`)"
                    ),
                ));
            }
        }
        if self.api.max_body_size.0 == 0 {
            return Err(err("api.max_body_size", "must be at least 1 byte".into()));
        }
        if self.limits.commands_per_second > 1000 {
            return Err(err(
                "limits.commands_per_second",
                format!(
                    "{} is above 1000 (0 turns the limit off)",
                    self.limits.commands_per_second
                ),
            ));
        }
        if self.limits.commands_per_second > 0 && self.limits.commands_burst == 0 {
            return Err(err(
                "limits.commands_burst",
                "must be at least 1 while limits.commands_per_second is on".into(),
            ));
        }
        if self.limits.new_connections_per_second_per_ip > 1000 {
            return Err(err(
                "limits.new_connections_per_second_per_ip",
                format!(
                    "{} is above 1000 (0 turns the limit off)",
                    self.limits.new_connections_per_second_per_ip
                ),
            ));
        }
        if self.limits.max_memory.is_some_and(|m| m.0 < 16 << 20) {
            return Err(err(
                "limits.max_memory",
                "must be at least 16 MiB (the process needs about that much to start)".into(),
            ));
        }
        if self.limits.max_request_head.0 < 8 * 1024 {
            return Err(err(
                "limits.max_request_head",
                "must be at least 8 KiB".into(),
            ));
        }
        if self.websocket.ping_interval.is_zero() {
            return Err(err("websocket.ping_interval", "must be positive".into()));
        }
        if self.websocket.idle_timeout <= self.websocket.ping_interval {
            return Err(err(
                "websocket.idle_timeout",
                format!(
                    "{:?} must be longer than websocket.ping_interval ({:?}) or every connection times out",
                    self.websocket.idle_timeout, self.websocket.ping_interval
                ),
            ));
        }
        Ok(())
    }
}

/// Deserializes with the failing key's path in the error.
fn deserialize(
    value: toml::Value,
    source_of: &dyn Fn(&str) -> String,
) -> Result<Config, ConfigError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let key = e.path().to_string();
        let message = e.into_inner().to_string();
        // toml appends "in `key`" on a second line; the key is named separately.
        let message = message
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_string();
        // serde names an unknown field in the message; make sure it ends the key path.
        let key = match unknown_field(&message) {
            Some(field) if key == "." || key.is_empty() => field.to_string(),
            Some(field) if !key.ends_with(field) => format!("{key}.{field}"),
            _ => key,
        };
        ConfigError::Key {
            source_name: source_of(&key),
            key,
            message,
        }
    })
}

fn unknown_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split('`').next()
}

/// Reads an environment value as TOML where it is one, else as a string.
fn env_value(raw: &str) -> toml::Value {
    let doc = format!("v = {raw}");
    match doc.parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.into()),
    }
}

fn insert(table: &mut toml::Table, dotted: &str, value: toml::Value) {
    let mut parts = dotted.split('.').peekable();
    let mut cur = table;
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            cur.insert(part.to_string(), value);
            return;
        }
        let entry = cur
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()));
        if !entry.is_table() {
            *entry = toml::Value::Table(Default::default());
        }
        cur = entry.as_table_mut().expect("just made a table");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sb.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(&Sources {
            file: Some(path),
            ..Default::default()
        })
    }

    #[test]
    fn defaults() {
        let c = Config::load(&Sources::default()).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.websocket.max_message_size, ByteSize(65536));
        assert_eq!(c.websocket.ping_interval, Duration::from_secs(25));
        assert!(c.echo.path.is_none());
    }

    #[test]
    fn file_values_sizes_and_durations() {
        let c = load_str(
            "listen = \"127.0.0.1:9000\"\n[websocket]\nmax_message_size = \"16MiB\"\nping_interval = \"5s\"\nidle_timeout = 12\n[echo]\npath = \"/echo\"\n",
        )
        .unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.websocket.max_message_size, ByteSize(16 << 20));
        assert_eq!(c.websocket.idle_timeout, Duration::from_secs(12));
        assert_eq!(c.echo.path.as_deref(), Some("/echo"));
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        let e = load_str("[websocket]\nmax_mesage_size = 10\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("websocket.max_mesage_size"), "{e}");
        assert!(e.contains("sb.toml"), "{e}");
    }

    #[test]
    fn bad_value_names_key() {
        let e = load_str("[websocket]\nmax_message_size = \"12 parsecs\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("websocket.max_message_size"), "{e}");
        let e = load_str("listen = \"nowhere\"\n").unwrap_err().to_string();
        assert!(e.contains("'listen'"), "{e}");
    }

    #[test]
    fn proxies_keys_defaults_and_errors_name_the_key() {
        let c = load_str(
            "[proxies.connect]\nurl = \"http://127.0.0.1:8000/connect\"\nheaders = [\"Cookie\"]\n[proxies.subscribe]\nurl = \"http://127.0.0.1:8000/subscribe\"\ntimeout = \"2s\"\n[namespaces.chat]\nproxies = [\"subscribe\"]\n",
        )
        .unwrap();
        let connect = c.proxies.connect.as_ref().unwrap();
        assert_eq!(connect.timeout, Duration::from_secs(5));
        assert_eq!(connect.headers, ["Cookie"]);
        assert_eq!(c.proxies.subscribe.unwrap().timeout, Duration::from_secs(2));
        assert_eq!(c.proxies.max_in_flight, 256);
        assert_eq!(c.namespaces["chat"].proxies, [NamespaceProxy::Subscribe]);

        for (text, key) in [
            (
                "[namespaces.chat]\nproxies = [\"publish\"]\n",
                "namespaces.chat.proxies[0]",
            ),
            (
                "[namespaces.chat]\nproxies = [\"connect\"]\n",
                "namespaces.chat.proxies",
            ),
            (
                "[proxies.rpc]\nurl = \"b.example/rpc\"\n",
                "proxies.rpc.url",
            ),
            ("[proxies.rpc]\ntimeout = \"1s\"\n", "proxies.rpc"),
            (
                "[proxies.rpc]\nurl = \"http://b/rpc\"\nheaders = [\"Cookie\", \"\"]\n",
                "proxies.rpc.headers[1]",
            ),
            (
                "[proxies.connect]\nurl = \"http://b/c\"\nheaders = [\"a b\"]\n",
                "proxies.connect.headers[0]",
            ),
            ("[proxies]\nmax_in_flight = 0\n", "proxies.max_in_flight"),
            (
                "[auth]\nfirst_message = true\n[proxies.connect]\nurl = \"http://b/c\"\n",
                "auth.first_message",
            ),
        ] {
            let e = load_str(text).unwrap_err().to_string();
            assert!(e.contains(&format!("'{key}")), "{text}: {e}");
        }
        let e = Config::load(&Sources {
            env: vec![("SWITCHBOARD_PROXIES__RPC__URL".into(), "ftp://x".into())],
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("proxies.rpc.url"), "{e}");
    }

    #[test]
    fn tls_keys_both_or_neither_also_from_the_environment() {
        assert!(!Config::default().tls.enabled());
        let c =
            load_str("[tls]\ncert = \"/etc/sb/cert.pem\"\nkey = \"/etc/sb/key.pem\"\n").unwrap();
        assert!(c.tls.enabled());
        assert_eq!(c.tls.cert.unwrap(), PathBuf::from("/etc/sb/cert.pem"));
        let e = load_str("[tls]\ncert = \"/etc/sb/cert.pem\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("'tls.key'"), "{e}");
        let e = load_str("[tls]\nkey = \"/etc/sb/key.pem\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("'tls.cert'"), "{e}");
        let c = Config::load(&Sources {
            env: vec![
                ("SWITCHBOARD_TLS__CERT".into(), "/run/c.pem".into()),
                ("SWITCHBOARD_TLS__KEY".into(), "/run/k.pem".into()),
            ],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.tls.key.unwrap(), PathBuf::from("/run/k.pem"));
    }

    #[test]
    fn syntax_error_names_file() {
        let e = load_str("listen = \n").unwrap_err().to_string();
        assert!(e.contains("sb.toml"), "{e}");
    }

    #[test]
    fn env_and_flags_override_in_order() {
        let sources = Sources {
            file: None,
            env: vec![
                ("SWITCHBOARD_LISTEN".into(), "127.0.0.1:7000".into()),
                (
                    "SWITCHBOARD_WEBSOCKET__MAX_MESSAGE_SIZE".into(),
                    "1024".into(),
                ),
                ("PATH".into(), "/bin".into()),
            ],
            flags: vec![(
                "listen".into(),
                toml::Value::String("127.0.0.1:7001".into()),
            )],
        };
        let c = Config::load(&sources).unwrap();
        assert_eq!(c.listen.port(), 7001);
        assert_eq!(c.websocket.max_message_size, ByteSize(1024));
    }

    #[test]
    fn env_error_names_variable() {
        let sources = Sources {
            env: vec![("SWITCHBOARD_WEBSOCKET__PING_INTERVALL".into(), "3".into())],
            ..Default::default()
        };
        let e = Config::load(&sources).unwrap_err().to_string();
        assert!(e.contains("SWITCHBOARD_WEBSOCKET__PING_INTERVALL"), "{e}");
        assert!(e.contains("websocket.ping_intervall"), "{e}");
    }

    #[test]
    fn validation_names_key() {
        let e = load_str("[websocket]\nping_interval = 30\nidle_timeout = 10\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("websocket.idle_timeout"), "{e}");
        let e = load_str("[echo]\npath = \"echo\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("echo.path"), "{e}");
    }

    /// The documented example is a valid configuration, also with every commented key
    /// switched on, so the docs cannot name a key the server does not know.
    #[test]
    fn example_file_is_valid_with_every_key() {
        let example = include_str!("../../../docs/switchboard.example.toml");
        load_str(example).unwrap();
        let all: String = example
            .lines()
            .map(|l| {
                let t = l.trim_start_matches("# ");
                let is_key = t.split_once(" = ").is_some_and(|(k, _)| {
                    !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                });
                let is_section = t.starts_with("[namespaces.")
                    || t.starts_with("[proxies")
                    || t.starts_with("[tls]");
                if l.starts_with("# ") && (is_key || is_section) {
                    t.split(" #").next().unwrap().to_string()
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let c = load_str(&all).unwrap_or_else(|e| panic!("{e}\n{all}"));
        assert_eq!(c.echo.path.as_deref(), Some("/echo"));
        assert_eq!(c.namespaces["chat"].max_subscribers, Some(10000));
        assert_eq!(c.dev, Some(false));
        assert_eq!(c.namespaces["chat"].proxies.len(), 2);
        assert!(c.proxies.connect.is_some() && c.proxies.rpc.is_some());
        assert_eq!(c.limits.max_memory, Some(ByteSize(6 << 30)));
    }

    #[test]
    fn broker_from_file_and_environment() {
        assert_eq!(Config::default().broker.kind, BrokerKind::Memory);
        let e = load_str("[broker]\nkind = \"redis\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("broker.url"), "{e}");
        let c = Config::load(&Sources {
            env: vec![
                ("SWITCHBOARD_BROKER__KIND".into(), "redis".into()),
                (
                    "SWITCHBOARD_BROKER__URL".into(),
                    "redis://:hunter2@127.0.0.1:6390".into(),
                ),
            ],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.broker.kind, BrokerKind::Redis);
        assert_eq!(
            c.broker.url.as_deref(),
            Some("redis://:hunter2@127.0.0.1:6390")
        );
        assert!(!format!("{c:?}").contains("hunter2"));
        let e = load_str("[broker]\nkind = \"redis\"\nurl = \"http://x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("broker.url"), "{e}");
    }

    #[test]
    fn validation_errors_name_the_variable_that_set_the_key() {
        let e = Config::load(&Sources {
            env: vec![
                ("SWITCHBOARD_BROKER__KIND".into(), "redis".into()),
                ("SWITCHBOARD_BROKER__URL".into(), "http://x".into()),
            ],
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("environment variable SWITCHBOARD_BROKER__URL: key 'broker.url'"),
            "{e}"
        );
        let e = Config::load(&Sources {
            flags: vec![("broker.prefix".into(), toml::Value::String("{x}".into()))],
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("flag --broker-prefix: key 'broker.prefix'"),
            "{e}"
        );
    }

    #[test]
    fn broker_cluster_from_file_and_environment() {
        let c = load_str(
            "[broker]\nkind = \"redis\"\ncluster = [\"redis://127.0.0.1:7000\", \"redis://127.0.0.1:7001\"]\n",
        )
        .unwrap();
        assert_eq!(
            c.broker.cluster.as_deref(),
            Some(
                &[
                    "redis://127.0.0.1:7000".to_owned(),
                    "redis://127.0.0.1:7001".to_owned()
                ][..]
            )
        );
        for value in [
            "[\"redis://:pw@a:7000\", \"redis://b:7001\"]",
            "redis://:pw@a:7000, redis://b:7001",
        ] {
            let c = Config::load(&Sources {
                env: vec![
                    ("SWITCHBOARD_BROKER__KIND".into(), "redis".into()),
                    ("SWITCHBOARD_BROKER__CLUSTER".into(), value.into()),
                ],
                ..Default::default()
            })
            .unwrap();
            assert_eq!(
                c.broker.cluster.as_deref(),
                Some(&["redis://:pw@a:7000".to_owned(), "redis://b:7001".to_owned()][..]),
                "{value}"
            );
            assert!(c.broker.url.is_none());
            assert!(!format!("{c:?}").contains("pw@"), "{c:?}");
        }
        let e = load_str(
            "[broker]\nkind = \"redis\"\nurl = \"redis://a:1\"\ncluster = [\"redis://b:2\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("broker.url") && e.contains("broker.cluster"),
            "{e}"
        );
        let e = load_str("[broker]\nkind = \"redis\"\ncluster = []\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("broker.cluster"), "{e}");
        let e = load_str("[broker]\nkind = \"redis\"\ncluster = [\"http://b:2\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("broker.cluster[0]"), "{e}");
    }

    #[test]
    fn broker_sentinel_from_file_and_environment() {
        let c = load_str(
            "[broker]\nkind = \"redis\"\n\
             sentinel = { urls = [\"redis://127.0.0.1:26379\", \"redis://:s3cret@127.0.0.1:26380\"], \
             master = \"mymaster\", password = \"hunter2\" }\n",
        )
        .unwrap();
        let s = c.broker.sentinel.as_ref().unwrap();
        assert_eq!(s.urls.len(), 2);
        assert_eq!(s.master, "mymaster");
        assert_eq!(s.password.as_deref(), Some("hunter2"));
        assert_eq!(s.wait_for_replicas, 1, "the default");
        let debug = format!("{c:?}");
        assert!(
            !debug.contains("hunter2") && !debug.contains("s3cret"),
            "{debug}"
        );

        // The environment: urls as one comma-separated string or a TOML array.
        for urls in [
            "redis://127.0.0.1:26379, redis://127.0.0.1:26380",
            "[\"redis://127.0.0.1:26379\", \"redis://127.0.0.1:26380\"]",
        ] {
            let c = Config::load(&Sources {
                env: vec![
                    ("SWITCHBOARD_BROKER__KIND".into(), "redis".into()),
                    ("SWITCHBOARD_BROKER__SENTINEL__URLS".into(), urls.into()),
                    ("SWITCHBOARD_BROKER__SENTINEL__MASTER".into(), "m".into()),
                    (
                        "SWITCHBOARD_BROKER__SENTINEL__WAIT_FOR_REPLICAS".into(),
                        "0".into(),
                    ),
                ],
                ..Default::default()
            })
            .unwrap();
            let s = c.broker.sentinel.unwrap();
            assert_eq!(
                s.urls,
                ["redis://127.0.0.1:26379", "redis://127.0.0.1:26380"],
                "{urls}"
            );
            assert_eq!((s.master.as_str(), s.wait_for_replicas), ("m", 0));
        }
    }

    #[test]
    fn broker_sentinel_errors_name_their_keys() {
        let redis = "[broker]\nkind = \"redis\"\n";
        let cases = [
            (
                "url = \"redis://x:6379\"\nsentinel = { urls = [\"redis://x:26379\"], master = \"m\" }\n",
                &["broker.url", "broker.sentinel", "mutually exclusive"][..],
            ),
            (
                "sentinel = { master = \"m\" }\n",
                &["broker.sentinel.urls"][..],
            ),
            (
                "sentinel = { urls = [\"redis://x:26379\"] }\n",
                &["broker.sentinel.master"][..],
            ),
            (
                "sentinel = { urls = [\"redis://x:26379\", \"http://:pw@y\"], master = \"m\" }\n",
                &["broker.sentinel.urls[1]", "redis://"][..],
            ),
            (
                "sentinel = { urls = [\"redis://x:26379\"], master = \"m\", wait_for_replica = 1 }\n",
                &["broker.sentinel.wait_for_replica"][..],
            ),
            (
                "sentinel = { urls = [\"redis://x:26379\"], master = \"m\", wait_for_replicas = -1 }\n",
                &["broker.sentinel.wait_for_replicas"][..],
            ),
        ];
        for (text, needles) in cases {
            let e = load_str(&format!("{redis}{text}")).unwrap_err().to_string();
            for needle in needles {
                assert!(e.contains(needle), "{text}: {e}");
            }
            assert!(!e.contains(":pw@"), "{e}");
        }
        // Neither: the error says both ways.
        let e = load_str(redis).unwrap_err().to_string();
        assert!(
            e.contains("broker.url") && e.contains("broker.sentinel"),
            "{e}"
        );
    }

    #[test]
    fn byte_size_parsing() {
        assert_eq!("64KiB".parse::<ByteSize>().unwrap(), ByteSize(65536));
        assert_eq!("16 MiB".parse::<ByteSize>().unwrap(), ByteSize(16 << 20));
        assert!("-3".parse::<ByteSize>().is_err());
        assert!("3 furlongs".parse::<ByteSize>().is_err());
    }

    #[test]
    fn api_keys_are_validated_and_named() {
        let ok = "[[api.keys]]\nname = \"backend\"\nkey = \"0123456789abcdef0123\"\n";
        let c = load_str(ok).unwrap();
        assert_eq!(c.api.keys[0].name, "backend");
        assert_eq!(c.api.max_body_size, ByteSize(1 << 20));
        assert!(!format!("{c:?}").contains("0123456789abcdef0123"));
        let short = format!("{ok}[[api.keys]]\nname = \"b\"\nkey = \"short\"\n");
        let e = load_str(&short).unwrap_err().to_string();
        assert!(e.contains("api.keys[1].key"), "{e}");
        let twice = format!("{ok}{ok}");
        let e = load_str(&twice).unwrap_err().to_string();
        assert!(
            e.contains("api.keys[1].name") && e.contains("unique"),
            "{e}"
        );
        let env = Config::load(&Sources {
            env: vec![(
                "SWITCHBOARD_API__KEYS".into(),
                "[{name = \"ci\", key = \"0123456789abcdef\"}]".into(),
            )],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(env.api.keys[0].name, "ci");
    }
}
