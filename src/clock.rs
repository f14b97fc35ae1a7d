//! Lease time is measured on CLOCK_BOOTTIME.
//!
//! `std::time::Instant` is CLOCK_MONOTONIC on Linux, which stops while the machine is suspended:
//! a holder that slept through its ttl would believe it still owned a lease that the backend had
//! long expired. CLOCK_BOOTTIME keeps counting through suspend, and one reading means the same
//! thing in every process of the machine, so elect can hand absolute deadlines to its watchdog.

use std::ops::{Add, Sub};
use std::time::Duration;

use nix::time::{clock_gettime, ClockId};

/// A reading of CLOCK_BOOTTIME.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BootTime(Duration);

impl BootTime {
    pub fn now() -> Self {
        // CLOCK_BOOTTIME exists on every Linux since 2.6.39; failure here is impossible short of
        // a broken kernel, and nothing sensible can continue without a clock.
        let ts = clock_gettime(ClockId::CLOCK_BOOTTIME).expect("CLOCK_BOOTTIME is readable");
        Self(Duration::new(ts.tv_sec() as u64, ts.tv_nsec() as u32))
    }

    pub const fn from_nanos(nanos: u64) -> Self {
        Self(Duration::from_nanos(nanos))
    }

    /// Saturates at `u64::MAX` (584 years of uptime): settings are bounded so that no real
    /// deadline comes near it (see `cli::LONGEST`).
    pub fn as_nanos(self) -> u64 {
        u64::try_from(self.0.as_nanos()).unwrap_or(u64::MAX)
    }

    /// `self + d`, at most the end of the clock's range.
    pub fn saturating_add(self, d: Duration) -> Self {
        Self(self.0.saturating_add(d).min(Self::END))
    }

    /// The last reading the wire format (u64 nanoseconds) can carry.
    const END: Duration = Duration::from_nanos(u64::MAX);

    /// Time from `self` until `later`, zero if `later` has passed.
    pub fn until(self, later: BootTime) -> Duration {
        later.0.saturating_sub(self.0)
    }
}

impl Add<Duration> for BootTime {
    type Output = BootTime;
    /// Saturates rather than panics: see [`BootTime::saturating_add`].
    fn add(self, rhs: Duration) -> BootTime {
        self.saturating_add(rhs)
    }
}

impl Sub<Duration> for BootTime {
    type Output = BootTime;
    fn sub(self, rhs: Duration) -> BootTime {
        BootTime(self.0.saturating_sub(rhs))
    }
}

/// Where the lease keeper reads the time, so that its tests can run on paused tokio time and
/// simulate a suspend (a jump of the clock that tokio's timers do not see).
pub trait Clock {
    fn now(&self) -> BootTime;
}

/// The real clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> BootTime {
        BootTime::now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn arithmetic_never_panics_and_stays_in_range(
            at in any::<u64>(),
            secs in any::<u64>(),
            nanos in 0..1_000_000_000u32,
        ) {
            let t = BootTime::from_nanos(at);
            let d = Duration::new(secs, nanos);
            let later = t + d;
            prop_assert!(later >= t);
            prop_assert!(later.as_nanos() >= at);
            prop_assert_eq!(BootTime::from_nanos(later.as_nanos()), later);
            let earlier = t - d;
            prop_assert!(earlier <= t);
            prop_assert!(t.until(earlier).is_zero());
            prop_assert!(earlier.until(t) <= d);
        }
    }
}
