//! The `switchboard` command: `serve` runs the server; `connect`, `publish` and `token` talk to
//! one; `bench` measures one. It owns argument parsing and terminal output only: everything
//! else lives in the server, client and bench libraries.

use std::{process::ExitCode, sync::Arc};

use clap::{Parser, Subcommand};

/// jemalloc rather than the system allocator: its size classes fit tokio's 384-byte task cells
/// and 128-byte-aligned I/O slots exactly, where glibc leaves alignment holes and handshake
/// leftovers between them. At 19,000 idle connections that is 1.13 -> 0.89 KiB each, and echo
/// is no slower (docs/benchmarks.md). Library users keep their own allocator.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod connect;
mod publish;
mod serve;
mod token;

/// Switchboard: a real-time messaging server.
#[derive(Debug, Parser)]
#[command(name = "switchboard", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (with no configuration: development mode on 127.0.0.1:8080).
    Serve(serve::ServeArgs),
    /// Open an interactive protocol session (JSON lines or /shortcuts on stdin).
    Connect(connect::ConnectArgs),
    /// Publish one message to a room and print its offset.
    Publish(publish::PublishArgs),
    /// Mint a token (by default with the development-mode secret).
    Token(token::TokenArgs),
    /// Measure a server over loopback: echo, fan-out, rooms, connections; merge reports.
    Bench(switchboard_bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Connect(args) => connect::run(args),
        Command::Publish(args) => publish::run(args),
        Command::Token(args) => token::run(args),
        Command::Bench(args) => switchboard_bench::run(args, Arc::new(token::BenchTokens)),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("switchboard: {e}");
            ExitCode::from(2)
        }
    }
}
