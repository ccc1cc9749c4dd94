//! `switchboard serve` with `[tls]` (from `SWITCHBOARD_TLS__*`): https:// in the start log,
//! requests over TLS, and a real SIGHUP reloading the certificate (a broken key is logged
//! naming `tls.key` and the previous certificate stays).

mod common;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::Command,
    sync::Arc,
    time::Duration,
};

use common::ServerProcess;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls_pki_types::{CertificateDer, ServerName};

/// A CA of the test's own; certificates it signs are written to `cert.pem` / `key.pem`.
struct Pki {
    dir: tempfile::TempDir,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
}

impl Pki {
    fn new() -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = params.self_signed(&ca_key).unwrap();
        Pki {
            dir: tempfile::tempdir().unwrap(),
            ca,
            ca_key,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn issue(&self) -> CertificateDer<'static> {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&key, &self.ca, &self.ca_key)
            .unwrap();
        std::fs::write(self.path("cert.pem"), cert.pem()).unwrap();
        std::fs::write(self.path("key.pem"), key.serialize_pem()).unwrap();
        cert.der().clone()
    }

    fn client(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        #[allow(deprecated, reason = "the ring provider is what this build has")]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn connect(pki: &Pki, addr: SocketAddr) -> Tls {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(pki.client(), name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    // Completes the handshake.
    tls.flush().unwrap();
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).unwrap();
    }
    tls
}

fn presented(tls: &Tls) -> CertificateDer<'static> {
    tls.conn.peer_certificates().unwrap()[0].clone()
}

/// `GET /healthz` on a kept-alive TLS connection: the status.
fn healthz(tls: &mut Tls) -> u16 {
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    // The answer has a content-length and a short JSON body: read up to the body's end.
    while !got.ends_with(b"}") {
        let n = tls.read(&mut buf).unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got[9..12]).parse().unwrap()
}

/// `GET target` with `connection: close`: the status line and headers.
fn head(pki: &Pki, addr: SocketAddr, target: &str) -> String {
    let mut tls = connect(pki, addr);
    let req = format!("GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tls.write_all(req.as_bytes()).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tls.read(&mut buf).unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).to_lowercase()
}

fn sighup(server: &ServerProcess) {
    let status = Command::new("kill")
        .arg("-HUP")
        .arg(server.child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn serve_over_tls_and_reload_the_certificate_on_sighup() {
    let pki = Pki::new();
    let first = pki.issue();
    let (cert, key) = (pki.path("cert.pem"), pki.path("key.pem"));
    let mut server = ServerProcess::start_with_env(
        &[],
        &[
            ("SWITCHBOARD_TLS__CERT", cert.to_str().unwrap()),
            ("SWITCHBOARD_TLS__KEY", key.to_str().unwrap()),
        ],
    );
    let startup = server.startup.join("\n");
    assert!(startup.contains("tls: on"), "{startup}");
    let mut before = connect(&pki, server.addr);
    assert_eq!(presented(&before), first);
    assert_eq!(healthz(&mut before), 200);

    let second = pki.issue();
    sighup(&server);
    server.wait_log("tls: certificate reloaded");
    let mut after = connect(&pki, server.addr);
    assert_eq!(presented(&after), second);
    assert_eq!(healthz(&mut after), 200);
    // The connection made before the reload goes on with its session.
    assert_eq!(healthz(&mut before), 200);

    std::fs::write(&key, "broken\n").unwrap();
    sighup(&server);
    let line = server.wait_log("reload failed");
    assert!(line.contains("tls.key"), "{line}");
    let mut later = connect(&pki, server.addr);
    assert_eq!(presented(&later), second);
    assert_eq!(healthz(&mut later), 200);
    drop((before, after, later));
    assert!(server.terminate().success());
}

#[test]
fn the_start_log_says_https() {
    let pki = Pki::new();
    pki.issue();
    let (cert, key) = (pki.path("cert.pem"), pki.path("key.pem"));
    let server = ServerProcess::start_with_env(
        &[],
        &[
            ("SWITCHBOARD_TLS__CERT", cert.to_str().unwrap()),
            ("SWITCHBOARD_TLS__KEY", key.to_str().unwrap()),
        ],
    );
    // The "listening" line was consumed by start(): the demo line of development mode
    // follows it and names the scheme too.
    let demo = server.wait_log("demo chat page");
    assert!(demo.contains("https://"), "{demo}");
    // The demo page and /metrics are served over TLS too.
    let page = head(&pki, server.addr, "/");
    assert!(page.starts_with("http/1.1 200"), "{page}");
    assert!(page.contains("text/html"), "{page}");
    let metrics = head(&pki, server.addr, "/metrics");
    assert!(metrics.starts_with("http/1.1 200"), "{metrics}");
}

#[test]
fn connect_speaks_wss_with_ca() {
    use std::{io::BufRead, process::Stdio};
    let pki = Pki::new();
    pki.issue();
    let ca = pki.path("ca.pem");
    std::fs::write(&ca, pki.ca.pem()).unwrap();
    let (cert, key) = (pki.path("cert.pem"), pki.path("key.pem"));
    let secret = pki.path("dev-secret");
    let server = ServerProcess::start_with_env(
        &[],
        &[
            ("SWITCHBOARD_TLS__CERT", cert.to_str().unwrap()),
            ("SWITCHBOARD_TLS__KEY", key.to_str().unwrap()),
            ("SWITCHBOARD_DEV_SECRET_FILE", secret.to_str().unwrap()),
        ],
    );
    let url = format!("wss://127.0.0.1:{}/ws", server.addr.port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args([
            "connect",
            &url,
            "--user",
            "alice",
            "--ca",
            ca.to_str().unwrap(),
        ])
        .env("SWITCHBOARD_DEV_SECRET_FILE", &secret)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let mut stdin = child.stdin.take().unwrap();
    let mut seen = Vec::new();
    let mut wait_for = |needle: &str| loop {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("no line with {needle:?} in {seen:?}"));
        let found = line.contains(needle);
        seen.push(line);
        if found {
            break;
        }
    };
    wait_for("\"welcome\"");
    stdin.write_all(b"/sub chat\n").unwrap();
    wait_for("\"reply\"");
    drop(stdin);
    assert!(child.wait().unwrap().success());
    // Without the CA the certificate is refused, and the error says so.
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["connect", &url, "--user", "alice"])
        .env("SWITCHBOARD_DEV_SECRET_FILE", &secret)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(err.contains("certificate"), "{err}");
}
