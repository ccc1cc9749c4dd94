//! `switchboard serve`.

use std::{path::PathBuf, process::ExitCode};

use clap::Args;
use switchboard_server::{
    Node, auth,
    config::{ApiKeyConfig, ByteSize, Config, LogFormat, Sources},
    server::shutdown_signal,
};

/// Options of `serve`. Each flag overrides the config file and `SWITCHBOARD_*` variables.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// TOML configuration file (see docs/configuration.md).
    #[arg(long, short, env = "SWITCHBOARD_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on, e.g. 127.0.0.1:8080 or 0.0.0.0:80.
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Serve the echo route at this path (e.g. /echo).
    #[arg(long, value_name = "PATH")]
    echo: Option<String>,
    /// Serve the raw fan-out route (every message to every other connection) at this path.
    #[arg(long, value_name = "PATH")]
    raw_fanout: Option<String>,
    /// Largest WebSocket message accepted, e.g. 65536 or 16MiB.
    #[arg(long, value_name = "SIZE")]
    max_message_size: Option<ByteSize>,
    /// Log format: text or json.
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<String>,
}

pub(crate) fn run(args: ServeArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let mut flags = Vec::new();
    if let Some(l) = &args.listen {
        flags.push(("listen".to_string(), toml::Value::String(l.clone())));
    }
    if let Some(e) = &args.echo {
        flags.push(("echo.path".to_string(), toml::Value::String(e.clone())));
    }
    if let Some(p) = &args.raw_fanout {
        flags.push((
            "raw_fanout.path".to_string(),
            toml::Value::String(p.clone()),
        ));
    }
    if let Some(m) = args.max_message_size {
        flags.push((
            "websocket.max_message_size".to_string(),
            toml::Value::Integer(m.0 as i64),
        ));
    }
    if let Some(f) = &args.log_format {
        flags.push(("log.format".to_string(), toml::Value::String(f.clone())));
    }
    let sources = Sources {
        file: args.config.clone(),
        env: std::env::vars().collect(),
        flags,
    };
    let config = Config::load(&sources)?;
    switchboard_server::telemetry::init(&config.log);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let drained = runtime.block_on(serve(config, args.config.is_some()))?;
    Ok(if drained {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn serve(mut config: Config, has_file: bool) -> Result<bool, Box<dyn std::error::Error>> {
    let configured_auth = config.auth.secret.is_some()
        || !config.auth.public_keys.is_empty()
        || config.auth.jwks.is_some();
    if config.is_dev(has_file || configured_auth) {
        let path = auth::default_dev_secret_path();
        let secret = auth::load_or_create_dev_secret(&path).map_err(|e| {
            format!(
                "development mode: cannot keep the secret in {}: {e}",
                path.display()
            )
        })?;
        if config.auth.secret.is_none() {
            config.auth.secret = Some(secret);
        }
        // Decided here, where it is known: the node serves the demo and its token endpoint.
        config.dev = Some(true);
        tracing::warn!(
            secret_file = %path.display(),
            "development mode: no configuration given; tokens are signed with the generated secret \
             (`switchboard token --user alice` mints one); no command rate limit and no \
             connection limits per user or per IP (docs/security.md); do not expose this server"
        );
        if config.api.keys.is_empty() {
            let path = switchboard_server::http::api::dev_api_key_path();
            let key = auth::load_or_create_dev_secret(&path).map_err(|e| {
                format!(
                    "development mode: cannot keep the API key in {}: {e}",
                    path.display()
                )
            })?;
            config.api.keys.push(ApiKeyConfig {
                name: "dev".into(),
                key,
            });
            tracing::warn!(
                api_key_file = %path.display(),
                "development mode: the server API (/api) accepts the generated key in this file \
                 (`switchboard publish` reads it)"
            );
        }
    }
    let listen = config.listen;
    let echo = config.echo.path.clone();
    let ws_path = config.websocket.path.clone();
    let json = config.log.format == LogFormat::Json;
    let demo = config.demo || config.dev == Some(true);
    let node = Node::from_config(config).await?;
    // Before the port opens: a SIGTERM from then on shuts down gracefully.
    let signal = shutdown_signal();
    #[cfg(unix)]
    if node.tls().is_some() {
        reload_on_sighup(node.clone())?;
    }
    let server = node
        .server()
        .bind()
        .await
        .map_err(|e| format!("cannot listen on {listen} (key 'listen'): {e}"))?;
    let addr = server.local_addr()?;
    let (http, ws) = if server.is_tls() {
        ("https", "wss")
    } else {
        ("http", "ws")
    };
    if let Some(tls) = node.tls() {
        tracing::info!(cert = %tls.cert_path().display(), "tls: on (SIGHUP reloads the certificate)");
    }
    tracing::info!(
        %addr,
        node = node.id(),
        websocket = %format!("{ws}://{addr}{ws_path}"),
        echo = echo.as_deref().unwrap_or("off"),
        format = if json { "json" } else { "text" },
        "listening on {http}://{addr}"
    );
    if demo {
        tracing::info!("demo chat page: open {http}://{addr}/ in two browser tabs");
    }
    Ok(server.run(signal).await)
}

/// Reads the `[tls]` files again on every SIGHUP; a failed reload is logged (naming the key)
/// and the previous certificate stays.
#[cfg(unix)]
fn reload_on_sighup(node: Node) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP received: reloading the TLS certificate");
            // The node logs the outcome.
            let _ = node.reload_tls();
        }
    });
    Ok(())
}
