//! What `/proc` says about processes, for the watchdog and for elect's own guard (`job::guard`):
//! the descendants of a process, and the state of one.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// Every descendant of `root`, from `/proc/<pid>/task/<tid>/children`, leaving out the processes
/// of `skip` and theirs.
pub fn descendants(root: Pid, skip: &[Pid]) -> Vec<Pid> {
    let mut found = Vec::new();
    let mut queue = vec![root];
    while let Some(pid) = queue.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let path = task.path().join("children");
            let Ok(text) = std::fs::read_to_string(path) else {
                continue;
            };
            for child in text.split_whitespace().filter_map(|p| p.parse().ok()) {
                let child = Pid::from_raw(child);
                if !found.contains(&child) && !skip.contains(&child) {
                    found.push(child);
                    queue.push(child);
                }
            }
        }
    }
    found
}

/// The fields of `/proc/<pid>/stat` from the state on (the command name before them may hold
/// spaces and parentheses).
fn stat_fields(pid: Pid) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// How a process stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Running, sleeping, waiting for the disk: it may still act.
    Live,
    /// Stopped by a signal or a tracer: it cannot act until continued.
    Stopped,
    /// Ended: a zombie, or reaped and gone.
    Ended,
}

/// The state of `pid`.
pub fn state(pid: Pid) -> State {
    match stat_fields(pid).as_deref().and_then(<[String]>::first) {
        None => State::Ended,
        Some(s) => match s.as_str() {
            "Z" | "X" | "x" => State::Ended,
            "T" | "t" => State::Stopped,
            _ => State::Live,
        },
    }
}

/// The parent of `pid`, if it is still there.
pub fn parent(pid: Pid) -> Option<Pid> {
    stat_fields(pid)?.get(1)?.parse().ok().map(Pid::from_raw)
}

/// The wait status of a zombie (field 52 of `/proc/<pid>/stat`, as waitpid(2) would give it).
pub fn exit_status(pid: Pid) -> Option<i32> {
    stat_fields(pid)?.get(49)?.parse().ok()
}

/// A process held by a pidfd: a signal sent through it reaches that process, or nothing once it
/// has ended, and never another process that was given the same pid since.
#[derive(Debug)]
pub struct Pinned {
    fd: OwnedFd,
}

/// `PIDFD_SIGNAL_PROCESS_GROUP` (Linux 6.9): signal the process group of the pidfd's process.
const PIDFD_SIGNAL_PROCESS_GROUP: nix::libc::c_uint = 1 << 2;

impl Pinned {
    /// Pins `pid`, whichever process has it now: check after pinning that it is the one meant.
    pub fn open(pid: Pid) -> Option<Self> {
        // SAFETY: pidfd_open takes a pid and flags, and returns a new descriptor or -1.
        let fd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid.as_raw(), 0) };
        let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0)?;
        // SAFETY: the kernel just returned this descriptor, and nothing else owns it.
        Some(Self {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    fn send(&self, sig: Signal, flags: nix::libc::c_uint) -> nix::Result<()> {
        // SAFETY: pidfd_send_signal reads no memory when `info` is null.
        let r = unsafe {
            nix::libc::syscall(
                nix::libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                sig as i32,
                std::ptr::null::<nix::libc::siginfo_t>(),
                flags,
            )
        };
        Errno::result(r).map(drop)
    }

    /// Signals the pinned process.
    pub fn signal(&self, sig: Signal) {
        let _ = self.send(sig, 0);
    }

    /// Signals the process group that the pinned process leads or led: the group by its kernel
    /// identity, not its number, so a group made later under the same number is not signalled.
    /// Linux before 6.9 cannot: then EINVAL.
    pub fn signal_group(&self, sig: Signal) -> nix::Result<()> {
        self.send(sig, PIDFD_SIGNAL_PROCESS_GROUP)
    }
}

/// Signals every descendant of `root` (as [`descendants`], leaving out `skip` and theirs); see
/// [`signal_each`].
pub fn signal_descendants(root: Pid, skip: &[Pid], sig: Signal) {
    let found = descendants(root, skip);
    let mut family = found.clone();
    family.push(root);
    signal_each(&found, &family, sig);
}

/// Signals each of `pids` through a pidfd, and only if, once pinned, its parent is one of
/// `family`: a pid that ended and was given to an unrelated process since it was found is left
/// alone. (A process that ends after the check gets nothing: the pidfd still names it.)
pub fn signal_each(pids: &[Pid], family: &[Pid], sig: Signal) {
    for &pid in pids {
        let Some(pinned) = Pinned::open(pid) else {
            continue;
        };
        if parent(pid).is_some_and(|p| family.contains(&p)) {
            pinned.signal(sig);
        }
    }
}

/// The process group of `pid`, if it is still there.
pub fn group(pid: Pid) -> Option<Pid> {
    stat_fields(pid)?.get(2)?.parse().ok().map(Pid::from_raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleeper() -> std::process::Child {
        std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("start sleep")
    }

    /// A pid whose parent is not among the family it was found in (as after a reuse) is left
    /// alone; the same pid under its real parent is signalled.
    #[test]
    fn signals_only_pids_whose_parent_is_in_the_family() {
        let mut child = sleeper();
        let pid = Pid::from_raw(child.id() as i32);
        signal_each(&[pid], &[Pid::from_raw(1)], Signal::SIGKILL);
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert_eq!(state(pid), State::Live, "a stranger's pid was signalled");
        signal_each(&[pid], &[Pid::this()], Signal::SIGKILL);
        let status = child.wait().expect("reap sleep");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
    }

    /// A pidfd names its process, not its number: once that process is reaped, signalling
    /// through it reaches nothing.
    #[test]
    fn a_pinned_process_that_ended_is_not_signalled_again() {
        let mut child = sleeper();
        let pid = Pid::from_raw(child.id() as i32);
        let pinned = Pinned::open(pid).expect("pidfd_open");
        pinned.signal(Signal::SIGKILL);
        child.wait().expect("reap sleep");
        assert_eq!(pinned.send(Signal::SIGKILL, 0), Err(Errno::ESRCH));
        assert!(group(Pid::this()).is_some());
    }
}
