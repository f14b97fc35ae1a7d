//! Taking one place of a lock: open its lock file read-only, flock it, make sure that the path
//! still names it and that no process holds an earlier file of the name, then open the writer
//! and write the holder record.

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::watch::Watch;
use super::{lockfile, names, proclocks, record, stale, still_named, FileBackend, Held};
use crate::backend::{AcquireRequest, BackendError, Result, WaitMode};
use crate::clock::BootTime;
use crate::lease::{HolderInfo, Lease};

/// How often a contender that waits for the holder of an earlier, deleted or replaced lock file
/// looks again: that holder is already stopping its job (it looks at its path every 100 ms), so the wait is
/// about one job stop.
const EARLIER_POLL: Duration = Duration::from_millis(50);

/// What one try at a place found.
pub(super) enum Take {
    Taken(Lease),
    /// Busy: the holder when it is known already (the holder of an earlier file of the name).
    Busy(Option<HolderInfo>),
}

/// How often a waiter looks whether the path still names the file it waits on, when no inotify
/// event came (no watch could be made, or an event was lost).
const WAITER_RECHECK: Duration = Duration::from_secs(1);

/// Whether `file`, locked at the real path `real`, is the very file its last holder took at that
/// path, with nothing renamed, linked or unlinked since: its holder record names this path and
/// this file (device and inode), it has one link, and its status has not changed since its last
/// write (a rename or a link sets the change time alone; a write sets it and the modification
/// time to one value). Every holder since the last look for holders of an earlier file of the
/// name then held this same file, one after the other, so that look is skipped: it reads
/// `/proc/locks`, which waits for an RCU grace period and was most of the time of a run. A file
/// that cannot vouch for itself (new, copied, replaced, moved back into place, or written by an
/// older elect) gets the look.
fn vouches(file: &File, real: &Path) -> bool {
    let Ok(meta) = file.metadata() else {
        return false;
    };
    let taken_as = record::read_taken_as(file);
    taken_as.lock_inode == Some([meta.dev(), meta.ino()])
        && taken_as.lock_file.as_deref() == real.to_str()
        && meta.nlink() == 1
        && (meta.ctime(), meta.ctime_nsec()) == (meta.mtime(), meta.mtime_nsec())
}

/// What one flock of a lock file came to.
enum Flocked {
    Locked(File),
    /// Busy, and we must not wait.
    Busy,
    /// While we waited, the path stopped naming the file: deleted, replaced or moved.
    Replaced,
}

impl FileBackend {
    /// Opens and locks the lock file at `path`, in the way `wait` asks.
    async fn lock(&self, path: &Path, wait: WaitMode) -> Result<Flocked> {
        let file = lockfile::open_for_locking(path, self.sharing)?;
        match Self::flock(file, path, wait).await {
            // NFSv4 emulates flock with a byte-range lock, which wants a descriptor open for
            // writing: there, and only there, the job inherits one.
            Err(e) if e.raw_os_error() == Some(nix::libc::EBADF) => {
                tracing::warn!(
                    "{} cannot be locked through a read-only descriptor on this filesystem; the \
                     job inherits it open for writing",
                    path.display()
                );
                let file = lockfile::open_for_writing(path, self.sharing)?;
                Self::flock(file, path, wait)
                    .await
                    .map_err(|e| BackendError::unavailable("flock", e))
            }
            other => other.map_err(|e| BackendError::unavailable("flock", e)),
        }
    }

    async fn flock(file: File, path: &Path, wait: WaitMode) -> std::io::Result<Flocked> {
        match wait {
            WaitMode::NoWait => match file.try_lock() {
                Ok(()) => Ok(Flocked::Locked(file)),
                Err(fs::TryLockError::WouldBlock) => Ok(Flocked::Busy),
                Err(fs::TryLockError::Error(e)) => Err(e),
            },
            WaitMode::Wait => {
                // A waiter blocked on a file that was deleted or replaced would wait until that
                // file's last holder goes, while newcomers lock the new file at once and win
                // every time: it follows the path instead. The watch is on the file and its
                // directory, so it is made before the file moves to the waiting thread.
                let dir = path.parent().unwrap_or(Path::new("."));
                let watch = Watch::lock_file(file.as_raw_fd(), dir).ok();
                let held = file.metadata()?;
                // A plain thread rather than tokio's blocking pool: a runtime shutting down waits
                // for its pool, and an abandoned wait must not hold the process. A wait abandoned
                // for a replaced file drops the file, and with it the flock, when it returns.
                let (tx, mut rx) = tokio::sync::oneshot::channel();
                std::thread::Builder::new()
                    .name("flock-wait".into())
                    .spawn(move || {
                        let _ = tx.send(file.lock().map(|()| file));
                    })?;
                loop {
                    tokio::select! {
                        locked = &mut rx => {
                            return match locked {
                                Ok(locked) => locked.map(Flocked::Locked),
                                Err(_) => Err(std::io::Error::other("the waiting thread died")),
                            };
                        }
                        () = changed(watch.as_ref()) => {
                            if !names(path, &held) {
                                return Ok(Flocked::Replaced);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Locks place `slot` and writes our record.
    pub(super) async fn take(
        &mut self,
        req: &AcquireRequest,
        slot: u32,
        wait: WaitMode,
    ) -> Result<Take> {
        let path = self.place_path(&req.name, slot);
        loop {
            let file = match self.lock(&path, wait).await? {
                Flocked::Locked(file) => file,
                Flocked::Busy => return Ok(Take::Busy(None)),
                Flocked::Replaced => continue,
            };
            // The path may have been replaced between open and lock: then we hold a lock on a
            // file nobody else will look at, and must start over.
            if !still_named(&file, &path) {
                continue;
            }
            if !vouches(&file, &self.real_path(&path)) {
                match self.outlive_earlier(&file, &path, wait).await {
                    Earlier::Gone => {}
                    Earlier::Holds(holder) => return Ok(Take::Busy(Some(holder))),
                    Earlier::Replaced => continue,
                }
            }
            let Some(writer) = lockfile::open_writer(&path, &file)? else {
                continue;
            };
            let sent_at = BootTime::now();
            let previous = record::read_holder(&file, &path)?;
            let mut holder = req.holder.clone();
            holder.acquired_at = std::time::SystemTime::now();
            let next = record::token_after(previous.as_ref(), &path)?;
            holder.token = if req.holders > 1 {
                self.next_shared_token(&req.name, next)?
            } else {
                next.unwrap_or_else(record::first_token)
            };
            record::write_holder(&writer, &path, &self.real_path(&path), &holder)?;
            self.held = Some(Held {
                writer,
                flock: proclocks::OwnFlock::of(&file),
            });
            return Ok(Take::Taken(Lease {
                name: req.name.clone(),
                holder,
                sent_at,
                secret: String::new(),
                kernel_lock: Some(Arc::new(file)),
                slot,
            }));
        }
    }

    /// With the flock of `file` taken: waits (with `--wait`) until no process holds the flock of
    /// an earlier file at `path`, or reports that one does.
    async fn outlive_earlier(&self, file: &File, path: &Path, wait: WaitMode) -> Earlier {
        let real = self.real_path(path);
        let mut told = false;
        loop {
            let Some(earlier) = stale::earlier_holder(file, &real) else {
                return Earlier::Gone;
            };
            if wait == WaitMode::NoWait {
                return Earlier::Holds(earlier.describe(path));
            }
            if !told {
                tracing::info!(
                    "waiting for pid {}, which still holds an earlier, deleted or replaced (or \
                     renamed) {}",
                    earlier.pid,
                    path.display()
                );
                told = true;
            }
            tokio::time::sleep(EARLIER_POLL).await;
            if !still_named(file, path) {
                return Earlier::Replaced;
            }
        }
    }
}

/// Returns after an event of the waiter's watch, or after [`WAITER_RECHECK`].
async fn changed(watch: Option<&Watch>) {
    match watch {
        Some(watch) if watch.changed(WAITER_RECHECK).await.is_ok() => {}
        _ => tokio::time::sleep(WAITER_RECHECK).await,
    }
}

/// What a newcomer found about holders of earlier files of its lock path.
enum Earlier {
    /// None is left (or none can be seen).
    Gone,
    /// This one still holds its flock, and we must not wait.
    Holds(HolderInfo),
    /// While we waited, our own file was replaced: start over.
    Replaced,
}
