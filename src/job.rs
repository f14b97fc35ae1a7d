//! elect's side of the watchdog and the job's launcher (see [`crate::watchdog`]): the fork, both
//! sockets, the start order and its answers, the orders that follow, the hang-up and the reap.
//! Everything here runs in elect; everything in [`crate::watchdog`] runs in the watchdog and the
//! launcher. [`crate::watchdog::protocol`] is the language both sides speak.

pub mod guard;

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags};
use nix::sys::socket::{
    recv, sendmsg, socketpair, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType,
};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::front::Front;
use crate::lease::Lease;
use crate::procfs;
use crate::watchdog;
use crate::watchdog::placement::Cpus;
use crate::watchdog::protocol::{Isolation, Order, Report};

/// elect's end of the watchdog, before the async runtime exists: its pid, the socket, and the
/// socket to the job's launcher.
#[derive(Debug)]
pub struct Forked {
    pub pid: Pid,
    pub socket: OwnedFd,
    pub launcher: OwnedFd,
    /// elect's front at a terminal, which decides who has the terminal (see [`crate::front`]).
    pub front: Option<Front>,
}

/// A close-on-exec SOCK_SEQPACKET pair: one message per packet between elect, the watchdog and
/// the launcher.
fn packet_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?)
}

/// Forks the watchdog, which keeps `front` to mirror the job's stops on (see [`crate::front`]).
/// Must be called while the process has a single thread.
pub fn fork(front: Option<Front>) -> io::Result<Forked> {
    // elect is the job's second guard: if the watchdog dies, the job's orphans come to elect
    // (see [`guard`]).
    nix::sys::prctl::set_child_subreaper(true)?;
    let (ours, theirs) = packet_pair()?;
    let (to_launcher, launchers) = packet_pair()?;
    let cpus = Cpus::of_this_process();
    // SAFETY: elect calls this before it starts any thread (the async runtime comes later), so
    // the child is a complete copy of a single-threaded process and may run ordinary code.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Child => {
            drop(ours);
            drop(to_launcher);
            watchdog::serve_forked(theirs, launchers, cpus, front)
        }
        nix::unistd::ForkResult::Parent { child } => {
            if let Some(cpus) = cpus {
                cpus.move_elsewhere(child);
            }
            Ok(Forked {
                pid: child,
                socket: ours,
                launcher: to_launcher,
                front,
            })
        }
    }
}

/// How the start of the job went.
#[derive(Debug)]
pub enum Start {
    /// The command was executed; the job is this process.
    Running { pid: i32 },
    /// The command could not be executed, or its process not forked.
    Failed(io::Error),
    /// The job's process, forked ahead, was gone: nothing ran.
    LauncherGone,
    /// The watchdog vanished before it answered.
    WatchdogGone,
}

/// Why the launcher did not run the command.
enum Answer {
    /// The start order could not be sent: the launcher is gone.
    Unheard,
    /// The exec (or reading its answer) failed.
    Failed(io::Error),
}

/// elect's handle on the watchdog and the job's launcher: their sockets, registered with tokio.
pub struct Handle {
    /// The watchdog's pid.
    pid: Pid,
    socket: AsyncFd<OwnedFd>,
    launcher: AsyncFd<OwnedFd>,
    front: Option<Front>,
    /// Where the command starts among elect's own arguments (see [`command_position`]).
    command_at: usize,
}

/// What the job is to be started with.
#[derive(Debug)]
pub struct Spec {
    /// The lock's name, which names the watchdog in `ps`.
    pub lock: String,
    pub deadline: Option<crate::clock::BootTime>,
    pub grace: std::time::Duration,
    /// Variables set (`Some`) or removed (`None`) for the job.
    pub env: Vec<(OsString, Option<OsString>)>,
    /// Whether the job gets a PID namespace of its own.
    pub isolation: Isolation,
}

/// Where `command` starts among elect's own arguments, which the watchdog and the launcher share
/// (see [`Order::Start`]): a command line of any length then costs nothing to send.
fn command_position(command: &[OsString]) -> io::Result<usize> {
    let argv: Vec<OsString> = std::env::args_os().collect();
    argv.len()
        .checked_sub(command.len())
        .filter(|&at| !command.is_empty() && argv[at..] == *command)
        .ok_or_else(|| io::Error::other("cannot find the command among elect's arguments"))
}

/// Registers a socket with tokio, non-blocking.
fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    nix::fcntl::fcntl(
        &fd,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )?;
    // SAFETY: an OwnedFd is a valid descriptor that stays open, naming the same socket, for as
    // long as the AsyncFd owns it.
    unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(|e| e.into_parts().1)
}

impl Handle {
    /// Registers the sockets of `link` for the job `command` (elect's own trailing arguments).
    pub fn new(link: Forked, command: &[OsString]) -> io::Result<Self> {
        Ok(Self {
            command_at: command_position(command)?,
            pid: link.pid,
            socket: register(link.socket)?,
            launcher: register(link.launcher)?,
            front: link.front,
        })
    }

    /// elect's own guard over the job whose main process is `job` (see [`guard`]).
    pub fn guard(
        &self,
        job: Option<i32>,
        grace: std::time::Duration,
        deadline: Option<crate::clock::BootTime>,
    ) -> guard::Guard {
        guard::Guard::new(self.pid, job.map(Pid::from_raw), grace, deadline)
    }

    /// Sends an order whose failure needs no action here: a watchdog that cannot take orders
    /// has finished or died, and its report (or its absence) says which.
    fn order(&self, order: &Order) {
        if let Err(e) = send_order(self.socket.get_ref().as_fd(), order, None) {
            tracing::debug!("watchdog did not take {order:?}: {e}");
        }
    }

    /// A renew succeeded: the job may live until `deadline`.
    pub fn set_deadline(&self, deadline: Option<crate::clock::BootTime>) {
        self.order(&Order::Deadline(deadline));
    }

    /// Forwards signal `n` to the job's process group.
    pub fn signal(&self, n: i32) {
        self.order(&Order::Signal(n));
    }

    /// Orders the job stopped (SIGTERM, SIGKILL after the grace).
    pub fn stop(&self) {
        self.order(&Order::Stop);
    }

    /// Starts the job: the order goes to the watchdog first, with the open lock file if any (so
    /// the watchdog holds it too), then to the launcher, which execs the command (see
    /// [`crate::watchdog::launcher`]). An error means the watchdog could not be reached, and
    /// nothing was started.
    pub async fn start(&self, spec: Spec, lease: &Lease) -> io::Result<Start> {
        let order = &Order::Start {
            lock: spec.lock,
            deadline: spec.deadline,
            grace: spec.grace,
            command_at: self.command_at,
            terminal: job_takes_terminal(self.front),
            env: spec.env,
            isolation: spec.isolation,
        };
        let fd = lease.kernel_lock.as_ref().map(|f| f.as_fd());
        send_order(self.socket.get_ref().as_fd(), order, fd)?;
        // The launcher keeps the lock file open across the exec, as flock(1) does: the kernel
        // lock then lasts as long as any process of the job, even if elect and the watchdog are
        // both killed.
        let word = send_order(self.launcher.get_ref().as_fd(), order, fd);
        let (report, answer) = tokio::join!(self.next_report(), self.exec_answer(word));
        Ok(match report {
            Ok(Some(Report::Started { pid })) => match answer {
                Ok(()) => Start::Running { pid },
                Err(Answer::Unheard) => Start::LauncherGone,
                Err(Answer::Failed(err)) => Start::Failed(err),
            },
            Ok(Some(Report::SpawnFailed { errno })) => {
                Start::Failed(io::Error::from_raw_os_error(errno))
            }
            _ => Start::WatchdogGone,
        })
    }

    /// The launcher's answer to the start order: `Ok` once the command was executed.
    async fn exec_answer(&self, word: io::Result<()>) -> Result<(), Answer> {
        word.map_err(|_| Answer::Unheard)?;
        loop {
            let mut guard = self.launcher.readable().await.map_err(Answer::Failed)?;
            match guard.try_io(|fd| answer_of(fd.get_ref().as_fd())) {
                Ok(Ok(answer)) => return answer.map_err(Answer::Failed),
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(Answer::Failed(e)),
                Err(_would_block) => {}
            }
        }
    }

    /// Gives the watchdog the identity of the lease elect holds, so that a lease elect cannot
    /// release, having died, is released once the job is gone (see [`crate::handoff`]).
    pub fn hold(&self, identity: Vec<u8>) {
        self.order(&Order::Hold(identity));
    }

    /// Tells the watchdog, after its last report, that elect needs it no more: it then exits at
    /// once instead of waiting for elect to exit. elect releases the lease itself.
    pub fn hang_up(&self) {
        self.order(&Order::Forget);
        let _ = nix::sys::socket::shutdown(
            self.socket.get_ref().as_raw_fd(),
            nix::sys::socket::Shutdown::Both,
        );
    }

    /// The next report; `None` when the watchdog has gone.
    pub async fn next_report(&self) -> io::Result<Option<Report>> {
        loop {
            let mut guard = self.socket.readable().await?;
            let mut buf = [0u8; 256];
            match guard.try_io(|fd| {
                nix::sys::socket::recv(
                    fd.get_ref().as_raw_fd(),
                    &mut buf,
                    nix::sys::socket::MsgFlags::empty(),
                )
                .map_err(io::Error::from)
            }) {
                Ok(Ok(0)) => return Ok(None),
                Ok(Ok(n)) => {
                    if let Some(report) = Report::decode(&buf[..n]) {
                        return Ok(Some(report));
                    }
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
    }
}

/// elect ends as planned (whatever the outcome), or the run's handle is dropped: the watchdog is
/// not to release a lease on elect's behalf (see [`crate::handoff`]). Only a killed elect skips
/// this.
impl Drop for Handle {
    fn drop(&mut self) {
        self.order(&Order::Forget);
    }
}

/// Sends an order, with a file descriptor attached when given.
pub fn send_order(
    socket: BorrowedFd<'_>,
    order: &Order,
    fd: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    let bytes = order.encode();
    let iov = [io::IoSlice::new(&bytes)];
    let raw;
    let cmsgs: &[ControlMessage<'_>] = match fd {
        Some(fd) => {
            raw = [fd.as_raw_fd()];
            &[ControlMessage::ScmRights(&raw)]
        }
        None => &[],
    };
    sendmsg::<()>(
        socket.as_raw_fd(),
        &iov,
        cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    Ok(())
}

/// How long elect waits, as it exits, for its watchdog to exit.
const REAP_LIMIT_MS: u16 = 1000;

/// Reaps the watchdog once elect has closed its sockets (it exits at once then, having nothing
/// left to watch), so that nothing of this run is left running, even as a zombie for init, when
/// elect exits: a script that runs elect again at once does not share the machine with the last
/// run's teardown. Waits at most [`REAP_LIMIT_MS`]: a watchdog that someone stopped must not keep
/// elect from exiting. Such a watchdog is killed: it has nothing left to guard (the job is gone and
/// elect has released or lost the lease), but while stopped it would keep its copy of a file
/// lock's descriptor open, and newcomers wait for any process that holds an earlier, deleted or
/// replaced lock file (see `backend::file`).
pub fn reap(pid: Pid) {
    // SAFETY: pidfd_open takes a pid and flags, and returns a new descriptor or -1.
    let fd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if let Ok(fd @ 0..) = i32::try_from(fd) {
        // SAFETY: the kernel just returned this descriptor, and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        while poll(&mut fds, REAP_LIMIT_MS) == Err(Errno::EINTR) {}
        // Still our unreaped child, so the pid is still the watchdog's.
        if procfs::state(pid) == procfs::State::Stopped {
            tracing::warn!("the watchdog (pid {pid}) is stopped; killing it as elect exits");
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = waitpid(pid, None);
            return;
        }
    }
    let _ = waitpid(pid, Some(WaitPidFlag::WNOHANG));
}

/// Whether the job is to take the terminal's foreground: elect's stdin is a terminal whose
/// foreground is the shell's job that elect belongs to (the front's group, or elect's own).
fn job_takes_terminal(front: Option<Front>) -> bool {
    let stdin = io::stdin();
    nix::unistd::isatty(stdin.as_fd()).unwrap_or(false)
        && nix::unistd::tcgetpgrp(stdin.as_fd()).ok() == Some(crate::front::home_group(front))
}

/// elect's reading of the launcher's answer on its end of the socket, once readable: `Ok` when
/// the command was executed (end of file), the exec's error otherwise.
fn answer_of(socket: BorrowedFd<'_>) -> io::Result<io::Result<()>> {
    let mut errno = [0u8; 4];
    match recv(socket.as_raw_fd(), &mut errno, MsgFlags::MSG_DONTWAIT) {
        Ok(0) => Ok(Ok(())),
        Ok(_) => Ok(Err(io::Error::from_raw_os_error(i32::from_ne_bytes(errno)))),
        Err(e) => Err(e.into()),
    }
}
