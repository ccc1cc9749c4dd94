//! `switchboard bench` against the real binary over loopback. Runs are short (`--duration 1
//! --warmup 0`) and the assertions are about behaviour (counts, ratios, fields), never speed.

mod common;

use std::{
    net::TcpListener,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use common::{ServerProcess, bench, read_json, text};
use serde_json::Value;

const SHORT: [&str; 5] = ["--duration", "1", "--warmup", "0", "--quiet"];

#[test]
fn echo_measures_round_trips_and_server_cpu() {
    let server = ServerProcess::start(&["--echo", "/echo"]);
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("echo.json");
    let png = dir.path().join("echo.png");
    let pid = server.child.id().to_string();
    let url = server.ws_url("/echo");
    let out = bench(
        &[
            &[
                "echo",
                "--url",
                &url,
                "--connections",
                "8",
                "--in-flight",
                "4",
            ][..],
            &[
                "--size",
                "100",
                "--server-pid",
                &pid,
                "--name",
                "switchboard",
            ],
            &[
                "--json",
                json.to_str().unwrap(),
                "--png",
                png.to_str().unwrap(),
            ],
            &SHORT,
        ]
        .concat(),
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("msgs/s") && stdout.contains("p99.9"),
        "{stdout}"
    );

    let v = read_json(&json);
    assert_eq!(v["format"], "switchboard-bench/1");
    assert_eq!(v["scenario"], "echo");
    assert_eq!(v["name"], "switchboard");
    assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
    assert!(v["machine"]["nproc"].as_u64().unwrap() >= 1);
    assert!(
        v["command_line"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "echo")
    );
    assert_eq!(v["config"]["params"]["in_flight"], 4);
    let r = &v["results"];
    assert_eq!(r["connections"], 8);
    assert!(r["throughput"].as_f64().unwrap() > 0.0, "{r}");
    assert_eq!(r["throughput_unit"], "msgs/s");
    assert_eq!(r["errors"], 0, "{r}");
    assert_eq!(r["failed_connections"], 0);
    assert_eq!(r["lost_connections"], 0);
    // Everything sent came back once the run drained.
    assert!(r["sent"].as_u64().unwrap() > 0);
    assert_eq!(r["received"], r["sent"], "{r}");
    assert_eq!(r["delivery_ratio"], 1.0);
    assert_eq!(r["latency_kind"], "round_trip");
    let lat = &r["latency_us"];
    assert!(lat["count"].as_u64().unwrap() > 0, "{lat}");
    assert!(lat["p50"].as_f64().unwrap() <= lat["p99"].as_f64().unwrap());
    assert!(lat["p99"].as_f64().unwrap() <= lat["p99_9"].as_f64().unwrap());
    assert!(r["server"]["cpu_percent"].is_number(), "{r}");
    assert_eq!(r["server"]["pids"][0], server.child.id());
    assert!(r["client"]["cpu_percent"].is_number(), "{r}");

    let png = std::fs::read(&png).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
}

#[test]
fn protocol_fanout_delivers_every_publication_to_every_subscriber() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("dev-secret");
    let server = ServerProcess::start_with_env(
        &[],
        &[("SWITCHBOARD_DEV_SECRET_FILE", secret.to_str().unwrap())],
    );
    let env = [("SWITCHBOARD_DEV_SECRET_FILE", secret.as_path())];
    let url = server.ws_url("/ws");
    let pid = server.child.id().to_string();
    for (flow, json) in [
        (["--window", "4"], dir.path().join("window.json")),
        (["--rate", "400"], dir.path().join("rate.json")),
    ] {
        let out = bench(
            &[
                &[
                    "fanout",
                    "--url",
                    &url,
                    "--subscribers",
                    "6",
                    "--publishers",
                    "2",
                ][..],
                &flow,
                &["--server-pid", &pid, "--json", json.to_str().unwrap()],
                &SHORT,
            ]
            .concat(),
            &env,
        );
        assert!(out.status.success(), "{flow:?}: {}", text(&out));
        let v = read_json(&json);
        let r = &v["results"];
        assert_eq!(v["scenario"], "fanout");
        assert_eq!(v["config"]["params"]["mode"], "protocol");
        assert_eq!(r["connections"], 8, "{r}");
        assert_eq!(r["errors"], 0, "{r}");
        let published = r["sent"].as_u64().unwrap();
        assert!(published > 0, "{r}");
        assert!(
            r["received"].as_u64().unwrap() >= published * 6,
            "lost deliveries: {r}"
        );
        assert_eq!(r["expected"].as_u64().unwrap(), published * 6);
        assert_eq!(r["delivery_ratio"], 1.0, "{r}");
        assert_eq!(r["out_of_order"], 0, "{r}");
        assert_eq!(r["throughput_unit"], "deliveries/s");
        assert!(r["throughput"].as_f64().unwrap() > 0.0);
        assert_eq!(r["latency_kind"], "publish_to_deliver");
        assert!(r["latency_us"]["count"].as_u64().unwrap() > 0, "{r}");
    }
}

#[test]
fn api_fanout_publishes_through_the_server_api() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("dev-secret");
    let server = ServerProcess::start_with_env(
        &[],
        &[("SWITCHBOARD_DEV_SECRET_FILE", secret.to_str().unwrap())],
    );
    // The API key comes from the development key file beside the secret.
    let env = [("SWITCHBOARD_DEV_SECRET_FILE", secret.as_path())];
    let url = server.ws_url("/ws");
    for (subscribers, transport, unit, latency) in [
        ("0", "ws", "publishes/s", "publish_to_response"),
        ("3", "ws", "deliveries/s", "publish_to_deliver"),
        ("3", "sse", "deliveries/s", "publish_to_deliver"),
    ] {
        let json = dir
            .path()
            .join(format!("api-{subscribers}-{transport}.json"));
        let out = bench(
            &[
                &[
                    "fanout",
                    "--mode",
                    "api",
                    "--url",
                    &url,
                    "--subscribers",
                    subscribers,
                    "--publishers",
                    "4",
                    "--transport",
                    transport,
                    "--json",
                    json.to_str().unwrap(),
                ][..],
                &SHORT,
            ]
            .concat(),
            &env,
        );
        assert!(
            out.status.success(),
            "{subscribers} {transport}: {}",
            text(&out)
        );
        let v = read_json(&json);
        let r = &v["results"];
        assert_eq!(v["config"]["params"]["mode"], "api");
        assert_eq!(r["errors"], 0, "{r}");
        let published = r["sent"].as_u64().unwrap();
        assert!(published > 0, "{r}");
        let per = subscribers.parse::<u64>().unwrap().max(1);
        assert_eq!(r["expected"].as_u64().unwrap(), published * per, "{r}");
        assert_eq!(r["delivery_ratio"], 1.0, "{r}");
        assert_eq!(r["out_of_order"], 0, "{r}");
        assert_eq!(r["throughput_unit"], unit);
        assert_eq!(r["latency_kind"], latency);
        assert!(r["latency_us"]["count"].as_u64().unwrap() > 0, "{r}");
    }
    // A wrong key is every publish refused, and the run says so.
    let out = bench(
        &[
            &[
                "fanout",
                "--mode",
                "api",
                "--url",
                &url,
                "-n",
                "0",
                "-p",
                "1",
                "--api-key",
                "wrong",
            ][..],
            &SHORT,
        ]
        .concat(),
        &env,
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("401"), "{}", text(&out));
}

#[test]
fn raw_fanout_through_the_servers_broadcast_route() {
    let server = ServerProcess::start(&["--raw-fanout", "/fanout"]);
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("raw.json");
    let url = server.ws_url("/fanout");
    let out = bench(
        &[
            &["fanout", "--mode", "raw", "--url", &url][..],
            &["--subscribers", "5", "--publishers", "2", "--window", "4"],
            &["--json", json.to_str().unwrap()],
            &SHORT,
        ]
        .concat(),
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    let v = read_json(&json);
    let r = &v["results"];
    assert_eq!(v["config"]["params"]["mode"], "raw");
    assert_eq!(v["config"]["params"]["auth"], "none");
    let published = r["sent"].as_u64().unwrap();
    assert!(published > 0, "{r}");
    assert!(r["received"].as_u64().unwrap() >= published * 5, "{r}");
    assert_eq!(r["delivery_ratio"], 1.0, "{r}");
    assert_eq!(r["out_of_order"], 0, "{r}");
}

#[test]
fn fanout_without_a_token_or_secret_says_how_to_get_one() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-secret");
    let out = bench(
        &[&["fanout", "--url", "ws://127.0.0.1:9/ws"][..], &SHORT].concat(),
        &[("SWITCHBOARD_DEV_SECRET_FILE", missing.as_path())],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--token") && err.contains("no-such-secret"),
        "{err}"
    );
}

/// A server with the echo route whose development secret (for the tokens) is kept in `dir`.
fn dev_server(dir: &std::path::Path) -> (ServerProcess, std::path::PathBuf) {
    let secret = dir.join("dev-secret");
    let server = ServerProcess::start_with_env(
        &["--echo", "/echo"],
        &[("SWITCHBOARD_DEV_SECRET_FILE", secret.to_str().unwrap())],
    );
    (server, secret)
}

/// Runs `bench connect ARGS… --url URL` against `server` (its development secret in
/// `secret`, its CPU and memory read from its pid), writing the report to `json`; asserts it
/// succeeded and returns its stdout and the report.
fn bench_connect(
    server: &ServerProcess,
    secret: &Path,
    url: &str,
    args: &[&str],
    json: &Path,
) -> (String, Value) {
    let pid = server.child.id().to_string();
    let out = bench(
        &[
            &["connect", "--url", url][..],
            args,
            &["--server-pid", &pid, "--json", json.to_str().unwrap()],
            &SHORT,
        ]
        .concat(),
        &[("SWITCHBOARD_DEV_SECRET_FILE", secret)],
    );
    assert!(out.status.success(), "{url} {args:?}: {}", text(&out));
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        read_json(json),
    )
}

#[test]
fn connect_reports_memory_per_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (server, secret) = dev_server(dir.path());
    // Plain connections to the echo route, then authenticated ones subscribed to a room.
    for (url, extra, json) in [
        (
            server.ws_url("/echo"),
            vec![],
            dir.path().join("plain.json"),
        ),
        (
            server.ws_url("/ws"),
            vec!["--subscribe", "bench:idle"],
            dir.path().join("subscribed.json"),
        ),
    ] {
        let args = [&["--connections", "50"][..], &extra].concat();
        let (stdout, v) = bench_connect(&server, &secret, &url, &args, &json);
        assert!(stdout.contains("memory per connection"), "{stdout}");
        let r = &v["results"];
        assert_eq!(v["scenario"], "connect");
        assert_eq!(r["connections"], 50, "{r}");
        assert_eq!(r["failed_connections"], 0, "{r}");
        assert!(r["connections_per_s"].as_f64().unwrap() > 0.0);
        assert_eq!(r["latency_kind"], "handshake");
        assert_eq!(r["latency_us"]["count"], 50);
        let s = &r["server"];
        assert!(s["rss_before_bytes"].as_u64().unwrap() > 0, "{s}");
        assert!(s["rss_after_bytes"].as_u64().unwrap() > 0, "{s}");
        assert!(s["memory_per_connection_bytes"].is_number(), "{s}");
    }
}

/// `connect --deflate`: every connection offers permessage-deflate and the server agrees on
/// each (the welcome then arrives compressed and is skipped). The room's name is long enough
/// that the subscribe reply is over the server's 128-byte compression threshold, so it
/// arrives compressed too and must be inflated to be recognised.
#[test]
fn connect_with_deflate_negotiates_it_on_every_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (server, secret) = dev_server(dir.path());
    let long_room = format!("bench:{}", "deflate".repeat(12));
    for (url, extra, json) in [
        (server.ws_url("/echo"), vec![], dir.path().join("echo.json")),
        (
            server.ws_url("/ws"),
            vec!["--subscribe", "bench:idle"],
            dir.path().join("subscribed.json"),
        ),
        (
            server.ws_url("/ws"),
            vec!["--subscribe", long_room.as_str()],
            dir.path().join("long-room.json"),
        ),
    ] {
        let args = [&["--deflate", "--connections", "10"][..], &extra].concat();
        let (stdout, v) = bench_connect(&server, &secret, &url, &args, &json);
        assert!(
            stdout.contains("deflate negotiated on 10 of 10 connections"),
            "{stdout}"
        );
        let r = &v["results"];
        assert_eq!(v["format"], "switchboard-bench/1");
        assert_eq!(v["config"]["params"]["deflate"], true);
        assert_eq!(r["connections"], 10, "{r}");
        assert_eq!(r["failed_connections"], 0, "{r}");
        assert_eq!(r["lost_connections"], 0, "{r}");
        assert_eq!(r["deflate_negotiated"], 10, "{r}");
        assert!(
            r["server"]["memory_per_connection_bytes"].is_number(),
            "{r}"
        );
    }

    // Without the flag nothing is offered: the field is absent (null), the param false.
    let json = dir.path().join("plain.json");
    let (_, v) = bench_connect(
        &server,
        &secret,
        &server.ws_url("/echo"),
        &["-c", "2"],
        &json,
    );
    assert_eq!(v["config"]["params"]["deflate"], false);
    assert!(v["results"]["deflate_negotiated"].is_null(), "{v}");

    // --deflate conflicts with --socketio, and other scenarios do not take it.
    for args in [
        vec!["connect", "--deflate", "--socketio"],
        vec!["echo", "--deflate"],
    ] {
        let out = bench(&[&args[..], &SHORT].concat(), &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
    }
}

#[test]
fn non_loopback_targets_are_refused_before_connecting() {
    // A local listener as the first URL: if the bench connected anywhere before checking
    // every URL, this listener would see it.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let local = format!("ws://{}/echo", listener.local_addr().unwrap());
    for bad in [
        "ws://10.1.2.3/echo",
        "ws://192.168.0.1:8080/ws",
        "ws://example.com/echo",
        "wss://127.0.0.1/echo",
    ] {
        let started = Instant::now();
        let out = bench(
            &[&["echo", "--url", &local, "--url", bad][..], &SHORT].concat(),
            &[],
        );
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", text(&out));
        assert!(started.elapsed() < Duration::from_secs(10));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(bad), "{err}");
        assert!(err.contains("loopback") || err.contains("wss"), "{err}");
        assert!(out.stdout.is_empty(), "{}", text(&out));
    }
    assert!(
        listener.accept().is_err(),
        "the bench connected before refusing"
    );
}

#[test]
fn more_connections_than_the_limits_allow_are_refused_up_front() {
    // Far past any open-file limit or the ephemeral ports of 16 source addresses.
    let started = Instant::now();
    let out = bench(
        &[
            &["connect", "--url", "ws://127.0.0.1:9/echo"][..],
            &["--connections", "5000000"],
            &SHORT,
        ]
        .concat(),
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(started.elapsed() < Duration::from_secs(10));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("open files") || err.contains("ephemeral port"),
        "{err}"
    );
    assert!(err.contains("5000000"), "{err}");
}

#[test]
fn report_merges_results_with_ratios_against_the_baseline() {
    let server = ServerProcess::start(&["--echo", "/echo"]);
    let dir = tempfile::tempdir().unwrap();
    let url = server.ws_url("/echo");
    let mut files = Vec::new();
    for (name, conns) in [("a", "2"), ("b", "4")] {
        let json = dir.path().join(format!("{name}.json"));
        let out = bench(
            &[
                &[
                    "echo",
                    "--url",
                    &url,
                    "--connections",
                    conns,
                    "--name",
                    name,
                ][..],
                &["--json", json.to_str().unwrap()],
                &SHORT,
            ]
            .concat(),
            &[],
        );
        assert!(out.status.success(), "{}", text(&out));
        files.push(json);
    }
    let merged = dir.path().join("merged.json");
    let png = dir.path().join("merged.png");
    let out = bench(
        &[
            "report",
            files[0].to_str().unwrap(),
            files[1].to_str().unwrap(),
            "--baseline",
            "a",
            "--markdown",
            "--json",
            merged.to_str().unwrap(),
            "--png",
            png.to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("| scenario"), "{table}");
    assert!(table.contains("baseline: a"), "{table}");

    let a = read_json(&files[0])["results"]["throughput"]
        .as_f64()
        .unwrap();
    let b = read_json(&files[1])["results"]["throughput"]
        .as_f64()
        .unwrap();
    let m = read_json(&merged);
    assert_eq!(m["format"], "switchboard-bench-report/1");
    assert_eq!(m["baseline"], "a");
    let rows = m["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["name"], "a");
    assert_eq!(rows[0]["throughput_ratio"], 1.0);
    let ratio = rows[1]["throughput_ratio"].as_f64().unwrap();
    assert!((ratio - b / a).abs() < 0.002, "{ratio} vs {}", b / a);
    assert!(
        std::fs::read(&png)
            .unwrap()
            .starts_with(b"\x89PNG\r\n\x1a\n")
    );

    // An unknown baseline is an error naming the runs.
    let out = bench(
        &["report", files[0].to_str().unwrap(), "--baseline", "zzz"],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("zzz"));
}

/// A program on `PATH`.
fn has(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A child process killed on drop.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `--socketio` against the Socket.IO peer of `bench/compare.sh` (`bench/peers/socketio.js`,
/// installed with `npm ci` from the committed lock file into a temporary folder): the
/// handshake, wrapped events, and pings answered (the peer pings every 250 ms here and drops
/// a connection that does not answer within 500 ms, which would show as lost connections).
/// Skipped when node or npm is missing; CI has both.
#[test]
fn socketio_framing_against_the_socketio_peer() {
    use std::io::{BufRead, BufReader};

    if !has("node") || !has("npm") {
        eprintln!("skipped: node and npm are needed for the Socket.IO peer");
        return;
    }
    let peers = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/peers");
    let dir = tempfile::tempdir().unwrap();
    for f in ["package.json", "package-lock.json", "socketio.js"] {
        std::fs::copy(peers.join(f), dir.path().join(f)).unwrap();
    }
    let installed = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--omit=dev"])
        .current_dir(dir.path())
        .env("npm_config_cache", dir.path().join(".npm"))
        .output()
        .expect("run npm ci");
    assert!(installed.status.success(), "npm ci: {}", text(&installed));

    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut node = Killed(
        Command::new("node")
            .arg("socketio.js")
            .arg(port.to_string())
            .current_dir(dir.path())
            .env("SOCKETIO_PING_INTERVAL_MS", "250")
            .env("SOCKETIO_PING_TIMEOUT_MS", "500")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn node"),
    );
    let mut line = String::new();
    BufReader::new(node.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("listening"), "{line:?}");
    let pid = node.0.id().to_string();
    let url = format!("ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket");

    let json = dir.path().join("fanout.json");
    let out = bench(
        &[
            &["fanout", "--mode", "raw", "--socketio", "--url", &url][..],
            &["--subscribers", "5", "--publishers", "2", "--window", "4"],
            &["--server-pid", &pid, "--json", json.to_str().unwrap()],
            &["--duration", "1.5", "--warmup", "0", "--quiet"],
        ]
        .concat(),
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    let v = read_json(&json);
    let r = &v["results"];
    assert_eq!(v["config"]["params"]["socketio"], true);
    let published = r["sent"].as_u64().unwrap();
    assert!(published > 0, "{r}");
    assert_eq!(r["received"].as_u64().unwrap(), published * 5, "{r}");
    assert_eq!(r["delivery_ratio"], 1.0, "{r}");
    assert_eq!(r["out_of_order"], 0, "{r}");
    assert_eq!(r["lost_connections"], 0, "{r}");
    assert!(r["latency_us"]["count"].as_u64().unwrap() > 0, "{r}");

    let json = dir.path().join("echo.json");
    let out = bench(
        &[
            &["echo", "--socketio", "--url", &url, "-c", "4", "-k", "4"][..],
            &["--json", json.to_str().unwrap()],
            &SHORT,
        ]
        .concat(),
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    let r = &read_json(&json)["results"];
    assert!(r["sent"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["received"], r["sent"], "{r}");
    // Every echo carried its timestamp after the Socket.IO prefix.
    assert!(r["latency_us"]["count"].as_u64().unwrap() > 0, "{r}");

    let json = dir.path().join("connect.json");
    let out = bench(
        &[
            &["connect", "--socketio", "--url", &url, "-c", "20"][..],
            &["--server-pid", &pid, "--json", json.to_str().unwrap()],
            &SHORT,
        ]
        .concat(),
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    let r = &read_json(&json)["results"];
    assert_eq!(r["connections"], 20, "{r}");
    assert_eq!(r["lost_connections"], 0, "{r}");
    assert!(
        r["server"]["memory_per_connection_bytes"].is_number(),
        "{r}"
    );

    // Refused before connecting: not an engine.io URL, or the protocol mode.
    let plain = format!("ws://127.0.0.1:{port}/fanout");
    for args in [
        vec!["fanout", "--mode", "raw", "--socketio", "--url", &plain],
        vec!["fanout", "--socketio", "--url", &url],
    ] {
        let out = bench(&[&args[..], &SHORT].concat(), &[]);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("transport=websocket") || err.contains("--mode raw"),
            "{err}"
        );
    }
}
