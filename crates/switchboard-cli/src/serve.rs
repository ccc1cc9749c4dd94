//! `switchboard serve`.

use std::{path::PathBuf, process::ExitCode};

use clap::Args;
use switchboard_server::{
    Route, RouteOptions, Server,
    config::{ByteSize, Config, LogFormat, Sources},
    echo::Echo,
    hub::Hub,
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

async fn serve(config: Config, has_file: bool) -> Result<bool, Box<dyn std::error::Error>> {
    let dev = config.is_dev(has_file || config.auth.secret.is_some());
    if dev {
        tracing::warn!("development mode: no configuration given; do not expose this server");
    }
    let hub = Hub::new(config.websocket.compression.threshold.as_usize());
    let mut builder = Server::builder(config.listen)
        .hub(hub)
        .drain_timeout(config.shutdown.drain_timeout);
    if let Some(path) = &config.echo.path {
        builder = builder.route(Route::new(
            path,
            Echo,
            RouteOptions::from_config(&config.websocket),
        ));
    }
    let server = builder
        .bind()
        .await
        .map_err(|e| format!("cannot listen on {} (key 'listen'): {e}", config.listen))?;
    let addr = server.local_addr()?;
    tracing::info!(
        %addr,
        echo = config.echo.path.as_deref().unwrap_or("off"),
        format = if config.log.format == LogFormat::Json { "json" } else { "text" },
        "listening"
    );
    Ok(server.run(shutdown_signal()).await)
}
