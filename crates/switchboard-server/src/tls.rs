//! The TLS client configuration shared by the outgoing HTTPS calls (`auth.jwks`, the
//! backend proxies): the system's trust store plus an optional CA file.

use std::sync::Arc;

use rustls_pki_types::{CertificateDer, pem::PemObject};

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
