//! A chat server on Switchboard's library API: named users, rooms, JSON messages
//! (the protocol is in `examples/handlers/chat.rs`).
//!
//! ```text
//! cargo run -p switchboard-examples --example chat            # 127.0.0.1:8080, or --listen ADDR, or PORT=...
//! websocat 'ws://127.0.0.1:8080/chat?name=ada'
//! {"type":"join","room":"general"}
//! {"type":"say","room":"general","text":"hello"}
//! ```
//!
//! (`python3 -m websockets URL`, after `pip install websockets`, works as well; `switchboard
//! connect` speaks the v1 protocol, not this one.)
//!
//! Open a second terminal as `?name=bob`, join `general` there too, and each sees the other's
//! `said` messages.

use switchboard_examples::{chat::Chat, listen_addr};
use switchboard_server::{Route, RouteOptions, Server, server::shutdown_signal};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    switchboard_server::telemetry::init(&Default::default());
    let addr = listen_addr()?;
    let server = Server::builder(addr)
        .route(Route::new("/chat", Chat, RouteOptions::default()))
        .bind()
        .await?;
    tracing::info!(addr = %server.local_addr()?, "chat example listening on /chat");
    server.run(shutdown_signal()).await;
    Ok(())
}
