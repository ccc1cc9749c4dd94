//! Per-thread pools of zlib contexts, so that a connection holds one only while it compresses
//! or inflates a message (see the memory policy in [`crate::deflate`]).
//!
//! Contexts are boxed: flate2's `Compress` and `Decompress` are about 150 bytes inline, so
//! boxing keeps the `Option` fields of every encoder and decoder at one pointer, and moving a
//! context in and out of the pool (or of a decoder) copies a pointer. The box is allocated
//! with the context and travels with it, so taking and returning one allocates nothing.

use std::cell::RefCell;

use flate2::{Compress, Compression, Decompress};

/// Compression level: zlib's default, a good ratio for JSON at a moderate cost.
const LEVEL: Compression = Compression::new(6);

/// Window sizes zlib can compress with (it refuses 8 for raw deflate).
const COMPRESS_BITS: std::ops::RangeInclusive<u8> = 9..=15;

/// Idle decompressors kept per thread. A decoder holds one from the first frame of a
/// compressed message to its last, so a thread may have several out at once; beyond this
/// many idle ones, returned contexts are freed.
const MAX_IDLE_DECOMPRESSORS: usize = 4;

thread_local! {
    /// One idle compressor per window size: compression is synchronous, so a thread never
    /// needs two of the same size at once.
    static COMPRESSORS: RefCell<[Option<Box<Compress>>; 7]> = RefCell::new(Default::default());
    // Boxed although a `Vec` is on the heap: the box is what a decoder takes and returns.
    #[allow(clippy::vec_box)]
    static DECOMPRESSORS: RefCell<Vec<Box<Decompress>>> = const { RefCell::new(Vec::new()) };
}

/// The window zlib compresses with when `negotiated` bits were agreed: 8 becomes 9. A
/// 9-bit zlib compressor never emits a distance beyond 250 (its window less the 262-byte
/// lookahead), so its output inflates with an 8-bit window.
pub(crate) fn compress_bits(negotiated: u8) -> u8 {
    negotiated.clamp(*COMPRESS_BITS.start(), *COMPRESS_BITS.end())
}

/// A new raw-deflate compressor for a window of `bits` (negotiated value, see [`compress_bits`]).
pub(crate) fn new_compressor(bits: u8) -> Box<Compress> {
    Box::new(Compress::new_with_window_bits(
        LEVEL,
        false,
        compress_bits(bits),
    ))
}

/// A new raw-deflate decompressor. It always has the largest window: a stream made with a
/// smaller one inflates the same.
pub(crate) fn new_decompressor() -> Box<Decompress> {
    Box::new(Decompress::new_with_window_bits(false, 15))
}

/// Runs `f` with a fresh compressor for `bits` borrowed from this thread's pool.
pub(crate) fn with_compressor<R>(bits: u8, f: impl FnOnce(&mut Compress) -> R) -> R {
    let slot = usize::from(compress_bits(bits) - COMPRESS_BITS.start());
    // `try_with`: during thread teardown the pool may be gone; work without it then.
    let pooled = COMPRESSORS
        .try_with(|pool| pool.borrow_mut()[slot].take())
        .ok()
        .flatten();
    let mut compressor = pooled.unwrap_or_else(|| new_compressor(bits));
    let result = f(&mut compressor);
    compressor.reset();
    let _ = COMPRESSORS.try_with(|pool| pool.borrow_mut()[slot] = Some(compressor));
    result
}

/// A fresh decompressor from this thread's pool (or a new one).
pub(crate) fn take_decompressor() -> Box<Decompress> {
    DECOMPRESSORS
        .try_with(|pool| pool.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_else(new_decompressor)
}

/// Returns a decompressor to this thread's pool, reset for its next message.
pub(crate) fn give_decompressor(mut decompressor: Box<Decompress>) {
    decompressor.reset(false);
    let _ = DECOMPRESSORS.try_with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.len() < MAX_IDLE_DECOMPRESSORS {
            pool.push(decompressor);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_bits_for_compression() {
        assert_eq!(compress_bits(8), 9);
        assert_eq!(compress_bits(9), 9);
        assert_eq!(compress_bits(15), 15);
    }

    #[test]
    fn pooled_compressor_is_fresh_each_time() {
        let first = with_compressor(15, |c| c.total_in());
        with_compressor(15, |c| {
            let mut out = [0; 64];
            c.compress(b"hello", &mut out, flate2::FlushCompress::Sync)
                .unwrap();
        });
        assert_eq!(with_compressor(15, |c| c.total_in()), first);
    }
}
