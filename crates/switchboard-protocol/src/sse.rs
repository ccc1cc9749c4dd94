//! Server-Sent Events on the wire (the WHATWG HTML "server-sent events" event stream): what
//! an SSE stream writes, as pure functions over byte buffers.

/// The comment an idle stream sends to keep proxies from closing it.
pub const KEEPALIVE: &[u8] = b": ping\n\n";

/// Appends one event: `event:` (when not the default `message`), `id:` when given, and
/// `data` as one `data:` line per line of it, then the blank line that ends the event.
pub fn encode_event(out: &mut Vec<u8>, event: &str, id: Option<&str>, data: &[u8]) {
    if event != "message" {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(event.as_bytes());
        out.push(b'\n');
    }
    if let Some(id) = id {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(id.as_bytes());
        out.push(b'\n');
    }
    // A bare CR, LF or CRLF ends a line in an event stream: each becomes its own data line.
    let mut rest = data;
    loop {
        let end = rest
            .iter()
            .position(|&b| b == b'\n' || b == b'\r')
            .unwrap_or(rest.len());
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&rest[..end]);
        out.push(b'\n');
        if end == rest.len() {
            break;
        }
        let skip = if rest[end] == b'\r' && rest.get(end + 1) == Some(&b'\n') {
            2
        } else {
            1
        };
        rest = &rest[end + skip..];
    }
    out.push(b'\n');
}

/// Appends the `retry:` field that tells the browser how long to wait before reconnecting.
pub fn encode_retry(out: &mut Vec<u8>, millis: u64) {
    out.extend_from_slice(format!("retry: {millis}\n\n").as_bytes());
}

/// The prefix of a stream cursor (the `id:` of a `message` event, protocol 8).
pub const CURSOR_PREFIX: &str = "v1.";

/// The longest cursor accepted, in bytes: a `Last-Event-ID` or `?since=` past it is refused
/// before it is decoded.
pub const MAX_CURSOR_LEN: usize = 8 * 1024;

/// Why a cursor was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CursorError {
    /// Longer than [`MAX_CURSOR_LEN`].
    TooLong,
    /// Not `v1.` followed by unpadded base64url.
    Encoding,
    /// Not a JSON object mapping rooms to `[epoch, offset]`.
    Json,
    /// More rooms than the stream has.
    TooManyRooms,
}

impl std::fmt::Display for CursorError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CursorError::TooLong => "cursor is too long",
            CursorError::Encoding => "cursor is not 'v1.' followed by unpadded base64url",
            CursorError::Json => "cursor is not an object of room to [epoch, offset]",
            CursorError::TooManyRooms => "cursor names more rooms than the stream has",
        })
    }
}

impl std::error::Error for CursorError {}

/// Appends the cursor of `positions` (room, epoch, offset): `v1.` and the unpadded base64url
/// of the JSON object `{room: [epoch, offset]}`. `scratch` holds the JSON (reused by callers
/// that write many cursors).
pub fn encode_cursor<'a>(
    out: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
    positions: impl IntoIterator<Item = (&'a str, &'a str, u64)>,
) {
    use base64::Engine;
    scratch.clear();
    scratch.push(b'{');
    for (i, (room, epoch, offset)) in positions.into_iter().enumerate() {
        if i > 0 {
            scratch.push(b',');
        }
        // Strings of a JSON value never fail to serialise.
        let _ = serde_json::to_writer(&mut *scratch, room);
        scratch.extend_from_slice(b":[");
        let _ = serde_json::to_writer(&mut *scratch, epoch);
        scratch.push(b',');
        scratch.extend_from_slice(offset.to_string().as_bytes());
        scratch.push(b']');
    }
    scratch.push(b'}');
    out.extend_from_slice(CURSOR_PREFIX.as_bytes());
    let start = out.len();
    let len = base64::encoded_len(scratch.len(), false).unwrap_or(0);
    out.resize(start + len, 0);
    let written = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode_slice(&scratch[..], &mut out[start..])
        .unwrap_or(0);
    out.truncate(start + written);
}

/// Decodes a cursor into (room, epoch, offset) triples, refusing one longer than
/// [`MAX_CURSOR_LEN`] or naming more than `max_rooms` rooms.
pub fn decode_cursor(
    cursor: &str,
    max_rooms: usize,
) -> Result<Vec<(String, String, u64)>, CursorError> {
    use base64::Engine;
    if cursor.len() > MAX_CURSOR_LEN {
        return Err(CursorError::TooLong);
    }
    let b64 = cursor
        .trim()
        .strip_prefix(CURSOR_PREFIX)
        .ok_or(CursorError::Encoding)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(b64)
        .map_err(|_| CursorError::Encoding)?;
    let map: std::collections::BTreeMap<String, (String, u64)> =
        serde_json::from_slice(&json).map_err(|_| CursorError::Json)?;
    if map.len() > max_rooms {
        return Err(CursorError::TooManyRooms);
    }
    Ok(map.into_iter().map(|(r, (e, o))| (r, e, o)).collect())
}

/// A JSON string as it appears in the JSON text (between its quotes, still escaped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawStr<'a>(pub &'a [u8]);

impl RawStr<'_> {
    /// Whether the string equals `s` (unescaping only when it has escapes).
    pub fn matches(&self, s: &str) -> bool {
        if self.0.contains(&b'\\') {
            self.unescape().is_some_and(|u| u == s)
        } else {
            self.0 == s.as_bytes()
        }
    }

    /// The string, unescaped (`None`: not a valid JSON string).
    pub fn unescape(&self) -> Option<String> {
        let mut quoted = Vec::with_capacity(self.0.len() + 2);
        quoted.push(b'"');
        quoted.extend_from_slice(self.0);
        quoted.push(b'"');
        serde_json::from_slice(&quoted).ok()
    }
}

/// Where a publication event of the shared form (`data: {"type":"message","room":…,
/// "epoch":…,"offset":…`) belongs: its room, epoch and offset, read from the front of the
/// event without parsing the rest and without allocating (a stream reads it from every event
/// it writes). `None` for every other event (ephemeral publications, join, leave, comments).
pub fn publication_position_raw(event: &[u8]) -> Option<(RawStr<'_>, RawStr<'_>, u64)> {
    position_of_payload(event.strip_prefix(b"data: ")?)
}

/// [`publication_position_raw`] with the strings unescaped.
pub fn publication_position(event: &[u8]) -> Option<(String, String, u64)> {
    let (room, epoch, offset) = publication_position_raw(event)?;
    Some((room.unescape()?, epoch.unescape()?, offset))
}

/// The position of a `message` push's JSON (`{"type":"message","room":…,"epoch":…,"offset":…`).
fn position_of_payload(payload: &[u8]) -> Option<(RawStr<'_>, RawStr<'_>, u64)> {
    let rest = payload.strip_prefix(b"{\"type\":\"message\",\"room\":")?;
    let (room, rest) = json_string(rest)?;
    let rest = rest.strip_prefix(b",\"epoch\":")?;
    let (epoch, rest) = json_string(rest)?;
    let rest = rest.strip_prefix(b",\"offset\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let offset = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
    Some((room, epoch, offset))
}

/// A JSON string at the front of `input` (raw) and what follows it.
fn json_string(input: &[u8]) -> Option<(RawStr<'_>, &[u8])> {
    if input.first() != Some(&b'"') {
        return None;
    }
    let mut i = 1;
    while i < input.len() {
        match input[i] {
            b'\\' => i += 2,
            b'"' => return Some((RawStr(&input[1..i]), &input[i + 1..])),
            _ => i += 1,
        }
    }
    None
}

/// Appends the event of a `message` push whose JSON is `payload`, as a stream of one room
/// writes it: for a publication (a push with a position), with the `id:` line of the cursor
/// of that room alone, after the data. A stream of one room writes this shared event as it
/// is; a stream of several rooms replaces the `id:` line with its own cursor
/// ([`without_id`]). Other pushes (ephemeral publications) get no `id:` line.
pub fn encode_publication_event(out: &mut Vec<u8>, payload: &[u8]) {
    encode_event(out, "message", None, payload);
    let Some((room, epoch, offset)) = position_of_payload(payload) else {
        return;
    };
    let (Some(room), Some(epoch)) = (room.unescape(), epoch.unescape()) else {
        return;
    };
    out.pop();
    out.extend_from_slice(b"id: ");
    let mut scratch = Vec::new();
    encode_cursor(out, &mut scratch, [(room.as_str(), epoch.as_str(), offset)]);
    out.extend_from_slice(b"\n\n");
}

/// An event without its trailing `id:` line and the blank line that ends it (what
/// [`encode_publication_event`] added), so that a stream can append its own; an event without
/// one loses only the blank line.
pub fn without_id(event: &[u8]) -> &[u8] {
    let body = event.strip_suffix(b"\n").unwrap_or(event);
    let line_start = body[..body.len().saturating_sub(1)]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    if body[line_start..].starts_with(b"id: ") {
        &body[..line_start]
    } else {
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(name: &str, id: Option<&str>, data: &str) -> String {
        let mut out = Vec::new();
        encode_event(&mut out, name, id, data.as_bytes());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn events_lines_and_ids() {
        assert_eq!(event("message", None, r#"{"a":1}"#), "data: {\"a\":1}\n\n");
        assert_eq!(
            event("join", Some("v1.x"), "{}"),
            "event: join\nid: v1.x\ndata: {}\n\n"
        );
        assert_eq!(
            event("message", None, "a\nb\r\nc\rd"),
            "data: a\ndata: b\ndata: c\ndata: d\n\n"
        );
        assert_eq!(event("message", None, ""), "data: \n\n");
        let mut out = Vec::new();
        encode_retry(&mut out, 2500);
        assert_eq!(out, b"retry: 2500\n\n");
    }

    #[test]
    fn cursors_round_trip_and_are_bounded() {
        let mut out = Vec::new();
        let mut scratch = Vec::new();
        encode_cursor(
            &mut out,
            &mut scratch,
            [("chat:lobby", "e8f1c2", 46), ("news:\"q\"", "e1", 0)],
        );
        let cursor = String::from_utf8(out).unwrap();
        assert!(cursor.starts_with("v1."));
        assert!(!cursor.contains('='));
        let decoded = decode_cursor(&cursor, 2).unwrap();
        assert_eq!(
            decoded,
            vec![
                ("chat:lobby".into(), "e8f1c2".into(), 46),
                ("news:\"q\"".into(), "e1".into(), 0)
            ]
        );
        assert_eq!(decode_cursor(&cursor, 1), Err(CursorError::TooManyRooms));
        assert_eq!(decode_cursor("v2.abc", 5), Err(CursorError::Encoding));
        assert_eq!(decode_cursor("v1.e30", 5), Ok(vec![]));
        assert_eq!(decode_cursor("v1.WzFd", 5), Err(CursorError::Json));
        let long = format!("v1.{}", "A".repeat(MAX_CURSOR_LEN));
        assert_eq!(decode_cursor(&long, 5), Err(CursorError::TooLong));
        // The example of protocol 8.
        assert_eq!(
            decode_cursor("v1.eyJjaGF0OmxvYmJ5IjpbImU4ZjFjMiIsNDZdfQ", 1).unwrap(),
            vec![("chat:lobby".into(), "e8f1c2".into(), 46)]
        );
    }

    #[test]
    fn positions_of_publication_events() {
        let mut out = Vec::new();
        encode_event(
            &mut out,
            "message",
            None,
            br#"{"type":"message","room":"a\"b","epoch":"e1","offset":7,"data":1}"#,
        );
        assert_eq!(
            publication_position(&out),
            Some(("a\"b".into(), "e1".into(), 7))
        );
        let mut out = Vec::new();
        encode_event(
            &mut out,
            "message",
            None,
            br#"{"type":"message","room":"a","data":1}"#,
        );
        assert_eq!(publication_position(&out), None);
        assert_eq!(publication_position(KEEPALIVE), None);
    }

    #[test]
    fn publication_events_carry_their_room_cursor() {
        let payload =
            br#"{"type":"message","room":"chat:lobby","epoch":"e8f1c2","offset":46,"data":1}"#;
        let mut out = Vec::new();
        encode_publication_event(&mut out, payload);
        let text = String::from_utf8(out.clone()).unwrap();
        assert_eq!(
            text,
            format!(
                "data: {}\nid: v1.eyJjaGF0OmxvYmJ5IjpbImU4ZjFjMiIsNDZdfQ\n\n",
                std::str::from_utf8(payload).unwrap()
            )
        );
        let (room, epoch, offset) = publication_position_raw(&out).unwrap();
        assert!(room.matches("chat:lobby") && epoch.matches("e8f1c2") && offset == 46);
        assert_eq!(
            without_id(&out),
            format!("data: {}\n", std::str::from_utf8(payload).unwrap()).as_bytes()
        );
        // Ephemeral pushes have no position and no id line.
        let mut out = Vec::new();
        encode_publication_event(&mut out, br#"{"type":"message","room":"a","data":1}"#);
        assert_eq!(
            out,
            b"data: {\"type\":\"message\",\"room\":\"a\",\"data\":1}\n\n"
        );
        assert_eq!(without_id(&out), &out[..out.len() - 1]);
        assert!(RawStr(br#"a\"b"#).matches("a\"b"));
        assert!(!RawStr(b"ab").matches("a"));
    }
}
