//! Run history and the `--once-per` marker on etcd.
//!
//! # Key layout
//! Beside the lock's queue `<prefix><name>/`, never under it (every key under it is a queue
//! member to elect and to `etcdctl lock`):
//!
//! - `<prefix><name>.last`: the last run (JSON), no lease: it stays until the next run.
//! - `<prefix><name>.once`: the run that succeeded (JSON), attached to a lease of its own whose
//!   ttl is `--once-per` rounded up to whole seconds: etcd's clock ends the window. (etcd extends
//!   every lease to its full ttl when a new leader is elected, so a leader change can lengthen a
//!   window; it never shortens one.)
//!
//! The release writes both in one transaction that compares the holder's queue key with the
//! lease's token, so a holder whose key is gone (its lease expired or was taken) records nothing;
//! then it revokes the lease as before.
//!
//! # A run counts from its start
//! A `--once-per` run is recorded before its job starts ([`EtcdBackend::claim_here`]): one
//! transaction that holds only while the holder's queue key is still its own and no marker
//! exists puts the run, its end unfinished, as the marker, on a lease of its own (the window
//! from the start); otherwise it reads the marker that lives. So a release that never reaches
//! etcd leaves a marker behind, and a newcomer skips. The release of a successful run puts the
//! finished run as the marker on a new lease (the window from the end), then revokes the claim's
//! lease, which no longer carries the key; the release of anything else revokes the claim's
//! lease, which deletes the unfinished marker, so that the next trigger retries.

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};

use super::{lease_id, revoke, timed, ttl_seconds, EtcdBackend};
use crate::backend::{BackendError, Result};
use crate::lease::{FencingToken, History, LastRun, Lease, LockName, RunEnd};

const LAST_SUFFIX: &str = ".last";
const ONCE_SUFFIX: &str = ".once";

impl EtcdBackend {
    fn last_key(&self, name: &LockName) -> String {
        format!("{}{name}{LAST_SUFFIX}", self.settings.prefix)
    }

    fn once_key(&self, name: &LockName) -> String {
        format!("{}{name}{ONCE_SUFFIX}", self.settings.prefix)
    }

    /// `--once-per`, before the job starts, while holding `lease`: the run that left a live
    /// marker, if any; otherwise this run, its end unfinished, becomes the marker, in the same
    /// transaction, with a lease of `window` (see the module's notes).
    pub(super) async fn claim_here(
        &mut self,
        lease: &Lease,
        window: std::time::Duration,
    ) -> Result<Option<LastRun>> {
        let id = lease_id(lease)?;
        let started = serde_json::to_vec(&LastRun::unfinished(lease))
            .map_err(|e| BackendError::Config(format!("run history: {e}")))?;
        let grant = timed(
            "grant the --once-per marker's lease",
            self.client.lease_grant(ttl_seconds(window), None),
        )
        .await?;
        // Noted before the transaction's outcome is known: the release revokes it in any case
        // but a recorded success, and revoking a lease that carries no key changes nothing.
        self.claimed = Some((id, grant.id()));
        let once = self.once_key(&lease.name);
        let token = i64::try_from(lease.token().0).unwrap_or(i64::MAX);
        let txn = Txn::new()
            .when([
                Compare::create_revision(self.key_of(lease), CompareOp::Equal, token),
                // A key that does not exist has version 0.
                Compare::version(once.as_str(), CompareOp::Equal, 0),
            ])
            .and_then([TxnOp::put(
                once.as_str(),
                started,
                Some(PutOptions::new().with_lease(grant.id())),
            )])
            .or_else([TxnOp::get(once.as_str(), None)]);
        let resp = timed("record the --once-per run", self.client.txn(txn)).await?;
        if resp.succeeded() {
            return Ok(None);
        }
        let marker = resp.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Get(get) => get.kvs().first().map(|kv| kv.value().to_vec()),
            _ => None,
        });
        match marker {
            Some(value) => Ok(Some(run_of_marker(&lease.name, &value))),
            None => Err(BackendError::Unavailable(format!(
                "record the --once-per run: the lease on lock {} is no longer ours",
                lease.name
            ))),
        }
    }

    /// Removes the marker that the claim of the run under `token` left, if it is still there
    /// unfinished: revoking its lease deletes it, and a finished run's marker (put by the
    /// release on a lease of its own) is left alone.
    pub(super) async fn drop_claim_of(
        &mut self,
        name: &LockName,
        token: FencingToken,
    ) -> Result<()> {
        let key = self.once_key(name);
        let resp = timed("read the --once-per marker", self.client.get(key, None)).await?;
        let Some(kv) = resp.kvs().first() else {
            return Ok(());
        };
        let run = run_of_marker(name, kv.value());
        if run.token == token && run.end == RunEnd::Unfinished && kv.lease() != 0 {
            revoke(&mut self.client, kv.lease()).await?;
        }
        Ok(())
    }

    /// Writes the run (and the marker) if `lease` still owns its queue key; says whether it did.
    pub(super) async fn record(&mut self, lease: &Lease, history: &History) -> Result<bool> {
        let value = serde_json::to_vec(&history.last_run)
            .map_err(|e| BackendError::Config(format!("run history: {e}")))?;
        let mut ops = vec![TxnOp::put(self.last_key(&lease.name), value.clone(), None)];
        let mut marker = None;
        if let Some(window) = history.once_per {
            let grant = timed(
                "grant the --once-per marker's lease",
                self.client.lease_grant(ttl_seconds(window), None),
            )
            .await?;
            marker = Some(grant.id());
            ops.push(TxnOp::put(
                self.once_key(&lease.name),
                value,
                Some(PutOptions::new().with_lease(grant.id())),
            ));
        }
        let token = i64::try_from(lease.token().0).unwrap_or(i64::MAX);
        let txn = Txn::new()
            .when([Compare::create_revision(
                self.key_of(lease),
                CompareOp::Equal,
                token,
            )])
            .and_then(ops);
        let recorded = timed("record the run", self.client.txn(txn)).await;
        if !matches!(&recorded, Ok(resp) if resp.succeeded()) {
            if let Some(id) = marker {
                let _ = revoke(&mut self.client, id).await;
            }
        }
        match recorded? {
            resp if resp.succeeded() => Ok(true),
            _ => {
                tracing::warn!(lock = %lease.name, "the lease was no longer ours at release; the run is not recorded");
                Ok(false)
            }
        }
    }

    pub(super) async fn fresh_run_here(&mut self, name: &LockName) -> Result<Option<LastRun>> {
        let key = self.once_key(name);
        let resp = timed("read the --once-per marker", self.client.get(key, None)).await?;
        Ok(resp.kvs().first().map(|kv| run_of_marker(name, kv.value())))
    }

    pub(super) async fn last_run_of(&mut self, name: &LockName) -> Result<Option<LastRun>> {
        let key = self.last_key(name);
        let resp = timed("read the last run", self.client.get(key, None)).await?;
        Ok(resp
            .kvs()
            .first()
            .and_then(|kv| serde_json::from_slice(kv.value()).ok()))
    }
}

/// The run a marker stands for. A marker elect cannot read still says that the job ran in the
/// window.
fn run_of_marker(name: &LockName, value: &[u8]) -> LastRun {
    serde_json::from_slice(value).unwrap_or_else(|_| LastRun::unreadable_marker(name))
}

/// The lock whose history key `rest` (a key with the prefix taken off, without a `/`) is.
pub(super) fn lock_of_history_key(rest: &[u8]) -> Option<LockName> {
    let text = std::str::from_utf8(rest).ok()?;
    LockName::new(text.strip_suffix(LAST_SUFFIX)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_keys_name_their_lock() {
        assert_eq!(
            lock_of_history_key(b"billing.last").map(|n| n.to_string()),
            Some("billing".into())
        );
        assert_eq!(
            lock_of_history_key(b"a.last.last").map(|n| n.to_string()),
            Some("a.last".into())
        );
        assert_eq!(lock_of_history_key(b"billing.once"), None);
        assert_eq!(lock_of_history_key(b"billing"), None);
    }
}
