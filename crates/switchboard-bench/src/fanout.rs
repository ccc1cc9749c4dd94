//! `bench fanout`: N subscribers and P publishers on one room.
//!
//! - `protocol` mode goes through the v1 protocol at `/ws`: every connection authenticates,
//!   subscribes to the room (publishers too: the default namespace lets only subscribers
//!   publish) and publishers send `{"type":"publish","room":…,"echo":false,"data":{"t":…,
//!   "p":…,"s":…}}`.
//! - `raw` mode goes through a route that forwards every message a connection sends to every
//!   other connection (`switchboard serve --raw-fanout PATH`, or any broadcast server): the
//!   data object is the whole message. With `--socketio`, a Socket.IO server's room emit: every
//!   connection joins one room and an event `m` from one member goes to every other member
//!   (`socket.to(room).emit("m", data)`); publishers send `42["m",<data object>]`.
//!
//! - `api` mode: subscribers as in `protocol` mode, publishers are keep-alive HTTP/1.1
//!   connections of the server API sending `POST /api/publish` with the same data object
//!   (`--window` requests pipelined per connection, default 1; `--api-key`, else
//!   `$SWITCHBOARD_API_KEY`, else the development key file). With `--subscribers 0` it measures
//!   the API alone: publishes/s and request-to-response latency.
//!
//! In raw mode nothing tells a client when the server has made it a member of the broadcast
//! (a route may join it after the handshake), so before the run starts every publisher sends
//! membership probes (`{"probe":p}`) every 20 ms until every subscriber has seen one from every
//! publisher: only publications after that are expected everywhere.
//!
//! Publishers either keep a window of W publications in flight (closed loop: a publication
//! is complete when the subscriber that tracks that publisher received it) or send at a fixed
//! total rate R (open loop: latency counts from the intended send time). Subscribers read the
//! data object's `t` (send time), `p` (publisher) and `s` (sequence) to measure publish-to-
//! deliver latency and check that each publisher's sequence arrives whole and in order.

use std::{
    collections::BTreeMap,
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use clap::{Args, ValueEnum};
use serde_json::json;
use tokio::sync::Notify;

use crate::{
    api::{self, ApiConn},
    auth::{Auth, AuthArgs, TokenIssuer},
    conn::{Conn, ConnError},
    engine::{Counters, Pacer, ThreadCtx, Totals},
    payload::{self, Kind, StampFinder},
    plan::{self, CommonArgs, Plan},
    report,
    result::{BenchResult, Latency, Load, round1},
    socketio,
    sse::SseConn,
};

/// How messages reach the subscribers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Mode {
    /// The v1 protocol's rooms (subscribe, publish, `message` pushes).
    Protocol,
    /// A raw broadcast route: every message goes to every other connection.
    Raw,
    /// Subscribers as in `protocol`, publishers on the server API (`POST /api/publish`).
    Api,
}

/// How subscribers receive (publishers always use the WebSocket v1 protocol).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Transport {
    /// WebSocket v1 connections.
    Ws,
    /// Server-Sent Events streams (`GET /sse?room=…`, protocol mode only).
    Sse,
}

/// A connection of the run: WebSocket, an SSE subscriber's stream, or an API publisher.
enum Endpoint {
    Ws(Conn),
    Sse(SseConn),
    Api(ApiConn),
}

/// Options of `bench fanout`.
#[derive(Debug, Args)]
pub(crate) struct FanoutArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    auth: AuthArgs,
    /// Subscribers (0 only with --mode api: the API alone).
    #[arg(long, short = 'n', default_value_t = 100)]
    subscribers: usize,
    /// Publishers.
    #[arg(long, short = 'p', default_value_t = 1)]
    publishers: usize,
    /// Total publications per second across publishers (open loop). Without it, publishers
    /// keep --window publications in flight.
    #[arg(long, value_name = "R", conflicts_with = "window")]
    rate: Option<f64>,
    /// Publications in flight per publisher (closed loop).
    #[arg(long, value_name = "W")]
    window: Option<u64>,
    /// Size of the data object in bytes (padded up to it).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// protocol: rooms of the v1 protocol; raw: a broadcast route.
    #[arg(long, value_enum, default_value_t = Mode::Protocol)]
    mode: Mode,
    /// The room (protocol mode).
    #[arg(long, default_value = "bench:fanout")]
    room: String,
    /// Raw mode through Socket.IO (engine.io v4 over WebSocket): connect to the default
    /// namespace, publish the data as the event `m` (`42["m",{…}]`); the server emits it to
    /// every other member of one room. URL: ws://HOST:PORT/socket.io/?EIO=4&transport=websocket.
    #[arg(long)]
    socketio: bool,
    /// ws: subscribers on WebSocket; sse: subscribers on SSE streams of the same server
    /// (`/sse` beside the URL's path), publishers still on WebSocket.
    #[arg(long, value_enum, default_value_t = Transport::Ws)]
    transport: Transport,
    /// The server API key (--mode api). Default: $SWITCHBOARD_API_KEY, else the development
    /// key file beside the development secret (.switchboard/dev-api-key).
    #[arg(
        long,
        value_name = "KEY",
        env = "SWITCHBOARD_API_KEY",
        hide_env_values = true
    )]
    api_key: Option<String>,
}

/// How a publisher learns that its publications arrived: the subscriber that tracks it
/// stores the count it received and wakes it.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Tracker {
    acked: AtomicU64,
    notify: Notify,
}

#[derive(Debug)]
struct Params {
    mode: Mode,
    subscribers: usize,
    publishers: usize,
    rate_per_publisher: Option<f64>,
    window: u64,
    size: usize,
    room: String,
    transport: Transport,
    auth: Auth,
    /// The server API key (api mode).
    api_key: String,
    trackers: Vec<Tracker>,
    /// (subscriber, publisher) pairs whose membership probe arrived (raw mode).
    members: AtomicU64,
}

/// Time allowed for every subscriber to receive every publisher's membership probe.
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(10);

/// Output buffered beyond this is not added to (open loop: the publications stay due).
const MAX_BUFFERED: usize = 8 << 20;

/// Runs `bench fanout`.
pub(crate) fn run(args: FanoutArgs, tokens: &Arc<dyn TokenIssuer>) -> Result<ExitCode, String> {
    if args.publishers == 0 {
        return Err("--publishers must be at least 1".into());
    }
    if args.subscribers == 0 && args.mode != Mode::Api {
        return Err(
            "--subscribers must be at least 1 (0 is for --mode api: the server API alone)".into(),
        );
    }
    if let Some(r) = args.rate
        && !(r.is_finite() && r > 0.0)
    {
        return Err("--rate must be positive".into());
    }
    // An API connection answers one request at a time: in flight beyond that is pipelined.
    let default_window = if args.mode == Mode::Api { 1 } else { 16 };
    let window = args.window.unwrap_or(default_window).max(1);
    if args.mode != Mode::Raw {
        switchboard_protocol::wire::validate_room(&args.room)
            .map_err(|e| format!("--room {:?}: {e}", args.room))?;
    }
    if args.transport == Transport::Sse && args.mode == Mode::Raw {
        return Err(
            "--transport sse needs --mode protocol or api (SSE streams are rooms of the v1 \
             protocol)"
                .into(),
        );
    }
    if args.socketio && args.mode != Mode::Raw {
        return Err("--socketio needs --mode raw (Socket.IO is not the v1 protocol)".into());
    }
    let default_url = match args.mode {
        Mode::Protocol | Mode::Api => "ws://127.0.0.1:8080/ws",
        Mode::Raw if args.socketio => socketio::DEFAULT_URL,
        Mode::Raw => "ws://127.0.0.1:8080/fanout",
    };
    let total = args.subscribers + args.publishers;
    let plan = Plan::new(args.common, default_url, total)?.with_socketio(args.socketio)?;
    let auth = match args.mode {
        Mode::Protocol => Auth::resolve(&args.auth, true, tokens)?,
        Mode::Api => Auth::resolve(&args.auth, args.subscribers > 0, tokens)?,
        Mode::Raw => Auth::resolve(&args.auth, false, tokens)?,
    };
    let api_key = match args.mode {
        Mode::Api => api_key(args.api_key.as_deref(), tokens)?,
        _ => String::new(),
    };
    // Without subscribers the run counts answered publishes instead of deliveries.
    let api_alone = args.subscribers == 0;
    let counted = move |t: &Totals| if api_alone { t.commands } else { t.received };
    let auth_kind = auth.describe();
    let params = Arc::new(Params {
        mode: args.mode,
        subscribers: args.subscribers,
        publishers: args.publishers,
        rate_per_publisher: args.rate.map(|r| r / args.publishers as f64),
        window,
        size: args.size,
        room: args.room.clone(),
        transport: args.transport,
        auth,
        api_key,
        trackers: (0..args.publishers).map(|_| Tracker::default()).collect(),
        members: AtomicU64::new(0),
    });
    let (open_plan, open_params, run_params) =
        (Arc::new(plan.clone()), params.clone(), params.clone());
    let driver = plan.start_connections(
        move |_, i, limit| {
            let (plan, params) = (open_plan.clone(), open_params.clone());
            async move { setup(&plan, &params, i, &limit).await }
        },
        move |ctx, i, conn| {
            let params = run_params.clone();
            async move {
                match conn {
                    Endpoint::Sse(conn) => sse_subscriber(&ctx, conn, &params, i).await,
                    Endpoint::Api(conn) => {
                        api_publisher(&ctx, conn, &params, i - params.subscribers).await
                    }
                    Endpoint::Ws(conn) if i < params.subscribers => {
                        subscriber(&ctx, conn, &params, i).await
                    }
                    Endpoint::Ws(conn) => {
                        publisher(&ctx, conn, &params, i - params.subscribers).await
                    }
                }
            }
        },
    )?;
    let (driver, setup) = driver.setup(total as u64, plan.setup_timeout(), true)?;
    let pairs = (args.subscribers * args.publishers) as u64;
    let members = args.mode != Mode::Raw
        || driver.wait_until("joining", MEMBERSHIP_TIMEOUT, |_| {
            params.members.load(Ordering::Relaxed) >= pairs
        });
    let unit = if api_alone {
        "publishes/s"
    } else {
        "deliveries/s"
    };
    let window_stats = driver.load(plan.common.warmup, plan.common.duration, unit, |a, b| {
        counted(b) - counted(a)
    })?;
    // Publishers notice the stop at once; then every publication sent so far should reach
    // every subscriber.
    let publishers = args.publishers as u64;
    driver.drain(Duration::from_secs(2), |t| t.stopped + t.lost >= publishers);
    let published = driver.shared.totals().sent;
    let expected = if api_alone {
        published
    } else {
        published * args.subscribers as u64
    };
    driver.drain(plan.common.drain_timeout, |t| counted(t) >= expected);
    let outcome = driver.outcome();
    let totals = outcome.totals;
    let hist = driver.finish()?;

    let mut p = BTreeMap::new();
    p.insert(
        "mode".into(),
        json!(match args.mode {
            Mode::Protocol => "protocol",
            Mode::Raw => "raw",
            Mode::Api => "api",
        }),
    );
    p.insert("subscribers".into(), json!(args.subscribers));
    p.insert("publishers".into(), json!(args.publishers));
    p.insert("rate".into(), json!(args.rate));
    p.insert(
        "window".into(),
        json!(args.rate.is_none().then_some(window)),
    );
    p.insert("size".into(), json!(args.size));
    p.insert("room".into(), json!(args.room));
    p.insert("auth".into(), json!(auth_kind));
    p.insert("socketio".into(), json!(args.socketio));
    p.insert(
        "transport".into(),
        json!(match args.transport {
            Transport::Ws => "ws",
            Transport::Sse => "sse",
        }),
    );
    let mut result = BenchResult::new(&plan, "fanout", p);
    if !members {
        result.warnings.push(format!(
            "only {} of {pairs} (subscriber, publisher) membership probes arrived within {} s: \
             publications to subscribers the server had not made members count as lost",
            params.members.load(Ordering::Relaxed),
            MEMBERSHIP_TIMEOUT.as_secs()
        ));
    }
    result.set_window(&window_stats);
    let window_publications = window_stats.end.sent - window_stats.start.sent;
    result.set_redis(&plan, &window_stats, None, Some(window_publications));
    result.set_outcome(&outcome, setup);
    let w = &window_stats;
    let r = &mut result.results;
    r.throughput = round1((counted(&w.end) - counted(&w.start)) as f64 / w.seconds);
    r.throughput_unit = unit.into();
    r.sent = published;
    r.sent_per_s = round1((w.end.sent - w.start.sent) as f64 / w.seconds);
    r.received = counted(&totals);
    r.expected = Some(expected);
    r.delivery_ratio = Some(if expected == 0 {
        0.0
    } else {
        counted(&totals) as f64 / expected as f64
    });
    r.out_of_order = totals.out_of_order;
    r.latency_kind = if api_alone {
        "publish_to_response"
    } else {
        "publish_to_deliver"
    }
    .into();
    r.latency_us = Latency::from_ns(&hist.latency);
    let asked = args.rate;
    result.check(if asked.is_some() {
        Load::Paced
    } else {
        Load::Saturating
    });
    if let Some(rate) = asked {
        let got = result.results.sent_per_s;
        if got < 0.95 * rate {
            result.warnings.push(format!(
                "asked for {rate} publications/s, sent {got}/s: the generator or the server \
                 could not keep up"
            ));
        }
    }
    report::finish(&plan, &result, true)
}

/// Connects connection `i`; in protocol mode authenticates and subscribes it.
async fn setup(
    plan: &Plan,
    params: &Params,
    i: usize,
    limit: &tokio::sync::Semaphore,
) -> Result<Endpoint, ConnError> {
    if params.transport == Transport::Sse && i < params.subscribers {
        let target = plan.target(i);
        // The stream lives beside the protocol route: `/sse` on the same server.
        let path = format!("/sse?room={}", params.room);
        let header = params.auth.header(i);
        let _permit = limit.acquire().await;
        return SseConn::open(target, &path, header.as_deref())
            .await
            .map(Endpoint::Sse);
    }
    if params.mode == Mode::Api && i >= params.subscribers {
        let _permit = limit.acquire().await;
        return ApiConn::open(plan.target(i), api::PUBLISH_PATH, &params.api_key)
            .await
            .map(Endpoint::Api);
    }
    let read_buffer = if i < params.subscribers {
        plan.busy_read_buffer()
    } else {
        16 * 1024
    };
    let mut conn = plan::open(plan, i, &params.auth, read_buffer, limit).await?;
    if params.mode != Mode::Raw {
        plan::subscribe(&mut conn, &params.room, 1).await?;
    }
    Ok(Endpoint::Ws(conn))
}

/// Reads deliveries from an SSE stream until the run ends: every event without an `event:`
/// line whose data is a `message` push is a delivery (the same accounting as [`subscriber`]).
async fn sse_subscriber(
    ctx: &ThreadCtx,
    mut conn: SseConn,
    params: &Params,
    index: usize,
) -> Result<(), ConnError> {
    let shared = &ctx.shared;
    let finder = StampFinder::new();
    let mut next = vec![0u64; params.publishers];
    let tracked: Vec<usize> = (0..params.publishers)
        .filter(|p| p % params.subscribers == index)
        .collect();
    loop {
        conn.read_some().await?;
        let now = shared.now_ns();
        let measuring = shared.measuring();
        let (mut got, mut other, mut disorder) = (0u64, 0u64, 0u64);
        {
            let mut hist = ctx.latency.borrow_mut();
            while let Some(r) = conn.next_event() {
                let event = &conn.bytes()[r];
                if !event.starts_with(b"data: {\"type\":\"message\"") {
                    other += 1;
                    continue;
                }
                got += 1;
                let Some(stamp) = finder.find(event) else {
                    disorder += 1;
                    continue;
                };
                if measuring {
                    hist.saturating_record(now.saturating_sub(stamp.t));
                }
                if let Some(n) = next.get_mut(stamp.p as usize) {
                    if stamp.s != *n {
                        disorder += 1;
                    }
                    *n = stamp.s + 1;
                }
            }
        }
        let c = &ctx.counters;
        Counters::add(&c.received, got);
        Counters::add(&c.other, other);
        Counters::add(&c.out_of_order, disorder);
        for &p in &tracked {
            let t = &params.trackers[p];
            if t.acked.load(Ordering::Relaxed) != next[p] {
                t.acked.store(next[p], Ordering::Release);
                t.notify.notify_one();
            }
        }
    }
}

/// Reads deliveries until the run ends.
async fn subscriber(
    ctx: &ThreadCtx,
    mut conn: Conn,
    params: &Params,
    index: usize,
) -> Result<(), ConnError> {
    let shared = &ctx.shared;
    let finder = StampFinder::new();
    // The next sequence number expected from each publisher.
    let mut next = vec![0u64; params.publishers];
    // The publishers this subscriber reports arrivals to.
    let tracked: Vec<usize> = (0..params.publishers)
        .filter(|p| p % params.subscribers == index)
        .collect();
    let protocol = params.mode != Mode::Raw;
    // The publishers whose membership probe arrived (raw mode).
    let mut probed = vec![false; params.publishers];
    loop {
        conn.read_some().await?;
        let now = shared.now_ns();
        let measuring = shared.measuring();
        let (mut got, mut errors, mut other, mut disorder) = (0u64, 0u64, 0u64, 0u64);
        {
            let mut hist = ctx.latency.borrow_mut();
            while let Some(r) = conn.next_message()? {
                let msg = &conn.input.bytes()[r];
                if protocol {
                    match payload::kind(msg) {
                        Kind::Message => {}
                        Kind::Error(_) => {
                            errors += 1;
                            note_error(ctx, msg);
                            continue;
                        }
                        _ => {
                            other += 1;
                            continue;
                        }
                    }
                }
                let Some(stamp) = finder.find(msg) else {
                    if let Some(p) = payload::probe(msg) {
                        if let Some(seen) = probed.get_mut(p as usize)
                            && !*seen
                        {
                            *seen = true;
                            params.members.fetch_add(1, Ordering::Relaxed);
                        }
                        continue;
                    }
                    got += 1;
                    disorder += 1;
                    continue;
                };
                got += 1;
                if measuring {
                    hist.saturating_record(now.saturating_sub(stamp.t));
                }
                if let Some(n) = next.get_mut(stamp.p as usize) {
                    if stamp.s != *n {
                        disorder += 1;
                    }
                    *n = stamp.s + 1;
                }
            }
        }
        let c = &ctx.counters;
        Counters::add(&c.received, got);
        Counters::add(&c.errors, errors);
        Counters::add(&c.other, other);
        Counters::add(&c.out_of_order, disorder);
        for &p in &tracked {
            let t = &params.trackers[p];
            if t.acked.load(Ordering::Relaxed) != next[p] {
                t.acked.store(next[p], Ordering::Release);
                t.notify.notify_one();
            }
        }
    }
}

fn note_error(ctx: &ThreadCtx, msg: &[u8]) {
    ctx.shared
        .note_error(|| String::from_utf8_lossy(&msg[..msg.len().min(300)]).into_owned());
}

/// Queues one text message: `prefix`, the data object `put` appends, `suffix`.
fn send_wrapped(conn: &mut Conn, prefix: &[u8], suffix: &[u8], put: impl FnOnce(&mut Vec<u8>)) {
    conn.output.text_with(|b| {
        b.extend_from_slice(prefix);
        put(b);
        b.extend_from_slice(suffix);
    });
}

/// Publishes until the stop, then keeps reading until the run ends.
async fn publisher(
    ctx: &ThreadCtx,
    mut conn: Conn,
    params: &Params,
    index: usize,
) -> Result<(), ConnError> {
    let shared = &ctx.shared;
    let tracker = &params.trackers[index];
    let protocol = params.mode == Mode::Protocol;
    // What wraps the data object: a publish command, a Socket.IO event, or nothing.
    let (prefix, suffix): (Vec<u8>, &[u8]) = if protocol {
        (payload::publish_prefix(&params.room, false), b"}")
    } else if conn.is_socketio() {
        (socketio::FANOUT_PREFIX.to_vec(), socketio::FANOUT_SUFFIX)
    } else {
        (Vec::new(), b"")
    };
    let publish = |conn: &mut Conn, t: u64, seq: u64| {
        send_wrapped(conn, &prefix, suffix, |b| {
            payload::put_data(b, t, index as u64, seq, params.size)
        });
    };
    if protocol {
        shared.go.cancelled().await;
    } else {
        // Membership probes until the run starts (see the module docs), read while waiting:
        // other publishers' probes come here too.
        let mut next_probe = tokio::time::Instant::now();
        loop {
            if tokio::time::Instant::now() >= next_probe {
                send_wrapped(&mut conn, &prefix, suffix, |b| {
                    payload::put_probe(b, index as u64)
                });
                conn.try_flush()?;
                next_probe = tokio::time::Instant::now() + Duration::from_millis(20);
            }
            tokio::select! {
                () = shared.go.cancelled() => break,
                () = tokio::time::sleep_until(next_probe) => {}
                r = conn.read_some() => {
                    r?;
                    while conn.next_message()?.is_some() {}
                }
            }
        }
    }
    let mut seq = 0u64;
    let mut stopped = false;
    let mut pacer = params
        .rate_per_publisher
        .map(|r| Pacer::new(shared.now_ns(), r));
    let mut ticker = tokio::time::interval(pacer.map_or(Duration::from_secs(3600), |p| p.tick()));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        if !shared.stopping() && conn.output.pending_len() < MAX_BUFFERED {
            let now = shared.now_ns();
            let before = seq;
            match &mut pacer {
                None => {
                    let acked = tracker.acked.load(Ordering::Acquire);
                    while seq - acked.min(seq) < params.window {
                        publish(&mut conn, now, seq);
                        seq += 1;
                    }
                }
                Some(p) => {
                    for _ in 0..p.due(now) {
                        let t = p.next(now);
                        publish(&mut conn, t, seq);
                        seq += 1;
                        if conn.output.pending_len() >= MAX_BUFFERED {
                            break;
                        }
                    }
                }
            }
            Counters::add(&ctx.counters.sent, seq - before);
            conn.try_flush()?;
        }
        if shared.stopping() && !stopped {
            stopped = true;
            Counters::add(&ctx.counters.stopped, 1);
        }
        tokio::select! {
            r = conn.read_some() => {
                r?;
                let (mut errors, mut other) = (0u64, 0u64);
                while let Some(r) = conn.next_message()? {
                    let msg = &conn.input.bytes()[r];
                    if protocol && matches!(payload::kind(msg), Kind::Error(_)) {
                        errors += 1;
                        note_error(ctx, msg);
                    } else {
                        other += 1;
                    }
                }
                Counters::add(&ctx.counters.errors, errors);
                Counters::add(&ctx.counters.other, other);
            }
            () = tracker.notify.notified(), if pacer.is_none() => {}
            _ = ticker.tick(), if pacer.is_some() => {}
            () = shared.stop.cancelled(), if !stopped => {}
        }
    }
}

/// The server API key: the flag (or `$SWITCHBOARD_API_KEY`), else development mode's key file.
fn api_key(given: Option<&str>, tokens: &Arc<dyn TokenIssuer>) -> Result<String, String> {
    if let Some(key) = given {
        return Ok(key.to_string());
    }
    let path = tokens.dev_api_key_path();
    match std::fs::read_to_string(&path) {
        Ok(key) if !key.trim().is_empty() => Ok(key.trim().to_string()),
        _ => Err(format!(
            "--mode api needs the server API key: pass --api-key or set SWITCHBOARD_API_KEY \
             (a server in development mode keeps its key in {})",
            path.display()
        )),
    }
}

/// Publishes through the server API until the stop, `window` requests in flight (pipelined);
/// without subscribers, an answered publish is the run's unit and its latency is measured.
async fn api_publisher(
    ctx: &ThreadCtx,
    mut conn: ApiConn,
    params: &Params,
    index: usize,
) -> Result<(), ConnError> {
    let shared = &ctx.shared;
    let alone = params.subscribers == 0;
    let mut body_prefix = b"{\"room\":".to_vec();
    body_prefix.extend_from_slice(&serde_json::to_vec(&params.room).unwrap_or_default());
    body_prefix.extend_from_slice(b",\"data\":");
    // Send times of the requests in flight, oldest first (answers come in order).
    let mut in_flight = std::collections::VecDeque::with_capacity(params.window as usize);
    shared.go.cancelled().await;
    let mut seq = 0u64;
    let mut stopped = false;
    let mut pacer = params
        .rate_per_publisher
        .map(|r| Pacer::new(shared.now_ns(), r));
    let mut ticker = tokio::time::interval(pacer.map_or(Duration::from_secs(3600), |p| p.tick()));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut publish = |conn: &mut ApiConn, in_flight: &mut std::collections::VecDeque<u64>, t| {
        conn.queue(|b| {
            b.extend_from_slice(&body_prefix);
            payload::put_data(b, t, index as u64, seq, params.size);
            b.push(b'}');
        });
        in_flight.push_back(t);
        seq += 1;
    };
    loop {
        if !shared.stopping() && conn.pending_len() < MAX_BUFFERED {
            let now = shared.now_ns();
            let before = in_flight.len();
            match &mut pacer {
                None => {
                    while (in_flight.len() as u64) < params.window {
                        publish(&mut conn, &mut in_flight, now);
                    }
                }
                Some(p) => {
                    for _ in 0..p.due(now) {
                        let t = p.next(now);
                        publish(&mut conn, &mut in_flight, t);
                    }
                }
            }
            Counters::add(&ctx.counters.sent, (in_flight.len() - before) as u64);
            conn.flush().await?;
        }
        if shared.stopping() && !stopped {
            stopped = true;
            Counters::add(&ctx.counters.stopped, 1);
        }
        tokio::select! {
            r = conn.read_some() => {
                r?;
                let now = shared.now_ns();
                let measuring = shared.measuring();
                let (mut answered, mut errors) = (0u64, 0u64);
                while let Some(answer) = conn.next_answer()? {
                    let sent = in_flight.pop_front().unwrap_or(now);
                    if answer.status == 200 {
                        answered += 1;
                        if alone && measuring {
                            ctx.latency.borrow_mut().saturating_record(now.saturating_sub(sent));
                        }
                    } else {
                        errors += 1;
                        let body = &conn.bytes()[answer.body];
                        let status = answer.status;
                        shared.note_error(|| {
                            format!(
                                "POST {}: {status} {}",
                                api::PUBLISH_PATH,
                                String::from_utf8_lossy(&body[..body.len().min(300)])
                            )
                        });
                    }
                }
                Counters::add(&ctx.counters.commands, answered);
                Counters::add(&ctx.counters.errors, errors);
            }
            _ = ticker.tick(), if pacer.is_some() => {}
            () = shared.stop.cancelled(), if !stopped => {}
        }
    }
}
