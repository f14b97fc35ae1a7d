//! What `status` shows (the locks under the base, their holders, several with `--holders`, and
//! waiters), and an operator's forced release.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use zookeeper_client::{Client, Stat};

use super::queue::{self, Contender};
use super::{history, timed, token_of, Missing, ZkBackend};
use crate::backend::{ForcedRelease, Result};
use crate::lease::{FencingToken, HolderInfo, Holding, LockName, LockState};

/// A contender's node as read: its name, metadata and stat.
struct Member {
    name: String,
    data: Vec<u8>,
    stat: Stat,
}

impl Member {
    fn places(&self) -> u32 {
        serde_json::from_slice::<HolderInfo>(&self.data).map_or(1, |h| h.places.max(1))
    }

    fn holder(&self) -> HolderInfo {
        holder_of(&self.data, &self.stat).unwrap_or_else(|| unknown_holder(self))
    }
}

impl ZkBackend {
    pub(super) async fn list_here(&self, client: &Client) -> Result<Vec<LockState>> {
        let children = match timed("list the locks", client.list_children(self.base())).await {
            Ok(children) => children,
            Err(Missing::Gone) => return Ok(Vec::new()),
            Err(Missing::Failed(err)) => return Err(err),
        };
        // A lock's node, or its `.last` (a free lock with a history); other nodes under the
        // base are not elect's business.
        let names: BTreeSet<LockName> = children
            .iter()
            .filter_map(|child| {
                LockName::new(child)
                    .ok()
                    .filter(|n| !n.as_str().ends_with(history::LAST_SUFFIX))
                    .or_else(|| history::lock_of_history_node(child))
            })
            .collect();
        let mut states = Vec::with_capacity(names.len());
        for name in names {
            states.push(self.state_of(client, &name).await?);
        }
        Ok(states)
    }

    /// The contenders of a lock in order, read up to the last one that holds (the others are
    /// counted as waiters), and how many of them hold.
    async fn members(&self, client: &Client, name: &LockName) -> Result<(Vec<Member>, usize)> {
        let lock = self.lock_path(name);
        let children = match timed("list the lock queue", client.list_children(&lock)).await {
            Ok(children) => children,
            Err(Missing::Gone) => Vec::new(),
            Err(Missing::Failed(err)) => return Err(err),
        };
        let contenders = queue::contenders(&children);
        let mut read = Vec::new();
        let mut places = Vec::new();
        for Contender { name, .. } in contenders {
            let path = format!("{lock}/{name}");
            let (data, stat) = match timed("read a contender", client.get_data(&path)).await {
                Ok(found) => found,
                Err(Missing::Gone) => continue,
                Err(Missing::Failed(err)) => return Err(err),
            };
            let member = Member { name, data, stat };
            places.push(member.places());
            read.push(member);
            if queue::holding(&places) < places.len() {
                break;
            }
        }
        let holding = queue::holding(&places);
        // Every contender behind the holders waits, read or not.
        let total = children
            .iter()
            .filter(|c| queue::contender(c).is_some())
            .count();
        read.truncate(holding);
        Ok((read, total.saturating_sub(holding)))
    }

    pub(super) async fn state_of(&self, client: &Client, name: &LockName) -> Result<LockState> {
        let last_run = self.last_run_of(client, name).await?;
        let (holders, waiters) = self.members(client, name).await?;
        // The session's remaining time is the server's to know; no client can read it.
        let holdings = holders.iter().map(|m| Holding {
            holder: m.holder(),
            expires_in: None,
        });
        let state = LockState::held_by(name.clone(), holdings, last_run);
        // Waiters are counted only behind a holder.
        Ok(LockState {
            waiters: state
                .holder
                .is_some()
                .then(|| u64::try_from(waiters).unwrap_or(u64::MAX)),
            ..state
        })
    }

    /// Deletes the node of the holder whose creation zxid is `token`. Its session stays: a
    /// holder still alive learns at its next renewal that its node is gone. The next in line
    /// gets the lock when the node goes.
    pub(super) async fn force_release_here(
        &self,
        client: &Client,
        name: &LockName,
        token: FencingToken,
    ) -> Result<ForcedRelease> {
        let (holders, _) = self.members(client, name).await?;
        let Some(first) = holders.first() else {
            return Ok(ForcedRelease::NotHeld);
        };
        let Some(owner) = holders.iter().find(|m| token_of(m.stat.czxid) == token) else {
            return Ok(ForcedRelease::Mismatch(Some(first.holder())));
        };
        let path = format!("{}/{}", self.lock_path(name), owner.name);
        match timed("delete the holder's node", client.delete(&path, None)).await {
            // Gone between the read and the delete: released or expired meanwhile.
            Ok(()) | Err(Missing::Gone) => {}
            Err(Missing::Failed(err)) => return Err(err),
        }
        // The operator ended that holder's run: its `--once-per` claim does not count.
        if let Err(err) = self.drop_claim_of(client, name, token).await {
            tracing::warn!(lock = %name, "cannot remove the --once-per marker of the released run ({err})");
        }
        Ok(ForcedRelease::Released)
    }
}

/// elect's metadata in a contender's node, with the token from its stat.
pub(super) fn holder_of(data: &[u8], stat: &Stat) -> Option<HolderInfo> {
    let mut holder: HolderInfo = serde_json::from_slice(data).ok()?;
    holder.token = token_of(stat.czxid);
    Some(holder)
}

/// What `status` can say about a holder that left no metadata (a kazoo `Lock`, whose data is
/// its identifier). A lock state without a holder means free, so one is made up: its
/// acquired-at is the node's creation time, by the ensemble's clock.
fn unknown_holder(member: &Member) -> HolderInfo {
    let identifier = String::from_utf8_lossy(&member.data);
    let id = if identifier.is_empty() {
        format!("unknown ({})", member.name)
    } else {
        format!("unknown ({identifier}, {})", member.name)
    };
    HolderInfo {
        acquired_at: SystemTime::UNIX_EPOCH
            + Duration::from_millis(u64::try_from(member.stat.ctime).unwrap_or(0)),
        ..HolderInfo::unknown(id, token_of(member.stat.czxid))
    }
}
