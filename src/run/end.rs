//! How a run ended, and what follows from it: the one value every path of `elect run` ends in,
//! and the table that derives from it the metrics outcome, the release and what it records, the
//! on-busy hook and elect's exit (see [`super::Runner::conclude`], which does them).

use std::time::{Duration, SystemTime};

use crate::config::RunConfig;
use crate::exit::{code, Failure};
use crate::hooks::{self, Running};
use crate::jobenv::JobEnv;
use crate::lease::{History, HolderInfo, LastRun, Lease, RunEnd};
use crate::metrics::Outcome;
use crate::supervisor::Ending;
use crate::timing::Fmt;
use crate::watchdog::protocol::JobExit;

/// How a run ended.
pub(super) enum End {
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

impl End {
    /// What follows from an ending, as a table.
    pub(super) fn consequences(self, cfg: &RunConfig, describe: &str) -> Consequences {
        let conflict = cfg.conflict_exit_code;
        match self {
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
                        ran_in_window(cfg, &run, window, describe),
                    )),
                )
            },
            End::NotStarted { lease, failure } => Consequences {
                lease: Some(lease),
                ..Consequences::new(Outcome::Error, Release::Bare, Err(failure))
            },
            End::Ran(run) => run.consequences(cfg, describe),
        }
    }
}

/// A run whose start was ordered, after every process of its job is gone.
pub(super) struct Run {
    pub(super) lease: Lease,
    pub(super) ending: Ending,
    pub(super) started_at: SystemTime,
    /// How long the lease was held from the start order to the job's end.
    pub(super) hold: Duration,
    /// The on-lost hook, if the lease was lost: awaited last, so that it cannot delay the rest.
    pub(super) lost_hook: Running,
}

impl Run {
    /// What follows from the end of a job whose start was ordered, as a table.
    fn consequences(self, cfg: &RunConfig, describe: &str) -> Consequences {
        let lock = &cfg.lock;
        let recording = |end: RunEnd| Release::Recording(self.history(end, None));
        let (outcome, release, exit) = match &self.ending {
            Ending::Finished(exit) => (
                Outcome::Ran,
                Release::Recording(self.history(run_end(*exit), cfg.once_per)),
                Ok(exit_code(*exit)),
            ),
            Ending::TimedOut(exit) => (
                Outcome::TimedOut,
                recording(run_end(*exit)),
                Err(Failure::new(
                    code::TIMED_OUT,
                    format!(
                        "the job under lock {lock} ran longer than --max-runtime {} and was stopped ({}); lease released",
                        Fmt(cfg.max_runtime.unwrap_or_default()),
                        describe_exit(*exit)
                    ),
                )),
            ),
            Ending::SpawnFailed(err) => {
                let program = cfg.command[0].to_string_lossy();
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
            lease: Some(self.lease),
            lost_hook: self.lost_hook,
            ..Consequences::new(outcome, release, exit)
        }
    }

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
pub(super) enum Release {
    /// Not released: there is none, or it is someone else's.
    Not,
    /// Released without recording a run.
    Bare,
    /// Released, recording the run (and the `--once-per` marker).
    Recording(History),
}

/// Everything that follows from an [`End`], in the order [`Runner::conclude`] does it.
pub(super) struct Consequences {
    pub(super) outcome: Outcome,
    /// The lease held at the end, if any.
    pub(super) lease: Option<Lease>,
    pub(super) release: Release,
    /// The on-busy hook's environment, when the run is skipped.
    pub(super) busy_hook: Option<JobEnv>,
    pub(super) lost_hook: Running,
    pub(super) exit: Result<u8, Failure>,
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

/// The line of a run skipped because a run succeeded within the `--once-per` window: when
/// and where the job last ran.
fn ran_in_window(cfg: &RunConfig, run: &LastRun, window: Duration, describe: &str) -> String {
    let ago = SystemTime::now()
        .duration_since(run.finished_at)
        .map_or_else(
            |_| "just now".to_owned(),
            |d| format!("{} ago", Fmt::rough(d)),
        );
    format!(
        "lock {}: the job last ran {}, {ago}; with --once-per {} not running {} again yet (backend {describe})",
        cfg.lock,
        run.describe(),
        Fmt(window),
        cfg.command[0].to_string_lossy()
    )
}

fn exit_code(exit: JobExit) -> u8 {
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
