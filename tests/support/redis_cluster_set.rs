//! A real Redis Cluster for tests: three primaries with one replica each, made by `redis-cli
//! --cluster create` from Debian's `redis-server`. Killed on drop.

use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::redis_topology::{cli, node_conf, server_binary, until, Node, PASSWORD};
use super::{net, programs};

/// Three primaries with one replica each.
pub struct Cluster {
    /// Kept for its drop: the nodes' files.
    _dir: tempfile::TempDir,
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
            _dir: dir,
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
