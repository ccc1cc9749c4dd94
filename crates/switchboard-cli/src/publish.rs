//! `switchboard publish ROOM DATA`: one `POST /api/publish` to the server API with an API key
//! (`--api-key`, `SWITCHBOARD_API_KEY`, else development mode's key file); prints the reply
//! (`{"room","epoch","offset"}`) and exits.

use std::{process::ExitCode, time::Duration};

use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use crate::connect::json_or_string;

/// Options of `publish`.
#[derive(Debug, Args)]
pub(crate) struct PublishArgs {
    /// The room.
    room: String,
    /// The data: JSON, or any other text (sent as a JSON string).
    data: String,
    /// The server's HTTP base, e.g. http://127.0.0.1:8080 (a ws:// URL works too: its host and
    /// port are used).
    #[arg(
        long,
        env = "SWITCHBOARD_URL",
        default_value = "http://127.0.0.1:8080",
        value_name = "URL"
    )]
    url: String,
    /// An API key of the server's [[api.keys]] (default: a development server's
    /// .switchboard/dev-api-key).
    #[arg(
        long,
        env = "SWITCHBOARD_API_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    api_key: Option<String>,
    /// Publish an ephemeral message (not stored, no offset).
    #[arg(long)]
    ephemeral: bool,
    /// Publish at most once for this key (a retry returns the first offset).
    #[arg(long, value_name = "KEY")]
    idempotency_key: Option<String>,
    /// How long to wait for the answer, e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    timeout: Duration,
}

pub(crate) fn run(args: PublishArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // The timer is made inside the runtime (it needs one).
    let answer =
        runtime.block_on(async { tokio::time::timeout(args.timeout, publish(&args)).await });
    match answer {
        Ok(Ok(code)) => Ok(code),
        Ok(Err(e)) => {
            eprintln!("switchboard publish: {e}");
            Ok(ExitCode::from(1))
        }
        Err(_) => {
            eprintln!(
                "switchboard publish: no answer from {} within {:?}",
                args.url, args.timeout
            );
            Ok(ExitCode::from(1))
        }
    }
}

/// `host:port` of an `http://` or `ws://` URL (any path is ignored).
fn authority(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("ws://"))
        .ok_or_else(|| {
            format!("--url '{url}': expected http://HOST:PORT (https is not supported yet)")
        })?;
    let host = rest.split(['/', '?']).next().unwrap_or_default();
    if host.is_empty() {
        return Err(format!("--url '{url}': no host"));
    }
    Ok(match host.contains(':') && !host.ends_with(']') {
        true => host.to_owned(),
        false => format!("{host}:80"),
    })
}

fn api_key(args: &PublishArgs) -> Result<String, String> {
    if let Some(key) = &args.api_key {
        return Ok(key.clone());
    }
    let path = switchboard_server::http::api::dev_api_key_path();
    match std::fs::read_to_string(&path) {
        Ok(key) if !key.trim().is_empty() => Ok(key.trim().to_owned()),
        _ => Err(format!(
            "no API key: pass --api-key or set SWITCHBOARD_API_KEY (a development server \
             keeps one in {})",
            path.display()
        )),
    }
}

async fn publish(args: &PublishArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let authority = authority(&args.url)?;
    let key = api_key(args)?;
    let data = json_or_string(&args.data);
    // `data` goes out as the text it was given (numbers and key order kept).
    #[derive(serde::Serialize)]
    struct Body<'a> {
        room: &'a str,
        data: &'a serde_json::value::RawValue,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        ephemeral: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        idempotency_key: Option<&'a str>,
    }
    let body = serde_json::to_string(&Body {
        room: &args.room,
        data: &data,
        ephemeral: args.ephemeral,
        idempotency_key: args.idempotency_key.as_deref(),
    })?;
    let stream = tokio::net::TcpStream::connect(&authority)
        .await
        .map_err(|e| format!("cannot connect to {authority}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let request = hyper::Request::post("/api/publish")
        .header("host", &authority)
        .header("content-type", "application/json")
        .header("authorization", format!("apikey {key}"))
        .body(Full::new(Bytes::from(body)))?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let bytes = response.into_body().collect().await?.to_bytes();
    let answer: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    if status.is_success() {
        println!("{answer}");
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "switchboard publish: {status}: {}: {}",
        answer["error"]["code"].as_str().unwrap_or("?"),
        answer["error"]["message"]
            .as_str()
            .unwrap_or(&String::from_utf8_lossy(&bytes))
    );
    Ok(ExitCode::from(1))
}

#[cfg(test)]
mod tests {
    use super::authority;

    #[test]
    fn the_base_comes_from_http_or_ws_urls() {
        assert_eq!(
            authority("http://127.0.0.1:8080").unwrap(),
            "127.0.0.1:8080"
        );
        assert_eq!(authority("ws://localhost:9/ws?x=1").unwrap(), "localhost:9");
        assert_eq!(
            authority("http://example.test/").unwrap(),
            "example.test:80"
        );
        assert!(authority("https://example.test").is_err());
    }
}
