//! Walking a directory path one component at a time, from descriptors already checked.
//!
//! A path checked by name and then used by name can change in between: in a directory another
//! user may write (a sticky `/tmp` included, for names that do not exist yet), they can plant a
//! symlink at a missing component after the check and before a `mkdir -p`. So the walk holds a
//! descriptor of each directory it has checked and does everything relative to it: `fstatat`,
//! `readlinkat`, `mkdirat`, and `openat` with `O_NOFOLLOW`. At each step:
//! - the directory the next entry is read from must belong to root or the effective uid and be
//!   writable by nobody else unless it is sticky, so that no other user can swap the entry;
//! - a symlink is followed only if it belongs to root or the effective uid (at most
//!   [`MAX_LINKS`]);
//! - a missing component is created with `mkdirat` in that checked directory when asked, and
//!   then walked like any other: if someone else made the name first, it is checked as theirs.
//!
//! The result is a descriptor (`O_PATH`) of the final directory and its real path. The final
//! directory itself is not checked here: the caller decides what it may be.

use std::ffi::{OsStr, OsString};
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};

use super::dir::{owner, trusted_owner};

/// At most this many symlinks are followed in one walk.
const MAX_LINKS: usize = 40;

/// The directory a walk ended in.
#[derive(Debug)]
pub struct Walked {
    /// An `O_PATH` descriptor of it: what `openat`, `mkdirat` and `renameat` work from.
    pub fd: OwnedFd,
    /// Its real path, every symlink resolved.
    pub real: PathBuf,
    pub stat: FileStat,
}

/// What a walk does with a component that does not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    Refuse,
    /// Creates it with this mode (less the umask).
    Create(u32),
}

/// Walks the absolute `path` from `/` (see the module doc). The error is a sentence about the
/// component that failed.
pub fn walk(path: &Path, euid: u32, missing: Missing) -> Result<Walked, String> {
    let mut todo = parts(path);
    let root = open_dir(None, OsStr::new("/")).map_err(|e| format!("/: {e}"))?;
    let mut stack: Vec<(OwnedFd, PathBuf)> = vec![(root, PathBuf::from("/"))];
    let mut links = 0;
    while let Some(part) = todo.pop() {
        if part == ".." {
            if stack.len() > 1 {
                stack.pop();
            }
            continue;
        }
        let (dir, here) = stack.last().expect("the root stays on the stack");
        let next = here.join(&part);
        let entry =
            match nix::sys::stat::fstatat(dir, part.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(entry) => entry,
                Err(Errno::ENOENT) if missing != Missing::Refuse => {
                    create(dir, here, &part, euid, missing)?;
                    todo.push(part);
                    continue;
                }
                Err(e) => return Err(format!("{}: {e}", next.display())),
            };
        crossed(dir, here, euid)?;
        match SFlag::from_bits_truncate(entry.st_mode) & SFlag::S_IFMT {
            SFlag::S_IFLNK => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(format!("too many symlinks at {}", next.display()));
                }
                if !trusted_owner(entry.st_uid, euid) {
                    return Err(format!(
                        "the symlink {} belongs to {}, who could point it elsewhere",
                        next.display(),
                        owner(entry.st_uid)
                    ));
                }
                let target = nix::fcntl::readlinkat(dir, part.as_os_str())
                    .map_err(|e| format!("{}: {e}", next.display()))?;
                if Path::new(&target).is_absolute() {
                    stack.truncate(1);
                }
                todo.extend(parts(Path::new(&target)));
            }
            SFlag::S_IFDIR => {
                let fd = open_dir(Some(dir), &part).map_err(|e| match e {
                    Errno::ELOOP | Errno::ENOTDIR => {
                        format!("{} changed while it was checked", next.display())
                    }
                    e => format!("{}: {e}", next.display()),
                })?;
                stack.push((fd, next));
            }
            _ => return Err(format!("{} is not a directory", next.display())),
        }
    }
    let (fd, real) = stack.pop().expect("the root stays on the stack");
    let stat = nix::sys::stat::fstat(&fd).map_err(|e| format!("{}: {e}", real.display()))?;
    Ok(Walked { fd, real, stat })
}

/// Creates the missing directory `name` in the checked `dir` (at `here`), as `missing` asks.
fn create(
    dir: &OwnedFd,
    here: &Path,
    name: &OsStr,
    euid: u32,
    missing: Missing,
) -> Result<(), String> {
    let Missing::Create(mode) = missing else {
        return Err(format!("{}: no such directory", here.join(name).display()));
    };
    crossed(dir, here, euid)?;
    match nix::sys::stat::mkdirat(dir, name, Mode::from_bits_truncate(mode)) {
        // Made by us, or by someone else just now: either way it is looked at again.
        Ok(()) | Err(Errno::EEXIST) => Ok(()),
        Err(e) => Err(format!("cannot create {}: {e}", here.join(name).display())),
    }
}

/// Opens the directory `name` in `dir` (or `/`) as `O_PATH`, never through a symlink.
fn open_dir(dir: Option<&OwnedFd>, name: &OsStr) -> nix::Result<OwnedFd> {
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    match dir {
        Some(dir) => nix::fcntl::openat(dir, name, flags, Mode::empty()),
        None => nix::fcntl::open(name, flags, Mode::empty()),
    }
}

/// The directory `dir` (at `here`), whose entries we are about to trust: only root or us may
/// change them, or, in a sticky directory, only each entry's owner.
fn crossed(dir: &OwnedFd, here: &Path, euid: u32) -> Result<(), String> {
    let stat = nix::sys::stat::fstat(dir).map_err(|e| format!("{}: {e}", here.display()))?;
    check_crossed(stat.st_uid, stat.st_mode, here, euid)
}

/// The rule of [`crossed`], on a directory's owner and mode.
pub fn check_crossed(uid: u32, mode: u32, dir: &Path, euid: u32) -> Result<(), String> {
    if !trusted_owner(uid, euid) {
        return Err(format!(
            "{} belongs to {}, who could replace what is in it",
            dir.display(),
            owner(uid)
        ));
    }
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return Err(format!(
            "{} (mode {:04o}) is writable by others without the sticky bit, so they could \
             replace what is in it",
            dir.display(),
            mode & 0o7777
        ));
    }
    Ok(())
}

/// The components of `path` still to walk, last first (popped from the end).
pub fn parts(path: &Path) -> Vec<OsString> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    fn euid() -> u32 {
        nix::unistd::geteuid().as_raw()
    }

    #[test]
    fn parts_are_walked_in_order() {
        let mut todo = parts(Path::new("/a/./b/../c"));
        let mut seen = Vec::new();
        while let Some(p) = todo.pop() {
            seen.push(p.into_string().unwrap());
        }
        assert_eq!(seen, ["a", "b", "..", "c"]);
    }

    #[test]
    fn follows_trusted_links_and_creates_below_them() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink("real", dir.path().join("link")).unwrap();
        let walked = walk(&dir.path().join("link"), euid(), Missing::Refuse).unwrap();
        assert_eq!(walked.real, real.canonicalize().unwrap());
        let made = dir.path().join("link/a/../b/c");
        let walked = walk(&made, euid(), Missing::Create(0o755)).unwrap();
        assert_eq!(walked.real, real.canonicalize().unwrap().join("b/c"));
        assert!(real.join("b/c").is_dir() && real.join("a").is_dir());
        assert!(walk(&dir.path().join("nothing"), euid(), Missing::Refuse).is_err());
    }

    /// A missing component is made in the directory that was checked, whatever its name names
    /// by then: the walk never follows a name it has not looked at.
    #[test]
    fn never_creates_through_a_link_of_another_user() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o1777)).unwrap();
        let theirs = dir.path().join("theirs");
        fs::create_dir(&theirs).unwrap();
        let link = dir.path().join("a");
        std::os::unix::fs::symlink(&theirs, &link).unwrap();
        nix::unistd::fchownat(
            nix::fcntl::AT_FDCWD,
            &link,
            Some(nix::unistd::Uid::from_raw(65534)),
            None,
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .unwrap();
        let why = walk(&link.join("b"), 0, Missing::Create(0o755)).unwrap_err();
        assert!(why.contains("uid 65534"), "{why}");
        assert_eq!(fs::read_dir(&theirs).unwrap().count(), 0);
    }
}
