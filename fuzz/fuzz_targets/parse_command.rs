//! Parses arbitrary text as a v1 command (`wire::parse_command`, the parser of everything a
//! client sends) and checks a publication's `data` as the server does (`limits::check_data`).
//! Must never panic; an error names a field or says what is wrong; `data` the check accepts is
//! JSON that a strict parser (serde_json) reads.

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_protocol::wire::{self, CommandKind};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match wire::parse_command(text) {
        Ok(command) => {
            if let CommandKind::Publish(p) = command.kind {
                let raw = p.data.get();
                if switchboard_server::limits::check_data(raw).is_ok()
                    && let Err(e) = serde_json::from_str::<serde_json::Value>(raw)
                {
                    // serde_json also stops at 128 levels of nesting, which clients do not.
                    let e = e.to_string();
                    assert!(
                        !e.contains("surrogate") && !e.contains("out of range"),
                        "accepted data a strict parser refuses ({e}): {raw}"
                    );
                }
            }
        }
        Err(e) => assert!(!e.message.is_empty()),
    }
    // The data check alone, on any text the JSON parser accepts.
    if serde_json::from_str::<&serde_json::value::RawValue>(text).is_ok() {
        let _ = switchboard_server::limits::check_data(text);
    }
});
