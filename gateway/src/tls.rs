//! rustls configuration shared by the HTTPS sink (client) and the demo receiver (server). Ring is
//! the crypto provider everywhere: small, pure Rust and assembly, cross-compiles with gcc.

use std::{path::Path, sync::Arc};

use rustls::{ClientConfig, RootCertStore, crypto::CryptoProvider};
use rustls_pki_types::{CertificateDer, pem::PemObject};

/// Why a TLS setup failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The CA file could not be read or holds no certificate.
    #[error("cannot use CA file `{path}`: {why}")]
    CaFile {
        /// The file.
        path: String,
        /// What went wrong.
        why: String,
    },
    /// The client certificate or its key could not be read.
    #[error("cannot use client certificate or key `{path}`: {why}")]
    Identity {
        /// The file.
        path: String,
        /// What went wrong.
        why: String,
    },
    /// rustls refused the configuration.
    #[error("TLS setup failed")]
    Rustls(#[from] rustls::Error),
}

/// The process-wide crypto provider.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client config trusting the system's roots plus the certificates in `ca_file`.
///
/// # Errors
/// The CA file is unreadable, holds no certificate, or holds an invalid one.
pub fn client_config(ca_file: Option<&Path>) -> Result<ClientConfig, TlsError> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(ca_file)?)
        .with_no_client_auth())
}

/// The system's roots plus the certificates in `ca_file`.
fn roots(ca_file: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(system_roots = added, "Loaded system CA certificates.");
    if let Some(path) = ca_file {
        let bad = |why: String| TlsError::CaFile {
            path: path.display().to_string(),
            why,
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| bad(e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| bad(e.to_string()))?;
        if certs.is_empty() {
            return Err(bad("no PEM certificate in it".to_owned()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| bad(e.to_string()))?;
        }
    }
    Ok(roots)
}

/// As [`client_config`], presenting the PEM certificate chain in `certificate` with its PEM
/// private key `key` (mutual TLS).
///
/// # Errors
/// The CA file, the certificate or the key is unreadable or invalid, or they do not match.
pub fn client_config_with_identity(
    ca_file: Option<&Path>,
    certificate: &Path,
    key: &Path,
) -> Result<ClientConfig, TlsError> {
    let (chain, key_der) = identity(certificate, key)?;
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(ca_file)?)
        .with_client_auth_cert(chain, key_der)
        .map_err(|e| mismatch(certificate, key, &e))
}

/// The client config of a connection that trusts `ca_file` besides the system's roots and, for
/// mutual TLS, presents `identity` (certificate, key); relative paths taken from `base`.
///
/// # Errors
/// As [`client_config`] and [`client_config_with_identity`].
pub fn client_config_in(
    base: &Path,
    ca_file: Option<&Path>,
    identity: Option<&(std::path::PathBuf, std::path::PathBuf)>,
) -> Result<ClientConfig, TlsError> {
    let ca = ca_file.map(|p| base.join(p));
    match identity {
        None => client_config(ca.as_deref()),
        Some((certificate, key)) => {
            client_config_with_identity(ca.as_deref(), &base.join(certificate), &base.join(key))
        }
    }
}

/// The PEM certificate chain in `certificate` and the PEM private key in `key`.
fn identity(
    certificate: &Path,
    key: &Path,
) -> Result<
    (
        Vec<CertificateDer<'static>>,
        rustls_pki_types::PrivateKeyDer<'static>,
    ),
    TlsError,
> {
    use rustls_pki_types::PrivateKeyDer;
    let bad = |path: &Path, why: String| TlsError::Identity {
        path: path.display().to_string(),
        why,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(certificate)
        .map_err(|e| bad(certificate, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(certificate, e.to_string()))?;
    if chain.is_empty() {
        return Err(bad(certificate, "no PEM certificate in it".to_owned()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, e.to_string()))?;
    Ok((chain, key_der))
}

/// A certificate that rustls refused with `key`: both files named.
fn mismatch(certificate: &Path, key: &Path, error: &rustls::Error) -> TlsError {
    TlsError::Identity {
        path: certificate.display().to_string(),
        why: format!("it does not go with the key `{}`: {error}", key.display()),
    }
}

/// A server config presenting the PEM certificate chain in `certificate` with its PEM private
/// key `key` (a webhook source's endpoint).
///
/// # Errors
/// The certificate or the key is unreadable or invalid, or they do not match.
pub fn server_config(certificate: &Path, key: &Path) -> Result<rustls::ServerConfig, TlsError> {
    let (chain, key_der) = identity(certificate, key)?;
    rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| mismatch(certificate, key, &e))
}
