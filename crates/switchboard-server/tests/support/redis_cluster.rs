//! A Redis Cluster for tests: N primaries (no replicas), each a `redis-server
//! --cluster-enabled yes` on a free port of loopback with its files in a temporary directory,
//! joined by `redis-cli --cluster create`, ready once every node reports `cluster_state:ok`;
//! a node can be killed and started again; all killed when dropped. Included with `#[path]` by the tests that need one.

#![allow(dead_code, unreachable_pub)]

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

// Each support file stands alone in the tests that include it, so two of them in one
// test binary each bring their own copy of this one function.
#[allow(clippy::duplicate_mod)]
#[path = "redis_cli.rs"]
mod redis_cli;
pub use redis_cli::cli;

/// A running Redis Cluster of a test.
pub struct RedisCluster {
    /// Each node's process, `None` while stopped.
    nodes: Vec<Option<Child>>,
    ports: Vec<u16>,
    dir: tempfile::TempDir,
}

/// A free port whose cluster bus port (+10000) is free too.
fn free_port() -> u16 {
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
        let port = listener.local_addr().unwrap().port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

impl RedisCluster {
    /// Starts `primaries` nodes (at least 3, as `redis-cli --cluster create` requires), joins
    /// them into one cluster covering every slot, and waits until every node reports it ok.
    pub fn start(primaries: usize) -> RedisCluster {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut cluster = RedisCluster {
            nodes: Vec::new(),
            ports: Vec::new(),
            dir,
        };
        for i in 0..primaries {
            std::fs::create_dir(cluster.dir.path().join(format!("n{i}"))).unwrap();
            cluster.ports.push(free_port());
            cluster.nodes.push(None);
            cluster.launch(i);
        }
        let output = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(cluster.ports.iter().map(|p| format!("127.0.0.1:{p}")))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli (Debian package redis-tools) on the PATH");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        cluster.wait_ok();
        cluster
    }

    /// Kills node `i` (SIGKILL) and waits for it to exit.
    pub fn stop(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `i` again on its port with its cluster state file (stopping it first if
    /// it runs): it rejoins the cluster with its slots, empty (no persistence). Waits until
    /// every node reports the cluster ok again.
    pub fn restart(&mut self, i: usize) {
        self.launch(i);
        self.wait_ok();
    }

    /// Starts node `i` (stopping it first if it runs) and waits until it accepts connections.
    fn launch(&mut self, i: usize) {
        self.stop(i);
        let port = self.ports[i];
        let node_dir = self.dir.path().join(format!("n{i}"));
        let mut child = Command::new("redis-server")
            .arg("--port")
            .arg(port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
            .arg("--dir")
            .arg(&node_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start redis-server ({e}): these tests need it on the PATH; \
                     scripts/test installs it (Debian package redis-server)"
                )
            });
        let deadline = Instant::now() + Duration::from_secs(10);
        // redis-server has no readiness signal but its port: try it until it answers.
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("redis-server on port {port} exited: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {port} did not accept connections within 10 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        self.nodes[i] = Some(child);
    }

    /// Waits until every node reports `cluster_state:ok` and knows every primary.
    fn wait_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for port in &self.ports {
            loop {
                let info = cli(*port, &["cluster", "info"]).unwrap_or_default();
                let known = format!("cluster_known_nodes:{}", self.ports.len());
                if info.contains("cluster_state:ok") && info.contains(&known) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the redis cluster on port {port} is not ok within 30 s: {info}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// The node that owns `slot`, as it says itself (`CLUSTER NODES`, its `myself` line).
    pub fn owner_of(&self, slot: u16) -> usize {
        let owns = |line: &str| {
            line.split(' ').skip(8).any(|range| {
                let (a, b) = range.split_once('-').unwrap_or((range, range));
                matches!((a.parse::<u16>(), b.parse::<u16>()), (Ok(a), Ok(b)) if (a..=b).contains(&slot))
            })
        };
        self.ports
            .iter()
            .position(|&p| {
                cli(p, &["cluster", "nodes"])
                    .unwrap_or_default()
                    .lines()
                    .any(|line| line.contains("myself") && owns(line))
            })
            .expect("an owner of the slot")
    }

    /// Moves `slot`, with its keys, to node `to`, as a reshard does (`SETSLOT IMPORTING` and
    /// `MIGRATING`, `MIGRATE` of its keys, `SETSLOT NODE` on every node).
    pub fn move_slot(&self, slot: u16, to: usize) {
        let run = |port: u16, args: &[&str]| {
            cli(port, args).unwrap_or_else(|| panic!("redis-cli -p {port} {args:?} failed"))
        };
        let ids: Vec<String> = self
            .ports
            .iter()
            .map(|&p| run(p, &["cluster", "myid"]))
            .collect();
        let from = self.owner_of(slot);
        assert_ne!(from, to, "slot {slot} is on node {to} already");
        let s = slot.to_string();
        let (src, dst) = (self.ports[from], self.ports[to]);
        run(dst, &["cluster", "setslot", &s, "importing", &ids[from]]);
        run(src, &["cluster", "setslot", &s, "migrating", &ids[to]]);
        loop {
            let keys = run(src, &["cluster", "getkeysinslot", &s, "100"]);
            if keys.is_empty() {
                break;
            }
            let port = dst.to_string();
            let mut args = vec!["migrate", "127.0.0.1", &port, "", "0", "5000", "keys"];
            args.extend(keys.lines());
            assert_eq!(run(src, &args), "OK");
        }
        for &port in [dst, src].iter().chain(&self.ports) {
            run(port, &["cluster", "setslot", &s, "node", &ids[to]]);
        }
    }

    /// The seed nodes' urls: `redis://127.0.0.1:<port>` of every node.
    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    /// The nodes' ports.
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.stop(i);
        }
    }
}
