//! Client commands: parsing (server side) and writing (client side).

use std::borrow::Cow;

use serde::de::IgnoredAny;
use serde_json::value::RawValue;

use super::scan::{
    CURSOR, CommandFields, ECHO, EPHEMERAL, ID, IDEMPOTENCY_KEY, LIMIT, METHOD, REVERSE, ROOM,
    SCALAR_FIELDS, Scalar, Since, TOKEN, TYPE,
};
use super::types::{
    ErrorCode, Id, MAX_IDEMPOTENCY_KEY_LEN, MAX_NUMERIC_ID, MAX_STRING_ID_LEN, StreamPosition,
    put_id,
};
use super::writer::{WireBuf, put, put_raw, put_str, put_u64};

/// One client command: its optional `id` and what it asks for.
///
/// Strings borrow from the parsed text when they contain no JSON escapes; `data` always does.
#[derive(Debug, Clone, PartialEq)]
pub struct Command<'a> {
    /// The command's `id`, when it has one: the answer (a `reply` or an `error`) carries it.
    /// Without one the command gets no `reply`, only an `error` when it fails.
    pub id: Option<Id>,
    /// The command.
    pub kind: CommandKind<'a>,
}

/// What a command asks for, one variant per `type`.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandKind<'a> {
    /// `subscribe`: start receiving a room's publications (docs/protocol.md 4.2).
    Subscribe(SubscribeCommand<'a>),
    /// `unsubscribe`: stop receiving a room's publications (4.3).
    Unsubscribe {
        /// The room (not validated by the parser; see [`super::validate_room`]).
        room: Cow<'a, str>,
    },
    /// `publish`: publish to a room (5).
    Publish(PublishCommand<'a>),
    /// `presence`: who is subscribed to a room (6).
    Presence(PresenceCommand<'a>),
    /// `history`: a room's retained publications (6).
    History(HistoryCommand<'a>),
    /// `ping`: answered with a `pong` (3).
    Ping,
    /// `refresh`: replace the connection's token before it expires (2.3).
    Refresh {
        /// The new connection token (a JWT).
        token: Cow<'a, str>,
    },
    /// `auth`: the first message in first-message mode (2.2).
    Auth {
        /// The connection token (a JWT).
        token: Cow<'a, str>,
    },
    /// `rpc`: a call to the application backend (5.1).
    Rpc(RpcCommand<'a>),
}

impl CommandKind<'_> {
    /// The command's `type` as written on the wire, e.g. `"subscribe"`.
    pub fn type_name(&self) -> &'static str {
        match self {
            CommandKind::Subscribe(_) => "subscribe",
            CommandKind::Unsubscribe { .. } => "unsubscribe",
            CommandKind::Publish(_) => "publish",
            CommandKind::Presence(_) => "presence",
            CommandKind::History(_) => "history",
            CommandKind::Ping => "ping",
            CommandKind::Refresh { .. } => "refresh",
            CommandKind::Auth { .. } => "auth",
            CommandKind::Rpc(_) => "rpc",
        }
    }

    /// The room the command is about, for the commands that name one.
    pub fn room(&self) -> Option<&str> {
        match self {
            CommandKind::Subscribe(c) => Some(&c.room),
            CommandKind::Unsubscribe { room } => Some(room),
            CommandKind::Publish(c) => Some(&c.room),
            CommandKind::Presence(c) => Some(&c.room),
            CommandKind::History(c) => Some(&c.room),
            CommandKind::Ping
            | CommandKind::Refresh { .. }
            | CommandKind::Auth { .. }
            | CommandKind::Rpc(_) => None,
        }
    }
}

/// `{"type": "subscribe", "room": …, "since"?: {"epoch", "offset"}, "token"?: …}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeCommand<'a> {
    /// The room (not validated by the parser; see [`super::validate_room`]).
    pub room: Cow<'a, str>,
    /// Where the client's copy of the stream ends, to recover what it missed.
    pub since: Option<StreamPosition>,
    /// A subscription token, for namespaces whose `subscribe` option is `"token"`.
    pub token: Option<Cow<'a, str>>,
}

/// `{"type": "publish", "room": …, "data": …, "echo"?: true, "ephemeral"?: false,
/// "idempotency_key"?: …}`.
#[derive(Debug, Clone)]
pub struct PublishCommand<'a> {
    /// The room (not validated by the parser; see [`super::validate_room`]).
    pub room: Cow<'a, str>,
    /// The publication, any JSON value (`null` included), as the client wrote it.
    pub data: &'a RawValue,
    /// Whether the publishing connection receives its own publication (default `true`).
    pub echo: bool,
    /// Not stored, without epoch and offset, never recovered (default `false`).
    pub ephemeral: bool,
    /// A key (1 to 128 bytes) that makes a retried publish publish nothing new.
    pub idempotency_key: Option<Cow<'a, str>>,
}

impl PartialEq for PublishCommand<'_> {
    /// `data` is compared as text.
    fn eq(&self, other: &Self) -> bool {
        self.room == other.room
            && self.data.get() == other.data.get()
            && self.echo == other.echo
            && self.ephemeral == other.ephemeral
            && self.idempotency_key == other.idempotency_key
    }
}

/// `{"type": "presence", "room": …, "cursor"?: …, "limit"?: …}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceCommand<'a> {
    /// The room (not validated by the parser; see [`super::validate_room`]).
    pub room: Cow<'a, str>,
    /// The `next_cursor` of a previous page; `None` for the first page.
    pub cursor: Option<Cow<'a, str>>,
    /// The page size as sent (saturated at `u32::MAX`); the server applies the default (100)
    /// and the maximum (1000).
    pub limit: Option<u32>,
}

/// `{"type": "history", "room": …, "since"?: …, "limit"?: …, "reverse"?: false}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryCommand<'a> {
    /// The room (not validated by the parser; see [`super::validate_room`]).
    pub room: Cow<'a, str>,
    /// Return the publications after this position (oldest first).
    pub since: Option<StreamPosition>,
    /// The number of publications as sent (saturated at `u32::MAX`); the server applies the
    /// default and maximum (`history_size`).
    pub limit: Option<u32>,
    /// Without `since`: start at the newest publication instead of the oldest (default `false`).
    pub reverse: bool,
}

/// `{"type": "rpc", "method": …, "data"?: …}`.
#[derive(Debug, Clone)]
pub struct RpcCommand<'a> {
    /// The method name, passed to the application backend as is.
    pub method: Cow<'a, str>,
    /// The call's argument as the client wrote it; `null` when the command has no `data`.
    pub data: &'a RawValue,
}

impl PartialEq for RpcCommand<'_> {
    /// `data` is compared as text.
    fn eq(&self, other: &Self) -> bool {
        self.method == other.method && self.data.get() == other.data.get()
    }
}

/// Why a command was refused before it was carried out: answered with an `error` carrying
/// `id` (or `"id": null`), `code` and `message` ([`super::encode_command_error`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct CommandError {
    /// The command's `id` when it could be read (the JSON parsed and the `id` was valid).
    pub id: Option<Id>,
    /// `bad_request` or `unknown_type`.
    pub code: ErrorCode,
    /// The field at fault (`"id"`, `"type"`, `"room"`, `"since.offset"`, …), when one is.
    pub field: Option<&'static str>,
    /// The message for people, naming the field.
    pub message: String,
}

impl CommandError {
    /// A `bad_request` error without a field.
    pub fn bad_request(id: Option<Id>, message: impl Into<String>) -> Self {
        CommandError {
            id,
            code: ErrorCode::BadRequest,
            field: None,
            message: message.into(),
        }
    }

    /// The answer to a binary message on the protocol route (docs/protocol.md section 1).
    pub fn binary_message() -> Self {
        CommandError::bad_request(None, "binary messages are not supported: send JSON text")
    }

    fn field(id: Option<Id>, field: &'static str, message: String) -> Self {
        CommandError {
            id,
            code: ErrorCode::BadRequest,
            field: Some(field),
            message,
        }
    }
}

/// The longest part of an unknown `type` quoted back in the error message.
const MAX_QUOTED_TYPE: usize = 64;

/// Parses one command (the text of one WebSocket text message).
///
/// Errors are `bad_request` (invalid JSON, not an object, a missing field, a field of the
/// wrong type or length, a duplicate field, an invalid `id`) or `unknown_type`, each with the
/// command's `id` when it was readable. Room names are not validated here.
pub fn parse_command(text: &str) -> Result<Command<'_>, CommandError> {
    let mut fields = CommandFields::default();
    if let Err(e) = fields.scan(text) {
        return Err(document_error(text, &mut fields, &e));
    }

    if fields.duplicate == Some("id") {
        return Err(CommandError::field(None, "id", dup("id")));
    }
    let id = match fields.scalars[ID].take() {
        Some(id) => read_id(id)?,
        None => None,
    };
    let mut r = Reader { fields, id };
    if let Some(name) = r.fields.duplicate {
        return Err(r.error(name, dup(name)));
    }

    let type_name = match r.fields.scalars[TYPE].take() {
        Some(Scalar::Str(name)) => name,
        Some(_) => return Err(r.wrong_type(TYPE, "a string")),
        None => return Err(r.missing(TYPE)),
    };

    let kind = match &*type_name {
        "subscribe" => CommandKind::Subscribe(SubscribeCommand {
            room: r.required_str(ROOM)?,
            since: r.since()?,
            token: r.optional_str(TOKEN)?,
        }),
        "unsubscribe" => CommandKind::Unsubscribe {
            room: r.required_str(ROOM)?,
        },
        "publish" => CommandKind::Publish(PublishCommand {
            room: r.required_str(ROOM)?,
            data: match r.fields.data {
                Some(data) => data,
                None => return Err(r.error("data", "missing field 'data'".to_owned())),
            },
            echo: r.optional_bool(ECHO, true)?,
            ephemeral: r.optional_bool(EPHEMERAL, false)?,
            idempotency_key: r.idempotency_key()?,
        }),
        "presence" => CommandKind::Presence(PresenceCommand {
            room: r.required_str(ROOM)?,
            cursor: r.optional_str(CURSOR)?,
            limit: r.optional_u32(LIMIT)?,
        }),
        "history" => CommandKind::History(HistoryCommand {
            room: r.required_str(ROOM)?,
            since: r.since()?,
            limit: r.optional_u32(LIMIT)?,
            reverse: r.optional_bool(REVERSE, false)?,
        }),
        "ping" => CommandKind::Ping,
        "refresh" => CommandKind::Refresh {
            token: r.required_str(TOKEN)?,
        },
        "auth" => CommandKind::Auth {
            token: r.required_str(TOKEN)?,
        },
        "rpc" => CommandKind::Rpc(RpcCommand {
            method: r.required_str(METHOD)?,
            data: r.fields.data.unwrap_or(RawValue::NULL),
        }),
        other => {
            return Err(CommandError {
                id: r.id,
                code: ErrorCode::UnknownType,
                field: Some("type"),
                message: format!("unknown command type '{}'", quote_prefix(other)),
            });
        }
    };
    Ok(Command { id: r.id, kind })
}

/// The error for text that is not one JSON object. The slow path: it may parse again.
fn document_error(
    text: &str,
    fields: &mut CommandFields<'_>,
    error: &serde_json::Error,
) -> CommandError {
    if error.is_data() {
        // The top level is not an object; say so only if it is valid JSON at all.
        return match serde_json::from_str::<IgnoredAny>(text) {
            Ok(_) => CommandError::bad_request(None, "a command must be a JSON object"),
            Err(e) => CommandError::bad_request(None, format!("invalid JSON: {e}")),
        };
    }
    // A syntax error: keep a valid `id` read before it, so the client can match the answer.
    let id = match fields.scalars[ID].take() {
        Some(id) if fields.duplicate != Some("id") => read_id(id).ok().flatten(),
        _ => None,
    };
    CommandError::bad_request(id, format!("invalid JSON: {error}"))
}

/// Reads an `id`: `null` is no id; anything but a valid id is an error without an id.
fn read_id(id: Scalar<'_>) -> Result<Option<Id>, CommandError> {
    match id {
        Scalar::Null => Ok(None),
        Scalar::U64(n) if n <= MAX_NUMERIC_ID => Ok(Some(Id::Number(n))),
        Scalar::Str(s) if s.len() <= MAX_STRING_ID_LEN => Ok(Some(Id::String(s.into_owned()))),
        _ => Err(CommandError::field(
            None,
            "id",
            "field 'id' must be a non-negative integer below 2^53 or a string of at most 64 bytes"
                .to_owned(),
        )),
    }
}

/// At most [`MAX_QUOTED_TYPE`] bytes of `s` (cut at a character boundary), marked when cut.
fn quote_prefix(s: &str) -> Cow<'_, str> {
    if s.len() <= MAX_QUOTED_TYPE {
        return Cow::Borrowed(s);
    }
    let mut end = MAX_QUOTED_TYPE;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}…", &s[..end]))
}

/// Reads the fields of one command, with errors that carry its `id`.
struct Reader<'a> {
    fields: CommandFields<'a>,
    id: Option<Id>,
}

impl<'a> Reader<'a> {
    fn error(&self, field: &'static str, message: String) -> CommandError {
        CommandError::field(self.id.clone(), field, message)
    }

    fn missing(&self, index: usize) -> CommandError {
        let name = SCALAR_FIELDS[index];
        self.error(name, format!("missing field '{name}'"))
    }

    fn wrong_type(&self, index: usize, what: &str) -> CommandError {
        let name = SCALAR_FIELDS[index];
        self.error(name, format!("field '{name}' must be {what}"))
    }

    /// The field's value, `None` when absent or `null`.
    fn present(&mut self, index: usize) -> Option<Scalar<'a>> {
        match self.fields.scalars[index].take() {
            None | Some(Scalar::Null) => None,
            Some(value) => Some(value),
        }
    }

    fn required_str(&mut self, index: usize) -> Result<Cow<'a, str>, CommandError> {
        match self.fields.scalars[index].take() {
            Some(Scalar::Str(s)) => Ok(s),
            Some(_) => Err(self.wrong_type(index, "a string")),
            None => Err(self.missing(index)),
        }
    }

    fn optional_str(&mut self, index: usize) -> Result<Option<Cow<'a, str>>, CommandError> {
        match self.present(index) {
            None => Ok(None),
            Some(Scalar::Str(s)) => Ok(Some(s)),
            Some(_) => Err(self.wrong_type(index, "a string")),
        }
    }

    fn optional_bool(&mut self, index: usize, default: bool) -> Result<bool, CommandError> {
        match self.present(index) {
            None => Ok(default),
            Some(Scalar::Bool(b)) => Ok(b),
            Some(_) => Err(self.wrong_type(index, "a boolean")),
        }
    }

    fn optional_u32(&mut self, index: usize) -> Result<Option<u32>, CommandError> {
        match self.present(index) {
            None => Ok(None),
            Some(Scalar::U64(n)) => Ok(Some(u32::try_from(n).unwrap_or(u32::MAX))),
            Some(_) => Err(self.wrong_type(index, "a non-negative integer")),
        }
    }

    fn idempotency_key(&mut self) -> Result<Option<Cow<'a, str>>, CommandError> {
        match self.optional_str(IDEMPOTENCY_KEY)? {
            Some(k) if k.is_empty() || k.len() > MAX_IDEMPOTENCY_KEY_LEN => Err(self.error(
                "idempotency_key",
                format!(
                    "field 'idempotency_key' must be a string of 1 to {MAX_IDEMPOTENCY_KEY_LEN} bytes"
                ),
            )),
            key => Ok(key),
        }
    }

    fn since(&mut self) -> Result<Option<StreamPosition>, CommandError> {
        let (epoch, offset) = match self.fields.since.take() {
            None | Some(Since::Null) => return Ok(None),
            Some(Since::NotObject) => {
                return Err(self.error(
                    "since",
                    "field 'since' must be an object with 'epoch' and 'offset'".to_owned(),
                ));
            }
            Some(Since::Object {
                duplicate: Some(name),
                ..
            }) => return Err(self.error(name, dup(name))),
            Some(Since::Object { epoch, offset, .. }) => (epoch, offset),
        };
        let epoch = match epoch {
            Some(Scalar::Str(epoch)) => epoch.into_owned(),
            Some(_) => {
                return Err(self.error(
                    "since.epoch",
                    "field 'since.epoch' must be a string".to_owned(),
                ));
            }
            None => {
                return Err(self.error("since.epoch", "missing field 'since.epoch'".to_owned()));
            }
        };
        let offset = match offset {
            Some(Scalar::U64(offset)) => offset,
            Some(_) => {
                return Err(self.error(
                    "since.offset",
                    "field 'since.offset' must be a non-negative integer".to_owned(),
                ));
            }
            None => {
                return Err(self.error("since.offset", "missing field 'since.offset'".to_owned()));
            }
        };
        Ok(Some(StreamPosition { epoch, offset }))
    }
}

fn dup(name: &str) -> String {
    format!("duplicate field '{name}'")
}

/// Writes `command` as one JSON object (what a client sends). Fields with their default value
/// (`echo: true`, `ephemeral: false`, `reverse: false`, absent options) are left out.
pub fn encode_command<B: WireBuf + ?Sized>(out: &mut B, command: &Command<'_>) {
    put(out, b"{\"type\":\"");
    put(out, command.kind.type_name().as_bytes());
    put(out, b"\"");
    if let Some(id) = &command.id {
        put(out, b",\"id\":");
        put_id(out, id);
    }
    match &command.kind {
        CommandKind::Subscribe(c) => {
            put_str_field(out, "room", &c.room);
            put_since(out, c.since.as_ref());
            if let Some(token) = &c.token {
                put_str_field(out, "token", token);
            }
        }
        CommandKind::Unsubscribe { room } => put_str_field(out, "room", room),
        CommandKind::Publish(c) => {
            put_str_field(out, "room", &c.room);
            put(out, b",\"data\":");
            put_raw(out, c.data);
            if !c.echo {
                put(out, b",\"echo\":false");
            }
            if c.ephemeral {
                put(out, b",\"ephemeral\":true");
            }
            if let Some(key) = &c.idempotency_key {
                put_str_field(out, "idempotency_key", key);
            }
        }
        CommandKind::Presence(c) => {
            put_str_field(out, "room", &c.room);
            if let Some(cursor) = &c.cursor {
                put_str_field(out, "cursor", cursor);
            }
            if let Some(limit) = c.limit {
                put(out, b",\"limit\":");
                put_u64(out, limit.into());
            }
        }
        CommandKind::History(c) => {
            put_str_field(out, "room", &c.room);
            put_since(out, c.since.as_ref());
            if let Some(limit) = c.limit {
                put(out, b",\"limit\":");
                put_u64(out, limit.into());
            }
            if c.reverse {
                put(out, b",\"reverse\":true");
            }
        }
        CommandKind::Ping => {}
        CommandKind::Refresh { token } | CommandKind::Auth { token } => {
            put_str_field(out, "token", token);
        }
        CommandKind::Rpc(c) => {
            put_str_field(out, "method", &c.method);
            put(out, b",\"data\":");
            put_raw(out, c.data);
        }
    }
    put(out, b"}");
}

/// `,"name":"value"` (`name` must need no escaping).
fn put_str_field<B: WireBuf + ?Sized>(out: &mut B, name: &str, value: &str) {
    put(out, b",\"");
    put(out, name.as_bytes());
    put(out, b"\":");
    put_str(out, value);
}

fn put_since<B: WireBuf + ?Sized>(out: &mut B, since: Option<&StreamPosition>) {
    if let Some(since) = since {
        put(out, b",\"since\":{\"epoch\":");
        put_str(out, &since.epoch);
        put(out, b",\"offset\":");
        put_u64(out, since.offset);
        put(out, b"}");
    }
}
