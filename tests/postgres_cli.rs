//! `elect` end to end on the PostgreSQL backend: the built binary, real jobs, a real PostgreSQL.

mod support {
    pub mod certs;
    pub mod cli_scenarios;
    pub mod net;
    pub mod postgres_server;
    pub mod process;
}

use std::process::Command;

use support::cli_scenarios::code;
use support::postgres_server::{PostgresServer, DATABASE, USER};
use support::{cli_scenarios, postgres_server};

fn elect(server: &PostgresServer) -> Command {
    cli_scenarios::elect(&server.url())
}

#[test]
fn three_concurrent_runs_one_runs_the_others_exit_75() {
    let server = PostgresServer::start();
    cli_scenarios::three_concurrent_runs_one_runs_the_others_exit_75(&server.url());
}

#[test]
fn the_jobs_exit_code_passes_through() {
    let server = PostgresServer::start();
    cli_scenarios::the_jobs_exit_code_passes_through(&server.url());
}

#[test]
fn the_job_sees_its_token_and_a_redacted_backend() {
    let server = PostgresServer::start();
    let out = elect(&server)
        .args(["run", "--lock", "env", "--", "sh", "-c"])
        .arg("echo \"$ELECT_FENCING_TOKEN $ELECT_BACKEND\"")
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("1 postgres://elect:***@"), "{stdout}");
    assert!(!stdout.contains(postgres_server::PASSWORD), "{stdout}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains(postgres_server::PASSWORD));
}

#[test]
fn a_wrong_password_exits_69_with_one_line() {
    let server = PostgresServer::start();
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let out = elect(&server)
        .env(
            "ELECT_BACKEND",
            server.url_for(USER, "not-the-Passw0rd", DATABASE),
        )
        .args(["run", "--lock", "auth", "--", "touch"])
        .arg(&marker)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(code(&out), 69, "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("password authentication failed"),
        "{stderr}"
    );
    assert!(!stderr.contains("not-the-Passw0rd"), "{stderr}");
    assert!(!marker.exists(), "the job must not run");
}

#[test]
fn a_release_wakes_a_waiting_contender_fast() {
    let server = PostgresServer::start();
    cli_scenarios::a_release_wakes_a_waiting_contender_fast(&server.url());
}

#[test]
fn a_stopped_server_stops_the_job_before_the_ttl_and_exits_76() {
    let server = PostgresServer::start();
    cli_scenarios::a_stopped_server_stops_the_job_before_the_ttl_and_exits_76(
        &server.url(),
        || server.freeze(),
        || server.thaw(),
    );
}

#[test]
fn status_shows_a_held_lock_and_exits_3_for_a_free_one() {
    let server = PostgresServer::start();
    cli_scenarios::status_shows_a_held_lock_and_exits_3_for_a_free_one(&server.url());
}

#[test]
fn pgpassword_is_used_and_not_passed_on_to_the_job() {
    let server = PostgresServer::start();
    let out = elect(&server)
        .env(
            "ELECT_BACKEND",
            format!(
                "postgres://{USER}@127.0.0.1:{}/{DATABASE}?sslmode=disable",
                server.port
            ),
        )
        .env("PGPASSWORD", postgres_server::PASSWORD)
        .args(["run", "--lock", "pgpassword", "--", "sh", "-c"])
        .arg("echo \"[${PGPASSWORD-unset}]\"")
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[unset]");
}
