//! Reading `/proc/locks`: which files are flocked, and by which process.
//!
//! `/proc/locks` names a file by the device of its filesystem's superblock and its inode number.
//! `stat` may give another device for the same file: on btrfs every subvolume has a device of its
//! own (the top-level one included), and other filesystems do the same. So a file's devices are
//! both: the one `stat` gives, and the superblock's, which `/proc/self/mountinfo` shows for the
//! mount the file was opened through (its `mnt_id` in `/proc/self/fdinfo`). A flock is on the
//! file when its inode matches and its device is either.

use std::fs::{self, File, Metadata};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;

/// One held flock from `/proc/locks` (waiters, shown with `->`, are left out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flock {
    /// Taken with `LOCK_EX` (`WRITE`), not `LOCK_SH` (`READ`).
    pub exclusive: bool,
    /// The process that took it, as this process's pid namespace sees it; 0 or less when it is
    /// not visible here.
    pub pid: i32,
    pub major: u64,
    pub minor: u64,
    pub ino: u64,
}

/// The devices (major, minor) under which `/proc/locks` may name an open file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Devices {
    /// From `stat`.
    stat: (u64, u64),
    /// The superblock's, from the file's mount, when it can be read.
    mount: Option<(u64, u64)>,
}

impl Devices {
    /// The devices of `file`, whose metadata is `meta`.
    pub fn of(file: &File, meta: &Metadata) -> Self {
        let dev = meta.dev();
        let mount = fs::read_to_string(format!("/proc/self/fdinfo/{}", file.as_raw_fd()))
            .ok()
            .and_then(|info| mount_id(&info))
            .and_then(|id| {
                let table = fs::read_to_string("/proc/self/mountinfo").ok()?;
                mount_device(&table, id)
            });
        Self {
            stat: (nix::sys::stat::major(dev), nix::sys::stat::minor(dev)),
            mount,
        }
    }

    fn contain(&self, major: u64, minor: u64) -> bool {
        self.stat == (major, minor) || self.mount == Some((major, minor))
    }
}

impl Flock {
    pub fn is_on(&self, devices: &Devices, ino: u64) -> bool {
        self.is_on_device(devices) && self.ino == ino
    }

    pub fn is_on_device(&self, devices: &Devices) -> bool {
        devices.contain(self.major, self.minor)
    }
}

/// This process's own exclusive flock on an open file, as the file's `/proc/self/fdinfo` shows
/// it: how a holder checks later that its lock is still its own, since any process that
/// inherited the descriptor can unlock it or take it as its own (`flock -u`, `flock -s`).
///
/// fdinfo lists the locks of that one open file description, under the inode's own spinlock.
/// `/proc/locks` would do too, but reading it takes the kernel's file-lock lock for writing,
/// which waits for an RCU grace period (see `read`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnFlock {
    /// This process as `/proc` numbers it (the pid namespace of the `/proc` mount).
    pid: i32,
}

impl OwnFlock {
    /// Our flock on `file`, if its fdinfo shows it (it does not without `/proc`, or on a kernel
    /// that does not list locks there).
    pub fn of(file: &File) -> Option<Self> {
        let pid = fs::read_link("/proc/self").ok()?.to_str()?.parse().ok()?;
        let own = Self { pid };
        own.is_held_on(file).then_some(own)
    }

    /// Whether the fdinfo of `file` still shows it; `true` when it cannot be read.
    pub fn is_held_on(&self, file: &File) -> bool {
        fs::read_to_string(format!("/proc/self/fdinfo/{}", file.as_raw_fd()))
            .map_or(true, |info| self.is_in(&info))
    }

    /// Whether the text of an fdinfo file shows this process's exclusive flock.
    fn is_in(&self, fdinfo: &str) -> bool {
        fdinfo
            .lines()
            .filter_map(|line| line.strip_prefix("lock:"))
            .filter_map(parse)
            .any(|f| f.exclusive && f.pid == self.pid)
    }
}

/// The `mnt_id` in the text of `/proc/PID/fdinfo/FD`.
fn mount_id(fdinfo: &str) -> Option<u64> {
    fdinfo
        .lines()
        .find_map(|line| line.strip_prefix("mnt_id:"))
        .and_then(|id| id.trim().parse().ok())
}

/// The superblock device (major, minor) of mount `id` in the text of `/proc/PID/mountinfo`:
/// "36 35 0:45 / /srv rw,relatime shared:1 - btrfs /dev/loop0 rw".
fn mount_device(mountinfo: &str, id: u64) -> Option<(u64, u64)> {
    mountinfo.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        if fields.next()?.parse::<u64>().ok()? != id {
            return None;
        }
        let (major, minor) = fields.nth(1)?.split_once(':')?;
        Some((major.parse().ok()?, minor.parse().ok()?))
    })
}

/// The table, read afresh, in one `read` where it fits. Each `read` of `/proc/locks` takes the
/// kernel's file-lock lock for writing, and the first after a quiet spell waits for an RCU grace
/// period (4 to 16 ms on an idle virtual machine, during which every flock(2) on the machine
/// waits too): `read_to_string` alone would start with a 32-byte read.
pub fn read() -> std::io::Result<String> {
    let mut file = File::open("/proc/locks")?;
    let mut text = String::with_capacity(64 * 1024);
    file.read_to_string(&mut text)?;
    Ok(text)
}

/// The held flocks in the text of `/proc/locks`.
pub fn flocks(text: &str) -> impl Iterator<Item = Flock> + '_ {
    text.lines().filter_map(parse)
}

/// One line of `/proc/locks` (or a `lock:` line of fdinfo): "1: FLOCK  ADVISORY  WRITE 4242
/// fd:01:123 0 EOF"; a flock, not a waiter ("1: -> FLOCK ..."), or `None`.
fn parse(line: &str) -> Option<Flock> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.get(1) != Some(&"FLOCK") {
        return None;
    }
    let exclusive = fields.get(3) == Some(&"WRITE");
    let pid = fields.get(4)?.parse().ok()?;
    let mut id = fields.get(5)?.split(':');
    let major = u64::from_str_radix(id.next()?, 16).ok()?;
    let minor = u64::from_str_radix(id.next()?, 16).ok()?;
    let ino = id.next()?.parse().ok()?;
    Some(Flock {
        exclusive,
        pid,
        major,
        minor,
        ino,
    })
}

/// Whether `/proc/locks` lists a flock on the file `ino` of `devices`.
pub fn is_flocked(text: &str, devices: &Devices, ino: u64) -> bool {
    flocks(text).any(|f| f.is_on(devices, ino))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(major: u64, minor: u64) -> Devices {
        Devices {
            stat: (major, minor),
            mount: None,
        }
    }

    #[test]
    fn proc_locks_lines() {
        let text = "1: FLOCK  ADVISORY  WRITE 4242 fd:01:123 0 EOF\n\
                    1: -> FLOCK  ADVISORY  WRITE 4243 fd:01:456 0 EOF\n\
                    2: POSIX  ADVISORY  WRITE 99 fd:01:789 0 EOF\n\
                    3: FLOCK  ADVISORY  WRITE -1 103:1a:77 0 EOF\n";
        let dev = on(0xfd, 0x01);
        assert!(is_flocked(text, &dev, 123));
        assert!(!is_flocked(text, &dev, 456), "a waiter is not a holder");
        assert!(!is_flocked(text, &dev, 789), "a POSIX lock is not ours");
        let other = flocks(text).last().unwrap();
        assert_eq!(
            (other.pid, other.major, other.minor, other.ino),
            (-1, 0x103, 0x1a, 77)
        );
        assert!(other.is_on(&on(0x103, 0x1a), 77));
    }

    /// On btrfs, `stat` gives the subvolume's device (here 0:52) and `/proc/locks` the
    /// superblock's (0:45), which mountinfo shows for the mount.
    #[test]
    fn a_btrfs_file_is_found_by_its_mounts_device() {
        let fdinfo = "pos:\t0\nflags:\t02100000\nmnt_id:\t36\nino:\t257\n";
        let mountinfo = "22 27 0:21 / /proc rw,relatime - proc proc rw\n\
                         36 27 0:45 / /srv rw,relatime shared:1 - btrfs /dev/loop0 rw,space_cache=v2\n\
                         37 36 0:45 /sub /mnt rw,relatime - btrfs /dev/loop0 rw\n";
        assert_eq!(mount_id(fdinfo), Some(36));
        assert_eq!(mount_device(mountinfo, 36), Some((0, 45)));
        assert_eq!(mount_device(mountinfo, 99), None);
        let devices = Devices {
            stat: (0, 52),
            mount: mount_device(mountinfo, 36),
        };
        let text = "1: FLOCK  ADVISORY  WRITE 4242 00:2d:257 0 EOF\n";
        assert!(is_flocked(text, &devices, 257));
        assert!(
            !is_flocked(text, &on(0, 52), 257),
            "stat's device alone misses it"
        );
        assert!(!is_flocked(text, &devices, 258));
    }

    #[test]
    fn an_own_flock_is_ours_only() {
        let own = OwnFlock { pid: 4242 };
        let info =
            |lock: &str| format!("pos:\t0\nflags:\t02504000\nmnt_id:\t27\nino:\t123\n{lock}");
        assert!(own.is_in(&info(
            "lock:\t1: FLOCK  ADVISORY  WRITE 4242 fd:01:123 0 EOF\n"
        )));
        assert!(
            !own.is_in(&info(
                "lock:\t1: FLOCK  ADVISORY  WRITE 4243 fd:01:123 0 EOF\n"
            )),
            "another process took it"
        );
        assert!(
            !own.is_in(&info(
                "lock:\t1: FLOCK  ADVISORY  READ 4242 fd:01:123 0 EOF\n"
            )),
            "made shared"
        );
        assert!(!own.is_in(&info("")), "released");
    }

    /// The flocked file's fdinfo shows the lock of its own description only.
    #[test]
    fn fdinfo_shows_a_flock_of_this_description() {
        let file = tempfile::tempfile().unwrap();
        let other = file.try_clone().unwrap();
        file.lock().unwrap();
        let own = OwnFlock::of(&file).expect("fdinfo lists locks");
        assert!(own.is_held_on(&other), "a duplicate shares the description");
        other.unlock().unwrap();
        assert!(!own.is_held_on(&file), "unlocked through the duplicate");
    }
}
