//! Server messages as a client reads them.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use super::types::{ErrorCode, Id, Member, PROTOCOL_VERSION, StreamPosition};

/// One message from the server, owned. Unknown fields are ignored, and an unknown `type`
/// becomes [`ServerMessage::Unknown`] so that newer servers do not break older clients.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerMessage {
    /// `reply`: the successful answer to the command with this `id`.
    Reply(Reply),
    /// `error`: a command failed (or a message could not be read).
    Error(ErrorReply),
    /// `welcome`: the first message after authentication.
    Welcome(Welcome),
    /// `message`: a publication in a subscribed room.
    Message(MessagePush),
    /// `join`: a connection subscribed to a room.
    Join(MemberPush),
    /// `leave`: a connection left a room.
    Leave(MemberPush),
    /// `subscribed`: the server subscribed this connection to a room.
    Subscribed(SubscribedPush),
    /// `unsubscribed`: the server removed this connection from a room.
    Unsubscribed(UnsubscribedPush),
    /// `pong`: the answer to `ping`.
    Pong {
        /// The ping's `id`, when it had one.
        id: Option<Id>,
    },
    /// `refresh_required`: send `refresh` with a new token before `expires`.
    RefreshRequired {
        /// The current token's `exp` (unix seconds).
        expires: Option<u64>,
    },
    /// A message `type` this version does not know (the type is kept).
    Unknown(String),
}

impl ServerMessage {
    /// The `id` of the command this message answers (`reply`, `error`, `pong`).
    pub fn id(&self) -> Option<&Id> {
        match self {
            ServerMessage::Reply(reply) => Some(&reply.id),
            ServerMessage::Error(error) => error.id.as_ref(),
            ServerMessage::Pong { id } => id.as_ref(),
            _ => None,
        }
    }
}

/// `{"type": "reply", "id", "result"}`.
#[derive(Debug, Clone, Deserialize)]
pub struct Reply {
    /// The command's `id`.
    pub id: Id,
    /// The result, unparsed: read it with [`Reply::result_as`].
    pub result: Box<RawValue>,
}

impl Reply {
    /// Parses the result as `T` (one of this module's result types, such as
    /// `SubscribeResult<'static>`).
    pub fn result_as<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.result.get())
    }
}

impl PartialEq for Reply {
    /// `result` is compared as text.
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id && self.result.get() == other.result.get()
    }
}

/// `{"type": "error", "id", "code", "message", "retry_after_ms"?}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ErrorReply {
    /// The failed command's `id`; `None` for a command without one (or unreadable).
    pub id: Option<Id>,
    /// The error code as sent, kept as a string so that codes added later still parse; see
    /// [`ErrorReply::error_code`].
    pub code: String,
    /// The message for people.
    pub message: String,
    /// For `rate_limited`: how long to wait before sending more commands.
    pub retry_after_ms: Option<u64>,
}

impl ErrorReply {
    /// The code, if this version knows it.
    pub fn error_code(&self) -> Option<ErrorCode> {
        ErrorCode::from_wire(&self.code)
    }
}

/// The `welcome` push: `{"type": "welcome", "connection", "user", "node", "expires",
/// "ping_interval", "version", "rooms"}`. The server builds one to write it with
/// [`super::encode_welcome`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Welcome {
    /// This connection's id.
    pub connection: String,
    /// The authenticated user (`""` for anonymous access).
    pub user: String,
    /// The id of the node serving the connection.
    pub node: String,
    /// The token's `exp` (unix seconds), `None` when it has none.
    pub expires: Option<u64>,
    /// Seconds between the server's WebSocket pings.
    pub ping_interval: u64,
    /// The protocol version, `"1"`.
    pub version: String,
    /// The subscriptions made at connect (the `rooms` claim, the personal room) and each
    /// room's position at that moment.
    #[serde(default)]
    pub rooms: BTreeMap<String, StreamPosition>,
}

impl Welcome {
    /// A welcome of this protocol version without rooms.
    pub fn new(
        connection: impl Into<String>,
        user: impl Into<String>,
        node: impl Into<String>,
        expires: Option<u64>,
        ping_interval: u64,
    ) -> Self {
        Welcome {
            connection: connection.into(),
            user: user.into(),
            node: node.into(),
            expires,
            ping_interval,
            version: PROTOCOL_VERSION.to_owned(),
            rooms: BTreeMap::new(),
        }
    }
}

/// The `message` push: `{"type": "message", "room", "epoch"?, "offset"?, "data", "from"?}`.
#[derive(Debug, Clone, Deserialize)]
pub struct MessagePush {
    /// The room.
    pub room: String,
    /// The room's epoch; `None` for an ephemeral publication.
    pub epoch: Option<String>,
    /// The publication's offset; `None` for an ephemeral publication.
    pub offset: Option<u64>,
    /// The published JSON value.
    pub data: Box<RawValue>,
    /// The publisher; `None` for publications through the server API.
    pub from: Option<Member<'static>>,
}

impl PartialEq for MessagePush {
    /// `data` is compared as text.
    fn eq(&self, other: &Self) -> bool {
        self.room == other.room
            && self.epoch == other.epoch
            && self.offset == other.offset
            && self.data.get() == other.data.get()
            && self.from == other.from
    }
}

impl MessagePush {
    /// Whether the publication is ephemeral (it has no position).
    pub fn is_ephemeral(&self) -> bool {
        self.offset.is_none()
    }

    /// The publication's position, for recovery (`None` when ephemeral).
    pub fn position(&self) -> Option<StreamPosition> {
        match (&self.epoch, self.offset) {
            (Some(epoch), Some(offset)) => Some(StreamPosition::new(epoch.clone(), offset)),
            _ => None,
        }
    }
}

/// The `join` and `leave` pushes: `{"type": "join" | "leave", "room", "member"}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct MemberPush {
    /// The room.
    pub room: String,
    /// The connection that joined or left.
    pub member: Member<'static>,
}

/// The `subscribed` push: `{"type": "subscribed", "room", "epoch", "offset"}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SubscribedPush {
    /// The room.
    pub room: String,
    /// The room's epoch.
    pub epoch: String,
    /// The room's latest offset when the subscription took effect.
    pub offset: u64,
    /// Present when the push is about a subscription that already existed (protocol 4.4):
    /// `false`, publications before `offset + 1` were lost; `true`, the stream goes on in
    /// the new `epoch` from `offset` with nothing missed.
    #[serde(default)]
    pub recovered: Option<bool>,
}

/// The `unsubscribed` push: `{"type": "unsubscribed", "room", "reason"}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct UnsubscribedPush {
    /// The room.
    pub room: String,
    /// Why (`"server"`).
    pub reason: String,
}

/// Parses one server message (the text of one WebSocket text message).
///
/// Errors when the text is not a JSON object with a string `type`, or when a message of a
/// known type lacks a field or has one of the wrong type.
pub fn parse_server_message(text: &str) -> Result<ServerMessage, serde_json::Error> {
    #[derive(Deserialize)]
    struct Envelope<'a> {
        #[serde(rename = "type", borrow)]
        kind: Cow<'a, str>,
    }

    #[derive(Deserialize)]
    struct Pong {
        id: Option<Id>,
    }

    #[derive(Deserialize)]
    struct RefreshRequired {
        expires: Option<u64>,
    }

    let envelope: Envelope<'_> = serde_json::from_str(text)?;
    Ok(match &*envelope.kind {
        "reply" => ServerMessage::Reply(serde_json::from_str(text)?),
        "error" => ServerMessage::Error(serde_json::from_str(text)?),
        "welcome" => ServerMessage::Welcome(serde_json::from_str(text)?),
        "message" => ServerMessage::Message(serde_json::from_str(text)?),
        "join" => ServerMessage::Join(serde_json::from_str(text)?),
        "leave" => ServerMessage::Leave(serde_json::from_str(text)?),
        "subscribed" => ServerMessage::Subscribed(serde_json::from_str(text)?),
        "unsubscribed" => ServerMessage::Unsubscribed(serde_json::from_str(text)?),
        "pong" => ServerMessage::Pong {
            id: serde_json::from_str::<Pong>(text)?.id,
        },
        "refresh_required" => ServerMessage::RefreshRequired {
            expires: serde_json::from_str::<RefreshRequired>(text)?.expires,
        },
        other => ServerMessage::Unknown(other.to_owned()),
    })
}
