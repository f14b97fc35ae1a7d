//! The lease keeper: renews the lease and turns each success into a new deadline.
//!
//! It owns the deadline math of the safety rule for every backend (see [`crate::timing`]):
//! - a renew is sent every `renew` interval; its send time `s` gives the new deadline
//!   `D = s + ttl - margin`, published on a watch channel that elect forwards to the watchdog;
//! - a failed or timed-out renew is retried every [`LeaseTiming::retry_interval`], each attempt
//!   bounded so that it cannot run past `D - grace`;
//! - when `D - grace` comes without a successful renew, the lease is lost (the watchdog, which has
//!   the same deadline, is already stopping the job on its own);
//! - a backend that answers that the lease is gone loses it at once, and so does one that learns
//!   it between renewals ([`Backend::lost`]: the file backend's inotify watch on its lock file);
//! - an attempt cut short by its bound drops the backend's future: each backend treats a request
//!   left without an answer as making its connection suspect, and sends the next one on a new
//!   connection.
//!
//! Time comes from a [`Clock`] on CLOCK_BOOTTIME; waits are tokio sleeps, which stop during a
//! suspend, so every wake-up re-reads the clock: a machine that resumes past `D` loses the lease on
//! the first tick.

use std::time::Duration;

use tokio::sync::watch;

use crate::backend::{Backend, Expiry};
use crate::clock::{BootTime, Clock};
use crate::lease::{Lease, LockName, Renewal};
use crate::timing::{Fmt, LeaseTiming};

/// Why a lease was lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loss {
    /// The backend said the lease is gone or someone else's.
    Revoked(String),
    /// No renew succeeded before `D - grace`.
    DeadlinePassed { last_error: String },
}

impl std::fmt::Display for Loss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Loss::Revoked(why) => write!(f, "the backend no longer has our lease: {why}"),
            // No failed attempt since the last success: elect itself did not run (stopped,
            // frozen, or the machine suspended) until the deadline had passed.
            Loss::DeadlinePassed { last_error } if last_error.is_empty() => write!(
                f,
                "no renew was attempted before the deadline: elect was not running"
            ),
            Loss::DeadlinePassed { last_error } => write!(
                f,
                "no renew succeeded before the deadline (last error: {last_error})"
            ),
        }
    }
}

/// The deadline of a held lease: `None` where the backend cannot expire it.
pub type Deadline = Option<BootTime>;

/// How the renewals went, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RenewStats {
    pub ok: u64,
    pub failed: u64,
    /// The slowest renew, successful or not.
    pub worst: Duration,
}

/// Keeps `lease` alive until it is lost; never returns otherwise. Each renewal's deadline is
/// sent on `deadlines`. Cancel by dropping the future.
pub async fn keep<B: Backend, C: Clock>(
    backend: &mut B,
    lease: &mut Lease,
    timing: LeaseTiming,
    clock: &C,
    deadlines: &watch::Sender<Deadline>,
    stats: &mut RenewStats,
) -> Loss {
    let expires = backend.expiry() == Expiry::Ttl;
    let deadline_of = |sent: BootTime| expires.then(|| timing.deadline(sent));
    // The first deadline went out with the job's start; only renewals publish.
    let mut deadline = deadline_of(lease.sent_at);
    let mut next = lease.sent_at + timing.renew();
    let mut last_error = String::new();
    loop {
        tokio::select! {
            () = sleep_until(clock, next) => {}
            why = backend.lost(lease) => {
                stats.failed += 1;
                return Loss::Revoked(why);
            }
        }
        let now = clock.now();
        if let Some(d) = deadline {
            if now >= timing.term_at(d) {
                return Loss::DeadlinePassed { last_error };
            }
        }
        let attempt = match deadline {
            Some(d) => timing.attempt_timeout(now, d),
            None => timing.renew(),
        };
        let result = tokio::time::timeout(attempt, backend.renew(lease)).await;
        stats.worst = stats.worst.max(now.until(clock.now()));
        match result {
            Ok(Ok(Renewal::Renewed)) => {
                stats.ok += 1;
                lease.sent_at = now;
                deadline = deadline_of(now);
                deadlines.send_replace(deadline);
                next = now + timing.renew();
                if !last_error.is_empty() {
                    tracing::info!(lock = %lease.name, "renew succeeded again");
                    last_error.clear();
                }
                continue;
            }
            Ok(Ok(Renewal::Lost(why))) => {
                stats.failed += 1;
                return Loss::Revoked(why);
            }
            Ok(Err(err)) => last_error = err.to_string(),
            Err(_) => last_error = format!("no answer within {}", Fmt(attempt)),
        }
        stats.failed += 1;
        next = retry_at(clock.now(), timing, deadline, &lease.name, &last_error);
    }
}

/// When to try again after a failed renew: after the retry interval, but by `D - grace` at the
/// latest. Warns once the next try may be the last.
fn retry_at(
    now: BootTime,
    timing: LeaseTiming,
    deadline: Deadline,
    lock: &LockName,
    last_error: &str,
) -> BootTime {
    let next = now + timing.retry_interval();
    let Some(d) = deadline else {
        tracing::debug!(lock = %lock, error = %last_error, "renew failed; retrying");
        return next;
    };
    if next >= timing.term_at(d) - timing.retry_interval() {
        tracing::warn!(
            lock = %lock,
            error = %last_error,
            left = %Fmt(now.until(timing.term_at(d))),
            "renew failed; the job will be stopped if none succeeds in time"
        );
    } else {
        tracing::debug!(lock = %lock, error = %last_error, "renew failed; retrying");
    }
    next.min(timing.term_at(d))
}

async fn sleep_until<C: Clock>(clock: &C, at: BootTime) {
    let wait = clock.now().until(at);
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests;
