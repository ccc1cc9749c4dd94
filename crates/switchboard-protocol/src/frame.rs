//! Frame headers (RFC 6455 section 5.2): parsing, writing and masking.

use bytes::BytesMut;

use crate::error::ProtocolError;

/// A frame opcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    /// 0x0: continuation of a fragmented message.
    Continuation,
    /// 0x1: text.
    Text,
    /// 0x2: binary.
    Binary,
    /// 0x8: close.
    Close,
    /// 0x9: ping.
    Ping,
    /// 0xA: pong.
    Pong,
}

impl OpCode {
    /// Whether this is a control opcode (close, ping, pong).
    pub fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// FIN bit.
    pub fin: bool,
    /// RSV1 (the permessage-deflate "compressed" bit on a message's first frame).
    pub rsv1: bool,
    /// RSV2.
    pub rsv2: bool,
    /// RSV3.
    pub rsv3: bool,
    /// The opcode.
    pub opcode: OpCode,
    /// The masking key, when the MASK bit is set.
    pub mask: Option<[u8; 4]>,
    /// Payload length.
    pub len: u64,
}

impl FrameHeader {
    /// Parses a header from the start of `buf`. `Ok(None)` when `buf` is too short; otherwise
    /// the header and its length in bytes (2 to 14). Checks only what the header alone shows:
    /// reserved opcodes, the 64-bit length's top bit, control frame length and fragmentation.
    pub fn parse(buf: &[u8]) -> Result<Option<(FrameHeader, usize)>, ProtocolError> {
        let _ = buf;
        todo!()
    }

    /// Appends the encoded header to `out` (minimal length encoding).
    pub fn write(&self, out: &mut BytesMut) {
        let _ = out;
        todo!()
    }
}

/// XORs `data` with `mask`, starting at byte `offset` of the payload (so a payload can be
/// unmasked in pieces as it arrives).
pub fn apply_mask(data: &mut [u8], mask: [u8; 4], offset: usize) {
    let _ = (data, mask, offset);
    todo!()
}

/// Appends one whole frame (header and payload, masked with `mask` when given) to `out`.
pub fn write_frame(
    out: &mut BytesMut,
    fin: bool,
    rsv1: bool,
    opcode: OpCode,
    mask: Option<[u8; 4]>,
    payload: &[u8],
) {
    let _ = (out, fin, rsv1, opcode, mask, payload);
    todo!()
}
