//! The low-level JSON writer the encoders share: a buffer trait and the pieces they append.
//! It knows nothing of the protocol's messages, so every other module of `wire` may use it.

use std::io;

use serde_json::value::RawValue;

/// A buffer the encoders append to: implemented for `Vec<u8>` and `bytes::BytesMut`. Both
/// become a `bytes::Bytes` without copying (`Bytes::from(vec)`, `bytes_mut.freeze()`).
pub trait WireBuf {
    /// Appends `bytes`.
    fn write_bytes(&mut self, bytes: &[u8]);
    /// Reserves room for at least `additional` more bytes.
    fn reserve_bytes(&mut self, additional: usize);
    /// The number of bytes in the buffer.
    fn written_len(&self) -> usize;
    /// Shortens the buffer to `len` bytes (to undo a failed encode).
    fn truncate_bytes(&mut self, len: usize);
}

impl WireBuf for Vec<u8> {
    fn write_bytes(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
    fn reserve_bytes(&mut self, additional: usize) {
        self.reserve(additional);
    }
    fn written_len(&self) -> usize {
        self.len()
    }
    fn truncate_bytes(&mut self, len: usize) {
        self.truncate(len);
    }
}

impl WireBuf for bytes::BytesMut {
    fn write_bytes(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
    fn reserve_bytes(&mut self, additional: usize) {
        self.reserve(additional);
    }
    fn written_len(&self) -> usize {
        self.len()
    }
    fn truncate_bytes(&mut self, len: usize) {
        self.truncate(len);
    }
}

/// `io::Write` over a [`WireBuf`], for serde_json. Never fails.
pub(super) struct IoWriter<'b, B: ?Sized>(pub(super) &'b mut B);

impl<B: WireBuf + ?Sized> io::Write for IoWriter<'_, B> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write_bytes(buf);
        Ok(buf.len())
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0.write_bytes(buf);
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub(super) fn put<B: WireBuf + ?Sized>(out: &mut B, bytes: &[u8]) {
    out.write_bytes(bytes);
}

/// A JSON string, escaped by serde_json.
pub(super) fn put_str<B: WireBuf + ?Sized>(out: &mut B, s: &str) {
    // Serialising a `str` fails only when the writer does, and `IoWriter` never does.
    let _ = serde_json::to_writer(IoWriter(out), s);
}

pub(super) fn put_u64<B: WireBuf + ?Sized>(out: &mut B, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.write_bytes(&digits[start..]);
}

pub(super) fn put_raw<B: WireBuf + ?Sized>(out: &mut B, raw: &RawValue) {
    out.write_bytes(raw.get().as_bytes());
}

pub(super) fn put_opt_u64<B: WireBuf + ?Sized>(out: &mut B, n: Option<u64>) {
    match n {
        Some(n) => put_u64(out, n),
        None => put(out, b"null"),
    }
}
