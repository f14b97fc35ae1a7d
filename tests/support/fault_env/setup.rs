//! What a scenario is: its backend, its faults, and the shape of its contention.
//!
//! A new backend kind is a variant of [`BackendKind`] and an arm in `server.rs`; a new fault is a
//! variant of [`Fault`] (and [`Fault::all_for`] if the random mix should draw it), its action in
//! `inject.rs`, and a function in `check.rs` if it has a bound of its own.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    File,
    Redis,
    Postgres,
    Etcd,
    /// etcd with three members, each on a host of its own.
    EtcdCluster,
    Zk,
}

impl BackendKind {
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::File => "file",
            BackendKind::Redis => "redis",
            BackendKind::Postgres => "postgres",
            BackendKind::Etcd => "etcd",
            BackendKind::EtcdCluster => "etcd-3",
            BackendKind::Zk => "zookeeper",
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
    /// A clean stop of the server (SIGTERM, PostgreSQL's fast shutdown), then a restart.
    RestartServerClean,
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
    /// The holder's whole host (elect, its watchdog, the job and its children) frozen by the
    /// cgroup freezer for ttl + 1 s, then thawed.
    FreezeHost,
    /// The holder's host cut off from the server's both ways (nftables in its namespace) for
    /// ttl + 1 s.
    Partition,
    /// The holder's host still reaches the server, but the replies are dropped, for ttl + 1 s.
    PartitionReplies,
    /// The holder's host cut off both ways until another host's job has started, then healed.
    PartitionHeals,
    /// kill -9 of the etcd cluster's leader; the member started again on its data after ttl + 1 s.
    KillLeader,
    /// The etcd cluster's leader cut off from the other two members for ttl + 2 s.
    PartitionLeader,
    /// Each etcd member in turn stopped (SIGTERM), started again and waited for.
    RollingRestart,
    /// kill -9 of the holding elect alone, the server reachable: its watchdog stops the job and
    /// has the lease released (src/handoff.rs), so the next job starts within grace + 1 s.
    HandOff,
    /// kill -9 of the holding elect alone while the proxy holds all traffic for 3 s (longer than
    /// the release's bound): the lease is left to its ttl.
    HandOffUnreachable,
    /// kill -STOP of the holding elect for ttl + 1 s (its lease expires, another holder takes
    /// it), then kill -9: the release that its watchdog then starts must not touch the new
    /// holder's lease.
    StopThenKill,
}

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::KillHolder => "kill-9-holder",
            Fault::StopHolder => "stop-holder",
            Fault::StopServer => "stop-server",
            Fault::RestartServer => "kill-9-server",
            Fault::RestartServerClean => "restart-server",
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
            Fault::FreezeHost => "freeze-host",
            Fault::Partition => "partition",
            Fault::PartitionReplies => "partition-replies",
            Fault::PartitionHeals => "partition-heals",
            Fault::KillLeader => "kill-9-leader",
            Fault::PartitionLeader => "partition-leader",
            Fault::RollingRestart => "rolling-restart",
            Fault::HandOff => "kill-9-elect-handoff",
            Fault::HandOffUnreachable => "kill-9-elect-unreachable",
            Fault::StopThenKill => "stop-then-kill-9-holder",
        }
    }

    /// How the fault is made, for the table.
    pub fn mechanism(self) -> &'static str {
        match self {
            Fault::Blackhole | Fault::DropReplies | Fault::Latency | Fault::Reset => "proxy",
            Fault::Partition
            | Fault::PartitionReplies
            | Fault::PartitionHeals
            | Fault::PartitionLeader => "netns+nft",
            Fault::FreezeHost => "cgroup freezer",
            Fault::DeleteLockFile | Fault::ReplaceLockFile => "file system",
            Fault::TerminateBackend => "sql",
            Fault::StopWatchdog | Fault::HandOffUnreachable => "signal+proxy",
            Fault::KillHolder
            | Fault::HandOff
            | Fault::StopThenKill
            | Fault::StopHolder
            | Fault::StopServer
            | Fault::RestartServer
            | Fault::RestartServerClean
            | Fault::KillWatchdog
            | Fault::KillBoth
            | Fault::KillLeader
            | Fault::RollingRestart => "signal",
        }
    }

    /// Whether the contenders must run as hosts of their own, in network namespaces.
    pub fn needs_network(self) -> bool {
        matches!(
            self,
            Fault::Partition | Fault::PartitionReplies | Fault::PartitionHeals
        )
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
    /// The least time between two faults (a random 0.3 to 1.5 s is added).
    pub pause: Duration,
    /// How many shares of the soak's time the test gets (`scripts/faults.sh` gives the `churn`
    /// tests 6, by name).
    pub soak_shares: u32,
    /// Run every elect with `--pid-namespace`.
    pub pid_namespace: bool,
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
            pause: Duration::ZERO,
            soak_shares: 1,
            pid_namespace: false,
        }
    }

    pub fn pid_namespace(mut self) -> Self {
        self.pid_namespace = true;
        self
    }

    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    pub fn pause(mut self, d: Duration) -> Self {
        self.pause = d;
        self
    }

    pub fn soak_shares(mut self, n: u32) -> Self {
        self.soak_shares = n;
        self
    }

    pub fn contenders(mut self, n: usize) -> Self {
        self.contenders = n;
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

    /// The mechanisms of the setup's faults, for the table: one, or `mixed`.
    pub fn mechanism(&self) -> String {
        let mut all: Vec<&str> = self.faults.iter().map(|f| f.mechanism()).collect();
        all.sort_unstable();
        all.dedup();
        match all.as_slice() {
            [] => "terminal".to_owned(),
            [one] => (*one).to_owned(),
            _ => "mixed".to_owned(),
        }
    }

    /// The soak form: `ELECT_FAULTS_SECS` seconds of faults per share when set.
    pub(super) fn effective_duration(&self) -> Duration {
        match std::env::var("ELECT_FAULTS_SECS")
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
        {
            Some(secs) if secs > 0 => Duration::from_secs(secs * u64::from(self.soak_shares)),
            _ => self.duration,
        }
    }
}
