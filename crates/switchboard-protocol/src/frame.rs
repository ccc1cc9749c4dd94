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

    fn from_u8(byte: u8) -> Result<OpCode, ProtocolError> {
        Ok(match byte {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            other => return Err(ProtocolError::ReservedOpCode(other)),
        })
    }

    fn as_u8(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }
}

/// The largest header: 2 bytes, a 64-bit length and a masking key.
pub(crate) const MAX_HEADER_LEN: usize = 14;

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
    ///
    /// A length not encoded in the fewest bytes (RFC 6455 5.2: "the minimal number of bytes
    /// MUST be used") is [`ProtocolError::BadLength`].
    pub fn parse(buf: &[u8]) -> Result<Option<(FrameHeader, usize)>, ProtocolError> {
        let [b0, b1, rest @ ..] = buf else {
            return Ok(None);
        };
        // Everything the first two bytes show is checked before waiting for the rest, so a
        // broken peer fails at once.
        let opcode = OpCode::from_u8(b0 & 0x0F)?;
        let fin = b0 & 0x80 != 0;
        if opcode.is_control() && !fin {
            return Err(ProtocolError::FragmentedControlFrame);
        }
        let masked = b1 & 0x80 != 0;
        let (len, ext) = match b1 & 0x7F {
            126 => {
                let Some(bytes) = rest.first_chunk::<2>() else {
                    return Ok(None);
                };
                let len = u16::from_be_bytes(*bytes);
                if len < 126 {
                    return Err(ProtocolError::BadLength);
                }
                (u64::from(len), 2)
            }
            127 => {
                let Some(bytes) = rest.first_chunk::<8>() else {
                    return Ok(None);
                };
                let len = u64::from_be_bytes(*bytes);
                if len >> 63 != 0 || len <= u64::from(u16::MAX) {
                    return Err(ProtocolError::BadLength);
                }
                (len, 8)
            }
            len => (u64::from(len), 0),
        };
        if opcode.is_control() && len > 125 {
            return Err(ProtocolError::ControlFrameTooLong(len));
        }
        let mask = if masked {
            match rest.get(ext..).and_then(|r| r.first_chunk::<4>()) {
                Some(key) => Some(*key),
                None => return Ok(None),
            }
        } else {
            None
        };
        let header = FrameHeader {
            fin,
            rsv1: b0 & 0x40 != 0,
            rsv2: b0 & 0x20 != 0,
            rsv3: b0 & 0x10 != 0,
            opcode,
            mask,
            len,
        };
        Ok(Some((header, 2 + ext + if masked { 4 } else { 0 })))
    }

    /// Appends the encoded header to `out` (minimal length encoding).
    pub fn write(&self, out: &mut BytesMut) {
        let mut bytes = [0; MAX_HEADER_LEN];
        let n = self.encode(&mut bytes);
        out.extend_from_slice(&bytes[..n]);
    }

    /// Encodes the header into `out`, returning its length.
    pub(crate) fn encode(&self, out: &mut [u8; MAX_HEADER_LEN]) -> usize {
        out[0] = u8::from(self.fin) << 7
            | u8::from(self.rsv1) << 6
            | u8::from(self.rsv2) << 5
            | u8::from(self.rsv3) << 4
            | self.opcode.as_u8();
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        let mut n = match self.len {
            // The casts are exact: each arm bounds the value.
            len @ 0..=125 => {
                out[1] = mask_bit | len as u8;
                2
            }
            len @ 126..=0xFFFF => {
                out[1] = mask_bit | 126;
                out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
                4
            }
            len => {
                out[1] = mask_bit | 127;
                out[2..10].copy_from_slice(&len.to_be_bytes());
                10
            }
        };
        if let Some(key) = self.mask {
            out[n..n + 4].copy_from_slice(&key);
            n += 4;
        }
        n
    }
}

/// The length of a header for a payload of `len` bytes, masked or not.
pub(crate) fn header_len(len: usize, masked: bool) -> usize {
    let ext = match len {
        0..=125 => 0,
        126..=0xFFFF => 2,
        _ => 8,
    };
    2 + ext + if masked { 4 } else { 0 }
}

/// XORs `data` with `mask`, starting at byte `offset` of the payload (so a payload can be
/// unmasked in pieces as it arrives).
pub fn apply_mask(data: &mut [u8], mask: [u8; 4], offset: usize) {
    // Rotate the key so that byte 0 of `data` meets the key byte for payload byte `offset`.
    let mut key = mask;
    key.rotate_left(offset % 4);
    let wide = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let bytes: &mut [u8; 8] = chunk.try_into().expect("chunks_exact_mut yields 8 bytes");
        *bytes = (u64::from_ne_bytes(*bytes) ^ wide).to_ne_bytes();
    }
    // The tail is shorter than 8 bytes and starts at a multiple of 8, so the key lines up again.
    for (byte, k) in chunks.into_remainder().iter_mut().zip(key.iter().cycle()) {
        *byte ^= k;
    }
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
    let header = FrameHeader {
        fin,
        rsv1,
        rsv2: false,
        rsv3: false,
        opcode,
        mask,
        len: payload.len() as u64,
    };
    out.reserve(header_len(payload.len(), mask.is_some()) + payload.len());
    header.write(out);
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(key) = mask {
        apply_mask(&mut out[start..], key, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> Result<Option<(FrameHeader, usize)>, ProtocolError> {
        FrameHeader::parse(bytes)
    }

    fn header(opcode: OpCode, mask: Option<[u8; 4]>, len: u64) -> FrameHeader {
        FrameHeader {
            fin: true,
            rsv1: false,
            rsv2: false,
            rsv3: false,
            opcode,
            mask,
            len,
        }
    }

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    #[test]
    fn rfc6455_examples() {
        // 5.7: a single-frame unmasked text message.
        let unmasked = [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        assert_eq!(
            parse(&unmasked),
            Ok(Some((header(OpCode::Text, None, 5), 2)))
        );
        let mut out = BytesMut::new();
        write_frame(&mut out, true, false, OpCode::Text, None, b"Hello");
        assert_eq!(&out[..], unmasked);

        // A single-frame masked text message.
        let masked = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        assert_eq!(
            parse(&masked),
            Ok(Some((header(OpCode::Text, Some(MASK), 5), 6)))
        );
        let mut out = BytesMut::new();
        write_frame(&mut out, true, false, OpCode::Text, Some(MASK), b"Hello");
        assert_eq!(&out[..], masked);
        let mut payload = masked[6..].to_vec();
        apply_mask(&mut payload, MASK, 0);
        assert_eq!(payload, b"Hello");

        // A fragmented unmasked text message.
        let (first, first_len) = parse(&[0x01, 0x03, 0x48, 0x65, 0x6c]).unwrap().unwrap();
        assert!(!first.fin && first.opcode == OpCode::Text && first.len == 3 && first_len == 2);
        let (last, _) = parse(&[0x80, 0x02, 0x6c, 0x6f]).unwrap().unwrap();
        assert!(last.fin && last.opcode == OpCode::Continuation && last.len == 2);

        // Unmasked ping, masked pong.
        assert_eq!(
            parse(&[0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]),
            Ok(Some((header(OpCode::Ping, None, 5), 2)))
        );
        assert_eq!(
            parse(&[
                0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58
            ]),
            Ok(Some((header(OpCode::Pong, Some(MASK), 5), 6)))
        );

        // 256 bytes of binary data: 16-bit length.
        let mut out = BytesMut::new();
        write_frame(&mut out, true, false, OpCode::Binary, None, &[7; 256]);
        assert_eq!(out[..4], [0x82, 0x7E, 0x01, 0x00]);
        assert_eq!(out.len(), 4 + 256);
        assert_eq!(
            parse(&out),
            Ok(Some((header(OpCode::Binary, None, 256), 4)))
        );

        // 64 KiB of binary data: 64-bit length.
        let mut out = BytesMut::new();
        write_frame(&mut out, true, false, OpCode::Binary, None, &[7; 65536]);
        assert_eq!(out[..10], [0x82, 0x7F, 0, 0, 0, 0, 0, 0x01, 0x00, 0x00]);
        assert_eq!(out.len(), 10 + 65536);
        assert_eq!(
            parse(&out),
            Ok(Some((header(OpCode::Binary, None, 65536), 10)))
        );
    }

    #[test]
    fn short_input_needs_more() {
        let mut out = BytesMut::new();
        header(OpCode::Binary, Some(MASK), 1 << 20).write(&mut out);
        assert_eq!(out.len(), 14);
        for end in 0..out.len() {
            assert_eq!(parse(&out[..end]), Ok(None), "prefix of {end} bytes");
        }
        assert_eq!(
            parse(&out),
            Ok(Some((header(OpCode::Binary, Some(MASK), 1 << 20), 14)))
        );
    }

    #[test]
    fn header_round_trips_with_minimal_length() {
        for len in [
            0,
            1,
            125,
            126,
            127,
            0xFFFF,
            0x1_0000,
            1 << 40,
            (1 << 63) - 1,
        ] {
            for mask in [None, Some(MASK)] {
                let mut h = header(OpCode::Binary, mask, len);
                h.fin = len % 2 == 0;
                h.rsv1 = true;
                h.rsv3 = true;
                let mut out = BytesMut::new();
                h.write(&mut out);
                let expected =
                    header_len(usize::try_from(len).unwrap_or(usize::MAX), mask.is_some());
                assert_eq!(out.len(), expected, "len {len}");
                assert_eq!(parse(&out), Ok(Some((h, expected))));
            }
        }
    }

    #[test]
    fn header_errors() {
        for opcode in [3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
            assert_eq!(
                parse(&[0x80 | opcode, 0]),
                Err(ProtocolError::ReservedOpCode(opcode))
            );
        }
        // 64-bit length with the top bit set.
        let huge = [0x82, 0x7F, 0x80, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(parse(&huge), Err(ProtocolError::BadLength));
        // Lengths not in their shortest form.
        assert_eq!(
            parse(&[0x82, 0x7E, 0x00, 0x7D]),
            Err(ProtocolError::BadLength)
        );
        assert_eq!(
            parse(&[0x82, 0x7F, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF]),
            Err(ProtocolError::BadLength)
        );
        // Control frames: at most 125 bytes, never fragmented.
        assert_eq!(
            parse(&[0x89, 0x7E, 0x00, 0x7E]),
            Err(ProtocolError::ControlFrameTooLong(126))
        );
        assert_eq!(
            parse(&[0x09, 0x00]),
            Err(ProtocolError::FragmentedControlFrame)
        );
        assert_eq!(
            parse(&[0x08, 0x00]),
            Err(ProtocolError::FragmentedControlFrame)
        );
        // Reserved bits are the decoder's business, not the header's.
        assert!(parse(&[0xF1, 0x00]).unwrap().is_some());
    }

    #[test]
    fn mask_in_pieces_at_every_offset() {
        let data: Vec<u8> = (0..=255).cycle().take(1000).collect();
        let key = [0x12, 0x34, 0x56, 0x78];
        let expected: Vec<u8> = data
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ key[i % 4])
            .collect();
        for split in [0, 1, 2, 3, 5, 7, 8, 9, 13, 64, 999, 1000] {
            let mut masked = data.clone();
            let (a, b) = masked.split_at_mut(split);
            apply_mask(a, key, 0);
            apply_mask(b, key, split);
            assert_eq!(masked, expected, "split at {split}");
        }
    }
}
