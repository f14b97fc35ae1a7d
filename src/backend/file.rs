//! The file backend: one lock file per lock name, locked with flock(2).
//!
//! # How it works
//! - The directory is chosen and checked in [`dir`]: by default `/run/lock/elect` for root and
//!   `/run/lock/elect-UID` for anyone else, never a fallback; a lock file is trusted only as
//!   [`lockfile`] says (regular, one link, owned by us or root, or by the group of a directory
//!   shared on purpose).
//! - `<dir>/<name>.lock` is opened with `O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK` and never truncated
//!   or deleted: deleting a lock file would let two processes lock two different files under one
//!   name.
//! - The lease is an exclusive flock on the open file. The kernel releases it when every file
//!   descriptor of that open file is closed; elect hands one to its watchdog and the job inherits
//!   one, so the lock outlives a killed elect until the last process of the job is gone. It
//!   cannot expire, so there is no deadline to enforce ([`Expiry::HeldByProcess`]).
//! - The flocked file is open read-only, so the job (and whatever user it drops to) cannot
//!   rewrite or truncate the record through it. Records are written through a second, read-write
//!   descriptor of the same file that elect alone holds, close-on-exec ([`Held`]). What the job
//!   can still do is what flock(1) allows: `flock -u` on its descriptor releases the lock for
//!   everyone, since the description is shared. Each renew checks in the file's
//!   `/proc/self/fdinfo` that the flock is still this process's, and the lease is lost when it
//!   is not.
//! - After locking ([`take`]), elect checks that the path still names the file it locked (someone may have
//!   replaced it in between), that no process still holds the flock of an earlier, deleted or
//!   replaced file of the same name ([`stale`]), and writes the holder record ([`record`]): the
//!   holder metadata and the fencing token, the previous record's token plus one.
//! - A holder looks at its path every 100 ms: when the path stops naming the locked file
//!   (deleted, replaced, moved), the lease is lost then, not at the next renew. (Not inotify:
//!   closing an inotify instance waits for a kernel grace period, 5 to 20 ms at the end of every
//!   run; see [`watch`].)
//! - A release writes the history record while the lock is still held: the last run, and the
//!   `--once-per` marker's end as wall-clock milliseconds (this machine's clock: every holder of
//!   a file lock runs on it).
//! - `status` ([`listing`]) learns whether a file is locked from `/proc/locks`, never by taking
//!   the lock itself (a probing status would make a contender see the lock as busy).
//! - Waiting is a blocking flock(2) on a thread: the kernel wakes the waiter when the holder's
//!   lock goes, with no polling. The waiter also watches its file and directory (a re-check every
//!   second as a backstop): when the path stops naming the file it waits on, it waits on the file
//!   the path names now, instead of on one that only an old holder still has.
//!
//! # Several holders (`--holders N`)
//! See [`places`]: place K >= 1 is `<name>.lock.K`, tokens come from `<name>.lock.meta`.

mod dir;
mod listing;
mod lockfile;
mod places;
mod proclocks;
mod record;
mod stale;
mod take;
pub(crate) mod walk;
mod watch;

use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

pub use self::dir::ROOT_DIR;
use self::dir::{LockDir, Sharing};
use self::take::Take;
use super::{
    AcquireRequest, Backend, BackendError, BackendUrl, Expiry, ForcedRelease, Result, WaitMode,
};
use crate::lease::{Acquire, FencingToken, History, LastRun, Lease, LockName, LockState, Renewal};

const SUFFIX: &str = ".lock";

/// How often a holder looks whether its path still names the file it locked and its flock is
/// still its own. Two `stat`s and one small read of `/proc`: about 20 µs of CPU. A newcomer never
/// relies on it (it waits for the holder of an earlier file itself, see [`stale`]); it bounds how
/// long a job runs on a lock that is no longer its own.
const HOLDER_LOOK: std::time::Duration = std::time::Duration::from_millis(100);

#[derive(Debug)]
pub struct FileBackend {
    dir: PathBuf,
    /// The directory with every symlink resolved: how `/proc/PID/fd` names the lock files in it.
    real_dir: PathBuf,
    /// Which lock files in the directory can be trusted.
    sharing: Sharing,
    describe: String,
    /// The lock file this process holds, from a successful acquire until the release.
    held: Option<Held>,
}

/// What a holder keeps besides the lease's read-only, flocked file.
#[derive(Debug)]
struct Held {
    /// The same file open for writing, close-on-exec: the only descriptor records are written
    /// through. The job inherits the flocked description, which is read-only.
    writer: File,
    /// Our flock as the file's fdinfo showed it once taken: each renew checks that it is still
    /// there, since any process that inherited the descriptor can release it (`flock -u`).
    /// `None` where fdinfo does not show it.
    flock: Option<proclocks::OwnFlock>,
}

impl FileBackend {
    /// `$ELECT_LOCK_DIR`, else the default directory of the effective uid.
    pub fn open_default() -> Result<Self> {
        if let Some(dir) = std::env::var_os("ELECT_LOCK_DIR").filter(|d| !d.is_empty()) {
            return Self::with(dir::explicit_dir(Path::new(&dir))?);
        }
        Self::with(dir::default_dir()?)
    }

    pub fn open(url: &BackendUrl) -> Result<Self> {
        if url.path.is_empty() {
            return Err(BackendError::Config(
                "a file URL needs a directory: file:///path/to/dir".into(),
            ));
        }
        Self::with(dir::explicit_dir(Path::new(&url.path))?)
    }

    fn with(dir: LockDir) -> Result<Self> {
        warn_if_network_fs(&dir.path);
        let real_dir = fs::canonicalize(&dir.path).map_err(|e| {
            BackendError::unavailable(format_args!("lock directory {}", dir.path.display()), e)
        })?;
        Ok(Self {
            describe: format!("file://{}", dir.path.display()),
            dir: dir.path,
            real_dir,
            sharing: dir.sharing,
            held: None,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, name: &LockName) -> PathBuf {
        self.dir.join(format!("{name}{SUFFIX}"))
    }

    /// The lock file of place `slot`: `<name>.lock`, `<name>.lock.1`, ...
    fn place_path(&self, name: &LockName, slot: u32) -> PathBuf {
        match slot {
            0 => self.path(name),
            k => self.dir.join(format!("{name}{SUFFIX}.{k}")),
        }
    }
}

impl Backend for FileBackend {
    fn describe(&self) -> &str {
        &self.describe
    }

    fn expiry(&self) -> Expiry {
        Expiry::HeldByProcess
    }

    async fn acquire(&mut self, req: &AcquireRequest, wait: WaitMode) -> Result<Acquire> {
        if req.holders > 1 {
            return self.acquire_place(req, wait).await;
        }
        match self.take(req, 0, wait).await? {
            Take::Taken(lease) => Ok(Acquire::Acquired(lease)),
            Take::Busy(Some(holder)) => Ok(Acquire::Held(Some(holder))),
            Take::Busy(None) => Ok(Acquire::Held(self.current_holder(&req.name, 0).await)),
        }
    }

    async fn renew(&mut self, lease: &Lease) -> Result<Renewal> {
        Ok(match self.replaced(lease) {
            None => Renewal::Renewed,
            Some(why) => Renewal::Lost(why),
        })
    }

    async fn lost(&mut self, lease: &Lease) -> String {
        loop {
            if let Some(why) = self.replaced(lease) {
                return why;
            }
            tokio::time::sleep(HOLDER_LOOK).await;
        }
    }

    async fn release(&mut self, lease: &Lease, history: Option<&History>) -> Result<()> {
        let held = self.held.take();
        if let Some(file) = &lease.kernel_lock {
            let path = self.place_path(&lease.name, lease.slot);
            // Written while the lock is held, so that the next holder reads it whole; a lease
            // whose file was replaced is lost and records nothing.
            if let Some(history) = history.filter(|_| still_named(file, &path)) {
                let written = if lease.holder.places > 1 {
                    self.write_shared_history(&lease.name, history)
                } else {
                    match &held {
                        Some(held) => record::write_history(&held.writer, &path, history),
                        None => Err(BackendError::Unavailable(
                            "the lock file is not open for writing".into(),
                        )),
                    }
                };
                if let Err(e) = written {
                    tracing::warn!(lock = %lease.name, "cannot record the run ({e})");
                }
            }
            file.unlock()
                .map_err(|e| BackendError::unavailable("unlock", e))?;
        }
        // The writer closes after the unlock: its close (IN_CLOSE_WRITE) is what wakes a
        // waiter for one of several places.
        drop(held);
        Ok(())
    }

    async fn fresh_run(&mut self, name: &LockName) -> Result<Option<LastRun>> {
        let Some(file) = lockfile::open_existing(&self.path(name), self.sharing)? else {
            return Ok(None);
        };
        let record = record::read_history(&file);
        let now_ms = record::millis_since_epoch(std::time::SystemTime::now());
        Ok(match record.once_until_ms {
            Some(until) if until > now_ms => record.last_run,
            _ => None,
        })
    }

    async fn inspect(&mut self, name: &LockName) -> Result<LockState> {
        self.inspect_one(name)
    }

    /// A kernel lock cannot be taken from a live process, and a dead holder's is already gone.
    async fn force_release(
        &mut self,
        name: &LockName,
        token: FencingToken,
    ) -> Result<ForcedRelease> {
        let state = self.inspect_one(name)?;
        let holder = std::iter::once(state.holder.clone())
            .flatten()
            .chain(state.co_holders.iter().map(|c| c.holder.clone()))
            .find(|h| h.token == token)
            .or(state.holder);
        Ok(match holder {
            None => ForcedRelease::NotHeld,
            Some(holder) if holder.token == token => ForcedRelease::Refused(format!(
                "a file lock is held by the kernel for its holder's processes (pid {} on {}) and \
                 is freed when they exit; stop them instead",
                holder.pid, holder.host
            )),
            Some(holder) => ForcedRelease::Mismatch(Some(holder)),
        })
    }

    async fn list(&mut self) -> Result<Vec<LockState>> {
        self.list_all()
    }
}

impl FileBackend {
    /// How `/proc/PID/fd` names the lock file at `path` in our directory.
    fn real_path(&self, path: &Path) -> PathBuf {
        self.real_dir.join(path.file_name().unwrap_or_default())
    }

    /// Why `lease` is lost, if its path no longer names the file it locked, or its flock is no
    /// longer ours.
    fn replaced(&self, lease: &Lease) -> Option<String> {
        let file = lease
            .kernel_lock
            .as_ref()
            .expect("a file lease has its file");
        let path = self.place_path(&lease.name, lease.slot);
        if !still_named(file, &path) {
            return Some(format!(
                "lock file {} was deleted or replaced",
                path.display()
            ));
        }
        let flock = self.held.as_ref().and_then(|h| h.flock.as_ref());
        flock.filter(|f| !f.is_held_on(file)).map(|_| {
            format!(
                "the lock on {} was released while held: a process that inherited its \
                 descriptor unlocked or changed it (flock -u)",
                path.display()
            )
        })
    }
}

/// Whether `path` still names the open `file` (same device and inode).
fn still_named(file: &File, path: &Path) -> bool {
    file.metadata().is_ok_and(|held| names(path, &held))
}

/// Whether `path` names the file whose metadata is `held`.
fn names(path: &Path, held: &fs::Metadata) -> bool {
    fs::symlink_metadata(path)
        .is_ok_and(|named| named.dev() == held.dev() && named.ino() == held.ino())
}

fn warn_if_network_fs(dir: &Path) {
    const NFS: i64 = 0x6969;
    const SMB: i64 = 0x517b;
    const CIFS: i64 = 0xff53_4d42;
    const SMB2: i64 = 0xfe53_4d42;
    const FUSE: i64 = 0x6573_5546;
    if let Ok(stat) = nix::sys::statfs::statfs(dir) {
        let kind = stat.filesystem_type().0;
        if [NFS, SMB, CIFS, SMB2, FUSE].contains(&kind) {
            tracing::warn!(
                dir = %dir.display(),
                "the lock directory is on a network or FUSE filesystem: flock there may not \
                 exclude processes on other machines (see the README)"
            );
        }
    }
}
