//! The background task that owns the socket: commands in, replies and pushes out,
//! reconnects and recovery. See the documentation of the `client` module.

use std::{
    borrow::Cow,
    collections::{BTreeMap, HashMap, VecDeque},
    convert::Infallible,
    sync::Arc,
    time::Duration,
};

use serde_json::value::RawValue;
use switchboard_protocol::{
    Disconnect, HandshakeError,
    codec::Message,
    frame::OpCode,
    wire::{
        self, Command, CommandKind, HistoryCommand, HistoryResult, Id, Member, MessagePush,
        PresenceCommand, Publication, PublishCommand, RpcCommand, ServerMessage, StreamPosition,
        SubscribeCommand, SubscribeResult, Welcome,
    },
};
use tokio::{
    sync::{broadcast, mpsc, oneshot, watch},
    time::Instant,
};

use super::{
    ClientOptions, ConnectionState, Event, HistoryQuery, PublishOptions, SubscribeInfo,
    SubscriptionEvent,
};
use crate::{
    error::{Error, received},
    ws::{WsOptions, WsStream},
};

/// Where a command's answer goes: the `result` of its `reply`, or the error.
pub(super) type ReplySender = oneshot::Sender<Result<Box<RawValue>, Error>>;

/// Where a subscribe's answer goes: the subscription's generation and what it established.
pub(super) type SubscribeReply = oneshot::Sender<Result<(u64, SubscribeInfo), Error>>;

/// A request from a [`super::Client`] (or a [`super::Subscription`]) to the driver.
#[derive(Debug)]
pub(super) enum Request {
    /// A command with a reply.
    Command {
        command: OutCommand,
        reply: ReplySender,
    },
    /// Subscribe; events go to `tx`.
    Subscribe {
        room: String,
        since: Option<StreamPosition>,
        token: Option<String>,
        tx: mpsc::Sender<SubscriptionEvent>,
        reply: SubscribeReply,
    },
    /// A [`super::Subscription`] was dropped.
    Forget { room: String, generation: u64 },
    /// Close normally and stop.
    Close { done: oneshot::Sender<()> },
    /// Drop the TCP connection (tests).
    DebugDrop,
}

/// The commands that are answered by a plain `reply`.
#[derive(Debug)]
pub(super) enum OutCommand {
    Unsubscribe {
        room: String,
    },
    Publish {
        room: String,
        data: Box<RawValue>,
        options: PublishOptions,
    },
    Presence {
        room: String,
        cursor: Option<String>,
        limit: Option<u32>,
    },
    History {
        room: String,
        query: HistoryQuery,
    },
    Ping,
    Refresh {
        token: String,
    },
    Rpc {
        method: String,
        data: Box<RawValue>,
    },
}

impl OutCommand {
    fn to_wire(&self, id: u64) -> Command<'_> {
        let kind = match self {
            OutCommand::Unsubscribe { room } => CommandKind::Unsubscribe {
                room: Cow::Borrowed(room),
            },
            OutCommand::Publish {
                room,
                data,
                options,
            } => CommandKind::Publish(PublishCommand {
                room: Cow::Borrowed(room),
                data,
                echo: options.echo,
                ephemeral: options.ephemeral,
                idempotency_key: options.idempotency_key.as_deref().map(Cow::Borrowed),
            }),
            OutCommand::Presence {
                room,
                cursor,
                limit,
            } => CommandKind::Presence(PresenceCommand {
                room: Cow::Borrowed(room),
                cursor: cursor.as_deref().map(Cow::Borrowed),
                limit: *limit,
            }),
            OutCommand::History { room, query } => CommandKind::History(HistoryCommand {
                room: Cow::Borrowed(room),
                since: query.since.clone(),
                limit: query.limit,
                reverse: query.reverse,
            }),
            OutCommand::Ping => CommandKind::Ping,
            OutCommand::Refresh { token } => CommandKind::Refresh {
                token: Cow::Borrowed(token),
            },
            OutCommand::Rpc { method, data } => CommandKind::Rpc(RpcCommand {
                method: Cow::Borrowed(method),
                data,
            }),
        };
        Command {
            id: Some(Id::Number(id)),
            kind,
        }
    }
}

/// What a command in flight is waiting for.
#[derive(Debug)]
enum Pending {
    Command(ReplySender),
    /// A `refresh`: on success the token is used for later reconnects.
    Refresh {
        token: String,
        reply: ReplySender,
    },
    /// A `subscribe` of the subscription `generation` of `room`.
    Subscribe {
        room: String,
        generation: u64,
    },
    /// A `history` that recovers a server-side subscription up to `target`.
    Recover {
        room: String,
        generation: u64,
        target: StreamPosition,
    },
}

/// Who made a subscription: renewed with `subscribe` (client) or recovered with `history`
/// (server: the personal room, the `rooms` claim, the server API).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Client,
    Server,
}

/// Messages a full channel could not take.
#[derive(Debug)]
enum Lag {
    /// This many messages were dropped.
    Skipped(u64),
    /// A reset (and maybe messages after it) were dropped: deliver a reset at this position.
    Reset(StreamPosition),
}

impl Lag {
    fn absorb(lag: Option<Lag>, event: SubscriptionEvent) -> Option<Lag> {
        Some(match (lag, event) {
            (_, SubscriptionEvent::Reset { epoch, offset }) => {
                Lag::Reset(StreamPosition::new(epoch, offset))
            }
            (Some(Lag::Reset(at)), SubscriptionEvent::Message(m)) => {
                Lag::Reset(m.position().unwrap_or(at))
            }
            (Some(Lag::Skipped(n)), SubscriptionEvent::Message(_)) => Lag::Skipped(n + 1),
            (None, SubscriptionEvent::Message(_)) => Lag::Skipped(1),
            // Lagged is only made here; Unsubscribed is followed by the end of the channel.
            (lag, _) => return lag,
        })
    }

    fn into_event(self) -> SubscriptionEvent {
        match self {
            Lag::Skipped(skipped) => SubscriptionEvent::Lagged { skipped },
            Lag::Reset(at) => SubscriptionEvent::Reset {
                epoch: at.epoch,
                offset: at.offset,
            },
        }
    }
}

/// One subscription as the driver keeps it.
#[derive(Debug)]
struct Sub {
    generation: u64,
    origin: Origin,
    tx: mpsc::Sender<SubscriptionEvent>,
    /// The position of the last publication delivered (or of the subscribe).
    position: Option<StreamPosition>,
    /// The subscription token, reused for renewals.
    token: Option<String>,
    /// `Some` while (re)subscribing: live messages held back until the reply.
    held: Option<Vec<MessagePush>>,
    /// The caller of `subscribe`, until the first reply.
    waiting: Option<SubscribeReply>,
    lag: Option<Lag>,
    /// The receiver is gone.
    closed: bool,
}

impl Sub {
    /// Sends an event without ever waiting (see "Slow subscribers" in the module docs).
    fn push(&mut self, event: SubscriptionEvent) {
        if self.closed {
            return;
        }
        match self.lag.take() {
            None => match self.tx.try_send(event) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(event)) => {
                    self.lag = Lag::absorb(None, event);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => self.closed = true,
            },
            Some(lag) => match self.tx.try_reserve_many(2) {
                Ok(mut permits) => {
                    if let Some(p) = permits.next() {
                        p.send(lag.into_event());
                    }
                    if let Some(p) = permits.next() {
                        p.send(event);
                    }
                }
                Err(mpsc::error::TrySendError::Full(())) => {
                    self.lag = Lag::absorb(Some(lag), event)
                }
                Err(mpsc::error::TrySendError::Closed(())) => self.closed = true,
            },
        }
    }

    /// Delivers a message unless it is a duplicate (at or before the last position).
    fn deliver(&mut self, message: MessagePush) {
        if let Some(at) = message.position() {
            if let Some(last) = &self.position {
                if last.epoch == at.epoch {
                    if at.offset <= last.offset {
                        tracing::debug!(room = %message.room, offset = at.offset, "duplicate publication dropped");
                        return;
                    }
                    if at.offset > last.offset + 1 {
                        tracing::warn!(room = %message.room, after = last.offset, offset = at.offset, "gap in a room's offsets");
                    }
                } else {
                    // The stream was replaced under a live subscription: what the
                    // application holds belongs to the old epoch.
                    self.push(SubscriptionEvent::Reset {
                        epoch: at.epoch.clone(),
                        offset: at.offset.saturating_sub(1),
                    });
                }
            }
            self.position = Some(at);
        }
        self.push(SubscriptionEvent::Message(message));
    }

    fn hold_or_deliver(&mut self, message: MessagePush) {
        match &mut self.held {
            Some(held) => held.push(message),
            None => self.deliver(message),
        }
    }

    fn reset(&mut self, at: StreamPosition) {
        self.push(SubscriptionEvent::Reset {
            epoch: at.epoch.clone(),
            offset: at.offset,
        });
        self.position = Some(at);
    }

    /// Takes `at`'s epoch as the same stream as the one held (the server said so: a
    /// stream forked at a Redis failover), from `at`'s offset.
    fn continue_in(&mut self, at: &StreamPosition) {
        self.position = Some(at.clone());
    }

    /// Moves the position forward to `at` (or to its epoch).
    fn advance_to(&mut self, at: &StreamPosition) {
        let behind = match &self.position {
            Some(last) => last.epoch != at.epoch || last.offset < at.offset,
            None => true,
        };
        if behind {
            self.position = Some(at.clone());
        }
    }

    /// Live again: delivers the held messages (duplicates dropped).
    fn activate(&mut self) {
        for message in self.held.take().unwrap_or_default() {
            self.deliver(message);
        }
    }

    /// Ends the subscription: its caller gets `error`, or its receiver an `Unsubscribed`.
    fn end(mut self, error: Error) {
        match self.waiting.take() {
            Some(waiting) => {
                let _ = waiting.send(Err(error));
            }
            None => self.push(SubscriptionEvent::Unsubscribed {
                reason: error.to_string(),
            }),
        }
    }
}

/// How a connection ended.
#[derive(Debug)]
enum Ending {
    /// The client closed it ([`Request::Close`], or every handle dropped).
    Shutdown(Option<oneshot::Sender<()>>),
    /// It ended, with `disconnect` when there was a close frame; the client reconnects
    /// unless `terminal`.
    Ended {
        disconnect: Option<Disconnect>,
        reason: String,
        terminal: bool,
    },
}

fn lost(e: impl std::fmt::Display) -> Ending {
    Ending::Ended {
        disconnect: None,
        reason: e.to_string(),
        terminal: false,
    }
}

/// Connects, completes the handshake and waits for `welcome`, within the connect timeout.
pub(super) async fn open(options: &ClientOptions) -> Result<(WsStream, Welcome), Error> {
    open_with(options, options.token.as_deref()).await
}

async fn open_with(
    options: &ClientOptions,
    token: Option<&str>,
) -> Result<(WsStream, Welcome), Error> {
    let attempt = async {
        let token = match &options.token_provider {
            Some(provider) => Some(
                provider
                    .token()
                    .await
                    .map_err(|e| Error::Token(e.to_string()))?,
            ),
            None => token.map(str::to_owned),
        };
        let mut headers = options.headers.clone();
        let first_message = options.token_as_first_message;
        if let Some(token) = token.as_deref().filter(|_| !first_message) {
            headers.push(("Authorization".into(), format!("Bearer {token}")));
        }
        let ws_options = WsOptions {
            protocols: vec![wire::SUBPROTOCOL.to_owned()],
            deflate: options.deflate,
            headers,
            max_message_size: options.max_message_size,
            ca: options.ca.clone(),
        };
        let mut ws = WsStream::connect(&options.url, &ws_options).await?;
        if let Some(token) = token.filter(|_| first_message) {
            // Answered with `welcome` (or a 4001 close), like a handshake token.
            let auth = serde_json::json!({"type": "auth", "id": 0, "token": token});
            ws.send_text(&auth.to_string()).await?;
        }
        loop {
            match ws.recv_any().await? {
                None => return Err(Error::Closed(None)),
                Some(Message::Ping(payload)) => ws.send(OpCode::Pong, &payload).await?,
                Some(Message::Close(frame)) => {
                    let _ = ws.close(frame.as_ref()).await;
                    return Err(Error::Closed(frame.as_ref().map(received)));
                }
                Some(Message::Text(text)) => {
                    return match wire::parse_server_message(text.as_str()) {
                        Ok(ServerMessage::Welcome(welcome)) => Ok((ws, welcome)),
                        _ => Err(Error::Unexpected(format!(
                            "expected 'welcome' first, got {}",
                            truncate(text.as_str(), 200)
                        ))),
                    };
                }
                Some(Message::Binary(_) | Message::Pong(_)) => {}
            }
        }
    };
    tokio::time::timeout(options.connect_timeout, attempt)
        .await
        .unwrap_or(Err(Error::Timeout(options.connect_timeout)))
}

/// Whether a failed reconnect attempt ends the client.
fn open_error_is_terminal(e: &Error, has_provider: bool) -> bool {
    match e {
        Error::Closed(Some(disconnect)) => !disconnect.reconnect,
        Error::Url(_) => true,
        Error::Handshake(HandshakeError::Refused { status, .. }) => match status {
            401 => !has_provider,
            400 | 403 | 404 | 426 => true,
            _ => false,
        },
        _ => false,
    }
}

fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn numeric(id: &Id) -> Option<u64> {
    match id {
        Id::Number(n) => Some(*n),
        Id::String(_) => None,
    }
}

fn message_of(room: &str, epoch: &str, publication: Publication<'static>) -> MessagePush {
    MessagePush {
        room: room.to_owned(),
        epoch: Some(epoch.to_owned()),
        offset: Some(publication.offset),
        data: publication.data.into_owned(),
        from: publication
            .from
            .and_then(|from| Member::from_raw(&from).ok()),
    }
}

async fn write(ws: &mut WsStream, buf: &mut Vec<u8>, command: &Command<'_>) -> Result<(), Ending> {
    buf.clear();
    wire::encode_command(buf, command);
    ws.send(OpCode::Text, buf).await.map_err(lost)
}

async fn close_gracefully(ws: &mut WsStream) {
    if ws
        .close(Some(&Disconnect::NORMAL.close_frame()))
        .await
        .is_err()
    {
        return;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match ws.recv_any().await {
                Ok(Some(Message::Close(_)) | None) | Err(_) => break,
                Ok(Some(_)) => {}
            }
        }
    })
    .await;
}

/// The background task's state.
#[derive(Debug)]
pub(super) struct Driver {
    options: Arc<ClientOptions>,
    /// The connection token for reconnects (updated by a successful `refresh`).
    token: Option<String>,
    requests: mpsc::Receiver<Request>,
    /// For the automatic refresh; weak so that dropping every client ends the driver.
    self_requests: mpsc::WeakSender<Request>,
    state: watch::Sender<ConnectionState>,
    welcome: watch::Sender<Welcome>,
    events: broadcast::Sender<Event>,
    next_id: u64,
    next_generation: u64,
    pending: HashMap<u64, Pending>,
    subs: BTreeMap<String, Sub>,
    /// The rooms the server subscribed this connection to, with their latest position.
    server_rooms: HashMap<String, StreamPosition>,
    /// Commands made while disconnected.
    queue: VecDeque<(OutCommand, ReplySender)>,
    buf: Vec<u8>,
}

impl Driver {
    pub(super) fn new(
        options: Arc<ClientOptions>,
        requests: mpsc::Receiver<Request>,
        self_requests: mpsc::WeakSender<Request>,
        state: watch::Sender<ConnectionState>,
        welcome: watch::Sender<Welcome>,
        events: broadcast::Sender<Event>,
    ) -> Self {
        Driver {
            token: options.token.clone(),
            options,
            requests,
            self_requests,
            state,
            welcome,
            events,
            next_id: 1,
            next_generation: 1,
            pending: HashMap::new(),
            subs: BTreeMap::new(),
            server_rooms: HashMap::new(),
            queue: VecDeque::new(),
            buf: Vec::with_capacity(256),
        }
    }

    /// Serves connections until the client closes for good.
    pub(super) async fn run(mut self, ws: WsStream, welcome: Welcome) {
        let mut next = Some((ws, welcome));
        let mut failures = 0u32;
        let mut first = true;
        while let Some((mut ws, welcome)) = next.take() {
            let connected_at = Instant::now();
            let Err(ending) = self.serve(&mut ws, welcome, !first).await;
            first = false;
            drop(ws);
            let (disconnect, reason, terminal) = match ending {
                Ending::Shutdown(done) => {
                    self.finish(Some(Disconnect::NORMAL), "closed by the client".into());
                    if let Some(done) = done {
                        let _ = done.send(());
                    }
                    return;
                }
                Ending::Ended {
                    disconnect,
                    reason,
                    terminal,
                } => (disconnect, reason, terminal),
            };
            let reconnect = !terminal && self.options.reconnect.enabled;
            tracing::debug!(?disconnect, %reason, reconnect, "disconnected");
            self.emit(Event::Disconnected {
                disconnect: disconnect.clone(),
                reason: reason.clone(),
                reconnect,
            });
            if !reconnect {
                self.finish(disconnect, reason);
                return;
            }
            self.connection_lost();
            if connected_at.elapsed() >= self.options.reconnect.reset_after {
                failures = 0;
            }
            next = self.reconnect(&mut failures).await;
        }
    }

    fn emit(&self, event: Event) {
        let _ = self.events.send(event);
    }

    fn id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        if self.pending.len() >= 4096 {
            // Callers that timed out leave entries whose reply never came.
            self.pending.retain(|_, p| match p {
                Pending::Command(reply) | Pending::Refresh { reply, .. } => !reply.is_closed(),
                _ => true,
            });
        }
        id
    }

    /// The connection is gone but the client goes on: commands in flight fail, every
    /// subscription waits for its renewal.
    fn connection_lost(&mut self) {
        for (_, pending) in self.pending.drain() {
            if let Pending::Command(reply) | Pending::Refresh { reply, .. } = pending {
                let _ = reply.send(Err(Error::ConnectionLost));
            }
        }
        for sub in self.subs.values_mut() {
            sub.held = Some(Vec::new());
        }
        self.server_rooms.clear();
    }

    /// Closed for good: everything waiting fails, every subscription ends.
    fn finish(&mut self, disconnect: Option<Disconnect>, reason: String) {
        let error = || Error::Closed(disconnect.clone());
        for (_, pending) in self.pending.drain() {
            if let Pending::Command(reply) | Pending::Refresh { reply, .. } = pending {
                let _ = reply.send(Err(error()));
            }
        }
        for (_, reply) in self.queue.drain(..) {
            let _ = reply.send(Err(error()));
        }
        for (_, sub) in std::mem::take(&mut self.subs) {
            sub.end(error());
        }
        self.state
            .send_replace(ConnectionState::Closed { disconnect, reason });
    }

    /// Waits and reconnects; `None` when the client is closed for good.
    async fn reconnect(&mut self, failures: &mut u32) -> Option<(WsStream, Welcome)> {
        loop {
            let policy = self.options.reconnect.clone();
            if let Some(max) = policy.max_attempts
                && *failures >= max
            {
                self.finish(None, format!("gave up after {max} reconnect attempts"));
                return None;
            }
            let delay = policy.delay(*failures);
            *failures += 1;
            let attempt = *failures;
            self.state
                .send_replace(ConnectionState::Reconnecting { attempt, delay });
            self.emit(Event::Reconnecting { attempt, delay });

            let sleep = tokio::time::sleep(delay);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    _ = &mut sleep => break,
                    request = self.requests.recv() => {
                        if let Err(ending) = self.offline(request) {
                            return self.shut_down(ending);
                        }
                    }
                }
            }

            let options = Arc::clone(&self.options);
            let token = self.token.clone();
            let open = open_with(&options, token.as_deref());
            tokio::pin!(open);
            let result = loop {
                tokio::select! {
                    result = &mut open => break result,
                    request = self.requests.recv() => {
                        if let Err(ending) = self.offline(request) {
                            return self.shut_down(ending);
                        }
                    }
                }
            };
            match result {
                Ok(connection) => return Some(connection),
                Err(e) => {
                    tracing::debug!(attempt, error = %e, "reconnect failed");
                    self.emit(Event::ReconnectFailed {
                        attempt,
                        error: e.to_string(),
                    });
                    if open_error_is_terminal(&e, self.options.token_provider.is_some()) {
                        self.finish(e.disconnect().cloned(), format!("reconnect refused: {e}"));
                        return None;
                    }
                }
            }
        }
    }

    fn shut_down(&mut self, ending: Ending) -> Option<(WsStream, Welcome)> {
        self.finish(Some(Disconnect::NORMAL), "closed by the client".into());
        if let Ending::Shutdown(Some(done)) = ending {
            let _ = done.send(());
        }
        None
    }

    /// A request while disconnected.
    fn offline(&mut self, request: Option<Request>) -> Result<(), Ending> {
        match request {
            None => return Err(Ending::Shutdown(None)),
            Some(Request::Close { done }) => return Err(Ending::Shutdown(Some(done))),
            Some(Request::DebugDrop) => {}
            Some(Request::Forget { room, generation }) => {
                if self
                    .subs
                    .get(&room)
                    .is_some_and(|s| s.generation == generation)
                {
                    self.subs.remove(&room);
                }
            }
            Some(Request::Command {
                command: OutCommand::Unsubscribe { room },
                reply,
            }) => {
                // Not renewed at the next connection, so done at once.
                let result = match self.subs.remove(&room) {
                    Some(_) => Ok(RawValue::from_string("{}".into()).map_err(Error::from)),
                    None => Err(Error::Usage(format!("not subscribed to '{room}'"))),
                };
                let _ = reply.send(result.and_then(|r| r));
            }
            Some(Request::Command { command, reply }) => self.queue.push_back((command, reply)),
            Some(Request::Subscribe {
                room,
                since,
                token,
                tx,
                reply,
            }) => {
                if let Some(sub) = self.new_sub(&room, since, token, tx, reply) {
                    self.subs.insert(room, sub);
                }
            }
        }
        Ok(())
    }

    /// A new subscription entry, held back until subscribed; `None` (and the caller told)
    /// when the client already has one for the room.
    fn new_sub(
        &mut self,
        room: &str,
        since: Option<StreamPosition>,
        token: Option<String>,
        tx: mpsc::Sender<SubscriptionEvent>,
        reply: SubscribeReply,
    ) -> Option<Sub> {
        if self.subs.contains_key(room) {
            let _ = reply.send(Err(Error::Usage(format!(
                "this client is already subscribed to '{room}'"
            ))));
            return None;
        }
        let generation = self.next_generation;
        self.next_generation += 1;
        Some(Sub {
            generation,
            origin: Origin::Client,
            tx,
            position: since,
            token,
            held: Some(Vec::new()),
            waiting: Some(reply),
            lag: None,
            closed: false,
        })
    }

    /// Serves one connection until it ends; `announce`: emit [`Event::Connected`] (not for
    /// the first connection, which [`super::Client::connect`] returns).
    async fn serve(
        &mut self,
        ws: &mut WsStream,
        welcome: Welcome,
        announce: bool,
    ) -> Result<Infallible, Ending> {
        let idle = match welcome.ping_interval {
            0 => None,
            secs => Some(Duration::from_secs(secs) * 2 + Duration::from_secs(5)),
        };
        self.server_rooms = welcome.rooms.clone().into_iter().collect();
        self.state.send_replace(ConnectionState::Connected {
            connection: welcome.connection.clone(),
        });
        self.welcome.send_replace(welcome.clone());
        if announce {
            self.emit(Event::Connected(welcome));
        }

        // Renew the subscriptions, then send what waited for the connection.
        let rooms: Vec<String> = self.subs.keys().cloned().collect();
        for room in rooms {
            self.renew(ws, &room).await?;
        }
        while let Some((command, reply)) = self.queue.pop_front() {
            self.call(ws, command, reply).await?;
        }

        let mut deadline = idle.map(|idle| Instant::now() + idle);
        loop {
            let timer = async move {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                message = ws.recv_any() => {
                    deadline = idle.map(|idle| Instant::now() + idle);
                    match message {
                        Ok(Some(message)) => self.incoming(ws, message).await?,
                        Ok(None) => return Err(lost("the connection ended without a close frame")),
                        Err(Error::Protocol(e)) => {
                            // The server broke the protocol: say so and stop.
                            // The client's own close, terminal whatever the code's row says.
                            let disconnect = Disconnect::from_code(e.close_code().0).with_reason("protocol error");
                            let _ = ws.close(Some(&disconnect.close_frame())).await;
                            return Err(Ending::Ended { disconnect: Some(disconnect), reason: e.to_string(), terminal: true });
                        }
                        Err(e) => return Err(lost(e)),
                    }
                }
                request = self.requests.recv() => self.online(ws, request).await?,
                _ = timer => {
                    return Err(lost(format!("nothing received for {:?}", idle.unwrap_or_default())));
                }
            }
        }
    }

    /// Renews a subscription on a new connection.
    async fn renew(&mut self, ws: &mut WsStream, room: &str) -> Result<(), Ending> {
        let Some(sub) = self.subs.get_mut(room) else {
            return Ok(());
        };
        sub.held = Some(Vec::new());
        match (self.server_rooms.get(room).cloned(), sub.origin) {
            (Some(current), _) => {
                sub.origin = Origin::Server;
                self.recover(ws, room, None, current).await
            }
            (None, Origin::Server) => {
                if let Some(sub) = self.subs.remove(room) {
                    sub.end(Error::Usage(format!(
                        "the server no longer subscribes this connection to '{room}'"
                    )));
                }
                Ok(())
            }
            (None, Origin::Client) => self.send_subscribe(ws, room).await,
        }
    }

    async fn send_subscribe(&mut self, ws: &mut WsStream, room: &str) -> Result<(), Ending> {
        let id = self.id();
        let Some(sub) = self.subs.get(room) else {
            return Ok(());
        };
        let command = Command {
            id: Some(Id::Number(id)),
            kind: CommandKind::Subscribe(SubscribeCommand {
                room: Cow::Borrowed(room),
                since: sub.position.clone(),
                token: sub.token.as_deref().map(Cow::Borrowed),
            }),
        };
        self.pending.insert(
            id,
            Pending::Subscribe {
                room: room.to_owned(),
                generation: sub.generation,
            },
        );
        write(ws, &mut self.buf, &command).await
    }

    /// Brings a server-side subscription from `since` (or its last position) to `current`,
    /// through `history` when publications are missing.
    async fn recover(
        &mut self,
        ws: &mut WsStream,
        room: &str,
        since: Option<StreamPosition>,
        current: StreamPosition,
    ) -> Result<(), Ending> {
        let id = self.id();
        let Some(sub) = self.subs.get_mut(room) else {
            return Ok(());
        };
        let from = since.or_else(|| sub.position.clone());
        let recovered = match from {
            None => {
                sub.position = Some(current.clone());
                None
            }
            Some(from) if from.epoch != current.epoch => {
                sub.reset(current.clone());
                Some(false)
            }
            Some(from) if from.offset == current.offset => {
                sub.position = Some(from);
                Some(true)
            }
            Some(from) if from.offset > current.offset => {
                // Ahead of the stream: not a position of this stream.
                sub.reset(current.clone());
                Some(false)
            }
            Some(from) => {
                let limit = u32::try_from(current.offset - from.offset).unwrap_or(u32::MAX);
                sub.position = Some(from.clone());
                sub.held.get_or_insert_with(Vec::new);
                self.pending.insert(
                    id,
                    Pending::Recover {
                        room: room.to_owned(),
                        generation: sub.generation,
                        target: current,
                    },
                );
                let command = Command {
                    id: Some(Id::Number(id)),
                    kind: CommandKind::History(HistoryCommand {
                        room: Cow::Borrowed(room),
                        since: Some(from),
                        limit: Some(limit),
                        reverse: false,
                    }),
                };
                return write(ws, &mut self.buf, &command).await;
            }
        };
        self.established(ws, room, &current, recovered).await
    }

    /// A subscription is live: its held messages go out and its caller gets the answer.
    async fn established(
        &mut self,
        ws: &mut WsStream,
        room: &str,
        at: &StreamPosition,
        recovered: Option<bool>,
    ) -> Result<(), Ending> {
        let Some(sub) = self.subs.get_mut(room) else {
            return Ok(());
        };
        sub.activate();
        let info = SubscribeInfo {
            epoch: at.epoch.clone(),
            offset: at.offset,
            recovered,
        };
        let mut renewed = None;
        match sub.waiting.take() {
            Some(waiting) => {
                if waiting.send(Ok((sub.generation, info))).is_err() {
                    // The caller gave up (timeout): nobody will read this subscription.
                    sub.closed = true;
                }
            }
            None => renewed = Some(info),
        }
        let closed = sub.closed;
        if let Some(info) = renewed {
            self.emit(Event::Resubscribed {
                room: room.to_owned(),
                info,
            });
        }
        if closed {
            self.forget(ws, room).await?;
        }
        Ok(())
    }

    /// Removes a subscription whose receiver is gone, unsubscribing when the client made it.
    async fn forget(&mut self, ws: &mut WsStream, room: &str) -> Result<(), Ending> {
        let Some(sub) = self.subs.remove(room) else {
            return Ok(());
        };
        if sub.origin == Origin::Client {
            let command = Command {
                id: None,
                kind: CommandKind::Unsubscribe {
                    room: Cow::Borrowed(room),
                },
            };
            write(ws, &mut self.buf, &command).await?;
        }
        Ok(())
    }

    /// A request while connected.
    async fn online(&mut self, ws: &mut WsStream, request: Option<Request>) -> Result<(), Ending> {
        match request {
            None => {
                close_gracefully(ws).await;
                Err(Ending::Shutdown(None))
            }
            Some(Request::Close { done }) => {
                close_gracefully(ws).await;
                Err(Ending::Shutdown(Some(done)))
            }
            Some(Request::DebugDrop) => Err(lost("dropped by debug_drop_connection")),
            Some(Request::Forget { room, generation }) => {
                if self
                    .subs
                    .get(&room)
                    .is_some_and(|s| s.generation == generation)
                {
                    self.forget(ws, &room).await?;
                }
                Ok(())
            }
            Some(Request::Command { command, reply }) => self.call(ws, command, reply).await,
            Some(Request::Subscribe {
                room,
                since,
                token,
                tx,
                reply,
            }) => {
                let Some(mut sub) = self.new_sub(&room, since.clone(), token, tx, reply) else {
                    return Ok(());
                };
                match self.server_rooms.get(&room).cloned() {
                    Some(current) => {
                        // The server subscribed this connection already: adopt it.
                        sub.origin = Origin::Server;
                        sub.position = None;
                        self.subs.insert(room.clone(), sub);
                        self.recover(ws, &room, since, current).await
                    }
                    None => {
                        self.subs.insert(room.clone(), sub);
                        self.send_subscribe(ws, &room).await
                    }
                }
            }
        }
    }

    async fn call(
        &mut self,
        ws: &mut WsStream,
        command: OutCommand,
        reply: ReplySender,
    ) -> Result<(), Ending> {
        if reply.is_closed() {
            return Ok(());
        }
        if let OutCommand::Unsubscribe { room } = &command {
            // The subscription ends now, whatever the answer.
            self.subs.remove(room);
        }
        let id = self.id();
        self.buf.clear();
        wire::encode_command(&mut self.buf, &command.to_wire(id));
        // Registered before writing, so that a write failure answers ConnectionLost.
        let pending = match command {
            OutCommand::Refresh { token } => Pending::Refresh { token, reply },
            _ => Pending::Command(reply),
        };
        self.pending.insert(id, pending);
        ws.send(OpCode::Text, &self.buf).await.map_err(lost)
    }

    async fn incoming(&mut self, ws: &mut WsStream, message: Message) -> Result<(), Ending> {
        match message {
            Message::Ping(payload) => ws.send(OpCode::Pong, &payload).await.map_err(lost),
            Message::Pong(_) | Message::Binary(_) => Ok(()),
            Message::Close(frame) => {
                let _ = ws.close(frame.as_ref()).await;
                let disconnect = frame.as_ref().map(received);
                let reason = match &disconnect {
                    Some(d) => format!("closed by the server: {d}"),
                    None => "closed by the server without a code".to_owned(),
                };
                Err(Ending::Ended {
                    terminal: disconnect.as_ref().is_some_and(|d| !d.reconnect),
                    disconnect,
                    reason,
                })
            }
            Message::Text(text) => self.text(ws, text.as_str()).await,
        }
    }

    async fn text(&mut self, ws: &mut WsStream, text: &str) -> Result<(), Ending> {
        let message = match wire::parse_server_message(text) {
            Ok(message) => message,
            Err(e) => {
                tracing::warn!(error = %e, text = truncate(text, 200), "unreadable server message");
                return Ok(());
            }
        };
        match message {
            ServerMessage::Reply(reply) => {
                let pending = numeric(&reply.id).and_then(|id| self.pending.remove(&id));
                self.answer(ws, pending, Ok(reply.result)).await?;
            }
            ServerMessage::Error(e) => {
                let pending =
                    e.id.as_ref()
                        .and_then(numeric)
                        .and_then(|id| self.pending.remove(&id));
                match pending {
                    Some(pending) => {
                        let error = Error::Server {
                            code: e.code,
                            message: e.message,
                            retry_after_ms: e.retry_after_ms,
                        };
                        self.answer(ws, Some(pending), Err(error)).await?;
                    }
                    None => self.emit(Event::Error {
                        code: e.code,
                        message: e.message,
                    }),
                }
            }
            ServerMessage::Pong { id } => {
                let pending = id
                    .as_ref()
                    .and_then(numeric)
                    .and_then(|id| self.pending.remove(&id));
                if pending.is_some() {
                    let empty = RawValue::from_string("{}".into()).map_err(lost)?;
                    self.answer(ws, pending, Ok(empty)).await?;
                }
            }
            ServerMessage::Welcome(_) => tracing::debug!("ignoring a second welcome"),
            ServerMessage::Message(message) => {
                if let (Some(at), Some(known)) =
                    (message.position(), self.server_rooms.get_mut(&message.room))
                {
                    *known = at;
                }
                match self.subs.get_mut(&message.room) {
                    Some(sub) => {
                        let room = message.room.clone();
                        sub.hold_or_deliver(message);
                        if sub.closed {
                            self.forget(ws, &room).await?;
                        }
                    }
                    None => self.emit(Event::Message(message)),
                }
            }
            ServerMessage::Join(push) => self.emit(Event::Join(push)),
            ServerMessage::Leave(push) => self.emit(Event::Leave(push)),
            ServerMessage::Subscribed(push) if push.recovered.is_some() => {
                // About a live subscription (protocol 4.4): a loss, or a stream that goes on
                // in a new epoch.
                let at = StreamPosition::new(push.epoch.clone(), push.offset);
                if let Some(sub) = self.subs.get_mut(&push.room) {
                    if push.recovered == Some(true) {
                        sub.continue_in(&at);
                    } else {
                        sub.reset(at);
                    }
                } else {
                    if let Some(known) = self.server_rooms.get_mut(&push.room) {
                        *known = at;
                    }
                    // A room whose messages go to the event stream: told there.
                    self.emit(Event::Subscribed(push));
                }
            }
            ServerMessage::Subscribed(push) => {
                self.server_rooms.insert(
                    push.room.clone(),
                    StreamPosition::new(push.epoch.clone(), push.offset),
                );
                self.emit(Event::Subscribed(push));
            }
            ServerMessage::Unsubscribed(push) => {
                self.server_rooms.remove(&push.room);
                if let Some(sub) = self.subs.remove(&push.room) {
                    sub.end(Error::Usage(format!(
                        "unsubscribed by the server ({})",
                        push.reason
                    )));
                }
                self.emit(Event::Unsubscribed(push));
            }
            ServerMessage::RefreshRequired { expires } => {
                self.emit(Event::RefreshRequired { expires });
                self.refresh_in_background();
            }
            ServerMessage::Unknown(kind) => self.emit(Event::Unknown {
                kind,
                text: text.to_owned(),
            }),
        }
        Ok(())
    }

    /// With a token provider, answers `refresh_required` with a `refresh`.
    fn refresh_in_background(&self) {
        let Some(provider) = self.options.token_provider.clone() else {
            return;
        };
        let requests = self.self_requests.clone();
        tokio::spawn(async move {
            let token = match provider.token().await {
                Ok(token) => token,
                Err(e) => {
                    tracing::warn!(error = %e, "token provider failed; the connection will expire");
                    return;
                }
            };
            let Some(requests) = requests.upgrade() else {
                return;
            };
            let (reply, answer) = oneshot::channel();
            let command = OutCommand::Refresh { token };
            if requests
                .send(Request::Command { command, reply })
                .await
                .is_err()
            {
                return;
            }
            drop(requests);
            if let Ok(Err(e)) = answer.await {
                tracing::warn!(error = %e, "refresh failed");
            }
        });
    }

    /// Settles a command in flight with its answer.
    async fn answer(
        &mut self,
        ws: &mut WsStream,
        pending: Option<Pending>,
        result: Result<Box<RawValue>, Error>,
    ) -> Result<(), Ending> {
        match pending {
            None => Ok(()),
            Some(Pending::Command(reply)) => {
                let _ = reply.send(result);
                Ok(())
            }
            Some(Pending::Refresh { token, reply }) => {
                if result.is_ok() {
                    self.token = Some(token);
                }
                let _ = reply.send(result);
                Ok(())
            }
            Some(Pending::Subscribe { room, generation }) => {
                self.subscribe_answered(ws, &room, generation, result).await
            }
            Some(Pending::Recover {
                room,
                generation,
                target,
            }) => {
                self.recover_answered(ws, &room, generation, &target, result)
                    .await
            }
        }
    }

    async fn subscribe_answered(
        &mut self,
        ws: &mut WsStream,
        room: &str,
        generation: u64,
        result: Result<Box<RawValue>, Error>,
    ) -> Result<(), Ending> {
        if self
            .subs
            .get(room)
            .is_none_or(|s| s.generation != generation)
        {
            return Ok(()); // unsubscribed meanwhile
        }
        let result = result.and_then(|raw| {
            serde_json::from_str::<SubscribeResult<'static>>(raw.get()).map_err(Error::from)
        });
        let reply = match result {
            Ok(reply) => reply,
            Err(e) => {
                if let Some(sub) = self.subs.remove(room) {
                    let e = if sub.waiting.is_some() {
                        e
                    } else {
                        Error::Usage(format!("renewing the subscription failed: {e}"))
                    };
                    sub.end(e);
                }
                return Ok(());
            }
        };
        let at = StreamPosition::new(reply.epoch.as_ref(), reply.offset);
        if let Some(sub) = self.subs.get_mut(room) {
            match reply.recovered {
                Some(true) => {
                    // Recovered, the reply's epoch goes on from `since`, even a new one.
                    if let Some(p) = &sub.position {
                        sub.continue_in(&StreamPosition::new(at.epoch.clone(), p.offset));
                    }
                    for publication in reply.publications {
                        sub.deliver(message_of(room, &reply.epoch, publication));
                    }
                }
                Some(false) => sub.reset(at.clone()),
                None => {}
            }
            let ahead = sub
                .position
                .as_ref()
                .is_some_and(|p| p.epoch == at.epoch && p.offset > at.offset);
            if ahead {
                // Only a server that lost publications without a new epoch does this: what
                // the subscriber holds cannot be trusted.
                sub.reset(at.clone());
            }
            sub.advance_to(&at);
        }
        self.established(ws, room, &at, reply.recovered).await
    }

    async fn recover_answered(
        &mut self,
        ws: &mut WsStream,
        room: &str,
        generation: u64,
        target: &StreamPosition,
        result: Result<Box<RawValue>, Error>,
    ) -> Result<(), Ending> {
        let Some(sub) = self
            .subs
            .get_mut(room)
            .filter(|s| s.generation == generation)
        else {
            return Ok(());
        };
        let from = sub.position.clone().unwrap_or_else(|| target.clone());
        let history = result.and_then(|raw| {
            serde_json::from_str::<HistoryResult<'static>>(raw.get()).map_err(Error::from)
        });
        let recovered = match history {
            Ok(history) if history.epoch == from.epoch => {
                let publications = history.publications;
                let contiguous = publications
                    .iter()
                    .zip(from.offset + 1..)
                    .all(|(p, expected)| p.offset == expected)
                    && publications
                        .last()
                        .is_some_and(|p| p.offset >= target.offset);
                if contiguous {
                    for publication in publications {
                        sub.deliver(message_of(room, &history.epoch, publication));
                    }
                }
                contiguous
            }
            Ok(_) => false,
            Err(e) => {
                tracing::debug!(room, error = %e, "history for recovery failed");
                false
            }
        };
        if !recovered {
            sub.reset(target.clone());
        }
        self.established(ws, room, target, Some(recovered)).await
    }
}
