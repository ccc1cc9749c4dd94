//! The Switchboard server library: the service core (the node, access policy, hub and
//! broker), the transports that carry it (WebSocket today; SSE next), the v1 protocol, the
//! library API for applications' own protocols, and the HTTP surfaces.
//!
//! It owns *connections, rooms and the service over them*. Bytes on the wire (frames,
//! handshake, deflate, JSON messages, the close-code table) belong to `switchboard-protocol`;
//! command-line parsing and the load generator belong to the CLI and the bench crate.
//!
//! The layers, each importing only those below it:
//! - surfaces: [`v1`] (the standalone protocol), [`builtin`] (echo, raw fan-out), [`app`]
//!   (routes and server assembly), [`server`] (listener, health, shutdown), [`demo`] (the demo
//!   chat page and the development token endpoint);
//! - the library API: [`handler`] ([`Handler`], [`Connection`]) and [`route`];
//! - the service: [`node`] ([`Node`]: every operation a surface may ask for) and [`access`]
//!   (who may do what);
//! - the core: [`hub`] (local rooms, users, dispatch), [`conn`] (a connection's shared
//!   state and control inbox), `transport` (queues, sweeper, WebSocket), [`broker`],
//!   [`auth`], [`config`].

pub mod access;
pub mod app;
pub mod auth;
pub mod broker;
pub mod builtin;
pub mod config;
pub mod conn;
pub mod demo;
mod error;
pub mod handler;
pub mod http;
pub mod hub;
pub mod ids;
pub mod limits;
pub mod metrics;
mod net;
pub mod node;
pub mod origin;
pub mod proxy;
pub mod route;
pub mod server;
pub mod telemetry;
mod tls;
pub(crate) mod transport;
pub mod v1;

pub use ::http::StatusCode;
pub use conn::{ConnShared, Control};
pub use error::{Error, Refused};
pub use handler::{
    Accepted, Broadcast, Connection, Handler, Incoming, JsonError, Refusal, UpgradeContext, User,
};
pub use node::Node;
pub use route::{Route, RouteOptions};
pub use server::Server;
pub use switchboard_protocol::{CLOSE_CODES, CloseCode, CloseFrame, Disconnect};
