//! The dev-mode secret: a random HMAC secret kept in a file so that tokens minted with
//! `switchboard token` keep working across restarts.
//!
//! Where the file lives is the caller's choice. Switchboard uses
//! [`default_dev_secret_path`]: `$SWITCHBOARD_DEV_SECRET_FILE` when set, else
//! `.switchboard/dev-secret` relative to the current directory. The same path must be used by
//! the server and by `switchboard token` for their secrets to agree.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The environment variable that overrides the dev secret's file.
pub const DEV_SECRET_FILE_ENV: &str = "SWITCHBOARD_DEV_SECRET_FILE";

/// The dev secret's file when [`DEV_SECRET_FILE_ENV`] is not set, relative to the current
/// directory.
pub const DEFAULT_DEV_SECRET_PATH: &str = ".switchboard/dev-secret";

/// The dev secret's file: `$SWITCHBOARD_DEV_SECRET_FILE` when set and not empty, else
/// [`DEFAULT_DEV_SECRET_PATH`] (relative to the current directory).
#[must_use]
pub fn default_dev_secret_path() -> PathBuf {
    match std::env::var_os(DEV_SECRET_FILE_ENV) {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => PathBuf::from(DEFAULT_DEV_SECRET_PATH),
    }
}

/// Returns the dev secret kept at `path`, creating it on first use.
///
/// When the file exists, its content, trimmed, is the secret (an empty file is an
/// `InvalidData` error rather than silently replaced: tokens already handed out would stop
/// working). Otherwise 32 random bytes are encoded as unpadded base64url (43 characters) and
/// written to `path` with mode `0600` (missing directories are created with mode `0700`),
/// and that text is returned. The secret is the text itself: its UTF-8 bytes are the HMAC
/// key, so it goes into [`AuthConfig::secret`](super::AuthConfig::secret) as it is.
///
/// The file appears complete or not at all (written aside, then linked into place), and when
/// two processes create it at once both end up with the one that won. A file readable by
/// others is used, with a warning.
pub fn load_or_create_dev_secret(path: &Path) -> io::Result<String> {
    if let Some(secret) = read_existing(path)? {
        return Ok(secret);
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_private_dir_all(dir)?;
    }

    let secret = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    let tmp = path.with_file_name(format!(
        ".{}.{}.{:016x}.tmp",
        path.file_name()
            .map_or_else(|| "dev-secret".into(), |n| n.to_string_lossy()),
        std::process::id(),
        rand::random::<u64>()
    ));
    let result = write_private(&tmp, &secret).and_then(|()| publish(&tmp, path));
    let _ = fs::remove_file(&tmp);
    match result {
        Ok(()) => {
            tracing::info!(path = %path.display(), "created a new dev secret");
            Ok(secret)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => read_existing(path)?
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "dev secret vanished")),
        Err(e) => Err(e),
    }
}

/// The trimmed secret of an existing file; `None` when there is no file.
fn read_existing(path: &Path) -> io::Result<Option<String>> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let secret = text.trim();
    if secret.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} is empty: delete it to create a new dev secret",
                path.display()
            ),
        ));
    }
    warn_if_shared(path);
    Ok(Some(secret.to_owned()))
}

#[cfg(unix)]
fn warn_if_shared(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            path = %path.display(),
            mode = format_args!("{:o}", meta.permissions().mode() & 0o777),
            "the dev secret file is readable by others: chmod 600 it"
        );
    }
}

#[cfg(not(unix))]
fn warn_if_shared(_path: &Path) {}

fn create_private_dir_all(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// Creates `path` (which must not exist) with mode 0600 and writes `secret` and a newline.
fn write_private(path: &Path, secret: &str) -> io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(secret.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}

/// Puts the complete file `tmp` at `path` unless something is there already
/// (`AlreadyExists`). A hard link never replaces; where links are not supported, a rename
/// (which would replace a file created meanwhile) is the fallback.
fn publish(tmp: &Path, path: &Path) -> io::Result<()> {
    match fs::hard_link(tmp, path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(e),
        Err(_) => {
            if path.exists() {
                return Err(io::ErrorKind::AlreadyExists.into());
            }
            fs::rename(tmp, path)
        }
    }
}
