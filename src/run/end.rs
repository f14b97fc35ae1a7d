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

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, FromArgMatches};

    use super::*;
    use crate::cli::{Cli, Command};
    use crate::clock::BootTime;
    use crate::keeper::Loss;

    fn config(flags: &[&str]) -> RunConfig {
        let mut args = vec!["elect", "run", "--lock", "billing"];
        args.extend(flags);
        args.extend(["--", "true"]);
        let matches = Cli::command().get_matches_from(args);
        let Command::Run(run) = Cli::from_arg_matches(&matches).unwrap().command else {
            unreachable!("a run was parsed")
        };
        RunConfig::from_args(*run, matches.subcommand().unwrap().1).unwrap()
    }

    fn ran(cfg: &RunConfig, ending: Ending) -> Consequences {
        let lease = Lease {
            name: cfg.lock.clone(),
            holder: HolderInfo::this_process(None, cfg.timing.ttl()),
            sent_at: BootTime::now(),
            secret: String::new(),
            kernel_lock: None,
            slot: 0,
        };
        let run = Run {
            lease,
            ending,
            started_at: SystemTime::now(),
            hold: Duration::from_secs(2),
            lost_hook: Running::none(),
        };
        End::Ran(run).consequences(cfg, "file")
    }

    #[test]
    fn a_success_records_the_run_and_the_once_per_marker() {
        let cfg = config(&["--once-per", "1h"]);
        let after = ran(&cfg, Ending::Finished(JobExit::Code(0)));
        assert_eq!(after.outcome, Outcome::Ran);
        assert_eq!(after.exit.unwrap(), 0);
        let Release::Recording(history) = after.release else {
            panic!("a finished run is released with its history")
        };
        assert_eq!(history.last_run.end, RunEnd::ExitCode(0));
        assert_eq!(history.last_run.duration, Duration::from_secs(2));
        assert_eq!(history.once_per, Some(Duration::from_secs(3600)));
    }

    #[test]
    fn a_failure_records_the_run_without_the_marker() {
        let cfg = config(&["--once-per", "1h"]);
        let after = ran(&cfg, Ending::Finished(JobExit::Code(3)));
        assert_eq!(after.exit.unwrap(), 3);
        let Release::Recording(history) = after.release else {
            panic!("a finished run is released with its history")
        };
        assert_eq!(history.once_per, None);
    }

    #[test]
    fn a_lost_lease_is_not_released() {
        let cfg = config(&[]);
        let loss = Loss::Revoked("taken".into());
        let after = ran(&cfg, Ending::Lost(loss, JobExit::Signal(15)));
        assert_eq!(after.outcome, Outcome::Lost);
        assert!(matches!(after.release, Release::Not));
        assert_eq!(after.exit.unwrap_err().code, code::LOST);
    }

    #[test]
    fn skipped_runs_run_the_on_busy_hook_and_exit_with_the_conflict_code() {
        let cfg = config(&["--conflict-exit-code", "9"]);
        let busy = End::Busy {
            env: JobEnv::default(),
            holder: None,
            message: "held".into(),
        };
        let after = busy.consequences(&cfg, "file");
        assert_eq!(after.outcome, Outcome::Skipped);
        assert!(after.busy_hook.is_some() && after.lease.is_none());
        assert_eq!(after.exit.unwrap_err().code, 9);
    }

    #[test]
    fn max_runtime_and_a_failed_start_exit_as_the_table_says() {
        let cfg = config(&["--max-runtime", "1s"]);
        let after = ran(&cfg, Ending::TimedOut(JobExit::Signal(15)));
        assert_eq!(after.outcome, Outcome::TimedOut);
        assert_eq!(after.exit.unwrap_err().code, code::TIMED_OUT);
        let missing = std::io::Error::from(std::io::ErrorKind::NotFound);
        let after = ran(&cfg, Ending::SpawnFailed(missing));
        assert_eq!(after.outcome, Outcome::Error);
        assert_eq!(after.exit.unwrap_err().code, code::NOT_FOUND);
        let after = ran(&cfg, Ending::LauncherGone);
        assert!(matches!(after.release, Release::Bare));
        assert_eq!(after.exit.unwrap_err().code, code::INTERNAL);
    }
}
