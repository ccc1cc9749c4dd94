//! A `redis-server` process for tests: on a free port of loopback, no persistence unless
//! asked, killed when dropped. Included with `#[path]` by the tests that need one.

#![allow(dead_code, unreachable_pub)]

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

// Each support file stands alone in the tests that include it, so two of them in one
// test binary each bring their own copy of this one function.
#[allow(clippy::duplicate_mod)]
#[path = "redis_cli.rs"]
mod redis_cli;

/// A running (or stopped) `redis-server` of a test.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    /// Holds the append-only file of a persistent server across restarts.
    dir: tempfile::TempDir,
    persistent: bool,
}

impl RedisServer {
    /// A server without persistence (`--save '' --appendonly no`): a restart loses everything.
    pub fn start() -> RedisServer {
        Self::launch(false)
    }

    /// A server that writes every command to its append-only file before answering, so that
    /// a restart keeps everything.
    pub fn start_persistent() -> RedisServer {
        Self::launch(true)
    }

    fn launch(persistent: bool) -> RedisServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let mut server = RedisServer {
            child: None,
            port,
            dir: tempfile::tempdir().expect("a temporary directory"),
            persistent,
        };
        server.restart();
        server
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis-cli` on it: the reply, trimmed; `None` when the command fails.
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        redis_cli::cli(self.port, args)
    }

    /// Kills the server (SIGKILL) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP): its sockets stay open and nothing answers.
    pub fn pause(&self) {
        assert!(self.signal("-STOP"), "kill -STOP redis-server");
    }

    /// Thaws a paused server (SIGCONT).
    pub fn resume(&self) {
        assert!(self.signal("-CONT"), "kill -CONT redis-server");
    }

    fn signal(&self, signal: &str) -> bool {
        let Some(child) = self.child.as_ref() else {
            return false;
        };
        Command::new("kill")
            .arg(signal)
            .arg(child.id().to_string())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Starts the server again on the same port (stopping it first if it runs) and waits
    /// until it accepts connections.
    pub fn restart(&mut self) {
        self.stop();
        let dir: PathBuf = self.dir.path().to_owned();
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", ""])
            .arg("--dir")
            .arg(&dir);
        if self.persistent {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        let mut child = cmd
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
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("redis-server on port {} exited: {status}", self.port);
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not accept connections within 10 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        self.child = Some(child);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // Thawed first, so that a paused server exits cleanly.
        self.signal("-CONT");
        self.stop();
    }
}
