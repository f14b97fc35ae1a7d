//! From a backend URL and options to a connected etcd client, and from client errors to one line.
//!
//! Everything a user can get wrong (a dead endpoint, a wrong password, a CA that does not match)
//! is found here, at open time, before any child starts: opening ends with a read of the key
//! prefix, which needs a live endpoint, valid credentials, a TLS handshake that verifies and read
//! permission on the prefix.

use std::path::Path;
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, GetOptions, Identity, TlsOptions};

use super::{Settings, CONNECT_TIMEOUT, REQUEST_TIMEOUT};
use crate::backend::retry::Retry;
use crate::backend::{BackendError, BackendOptions, BackendUrl, Result, Scheme};

/// etcd's default client port.
const DEFAULT_PORT: u16 = 2379;
/// Read when the URL names no user. A password is better kept here than in a URL, which ends
/// up in shell history and unit files.
pub const USER_ENV: &str = "ELECT_ETCD_USER";
pub const PASSWORD_ENV: &str = "ELECT_ETCD_PASSWORD";
/// The key prefix when the URL has no `?prefix=`.
const DEFAULT_PREFIX: &str = "elect/";
/// How long a connection may stay silent before an HTTP/2 ping asks whether the server is still
/// there. etcd ends a connection that pings more often than every 5 s
/// (`--grpc-keepalive-min-time`) with `GOAWAY too_many_pings` after two such pings, which a
/// waiter's connection (a watch and a keepalive every ttl / 3) would otherwise reach now and
/// then, and a thousand of them all the time.
const PING_EVERY: Duration = Duration::from_secs(10);
/// How long the answer to a ping may take before the connection counts as dead. As long as a
/// request's: a loaded server (a thousand clients connecting at once) answers late, and a
/// connection torn down for that only adds a reconnect to its load.
const PING_TIMEOUT: Duration = REQUEST_TIMEOUT;

/// The parts of a URL the etcd backend uses, checked.
#[derive(Clone)]
pub(super) struct Target {
    pub endpoints: Vec<String>,
    pub tls: bool,
    pub credentials: Option<(String, String)>,
    pub prefix: String,
}

impl Target {
    pub fn from_url(url: &BackendUrl) -> Result<Self> {
        let tls = match url.scheme() {
            Scheme::Etcd => false,
            Scheme::Etcds => true,
            other => {
                return Err(BackendError::Config(format!(
                    "not an etcd URL: {}",
                    other.name()
                )))
            }
        };
        if !url.path.is_empty() && url.path != "/" {
            return Err(BackendError::Config(format!(
                "an etcd URL takes its key prefix as ?prefix=..., not as a path ({:?})",
                url.path
            )));
        }
        let mut prefix = DEFAULT_PREFIX.to_owned();
        for (key, value) in &url.query {
            match key.as_str() {
                "prefix" => prefix.clone_from(value),
                other => {
                    return Err(BackendError::Config(format!(
                        "unknown etcd URL parameter {other:?} (known: prefix)"
                    )))
                }
            }
        }
        if prefix.is_empty() {
            // An empty prefix would make `status` read the whole keyspace.
            return Err(BackendError::Config(
                "the etcd key prefix must not be empty (default: elect/)".into(),
            ));
        }
        let scheme = if tls { "https" } else { "http" };
        let endpoints = url
            .hosts
            .iter()
            .map(|h| {
                let host = if h.host.contains(':') {
                    format!("[{}]", h.host)
                } else {
                    h.host.clone()
                };
                format!("{scheme}://{host}:{}", h.port.unwrap_or(DEFAULT_PORT))
            })
            .collect();
        Ok(Self {
            endpoints,
            tls,
            credentials: credentials(url, |name| std::env::var(name).ok())?,
            prefix,
        })
    }
}

/// User and password: each from the URL, else from the environment.
fn credentials(
    url: &BackendUrl,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<(String, String)>> {
    let nonempty = |v: Option<String>| v.filter(|v| !v.is_empty());
    let user = nonempty(url.user.clone()).or_else(|| nonempty(env(USER_ENV)));
    let password = url.password.clone().or_else(|| nonempty(env(PASSWORD_ENV)));
    match (user, password) {
        (None, None) => Ok(None),
        (Some(user), Some(password)) => Ok(Some((user, password))),
        (Some(user), None) => Err(BackendError::Config(format!(
            "etcd user {user:?} has no password: set {PASSWORD_ENV} (or put it in the URL)"
        ))),
        (None, Some(_)) => Err(BackendError::Config(format!(
            "an etcd password was given without a user: set {USER_ENV} or put user@ in the URL"
        ))),
    }
}

/// Connects to the first endpoint, from `first` on in turn, that answers a read of the prefix,
/// and says which one it was.
///
/// One client per endpoint, not the client's own balancing over all of them: that balancer
/// spreads requests over every endpoint, the dead ones included, so that with one endpoint down
/// about every other request (renewals too) would fail.
pub(super) async fn connect_any(
    target: &Target,
    options: &BackendOptions,
    first: usize,
) -> Result<(Client, usize)> {
    connect_any_once(target, options, first)
        .await
        .map_err(|failed| failed.error)
}

/// [`connect_any`], tried again until `until` while no endpoint answers (a timeout, a refused or
/// reset connection): a thousand waiters started at once find the server (and their own host)
/// busy, and some of them get no answer in time at first. The tries are paced by
/// `backend::retry`, each pause stretched by up to half again at random, so that waiters that
/// failed together do not come back together. An endpoint that answers with a refusal
/// (credentials, permissions, TLS) fails at once: waiting does not mend it.
pub(super) async fn connect_any_until(
    target: &Target,
    options: &BackendOptions,
    lock: &str,
    until: Option<tokio::time::Instant>,
) -> Result<(Client, usize)> {
    let mut retry = Retry::new();
    loop {
        match connect_any_once(target, options, 0).await {
            Ok(connected) => {
                retry.succeeded(lock);
                return Ok(connected);
            }
            Err(Failed {
                error: BackendError::Unavailable(why),
                answered: false,
            }) if until.is_none_or(|u| tokio::time::Instant::now() < u) => {
                let pause = spread(retry.failed(lock, "connecting", &why));
                let wake = tokio::time::Instant::now() + pause;
                tokio::time::sleep_until(until.map_or(wake, |u| wake.min(u))).await;
            }
            Err(failed) => return Err(failed.error),
        }
    }
}

/// A connect that failed, and whether an endpoint answered (and refused) rather than gave no
/// answer at all.
struct Failed {
    error: BackendError,
    answered: bool,
}

async fn connect_any_once(
    target: &Target,
    options: &BackendOptions,
    first: usize,
) -> std::result::Result<(Client, usize), Failed> {
    let count = target.endpoints.len();
    let mut failures = Vec::with_capacity(count);
    let mut answered = false;
    for i in (0..count).map(|k| (first + k) % count) {
        let endpoint = &target.endpoints[i];
        match connect(target, endpoint, options).await {
            Ok(client) => {
                if !failures.is_empty() {
                    tracing::warn!(endpoint = %endpoint, skipped = %failures.join("; "), "using the next etcd endpoint");
                }
                return Ok((client, i));
            }
            // Configuration mistakes are the same for every endpoint.
            Err(Failed {
                error: BackendError::Config(msg),
                ..
            }) => {
                return Err(Failed {
                    error: BackendError::Config(msg),
                    answered: true,
                })
            }
            Err(Failed {
                error: BackendError::Unavailable(msg) | BackendError::NoAnswer(msg),
                answered: said,
            }) => {
                answered |= said;
                failures.push(format!("{endpoint}: {msg}"));
            }
        }
    }
    let lower = failures.join(" ").to_ascii_lowercase();
    Err(Failed {
        error: BackendError::Unavailable(format!(
            "{}; {}",
            failures.join("; "),
            hint(target, &lower)
        )),
        // A TLS handshake that fails is the client's answer to the server's certificate.
        answered: answered || is_tls(&lower),
    })
}

/// Connects to one endpoint and proves the connection usable with one read of the prefix.
async fn connect(
    target: &Target,
    endpoint: &str,
    options: &BackendOptions,
) -> std::result::Result<Client, Failed> {
    let config = |error| Failed {
        error,
        answered: true,
    };
    let failed = |e: etcd_client::Error| Failed {
        answered: is_answer(&e),
        error: BackendError::Unavailable(describe(&e)),
    };
    let no_answer = || Failed {
        error: no_answer(),
        answered: false,
    };
    let mut connect = ConnectOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_timeout(REQUEST_TIMEOUT)
        // HTTP/2 pings find a frozen or vanished server on an idle connection.
        .with_keep_alive(PING_EVERY, PING_TIMEOUT)
        .with_keep_alive_while_idle(true)
        // etcd's auth tokens expire (5 minutes by default); a holder runs for hours.
        .with_auto_token_refresh(true);
    if let Some((user, password)) = &target.credentials {
        connect = connect.with_user(user, password);
    }
    if target.tls {
        connect = connect.with_tls(tls_options(options).map_err(config)?);
    } else if options.tls_ca.is_some() || options.tls_cert.is_some() || options.tls_key.is_some() {
        return Err(config(BackendError::Config(
            "TLS files were given (--tls-ca/--tls-cert/--tls-key) but the URL is etcd://; \
             use etcds:// for TLS"
                .into(),
        )));
    }
    // Connecting authenticates when credentials are set, which is a request of its own.
    let client = tokio::time::timeout(
        CONNECT_TIMEOUT + REQUEST_TIMEOUT,
        Client::connect([endpoint], Some(connect)),
    )
    .await
    .map_err(|_| no_answer())?
    .map_err(failed)?;
    let mut probe = client.clone();
    tokio::time::timeout(
        CONNECT_TIMEOUT + REQUEST_TIMEOUT,
        probe.get(
            target.prefix.as_str(),
            Some(GetOptions::new().with_prefix().with_count_only()),
        ),
    )
    .await
    .map_err(|_| no_answer())?
    .map_err(failed)?;
    Ok(client)
}

/// Whether an error is the server's answer (a refusal: credentials, permissions, a bad request)
/// rather than the lack of one (a timeout, a refused or broken connection, a server that is
/// not ready).
fn is_answer(err: &etcd_client::Error) -> bool {
    use tonic::Code;
    match err {
        etcd_client::Error::GRpcStatus(status) => !matches!(
            status.code(),
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
        ),
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => false,
        _ => true,
    }
}

fn is_tls(lower: &str) -> bool {
    lower.contains("certificate")
        || lower.contains("tls")
        || lower.contains("handshake")
        || lower.contains("unknownissuer")
}

/// `pause` stretched by up to half again, at random: pid and clock, no random source needed.
fn spread(pause: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let seed = u64::from(nanos ^ std::process::id().wrapping_mul(2_654_435_761));
    let half = u64::try_from(pause.as_millis() / 2)
        .unwrap_or(u64::MAX)
        .max(1);
    pause + Duration::from_millis(seed % half)
}

fn tls_options(options: &BackendOptions) -> Result<TlsOptions> {
    let mut tls = TlsOptions::new();
    tls = match &options.tls_ca {
        Some(ca) => tls.ca_certificate(Certificate::from_pem(read_pem(ca, "CA bundle")?)),
        // Without a CA bundle, the system's trust store verifies the server, as with etcdctl.
        None => tls.with_native_roots(),
    };
    match (&options.tls_cert, &options.tls_key) {
        (Some(cert), Some(key)) => {
            tls = tls.identity(Identity::from_pem(
                read_pem(cert, "client certificate")?,
                read_pem(key, "client key")?,
            ));
        }
        (None, None) => {}
        (Some(_), None) | (None, Some(_)) => {
            return Err(BackendError::Config(
                "a client certificate needs both --tls-cert and --tls-key".into(),
            ))
        }
    }
    Ok(tls)
}

fn read_pem(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        BackendError::Unavailable(format!("cannot read TLS {what} {}: {e}", path.display()))
    })
}

fn no_answer() -> BackendError {
    BackendError::Unavailable(format!(
        "no answer within {}s",
        (CONNECT_TIMEOUT + REQUEST_TIMEOUT).as_secs()
    ))
}

/// What to do about the errors met while opening (`lower`: their text in lower case).
fn hint(target: &Target, lower: &str) -> String {
    if lower.contains("authentication failed") || lower.contains("invalid user") {
        format!("check the user and password (URL, or {USER_ENV} / {PASSWORD_ENV})")
    } else if lower.contains("permission denied") {
        format!(
            "the etcd user needs read and write permission on the prefix {:?}",
            target.prefix
        )
    } else if lower.contains("user name is empty") || lower.contains("user name not found") {
        format!("this etcd requires authentication: set {USER_ENV} and {PASSWORD_ENV}")
    } else if is_tls(lower) {
        "check --tls-ca / --tls-cert / --tls-key and the server's certificate".to_owned()
    } else {
        "check that etcd runs there and that the scheme (etcd:// or etcds://) is right".to_owned()
    }
}

/// An etcd client error as one line: the gRPC message, or the chain of transport causes.
pub(super) fn describe(err: &etcd_client::Error) -> String {
    use std::error::Error as _;
    // etcd_client's error keeps its cause inside the variant, not as its `source`.
    let (mut text, mut source) = match err {
        etcd_client::Error::GRpcStatus(status) => (
            if status.message().is_empty() {
                format!("{:?}", status.code())
            } else {
                status.message().to_owned()
            },
            status.source(),
        ),
        etcd_client::Error::TransportError(e) => (e.to_string(), e.source()),
        other => (other.to_string(), other.source()),
    };
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text.replace('\n', " ")
}

impl Settings {
    pub(super) fn prefix_of(&self, name: &crate::lease::LockName) -> String {
        format!("{}{name}/", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn endpoints_prefix_and_tls() {
        let url = BackendUrl::parse("etcds://a,b:2390,[::1]?prefix=jobs/").unwrap();
        let t = Target::from_url(&url).unwrap();
        assert_eq!(
            t.endpoints,
            ["https://a:2379", "https://b:2390", "https://[::1]:2379"]
        );
        assert!(t.tls);
        assert_eq!(t.prefix, "jobs/");
        let t = Target::from_url(&BackendUrl::parse("etcd://h").unwrap()).unwrap();
        assert_eq!(t.prefix, "elect/");
        assert!(!t.tls);
    }

    #[test]
    fn rejects_paths_and_unknown_parameters() {
        for bad in ["etcd://h/elect", "etcd://h?prefx=a/", "etcd://h?prefix="] {
            let url = BackendUrl::parse(bad).unwrap();
            assert!(
                matches!(Target::from_url(&url), Err(BackendError::Config(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn credentials_from_url_then_environment() {
        let url = BackendUrl::parse("etcd://u:p@h").unwrap();
        let got = credentials(&url, env(&[(USER_ENV, "x"), (PASSWORD_ENV, "y")])).unwrap();
        assert_eq!(got, Some(("u".into(), "p".into())));

        let url = BackendUrl::parse("etcd://u@h").unwrap();
        let got = credentials(&url, env(&[(PASSWORD_ENV, "y")])).unwrap();
        assert_eq!(got, Some(("u".into(), "y".into())));

        let url = BackendUrl::parse("etcd://h").unwrap();
        let got = credentials(&url, env(&[(USER_ENV, "x"), (PASSWORD_ENV, "y")])).unwrap();
        assert_eq!(got, Some(("x".into(), "y".into())));
        assert_eq!(credentials(&url, env(&[])).unwrap(), None);

        assert!(credentials(&url, env(&[(USER_ENV, "x")])).is_err());
        assert!(credentials(&url, env(&[(PASSWORD_ENV, "y")])).is_err());
    }
}
