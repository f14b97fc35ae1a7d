//! `elect` end to end on the PostgreSQL backend: the built binary, real jobs, a real PostgreSQL.

#[path = "support/certs.rs"]
mod certs;
#[path = "support/net.rs"]
mod net;
#[path = "support/postgres_server.rs"]
mod postgres_server;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use postgres_server::{PostgresServer, DATABASE, USER};

fn elect(server: &PostgresServer) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_elect"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("ELECT_BACKEND", server.url())
        .stdin(Stdio::null());
    cmd
}

fn code(out: &Output) -> i32 {
    out.status
        .code()
        .unwrap_or_else(|| panic!("killed by a signal: {out:?}"))
}

/// Nanoseconds since the epoch written by `date +%s%N` into `file`.
fn stamp(file: &Path) -> u128 {
    let text =
        std::fs::read_to_string(file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("not a time stamp: {text:?}"))
}

/// Whether a process exists and is not a zombie waiting to be reaped (a zombie runs nothing).
fn is_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

#[test]
fn three_concurrent_runs_one_runs_the_others_exit_75() {
    let server = PostgresServer::start();
    let dir = tempfile::tempdir().unwrap();
    let children: Vec<_> = (0..3)
        .map(|i| {
            elect(&server)
                .args(["run", "--lock", "exclusive", "--", "sh", "-c"])
                .arg(format!("touch {}/ran-{i}; sleep 1.5", dir.path().display()))
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut codes: Vec<i32> = children
        .into_iter()
        .map(|c| code(&c.wait_with_output().unwrap()))
        .collect();
    codes.sort();
    assert_eq!(codes, [0, 75, 75]);
    let ran = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(ran, 1, "exactly one job ran");
}

#[test]
fn the_jobs_exit_code_passes_through() {
    let server = PostgresServer::start();
    let out = elect(&server)
        .args(["run", "--lock", "code", "--", "sh", "-c", "exit 7"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 7, "{}", String::from_utf8_lossy(&out.stderr));
    // The lease was released: the next run takes it at once.
    let out = elect(&server)
        .args(["run", "--lock", "code", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
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
    let dir = tempfile::tempdir().unwrap();
    let first_end = dir.path().join("first-end");
    let second_start = dir.path().join("second-start");
    let first = elect(&server)
        .args(["run", "--lock", "handover", "--", "sh", "-c"])
        .arg(format!("sleep 1.2; date +%s%N > {}", first_end.display()))
        .spawn()
        .unwrap();
    // Let the first one take the lock, then queue the second behind it.
    std::thread::sleep(Duration::from_millis(300));
    let second = elect(&server)
        .args(["run", "--wait", "--lock", "handover", "--", "sh", "-c"])
        .arg(format!("date +%s%N > {}", second_start.display()))
        .spawn()
        .unwrap();
    assert_eq!(code(&first.wait_with_output().unwrap()), 0);
    assert_eq!(code(&second.wait_with_output().unwrap()), 0);
    let gap = Duration::from_nanos(
        u64::try_from(stamp(&second_start).saturating_sub(stamp(&first_end))).unwrap(),
    );
    // Expiry-timed re-checks alone would take up to ~2 s; the release's NOTIFY wakes the waiter.
    assert!(
        gap < Duration::from_millis(500),
        "second job started {gap:?} after the first ended"
    );
}

#[test]
fn a_stopped_server_stops_the_job_before_the_ttl_and_exits_76() {
    let server = PostgresServer::start();
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("job.pid");
    let mut run = elect(&server)
        .args([
            "run", "--lock", "frozen", "--ttl", "2s", "--grace", "500ms", "--", "sh", "-c",
        ])
        .arg(format!("echo $$ > {}; exec sleep 60", pid_file.display()))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !pid_file.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the job never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let job_pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    server.freeze();
    let stopped_at = Instant::now();
    let mut job_dead_after = None;
    let status = loop {
        if job_dead_after.is_none() && !is_alive(job_pid) {
            job_dead_after = Some(stopped_at.elapsed());
        }
        if let Some(status) = run.try_wait().unwrap() {
            break status;
        }
        if stopped_at.elapsed() > Duration::from_secs(10) {
            let _ = run.kill();
            server.thaw();
            panic!("elect did not give up the job while the server was stopped");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let exited_after = stopped_at.elapsed();
    server.thaw();
    let out = run.wait_with_output().unwrap();
    assert_eq!(
        status.code(),
        Some(76),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!is_alive(job_pid), "the job (pid {job_pid}) still runs");
    // The last successful renew was sent before the stop, so the backend keeps the lease until
    // at least stop + ttl: the job must be dead before then.
    let job_dead_after = job_dead_after.unwrap_or(exited_after);
    assert!(
        job_dead_after < Duration::from_secs(2),
        "the job died {job_dead_after:?} after the stop"
    );
    // elect then tries a best-effort release, bounded by its release timeout (3 s).
    assert!(
        exited_after < Duration::from_secs(6),
        "elect exited {exited_after:?} after the stop"
    );
}

#[test]
fn status_shows_a_held_lock_and_exits_3_for_a_free_one() {
    let server = PostgresServer::start();
    let mut holder = elect(&server)
        .args([
            "run", "--lock", "shown", "--id", "job-1", "--", "sleep", "3",
        ])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let out = elect(&server)
        .args(["status", "--lock", "shown", "--json"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let doc = if doc.is_array() { doc[0].clone() } else { doc };
    assert_eq!(doc["state"], "held", "{doc}");
    assert_eq!(doc["holder"]["id"], "job-1", "{doc}");
    let out = elect(&server)
        .args(["status", "--lock", "other"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 3);
    let _ = holder.kill();
    let _ = holder.wait();
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
