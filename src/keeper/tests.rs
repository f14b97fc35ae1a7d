//! The keeper against a scripted fake backend, on paused tokio time.

use std::cell::Cell;
use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::*;
use crate::backend::{AcquireRequest, BackendError, WaitMode};
use crate::lease::{Acquire, FencingToken, HolderInfo, LockName, LockState};

/// One scripted answer to a renew.
#[derive(Debug, Clone)]
enum Step {
    Ok,
    Fail,
    Lost,
    /// Answer Ok, but only after this long.
    Slow(Duration),
}

struct Fake {
    script: VecDeque<Step>,
    /// What to answer once the script runs out.
    then: Step,
    renews: Vec<BootTime>,
    clock: TestClock,
    /// When the backend learns by itself that the lease is gone (`Backend::lost`), if ever.
    lost_at: Option<Duration>,
}

impl Backend for Fake {
    fn describe(&self) -> &str {
        "fake://"
    }
    fn expiry(&self) -> Expiry {
        Expiry::Ttl
    }
    async fn acquire(
        &mut self,
        _: &AcquireRequest,
        _: WaitMode,
    ) -> crate::backend::Result<Acquire> {
        unreachable!("the keeper never acquires")
    }
    async fn renew(&mut self, _: &Lease) -> crate::backend::Result<Renewal> {
        self.renews.push(self.clock.now());
        match self.script.pop_front().unwrap_or_else(|| self.then.clone()) {
            Step::Ok => Ok(Renewal::Renewed),
            Step::Fail => Err(BackendError::Unavailable("connection refused".into())),
            Step::Lost => Ok(Renewal::Lost("held by someone else".into())),
            Step::Slow(d) => {
                tokio::time::sleep(d).await;
                Ok(Renewal::Renewed)
            }
        }
    }
    async fn lost(&mut self, _: &Lease) -> String {
        match self.lost_at {
            Some(at) => {
                tokio::time::sleep_until(self.clock.start + at).await;
                "lock file deleted".into()
            }
            None => std::future::pending().await,
        }
    }
    async fn release(
        &mut self,
        _: &Lease,
        _: Option<&crate::lease::History>,
    ) -> crate::backend::Result<()> {
        unreachable!()
    }
    async fn fresh_run(
        &mut self,
        _: &LockName,
    ) -> crate::backend::Result<Option<crate::lease::LastRun>> {
        unreachable!()
    }
    async fn inspect(&mut self, _: &LockName) -> crate::backend::Result<LockState> {
        unreachable!()
    }
    async fn list(&mut self) -> crate::backend::Result<Vec<LockState>> {
        unreachable!()
    }
    async fn force_release(
        &mut self,
        _: &LockName,
        _: FencingToken,
    ) -> crate::backend::Result<crate::backend::ForcedRelease> {
        unreachable!()
    }
}

/// Paused tokio time, plus jumps that tokio's timers do not see (a suspend).
#[derive(Clone)]
struct TestClock {
    start: Instant,
    jumped: std::rc::Rc<Cell<Duration>>,
}

impl TestClock {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            jumped: Default::default(),
        }
    }
    fn suspend(&self, d: Duration) {
        self.jumped.set(self.jumped.get() + d);
    }
}

impl Clock for TestClock {
    fn now(&self) -> BootTime {
        // Offset from zero so that subtractions never clamp.
        BootTime::from_nanos(1_000_000_000_000) + (self.start.elapsed() + self.jumped.get())
    }
}

fn timing() -> LeaseTiming {
    // ttl 15s, renew 5s, grace 3s, margin 300ms: D = s + 14.7s, SIGTERM at s + 11.7s.
    LeaseTiming::new(Duration::from_secs(15), None, Duration::from_secs(3)).unwrap()
}

fn setup(script: &[Step], then: Step) -> (Fake, Lease, TestClock) {
    let clock = TestClock::new();
    let mut holder = HolderInfo::this_process(None, Duration::from_secs(15));
    holder.token = FencingToken(1);
    let lease = Lease {
        name: LockName::new("billing").unwrap(),
        holder,
        sent_at: clock.now(),
        secret: String::new(),
        kernel_lock: None,
        slot: 0,
    };
    let fake = Fake {
        script: script.iter().cloned().collect(),
        then,
        renews: Vec::new(),
        clock: clock.clone(),
        lost_at: None,
    };
    (fake, lease, clock)
}

fn secs(f: f64) -> Duration {
    Duration::from_secs_f64(f)
}

#[tokio::test(start_paused = true)]
async fn healthy_renewals_keep_the_lease() {
    let (mut fake, mut lease, clock) = setup(&[], Step::Ok);
    let (tx, rx) = watch::channel(None);
    let start = clock.now();
    let kept = tokio::time::timeout(
        secs(60.0),
        keep(
            &mut fake,
            &mut lease,
            timing(),
            &clock,
            &tx,
            &mut RenewStats::default(),
        ),
    )
    .await;
    assert!(kept.is_err(), "the lease must not be lost: {kept:?}");
    // One renew every 5 s: at 5, 10, ..., 60.
    assert_eq!(fake.renews.len(), 12);
    assert_eq!(fake.renews[0], start + secs(5.0));
    assert_eq!(*rx.borrow(), Some(start + secs(60.0 + 14.7)));
}

/// A loss the backend learns of between renewals ends the keeper at once, not at the next renew.
#[tokio::test(start_paused = true)]
async fn a_loss_learnt_between_renewals_is_acted_on_at_once() {
    let (mut fake, mut lease, clock) = setup(&[], Step::Ok);
    fake.lost_at = Some(secs(7.3));
    let (tx, _rx) = watch::channel(None);
    let start = clock.now();
    let loss = keep(
        &mut fake,
        &mut lease,
        timing(),
        &clock,
        &tx,
        &mut RenewStats::default(),
    )
    .await;
    assert_eq!(loss, Loss::Revoked("lock file deleted".into()));
    assert_eq!(clock.now(), start + secs(7.3));
    assert_eq!(
        fake.renews.len(),
        1,
        "one renew at 5 s, none after the loss"
    );
}

#[tokio::test(start_paused = true)]
async fn failing_renewals_lose_the_lease_at_the_sigterm_time() {
    let (mut fake, mut lease, clock) = setup(&[], Step::Fail);
    let (tx, rx) = watch::channel(None);
    let start = clock.now();
    let loss = keep(
        &mut fake,
        &mut lease,
        timing(),
        &clock,
        &tx,
        &mut RenewStats::default(),
    )
    .await;
    assert!(
        matches!(loss, Loss::DeadlinePassed { ref last_error } if last_error.contains("refused"))
    );
    // D - grace = 14.7 - 3 = 11.7 s after the acquire was sent.
    assert_eq!(clock.now(), start + secs(11.7));
    assert!(!rx.has_changed().unwrap(), "the deadline never moved");
    // First renew at 5 s, then retries every second until 11.7 s.
    assert_eq!(fake.renews.first(), Some(&(start + secs(5.0))));
    assert_eq!(fake.renews.len(), 7, "{:?}", fake.renews);
}

#[tokio::test(start_paused = true)]
async fn a_slow_renew_counts_as_failed_and_cannot_overrun_the_deadline() {
    let (mut fake, mut lease, clock) = setup(&[], Step::Slow(secs(30.0)));
    let (tx, _rx) = watch::channel(None);
    let start = clock.now();
    let loss = keep(
        &mut fake,
        &mut lease,
        timing(),
        &clock,
        &tx,
        &mut RenewStats::default(),
    )
    .await;
    assert!(matches!(loss, Loss::DeadlinePassed { .. }), "{loss:?}");
    assert_eq!(clock.now(), start + secs(11.7));
}

#[tokio::test(start_paused = true)]
async fn a_renew_that_recovers_moves_the_deadline_from_its_send_time() {
    let (mut fake, mut lease, clock) = setup(&[Step::Fail, Step::Fail, Step::Ok], Step::Ok);
    let (tx, rx) = watch::channel(None);
    let start = clock.now();
    let _ = tokio::time::timeout(
        secs(7.5),
        keep(
            &mut fake,
            &mut lease,
            timing(),
            &clock,
            &tx,
            &mut RenewStats::default(),
        ),
    )
    .await;
    // Renews at 5 (fail), 6 (fail), 7 (ok): D = 7 + 14.7.
    assert_eq!(*rx.borrow(), Some(start + secs(7.0 + 14.7)));
    assert_eq!(lease.sent_at, start + secs(7.0));
}

#[tokio::test(start_paused = true)]
async fn an_explicit_loss_is_immediate() {
    let (mut fake, mut lease, clock) = setup(&[Step::Ok, Step::Lost], Step::Ok);
    let (tx, _rx) = watch::channel(None);
    let start = clock.now();
    let loss = keep(
        &mut fake,
        &mut lease,
        timing(),
        &clock,
        &tx,
        &mut RenewStats::default(),
    )
    .await;
    assert_eq!(loss, Loss::Revoked("held by someone else".into()));
    assert_eq!(clock.now(), start + secs(10.0));
}

#[tokio::test(start_paused = true)]
async fn resuming_from_suspend_past_the_deadline_loses_without_renewing() {
    let (mut fake, mut lease, clock) = setup(&[], Step::Ok);
    let (tx, _rx) = watch::channel(None);
    let start = clock.now();
    // The machine sleeps for a minute right after the acquire; tokio's timers do not advance.
    clock.suspend(secs(60.0));
    let loss = keep(
        &mut fake,
        &mut lease,
        timing(),
        &clock,
        &tx,
        &mut RenewStats::default(),
    )
    .await;
    assert!(matches!(loss, Loss::DeadlinePassed { .. }), "{loss:?}");
    assert!(
        fake.renews.is_empty(),
        "a lease past its deadline must not be renewed"
    );
    assert_eq!(clock.now(), start + secs(60.0));
}
