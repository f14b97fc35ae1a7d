//! Messages between elect and its watchdog, one per SOCK_SEQPACKET packet.
//!
//! Text, so that a trace of the socket reads like a log: a verb, space-separated numbers, and for
//! `start` the environment to add, NUL-separated.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::time::Duration;

use crate::clock::BootTime;

/// elect to watchdog (and, for `start`, to the launcher: see [`super::launcher`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Order {
    /// Start the job: the command is elect's own arguments from `command_at` on (the watchdog
    /// and the launcher are forks of elect and have the same ones, so a command line of any
    /// length costs nothing here); these variables set (`Some`) or removed (`None`); with the
    /// terminal's foreground if `terminal`; under this deadline (none: no deadline); SIGKILL
    /// `grace` after SIGTERM when the job is stopped. `lock` names the watchdog in `ps`;
    /// `isolation` says whether the job runs in a PID namespace of its own (see
    /// [`super::launcher`]).
    Start {
        lock: String,
        deadline: Option<BootTime>,
        grace: Duration,
        command_at: usize,
        terminal: bool,
        env: Vec<(OsString, Option<OsString>)>,
        isolation: Isolation,
    },
    /// A renew succeeded: the job may live until this new deadline.
    Deadline(Option<BootTime>),
    /// Forward a signal to the job's process group.
    Signal(i32),
    /// The lease is lost or elect is shutting down: stop the job now.
    Stop,
    /// The lease elect holds, as the release mode reads it (see [`crate::handoff`]): should elect
    /// die, the watchdog hands these bytes on once no process of the job is left. It keeps them
    /// without reading them.
    Hold(Vec<u8>),
    /// elect ends as planned and releases the lease itself: the watchdog drops what `hold` gave.
    Forget,
}

/// Where the job's processes live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Isolation {
    /// Among the machine's processes, as any command.
    #[default]
    Shared,
    /// In a PID namespace of its own, which the kernel empties when the watchdog dies.
    PidNamespace,
}

/// Watchdog to elect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// The start order came: the job is this process (the launcher, which execs the command).
    Started { pid: i32 },
    /// The job's process could not be forked (errno of the fork); whether the command could be
    /// executed, the launcher tells elect itself.
    SpawnFailed { errno: i32 },
    /// The deadline came without a renew: the job is being stopped.
    DeadlinePassed,
    /// The job's main process ended this way, and every process of the job is gone. `stopped`
    /// says whether the watchdog had begun stopping the job (deadline, order, elect gone) before
    /// it ended: a job that ended by itself was not cut short, whatever elect learns later.
    Finished { exit: JobExit, stopped: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobExit {
    Code(i32),
    Signal(i32),
}

fn deadline_text(d: Option<BootTime>) -> String {
    d.map_or_else(|| "-".to_owned(), |d| d.as_nanos().to_string())
}

fn parse_deadline(text: &str) -> Option<Option<BootTime>> {
    match text {
        "-" => Some(None),
        n => n.parse().ok().map(|n| Some(BootTime::from_nanos(n))),
    }
}

impl Order {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Order::Start {
                lock,
                deadline,
                grace,
                command_at,
                terminal,
                env,
                isolation,
            } => {
                let mut out = format!(
                    "start {} {} {command_at} {} {lock}",
                    deadline_text(*deadline),
                    grace.as_nanos(),
                    if *terminal { "terminal" } else { "-" }
                )
                .into_bytes();
                if *isolation == Isolation::PidNamespace {
                    out.extend_from_slice(b" pid-namespace");
                }
                for (k, v) in env {
                    out.push(0);
                    out.extend_from_slice(k.as_bytes());
                    if let Some(v) = v {
                        out.push(b'=');
                        out.extend_from_slice(v.as_bytes());
                    }
                }
                out
            }
            Order::Deadline(d) => format!("deadline {}", deadline_text(*d)).into_bytes(),
            Order::Signal(n) => format!("signal {n}").into_bytes(),
            Order::Stop => b"stop".to_vec(),
            Order::Hold(identity) => [b"hold ".as_slice(), identity].concat(),
            Order::Forget => b"forget".to_vec(),
        }
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let mut parts = bytes.split(|b| *b == 0);
        let head = std::str::from_utf8(parts.next()?).ok()?;
        let (verb, arg) = head.split_once(' ').unwrap_or((head, ""));
        Some(match verb {
            "start" => {
                let mut words = arg.split(' ');
                let deadline = parse_deadline(words.next()?)?;
                let grace = Duration::from_nanos(words.next()?.parse().ok()?);
                let command_at = words.next()?.parse().ok()?;
                let terminal = match words.next()? {
                    "terminal" => true,
                    "-" => false,
                    _ => return None,
                };
                // A lock name has no spaces (see `LockName`).
                let lock = words.next()?.to_owned();
                let isolation = match words.next() {
                    None => Isolation::Shared,
                    Some("pid-namespace") => Isolation::PidNamespace,
                    Some(_) => return None,
                };
                Order::Start {
                    isolation,
                    lock,
                    deadline,
                    grace,
                    command_at,
                    terminal,
                    env: parts
                        .map(|kv| match kv.iter().position(|b| *b == b'=') {
                            Some(eq) => (
                                OsString::from_vec(kv[..eq].to_vec()),
                                Some(OsString::from_vec(kv[eq + 1..].to_vec())),
                            ),
                            None => (OsString::from_vec(kv.to_vec()), None),
                        })
                        .collect(),
                }
            }
            "deadline" => Order::Deadline(parse_deadline(arg)?),
            "signal" => Order::Signal(arg.parse().ok()?),
            "stop" => Order::Stop,
            // The identity is JSON: UTF-8 without NUL, in the head whole.
            "hold" => Order::Hold(arg.as_bytes().to_vec()),
            "forget" => Order::Forget,
            _ => return None,
        })
    }
}

impl Report {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Report::Started { pid } => format!("started {pid}"),
            Report::SpawnFailed { errno } => format!("spawn-failed {errno}"),
            Report::DeadlinePassed => "deadline-passed".to_owned(),
            Report::Finished { exit, stopped } => {
                let stopped = if *stopped { "stopped" } else { "by-itself" };
                match exit {
                    JobExit::Code(c) => format!("finished code {c} {stopped}"),
                    JobExit::Signal(s) => format!("finished signal {s} {stopped}"),
                }
            }
        }
        .into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut words = text.split(' ');
        let verb = words.next()?;
        let mut num = || words.next()?.parse::<i32>().ok();
        Some(match verb {
            "started" => Report::Started { pid: num()? },
            "spawn-failed" => Report::SpawnFailed { errno: num()? },
            "deadline-passed" => Report::DeadlinePassed,
            "finished" => {
                let mut rest = text.split(' ').skip(1);
                let how = rest.next()?;
                let n = rest.next()?.parse().ok()?;
                let exit = match how {
                    "code" => JobExit::Code(n),
                    "signal" => JobExit::Signal(n),
                    _ => return None,
                };
                let stopped = match rest.next()? {
                    "stopped" => true,
                    "by-itself" => false,
                    _ => return None,
                };
                Report::Finished { exit, stopped }
            }
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_round_trip() {
        let orders = [
            Order::Start {
                lock: "nightly.backup-1".into(),
                deadline: Some(BootTime::from_nanos(42)),
                grace: Duration::from_millis(1500),
                command_at: 6,
                terminal: true,
                env: vec![
                    ("A".into(), Some("b=c".into())),
                    ("E".into(), Some("".into())),
                    ("GONE".into(), None),
                ],
                isolation: Isolation::PidNamespace,
            },
            Order::Start {
                lock: "x".into(),
                deadline: None,
                grace: Duration::ZERO,
                command_at: 0,
                terminal: false,
                env: vec![],
                isolation: Isolation::Shared,
            },
            Order::Deadline(Some(BootTime::from_nanos(7))),
            Order::Deadline(None),
            Order::Signal(15),
            Order::Stop,
            Order::Hold(br#"{"url":"redis://u:p w@h/0","lock":"x"}"#.to_vec()),
            Order::Forget,
        ];
        for order in orders {
            assert_eq!(Order::decode(&order.encode()), Some(order.clone()));
        }
        assert_eq!(Order::decode(b"bogus"), None);
    }

    #[test]
    fn reports_round_trip() {
        for report in [
            Report::Started { pid: 9 },
            Report::SpawnFailed { errno: 2 },
            Report::DeadlinePassed,
            Report::Finished {
                exit: JobExit::Code(3),
                stopped: false,
            },
            Report::Finished {
                exit: JobExit::Signal(9),
                stopped: true,
            },
        ] {
            assert_eq!(Report::decode(&report.encode()), Some(report));
        }
    }
}
