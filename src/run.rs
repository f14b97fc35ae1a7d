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

use crate::backend::retry::Retry;
use crate::backend::{AcquireRequest, AnyBackend, Backend, BackendError, Expiry, WaitMode};
use crate::cli::Wait;
use crate::clock::{Clock, SystemClock};
use crate::config::RunConfig;
use crate::exit::{code, Failure};
use crate::front;
use crate::handoff;
use crate::hooks::{self, Event as HookEvent, Running};
use crate::job::{self, Forked, Handle, Spec, Start};
use crate::jobenv::JobEnv;
use crate::keeper::RenewStats;
use crate::lease::{Acquire, History, HolderInfo, LastRun, Lease, LockName, Renewal, RunEnd};
use crate::metrics::{self, Outcome, RunRecord};
use crate::notify::Notifier;
use crate::signals::FORWARDED;
use crate::supervisor::{self, Ending, Supervision};
use crate::timing::Fmt;
use crate::watchdog::protocol::JobExit;

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

/// How a run ended.
enum End {
    /// No lease is held and the job did not run: the backend could not be used, or a signal came
    /// while connecting or waiting.
    NotRun(Failure),
    /// The lock is held elsewhere: the run is skipped.
    Busy {
        /// The environment of the on-busy hook, before the holder's variables.
        env: JobEnv,
        holder: Option<HolderInfo>,
        message: String,
    },
    /// A run succeeded within the `--once-per` window: this one is skipped, its lease unused.
    RanRecently {
        lease: Lease,
        env: JobEnv,
        run: LastRun,
        window: Duration,
    },
    /// The lease was taken, but the job was not started.
    NotStarted { lease: Lease, failure: Failure },
    /// The job's start was ordered; how it ended is in the run.
    Ran(Run),
}

/// A run whose start was ordered, after every process of its job is gone.
struct Run {
    lease: Lease,
    ending: Ending,
    started_at: SystemTime,
    /// How long the lease was held from the start order to the job's end.
    hold: Duration,
    /// The on-lost hook, if the lease was lost: awaited last, so that it cannot delay the rest.
    lost_hook: Running,
}

impl Run {
    /// What the release records: the run, and the `--once-per` marker after a success.
    fn history(&self, end: RunEnd, once_per: Option<Duration>) -> History {
        let holder = &self.lease.holder;
        History {
            last_run: LastRun {
                holder: holder.id.clone(),
                host: holder.host.clone(),
                pid: holder.pid,
                token: self.lease.token(),
                started_at: self.started_at,
                finished_at: self.started_at + self.hold,
                duration: self.hold,
                end,
            },
            once_per: once_per.filter(|_| end.succeeded()),
        }
    }
}

/// What becomes of the lease at the end.
enum Release {
    /// Not released: there is none, or it is someone else's.
    Not,
    /// Released without recording a run.
    Bare,
    /// Released, recording the run (and the `--once-per` marker).
    Recording(History),
}

/// Everything that follows from an [`End`], in the order [`Runner::conclude`] does it.
struct Consequences {
    outcome: Outcome,
    /// The lease held at the end, if any.
    lease: Option<Lease>,
    release: Release,
    /// The on-busy hook's environment, when the run is skipped.
    busy_hook: Option<JobEnv>,
    lost_hook: Running,
    exit: Result<u8, Failure>,
}

impl Consequences {
    fn new(outcome: Outcome, release: Release, exit: Result<u8, Failure>) -> Self {
        Self {
            outcome,
            lease: None,
            release,
            busy_hook: None,
            lost_hook: Running::none(),
            exit,
        }
    }
}

struct Runner<'a> {
    cfg: &'a RunConfig,
    watchdog: Handle,
    notifier: Notifier,
}

impl Runner<'_> {
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

    async fn open(
        &self,
        signals: &mut mpsc::UnboundedReceiver<i32>,
    ) -> Result<AnyBackend, Failure> {
        let backend = &self.cfg.backend;
        tokio::select! {
            opened = AnyBackend::open(backend.url.as_deref(), &backend.options) => {
                opened.map_err(|e| e.into_failure(&backend.describe()))
            }
            sig = stop_signal(signals) => Err(interrupted(&self.cfg.lock, sig, "connecting")),
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

    /// Takes the lease, waiting as configured; `wait` is how long that took.
    async fn take(
        &self,
        backend: &mut AnyBackend,
        signals: &mut mpsc::UnboundedReceiver<i32>,
        env: &JobEnv,
        wait: &mut Duration,
    ) -> Result<Lease, End> {
        let cfg = self.cfg;
        let req = AcquireRequest {
            name: cfg.lock.clone(),
            holder: HolderInfo {
                places: cfg.holders,
                ..HolderInfo::this_process(cfg.id.clone(), cfg.timing.ttl())
            },
            ttl: cfg.timing.ttl(),
            holders: cfg.holders,
        };
        let waited = Instant::now();
        let (queued_to, mut queued) = mpsc::unbounded_channel();
        backend.announce_queued(queued_to);
        let acquired = tokio::select! {
            lease = self.acquire(backend, &req, env) => lease,
            sig = stop_signal(signals) => {
                return Err(End::NotRun(interrupted(&cfg.lock, sig, "waiting for the lock")));
            }
            never = self.hold_while_waiting(&mut queued) => match never {},
        };
        *wait = waited.elapsed();
        acquired
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
        let after = self.consequences(end, &describe);
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

    /// What follows from an ending, as a table.
    fn consequences(&self, end: End, describe: &str) -> Consequences {
        let conflict = self.cfg.conflict_exit_code;
        match end {
            End::NotRun(failure) => Consequences::new(Outcome::Error, Release::Not, Err(failure)),
            End::Busy {
                env,
                holder,
                message,
            } => Consequences {
                busy_hook: Some(env.with(hooks::holder_env(holder.as_ref()))),
                ..Consequences::new(
                    Outcome::Skipped,
                    Release::Not,
                    Err(Failure::new(conflict, message)),
                )
            },
            End::RanRecently {
                lease,
                env,
                run,
                window,
            } => Consequences {
                lease: Some(lease),
                busy_hook: Some(env.with(hooks::holder_env(None))),
                ..Consequences::new(
                    Outcome::Skipped,
                    Release::Bare,
                    Err(Failure::new(
                        conflict,
                        self.ran_in_window(&run, window, describe),
                    )),
                )
            },
            End::NotStarted { lease, failure } => Consequences {
                lease: Some(lease),
                ..Consequences::new(Outcome::Error, Release::Bare, Err(failure))
            },
            End::Ran(run) => self.after_run(run, describe),
        }
    }

    /// What follows from the end of a job whose start was ordered, as a table.
    fn after_run(&self, run: Run, describe: &str) -> Consequences {
        let lock = &self.cfg.lock;
        let recording = |end: RunEnd| Release::Recording(run.history(end, None));
        let (outcome, release, exit) = match &run.ending {
            Ending::Finished(exit) => (
                Outcome::Ran,
                Release::Recording(run.history(run_end(*exit), self.cfg.once_per)),
                Ok(exit_code(*exit)),
            ),
            Ending::TimedOut(exit) => (
                Outcome::TimedOut,
                recording(run_end(*exit)),
                Err(Failure::new(
                    code::TIMED_OUT,
                    format!(
                        "the job under lock {lock} ran longer than --max-runtime {} and was stopped ({}); lease released",
                        Fmt(self.cfg.max_runtime.unwrap_or_default()),
                        describe_exit(*exit)
                    ),
                )),
            ),
            Ending::SpawnFailed(err) => {
                let program = self.cfg.command[0].to_string_lossy();
                let (status, what) = if err.kind() == std::io::ErrorKind::NotFound {
                    (code::NOT_FOUND, "command not found")
                } else {
                    (code::NOT_EXECUTABLE, "cannot execute the command")
                };
                (
                    Outcome::Error,
                    recording(RunEnd::ExitCode(i32::from(status))),
                    Err(Failure::new(
                        status,
                        format!("{what}: {program}: {err} (lock {lock} released)"),
                    )),
                )
            }
            // No release: the lease is someone else's, or the backend did not answer in time and
            // would only delay elect's exit; either way it is gone or about to expire.
            Ending::Lost(loss, exit) => (
                Outcome::Lost,
                Release::Not,
                Err(Failure::new(
                    code::LOST,
                    format!(
                        "lease on lock {lock} lost while the job ran ({loss}); the job was stopped ({}); backend {describe}",
                        describe_exit(*exit)
                    ),
                )),
            ),
            Ending::LauncherGone => (
                Outcome::Error,
                Release::Bare,
                Err(Failure::new(
                    code::INTERNAL,
                    format!("the job's process for lock {lock} was killed before the job started; nothing ran (lock {lock} released)"),
                )),
            ),
            Ending::WatchdogGone(exit) => {
                let how = exit.map_or_else(|| "its end unknown".to_owned(), describe_exit);
                (
                    Outcome::Error,
                    recording(exit.map_or(RunEnd::Signal(nix::libc::SIGKILL), run_end)),
                    Err(Failure::new(
                        code::INTERNAL,
                        format!(
                            "elect's watchdog for lock {lock} was killed; elect stopped the job itself ({how}); lease released"
                        ),
                    )),
                )
            }
        };
        Consequences {
            lease: Some(run.lease),
            lost_hook: run.lost_hook,
            ..Consequences::new(outcome, release, exit)
        }
    }

    /// Asks for the lease, and waits for it as configured.
    async fn acquire(
        &self,
        backend: &mut AnyBackend,
        req: &AcquireRequest,
        env: &JobEnv,
    ) -> Result<Lease, End> {
        let cfg = self.cfg;
        let describe = backend.describe().to_owned();
        let not_run = |e: BackendError| End::NotRun(e.into_failure(&describe));
        let holder = match backend
            .acquire(req, WaitMode::NoWait)
            .await
            .map_err(not_run)?
        {
            Acquire::Acquired(lease) => return Ok(lease),
            Acquire::Held(holder) => holder,
        };
        let busy = |holder, message| End::Busy {
            env: env.clone(),
            holder,
            message,
        };
        let lock = &cfg.lock;
        let program = cfg.command[0].to_string_lossy();
        if cfg.wait == Wait::No {
            let held_by = held_by(holder.as_ref());
            return Err(busy(
                holder,
                format!(
                    "lock {lock} is held by {held_by}; not running {program} (backend {describe})"
                ),
            ));
        }
        self.announce_wait(holder.as_ref());
        let waited = Instant::now();
        let wait = wait_out_outages(backend, req);
        let acquired = match cfg.wait_limit() {
            Some(limit) => match tokio::time::timeout(limit, wait).await {
                Ok(result) => result,
                Err(_) => {
                    return Err(busy(
                        holder,
                        format!(
                            "lock {lock} is still held after waiting {}; not running {program} (backend {describe})",
                            Fmt(limit)
                        ),
                    ))
                }
            },
            None => wait.await,
        };
        match acquired.map_err(not_run)? {
            Acquire::Acquired(lease) => {
                tracing::debug!(lock = %lock, token = %lease.token(), waited = %Fmt(waited.elapsed()), "acquired after waiting");
                Ok(lease)
            }
            Acquire::Held(holder) => Err(busy(
                holder,
                format!("lock {lock} is held (backend {describe})"),
            )),
        }
    }

    /// Says that elect waits. Waiting is the plan when --wait is given: under cron a line here
    /// would be a mail on every run. At a terminal someone watches, so one line says why nothing
    /// happens yet.
    fn announce_wait(&self, holder: Option<&HolderInfo>) {
        let lock = &self.cfg.lock;
        let held_by = held_by(holder);
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            tracing::info!("waiting for {lock} (held by {held_by})");
        } else {
            tracing::debug!(lock = %lock, "waiting: held by {held_by}");
        }
        let host = holder.map_or("another process", |h| h.host.as_str());
        self.notifier
            .status(&format!("waiting for {lock} held by {host}"));
    }

    /// Hands the watchdog each lease that the wait leaves on the server (see
    /// [`AnyBackend::announce_queued`]), so that it is released should elect die while waiting.
    async fn hold_while_waiting(
        &self,
        queued: &mut mpsc::UnboundedReceiver<Lease>,
    ) -> std::convert::Infallible {
        loop {
            if let Some(lease) = queued.recv().await {
                if let Some(identity) = handoff::Identity::encode(&self.cfg.backend, &lease) {
                    self.watchdog.hold(identity);
                }
            } else {
                std::future::pending::<()>().await;
            }
        }
    }

    /// The line of a run skipped because a run succeeded within the `--once-per` window: when
    /// and where the job last ran.
    fn ran_in_window(&self, run: &LastRun, window: Duration, describe: &str) -> String {
        let ago = SystemTime::now()
            .duration_since(run.finished_at)
            .map_or_else(
                |_| "just now".to_owned(),
                |d| format!("{} ago", Fmt::rough(d)),
            );
        format!(
            "lock {}: the job last ran {}, {ago}; with --once-per {} not running {} again yet (backend {describe})",
            self.cfg.lock,
            run.describe(),
            Fmt(window),
            self.cfg.command[0].to_string_lossy()
        )
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

/// Who holds the lock, for people.
fn held_by(holder: Option<&HolderInfo>) -> String {
    holder.map_or_else(|| "another process".to_owned(), |h| h.to_string())
}

/// Waits for the lock. A network backend that becomes unreachable while we wait is waited out
/// too: a singleton service in `--wait` should not die because its backend restarted. The tries
/// are paced by [`Retry`]: at most half a second apart, so that the wait resumes soon after the
/// network is back, with a warning at most every few seconds.
async fn wait_out_outages(
    backend: &mut AnyBackend,
    req: &AcquireRequest,
) -> crate::backend::Result<Acquire> {
    let lock = req.name.to_string();
    let mut retry = Retry::new();
    loop {
        match backend.acquire(req, WaitMode::Wait).await {
            // The file backend's errors (a planted symlink, a foreign file) do not go away by
            // waiting.
            Err(BackendError::Unavailable(why)) if backend.expiry() == Expiry::Ttl => {
                tokio::time::sleep(retry.failed(&lock, "waiting", &why)).await;
            }
            other => {
                retry.succeeded(&lock);
                return other;
            }
        }
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

pub fn exit_code(exit: JobExit) -> u8 {
    match exit {
        JobExit::Code(c) => c as u8,
        JobExit::Signal(n) => code::signaled(n),
    }
}

fn run_end(exit: JobExit) -> RunEnd {
    match exit {
        JobExit::Code(c) => RunEnd::ExitCode(c),
        JobExit::Signal(n) => RunEnd::Signal(n),
    }
}

fn describe_exit(exit: JobExit) -> String {
    match exit {
        JobExit::Code(c) => format!("it exited with {c}"),
        JobExit::Signal(n) => match nix::sys::signal::Signal::try_from(n) {
            Ok(sig) => format!("killed by {}", sig.as_str()),
            Err(_) => format!("killed by signal {n}"),
        },
    }
}
