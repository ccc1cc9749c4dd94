//! An application protocol on Switchboard's transport, through the library API.
//!
//! Everyone who connects to `ws://127.0.0.1:8090/shout?name=NAME` joins the room `lobby`;
//! each text message is broadcast, in capitals and signed, to everyone in the lobby (framed
//! and compressed once for all of them). Connections without a name are refused with 401;
//! binary messages close the connection with 1003.
//!
//! ```text
//! cargo run -p switchboard-examples --example shout
//! websocat 'ws://127.0.0.1:8090/shout?name=ada'   # in two terminals
//! ```
//!
//! (`switchboard connect` speaks the v1 protocol, not this one.)

use switchboard_server::{
    Accepted, Broadcast, Connection, Disconnect, Handler, Incoming, Refusal, Route, RouteOptions,
    Server, UpgradeContext, User, server::shutdown_signal,
};

/// The application's handler; its per-connection state is the caller's name.
struct Shout;

impl Handler for Shout {
    type State = String;

    async fn authenticate(
        &self,
        request: &UpgradeContext<'_>,
    ) -> Result<Accepted<String>, Refusal> {
        let name = request
            .uri
            .query()
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("name=")))
            .filter(|n| !n.is_empty() && n.len() <= 32)
            .ok_or_else(|| Refusal::new(http_status(401), "unauthorized", "missing ?name="))?;
        let user = User {
            id: name.into(),
            ..User::default()
        };
        Ok(Accepted {
            user,
            state: name.to_string(),
        })
    }

    async fn on_connect(&self, conn: &mut Connection<String>) {
        conn.join("lobby").await;
        let hello = format!("welcome, {}", conn.state);
        conn.send_text(&hello);
    }

    async fn on_message(&self, conn: &mut Connection<String>, message: Incoming) {
        match message {
            Incoming::Text(text) => {
                let line = format!("{}: {}", conn.state, text.as_str().to_uppercase());
                conn.broadcast(
                    &["lobby"],
                    Incoming::Text(line.into()),
                    Broadcast::everyone(),
                )
                .await;
            }
            Incoming::Binary(_) => conn.close(Disconnect::from_code(1003).with_reason("text only")),
        }
    }

    async fn on_close(
        &self,
        conn: &mut Connection<String>,
        _close: Option<&switchboard_server::CloseFrame>,
    ) {
        tracing::info!(name = %conn.state, "left");
    }
}

fn http_status(code: u16) -> switchboard_server::StatusCode {
    switchboard_server::StatusCode::from_u16(code).expect("valid status")
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    switchboard_server::telemetry::init(&Default::default());
    let server = Server::builder(([127, 0, 0, 1], 8090).into())
        .route(Route::new("/shout", Shout, RouteOptions::default()))
        .bind()
        .await?;
    tracing::info!(addr = %server.local_addr()?, "shout example listening on /shout");
    server.run(shutdown_signal()).await;
    Ok(())
}
