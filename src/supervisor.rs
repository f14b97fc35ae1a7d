//! elect's side of the job: one `select!` over the watchdog's reports, the keeper, and the
//! signals elect receives.
//!
//! The watchdog (see [`crate::watchdog`]) spawns, stops and reaps the job; this side feeds it the
//! deadlines the keeper produces, forwards signals, tells it to stop the job when the lease is
//! lost, and waits until it reports that every process of the job is gone. Alongside, elect's
//! own guard (see [`crate::job::guard`]) acts where the watchdog cannot: killed, or stopped when
//! the job must be.

use std::io;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};

use crate::backend::Backend;
use crate::clock::BootTime;
use crate::clock::Clock;
use crate::hooks::{Event as HookEvent, Hooks, Running};
use crate::job::{guard, Handle};
use crate::keeper::{self, Deadline, Loss, RenewStats};
use crate::lease::{Lease, LockName};
use crate::notify::Notifier;
use crate::signals::FORWARDED;
use crate::timing::LeaseTiming;
use crate::watchdog::protocol::{JobExit, Report};

/// How a supervised job ended.
#[derive(Debug)]
pub enum Ending {
    /// The job ended by itself (or by a signal someone sent it).
    Finished(JobExit),
    /// The command could not be executed.
    SpawnFailed(io::Error),
    /// The job's process, forked ahead, was gone before it could be told to start (killed by
    /// someone): nothing ran.
    LauncherGone,
    /// The lease was lost; the job was stopped and ended this way.
    Lost(Loss, JobExit),
    /// `--max-runtime` came; the job was stopped and ended this way.
    TimedOut(JobExit),
    /// The watchdog vanished (killed by someone); elect stopped the job itself, and every process
    /// of it is gone. How the main process ended, if elect learned it.
    WatchdogGone(Option<JobExit>),
}

/// Forwards the signals of [`FORWARDED`] into a channel.
pub fn forward_signals() -> io::Result<mpsc::UnboundedReceiver<i32>> {
    let (tx, rx) = mpsc::unbounded_channel();
    for sig in FORWARDED {
        let mut stream = signal(SignalKind::from_raw(sig as i32))?;
        let tx = tx.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if tx.send(sig as i32).is_err() {
                    break;
                }
            }
        });
    }
    Ok(rx)
}

/// What supervision needs besides the lease.
pub struct Supervision<'a> {
    /// The job's main process, as the watchdog reported it.
    pub job: i32,
    /// The deadline the job started under.
    pub deadline: Option<BootTime>,
    pub timing: LeaseTiming,
    pub max_runtime: Option<Duration>,
    pub notifier: &'a Notifier,
    pub hooks: &'a Hooks,
    /// The environment a hook gets: the job's.
    pub hook_env: crate::jobenv::JobEnv,
}

/// Runs the started job to its end, keeping the lease meanwhile. Returns how it ended, and the
/// on-lost hook if one was started (to be awaited before exiting).
pub async fn supervise<B: Backend, C: Clock>(
    backend: &mut B,
    lease: &mut Lease,
    ctx: &Supervision<'_>,
    clock: &C,
    watchdog: &Handle,
    signals: &mut mpsc::UnboundedReceiver<i32>,
    stats: &mut RenewStats,
) -> (Ending, Running) {
    let (deadline_tx, mut deadline_rx) = watch::channel::<Deadline>(None);
    deadline_rx.mark_unchanged();
    let lock = lease.name.clone();
    let keeper = keeper::keep(backend, lease, ctx.timing, clock, &deadline_tx, stats);
    tokio::pin!(keeper);
    let max_runtime = sleep_for(ctx.max_runtime);
    tokio::pin!(max_runtime);
    let mut guard = watchdog.guard(Some(ctx.job), ctx.timing.grace(), ctx.deadline);
    let mut course = Course::new(ctx);
    loop {
        let guard_due = until(guard.next());
        tokio::select! {
            biased;
            report = watchdog.next_report(), if !guard.alone() => match report {
                Ok(Some(Report::Finished { exit, stopped })) => {
                    return course.finished(&lock, exit, stopped);
                }
                Ok(Some(Report::DeadlinePassed)) => course.deadline_passed(),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    tracing::warn!(lock = %lock, "the watchdog is gone; elect stops the job itself");
                    guard.watchdog_gone();
                }
            },
            lost = &mut keeper, if course.loss.is_none() => {
                tracing::debug!(lock = %lock, "lease lost: {lost}; stopping the job");
                // Stop first: a hook must never delay it.
                watchdog.stop();
                guard.stop_ordered();
                course.lose(lost);
            },
            () = &mut max_runtime, if !course.timed_out && course.loss.is_none() => {
                tracing::debug!(lock = %lock, "the job reached --max-runtime; stopping it");
                watchdog.stop();
                guard.stop_ordered();
                course.timed_out = true;
            },
            Ok(()) = deadline_rx.changed() => {
                let deadline = *deadline_rx.borrow_and_update();
                watchdog.set_deadline(deadline);
                guard.set_deadline(deadline);
                ctx.notifier.alive();
            },
            Some(sig) = signals.recv() => {
                tracing::debug!(lock = %lock, signal = sig, "forwarding signal to the job");
                watchdog.signal(sig);
            },
            // Last: a new deadline that is ready moves the guard's time first.
            () = guard_due => {
                if let Some(end) = guard.tick() {
                    let ended = course.ended_alone(end, guard.alone());
                    tracing::debug!(lock = %lock, "elect stopped the job without its watchdog");
                    return ended;
                }
            },
        }
    }
}

/// What supervision has learned so far of why the job is being stopped.
struct Course<'a> {
    ctx: &'a Supervision<'a>,
    /// Why the lease was lost, once it was.
    loss: Option<Loss>,
    /// Whether `--max-runtime` came.
    timed_out: bool,
    /// The on-lost hook, once the lease was lost.
    lost_hook: Running,
}

impl<'a> Course<'a> {
    fn new(ctx: &'a Supervision<'a>) -> Self {
        Self {
            ctx,
            loss: None,
            timed_out: false,
            lost_hook: Running::none(),
        }
    }

    /// The lease is lost: says so, and starts the on-lost hook.
    fn lose(&mut self, lost: Loss) {
        self.lost_hook = on_lost(self.ctx, &lost);
        self.loss = Some(lost);
    }

    /// The watchdog's timer and the keeper's own check fire at the same moment; whichever is seen
    /// first, the job is being stopped because the lease is lost, and elect must exit 76 rather
    /// than pass on the job's SIGTERM status.
    fn deadline_passed(&mut self) {
        if self.loss.is_none() {
            self.lose(deadline_passed());
        }
    }

    /// The watchdog reported that every process of the job is gone. A job that ended by itself
    /// before the watchdog began to stop it was not cut short: a loss elect noticed afterwards
    /// (resumed from SIGSTOP past the deadline, say) does not change its exit code.
    fn finished(self, lock: &LockName, exit: JobExit, stopped: bool) -> (Ending, Running) {
        let ending = match self.loss {
            Some(loss) if stopped => Ending::Lost(loss, exit),
            None if self.timed_out && stopped => Ending::TimedOut(exit),
            Some(loss) => {
                tracing::debug!(lock = %lock, "lease lost ({loss}) after the job had ended");
                Ending::Finished(exit)
            }
            None => Ending::Finished(exit),
        };
        (ending, self.lost_hook)
    }

    /// elect's guard saw the job end: with the watchdog gone (`alone`), or stopped.
    fn ended_alone(mut self, end: guard::End, alone: bool) -> (Ending, Running) {
        let exit = end.exit.unwrap_or(KILLED);
        let status_known = end.exit.is_some() || self.loss.is_none();
        let ending = match (alone, self.loss.take()) {
            (true, None) => Ending::WatchdogGone(end.exit),
            (true, Some(loss)) => Ending::Lost(loss, exit),
            // The job had ended by itself, as a stopped watchdog could not report. Its status is
            // known only if elect could reap it; when it is not, and the lease was lost
            // meanwhile, the run ends as lost (76) rather than claim a kill that never happened.
            (false, _) if !end.stopped && status_known => Ending::Finished(exit),
            (false, Some(loss)) => Ending::Lost(loss, exit),
            (false, None) if self.timed_out => Ending::TimedOut(exit),
            (false, None) => {
                // The deadline passed with the watchdog stopped, before the keeper said so.
                let lost = deadline_passed();
                self.lost_hook = on_lost(self.ctx, &lost);
                Ending::Lost(lost, exit)
            }
        };
        (ending, self.lost_hook)
    }
}

/// The loss when the deadline passed before the keeper saw it.
fn deadline_passed() -> Loss {
    Loss::DeadlinePassed {
        last_error: "no renew succeeded in time".into(),
    }
}

/// Sleeps for `limit`; never, without one.
async fn sleep_for(limit: Option<Duration>) {
    match limit {
        Some(limit) => tokio::time::sleep(limit).await,
        None => std::future::pending().await,
    }
}

/// How the job ended when elect killed it and could not learn more.
const KILLED: JobExit = JobExit::Signal(nix::libc::SIGKILL);

/// Sleeps until `at` on CLOCK_BOOTTIME; never, without a time.
async fn until(at: Option<BootTime>) {
    match at {
        Some(at) => tokio::time::sleep(BootTime::now().until(at)).await,
        None => std::future::pending().await,
    }
}

fn on_lost(ctx: &Supervision<'_>, loss: &Loss) -> Running {
    ctx.notifier.status(&format!("lease lost: {loss}"));
    let env = ctx
        .hook_env
        .clone()
        .with([("ELECT_LOSS_REASON".into(), loss.to_string())]);
    ctx.hooks.start(HookEvent::Lost, env)
}
