//! `switchboard token`: mints HS256 (or HS384/HS512) tokens, by default with the dev secret
//! that a development-mode server in the same directory uses. Also the `--token` / `--user`
//! options that `connect` and `publish` share.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::Args;
use switchboard_server::auth::{self, HmacAlgorithm, MintClaims};

/// Options of `token`.
#[derive(Debug, Args)]
pub(crate) struct TokenArgs {
    /// The user id (the `sub` claim).
    #[arg(long, value_name = "ID")]
    user: String,
    /// Lifetime, e.g. 30m, 1h, 7d; "never" for a token without `exp`.
    #[arg(long, default_value = "24h", value_name = "DURATION")]
    ttl: String,
    /// A room of the `rooms` claim: the connection is subscribed to it at once (repeatable).
    #[arg(long = "room", value_name = "ROOM")]
    rooms: Vec<String>,
    /// The `info` claim, a JSON object shown to others in presence and join/leave.
    #[arg(long, value_name = "JSON")]
    info: Option<String>,
    /// Mint a subscription token for ROOM (the `room` claim) instead of a connection token.
    #[arg(long, value_name = "ROOM")]
    subscription_room: Option<String>,
    /// The `aud` claim, for servers that check it.
    #[arg(long, value_name = "AUD")]
    audience: Option<String>,
    /// The `iss` claim, for servers that check it.
    #[arg(long, value_name = "ISS")]
    issuer: Option<String>,
    /// The HMAC algorithm: HS256, HS384 or HS512.
    #[arg(long, default_value = "HS256", value_name = "ALG")]
    algorithm: HmacAlgorithm,
    #[command(flatten)]
    secret: SecretArgs,
}

/// Where the signing secret comes from.
#[derive(Debug, Args)]
pub(crate) struct SecretArgs {
    /// The HMAC secret (as configured in the server's `auth.secret`). Default: the dev
    /// secret file, created when missing, as the development-mode server does.
    #[arg(
        long,
        env = "SWITCHBOARD_AUTH__SECRET",
        hide_env_values = true,
        conflicts_with = "secret_file",
        value_name = "SECRET"
    )]
    secret: Option<String>,
    /// A file holding the secret (its content, trimmed).
    #[arg(long, value_name = "FILE")]
    secret_file: Option<PathBuf>,
}

impl SecretArgs {
    fn load(&self) -> Result<String, String> {
        if let Some(secret) = &self.secret {
            return Ok(secret.clone());
        }
        if let Some(path) = &self.secret_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let secret = text.trim();
            if secret.is_empty() {
                return Err(format!("{} is empty", path.display()));
            }
            return Ok(secret.to_owned());
        }
        dev_secret()
    }
}

/// The dev secret, created when missing exactly as the development-mode server does.
fn dev_secret() -> Result<String, String> {
    let path = auth::default_dev_secret_path();
    auth::load_or_create_dev_secret(&path)
        .map_err(|e| format!("cannot use the dev secret {}: {e}", path.display()))
}

/// `--token` / `--user`, shared by `connect` and `publish`.
#[derive(Debug, Args)]
pub(crate) struct AuthArgs {
    /// The connection token (a JWT), sent as `Authorization: Bearer`.
    #[arg(long, value_name = "JWT", conflicts_with = "user")]
    token: Option<String>,
    /// Connect as this user with a token minted from the dev secret (valid 24 h), as
    /// `switchboard token --user NAME` would.
    #[arg(long, value_name = "ID")]
    user: Option<String>,
}

impl AuthArgs {
    /// The token to connect with, if any.
    pub(crate) fn token(&self) -> Result<Option<String>, String> {
        match (&self.token, &self.user) {
            (Some(token), _) => Ok(Some(token.clone())),
            (None, Some(user)) => {
                let secret = dev_secret()?;
                let claims = MintClaims {
                    sub: user.clone(),
                    ttl: Some(Duration::from_secs(24 * 3600)),
                    ..MintClaims::default()
                };
                Ok(Some(auth::mint(
                    secret.as_bytes(),
                    HmacAlgorithm::HS256,
                    &claims,
                )))
            }
            (None, None) => Ok(None),
        }
    }
}

fn parse_ttl(ttl: &str) -> Result<Option<Duration>, String> {
    if ttl.eq_ignore_ascii_case("never") {
        return Ok(None);
    }
    let ttl = humantime::parse_duration(ttl).map_err(|e| format!("--ttl '{ttl}': {e}"))?;
    if ttl.as_secs() == 0 {
        return Err("--ttl must be at least 1s (or \"never\")".into());
    }
    Ok(Some(ttl))
}

pub(crate) fn run(args: TokenArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    if args.user.is_empty() {
        return Err("--user must not be empty".into());
    }
    let info = match &args.info {
        None => None,
        Some(text) => match serde_json::from_str::<serde_json::Value>(text) {
            Ok(serde_json::Value::Object(map)) => Some(map),
            Ok(_) => return Err("--info must be a JSON object".into()),
            Err(e) => return Err(format!("--info is not valid JSON: {e}").into()),
        },
    };
    let ttl = parse_ttl(&args.ttl)?;
    if args.subscription_room.is_some() && ttl.is_none() {
        return Err("a subscription token needs an expiry: give --ttl".into());
    }
    let secret = args.secret.load()?;
    let claims = MintClaims {
        sub: args.user,
        ttl,
        rooms: args.rooms,
        info,
        room: args.subscription_room,
        audience: args.audience,
        issuer: args.issuer,
    };
    println!("{}", auth::mint(secret.as_bytes(), args.algorithm, &claims));
    Ok(ExitCode::SUCCESS)
}

/// Tokens for `switchboard bench`: HS256 with the server library's minting and development
/// secret, so that the bench crate needs nothing of the server.
#[derive(Debug)]
pub(crate) struct BenchTokens;

impl switchboard_bench::TokenIssuer for BenchTokens {
    fn mint(&self, secret: &str, user: &str, ttl: Duration) -> String {
        auth::mint(
            secret.as_bytes(),
            HmacAlgorithm::HS256,
            &MintClaims {
                sub: user.to_string(),
                ttl: Some(ttl),
                ..MintClaims::default()
            },
        )
    }

    fn dev_secret_path(&self) -> PathBuf {
        auth::default_dev_secret_path()
    }

    fn read_secret(&self, path: &std::path::Path) -> std::io::Result<String> {
        // The file exists (the bench checks first), so this only reads it.
        auth::load_or_create_dev_secret(path)
    }

    fn dev_api_key_path(&self) -> PathBuf {
        switchboard_server::http::api::dev_api_key_path()
    }
}
