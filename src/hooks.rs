//! Hooks: short commands run when the lease is taken, when a run is skipped because the lock is
//! held, and when the lease is lost — for alerting.
//!
//! A hook runs `sh -c CMD` with the `ELECT_*` variables of the event, bounded by a timeout (then
//! killed). A failing hook is logged and changes nothing else: never the job's exit code, and
//! never the stopping of a job whose lease is lost (the stop is ordered first; the hook runs
//! alongside).
//!
//! # Which hooks are fenced
//! `--on-acquired` runs while the lease is held, so it is fenced like the job: it runs in the
//! job's process group, where the watchdog's stop reaches it by the lease deadline even when
//! elect itself is stopped and cannot enforce the hook's timeout (and so do Ctrl-C and the
//! signals elect forwards to the job). `--on-busy` and `--on-lost` run when no lease is held,
//! each in a process group of its own, bounded by the timeout alone.
//!
//! After the job's main process ends, elect waits for `--on-acquired` before it releases the
//! lease, and renews no more: the watchdog holds what is left in the job's group to the last
//! deadline meanwhile. A hook that starts after the job's group is gone (a job that ended before
//! its hook could start) runs in a group of its own, bounded by the timeout alone.

use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::task::JoinHandle;

use crate::jobenv::JobEnv;
use crate::lease::HolderInfo;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Acquired,
    Busy,
    Lost,
}

impl Event {
    fn name(self) -> &'static str {
        match self {
            Event::Acquired => "on-acquired",
            Event::Busy => "on-busy",
            Event::Lost => "on-lost",
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Hooks {
    pub on_acquired: Option<String>,
    pub on_busy: Option<String>,
    pub on_lost: Option<String>,
    pub timeout: Duration,
}

/// A hook started in the background.
pub struct Running(Option<JoinHandle<()>>);

impl Running {
    pub fn none() -> Self {
        Self(None)
    }

    /// Waits for the hook (it is bounded by its own timeout).
    pub async fn finish(self) {
        if let Some(task) = self.0 {
            let _ = task.await;
        }
    }
}

/// The process group a hook runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Group {
    /// Its own: the hook runs when no lease is held.
    Own,
    /// The job's (the job's main process, which leads it): the hook runs while the lease is held,
    /// and is stopped with the job.
    Job(i32),
}

impl Hooks {
    /// Starts the hook for `event`, if one is configured, in this environment (the job's, see
    /// [`JobEnv`], with the event's own variables), in a process group of its own.
    pub fn start(&self, event: Event, env: JobEnv) -> Running {
        self.start_in(event, env, Group::Own)
    }

    /// Starts the hook for `event` as [`Hooks::start`] does, in the process group of the job
    /// whose main process is `job`: fenced with the job (see the module doc).
    pub fn start_fenced(&self, event: Event, env: JobEnv, job: i32) -> Running {
        self.start_in(event, env, Group::Job(job))
    }

    fn start_in(&self, event: Event, env: JobEnv, group: Group) -> Running {
        let command = match event {
            Event::Acquired => &self.on_acquired,
            Event::Busy => &self.on_busy,
            Event::Lost => &self.on_lost,
        };
        let Some(command) = command.clone() else {
            return Running(None);
        };
        let timeout = self.timeout;
        Running(Some(tokio::spawn(run(event, command, env, timeout, group))))
    }
}

/// The processes of the hooks running now: elect's own children, which its guard must not take
/// for the job's (see `job::guard`, in elect).
static RUNNING: Mutex<Vec<i32>> = Mutex::new(Vec::new());

/// The pids of the hooks running now.
pub fn running_pids() -> Vec<i32> {
    RUNNING.lock().map(|pids| pids.clone()).unwrap_or_default()
}

/// The variables that describe the holder of a busy lock.
pub fn holder_env(holder: Option<&HolderInfo>) -> Vec<(String, String)> {
    let Some(h) = holder else {
        return Vec::new();
    };
    vec![
        ("ELECT_HELD_BY_ID".into(), h.id.clone()),
        ("ELECT_HELD_BY_HOST".into(), h.host.clone()),
        ("ELECT_HELD_BY_PID".into(), h.pid.to_string()),
        ("ELECT_HELD_BY_TOKEN".into(), h.token.to_string()),
        ("ELECT_HELD_SINCE".into(), crate::show::time(h.acquired_at)),
    ]
}

async fn run(event: Event, command: String, env: JobEnv, timeout: Duration, group: Group) {
    let name = event.name();
    let mut child = match spawn(&command, &env, group) {
        Ok(child) => child,
        // The job's group is gone (the job has ended): the hook runs on its own.
        Err(e) if group != Group::Own && e.raw_os_error() == Some(nix::libc::EPERM) => {
            match spawn(&command, &env, Group::Own) {
                Ok(child) => child,
                Err(e) => return tracing::warn!(hook = name, "hook could not start: {e}"),
            }
        }
        Err(e) => return tracing::warn!(hook = name, "hook could not start: {e}"),
    };
    let pid = child.id().and_then(|pid| i32::try_from(pid).ok());
    if let (Some(pid), Ok(mut running)) = (pid, RUNNING.lock()) {
        running.push(pid);
    }
    wait(name, &mut child, timeout, group).await;
    if let (Some(pid), Ok(mut running)) = (pid, RUNNING.lock()) {
        running.retain(|p| *p != pid);
    }
}

fn spawn(command: &str, env: &JobEnv, group: Group) -> std::io::Result<tokio::process::Child> {
    let mut cmd = tokio::process::Command::new("/bin/sh");
    env.apply(&mut cmd);
    cmd.arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .process_group(match group {
            Group::Own => 0,
            Group::Job(job) => job,
        })
        .kill_on_drop(true)
        .spawn()
}

/// Waits for a hook, and kills it and every process it started after the timeout: its group
/// when the group is its own, each process otherwise (the group is the job's).
async fn wait(name: &str, child: &mut tokio::process::Child, timeout: Duration, group: Group) {
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) if status.success() => tracing::debug!(hook = name, "hook ran"),
        Ok(Ok(status)) => tracing::warn!(hook = name, "hook failed: {status}"),
        Ok(Err(e)) => tracing::warn!(hook = name, "hook failed: {e}"),
        Err(_) => {
            if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) {
                let pid = Pid::from_raw(pid);
                // Not reaped yet, so its pid is still its own.
                if group == Group::Own {
                    let _ = nix::sys::signal::killpg(pid, Signal::SIGKILL);
                }
                // Its processes first: once the hook is gone they are no longer below it.
                crate::procfs::signal_descendants(pid, &[], Signal::SIGKILL);
            }
            let _ = child.start_kill();
            let _ = child.wait().await;
            tracing::warn!(
                hook = name,
                "hook killed after {}",
                crate::timing::Fmt(timeout)
            );
        }
    }
}
