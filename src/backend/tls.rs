//! What the backends that speak TLS through rustls (Redis, PostgreSQL) share.

use std::path::Path;

use super::BackendError;

/// rustls needs a process-wide crypto provider before its first connection, for anything built
/// without an explicit one. Installing fails only when one is already installed, which is just
/// as good.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A TLS file (`what`: "TLS CA file", "TLS client key", ...) that cannot be read: a usage error.
pub fn file_error(what: &str, path: &Path, err: impl std::fmt::Display) -> BackendError {
    BackendError::Config(format!("cannot read the {what} {}: {err}", path.display()))
}
