//! Examples of embedding Switchboard; run them with `cargo run -p switchboard-examples --example NAME`.
//!
//! The handlers of the `chat` and `lobby` examples live here, in the library, so that the
//! tests in `examples/tests/` serve exactly the code the examples run.

use std::net::SocketAddr;

mod handlers;

pub use handlers::{chat, lobby};

/// Where an example listens when neither `--listen` nor `PORT` says otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// The address an example serves on: `--listen ADDR` (or `--listen=ADDR`) on the command
/// line, else `127.0.0.1:$PORT`, else [`DEFAULT_LISTEN`]. The error names the argument or
/// variable at fault.
pub fn listen_addr() -> Result<SocketAddr, String> {
    listen_addr_from(std::env::args().skip(1), std::env::var("PORT").ok())
}

fn listen_addr_from(
    mut args: impl Iterator<Item = String>,
    port: Option<String>,
) -> Result<SocketAddr, String> {
    if let Some(arg) = args.next() {
        let value = match arg.strip_prefix("--listen") {
            Some("") => args.next().ok_or_else(|| {
                "--listen: expected an address such as 127.0.0.1:8080".to_string()
            })?,
            Some(rest) if rest.starts_with('=') => rest[1..].to_string(),
            _ => return Err(format!("unknown argument '{arg}' (only --listen ADDR)")),
        };
        if let Some(extra) = args.next() {
            return Err(format!("unexpected argument '{extra}' after --listen"));
        }
        return value
            .parse()
            .map_err(|e| format!("--listen '{value}': {e}"));
    }
    match port {
        Some(port) => port
            .parse::<u16>()
            .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
            .map_err(|e| format!("PORT '{port}': {e}")),
        None => Ok(DEFAULT_LISTEN.parse().expect("a valid default address")),
    }
}

/// The value of `key` in a request's query string, if present (not percent-decoded: the
/// examples accept only names that need no escaping).
pub fn query_param<'a>(query: Option<&'a str>, key: &str) -> Option<&'a str> {
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// Whether `s` is 1 to `max` bytes of ASCII letters, digits, `-`, `_` and `.`: safe in a
/// URL without escaping and in a room name.
pub fn is_plain_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The `name` query parameter of an upgrade request, which both chat and lobby users connect
/// with: 401 when it is missing, 400 when it is not 1 to `max` plain characters
/// ([`is_plain_name`]).
pub fn name_param<'a>(
    request: &'a switchboard_server::UpgradeContext<'_>,
    max: usize,
) -> Result<&'a str, switchboard_server::Refusal> {
    use switchboard_server::Refusal;
    let name = query_param(request.uri.query(), "name")
        .filter(|n| !n.is_empty())
        .ok_or_else(|| Refusal::unauthorized("query parameter 'name' is missing"))?;
    if !is_plain_name(name, max) {
        return Err(Refusal::bad_request(&format!(
            "query parameter 'name': 1 to {max} letters, digits, '-', '_' or '.'"
        )));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> impl Iterator<Item = String> {
        list.iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn listen_address_from_flag_then_port_then_default() {
        let at = |a: &[&str], p: Option<&str>| listen_addr_from(args(a), p.map(String::from));
        assert_eq!(at(&[], None).unwrap().to_string(), "127.0.0.1:8080");
        assert_eq!(at(&[], Some("9000")).unwrap().to_string(), "127.0.0.1:9000");
        assert_eq!(
            at(&["--listen", "0.0.0.0:7000"], Some("9000"))
                .unwrap()
                .to_string(),
            "0.0.0.0:7000"
        );
        assert_eq!(
            at(&["--listen=127.0.0.1:1"], None).unwrap().to_string(),
            "127.0.0.1:1"
        );
        assert!(at(&["--listen"], None).unwrap_err().contains("--listen"));
        assert!(
            at(&["--listen", "nope"], None)
                .unwrap_err()
                .contains("--listen 'nope'")
        );
        assert!(at(&[], Some("http")).unwrap_err().contains("PORT"));
        assert!(at(&["--port"], None).unwrap_err().contains("--port"));
    }

    #[test]
    fn query_parameters_and_names() {
        assert_eq!(query_param(Some("a=1&name=ada"), "name"), Some("ada"));
        assert_eq!(query_param(Some("names=x"), "name"), None);
        assert_eq!(query_param(None, "name"), None);
        assert!(is_plain_name("ada_1.b-c", 32));
        assert!(!is_plain_name("", 32));
        assert!(!is_plain_name("a b", 32));
        assert!(!is_plain_name(&"a".repeat(33), 32));
    }
}
