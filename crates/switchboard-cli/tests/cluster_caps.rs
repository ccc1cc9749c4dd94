//! `limits.connections_per_user` and `limits.connections_per_ip` count across every
//! `switchboard serve` on one Redis (docs/scaling.md, "Connection limits"): a connection
//! refused on one node for the others' connections, let in when one closes or when the node
//! holding them is killed, and admitted on the node's own counts while Redis is down. Each
//! test starts its own `redis-server` on a free port.

mod common;
mod protocol_common;

use std::time::{Duration, Instant};

use common::{ServerProcess, get, http};
use protocol_common::{Client, SECRET, T, token};
use switchboard_client::{WsOptions, WsStream};
use switchboard_protocol::wire;

#[path = "../../switchboard-server/tests/support/redis_server.rs"]
mod redis_server;

use redis_server::RedisServer;

/// One node: a `switchboard serve` on the test's Redis.
struct Node {
    process: ServerProcess,
    _dir: tempfile::TempDir,
}

impl Node {
    fn start(redis: &RedisServer, env: &[(&str, &str)]) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("switchboard.toml");
        let config = format!("personal_rooms = false\n[auth]\nsecret = \"{SECRET}\"\n");
        std::fs::write(&path, config).unwrap();
        let url = redis.url();
        let mut vars = vec![
            ("SWITCHBOARD_BROKER__KIND", "redis"),
            ("SWITCHBOARD_BROKER__URL", url.as_str()),
            // A killed node's connections expire within a second.
            ("SWITCHBOARD_BROKER__PRESENCE_TTL", "1s"),
            ("SWITCHBOARD_BROKER__SWEEP_INTERVAL", "200ms"),
            ("SWITCHBOARD_BROKER__TIMEOUT", "500ms"),
        ];
        vars.extend_from_slice(env);
        let process = ServerProcess::start_with_env(&["--config", path.to_str().unwrap()], &vars);
        Node { process, _dir: dir }
    }

    /// `switchboard_admissions_unchecked_total` from the node's `/metrics`.
    fn unchecked(&self) -> u64 {
        let (status, text) = get(self.process.addr, "/metrics");
        assert_eq!(status, 200, "{text}");
        text.lines()
            .find_map(|l| l.strip_prefix("switchboard_admissions_unchecked_total "))
            .unwrap_or_else(|| panic!("no switchboard_admissions_unchecked_total in {text}"))
            .parse()
            .unwrap()
    }

    async fn connect(&self, user: &str) -> Client {
        Client::connect(&self.process.ws_url("/ws"), Some(&token(user))).await
    }

    /// Connects as `user`, or the status of the refused upgrade.
    async fn try_connect(&self, user: &str) -> Result<WsStream, u16> {
        let mut opts = WsOptions {
            deflate: false,
            ..Default::default()
        };
        opts.headers
            .push(("Authorization".into(), format!("Bearer {}", token(user))));
        let url = self.process.ws_url("/ws");
        match tokio::time::timeout(T, WsStream::connect(&url, &opts))
            .await
            .expect("handshake within the timeout")
        {
            Ok(ws) => Ok(ws),
            Err(e) => Err(e
                .http_status()
                .unwrap_or_else(|| panic!("connect to {url}: {e}"))),
        }
    }

    /// Polls until a connection of `user` is admitted (the release or the expiry of the
    /// others' connections is in another process); fails after `within`.
    async fn connect_within(&self, user: &str, within: Duration) -> WsStream {
        let deadline = Instant::now() + within;
        loop {
            match self.try_connect(user).await {
                Ok(ws) => return ws,
                Err(429) => {
                    assert!(
                        Instant::now() < deadline,
                        "{user} still refused after {within:?}"
                    );
                    // Below the new-connections rate per IP of the defaults (20/s).
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(status) => panic!("connect as {user}: {status}"),
            }
        }
    }

    /// An upgrade as `user` that must be refused with 429 and `reason`.
    fn assert_refused(&self, user: &str, reason: &str) {
        let (status, text) = http(
            self.process.addr,
            &format!(
                "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
                 Sec-WebSocket-Protocol: {}\r\nAuthorization: Bearer {}\r\n\r\n",
                wire::SUBPROTOCOL,
                token(user)
            ),
        );
        assert_eq!(status, 429, "{text}");
        assert!(text.contains(&format!("\"{reason}\"")), "{text}");
        assert!(text.to_ascii_lowercase().contains("retry-after:"), "{text}");
    }

    /// An SSE stream as `user` that must be refused with 429 and `reason`.
    fn assert_sse_refused(&self, user: &str, reason: &str) {
        let (status, text) = http(
            self.process.addr,
            &format!(
                "GET /sse?room=r HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\
                 Authorization: Bearer {}\r\n\r\n",
                token(user)
            ),
        );
        assert_eq!(status, 429, "{text}");
        assert!(text.contains(&format!("\"{reason}\"")), "{text}");
    }

    fn ready(&self) -> u16 {
        get(self.process.addr, "/readyz").0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_user_count_across_nodes_and_a_killed_nodes_expire() {
    let redis = RedisServer::start();
    let env = [("SWITCHBOARD_LIMITS__CONNECTIONS_PER_USER", "2")];
    let (mut n1, n2) = (Node::start(&redis, &env), Node::start(&redis, &env));
    let a1 = n1.connect("ursula").await;
    let a2 = n1.connect("ursula").await;
    // n2 holds none of hers: the cluster's count refuses, WebSocket and SSE alike.
    n2.assert_refused("ursula", "connections_per_user");
    n2.assert_sse_refused("ursula", "connections_per_user");
    // Another user is counted apart.
    let _victor = n2.connect("victor").await;

    // One closed on n1: one more on n2, and then the cap again.
    drop(a1);
    let b1 = n2.connect_within("ursula", T).await;
    n2.assert_refused("ursula", "connections_per_user");
    n1.assert_refused("ursula", "connections_per_user");

    // SIGKILL n1, which holds a2: nobody releases it, and it counts until it expires.
    n1.process.child.kill().unwrap();
    n1.process.child.wait().unwrap();
    let killed = Instant::now();
    n2.assert_refused("ursula", "connections_per_user");
    let _b2 = n2.connect_within("ursula", T).await;
    assert!(
        killed.elapsed() < Duration::from_secs(2),
        "let in {:?} after the kill, beyond presence_ttl (1 s)",
        killed.elapsed()
    );
    // Two on n2 now: the cap holds there too.
    n2.assert_refused("ursula", "connections_per_user");
    drop((a2, b1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_ip_count_across_nodes() {
    let redis = RedisServer::start();
    let env = [("SWITCHBOARD_LIMITS__CONNECTIONS_PER_IP", "2")];
    let (n1, n2) = (Node::start(&redis, &env), Node::start(&redis, &env));
    // Every client of the test is 127.0.0.1.
    let a = n1.connect("alice").await;
    let _b = n2.connect("bob").await;
    n2.assert_refused("carol", "connections_per_ip");
    n1.assert_refused("carol", "connections_per_ip");
    drop(a);
    let _c = n2.connect_within("carol", T).await;
    n2.assert_refused("dave", "connections_per_ip");
}

/// ZCARD of a count in the test's Redis.
async fn members(redis: &RedisServer, key: &str) -> usize {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("ZCARD")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_admits_on_the_nodes_own_counts_and_the_counts_come_back() {
    let mut redis = RedisServer::start();
    let env = [("SWITCHBOARD_LIMITS__CONNECTIONS_PER_USER", "2")];
    let (n1, n2) = (Node::start(&redis, &env), Node::start(&redis, &env));
    let a1 = n1.connect("ursula").await;
    assert_eq!(members(&redis, "sb:{u:ursula}:n").await, 1);
    assert_eq!(n1.unchecked(), 0);

    redis.stop();
    let deadline = Instant::now() + T;
    while (n1.ready(), n2.ready()) != (503, 503) {
        assert!(Instant::now() < deadline, "/readyz did not go to 503");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Fail open: admitted on each node's own count, which still caps.
    let a2 = n1.connect("ursula").await;
    n1.assert_refused("ursula", "connections_per_user");
    let b1 = n2.connect("ursula").await;
    // Each count (a connection's IP's, then its user's) was taken on the node alone, and
    // /metrics says so: n1 admitted a2 (2) and counted the refused one's IP (1), n2 b1 (2).
    assert_eq!((n1.unchecked(), n2.unchecked()), (3, 2));

    // Redis back without its data: the nodes add their connections again within a third
    // of presence_ttl, and the cluster's count refuses what is beyond it.
    redis.restart();
    let deadline = Instant::now() + T;
    while members(&redis, "sb:{u:ursula}:n").await != 3 {
        assert!(Instant::now() < deadline, "the counts were not re-asserted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    n2.assert_refused("ursula", "connections_per_user");
    drop((a1, a2));
    drop(b1);
}
