//! `--redis URL`: what the Redis a cluster of nodes shares costs, read with `INFO` on a
//! connection of the bench's own (the nodes' connections are theirs).
//!
//! - Memory: `used_memory` of `INFO memory` before the connections are opened and at the end
//!   of the measured window; per connection in `connect`.
//! - Commands: `total_commands_processed` of `INFO stats` and the `calls` of each command in
//!   `INFO commandstats`, at both ends of the measured window. Redis 7 counts the commands a
//!   script calls as well as the `EVALSHA` that runs it (so a publication's script counts as
//!   all the work it does, while it is one round trip: `evalsha` in the breakdown). The
//!   bench's own `INFO` commands are taken out, so what is left is the nodes' doing: per
//!   publication in `fanout` and `rooms`.
//!
//! Like the WebSocket targets, the Redis must be on this machine (loopback).

use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Serialize};

use crate::target;

/// Time allowed to connect to Redis and for each `INFO`.
const TIMEOUT: Duration = Duration::from_secs(5);

/// A connection to the Redis of `--redis`.
pub(crate) struct RedisProbe {
    url: String,
    conn: redis::Connection,
    /// `INFO` commands this probe has sent (taken out of the command counts).
    infos: u64,
}

/// What one look at Redis found.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct RedisSample {
    /// `used_memory`: bytes Redis allocated for its data.
    pub(crate) used_memory: u64,
    /// `total_commands_processed`, less this probe's own `INFO` commands before this sample.
    pub(crate) commands: u64,
    /// `calls` per command (`cmdstat_<name>`, lower case), without `info`.
    pub(crate) calls: BTreeMap<String, u64>,
}

/// The `redis` part of a result (`--redis`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct RedisStats {
    /// The Redis, as given.
    pub(crate) url: String,
    /// `used_memory` before the connections were opened.
    pub(crate) used_memory_before_bytes: Option<u64>,
    /// `used_memory` at the end of the measured window.
    pub(crate) used_memory_after_bytes: Option<u64>,
    /// `(after - before) / connections` (connect).
    pub(crate) memory_per_connection_bytes: Option<f64>,
    /// Commands Redis processed in the measured window (those scripts call included), the
    /// bench's `INFO` left out.
    pub(crate) commands: Option<u64>,
    /// The same per second of the window.
    pub(crate) commands_per_s: Option<f64>,
    /// `commands` / publications sent in the window (fanout, rooms).
    pub(crate) commands_per_publication: Option<f64>,
    /// Calls per publication by command, those made inside scripts included (fanout, rooms):
    /// `evalsha` is the number of script runs, each one round trip.
    pub(crate) calls_per_publication: BTreeMap<String, f64>,
}

impl std::fmt::Debug for RedisProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisProbe")
            .field("url", &self.url)
            .field("infos", &self.infos)
            .finish_non_exhaustive()
    }
}

impl RedisProbe {
    /// Connects to `url` (`redis://HOST[:PORT][/DB]`, loopback only) and checks that it
    /// answers `INFO`.
    pub(crate) fn connect(url: &str) -> Result<RedisProbe, String> {
        check_url(url)?;
        let client = redis::Client::open(url).map_err(|e| format!("--redis {url}: {e}"))?;
        let conn = client
            .get_connection_with_timeout(TIMEOUT)
            .map_err(|e| format!("--redis {url}: cannot connect: {e}"))?;
        conn.set_read_timeout(Some(TIMEOUT))
            .and_then(|()| conn.set_write_timeout(Some(TIMEOUT)))
            .map_err(|e| format!("--redis {url}: {e}"))?;
        let mut probe = RedisProbe {
            url: redacted(url),
            conn,
            infos: 0,
        };
        probe.sample()?;
        Ok(probe)
    }

    /// The URL given.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// Reads memory and command counts now (three `INFO` commands).
    pub(crate) fn sample(&mut self) -> Result<RedisSample, String> {
        let mut info = |section: &str| -> Result<String, String> {
            self.infos += 1;
            redis::cmd("INFO")
                .arg(section)
                .query::<String>(&mut self.conn)
                .map_err(|e| format!("--redis {}: INFO {section}: {e}", self.url))
        };
        let memory = info("memory")?;
        let stats = info("stats")?;
        let commandstats = info("commandstats")?;
        let used_memory = field(&memory, "used_memory")
            .ok_or_else(|| format!("--redis {}: no used_memory in INFO memory", self.url))?;
        let total = field(&stats, "total_commands_processed").ok_or_else(|| {
            format!(
                "--redis {}: no total_commands_processed in INFO stats",
                self.url
            )
        })?;
        // The `INFO stats` just answered counts every earlier `INFO` (this sample's `INFO
        // memory` among them), not itself.
        let own = self.infos - 1;
        let mut calls = command_calls(&commandstats);
        calls.remove("info");
        Ok(RedisSample {
            used_memory,
            commands: total.saturating_sub(own),
            calls,
        })
    }
}

/// Refuses anything but `redis://` to a loopback host.
fn check_url(url: &str) -> Result<(), String> {
    let Some(rest) = url.strip_prefix("redis://") else {
        return Err(format!(
            "--redis {url}: not a redis:// URL (example: redis://127.0.0.1:6400)"
        ));
    };
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    // User information comes before the last `@`.
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, _) = target::split_host_port(host_port)
        .ok_or_else(|| format!("--redis {url}: cannot read host and port"))?;
    if target::loopback_ip(host).is_none() {
        return Err(format!(
            "--redis {url}: refusing {host}: the bench only talks to loopback (127.0.0.0/8, \
             ::1 or localhost)"
        ));
    }
    Ok(())
}

/// `url` with its password, if any, replaced by `***` (results are shared).
fn redacted(url: &str) -> String {
    let rest = &url["redis://".len().min(url.len())..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    match rest[..authority_end].rsplit_once('@') {
        Some((user, host)) => {
            let user = user.split_once(':').map_or(user, |(u, _)| u);
            format!("redis://{user}:***@{host}{}", &rest[authority_end..])
        }
        None => url.to_string(),
    }
}

/// The number after `name:` on a line of an `INFO` answer.
fn field(info: &str, name: &str) -> Option<u64> {
    info.lines().find_map(|l| {
        let (k, v) = l.trim_end().split_once(':')?;
        (k == name).then(|| v.parse().ok())?
    })
}

/// `calls` of every `cmdstat_<name>:calls=N,…` line of `INFO commandstats`. Subcommands
/// (`cmdstat_client|setname`) keep their `|`.
fn command_calls(info: &str) -> BTreeMap<String, u64> {
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.trim_end().strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))?
                .parse()
                .ok()?;
            Some((name.to_ascii_lowercase(), calls))
        })
        .collect()
}

impl RedisStats {
    /// What `before` (taken before connecting) and the window's two samples say; `connections`
    /// for memory per connection (connect), `publications` sent in the window for the
    /// per-publication figures.
    pub(crate) fn new(
        url: &str,
        before: Option<&RedisSample>,
        window: Option<(&RedisSample, &RedisSample)>,
        seconds: f64,
        connections: Option<u64>,
        publications: Option<u64>,
    ) -> RedisStats {
        let mut s = RedisStats {
            url: url.to_string(),
            used_memory_before_bytes: before.map(|b| b.used_memory),
            ..RedisStats::default()
        };
        let Some((a, b)) = window else {
            return s;
        };
        // One decimal, as `result::round1` (kept apart: `result` builds on this module).
        let round1 = |v: f64| (v * 10.0).round() / 10.0;
        s.used_memory_after_bytes = Some(b.used_memory);
        if let (Some(before), Some(n)) = (before, connections.filter(|n| *n > 0)) {
            s.memory_per_connection_bytes = Some(round1(
                (b.used_memory as f64 - before.used_memory as f64) / n as f64,
            ));
        }
        let commands = b.commands.saturating_sub(a.commands);
        s.commands = Some(commands);
        if seconds > 0.0 {
            s.commands_per_s = Some(round1(commands as f64 / seconds));
        }
        if let Some(p) = publications.filter(|p| *p > 0) {
            let per = |n: u64| (n as f64 / p as f64 * 1000.0).round() / 1000.0;
            s.commands_per_publication = Some(per(commands));
            s.calls_per_publication = b
                .calls
                .iter()
                .filter_map(|(name, n)| {
                    let d = n.saturating_sub(a.calls.get(name).copied().unwrap_or(0));
                    (d > 0).then(|| (name.clone(), per(d)))
                })
                .collect();
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_redis_urls_are_accepted() {
        for ok in [
            "redis://127.0.0.1:6400",
            "redis://localhost:6400/2",
            "redis://user:p@ss@127.0.0.2:1",
            "redis://[::1]:6400",
        ] {
            assert_eq!(check_url(ok), Ok(()), "{ok}");
        }
        for bad in [
            "redis://10.0.0.1:6379",
            "redis://example.com:6379",
            "rediss://127.0.0.1:6379",
            "ws://127.0.0.1:6379",
            "127.0.0.1:6379",
        ] {
            assert!(check_url(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(
            redacted("redis://u:secret@127.0.0.1:1/2"),
            "redis://u:***@127.0.0.1:1/2"
        );
        assert_eq!(redacted("redis://127.0.0.1:1"), "redis://127.0.0.1:1");
        assert!(
            check_url("redis://10.0.0.1:6379")
                .unwrap_err()
                .contains("loopback")
        );
    }

    #[test]
    fn info_answers_are_read() {
        let memory = "# Memory\r\nused_memory:1032320\r\nused_memory_human:1008.12K\r\n";
        assert_eq!(field(memory, "used_memory"), Some(1_032_320));
        assert_eq!(field(memory, "used_memory_rss"), None);
        let stats = "# Commandstats\r\ncmdstat_evalsha:calls=10,usec=40,usec_per_call=4.00,\
                     rejected_calls=0,failed_calls=0\r\ncmdstat_client|setname:calls=2,usec=1\r\n\
                     cmdstat_info:calls=7,usec=9\r\n";
        let calls = command_calls(stats);
        assert_eq!(calls.get("evalsha"), Some(&10));
        assert_eq!(calls.get("client|setname"), Some(&2));
        assert_eq!(calls.get("info"), Some(&7));
    }

    #[test]
    fn per_publication_figures_are_window_deltas() {
        let before = RedisSample {
            used_memory: 1000,
            ..RedisSample::default()
        };
        let a = RedisSample {
            used_memory: 5000,
            commands: 100,
            calls: [("evalsha".to_string(), 50), ("ping".to_string(), 3)].into(),
        };
        let b = RedisSample {
            used_memory: 9000,
            commands: 300,
            calls: [
                ("evalsha".to_string(), 250),
                ("ping".to_string(), 3),
                ("publish".to_string(), 200),
            ]
            .into(),
        };
        let s = RedisStats::new("u", Some(&before), Some((&a, &b)), 2.0, Some(4), Some(200));
        assert_eq!(s.used_memory_after_bytes, Some(9000));
        assert_eq!(s.memory_per_connection_bytes, Some(2000.0));
        assert_eq!(s.commands, Some(200));
        assert_eq!(s.commands_per_s, Some(100.0));
        assert_eq!(s.commands_per_publication, Some(1.0));
        assert_eq!(
            s.calls_per_publication,
            [("evalsha".to_string(), 1.0), ("publish".to_string(), 1.0)].into()
        );
    }
}
