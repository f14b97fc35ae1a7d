//! Hooks: short commands run when the lease is taken, when a run is skipped because the lock is
//! held, and when the lease is lost — for alerting.
//!
//! A hook runs `sh -c CMD` with the `ELECT_*` variables of the event, bounded by a timeout (then
//! killed). A failing hook is logged and changes nothing else: never the job's exit code, and
//! never the stopping of a job whose lease is lost (the stop is ordered first; the hook runs
//! alongside).

use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

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

impl Hooks {
    /// Starts the hook for `event`, if one is configured, in this environment (the job's, see
    /// [`JobEnv`], with the event's own variables).
    pub fn start(&self, event: Event, env: JobEnv) -> Running {
        let command = match event {
            Event::Acquired => &self.on_acquired,
            Event::Busy => &self.on_busy,
            Event::Lost => &self.on_lost,
        };
        let Some(command) = command.clone() else {
            return Running(None);
        };
        let timeout = self.timeout;
        Running(Some(tokio::spawn(run(event, command, env, timeout))))
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

async fn run(event: Event, command: String, env: JobEnv, timeout: Duration) {
    let name = event.name();
    let mut cmd = tokio::process::Command::new("/bin/sh");
    env.apply(&mut cmd);
    let mut child = match cmd
        .arg("-c")
        .arg(&command)
        .stdin(Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            tracing::warn!(hook = name, "hook could not start: {e}");
            return;
        }
    };
    let pid = child.id().and_then(|pid| i32::try_from(pid).ok());
    if let (Some(pid), Ok(mut running)) = (pid, RUNNING.lock()) {
        running.push(pid);
    }
    wait(name, &mut child, timeout).await;
    if let (Some(pid), Ok(mut running)) = (pid, RUNNING.lock()) {
        running.retain(|p| *p != pid);
    }
}

/// Waits for a hook, and kills its process group after the timeout.
async fn wait(name: &str, child: &mut tokio::process::Child, timeout: Duration) {
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) if status.success() => tracing::debug!(hook = name, "hook ran"),
        Ok(Ok(status)) => tracing::warn!(hook = name, "hook failed: {status}"),
        Ok(Err(e)) => tracing::warn!(hook = name, "hook failed: {e}"),
        Err(_) => {
            if let Some(pid) = child.id() {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = child.wait().await;
            tracing::warn!(
                hook = name,
                "hook killed after {}",
                humantime::format_duration(timeout)
            );
        }
    }
}
