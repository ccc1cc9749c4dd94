//! The standalone v1 protocol (docs/protocol.md sections 2–7) as one [`Handler`] on the
//! library API: authentication at the handshake, `welcome`, commands with replies, errors
//! that never close the connection, token expiry and refresh, server-side subscriptions.
//!
//! It is a surface: it parses commands, asks [`Access`](crate::access::Access) whether the
//! connection may, calls the [`Node`] service and encodes the answer. It holds no policy and
//! no broker call of its own.

use std::{
    borrow::Cow,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use http::StatusCode;
use serde_json::value::RawValue;
use switchboard_protocol::{
    Disconnect,
    frame::OpCode,
    wire::{self, Command, CommandKind, ErrorCode, Id, Member, PresenceCommand, PublishCommand},
};
use tokio::time::Instant;

use crate::{
    Accepted, Connection, Handler, Incoming, Refusal, UpgradeContext, User,
    access::Action,
    auth::{self, AuthError},
    broker::StreamPosition,
    conn::Control,
    error::Refused,
    handler::frame_with,
    limits::{self, CommandBucket, CommandRate, Verdict},
    node::{self, Node, Publish, Subscribed},
    proxy::{PassedHeaders, ProxyKind},
};

/// How long before expiry the server pushes `refresh_required`.
const REFRESH_AHEAD: Duration = Duration::from_secs(30);

/// The v1 protocol handler.
#[derive(Debug, Clone)]
pub struct Protocol {
    node: Node,
    /// The command rate limit (`limits.commands_per_second`); `None` when off.
    rate: Option<CommandRate>,
}

impl Protocol {
    /// The protocol served by `node`.
    pub fn new(node: Node) -> Self {
        // Development mode serves benchmarks and load tests from one machine: no command rate
        // limit there (docs/security.md).
        let config = node.config();
        let rate = (config.dev != Some(true))
            .then(|| CommandRate::from_config(&config.limits))
            .flatten();
        Protocol { node, rate }
    }
}

/// A protocol connection's state.
#[derive(Debug, Default)]
pub struct Session {
    /// What only some connections need, boxed (most connections only listen, and idle ones
    /// should hold nothing): a small state keeps the connection's task in tokio's smallest
    /// cell. The token's expiry is read from the user for the same reason.
    extra: Option<Box<Extra>>,
    phase: Phase,
    /// The command rate limit's bucket (six bytes, in what would be padding).
    rate: CommandBucket,
}

/// The part of a [`Session`] made only when needed.
#[derive(Debug, Default)]
struct Extra {
    /// Raw JSON of the `from` object of this connection's publications, made at its first
    /// publication.
    from: Option<Bytes>,
    /// The upgrade request's headers the subscribe, publish and rpc proxies pass on, kept
    /// when they are configured to (docs/proxies.md).
    headers: Option<Box<PassedHeaders>>,
}

impl Session {
    fn extra(&mut self) -> &mut Extra {
        self.extra.get_or_insert_with(Box::default)
    }

    /// The headers kept for the proxies.
    fn headers(&self) -> Option<&PassedHeaders> {
        self.extra.as_ref()?.headers.as_deref()
    }

    /// A fresh session keeping `headers` for the proxies.
    fn with_headers(headers: Option<Box<PassedHeaders>>) -> Session {
        Session {
            extra: headers.map(|h| {
                Box::new(Extra {
                    from: None,
                    headers: Some(h),
                })
            }),
            ..Session::default()
        }
    }
}

/// Where a connection stands with its token. One byte: the `refresh_required` flag and the
/// first-message wait share it, since a connection waiting for `auth` has no token to refresh.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Authenticated; no `refresh_required` sent for the current token.
    #[default]
    Open,
    /// Authenticated; `refresh_required` was sent for the current token.
    RefreshSent,
    /// Upgraded without a token on a first-message route (protocol 2.2): only `auth` is
    /// accepted, before `limits.auth_timeout`.
    AwaitingAuth,
}

/// The user a verified token names.
fn user_from(claims: Option<auth::Claims>) -> User {
    match claims {
        Some(claims) => User {
            id: claims.sub.as_str().into(),
            info: claims.info.map(|i| Bytes::from(i.get().to_string())),
            expires: claims.exp,
            rooms: claims.rooms,
        },
        None => User::default(),
    }
}

/// The `from` object of this connection's publications (raw JSON), made once.
fn from_object(conn: &mut Connection<Session>) -> Bytes {
    if let Some(from) = conn.state.extra.as_ref().and_then(|e| e.from.as_ref()) {
        return Bytes::clone(from);
    }
    let user = &conn.user;
    let mut from = Vec::with_capacity(64);
    wire::encode_member(
        &mut from,
        &Member::new(&user.id, conn.id(), user.info.as_deref().and_then(raw)),
    );
    let from = Bytes::from(from);
    conn.state.extra().from = Some(from.clone());
    from
}

// Every protocol connection holds one in its task: past 16 bytes the task no longer fits
// tokio's 384-byte cell (see `transport::ws`'s size test) and costs 128 bytes more.
const _: () = assert!(std::mem::size_of::<Session>() <= 16);

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn raw(bytes: &[u8]) -> Option<&RawValue> {
    serde_json::from_slice::<&RawValue>(bytes).ok()
}

/// Stored publications as the `publications` of a `subscribe` or `history` reply.
fn wire_publications(stored: &[Arc<crate::broker::Publication>]) -> Vec<wire::Publication<'_>> {
    stored
        .iter()
        .filter_map(|p| {
            Some(wire::Publication::new(
                p.offset,
                raw(&p.data)?,
                p.from.as_deref().and_then(raw),
            ))
        })
        .collect()
}

fn member<S>(conn: &Connection<S>) -> node::Member<'_> {
    node::Member {
        conn: &conn.shared,
        user: &conn.user,
    }
}

impl Handler for Protocol {
    type State = Session;

    async fn authenticate(
        &self,
        request: &UpgradeContext<'_>,
    ) -> Result<Accepted<Session>, Refusal> {
        let access = self.node.access();
        let token = auth::find_token(
            request.headers,
            request.uri.query(),
            request.protocols,
            &access.config().auth,
        );
        // No token and a connect proxy: the application backend says who connects (a token,
        // when there is one, wins: docs/proxies.md).
        let has_token = token.as_deref().is_some_and(|t| !t.trim().is_empty());
        let proxies = self.node.proxies();
        // Headers for the command proxies, kept only when they are configured to pass some.
        let kept = proxies.command_headers(request.headers);
        if !has_token && proxies.configured(ProxyKind::Connect) {
            let user = proxies
                .connect(
                    request.connection,
                    crate::metrics::Transport::WebSocket,
                    request.client_ip,
                    request.headers,
                )
                .await?;
            return Ok(Accepted {
                user,
                state: Session::with_headers(kept),
            });
        }
        // First-message mode: an upgrade without a token waits for `auth` (2.2), as the
        // shared anonymous user until then; one with a token is verified here as usual.
        if access.config().auth.first_message && token.as_deref().is_none_or(str::is_empty) {
            return Ok(Accepted {
                user: User::default(),
                state: Session {
                    phase: Phase::AwaitingAuth,
                    ..Session::with_headers(kept)
                },
            });
        }
        let unauthorized = |e: AuthError| {
            self.node.metrics().auth_failure(e);
            Refusal::new(StatusCode::UNAUTHORIZED, "unauthorized", e.reason())
        };
        let claims = access
            .verifier()
            .authenticate_fresh(token.as_deref())
            .await
            .map_err(unauthorized)?;
        Ok(Accepted {
            user: user_from(claims),
            state: Session::with_headers(kept),
        })
    }

    async fn on_connect(&self, conn: &mut Connection<Session>) {
        if conn.state.phase == Phase::AwaitingAuth {
            // The connection's own timer (no task of its own): `on_timer` closes it with
            // 4001 unless `auth` came first. Nothing else is allocated for it.
            let timeout = self.node.config().limits.auth_timeout;
            conn.set_timer(Some(Instant::now() + timeout));
            return;
        }
        self.start(conn).await;
    }

    async fn on_message(&self, conn: &mut Connection<Session>, message: Incoming) {
        if conn.state.phase == Phase::AwaitingAuth {
            Box::pin(self.first_message(conn, message)).await;
            return;
        }
        self.command(conn, message).await;
    }

    async fn on_close(
        &self,
        conn: &mut Connection<Session>,
        _close: Option<&switchboard_protocol::CloseFrame>,
    ) {
        for room in std::mem::take(&mut conn.rooms) {
            self.node.unsubscribe(member(conn), &room).await;
        }
    }

    async fn on_timer(&self, conn: &mut Connection<Session>) {
        if conn.state.phase == Phase::AwaitingAuth {
            tracing::debug!(conn = %conn.id(), "no auth message within limits.auth_timeout");
            self.node.metrics().auth_failure(AuthError::Missing);
            conn.close(Disconnect::UNAUTHORIZED.with_reason("auth_timeout"));
            return;
        }
        let Some(exp) = conn.user.expires else {
            return;
        };
        let now = now_unix();
        if now >= exp {
            tracing::debug!("token expired without refresh");
            conn.close(Disconnect::TOKEN_EXPIRED);
        } else if conn.state.phase != Phase::RefreshSent {
            conn.state.phase = Phase::RefreshSent;
            let mut buf = Vec::with_capacity(48);
            wire::encode_refresh_required(&mut buf, exp);
            conn.send_raw_json(&buf);
            conn.set_timer(Some(Instant::now() + Duration::from_secs(exp - now)));
        }
    }

    async fn on_control(&self, conn: &mut Connection<Session>, control: Control) {
        match control {
            Control::Close(d) => conn.close(d),
            // Not yet anyone's connection: nothing to subscribe for.
            Control::Subscribe(_) | Control::Unsubscribe(_)
                if conn.state.phase == Phase::AwaitingAuth => {}
            Control::Subscribe(room) => Box::pin(self.server_subscribe(conn, room)).await,
            Control::Unsubscribe(room) => {
                if let Some(room) = conn.rooms.take(&room) {
                    self.node.unsubscribe(member(conn), &room).await;
                    let mut buf = Vec::with_capacity(64 + room.len());
                    wire::encode_unsubscribed(&mut buf, &room, "server");
                    conn.send_raw_json(&buf);
                }
            }
        }
    }
}

impl Protocol {
    /// The first message of a connection upgraded without a token (protocol 2.2): `auth`
    /// with a token that verifies starts the connection (its `welcome` is the answer);
    /// anything else closes it with 4001 and a reason.
    async fn first_message(&self, conn: &mut Connection<Session>, message: Incoming) {
        let token = match &message {
            Incoming::Text(t) => match wire::parse_command(t.as_str()) {
                Ok(Command {
                    kind: CommandKind::Auth { token },
                    ..
                }) => Some(token),
                _ => None,
            },
            Incoming::Binary(_) => None,
        };
        let Some(token) = token else {
            tracing::debug!(conn = %conn.id(), "first message is not auth");
            self.node.metrics().auth_failure(AuthError::Missing);
            conn.close(Disconnect::UNAUTHORIZED.with_reason("expected auth first"));
            return;
        };
        // An empty token is the anonymous user when `auth.anonymous` is on (2.1).
        let verified = self
            .node
            .access()
            .verifier()
            .authenticate_fresh(Some(&token));
        let claims = match Box::pin(verified).await {
            Ok(claims) => claims,
            Err(e) => {
                self.node.metrics().auth_failure(e);
                conn.close(Disconnect::UNAUTHORIZED.with_reason(e.reason()));
                return;
            }
        };
        let user: Arc<User> = User::shared(user_from(claims));
        if let Some(admitted) = &mut conn.admitted
            && let Err(r) = admitted.open_user(&user.id).await
        {
            // At the handshake this is a 429; here the client retries with its backoff.
            tracing::info!(conn = %conn.id(), user = %user.id, reason = r.reason(), "first-message auth: refused by the per-user limit");
            conn.close(Disconnect::RECONNECT.with_reason(r.reason()));
            return;
        }
        // The user index (the server API's way to each user's connections) moves from the
        // anonymous user to this one.
        let hub = &conn.route.hub;
        hub.remove_connection(&conn.user.id, &conn.shared);
        hub.add_connection(&user.id, &conn.shared);
        conn.user = user;
        conn.state.phase = Phase::Open;
        tracing::debug!(conn = %conn.id(), user = %conn.user.id, "authenticated by first message");
        self.start(conn).await;
    }

    /// Starts an authenticated connection: expiry, server-side subscriptions, `welcome`.
    async fn start(&self, conn: &mut Connection<Session>) {
        let user = conn.user.clone();
        self.schedule_expiry(conn);

        // Server-side subscriptions: the personal room and the `rooms` claim, which grants
        // what a subscribe could get with it, no more (4.1).
        let access = self.node.access();
        let mut rooms: Vec<Arc<str>> = Vec::new();
        if let Some(personal) = access.personal_room(&user) {
            rooms.push(personal.into());
        }
        for r in &user.rooms {
            if rooms.iter().any(|x| &**x == r) {
                continue;
            }
            match access.check(&user, r, Action::ClaimSubscribe).await {
                Ok(_) if !access.is_personal(r) => rooms.push(r.as_str().into()),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(conn = %conn.id(), room = %r, reason = %e, "rooms claim: room refused, not subscribed")
                }
            }
        }
        let config = self.node.config();
        let mut welcome = wire::Welcome::new(
            conn.id(),
            &*user.id,
            self.node.id(),
            user.expires,
            config.websocket.ping_interval.as_secs(),
        );
        // Every room is begun before the welcome is queued and finished after it: the events
        // of its rooms wait behind the welcome that carries their positions.
        let mut begun = Vec::new();
        for room in rooms
            .into_iter()
            .take(config.limits.subscriptions_per_connection)
        {
            match self.node.begin_subscribe(member(conn), &room, None).await {
                Ok(s) => {
                    welcome.rooms.insert(
                        room.to_string(),
                        wire::StreamPosition::new(&*s.position.epoch, s.position.offset),
                    );
                    begun.push((room, s));
                }
                Err(e) => {
                    tracing::warn!(conn = %conn.id(), room = %room, reason = %e, "server-side subscription failed")
                }
            }
        }
        let mut buf = Vec::with_capacity(256);
        wire::encode_welcome(&mut buf, &welcome);
        let frame = conn.frame_text(&buf);
        let _ = conn.shared.outbound.push(frame);
        for (room, read) in begun {
            self.node
                .finish_subscribe(member(conn), &room, &read, None)
                .await;
            conn.rooms.insert(room);
        }
    }

    /// A command of an authenticated connection.
    async fn command(&self, conn: &mut Connection<Session>, message: Incoming) {
        if let Some(rate) = &self.rate {
            match rate.check(&mut conn.state.rate, limits::now_ms()) {
                Verdict::Allowed => {}
                Verdict::Limited { retry_after_ms } => {
                    self.node.metrics().rate_limited();
                    rate_limited(conn, &message, retry_after_ms);
                    return;
                }
                Verdict::Close => {
                    self.node.metrics().rate_limited();
                    tracing::info!(conn = %conn.id(), "command rate exceeded for too long, closing with 4502");
                    conn.close(Disconnect::RATE_LIMITED);
                    return;
                }
            }
        }
        let text = match &message {
            Incoming::Text(t) => t.as_str(),
            Incoming::Binary(_) => {
                let e = wire::CommandError::binary_message();
                send_error(conn, None, e.code, &e.message);
                return;
            }
        };
        let command = match wire::parse_command(text) {
            Ok(c) => c,
            Err(e) => {
                send_error(conn, e.id.as_ref(), e.code, &e.message);
                return;
            }
        };
        let Command { id, kind } = command;
        // Each command's future is boxed while it runs: inline, the largest of them would be
        // part of every read, whatever the command.
        let result = match kind {
            CommandKind::Subscribe(c) => {
                Box::pin(self.subscribe(conn, id.as_ref(), &c.room, c.since, c.token.as_deref()))
                    .await
            }
            CommandKind::Unsubscribe { room } => {
                Box::pin(self.unsubscribe(conn, id.as_ref(), &room)).await
            }
            CommandKind::Publish(c) => Box::pin(self.publish(conn, id.as_ref(), c)).await,
            CommandKind::Presence(c) => Box::pin(self.presence(conn, id.as_ref(), c)).await,
            CommandKind::History(c) => {
                Box::pin(self.history(conn, id.as_ref(), &c.room, c.since, c.limit, c.reverse))
                    .await
            }
            CommandKind::Ping => {
                let mut buf = Vec::with_capacity(32);
                wire::encode_pong(&mut buf, id.as_ref());
                conn.send_raw_json(&buf);
                Ok(())
            }
            CommandKind::Refresh { token } => self.refresh(conn, id.as_ref(), &token),
            CommandKind::Auth { .. } => Err(Refused::bad_request(
                "already authenticated at the handshake",
            )),
            CommandKind::Rpc(c) => Box::pin(self.rpc(conn, id.as_ref(), &c.method, c.data)).await,
        };
        if let Err(r) = result {
            send_error(conn, id.as_ref(), r.code, &r.message);
        }
    }
}

/// Answers a command refused by the rate limit, with its `id` when it has one.
#[cold]
fn rate_limited<S>(conn: &mut Connection<S>, message: &Incoming, retry_after_ms: u32) {
    let id = match message {
        Incoming::Text(t) => match wire::parse_command(t.as_str()) {
            Ok(c) => c.id,
            Err(e) => e.id,
        },
        Incoming::Binary(_) => None,
    };
    let mut buf = Vec::with_capacity(128);
    wire::encode_error(
        &mut buf,
        id.as_ref(),
        ErrorCode::RateLimited,
        "too many commands; retry after retry_after_ms",
        Some(u64::from(retry_after_ms)),
    );
    conn.send_raw_json(&buf);
}

fn send_error<S>(conn: &mut Connection<S>, id: Option<&Id>, code: ErrorCode, message: &str) {
    let mut buf = Vec::with_capacity(64 + message.len());
    wire::encode_error(&mut buf, id, code, message, None);
    conn.send_raw_json(&buf);
}

fn reply<S, T: serde::Serialize>(conn: &mut Connection<S>, id: Option<&Id>, result: &T) {
    if let Some(id) = id {
        let mut buf = Vec::with_capacity(128);
        if wire::encode_reply(&mut buf, id, result).is_ok() {
            conn.send_raw_json(&buf);
        }
    }
}

impl Protocol {
    fn schedule_expiry(&self, conn: &mut Connection<Session>) {
        let timer = conn.user.expires.map(|exp| {
            let left = Duration::from_secs(exp.saturating_sub(now_unix()));
            let at = if conn.state.phase == Phase::RefreshSent {
                left
            } else {
                left.saturating_sub(REFRESH_AHEAD)
            };
            Instant::now() + at
        });
        conn.set_timer(timer);
    }

    /// `limit_exceeded` when the connection has its maximum of subscriptions.
    fn check_subscription_count(&self, conn: &Connection<Session>) -> Result<(), Refused> {
        let max = self.node.config().limits.subscriptions_per_connection;
        if conn.rooms.len() >= max {
            return Err(Refused::limit_exceeded(format!(
                "at most {max} subscriptions per connection"
            )));
        }
        Ok(())
    }

    async fn subscribe(
        &self,
        conn: &mut Connection<Session>,
        id: Option<&Id>,
        room: &str,
        since: Option<wire::StreamPosition>,
        token: Option<&str>,
    ) -> Result<(), Refused> {
        self.node.access().room(room)?;
        if conn.rooms.contains(room) {
            return Err(Refused::new(
                ErrorCode::AlreadySubscribed,
                format!("already subscribed to '{room}'"),
            ));
        }
        let ns = self
            .node
            .access()
            .check(&conn.user, room, Action::Subscribe { token })
            .await?;
        self.check_subscription_count(conn)?;
        // The backend last: nothing it is asked about is refused by the server afterwards
        // (but the broker).
        self.node
            .proxies()
            .check_subscribe(ns, &conn.user, conn.id(), room, conn.state.headers())
            .await?;
        let room: Arc<str> = room.into();
        let since = since.map(|s| StreamPosition::new(s.epoch, s.offset));
        // The reply is framed with the connection's own encoder (its deflate context), which
        // the closure borrows apart from the member's fields.
        let encoder = &mut conn.encoder;
        let member = node::Member {
            conn: &conn.shared,
            user: &conn.user,
        };
        self.node
            .subscribe(member, &room, since, |sub| {
                id.map(|id| frame_with(encoder, OpCode::Text, &subscribe_reply(id, &room, sub)))
            })
            .await?;
        conn.rooms.insert(room);
        Ok(())
    }

    /// A subscription the server asked for (the server API): a `subscribed` push instead of
    /// a reply; refusals are logged, since nobody waits for an answer.
    async fn server_subscribe(&self, conn: &mut Connection<Session>, room: Arc<str>) {
        if conn.rooms.contains(&room) {
            return;
        }
        if let Err(e) = self.check_subscription_count(conn) {
            tracing::warn!(conn = %conn.id(), room = %room, reason = %e, "server-side subscription refused");
            return;
        }
        let encoder = &mut conn.encoder;
        let member = node::Member {
            conn: &conn.shared,
            user: &conn.user,
        };
        let result = self
            .node
            .subscribe(member, &room, None, |sub| {
                let mut buf = Vec::with_capacity(96 + room.len());
                wire::encode_subscribed(&mut buf, &room, &sub.position.epoch, sub.position.offset);
                Some(frame_with(encoder, OpCode::Text, &buf))
            })
            .await;
        match result {
            Ok(_) => {
                conn.rooms.insert(room);
            }
            Err(e) => {
                tracing::warn!(conn = %conn.id(), room = %room, reason = %e, "server-side subscription failed")
            }
        }
    }

    async fn unsubscribe(
        &self,
        conn: &mut Connection<Session>,
        id: Option<&Id>,
        room: &str,
    ) -> Result<(), Refused> {
        crate::access::valid_room(room)?;
        let Some(room) = conn.rooms.take(room) else {
            return Err(Refused::not_subscribed(format!(
                "not subscribed to '{room}'"
            )));
        };
        self.node.unsubscribe(member(conn), &room).await;
        reply(conn, id, &wire::EmptyResult {});
        Ok(())
    }

    async fn publish(
        &self,
        conn: &mut Connection<Session>,
        id: Option<&Id>,
        c: PublishCommand<'_>,
    ) -> Result<(), Refused> {
        let room = &*c.room;
        limits::check_data(c.data.get())
            .map_err(|e| Refused::bad_request(format!("field 'data': {e}")))?;
        let subscribed = conn.rooms.contains(room);
        let ns = self
            .node
            .access()
            .check(&conn.user, room, Action::Publish { subscribed })
            .await?;
        // The publish proxy's replacement is what is stored and fanned out.
        let replaced = self
            .node
            .proxies()
            .check_publish(
                ns,
                &conn.user,
                conn.id(),
                room,
                c.data,
                conn.state.headers(),
            )
            .await?;
        let publication = Publish {
            data: replaced.unwrap_or_else(|| Bytes::copy_from_slice(c.data.get().as_bytes())),
            from: Some(from_object(conn)),
            ephemeral: c.ephemeral,
            idempotency_key: c.idempotency_key.map(|k| k.into_owned()),
            exclude: (!c.echo).then(|| conn.shared.id.clone()),
        };
        let result = self.node.publish(room, publication).await?;
        let position = result.position;
        reply(
            conn,
            id,
            &wire::PublishResult {
                room: Cow::Borrowed(room),
                epoch: position.as_ref().map(|p| Cow::Borrowed(&*p.epoch)),
                offset: position.as_ref().map(|p| p.offset),
            },
        );
        Ok(())
    }

    /// `rpc`: the rpc proxy's answer as `{"data": …}` (docs/protocol.md 5.1).
    async fn rpc(
        &self,
        conn: &mut Connection<Session>,
        id: Option<&Id>,
        method: &str,
        data: &RawValue,
    ) -> Result<(), Refused> {
        let data = self
            .node
            .proxies()
            .rpc(&conn.user, conn.id(), method, data, conn.state.headers())
            .await?;
        let result = wire::RpcResult {
            data: Cow::Borrowed(&*data),
        };
        reply(conn, id, &result);
        Ok(())
    }

    async fn presence(
        &self,
        conn: &mut Connection<Session>,
        id: Option<&Id>,
        c: PresenceCommand<'_>,
    ) -> Result<(), Refused> {
        let room = &*c.room;
        let subscribed = conn.rooms.contains(room);
        self.node
            .access()
            .check(&conn.user, room, Action::Presence { subscribed })
            .await?;
        let limit = c.limit.map(|l| l as usize).unwrap_or(100);
        let page = self.node.presence(room, c.cursor.as_deref(), limit).await?;
        let members = page
            .members
            .iter()
            .map(|m| Member::new(&m.user, &m.connection, m.info.as_deref().and_then(raw)))
            .collect();
        reply(
            conn,
            id,
            &wire::PresenceResult {
                members,
                next_cursor: page.next_cursor.as_deref().map(Cow::Borrowed),
                connections: page.connections as u64,
                users: page.users as u64,
            },
        );
        Ok(())
    }

    async fn history(
        &self,
        conn: &mut Connection<Session>,
        id: Option<&Id>,
        room: &str,
        since: Option<wire::StreamPosition>,
        limit: Option<u32>,
        reverse: bool,
    ) -> Result<(), Refused> {
        let subscribed = conn.rooms.contains(room);
        self.node
            .access()
            .check(&conn.user, room, Action::History { subscribed })
            .await?;
        let since = since.map(|s| StreamPosition::new(s.epoch, s.offset));
        let h = self
            .node
            .history(room, since, limit.map(|l| l as usize), reverse)
            .await?;
        let publications = wire_publications(&h.publications);
        reply(
            conn,
            id,
            &wire::HistoryResult {
                epoch: Cow::Borrowed(&h.position.epoch),
                offset: h.position.offset,
                publications,
            },
        );
        Ok(())
    }

    fn refresh(
        &self,
        conn: &mut Connection<Session>,
        id: Option<&Id>,
        token: &str,
    ) -> Result<(), Refused> {
        let claims = self.node.access().verifier().verify(token).map_err(|e| {
            self.node.metrics().auth_failure(e);
            Refused::new(
                ErrorCode::Unauthorized,
                format!("token refused: {}", e.reason()),
            )
        })?;
        if claims.sub != *conn.user.id {
            return Err(Refused::forbidden(
                "the new token must carry the same 'sub'",
            ));
        }
        conn.state.phase = Phase::Open;
        Arc::make_mut(&mut conn.user).expires = claims.exp;
        self.schedule_expiry(conn);
        reply(
            conn,
            id,
            &wire::RefreshResult {
                expires: claims.exp,
            },
        );
        Ok(())
    }
}

/// The subscribe reply for what was read.
fn subscribe_reply(id: &Id, room: &str, sub: &Subscribed) -> Vec<u8> {
    let result = wire::SubscribeResult {
        room: Cow::Borrowed(room),
        epoch: Cow::Borrowed(&sub.position.epoch),
        offset: sub.position.offset,
        recovered: sub.recovered,
        publications: wire_publications(&sub.publications),
    };
    let mut buf = Vec::with_capacity(256);
    let _ = wire::encode_reply(&mut buf, id, &result);
    buf
}

#[cfg(test)]
#[path = "v1_tests.rs"]
mod tests;
