//! From a `redis://` or `rediss://` URL to a checked connection, and from client errors to
//! one-line messages that say what to do.
//!
//! The connection details are built field by field rather than by handing the URL text to the
//! client: the password then never travels through a string that could end up in an error.

use std::time::Duration;

use ::redis::aio::MultiplexedConnection;
use ::redis::{
    AsyncConnectionConfig, Client, ClientTlsConfig, ConnectionAddr, ErrorKind, IntoConnectionInfo,
    RedisConnectionInfo, RedisError, TlsCertificates,
};

use crate::backend::{BackendError, BackendOptions, BackendUrl, Result, Scheme};

/// Time to set up a connection: TCP, TLS, AUTH, SELECT. A SIGSTOPped server still completes the
/// TCP handshake from its listen backlog, so only this bound stops a connect from hanging there.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Time to wait for the answer to one command. The lease keeper adds its own, shorter bound on
/// renewals; this one keeps every other call (status, release, acquire) from hanging.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

const DEFAULT_PORT: u16 = 6379;
/// The password when the URL has none: it keeps the secret out of argv and out of URL files.
/// `elect run` does not pass this variable on to the job.
pub const PASSWORD_VARIABLE: &str = "ELECT_REDIS_PASSWORD";

/// Where to connect, parsed from the URL; `client` carries the credentials.
#[derive(Debug, Clone)]
pub struct Target {
    pub client: Client,
    /// `host:port`, for messages.
    pub addr: String,
}

impl Target {
    pub fn from_url(url: &BackendUrl, options: &BackendOptions) -> Result<Self> {
        let tls = match url.scheme() {
            Scheme::Redis => false,
            Scheme::Rediss => true,
            other => {
                return Err(BackendError::Config(format!(
                    "not a Redis URL (scheme {})",
                    other.name()
                )))
            }
        };
        let [host] = url.hosts.as_slice() else {
            return Err(BackendError::Config(
                "a Redis URL names one server: redis://[user:password@]host[:port][/db]".into(),
            ));
        };
        if let Some((key, _)) = url.query.first() {
            return Err(BackendError::Config(format!(
                "unknown Redis URL option {key:?} (a Redis URL takes no options)"
            )));
        }
        let port = host.port.unwrap_or(DEFAULT_PORT);
        let db = parse_db(&url.path)?;

        let mut redis = RedisConnectionInfo::default().set_db(db);
        if let Some(user) = &url.user {
            redis = redis.set_username(user);
        }
        let from_env = std::env::var(PASSWORD_VARIABLE)
            .ok()
            .filter(|p| !p.is_empty());
        if let Some(password) = url.password.as_ref().or(from_env.as_ref()) {
            redis = redis.set_password(password);
        }
        let addr = if tls {
            ConnectionAddr::TcpTls {
                host: host.host.clone(),
                port,
                insecure: false,
                tls_params: None,
            }
        } else {
            if options.tls_ca.is_some() || options.tls_cert.is_some() {
                tracing::warn!("TLS options are ignored for a redis:// URL; use rediss:// for TLS");
            }
            ConnectionAddr::Tcp(host.host.clone(), port)
        };
        let info = addr
            .into_connection_info()
            .map_err(|e| BackendError::Config(one_line(&e)))?
            .set_redis_settings(redis);
        let client = if tls {
            install_crypto_provider();
            Client::build_with_tls(info, tls_certificates(options)?)
        } else {
            Client::open(info)
        }
        .map_err(|e| BackendError::Config(format!("Redis client settings: {}", one_line(&e))))?;
        Ok(Self {
            client,
            addr: format!("{}:{port}", host.host),
        })
    }

    /// A new connection, checked with a PING so that a wrong password, database or port shows up
    /// now rather than at the first lease operation.
    pub async fn connect(&self) -> Result<MultiplexedConnection, RedisError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        let mut conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        ::redis::cmd("PING").query_async::<()>(&mut conn).await?;
        Ok(conn)
    }
}

/// `/N` selects database N; no path or `/` is database 0.
fn parse_db(path: &str) -> Result<i64> {
    let db = path.trim_start_matches('/');
    if db.is_empty() {
        return Ok(0);
    }
    db.parse::<u16>().map(i64::from).map_err(|_| {
        BackendError::Config(format!(
            "invalid Redis database {db:?} in the URL path: expected a number, as in redis://host:6379/0"
        ))
    })
}

/// rustls needs a process-wide crypto provider before its first connection. Installing fails
/// only when one is already installed, which is just as good.
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The CA from `--tls-ca` (else the system's roots), and a client certificate if one is given.
fn tls_certificates(options: &BackendOptions) -> Result<TlsCertificates> {
    let read = |what: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| {
            BackendError::Config(format!("cannot read the {what} {}: {e}", path.display()))
        })
    };
    let root_cert = options
        .tls_ca
        .as_deref()
        .map(|p| read("TLS CA file", p))
        .transpose()?;
    let client_tls = match (&options.tls_cert, &options.tls_key) {
        (None, None) => None,
        (Some(cert), Some(key)) => Some(ClientTlsConfig {
            client_cert: read("TLS client certificate", cert)?,
            client_key: read("TLS client key", key)?,
        }),
        _ => {
            return Err(BackendError::Config(
                "a TLS client certificate needs both --tls-cert and --tls-key".into(),
            ))
        }
    };
    Ok(TlsCertificates {
        client_tls,
        root_cert,
    })
}

/// Whether an error leaves the connection in doubt, so that the next call should open a new one.
/// A server's error reply (a script error, NOPERM) does not.
pub fn breaks_connection(err: &RedisError) -> bool {
    !matches!(err.kind(), ErrorKind::Server(_) | ErrorKind::Extension)
}

/// A client error on one line, with a hint at the usual cause.
pub fn describe(err: &RedisError) -> String {
    let text = one_line(err);
    let lower = text.to_ascii_lowercase();
    let hint = if err.kind() == ErrorKind::AuthenticationFailed
        || lower.contains("wrongpass")
        || lower.contains("invalid password")
    {
        "check the user and password in the URL or ELECT_REDIS_PASSWORD"
    } else if lower.contains("noauth") {
        "the server requires a password: redis://user:password@host/ or ELECT_REDIS_PASSWORD"
    } else if lower.contains("db index") || lower.contains("select") {
        "check the database number in the URL path"
    } else if err.is_connection_refusal() {
        "is redis-server running there?"
    } else if err.is_timeout() {
        "no answer in time; is the server stopped or overloaded, or is this not a Redis port?"
    } else if lower.contains("certificate")
        || lower.contains("tls")
        || lower.contains("handshake")
        || lower.contains("invalid peer")
    {
        "TLS failed: check --tls-ca (the CA that signed the server's certificate) and the host name"
    } else if err.kind() == ErrorKind::Parse
        || lower.contains("parse")
        || lower.contains("protocol")
        || err.is_connection_dropped()
    {
        "the server closed the connection or does not speak the Redis protocol; is this a Redis port (use rediss:// for TLS)?"
    } else {
        ""
    };
    if hint.is_empty() {
        text
    } else {
        format!("{text} ({hint})")
    }
}

fn one_line(err: &RedisError) -> String {
    err.to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_numbers() {
        assert_eq!(parse_db("").unwrap(), 0);
        assert_eq!(parse_db("/").unwrap(), 0);
        assert_eq!(parse_db("/3").unwrap(), 3);
        assert!(parse_db("/x").is_err());
        assert!(parse_db("/-1").is_err());
    }

    #[test]
    fn urls_are_checked() {
        let opts = BackendOptions::default();
        let parse = |u: &str| Target::from_url(&BackendUrl::parse(u).unwrap(), &opts);
        assert!(parse("redis://h:1/0").is_ok());
        assert!(parse("rediss://u:p@h/2").is_ok());
        assert!(parse("redis://a,b").is_err());
        assert!(parse("redis://h?x=1").is_err());
        assert!(parse("redis://h/db").is_err());
    }
}
