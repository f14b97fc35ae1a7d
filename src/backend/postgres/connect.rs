//! From a `postgres://` URL to a connection, and from client errors to one-line messages that
//! say what to do.
//!
//! The client's configuration is built field by field from the parsed URL rather than from the
//! URL text, so that the password never travels through a string that could end up in an error,
//! and so that elect decides the password sources and the TLS verification itself.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, Client};

use super::pgpass;
use super::session::PROBE_CHANNEL;
use super::sql::CHANNEL;
use super::table::{Table, DEFAULT_TABLE};
use super::tls::{self, SslMode, TlsFiles};
use crate::backend::{BackendError, BackendOptions, BackendUrl, Result};

/// Time to set up a connection: TCP, TLS, authentication. A SIGSTOPped server still completes
/// the TCP handshake from its listen backlog, so only this bound stops a connect from hanging.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Time to wait for the answer to one statement. The lease keeper adds its own, shorter bound on
/// renewals; this one keeps every other call (status, release, acquire) from hanging.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(2);

const DEFAULT_PORT: u16 = 5432;
/// Query keys a URL may carry; anything else is most likely a typo and is refused.
const KNOWN_KEYS: [&str; 7] = [
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "table",
    "application_name",
    "connect_timeout",
];

/// Where and how to connect. Holds the password (inside `config`), so its `Debug` is redacted.
/// Cloned for the thread that settles an unfinished acquire when the backend is dropped.
#[derive(Clone)]
pub struct Target {
    config: tokio_postgres::Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    pub table: Table,
    /// The database, for messages.
    pub database: String,
    /// `host:port` of the first server, for messages.
    pub addr: String,
    connect_timeout: Duration,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("addr", &self.addr)
            .field("database", &self.database)
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

/// A live session, with the task that drives it.
pub struct Conn {
    pub client: Client,
    /// Lock names from release notifications, forwarded by the driving task.
    pub released: mpsc::UnboundedReceiver<String>,
    /// Whether this session has run `LISTEN`.
    pub listening: bool,
    /// Whether a notification sent by another session reached this one while it sat idle: only
    /// then can a waiter count on being woken by a release. Through a transaction-pooling proxy
    /// (PgBouncer) an idle client is attached to no server session, and hears nothing.
    pub hears: bool,
    /// Whether `hears` was found out yet (once per session).
    pub probed: bool,
    /// The line of waiters this session stands first in (the key of the advisory lock it
    /// holds): see `session`.
    pub ticket: Option<i32>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("listening", &self.listening)
            .field("hears", &self.hears)
            .field("ticket", &self.ticket)
            .finish_non_exhaustive()
    }
}

impl Drop for Conn {
    /// Ends the driving task, which closes the socket: a session that failed or timed out is
    /// never reused.
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Target {
    pub fn from_url(url: &BackendUrl, options: &BackendOptions) -> Result<Self> {
        check_keys(url)?;
        let mut config = tokio_postgres::Config::new();
        let first = servers(url, &mut config)?;
        let port = first.port.unwrap_or(DEFAULT_PORT);
        let user = match url.user.clone().or_else(|| env("PGUSER")) {
            Some(user) => user,
            None => os_user()?,
        };
        let database = database(url)?;
        let login = pgpass::Lookup {
            host: &first.host,
            port,
            database: &database,
            user: &user,
        };
        if let Some(password) = password(url, login) {
            config.password(password);
        }
        let connect_timeout = connect_timeout(url)?;
        config
            .user(&user)
            .dbname(&database)
            .application_name(url.query_value("application_name").unwrap_or("elect"))
            .connect_timeout(connect_timeout);
        let tls = tls_connector(url, options, &mut config)?;
        let table = Table::parse(url.query_value("table").unwrap_or(DEFAULT_TABLE))?;
        Ok(Self {
            config,
            tls,
            table,
            database,
            addr: format!("{}:{port}", first.host),
            connect_timeout,
        })
    }

    /// A new session, driven by a task of its own.
    pub async fn connect(&self) -> Result<Conn, ConnectError> {
        // The client's connect_timeout covers each TCP connect; this bound covers the whole
        // setup, TLS and authentication included.
        let bound = self.connect_timeout + Duration::from_secs(1);
        let connecting = async {
            match &self.tls {
                Some(tls) => {
                    let (client, connection) = self.config.connect(tls.clone()).await?;
                    Ok::<_, tokio_postgres::Error>(drive(client, connection))
                }
                None => {
                    let (client, connection) = self.config.connect(tokio_postgres::NoTls).await?;
                    Ok(drive(client, connection))
                }
            }
        };
        match tokio::time::timeout(bound, connecting).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(err)) => Err(ConnectError::Client(err)),
            Err(_) => Err(ConnectError::TimedOut),
        }
    }
}

/// Refuses a query key elect does not know: most likely a typo.
fn check_keys(url: &BackendUrl) -> Result<()> {
    match url
        .query
        .iter()
        .find(|(k, _)| !KNOWN_KEYS.contains(&k.as_str()))
    {
        Some((key, _)) => Err(BackendError::Config(format!(
            "unknown PostgreSQL URL option {key:?} (known: {})",
            KNOWN_KEYS.join(", ")
        ))),
        None => Ok(()),
    }
}

/// Puts the URL's servers into `config`; the first, which messages name.
fn servers<'u>(
    url: &'u BackendUrl,
    config: &mut tokio_postgres::Config,
) -> Result<&'u crate::backend::url::HostPort> {
    for host in &url.hosts {
        config.host(&host.host);
        config.port(host.port.unwrap_or(DEFAULT_PORT));
    }
    let Some(first) = url.hosts.first() else {
        return Err(BackendError::Config(
            "a PostgreSQL URL needs a host: postgres://user@host[:port]/database".into(),
        ));
    };
    if url.hosts.len() > 1 {
        // With several servers, skip standbys and take the primary, as libpq does with
        // target_session_attrs=read-write. With one, the standby check at open time says
        // plainly what is wrong.
        config.target_session_attrs(tokio_postgres::config::TargetSessionAttrs::ReadWrite);
    }
    Ok(first)
}

/// The database the URL names, else PGDATABASE. libpq would fall back to a database named after
/// the user, so that two hosts logging in as two roles would keep their leases in two databases:
/// the database must be named.
fn database(url: &BackendUrl) -> Result<String> {
    match url.path.trim_start_matches('/') {
        "" => env("PGDATABASE").ok_or_else(|| {
            BackendError::Config(
                "the PostgreSQL URL names no database (and PGDATABASE is not set): name it, \
                 as in postgres://user@host/database, so that every contender of a lock \
                 uses the same one whichever role it logs in as"
                    .into(),
            )
        }),
        db => Ok(db.to_owned()),
    }
}

/// libpq's order: the connection string, then PGPASSWORD, then the password file.
fn password(url: &BackendUrl, login: pgpass::Lookup<'_>) -> Option<String> {
    url.password
        .clone()
        .or_else(|| env("PGPASSWORD"))
        .or_else(|| pgpass::password(login))
}

/// `connect_timeout=` in whole seconds, else [`CONNECT_TIMEOUT`].
fn connect_timeout(url: &BackendUrl) -> Result<Duration> {
    let Some(secs) = url.query_value("connect_timeout") else {
        return Ok(CONNECT_TIMEOUT);
    };
    secs.parse::<u64>()
        .ok()
        .map(Duration::from_secs)
        .filter(|d| !d.is_zero() && *d <= crate::cli::LONGEST)
        .ok_or_else(|| {
            BackendError::Config(format!(
                "invalid connect_timeout {secs:?}: expected whole seconds above zero, at most 100 years"
            ))
        })
}

/// The `sslmode` the client negotiates, into `config`, and the rustls setup that decides what is
/// verified; the files from the options, else from the URL.
fn tls_connector(
    url: &BackendUrl,
    options: &BackendOptions,
    config: &mut tokio_postgres::Config,
) -> Result<Option<tokio_postgres_rustls::MakeRustlsConnect>> {
    let mode = match url.query_value("sslmode") {
        Some(mode) => SslMode::parse(mode)?,
        None => SslMode::Prefer,
    };
    config.ssl_mode(mode.negotiation());
    let given = |option: &Option<std::path::PathBuf>, key: &str| {
        option
            .clone()
            .or_else(|| url.query_value(key).map(Into::into))
    };
    let files = TlsFiles {
        ca: given(&options.tls_ca, "sslrootcert"),
        cert: given(&options.tls_cert, "sslcert"),
        key: given(&options.tls_key, "sslkey"),
    };
    tls::connector(mode, &files)
}

/// Why a connect failed.
#[derive(Debug)]
pub enum ConnectError {
    Client(tokio_postgres::Error),
    TimedOut,
}

impl ConnectError {
    /// Whether the server (or the TLS handshake) answered and said no: a wrong password, no
    /// such database or role, a certificate that does not verify, a password that is missing.
    /// Trying again changes nothing. Otherwise there was no answer: no connection, a reset, a
    /// timeout, or a server that cannot take the session now (starting up, shutting down, no
    /// free connection slot).
    pub fn is_refusal(&self) -> bool {
        let Self::Client(err) = self else {
            return false;
        };
        if let Some(db) = err.as_db_error() {
            let passing = [
                SqlState::CANNOT_CONNECT_NOW,
                SqlState::TOO_MANY_CONNECTIONS,
                SqlState::ADMIN_SHUTDOWN,
                SqlState::CRASH_SHUTDOWN,
            ];
            return !passing.contains(db.code());
        }
        let text = describe(err).to_ascii_lowercase();
        if ["tls", "certificate", "handshake", "password missing"]
            .iter()
            .any(|word| text.contains(word))
        {
            return true;
        }
        let mut source = std::error::Error::source(err);
        while let Some(cause) = source {
            if cause.is::<std::io::Error>() {
                return false;
            }
            source = cause.source();
        }
        !err.is_closed()
    }
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Client(err) => f.write_str(&describe(err)),
            Self::TimedOut => f.write_str(
                "no answer in time (is the server stopped or overloaded, or is this not a PostgreSQL port?)",
            ),
        }
    }
}

/// Spawns the task that drives a connection. tokio-postgres hands out notifications only to
/// whoever polls the connection, so the task forwards those on our channel.
fn drive<S, T>(client: Client, mut connection: tokio_postgres::Connection<S, T>) -> Conn
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if n.channel() == CHANNEL || n.channel().starts_with(PROBE_CHANNEL) {
                        let _ = tx.send(n.payload().to_owned());
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(err)) => {
                    tracing::debug!(err = %describe(&err), "PostgreSQL session ended");
                    break;
                }
                None => break,
            }
        }
    });
    Conn {
        client,
        released: rx,
        listening: false,
        hears: false,
        probed: false,
        ticket: None,
        task,
    }
}

/// A client error on one line, with a hint at the usual cause. Never contains the password:
/// neither the server nor the client repeats it.
pub fn describe(err: &tokio_postgres::Error) -> String {
    if let Some(db) = err.as_db_error() {
        let code = db.code();
        let hint = if *code == SqlState::INVALID_PASSWORD
            || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
        {
            " (check the user, and the password in the URL, PGPASSWORD or ~/.pgpass)"
        } else if *code == SqlState::INVALID_CATALOG_NAME {
            " (check the database name in the URL path)"
        } else if *code == SqlState::INSUFFICIENT_PRIVILEGE {
            " (grant the role the privileges the README lists, or create the table as its owner)"
        } else if *code == SqlState::TOO_MANY_CONNECTIONS {
            " (the server has no free connection slot)"
        } else if *code == SqlState::ADMIN_SHUTDOWN || *code == SqlState::CRASH_SHUTDOWN {
            " (the server ended the session)"
        } else {
            ""
        };
        return one_line(&format!(
            "{} [SQLSTATE {}]{hint}",
            db.message(),
            code.code()
        ));
    }
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    let lower = text.to_ascii_lowercase();
    let hint = if lower.contains("connection refused") {
        " (is PostgreSQL running there and listening on TCP?)"
    } else if lower.contains("does not allow writes") {
        " (every server listed is a standby; point elect at the primary)"
    } else if lower.contains("password missing") {
        " (the server asks for a password: give it in the URL, PGPASSWORD or ~/.pgpass)"
    } else if lower.contains("server does not support tls") {
        " (the server does not offer TLS: turn ssl on there, or use sslmode=prefer or disable)"
    } else if lower.contains("tls") || lower.contains("certificate") || lower.contains("handshake")
    {
        " (TLS failed: check sslmode, the CA (--tls-ca or sslrootcert=) and the host name)"
    } else if lower.contains("timed out") || lower.contains("timeout") {
        " (no answer in time; is the server stopped or overloaded?)"
    } else {
        ""
    };
    one_line(&format!("{text}{hint}"))
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn env(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.is_empty())
}

/// libpq's default user: the name of the account elect runs as.
fn os_user() -> Result<String> {
    let uid = nix::unistd::geteuid();
    match nix::unistd::User::from_uid(uid) {
        Ok(Some(user)) => Ok(user.name),
        _ => Err(BackendError::Config(format!(
            "no PostgreSQL user given and uid {uid} has no name: postgres://user@host/database"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<Target> {
        Target::from_url(&BackendUrl::parse(url)?, &BackendOptions::default())
    }

    #[test]
    fn urls_are_checked() {
        let t = parse("postgres://u:pw@db:6543/app?sslmode=disable&table=ops.leases").unwrap();
        assert_eq!(t.addr, "db:6543");
        assert_eq!(t.table.quoted(), "\"ops\".\"leases\"");
        assert!(!format!("{t:?}").contains("pw"));
        assert!(parse("postgresql://u@db/app").is_ok());
        assert!(parse("postgres://u@db/app?sslmod=require").is_err());
        assert!(parse("postgres://u@db/app?table=a-b").is_err());
        assert!(parse("postgres://u@db/app?sslmode=bogus").is_err());
        assert!(parse("postgres://u@db/app?connect_timeout=0").is_err());
        assert!(parse("postgres://u@db/app?connect_timeout=18446744073709551615").is_err());
    }
}
