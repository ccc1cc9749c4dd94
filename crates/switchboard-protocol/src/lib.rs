//! Switchboard's wire layer: RFC 6455 frames, the opening handshake, permessage-deflate
//! (RFC 7692) and the v1 JSON messages, as pure functions and state machines over byte buffers.
//!
//! This crate owns *bytes on the wire*. It knows nothing of sockets, tasks, rooms, brokers or
//! configuration files, and it has no async runtime: the server and the client drive it with
//! whatever IO they have. Decoders return `Ok(None)` when they need more bytes.
//!
//! ```
//! use bytes::BytesMut;
//! use switchboard_protocol::{codec::{Decoder, DecoderConfig, Message}, frame::OpCode, Role};
//!
//! // A masked client text frame "hi" as a server receives it.
//! let mut wire = BytesMut::new();
//! switchboard_protocol::frame::write_frame(&mut wire, true, false, OpCode::Text, Some([1, 2, 3, 4]), b"hi");
//! let mut decoder = Decoder::new(Role::Server, DecoderConfig::default(), None);
//! match decoder.decode(&mut wire).unwrap() {
//!     Some(Message::Text(text)) => assert_eq!(text.as_str(), "hi"),
//!     other => panic!("unexpected {other:?}"),
//! }
//! ```

pub mod close;
pub mod codec;
pub mod deflate;
pub mod disconnect;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod prepared;
pub mod sse;
pub mod utf8;
pub mod wire;

pub use close::{CloseCode, CloseFrame};
pub use disconnect::{CLOSE_CODES, CloseCodeEntry, Disconnect};
pub use error::{HandshakeError, ProtocolError};
pub use prepared::{PreparedMessage, WireForm};

/// Which end of a WebSocket connection this is. It decides the masking rules: a server must
/// receive masked frames and send unmasked ones, a client the reverse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The accepting end.
    Server,
    /// The connecting end.
    Client,
}
