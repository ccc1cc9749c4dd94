//! `switchboard serve`: health, the echo route, handshake refusals and graceful shutdown,
//! against the real binary over loopback.

mod common;

use common::{ServerProcess, get, http};
use switchboard_client::{WsOptions, WsStream};
use switchboard_protocol::{CloseCode, CloseFrame, codec::Message, frame::OpCode};

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
    let _ = get(server.addr, "/healthz");
    drop(server);
    // The warning is printed before "listening"; start again and look for it from the start.
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"));
    let dir = tempfile::tempdir().unwrap();
    let out = cmd
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
