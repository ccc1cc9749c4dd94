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
}
