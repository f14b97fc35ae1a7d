//! elect alone killed (`kill -9`) while it holds a lease: on every network backend the watchdog
//! stops the job and has the lease released at once (see `src/handoff.rs`), so a waiting standby
//! takes over in the grace period, not the ttl; an unreachable backend leaves the lease to its
//! ttl; a lease that was lost and taken by another holder is left alone.

mod support {
    pub mod certs;
    pub mod cli_scenarios;
    pub mod crash_takeover;
    pub mod etcd_server;
    pub mod net;
    pub mod postgres_server;
    pub mod process;
    pub mod programs;
    pub mod proxy;
    pub mod redis_server;
    // Only the job lifetimes of the witness, not its fenced register.
    #[allow(dead_code)]
    pub mod witness;
}

use support::crash_takeover;
use support::etcd_server::EtcdServer;
use support::postgres_server::{PostgresServer, DATABASE, PASSWORD, USER};
use support::proxy::Proxy;
use support::redis_server::RedisServer;

fn postgres_url(port: u16) -> String {
    format!("postgres://{USER}:{PASSWORD}@127.0.0.1:{port}/{DATABASE}?sslmode=disable")
}

mod redis {
    use super::*;

    #[test]
    fn a_killed_elect_hands_over_within_the_grace() {
        let server = RedisServer::start();
        crash_takeover::a_killed_elect_hands_over_within_the_grace(&server.url());
    }

    #[test]
    fn an_unreachable_backend_leaves_the_lease_to_its_ttl() {
        let server = RedisServer::start();
        let proxy = Proxy::start(([127, 0, 0, 1], server.port).into());
        let proxied = format!("redis://127.0.0.1:{}", proxy.port);
        crash_takeover::an_unreachable_backend_leaves_the_lease_to_its_ttl(
            &server.url(),
            &proxied,
            &proxy,
        );
    }

    #[test]
    fn a_lease_lost_and_taken_is_left_alone() {
        let server = RedisServer::start();
        crash_takeover::a_lease_lost_and_taken_is_left_alone(&server.url());
    }
}

mod etcd {
    use super::*;

    #[test]
    fn a_killed_elect_hands_over_within_the_grace() {
        let server = EtcdServer::start();
        crash_takeover::a_killed_elect_hands_over_within_the_grace(&server.url());
    }

    #[test]
    fn an_unreachable_backend_leaves_the_lease_to_its_ttl() {
        let server = EtcdServer::start();
        let proxy = Proxy::start(server.endpoint().parse().unwrap());
        let proxied = format!("etcd://127.0.0.1:{}", proxy.port);
        crash_takeover::an_unreachable_backend_leaves_the_lease_to_its_ttl(
            &server.url(),
            &proxied,
            &proxy,
        );
    }

    /// A waiter's queue key would stand ahead of every later waiter until its ttl: killed while
    /// it waits, its watchdog has the key's lease revoked.
    #[test]
    fn a_killed_waiter_leaves_no_key_behind() {
        let server = EtcdServer::start();
        let mut stage = crash_takeover::Stage::new();
        let url = server.url();
        let long = std::time::Duration::from_secs(600);
        let (first, mut holder) = stage.run(&url, &["--ttl", "30s"], long);
        stage.life(first, std::time::Duration::from_secs(10));
        let (_, mut waiter) = stage.run(&url, &["--wait", "--ttl", "30s"], long);
        let keys = || server.keys("elect/crash/").len();
        let started = std::time::Instant::now();
        while keys() < 2 {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "no waiter key"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // The key comes first, then elect hands its lease to the watchdog.
        std::thread::sleep(std::time::Duration::from_millis(300));
        waiter.kill().unwrap();
        waiter.wait().unwrap();
        let killed = std::time::Instant::now();
        while keys() > 1 {
            assert!(
                killed.elapsed() < std::time::Duration::from_secs(3),
                "the killed waiter's key is still there (ttl 30 s)"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(holder.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        holder.wait().unwrap();
        stage.assert_no_overlap();
    }

    #[test]
    fn a_lease_lost_and_taken_is_left_alone() {
        let server = EtcdServer::start();
        crash_takeover::a_lease_lost_and_taken_is_left_alone(&server.url());
    }
}

mod postgres {
    use super::*;

    #[test]
    fn a_killed_elect_hands_over_within_the_grace() {
        let server = PostgresServer::start();
        crash_takeover::a_killed_elect_hands_over_within_the_grace(&server.url());
    }

    #[test]
    fn an_unreachable_backend_leaves_the_lease_to_its_ttl() {
        let server = PostgresServer::start();
        let proxy = Proxy::start(([127, 0, 0, 1], server.port).into());
        crash_takeover::an_unreachable_backend_leaves_the_lease_to_its_ttl(
            &server.url(),
            &postgres_url(proxy.port),
            &proxy,
        );
    }

    #[test]
    fn a_lease_lost_and_taken_is_left_alone() {
        let server = PostgresServer::start();
        crash_takeover::a_lease_lost_and_taken_is_left_alone(&server.url());
    }
}

/// The release mode reads its lease on stdin: anything else there is refused with one line and
/// exit 2, and nothing is released.
#[test]
fn the_release_mode_refuses_what_is_not_a_lease() {
    use std::io::Write;
    use std::os::unix::process::CommandExt;
    for input in [
        &b""[..],
        b"not json",
        b"{\"url\":\"redis://127.0.0.1:1\"}",
        &[0xff; 9000],
    ] {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_elect"))
            .arg0(elect::handoff::ARGV0)
            .env_clear()
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // The release mode may stop reading early: a broken pipe is fine.
        let _ = child.stdin.take().unwrap().write_all(input);
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.starts_with("elect: error: "), "{stderr}");
        assert!(out.stdout.is_empty());
    }
}
