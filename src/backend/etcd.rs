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
//! # How it works
//! - Acquire: note the local time, grant a lease of `ceil(ttl)` whole seconds (never shorter than
//!   asked, so the server cannot expire it before `sent + ttl`: the core's deadline counts from
//!   the noted time with the requested ttl), then join the queue in one transaction (see
//!   [`queue`]). First in the queue: acquired, and the fencing token is the key's create
//!   revision, which etcd never reuses.
//! - Busy, without waiting: revoke the lease at once, which deletes the key: nothing is left
//!   behind.
//! - Busy, waiting: watch the key just ahead (no polling; a release wakes one waiter), and keep
//!   the lease alive every `ttl / 3` meanwhile, since its ttl runs from the grant. When the turn
//!   comes, one more keepalive; the lease counts from the send time of the last keepalive that
//!   succeeded. The holder metadata is rewritten then, so that it says when the lock was taken.
//! - Renew: one LeaseKeepAlive request and response (ttl 0: lost), then a read of the key (gone,
//!   or re-created by someone else: lost). A lease can outlive its key when someone deletes the
//!   key (`etcdctl del`), and then the lock is free for the next in line.
//! - Release: revoke the lease, which deletes the key in the same step.
//! - Forced release (`elect release --token N`): delete the owner's key if its create revision is
//!   `N`, in one transaction, then revoke its lease.
//! - A wait that is abandoned (its future dropped, e.g. by `--wait=10s`) leaves its key in the
//!   queue; the next call on this backend revokes that lease, and so does dropping the backend
//!   (bounded to one second). If both fail, the lease expires by its ttl.
//! - Every request has its own timeout ([`REQUEST_TIMEOUT`]), and connecting one of its own, so a
//!   stopped or unreachable etcd makes calls fail rather than hang.

mod connect;
mod keepalive;
mod queue;

use std::future::Future;
use std::time::{Duration, SystemTime};

use etcd_client::{Client, GetOptions, KeyValue};

use self::connect::{describe, Target};
pub use self::connect::{PASSWORD_ENV, USER_ENV};
use self::keepalive::{Alive, KeepAlive};
use self::queue::Turn;
use super::{
    AcquireRequest, Backend, BackendError, BackendOptions, BackendUrl, Expiry, ForcedRelease,
    Result, WaitMode,
};
use crate::clock::BootTime;
use crate::lease::{Acquire, FencingToken, HolderInfo, Lease, LockName, LockState, Renewal};

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
    /// Set when a call failed for want of an answer: the next call tries the next endpoint.
    failed: bool,
    target: Target,
    options: BackendOptions,
    settings: Settings,
    describe: String,
    /// The keepalive stream of the lease held, reused from one renewal to the next.
    keepalive: Option<KeepAlive>,
    /// A lease granted by an acquire that did not finish (an error, or its future was dropped
    /// while waiting): its key may still stand in the queue, so it is revoked at the next
    /// opportunity.
    pending: Option<i64>,
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

/// How one pass at the queue ended.
enum Attempt {
    Done(Acquire),
    /// The lease expired while waiting in the queue: start over with a new one.
    Expired,
}

impl EtcdBackend {
    /// Connects, authenticates and reads the prefix once, so that every problem with the
    /// endpoints, credentials or TLS shows up here, before any child starts.
    pub async fn open(url: &BackendUrl, options: &BackendOptions) -> Result<Self> {
        let target = Target::from_url(url)?;
        let (client, endpoint) = connect::connect_any(&target, options, 0).await?;
        Ok(Self {
            client,
            endpoint,
            failed: false,
            settings: Settings {
                prefix: target.prefix.clone(),
            },
            target,
            options: options.clone(),
            describe: url.redacted(),
            keepalive: None,
            pending: None,
        })
    }

    /// The key prefix in use (`elect/` unless the URL says otherwise).
    pub fn prefix(&self) -> &str {
        &self.settings.prefix
    }

    /// The key of a lease's place in a lock's queue.
    pub fn key_of(&self, lease: &Lease) -> String {
        format!("{}{}", self.settings.prefix_of(&lease.name), lease.secret)
    }

    /// Moves to the next endpoint that answers, after a call failed (with several endpoints).
    async fn ready(&mut self) -> Result<()> {
        if self.failed && self.target.endpoints.len() > 1 {
            let (client, endpoint) =
                connect::connect_any(&self.target, &self.options, self.endpoint + 1).await?;
            self.client = client;
            self.endpoint = endpoint;
            // The open keepalive stream belongs to the old connection.
            self.keepalive = None;
        }
        self.failed = false;
        Ok(())
    }

    /// Notes a failure that another endpoint might not have.
    fn note<T>(&mut self, result: Result<T>) -> Result<T> {
        if let Err(BackendError::Unavailable(_)) = &result {
            self.failed = true;
        }
        result
    }

    async fn revoke_pending(&mut self) {
        if let Some(id) = self.pending.take() {
            if let Err(err) = revoke(&mut self.client, id).await {
                tracing::debug!(error = %err, lease = format_args!("{id:x}"), "revoking an abandoned lease failed; it expires by its ttl");
            }
        }
    }

    async fn attempt(&mut self, req: &AcquireRequest, wait: WaitMode) -> Result<Attempt> {
        let ttl_secs = ttl_seconds(req.ttl);
        let mut alive_at = BootTime::now();
        let grant = timed("grant a lease", self.client.lease_grant(ttl_secs, None)).await?;
        let lease_id = grant.id();
        self.pending = Some(lease_id);
        if grant.ttl() < ttl_secs {
            return Err(BackendError::Unavailable(format!(
                "etcd granted a {}s lease where {ttl_secs}s were asked",
                grant.ttl()
            )));
        }
        let queue = self.settings.prefix_of(&req.name);
        let my_key = format!("{queue}{lease_id:x}");
        let value = holder_json(&req.holder)?;
        let position = queue::enqueue(&mut self.client, &queue, &my_key, value, lease_id).await?;
        let mut keepalive = KeepAlive::new(lease_id);
        let owner_is_me = position
            .owner
            .as_ref()
            .is_none_or(|o| o.create_revision() == position.rev);
        if !owner_is_me {
            match wait {
                WaitMode::NoWait => {
                    // Revoking deletes my key with the lease: a busy lock keeps no trace of us.
                    self.revoke_pending().await;
                    let holder = position.owner.as_ref().and_then(holder_of);
                    return Ok(Attempt::Done(Acquire::Held(holder)));
                }
                WaitMode::Wait => {
                    tracing::debug!(lock = %req.name, key = my_key, "waiting in the lock queue");
                    let turn = queue::wait_turn(
                        &mut self.client,
                        &queue,
                        position.rev,
                        &mut keepalive,
                        keepalive_interval(req.ttl),
                        req.ttl,
                        &mut alive_at,
                    )
                    .await?;
                    if let Turn::LeaseGone = turn {
                        self.pending = None;
                        return Ok(Attempt::Expired);
                    }
                    // The turn may have come long after the last keepalive: renew once more, so
                    // that the job starts with as much of the ttl as possible.
                    let sent_at = BootTime::now();
                    match keepalive.once(&mut self.client).await {
                        Ok(Alive::Yes) => alive_at = sent_at,
                        Ok(Alive::Gone) => {
                            self.pending = None;
                            return Ok(Attempt::Expired);
                        }
                        // The earlier keepalive still counts.
                        Err(err) => {
                            tracing::debug!(error = %err, "keepalive on taking the lock failed")
                        }
                    }
                    let mut holder = req.holder.clone();
                    holder.acquired_at = SystemTime::now();
                    let value = holder_json(&holder)?;
                    if !queue::update_mine(&mut self.client, &my_key, position.rev, value, lease_id)
                        .await?
                    {
                        self.pending = None;
                        return Ok(Attempt::Expired);
                    }
                    self.pending = None;
                    self.keepalive = Some(keepalive);
                    return Ok(Attempt::Done(Acquire::Acquired(lease(
                        req,
                        holder,
                        position.rev,
                        lease_id,
                        alive_at,
                    ))));
                }
            }
        }
        self.pending = None;
        self.keepalive = Some(keepalive);
        Ok(Attempt::Done(Acquire::Acquired(lease(
            req,
            req.holder.clone(),
            position.rev,
            lease_id,
            alive_at,
        ))))
    }
}

impl Drop for EtcdBackend {
    /// Revokes the lease of an abandoned wait (its future was dropped: `--wait=DURATION` ran
    /// out), so that its key does not hold up the waiters behind it until its ttl ends.
    ///
    /// The client cannot be used here: its connection is driven by the runtime that is running
    /// this drop, or is already gone. So a thread of its own connects afresh and revokes, and the
    /// drop waits for it at most [`DROP_REVOKE_TIMEOUT`]; past that the lease expires by its ttl.
    fn drop(&mut self) {
        let Some(id) = self.pending.take() else {
            return;
        };
        let (target, options) = (self.target.clone(), self.options.clone());
        let (done, finished) = std::sync::mpsc::channel();
        let revoker = std::thread::Builder::new()
            .name("etcd-revoke".into())
            .spawn(move || {
                if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    runtime.block_on(async {
                        let _ = tokio::time::timeout(DROP_REVOKE_TIMEOUT, async {
                            if let Ok((mut client, _)) =
                                connect::connect_any(&target, &options, 0).await
                            {
                                let _ = revoke(&mut client, id).await;
                            }
                        })
                        .await;
                    });
                }
                let _ = done.send(());
            });
        if revoker.is_ok() {
            let _ = finished.recv_timeout(DROP_REVOKE_TIMEOUT + Duration::from_millis(100));
        }
    }
}

fn lease(
    req: &AcquireRequest,
    mut holder: HolderInfo,
    rev: i64,
    id: i64,
    sent_at: BootTime,
) -> Lease {
    holder.token = token_of(rev);
    Lease {
        name: req.name.clone(),
        holder,
        sent_at,
        secret: format!("{id:x}"),
        kernel_lock: None,
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
        self.ready().await?;
        let result = self.renew_here(lease).await;
        self.note(result)
    }

    async fn release(&mut self, lease: &Lease) -> Result<()> {
        self.ready().await?;
        let result = self.release_here(lease).await;
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
    async fn acquire_here(&mut self, req: &AcquireRequest, wait: WaitMode) -> Result<Acquire> {
        self.revoke_pending().await;
        loop {
            match self.attempt(req, wait).await {
                Ok(Attempt::Done(outcome)) => return Ok(outcome),
                Ok(Attempt::Expired) => {
                    tracing::warn!(lock = %req.name, "the lease expired while waiting in the queue; queuing again");
                }
                Err(err) => {
                    self.revoke_pending().await;
                    return Err(err);
                }
            }
        }
    }

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

    async fn release_here(&mut self, lease: &Lease) -> Result<()> {
        let id = lease_id(lease)?;
        if self.keepalive.as_ref().is_some_and(|k| k.id() == id) {
            self.keepalive = None;
        }
        revoke(&mut self.client, id).await
    }

    async fn list_here(&mut self) -> Result<Vec<LockState>> {
        let options = GetOptions::new().with_prefix();
        let resp = timed(
            "list the locks",
            self.client
                .get(self.settings.prefix.as_str(), Some(options)),
        )
        .await?;
        let mut queues: std::collections::BTreeMap<LockName, Vec<KeyValue>> = Default::default();
        for kv in resp.kvs() {
            let Some(rest) = kv.key().strip_prefix(self.settings.prefix.as_bytes()) else {
                continue;
            };
            // Only `<name>/<lease>` keys are queue members; other keys under the prefix are not
            // elect's business.
            let Some(slash) = rest.iter().position(|&b| b == b'/') else {
                continue;
            };
            let Some(name) = std::str::from_utf8(&rest[..slash])
                .ok()
                .and_then(|n| LockName::new(n).ok())
            else {
                continue;
            };
            queues.entry(name).or_default().push(kv.clone());
        }
        let mut states = Vec::with_capacity(queues.len());
        for (name, mut members) in queues {
            members.sort_by_key(KeyValue::create_revision);
            states.push(self.state_of(&name, &members).await?);
        }
        Ok(states)
    }

    /// Deletes the owner's key only if its create revision is `token` (one transaction), then
    /// revokes its lease, so that a holder that is still alive learns at its next renewal that
    /// it lost the lock. The next in line gets the lock when the key goes.
    async fn force_release_here(
        &mut self,
        name: &LockName,
        token: FencingToken,
    ) -> Result<ForcedRelease> {
        let queue = self.settings.prefix_of(name);
        let members = queue::members(&mut self.client, &queue).await?;
        let Some(owner) = members.first() else {
            return Ok(ForcedRelease::NotHeld);
        };
        if token_of(owner.create_revision()) != token {
            return Ok(ForcedRelease::Mismatch(Some(
                holder_of(owner).unwrap_or_else(|| unknown_holder(owner)),
            )));
        }
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
        Ok(ForcedRelease::Released)
    }

    /// A lock's state from its queue members, owner first.
    async fn state_of(&mut self, name: &LockName, members: &[KeyValue]) -> Result<LockState> {
        let Some(owner) = members.first() else {
            return Ok(LockState {
                lock: name.clone(),
                holder: None,
                expires_in: None,
                waiters: None,
            });
        };
        let expires_in = match owner.lease() {
            0 => None,
            lease => {
                let ttl = timed(
                    "read the holder's lease",
                    self.client.lease_time_to_live(lease, None),
                )
                .await?;
                u64::try_from(ttl.ttl()).ok().map(Duration::from_secs)
            }
        };
        let holder = holder_of(owner).unwrap_or_else(|| unknown_holder(owner));
        Ok(LockState {
            lock: name.clone(),
            holder: Some(holder),
            expires_in,
            waiters: Some(members.len().saturating_sub(1) as u64),
        })
    }
}

/// A lease's ttl in etcd's whole seconds, rounded up: the server must not expire it before the
/// requested ttl has passed.
pub fn ttl_seconds(ttl: Duration) -> i64 {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    i64::try_from(secs.max(1)).unwrap_or(i64::MAX)
}

/// While waiting, the lease is renewed three times per ttl, like a holder's default.
fn keepalive_interval(ttl: Duration) -> Duration {
    (ttl / 3).max(Duration::from_millis(100))
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

fn holder_json(holder: &HolderInfo) -> Result<Vec<u8>> {
    serde_json::to_vec(holder)
        .map_err(|e| BackendError::Config(format!("holder metadata does not serialize: {e}")))
}

/// The holder metadata of a queue key, with the token it really has. `None` for a key that
/// another client (`etcdctl lock`) wrote.
fn holder_of(kv: &KeyValue) -> Option<HolderInfo> {
    let mut holder: HolderInfo = serde_json::from_slice(kv.value()).ok()?;
    holder.token = token_of(kv.create_revision());
    Some(holder)
}

/// What `status` can say about a holder that left no metadata (an `etcdctl lock`). A lock state
/// without a holder means free, so one is made up: its acquired-at is the epoch, as nobody knows.
fn unknown_holder(kv: &KeyValue) -> HolderInfo {
    HolderInfo {
        // The key names the lease, which `etcdctl lease timetolive` can tell more about.
        id: format!("unknown ({})", String::from_utf8_lossy(kv.key())),
        host: String::new(),
        pid: 0,
        acquired_at: SystemTime::UNIX_EPOCH,
        ttl: Duration::ZERO,
        token: token_of(kv.create_revision()),
        version: String::new(),
    }
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
