//! Decodes arbitrary text as an SSE stream cursor (`Last-Event-ID` / `?since=`) and reads
//! arbitrary bytes as a queued event's publication position. Must never panic; a decoded
//! cursor re-encodes to one that decodes to the same positions.

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_protocol::sse;

fuzz_target!(|data: &[u8]| {
    let _ = sse::publication_position(data);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(positions) = sse::decode_cursor(text, 64) {
        let mut out = Vec::new();
        let mut scratch = Vec::new();
        sse::encode_cursor(
            &mut out,
            &mut scratch,
            positions.iter().map(|(r, e, o)| (r.as_str(), e.as_str(), *o)),
        );
        let again = sse::decode_cursor(std::str::from_utf8(&out).unwrap(), 64);
        // Longer than the bound after re-encoding is the only way the round trip may fail.
        if let Ok(again) = again {
            assert_eq!(again, positions);
        }
    }
});
