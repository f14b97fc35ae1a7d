//! Taking the lease: at once, or waiting as configured, while the watchdog is told of every
//! lease the wait leaves on the server.

use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::end::End;
use super::{interrupted, stop_signal, Runner};
use crate::backend::retry::Retry;
use crate::backend::{AcquireRequest, AnyBackend, Backend, BackendError, Failures, WaitMode};
use crate::cli::Wait;
use crate::handoff;
use crate::jobenv::JobEnv;
use crate::lease::{Acquire, HolderInfo, Lease};
use crate::timing::Fmt;

impl Runner<'_> {
    /// Takes the lease, waiting as configured; `wait` is how long that took.
    pub(super) async fn take(
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
        let holder = match backend.acquire(req, WaitMode::NoWait).await {
            Ok(Acquire::Acquired(lease)) => return Ok(lease),
            Ok(Acquire::Held(holder)) => holder,
            // Waiting is the plan: a first try that got no answer (a server busy with a thousand
            // waiters logging in at once) is waited out like an outage later in the wait.
            Err(BackendError::NoAnswer(why))
                if cfg.wait != Wait::No && backend.failures() == Failures::Pass =>
            {
                tracing::warn!(lock = %cfg.lock, "no answer to the first try ({why}); waiting");
                None
            }
            Err(e) => return Err(not_run(e)),
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
            Err(BackendError::Unavailable(why) | BackendError::NoAnswer(why))
                if backend.failures() == Failures::Pass =>
            {
                tokio::time::sleep(retry.failed(&lock, "waiting", &why)).await;
            }
            other => {
                retry.succeeded(&lock);
                return other;
            }
        }
    }
}
