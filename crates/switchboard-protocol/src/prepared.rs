//! A server message framed once and shared by every recipient.
//!
//! Fan-out encodes a publication once: the plain frame is built at construction, and the
//! compressed frame at most once per `server_max_window_bits` value, on first use, by the
//! first recipient that negotiated permessage-deflate without server context takeover. Every
//! recipient gets a [`Bytes`] clone (a reference count), never a copy. Peers that negotiated
//! server context takeover cannot share compressed bytes (their compressor's history must see
//! every message) and get the plain frame from [`PreparedMessage::frame_for`] only when uncompressed
//! is acceptable; callers with such peers use their own [`crate::codec::Encoder`].
//!
//! A text message also has a Server-Sent Events form ([`WireForm::Sse`]): one event whose
//! `data` is the payload, built on first use and shared the same way.

use std::sync::OnceLock;

use bytes::{Bytes, BytesMut};

use crate::{
    codec::write_compressed_frame,
    deflate::{DeflateParams, pool},
    frame::{OpCode, write_frame},
};

/// The bytes a recipient needs: which transport, and for WebSocket what it negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireForm {
    /// A WebSocket connection, with its permessage-deflate parameters if any.
    WebSocket(Option<DeflateParams>),
    /// A Server-Sent Events stream.
    Sse,
}

impl WireForm {
    /// What an idle connection of this form is sent to keep it alive: a WebSocket ping with
    /// an empty payload (never compressed), or an SSE comment.
    pub fn keepalive(&self) -> Bytes {
        match self {
            WireForm::WebSocket(_) => Bytes::from_static(&[0x89, 0x00]),
            WireForm::Sse => Bytes::from_static(crate::sse::KEEPALIVE),
        }
    }

    /// The negotiated permessage-deflate parameters of a WebSocket connection.
    pub fn deflate(&self) -> Option<DeflateParams> {
        match self {
            WireForm::WebSocket(d) => *d,
            WireForm::Sse => None,
        }
    }
}

/// A message framed once for many recipients (server role: unmasked).
#[derive(Debug)]
pub struct PreparedMessage {
    opcode: OpCode,
    payload: Bytes,
    threshold: usize,
    plain: Bytes,
    /// The compressed frame per compression window, 9 to 15 bits (8 is compressed as 9).
    compressed: [OnceLock<Bytes>; 7],
    /// The SSE event name and, once built, the event.
    sse_name: &'static str,
    sse: OnceLock<Bytes>,
}

impl PreparedMessage {
    /// Prepares `payload` as a message with `opcode` (Text or Binary). `threshold`: payloads
    /// shorter than this are never compressed.
    pub fn new(opcode: OpCode, payload: Bytes, threshold: usize) -> Self {
        let mut plain = BytesMut::new();
        write_frame(&mut plain, true, false, opcode, None, &payload);
        PreparedMessage {
            opcode,
            payload,
            threshold,
            plain: plain.freeze(),
            compressed: Default::default(),
            sse_name: "message",
            sse: OnceLock::new(),
        }
    }

    /// The same message with the SSE event name `name` (default `message`).
    pub fn with_sse_event(mut self, name: &'static str) -> Self {
        self.sse_name = name;
        self
    }

    /// The same message for WebSocket peers only: SSE streams skip it (a push that an SSE
    /// stream's cursor makes needless).
    pub fn websocket_only(mut self) -> Self {
        self.sse_name = "";
        self
    }

    /// The bytes for a recipient of `form`, each form built once and shared; `None` for a
    /// form the message has none of (a binary message on an SSE stream, a
    /// [`websocket_only`](Self::websocket_only) one).
    pub fn bytes_for(&self, form: &WireForm) -> Option<Bytes> {
        match form {
            WireForm::WebSocket(deflate) => Some(self.frame_for(deflate.as_ref())),
            WireForm::Sse if self.opcode == OpCode::Text && !self.sse_name.is_empty() => Some(
                self.sse
                    .get_or_init(|| {
                        let mut event = Vec::with_capacity(self.payload.len() + 96);
                        if self.sse_name == "message" {
                            crate::sse::encode_publication_event(&mut event, &self.payload);
                        } else {
                            crate::sse::encode_event(
                                &mut event,
                                self.sse_name,
                                None,
                                &self.payload,
                            );
                        }
                        Bytes::from(event)
                    })
                    .clone(),
            ),
            WireForm::Sse => None,
        }
    }

    /// The payload.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// The frame bytes for a peer with these negotiated parameters (`None`: no deflate):
    /// compressed (built once per window size, then shared) when the peer negotiated deflate
    /// with `server_no_context_takeover` and the payload reaches the threshold, plain otherwise.
    pub fn frame_for(&self, deflate: Option<&DeflateParams>) -> Bytes {
        match deflate {
            Some(params)
                if params.server_no_context_takeover && self.payload.len() >= self.threshold =>
            {
                let bits = pool::compress_bits(params.server_max_window_bits);
                self.compressed[usize::from(bits - 9)]
                    .get_or_init(|| {
                        let mut frame = BytesMut::new();
                        pool::with_compressor(bits, |c| {
                            write_compressed_frame(c, self.opcode, &self.payload, None, &mut frame)
                        });
                        frame.freeze()
                    })
                    .clone()
            }
            _ => self.plain.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        Role,
        codec::{Decoder, DecoderConfig, Message},
    };

    fn params(server_no_context_takeover: bool, bits: u8) -> DeflateParams {
        DeflateParams {
            server_no_context_takeover,
            client_no_context_takeover: true,
            server_max_window_bits: bits,
            client_max_window_bits: 15,
        }
    }

    fn decode(frame: &Bytes, deflate: Option<DeflateParams>) -> Message {
        let mut buf = BytesMut::from(&frame[..]);
        let mut decoder = Decoder::new(Role::Client, DecoderConfig::default(), deflate);
        let message = decoder.decode(&mut buf).unwrap().unwrap();
        assert!(buf.is_empty());
        message
    }

    #[test]
    fn shared_frames() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<PreparedMessage>();

        let payload = Bytes::from("{\"type\":\"message\",\"data\":\"hello\"}".repeat(10));
        let prepared = PreparedMessage::new(OpCode::Text, payload.clone(), 128);
        assert_eq!(prepared.payload(), &payload);
        let expected = Message::Text(crate::codec::Utf8Bytes::from_checked(payload.clone()));

        let plain = prepared.frame_for(None);
        assert_eq!(plain[0], 0x81);
        assert_eq!(decode(&plain, None), expected);
        // Context takeover peers cannot share compressed bytes.
        assert_eq!(prepared.frame_for(Some(&params(false, 15))), plain);

        let compressed = prepared.frame_for(Some(&params(true, 15)));
        assert_eq!(compressed[0], 0xC1);
        assert!(compressed.len() < plain.len());
        assert_eq!(decode(&compressed, Some(params(true, 15))), expected);
        // Built once: later peers share the same allocation.
        assert_eq!(
            prepared.frame_for(Some(&params(true, 15))).as_ptr(),
            compressed.as_ptr()
        );
        // 8 bits is compressed with 9, like 9.
        let small = prepared.frame_for(Some(&params(true, 8)));
        assert_eq!(
            prepared.frame_for(Some(&params(true, 9))).as_ptr(),
            small.as_ptr()
        );
        assert_eq!(decode(&small, Some(params(true, 8))), expected);
    }

    #[test]
    fn below_threshold_is_plain() {
        let prepared = PreparedMessage::new(OpCode::Binary, Bytes::from_static(&[1; 100]), 128);
        let frame = prepared.frame_for(Some(&params(true, 15)));
        assert_eq!(frame, prepared.frame_for(None));
        assert_eq!(frame[..2], [0x82, 100]);
    }
}
