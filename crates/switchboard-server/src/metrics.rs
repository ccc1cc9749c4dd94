//! Prometheus metrics: counted per thread, summed at scrape time (`GET /metrics`).
//!
//! Counting must cost the hot path nothing measurable, so there is no shared atomic that
//! every connection bumps per message: a [`Metrics`] holds [`SHARDS`] cache-aligned shards of
//! counters, and each thread counts into the shard it was given on first use (a thread-local
//! index), with relaxed, uncontended atomic adds. A scrape sums the shards in a
//! [`prometheus_client::collector::Collector`]. Labels whose values could come from clients
//! are bounded: namespaces get their own label value only when configured (else `other`),
//! close codes only when they are in the protocol's table (else `other`).
//!
//! The node owns its metrics (through its hub), so several servers in one process count
//! separately; a bare [`crate::Server::builder`] without a node gets the metrics of its own hub.

use std::{
    cell::Cell,
    collections::HashMap,
    fmt::Write as _,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
    time::Duration,
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};
use switchboard_protocol::CLOSE_CODES;

use crate::auth::AuthError;

/// Shards per [`Metrics`]: threads beyond this share shards (still correct, atomics).
const SHARDS: usize = 16;
/// Label values of `transport`.
const TRANSPORTS: usize = 2;
/// Close-code label values: the table's codes, then `abnormal` (no close frame), `other`.
const CLOSES: usize = CLOSE_CODES.len() + 2;
/// Handshake refusal reasons (label values of `reason`).
const REFUSALS: [&str; 7] = [
    "bad_handshake",
    "unauthorized",
    "forbidden",
    "too_many_requests",
    "unavailable",
    "shutting_down",
    "other",
];
/// Upper bounds (seconds) of the latency histograms' buckets.
const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A transport, the `transport` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// WebSocket connections.
    WebSocket = 0,
    /// Server-Sent Events streams.
    Sse = 1,
}

impl Transport {
    const ALL: [Transport; TRANSPORTS] = [Transport::WebSocket, Transport::Sse];

    /// The label value: `websocket` or `sse`.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::Sse => "sse",
        }
    }
}

/// A broker operation, the `operation` label of the broker metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerOp {
    /// `Broker::publish`.
    Publish = 0,
    /// `Broker::subscribe`.
    Subscribe,
    /// `Broker::unsubscribe`.
    Unsubscribe,
    /// `Broker::history` (also the history read of a recovering subscribe).
    History,
    /// `Broker::history_remove`.
    HistoryRemove,
    /// `Broker::presence`.
    Presence,
    /// `Broker::presence_add`.
    PresenceAdd,
    /// `Broker::presence_remove`.
    PresenceRemove,
    /// A cluster command (per-user subscribe, unsubscribe, disconnect).
    Command,
    /// `Broker::broadcast` (raw broadcasts of the library API).
    Broadcast,
}

const BROKER_OPS: usize = 10;

impl BrokerOp {
    const ALL: [BrokerOp; BROKER_OPS] = [
        BrokerOp::Publish,
        BrokerOp::Subscribe,
        BrokerOp::Unsubscribe,
        BrokerOp::History,
        BrokerOp::HistoryRemove,
        BrokerOp::Presence,
        BrokerOp::PresenceAdd,
        BrokerOp::PresenceRemove,
        BrokerOp::Command,
        BrokerOp::Broadcast,
    ];

    /// The label value, e.g. `publish`.
    pub fn as_str(self) -> &'static str {
        match self {
            BrokerOp::Publish => "publish",
            BrokerOp::Subscribe => "subscribe",
            BrokerOp::Unsubscribe => "unsubscribe",
            BrokerOp::History => "history",
            BrokerOp::HistoryRemove => "history_remove",
            BrokerOp::Presence => "presence",
            BrokerOp::PresenceAdd => "presence_add",
            BrokerOp::PresenceRemove => "presence_remove",
            BrokerOp::Command => "command",
            BrokerOp::Broadcast => "broadcast",
        }
    }
}

/// A backend proxy, the `proxy` label (docs/proxies.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyKind {
    /// `[proxies.connect]`.
    Connect = 0,
    /// `[proxies.subscribe]`.
    Subscribe,
    /// `[proxies.publish]`.
    Publish,
    /// `[proxies.rpc]`.
    Rpc,
}

const PROXIES: usize = 4;

impl ProxyKind {
    const ALL: [ProxyKind; PROXIES] = [
        ProxyKind::Connect,
        ProxyKind::Subscribe,
        ProxyKind::Publish,
        ProxyKind::Rpc,
    ];

    /// The label value, e.g. `connect`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyKind::Connect => "connect",
            ProxyKind::Subscribe => "subscribe",
            ProxyKind::Publish => "publish",
            ProxyKind::Rpc => "rpc",
        }
    }
}

/// How a backend call ended, the `result` label of `switchboard_proxy_calls_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyResult {
    /// The backend allowed (or answered).
    Ok = 0,
    /// The backend answered with an `error`.
    Refused,
    /// No answer within the proxy's `timeout`.
    Timeout,
    /// The backend could not be reached, or answered something that is not a valid answer.
    Error,
    /// Not called: `proxies.max_in_flight` calls were already in flight.
    Overloaded,
}

const PROXY_RESULTS: usize = 5;

impl ProxyResult {
    const ALL: [ProxyResult; PROXY_RESULTS] = [
        ProxyResult::Ok,
        ProxyResult::Refused,
        ProxyResult::Timeout,
        ProxyResult::Error,
        ProxyResult::Overloaded,
    ];

    /// The label value, e.g. `timeout`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyResult::Ok => "ok",
            ProxyResult::Refused => "refused",
            ProxyResult::Timeout => "timeout",
            ProxyResult::Error => "error",
            ProxyResult::Overloaded => "overloaded",
        }
    }
}

/// A latency histogram of one shard.
#[derive(Debug, Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_nanos
            .fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Relaxed);
    }
}

/// One API endpoint and status: calls and their total duration.
#[derive(Debug, Default, Clone, Copy)]
struct ApiCell {
    calls: u64,
    timed: u64,
    sum_nanos: u64,
}

/// One thread's counters. Aligned so that two threads' shards never share a cache line.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard {
    /// A gauge kept as opened minus closed (wrapping; closes may count in another shard).
    connections: [AtomicU64; TRANSPORTS],
    accepted: [AtomicU64; TRANSPORTS],
    refused: [[AtomicU64; REFUSALS.len()]; TRANSPORTS],
    messages_in: [AtomicU64; TRANSPORTS],
    bytes_in: [AtomicU64; TRANSPORTS],
    messages_out: [AtomicU64; TRANSPORTS],
    bytes_out: [AtomicU64; TRANSPORTS],
    slow_closes: [AtomicU64; TRANSPORTS],
    closes: [[AtomicU64; CLOSES]; TRANSPORTS],
    deliveries: AtomicU64,
    /// Recovered, not recovered.
    recoveries: [AtomicU64; 2],
    auth_failures: [AtomicU64; AuthError::ALL.len()],
    rate_limited: AtomicU64,
    /// [`Budget`] events.
    budget: [AtomicU64; 3],
    broker_ops: [AtomicU64; BROKER_OPS],
    broker_errors: [AtomicU64; BROKER_OPS],
    broker_latency: [Histogram; BROKER_OPS],
    ping_rtt: Histogram,
    publish_to_write: Histogram,
    proxy_calls: [[AtomicU64; PROXY_RESULTS]; PROXIES],
    proxy_latency: [Histogram; PROXIES],
    /// Publications by configured namespace, the last one `other`.
    publications: Box<[AtomicU64]>,
    /// API calls by endpoint and status: bounded by the router's endpoints and statuses.
    api: Mutex<HashMap<(&'static str, u16), ApiCell>>,
}

static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's shard index, the same in every [`Metrics`].
    static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}

fn shard_index() -> usize {
    SHARD.with(|s| {
        let i = s.get();
        if i != usize::MAX {
            return i;
        }
        let i = NEXT_SHARD.fetch_add(1, Relaxed) % SHARDS;
        s.set(i);
        i
    })
}

fn sum<const N: usize>(shards: &[Shard], f: impl Fn(&Shard) -> &[AtomicU64; N]) -> [u64; N] {
    let mut out = [0u64; N];
    for s in shards {
        for (o, v) in out.iter_mut().zip(f(s)) {
            *o = o.wrapping_add(v.load(Relaxed));
        }
    }
    out
}

/// What the node's room and history budgets did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// A room's history was dropped (`limits.history_memory`).
    HistoryDropped = 0,
    /// An idle room was forgotten (`limits.max_rooms`).
    RoomForgotten = 1,
    /// A new room was refused (`limits.max_rooms`, every room in use).
    RoomRefused = 2,
}

/// A server's metrics. Cheap to count into from any thread; see the module docs.
#[derive(Debug)]
pub struct Metrics {
    shards: Box<[Shard]>,
    /// Configured namespaces, sorted: their index is their publications cell.
    namespaces: Vec<String>,
    /// The cluster-wide connection counts, when the broker keeps them: read at scrape time.
    cluster_admission: std::sync::OnceLock<Arc<dyn crate::limits::ClusterAdmission>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(std::iter::empty::<String>())
    }
}

impl Metrics {
    /// Metrics giving each of `namespaces` its own `namespace` label value.
    pub fn new<S: Into<String>>(namespaces: impl IntoIterator<Item = S>) -> Self {
        let mut namespaces: Vec<String> = namespaces.into_iter().map(Into::into).collect();
        namespaces.sort();
        namespaces.dedup();
        let shards = (0..SHARDS)
            .map(|_| Shard {
                publications: (0..=namespaces.len()).map(|_| AtomicU64::new(0)).collect(),
                ..Shard::default()
            })
            .collect();
        Metrics {
            shards,
            namespaces,
            cluster_admission: std::sync::OnceLock::new(),
        }
    }

    #[inline]
    fn shard(&self) -> &Shard {
        &self.shards[shard_index()]
    }

    /// A connection of `transport` was accepted (handshake answered) and is now open.
    pub fn connection_opened(&self, transport: Transport) {
        let s = self.shard();
        s.accepted[transport as usize].fetch_add(1, Relaxed);
        s.connections[transport as usize].fetch_add(1, Relaxed);
    }

    /// A connection of `transport` ended; `code` is the close code sent or received (the
    /// peer's when it closed first), `None` when TCP ended without a close handshake.
    pub fn connection_closed(&self, transport: Transport, code: Option<u16>) {
        let s = self.shard();
        s.connections[transport as usize].fetch_sub(1, Relaxed);
        let i = match code {
            Some(code) => CLOSE_CODES
                .iter()
                .position(|e| e.disconnect.code.0 == code)
                .unwrap_or(CLOSES - 1),
            None => CLOSES - 2,
        };
        s.closes[transport as usize][i].fetch_add(1, Relaxed);
    }

    /// Reports, at each scrape, how many connections `admission` admitted without the
    /// cluster-wide counts (`switchboard_admissions_unchecked_total`). Set once.
    pub fn watch_cluster_admission(&self, admission: Arc<dyn crate::limits::ClusterAdmission>) {
        let _ = self.cluster_admission.set(admission);
    }

    /// A connection attempt of `transport` was refused with `status` (before any
    /// connection existed); `shutting_down` when the server was draining.
    pub fn connection_refused(&self, transport: Transport, status: u16, shutting_down: bool) {
        let reason = match status {
            _ if shutting_down => 5,
            400 | 426 => 0,
            401 => 1,
            403 => 2,
            429 => 3,
            503 => 4,
            _ => 6,
        };
        self.shard().refused[transport as usize][reason].fetch_add(1, Relaxed);
    }

    /// `messages` data messages of `bytes` bytes in total (on the wire) were received.
    #[inline]
    pub fn received(&self, transport: Transport, messages: u64, bytes: u64) {
        let s = self.shard();
        if messages > 0 {
            s.messages_in[transport as usize].fetch_add(messages, Relaxed);
        }
        if bytes > 0 {
            s.bytes_in[transport as usize].fetch_add(bytes, Relaxed);
        }
    }

    /// `frames` frames (messages and control frames) of `bytes` bytes were written.
    #[inline]
    pub fn sent(&self, transport: Transport, frames: u64, bytes: u64) {
        let s = self.shard();
        if frames > 0 {
            s.messages_out[transport as usize].fetch_add(frames, Relaxed);
        }
        if bytes > 0 {
            s.bytes_out[transport as usize].fetch_add(bytes, Relaxed);
        }
    }

    /// A slow consumer of `transport` was closed (4500).
    pub fn slow_consumer_closed(&self, transport: Transport) {
        self.shard().slow_closes[transport as usize].fetch_add(1, Relaxed);
    }

    /// A publication to `room` was accepted by the broker.
    pub fn publication(&self, room: &str) {
        let ns = switchboard_protocol::wire::namespace(room);
        let i = self
            .namespaces
            .binary_search_by(|n| n.as_str().cmp(ns))
            .unwrap_or(self.namespaces.len());
        self.shard().publications[i].fetch_add(1, Relaxed);
    }

    /// One event was queued to `n` local members.
    #[inline]
    pub fn delivered(&self, n: usize) {
        if n > 0 {
            self.shard().deliveries.fetch_add(n as u64, Relaxed);
        }
    }

    /// A subscribe with `since` recovered what was missed (`true`) or could not (`false`).
    pub fn recovery(&self, recovered: bool) {
        self.shard().recoveries[usize::from(!recovered)].fetch_add(1, Relaxed);
    }

    /// A token was refused for `reason`.
    pub fn auth_failure(&self, reason: AuthError) {
        let i = AuthError::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.shard().auth_failures[i].fetch_add(1, Relaxed);
    }

    /// `n` [`Budget`] events of `kind` (`limits.history_memory`, `limits.max_rooms`).
    pub fn budget(&self, kind: Budget, n: u64) {
        self.shard().budget[kind as usize].fetch_add(n, Relaxed);
    }

    /// A command was refused by a rate limit.
    pub fn rate_limited(&self) {
        self.shard().rate_limited.fetch_add(1, Relaxed);
    }

    /// A broker operation took `elapsed` and failed or not.
    pub fn broker_op(&self, op: BrokerOp, ok: bool, elapsed: Duration) {
        let s = self.shard();
        s.broker_ops[op as usize].fetch_add(1, Relaxed);
        if !ok {
            s.broker_errors[op as usize].fetch_add(1, Relaxed);
        }
        s.broker_latency[op as usize].observe(elapsed);
    }

    /// A pong answered one of the sweeper's pings after `rtt`.
    pub fn observe_ping_rtt(&self, rtt: Duration) {
        self.shard().ping_rtt.observe(rtt);
    }

    /// A sampled publication was written to a member's socket `latency` after it reached the
    /// node.
    pub fn observe_publish_to_write(&self, latency: Duration) {
        self.shard().publish_to_write.observe(latency);
    }

    /// A backend call of `proxy` ended with `result`, after `elapsed` (`None`: not made).
    pub fn proxy_call(&self, proxy: ProxyKind, result: ProxyResult, elapsed: Option<Duration>) {
        let s = self.shard();
        s.proxy_calls[proxy as usize][result as usize].fetch_add(1, Relaxed);
        if let Some(d) = elapsed {
            s.proxy_latency[proxy as usize].observe(d);
        }
    }

    /// An API call to `endpoint` (a fixed name per route, e.g. `"publish"`: never client
    /// input) answered `status`, taking `duration` when known.
    pub fn api_call(&self, endpoint: &'static str, status: u16, duration: Option<Duration>) {
        let mut api = self.shard().api.lock().unwrap_or_else(|e| e.into_inner());
        let cell = api.entry((endpoint, status)).or_default();
        cell.calls += 1;
        if let Some(d) = duration {
            cell.timed += 1;
            cell.sum_nanos = cell
                .sum_nanos
                .saturating_add(d.as_nanos().min(u64::MAX as u128) as u64);
        }
    }

    /// The metrics in the Prometheus (OpenMetrics) text format.
    pub fn encode(self: &Arc<Self>) -> String {
        let mut registry = Registry::with_prefix("switchboard");
        registry.register_collector(Box::new(self.clone()));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// The content type of [`Metrics::encode`]'s text.
    pub const CONTENT_TYPE: &'static str =
        "application/openmetrics-text; version=1.0.0; charset=utf-8";
}

/// Writes a counter family with one label.
fn counters<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: impl IntoIterator<Item = (Vec<(&'a str, String)>, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in values {
        if labels.is_empty() {
            // A family of one sample: no `{}` after the name.
            return ConstCounter::new(v).encode(m);
        }
        let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn histogram(
    encoder: &mut prometheus_client::encoding::MetricEncoder,
    labels: &[(&str, &str)],
    shards: &[Shard],
    f: impl Fn(&Shard) -> &Histogram,
) -> Result<(), std::fmt::Error> {
    let mut counts = [0u64; BUCKETS.len()];
    let (mut count, mut sum) = (0u64, 0u64);
    for s in shards {
        let h = f(s);
        for (c, b) in counts.iter_mut().zip(&h.buckets) {
            *c += b.load(Relaxed);
        }
        count += h.count.load(Relaxed);
        sum = sum.wrapping_add(h.sum_nanos.load(Relaxed));
    }
    // Prometheus buckets are cumulative; the last, +Inf, is the count.
    let mut acc = 0;
    let mut buckets: Vec<(f64, u64)> = BUCKETS
        .iter()
        .zip(counts)
        .map(|(b, c)| {
            acc += c;
            (*b, acc)
        })
        .collect();
    buckets.push((f64::MAX, count));
    let sum = sum as f64 / 1e9;
    if labels.is_empty() {
        // No `{}` after the name.
        return encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None);
    }
    encoder
        .encode_family(&labels)?
        .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
}

impl Collector for Metrics {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let shards = &self.shards[..];
        let by_transport = |v: [u64; TRANSPORTS]| {
            Transport::ALL
                .iter()
                .map(move |t| (vec![("transport", t.as_str().to_string())], v[*t as usize]))
        };

        let open = sum(shards, |s| &s.connections);
        let mut m =
            e.encode_descriptor("connections", "Open connections", None, MetricType::Gauge)?;
        for t in Transport::ALL {
            let v = open[t as usize] as i64;
            ConstGauge::new(v).encode(m.encode_family(&[("transport", t.as_str())])?)?;
        }
        counters(
            &mut e,
            "connections_accepted",
            "Connections accepted (handshake completed)",
            by_transport(sum(shards, |s| &s.accepted)),
        )?;
        let mut refused = Vec::new();
        for t in Transport::ALL {
            for (i, reason) in REFUSALS.iter().enumerate() {
                let v: u64 = shards
                    .iter()
                    .map(|s| s.refused[t as usize][i].load(Relaxed))
                    .sum();
                refused.push((
                    vec![
                        ("transport", t.as_str().to_string()),
                        ("reason", reason.to_string()),
                    ],
                    v,
                ));
            }
        }
        counters(
            &mut e,
            "connections_refused",
            "Connection attempts refused, by reason",
            refused,
        )?;
        counters(
            &mut e,
            "messages_in",
            "Data messages received",
            by_transport(sum(shards, |s| &s.messages_in)),
        )?;
        counters(
            &mut e,
            "bytes_in",
            "Bytes received on connections",
            by_transport(sum(shards, |s| &s.bytes_in)),
        )?;
        counters(
            &mut e,
            "messages_out",
            "Frames written (messages and control frames)",
            by_transport(sum(shards, |s| &s.messages_out)),
        )?;
        counters(
            &mut e,
            "bytes_out",
            "Bytes written to connections",
            by_transport(sum(shards, |s| &s.bytes_out)),
        )?;
        counters(
            &mut e,
            "slow_consumer_closes",
            "Connections closed for a full outbound queue (4500)",
            by_transport(sum(shards, |s| &s.slow_closes)),
        )?;
        let mut closes = Vec::new();
        for t in Transport::ALL {
            let codes = CLOSE_CODES
                .iter()
                .map(|c| c.disconnect.code.0.to_string())
                .chain(["abnormal".to_string(), "other".to_string()]);
            for (i, code) in codes.enumerate() {
                let v: u64 = shards
                    .iter()
                    .map(|s| s.closes[t as usize][i].load(Relaxed))
                    .sum();
                closes.push((
                    vec![("transport", t.as_str().to_string()), ("code", code)],
                    v,
                ));
            }
        }
        counters(&mut e, "closes", "Connections ended, by close code", closes)?;
        let mut publications = Vec::new();
        for (i, ns) in self
            .namespaces
            .iter()
            .chain([&"other".to_string()])
            .enumerate()
        {
            let label = if ns.is_empty() { "default" } else { ns };
            let v: u64 = shards.iter().map(|s| s.publications[i].load(Relaxed)).sum();
            publications.push((vec![("namespace", label.to_string())], v));
        }
        counters(
            &mut e,
            "publications",
            "Publications accepted, by configured namespace (others: other)",
            publications,
        )?;
        let deliveries: u64 = shards.iter().map(|s| s.deliveries.load(Relaxed)).sum();
        counters(
            &mut e,
            "deliveries",
            "Events queued to local members (one per member)",
            [(vec![], deliveries)],
        )?;
        let rec = sum(shards, |s| &s.recoveries);
        counters(
            &mut e,
            "recoveries",
            "Subscribes with since: recovered or not",
            [
                (vec![("result", "recovered".to_string())], rec[0]),
                (vec![("result", "not_recovered".to_string())], rec[1]),
            ],
        )?;
        let auth = sum(shards, |s| &s.auth_failures);
        counters(
            &mut e,
            "auth_failures",
            "Tokens refused, by reason",
            AuthError::ALL
                .iter()
                .zip(auth)
                .map(|(r, v)| (vec![("reason", r.reason().to_string())], v)),
        )?;
        let limited: u64 = shards.iter().map(|s| s.rate_limited.load(Relaxed)).sum();
        counters(
            &mut e,
            "rate_limited_commands",
            "Commands refused by a rate limit",
            [(vec![], limited)],
        )?;
        let budget = sum(shards, |s| &s.budget);
        counters(
            &mut e,
            "budget_evictions",
            "Rooms whose history was dropped (history_memory) or that were forgotten (max_rooms) to stay within the node's budgets",
            [
                (
                    vec![("budget", "history_memory".to_string())],
                    budget[Budget::HistoryDropped as usize],
                ),
                (
                    vec![("budget", "max_rooms".to_string())],
                    budget[Budget::RoomForgotten as usize],
                ),
            ],
        )?;
        counters(
            &mut e,
            "admissions_unchecked",
            "Per-user and per-IP connection counts taken on this node alone because the cluster-wide counts could not be reached (fail open)",
            [(
                vec![],
                self.cluster_admission.get().map_or(0, |a| a.unchecked()),
            )],
        )?;
        counters(
            &mut e,
            "rooms_refused",
            "New rooms refused with limit_exceeded: limits.max_rooms reached and every room in use",
            [(vec![], budget[Budget::RoomRefused as usize])],
        )?;
        let by_op = |v: [u64; BROKER_OPS]| {
            BrokerOp::ALL
                .iter()
                .map(move |o| (vec![("operation", o.as_str().to_string())], v[*o as usize]))
        };
        counters(
            &mut e,
            "broker_operations",
            "Broker operations, by operation",
            by_op(sum(shards, |s| &s.broker_ops)),
        )?;
        counters(
            &mut e,
            "broker_errors",
            "Broker operations that failed, by operation",
            by_op(sum(shards, |s| &s.broker_errors)),
        )?;
        let mut m = e.encode_descriptor(
            "broker_operation_duration_seconds",
            "Broker operation latency, by operation",
            None,
            MetricType::Histogram,
        )?;
        for op in BrokerOp::ALL {
            histogram(&mut m, &[("operation", op.as_str())], shards, |s| {
                &s.broker_latency[op as usize]
            })?;
        }
        let mut m = e.encode_descriptor(
            "ping_rtt_seconds",
            "Round trip of the server's WebSocket pings (ping written to pong read)",
            None,
            MetricType::Histogram,
        )?;
        histogram(&mut m, &[], shards, |s| &s.ping_rtt)?;
        let mut m = e.encode_descriptor(
            "publish_to_write_seconds",
            "From a publication reaching the node to its write to the last local member's \
             socket, sampled (at most one publication per millisecond per dispatcher)",
            None,
            MetricType::Histogram,
        )?;
        histogram(&mut m, &[], shards, |s| &s.publish_to_write)?;
        let mut calls = Vec::new();
        for p in ProxyKind::ALL {
            for r in ProxyResult::ALL {
                let v: u64 = shards
                    .iter()
                    .map(|s| s.proxy_calls[p as usize][r as usize].load(Relaxed))
                    .sum();
                calls.push((
                    vec![
                        ("proxy", p.as_str().to_string()),
                        ("result", r.as_str().to_string()),
                    ],
                    v,
                ));
            }
        }
        counters(
            &mut e,
            "proxy_calls",
            "Calls to the application backend, by proxy and result",
            calls,
        )?;
        let mut m = e.encode_descriptor(
            "proxy_duration_seconds",
            "Duration of the backend calls that were made (timeouts included), by proxy",
            None,
            MetricType::Histogram,
        )?;
        for p in ProxyKind::ALL {
            histogram(&mut m, &[("proxy", p.as_str())], shards, |s| {
                &s.proxy_latency[p as usize]
            })?;
        }
        let mut api: HashMap<(&'static str, u16), ApiCell> = HashMap::new();
        for s in shards {
            for (k, v) in s.api.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                let c = api.entry(*k).or_default();
                c.calls += v.calls;
                c.timed += v.timed;
                c.sum_nanos = c.sum_nanos.saturating_add(v.sum_nanos);
            }
        }
        let mut api: Vec<_> = api.into_iter().collect();
        api.sort_by_key(|(k, _)| *k);
        counters(
            &mut e,
            "api_calls",
            "Server API calls, by endpoint and status",
            api.iter().map(|((endpoint, status), c)| {
                (
                    vec![
                        ("endpoint", endpoint.to_string()),
                        ("status", status.to_string()),
                    ],
                    c.calls,
                )
            }),
        )?;
        let mut seconds = String::new();
        let mut m = e.encode_descriptor(
            "api_call_duration_seconds",
            "Total time spent answering timed server API calls, by endpoint",
            None,
            MetricType::Counter,
        )?;
        for ((endpoint, status), c) in &api {
            seconds.clear();
            let _ = write!(seconds, "{status}");
            ConstCounter::new(c.sum_nanos as f64 / 1e9).encode(
                m.encode_family(&[("endpoint", *endpoint), ("status", seconds.as_str())])?,
            )?;
        }
        Ok(())
    }
}

/// When this process's ping stamps count from.
static PING_EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

/// A WebSocket ping (server frames are unmasked, control frames never compressed) whose
/// 8-byte payload is its send time: the peer echoes it in the pong (RFC 6455 5.5.3), so the
/// round trip needs no per-connection state. Made once per sweep of a registry shard.
pub(crate) fn timed_ping() -> bytes::Bytes {
    let epoch = *PING_EPOCH.get_or_init(std::time::Instant::now);
    let nanos = epoch.elapsed().as_nanos() as u64;
    let mut frame = Vec::with_capacity(10);
    frame.extend_from_slice(&[0x89, 8]);
    frame.extend_from_slice(&nanos.to_be_bytes());
    frame.into()
}

/// The round trip a pong with this payload measures, if it answers one of [`timed_ping`]'s
/// (a pong of the peer's own, or one claiming a time to come, measures nothing).
pub(crate) fn ping_rtt(payload: &[u8]) -> Option<Duration> {
    let sent: [u8; 8] = payload.try_into().ok()?;
    let sent = Duration::from_nanos(u64::from_be_bytes(sent));
    let now = PING_EPOCH.get()?.elapsed();
    now.checked_sub(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_several_threads_add_up_and_labels_stay_bounded() {
        let m = Arc::new(Metrics::new(["chat"]));
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..100 {
                        m.received(Transport::WebSocket, 1, 10);
                    }
                    m.publication("chat:a");
                    m.publication("anything:b");
                });
            }
        });
        m.connection_opened(Transport::Sse);
        m.connection_closed(Transport::Sse, Some(65000));
        let text = m.encode();
        assert!(text.contains(r#"switchboard_messages_in_total{transport="websocket"} 400"#));
        assert!(text.contains(r#"switchboard_bytes_in_total{transport="websocket"} 4000"#));
        assert!(text.contains(r#"switchboard_publications_total{namespace="chat"} 4"#));
        assert!(text.contains(r#"switchboard_publications_total{namespace="other"} 4"#));
        assert!(text.contains(r#"switchboard_connections{transport="sse"} 0"#));
        assert!(text.contains(r#"switchboard_closes_total{transport="sse",code="other"} 1"#));
    }
}
