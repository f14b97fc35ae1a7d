//! The arena: one lock, the witness, the job program, and the contenders that loop on them.
//!
//! Each contender is a thread that runs `elect run --wait ... -- perl JOB` again each time it
//! exits, and records every run.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::hosts::Hosts;
use super::server::Server;
use super::setup::Setup;
use super::{GRACE, RUN_LIMIT, TTL};
use crate::process::signal;
use crate::witness::{Witness, JOB};

/// One `elect run` invocation.
#[derive(Debug, Clone)]
pub struct RunRec {
    pub run: u64,
    pub contender: usize,
    pub pid: i32,
    pub started: Instant,
    pub status: Option<ExitStatus>,
    pub stderr: PathBuf,
}

/// What the contenders and the injector share.
pub struct Shared {
    pub runs: Mutex<Vec<RunRec>>,
    pub killed: Mutex<HashSet<u64>>,
    /// Runs whose watchdog was killed (alone, or with elect).
    pub watchdog_killed: Mutex<HashSet<u64>>,
    /// Runs sent SIGTERM at the end while still waiting for the lease.
    pub terminated: Mutex<HashSet<u64>>,
    pub hung: Mutex<Vec<u64>>,
    pub(super) next_run: AtomicU64,
    pub(super) stop: AtomicBool,
}

pub struct Arena {
    pub dir: tempfile::TempDir,
    pub lock: String,
    pub witness: Witness,
    pub shared: Arc<Shared>,
    pub job: PathBuf,
    pub probe: PathBuf,
    /// Where each contender's runs live (see [`Hosts`]); none unless the faults need them.
    pub hosts: Hosts,
}

impl Arena {
    pub fn new(scenario: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("elect-faults-")
            .tempdir()
            .expect("temporary directory");
        std::fs::create_dir_all(dir.path().join("runs")).expect("runs dir");
        let job = dir.path().join("job.pl");
        std::fs::write(&job, JOB).expect("write job");
        let witness = Witness::start(&dir.path().join("witness.sock"));
        let tag: String = dir
            .path()
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("x")
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect();
        Self {
            lock: format!("{scenario}-{tag}"),
            hosts: Hosts::none(),
            probe: dir.path().join("probe"),
            job,
            witness,
            shared: Arc::new(Shared {
                runs: Mutex::new(Vec::new()),
                killed: Mutex::new(HashSet::new()),
                watchdog_killed: Mutex::new(HashSet::new()),
                terminated: Mutex::new(HashSet::new()),
                hung: Mutex::new(Vec::new()),
                next_run: AtomicU64::new(1),
                stop: AtomicBool::new(false),
            }),
            dir,
        }
    }

    /// The command of one run of contender `index`; `extra_env` for faketime.
    pub fn command(
        &self,
        server: &Server,
        setup: &Setup,
        run: u64,
        index: usize,
        extra_env: &[(&str, &str)],
    ) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_elect"));
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ELECT_") {
                cmd.env_remove(key);
            }
        }
        let (key, value) = server.env();
        let value = self.hosts.backend().map_or(value, str::to_owned);
        self.hosts.enter(index, &mut cmd);
        cmd.env(key, value)
            .env("FAULT_WITNESS", self.witness.path())
            .env("FAULT_PROBE", &self.probe)
            .env("FAULT_RUN", run.to_string())
            .env("FAULT_MODE", setup.mode)
            .env("FAULT_WORK_MS", setup.work.as_millis().to_string())
            .env("FAULT_DAEMON_MS", setup.daemon.as_millis().to_string())
            .envs(extra_env.iter().copied())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .args(["run", "--lock", &self.lock])
            .args(["--ttl", &format!("{}ms", TTL.as_millis())])
            .args(["--grace", &format!("{}ms", GRACE.as_millis())])
            .args(setup.pid_namespace.then_some("--pid-namespace"))
            .args(["--wait", "--", "perl"])
            .arg(&self.job);
        cmd
    }
}

fn faketime_env(rate: &'static str) -> Vec<(&'static str, &'static str)> {
    let lib = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
    assert!(
        Path::new(lib).exists(),
        "{lib} not found: install the faketime package"
    );
    vec![("LD_PRELOAD", lib), ("FAKETIME", rate)]
}

/// Runs `elect` again and again for contender `index` until the stop flag is set.
pub(super) fn contend(arena: &Arena, server: &Server, setup: &Setup, index: usize) {
    let extra = match (setup.skew, index) {
        (true, 0) => faketime_env("+0 x1.01"),
        (true, 1) => faketime_env("+0 x0.99"),
        _ => Vec::new(),
    };
    while !arena.shared.stop.load(Ordering::SeqCst) {
        let run = arena.shared.next_run.fetch_add(1, Ordering::SeqCst);
        let stderr = arena.dir.path().join("runs").join(format!("{run}.err"));
        let mut cmd = arena.command(server, setup, run, index, &extra);
        cmd.stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"));
        let started = Instant::now();
        let mut child = cmd.spawn().expect("start elect");
        let pid = child.id() as i32;
        arena.witness.watch(run, pid);
        arena.shared.runs.lock().unwrap().push(RunRec {
            run,
            contender: index,
            pid,
            started,
            status: None,
            stderr,
        });
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            if started.elapsed() > RUN_LIMIT {
                arena.shared.hung.lock().unwrap().push(run);
                signal(pid, "CONT");
                let _ = child.kill();
                break child.wait().expect("wait");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        if let Some(r) = arena
            .shared
            .runs
            .lock()
            .unwrap()
            .iter_mut()
            .find(|r| r.run == run)
        {
            r.status = Some(status);
        }
        if status.code() == Some(69) || status.code() == Some(2) || status.code() == Some(70) {
            // Unreachable backend (or worse): do not spin.
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// ago.
pub(super) fn holder(arena: &Arena, settled: Duration) -> Option<(u64, usize, i32)> {
    let record = arena.witness.snapshot();
    let runs = arena.shared.runs.lock().unwrap();
    record
        .lives
        .iter()
        .enumerate()
        .rev()
        .filter(|(_, l)| l.close.is_none() && l.connect.elapsed() >= settled)
        .find_map(|(i, l)| {
            let run = l.run?;
            if record.exits.contains_key(&run) {
                return None;
            }
            let rec = runs.iter().find(|r| r.run == run && r.status.is_none())?;
            Some((run, i, rec.pid))
        })
}

/// Waits for a holder whose job has run for 250 ms, or for a third of its work if that is
/// shorter.
pub(super) fn wait_holder(
    arena: &Arena,
    work: Duration,
    timeout: Duration,
) -> Option<(u64, usize, i32)> {
    let settled = Duration::from_millis(250).min(work / 3);
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(h) = holder(arena, settled) {
            return Some(h);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Ends the test's contention: every elect still waiting for the lease gets SIGTERM (which
/// stops a wait cleanly, exit 143); the holder finishes its job.
pub(super) fn drain(arena: &Arena) {
    let deadline = Instant::now() + RUN_LIMIT;
    while Instant::now() < deadline {
        let record = arena.witness.snapshot();
        let runs = arena.shared.runs.lock().unwrap().clone();
        let running: Vec<&RunRec> = runs.iter().filter(|r| r.status.is_none()).collect();
        if running.is_empty() {
            return;
        }
        let mut terminated = arena.shared.terminated.lock().unwrap();
        for r in running {
            let has_job = record.lives.iter().any(|l| l.run == Some(r.run));
            if !has_job
                && !terminated.contains(&r.run)
                && r.started.elapsed() > Duration::from_millis(200)
            {
                terminated.insert(r.run);
                signal(r.pid, "TERM");
            }
        }
        drop(terminated);
        std::thread::sleep(Duration::from_millis(50));
    }
}
