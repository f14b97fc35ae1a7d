//! Contenders as hosts of their own: each in a network namespace joined to the server's host
//! (for the partitions), and each in a freezer cgroup (for a frozen host), when the scenario's
//! faults need them. Otherwise every contender runs in the harness's namespace and cgroup.

use std::process::Command;

use super::server::Server;
use super::setup::{Fault, Setup};
use crate::freezer::Freezer;
use crate::netns::{Host, Network};

/// Where each contender's runs live.
pub struct Hosts {
    network: Option<Network>,
    /// How elect reaches the backend from inside a host: `ELECT_BACKEND`'s value.
    backend: Option<String>,
    freezers: Vec<Freezer>,
}

impl Hosts {
    /// No hosts: every contender runs beside the harness.
    pub fn none() -> Self {
        Self {
            network: None,
            backend: None,
            freezers: Vec::new(),
        }
    }

    /// The hosts `setup`'s faults need, one per contender.
    pub fn start(setup: &Setup, server: &Server) -> Self {
        let mut hosts = Self::none();
        if setup.faults.iter().any(|f| f.needs_network()) {
            let mut network = Network::create(setup.contenders);
            let addr = network.expose(server.port());
            hosts.backend = Some(server.url_at(addr));
            hosts.network = Some(network);
        }
        if setup.faults.contains(&Fault::FreezeHost) {
            hosts.freezers = (0..setup.contenders).map(|_| Freezer::create()).collect();
        }
        hosts
    }

    /// Puts a run of contender `index` on its host: its namespace and its cgroup.
    pub fn enter(&self, index: usize, cmd: &mut Command) {
        if let Some(host) = self.host(index) {
            host.enter(cmd);
        }
        if let Some(freezer) = self.freezers.get(index) {
            freezer.enter(cmd);
        }
    }

    /// `ELECT_BACKEND` for a run on a host, when the hosts have a network of their own.
    pub fn backend(&self) -> Option<&str> {
        self.backend.as_deref()
    }

    pub fn host(&self, index: usize) -> Option<&Host> {
        self.network.as_ref().and_then(|n| n.hosts.get(index))
    }

    pub fn freezer(&self, index: usize) -> Option<&Freezer> {
        self.freezers.get(index)
    }
}
