//! Several holders (`--holders N`): one lock file per place.
//!
//! - Place 0 is `<name>.lock`; place K >= 1 is `<name>.lock.K` (no lock name ends in `.lock.K`,
//!   and `status` lists only `*.lock`). A contender tries the places in order with a
//!   non-blocking flock and takes the first that is free.
//! - Tokens come from one counter for all places, `<name>.lock.meta`, read and bumped under a
//!   short flock of its own (never held while a job runs), so that each holder has its own token
//!   and tokens grow across places. The history record stays in `<name>.lock` and is written
//!   under the same short lock.
//! - A waiter cannot block in flock(2) on N files at once, so it watches the directory with
//!   inotify for `IN_CLOSE_WRITE`: a holder unlocks its place, then closes its writer (the one
//!   descriptor of a lock file open for writing). The waiter then tries every place again. Every
//!   waiter on the machine wakes and tries (a few system calls each), one wins. A contender's
//!   tries open lock files read-only, so they wake nobody (`IN_CLOSE_NOWRITE` is not watched)
//!   and a waiter does not wake itself. A re-check every second covers an event lost to a queue
//!   overflow, a holder whose elect was killed (its job's last close is read-only), and the
//!   holder of an earlier, deleted file of a place (whose close the directory does not report).

use std::fs::File;
use std::path::PathBuf;
use std::time::Duration;

use super::watch::Watch;
use super::{lockfile, record, FileBackend, Take};
use crate::backend::{AcquireRequest, BackendError, Result, WaitMode};
use crate::lease::{Acquire, FencingToken, History, HolderInfo, LockName};

/// The counter of a lock with several places: `<name>.lock.meta`.
const META_SUFFIX: &str = ".lock.meta";
/// How often a waiter for one of several places re-checks without an inotify event.
const PLACES_RECHECK: Duration = Duration::from_secs(1);
/// How long a contender that finds a lock busy waits for the new holder's record (see
/// `current_holder`). A holder writes it after its checks of `/proc/locks`, within a millisecond
/// of taking the flock on an idle host; a loaded one can deschedule it for far longer, and the
/// wait only ever costs a contender that lost the race.
const RECORD_WAIT: Duration = Duration::from_millis(500);

impl FileBackend {
    /// `--holders N` with N > 1: the first free place, waiting (on inotify) if asked.
    pub(super) async fn acquire_place(
        &mut self,
        req: &AcquireRequest,
        wait: WaitMode,
    ) -> Result<Acquire> {
        // Watching starts before the first round, so that a place freed during it is not missed.
        let watch = match wait {
            WaitMode::NoWait => None,
            WaitMode::Wait => Some(Watch::directory(&self.dir)?),
        };
        loop {
            let mut earlier = None;
            for slot in 0..req.holders {
                match self.take(req, slot, WaitMode::NoWait).await? {
                    Take::Taken(lease) => return Ok(Acquire::Acquired(lease)),
                    Take::Busy(holder) => earlier = earlier.or(holder),
                }
            }
            match &watch {
                None if earlier.is_some() => return Ok(Acquire::Held(earlier)),
                None => return Ok(Acquire::Held(self.current_holder(&req.name, 0).await)),
                Some(watch) => watch.changed(PLACES_RECHECK).await?,
            }
        }
    }

    /// The holder of busy place `slot`, if its record can be read. A holder writes its record
    /// just after it takes the flock, so a contender that finds the place locked can come in
    /// between and read no record, or the record of the holder before, whose run the history
    /// already shows ended: then it looks again, for at most [`RECORD_WAIT`].
    pub(super) async fn current_holder(&self, name: &LockName, slot: u32) -> Option<HolderInfo> {
        let path = self.place_path(name, slot);
        let file = lockfile::open_existing(&path, self.sharing).ok()??;
        let give_up = tokio::time::Instant::now() + RECORD_WAIT;
        loop {
            let holder = record::read_holder(&file, &path).ok().flatten();
            let ended = |h: &HolderInfo| {
                record::read_history(&file)
                    .last_run
                    .is_some_and(|run| run.token == h.token)
            };
            match holder {
                Some(h) if !ended(&h) => return Some(h),
                other if tokio::time::Instant::now() >= give_up => return other,
                _ => tokio::time::sleep(Duration::from_millis(2)).await,
            }
        }
    }

    fn meta_path(&self, name: &LockName) -> PathBuf {
        self.dir.join(format!("{name}{META_SUFFIX}"))
    }

    /// Opens and locks the counter file of a lock with several places, for a short update.
    fn lock_meta(&self, name: &LockName) -> Result<File> {
        let path = self.meta_path(name);
        let file = lockfile::open_for_writing(&path, self.sharing)?;
        file.lock()
            .map_err(|e| BackendError::unavailable(format_args!("flock {}", path.display()), e))?;
        Ok(file)
    }

    /// The next token of a lock with several places, from its shared counter, and never below
    /// `at_least` (the place's own previous token plus one).
    pub(super) fn next_shared_token(
        &self,
        name: &LockName,
        at_least: Option<FencingToken>,
    ) -> Result<FencingToken> {
        let meta = self.lock_meta(name)?;
        // Dropping the file afterwards releases the short lock.
        record::bump_counter(&meta, &self.meta_path(name), at_least)
    }

    /// Records a run of a lock with several places in place 0's file, under the counter's lock:
    /// places end in any order and must not overwrite each other's record half-way.
    pub(super) fn write_shared_history(&self, name: &LockName, history: &History) -> Result<()> {
        let _meta = self.lock_meta(name)?;
        let path = self.path(name);
        let file = lockfile::open_for_writing(&path, self.sharing)?;
        record::write_history(&file, &path, history)
    }
}
