//! The job in a PID namespace of its own (`--pid-namespace`). Runs in the launcher, and in the
//! two processes it forks.
//!
//! # Why
//! When elect and its watchdog are killed together (`pkill -9 elect`), no process of elect's is
//! left to stop what the job started in the background, and on a network backend the lease
//! expires while it runs on. A PID namespace leaves that to the kernel: when the first process of
//! a namespace (its init) ends, the kernel kills every other process in it, setsid'd and
//! daemonized ones included. Container runtimes keep the same promise this way.
//!
//! # Shape
//! ```text
//! watchdog
//! └─ launcher       outside the namespace: the job's process group, what elect and the watchdog
//!    │              know as the job's main process
//!    ├─ init        pid 1 of the namespace: reaps orphans, stops what the job leaves
//!    └─ the job     pid 2: the command
//! ```
//! The launcher unshares CLONE_NEWPID (it stays where it is; its next children are in the new
//! namespace) and forks init, then the job. Each asks for SIGKILL when the launcher dies, as the
//! launcher does when the watchdog dies: the watchdog's death, or a SIGKILL of the launcher by the
//! watchdog or by elect, ends init, and the kernel empties the namespace.
//!
//! The job is not the namespace's init, so its signals are what they would be without the
//! namespace (an init ignores every signal it has no handler for). It is in the launcher's process
//! group, so the watchdog's stops, elect's forwarded signals and the terminal's Ctrl-C reach it as
//! before. The launcher passes the job's life on to the watchdog: it stops with the job's stop
//! signal (Ctrl-Z), and ends with the job's exit code or of the job's signal.
//!
//! When the job's main process ends, the launcher tells init (a pipe closes), which stops what the
//! job left running as the watchdog does outside: SIGTERM and SIGCONT to every process of the
//! namespace, then, after the grace, it ends and the kernel kills the rest. The launcher ends after
//! init, so the watchdog sees the job end only once the namespace is empty.
//!
//! # What the job sees
//! Its own pids: `$$` is 2, and a pidfile it writes holds a pid of the namespace. `/proc` is the
//! machine's (no mount namespace: a job's mounts stay the machine's), so `ps` and `pgrep` list the
//! machine's pids, which the job cannot signal; nor can it signal any process outside the job
//! (`kill $(cat /run/daemon.pid)` fails with "No such process"). That is why the namespace is an
//! option: see the README.

use std::os::fd::{AsFd, OwnedFd};
use std::process::Command;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sched::CloneFlags;
use nix::sys::signal::{self, SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, getppid, ForkResult, Pid};

use super::{answer, become_job, quit};
use crate::clock::BootTime;

/// Runs `job` in a new PID namespace, and passes its end on as this process's own. `socket` is
/// the launcher's end of elect's: the job answers elect on it, as the launcher does without a
/// namespace.
pub fn run(job: Command, socket: OwnedFd, grace: Duration) -> ! {
    if let Err(e) = nix::sched::unshare(CloneFlags::CLONE_NEWPID) {
        answer(&socket, e as i32)
    }
    let (ended_r, ended_w) = match nix::unistd::pipe2(OFlag::O_CLOEXEC) {
        Ok(pipe) => pipe,
        Err(e) => answer(&socket, e as i32),
    };
    // SAFETY: the launcher is single-threaded (a fork of the single-threaded watchdog), so the
    // child is a complete copy of it and may run ordinary code.
    let init = match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            drop(socket);
            drop(ended_w);
            serve_init(ended_r, grace)
        }
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => answer(&socket, e as i32),
    };
    drop(ended_r);
    // SAFETY: as above.
    let main = match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            drop(ended_w);
            // The launcher is outside the namespace: its pid here is 0. Were it gone already,
            // this process would have been re-parented to init.
            if signal_on_parent_death().is_err() || getppid() != Pid::from_raw(0) {
                quit(0);
            }
            become_job(job, &socket)
        }
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => answer(&socket, e as i32),
    };
    // elect reads end of file once the job's copy closes at its exec.
    drop(socket);
    pass_on(main, init, ended_w)
}

fn signal_on_parent_death() -> nix::Result<()> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
}

/// The namespace's init: reaps what is re-parented to it while the job's main process runs, then
/// stops what is left (see the module doc) and ends, which ends the namespace.
fn serve_init(ended: OwnedFd, grace: Duration) -> ! {
    if signal_on_parent_death().is_err() {
        quit(0);
    }
    crate::watchdog::title::set("lease-pid-init", "elect: init of the job's PID namespace");
    // SIGCHLD is blocked (the watchdog's mask): read it from a descriptor, beside the pipe.
    let mut chld = SigSet::empty();
    chld.add(Signal::SIGCHLD);
    let Ok(children) = SignalFd::with_flags(&chld, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
    else {
        quit(0)
    };
    loop {
        reap();
        let mut fds = [
            PollFd::new(ended.as_fd(), PollFlags::POLLIN),
            PollFd::new(children.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => break,
        }
        while let Ok(Some(_)) = children.read_signal() {}
        // End of file: the job's main process has ended, or the launcher is gone.
        if fds[0].revents().is_some_and(|r| !r.is_empty()) {
            break;
        }
    }
    // From init, -1 is every other process of the namespace, and none outside it.
    let everyone = Pid::from_raw(-1);
    let _ = signal::kill(everyone, Signal::SIGTERM);
    let _ = signal::kill(everyone, Signal::SIGCONT);
    let kill_at = BootTime::now() + grace;
    while reap() != Errno::ECHILD && BootTime::now() < kill_at {
        std::thread::sleep(Duration::from_millis(20));
    }
    // The kernel kills whatever is left.
    quit(0)
}

/// Reaps every child that has ended; says why it stopped (ECHILD: no child left).
fn reap() -> Errno {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => return Errno::EAGAIN,
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return e,
        }
    }
}

/// Waits for the job's main process and for init, mirroring the job's stops, and ends as the job
/// did. `ended` closes when the job's main process has ended, which tells init.
fn pass_on(main: Pid, init: Pid, ended: OwnedFd) -> ! {
    let mut ended = Some(ended);
    let mut exit = None;
    let mut init_gone = false;
    while exit.is_none() || !init_gone {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WUNTRACED)) {
            Ok(WaitStatus::Stopped(pid, sig)) if pid == main => stop_with(main, sig),
            Ok(status @ (WaitStatus::Exited(pid, _) | WaitStatus::Signaled(pid, _, _)))
                if pid == main =>
            {
                exit = Some(status);
                ended = None;
            }
            Ok(WaitStatus::Exited(pid, _) | WaitStatus::Signaled(pid, _, _)) if pid == init => {
                init_gone = true;
            }
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => break,
        }
    }
    drop(ended);
    match exit {
        Some(WaitStatus::Exited(_, code)) => quit(code),
        Some(WaitStatus::Signaled(_, sig, _)) => die_of(sig),
        // Cannot happen: the job's main process is this process's child until reaped here.
        _ => quit(70),
    }
}

/// The job's main process stopped: this process stops the same way, which the watchdog sees (and
/// mirrors on the front at a terminal); continued, it continues the job.
fn stop_with(main: Pid, sig: Signal) {
    // The launcher ignores TSTP, TTIN and TTOU (the watchdog's dispositions): default for the
    // raise, ignored again after. SIGSTOP cannot be ignored, nor its disposition set.
    // SAFETY: SIG_DFL and SIG_IGN install no handler code.
    let _ = unsafe { signal::signal(sig, SigHandler::SigDfl) };
    let mut only = SigSet::empty();
    only.add(sig);
    let _ = signal::sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&only), None);
    let _ = signal::raise(sig);
    // SAFETY: as above.
    let _ = unsafe { signal::signal(sig, SigHandler::SigIgn) };
    let _ = signal::kill(main, Signal::SIGCONT);
}

/// Ends this process by the signal that ended the job, so that the watchdog reads the same wait
/// status; with the core size limit at zero, so a crash of the job leaves no core of the launcher.
fn die_of(sig: Signal) -> ! {
    let no_core = nix::libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit reads the struct, which lives across the call.
    unsafe { nix::libc::setrlimit(nix::libc::RLIMIT_CORE, &no_core) };
    // SAFETY: SIG_DFL installs no handler code.
    let _ = unsafe { signal::signal(sig, SigHandler::SigDfl) };
    let _ = signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    let _ = signal::raise(sig);
    // A signal whose default is not to end the process: the shell's convention.
    quit(128 + sig as i32)
}
