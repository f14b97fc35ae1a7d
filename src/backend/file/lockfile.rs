//! Opening lock files, and the rules a lock file must meet before elect trusts it.
//!
//! A lock file is trusted only if no other non-root user can have written it, renamed another file
//! over it or linked it elsewhere: a regular file with one link, owned by the effective uid or
//! root and writable by no one else, or, in a directory shared with a group on purpose
//! ([`Sharing::Group`]), belonging to that group and not writable by others. Anything else is
//! refused (exit 69) with its owner named. Every open uses `O_NOFOLLOW` (a planted symlink is
//! refused, never followed) and `O_NONBLOCK` (a planted FIFO cannot block elect).

use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, ErrorKind};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use super::dir::{group, owner, trusted_owner, Sharing};
use crate::backend::{BackendError, Result};

const FLAGS: i32 = nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC | nix::libc::O_NONBLOCK;

/// Opens the lock file at `path` for locking, creating it if missing, and checks that it can be
/// trusted. The file is open read-only: this description carries the flock and is the one the
/// job inherits, so that nothing the job runs can rewrite or truncate the record through it
/// (records are written through [`open_writer`], which elect alone holds).
///
/// flock(2) needs only a descriptor open for reading, so whoever can read a lock file can hold its
/// lock: a lock file is readable by its owner alone (0600), or by the group of a directory shared
/// on purpose (0660). An older file with wider read bits is narrowed when it is ours.
pub fn open_for_locking(path: &Path, sharing: Sharing) -> Result<File> {
    let mode = mode_of(sharing);
    loop {
        create(path, mode)?;
        let file = match OpenOptions::new().read(true).custom_flags(FLAGS).open(path) {
            Ok(file) => file,
            // Deleted between the two opens: create it.
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(open_error(path, e)),
        };
        match check(&file, path, sharing)? {
            Checked::Trusted => {
                narrow(&file, path, mode)?;
                return Ok(file);
            }
            Checked::Unlinked => continue,
        }
    }
}

/// Opens the lock file at `path` for reading and writing (close-on-exec, never handed on),
/// creating it if missing, and checks it: for files elect writes under a short lock of its own
/// (the counter of a lock with several places, its history).
pub fn open_for_writing(path: &Path, sharing: Sharing) -> Result<File> {
    let mode = mode_of(sharing);
    loop {
        create(path, mode)?;
        let file = match open_read_write(path) {
            Ok(file) => file,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(open_error(path, e)),
        };
        match check(&file, path, sharing)? {
            Checked::Trusted => return Ok(file),
            Checked::Unlinked => continue,
        }
    }
}

/// Opens `path` for reading and writing, with [`FLAGS`].
fn open_read_write(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(FLAGS)
        .open(path)
}

/// The descriptor through which the holder of `locked` (the read-only file it flocked at `path`)
/// writes its records: `None` when `path` names another file by now (replaced since: the lock
/// is on a file nobody else will look at).
pub fn open_writer(path: &Path, locked: &File) -> Result<Option<File>> {
    let file = match open_read_write(path) {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(open_error(path, e)),
    };
    let stat = |f: &File| {
        f.metadata()
            .map(|m| (m.dev(), m.ino()))
            .map_err(|e| BackendError::unavailable(format_args!("stat {}", path.display()), e))
    };
    Ok((stat(&file)? == stat(locked)?).then_some(file))
}

fn mode_of(sharing: Sharing) -> u32 {
    match sharing {
        Sharing::Private => 0o600,
        Sharing::Group(_) => 0o660,
    }
}

/// Creates the lock file if it is missing, with exactly `mode`.
fn create(path: &Path, mode: u32) -> Result<()> {
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(FLAGS)
        .open(path)
    {
        // The umask trims the mode given to open; a group directory needs group write.
        Ok(file) => file
            .set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(|e| BackendError::unavailable(format_args!("chmod {}", path.display()), e)),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(open_error(path, e)),
    }
}

/// Takes away read bits beyond `mode` from a trusted lock file of ours (one an older elect made
/// world-readable), so that no other user can open it to hold its lock.
fn narrow(file: &File, path: &Path, mode: u32) -> Result<()> {
    let meta = file
        .metadata()
        .map_err(|e| BackendError::unavailable(format_args!("stat {}", path.display()), e))?;
    let extra = meta.mode() & 0o077 & !mode;
    if extra == 0 || meta.uid() != nix::unistd::geteuid().as_raw() {
        return Ok(());
    }
    file.set_permissions(std::fs::Permissions::from_mode(
        meta.mode() & 0o7777 & !extra,
    ))
    .map_err(|e| BackendError::unavailable(format_args!("chmod {}", path.display()), e))
}

/// Opens an existing lock file for reading and checks it: `None` when there is none.
pub fn open_existing(path: &Path, sharing: Sharing) -> Result<Option<File>> {
    loop {
        let file = match OpenOptions::new().read(true).custom_flags(FLAGS).open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(open_error(path, e)),
        };
        match check(&file, path, sharing)? {
            Checked::Trusted => return Ok(Some(file)),
            Checked::Unlinked => continue,
        }
    }
}

enum Checked {
    Trusted,
    /// Deleted after we opened it: open the path again.
    Unlinked,
}

fn check(file: &File, path: &Path, sharing: Sharing) -> Result<Checked> {
    let meta = file
        .metadata()
        .map_err(|e| BackendError::unavailable(format_args!("stat {}", path.display()), e))?;
    if meta.nlink() == 0 && meta.is_file() {
        return Ok(Checked::Unlinked);
    }
    match distrust(&meta, sharing) {
        None => Ok(Checked::Trusted),
        Some(why) => Err(BackendError::Unavailable(format!(
            "refusing the lock file {}: {why}; remove it if you did not create it",
            path.display()
        ))),
    }
}

/// Why a lock file with this metadata cannot be trusted, if it cannot.
pub fn distrust(meta: &Metadata, sharing: Sharing) -> Option<String> {
    let mode = meta.mode() & 0o7777;
    if !meta.is_file() {
        return Some(format!(
            "it is {} (of {}), not a regular file",
            kind(meta),
            owner(meta.uid())
        ));
    }
    if meta.nlink() != 1 {
        return Some(format!(
            "it has {} hard links (owner {}), so another name can change it",
            meta.nlink(),
            owner(meta.uid())
        ));
    }
    let euid = nix::unistd::geteuid().as_raw();
    match sharing {
        Sharing::Private if !trusted_owner(meta.uid(), euid) => Some(format!(
            "it belongs to {}, not to you or root, so its owner could forge its record or hold \
             it for ever",
            owner(meta.uid())
        )),
        Sharing::Private if mode & 0o022 != 0 => Some(format!(
            "it is writable by group or others (mode {mode:04o}, owner {})",
            owner(meta.uid())
        )),
        Sharing::Group(gid) if meta.gid() != gid => Some(format!(
            "it belongs to {} (owner {}), not to the lock directory's group {}",
            group(meta.gid()),
            owner(meta.uid()),
            group(gid)
        )),
        Sharing::Group(_) if mode & 0o002 != 0 => Some(format!(
            "it is writable by others (mode {mode:04o}, owner {})",
            owner(meta.uid())
        )),
        _ => None,
    }
}

fn kind(meta: &Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_symlink() {
        "a symlink"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else {
        "not a regular file"
    }
}

pub fn open_error(path: &Path, err: io::Error) -> BackendError {
    if err.raw_os_error() == Some(nix::libc::ELOOP) {
        return BackendError::Unavailable(format!(
            "{} is a symlink; refusing to follow it (remove it if you did not put it there)",
            path.display()
        ));
    }
    if err.kind() == ErrorKind::PermissionDenied {
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            return BackendError::Unavailable(format!(
                "cannot open the lock file {} ({err}): it belongs to {} (mode {:04o})",
                path.display(),
                owner(meta.uid()),
                meta.mode() & 0o7777
            ));
        }
    }
    BackendError::unavailable(format_args!("cannot open {}", path.display()), err)
}
