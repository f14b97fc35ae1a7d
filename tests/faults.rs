//! The fault-injection suite: contenders loop on one lock while faults are injected, and a
//! checker judges every run (see `tests/support/fault_env/` for the invariants and
//! `tests/support/witness.rs` for how job lifetimes are observed).
//!
//! Each scenario × backend is its own test, with its own server, so that they run in parallel.
//! The short form (the default) injects faults for a few seconds per test; `scripts/faults.sh
//! --soak 10m` sets `ELECT_FAULTS_SECS` for a long form and prints one table for the whole run.

mod support {
    pub mod certs;
    pub mod fault_env;
    pub mod freezer;
    pub mod net;
    pub mod netns;
    pub mod postgres_server;
    pub mod process;
    pub mod programs;
    pub mod proxy;
    pub mod witness;
    pub mod zk_server;
}

use std::time::Duration;

use support::fault_env::{run, BackendKind, Fault, Setup};
use support::{
    fault_env, freezer, net, netns, postgres_server, process, programs, proxy, witness, zk_server,
};

macro_rules! on_backends {
    ($name:ident, [$($backend:ident),*], $setup:expr) => {
        mod $name {
            use super::*;
            $(
                #[test]
                #[allow(non_snake_case)]
                fn $backend() {
                    let kind = BackendKind::$backend;
                    let make: fn(BackendKind) -> Setup = $setup;
                    run(make(kind));
                }
            )*
        }
    };
}

// 1. kill -9 of the holding elect.
on_backends!(kill_holder, [File, Redis, Postgres, Etcd, Zk], |k| {
    Setup::new("kill-9-holder", k, &[Fault::KillHolder])
});

// 2. kill -STOP of the holding elect for longer than the ttl; a job longer than the ttl.
on_backends!(stop_holder, [File, Redis, Postgres, Etcd, Zk], |k| {
    Setup::new("stop-holder", k, &[Fault::StopHolder]).work(Duration::from_secs(3))
});

// 3. kill -STOP of the server.
on_backends!(stop_server, [Redis, Postgres, Etcd, Zk], |k| Setup::new(
    "stop-server",
    k,
    &[Fault::StopServer]
)
.work(Duration::from_secs(2)));

// 4. kill -9 of the server and a restart on the same data.
on_backends!(kill_server, [Redis, Postgres, Etcd, Zk], |k| Setup::new(
    "kill-9-server",
    k,
    &[Fault::RestartServer]
));

// 4b. A clean restart of the server mid-lease (PostgreSQL's fast shutdown ends every session).
on_backends!(restart_server, [Redis, Postgres, Etcd], |k| Setup::new(
    "restart-server",
    k,
    &[Fault::RestartServerClean]
)
.work(Duration::from_secs(2))
.duration(Duration::from_secs(3)));

// 5. The proxy: blackhole both ways, replies only, latency, resets.
on_backends!(proxy_blackhole, [Redis, Postgres, Etcd, Zk], |k| {
    Setup::new("proxy-blackhole", k, &[Fault::Blackhole]).work(Duration::from_secs(2))
});
on_backends!(proxy_drop_replies, [Redis, Postgres, Etcd, Zk], |k| {
    Setup::new("proxy-drop-replies", k, &[Fault::DropReplies]).work(Duration::from_secs(2))
});
on_backends!(proxy_latency, [Redis, Postgres, Etcd, Zk], |k| Setup::new(
    "proxy-latency",
    k,
    &[Fault::Latency]
)
.work(Duration::from_secs(2)));
on_backends!(proxy_reset, [Redis, Postgres, Etcd, Zk], |k| Setup::new(
    "proxy-reset",
    k,
    &[Fault::Reset]
));

// The soak's regression case: with this seed, 110 s of resets once left two etcd waiters
// starved for 90 s (each reset ended their wait and sent them to the back of the line). A hang
// shows only past the harness's 90 s run limit, which the short form never reaches.
on_backends!(proxy_reset_long, [Etcd], |k| Setup::new(
    "proxy-reset-110s",
    k,
    &[Fault::Reset]
)
.seed(1795988218854354085)
.duration(Duration::from_secs(110)));

// 7. kill -9 of elect alone: its watchdog has the lease released (src/handoff.rs), and leaves
// it to the ttl when the server cannot be reached, or when it was lost and taken meanwhile.
on_backends!(handoff, [Redis, Postgres, Etcd], |k| Setup::new(
    "kill-9-elect-handoff",
    k,
    &[
        Fault::HandOff,
        Fault::HandOffUnreachable,
        Fault::StopThenKill
    ]
)
.work(Duration::from_secs(3)));

// 6. A job that ignores SIGTERM, stopped by each fault that stops a job.
on_backends!(ignore_term, [File, Redis, Postgres, Etcd], |k| {
    let mut faults = vec![Fault::KillHolder, Fault::StopHolder];
    if k != BackendKind::File {
        faults.push(Fault::Blackhole);
    }
    Setup::new("job-ignores-sigterm", k, &faults)
        .mode("ignore-term")
        .work(Duration::from_secs(3))
});

// 7. A job with children and grandchildren, one of which calls setsid.
on_backends!(forks, [File, Redis, Postgres, Etcd], |k| Setup::new(
    "job-forks-setsid",
    k,
    &[Fault::KillHolder, Fault::StopHolder]
)
.mode("forks")
.work(Duration::from_millis(1500)));

// 8. The lock file deleted or replaced (file backend).
on_backends!(lock_file_deleted, [File], |k| Setup::new(
    "lock-file-deleted",
    k,
    &[Fault::DeleteLockFile]
)
.work(Duration::from_secs(2)));
on_backends!(lock_file_replaced, [File], |k| Setup::new(
    "lock-file-replaced",
    k,
    &[Fault::ReplaceLockFile]
)
.work(Duration::from_secs(2)));

// 9. Clock-rate skew of 1% both ways (libfaketime), within the drift margin.
on_backends!(clock_skew, [File, Redis, Postgres, Etcd], |k| Setup::new(
    "clock-skew-1pct",
    k,
    &[Fault::KillHolder]
)
.skew());

// 10. pg_terminate_backend of elect's sessions.
on_backends!(pg_terminate, [Postgres], |k| Setup::new(
    "pg-terminate-backend",
    k,
    &[Fault::TerminateBackend]
)
.work(Duration::from_millis(1500)));

// 12. elect as the job's second guard: the watchdog killed; the watchdog stopped and then the
// lease lost; elect and its watchdog killed together (`pkill -9 elect`). The job leaves a
// background process behind (`forks`), which must not run beside a newcomer's job.
on_backends!(kill_watchdog, [File, Redis, Postgres, Etcd], |k| {
    Setup::new("kill-9-watchdog", k, &[Fault::KillWatchdog])
        .mode("forks")
        .work(Duration::from_millis(1500))
        .daemon(Duration::from_secs(3))
        .duration(Duration::from_secs(4))
});
on_backends!(stop_watchdog, [File, Redis, Postgres, Etcd], |k| {
    Setup::new("stop-watchdog", k, &[Fault::StopWatchdog])
        .mode("forks")
        .work(Duration::from_secs(3))
        .daemon(Duration::from_secs(3))
        .duration(Duration::from_secs(4))
});
on_backends!(kill_both, [File], |k| Setup::new(
    "kill-9-both",
    k,
    &[Fault::KillBoth]
)
.mode("forks")
.work(Duration::from_millis(1500))
.daemon(Duration::from_secs(3))
.duration(Duration::from_secs(4)));

// 13. A frozen host: the holder's elect, watchdog and job frozen together by the cgroup
// freezer past the ttl while another contender takes over, then thawed. The job works longer
// than the freeze, so that it is still running at the thaw and writes to the fenced register.
on_backends!(freeze_host, [Redis, Postgres, Etcd], |k| Setup::new(
    "freeze-host",
    k,
    &[Fault::FreezeHost]
)
.work(Duration::from_secs(4))
.duration(Duration::from_secs(3)));

// 14. Real partitions: each contender a host of its own (a network namespace on a veth pair),
// the holder's host cut off by nftables both ways, its replies only, and until a takeover.
on_backends!(partition, [Redis, Postgres, Etcd], |k| Setup::new(
    "netns-partition",
    k,
    &[Fault::Partition]
)
.work(Duration::from_secs(2))
.duration(Duration::from_secs(3)));
on_backends!(partition_replies, [Redis, Postgres, Etcd], |k| Setup::new(
    "netns-drop-replies",
    k,
    &[Fault::PartitionReplies]
)
.work(Duration::from_secs(2))
.duration(Duration::from_secs(3)));
on_backends!(partition_heals, [Redis, Postgres, Etcd], |k| Setup::new(
    "netns-heals",
    k,
    &[Fault::PartitionHeals]
)
.work(Duration::from_secs(4))
.duration(Duration::from_secs(3)));

// 15. etcd with three members, each on a host of its own, while contenders loop: kill -9 of the
// leader (restarted on its data), the leader cut off from the other two members, and a rolling
// restart of every member.
on_backends!(kill_leader, [EtcdCluster], |k| Setup::new(
    "etcd-kill-9-leader",
    k,
    &[Fault::KillLeader]
)
.work(Duration::from_secs(2))
.duration(Duration::from_secs(3)));
on_backends!(partition_leader, [EtcdCluster], |k| Setup::new(
    "etcd-partition-leader",
    k,
    &[Fault::PartitionLeader]
)
.work(Duration::from_secs(2))
.duration(Duration::from_secs(3)));
on_backends!(rolling_restart, [EtcdCluster], |k| Setup::new(
    "etcd-rolling-restart",
    k,
    &[Fault::RollingRestart]
)
.work(Duration::from_secs(2))
.duration(Duration::from_secs(3)));

// 16. Volume: short jobs handed over as fast as four contenders can, with a kill -9 of the
// holder every few seconds; the soak gives these tests six shares of its time (by the name
// `churn`, in scripts/faults.sh), and most of its handovers come from here.
on_backends!(churn, [File, Redis, Postgres, Etcd], |k| Setup::new(
    "handover-churn",
    k,
    &[Fault::KillHolder]
)
.work(Duration::from_millis(100))
.contenders(4)
.pause(Duration::from_secs(5))
.duration(Duration::from_secs(3))
.soak_shares(6));
// The same three with the job in a PID namespace (`--pid-namespace`): elect and its watchdog
// killed together is then covered on every backend, the kernel killing the job's processes.
on_backends!(
    kill_both_pid_namespace,
    [File, Redis, Postgres, Etcd],
    |k| {
        Setup::new("kill-9-both-pid-namespace", k, &[Fault::KillBoth])
            .mode("forks")
            .work(Duration::from_millis(1500))
            .daemon(Duration::from_secs(3))
            .duration(Duration::from_secs(4))
            .pid_namespace()
    }
);
on_backends!(kill_watchdog_pid_namespace, [Redis], |k| {
    Setup::new("kill-9-watchdog-pid-namespace", k, &[Fault::KillWatchdog])
        .mode("forks")
        .work(Duration::from_millis(1500))
        .daemon(Duration::from_secs(3))
        .duration(Duration::from_secs(4))
        .pid_namespace()
});
on_backends!(stop_watchdog_pid_namespace, [Redis], |k| {
    Setup::new("stop-watchdog-pid-namespace", k, &[Fault::StopWatchdog])
        .mode("forks")
        .work(Duration::from_secs(3))
        .daemon(Duration::from_secs(3))
        .duration(Duration::from_secs(4))
        .pid_namespace()
});

// Every applicable fault, at random.
on_backends!(random_mix, [File, Redis, Postgres, Etcd], |k| Setup::new(
    "random-mix",
    k,
    &Fault::all_for(k)
)
.random()
.duration(Duration::from_secs(12)));

// 11. Ctrl-Z and fg at a terminal (tmux), for longer than the ttl.
mod ctrl_z {
    use super::*;

    #[test]
    #[allow(non_snake_case)]
    fn File() {
        fault_env::ctrl_z(BackendKind::File);
    }

    #[test]
    #[allow(non_snake_case)]
    fn Redis() {
        fault_env::ctrl_z(BackendKind::Redis);
    }

    #[test]
    #[allow(non_snake_case)]
    fn Postgres() {
        fault_env::ctrl_z(BackendKind::Postgres);
    }

    #[test]
    #[allow(non_snake_case)]
    fn Etcd() {
        fault_env::ctrl_z(BackendKind::Etcd);
    }
}

/// The checker itself: two jobs started at once without elect must be caught overlapping, by the
/// witness and by the flock probe; with the same token, their interleaved writes to the fenced
/// register are stale writes accepted; a lower token's writes are refused.
#[test]
fn checker_sees_an_overlap_without_elect() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let job = dir.path().join("job.pl");
    std::fs::write(&job, witness::JOB).expect("write job");
    let w = witness::Witness::start(&dir.path().join("w.sock"));
    let start_with = |run: u64, token: &str| {
        std::process::Command::new("perl")
            .arg(&job)
            .env("FAULT_WITNESS", w.path())
            .env("FAULT_PROBE", dir.path().join("probe"))
            .env("FAULT_RUN", run.to_string())
            .env("FAULT_WORK_MS", "600")
            .env("ELECT_FENCING_TOKEN", token)
            .spawn()
            .expect("start perl")
    };
    let start = |run: u64| start_with(run, "7");
    let mut a = start(1);
    std::thread::sleep(Duration::from_millis(200));
    let mut b = start(2);
    assert_eq!(a.wait().unwrap().code(), Some(fault_env::JOB_CODE));
    assert_eq!(b.wait().unwrap().code(), Some(fault_env::JOB_CODE));
    w.catch_up();
    let record = w.snapshot();
    assert_eq!(record.lives.len(), 2, "{record:?}");
    assert_eq!(record.overlaps, vec![(0, 1)], "{record:?}");
    assert!(record.lives[1].busy, "the probe must see the overlap too");
    assert!(record.lives.iter().all(|l| l.done && l.close.is_some()));
    let (counted, stale) = fault_env::fenced(&record);
    assert!(counted.stale > 0 && !stale.is_empty(), "{counted:?}");
    assert_eq!(counted.refused, 0, "{counted:?}");

    // A lower token after a higher one: every write of the second job is refused.
    let mut c = start_with(3, "9");
    // The higher token must have written before the lower one starts (perl starts slowly on a
    // loaded machine).
    let started = std::time::Instant::now();
    loop {
        w.catch_up();
        let record = w.snapshot();
        let by_nine = |life: usize| record.lives[life].token == Some(9);
        if record.writes.iter().any(|w| by_nine(w.life)) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the job with token 9 never wrote"
        );
    }
    let mut d = start_with(4, "8");
    assert_eq!(c.wait().unwrap().code(), Some(fault_env::JOB_CODE));
    assert_eq!(d.wait().unwrap().code(), Some(fault_env::JOB_CODE));
    w.catch_up();
    let record = w.snapshot();
    let lower = record
        .lives
        .iter()
        .position(|l| l.token == Some(8))
        .unwrap();
    let writes: Vec<_> = record.writes.iter().filter(|w| w.life == lower).collect();
    assert!(
        !writes.is_empty() && writes.iter().all(|w| !w.accepted),
        "{writes:?}"
    );
}
