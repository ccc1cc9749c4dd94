//! `switchboard token`, `connect` and `publish`, run as processes against the real server in
//! development mode (sharing its dev secret file).

mod common;

use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio},
    sync::mpsc,
    time::Duration,
};

use common::ServerProcess;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};

/// How long any awaited line or exit may take before the test fails.
const T: Duration = Duration::from_secs(10);

fn switchboard() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    for var in [
        "SWITCHBOARD_DEV_SECRET_FILE",
        "SWITCHBOARD_AUTH__SECRET",
        "SWITCHBOARD_URL",
        "SWITCHBOARD_API_KEY",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// A development-mode server and a directory whose dev secret file it uses.
struct Dev {
    server: ServerProcess,
    dir: tempfile::TempDir,
}

impl Dev {
    fn start() -> Dev {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("dev-secret");
        let server = ServerProcess::start_with_env(
            &[],
            &[("SWITCHBOARD_DEV_SECRET_FILE", secret.to_str().unwrap())],
        );
        Dev { server, dir }
    }

    fn secret_file(&self) -> PathBuf {
        self.dir.path().join("dev-secret")
    }

    fn url(&self) -> String {
        self.server.ws_url("/ws")
    }

    /// `switchboard ARGS` with this server's dev secret.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = switchboard();
        cmd.args(args)
            .current_dir(self.dir.path())
            .env("SWITCHBOARD_DEV_SECRET_FILE", self.secret_file());
        cmd
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn claims(token: &str, secret: &str) -> Result<Value, jsonwebtoken::errors::Error> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.required_spec_claims.clear();
    jsonwebtoken::decode::<Value>(
        token,
        &DecodingKey::from_secret(secret.as_bytes()),
        &validation,
    )
    .map(|data| data.claims)
}

fn read_secret(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap().trim().to_owned()
}

// ------------------------------------------------------------------------------------ token

#[test]
fn token_is_signed_with_the_dev_secret_the_server_uses() {
    let dir = tempfile::tempdir().unwrap();
    let out = switchboard()
        .args(["token", "--user", "alice", "--ttl", "1h"])
        .args(["--room", "news:global", "--room", "chat:a"])
        .args(["--info", r#"{"name": "Alice"}"#])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let token = text.strip_suffix('\n').expect("one line");
    assert!(!token.contains(char::is_whitespace));
    assert_eq!(token.split('.').count(), 3, "{token}");

    // The dev secret file was created where the server looks for it, private.
    let secret_file = dir.path().join(".switchboard/dev-secret");
    let secret = read_secret(&secret_file);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&secret_file)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let c = claims(token, &secret).unwrap();
    assert_eq!(c["sub"], "alice");
    assert_eq!(
        c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(),
        3600
    );
    assert_eq!(c["rooms"], json!(["news:global", "chat:a"]));
    assert_eq!(c["info"], json!({"name": "Alice"}));
    assert!(claims(token, "another secret").is_err());

    // A second token uses the same secret.
    let out = switchboard()
        .args(["token", "--user", "bob"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(read_secret(&secret_file), secret);
    let c = claims(stdout(&out).trim(), &secret).unwrap();
    assert_eq!(
        c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(),
        24 * 3600
    );

    // A development-mode server with that secret file accepts the token.
    let server = ServerProcess::start_with_env(
        &[],
        &[("SWITCHBOARD_DEV_SECRET_FILE", secret_file.to_str().unwrap())],
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let welcome = runtime.block_on(async {
        let mut options = switchboard_client::ClientOptions::new(server.ws_url("/ws"));
        options.token = Some(token.to_owned());
        switchboard_client::Client::connect(options)
            .await
            .unwrap()
            .welcome()
    });
    assert_eq!(welcome.user, "alice");
    assert!(welcome.rooms.contains_key("news:global") && welcome.rooms.contains_key("chat:a"));
}

#[test]
fn token_options_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = switchboard()
        .args([
            "token", "--user", "u", "--secret", "s3cret", "--ttl", "never",
        ])
        .args(["--subscription-room", "x"])
        .output()
        .unwrap();
    // A subscription token needs an expiry.
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("expiry"), "{}", stderr(&out));

    let out = switchboard()
        .args(["token", "--user", "u", "--secret", "s3cret", "--ttl", "10m"])
        .args(["--subscription-room", "secret:room"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let c = claims(stdout(&out).trim(), "s3cret").unwrap();
    assert_eq!(
        (&c["sub"], &c["room"]),
        (&json!("u"), &json!("secret:room"))
    );
    assert_eq!(c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(), 600);

    let file = dir.path().join("secret.txt");
    std::fs::write(&file, "from-a-file\n").unwrap();
    let out = switchboard()
        .args(["token", "--user", "u", "--ttl", "never", "--secret-file"])
        .arg(&file)
        .output()
        .unwrap();
    let c = claims(stdout(&out).trim(), "from-a-file").unwrap();
    assert!(c.get("exp").is_none(), "{c}");

    for (args, needle) in [
        (&["--info", "[1]"][..], "--info must be a JSON object"),
        (&["--info", "{"][..], "--info is not valid JSON"),
        (&["--ttl", "soon"][..], "--ttl"),
        (
            &["--secret", "a", "--secret-file", "b"][..],
            "cannot be used with",
        ),
    ] {
        let out = switchboard()
            .args(["token", "--user", "u"])
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
    }
    // None of these created a dev secret.
    assert!(!dir.path().join(".switchboard").exists());
}

// ---------------------------------------------------------------------------------- connect

/// A running `switchboard connect`: its stdin, and its stdout lines as they come.
struct Session {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Session {
    fn start(mut cmd: Command) -> Session {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Session {
            stdin: child.stdin.take(),
            child,
            lines,
            seen: Vec::new(),
        }
    }

    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// The next received message that `want` accepts (others are skipped).
    fn expect(&mut self, want: impl Fn(&Value) -> bool) -> Value {
        loop {
            let line = self.lines.recv_timeout(T).unwrap_or_else(|_| {
                panic!(
                    "no matching line within 10 s; seen:\n{}",
                    self.seen.join("\n")
                )
            });
            self.seen.push(line.clone());
            // stdin is not a terminal: nothing is echoed, every line is a received message.
            let json = line
                .strip_prefix("< ")
                .unwrap_or_else(|| panic!("not a received message: {line}"));
            let value: Value = serde_json::from_str(json).unwrap();
            if want(&value) {
                return value;
            }
        }
    }

    /// Closes stdin and waits for the exit.
    fn finish(mut self) -> ExitStatus {
        drop(self.stdin.take());
        let (tx, rx) = mpsc::channel();
        let mut child = self.child;
        std::thread::spawn(move || {
            let _ = tx.send(child.wait().unwrap());
        });
        rx.recv_timeout(T).expect("exited within 10 s")
    }
}

fn is(kind: &str) -> impl Fn(&Value) -> bool + '_ {
    move |v| v["type"] == kind
}

fn reply(id: Value) -> impl Fn(&Value) -> bool {
    move |v| v["type"] == "reply" && v["id"] == id
}

#[test]
fn two_connect_sessions_chat_in_a_room() {
    let dev = Dev::start();
    let url = dev.url();
    let mut alice = Session::start(dev.command(&["connect", &url, "--user", "alice"]));
    let welcome = alice.expect(is("welcome"));
    assert_eq!(welcome["user"], "alice");
    alice.send("/sub chat:lobby");
    let subscribed = alice.expect(reply(json!(1)));
    assert_eq!(subscribed["result"]["room"], "chat:lobby");

    let mut bob = Session::start(dev.command(&["connect", &url, "--user", "bob", "--no-deflate"]));
    bob.expect(is("welcome"));
    bob.send("/sub chat:lobby");
    bob.expect(reply(json!(1)));
    let join = alice.expect(is("join"));
    assert_eq!(join["member"]["user"], "bob");

    alice.send(r#"/pub chat:lobby {"text": "hi bob"}"#);
    assert_eq!(alice.expect(reply(json!(2)))["result"]["offset"], 1);
    let m = bob.expect(is("message"));
    assert_eq!(
        (&m["data"], &m["from"]["user"], &m["offset"]),
        (&json!({"text": "hi bob"}), &json!("alice"), &json!(1))
    );

    // A JSON line is sent as it is.
    bob.send(r#"{"type": "publish", "id": "b1", "room": "chat:lobby", "data": "hello alice"}"#);
    bob.expect(reply(json!("b1")));
    let m = alice.expect(|v| v["type"] == "message" && v["offset"] == 2);
    assert_eq!(
        (&m["data"], &m["from"]["user"]),
        (&json!("hello alice"), &json!("bob"))
    );
    // Errors are shown as they come.
    alice.send("/pub chat:elsewhere 1");
    assert_eq!(alice.expect(is("error"))["code"], "not_subscribed");

    // Alice leaves with the end of her input, Bob with /quit: both exit 0.
    assert!(alice.finish().success());
    let leave = bob.expect(is("leave"));
    assert_eq!(leave["member"]["user"], "alice");
    bob.send("/quit");
    assert!(bob.finish().success());
}

#[test]
fn connect_since_recovers_and_refusals_are_explained() {
    let dev = Dev::start();
    let url = dev.url();
    let mut epoch = String::new();
    for i in 1..=3 {
        let out = dev
            .command(&[
                "publish",
                "chat:news",
                &format!("{{\"n\":{i}}}"),
                "--url",
                &url,
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let reply: Value = serde_json::from_str(&stdout(&out)).unwrap();
        epoch = reply["epoch"].as_str().unwrap().to_owned();
    }
    let since = format!("chat:news={epoch}:1");
    let mut dave =
        Session::start(dev.command(&["connect", &url, "--user", "dave", "--since", &since]));
    let reply = dave.expect(reply(json!(1)));
    assert_eq!(reply["result"]["recovered"], true);
    let offsets: Vec<&Value> = reply["result"]["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["offset"])
        .collect();
    assert_eq!(offsets, [&json!(2), &json!(3)]);
    assert!(dave.finish().success());

    // No token: 401 with its reason, exit 1.
    let out = dev
        .command(&["connect", &url])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("401") && err.contains("missing"), "{err}");
    let out = dev
        .command(&["connect", &url, "--token", "x.y.z"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("401"), "{}", stderr(&out));
}

// ---------------------------------------------------------------------------------- publish

#[test]
fn publish_prints_the_offset() {
    let dev = Dev::start();
    let url = dev.url();
    let publish = |args: &[&str]| {
        let out = dev
            .command(&["publish", "--url", &url])
            .args(args)
            .output()
            .unwrap();
        (out.status.code(), stdout(&out), stderr(&out))
    };
    let (code, out, err) = publish(&["chat:news", r#"{"n": 1}"#]);
    assert_eq!(code, Some(0), "{err}");
    let reply: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(out.lines().count(), 1);
    assert_eq!(
        (&reply["room"], &reply["offset"]),
        (&json!("chat:news"), &json!(1))
    );
    let epoch = reply["epoch"].as_str().unwrap().to_owned();
    assert!(!epoch.is_empty());

    // Not JSON: published as a JSON string.
    let (_, out, _) = publish(&["chat:news", "plain text"]);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap(),
        json!({"room": "chat:news", "epoch": epoch, "offset": 2})
    );
    // Idempotency: the same key, the same offset.
    let (_, first, _) = publish(&["chat:news", "once", "--idempotency-key", "k1"]);
    let (_, again, _) = publish(&["chat:news", "once", "--idempotency-key", "k1"]);
    assert_eq!(first, again);
    assert!(first.contains(r#""offset":3"#), "{first}");
    // Ephemeral: no epoch, no offset.
    let (_, out, _) = publish(&["chat:news", "typing", "--ephemeral"]);
    assert_eq!(out.trim(), r#"{"room":"chat:news"}"#);

    // What was stored.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let secret = read_secret(&dev.secret_file());
    let history = runtime.block_on(async {
        let mut options = switchboard_client::ClientOptions::new(url.clone());
        options.token = Some(switchboard_server::auth::mint(
            secret.as_bytes(),
            switchboard_server::auth::HmacAlgorithm::HS256,
            &switchboard_server::auth::MintClaims {
                sub: "frank".into(),
                ..Default::default()
            },
        ));
        let client = switchboard_client::Client::connect(options).await.unwrap();
        let _sub = client.subscribe("chat:news").await.unwrap();
        client
            .history("chat:news", Default::default())
            .await
            .unwrap()
    });
    let data: Vec<Value> = history
        .publications
        .iter()
        .map(|p| serde_json::from_str(p.data.get()).unwrap())
        .collect();
    assert_eq!(data, [json!({"n": 1}), json!("plain text"), json!("once")]);

    // Failures: exit 1 with the reason.
    let (code, _, err) = publish(&["no spaces", "x"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("400") && err.contains("bad_room"), "{err}");
    let out = switchboard()
        .args(["publish", "chat:news", "x", "--url", &url])
        .args(["--api-key", "not-this-servers-key"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("401"), "{}", stderr(&out));
}
