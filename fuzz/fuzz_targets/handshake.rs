//! Parses arbitrary bytes as an upgrade request and validates it, and negotiates
//! permessage-deflate from them as a header value. Must never panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_protocol::{deflate, handshake};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((request, _))) = handshake::parse_request(data) {
        if let Ok(upgrade) = handshake::validate_request(request.method(), request.headers()) {
            let _ = handshake::select_subprotocol(&upgrade.protocols, &["switchboard.v1"]);
            let offers = upgrade.extensions.iter().map(String::as_str);
            let _ = deflate::negotiate(offers, &deflate::DeflateConfig::default());
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let mut permissive = deflate::DeflateConfig::default();
        permissive.server_context_takeover = true;
        permissive.client_context_takeover = true;
        permissive.server_max_window_bits = 10;
        permissive.client_max_window_bits = 12;
        let configs = [
            deflate::DeflateConfig::default(),
            deflate::DeflateConfig::disabled(),
            permissive,
        ];
        for config in configs {
            let _ = deflate::negotiate(text.split('\n'), &config);
        }
        let _ = deflate::parse_response(text);
    }
});
