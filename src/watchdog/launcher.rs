//! The job's process, forked ahead of the lease and waiting for the word to exec.
//!
//! # Why ahead
//! A fork copies the forking process's page tables and then copy-on-write faults in both
//! processes; with a watchdog that is itself a copy of elect, that costs about as much as the
//! job's own exec. Forked while elect is still parsing its arguments and taking the lease, on
//! another core, that cost is off the path from "lease taken" to "job running": the watchdog
//! then only sends the word (the job's variables, and whether it gets the terminal), and the
//! launcher execs at once.
//!
//! # What the launcher does before the word
//! It moves into a process group of its own (which will be the job's, so the watchdog can signal
//! the group) and asks for SIGKILL if the watchdog dies. It keeps the watchdog's dispositions, in
//! which every signal elect forwards is ignored, so a stray `pkill elect` while elect waits for
//! the lease does not kill it. Then it blocks on its socket; end of file (elect ended without a
//! lease) makes it exit quietly.
//!
//! # The word and the answer
//! One packet on a SOCK_SEQPACKET pair: a byte saying whether to take the terminal's foreground,
//! then a `start` order (see [`super::protocol`]) with the variables to set and remove. The
//! launcher takes the terminal while SIGTTOU is still ignored, gives back the dispositions and
//! CPUs elect was started with (see [`Inherited`]), and execs the command (with a search of PATH).
//! The signal mask is elect's already: the launcher is forked before the watchdog blocks SIGCHLD.
//! Its end of the socket is close-on-exec: the watchdog reads end of file when the exec succeeded,
//! or the exec's errno.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{self, SigHandler, Signal};
use nix::sys::socket::{recv, send, MsgFlags};
use nix::sys::wait::waitpid;
use nix::unistd::{getpgrp, getppid, setpgid, Pid};

use super::placement::Cpus;
use super::protocol::Order;

/// The largest word: a start order from elect (at most the watchdog's 8 KiB, a few short ELECT_*
/// variables in practice) and a byte. On the stack, as in the watchdog, to spare page faults.
const MAX_WORD: usize = 8 * 1024 + 64;

/// Whether the job takes the terminal's foreground when it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Terminal {
    Take,
    Leave,
}

/// What the job gets back from before the watchdog: an exec resets caught signals to the default
/// but keeps ignored ones, so the signals the watchdog ignores and elect did not are set back;
/// and elect's CPUs (see [`super::placement`]).
#[derive(Debug)]
pub struct Inherited {
    pub to_default: Vec<Signal>,
    pub cpus: Option<Cpus>,
}

/// The watchdog's end of a launcher that has not been given the word yet.
#[derive(Debug)]
pub struct Launcher {
    pid: Pid,
    socket: OwnedFd,
}

impl Launcher {
    /// Forks the launcher. Must be called from the single-threaded watchdog.
    pub fn fork(inherited: Inherited) -> io::Result<Self> {
        let (ours, theirs) = super::packet_pair()?;
        let watchdog = Pid::this();
        // SAFETY: the watchdog is single-threaded, so the child is a complete copy of it and may
        // run ordinary code (allocate, build a Command) until it execs or exits.
        match unsafe { nix::unistd::fork() }? {
            nix::unistd::ForkResult::Child => {
                drop(ours);
                wait_and_exec(theirs, watchdog, inherited)
            }
            nix::unistd::ForkResult::Parent { child } => {
                // From this side too, as shells do, so the group exists whichever runs first.
                let _ = setpgid(child, child);
                Ok(Self {
                    pid: child,
                    socket: ours,
                })
            }
        }
    }

    /// Gives the word: run elect's arguments from `command_at` on, with these variables set or
    /// removed. Returns the job's pid once the command has been executed.
    pub fn go(
        self,
        command_at: usize,
        env: Vec<(OsString, Option<OsString>)>,
        terminal: Terminal,
    ) -> io::Result<Pid> {
        let mut word = vec![u8::from(terminal == Terminal::Take)];
        let start = Order::Start {
            deadline: None,
            grace: Duration::ZERO,
            command_at,
            env,
        };
        word.extend(start.encode());
        send(self.socket.as_raw_fd(), &word, MsgFlags::MSG_NOSIGNAL)?;
        let mut errno = [0u8; 4];
        let answer = loop {
            match recv(self.socket.as_raw_fd(), &mut errno, MsgFlags::empty()) {
                Err(Errno::EINTR) => continue,
                other => break other,
            }
        };
        if answer == Ok(0) {
            return Ok(self.pid);
        }
        // The launcher has answered and exits (or is gone): reap it.
        let _ = waitpid(self.pid, None);
        Err(match answer {
            Ok(_) => io::Error::from_raw_os_error(i32::from_ne_bytes(errno)),
            Err(e) => e.into(),
        })
    }

    /// Sends the launcher away without a word (elect ended without a lease), and reaps it.
    pub fn dismiss(self) {
        let pid = self.pid;
        drop(self.socket);
        let _ = waitpid(pid, None);
    }
}

/// The launcher's life: wait for the word, then become the job.
fn wait_and_exec(socket: OwnedFd, watchdog: Pid, inherited: Inherited) -> ! {
    let _ = setpgid(Pid::from_raw(0), Pid::from_raw(0));
    if nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).is_err() || getppid() != watchdog {
        // The watchdog is gone already (or could not be followed): no job without it.
        quit(0);
    }
    let mut word = [0u8; MAX_WORD];
    let len = loop {
        match recv(socket.as_raw_fd(), &mut word, MsgFlags::empty()) {
            Err(Errno::EINTR) => continue,
            Ok(len) if len > 0 => break len,
            _ => quit(0),
        }
    };
    let Some(Order::Start {
        command_at, env, ..
    }) = Order::decode(&word[1..len])
    else {
        answer(&socket, Errno::EINVAL as i32)
    };
    // A fork of elect has elect's arguments (std keeps them from the start of the process).
    let command: Vec<OsString> = std::env::args_os().skip(command_at).collect();
    if command.is_empty() {
        answer(&socket, Errno::EINVAL as i32)
    }
    if word[0] == 1 {
        // SIGTTOU is still ignored here, so a background group may take the terminal.
        // SAFETY: descriptor 0 stays open for the life of this process.
        let tty = unsafe { BorrowedFd::borrow_raw(0) };
        let _ = nix::unistd::tcsetpgrp(tty, getpgrp());
    }
    for sig in inherited.to_default {
        // SAFETY: SIG_DFL installs no handler code.
        let _ = unsafe { signal::signal(sig, SigHandler::SigDfl) };
    }
    if let Some(cpus) = inherited.cpus {
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
    let err = cmd.exec();
    answer(&socket, err.raw_os_error().unwrap_or(Errno::ENOEXEC as i32))
}

/// Tells the watchdog why the exec failed, and exits as a shell does for a command it cannot run.
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
