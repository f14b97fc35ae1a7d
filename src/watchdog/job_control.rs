//! Job control at a terminal, in the watchdog: a stop of the job (Ctrl-Z) is mirrored onto the
//! front that the shell watches, the job is continued when the shell continues the front, and the
//! terminal goes back to the shell when the job ends (see [`crate::front`]).

use std::io;
use std::os::fd::AsFd;

use nix::sys::signal::{self, killpg, Signal};
use nix::unistd::Pid;

use super::{Phase, Watchdog};

impl Watchdog {
    /// The job's main process stopped: Ctrl-Z, a read from the terminal in the background, or
    /// SIGSTOP.
    pub(super) fn job_stopped(&mut self, sig: Signal) {
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
    pub(super) fn resume(&mut self) {
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

    /// The job's main process `pid` ended: the terminal goes back to the shell's group, and a
    /// front stopped along with the job is continued.
    pub(super) fn job_ended(&mut self, pid: Pid) {
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
}
