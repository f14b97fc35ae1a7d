//! etcd with three members, each on a host of its own (a network namespace on the test's
//! bridge), so that one member can be cut off from the others while the clients still reach it.
//!
//! elect runs in the harness's namespace and is given every member's client address. The faults:
//! kill -9 of the leader and its restart on the same data, the leader cut off from the other two
//! members (not from the clients), and a rolling restart (SIGTERM, start again, wait for health,
//! one member after the other).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::server::{etcd_ready, Proc};
use crate::netns::{Cut, Network};
use crate::programs;

const CLIENT_PORT: u16 = 2379;
const PEER_PORT: u16 = 2380;

pub(super) struct EtcdCluster {
    members: Vec<Mutex<Proc>>,
    /// Last: the members' namespaces outlive the members.
    network: Network,
}

impl EtcdCluster {
    pub(super) fn start() -> Self {
        let network = Network::create(3);
        let etcd = programs::require("etcd", "install the etcd-server package");
        let peer_url = |i: usize| format!("http://{}:{PEER_PORT}", network.hosts[i].address);
        let initial: Vec<String> = (0..3).map(|i| format!("m{i}={}", peer_url(i))).collect();
        let mut members: Vec<Proc> = (0..3)
            .map(|i| {
                let host = &network.hosts[i];
                let data = tempfile::tempdir().expect("etcd member dir");
                let client = format!("http://{}:{CLIENT_PORT}", host.address);
                let args = [
                    "--name",
                    &format!("m{i}"),
                    "--data-dir",
                    &data.path().join("data").display().to_string(),
                    "--listen-client-urls",
                    &client,
                    "--advertise-client-urls",
                    &client,
                    "--listen-peer-urls",
                    &peer_url(i),
                    "--initial-advertise-peer-urls",
                    &peer_url(i),
                    "--initial-cluster",
                    &initial.join(","),
                    "--initial-cluster-state",
                    "new",
                    // etcd 3.4's default logger is nil and panics on a slow read-index warning
                    // (etcd-io/etcd#14402): a loaded host made a member crash.
                    "--logger",
                    "zap",
                    "--log-level",
                    "error",
                ]
                .map(str::to_owned)
                .to_vec();
                Proc {
                    program: etcd.clone(),
                    args,
                    child: None,
                    dir: data,
                    ip: host.address,
                    port: CLIENT_PORT,
                    ready: etcd_ready,
                    starts: 0,
                    host: Some(host.try_clone()),
                }
            })
            .collect();
        // A member is healthy once there is a quorum: start all, then wait.
        for m in &mut members {
            m.spawn();
        }
        for m in &mut members {
            m.wait_ready();
        }
        Self {
            members: members.into_iter().map(Mutex::new).collect(),
            network,
        }
    }

    /// `ELECT_BACKEND`: every member's client address.
    pub(super) fn url(&self) -> String {
        let all: Vec<String> = self
            .members
            .iter()
            .map(|m| m.lock().unwrap().addr().to_string())
            .collect();
        format!("etcd://{}", all.join(","))
    }

    /// The member that is the leader now, as the members say (the first that answers).
    pub(super) fn leader(&self) -> Option<usize> {
        let statuses: Vec<Option<(String, String)>> = self
            .members
            .iter()
            .map(|m| status(m.lock().unwrap().addr()))
            .collect();
        let leader = statuses.iter().flatten().map(|(_, l)| l.clone()).next()?;
        statuses
            .iter()
            .position(|s| s.as_ref().is_some_and(|(me, _)| *me == leader))
    }

    fn wait_leader(&self, timeout: Duration) -> Option<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.leader() {
                return Some(l);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// kill -9 of the leader; after `down`, the same member again on its data.
    pub(super) fn kill_leader(&self, down: Duration) {
        let Some(l) = self.wait_leader(Duration::from_secs(10)) else {
            return;
        };
        let mut m = self.members[l].lock().unwrap();
        m.kill();
        std::thread::sleep(down);
        m.start();
    }

    /// The leader cut off from the other two members (the clients still reach it) for `how_long`.
    pub(super) fn partition_leader(&self, how_long: Duration) {
        let Some(l) = self.wait_leader(Duration::from_secs(10)) else {
            return;
        };
        let host = &self.network.hosts[l];
        let others: Vec<_> = (0..self.members.len())
            .filter(|&i| i != l)
            .map(|i| self.network.hosts[i].address)
            .collect();
        host.cut_from(&others, Cut::Both);
        std::thread::sleep(how_long);
        host.cut(Cut::None);
    }

    /// Each member in turn: SIGTERM, started again, healthy, then a pause of `pause`.
    pub(super) fn rolling_restart(&self, pause: Duration) {
        for m in &self.members {
            let mut m = m.lock().unwrap();
            m.signal_and_wait("TERM");
            m.start();
            drop(m);
            std::thread::sleep(pause);
        }
    }
}

/// `(member id, leader id)` from a member's `/v3/maintenance/status`.
fn status(addr: SocketAddr) -> Option<(String, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(300)).ok()?;
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let body = "{}";
    let request = format!(
        "POST /v3/maintenance/status HTTP/1.0\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).ok()?;
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let json: serde_json::Value = serde_json::from_str(text.split_once("\r\n\r\n")?.1).ok()?;
    let me = json["header"]["member_id"].as_str()?.to_owned();
    let leader = json["leader"].as_str()?.to_owned();
    (leader != "0").then_some((me, leader))
}
