//! Server-Sent Events streams (docs/protocol.md section 8): `GET /sse?room=…` on the same
//! port, a receive-only transport over the same [`ConnShared`] as WebSocket.
//!
//! Everything that decides whether a stream opens (token, permissions, cursor) happens before
//! the response starts, so refusals are plain JSON statuses like the WebSocket handshake's
//! (7.3). A stream is then a connection with [`WireForm::Sse`]: fan-out queues the SSE form of
//! each publication (built once per publication and shared), the sweeper of the SSE registry
//! queues `: ping` comments and trims idle queues, and the server API reaches it through the
//! hub's user index and control inbox. The only per-stream bytes are the `id:` lines: the
//! writer reads the position at the front of each queued publication event, moves the stream's
//! cursor and writes the event's shared bytes with its own `id:` line, a batch of events into
//! one buffer (hyper writes each body frame as a chunk and flushes after a few).
//!
//! Metrics hooks for the integrator: a stream opens in [`open`] (after `Registry::insert`) and
//! closes in `Guard`'s `Drop`; bytes leave in `Stream::poll_next` (the `written` count).

use std::{
    collections::VecDeque,
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll, ready},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{Router, body::Body, extract::State, routing::get};
use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Frame;
use switchboard_protocol::{
    WireForm,
    codec::DecoderConfig,
    sse,
    wire::{self, ErrorCode},
};
use tokio::time::Instant;

use super::{
    direct,
    outbound::Overflowed,
    registry::{Registry, run_sweeper},
};
use crate::{
    access::Action,
    auth,
    broker::StreamPosition,
    conn::{ConnShared, Control, User},
    handler::Refusal,
    limits::{self, Admission, Admitted},
    node::{Member, Node, Subscribed},
    origin::OriginPolicy,
    proxy::ProxyKind,
    route::{PeerAddr, ShutdownToken, refusal_response},
};

/// What every stream of a node shares.
#[derive(Debug)]
struct Shared {
    node: Node,
    /// The per-user and per-IP counts the WebSocket routes use too (`None`: not limited).
    admission: Option<Arc<dyn Admission>>,
    registry: Arc<Registry>,
    /// `websocket.allowed_origins` (any origin in development mode), as for upgrades.
    origins: OriginPolicy,
    /// The sweeper starts with the first stream (it needs the server's shutdown token); at
    /// shutdown it asks every stream to end (streams do not wait on the token themselves).
    sweeper: OnceLock<()>,
}

/// The SSE endpoint of `node` at `sse.path`, to merge into the server's HTTP routes.
pub(crate) fn router(node: Node, admission: Option<Arc<dyn Admission>>) -> Router {
    let c = &node.config().sse;
    let path = c.path.clone();
    // A stream never sends anything to us: what the sweeper counts as "seen" is bytes the
    // stream handed to the socket, so a stream whose peer stopped reading ends after four
    // ping intervals without progress.
    let registry = Arc::new(Registry::new(
        DecoderConfig::default(),
        c.ping_interval,
        c.ping_interval.saturating_mul(4),
    ));
    let origins = if node.config().dev == Some(true) {
        OriginPolicy::Any
    } else {
        OriginPolicy::from_list(&node.config().websocket.allowed_origins)
    };
    let shared = Arc::new(Shared {
        node,
        origins,
        admission,
        registry,
        sweeper: OnceLock::new(),
    });
    Router::new().route(&path, get(open).with_state(shared))
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The HTTP status of a refused room.
fn refused(e: &crate::Refused) -> Response<Body> {
    let status = match e.code {
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_REQUEST,
    };
    refusal_response(Refusal::new(status, e.code.as_str(), &e.message))
}

fn bad_request(reason: &str) -> Response<Body> {
    refusal_response(Refusal::new(StatusCode::BAD_REQUEST, "bad_request", reason))
}

/// Opens a stream, or refuses it before it starts.
async fn open(State(shared): State<Arc<Shared>>, req: Request<Body>) -> Response<Body> {
    let direct = req.extensions().get::<direct::Direct>().is_some();
    let shutdown = req
        .extensions()
        .get::<ShutdownToken>()
        .map(|t| t.0.clone())
        .unwrap_or_default();
    if shutdown.is_cancelled() {
        return refusal_response(Refusal::unavailable(
            "shutting_down",
            Duration::from_secs(1),
        ));
    }
    shared.sweeper.get_or_init(|| {
        tokio::spawn(run_sweeper(
            Arc::downgrade(&shared.registry),
            shutdown.clone(),
        ));
    });
    let node = &shared.node;
    let config = node.config();
    let access = node.access();

    // The limits of a WebSocket upgrade, in the same order (docs/protocol.md 7.3).
    let max = config.limits.max_connections;
    let limited = |r: Refusal| {
        node.metrics()
            .connection_refused(crate::metrics::Transport::Sse, r.status.as_u16(), false);
        refusal_response(r)
    };
    if let Err(r) = shared.origins.check(req.headers()) {
        return limited(r);
    }
    if max > 0 && node.hub().connection_count() >= max {
        return limited(Refusal::unavailable("capacity", Duration::from_secs(1)));
    }
    if node.memory_budget().is_some_and(|m| m.over()) {
        return limited(limits::MemoryBudget::refusal());
    }
    let peer = req.extensions().get::<PeerAddr>().map(|p| p.0);
    let client_ip = peer.map(|p| limits::client_ip(p, req.headers(), &config.trusted_proxies));
    let mut admitted = match (&shared.admission, client_ip) {
        (Some(admission), Some(ip)) => match Admitted::open_ip(admission, ip).await {
            Ok(a) => Some(a),
            Err(r) => return limited(r.refusal()),
        },
        _ => None,
    };
    // 2.1: header, query parameter, cookie; never a subprotocol.
    let token = auth::find_token(req.headers(), req.uri().query(), &[], &config.auth);
    let id = crate::ids::connection_id();
    // No token and a connect proxy: the application backend says who connects, as for a
    // WebSocket (docs/proxies.md).
    let has_token = token.as_deref().is_some_and(|t| !t.trim().is_empty());
    let proxied = if !has_token && node.proxies().configured(ProxyKind::Connect) {
        match node
            .proxies()
            .connect(
                &id,
                crate::metrics::Transport::Sse,
                client_ip,
                req.headers(),
            )
            .await
        {
            Ok(user) => Some(user),
            Err(r) => return refusal_response(r),
        }
    } else {
        None
    };
    let verified = match proxied {
        Some(user) => Ok(Some(user)),
        None => access
            .verifier()
            .authenticate_fresh(token.as_deref())
            .await
            .map(|c| {
                c.map(|claims| User {
                    id: claims.sub.as_str().into(),
                    info: claims.info.map(|i| Bytes::from(i.get().to_string())),
                    expires: claims.exp,
                    rooms: claims.rooms,
                })
            }),
    };
    let user = match verified {
        Ok(Some(user)) => user,
        Ok(None) => User::default(),
        Err(e) => {
            return refusal_response(Refusal::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                e.reason(),
            ));
        }
    };
    let user = User::shared(user);
    if let Some(admitted) = &mut admitted
        && let Err(r) = admitted.open_user(&user.id).await
    {
        return limited(r.refusal());
    }

    let (rooms, since) = match query(req.uri().query()) {
        Ok(q) => q,
        Err(r) => return r,
    };
    if rooms.is_empty() {
        return bad_request("at least one 'room' query parameter is required");
    }
    let max = config.limits.subscriptions_per_connection;
    if rooms.len() > max {
        return refusal_response(Refusal::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::LimitExceeded.as_str(),
            &format!("at most {max} rooms per stream"),
        ));
    }
    let kept = node.proxies().command_headers(req.headers());
    for room in &rooms {
        // A stream carries no subscription tokens: the `rooms` claim grants what a
        // subscribe with one could get (protocol 8), the namespace's policy decides the rest.
        let action = if user.rooms.iter().any(|r| r == room) {
            Action::ClaimSubscribe
        } else {
            Action::Subscribe { token: None }
        };
        let ns = match access.check(&user, room, action).await {
            Ok(ns) => ns,
            Err(e) => return refused(&e),
        };
        // Rooms the connect answer (or the token) granted are not asked about again, as on
        // a WebSocket.
        if action != Action::ClaimSubscribe
            && let Err(e) = node
                .proxies()
                .check_subscribe(ns, &user, &id, room, kept.as_deref())
                .await
        {
            return refused(&e);
        }
    }
    // The header wins over `?since=`: it is what the browser sends when it reconnects.
    let cursor = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or(since)
        .filter(|c| !c.trim().is_empty());
    let cursor = match cursor.map(|c| sse::decode_cursor(&c, rooms.len())) {
        None => Vec::new(),
        Some(Ok(c)) => c,
        Some(Err(e)) => return bad_request(&format!("Last-Event-ID / since: {e}")),
    };

    let conn = Arc::new(ConnShared::with_wire(
        id,
        config.websocket.outbound_queue.as_usize(),
        WireForm::Sse,
    ));
    let closing = shared.registry.insert(&conn);
    node.hub().add_connection(&user.id, &conn);
    let mut guard = Guard {
        node: node.clone(),
        registry: shared.registry.clone(),
        conn: conn.clone(),
        user: user.clone(),
        // Exactly the stream's rooms: a pushed-to `Vec` would start at four.
        rooms: Vec::with_capacity(rooms.len()),
        _admitted: admitted,
    };
    node.metrics()
        .connection_opened(crate::metrics::Transport::Sse);
    if closing {
        return refusal_response(Refusal::unavailable(
            "shutting_down",
            Duration::from_secs(1),
        ));
    }

    // Every room is begun (its live events held back) before anything is queued, so the
    // welcome goes first and no event of any room is lost or doubled around the reads.
    let member = Member {
        conn: &conn,
        user: &user,
    };
    let mut begun: Vec<(Arc<str>, Option<StreamPosition>, Subscribed)> = Vec::new();
    let mut failed = None;
    for room in rooms {
        let since = cursor
            .iter()
            .find(|(r, _, _)| *r == room)
            .map(|(_, e, o)| StreamPosition::new(e.as_str(), *o));
        let room: Arc<str> = room.into();
        match node.begin_subscribe(member, &room, since.clone()).await {
            Ok(read) => {
                // The guard leaves it if the request goes away from here on.
                guard.rooms.push(room.clone());
                begun.push((room, since, read));
            }
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    if let Some(e) = failed {
        for (room, _, read) in begun {
            node.finish_subscribe(member, &room, &read, None).await;
        }
        return refused(&e);
    }

    // The stream's position: where each room resumes from (what it recovered advances it).
    let positions: Vec<(Arc<str>, Arc<str>, u64)> = begun
        .iter()
        .map(|(room, since, read)| match (since, read.recovered) {
            (Some(s), Some(true)) => (room.clone(), s.epoch.clone(), s.offset),
            _ => (
                room.clone(),
                read.position.epoch.clone(),
                read.position.offset,
            ),
        })
        .collect();
    let mut head = Vec::with_capacity(256);
    sse::encode_retry(&mut head, config.sse.retry_ms);
    let welcome = serde_json::json!({
        "connection": conn.id(),
        "user": &*user.id,
        "expires": user.expires,
    });
    sse::encode_event(&mut head, "welcome", None, welcome.to_string().as_bytes());
    let _ = conn.outbound.push(Bytes::from(head));
    let mut cursor_json = Vec::new();
    for (room, _, read) in begun {
        match read.recovered {
            Some(true) => {
                let mut buf = Vec::new();
                for p in &read.publications {
                    buf.clear();
                    wire::encode_message_push_raw(
                        &mut buf,
                        &p.room,
                        &p.epoch,
                        p.offset,
                        &p.data,
                        p.from.as_deref(),
                    );
                    let mut event = Vec::with_capacity(buf.len() + 96);
                    sse::encode_publication_event(&mut event, &buf);
                    let _ = conn.outbound.push(Bytes::from(event));
                }
            }
            Some(false) => {
                let mut id = Vec::new();
                sse::encode_cursor(&mut id, &mut cursor_json, cursor_of(&positions));
                let data = serde_json::json!({
                    "room": &*room,
                    "epoch": &*read.position.epoch,
                    "offset": read.position.offset,
                });
                let mut event = Vec::new();
                sse::encode_event(
                    &mut event,
                    "reset",
                    std::str::from_utf8(&id).ok(),
                    data.to_string().as_bytes(),
                );
                let _ = conn.outbound.push(Bytes::from(event));
            }
            None => {}
        }
        node.finish_subscribe(member, &room, &read, None).await;
    }

    // The token's expiry is the connection's deadline, as for a WebSocket: the sweeper wakes
    // the stream to arm a timer when it comes near, and until then it costs nothing.
    if let Some(exp) = user.expires {
        conn.set_deadline(Some(
            Instant::now() + Duration::from_secs(exp.saturating_sub(now_unix())),
        ));
    }
    let body = SseBody {
        stream: Some(Stream {
            guard,
            positions,
            last: None,
            timer: None,
        }),
        pending: VecDeque::new(),
        controls: None,
    };
    // Written off hyper, the body goes to the writer in batches (`transport::direct`).
    let mut resp = if direct {
        let mut resp = Response::new(Body::empty());
        resp.extensions_mut().insert(direct::BatchBody::new(body));
        resp
    } else {
        Response::new(Body::new(body))
    };
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

/// The `room` parameters (deduplicated, in order) and `since` of a query string.
#[allow(clippy::result_large_err)]
fn query(query: Option<&str>) -> Result<(Vec<String>, Option<String>), Response<Body>> {
    let mut rooms: Vec<String> = Vec::new();
    let mut since = None;
    for pair in query.unwrap_or("").split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match &*auth::percent_decode(key) {
            "room" => {
                let room = auth::percent_decode(value).into_owned();
                if room.is_empty() {
                    return Err(bad_request("a 'room' query parameter is empty"));
                }
                if !rooms.contains(&room) {
                    // Bounded: the caller refuses more than the subscription limit, and
                    // this stops collecting well before a huge query costs much.
                    if rooms.len() > 1024 {
                        return Err(bad_request("too many 'room' query parameters"));
                    }
                    rooms.push(room);
                }
            }
            "since" => since = Some(auth::percent_decode(value).into_owned()),
            _ => {}
        }
    }
    Ok((rooms, since))
}

fn cursor_of(positions: &[(Arc<str>, Arc<str>, u64)]) -> impl Iterator<Item = (&str, &str, u64)> {
    positions.iter().map(|(r, e, o)| (&**r, &**e, *o))
}

/// Leaves everything a stream joined when it ends, however it ends (the client went away and
/// hyper dropped the body, the stream ended, or the request was dropped while opening).
struct Guard {
    node: Node,
    registry: Arc<Registry>,
    conn: Arc<ConnShared>,
    user: Arc<User>,
    rooms: Vec<Arc<str>>,
    /// The stream's place in the per-user and per-IP counts, given back with the guard.
    _admitted: Option<Admitted>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        // A stream has no close code: its end counts as `abnormal` (the TCP stream ended).
        self.node
            .metrics()
            .connection_closed(crate::metrics::Transport::Sse, None);
        self.conn.outbound.close();
        self.registry.remove(&self.conn);
        self.node.hub().remove_connection(&self.user.id, &self.conn);
        let rooms = std::mem::take(&mut self.rooms);
        if rooms.is_empty() {
            return;
        }
        // Leaving a room is async (presence, the leave push): it runs on a task of its own.
        let (node, conn, user) = (self.node.clone(), self.conn.clone(), self.user.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let member = Member {
                    conn: &conn,
                    user: &user,
                };
                for room in rooms {
                    node.unsubscribe(member, &room).await;
                }
            });
        }
    }
}

/// A stream after it started: its rooms' positions, and when it ends.
struct Stream {
    guard: Guard,
    positions: Vec<(Arc<str>, Arc<str>, u64)>,
    /// A stream of one room does not read every event it writes: it keeps the last
    /// publication event of a batch (a reference to shared bytes) and moves `positions` to it
    /// only when they are needed (a server-side subscription makes it a stream of two).
    last: Option<Bytes>,
    /// Armed when the token's expiry (the connection's deadline) is less than two ping
    /// intervals away; boxed, so that the many streams whose expiry is far hold one word.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// What a stream's poll found to do.
enum Step {
    /// Bytes to write.
    Write(VecDeque<Bytes>),
    /// The control inbox has requests: [`Stream::run_controls`].
    Controls,
    /// The stream ends.
    End,
}

impl Stream {
    /// What the stream does next: write the bytes queued for it, carry out control requests
    /// or end (a close was asked for, the queue overflowed, the token expired). `Pending`
    /// until one of these; the queue, a close or control request and the sweeper (a deadline
    /// came near, shutdown) wake the task.
    ///
    /// A poll function rather than an `async fn`: the future of an `async fn` would be a
    /// second allocation per stream, sized for its largest await (664 bytes), and one more
    /// allocation for every batch the stream writes.
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Step> {
        loop {
            let conn = &*self.guard.conn;
            if let Some(d) = conn.take_close_request() {
                tracing::debug!(conn = %conn.id(), %d, "sse stream ends as asked");
                return Poll::Ready(Step::End);
            }
            if conn.has_control() {
                return Poll::Ready(Step::Controls);
            }
            let probe = self.guard.node.hub().take_write_probe(conn);
            let mut frames = VecDeque::new();
            if conn.outbound.take(&mut frames) == Err(Overflowed) {
                tracing::info!(conn = %conn.id(), "slow consumer, ending the sse stream");
                self.guard
                    .node
                    .metrics()
                    .slow_consumer_closed(crate::metrics::Transport::Sse);
                return Poll::Ready(Step::End);
            }
            if !frames.is_empty() {
                let written: usize = frames.iter().map(Bytes::len).sum();
                let events = frames.len() as u64;
                let out = self.with_ids(frames);
                // Counted as handed to the writer, which writes it at once (the `id:` lines
                // added to the events are not counted).
                let conn = &*self.guard.conn;
                let metrics = self.guard.node.metrics();
                metrics.sent(crate::metrics::Transport::Sse, events, written as u64);
                if let Some(at) = probe {
                    metrics.observe_publish_to_write(at.elapsed());
                }
                // Handed to the writer, which only asks for more once it wrote what it has.
                conn.outbound.put_back(VecDeque::new(), written, false);
                conn.mark_seen();
                return Poll::Ready(Step::Write(out));
            }
            if conn.take_deadline_change() {
                self.arm_timer();
            }
            if let Some(timer) = &mut self.timer
                && timer.as_mut().poll(cx).is_ready()
            {
                let conn = &*self.guard.conn;
                tracing::debug!(conn = %conn.id(), "token expired, ending the sse stream");
                return Poll::Ready(Step::End);
            }
            let conn = &*self.guard.conn;
            if conn.outbound.poll_ready(cx).is_pending()
                && !conn.has_close_request()
                && !conn.has_control()
            {
                return Poll::Pending;
            }
        }
    }

    /// Arms the expiry timer when the connection's deadline is less than two ping intervals
    /// away, and otherwise holds none (the sweeper wakes the stream when it comes near).
    fn arm_timer(&mut self) {
        crate::handler::arm_timer(
            &mut self.timer,
            self.guard.conn.deadline(),
            Instant::now() + self.guard.registry.timer_horizon(),
        );
    }

    /// [`Stream::controls`] on a stream the future owns (it runs boxed, beside the body);
    /// `true` when one ends the stream.
    async fn run_controls(mut self) -> (Stream, bool) {
        let end = self.controls().await;
        (self, end)
    }

    /// Carries out the requests of the control inbox; `true` when one ends the stream.
    async fn controls(&mut self) -> bool {
        let g = &mut self.guard;
        for control in g.node.hub().take_controls(&g.conn) {
            let member = Member {
                conn: &g.conn,
                user: &g.user,
            };
            match control {
                Control::Close(_) => return true,
                Control::Subscribe(room) => {
                    let max = g.node.config().limits.subscriptions_per_connection;
                    if g.rooms.contains(&room) || g.rooms.len() >= max {
                        continue;
                    }
                    match g.node.subscribe(member, &room, None, |_| None).await {
                        Ok(read) => {
                            settle(&mut self.positions, &mut self.last);
                            self.positions.push((
                                room.clone(),
                                read.position.epoch.clone(),
                                read.position.offset,
                            ));
                            g.rooms.push(room);
                        }
                        Err(e) => {
                            tracing::warn!(conn = %g.conn.id(), room = %room, reason = %e, "server-side subscription failed")
                        }
                    }
                }
                Control::Unsubscribe(room) => {
                    if let Some(i) = g.rooms.iter().position(|r| *r == room) {
                        let room = g.rooms.swap_remove(i);
                        g.node.unsubscribe(member, &room).await;
                        settle(&mut self.positions, &mut self.last);
                        self.positions.retain(|(r, _, _)| *r != room);
                    }
                }
            }
        }
        false
    }

    /// The queued events as the stream writes them, its position moved past each publication.
    /// A publication's shared event carries the cursor of its room alone
    /// ([`sse::encode_publication_event`]): a stream of one room writes the shared bytes as
    /// they are, without a copy, like a WebSocket connection. A stream of several rooms gets
    /// its events in one buffer, each publication's `id:` line replaced with the whole
    /// stream's cursor.
    fn with_ids(&mut self, frames: VecDeque<Bytes>) -> VecDeque<Bytes> {
        if self.positions.len() <= 1 {
            if let Some(last) = frames
                .iter()
                .rev()
                .find(|f| sse::publication_position_raw(f).is_some())
            {
                self.last = Some(last.clone());
            }
            return frames;
        }
        settle(&mut self.positions, &mut self.last);
        let len: usize = frames.iter().map(Bytes::len).sum();
        let mut out = BytesMut::with_capacity(len + frames.len() * 96);
        let mut cursor = Vec::new();
        let mut scratch = Vec::new();
        for frame in frames {
            if !advance(&mut self.positions, &frame) {
                out.extend_from_slice(&frame);
                continue;
            }
            out.extend_from_slice(sse::without_id(&frame));
            cursor.clear();
            sse::encode_cursor(&mut cursor, &mut scratch, cursor_of(&self.positions));
            out.extend_from_slice(b"id: ");
            out.extend_from_slice(&cursor);
            out.extend_from_slice(b"\n\n");
        }
        VecDeque::from([out.freeze()])
    }
}

/// Moves `positions` to the last publication a stream of one room wrote (`Stream::last`).
fn settle(positions: &mut [(Arc<str>, Arc<str>, u64)], last: &mut Option<Bytes>) {
    if let Some(last) = last.take() {
        advance(positions, &last);
    }
}

/// Moves the position of the room of `event` in `positions` to it; `false` when the event is
/// not a publication of one of those rooms.
fn advance(positions: &mut [(Arc<str>, Arc<str>, u64)], event: &[u8]) -> bool {
    let Some((room, epoch, offset)) = sse::publication_position_raw(event) else {
        return false;
    };
    let Some(p) = positions.iter_mut().find(|(r, _, _)| room.matches(r)) else {
        return false;
    };
    if !epoch.matches(&p.1)
        && let Some(epoch) = epoch.unescape()
    {
        p.1 = epoch.into();
    }
    p.2 = offset;
    true
}

/// The response body: the stream's bytes as the writer (`transport::direct`, or hyper) asks
/// for them. The writer asks for more only after writing what it has, so a peer that does not
/// read leaves events in the outbound queue, which ends the stream when it passes its bound.
///
/// The stream lives in the body itself, polled in place: an idle stream is this one
/// allocation (224 bytes; test `an_idle_stream_is_one_small_allocation`) besides its task,
/// its `ConnShared` and its memberships.
struct SseBody {
    /// `None` once the stream ended, or while its control requests run.
    stream: Option<Stream>,
    pending: VecDeque<Bytes>,
    /// The stream, taken out of `stream` while its control requests run (they await the
    /// node: subscribing reads history).
    controls: Option<Controls>,
}

/// A stream carrying out its control requests.
type Controls = Pin<Box<dyn Future<Output = (Stream, bool)> + Send>>;

impl SseBody {
    /// The stream's next frames, or `None` once it ended.
    fn poll_more(&mut self, cx: &mut Context<'_>) -> Poll<Option<VecDeque<Bytes>>> {
        loop {
            if let Some(controls) = &mut self.controls {
                let Poll::Ready((stream, end)) = controls.as_mut().poll(cx) else {
                    return Poll::Pending;
                };
                self.controls = None;
                if end {
                    return Poll::Ready(None);
                }
                self.stream = Some(stream);
            }
            let Some(stream) = &mut self.stream else {
                return Poll::Ready(None);
            };
            match stream.poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Step::Write(out)) => return Poll::Ready(Some(out)),
                Poll::Ready(Step::Controls) => {
                    if let Some(stream) = self.stream.take() {
                        self.controls = Some(Box::pin(stream.run_controls()));
                    }
                }
                Poll::Ready(Step::End) => {
                    // The guard leaves the stream's rooms now, not when the writer is done.
                    self.stream = None;
                    return Poll::Ready(None);
                }
            }
        }
    }

    /// Gives a spent buffer back to the queue for the next burst (the sweeper frees it once
    /// the stream is idle): an idle stream keeps no buffer.
    fn give_back(&mut self, spent: VecDeque<Bytes>) {
        if let Some(stream) = &self.stream {
            stream.guard.conn.outbound.recycle(spent);
        }
    }
}

/// Off hyper (`transport::direct`): the queue's frames a batch at a time.
impl direct::Batches for SseBody {
    fn poll_batch(&mut self, cx: &mut Context<'_>) -> Poll<Option<VecDeque<Bytes>>> {
        self.poll_more(cx)
    }

    fn recycle(&mut self, spent: VecDeque<Bytes>) {
        self.give_back(spent);
    }
}

/// Through hyper (a server built without the direct path): a frame at a time.
impl hyper::body::Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        loop {
            if let Some(bytes) = this.pending.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(bytes))));
            }
            let spent = std::mem::take(&mut this.pending);
            this.give_back(spent);
            match ready!(this.poll_more(cx)) {
                Some(out) => this.pending = out,
                None => return Poll::Ready(None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An idle stream's state is its body, one allocation (the writer's task holds the
    /// pointer): what it holds is memory per idle stream (docs/benchmarks.md). 224 bytes is
    /// a jemalloc size class.
    #[test]
    fn an_idle_stream_is_one_small_allocation() {
        let size = std::mem::size_of::<SseBody>();
        assert!(size <= 224, "an SSE body is {size} bytes");
    }
}
