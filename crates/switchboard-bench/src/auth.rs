//! How protocol connections authenticate: the options (`--token`, `--secret`, `--secret-file`)
//! and the `Authorization` value of each connection.
//!
//! Tokens belong to the servers' deployment, not to the generator: signing one with a secret
//! and finding the development secret are left to the [`TokenIssuer`] the caller supplies (the
//! `switchboard` command passes the server library's), so this crate links nothing of a
//! server.

use std::{
    fmt, io,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use clap::Args;

/// What the generator needs of the token scheme of the servers it loads, for `--secret`,
/// `--secret-file` and the development secret.
pub trait TokenIssuer: fmt::Debug + Send + Sync {
    /// A token for the user `user`, signed with `secret` and valid for `ttl`.
    fn mint(&self, secret: &str, user: &str, ttl: Duration) -> String;

    /// Where the development secret is kept when `--secret-file` is not given.
    fn dev_secret_path(&self) -> PathBuf;

    /// The secret kept in the file at `path` (which exists).
    fn read_secret(&self, path: &Path) -> io::Result<String>;

    /// Where a server in development mode keeps its server API key (`bench fanout --mode api`).
    fn dev_api_key_path(&self) -> PathBuf;
}

/// Authentication of protocol connections.
#[derive(Debug, Clone, Args)]
pub(crate) struct AuthArgs {
    /// Send this token on every connection (`Authorization: Bearer`).
    #[arg(long, value_name = "JWT")]
    token: Option<String>,
    /// Mint one token per connection (user `bench-<i>`) with this HS256 secret.
    #[arg(long, value_name = "SECRET", conflicts_with = "token")]
    secret: Option<String>,
    /// Read the HS256 secret from FILE. Default: the development secret
    /// ($SWITCHBOARD_DEV_SECRET_FILE, else .switchboard/dev-secret).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["token", "secret"])]
    secret_file: Option<PathBuf>,
}

/// How connections authenticate.
#[derive(Debug, Clone)]
pub(crate) enum Auth {
    /// No `Authorization` header.
    None,
    /// The same token on every connection.
    Token(Arc<str>),
    /// A token per connection, minted with this secret.
    Secret(Arc<str>, Arc<dyn TokenIssuer>),
}

impl Auth {
    /// Resolves the options, minting with `issuer`; `needed`: a token is required (then the
    /// dev secret is the default).
    pub(crate) fn resolve(
        args: &AuthArgs,
        needed: bool,
        issuer: &Arc<dyn TokenIssuer>,
    ) -> Result<Auth, String> {
        if let Some(t) = &args.token {
            return Ok(Auth::Token(t.as_str().into()));
        }
        if let Some(s) = &args.secret {
            return Ok(Auth::Secret(s.as_str().into(), issuer.clone()));
        }
        if !needed && args.secret_file.is_none() {
            return Ok(Auth::None);
        }
        let path = args
            .secret_file
            .clone()
            .unwrap_or_else(|| issuer.dev_secret_path());
        if !path.exists() {
            return Err(format!(
                "no token: pass --token or --secret, or run the server in development mode so \
                 that its secret is in {} (or point --secret-file or \
                 SWITCHBOARD_DEV_SECRET_FILE at it)",
                path.display()
            ));
        }
        let secret = issuer
            .read_secret(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Auth::Secret(secret.into(), issuer.clone()))
    }

    /// The `Authorization` value for connection `i`.
    pub(crate) fn header(&self, i: usize) -> Option<String> {
        match self {
            Auth::None => None,
            Auth::Token(t) => Some(format!("Bearer {t}")),
            Auth::Secret(s, issuer) => {
                let token = issuer.mint(s, &format!("bench-{i}"), Duration::from_secs(24 * 3600));
                Some(format!("Bearer {token}"))
            }
        }
    }

    /// How the JSON report names it.
    pub(crate) fn describe(&self) -> &'static str {
        match self {
            Auth::None => "none",
            Auth::Token(_) => "token",
            Auth::Secret(..) => "minted",
        }
    }
}
