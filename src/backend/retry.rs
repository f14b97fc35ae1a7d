//! Pacing the retries after a backend became unreachable: short pauses that grow to a cap, and
//! one warning now and then rather than one per try.
//!
//! The cap keeps the promise that a waiter resumes within 2 s of the network coming back (a
//! reset, a server restart, a member failover): the next try is never more than [`MAX_PAUSE`]
//! away, which leaves the rest for the try itself and the job's start on a busy host. A try
//! while the server is unreachable is one refused or reset connection, so two a second per
//! waiter cost it little. The warnings are what an operator reads, so they come at most every
//! [`WARN_EVERY`], each saying how long the backend has been unreachable and when the next try
//! is; every other failure is logged at debug level.

use std::time::{Duration, Instant};

/// The first pause after a failure: a reset connection usually reconnects at once.
const FIRST_PAUSE: Duration = Duration::from_millis(100);
/// The longest pause between two tries.
pub const MAX_PAUSE: Duration = Duration::from_millis(500);
/// The least time between two warnings.
pub const WARN_EVERY: Duration = Duration::from_secs(5);

/// The retries of a caller's outages.
#[derive(Debug, Default)]
pub struct Retry {
    /// Failures since the last success: the length of the next pause.
    failures: u32,
    /// When the first of them happened.
    since: Option<Instant>,
    /// Whether this outage was warned about, so that its end is told too.
    warned: bool,
    /// When the last warning went out, in this outage or an earlier one: a link that flaps
    /// (down, up, down again) must not print a warning per flap.
    last_warning: Option<Instant>,
}

impl Retry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Notes a failure (`doing`: what was being done, `why`: the error) and returns how long to
    /// pause before the next try; warns if no warning was printed for [`WARN_EVERY`].
    pub fn failed(&mut self, lock: &str, doing: &str, why: &str) -> Duration {
        let now = Instant::now();
        let since = *self.since.get_or_insert(now);
        let pause = pause_after(self.failures);
        self.failures = self.failures.saturating_add(1);
        let next = seconds(pause);
        if self
            .last_warning
            .is_none_or(|at| now.duration_since(at) >= WARN_EVERY)
        {
            self.warned = true;
            self.last_warning = Some(now);
            let down = now.duration_since(since);
            if down < Duration::from_secs(1) {
                tracing::warn!(
                    lock,
                    "backend unavailable while {doing} ({why}); next try in {next}"
                );
            } else {
                tracing::warn!(
                    lock,
                    "backend unavailable while {doing} for {} ({why}); {} tries failed, next try in {next}",
                    seconds(down),
                    self.failures
                );
            }
        } else {
            tracing::debug!(
                lock,
                error = why,
                "backend unavailable while {doing}; next try in {next}"
            );
        }
        pause
    }

    /// Notes that the backend answered again; says so if this outage was warned about.
    pub fn succeeded(&mut self, lock: &str) {
        if let (Some(since), true) = (self.since, self.warned) {
            tracing::info!(
                lock,
                "backend reachable again after {}",
                seconds(since.elapsed())
            );
        }
        *self = Self {
            last_warning: self.last_warning,
            ..Self::default()
        };
    }
}

/// The pause after `failures` earlier failures: 0.1 s, doubling, capped at [`MAX_PAUSE`].
fn pause_after(failures: u32) -> Duration {
    FIRST_PAUSE
        .saturating_mul(1u32.checked_shl(failures.min(16)).unwrap_or(u32::MAX))
        .min(MAX_PAUSE)
}

/// A duration for people: "0.4s", "12s".
fn seconds(d: Duration) -> String {
    if d < Duration::from_secs(10) {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format!("{}s", d.as_secs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_the_cap() {
        let pauses: Vec<u128> = (0..7).map(|n| pause_after(n).as_millis()).collect();
        assert_eq!(pauses, [100, 200, 400, 500, 500, 500, 500]);
        assert_eq!(pause_after(u32::MAX), MAX_PAUSE);
    }

    #[test]
    fn a_success_starts_the_next_outage_afresh() {
        let mut retry = Retry::new();
        for _ in 0..5 {
            retry.failed("l", "waiting", "reset");
        }
        assert_eq!(retry.failures, 5);
        retry.succeeded("l");
        assert_eq!(retry.failed("l", "waiting", "reset"), FIRST_PAUSE);
        // Warned a moment ago, in the outage before: not again so soon.
        assert!(!retry.warned);
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(seconds(Duration::from_millis(400)), "0.4s");
        assert_eq!(seconds(Duration::from_secs(12)), "12s");
    }
}
