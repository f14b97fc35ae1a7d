//! The lease math of the safety rule, in one place.
//!
//! Let `s` be the local time at which the last successful acquire or renew was *sent*. The backend
//! cannot expire the lease before `s + ttl`, so the holder owns it until its local deadline
//! `D = s + ttl - margin`, where `margin = max(250ms, ttl / 50)` covers clock-rate drift between
//! this machine and the backend. Without a successful renew, the job gets SIGTERM at `D - grace`
//! and SIGKILL at `D`: it is dead before anyone else can acquire. For that to leave room for a
//! renew, the settings must satisfy `renew + grace + margin < ttl`.

use std::time::Duration;

use crate::clock::BootTime;

/// Validated lease settings; an instance cannot break `renew + grace + margin < ttl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    ttl: Duration,
    renew: Duration,
    grace: Duration,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TimingError {
    #[error("--ttl must be at least 1s (got {0})")]
    TtlTooShort(Fmt),
    #[error("--{what} {value} is too long: at most 100 years")]
    TooLong { what: &'static str, value: Fmt },
    #[error("--renew ({renew}) must be below --ttl ({ttl})")]
    RenewNotBelowTtl { renew: Fmt, ttl: Fmt },
    #[error("--renew must be above zero")]
    RenewZero,
    #[error(
        "lease settings leave no room to renew: renew {renew} + grace {grace} + margin {margin} \
         must be below ttl {ttl}; raise --ttl or lower --renew or --grace"
    )]
    NoRoom {
        renew: Fmt,
        grace: Fmt,
        margin: Fmt,
        ttl: Fmt,
    },
}

/// How elect shows a duration to people, everywhere: in humantime's units (`15s`, `1s 500ms`),
/// truncated to the millisecond, the finest unit a user writes. [`Fmt::rough`] is the one coarser
/// form, for how long ago something happened: to the second, to the millisecond under a second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fmt(pub Duration);

impl Fmt {
    /// An age, such as the time since a job last ran (`12s`, `400ms`).
    pub fn rough(d: Duration) -> Self {
        if d < Duration::from_secs(1) {
            Self(d)
        } else {
            Self(Duration::from_secs(d.as_secs()))
        }
    }
}

impl std::fmt::Display for Fmt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let millis = Duration::from_millis(u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX));
        humantime::format_duration(millis).fmt(f)
    }
}

impl LeaseTiming {
    pub const MIN_TTL: Duration = Duration::from_secs(1);
    /// The longest ttl, renew or grace (see [`crate::cli::LONGEST`]).
    pub const LONGEST: Duration = crate::cli::LONGEST;
    const MIN_MARGIN: Duration = Duration::from_millis(250);
    /// The longest a failed renew waits before trying again.
    const MAX_RETRY: Duration = Duration::from_secs(1);

    /// `renew` defaults to `ttl / 3`.
    pub fn new(
        ttl: Duration,
        renew: Option<Duration>,
        grace: Duration,
    ) -> Result<Self, TimingError> {
        if ttl < Self::MIN_TTL {
            return Err(TimingError::TtlTooShort(Fmt(ttl)));
        }
        let renew = renew.unwrap_or(ttl / 3);
        // Bounded so that no deadline built from them can leave the clock's range.
        for (what, value) in [("ttl", ttl), ("renew", renew), ("grace", grace)] {
            if value > Self::LONGEST {
                return Err(TimingError::TooLong {
                    what,
                    value: Fmt(value),
                });
            }
        }
        if renew.is_zero() {
            return Err(TimingError::RenewZero);
        }
        if renew >= ttl {
            return Err(TimingError::RenewNotBelowTtl {
                renew: Fmt(renew),
                ttl: Fmt(ttl),
            });
        }
        let timing = Self { ttl, renew, grace };
        if renew + grace + timing.margin() >= ttl {
            return Err(TimingError::NoRoom {
                renew: Fmt(renew),
                grace: Fmt(grace),
                margin: Fmt(timing.margin()),
                ttl: Fmt(ttl),
            });
        }
        Ok(timing)
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn renew(&self) -> Duration {
        self.renew
    }

    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// Covers clock-rate drift between this machine and the backend.
    pub fn margin(&self) -> Duration {
        Self::MIN_MARGIN.max(self.ttl / 50)
    }

    /// The local deadline `D` of a lease whose last successful request was sent at `sent_at`.
    pub fn deadline(&self, sent_at: BootTime) -> BootTime {
        sent_at + (self.ttl - self.margin())
    }

    /// When the job gets SIGTERM if no renew succeeds before: `D - grace`.
    pub fn term_at(&self, deadline: BootTime) -> BootTime {
        deadline - self.grace
    }

    /// A freshly acquired lease may start the job only if it would survive one failed renew.
    pub fn may_start(&self, now: BootTime, deadline: BootTime) -> bool {
        now.until(deadline) > self.grace + self.renew
    }

    /// How long to wait after a failed renew before trying again.
    pub fn retry_interval(&self) -> Duration {
        (self.renew / 2).clamp(Duration::from_millis(50), Self::MAX_RETRY)
    }

    /// The timeout of one renew attempt: never past the point where the job gets SIGTERM, so a
    /// hung request cannot make the keeper miss it.
    pub fn attempt_timeout(&self, now: BootTime, deadline: BootTime) -> Duration {
        self.renew.min(now.until(self.term_at(deadline)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }
    const fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    #[test]
    fn durations_for_people() {
        assert_eq!(Fmt(ms(1500)).to_string(), "1s 500ms");
        assert_eq!(Fmt(Duration::from_micros(1999)).to_string(), "1ms");
        assert_eq!(Fmt(s(90)).to_string(), "1m 30s");
        assert_eq!(Fmt::rough(ms(12_400)).to_string(), "12s");
        assert_eq!(Fmt::rough(ms(400)).to_string(), "400ms");
        assert_eq!(Fmt::rough(Duration::from_micros(400)).to_string(), "0s");
        // Saturates rather than overflows.
        assert!(!Fmt(Duration::MAX).to_string().is_empty());
    }

    #[test]
    fn defaults_fit() {
        let t = LeaseTiming::new(s(15), None, s(3)).unwrap();
        assert_eq!(t.renew(), s(5));
        assert_eq!(t.margin(), ms(300));
    }

    #[test]
    fn margin_has_a_floor() {
        let t = LeaseTiming::new(s(2), None, ms(500)).unwrap();
        assert_eq!(t.margin(), ms(250));
    }

    #[test]
    fn rejects_settings_without_room() {
        assert!(matches!(
            LeaseTiming::new(s(2), None, s(3)),
            Err(TimingError::NoRoom { .. })
        ));
        assert!(matches!(
            LeaseTiming::new(s(10), Some(s(10)), s(1)),
            Err(TimingError::RenewNotBelowTtl { .. })
        ));
        assert!(matches!(
            LeaseTiming::new(ms(500), None, ms(10)),
            Err(TimingError::TtlTooShort(_))
        ));
        let err = LeaseTiming::new(s(10), Some(s(6)), s(4)).unwrap_err();
        assert!(err.to_string().contains("raise --ttl"), "{err}");
    }

    #[test]
    fn deadline_and_schedule() {
        let t = LeaseTiming::new(s(15), None, s(3)).unwrap();
        let sent = BootTime::from_nanos(1_000_000_000);
        let d = t.deadline(sent);
        assert_eq!(d, sent + ms(14_700));
        assert_eq!(t.term_at(d), sent + ms(11_700));
        assert!(t.may_start(sent, d));
        assert!(!t.may_start(sent + s(7), d));
        assert_eq!(t.attempt_timeout(sent, d), s(5));
        assert_eq!(t.attempt_timeout(sent + s(10), d), ms(1_700));
        assert_eq!(t.attempt_timeout(sent + s(20), d), Duration::ZERO);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn any_duration() -> impl Strategy<Value = Duration> {
            prop_oneof![
                (any::<u64>(), 0..1_000_000_000u32).prop_map(|(s, n)| Duration::new(s, n)),
                (0..200 * 31_557_600u64, 0..1_000_000_000u32)
                    .prop_map(|(s, n)| Duration::new(s, n)),
                (0..120_000u64).prop_map(Duration::from_millis),
            ]
        }

        proptest! {
            /// Over the whole range: no panic; settings that are accepted keep the safety rule,
            /// and every time derived from them stays in the clock's range for a machine up for
            /// a century.
            #[test]
            fn settings_keep_the_rule_or_are_refused(
                ttl in any_duration(),
                renew in prop::option::of(any_duration()),
                grace in any_duration(),
                uptime in 0..100 * 31_557_600_000_000_000u64,
                elapsed in any_duration(),
            ) {
                let Ok(t) = LeaseTiming::new(ttl, renew, grace) else {
                    return Ok(());
                };
                let needed = t.renew().checked_add(t.grace()).and_then(|d| d.checked_add(t.margin()));
                prop_assert!(needed.is_some_and(|n| n < t.ttl()));
                let sent = BootTime::from_nanos(uptime);
                let d = t.deadline(sent);
                prop_assert_eq!(sent.until(d), t.ttl() - t.margin());
                prop_assert!(d.as_nanos() < u64::MAX, "the deadline stays in range");
                prop_assert!(t.term_at(d) <= d);
                prop_assert_eq!(t.term_at(d).until(d), t.grace());
                let now = sent.saturating_add(elapsed);
                let attempt = t.attempt_timeout(now, d);
                prop_assert!(attempt <= t.renew());
                prop_assert!(now.saturating_add(attempt) <= t.term_at(d).max(now));
                let _ = t.may_start(now, d);
                prop_assert!(t.retry_interval() <= t.renew().max(Duration::from_millis(50)));
            }
        }
    }
}
