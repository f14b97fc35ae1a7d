//! Real Redis topologies for tests, on loopback, from Debian's `redis-server`, `redis-sentinel`
//! and `redis-cli`:
//! - [`SentinelSet`]: one primary, two replicas and three sentinels watching it (quorum 2,
//!   `down-after-milliseconds` 1000, so a killed primary is replaced within a few seconds);
//! - [`Cluster`]: three primaries with one replica each, made by `redis-cli --cluster create`.
//!
//! Every node requires [`PASSWORD`] (so that redaction is checked on these forms too); the
//! sentinels themselves need none. Everything is killed on drop. A test binary starts one
//! topology and shares it between its tests: forming one takes seconds.
//!
//! The test crate declares the `net` and `programs` modules of `tests/support` beside this one.

// Sentinel's binary uses the Sentinel set, the Cluster's the cluster.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{net, programs};

/// The data nodes' password.
pub const PASSWORD: &str = "topology-secret";
/// The master name the sentinels watch.
pub const MASTER: &str = "elect-main";

/// How long a topology may take to form, or a failover to finish, on a loaded machine.
const FORM: Duration = Duration::from_secs(60);

/// One `redis-server` (a data node or a sentinel), killed on drop.
struct Node {
    child: Option<Child>,
    port: u16,
    log: PathBuf,
}

impl Node {
    fn start(binary: &Path, conf: &Path, port: u16, log: PathBuf, sentinel: bool) -> Self {
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

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill(&mut self) {
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

fn server_binary() -> PathBuf {
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

/// The value after `key` in a flat `key\nvalue\n...` answer (`SENTINEL MASTER`).
fn field(answer: &str, key: &str) -> Option<String> {
    let mut lines = answer.lines();
    while let Some(line) = lines.next() {
        if line == key {
            return lines.next().map(str::to_owned);
        }
    }
    None
}

/// Polls `check` every 100 ms until it holds or [`FORM`] passes; panics with `what` then.
fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + FORM;
    while !check() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The common settings of a data node.
fn node_conf(dir: &Path, name: &str, port: u16, extra: &str) -> (PathBuf, PathBuf) {
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

/// One primary, two replicas, three sentinels.
pub struct SentinelSet {
    dir: tempfile::TempDir,
    /// Data nodes; the primary at first is index 0. Behind a mutex so that a shared set can
    /// lose one to `kill -9`.
    nodes: Mutex<Vec<Node>>,
    sentinels: Vec<Node>,
}

impl SentinelSet {
    pub fn start() -> Self {
        let binary = server_binary();
        let dir = tempfile::tempdir().expect("temporary directory");
        let primary_port = net::free_port();
        let mut nodes = Vec::new();
        for i in 0..3 {
            let port = if i == 0 {
                primary_port
            } else {
                net::free_port()
            };
            let extra = if i == 0 {
                String::new()
            } else {
                format!("replicaof 127.0.0.1 {primary_port}\n")
            };
            let (conf, log) = node_conf(dir.path(), &format!("node{i}"), port, &extra);
            nodes.push(Node::start(&binary, &conf, port, log, false));
        }
        until("both replicas in sync with the primary", || {
            let info = cli(primary_port, Some(PASSWORD), &["INFO", "replication"]);
            info.matches("state=online").count() == 2
        });
        let mut sentinels = Vec::new();
        for i in 0..3 {
            let port = net::free_port();
            let conf = dir.path().join(format!("sentinel{i}.conf"));
            let log = dir.path().join(format!("sentinel{i}.log"));
            std::fs::write(
                &conf,
                format!(
                    "bind 127.0.0.1\nport {port}\ndir {dir}\ndaemonize no\nlogfile {log}\n\
                     sentinel monitor {MASTER} 127.0.0.1 {primary_port} 2\n\
                     sentinel auth-pass {MASTER} {PASSWORD}\n\
                     sentinel down-after-milliseconds {MASTER} 1000\n\
                     sentinel failover-timeout {MASTER} 4000\n\
                     sentinel parallel-syncs {MASTER} 2\n",
                    dir = dir.path().display(),
                    log = log.display(),
                ),
            )
            .expect("write a sentinel config");
            sentinels.push(Node::start(&binary, &conf, port, log, true));
        }
        let set = Self {
            dir,
            nodes: Mutex::new(nodes),
            sentinels,
        };
        for s in &set.sentinels {
            until(
                "every sentinel sees two replicas and two other sentinels",
                || {
                    let master = cli(s.port, None, &["SENTINEL", "MASTER", MASTER]);
                    field(&master, "num-slaves").as_deref() == Some("2")
                        && field(&master, "num-other-sentinels").as_deref() == Some("2")
                },
            );
        }
        set
    }

    /// `redis+sentinel://:PASSWORD@s1,s2,s3/MASTER` (with `query` after a `?` if not empty).
    pub fn url(&self, query: &str) -> String {
        let sentinels: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        let mut url = format!(
            "redis+sentinel://:{PASSWORD}@{}/{MASTER}",
            sentinels.join(",")
        );
        if !query.is_empty() {
            url.push('?');
            url.push_str(query);
        }
        url
    }

    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(|s| s.port).collect()
    }

    /// The primary's port as the first sentinel that answers names it.
    pub fn primary_port(&self) -> u16 {
        for s in &self.sentinels {
            let answer = cli(
                s.port,
                None,
                &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER],
            );
            if let Some(port) = answer.lines().nth(1).and_then(|p| p.trim().parse().ok()) {
                return port;
            }
        }
        panic!("no sentinel names a primary");
    }

    /// Runs a command on the current primary.
    pub fn on_primary(&self, args: &[&str]) -> String {
        cli(self.primary_port(), Some(PASSWORD), args)
    }

    /// `SENTINEL FAILOVER`, then waits until every sentinel names a new primary that says it is
    /// one. Returns the time the failover took, as seen from here.
    pub fn failover(&self) -> Duration {
        let old = self.primary_port();
        let started = Instant::now();
        let answer = cli(
            self.sentinels[0].port,
            None,
            &["SENTINEL", "FAILOVER", MASTER],
        );
        assert!(answer.contains("OK"), "SENTINEL FAILOVER: {answer}");
        self.await_new_primary(old);
        started.elapsed()
    }

    /// `kill -9` of the primary, then waits for the sentinels to promote a replica. Returns the
    /// time from the kill to a promoted primary that says it is one.
    pub fn kill_primary(&self) -> Duration {
        let old = self.primary_port();
        let started = Instant::now();
        {
            let mut nodes = self.nodes.lock().unwrap();
            let node = nodes
                .iter_mut()
                .find(|n| n.port == old)
                .expect("the primary is one of ours");
            node.kill();
        }
        self.await_new_primary(old);
        started.elapsed()
    }

    /// Waits until the primary has `n` replicas in sync (after a `kill -9`, the sentinels point
    /// the remaining replica at the new primary, which then needs a full resynchronisation).
    pub fn await_replicas(&self, n: usize) {
        until("the primary's replicas in sync", || {
            self.on_primary(&["INFO", "replication"])
                .matches("state=online")
                .count()
                >= n
        });
    }

    fn await_new_primary(&self, old: u16) {
        until("the sentinels to name a new primary", || {
            self.sentinels.iter().all(|s| {
                let answer = cli(
                    s.port,
                    None,
                    &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER],
                );
                answer
                    .lines()
                    .nth(1)
                    .and_then(|p| p.trim().parse::<u16>().ok())
                    .is_some_and(|p| p != old)
            })
        });
        let new = self.primary_port();
        until("the new primary to take writes", || {
            cli(new, Some(PASSWORD), &["ROLE"]).starts_with("master")
        });
    }
}

/// Three primaries with one replica each.
pub struct Cluster {
    dir: tempfile::TempDir,
    nodes: Mutex<Vec<Node>>,
}

impl Cluster {
    pub fn start() -> Self {
        let binary = server_binary();
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut nodes = Vec::new();
        for i in 0..6 {
            let port = net::free_port();
            // The bus port is chosen too: port + 10000 may be taken.
            let bus = net::free_port();
            let (conf, log) = node_conf(
                dir.path(),
                &format!("cluster{i}"),
                port,
                &format!(
                    "cluster-enabled yes\ncluster-config-file cluster{i}-nodes.conf\n\
                     cluster-node-timeout 1000\ncluster-port {bus}\n"
                ),
            );
            nodes.push(Node::start(&binary, &conf, port, log, false));
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let cli_binary = programs::require(
            "redis-cli",
            "install the redis-tools package (apt-get install redis-tools)",
        );
        let out = Command::new(cli_binary)
            .arg("-a")
            .arg(PASSWORD)
            .arg("--no-auth-warning")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .arg("--cluster-replicas")
            .arg("1")
            .arg("--cluster-yes")
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = Self {
            dir,
            nodes: Mutex::new(nodes),
        };
        cluster.await_ok();
        cluster
    }

    fn ports(&self) -> Vec<u16> {
        self.nodes.lock().unwrap().iter().map(|n| n.port).collect()
    }

    /// Waits until every live node says the cluster is ok and sees three primaries with a
    /// connected replica each.
    fn await_ok(&self) {
        until("the cluster to be ok on every node", || {
            self.live_ports()
                .iter()
                .all(|&p| cli(p, Some(PASSWORD), &["CLUSTER", "INFO"]).contains("cluster_state:ok"))
                && self.primaries_with_replicas() == 3
        });
    }

    fn live_ports(&self) -> Vec<u16> {
        let mut nodes = self.nodes.lock().unwrap();
        nodes
            .iter_mut()
            .filter_map(|n| {
                let alive = n
                    .child
                    .as_mut()
                    .is_some_and(|c| c.try_wait().ok().flatten().is_none());
                alive.then_some(n.port)
            })
            .collect()
    }

    /// `CLUSTER NODES` from a live node: (id, port, flags, master id, slots) per node.
    fn table(&self) -> Vec<(String, u16, String, String, String)> {
        for port in self.live_ports() {
            let text = cli(port, Some(PASSWORD), &["CLUSTER", "NODES"]);
            let rows: Vec<_> = text
                .lines()
                .filter_map(|line| {
                    let f: Vec<&str> = line.split_whitespace().collect();
                    let port = f
                        .get(1)?
                        .split('@')
                        .next()?
                        .rsplit(':')
                        .next()?
                        .parse()
                        .ok()?;
                    Some((
                        f[0].to_owned(),
                        port,
                        f.get(2)?.to_string(),
                        f.get(3)?.to_string(),
                        f.get(8..).map(|s| s.join(" ")).unwrap_or_default(),
                    ))
                })
                .collect();
            if !rows.is_empty() {
                return rows;
            }
        }
        panic!("no live cluster node answers CLUSTER NODES");
    }

    fn primaries_with_replicas(&self) -> usize {
        let table = self.table();
        table
            .iter()
            .filter(|(_, _, flags, _, _)| flags.contains("master") && !flags.contains("fail"))
            .filter(|(id, ..)| {
                table.iter().any(|(_, _, flags, master, _)| {
                    master == id && flags.contains("slave") && !flags.contains("fail")
                })
            })
            .count()
    }

    /// `redis+cluster://:PASSWORD@seed1,seed2` (two seeds; with `query` if not empty).
    pub fn url(&self, query: &str) -> String {
        let ports = self.ports();
        let mut url = format!(
            "redis+cluster://:{PASSWORD}@127.0.0.1:{},127.0.0.1:{}",
            ports[0], ports[1]
        );
        if !query.is_empty() {
            url.push('?');
            url.push_str(query);
        }
        url
    }

    /// The port of the primary that owns `key`'s slot, and of its replica.
    pub fn owner_of(&self, key: &str) -> (u16, u16) {
        self.try_owner_of(key)
            .and_then(|(owner, replica)| Some((owner, replica?)))
            .unwrap_or_else(|| {
                panic!(
                    "no healthy primary with a replica owns {key}: {:?}",
                    self.table()
                )
            })
    }

    /// [`Self::owner_of`] while the cluster may be changing: `None` when no healthy primary
    /// owns the slot now.
    fn try_owner_of(&self, key: &str) -> Option<(u16, Option<u16>)> {
        let any = *self.live_ports().first()?;
        let slot: u16 = cli(any, Some(PASSWORD), &["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .ok()?;
        let table = self.table();
        let (id, port, ..) = table.iter().find(|(_, _, flags, _, slots)| {
            flags.contains("master")
                && !flags.contains("fail")
                && slots.split_whitespace().any(|range| {
                    let (a, b) = range.split_once('-').unwrap_or((range, range));
                    matches!((a.parse::<u16>(), b.parse::<u16>()), (Ok(a), Ok(b)) if a <= slot && slot <= b)
                })
        })?;
        let replica = table
            .iter()
            .find(|(_, _, flags, master, _)| {
                master == id && flags.contains("slave") && !flags.contains("fail")
            })
            .map(|(_, p, ..)| *p);
        Some((*port, replica))
    }

    /// `CLUSTER FAILOVER` on the replica of `key`'s owner; waits until it is the primary.
    pub fn failover(&self, key: &str) -> Duration {
        let (_, replica) = self.owner_of(key);
        let started = Instant::now();
        let answer = cli(replica, Some(PASSWORD), &["CLUSTER", "FAILOVER"]);
        assert!(answer.contains("OK"), "CLUSTER FAILOVER: {answer}");
        until("the replica to take over the slot", || {
            self.try_owner_of(key).map(|o| o.0) == Some(replica)
        });
        started.elapsed()
    }

    /// `kill -9` of the primary that owns `key`'s slot; waits until its replica is promoted
    /// and the cluster is ok again.
    pub fn kill_owner(&self, key: &str) -> Duration {
        let (owner, replica) = self.owner_of(key);
        let started = Instant::now();
        {
            let mut nodes = self.nodes.lock().unwrap();
            let node = nodes.iter_mut().find(|n| n.port == owner).expect("ours");
            node.kill();
        }
        until("the replica to be promoted", || {
            self.live_ports()
                .iter()
                .all(|&p| cli(p, Some(PASSWORD), &["CLUSTER", "INFO"]).contains("cluster_state:ok"))
                && self.try_owner_of(key).map(|o| o.0) == Some(replica)
        });
        started.elapsed()
    }
}
