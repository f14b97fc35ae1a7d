//! Runs in the watchdog: starts the release of elect's lease by a fresh process, when elect died
//! holding it and no process of the job is left (see [`crate::handoff`]). No network code here:
//! a fork, a pipe and an `fexecve` of the binary opened at start-up.

use std::ffi::CString;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use nix::fcntl::{open, OFlag};
use nix::sys::signal::{self, SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::stat::Mode;
use nix::unistd::{fexecve, fork, pipe2, ForkResult};

/// elect's own binary, opened at start-up: the release runs the binary that took the lease, even
/// if a package upgrade has replaced the file on disk since.
pub struct Binary(OwnedFd);

impl Binary {
    pub fn open() -> Option<Self> {
        open(
            "/proc/self/exe",
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .ok()
        .map(Self)
    }

    /// Forks the release mode with `identity` on its stdin, and returns without waiting for it:
    /// the process ends on its own within [`crate::handoff::LIMIT`] (and is then reaped by init or
    /// the nearest subreaper, the watchdog being gone by then).
    pub fn release(&self, identity: &[u8]) -> io::Result<()> {
        let argv = [CString::new(crate::handoff::ARGV0).expect("no NUL in a constant")];
        // elect's environment, as the watchdog has it: the variables a backend reads its password
        // from are there, and the identity adds none.
        let env: Vec<CString> = std::env::vars_os()
            .filter_map(|(k, v)| CString::new([k.as_bytes(), b"=", v.as_bytes()].concat()).ok())
            .collect();
        let (read, write) = pipe2(OFlag::O_CLOEXEC)?;
        // SAFETY: the watchdog is single-threaded, so the child is a complete copy and may run
        // ordinary code before its exec.
        match unsafe { fork() }? {
            ForkResult::Child => {
                drop(write);
                // SAFETY: dup2 and fcntl take descriptors and flags; descriptor 0 becomes the pipe,
                // kept across the exec (dup2 onto itself would keep close-on-exec: cleared here).
                unsafe {
                    nix::libc::dup2(read.as_raw_fd(), 0);
                    nix::libc::fcntl(0, nix::libc::F_SETFD, 0);
                }
                reset_signals();
                let _ = fexecve(self.0.as_fd(), &argv, &env);
                // SAFETY: _exit only ends the process.
                unsafe { nix::libc::_exit(127) }
            }
            ForkResult::Parent { .. } => {
                drop(read);
                // An identity is far below a pipe's buffer: this write does not block.
                let mut write = std::fs::File::from(write);
                write.write_all(identity)
            }
        }
    }
}

/// Undoes what the watchdog set for itself, which an exec would keep: the ignored signals (the
/// release must stay killable by SIGTERM and Ctrl-C) and the blocked ones.
fn reset_signals() {
    for sig in crate::signals::FORWARDED.iter().chain(&[
        Signal::SIGTSTP,
        Signal::SIGTTIN,
        Signal::SIGTTOU,
        Signal::SIGPIPE,
    ]) {
        // SAFETY: SIG_DFL installs no handler code.
        let _ = unsafe { signal::signal(*sig, SigHandler::SigDfl) };
    }
    let _ = signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
}
