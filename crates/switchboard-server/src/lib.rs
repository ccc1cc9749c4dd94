//! The Switchboard server library: the WebSocket transport, the hub of rooms, brokers,
//! authentication, limits and the HTTP surfaces.
//!
//! It owns *connections and rooms*: sockets, per-connection queues, fan-out, the v1 protocol
//! handler and the HTTP API. Bytes on the wire (frames, handshake, deflate, JSON messages)
//! belong to `switchboard-protocol`; command-line parsing belongs to the CLI.
//!
//! Applications embed it by implementing [`handler::Handler`] and serving it on a
//! [`route::Route`]; the standalone protocol and the echo route are handlers too.

pub mod auth;
pub mod broker;
pub mod config;
pub mod echo;
mod error;
pub mod fanout;
pub mod handler;
pub mod hub;
pub mod ids;
pub mod node;
pub mod route;
pub mod server;
pub mod session;
pub mod telemetry;
pub(crate) mod transport;

pub use error::Error;
pub use handler::{Accepted, Connection, Handler, Incoming, Refusal, UpgradeContext, User};
pub use http::StatusCode;
pub use node::Node;
pub use route::{Route, RouteOptions};
pub use server::Server;
pub use switchboard_protocol::{CloseCode, CloseFrame};
