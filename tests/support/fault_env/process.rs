//! Signals and `/proc`: the harness's view of the processes it watches.

use std::process::{Command, Stdio};

pub fn kill(pid: i32, sig: &str) {
    if pid <= 0 {
        return;
    }
    let _ = Command::new("kill")
        .args(["-s", sig, &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|t| t.rsplit_once(") ").map(|(_, r)| r.chars().next()))
        .flatten()
        .is_some_and(|s| s != 'Z' && s != 'X')
}

/// The watchdog of the elect `pid`: its child named `lease-watchdog`.
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
