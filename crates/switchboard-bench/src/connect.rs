//! `bench connect`: opens N connections (`--concurrency` at a time) and measures the handshake
//! rate and latency (TCP connect, upgrade and, with `--subscribe`, the subscribe reply); then
//! holds them idle, answering pings, for `--warmup` (settling) and `--duration` (the server's
//! idle CPU is measured over it). With `--server-pid`, the server's memory per connection is
//! `(VmRSS at the end - VmRSS before connecting) / connections`.
//!
//! Plain (no token: an echo route, or a protocol route with anonymous access) and
//! authenticated (`--auth`, `--token`, `--secret`), optionally subscribed to one room. With
//! `--socketio`, each connection is also connected to a Socket.IO server's default namespace
//! (what a Socket.IO client does before it can do anything).
//!
//! With `--deflate`, every connection offers permessage-deflate, so that the memory per idle
//! connection is measured with compression negotiated; whether the server agreed is read from
//! each response and counted (`deflate_negotiated`).
//!
//! With `--transport sse`, each connection is a Server-Sent Events stream of the room given by
//! `--subscribe` (`GET /sse?room=…` on the URL's host and port), held open and idle the same way
//! (the server's `: ping` comments are counted as what arrives).

use std::{
    collections::BTreeMap,
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

use clap::Args;
use serde_json::json;

use crate::{
    auth::{Auth, AuthArgs, TokenIssuer},
    conn::{Conn, ConnError},
    engine::{Counters, ThreadCtx},
    fanout::Transport,
    plan::{self, CommonArgs, Plan},
    proc, report,
    result::{BenchResult, Latency, Load, NodeMemory, round1},
    socketio,
    sse::SseConn,
};

/// Options of `bench connect`.
#[derive(Debug, Args)]
pub(crate) struct ConnectArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    auth: AuthArgs,
    /// Connections.
    #[arg(long, short = 'c', default_value_t = 1000)]
    connections: usize,
    /// Authenticate with a token minted from the development secret (implied by --token,
    /// --secret and --subscribe).
    #[arg(long = "auth")]
    authenticate: bool,
    /// Subscribe every connection to ROOM (protocol route).
    #[arg(long, value_name = "ROOM")]
    subscribe: Option<String>,
    /// Socket.IO (engine.io v4 over WebSocket): connect each connection to the default
    /// namespace (`40`). URL: ws://HOST:PORT/socket.io/?EIO=4&transport=websocket.
    #[arg(long, conflicts_with = "subscribe")]
    socketio: bool,
    /// Offer permessage-deflate on every connection (memory with compression negotiated);
    /// the report says on how many the server agreed.
    #[arg(long, conflicts_with = "socketio")]
    deflate: bool,
    /// WebSocket connections, or SSE streams of the `--subscribe` room (`GET /sse?room=…`).
    #[arg(long, value_enum, default_value_t = Transport::Ws)]
    transport: Transport,
}

/// A connection held by the run.
enum Held {
    Ws(Conn),
    Sse(SseConn),
}

/// Runs `bench connect`.
pub(crate) fn run(args: ConnectArgs, tokens: &Arc<dyn TokenIssuer>) -> Result<ExitCode, String> {
    if let Some(room) = &args.subscribe {
        switchboard_protocol::wire::validate_room(room)
            .map_err(|e| format!("--subscribe {room:?}: {e}"))?;
    }
    if args.transport == Transport::Sse {
        if args.subscribe.is_none() {
            return Err("--transport sse needs --subscribe ROOM (a stream is of its rooms)".into());
        }
        if args.socketio || args.deflate {
            return Err("--transport sse cannot be combined with --socketio or --deflate".into());
        }
    }
    let transport = args.transport;
    let default_url = if args.socketio {
        socketio::DEFAULT_URL
    } else {
        "ws://127.0.0.1:8080/ws"
    };
    let plan = Plan::new(args.common, default_url, args.connections)?
        .with_socketio(args.socketio)?
        .with_deflate(args.deflate);
    let auth = Auth::resolve(
        &args.auth,
        args.authenticate || args.subscribe.is_some(),
        tokens,
    )?;
    let auth_kind = auth.describe();
    let rss_before = plan
        .common
        .server_pids
        .iter()
        .map(|p| proc::rss_bytes(*p))
        .collect::<Result<Vec<u64>, String>>()?;
    let room: Option<Arc<str>> = args.subscribe.as_deref().map(Into::into);
    let auth = Arc::new(auth);
    let task_plan = Arc::new(plan.clone());
    // Connections on which the server agreed to permessage-deflate.
    let negotiated = Arc::new(AtomicU64::new(0));
    let task_negotiated = negotiated.clone();
    let driver = plan.start_connections(
        move |ctx, i, limit| {
            let (plan, auth, room) = (task_plan.clone(), auth.clone(), room.clone());
            let negotiated = task_negotiated.clone();
            async move {
                // The clock starts when the handshake does: not while waiting for a turn
                // (--concurrency), nor while minting the token.
                let authorization = auth.header(i);
                let permit = limit.acquire().await;
                let started = ctx.shared.now_ns();
                let opened = match (transport, room.as_deref()) {
                    (Transport::Sse, Some(room)) => {
                        let path = format!("/sse?room={room}");
                        SseConn::open(plan.target(i), &path, authorization.as_deref())
                            .await
                            .map(Held::Sse)
                    }
                    _ => open(&plan, authorization.as_deref(), i, room.as_deref())
                        .await
                        .map(Held::Ws),
                };
                let took = ctx.shared.now_ns().saturating_sub(started);
                drop(permit);
                let conn = opened?;
                ctx.latency.borrow_mut().saturating_record(took);
                if matches!(&conn, Held::Ws(c) if c.deflate().is_some()) {
                    negotiated.fetch_add(1, Relaxed);
                }
                Ok(conn)
            }
        },
        move |ctx, _, conn| async move {
            match conn {
                Held::Ws(conn) => idle(&ctx, conn).await,
                Held::Sse(conn) => idle_stream(&ctx, conn).await,
            }
        },
    )?;
    let (driver, setup) = driver.setup(args.connections as u64, plan.setup_timeout(), false)?;
    let w = driver.load(
        plan.common.warmup,
        plan.common.duration,
        "msgs/s",
        |a, b| b.other - a.other,
    )?;
    let rss_after = plan
        .common
        .server_pids
        .iter()
        .map(|p| proc::rss_bytes(*p))
        .collect::<Result<Vec<u64>, String>>();
    let outcome = driver.outcome();
    let totals = outcome.totals;
    let hist = driver.finish()?;

    let mut p = BTreeMap::new();
    p.insert("subscribe".into(), json!(args.subscribe));
    p.insert("auth".into(), json!(auth_kind));
    p.insert("concurrency".into(), json!(plan.common.concurrency));
    p.insert("socketio".into(), json!(args.socketio));
    p.insert("deflate".into(), json!(args.deflate));
    p.insert(
        "transport".into(),
        json!(match args.transport {
            Transport::Ws => "ws",
            Transport::Sse => "sse",
        }),
    );
    let mut result = BenchResult::new(&plan, "connect", p);
    result.set_window(&w);
    result.set_redis(&plan, &w, Some(totals.ready), None);
    result.set_outcome(&outcome, setup);
    let r = &mut result.results;
    let cps = round1(totals.ready as f64 / setup.as_secs_f64().max(1e-9));
    r.throughput = cps;
    r.throughput_unit = "connections/s".into();
    r.connections_per_s = Some(cps);
    r.received = totals.other;
    r.latency_kind = "handshake".into();
    r.latency_us = Latency::from_ns(&hist.latency);
    r.deflate_negotiated = args.deflate.then(|| negotiated.load(Relaxed));
    if let Some(s) = &mut r.server {
        let after = rss_after.ok();
        let total_before = rss_before.iter().sum::<u64>();
        let total_after = after.as_ref().map(|a| a.iter().sum::<u64>());
        s.rss_before_bytes = Some(total_before);
        s.rss_after_bytes = total_after;
        s.memory_per_connection_bytes = total_after
            .filter(|_| totals.ready > 0)
            .map(|a| round1((a as f64 - total_before as f64) / totals.ready as f64));
        s.nodes = node_memory(&plan, &rss_before, after.as_deref());
    }
    let (urls, pids) = (plan.targets.len(), plan.common.server_pids.len());
    if urls > 1 && pids > 0 && pids != urls {
        result.warnings.push(format!(
            "{urls} --url but {pids} --server-pid: memory per node needs one --server-pid per \
             --url, in the same order (the total is still reported)"
        ));
    }
    result.check(Load::Paced);
    report::finish(&plan, &result, true)
}

/// Each node's memory when there is one `--server-pid` per `--url` (in the same order) and
/// more than one of them; connection *i* went to URL *i mod n*.
fn node_memory(plan: &Plan, before: &[u64], after: Option<&[u64]>) -> Vec<NodeMemory> {
    let pids = &plan.common.server_pids;
    let n = plan.targets.len();
    if n < 2 || pids.len() != n {
        return Vec::new();
    }
    (0..n)
        .map(|k| {
            let connections = (plan.connections - k).div_ceil(n) as u64;
            let rss_after_bytes = after.map(|a| a[k]);
            NodeMemory {
                pid: pids[k],
                url: plan.targets[k].url.clone(),
                connections,
                rss_before_bytes: before[k],
                rss_after_bytes,
                memory_per_connection_bytes: rss_after_bytes
                    .filter(|_| connections > 0)
                    .map(|a| round1((a as f64 - before[k] as f64) / connections as f64)),
            }
        })
        .collect()
}

async fn open(
    plan: &Plan,
    authorization: Option<&str>,
    i: usize,
    room: Option<&str>,
) -> Result<Conn, ConnError> {
    let mut conn = plan::open_with(plan, i, authorization, 4096).await?;
    if let Some(room) = room {
        plan::subscribe(&mut conn, room, 1).await?;
    }
    Ok(conn)
}

/// Holds the connection, answering pings and counting whatever arrives.
async fn idle(ctx: &ThreadCtx, mut conn: Conn) -> Result<(), ConnError> {
    loop {
        conn.read_some().await?;
        let mut n = 0;
        while conn.next_message()?.is_some() {
            n += 1;
        }
        Counters::add(&ctx.counters.other, n);
        conn.try_flush()?;
    }
}

/// Holds an event stream open, counting the events and comments that arrive.
async fn idle_stream(ctx: &ThreadCtx, mut conn: SseConn) -> Result<(), ConnError> {
    loop {
        conn.read_some().await?;
        let mut n = 0;
        while conn.next_event().is_some() {
            n += 1;
        }
        Counters::add(&ctx.counters.other, n);
    }
}
