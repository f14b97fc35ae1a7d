//! Taking the lock: a node in the queue, and the wait for the turn.
//!
//! - Join: create `<lock>/<uuid hex>__lock__` ephemeral and sequential (the lock's node is made
//!   first if missing), as kazoo does; the data is the holder metadata.
//! - Look: list the lock's children; with no contender ahead (fewer than its places, with
//!   `--holders`), the lock is ours, and the lease counts from when that list was sent: its
//!   answer proves the session alive then.
//! - Busy, without waiting: delete the node at once, so that a busy lock keeps no trace of us.
//! - Busy, waiting: watch the contender just ahead (one wake-up per release, no herd), and look
//!   again when it changes or goes. With `--holders N` any holder may go first: the watch is
//!   on the lock's children. The session stays alive by the client's own pings meanwhile.
//!   When the turn comes after a wait, the metadata is rewritten so that it says when the lock
//!   was taken; that write's send time is the lease's start.
//! - A session that expires while waiting took the node with it: queue again, at the back,
//!   on a new session.

use std::time::SystemTime;

use zookeeper_client::{Client, CreateMode};

use super::queue::{self, NODE_NAME};
use super::status::holder_of;
use super::{persistent, request, timed, token_of, Missing, ZkBackend};
use crate::backend::retry::Retry;
use crate::backend::{AcquireRequest, BackendError, Result, WaitMode};
use crate::clock::BootTime;
use crate::lease::{Acquire, HolderInfo, Lease};

/// How many unfinished acquires' nodes are remembered for deleting.
const MAX_PENDING: usize = 16;

/// How one pass at the queue ended.
enum Attempt {
    Done(Acquire),
    /// The session ended while waiting, and the node with it: queue again.
    Requeue(String),
}

impl ZkBackend {
    pub(super) async fn acquire_here(
        &mut self,
        req: &AcquireRequest,
        wait: WaitMode,
    ) -> Result<Acquire> {
        let mut retry = Retry::new();
        loop {
            let client = self.client(Some(req.ttl)).await?;
            self.check_granted(&client, req)?;
            self.delete_pending(&client).await;
            match self.attempt(&client, req, wait).await {
                Ok(Attempt::Done(outcome)) => return Ok(outcome),
                Ok(Attempt::Requeue(why)) => {
                    tracing::warn!(lock = %req.name, "{why} while waiting in the queue; queuing again");
                    let pause = retry.failed(req.name.as_str(), "waiting in the lock queue", &why);
                    tokio::time::sleep(pause).await;
                }
                Err(err) => {
                    self.delete_pending(&client).await;
                    return Err(err);
                }
            }
        }
    }

    /// The session timeout the server granted must cover the ttl: a shorter one could expire
    /// the session, and the node, before the holder's deadline.
    fn check_granted(&self, client: &Client, req: &AcquireRequest) -> Result<()> {
        let granted = client.session_timeout();
        if granted < req.ttl {
            return Err(BackendError::Config(format!(
                "ZooKeeper granted a session timeout of {} where --ttl asks for {}: the server's \
                 maxSessionTimeout (20 x tickTime by default) caps it; use --ttl {} or less, or \
                 raise maxSessionTimeout",
                crate::timing::Fmt(granted),
                crate::timing::Fmt(req.ttl),
                crate::timing::Fmt(granted)
            )));
        }
        if granted > req.ttl + req.ttl / 10 {
            tracing::warn!(
                lock = %req.name,
                "ZooKeeper granted a session timeout of {} for --ttl {} (its minSessionTimeout, 2 x tickTime by default): a holder that dies keeps the lock that long",
                crate::timing::Fmt(granted),
                crate::timing::Fmt(req.ttl)
            );
        }
        Ok(())
    }

    async fn attempt(
        &mut self,
        client: &Client,
        req: &AcquireRequest,
        wait: WaitMode,
    ) -> Result<Attempt> {
        let lock = self.lock_path(&req.name);
        let places = req.holders.max(1);
        let mut me = req.holder.clone();
        me.places = places;
        let (node, czxid) = self.join(client, &lock, &me).await?;
        let path = format!("{lock}/{node}");
        self.pending.push(path.clone());
        if self.pending.len() > MAX_PENDING {
            self.pending.remove(0);
        }
        let mut waited = false;
        let mut retry = Retry::new();
        loop {
            let sent_at = BootTime::now();
            let children = match timed("list the lock queue", client.list_children(&lock)).await {
                Ok(children) => children,
                Err(Missing::Gone) => Vec::new(),
                Err(Missing::Failed(err)) => {
                    match self
                        .failed_while_waiting(client, err, waited, &mut retry, req.name.as_str())
                        .await?
                    {
                        Some(attempt) => return Ok(attempt),
                        None => continue,
                    }
                }
            };
            retry.succeeded(req.name.as_str());
            let contenders = queue::contenders(&children);
            let Some(mine) = contenders.iter().position(|c| c.name == node) else {
                self.settled(&path);
                return Ok(Attempt::Requeue(format!(
                    "the queue node {path} was deleted"
                )));
            };
            let ahead = &contenders[..mine];
            let ahead_places = if places == 1 {
                // Any contender ahead keeps a mutex user out: no need to read them.
                vec![1; ahead.len()]
            } else {
                self.places_of(client, &lock, ahead).await?
            };
            if queue::admitted(&ahead_places, places) {
                let (holder, sent_at) = if waited {
                    self.taken_after_wait(client, &path, me.clone(), sent_at)
                        .await?
                } else {
                    (me.clone(), sent_at)
                };
                self.settled(&path);
                return Ok(Attempt::Done(Acquire::Acquired(lease(
                    req, holder, &node, czxid, sent_at,
                ))));
            }
            if wait == WaitMode::NoWait {
                let owner = self.holder_at(client, &lock, &contenders[0].name).await;
                if let Ok(()) | Err(Missing::Gone) =
                    timed("leave the queue", client.delete(&path, None)).await
                {
                    self.settled(&path);
                }
                return Ok(Attempt::Done(Acquire::Held(owner)));
            }
            if !waited {
                tracing::debug!(lock = %req.name, node, "waiting in the lock queue");
                waited = true;
            }
            let watched = if places == 1 {
                let predecessor = format!("{lock}/{}", ahead[mine - 1].name);
                match client.check_and_watch_stat(&predecessor).await {
                    // Gone between the list and the watch: look again.
                    Ok((None, _)) => continue,
                    Ok((Some(_), watcher)) => Ok(watcher),
                    Err(err) => Err(err),
                }
            } else {
                client
                    .list_and_watch_children(&lock)
                    .await
                    .map(|(_, watcher)| watcher)
            };
            match watched {
                Ok(watcher) => {
                    // A watcher fires on the node's change, and on the session's end.
                    let _ = watcher.changed().await;
                }
                Err(err) => {
                    let err = BackendError::Unavailable(format!(
                        "watch the queue: {}",
                        super::describe(&err)
                    ));
                    match self
                        .failed_while_waiting(client, err, waited, &mut retry, req.name.as_str())
                        .await?
                    {
                        Some(attempt) => return Ok(attempt),
                        None => continue,
                    }
                }
            }
        }
    }

    /// Creates my node in the lock's queue (and the lock's node first, if missing); returns its
    /// name and creation zxid.
    async fn join(&self, client: &Client, lock: &str, me: &HolderInfo) -> Result<(String, i64)> {
        let data = holder_json(me)?;
        let prefix = format!(
            "{lock}/{}{NODE_NAME}",
            // kazoo's own form, `uuid4().hex`: an elect node looks like a kazoo one.
            uuid::Uuid::new_v4().simple()
        );
        let options = CreateMode::EphemeralSequential.with_acls(self.target.acls());
        let mut made_parent = false;
        loop {
            match timed(
                "join the lock queue",
                client.create(&prefix, &data, &options),
            )
            .await
            {
                Ok((stat, sequence)) => {
                    let name = format!(
                        "{}{NODE_NAME}{sequence}",
                        &prefix[lock.len() + 1..prefix.len() - NODE_NAME.len()]
                    );
                    return Ok((name, stat.czxid));
                }
                Err(Missing::Gone) if !made_parent => {
                    request(
                        "create the lock's node",
                        client.mkdir(lock, &persistent(&self.target)),
                    )
                    .await?;
                    made_parent = true;
                }
                Err(Missing::Gone) => {
                    return Err(BackendError::Unavailable(format!(
                        "join the lock queue: {lock} keeps disappearing"
                    )))
                }
                Err(Missing::Failed(err)) => return Err(err),
            }
        }
    }

    /// A request failed while in the queue. An ended session took the node with it: queue
    /// again. Before any wait, the failure is the caller's. While waiting, the node keeps its
    /// place for as long as the session lives (the client reconnects by itself, and declares
    /// the session expired after 7/5 of its timeout without a connection): `None`, look again,
    /// paced by `retry`.
    async fn failed_while_waiting(
        &mut self,
        client: &Client,
        err: BackendError,
        waited: bool,
        retry: &mut Retry,
        lock: &str,
    ) -> Result<Option<Attempt>> {
        let state = client.state();
        if state.is_terminated() {
            self.session = None;
            self.pending.clear();
            return Ok(Some(Attempt::Requeue(format!(
                "the ZooKeeper session ended ({state})"
            ))));
        }
        if !waited {
            return Err(err);
        }
        let why = err.to_string();
        let pause = retry.failed(lock, "waiting in the lock queue", &why);
        tokio::time::sleep(pause).await;
        Ok(None)
    }

    /// After a wait: the metadata says when the lock was taken; that write is the lease's start.
    async fn taken_after_wait(
        &self,
        client: &Client,
        path: &str,
        mut holder: HolderInfo,
        listed_at: BootTime,
    ) -> Result<(HolderInfo, BootTime)> {
        holder.acquired_at = SystemTime::now();
        let data = holder_json(&holder)?;
        let sent_at = BootTime::now();
        match timed("record the holder", client.set_data(path, &data, None)).await {
            Ok(_) => Ok((holder, sent_at)),
            // The list's answer still counts.
            Err(Missing::Failed(err)) => {
                tracing::debug!(error = %err, "rewriting the holder metadata failed");
                Ok((holder, listed_at))
            }
            Err(Missing::Gone) => Err(BackendError::Unavailable(format!(
                "the queue node {path} was deleted as the lock was taken"
            ))),
        }
    }

    /// The `--holders` of each contender ahead (1 for one without elect's metadata).
    async fn places_of(
        &self,
        client: &Client,
        lock: &str,
        ahead: &[queue::Contender],
    ) -> Result<Vec<u32>> {
        let mut places = Vec::with_capacity(ahead.len());
        for contender in ahead {
            let path = format!("{lock}/{}", contender.name);
            match timed("read a contender", client.get_data(&path)).await {
                Ok((data, _)) => places.push(
                    serde_json::from_slice::<HolderInfo>(&data).map_or(1, |h| h.places.max(1)),
                ),
                // Gone since the list: it no longer counts.
                Err(Missing::Gone) => {}
                Err(Missing::Failed(err)) => return Err(err),
            }
        }
        Ok(places)
    }

    /// Who holds the lock, for the busy message; `None` for a holder without elect's metadata
    /// (kazoo) or one that is gone.
    async fn holder_at(&self, client: &Client, lock: &str, node: &str) -> Option<HolderInfo> {
        let path = format!("{lock}/{node}");
        let (data, stat) = timed("read the holder", client.get_data(&path))
            .await
            .ok()?;
        holder_of(&data, &stat)
    }

    /// The node no longer needs deleting: it is held, or already gone.
    fn settled(&mut self, path: &str) {
        self.pending.retain(|p| p != path);
    }
}

/// The lease of a lock just taken; its token is the node's creation zxid, its secret the node's
/// name.
fn lease(
    req: &AcquireRequest,
    mut holder: HolderInfo,
    node: &str,
    czxid: i64,
    sent_at: BootTime,
) -> Lease {
    holder.token = token_of(czxid);
    Lease {
        name: req.name.clone(),
        holder,
        sent_at,
        secret: node.to_owned(),
        kernel_lock: None,
        slot: 0,
    }
}

fn holder_json(holder: &HolderInfo) -> Result<Vec<u8>> {
    serde_json::to_vec(holder)
        .map_err(|e| BackendError::Config(format!("holder metadata does not serialize: {e}")))
}
