//! `switchboard connect`: an interactive protocol session, like `wscat`.
//!
//! Lines typed on stdin are sent: a JSON line as it is (a command), or a shortcut:
//!
//! ```text
//! /sub ROOM [EPOCH:OFFSET]   subscribe (recovering after EPOCH:OFFSET)
//! /unsub ROOM                unsubscribe
//! /pub ROOM DATA             publish DATA (JSON, or any other text as a JSON string)
//! /presence ROOM             who is in the room
//! /history ROOM [LIMIT]      the room's retained publications
//! /rpc METHOD [DATA]         call the backend's rpc proxy with DATA (JSON or text; none: null)
//! /ping                      application ping
//! /quit                      close and exit (so does the end of stdin)
//! ```
//!
//! Every message received is printed on stdout as one line, `< ` then the JSON exactly as
//! the server sent it; what is sent is echoed as `> ` when stdin is a terminal. Notes go to
//! stderr. It uses the raw WebSocket connection, so it shows exactly what the server sends,
//! and it does not reconnect.

use std::{io::IsTerminal, process::ExitCode, time::Duration};

use clap::Args;
use serde_json::value::RawValue;
use switchboard_client::{Error, WsOptions, WsStream};
use switchboard_protocol::{
    CloseCode, CloseFrame,
    codec::Message,
    frame::OpCode,
    wire::{self, Command, CommandKind, HistoryCommand, Id, StreamPosition},
};
use tokio::io::AsyncBufReadExt;

use crate::token::AuthArgs;

/// Options of `connect`.
#[derive(Debug, Args)]
pub(crate) struct ConnectArgs {
    /// The server's protocol route (ws:// or wss://).
    #[arg(env = "SWITCHBOARD_URL", default_value = "ws://127.0.0.1:8080/ws")]
    url: String,
    /// A PEM file of CA certificates trusted for wss:// besides the system's trust store.
    #[arg(long, value_name = "FILE")]
    ca: Option<std::path::PathBuf>,
    #[command(flatten)]
    auth: AuthArgs,
    /// Do not offer permessage-deflate.
    #[arg(long)]
    no_deflate: bool,
    /// Subscribe to ROOM at start (repeatable).
    #[arg(long = "sub", value_name = "ROOM")]
    subscribe: Vec<String>,
    /// Subscribe to ROOM at start, recovering the publications after EPOCH:OFFSET
    /// (repeatable). The reply shows `recovered` and the recovered publications.
    #[arg(long, value_name = "ROOM=EPOCH:OFFSET", value_parser = parse_since)]
    since: Vec<(String, StreamPosition)>,
}

const HELP: &str = "\
type a JSON command, or:
  /sub ROOM [EPOCH:OFFSET]   subscribe (recovering after EPOCH:OFFSET)
  /unsub ROOM                unsubscribe
  /pub ROOM DATA             publish DATA (JSON, or text sent as a JSON string)
  /presence ROOM             who is subscribed
  /history ROOM [LIMIT]      retained publications
  /rpc METHOD [DATA]         call the backend (rpc proxy) with DATA (JSON or text)
  /ping                      application ping
  /quit                      close and exit (so does end of input)";

fn parse_position(text: &str) -> Result<StreamPosition, String> {
    let (epoch, offset) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("'{text}': expected EPOCH:OFFSET"))?;
    let offset = offset
        .parse()
        .map_err(|_| format!("'{text}': the offset must be a non-negative integer"))?;
    if epoch.is_empty() {
        return Err(format!("'{text}': the epoch is empty"));
    }
    Ok(StreamPosition::new(epoch, offset))
}

fn parse_since(text: &str) -> Result<(String, StreamPosition), String> {
    let (room, position) = text
        .split_once('=')
        .ok_or_else(|| format!("'{text}': expected ROOM=EPOCH:OFFSET"))?;
    Ok((room.to_owned(), parse_position(position)?))
}

/// What a line of input asks for.
#[derive(Debug, PartialEq)]
enum Input {
    /// Send this text.
    Send(String),
    Quit,
    Help,
    Nothing,
    /// Tell the user.
    Invalid(String),
}

/// Turns a line into a command; shortcut commands get ids 1, 2, … from `next_id`.
fn parse_line(line: &str, next_id: &mut u64) -> Input {
    let line = line.trim();
    if line.is_empty() {
        return Input::Nothing;
    }
    if !line.starts_with('/') {
        return match serde_json::from_str::<&RawValue>(line) {
            Ok(_) => {
                // Shortcuts continue after the largest numeric id typed, not to reuse it.
                let id = serde_json::from_str::<serde_json::Value>(line)
                    .ok()
                    .and_then(|v| v.get("id").and_then(serde_json::Value::as_u64));
                if let Some(id) = id {
                    *next_id = (*next_id).max(id.saturating_add(1));
                }
                Input::Send(line.to_owned())
            }
            Err(e) => Input::Invalid(format!("not JSON ({e}); /help lists the shortcuts")),
        };
    }
    let (name, rest) = split_word(line);
    let (first, rest) = split_word(rest);
    let first = Some(first).filter(|w| !w.is_empty());
    let rest = Some(rest).filter(|w| !w.is_empty());
    let kind = match (name, first, rest) {
        ("/quit" | "/exit", None, None) => return Input::Quit,
        ("/help", _, _) => return Input::Help,
        ("/ping", None, None) => CommandKind::Ping,
        ("/sub", Some(room), since) => {
            let since = match since.map(parse_position).transpose() {
                Ok(since) => since,
                Err(e) => return Input::Invalid(e),
            };
            CommandKind::Subscribe(wire::SubscribeCommand {
                room: room.into(),
                since,
                token: None,
            })
        }
        ("/unsub", Some(room), None) => CommandKind::Unsubscribe { room: room.into() },
        ("/presence", Some(room), None) => CommandKind::Presence(wire::PresenceCommand {
            room: room.into(),
            cursor: None,
            limit: None,
        }),
        ("/history", Some(room), limit) => {
            let limit = match limit.map(str::parse::<u32>).transpose() {
                Ok(limit) => limit,
                Err(_) => return Input::Invalid("/history ROOM [LIMIT]: bad LIMIT".into()),
            };
            CommandKind::History(HistoryCommand {
                room: room.into(),
                since: None,
                limit,
                reverse: false,
            })
        }
        ("/pub", Some(room), Some(data)) => {
            let data = json_or_string(data);
            let id = take_id(next_id);
            let command = Command {
                id: Some(id),
                kind: CommandKind::Publish(wire::PublishCommand {
                    room: room.into(),
                    data: &data,
                    echo: true,
                    ephemeral: false,
                    idempotency_key: None,
                }),
            };
            return Input::Send(encode(&command));
        }
        ("/rpc", Some(method), data) => {
            let data = data.map_or_else(|| json_or_string("null"), json_or_string);
            let id = take_id(next_id);
            let command = Command {
                id: Some(id),
                kind: CommandKind::Rpc(wire::RpcCommand {
                    method: method.into(),
                    data: &data,
                }),
            };
            return Input::Send(encode(&command));
        }
        _ => return Input::Invalid(format!("cannot read '{line}'; /help lists the shortcuts")),
    };
    let command = Command {
        id: Some(take_id(next_id)),
        kind,
    };
    Input::Send(encode(&command))
}

/// The first word of `s` and the rest, trimmed.
fn split_word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find(char::is_whitespace) {
        Some(i) => (&s[..i], s[i..].trim()),
        None => (s, ""),
    }
}

fn take_id(next_id: &mut u64) -> Id {
    let id = *next_id;
    *next_id += 1;
    Id::Number(id)
}

fn encode(command: &Command<'_>) -> String {
    let mut out = Vec::new();
    wire::encode_command(&mut out, command);
    String::from_utf8(out).unwrap_or_default()
}

/// `text` as JSON when it is JSON, else as a JSON string.
pub(crate) fn json_or_string(text: &str) -> Box<RawValue> {
    match serde_json::from_str::<Box<RawValue>>(text) {
        Ok(raw) => raw,
        Err(_) => {
            let quoted = serde_json::to_string(text).unwrap_or_else(|_| "null".into());
            RawValue::from_string(quoted).unwrap_or_else(|_| RawValue::NULL.to_owned())
        }
    }
}

/// How a refused or failed connection is told to the user.
pub(crate) fn describe_connect_error(url: &str, e: &Error) -> String {
    match e.http_status() {
        Some(401) => format!(
            "the server refused the connection to {url}: {e} (give --token JWT, or --user NAME \
             to mint a dev token)"
        ),
        Some(_) => format!("the server refused the connection to {url}: {e}"),
        None => format!("cannot connect to {url}: {e}"),
    }
}

pub(crate) fn run(args: ConnectArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(session(args))
}

fn print_received(text: &str) {
    if text.contains(['\n', '\r']) {
        // Keep one message per line.
        match serde_json::from_str::<serde_json::Value>(text) {
            Ok(value) => println!("< {value}"),
            Err(_) => println!("< {}", text.replace(['\n', '\r'], " ")),
        }
    } else {
        println!("< {text}");
    }
}

async fn session(args: ConnectArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let mut headers = Vec::new();
    if let Some(token) = args.auth.token()? {
        headers.push(("Authorization".to_owned(), format!("Bearer {token}")));
    }
    let options = WsOptions {
        protocols: vec![wire::SUBPROTOCOL.to_owned()],
        deflate: !args.no_deflate,
        headers,
        max_message_size: 64 << 20,
        ca: args.ca.clone(),
    };
    let mut ws = match WsStream::connect(&args.url, &options).await {
        Ok(ws) => ws,
        Err(e) => {
            eprintln!(
                "switchboard connect: {}",
                describe_connect_error(&args.url, &e)
            );
            return Ok(ExitCode::from(1));
        }
    };
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!(
            "connected to {} (deflate {}); /help lists the shortcuts",
            args.url,
            if ws.accepted().deflate.is_some() {
                "on"
            } else {
                "off"
            }
        );
    }

    let mut next_id = 1u64;
    let mut initial = Vec::new();
    for room in &args.subscribe {
        initial.push(format!("/sub {room}"));
    }
    for (room, since) in &args.since {
        initial.push(format!("/sub {room} {}:{}", since.epoch, since.offset));
    }
    for line in initial {
        if let Input::Send(text) = parse_line(&line, &mut next_id) {
            if interactive {
                println!("> {text}");
            }
            ws.send_text(&text).await?;
        }
    }

    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            message = ws.recv_any() => match message {
                Ok(Some(Message::Text(text))) => print_received(text.as_str()),
                Ok(Some(Message::Ping(payload))) => ws.send(OpCode::Pong, &payload).await?,
                Ok(Some(Message::Pong(_))) => {}
                Ok(Some(Message::Binary(bytes))) => {
                    eprintln!("(a binary message of {} bytes)", bytes.len());
                }
                Ok(Some(Message::Close(frame))) => {
                    let _ = ws.close(frame.as_ref()).await;
                    return Ok(match frame {
                        Some(f) => {
                            eprintln!("closed by the server: {} {}", f.code.0, f.reason_str());
                            if f.code == CloseCode::NORMAL { ExitCode::SUCCESS } else { ExitCode::from(1) }
                        }
                        None => {
                            eprintln!("closed by the server (no code)");
                            ExitCode::from(1)
                        }
                    });
                }
                Ok(None) => {
                    eprintln!("switchboard connect: the connection ended without a close frame");
                    return Ok(ExitCode::from(1));
                }
                Err(e) => {
                    eprintln!("switchboard connect: {e}");
                    return Ok(ExitCode::from(1));
                }
            },
            line = lines.next_line() => {
                let line = match line? {
                    None => return close(&mut ws).await,
                    Some(line) => line,
                };
                match parse_line(&line, &mut next_id) {
                    Input::Send(text) => {
                        if interactive {
                            println!("> {text}");
                        }
                        ws.send_text(&text).await?;
                    }
                    Input::Quit => return close(&mut ws).await,
                    Input::Help => eprintln!("{HELP}"),
                    Input::Nothing => {}
                    Input::Invalid(why) => eprintln!("{why}"),
                }
            }
        }
    }
}

/// Closes normally, printing what still arrives, and waits (a while) for the server's close.
async fn close(ws: &mut WsStream) -> Result<ExitCode, Box<dyn std::error::Error>> {
    ws.close(Some(&CloseFrame::new(CloseCode::NORMAL, "")))
        .await?;
    let drained = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.recv_any().await {
                Ok(Some(Message::Text(text))) => print_received(text.as_str()),
                Ok(Some(Message::Close(_)) | None) => return true,
                Ok(Some(_)) => {}
                Err(_) => return false,
            }
        }
    })
    .await;
    Ok(match drained {
        Ok(true) => ExitCode::SUCCESS,
        _ => {
            eprintln!("switchboard connect: the server did not complete the close handshake");
            ExitCode::from(1)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(line: &str, id: &mut u64) -> String {
        match parse_line(line, id) {
            Input::Send(text) => text,
            other => panic!("{line}: {other:?}"),
        }
    }

    #[test]
    fn shortcuts_become_commands_with_ids() {
        let mut id = 1;
        assert_eq!(
            send("/sub chat:lobby", &mut id),
            r#"{"type":"subscribe","id":1,"room":"chat:lobby"}"#
        );
        assert_eq!(
            send("/sub chat:lobby e1:41", &mut id),
            r#"{"type":"subscribe","id":2,"room":"chat:lobby","since":{"epoch":"e1","offset":41}}"#
        );
        assert_eq!(
            send("/pub chat:lobby hello  there", &mut id),
            r#"{"type":"publish","id":3,"room":"chat:lobby","data":"hello  there"}"#
        );
        assert_eq!(
            send(r#"/pub r {"text": "hi"}"#, &mut id),
            r#"{"type":"publish","id":4,"room":"r","data":{"text": "hi"}}"#
        );
        assert_eq!(
            send("/history r 5", &mut id),
            r#"{"type":"history","id":5,"room":"r","limit":5}"#
        );
        assert_eq!(
            send("/presence r", &mut id),
            r#"{"type":"presence","id":6,"room":"r"}"#
        );
        assert_eq!(
            send("/unsub r", &mut id),
            r#"{"type":"unsubscribe","id":7,"room":"r"}"#
        );
        assert_eq!(send("/ping", &mut id), r#"{"type":"ping","id":8}"#);
        assert_eq!(
            send(r#"/rpc history {"room": "chat:a"}"#, &mut id),
            r#"{"type":"rpc","id":9,"method":"history","data":{"room": "chat:a"}}"#
        );
        assert_eq!(
            send("/rpc whoami", &mut id),
            r#"{"type":"rpc","id":10,"method":"whoami","data":null}"#
        );
        // JSON goes as it is and takes no id; shortcuts then continue after its id.
        assert_eq!(send(r#" {"type":"ping"} "#, &mut id), r#"{"type":"ping"}"#);
        assert_eq!(id, 11);
        send(r#"{"type":"ping","id":20}"#, &mut id);
        assert_eq!(send("/ping", &mut id), r#"{"type":"ping","id":21}"#);
        assert_eq!(parse_line("/quit", &mut id), Input::Quit);
        assert_eq!(parse_line("   ", &mut id), Input::Nothing);
        assert_eq!(
            send("/unsub   spaced ", &mut id),
            r#"{"type":"unsubscribe","id":22,"room":"spaced"}"#
        );
        for bad in ["hello", "/sub", "/pub r", "/sub r nope", "/frob x", "{"] {
            assert!(
                matches!(parse_line(bad, &mut id), Input::Invalid(_)),
                "{bad}"
            );
        }
    }

    #[test]
    fn since_arguments() {
        assert_eq!(
            parse_since("chat:lobby=e8f1:41").unwrap(),
            ("chat:lobby".into(), StreamPosition::new("e8f1", 41))
        );
        assert!(parse_since("chat:lobby").is_err());
        assert!(parse_since("r=e").is_err());
        assert!(parse_since("r=:4").is_err());
    }
}
