//! The values the protocol's messages share: command ids, stream positions, error codes, room
//! names and members. It uses only the low-level [`writer`](super::writer), so that the
//! command, server-message and encoder modules can all build on it without importing one
//! another.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

use super::writer::{WireBuf, put_str, put_u64};

/// The WebSocket subprotocol of version 1 (docs/protocol.md section 1).
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

/// The code of an `error` message (docs/protocol.md section 7), written in snake_case on the wire.
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
    /// Every code, in the order of docs/protocol.md section 7.
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

/// Writes an `id` as the JSON type it came as: a number or a string.
pub(super) fn put_id<B: WireBuf + ?Sized>(out: &mut B, id: &Id) {
    match id {
        Id::Number(n) => put_u64(out, *n),
        Id::String(s) => put_str(out, s),
    }
}

/// A connection as others see it: in `presence`, `join`/`leave` and the `from` of a
/// publication. Borrowed when the server builds it, owned when a client parses it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Member<'a> {
    /// The user id (`""` for anonymous users).
    pub user: Cow<'a, str>,
    /// The connection id.
    pub connection: Cow<'a, str>,
    /// The token's `info` claim, as it was in the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<Cow<'a, RawValue>>,
}

impl<'a> Member<'a> {
    /// A member borrowing its parts.
    pub fn new(user: &'a str, connection: &'a str, info: Option<&'a RawValue>) -> Self {
        Member {
            user: Cow::Borrowed(user),
            connection: Cow::Borrowed(connection),
            info: info.map(Cow::Borrowed),
        }
    }

    /// Parses a member object (such as [`Publication::from`](super::Publication::from)).
    pub fn from_raw(raw: &RawValue) -> Result<Member<'static>, serde_json::Error> {
        serde_json::from_str(raw.get())
    }
}

impl PartialEq for Member<'_> {
    /// `info` is compared as text.
    fn eq(&self, other: &Self) -> bool {
        self.user == other.user
            && self.connection == other.connection
            && self.info.as_deref().map(RawValue::get) == other.info.as_deref().map(RawValue::get)
    }
}
