//! The v1 JSON messages (docs/protocol.md sections 1-7): client commands and server messages.
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

// Imports run one way: `writer` uses nothing of `wire`; `types` uses `writer`; `command`
// and `server` use `types` and `writer`; `encode` uses all of them. This file only
// re-exports.
mod command;
mod encode;
mod scan;
mod server;
mod types;
mod writer;

#[cfg(test)]
mod tests;

pub use self::command::{
    Command, CommandError, CommandKind, HistoryCommand, PresenceCommand, PublishCommand,
    RpcCommand, SubscribeCommand, encode_command, parse_command,
};
pub use self::encode::{
    EmptyResult, HistoryResult, MemberPushKind, PresenceResult, Publication, PublishResult,
    RefreshResult, RpcResult, SubscribeResult, encode_command_error, encode_ephemeral_push,
    encode_ephemeral_push_raw, encode_error, encode_join, encode_leave, encode_member,
    encode_member_push_raw, encode_message_push, encode_message_push_raw, encode_pong,
    encode_refresh_required, encode_reply, encode_subscribed, encode_unsubscribed, encode_welcome,
};
pub use self::server::{
    ErrorReply, MemberPush, MessagePush, Reply, ServerMessage, SubscribedPush, UnsubscribedPush,
    Welcome, parse_server_message,
};
pub use self::types::{
    ErrorCode, Id, MAX_IDEMPOTENCY_KEY_LEN, MAX_NUMERIC_ID, MAX_ROOM_LEN, MAX_STRING_ID_LEN,
    Member, PROTOCOL_VERSION, SUBPROTOCOL, StreamPosition, namespace, validate_room,
};
pub use self::writer::WireBuf;
