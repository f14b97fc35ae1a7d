//! A real `etcd` for tests: loopback only, free client and peer ports, data in a temporary
//! directory, killed on drop (and waited for). A missing binary is a test failure, never a silent
//! pass.
//!
//! Options: authentication (a `root` user with a password, `auth enable`), and TLS with
//! certificates made at test time with the `openssl` command (a CA, a server certificate for
//! 127.0.0.1 and localhost, and a client certificate).
//!
//! The binary's `mod support` block declares the `certs`, `net`, `process` and `programs` modules
//! beside this one.

// A harness: each binary uses the part of it that its tests need.
#![allow(dead_code)]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::net::retry;
use super::process::signal;
use super::{certs, net, programs};

pub struct EtcdServer {
    child: Option<Child>,
    pub port: u16,
    peer_port: u16,
    dir: tempfile::TempDir,
    password: Option<String>,
    tls: bool,
}

#[derive(Default, Clone)]
pub struct Options {
    /// Enable authentication with user `root` and this password.
    pub root_password: Option<String>,
    /// Serve TLS only, with certificates made at start.
    pub tls: bool,
}

impl EtcdServer {
    pub fn start() -> Self {
        Self::with(Options::default())
    }

    pub fn with(options: Options) -> Self {
        let mut server = retry(5, || {
            let (port, peer_port) = (net::free_port(), net::free_port());
            let name = format!("m0-{port}");
            let cluster = format!("{name}=http://127.0.0.1:{peer_port}");
            let mut server = Self::spawn(&name, port, peer_port, &cluster, &options);
            server.wait_ready(&name).map(|()| server)
        });
        if let Some(password) = options.root_password {
            server.etcdctl_ok(&["user", "add", &format!("root:{password}")]);
            server.etcdctl_ok(&["auth", "enable"]);
            server.password = Some(password);
        }
        server
    }

    /// A cluster of `n` members on loopback (plain, no auth), every member ready.
    pub fn cluster(n: usize) -> Vec<Self> {
        retry(5, || {
            let ports: Vec<(u16, u16)> = (0..n)
                .map(|_| (net::free_port(), net::free_port()))
                .collect();
            let names: Vec<String> = ports.iter().map(|(port, _)| format!("m-{port}")).collect();
            let cluster = names
                .iter()
                .zip(&ports)
                .map(|(name, (_, peer))| format!("{name}=http://127.0.0.1:{peer}"))
                .collect::<Vec<_>>()
                .join(",");
            // All members must run before any can become ready: a quorum is needed.
            let mut members: Vec<Self> = names
                .iter()
                .zip(&ports)
                .map(|(name, (port, peer))| {
                    Self::spawn(name, *port, *peer, &cluster, &Options::default())
                })
                .collect();
            for (member, name) in members.iter_mut().zip(&names) {
                member.wait_ready(name)?;
            }
            Ok(members)
        })
    }

    fn spawn(name: &str, port: u16, peer_port: u16, cluster: &str, options: &Options) -> Self {
        let binary = programs::require(
            "etcd",
            "install the etcd-server package (apt-get install etcd-server etcd-client)",
        );
        let dir = tempfile::tempdir().expect("temporary directory");
        let scheme = if options.tls { "https" } else { "http" };
        let client_url = format!("{scheme}://127.0.0.1:{port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        if options.tls {
            make_certificates(dir.path());
        }
        let mut cmd = Command::new(binary);
        cmd.arg("--name")
            .arg(name)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--listen-client-urls")
            .arg(&client_url)
            .arg("--advertise-client-urls")
            .arg(&client_url)
            .arg("--listen-peer-urls")
            .arg(&peer_url)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer_url)
            .arg("--initial-cluster")
            .arg(cluster)
            // One token per cluster (its member list is unique: free ports), the same for all
            // members.
            .arg("--initial-cluster-token")
            .arg(format!("elect-test-{:x}", fnv(cluster)))
            .arg("--log-outputs")
            .arg(dir.path().join("etcd.log"))
            .arg("--logger")
            .arg("zap");
        if options.tls {
            cmd.arg("--cert-file")
                .arg(dir.path().join("server.crt"))
                .arg("--key-file")
                .arg(dir.path().join("server.key"))
                .arg("--trusted-ca-file")
                .arg(dir.path().join("ca.crt"))
                .arg("--client-cert-auth");
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd");
        Self {
            child: Some(child),
            port,
            peer_port,
            dir,
            password: None,
            tls: options.tls,
        }
    }

    /// Waits until the server answers as the member `name`. A free port can be taken by
    /// another test's server between choosing it and etcd binding it: then this etcd exits, and
    /// the port answers as someone else. Either is an `Err`, for [`retry`] to start afresh.
    fn wait_ready(&mut self, name: &str) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                return Err(format!(
                    "etcd exited at start ({status}); its log:\n{}",
                    self.log()
                ));
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && self.etcdctl(&["endpoint", "health"]).status.success()
            {
                let members = self.etcdctl(&["member", "list"]);
                let members = String::from_utf8_lossy(&members.stdout);
                if !members.contains(&format!(", {name}, ")) {
                    return Err(format!(
                        "port {} answers as another etcd: {members}",
                        self.port
                    ));
                }
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "etcd did not become ready on port {}; its log:\n{}",
            self.port,
            self.log()
        ))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `etcd://127.0.0.1:PORT` (or `etcds://`), with the root password if auth is on.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "etcds" } else { "etcd" };
        match &self.password {
            Some(password) => format!("{scheme}://root:{password}@{}", self.endpoint()),
            None => format!("{scheme}://{}", self.endpoint()),
        }
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    pub fn client_cert(&self) -> PathBuf {
        self.dir.path().join("client.crt")
    }

    pub fn client_key(&self) -> PathBuf {
        self.dir.path().join("client.key")
    }

    /// An `etcdctl` command (API v3) aimed at this server, with its credentials.
    pub fn etcdctl_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("etcdctl");
        let scheme = if self.tls { "https" } else { "http" };
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={scheme}://{}", self.endpoint()))
            .arg("--command-timeout=5s")
            .stdin(Stdio::null());
        if self.tls {
            cmd.arg(format!("--cacert={}", self.ca_file().display()))
                .arg(format!("--cert={}", self.client_cert().display()))
                .arg(format!("--key={}", self.client_key().display()));
        }
        if let Some(password) = &self.password {
            cmd.arg(format!("--user=root:{password}"));
        }
        cmd.args(args);
        cmd
    }

    pub fn etcdctl(&self, args: &[&str]) -> Output {
        self.etcdctl_command(args).output().expect("run etcdctl")
    }

    /// Runs etcdctl, fails the test if it fails, returns its stdout.
    pub fn etcdctl_ok(&self, args: &[&str]) -> String {
        let out = self.etcdctl(args);
        assert!(
            out.status.success(),
            "etcdctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Every key under `prefix`.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        self.etcdctl_ok(&["get", "--prefix", "--keys-only", prefix])
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// A counter from the server's Prometheus endpoint (plain servers only).
    pub fn metric(&self, name: &str) -> f64 {
        use std::io::{Read, Write};
        assert!(!self.tls, "metric() speaks plain HTTP only");
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to etcd");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("set timeout");
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .expect("send");
        let mut text = String::new();
        stream.read_to_string(&mut text).expect("read metrics");
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no metric {name}"))
    }

    /// Freezes the server: it keeps its sockets but answers nothing.
    pub fn stop(&self) {
        assert!(signal(self.pid(), "STOP"), "SIGSTOP to {}", self.pid());
    }

    pub fn resume(&self) {
        assert!(signal(self.pid(), "CONT"), "SIGCONT to {}", self.pid());
    }

    /// Kills the server and waits until it is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id() as i32, "CONT");
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A small stable hash, to name a cluster.
fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A CA, a server certificate for loopback (for client authentication too), and a client
/// certificate for `root`.
fn make_certificates(dir: &Path) {
    certs::ca(dir);
    let server = certs::server_ext(certs::LOOPBACK, "serverAuth,clientAuth");
    certs::sign(dir, "server", "localhost", &server);
    certs::sign(dir, "client", "root", certs::CLIENT_EXT);
}
