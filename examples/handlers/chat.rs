//! A chat server: named users, rooms joined and left at will, JSON messages.
//!
//! Connect with `?name=NAME` (1 to [`MAX_NAME`] letters, digits, `-`, `_`, `.`). Every message
//! is a JSON object tagged by `type`, as Socket.IO events would be:
//!
//! | the client sends                      | the server answers                                  |
//! |---------------------------------------|-----------------------------------------------------|
//! | `{"type":"join","room":R}`            | `joined {room, name}` to everyone in R, you included |
//! | `{"type":"leave","room":R}`           | `left {room, name}` to you and to everyone in R     |
//! | `{"type":"say","room":R,"text":T}`    | `said {room, from, text}` to everyone in R, you included |
//! | `{"type":"rooms"}`                    | `rooms {rooms: [...]}` to you                       |
//!
//! A connection that closes is `left` in each of its rooms. Mistakes are answered with
//! `{"type":"error","code":C,"message":M}` and the connection stays open: `bad_request`
//! (not JSON, unknown type, a missing field or an invalid room name, named in the message),
//! `not_in_room` (saying or leaving where you have not joined), `too_long` (text over
//! [`MAX_TEXT`] characters), `too_many_rooms` (over [`MAX_ROOMS`] joined).

use serde::{Deserialize, Serialize};
use switchboard_server::{
    Accepted, Broadcast, CloseFrame, Connection, Handler, Incoming, Refusal, UpgradeContext, User,
};

use crate::{is_plain_name, name_param};

/// The longest name, in bytes.
pub const MAX_NAME: usize = 32;
/// The longest room name, in bytes.
pub const MAX_ROOM: usize = 64;
/// The longest text of a `say`, in characters.
pub const MAX_TEXT: usize = 1000;
/// How many rooms one connection may be in at once.
pub const MAX_ROOMS: usize = 16;

/// Prefixes the hub's room names, so chat rooms cannot meet another route's rooms on the
/// same server (the lobby's `lobby`, for one).
const ROOM_PREFIX: &str = "chat:";

/// The chat route's handler; it keeps no shared state (the hub keeps the rooms).
#[derive(Debug, Clone, Copy, Default)]
pub struct Chat;

/// Per-connection state: who is talking.
#[derive(Debug)]
pub struct Member {
    /// The name given with `?name=`.
    pub name: String,
}

/// What a client sends.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// Join `room`.
    Join {
        /// The room.
        room: String,
    },
    /// Leave `room`.
    Leave {
        /// The room.
        room: String,
    },
    /// Say `text` in `room`.
    Say {
        /// The room, which the sender must have joined.
        room: String,
        /// What is said.
        text: String,
    },
    /// Which rooms am I in?
    Rooms,
}

/// What the server sends.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage<'a> {
    /// Sent once on connect.
    Welcome {
        /// The caller's name.
        name: &'a str,
    },
    /// `name` joined `room`.
    Joined {
        /// The room.
        room: &'a str,
        /// Who joined.
        name: &'a str,
    },
    /// `name` left `room`.
    Left {
        /// The room.
        room: &'a str,
        /// Who left.
        name: &'a str,
    },
    /// `from` said `text` in `room`.
    Said {
        /// The room.
        room: &'a str,
        /// Who said it.
        from: &'a str,
        /// What was said.
        text: &'a str,
    },
    /// The rooms the caller is in, sorted.
    Rooms {
        /// Their names.
        rooms: Vec<&'a str>,
    },
    /// A request was refused; the connection stays open.
    Error {
        /// What kind of mistake (`bad_request`, `not_in_room`, `too_long`, `too_many_rooms`).
        code: &'a str,
        /// What was wrong, naming the field at fault.
        message: String,
    },
}

impl ServerMessage<'_> {
    /// The message as a text payload for a broadcast.
    fn payload(&self) -> Incoming {
        let json = serde_json::to_string(self).expect("server messages serialize");
        Incoming::Text(json.into())
    }
}

fn error(conn: &mut Connection<Member>, code: &str, message: String) {
    let _ = conn.send_json(&ServerMessage::Error { code, message });
}

impl Handler for Chat {
    type State = Member;

    async fn authenticate(
        &self,
        request: &UpgradeContext<'_>,
    ) -> Result<Accepted<Member>, Refusal> {
        let name = name_param(request, MAX_NAME)?;
        Ok(Accepted {
            user: User {
                id: name.into(),
                ..User::default()
            },
            state: Member { name: name.into() },
        })
    }

    async fn on_connect(&self, conn: &mut Connection<Member>) {
        let name = conn.state.name.clone();
        let welcome = ServerMessage::Welcome { name: &name };
        let _ = conn.send_json(&welcome);
    }

    async fn on_message(&self, conn: &mut Connection<Member>, message: Incoming) {
        // Bad JSON is answered by parse_json itself.
        let Some(request) = conn.parse_json::<ClientMessage>(&message) else {
            return;
        };
        match request {
            ClientMessage::Join { room } => join(conn, &room).await,
            ClientMessage::Leave { room } => leave(conn, &room).await,
            ClientMessage::Say { room, text } => say(conn, &room, &text).await,
            ClientMessage::Rooms => {
                let mut rooms: Vec<String> = conn
                    .rooms()
                    .filter_map(|r| r.strip_prefix(ROOM_PREFIX))
                    .map(str::to_string)
                    .collect();
                rooms.sort();
                let rooms = rooms.iter().map(String::as_str).collect();
                let _ = conn.send_json(&ServerMessage::Rooms { rooms });
            }
        }
    }

    async fn on_close(&self, conn: &mut Connection<Member>, _close: Option<&CloseFrame>) {
        let rooms: Vec<String> = conn.rooms().map(str::to_string).collect();
        for key in rooms {
            let Some(room) = key.strip_prefix(ROOM_PREFIX) else {
                continue;
            };
            let left = ServerMessage::Left {
                room,
                name: &conn.state.name,
            };
            conn.broadcast(&[&key], left.payload(), Broadcast::others())
                .await;
        }
    }
}

/// The hub's name for `room`, when the room name is valid; otherwise answers the error.
fn room_key(conn: &mut Connection<Member>, room: &str) -> Option<String> {
    if is_plain_name(room, MAX_ROOM) {
        Some(format!("{ROOM_PREFIX}{room}"))
    } else {
        let message = format!("field 'room': 1 to {MAX_ROOM} letters, digits, '-', '_' or '.'");
        error(conn, "bad_request", message);
        None
    }
}

fn is_member(conn: &Connection<Member>, key: &str) -> bool {
    conn.rooms().any(|r| r == key)
}

async fn join(conn: &mut Connection<Member>, room: &str) {
    let Some(key) = room_key(conn, room) else {
        return;
    };
    if is_member(conn, &key) {
        // Joining twice is harmless; say so again, to the caller only.
        let name = conn.state.name.clone();
        let joined = ServerMessage::Joined { room, name: &name };
        let _ = conn.send_json(&joined);
        return;
    }
    if conn.rooms().count() >= MAX_ROOMS {
        let message = format!("at most {MAX_ROOMS} rooms at once; leave one first");
        return error(conn, "too_many_rooms", message);
    }
    conn.join(&key).await;
    let joined = ServerMessage::Joined {
        room,
        name: &conn.state.name,
    };
    conn.broadcast(&[&key], joined.payload(), Broadcast::everyone())
        .await;
}

async fn leave(conn: &mut Connection<Member>, room: &str) {
    let Some(key) = room_key(conn, room) else {
        return;
    };
    if !is_member(conn, &key) {
        return error(conn, "not_in_room", format!("you have not joined '{room}'"));
    }
    conn.leave(&key).await;
    let name = conn.state.name.clone();
    let left = ServerMessage::Left { room, name: &name };
    // The caller is no longer a member: tell it directly, then the room.
    let _ = conn.send_json(&left);
    conn.broadcast(&[&key], left.payload(), Broadcast::others())
        .await;
}

async fn say(conn: &mut Connection<Member>, room: &str, text: &str) {
    let Some(key) = room_key(conn, room) else {
        return;
    };
    if !is_member(conn, &key) {
        return error(
            conn,
            "not_in_room",
            format!("join '{room}' before saying anything there"),
        );
    }
    if text.chars().count() > MAX_TEXT {
        return error(
            conn,
            "too_long",
            format!("field 'text': at most {MAX_TEXT} characters"),
        );
    }
    let said = ServerMessage::Said {
        room,
        from: &conn.state.name,
        text,
    };
    conn.broadcast(&[&key], said.payload(), Broadcast::everyone())
        .await;
}
