//! Messages from frames and frames from messages: reassembly of fragments, control frames
//! interleaved with fragments, UTF-8 validation, inflation, size limits.

use bytes::{Buf, Bytes, BytesMut};
use flate2::{Compress, Decompress};

use crate::{
    Role,
    close::{CloseCode, CloseFrame},
    deflate::{
        DeflateParams, pool,
        stream::{self, TAIL},
    },
    error::ProtocolError,
    frame::{FrameHeader, MAX_HEADER_LEN, OpCode, apply_mask, header_len, write_frame},
    utf8::Utf8Validator,
};

/// Text known to be valid UTF-8, shared without copying.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Utf8Bytes(Bytes);

impl Utf8Bytes {
    /// Wraps bytes already checked to be UTF-8. Panics in debug builds if they are not.
    pub fn from_checked(bytes: Bytes) -> Self {
        debug_assert!(std::str::from_utf8(&bytes).is_ok());
        Utf8Bytes(bytes)
    }
    /// The text.
    pub fn as_str(&self) -> &str {
        // Checked at construction; simdutf8 is fast enough that re-checking is cheap, but we
        // keep `unsafe` out of the crate entirely.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
    /// The underlying bytes.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }
    /// Unwraps the bytes.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}

impl From<&str> for Utf8Bytes {
    fn from(s: &str) -> Self {
        Utf8Bytes(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl From<String> for Utf8Bytes {
    fn from(s: String) -> Self {
        Utf8Bytes(Bytes::from(s))
    }
}

/// A whole message as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A text message (reassembled, inflated, validated).
    Text(Utf8Bytes),
    /// A binary message (reassembled, inflated).
    Binary(Bytes),
    /// A ping with its payload (at most 125 bytes).
    Ping(Bytes),
    /// A pong with its payload.
    Pong(Bytes),
    /// A close frame; `None` when it had no payload.
    Close(Option<CloseFrame>),
}

/// Limits applied while decoding. Defaults follow docs/protocol.md section 7.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct DecoderConfig {
    /// Largest message accepted, after reassembly and after decompression (default 64 KiB).
    /// Passing it is [`ProtocolError::MessageTooBig`] (close 1009), detected as soon as the
    /// frame header (or the inflater's output) shows it, before the payload is buffered.
    pub max_message_size: usize,
}

impl Default for DecoderConfig {
    fn default() -> Self {
        DecoderConfig {
            max_message_size: 64 * 1024,
        }
    }
}

impl DecoderConfig {
    /// Sets `max_message_size`.
    pub fn with_max_message_size(mut self, max: usize) -> Self {
        self.max_message_size = max;
        self
    }
}

/// Turns received bytes into [`Message`]s for one connection.
///
/// Payloads are unmasked in place. A message of one uncompressed frame is split off the
/// caller's buffer without a copy once complete (its text validated as it arrives, so
/// invalid UTF-8 fails before the frame ends); fragmented and compressed messages are moved
/// into a buffer of the decoder as their bytes arrive, and that buffer is handed over with
/// the message, so an idle decoder holds no memory.
///
/// Every connection holds one, idle or not, so it is kept small (64 bytes on 64-bit
/// targets): state that only some messages or connections need is boxed.
#[derive(Debug)]
pub struct Decoder {
    role: Role,
    max: usize,
    deflate: Option<DeflateParams>,
    /// The frame whose header has been consumed and whose payload is still arriving. Inline:
    /// it is small and on the hot path of every partial frame.
    frame: Option<FrameState>,
    /// The data message being assembled (fragmented or compressed). Boxed: most messages are
    /// single uncompressed frames that never have one, and an inline `Assembly` would sit in
    /// every idle decoder; one allocation per assembled message is small next to its data.
    message: Option<Box<Assembly>>,
    /// Validates the text message in progress, whether in place or assembled.
    utf8: Utf8Validator,
    /// The inflater kept between messages when the peer keeps its compression context.
    /// Boxed (as the pool keeps them): `Decompress` is about 150 bytes inline.
    inflater: Option<Box<Decompress>>,
}

#[derive(Debug, Clone, Copy)]
struct FrameState {
    opcode: OpCode,
    fin: bool,
    mask: Option<[u8; 4]>,
    len: usize,
    /// Payload bytes unmasked (and, for in-place text, validated) so far.
    done: usize,
    /// The payload stays at the front of the caller's buffer until the frame is complete
    /// (control frames and single-frame uncompressed messages); otherwise each piece is
    /// moved into the message as it arrives.
    in_place: bool,
}

#[derive(Debug)]
struct Assembly {
    text: bool,
    /// The inflater of a compressed message, from the pool or `Decoder::inflater`.
    inflater: Option<Box<Decompress>>,
    /// The deflate stream ended with a final block (RFC 7692 7.2.3.4): ignore the rest.
    ended: bool,
    data: Vec<u8>,
    /// Payload bytes received on the wire so far, for the size limit.
    wire_len: u64,
}

impl Decoder {
    /// A decoder for a connection in `role`, with permessage-deflate when `deflate` is given.
    pub fn new(role: Role, config: DecoderConfig, deflate: Option<DeflateParams>) -> Self {
        Decoder {
            role,
            max: config.max_message_size,
            deflate,
            frame: None,
            message: None,
            utf8: Utf8Validator::new(),
            inflater: None,
        }
    }

    /// Decodes the next whole message from the front of `buf`, consuming what it used.
    /// `Ok(None)`: more bytes are needed (what was consumed is kept inside, e.g. complete
    /// fragments and a partial text frame already validated). After an error the connection
    /// must be closed with [`ProtocolError::close_code`].
    ///
    /// Between calls the caller may only append to `buf`: the payload of an incomplete
    /// control frame or single-frame message stays at its front, already unmasked.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Message>, ProtocolError> {
        loop {
            let mut frame = match self.frame.take() {
                Some(frame) => frame,
                None => {
                    let Some((header, header_len)) = FrameHeader::parse(buf)? else {
                        return Ok(None);
                    };
                    let frame = self.start_frame(&header)?;
                    buf.advance(header_len);
                    frame
                }
            };
            if frame.in_place {
                let end = buf.len().min(frame.len);
                if let Some(new) = buf.get_mut(frame.done..end) {
                    if let Some(key) = frame.mask {
                        apply_mask(new, key, frame.done);
                    }
                    if frame.opcode == OpCode::Text && self.utf8.feed(new).is_err() {
                        return Err(ProtocolError::InvalidUtf8);
                    }
                    frame.done = end;
                }
                if end < frame.len {
                    self.frame = Some(frame);
                    return Ok(None);
                }
                let payload = buf.split_to(frame.len).freeze();
                return self.in_place_message(frame.opcode, payload).map(Some);
            }
            let n = buf.len().min(frame.len - frame.done);
            let piece = &mut buf[..n];
            if let Some(key) = frame.mask {
                apply_mask(piece, key, frame.done);
            }
            self.absorb(piece)?;
            buf.advance(n);
            frame.done += n;
            if frame.done < frame.len {
                self.frame = Some(frame);
                return Ok(None);
            }
            if frame.fin {
                return self.assembled_message().map(Some);
            }
        }
    }

    /// Whether no partial message is held, so the connection's read buffer may be released.
    pub fn is_idle(&self) -> bool {
        self.frame.is_none() && self.message.is_none()
    }

    /// Whether the decoder holds nothing at all: no partial message and no compression
    /// context kept between messages. A fresh decoder with the same settings would then
    /// behave exactly like this one, so a connection may drop it while idle.
    pub fn is_reset(&self) -> bool {
        self.is_idle() && self.inflater.is_none()
    }

    /// Checks a new frame's header against the connection's state and starts the frame.
    fn start_frame(&mut self, header: &FrameHeader) -> Result<FrameState, ProtocolError> {
        let reserved = ProtocolError::ReservedBits {
            rsv1: header.rsv1,
            rsv2: header.rsv2,
            rsv3: header.rsv3,
        };
        if header.rsv2 || header.rsv3 {
            return Err(reserved);
        }
        if header.mask.is_some() != (self.role == Role::Server) {
            return Err(ProtocolError::BadMasking);
        }
        // RSV1 marks a compressed message, on its first frame only (RFC 7692 6).
        let first_data_frame = matches!(header.opcode, OpCode::Text | OpCode::Binary);
        if header.rsv1 && !(first_data_frame && self.deflate.is_some()) {
            return Err(reserved);
        }
        let in_place = match header.opcode {
            OpCode::Continuation => {
                let Some(message) = &mut self.message else {
                    return Err(ProtocolError::UnexpectedContinuation);
                };
                message.wire_len = message.wire_len.saturating_add(header.len);
                let (wire_len, compressed) = (message.wire_len, message.inflater.is_some());
                self.check_size(wire_len, compressed)?;
                false
            }
            OpCode::Text | OpCode::Binary => {
                if self.message.is_some() {
                    return Err(ProtocolError::ExpectedContinuation);
                }
                self.check_size(header.len, header.rsv1)?;
                let in_place = header.fin && !header.rsv1;
                if !in_place {
                    self.message = Some(Box::new(Assembly {
                        text: header.opcode == OpCode::Text,
                        inflater: header.rsv1.then(|| self.take_inflater()),
                        ended: false,
                        data: Vec::new(),
                        wire_len: header.len,
                    }));
                }
                in_place
            }
            // `FrameHeader::parse` has checked their length (at most 125) and FIN.
            OpCode::Close | OpCode::Ping | OpCode::Pong => true,
        };
        Ok(FrameState {
            opcode: header.opcode,
            fin: header.fin,
            mask: header.mask,
            // Bounded by the size check, or by 125 for control frames.
            len: usize::try_from(header.len).map_err(|_| self.too_big(header.len))?,
            done: 0,
            in_place,
        })
    }

    /// Checks the payload bytes a message has announced so far, before they are buffered.
    /// A compressed message may be a little longer on the wire than inflated: deflate's
    /// worst case is 9 bits per byte (fixed Huffman codes for bytes 144-255) plus block
    /// headers; the inflated size is checked exactly as it is produced.
    fn check_size(&self, wire_len: u64, compressed: bool) -> Result<(), ProtocolError> {
        let max = self.max as u64;
        let limit = if compressed {
            max.saturating_add(max / 8).saturating_add(64)
        } else {
            max
        };
        if wire_len > limit {
            return Err(self.too_big(wire_len));
        }
        Ok(())
    }

    fn too_big(&self, size: u64) -> ProtocolError {
        ProtocolError::MessageTooBig {
            size,
            max: self.max,
        }
    }

    /// Whether the peer resets its compressor after every message, so that its messages
    /// can be inflated with a pooled inflater.
    fn peer_resets_context(&self) -> bool {
        self.deflate.is_some_and(|p| match self.role {
            Role::Server => p.client_no_context_takeover,
            Role::Client => p.server_no_context_takeover,
        })
    }

    fn take_inflater(&mut self) -> Box<Decompress> {
        if self.peer_resets_context() {
            pool::take_decompressor()
        } else {
            self.inflater.take().unwrap_or_else(pool::new_decompressor)
        }
    }

    fn release_inflater(&mut self, mut inflater: Box<Decompress>, stream_ended: bool) {
        if self.peer_resets_context() {
            pool::give_decompressor(inflater);
        } else {
            // After a final block the peer starts a new stream.
            if stream_ended {
                inflater.reset(false);
            }
            self.inflater = Some(inflater);
        }
    }

    /// Adds an unmasked piece of payload to the message being assembled.
    fn absorb(&mut self, piece: &[u8]) -> Result<(), ProtocolError> {
        let Some(message) = &mut self.message else {
            return Ok(());
        };
        let start = message.data.len();
        match &mut message.inflater {
            Some(inflater) if !message.ended => {
                message.ended = stream::inflate(inflater, piece, &mut message.data, self.max)?;
            }
            Some(_) => {}
            None => message.data.extend_from_slice(piece),
        }
        if message.text && self.utf8.feed(&message.data[start..]).is_err() {
            return Err(ProtocolError::InvalidUtf8);
        }
        Ok(())
    }

    /// Finishes the assembled message after its last frame.
    fn assembled_message(&mut self) -> Result<Message, ProtocolError> {
        let Some(mut message) = self.message.take() else {
            return Err(ProtocolError::UnexpectedContinuation);
        };
        if let Some(mut inflater) = message.inflater.take() {
            let start = message.data.len();
            let ended = if message.ended {
                Ok(true)
            } else {
                stream::inflate(&mut inflater, &TAIL, &mut message.data, self.max)
            };
            // After an error the inflater's state is unknown: reset it as after a final block.
            self.release_inflater(inflater, !matches!(ended, Ok(false)));
            ended?;
            if message.text && self.utf8.feed(&message.data[start..]).is_err() {
                return Err(ProtocolError::InvalidUtf8);
            }
        }
        let data = Bytes::from(message.data);
        if message.text {
            self.utf8
                .finish()
                .map_err(|()| ProtocolError::InvalidUtf8)?;
            Ok(Message::Text(Utf8Bytes::from_checked(data)))
        } else {
            Ok(Message::Binary(data))
        }
    }

    /// The message of a complete in-place frame.
    fn in_place_message(
        &mut self,
        opcode: OpCode,
        payload: Bytes,
    ) -> Result<Message, ProtocolError> {
        Ok(match opcode {
            OpCode::Text => {
                self.utf8
                    .finish()
                    .map_err(|()| ProtocolError::InvalidUtf8)?;
                Message::Text(Utf8Bytes::from_checked(payload))
            }
            OpCode::Binary => Message::Binary(payload),
            OpCode::Ping => Message::Ping(payload),
            OpCode::Pong => Message::Pong(payload),
            OpCode::Close => Message::Close(parse_close(payload)?),
            // Continuation frames are never in place.
            OpCode::Continuation => return Err(ProtocolError::UnexpectedContinuation),
        })
    }
}

/// A close frame's payload: nothing, or a code valid on the wire and a UTF-8 reason.
fn parse_close(payload: Bytes) -> Result<Option<CloseFrame>, ProtocolError> {
    let [hi, lo, ..] = payload[..] else {
        return match payload.len() {
            0 => Ok(None),
            _ => Err(ProtocolError::BadClosePayload(None)),
        };
    };
    let code = CloseCode(u16::from_be_bytes([hi, lo]));
    if !code.is_valid_on_wire() {
        return Err(ProtocolError::BadClosePayload(Some(code.0)));
    }
    let reason = payload.slice(2..);
    if simdutf8::basic::from_utf8(&reason).is_err() {
        return Err(ProtocolError::InvalidUtf8);
    }
    Ok(Some(CloseFrame { code, reason }))
}

/// Frames outgoing messages for one connection, compressing when negotiated and the payload
/// reaches the threshold.
///
/// Every connection holds one, idle or not, so it is kept small (24 bytes on 64-bit targets).
#[derive(Debug)]
pub struct Encoder {
    role: Role,
    deflate: Option<DeflateParams>,
    threshold: usize,
    /// Our compressor, kept between messages when we keep our compression context (created
    /// on first use); with no context takeover one is borrowed from the pool per message.
    /// Boxed: `Compress` is about 150 bytes inline and most connections never have one.
    compressor: Option<Box<Compress>>,
}

impl Encoder {
    /// An encoder for a connection in `role` (client frames get a random mask), with
    /// permessage-deflate when `deflate` is given; payloads shorter than `threshold` bytes are
    /// sent uncompressed.
    pub fn new(role: Role, deflate: Option<DeflateParams>, threshold: usize) -> Self {
        Encoder {
            role,
            deflate,
            threshold,
            compressor: None,
        }
    }

    /// Appends one message as a single frame to `out`. `opcode` is Text or Binary (compressed
    /// when negotiated and large enough) or a control opcode (never compressed).
    pub fn encode(&mut self, opcode: OpCode, payload: &[u8], out: &mut BytesMut) {
        debug_assert!(opcode != OpCode::Continuation, "encode whole messages");
        debug_assert!(
            !opcode.is_control() || payload.len() <= 125,
            "control payload over 125 bytes"
        );
        // RFC 6455 5.3: a fresh, unpredictable key per frame (rand's thread RNG is a CSPRNG).
        let mask = (self.role == Role::Client).then(rand::random::<[u8; 4]>);
        let Some(params) = self.deflate else {
            return write_frame(out, true, false, opcode, mask, payload);
        };
        if opcode.is_control() || payload.len() < self.threshold {
            return write_frame(out, true, false, opcode, mask, payload);
        }
        let (bits, reset) = match self.role {
            Role::Server => (
                params.server_max_window_bits,
                params.server_no_context_takeover,
            ),
            Role::Client => (
                params.client_max_window_bits,
                params.client_no_context_takeover,
            ),
        };
        if reset {
            pool::with_compressor(bits, |c| {
                write_compressed_frame(c, opcode, payload, mask, out)
            });
        } else {
            let compressor = self
                .compressor
                .get_or_insert_with(|| pool::new_compressor(bits));
            write_compressed_frame(compressor, opcode, payload, mask, out);
        }
    }

    /// Appends a close frame.
    pub fn encode_close(&mut self, frame: Option<&CloseFrame>, out: &mut BytesMut) {
        let mut payload = [0; 125];
        let len = frame.map_or(0, |frame| frame.encode(&mut payload));
        self.encode(OpCode::Close, &payload[..len], out);
    }

    /// The negotiated deflate parameters, if any.
    pub fn deflate(&self) -> Option<&DeflateParams> {
        self.deflate.as_ref()
    }
}

/// Appends `payload` as one compressed frame (RSV1 set), masked with `mask` when given.
pub(crate) fn write_compressed_frame(
    compressor: &mut Compress,
    opcode: OpCode,
    payload: &[u8],
    mask: Option<[u8; 4]>,
    out: &mut BytesMut,
) {
    let start = out.len();
    // Compress straight into `out` behind room for the header a payload this long needs;
    // compressed data is rarely longer, and a header of another size just moves it.
    let room = header_len(payload.len(), mask.is_some());
    out.resize(start + room, 0);
    stream::compress(compressor, payload, out);
    let len = out.len() - start - room;
    let header = FrameHeader {
        fin: true,
        rsv1: true,
        rsv2: false,
        rsv3: false,
        opcode,
        mask,
        len: len as u64,
    };
    let mut bytes = [0; MAX_HEADER_LEN];
    let header_len = header.encode(&mut bytes);
    if header_len < room {
        out.copy_within(start + room.., start + header_len);
        out.truncate(start + header_len + len);
    } else if header_len > room {
        out.resize(start + header_len + len, 0);
        out.copy_within(start + room..start + room + len, start + header_len);
    }
    out[start..start + header_len].copy_from_slice(&bytes[..header_len]);
    if let Some(key) = mask {
        apply_mask(&mut out[start + header_len..], key, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::write_frame;

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// Both directions with no context takeover, 15-bit windows.
    const DEFLATE: DeflateParams = DeflateParams {
        server_no_context_takeover: true,
        client_no_context_takeover: true,
        server_max_window_bits: 15,
        client_max_window_bits: 15,
    };

    /// Context takeover both ways.
    const TAKEOVER: DeflateParams = DeflateParams {
        server_no_context_takeover: false,
        client_no_context_takeover: false,
        ..DEFLATE
    };

    fn server(max: usize, deflate: Option<DeflateParams>) -> Decoder {
        Decoder::new(
            Role::Server,
            DecoderConfig::default().with_max_message_size(max),
            deflate,
        )
    }

    fn client(max: usize, deflate: Option<DeflateParams>) -> Decoder {
        Decoder::new(
            Role::Client,
            DecoderConfig::default().with_max_message_size(max),
            deflate,
        )
    }

    /// A frame as a client sends it (masked).
    fn masked(fin: bool, rsv1: bool, opcode: OpCode, payload: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        write_frame(&mut out, fin, rsv1, opcode, Some(MASK), payload);
        out.to_vec()
    }

    /// Feeds `bytes` in one piece; every message until `Ok(None)` or an error.
    fn decode_all(decoder: &mut Decoder, bytes: &[u8]) -> Result<Vec<Message>, ProtocolError> {
        let mut buf = BytesMut::from(bytes);
        let mut messages = Vec::new();
        while let Some(message) = decoder.decode(&mut buf)? {
            messages.push(message);
        }
        Ok(messages)
    }

    /// Feeds `bytes` one byte at a time.
    fn decode_bytewise(decoder: &mut Decoder, bytes: &[u8]) -> Result<Vec<Message>, ProtocolError> {
        let mut buf = BytesMut::new();
        let mut messages = Vec::new();
        for byte in bytes {
            buf.extend_from_slice(&[*byte]);
            while let Some(message) = decoder.decode(&mut buf)? {
                messages.push(message);
            }
        }
        Ok(messages)
    }

    fn text(s: &str) -> Message {
        Message::Text(s.into())
    }

    fn err(decoder: &mut Decoder, bytes: &[u8]) -> ProtocolError {
        decode_all(decoder, bytes).unwrap_err()
    }

    #[test]
    fn rfc6455_examples() {
        let hello = [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        assert_eq!(
            decode_all(&mut client(100, None), &hello),
            Ok(vec![text("Hello")])
        );
        let masked_hello = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        assert_eq!(
            decode_all(&mut server(100, None), &masked_hello),
            Ok(vec![text("Hello")])
        );

        let fragmented = [0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f];
        assert_eq!(
            decode_all(&mut client(100, None), &fragmented),
            Ok(vec![text("Hello")])
        );

        let ping = [0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        assert_eq!(
            decode_all(&mut client(100, None), &ping),
            Ok(vec![Message::Ping(Bytes::from_static(b"Hello"))])
        );
        let pong = [
            0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        assert_eq!(
            decode_all(&mut server(100, None), &pong),
            Ok(vec![Message::Pong(Bytes::from_static(b"Hello"))])
        );

        for len in [256, 65536] {
            let mut wire = BytesMut::new();
            write_frame(&mut wire, true, false, OpCode::Binary, None, &vec![7; len]);
            let messages = decode_all(&mut client(65536, None), &wire).unwrap();
            assert_eq!(messages, vec![Message::Binary(vec![7; len].into())]);
        }
    }

    #[test]
    fn byte_at_a_time_with_interleaved_control_frames() {
        let mut wire = Vec::new();
        wire.extend(masked(false, false, OpCode::Text, "κό".as_bytes()));
        wire.extend(masked(true, false, OpCode::Ping, b"p1"));
        wire.extend(masked(
            false,
            false,
            OpCode::Continuation,
            &"σμε".as_bytes()[..3],
        ));
        wire.extend(masked(true, false, OpCode::Pong, b""));
        wire.extend(masked(
            true,
            false,
            OpCode::Continuation,
            &"σμε".as_bytes()[3..],
        ));
        wire.extend(masked(true, false, OpCode::Binary, &[1, 2, 3]));
        wire.extend(masked(
            true,
            false,
            OpCode::Close,
            &[0x03, 0xE8, b'o', b'k'],
        ));
        wire.extend(masked(true, false, OpCode::Close, &[]));
        let expected = vec![
            Message::Ping(Bytes::from_static(b"p1")),
            Message::Pong(Bytes::new()),
            text("κόσμε"),
            Message::Binary(Bytes::from_static(&[1, 2, 3])),
            Message::Close(Some(CloseFrame::new(CloseCode::NORMAL, "ok"))),
            Message::Close(None),
        ];
        assert_eq!(
            decode_all(&mut server(100, None), &wire),
            Ok(expected.clone())
        );
        let mut decoder = server(100, None);
        assert_eq!(decode_bytewise(&mut decoder, &wire), Ok(expected));
        assert!(decoder.is_idle());
    }

    #[test]
    fn idle_only_between_messages() {
        let mut decoder = server(100, None);
        assert!(decoder.is_idle());
        let wire = masked(true, false, OpCode::Text, b"Hello");
        let mut buf = BytesMut::from(&wire[..4]);
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        assert!(
            decoder.is_idle(),
            "an incomplete header is left in the buffer"
        );
        buf.extend_from_slice(&wire[4..8]);
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        assert!(!decoder.is_idle(), "header consumed, payload pending");
        buf.extend_from_slice(&wire[8..]);
        assert_eq!(decoder.decode(&mut buf), Ok(Some(text("Hello"))));
        assert!(decoder.is_idle());

        let mut buf = BytesMut::from(&masked(false, false, OpCode::Binary, b"ab")[..]);
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        assert!(!decoder.is_idle(), "a fragment is held");
        assert!(buf.is_empty());
    }

    #[test]
    fn single_frame_payload_is_not_copied() {
        let mut buf = BytesMut::from(&masked(true, false, OpCode::Binary, &[9; 300])[..]);
        let payload_at = buf.as_ptr() as usize + 8;
        let Ok(Some(Message::Binary(payload))) = server(1000, None).decode(&mut buf) else {
            panic!("expected a binary message");
        };
        assert_eq!(payload.as_ptr() as usize, payload_at);
        assert_eq!(payload, vec![9; 300]);
    }

    #[test]
    fn reassembly_buffer_is_released() {
        let mut decoder = server(1 << 20, None);
        let mut wire = masked(false, false, OpCode::Binary, &[1; 500_000]);
        wire.extend(masked(true, false, OpCode::Continuation, &[2; 500_000]));
        let messages = decode_all(&mut decoder, &wire).unwrap();
        assert!(matches!(&messages[..], [Message::Binary(b)] if b.len() == 1_000_000));
        assert!(decoder.is_idle());
        assert_eq!(decoder.message.as_ref().map(|m| m.data.capacity()), None);
    }

    #[test]
    fn idle_codec_size() {
        // One decoder and one encoder live in every connection, idle or not, and idle
        // connections must cost under 1 KiB each. On 64-bit targets they are 64 and 24
        // bytes (392 and 160 with flate2's contexts and the message assembly inline): keep
        // anything large or rarely used boxed.
        assert!(
            std::mem::size_of::<Decoder>() <= 64,
            "Decoder is {} bytes",
            std::mem::size_of::<Decoder>()
        );
        assert!(
            std::mem::size_of::<Encoder>() <= 24,
            "Encoder is {} bytes",
            std::mem::size_of::<Encoder>()
        );
    }

    #[test]
    fn reserved_bits() {
        let rsv = |rsv1, rsv2, rsv3| ProtocolError::ReservedBits { rsv1, rsv2, rsv3 };
        // RSV2 / RSV3, even with deflate.
        let mut wire = masked(true, false, OpCode::Text, b"x");
        wire[0] |= 0x20;
        assert_eq!(
            err(&mut server(100, Some(DEFLATE)), &wire),
            rsv(false, true, false)
        );
        wire[0] ^= 0x30;
        assert_eq!(
            err(&mut server(100, Some(DEFLATE)), &wire),
            rsv(false, false, true)
        );
        // RSV1 without deflate.
        let wire = masked(true, true, OpCode::Text, b"x");
        assert_eq!(err(&mut server(100, None), &wire), rsv(true, false, false));
        // RSV1 on a control frame or a continuation frame.
        let wire = masked(true, true, OpCode::Ping, b"x");
        assert_eq!(
            err(&mut server(100, Some(DEFLATE)), &wire),
            rsv(true, false, false)
        );
        let mut wire = masked(false, true, OpCode::Text, &[0xf2, 0x48]);
        wire.extend(masked(true, true, OpCode::Continuation, &[0xcd]));
        assert_eq!(
            err(&mut server(100, Some(DEFLATE)), &wire),
            rsv(true, false, false)
        );
    }

    #[test]
    fn header_errors_surface() {
        assert_eq!(
            err(&mut server(100, None), &[0x83, 0x80, 0, 0, 0, 0]),
            ProtocolError::ReservedOpCode(3)
        );
        assert_eq!(
            err(
                &mut client(100, None),
                &[0x82, 0x7F, 0x80, 0, 0, 0, 0, 0, 0, 0]
            ),
            ProtocolError::BadLength
        );
        assert_eq!(
            err(&mut client(100, None), &[0x89, 0x7E, 0x00, 0x80]),
            ProtocolError::ControlFrameTooLong(128)
        );
        assert_eq!(
            err(&mut client(100, None), &[0x0A, 0x00]),
            ProtocolError::FragmentedControlFrame
        );
    }

    #[test]
    fn masking_by_role() {
        let unmasked = [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        assert_eq!(
            err(&mut server(100, None), &unmasked),
            ProtocolError::BadMasking
        );
        let masked = masked(true, false, OpCode::Text, b"Hello");
        assert_eq!(
            err(&mut client(100, None), &masked),
            ProtocolError::BadMasking
        );
    }

    #[test]
    fn fragment_sequencing() {
        let wire = masked(true, false, OpCode::Continuation, b"x");
        assert_eq!(
            err(&mut server(100, None), &wire),
            ProtocolError::UnexpectedContinuation
        );
        let mut wire = masked(false, false, OpCode::Text, b"x");
        wire.extend(masked(true, false, OpCode::Binary, b"y"));
        assert_eq!(
            err(&mut server(100, None), &wire),
            ProtocolError::ExpectedContinuation
        );
    }

    #[test]
    fn invalid_utf8_fails_before_the_frame_ends() {
        // Autobahn 6.4.x: the invalid byte arrives, the rest of the frame does not.
        let wire = masked(
            true,
            false,
            OpCode::Text,
            b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xf4\x90\x80\x80edited",
        );
        let mut decoder = server(100, None);
        let mut buf = BytesMut::from(&wire[..6 + 12]);
        assert_eq!(
            decoder.decode(&mut buf),
            Ok(None),
            "0xF4 may still begin a character"
        );
        buf.extend_from_slice(&wire[6 + 12..6 + 13]);
        assert_eq!(decoder.decode(&mut buf), Err(ProtocolError::InvalidUtf8));

        // In a fragmented message, at the first bad fragment.
        let mut decoder = server(100, None);
        let mut wire = masked(false, false, OpCode::Text, b"ok");
        wire.extend(masked(false, false, OpCode::Continuation, b"\xed\xa0\x80"));
        assert_eq!(err(&mut decoder, &wire), ProtocolError::InvalidUtf8);

        // A message ending inside a character.
        let wire = masked(true, false, OpCode::Text, b"ok\xe2\x82");
        assert_eq!(
            err(&mut server(100, None), &wire),
            ProtocolError::InvalidUtf8
        );
        let mut wire = masked(false, false, OpCode::Text, b"ok\xe2\x82");
        wire.extend(masked(true, false, OpCode::Continuation, b""));
        assert_eq!(
            err(&mut server(100, None), &wire),
            ProtocolError::InvalidUtf8
        );

        // A close reason.
        let wire = masked(true, false, OpCode::Close, b"\x03\xe8\xff");
        assert_eq!(
            err(&mut server(100, None), &wire),
            ProtocolError::InvalidUtf8
        );
    }

    #[test]
    fn close_payloads() {
        let wire = masked(true, false, OpCode::Close, &[0x03]);
        assert_eq!(
            err(&mut server(100, None), &wire),
            ProtocolError::BadClosePayload(None)
        );
        for code in [0u16, 999, 1005, 1006, 1015, 2000, 5000] {
            let wire = masked(true, false, OpCode::Close, &code.to_be_bytes());
            assert_eq!(
                err(&mut server(100, None), &wire),
                ProtocolError::BadClosePayload(Some(code))
            );
        }
        let wire = masked(true, false, OpCode::Close, &[0x0F, 0xA0, b'h', b'i']);
        let messages = decode_all(&mut server(100, None), &wire);
        let Ok([Message::Close(Some(frame))]) = messages.as_deref() else {
            panic!("expected a close frame");
        };
        assert_eq!((frame.code, frame.reason_str()), (CloseCode(4000), "hi"));
    }

    #[test]
    fn size_limit_before_buffering() {
        // Only the header of an oversized frame is needed.
        let wire = masked(true, false, OpCode::Binary, &[0; 101]);
        let mut buf = BytesMut::from(&wire[..8]);
        assert_eq!(
            server(100, None).decode(&mut buf),
            Err(ProtocolError::MessageTooBig {
                size: 101,
                max: 100
            })
        );
        // Fragments add up.
        let mut wire = masked(false, false, OpCode::Binary, &[0; 60]);
        wire.extend(masked(false, false, OpCode::Continuation, &[0; 40]));
        wire.extend(masked(true, false, OpCode::Continuation, &[0; 1]));
        assert_eq!(
            err(&mut server(100, None), &wire),
            ProtocolError::MessageTooBig {
                size: 101,
                max: 100
            }
        );
        // Exactly the maximum is fine.
        let wire = masked(true, false, OpCode::Binary, &[0; 100]);
        assert!(decode_all(&mut server(100, None), &wire).is_ok());
        // A huge declared length.
        let wire = [
            0x82, 0xFF, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3, 4,
        ];
        assert!(matches!(
            err(&mut server(100, None), &wire),
            ProtocolError::MessageTooBig { .. }
        ));
    }

    #[test]
    fn rfc7692_examples() {
        // 7.2.3.1: "Hello" compressed in one frame, and in two fragments.
        let one = [0xc1, 0x07, 0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        assert_eq!(
            decode_all(&mut client(100, Some(DEFLATE)), &one),
            Ok(vec![text("Hello")])
        );
        let two = [
            0x41, 0x03, 0xf2, 0x48, 0xcd, 0x80, 0x04, 0xc9, 0xc9, 0x07, 0x00,
        ];
        assert_eq!(
            decode_all(&mut client(100, Some(DEFLATE)), &two),
            Ok(vec![text("Hello")])
        );
        assert_eq!(
            decode_bytewise(&mut client(100, Some(DEFLATE)), &two),
            Ok(vec![text("Hello")])
        );

        // 7.2.3.2: the second message refers to the first (context takeover).
        let mut shared = one.to_vec();
        shared.extend([0xc1, 0x05, 0xf2, 0x00, 0x11, 0x00, 0x00]);
        assert_eq!(
            decode_all(&mut client(100, Some(TAKEOVER)), &shared),
            Ok(vec![text("Hello"), text("Hello")])
        );
        // Without takeover the same bytes cannot be inflated.
        assert!(matches!(
            err(&mut client(100, Some(DEFLATE)), &shared),
            ProtocolError::BadDeflate(_)
        ));

        // 7.2.3.3: a stored block; 7.2.3.4: a final block, then more compressed messages.
        let mut wire = vec![
            0xc1, 0x0b, 0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00,
        ];
        wire.extend([0xc1, 0x08, 0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00]);
        wire.extend(one);
        for params in [DEFLATE, TAKEOVER] {
            assert_eq!(
                decode_all(&mut client(100, Some(params)), &wire),
                Ok(vec![text("Hello"), text("Hello"), text("Hello")])
            );
        }

        // An uncompressed message on a deflate connection.
        let plain = [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        assert_eq!(
            decode_all(&mut client(100, Some(DEFLATE)), &plain),
            Ok(vec![text("Hello")])
        );
    }

    #[test]
    fn bad_deflate_data() {
        let wire = masked(true, true, OpCode::Binary, &[0xff, 0xff, 0xff]);
        assert!(matches!(
            err(&mut server(100, Some(DEFLATE)), &wire),
            ProtocolError::BadDeflate(_)
        ));
    }

    #[test]
    fn invalid_utf8_in_compressed_text() {
        let mut payload = BytesMut::new();
        pool::with_compressor(15, |c| stream::compress(c, b"abc\xff", &mut payload));
        let wire = masked(true, true, OpCode::Text, &payload);
        assert_eq!(
            err(&mut server(100, Some(DEFLATE)), &wire),
            ProtocolError::InvalidUtf8
        );
    }

    #[test]
    fn inflate_bomb() {
        const MAX: usize = 64 * 1024;
        let mut payload = BytesMut::new();
        pool::with_compressor(15, |c| {
            stream::compress(c, &vec![0; 10 << 20], &mut payload)
        });
        // Deflate's best ratio is about 1:1000.
        assert!(payload.len() < 12 * 1024, "{} bytes", payload.len());
        for (role, mask) in [(Role::Server, Some(MASK)), (Role::Client, None)] {
            let mut wire = BytesMut::new();
            write_frame(&mut wire, true, true, OpCode::Binary, mask, &payload);
            let mut decoder = Decoder::new(
                role,
                DecoderConfig::default().with_max_message_size(MAX),
                Some(DEFLATE),
            );
            let error = decoder.decode(&mut wire).unwrap_err();
            let ProtocolError::MessageTooBig { size, max } = error else {
                panic!("{error:?}");
            };
            assert_eq!(max, MAX);
            assert!(
                size as usize > MAX && size as usize <= MAX + stream::INFLATE_CHUNK,
                "{size}"
            );
        }
    }

    #[test]
    fn inflated_size_limit_is_exact() {
        let mut payload = BytesMut::new();
        pool::with_compressor(15, |c| stream::compress(c, &[b'a'; 1000], &mut payload));
        let wire = masked(true, true, OpCode::Text, &payload);
        assert!(decode_all(&mut server(1000, Some(DEFLATE)), &wire).is_ok());
        assert_eq!(
            err(&mut server(999, Some(DEFLATE)), &wire),
            ProtocolError::MessageTooBig {
                size: 1000,
                max: 999
            }
        );
    }

    #[test]
    fn pooled_and_owned_inflaters() {
        let mut payload = BytesMut::new();
        pool::with_compressor(15, |c| {
            stream::compress(c, b"Hello, Hello, Hello", &mut payload)
        });
        let wire = masked(true, true, OpCode::Text, &payload);
        // The peer resets its context: nothing is kept between messages.
        let mut decoder = server(100, Some(DEFLATE));
        decode_all(&mut decoder, &wire).unwrap();
        assert!(decoder.inflater.is_none());
        // The peer keeps it: so do we.
        let mut decoder = server(100, Some(TAKEOVER));
        decode_all(&mut decoder, &wire).unwrap();
        assert!(decoder.inflater.is_some());
    }

    #[test]
    fn encoder_rfc7692() {
        let mut out = BytesMut::new();
        let mut encoder = Encoder::new(Role::Server, Some(DEFLATE), 0);
        encoder.encode(OpCode::Text, b"Hello", &mut out);
        encoder.encode(OpCode::Text, b"Hello", &mut out);
        let hello = [0xc1, 0x07, 0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        assert_eq!(&out[..], [hello, hello].concat());
        assert!(
            encoder.compressor.is_none(),
            "no context takeover: pooled compressor"
        );

        let mut out = BytesMut::new();
        let mut encoder = Encoder::new(Role::Server, Some(TAKEOVER), 0);
        encoder.encode(OpCode::Text, b"Hello", &mut out);
        encoder.encode(OpCode::Text, b"Hello", &mut out);
        assert_eq!(
            &out[..],
            [&hello[..], &[0xc1, 0x05, 0xf2, 0x00, 0x11, 0x00, 0x00]].concat()
        );
    }

    #[test]
    fn empty_compressed_messages() {
        // RFC 7692 7.2.3.6: an empty message compresses to one 0x00 byte, also when the
        // compressor has nothing left to flush (context takeover).
        for params in [DEFLATE, TAKEOVER] {
            let mut encoder = Encoder::new(Role::Server, Some(params), 0);
            let mut out = BytesMut::new();
            encoder.encode(OpCode::Text, b"", &mut out);
            encoder.encode(OpCode::Text, b"", &mut out);
            assert_eq!(&out[..], [0xc1, 0x01, 0x00, 0xc1, 0x01, 0x00]);
            assert_eq!(
                decode_all(&mut client(100, Some(params)), &out),
                Ok(vec![text(""), text("")])
            );
        }
    }

    #[test]
    fn encoder_threshold_and_control_frames() {
        let mut out = BytesMut::new();
        let mut encoder = Encoder::new(Role::Server, Some(DEFLATE), 6);
        encoder.encode(OpCode::Text, b"Hello", &mut out);
        assert_eq!(&out[..], [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
        out.clear();
        encoder.encode(OpCode::Ping, b"Hello!", &mut out);
        assert_eq!(out[0], 0x89);
        out.clear();
        encoder.encode_close(
            Some(&CloseFrame::new(CloseCode::GOING_AWAY, "bye")),
            &mut out,
        );
        assert_eq!(&out[..], [0x88, 0x05, 0x03, 0xE9, b'b', b'y', b'e']);
        out.clear();
        encoder.encode_close(None, &mut out);
        assert_eq!(&out[..], [0x88, 0x00]);
        assert_eq!(encoder.deflate(), Some(&DEFLATE));
    }

    #[test]
    fn client_encoder_masks_every_frame() {
        let mut encoder = Encoder::new(Role::Client, None, 0);
        let mut out = BytesMut::new();
        encoder.encode(OpCode::Text, &[b'a'; 100], &mut out);
        encoder.encode(OpCode::Text, &[b'a'; 100], &mut out);
        let (first, second) = out.split_at(106);
        assert_eq!(first[1], 0x80 | 100);
        assert_ne!(first[2..6], second[2..6], "a fresh key per frame");
        assert_eq!(decode_all(&mut server(100, None), &out).unwrap().len(), 2);
    }

    #[test]
    fn compressed_frame_header_sizes() {
        // Compression moves payloads across the 126-byte and 64 KiB header boundaries.
        for len in [100, 126, 200, 300, 65_535, 65_536, 70_000] {
            for role in [Role::Server, Role::Client] {
                let payload: Vec<u8> = (0..len).map(|i| (i % 7) as u8).collect();
                let mut out = BytesMut::new();
                Encoder::new(role, Some(DEFLATE), 0).encode(OpCode::Binary, &payload, &mut out);
                let peer = match role {
                    Role::Server => Role::Client,
                    Role::Client => Role::Server,
                };
                let mut decoder = Decoder::new(
                    peer,
                    DecoderConfig::default().with_max_message_size(1 << 20),
                    Some(DEFLATE),
                );
                assert_eq!(
                    decoder.decode(&mut out),
                    Ok(Some(Message::Binary(payload.into())))
                );
                assert!(out.is_empty());
            }
        }
        // Incompressible data grows a little and may need a longer header.
        let random: Vec<u8> = (0..125).map(|_| rand::random()).collect();
        let mut out = BytesMut::new();
        Encoder::new(Role::Server, Some(DEFLATE), 0).encode(OpCode::Binary, &random, &mut out);
        assert_eq!(out[1], 126);
        assert_eq!(
            client(1000, Some(DEFLATE)).decode(&mut out),
            Ok(Some(Message::Binary(random.into())))
        );
    }
}
