//! `switchboard publish ROOM DATA`: connects with the protocol client, subscribes (publishing
//! needs a subscription unless the namespace says otherwise), publishes, prints the reply
//! (`{"room","epoch","offset"}`) and exits.

use std::{process::ExitCode, time::Duration};

use clap::Args;
use switchboard_client::{Client, ClientOptions, PublishOptions, ReconnectPolicy};

use crate::{
    connect::{describe_connect_error, json_or_string},
    token::AuthArgs,
};

/// Options of `publish`.
#[derive(Debug, Args)]
pub(crate) struct PublishArgs {
    /// The room.
    room: String,
    /// The data: JSON, or any other text (sent as a JSON string).
    data: String,
    /// The server's protocol route.
    #[arg(
        long,
        env = "SWITCHBOARD_URL",
        default_value = "ws://127.0.0.1:8080/ws",
        value_name = "URL"
    )]
    url: String,
    #[command(flatten)]
    auth: AuthArgs,
    /// Publish an ephemeral message (not stored, no offset).
    #[arg(long)]
    ephemeral: bool,
    /// Publish at most once for this key (a retry returns the first offset).
    #[arg(long, value_name = "KEY")]
    idempotency_key: Option<String>,
    /// Do not subscribe first (for namespaces whose `publish` is "authenticated").
    #[arg(long)]
    no_subscribe: bool,
    /// Do not offer permessage-deflate.
    #[arg(long)]
    no_deflate: bool,
    /// How long to wait for each answer, e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    timeout: Duration,
}

pub(crate) fn run(args: PublishArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(publish(args))
}

async fn publish(args: PublishArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let mut options = ClientOptions::new(&args.url);
    options.token = args.auth.token()?;
    options.deflate = !args.no_deflate;
    options.command_timeout = args.timeout;
    options.connect_timeout = args.timeout;
    options.reconnect = ReconnectPolicy::disabled();
    let client = match Client::connect(options).await {
        Ok(client) => client,
        Err(e) => {
            eprintln!(
                "switchboard publish: {}",
                describe_connect_error(&args.url, &e)
            );
            return Ok(ExitCode::from(1));
        }
    };
    let result = async {
        let _subscription = match args.no_subscribe {
            true => None,
            false => Some(client.subscribe(&args.room).await?),
        };
        let data = json_or_string(&args.data);
        let publish = PublishOptions {
            echo: false,
            ephemeral: args.ephemeral,
            idempotency_key: args.idempotency_key.clone(),
        };
        client.publish(&args.room, &*data, publish).await
    }
    .await;
    client.close().await;
    match result {
        Ok(reply) => {
            println!("{}", serde_json::to_string(&reply)?);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("switchboard publish: {e}");
            Ok(ExitCode::from(1))
        }
    }
}
