//! Raw client connections, built to cost less per message than the server they measure.
//!
//! - Client frames are masked with the key `0,0,0,0` (legal: RFC 6455 requires the mask bit,
//!   not a random key from a load generator), so the payload is copied as it is, never XORed.
//! - Server frames are parsed by header only: no UTF-8 validation, no JSON parsing. A scenario
//!   looks at the few bytes it needs (a timestamp, an id) in the payload it is handed.
//! - Output is appended to one buffer and written with one non-blocking `write` whenever the
//!   socket takes it, so a batch of frames costs one system call; input is read into one buffer
//!   and every complete frame in it is handed out before the next `read`.
//! - Buffers are allocated once per connection and grow only for a frame larger than them.
//! - permessage-deflate is offered only when asked for ([`Dial::deflate`], `bench connect
//!   --deflate`, to measure the server's memory with compression negotiated). Compressed
//!   frames (RSV1) are then legal but handed out as they are, compressed; only
//!   [`Conn::message`] inflates one, for the few messages a scenario must read during set-up.

use std::{
    borrow::Cow,
    fmt,
    io::{self, ErrorKind},
    net::{IpAddr, SocketAddr},
    ops::Range,
    time::Duration,
};

use switchboard_protocol::{
    Role,
    codec::{Decoder, DecoderConfig, Message},
    deflate::DeflateParams,
    handshake::ClientHandshake,
};
use tokio::{
    io::{AsyncWriteExt, Interest},
    net::{TcpSocket, TcpStream},
};

use tokio_util::bytes::BytesMut;

use crate::{
    socketio::{self, Packet},
    target::Target,
};

/// Text frame opcode.
pub(crate) const TEXT: u8 = 0x1;
/// Binary frame opcode.
pub(crate) const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// Why a connection stopped.
#[derive(Debug)]
pub(crate) enum ConnError {
    /// A socket error.
    Io(io::Error),
    /// The server closed the TCP connection.
    Eof,
    /// The server sent a close frame.
    Closed(u16, String),
    /// The server refused the upgrade or answered something that is not WebSocket.
    Handshake(String),
    /// A frame a server must not send.
    Protocol(&'static str),
    /// Something did not happen in time.
    Timeout(&'static str),
    /// The server answered a command with an error.
    Refused(String),
}

impl fmt::Display for ConnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnError::Io(e) => write!(f, "socket error: {e}"),
            ConnError::Eof => f.write_str("the server closed the connection"),
            ConnError::Closed(code, reason) => {
                write!(f, "the server sent close {code}")?;
                if !reason.is_empty() {
                    write!(f, " ({reason})")?;
                }
                Ok(())
            }
            ConnError::Handshake(e) => write!(f, "upgrade failed: {e}"),
            ConnError::Protocol(e) => write!(f, "protocol error: {e}"),
            ConnError::Timeout(what) => write!(f, "timed out waiting for {what}"),
            ConnError::Refused(e) => write!(f, "refused: {e}"),
        }
    }
}

impl From<io::Error> for ConnError {
    fn from(e: io::Error) -> Self {
        ConnError::Io(e)
    }
}

/// How to open a connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dial<'a> {
    /// The server.
    pub(crate) target: &'a Target,
    /// The local address to bind before connecting (spreads connections over 127.0.0.x).
    pub(crate) source: Option<IpAddr>,
    /// Extra request headers, e.g. `Authorization`.
    pub(crate) headers: &'a [(&'a str, &'a str)],
    /// Initial size of the read buffer (it grows only for a frame larger than it).
    pub(crate) read_buffer: usize,
    /// Time allowed for TCP connect plus the upgrade.
    pub(crate) timeout: Duration,
    /// Offer permessage-deflate (the server may decline: see [`Conn::deflate`]).
    pub(crate) deflate: bool,
}

/// An upgraded WebSocket client connection.
#[derive(Debug)]
pub(crate) struct Conn {
    stream: TcpStream,
    /// Input not yet handed out.
    pub(crate) input: Input,
    /// Output not yet written.
    pub(crate) output: Output,
    /// Socket.IO framing (see [`socketio`]): only event packets are handed out.
    socketio: bool,
    /// The permessage-deflate parameters the server agreed to.
    deflate: Option<DeflateParams>,
    /// Where the frame of the message last handed out starts in [`Input::bytes`], when it
    /// was compressed (for [`Conn::message`]).
    compressed: Option<usize>,
    /// Inflates compressed messages for [`Conn::message`]; created on first use. It sees
    /// every message `message` is asked for, in order, so that a server keeping its
    /// compression context between messages is inflated right as long as every compressed
    /// message is read through it.
    inflater: Option<Box<Decoder>>,
}

impl Conn {
    /// Connects and upgrades.
    pub(crate) async fn open(dial: Dial<'_>) -> Result<Conn, ConnError> {
        tokio::time::timeout(dial.timeout, Self::open_inner(dial))
            .await
            .map_err(|_| ConnError::Timeout("the connection and upgrade"))?
    }

    async fn open_inner(dial: Dial<'_>) -> Result<Conn, ConnError> {
        let addr = dial.target.addr;
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(ip) = dial.source {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        let mut stream = socket.connect(addr).await?;
        stream.set_nodelay(true)?;
        let hs = ClientHandshake::new(
            &dial.target.host,
            &dial.target.path,
            &[],
            dial.deflate,
            dial.headers,
        );
        stream.write_all(&hs.request).await?;
        let mut input = Input::new(dial.read_buffer.max(4096));
        let deflate = loop {
            input.reserve();
            let n = tokio::io::AsyncReadExt::read(&mut stream, input.spare()).await?;
            if n == 0 {
                return Err(ConnError::Handshake(
                    "the server closed the connection during the upgrade".into(),
                ));
            }
            input.end += n;
            match hs.parse_response(input.pending()) {
                Ok(Some((accepted, len))) => {
                    input.start += len;
                    break accepted.deflate;
                }
                Ok(None) if input.end > 64 * 1024 => {
                    return Err(ConnError::Handshake("response head over 64 KiB".into()));
                }
                Ok(None) => {}
                Err(e) => return Err(ConnError::Handshake(e.to_string())),
            }
        };
        input.rsv1 = deflate.is_some();
        Ok(Conn {
            stream,
            input,
            // Grows once to what the connection writes per batch, then stays.
            output: Output::with_capacity(1024),
            socketio: false,
            deflate,
            compressed: None,
            inflater: None,
        })
    }

    /// The permessage-deflate parameters the server agreed to; `None` when it was not offered
    /// or the server declined.
    pub(crate) fn deflate(&self) -> Option<&DeflateParams> {
        self.deflate.as_ref()
    }

    /// The payload of the message [`Conn::next_message`] just handed out as `range`, inflated
    /// when it was compressed (only with permessage-deflate negotiated). Inflating costs an
    /// allocation and a copy: for the few messages a scenario reads during set-up, not for
    /// the measured load.
    pub(crate) fn message(&mut self, range: Range<usize>) -> Result<Cow<'_, [u8]>, ConnError> {
        match self.compressed.take() {
            None => Ok(Cow::Borrowed(&self.input.buf[range])),
            Some(start) => inflate(
                &mut self.inflater,
                self.deflate,
                &self.input.buf[start..range.end],
            )
            .map(Cow::Owned),
        }
    }

    /// Connects this connection (just upgraded) to Socket.IO's default namespace: waits for
    /// `0{…}`, sends `40`, waits for `40…` (see [`socketio`]). From then on it hands out
    /// Socket.IO events only and answers engine.io pings.
    pub(crate) async fn join_socketio(&mut self) -> Result<(), ConnError> {
        let wait = async {
            let mut opened = false;
            loop {
                while let Some(r) = self.next_message()? {
                    let msg = &self.input.bytes()[r];
                    match socketio::packet(msg) {
                        Packet::Open if !opened => {
                            opened = true;
                            self.output.frame(TEXT, b"40");
                        }
                        Packet::Connected if opened => {
                            self.socketio = true;
                            return self.try_flush();
                        }
                        Packet::ConnectError | Packet::Close => {
                            return Err(ConnError::Refused(format!(
                                "Socket.IO: {}",
                                String::from_utf8_lossy(&msg[..msg.len().min(300)])
                            )));
                        }
                        Packet::Ping => {
                            self.output.frame(TEXT, b"3");
                        }
                        _ => {}
                    }
                }
                self.read_some().await?;
            }
        };
        tokio::time::timeout(Duration::from_secs(15), wait)
            .await
            .map_err(|_| ConnError::Timeout("the Socket.IO handshake (0{…}, 40, 40{…})"))?
    }

    /// Whether Socket.IO framing is on.
    pub(crate) fn is_socketio(&self) -> bool {
        self.socketio
    }

    /// Writes as much pending output as the socket takes now, without waiting.
    pub(crate) fn try_flush(&mut self) -> Result<(), ConnError> {
        while self.output.pending() {
            match self.stream.try_write(self.output.unwritten()) {
                Ok(0) => return Err(ConnError::Eof),
                Ok(n) => self.output.advance(n),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Waits until input arrives (writing pending output whenever the socket can take it
    /// meanwhile) and reads it with one `read`. Cancel-safe.
    pub(crate) async fn read_some(&mut self) -> Result<usize, ConnError> {
        loop {
            self.try_flush()?;
            let interest = if self.output.pending() {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            let ready = self.stream.ready(interest).await?;
            if ready.is_readable() || ready.is_read_closed() {
                self.input.reserve();
                match self.stream.try_read(self.input.spare()) {
                    Ok(0) => return Err(ConnError::Eof),
                    Ok(n) => {
                        self.input.end += n;
                        return Ok(n);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }

    /// The next complete data message (its first frame's payload range in [`Input::bytes`]),
    /// answering pings on the way. `Ok(None)`: read more first.
    pub(crate) fn next_message(&mut self) -> Result<Option<Range<usize>>, ConnError> {
        loop {
            let Some(frame) = self.input.next_frame()? else {
                return Ok(None);
            };
            self.compressed = frame.compressed.then_some(frame.start);
            match frame.opcode {
                TEXT if self.socketio => {
                    let Conn { input, output, .. } = self;
                    let msg = &input.buf[frame.payload.clone()];
                    match socketio::packet(msg) {
                        Packet::Event => return Ok(Some(frame.payload)),
                        Packet::Ping => output.text_with(|b| {
                            b.push(b'3');
                            b.extend_from_slice(&msg[1..]);
                        }),
                        Packet::Close => {
                            return Err(ConnError::Closed(
                                1000,
                                "Socket.IO disconnect packet".into(),
                            ));
                        }
                        _ => {}
                    }
                }
                BINARY if self.socketio => {}
                TEXT | BINARY => return Ok(Some(frame.payload)),
                0 | PONG => {}
                PING => {
                    let payload = frame.payload;
                    let Conn { input, output, .. } = self;
                    output.frame(PONG, &input.buf[payload]);
                }
                CLOSE => {
                    let p = &self.input.buf[frame.payload];
                    let code = if p.len() >= 2 {
                        u16::from_be_bytes([p[0], p[1]])
                    } else {
                        1005
                    };
                    let reason = String::from_utf8_lossy(p.get(2..).unwrap_or_default());
                    return Err(ConnError::Closed(code, reason.into_owned()));
                }
                _ => return Err(ConnError::Protocol("reserved opcode")),
            }
        }
    }
}

/// Largest message [`Conn::message`] inflates.
const MAX_INFLATED: usize = 16 << 20;

/// Inflates one whole compressed server `frame` (header included) with the protocol's
/// decoder in `slot` (created on first use), which keeps the compression context between
/// messages when the server keeps its own.
fn inflate(
    slot: &mut Option<Box<Decoder>>,
    deflate: Option<DeflateParams>,
    frame: &[u8],
) -> Result<Vec<u8>, ConnError> {
    let decoder = slot.get_or_insert_with(|| {
        Box::new(Decoder::new(
            Role::Client,
            DecoderConfig::default().with_max_message_size(MAX_INFLATED),
            deflate,
        ))
    });
    let mut wire = BytesMut::from(frame);
    match decoder.decode(&mut wire) {
        Ok(Some(Message::Text(text))) => Ok(text.as_bytes().to_vec()),
        Ok(Some(Message::Binary(data))) => Ok(data.to_vec()),
        Ok(_) => Err(ConnError::Protocol(
            "a compressed message in several frames (not supported)",
        )),
        Err(_) => Err(ConnError::Protocol(
            "a compressed message that does not inflate",
        )),
    }
}

/// One frame found in the input.
#[derive(Debug)]
struct Frame {
    opcode: u8,
    /// RSV1: the message is compressed.
    compressed: bool,
    /// Where the frame (its header) starts.
    start: usize,
    payload: Range<usize>,
}

/// The read side: one buffer, consumed from `start`, filled up to `end`.
#[derive(Debug)]
pub(crate) struct Input {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// RSV1 is legal: permessage-deflate was negotiated.
    rsv1: bool,
}

impl Input {
    fn new(capacity: usize) -> Self {
        Input {
            buf: vec![0; capacity],
            start: 0,
            end: 0,
            rsv1: false,
        }
    }

    /// The whole buffer: index it with the ranges [`Conn::next_message`] returns.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.buf
    }

    fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn spare(&mut self) -> &mut [u8] {
        &mut self.buf[self.end..]
    }

    /// Makes room at the end: moves a partial frame to the front, grows for a large one.
    fn reserve(&mut self) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            return;
        }
        if self.end < self.buf.len() {
            return;
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        // Still full: the frame under way is larger than the buffer.
        let need = self.frame_len().unwrap_or(0).max(self.buf.len() * 2);
        if need > self.buf.len() {
            self.buf.resize(need, 0);
        }
    }

    /// Length (header and payload) of the frame at `start`, once its header is complete.
    fn frame_len(&self) -> Option<usize> {
        let p = self.pending();
        let (header, len) = parse_header(p, self.rsv1).ok()??;
        Some(header + len)
    }

    fn next_frame(&mut self) -> Result<Option<Frame>, ConnError> {
        let p = self.pending();
        let Some((header, len)) = parse_header(p, self.rsv1)? else {
            return Ok(None);
        };
        if p.len() < header + len {
            return Ok(None);
        }
        let opcode = p[0] & 0x0f;
        let compressed = p[0] & 0x40 != 0;
        // RFC 7692 6.1: only the first frame of a data message may carry RSV1.
        if compressed && !matches!(opcode, TEXT | BINARY) {
            return Err(ConnError::Protocol(
                "RSV1 on a control or continuation frame",
            ));
        }
        let start = self.start;
        let begin = start + header;
        self.start = begin + len;
        Ok(Some(Frame {
            opcode,
            compressed,
            start,
            payload: begin..begin + len,
        }))
    }
}

/// Header length and payload length of the frame at the start of `p`; `None`: incomplete.
/// RSV1 is legal when `rsv1` (permessage-deflate negotiated); RSV2 and RSV3 never are.
fn parse_header(p: &[u8], rsv1: bool) -> Result<Option<(usize, usize)>, ConnError> {
    if p.len() < 2 {
        return Ok(None);
    }
    if p[0] & 0x30 != 0 {
        return Err(ConnError::Protocol("reserved bits RSV2/RSV3 set"));
    }
    if p[0] & 0x40 != 0 && !rsv1 {
        return Err(ConnError::Protocol(
            "RSV1 set without permessage-deflate negotiated",
        ));
    }
    if p[1] & 0x80 != 0 {
        return Err(ConnError::Protocol("masked frame from the server"));
    }
    let (header, len) = match p[1] & 0x7f {
        126 => {
            if p.len() < 4 {
                return Ok(None);
            }
            (4, usize::from(u16::from_be_bytes([p[2], p[3]])))
        }
        127 => {
            if p.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&p[2..10]);
            let len = u64::from_be_bytes(b);
            if len > 1 << 31 {
                return Err(ConnError::Protocol("frame over 2 GiB"));
            }
            (10, len as usize)
        }
        n => (2, usize::from(n)),
    };
    Ok(Some((header, len)))
}

/// The write side: frames appended to one buffer, written from `written`.
#[derive(Debug)]
pub(crate) struct Output {
    buf: Vec<u8>,
    written: usize,
}

impl Output {
    fn with_capacity(capacity: usize) -> Self {
        Output {
            buf: Vec::with_capacity(capacity),
            written: 0,
        }
    }

    /// Whether bytes wait to be written.
    pub(crate) fn pending(&self) -> bool {
        self.written < self.buf.len()
    }

    /// Bytes waiting to be written.
    pub(crate) fn pending_len(&self) -> usize {
        self.buf.len() - self.written
    }

    fn unwritten(&self) -> &[u8] {
        &self.buf[self.written..]
    }

    fn advance(&mut self, n: usize) {
        self.written += n;
        if self.written == self.buf.len() {
            self.buf.clear();
            self.written = 0;
        }
    }

    /// Appends a masked (key 0) frame header for a payload of `len` bytes, FIN set.
    fn header(&mut self, opcode: u8, len: usize) {
        let mut head = [0u8; MAX_HEADER];
        let n = encode_header(opcode, len, &mut head);
        self.buf.extend_from_slice(&head[..n]);
    }

    /// Appends one frame with `payload` and returns the copy, to patch in place.
    pub(crate) fn frame(&mut self, opcode: u8, payload: &[u8]) -> &mut [u8] {
        self.header(opcode, payload.len());
        let at = self.buf.len();
        self.buf.extend_from_slice(payload);
        &mut self.buf[at..]
    }

    /// Appends one text frame whose payload `fill` appends (any number of bytes). The
    /// payload is written after room for the longest header, which is then closed up: one
    /// short `memmove` instead of a second buffer.
    pub(crate) fn text_with(&mut self, fill: impl FnOnce(&mut Vec<u8>)) {
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0; MAX_HEADER]);
        fill(&mut self.buf);
        let len = self.buf.len() - at - MAX_HEADER;
        let mut head = [0u8; MAX_HEADER];
        let n = encode_header(TEXT, len, &mut head);
        self.buf[at..at + n].copy_from_slice(&head[..n]);
        if n < MAX_HEADER {
            self.buf.copy_within(at + MAX_HEADER.., at + n);
            self.buf.truncate(self.buf.len() - (MAX_HEADER - n));
        }
    }
}

/// The longest client frame header: 2 bytes, a 64-bit length and the mask key.
const MAX_HEADER: usize = 14;

/// Writes a FIN frame header with the mask bit and a zero key into `head`; returns its length.
fn encode_header(opcode: u8, len: usize, head: &mut [u8; MAX_HEADER]) -> usize {
    head[0] = 0x80 | opcode;
    let at = if len < 126 {
        head[1] = 0x80 | len as u8;
        2
    } else if let Ok(len) = u16::try_from(len) {
        head[1] = 0x80 | 126;
        head[2..4].copy_from_slice(&len.to_be_bytes());
        4
    } else {
        head[1] = 0x80 | 127;
        head[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    head[at..at + 4].fill(0);
    at + 4
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(out: &Output) -> Vec<(u8, Vec<u8>)> {
        let mut b = out.unwritten();
        let mut v = Vec::new();
        while !b.is_empty() {
            assert_eq!(b[0] & 0x80, 0x80, "FIN");
            let op = b[0] & 0x0f;
            assert_eq!(b[1] & 0x80, 0x80, "mask bit");
            let (h, len) = match b[1] & 0x7f {
                126 => (4, u16::from_be_bytes([b[2], b[3]]) as usize),
                127 => (
                    10,
                    u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize,
                ),
                n => (2, n as usize),
            };
            assert_eq!(&b[h..h + 4], &[0, 0, 0, 0], "zero key");
            v.push((op, b[h + 4..h + 4 + len].to_vec()));
            b = &b[h + 4 + len..];
        }
        v
    }

    #[test]
    fn client_frames_are_masked_with_a_zero_key() {
        let mut out = Output::with_capacity(16);
        out.frame(TEXT, b"hi");
        out.frame(BINARY, &[7; 300]);
        out.frame(TEXT, &[b'x'; 70_000]);
        out.text_with(|b| b.extend_from_slice(b"{\"a\":1}"));
        out.text_with(|b| b.extend_from_slice(&[b'y'; 200]));
        out.text_with(|b| b.extend_from_slice(&[b'z'; 66_000]));
        let f = frames(&out);
        assert_eq!(f.len(), 6);
        assert_eq!(f[0], (TEXT, b"hi".to_vec()));
        assert_eq!(f[1], (BINARY, vec![7; 300]));
        assert_eq!(f[2], (TEXT, vec![b'x'; 70_000]));
        assert_eq!(f[3], (TEXT, b"{\"a\":1}".to_vec()));
        assert_eq!(f[4], (TEXT, vec![b'y'; 200]));
        assert_eq!(f[5], (TEXT, vec![b'z'; 66_000]));
    }

    fn server_frame(op: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![0x80 | op];
        if payload.len() < 126 {
            v.push(payload.len() as u8);
        } else if payload.len() < 65536 {
            v.push(126);
            v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        } else {
            v.push(127);
            v.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        }
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn server_frames_parse_by_header_in_any_split() {
        let mut wire = Vec::new();
        wire.extend(server_frame(TEXT, b"one"));
        wire.extend(server_frame(BINARY, &[1; 200]));
        wire.extend(server_frame(TEXT, &[2; 70_000]));
        for chunk in [1, 3, 7, 100, 5000, wire.len()] {
            let mut input = Input::new(64);
            let mut got = Vec::new();
            for piece in wire.chunks(chunk) {
                let mut piece = piece;
                while !piece.is_empty() {
                    input.reserve();
                    let n = piece.len().min(input.spare().len());
                    input.spare()[..n].copy_from_slice(&piece[..n]);
                    input.end += n;
                    piece = &piece[n..];
                    while let Some(f) = input.next_frame().unwrap() {
                        got.push((f.opcode, input.buf[f.payload].len()));
                    }
                }
            }
            assert_eq!(
                got,
                vec![(TEXT, 3), (BINARY, 200), (TEXT, 70_000)],
                "{chunk}"
            );
        }
    }

    #[test]
    fn masked_or_extended_server_frames_are_errors() {
        for rsv1 in [false, true] {
            assert!(parse_header(&[0x81, 0x82, 0, 0, 0, 0, 1, 2], rsv1).is_err());
            // RSV2 and RSV3 are never legal.
            assert!(parse_header(&[0xA1, 0x01, b'a'], rsv1).is_err());
            assert!(parse_header(&[0x91, 0x01, b'a'], rsv1).is_err());
            assert_eq!(parse_header(&[0x81], rsv1).unwrap(), None);
            assert_eq!(parse_header(&[0x81, 126, 1], rsv1).unwrap(), None);
            assert_eq!(parse_header(&[0x81, 3], rsv1).unwrap(), Some((2, 3)));
        }
        // RSV1 only with permessage-deflate negotiated.
        assert!(parse_header(&[0xC1, 0x01, b'a'], false).is_err());
        assert_eq!(
            parse_header(&[0xC1, 0x01, b'a'], true).unwrap(),
            Some((2, 1))
        );
    }

    fn input_with(wire: &[u8], rsv1: bool) -> Input {
        let mut input = Input::new(wire.len().max(16));
        input.rsv1 = rsv1;
        input.buf[..wire.len()].copy_from_slice(wire);
        input.end = wire.len();
        input
    }

    #[test]
    fn rsv1_is_only_legal_on_data_frames() {
        let mut input = input_with(&[0xC1, 0x01, b'a', 0xC9, 0x00], true);
        let f = input.next_frame().unwrap().unwrap();
        assert!(f.compressed);
        assert_eq!((f.start, f.payload), (0, 2..3));
        assert!(input.next_frame().is_err(), "compressed ping");
        let mut input = input_with(&[0xC1, 0x01, b'a'], false);
        assert!(input.next_frame().is_err(), "not negotiated");
    }

    fn params(context_takeover: bool) -> DeflateParams {
        DeflateParams {
            server_no_context_takeover: !context_takeover,
            client_no_context_takeover: true,
            server_max_window_bits: 15,
            client_max_window_bits: 15,
        }
    }

    #[test]
    fn compressed_messages_inflate_in_order() {
        use switchboard_protocol::{codec::Encoder, frame::OpCode};

        for takeover in [false, true] {
            let p = params(takeover);
            let mut encoder = Encoder::new(Role::Server, Some(p), 0);
            let first = [
                b"{\"type\":\"welcome\",\"pad\":\"".as_slice(),
                &[b'x'; 300],
                b"\"}",
            ]
            .concat();
            let second = br#"{"type":"reply","id":1,"result":{"room":"bench:idle","epoch":"e","offset":0,"publications":[]}}"#;
            let mut slot = None;
            for msg in [&first[..], second, second] {
                let mut wire = BytesMut::new();
                encoder.encode(OpCode::Text, msg, &mut wire);
                assert_eq!(wire[0] & 0x40, 0x40, "compressed");
                let mut input = input_with(&wire, true);
                let f = input.next_frame().unwrap().unwrap();
                assert!(f.compressed);
                let got = inflate(&mut slot, Some(p), &input.buf[f.start..f.payload.end]);
                assert_eq!(got.unwrap(), msg, "takeover {takeover}");
                if takeover && msg == second {
                    // The context matters: a fresh inflater cannot read a repeat.
                    let fresh = inflate(&mut None, Some(p), &input.buf[f.start..f.payload.end]);
                    assert!(fresh.is_err() || fresh.unwrap() != msg);
                }
            }
        }
    }
}
