//! The file backend: one lock file per lock name, locked with flock(2).
//!
//! # How it works
//! - `<dir>/<name>.lock` is opened with `O_NOFOLLOW | O_CLOEXEC` (a symlink planted at the path is
//!   refused, never followed) and never truncated or deleted: deleting a lock file would let two
//!   processes lock two different files under one name.
//! - The lease is an exclusive flock on the open file. The kernel releases it when every file
//!   descriptor of that open file is closed; elect hands one to its watchdog, so the lock outlives
//!   a killed elect until the last process of the job is gone. It cannot expire, so there is no
//!   deadline to enforce ([`Expiry::HeldByProcess`]).
//! - After locking, elect checks that the path still names the file it locked (someone may have
//!   replaced it in between) and writes a fixed-size record at offset 0: the holder metadata and
//!   the fencing token, which is the previous record's token plus one (a new file starts at the
//!   clock's microseconds, so that a deleted and recreated file never repeats a token).
//! - A release writes a second fixed-size record at offset [`RECORD_LEN`], while the lock is
//!   still held: the last run, and the `--once-per` marker's end as wall-clock milliseconds (this
//!   machine's clock: every holder of a file lock runs on it). Keeping the holder record where it
//!   was means an older elect still reads the file; a file without the second record (written
//!   by an older elect) simply has no history.
//! - A renew checks that the path still names the locked file: a holder whose file was deleted or
//!   replaced has lost the lease, since a newcomer can lock the new file.
//! - `status` learns whether a file is locked from `/proc/locks`, never by taking the lock itself
//!   (a probing status would make a contender see the lock as busy).
//! - Waiting is a blocking flock(2) on a thread: the kernel wakes the waiter when the holder's
//!   lock goes, with no polling.
//!
//! # Several holders (`--holders N`)
//! - Place 0 is `<name>.lock` as above; place K >= 1 is `<name>.lock.K` (no lock name ends in
//!   `.lock.K`, and `status` lists only `*.lock`). A contender tries the places in order with a
//!   non-blocking flock and takes the first that is free.
//! - Tokens come from one counter for all places, `<name>.lock.meta`, read and bumped under a
//!   short flock of its own (never held while a job runs), so that each holder has its own token
//!   and tokens grow across places. The history record stays in `<name>.lock` and is written
//!   under the same short lock.
//! - A waiter cannot block in flock(2) on N files at once, so it watches the directory with
//!   inotify: the kernel releases a flock when the holder's last descriptor of the file closes,
//!   which is also when inotify reports `IN_CLOSE_WRITE`; the waiter then tries every place
//!   again. Every waiter on the machine wakes and tries (a few system calls each), one wins. A
//!   re-check every second covers an event lost to a queue overflow.

use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{
    AcquireRequest, Backend, BackendError, BackendUrl, Expiry, ForcedRelease, Result, WaitMode,
};
use crate::clock::BootTime;
use crate::lease::{
    Acquire, FencingToken, History, HolderInfo, Holding, LastRun, Lease, LockName, LockState,
    Renewal,
};

/// The second record of a lock file: what the last release recorded.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct HistoryRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_run: Option<LastRun>,
    /// Wall-clock milliseconds since the epoch until which a `--once-per` marker lives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    once_until_ms: Option<u64>,
}

/// Size of the record at the start of a lock file: written in one `pwrite`, padded with spaces,
/// so that the file never needs truncating.
const RECORD_LEN: usize = 1024;
/// Size of the history record that follows the holder record.
const HISTORY_LEN: usize = 1024;
const SUFFIX: &str = ".lock";
/// The counter of a lock with several places: `<name>.lock.meta`.
const META_SUFFIX: &str = ".lock.meta";
/// How often a waiter for one of several places re-checks without an inotify event.
const PLACES_RECHECK: std::time::Duration = std::time::Duration::from_secs(1);
/// How long a contender that finds a lock busy waits for the new holder's record (see
/// `current_holder`); a holder writes it within microseconds of taking the flock.
const RECORD_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

#[derive(Debug)]
pub struct FileBackend {
    dir: PathBuf,
    describe: String,
}

impl FileBackend {
    /// `$ELECT_LOCK_DIR`, else `/run/lock/elect` where it can be used, else a private directory.
    pub fn open_default() -> Result<Self> {
        if let Some(dir) = std::env::var_os("ELECT_LOCK_DIR").filter(|d| !d.is_empty()) {
            return Self::in_dir(PathBuf::from(dir));
        }
        let shared = Path::new("/run/lock/elect");
        if let Ok(backend) = Self::shared_dir(shared) {
            return Ok(backend);
        }
        Self::private_dir()
    }

    pub fn open(url: &BackendUrl) -> Result<Self> {
        if url.path.is_empty() {
            return Err(BackendError::Config(
                "a file URL needs a directory: file:///path/to/dir".into(),
            ));
        }
        Self::in_dir(PathBuf::from(&url.path))
    }

    fn in_dir(dir: PathBuf) -> Result<Self> {
        if let Err(err) = fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&dir)
        {
            return Err(BackendError::unavailable(
                format_args!("cannot create lock directory {}", dir.display()),
                err,
            ));
        }
        let meta = fs::metadata(&dir).map_err(|e| {
            BackendError::unavailable(format_args!("lock directory {}", dir.display()), e)
        })?;
        if !meta.is_dir() {
            return Err(BackendError::Unavailable(format!(
                "lock directory {} is not a directory",
                dir.display()
            )));
        }
        check_not_open_to_all(&dir, &meta)?;
        warn_if_network_fs(&dir);
        Ok(Self::at(dir))
    }

    /// The machine-wide directory: sticky and world-writable like `/run/lock`, so that every user
    /// locks the same files.
    fn shared_dir(dir: &Path) -> Result<Self> {
        let parent = dir.parent().expect("an absolute path");
        if nix::unistd::access(parent, nix::unistd::AccessFlags::W_OK).is_err() {
            return Err(BackendError::Unavailable("not writable".into()));
        }
        match fs::DirBuilder::new().mode(0o1777).create(dir) {
            Ok(()) => {
                // The umask trims the mode given to mkdir.
                let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o1777));
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => return Err(BackendError::unavailable("create", e)),
        }
        let meta = fs::symlink_metadata(dir).map_err(|e| BackendError::unavailable("stat", e))?;
        let me = nix::unistd::geteuid().as_raw();
        if !meta.is_dir() || (meta.uid() != 0 && meta.uid() != me) {
            return Err(BackendError::Unavailable("not a trusted directory".into()));
        }
        check_not_open_to_all(dir, &meta)?;
        if nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK).is_err() {
            return Err(BackendError::Unavailable("not writable".into()));
        }
        Ok(Self::at(dir.to_owned()))
    }

    /// `$XDG_RUNTIME_DIR/elect`, else `/tmp/elect-$UID`: mode 0700, owned by us, not a symlink.
    fn private_dir() -> Result<Self> {
        let uid = nix::unistd::geteuid().as_raw();
        let dir = match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
            Some(runtime) => PathBuf::from(runtime).join("elect"),
            None => PathBuf::from(format!("/tmp/elect-{uid}")),
        };
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(BackendError::unavailable(
                    format_args!("cannot create lock directory {}", dir.display()),
                    e,
                ))
            }
        }
        let meta = fs::symlink_metadata(&dir).map_err(|e| {
            BackendError::unavailable(format_args!("lock directory {}", dir.display()), e)
        })?;
        if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o077 != 0 {
            return Err(BackendError::Unavailable(format!(
                "lock directory {} must be a directory owned by uid {uid} with mode 0700; \
                 remove it or set ELECT_LOCK_DIR",
                dir.display()
            )));
        }
        Ok(Self::at(dir))
    }

    fn at(dir: PathBuf) -> Self {
        let describe = format!("file://{}", dir.display());
        Self { dir, describe }
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

    /// Opens (creating if needed) the lock file, refusing symlinks and anything not a file.
    fn open_lock_file(&self, path: &Path) -> Result<File> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(0o660)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| open_error(path, e))?;
        let meta = file
            .metadata()
            .map_err(|e| BackendError::unavailable(format_args!("stat {}", path.display()), e))?;
        if !meta.is_file() {
            return Err(BackendError::Unavailable(format!(
                "{} is not a regular file; refusing to use it as a lock file",
                path.display()
            )));
        }
        Ok(file)
    }

    /// Locks the file, in the way `wait` asks. `Ok(None)` when it is busy and we must not wait.
    async fn lock(file: File, wait: WaitMode) -> Result<Option<File>> {
        match wait {
            WaitMode::NoWait => match file.try_lock() {
                Ok(()) => Ok(Some(file)),
                Err(fs::TryLockError::WouldBlock) => Ok(None),
                Err(fs::TryLockError::Error(e)) => Err(BackendError::unavailable("flock", e)),
            },
            WaitMode::Wait => {
                // A plain thread rather than tokio's blocking pool: a runtime shutting down waits
                // for its pool, and an abandoned wait must not hold the process.
                let (tx, rx) = tokio::sync::oneshot::channel();
                std::thread::Builder::new()
                    .name("flock-wait".into())
                    .spawn(move || {
                        let _ = tx.send(file.lock().map(|()| file));
                    })
                    .map_err(|e| BackendError::unavailable("spawn a waiting thread", e))?;
                match rx.await {
                    Ok(Ok(file)) => Ok(Some(file)),
                    Ok(Err(e)) => Err(BackendError::unavailable("flock", e)),
                    Err(_) => Err(BackendError::Unavailable("the waiting thread died".into())),
                }
            }
        }
    }

    fn read_record(file: &File, path: &Path) -> Result<Option<HolderInfo>> {
        let mut buf = vec![0u8; RECORD_LEN];
        let n = read_at_full(file, &mut buf)
            .map_err(|e| BackendError::unavailable(format_args!("read {}", path.display()), e))?;
        parse_record(&buf[..n]).map_err(|why| {
            BackendError::Unavailable(format!(
                "{} is not an elect lock file ({why}); if no job uses it, move it away",
                path.display()
            ))
        })
    }

    fn write_record(file: &File, path: &Path, holder: &HolderInfo) -> Result<()> {
        let record = serde_json::to_vec(holder).expect("holder metadata serializes");
        write_padded(file, path, record, 0, RECORD_LEN)
    }

    /// The history record; an unreadable one (a torn write of a crashed release) counts as none:
    /// history is for people, and must not stop the lock from working.
    fn read_history(file: &File) -> HistoryRecord {
        let mut buf = vec![0u8; HISTORY_LEN];
        let n = read_at_full_from(file, &mut buf, RECORD_LEN as u64).unwrap_or(0);
        let text = String::from_utf8_lossy(&buf[..n]);
        let text = text.trim_matches(|c: char| c.is_ascii_whitespace() || c == '\0');
        if text.is_empty() {
            return HistoryRecord::default();
        }
        serde_json::from_str(text).unwrap_or_default()
    }

    fn write_history(file: &File, path: &Path, history: &History) -> Result<()> {
        let mut record = Self::read_history(file);
        record.last_run = Some(history.last_run.clone());
        if let Some(window) = history.once_per {
            let until = std::time::SystemTime::now() + window;
            let ms = until
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            record.once_until_ms = Some(ms);
        }
        let bytes = serde_json::to_vec(&record).expect("history serializes");
        write_padded(file, path, bytes, RECORD_LEN as u64, HISTORY_LEN)
    }
}

/// Taking places: one file per place of the lock.
impl FileBackend {
    /// Locks place `slot` and writes our record: `None` when it is busy and we must not wait.
    async fn take(&self, req: &AcquireRequest, slot: u32, wait: WaitMode) -> Result<Option<Lease>> {
        let path = self.place_path(&req.name, slot);
        loop {
            let file = self.open_lock_file(&path)?;
            let Some(file) = Self::lock(file, wait).await? else {
                return Ok(None);
            };
            let sent_at = BootTime::now();
            // The path may have been replaced between open and lock: then we hold a lock on a
            // file nobody else will look at, and must start over.
            if !still_named(&file, &path) {
                continue;
            }
            let previous = Self::read_record(&file, &path)?;
            let mut holder = req.holder.clone();
            holder.acquired_at = std::time::SystemTime::now();
            let next = previous.map(|p| FencingToken(p.token.0 + 1));
            holder.token = if req.holders > 1 {
                self.next_shared_token(&req.name, next)?
            } else {
                next.unwrap_or_else(first_token)
            };
            Self::write_record(&file, &path, &holder)?;
            return Ok(Some(Lease {
                name: req.name.clone(),
                holder,
                sent_at,
                secret: String::new(),
                kernel_lock: Some(Arc::new(file)),
                slot,
            }));
        }
    }

    /// `--holders N` with N > 1: the first free place, waiting (on inotify) if asked.
    async fn acquire_place(&self, req: &AcquireRequest, wait: WaitMode) -> Result<Acquire> {
        // Watching starts before the first round, so that a place freed during it is not missed.
        let watch = match wait {
            WaitMode::NoWait => None,
            WaitMode::Wait => Some(DirWatch::new(&self.dir)?),
        };
        loop {
            for slot in 0..req.holders {
                if let Some(lease) = self.take(req, slot, WaitMode::NoWait).await? {
                    return Ok(Acquire::Acquired(lease));
                }
            }
            match &watch {
                None => return Ok(Acquire::Held(self.current_holder(&req.name, 0).await)),
                Some(watch) => watch.changed(PLACES_RECHECK).await?,
            }
        }
    }

    /// The holder of busy place `slot`, if its record can be read. A holder writes its record
    /// just after it takes the flock, so a contender that finds the place locked can come in
    /// between and read no record, or the record of the holder before, whose run the history
    /// already shows ended: then it looks again, for at most [`RECORD_WAIT`].
    async fn current_holder(&self, name: &LockName, slot: u32) -> Option<HolderInfo> {
        let path = self.place_path(name, slot);
        let file = self.open_lock_file(&path).ok()?;
        let give_up = tokio::time::Instant::now() + RECORD_WAIT;
        loop {
            let holder = Self::read_record(&file, &path).ok().flatten();
            let ended = |h: &HolderInfo| {
                Self::read_history(&file)
                    .last_run
                    .is_some_and(|run| run.token == h.token)
            };
            match holder {
                Some(h) if !ended(&h) => return Some(h),
                other if tokio::time::Instant::now() >= give_up => return other,
                _ => tokio::time::sleep(std::time::Duration::from_millis(2)).await,
            }
        }
    }

    /// The counter file of a lock with several places: `<name>.lock.meta`.
    fn meta_path(&self, name: &LockName) -> PathBuf {
        self.dir.join(format!("{name}{META_SUFFIX}"))
    }

    /// Opens and locks the counter file of a lock with several places, for a short update.
    fn lock_meta(&self, name: &LockName) -> Result<File> {
        let path = self.meta_path(name);
        let file = self.open_lock_file(&path)?;
        file.lock()
            .map_err(|e| BackendError::unavailable(format_args!("flock {}", path.display()), e))?;
        Ok(file)
    }

    /// The next token of a lock with several places, from its shared counter, and never below
    /// `at_least` (the place's own previous token plus one).
    fn next_shared_token(
        &self,
        name: &LockName,
        at_least: Option<FencingToken>,
    ) -> Result<FencingToken> {
        let path = self.meta_path(name);
        let meta = self.lock_meta(name)?;
        let mut buf = [0u8; 32];
        let n = read_at_full(&meta, &mut buf)
            .map_err(|e| BackendError::unavailable(format_args!("read {}", path.display()), e))?;
        let last = std::str::from_utf8(&buf[..n])
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok());
        let mut next = last.map_or_else(first_token, |t| FencingToken(t + 1));
        if let Some(floor) = at_least {
            next = next.max(floor);
        }
        write_padded(&meta, &path, next.0.to_string().into_bytes(), 0, buf.len())?;
        // Dropping the file releases the short lock.
        Ok(next)
    }

    /// Records a run of a lock with several places in place 0's file, under the counter's lock:
    /// places end in any order and must not overwrite each other's record half-way.
    fn write_shared_history(&self, name: &LockName, history: &History) -> Result<()> {
        let _meta = self.lock_meta(name)?;
        let path = self.path(name);
        let file = self.open_lock_file(&path)?;
        Self::write_history(&file, &path, history)
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
            let Ok(Some(file)) = open_existing(&path) else {
                continue;
            };
            let Ok(meta) = file.metadata() else { continue };
            if !is_flocked(proc_locks, meta.dev(), meta.ino()) {
                continue;
            }
            if let Some(holder) = Self::read_record(&file, &path)? {
                held.push(Holding {
                    holder,
                    expires_in: None,
                });
            }
        }
        Ok(held)
    }
}

/// An inotify watch on the lock directory: wakes a waiter when a lock file is closed.
struct DirWatch(tokio::io::unix::AsyncFd<Inotify>);

struct Inotify(nix::sys::inotify::Inotify);

impl std::os::fd::AsRawFd for Inotify {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsFd;
        self.0.as_fd().as_raw_fd()
    }
}

impl DirWatch {
    fn new(dir: &Path) -> Result<Self> {
        use nix::sys::inotify::{AddWatchFlags, InitFlags};
        let inotify =
            nix::sys::inotify::Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
                .map_err(|e| BackendError::unavailable("inotify", e))?;
        inotify
            .add_watch(
                dir,
                AddWatchFlags::IN_CLOSE_WRITE
                    | AddWatchFlags::IN_DELETE
                    | AddWatchFlags::IN_MOVED_TO,
            )
            .map_err(|e| {
                BackendError::unavailable(format_args!("inotify on {}", dir.display()), e)
            })?;
        // SAFETY: the inotify descriptor is owned by the `Inotify` inside the AsyncFd, so it
        // stays open and the same for as long as the AsyncFd lives.
        let registered = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(
                Inotify(inotify),
                tokio::io::Interest::READABLE,
            )
        };
        registered
            .map(Self)
            .map_err(|e| BackendError::unavailable("inotify", e.into_parts().1))
    }

    /// Returns after a change in the directory, or after `at_most`.
    async fn changed(&self, at_most: std::time::Duration) -> Result<()> {
        let Ok(ready) = tokio::time::timeout(at_most, self.0.readable()).await else {
            return Ok(());
        };
        let mut guard = ready.map_err(|e| BackendError::unavailable("inotify", e))?;
        // Drain every queued event; one round of tries answers them all.
        while guard.get_inner().0.read_events().is_ok() {}
        guard.clear_ready();
        Ok(())
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
            Some(lease) => Ok(Acquire::Acquired(lease)),
            None => Ok(Acquire::Held(self.current_holder(&req.name, 0).await)),
        }
    }

    async fn renew(&mut self, lease: &Lease) -> Result<Renewal> {
        let file = lease
            .kernel_lock
            .as_ref()
            .expect("a file lease has its file");
        let path = self.place_path(&lease.name, lease.slot);
        if still_named(file, &path) {
            Ok(Renewal::Renewed)
        } else {
            Ok(Renewal::Lost(format!(
                "lock file {} was deleted or replaced",
                path.display()
            )))
        }
    }

    async fn release(&mut self, lease: &Lease, history: Option<&History>) -> Result<()> {
        if let Some(file) = &lease.kernel_lock {
            let path = self.place_path(&lease.name, lease.slot);
            // Written while the lock is held, so that the next holder reads it whole; a lease
            // whose file was replaced is lost and records nothing.
            if let Some(history) = history.filter(|_| still_named(file, &path)) {
                let written = if lease.holder.places > 1 {
                    self.write_shared_history(&lease.name, history)
                } else {
                    Self::write_history(file, &path, history)
                };
                if let Err(e) = written {
                    tracing::warn!(lock = %lease.name, "cannot record the run ({e})");
                }
            }
            file.unlock()
                .map_err(|e| BackendError::unavailable("unlock", e))?;
        }
        Ok(())
    }

    async fn fresh_run(&mut self, name: &LockName) -> Result<Option<LastRun>> {
        let Some(file) = open_existing(&self.path(name))? else {
            return Ok(None);
        };
        let record = Self::read_history(&file);
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Ok(match record.once_until_ms {
            Some(until) if until > now_ms => record.last_run,
            _ => None,
        })
    }

    async fn inspect(&mut self, name: &LockName) -> Result<LockState> {
        let path = self.path(name);
        let Some(file) = open_existing(&path)? else {
            return Ok(free(name));
        };
        let meta = file
            .metadata()
            .map_err(|e| BackendError::unavailable("stat", e))?;
        let locks = fs::read_to_string("/proc/locks")
            .map_err(|e| BackendError::unavailable("read /proc/locks", e))?;
        if !is_flocked(&locks, meta.dev(), meta.ino()) {
            return Ok(LockState {
                last_run: Self::read_history(&file).last_run,
                ..free(name)
            });
        }
        let mut state = LockState {
            holder: Self::read_record(&file, &path)?,
            last_run: Self::read_history(&file).last_run,
            ..free(name)
        };
        state.co_holders = self.other_places(name, &locks)?;
        if state.holder.is_none() && !state.co_holders.is_empty() {
            state.holder = Some(state.co_holders.remove(0).holder);
        }
        Ok(state)
    }

    /// A kernel lock cannot be taken from a live process, and a dead holder's is already gone.
    async fn force_release(
        &mut self,
        name: &LockName,
        token: FencingToken,
    ) -> Result<ForcedRelease> {
        let state = self.inspect(name).await?;
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
            states.push(self.inspect(name).await?);
        }
        Ok(states)
    }
}

/// The token of a lock file's first acquisition: the wall clock in microseconds since 1970, not
/// 1, so that a lock file deleted and created again (which loses its counter) still hands out
/// tokens larger than any it handed out before, as long as the clock does not step back.
fn first_token() -> FencingToken {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    FencingToken(micros.max(1))
}

fn free(name: &LockName) -> LockState {
    LockState {
        lock: name.clone(),
        holder: None,
        last_run: None,
        expires_in: None,
        waiters: None,
        co_holders: Vec::new(),
    }
}

/// Writes `record` at `offset`, padded with spaces to `len` bytes and ending in a newline, in one
/// `pwrite`: the file is never truncated.
fn write_padded(
    file: &File,
    path: &Path,
    mut record: Vec<u8>,
    offset: u64,
    len: usize,
) -> Result<()> {
    if record.len() >= len {
        return Err(BackendError::Config(
            "holder metadata is too long for a lock file; use a shorter --id".into(),
        ));
    }
    record.resize(len - 1, b' ');
    record.push(b'\n');
    file.write_all_at(&record, offset)
        .map_err(|e| BackendError::unavailable(format_args!("write {}", path.display()), e))
}

/// Opens an existing lock file for reading, never following a symlink: `None` when there is none.
fn open_existing(path: &Path) -> Result<Option<File>> {
    match OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(path)
    {
        Ok(file) => Ok(Some(file)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(open_error(path, e)),
    }
}

fn open_error(path: &Path, err: io::Error) -> BackendError {
    if err.raw_os_error() == Some(nix::libc::ELOOP) {
        return BackendError::Unavailable(format!(
            "{} is a symlink; refusing to follow it (remove it if you did not put it there)",
            path.display()
        ));
    }
    BackendError::unavailable(format_args!("cannot open {}", path.display()), err)
}

/// Whether `path` still names the open `file` (same device and inode).
fn still_named(file: &File, path: &Path) -> bool {
    match (file.metadata(), fs::symlink_metadata(path)) {
        (Ok(held), Ok(named)) => held.dev() == named.dev() && held.ino() == named.ino(),
        _ => false,
    }
}

/// A world-writable directory is acceptable only with the sticky bit (nobody can replace
/// another user's lock file).
fn check_not_open_to_all(dir: &Path, meta: &fs::Metadata) -> Result<()> {
    if meta.mode() & 0o002 != 0 && meta.mode() & 0o1000 == 0 {
        return Err(BackendError::Unavailable(format!(
            "lock directory {} is world-writable without the sticky bit; anyone could replace \
             its lock files (chmod +t or o-w it)",
            dir.display()
        )));
    }
    Ok(())
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

fn read_at_full(file: &File, buf: &mut [u8]) -> io::Result<usize> {
    read_at_full_from(file, buf, 0)
}

fn read_at_full_from(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// An empty file is a lock never held; anything else must be a record we wrote.
fn parse_record(bytes: &[u8]) -> std::result::Result<Option<HolderInfo>, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "it is not text".to_owned())?;
    let text = text.trim_matches(|c: char| c.is_ascii_whitespace() || c == '\0');
    if text.is_empty() {
        return Ok(None);
    }
    serde_json::from_str(text)
        .map(Some)
        .map_err(|e| format!("unreadable record: {e}"))
}

/// Whether `/proc/locks` lists a flock on the file `dev`/`ino`.
fn is_flocked(proc_locks: &str, dev: u64, ino: u64) -> bool {
    let wanted = format!(
        "{:02x}:{:02x}:{ino}",
        nix::sys::stat::major(dev),
        nix::sys::stat::minor(dev)
    );
    proc_locks.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // "1: FLOCK  ADVISORY  WRITE 4242 fd:01:123 0 EOF"; waiters are "1: -> FLOCK ...".
        fields.get(1) == Some(&"FLOCK") && fields.get(5) == Some(&wanted.as_str())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_locks_lines() {
        let text = "1: FLOCK  ADVISORY  WRITE 4242 fd:01:123 0 EOF\n\
                    1: -> FLOCK  ADVISORY  WRITE 4243 fd:01:456 0 EOF\n\
                    2: POSIX  ADVISORY  WRITE 99 fd:01:789 0 EOF\n";
        let dev = nix::sys::stat::makedev(0xfd, 0x01);
        assert!(is_flocked(text, dev, 123));
        assert!(!is_flocked(text, dev, 456), "a waiter is not a holder");
        assert!(!is_flocked(text, dev, 789), "a POSIX lock is not ours");
    }

    #[test]
    fn records() {
        assert_eq!(parse_record(b"").unwrap(), None);
        assert_eq!(parse_record(&[b' '; 64]).unwrap(), None);
        assert!(parse_record(b"garbage").is_err());
        assert!(parse_record(&[0xff, 0xfe]).is_err());
    }
}
