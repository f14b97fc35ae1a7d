//! Holders of an earlier file of the same lock name.
//!
//! When a lock file is deleted or replaced (a cleanup job, an `rm -rf`, a deploy that recreates
//! the directory), its holder keeps its flock on the old file, which no newcomer can see: the
//! newcomer creates or opens the new file and locks it at once. elect closes that hole from the
//! newcomer's side. After taking the flock it looks in `/proc/locks` for flocks on the same device
//! whose inode is not the current file's, and through the holders' `/proc/PID/fd` for a
//! descriptor whose target is this lock path, or this path followed by ` (deleted)`. Such a
//! holder still runs a job under this name: the newcomer does not start (exit 75 naming it, or,
//! with `--wait`, it waits until that process lets go). The holder itself learns of the change
//! within 100 ms and stops its job.
//!
//! Limits, which the README repeats:
//! - Only processes whose `/proc/PID/fd` this process may read are seen: all of them as root;
//!   as another user only that user's own (so a non-root newcomer in a group directory does not
//!   see another member's old holder). `hidepid=` on `/proc` hides more.
//! - A holder in another mount namespace shows its path as that namespace names it, and one in
//!   another pid namespace is listed in `/proc/locks` without a pid: the first is missed, the
//!   second costs a scan of every visible process.
//!
//! A file renamed while held (`mv x.lock x.old`, or into another directory of the filesystem) is
//! not "this path" any more, but its holder record names the lock file it was taken as (its real
//! path): a flocked file whose record names this path counts as an earlier file of it too, so a
//! rename behaves as a replace. The holder stops within 100 ms; the newcomer waits for
//! its job to be gone.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::proclocks;
use super::record;
use crate::lease::{FencingToken, HolderInfo};

/// A process that holds the flock of an earlier file of this lock's path.
#[derive(Debug, Clone)]
pub struct EarlierHolder {
    pub pid: i32,
    /// Its descriptor, through which the old file can still be read.
    fd: PathBuf,
}

impl EarlierHolder {
    /// The holder as a contender reports it: the old file's record where it can be read, with the
    /// process that still holds it.
    pub fn describe(&self, path: &Path) -> HolderInfo {
        let record = OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
            .open(&self.fd)
            .ok()
            .filter(|f| f.metadata().is_ok_and(|m| m.is_file()))
            .and_then(|f| {
                let mut buf = vec![0u8; record::RECORD_LEN];
                let n = record::read_at_full(&f, &mut buf, 0).ok()?;
                record::parse_holder(&buf[..n]).ok().flatten()
            });
        let mut holder = record.unwrap_or_else(|| {
            let mut h = HolderInfo::this_process(None, std::time::Duration::ZERO);
            h.token = FencingToken(0);
            h.version = String::new();
            h
        });
        holder.id = format!(
            "pid {}, which still holds an earlier, deleted or replaced (or renamed) {}",
            self.pid,
            path.display()
        );
        holder.pid = u32::try_from(self.pid).unwrap_or(0);
        holder
    }
}

/// A process that still holds the flock of an earlier file at `path`, other than `current` (the
/// file we have locked), if any can be seen.
pub fn earlier_holder(current: &File, path: &Path) -> Option<EarlierHolder> {
    let meta = current.metadata().ok()?;
    let devices = proclocks::Devices::of(current, &meta);
    let text = match proclocks::read() {
        Ok(text) => text,
        Err(e) => {
            tracing::debug!(
                "cannot read /proc/locks ({e}); holders of earlier lock files are not checked"
            );
            return None;
        }
    };
    let others: Vec<proclocks::Flock> = proclocks::flocks(&text)
        .filter(|f| f.is_on_device(&devices) && f.ino != meta.ino())
        .collect();
    if others.is_empty() {
        return None;
    }
    let inodes: BTreeSet<u64> = others.iter().map(|f| f.ino).collect();
    let names = Names::of(path, &meta);
    let mut unexplained = BTreeSet::new();
    let pids: BTreeSet<i32> = others.iter().map(|f| f.pid).collect();
    for pid in pids {
        match (pid > 0).then(|| scan(pid, meta.dev(), &inodes, &names)) {
            Some(Scan::Found(holder)) => return Some(holder),
            // Its flock is on another file.
            Some(Scan::Elsewhere) => {}
            // Gone or exiting (its descriptor may live on in another process: elect's watchdog),
            // out of sight, or in another pid namespace: look through every process we can see.
            Some(Scan::Gone) | Some(Scan::Hidden) | None => {
                unexplained.extend(others.iter().filter(|f| f.pid == pid).map(|f| f.ino));
            }
        }
    }
    if unexplained.is_empty() {
        return None;
    }
    scan_everyone(meta.dev(), &unexplained, &names)
}

/// The link targets that name this path (as it is, or deleted), and who could have made an earlier
/// lock file of it.
///
/// A link target is only text: a process in a mount namespace of its own (an unprivileged user
/// namespace suffices) can bind another directory over the lock directory and hold a file of its
/// own under the very same name. So a match counts only for a file that a trusted lock file could
/// have been: owned by root or the effective uid, or, in a directory shared with a group, of that
/// group. Anything else cannot be an earlier lock file of ours and cannot hold up a newcomer.
struct Names {
    live: Vec<u8>,
    /// The path as a holder record names it.
    recorded: String,
    deleted: Vec<u8>,
    euid: u32,
    /// The group of a shared directory's lock files (the current file is group-writable).
    group: Option<u32>,
}

impl Names {
    /// `path` must be the real path (no symlink in it), as the kernel shows it; `current` is the
    /// metadata of the lock file we hold.
    fn of(path: &Path, current: &fs::Metadata) -> Self {
        let live = path.as_os_str().to_owned().into_vec();
        let mut deleted = live.clone();
        deleted.extend_from_slice(b" (deleted)");
        Self {
            recorded: path.to_string_lossy().into_owned(),
            live,
            deleted,
            euid: nix::unistd::geteuid().as_raw(),
            group: (current.mode() & 0o020 != 0).then(|| current.gid()),
        }
    }

    /// Whether the file open at `fd` (whose target is `target`) is an earlier file of this path:
    /// named so (as it is, or deleted), or renamed since, with a holder record that names it.
    fn matches(&self, fd: &Path, target: &Path, file: &fs::Metadata) -> bool {
        let trusted = file.uid() == 0 || file.uid() == self.euid || Some(file.gid()) == self.group;
        if !trusted || !file.is_file() {
            return false;
        }
        let t = target.as_os_str().as_bytes();
        t == self.live.as_slice()
            || t == self.deleted.as_slice()
            || recorded_path(fd).is_some_and(|p| p == self.recorded)
    }
}

/// The lock file named in the holder record of the file open at `fd`.
fn recorded_path(fd: &Path) -> Option<String> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
        .open(fd)
        .ok()?;
    let mut buf = vec![0u8; record::RECORD_LEN];
    let n = record::read_at_full(&file, &mut buf, 0).ok()?;
    record::taken_as(&buf[..n]).lock_file
}

enum Scan {
    Found(EarlierHolder),
    /// It has one of the flocked files open under another name: an unrelated lock.
    Elsewhere,
    /// Its descriptors cannot be read (another user's process seen by a non-root elect, or a
    /// process on its way out).
    Hidden,
    /// Gone, a zombie, or without any of those files open (its descriptor lives on in another
    /// process: elect's watchdog after elect was killed).
    Gone,
}

/// Looks through the descriptors of `pid` for one of the flocked `inodes` of device `dev`.
fn scan(pid: i32, dev: u64, inodes: &BTreeSet<u64>, names: &Names) -> Scan {
    let fds = PathBuf::from(format!("/proc/{pid}/fd"));
    let entries = match fs::read_dir(&fds) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return Scan::Hidden,
        Err(_) => return Scan::Gone,
    };
    let mut elsewhere = false;
    for entry in entries.flatten() {
        let fd = entry.path();
        let Ok(target) = fs::read_link(&fd) else {
            continue;
        };
        // Sockets, pipes and anonymous inodes are not files of ours.
        if !target.as_os_str().as_bytes().starts_with(b"/") {
            continue;
        }
        // The descriptor's own file (stat follows the magic link even when it is deleted).
        let Ok(m) = fs::metadata(&fd) else { continue };
        if m.dev() != dev || !inodes.contains(&m.ino()) {
            continue;
        }
        if names.matches(&fd, &target, &m) {
            return Scan::Found(EarlierHolder { pid, fd });
        }
        elsewhere = true;
    }
    if elsewhere {
        Scan::Elsewhere
    } else {
        Scan::Gone
    }
}

/// Every visible process, for flocks whose taker is gone or not visible.
fn scan_everyone(dev: u64, inodes: &BTreeSet<u64>, names: &Names) -> Option<EarlierHolder> {
    let me = std::process::id();
    fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| u32::try_from(pid).is_ok_and(|p| p != me))
        .find_map(|pid| match scan(pid, dev, inodes, names) {
            Scan::Found(holder) => Some(holder),
            _ => None,
        })
}
