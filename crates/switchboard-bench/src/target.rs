//! Bench targets: `ws://HOST:PORT/PATH` URLs restricted to this machine.
//!
//! The load generator only ever sends to loopback: `127.0.0.0/8`, `::1` or `localhost` (taken
//! as `127.0.0.1` without asking a resolver, so the check cannot be fooled by DNS). Anything
//! else is refused while the arguments are checked, before a single socket is opened.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// One server to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// The URL as given.
    pub(crate) url: String,
    /// The loopback address to connect to.
    pub(crate) addr: SocketAddr,
    /// The `Host` header: the URL's host and port.
    pub(crate) host: String,
    /// Path and query of the upgrade request.
    pub(crate) path: String,
}

impl Target {
    /// Parses `url`, refusing TLS, user info and every host that is not loopback.
    pub(crate) fn parse(url: &str) -> Result<Target, String> {
        let rest = if let Some(rest) = url.strip_prefix("ws://") {
            rest
        } else if url.starts_with("wss://") {
            return Err(format!(
                "{url}: wss:// is not supported: the bench speaks plain ws:// to loopback only"
            ));
        } else {
            return Err(format!(
                "{url}: not a ws:// URL (example: ws://127.0.0.1:8080/echo)"
            ));
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
            Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
            None => (rest, "/".to_string()),
        };
        if authority.contains('@') {
            return Err(format!(
                "{url}: user information in the URL is not supported"
            ));
        }
        let (host, port) = split_host_port(authority)
            .ok_or_else(|| format!("{url}: cannot read host and port from {authority:?}"))?;
        let ip = loopback_ip(host).ok_or_else(|| {
            format!(
                "{url}: refusing to load {host}: the bench only sends to loopback \
                 (127.0.0.0/8, ::1 or localhost)"
            )
        })?;
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("{url}: bad port {p:?}"))?,
            None => 80,
        };
        if path.contains(char::is_whitespace) {
            return Err(format!("{url}: the path contains whitespace"));
        }
        Ok(Target {
            url: url.to_string(),
            addr: SocketAddr::new(ip, port),
            host: authority.to_string(),
            path,
        })
    }

    /// The same server at another path (for scenarios whose route differs).
    #[cfg(test)]
    pub(crate) fn with_path(&self, path: &str) -> Target {
        Target {
            url: format!("ws://{}{}", self.host, path),
            path: path.to_string(),
            ..self.clone()
        }
    }
}

/// `host[:port]` or `[v6][:port]`.
pub(crate) fn split_host_port(authority: &str) -> Option<(&str, Option<&str>)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let end = rest.find(']')?;
        let host = &rest[..end];
        let after = &rest[end + 1..];
        return match after.strip_prefix(':') {
            Some(port) => Some((host, Some(port))),
            None if after.is_empty() => Some((host, None)),
            None => None,
        };
    }
    if authority.is_empty() || authority.matches(':').count() > 1 {
        return None;
    }
    Some(match authority.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (authority, None),
    })
}

/// The address of a loopback host, or `None` for anything else.
pub(crate) fn loopback_ip(host: &str) -> Option<IpAddr> {
    if host.eq_ignore_ascii_case("localhost") {
        return Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    let ip: IpAddr = host.parse().ok()?;
    ip.is_loopback().then_some(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_urls_parse() {
        let t = Target::parse("ws://127.0.0.1:8080/echo").unwrap();
        assert_eq!(t.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(t.host, "127.0.0.1:8080");
        assert_eq!(t.path, "/echo");
        let t = Target::parse("ws://localhost:9000").unwrap();
        assert_eq!(t.addr, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(t.path, "/");
        let t = Target::parse("ws://[::1]:9000/ws?x=1").unwrap();
        assert_eq!(t.addr, "[::1]:9000".parse().unwrap());
        assert_eq!(t.path, "/ws?x=1");
        let t = Target::parse("ws://127.9.8.7/a").unwrap();
        assert_eq!(t.addr.port(), 80);
        let t = Target::parse("ws://127.0.0.1:1?q").unwrap();
        assert_eq!(t.path, "/?q");
        assert_eq!(t.with_path("/ws").url, "ws://127.0.0.1:1/ws");
    }

    #[test]
    fn everything_else_is_refused() {
        for url in [
            "ws://10.1.2.3/echo",
            "ws://192.168.1.1:80/",
            "ws://8.8.8.8:80/",
            "ws://example.com/",
            "ws://localhost.example.com/",
            "ws://[::2]:80/",
            "ws://[::ffff:10.0.0.1]:80/",
            "ws://0.0.0.0:80/",
            "wss://127.0.0.1/",
            "http://127.0.0.1/",
            "ws://user@127.0.0.1/",
            "ws://127.0.0.1:0/",
            "ws://127.0.0.1:99999/",
            "ws:///x",
        ] {
            assert!(Target::parse(url).is_err(), "{url} accepted");
        }
        let e = Target::parse("ws://10.1.2.3/echo").unwrap_err();
        assert!(e.contains("loopback"), "{e}");
    }
}
