//! An async Rust client for Switchboard servers.
//!
//! It owns the client side of a connection: the WebSocket handshake and frames (through
//! `switchboard-protocol`), and, on top, the v1 protocol's commands with replies and
//! subscriptions that recover across reconnects ([`Client`], see the [`client`] module). It
//! knows nothing of the server's internals.

pub mod client;
mod error;
pub mod ws;

pub use client::{
    Client, ClientOptions, ConnectionState, Event, HistoryQuery, PublishOptions, ReconnectPolicy,
    SubscribeInfo, Subscription, SubscriptionEvent, TokenError, TokenFuture, TokenProvider,
};
pub use error::Error;
/// Why a connection ended, and whether the client reconnects after it: the contract's
/// close-code table, re-exported from `switchboard-protocol`.
pub use switchboard_protocol::{CLOSE_CODES, CloseCode, CloseCodeEntry, Disconnect};
pub use ws::{WsOptions, WsStream};

/// The v1 message types the client's API uses, re-exported from `switchboard-protocol`.
pub use switchboard_protocol::wire::{
    ErrorCode, HistoryResult, Member, MemberPush, MessagePush, PresenceResult, Publication,
    PublishResult, RefreshResult, RpcResult, StreamPosition, SubscribedPush, UnsubscribedPush,
    Welcome,
};
