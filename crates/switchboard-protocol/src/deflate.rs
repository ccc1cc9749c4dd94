//! permessage-deflate (RFC 7692): negotiation, and the compressor and decompressor behind
//! [`crate::codec`] and [`crate::prepared`].
//!
//! Memory policy: a zlib context costs hundreds of KiB, so by default the server negotiates
//! no context takeover in either direction and keeps no zlib state on an idle connection;
//! compressors and decompressors are borrowed from a per-thread pool for the duration of one
//! message. Context takeover is kept only where configured, and then the state lives with the
//! connection. With no server context takeover, a message compressed once can be sent to
//! every peer that negotiated the same `server_max_window_bits` (see [`crate::PreparedMessage`]).

/// What the server is willing to negotiate. Defaults: enabled, no context takeover either way,
/// window 15 bits, threshold 128 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeflateConfig {
    /// Accept permessage-deflate offers at all.
    pub enabled: bool,
    /// Keep the server's compression context between messages (costs memory per connection;
    /// disables sharing compressed bytes between recipients).
    pub server_context_takeover: bool,
    /// Let the client keep its compression context (the server then keeps an inflater per connection).
    pub client_context_takeover: bool,
    /// Largest LZ77 window the server compresses with (9..=15; 8 is treated as 9, as zlib does).
    pub server_max_window_bits: u8,
    /// Largest window the server accepts from the client (8..=15).
    pub client_max_window_bits: u8,
    /// Messages shorter than this are sent uncompressed.
    pub threshold: usize,
}

impl Default for DeflateConfig {
    fn default() -> Self {
        DeflateConfig {
            enabled: true,
            server_context_takeover: false,
            client_context_takeover: false,
            server_max_window_bits: 15,
            client_max_window_bits: 15,
            threshold: 128,
        }
    }
}

impl DeflateConfig {
    /// A config with permessage-deflate refused.
    pub fn disabled() -> Self {
        DeflateConfig {
            enabled: false,
            ..Self::default()
        }
    }
}

/// The parameters agreed for one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateParams {
    /// The server resets its compressor after every message.
    pub server_no_context_takeover: bool,
    /// The client resets its compressor after every message.
    pub client_no_context_takeover: bool,
    /// Window the server compresses with.
    pub server_max_window_bits: u8,
    /// Window the client compresses with.
    pub client_max_window_bits: u8,
}

/// Server side: chooses a response to the client's `Sec-WebSocket-Extensions` header values
/// (every value, in order). `Ok(None)`: no acceptable permessage-deflate offer (or disabled);
/// `Ok(Some((params, header)))`: the agreed parameters and the response header value. A
/// syntactically malformed header is an error (400); an offer with parameters we cannot
/// accept is skipped and the next offer tried, as RFC 7692 section 5 says.
pub fn negotiate<'a>(
    offers: impl IntoIterator<Item = &'a str>,
    config: &DeflateConfig,
) -> Result<Option<(DeflateParams, String)>, crate::HandshakeError> {
    let _ = (offers.into_iter(), config);
    todo!()
}

/// Client side: the offer to send (`permessage-deflate; client_max_window_bits`).
pub fn client_offer() -> &'static str {
    "permessage-deflate; client_max_window_bits"
}

/// Client side: parses the server's response header value into agreed parameters;
/// `Ok(None)` when the server did not accept permessage-deflate.
pub fn parse_response(value: &str) -> Result<Option<DeflateParams>, crate::HandshakeError> {
    let _ = value;
    todo!()
}
