//! elect's side of the job: one `select!` over the watchdog's reports, the keeper, and the
//! signals elect receives.
//!
//! The watchdog (see [`crate::watchdog`]) spawns, stops and reaps the job; this side feeds it the
//! deadlines the keeper produces, forwards signals, tells it to stop the job when the lease is
//! lost, and waits until it reports that every process of the job is gone.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};

use crate::backend::Backend;
use crate::clock::Clock;
use crate::hooks::{Event as HookEvent, Hooks, Running};
use crate::keeper::{self, Deadline, Loss, RenewStats};
use crate::lease::Lease;
use crate::notify::Notifier;
use crate::timing::LeaseTiming;
use crate::watchdog::protocol::{JobExit, Order, Report};
use crate::watchdog::{send_order, WatchdogLink, FORWARDED};

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
    /// The watchdog vanished (killed by someone); the job's fate is unknown.
    WatchdogGone,
}

/// How the start of the job went.
#[derive(Debug)]
pub enum Start {
    /// The command was executed; the job is this process.
    Running { pid: i32 },
    /// The command could not be executed, or its process not forked.
    Failed(io::Error),
    /// The job's process, forked ahead, was gone: nothing ran.
    LauncherGone,
    /// The watchdog vanished before it answered.
    WatchdogGone,
}

/// Why the launcher did not run the command.
enum Answer {
    /// The start order could not be sent: the launcher is gone.
    Unheard,
    /// The exec (or reading its answer) failed.
    Failed(io::Error),
}

/// The sockets to the watchdog and to the job's launcher, registered with tokio.
pub struct Watchdog {
    socket: AsyncFd<OwnedFd>,
    launcher: AsyncFd<OwnedFd>,
}

/// Registers a socket with tokio, non-blocking.
fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    nix::fcntl::fcntl(
        &fd,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )?;
    // SAFETY: an OwnedFd is a valid descriptor that stays open, naming the same socket, for as
    // long as the AsyncFd owns it.
    unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(|e| e.into_parts().1)
}

impl Watchdog {
    pub fn new(link: WatchdogLink) -> io::Result<Self> {
        Ok(Self {
            socket: register(link.socket)?,
            launcher: register(link.launcher)?,
        })
    }

    pub fn order(&self, order: &Order) -> io::Result<()> {
        send_order(self.socket.get_ref().as_fd(), order, None)
    }

    /// Sends an order whose failure needs no action here: a watchdog that cannot take orders
    /// has finished or died, and its report (or its absence) says which.
    fn order_or_log(&self, order: &Order) {
        if let Err(e) = self.order(order) {
            tracing::debug!("watchdog did not take {order:?}: {e}");
        }
    }

    /// Starts the job: the order goes to the watchdog first, with the open lock file if any (so
    /// the watchdog holds it too), then to the launcher, which execs the command (see
    /// [`crate::watchdog::launcher`]). An error means the watchdog could not be reached, and
    /// nothing was started.
    pub async fn start(&self, order: &Order, lease: &Lease) -> io::Result<Start> {
        let fd = lease.kernel_lock.as_ref().map(|f| f.as_fd());
        send_order(self.socket.get_ref().as_fd(), order, fd)?;
        let word = send_order(self.launcher.get_ref().as_fd(), order, None);
        let (report, answer) = tokio::join!(self.report(), self.exec_answer(word));
        Ok(match report {
            Ok(Some(Report::Started { pid })) => match answer {
                Ok(()) => Start::Running { pid },
                Err(Answer::Unheard) => Start::LauncherGone,
                Err(Answer::Failed(err)) => Start::Failed(err),
            },
            Ok(Some(Report::SpawnFailed { errno })) => {
                Start::Failed(io::Error::from_raw_os_error(errno))
            }
            _ => Start::WatchdogGone,
        })
    }

    /// The launcher's answer to the start order: `Ok` once the command was executed.
    async fn exec_answer(&self, word: io::Result<()>) -> Result<(), Answer> {
        word.map_err(|_| Answer::Unheard)?;
        loop {
            let mut guard = self.launcher.readable().await.map_err(Answer::Failed)?;
            match guard.try_io(|fd| crate::watchdog::launcher::answer_of(fd.get_ref().as_fd())) {
                Ok(Ok(answer)) => return answer.map_err(Answer::Failed),
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(Answer::Failed(e)),
                Err(_would_block) => {}
            }
        }
    }

    /// Tells the watchdog, after its last report, that elect needs it no more: it then exits at
    /// once instead of waiting for elect to exit.
    pub fn hang_up(&self) {
        let _ = nix::sys::socket::shutdown(
            self.socket.get_ref().as_raw_fd(),
            nix::sys::socket::Shutdown::Both,
        );
    }

    /// The next report; `None` when the watchdog has gone.
    pub async fn report(&self) -> io::Result<Option<Report>> {
        loop {
            let mut guard = self.socket.readable().await?;
            let mut buf = [0u8; 256];
            match guard.try_io(|fd| {
                nix::sys::socket::recv(
                    fd.get_ref().as_raw_fd(),
                    &mut buf,
                    nix::sys::socket::MsgFlags::empty(),
                )
                .map_err(io::Error::from)
            }) {
                Ok(Ok(0)) => return Ok(None),
                Ok(Ok(n)) => {
                    if let Some(report) = Report::decode(&buf[..n]) {
                        return Ok(Some(report));
                    }
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
    }
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
    watchdog: &Watchdog,
    signals: &mut mpsc::UnboundedReceiver<i32>,
    stats: &mut RenewStats,
) -> (Ending, Running) {
    let (deadline_tx, mut deadline_rx) = watch::channel::<Deadline>(None);
    deadline_rx.mark_unchanged();
    let lock = lease.name.clone();
    let keeper = keeper::keep(backend, lease, ctx.timing, clock, &deadline_tx, stats);
    tokio::pin!(keeper);
    let max_runtime = async {
        match ctx.max_runtime {
            Some(limit) => tokio::time::sleep(limit).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(max_runtime);
    let mut loss: Option<Loss> = None;
    let mut timed_out = false;
    let mut lost_hook = Running::none();
    loop {
        tokio::select! {
            biased;
            report = watchdog.report() => match report {
                Ok(Some(Report::Finished { exit, stopped })) => {
                    // A job that ended by itself before the watchdog began to stop it was not cut
                    // short: a loss elect noticed afterwards (resumed from SIGSTOP past the
                    // deadline, say) does not change its exit code.
                    let ending = match loss {
                        Some(loss) if stopped => Ending::Lost(loss, exit),
                        None if timed_out && stopped => Ending::TimedOut(exit),
                        Some(loss) => {
                            tracing::debug!(lock = %lock, "lease lost ({loss}) after the job had ended");
                            Ending::Finished(exit)
                        }
                        None => Ending::Finished(exit),
                    };
                    return (ending, lost_hook);
                }
                Ok(Some(Report::DeadlinePassed)) => {
                    // The watchdog's timer and the keeper's own check fire at the same moment;
                    // whichever is seen first, the job is being stopped because the lease is
                    // lost, and elect must exit 76 rather than pass on the job's SIGTERM status.
                    if loss.is_none() {
                        let lost = Loss::DeadlinePassed {
                            last_error: "no renew succeeded in time".into(),
                        };
                        lost_hook = on_lost(ctx, &lost);
                        loss = Some(lost);
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return (Ending::WatchdogGone, lost_hook),
            },
            lost = &mut keeper, if loss.is_none() => {
                tracing::debug!(lock = %lock, "lease lost: {lost}; stopping the job");
                // Stop first: a hook must never delay it.
                watchdog.order_or_log(&Order::Stop);
                lost_hook = on_lost(ctx, &lost);
                loss = Some(lost);
            },
            () = &mut max_runtime, if !timed_out && loss.is_none() => {
                tracing::debug!(lock = %lock, "the job reached --max-runtime; stopping it");
                watchdog.order_or_log(&Order::Stop);
                timed_out = true;
            },
            Ok(()) = deadline_rx.changed() => {
                let deadline = *deadline_rx.borrow_and_update();
                watchdog.order_or_log(&Order::Deadline(deadline));
                ctx.notifier.alive();
            },
            Some(sig) = signals.recv() => {
                tracing::debug!(lock = %lock, signal = sig, "forwarding signal to the job");
                watchdog.order_or_log(&Order::Signal(sig));
            },
        }
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
