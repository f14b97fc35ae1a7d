//! The watchdog after the job's end: it waits for elect to hang up, and meanwhile still holds
//! what is left in the job's process group (the `--on-acquired` hook, see [`crate::hooks`]) to
//! the lease deadline, since elect renews no more by then.

use std::os::fd::AsFd;
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{killpg, Signal};
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{Expiration, TimerSetTimeFlags};

use super::protocol::Order;
use super::Watchdog;
use crate::clock::BootTime;

impl Watchdog {
    /// Waits for elect to hang up after the last report. Closing a socket with orders still
    /// unread would reset the connection, and elect could lose the report instead of reading it.
    pub(super) fn linger(&mut self) {
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
}
