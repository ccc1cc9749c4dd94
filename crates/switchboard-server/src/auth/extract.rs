//! Finding the token on a request, in the order of protocol 2.1 ([`find_token`]).

use std::borrow::Cow;

use http::HeaderMap;
use http::header::{AUTHORIZATION, COOKIE};

use super::config::AuthConfig;

/// The prefix of the `Sec-WebSocket-Protocol` entry that carries a token: `bearer.<jwt>`.
pub const BEARER_PROTOCOL_PREFIX: &str = "bearer.";

/// Whether a `Sec-WebSocket-Protocol` entry carries a token (`bearer.<jwt>`).
///
/// Such entries are not counted when choosing the subprotocol and are never echoed back
/// (protocol 1 and 2.1).
#[must_use]
pub fn is_bearer_protocol(entry: &str) -> bool {
    entry.trim().starts_with(BEARER_PROTOCOL_PREFIX)
}

/// Finds the token of a request, looking in the order of protocol 2.1 and returning the
/// first found:
///
/// 1. an `Authorization: Bearer <jwt>` header (the scheme ASCII case-insensitive; other
///    schemes are skipped);
/// 2. an entry `bearer.<jwt>` of `protocols`, the offered WebSocket subprotocols (the entries
///    of `Sec-WebSocket-Protocol`; an element that still holds a comma-separated list is
///    split too). SSE requests pass `&[]`: they do not use this source (protocol 8);
/// 3. the query parameter [`AuthConfig::query_param`] of `query` (the raw query string,
///    without or with its leading `?`), percent-decoded (`+` is a space) when needed;
/// 4. the cookie [`AuthConfig::token_cookie`], when configured (surrounding quotes removed).
///
/// Empty values are treated as absent and the search goes on. Surrounding whitespace is
/// removed. `None` when no source has a token; the caller then applies the anonymous rule
/// (see [`Verifier::authenticate`](super::Verifier::authenticate)).
pub fn find_token<'a>(
    headers: &'a HeaderMap,
    query: Option<&'a str>,
    protocols: &'a [String],
    cfg: &AuthConfig,
) -> Option<Cow<'a, str>> {
    if let Some(token) = from_authorization(headers) {
        return Some(Cow::Borrowed(token));
    }
    if let Some(token) = from_protocols(protocols) {
        return Some(Cow::Borrowed(token));
    }
    if let Some(token) = query.and_then(|q| from_query(q, &cfg.query_param)) {
        return Some(token);
    }
    cfg.token_cookie
        .as_deref()
        .and_then(|name| from_cookies(headers, name))
        .map(Cow::Borrowed)
}

fn from_authorization(headers: &HeaderMap) -> Option<&str> {
    headers.get_all(AUTHORIZATION).iter().find_map(|value| {
        let value = value.to_str().ok()?.trim();
        let (scheme, rest) = value.split_once([' ', '\t'])?;
        let token = rest.trim();
        (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
    })
}

fn from_protocols(protocols: &[String]) -> Option<&str> {
    protocols
        .iter()
        .flat_map(|p| p.split(','))
        .find_map(|entry| {
            entry
                .trim()
                .strip_prefix(BEARER_PROTOCOL_PREFIX)
                .filter(|t| !t.is_empty())
        })
}

fn from_query<'a>(query: &'a str, name: &str) -> Option<Cow<'a, str>> {
    let query = query.strip_prefix('?').unwrap_or(query);
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if percent_decode(key) != name {
            return None;
        }
        let value = match percent_decode(value) {
            Cow::Borrowed(v) => Cow::Borrowed(v.trim()),
            Cow::Owned(v) => Cow::Owned(v.trim().to_owned()),
        };
        (!value.is_empty()).then_some(value)
    })
}

/// Decodes `application/x-www-form-urlencoded` text: `+` is a space, `%XX` a byte. An invalid
/// escape is kept as it is; invalid UTF-8 becomes U+FFFD (and the token `malformed`).
pub(crate) fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Cow::Borrowed(s);
    }
    let hex = |b: u8| (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok());
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(hi), Some(lo)) => {
                        // Two hex digits: at most 0xff.
                        out.push(hi * 16 + lo);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

fn from_cookies<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            if key.trim() != name {
                return None;
            }
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value)
                .trim();
            (!value.is_empty()).then_some(value)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert!(matches!(
            percent_decode("abc.def_-"),
            Cow::Borrowed("abc.def_-")
        ));
        assert_eq!(percent_decode("a%2Eb%2ec"), "a.b.c");
        assert_eq!(percent_decode("a+b"), "a b");
        assert_eq!(percent_decode("%E2%82%AC"), "€");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(percent_decode("%ff"), "\u{fffd}");
    }
}
