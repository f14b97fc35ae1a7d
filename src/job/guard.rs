//! elect as the job's second guard: what it does when its watchdog cannot.
//!
//! # Why
//! The watchdog keeps the deadline when elect cannot (stopped, starved, killed). This keeps it
//! the other way round: a watchdog that was killed, or that is stopped while the deadline passes
//! or a stop is ordered, leaves elect able to act, and elect acts. Either process alone keeps the
//! promise that no process of the job runs once the lease may be someone else's.
//!
//! # Which processes are the job's
//! elect is a child subreaper too (set before it forks the watchdog). So the job's processes are
//! always elect's descendants: below the watchdog while it lives (it is a subreaper itself), and
//! re-parented to elect when it dies (the job's main process dies with it, by PR_SET_PDEATHSIG,
//! and its orphans come to elect). The job is then every descendant of elect other than the
//! watchdog itself and the hooks elect runs (see [`crate::hooks::running_pids`]), plus the job's
//! process group.
//!
//! # What elect does
//! - The watchdog is gone: elect stops the job as the watchdog would (SIGTERM and SIGCONT,
//!   SIGKILL after the grace but never after the deadline), reaps what comes to it, and ends
//!   the run only when no process of the job is left; the lease is kept and renewed meanwhile.
//! - The watchdog is stopped while the job is to be stopped (the deadline's SIGTERM time has
//!   come, or elect ordered a stop): elect sends the SIGTERM itself. It looks every
//!   100 ms meanwhile ([`Guard::next`]), and not at all otherwise.
//! - The SIGKILL time of the deadline, or of an ordered stop, passes without the watchdog's
//!   report that the job is gone: elect sends SIGKILL itself, and ends the run once every
//!   process of the job has ended (zombies of a stopped watchdog do not run).

use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::clock::BootTime;
use crate::procfs::{self, State};
use crate::watchdog::protocol::JobExit;

/// How often elect looks again while it stops the job itself.
const POLL: Duration = Duration::from_millis(20);

/// How often elect looks at the watchdog's state while a stop is under way.
const WATCH: Duration = Duration::from_millis(100);

/// How long a running watchdog has, after the job's last process ended, to report it before elect
/// ends the run without the report.
const REPORT_LIMIT: Duration = Duration::from_millis(500);

/// elect's guard over one started job.
#[derive(Debug)]
pub struct Guard {
    watchdog: Pid,
    /// The job's main process and process group, once the watchdog reported it.
    job: Option<Pid>,
    /// The job's main process, pinned by a pidfd, to signal its group (see [`Guard::signal_all`]).
    leader: Option<procfs::Pinned>,
    grace: Duration,
    /// The lease deadline in force (none: the lease does not expire).
    deadline: Option<BootTime>,
    /// When the SIGKILL of an ordered stop is due.
    stop_kill_at: Option<BootTime>,
    /// Whether elect sent the SIGTERM itself.
    termed: bool,
    /// When elect sent SIGKILL itself.
    killed_at: Option<BootTime>,
    /// The watchdog is gone: elect stops the job alone.
    alone: bool,
    /// How the job's main process ended, if elect reaped it itself.
    exit: Option<JobExit>,
    /// Whether the job's main process was still running when elect first signalled it: a job
    /// that had ended by itself was not cut short (as the watchdog's `Finished` report says).
    stopped: Option<bool>,
}

/// Pins the job's main process `job`, checking once pinned that it is the one the watchdog
/// reported (the watchdog's child, or elect's once the watchdog is gone), not a process that was
/// given its pid after it ended.
fn pin_job(job: Pid, watchdog: Pid) -> Option<procfs::Pinned> {
    let pinned = procfs::Pinned::open(job)?;
    let parent = procfs::parent(job)?;
    (parent == watchdog || parent == Pid::this()).then_some(pinned)
}

/// How the job ended, as elect's guard saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct End {
    /// How the main process ended, if elect learned it.
    pub exit: Option<JobExit>,
    /// Whether elect (or the watchdog) had begun stopping the job before its main process ended.
    pub stopped: bool,
}

impl Guard {
    pub fn new(
        watchdog: Pid,
        job: Option<Pid>,
        grace: Duration,
        deadline: Option<BootTime>,
    ) -> Self {
        Self {
            watchdog,
            job,
            leader: job.and_then(|job| pin_job(job, watchdog)),
            grace,
            deadline,
            stop_kill_at: None,
            termed: false,
            killed_at: None,
            alone: false,
            exit: None,
            stopped: None,
        }
    }

    /// A renew moved the deadline (while no stop has begun).
    pub fn set_deadline(&mut self, deadline: Option<BootTime>) {
        if self.stop_kill_at.is_none() && !self.termed {
            self.deadline = deadline;
        }
    }

    /// elect ordered the watchdog to stop the job.
    pub fn stop_ordered(&mut self) {
        self.begin_stop();
        self.note_stop();
        if procfs::state(self.watchdog) == State::Stopped {
            self.term();
        }
    }

    /// The watchdog is gone: elect stops the job itself.
    pub fn watchdog_gone(&mut self) {
        if self.alone {
            return;
        }
        self.alone = true;
        self.begin_stop();
        self.term();
    }

    /// Stops the job alone, the watchdog being gone before it reported a start, and returns once
    /// no process of it is left.
    pub async fn stop_alone(&mut self) -> Option<JobExit> {
        self.watchdog_gone();
        loop {
            if let Some(end) = self.tick() {
                return end.exit;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Whether elect stops the job alone.
    pub fn alone(&self) -> bool {
        self.alone
    }

    fn begin_stop(&mut self) {
        if self.stop_kill_at.is_none() {
            let mut at = BootTime::now() + self.grace;
            if let Some(deadline) = self.deadline {
                at = at.min(deadline);
            }
            self.stop_kill_at = Some(at);
        }
    }

    /// When the SIGKILL is due: the ordered stop's, never after the deadline.
    fn kill_at(&self) -> Option<BootTime> {
        match (self.stop_kill_at, self.deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// When [`Guard::tick`] is due next.
    pub fn next(&self) -> Option<BootTime> {
        let now = BootTime::now();
        if self.alone || self.killed_at.is_some() {
            return Some(now + POLL);
        }
        let watch = if self.stopping(now) && !self.termed {
            // A stop is under way: see that the watchdog is not stopped meanwhile.
            Some(now + WATCH)
        } else {
            self.deadline
                .filter(|_| !self.termed)
                .map(|d| d - self.grace)
        };
        match (watch, self.kill_at()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether the job is to be stopped: a stop was ordered, or the deadline's SIGTERM time has
    /// come.
    fn stopping(&self, now: BootTime) -> bool {
        self.stop_kill_at.is_some() || self.deadline.is_some_and(|d| now >= d - self.grace)
    }

    /// Acts on the time. Returns how the job ended once no process of it is left and the run
    /// may end without the watchdog's report.
    pub fn tick(&mut self) -> Option<End> {
        let now = BootTime::now();
        if self.stopping(now) {
            self.note_stop();
            if !self.termed && procfs::state(self.watchdog) == State::Stopped {
                self.term();
            }
        }
        if self.killed_at.is_none() && self.kill_at().is_some_and(|at| now >= at) {
            self.killed_at = Some(now);
            self.note_stop();
            self.signal_all(Signal::SIGKILL);
        }
        if !self.alone && self.killed_at.is_none() {
            return None;
        }
        if self.killed_at.is_some() {
            // A process may have forked since the last SIGKILL.
            self.signal_all(Signal::SIGKILL);
        }
        let left = self.members();
        self.reap(&left);
        if left.iter().any(|pid| procfs::state(*pid) != State::Ended) {
            return None;
        }
        let watchdog = procfs::state(self.watchdog);
        let waited = self.killed_at.is_some_and(|at| now >= at + REPORT_LIMIT);
        if self.alone || watchdog == State::Stopped || waited {
            return Some(End {
                exit: self.exit.or_else(|| self.zombie_exit()),
                stopped: self.stopped.unwrap_or(true),
            });
        }
        None
    }

    /// Notes, when the stop begins, whether the job's main process was still running.
    fn note_stop(&mut self) {
        if self.stopped.is_none() {
            let running = self.alone
                || self
                    .job
                    .is_some_and(|job| procfs::state(job) != State::Ended);
            self.stopped = Some(running);
        }
    }

    fn term(&mut self) {
        self.note_stop();
        self.termed = true;
        self.signal_all(Signal::SIGTERM);
        self.signal_all(Signal::SIGCONT);
    }

    /// Every process of the job elect can find (see the module doc).
    fn members(&self) -> Vec<Pid> {
        procfs::descendants(Pid::this(), &self.hooks())
            .into_iter()
            .filter(|pid| *pid != self.watchdog)
            .collect()
    }

    /// Signals the job's process group and every process of the job, each through a pidfd (see
    /// [`procfs::signal_each`]): a pid found here that ended and was reused meanwhile is never
    /// signalled.
    fn signal_all(&self, sig: Signal) {
        let tree = procfs::descendants(Pid::this(), &self.hooks());
        let members: Vec<Pid> = tree
            .iter()
            .copied()
            .filter(|pid| *pid != self.watchdog)
            .collect();
        self.signal_group(sig, &members);
        let mut family = tree;
        family.push(Pid::this());
        procfs::signal_each(&members, &family, sig);
    }

    /// Signals the job's process group through the pidfd of its leader, the job's main process,
    /// which names the group itself rather than its number. Before Linux 6.9, by number, and only
    /// while a process of the job is still in the group (a group keeps its number while it has a
    /// member, so the number cannot have been reused).
    fn signal_group(&self, sig: Signal, members: &[Pid]) {
        let (Some(job), Some(leader)) = (self.job, &self.leader) else {
            return;
        };
        if leader.signal_group(sig) == Err(nix::errno::Errno::EINVAL)
            && members.iter().any(|pid| procfs::group(*pid) == Some(job))
        {
            let _ = killpg(job, sig);
        }
    }

    /// The hooks elect runs, which are not the job's (see [`crate::hooks::running_pids`]).
    fn hooks(&self) -> Vec<Pid> {
        crate::hooks::running_pids()
            .into_iter()
            .map(Pid::from_raw)
            .collect()
    }

    /// Reaps the processes of the job that came to elect and ended.
    fn reap(&mut self, members: &[Pid]) {
        let me = Pid::this();
        for &pid in members {
            if procfs::parent(pid) != Some(me) {
                continue;
            }
            let exit = match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => JobExit::Code(code),
                Ok(WaitStatus::Signaled(_, sig, _)) => JobExit::Signal(sig as i32),
                _ => continue,
            };
            if Some(pid) == self.job {
                self.exit = Some(exit);
            }
        }
    }

    /// How the job's main process ended, read from its zombie (a stopped watchdog cannot reap it).
    fn zombie_exit(&self) -> Option<JobExit> {
        let status = procfs::exit_status(self.job?)?;
        Some(if status & 0x7f == 0 {
            JobExit::Code((status >> 8) & 0xff)
        } else {
            JobExit::Signal(status & 0x7f)
        })
    }
}
