//! Messages from frames and frames from messages: reassembly of fragments, control frames
//! interleaved with fragments, UTF-8 validation, inflation, size limits.

use bytes::{Bytes, BytesMut};

use crate::{Role, close::CloseFrame, deflate::DeflateParams, error::ProtocolError, frame::OpCode};

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

/// Limits applied while decoding. Defaults follow `../shared/PROTOCOL.md` section 7.
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
#[derive(Debug)]
pub struct Decoder {
    _private: (),
}

impl Decoder {
    /// A decoder for a connection in `role`, with permessage-deflate when `deflate` is given.
    pub fn new(role: Role, config: DecoderConfig, deflate: Option<DeflateParams>) -> Self {
        let _ = (role, config, deflate);
        todo!()
    }

    /// Decodes the next whole message from the front of `buf`, consuming what it used.
    /// `Ok(None)`: more bytes are needed (what was consumed is kept inside, e.g. complete
    /// fragments and a partial text frame already validated). After an error the connection
    /// must be closed with [`ProtocolError::close_code`].
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Message>, ProtocolError> {
        let _ = buf;
        todo!()
    }

    /// Whether no partial message is held, so the connection's read buffer may be released.
    pub fn is_idle(&self) -> bool {
        todo!()
    }
}

/// Frames outgoing messages for one connection, compressing when negotiated and the payload
/// reaches the threshold.
#[derive(Debug)]
pub struct Encoder {
    _private: (),
}

impl Encoder {
    /// An encoder for a connection in `role` (client frames get a random mask), with
    /// permessage-deflate when `deflate` is given; payloads shorter than `threshold` bytes are
    /// sent uncompressed.
    pub fn new(role: Role, deflate: Option<DeflateParams>, threshold: usize) -> Self {
        let _ = (role, deflate, threshold);
        todo!()
    }

    /// Appends one message as a single frame to `out`. `opcode` is Text or Binary (compressed
    /// when negotiated and large enough) or a control opcode (never compressed).
    pub fn encode(&mut self, opcode: OpCode, payload: &[u8], out: &mut BytesMut) {
        let _ = (opcode, payload, out);
        todo!()
    }

    /// Appends a close frame.
    pub fn encode_close(&mut self, frame: Option<&CloseFrame>, out: &mut BytesMut) {
        let _ = (frame, out);
        todo!()
    }

    /// The negotiated deflate parameters, if any.
    pub fn deflate(&self) -> Option<&DeflateParams> {
        todo!()
    }
}
