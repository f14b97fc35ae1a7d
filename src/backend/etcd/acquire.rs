//! Taking the lock: a lease, a place in the queue, and the wait for the turn.

use std::time::{Duration, SystemTime};

use super::keepalive::{Alive, KeepAlive};
use super::queue::{self, Turn, Waiting};
use super::status::holder_of;
use super::{connect, revoke, timed, token_of, ttl_seconds, EtcdBackend, DROP_REVOKE_TIMEOUT};
use crate::backend::retry::Retry;
use crate::backend::{AcquireRequest, BackendError, Result, WaitMode};
use crate::clock::BootTime;
use crate::lease::{Acquire, HolderInfo, Lease};

/// How many unfinished acquires' leases are remembered for revoking.
const MAX_PENDING: usize = 16;

/// How one pass at the queue ended.
enum Attempt {
    Done(Acquire),
    /// The lease expired while waiting in the queue: start over with a new one.
    Expired,
}

impl EtcdBackend {
    pub(super) async fn acquire_here(
        &mut self,
        req: &AcquireRequest,
        wait: WaitMode,
    ) -> Result<Acquire> {
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

    async fn revoke_pending(&mut self) {
        let mut left = std::mem::take(&mut self.pending);
        while let Some(&id) = left.first() {
            if let Err(err) = revoke(&mut self.client, id).await {
                // The others would most likely fail the same way: try them all next time.
                tracing::debug!(error = %err, lease = format_args!("{id:x}"), "revoking an abandoned lease failed; trying again later");
                break;
            }
            left.remove(0);
        }
        // Bounded: a lease not revoked in time expires by its ttl anyway.
        let excess = left.len().saturating_sub(MAX_PENDING);
        left.drain(..excess);
        self.pending = left;
    }

    /// The lease no longer needs revoking: it is held, or already gone.
    fn settled(&mut self, id: i64) {
        self.pending.retain(|&p| p != id);
    }

    /// One attempt: a lease, our key in the lock's queue under it, and the turn (waited for, with
    /// `--wait`).
    async fn attempt(&mut self, req: &AcquireRequest, wait: WaitMode) -> Result<Attempt> {
        let ttl_secs = ttl_seconds(req.ttl);
        let mut alive_at = BootTime::now();
        let lease_id = self.grant(ttl_secs).await?;
        let queue = self.settings.prefix_of(&req.name);
        let my_key = format!("{queue}{lease_id:x}");
        let places = req.holders.max(1);
        // The key says how many places it takes part in, so that `status` and the contenders
        // behind it know.
        let mut me = req.holder.clone();
        me.places = places;
        let value = holder_json(&me)?;
        let position =
            queue::enqueue(&mut self.client, &queue, &my_key, value, lease_id, places).await?;
        let mut keepalive = KeepAlive::new(lease_id);
        // With one place: the owner is me (no key ahead).
        let ahead: Vec<u32> = position.ahead().map(queue::places_of).collect();
        if queue::admitted(&ahead, places) {
            return Ok(self.holding(req, me, position.rev, keepalive, alive_at));
        }
        if wait == WaitMode::NoWait {
            // Revoking deletes my key with the lease: a busy lock keeps no trace of us.
            self.revoke_pending().await;
            let holder = position.owner().and_then(holder_of);
            return Ok(Attempt::Done(Acquire::Held(holder)));
        }
        tracing::debug!(lock = %req.name, key = my_key, "waiting in the lock queue");
        if let Some(to) = &self.queued {
            let _ = to.send(lease(req, me.clone(), position.rev, lease_id, alive_at));
        }
        let turn = self
            .wait_in_line(req, &queue, position.rev, &mut keepalive, &mut alive_at)
            .await?;
        if let Turn::LeaseGone = turn {
            self.settled(lease_id);
            return Ok(Attempt::Expired);
        }
        self.take_turn(req, me, (&my_key, position.rev), keepalive, alive_at)
            .await
    }

    /// A lease of at least `ttl_secs`, remembered for revoking until the attempt settles it.
    async fn grant(&mut self, ttl_secs: i64) -> Result<i64> {
        let grant = timed("grant a lease", self.client.lease_grant(ttl_secs, None)).await?;
        self.pending.push(grant.id());
        if grant.ttl() < ttl_secs {
            return Err(BackendError::Unavailable(format!(
                "etcd granted a {}s lease where {ttl_secs}s were asked",
                grant.ttl()
            )));
        }
        Ok(grant.id())
    }

    /// The turn came after a wait, maybe long after the last keepalive: renew once more, so that
    /// the job starts with as much of the ttl as possible, and say in our key when the lock was
    /// taken.
    async fn take_turn(
        &mut self,
        req: &AcquireRequest,
        me: HolderInfo,
        (my_key, rev): (&str, i64),
        mut keepalive: KeepAlive,
        mut alive_at: BootTime,
    ) -> Result<Attempt> {
        let lease_id = keepalive.id();
        let sent_at = BootTime::now();
        match keepalive.once(&mut self.client).await {
            Ok(Alive::Yes) => alive_at = sent_at,
            Ok(Alive::Gone) => {
                self.settled(lease_id);
                return Ok(Attempt::Expired);
            }
            // The earlier keepalive still counts.
            Err(err) => tracing::debug!(error = %err, "keepalive on taking the lock failed"),
        }
        let mut holder = me;
        holder.acquired_at = SystemTime::now();
        let value = holder_json(&holder)?;
        if !queue::update_mine(&mut self.client, my_key, rev, value, lease_id).await? {
            self.settled(lease_id);
            return Ok(Attempt::Expired);
        }
        Ok(self.holding(req, holder, rev, keepalive, alive_at))
    }

    /// The lock is ours: the lease is kept alive from now on.
    fn holding(
        &mut self,
        req: &AcquireRequest,
        holder: HolderInfo,
        rev: i64,
        keepalive: KeepAlive,
        alive_at: BootTime,
    ) -> Attempt {
        let lease_id = keepalive.id();
        self.settled(lease_id);
        self.keepalive = Some(keepalive);
        Attempt::Done(Acquire::Acquired(lease(
            req, holder, rev, lease_id, alive_at,
        )))
    }
}

impl EtcdBackend {
    /// Waits for the turn (or a place, with `--holders`) of my key at `rev`, through transport
    /// failures: each one builds a new client and waits on with the same key, so that the
    /// waiter keeps its place in the line. It gives up, and the caller queues again, once the
    /// lease may have expired (no keepalive got through for a ttl).
    async fn wait_in_line(
        &mut self,
        req: &AcquireRequest,
        queue: &str,
        rev: i64,
        keepalive: &mut KeepAlive,
        alive_at: &mut BootTime,
    ) -> Result<Turn> {
        let lock = req.name.to_string();
        let places = req.holders.max(1);
        let every = keepalive_interval(req.ttl);
        let mut retry = Retry::new();
        let mut broken = false;
        loop {
            let step = if broken {
                // A keepalive first: it also says whether the lease outlived the outage.
                match self.reconnect().await {
                    Ok(()) => {
                        // Its stream belongs to the old channel.
                        *keepalive = KeepAlive::new(keepalive.id());
                        let sent_at = BootTime::now();
                        match keepalive.once(&mut self.client).await {
                            Ok(Alive::Yes) => {
                                *alive_at = sent_at;
                                broken = false;
                                retry.succeeded(&lock);
                                continue;
                            }
                            Ok(Alive::Gone) => Ok(Turn::LeaseGone),
                            Err(err) => Err(err),
                        }
                    }
                    Err(err) => Err(err),
                }
            } else {
                let mut me = Waiting {
                    queue,
                    rev,
                    keepalive: &mut *keepalive,
                    every,
                    ttl: req.ttl,
                    alive_at: &mut *alive_at,
                };
                if places == 1 {
                    queue::wait_turn(&mut self.client, &mut me).await
                } else {
                    queue::wait_place(&mut self.client, &mut me, places).await
                }
            };
            match step {
                Err(BackendError::Unavailable(why)) if BootTime::now() < *alive_at + req.ttl => {
                    broken = true;
                    let pause = retry.failed(&lock, "waiting in the lock queue", &why);
                    tokio::time::sleep(pause).await;
                }
                other => return other,
            }
        }
    }
}

impl Drop for EtcdBackend {
    /// Revokes the lease of an abandoned wait (its future was dropped: `--wait=DURATION` ran
    /// out), so that its key does not hold up the waiters behind it until its ttl ends.
    ///
    /// The client cannot be used here: its connection is driven by the runtime that is running
    /// this drop, or is already gone. So a thread of its own connects afresh and revokes, and the
    /// drop waits for it at most one second; past that the lease expires by its ttl.
    fn drop(&mut self) {
        let ids = std::mem::take(&mut self.pending);
        if ids.is_empty() {
            return;
        }
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
                                for id in ids {
                                    let _ = revoke(&mut client, id).await;
                                }
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

/// The lease of a lock just taken; its token is the key's create revision, its secret the lease
/// id in hex (the last segment of the key).
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
        slot: 0,
    }
}

/// While waiting, the lease is renewed three times per ttl, like a holder's default.
fn keepalive_interval(ttl: Duration) -> Duration {
    (ttl / 3).max(Duration::from_millis(100))
}

fn holder_json(holder: &HolderInfo) -> Result<Vec<u8>> {
    serde_json::to_vec(holder)
        .map_err(|e| BackendError::Config(format!("holder metadata does not serialize: {e}")))
}
