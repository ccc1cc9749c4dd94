//! Transports: WebSocket connections and SSE streams writing already-encoded bytes
//! from one bounded queue per connection.

pub(crate) mod direct;
pub(crate) mod outbound;
pub(crate) mod registry;
pub(crate) mod sse;
pub(crate) mod tls_relay;
pub(crate) mod ws;
