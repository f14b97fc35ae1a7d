//! From a Redis URL to a checked connection (`url.rs` reads the URL's options, `error.rs` turns
//! client errors into one-line messages that say what to do).
//!
//! Three forms, one per topology (`+sentinel` and `+cluster` as Python's redis-sentinel-url and
//! other clients spell them):
//! - `redis[s]://[user:password@]host[:port][/db]`: one server;
//! - `redis[s]+sentinel://[user:password@]host[:port][,host[:port]...]/master[/db]`: the
//!   sentinels (port 26379 by default) and the name of the master they watch; the user and
//!   password are the data nodes', as in the plain form; the sentinels' own credentials, where
//!   they need them, are `?sentinel_user=` and `?sentinel_password=` or
//!   `ELECT_REDIS_SENTINEL_PASSWORD`. TLS (`rediss+sentinel`) applies to both;
//! - `redis[s]+cluster://[user:password@]host[:port][,host[:port]...]`: seed nodes of a Redis
//!   Cluster (database 0 only, as Cluster has no other).
//!
//! Every form takes `?wait=N[&wait_timeout=500ms]` (see [`Ack`]).
//!
//! The connection details are built field by field rather than by handing the URL text to the
//! client: the password then never travels through a string that could end up in an error.
//! The `redis` crate does the Sentinel and Cluster protocols: finding the primary through the
//! sentinels (skipping those that do not answer, and checking that the node it names is a
//! primary), and the cluster's slot map, `MOVED` and `ASK`.

use std::time::Duration;

use ::redis::cluster::{ClusterClient, ClusterConfig};
use ::redis::sentinel::{SentinelClientBuilder, SentinelServerType};
use ::redis::{
    AsyncConnectionConfig, Client, ClientTlsConfig, ConnectionAddr, ErrorKind, IntoConnectionInfo,
    RedisConnectionInfo, RedisError, TlsCertificates, TlsMode,
};

use super::conn::Conn;
use super::error::one_line;
use super::url::{check_options, parse_ack, parse_db, parse_master, Ack, Topology};
use crate::backend::{tls, BackendError, BackendOptions, BackendUrl, Result};

/// Time to set up a connection: TCP, TLS, AUTH, SELECT. A SIGSTOPped server still completes the
/// TCP handshake from its listen backlog, so only this bound stops a connect from hanging there.
/// Through the sentinels it bounds the whole discovery, the primary's connection included.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Time to wait for the answer to one command. The lease keeper adds its own, shorter bound on
/// renewals; this one keeps every other call (status, release, acquire) from hanging.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// The reply timeout of a waiter's connection, which blocks for up to the baton's longest block.
pub const WAIT_RESPONSE_TIMEOUT: Duration =
    Duration::from_secs(super::baton::MAX_BLOCK.as_secs() + RESPONSE_TIMEOUT.as_secs());

const DEFAULT_PORT: u16 = 6379;
const DEFAULT_SENTINEL_PORT: u16 = 26379;
/// The password when the URL has none: it keeps the secret out of argv and out of URL files.
/// `elect run` does not pass this variable on to the job.
pub const PASSWORD_VARIABLE: &str = "ELECT_REDIS_PASSWORD";
/// The sentinels' password when the URL has no `sentinel_password`; withheld from the job like
/// every `ELECT_*PASSWORD`.
pub const SENTINEL_PASSWORD_VARIABLE: &str = "ELECT_REDIS_SENTINEL_PASSWORD";

/// Where to connect, parsed from the URL; `kind` carries the credentials.
#[derive(Clone)]
pub struct Target {
    kind: Kind,
    /// What the URL names, for messages: `host:port`, or the master and its sentinels, or the
    /// cluster's seeds.
    pub addr: String,
    /// Replica acknowledgement, if the URL asks for it.
    pub ack: Option<Ack>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.addr)
    }
}

#[derive(Clone)]
/// Each variant boxed: the clients' settings differ much in size.
enum Kind {
    Single(Box<Client>),
    /// Kept as the builder's inputs: each connect builds a fresh sentinel client, so that no
    /// connection to a sentinel is shared between runtimes (the settling thread of a drop has
    /// its own).
    Sentinel(Box<SentinelSpec>),
    /// One client for calls, one for waiters' blocking calls (see [`WAIT_RESPONSE_TIMEOUT`]).
    Cluster(Box<ClusterClient>, Box<ClusterClient>),
}

#[derive(Clone)]
struct SentinelSpec {
    sentinels: Vec<ConnectionAddr>,
    master: String,
    db: i64,
    user: Option<String>,
    password: Option<String>,
    sentinel_user: Option<String>,
    sentinel_password: Option<String>,
    tls: Option<TlsCertificates>,
}

/// What every topology's client is built from, besides the hosts.
struct Given<'u> {
    url: &'u BackendUrl,
    tls: bool,
    /// The data nodes' password: the URL's, else [`PASSWORD_VARIABLE`].
    password: Option<String>,
    /// The CA and client certificate, for TLS.
    certificates: Option<TlsCertificates>,
}

impl Given<'_> {
    /// The URL's hosts, with `default_port` where none is given.
    fn hosts(&self, default_port: u16) -> Vec<(String, u16)> {
        self.url
            .hosts
            .iter()
            .map(|h| (h.host.clone(), h.port.unwrap_or(default_port)))
            .collect()
    }
}

impl Target {
    pub fn from_url(url: &BackendUrl, options: &BackendOptions) -> Result<Self> {
        let (topology, tls) = Topology::of(url.scheme())?;
        check_options(url, topology)?;
        let ack = parse_ack(url)?;
        if !tls && (options.tls_ca.is_some() || options.tls_cert.is_some()) {
            tracing::warn!("TLS options are ignored for a redis:// URL; use rediss:// for TLS");
        }
        let certificates = if tls {
            tls::install_crypto_provider();
            Some(tls_certificates(options)?)
        } else {
            None
        };
        let given = Given {
            url,
            tls,
            password: url.password.clone().or_else(|| from_env(PASSWORD_VARIABLE)),
            certificates,
        };
        let (kind, addr) = match topology {
            Topology::Single => single(given)?,
            Topology::Sentinel => sentinel(given)?,
            Topology::Cluster => cluster(given)?,
        };
        Ok(Self { kind, addr, ack })
    }

    /// A new connection, checked with a PING so that a wrong password, database or port shows up
    /// now rather than at the first lease operation. Through the sentinels, to the primary they
    /// name now.
    pub async fn connect(&self) -> Result<Conn, RedisError> {
        self.connect_with(RESPONSE_TIMEOUT).await
    }

    /// [`Self::connect`] with another reply timeout (a waiter blocks longer than the usual one).
    pub async fn connect_with(&self, response_timeout: Duration) -> Result<Conn, RedisError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(response_timeout));
        let mut conn = match &self.kind {
            Kind::Single(client) => Conn::Node(
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?,
            ),
            Kind::Sentinel(spec) => {
                let found = tokio::time::timeout(CONNECT_TIMEOUT, async {
                    let client = spec.client()?.async_get_client().await?;
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await
                })
                .await
                .map_err(|_| {
                    RedisError::from((
                        ErrorKind::Io,
                        "no sentinel named a reachable primary in time",
                    ))
                })??;
                Conn::Node(found)
            }
            Kind::Cluster(calls, waits) => {
                let client = if response_timeout > RESPONSE_TIMEOUT {
                    waits
                } else {
                    calls
                };
                let config = ClusterConfig::new()
                    .set_connection_timeout(CONNECT_TIMEOUT)
                    .set_response_timeout(response_timeout);
                // Connecting reads the slot map from a seed: that is the check.
                return Ok(Conn::Cluster(
                    client.get_async_connection_with_config(config).await?,
                ));
            }
        };
        ::redis::cmd("PING").query_async::<()>(&mut conn).await?;
        Ok(conn)
    }
}

/// A variable's value; unset and empty are the same.
fn from_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|p| !p.is_empty())
}

/// The client refused a setting: a usage error.
fn settings(err: RedisError) -> BackendError {
    BackendError::Config(format!("Redis client settings: {}", one_line(&err)))
}

/// `host:port,host:port`, for messages.
fn joined(hosts: &[(String, u16)]) -> String {
    hosts
        .iter()
        .map(|(h, p)| format!("{h}:{p}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// `redis[s]://`: one server.
fn single(given: Given<'_>) -> Result<(Kind, String)> {
    let url = given.url;
    let [(host, port)] = given.hosts(DEFAULT_PORT).try_into().map_err(|_| {
        BackendError::Config(
            "a redis:// URL names one server: redis://[user:password@]host[:port][/db] \
             (redis+sentinel:// or redis+cluster:// name several)"
                .into(),
        )
    })?;
    let db = parse_db(&url.path)?;
    let mut redis = RedisConnectionInfo::default().set_db(db);
    if let Some(user) = &url.user {
        redis = redis.set_username(user);
    }
    if let Some(password) = &given.password {
        redis = redis.set_password(password);
    }
    let info = node_addr(&host, port, given.tls)
        .into_connection_info()
        .map_err(|e| BackendError::Config(one_line(&e)))?
        .set_redis_settings(redis);
    let client = match given.certificates {
        Some(certs) => Client::build_with_tls(info, certs),
        None => Client::open(info),
    }
    .map_err(settings)?;
    Ok((Kind::Single(Box::new(client)), format!("{host}:{port}")))
}

/// `redis[s]+sentinel://`: the sentinels and the master they watch.
fn sentinel(given: Given<'_>) -> Result<(Kind, String)> {
    let url = given.url;
    let (master, db) = parse_master(&url.path)?;
    let sentinels = given.hosts(DEFAULT_SENTINEL_PORT);
    let spec = SentinelSpec {
        sentinels: sentinels
            .iter()
            .map(|(h, p)| node_addr(h, *p, given.tls))
            .collect(),
        master: master.clone(),
        db,
        user: url.user.clone(),
        password: given.password,
        sentinel_user: url.query_value("sentinel_user").map(str::to_owned),
        sentinel_password: url
            .query_value("sentinel_password")
            .map(str::to_owned)
            .or_else(|| from_env(SENTINEL_PASSWORD_VARIABLE)),
        tls: given.certificates,
    };
    // Checked now, so that a bad combination is a configuration error, not a failure to
    // connect.
    spec.client().map_err(settings)?;
    let addr = format!("master {master} via sentinels {}", joined(&sentinels));
    Ok((Kind::Sentinel(Box::new(spec)), addr))
}

/// `redis[s]+cluster://`: seed nodes of a cluster.
fn cluster(given: Given<'_>) -> Result<(Kind, String)> {
    let url = given.url;
    if !matches!(url.path.as_str(), "" | "/" | "/0") {
        return Err(BackendError::Config(format!(
            "invalid path {:?} in a Redis Cluster URL: a cluster has database 0 only \
             (redis+cluster://host:port[,host:port...])",
            url.path
        )));
    }
    let seeds = given.hosts(DEFAULT_PORT);
    let nodes = seeds
        .iter()
        .map(|(h, p)| node_addr(h, *p, given.tls).into_connection_info())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(settings)?;
    // The crate bounds a whole request, redirections and retries included, by the reply timeout
    // the client is built with: a waiter's client is built with the longer bound its blocks need.
    let client = |response: Duration| {
        let mut builder = ClusterClient::builder(nodes.clone())
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(response);
        if let Some(user) = &url.user {
            builder = builder.username(user);
        }
        if let Some(password) = &given.password {
            builder = builder.password(password);
        }
        if let Some(certs) = &given.certificates {
            builder = builder.tls(TlsMode::Secure).certs(certs.clone());
        }
        builder.build().map_err(settings)
    };
    let calls = client(RESPONSE_TIMEOUT)?;
    let waits = client(WAIT_RESPONSE_TIMEOUT)?;
    let kind = Kind::Cluster(Box::new(calls), Box::new(waits));
    Ok((kind, format!("cluster {}", joined(&seeds))))
}

impl SentinelSpec {
    fn client(&self) -> std::result::Result<::redis::sentinel::SentinelClient, RedisError> {
        let mut builder = SentinelClientBuilder::new(
            self.sentinels.clone(),
            &self.master,
            SentinelServerType::Master,
        )?
        .set_client_to_redis_db(self.db);
        if let Some(user) = &self.user {
            builder = builder.set_client_to_redis_username(user);
        }
        if let Some(password) = &self.password {
            builder = builder.set_client_to_redis_password(password);
        }
        if let Some(user) = &self.sentinel_user {
            builder = builder.set_client_to_sentinel_username(user);
        }
        if let Some(password) = &self.sentinel_password {
            builder = builder.set_client_to_sentinel_password(password);
        }
        if let Some(certs) = &self.tls {
            builder = builder
                .set_client_to_redis_tls_mode(TlsMode::Secure)
                .set_client_to_redis_certificates(certs.clone())
                .set_client_to_sentinel_tls_mode(TlsMode::Secure)
                .set_client_to_sentinel_certificates(certs.clone());
        }
        builder.build()
    }
}

fn node_addr(host: &str, port: u16, tls: bool) -> ConnectionAddr {
    if tls {
        ConnectionAddr::TcpTls {
            host: host.to_owned(),
            port,
            insecure: false,
            tls_params: None,
        }
    } else {
        ConnectionAddr::Tcp(host.to_owned(), port)
    }
}

/// The CA from `--tls-ca` (else the system's roots), and a client certificate if one is given.
fn tls_certificates(options: &BackendOptions) -> Result<TlsCertificates> {
    let read = |what: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| tls::file_error(what, path, e))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::redis::url::DEFAULT_WAIT_TIMEOUT;

    #[test]
    fn urls_are_checked() {
        let opts = BackendOptions::default();
        let parse = |u: &str| Target::from_url(&BackendUrl::parse(u).unwrap(), &opts);
        assert!(parse("redis://h:1/0").is_ok());
        assert!(parse("rediss://u:p@h/2").is_ok());
        assert!(parse("redis://a,b").is_err());
        assert!(parse("redis://h?x=1").is_err());
        assert!(parse("redis://h/db").is_err());
        assert!(parse("redis://h?sentinel_user=x").is_err());
    }

    #[test]
    fn sentinel_urls() {
        let opts = BackendOptions::default();
        let parse = |u: &str| Target::from_url(&BackendUrl::parse(u).unwrap(), &opts);
        let t = parse("redis+sentinel://u:p@a,b:26380/main/2?sentinel_password=s").unwrap();
        assert_eq!(t.addr, "master main via sentinels a:26379,b:26380");
        assert!(parse("rediss+sentinel://a/main").is_ok());
        assert!(parse("redis+sentinel://a").is_err());
        assert!(parse("redis+sentinel://a/").is_err());
        assert!(parse("redis+sentinel://a/main/x").is_err());
        assert!(parse("redis+sentinel://a/main?x=1").is_err());
        assert_eq!(parse_master("/m").unwrap(), ("m".into(), 0));
        assert_eq!(parse_master("/m/3").unwrap(), ("m".into(), 3));
    }

    #[test]
    fn cluster_urls() {
        let opts = BackendOptions::default();
        let parse = |u: &str| Target::from_url(&BackendUrl::parse(u).unwrap(), &opts);
        let t = parse("redis+cluster://u:p@a:7000,b:7001").unwrap();
        assert_eq!(t.addr, "cluster a:7000,b:7001");
        assert!(parse("redis+cluster://a/0").is_ok());
        assert!(parse("redis+cluster://a/1").is_err());
        assert!(parse("redis+cluster://a?sentinel_user=x").is_err());
    }

    #[test]
    fn acknowledgement_options() {
        let opts = BackendOptions::default();
        let parse = |u: &str| Target::from_url(&BackendUrl::parse(u).unwrap(), &opts);
        assert_eq!(parse("redis://h").unwrap().ack, None);
        assert_eq!(
            parse("redis://h?wait=2").unwrap().ack,
            Some(Ack {
                replicas: 2,
                timeout: DEFAULT_WAIT_TIMEOUT
            })
        );
        assert_eq!(
            parse("redis+cluster://h?wait=1&wait_timeout=200ms")
                .unwrap()
                .ack
                .map(|a| a.timeout),
            Some(Duration::from_millis(200))
        );
        for bad in [
            "wait=0",
            "wait=x",
            "wait=1&wait_timeout=5s",
            "wait_timeout=1s",
            "wait=1&wait_timeout=0s",
        ] {
            assert!(parse(&format!("redis://h?{bad}")).is_err(), "{bad}");
        }
    }
}
