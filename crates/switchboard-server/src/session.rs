//! The standalone v1 protocol (`PROTOCOL.md` sections 2–7) as one [`Handler`] on the library
//! API: authentication at the handshake, `welcome`, commands with replies, errors that never
//! close the connection, token expiry and refresh.

use std::{
    borrow::Cow,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use http::StatusCode;
use serde_json::value::RawValue;
use switchboard_protocol::wire::{
    self, Command, CommandKind, ErrorCode, Id, Member, PresenceCommand, PublishCommand,
};
use tokio::time::Instant;

use crate::{
    Accepted, Connection, Handler, Incoming, Refusal, UpgradeContext, User,
    auth::{self, AuthError},
    broker::{BrokerError, HistoryQuery, PresenceEntry, PublishOptions, StreamPosition},
    config::{PublishPolicy, SubscribePolicy},
    node::Node,
};

/// How long before expiry the server pushes `refresh_required`.
const REFRESH_AHEAD: Duration = Duration::from_secs(30);

/// The v1 protocol handler.
#[derive(Debug, Clone)]
pub struct Protocol {
    node: Node,
}

impl Protocol {
    /// The protocol served by `node`.
    pub fn new(node: Node) -> Self {
        Protocol { node }
    }
}

/// A protocol connection's state.
#[derive(Debug, Default)]
pub struct Session {
    /// Raw JSON of the `from` object of this connection's publications, made at its first
    /// publication (most connections only listen, and idle ones should hold nothing). Boxed,
    /// and the token's expiry read from the user: a small state keeps the connection's task
    /// in tokio's smallest cell.
    from: Option<Box<Bytes>>,
    refresh_sent: bool,
}

/// The `from` object of this connection's publications (raw JSON), made once.
fn from_object(conn: &mut Connection<Session>) -> Bytes {
    if let Some(from) = &conn.state.from {
        return Bytes::clone(from);
    }
    let user = &conn.user;
    let mut from = Vec::with_capacity(64);
    wire::encode_member(
        &mut from,
        &Member::new(&user.id, conn.id(), user.info.as_deref().and_then(raw)),
    );
    let from = Bytes::from(from);
    conn.state.from = Some(Box::new(from.clone()));
    from
}

// Every protocol connection holds one in its task: past 16 bytes the task no longer fits
// tokio's 384-byte cell (see `transport::ws`'s size test) and costs 128 bytes more.
const _: () = assert!(std::mem::size_of::<Session>() <= 16);

/// A refused command: the `error` frame's code and message.
struct Refused {
    code: ErrorCode,
    message: Cow<'static, str>,
}

fn refuse(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Refused {
    Refused {
        code,
        message: message.into(),
    }
}

fn unavailable(conn: &str, e: &BrokerError) -> Refused {
    tracing::warn!(conn, error = %e, "broker call failed");
    refuse(
        ErrorCode::Unavailable,
        "the broker cannot serve this now; nothing was done",
    )
}

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

impl Handler for Protocol {
    type State = Session;

    async fn authenticate(
        &self,
        request: &UpgradeContext<'_>,
    ) -> Result<Accepted<Session>, Refusal> {
        let inner = &self.node.inner;
        let token = auth::find_token(
            request.headers,
            request.uri.query(),
            request.protocols,
            &inner.config.auth,
        );
        let unauthorized =
            |e: AuthError| Refusal::new(StatusCode::UNAUTHORIZED, "unauthorized", e.reason());
        let user = match inner
            .verifier
            .authenticate(token.as_deref())
            .map_err(unauthorized)?
        {
            Some(claims) => User {
                id: claims.sub.as_str().into(),
                info: claims.info.map(|i| Bytes::from(i.get().to_string())),
                expires: claims.exp,
                rooms: claims.rooms,
            },
            None => User::default(),
        };
        Ok(Accepted {
            user,
            state: Session::default(),
        })
    }

    async fn on_connect(&self, conn: &mut Connection<Session>) {
        let user = conn.user.clone();
        self.schedule_expiry(conn);

        // Server-side subscriptions: the `rooms` claim and the personal room.
        let mut rooms: Vec<Arc<str>> = Vec::new();
        let config = &self.node.inner.config;
        if config.personal_rooms && !user.id.is_empty() {
            rooms.push(format!("user:{}", user.id).into());
        }
        for r in &user.rooms {
            if wire::validate_room(r).is_err() || rooms.iter().any(|x| &**x == r) {
                continue;
            }
            // The claim grants what a subscribe could get with it, no more: not a namespace
            // that strict_namespaces refuses, not another user's personal room (4.1).
            let personal = wire::namespace(r) == "user" && config.personal_rooms;
            if self.node.namespace(r).is_none() || personal {
                tracing::warn!(conn = %conn.id(), room = %r, "rooms claim: room refused, not subscribed");
                continue;
            }
            rooms.push(r.as_str().into());
        }
        let mut welcome = wire::Welcome::new(
            conn.id(),
            &*user.id,
            self.node.id(),
            user.expires,
            config.websocket.ping_interval.as_secs(),
        );
        let mut done = Vec::new();
        for room in rooms
            .into_iter()
            .take(config.limits.subscriptions_per_connection)
        {
            match self.node.subscribe(&conn.shared, &room, None).await {
                Ok(s) => {
                    welcome.rooms.insert(
                        room.to_string(),
                        wire::StreamPosition::new(&*s.position.epoch, s.position.offset),
                    );
                    done.push((room, s.position));
                }
                Err(e) => {
                    tracing::warn!(conn = %conn.id(), room = %room, error = %e, "server-side subscription failed")
                }
            }
        }
        let mut buf = Vec::with_capacity(256);
        wire::encode_welcome(&mut buf, &welcome);
        let frame = conn.frame_text(&buf);
        let _ = conn.shared.outbound.push(frame);
        for (room, position) in done {
            conn.shared
                .end_subscribe(&room, Some((&position.epoch, position.offset)), None);
            conn.rooms.insert(room.clone());
            self.after_join(conn, &room).await;
        }
    }

    async fn on_message(&self, conn: &mut Connection<Session>, message: Incoming) {
        let text = match &message {
            Incoming::Text(t) => t.as_str(),
            Incoming::Binary(_) => {
                let e = wire::CommandError::binary_message();
                self.send_error(conn, None, e.code, &e.message);
                return;
            }
        };
        let command = match wire::parse_command(text) {
            Ok(c) => c,
            Err(e) => {
                self.send_error(conn, e.id.as_ref(), e.code, &e.message);
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
                conn.send_json(&buf);
                Ok(())
            }
            CommandKind::Refresh { token } => self.refresh(conn, id.as_ref(), &token),
            CommandKind::Auth { .. } => Err(refuse(
                ErrorCode::BadRequest,
                "already authenticated at the handshake",
            )),
            CommandKind::Rpc(_) => {
                Err(refuse(ErrorCode::Unavailable, "no RPC proxy is configured"))
            }
        };
        if let Err(r) = result {
            self.send_error(conn, id.as_ref(), r.code, &r.message);
        }
    }

    async fn on_close(
        &self,
        conn: &mut Connection<Session>,
        _close: Option<&switchboard_protocol::CloseFrame>,
    ) {
        for room in std::mem::take(&mut conn.rooms) {
            self.leave_room(conn, &room).await;
        }
    }

    async fn on_timer(&self, conn: &mut Connection<Session>) {
        let Some(exp) = conn.user.expires else {
            return;
        };
        let now = now_unix();
        if now >= exp {
            tracing::debug!("token expired without refresh");
            conn.close(4501, "token expired");
        } else if !conn.state.refresh_sent {
            conn.state.refresh_sent = true;
            let mut buf = Vec::with_capacity(48);
            wire::encode_refresh_required(&mut buf, exp);
            conn.send_json(&buf);
            conn.set_timer(Some(Instant::now() + Duration::from_secs(exp - now)));
        }
    }
}

impl Protocol {
    fn send_error(
        &self,
        conn: &mut Connection<Session>,
        id: Option<&Id>,
        code: ErrorCode,
        message: &str,
    ) {
        let mut buf = Vec::with_capacity(64 + message.len());
        wire::encode_error(&mut buf, id, code, message, None);
        conn.send_json(&buf);
    }

    fn reply<T: serde::Serialize>(
        &self,
        conn: &mut Connection<Session>,
        id: Option<&Id>,
        result: &T,
    ) {
        if let Some(id) = id {
            let mut buf = Vec::with_capacity(128);
            if wire::encode_reply(&mut buf, id, result).is_ok() {
                conn.send_json(&buf);
            }
        }
    }

    fn schedule_expiry(&self, conn: &mut Connection<Session>) {
        let timer = conn.user.expires.map(|exp| {
            let left = Duration::from_secs(exp.saturating_sub(now_unix()));
            let at = if conn.state.refresh_sent {
                left
            } else {
                left.saturating_sub(REFRESH_AHEAD)
            };
            Instant::now() + at
        });
        conn.set_timer(timer);
    }

    fn check_room<'n>(&'n self, room: &str) -> Result<&'n crate::config::NamespaceConfig, Refused> {
        valid_room(room)?;
        self.node.namespace(room).ok_or_else(|| {
            refuse(
                ErrorCode::UnknownNamespace,
                format!("namespace '{}' is not configured", wire::namespace(room)),
            )
        })
    }

    async fn subscribe(
        &self,
        conn: &mut Connection<Session>,
        id: Option<&Id>,
        room: &str,
        since: Option<wire::StreamPosition>,
        token: Option<&str>,
    ) -> Result<(), Refused> {
        let ns = self.check_room(room)?;
        if conn.rooms.contains(room) {
            return Err(refuse(
                ErrorCode::AlreadySubscribed,
                format!("already subscribed to '{room}'"),
            ));
        }
        let user = &conn.user;
        let personal = wire::namespace(room) == "user" && self.node.inner.config.personal_rooms;
        if personal {
            if user.id.is_empty() || room["user:".len()..] != *user.id {
                return Err(refuse(
                    ErrorCode::Forbidden,
                    "only the user's own connections may subscribe to a personal room",
                ));
            }
        } else {
            match ns.subscribe {
                SubscribePolicy::Anyone => {}
                SubscribePolicy::Authenticated if user.id.is_empty() => {
                    return Err(refuse(
                        ErrorCode::Forbidden,
                        "subscribing needs an authenticated user",
                    ));
                }
                SubscribePolicy::Authenticated => {}
                SubscribePolicy::Token => {
                    let token = token.ok_or_else(|| {
                        refuse(
                            ErrorCode::Forbidden,
                            "this namespace needs a subscription token in 'token'",
                        )
                    })?;
                    self.node
                        .inner
                        .verifier
                        .verify_subscription_token(token, &user.id, room)
                        .map_err(|e| {
                            refuse(
                                ErrorCode::Forbidden,
                                format!("subscription token refused: {}", e.reason()),
                            )
                        })?;
                }
                SubscribePolicy::Claim if !user.rooms.iter().any(|r| r == room) => {
                    return Err(refuse(
                        ErrorCode::Forbidden,
                        "this namespace allows only the rooms of the token's 'rooms' claim",
                    ));
                }
                SubscribePolicy::Claim => {}
            }
        }
        let limits = &self.node.inner.config.limits;
        if conn.rooms.len() >= limits.subscriptions_per_connection {
            return Err(refuse(
                ErrorCode::LimitExceeded,
                format!(
                    "at most {} subscriptions per connection",
                    limits.subscriptions_per_connection
                ),
            ));
        }
        if let Some(max) = ns.max_subscribers {
            let page = self
                .node
                .inner
                .broker
                .presence_list(room, None, 0)
                .await
                .map_err(|e| unavailable(conn.id(), &e))?;
            let local = self.node.hub().members(room).map(|m| m.len()).unwrap_or(0);
            if page.connections.max(local) >= max {
                return Err(refuse(
                    ErrorCode::LimitExceeded,
                    format!("room '{room}' has its maximum of {max} subscribers"),
                ));
            }
        }
        let room: Arc<str> = room.into();
        let since = since.map(|s| StreamPosition::new(s.epoch, s.offset));
        let sub = self
            .node
            .subscribe(&conn.shared, &room, since)
            .await
            .map_err(|e| unavailable(conn.id(), &e))?;
        let reply = id.map(|id| {
            let publications = wire_publications(&sub.publications);
            let result = wire::SubscribeResult {
                room: Cow::Borrowed(&room),
                epoch: Cow::Borrowed(&sub.position.epoch),
                offset: sub.position.offset,
                recovered: sub.recovered,
                publications,
            };
            let mut buf = Vec::with_capacity(256);
            let _ = wire::encode_reply(&mut buf, id, &result);
            buf
        });
        let frame = reply.map(|buf| conn.frame_text(&buf));
        conn.shared.end_subscribe(
            &room,
            Some((&sub.position.epoch, sub.position.offset)),
            frame,
        );
        conn.rooms.insert(room.clone());
        self.after_join(conn, &room).await;
        Ok(())
    }

    /// Presence and the join push after a subscription.
    async fn after_join(&self, conn: &Connection<Session>, room: &Arc<str>) {
        let Some(ns) = self.node.namespace(room) else {
            return;
        };
        let entry = PresenceEntry {
            connection: conn.shared.id.clone(),
            user: conn.user.id.clone(),
            info: conn.user.info.clone(),
        };
        let broker = &self.node.inner.broker;
        if ns.presence
            && let Err(e) = broker.presence_add(room, entry.clone()).await
        {
            tracing::warn!(conn = %conn.id(), room = %room, error = %e, "presence add failed");
        }
        if ns.join_leave
            && let Err(e) = broker.publish_join(room, entry).await
        {
            tracing::warn!(conn = %conn.id(), room = %room, error = %e, "join push failed");
        }
    }

    /// Presence, hub membership, then the leave push: whoever sees the `leave` no longer
    /// finds the connection in `presence` nor counted against `max_subscribers`.
    async fn leave_room(&self, conn: &Connection<Session>, room: &str) {
        let ns = self.node.namespace(room);
        let broker = &self.node.inner.broker;
        if ns.is_some_and(|n| n.presence)
            && let Err(e) = broker.presence_remove(room, &conn.shared.id).await
        {
            tracing::warn!(conn = %conn.id(), room, error = %e, "presence remove failed");
        }
        conn.shared.forget(room);
        self.node.leave(room, &conn.shared).await;
        if ns.is_some_and(|n| n.join_leave) {
            let entry = PresenceEntry {
                connection: conn.shared.id.clone(),
                user: conn.user.id.clone(),
                info: conn.user.info.clone(),
            };
            if let Err(e) = broker.publish_leave(room, entry).await {
                tracing::warn!(conn = %conn.id(), room, error = %e, "leave push failed");
            }
        }
    }

    async fn unsubscribe(
        &self,
        conn: &mut Connection<Session>,
        id: Option<&Id>,
        room: &str,
    ) -> Result<(), Refused> {
        valid_room(room)?;
        let Some(room) = conn.rooms.take(room) else {
            return Err(refuse(
                ErrorCode::NotSubscribed,
                format!("not subscribed to '{room}'"),
            ));
        };
        self.leave_room(conn, &room).await;
        self.reply(conn, id, &wire::EmptyResult {});
        Ok(())
    }

    async fn publish(
        &self,
        conn: &mut Connection<Session>,
        id: Option<&Id>,
        c: PublishCommand<'_>,
    ) -> Result<(), Refused> {
        let room = &*c.room;
        let ns = self.check_room(room)?;
        if wire::namespace(room) == "user" && self.node.inner.config.personal_rooms {
            return Err(refuse(
                ErrorCode::Forbidden,
                "publishing to a personal room needs the server API",
            ));
        }
        match ns.publish {
            PublishPolicy::Subscribers if !conn.rooms.contains(room) => {
                return Err(refuse(
                    ErrorCode::NotSubscribed,
                    format!("publishing to '{room}' needs a subscription to it"),
                ));
            }
            PublishPolicy::Authenticated if conn.user.id.is_empty() => {
                return Err(refuse(
                    ErrorCode::Forbidden,
                    "publishing needs an authenticated user",
                ));
            }
            PublishPolicy::None => {
                return Err(refuse(
                    ErrorCode::Forbidden,
                    format!(
                        "publishing to '{}:*' needs the server API",
                        wire::namespace(room)
                    ),
                ));
            }
            _ => {}
        }
        let opts = PublishOptions {
            ephemeral: c.ephemeral,
            idempotency_key: c.idempotency_key.map(|k| k.into_owned()),
            history_size: ns.history_size,
            history_ttl: ns.history_ttl,
            exclude: (!c.echo).then(|| conn.shared.id.clone()),
        };
        let data = Bytes::copy_from_slice(c.data.get().as_bytes());
        let result = self
            .node
            .inner
            .broker
            .publish(room, data, Some(from_object(conn)), opts)
            .await
            .map_err(|e| unavailable(conn.id(), &e))?;
        let position = result.position;
        self.reply(
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

    async fn presence(
        &self,
        conn: &mut Connection<Session>,
        id: Option<&Id>,
        c: PresenceCommand<'_>,
    ) -> Result<(), Refused> {
        let room = &*c.room;
        let ns = self.check_room(room)?;
        if !conn.rooms.contains(room) {
            return Err(refuse(
                ErrorCode::NotSubscribed,
                format!("presence of '{room}' needs a subscription to it"),
            ));
        }
        if !ns.presence {
            return Err(refuse(
                ErrorCode::Forbidden,
                format!("presence is off for namespace '{}'", wire::namespace(room)),
            ));
        }
        let limit = c.limit.map(|l| l as usize).unwrap_or(100).min(1000);
        let page = self
            .node
            .inner
            .broker
            .presence_list(room, c.cursor.as_deref(), limit)
            .await
            .map_err(|e| match e {
                BrokerError::InvalidCursor => refuse(
                    ErrorCode::BadRequest,
                    "field 'cursor' is not a cursor this server gave",
                ),
                e => unavailable(conn.id(), &e),
            })?;
        let members = page
            .members
            .iter()
            .map(|m| Member::new(&m.user, &m.connection, m.info.as_deref().and_then(raw)))
            .collect();
        self.reply(
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
        let ns = self.check_room(room)?;
        if !conn.rooms.contains(room) {
            return Err(refuse(
                ErrorCode::NotSubscribed,
                format!("history of '{room}' needs a subscription to it"),
            ));
        }
        let limit = limit
            .map(|l| l as usize)
            .unwrap_or(ns.history_size)
            .min(ns.history_size);
        let query = HistoryQuery {
            since: since.map(|s| StreamPosition::new(s.epoch, s.offset)),
            limit,
            reverse,
        };
        let h = self
            .node
            .inner
            .broker
            .history(room, query)
            .await
            .map_err(|e| match e {
                BrokerError::EpochMismatch { since, current } => refuse(
                    ErrorCode::BadRequest,
                    format!(
                        "field 'since.epoch': '{since}' is not the room's epoch '{}'",
                        current.epoch
                    ),
                ),
                e => unavailable(conn.id(), &e),
            })?;
        let publications = wire_publications(&h.publications);
        self.reply(
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
        let claims = self.node.inner.verifier.verify(token).map_err(|e| {
            refuse(
                ErrorCode::Unauthorized,
                format!("token refused: {}", e.reason()),
            )
        })?;
        if claims.sub != *conn.user.id {
            return Err(refuse(
                ErrorCode::Forbidden,
                "the new token must carry the same 'sub'",
            ));
        }
        conn.state.refresh_sent = false;
        Arc::make_mut(&mut conn.user).expires = claims.exp;
        self.schedule_expiry(conn);
        self.reply(
            conn,
            id,
            &wire::RefreshResult {
                expires: claims.exp,
            },
        );
        Ok(())
    }
}

/// `bad_room` unless `room` is a valid room name.
fn valid_room(room: &str) -> Result<(), Refused> {
    wire::validate_room(room).map_err(|why| {
        refuse(
            ErrorCode::BadRoom,
            format!("room '{}': {why}", truncate(room)),
        )
    })
}

fn truncate(s: &str) -> &str {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
