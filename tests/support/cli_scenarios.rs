//! `elect` end to end on a network backend given by URL, with a cleared environment: the
//! scenarios that `redis_cli` and `postgres_cli` share, and the helpers they use.

// A library of scenarios: each backend's binary runs those that apply to it.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::process::is_alive;

/// `elect` with only PATH in its environment and `url` as its backend, stdin from /dev/null.
pub fn elect(url: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_elect"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("ELECT_BACKEND", url)
        .stdin(Stdio::null());
    cmd
}

/// The exit code; fails the test if elect was killed by a signal.
pub fn code(out: &Output) -> i32 {
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

/// Three runs at once: one runs its job, the other two exit 75.
pub fn three_concurrent_runs_one_runs_the_others_exit_75(url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let children: Vec<_> = (0..3)
        .map(|i| {
            elect(url)
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

/// The job's exit code is elect's, and the lease is released after it.
pub fn the_jobs_exit_code_passes_through(url: &str) {
    let out = elect(url)
        .args(["run", "--lock", "code", "--", "sh", "-c", "exit 7"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 7, "{}", String::from_utf8_lossy(&out.stderr));
    // The lease was released: the next run takes it at once.
    let out = elect(url)
        .args(["run", "--lock", "code", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
}

/// A waiting contender starts within 500 ms of the holder's end: the release wakes it.
pub fn a_release_wakes_a_waiting_contender_fast(url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let first_end = dir.path().join("first-end");
    let second_start = dir.path().join("second-start");
    let first = elect(url)
        .args(["run", "--lock", "handover", "--", "sh", "-c"])
        .arg(format!("sleep 1.2; date +%s%N > {}", first_end.display()))
        .spawn()
        .unwrap();
    // Let the first one take the lock, then queue the second behind it.
    std::thread::sleep(Duration::from_millis(300));
    let second = elect(url)
        .args(["run", "--wait", "--lock", "handover", "--", "sh", "-c"])
        .arg(format!("date +%s%N > {}", second_start.display()))
        .spawn()
        .unwrap();
    assert_eq!(code(&first.wait_with_output().unwrap()), 0);
    assert_eq!(code(&second.wait_with_output().unwrap()), 0);
    let gap = Duration::from_nanos(
        u64::try_from(stamp(&second_start).saturating_sub(stamp(&first_end))).unwrap(),
    );
    // Re-checks alone would take up to ~1.5 s (Redis) or ~2 s (PostgreSQL); the release's
    // notification wakes the waiter at once.
    assert!(
        gap < Duration::from_millis(500),
        "second job started {gap:?} after the first ended"
    );
}

/// A server frozen by `stop` (and thawed by `resume`) costs the job its life before the ttl,
/// and elect exits 76.
pub fn a_stopped_server_stops_the_job_before_the_ttl_and_exits_76(
    url: &str,
    stop: impl Fn(),
    resume: impl Fn(),
) {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("job.pid");
    let mut run = elect(url)
        .args([
            "run", "--lock", "frozen", "--ttl", "2s", "--grace", "500ms", "--", "sh", "-c",
        ])
        .arg(format!("echo $$ > {}; exec sleep 60", pid_file.display()))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    // The file exists as soon as the shell opens it, before `echo` has written the pid.
    let job_pid: i32 = loop {
        let read = std::fs::read_to_string(&pid_file).unwrap_or_default();
        if let Ok(pid) = read.trim().parse() {
            break pid;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the job never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    stop();
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
            resume();
            panic!("elect did not give up the job while the server was stopped");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let exited_after = stopped_at.elapsed();
    resume();
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

/// `status --json` shows a held lock and its holder; `status` of a free lock exits 3.
pub fn status_shows_a_held_lock_and_exits_3_for_a_free_one(url: &str) {
    let mut holder = elect(url)
        .args([
            "run", "--lock", "shown", "--id", "job-1", "--", "sleep", "3",
        ])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let out = elect(url)
        .args(["status", "--lock", "shown", "--json"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let doc = if doc.is_array() { doc[0].clone() } else { doc };
    assert_eq!(doc["state"], "held", "{doc}");
    assert_eq!(doc["holder"]["id"], "job-1", "{doc}");
    let out = elect(url)
        .args(["status", "--lock", "other"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 3);
    let _ = holder.kill();
    let _ = holder.wait();
}
