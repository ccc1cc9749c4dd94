//! What the generator puts in messages and the few bytes it reads back, without a JSON parser.
//!
//! - Echo payloads start with the send time as 16 hex digits, then filler (`x`).
//! - Fan-out and rooms data is a JSON object `{"t":<send time ns>,"p":<publisher>,"s":<seq>,
//!   "x":"xxx…"}`: `x` pads it to the requested size. A receiver finds `"t":` with one
//!   substring search and reads the numbers after it.
//! - Server messages of the protocol are told apart by their first bytes: the server writes
//!   `type` first (`{"type":"message",…`).

use memchr::memmem;

/// Appends `v` in decimal.
pub(crate) fn put_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&tmp[i..]);
}

/// Reads a decimal number at the start of `b`: its value and length (0 when none).
pub(crate) fn get_u64(b: &[u8]) -> (u64, usize) {
    let mut v = 0u64;
    let mut n = 0;
    while n < b.len() && n < 20 && b[n].is_ascii_digit() {
        v = v.wrapping_mul(10).wrapping_add(u64::from(b[n] - b'0'));
        n += 1;
    }
    (v, n)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Writes `v` as 16 hex digits into `out[..16]`.
pub(crate) fn put_hex16(out: &mut [u8], v: u64) {
    for (i, b) in out[..16].iter_mut().enumerate() {
        *b = HEX[((v >> (60 - 4 * i)) & 0xf) as usize];
    }
}

/// Reads 16 hex digits at the start of `b` (`None` when there are not 16 of them).
pub(crate) fn get_hex16(b: &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for &c in b.get(..16)? {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        v = (v << 4) | u64::from(d);
    }
    Some(v)
}

/// The smallest echo payload: the timestamp.
pub(crate) const ECHO_MIN_SIZE: usize = 16;

/// An echo payload template of `size` bytes (the timestamp is written into its first 16).
pub(crate) fn echo_template(size: usize) -> Vec<u8> {
    vec![b'x'; size.max(ECHO_MIN_SIZE)]
}

/// Appends the data object `{"t":t,"p":p,"s":s,"x":"…"}`, padded with `x` to `size` bytes
/// when it is shorter.
pub(crate) fn put_data(out: &mut Vec<u8>, t: u64, p: u64, s: u64, size: usize) {
    let start = out.len();
    out.extend_from_slice(b"{\"t\":");
    put_u64(out, t);
    out.extend_from_slice(b",\"p\":");
    put_u64(out, p);
    out.extend_from_slice(b",\"s\":");
    put_u64(out, s);
    // `,"x":""}` is 8 bytes.
    let used = out.len() - start + 8;
    if size > used {
        out.extend_from_slice(b",\"x\":\"");
        out.resize(out.len() + (size - used), b'x');
        out.extend_from_slice(b"\"}");
    } else {
        out.push(b'}');
    }
}

/// Appends a membership probe of publisher `p`: `{"probe":p}` (no stamp, so never counted as
/// a delivery).
pub(crate) fn put_probe(out: &mut Vec<u8>, p: u64) {
    out.extend_from_slice(b"{\"probe\":");
    put_u64(out, p);
    out.push(b'}');
}

/// The publisher of a membership probe in `msg`, if it is one.
pub(crate) fn probe(msg: &[u8]) -> Option<u64> {
    let at = memmem::find(msg, b"{\"probe\":")? + 9;
    let (p, n) = get_u64(&msg[at..]);
    (n > 0).then_some(p)
}

/// The fields of a data object found in a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    /// Send time, ns since the run's time base.
    pub(crate) t: u64,
    /// Publisher index.
    pub(crate) p: u64,
    /// Sequence number within the publisher.
    pub(crate) s: u64,
}

/// Finds `"t":` in messages and reads the stamp after it.
#[derive(Debug)]
pub(crate) struct StampFinder {
    finder: memmem::Finder<'static>,
}

impl StampFinder {
    /// A finder (build one per connection task and reuse it).
    pub(crate) fn new() -> Self {
        StampFinder {
            finder: memmem::Finder::new(b"\"t\":"),
        }
    }

    /// The stamp of the data object in `msg`, when there is one.
    pub(crate) fn find(&self, msg: &[u8]) -> Option<Stamp> {
        let at = self.finder.find(msg)? + 4;
        let rest = &msg[at..];
        let (t, n) = get_u64(rest);
        if n == 0 {
            return None;
        }
        let rest = rest[n..].strip_prefix(b",\"p\":")?;
        let (p, n) = get_u64(rest);
        let rest = rest[n..].strip_prefix(b",\"s\":")?;
        let (s, m) = get_u64(rest);
        (n > 0 && m > 0).then_some(Stamp { t, p, s })
    }
}

/// A protocol message's kind, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A `message` push.
    Message,
    /// A `reply`, with its id when numeric.
    Reply(Option<u64>),
    /// An `error`, with its id when numeric.
    Error(Option<u64>),
    /// Anything else (`welcome`, `join`, `leave`, …).
    Other,
}

/// Classifies a protocol message by its prefix.
pub(crate) fn kind(msg: &[u8]) -> Kind {
    const TYPE: &[u8] = b"{\"type\":\"";
    let Some(rest) = msg.strip_prefix(TYPE) else {
        return Kind::Other;
    };
    let id = |r: &[u8]| {
        let r = r.strip_prefix(b",\"id\":")?;
        let (v, n) = get_u64(r);
        (n > 0).then_some(v)
    };
    if rest.starts_with(b"message\"") {
        Kind::Message
    } else if let Some(r) = rest.strip_prefix(b"reply\"") {
        Kind::Reply(id(r))
    } else if let Some(r) = rest.strip_prefix(b"error\"") {
        Kind::Error(id(r))
    } else {
        Kind::Other
    }
}

/// Appends `{"type":"subscribe","id":id,"room":"room"}` (room names need no escaping).
pub(crate) fn put_subscribe(out: &mut Vec<u8>, id: u64, room: &str) {
    put_command(out, b"subscribe", id, room);
}

/// Appends `{"type":"unsubscribe","id":id,"room":"room"}`.
pub(crate) fn put_unsubscribe(out: &mut Vec<u8>, id: u64, room: &str) {
    put_command(out, b"unsubscribe", id, room);
}

fn put_command(out: &mut Vec<u8>, kind: &[u8], id: u64, room: &str) {
    out.extend_from_slice(b"{\"type\":\"");
    out.extend_from_slice(kind);
    out.extend_from_slice(b"\",\"id\":");
    put_u64(out, id);
    out.extend_from_slice(b",\"room\":\"");
    out.extend_from_slice(room.as_bytes());
    out.extend_from_slice(b"\"}");
}

/// The fixed start of a `publish` command without id: `{"type":"publish","room":"…",
/// "echo":…,"data":` (the data object and a closing `}` follow).
pub(crate) fn publish_prefix(room: &str, echo: bool) -> Vec<u8> {
    format!("{{\"type\":\"publish\",\"room\":\"{room}\",\"echo\":{echo},\"data\":").into_bytes()
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_probe_is_found_and_is_no_stamp() {
        let mut b = b"42[\"m\",".to_vec();
        put_probe(&mut b, 7);
        b.push(b']');
        assert_eq!(probe(&b), Some(7));
        assert_eq!(StampFinder::new().find(&b), None);
        let mut d = Vec::new();
        put_data(&mut d, 1, 2, 3, 64);
        assert_eq!(probe(&d), None);
    }

    use super::*;

    #[test]
    fn numbers_round_trip() {
        for v in [0, 7, 10, 12345, u64::MAX] {
            let mut b = Vec::new();
            put_u64(&mut b, v);
            assert_eq!(b, v.to_string().as_bytes());
            assert_eq!(get_u64(&b), (v, b.len()));
            let mut h = [0u8; 16];
            put_hex16(&mut h, v);
            assert_eq!(get_hex16(&h), Some(v));
        }
        assert_eq!(get_u64(b"x1"), (0, 0));
        assert_eq!(get_hex16(b"0123"), None);
    }

    #[test]
    fn data_is_json_of_the_requested_size() {
        for size in [0, 10, 40, 64, 1000] {
            let mut b = Vec::new();
            put_data(&mut b, 123_456_789, 3, 42, size);
            let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
            assert_eq!(v["t"], 123_456_789);
            assert_eq!(v["p"], 3);
            assert_eq!(v["s"], 42);
            if size >= 40 {
                assert_eq!(b.len(), size);
            }
            let f = StampFinder::new();
            assert_eq!(
                f.find(&b),
                Some(Stamp {
                    t: 123_456_789,
                    p: 3,
                    s: 42
                })
            );
        }
    }

    #[test]
    fn stamps_are_found_inside_pushes() {
        let mut push =
            br#"{"type":"message","room":"bench:fanout","epoch":"e1","offset":9,"data":"#.to_vec();
        put_data(&mut push, 5, 0, 8, 64);
        push.extend_from_slice(br#","from":{"user":"bench-1","connection":"c_1"}}"#);
        assert_eq!(
            StampFinder::new().find(&push),
            Some(Stamp { t: 5, p: 0, s: 8 })
        );
        assert_eq!(StampFinder::new().find(b"{\"type\":\"welcome\"}"), None);
        assert_eq!(kind(&push), Kind::Message);
    }

    #[test]
    fn kinds_are_read_from_the_prefix() {
        assert_eq!(
            kind(br#"{"type":"reply","id":12,"result":{}}"#),
            Kind::Reply(Some(12))
        );
        assert_eq!(
            kind(br#"{"type":"error","id":null,"code":"x"}"#),
            Kind::Error(None)
        );
        assert_eq!(
            kind(br#"{"type":"error","id":3,"code":"x"}"#),
            Kind::Error(Some(3))
        );
        assert_eq!(kind(br#"{"type":"join","room":"a"}"#), Kind::Other);
        assert_eq!(kind(b"xyz"), Kind::Other);
        let mut b = Vec::new();
        put_subscribe(&mut b, 1, "bench:fanout");
        assert_eq!(b, br#"{"type":"subscribe","id":1,"room":"bench:fanout"}"#);
        let mut p = publish_prefix("r", false);
        put_data(&mut p, 1, 2, 3, 0);
        p.push(b'}');
        let v: serde_json::Value = serde_json::from_slice(&p).unwrap();
        assert_eq!(v["type"], "publish");
        assert_eq!(v["echo"], false);
    }
}
