//! The job's process, forked ahead of the lease and waiting for the word to exec.
//!
//! # Why ahead
//! A fork copies the forking process's page tables and then copy-on-write faults in both
//! processes; with a watchdog that is itself a copy of elect, that costs about as much as the
//! job's own exec. Forked by the watchdog while elect is still parsing its arguments and taking
//! the lease, on another core, that cost is off the path from "lease taken" to "job running".
//!
//! # What the launcher does before the word
//! It moves into a process group of its own (which will be the job's, so the watchdog can signal
//! the group) and asks for SIGKILL if the watchdog dies. It keeps the watchdog's dispositions, in
//! which every signal elect forwards is ignored, so a stray `pkill elect` while elect waits for
//! the lease does not kill it. Then it blocks on its socket; end of file (elect ended without a
//! lease) makes it exit quietly.
//!
//! # The word and the answer
//! The socket is a SOCK_SEQPACKET pair that elect made before forking the watchdog, so the word
//! comes from elect itself, in one hop: the same `start` order (see [`super::protocol`]) that
//! elect has just sent the watchdog, so the watchdog knows the deadline before the job runs.
//! The launcher takes the terminal's foreground if told to (while SIGTTOU is still ignored),
//! resets every disposition to the default and clears the mask, goes back to elect's CPUs (see
//! [`super::placement`]), and execs the command (with a search of PATH). Its end of the socket is
//! close-on-exec: elect reads end of file when the exec succeeded, or the exec's errno.
//!
//! With `--pid-namespace` the launcher does not exec: it makes a PID namespace, forks its init
//! and the job into it, and stays as the job's main process for the watchdog (see `namespace`).

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::errno::Errno;
use nix::sys::signal::{self, SigSet, SigmaskHow, Signal};
use nix::sys::socket::{recvmsg, send, MsgFlags};
use nix::sys::wait::waitpid;
use nix::unistd::{getpgrp, getppid, setpgid, Pid};

use super::placement::Cpus;
use super::protocol::{Isolation, Order};

mod namespace;

/// The largest word: a start order (at most the watchdog's 8 KiB; a few short ELECT_* variables
/// in practice). On the stack, as in the watchdog, to spare page faults.
const MAX_WORD: usize = 8 * 1024;

/// The watchdog's handle on the launcher: its pid, which is the job's.
#[derive(Debug)]
pub struct Launcher {
    pub pid: Pid,
}

impl Launcher {
    /// Forks the launcher, which keeps `socket` (its end of elect's pair); the watchdog's copy is
    /// closed. Must be called from the single-threaded watchdog.
    pub fn fork(socket: OwnedFd, cpus: Option<Cpus>) -> io::Result<Self> {
        let watchdog = Pid::this();
        // SAFETY: the watchdog is single-threaded, so the child is a complete copy of it and may
        // run ordinary code (allocate, build a Command) until it execs or exits.
        match unsafe { nix::unistd::fork() }? {
            nix::unistd::ForkResult::Child => wait_and_exec(socket, watchdog, cpus),
            nix::unistd::ForkResult::Parent { child } => {
                drop(socket);
                // From this side too, as shells do, so the group exists whichever runs first.
                let _ = setpgid(child, child);
                Ok(Self { pid: child })
            }
        }
    }

    /// Reaps a launcher that got no word: it exits when elect's end of its socket closes.
    pub fn dismiss(self) {
        let _ = waitpid(self.pid, None);
    }
}

/// The launcher's life: wait for the word, then become the job.
fn wait_and_exec(socket: OwnedFd, watchdog: Pid, cpus: Option<Cpus>) -> ! {
    let _ = setpgid(Pid::from_raw(0), Pid::from_raw(0));
    if nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).is_err() || getppid() != watchdog {
        // The watchdog is gone already (or could not be followed): no job without it.
        quit(0);
    }
    // Copied before the title overwrites them (see `title`).
    let args: Vec<OsString> = std::env::args_os().collect();
    super::title::set("lease-launcher", "elect: launcher");
    let mut word = [0u8; MAX_WORD];
    // A cut word (MSG_TRUNC) could decode with the withheld variables at its end lost: `receive`
    // refuses it, and the job never runs.
    let len = receive(&socket, &mut word);
    let Some(Order::Start {
        command_at,
        terminal,
        env,
        isolation,
        grace,
        ..
    }) = Order::decode(&word[..len])
    else {
        answer(&socket, Errno::EINVAL as i32)
    };
    // A fork of elect has elect's arguments (std keeps them from the start of the process).
    let command: Vec<OsString> = args.into_iter().skip(command_at).collect();
    if command.is_empty() {
        answer(&socket, Errno::EINVAL as i32)
    }
    if terminal {
        // SIGTTOU is still ignored here, so a background group may take the terminal.
        // SAFETY: descriptor 0 stays open for the life of this process.
        let tty = unsafe { BorrowedFd::borrow_raw(0) };
        let _ = nix::unistd::tcsetpgrp(tty, getpgrp());
    }
    if let Some(cpus) = cpus {
        cpus.restore();
    }
    let mut cmd = Command::new(&command[0]);
    cmd.args(&command[1..]);
    for (key, value) in env {
        match value {
            Some(value) => cmd.env(key, value),
            None => cmd.env_remove(key),
        };
    }
    match isolation {
        Isolation::Shared => become_job(cmd, &socket),
        Isolation::PidNamespace => namespace::run(cmd, socket, grace),
    }
}

/// Execs the job's command in this process, with every signal at its default disposition and
/// none blocked; answers elect with the errno if the exec fails.
fn become_job(mut cmd: Command, socket: &OwnedFd) -> ! {
    reset_dispositions();
    let _ = signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    let err = cmd.exec();
    answer(socket, err.raw_os_error().unwrap_or(Errno::ENOEXEC as i32))
}

/// Waits for the word; a lock file sent with it (file backend) stays open across the exec, so
/// that every process of the job holds the kernel lock (see [`crate::backend::file`]). End of
/// file: elect ended without a lease, and the launcher quits.
fn receive(socket: &OwnedFd, word: &mut [u8]) -> usize {
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    loop {
        let mut iov = [io::IoSliceMut::new(word)];
        // Without MSG_CMSG_CLOEXEC: the descriptor is the job's to inherit.
        match recvmsg::<()>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::empty(),
        ) {
            Err(Errno::EINTR) => continue,
            Ok(msg) if msg.flags.contains(MsgFlags::MSG_TRUNC) => {
                answer(socket, Errno::EMSGSIZE as i32)
            }
            Ok(msg) if msg.bytes > 0 => return msg.bytes,
            _ => quit(0),
        }
    }
}

/// Sets every signal, real-time ones included, to its default disposition. An exec keeps ignored
/// signals ignored (the watchdog's, and any elect was started with), and C libraries refuse to
/// touch the real-time signals they reserve, so this asks the kernel directly. An all-zero
/// `struct sigaction` is SIG_DFL with no flags and an empty mask whatever the architecture's
/// layout; four words cover the largest.
fn reset_dispositions() {
    let default = [0u64; 4];
    for n in 1..=64 {
        if n != nix::libc::SIGKILL && n != nix::libc::SIGSTOP {
            // SAFETY: rt_sigaction reads a struct sigaction from `default`, which is large enough
            // and lives across the call, and writes nothing (no old action asked for).
            unsafe {
                nix::libc::syscall(
                    nix::libc::SYS_rt_sigaction,
                    n,
                    default.as_ptr(),
                    std::ptr::null_mut::<u64>(),
                    8usize,
                );
            }
        }
    }
}

/// Tells elect why the exec failed, and exits as a shell does for a command it cannot run.
fn answer(socket: &OwnedFd, errno: i32) -> ! {
    let _ = send(
        socket.as_raw_fd(),
        &errno.to_ne_bytes(),
        MsgFlags::MSG_NOSIGNAL,
    );
    quit(127)
}

/// Ends the launcher without running exit handlers or flushing buffers that belong to the watchdog.
fn quit(code: i32) -> ! {
    // SAFETY: _exit only ends the process.
    unsafe { nix::libc::_exit(code) }
}
