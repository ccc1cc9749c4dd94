//! An async Rust client for Switchboard servers.
//!
//! It owns the client side of a connection: the WebSocket handshake and frames (through
//! `switchboard-protocol`), and, on top, the v1 protocol's commands with replies and
//! subscriptions that recover across reconnects. It knows nothing of the server's internals.

mod error;
pub mod ws;

pub use error::Error;
pub use ws::{WsOptions, WsStream};
