//! Replica acknowledgement (`?wait=N`) on a real primary and replica: an acquire that N replicas
//! did not acknowledge is undone and the run fails 69; acknowledged acquires and renewals hold
//! a lease as usual; renewals that stop being acknowledged stop the job before the deadline.

mod support {
    pub mod certs;
    pub mod env;
    pub mod net;
    pub mod process;
    pub mod programs;
    pub mod redis_server;
}

use std::time::Duration;

use support::env::TestEnv;
use support::redis_server::RedisServer;

/// A primary and a replica of it, in sync.
fn pair() -> (RedisServer, RedisServer) {
    let primary = RedisServer::start();
    let replica = RedisServer::start();
    let answer = replica.command(&["REPLICAOF", "127.0.0.1", &primary.port.to_string()]);
    assert!(answer.contains("OK"), "REPLICAOF: {answer}");
    support::env::wait_for("the replica in sync", Duration::from_secs(20), || {
        primary
            .command(&["INFO", "replication"])
            .contains("state=online")
    });
    (primary, replica)
}

#[test]
fn an_unacknowledged_acquire_is_undone_and_fails_69() {
    let server = RedisServer::start();
    let env = TestEnv::with_backend(&format!("{}?wait=1&wait_timeout=100ms", server.url()));
    let lock = env.lock("unacked");
    let out = env.run(["run", "--lock", &lock, "--", "touch", "ran"]);
    out.assert_code(69).assert_no_panic();
    let line = out.one_error_line();
    assert!(
        line.contains("acknowledged by 0 of the 1 replicas"),
        "the line says why: {line}"
    );
    assert!(!env.file("ran").exists(), "the job must not run");
    assert!(
        server
            .command(&["EXISTS", &format!("elect:{{{lock}}}")])
            .contains(":0"),
        "the unacknowledged lease is deleted at once"
    );
}

#[test]
fn acknowledged_acquires_and_renewals_hold_the_lease() {
    let (primary, _replica) = pair();
    let env = TestEnv::with_backend(&format!("{}?wait=1", primary.url()));
    let lock = env.lock("acked");
    // Spans several renewals (every 2s / 3).
    env.run([
        "run", "--lock", &lock, "--ttl", "2s", "--grace", "500ms", "--", "sleep", "2.5",
    ])
    .assert_code(0);
}

#[test]
fn unacknowledged_renewals_stop_the_job() {
    let (primary, replica) = pair();
    let env = TestEnv::with_backend(&format!("{}?wait=1&wait_timeout=200ms", primary.url()));
    let lock = env.lock("renew-unacked");
    let mut holder = env.spawn([
        "run",
        "--lock",
        &lock,
        "--ttl",
        "3s",
        "--grace",
        "500ms",
        "--",
        "sh",
        "-c",
        "touch started; sleep 30",
    ]);
    env.wait_for_file("started", Duration::from_secs(10));
    replica.stop();
    let out = holder.wait_timeout(Duration::from_secs(10));
    replica.resume();
    out.assert_code(76).assert_no_panic();
    assert!(
        out.stderr.contains("acknowledged by 0 of the 1 replicas"),
        "the renewals failed for want of acknowledgement: {out}"
    );
}

/// Bad Sentinel, Cluster and acknowledgement URLs: one line on stderr, exit 2 (usage), no secret.
#[test]
fn bad_topology_urls_are_usage_errors() {
    for url in [
        "redis+sentinel://127.0.0.1:1",
        "redis+sentinel://127.0.0.1:1/main/x?sentinel_password=hunter2",
        "redis+cluster://:hunter2@127.0.0.1:1/3",
        "redis://127.0.0.1:1?wait=0",
        "redis://127.0.0.1:1?wait=1&wait_timeout=9s",
        "redis+cluster://127.0.0.1:1?sentinel_user=x",
        "redis+sentinell://127.0.0.1:1/main",
    ] {
        let env = TestEnv::with_backend(url);
        let out = env.run(["run", "--lock", "x", "--", "true"]);
        out.assert_code(2).assert_no_panic();
        let line = out.one_error_line();
        assert!(
            !line.contains("hunter2"),
            "{url}: the secret leaked: {line}"
        );
    }
}
