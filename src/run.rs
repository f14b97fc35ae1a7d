//! `elect run`: acquire, supervise, release.
//!
//! At a terminal, a front is split off first (see [`front`]). The watchdog is forked next, while
//! elect is still single-threaded; then the async runtime (one thread) opens the backend, takes
//! the lease (waiting if asked), has the watchdog start the job, and supervises it until every
//! process of the job is gone; then the lease is released and elect exits with the job's code.
//! Hooks, systemd notifications and metrics hang off the same steps.

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
use crate::lease::{Acquire, History, HolderInfo, LastRun, Lease, LockName, Renewal, RunEnd};
use crate::metrics::{self, Outcome, RunRecord};
use crate::notify::Notifier;
use crate::signals::FORWARDED;
use crate::supervisor::{self, Ending, Supervision};
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
        let cfg = self.cfg;
        let lock = &cfg.lock;
        record.outcome = Some(Outcome::Error);
        let mut backend = tokio::select! {
            opened = open(cfg) => {
                opened.map_err(|e| e.into_failure(&cfg.backend.describe()))?
            }
            sig = stop_signal(signals) => return Err(interrupted(lock, sig, "connecting")),
        };
        let describe = backend.describe().to_owned();
        let base_env = JobEnv::new(lock, &describe, backend.secret_variables());
        let req = AcquireRequest {
            name: lock.clone(),
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
            lease = self.acquire(&mut backend, &req, &base_env) => lease,
            sig = stop_signal(signals) => return Err(interrupted(lock, sig, "waiting for the lock")),
            never = self.hold_while_waiting(&mut queued) => match never {},
        };
        record.wait = waited.elapsed();
        let mut lease = match acquired {
            Ok(lease) => lease,
            Err(failure) => {
                if failure.code == cfg.conflict_exit_code {
                    record.outcome = Some(Outcome::Skipped);
                }
                return Err(failure);
            }
        };
        tracing::debug!(lock = %lock, token = %lease.token(), holder = %lease.holder.id, backend = %describe, "acquired");

        // Checked while holding the lock: two contenders cannot both miss the marker. The run
        // is recorded in the same step, so that it counts even if its release is lost.
        if let Some(window) = cfg.once_per {
            match backend.claim_run(&lease, window).await {
                Ok(None) => {}
                Ok(Some(run)) => {
                    release(&mut backend, &lease, None).await;
                    record.outcome = Some(Outcome::Skipped);
                    return Err(self.ran_in_window(&run, window, &describe, &base_env).await);
                }
                Err(e) => {
                    release(&mut backend, &lease, None).await;
                    return Err(e.into_failure(&describe));
                }
            }
        }

        self.ensure_time_to_start(&mut backend, &mut lease).await?;
        let deadline =
            (backend.expiry() == Expiry::Ttl).then(|| cfg.timing.deadline(lease.sent_at));
        let job_env = base_env.for_lease(&lease);
        let spec = Spec {
            lock: lock.to_string(),
            deadline,
            grace: cfg.timing.grace(),
            env: job_env.changes(),
            isolation: cfg.isolation,
        };
        let started = Instant::now();
        let started_at = SystemTime::now();
        if backend.expiry() == Expiry::Ttl {
            if let Some(identity) = handoff::Identity::encode(&cfg.backend, &lease) {
                self.watchdog.hold(identity);
            }
        }
        let start = match self.watchdog.start(spec, &lease).await {
            Ok(start) => start,
            Err(e) => {
                release(&mut backend, &lease, None).await;
                return Err(Failure::new(
                    code::INTERNAL,
                    format!("cannot reach the watchdog: {e}"),
                ));
            }
        };
        let grace = cfg.timing.grace();
        let (ending, lost_hook) = match start {
            Start::Running { pid } => {
                tracing::debug!(lock = %lock, pid, "job started");
                let holding = format!("holding {lock}, token {}", lease.token());
                self.notifier.ready(&holding);
                let acquired_hook =
                    cfg.hooks
                        .start_fenced(HookEvent::Acquired, job_env.clone(), pid);
                let ctx = Supervision {
                    job: pid,
                    deadline,
                    timing: cfg.timing,
                    max_runtime: cfg.max_runtime,
                    notifier: &self.notifier,
                    hooks: &cfg.hooks,
                    hook_env: job_env,
                };
                let clock = SystemClock;
                let ending = supervisor::supervise(
                    &mut backend,
                    &mut lease,
                    &ctx,
                    &clock,
                    &self.watchdog,
                    signals,
                    &mut record.renewals,
                )
                .await;
                acquired_hook.finish().await;
                ending
            }
            Start::Failed(err) => (Ending::SpawnFailed(err), Running::none()),
            Start::LauncherGone => (Ending::LauncherGone, Running::none()),
            Start::WatchdogGone => {
                // The job may have started before the watchdog died.
                let mut guard = self.watchdog.guard(None, grace, deadline);
                let exit = guard.stop_alone().await;
                (Ending::WatchdogGone(exit), Running::none())
            }
        };
        record.hold = started.elapsed();
        self.notifier.stopping();
        // The watchdog has made its last report (or is gone): let it exit while the lease is
        // released, rather than after elect.
        self.watchdog.hang_up();
        let result = self
            .finish(ending, &mut backend, &lease, started_at, record)
            .await;
        lost_hook.finish().await;
        result
    }

    /// Turns how the job ended into elect's exit, releasing the lease where it is still ours.
    async fn finish(
        &self,
        ending: Ending,
        backend: &mut AnyBackend,
        lease: &Lease,
        started_at: SystemTime,
        record: &mut RunRecord,
    ) -> Result<u8, Failure> {
        let lock = &self.cfg.lock;
        let describe = backend.describe().to_owned();
        // What the release records: the run, and the --once-per marker after a success.
        let hold = record.hold;
        let history = |end: RunEnd, once_per: Option<Duration>| History {
            last_run: LastRun {
                holder: lease.holder.id.clone(),
                host: lease.holder.host.clone(),
                pid: lease.holder.pid,
                token: lease.token(),
                started_at,
                finished_at: started_at + hold,
                duration: hold,
                end,
            },
            once_per: once_per.filter(|_| end.succeeded()),
        };
        match ending {
            Ending::Finished(exit) => {
                record.outcome = Some(Outcome::Ran);
                let history = history(run_end(exit), self.cfg.once_per);
                release(backend, lease, Some(&history)).await;
                tracing::debug!(lock = %lock, exit = ?exit, elapsed = ?round(record.hold), "job exited; lease released");
                Ok(exit_code(exit))
            }
            Ending::TimedOut(exit) => {
                record.outcome = Some(Outcome::TimedOut);
                release(backend, lease, Some(&history(run_end(exit), None))).await;
                Err(Failure::new(
                    code::TIMED_OUT,
                    format!(
                        "the job under lock {lock} ran longer than --max-runtime {} and was stopped ({}); lease released",
                        humantime::format_duration(self.cfg.max_runtime.unwrap_or_default()),
                        describe_exit(exit)
                    ),
                ))
            }
            Ending::SpawnFailed(err) => {
                record.outcome = Some(Outcome::Error);
                let program = self.cfg.command[0].to_string_lossy();
                let (status, what) = if err.kind() == std::io::ErrorKind::NotFound {
                    (code::NOT_FOUND, "command not found")
                } else {
                    (code::NOT_EXECUTABLE, "cannot execute the command")
                };
                let end = RunEnd::ExitCode(i32::from(status));
                release(backend, lease, Some(&history(end, None))).await;
                Err(Failure::new(
                    status,
                    format!("{what}: {program}: {err} (lock {lock} released)"),
                ))
            }
            Ending::Lost(loss, exit) => {
                record.outcome = Some(Outcome::Lost);
                // No release: the lease is someone else's, or the backend did not answer in time
                // and would only delay elect's exit; either way it is gone or about to expire.
                Err(Failure::new(
                    code::LOST,
                    format!(
                        "lease on lock {lock} lost while the job ran ({loss}); the job was stopped ({}); backend {describe}",
                        describe_exit(exit)
                    ),
                ))
            }
            Ending::LauncherGone => {
                record.outcome = Some(Outcome::Error);
                release(backend, lease, None).await;
                Err(Failure::new(
                    code::INTERNAL,
                    format!("the job's process for lock {lock} was killed before the job started; nothing ran (lock {lock} released)"),
                ))
            }
            Ending::WatchdogGone(exit) => {
                record.outcome = Some(Outcome::Error);
                let end = exit.map_or(RunEnd::Signal(nix::libc::SIGKILL), run_end);
                release(backend, lease, Some(&history(end, None))).await;
                let how = exit.map_or_else(|| "its end unknown".to_owned(), describe_exit);
                Err(Failure::new(
                    code::INTERNAL,
                    format!(
                        "elect's watchdog for lock {lock} was killed; elect stopped the job itself ({how}); lease released"
                    ),
                ))
            }
        }
    }

    /// Takes the lease, waiting as configured.
    async fn acquire(
        &self,
        backend: &mut AnyBackend,
        req: &AcquireRequest,
        env: &JobEnv,
    ) -> Result<Lease, Failure> {
        let cfg = self.cfg;
        let describe = backend.describe().to_owned();
        let failure = |e: BackendError| e.into_failure(&describe);
        let holder = match backend
            .acquire(req, WaitMode::NoWait)
            .await
            .map_err(failure)?
        {
            Acquire::Acquired(lease) => return Ok(lease),
            Acquire::Held(holder) => holder,
        };
        let held_by = holder
            .as_ref()
            .map_or_else(|| "another process".to_owned(), |h| h.to_string());
        if cfg.wait == Wait::No {
            return Err(self
                .busy(
                    env,
                    holder.as_ref(),
                    format!(
                        "lock {} is held by {held_by}; not running {} (backend {describe})",
                        cfg.lock,
                        cfg.command[0].to_string_lossy()
                    ),
                )
                .await);
        }
        // Waiting is the plan when --wait is given: under cron a line here would be a mail on
        // every run. At a terminal someone watches, so one line says why nothing happens yet.
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            tracing::info!("waiting for {} (held by {held_by})", cfg.lock);
        } else {
            tracing::debug!(lock = %cfg.lock, "waiting: held by {held_by}");
        }
        let host = holder
            .as_ref()
            .map_or("another process", |h| h.host.as_str());
        self.notifier
            .status(&format!("waiting for {} held by {host}", cfg.lock));
        let waited = Instant::now();
        let wait = wait_out_outages(backend, req);
        let acquired = match cfg.wait_limit() {
            Some(limit) => match tokio::time::timeout(limit, wait).await {
                Ok(result) => result,
                Err(_) => {
                    return Err(self.busy(
                        env,
                        holder.as_ref(),
                        format!(
                            "lock {} is still held after waiting {}; not running {} (backend {describe})",
                            cfg.lock,
                            humantime::format_duration(limit),
                            cfg.command[0].to_string_lossy()
                        ),
                    )
                    .await)
                }
            },
            None => wait.await,
        };
        match acquired.map_err(failure)? {
            Acquire::Acquired(lease) => {
                tracing::debug!(lock = %cfg.lock, token = %lease.token(), waited = ?round(waited.elapsed()), "acquired after waiting");
                Ok(lease)
            }
            Acquire::Held(holder) => Err(self
                .busy(
                    env,
                    holder.as_ref(),
                    format!("lock {} is held (backend {describe})", cfg.lock),
                )
                .await),
        }
    }

    /// The run is skipped because the lock is held: the on-busy hook, then the conflict exit.
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

    async fn busy(&self, env: &JobEnv, holder: Option<&HolderInfo>, message: String) -> Failure {
        let env = env.clone().with(hooks::holder_env(holder));
        self.cfg.hooks.start(HookEvent::Busy, env).finish().await;
        if self.cfg.conflict_exit_code == 0 {
            tracing::debug!("{message}");
            Failure::new(0, String::new())
        } else {
            Failure::new(self.cfg.conflict_exit_code, message)
        }
    }

    /// The run is skipped because a run succeeded within the `--once-per` window: the on-busy
    /// hook, then the conflict exit, with a line that says when and where the job last ran.
    async fn ran_in_window(
        &self,
        run: &LastRun,
        window: Duration,
        describe: &str,
        env: &JobEnv,
    ) -> Failure {
        let ago = SystemTime::now()
            .duration_since(run.finished_at)
            .map_or_else(|_| "just now".to_owned(), |d| format!("{} ago", short(d)));
        let message = format!(
            "lock {}: the job last ran {}, {ago}; with --once-per {} not running {} again yet (backend {describe})",
            self.cfg.lock,
            run.describe(),
            humantime::format_duration(window),
            self.cfg.command[0].to_string_lossy()
        );
        self.busy(env, None, message).await
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
        release(backend, lease, None).await;
        Err(Failure::new(
            code::UNAVAILABLE,
            format!(
                "lock {}: the backend {} answered too slowly to start the job safely within the ttl ({}); raise --ttl",
                self.cfg.lock,
                backend.describe(),
                humantime::format_duration(timing.ttl())
            ),
        ))
    }
}

/// Waits for the lock. A network backend that becomes unreachable while we wait is waited out
/// too: a singleton service in `--wait` should not die because its backend restarted. The tries
/// are paced by [`Retry`]: at most half a second apart, so that the wait resumes soon after the
/// network is back, with a warning at most every few seconds.
/// Opens the backend; a contender that waits rides out a backend that gives no answer at first
/// (see [`AnyBackend::open_waiting`]), within its wait.
async fn open(cfg: &RunConfig) -> crate::backend::Result<AnyBackend> {
    let (url, options) = (cfg.backend.url.as_deref(), &cfg.backend.options);
    if cfg.wait == Wait::No {
        return AnyBackend::open(url, options).await;
    }
    let until = cfg
        .wait_limit()
        .map(|limit| tokio::time::Instant::now() + limit);
    AnyBackend::open_waiting(url, options, cfg.lock.as_str(), until).await
}

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

/// A duration to the second (to the millisecond under one second), for people.
fn short(d: Duration) -> String {
    let d = if d < Duration::from_secs(1) {
        Duration::from_millis(d.as_millis() as u64)
    } else {
        Duration::from_secs(d.as_secs())
    };
    humantime::format_duration(d).to_string()
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

fn round(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}
