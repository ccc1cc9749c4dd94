//! Feeds arbitrary bytes to the Redis broker's decoders, as it reads what Redis holds or
//! delivers (pub/sub events, cluster commands, presence entries, stored publications): a
//! Redis shared with something else, or an older node's format, must never crash a node.
//! Must never panic; what decodes re-encodes to the same (checked in `fuzz_decode`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    switchboard_server::broker::redis::fuzz_decode(data);
});
