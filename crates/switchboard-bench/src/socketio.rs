//! The Socket.IO wire format (`--socketio`): just enough of engine.io v4 and the Socket.IO
//! protocol v5 to load a Socket.IO server with the same generator: how packets are told
//! apart and how scenarios wrap what they send. Connections use it (see `Conn::join_socketio`
//! for the handshake); it knows nothing of connections.
//!
//! The URL is the engine.io endpoint with the WebSocket transport
//! (`/socket.io/?EIO=4&transport=websocket`). After the upgrade the server sends the open
//! packet `0{…}`; the client connects to the default namespace with `40` and gets
//! `40{"sid":…}` (or `44{…}`: refused). Events are text frames `42["name",data]`. The server
//! pings with `2`, which the client answers with `3` (a server configured with a long
//! `pingInterval` keeps this off the hot path, but it is answered whenever it comes).
//!
//! Once connected, `Conn::next_message` hands out only event packets, whole (`42[…]`),
//! answering pings on the way and skipping everything else, so scenarios wrap what they send
//! with [`FANOUT_PREFIX`] / [`ECHO_PREFIX`] and find their stamps after the prefix. Nothing is
//! allocated per message.

/// What a fan-out publisher puts before its data object (the event `m`), then `]`.
pub(crate) const FANOUT_PREFIX: &[u8] = b"42[\"m\",";
/// After the data object.
pub(crate) const FANOUT_SUFFIX: &[u8] = b"]";
/// What an echo message starts with (the event `e` with a string argument), then `"]`.
pub(crate) const ECHO_PREFIX: &[u8] = b"42[\"e\",\"";
/// After the echo payload.
pub(crate) const ECHO_SUFFIX: &[u8] = b"\"]";
/// The default URL with `--socketio`: engine.io v4, WebSocket transport.
pub(crate) const DEFAULT_URL: &str = "ws://127.0.0.1:8080/socket.io/?EIO=4&transport=websocket";

/// An engine.io / Socket.IO packet, told by its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Packet {
    /// engine.io `open` (`0{…}`).
    Open,
    /// Socket.IO `CONNECT` answer (`40…`): the namespace is joined.
    Connected,
    /// Socket.IO `CONNECT_ERROR` (`44…`).
    ConnectError,
    /// Socket.IO `EVENT` (`42…`).
    Event,
    /// engine.io `ping` (`2…`): answer `3` with the same data.
    Ping,
    /// engine.io `close` (`1`) or Socket.IO `DISCONNECT` (`41`).
    Close,
    /// Anything else (`noop`, acks, binary attachments…).
    Other,
}

/// Classifies a text message.
pub(crate) fn packet(msg: &[u8]) -> Packet {
    match msg {
        [b'4', b'2', ..] => Packet::Event,
        [b'2', ..] => Packet::Ping,
        [b'0', ..] => Packet::Open,
        [b'4', b'0', ..] => Packet::Connected,
        [b'4', b'4', ..] => Packet::ConnectError,
        [b'1', ..] | [b'4', b'1', ..] => Packet::Close,
        _ => Packet::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_are_told_by_their_first_bytes() {
        assert_eq!(
            packet(br#"0{"sid":"x","pingInterval":25000}"#),
            Packet::Open
        );
        assert_eq!(packet(br#"40{"sid":"y"}"#), Packet::Connected);
        assert_eq!(packet(b"40"), Packet::Connected);
        assert_eq!(
            packet(br#"44{"message":"Invalid namespace"}"#),
            Packet::ConnectError
        );
        assert_eq!(packet(br#"42["m",{"t":1,"p":0,"s":0}]"#), Packet::Event);
        assert_eq!(packet(b"2"), Packet::Ping);
        assert_eq!(packet(b"2probe"), Packet::Ping);
        assert_eq!(packet(b"1"), Packet::Close);
        assert_eq!(packet(b"41"), Packet::Close);
        assert_eq!(packet(b"6"), Packet::Other);
        assert_eq!(packet(b"43[1]"), Packet::Other);
        assert_eq!(packet(b""), Packet::Other);
    }

    #[test]
    fn wrapped_payloads_are_json() {
        let mut m = FANOUT_PREFIX.to_vec();
        crate::payload::put_data(&mut m, 12, 3, 4, 64);
        m.extend_from_slice(FANOUT_SUFFIX);
        let v: serde_json::Value = serde_json::from_slice(&m[2..]).unwrap();
        assert_eq!(v[0], "m");
        assert_eq!(v[1]["s"], 4);
        let mut e = ECHO_PREFIX.to_vec();
        e.extend_from_slice(&[b'x'; 20]);
        e.extend_from_slice(ECHO_SUFFIX);
        let v: serde_json::Value = serde_json::from_slice(&e[2..]).unwrap();
        assert_eq!(v[1].as_str().unwrap().len(), 20);
        assert_eq!(packet(&m), Packet::Event);
    }
}
