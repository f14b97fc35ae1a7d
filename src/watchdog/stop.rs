//! The stop of the job, in the watchdog: SIGTERM (and SIGCONT) to the job's group and every
//! descendant, SIGKILL after the grace but never after the lease deadline; and, while the job
//! runs, the stop that the deadline's SIGTERM time starts on its own.

use std::io;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{Expiration, TimerSetTimeFlags};
use nix::unistd::Pid;

use super::protocol::Report;
use super::{Phase, Watchdog};
use crate::clock::BootTime;

impl Watchdog {
    /// Starts stopping the job, with SIGKILL after `grace` but never after the deadline.
    pub(super) fn stop_by(&mut self, grace: Duration) {
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

    pub(super) fn on_time(&mut self) {
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

    pub(super) fn arm_timer(&self) -> io::Result<()> {
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
    pub(super) fn signal_all(&self, sig: Signal) {
        if let Some(job) = self.job {
            let _ = killpg(job, sig);
        }
        crate::procfs::signal_descendants(Pid::this(), &[], sig);
    }
}
