//! Redis Cluster: three primaries with one replica each, made by `redis-cli --cluster create`
//! once for this file (`tests/support/redis_cluster_set.rs`) and used by one test in steps, since
//! the later steps change the topology and forming it takes seconds:
//! 1. the battery's scenarios that exercise the backend (not those about the job process alone,
//!    which the standalone battery covers), in parallel;
//! 2. `elect status` lists the locks of every primary;
//! 3. a release wakes exactly one of several waiters (the baton with `BLPOP`);
//! 4. `CLUSTER FAILOVER` on the replica of the lock's slot owner under witness-checked
//!    contenders, with `?wait=1`: 0 overlaps, and new runs go on;
//! 5. `kill -9` of the slot owner under contenders, without acknowledgement: overlaps reported.
//!
//! The rounds print one line each for the fault table (`cargo test --test redis_cluster --
//! --nocapture`).

mod support {
    pub mod battery;
    pub mod env;
    pub mod net;
    pub mod process;
    pub mod programs;
    pub mod redis_cluster_set;
    pub mod redis_failover;
    pub mod redis_topology;
    // Only the job lifetimes of the witness, not its fenced register.
    #[allow(dead_code)]
    pub mod witness;
}

use std::time::Duration;

use serde_json::Value;
use support::env::TestEnv;
use support::redis_cluster_set::Cluster;
use support::redis_failover::{backend_scenarios, battery_on, contend};
use support::redis_topology::{cli, PASSWORD};

#[test]
fn cluster_topology() {
    let cluster = Cluster::start();
    let url = cluster.url("");

    battery_on(&url, &backend_scenarios(), 3);

    status_reads_every_primary(&cluster);
    a_release_wakes_one_waiter(&cluster);
    failover_with_acknowledgement(&cluster);
    kill_of_the_slot_owner(&cluster);
}

/// Locks whose slots lie on different primaries all show in `elect status`.
fn status_reads_every_primary(cluster: &Cluster) {
    let env = TestEnv::with_backend(&cluster.url(""));
    let locks: Vec<String> = (0..9).map(|i| env.lock(&format!("spread{i}"))).collect();
    for lock in &locks {
        env.run(["run", "--lock", lock, "--", "true"])
            .assert_code(0);
    }
    let owners: std::collections::BTreeSet<u16> = locks
        .iter()
        .map(|l| cluster.owner_of(&format!("elect:{{{l}}}")).0)
        .collect();
    assert!(
        owners.len() >= 2,
        "the locks should lie on several primaries: {owners:?}"
    );
    let out = env.status(["--json"]);
    // 0 when some lock is held (another scenario's may still be), 3 when none.
    assert!(matches!(out.code(), 0 | 3), "{out}");
    let doc = serde_json::from_str::<Value>(out.stdout.trim()).expect("JSON");
    let listed: Vec<&str> = doc
        .as_array()
        .expect("an array")
        .iter()
        .filter_map(|d| d["lock"].as_str())
        .collect();
    for lock in &locks {
        assert!(listed.contains(&lock.as_str()), "{lock} missing: {out}");
    }
}

/// Four `--wait` runs block on the baton; one release lets exactly one of them run.
fn a_release_wakes_one_waiter(cluster: &Cluster) {
    let env = TestEnv::with_backend(&cluster.url(""));
    let lock = env.lock("baton");
    let (owner, _) = cluster.owner_of(&format!("elect:{{{lock}}}"));
    let blocked = || {
        cli(owner, Some(PASSWORD), &["INFO", "clients"])
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("blocked_clients:")?
                    .parse::<u32>()
                    .ok()
            })
            .unwrap_or(0)
    };
    let before = blocked();
    let mut holder = env.spawn([
        "run",
        "--lock",
        &lock,
        "--ttl",
        "30s",
        "--",
        "sh",
        "-c",
        "touch held; until [ -e go ]; do sleep 0.05; done",
    ]);
    env.wait_for_file("held", Duration::from_secs(10));
    let mut waiters: Vec<_> = (0..4)
        .map(|_| {
            env.spawn([
                "run",
                "--lock",
                &lock,
                "--ttl",
                "30s",
                "--wait",
                "--",
                "sh",
                "-c",
                "echo $ELECT_HOLDER_ID >> woke; sleep 30",
            ])
        })
        .collect();
    support::env::wait_for("four blocked waiters", Duration::from_secs(15), || {
        blocked() >= before + 4
    });
    std::fs::write(env.file("go"), "").expect("touch go");
    holder.wait().assert_code(0);
    env.wait_for_file("woke", Duration::from_secs(5));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(env.lines("woke").len(), 1, "one release, one waiter");
    assert_eq!(blocked(), before + 3, "the other three still block");
    for w in &mut waiters {
        w.signal("TERM");
    }
    for mut w in waiters {
        w.wait();
    }
}

/// `CLUSTER FAILOVER` on the replica of the lock's owner, with `?wait=1`: no overlap, runs go on.
fn failover_with_acknowledgement(cluster: &Cluster) {
    let url = cluster.url("wait=1");
    let env = TestEnv::with_backend(&url);
    let lock = env.lock("cluster-failover");
    let key = format!("elect:{{{lock}}}");
    let round = contend(
        &url,
        &lock,
        3,
        Duration::from_secs(2),
        Duration::from_secs(4),
        || cluster.failover(&key),
    );
    println!("{}", round.summary("Cluster, CLUSTER FAILOVER, wait=1"));
    println!(
        "{}",
        round.fault_row("cluster-failover-wait1", "cluster", true)
    );
    assert!(
        round.unexpected().is_empty(),
        "{:#?}\n{}",
        round.unexpected(),
        round.errors()
    );
    assert!(
        round.record.overlaps.is_empty(),
        "jobs overlapped with acknowledgement on: {}",
        round.summary("")
    );
    assert!(
        round.monotonic(),
        "tokens must grow: {:?}",
        round.record.lives
    );
    assert!(
        round.completed_after_fault() > 0,
        "{}\n{}",
        round.summary(""),
        round.errors()
    );
}

/// `kill -9` of the lock's slot owner, without acknowledgement: the replica is promoted and runs
/// go on there; an overlap is possible (asynchronous replication) and is reported, not hidden.
fn kill_of_the_slot_owner(cluster: &Cluster) {
    let url = cluster.url("");
    let env = TestEnv::with_backend(&url);
    let lock = env.lock("cluster-kill");
    let key = format!("elect:{{{lock}}}");
    let round = contend(
        &url,
        &lock,
        3,
        Duration::from_secs(2),
        Duration::from_secs(5),
        || cluster.kill_owner(&key),
    );
    println!(
        "{}",
        round.summary("Cluster, kill -9 of the slot owner, no wait")
    );
    println!("{}", round.fault_row("kill-slot-owner", "cluster", false));
    assert!(
        round.unexpected().is_empty(),
        "{:#?}\n{}",
        round.unexpected(),
        round.errors()
    );
    assert!(
        round.completed_after_fault() > 0,
        "{}\n{}",
        round.summary(""),
        round.errors()
    );
}
