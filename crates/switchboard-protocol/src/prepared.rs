//! A server message framed once and shared by every recipient.
//!
//! Fan-out encodes a publication once: the plain frame is built at construction, and the
//! compressed frame at most once per `server_max_window_bits` value, on first use, by the
//! first recipient that negotiated permessage-deflate without server context takeover. Every
//! recipient gets a [`Bytes`] clone (a reference count), never a copy. Peers that negotiated
//! server context takeover cannot share compressed bytes (their compressor's history must see
//! every message) and get the plain frame from [`PreparedMessage::frame_for`] only when uncompressed
//! is acceptable; callers with such peers use their own [`crate::codec::Encoder`].

use bytes::Bytes;

use crate::{deflate::DeflateParams, frame::OpCode};

/// A message framed once for many recipients (server role: unmasked).
#[derive(Debug)]
pub struct PreparedMessage {
    _private: (),
}

impl PreparedMessage {
    /// Prepares `payload` as a message with `opcode` (Text or Binary). `threshold`: payloads
    /// shorter than this are never compressed.
    pub fn new(opcode: OpCode, payload: Bytes, threshold: usize) -> Self {
        let _ = (opcode, payload, threshold);
        todo!()
    }

    /// The payload.
    pub fn payload(&self) -> &Bytes {
        todo!()
    }

    /// The frame bytes for a peer with these negotiated parameters (`None`: no deflate):
    /// compressed (built once per window size, then shared) when the peer negotiated deflate
    /// with `server_no_context_takeover` and the payload reaches the threshold, plain otherwise.
    pub fn frame_for(&self, deflate: Option<&DeflateParams>) -> Bytes {
        let _ = deflate;
        todo!()
    }
}
