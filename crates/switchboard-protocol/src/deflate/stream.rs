//! One message through zlib: compressing with the tail stripped (RFC 7692 7.2.1) and
//! inflating in bounded steps (7.2.2).

use bytes::BytesMut;
use flate2::{Compress, Decompress, FlushCompress, FlushDecompress, Status};

use crate::error::ProtocolError;

/// The empty stored block a sync flush ends with: stripped from every compressed message by
/// the sender and appended again by the receiver.
pub(crate) const TAIL: [u8; 4] = [0x00, 0x00, 0xFF, 0xFF];

/// Most bytes inflated per step. The output limit is checked after every step, so a
/// decompression bomb is stopped within one step of the limit.
pub(crate) const INFLATE_CHUNK: usize = 64 * 1024;

/// Appends `input` compressed as one message: raw deflate, sync-flushed, tail removed.
pub(crate) fn compress(compressor: &mut Compress, mut input: &[u8], out: &mut BytesMut) {
    let start = out.len();
    loop {
        let at = out.len();
        // Deflate barely grows incompressible data, so this is room enough for one pass;
        // the loop is for the rare rest.
        let room = input.len() + 64;
        out.resize(at + room, 0);
        let (in_before, out_before) = (compressor.total_in(), compressor.total_out());
        let status = compressor.compress(input, &mut out[at..], FlushCompress::Sync);
        let consumed = (compressor.total_in() - in_before) as usize;
        let produced = (compressor.total_out() - out_before) as usize;
        out.truncate(at + produced);
        // zlib fails only on a corrupted stream state, which safe code cannot produce.
        status.expect("deflate into a memory buffer");
        input = &input[consumed..];
        // zlib leaves output space unused only once the flush is complete.
        if input.is_empty() && produced < room {
            break;
        }
    }
    if out[start..].ends_with(&TAIL) {
        out.truncate(out.len() - TAIL.len());
    } else {
        // A sync flush with nothing new since the last one (an empty message under context
        // takeover) writes nothing at all, but the receiver needs a block header before the
        // tail it appends: send the empty stored block's first byte (RFC 7692 7.2.3.6).
        debug_assert_eq!(out.len(), start);
        out.extend_from_slice(&[0x00]);
    }
}

/// Inflates `input` (one piece of a compressed message) onto `out`, the message so far,
/// failing as soon as `out` would pass `max` bytes. Returns `true` when the deflate stream
/// ended (a block with BFINAL set, RFC 7692 7.2.3.4): what follows is ignored, and the
/// decompressor must be reset before the next message.
pub(crate) fn inflate(
    decompressor: &mut Decompress,
    mut input: &[u8],
    out: &mut Vec<u8>,
    max: usize,
) -> Result<bool, ProtocolError> {
    loop {
        let at = out.len();
        // Grow with the message (few calls for large ones) but never past one byte beyond
        // `max`: that byte is enough to know the message is too big.
        let room = at
            .max(input.len() * 2)
            .clamp(256, INFLATE_CHUNK)
            .min(max.saturating_add(1).saturating_sub(at))
            .max(1);
        out.resize(at + room, 0);
        let (in_before, out_before) = (decompressor.total_in(), decompressor.total_out());
        let status = decompressor.decompress(input, &mut out[at..], FlushDecompress::None);
        let consumed = (decompressor.total_in() - in_before) as usize;
        let produced = (decompressor.total_out() - out_before) as usize;
        out.truncate(at + produced);
        let status = status.map_err(|e| ProtocolError::BadDeflate(e.to_string()))?;
        if out.len() > max {
            return Err(ProtocolError::MessageTooBig {
                size: out.len() as u64,
                max,
            });
        }
        if status == Status::StreamEnd {
            return Ok(true);
        }
        input = &input[consumed..];
        // zlib stops short of filling the output only when it needs more input.
        if produced < room && (input.is_empty() || consumed == 0) {
            return Ok(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deflate::pool;

    #[test]
    fn rfc7692_hello() {
        // RFC 7692 7.2.3.1: "Hello" compressed.
        let mut out = BytesMut::new();
        pool::with_compressor(15, |c| compress(c, b"Hello", &mut out));
        assert_eq!(&out[..], [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]);

        let mut d = pool::new_decompressor();
        let mut text = Vec::new();
        assert_eq!(inflate(&mut d, &out, &mut text, 100), Ok(false));
        assert_eq!(inflate(&mut d, &TAIL, &mut text, 100), Ok(false));
        assert_eq!(text, b"Hello");
    }

    #[test]
    fn rfc7692_shared_context() {
        // RFC 7692 7.2.3.2: the second "Hello" refers back to the first.
        let mut c = pool::new_compressor(15);
        let mut first = BytesMut::new();
        compress(&mut c, b"Hello", &mut first);
        let mut second = BytesMut::new();
        compress(&mut c, b"Hello", &mut second);
        assert_eq!(&first[..], [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]);
        assert_eq!(&second[..], [0xf2, 0x00, 0x11, 0x00, 0x00]);

        let mut d = pool::new_decompressor();
        for payload in [&first[..], &second[..]] {
            let mut text = Vec::new();
            inflate(&mut d, payload, &mut text, 100).unwrap();
            inflate(&mut d, &TAIL, &mut text, 100).unwrap();
            assert_eq!(text, b"Hello");
        }
    }

    #[test]
    fn rfc7692_bfinal_and_stored_blocks() {
        let mut d = pool::new_decompressor();
        let mut text = Vec::new();
        // 7.2.3.3: a stored (uncompressed) block.
        inflate(
            &mut d,
            &[
                0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00,
            ],
            &mut text,
            100,
        )
        .unwrap();
        inflate(&mut d, &TAIL, &mut text, 100).unwrap();
        assert_eq!(text, b"Hello");
        // 7.2.3.4: a block with BFINAL set; what follows is ignored.
        let mut d = pool::new_decompressor();
        let mut text = Vec::new();
        assert_eq!(
            inflate(
                &mut d,
                &[0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00],
                &mut text,
                100
            ),
            Ok(true)
        );
        assert_eq!(inflate(&mut d, &TAIL, &mut text, 100), Ok(true));
        assert_eq!(text, b"Hello");
    }

    #[test]
    fn corrupt_data() {
        let mut d = pool::new_decompressor();
        // Block type 3 is reserved.
        let err = inflate(&mut d, &[0xff, 0xff, 0xff], &mut Vec::new(), 100).unwrap_err();
        assert!(matches!(err, ProtocolError::BadDeflate(_)), "{err:?}");
    }

    #[test]
    fn limit_stops_inflating() {
        let mut compressed = BytesMut::new();
        pool::with_compressor(15, |c| compress(c, &[b'a'; 10_000], &mut compressed));
        let mut d = pool::new_decompressor();
        let mut out = Vec::new();
        let err = inflate(&mut d, &compressed, &mut out, 999).unwrap_err();
        assert_eq!(
            err,
            ProtocolError::MessageTooBig {
                size: 1000,
                max: 999
            }
        );
        assert_eq!(out.len(), 1000);
    }
}
