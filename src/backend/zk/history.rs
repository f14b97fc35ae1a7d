//! Run history and the `--once-per` marker on ZooKeeper.
//!
//! # Node layout
//! Beside the lock's node, never under it (every child of it may be a contender):
//!
//! - `<base>/<name>.last`: the last run (JSON), persistent: it stays until the next run.
//! - `<base>/<name>.once`: the `--once-per` marker, persistent: the run (JSON) and its window
//!   (`window_ms`). ZooKeeper's TTL nodes need `extendedTypesEnabled` on every server, so the
//!   window is judged instead by the ensemble's clock: a marker is fresh while the time of a
//!   write made now (the `mtime` of an empty write to the lock's node, stamped by the leader)
//!   is before the marker's own `mtime` plus its window. No holder's clock takes part.
//!
//! The release writes both in one `multi` that first checks the holder's node still exists, so
//! a holder whose node is gone (its session expired, or an operator released it) records
//! nothing. A `--once-per` run is recorded as started before its job starts (`claim_here`): one
//! `multi` that holds only while the holder's node exists and the marker is unchanged since it
//! was read stale (or absent). The release of a successful run writes the finished run as the
//! marker (its window from the end); the release of anything else deletes the unfinished
//! marker if it is still this run's, so that the next trigger retries.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use zookeeper_client::{Client, CreateMode, MultiWriteError, Stat};

use super::{request, timed, Missing, ZkBackend};
use crate::backend::{BackendError, Result};
use crate::lease::{FencingToken, History, LastRun, Lease, LockName, RunEnd};

pub(super) const LAST_SUFFIX: &str = ".last";
const ONCE_SUFFIX: &str = ".once";

/// The `--once-per` marker: the run, and how long after the marker's write it counts.
#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    #[serde(flatten)]
    run: LastRun,
    window_ms: u64,
}

impl ZkBackend {
    fn last_path(&self, name: &LockName) -> String {
        format!("{}{LAST_SUFFIX}", self.lock_path(name))
    }

    fn once_path(&self, name: &LockName) -> String {
        format!("{}{ONCE_SUFFIX}", self.lock_path(name))
    }

    /// The ensemble's time now, in milliseconds since the epoch: the `mtime` of an empty write
    /// to the lock's node (which exists while anyone holds the lock; kazoo neither reads nor
    /// watches its data).
    async fn ensemble_now(&self, client: &Client, name: &LockName) -> Result<i64> {
        let stat = request(
            "read the ensemble's clock",
            client.set_data(&self.lock_path(name), b"", None),
        )
        .await?;
        Ok(stat.mtime)
    }

    /// The live marker of `name` at the ensemble's time `now`, with its stat (the stat alone
    /// when the marker is stale; neither when there is none).
    async fn marker(
        &self,
        client: &Client,
        name: &LockName,
        now: i64,
    ) -> Result<(Option<LastRun>, Option<Stat>)> {
        match timed(
            "read the --once-per marker",
            client.get_data(&self.once_path(name)),
        )
        .await
        {
            Ok((data, stat)) => {
                let marker = marker_of(name, &data);
                let ends = stat
                    .mtime
                    .saturating_add(i64::try_from(marker.window_ms).unwrap_or(i64::MAX));
                let run = (now < ends).then_some(marker.run);
                Ok((run, Some(stat)))
            }
            Err(Missing::Gone) => Ok((None, None)),
            Err(Missing::Failed(err)) => Err(err),
        }
    }

    pub(super) async fn fresh_run_here(
        &self,
        client: &Client,
        name: &LockName,
    ) -> Result<Option<LastRun>> {
        let now = self.ensemble_now(client, name).await?;
        Ok(self.marker(client, name, now).await?.0)
    }

    /// `--once-per`, before the job starts, while holding `lease`: the run that left a live
    /// marker, if any; otherwise this run, its end unfinished, becomes the marker (see the
    /// module's notes).
    pub(super) async fn claim_here(
        &mut self,
        client: &Client,
        lease: &Lease,
        window: Duration,
    ) -> Result<Option<LastRun>> {
        let started = marker_json(&LastRun::unfinished(lease), window)?;
        let node = self.node_of(lease);
        let once = self.once_path(&lease.name);
        for _ in 0..3 {
            let now = self.ensemble_now(client, &lease.name).await?;
            let (live, stat) = self.marker(client, &lease.name, now).await?;
            if live.is_some() {
                return Ok(live);
            }
            let mut writer = client.new_multi_writer();
            let built = writer
                .add_check_version(&node, -1)
                .and_then(|()| match &stat {
                    Some(stat) => writer.add_set_data(&once, &started, Some(stat.version)),
                    None => writer.add_create(&once, &started, &super::persistent(&self.target)),
                });
            built.map_err(|e| super::request_error("record the --once-per run", &e))?;
            match tokio::time::timeout(super::REQUEST_TIMEOUT, writer.commit()).await {
                Ok(Ok(_)) => {
                    self.claimed = Some(node);
                    return Ok(None);
                }
                Ok(Err(MultiWriteError::OperationFailed { index: 0, .. })) => {
                    return Err(BackendError::Unavailable(format!(
                        "record the --once-per run: the lease on lock {} is no longer ours",
                        lease.name
                    )))
                }
                // The marker changed since it was read: read it again.
                Ok(Err(MultiWriteError::OperationFailed { .. })) => continue,
                Ok(Err(MultiWriteError::RequestFailed { source })) => {
                    return Err(super::request_error("record the --once-per run", &source))
                }
                Err(_) => {
                    return Err(BackendError::Unavailable(
                        "record the --once-per run: ZooKeeper did not answer".into(),
                    ))
                }
            }
        }
        Err(BackendError::Unavailable(format!(
            "record the --once-per run: the marker of lock {} keeps changing",
            lease.name
        )))
    }

    /// Deletes the marker that the claim of the run under `token` left, if it is still there
    /// unfinished; a finished run's marker is left alone.
    pub(super) async fn drop_claim_of(
        &self,
        client: &Client,
        name: &LockName,
        token: FencingToken,
    ) -> Result<()> {
        let once = self.once_path(name);
        let (data, stat) = match timed("read the --once-per marker", client.get_data(&once)).await {
            Ok(found) => found,
            Err(Missing::Gone) => return Ok(()),
            Err(Missing::Failed(err)) => return Err(err),
        };
        let run = marker_of(name, &data).run;
        if run.token == token && run.end == RunEnd::Unfinished {
            match timed(
                "remove the --once-per claim",
                client.delete(&once, Some(stat.version)),
            )
            .await
            {
                Ok(()) | Err(Missing::Gone) => {}
                Err(Missing::Failed(err)) => return Err(err),
            }
        }
        Ok(())
    }

    /// Writes the run (and the marker) if `lease`'s node still exists; says whether it did.
    pub(super) async fn record(
        &self,
        client: &Client,
        lease: &Lease,
        history: &History,
    ) -> Result<bool> {
        let last = serde_json::to_vec(&history.last_run)
            .map_err(|e| BackendError::Config(format!("run history: {e}")))?;
        let once = history
            .once_per
            .map(|window| marker_json(&history.last_run, window))
            .transpose()?;
        let node = self.node_of(lease);
        let paths = [self.last_path(&lease.name), self.once_path(&lease.name)];
        for _ in 0..2 {
            let mut writer = client.new_multi_writer();
            let mut built = writer.add_check_version(&node, -1);
            built = built.and_then(|()| writer.add_set_data(&paths[0], &last, None));
            if let Some(once) = &once {
                built = built.and_then(|()| writer.add_set_data(&paths[1], once, None));
            }
            built.map_err(|e| super::request_error("record the run", &e))?;
            match tokio::time::timeout(super::REQUEST_TIMEOUT, writer.commit()).await {
                Ok(Ok(_)) => return Ok(true),
                Ok(Err(MultiWriteError::OperationFailed { index: 0, .. })) => {
                    tracing::warn!(lock = %lease.name, "the lease was no longer ours at release; the run is not recorded");
                    return Ok(false);
                }
                // A history node does not exist yet: make it, and write again.
                Ok(Err(MultiWriteError::OperationFailed { index, .. })) => {
                    let path = &paths[index - 1];
                    let options = CreateMode::Persistent.with_acls(self.target.acls());
                    match timed("create a history node", client.create(path, b"", &options)).await {
                        Ok(_) => {}
                        Err(Missing::Gone) => {}
                        Err(Missing::Failed(err)) => return Err(err),
                    }
                }
                Ok(Err(MultiWriteError::RequestFailed { source })) => {
                    return Err(super::request_error("record the run", &source))
                }
                Err(_) => {
                    return Err(BackendError::Unavailable(
                        "record the run: ZooKeeper did not answer".into(),
                    ))
                }
            }
        }
        Err(BackendError::Unavailable(
            "record the run: the history nodes cannot be created".into(),
        ))
    }

    pub(super) async fn last_run_of(
        &self,
        client: &Client,
        name: &LockName,
    ) -> Result<Option<LastRun>> {
        match timed("read the last run", client.get_data(&self.last_path(name))).await {
            Ok((data, _)) => Ok(serde_json::from_slice(&data).ok()),
            Err(Missing::Gone) => Ok(None),
            Err(Missing::Failed(err)) => Err(err),
        }
    }
}

fn marker_json(run: &LastRun, window: Duration) -> Result<Vec<u8>> {
    let marker = Marker {
        run: run.clone(),
        window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
    };
    serde_json::to_vec(&marker).map_err(|e| BackendError::Config(format!("run history: {e}")))
}

/// The marker a node's data stands for. A marker elect cannot read still says that the job ran,
/// for as long as any window could last.
fn marker_of(name: &LockName, data: &[u8]) -> Marker {
    serde_json::from_slice(data).unwrap_or_else(|_| Marker {
        run: LastRun::unreadable_marker(name),
        window_ms: u64::MAX,
    })
}

/// The lock whose history node `child` (a child of the base) is.
pub(super) fn lock_of_history_node(child: &str) -> Option<LockName> {
    LockName::new(child.strip_suffix(LAST_SUFFIX)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_nodes_name_their_lock() {
        assert_eq!(
            lock_of_history_node("billing.last").map(|n| n.to_string()),
            Some("billing".into())
        );
        assert_eq!(lock_of_history_node("billing.once"), None);
        assert_eq!(lock_of_history_node("billing"), None);
    }

    #[test]
    fn a_marker_round_trips_and_an_unreadable_one_counts() {
        let name = LockName::new("billing").unwrap();
        let run = LastRun {
            holder: "web-1:1".into(),
            host: "web-1".into(),
            pid: 1,
            token: FencingToken(7),
            started_at: std::time::UNIX_EPOCH,
            finished_at: std::time::UNIX_EPOCH,
            duration: Duration::ZERO,
            end: RunEnd::Unfinished,
        };
        let data = marker_json(&run, Duration::from_secs(60)).unwrap();
        let back = marker_of(&name, &data);
        assert_eq!(back.run, run);
        assert_eq!(back.window_ms, 60_000);
        assert_eq!(marker_of(&name, b"junk").window_ms, u64::MAX);
    }
}
