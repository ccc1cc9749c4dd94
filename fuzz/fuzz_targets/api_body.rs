//! Feeds arbitrary bytes to the server API's request parsers (`/api/publish` and the other
//! calls with a JSON body), as their handlers read them. It must never panic.
//!
//! Input: the first byte chooses the call (modulo their number), the rest is the body.

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_server::http::api::{BODY_CALLS, parse_body};

fuzz_target!(|data: &[u8]| {
    let Some((&call, body)) = data.split_first() else {
        return;
    };
    let path = BODY_CALLS[usize::from(call) % BODY_CALLS.len()];
    let _ = parse_body(path, body);
});
