//! A game lobby on Switchboard's library API: create, list, join and start games
//! (the protocol is in `examples/handlers/lobby.rs`).
//!
//! ```text
//! cargo run -p switchboard-examples --example lobby           # 127.0.0.1:8080, or --listen ADDR, or PORT=...
//! websocat 'ws://127.0.0.1:8080/lobby?name=ada'
//! {"type":"create","max_players":2}
//! ```
//!
//! (`python3 -m websockets URL`, after `pip install websockets`, works as well; `switchboard
//! connect` speaks the v1 protocol, not this one.)
//!
//! In a second terminal as `?name=bob`: `{"type":"list"}`, then `{"type":"join","game":1}`;
//! back as ada, `{"type":"start"}` tells both `started`.

use switchboard_examples::{listen_addr, lobby::Lobby};
use switchboard_server::{Route, RouteOptions, Server, server::shutdown_signal};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    switchboard_server::telemetry::init(&Default::default());
    let addr = listen_addr()?;
    let server = Server::builder(addr)
        .route(Route::new(
            "/lobby",
            Lobby::default(),
            RouteOptions::default(),
        ))
        .bind()
        .await?;
    tracing::info!(addr = %server.local_addr()?, "lobby example listening on /lobby");
    server.run(shutdown_signal()).await;
    Ok(())
}
