//! The queue of etcd's concurrency mutex, step by step as `client/v3/concurrency/mutex.go` and
//! `key.go` take it, so that elect and `etcdctl lock` share one queue.
//!
//! - [`enqueue`] is `tryAcquire`: one transaction that puts `<queue><lease hex>` with the lease
//!   attached unless it exists, and reads the first key of the queue by create revision.
//! - [`wait_turn`] is `waitDeletes`: find the key with the highest create revision below mine,
//!   watch it until it changes, and look again, until no key is ahead of mine. Each waiter
//!   watches only the key just ahead of it, so a release wakes one waiter, and waiters are
//!   served in the order they queued.
//!
//! One difference: `waitDelete` returns on a DELETE event only; here any event on the watched key
//! leads to looking again, which costs one read on a rare PUT and needs no event decoding.
//!
//! With `--holders N` (N > 1) the queue is a semaphore, which etcd's own package does not have:
//! [`enqueue`] reads the first `N` keys instead of one, [`admitted`] says whether mine is among
//! the holders, and [`wait_place`] waits for a place by watching the whole queue.

use std::collections::HashMap;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, KeyValue, PutOptions, SortOrder, SortTarget,
    Txn, TxnOp, TxnOpResponse, WatchOptions,
};

use super::keepalive::{Alive, KeepAlive};
use super::timed;
use crate::backend::{BackendError, Result};
use crate::clock::BootTime;

/// Where my key stands after [`enqueue`].
pub(super) struct Position {
    /// The create revision of my key: my place in the queue, and the fencing token.
    pub rev: i64,
    /// The first keys of the queue by create revision, as many as were asked for (the owner
    /// first); empty only if the queue is.
    pub first: Vec<KeyValue>,
}

impl Position {
    /// The first key of the queue: the owner of a mutex, the first holder of a semaphore.
    pub fn owner(&self) -> Option<&KeyValue> {
        self.first.first()
    }

    /// The keys among [`Position::first`] that are ahead of mine.
    pub fn ahead(&self) -> impl Iterator<Item = &KeyValue> {
        self.first
            .iter()
            .filter(|kv| kv.create_revision() < self.rev)
    }
}

/// Puts my key in the queue unless it is there, and reads the first `first` keys of the queue
/// (1: the owner, as `tryAcquire` does), in one transaction.
pub(super) async fn enqueue(
    client: &mut Client,
    queue: &str,
    my_key: &str,
    value: Vec<u8>,
    lease: i64,
    first: u32,
) -> Result<Position> {
    let owner = || TxnOp::get(queue, Some(first_created(first)));
    let txn = Txn::new()
        .when([Compare::create_revision(my_key, CompareOp::Equal, 0)])
        .and_then([
            TxnOp::put(my_key, value, Some(PutOptions::new().with_lease(lease))),
            owner(),
        ])
        .or_else([TxnOp::get(my_key, None), owner()]);
    let resp = timed("join the lock queue", client.txn(txn)).await?;
    let header_rev = resp.header().map(|h| h.revision());
    let responses = resp.op_responses();
    let malformed = || BackendError::Unavailable("etcd sent a malformed transaction reply".into());
    let rev = if resp.succeeded() {
        // The put happened at the transaction's revision.
        header_rev.ok_or_else(malformed)?
    } else {
        match responses.first() {
            Some(TxnOpResponse::Get(get)) => get
                .kvs()
                .first()
                .map(KeyValue::create_revision)
                .ok_or_else(malformed)?,
            _ => return Err(malformed()),
        }
    };
    let first = match responses.get(1) {
        Some(TxnOpResponse::Get(get)) => get.kvs().to_vec(),
        _ => return Err(malformed()),
    };
    Ok(Position { rev, first })
}

/// `WithFirstCreate` (with `n` 1): the queue's `n` keys with the lowest create revisions.
fn first_created(n: u32) -> GetOptions {
    GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Create, SortOrder::Ascend)
        .with_limit(i64::from(n.max(1)))
}

/// How a wait ended.
pub(super) enum Turn {
    /// No key is ahead of mine.
    Mine,
    /// My lease expired or was revoked while I waited: my key is gone.
    LeaseGone,
}

/// A waiter's place in a queue, and the lease that keeps it there while it waits.
pub(super) struct Waiting<'a> {
    /// The lock's queue (its key prefix).
    pub queue: &'a str,
    /// The create revision of my key.
    pub rev: i64,
    /// The stream that keeps my lease alive.
    pub keepalive: &'a mut KeepAlive,
    /// How often to keep the lease alive while waiting.
    pub every: Duration,
    /// The lease's ttl: once no keepalive got through for that long, waiting is pointless.
    pub ttl: Duration,
    /// The send time of the last keepalive that succeeded (the grant, at first); kept up to
    /// date, so that the caller can count the lease's time from it.
    pub alive_at: &'a mut BootTime,
}

/// Waits until no key ahead of mine remains, keeping my lease alive meanwhile.
pub(super) async fn wait_turn(client: &mut Client, me: &mut Waiting<'_>) -> Result<Turn> {
    let mut next_keepalive = tokio::time::Instant::now() + me.every;
    loop {
        let Some((ahead, seen_at)) = key_ahead(client, me.queue, me.rev).await? else {
            return Ok(Turn::Mine);
        };
        let mut watch = timed(
            "watch the lock queue",
            client.watch(
                ahead,
                Some(WatchOptions::new().with_start_revision(seen_at + 1)),
            ),
        )
        .await?;
        loop {
            tokio::select! {
                msg = watch.message() => match msg {
                    Ok(Some(resp)) if resp.canceled() || !resp.events().is_empty() => break,
                    Ok(Some(_)) => continue,
                    // The stream broke: look again (which fails if etcd is gone), after a pause
                    // so that a stream that keeps breaking cannot spin.
                    Ok(None) | Err(_) => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        break;
                    }
                },
                () = tokio::time::sleep_until(next_keepalive) => {
                    next_keepalive = tokio::time::Instant::now() + me.every;
                    if let Some(turn) = me.keep_waiting(client).await? {
                        return Ok(turn);
                    }
                }
            }
        }
    }
}

/// Whether a key with `ahead` keys before it in the queue holds one of `places` places: fewer
/// than `places` are ahead, and fewer than each of them took the lock with (see
/// [`places_of`]), so that a contender with a larger `--holders` never joins a holder that
/// took the lock with a smaller one (an `etcdctl lock` holder counts as 1).
pub(super) fn admitted(ahead: &[u32], places: u32) -> bool {
    let count = u32::try_from(ahead.len()).unwrap_or(u32::MAX);
    count < places && ahead.iter().all(|&p| count < p)
}

/// How many of a queue's members (in order, owner first) hold the lock: the longest run of
/// keys from the first that each are [`admitted`] with the places they were taken with.
pub(super) fn holding(members: &[KeyValue]) -> usize {
    let places: Vec<u32> = members.iter().map(places_of).collect();
    (0..places.len())
        .find(|&i| !admitted(&places[..i], places[i]))
        .unwrap_or(places.len())
}

/// The `--holders N` a queue key was taken with, from its holder metadata; 1 when it has none
/// (an `etcdctl lock` key) or it says nothing.
pub(super) fn places_of(kv: &KeyValue) -> u32 {
    #[derive(serde::Deserialize)]
    struct Places {
        #[serde(default)]
        places: Option<u32>,
    }
    serde_json::from_slice::<Places>(kv.value())
        .ok()
        .and_then(|p| p.places)
        .unwrap_or(1)
        .max(1)
}

/// Waits until my key is one of the first `places` of the queue (see [`admitted`]), keeping my
/// lease alive meanwhile, like [`wait_turn`].
///
/// The keys ahead of mine are read once, then the whole queue is watched from just after that
/// read, and each deletion of a key ahead takes it off the local set: keys created after mine
/// never count, so no event is missed and no polling is needed. Every waiter wakes on every
/// deletion, which costs it no request. If the watch breaks or is cancelled (compaction), the
/// keys ahead are read again.
pub(super) async fn wait_place(
    client: &mut Client,
    me: &mut Waiting<'_>,
    places: u32,
) -> Result<Turn> {
    let mut next_keepalive = tokio::time::Instant::now() + me.every;
    loop {
        let (mut ahead, seen_at) = keys_ahead(client, me.queue, me.rev).await?;
        if admitted(&ahead.values().copied().collect::<Vec<_>>(), places) {
            return Ok(Turn::Mine);
        }
        let mut watch = timed(
            "watch the lock queue",
            client.watch(
                me.queue,
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(seen_at + 1),
                ),
            ),
        )
        .await?;
        loop {
            tokio::select! {
                msg = watch.message() => match msg {
                    Ok(Some(resp)) if resp.canceled() => break,
                    Ok(Some(resp)) => {
                        for event in resp.events() {
                            if event.event_type() == EventType::Delete {
                                if let Some(kv) = event.kv() {
                                    ahead.remove(kv.key());
                                }
                            }
                        }
                        if admitted(&ahead.values().copied().collect::<Vec<_>>(), places) {
                            return Ok(Turn::Mine);
                        }
                    }
                    // The stream broke: look again (which fails if etcd is gone), after a pause
                    // so that a stream that keeps breaking cannot spin.
                    Ok(None) | Err(_) => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        break;
                    }
                },
                () = tokio::time::sleep_until(next_keepalive) => {
                    next_keepalive = tokio::time::Instant::now() + me.every;
                    if let Some(turn) = me.keep_waiting(client).await? {
                        return Ok(turn);
                    }
                }
            }
        }
    }
}

impl Waiting<'_> {
    /// One keepalive while waiting: `Some` when the wait is over because my lease is gone; an
    /// error once keepalives have failed for so long that the lease may have expired.
    async fn keep_waiting(&mut self, client: &mut Client) -> Result<Option<Turn>> {
        let sent_at = BootTime::now();
        match self.keepalive.once(client).await {
            Ok(Alive::Yes) => *self.alive_at = sent_at,
            Ok(Alive::Gone) => return Ok(Some(Turn::LeaseGone)),
            Err(err) => {
                // A few keepalives may fail in a row; once the lease may have expired, waiting on
                // is pointless.
                if BootTime::now() > *self.alive_at + self.ttl {
                    return Err(err);
                }
                tracing::debug!(error = %err, "keepalive while waiting failed");
            }
        }
        Ok(None)
    }
}

/// Every key ahead of mine (create revision below mine) with the places it was taken with, and
/// the revision at which they were read.
async fn keys_ahead(
    client: &mut Client,
    queue: &str,
    my_rev: i64,
) -> Result<(HashMap<Vec<u8>, u32>, i64)> {
    let options = GetOptions::new()
        .with_prefix()
        .with_max_create_revision(my_rev - 1);
    let resp = timed("read the lock queue", client.get(queue, Some(options))).await?;
    let seen_at = resp.header().map_or(0, |h| h.revision());
    let ahead = resp
        .kvs()
        .iter()
        .map(|kv| (kv.key().to_vec(), places_of(kv)))
        .collect();
    Ok((ahead, seen_at))
}

/// `waitDeletes`' query: the key just ahead of mine (highest create revision below mine), and
/// the revision at which it was seen.
async fn key_ahead(
    client: &mut Client,
    queue: &str,
    my_rev: i64,
) -> Result<Option<(Vec<u8>, i64)>> {
    let options = GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Create, SortOrder::Descend)
        .with_max_create_revision(my_rev - 1)
        .with_limit(1)
        .with_keys_only();
    let resp = timed("read the lock queue", client.get(queue, Some(options))).await?;
    let seen_at = resp.header().map_or(0, |h| h.revision());
    Ok(resp.kvs().first().map(|kv| (kv.key().to_vec(), seen_at)))
}

/// Every key of the queue in order, owner first.
pub(super) async fn members(client: &mut Client, queue: &str) -> Result<Vec<KeyValue>> {
    let options = GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Create, SortOrder::Ascend);
    let resp = timed("read the lock queue", client.get(queue, Some(options))).await?;
    Ok(resp.kvs().to_vec())
}

/// Rewrites my key's value (holder metadata) if it is still the key I queued with; `false` when
/// it is gone.
pub(super) async fn update_mine(
    client: &mut Client,
    my_key: &str,
    my_rev: i64,
    value: Vec<u8>,
    lease: i64,
) -> Result<bool> {
    let txn = Txn::new()
        .when([Compare::create_revision(my_key, CompareOp::Equal, my_rev)])
        .and_then([TxnOp::put(
            my_key,
            value,
            Some(PutOptions::new().with_lease(lease)),
        )]);
    let resp = timed("record the holder", client.txn(txn)).await?;
    Ok(resp.succeeded())
}

/// Deletes `key` if its create revision is still `rev` (compare-and-delete); `false` when it
/// is gone or was created again since.
pub(super) async fn delete_if_created_at(
    client: &mut Client,
    key: Vec<u8>,
    rev: i64,
) -> Result<bool> {
    let txn = Txn::new()
        .when([Compare::create_revision(key.clone(), CompareOp::Equal, rev)])
        .and_then([TxnOp::delete(key, None)]);
    let resp = timed("release the lock", client.txn(txn)).await?;
    Ok(resp.succeeded())
}

#[cfg(test)]
mod tests {
    use super::admitted;

    #[test]
    fn admitted_counts_the_keys_ahead_against_every_limit() {
        // A mutex: only the first.
        assert!(admitted(&[], 1));
        assert!(!admitted(&[1], 1));
        // Two places: the first two, if the key ahead took two as well.
        assert!(admitted(&[2], 2));
        assert!(!admitted(&[2, 2], 2));
        // Never beside a holder that took fewer places, nor with fewer than are ahead.
        assert!(!admitted(&[1], 2));
        assert!(!admitted(&[3, 2], 3));
        assert!(!admitted(&[3], 1));
        assert!(admitted(&[3, 3], 3));
    }
}
