//! Feeds arbitrary bytes to the frame decoder, in arbitrary chunks, in every role and
//! deflate mode. It must never panic, whatever the input.
//!
//! Input: the first byte chooses the setup, the rest is the wire.
//! - bit 0: role (0 server, 1 client);
//! - bit 1: permessage-deflate negotiated; bit 2: the peer keeps its context;
//! - bits 3-4: max message size (64 B, 1 KiB, 64 KiB, 16 MiB);
//! - bits 5-7: chunk size (1, 2, 3, 7, 16, 100, 4096 bytes, or everything at once).

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use switchboard_protocol::{
    Role,
    codec::{Decoder, DecoderConfig},
    deflate::DeflateParams,
};

fuzz_target!(|data: &[u8]| {
    let Some((&setup, wire)) = data.split_first() else {
        return;
    };
    let role = if setup & 1 == 0 {
        Role::Server
    } else {
        Role::Client
    };
    let no_context_takeover = setup & 4 == 0;
    let deflate = (setup & 2 != 0).then_some(DeflateParams {
        server_no_context_takeover: no_context_takeover,
        client_no_context_takeover: no_context_takeover,
        server_max_window_bits: 15,
        client_max_window_bits: 15,
    });
    let max = [64, 1024, 64 * 1024, 16 << 20][usize::from(setup >> 3 & 3)];
    let chunk = [1, 2, 3, 7, 16, 100, 4096, usize::MAX][usize::from(setup >> 5)];

    let mut decoder = Decoder::new(
        role,
        DecoderConfig::default().with_max_message_size(max),
        deflate,
    );
    let mut buf = BytesMut::new();
    for piece in wire.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    let _ = decoder.is_idle();
});
