//! The watchdog: the process that owns the job.
//!
//! # Why a separate process
//! The safety rule needs the job dead by the lease deadline even when elect cannot run: stopped
//! with SIGSTOP, starved, or killed. So elect forks this watchdog at start-up, before it creates
//! any thread (a fork is then safe, and costs no exec). The watchdog is single-threaded, has no
//! async runtime and does nothing but wait in poll(2) on three descriptors:
//! - the socket to elect: orders (start, new deadline, forward a signal, stop), and end-of-file
//!   when elect dies;
//! - a signalfd for SIGCHLD;
//! - a timerfd on CLOCK_BOOTTIME with an absolute expiry at the next deadline action, so that a
//!   suspend cannot postpone it.
//!
//! # What it does
//! - Forks the job's process as soon as it can watch it, ahead of the lease (see [`launcher`]):
//!   in its own process group, with PR_SET_PDEATHSIG so that it dies if the watchdog is killed.
//!   elect sends `start` to the watchdog and then to that process, which execs the command with
//!   signal mask and dispositions reset, on elect's CPUs, and with the terminal's foreground when
//!   elect had it (Ctrl-C then reaches the job straight from the kernel, once, and the job can
//!   read the terminal).
//! - At a terminal, mirrors a stop of the job (Ctrl-Z) onto the front that the shell watches, and
//!   continues the job when the shell continues the front (see [`crate::front`]).
//! - Is a child subreaper: orphans of the job are re-parented to it, so it can reap them and knows
//!   when every process of the job is gone.
//! - Stops the job (SIGTERM and SIGCONT to the group and every descendant, SIGKILL after the
//!   grace) when the deadline's SIGTERM time passes, when elect orders it, or when elect dies.
//!   After the job's main process exits, whatever it left running is stopped the same way.
//! - Reports `Finished` only when no process of the job is left; elect releases the lease only
//!   then. Until elect hangs up, it still holds what is left in the job's process group (the
//!   `--on-acquired` hook, see [`crate::hooks`]) to the deadline: elect renews no more by then. On the file backend it also holds a copy of the lock file descriptor, so the kernel lock
//!   stays until the last process is gone, even if elect was killed.
//! - On the other backends, if elect died holding the lease, starts its release by a fresh
//!   process once the last process of the job is gone (see [`crate::handoff`] and [`releaser`]).

mod job_control;
pub mod launcher;
mod linger;
pub mod placement;
pub mod protocol;
pub mod releaser;
mod stop;
pub mod title;

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{self, killpg, SigHandler, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use nix::sys::timerfd::{ClockId, TimerFd, TimerFlags};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use self::launcher::Launcher;
use self::placement::Cpus;
use self::protocol::{JobExit, Order, Report};
use crate::clock::BootTime;
use crate::front::Front;

/// The watchdog's life, in the child of elect's fork (see `job::fork`, in elect): `socket` is its
/// end of elect's socket, `launcher_socket` the end that the job's launcher keeps, `cpus` elect's
/// CPUs, `front` elect's front at a terminal.
pub fn serve_forked(
    socket: OwnedFd,
    launcher_socket: OwnedFd,
    cpus: Option<Cpus>,
    front: Option<Front>,
) -> ! {
    let code = match Watchdog::new(socket, launcher_socket, cpus, front).and_then(Watchdog::serve) {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("elect: watchdog: {err}");
            70
        }
    };
    std::process::exit(code)
}

/// Where the stop of the job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    /// SIGTERM sent; SIGKILL at `kill_at`.
    Terminating {
        kill_at: BootTime,
    },
    Killing,
}

/// Which of the watchdog's descriptors are ready.
struct Ready {
    socket: bool,
    signals: bool,
    timer: bool,
}

struct Watchdog {
    socket: OwnedFd,
    signals: SignalFd,
    timer: TimerFd,
    grace: Duration,
    /// The job's main process, which is also its process group id.
    job: Option<Pid>,
    /// How the main process ended, once it has.
    exit: Option<JobExit>,
    /// Whether the stop had begun when the main process ended.
    stopped: bool,
    deadline: Option<BootTime>,
    phase: Phase,
    /// Whether elect is still there to order and to report to.
    elect_alive: bool,
    /// Whether the job was given the terminal, which must then be taken back.
    took_terminal: bool,
    /// The process the shell sees, at a terminal (see [`crate::front`]).
    front: Option<Front>,
    /// The process group that has the terminal while the job does not.
    home: Pid,
    /// Whether the job stopped at the terminal (Ctrl-Z) and the front was stopped to match.
    suspended: bool,
    /// The job's process, forked ahead and waiting for the start order (or why it could not be
    /// forked); taken when the job starts.
    launcher: Option<io::Result<Launcher>>,
    /// elect's CPUs, to return to (see [`placement`]).
    cpus: Option<Cpus>,
    /// The lock file of the file backend, kept open so the lock outlives elect.
    _kernel_lock: Option<File>,
    /// The job's main process, pinned by a pidfd, to signal its group after it is reaped.
    leader: Option<crate::procfs::Pinned>,
    /// Whether the group was sent SIGTERM after the job's end (see [`Watchdog::linger_fenced`]).
    group_termed: bool,
    /// elect's binary, to start the release with should elect die (see [`crate::handoff`]).
    binary: Option<releaser::Binary>,
    /// The lease elect holds, from its `hold` order, until elect says `forget`.
    identity: Option<Vec<u8>>,
}

impl Watchdog {
    fn new(
        socket: OwnedFd,
        launcher_socket: OwnedFd,
        cpus: Option<Cpus>,
        front: Option<Front>,
    ) -> io::Result<Self> {
        ignore_signals()?;
        // Running now, on the CPU elect moved it to: free to move again, and so is the launcher
        // (see `placement`).
        if let Some(cpus) = cpus {
            cpus.restore();
        }
        let (signals, timer) = watch_children(front.is_some())?;
        // Then at once, so that it is ready by the time elect has the lease (see `launcher`).
        let launcher = Some(Launcher::fork(launcher_socket, cpus));
        // Now, while the file it names is the binary that runs (see `releaser`).
        let binary = releaser::Binary::open();
        // After the fork: the launcher still needs elect's arguments, which this overwrites.
        title::set("lease-watchdog", "elect: watchdog");
        Ok(Self {
            socket,
            signals,
            timer,
            grace: Duration::ZERO, // until the start order brings it
            job: None,
            exit: None,
            stopped: false,
            deadline: None,
            phase: Phase::Running,
            elect_alive: true,
            took_terminal: false,
            front,
            home: crate::front::home_group(front),
            suspended: false,
            launcher,
            cpus,
            _kernel_lock: None,
            leader: None,
            group_termed: false,
            binary,
            identity: None,
        })
    }

    fn serve(mut self) -> io::Result<()> {
        let launcher = self
            .launcher
            .take()
            .expect("the launcher is taken only here");
        let start = self.await_start();
        let Ok(Some((terminal, lock))) = start else {
            launcher.map(Launcher::dismiss).ok();
            if let Ok(None) = start {
                // elect is gone and no job ran: a lease it held and did not release may go.
                self.hand_off();
            }
            return start.map(|_| ());
        };
        // elect sends the launcher the same order next, and the launcher execs the command.
        match launcher {
            Ok(launcher) => self.started(launcher.pid, terminal, &lock),
            Err(err) => {
                self.report(Report::SpawnFailed {
                    errno: err.raw_os_error().unwrap_or(nix::libc::EAGAIN),
                });
                return Ok(());
            }
        }
        self.watch_job()
    }

    /// Waits for elect's start order; keeps what it needs of it. Whether the job is to have the
    /// terminal, and the lock's name; `None` if elect ended without starting a job.
    fn await_start(&mut self) -> io::Result<Option<(bool, String)>> {
        loop {
            match self.receive()? {
                Some(Order::Start {
                    lock,
                    deadline,
                    grace,
                    terminal,
                    ..
                }) => {
                    self.deadline = deadline;
                    self.grace = grace;
                    // Again, in case elect moved the watchdog only after it had started.
                    if let Some(cpus) = self.cpus {
                        cpus.restore();
                    }
                    return Ok(Some((terminal, lock)));
                }
                Some(order @ (Order::Hold(_) | Order::Forget)) => self.keep(order),
                Some(_) => continue,
                None => return Ok(None),
            }
        }
    }

    /// The launcher was told to exec the job: the job's process is `pid`.
    fn started(&mut self, pid: Pid, terminal: bool, lock: &str) {
        if terminal {
            // Also from this side, as shells do: whichever runs first wins the race harmlessly.
            let _ = nix::unistd::tcsetpgrp(io::stdin().as_fd(), pid);
            self.took_terminal = true;
        }
        self.job = Some(pid);
        // Its own child, not reaped yet: the pid is surely the launcher's.
        self.leader = crate::procfs::Pinned::open(pid);
        self.report(Report::Started { pid: pid.as_raw() });
        // After the report, off the path to the job's start.
        title::set("lease-watchdog", &format!("elect: watchdog for {lock}"));
    }

    /// Watches the job until no process of it is left, then reports how it ended.
    fn watch_job(&mut self) -> io::Result<()> {
        loop {
            self.arm_timer()?;
            let Some(ready) = self.wait()? else {
                continue;
            };
            if ready.signals {
                while let Ok(Some(info)) = self.signals.read_signal() {
                    if info.ssi_signo == Signal::SIGCONT as u32 {
                        self.resume();
                    }
                }
            }
            if ready.timer {
                let mut buf = [0u8; 8];
                let _ = nix::unistd::read(&self.timer, &mut buf);
                self.on_time();
            }
            if ready.socket {
                match self.receive()? {
                    Some(order) => self.obey(order),
                    None => {
                        self.elect_alive = false;
                        self.stop_by(self.grace);
                    }
                }
            }
            if self.reap() {
                if let Some(exit) = self.exit {
                    self.report(Report::Finished {
                        exit,
                        stopped: self.stopped,
                    });
                }
                self.linger();
                self.hand_off();
                return Ok(());
            }
        }
    }

    /// Waits until elect's socket (while elect is there), the signals or the timer are ready;
    /// `None` if a signal cut the wait short.
    fn wait(&self) -> io::Result<Option<Ready>> {
        let socket = if self.elect_alive {
            PollFlags::POLLIN
        } else {
            PollFlags::empty()
        };
        let mut fds = [
            PollFd::new(self.socket.as_fd(), socket),
            PollFd::new(self.signals.as_fd(), PollFlags::POLLIN),
            PollFd::new(self.timer.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(Errno::EINTR) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
        Ok(Some(Ready {
            socket: self.elect_alive && ready(&fds[0]),
            signals: ready(&fds[1]),
            timer: ready(&fds[2]),
        }))
    }

    fn obey(&mut self, order: Order) {
        match order {
            Order::Start { .. } => {}
            Order::Deadline(deadline) => {
                if self.phase == Phase::Running {
                    self.deadline = deadline;
                }
            }
            Order::Signal(n) => {
                if let (Some(job), Ok(sig)) = (self.job, Signal::try_from(n)) {
                    let _ = killpg(job, sig);
                }
            }
            Order::Stop => self.stop_by(self.grace),
            Order::Hold(_) | Order::Forget => self.keep(order),
        }
    }

    /// Keeps or drops the lease's identity (see [`crate::handoff`]).
    fn keep(&mut self, order: Order) {
        match order {
            Order::Hold(identity) => self.identity = Some(identity),
            Order::Forget => self.identity = None,
            _ => {}
        }
    }

    /// elect is gone without releasing the lease it held, and no process of the job is left:
    /// starts the release (see [`crate::handoff`]).
    fn hand_off(&mut self) {
        let (Some(identity), Some(binary)) = (self.identity.take(), &self.binary) else {
            return;
        };
        if let Err(err) = binary.release(&identity) {
            eprintln!("elect: watchdog: cannot start the release of the lease: {err}");
        }
    }

    /// Reaps every child that has ended. True when no process of the job is left.
    fn reap(&mut self) -> bool {
        loop {
            match waitpid(
                Pid::from_raw(-1),
                Some(WaitPidFlag::WNOHANG | WaitPidFlag::WUNTRACED),
            ) {
                Ok(WaitStatus::Exited(pid, code)) => self.ended(pid, JobExit::Code(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    self.ended(pid, JobExit::Signal(sig as i32))
                }
                Ok(WaitStatus::Stopped(pid, sig)) if Some(pid) == self.job => self.job_stopped(sig),
                Ok(WaitStatus::StillAlive) => {
                    if self.exit.is_some() && self.phase == Phase::Running {
                        // The main process is gone but a child is left: whatever the job left
                        // behind (orphans are re-parented to this subreaper before their parent
                        // becomes waitable) must not run on without the lease.
                        self.stop_by(self.grace);
                    }
                    return false;
                }
                Ok(_) => {}
                Err(Errno::EINTR) => {}
                Err(_) => return true, // ECHILD: nothing left.
            }
            if self.phase == Phase::Killing {
                // A process may have forked between the last SIGKILL and now.
                self.signal_all(Signal::SIGKILL);
            }
        }
    }

    fn ended(&mut self, pid: Pid, how: JobExit) {
        if Some(pid) != self.job || self.exit.is_some() {
            return;
        }
        self.exit = Some(how);
        self.stopped = self.phase != Phase::Running;
        self.job_ended(pid);
    }

    fn receive(&mut self) -> io::Result<Option<Order>> {
        // Orders are small (the largest, `start`, carries a few ELECT_* variables); a stack
        // buffer spares the watchdog the page faults of a large heap one.
        let mut buf = [0u8; 8 * 1024];
        let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let (len, fd) = loop {
            let mut iov = [io::IoSliceMut::new(&mut buf)];
            match recvmsg::<()>(
                self.socket.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(msg) => {
                    let mut fd = None;
                    for c in msg.cmsgs()? {
                        if let ControlMessageOwned::ScmRights(fds) = c {
                            fd = fds.first().copied();
                        }
                    }
                    if msg.flags.contains(MsgFlags::MSG_TRUNC) {
                        return Err(io::Error::other("an order from elect was too long"));
                    }
                    break (msg.bytes, fd);
                }
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        };
        if let Some(fd) = fd {
            // SAFETY: the kernel just installed this descriptor for us; nobody else owns it.
            self._kernel_lock = Some(unsafe { File::from_raw_fd(fd) });
        }
        if len == 0 {
            return Ok(None);
        }
        Ok(Order::decode(&buf[..len]))
    }

    fn report(&self, report: Report) {
        if self.elect_alive {
            let bytes = report.encode();
            let _ = nix::sys::socket::send(self.socket.as_raw_fd(), &bytes, MsgFlags::MSG_NOSIGNAL);
        }
    }
}

/// The signals elect forwards (the watchdog learns of them from elect, and must survive a
/// `pkill elect`), and those of job control and broken pipes, are ignored.
fn ignore_signals() -> io::Result<()> {
    for sig in crate::signals::FORWARDED.iter().chain(&[
        Signal::SIGTSTP,
        Signal::SIGTTIN,
        Signal::SIGTTOU,
        Signal::SIGPIPE,
    ]) {
        // SAFETY: SIG_IGN installs no handler code.
        unsafe { signal::signal(*sig, SigHandler::SigIgn) }?;
    }
    Ok(())
}

/// Everything that watches the job exists before the launcher does: elect starts the launcher
/// itself, and the job may run, fork and exit before this process reads the start order. A
/// SIGCHLD that came before SIGCHLD was blocked would be lost, and an orphan before the subreaper
/// was set would escape to init. `front`: at a terminal, the front passes the shell's `fg` and
/// `bg` on as SIGCONT.
fn watch_children(front: bool) -> io::Result<(SignalFd, TimerFd)> {
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    if front {
        mask.add(Signal::SIGCONT);
    }
    mask.thread_block()?;
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
    let timer = TimerFd::new(
        ClockId::CLOCK_BOOTTIME,
        TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
    )?;
    nix::sys::prctl::set_child_subreaper(true)?;
    Ok((signals, timer))
}
