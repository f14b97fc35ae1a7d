//! Where the watchdog starts: on another CPU than elect, then back on elect's own.
//!
//! # Why
//! A forked child starts on its parent's CPU when the scheduler sees no reason to move it, and
//! waits there until the parent blocks. elect blocks only once it has parsed its arguments and
//! taken the lease, so the watchdog's own start (forking the job's launcher, see
//! [`super::launcher`]) would come after the lease instead of beside it, on the path from "lease
//! taken" to "job running". Moved to another CPU that elect may use, the watchdog starts at once.
//!
//! # Back to elect's CPUs
//! Once running, the watchdog returns to elect's set at once, before it forks the job's
//! launcher, so that neither is held to one CPU while it sleeps: a job sharing that CPU would
//! otherwise keep a woken watchdog waiting. elect moves the watchdog just after the fork, so a
//! watchdog that started before the move returns again when the job starts, and the launcher
//! (which then inherited the one CPU) before it execs the command: the job always runs on the
//! CPUs elect was allowed, as under flock(1). If that set is no longer allowed (a cpuset changed
//! meanwhile), they take every CPU the kernel allows. Every step is a hint: where a call fails,
//! the process simply stays where it is.

use nix::sched::{sched_getaffinity, sched_getcpu, sched_setaffinity, CpuSet};
use nix::unistd::Pid;

/// The CPUs elect may use, read before the watchdog is forked.
#[derive(Debug, Clone, Copy)]
pub struct Cpus(CpuSet);

impl Cpus {
    /// elect's own set; `None` when it cannot be read.
    pub fn of_this_process() -> Option<Self> {
        sched_getaffinity(Pid::from_raw(0)).ok().map(Self)
    }

    /// Moves a just-forked child to one of these CPUs other than the caller's, if there is one.
    pub fn move_elsewhere(&self, child: Pid) {
        let Ok(here) = sched_getcpu() else { return };
        let other = (0..CpuSet::count()).find(|&cpu| cpu != here && self.0.is_set(cpu) == Ok(true));
        if let Some(other) = other {
            let mut one = CpuSet::new();
            if one.set(other).is_ok() {
                let _ = sched_setaffinity(child, &one);
            }
        }
    }

    /// Puts the calling process back on this set.
    pub fn restore(&self) {
        if sched_setaffinity(Pid::from_raw(0), &self.0).is_err() {
            let mut all = CpuSet::new();
            for cpu in 0..CpuSet::count() {
                let _ = all.set(cpu);
            }
            let _ = sched_setaffinity(Pid::from_raw(0), &all);
        }
    }
}
