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

pub mod launcher;
pub mod placement;
pub mod protocol;
pub mod releaser;
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
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
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
        for sig in crate::signals::FORWARDED.iter().chain(&[
            Signal::SIGTSTP,
            Signal::SIGTTIN,
            Signal::SIGTTOU,
            Signal::SIGPIPE,
        ]) {
            // SAFETY: SIG_IGN installs no handler code.
            unsafe { signal::signal(*sig, SigHandler::SigIgn) }?;
        }
        // Running now, on the CPU elect moved it to: free to move again, and so is the launcher
        // (see `placement`).
        if let Some(cpus) = cpus {
            cpus.restore();
        }
        // Everything that watches the job exists before the launcher does: elect starts the
        // launcher itself, and the job may run, fork and exit before this process reads the start
        // order. A SIGCHLD that came before SIGCHLD was blocked would be lost, and an orphan
        // before the subreaper was set would escape to init.
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGCHLD);
        if front.is_some() {
            // The front passes the shell's `fg` and `bg` on as SIGCONT.
            mask.add(Signal::SIGCONT);
        }
        mask.thread_block()?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
        let timer = TimerFd::new(
            ClockId::CLOCK_BOOTTIME,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )?;
        nix::sys::prctl::set_child_subreaper(true)?;
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
        let start = loop {
            match self.receive() {
                Ok(Some(Order::Start {
                    lock,
                    deadline,
                    grace,
                    terminal,
                    ..
                })) => {
                    self.deadline = deadline;
                    self.grace = grace;
                    // Again, in case elect moved the watchdog only after it had started.
                    if let Some(cpus) = self.cpus {
                        cpus.restore();
                    }
                    break Ok(Some((terminal, lock)));
                }
                Ok(Some(order @ (Order::Hold(_) | Order::Forget))) => self.keep(order),
                Ok(Some(_)) => continue,
                // None: elect ended without starting a job.
                other => break other.map(|_| None),
            }
        };
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
            Ok(launcher) => {
                let pid = launcher.pid;
                if terminal {
                    // Also from this side, as shells do: whichever runs first wins the race
                    // harmlessly.
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
            Err(err) => {
                self.report(Report::SpawnFailed {
                    errno: err.raw_os_error().unwrap_or(nix::libc::EAGAIN),
                });
                return Ok(());
            }
        }
        loop {
            self.arm_timer()?;
            let (socket_ready, signal_ready, timer_ready) = {
                let mut fds = [
                    PollFd::new(self.socket.as_fd(), PollFlags::POLLIN),
                    PollFd::new(self.signals.as_fd(), PollFlags::POLLIN),
                    PollFd::new(self.timer.as_fd(), PollFlags::POLLIN),
                ];
                if !self.elect_alive {
                    fds[0] = PollFd::new(self.socket.as_fd(), PollFlags::empty());
                }
                match poll(&mut fds, PollTimeout::NONE) {
                    Ok(_) => {}
                    Err(Errno::EINTR) => continue,
                    Err(e) => return Err(e.into()),
                }
                let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
                (
                    self.elect_alive && ready(&fds[0]),
                    ready(&fds[1]),
                    ready(&fds[2]),
                )
            };
            if signal_ready {
                while let Ok(Some(info)) = self.signals.read_signal() {
                    if info.ssi_signo == Signal::SIGCONT as u32 {
                        self.resume();
                    }
                }
            }
            if timer_ready {
                let mut buf = [0u8; 8];
                let _ = nix::unistd::read(&self.timer, &mut buf);
                self.on_time();
            }
            if socket_ready {
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

    /// Starts stopping the job, with SIGKILL after `grace` but never after the deadline.
    fn stop_by(&mut self, grace: Duration) {
        if self.phase != Phase::Running {
            return;
        }
        let mut kill_at = BootTime::now() + grace;
        if let Some(deadline) = self.deadline {
            kill_at = kill_at.min(deadline);
        }
        self.phase = Phase::Terminating { kill_at };
        self.signal_all(Signal::SIGTERM);
        self.signal_all(Signal::SIGCONT);
        self.on_time();
    }

    fn on_time(&mut self) {
        let now = BootTime::now();
        match self.phase {
            Phase::Running => {
                if let Some(deadline) = self.deadline {
                    if now >= deadline - self.grace {
                        self.report(Report::DeadlinePassed);
                        self.stop_by(self.grace);
                    }
                }
            }
            Phase::Terminating { kill_at } if now >= kill_at => {
                self.phase = Phase::Killing;
                self.signal_all(Signal::SIGKILL);
            }
            Phase::Terminating { .. } | Phase::Killing => {}
        }
    }

    fn arm_timer(&self) -> io::Result<()> {
        let at = match self.phase {
            Phase::Running => self.deadline.map(|d| d - self.grace),
            Phase::Terminating { kill_at } => Some(kill_at),
            Phase::Killing => None,
        };
        match at {
            Some(at) => {
                // Zero would disarm the timer; a passed time must still fire.
                let nanos = at.as_nanos().max(1);
                let spec = TimeSpec::from_duration(Duration::from_nanos(nanos));
                self.timer
                    .set(
                        Expiration::OneShot(spec),
                        TimerSetTimeFlags::TFD_TIMER_ABSTIME,
                    )
                    .map_err(io::Error::from)
            }
            None => self.timer.unset().map_err(io::Error::from),
        }
    }

    /// Signals the job's process group and every descendant (some may have left the group with
    /// setsid, but they remain our descendants).
    fn signal_all(&self, sig: Signal) {
        if let Some(job) = self.job {
            let _ = killpg(job, sig);
        }
        crate::procfs::signal_descendants(Pid::this(), &[], sig);
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

    /// The job's main process stopped: Ctrl-Z, a read from the terminal in the background, or
    /// SIGSTOP.
    fn job_stopped(&mut self, sig: Signal) {
        let Some(job) = self.job else { return };
        match self.front {
            // The shell learns of the stop from the front, and continues the front (then the job,
            // see `resume`) with `fg` or `bg`. elect keeps renewing meanwhile.
            Some(front) if self.phase == Phase::Running => {
                self.suspended = true;
                let _ = signal::kill(front.pid, sig);
            }
            // Being stopped, the job is being stopped for good anyway.
            Some(_) => {}
            // Without a front nothing could resume a job stopped by Ctrl-Z in the terminal's
            // foreground: elect cannot stop along with it without stopping its renewals. So the
            // job is continued.
            None if sig == Signal::SIGTSTP => {
                let _ = killpg(job, Signal::SIGCONT);
            }
            None => {}
        }
    }

    /// The front was continued: `fg` (the shell gave the terminal to the front's group) or `bg`.
    fn resume(&mut self) {
        let Some(job) = self.job.filter(|_| self.suspended) else {
            return;
        };
        self.suspended = false;
        let stdin = io::stdin();
        if nix::unistd::tcgetpgrp(stdin.as_fd()).ok() == Some(self.home) {
            let _ = nix::unistd::tcsetpgrp(stdin.as_fd(), job);
            self.took_terminal = true;
        }
        let _ = killpg(job, Signal::SIGCONT);
    }

    fn ended(&mut self, pid: Pid, how: JobExit) {
        if Some(pid) != self.job || self.exit.is_some() {
            return;
        }
        self.exit = Some(how);
        self.stopped = self.phase != Phase::Running;
        if self.took_terminal {
            // Only from the job: after `bg` the shell has the terminal, and keeps it.
            let stdin = io::stdin();
            if nix::unistd::tcgetpgrp(stdin.as_fd()).ok() == Some(pid) {
                let _ = nix::unistd::tcsetpgrp(stdin.as_fd(), self.home);
            }
            self.took_terminal = false;
        }
        if let Some(front) = self.front.filter(|_| self.suspended) {
            // A stopped front could not report the end to the shell.
            self.suspended = false;
            let _ = signal::kill(front.pid, Signal::SIGCONT);
        }
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

    /// Waits for elect to hang up after the last report. Closing a socket with orders still
    /// unread would reset the connection, and elect could lose the report instead of reading it.
    fn linger(&mut self) {
        self._kernel_lock = None;
        while self.elect_alive {
            if let Some(deadline) = self.deadline.filter(|_| self.leader.is_some()) {
                self.linger_fenced(deadline);
                continue;
            }
            match self.receive() {
                Ok(Some(order @ (Order::Hold(_) | Order::Forget))) => self.keep(order),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => self.elect_alive = false,
            }
        }
    }

    /// One wait of [`Watchdog::linger`] under a deadline: for elect's next order or its hang-up,
    /// and for the deadline, which still holds for what is left in the job's process group (the
    /// `--on-acquired` hook, see [`crate::hooks`]): elect renews no more once the job has ended,
    /// and may be stopped.
    fn linger_fenced(&mut self, deadline: BootTime) {
        let now = BootTime::now();
        if now >= deadline {
            self.signal_group(Signal::SIGKILL);
            self.deadline = None;
            return;
        }
        if now >= deadline - self.grace && !self.group_termed {
            self.signal_group(Signal::SIGTERM);
            self.signal_group(Signal::SIGCONT);
            self.group_termed = true;
        }
        let at = if self.group_termed {
            deadline
        } else {
            deadline - self.grace
        };
        let spec = TimeSpec::from_duration(Duration::from_nanos(at.as_nanos().max(1)));
        if self
            .timer
            .set(
                Expiration::OneShot(spec),
                TimerSetTimeFlags::TFD_TIMER_ABSTIME,
            )
            .is_err()
        {
            self.deadline = None;
            return;
        }
        let mut fds = [
            PollFd::new(self.socket.as_fd(), PollFlags::POLLIN),
            PollFd::new(self.timer.as_fd(), PollFlags::POLLIN),
        ];
        if matches!(poll(&mut fds, PollTimeout::NONE), Ok(_) | Err(Errno::EINTR))
            && fds[0].revents().is_none_or(|r| r.is_empty())
        {
            return;
        }
        match self.receive() {
            Ok(Some(Order::Deadline(d))) if !self.group_termed => self.deadline = d,
            Ok(Some(order @ (Order::Hold(_) | Order::Forget))) => self.keep(order),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => self.elect_alive = false,
        }
    }

    /// Signals the job's process group through its leader's pidfd, which names the group itself
    /// even once the leader is reaped (Linux 6.9). Before, by number, while the group has members.
    fn signal_group(&self, sig: Signal) {
        let (Some(job), Some(leader)) = (self.job, &self.leader) else {
            return;
        };
        if leader.signal_group(sig) == Err(Errno::EINVAL) && killpg(job, None).is_ok() {
            let _ = killpg(job, sig);
        }
    }

    fn report(&self, report: Report) {
        if self.elect_alive {
            let bytes = report.encode();
            let _ = nix::sys::socket::send(self.socket.as_raw_fd(), &bytes, MsgFlags::MSG_NOSIGNAL);
        }
    }
}
