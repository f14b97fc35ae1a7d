//! Reading `/proc/locks`: which files are flocked, and by which process.

use std::fs;
use std::path::PathBuf;

/// One held flock from `/proc/locks` (waiters, shown with `->`, are left out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flock {
    /// The process that took it, as this process's pid namespace sees it; 0 or less when it is
    /// not visible here.
    pub pid: i32,
    pub major: u64,
    pub minor: u64,
    pub ino: u64,
}

impl Flock {
    pub fn is_on(&self, dev: u64, ino: u64) -> bool {
        self.is_on_device(dev) && self.ino == ino
    }

    pub fn is_on_device(&self, dev: u64) -> bool {
        self.major == nix::sys::stat::major(dev) && self.minor == nix::sys::stat::minor(dev)
    }
}

/// The table, read afresh.
pub fn read() -> std::io::Result<String> {
    fs::read_to_string(PathBuf::from("/proc/locks"))
}

/// The held flocks in the text of `/proc/locks`.
pub fn flocks(text: &str) -> impl Iterator<Item = Flock> + '_ {
    text.lines().filter_map(|line| {
        // "1: FLOCK  ADVISORY  WRITE 4242 fd:01:123 0 EOF"; waiters are "1: -> FLOCK ...".
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(1) != Some(&"FLOCK") {
            return None;
        }
        let pid = fields.get(4)?.parse().ok()?;
        let mut id = fields.get(5)?.split(':');
        let major = u64::from_str_radix(id.next()?, 16).ok()?;
        let minor = u64::from_str_radix(id.next()?, 16).ok()?;
        let ino = id.next()?.parse().ok()?;
        Some(Flock {
            pid,
            major,
            minor,
            ino,
        })
    })
}

/// Whether `/proc/locks` lists a flock on the file `dev`/`ino`.
pub fn is_flocked(text: &str, dev: u64, ino: u64) -> bool {
    flocks(text).any(|f| f.is_on(dev, ino))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_locks_lines() {
        let text = "1: FLOCK  ADVISORY  WRITE 4242 fd:01:123 0 EOF\n\
                    1: -> FLOCK  ADVISORY  WRITE 4243 fd:01:456 0 EOF\n\
                    2: POSIX  ADVISORY  WRITE 99 fd:01:789 0 EOF\n\
                    3: FLOCK  ADVISORY  WRITE -1 103:1a:77 0 EOF\n";
        let dev = nix::sys::stat::makedev(0xfd, 0x01);
        assert!(is_flocked(text, dev, 123));
        assert!(!is_flocked(text, dev, 456), "a waiter is not a holder");
        assert!(!is_flocked(text, dev, 789), "a POSIX lock is not ours");
        let other = flocks(text).last().unwrap();
        assert_eq!(
            (other.pid, other.major, other.minor, other.ino),
            (-1, 0x103, 0x1a, 77)
        );
        assert!(other.is_on(nix::sys::stat::makedev(0x103, 0x1a), 77));
    }
}
