//! `elect` end to end on the etcd backend: the shared battery of scenarios, then what only etcd
//! has (lease expiry after a crash, `etcdctl lock` on the same queue, the wait queue in status).
//! Every test starts an etcd of its own, so that `status` sees only the test's own locks.

mod support {
    pub mod battery;
    pub mod battery_tests;
    pub mod certs;
    pub mod env;
    pub mod etcd_server;
    pub mod net;
    pub mod process;
    pub mod programs;
    pub mod proxy;
}

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::battery_tests;
use support::env::{until_exists, wait_for, write_pid, TestEnv};
use support::etcd_server::EtcdServer;
use support::{etcd_server, net, proxy};

/// A battery scenario on an etcd of its own, with authentication on (so that the password's
/// redaction is checked too).
fn on_etcd(_test: &str, scenario: fn(&TestEnv)) {
    let server = EtcdServer::with(etcd_server::Options {
        root_password: Some("battery-secret".into()),
        tls: false,
    });
    scenario(&TestEnv::with_backend(&server.url()).private());
}

battery_tests::tests!(
    on_etcd;
    common,
    job_dies_with_elect_and_watchdog_in_a_pid_namespace,
    forced_release_frees_a_dead_holders_lease,
    on_acquired_hook_is_fenced_when_elect_is_stopped,
);

const SHORT: [&str; 4] = ["--ttl", "2s", "--grace", "500ms"];

#[test]
fn three_concurrent_runs_one_runs_the_others_exit_75() {
    let server = EtcdServer::start();
    let env = TestEnv::with_backend(&server.url()).private();
    let lock = env.lock("three");
    let mut runs: Vec<_> = (0..3)
        .map(|i| {
            env.spawn([
                "run",
                "--lock",
                &lock,
                "--",
                "sh",
                "-c",
                &format!("echo {i} >> ran; sleep 1.5"),
            ])
        })
        .collect();
    let mut codes: Vec<i32> = runs.iter_mut().map(|r| r.wait().code()).collect();
    codes.sort();
    assert_eq!(codes, [0, 75, 75]);
    assert_eq!(env.lines("ran").len(), 1, "exactly one job ran");
    // The losers left nothing in the queue, and the winner released: only the run history
    // stays, beside the queue.
    assert_eq!(
        server.keys("elect/"),
        [format!("elect/{lock}.last")],
        "{:?}",
        server.keys("elect/")
    );
}

#[test]
fn a_waiter_takes_over_within_ttl_after_the_holder_is_killed() {
    let server = EtcdServer::start();
    let env = TestEnv::with_backend(&server.url()).private();
    let lock = env.lock("crash");
    let holder_script = format!("{}; {}", write_pid("holder.pid"), until_exists("never"));
    let mut holder = env.spawn(["run", "--lock", &lock].into_iter().chain(SHORT).chain([
        "--",
        "sh",
        "-c",
        &holder_script,
    ]));
    env.read_pid("holder.pid");
    let waiter_script = "date +%s%N > took-over";
    let mut waiter = env.spawn(
        ["run", "--lock", &lock, "--wait", "-v"]
            .into_iter()
            .chain(SHORT)
            .chain(["--", "sh", "-c", waiter_script]),
    );
    // The waiter is queued behind the holder (past its first try, which does not wait).
    waiter.wait_for_stderr("waiting", Duration::from_secs(10));
    wait_for("the waiter to queue", Duration::from_secs(10), || {
        server.keys(&format!("elect/{lock}/")).len() == 2
    });
    let killed = Instant::now();
    holder.signal("KILL");
    let _ = holder.wait();
    env.wait_for_file("took-over", Duration::from_secs(10));
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(3), "takeover took {took:?}");
    waiter.wait().assert_code(0);
}

#[test]
fn etcdctl_lock_and_elect_exclude_each_other() {
    let server = EtcdServer::start();
    let env = TestEnv::with_backend(&server.url()).private();
    let lock = env.lock("interop");
    // etcdctl holds: elect sees the lock held.
    let mut etcdctl = server
        .etcdctl_command(&["lock", &format!("elect/{lock}"), "sleep", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("etcdctl to lock", Duration::from_secs(10), || {
        server.keys(&format!("elect/{lock}/")).len() == 1
    });
    let out = env.run(["run", "--lock", &lock, "--", "true"]);
    out.assert_code(75);
    // ... and waits for it, in turn.
    let out = env.run(["run", "--lock", &lock, "--wait", "--", "true"]);
    out.assert_code(0);
    assert!(etcdctl.wait().unwrap().success());

    // elect holds: etcdctl lock waits until elect's job is done.
    let script = format!("{}; {}", write_pid("job.pid"), until_exists("go"));
    let mut holder = env.spawn(["run", "--lock", &lock, "--", "sh", "-c", &script]);
    env.read_pid("job.pid");
    let mut etcdctl = server
        .etcdctl_command(&["lock", &format!("elect/{lock}"), "echo", "etcdctl ran"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        etcdctl.try_wait().unwrap().is_none(),
        "etcdctl did not wait"
    );
    std::fs::write(env.file("go"), "").unwrap();
    holder.wait().assert_code(0);
    let out = etcdctl.wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("etcdctl ran"));
}

#[test]
fn status_counts_the_waiters() {
    let server = EtcdServer::start();
    let env = TestEnv::with_backend(&server.url()).private();
    let lock = env.lock("queue");
    let script = format!("{}; {}", write_pid("job.pid"), until_exists("go"));
    let mut holder = env.spawn(["run", "--lock", &lock, "--", "sh", "-c", &script]);
    env.read_pid("job.pid");
    // One after the other: a contender first tries without waiting (a key that comes and goes),
    // logs that it waits, then queues.
    let mut waiters = Vec::new();
    for n in 1..=2 {
        let mut waiter = env.spawn(["run", "--lock", &lock, "--wait", "-v", "--", "true"]);
        // Past its first try: from now on its only key is its place in the line.
        waiter.wait_for_stderr("waiting", Duration::from_secs(10));
        waiters.push(waiter);
        wait_for("a waiter to queue", Duration::from_secs(10), || {
            let out = env.status(["--lock", &lock, "--json"]);
            out.assert_code(0);
            let json = serde_json::from_str::<Value>(out.stdout.trim())
                .unwrap_or_else(|e| panic!("{e}: {}", out.stdout));
            assert_eq!(json["state"].as_str(), Some("held"), "{}", out.stdout);
            assert_eq!(
                json["holder"]["pid"].as_u64(),
                Some(u64::from(holder.pid() as u32))
            );
            json["waiters"].as_u64() == Some(n)
        });
    }
    assert_eq!(server.keys(&format!("elect/{lock}/")).len(), 3);
    std::fs::write(env.file("go"), "").unwrap();
    holder.wait().assert_code(0);
    for w in &mut waiters {
        w.wait().assert_code(0);
    }
    env.status(["--lock", &lock]).assert_code(3);
}

#[test]
fn an_unreachable_etcd_exits_69_before_the_job() {
    let port = net::free_port();
    let env = TestEnv::with_backend(&format!("etcd://127.0.0.1:{port}"));
    let out = env.run(["run", "--lock", "x", "--", "touch", "ran"]);
    out.assert_code(69);
    let line = out.one_error_line();
    assert!(line.contains(&format!("127.0.0.1:{port}")), "{line}");
    assert!(!env.file("ran").exists());
}

#[test]
fn a_wrong_password_exits_69_and_is_not_printed() {
    let server = EtcdServer::with(etcd_server::Options {
        root_password: Some("right".into()),
        tls: false,
    });
    let env = TestEnv::with_backend(&format!("etcd://root:wrongpw@{}", server.endpoint()));
    let out = env.run(["run", "--lock", "x", "--", "touch", "ran"]);
    out.assert_code(69);
    let line = out.one_error_line();
    assert!(line.contains("password"), "{line}");
    assert!(!out.stderr.contains("wrongpw"), "{}", out.stderr);
    assert!(!env.file("ran").exists());
    // The password from the environment works.
    let env = TestEnv::with_backend(&format!("etcd://root@{}", server.endpoint()));
    let mut cmd = env.elect();
    cmd.env("ELECT_ETCD_PASSWORD", "right").args([
        "run",
        "--lock",
        "x",
        "--",
        "sh",
        "-c",
        "env > job.env",
    ]);
    env.run_command(cmd).assert_code(0);
    let job_env = std::fs::read_to_string(env.file("job.env")).unwrap();
    assert!(!job_env.contains("right"), "the password reached the job");
}

#[test]
fn a_bounded_wait_that_gives_up_leaves_no_key_behind() {
    let server = EtcdServer::start();
    let env = TestEnv::with_backend(&server.url()).private();
    let lock = env.lock("gives-up");
    let script = format!("{}; {}", write_pid("job.pid"), until_exists("go"));
    let mut holder = env.spawn(["run", "--lock", &lock, "--", "sh", "-c", &script]);
    env.read_pid("job.pid");
    env.run(["run", "--lock", &lock, "--wait=1s", "--", "true"])
        .assert_code(75);
    // Checked right after the exit, well within the ttl: only the holder's key remains, so
    // waiters that come later are not held up by an abandoned one.
    assert_eq!(server.keys(&format!("elect/{lock}/")).len(), 1);
    std::fs::write(env.file("go"), "").unwrap();
    holder.wait().assert_code(0);
}

#[test]
fn a_stopped_etcd_stops_the_job_before_the_lease_can_expire() {
    let server = EtcdServer::start();
    let env = TestEnv::with_backend(&server.url()).private();
    let lock = env.lock("frozen");
    let script = format!("{}; {}", write_pid("job.pid"), until_exists("never"));
    let mut run = env.spawn(
        ["run", "--lock", &lock, "--ttl", "3s", "--grace", "500ms"]
            .into_iter()
            .chain(["--", "sh", "-c", &script]),
    );
    let job = env.read_pid("job.pid");
    server.stop();
    let stopped = Instant::now();
    let out = run.wait_timeout(Duration::from_secs(15));
    let took = stopped.elapsed();
    server.resume();
    out.assert_code(76);
    // The deadline counts from the last renewal, before the stop: within the ttl.
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert!(
        !support::process::is_alive(job),
        "the job outlived the lease"
    );
}

#[test]
fn tls_with_a_client_certificate_from_flags() {
    let server = EtcdServer::with(etcd_server::Options {
        root_password: None,
        tls: true,
    });
    let env = TestEnv::with_backend(&server.url()).private();
    let ca = server.ca_file();
    let cert = server.client_cert();
    let key = server.client_key();
    let out = env.run([
        "run",
        "--lock",
        "tls",
        "--tls-ca",
        ca.to_str().unwrap(),
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--",
        "true",
    ]);
    out.assert_code(0);
    // Without the CA the server is not trusted: 69, one line, before the job.
    let out = env.run([
        "run",
        "--lock",
        "tls",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--",
        "touch",
        "ran",
    ]);
    out.assert_code(69);
    let line = out.one_error_line();
    assert!(line.contains("certificate"), "{line}");
    assert!(!env.file("ran").exists());
}

/// A contender that waits and finds etcd silent at first (a thousand waiters started at once
/// keep it busy past the connect timeout; here a path that resets every connection) keeps
/// trying within its wait instead of exiting 69 at once, and runs once etcd answers; a bounded
/// wait gives up with 69 when its bound passes.
#[test]
fn a_waiter_that_cannot_connect_at_first_tries_again_within_its_wait() {
    let server = EtcdServer::start();
    let proxy = proxy::Proxy::start(server.endpoint().parse().unwrap());
    proxy.set_mode(proxy::Mode::Reset);
    let env = TestEnv::with_backend(&format!("etcd://127.0.0.1:{}", proxy.port));
    let mut waiter = env.spawn(["run", "--lock", "late", "--wait", "--", "touch", "ran"]);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        waiter.is_running(),
        "gave up at once: {:?}",
        waiter.try_finish()
    );
    proxy.set_mode(proxy::Mode::Pass);
    waiter.wait_timeout(Duration::from_secs(20)).assert_code(0);
    assert!(env.file("ran").exists());

    proxy.set_mode(proxy::Mode::Reset);
    let begun = Instant::now();
    let out = env.run(["run", "--lock", "late", "--wait=2s", "--", "touch", "again"]);
    out.assert_code(69);
    let took = begun.elapsed();
    assert!(took >= Duration::from_secs(2), "gave up after {took:?}");
    assert!(took < Duration::from_secs(15), "gave up after {took:?}");
    assert!(!env.file("again").exists());
}
