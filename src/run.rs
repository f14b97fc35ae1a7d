//! `elect run`: acquire, supervise, release.
//!
//! At a terminal, a front is split off first (see [`front`]). The watchdog is forked next, while
//! elect is still single-threaded; then the async runtime (one thread) opens the backend, takes
//! the lease (waiting if asked), has the watchdog start the job, and supervises it until every
//! process of the job is gone; then the lease is released and elect exits with the job's code.
//! Hooks, systemd notifications and metrics hang off the same steps.
//!
//! # One ending per run
//! Every way a run can go ends in one [`End`]. What follows from it (whether and how the lease is
//! released, the history and `--once-per` marker the release records, the on-busy and on-lost
//! hooks still to finish, the metrics outcome and elect's exit) is derived from that value in one
//! place, [`Runner::conclude`], rather than done on each path.

use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;

use crate::backend::{AnyBackend, Backend, Expiry};
use crate::cli::Wait;
use crate::clock::{Clock, SystemClock};
use crate::config::RunConfig;
use crate::exit::{code, Failure};
use crate::front;
use crate::handoff;
use crate::hooks::{Event as HookEvent, Running};
use crate::job::{self, Forked, Handle, Spec, Start};
use crate::jobenv::JobEnv;
use crate::keeper::RenewStats;
use crate::lease::{History, Lease, LockName, Renewal};
use crate::metrics::{self, RunRecord};
use crate::notify::Notifier;
use crate::signals::FORWARDED;
use crate::supervisor::{self, Ending, Supervision};
use crate::timing::Fmt;

mod acquire;
mod end;

use self::end::{End, Release, Run};

/// How long a release may take before elect gives up on it (the lease then expires by its ttl).
const RELEASE_TIMEOUT: Duration = Duration::from_secs(3);

/// What `elect run` sets up first, while the process is single-threaded and small: the front at
/// a terminal, then the watchdog (which forks the job's process at once). `main` calls this before
/// it parses the arguments, so that both forks copy little and the watchdog's work overlaps
/// elect's; the command and the grace reach the watchdog later, in the start order.
pub fn prepare() -> Result<Forked, Failure> {
    let front = front::split()
        .map_err(|e| Failure::new(code::INTERNAL, format!("cannot fork the front: {e}")))?;
    job::fork(front)
        .map_err(|e| Failure::new(code::INTERNAL, format!("cannot fork the watchdog: {e}")))
}

pub fn run(cfg: RunConfig, link: Forked) -> Result<u8, Failure> {
    let watchdog = link.pid;
    let result = run_linked(cfg, link);
    job::reap(watchdog);
    result
}

/// `run` up to the end of the watchdog's sockets.
fn run_linked(cfg: RunConfig, link: Forked) -> Result<u8, Failure> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(code::INTERNAL, format!("cannot start: {e}")))?;
    let mut record = RunRecord::default();
    let result = runtime.block_on(async {
        let watchdog = Handle::new(link, &cfg.command)
            .map_err(|e| Failure::new(code::INTERNAL, format!("cannot set up the job: {e}")))?;
        let mut signals = supervisor::forward_signals()
            .map_err(|e| Failure::new(code::INTERNAL, format!("cannot handle signals: {e}")))?;
        let runner = Runner {
            cfg: &cfg,
            watchdog,
            notifier: Notifier::from_env(),
        };
        runner.run(&mut signals, &mut record).await
    });
    if let Some(path) = &cfg.metrics_file {
        let exit = match &result {
            Ok(code) => *code,
            Err(failure) => failure.code,
        };
        metrics::write(path, &cfg.lock, &record, exit);
    }
    result
}

struct Runner<'a> {
    cfg: &'a RunConfig,
    watchdog: Handle,
    notifier: Notifier,
}

impl Runner<'_> {
    /// The whole run: what happens, then what follows from how it ended.
    async fn run(
        &self,
        signals: &mut mpsc::UnboundedReceiver<i32>,
        record: &mut RunRecord,
    ) -> Result<u8, Failure> {
        match self.open(signals).await {
            Ok(mut backend) => {
                let end = self.hold(&mut backend, signals, record).await;
                self.conclude(Some(&mut backend), end, record).await
            }
            Err(failure) => self.conclude(None, End::NotRun(failure), record).await,
        }
    }

    /// Opens the backend; a stopping signal meanwhile ends the run. A contender that waits rides
    /// out a backend that gives no answer at first (see [`AnyBackend::open_waiting`]), within its
    /// wait.
    async fn open(
        &self,
        signals: &mut mpsc::UnboundedReceiver<i32>,
    ) -> Result<AnyBackend, Failure> {
        let cfg = self.cfg;
        let (url, options) = (cfg.backend.url.as_deref(), &cfg.backend.options);
        let opening = async {
            if cfg.wait == Wait::No {
                return AnyBackend::open(url, options).await;
            }
            let until = cfg
                .wait_limit()
                .map(|limit| tokio::time::Instant::now() + limit);
            AnyBackend::open_waiting(url, options, cfg.lock.as_str(), until).await
        };
        tokio::select! {
            opened = opening => opened.map_err(|e| e.into_failure(&cfg.backend.describe())),
            sig = stop_signal(signals) => Err(interrupted(&cfg.lock, sig, "connecting")),
        }
    }

    /// Takes the lease and runs the job under it, as far as the checks before the start allow.
    async fn hold(
        &self,
        backend: &mut AnyBackend,
        signals: &mut mpsc::UnboundedReceiver<i32>,
        record: &mut RunRecord,
    ) -> End {
        let env = JobEnv::new(
            &self.cfg.lock,
            backend.describe(),
            backend.secret_variables(),
        );
        let lease = match self.take(backend, signals, &env, &mut record.wait).await {
            Ok(lease) => lease,
            Err(end) => return end,
        };
        tracing::debug!(lock = %self.cfg.lock, token = %lease.token(), holder = %lease.holder.id, backend = %backend.describe(), "acquired");
        let mut lease = match self.claim_run(backend, lease, &env).await {
            Ok(lease) => lease,
            Err(end) => return end,
        };
        if let Err(failure) = self.ensure_time_to_start(backend, &mut lease).await {
            return End::NotStarted { lease, failure };
        }
        self.launch(backend, lease, &env, signals, &mut record.renewals)
            .await
    }

    /// With `--once-per`, checked while holding the lock: two contenders cannot both miss the
    /// marker. The run is recorded in the same step, so that it counts even if its release is
    /// lost.
    async fn claim_run(
        &self,
        backend: &mut AnyBackend,
        lease: Lease,
        env: &JobEnv,
    ) -> Result<Lease, End> {
        let Some(window) = self.cfg.once_per else {
            return Ok(lease);
        };
        match backend.claim_run(&lease, window).await {
            Ok(None) => Ok(lease),
            Ok(Some(run)) => Err(End::RanRecently {
                lease,
                env: env.clone(),
                run,
                window,
            }),
            Err(e) => Err(End::NotStarted {
                failure: e.into_failure(backend.describe()),
                lease,
            }),
        }
    }

    /// Has the watchdog start the job, and supervises it to its end.
    async fn launch(
        &self,
        backend: &mut AnyBackend,
        mut lease: Lease,
        env: &JobEnv,
        signals: &mut mpsc::UnboundedReceiver<i32>,
        renewals: &mut RenewStats,
    ) -> End {
        let cfg = self.cfg;
        let expires = backend.expiry() == Expiry::Ttl;
        let deadline = expires.then(|| cfg.timing.deadline(lease.sent_at));
        let job_env = env.for_lease(&lease);
        let spec = Spec {
            lock: cfg.lock.to_string(),
            deadline,
            grace: cfg.timing.grace(),
            env: job_env.changes(),
            isolation: cfg.isolation,
        };
        let started = Instant::now();
        let started_at = SystemTime::now();
        if expires {
            if let Some(identity) = handoff::Identity::encode(&cfg.backend, &lease) {
                self.watchdog.hold(identity);
            }
        }
        let start = match self.watchdog.start(spec, &lease).await {
            Ok(start) => start,
            Err(e) => {
                let failure =
                    Failure::new(code::INTERNAL, format!("cannot reach the watchdog: {e}"));
                return End::NotStarted { lease, failure };
            }
        };
        let (ending, lost_hook) = match start {
            Start::Running { pid } => {
                let ctx = Supervision {
                    job: pid,
                    deadline,
                    timing: cfg.timing,
                    max_runtime: cfg.max_runtime,
                    notifier: &self.notifier,
                    hooks: &cfg.hooks,
                    hook_env: job_env,
                };
                self.supervise(&ctx, backend, &mut lease, signals, renewals)
                    .await
            }
            Start::Failed(err) => (Ending::SpawnFailed(err), Running::none()),
            Start::LauncherGone => (Ending::LauncherGone, Running::none()),
            Start::WatchdogGone => {
                // The job may have started before the watchdog died.
                let mut guard = self.watchdog.guard(None, cfg.timing.grace(), deadline);
                let exit = guard.stop_alone().await;
                (Ending::WatchdogGone(exit), Running::none())
            }
        };
        let hold = started.elapsed();
        self.notifier.stopping();
        // The watchdog has made its last report (or is gone): let it exit while the lease is
        // released, rather than after elect.
        self.watchdog.hang_up();
        End::Ran(Run {
            lease,
            ending,
            started_at,
            hold,
            lost_hook,
        })
    }

    /// The started job, to its end, with the on-acquired hook beside it.
    async fn supervise(
        &self,
        ctx: &Supervision<'_>,
        backend: &mut AnyBackend,
        lease: &mut Lease,
        signals: &mut mpsc::UnboundedReceiver<i32>,
        renewals: &mut RenewStats,
    ) -> (Ending, Running) {
        let lock = &self.cfg.lock;
        tracing::debug!(lock = %lock, pid = ctx.job, "job started");
        let holding = format!("holding {lock}, token {}", lease.token());
        self.notifier.ready(&holding);
        let acquired_hook =
            self.cfg
                .hooks
                .start_fenced(HookEvent::Acquired, ctx.hook_env.clone(), ctx.job);
        let ending = supervisor::supervise(
            backend,
            lease,
            ctx,
            &SystemClock,
            &self.watchdog,
            signals,
            renewals,
        )
        .await;
        acquired_hook.finish().await;
        ending
    }

    /// Does what follows from how the run ended, in one order: the metrics outcome, the release,
    /// the on-busy hook, the on-lost hook; then elect's exit.
    async fn conclude(
        &self,
        backend: Option<&mut AnyBackend>,
        end: End,
        record: &mut RunRecord,
    ) -> Result<u8, Failure> {
        if let End::Ran(run) = &end {
            record.hold = run.hold;
        }
        let describe = match &backend {
            Some(backend) => backend.describe().to_owned(),
            None => self.cfg.backend.describe(),
        };
        let after = end.consequences(self.cfg, &describe);
        record.outcome = Some(after.outcome);
        if let (Some(backend), Some(lease)) = (backend, &after.lease) {
            match &after.release {
                Release::Not => {}
                Release::Bare => release(backend, lease, None).await,
                Release::Recording(history) => release(backend, lease, Some(history)).await,
            }
        }
        if let Some(env) = after.busy_hook {
            self.cfg.hooks.start(HookEvent::Busy, env).finish().await;
        }
        if let Ok(exit) = &after.exit {
            tracing::debug!(lock = %self.cfg.lock, exit, elapsed = %Fmt(record.hold), "job exited; lease released");
        }
        after.lost_hook.finish().await;
        match after.exit {
            // `--conflict-exit-code 0`: a skipped run is not an error, and says nothing.
            Err(skipped) if skipped.code == 0 => {
                tracing::debug!("{}", skipped.message);
                Err(Failure::new(0, String::new()))
            }
            exit => exit,
        }
    }

    /// A slow acquire must not start a job that would be killed before its first renew: renew
    /// once more if too little time is left, and give up if that does not help.
    async fn ensure_time_to_start(
        &self,
        backend: &mut AnyBackend,
        lease: &mut Lease,
    ) -> Result<(), Failure> {
        if backend.expiry() != Expiry::Ttl {
            return Ok(());
        }
        let timing = self.cfg.timing;
        let clock = SystemClock;
        if timing.may_start(clock.now(), timing.deadline(lease.sent_at)) {
            return Ok(());
        }
        let sent = clock.now();
        if let Ok(Ok(Renewal::Renewed)) =
            tokio::time::timeout(timing.renew(), backend.renew(lease)).await
        {
            lease.sent_at = sent;
            if timing.may_start(clock.now(), timing.deadline(sent)) {
                return Ok(());
            }
        }
        Err(Failure::new(
            code::UNAVAILABLE,
            format!(
                "lock {}: the backend {} answered too slowly to start the job safely within the ttl ({}); raise --ttl",
                self.cfg.lock,
                backend.describe(),
                Fmt(timing.ttl())
            ),
        ))
    }
}

async fn release(backend: &mut AnyBackend, lease: &Lease, history: Option<&History>) {
    match tokio::time::timeout(RELEASE_TIMEOUT, backend.release(lease, history)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(lock = %lease.name, "release failed ({e}); the lease will expire by its ttl")
        }
        Err(_) => {
            tracing::warn!(lock = %lease.name, "release timed out; the lease will expire by its ttl")
        }
    }
}

/// Waits for a signal that should end elect before the job started (TERM, INT, HUP, QUIT).
async fn stop_signal(signals: &mut mpsc::UnboundedReceiver<i32>) -> i32 {
    let stopping = [
        nix::libc::SIGTERM,
        nix::libc::SIGINT,
        nix::libc::SIGHUP,
        nix::libc::SIGQUIT,
    ];
    loop {
        match signals.recv().await {
            Some(sig) if stopping.contains(&sig) => return sig,
            Some(_) => {}
            None => std::future::pending::<()>().await,
        }
    }
}

fn interrupted(lock: &LockName, sig: i32, doing: &str) -> Failure {
    let name = FORWARDED
        .iter()
        .find(|s| **s as i32 == sig)
        .map_or("a signal", |s| s.as_str());
    Failure::new(
        code::signaled(sig),
        format!("stopped by {name} while {doing} (lock {lock}); the job did not run"),
    )
}
