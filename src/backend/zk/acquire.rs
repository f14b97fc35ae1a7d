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
//!   on a new session, at once: a fresh elect would not wait either (see [`pace`]).

use tokio::time::Instant;
use zookeeper_client::Client;

use super::node::lease;
use super::queue;
use super::{timed, Missing, Opening, ZkBackend};
use crate::backend::retry::Retry;
use crate::backend::{AcquireRequest, BackendError, Result, WaitMode};
use crate::clock::BootTime;
use crate::lease::{Acquire, HolderInfo};

/// How many unfinished acquires' nodes are remembered for deleting.
const MAX_PENDING: usize = 16;

/// How one pass at the queue ended.
enum Attempt {
    Done(Acquire),
    /// The place in the queue is gone (the session ended, or the node was deleted): queue
    /// again.
    Requeue(String),
}

/// Our node in a lock's queue, for one pass.
struct Place {
    /// The lock's node.
    lock: String,
    /// Our node's name, and its path.
    node: String,
    path: String,
    /// Our node's creation zxid: the fencing token.
    czxid: i64,
    /// How many may hold the lock at once (`--holders`).
    places: u32,
    me: HolderInfo,
}

/// What one look at the queue came to.
enum Look {
    /// Look again at once.
    Again,
    Done(Attempt),
    /// A request failed (see `failed_while_waiting`).
    Failed(BackendError),
}

impl ZkBackend {
    /// Without waiting, one pass: any failure is the caller's. Waiting, the wait goes on through
    /// failures and lost places, on a new session when the last one ended, until the lock is
    /// taken (or the caller drops the wait). The tries are paced here, by one [`Retry`] that
    /// starts afresh whenever the queue was joined again, so that an outage does not slow the
    /// recovery from the next one.
    pub(super) async fn acquire_here(
        &mut self,
        req: &AcquireRequest,
        wait: WaitMode,
    ) -> Result<Acquire> {
        let lock = req.name.as_str();
        let mut retry = Retry::new();
        loop {
            let began = Instant::now();
            let opening = match wait {
                WaitMode::NoWait => Opening::Once,
                WaitMode::Wait => Opening::Soon,
            };
            let outcome = match self.client_opened(Some(req.ttl), opening).await {
                Ok(client) => self.pass(&client, req, wait, &mut retry).await,
                Err(err) => Err(err),
            };
            match outcome {
                Ok(Attempt::Done(outcome)) => return Ok(outcome),
                Ok(Attempt::Requeue(why)) => {
                    tracing::warn!(lock, "{why} while waiting in the queue; queuing again");
                    pace(&mut retry, lock, began, &why).await;
                }
                Err(BackendError::Unavailable(why)) if wait == WaitMode::Wait => {
                    pace(&mut retry, lock, began, &why).await;
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// One pass at the queue on the session's client; the nodes of earlier passes that did not
    /// finish are deleted first, and again if this one fails.
    async fn pass(
        &mut self,
        client: &Client,
        req: &AcquireRequest,
        wait: WaitMode,
        retry: &mut Retry,
    ) -> Result<Attempt> {
        self.check_granted(client, req)?;
        self.delete_pending(client).await;
        let outcome = self.attempt(client, req, wait, retry).await;
        if outcome.is_err() {
            self.delete_pending(client).await;
        }
        outcome
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

    /// One pass: join the queue, then look at it until the turn comes, the place is lost, or
    /// (without waiting) the lock is found busy.
    async fn attempt(
        &mut self,
        client: &Client,
        req: &AcquireRequest,
        wait: WaitMode,
        retry: &mut Retry,
    ) -> Result<Attempt> {
        let place = self.join_queue(client, req).await?;
        let mut waited = false;
        loop {
            match self
                .look(client, req, wait, retry, &place, &mut waited)
                .await?
            {
                Look::Again => {}
                Look::Done(attempt) => return Ok(attempt),
                Look::Failed(err) => {
                    let lock = req.name.as_str();
                    let failed = self.failed_while_waiting(client, err, waited, retry, lock);
                    if let Some(attempt) = failed.await? {
                        return Ok(attempt);
                    }
                }
            }
        }
    }

    /// Creates our node in the lock's queue, remembered for deleting until the pass settles it.
    async fn join_queue(&mut self, client: &Client, req: &AcquireRequest) -> Result<Place> {
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
        Ok(Place {
            lock,
            node,
            path,
            czxid,
            places,
            me,
        })
    }

    /// One look at the queue: our turn, busy, or a wait until the contender ahead changes.
    async fn look(
        &mut self,
        client: &Client,
        req: &AcquireRequest,
        wait: WaitMode,
        retry: &mut Retry,
        place: &Place,
        waited: &mut bool,
    ) -> Result<Look> {
        let sent_at = BootTime::now();
        let listed = timed("list the lock queue", client.list_children(&place.lock)).await;
        let children = match listed {
            Ok(children) => children,
            Err(Missing::Gone) => Vec::new(),
            Err(Missing::Failed(err)) => return Ok(Look::Failed(err)),
        };
        retry.succeeded(req.name.as_str());
        let contenders = queue::contenders(&children);
        let Some(mine) = contenders.iter().position(|c| c.name == place.node) else {
            self.settled(&place.path);
            let why = format!("the queue node {} was deleted", place.path);
            return Ok(Look::Done(Attempt::Requeue(why)));
        };
        let ahead = &contenders[..mine];
        if let Some(own) = self.abandoned_among(&place.lock, ahead) {
            return Ok(self.drop_abandoned(client, &own).await);
        }
        let ahead_places = if place.places == 1 {
            // Any contender ahead keeps a mutex user out: no need to read them.
            vec![1; ahead.len()]
        } else {
            self.places_of(client, &place.lock, ahead).await?
        };
        if queue::admitted(&ahead_places, place.places) {
            let taken = self.take_turn(client, req, place, sent_at, *waited).await;
            return taken.map(Look::Done);
        }
        if wait == WaitMode::NoWait {
            let first = &contenders[0].name;
            return Ok(Look::Done(self.leave_busy(client, place, first).await));
        }
        if !*waited {
            tracing::debug!(lock = %req.name, node = place.node, "waiting in the lock queue");
            *waited = true;
        }
        let predecessor =
            (place.places == 1).then(|| format!("{}/{}", place.lock, ahead[mine - 1].name));
        Ok(watch_ahead(client, place, predecessor).await)
    }

    /// Deletes a node of an earlier pass whose delete failed while the connection was down: it
    /// must not stand ahead of this one for as long as the session lives.
    async fn drop_abandoned(&mut self, client: &Client, own: &str) -> Look {
        let deleted = timed(
            "delete an abandoned place in the queue",
            client.delete(own, None),
        )
        .await;
        if let Err(Missing::Failed(err)) = deleted {
            return Look::Failed(err);
        }
        self.settled(own);
        Look::Again
    }

    /// Our turn: the lease counts from when the look that found it was sent or, after a wait,
    /// from the rewrite of our metadata that says when the lock was taken.
    async fn take_turn(
        &mut self,
        client: &Client,
        req: &AcquireRequest,
        place: &Place,
        sent_at: BootTime,
        waited: bool,
    ) -> Result<Attempt> {
        let (holder, sent_at) = if waited {
            self.taken_after_wait(client, &place.path, place.me.clone(), sent_at)
                .await?
        } else {
            (place.me.clone(), sent_at)
        };
        self.settled(&place.path);
        let lease = lease(req, holder, &place.node, place.czxid, sent_at);
        Ok(Attempt::Done(Acquire::Acquired(lease)))
    }

    /// Busy, without waiting: the holder, and our node deleted at once.
    async fn leave_busy(&mut self, client: &Client, place: &Place, first: &str) -> Attempt {
        let owner = self.holder_at(client, &place.lock, first).await;
        let left = timed("leave the queue", client.delete(&place.path, None)).await;
        if let Ok(()) | Err(Missing::Gone) = left {
            self.settled(&place.path);
        }
        Attempt::Done(Acquire::Held(owner))
    }

    /// A request failed while in the queue. An ended session took the node with it: queue
    /// again. Before any wait, the failure is the pass's (a wait tries again, see
    /// `acquire_here`). While waiting, the node keeps its place for as long as the session lives
    /// (the client reconnects by itself, and declares the session expired after 7/5 of its
    /// timeout without a connection): `None`, look again, paced by `retry`.
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

    /// The first of the contenders ahead that is a node of an unfinished earlier pass.
    fn abandoned_among(&self, lock: &str, ahead: &[queue::Contender]) -> Option<String> {
        ahead
            .iter()
            .map(|c| format!("{lock}/{}", c.name))
            .find(|path| self.pending.contains(path))
    }

    /// The node no longer needs deleting: it is held, or already gone.
    fn settled(&mut self, path: &str) {
        self.pending.retain(|p| p != path);
    }
}

/// Sleeps until the next try after a failure or a lost place: the [`Retry`]'s pause, counted from
/// when the failed try began, with up to a fifth more at random so that waiters cut off together
/// do not come back in step. Two consequences, both deliberate:
/// - a place lost after a wait (the session expired: it went at least its timeout without an
///   answer) is sought again at once, as a freshly started elect would: a waiter that paused
///   first came back behind every newcomer, fault after fault, and waited for ever;
/// - a try that itself took the whole pause (a handshake that went unanswered while the
///   network was cut) is followed at once by the next, so that one is under way whenever the
///   network comes back.
async fn pace(retry: &mut Retry, lock: &str, began: Instant, why: &str) {
    let pause = retry
        .failed(lock, "waiting in the lock queue", why)
        .saturating_sub(began.elapsed());
    if !pause.is_zero() {
        let fifths = uuid::Uuid::new_v4().as_u128() % 1000;
        tokio::time::sleep(pause + pause.mul_f64(fifths as f64 / 5000.0)).await;
    }
}

/// Waits for a change ahead in the queue: the contender just ahead (`predecessor`, with one
/// place), or the lock's children (with several, where any holder may go first).
async fn watch_ahead(client: &Client, place: &Place, predecessor: Option<String>) -> Look {
    let watched = match predecessor {
        Some(predecessor) => match client.check_and_watch_stat(&predecessor).await {
            // Gone between the list and the watch: look again.
            Ok((None, _)) => return Look::Again,
            Ok((Some(_), watcher)) => Ok(watcher),
            Err(err) => Err(err),
        },
        None => client
            .list_and_watch_children(&place.lock)
            .await
            .map(|(_, watcher)| watcher),
    };
    match watched {
        Ok(watcher) => {
            // A watcher fires on the node's change, and on the session's end.
            let _ = watcher.changed().await;
            Look::Again
        }
        Err(err) => Look::Failed(BackendError::Unavailable(format!(
            "watch the queue: {}",
            super::describe(&err)
        ))),
    }
}
