//! TLS: the client configuration shared by the outgoing HTTPS calls (`auth.jwks`, the
//! backend proxies: the system's trust store plus an optional CA file), and the listener's
//! certificate (`[tls]`, [`ServerTls`], reloaded on `SIGHUP`).

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
};

use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

/// Why a TLS client configuration could not be made.
#[derive(Debug)]
pub(crate) enum TlsError {
    /// The CA file is unreadable or holds no usable certificate (the caller names its key).
    Ca(String),
    /// rustls refused the configuration itself.
    Tls(String),
}

/// A TLS client trusting the system's store and the PEM certificates of `ca_file`.
/// `what` names the caller in debug logs about unreadable system certificates.
pub(crate) fn client_config(
    ca_file: Option<&str>,
    what: &str,
) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::debug!(error = %e, "{what}: a system CA certificate could not be read");
    }
    let _ = roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_file {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| TlsError::Ca(format!("cannot read {path}: {e}")))?
            .collect::<Result<_, _>>()
            .map_err(|e| TlsError::Ca(format!("{path}: not PEM certificates: {e}")))?;
        if certs.is_empty() {
            return Err(TlsError::Ca(format!("{path} holds no certificate")));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| TlsError::Ca(format!("{path}: not a usable CA certificate: {e}")))?;
        }
    }
    // ring, not aws-lc-rs: it builds without cmake; its lack of post-quantum key exchange
    // does not matter for calls to an identity provider or the application's backend.
    #[allow(deprecated, reason = "the ring provider is what this build has")]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Tls(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// The listener's TLS configuration (`[tls]`): the certificate chain and key read from PEM
/// files, replaced as a whole by [`ServerTls::reload`]. A handshake takes the configuration
/// current when it starts; established connections keep their session.
#[derive(Debug)]
pub struct ServerTls {
    cert: PathBuf,
    key: PathBuf,
    /// Read per accepted connection, written by a reload; never held across an await.
    current: RwLock<Arc<rustls::ServerConfig>>,
}

/// A TLS setting that cannot be used: its configuration key (`tls.cert` or `tls.key` of the
/// server's `[tls]`, `proxies.ca` or `proxies` of the backend calls) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct TlsConfigError {
    /// The key's dotted path.
    pub key: &'static str,
    /// What is wrong with it (the file's path included).
    pub message: String,
}

impl ServerTls {
    /// Reads the certificate chain of `cert` and the private key of `key` (PEM files).
    pub fn load(cert: &Path, key: &Path) -> Result<ServerTls, TlsConfigError> {
        let config = server_config(cert, key)?;
        Ok(ServerTls {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: RwLock::new(Arc::new(config)),
        })
    }

    /// Reads the files again and serves the new certificate to the handshakes from now on.
    /// On an error the previous certificate stays (the error names the key).
    pub fn reload(&self) -> Result<(), TlsConfigError> {
        let config = server_config(&self.cert, &self.key)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
        Ok(())
    }

    /// The acceptor for a new connection: the configuration current now.
    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let config = self
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        tokio_rustls::TlsAcceptor::from(config)
    }

    /// The certificate file (for logs).
    pub fn cert_path(&self) -> &Path {
        &self.cert
    }
}

/// A rustls server configuration of the chain in `cert` and the key in `key`.
fn server_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, TlsConfigError> {
    let cert_err = |message: String| TlsConfigError {
        key: "tls.cert",
        message,
    };
    let key_err = |message: String| TlsConfigError {
        key: "tls.key",
        message,
    };
    let (c, k) = (cert.display(), key.display());
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_err(format!("cannot read {c}: {}", pem_error(e))))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_err(format!("{c}: not PEM certificates: {}", pem_error(e))))?;
    if chain.is_empty() {
        return Err(cert_err(format!("no certificate in {c}")));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => key_err(format!("no private key in {k}")),
        e => key_err(format!("cannot read {k}: {}", pem_error(e))),
    })?;
    #[allow(deprecated, reason = "the ring provider is what this build has")]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| cert_err(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => key_err(format!(
                "the key in {k} does not belong to the certificate in {c}"
            )),
            e => key_err(format!("{k}: not a usable private key for {c}: {e}")),
        })?;
    // Every surface of the port is HTTP/1.1 (WebSocket upgrades need it).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A PEM error's message; an I/O error as the system says it.
fn pem_error(e: rustls_pki_types::pem::Error) -> String {
    match e {
        rustls_pki_types::pem::Error::Io(io) => io.to_string(),
        e => format!("{e:?}"),
    }
}
