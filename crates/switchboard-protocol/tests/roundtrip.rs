//! Property tests: whatever the payload, its fragmentation, compression, role and the way the
//! bytes are cut into reads, the decoder gives back exactly the message sent.

use bytes::{Bytes, BytesMut};
use flate2::{Compress, Compression, FlushCompress};
use proptest::prelude::*;
use switchboard_protocol::{
    Role,
    codec::{Decoder, DecoderConfig, Encoder, Message},
    deflate::DeflateParams,
    frame::{OpCode, write_frame},
};

const MAX: usize = 1 << 20;

fn params(no_context_takeover: bool, bits: u8) -> DeflateParams {
    DeflateParams {
        server_no_context_takeover: no_context_takeover,
        client_no_context_takeover: no_context_takeover,
        server_max_window_bits: bits,
        client_max_window_bits: bits,
    }
}

fn peer(role: Role) -> Role {
    match role {
        Role::Server => Role::Client,
        Role::Client => Role::Server,
    }
}

/// A payload: text or binary, mostly small, sometimes past the 16-bit length.
fn payload() -> impl Strategy<Value = (bool, Vec<u8>)> {
    let text = prop_oneof![
        4 => ".{0,300}",
        1 => "[a-zé€😀]{0,4000}",
    ]
    .prop_map(|s: String| (true, s.into_bytes()));
    let binary = prop_oneof![
        4 => prop::collection::vec(any::<u8>(), 0..300),
        1 => (any::<u8>(), 60_000usize..70_000).prop_map(|(b, n)| (0..n).map(|i| b.wrapping_add((i % 13) as u8)).collect()),
    ]
    .prop_map(|b| (false, b));
    prop_oneof![text, binary]
}

/// Feeds `wire` to `decoder` in chunks of the given sizes (cycled).
fn decode_in_chunks(decoder: &mut Decoder, wire: &[u8], chunks: &[usize]) -> Vec<Message> {
    let mut buf = BytesMut::new();
    let mut messages = Vec::new();
    let mut rest = wire;
    for &size in chunks.iter().cycle() {
        let (chunk, tail) = rest.split_at(size.min(rest.len()));
        buf.extend_from_slice(chunk);
        rest = tail;
        while let Some(message) = decoder.decode(&mut buf).expect("valid input") {
            messages.push(message);
        }
        if rest.is_empty() {
            break;
        }
    }
    assert!(buf.is_empty(), "{} bytes left over", buf.len());
    assert!(decoder.is_idle());
    messages
}

fn expected(text: bool, payload: &[u8]) -> Message {
    if text {
        Message::Text(
            String::from_utf8(payload.to_vec())
                .expect("text strategy")
                .into(),
        )
    } else {
        Message::Binary(Bytes::copy_from_slice(payload))
    }
}

/// Compresses one message the RFC 7692 way: raw deflate, sync flush, tail stripped.
fn compress(compressor: &mut Compress, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 64);
    let mut input = payload;
    loop {
        out.reserve(64);
        let before = compressor.total_in();
        compressor
            .compress_vec(input, &mut out, FlushCompress::Sync)
            .unwrap();
        input = &input[(compressor.total_in() - before) as usize..];
        if input.is_empty() && out.len() < out.capacity() {
            break;
        }
    }
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

/// Cuts `data` at the given points (as fractions of its length) into at least one piece.
fn cut<'a>(data: &'a [u8], cuts: &[u16]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts
        .iter()
        .map(|&c| data.len() * usize::from(c) / usize::from(u16::MAX))
        .collect();
    points.sort_unstable();
    let mut pieces = Vec::new();
    let mut start = 0;
    for point in points {
        pieces.push(&data[start..point]);
        start = point;
    }
    pieces.push(&data[start..]);
    pieces
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Hand-built fragmentation, with pings between fragments.
    #[test]
    fn fragmented_messages(
        (text, payload) in payload(),
        cuts in prop::collection::vec(any::<u16>(), 0..6),
        pings in prop::collection::vec(any::<bool>(), 6),
        compressed in any::<bool>(),
        sender in prop_oneof![Just(Role::Server), Just(Role::Client)],
        chunks in prop::collection::vec(1usize..200, 1..6),
    ) {
        let deflate = params(true, 15);
        let body = if compressed {
            compress(&mut Compress::new(Compression::default(), false), &payload)
        } else {
            payload.clone()
        };
        let mask = || (sender == Role::Client).then(rand::random::<[u8; 4]>);
        let mut wire = BytesMut::new();
        let pieces = cut(&body, &cuts);
        let last = pieces.len() - 1;
        let mut expected_messages = Vec::new();
        for (i, piece) in pieces.into_iter().enumerate() {
            let opcode = match (i, text) {
                (0, true) => OpCode::Text,
                (0, false) => OpCode::Binary,
                _ => OpCode::Continuation,
            };
            write_frame(&mut wire, i == last, compressed && i == 0, opcode, mask(), piece);
            if i < last && pings[i] {
                write_frame(&mut wire, true, false, OpCode::Ping, mask(), b"between");
                expected_messages.push(Message::Ping(Bytes::from_static(b"between")));
            }
        }
        expected_messages.push(expected(text, &payload));
        let mut decoder = Decoder::new(peer(sender), DecoderConfig::default().with_max_message_size(MAX), Some(deflate));
        prop_assert_eq!(decode_in_chunks(&mut decoder, &wire, &chunks), expected_messages);
    }

    /// Encoder to decoder, several messages in a row, every deflate mode.
    #[test]
    fn encoder_output_decodes(
        messages in prop::collection::vec(payload(), 1..5),
        sender in prop_oneof![Just(Role::Server), Just(Role::Client)],
        deflate in prop_oneof![
            Just(None),
            (any::<bool>(), 8u8..=15).prop_map(|(reset, bits)| Some(params(reset, bits))),
        ],
        threshold in prop_oneof![Just(0usize), Just(128)],
        chunks in prop::collection::vec(1usize..5000, 1..6),
    ) {
        let mut encoder = Encoder::new(sender, deflate, threshold);
        let mut wire = BytesMut::new();
        let mut expected_messages = Vec::new();
        for (text, payload) in &messages {
            let opcode = if *text { OpCode::Text } else { OpCode::Binary };
            encoder.encode(opcode, payload, &mut wire);
            expected_messages.push(expected(*text, payload));
            encoder.encode(OpCode::Pong, b"", &mut wire);
            expected_messages.push(Message::Pong(Bytes::new()));
        }
        let mut decoder = Decoder::new(peer(sender), DecoderConfig::default().with_max_message_size(MAX), deflate);
        prop_assert_eq!(decode_in_chunks(&mut decoder, &wire, &chunks), expected_messages);
    }
}
