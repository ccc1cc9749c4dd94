//! Abuse limits that are pure bookkeeping (docs/protocol.md 7.4, docs/security.md "Limits"):
//! the per-connection command rate limit, and admission: connections per user and per IP,
//! new connections per second per IP and handshakes in progress per IP, behind the
//! [`Admission`] trait, with the connection counts also asked of a [`ClusterAdmission`] when
//! a broker keeps them cluster-wide; and the node's memory budget ([`MemoryBudget`]).
//!
//! It owns no connection and no task: the listener (`server`), the upgrade (`route`) and the
//! protocol surface (`v1`) ask it and answer with the documented status or error. It must not
//! know about transports or the broker.

use std::{
    collections::HashMap,
    fmt,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use http::HeaderMap;
use tokio::time::Instant;

pub use crate::net::Cidr;
use crate::{config::LimitsConfig, error::Refusal, net::canonical};

/// `limits.max_memory`: while the process's resident memory is above the budget, new
/// connections are refused with 503 `memory` and `/readyz` answers 503, so that a node under
/// pressure sheds load (its load balancer sends new clients elsewhere) instead of being
/// killed by the kernel with every connection it holds. Open connections are not touched.
///
/// The resident size is read from `/proc/self/statm` on the admission path, at most once per
/// [`MemoryBudget::SAMPLE_EVERY`] (one small file read; no task of its own). Where there is
/// no `/proc` (not Linux) the budget never trips.
#[derive(Debug)]
pub struct MemoryBudget {
    max: u64,
    /// Milliseconds since `origin` of the last sample (`u64::MAX`: never sampled).
    sampled_at: AtomicU64,
    over: AtomicBool,
    origin: std::time::Instant,
}

impl MemoryBudget {
    /// How stale a sample may be.
    pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);
    /// `Retry-After` of the refusal: memory is given back slower than connections come.
    pub const RETRY_AFTER: Duration = Duration::from_secs(5);

    /// A budget of `max` bytes of resident memory.
    pub fn new(max: u64) -> MemoryBudget {
        MemoryBudget {
            max,
            sampled_at: AtomicU64::new(u64::MAX),
            over: AtomicBool::new(false),
            origin: std::time::Instant::now(),
        }
    }

    /// The budget in bytes.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Whether the process is above the budget (sampling it again when the last sample is
    /// older than [`MemoryBudget::SAMPLE_EVERY`]; one caller samples, the others read).
    pub fn over(&self) -> bool {
        let now = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        let last = self.sampled_at.load(Ordering::Relaxed);
        let stale =
            last == u64::MAX || now.saturating_sub(last) >= Self::SAMPLE_EVERY.as_millis() as u64;
        if stale
            && self
                .sampled_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let over = resident_bytes().is_some_and(|r| r > self.max);
            if over != self.over.swap(over, Ordering::Relaxed) {
                if over {
                    tracing::warn!(
                        max_memory = self.max,
                        "resident memory is above limits.max_memory: new connections are refused (503) until it is not"
                    );
                } else {
                    tracing::info!(
                        max_memory = self.max,
                        "resident memory is below limits.max_memory again: connections are accepted"
                    );
                }
            }
        }
        self.over.load(Ordering::Relaxed)
    }

    /// The refusal of a new connection while over the budget.
    pub fn refusal() -> Refusal {
        Refusal::unavailable("memory", Self::RETRY_AFTER)
    }
}

/// The process's resident memory in bytes (Linux: `/proc/self/statm`, in pages).
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * rustix::param::page_size() as u64)
}

/// A connection's command bucket: six bytes, no timer, nothing allocated. A generic cell rate
/// algorithm (GCRA): one "theoretical arrival time" stands for the whole token bucket.
///
/// Packed so that it fits in the padding of the v1 session next to a `bool` (the session must
/// stay 16 bytes, see `v1::Session`).
#[derive(Debug, Default, Clone, Copy)]
#[repr(C, packed)]
pub struct CommandBucket {
    /// When the bucket is full again, in milliseconds of [`now_ms`] (wrapping); 0 or any
    /// value in the past: full.
    tat: u32,
    /// When the current excess began, in tenths of a second of [`now_ms`] (wrapping, never 0);
    /// 0: no excess.
    excess_since: u16,
}

/// What the limiter says about one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Serve it.
    Allowed,
    /// Answer `rate_limited`; the next command is accepted after this many milliseconds.
    Limited {
        /// `retry_after_ms` of the error.
        retry_after_ms: u32,
    },
    /// The excess lasted `limits.rate_limit_close_after`: close with 4502.
    Close,
}

/// The command rate limit of a configuration (`limits.commands_per_second`,
/// `limits.commands_burst`, `limits.rate_limit_close_after`).
#[derive(Debug, Clone, Copy)]
pub struct CommandRate {
    /// Milliseconds one command costs (1000 / rate).
    interval: u32,
    /// How far ahead of now the bucket may run: `(burst - 1) × interval`.
    tau: u32,
    /// Tenths of a second of excess before closing; 0: never close.
    close_after: u16,
}

/// Milliseconds since the first call in this process, wrapping after 49 days: the bucket only
/// ever compares times less than a few seconds apart (see [`CommandRate::check`]).
pub fn now_ms() -> u32 {
    static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let base = *BASE.get_or_init(Instant::now);
    Instant::now().saturating_duration_since(base).as_millis() as u32
}

impl CommandRate {
    /// The limit configured, or `None` when `commands_per_second` is 0 (off).
    pub fn from_config(limits: &LimitsConfig) -> Option<CommandRate> {
        let rate = limits.commands_per_second;
        if rate == 0 {
            return None;
        }
        let interval = (1000 / rate).max(1);
        let tau = limits.commands_burst.max(1).saturating_sub(1) * interval;
        let close_after = (limits.rate_limit_close_after.as_millis() / 100).min(u16::MAX as u128);
        Some(CommandRate {
            interval,
            tau,
            close_after: close_after as u16,
        })
    }

    /// How far `bucket` runs ahead of `now`: 0 when full.
    fn ahead(&self, bucket: &CommandBucket, now: u32) -> u32 {
        let tat = bucket.tat;
        // It is never more than `tau + interval`: a larger (or negative) difference is a time
        // long past that wrapped around, so the bucket is full.
        let ahead = tat.wrapping_sub(now);
        if tat == 0 || ahead as i32 <= 0 || ahead > self.tau.saturating_add(self.interval) {
            0
        } else {
            ahead
        }
    }

    /// Whether `bucket` is full at `now` (its owner may be forgotten).
    pub fn is_full(&self, bucket: &CommandBucket, now: u32) -> bool {
        self.ahead(bucket, now) == 0
    }

    /// Takes one command from `bucket` at `now` (from [`now_ms`]).
    pub fn check(&self, bucket: &mut CommandBucket, now: u32) -> Verdict {
        let ahead = self.ahead(bucket, now);
        if ahead <= self.tau {
            bucket.tat = now.wrapping_add(ahead).wrapping_add(self.interval);
            // The excess ends once the bucket has refilled to half its burst: a client that
            // merely exceeds now and then is never closed.
            if bucket.excess_since != 0 && ahead <= self.tau / 2 {
                bucket.excess_since = 0;
            }
            return Verdict::Allowed;
        }
        let tenths = ((now / 100) as u16).max(1);
        let since = bucket.excess_since;
        if since == 0 {
            bucket.excess_since = tenths;
        } else if self.close_after != 0 && tenths.wrapping_sub(since) >= self.close_after {
            return Verdict::Close;
        }
        Verdict::Limited {
            retry_after_ms: ahead - self.tau,
        }
    }
}

/// The client's address, for limits, logs and the handler's connect info: the one place
/// that decides it.
///
/// When the TCP peer is in `trusted` (the `trusted_proxies` of the configuration), the
/// client is the right-most address of `X-Forwarded-For` (all its headers, in order; or,
/// without one, the `for=` parameters of `Forwarded`, RFC 7239) that is not itself a
/// trusted proxy: each proxy appends the address it saw, so everything left of the first
/// untrusted hop may be made up by the client. An entry that is not an IP address (`unknown`,
/// an obfuscated identifier) ends the walk at the last trusted hop. Otherwise the client is
/// the peer: headers from an untrusted peer are ignored, since anyone can send them.
pub fn client_ip(peer: SocketAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let peer = canonical(peer.ip());
    if !trusted.iter().any(|c| c.contains(peer)) {
        return peer;
    }
    let mut hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    if hops.is_empty() {
        hops = headers
            .get_all(http::header::FORWARDED)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|element| {
                element.split(';').find_map(|pair| {
                    let (k, v) = pair.split_once('=')?;
                    k.trim().eq_ignore_ascii_case("for").then_some(v)
                })
            })
            .collect();
    }
    // A bounded walk: a header of thousands of hops costs no more than 32.
    let mut client = peer;
    for hop in hops.iter().rev().take(32) {
        let Some(ip) = parse_hop(hop) else {
            break;
        };
        client = ip;
        if !trusted.iter().any(|c| c.contains(ip)) {
            break;
        }
    }
    client
}

/// One hop of `X-Forwarded-For` or a `Forwarded: for=` value: `1.2.3.4`, `1.2.3.4:5678`,
/// `"[2001:db8::1]:4711"`, `2001:db8::1`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim().trim_matches('"');
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Some(rest) = hop.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok().map(canonical);
    }
    hop.parse::<SocketAddr>().ok().map(|a| canonical(a.ip()))
}

/// Why [`Admission::open_ip`] or [`Admission::open_user`] refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdmissionRefused {
    /// `limits.connections_per_user` connections of this user are open.
    ConnectionsPerUser,
    /// `limits.connections_per_ip` connections (and handshakes) from this IP are open.
    ConnectionsPerIp,
    /// More than `limits.new_connections_per_second_per_ip` (burst
    /// `limits.new_connections_burst_per_ip`): the next one is accepted after this long.
    NewConnectionsPerIp(Duration),
}

/// How long a client refused for a connection count should wait: until one of its other
/// connections closes, which nobody can tell; long enough not to hammer the server.
const COUNT_RETRY_AFTER: Duration = Duration::from_secs(5);

impl AdmissionRefused {
    /// The `reason` of the 429 body.
    pub fn reason(self) -> &'static str {
        match self {
            AdmissionRefused::ConnectionsPerUser => "connections_per_user",
            AdmissionRefused::ConnectionsPerIp => "connections_per_ip",
            AdmissionRefused::NewConnectionsPerIp(_) => "new_connections_per_ip",
        }
    }

    /// The documented refusal (docs/protocol.md 7.3): 429 with `Retry-After`.
    pub fn refusal(self) -> Refusal {
        let after = match self {
            AdmissionRefused::NewConnectionsPerIp(d) => d,
            _ => COUNT_RETRY_AFTER,
        };
        Refusal::too_many_requests(self.reason(), after)
    }
}

/// The counts behind the connection limits: per IP (connections and handshakes in progress,
/// new connections per second) and per user. The in-memory [`LocalAdmission`] counts this
/// node's connections; a broker can count the cluster's.
///
/// Every successful `open_*` is matched by one `close_*` (the [`Admitted`] and
/// [`HandshakeTicket`] guards make sure of it).
pub trait Admission: Send + Sync + fmt::Debug + 'static {
    /// A TCP connection from `ip` was accepted and has not sent a whole request head yet;
    /// `false`: refuse it (`limits.connections_per_ip`).
    fn begin_handshake(&self, ip: IpAddr) -> bool;
    /// The handshake begun with [`Admission::begin_handshake`] is over.
    fn end_handshake(&self, ip: IpAddr);
    /// A connection from `ip` is about to be opened (before its token is checked).
    fn open_ip(&self, ip: IpAddr) -> Result<(), AdmissionRefused>;
    /// The connection counted by [`Admission::open_ip`] closed (or was refused later).
    fn close_ip(&self, ip: IpAddr);
    /// A connection of `user` (never anonymous) is about to be opened.
    fn open_user(&self, user: &str) -> Result<(), AdmissionRefused>;
    /// The connection counted by [`Admission::open_user`] closed.
    fn close_user(&self, user: &str);
    /// The cluster-wide count of `ip`'s connections, asked after [`Admission::open_ip`]
    /// admitted it here (a refusal here costs no round trip). What it counts is recorded in
    /// `slot` (left `None` when nothing is counted beyond this node).
    fn open_ip_cluster<'a>(
        &'a self,
        _ip: IpAddr,
        _slot: &'a mut Option<ClusterSlot>,
    ) -> AdmitFuture<'a> {
        Box::pin(std::future::ready(Ok(())))
    }
    /// The cluster-wide count of `user`'s connections, asked after [`Admission::open_user`]
    /// admitted it here; likewise recorded in `slot`.
    fn open_user_cluster<'a>(
        &'a self,
        _user: &'a str,
        _slot: &'a mut Option<ClusterSlot>,
    ) -> AdmitFuture<'a> {
        Box::pin(std::future::ready(Ok(())))
    }
    /// The connection counted by `open_*_cluster` in `slot` closed.
    fn close_cluster(&self, _slot: ClusterSlot) {}
}

/// What [`Admission::open_ip_cluster`], [`Admission::open_user_cluster`] and
/// [`ClusterAdmission::admit`] answer.
pub type AdmitFuture<'a> =
    std::pin::Pin<Box<dyn Future<Output = Result<(), AdmissionRefused>> + Send + 'a>>;

/// What a cluster-wide count counts: one user's or one IP's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CountKey<'a> {
    /// `limits.connections_per_user`.
    User(&'a str),
    /// `limits.connections_per_ip`.
    Ip(IpAddr),
}

/// One connection's places in the cluster-wide counts (per IP and per user), handed back
/// with [`ClusterAdmission::release`]: an id the cluster admission chose. Four bytes, never
/// 0: an `Option` of it fits in the padding of every connection's [`Admitted`] (an SSE
/// stream must stay one small allocation).
#[derive(Debug, PartialEq, Eq)]
pub struct ClusterSlot(pub std::num::NonZeroU32);

/// Connection counts kept across every node of a deployment (a broker shared by the nodes
/// keeps them), asked after the node's own counts admitted a connection.
pub trait ClusterAdmission: Send + Sync + fmt::Debug + 'static {
    /// Counts one more connection of `key` unless `limit` of them are open in the cluster
    /// (then [`AdmissionRefused::ConnectionsPerUser`] or
    /// [`AdmissionRefused::ConnectionsPerIp`]). A connection's counts share one `slot`: the
    /// first admission sets it, the next adds to it. When the shared counts cannot be
    /// reached, an implementation decides between admitting and refusing, and documents it.
    fn admit<'a>(
        &'a self,
        key: CountKey<'a>,
        limit: u32,
        slot: &'a mut Option<ClusterSlot>,
    ) -> AdmitFuture<'a>;
    /// The connection counted with `slot` closed. Never waits.
    fn release(&self, slot: ClusterSlot);
    /// How many counts since the start were taken without the shared counts (they could
    /// not be reached and the implementation admits then), for `/metrics`.
    fn unchecked(&self) -> u64 {
        0
    }
}

/// A handshake in progress, counted per IP until dropped.
#[derive(Debug)]
pub struct HandshakeTicket {
    admission: Arc<dyn Admission>,
    ip: IpAddr,
}

impl HandshakeTicket {
    /// Counts a handshake from `ip`; `None` when the IP has too many connections already.
    pub fn begin(admission: &Arc<dyn Admission>, ip: IpAddr) -> Option<HandshakeTicket> {
        admission.begin_handshake(ip).then(|| HandshakeTicket {
            admission: admission.clone(),
            ip,
        })
    }
}

impl Drop for HandshakeTicket {
    fn drop(&mut self) {
        self.admission.end_handshake(self.ip);
    }
}

/// An admitted connection's place in the counts, this node's and the cluster's, given back
/// when dropped (with the connection).
#[derive(Debug)]
pub struct Admitted {
    admission: Arc<dyn Admission>,
    ip: IpAddr,
    user: Option<Arc<str>>,
    /// Its places in the cluster's counts.
    slot: Option<ClusterSlot>,
}

impl Admitted {
    /// Counts a connection from `ip` (connections and new connections per IP): on this node
    /// first, then in the cluster.
    pub async fn open_ip(
        admission: &Arc<dyn Admission>,
        ip: IpAddr,
    ) -> Result<Admitted, AdmissionRefused> {
        admission.open_ip(ip)?;
        // Built before the cluster step: a refusal there gives the local count back on drop.
        let mut admitted = Admitted {
            admission: admission.clone(),
            ip,
            user: None,
            slot: None,
        };
        admission.open_ip_cluster(ip, &mut admitted.slot).await?;
        Ok(admitted)
    }

    /// Counts the connection against `user`'s too (anonymous connections are not counted):
    /// on this node first, then in the cluster.
    pub async fn open_user(&mut self, user: &Arc<str>) -> Result<(), AdmissionRefused> {
        if user.is_empty() || self.user.is_some() {
            return Ok(());
        }
        self.admission.open_user(user)?;
        match self.admission.open_user_cluster(user, &mut self.slot).await {
            Ok(()) => {
                self.user = Some(user.clone());
                Ok(())
            }
            Err(refused) => {
                self.admission.close_user(user);
                Err(refused)
            }
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.admission.close_ip(self.ip);
        if let Some(user) = &self.user {
            self.admission.close_user(user);
        }
        if let Some(slot) = self.slot.take() {
            self.admission.close_cluster(slot);
        }
    }
}

/// The counts of one IP.
#[derive(Debug, Default)]
struct IpEntry {
    handshakes: u32,
    connections: u32,
    /// New connections per second.
    bucket: CommandBucket,
}

#[derive(Debug, Default)]
struct Counts {
    ips: HashMap<IpAddr, IpEntry>,
    users: HashMap<Box<str>, u32>,
    /// The IP map is swept when it reaches this many entries.
    sweep_at: usize,
}

/// The smallest IP map that is swept.
const SWEEP_MIN: usize = 1024;

/// This node's counts, in memory. Its maps hold an entry per IP with a connection, a
/// handshake or a recent new connection, and one per user with a connection: bounded by the
/// connections, swept as they grow (no timer).
#[derive(Debug)]
pub struct LocalAdmission {
    per_user: u32,
    per_ip: u32,
    rate: Option<CommandRate>,
    counts: Mutex<Counts>,
    /// The cluster-wide counts, when the broker keeps them.
    cluster: Option<Arc<dyn ClusterAdmission>>,
}

impl LocalAdmission {
    /// The limits of `limits`; `relaxed` (development mode) turns the per-user and per-IP
    /// limits off.
    pub fn from_config(limits: &LimitsConfig, relaxed: bool) -> LocalAdmission {
        let cap = |n: usize| {
            if relaxed {
                0
            } else {
                u32::try_from(n).unwrap_or(u32::MAX)
            }
        };
        let rate = (!relaxed)
            .then(|| {
                CommandRate::from_config(&LimitsConfig {
                    commands_per_second: limits.new_connections_per_second_per_ip,
                    commands_burst: limits.new_connections_burst_per_ip,
                    rate_limit_close_after: Duration::ZERO,
                    ..LimitsConfig::default()
                })
            })
            .flatten();
        LocalAdmission {
            per_user: cap(limits.connections_per_user),
            per_ip: cap(limits.connections_per_ip),
            rate,
            counts: Mutex::new(Counts {
                sweep_at: SWEEP_MIN,
                ..Counts::default()
            }),
            cluster: None,
        }
    }

    /// Counts connections per user and per IP across the cluster too, with `cluster`, after
    /// this node's counts admitted them.
    pub fn with_cluster(mut self, cluster: Arc<dyn ClusterAdmission>) -> LocalAdmission {
        self.cluster = Some(cluster);
        self
    }

    /// Whether this admission limits anything at all.
    pub fn limits_anything(&self) -> bool {
        self.per_user > 0 || self.per_ip > 0 || self.rate.is_some()
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Entries of the IP map (for tests and metrics).
    pub fn tracked_ips(&self) -> usize {
        self.counts().ips.len()
    }

    /// Drops `ip`'s entry when it counts nothing any more.
    fn forget_if_idle(&self, counts: &mut Counts, ip: IpAddr) {
        let now = now_ms();
        if let Some(e) = counts.ips.get(&ip)
            && e.handshakes == 0
            && e.connections == 0
            && self.rate.is_none_or(|r| r.is_full(&e.bucket, now))
        {
            counts.ips.remove(&ip);
        }
    }

    /// The entry of `ip`, sweeping the map first when it has grown.
    fn entry<'a>(&self, counts: &'a mut Counts, ip: IpAddr) -> &'a mut IpEntry {
        if counts.ips.len() >= counts.sweep_at && !counts.ips.contains_key(&ip) {
            let now = now_ms();
            counts.ips.retain(|_, e| {
                e.handshakes > 0
                    || e.connections > 0
                    || self.rate.is_some_and(|r| !r.is_full(&e.bucket, now))
            });
            counts.sweep_at = (counts.ips.len() * 2).max(SWEEP_MIN);
        }
        counts.ips.entry(ip).or_default()
    }
}

impl Admission for LocalAdmission {
    fn begin_handshake(&self, ip: IpAddr) -> bool {
        if self.per_ip == 0 {
            return true;
        }
        let mut counts = self.counts();
        let e = self.entry(&mut counts, ip);
        if e.handshakes.saturating_add(e.connections) >= self.per_ip {
            return false;
        }
        e.handshakes += 1;
        true
    }

    fn end_handshake(&self, ip: IpAddr) {
        if self.per_ip == 0 {
            return;
        }
        let mut counts = self.counts();
        if let Some(e) = counts.ips.get_mut(&ip) {
            e.handshakes = e.handshakes.saturating_sub(1);
            self.forget_if_idle(&mut counts, ip);
        }
    }

    fn open_ip(&self, ip: IpAddr) -> Result<(), AdmissionRefused> {
        if self.per_ip == 0 && self.rate.is_none() {
            return Ok(());
        }
        let mut counts = self.counts();
        let e = self.entry(&mut counts, ip);
        if self.per_ip > 0 && e.connections >= self.per_ip {
            return Err(AdmissionRefused::ConnectionsPerIp);
        }
        if let Some(rate) = &self.rate
            && let Verdict::Limited { retry_after_ms } = rate.check(&mut e.bucket, now_ms())
        {
            return Err(AdmissionRefused::NewConnectionsPerIp(
                Duration::from_millis(u64::from(retry_after_ms)),
            ));
        }
        e.connections += 1;
        Ok(())
    }

    fn close_ip(&self, ip: IpAddr) {
        if self.per_ip == 0 && self.rate.is_none() {
            return;
        }
        let mut counts = self.counts();
        if let Some(e) = counts.ips.get_mut(&ip) {
            e.connections = e.connections.saturating_sub(1);
            self.forget_if_idle(&mut counts, ip);
        }
    }

    fn open_user(&self, user: &str) -> Result<(), AdmissionRefused> {
        if self.per_user == 0 {
            return Ok(());
        }
        let mut counts = self.counts();
        match counts.users.get_mut(user) {
            Some(n) if *n >= self.per_user => Err(AdmissionRefused::ConnectionsPerUser),
            Some(n) => {
                *n += 1;
                Ok(())
            }
            None => {
                counts.users.insert(user.into(), 1);
                Ok(())
            }
        }
    }

    fn close_user(&self, user: &str) {
        if self.per_user == 0 {
            return;
        }
        let mut counts = self.counts();
        if let Some(n) = counts.users.get_mut(user) {
            *n -= 1;
            if *n == 0 {
                counts.users.remove(user);
            }
        }
    }

    fn open_ip_cluster<'a>(
        &'a self,
        ip: IpAddr,
        slot: &'a mut Option<ClusterSlot>,
    ) -> AdmitFuture<'a> {
        match &self.cluster {
            Some(cluster) if self.per_ip > 0 => cluster.admit(CountKey::Ip(ip), self.per_ip, slot),
            _ => Box::pin(std::future::ready(Ok(()))),
        }
    }

    fn open_user_cluster<'a>(
        &'a self,
        user: &'a str,
        slot: &'a mut Option<ClusterSlot>,
    ) -> AdmitFuture<'a> {
        match &self.cluster {
            Some(cluster) if self.per_user > 0 => {
                cluster.admit(CountKey::User(user), self.per_user, slot)
            }
            _ => Box::pin(std::future::ready(Ok(()))),
        }
    }

    fn close_cluster(&self, slot: ClusterSlot) {
        if let Some(cluster) = &self.cluster {
            cluster.release(slot);
        }
    }
}

/// Longest number accepted in publication data, in characters: no client needs more, and a
/// double holds no more than 17 significant digits anyway.
pub const MAX_NUMBER_LEN: usize = 400;

/// Checks that `json` (valid JSON, as the parser accepted it) is JSON every client of ours
/// parses to the same value: no lone surrogate escapes (`"\ud800"`), no number a double
/// cannot hold (`1e999999`, a 60,000-digit integer). The error says what is wrong, for a
/// `bad_request` naming `data`.
///
/// One pass over the bytes, without allocating; numbers are converted only when they are long
/// or have an exponent.
pub fn check_data(json: &str) -> Result<(), String> {
    let b = json.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                i += 1;
                // Inside a string: only escapes matter.
                while i < b.len() && b[i] != b'"' {
                    if b[i] != b'\\' {
                        i += 1;
                        continue;
                    }
                    if b.get(i + 1) != Some(&b'u') {
                        i += 2;
                        continue;
                    }
                    let unit = hex4(b, i + 2).ok_or("an invalid \\u escape")?;
                    i += 6;
                    if (0xDC00..0xE000).contains(&unit) {
                        return Err(format!("a lone surrogate escape \\u{unit:04x}"));
                    }
                    if (0xD800..0xDC00).contains(&unit) {
                        let low = (b.get(i) == Some(&b'\\') && b.get(i + 1) == Some(&b'u'))
                            .then(|| hex4(b, i + 2))
                            .flatten();
                        match low {
                            Some(low) if (0xDC00..0xE000).contains(&low) => i += 6,
                            _ => return Err(format!("a lone surrogate escape \\u{unit:04x}")),
                        }
                    }
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                let mut exponent = false;
                while i < b.len() && matches!(b[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    exponent |= matches!(b[i], b'e' | b'E');
                    i += 1;
                }
                let number = &json[start..i];
                if number.len() > MAX_NUMBER_LEN {
                    return Err(format!(
                        "a number of {} characters (at most {MAX_NUMBER_LEN})",
                        number.len()
                    ));
                }
                // Up to 15 digits always fit; beyond, or with an exponent, ask the conversion.
                if (exponent || number.len() > 15)
                    && !number.parse::<f64>().is_ok_and(f64::is_finite)
                {
                    let shown: String = number.chars().take(24).collect();
                    return Err(format!("the number {shown} does not fit a double"));
                }
            }
            _ => i += 1,
        }
    }
    Ok(())
}

fn hex4(b: &[u8], at: usize) -> Option<u32> {
    let digits = std::str::from_utf8(b.get(at..at + 4)?).ok()?;
    u32::from_str_radix(digits, 16).ok()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_memory_budget_trips_above_the_resident_size_and_not_below() {
        let rss = resident_bytes().expect("Linux has /proc/self/statm");
        assert!(rss > 1 << 20, "{rss}");
        assert!(MemoryBudget::new(rss / 2).over());
        assert!(!MemoryBudget::new(rss * 4).over());
        let r = MemoryBudget::refusal();
        assert_eq!(r.status, http::StatusCode::SERVICE_UNAVAILABLE);
    }

    fn rate(per_second: u32, burst: u32, close_after: Duration) -> CommandRate {
        CommandRate::from_config(&LimitsConfig {
            commands_per_second: per_second,
            commands_burst: burst,
            rate_limit_close_after: close_after,
            ..LimitsConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn burst_then_rate() {
        let r = rate(50, 100, Duration::from_secs(10));
        let mut b = CommandBucket::default();
        let t0 = 1_000_000;
        for i in 0..100 {
            assert_eq!(r.check(&mut b, t0), Verdict::Allowed, "command {i}");
        }
        assert_eq!(r.check(&mut b, t0), Verdict::Limited { retry_after_ms: 20 });
        // One more every 20 ms.
        assert_eq!(r.check(&mut b, t0 + 20), Verdict::Allowed);
        assert!(matches!(r.check(&mut b, t0 + 20), Verdict::Limited { .. }));
        // Idle for two seconds: the whole burst again.
        for _ in 0..100 {
            assert_eq!(r.check(&mut b, t0 + 2_100), Verdict::Allowed);
        }
    }

    #[test]
    fn sustained_excess_closes_and_occasional_does_not() {
        let r = rate(50, 100, Duration::from_secs(10));
        let mut b = CommandBucket::default();
        let mut now = 5_000;
        // 100 commands per second, twice the rate: closed after 10 s of it.
        let mut closed_at = None;
        for _ in 0..3_000 {
            if r.check(&mut b, now) == Verdict::Close {
                closed_at = Some(now);
                break;
            }
            now += 10;
        }
        let closed_at = closed_at.expect("closed");
        assert!(
            (10_000..=12_500).contains(&(closed_at - 5_000)),
            "{closed_at}"
        );
        // A burst every few seconds is refused in part but never closed.
        let mut b = CommandBucket::default();
        for second in 0..30u32 {
            for _ in 0..150 {
                assert_ne!(r.check(&mut b, 100_000 + second * 3_000), Verdict::Close);
            }
        }
    }

    #[test]
    fn wraps_around() {
        let r = rate(50, 2, Duration::from_secs(10));
        let mut b = CommandBucket::default();
        let t = u32::MAX - 10;
        assert_eq!(r.check(&mut b, t), Verdict::Allowed);
        assert_eq!(r.check(&mut b, t), Verdict::Allowed);
        assert!(matches!(r.check(&mut b, t), Verdict::Limited { .. }));
        assert_eq!(r.check(&mut b, t.wrapping_add(45)), Verdict::Allowed);
        // Long past: full again.
        assert_eq!(r.check(&mut b, t.wrapping_add(3_000_000)), Verdict::Allowed);
        assert_eq!(r.check(&mut b, t.wrapping_add(3_000_000)), Verdict::Allowed);
    }

    #[test]
    fn data_every_client_parses() {
        for ok in [
            r#"{"a":[1,-2.5,3e10,1E-300,12345678901234567890,"\u00e9\ud83d\ude00\\u0000"]}"#,
            r#""\\ud800""#,
            r#""1e999999""#,
            "null",
            "-0.0",
        ] {
            assert_eq!(check_data(ok), Ok(()), "{ok}");
        }
        for (bad, says) in [
            (r#""\ud800""#, "lone surrogate"),
            (r#"{"x":"a\udc00b"}"#, "lone surrogate"),
            (r#""\ud800\u0041""#, "lone surrogate"),
            (r#"[1e999999]"#, "does not fit"),
            (r#"{"n":-1e309}"#, "does not fit"),
        ] {
            let e = check_data(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        let long = "9".repeat(60_000);
        assert!(check_data(&long).unwrap_err().contains("60000 characters"));
        let long = "9".repeat(320);
        assert!(check_data(&long).unwrap_err().contains("does not fit"));
    }

    #[test]
    fn bucket_is_small() {
        assert_eq!(std::mem::size_of::<CommandBucket>(), 6);
        assert!(
            CommandRate::from_config(&LimitsConfig {
                commands_per_second: 0,
                ..LimitsConfig::default()
            })
            .is_none()
        );
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn client_ip_reads_forwarded_headers_of_trusted_peers_only() {
        let trusted: Vec<Cidr> = vec!["10.0.0.0/8".parse().unwrap(), "::1".parse().unwrap()];
        let proxy: SocketAddr = "10.1.2.3:5000".parse().unwrap();
        let stranger: SocketAddr = "192.0.2.7:5000".parse().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // An untrusted peer's header is ignored.
        assert_eq!(
            client_ip(stranger, &xff(&["1.1.1.1"]), &trusted),
            ip("192.0.2.7")
        );
        // The right-most untrusted hop; a spoofed left part is skipped.
        assert_eq!(
            client_ip(proxy, &xff(&["6.6.6.6, 203.0.113.9", "10.9.9.9"]), &trusted),
            ip("203.0.113.9")
        );
        // Every hop trusted: the left-most.
        assert_eq!(
            client_ip(proxy, &xff(&["10.0.0.5"]), &trusted),
            ip("10.0.0.5")
        );
        // No header: the peer. Garbage ends the walk at the last trusted hop.
        assert_eq!(
            client_ip(proxy, &HeaderMap::new(), &trusted),
            ip("10.1.2.3")
        );
        assert_eq!(
            client_ip(proxy, &xff(&["unknown"]), &trusted),
            ip("10.1.2.3")
        );
        // Forwarded (RFC 7239), with quoted IPv6 and ports.
        let mut h = HeaderMap::new();
        h.insert(
            http::header::FORWARDED,
            r#"for=192.0.2.60;proto=http, for="[2001:db8:cafe::17]:4711""#
                .parse()
                .unwrap(),
        );
        assert_eq!(client_ip(proxy, &h, &trusted), ip("2001:db8:cafe::17"));
        let v6: SocketAddr = "[::1]:80".parse().unwrap();
        assert_eq!(
            client_ip(v6, &xff(&["198.51.100.1:8080"]), &trusted),
            ip("198.51.100.1")
        );
    }

    /// A cluster of one count per key kind, in memory: enough to see what `Admitted` asks and
    /// gives back (the Redis one is tested in `broker/redis/caps_tests.rs`).
    #[derive(Debug, Default)]
    struct Shared {
        users: Mutex<u32>,
        released: Mutex<Vec<u32>>,
    }

    impl ClusterAdmission for Shared {
        fn admit<'a>(
            &'a self,
            key: CountKey<'a>,
            limit: u32,
            slot: &'a mut Option<ClusterSlot>,
        ) -> AdmitFuture<'a> {
            let mut users = self.users.lock().unwrap();
            let r = match key {
                CountKey::User(_) if *users >= limit => Err(AdmissionRefused::ConnectionsPerUser),
                CountKey::User(_) => {
                    *users += 1;
                    *slot = std::num::NonZeroU32::new(*users).map(ClusterSlot);
                    Ok(())
                }
                CountKey::Ip(_) => Ok(()),
            };
            Box::pin(std::future::ready(r))
        }

        fn release(&self, slot: ClusterSlot) {
            let mut users = self.users.lock().unwrap();
            *users = users.saturating_sub(1);
            self.released.lock().unwrap().push(slot.0.get());
        }
    }

    #[tokio::test]
    async fn a_cluster_refusal_gives_the_local_count_back() {
        let limits = LimitsConfig {
            connections_per_user: 2,
            ..LimitsConfig::default()
        };
        let shared = Arc::new(Shared::default());
        // Another node holds one of the user's connections.
        *shared.users.lock().unwrap() = 1;
        let local = LocalAdmission::from_config(&limits, false).with_cluster(shared.clone());
        let admission: Arc<dyn Admission> = Arc::new(local);
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        let user: Arc<str> = Arc::from("u");
        let mut first = Admitted::open_ip(&admission, ip).await.unwrap();
        first.open_user(&user).await.unwrap();
        let mut second = Admitted::open_ip(&admission, ip).await.unwrap();
        assert_eq!(
            second.open_user(&user).await,
            Err(AdmissionRefused::ConnectionsPerUser)
        );
        // Refused by the cluster, not counted here: after the first closes, this node's count
        // is empty and the cluster's is the other node's one.
        drop(second);
        drop(first);
        assert_eq!(*shared.released.lock().unwrap(), [2]);
        assert_eq!(*shared.users.lock().unwrap(), 1);
        let mut a = Admitted::open_ip(&admission, ip).await.unwrap();
        a.open_user(&user).await.unwrap();
        // The node's own count refuses before the cluster is asked: with the cluster's count
        // lowered, only this node's two connections can refuse the third.
        *shared.users.lock().unwrap() = 0;
        let mut b = Admitted::open_ip(&admission, ip).await.unwrap();
        b.open_user(&user).await.unwrap();
        let mut c = Admitted::open_ip(&admission, ip).await.unwrap();
        assert_eq!(
            c.open_user(&user).await,
            Err(AdmissionRefused::ConnectionsPerUser)
        );
        assert_eq!(
            *shared.users.lock().unwrap(),
            1,
            "the local refusal asked the cluster"
        );
    }
}
