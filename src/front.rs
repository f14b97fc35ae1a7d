//! The front: what a job-control shell sees of elect at a terminal.
//!
//! # Why
//! A shell learns that its foreground job was suspended (Ctrl-Z) only when the process it started
//! stops. elect must not stop: a stopped elect cannot renew the lease, and the watchdog would then
//! kill the job at the deadline. So when elect runs in the foreground of a terminal, led by a
//! job-control shell, the process the shell started stays behind as a thin front, and elect
//! proper goes on in a child, in a process group of its own:
//!
//! ```text
//! shell ── front (the shell's job; stops and continues) ── elect ── watchdog ── job (terminal)
//! ```
//!
//! - Ctrl-Z stops the job, whose group has the terminal. The watchdog sees the stop and stops the
//!   front with the same signal, so the shell prints `Stopped` and takes the terminal back; elect
//!   keeps renewing the lease meanwhile.
//! - `fg` or `bg` continues the front, which passes SIGCONT on to elect's group; the watchdog then
//!   continues the job, with the terminal if the shell gave it to the front (`fg`).
//! - Signals sent to the front (`kill %1`) are passed to elect, which forwards them to the job
//!   once, as always.
//! - The front exits with elect's status. If the front is killed, elect gets SIGTERM
//!   (PR_SET_PDEATHSIG) and shuts down as it does on SIGTERM.
//!
//! Without a terminal (cron, systemd, CI) there is no front: elect is the process that was started.

use std::io;
use std::os::fd::AsFd;

use nix::errno::Errno;
use nix::sys::signal::{self, killpg, SigHandler, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, getpgrp, getpid, getppid, getsid, setpgid, tcgetpgrp, ForkResult, Pid};

use crate::signals::FORWARDED;

/// The front of this elect, when it has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Front {
    pub pid: Pid,
    /// The shell's job: the process group that has the terminal while the job does not.
    pub group: Pid,
}

/// The process group that has the terminal while the job does not: the shell's job, which is the
/// front's group when there is a front, or elect's own group.
pub fn home_group(front: Option<Front>) -> Pid {
    front.map_or_else(getpgrp, |front| front.group)
}

/// Whether this process is a job that a job-control shell started in the foreground of the
/// terminal on stdin: it leads its own process group, that group has the terminal, and it does
/// not lead the session (nobody would continue a stopped session leader).
fn is_foreground_job() -> bool {
    let stdin = io::stdin();
    let me = getpid();
    nix::unistd::isatty(stdin.as_fd()).unwrap_or(false)
        && getpgrp() == me
        && tcgetpgrp(stdin.as_fd()).ok() == Some(me)
        && getsid(None).ok() != Some(me)
}

/// Leaves a front behind when elect is a foreground job of a job-control shell, and returns in
/// elect proper (the child) with the front's identity. Otherwise returns `None` at once. Must be
/// called while the process has a single thread; the front itself never returns.
pub fn split() -> io::Result<Option<Front>> {
    if !is_foreground_job() {
        return Ok(None);
    }
    let front = Front {
        pid: getpid(),
        group: getpgrp(),
    };
    // SAFETY: single-threaded (the caller's contract), so the child may run ordinary code.
    match unsafe { fork() }? {
        ForkResult::Child => {
            // Both sides set the group, as shells do, so neither depends on who runs first.
            let _ = setpgid(Pid::from_raw(0), Pid::from_raw(0));
            nix::sys::prctl::set_pdeathsig(Signal::SIGTERM)?;
            if getppid() != front.pid {
                // The front died before the death signal was armed.
                signal::raise(Signal::SIGTERM)?;
            }
            // elect is now in a background group: it must neither stop when it writes to the
            // terminal (TOSTOP) nor be stopped by a job-control signal.
            for sig in [Signal::SIGTTOU, Signal::SIGTTIN, Signal::SIGTSTP] {
                // SAFETY: SIG_IGN installs no handler code.
                unsafe { signal::signal(sig, SigHandler::SigIgn) }?;
            }
            Ok(Some(front))
        }
        ForkResult::Parent { child } => {
            let _ = setpgid(child, child);
            let code = serve(child).unwrap_or_else(|err| {
                eprintln!("elect: error: front: {err}");
                crate::exit::code::INTERNAL
            });
            std::process::exit(i32::from(code))
        }
    }
}

/// The front's life: pass signals to elect until it ends, then end the same way.
fn serve(elect: Pid) -> io::Result<u8> {
    let mut mask = SigSet::empty();
    for sig in FORWARDED.iter().chain(&[Signal::SIGCHLD, Signal::SIGCONT]) {
        mask.add(*sig);
    }
    mask.thread_block()?;
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC)?;
    loop {
        match waitpid(elect, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(u8::try_from(code).unwrap_or(1)),
            Ok(WaitStatus::Signaled(_, sig, _)) => end_by(sig),
            Ok(_) | Err(Errno::EINTR) => {}
            Err(err) => return Err(err.into()),
        }
        let Some(info) = signals.read_signal()? else {
            continue;
        };
        let Ok(sig) = Signal::try_from(info.ssi_signo as i32) else {
            continue;
        };
        match sig {
            Signal::SIGCHLD => {}
            // The shell continued its job (`fg`, `bg`): elect's watchdog continues the job.
            Signal::SIGCONT => {
                let _ = killpg(elect, Signal::SIGCONT);
            }
            sig => {
                let _ = signal::kill(elect, sig);
            }
        }
    }
}

/// Ends the front by the signal that ended elect, so the shell reports the same.
fn end_by(sig: Signal) -> ! {
    // SAFETY: SIG_DFL installs no handler code.
    let _ = unsafe { signal::signal(sig, SigHandler::SigDfl) };
    let mut only = SigSet::empty();
    only.add(sig);
    let _ = only.thread_unblock();
    let _ = signal::raise(sig);
    std::process::exit(128 + sig as i32)
}
