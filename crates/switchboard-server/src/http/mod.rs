//! Plain HTTP surfaces served on the WebSocket port beside the routes: the server API under
//! `/api` ([`api`]). [`crate::app`] merges them into the server with `ServerBuilder::http`.

pub mod api;
