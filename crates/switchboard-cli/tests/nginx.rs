//! The sample nginx configuration (`docs/nginx/switchboard.conf`) in front of two nodes on one
//! Redis: a WebSocket client and an SSE stream through nginx receive, with the same offsets,
//! publications made on the other node and through the server API behind nginx.
//!
//! Runs Debian's nginx (`/usr/sbin/nginx`, not as a daemon, everything in a temporary
//! directory, on a free port). Without nginx the test is skipped with a message, except under
//! CI (`CI` set), where a missing nginx is a failure: scripts/test installs it.

mod common;
mod protocol_common;

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{ServerProcess, http};
use protocol_common::{Client, SECRET, T, token};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[path = "../../switchboard-server/tests/support/redis_server.rs"]
mod redis_server;

use redis_server::RedisServer;

const NGINX: &str = "/usr/sbin/nginx";
const API_KEY: &str = "nginx-test-key-0123456789";
const SAMPLE: &str = include_str!("../../../docs/nginx/switchboard.conf");

/// nginx run from the sample, killed on drop.
struct Nginx {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Nginx {
    /// Renders the sample for `nodes` on a free port and waits until it accepts connections.
    fn start(nodes: &[&ServerProcess]) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let servers: String = nodes
            .iter()
            .map(|n| format!("        server {};\n", n.addr))
            .collect();
        // The sample's upstream lines are the ones naming 10.0.0.x: replaced by the nodes.
        let mut conf = String::new();
        let mut upstream_done = false;
        for line in SAMPLE.lines() {
            if line.trim_start().starts_with("server 10.0.0.") {
                if !upstream_done {
                    conf.push_str(&servers);
                    upstream_done = true;
                }
                continue;
            }
            if line.trim() == "listen 80;" {
                conf.push_str(&format!("        listen 127.0.0.1:{port};\n"));
                continue;
            }
            conf.push_str(&line.replace("/var/log/nginx/", &format!("{d}/")));
            conf.push('\n');
            if line.trim() == "http {" {
                for kind in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
                    conf.push_str(&format!("    {kind}_temp_path {d}/{kind};\n"));
                }
            }
        }
        assert!(upstream_done, "the sample has no upstream server line");
        assert!(
            conf.contains(&format!("listen 127.0.0.1:{port};")),
            "no listen line"
        );
        std::fs::write(dir.path().join("nginx.conf"), &conf).unwrap();
        let child = Command::new(NGINX)
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .arg("-g")
            .arg(format!("daemon off; pid {d}/nginx.pid;"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn nginx");
        let mut nginx = Nginx {
            child,
            port,
            _dir: dir,
        };
        // Nothing to await but the port: retry the connection until nginx listens.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = nginx.child.try_wait().unwrap() {
                let log = std::fs::read_to_string(nginx._dir.path().join("error.log"));
                panic!("nginx exited with {status}: {log:?}\nconfiguration:\n{conf}");
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not listen within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        nginx
    }

    fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }
}

impl Drop for Nginx {
    /// SIGTERM, not SIGKILL: the master stops its workers first (killed, it would leave them
    /// running).
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

fn node(redis: &RedisServer, dir: &Path) -> ServerProcess {
    let path = dir.join("switchboard.toml");
    let config = format!(
        "personal_rooms = false\n\
         trusted_proxies = [\"127.0.0.1\"]\n\
         [auth]\nsecret = \"{SECRET}\"\n\
         [[api.keys]]\nname = \"test\"\nkey = \"{API_KEY}\"\n\
         [namespaces.chat]\nsubscribe = \"anyone\"\njoin_leave = false\n"
    );
    std::fs::write(&path, config).unwrap();
    let url = redis.url();
    ServerProcess::start_with_env(
        &["--config", path.to_str().unwrap()],
        &[
            ("SWITCHBOARD_BROKER__KIND", "redis"),
            ("SWITCHBOARD_BROKER__URL", url.as_str()),
        ],
    )
}

/// An SSE stream read line by line (HTTP/1.0: nginx streams it unchunked until the end).
struct Sse {
    lines: tokio::io::Lines<BufReader<tokio::net::TcpStream>>,
}

impl Sse {
    async fn open(addr: std::net::SocketAddr, room: &str, user: &str) -> Sse {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "GET /sse?room={room} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\r\n",
            token(user)
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut sse = Sse {
            lines: BufReader::new(stream).lines(),
        };
        let status = sse.line().await;
        assert!(status.contains(" 200 "), "SSE through nginx: {status}");
        // The welcome event comes once the stream is subscribed.
        while sse.line().await != "event: welcome" {}
        sse
    }

    async fn line(&mut self) -> String {
        tokio::time::timeout(T, self.lines.next_line())
            .await
            .expect("an SSE line in time")
            .unwrap()
            .expect("the SSE stream ended")
    }

    /// The next `message` event's data.
    async fn message(&mut self) -> Value {
        loop {
            let line = self.line().await;
            if let Some(data) = line.strip_prefix("data: ") {
                let v: Value = serde_json::from_str(data).unwrap();
                if v["type"] == "message" {
                    return v;
                }
            }
        }
    }
}

/// docs/scaling.md shows the sample in full: it must be the tested file.
#[test]
fn scaling_doc_shows_the_tested_sample() {
    let doc = include_str!("../../../docs/scaling.md");
    assert!(
        doc.contains(&format!("```nginx\n{SAMPLE}```")),
        "docs/scaling.md's nginx block differs from docs/nginx/switchboard.conf"
    );
}

fn nginx_present() -> bool {
    if Path::new(NGINX).exists() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "{NGINX} is missing and CI is set: install Debian's nginx-light (scripts/test does)"
        );
    }
    eprintln!("SKIPPED: {NGINX} is not installed (apt-get install nginx-light); not in CI");
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_sse_and_api_through_the_sample_nginx_config() {
    if !nginx_present() {
        return;
    }
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (n1, n2) = (node(&redis, dir.path()), node(&redis, dir.path()));
    let nginx = Nginx::start(&[&n1, &n2]);

    let mut ws = Client::connect(&format!("ws://{}/ws", nginx.addr()), Some(&token("alice"))).await;
    let sub = ws.subscribe("chat:r").await;
    let mut sse = Sse::open(nginx.addr(), "chat:r", "carol").await;
    // A publisher on node 2 directly, and the server API through nginx.
    let mut direct = Client::connect(&n2.ws_url("/ws"), Some(&token("bob"))).await;
    direct.subscribe("chat:r").await;
    let first = direct.publish("chat:r", json!({"n": 1})).await;
    let body = json!({"room": "chat:r", "data": {"n": 2}}).to_string();
    let (status, reply) = http(
        nginx.addr(),
        &format!(
            "POST /api/publish HTTP/1.1\r\nHost: x\r\nX-API-Key: {API_KEY}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    );
    assert_eq!(status, 200, "{reply}");
    let second: Value =
        serde_json::from_str(&reply[reply.find("\r\n\r\n").unwrap() + 4..]).unwrap();

    let base = sub["offset"].as_u64().unwrap();
    assert_eq!(first["offset"].as_u64(), Some(base + 1), "{first}");
    assert_eq!(second["offset"].as_u64(), Some(base + 2), "{second}");
    for n in 1..=2u64 {
        let w = ws.push("message", "chat:r").await;
        let s = sse.message().await;
        assert_eq!(w["offset"].as_u64(), Some(base + n), "{w}");
        assert_eq!(
            (s["offset"].clone(), s["epoch"].clone()),
            (w["offset"].clone(), w["epoch"].clone()),
            "{s} {w}"
        );
        assert_eq!(
            (w["data"]["n"].as_u64(), s["data"]["n"].as_u64()),
            (Some(n), Some(n))
        );
    }

    // /metrics and /readyz pass through too.
    assert_eq!(common::get(nginx.addr(), "/readyz").0, 200);
    let (status, metrics) = common::get(nginx.addr(), "/metrics");
    assert_eq!(status, 200, "{metrics}");
}
