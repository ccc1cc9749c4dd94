//! The raw fan-out route: every message a connection sends is forwarded to every other
//! connection of the route, framed (and compressed) once. It exists to compare Switchboard's
//! transport and fan-out with servers that have no rooms or protocol (benchmarks); off unless
//! configured.

use std::sync::Arc;

use crate::handler::{
    Accepted, Broadcast, Connection, Handler, Incoming, Refusal, UpgradeContext, User,
};

/// The hub room that holds the route's connections.
const ROOM: &str = "\u{0}raw-fanout";

/// Forwards each message to every other connection of the route.
#[derive(Debug, Default, Clone, Copy)]
pub struct RawFanout;

impl Handler for RawFanout {
    type State = ();

    async fn authenticate(&self, _request: &UpgradeContext<'_>) -> Result<Accepted<()>, Refusal> {
        Ok(Accepted {
            user: User {
                id: Arc::from(""),
                ..User::default()
            },
            state: (),
        })
    }

    async fn on_connect(&self, conn: &mut Connection<()>) {
        conn.join(ROOM).await;
    }

    async fn on_message(&self, conn: &mut Connection<()>, message: Incoming) {
        conn.broadcast(&[ROOM], message, Broadcast::others()).await;
    }
}
