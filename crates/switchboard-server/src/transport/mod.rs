//! Transports: WebSocket connections (and, later, SSE streams) writing already-encoded bytes
//! from one bounded queue per connection.

pub(crate) mod outbound;
pub(crate) mod registry;
pub(crate) mod ws;
