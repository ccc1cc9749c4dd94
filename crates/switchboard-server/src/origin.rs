//! The origin allow-list of WebSocket upgrades and SSE streams (docs/protocol.md 7.3,
//! docs/security.md): a browser sends `Origin` with both, and a page of another site must
//! not open a connection that carries the user's cookies (cross-site WebSocket hijacking).

use http::{HeaderMap, header};

use crate::error::Refusal;

/// Which `Origin`s may open a connection. Requests without `Origin` (not from a browser:
/// servers, native apps, the CLI) are always allowed: the header is what a browser adds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginPolicy {
    /// Every origin (development mode, or `allowed_origins = ["*"]`).
    Any,
    /// The page's own site (`Origin`'s host and port equal to `Host`) and these origins,
    /// normalised by [`normalize`] (`scheme://host[:port]`, lower case). The default of a
    /// configured deployment.
    SameOriginOr(Vec<String>),
}

impl Default for OriginPolicy {
    /// Same origin only.
    fn default() -> Self {
        OriginPolicy::SameOriginOr(Vec::new())
    }
}

impl OriginPolicy {
    /// The policy of `websocket.allowed_origins`: `"*"` anywhere in it allows every origin,
    /// otherwise the listed ones and the same origin. Entries are expected to have been
    /// checked with [`check_entry`].
    pub fn from_list(list: &[String]) -> OriginPolicy {
        if list.iter().any(|o| o.trim() == "*") {
            return OriginPolicy::Any;
        }
        OriginPolicy::SameOriginOr(list.iter().map(|o| normalize(o)).collect())
    }

    /// `Ok` when `headers` may open a connection; otherwise the 403 `origin_not_allowed`.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        let OriginPolicy::SameOriginOr(list) = self else {
            return Ok(());
        };
        let Some(origin) = headers.get(header::ORIGIN) else {
            return Ok(());
        };
        let origin = origin.to_str().map(normalize).unwrap_or_default();
        if list.contains(&origin) {
            return Ok(());
        }
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_ascii_lowercase);
        let origin_host = origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"));
        if let (Some(host), Some(origin_host)) = (host, origin_host)
            && same_host(origin_host, &host, origin.starts_with("https://"))
        {
            return Ok(());
        }
        Err(Refusal::new(
            http::StatusCode::FORBIDDEN,
            "origin_not_allowed",
            "the Origin is not in websocket.allowed_origins and differs from Host",
        ))
    }
}

/// Whether `origin_host` (`host[:port]` of the Origin) names the same place as `host` (the
/// `Host` header), a default port written or not.
fn same_host(origin_host: &str, host: &str, https: bool) -> bool {
    let default = if https { ":443" } else { ":80" };
    let strip = |h: &'_ str| -> String { h.strip_suffix(default).unwrap_or(h).to_owned() };
    strip(origin_host) == strip(host)
}

/// An origin as compared: trimmed, lower case, without a trailing `/`.
pub fn normalize(origin: &str) -> String {
    origin.trim().trim_end_matches('/').to_ascii_lowercase()
}

/// Checks one entry of `websocket.allowed_origins`: `"*"`, or `http(s)://host[:port]`
/// without a path. The error says what is wrong; the caller names the key.
pub fn check_entry(entry: &str) -> Result<(), String> {
    let e = entry.trim();
    if e == "*" {
        return Ok(());
    }
    let rest = e
        .strip_prefix("https://")
        .or_else(|| e.strip_prefix("http://"))
        .ok_or_else(|| format!("'{entry}' must be \"*\" or start with https:// or http://"))?;
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
        return Err(format!(
            "'{entry}' must be an origin: scheme://host[:port], without a path"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, host.parse().unwrap());
        if let Some(o) = origin {
            h.insert(header::ORIGIN, o.parse().unwrap());
        }
        h
    }

    #[test]
    fn same_origin_listed_and_refused() {
        let p = OriginPolicy::from_list(&["https://App.example/".into()]);
        assert!(p.check(&headers(None, "ws.example")).is_ok());
        assert!(
            p.check(&headers(Some("https://app.example"), "ws.example"))
                .is_ok()
        );
        assert!(
            p.check(&headers(Some("https://ws.example"), "ws.example"))
                .is_ok()
        );
        assert!(
            p.check(&headers(Some("https://ws.example:443"), "ws.example"))
                .is_ok()
        );
        assert!(
            p.check(&headers(Some("http://ws.example"), "ws.example:80"))
                .is_ok()
        );
        let r = p
            .check(&headers(Some("https://evil.example"), "ws.example"))
            .unwrap_err();
        assert_eq!(r.status, http::StatusCode::FORBIDDEN);
        assert_eq!(r.body["error"], "origin_not_allowed");
        assert!(p.check(&headers(Some("null"), "ws.example")).is_err());
        assert!(
            p.check(&headers(Some("https://ws.example:8443"), "ws.example"))
                .is_err()
        );
        let any = OriginPolicy::from_list(&["*".into()]);
        assert!(any.check(&headers(Some("null"), "ws.example")).is_ok());
    }

    #[test]
    fn entries_are_checked() {
        assert!(check_entry("*").is_ok());
        assert!(check_entry("https://app.example:8443").is_ok());
        assert!(check_entry("app.example").is_err());
        assert!(check_entry("https://app.example/path").is_err());
    }
}
