//! A Sentinel-monitored Redis for tests: one primary, its replicas (`--replicaof`) and three
//! sentinels (`redis-server --sentinel`) (`sentinel monitor m 127.0.0.1 <primary> 2`, down after 1 s,
//! failover timeout 5 s), all on free ports of loopback with their files in a temporary
//! directory, without persistence, killed when dropped. Included with `#[path]` by the tests
//! that need one; it asks the processes with `redis-cli`.

#![allow(dead_code, unreachable_pub)]

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

// Each support file stands alone in the tests that include it, so two of them in one
// test binary each bring their own copy of this one function.
#[allow(clippy::duplicate_mod)]
#[path = "redis_cli.rs"]
mod redis_cli;
use redis_cli::cli;

/// The name the sentinels monitor the set under.
pub const MASTER: &str = "m";

/// One process of the set.
struct Process {
    child: Option<Child>,
    port: u16,
}

impl Process {
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A running Sentinel set.
pub struct RedisSentinelSet {
    /// The data nodes; the first one started as the primary.
    nodes: Vec<Process>,
    sentinels: Vec<Process>,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().unwrap().port()
}

fn spawn(program: &str, args: &[String], port: u16) -> Process {
    let mut child = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {program} ({e}): these tests need it on the PATH; \
                 scripts/test installs it (Debian package redis-server)"
            )
        });
    let deadline = Instant::now() + Duration::from_secs(10);
    // No readiness signal but the port: try it until it answers.
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{program} on port {port} exited: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "{program} on port {port} did not accept connections within 10 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    Process {
        child: Some(child),
        port,
    }
}

/// The value of `field` in a `field\nvalue\n…` reply.
fn field<'a>(reply: &'a str, name: &str) -> Option<&'a str> {
    let mut lines = reply.lines();
    while let Some(line) = lines.next() {
        if line == name {
            return lines.next();
        }
    }
    None
}

fn data_node(dir: &Path, port: u16, primary: Option<u16>) -> Process {
    let mut args: Vec<String> = [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(dir.display().to_string());
    if let Some(primary) = primary {
        args.extend([
            "--replicaof".into(),
            "127.0.0.1".into(),
            primary.to_string(),
        ]);
    }
    spawn("redis-server", &args, port)
}

impl RedisSentinelSet {
    /// Starts a primary, `replicas` replicas of it and three sentinels, and waits until every
    /// sentinel names the primary, sees every replica and the two other sentinels.
    pub fn start(replicas: usize) -> RedisSentinelSet {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let primary = free_port();
        let mut nodes = vec![data_node(dir.path(), primary, None)];
        for _ in 0..replicas {
            nodes.push(data_node(dir.path(), free_port(), Some(primary)));
        }
        let mut sentinels = Vec::new();
        for i in 0..3 {
            let port = free_port();
            // A file of its own: a sentinel rewrites its configuration as it learns.
            let conf = dir.path().join(format!("sentinel-{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                     sentinel monitor {MASTER} 127.0.0.1 {primary} 2\n\
                     sentinel down-after-milliseconds {MASTER} 1000\n\
                     sentinel failover-timeout {MASTER} 5000\n\
                     sentinel parallel-syncs {MASTER} 1\n",
                    dir = dir.path().display()
                ),
            )
            .unwrap();
            // `redis-server --sentinel` is `redis-sentinel`, which not every package installs.
            sentinels.push(spawn(
                "redis-server",
                &[conf.display().to_string(), "--sentinel".into()],
                port,
            ));
        }
        let set = RedisSentinelSet {
            nodes,
            sentinels,
            dir,
        };
        set.wait_until(
            "the sentinels agree on the primary and see every replica",
            || {
                set.sentinels.iter().all(|s| {
                    let Some(reply) = cli(s.port, &["SENTINEL", "MASTER", MASTER]) else {
                        return false;
                    };
                    field(&reply, "port") == Some(&primary.to_string())
                        && field(&reply, "num-slaves") == Some(&replicas.to_string())
                        && field(&reply, "num-other-sentinels") == Some("2")
                        && field(&reply, "flags") == Some("master")
                })
            },
        );
        // And every replica has its copy of the primary.
        set.wait_until("the replicas are in sync", || {
            set.nodes[1..].iter().all(|n| {
                cli(n.port, &["INFO", "replication"])
                    .is_some_and(|i| i.contains("master_link_status:up"))
            })
        });
        set
    }

    /// Polls `done` every 50 ms for at most 30 s.
    fn wait_until(&self, what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(Instant::now() < deadline, "not within 30 s: {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The sentinels' urls, `redis://127.0.0.1:<port>` each.
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|s| format!("redis://127.0.0.1:{}", s.port))
            .collect()
    }

    /// The port of the primary the first answering sentinel names.
    pub fn primary_port(&self) -> Option<u16> {
        self.sentinels.iter().find_map(|s| {
            let reply = cli(s.port, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER])?;
            reply.lines().nth(1)?.parse().ok()
        })
    }

    /// Kills the current primary with SIGKILL (no chance to tell anyone) and returns its port.
    pub fn kill_primary(&mut self) -> u16 {
        let port = self.primary_port().expect("the sentinels name a primary");
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("the primary is one of the set's nodes");
        node.kill();
        port
    }

    /// Waits until every sentinel names a primary other than `old` and that node says it is
    /// one (`ROLE`); returns its port.
    pub fn wait_for_failover(&self, old: u16) -> u16 {
        let mut new = 0;
        self.wait_until("a failover to another primary", || {
            let ports: Vec<Option<u16>> = self
                .sentinels
                .iter()
                .map(|s| {
                    let reply = cli(s.port, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER])?;
                    reply.lines().nth(1)?.parse().ok()
                })
                .collect();
            match ports[0] {
                Some(p) if p != old && ports.iter().all(|q| *q == Some(p)) => {
                    new = p;
                    cli(p, &["ROLE"]).is_some_and(|r| r.starts_with("master"))
                }
                _ => false,
            }
        });
        new
    }

    /// The ports of the data nodes the sentinels do not name as primary (its replicas).
    pub fn replica_ports(&self) -> Vec<u16> {
        let primary = self.primary_port();
        self.nodes
            .iter()
            .filter(|n| n.child.is_some() && Some(n.port) != primary)
            .map(|n| n.port)
            .collect()
    }

    /// Kills the data node on `port` with SIGKILL.
    pub fn kill(&mut self, port: u16) {
        if let Some(node) = self.nodes.iter_mut().find(|n| n.port == port) {
            node.kill();
        }
    }

    /// Asks a sentinel for a graceful failover (`SENTINEL FAILOVER`): the primary stays up
    /// and becomes a replica of the promoted one. Returns the old primary's port.
    pub fn failover(&self) -> u16 {
        let old = self.primary_port().expect("the sentinels name a primary");
        let reply = cli(self.sentinels[0].port, &["SENTINEL", "FAILOVER", MASTER]);
        assert_eq!(reply.as_deref(), Some("OK"), "SENTINEL FAILOVER");
        old
    }

    /// Starts the killed node on `port` again, empty: the sentinels make it a replica of the
    /// current primary.
    pub fn restart(&mut self, port: u16) {
        let dir = self.dir.path().to_owned();
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("one of the set's nodes");
        node.kill();
        *node = data_node(&dir, port, None);
    }
}

impl Drop for RedisSentinelSet {
    fn drop(&mut self) {
        for p in self.sentinels.iter_mut().chain(self.nodes.iter_mut()) {
            p.kill();
        }
    }
}
