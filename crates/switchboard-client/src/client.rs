//! The protocol client: commands with replies, subscriptions that recover across reconnects.
//!
//! ```no_run
//! # async fn example() -> Result<(), switchboard_client::Error> {
//! use switchboard_client::{Client, ClientOptions, PublishOptions, SubscriptionEvent};
//!
//! let mut options = ClientOptions::new("ws://127.0.0.1:8080/ws");
//! options.token = Some("<jwt>".into());
//! let client = Client::connect(options).await?;
//! let mut lobby = client.subscribe("chat:lobby").await?;
//! client
//!     .publish("chat:lobby", &serde_json::json!({"text": "hi"}), PublishOptions::default())
//!     .await?;
//! while let Some(event) = lobby.recv().await {
//!     match event {
//!         SubscriptionEvent::Message(m) => println!("{} {}", m.offset.unwrap_or(0), m.data),
//!         SubscriptionEvent::Reset { .. } => { /* reload the room's state */ }
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # How it works
//!
//! One background task (the *driver*) owns the single [`WsStream`](crate::WsStream). The
//! [`Client`] handle (cheap to clone) sends it requests over a channel; each command gets a
//! numeric `id` (a `u64` counter) and its caller waits for the `reply`, `error` or `pong`
//! with that `id`, at most [`ClientOptions::command_timeout`] ([`Error::Timeout`]).
//!
//! Pushes are routed:
//! - `message` of a room with a [`Subscription`] goes to that subscription's channel, in
//!   offset order, without duplicates (offsets at or below the last one delivered are dropped,
//!   defensively);
//! - everything else goes to the [`Event`] stream ([`Client::events`]): `join`, `leave`,
//!   `subscribed`, `unsubscribed`, `refresh_required`, messages of rooms the server subscribed
//!   the connection to (the personal room, the `rooms` claim) that no [`Subscription`] has
//!   adopted, errors without an `id`, unknown types, and the connection's own events
//!   ([`Event::Connected`], [`Event::Disconnected`], [`Event::Reconnecting`],
//!   [`Event::Resubscribed`]).
//!
//! # Reconnects and recovery
//!
//! When the connection is lost (the TCP connection ends, a close code after which the
//! contract lets a client reconnect, nothing received for twice the server's ping interval
//! plus 5 s), the driver reconnects with exponential backoff and full jitter
//! ([`ReconnectPolicy`]). It does **not** reconnect after a terminal close code (one whose
//! [`Disconnect::from_code`] has `reconnect: false`: 1000, 1002, 1003, 1007, 1008, 1009,
//! 4000–4499; the table is [`CLOSE_CODES`](crate::CLOSE_CODES)), after a handshake refused
//! with 400, 401 (unless a [`TokenProvider`] may mint a better token), 403, 404 or 426, or
//! when [`ReconnectPolicy::max_attempts`] is reached: the client is then closed for good
//! ([`ConnectionState::Closed`]) and every call fails with [`Error::Closed`], which carries
//! the [`Disconnect`] that ended it.
//!
//! After a reconnect every subscription is renewed with `since` = the position of the last
//! publication it received. When the server answers `recovered: true`, the missed
//! publications are delivered first, in order, then the live ones: the subscriber sees every
//! publication exactly once. When it answers `recovered: false` (the history is gone, or the
//! room has a new epoch, as after a server restart with the in-memory broker), the
//! subscription delivers [`SubscriptionEvent::Reset`] with the room's current position: the
//! application must reload the room's state, and live messages follow. Each renewal is
//! reported on the [`Event`] stream as [`Event::Resubscribed`], with what it established. A
//! room the server subscribes by itself (the personal room, the `rooms` claim) and that a
//! [`Subscription`] adopted is not subscribed again: it is recovered through `history` the
//! same way.
//!
//! Commands in flight when the connection drops fail with [`Error::ConnectionLost`] (they
//! may or may not have been carried out; a `publish` with an `idempotency_key` can be retried
//! safely). Commands made while disconnected wait for the next connection (within their
//! timeout) and are sent after the subscriptions are renewed.
//!
//! # Slow subscribers
//!
//! Each subscription's channel is bounded ([`ClientOptions::subscription_capacity`]). The
//! driver never waits for a subscriber: that would stall every other room and every reply,
//! and make the server close the connection as a slow consumer. When a subscription's channel
//! is full, its new messages are **dropped** and counted; as soon as there is room again
//! (checked when the next event for it arrives) the subscriber receives
//! [`SubscriptionEvent::Lagged`] with the number of messages it missed, then the new event.
//! The missed publications are still in the room's history for a while: fetch them with
//! [`Client::history`] `since` the position of the last message received. A
//! [`SubscriptionEvent::Reset`] that does not fit replaces the lag and is delivered first.
//! The [`Event`] stream is a `tokio::sync::broadcast` channel: a receiver that falls behind
//! gets `RecvError::Lagged` and continues with newer events.

mod backoff;
mod driver;

use std::{fmt, future::Future, pin::Pin, sync::Arc, time::Duration};

use serde::Serialize;
use serde_json::value::RawValue;
use switchboard_protocol::{
    Disconnect,
    wire::{
        HistoryResult, MemberPush, MessagePush, PresenceResult, PublishResult, RefreshResult,
        RpcResult, StreamPosition, SubscribedPush, UnsubscribedPush, Welcome,
    },
};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

pub use self::backoff::ReconnectPolicy;
use self::driver::{Driver, OutCommand, Request};
use crate::error::Error;

/// An error a [`TokenProvider`] may return.
pub type TokenError = Box<dyn std::error::Error + Send + Sync>;

/// The future a [`TokenProvider`] returns.
pub type TokenFuture = Pin<Box<dyn Future<Output = Result<String, TokenError>> + Send>>;

/// Mints or fetches a connection token: called before every connection attempt (the first
/// one and each reconnect) and, when the server pushes `refresh_required`, to `refresh` the
/// connection's token in place.
#[derive(Clone)]
pub struct TokenProvider(Arc<dyn Fn() -> TokenFuture + Send + Sync>);

impl TokenProvider {
    /// A provider from an async function, e.g.
    /// `TokenProvider::new(|| async { Ok(fetch_token().await?) })`.
    pub fn new<F, Fut>(f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, TokenError>> + Send + 'static,
    {
        TokenProvider(Arc::new(move || Box::pin(f())))
    }

    /// Calls the provider.
    pub fn token(&self) -> TokenFuture {
        (self.0)()
    }
}

impl fmt::Debug for TokenProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenProvider(..)")
    }
}

/// Options of [`Client::connect`]. Start from [`ClientOptions::new`] and set fields.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientOptions {
    /// The server's protocol route, e.g. `ws://127.0.0.1:8080/ws` or `wss://host/ws`.
    pub url: String,
    /// A PEM file of CA certificates trusted for `wss://` besides the system's trust store.
    pub ca: Option<std::path::PathBuf>,
    /// The connection token (a JWT), sent as `Authorization: Bearer`. Ignored when
    /// [`ClientOptions::token_provider`] is set.
    pub token: Option<String>,
    /// Where to get a token for every connection attempt, instead of a fixed one.
    pub token_provider: Option<TokenProvider>,
    /// Offer permessage-deflate (default `true`).
    pub deflate: bool,
    /// How long a command waits for its answer (default 10 s).
    pub command_timeout: Duration,
    /// How long a connection attempt (TCP, handshake, `welcome`) may take (default 10 s).
    pub connect_timeout: Duration,
    /// When and how to reconnect.
    pub reconnect: ReconnectPolicy,
    /// Capacity of each subscription's channel, at least 2 (default 1024). See the module
    /// documentation for what happens when it is full.
    pub subscription_capacity: usize,
    /// Capacity of the [`Event`] broadcast channel (default 1024).
    pub event_capacity: usize,
    /// Largest message accepted from the server (default 16 MiB).
    pub max_message_size: usize,
    /// Extra request headers for the handshake.
    pub headers: Vec<(String, String)>,
    /// Send the token as the connection's first message (`{"type": "auth", …}`, protocol
    /// 2.2, for a server with `auth.first_message = true`) instead of in `Authorization`.
    /// Default `false`.
    pub token_as_first_message: bool,
}

impl ClientOptions {
    /// Defaults for `url`: no token, deflate on, 10 s timeouts, the default
    /// [`ReconnectPolicy`].
    pub fn new(url: impl Into<String>) -> Self {
        ClientOptions {
            url: url.into(),
            ca: None,
            token: None,
            token_provider: None,
            deflate: true,
            command_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            reconnect: ReconnectPolicy::default(),
            subscription_capacity: 1024,
            event_capacity: 1024,
            max_message_size: 16 << 20,
            headers: Vec::new(),
            token_as_first_message: false,
        }
    }
}

/// Options of [`Client::publish`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishOptions {
    /// Whether this connection receives its own publication (default `true`).
    pub echo: bool,
    /// Not stored, without epoch and offset, never recovered (default `false`).
    pub ephemeral: bool,
    /// Makes a retried publish publish nothing new (1 to 128 bytes).
    pub idempotency_key: Option<String>,
}

impl Default for PublishOptions {
    fn default() -> Self {
        PublishOptions {
            echo: true,
            ephemeral: false,
            idempotency_key: None,
        }
    }
}

/// What [`Client::history`] asks for (docs/protocol.md section 6).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Publications after this position, oldest first.
    pub since: Option<StreamPosition>,
    /// At most this many (the server's default and maximum: the namespace's `history_size`).
    pub limit: Option<u32>,
    /// Without `since`: start at the newest publication instead of the oldest.
    pub reverse: bool,
}

/// Where the connection is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionState {
    /// Connected: the server's `welcome` arrived.
    Connected {
        /// The connection id from `welcome`.
        connection: String,
    },
    /// Disconnected; the next attempt starts after `delay`.
    Reconnecting {
        /// The attempt number, from 1.
        attempt: u32,
        /// The backoff delay before it.
        delay: Duration,
    },
    /// Closed for good: by [`Client::close`], a terminal close code, a terminal handshake
    /// refusal or the reconnect limit.
    Closed {
        /// The close that ended it, when there was one: the server's (as received), or
        /// [`Disconnect::NORMAL`] after [`Client::close`].
        disconnect: Option<Disconnect>,
        /// Why, for people.
        reason: String,
    },
}

/// An event of the connection, or a push that belongs to no [`Subscription`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// The client reconnected; the `welcome` is the new connection's first message. (The
    /// first connection is the result of [`Client::connect`]: see [`Client::welcome`].)
    Connected(Welcome),
    /// The connection ended.
    Disconnected {
        /// The close (its code, the reason sent, whether the contract lets a client
        /// reconnect); `None` for an abnormal closure (no close frame) or a failure detected
        /// by the client.
        disconnect: Option<Disconnect>,
        /// The close reason or the failure.
        reason: String,
        /// Whether the client will reconnect.
        reconnect: bool,
    },
    /// The client will try to reconnect after `delay`.
    Reconnecting {
        /// The attempt number, from 1.
        attempt: u32,
        /// The backoff delay before it.
        delay: Duration,
    },
    /// A subscription was renewed on a new connection: where it resumed, and whether the
    /// publications missed while disconnected were recovered (`Some(true)`: they were
    /// delivered to the [`Subscription`] first, before this event; `Some(false)`: it received
    /// a [`SubscriptionEvent::Reset`] instead).
    Resubscribed {
        /// The room.
        room: String,
        /// What the renewal established.
        info: SubscribeInfo,
    },
    /// A reconnect attempt failed; another one follows unless the client closes.
    ReconnectFailed {
        /// The attempt number, from 1.
        attempt: u32,
        /// What went wrong.
        error: String,
    },
    /// A `message` of a room no [`Subscription`] holds (server-side subscriptions).
    Message(MessagePush),
    /// A `join` push.
    Join(MemberPush),
    /// A `leave` push.
    Leave(MemberPush),
    /// The server subscribed this connection to a room (`subscribed` push).
    Subscribed(SubscribedPush),
    /// The server removed this connection from a room (`unsubscribed` push).
    Unsubscribed(UnsubscribedPush),
    /// The token expires soon: [`Client::refresh`] it (done automatically with a
    /// [`TokenProvider`]).
    RefreshRequired {
        /// The token's `exp` (unix seconds).
        expires: Option<u64>,
    },
    /// An `error` that answers no pending command (e.g. `"id": null`).
    Error {
        /// The code as sent.
        code: String,
        /// The message.
        message: String,
    },
    /// A message of a type this version does not know, with its text.
    Unknown {
        /// Its `type`.
        kind: String,
        /// The whole message.
        text: String,
    },
}

/// What a [`Subscription`] receives.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum SubscriptionEvent {
    /// A publication: recovered ones first after a (re)subscribe with `since`, then live
    /// ones, in offset order, each once. Ephemeral publications have no epoch and offset.
    Message(MessagePush),
    /// The room's history could not be recovered (new epoch, or publications no longer
    /// retained): reload the room's state as of this position; messages after it follow.
    Reset {
        /// The room's epoch.
        epoch: String,
        /// The room's offset the state is to be reloaded at.
        offset: u64,
    },
    /// The subscriber did not keep up: this many messages were dropped before the next
    /// event (see the module documentation).
    Lagged {
        /// How many messages were dropped.
        skipped: u64,
    },
    /// The subscription ended (the server removed it, or renewing it after a reconnect
    /// failed). The channel closes after this.
    Unsubscribed {
        /// Why.
        reason: String,
    },
}

/// What a subscribe established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeInfo {
    /// The room's epoch.
    pub epoch: String,
    /// The room's latest offset when the subscription took effect.
    pub offset: u64,
    /// With `since`: whether the missed publications were recovered (they are the first
    /// messages of the subscription). `None` without `since`.
    pub recovered: Option<bool>,
}

/// A subscription to a room: a bounded channel of [`SubscriptionEvent`]s that survives
/// reconnects. Dropping it unsubscribes (for rooms the client subscribed; a room the server
/// subscribed stays subscribed and its messages go back to the [`Event`] stream).
/// [`Subscription::recv`] returns `None` once the subscription has ended.
#[derive(Debug)]
pub struct Subscription {
    room: String,
    generation: u64,
    info: SubscribeInfo,
    rx: mpsc::Receiver<SubscriptionEvent>,
    requests: mpsc::WeakSender<Request>,
}

impl Subscription {
    /// The room.
    pub fn room(&self) -> &str {
        &self.room
    }

    /// What the subscribe established (the first one, not renewals after reconnects).
    pub fn info(&self) -> &SubscribeInfo {
        &self.info
    }

    /// The next event; `None` when the subscription has ended (unsubscribed, or the client
    /// closed).
    pub async fn recv(&mut self) -> Option<SubscriptionEvent> {
        self.rx.recv().await
    }

    /// The next event if one is waiting.
    pub fn try_recv(&mut self) -> Result<SubscriptionEvent, mpsc::error::TryRecvError> {
        self.rx.try_recv()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(requests) = self.requests.upgrade() {
            // If the channel is full, the driver notices the closed channel at the next
            // message for the room instead.
            let _ = requests.try_send(Request::Forget {
                room: std::mem::take(&mut self.room),
                generation: self.generation,
            });
        }
    }
}

/// A connection to a Switchboard server speaking the v1 protocol (see the module
/// documentation). Clones share the connection; the connection closes (normally, 1000) when
/// the last clone is dropped or [`Client::close`] is called.
#[derive(Debug, Clone)]
pub struct Client {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    requests: mpsc::Sender<Request>,
    state: watch::Receiver<ConnectionState>,
    welcome: watch::Receiver<Welcome>,
    events: broadcast::Sender<Event>,
    command_timeout: Duration,
    subscription_capacity: usize,
}

impl Client {
    /// Connects, waits for the server's `welcome` and starts the background task (so it
    /// must be called within a Tokio runtime). The first connection is not retried: its
    /// failure is returned (a refused handshake as [`Error::Handshake`], see
    /// [`Error::http_status`]; a close before `welcome` as [`Error::Closed`]).
    pub async fn connect(mut options: ClientOptions) -> Result<Client, Error> {
        options.subscription_capacity = options.subscription_capacity.max(2);
        let options = Arc::new(options);
        let (ws, welcome) = driver::open(&options).await?;
        let (requests_tx, requests_rx) = mpsc::channel(1024);
        let (state_tx, state_rx) = watch::channel(ConnectionState::Connected {
            connection: welcome.connection.clone(),
        });
        let (welcome_tx, welcome_rx) = watch::channel(welcome.clone());
        let (events_tx, _) = broadcast::channel(options.event_capacity.max(1));
        let driver = Driver::new(
            Arc::clone(&options),
            requests_rx,
            requests_tx.downgrade(),
            state_tx,
            welcome_tx,
            events_tx.clone(),
        );
        tokio::spawn(driver.run(ws, welcome));
        Ok(Client {
            shared: Arc::new(Shared {
                requests: requests_tx,
                state: state_rx,
                welcome: welcome_rx,
                events: events_tx,
                command_timeout: options.command_timeout,
                subscription_capacity: options.subscription_capacity,
            }),
        })
    }

    /// The `welcome` of the current (or last) connection.
    pub fn welcome(&self) -> Welcome {
        self.shared.welcome.borrow().clone()
    }

    /// The connection's state now.
    pub fn state(&self) -> ConnectionState {
        self.shared.state.borrow().clone()
    }

    /// A receiver of the connection's state changes.
    pub fn state_changes(&self) -> watch::Receiver<ConnectionState> {
        self.shared.state.clone()
    }

    /// A receiver of [`Event`]s from now on (see the module documentation).
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.shared.events.subscribe()
    }

    /// Waits until the client is closed for good, and returns the final state's close and
    /// reason (see [`ConnectionState::Closed`]).
    pub async fn closed(&self) -> (Option<Disconnect>, String) {
        let mut state = self.shared.state.clone();
        let result = state
            .wait_for(|s| matches!(s, ConnectionState::Closed { .. }))
            .await
            .map(|s| s.clone());
        match result {
            Ok(ConnectionState::Closed { disconnect, reason }) => (disconnect, reason),
            _ => (None, "the client stopped".into()),
        }
    }

    /// Subscribes to `room` (docs/protocol.md section 4.2).
    pub async fn subscribe(&self, room: &str) -> Result<Subscription, Error> {
        self.subscribe_with(room, None, None).await
    }

    /// Subscribes to `room`, recovering the publications after `since` (they are the first
    /// messages of the subscription when [`SubscribeInfo::recovered`] is `Some(true)`; with
    /// `Some(false)` the first event is [`SubscriptionEvent::Reset`]), with a subscription
    /// `token` for namespaces that need one (it is reused when the subscription is renewed
    /// after a reconnect).
    ///
    /// A room the server already subscribed this connection to (the personal room, the
    /// `rooms` claim) is adopted without a command. Subscribing twice to a room is an
    /// [`Error::Usage`].
    pub async fn subscribe_with(
        &self,
        room: &str,
        since: Option<StreamPosition>,
        token: Option<String>,
    ) -> Result<Subscription, Error> {
        let (tx, rx) = mpsc::channel(self.shared.subscription_capacity);
        let (reply_tx, reply_rx) = oneshot::channel();
        let request = Request::Subscribe {
            room: room.to_owned(),
            since,
            token,
            tx,
            reply: reply_tx,
        };
        let (generation, info) = self
            .with_timeout(async {
                self.send(request).await?;
                reply_rx.await.map_err(|_| self.closed_error())?
            })
            .await?;
        Ok(Subscription {
            room: room.to_owned(),
            generation,
            info,
            rx,
            requests: self.shared.requests.downgrade(),
        })
    }

    /// Unsubscribes from `room` (section 4.3). Its [`Subscription`] ends at once.
    pub async fn unsubscribe(&self, room: &str) -> Result<(), Error> {
        self.call(OutCommand::Unsubscribe {
            room: room.to_owned(),
        })
        .await
        .map(drop)
    }

    /// Publishes `data` (any value that serialises to JSON, a `serde_json::Value` or a
    /// `RawValue` included) to `room` (section 5). Publishing needs a subscription to the
    /// room unless the namespace says otherwise.
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        room: &str,
        data: &T,
        options: PublishOptions,
    ) -> Result<PublishResult<'static>, Error> {
        let data = serde_json::value::to_raw_value(data)?;
        let result = self
            .call(OutCommand::Publish {
                room: room.to_owned(),
                data,
                options,
            })
            .await?;
        Ok(serde_json::from_str(result.get())?)
    }

    /// One page of a room's members (section 6).
    pub async fn presence(
        &self,
        room: &str,
        cursor: Option<&str>,
        limit: Option<u32>,
    ) -> Result<PresenceResult<'static>, Error> {
        let result = self
            .call(OutCommand::Presence {
                room: room.to_owned(),
                cursor: cursor.map(str::to_owned),
                limit,
            })
            .await?;
        Ok(serde_json::from_str(result.get())?)
    }

    /// A room's retained publications (section 6).
    pub async fn history(
        &self,
        room: &str,
        query: HistoryQuery,
    ) -> Result<HistoryResult<'static>, Error> {
        let result = self
            .call(OutCommand::History {
                room: room.to_owned(),
                query,
            })
            .await?;
        Ok(serde_json::from_str(result.get())?)
    }

    /// An application-level `ping`; returns the round-trip time.
    pub async fn ping(&self) -> Result<Duration, Error> {
        let start = tokio::time::Instant::now();
        self.call(OutCommand::Ping).await?;
        Ok(start.elapsed())
    }

    /// Replaces the connection's token before it expires (section 2.3); the new token must
    /// have the same `sub`. It is also used for later reconnects (unless a
    /// [`TokenProvider`] is set).
    pub async fn refresh(&self, token: &str) -> Result<RefreshResult, Error> {
        let result = self
            .call(OutCommand::Refresh {
                token: token.to_owned(),
            })
            .await?;
        Ok(serde_json::from_str(result.get())?)
    }

    /// Calls the application backend through the server's RPC proxy (section 5.1).
    pub async fn rpc<T: Serialize + ?Sized>(
        &self,
        method: &str,
        data: &T,
    ) -> Result<RpcResult<'static>, Error> {
        let data = serde_json::value::to_raw_value(data)?;
        let result = self
            .call(OutCommand::Rpc {
                method: method.to_owned(),
                data,
            })
            .await?;
        Ok(serde_json::from_str(result.get())?)
    }

    /// Closes the connection normally (1000) and stops reconnecting; pending commands fail
    /// with [`Error::Closed`]. Returns once the background task has finished.
    pub async fn close(&self) {
        let (done_tx, done_rx) = oneshot::channel();
        if self
            .shared
            .requests
            .send(Request::Close { done: done_tx })
            .await
            .is_ok()
        {
            let _ = done_rx.await;
        }
        self.closed().await;
    }

    /// Drops the current TCP connection abruptly, without a close frame, as a network
    /// failure would; the client then reconnects and recovers. For tests.
    #[doc(hidden)]
    pub fn debug_drop_connection(&self) {
        let _ = self.shared.requests.try_send(Request::DebugDrop);
    }

    async fn call(&self, command: OutCommand) -> Result<Box<RawValue>, Error> {
        let (reply_tx, reply_rx) = oneshot::channel();
        self.with_timeout(async {
            self.send(Request::Command {
                command,
                reply: reply_tx,
            })
            .await?;
            reply_rx.await.map_err(|_| self.closed_error())?
        })
        .await
    }

    async fn send(&self, request: Request) -> Result<(), Error> {
        self.shared
            .requests
            .send(request)
            .await
            .map_err(|_| self.closed_error())
    }

    async fn with_timeout<T>(&self, f: impl Future<Output = Result<T, Error>>) -> Result<T, Error> {
        let limit = self.shared.command_timeout;
        tokio::time::timeout(limit, f)
            .await
            .unwrap_or(Err(Error::Timeout(limit)))
    }

    /// The error of a call on a closed client: [`Error::Closed`] with the final close.
    fn closed_error(&self) -> Error {
        closed_error(&self.shared.state.borrow())
    }
}

fn closed_error(state: &ConnectionState) -> Error {
    match state {
        ConnectionState::Closed { disconnect, .. } => Error::Closed(disconnect.clone()),
        _ => Error::Closed(None),
    }
}
