//! The nodes of real Redis topologies for tests, on loopback, from Debian's `redis-server` and
//! `redis-cli`; the topologies are in `redis_sentinel_set.rs` (one primary, two replicas, three
//! sentinels) and `redis_cluster_set.rs` (three primaries with one replica each).
//!
//! Every data node requires [`PASSWORD`] (so that redaction is checked on these forms too); the
//! sentinels themselves need none. Everything is killed on drop. A test binary starts one
//! topology and shares it between its tests: forming one takes seconds.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{net, programs};

/// The data nodes' password.
pub const PASSWORD: &str = "topology-secret";

/// How long a topology may take to form, or a failover to finish, on a loaded machine.
pub const FORM: Duration = Duration::from_secs(60);

/// One `redis-server` (a data node or a sentinel), killed on drop.
pub struct Node {
    pub child: Option<Child>,
    pub port: u16,
    log: PathBuf,
}

impl Node {
    pub fn start(binary: &Path, conf: &Path, port: u16, log: PathBuf, sentinel: bool) -> Self {
        let mut cmd = Command::new(binary);
        cmd.arg(conf);
        if sentinel {
            cmd.arg("--sentinel");
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
        let node = Self {
            child: Some(child),
            port,
            log,
        };
        assert!(
            net::accepts_within(port, Duration::from_secs(20)),
            "redis on port {port} did not start; its log:\n{}",
            node.log_text()
        );
        node
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn server_binary() -> PathBuf {
    programs::require(
        "redis-server",
        "install the redis-server package (apt-get install redis-server)",
    )
}

/// `redis-cli -p PORT [-a PASSWORD] ARGS...`, its standard output (RESP2 text, one value a line).
pub fn cli(port: u16, password: Option<&str>, args: &[&str]) -> String {
    let binary = programs::require(
        "redis-cli",
        "install the redis-tools package (apt-get install redis-tools)",
    );
    let mut cmd = Command::new(binary);
    cmd.arg("-h")
        .arg("127.0.0.1")
        .arg("-p")
        .arg(port.to_string());
    if let Some(password) = password {
        cmd.arg("-a").arg(password).arg("--no-auth-warning");
    }
    let out = cmd
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `check` every 100 ms until it holds or [`FORM`] passes; panics with `what` then.
pub fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + FORM;
    while !check() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The common settings of a data node.
pub fn node_conf(dir: &Path, name: &str, port: u16, extra: &str) -> (PathBuf, PathBuf) {
    let conf = dir.join(format!("{name}.conf"));
    let log = dir.join(format!("{name}.log"));
    std::fs::write(
        &conf,
        format!(
            "bind 127.0.0.1\nport {port}\ndir {dir}\ndbfilename {name}.rdb\nsave \"\"\n\
             appendonly no\ndaemonize no\nlogfile {log}\nrequirepass {PASSWORD}\n\
             masterauth {PASSWORD}\n{extra}",
            dir = dir.display(),
            log = log.display(),
        ),
    )
    .expect("write a redis config");
    (conf, log)
}
