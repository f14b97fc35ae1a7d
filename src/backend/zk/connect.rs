//! Where and how to reach ZooKeeper: the URL's hosts, credentials and base path, and one session.
//!
//! `zk://[user:password@]host[:port][,host[:port]...][/base/path]`. The path is the node under
//! which the locks live (default `/elect`); it is a plain prefix of every path elect uses, not a
//! ZooKeeper chroot, so a kazoo `Lock("/elect/billing")` and `elect run --lock billing` meet
//! without any chroot on either side. The password may come from `ELECT_ZK_PASSWORD` instead of
//! the URL. Credentials are ZooKeeper's `digest` scheme (`user:password`), sent once per
//! connection.

use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;
use zookeeper_client::{Acl, Acls, Client, Permission};

use super::{describe, CONNECT_TIMEOUT};
use crate::backend::{BackendError, BackendUrl, Result};

/// The default port of a ZooKeeper client connection.
pub const DEFAULT_PORT: u16 = 2181;

/// Where locks live when the URL names no path.
pub const DEFAULT_BASE: &str = "/elect";

/// The environment variable that may hold the password (the URL's wins).
pub const PASSWORD_VARIABLE: &str = "ELECT_ZK_PASSWORD";

/// While no handshake is answered, how long a try to open a session goes on alone before the
/// next starts beside it.
const STAGGER: Duration = Duration::from_millis(200);
/// The most tries to open a session under way at once: each waits up to 2/5 of the session
/// timeout for its answer (the client library's bound), a new one starts every [`STAGGER`].
const MAX_TRIES: usize = 5;

/// With credentials, elect's nodes are writable by the same identity only and readable by anyone
/// (so that `status` and kazoo's `contenders()` work without credentials); without, they are
/// open to all, as kazoo's default `OPEN_ACL_UNSAFE`.
static CREATOR_ALL_ANYONE_READ: [Acl; 2] = [
    Acl::new_const(Permission::ALL, "auth", ""),
    Acl::new_const(Permission::READ, "world", "anyone"),
];

/// Everything needed to open a session, taken from the URL once.
#[derive(Clone)]
pub struct Target {
    /// `host:port,host:port` as the client takes it.
    pub hosts: String,
    /// The node under which locks live, without a trailing `/`.
    pub base: String,
    /// `user:password` for the digest scheme.
    credentials: Option<String>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("hosts", &self.hosts)
            .field("base", &self.base)
            .field("credentials", &self.credentials.as_ref().map(|_| "***"))
            .finish()
    }
}

impl Target {
    pub fn from_url(url: &BackendUrl) -> Result<Self> {
        Self::from_url_with(url, std::env::var(PASSWORD_VARIABLE).ok())
    }

    fn from_url_with(url: &BackendUrl, env_password: Option<String>) -> Result<Self> {
        let bad = |why: String| BackendError::Config(format!("{}: {why}", url.redacted()));
        if let Some((key, _)) = url.query.first() {
            return Err(bad(format!(
                "unknown query parameter {key:?} (a ZooKeeper URL takes none)"
            )));
        }
        let hosts = url
            .hosts
            .iter()
            .map(|h| {
                let port = h.port.unwrap_or(DEFAULT_PORT);
                if h.host.contains(':') {
                    format!("[{}]:{port}", h.host)
                } else {
                    format!("{}:{port}", h.host)
                }
            })
            .collect::<Vec<_>>()
            .join(",");
        let base = match url.path.trim_end_matches('/') {
            "" => DEFAULT_BASE.to_owned(),
            path => path.to_owned(),
        };
        if base
            .split('/')
            .skip(1)
            .any(|part| part.is_empty() || part == "." || part == ".." || part == "zookeeper")
        {
            return Err(bad(format!(
                "invalid base path {base:?}: no empty, '.', '..' or 'zookeeper' segments"
            )));
        }
        let password = url.password.clone().or(env_password);
        let credentials = match (&url.user, password) {
            (Some(user), Some(password)) => Some(format!("{user}:{password}")),
            (Some(_), None) => {
                return Err(bad(format!(
                    "a user without a password: give it in the URL (user:password@) or in {PASSWORD_VARIABLE}"
                )))
            }
            (None, Some(_)) if url.password.is_some() => {
                return Err(bad("a password without a user".to_owned()))
            }
            (None, _) => None,
        };
        Ok(Self {
            hosts,
            base,
            credentials,
        })
    }

    /// The ACL of every node elect creates.
    pub fn acls(&self) -> Acls<'static> {
        match self.credentials {
            Some(_) => Acls::new(&CREATOR_ALL_ANYONE_READ),
            None => Acls::anyone_all(),
        }
    }

    /// Opens a session that asks for `timeout`. The server may grant another (its tick bounds);
    /// the caller decides what that means for the lease.
    pub async fn connect(&self, timeout: Duration) -> Result<Client> {
        let mut connector = Client::connector()
            .with_session_timeout(timeout)
            // Every host tried once and none answered: an error now, not after a session
            // timeout of retries.
            .with_fail_eagerly();
        if let Some(credentials) = &self.credentials {
            connector = connector.with_auth("digest", credentials.as_bytes());
        }
        match tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(&self.hosts)).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(err)) => Err(BackendError::Unavailable(format!(
                "connect to {}: {}",
                self.hosts,
                describe(&err)
            ))),
            Err(_) => Err(BackendError::Unavailable(format!(
                "connect to {}: no session within {}s",
                self.hosts,
                CONNECT_TIMEOUT.as_secs()
            ))),
        }
    }
}

impl Target {
    /// Opens a session as soon as the network lets one through, for a waiter that lost its
    /// place. A handshake sent while the network is down or slow cannot be answered within the
    /// library's bound once it comes back (the proxy's latency rows: a try sent a moment before
    /// a one-second delay ends is answered a second later, past the 800 ms bound of a 2 s
    /// session), so a new try starts every [`STAGGER`] beside the ones still waiting, and the
    /// first session opened wins; the others are dropped, and a session one of them opened
    /// meanwhile is closed with its client. Fails when every try has failed: at once when they
    /// fail fast (a refused connection; the caller paces the next round), or after
    /// [`CONNECT_TIMEOUT`] of tries.
    pub async fn connect_soon(&self, timeout: Duration) -> Result<Client> {
        let mut tries = JoinSet::new();
        let stop_starting = Instant::now() + CONNECT_TIMEOUT;
        loop {
            if tries.len() < MAX_TRIES && Instant::now() < stop_starting {
                let target = self.clone();
                tries.spawn(async move { target.connect(timeout).await });
            }
            tokio::select! {
                Some(done) = tries.join_next() => match done {
                    Ok(Ok(client)) => return Ok(client),
                    Ok(Err(err)) if tries.is_empty() => return Err(err),
                    Ok(Err(_)) | Err(_) => {}
                },
                () = tokio::time::sleep(STAGGER) => {}
            }
            if tries.is_empty() && Instant::now() >= stop_starting {
                return Err(BackendError::Unavailable(format!(
                    "connect to {}: no session within {}s",
                    self.hosts,
                    CONNECT_TIMEOUT.as_secs()
                )));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(text: &str, env: Option<&str>) -> Result<Target> {
        Target::from_url_with(&BackendUrl::parse(text).unwrap(), env.map(str::to_owned))
    }

    #[test]
    fn hosts_ports_and_base() {
        let t = target("zk://a,b:2182,[::1]", None).unwrap();
        assert_eq!(t.hosts, "a:2181,b:2182,[::1]:2181");
        assert_eq!(t.base, "/elect");
        assert!(t.credentials.is_none());
        let t = target("zk://a/apps/locks/", None).unwrap();
        assert_eq!(t.base, "/apps/locks");
    }

    #[test]
    fn credentials_from_the_url_or_the_environment() {
        let t = target("zk://app:s%40cret@a", Some("other")).unwrap();
        assert_eq!(t.credentials.as_deref(), Some("app:s@cret"));
        assert!(!format!("{t:?}").contains("cret"));
        let t = target("zk://app@a", Some("envpw")).unwrap();
        assert_eq!(t.credentials.as_deref(), Some("app:envpw"));
        assert!(target("zk://app@a", None).is_err());
        assert!(target("zk://:pw@a", None).is_err());
    }

    #[test]
    fn bad_paths_and_queries_are_refused() {
        for bad in [
            "zk://a//x",
            "zk://a/x/../y",
            "zk://a/zookeeper",
            "zk://a?prefix=x",
        ] {
            let err = target(bad, None).unwrap_err();
            assert!(matches!(err, BackendError::Config(_)), "{bad}: {err}");
        }
    }
}
