//! A harness for driving the built `elect` binary end to end, in the manner of fd's `TestEnv`.
//!
//! A [`TestEnv`] is a temporary directory and a backend: the file backend in a lock directory
//! of its own ([`TestEnv::new`]), or any backend URL ([`TestEnv::with_backend`]), so that the
//! backend-independent scenarios of `battery.rs` run unchanged on every backend. Every `elect`
//! it starts runs in that directory (jobs write their marker files there), with the inherited
//! `ELECT_*` variables removed, stdin from /dev/null, and stdout and stderr sent to files rather
//! than pipes: a job process that outlives elect must not be able to hang a test that reads
//! elect's output.
//!
//! Nothing here waits for ever: every wait has a deadline and fails the test when it passes, and
//! a test that ends early kills what it started (elect on drop of [`Running`], recorded job
//! processes on drop of the [`TestEnv`]).

// A toolkit: each test binary uses the part of it that its scenarios need.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::process::{is_alive, proc_stat, signal};

/// The longest any single `elect` may run in a test before it is killed and the test fails.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// How often the polling helpers look again.
const POLL: Duration = Duration::from_millis(10);

/// Where leases live for one test.
#[derive(Debug, Clone)]
enum Backend {
    /// The file backend, through `ELECT_LOCK_DIR`.
    File { lock_dir: PathBuf },
    /// Any backend, through `ELECT_BACKEND`.
    Url(String),
}

/// A process a job reported (by pid file), killed on drop of the environment if still alive.
#[derive(Debug, Clone, Copy)]
struct Tracked {
    pid: i32,
    /// Start time from `/proc/PID/stat`, so that a reused pid is never killed by mistake.
    start: u64,
}

pub struct TestEnv {
    dir: tempfile::TempDir,
    backend: Backend,
    /// Whether no other test uses this backend's namespace (then "every lock" means ours).
    private: bool,
    /// Makes lock names unique across environments that share a backend.
    tag: String,
    outputs: AtomicUsize,
    tracked: Mutex<Vec<Tracked>>,
}

impl TestEnv {
    /// The file backend, in a lock directory of this environment's own.
    pub fn new() -> Self {
        let dir = tempdir();
        let lock_dir = dir.path().join("locks");
        Self::build(dir, Backend::File { lock_dir }, true)
    }

    /// Any backend by URL (`ELECT_BACKEND`). Its namespace is taken to be shared with other
    /// tests; see [`TestEnv::private`].
    pub fn with_backend(url: &str) -> Self {
        Self::build(tempdir(), Backend::Url(url.to_owned()), false)
    }

    /// Declares that no other test uses this backend's namespace, so that a scenario may expect
    /// `elect status` without `--lock` to see only its own locks.
    pub fn private(mut self) -> Self {
        self.private = true;
        self
    }

    fn build(dir: tempfile::TempDir, backend: Backend, private: bool) -> Self {
        std::fs::create_dir_all(dir.path().join(".io")).expect("output directory");
        let tag = dir
            .path()
            .file_name()
            .and_then(OsStr::to_str)
            .unwrap_or("env")
            .trim_start_matches('.')
            .replace(|c: char| !c.is_ascii_alphanumeric(), "");
        Self {
            dir,
            backend,
            private,
            tag,
            outputs: AtomicUsize::new(0),
            tracked: Mutex::new(Vec::new()),
        }
    }

    /// The working directory of every elect (and so of every job) this environment starts.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A path in the working directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The lock directory of the file backend; `None` for a backend given by URL.
    pub fn lock_dir(&self) -> Option<&Path> {
        match &self.backend {
            Backend::File { lock_dir } => Some(lock_dir),
            Backend::Url(_) => None,
        }
    }

    /// The backend URL given to [`TestEnv::with_backend`].
    pub fn backend_url(&self) -> Option<&str> {
        match &self.backend {
            Backend::File { .. } => None,
            Backend::Url(url) => Some(url),
        }
    }

    /// The scheme elect should report in `ELECT_BACKEND` and `status` (`file`, `redis`, ...).
    pub fn scheme(&self) -> &str {
        match &self.backend {
            Backend::File { .. } => "file",
            Backend::Url(url) => url.split_once("://").map_or(url.as_str(), |(s, _)| s),
        }
    }

    /// The password in the backend URL, if it has one: it must never reach a job or an output.
    pub fn backend_password(&self) -> Option<&str> {
        let url = self.backend_url()?;
        let (_, rest) = url.split_once("://")?;
        let authority = rest.split(['/', '?']).next()?;
        let (userinfo, _) = authority.rsplit_once('@')?;
        let (_, password) = userinfo.split_once(':')?;
        (!password.is_empty()).then_some(password)
    }

    pub fn is_private(&self) -> bool {
        self.private
    }

    /// A lock name unique to this environment, starting with `base`.
    pub fn lock(&self, base: &str) -> String {
        format!("{base}-{}", self.tag)
    }

    /// `elect` with this environment's backend, in its directory, without inherited `ELECT_*`
    /// variables, stdin from /dev/null.
    pub fn elect(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_elect"));
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ELECT_") {
                cmd.env_remove(key);
            }
        }
        match &self.backend {
            Backend::File { lock_dir } => cmd.env("ELECT_LOCK_DIR", lock_dir),
            Backend::Url(url) => cmd.env("ELECT_BACKEND", url),
        };
        cmd.current_dir(self.path()).stdin(Stdio::null());
        cmd
    }

    /// `elect ARGS...` run to completion (killed, and the test failed, after [`RUN_TIMEOUT`]).
    pub fn run<I, S>(&self, args: I) -> Outcome
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.elect();
        cmd.args(args);
        self.run_command(cmd)
    }

    /// A prepared command (from [`TestEnv::elect`]) run to completion.
    pub fn run_command(&self, cmd: Command) -> Outcome {
        self.spawn_command(cmd).wait()
    }

    /// `elect ARGS...` started in the background.
    pub fn spawn<I, S>(&self, args: I) -> Running
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.elect();
        cmd.args(args);
        self.spawn_command(cmd)
    }

    /// A prepared command started in the background, its output going to files.
    pub fn spawn_command(&self, mut cmd: Command) -> Running {
        let n = self.outputs.fetch_add(1, Ordering::SeqCst);
        let out = self.path().join(".io").join(format!("{n}.out"));
        let err = self.path().join(".io").join(format!("{n}.err"));
        let what = describe(&cmd);
        cmd.stdout(std::fs::File::create(&out).expect("stdout file"))
            .stderr(std::fs::File::create(&err).expect("stderr file"));
        let started = Instant::now();
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        Running {
            child,
            out,
            err,
            started,
            what,
            outcome: None,
        }
    }

    /// Writes an executable `#!/bin/sh` script into the working directory; returns its path.
    pub fn script(&self, name: &str, body: &str) -> PathBuf {
        let path = self.file(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .expect("chmod script");
        path
    }

    /// Waits for the job to write its pid into `name` (a whole line), and remembers the process
    /// so that it is killed if the test ends while it still runs.
    pub fn read_pid(&self, name: &str) -> i32 {
        let path = self.file(name);
        let mut text = String::new();
        wait_for(&format!("a pid in {}", path.display()), RUN_TIMEOUT, || {
            text = std::fs::read_to_string(&path).unwrap_or_default();
            text.ends_with('\n')
        });
        let pid: i32 = text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{} does not hold a pid: {text:?}", path.display()));
        self.track(pid);
        pid
    }

    /// `elect run --lock LOCK --wait=20s` of a job that touches `ran`; fails the test unless it
    /// exits 0 and its job ran after the process `old_job` had ended.
    pub fn assert_waiter_runs_after(&self, lock: &str, old_job: i32) {
        let mut waiter = self.elect();
        waiter
            .args(["run", "--lock", lock, "--wait=20s", "--", "sh", "-c"])
            .arg(format!(
                "kill -0 {old_job} 2>/dev/null && echo overlap > overlap; touch ran"
            ));
        self.run_command(waiter).assert_code(0);
        assert!(self.file("ran").exists());
        assert!(
            !self.file("overlap").exists(),
            "the newcomer ran while the old job lived"
        );
    }

    /// Remembers a process to kill on drop of the environment if it is still alive then.
    pub fn track(&self, pid: i32) {
        if let Some(stat) = proc_stat(pid) {
            self.tracked.lock().unwrap().push(Tracked {
                pid,
                start: stat.start,
            });
        }
    }

    /// Waits until `name` exists in the working directory.
    pub fn wait_for_file(&self, name: &str, timeout: Duration) {
        wait_for_file(&self.file(name), timeout);
    }

    /// The non-empty lines of a file in the working directory (none if it does not exist).
    pub fn lines(&self, name: &str) -> Vec<String> {
        std::fs::read_to_string(self.file(name))
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// `elect status ARGS...` for this backend.
    pub fn status<I, S>(&self, args: I) -> Outcome
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.elect();
        cmd.arg("status").args(args);
        self.run_command(cmd)
    }
}

impl Default for TestEnv {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        for t in self.tracked.lock().unwrap().iter() {
            if proc_stat(t.pid).is_some_and(|s| s.start == t.start && s.state != 'Z') {
                signal(t.pid, "KILL");
            }
        }
    }
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("elect-test")
        .tempdir()
        .expect("temporary directory")
}

fn describe(cmd: &Command) -> String {
    let mut text = String::from("elect");
    for arg in cmd.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

/// An `elect` started in the background. Killed (SIGKILL) on drop if it still runs.
pub struct Running {
    child: Child,
    out: PathBuf,
    err: PathBuf,
    started: Instant,
    what: String,
    outcome: Option<Outcome>,
}

impl Running {
    /// elect's pid.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends a signal by name (`TERM`, `KILL`, ...) to elect.
    pub fn signal(&self, sig: &str) {
        signal(self.pid(), sig);
    }

    /// When elect was started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The outcome if elect has exited.
    pub fn try_finish(&mut self) -> Option<&Outcome> {
        if self.outcome.is_none() {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.outcome = Some(self.collect(status));
            }
        }
        self.outcome.as_ref()
    }

    pub fn is_running(&mut self) -> bool {
        self.try_finish().is_none()
    }

    /// Waits for elect to exit (at most [`RUN_TIMEOUT`]).
    pub fn wait(&mut self) -> Outcome {
        self.wait_timeout(RUN_TIMEOUT)
    }

    /// Waits for elect to exit; kills it and fails the test if it runs past `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Outcome {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(outcome) = self.try_finish() {
                return outcome.clone();
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "{} still ran after {timeout:?} and was killed; stderr so far:\n{}",
                    self.what,
                    self.stderr_so_far()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// What elect has written on stdout so far.
    pub fn stdout_so_far(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// What elect has written on stderr so far.
    pub fn stderr_so_far(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// Waits until elect's stderr contains `needle`.
    pub fn wait_for_stderr(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.stderr_so_far().contains(needle) {
            if let Some(outcome) = self.try_finish() {
                panic!("elect exited before writing {needle:?}: {outcome}");
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} did not write {needle:?} within {timeout:?}; stderr:\n{}",
                    self.what,
                    self.stderr_so_far()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    fn collect(&self, status: ExitStatus) -> Outcome {
        Outcome {
            what: self.what.clone(),
            status,
            elapsed: self.started.elapsed(),
            finished_at: Instant::now(),
            stdout: std::fs::read_to_string(&self.out).unwrap_or_default(),
            stderr: std::fs::read_to_string(&self.err).unwrap_or_default(),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.outcome.is_none() && matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Waits for every one of `runs` at once, so that each outcome's `elapsed` is its own.
pub fn wait_all(runs: &mut [Running]) -> Vec<Outcome> {
    let deadline = Instant::now() + RUN_TIMEOUT;
    // Every one is polled each round (no short circuit), so that each exit is seen promptly.
    while runs
        .iter_mut()
        .map(Running::is_running)
        .fold(false, |any, running| any | running)
    {
        if Instant::now() >= deadline {
            for run in runs.iter_mut() {
                if run.is_running() {
                    run.wait_timeout(Duration::ZERO);
                }
            }
        }
        std::thread::sleep(POLL);
    }
    runs.iter_mut().map(Running::wait).collect()
}

/// How an `elect` ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub what: String,
    pub status: ExitStatus,
    /// From start to the moment the exit was seen (within [`POLL`]).
    pub elapsed: Duration,
    pub finished_at: Instant,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    /// The exit code; fails the test if elect was killed by a signal.
    pub fn code(&self) -> i32 {
        self.status
            .code()
            .unwrap_or_else(|| panic!("elect was killed by a signal: {self}"))
    }

    /// The signal that killed elect, if one did.
    pub fn killed_by(&self) -> Option<i32> {
        self.status.signal()
    }

    /// The non-empty lines elect wrote on stderr.
    pub fn stderr_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect()
    }

    /// Fails the test unless elect exited with `code`.
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.status.code(),
            Some(code),
            "expected exit {code}: {self}"
        );
        self
    }

    /// Fails the test unless stderr is exactly one `elect: error: ...` line; returns it.
    pub fn one_error_line(&self) -> &str {
        let lines = self.stderr_lines();
        assert!(
            lines.len() == 1 && lines[0].starts_with("elect: error: "),
            "expected exactly one `elect: error:` line on stderr: {self}"
        );
        lines[0]
    }

    /// Fails the test if elect panicked or printed a backtrace.
    pub fn assert_no_panic(&self) -> &Self {
        assert!(
            !self.stderr.contains("panicked") && !self.stderr.contains("stack backtrace"),
            "elect panicked: {self}"
        );
        self
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` ended with {:?} after {:?}\n--- stdout ---\n{}--- stderr ---\n{}--------------",
            self.what, self.status, self.elapsed, self.stdout, self.stderr
        )
    }
}

/// Polls `done` every 10 ms; fails the test, naming `what`, if it is not true within `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(POLL);
    }
}

/// Polls `done` every 10 ms; whether it became true within `timeout`.
pub fn becomes(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// Waits until `path` exists.
pub fn wait_for_file(path: &Path, timeout: Duration) {
    wait_for(&format!("{} to appear", path.display()), timeout, || {
        path.exists()
    });
}

/// Waits up to `timeout` for `pid` to be gone; whether it is.
pub fn dies_within(pid: i32, timeout: Duration) -> bool {
    becomes(timeout, || !is_alive(pid))
}

/// A shell loop that waits (at most 30 s, so nothing lingers after a failed test) for `file`.
pub fn until_exists(file: &str) -> String {
    format!("i=0; while [ ! -e {file} ] && [ $i -lt 1500 ]; do sleep 0.02; i=$((i+1)); done")
}

/// A shell command that writes its shell's pid into `file` atomically (a whole line or nothing).
pub fn write_pid(file: &str) -> String {
    format!("echo $$ > {file}.tmp && mv {file}.tmp {file}")
}
