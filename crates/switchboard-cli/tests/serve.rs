//! `switchboard serve`: health, the echo route, handshake refusals and graceful shutdown,
//! against the real binary over loopback.

mod common;
mod protocol_common;

use std::time::{Duration, Instant};

use common::{ServerProcess, get, http};
use protocol_common::{OP_CLOSE, RawWs, T, TestServer};
use switchboard_client::{WsOptions, WsStream};
use switchboard_protocol::{CloseCode, CloseFrame, codec::Message, frame::OpCode};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

#[test]
fn healthz_readyz_and_unknown_routes() {
    let server = ServerProcess::start(&[]);
    let (status, body) = get(server.addr, "/healthz");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#"{"status":"ok"}"#), "{body}");
    assert_eq!(get(server.addr, "/readyz").0, 200);
    let (status, body) = get(server.addr, "/no/such/route");
    assert_eq!(status, 404);
    assert!(body.contains("not_found"), "{body}");
}

#[test]
fn no_config_start_says_development_mode() {
    let server = ServerProcess::start(&[]);
    let warning = server
        .startup
        .iter()
        .find(|l| l.contains("development mode"))
        .unwrap_or_else(|| {
            panic!(
                "no development-mode line before 'listening': {:#?}",
                server.startup
            )
        });
    assert!(warning.contains("WARN"), "a warning: {warning}");
    assert!(
        warning.contains("do not expose this server")
            && warning.contains("switchboard token --user"),
        "says what it means and how to get a token: {warning}"
    );
    assert!(
        warning.contains("secret_file=") && warning.contains("dev-secret"),
        "names the secret file: {warning}"
    );
    drop(server);

    // A configured server is not in development mode and says nothing of it.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchboard.toml");
    std::fs::write(&path, "[auth]\nanonymous = true\n").unwrap();
    let configured = ServerProcess::start(&["--config", path.to_str().unwrap()]);
    assert!(
        !configured
            .startup
            .iter()
            .any(|l| l.contains("development mode")),
        "{:#?}",
        configured.startup
    );
}

#[test]
fn a_missing_config_file_is_named_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--config",
            "/nonexistent/switchboard.toml",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/switchboard.toml"), "{err}");
}

#[test]
fn config_errors_name_the_key_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[websocket]\nmax_mesage_size = 5\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("websocket.max_mesage_size") && err.contains("bad.toml"),
        "{err}"
    );
}

#[test]
fn refusals_have_documented_statuses() {
    let server = ServerProcess::start(&["--echo", "/echo"]);
    let addr = server.addr;
    let (status, body) = get(addr, "/echo");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("bad_request"), "{body}");
    let (status, body) = http(
        addr,
        &format!(
            "GET /echo HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n"
        ),
    );
    assert_eq!(status, 426, "{body}");
    assert!(
        body.to_ascii_lowercase()
            .contains("sec-websocket-version: 13"),
        "{body}"
    );
    let (status, body) = http(
        addr,
        &format!(
            "GET /echo HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: short\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ),
    );
    assert_eq!(status, 400, "{body}");
    // An otherwise valid upgrade over HTTP/1.0 cannot be taken over: 400, not 500.
    let (status, body) = http(
        addr,
        &format!(
            "GET /echo HTTP/1.0\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("HTTP/1.1"), "{body}");
}

#[tokio::test]
async fn echo_round_trips_text_binary_and_large_messages_with_and_without_deflate() {
    let server = ServerProcess::start(&["--echo", "/echo", "--max-message-size", "4MiB"]);
    for deflate in [false, true] {
        let opts = WsOptions {
            deflate,
            ..Default::default()
        };
        let mut ws = WsStream::connect(&server.ws_url("/echo"), &opts)
            .await
            .unwrap();
        assert_eq!(ws.accepted().deflate.is_some(), deflate);
        ws.send_text("héllo wörld").await.unwrap();
        assert_eq!(
            ws.recv().await.unwrap(),
            Some(Message::Text("héllo wörld".into()))
        );
        ws.send(OpCode::Binary, &[0, 1, 2, 255]).await.unwrap();
        match ws.recv().await.unwrap() {
            Some(Message::Binary(b)) => assert_eq!(&b[..], &[0, 1, 2, 255]),
            other => panic!("{other:?}"),
        }
        let big: String = "switchboard ".repeat(200_000);
        ws.send_text(&big).await.unwrap();
        match ws.recv().await.unwrap() {
            Some(Message::Text(t)) => assert_eq!(t.as_str(), big),
            other => panic!("{other:?}"),
        }
        ws.close(Some(&CloseFrame::new(CloseCode::NORMAL, "bye")))
            .await
            .unwrap();
        match ws.recv().await.unwrap() {
            Some(Message::Close(Some(f))) => assert_eq!(f.code, CloseCode::NORMAL),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            ws.recv().await.unwrap(),
            None,
            "server closes TCP after the close handshake"
        );
    }
}

#[tokio::test]
async fn oversized_message_closes_with_1009() {
    let server = ServerProcess::start(&["--echo", "/echo", "--max-message-size", "1024"]);
    let mut ws = WsStream::connect(&server.ws_url("/echo"), &WsOptions::default())
        .await
        .unwrap();
    ws.send_text(&"x".repeat(2000)).await.unwrap();
    match ws.recv().await.unwrap() {
        Some(Message::Close(Some(f))) => assert_eq!(f.code, CloseCode::TOO_BIG),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn sigterm_closes_websockets_with_1001_and_exits_0() {
    let mut server = ServerProcess::start(&["--echo", "/echo"]);
    let mut ws = WsStream::connect(&server.ws_url("/echo"), &WsOptions::default())
        .await
        .unwrap();
    ws.send_text("before").await.unwrap();
    assert!(matches!(ws.recv().await.unwrap(), Some(Message::Text(_))));
    let pid = server.child.id();
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
    match ws.recv().await.unwrap() {
        Some(Message::Close(Some(f))) => assert_eq!(f.code, CloseCode::GOING_AWAY),
        other => panic!("{other:?}"),
    }
    ws.close(Some(&CloseFrame::new(CloseCode::GOING_AWAY, "")))
        .await
        .unwrap();
    let status = tokio::task::spawn_blocking(move || server.child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

/// A configuration with the echo route (and anonymous access: a server needs some key).
const ECHO: &str = "[auth]\nanonymous = true\n[echo]\npath = \"/echo\"\n";

/// Sends SIGTERM to the server.
fn sigterm(server: &ServerProcess) {
    let status = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(server.child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -TERM failed");
}

/// Reads the server's close frame on `ws` and returns its code.
async fn close_code(ws: &mut RawWs) -> u16 {
    let (op, payload) = ws.frame(T).await.expect("a close frame, not EOF");
    assert_eq!(
        op, OP_CLOSE,
        "expected a close frame, got opcode {op} {payload:?}"
    );
    u16::from_be_bytes([payload[0], payload[1]])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_past_the_drain_timeout_exits_1() {
    let mut s = TestServer::start(&format!("{ECHO}[shutdown]\ndrain_timeout = \"1s\"\n"));
    // This connection never answers the server's close frame: only the transport's own close
    // timeout (5 s) would end it, well after the 1 s drain timeout.
    let mut ws = RawWs::connect(s.addr(), "/echo", &[], None).await;
    let signalled = Instant::now();
    sigterm(&s.process);
    assert_eq!(close_code(&mut ws).await, 1001);
    let status = tokio::task::block_in_place(|| s.process.child.wait().unwrap());
    assert_eq!(
        status.code(),
        Some(1),
        "a connection was still open at the drain deadline: exit 1"
    );
    assert!(
        signalled.elapsed() >= Duration::from_secs(1),
        "exited after {:?}, before the drain timeout",
        signalled.elapsed()
    );
    s.process.wait_log("drain timeout passed");
    drop(ws);
}

/// During the drain the listener is closed and idle keep-alive connections are closed without
/// an answer, so an upgrade request sent then is never served (docs/protocol.md, Decisions):
/// the 503 `shutting_down` only answers a request the server had already read when the
/// shutdown began, which no client can arrange.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_the_drain_the_listener_is_closed_and_idle_connections_get_no_answer() {
    let mut s = TestServer::start(ECHO);
    let addr = s.addr();
    // A keep-alive HTTP connection that has been served once and is idle.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answered = Vec::new();
    while !String::from_utf8_lossy(&answered).contains(r#"{"status":"ok"}"#) {
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(T, idle.read(&mut chunk))
            .await
            .expect("the /healthz answer")
            .unwrap();
        assert!(n > 0, "closed before answering /healthz: {answered:?}");
        answered.extend_from_slice(&chunk[..n]);
    }
    assert!(
        !String::from_utf8_lossy(&answered)
            .to_ascii_lowercase()
            .contains("connection: close"),
        "the connection is kept alive: {}",
        String::from_utf8_lossy(&answered)
    );
    // A WebSocket that keeps the server draining until it answers the close.
    let mut ws = RawWs::connect(addr, "/echo", &[], None).await;
    sigterm(&s.process);
    assert_eq!(close_code(&mut ws).await, 1001, "the drain has begun");

    // The idle connection is closed without a word.
    let mut rest = Vec::new();
    let end = tokio::time::timeout(T, idle.read_to_end(&mut rest))
        .await
        .expect("the idle keep-alive connection is closed during the drain");
    assert!(
        rest.is_empty(),
        "nothing is sent on it ({end:?}): {}",
        String::from_utf8_lossy(&rest)
    );
    // An upgrade request on a new connection is never answered. The listener closes right
    // after the shutdown signal reaches the connections, so a connect may still race with it:
    // it then lands in the accept queue, which nothing reads any more, and is reset when the
    // listener goes. After that, connects are refused.
    let upgrade = format!(
        "GET /echo HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    for attempt in 1..=2 {
        match TcpStream::connect(addr).await {
            Err(e) => {
                assert_eq!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionRefused,
                    "a new connection during the drain: {e}"
                );
                break;
            }
            Ok(mut late) => {
                assert_eq!(
                    attempt, 1,
                    "connected again after a reset: the listener is open"
                );
                let _ = late.write_all(upgrade.as_bytes()).await;
                let mut answer = Vec::new();
                let end = tokio::time::timeout(T, late.read_to_end(&mut answer))
                    .await
                    .expect("a connection made as the listener closed is closed");
                assert!(
                    answer.is_empty(),
                    "an upgrade during the drain was answered ({end:?}): {}",
                    String::from_utf8_lossy(&answer)
                );
            }
        }
    }

    // The WebSocket answers the close (masked, code 1001): the drain ends and the exit is 0.
    ws.stream
        .write_all(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe9])
        .await
        .unwrap();
    let status = tokio::task::block_in_place(|| s.process.child.wait().unwrap());
    assert_eq!(status.code(), Some(0));
}
