//! Helpers for the v1 protocol tests: a server started from a TOML config, tokens, a JSON
//! client over `WsStream`, a raw-socket client for what `WsStream` does for us (answering
//! pings, reading), and a seeded RNG.
#![allow(dead_code, unreachable_pub)]

use std::{
    collections::VecDeque,
    net::SocketAddr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde_json::{Value, json};
use switchboard_client::{WsOptions, WsStream};
use switchboard_protocol::{CloseFrame, codec::Message, wire};
use switchboard_server::auth::{HmacAlgorithm, MintClaims, mint};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use super::common::ServerProcess;

/// The HMAC secret of every test config (32+ bytes, so the server does not warn).
pub const SECRET: &str = "switchboard-protocol-tests-secret-0123456789";

/// How long any single awaited event may take before the test fails.
pub const T: Duration = Duration::from_secs(10);

/// A `switchboard serve --config <file>` process.
pub struct TestServer {
    pub process: ServerProcess,
    _dir: tempfile::TempDir,
}

impl TestServer {
    /// Starts the server with `config` (TOML, without `listen`: the test picks the port).
    pub fn start(config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("switchboard.toml");
        std::fs::write(&path, config).unwrap();
        let process = ServerProcess::start(&["--config", path.to_str().unwrap()]);
        TestServer { process, _dir: dir }
    }

    /// Starts the server with `config` and the environment variables `env` (a broker's
    /// settings, as an orchestrator would pass them).
    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("switchboard.toml");
        std::fs::write(&path, config).unwrap();
        let process = ServerProcess::start_with_env(&["--config", path.to_str().unwrap()], env);
        TestServer { process, _dir: dir }
    }

    /// The status of `GET /readyz`.
    pub fn ready(&self) -> u16 {
        super::common::get(self.process.addr, "/readyz").0
    }

    pub fn addr(&self) -> SocketAddr {
        self.process.addr
    }

    pub fn url(&self) -> String {
        self.process.ws_url("/ws")
    }

    pub fn pid(&self) -> u32 {
        self.process.child.id()
    }

    /// Connects as `sub` with a token of one hour and reads the welcome.
    pub async fn connect(&self, sub: &str) -> Client {
        Client::connect(&self.url(), Some(&token(sub))).await
    }
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Mints a connection token signed with [`SECRET`].
pub fn mint_token(
    sub: &str,
    ttl: Option<Duration>,
    rooms: &[&str],
    info: Option<Value>,
    room: Option<&str>,
) -> String {
    mint(
        SECRET.as_bytes(),
        HmacAlgorithm::HS256,
        &MintClaims {
            sub: sub.into(),
            ttl,
            rooms: rooms.iter().map(|r| r.to_string()).collect(),
            info: info.map(|i| i.as_object().expect("info is an object").clone()),
            room: room.map(str::to_string),
            audience: None,
            issuer: None,
        },
    )
}

/// A one-hour connection token for `sub`.
pub fn token(sub: &str) -> String {
    mint_token(sub, Some(Duration::from_secs(3600)), &[], None, None)
}

/// A token with arbitrary claims and header, signed with `secret` (for refusal tests).
pub fn raw_token(header: jsonwebtoken::Header, claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &header,
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// Unpadded base64url (for hand-made JWTs whose signature is never checked).
pub fn b64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// What the next frame of a connection was.
#[derive(Debug)]
pub enum Frame {
    Json(Value),
    Binary(Vec<u8>),
    Close(Option<CloseFrame>),
    /// TCP ended (or was reset) without a close frame.
    Eof,
}

/// A protocol client: JSON commands over [`WsStream`], replies matched by id, pushes kept
/// in arrival order until asked for.
pub struct Client {
    pub ws: WsStream,
    /// Frames received while waiting for something else, in arrival order.
    pub backlog: VecDeque<Value>,
    pub welcome: Value,
    next_id: u64,
}

impl Client {
    /// Connects with an `Authorization: Bearer` header (when `token` is given) and reads the
    /// welcome.
    pub async fn connect(url: &str, token: Option<&str>) -> Client {
        let mut opts = WsOptions {
            deflate: false,
            ..Default::default()
        };
        if let Some(t) = token {
            opts.headers
                .push(("Authorization".into(), format!("Bearer {t}")));
        }
        Self::connect_with(url, &opts).await
    }

    /// Connects with `opts` and reads the welcome.
    pub async fn connect_with(url: &str, opts: &WsOptions) -> Client {
        let ws = tokio::time::timeout(T, WsStream::connect(url, opts))
            .await
            .expect("handshake within the timeout")
            .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
        let mut c = Client {
            ws,
            backlog: VecDeque::new(),
            welcome: Value::Null,
            next_id: 1000,
        };
        let welcome = c.recv().await;
        assert_eq!(welcome["type"], "welcome", "first frame: {welcome}");
        c.welcome = welcome;
        c
    }

    /// The connection id from the welcome.
    pub fn id(&self) -> String {
        self.welcome["connection"].as_str().unwrap().to_string()
    }

    /// Sends a JSON value as one text message.
    pub async fn send(&mut self, v: &Value) {
        self.send_text(&v.to_string()).await;
    }

    /// Sends text as it is.
    pub async fn send_text(&mut self, text: &str) {
        self.ws.send_text(text).await.expect("send");
    }

    /// The next frame from the socket (not the backlog), within [`T`].
    pub async fn frame(&mut self) -> Frame {
        let msg = tokio::time::timeout(T, self.ws.recv())
            .await
            .expect("a frame within the timeout");
        match msg {
            Ok(Some(Message::Text(t))) => {
                let text = t.as_str();
                // Every server message must also be readable by the protocol crate's parser.
                if let Err(e) = wire::parse_server_message(text) {
                    panic!("parse_server_message refused {text}: {e}");
                }
                Frame::Json(serde_json::from_str(text).expect("server sends JSON"))
            }
            Ok(Some(Message::Binary(b))) => Frame::Binary(b.to_vec()),
            Ok(Some(Message::Close(f))) => Frame::Close(f),
            Ok(Some(other)) => panic!("unexpected control frame {other:?}"),
            Ok(None) => Frame::Eof,
            Err(switchboard_client::Error::Io(_)) => Frame::Eof,
            Err(e) => panic!("recv: {e}"),
        }
    }

    /// The next JSON message: the oldest in the backlog, else from the socket.
    pub async fn recv(&mut self) -> Value {
        if let Some(v) = self.backlog.pop_front() {
            return v;
        }
        match self.frame().await {
            Frame::Json(v) => v,
            other => panic!("expected a JSON message, got {other:?}"),
        }
    }

    /// Sends `cmd` (giving it a fresh numeric id when it has none) and returns the `reply` or
    /// `error` with that id; other messages received meanwhile go to the backlog.
    pub async fn request(&mut self, mut cmd: Value) -> Value {
        if cmd.get("id").is_none() {
            self.next_id += 1;
            cmd["id"] = json!(self.next_id);
        }
        let id = cmd["id"].clone();
        self.send(&cmd).await;
        self.answer(&id).await
    }

    /// Waits for the `reply`/`error`/`pong` carrying `id`.
    pub async fn answer(&mut self, id: &Value) -> Value {
        if let Some(i) = self.backlog.iter().position(|v| is_answer(v, id)) {
            return self.backlog.remove(i).unwrap();
        }
        loop {
            match self.frame().await {
                Frame::Json(v) if is_answer(&v, id) => return v,
                Frame::Json(v) => self.backlog.push_back(v),
                other => panic!("waiting for the answer to id {id}, got {other:?}"),
            }
        }
    }

    /// Sends `cmd` and returns its `result`, failing on an `error`.
    pub async fn ok(&mut self, cmd: Value) -> Value {
        let answer = self.request(cmd.clone()).await;
        assert_eq!(answer["type"], "reply", "{cmd} was answered with {answer}");
        answer["result"].clone()
    }

    /// Sends `cmd` and returns the `error` (failing on a `reply`), after checking its code.
    pub async fn err(&mut self, cmd: Value, code: &str) -> Value {
        let answer = self.request(cmd.clone()).await;
        assert_eq!(answer["type"], "error", "{cmd} was answered with {answer}");
        assert_eq!(answer["code"], code, "{cmd} was answered with {answer}");
        assert!(
            answer["message"].as_str().is_some_and(|m| !m.is_empty()),
            "error without a message: {answer}"
        );
        answer
    }

    pub async fn subscribe(&mut self, room: &str) -> Value {
        self.ok(json!({"type": "subscribe", "room": room})).await
    }

    /// Subscribes with `since` (protocol 4.3): the reply's result.
    pub async fn subscribe_since(
        &mut self,
        room: &str,
        epoch: &impl serde::Serialize,
        offset: u64,
    ) -> Value {
        self.ok(json!({"type": "subscribe", "room": room,
                       "since": {"epoch": epoch, "offset": offset}}))
            .await
    }

    pub async fn publish(&mut self, room: &str, data: Value) -> Value {
        self.ok(json!({"type": "publish", "room": room, "data": data}))
            .await
    }

    /// Sends a ping with a fresh id and returns every message that arrived before its pong
    /// (backlog included). Commands are answered in order, so whatever a command sent before
    /// it has arrived by then.
    pub async fn sync(&mut self) -> Vec<Value> {
        self.next_id += 1;
        let id = json!(self.next_id);
        self.send(&json!({"type": "ping", "id": id})).await;
        let mut before: Vec<Value> = self.backlog.drain(..).collect();
        loop {
            match self.frame().await {
                Frame::Json(v) if v["type"] == "pong" && v["id"] == id => return before,
                Frame::Json(v) => before.push(v),
                other => panic!("waiting for pong {id}, got {other:?}"),
            }
        }
    }

    /// The next message matching `pred` (searching the backlog first); others stay in the
    /// backlog in order.
    pub async fn expect(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.backlog.iter().position(&pred) {
            return self.backlog.remove(i).unwrap();
        }
        loop {
            match self.frame().await {
                Frame::Json(v) if pred(&v) => return v,
                Frame::Json(v) => self.backlog.push_back(v),
                other => panic!("waiting for {what}, got {other:?}"),
            }
        }
    }

    /// The next `type` push of `room`.
    pub async fn push(&mut self, kind: &str, room: &str) -> Value {
        let what = format!("a {kind} push of {room}");
        self.expect(&what, |v| v["type"] == kind && v["room"] == room)
            .await
    }

    /// Reads until the close frame, ignoring messages; returns its code.
    pub async fn closed(&mut self) -> Option<u16> {
        loop {
            match self.frame().await {
                Frame::Json(_) | Frame::Binary(_) => {}
                Frame::Close(f) => return f.map(|f| f.code.0),
                Frame::Eof => panic!("TCP ended without a close frame"),
            }
        }
    }
}

fn is_answer(v: &Value, id: &Value) -> bool {
    matches!(v["type"].as_str(), Some("reply" | "error" | "pong")) && &v["id"] == id
}

/// A WebSocket connection done by hand over TCP: no automatic pong, reads only when asked.
pub struct RawWs {
    pub stream: TcpStream,
    pub buf: Vec<u8>,
    /// The response head (status line and headers).
    pub head: String,
}

impl RawWs {
    /// Upgrades `path` with `headers`, optionally with a small receive buffer (set before
    /// connecting, so the window stays small).
    pub async fn connect(
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
        recv_buffer: Option<u32>,
    ) -> RawWs {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        if let Some(size) = recv_buffer {
            socket.set_recv_buffer_size(size).unwrap();
        }
        let mut stream = tokio::time::timeout(T, socket.connect(addr))
            .await
            .unwrap()
            .unwrap();
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(T, stream.read(&mut chunk))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "server closed during the handshake");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        buf.drain(..head_end);
        RawWs { stream, buf, head }
    }

    /// The next frame as (opcode, payload) (server frames are unmasked and, here, never
    /// fragmented or compressed), or `None` at EOF or reset. Waits at most `timeout`.
    pub async fn frame(&mut self, timeout: Duration) -> Option<(u8, Vec<u8>)> {
        tokio::time::timeout(timeout, self.frame_inner())
            .await
            .expect("a frame or EOF within the timeout")
    }

    async fn frame_inner(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if let Some((opcode, payload, used)) = parse_frame(&self.buf) {
                self.buf.drain(..used);
                return Some((opcode, payload));
            }
            let mut chunk = vec![0u8; 64 * 1024];
            match self.stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

/// What [`RawWs::frame`] returns for bytes that are not a server frame (a masked frame).
pub const OP_INVALID: u8 = 0xff;

/// One unmasked server frame at the start of `buf`: (opcode, payload, bytes used).
fn parse_frame(buf: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let opcode = buf[0] & 0x0f;
    if buf[1] & 0x80 != 0 {
        return Some((OP_INVALID, buf.to_vec(), buf.len()));
    }
    let (len, start) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (usize::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        127 if buf.len() >= 10 => (
            usize::try_from(u64::from_be_bytes(buf[2..10].try_into().unwrap())).unwrap(),
            10,
        ),
        126 | 127 => return None,
        n => (usize::from(n), 2),
    };
    if buf.len() < start + len {
        return None;
    }
    Some((opcode, buf[start..start + len].to_vec(), start + len))
}

/// Opcode of a text frame.
pub const OP_TEXT: u8 = 0x1;
/// Opcode of a close frame.
pub const OP_CLOSE: u8 = 0x8;
/// Opcode of a ping frame.
pub const OP_PING: u8 = 0x9;

/// SplitMix64: a small seeded RNG, so a failing run can be replayed.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo)
    }
}

/// Resident memory of a process in KiB (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}
