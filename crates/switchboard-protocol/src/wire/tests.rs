//! Byte-level tests of the wire messages: every command, every error, every encoder, round trips.

use std::borrow::Cow;

use serde_json::value::RawValue;

use super::*;

fn parse_ok(text: &str) -> Command<'_> {
    match parse_command(text) {
        Ok(command) => command,
        Err(e) => panic!("{text}: {e:?}"),
    }
}

fn parse_err(text: &str) -> CommandError {
    match parse_command(text) {
        Ok(command) => panic!("{text}: parsed as {command:?}"),
        Err(e) => e,
    }
}

/// Asserts a `bad_request` naming `field` in both `field` and the message, with `id`.
#[track_caller]
fn assert_bad_field(text: &str, field: &str, id: Option<Id>) -> CommandError {
    let e = parse_err(text);
    assert_eq!(e.code, ErrorCode::BadRequest, "{text}: {e:?}");
    assert_eq!(e.field, Some(field), "{text}: {e:?}");
    assert!(e.message.contains(&format!("'{field}'")), "{text}: {e:?}");
    assert_eq!(e.id, id, "{text}: {e:?}");
    e
}

fn raw(json: &str) -> Box<RawValue> {
    RawValue::from_string(json.to_owned()).unwrap()
}

fn encoded(f: impl FnOnce(&mut Vec<u8>)) -> String {
    let mut out = Vec::new();
    f(&mut out);
    String::from_utf8(out).unwrap()
}

fn n(id: u64) -> Option<Id> {
    Some(Id::Number(id))
}

// ---------------------------------------------------------------- commands that parse

#[test]
fn subscribe_minimal_and_full() {
    let c = parse_ok(r#"{"type":"subscribe","id":2,"room":"chat:lobby"}"#);
    assert_eq!(c.id, n(2));
    assert_eq!(
        c.kind,
        CommandKind::Subscribe(SubscribeCommand {
            room: "chat:lobby".into(),
            since: None,
            token: None,
        })
    );

    let c = parse_ok(
        r#"{"type": "subscribe", "id": 2, "room": "chat:lobby",
            "since": {"epoch": "e8f1c2", "offset": 41}, "token": "tok"}"#,
    );
    assert_eq!(
        c.kind,
        CommandKind::Subscribe(SubscribeCommand {
            room: "chat:lobby".into(),
            since: Some(StreamPosition::new("e8f1c2", 41)),
            token: Some("tok".into()),
        })
    );
    assert_eq!(c.kind.type_name(), "subscribe");
    assert_eq!(c.kind.room(), Some("chat:lobby"));
}

#[test]
fn strings_without_escapes_are_borrowed() {
    let c = parse_ok(r#"{"type":"unsubscribe","room":"chat:lobby"}"#);
    let CommandKind::Unsubscribe { room } = c.kind else {
        panic!()
    };
    assert!(matches!(room, Cow::Borrowed("chat:lobby")));
}

#[test]
fn escaped_strings_and_keys_are_decoded() {
    let c = parse_ok(r#"{"\u0074ype":"unsub\u0073cribe","room":"chat\/lobby\u0041"}"#);
    let CommandKind::Unsubscribe { room } = c.kind else {
        panic!()
    };
    assert_eq!(room, "chat/lobbyA");
    assert!(matches!(room, Cow::Owned(_)));
}

#[test]
fn publish_defaults_and_verbatim_data() {
    let text = r#"{"type":"publish","id":4,"room":"chat:lobby","data": {"text": "hi",  "n": [1, 2.50, 1e3], "u": "\u00e9"} }"#;
    let c = parse_ok(text);
    assert_eq!(c.id, n(4));
    let CommandKind::Publish(p) = c.kind else {
        panic!()
    };
    assert_eq!(p.room, "chat:lobby");
    // Byte for byte what the client wrote, no re-encoding (whitespace, 2.50, 1e3, \u00e9 kept).
    assert_eq!(
        p.data.get(),
        r#"{"text": "hi",  "n": [1, 2.50, 1e3], "u": "\u00e9"}"#
    );
    assert!(p.echo);
    assert!(!p.ephemeral);
    assert_eq!(p.idempotency_key, None);
}

#[test]
fn publish_all_fields_and_any_data() {
    let c = parse_ok(
        r#"{"type":"publish","room":"r","data":"x","echo":false,"ephemeral":true,"idempotency_key":"k1"}"#,
    );
    assert_eq!(c.id, None);
    let CommandKind::Publish(p) = c.kind else {
        panic!()
    };
    assert_eq!(p.data.get(), r#""x""#);
    assert!(!p.echo);
    assert!(p.ephemeral);
    assert_eq!(p.idempotency_key.as_deref(), Some("k1"));

    for data in ["null", "0", "true", "[]", "{}", r#""""#, "-1.5e-3"] {
        let text = format!(r#"{{"type":"publish","room":"r","data":{data}}}"#);
        let c = parse_ok(&text);
        let CommandKind::Publish(p) = c.kind else {
            panic!()
        };
        assert_eq!(p.data.get(), data);
    }

    // null for optional fields is the default.
    let c = parse_ok(
        r#"{"type":"publish","room":"r","data":1,"echo":null,"ephemeral":null,"idempotency_key":null}"#,
    );
    let CommandKind::Publish(p) = c.kind else {
        panic!()
    };
    assert!(p.echo && !p.ephemeral && p.idempotency_key.is_none());
}

#[test]
fn idempotency_key_length() {
    let key = "k".repeat(128);
    let text = format!(r#"{{"type":"publish","room":"r","data":1,"idempotency_key":"{key}"}}"#);
    let CommandKind::Publish(p) = parse_ok(&text).kind else {
        panic!()
    };
    assert_eq!(p.idempotency_key.as_deref(), Some(key.as_str()));

    let key = "k".repeat(129);
    let text =
        format!(r#"{{"type":"publish","id":1,"room":"r","data":1,"idempotency_key":"{key}"}}"#);
    assert_bad_field(&text, "idempotency_key", n(1));
    assert_bad_field(
        r#"{"type":"publish","id":1,"room":"r","data":1,"idempotency_key":""}"#,
        "idempotency_key",
        n(1),
    );
    assert_bad_field(
        r#"{"type":"publish","id":1,"room":"r","data":1,"idempotency_key":5}"#,
        "idempotency_key",
        n(1),
    );
}

#[test]
fn presence_parses() {
    let c = parse_ok(r#"{"type":"presence","id":5,"room":"r","cursor":null,"limit":100}"#);
    assert_eq!(
        c.kind,
        CommandKind::Presence(PresenceCommand {
            room: "r".into(),
            cursor: None,
            limit: Some(100),
        })
    );
    let c = parse_ok(r#"{"type":"presence","room":"r","cursor":"abc"}"#);
    assert_eq!(
        c.kind,
        CommandKind::Presence(PresenceCommand {
            room: "r".into(),
            cursor: Some("abc".into()),
            limit: None,
        })
    );
    // A huge limit saturates (the server clamps it).
    let c = parse_ok(r#"{"type":"presence","room":"r","limit":99999999999999}"#);
    let CommandKind::Presence(p) = c.kind else {
        panic!()
    };
    assert_eq!(p.limit, Some(u32::MAX));
}

#[test]
fn history_parses() {
    let c = parse_ok(r#"{"type":"history","id":6,"room":"r"}"#);
    assert_eq!(
        c.kind,
        CommandKind::History(HistoryCommand {
            room: "r".into(),
            since: None,
            limit: None,
            reverse: false,
        })
    );
    let c = parse_ok(
        r#"{"type":"history","id":6,"room":"r","since":{"offset":3,"epoch":"e"},"limit":50,"reverse":true}"#,
    );
    assert_eq!(
        c.kind,
        CommandKind::History(HistoryCommand {
            room: "r".into(),
            since: Some(StreamPosition::new("e", 3)),
            limit: Some(50),
            reverse: true,
        })
    );
    // since: null is no since; unknown fields inside since are ignored.
    let c = parse_ok(r#"{"type":"history","room":"r","since":null}"#);
    assert!(matches!(
        c.kind,
        CommandKind::History(HistoryCommand { since: None, .. })
    ));
    let c = parse_ok(r#"{"type":"history","room":"r","since":{"epoch":"e","offset":0,"x":[]}}"#);
    assert!(matches!(
        c.kind,
        CommandKind::History(HistoryCommand { since: Some(_), .. })
    ));
}

#[test]
fn ping_refresh_auth_rpc_parse() {
    let c = parse_ok(r#"{"type":"ping","id":3}"#);
    assert_eq!((c.id, c.kind), (n(3), CommandKind::Ping));
    let c = parse_ok(r#"{"type":"ping"}"#);
    assert_eq!((c.id, c.kind), (None, CommandKind::Ping));

    let c = parse_ok(r#"{"type":"refresh","id":9,"token":"jwt2"}"#);
    assert_eq!(
        c.kind,
        CommandKind::Refresh {
            token: "jwt2".into()
        }
    );
    let c = parse_ok(r#"{"type":"auth","id":1,"token":"jwt"}"#);
    assert_eq!(
        c.kind,
        CommandKind::Auth {
            token: "jwt".into()
        }
    );
    assert_eq!(c.kind.room(), None);

    let c = parse_ok(r#"{"type":"rpc","id":8,"method":"orders.list","data":{"page":2}}"#);
    let CommandKind::Rpc(rpc) = &c.kind else {
        panic!()
    };
    assert_eq!(rpc.method, "orders.list");
    assert_eq!(rpc.data.get(), r#"{"page":2}"#);
    // Without data the argument is null.
    let c = parse_ok(r#"{"type":"rpc","method":"m"}"#);
    let CommandKind::Rpc(rpc) = &c.kind else {
        panic!()
    };
    assert_eq!(rpc.data.get(), "null");
}

#[test]
fn unknown_and_unused_fields_are_ignored_and_order_is_free() {
    let c = parse_ok(
        r#"{"future":{"a":[1,{"b":null}]},"room":"r","x":1,"id":"abc","type":"unsubscribe"}"#,
    );
    assert_eq!(c.id, Some(Id::String("abc".into())));
    assert_eq!(c.kind, CommandKind::Unsubscribe { room: "r".into() });
    // Fields the type does not use are not checked: a ping with a numeric room is a ping.
    let c = parse_ok(r#"{"type":"ping","room":5,"since":"x","data":1,"limit":-3}"#);
    assert_eq!(c.kind, CommandKind::Ping);
}

#[test]
fn every_type_name_round_trips_through_the_parser() {
    let texts = [
        r#"{"type":"subscribe","room":"r"}"#,
        r#"{"type":"unsubscribe","room":"r"}"#,
        r#"{"type":"publish","room":"r","data":1}"#,
        r#"{"type":"presence","room":"r"}"#,
        r#"{"type":"history","room":"r"}"#,
        r#"{"type":"ping"}"#,
        r#"{"type":"refresh","token":"t"}"#,
        r#"{"type":"auth","token":"t"}"#,
        r#"{"type":"rpc","method":"m"}"#,
    ];
    for text in texts {
        let c = parse_ok(text);
        assert!(text.contains(&format!("\"{}\"", c.kind.type_name())));
    }
}

// ---------------------------------------------------------------- ids

#[test]
fn numeric_id_limits() {
    let max = (1u64 << 53) - 1;
    let text = format!(r#"{{"type":"ping","id":{max}}}"#);
    let c = parse_ok(&text);
    assert_eq!(c.id, n(max));
    assert_eq!(max, MAX_NUMERIC_ID);
    let c = parse_ok(r#"{"type":"ping","id":0}"#);
    assert_eq!(c.id, n(0));

    for bad in [
        "9007199254740992",     // 2^53
        "18446744073709551616", // beyond u64
        "-1",
        "-0",
        "1.0",
        "1e2",
        "true",
        "[]",
        "{}",
    ] {
        let e = assert_bad_field(&format!(r#"{{"type":"ping","id":{bad}}}"#), "id", None);
        assert!(e.message.contains("2^53"), "{e:?}");
    }
}

#[test]
fn string_id_limits() {
    let s64 = "a".repeat(64);
    let text = format!(r#"{{"type":"ping","id":"{s64}"}}"#);
    assert_eq!(parse_ok(&text).id, Some(Id::String(s64)));
    let c = parse_ok(r#"{"type":"ping","id":""}"#);
    assert_eq!(c.id, Some(Id::String(String::new())));

    let s65 = "a".repeat(65);
    assert_bad_field(&format!(r#"{{"type":"ping","id":"{s65}"}}"#), "id", None);

    // The limit is in bytes after unescaping: 32 × "é" (2 bytes each) is 64 bytes.
    let e32 = "\\u00e9".repeat(32);
    let text = format!(r#"{{"type":"ping","id":"{e32}"}}"#);
    assert_eq!(parse_ok(&text).id, Some(Id::String("é".repeat(32))));
    let e33 = "é".repeat(33);
    assert_bad_field(&format!(r#"{{"type":"ping","id":"{e33}"}}"#), "id", None);
}

#[test]
fn null_id_is_no_id() {
    let c = parse_ok(r#"{"type":"ping","id":null}"#);
    assert_eq!(c.id, None);
}

#[test]
fn id_serde_matches_the_parser() {
    let ok: Id = serde_json::from_str("9007199254740991").unwrap();
    assert_eq!(ok, Id::Number(MAX_NUMERIC_ID));
    assert!(ok.is_valid());
    for bad in [
        "9007199254740992",
        "-1",
        "1.5",
        "null",
        &format!("\"{}\"", "x".repeat(65)),
    ] {
        assert!(serde_json::from_str::<Id>(bad).is_err(), "{bad}");
    }
    assert_eq!(
        serde_json::to_string(&Id::String("a\"b".into())).unwrap(),
        r#""a\"b""#
    );
    assert_eq!(serde_json::to_string(&Id::from(7)).unwrap(), "7");
    assert!(!Id::Number(1 << 53).is_valid());
    assert!(!Id::String("x".repeat(65)).is_valid());
    assert_eq!(Id::String("abc".into()).to_string(), "abc");
}

// ---------------------------------------------------------------- errors

#[test]
fn invalid_json() {
    for text in [
        "",
        "   ",
        "{",
        r#"{"type":"#,
        "{type: 'ping'}",
        "{\"type\":\"ping\",}",
        "[1,",
    ] {
        let e = parse_err(text);
        assert_eq!(e.code, ErrorCode::BadRequest, "{text}");
        assert!(e.message.starts_with("invalid JSON: "), "{text}: {e:?}");
        assert_eq!(e.id, None, "{text}");
        assert_eq!(e.field, None, "{text}");
    }
    // Trailing characters after the object.
    let e = parse_err(r#"{"type":"ping"} {"type":"ping"}"#);
    assert!(e.message.starts_with("invalid JSON: "), "{e:?}");
}

#[test]
fn invalid_json_keeps_an_id_read_before_the_error() {
    let e = parse_err(r#"{"id":7,"type":"publish","room":"r","data":{"a":"#);
    assert_eq!((e.code, e.id), (ErrorCode::BadRequest, n(7)));
    assert!(e.message.starts_with("invalid JSON: "));
    let e = parse_err(r#"{"id":"q1","type":"ping"} x"#);
    assert_eq!(e.id, Some(Id::String("q1".into())));
    // An id after the error was never read; an invalid one is not kept.
    assert_eq!(parse_err(r#"{"type":"ping",, "id":7}"#).id, None);
    assert_eq!(parse_err(r#"{"id":-7,"type":"#).id, None);
}

#[test]
fn not_an_object() {
    for text in ["[1,2]", "\"ping\"", "null", "42", "true", "[]"] {
        let e = parse_err(text);
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert_eq!(e.message, "a command must be a JSON object", "{text}");
        assert_eq!(e.id, None);
    }
}

#[test]
fn missing_or_bad_type() {
    let e = assert_bad_field(r#"{"id":1,"room":"r"}"#, "type", n(1));
    assert_eq!(e.message, "missing field 'type'");
    let e = assert_bad_field(
        r#"{"id":"a","type":5}"#,
        "type",
        Some(Id::String("a".into())),
    );
    assert_eq!(e.message, "field 'type' must be a string");
    assert_bad_field(r#"{"id":2,"type":null}"#, "type", n(2));
    assert_bad_field(r#"{"type":["ping"]}"#, "type", None);
}

#[test]
fn unknown_type() {
    let e = parse_err(r#"{"type":"subscribe_all","id":11}"#);
    assert_eq!(e.code, ErrorCode::UnknownType);
    assert_eq!(e.id, n(11));
    assert_eq!(e.field, Some("type"));
    assert_eq!(e.message, "unknown command type 'subscribe_all'");
    // Case matters.
    assert_eq!(parse_err(r#"{"type":"PING"}"#).code, ErrorCode::UnknownType);
    // A long type is quoted in part (cut on a character boundary).
    let long = "é".repeat(100);
    let e = parse_err(&format!(r#"{{"type":"{long}"}}"#));
    assert_eq!(e.code, ErrorCode::UnknownType);
    assert!(e.message.len() < 100, "{}", e.message);
    assert!(e.message.ends_with("…'"));
}

#[test]
fn missing_fields() {
    let cases = [
        (r#"{"type":"subscribe","id":1}"#, "room"),
        (r#"{"type":"unsubscribe","id":1}"#, "room"),
        (r#"{"type":"publish","id":1,"data":{}}"#, "room"),
        (r#"{"type":"publish","id":1,"room":"r"}"#, "data"),
        (r#"{"type":"presence","id":1}"#, "room"),
        (r#"{"type":"history","id":1}"#, "room"),
        (r#"{"type":"refresh","id":1}"#, "token"),
        (r#"{"type":"auth","id":1}"#, "token"),
        (r#"{"type":"rpc","id":1,"data":{}}"#, "method"),
    ];
    for (text, field) in cases {
        let e = assert_bad_field(text, field, n(1));
        assert_eq!(e.message, format!("missing field '{field}'"));
    }
}

#[test]
fn wrong_types() {
    let cases = [
        (
            r#"{"type":"subscribe","id":1,"room":5}"#,
            "room",
            "a string",
        ),
        (
            r#"{"type":"subscribe","id":1,"room":null}"#,
            "room",
            "a string",
        ),
        (
            r#"{"type":"subscribe","id":1,"room":"r","token":true}"#,
            "token",
            "a string",
        ),
        (
            r#"{"type":"unsubscribe","id":1,"room":["r"]}"#,
            "room",
            "a string",
        ),
        (
            r#"{"type":"publish","id":1,"room":"r","data":1,"echo":"yes"}"#,
            "echo",
            "a boolean",
        ),
        (
            r#"{"type":"publish","id":1,"room":"r","data":1,"ephemeral":1}"#,
            "ephemeral",
            "a boolean",
        ),
        (
            r#"{"type":"presence","id":1,"room":"r","cursor":5}"#,
            "cursor",
            "a string",
        ),
        (
            r#"{"type":"presence","id":1,"room":"r","limit":-1}"#,
            "limit",
            "a non-negative integer",
        ),
        (
            r#"{"type":"presence","id":1,"room":"r","limit":1.5}"#,
            "limit",
            "a non-negative integer",
        ),
        (
            r#"{"type":"history","id":1,"room":"r","limit":"10"}"#,
            "limit",
            "a non-negative integer",
        ),
        (
            r#"{"type":"history","id":1,"room":"r","limit":1e2}"#,
            "limit",
            "a non-negative integer",
        ),
        (
            r#"{"type":"history","id":1,"room":"r","reverse":0}"#,
            "reverse",
            "a boolean",
        ),
        (
            r#"{"type":"refresh","id":1,"token":null}"#,
            "token",
            "a string",
        ),
        (r#"{"type":"auth","id":1,"token":{}}"#, "token", "a string"),
        (r#"{"type":"rpc","id":1,"method":1}"#, "method", "a string"),
    ];
    for (text, field, what) in cases {
        let e = assert_bad_field(text, field, n(1));
        assert_eq!(
            e.message,
            format!("field '{field}' must be {what}"),
            "{text}"
        );
    }
}

#[test]
fn since_errors_name_the_nested_field() {
    for command in ["subscribe", "history"] {
        let t =
            |since: &str| format!(r#"{{"type":"{command}","id":"s","room":"r","since":{since}}}"#);
        let id = Some(Id::String("s".into()));
        let cases = [
            ("\"e:41\"", "since"),
            ("[\"e\",41]", "since"),
            ("41", "since"),
            (r#"{"offset":41}"#, "since.epoch"),
            (r#"{"epoch":"e"}"#, "since.offset"),
            (r#"{"epoch":7,"offset":41}"#, "since.epoch"),
            (r#"{"epoch":null,"offset":41}"#, "since.epoch"),
            (r#"{"epoch":"e","offset":-1}"#, "since.offset"),
            (r#"{"epoch":"e","offset":"41"}"#, "since.offset"),
            (r#"{"epoch":"e","offset":41.0}"#, "since.offset"),
            (
                r#"{"epoch":"e","offset":18446744073709551616}"#,
                "since.offset",
            ),
            (r#"{"epoch":"e","offset":1,"offset":2}"#, "since.offset"),
        ];
        for (since, field) in cases {
            assert_bad_field(&t(since), field, id.clone());
        }
        let e = assert_bad_field(
            &t(r#"{"epoch":"e","offset":-1}"#),
            "since.offset",
            id.clone(),
        );
        assert_eq!(
            e.message,
            "field 'since.offset' must be a non-negative integer"
        );
        let e = assert_bad_field(&t(r#"{"epoch":"e"}"#), "since.offset", id);
        assert_eq!(e.message, "missing field 'since.offset'");
    }
}

#[test]
fn duplicate_fields() {
    let e = assert_bad_field(
        r#"{"type":"publish","id":3,"room":"a","room":"b","data":1}"#,
        "room",
        n(3),
    );
    assert_eq!(e.message, "duplicate field 'room'");
    // A duplicated id cannot be answered with either.
    assert_bad_field(r#"{"type":"ping","id":3,"id":4}"#, "id", None);
    assert_bad_field(r#"{"type":"ping","type":"ping"}"#, "type", None);
    // Unknown fields may repeat.
    parse_ok(r#"{"type":"ping","x":1,"x":2}"#);
}

#[test]
fn binary_message_error() {
    let e = CommandError::binary_message();
    assert_eq!((e.code, &e.id), (ErrorCode::BadRequest, &None));
    let out = encoded(|o| encode_command_error(o, &e));
    let ServerMessage::Error(err) = parse_server_message(&out).unwrap() else {
        panic!()
    };
    assert_eq!(err.error_code(), Some(ErrorCode::BadRequest));
}

#[test]
fn command_error_answers_with_the_same_id() {
    let e = parse_err(r#"{"type":"publish","id":"req-1","room":"r"}"#);
    let out = encoded(|o| encode_command_error(o, &e));
    assert_eq!(
        out,
        r#"{"type":"error","id":"req-1","code":"bad_request","message":"missing field 'data'"}"#
    );
    let e = parse_err(r#"{"type":"nope"}"#);
    let out = encoded(|o| encode_command_error(o, &e));
    assert_eq!(
        out,
        r#"{"type":"error","id":null,"code":"unknown_type","message":"unknown command type 'nope'"}"#
    );
    assert_eq!(e.to_string(), "unknown_type: unknown command type 'nope'");
}

// ---------------------------------------------------------------- rooms and codes

#[test]
fn room_validation() {
    for ok in [
        "a",
        "chat:lobby",
        "user:alice",
        "A-Z_a.z:0@9=/x",
        &"r".repeat(200),
    ] {
        assert_eq!(validate_room(ok), Ok(()), "{ok}");
    }
    assert_eq!(validate_room(""), Err("room name is empty"));
    assert!(validate_room(&"r".repeat(201)).is_err());
    for bad in [
        "a b", "a*", "news:*", "é", "a\"b", "a\\b", "a\0", "a#b", "a?b", "a,b",
    ] {
        assert!(validate_room(bad).is_err(), "{bad}");
    }
}

#[test]
fn namespaces() {
    assert_eq!(namespace("chat:lobby"), "chat");
    assert_eq!(namespace("user:alice:x"), "user");
    assert_eq!(namespace("lobby"), "");
    assert_eq!(namespace(":x"), "");
    assert_eq!(namespace("a:"), "a");
}

#[test]
fn error_codes() {
    let names = [
        "bad_request",
        "unknown_type",
        "bad_room",
        "unknown_namespace",
        "not_subscribed",
        "already_subscribed",
        "forbidden",
        "unauthorized",
        "rate_limited",
        "limit_exceeded",
        "unavailable",
        "internal",
    ];
    assert_eq!(ErrorCode::ALL.len(), names.len());
    for (code, name) in ErrorCode::ALL.into_iter().zip(names) {
        assert_eq!(code.as_str(), name);
        assert_eq!(code.to_string(), name);
        assert_eq!(serde_json::to_string(&code).unwrap(), format!("\"{name}\""));
        assert_eq!(
            serde_json::from_str::<ErrorCode>(&format!("\"{name}\"")).unwrap(),
            code
        );
        assert_eq!(ErrorCode::from_wire(name), Some(code));
    }
    assert_eq!(ErrorCode::from_wire("teapot"), None);
}

// ---------------------------------------------------------------- server messages

#[test]
fn reply_with_raw_and_struct_results() {
    let out = encoded(|o| encode_reply(o, &Id::Number(7), &*raw("{}")).unwrap());
    assert_eq!(out, r#"{"type":"reply","id":7,"result":{}}"#);
    let out = encoded(|o| encode_reply(o, &Id::Number(3), &EmptyResult {}).unwrap());
    assert_eq!(out, r#"{"type":"reply","id":3,"result":{}}"#);

    let data = raw(r#"{"text":"hi"}"#);
    let from = raw(r#"{"user":"alice","connection":"c1"}"#);
    let result = SubscribeResult {
        room: "chat:lobby".into(),
        epoch: "e8f1c2".into(),
        offset: 45,
        recovered: Some(true),
        publications: vec![
            Publication::new(42, &data, Some(&from)),
            Publication::new(43, RawValue::NULL, None),
        ],
    };
    let out = encoded(|o| encode_reply(o, &Id::String("s".into()), &result).unwrap());
    assert_eq!(
        out,
        r#"{"type":"reply","id":"s","result":{"room":"chat:lobby","epoch":"e8f1c2","offset":45,"recovered":true,"publications":[{"offset":42,"data":{"text":"hi"},"from":{"user":"alice","connection":"c1"}},{"offset":43,"data":null}]}}"#
    );
    let ServerMessage::Reply(reply) = parse_server_message(&out).unwrap() else {
        panic!()
    };
    assert_eq!(reply.id, Id::String("s".into()));
    let back: SubscribeResult<'static> = reply.result_as().unwrap();
    assert_eq!(back, result);
    let member = Member::from_raw(back.publications[0].from.as_deref().unwrap()).unwrap();
    assert_eq!(member, Member::new("alice", "c1", None));

    // Without since: no "recovered".
    let plain = SubscribeResult {
        recovered: None,
        publications: vec![],
        ..result
    };
    let json = serde_json::to_string(&plain).unwrap();
    assert_eq!(
        json,
        r#"{"room":"chat:lobby","epoch":"e8f1c2","offset":45,"publications":[]}"#
    );
}

#[test]
fn other_result_structs_round_trip() {
    let publish = PublishResult {
        room: "r".into(),
        epoch: Some("e".into()),
        offset: Some(46),
    };
    assert_eq!(
        serde_json::to_string(&publish).unwrap(),
        r#"{"room":"r","epoch":"e","offset":46}"#
    );
    let ephemeral = PublishResult {
        room: "r".into(),
        epoch: None,
        offset: None,
    };
    assert_eq!(
        serde_json::to_string(&ephemeral).unwrap(),
        r#"{"room":"r"}"#
    );

    let info = raw(r#"{"name":"Bob"}"#);
    let presence = PresenceResult {
        members: vec![
            Member::new("bob", "c_2", Some(&info)),
            Member::new("", "c_3", None),
        ],
        next_cursor: None,
        connections: 2,
        users: 2,
    };
    let json = serde_json::to_string(&presence).unwrap();
    assert_eq!(
        json,
        r#"{"members":[{"user":"bob","connection":"c_2","info":{"name":"Bob"}},{"user":"","connection":"c_3"}],"next_cursor":null,"connections":2,"users":2}"#
    );
    let back: PresenceResult<'static> = serde_json::from_str(&json).unwrap();
    assert_eq!(back, presence);

    let data = raw("[1]");
    let history = HistoryResult {
        epoch: "e".into(),
        offset: 9,
        publications: vec![Publication::new(9, &data, None)],
    };
    let out = encoded(|o| encode_reply(o, &Id::Number(6), &history).unwrap());
    let ServerMessage::Reply(reply) = parse_server_message(&out).unwrap() else {
        panic!()
    };
    assert_eq!(
        reply.result_as::<HistoryResult<'static>>().unwrap(),
        history
    );

    let refresh = RefreshResult {
        expires: Some(1_767_225_600),
    };
    assert_eq!(
        serde_json::to_string(&refresh).unwrap(),
        r#"{"expires":1767225600}"#
    );
    let rpc = RpcResult {
        data: Cow::Borrowed(&*data),
    };
    assert_eq!(serde_json::to_string(&rpc).unwrap(), r#"{"data":[1]}"#);
    let back: RpcResult<'static> = serde_json::from_str(r#"{"data": {"x": 1}}"#).unwrap();
    assert_eq!(back.data.get(), r#"{"x": 1}"#);
}

#[test]
fn failed_reply_leaves_nothing() {
    struct Fails;
    impl serde::Serialize for Fails {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("no"))
        }
    }
    let mut out = b"before".to_vec();
    assert!(encode_reply(&mut out, &Id::Number(1), &Fails).is_err());
    assert_eq!(out, b"before");
}

#[test]
fn error_message_round_trip() {
    let out = encoded(|o| {
        encode_error(
            o,
            Some(&Id::Number(7)),
            ErrorCode::Forbidden,
            "publishing to 'news:*' needs the server API",
            None,
        )
    });
    assert_eq!(
        out,
        r#"{"type":"error","id":7,"code":"forbidden","message":"publishing to 'news:*' needs the server API"}"#
    );
    let out = encoded(|o| encode_error(o, None, ErrorCode::RateLimited, "slow down", Some(1500)));
    assert_eq!(
        out,
        r#"{"type":"error","id":null,"code":"rate_limited","message":"slow down","retry_after_ms":1500}"#
    );
    let msg = parse_server_message(&out).unwrap();
    assert_eq!(msg.id(), None);
    let ServerMessage::Error(e) = msg else {
        panic!()
    };
    assert_eq!(e.error_code(), Some(ErrorCode::RateLimited));
    assert_eq!(e.retry_after_ms, Some(1500));
    assert_eq!(e.message, "slow down");

    // A code from a newer server still parses.
    let msg =
        parse_server_message(r#"{"type":"error","id":1,"code":"teapot","message":"m"}"#).unwrap();
    let ServerMessage::Error(e) = msg else {
        panic!()
    };
    assert_eq!((e.code.as_str(), e.error_code()), ("teapot", None));
}

#[test]
fn welcome_round_trip() {
    let mut welcome = Welcome::new("c_7Hk2", "alice", "n1", Some(1_767_225_600), 25);
    welcome
        .rooms
        .insert("news:global".into(), StreamPosition::new("e8f1c2", 41));
    welcome
        .rooms
        .insert("user:alice".into(), StreamPosition::new("x", 0));
    let out = encoded(|o| encode_welcome(o, &welcome));
    assert_eq!(
        out,
        r#"{"type":"welcome","connection":"c_7Hk2","user":"alice","node":"n1","expires":1767225600,"ping_interval":25,"version":"1","rooms":{"news:global":{"epoch":"e8f1c2","offset":41},"user:alice":{"epoch":"x","offset":0}}}"#
    );
    assert_eq!(
        parse_server_message(&out).unwrap(),
        ServerMessage::Welcome(welcome)
    );

    let anonymous = Welcome::new("c", "", "n", None, 25);
    let out = encoded(|o| encode_welcome(o, &anonymous));
    assert!(out.contains(r#""expires":null"#));
    assert!(out.ends_with(r#""rooms":{}}"#));
    assert_eq!(
        parse_server_message(&out).unwrap(),
        ServerMessage::Welcome(anonymous)
    );
}

#[test]
fn message_push_round_trip() {
    let data = raw(r#"{"text": "hi"}"#);
    let mut from = Vec::new();
    let info = raw(r#"{"name":"Alice"}"#);
    encode_member(&mut from, &Member::new("alice", "c_7Hk2", Some(&info)));
    let from = raw(std::str::from_utf8(&from).unwrap());

    let out = encoded(|o| encode_message_push(o, "chat:lobby", "e8f1c2", 46, &data, Some(&from)));
    assert_eq!(
        out,
        r#"{"type":"message","room":"chat:lobby","epoch":"e8f1c2","offset":46,"data":{"text": "hi"},"from":{"user":"alice","connection":"c_7Hk2","info":{"name":"Alice"}}}"#
    );
    let ServerMessage::Message(m) = parse_server_message(&out).unwrap() else {
        panic!()
    };
    assert_eq!(m.room, "chat:lobby");
    assert_eq!(m.position(), Some(StreamPosition::new("e8f1c2", 46)));
    assert!(!m.is_ephemeral());
    assert_eq!(m.data.get(), r#"{"text": "hi"}"#);
    assert_eq!(m.from, Some(Member::new("alice", "c_7Hk2", Some(&info))));

    // Server API publication: no from; data null is data.
    let out = encoded(|o| encode_message_push(o, "r", "e", 1, RawValue::NULL, None));
    assert_eq!(
        out,
        r#"{"type":"message","room":"r","epoch":"e","offset":1,"data":null}"#
    );
    let ServerMessage::Message(m) = parse_server_message(&out).unwrap() else {
        panic!()
    };
    assert_eq!((m.data.get(), m.from), ("null", None));

    // Ephemeral: no epoch, no offset.
    let out = encoded(|o| encode_ephemeral_push(o, "r", &data, Some(&from)));
    assert_eq!(
        out,
        r#"{"type":"message","room":"r","data":{"text": "hi"},"from":{"user":"alice","connection":"c_7Hk2","info":{"name":"Alice"}}}"#
    );
    let ServerMessage::Message(m) = parse_server_message(&out).unwrap() else {
        panic!()
    };
    assert!(m.is_ephemeral());
    assert_eq!(m.position(), None);
}

#[test]
fn member_pushes_round_trip() {
    let info = raw(r#"{"avatar":"x.png"}"#);
    let member = Member::new("bob", "c_2", Some(&info));
    let out = encoded(|o| encode_join(o, "chat:lobby", &member));
    assert_eq!(
        out,
        r#"{"type":"join","room":"chat:lobby","member":{"user":"bob","connection":"c_2","info":{"avatar":"x.png"}}}"#
    );
    let ServerMessage::Join(push) = parse_server_message(&out).unwrap() else {
        panic!()
    };
    assert_eq!((push.room.as_str(), &push.member), ("chat:lobby", &member));

    let member = Member::new("bob", "c_2", None);
    let out = encoded(|o| encode_leave(o, "chat:lobby", &member));
    assert_eq!(
        out,
        r#"{"type":"leave","room":"chat:lobby","member":{"user":"bob","connection":"c_2"}}"#
    );
    let ServerMessage::Leave(push) = parse_server_message(&out).unwrap() else {
        panic!()
    };
    assert_eq!(push.member, member);
}

#[test]
fn small_pushes_round_trip() {
    let out = encoded(|o| encode_subscribed(o, "news:global", "e8", 41));
    assert_eq!(
        out,
        r#"{"type":"subscribed","room":"news:global","epoch":"e8","offset":41}"#
    );
    assert_eq!(
        parse_server_message(&out).unwrap(),
        ServerMessage::Subscribed(SubscribedPush {
            room: "news:global".into(),
            epoch: "e8".into(),
            offset: 41,
            recovered: None,
        })
    );

    let out = encoded(|o| encode_unsubscribed(o, "news:global", "server"));
    assert_eq!(
        out,
        r#"{"type":"unsubscribed","room":"news:global","reason":"server"}"#
    );
    assert_eq!(
        parse_server_message(&out).unwrap(),
        ServerMessage::Unsubscribed(UnsubscribedPush {
            room: "news:global".into(),
            reason: "server".into(),
        })
    );

    let out = encoded(|o| encode_pong(o, Some(&Id::Number(3))));
    assert_eq!(out, r#"{"type":"pong","id":3}"#);
    let msg = parse_server_message(&out).unwrap();
    assert_eq!(msg.id(), Some(&Id::Number(3)));
    let out = encoded(|o| encode_pong(o, None));
    assert_eq!(out, r#"{"type":"pong"}"#);
    assert_eq!(
        parse_server_message(&out).unwrap(),
        ServerMessage::Pong { id: None }
    );

    let out = encoded(|o| encode_refresh_required(o, 1_767_225_600));
    assert_eq!(out, r#"{"type":"refresh_required","expires":1767225600}"#);
    assert_eq!(
        parse_server_message(&out).unwrap(),
        ServerMessage::RefreshRequired {
            expires: Some(1_767_225_600)
        }
    );
}

#[test]
fn escaping_quotes_backslashes_controls_and_unicode() {
    let room = "we\"ird\\room\u{1}\n";
    let text = "il a dit \"ça\" → 🎉\u{7f}\t\u{2028}";
    let user = "zoë \"z\"";

    let out = encoded(|o| {
        encode_error(
            o,
            Some(&Id::String(text.into())),
            ErrorCode::BadRoom,
            text,
            None,
        )
    });
    assert!(!out.contains('\n') && !out.contains('\u{1}'));
    let ServerMessage::Error(e) = parse_server_message(&out).unwrap() else {
        panic!()
    };
    assert_eq!(
        (e.id, e.message.as_str()),
        (Some(Id::String(text.into())), text)
    );

    let out = encoded(|o| encode_message_push(o, room, text, 1, RawValue::NULL, None));
    let ServerMessage::Message(m) = parse_server_message(&out).unwrap() else {
        panic!()
    };
    assert_eq!((m.room.as_str(), m.epoch.as_deref()), (room, Some(text)));

    let member = Member::new(user, room, None);
    let out = encoded(|o| encode_join(o, room, &member));
    let ServerMessage::Join(push) = parse_server_message(&out).unwrap() else {
        panic!()
    };
    assert_eq!((push.room.as_str(), push.member), (room, member));

    // Exact escaping (serde_json's): quotes and backslashes escaped, non-ASCII as UTF-8.
    let out = encoded(|o| encode_unsubscribed(o, "a\"b\\c", "ünï 🎉"));
    assert_eq!(
        out,
        "{\"type\":\"unsubscribed\",\"room\":\"a\\\"b\\\\c\",\"reason\":\"ünï 🎉\"}"
    );
}

#[test]
fn encoders_write_into_bytes_mut_too() {
    let mut buf = bytes::BytesMut::new();
    encode_message_push(&mut buf, "r", "e", 7, RawValue::TRUE, None);
    encode_pong(&mut buf, None);
    assert_eq!(
        &buf[..],
        br#"{"type":"message","room":"r","epoch":"e","offset":7,"data":true}{"type":"pong"}"#
    );
    let mut buf = bytes::BytesMut::new();
    encode_reply(&mut buf, &Id::Number(u64::MAX), &EmptyResult {}).unwrap();
    assert_eq!(
        &buf[..],
        br#"{"type":"reply","id":18446744073709551615,"result":{}}"#
    );
}

#[test]
fn server_message_forward_compatibility_and_errors() {
    assert_eq!(
        parse_server_message(r#"{"type":"shiny_new_push","x":{"y":1}}"#).unwrap(),
        ServerMessage::Unknown("shiny_new_push".into())
    );
    // Unknown fields ignored, order free.
    let msg = parse_server_message(r#"{"new":1,"id":1,"type":"pong","extra":[1]}"#).unwrap();
    assert_eq!(
        msg,
        ServerMessage::Pong {
            id: Some(Id::Number(1))
        }
    );
    // Not JSON, no type, a known type missing a field, a field of the wrong type.
    for bad in [
        "nope",
        r#"{"id":1}"#,
        r#"{"type":7}"#,
        r#"{"type":"message","room":"r"}"#,
        r#"{"type":"reply","result":{}}"#,
        r#"{"type":"subscribed","room":"r","epoch":"e","offset":"1"}"#,
    ] {
        assert!(parse_server_message(bad).is_err(), "{bad}");
    }
}

// ---------------------------------------------------------------- client commands

#[test]
fn encoded_commands_parse_back_to_themselves() {
    let data = raw(r#"{"text": "hi \"you\""}"#);
    let commands = vec![
        Command {
            id: Some(Id::Number(2)),
            kind: CommandKind::Subscribe(SubscribeCommand {
                room: "chat:lobby".into(),
                since: Some(StreamPosition::new("e8f1c2", 41)),
                token: Some("sub.jwt".into()),
            }),
        },
        Command {
            id: None,
            kind: CommandKind::Subscribe(SubscribeCommand {
                room: "r".into(),
                since: None,
                token: None,
            }),
        },
        Command {
            id: Some(Id::String("x\"y".into())),
            kind: CommandKind::Unsubscribe { room: "r".into() },
        },
        Command {
            id: Some(Id::Number(MAX_NUMERIC_ID)),
            kind: CommandKind::Publish(PublishCommand {
                room: "chat:lobby".into(),
                data: &data,
                echo: false,
                ephemeral: true,
                idempotency_key: Some("k-1".into()),
            }),
        },
        Command {
            id: Some(Id::Number(4)),
            kind: CommandKind::Publish(PublishCommand {
                room: "r".into(),
                data: RawValue::NULL,
                echo: true,
                ephemeral: false,
                idempotency_key: None,
            }),
        },
        Command {
            id: Some(Id::Number(5)),
            kind: CommandKind::Presence(PresenceCommand {
                room: "r".into(),
                cursor: Some("next".into()),
                limit: Some(100),
            }),
        },
        Command {
            id: Some(Id::Number(6)),
            kind: CommandKind::History(HistoryCommand {
                room: "r".into(),
                since: Some(StreamPosition::new("e", 3)),
                limit: Some(50),
                reverse: true,
            }),
        },
        Command {
            id: Some(Id::Number(3)),
            kind: CommandKind::Ping,
        },
        Command {
            id: Some(Id::Number(9)),
            kind: CommandKind::Refresh {
                token: "new.jwt".into(),
            },
        },
        Command {
            id: Some(Id::Number(1)),
            kind: CommandKind::Auth {
                token: "a.jwt".into(),
            },
        },
        Command {
            id: Some(Id::Number(8)),
            kind: CommandKind::Rpc(RpcCommand {
                method: "orders.list".into(),
                data: &data,
            }),
        },
    ];
    for command in &commands {
        let text = encoded(|o| encode_command(o, command));
        let back = parse_ok(&text);
        assert_eq!(&back, command, "{text}");
    }

    let text = encoded(|o| encode_command(o, &commands[4]));
    assert_eq!(text, r#"{"type":"publish","id":4,"room":"r","data":null}"#);
    let text = encoded(|o| encode_command(o, &commands[0]));
    assert_eq!(
        text,
        r#"{"type":"subscribe","id":2,"room":"chat:lobby","since":{"epoch":"e8f1c2","offset":41},"token":"sub.jwt"}"#
    );
}

// ---------------------------------------------------------------- robustness

#[test]
fn every_prefix_and_byte_mutation_is_answered_without_panicking() {
    let text = r#"{"type":"subscribe","id":12,"room":"chat:lobby","since":{"epoch":"e\u00e9","offset":41},"token":"t","x":[1,{"y":null}]}"#;
    for end in 0..text.len() {
        if let Some(prefix) = text.get(..end) {
            let e = parse_err(prefix);
            assert_eq!(e.code, ErrorCode::BadRequest, "{prefix}");
        }
    }
    for i in 0..text.len() {
        for b in [
            b'"', b'{', b'}', b'[', b',', b':', b'\\', b'-', b'0', b'n', b' ',
        ] {
            let mut bytes = text.as_bytes().to_vec();
            bytes[i] = b;
            if let Ok(mutated) = std::str::from_utf8(&bytes) {
                let _ = parse_command(mutated);
            }
        }
    }
}

proptest::proptest! {
    #[test]
    fn any_text_parses_or_errs(text in "\\PC{0,64}") {
        let _ = parse_command(&text);
        let _ = parse_server_message(&text);
    }

    #[test]
    fn strings_round_trip_through_commands(
        room in "\\PC{0,40}",
        token in proptest::option::of("[\\x00-\\x7f\u{80}-\u{10ffff}]{0,40}"),
        id in "\\PC{0,16}",
        offset in proptest::num::u64::ANY,
    ) {
        let command = Command {
            id: Some(Id::String(id)),
            kind: CommandKind::Subscribe(SubscribeCommand {
                room: room.as_str().into(),
                since: Some(StreamPosition::new(room.clone(), offset)),
                token: token.map(Into::into),
            }),
        };
        let text = encoded(|o| encode_command(o, &command));
        proptest::prop_assert_eq!(parse_command(&text).unwrap(), command);
    }

    #[test]
    fn strings_round_trip_through_pushes(
        room in "\\PC{0,40}",
        user in "[\\x00-\\x7f\u{80}-\u{10ffff}]{0,40}",
        message in "\\PC{0,80}",
        offset in proptest::num::u64::ANY,
    ) {
        let from = encoded(|o| encode_member(o, &Member::new(&user, &room, None)));
        let from = raw(&from);
        let out = encoded(|o| encode_message_push(o, &room, &message, offset, RawValue::NULL, Some(&from)));
        let ServerMessage::Message(m) = parse_server_message(&out).unwrap() else {
            panic!("{out}")
        };
        proptest::prop_assert_eq!(&m.room, &room);
        proptest::prop_assert_eq!(m.position(), Some(StreamPosition::new(message.clone(), offset)));
        proptest::prop_assert_eq!(m.from, Some(Member::new(&user, &room, None)));

        let out = encoded(|o| encode_error(o, None, ErrorCode::Internal, &message, None));
        let ServerMessage::Error(e) = parse_server_message(&out).unwrap() else {
            panic!("{out}")
        };
        proptest::prop_assert_eq!(e.message, message);
    }
}

#[test]
fn deep_nesting_is_data_not_a_stack_overflow() {
    let deep = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));
    let text = format!(r#"{{"type":"publish","id":1,"room":"r","data":{deep}}}"#);
    let CommandKind::Publish(p) = parse_ok(&text).kind else {
        panic!()
    };
    assert_eq!(p.data.get().len(), 40_000);
    // The same value where a string belongs, or in a field nobody reads.
    let text = format!(r#"{{"type":"publish","id":1,"room":{deep},"data":1}}"#);
    assert_bad_field(&text, "room", n(1));
    let text = format!(r#"{{"type":"ping","id":1,"future":{deep},"limit":{deep}}}"#);
    assert_eq!(parse_ok(&text).kind, CommandKind::Ping);
}
