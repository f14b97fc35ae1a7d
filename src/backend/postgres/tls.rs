//! TLS for the PostgreSQL backend, with the meaning libpq gives each `sslmode`.
//!
//! | sslmode | encrypted | certificate chain checked | host name checked |
//! |---|---|---|---|
//! | `disable` | no | - | - |
//! | `prefer` (default) | if the server offers it | if a CA is given | no |
//! | `require` | yes | if a CA is given | no |
//! | `verify-ca` | yes | yes | no |
//! | `verify-full` | yes | yes | yes |
//!
//! The CA comes from `--tls-ca`, else `sslrootcert=` in the URL, else libpq's default
//! `~/.postgresql/root.crt`, else (for `verify-*` only) the system's roots. As in libpq, a CA
//! that is there turns `require` (and `prefer`, once TLS is in use) into `verify-ca`: whoever
//! gave a CA expects it to be used. A CA, client certificate or key given with `disable` cannot
//! be used, and elect says so in a warning.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};
use rustls::{Error as TlsError, SignatureScheme};

use crate::backend::tls::{file_error, install_crypto_provider};
use crate::backend::{BackendError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn parse(text: &str) -> Result<Self> {
        Ok(match text {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            "allow" => {
                return Err(BackendError::Config(
                    "sslmode=allow is not supported; use prefer or disable".into(),
                ))
            }
            other => {
                return Err(BackendError::Config(format!(
                    "unknown sslmode {other:?} (known: disable, prefer, require, verify-ca, verify-full)"
                )))
            }
        })
    }

    /// The client's own setting: it negotiates TLS, this module decides what is verified.
    pub fn negotiation(self) -> tokio_postgres::config::SslMode {
        match self {
            Self::Disable => tokio_postgres::config::SslMode::Disable,
            Self::Prefer => tokio_postgres::config::SslMode::Prefer,
            Self::Require | Self::VerifyCa | Self::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        }
    }
}

/// Files that configure TLS.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// The rustls setup for `mode`; `None` for `disable`.
pub fn connector(
    mode: SslMode,
    files: &TlsFiles,
) -> Result<Option<tokio_postgres_rustls::MakeRustlsConnect>> {
    if mode == SslMode::Disable {
        for (what, given) in [
            ("CA (--tls-ca, sslrootcert=)", &files.ca),
            ("client certificate (--tls-cert, sslcert=)", &files.cert),
            ("client key (--tls-key, sslkey=)", &files.key),
        ] {
            if let Some(path) = given {
                tracing::warn!(
                    "sslmode=disable: the TLS {what} {} is not used; use sslmode=verify-full (or remove it)",
                    path.display()
                );
            }
        }
        return Ok(None);
    }
    install_crypto_provider();
    let provider = rustls::crypto::ring::default_provider();
    let algorithms = provider.signature_verification_algorithms;
    let builder = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| BackendError::Config(format!("TLS setup: {e}")))?;
    let given_ca = files.ca.clone().or_else(default_ca);
    let builder = match mode {
        SslMode::Disable | SslMode::Prefer | SslMode::Require => match given_ca {
            None => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerification(algorithms))),
            Some(ca) => {
                let inner = webpki_verifier(roots(Some(&ca))?)?;
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(ChainOnly(inner)))
            }
        },
        SslMode::VerifyCa => {
            let inner = webpki_verifier(roots(files.ca.as_deref())?)?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly(inner)))
        }
        SslMode::VerifyFull => {
            builder.with_webpki_verifier(webpki_verifier(roots(files.ca.as_deref())?)?)
        }
    };
    let config = match (&files.cert, &files.key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => {
            let certs = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<std::result::Result<Vec<_>, _>>())
                .map_err(|e| file_error("TLS client certificate", cert, e))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| file_error("TLS client key", key, e))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| BackendError::Config(format!("TLS client certificate: {e}")))?
        }
        _ => {
            return Err(BackendError::Config(
                "a TLS client certificate needs both a certificate and a key (--tls-cert and --tls-key, or sslcert= and sslkey=)".into(),
            ))
        }
    };
    Ok(Some(tokio_postgres_rustls::MakeRustlsConnect::new(config)))
}

/// libpq's default CA file, `~/.postgresql/root.crt`, if it exists (as root, in root's own home:
/// see [`crate::home`]).
fn default_ca() -> Option<PathBuf> {
    crate::home::dir()
        .map(|home| home.join(".postgresql/root.crt"))
        .filter(|path| path.is_file())
}

fn roots(ca: Option<&Path>) -> Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    if let Some(path) = ca.map(Path::to_path_buf).or_else(default_ca) {
        let certs = CertificateDer::pem_file_iter(&path)
            .and_then(|certs| certs.collect::<std::result::Result<Vec<_>, _>>())
            .map_err(|e| file_error("TLS CA file", &path, e))?;
        let (added, _) = store.add_parsable_certificates(certs);
        if added == 0 {
            return Err(BackendError::Config(format!(
                "the TLS CA file {} holds no usable certificate",
                path.display()
            )));
        }
        return Ok(store);
    }
    let native = rustls_native_certs::load_native_certs();
    store.add_parsable_certificates(native.certs);
    if store.is_empty() {
        return Err(BackendError::Config(
            "sslmode=verify-ca/verify-full needs a CA: give --tls-ca or sslrootcert= (no system CA certificates were found)".into(),
        ));
    }
    Ok(store)
}

fn webpki_verifier(roots: RootCertStore) -> Result<Arc<WebPkiServerVerifier>> {
    WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .map_err(|e| BackendError::Config(format!("TLS CA: {e}")))
}

/// `require` and `prefer`: encrypt, trust whatever certificate the server shows (as libpq
/// does). Signatures are still checked, so the handshake itself is sound.
#[derive(Debug)]
struct NoVerification(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, TlsError> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, TlsError> {
        verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, TlsError> {
        verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted CA, but the name in the certificate need not be
/// the host connected to.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, TlsError> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(TlsError::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, TlsError> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, TlsError> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        assert_eq!(SslMode::parse("verify-full").unwrap(), SslMode::VerifyFull);
        assert!(SslMode::parse("allow").is_err());
        assert!(SslMode::parse("yes").is_err());
        assert!(connector(SslMode::Disable, &TlsFiles::default())
            .unwrap()
            .is_none());
        assert!(connector(SslMode::Require, &TlsFiles::default())
            .unwrap()
            .is_some());
    }
}
