//! `elect` end to end on the Redis backend: the built binary, real jobs, a real redis-server.

mod support {
    pub mod certs;
    pub mod cli_scenarios;
    pub mod net;
    pub mod process;
    pub mod programs;
    pub mod redis_server;
}

use std::process::Command;

use support::cli_scenarios::code;
use support::redis_server::RedisServer;
use support::{cli_scenarios, redis_server};

fn elect(server: &RedisServer) -> Command {
    cli_scenarios::elect(&server.url())
}

#[test]
fn three_concurrent_runs_one_runs_the_others_exit_75() {
    let server = RedisServer::start();
    cli_scenarios::three_concurrent_runs_one_runs_the_others_exit_75(&server.url());
}

#[test]
fn the_jobs_exit_code_passes_through() {
    let server = RedisServer::start();
    cli_scenarios::the_jobs_exit_code_passes_through(&server.url());
}

#[test]
fn the_job_sees_its_token_and_a_redacted_backend() {
    let server = RedisServer::with(redis_server::Options {
        password: Some("hunter2-secret".into()),
        ..Default::default()
    });
    let out = elect(&server)
        .args(["run", "--lock", "env", "--", "sh", "-c"])
        .arg("echo \"$ELECT_FENCING_TOKEN $ELECT_BACKEND\"")
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The first token is the server's clock in microseconds (see the acquire script).
    let (token, backend) = stdout.split_once(' ').unwrap();
    assert!(
        token.parse::<u64>().unwrap() > 1_000_000_000_000_000,
        "{stdout}"
    );
    assert!(backend.starts_with("redis://"), "{stdout}");
    assert!(!stdout.contains("hunter2"), "{stdout}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("hunter2"));
}

#[test]
fn a_release_wakes_a_waiting_contender_fast() {
    let server = RedisServer::start();
    cli_scenarios::a_release_wakes_a_waiting_contender_fast(&server.url());
}

#[test]
fn a_stopped_server_stops_the_job_before_the_ttl_and_exits_76() {
    let server = RedisServer::start();
    cli_scenarios::a_stopped_server_stops_the_job_before_the_ttl_and_exits_76(
        &server.url(),
        || server.stop(),
        || server.resume(),
    );
}

#[test]
fn status_shows_a_held_lock_and_exits_3_for_a_free_one() {
    let server = RedisServer::start();
    cli_scenarios::status_shows_a_held_lock_and_exits_3_for_a_free_one(&server.url());
}
