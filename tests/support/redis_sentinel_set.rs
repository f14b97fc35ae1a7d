//! A real Redis Sentinel set for tests: one primary, two replicas and three sentinels watching
//! it (quorum 2, `down-after-milliseconds` 1000, so a killed primary is replaced within a few
//! seconds), from Debian's `redis-server` and `redis-sentinel`. Killed on drop.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::net;
use super::redis_topology::{cli, node_conf, server_binary, until, Node, PASSWORD};

/// The master name the sentinels watch.
pub const MASTER: &str = "elect-main";

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

/// One primary, two replicas, three sentinels.
pub struct SentinelSet {
    /// Kept for its drop: the nodes' files.
    _dir: tempfile::TempDir,
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
            _dir: dir,
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
