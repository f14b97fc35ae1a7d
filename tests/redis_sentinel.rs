//! Redis under Sentinel: one primary, two replicas, three sentinels, started once for this file
//! (`tests/support/redis_sentinel_set.rs`) and used by one test in steps, since the steps change
//! the topology (failovers) and forming it takes seconds:
//! 1. the battery's scenarios that exercise the backend (not those about the job process alone,
//!    which the standalone battery covers), in parallel;
//! 2. unreachable sentinels are skipped, and none reachable is exit 69 at start;
//! 3. `SENTINEL FAILOVER` under witness-checked contenders, without acknowledgement: new runs
//!    follow the new primary; a holder's lease goes on there; overlaps are reported;
//! 4. a lease whose key is missing on the new primary is lost: exit 76;
//! 5. `kill -9` of the primary under contenders with `?wait=1`: 0 overlaps.
//!
//! The rounds print one line each for the fault table (`cargo test --test redis_sentinel --
//! --nocapture`).

mod support {
    pub mod battery;
    pub mod env;
    pub mod net;
    pub mod process;
    pub mod programs;
    pub mod redis_failover;
    pub mod redis_sentinel_set;
    pub mod redis_topology;
    // Only the job lifetimes of the witness, not its fenced register.
    #[allow(dead_code)]
    pub mod witness;
}

use std::time::Duration;

use support::env::TestEnv;
use support::net;
use support::redis_failover::{backend_scenarios, battery_on, contend};
use support::redis_sentinel_set::{SentinelSet, MASTER};
use support::redis_topology::PASSWORD;

#[test]
fn sentinel_topology() {
    let set = SentinelSet::start();
    let url = set.url("");

    battery_on(&url, &backend_scenarios(), 3);

    unreachable_sentinels(&set);
    failover_under_contenders(&set);
    missing_key_on_the_new_primary_is_lost(&set);
    kill_of_the_primary_with_acknowledgement(&set);
}

/// Sentinels that do not answer are skipped; with none, the run fails 69 at start with one line
/// that names no password.
fn unreachable_sentinels(set: &SentinelSet) {
    let dead = net::free_port();
    let ports = set.sentinel_ports();
    let env = TestEnv::with_backend(&format!(
        "redis+sentinel://:{PASSWORD}@127.0.0.1:{dead},127.0.0.1:{}/{}",
        ports[1], MASTER
    ));
    env.run(["run", "--lock", &env.lock("skip-dead"), "--", "true"])
        .assert_code(0);

    let none = TestEnv::with_backend(&format!(
        "redis+sentinel://:{PASSWORD}@127.0.0.1:{dead}/{}",
        MASTER
    ));
    let out = none.run(["run", "--lock", "x", "--", "true"]);
    out.assert_code(69).assert_no_panic();
    let line = out.one_error_line();
    assert!(!line.contains(PASSWORD), "the password leaked: {line}");
}

/// `SENTINEL FAILOVER` while contenders loop and one holder spans it: the holder's renewals
/// reach the new primary, where its key is, and its job ends normally; new runs go on there.
fn failover_under_contenders(set: &SentinelSet) {
    let url = set.url("");
    let env = TestEnv::with_backend(&url);
    let lock = env.lock("span");
    let mut holder = env.spawn([
        "run", "--lock", &lock, "--ttl", "3s", "--grace", "500ms", "--", "sleep", "7",
    ]);
    let round = contend(
        &url,
        &env.lock("sentinel-failover"),
        3,
        Duration::from_secs(2),
        Duration::from_secs(4),
        || set.failover(),
    );
    println!("{}", round.summary("Sentinel, SENTINEL FAILOVER, no wait"));
    println!(
        "{}",
        round.fault_row("sentinel-failover", "sentinel", false)
    );
    assert!(round.unexpected().is_empty(), "{:#?}", round.unexpected());
    assert!(
        round.completed_after_fault() > 0,
        "no run completed on the new primary: {}",
        round.summary("")
    );
    // Without acknowledgement an overlap is possible (asynchronous replication): reported above,
    // not hidden, and not asserted.
    let out = holder.wait();
    out.assert_code(0);
}

/// The holder's key is gone on the (new) primary: the next renew finds it missing, the job is
/// stopped and elect exits 76.
fn missing_key_on_the_new_primary_is_lost(set: &SentinelSet) {
    let env = TestEnv::with_backend(&set.url(""));
    let lock = env.lock("vanish");
    let mut holder = env.spawn([
        "run", "--lock", &lock, "--ttl", "3s", "--grace", "500ms", "--", "sleep", "20",
    ]);
    support::env::wait_for("the holder's lease key", Duration::from_secs(10), || {
        set.on_primary(&["EXISTS", &format!("elect:{{{lock}}}")])
            .trim()
            == "1"
    });
    set.on_primary(&["DEL", &format!("elect:{{{lock}}}")]);
    let out = holder.wait_timeout(Duration::from_secs(10));
    out.assert_code(76).assert_no_panic();
}

/// `kill -9` of the primary with `?wait=1`: the sentinels promote a replica, contenders go on
/// there, and no two jobs overlap.
fn kill_of_the_primary_with_acknowledgement(set: &SentinelSet) {
    let url = set.url("wait=1");
    let env = TestEnv::with_backend(&url);
    let round = contend(
        &url,
        &env.lock("sentinel-kill"),
        3,
        Duration::from_secs(2),
        Duration::from_secs(4),
        || {
            let promoted = set.kill_primary();
            // With wait=1, runs can succeed again once a replica follows the new primary.
            set.await_replicas(1);
            println!("Sentinel, kill -9 of the primary: a replica promoted after {promoted:?}");
            promoted
        },
    );
    println!(
        "{}",
        round.summary("Sentinel, kill -9 of the primary, wait=1")
    );
    println!(
        "{}",
        round.fault_row("kill-primary-wait1", "sentinel", true)
    );
    assert!(round.unexpected().is_empty(), "{:#?}", round.unexpected());
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
