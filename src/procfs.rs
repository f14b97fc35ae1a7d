//! What `/proc` says about processes, for the watchdog and for elect's own guard (`job::guard`):
//! the descendants of a process, and the state of one.

use nix::unistd::Pid;

/// Every descendant of `root`, from `/proc/<pid>/task/<tid>/children`, leaving out the processes
/// of `skip` and theirs.
pub fn descendants(root: Pid, skip: &[Pid]) -> Vec<Pid> {
    let mut found = Vec::new();
    let mut queue = vec![root];
    while let Some(pid) = queue.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let path = task.path().join("children");
            let Ok(text) = std::fs::read_to_string(path) else {
                continue;
            };
            for child in text.split_whitespace().filter_map(|p| p.parse().ok()) {
                let child = Pid::from_raw(child);
                if !found.contains(&child) && !skip.contains(&child) {
                    found.push(child);
                    queue.push(child);
                }
            }
        }
    }
    found
}

/// The fields of `/proc/<pid>/stat` from the state on (the command name before them may hold
/// spaces and parentheses).
fn stat_fields(pid: Pid) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// How a process stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Running, sleeping, waiting for the disk: it may still act.
    Live,
    /// Stopped by a signal or a tracer: it cannot act until continued.
    Stopped,
    /// Ended: a zombie, or reaped and gone.
    Ended,
}

/// The state of `pid`.
pub fn state(pid: Pid) -> State {
    match stat_fields(pid).as_deref().and_then(<[String]>::first) {
        None => State::Ended,
        Some(s) => match s.as_str() {
            "Z" | "X" | "x" => State::Ended,
            "T" | "t" => State::Stopped,
            _ => State::Live,
        },
    }
}

/// The parent of `pid`, if it is still there.
pub fn parent(pid: Pid) -> Option<Pid> {
    stat_fields(pid)?.get(1)?.parse().ok().map(Pid::from_raw)
}

/// The wait status of a zombie (field 52 of `/proc/<pid>/stat`, as waitpid(2) would give it).
pub fn exit_status(pid: Pid) -> Option<i32> {
    stat_fields(pid)?.get(49)?.parse().ok()
}
