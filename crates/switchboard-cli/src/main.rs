//! The `switchboard` command: `serve` runs the server; `connect`, `publish` and `token` talk to
//! one; `bench` measures one. It owns argument parsing and terminal output only: everything
//! else lives in the server and client libraries.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod serve;

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("switchboard: {e}");
            ExitCode::from(2)
        }
    }
}
