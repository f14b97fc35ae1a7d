//! One contender's node: joining the queue, reading the contenders ahead, and the holder
//! metadata written when the lock is taken.

use std::time::SystemTime;

use zookeeper_client::{Client, CreateMode};

use super::queue::{self, NODE_NAME};
use super::status::holder_of;
use super::{persistent, request, timed, token_of, Missing, ZkBackend};
use crate::backend::{AcquireRequest, BackendError, Result};
use crate::clock::BootTime;
use crate::lease::{HolderInfo, Lease};

impl ZkBackend {
    /// Creates my node in the lock's queue (and the lock's node first, if missing); returns its
    /// name and creation zxid.
    pub(super) async fn join(
        &self,
        client: &Client,
        lock: &str,
        me: &HolderInfo,
    ) -> Result<(String, i64)> {
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

    /// After a wait: the metadata says when the lock was taken; that write is the lease's start.
    pub(super) async fn taken_after_wait(
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
    pub(super) async fn places_of(
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
    pub(super) async fn holder_at(
        &self,
        client: &Client,
        lock: &str,
        node: &str,
    ) -> Option<HolderInfo> {
        let path = format!("{lock}/{node}");
        let (data, stat) = timed("read the holder", client.get_data(&path))
            .await
            .ok()?;
        holder_of(&data, &stat)
    }
}

/// The lease of a lock just taken; its token is the node's creation zxid, its secret the node's
/// name.
pub(super) fn lease(
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
