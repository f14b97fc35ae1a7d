//! Fault injection: contenders looping on one lock, a fault injector, and the checker.
//!
//! A [`Setup`] names a scenario and a backend. [`run`] starts the backend (behind a [`Proxy`]
//! for the network backends, so that its traffic can be held, delayed or reset and the server
//! restarted), a [`Witness`], and several contenders, each a thread that runs
//! `elect run --wait ... -- perl JOB` again each time it exits. The injector applies the
//! scenario's faults one at a time, in order and then at random, to the current holder or to
//! the server. When the time is up the contenders stop looping and every run finishes by itself.
//!
//! The checker then looks at what the witness and the runs recorded:
//! - no two lifetimes of the lock overlap (proven by the witness, or by the jobs' flock probe);
//! - tokens strictly increase in the order the jobs started;
//! - no job outlives its elect (an elect the harness killed with SIGKILL: by at most the grace,
//!   plus [`WATCHDOG_SLACK`] for the watchdog's own wake-ups);
//! - elect's exit code is the job's (42) when the job finished, 76 when the job was stopped, and
//!   69, 75 or 76 when no job ran;
//! - per fault: a holder SIGSTOPped past the ttl has its job dead by `stop + ttl` (the lease
//!   deadline is earlier still); after a holder is killed, the next job starts within ttl + 1 s;
//!   a holder whose watchdog was SIGSTOPped before its lease was lost has its job dead by
//!   `stop + ttl` too (elect enforces the deadline itself);
//! - a holder whose watchdog was killed ends with 70 (or 76 if its lease was lost meanwhile),
//!   and its job does not outlive it; when elect and its watchdog are killed together, the job's
//!   processes may run on, but on the file backend they hold the lock, so no overlap.
//!
//! Each test prints its row of the table (`FAULTS|...`, which `scripts/faults.sh` aggregates)
//! and fails with every violation listed.
//!
//! The test crate declares the `net` and `programs` modules of `tests/support` beside this one.

#![allow(dead_code)]

use std::collections::HashSet;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::net::free_port;
use crate::postgres_server::{self, PostgresServer};
use crate::programs;
use crate::proxy::{Mode, Proxy};
use crate::witness::{Life, Witness, JOB};

pub const TTL: Duration = Duration::from_secs(2);
pub const GRACE: Duration = Duration::from_millis(400);
/// The job's exit code when it finishes by itself.
pub const JOB_CODE: i32 = 42;
/// How long a holder may take to notice that its lock file was deleted or replaced (inotify:
/// milliseconds on an idle machine; slack for a loaded one).
pub const LOCK_FILE_REACTION: Duration = Duration::from_millis(1000);
/// What the watchdog may add to the grace when elect was killed: it learns of elect's death
/// from a socket's end-of-file and acts on a timer, each a wake-up of a process on a loaded
/// machine; 250 ms covers two scheduling delays with room to spare.
pub const WATCHDOG_SLACK: Duration = Duration::from_millis(250);
/// The longest any one elect may run before the harness calls it hung.
const RUN_LIMIT: Duration = Duration::from_secs(90);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    File,
    Redis,
    Postgres,
    Etcd,
}

impl BackendKind {
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::File => "file",
            BackendKind::Redis => "redis",
            BackendKind::Postgres => "postgres",
            BackendKind::Etcd => "etcd",
        }
    }

    /// Whether the lease expires by a ttl (the file lease does not: the kernel holds it).
    pub fn expires(self) -> bool {
        self != BackendKind::File
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// kill -9 of the holding elect.
    KillHolder,
    /// kill -STOP of the holding elect for ttl + 1 s.
    StopHolder,
    /// kill -STOP of the server for ttl + 1 s.
    StopServer,
    /// kill -9 of the server, then a restart on the same data.
    RestartServer,
    /// The proxy holds traffic both ways for ttl + 1 s.
    Blackhole,
    /// The proxy holds replies for ttl + 1 s.
    DropReplies,
    /// The proxy delays each chunk by 1 s for 3 s.
    Latency,
    /// The proxy resets every connection, and new ones for 500 ms.
    Reset,
    /// The lock file is deleted (file backend).
    DeleteLockFile,
    /// The lock file is replaced by a copy (a new inode with the same content).
    ReplaceLockFile,
    /// pg_terminate_backend of every session of elect's role.
    TerminateBackend,
    /// kill -9 of the holder's watchdog alone.
    KillWatchdog,
    /// kill -STOP of the holder's watchdog, then the lease lost (the lock file deleted, or the
    /// proxy holding traffic for ttl + 1 s), then kill -CONT.
    StopWatchdog,
    /// kill -9 of the holding elect and its watchdog together (as `pkill -9 elect` does).
    KillBoth,
}

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::KillHolder => "kill-9-holder",
            Fault::StopHolder => "stop-holder",
            Fault::StopServer => "stop-server",
            Fault::RestartServer => "kill-9-server",
            Fault::Blackhole => "blackhole",
            Fault::DropReplies => "drop-replies",
            Fault::Latency => "latency",
            Fault::Reset => "reset",
            Fault::DeleteLockFile => "delete-lock-file",
            Fault::ReplaceLockFile => "replace-lock-file",
            Fault::TerminateBackend => "pg-terminate-backend",
            Fault::KillWatchdog => "kill-9-watchdog",
            Fault::StopWatchdog => "stop-watchdog",
            Fault::KillBoth => "kill-9-both",
        }
    }

    /// Every fault that applies to a backend.
    pub fn all_for(kind: BackendKind) -> Vec<Fault> {
        let mut faults = vec![
            Fault::KillHolder,
            Fault::StopHolder,
            Fault::KillWatchdog,
            Fault::StopWatchdog,
        ];
        match kind {
            BackendKind::File => faults.extend([
                Fault::DeleteLockFile,
                Fault::ReplaceLockFile,
                Fault::KillBoth,
            ]),
            _ => faults.extend([
                Fault::StopServer,
                Fault::RestartServer,
                Fault::Blackhole,
                Fault::DropReplies,
                Fault::Latency,
                Fault::Reset,
            ]),
        }
        if kind == BackendKind::Postgres {
            faults.push(Fault::TerminateBackend);
        }
        faults
    }
}

/// One scenario on one backend.
#[derive(Debug, Clone)]
pub struct Setup {
    pub scenario: &'static str,
    pub backend: BackendKind,
    pub faults: Vec<Fault>,
    /// After each fault once, keep picking at random.
    pub random: bool,
    /// The job's mode (see [`JOB`]): `plain`, `ignore-term`, `forks`, `beat`.
    pub mode: &'static str,
    pub work: Duration,
    /// Run the first contender's elect with its clock 1% fast, the second 1% slow (libfaketime).
    pub skew: bool,
    pub contenders: usize,
    /// How long faults are injected (the short form; `ELECT_FAULTS_SECS` overrides).
    pub duration: Duration,
    /// The seed of a named regression case (`ELECT_FAULTS_SEED` overrides).
    pub seed: Option<u64>,
    /// How long the `forks` job's setsid grandchild lives.
    pub daemon: Duration,
}

impl Setup {
    pub fn new(scenario: &'static str, backend: BackendKind, faults: &[Fault]) -> Self {
        Self {
            scenario,
            backend,
            faults: faults.to_vec(),
            random: false,
            mode: "plain",
            work: Duration::from_millis(800),
            skew: false,
            contenders: 3,
            duration: Duration::from_secs(6),
            seed: None,
            daemon: Duration::from_secs(20),
        }
    }

    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    pub fn daemon(mut self, d: Duration) -> Self {
        self.daemon = d;
        self
    }

    pub fn mode(mut self, mode: &'static str) -> Self {
        self.mode = mode;
        self
    }

    pub fn work(mut self, work: Duration) -> Self {
        self.work = work;
        self
    }

    pub fn random(mut self) -> Self {
        self.random = true;
        self
    }

    pub fn skew(mut self) -> Self {
        self.skew = true;
        self
    }

    pub fn duration(mut self, d: Duration) -> Self {
        self.duration = d;
        self
    }

    /// The soak form: `ELECT_FAULTS_SECS` seconds of faults per test when set.
    fn effective_duration(&self) -> Duration {
        match std::env::var("ELECT_FAULTS_SECS")
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
        {
            Some(secs) if secs > 0 => Duration::from_secs(secs),
            _ => self.duration,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Servers

/// A server process the harness can kill and start again on the same data and port.
struct Proc {
    program: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
    ready: fn(u16) -> bool,
    starts: usize,
}

impl Proc {
    fn start(&mut self) {
        let log = self.dir.path().join(format!("server-{}.log", self.starts));
        self.starts += 1;
        let log = std::fs::File::create(&log).expect("server log");
        let child = Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.program.display()));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !(self.ready)(self.port) {
            assert!(
                Instant::now() < deadline,
                "{} did not become ready on port {}",
                self.program.display(),
                self.port
            );
            std::thread::sleep(Duration::from_millis(30));
        }
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill(child.id() as i32, "CONT");
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn redis_ready(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 64];
    s.write_all(b"PING\r\n").is_ok()
        && s.read(&mut buf)
            .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
}

fn etcd_ready(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut text = Vec::new();
    let _ = s.write_all(b"GET /health HTTP/1.0\r\n\r\n");
    let _ = s.read_to_end(&mut text);
    String::from_utf8_lossy(&text).contains("\"health\":\"true\"")
}

enum Inner {
    File {
        lock_dir: PathBuf,
    },
    Redis(Mutex<Proc>),
    Etcd(Mutex<Proc>),
    Postgres {
        server: PostgresServer,
        /// The postmaster started again after a kill -9 (through setpriv).
        restarted: Mutex<Option<Child>>,
    },
}

/// The backend of one test: its server, and the proxy elect talks through.
pub struct Server {
    kind: BackendKind,
    inner: Inner,
    proxy: Option<Proxy>,
    _dir: tempfile::TempDir,
}

impl Server {
    pub fn start(kind: BackendKind) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("elect-faults-")
            .tempdir()
            .expect("temporary directory");
        let inner = match kind {
            BackendKind::File => {
                let lock_dir = dir.path().join("locks");
                std::fs::create_dir_all(&lock_dir).expect("lock dir");
                Inner::File { lock_dir }
            }
            BackendKind::Redis => {
                let data = tempfile::tempdir().expect("redis dir");
                let port = free_port();
                // Append-only with an fsync per write: a restarted server has every key and
                // counter it acknowledged, as the contract's "where the backend persists data".
                let args = [
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    &port.to_string(),
                    "--dir",
                    &data.path().display().to_string(),
                    "--save",
                    "",
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "always",
                    "--daemonize",
                    "no",
                ]
                .map(str::to_owned)
                .to_vec();
                let mut proc = Proc {
                    program: programs::require("redis-server", "install the redis-server package"),
                    args,
                    child: None,
                    dir: data,
                    port,
                    ready: redis_ready,
                    starts: 0,
                };
                proc.start();
                Inner::Redis(Mutex::new(proc))
            }
            BackendKind::Etcd => {
                let data = tempfile::tempdir().expect("etcd dir");
                let (port, peer) = (free_port(), free_port());
                let name = format!("f{port}");
                let client = format!("http://127.0.0.1:{port}");
                let peer_url = format!("http://127.0.0.1:{peer}");
                let args = vec![
                    "--name".to_owned(),
                    name.clone(),
                    "--data-dir".to_owned(),
                    data.path().join("data").display().to_string(),
                    "--listen-client-urls".to_owned(),
                    client.clone(),
                    "--advertise-client-urls".to_owned(),
                    client,
                    "--listen-peer-urls".to_owned(),
                    peer_url.clone(),
                    "--initial-advertise-peer-urls".to_owned(),
                    peer_url.clone(),
                    "--initial-cluster".to_owned(),
                    format!("{name}={peer_url}"),
                    "--log-level".to_owned(),
                    "error".to_owned(),
                ];
                let mut proc = Proc {
                    program: programs::require("etcd", "install the etcd-server package"),
                    args,
                    child: None,
                    dir: data,
                    port,
                    ready: etcd_ready,
                    starts: 0,
                };
                proc.start();
                Inner::Etcd(Mutex::new(proc))
            }
            BackendKind::Postgres => {
                let server = PostgresServer::start();
                let restarted = Mutex::new(None);
                relaunch_postgres(&server, &restarted, false);
                Inner::Postgres { server, restarted }
            }
        };
        let proxy = match &inner {
            Inner::File { .. } => None,
            Inner::Redis(p) | Inner::Etcd(p) => Some(Proxy::start(addr(p.lock().unwrap().port))),
            Inner::Postgres { server, .. } => Some(Proxy::start(addr(server.port))),
        };
        Self {
            kind,
            inner,
            proxy,
            _dir: dir,
        }
    }

    pub fn kind(&self) -> BackendKind {
        self.kind
    }

    /// How elect reaches the backend: `ELECT_BACKEND` or `ELECT_LOCK_DIR`.
    pub fn env(&self) -> (&'static str, String) {
        let port = self.proxy.as_ref().map_or(0, |p| p.port);
        match &self.inner {
            Inner::File { lock_dir } => ("ELECT_LOCK_DIR", lock_dir.display().to_string()),
            Inner::Redis(_) => ("ELECT_BACKEND", format!("redis://127.0.0.1:{port}")),
            Inner::Etcd(_) => ("ELECT_BACKEND", format!("etcd://127.0.0.1:{port}")),
            Inner::Postgres { .. } => (
                "ELECT_BACKEND",
                format!(
                    "postgres://{}:{}@127.0.0.1:{port}/{}?sslmode=disable",
                    crate::postgres_server::USER,
                    crate::postgres_server::PASSWORD,
                    crate::postgres_server::DATABASE
                ),
            ),
        }
    }

    pub fn proxy(&self) -> Option<&Proxy> {
        self.proxy.as_ref()
    }

    pub fn lock_file(&self, lock: &str) -> Option<PathBuf> {
        match &self.inner {
            Inner::File { lock_dir } => Some(lock_dir.join(format!("{lock}.lock"))),
            _ => None,
        }
    }

    pub fn freeze(&self) {
        match &self.inner {
            Inner::File { .. } => {}
            Inner::Redis(p) | Inner::Etcd(p) => kill(p.lock().unwrap().pid(), "STOP"),
            Inner::Postgres { server, .. } => server.freeze(),
        }
    }

    pub fn thaw(&self) {
        match &self.inner {
            Inner::File { .. } => {}
            Inner::Redis(p) | Inner::Etcd(p) => kill(p.lock().unwrap().pid(), "CONT"),
            Inner::Postgres { server, .. } => server.thaw(),
        }
    }

    /// kill -9 of the server, then the same server again on the same data and port.
    pub fn restart(&self) {
        match &self.inner {
            Inner::File { .. } => {}
            Inner::Redis(p) | Inner::Etcd(p) => {
                let mut p = p.lock().unwrap();
                p.kill();
                std::thread::sleep(Duration::from_millis(200));
                p.start();
            }
            Inner::Postgres { server, restarted } => relaunch_postgres(server, restarted, true),
        }
    }
    /// pg_terminate_backend of every session of elect's role.
    pub fn terminate_sessions(&self) {
        if let Inner::Postgres { server, .. } = &self.inner {
            server.psql(&format!(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE usename = '{}' AND pid <> pg_backend_pid()",
                crate::postgres_server::USER
            ));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // A frozen server cannot be stopped. A restarted postmaster is stopped by the
        // PostgresServer's own drop (pg_ctl stop), after which the postmaster exits.
        self.thaw();
    }
}

/// Starts the cluster again on the same data and port: after a kill -9 of every process of it
/// (`crash`), or after a clean stop. The harness's own launch turns synchronous_commit off for
/// speed, which lets a kill -9 lose acknowledged commits (and so fencing tokens); this launch
/// keeps PostgreSQL's default (on), as a deployment would.
fn relaunch_postgres(server: &PostgresServer, restarted: &Mutex<Option<Child>>, crash: bool) {
    let data = server.psql("SHOW data_directory");
    let bin = postgres_server::binaries();
    let pids = server.processes();
    if crash {
        for pid in &pids {
            kill(*pid, "KILL");
        }
    } else {
        let mut cmd = postgres_server::as_postgres(&bin.join("pg_ctl"));
        let _ = cmd
            .current_dir("/tmp")
            .args(["stop", "-m", "fast", "-w", "-t", "20", "-D"])
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    let gone = Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|p| alive(*p)) && Instant::now() < gone {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut restarted = restarted.lock().unwrap();
    if let Some(mut old) = restarted.take() {
        let _ = old.wait();
    }
    let sockets = Path::new(&data)
        .parent()
        .expect("data directory has a parent")
        .to_owned();
    let child = postgres_server::postmaster(
        &bin,
        Path::new(&data),
        server.port,
        &sockets,
        &["synchronous_commit=on"],
    )
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .expect("restart postgres");
    *restarted = Some(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ok = postgres_server::is_ready(&bin, &sockets, server.port);
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "postgres did not come back");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

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

// ---------------------------------------------------------------------------------------------
// Contenders

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
    next_run: AtomicU64,
    stop: AtomicBool,
}

pub struct Arena {
    pub dir: tempfile::TempDir,
    pub lock: String,
    pub witness: Witness,
    pub shared: Arc<Shared>,
    pub job: PathBuf,
    pub probe: PathBuf,
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

    /// The command of one run; `extra_env` for faketime.
    pub fn command(
        &self,
        server: &Server,
        setup: &Setup,
        run: u64,
        extra_env: &[(&str, &str)],
    ) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_elect"));
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ELECT_") {
                cmd.env_remove(key);
            }
        }
        let (key, value) = server.env();
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
fn contend(arena: &Arena, server: &Server, setup: &Setup, index: usize) {
    let extra = match (setup.skew, index) {
        (true, 0) => faketime_env("+0 x1.01"),
        (true, 1) => faketime_env("+0 x0.99"),
        _ => Vec::new(),
    };
    while !arena.shared.stop.load(Ordering::SeqCst) {
        let run = arena.shared.next_run.fetch_add(1, Ordering::SeqCst);
        let stderr = arena.dir.path().join("runs").join(format!("{run}.err"));
        let mut cmd = arena.command(server, setup, run, &extra);
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
                kill(pid, "CONT");
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

// ---------------------------------------------------------------------------------------------
// Injection

/// A fault as applied.
#[derive(Debug, Clone)]
pub struct Event {
    pub fault: Fault,
    pub at: Instant,
    /// The holder at the time: its run and its life (index in the witness record).
    pub holder: Option<(u64, usize)>,
}

/// A small xorshift generator; the seed is printed so that a run can be replayed.
pub struct Rng(u64);

impl Rng {
    pub fn seeded(named: Option<u64>) -> Self {
        let seed = std::env::var("ELECT_FAULTS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .or(named)
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
                    | 1
            });
        Rng(seed)
    }

    pub fn seed(&self) -> u64 {
        self.0
    }

    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }
}

/// The current holder: an open life whose elect is still running, connected at least `settled`
/// ago.
fn holder(arena: &Arena, settled: Duration) -> Option<(u64, usize, i32)> {
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

fn apply(fault: Fault, arena: &Arena, server: &Server, holder: Option<(u64, usize, i32)>) {
    let hold = TTL + Duration::from_secs(1);
    let proxy_for = |server: &Server, mode: Mode, how_long: Duration| {
        if let Some(p) = server.proxy() {
            p.set_mode(mode);
            std::thread::sleep(how_long);
            p.set_mode(Mode::Pass);
        }
    };
    match fault {
        Fault::KillHolder => {
            if let Some((run, _, pid)) = holder {
                arena.shared.killed.lock().unwrap().insert(run);
                kill(pid, "KILL");
            }
        }
        Fault::StopHolder => {
            if let Some((_, _, pid)) = holder {
                kill(pid, "STOP");
                std::thread::sleep(hold);
                kill(pid, "CONT");
            }
        }
        Fault::StopServer => {
            server.freeze();
            std::thread::sleep(hold);
            server.thaw();
        }
        Fault::RestartServer => server.restart(),
        Fault::Blackhole => proxy_for(server, Mode::Blackhole, hold),
        Fault::DropReplies => proxy_for(server, Mode::DropReplies, hold),
        Fault::Latency => proxy_for(
            server,
            Mode::Latency(Duration::from_secs(1)),
            Duration::from_secs(3),
        ),
        Fault::Reset => proxy_for(server, Mode::Reset, Duration::from_millis(500)),
        Fault::DeleteLockFile => {
            if let Some(path) = server.lock_file(&arena.lock) {
                let _ = std::fs::remove_file(path);
            }
        }
        Fault::ReplaceLockFile => {
            if let Some(path) = server.lock_file(&arena.lock) {
                let tmp = path.with_extension("new");
                if std::fs::copy(&path, &tmp).is_ok() {
                    let _ = std::fs::rename(&tmp, &path);
                }
            }
        }
        Fault::TerminateBackend => server.terminate_sessions(),
        Fault::KillWatchdog => {
            if let Some((run, _, pid)) = holder {
                if let Some(watchdog) = watchdog_of(pid) {
                    arena.shared.watchdog_killed.lock().unwrap().insert(run);
                    kill(watchdog, "KILL");
                }
            }
        }
        Fault::StopWatchdog => {
            if let Some((_, _, pid)) = holder {
                if let Some(watchdog) = watchdog_of(pid) {
                    kill(watchdog, "STOP");
                    match server.kind() {
                        BackendKind::File => {
                            if let Some(path) = server.lock_file(&arena.lock) {
                                let _ = std::fs::remove_file(path);
                            }
                            std::thread::sleep(hold);
                        }
                        _ => proxy_for(server, Mode::Blackhole, hold),
                    }
                    kill(watchdog, "CONT");
                }
            }
        }
        Fault::KillBoth => {
            if let Some((run, _, pid)) = holder {
                if let Some(watchdog) = watchdog_of(pid) {
                    arena.shared.killed.lock().unwrap().insert(run);
                    arena.shared.watchdog_killed.lock().unwrap().insert(run);
                    // Stopped first, so that neither sees the other die and stops the job.
                    kill(pid, "STOP");
                    kill(watchdog, "STOP");
                    kill(pid, "KILL");
                    kill(watchdog, "KILL");
                }
            }
        }
    }
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

// ---------------------------------------------------------------------------------------------
// The run and the checks

/// The row of the table for one test.
#[derive(Debug, Clone)]
pub struct Row {
    pub scenario: String,
    pub backend: String,
    pub runs: usize,
    pub handovers: usize,
    pub overlaps: usize,
    pub takeovers: Vec<Duration>,
    pub monotonic: bool,
    pub violations: Vec<String>,
    /// For a lock file deleted or replaced under a job: how long the old job ran on after the
    /// fault, and the margin between its end and the next job's start, one pair per fault.
    pub windows: Vec<Window>,
}

/// What remains of the window after a lock file was deleted or replaced.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// From the fault to the end of the old holder's job: how long it ran without a lock file.
    pub stop: Duration,
    /// From the end of the old job to the start of the next one, in ms; negative is an overlap.
    pub margin_ms: i128,
}

impl Row {
    pub fn print(&self) {
        let mut sorted = self.takeovers.clone();
        sorted.sort();
        let max = sorted
            .last()
            .map_or("-".into(), |d| d.as_millis().to_string());
        let median = if sorted.is_empty() {
            "-".into()
        } else {
            sorted[sorted.len() / 2].as_millis().to_string()
        };
        println!(
            "\n{:<22} {:<9} {:>5} {:>9} {:>8} {:>12} {:>15} {:>9} {:>10}",
            "scenario",
            "backend",
            "runs",
            "handovers",
            "overlaps",
            "max takeover",
            "median takeover",
            "monotonic",
            "violations"
        );
        println!(
            "{:<22} {:<9} {:>5} {:>9} {:>8} {:>10}ms {:>13}ms {:>9} {:>10}",
            self.scenario,
            self.backend,
            self.runs,
            self.handovers,
            self.overlaps,
            max,
            median,
            if self.monotonic { "yes" } else { "no" },
            self.violations.len()
        );
        let takeovers: Vec<String> = self
            .takeovers
            .iter()
            .map(|d| d.as_millis().to_string())
            .collect();
        println!(
            "FAULTS|{}|{}|{}|{}|{}|{}|{}|{}",
            self.scenario,
            self.backend,
            self.runs,
            self.handovers,
            self.overlaps,
            if self.monotonic { "yes" } else { "no" },
            self.violations.len(),
            takeovers.join(",")
        );
        if !self.windows.is_empty() {
            let stop = self
                .windows
                .iter()
                .map(|w| w.stop)
                .max()
                .unwrap_or_default();
            let margin = self
                .windows
                .iter()
                .map(|w| w.margin_ms)
                .min()
                .unwrap_or_default();
            println!(
                "lock file changed under a job {} time(s): the old job ran on for at most {} ms; \
                 the next job started at least {margin} ms after it ended (negative: overlap)",
                self.windows.len(),
                stop.as_millis()
            );
            println!(
                "WINDOW|{}|{}|{}|{}|{margin}",
                self.scenario,
                self.backend,
                self.windows.len(),
                stop.as_millis()
            );
        }
    }
}

/// Runs a scenario and checks it; panics with every violation found.
pub fn run(setup: Setup) -> Row {
    let server = Server::start(setup.backend);
    let arena = Arena::new(setup.scenario);
    let mut rng = Rng::seeded(setup.seed);
    println!(
        "scenario {} on {}: seed {} (ELECT_FAULTS_SEED replays the fault order), lock {}, files in {}",
        setup.scenario,
        setup.backend.name(),
        rng.seed(),
        arena.lock,
        arena.dir.path().display()
    );
    let duration = setup.effective_duration();
    let mut events = Vec::new();
    std::thread::scope(|scope| {
        let server_ref = &server;
        let mut handles = Vec::new();
        for i in 0..setup.contenders {
            let (arena, setup) = (&arena, &setup);
            handles.push(scope.spawn(move || contend(arena, server_ref, setup, i)));
        }
        drop(handles);
        let started = Instant::now();
        let mut order = setup.faults.clone();
        let mut next = 0usize;
        while started.elapsed() < duration {
            let Some(h) = wait_holder(&arena, Duration::from_secs(15)) else {
                break;
            };
            let fault = if next < order.len() {
                next += 1;
                order[next - 1]
            } else if setup.random {
                order[rng.below(order.len())]
            } else {
                next = 1;
                order[0]
            };
            let at = Instant::now();
            apply(fault, &arena, server_ref, Some(h));
            events.push(Event {
                fault,
                at,
                holder: Some((h.0, h.1)),
            });
            std::thread::sleep(Duration::from_millis(300 + rng.below(1200) as u64));
        }
        order.clear();
        arena.shared.stop.store(true, Ordering::SeqCst);
        drain(&arena);
    });
    // Every contender has returned: each run ended by itself (or was killed as hung). A job whose
    // elect and watchdog were killed together may still run, until its background process ends.
    let settle = Instant::now() + setup.daemon + Duration::from_secs(2);
    while Instant::now() < settle
        && !arena.shared.watchdog_killed.lock().unwrap().is_empty()
        && arena
            .witness
            .snapshot()
            .lives
            .iter()
            .any(|l| l.close.is_none())
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(100));
    let row = check(&setup, &arena, &events);
    row.print();
    drop(server);
    if !row.violations.is_empty() {
        // Keep the files for a look.
        let kept = arena.dir.keep();
        panic!(
            "{} on {}: {} violation(s) (files kept in {}):\n{}",
            setup.scenario,
            setup.backend.name(),
            row.violations.len(),
            kept.display(),
            row.violations.join("\n")
        );
    }
    row
}

/// Ends the test's contention: every elect still waiting for the lease gets SIGTERM (which
/// stops a wait cleanly, exit 143); the holder finishes its job.
fn drain(arena: &Arena) {
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
                kill(r.pid, "TERM");
            }
        }
        drop(terminated);
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_holder(arena: &Arena, timeout: Duration) -> Option<(u64, usize, i32)> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(h) = holder(arena, Duration::from_millis(250)) {
            return Some(h);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn stderr_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(6)..].join("\n      ")
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

/// Checks every invariant over what was recorded.
pub fn check(setup: &Setup, arena: &Arena, events: &[Event]) -> Row {
    let record = arena.witness.snapshot();
    let runs = arena.shared.runs.lock().unwrap().clone();
    let killed = arena.shared.killed.lock().unwrap().clone();
    let watchdog_killed = arena.shared.watchdog_killed.lock().unwrap().clone();
    let terminated = arena.shared.terminated.lock().unwrap().clone();
    let mut v: Vec<String> = Vec::new();
    let lives = &record.lives;
    let t0 = lives.first().map_or_else(Instant::now, |l| l.connect);
    let rel = |t: Instant| t.saturating_duration_since(t0).as_millis();
    let describe = |l: &Life| {
        format!(
            "job pid {} token {:?} run {:?} (connected at +{} ms, closed at {})",
            l.pid,
            l.token,
            l.run,
            rel(l.connect),
            l.close
                .map_or("never".into(), |c| format!("+{} ms", rel(c)))
        )
    };
    let stderr_of = |run: Option<u64>| {
        run.and_then(|r| runs.iter().find(|x| x.run == r))
            .map(|r| format!("\n      {}", stderr_tail(&r.stderr)))
            .unwrap_or_default()
    };

    // Lifetimes that overlap.
    let mut overlapping: HashSet<usize> = HashSet::new();
    for &(a, b) in &record.overlaps {
        overlapping.insert(b);
        v.push(format!(
            "OVERLAP (witness): {} was still open when {} connected{}{}",
            describe(&lives[a]),
            describe(&lives[b]),
            stderr_of(lives[a].run),
            stderr_of(lives[b].run)
        ));
    }
    for (i, l) in lives.iter().enumerate() {
        if l.busy && !overlapping.contains(&i) {
            overlapping.insert(i);
            v.push(format!(
                "OVERLAP (flock probe): {} started while another job held the probe lock{}",
                describe(l),
                stderr_of(l.run)
            ));
        }
    }
    for l in lives {
        if l.close.is_none() {
            v.push(format!("job still running after the test: {}", describe(l)));
        }
    }

    // Tokens strictly increase in the order the jobs started.
    let mut monotonic = true;
    for pair in lives.windows(2) {
        match (pair[0].token, pair[1].token) {
            (Some(a), Some(b)) if b > a => {}
            _ => {
                monotonic = false;
                v.push(format!(
                    "TOKEN not increasing: {} then {}",
                    describe(&pair[0]),
                    describe(&pair[1])
                ));
            }
        }
    }

    // No job outlives its elect.
    for &i in &record.outlived {
        let l = &lives[i];
        let Some(run) = l.run else { continue };
        let exit = record.exits[&run];
        let over = l.close.map(|c| c.saturating_duration_since(exit));
        if killed.contains(&run) && watchdog_killed.contains(&run) {
            // elect and its watchdog killed together: the job's other processes run on. On the
            // file backend they hold the lock (checked as overlaps above); elsewhere nothing
            // guards them.
            if setup.backend.expires() {
                v.push(format!(
                    "OUTLIVED: {} ran on after elect and its watchdog were killed",
                    describe(l)
                ));
            }
        } else if killed.contains(&run) {
            if over.is_none_or(|o| o > GRACE + WATCHDOG_SLACK) {
                v.push(format!(
                    "OUTLIVED: {} ran {:?} ms after its elect was killed (allowed: grace {} ms + {} ms)",
                    describe(l),
                    over.map(ms),
                    ms(GRACE),
                    ms(WATCHDOG_SLACK)
                ));
            }
        } else {
            v.push(format!(
                "OUTLIVED: {} was still running after its elect (run {run}) exited, for {:?} ms{}",
                describe(l),
                over.map(ms),
                stderr_of(Some(run))
            ));
        }
    }

    // Exit codes.
    for r in &runs {
        let Some(status) = r.status else {
            v.push(format!("run {} has no exit status", r.run));
            continue;
        };
        let life = lives.iter().find(|l| l.run == Some(r.run));
        if killed.contains(&r.run) {
            if status.signal() != Some(9) {
                v.push(format!(
                    "run {} was killed with SIGKILL but ended with {status:?}",
                    r.run
                ));
            }
            continue;
        }
        if watchdog_killed.contains(&r.run) {
            // elect stopped the job itself and says so (70), or 76 if the lease was lost too.
            let ok = matches!(status.code(), Some(70 | 76))
                || (status.code() == Some(JOB_CODE) && life.is_some_and(|l| l.done));
            if !ok {
                v.push(format!(
                    "EXIT CODE: run {} whose watchdog was killed ended with {status:?} (expected 70){}",
                    r.run,
                    stderr_of(Some(r.run))
                ));
            }
            continue;
        }
        if terminated.contains(&r.run) {
            // SIGTERM while waiting; if it had just acquired, the job got the SIGTERM.
            let ok = match (life, status.code()) {
                (Some(l), Some(code)) if l.done => code == JOB_CODE || code == 143,
                (_, Some(code)) => code == 143 || code == 76,
                (_, None) => false,
            };
            if !ok {
                v.push(format!(
                    "EXIT CODE: run {} got SIGTERM while waiting and ended with {status:?}{}",
                    r.run,
                    stderr_of(Some(r.run))
                ));
            }
            continue;
        }
        let ok = match (life, status.code()) {
            // A job that got SIGTERM had begun to be stopped: elect says 76 even if it then
            // finished its work by itself.
            (Some(l), Some(code)) if l.done && l.got_term => code == JOB_CODE || code == 76,
            (Some(l), Some(code)) if l.done => code == JOB_CODE,
            (Some(_), Some(code)) => code == 76,
            (None, Some(code)) => [69, 75, 76].contains(&code),
            (_, None) => false,
        };
        if !ok {
            v.push(format!(
                "EXIT CODE: run {} ended with {status:?}; the job {}{}",
                r.run,
                match life {
                    Some(l) if l.done => format!("finished by itself (expected {JOB_CODE})"),
                    Some(_) => "was stopped (expected 76)".to_owned(),
                    None => "never ran (expected 69, 75 or 76)".to_owned(),
                },
                stderr_of(Some(r.run))
            ));
        }
    }
    for run in arena.shared.hung.lock().unwrap().iter() {
        v.push(format!(
            "HUNG: run {run} still ran after {RUN_LIMIT:?}{}",
            stderr_of(Some(*run))
        ));
    }

    // Per fault.
    let mut takeovers = Vec::new();
    let mut windows = Vec::new();
    for e in events {
        let Some((run, li)) = e.holder else { continue };
        let held = &lives[li];
        let next = lives
            .iter()
            .skip(li + 1)
            .find(|l| l.connect >= e.at && l.run != Some(run));
        if !held.done {
            if let Some(n) = next {
                takeovers.push(n.connect.duration_since(e.at));
            }
        }
        match e.fault {
            Fault::KillHolder => {
                if let Some(n) = next {
                    let took = n.connect.duration_since(e.at);
                    if !held.done && took > TTL + Duration::from_secs(1) {
                        v.push(format!(
                            "TAKEOVER after kill -9 of the holder (run {run}) took {} ms (bound: ttl + 1 s)",
                            ms(took)
                        ));
                    }
                }
            }
            // The holder learns of the change through inotify and stops its job; a newcomer does
            // not start while the old file's flock is held. Measure what is left of the window.
            Fault::DeleteLockFile | Fault::ReplaceLockFile if !held.done => {
                let Some(close) = held.close else { continue };
                let stop = close.saturating_duration_since(e.at);
                let margin_ms = next.map_or(i128::MAX, |n| {
                    if n.connect >= close {
                        n.connect.duration_since(close).as_millis() as i128
                    } else {
                        -(close.duration_since(n.connect).as_millis() as i128)
                    }
                });
                windows.push(Window { stop, margin_ms });
                if stop > GRACE + LOCK_FILE_REACTION {
                    v.push(format!(
                        "LOCK FILE: the job of run {run} ran on {} ms after its lock file was {} \
                         (bound: grace {} ms + {} ms to notice){}",
                        ms(stop),
                        if e.fault == Fault::DeleteLockFile {
                            "deleted"
                        } else {
                            "replaced"
                        },
                        ms(GRACE),
                        ms(LOCK_FILE_REACTION),
                        stderr_of(Some(run))
                    ));
                }
            }
            Fault::StopWatchdog => {
                if let Some(c) = held.close {
                    if c > e.at + TTL {
                        v.push(format!(
                            "DEADLINE: the job of the holder whose watchdog was SIGSTOPped (run {run}) lived {} ms after the stop (bound: ttl {} ms){}",
                            ms(c.duration_since(e.at)),
                            ms(TTL),
                            stderr_of(Some(run))
                        ));
                    }
                }
            }
            Fault::StopHolder if setup.backend.expires() => {
                if let Some(c) = held.close {
                    if c > e.at + TTL {
                        v.push(format!(
                            "DEADLINE: the job of the SIGSTOPped holder (run {run}) lived {} ms after the stop (bound: ttl {} ms){}",
                            ms(c.duration_since(e.at)),
                            ms(TTL),
                            stderr_of(Some(run))
                        ));
                    }
                }
            }
            _ => {}
        }
    }

    Row {
        scenario: setup.scenario.to_owned(),
        backend: setup.backend.name().to_owned(),
        runs: runs.len(),
        handovers: lives.len().saturating_sub(1),
        overlaps: overlapping.len(),
        takeovers,
        monotonic,
        violations: v,
        windows,
    }
}

// ---------------------------------------------------------------------------------------------
// Ctrl-Z at a terminal

/// Scenario 11: elect runs a job in the foreground of a tmux pane; Ctrl-Z is typed, and `fg`
/// after longer than the ttl. The job and the front (the process bash started) stop, bash says
/// so, elect and its watchdog go on, the lease stays renewed past the ttl so that a waiting
/// contender does not get in, and after `fg` the job finishes normally with its own exit code.
pub fn ctrl_z(kind: BackendKind) -> Row {
    let tmux = programs::require("tmux", "install the tmux package");
    let server = Server::start(kind);
    let arena = Arena::new("ctrl-z");
    let setup = Setup::new("ctrl-z-tmux", kind, &[]).mode("beat");
    let socket = arena.dir.path().join("tmux.sock");
    let exit_file = arena.dir.path().join("tmux.exit");
    let work = Duration::from_secs(6);
    let tmux_cmd = |args: &[&str]| {
        let out = Command::new(&tmux)
            .arg("-S")
            .arg(&socket)
            .args(args)
            .output()
            .expect("run tmux");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let (key, value) = server.env();
    let line = format!(
        "cd {dir} && {key}='{value}' FAULT_WITNESS={w} FAULT_PROBE={p} FAULT_RUN=0 FAULT_MODE=beat \
         FAULT_WORK_MS={work} {elect} run --lock {lock} --ttl {ttl}ms --grace {grace}ms -- perl {job}",
        dir = arena.dir.path().display(),
        w = arena.witness.path().display(),
        p = arena.probe.display(),
        work = work.as_millis(),
        elect = env!("CARGO_BIN_EXE_elect"),
        lock = arena.lock,
        ttl = TTL.as_millis(),
        grace = GRACE.as_millis(),
        job = arena.job.display(),
    );
    tmux_cmd(&[
        "new-session",
        "-d",
        "-s",
        "faults",
        "-x",
        "200",
        "-y",
        "50",
        "env -i PATH=/usr/bin:/bin TERM=screen HOME=/tmp bash --norc --noprofile",
    ]);
    struct KillTmux<'a>(&'a dyn Fn(&[&str]) -> String);
    impl Drop for KillTmux<'_> {
        fn drop(&mut self) {
            (self.0)(&["kill-server"]);
        }
    }
    let _guard = KillTmux(&tmux_cmd);
    std::thread::sleep(Duration::from_millis(300));
    tmux_cmd(&["send-keys", "-t", "faults", &line, "Enter"]);
    let mut v = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let life = loop {
        let record = arena.witness.snapshot();
        if let Some(l) = record.lives.iter().find(|l| l.run == Some(0)) {
            break l.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the job in tmux never started; pane:\n{}",
            tmux_cmd(&["capture-pane", "-p", "-t", "faults"])
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let parent = |pid: i32| -> i32 {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|t| {
                t.rsplit_once(") ")
                    .and_then(|(_, r)| r.split_whitespace().nth(1).and_then(|p| p.parse().ok()))
            })
            .unwrap_or(0)
    };
    let state = |pid: i32| -> char {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|t| t.rsplit_once(") ").and_then(|(_, r)| r.chars().next()))
            .unwrap_or('-')
    };
    let watchdog = parent(life.pid);
    let elect = parent(watchdog);
    let front = parent(elect);
    arena.witness.watch(0, elect);
    let ctrl_z_at = std::thread::scope(|scope| {
        let contender = scope.spawn(|| contend(&arena, &server, &setup, 1));
        std::thread::sleep(Duration::from_millis(500));
        let at = Instant::now();
        tmux_cmd(&["send-keys", "-t", "faults", "C-z"]);
        std::thread::sleep(Duration::from_millis(400));
        for (what, pid, stopped) in [
            ("job", life.pid, true),
            ("front", front, true),
            ("watchdog", watchdog, false),
            ("elect", elect, false),
        ] {
            if (state(pid) == 'T') != stopped {
                v.push(format!(
                    "CTRL-Z: the {what} (pid {pid}) is {} 400 ms after Ctrl-Z",
                    if stopped { "not stopped" } else { "stopped" }
                ));
            }
        }
        let pane = tmux_cmd(&["capture-pane", "-p", "-t", "faults"]);
        if !pane.contains("Stopped") {
            v.push(format!(
                "CTRL-Z: bash did not report the job stopped; pane:\n{pane}"
            ));
        }
        std::thread::sleep((TTL + Duration::from_secs(1)).saturating_sub(at.elapsed()));
        let fg = format!("fg; echo $? > {}", exit_file.display());
        tmux_cmd(&["send-keys", "-t", "faults", &fg, "Enter"]);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !exit_file.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        arena.shared.stop.store(true, Ordering::SeqCst);
        let _ = contender.join();
        at
    });
    std::thread::sleep(Duration::from_secs(1));
    let pane = tmux_cmd(&["capture-pane", "-p", "-t", "faults"]);
    println!("tmux pane after Ctrl-Z and fg:\n{}", pane.trim_end());
    let code = std::fs::read_to_string(&exit_file).unwrap_or_default();
    if code.trim() != JOB_CODE.to_string() {
        v.push(format!(
            "CTRL-Z: elect in tmux exited {:?}, expected the job's {JOB_CODE}; pane:\n{pane}",
            code.trim()
        ));
    }
    let record = arena.witness.snapshot();
    let life = record
        .lives
        .iter()
        .find(|l| l.run == Some(0))
        .cloned()
        .expect("the tmux job's life");
    if !life.done {
        v.push("CTRL-Z: the job in tmux did not finish by itself".to_owned());
    }
    if life.close.is_none_or(|c| c < ctrl_z_at + TTL) {
        v.push(format!(
            "CTRL-Z: the job in tmux ended {:?} ms after Ctrl-Z, before the ttl: the lease was not kept",
            life.close.map(|c| c.saturating_duration_since(ctrl_z_at).as_millis())
        ));
    }
    let gap = life
        .beats
        .windows(2)
        .map(|w| w[1].duration_since(w[0]))
        .max()
        .unwrap_or_default();
    if gap < TTL {
        v.push(format!(
            "CTRL-Z: the job never stopped beating for longer than the ttl (longest gap {} ms)",
            gap.as_millis()
        ));
    }
    if let Some(first_other) = record.lives.iter().find(|l| l.run != Some(0)) {
        if life.close.is_some_and(|c| first_other.connect < c) {
            v.push("CTRL-Z: the contender got in while the tmux job ran".to_owned());
        }
    }
    let mut row = check(&setup, &arena, &[]);
    row.violations.extend(v);
    row.print();
    drop(server);
    if !row.violations.is_empty() {
        let kept = arena.dir.keep();
        panic!(
            "ctrl-z-tmux on {}: {} violation(s) (files kept in {}):\n{}",
            kind.name(),
            row.violations.len(),
            kept.display(),
            row.violations.join("\n")
        );
    }
    row
}
