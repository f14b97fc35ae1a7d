//! Signals and `/proc`: the harness's view of the processes it starts and watches.

// Each binary uses the part of it that its tests need.
#![allow(dead_code)]

use std::process::{Command, Stdio};

/// The fields of `/proc/PID/stat` that the tests look at.
#[derive(Debug, Clone, Copy)]
pub struct ProcStat {
    pub state: char,
    pub session: i32,
    pub start: u64,
}

/// `/proc/PID/stat`, or `None` when there is no such process.
pub fn proc_stat(pid: i32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces; the fields after it are fixed.
    let (_, rest) = text.rsplit_once(") ")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        session: fields.get(3)?.parse().ok()?,
        start: fields.get(19)?.parse().ok()?,
    })
}

/// Whether a process exists and is not a zombie (a zombie runs nothing).
pub fn is_alive(pid: i32) -> bool {
    proc_stat(pid).is_some_and(|s| s.state != 'Z' && s.state != 'X')
}

/// Sends signal `sig` (a name such as `TERM`) to `pid` with kill(1); whether it was delivered.
/// A process that has just exited is no failure of the harness (the test's assertions say what
/// should have happened), so most callers ignore the answer. A pid of 0 or below would reach a
/// whole process group, and is refused.
pub fn signal(pid: i32, sig: &str) -> bool {
    pid > 0
        && Command::new("kill")
            .args(["-s", sig, &pid.to_string()])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
}

/// The watchdog of the elect `pid`: its child whose short name is `lease-watchdog`.
pub fn watchdog_of(pid: i32) -> Option<i32> {
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    children
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .find(|c: &i32| {
            std::fs::read_to_string(format!("/proc/{c}/comm"))
                .is_ok_and(|name| name.trim() == "lease-watchdog")
        })
}
