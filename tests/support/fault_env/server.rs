//! The backend of one test: its server process, started, frozen, killed and started again on the
//! same data and port, and the proxy that elect talks through.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::etcd_cluster::EtcdCluster;
use super::setup::BackendKind;
use crate::net::free_port;
use crate::netns::Host;
use crate::postgres_server::{self, PostgresServer};
use crate::process::{is_alive, signal};
use crate::programs;
use crate::proxy::Proxy;

/// A server process the harness can kill and start again on the same data and port.
pub(super) struct Proc {
    pub(super) program: PathBuf,
    pub(super) args: Vec<String>,
    pub(super) child: Option<Child>,
    pub(super) dir: tempfile::TempDir,
    /// Where it listens for clients: 127.0.0.1, or its host's address.
    pub(super) ip: Ipv4Addr,
    pub(super) port: u16,
    pub(super) ready: fn(SocketAddr) -> bool,
    pub(super) starts: usize,
    /// The host (network namespace) it runs on, if not the harness's.
    pub(super) host: Option<Host>,
}

impl Proc {
    pub(super) fn start(&mut self) {
        self.spawn();
        self.wait_ready();
    }

    pub(super) fn spawn(&mut self) {
        let log = self.dir.path().join(format!("server-{}.log", self.starts));
        self.starts += 1;
        let log = std::fs::File::create(&log).expect("server log");
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        if let Some(host) = &self.host {
            host.enter(&mut cmd);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.program.display()));
        self.child = Some(child);
    }

    /// Waits until the server answers; a server that exited meanwhile (its port taken, its data
    /// refused) fails at once with its log.
    pub(super) fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !(self.ready)(self.addr()) {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                let log = self
                    .dir
                    .path()
                    .join(format!("server-{}.log", self.starts - 1));
                let log = std::fs::read_to_string(log).unwrap_or_default();
                panic!(
                    "{} exited ({status}) before it served on {}:\n{log}",
                    self.program.display(),
                    self.addr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} did not become ready on {}",
                self.program.display(),
                self.addr()
            );
            std::thread::sleep(Duration::from_millis(30));
        }
    }

    pub(super) fn addr(&self) -> SocketAddr {
        SocketAddr::from((self.ip, self.port))
    }

    pub(super) fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// kill -9 (or `sig`), and the wait for its end.
    pub(super) fn kill(&mut self) {
        self.signal_and_wait("KILL");
    }

    pub(super) fn signal_and_wait(&mut self, sig: &str) {
        if let Some(mut child) = self.child.take() {
            signal(child.id() as i32, "CONT");
            signal(child.id() as i32, sig);
            let _ = child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn redis_ready(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 64];
    s.write_all(b"PING\r\n").is_ok()
        && s.read(&mut buf)
            .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
}

pub(super) fn etcd_ready(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = TcpStream::connect(addr) else {
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
    EtcdCluster(EtcdCluster),
    Zk(Mutex<Proc>),
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
                    ip: Ipv4Addr::LOCALHOST,
                    port,
                    ready: redis_ready,
                    starts: 0,
                    host: None,
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
                    // See etcd_cluster.rs: etcd 3.4's default logger can panic.
                    "--logger".to_owned(),
                    "zap".to_owned(),
                    "--log-level".to_owned(),
                    "error".to_owned(),
                ];
                let mut proc = Proc {
                    program: programs::require("etcd", "install the etcd-server package"),
                    args,
                    child: None,
                    dir: data,
                    ip: Ipv4Addr::LOCALHOST,
                    port,
                    ready: etcd_ready,
                    starts: 0,
                    host: None,
                };
                proc.start();
                Inner::Etcd(Mutex::new(proc))
            }
            BackendKind::EtcdCluster => Inner::EtcdCluster(EtcdCluster::start()),
            BackendKind::Zk => {
                let data = tempfile::tempdir().expect("zookeeper dir");
                let port = free_port();
                let (program, args) = crate::zk_server::standalone_command(data.path(), port);
                let mut proc = Proc {
                    program,
                    args,
                    child: None,
                    dir: data,
                    ip: Ipv4Addr::LOCALHOST,
                    port,
                    ready: |addr| crate::zk_server::serving(addr.port()),
                    starts: 0,
                    host: None,
                };
                proc.start();
                Inner::Zk(Mutex::new(proc))
            }
            BackendKind::Postgres => {
                let server = PostgresServer::start();
                let restarted = Mutex::new(None);
                relaunch_postgres(&server, &restarted, false);
                Inner::Postgres { server, restarted }
            }
        };
        let proxy = match &inner {
            Inner::File { .. } | Inner::EtcdCluster(_) => None,
            Inner::Redis(p) | Inner::Etcd(p) | Inner::Zk(p) => {
                Some(Proxy::start(addr(p.lock().unwrap().port)))
            }
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

    /// How elect reaches the backend: `ELECT_BACKEND` (through the proxy) or `ELECT_LOCK_DIR`.
    pub fn env(&self) -> (&'static str, String) {
        match (&self.inner, &self.proxy) {
            (Inner::File { lock_dir }, _) => ("ELECT_LOCK_DIR", lock_dir.display().to_string()),
            (Inner::EtcdCluster(cluster), _) => ("ELECT_BACKEND", cluster.url()),
            (_, Some(proxy)) => ("ELECT_BACKEND", self.url_at(addr(proxy.port))),
            (_, None) => unreachable!("a network backend always has its proxy"),
        }
    }

    /// `ELECT_BACKEND` for a server reached at `at` (the proxy, or a relay to [`Self::port`]).
    pub fn url_at(&self, at: SocketAddr) -> String {
        match &self.inner {
            Inner::File { lock_dir } => lock_dir.display().to_string(),
            Inner::Redis(_) => format!("redis://{at}"),
            Inner::Etcd(_) | Inner::EtcdCluster(_) => format!("etcd://{at}"),
            Inner::Zk(_) => format!("zk://{at}"),
            Inner::Postgres { .. } => format!(
                "postgres://{}:{}@{at}/{}?sslmode=disable",
                crate::postgres_server::USER,
                crate::postgres_server::PASSWORD,
                crate::postgres_server::DATABASE
            ),
        }
    }

    /// The server's own port on 127.0.0.1 (0 for the file backend and the cluster, whose members
    /// are on hosts of their own).
    pub fn port(&self) -> u16 {
        match &self.inner {
            Inner::File { .. } | Inner::EtcdCluster(_) => 0,
            Inner::Redis(p) | Inner::Etcd(p) | Inner::Zk(p) => p.lock().unwrap().port,
            Inner::Postgres { server, .. } => server.port,
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
            Inner::File { .. } | Inner::EtcdCluster(_) => {}
            Inner::Redis(p) | Inner::Etcd(p) | Inner::Zk(p) => {
                signal(p.lock().unwrap().pid(), "STOP");
            }
            Inner::Postgres { server, .. } => server.freeze(),
        }
    }

    pub fn thaw(&self) {
        match &self.inner {
            Inner::File { .. } | Inner::EtcdCluster(_) => {}
            Inner::Redis(p) | Inner::Etcd(p) | Inner::Zk(p) => {
                signal(p.lock().unwrap().pid(), "CONT");
            }
            Inner::Postgres { server, .. } => server.thaw(),
        }
    }

    /// A clean stop of the server (SIGTERM; PostgreSQL's fast shutdown, which ends every
    /// session), then the same server again on the same data and port.
    pub fn restart_clean(&self) {
        match &self.inner {
            Inner::File { .. } => {}
            Inner::Redis(p) | Inner::Etcd(p) | Inner::Zk(p) => {
                let mut p = p.lock().unwrap();
                p.signal_and_wait("TERM");
                p.start();
            }
            Inner::EtcdCluster(cluster) => cluster.rolling_restart(Duration::ZERO),
            Inner::Postgres { server, restarted } => relaunch_postgres(server, restarted, false),
        }
    }

    /// kill -9 of the server, then the same server again on the same data and port.
    pub fn restart(&self) {
        match &self.inner {
            Inner::File { .. } | Inner::EtcdCluster(_) => {}
            Inner::Redis(p) | Inner::Etcd(p) | Inner::Zk(p) => {
                let mut p = p.lock().unwrap();
                p.kill();
                std::thread::sleep(Duration::from_millis(200));
                p.start();
            }
            Inner::Postgres { server, restarted } => relaunch_postgres(server, restarted, true),
        }
    }

    /// The three members, for the cluster's own faults.
    pub(super) fn etcd_cluster(&self) -> Option<&EtcdCluster> {
        match &self.inner {
            Inner::EtcdCluster(cluster) => Some(cluster),
            _ => None,
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
            signal(*pid, "KILL");
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
    while pids.iter().any(|p| is_alive(*p)) && Instant::now() < gone {
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
