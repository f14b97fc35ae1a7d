//! The etcd backend: an etcd v3 lease, and a key in the queue of etcd's own concurrency mutex.
//!
//! # Key layout
//! The lock `billing` under the default prefix `elect/` is the queue `elect/billing/`. Each
//! contender puts one key `elect/billing/<lease id in hex>`, attached to its own lease; the key
//! with the lowest create revision owns the lock. This is exactly what `etcdctl lock
//! elect/billing` (Go's `concurrency.Mutex`) does, so the two exclude each other and share one
//! first-come first-served queue. The value is elect's holder metadata as JSON; `etcdctl lock`
//! writes an empty value, which `status` shows as a holder without metadata.
//!
//! With `--holders N` the same queue is a semaphore: the `N` keys with the lowest create
//! revisions hold the lock, each with its own token. The holder metadata records `N`
//! (`places`), and a key holds only if fewer keys are ahead of it than its own `N` and than the
//! `N` of every key ahead (an `etcdctl lock` key or a plain `elect run` counts as 1): so a
//! contender with `--holders 2` does not join a mutex holder, nor a mutex user a semaphore's.
//!
//! # How it works
//! - Acquire: note the local time, grant a lease of `ceil(ttl)` whole seconds (never shorter than
//!   asked, so the server cannot expire it before `sent + ttl`: the core's deadline counts from
//!   the noted time with the requested ttl), then join the queue in one transaction (see
//!   `queue`). First in the queue (one of the first `N`, with `--holders N`): acquired, and the
//!   fencing token is the key's create revision, which etcd never reuses.
//! - Busy, without waiting: revoke the lease at once, which deletes the key: nothing is left
//!   behind.
//! - Busy, waiting: watch the key just ahead (no polling; a release wakes one waiter), and keep
//!   the lease alive every `ttl / 3` meanwhile, since its ttl runs from the grant. When the turn
//!   comes, one more keepalive; the lease counts from the send time of the last keepalive that
//!   succeeded. The holder metadata is rewritten then, so that it says when the lock was taken.
//!   With `--holders N`, watching one key ahead will not do (any holder may go first): read the
//!   keys ahead once, watch the whole queue from just after that read, and take each deleted
//!   key off the set, until fewer than `N` are left.
//! - Renew: one LeaseKeepAlive request and response (ttl 0: lost), then a read of the key (gone,
//!   or re-created by someone else: lost). A lease can outlive its key when someone deletes the
//!   key (`etcdctl del`), and then the lock is free for the next in line.
//! - Release: revoke the lease, which deletes the key in the same step.
//! - Forced release (`elect release --token T`): delete the key of the holder whose create
//!   revision is `T`, in one transaction, then revoke its lease.
//! - A wait that is abandoned (its future dropped, e.g. by `--wait=10s`) leaves its key in the
//!   queue; the next call on this backend revokes that lease, and so does dropping the backend
//!   (bounded to one second). If both fail, the lease expires by its ttl.
//! - Every request has its own timeout ([`REQUEST_TIMEOUT`]), and connecting one of its own, so a
//!   stopped or unreachable etcd makes calls fail rather than hang.
//! - Reconnecting: one client (one tonic channel) talks to one endpoint at a time. After a call
//!   fails for want of an answer, the next call builds a new client, on the next endpoint that
//!   answers (the same one if there is only one). After a call that failed with an answer (a
//!   refused or reset connection), a renew does so only with several endpoints: tonic redials a
//!   broken connection by itself, and a new client costs a connection, an authentication and a
//!   read, which a renew's short budget may not cover on a busy host. A renew left without an
//!   answer (its attempt dropped by the lease keeper, or past its own bound of ttl / 3) leaves
//!   the channel suspect whatever the endpoints: a stalled connection is not seen as broken, and
//!   every new keepalive stream would go down it. The next call starts on a new channel.
//! - `--once-per`: the run is recorded as the marker before the job starts, in one transaction
//!   with the check (see `history`), so that a release lost after the job still leaves it.
//! - Waiting through failures: a wait whose connection breaks (a reset, a restart, a member
//!   that dies) builds a new client and waits on with the same key, keeping its place in the
//!   line, for as long as its lease may still be alive; the first step on the new channel is a
//!   keepalive. The tries are paced by `backend::retry` (at most a second apart, a warning at
//!   most every few seconds). Once the lease may have expired, the wait fails and the caller
//!   queues again.
//!
//! # Files
//! - `connect`: URL and options to a client of one endpoint; errors as one line with a hint.
//! - `acquire`: grant, join the queue, wait for the turn; revoking an abandoned wait's lease.
//! - `queue`: the steps of etcd's mutex protocol (transaction, key ahead, watch), and the
//!   semaphore's wait for a place.
//! - `keepalive`: one LeaseKeepAlive request and its own response at a time.
//! - `status`: `inspect` and `list`: the holders first (one, or up to `N`), then the waiters.
//! - `history`: the last run and the `--once-per` marker, in keys beside the queue; the claim
//!   of a `--once-per` run before its job starts.

mod acquire;
mod connect;
mod history;
mod keepalive;
mod queue;
mod status;

use std::future::Future;
use std::time::Duration;

use etcd_client::{Client, GetOptions};

use self::connect::{describe, Target};
pub use self::connect::{PASSWORD_ENV, USER_ENV};
use self::keepalive::{Alive, KeepAlive};
use self::status::{holder_of, unknown_holder};
use super::{
    AcquireRequest, Backend, BackendError, BackendOptions, BackendUrl, Expiry, ForcedRelease,
    Result, WaitMode,
};
use crate::lease::{Acquire, FencingToken, History, LastRun, Lease, LockName, LockState, Renewal};

/// Bound on establishing a connection to one endpoint.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Bound on any one request. The core gives renewals a tighter bound of its own.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long dropping the backend may take to revoke the lease of an abandoned wait.
const DROP_REVOKE_TIMEOUT: Duration = Duration::from_secs(1);

pub struct EtcdBackend {
    /// A client of one endpoint: `endpoint` in `target.endpoints`.
    client: Client,
    endpoint: usize,
    /// Set when a call failed for want of an answer: the next call starts on a new channel.
    failed: bool,
    /// Set while a renew waits for its answers. A renew whose future was dropped (the lease
    /// keeper's bound on an attempt is shorter than the request timeouts) or that ran out of its
    /// own bound leaves it set: a request left unanswered makes its channel suspect, and the
    /// next call starts on a new one, even with a single endpoint, rather than send every retry
    /// down the same stalled connection.
    in_flight: bool,
    /// The lease of the `--once-per` marker that `claim_run` wrote for the lease held (holder
    /// lease id, marker lease id): the release revokes it, which removes that marker, unless
    /// the release put the marker of a successful run in its place.
    claimed: Option<(i64, i64)>,
    target: Target,
    options: BackendOptions,
    settings: Settings,
    describe: String,
    /// The keepalive stream of the lease held, reused from one renewal to the next.
    keepalive: Option<KeepAlive>,
    /// Where a waiter announces the lease of its queue key, so that elect's watchdog can revoke
    /// it should elect die while it waits (see `handoff`): the key would otherwise
    /// stand ahead of every later waiter until its ttl.
    queued: Option<tokio::sync::mpsc::UnboundedSender<Lease>>,
    /// Leases granted by acquires that did not finish (an error, or the future was dropped while
    /// waiting): their keys may still stand in a queue, ahead of later waiters, so they are
    /// revoked at the next opportunity. One whose revoke failed (the endpoint was down) stays
    /// here for the next try, through another endpoint.
    pending: Vec<i64>,
}

/// What the backend's methods need to know besides the client.
struct Settings {
    /// Prepended to every lock name: `<prefix><name>/` is a lock's queue.
    prefix: String,
}

impl std::fmt::Debug for EtcdBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdBackend")
            .field("backend", &self.describe)
            .field("prefix", &self.settings.prefix)
            .finish_non_exhaustive()
    }
}

impl EtcdBackend {
    /// Connects, authenticates and reads the prefix once, so that every problem with the
    /// endpoints, credentials or TLS shows up here, before any child starts.
    pub async fn open(url: &BackendUrl, options: &BackendOptions) -> Result<Self> {
        let target = Target::from_url(url)?;
        let connected = connect::connect_any(&target, options, 0).await?;
        Ok(Self::connected(url, options, target, connected))
    }

    /// [`EtcdBackend::open`] for a contender that will wait for `lock`: while no endpoint
    /// answers, it tries again (with backoff and jitter) until `until` (`None`: for ever), as a
    /// wait rides out an outage. A refusal (credentials, permissions, TLS) still fails at once.
    pub async fn open_until(
        url: &BackendUrl,
        options: &BackendOptions,
        lock: &str,
        until: Option<tokio::time::Instant>,
    ) -> Result<Self> {
        let target = Target::from_url(url)?;
        let connected = connect::connect_any_until(&target, options, lock, until).await?;
        Ok(Self::connected(url, options, target, connected))
    }

    fn connected(
        url: &BackendUrl,
        options: &BackendOptions,
        target: Target,
        (client, endpoint): (Client, usize),
    ) -> Self {
        Self {
            client,
            endpoint,
            failed: false,
            in_flight: false,
            claimed: None,
            settings: Settings {
                prefix: target.prefix.clone(),
            },
            target,
            options: options.clone(),
            describe: url.redacted(),
            keepalive: None,
            pending: Vec::new(),
            queued: None,
        }
    }

    /// The key prefix in use (`elect/` unless the URL says otherwise).
    pub fn prefix(&self) -> &str {
        &self.settings.prefix
    }

    /// The key of a lease's place in a lock's queue.
    pub fn key_of(&self, lease: &Lease) -> String {
        format!("{}{}", self.settings.prefix_of(&lease.name), lease.secret)
    }

    /// Starts a call: on a new channel if the last call failed or a renew was left unanswered.
    async fn ready(&mut self) -> Result<()> {
        if self.failed || self.in_flight {
            self.reconnect().await?;
            self.failed = false;
            self.in_flight = false;
        }
        Ok(())
    }

    /// Replaces the client with one of the next endpoint that answers (with a single endpoint,
    /// the same one). tonic redials a broken connection on its own, but a channel that failed
    /// is not trusted to have done so: a new one costs one connection and one read, and ends any
    /// doubt about the old one (a stalled socket, a stream left half-read).
    async fn reconnect(&mut self) -> Result<()> {
        let (client, endpoint) =
            connect::connect_any(&self.target, &self.options, self.endpoint + 1).await?;
        self.client = client;
        self.endpoint = endpoint;
        // The open keepalive stream belongs to the old channel.
        self.keepalive = None;
        Ok(())
    }

    /// Notes how a call ended: after a failure for want of an answer the next call starts on a
    /// new channel; an answer proves the channel good.
    fn note<T>(&mut self, result: Result<T>) -> Result<T> {
        self.failed = matches!(&result, Err(BackendError::Unavailable(_)));
        result
    }
}

impl EtcdBackend {
    /// From now on, each lease that a waiting acquire queues under is sent on `to` (see
    /// [`EtcdBackend::queued`]).
    pub fn announce_queued(&mut self, to: tokio::sync::mpsc::UnboundedSender<Lease>) {
        self.queued = Some(to);
    }
}

impl Backend for EtcdBackend {
    fn describe(&self) -> &str {
        &self.describe
    }

    fn expiry(&self) -> Expiry {
        Expiry::Ttl
    }

    async fn acquire(&mut self, req: &AcquireRequest, wait: WaitMode) -> Result<Acquire> {
        self.ready().await?;
        let result = self.acquire_here(req, wait).await;
        self.note(result)
    }

    async fn renew(&mut self, lease: &Lease) -> Result<Renewal> {
        // The renew is in flight from here until its answers are read, the reconnect included:
        // an attempt dropped in the middle of either leaves the channel suspect.
        let stalled = std::mem::replace(&mut self.in_flight, true);
        let bound = renew_bound(lease.holder.ttl);
        let attempt = async {
            // After a call that failed with an answer (a refused or reset connection), a renew
            // starts on a new channel only to move to another endpoint: with one, the old channel
            // redials by itself, and a new one (a connection, an authentication, a read) could
            // use up the renew's short budget on a busy host, and then the next one's. After a
            // renew left unanswered, the old channel is not trusted: a stalled connection keeps
            // the same channel stalled, whatever stream is opened on it.
            if stalled || (self.failed && self.target.endpoints.len() > 1) {
                self.reconnect().await?;
                self.failed = false;
            }
            self.renew_here(lease).await
        };
        let result = match tokio::time::timeout(bound, attempt).await {
            Ok(result) => {
                self.in_flight = false;
                result
            }
            // Left in flight: the next call starts on a new channel.
            Err(_) => Err(BackendError::Unavailable(format!(
                "renew: etcd did not answer within {}",
                crate::timing::Fmt(bound)
            ))),
        };
        self.note(result)
    }

    async fn release(&mut self, lease: &Lease, history: Option<&History>) -> Result<()> {
        self.ready().await?;
        let result = self.release_here(lease, history).await;
        self.note(result)
    }

    async fn fresh_run(&mut self, name: &LockName) -> Result<Option<LastRun>> {
        self.ready().await?;
        let result = self.fresh_run_here(name).await;
        self.note(result)
    }

    async fn claim_run(&mut self, lease: &Lease, window: Duration) -> Result<Option<LastRun>> {
        self.ready().await?;
        let result = self.claim_here(lease, window).await;
        self.note(result)
    }

    async fn inspect(&mut self, name: &LockName) -> Result<LockState> {
        self.ready().await?;
        let queue = self.settings.prefix_of(name);
        let result = match queue::members(&mut self.client, &queue).await {
            Ok(members) => self.state_of(name, &members).await,
            Err(err) => Err(err),
        };
        self.note(result)
    }

    async fn list(&mut self) -> Result<Vec<LockState>> {
        self.ready().await?;
        let result = self.list_here().await;
        self.note(result)
    }

    async fn force_release(
        &mut self,
        name: &LockName,
        token: FencingToken,
    ) -> Result<ForcedRelease> {
        self.ready().await?;
        let result = self.force_release_here(name, token).await;
        self.note(result)
    }
}

/// The operations, on the current endpoint.
impl EtcdBackend {
    async fn renew_here(&mut self, lease: &Lease) -> Result<Renewal> {
        let id = lease_id(lease)?;
        let mut keepalive = match self.keepalive.take() {
            Some(k) if k.id() == id => k,
            _ => KeepAlive::new(id),
        };
        let alive = keepalive.once(&mut self.client).await;
        self.keepalive = Some(keepalive);
        if alive? == Alive::Gone {
            return Ok(Renewal::Lost(format!(
                "etcd says lease {id:x} expired or was revoked"
            )));
        }
        let key = self.key_of(lease);
        let resp = timed(
            "read the lock key",
            self.client
                .get(key.as_str(), Some(GetOptions::new().with_keys_only())),
        )
        .await?;
        match resp.kvs().first() {
            None => Ok(Renewal::Lost(format!("the lock key {key} was deleted"))),
            Some(kv) if token_of(kv.create_revision()) != lease.token() => Ok(Renewal::Lost(
                format!("the lock key {key} was deleted and created again"),
            )),
            Some(_) => Ok(Renewal::Renewed),
        }
    }

    async fn release_here(&mut self, lease: &Lease, history: Option<&History>) -> Result<()> {
        let id = lease_id(lease)?;
        if self.keepalive.as_ref().is_some_and(|k| k.id() == id) {
            self.keepalive = None;
        }
        // Recorded before the revoke, while the queue key still proves the lease ours; a
        // failure to record must not keep the lock from being released.
        let mut recorded = false;
        if let Some(history) = history {
            match self.record(lease, history).await {
                Ok(done) => recorded = done,
                Err(err) => tracing::warn!(lock = %lease.name, "cannot record the run ({err})"),
            }
        }
        if let Some((_, marker)) = self.claimed.take_if(|(holder, _)| *holder == id) {
            // The claim's marker goes, with its lease, after a run that did not succeed (the next
            // trigger retries) or once the successful run's own marker is in place. A success
            // whose marker could not be written keeps it: the run still counts.
            let succeeded = history.is_some_and(|h| h.once_per.is_some());
            if !succeeded || recorded {
                if let Err(err) = revoke(&mut self.client, marker).await {
                    tracing::debug!(error = %err, "revoking the --once-per claim's lease failed; it expires with the window");
                }
            }
        }
        revoke(&mut self.client, id).await
    }

    /// Deletes the key of the holder (one of several with `--holders`) whose create revision is
    /// `token`, in one transaction that checks it still is, then revokes its lease, so that a
    /// holder that is still alive learns at its next renewal that it lost the lock. The next in
    /// line gets the lock when the key goes.
    async fn force_release_here(
        &mut self,
        name: &LockName,
        token: FencingToken,
    ) -> Result<ForcedRelease> {
        let queue = self.settings.prefix_of(name);
        let members = queue::members(&mut self.client, &queue).await?;
        let holders = &members[..queue::holding(&members)];
        let Some(first) = holders.first() else {
            return Ok(ForcedRelease::NotHeld);
        };
        let Some(owner) = holders
            .iter()
            .find(|kv| token_of(kv.create_revision()) == token)
        else {
            return Ok(ForcedRelease::Mismatch(Some(
                holder_of(first).unwrap_or_else(|| unknown_holder(first)),
            )));
        };
        let key = owner.key().to_vec();
        if !queue::delete_if_created_at(&mut self.client, key, owner.create_revision()).await? {
            // Gone between the read and the delete: released or expired meanwhile.
            return Ok(ForcedRelease::Released);
        }
        if owner.lease() != 0 {
            if let Err(err) = revoke(&mut self.client, owner.lease()).await {
                tracing::debug!(error = %err, "revoking the released holder's lease failed; it expires by its ttl");
            }
        }
        // The operator ended that holder's run: its `--once-per` claim does not count.
        if let Err(err) = self.drop_claim_of(name, token).await {
            tracing::warn!(lock = %name, "cannot remove the --once-per marker of the released run ({err})");
        }
        Ok(ForcedRelease::Released)
    }
}

/// The longest one renew may take, a new channel included: the request timeout, but no more
/// than the default renew interval (a third of the ttl), which bounds the lease keeper's attempt.
fn renew_bound(ttl: Duration) -> Duration {
    REQUEST_TIMEOUT.min(ttl / 3)
}

/// A lease's ttl in etcd's whole seconds, rounded up: the server must not expire it before the
/// requested ttl has passed.
pub fn ttl_seconds(ttl: Duration) -> i64 {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    i64::try_from(secs.max(1)).unwrap_or(i64::MAX)
}

fn token_of(create_revision: i64) -> FencingToken {
    FencingToken(u64::try_from(create_revision).unwrap_or(0))
}

fn lease_id(lease: &Lease) -> Result<i64> {
    i64::from_str_radix(&lease.secret, 16).map_err(|_| {
        BackendError::Config(format!(
            "lease of lock {} is not an etcd lease ({:?})",
            lease.name, lease.secret
        ))
    })
}

/// Revokes a lease; one that is already gone is fine.
async fn revoke(client: &mut Client, id: i64) -> Result<()> {
    match tokio::time::timeout(REQUEST_TIMEOUT, client.lease_revoke(id)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(etcd_client::Error::GRpcStatus(status)))
            if status.code() == tonic::Code::NotFound =>
        {
            Ok(())
        }
        Ok(Err(e)) => Err(BackendError::Unavailable(format!(
            "revoke lease {id:x}: {}",
            describe(&e)
        ))),
        Err(_) => Err(timeout_error("revoke the lease")),
    }
}

/// Runs one request within [`REQUEST_TIMEOUT`], naming what was being done on failure.
async fn timed<T>(
    what: &str,
    request: impl Future<Output = std::result::Result<T, etcd_client::Error>>,
) -> Result<T> {
    match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(BackendError::Unavailable(format!(
            "{what}: {}",
            describe(&e)
        ))),
        Err(_) => Err(timeout_error(what)),
    }
}

fn timeout_error(what: &str) -> BackendError {
    BackendError::Unavailable(format!(
        "{what}: etcd did not answer within {}s",
        REQUEST_TIMEOUT.as_secs()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_rounds_up_to_whole_seconds() {
        assert_eq!(ttl_seconds(Duration::from_secs(15)), 15);
        assert_eq!(ttl_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(ttl_seconds(Duration::from_millis(1001)), 2);
        assert_eq!(ttl_seconds(Duration::from_millis(300)), 1);
    }
}
