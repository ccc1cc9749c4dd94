//! The built-in echo route: every text and binary message goes back as it came. Used by the
//! Autobahn conformance suite, the interop tests and benchmarks; off unless configured.

use crate::handler::{Accepted, Connection, Handler, Incoming, Refusal, UpgradeContext, User};

/// Echoes every message to its sender. Accepts every connection (anonymous).
#[derive(Debug, Default, Clone, Copy)]
pub struct Echo;

impl Handler for Echo {
    type State = ();

    async fn authenticate(&self, _request: &UpgradeContext<'_>) -> Result<Accepted<()>, Refusal> {
        Ok(Accepted {
            user: User::default(),
            state: (),
        })
    }

    async fn on_message(&self, conn: &mut Connection<()>, message: Incoming) {
        match message {
            Incoming::Text(t) => conn.send_text(t.as_str()),
            Incoming::Binary(b) => conn.send_binary(&b),
        }
    }
}
