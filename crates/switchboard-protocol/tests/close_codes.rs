//! `docs/schema/close-codes.json` is [`CLOSE_CODES`] and the client rule of
//! [`Disconnect::reconnects`] written out for the TypeScript SDK: this test fails when the two
//! differ, and rewrites the file when run with `UPDATE_SCHEMA=1`.

use std::{borrow::Cow, path::PathBuf};

use serde::Serialize;
use serde_json::Value;
use switchboard_protocol::{CLOSE_CODES, Disconnect};

/// The codes a close frame may carry (RFC 6455 section 7.4), the range the rule is read over.
const WIRE_CODES: std::ops::RangeInclusive<u16> = 1000..=4999;

fn schema_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/schema/close-codes.json")
}

/// The file's shape; a struct rather than `json!` so that the keys are written in this order.
#[derive(Serialize)]
struct Schema {
    #[serde(rename = "$comment")]
    comment: &'static str,
    codes: Vec<Row>,
    other_codes: OtherCodes,
}

#[derive(Serialize)]
struct Row {
    code: u16,
    name: &'static str,
    reason: &'static str,
    reconnect: bool,
    meaning: &'static str,
}

#[derive(Serialize)]
struct OtherCodes {
    rule: &'static str,
    terminal: Vec<Range>,
    reconnect: bool,
}

#[derive(Serialize, Debug, PartialEq)]
struct Range {
    from: u16,
    to: u16,
}

/// The inclusive ranges of wire codes that [`Disconnect::reconnects`] calls terminal, read
/// off the function itself so that the file cannot drift from it.
fn terminal_ranges() -> Vec<Range> {
    let mut ranges: Vec<Range> = Vec::new();
    for code in WIRE_CODES.filter(|c| !Disconnect::reconnects(*c)) {
        match ranges.last_mut() {
            Some(last) if last.to + 1 == code => last.to = code,
            _ => ranges.push(Range {
                from: code,
                to: code,
            }),
        }
    }
    ranges
}

fn expected() -> Schema {
    Schema {
        comment: "Generated from switchboard_protocol::disconnect (CLOSE_CODES and \
                  Disconnect::reconnects); do not edit. Regenerate with: UPDATE_SCHEMA=1 \
                  cargo test -p switchboard-protocol --test close_codes",
        codes: CLOSE_CODES
            .iter()
            .map(|e| Row {
                code: e.disconnect.code.0,
                name: e.name,
                reason: match &e.disconnect.reason {
                    Cow::Borrowed(reason) => reason,
                    Cow::Owned(_) => unreachable!("the table's reasons are static"),
                },
                reconnect: e.disconnect.reconnect,
                meaning: e.meaning,
            })
            .collect(),
        other_codes: OtherCodes {
            rule: "A close code that is not in `codes` (or a close without a frame, 1006) \
                   reconnects with backoff unless it lies in one of the inclusive `terminal` \
                   ranges.",
            terminal: terminal_ranges(),
            reconnect: true,
        },
    }
}

#[test]
fn the_schema_file_is_the_table() {
    let want = serde_json::to_value(expected()).unwrap();
    let path = schema_path();
    if std::env::var_os("UPDATE_SCHEMA").is_some_and(|v| v == "1") {
        let text = serde_json::to_string_pretty(&expected()).unwrap() + "\n";
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        return;
    }
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; generate it with UPDATE_SCHEMA=1 cargo test -p switchboard-protocol \
             --test close_codes",
            path.display()
        )
    });
    let found: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()));
    assert!(
        found == want,
        "{} differs from CLOSE_CODES; regenerate it with UPDATE_SCHEMA=1 cargo test -p \
         switchboard-protocol --test close_codes\n--- expected:\n{}",
        path.display(),
        serde_json::to_string_pretty(&expected()).unwrap()
    );
}

#[test]
fn the_rule_ranges_are_the_documented_ones() {
    // Guards the range reading above: these are the codes Disconnect::reconnects documents.
    assert_eq!(
        terminal_ranges(),
        [(1000, 1000), (1002, 1003), (1007, 1009), (4000, 4499)]
            .map(|(from, to)| Range { from, to })
    );
}
