//! `redis-cli` for the test support processes (`redis_server.rs`, `redis_cluster.rs`,
//! `redis_sentinel.rs`), each of which includes it with `#[path]`.

#![allow(dead_code, unreachable_pub)]

use std::process::{Command, Stdio};

/// `redis-cli -p <port> <args>`, its output trimmed; `None` when it fails (a dead process).
pub fn cli(port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
