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

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};

use super::{revoke, timed, ttl_seconds, EtcdBackend};
use crate::backend::{BackendError, Result};
use crate::lease::{History, LastRun, Lease, LockName};

const LAST_SUFFIX: &str = ".last";
const ONCE_SUFFIX: &str = ".once";

impl EtcdBackend {
    fn last_key(&self, name: &LockName) -> String {
        format!("{}{name}{LAST_SUFFIX}", self.settings.prefix)
    }

    fn once_key(&self, name: &LockName) -> String {
        format!("{}{name}{ONCE_SUFFIX}", self.settings.prefix)
    }

    /// Writes the run (and the marker) if `lease` still owns its queue key.
    pub(super) async fn record(&mut self, lease: &Lease, history: &History) -> Result<()> {
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
            resp if resp.succeeded() => Ok(()),
            _ => {
                tracing::warn!(lock = %lease.name, "the lease was no longer ours at release; the run is not recorded");
                Ok(())
            }
        }
    }

    pub(super) async fn fresh_run_here(&mut self, name: &LockName) -> Result<Option<LastRun>> {
        let key = self.once_key(name);
        let resp = timed("read the --once-per marker", self.client.get(key, None)).await?;
        Ok(resp.kvs().first().map(|kv| {
            // A marker elect cannot read still says that the job ran in the window.
            serde_json::from_slice(kv.value()).unwrap_or_else(|_| LastRun {
                holder: format!("unknown (unreadable marker of lock {name})"),
                host: "unknown".into(),
                pid: 0,
                token: crate::lease::FencingToken(0),
                started_at: std::time::UNIX_EPOCH,
                finished_at: std::time::UNIX_EPOCH,
                duration: std::time::Duration::ZERO,
                end: crate::lease::RunEnd::ExitCode(0),
            })
        }))
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
