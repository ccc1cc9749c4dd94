//! The load generator behind `switchboard bench`, for WebSocket servers on this machine, and
//! the merger of its reports.
//!
//! Scenarios: `echo` (round trips through any server's echo route), `fanout` (one room, many
//! subscribers, through the protocol or a raw broadcast route), `rooms` (many small rooms with
//! subscription churn), `connect` (handshake rate and memory per idle connection). `report`
//! merges result files into one table with ratios against a baseline. `docs/benchmarks.md`
//! describes flags and the JSON format.
//!
//! This crate owns the command's options ([`BenchArgs`]), the connections and scenarios, the
//! measurements (latency histograms, CPU and memory from `/proc`), the result format, the
//! tables and the charts. Several `--url` load a cluster (connections spread round-robin over
//! the nodes); `--redis` reads the memory and commands of the Redis its nodes share (see
//! `redis_info`). It drives servers over sockets as a client and must know nothing of
//! their internals: it takes from `switchboard-protocol` only what any client uses (the client
//! handshake, permessage-deflate, the room-name rule), writes the few v1 JSON messages and
//! Socket.IO packets it sends itself, and sends tokens minted by the [`TokenIssuer`] its caller
//! supplies. It does not depend on the server crate: whatever server it measures, Switchboard
//! or another, is a URL and a process id.
//!
//! The generator must cost less per message than the server it measures, so it speaks raw
//! frames (see `conn`), runs one current-thread runtime per worker thread (see `engine`) and
//! reads only the bytes it needs from each message (see `payload`). It loads loopback addresses
//! only (see `target`).

use std::{process::ExitCode, sync::Arc};

use clap::{Args, Subcommand};

mod api;
mod auth;
mod chart;
mod conn;
mod connect;
mod echo;
mod engine;
mod fanout;
mod payload;
mod plan;
mod proc;
mod redis_info;
mod report;
mod result;
mod rooms;
mod socketio;
mod sse;
mod target;

pub use auth::TokenIssuer;

/// Options of `switchboard bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Boxed: the options are large, and the caller's command enum should not grow with them.
    #[command(subcommand)]
    scenario: Box<Scenario>,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Round trips through an echo route: N connections, k messages in flight each.
    Echo(echo::EchoArgs),
    /// One room, N subscribers, P publishers: deliveries/s, delivery ratio, latency.
    Fanout(fanout::FanoutArgs),
    /// Many small rooms (chat-like) with subscribe/unsubscribe churn.
    Rooms(rooms::RoomsArgs),
    /// Handshake rate, then the server's memory per idle connection.
    Connect(connect::ConnectArgs),
    /// Merge result files into one table with ratios against a baseline.
    Report(report::ReportArgs),
}

/// Runs `switchboard bench`: prints the result (and writes the files asked for); the exit code
/// is 1 when a run was not clean (a failed connection, an error, a lost message). `tokens`
/// mints the tokens of `--secret` and the development secret.
pub fn run(
    args: BenchArgs,
    tokens: Arc<dyn TokenIssuer>,
) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let result = match *args.scenario {
        Scenario::Echo(a) => echo::run(a),
        Scenario::Fanout(a) => fanout::run(a, &tokens),
        Scenario::Rooms(a) => rooms::run(a, &tokens),
        Scenario::Connect(a) => connect::run(a, &tokens),
        Scenario::Report(a) => return report::run(a).map_err(Into::into),
    };
    Ok(result?)
}
