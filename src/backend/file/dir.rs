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
//! `ELECT_LOCK_DIR` or `file:///DIR`. The path is resolved one component at a time: every
//! directory on the way and every symlink followed must belong to root or the effective uid, and
//! no directory on the way may be writable by others unless it is sticky, so that no other user
//! can swap the lock directory for one of their own. The directory itself:
//! - owned by root or the effective uid and writable by nobody else: [`Sharing::Private`];
//! - sticky and world-writable (`/tmp`): also private, since the sticky bit stops others from
//!   renaming or deleting our files, and a lock file that someone else created there is refused;
//! - setgid and group-writable, owned by root or the effective uid: [`Sharing::Group`], the recipe
//!   for sharing locks between the users of one group on purpose;
//! - anything else (group-writable without setgid, world-writable without sticky, another owner)
//!   is refused with exit 69 and the fix.

use std::ffi::OsString;
use std::fs::{self, Metadata};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::backend::{BackendError, Result};

/// root's default lock directory.
pub const ROOT_DIR: &str = "/run/lock/elect";
/// Where the default directories of other users live: `/run/lock/elect-UID`.
const USERS_PREFIX: &str = "/run/lock/elect-";
/// At most this many symlinks are followed while resolving an explicit directory.
const MAX_LINKS: usize = 40;

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

/// A directory given with `ELECT_LOCK_DIR` or `file:///DIR`: created if missing, then checked.
pub fn explicit_dir(path: &Path) -> Result<LockDir> {
    let euid = nix::unistd::geteuid().as_raw();
    let absolute = std::path::absolute(path).map_err(|e| {
        BackendError::unavailable(format_args!("lock directory {}", path.display()), e)
    })?;
    // Directories are created only below one that passes the checks: never through a path that
    // another user controls.
    if fs::symlink_metadata(&absolute).is_err() {
        let existing = absolute
            .ancestors()
            .find(|a| fs::symlink_metadata(a).is_ok())
            .unwrap_or(Path::new("/"));
        resolve(existing, euid)
            .and_then(|(real, _)| check_crossed(&real, euid))
            .map_err(|why| {
                BackendError::Unavailable(format!(
                    "lock directory {} cannot be created safely: {why}",
                    path.display()
                ))
            })?;
    }
    if let Err(err) = fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(path)
    {
        return Err(BackendError::unavailable(
            format_args!("cannot create lock directory {}", path.display()),
            err,
        ));
    }
    let (resolved, meta) = resolve(&absolute, euid).map_err(|why| {
        BackendError::Unavailable(format!(
            "lock directory {} cannot be trusted: {why}",
            path.display()
        ))
    })?;
    let sharing = classify(&meta, euid).map_err(|why| {
        BackendError::Unavailable(format!("lock directory {} {why}", path.display()))
    })?;
    if resolved != absolute {
        tracing::debug!(dir = %path.display(), resolved = %resolved.display(), "lock directory resolved");
    }
    Ok(LockDir {
        path: path.to_owned(),
        sharing,
    })
}

/// Follows `path` from `/`, checking every directory crossed and every symlink followed; returns
/// the real directory and its metadata.
fn resolve(path: &Path, euid: u32) -> std::result::Result<(PathBuf, Metadata), String> {
    let mut todo: Vec<OsString> = parts(path);
    let mut current = PathBuf::from("/");
    let mut links = 0;
    while let Some(part) = todo.pop() {
        if part == ".." {
            current.pop();
            continue;
        }
        check_crossed(&current, euid)?;
        let next = current.join(&part);
        let meta = fs::symlink_metadata(&next).map_err(|e| format!("{}: {e}", next.display()))?;
        if meta.file_type().is_symlink() {
            links += 1;
            if links > MAX_LINKS {
                return Err(format!("too many symlinks at {}", next.display()));
            }
            if !trusted_owner(meta.uid(), euid) {
                return Err(format!(
                    "the symlink {} belongs to {}, who could point it elsewhere",
                    next.display(),
                    owner(meta.uid())
                ));
            }
            let target = fs::read_link(&next).map_err(|e| format!("{}: {e}", next.display()))?;
            if target.is_absolute() {
                current = PathBuf::from("/");
            }
            todo.extend(parts(&target));
            continue;
        }
        if !meta.is_dir() {
            return Err(format!("{} is not a directory", next.display()));
        }
        current = next;
    }
    let meta = fs::symlink_metadata(&current).map_err(|e| format!("{}: {e}", current.display()))?;
    Ok((current, meta))
}

/// The components of `path` still to walk, last first (popped from the end).
fn parts(path: &Path) -> Vec<OsString> {
    let mut parts: Vec<OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name.to_owned()),
            Component::ParentDir => Some("..".into()),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect();
    parts.reverse();
    parts
}

/// A directory whose entries we are about to trust: only root or us may change them, or, in a
/// sticky directory, only each entry's owner.
fn check_crossed(dir: &Path, euid: u32) -> std::result::Result<(), String> {
    let meta = fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if !trusted_owner(meta.uid(), euid) {
        return Err(format!(
            "{} belongs to {}, who could replace what is in it",
            dir.display(),
            owner(meta.uid())
        ));
    }
    if meta.mode() & 0o022 != 0 && meta.mode() & 0o1000 == 0 {
        return Err(format!(
            "{} (mode {:04o}) is writable by others without the sticky bit, so they could \
             replace what is in it",
            dir.display(),
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

/// How lock files in the final directory are trusted, or why it cannot be used (the text follows
/// "lock directory DIR").
fn classify(meta: &Metadata, euid: u32) -> std::result::Result<Sharing, String> {
    let mode = meta.mode();
    if !trusted_owner(meta.uid(), euid) {
        return Err(format!(
            "belongs to {}, not to you or root: its owner could replace any lock file in it; \
             use a directory that you or root own",
            owner(meta.uid())
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
            return Ok(Sharing::Group(meta.gid()));
        }
        return Err(format!(
            "is writable by group {} without the setgid bit (mode {:04o}): to share its locks \
             with that group, chmod g+s it; otherwise chmod g-w it",
            group(meta.gid()),
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

    #[test]
    fn parts_are_walked_in_order() {
        let mut todo = parts(Path::new("/a/./b/../c"));
        let mut seen = Vec::new();
        while let Some(p) = todo.pop() {
            seen.push(p.into_string().unwrap());
        }
        assert_eq!(seen, ["a", "b", "..", "c"]);
    }

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

    #[test]
    fn resolving_follows_trusted_links() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink("real", dir.path().join("link")).unwrap();
        let euid = nix::unistd::geteuid().as_raw();
        let (resolved, meta) = resolve(&dir.path().join("link"), euid).unwrap();
        assert!(meta.is_dir());
        assert_eq!(resolved, real.canonicalize().unwrap());
    }
}
