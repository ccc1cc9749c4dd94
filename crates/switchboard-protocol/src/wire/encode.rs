//! Server messages: encoders that append one JSON object to a buffer, and the result types of
//! replies.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::command::CommandError;
use super::server::Welcome;
use super::types::{ErrorCode, Id, Member, put_id};
use super::writer::{IoWriter, WireBuf, put, put_opt_u64, put_raw, put_str, put_u64};

/// Writes `{"type":"reply","id":…,"result":…}`. `result` is any `Serialize` value: one of the
/// result structs of this module, or a `&RawValue` spliced as is.
///
/// Fails only when `result`'s `Serialize` does (never for this module's types or a
/// `RawValue`); then nothing is left in `out`.
pub fn encode_reply<B, T>(out: &mut B, id: &Id, result: &T) -> Result<(), serde_json::Error>
where
    B: WireBuf + ?Sized,
    T: Serialize + ?Sized,
{
    let start = out.written_len();
    put(out, b"{\"type\":\"reply\",\"id\":");
    put_id(out, id);
    put(out, b",\"result\":");
    if let Err(e) = serde_json::to_writer(IoWriter(&mut *out), result) {
        out.truncate_bytes(start);
        return Err(e);
    }
    put(out, b"}");
    Ok(())
}

/// Writes `{"type":"error","id":…|null,"code":…,"message":…}`, with `"retry_after_ms"` when
/// given (for `rate_limited`).
pub fn encode_error<B: WireBuf + ?Sized>(
    out: &mut B,
    id: Option<&Id>,
    code: ErrorCode,
    message: &str,
    retry_after_ms: Option<u64>,
) {
    put(out, b"{\"type\":\"error\",\"id\":");
    match id {
        Some(id) => put_id(out, id),
        None => put(out, b"null"),
    }
    put(out, b",\"code\":\"");
    put(out, code.as_str().as_bytes());
    put(out, b"\",\"message\":");
    put_str(out, message);
    if let Some(ms) = retry_after_ms {
        put(out, b",\"retry_after_ms\":");
        put_u64(out, ms);
    }
    put(out, b"}");
}

/// Writes the `error` answering a [`CommandError`].
pub fn encode_command_error<B: WireBuf + ?Sized>(out: &mut B, error: &CommandError) {
    encode_error(out, error.id.as_ref(), error.code, &error.message, None);
}

/// Writes the `welcome` push: `{"type":"welcome","connection":…,"user":…,"node":…,
/// "expires":…|null,"ping_interval":…,"version":…,"rooms":{room: {"epoch","offset"}, …}}`.
pub fn encode_welcome<B: WireBuf + ?Sized>(out: &mut B, welcome: &Welcome) {
    put(out, b"{\"type\":\"welcome\",\"connection\":");
    put_str(out, &welcome.connection);
    put(out, b",\"user\":");
    put_str(out, &welcome.user);
    put(out, b",\"node\":");
    put_str(out, &welcome.node);
    put(out, b",\"expires\":");
    put_opt_u64(out, welcome.expires);
    put(out, b",\"ping_interval\":");
    put_u64(out, welcome.ping_interval);
    put(out, b",\"version\":");
    put_str(out, &welcome.version);
    put(out, b",\"rooms\":{");
    for (i, (room, position)) in welcome.rooms.iter().enumerate() {
        if i > 0 {
            put(out, b",");
        }
        put_str(out, room);
        put(out, b":{\"epoch\":");
        put_str(out, &position.epoch);
        put(out, b",\"offset\":");
        put_u64(out, position.offset);
        put(out, b"}");
    }
    put(out, b"}}");
}

/// Writes the `message` push of a stored publication, the fan-out hot path:
/// `{"type":"message","room":…,"epoch":…,"offset":…,"data":<data>,"from":<from>}`.
///
/// `data` and `from` are spliced as they are: `from` is the publisher's member object, encoded
/// once per connection with [`encode_member`]; `None` (server-API publications) leaves `from`
/// out.
pub fn encode_message_push<B: WireBuf + ?Sized>(
    out: &mut B,
    room: &str,
    epoch: &str,
    offset: u64,
    data: &RawValue,
    from: Option<&RawValue>,
) {
    let from = from.map(|f| f.get().as_bytes());
    encode_message_push_raw(out, room, epoch, offset, data.get().as_bytes(), from);
}

/// Writes the `message` push of an ephemeral publication: as [`encode_message_push`] without
/// `epoch` and `offset`.
pub fn encode_ephemeral_push<B: WireBuf + ?Sized>(
    out: &mut B,
    room: &str,
    data: &RawValue,
    from: Option<&RawValue>,
) {
    let from = from.map(|f| f.get().as_bytes());
    encode_ephemeral_push_raw(out, room, data.get().as_bytes(), from);
}

/// [`encode_message_push`] for a broker's publication, whose `data` and `from` are JSON the
/// server produced or validated when it was published: written as they are, not re-parsed.
pub fn encode_message_push_raw<B: WireBuf + ?Sized>(
    out: &mut B,
    room: &str,
    epoch: &str,
    offset: u64,
    data: &[u8],
    from: Option<&[u8]>,
) {
    out.reserve_bytes(80 + room.len() + epoch.len() + data.len() + from.map_or(0, <[u8]>::len));
    put(out, b"{\"type\":\"message\",\"room\":");
    put_str(out, room);
    put(out, b",\"epoch\":");
    put_str(out, epoch);
    put(out, b",\"offset\":");
    put_u64(out, offset);
    put_data_from_raw(out, data, from);
}

/// [`encode_ephemeral_push`] with already-valid JSON bytes (see [`encode_message_push_raw`]).
pub fn encode_ephemeral_push_raw<B: WireBuf + ?Sized>(
    out: &mut B,
    room: &str,
    data: &[u8],
    from: Option<&[u8]>,
) {
    out.reserve_bytes(48 + room.len() + data.len() + from.map_or(0, <[u8]>::len));
    put(out, b"{\"type\":\"message\",\"room\":");
    put_str(out, room);
    put_data_from_raw(out, data, from);
}

fn put_data_from_raw<B: WireBuf + ?Sized>(out: &mut B, data: &[u8], from: Option<&[u8]>) {
    put(out, b",\"data\":");
    put(out, data);
    if let Some(from) = from {
        put(out, b",\"from\":");
        put(out, from);
    }
    put(out, b"}");
}

/// Writes a `join` or `leave` push (`kind`) whose member `info` is already-valid JSON bytes.
pub fn encode_member_push_raw<B: WireBuf + ?Sized>(
    out: &mut B,
    kind: MemberPushKind,
    room: &str,
    user: &str,
    connection: &str,
    info: Option<&[u8]>,
) {
    put(out, b"{\"type\":\"");
    put(out, kind.as_str().as_bytes());
    put(out, b"\",\"room\":");
    put_str(out, room);
    put(out, b",\"member\":{\"user\":");
    put_str(out, user);
    put(out, b",\"connection\":");
    put_str(out, connection);
    if let Some(info) = info {
        put(out, b",\"info\":");
        put(out, info);
    }
    put(out, b"}}");
}

/// Which member push [`encode_member_push_raw`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberPushKind {
    /// `join`.
    Join,
    /// `leave`.
    Leave,
}

impl MemberPushKind {
    /// The push's `type`.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberPushKind::Join => "join",
            MemberPushKind::Leave => "leave",
        }
    }
}

/// Writes a member object `{"user":…,"connection":…,"info":…}` (`info` left out when `None`):
/// the `from` of a `message` push, the `member` of `join`/`leave`.
pub fn encode_member<B: WireBuf + ?Sized>(out: &mut B, member: &Member<'_>) {
    put(out, b"{\"user\":");
    put_str(out, &member.user);
    put(out, b",\"connection\":");
    put_str(out, &member.connection);
    if let Some(info) = &member.info {
        put(out, b",\"info\":");
        put_raw(out, info);
    }
    put(out, b"}");
}

/// Writes the `join` push: `{"type":"join","room":…,"member":{…}}`.
pub fn encode_join<B: WireBuf + ?Sized>(out: &mut B, room: &str, member: &Member<'_>) {
    put_member_push(out, b"{\"type\":\"join\",\"room\":", room, member);
}

/// Writes the `leave` push: `{"type":"leave","room":…,"member":{…}}`.
pub fn encode_leave<B: WireBuf + ?Sized>(out: &mut B, room: &str, member: &Member<'_>) {
    put_member_push(out, b"{\"type\":\"leave\",\"room\":", room, member);
}

fn put_member_push<B: WireBuf + ?Sized>(out: &mut B, head: &[u8], room: &str, member: &Member<'_>) {
    put(out, head);
    put_str(out, room);
    put(out, b",\"member\":");
    encode_member(out, member);
    put(out, b"}");
}

/// Writes the `subscribed` push of a server-side subscription:
/// `{"type":"subscribed","room":…,"epoch":…,"offset":…}`.
pub fn encode_subscribed<B: WireBuf + ?Sized>(out: &mut B, room: &str, epoch: &str, offset: u64) {
    put(out, b"{\"type\":\"subscribed\",\"room\":");
    put_str(out, room);
    put(out, b",\"epoch\":");
    put_str(out, epoch);
    put(out, b",\"offset\":");
    put_u64(out, offset);
    put(out, b"}");
}

/// Writes the `unsubscribed` push of a server-side removal:
/// `{"type":"unsubscribed","room":…,"reason":…}` (the protocol's reason is `"server"`).
pub fn encode_unsubscribed<B: WireBuf + ?Sized>(out: &mut B, room: &str, reason: &str) {
    put(out, b"{\"type\":\"unsubscribed\",\"room\":");
    put_str(out, room);
    put(out, b",\"reason\":");
    put_str(out, reason);
    put(out, b"}");
}

/// Writes the answer to `ping`: `{"type":"pong","id":…}`, without `id` when the ping had none.
pub fn encode_pong<B: WireBuf + ?Sized>(out: &mut B, id: Option<&Id>) {
    put(out, b"{\"type\":\"pong\"");
    if let Some(id) = id {
        put(out, b",\"id\":");
        put_id(out, id);
    }
    put(out, b"}");
}

/// Writes `{"type":"refresh_required","expires":…}`, pushed about 30 s before the token's
/// `exp` (unix seconds).
pub fn encode_refresh_required<B: WireBuf + ?Sized>(out: &mut B, expires: u64) {
    put(out, b"{\"type\":\"refresh_required\",\"expires\":");
    put_u64(out, expires);
    put(out, b"}");
}

/// One publication in a `subscribe` or `history` reply: `{"offset", "data", "from"?}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Publication<'a> {
    /// Its offset in the room's current epoch.
    pub offset: u64,
    /// The published JSON value, as published.
    pub data: Cow<'a, RawValue>,
    /// The publisher's member object (see [`Member::from_raw`]); absent for publications
    /// through the server API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Cow<'a, RawValue>>,
}

impl<'a> Publication<'a> {
    /// A publication borrowing its parts.
    pub fn new(offset: u64, data: &'a RawValue, from: Option<&'a RawValue>) -> Self {
        Publication {
            offset,
            data: Cow::Borrowed(data),
            from: from.map(Cow::Borrowed),
        }
    }
}

impl PartialEq for Publication<'_> {
    /// `data` and `from` are compared as text.
    fn eq(&self, other: &Self) -> bool {
        self.offset == other.offset
            && self.data.get() == other.data.get()
            && self.from.as_deref().map(RawValue::get) == other.from.as_deref().map(RawValue::get)
    }
}

/// The result of `subscribe`: `{"room", "epoch", "offset", "recovered"?, "publications"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubscribeResult<'a> {
    /// The room.
    pub room: Cow<'a, str>,
    /// The room's current epoch.
    pub epoch: Cow<'a, str>,
    /// The room's latest offset when the subscription took effect; live `message` pushes
    /// continue at `offset + 1`.
    pub offset: u64,
    /// With `since`: whether every missed publication is in `publications`. Left out without
    /// `since`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
    /// The recovered publications, in order (empty unless `recovered`).
    #[serde(default)]
    pub publications: Vec<Publication<'a>>,
}

/// The result of `publish`: `{"room", "epoch", "offset"}`; `epoch` and `offset` are left out
/// for an ephemeral publication, which has neither.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishResult<'a> {
    /// The room.
    pub room: Cow<'a, str>,
    /// The room's epoch (not for ephemeral publications).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<Cow<'a, str>>,
    /// The publication's offset (not for ephemeral publications). For a repeated
    /// `idempotency_key`, the first publication's offset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
}

/// The result of `presence`: `{"members", "next_cursor", "connections", "users"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PresenceResult<'a> {
    /// One page of members.
    pub members: Vec<Member<'a>>,
    /// The `cursor` of the next page, `null` on the last page.
    pub next_cursor: Option<Cow<'a, str>>,
    /// Connections subscribed to the room (all pages).
    pub connections: u64,
    /// Distinct users among them.
    pub users: u64,
}

/// The result of `history`: `{"epoch", "offset", "publications"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryResult<'a> {
    /// The room's current epoch.
    pub epoch: Cow<'a, str>,
    /// The room's latest offset.
    pub offset: u64,
    /// The publications asked for, in the order asked for.
    pub publications: Vec<Publication<'a>>,
}

/// The result of `refresh`: `{"expires"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshResult {
    /// The new token's `exp` (unix seconds), `null` without one.
    pub expires: Option<u64>,
}

/// The result of `rpc`: `{"data"}`, what the application backend answered.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RpcResult<'a> {
    /// The backend's answer.
    pub data: Cow<'a, RawValue>,
}

/// The empty result `{}` (of `unsubscribe`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmptyResult {}
