//! What a `--wait`ing run says, and where: nothing under cron (the battery's
//! `wait_runs_the_job_after_the_holder` checks that on every backend), every event at `-v`, one
//! line at a terminal. And a lease lost while elect did not run says so.

mod support {
    pub mod battery;
    pub mod env;
    pub mod process;
}

use std::process::{Command, Stdio};
use std::time::Duration;

use elect::keeper::Loss;
use support::env::{until_exists, write_pid, Running, TestEnv};

/// A holder whose job runs until `holder.go` exists.
fn hold(env: &TestEnv, lock: &str) -> Running {
    let script = format!("{}; {}", write_pid("holder.pid"), until_exists("holder.go"));
    let holder = env.spawn([
        "run", "--lock", lock, "--id", "holder-1", "--", "sh", "-c", &script,
    ]);
    env.read_pid("holder.pid");
    holder
}

fn release(env: &TestEnv, mut holder: Running) {
    std::fs::write(env.file("holder.go"), "").expect("touch");
    holder.wait().assert_code(0);
}

#[test]
fn verbose_shows_the_wait_and_the_acquisition() {
    let env = TestEnv::new();
    let lock = env.lock("verbose");
    let holder = hold(&env, &lock);
    let mut waiter = env.spawn(["run", "--lock", &lock, "--wait", "-v", "--", "true"]);
    waiter.wait_for_stderr("waiting: held by holder-1", Duration::from_secs(10));
    release(&env, holder);
    let out = waiter.wait();
    out.assert_code(0);
    assert!(out.stderr.contains("acquired after waiting"), "{out}");
}

#[test]
fn a_terminal_gets_one_line_while_waiting() {
    let env = TestEnv::new();
    let lock = env.lock("tty");
    let holder = hold(&env, &lock);
    // script(1) gives the waiter a terminal for stdin, stdout and stderr, and copies what it
    // writes there to its own stdout (a file of the harness).
    let waiter_cmd = format!(
        "{} run --lock {lock} --wait -- true",
        env!("CARGO_BIN_EXE_elect")
    );
    let mut cmd = Command::new("script");
    cmd.args(["-q", "-e", "-c", &waiter_cmd, "/dev/null"])
        .env("ELECT_LOCK_DIR", env.lock_dir().expect("the file backend"))
        .env_remove("ELECT_LOG")
        .current_dir(env.path())
        .stdin(Stdio::null());
    let mut waiter = env.spawn_command(cmd);
    let needle = format!("elect: waiting for {lock} (held by holder-1");
    support::env::wait_for("the waiting line", Duration::from_secs(10), || {
        waiter.stdout_so_far().contains(&needle)
    });
    release(&env, holder);
    let out = waiter.wait();
    out.assert_code(0);
    let lines: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 1, "one line at a terminal: {out}");
    assert!(lines[0].starts_with(&needle), "{out}");
}

#[test]
fn a_deadline_passed_without_any_renew_says_elect_did_not_run() {
    let never_tried = Loss::DeadlinePassed {
        last_error: String::new(),
    }
    .to_string();
    assert_eq!(
        never_tried,
        "no renew was attempted before the deadline: elect was not running"
    );
    let failed = Loss::DeadlinePassed {
        last_error: "connection refused".into(),
    }
    .to_string();
    assert!(
        failed.ends_with("(last error: connection refused)"),
        "{failed}"
    );
}
