//! permessage-deflate (RFC 7692): negotiation, and the compressor and decompressor behind
//! [`crate::codec`] and [`crate::prepared`].
//!
//! Memory policy: a zlib context costs hundreds of KiB, so by default the server negotiates
//! no context takeover in either direction and keeps no zlib state on an idle connection;
//! compressors and decompressors are borrowed from a per-thread pool for the duration of one
//! message. Context takeover is kept only where configured, and then the state lives with the
//! connection. With no server context takeover, a message compressed once can be sent to
//! every peer that negotiated the same `server_max_window_bits` (see [`crate::PreparedMessage`]).

use std::{borrow::Cow, fmt::Write as _};

use crate::HandshakeError;

pub(crate) mod pool;
pub(crate) mod stream;

/// The extension's name in `Sec-WebSocket-Extensions`.
const NAME: &str = "permessage-deflate";

/// What the server is willing to negotiate. Defaults: enabled, no context takeover either way,
/// window 15 bits, threshold 128 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeflateConfig {
    /// Accept permessage-deflate offers at all.
    pub enabled: bool,
    /// Keep the server's compression context between messages (costs memory per connection;
    /// disables sharing compressed bytes between recipients).
    pub server_context_takeover: bool,
    /// Let the client keep its compression context (the server then keeps an inflater per connection).
    pub client_context_takeover: bool,
    /// Largest LZ77 window the server compresses with (9..=15; 8 is treated as 9, as zlib does).
    pub server_max_window_bits: u8,
    /// Largest window the server accepts from the client (8..=15).
    pub client_max_window_bits: u8,
    /// Messages shorter than this are sent uncompressed.
    pub threshold: usize,
}

impl Default for DeflateConfig {
    fn default() -> Self {
        DeflateConfig {
            enabled: true,
            server_context_takeover: false,
            client_context_takeover: false,
            server_max_window_bits: 15,
            client_max_window_bits: 15,
            threshold: 128,
        }
    }
}

impl DeflateConfig {
    /// A config with permessage-deflate refused.
    pub fn disabled() -> Self {
        DeflateConfig {
            enabled: false,
            ..Self::default()
        }
    }
}

/// The parameters agreed for one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateParams {
    /// The server resets its compressor after every message.
    pub server_no_context_takeover: bool,
    /// The client resets its compressor after every message.
    pub client_no_context_takeover: bool,
    /// Window the server compresses with.
    pub server_max_window_bits: u8,
    /// Window the client compresses with.
    pub client_max_window_bits: u8,
}

/// Server side: chooses a response to the client's `Sec-WebSocket-Extensions` header values
/// (every value, in order). `Ok(None)`: no acceptable permessage-deflate offer (or disabled);
/// `Ok(Some((params, header)))`: the agreed parameters and the response header value. A
/// syntactically malformed header is an error (400); an offer with parameters we cannot
/// accept is skipped and the next offer tried, as RFC 7692 section 5 says.
pub fn negotiate<'a>(
    offers: impl IntoIterator<Item = &'a str>,
    config: &DeflateConfig,
) -> Result<Option<(DeflateParams, String)>, crate::HandshakeError> {
    if !config.enabled {
        return Ok(None);
    }
    // Parse every value first, so that a malformed header is refused wherever it stands.
    let mut extensions = Vec::new();
    for value in offers {
        extensions.extend(parse_extensions(value)?);
    }
    Ok(extensions
        .iter()
        .filter(|ext| ext.name.eq_ignore_ascii_case(NAME))
        .find_map(|ext| accept(&Offer::parse(&ext.params).ok()?, config)))
}

/// The response to one valid offer, or `None` when `config` cannot agree to it.
fn accept(offer: &Offer, config: &DeflateConfig) -> Option<(DeflateParams, String)> {
    let server_limit = config.server_max_window_bits.clamp(8, 15);
    let client_limit = config.client_max_window_bits.clamp(8, 15);
    let server_no_context_takeover =
        offer.server_no_context_takeover || !config.server_context_takeover;
    let client_no_context_takeover =
        offer.client_no_context_takeover || !config.client_context_takeover;
    // An offered server_max_window_bits must be answered (7.1.2.1); without one, a smaller
    // window of ours may still be announced.
    let server_bits = match offer.server_max_window_bits {
        Some(bits) => Some(bits.min(server_limit)),
        None => (server_limit < 15).then_some(server_limit),
    };
    // Without client_max_window_bits in the offer the client may use 15 bits and we may not
    // ask for less (7.1.2.2), so a smaller limit of ours makes this offer unacceptable.
    let client_bits = match offer.client_max_window_bits {
        Some(bits) => bits.unwrap_or(15).min(client_limit),
        None if client_limit < 15 => return None,
        None => 15,
    };
    let mut header = String::from(NAME);
    if server_no_context_takeover {
        header.push_str("; server_no_context_takeover");
    }
    if client_no_context_takeover {
        header.push_str("; client_no_context_takeover");
    }
    if let Some(bits) = server_bits {
        let _ = write!(header, "; server_max_window_bits={bits}");
    }
    if client_bits < 15 {
        let _ = write!(header, "; client_max_window_bits={client_bits}");
    }
    let params = DeflateParams {
        server_no_context_takeover,
        client_no_context_takeover,
        server_max_window_bits: server_bits.unwrap_or(15),
        client_max_window_bits: client_bits,
    };
    Some((params, header))
}

/// Client side: the offer to send (`permessage-deflate; client_max_window_bits`).
pub fn client_offer() -> &'static str {
    "permessage-deflate; client_max_window_bits"
}

/// Client side: parses the server's response header value into agreed parameters;
/// `Ok(None)` when the server did not accept permessage-deflate.
pub fn parse_response(value: &str) -> Result<Option<DeflateParams>, crate::HandshakeError> {
    let extensions = parse_extensions(value)?;
    let [ext] = extensions.as_slice() else {
        return match extensions.len() {
            0 => Ok(None),
            n => Err(HandshakeError::Extensions(format!(
                "{n} extensions in the response to one offer"
            ))),
        };
    };
    if !ext.name.eq_ignore_ascii_case(NAME) {
        return Err(HandshakeError::Extensions(format!(
            "extension {:?} was not offered",
            ext.name
        )));
    }
    let offer = Offer::parse(&ext.params).map_err(HandshakeError::Extensions)?;
    // The response must give client_max_window_bits a value (7.1.2.2).
    let client_max_window_bits = match offer.client_max_window_bits {
        Some(None) => {
            return Err(HandshakeError::Extensions(
                "client_max_window_bits without a value".into(),
            ));
        }
        Some(Some(bits)) => bits,
        None => 15,
    };
    Ok(Some(DeflateParams {
        server_no_context_takeover: offer.server_no_context_takeover,
        client_no_context_takeover: offer.client_no_context_takeover,
        server_max_window_bits: offer.server_max_window_bits.unwrap_or(15),
        client_max_window_bits,
    }))
}

/// The parameters of one permessage-deflate offer or response, validated (RFC 7692 7.1).
#[derive(Debug, Default)]
struct Offer {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    /// `Some(None)`: the parameter without a value.
    client_max_window_bits: Option<Option<u8>>,
}

impl Offer {
    /// Fails on an unknown or repeated parameter and on a value the RFC does not allow.
    fn parse(params: &[Param<'_>]) -> Result<Offer, String> {
        let mut offer = Offer::default();
        for Param { name, value } in params {
            let name = name.to_ascii_lowercase();
            let value = value.as_deref();
            let fresh = match name.as_str() {
                "server_no_context_takeover" | "client_no_context_takeover" => {
                    if value.is_some() {
                        return Err(format!("{name} takes no value"));
                    }
                    let flag = if name.starts_with("server") {
                        &mut offer.server_no_context_takeover
                    } else {
                        &mut offer.client_no_context_takeover
                    };
                    !std::mem::replace(flag, true)
                }
                "server_max_window_bits" => {
                    let bits = window_bits(value.ok_or("server_max_window_bits needs a value")?)?;
                    offer.server_max_window_bits.replace(bits).is_none()
                }
                "client_max_window_bits" => {
                    let bits = value.map(window_bits).transpose()?;
                    offer.client_max_window_bits.replace(bits).is_none()
                }
                _ => return Err(format!("unknown parameter {name}")),
            };
            if !fresh {
                return Err(format!("repeated parameter {name}"));
            }
        }
        Ok(offer)
    }
}

/// A window size: exactly `8` to `15`, no sign, no leading zero (RFC 7692 7.1.2.1).
fn window_bits(value: &str) -> Result<u8, String> {
    match value.parse::<u8>() {
        Ok(bits @ 8..=15) if !value.starts_with(['0', '+']) => Ok(bits),
        _ => Err(format!("invalid window bits {value:?}")),
    }
}

/// One element of a `Sec-WebSocket-Extensions` list.
#[derive(Debug, PartialEq, Eq)]
struct Extension<'a> {
    name: &'a str,
    params: Vec<Param<'a>>,
}

/// `name` or `name=value`; a quoted-string value is unescaped.
#[derive(Debug, PartialEq, Eq)]
struct Param<'a> {
    name: &'a str,
    value: Option<Cow<'a, str>>,
}

/// Parses a header value per RFC 6455 9.1:
/// `1#( token *( OWS ";" OWS token [ "=" ( token / quoted-string ) ] ) )`, with optional
/// whitespace around separators and empty list elements allowed (RFC 9110 5.6.1).
fn parse_extensions(value: &str) -> Result<Vec<Extension<'_>>, HandshakeError> {
    let mut lexer = Lexer { s: value, pos: 0 };
    let mut list = Vec::new();
    loop {
        lexer.skip_ows();
        match lexer.peek() {
            None => return Ok(list),
            Some(b',') => {
                lexer.pos += 1;
                continue;
            }
            _ => {}
        }
        let name = lexer.token()?;
        let mut params = Vec::new();
        loop {
            lexer.skip_ows();
            match lexer.peek() {
                None => break,
                Some(b',') => {
                    lexer.pos += 1;
                    break;
                }
                Some(b';') => {
                    lexer.pos += 1;
                    lexer.skip_ows();
                    let name = lexer.token()?;
                    lexer.skip_ows();
                    let value = if lexer.peek() == Some(b'=') {
                        lexer.pos += 1;
                        lexer.skip_ows();
                        Some(if lexer.peek() == Some(b'"') {
                            lexer.quoted()?
                        } else {
                            Cow::Borrowed(lexer.token()?)
                        })
                    } else {
                        None
                    };
                    params.push(Param { name, value });
                }
                Some(_) => return Err(lexer.error("expected ';' or ','")),
            }
        }
        list.push(Extension { name, params });
    }
}

struct Lexer<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Lexer<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.as_bytes().get(self.pos).copied()
    }

    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    fn error(&self, what: &str) -> HandshakeError {
        HandshakeError::Extensions(format!("{what} at byte {} of {:?}", self.pos, self.s))
    }

    /// `1*tchar` (RFC 9110 5.6.2).
    fn token(&mut self) -> Result<&'a str, HandshakeError> {
        let start = self.pos;
        while self
            .peek()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        {
            self.pos += 1;
        }
        if self.pos == start {
            return Err(self.error("expected a token"));
        }
        // Tokens are ASCII, so these are character boundaries.
        Ok(&self.s[start..self.pos])
    }

    /// A quoted-string (RFC 9110 5.6.4), unescaped; `pos` is at the opening quote.
    fn quoted(&mut self) -> Result<Cow<'a, str>, HandshakeError> {
        let rest = &self.s[self.pos + 1..];
        // Allocated only once an escape shows up.
        let mut unescaped: Option<String> = None;
        let mut chars = rest.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.pos += i + 2;
                    return Ok(unescaped.map_or(Cow::Borrowed(&rest[..i]), Cow::Owned));
                }
                '\\' => {
                    let Some((_, escaped)) = chars.next() else {
                        break;
                    };
                    unescaped
                        .get_or_insert_with(|| rest[..i].to_owned())
                        .push(escaped);
                }
                c if c.is_ascii_control() && c != '\t' => {
                    return Err(self.error("control character in quoted-string"));
                }
                c => {
                    if let Some(copy) = &mut unescaped {
                        copy.push(c);
                    }
                }
            }
        }
        Err(self.error("unterminated quoted-string"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(snct: bool, cnct: bool, sbits: u8, cbits: u8) -> DeflateParams {
        DeflateParams {
            server_no_context_takeover: snct,
            client_no_context_takeover: cnct,
            server_max_window_bits: sbits,
            client_max_window_bits: cbits,
        }
    }

    /// Context takeover allowed both ways: the response only echoes what the offer demands.
    fn permissive() -> DeflateConfig {
        DeflateConfig {
            server_context_takeover: true,
            client_context_takeover: true,
            ..DeflateConfig::default()
        }
    }

    fn negotiated(offers: &[&str], config: &DeflateConfig) -> Option<(DeflateParams, String)> {
        negotiate(offers.iter().copied(), config).unwrap()
    }

    #[test]
    fn default_config_disables_context_takeover_both_ways() {
        let (p, header) = negotiated(
            &["permessage-deflate; client_max_window_bits"],
            &DeflateConfig::default(),
        )
        .unwrap();
        assert_eq!(p, params(true, true, 15, 15));
        assert_eq!(
            header,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        // A browser's offer.
        let (p, _) = negotiated(&["permessage-deflate"], &DeflateConfig::default()).unwrap();
        assert_eq!(p, params(true, true, 15, 15));
    }

    #[test]
    fn offered_parameters_are_honoured() {
        let (p, header) = negotiated(&["permessage-deflate"], &permissive()).unwrap();
        assert_eq!(
            (p, header.as_str()),
            (params(false, false, 15, 15), "permessage-deflate")
        );

        let offer = "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
                     server_max_window_bits=10; client_max_window_bits=12";
        let (p, header) = negotiated(&[offer], &permissive()).unwrap();
        assert_eq!(p, params(true, true, 10, 12));
        assert_eq!(
            header,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
             server_max_window_bits=10; client_max_window_bits=12"
        );
        // An offered server_max_window_bits is always answered, even at 15.
        let (p, header) = negotiated(
            &["permessage-deflate; server_max_window_bits=15"],
            &permissive(),
        )
        .unwrap();
        assert_eq!(p, params(false, false, 15, 15));
        assert_eq!(header, "permessage-deflate; server_max_window_bits=15");
    }

    #[test]
    fn config_limits_windows() {
        let config = DeflateConfig {
            server_max_window_bits: 11,
            client_max_window_bits: 10,
            ..permissive()
        };
        // Both sides smaller than offered, or than the default of 15.
        let (p, header) =
            negotiated(&["permessage-deflate; client_max_window_bits"], &config).unwrap();
        assert_eq!(p, params(false, false, 11, 10));
        assert_eq!(
            header,
            "permessage-deflate; server_max_window_bits=11; client_max_window_bits=10"
        );
        let (p, _) = negotiated(
            &["permessage-deflate; server_max_window_bits=9; client_max_window_bits=8"],
            &config,
        )
        .unwrap();
        assert_eq!(p, params(false, false, 9, 8));
        // Without client_max_window_bits the client may use 15 bits: offer declined.
        assert_eq!(negotiated(&["permessage-deflate"], &config), None);
    }

    #[test]
    fn invalid_offers_are_skipped() {
        for offer in [
            "permessage-deflate; unknown_param",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; client_max_window_bits; client_max_window_bits=9",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; client_max_window_bits=+9",
            "permessage-deflate; client_max_window_bits=abc",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_no_context_takeover=\"\"",
            "x-webkit-deflate-frame",
        ] {
            assert_eq!(negotiated(&[offer], &permissive()), None, "{offer}");
            // The next valid offer is taken instead.
            let (p, _) = negotiated(
                &[offer, "permessage-deflate; client_no_context_takeover"],
                &permissive(),
            )
            .unwrap();
            assert_eq!(p, params(false, true, 15, 15), "{offer}");
        }
    }

    #[test]
    fn several_offers_in_one_header() {
        let header = "foo; bar=1, permessage-deflate; server_max_window_bits=8, permessage-deflate";
        let (p, response) = negotiated(&[header], &permissive()).unwrap();
        assert_eq!(p, params(false, false, 8, 15));
        assert_eq!(response, "permessage-deflate; server_max_window_bits=8");
        // The first offer is invalid, the second taken.
        let header = "permessage-deflate; server_max_window_bits=20, permessage-deflate; client_max_window_bits";
        assert_eq!(
            negotiated(&[header], &permissive()).unwrap().0,
            params(false, false, 15, 15)
        );
    }

    #[test]
    fn quoted_values() {
        let offer =
            "permessage-deflate; server_max_window_bits=\"10\"; client_max_window_bits = \"1\\1\"";
        let (p, _) = negotiated(&[offer], &permissive()).unwrap();
        assert_eq!(p, params(false, false, 10, 11));
        let list = parse_extensions("a; b=\"x, y; \\\"z\\\"\", c").unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].params[0].value.as_deref(), Some("x, y; \"z\""));
        assert_eq!(list[1].name, "c");
    }

    #[test]
    fn malformed_headers_are_errors() {
        for header in [
            "permessage-deflate; ",
            "permessage-deflate;; server_no_context_takeover",
            "permessage-deflate server_no_context_takeover",
            "permessage-deflate; a=",
            "permessage-deflate; a=\"unterminated",
            "permessage-deflate; a=\"\\",
            "permessage-deflate; a=b c",
            "perm(essage",
            "=x",
        ] {
            assert!(
                matches!(
                    negotiate([header], &permissive()),
                    Err(HandshakeError::Extensions(_))
                ),
                "{header}"
            );
        }
        // A malformed later header is refused even after a good offer.
        assert!(negotiate(["permessage-deflate", ";"], &permissive()).is_err());
        // Empty list elements and whitespace are fine.
        assert!(negotiated(&[" , permessage-deflate ,, ", ""], &permissive()).is_some());
    }

    #[test]
    fn disabled_or_absent() {
        assert_eq!(
            negotiated(&["permessage-deflate"], &DeflateConfig::disabled()),
            None
        );
        assert_eq!(negotiated(&[], &permissive()), None);
        assert_eq!(negotiated(&["foo, bar; baz"], &permissive()), None);
    }

    #[test]
    fn client_parses_server_responses() {
        assert_eq!(parse_response(""), Ok(None));
        assert_eq!(
            parse_response("permessage-deflate"),
            Ok(Some(params(false, false, 15, 15)))
        );
        assert_eq!(
            parse_response(
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
                 server_max_window_bits=9; client_max_window_bits=10"
            ),
            Ok(Some(params(true, true, 9, 10)))
        );
        for bad in [
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; mystery",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate, permessage-deflate",
            "x-other",
            "permessage-deflate;",
        ] {
            assert!(
                matches!(parse_response(bad), Err(HandshakeError::Extensions(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn negotiation_round_trips_through_the_client() {
        for config in [DeflateConfig::default(), permissive()] {
            let (server_side, header) = negotiated(&[client_offer()], &config).unwrap();
            assert_eq!(parse_response(&header), Ok(Some(server_side)));
        }
    }
}
