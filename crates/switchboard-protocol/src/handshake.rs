//! The opening handshake (RFC 6455 section 4): validating a client's upgrade request, the
//! accept key, subprotocol selection per docs/protocol.md 1 and 2.1, and the client's request
//! and response checks.

use base64::{Engine as _, engine::general_purpose::STANDARD as BASE64};
use http::{HeaderMap, HeaderValue, header};
use sha1::{Digest, Sha1};

use crate::{deflate, error::HandshakeError};

/// The GUID of RFC 6455 section 1.3.
pub const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
pub fn accept_key(key: &[u8]) -> String {
    let mut sha1 = Sha1::new();
    sha1.update(key);
    sha1.update(GUID.as_bytes());
    BASE64.encode(sha1.finalize())
}

/// What a valid upgrade request asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeRequest {
    /// The `Sec-WebSocket-Accept` value to answer with.
    pub accept: String,
    /// Every offered subprotocol in order (comma-separated values of every
    /// `Sec-WebSocket-Protocol` header, trimmed).
    pub protocols: Vec<String>,
    /// Every `Sec-WebSocket-Extensions` header value, in order.
    pub extensions: Vec<String>,
}

/// Validates a server-side upgrade request: GET, `Upgrade: websocket`, `Connection` containing
/// `upgrade` (case-insensitive tokens), `Sec-WebSocket-Version: 13`, a key that is 16 bytes
/// of base64.
pub fn validate_request(
    method: &http::Method,
    headers: &http::HeaderMap,
) -> Result<UpgradeRequest, HandshakeError> {
    if method != http::Method::GET {
        return Err(HandshakeError::Method);
    }
    if !has_token(headers.get_all(header::UPGRADE), "websocket") {
        return Err(HandshakeError::NoUpgrade);
    }
    if !has_token(headers.get_all(header::CONNECTION), "upgrade") {
        return Err(HandshakeError::NoConnectionUpgrade);
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes().trim_ascii() != b"13")
    {
        return Err(HandshakeError::Version);
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|v| v.as_bytes().trim_ascii())
        .ok_or(HandshakeError::Key)?;
    // 16 bytes are 24 base64 characters; the buffer fits what `decode_slice` may need for them.
    let mut decoded = [0; 18];
    if key.len() != 24 || BASE64.decode_slice(key, &mut decoded) != Ok(16) {
        return Err(HandshakeError::Key);
    }
    let mut protocols = Vec::new();
    for value in headers.get_all(header::SEC_WEBSOCKET_PROTOCOL) {
        let value = value
            .to_str()
            .map_err(|_| HandshakeError::Http("non-ASCII Sec-WebSocket-Protocol".into()))?;
        protocols.extend(
            value
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_owned),
        );
    }
    let extensions = headers
        .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .map(|v| v.to_str().map(str::to_owned))
        .collect::<Result<_, _>>()
        .map_err(|_| HandshakeError::Extensions("non-ASCII header value".into()))?;
    Ok(UpgradeRequest {
        accept: accept_key(key),
        protocols,
        extensions,
    })
}

/// Whether some header value holds `token` in its comma-separated list (case-insensitive).
fn has_token<'a>(values: impl IntoIterator<Item = &'a HeaderValue>, token: &str) -> bool {
    values.into_iter().any(|value| {
        value
            .as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// Picks the subprotocol to answer with. Entries starting with `bearer.` are tokens, never
/// selected nor counted (docs/protocol.md 2.1). No counted offers: `Ok(None)` (serve the default
/// version). Counted offers of which none is in `supported`: [`HandshakeError::Subprotocol`].
///
/// The client's order of preference decides among supported offers.
pub fn select_subprotocol<'a>(
    offered: &[String],
    supported: &[&'a str],
) -> Result<Option<&'a str>, HandshakeError> {
    let mut counted = offered
        .iter()
        .filter(|p| !p.starts_with("bearer."))
        .peekable();
    if counted.peek().is_none() {
        return Ok(None);
    }
    counted
        .find_map(|p| supported.iter().find(|s| **s == p.as_str()).copied())
        .map(Some)
        .ok_or(HandshakeError::Subprotocol)
}

/// The `bearer.<jwt>` entry among offered subprotocols, if any (docs/protocol.md 2.1).
pub fn bearer_token(offered: &[String]) -> Option<&str> {
    offered.iter().find_map(|p| p.strip_prefix("bearer."))
}

/// Most headers accepted in a handshake request or response.
const MAX_HEADERS: usize = 64;

/// Parses a raw HTTP/1.1 request head (used for the fuzz target and by raw-socket servers).
/// `Ok(None)` when the head is incomplete; otherwise the request and the head's length.
pub fn parse_request(buf: &[u8]) -> Result<Option<(http::Request<()>, usize)>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf).map_err(http_error)? {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => return Ok(None),
    };
    // A complete parse has every part; the `unwrap_or_default`s are never taken.
    let mut request = http::Request::builder()
        .method(req.method.unwrap_or_default())
        .uri(req.path.unwrap_or_default())
        .version(match req.version {
            Some(0) => http::Version::HTTP_10,
            _ => http::Version::HTTP_11,
        });
    let map = request
        .headers_mut()
        .ok_or_else(|| HandshakeError::Http("invalid request line".into()))?;
    collect_headers(req.headers, map)?;
    let request = request.body(()).map_err(http_error)?;
    Ok(Some((request, len)))
}

fn collect_headers(
    parsed: &[httparse::Header<'_>],
    map: &mut HeaderMap,
) -> Result<(), HandshakeError> {
    map.reserve(parsed.len());
    for h in parsed {
        let name = header::HeaderName::from_bytes(h.name.as_bytes()).map_err(http_error)?;
        let value = HeaderValue::from_bytes(h.value).map_err(http_error)?;
        map.append(name, value);
    }
    Ok(())
}

fn http_error(e: impl std::fmt::Display) -> HandshakeError {
    HandshakeError::Http(e.to_string())
}

/// A client's handshake in progress: the request bytes to send and what to check in the answer.
#[derive(Debug, Clone)]
pub struct ClientHandshake {
    /// The request head to write to the socket.
    pub request: Vec<u8>,
    key: String,
    protocols: Vec<String>,
    deflate: bool,
}

/// What the server agreed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAccepted {
    /// The selected subprotocol.
    pub protocol: Option<String>,
    /// The agreed permessage-deflate parameters.
    pub deflate: Option<crate::deflate::DeflateParams>,
}

impl ClientHandshake {
    /// Builds a request for `host` (with port) and `path_and_query`, offering `protocols`,
    /// permessage-deflate when `deflate` is set, and extra headers (e.g. Authorization).
    /// Header names and values must not contain CR or LF.
    pub fn new(
        host: &str,
        path_and_query: &str,
        protocols: &[&str],
        deflate: bool,
        extra_headers: &[(&str, &str)],
    ) -> Self {
        let key = BASE64.encode(rand::random::<[u8; 16]>());
        let path = if path_and_query.is_empty() {
            "/"
        } else {
            path_and_query
        };
        let mut request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        );
        if !protocols.is_empty() {
            request.push_str(&format!(
                "Sec-WebSocket-Protocol: {}\r\n",
                protocols.join(", ")
            ));
        }
        if deflate {
            request.push_str(&format!(
                "Sec-WebSocket-Extensions: {}\r\n",
                deflate::client_offer()
            ));
        }
        for (name, value) in extra_headers {
            debug_assert!(
                !format!("{name}{value}").contains(['\r', '\n']),
                "header injection"
            );
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        ClientHandshake {
            request: request.into_bytes(),
            key,
            protocols: protocols.iter().map(|p| (*p).to_owned()).collect(),
            deflate,
        }
    }

    /// Parses the server's response head from `buf`. `Ok(None)`: incomplete. Otherwise what was
    /// agreed and the head's length; a non-101 status is [`HandshakeError::Refused`] with the
    /// status and body start, a wrong accept key or extension is an error.
    pub fn parse_response(
        &self,
        buf: &[u8],
    ) -> Result<Option<(ClientAccepted, usize)>, HandshakeError> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut res = httparse::Response::new(&mut headers);
        let len = match res.parse(buf).map_err(http_error)? {
            httparse::Status::Complete(len) => len,
            httparse::Status::Partial => return Ok(None),
        };
        let status = res.code.unwrap_or_default();
        if status != 101 {
            let body = String::from_utf8_lossy(&buf[len..buf.len().min(len + 200)]);
            let reason = res.reason.unwrap_or_default().trim();
            let message = [reason, &body]
                .into_iter()
                .filter(|part| !part.is_empty())
                .collect::<Vec<_>>()
                .join(": ");
            return Err(HandshakeError::Refused { status, message });
        }
        let mut map = HeaderMap::new();
        collect_headers(res.headers, &mut map)?;
        if !has_token(map.get_all(header::UPGRADE), "websocket") {
            return Err(HandshakeError::NoUpgrade);
        }
        if !has_token(map.get_all(header::CONNECTION), "upgrade") {
            return Err(HandshakeError::NoConnectionUpgrade);
        }
        let accept = map
            .get(header::SEC_WEBSOCKET_ACCEPT)
            .map(|v| v.as_bytes().trim_ascii());
        if accept != Some(accept_key(self.key.as_bytes()).as_bytes()) {
            return Err(HandshakeError::AcceptKey);
        }
        let protocol = match map.get(header::SEC_WEBSOCKET_PROTOCOL) {
            None => None,
            Some(value) => {
                let value = value.to_str().map(str::trim).ok();
                match value.filter(|v| self.protocols.iter().any(|p| p == v)) {
                    Some(v) => Some(v.to_owned()),
                    None => return Err(HandshakeError::Subprotocol),
                }
            }
        };
        let mut extensions = Vec::new();
        for value in map.get_all(header::SEC_WEBSOCKET_EXTENSIONS) {
            let value = value
                .to_str()
                .map_err(|_| HandshakeError::Extensions("non-ASCII header value".into()))?;
            extensions.push(value);
        }
        let deflate = match extensions.join(", ") {
            all if all.trim().is_empty() => None,
            _ if !self.deflate => {
                return Err(HandshakeError::Extensions(
                    "no extension was offered".into(),
                ));
            }
            all => deflate::parse_response(&all)?,
        };
        Ok(Some((ClientAccepted { protocol, deflate }, len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn request(extra: &str) -> String {
        format!(
            "GET /ws?token=x HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n\
             Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: {KEY}\r\n\
             Sec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
    }

    fn validate(raw: &str) -> Result<UpgradeRequest, HandshakeError> {
        let (req, _) = parse_request(raw.as_bytes())?.expect("complete head");
        validate_request(req.method(), req.headers())
    }

    #[test]
    fn rfc6455_accept_key() {
        // RFC 6455 sections 1.3 and 4.2.2.
        assert_eq!(accept_key(KEY.as_bytes()), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn valid_request() {
        let raw = request(
            "Sec-WebSocket-Protocol: bearer.abc, switchboard.v1\r\nSec-WebSocket-Protocol: other\r\n\
             Sec-WebSocket-Extensions: permessage-deflate\r\nSec-WebSocket-Extensions: foo\r\n",
        );
        let (req, len) = parse_request(raw.as_bytes()).unwrap().unwrap();
        assert_eq!(len, raw.len());
        assert_eq!(req.uri().path(), "/ws");
        assert_eq!(req.uri().query(), Some("token=x"));
        let upgrade = validate_request(req.method(), req.headers()).unwrap();
        assert_eq!(upgrade.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(upgrade.protocols, ["bearer.abc", "switchboard.v1", "other"]);
        assert_eq!(upgrade.extensions, ["permessage-deflate", "foo"]);
    }

    #[test]
    fn header_tokens_are_case_insensitive() {
        let raw = format!(
            "GET / HTTP/1.1\r\nHost: h\r\nupgrade: WebSocket\r\nCONNECTION: close\r\nConnection: UPGRADE\r\n\
             Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        assert!(validate(&raw).is_ok());
    }

    #[test]
    fn invalid_requests() {
        let cases: &[(&str, HandshakeError)] = &[
            (
                "POST / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
                HandshakeError::Method,
            ),
            (
                "GET / HTTP/1.1\r\nConnection: upgrade\r\n\r\n",
                HandshakeError::NoUpgrade,
            ),
            (
                "GET / HTTP/1.1\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n",
                HandshakeError::NoUpgrade,
            ),
            (
                "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: keep-alive\r\n\r\n",
                HandshakeError::NoConnectionUpgrade,
            ),
            (
                "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgraded\r\n\r\n",
                HandshakeError::NoConnectionUpgrade,
            ),
            (
                "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
                HandshakeError::Version,
            ),
            (
                "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Version: 8\r\n\r\n",
                HandshakeError::Version,
            ),
            (
                "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n",
                HandshakeError::Key,
            ),
            (
                "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Version: 13\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZQ==\r\n\r\n",
                HandshakeError::Key,
            ),
            (
                "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Version: 13\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=!\r\n\r\n",
                HandshakeError::Key,
            ),
        ];
        for (raw, expected) in cases {
            assert_eq!(validate(raw).as_ref(), Err(expected), "{raw}");
        }
        assert_eq!(HandshakeError::Version.status(), 426);
    }

    #[test]
    fn parse_request_partial_and_errors() {
        let raw = request("");
        for end in 0..raw.len() {
            assert!(
                matches!(parse_request(&raw.as_bytes()[..end]), Ok(None)),
                "{end}"
            );
        }
        assert!(matches!(
            parse_request(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"),
            Err(HandshakeError::Http(_))
        ));
        assert!(matches!(
            parse_request(b"\x01\x02 / HTTP/1.1\r\n\r\n"),
            Err(HandshakeError::Http(_))
        ));
        let many: String = (0..65).map(|i| format!("X-{i}: v\r\n")).collect();
        assert!(matches!(
            parse_request(request(&many).as_bytes()),
            Err(HandshakeError::Http(_))
        ));
    }

    #[test]
    fn subprotocols() {
        let offered = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let supported = ["switchboard.v1", "switchboard.v2"];
        assert_eq!(select_subprotocol(&offered(&[]), &supported), Ok(None));
        assert_eq!(
            select_subprotocol(&offered(&["bearer.x"]), &supported),
            Ok(None)
        );
        assert_eq!(
            select_subprotocol(
                &offered(&["bearer.x", "chat", "switchboard.v2", "switchboard.v1"]),
                &supported
            ),
            Ok(Some("switchboard.v2"))
        );
        assert_eq!(
            select_subprotocol(&offered(&["bearer.x", "chat"]), &supported),
            Err(HandshakeError::Subprotocol)
        );
        assert_eq!(bearer_token(&offered(&["a", "bearer.tok"])), Some("tok"));
    }

    /// The server's answer to `client`, built with this module's server side.
    fn answer(client: &ClientHandshake, extra: &str) -> String {
        let (req, _) = parse_request(&client.request).unwrap().unwrap();
        let upgrade = validate_request(req.method(), req.headers()).unwrap();
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n{extra}\r\n",
            upgrade.accept
        )
    }

    #[test]
    fn client_handshake() {
        let client = ClientHandshake::new(
            "example.com:8080",
            "/ws?x=1",
            &["switchboard.v1", "bearer.t"],
            true,
            &[("Authorization", "Bearer t")],
        );
        let (req, _) = parse_request(&client.request).unwrap().unwrap();
        assert_eq!(req.uri(), "/ws?x=1");
        assert_eq!(req.headers()["host"], "example.com:8080");
        assert_eq!(req.headers()["authorization"], "Bearer t");
        assert_eq!(
            req.headers()["sec-websocket-protocol"],
            "switchboard.v1, bearer.t"
        );
        let upgrade = validate_request(req.method(), req.headers()).unwrap();
        let config = deflate::DeflateConfig::default();
        let (params, ext) =
            deflate::negotiate(upgrade.extensions.iter().map(String::as_str), &config)
                .unwrap()
                .unwrap();

        let response = answer(
            &client,
            &format!(
                "Sec-WebSocket-Protocol: switchboard.v1\r\nSec-WebSocket-Extensions: {ext}\r\n"
            ),
        );
        let with_frame = format!("{response}\u{81}");
        let (accepted, len) = client
            .parse_response(with_frame.as_bytes())
            .unwrap()
            .unwrap();
        assert_eq!(len, response.len());
        assert_eq!(accepted.protocol.as_deref(), Some("switchboard.v1"));
        assert_eq!(accepted.deflate, Some(params));
        for end in 0..response.len() {
            assert_eq!(client.parse_response(&response.as_bytes()[..end]), Ok(None));
        }

        // Nothing agreed is fine too.
        let (accepted, _) = client
            .parse_response(answer(&client, "").as_bytes())
            .unwrap()
            .unwrap();
        assert_eq!(
            accepted,
            ClientAccepted {
                protocol: None,
                deflate: None
            }
        );
        // Two handshakes use different keys.
        assert_ne!(
            client.key,
            ClientHandshake::new("h", "", &[], false, &[]).key
        );
    }

    #[test]
    fn client_rejects_bad_responses() {
        let client = ClientHandshake::new("h", "/", &["switchboard.v1"], false, &[]);
        let refused =
            "HTTP/1.1 401 Unauthorized\r\nContent-Length: 24\r\n\r\n{\"error\":\"unauthorized\"}";
        assert_eq!(
            client.parse_response(refused.as_bytes()),
            Err(HandshakeError::Refused {
                status: 401,
                message: "Unauthorized: {\"error\":\"unauthorized\"}".into()
            })
        );
        let long = format!("HTTP/1.1 503 Busy\r\n\r\n{}", "x".repeat(500));
        let Err(HandshakeError::Refused { status, message }) =
            client.parse_response(long.as_bytes())
        else {
            panic!("expected a refusal");
        };
        assert_eq!((status, message.len()), (503, "Busy: ".len() + 200));
        let bare = client.parse_response(b"HTTP/1.1 429 \r\n\r\n").unwrap_err();
        assert_eq!(bare.to_string(), "server refused the upgrade: 429");

        let wrong_key = "HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\
                         Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        assert_eq!(
            client.parse_response(wrong_key.as_bytes()),
            Err(HandshakeError::AcceptKey)
        );
        let no_upgrade = "HTTP/1.1 101 OK\r\nConnection: upgrade\r\n\r\n";
        assert_eq!(
            client.parse_response(no_upgrade.as_bytes()),
            Err(HandshakeError::NoUpgrade)
        );
        let other_protocol = answer(&client, "Sec-WebSocket-Protocol: chat\r\n");
        assert_eq!(
            client.parse_response(other_protocol.as_bytes()),
            Err(HandshakeError::Subprotocol)
        );
        // An extension that was not offered.
        let unoffered = answer(&client, "Sec-WebSocket-Extensions: permessage-deflate\r\n");
        assert!(matches!(
            client.parse_response(unoffered.as_bytes()),
            Err(HandshakeError::Extensions(_))
        ));
        assert!(matches!(
            client.parse_response(b"HTTP/1.1 abc\r\n\r\n"),
            Err(HandshakeError::Http(_))
        ));
    }
}
