//! `bench echo`: N connections to an echo route, each keeping k messages in flight. Every
//! echo that arrives is answered with a new message in the same write, so the server is never
//! idle while the generator keeps up. Works against any RFC 6455 echo endpoint, and with
//! `--socketio` against a Socket.IO server that sends the event `e` back to its sender
//! (`42["e","<payload>"]`).

use std::{collections::BTreeMap, process::ExitCode, sync::Arc};

use clap::Args;
use serde_json::json;

use crate::{
    auth::Auth,
    conn::{BINARY, Conn, ConnError, TEXT},
    engine::{Counters, ThreadCtx},
    payload,
    plan::{self, CommonArgs, Plan},
    report,
    result::{BenchResult, Latency, Load, round1},
    socketio,
};

/// Options of `bench echo`.
#[derive(Debug, Args)]
pub(crate) struct EchoArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Connections.
    #[arg(long, short = 'c', default_value_t = 100)]
    connections: usize,
    /// Messages in flight per connection.
    #[arg(long, short = 'k', default_value_t = 16)]
    in_flight: usize,
    /// Payload size in bytes (at least 16: the send time is in the first 16).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Send binary frames instead of text.
    #[arg(long, conflicts_with = "socketio")]
    binary: bool,
    /// Speak Socket.IO (engine.io v4 over WebSocket): connect to the default namespace, send
    /// the payload as the event `e` (`42["e","…"]`) and expect it back. URL:
    /// ws://HOST:PORT/socket.io/?EIO=4&transport=websocket.
    #[arg(long)]
    socketio: bool,
}

struct Params {
    in_flight: usize,
    size: usize,
    opcode: u8,
    /// Where the timestamp starts in a message (after the Socket.IO prefix).
    stamp_at: usize,
}

/// Runs `bench echo`.
pub(crate) fn run(args: EchoArgs) -> Result<ExitCode, String> {
    if args.size < payload::ECHO_MIN_SIZE {
        return Err(format!(
            "--size must be at least {} (the send time is written in the payload)",
            payload::ECHO_MIN_SIZE
        ));
    }
    if args.in_flight == 0 {
        return Err("--in-flight must be at least 1".into());
    }
    let default_url = if args.socketio {
        socketio::DEFAULT_URL
    } else {
        "ws://127.0.0.1:8080/echo"
    };
    let plan =
        Plan::new(args.common, default_url, args.connections)?.with_socketio(args.socketio)?;
    let params = Arc::new(Params {
        in_flight: args.in_flight,
        size: args.size,
        opcode: if args.binary { BINARY } else { TEXT },
        stamp_at: if args.socketio {
            socketio::ECHO_PREFIX.len()
        } else {
            0
        },
    });
    // Room for every echo in flight, within the per-connection budget for this many.
    let read_buffer = (args.in_flight * (args.size + 14) * 2)
        .clamp(4096, plan.busy_read_buffer().max(2 * (args.size + 14)));
    let open_plan = Arc::new(plan.clone());
    let driver = plan.start_connections(
        move |_, i, limit| {
            let plan = open_plan.clone();
            async move { plan::open(&plan, i, &Auth::None, read_buffer, &limit).await }
        },
        move |ctx, _, conn| {
            let params = params.clone();
            async move { echo_loop(&ctx, conn, &params).await }
        },
    )?;
    let (driver, setup) = driver.setup(plan.connections as u64, plan.setup_timeout(), true)?;
    let window = driver.load(
        plan.common.warmup,
        plan.common.duration,
        "msgs/s",
        |a, b| b.received - a.received,
    )?;
    driver.drain(plan.common.drain_timeout, |t| t.received >= t.sent);
    let outcome = driver.outcome();
    let totals = outcome.totals;
    let hist = driver.finish()?;

    let mut params = BTreeMap::new();
    params.insert("in_flight".into(), json!(args.in_flight));
    params.insert("size".into(), json!(args.size));
    params.insert("binary".into(), json!(args.binary));
    params.insert("socketio".into(), json!(args.socketio));
    let mut result = BenchResult::new(&plan, "echo", params);
    result.set_window(&window);
    result.set_redis(&plan, &window, None, None);
    result.set_outcome(&outcome, setup);
    let r = &mut result.results;
    let received = window.end.received - window.start.received;
    let sent = window.end.sent - window.start.sent;
    r.throughput = round1(received as f64 / window.seconds);
    r.throughput_unit = "msgs/s".into();
    r.sent = totals.sent;
    r.sent_per_s = round1(sent as f64 / window.seconds);
    r.received = totals.received;
    r.expected = Some(totals.sent);
    r.delivery_ratio = Some(if totals.sent == 0 {
        0.0
    } else {
        totals.received as f64 / totals.sent as f64
    });
    r.latency_kind = "round_trip".into();
    r.latency_us = Latency::from_ns(&hist.latency);
    result.check(Load::Saturating);
    report::finish(&plan, &result, true)
}

/// Appends one echo message stamped with `now`.
fn push(conn: &mut Conn, params: &Params, template: &[u8], now: u64) {
    let frame = conn.output.frame(params.opcode, template);
    payload::put_hex16(&mut frame[params.stamp_at..], now);
}

async fn echo_loop(ctx: &ThreadCtx, mut conn: Conn, params: &Params) -> Result<(), ConnError> {
    let shared = &ctx.shared;
    let mut template = payload::echo_template(params.size);
    if params.stamp_at > 0 {
        template.splice(0..0, socketio::ECHO_PREFIX.iter().copied());
        template.extend_from_slice(socketio::ECHO_SUFFIX);
    }
    shared.go.cancelled().await;
    let now = shared.now_ns();
    for _ in 0..params.in_flight {
        push(&mut conn, params, &template, now);
    }
    Counters::add(&ctx.counters.sent, params.in_flight as u64);
    conn.try_flush()?;
    loop {
        conn.read_some().await?;
        let now = shared.now_ns();
        let measuring = shared.measuring();
        let mut got = 0u64;
        {
            let mut hist = ctx.latency.borrow_mut();
            while let Some(r) = conn.next_message()? {
                got += 1;
                if measuring
                    && let Some(t) = conn.input.bytes()[r]
                        .get(params.stamp_at..)
                        .and_then(payload::get_hex16)
                {
                    hist.saturating_record(now.saturating_sub(t));
                }
            }
        }
        if got == 0 {
            continue;
        }
        Counters::add(&ctx.counters.received, got);
        if !shared.stopping() {
            for _ in 0..got {
                push(&mut conn, params, &template, now);
            }
            Counters::add(&ctx.counters.sent, got);
            conn.try_flush()?;
        }
    }
}
