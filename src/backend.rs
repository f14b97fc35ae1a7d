//! Where leases live.
//!
//! A backend is a small trait; the concrete backends form a closed set behind [`AnyBackend`], so
//! a `match` over them stays exhaustive, while the lease keeper and `run` stay generic over the
//! trait and their tests drive a scripted fake.
//!
//! The URL scheme picks the backend: `file://` (or no URL) for the local lock file, `redis://` /
//! `rediss://` (and their `+sentinel` and `+cluster` forms), `etcd://` / `etcds://`,
//! `postgres://` / `postgresql://`, `zk://`.
//!
//! # Layout
//! - one module per backend: `file`, `redis`, `etcd`, `postgres`, `zk`;
//! - what several of them share: `url` (parsing, redaction), `retry` (pacing the tries through
//!   an outage), `random` (lease secrets, waiters' jitter), `tls` (rustls set-up), `settling`
//!   (an acquire without an answer, when the backend is dropped); and, in
//!   [`crate::lease`], the states they report (`LockState::free`, `LockState::held_by`,
//!   `HolderInfo::unknown`, `LastRun::unreadable_marker`).

pub mod etcd;
pub mod file;
pub mod postgres;
mod random;
pub mod redis;
pub mod retry;
mod settling;
mod tls;
mod url;
pub mod zk;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

pub use self::url::{redact, BackendUrl, Scheme};
use crate::exit::{code, Failure};
use crate::lease::{
    Acquire, FencingToken, History, HolderInfo, LastRun, Lease, LockName, LockState, Renewal,
};

/// What an acquire asks for.
#[derive(Debug, Clone)]
pub struct AcquireRequest {
    pub name: LockName,
    /// Metadata to record; the backend fills in the token.
    pub holder: HolderInfo,
    pub ttl: Duration,
    /// At most this many holders at once (`--holders`, 1 for a mutex).
    pub holders: u32,
}

/// Whether an acquire gives up at once or blocks until the lock is free.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitMode {
    NoWait,
    /// Block until acquired. The caller bounds the wait by dropping the future.
    Wait,
}

/// Whether a backend's leases expire by their ttl when not renewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// The backend expires a lease `ttl` after its last renew: the job must die by the deadline.
    Ttl,
    /// The lease is a kernel lock held by open files (elect's and its watchdog's): it cannot expire
    /// while the job runs, so there is no deadline to enforce.
    HeldByProcess,
}

/// Whether a backend's `Unavailable` errors can go away by waiting. Apart from [`Expiry`]: that
/// the network backends' leases expire and that their errors pass are two facts that happen to
/// hold for the same backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failures {
    /// A network backend: a server restarts, a network comes back, a failover ends.
    Pass,
    /// The file backend: a planted symlink or a foreign file stays until someone removes it.
    Last,
}

/// Settings shared by the network backends that are not part of a URL.
#[derive(Debug, Clone, Default)]
pub struct BackendOptions {
    /// CA bundle that verifies the server (TLS URLs).
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key (TLS URLs that require one).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The URL or options are wrong: a usage error.
    #[error("{0}")]
    Config(String),
    /// The backend cannot be used: unreachable, refused us, auth, TLS, permissions, bad state.
    #[error("{0}")]
    Unavailable(String),
    /// A request got no answer in time: an outage (an overloaded or stopped server, a network
    /// that drops), which a waiting run waits out even on its first try, where a refusal
    /// (`Unavailable`) ends it at once.
    #[error("{0}")]
    NoAnswer(String),
}

impl BackendError {
    pub fn unavailable(about: impl std::fmt::Display, err: impl std::fmt::Display) -> Self {
        Self::Unavailable(format!("{about}: {err}"))
    }

    /// The failure to report, naming the backend (redacted) and what to do.
    pub fn into_failure(self, backend: &str) -> Failure {
        match self {
            Self::Config(msg) if msg.contains(backend) => Failure::usage(msg),
            Self::Config(msg) => Failure::usage(format!("{msg} (backend {backend})")),
            Self::Unavailable(msg) | Self::NoAnswer(msg) => Failure::new(
                code::UNAVAILABLE,
                format!("backend {backend} unavailable: {msg}"),
            ),
        }
    }
}

pub type Result<T, E = BackendError> = std::result::Result<T, E>;

/// The operations every backend offers.
///
/// Every method bounds its own network time; the caller adds an outer timeout where the lease
/// rule needs one (renew attempts).
pub trait Backend {
    /// The URL as it may be printed and passed to the child: credentials redacted.
    fn describe(&self) -> &str;

    fn expiry(&self) -> Expiry;

    /// Take the lease, or report who holds it. A successful lease carries the time its winning
    /// request was sent.
    fn acquire(
        &mut self,
        req: &AcquireRequest,
        wait: WaitMode,
    ) -> impl Future<Output = Result<Acquire>>;

    /// Extend the lease. `Lost` when the backend says outright it is gone or someone else's.
    fn renew(&mut self, lease: &Lease) -> impl Future<Output = Result<Renewal>>;

    /// Resolves, with the reason, when the backend learns without being asked that the lease is
    /// gone (the file backend's lock file deleted or replaced); never, for a backend that learns
    /// it only by renewing. The keeper waits on it between renewals; dropping it loses nothing.
    fn lost(&mut self, lease: &Lease) -> impl Future<Output = String> {
        let _ = lease;
        std::future::pending()
    }

    /// Give the lease up, only if it is still ours; with `history`, record the run (and the
    /// `--once-per` marker) in the same step where the backend allows, and never for a lease
    /// that is no longer ours.
    fn release(
        &mut self,
        lease: &Lease,
        history: Option<&History>,
    ) -> impl Future<Output = Result<()>>;

    /// The run that left a `--once-per` marker on `name` that has not expired yet (by the
    /// backend's clock), if any. Asked only while holding the lock, so that two contenders
    /// cannot both miss a marker.
    fn fresh_run(&mut self, name: &LockName) -> impl Future<Output = Result<Option<LastRun>>>;

    /// Before a `--once-per` run starts, while holding `lease`: the run that left an unexpired
    /// marker, if any; otherwise this run is recorded as started, with a marker that expires
    /// after `window` (its end [`RunEnd::Unfinished`](crate::lease::RunEnd::Unfinished)), so
    /// that a run whose release never reaches the backend still counts. The release replaces
    /// that marker after a success and removes it otherwise. A backend whose releases cannot
    /// be lost (the file backend) only checks.
    fn claim_run(
        &mut self,
        lease: &Lease,
        window: Duration,
    ) -> impl Future<Output = Result<Option<LastRun>>> {
        let _ = window;
        self.fresh_run(&lease.name)
    }

    fn inspect(&mut self, name: &LockName) -> impl Future<Output = Result<LockState>>;

    /// Every elect lock under this backend's namespace, sorted by name.
    fn list(&mut self) -> impl Future<Output = Result<Vec<LockState>>>;

    /// An operator frees `name`, but only if its holder still has `token` (compare-and-delete):
    /// for a holder known to be dead whose lease has not expired yet.
    fn force_release(
        &mut self,
        name: &LockName,
        token: FencingToken,
    ) -> impl Future<Output = Result<ForcedRelease>>;
}

/// What an operator's forced release found.
#[derive(Debug)]
pub enum ForcedRelease {
    /// The lease with that token is gone; the lock is free.
    Released,
    /// The lock was free already.
    NotHeld,
    /// Another lease holds the lock now (or the token was wrong): nothing was done.
    Mismatch(Option<HolderInfo>),
    /// The backend cannot take the lease from its holder (the file backend's kernel lock).
    Refused(String),
}

/// The closed set of backends.
#[derive(Debug)]
pub enum AnyBackend {
    File(file::FileBackend),
    /// Boxed: the etcd client is a few kilobytes, the other variants a few words.
    Etcd(Box<etcd::EtcdBackend>),
    Redis(redis::RedisBackend),
    Postgres(postgres::PostgresBackend),
    Zk(zk::ZkBackend),
}

impl AnyBackend {
    /// Connects to (or opens) the backend a URL names. `None` means the default file backend.
    pub async fn open(url: Option<&str>, options: &BackendOptions) -> Result<Self> {
        let url = match url {
            None => return Ok(Self::File(file::FileBackend::open_default()?)),
            Some(url) => BackendUrl::parse(url)?,
        };
        match url.scheme() {
            Scheme::File => Ok(Self::File(file::FileBackend::open(&url)?)),
            Scheme::Etcd | Scheme::Etcds => Ok(Self::Etcd(Box::new(
                etcd::EtcdBackend::open(&url, options).await?,
            ))),
            Scheme::Redis
            | Scheme::Rediss
            | Scheme::RedisSentinel
            | Scheme::RedissSentinel
            | Scheme::RedisCluster
            | Scheme::RedissCluster => {
                Ok(Self::Redis(redis::RedisBackend::open(&url, options).await?))
            }
            Scheme::Postgres => Ok(Self::Postgres(
                postgres::PostgresBackend::open(&url, options).await?,
            )),
            Scheme::Zk => Ok(Self::Zk(zk::ZkBackend::open(&url).await?)),
        }
    }
}

impl AnyBackend {
    /// [`AnyBackend::open`] for a contender that will wait for `lock` (`--wait`, bounded by
    /// `until`): a backend that gives no answer at first is tried again within the wait, where
    /// the backend knows an answer from its absence (etcd and PostgreSQL, which a thousand
    /// waiters started at once can keep busy past their connect timeouts). Elsewhere the same as
    /// `open`.
    pub async fn open_waiting(
        url: Option<&str>,
        options: &BackendOptions,
        lock: &str,
        until: Option<tokio::time::Instant>,
    ) -> Result<Self> {
        match url.map(BackendUrl::parse).transpose()? {
            Some(parsed) if matches!(parsed.scheme(), Scheme::Etcd | Scheme::Etcds) => {
                Ok(Self::Etcd(Box::new(
                    etcd::EtcdBackend::open_until(&parsed, options, lock, until).await?,
                )))
            }
            Some(parsed) if parsed.scheme() == Scheme::Postgres => Ok(Self::Postgres(
                postgres::PostgresBackend::open_until(&parsed, options, lock, until).await?,
            )),
            _ => Self::open(url, options).await,
        }
    }

    /// Has a waiting acquire send the lease it waits under, where a waiter leaves something on
    /// the server that outlives it (etcd's queue key): see `handoff`. The other
    /// backends keep nothing of a waiter once its connection is gone.
    pub fn announce_queued(&mut self, to: tokio::sync::mpsc::UnboundedSender<Lease>) {
        if let Self::Etcd(etcd) = self {
            etcd.announce_queued(to);
        }
    }

    /// Whether waiting can make this backend's `Unavailable` errors go away.
    pub fn failures(&self) -> Failures {
        match self {
            Self::File(_) => Failures::Last,
            Self::Etcd(_) | Self::Redis(_) | Self::Postgres(_) | Self::Zk(_) => Failures::Pass,
        }
    }

    /// Environment variables that hold a secret this backend reads and that are not elect's own
    /// (`ELECT_*`): the job must not inherit them either.
    pub fn secret_variables(&self) -> &'static [&'static str] {
        match self {
            Self::Postgres(_) => postgres::SECRET_VARIABLES,
            // ELECT_ETCD_PASSWORD and ELECT_ZK_PASSWORD are elect's own variables, withheld
            // with the others.
            Self::File(_) | Self::Etcd(_) | Self::Redis(_) | Self::Zk(_) => &[],
        }
    }
}

macro_rules! dispatch {
    ($self:ident, $b:ident => $e:expr) => {
        match $self {
            AnyBackend::File($b) => $e,
            AnyBackend::Etcd($b) => $e,
            AnyBackend::Redis($b) => $e,
            AnyBackend::Postgres($b) => $e,
            AnyBackend::Zk($b) => $e,
        }
    };
}

impl Backend for AnyBackend {
    fn describe(&self) -> &str {
        dispatch!(self, b => b.describe())
    }

    fn expiry(&self) -> Expiry {
        dispatch!(self, b => b.expiry())
    }

    async fn acquire(&mut self, req: &AcquireRequest, wait: WaitMode) -> Result<Acquire> {
        dispatch!(self, b => b.acquire(req, wait).await)
    }

    async fn renew(&mut self, lease: &Lease) -> Result<Renewal> {
        dispatch!(self, b => b.renew(lease).await)
    }

    async fn lost(&mut self, lease: &Lease) -> String {
        dispatch!(self, b => b.lost(lease).await)
    }

    async fn release(&mut self, lease: &Lease, history: Option<&History>) -> Result<()> {
        dispatch!(self, b => b.release(lease, history).await)
    }

    async fn fresh_run(&mut self, name: &LockName) -> Result<Option<LastRun>> {
        dispatch!(self, b => b.fresh_run(name).await)
    }

    async fn claim_run(&mut self, lease: &Lease, window: Duration) -> Result<Option<LastRun>> {
        dispatch!(self, b => b.claim_run(lease, window).await)
    }

    async fn inspect(&mut self, name: &LockName) -> Result<LockState> {
        dispatch!(self, b => b.inspect(name).await)
    }

    async fn list(&mut self) -> Result<Vec<LockState>> {
        dispatch!(self, b => b.list().await)
    }

    async fn force_release(
        &mut self,
        name: &LockName,
        token: FencingToken,
    ) -> Result<ForcedRelease> {
        dispatch!(self, b => b.force_release(name, token).await)
    }
}
