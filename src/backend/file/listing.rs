//! What `status` reads: the state of one lock, and every lock in the directory.
//!
//! Nothing here takes a lock or blocks: files are opened with `O_NONBLOCK | O_NOFOLLOW`, and
//! whether a file is locked comes from `/proc/locks`. One bad entry (a FIFO, a symlink, a file
//! that someone else owns, garbage) never fails the whole listing: it is skipped with a warning
//! naming it, and the other locks are still shown. Asked about that one lock alone, status
//! fails with the same reason (exit 69).

use std::fs;
use std::os::unix::fs::MetadataExt;

use super::{lockfile, proclocks, record, FileBackend, SUFFIX};
use crate::backend::{BackendError, Result};
use crate::lease::{Holding, LockName, LockState};

impl FileBackend {
    pub(super) fn inspect_one(&self, name: &LockName) -> Result<LockState> {
        let path = self.path(name);
        let Some(file) = lockfile::open_existing(&path, self.sharing)? else {
            return Ok(LockState::free(name.clone()));
        };
        let meta = file
            .metadata()
            .map_err(|e| BackendError::unavailable("stat", e))?;
        let locks =
            proclocks::read().map_err(|e| BackendError::unavailable("read /proc/locks", e))?;
        // Read whether held or not: a file that is not an elect lock file is reported as such.
        let holder = record::read_holder(&file, &path)?;
        let last_run = record::read_history(&file).last_run;
        let devices = proclocks::Devices::of(&file, &meta);
        if !proclocks::is_flocked(&locks, &devices, meta.ino()) {
            return Ok(LockState {
                last_run,
                ..LockState::free(name.clone())
            });
        }
        let mut state = LockState {
            holder,
            last_run,
            ..LockState::free(name.clone())
        };
        state.co_holders = self.other_places(name, &locks)?;
        if state.holder.is_none() && !state.co_holders.is_empty() {
            state.holder = Some(state.co_holders.remove(0).holder);
        }
        Ok(state)
    }

    pub(super) fn list_all(&self) -> Result<Vec<LockState>> {
        let entries = fs::read_dir(&self.dir).map_err(|e| {
            BackendError::unavailable(format_args!("read {}", self.dir.display()), e)
        })?;
        let mut names: Vec<LockName> = entries
            .filter_map(|entry| {
                let name = entry.ok()?.file_name().into_string().ok()?;
                LockName::new(name.strip_suffix(SUFFIX)?).ok()
            })
            .collect();
        names.sort();
        let mut states = Vec::with_capacity(names.len());
        for name in &names {
            match self.inspect_one(name) {
                Ok(state) => states.push(state),
                Err(e) => tracing::warn!("skipping lock {name} in the listing: {e}"),
            }
        }
        Ok(states)
    }

    /// The holders of places 1, 2, ... of `name`, in order, from the files that are locked.
    fn other_places(&self, name: &LockName, proc_locks: &str) -> Result<Vec<Holding>> {
        let prefix = format!("{name}{SUFFIX}.");
        let entries = fs::read_dir(&self.dir).map_err(|e| {
            BackendError::unavailable(format_args!("read {}", self.dir.display()), e)
        })?;
        let mut slots: Vec<u32> = entries
            .filter_map(|entry| {
                let file = entry.ok()?.file_name().into_string().ok()?;
                let k = file.strip_prefix(&prefix)?;
                k.bytes()
                    .all(|b| b.is_ascii_digit())
                    .then(|| k.parse().ok())?
            })
            .filter(|&k| k > 0)
            .collect();
        slots.sort_unstable();
        let mut held = Vec::new();
        for slot in slots {
            let path = self.place_path(name, slot);
            let file = match lockfile::open_existing(&path, self.sharing) {
                Ok(Some(file)) => file,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!("skipping place {slot} of lock {name}: {e}");
                    continue;
                }
            };
            let Ok(meta) = file.metadata() else { continue };
            let devices = proclocks::Devices::of(&file, &meta);
            if !proclocks::is_flocked(proc_locks, &devices, meta.ino()) {
                continue;
            }
            match record::read_holder(&file, &path) {
                Ok(Some(holder)) => held.push(Holding {
                    holder,
                    expires_in: None,
                }),
                Ok(None) => {}
                Err(e) => tracing::warn!("skipping place {slot} of lock {name}: {e}"),
            }
        }
        Ok(held)
    }
}
