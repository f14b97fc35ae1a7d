//! What `status` shows: the locks under the prefix, their holders (several with `--holders`),
//! ttls and waiters.

use std::time::Duration;

use etcd_client::{GetOptions, KeyValue};

use super::{queue, timed, token_of, EtcdBackend};
use crate::backend::Result;
use crate::lease::{HolderInfo, Holding, LockName, LockState};

impl EtcdBackend {
    pub(super) async fn list_here(&mut self) -> Result<Vec<LockState>> {
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
            // Only `<name>/<lease>` keys are queue members; `<name>.last` keeps a free lock in
            // the list; other keys under the prefix are not elect's business.
            let Some(slash) = rest.iter().position(|&b| b == b'/') else {
                if let Some(name) = super::history::lock_of_history_key(rest) {
                    queues.entry(name).or_default();
                }
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

    /// A lock's state from its queue members, owner first: the first [`queue::holding`] of them
    /// hold it (one, unless they took it with `--holders`), the others wait.
    pub(super) async fn state_of(
        &mut self,
        name: &LockName,
        members: &[KeyValue],
    ) -> Result<LockState> {
        let last_run = self.last_run_of(name).await?;
        let holding = queue::holding(members);
        let mut holdings = Vec::with_capacity(holding);
        for kv in &members[..holding] {
            holdings.push(Holding {
                holder: holder_of(kv).unwrap_or_else(|| unknown_holder(kv)),
                expires_in: self.expires_in(kv).await?,
            });
        }
        let state = LockState::held_by(name.clone(), holdings, last_run);
        // Waiters are counted only behind a holder.
        Ok(LockState {
            waiters: state
                .holder
                .is_some()
                .then_some((members.len() - holding) as u64),
            ..state
        })
    }

    /// The remaining ttl of a queue key's lease; `None` for a key without one.
    async fn expires_in(&mut self, kv: &KeyValue) -> Result<Option<Duration>> {
        Ok(match kv.lease() {
            0 => None,
            lease => {
                let ttl = timed(
                    "read the holder's lease",
                    self.client.lease_time_to_live(lease, None),
                )
                .await?;
                u64::try_from(ttl.ttl()).ok().map(Duration::from_secs)
            }
        })
    }
}

/// The holder metadata of a queue key, with the token it really has. `None` for a key that
/// another client (`etcdctl lock`) wrote.
pub(super) fn holder_of(kv: &KeyValue) -> Option<HolderInfo> {
    let mut holder: HolderInfo = serde_json::from_slice(kv.value()).ok()?;
    holder.token = token_of(kv.create_revision());
    Some(holder)
}

/// What `status` can say about a holder that left no metadata (an `etcdctl lock`). A lock state
/// without a holder means free, so one is made up: its acquired-at is the epoch, as nobody knows.
pub(super) fn unknown_holder(kv: &KeyValue) -> HolderInfo {
    // The key names the lease, which `etcdctl lease timetolive` can tell more about.
    let id = format!("unknown ({})", String::from_utf8_lossy(kv.key()));
    HolderInfo::unknown(id, token_of(kv.create_revision()))
}
