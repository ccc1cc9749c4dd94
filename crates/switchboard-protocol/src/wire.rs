//! The v1 JSON messages (PROTOCOL.md sections 1-7): client commands and server messages.
//!
//! One WebSocket text message carries one JSON object. This module turns client text into a
//! [`Command`] (or a [`CommandError`] that can be answered with the command's own `id`), writes
//! the server's replies, errors and pushes straight into an output buffer ([`WireBuf`]: a
//! `Vec<u8>` or a `bytes::BytesMut`), and, for clients, parses server messages into a
//! [`ServerMessage`] and writes commands with [`encode_command`].
//!
//! ```text
//! client → server  {"type": "publish", "id": 4, "room": "chat:lobby", "data": {"text": "hi"}}
//! server → client  {"type": "reply", "id": 4, "result": {"room": "chat:lobby", "epoch": "e8f1c2", "offset": 46}}
//! server → client  {"type": "message", "room": "chat:lobby", "epoch": "e8f1c2", "offset": 46, "data": {"text": "hi"}, "from": {…}}
//! ```
//!
//! # Parsing commands
//!
//! [`parse_command`] makes one serde pass over the text and builds no `serde_json::Value`.
//! It records every field it knows without judging its type yet (strings borrowed from the
//! input when they have no escapes, integers, booleans, `null`, or "something else"), keeps
//! `data` as a borrowed `&RawValue` (the client's bytes, verbatim, re-sent without being
//! re-encoded) and skips unknown fields. Only then does it check the fields the command's
//! `type` uses, so an error names the exact field (`field 'since.offset' must be a
//! non-negative integer`) and carries the command's `id` whenever the `id` itself was valid,
//! without a second parse. A field the command's `type` does not use is ignored like an
//! unknown one, whatever its value.
//!
//! Rules the parser applies where the protocol leaves room:
//! - `null` for an optional field means the field is absent (`"id": null` is no id, `"limit":
//!   null` the default limit). A required field that is `null` has the wrong type, except
//!   `data`, which is any JSON value, `null` included.
//! - A field the parser knows that appears twice is a `bad_request` (`duplicate field 'room'`):
//!   JSON leaves duplicates undefined and two readers could disagree about which one counts.
//! - Numbers must be written as integers: `5.0`, `5e0` and `-0` are not a valid `id`, `limit`
//!   or `offset`. A `limit` beyond `u32::MAX` is saturated (the server clamps it anyway).
//! - `rpc` without `data` passes `null` to the backend; `publish` requires `data`.
//! - When the text is not valid JSON but a valid top-level `id` was read before the syntax
//!   error, the error carries that `id`.
//! - Room names are *not* validated by the parser (that answer is `bad_room`, not
//!   `bad_request`): the server calls [`validate_room`]. The parser does enforce the length
//!   limits of `id` (64 bytes) and `idempotency_key` (1 to 128 bytes).
//!
//! # Writing server messages
//!
//! Every encoder appends exactly one JSON object to the buffer and escapes strings with
//! `serde_json`. [`encode_message_push`], the fan-out hot path, writes its fields directly and
//! splices the publication's `data` and the pre-encoded `from` object ([`encode_member`]) as
//! they are. Optional members that are absent are omitted (`info` of a member, `from` of a
//! server-API publication, `retry_after_ms`, `epoch` and `offset` of an ephemeral publication
//! and of its `publish` result), except where the protocol shows `null` (`error.id`,
//! `welcome.expires`, `presence.next_cursor`).

mod command;
mod encode;
mod scan;
mod server;

#[cfg(test)]
mod tests;

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use self::command::{
    Command, CommandError, CommandKind, HistoryCommand, PresenceCommand, PublishCommand,
    RpcCommand, SubscribeCommand, encode_command, parse_command,
};
pub use self::encode::{
    EmptyResult, HistoryResult, Member, MemberPushKind, PresenceResult, Publication, PublishResult,
    RefreshResult, RpcResult, SubscribeResult, WireBuf, encode_command_error,
    encode_ephemeral_push, encode_ephemeral_push_raw, encode_error, encode_join, encode_leave,
    encode_member, encode_member_push_raw, encode_message_push, encode_message_push_raw,
    encode_pong, encode_refresh_required, encode_reply, encode_subscribed, encode_unsubscribed,
    encode_welcome,
};
pub use self::server::{
    ErrorReply, MemberPush, MessagePush, Reply, ServerMessage, SubscribedPush, UnsubscribedPush,
    Welcome, parse_server_message,
};

/// The WebSocket subprotocol of version 1 (PROTOCOL.md section 1).
pub const SUBPROTOCOL: &str = "switchboard.v1";

/// The protocol version this module speaks, as sent in `welcome.version`.
pub const PROTOCOL_VERSION: &str = "1";

/// The largest numeric command `id`: 2^53 - 1, the largest integer every JSON reader (a
/// JavaScript `number`) holds exactly.
pub const MAX_NUMERIC_ID: u64 = (1 << 53) - 1;

/// The longest string command `id`, in bytes (after JSON unescaping).
pub const MAX_STRING_ID_LEN: usize = 64;

/// The longest room name, in bytes.
pub const MAX_ROOM_LEN: usize = 200;

/// The longest `idempotency_key`, in bytes (after JSON unescaping).
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;

/// A command's `id`: a non-negative integer below 2^53 or a string of at most 64 bytes. The
/// server answers a command with the same `id` it came with, as the same JSON type.
///
/// The variants can hold values the protocol does not allow (a number above
/// [`MAX_NUMERIC_ID`], a longer string); [`Id::is_valid`] says whether it is one a client may
/// send. Parsing (a command or a server message) only ever produces valid ids.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Id {
    /// A numeric id, sent as a JSON number.
    Number(u64),
    /// A string id, sent as a JSON string.
    String(String),
}

impl Id {
    /// Whether this id is one the protocol allows (number ≤ [`MAX_NUMERIC_ID`], string of at
    /// most [`MAX_STRING_ID_LEN`] bytes).
    pub fn is_valid(&self) -> bool {
        match self {
            Id::Number(n) => *n <= MAX_NUMERIC_ID,
            Id::String(s) => s.len() <= MAX_STRING_ID_LEN,
        }
    }
}

impl From<u32> for Id {
    fn from(n: u32) -> Self {
        Id::Number(n.into())
    }
}

impl fmt::Display for Id {
    /// A number as its digits, a string as it is (not quoted).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Id::Number(n) => write!(f, "{n}"),
            Id::String(s) => f.write_str(s),
        }
    }
}

impl Serialize for Id {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Id::Number(n) => serializer.serialize_u64(*n),
            Id::String(s) => serializer.serialize_str(s),
        }
    }
}

impl<'de> Deserialize<'de> for Id {
    /// Accepts exactly the valid ids; anything else is an error.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IdVisitor;

        impl serde::de::Visitor<'_> for IdVisitor {
            type Value = Id;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a non-negative integer below 2^53 or a string of at most 64 bytes")
            }

            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Id, E> {
                if n <= MAX_NUMERIC_ID {
                    Ok(Id::Number(n))
                } else {
                    Err(E::invalid_value(serde::de::Unexpected::Unsigned(n), &self))
                }
            }

            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Id, E> {
                match u64::try_from(n) {
                    Ok(n) => self.visit_u64(n),
                    Err(_) => Err(E::invalid_value(serde::de::Unexpected::Signed(n), &self)),
                }
            }

            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Id, E> {
                if s.len() <= MAX_STRING_ID_LEN {
                    Ok(Id::String(s.to_owned()))
                } else {
                    Err(E::invalid_length(s.len(), &self))
                }
            }
        }

        deserializer.deserialize_any(IdVisitor)
    }
}

/// A position in a room's stream: the stream's `epoch` and the `offset` of a publication in
/// it. The key of recovery (`since` of `subscribe` and `history`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StreamPosition {
    /// The room's epoch: a short string that changes whenever the stream's history is lost.
    pub epoch: String,
    /// The offset of a publication within the epoch.
    pub offset: u64,
}

impl StreamPosition {
    /// A position.
    pub fn new(epoch: impl Into<String>, offset: u64) -> Self {
        StreamPosition {
            epoch: epoch.into(),
            offset,
        }
    }
}

/// The code of an `error` message (PROTOCOL.md section 7), written in snake_case on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Invalid JSON, not an object, a missing field or a field of the wrong type (the message
    /// names the field), a binary message, or a `since` from another epoch.
    BadRequest,
    /// A command `type` the server does not know.
    UnknownType,
    /// A room name that is not 1..=200 bytes of `A-Z a-z 0-9 _ - . : @ = /`.
    BadRoom,
    /// A room of a namespace that is not configured, with `strict_namespaces` on.
    UnknownNamespace,
    /// The connection is not subscribed to the room (unsubscribe, publish, presence).
    NotSubscribed,
    /// The connection is already subscribed to the room.
    AlreadySubscribed,
    /// Not allowed by the namespace's options, the token or the application backend.
    Forbidden,
    /// A missing or invalid token (first-message `auth`, `refresh`, subscription token).
    Unauthorized,
    /// Too many commands; the error carries `retry_after_ms`.
    RateLimited,
    /// A configured limit was reached (subscriptions per connection, `max_subscribers`).
    LimitExceeded,
    /// The broker or the application backend cannot answer now; nothing was done.
    Unavailable,
    /// A bug or an unexpected failure in the server.
    Internal,
}

impl ErrorCode {
    /// Every code, in the order of PROTOCOL.md section 7.
    pub const ALL: [ErrorCode; 12] = [
        ErrorCode::BadRequest,
        ErrorCode::UnknownType,
        ErrorCode::BadRoom,
        ErrorCode::UnknownNamespace,
        ErrorCode::NotSubscribed,
        ErrorCode::AlreadySubscribed,
        ErrorCode::Forbidden,
        ErrorCode::Unauthorized,
        ErrorCode::RateLimited,
        ErrorCode::LimitExceeded,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
    ];

    /// The code as written on the wire, e.g. `"bad_request"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::BadRoom => "bad_room",
            ErrorCode::UnknownNamespace => "unknown_namespace",
            ErrorCode::NotSubscribed => "not_subscribed",
            ErrorCode::AlreadySubscribed => "already_subscribed",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::LimitExceeded => "limit_exceeded",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }

    /// The code written as `s` on the wire, or `None` for a code this version does not know.
    pub fn from_wire(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|code| code.as_str() == s)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Checks a room name: 1..=200 bytes of `A-Z a-z 0-9 _ - . : @ = /`. The error is a reason for
/// people, for the message of a `bad_room` error.
pub fn validate_room(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("room name is empty");
    }
    if name.len() > MAX_ROOM_LEN {
        return Err("room name is longer than 200 bytes");
    }
    let allowed = |b: u8| {
        b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'@' | b'=' | b'/')
    };
    if name.bytes().all(allowed) {
        Ok(())
    } else {
        Err("room name may only contain A-Z a-z 0-9 _ - . : @ = /")
    }
}

/// The namespace of a room: the part before the first `:`, or `""` (the default namespace) for
/// a room without one. `chat:lobby` is in `chat`, `user:alice:x` in `user`, `lobby` in `""`.
pub fn namespace(room: &str) -> &str {
    match room.split_once(':') {
        Some((ns, _)) => ns,
        None => "",
    }
}
