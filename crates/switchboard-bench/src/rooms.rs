//! `bench rooms`: many small rooms, chat-like. R rooms of M members each (R × M connections,
//! the members of room r are connections r·M … r·M+M-1, so with several `--url`s a room's
//! members sit on different nodes). Every member publishes to its room at an even share of
//! `--rate` (open loop) and its publications reach every member, itself included. `--churn`
//! times per second, some member leaves its room and joins it again (unsubscribe, then
//! subscribe): the round trip of those commands is the command latency. While a member is out,
//! it neither publishes nor receives, so with churn the delivery ratio is a little below 1.

use std::{collections::BTreeMap, process::ExitCode, sync::Arc, time::Duration};

use clap::Args;
use serde_json::json;

use crate::{
    auth::{Auth, AuthArgs, TokenIssuer},
    conn::{Conn, ConnError},
    engine::{Counters, Pacer, ThreadCtx},
    payload::{self, Kind, StampFinder},
    plan::{self, CommonArgs, Plan},
    report,
    result::{BenchResult, Latency, Load, round1},
};

/// Options of `bench rooms`.
#[derive(Debug, Args)]
pub(crate) struct RoomsArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    auth: AuthArgs,
    /// Rooms.
    #[arg(long, default_value_t = 100)]
    rooms: usize,
    /// Members (connections) per room.
    #[arg(long, default_value_t = 5)]
    members: usize,
    /// Total publications per second, spread evenly over the members.
    #[arg(long, value_name = "R", default_value_t = 1000.0)]
    rate: f64,
    /// Leave-and-rejoin cycles per second across all members (0: none).
    #[arg(long, value_name = "PER_SECOND", default_value_t = 50.0)]
    churn: f64,
    /// Size of the data object in bytes.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Room name prefix (rooms are PREFIX0, PREFIX1, …).
    #[arg(long, default_value = "bench:room-")]
    prefix: String,
}

#[derive(Debug)]
struct Params {
    members: usize,
    rate_per_member: f64,
    churn_per_member: f64,
    size: usize,
    prefix: String,
    auth: Auth,
}

/// Where a member is in its leave-and-rejoin cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    In,
    Leaving { id: u64, at: u64 },
    Joining { id: u64, at: u64 },
}

/// Runs `bench rooms`.
pub(crate) fn run(args: RoomsArgs, tokens: &Arc<dyn TokenIssuer>) -> Result<ExitCode, String> {
    if args.rooms == 0 || args.members == 0 {
        return Err("--rooms and --members must be at least 1".into());
    }
    if !(args.rate.is_finite() && args.rate > 0.0) {
        return Err("--rate must be positive".into());
    }
    if !(args.churn.is_finite() && args.churn >= 0.0) {
        return Err("--churn must be zero or positive".into());
    }
    switchboard_protocol::wire::validate_room(&format!("{}{}", args.prefix, args.rooms))
        .map_err(|e| format!("--prefix {:?}: {e}", args.prefix))?;
    let total = args
        .rooms
        .checked_mul(args.members)
        .ok_or("too many connections")?;
    let plan = Plan::new(args.common, "ws://127.0.0.1:8080/ws", total)?;
    let auth = Auth::resolve(&args.auth, true, tokens)?;
    let auth_kind = auth.describe();
    let params = Arc::new(Params {
        members: args.members,
        rate_per_member: args.rate / total as f64,
        churn_per_member: args.churn / total as f64,
        size: args.size,
        prefix: args.prefix.clone(),
        auth,
    });
    let (open_plan, open_params) = (Arc::new(plan.clone()), params.clone());
    let driver = plan.start_connections(
        move |_, i, limit| {
            let (plan, params) = (open_plan.clone(), open_params.clone());
            async move {
                let room = format!("{}{}", params.prefix, i / params.members);
                let conn = open(&plan, &params, i, &room, &limit).await?;
                Ok((conn, room))
            }
        },
        move |ctx, i, (conn, room)| {
            let params = params.clone();
            async move { member(&ctx, conn, &params, i, &room).await }
        },
    )?;
    let (driver, setup) = driver.setup(total as u64, plan.setup_timeout(), true)?;
    let w = driver.load(
        plan.common.warmup,
        plan.common.duration,
        "deliveries/s",
        |a, b| b.received - a.received,
    )?;
    // Let deliveries settle: until all expected arrived, or nothing arrived for 300 ms.
    let members = args.members as u64;
    let last = std::cell::Cell::new((driver.shared.totals().received, std::time::Instant::now()));
    driver.drain(plan.common.drain_timeout, |t| {
        if t.received >= t.sent * members {
            return true;
        }
        let (n, at) = last.get();
        if t.received != n {
            last.set((t.received, std::time::Instant::now()));
            false
        } else {
            at.elapsed() > Duration::from_millis(300)
        }
    });
    let outcome = driver.outcome();
    let totals = outcome.totals;
    let hist = driver.finish()?;

    let mut p = BTreeMap::new();
    p.insert("rooms".into(), json!(args.rooms));
    p.insert("members".into(), json!(args.members));
    p.insert("rate".into(), json!(args.rate));
    p.insert("churn".into(), json!(args.churn));
    p.insert("size".into(), json!(args.size));
    p.insert("auth".into(), json!(auth_kind));
    let mut result = BenchResult::new(&plan, "rooms", p);
    result.set_window(&w);
    result.set_redis(&plan, &w, None, Some(w.end.sent - w.start.sent));
    result.set_outcome(&outcome, setup);
    let r = &mut result.results;
    let expected = totals.sent * members;
    r.throughput = round1((w.end.received - w.start.received) as f64 / w.seconds);
    r.throughput_unit = "deliveries/s".into();
    r.sent = totals.sent;
    r.sent_per_s = round1((w.end.sent - w.start.sent) as f64 / w.seconds);
    r.received = totals.received;
    r.expected = Some(expected);
    r.delivery_ratio = Some(if expected == 0 {
        0.0
    } else {
        totals.received as f64 / expected as f64
    });
    r.latency_kind = "publish_to_deliver".into();
    r.latency_us = Latency::from_ns(&hist.latency);
    r.command_latency_us = Latency::from_ns(&hist.secondary);
    let churn = args.churn > 0.0;
    result.check(Load::Paced);
    if churn {
        // Members out of their room miss publications by design.
        result
            .warnings
            .retain(|w| !w.starts_with("incomplete delivery"));
    }
    let got = result.results.sent_per_s;
    if got < 0.95 * args.rate {
        result.warnings.push(format!(
            "asked for {} publications/s, sent {got}/s: the generator or the server could not \
             keep up",
            args.rate
        ));
    }
    report::finish(&plan, &result, !churn)
}

async fn open(
    plan: &Plan,
    params: &Params,
    i: usize,
    room: &str,
    limit: &tokio::sync::Semaphore,
) -> Result<Conn, ConnError> {
    let mut conn = plan::open(plan, i, &params.auth, 16 * 1024, limit).await?;
    plan::subscribe(&mut conn, room, 1).await?;
    Ok(conn)
}

async fn member(
    ctx: &ThreadCtx,
    mut conn: Conn,
    params: &Params,
    i: usize,
    room: &str,
) -> Result<(), ConnError> {
    let shared = &ctx.shared;
    let finder = StampFinder::new();
    let prefix = payload::publish_prefix(room, true);
    shared.go.cancelled().await;
    // Spread the members' schedules over one period so they do not publish in step.
    let spread = |per_second: f64| {
        let period_ns = 1e9 / per_second.max(1e-9);
        (period_ns * ((i as f64 * 0.618_034) % 1.0)) as u64
    };
    let start = shared.now_ns();
    let mut publish = Pacer::new(
        start + spread(params.rate_per_member),
        params.rate_per_member,
    );
    let mut churn = (params.churn_per_member > 0.0).then(|| {
        Pacer::new(
            start + spread(params.churn_per_member),
            params.churn_per_member,
        )
    });
    let tick = churn.map_or(publish.tick(), |c| c.tick().min(publish.tick()));
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut state = State::In;
    let mut next_id = 2u64;
    let mut seq = 0u64;
    loop {
        tokio::select! {
            r = conn.read_some() => {
                r?;
                let now = shared.now_ns();
                let measuring = shared.measuring();
                let (mut got, mut errors, mut other, mut commands) = (0u64, 0u64, 0u64, 0u64);
                while let Some(r) = conn.next_message()? {
                    let msg = &conn.input.bytes()[r];
                    match payload::kind(msg) {
                        Kind::Message => {
                            got += 1;
                            if measuring && let Some(s) = finder.find(msg) {
                                ctx.latency.borrow_mut().saturating_record(now.saturating_sub(s.t));
                            }
                        }
                        Kind::Reply(Some(id)) => {
                            let (sent_at, next) = match state {
                                State::Leaving { id: want, at } if want == id => {
                                    let id = next_id;
                                    next_id += 1;
                                    (Some(at), Some((id, State::Joining { id, at: now })))
                                }
                                State::Joining { id: want, at } if want == id => {
                                    (Some(at), None)
                                }
                                _ => (None, None),
                            };
                            if let Some(at) = sent_at {
                                commands += 1;
                                if measuring {
                                    ctx.secondary.borrow_mut().saturating_record(now.saturating_sub(at));
                                }
                                state = State::In;
                                if let Some((id, joining)) = next {
                                    conn.output.text_with(|b| payload::put_subscribe(b, id, room));
                                    state = joining;
                                }
                            }
                        }
                        Kind::Error(id) => {
                            errors += 1;
                            ctx.shared.note_error(|| {
                                String::from_utf8_lossy(&msg[..msg.len().min(300)]).into_owned()
                            });
                            // A refused leave or join ends the cycle; the member stays as it is.
                            if let State::Leaving { id: want, .. } | State::Joining { id: want, .. } = state
                                && id == Some(want)
                            {
                                state = State::In;
                            }
                        }
                        _ => other += 1,
                    }
                }
                let c = &ctx.counters;
                Counters::add(&c.received, got);
                Counters::add(&c.errors, errors);
                Counters::add(&c.other, other);
                Counters::add(&c.commands, commands);
                conn.try_flush()?;
            }
            _ = ticker.tick() => {
                if shared.stopping() {
                    // Nothing more to send; keep reading until the run ends.
                    continue;
                }
                let now = shared.now_ns();
                let due = publish.due(now);
                let mut sent = 0;
                for _ in 0..due {
                    let t = publish.next(now);
                    // Out of the room, a publication would be refused: it is skipped.
                    if state == State::In {
                        conn.output.text_with(|b| {
                            b.extend_from_slice(&prefix);
                            payload::put_data(b, t, i as u64, seq, params.size);
                            b.push(b'}');
                        });
                        seq += 1;
                        sent += 1;
                    }
                }
                Counters::add(&ctx.counters.sent, sent);
                if let Some(c) = &mut churn
                    && c.due(now) > 0
                {
                    c.next(now);
                    if state == State::In {
                        let id = next_id;
                        next_id += 1;
                        conn.output.text_with(|b| payload::put_unsubscribe(b, id, room));
                        state = State::Leaving { id, at: now };
                    }
                }
                conn.try_flush()?;
            }
        }
    }
}
