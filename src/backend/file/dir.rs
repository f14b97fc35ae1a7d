//! Which directory holds the lock files, and whether it can be trusted.
//!
//! # The default layout
//! The default directory depends only on the effective uid, never on the environment
//! (`XDG_RUNTIME_DIR`, `HOME` and `TMPDIR` differ between cron, systemd and a login shell, and two
//! runs of one lock must always meet the same file):
//! - root uses [`ROOT_DIR`], `/run/lock/elect`: owned by root, mode 0755 (nobody else can write
//!   in it), not a symlink; created so if missing (a tmpfiles.d line can create it at boot).
//! - any other effective uid N uses `/run/lock/elect-N`: owned by N, mode 0700, not a symlink;
//!   created so if missing.
//!
//! `/run/lock` is sticky and world-writable, so another user can create either name first. That
//! is a denial of service with a clear error (exit 69 naming the directory, its owner and the fix),
//! never a split: elect never falls back to another directory, and it never uses a directory that
//! someone else can write in.
//!
//! # A directory given explicitly
//! `ELECT_LOCK_DIR` or `file:///DIR`. The path is walked one component at a time from checked
//! directory descriptors ([`walk`]): every directory on the way and every symlink followed must
//! belong to root or the effective uid, and no directory on the way may be writable by others
//! unless it is sticky, so that no other user can swap the lock directory for one of their own.
//! Missing directories are created with `mkdirat` in the directory just checked, never by name,
//! so nobody can race a symlink into the path between the check and the creation. The directory
//! itself:
//! - owned by root or the effective uid and writable by nobody else: [`Sharing::Private`];
//! - sticky and world-writable (`/tmp`): also private, since the sticky bit stops others from
//!   renaming or deleting our files, and a lock file that someone else created there is refused;
//! - setgid and group-writable, owned by root or the effective uid: [`Sharing::Group`], the recipe
//!   for sharing locks between the users of one group on purpose;
//! - anything else (group-writable without setgid, world-writable without sticky, another owner)
//!   is refused with exit 69 and the fix.

use std::fs::{self, Metadata};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::FileStat;

use super::walk::{self, Missing};
use crate::backend::{BackendError, Result};

/// root's default lock directory.
pub const ROOT_DIR: &str = "/run/lock/elect";
/// Where the default directories of other users live: `/run/lock/elect-UID`.
const USERS_PREFIX: &str = "/run/lock/elect-";

/// How lock files in a directory are trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// Lock files must belong to the effective uid or root and be writable by no one else.
    Private,
    /// A setgid, group-writable directory of this gid: lock files are created group-writable and
    /// must belong to the group.
    Group(u32),
}

/// A lock directory that passed the checks.
#[derive(Debug, Clone)]
pub struct LockDir {
    pub path: PathBuf,
    pub sharing: Sharing,
}

/// The default directory of the effective uid (see the module doc).
pub fn default_dir() -> Result<LockDir> {
    let euid = nix::unistd::geteuid().as_raw();
    let (path, mode) = match euid {
        0 => (PathBuf::from(ROOT_DIR), 0o755),
        uid => (PathBuf::from(format!("{USERS_PREFIX}{uid}")), 0o700),
    };
    let create = format!(
        "install -d -m {mode:04o} -o {} {}",
        if euid == 0 {
            "root -g root".to_owned()
        } else {
            euid.to_string()
        },
        path.display()
    );
    match fs::DirBuilder::new().mode(mode).create(&path) {
        // The umask may have trimmed the mode; /run/lock is sticky, so nobody else can have
        // swapped the directory we just made.
        Ok(()) => fs::set_permissions(&path, fs::Permissions::from_mode(mode))
            .map_err(|e| unusable(&path, format_args!("cannot set its mode ({e})"), &create))?,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            let fix =
                format!("create it as root ({create}), or choose a directory with ELECT_LOCK_DIR");
            return Err(unusable(
                &path,
                format_args!("cannot create it ({e})"),
                &fix,
            ));
        }
    }
    let fix = format!(
        "remove it when no elect uses it (elect creates it again), or recreate it yourself \
         ({create}); or choose a directory with ELECT_LOCK_DIR"
    );
    let meta = fs::symlink_metadata(&path)
        .map_err(|e| unusable(&path, format_args!("cannot stat it ({e})"), &fix))?;
    check_default(&path, &meta, euid).map_err(|why| unusable(&path, why, &fix))?;
    Ok(LockDir {
        path,
        sharing: Sharing::Private,
    })
}

/// What is wrong with a default directory, if anything.
fn check_default(path: &Path, meta: &Metadata, euid: u32) -> std::result::Result<(), String> {
    let kind = meta.file_type();
    if kind.is_symlink() {
        let target = fs::read_link(path).unwrap_or_default();
        return Err(format!("it is a symlink (to {})", target.display()));
    }
    if !kind.is_dir() {
        return Err("it is not a directory".into());
    }
    if meta.uid() != euid {
        return Err(format!(
            "it belongs to {}, not to {}",
            owner(meta.uid()),
            owner(euid)
        ));
    }
    let bad = if euid == 0 { 0o022 } else { 0o077 };
    if meta.mode() & bad != 0 {
        return Err(format!(
            "its mode is {:04o}, and it must be {}",
            meta.mode() & 0o7777,
            if euid == 0 { "0755" } else { "0700" }
        ));
    }
    Ok(())
}

fn unusable(path: &Path, why: impl std::fmt::Display, fix: &str) -> BackendError {
    BackendError::Unavailable(format!(
        "the default lock directory {} cannot be used safely: {why}; {fix}",
        path.display()
    ))
}

/// A directory given with `ELECT_LOCK_DIR` or `file:///DIR`: walked from `/` through checked
/// directory descriptors, the missing parts created on the way ([`walk`]), then checked.
pub fn explicit_dir(path: &Path) -> Result<LockDir> {
    let euid = nix::unistd::geteuid().as_raw();
    let absolute = std::path::absolute(path).map_err(|e| {
        BackendError::unavailable(format_args!("lock directory {}", path.display()), e)
    })?;
    let walked = walk::walk(&absolute, euid, Missing::Create(0o755)).map_err(|why| {
        BackendError::Unavailable(format!(
            "lock directory {} cannot be trusted: {why}",
            path.display()
        ))
    })?;
    let sharing = classify(&walked.stat, euid).map_err(|why| {
        BackendError::Unavailable(format!("lock directory {} {why}", path.display()))
    })?;
    if walked.real != absolute {
        tracing::debug!(dir = %path.display(), resolved = %walked.real.display(), "lock directory resolved");
    }
    Ok(LockDir {
        path: path.to_owned(),
        sharing,
    })
}

/// How lock files in the final directory are trusted, or why it cannot be used (the text follows
/// "lock directory DIR").
fn classify(stat: &FileStat, euid: u32) -> std::result::Result<Sharing, String> {
    let mode = stat.st_mode;
    if !trusted_owner(stat.st_uid, euid) {
        return Err(format!(
            "belongs to {}, not to you or root: its owner could replace any lock file in it; \
             use a directory that you or root own",
            owner(stat.st_uid)
        ));
    }
    if mode & 0o002 != 0 {
        if mode & 0o1000 != 0 {
            return Ok(Sharing::Private);
        }
        return Err(format!(
            "is world-writable without the sticky bit (mode {:04o}): anyone could replace its \
             lock files (chmod +t or o-w it)",
            mode & 0o7777
        ));
    }
    if mode & 0o020 != 0 {
        if mode & 0o2000 != 0 {
            return Ok(Sharing::Group(stat.st_gid));
        }
        return Err(format!(
            "is writable by group {} without the setgid bit (mode {:04o}): to share its locks \
             with that group, chmod g+s it; otherwise chmod g-w it",
            group(stat.st_gid),
            mode & 0o7777
        ));
    }
    Ok(Sharing::Private)
}

pub fn trusted_owner(uid: u32, euid: u32) -> bool {
    uid == 0 || uid == euid
}

/// `uid 65534 (nobody)`, or the bare uid when it has no name.
pub fn owner(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(user)) => format!("uid {uid} ({})", user.name),
        _ => format!("uid {uid}"),
    }
}

/// `gid 1001 (locks)`, or the bare gid when it has no name.
pub fn group(gid: u32) -> String {
    match nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid)) {
        Ok(Some(group)) => format!("gid {gid} ({})", group.name),
        _ => format!("gid {gid}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// root's default directory, made by someone else or left world-writable, is refused.
    #[test]
    fn root_default_must_be_roots_and_closed() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("elect");
        fs::create_dir(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        let meta = fs::symlink_metadata(&path).unwrap();
        assert_eq!(check_default(&path, &meta, 0), Ok(()));
        std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
        let meta = fs::symlink_metadata(&path).unwrap();
        let why = check_default(&path, &meta, 0).unwrap_err();
        assert!(why.contains("uid 65534"), "{why}");
        std::os::unix::fs::chown(&path, Some(0), None).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o1777)).unwrap();
        let meta = fs::symlink_metadata(&path).unwrap();
        assert!(check_default(&path, &meta, 0).unwrap_err().contains("1777"));
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let meta = fs::symlink_metadata(&link).unwrap();
        assert!(check_default(&link, &meta, 0)
            .unwrap_err()
            .contains("symlink"));
    }
}
