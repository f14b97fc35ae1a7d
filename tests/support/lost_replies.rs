//! Lost replies, end to end: `elect` through a [`Proxy`] that holds the answer to one request, or
//! freezes the connections open at one moment, against a real server. The scenarios that the
//! Redis and PostgreSQL tests share.
//!
//! Each scenario takes the URL through the proxy, the URL straight to the server, the proxy, and
//! a byte pattern that only the backend's acquire request contains.
//!
//! The binary's `mod support` block declares the `cli_scenarios` and `proxy` modules beside this
//! one.

// A library of scenarios: each backend's binary runs those that apply to it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStderr, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use super::cli_scenarios::{code, elect};
use super::proxy::{Mode, Proxy};

/// A lease long enough that a lock left held would still be held when the next contender comes.
const LONG_TTL: &str = "30s";

/// One run that takes and releases `lock`, so that the server knows what an acquire needs (the
/// Redis scripts, the PostgreSQL table) before a scenario holds its answer.
fn warm_up(url: &str, lock: &str) {
    let out = elect(url)
        .args(["run", "--lock", lock, "--", "true"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
}

/// The next contender, straight to the server: it must find `lock` free and run its job.
fn next_contender_runs(direct: &str, lock: &str) {
    let out = elect(direct)
        .args(["run", "--lock", lock, "--ttl", LONG_TTL, "--", "true"])
        .output()
        .unwrap();
    assert_eq!(
        code(&out),
        0,
        "the lock was left held by a process that did not run the job: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits until the proxy has held the answer to an acquire.
fn until_an_answer_is_lost(proxy: &Proxy, child: &mut Child) {
    let started = Instant::now();
    while !proxy.lost_replies() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("elect exited ({status}) before its acquire was sent");
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no acquire was sent through the proxy"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The acquire reached the server, its answer did not come back: elect gives up (69) and the
/// lease that the server took for it is released before elect exits.
pub fn an_acquire_without_an_answer_leaves_the_lock_free(
    via_proxy: &str,
    direct: &str,
    proxy: &Proxy,
    acquire: &[u8],
) {
    warm_up(direct, "lost-warm");
    proxy.lose_replies_after(acquire);
    let out = elect(via_proxy)
        .args(["run", "--lock", "lost", "--ttl", LONG_TTL, "--", "true"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(proxy.lost_replies(), "the acquire's answer was not held");
    assert_eq!(code(&out), 69, "{stderr}");
    proxy.thaw();
    next_contender_runs(direct, "lost");
}

/// SIGTERM while the acquire waits for its lost answer: elect exits 143, leaving nothing held.
pub fn sigterm_during_an_acquire_without_an_answer_leaves_the_lock_free(
    via_proxy: &str,
    direct: &str,
    proxy: &Proxy,
    acquire: &[u8],
) {
    warm_up(direct, "lost-warm");
    proxy.lose_replies_after(acquire);
    let mut child = elect(via_proxy)
        .args([
            "run",
            "--lock",
            "lost-term",
            "--ttl",
            LONG_TTL,
            "--",
            "true",
        ])
        .spawn()
        .unwrap();
    until_an_answer_is_lost(proxy, &mut child);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out), 143, "{}", String::from_utf8_lossy(&out.stderr));
    proxy.thaw();
    next_contender_runs(direct, "lost-term");
}

/// The `--wait` bound ends while an acquire waits for its lost answer: elect exits 75, leaving
/// nothing held.
pub fn the_wait_bound_during_an_acquire_without_an_answer_leaves_the_lock_free(
    via_proxy: &str,
    direct: &str,
    proxy: &Proxy,
    acquire: &[u8],
) {
    warm_up(direct, "lost-warm");
    let holder = elect(direct)
        .args(["run", "--lock", "lost-wait", "--", "sleep", "3"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let mut waiter = elect(via_proxy)
        .args([
            "run",
            "-v",
            "--lock",
            "lost-wait",
            "--wait=4s",
            "--ttl",
            LONG_TTL,
        ])
        .args(["--", "true"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Once the waiter's first attempt has found the lock held, the attempts after the release
    // get no answer.
    let lines = read_lines(waiter.stderr.take().unwrap());
    let mut stderr = String::new();
    for line in lines.iter() {
        stderr.push_str(&line);
        stderr.push('\n');
        if line.contains("waiting") {
            break;
        }
    }
    proxy.lose_replies_after(acquire);
    assert_eq!(code(&holder.wait_with_output().unwrap()), 0);
    let status = waiter.wait().unwrap();
    stderr.extend(lines.try_iter().map(|l| l + "\n"));
    assert!(proxy.lost_replies(), "no acquire lost its answer: {stderr}");
    assert_eq!(status.code(), Some(75), "{stderr}");
    proxy.thaw();
    next_contender_runs(direct, "lost-wait");
}

/// The lines of a child's stderr as they come.
fn read_lines(stderr: ChildStderr) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The connection a holder renews on stalls (new connections still get through) while the job
/// runs: renewals must move to a new connection, and the job finishes (exit 0) rather than being
/// stopped for a lease it could have kept. The renew attempt (1 s) is shorter than the client's
/// own reply timeout (2 s), so only the attempt's bound sees the stall. The job outlives the
/// deadline of the last renew before the freeze.
pub fn a_stalled_connection_is_replaced_for_the_next_renew(via_proxy: &str, proxy: &Proxy) {
    let started = Instant::now();
    let mut child = elect(via_proxy)
        .args(["run", "--lock", "stalled", "--ttl", "5s", "--renew", "1s"])
        .args(["--grace", "500ms", "--", "sleep", "8"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "elect ended before the connection was frozen"
    );
    proxy.freeze_existing();
    let out = child.wait_with_output().unwrap();
    let took = started.elapsed();
    proxy.thaw();
    assert_eq!(
        code(&out),
        0,
        "after {took:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `--once-per`: the job succeeds, then the backend cannot be reached, so its release (which
/// would write the marker) is lost. After the lease expires, a newcomer must still skip (75):
/// the run was recorded before the job started.
pub fn a_lost_release_does_not_let_once_per_run_twice(
    via_proxy: &str,
    direct: &str,
    proxy: &Proxy,
) {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let job = format!("echo run >> {}; sleep 1", runs.display());
    let mut first = elect(via_proxy)
        .args([
            "run",
            "--lock",
            "once-lost",
            "--once-per",
            "1h",
            "--ttl",
            "3s",
        ])
        .args(["--grace", "500ms", "--", "sh", "-c", &job])
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !runs.exists() {
        if let Ok(Some(status)) = first.try_wait() {
            panic!("the first run ended ({status}) before its job started");
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no job started"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // From now on nothing reaches the server: the release after the job is lost.
    proxy.set_mode(Mode::Blackhole);
    let out = first.wait_with_output().unwrap();
    proxy.set_mode(Mode::Pass);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    // The lease the lost release left behind expires by its ttl.
    std::thread::sleep(Duration::from_secs(4));
    let out = elect(direct)
        .args([
            "run",
            "--lock",
            "once-lost",
            "--once-per",
            "1h",
            "--",
            "sh",
            "-c",
        ])
        .arg(format!("echo run >> {}", runs.display()))
        .output()
        .unwrap();
    let count = std::fs::read_to_string(&runs).unwrap().lines().count();
    assert_eq!(
        count,
        1,
        "the job ran twice in its window: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(code(&out), 75, "{}", String::from_utf8_lossy(&out.stderr));
}

/// The `#[test]`s of the scenarios above for a backend whose `$behind_proxy()` gives `(server,
/// proxy, url)` (elect reaching the server through the proxy) and whose acquire request starts
/// with the bytes `$acquire_request`.
#[macro_export]
macro_rules! lost_replies_tests {
    ($behind_proxy:path, $acquire_request:expr) => {
        #[test]
        fn an_acquire_without_an_answer_leaves_the_lock_free() {
            use $crate::support::lost_replies as scenario;
            let (server, proxy, url) = $behind_proxy();
            scenario::an_acquire_without_an_answer_leaves_the_lock_free(
                &url,
                &server.url(),
                &proxy,
                $acquire_request,
            );
        }

        #[test]
        fn sigterm_during_an_acquire_without_an_answer_leaves_the_lock_free() {
            use $crate::support::lost_replies as scenario;
            let (server, proxy, url) = $behind_proxy();
            scenario::sigterm_during_an_acquire_without_an_answer_leaves_the_lock_free(
                &url,
                &server.url(),
                &proxy,
                $acquire_request,
            );
        }

        #[test]
        fn the_wait_bound_during_an_acquire_without_an_answer_leaves_the_lock_free() {
            use $crate::support::lost_replies as scenario;
            let (server, proxy, url) = $behind_proxy();
            scenario::the_wait_bound_during_an_acquire_without_an_answer_leaves_the_lock_free(
                &url,
                &server.url(),
                &proxy,
                $acquire_request,
            );
        }

        #[test]
        fn a_stalled_connection_is_replaced_for_the_next_renew() {
            use $crate::support::lost_replies as scenario;
            let (_server, proxy, url) = $behind_proxy();
            scenario::a_stalled_connection_is_replaced_for_the_next_renew(&url, &proxy);
        }

        #[test]
        fn a_lost_release_does_not_let_once_per_run_twice() {
            use $crate::support::lost_replies as scenario;
            let (server, proxy, url) = $behind_proxy();
            scenario::a_lost_release_does_not_let_once_per_run_twice(&url, &server.url(), &proxy);
        }
    };
}
