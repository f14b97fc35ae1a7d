//! Scenarios every backend must pass, each a function of a [`TestEnv`]: a backend's test file
//! calls each one from a `#[test]` with an environment for that backend.
//!
//! They drive real `elect` processes and real jobs (shell and perl scripts that write marker and
//! pid files into the environment's directory). Lock names come from [`TestEnv::lock`], so the
//! scenarios may run in parallel on one shared server. Bounds on time are generous: a scenario
//! fails when elect misbehaves, not when the machine is slow.

// A library of scenarios: each binary runs those that apply to its backend.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use serde_json::Value;

use super::env::{
    becomes, dies_within, until_exists, wait_all, write_pid, Outcome, Running, TestEnv,
};
use super::process::{is_alive, proc_stat, signal, watchdog_of};

/// Short lease settings that satisfy `renew + grace + margin < ttl` (renew defaults to ttl / 3).
const SHORT: [&str; 4] = ["--ttl", "2s", "--grace", "500ms"];
const SHORT_GRACE: Duration = Duration::from_millis(500);
/// How soon a contender that does not wait must exit: well before the winner's 4 s job ends, so
/// that it cannot have waited for it, with room for a loaded machine's start-up.
const NO_WAIT_EXIT: Duration = Duration::from_secs(3);

/// How long a marker written by a job may take to appear.
const APPEAR: Duration = Duration::from_secs(10);

/// Starts `elect run --lock LOCK --id NAME ARGS... -- sh -c 'write NAME.token and NAME.pid; wait
/// for NAME.go'` without waiting for the job. Touch `NAME.go` to let the job end.
fn spawn_holder(env: &TestEnv, lock: &str, name: &str, extra: &[&str]) -> Running {
    let script = format!(
        "echo $ELECT_FENCING_TOKEN > {name}.token; {}; {}; echo {name} >> order",
        write_pid(&format!("{name}.pid")),
        until_exists(&format!("{name}.go"))
    );
    let mut args = vec!["run", "--lock", lock, "--id", name];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "sh", "-c", &script]);
    env.spawn(&args)
}

/// [`spawn_holder`], returning once the job runs (the lock is held).
fn hold(env: &TestEnv, lock: &str, name: &str, extra: &[&str]) -> Running {
    let holder = spawn_holder(env, lock, name, extra);
    env.read_pid(&format!("{name}.pid"));
    holder
}

/// The fencing token the job of [`spawn_holder`] NAME got.
fn token_of(env: &TestEnv, name: &str) -> u64 {
    env.lines(&format!("{name}.token"))[0]
        .parse()
        .expect("a numeric token")
}

/// Lets a job started by [`hold`] end, and checks that its elect exits 0.
fn release(env: &TestEnv, holder: &mut Running, name: &str) -> Outcome {
    touch(env, &format!("{name}.go"));
    let out = holder.wait();
    out.assert_code(0);
    out
}

fn touch(env: &TestEnv, name: &str) {
    std::fs::write(env.file(name), "").expect("touch");
}

fn exists(env: &TestEnv, name: &str) -> bool {
    env.file(name).exists()
}

/// Starts five `elect run --lock LOCK --id racer-I ARGS... -- sh -c SCRIPT` at once and waits
/// for them all.
fn race(env: &TestEnv, lock: &str, extra: &[&str], script: &str) -> Vec<Outcome> {
    let mut racers: Vec<Running> = (0..5)
        .map(|i| {
            let id = format!("racer-{i}");
            let mut args = vec!["run", "--lock", lock, "--id", &id];
            args.extend_from_slice(extra);
            args.extend_from_slice(&["--", "sh", "-c", script]);
            env.spawn(&args)
        })
        .collect();
    wait_all(&mut racers)
}

/// Five concurrent `elect run` on one lock: exactly one runs the job; the four others exit 75
/// quickly with one stderr line that names the holder.
pub fn five_concurrent_runs_run_the_job_once(env: &TestEnv) {
    let lock = env.lock("race");
    let outcomes = race(env, &lock, &[], "touch started.$$; sleep 4");
    let started = std::fs::read_dir(env.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("started.")
        })
        .count();
    assert_eq!(
        started, 1,
        "exactly one job must run; outcomes:\n{outcomes:#?}"
    );
    let winners: Vec<usize> = (0..5).filter(|&i| outcomes[i].code() == 0).collect();
    assert_eq!(winners.len(), 1, "exactly one elect exits 0: {outcomes:#?}");
    let winner = winners[0];
    for (i, out) in outcomes.iter().enumerate().filter(|(i, _)| *i != winner) {
        out.assert_code(75).assert_no_panic();
        assert!(
            out.elapsed < NO_WAIT_EXIT,
            "a contender that does not wait must exit while the holder's job still runs: {out}"
        );
        let line = out.one_error_line();
        assert!(
            line.contains(&format!("held by racer-{winner}")) && line.contains(&lock),
            "racer {i}'s line must name the lock and its holder racer-{winner}: {line}"
        );
    }
}

/// `--conflict-exit-code 0`: a skipped run exits 0 and prints nothing.
pub fn conflict_exit_code_zero_skips_silently(env: &TestEnv) {
    let lock = env.lock("skip");
    let mut holder = hold(env, &lock, "holder", &[]);
    let skipped = env.run([
        "run",
        "--lock",
        &lock,
        "--conflict-exit-code",
        "0",
        "--",
        "touch",
        "skipped",
    ]);
    skipped.assert_code(0);
    assert!(
        skipped.stderr.is_empty(),
        "a silent skip prints nothing: {skipped}"
    );
    // The same run without the option proves that the lock was held at the time.
    let conflict = env.run(["run", "--lock", &lock, "--", "touch", "skipped"]);
    conflict.assert_code(75);
    conflict.one_error_line();
    let other_code = env.run([
        "run",
        "--lock",
        &lock,
        "--conflict-exit-code",
        "9",
        "--",
        "touch",
        "skipped",
    ]);
    other_code.assert_code(9);
    assert!(!exists(env, "skipped"), "a skipped job must not run");
    release(env, &mut holder, "holder");
}

/// `--wait`: a contender blocks while the lock is held and runs its job after the holder's job
/// has ended.
pub fn wait_runs_the_job_after_the_holder(env: &TestEnv) {
    let lock = env.lock("wait");
    let mut holder = hold(env, &lock, "holder", &[]);
    let mut waiter = env.spawn([
        "run",
        "--lock",
        &lock,
        "--wait",
        "--",
        "sh",
        "-c",
        "echo waiter >> order",
    ]);
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        waiter.is_running(),
        "a --wait contender must block while the lock is held: {}",
        waiter.wait()
    );
    assert!(env.lines("order").is_empty(), "the waiter ran too early");
    release(env, &mut holder, "holder");
    let out = waiter.wait_timeout(Duration::from_secs(10));
    out.assert_code(0);
    assert_eq!(
        env.lines("order"),
        ["holder", "waiter"],
        "the waiter's job runs after the holder's"
    );
    // Waiting is the plan with --wait: under cron (stderr not a terminal) nothing is printed.
    assert!(
        out.stderr.is_empty(),
        "a --wait run that waited, then ran as planned, prints nothing: {out}"
    );
}

/// `--wait=300ms` gives up with 75 after about 300 ms, without running the job.
pub fn bounded_wait_gives_up_with_75(env: &TestEnv) {
    let lock = env.lock("bounded");
    let mut holder = hold(env, &lock, "holder", &[]);
    let out = env.run([
        "run",
        "--lock",
        &lock,
        "--wait=300ms",
        "--",
        "touch",
        "waiter.ran",
    ]);
    out.assert_code(75).assert_no_panic();
    assert!(
        out.elapsed >= Duration::from_millis(300) && out.elapsed < Duration::from_millis(1800),
        "--wait=300ms must give up after about 300 ms, not after {:?}: {out}",
        out.elapsed
    );
    let lines = out.stderr_lines();
    let errors: Vec<_> = lines
        .iter()
        .filter(|l| l.starts_with("elect: error: "))
        .collect();
    assert_eq!(errors.len(), 1, "one error line: {out}");
    assert!(errors[0].contains(&lock), "the line names the lock: {out}");
    assert!(!exists(env, "waiter.ran"), "the job must not run");
    release(env, &mut holder, "holder");
}

/// The job's exit code is elect's, and elect says nothing about it.
pub fn exit_codes_pass_through(env: &TestEnv) {
    let lock = env.lock("codes");
    for code in [0, 3, 42] {
        let out = env.run([
            "run",
            "--lock",
            &lock,
            "--",
            "sh",
            "-c",
            &format!("exit {code}"),
        ]);
        out.assert_code(code);
        assert!(
            out.stderr.is_empty(),
            "elect is silent about a job's own exit: {out}"
        );
    }
}

/// A job killed by signal N makes elect exit 128 + N.
pub fn signal_deaths_exit_128_plus_n(env: &TestEnv) {
    let lock = env.lock("killed");
    for (sig, code) in [("KILL", 137), ("TERM", 143), ("SEGV", 139)] {
        let out = env.run([
            "run",
            "--lock",
            &lock,
            "--",
            "sh",
            "-c",
            &format!("kill -s {sig} $$; sleep 5"),
        ]);
        out.assert_code(code).assert_no_panic();
    }
}

/// A command that does not exist exits 127 with one line, and the lock is released.
pub fn missing_command_exits_127(env: &TestEnv) {
    let lock = env.lock("missing");
    for command in ["no-such-command-for-elect", "/nonexistent/dir/command"] {
        let out = env.run(["run", "--lock", &lock, "--", command]);
        out.assert_code(127).assert_no_panic();
        let line = out.one_error_line();
        assert!(line.contains(command), "the line names the command: {line}");
    }
    env.run(["run", "--lock", &lock, "--", "true"])
        .assert_code(0);
}

/// A command that is not executable (a file without the x bit, a directory) exits 126.
pub fn non_executable_command_exits_126(env: &TestEnv) {
    let lock = env.lock("noexec");
    let path = env.file("not-executable.sh");
    std::fs::write(&path, "#!/bin/sh\ntouch ran\n").unwrap();
    let dir = env.file("a-directory");
    std::fs::create_dir(&dir).unwrap();
    for command in [&path, &dir] {
        let mut cmd = env.elect();
        cmd.args(["run", "--lock", &lock, "--"]).arg(command);
        let out = env.run_command(cmd);
        out.assert_code(126).assert_no_panic();
        out.one_error_line();
    }
    assert!(!exists(env, "ran"));
    env.run(["run", "--lock", &lock, "--", "true"])
        .assert_code(0);
}

/// The job gets ELECT_LOCK, ELECT_FENCING_TOKEN, ELECT_HOLDER_ID (from `--id`, else
/// HOSTNAME:PID) and ELECT_BACKEND without a password, and not elect's secret variables.
pub fn job_environment(env: &TestEnv) {
    let lock = env.lock("env");
    let report = "printf '%s\\n' \"$ELECT_LOCK\" \"$ELECT_FENCING_TOKEN\" \"$ELECT_HOLDER_ID\" \
                  \"$ELECT_BACKEND\" \"${ELECT_REDIS_PASSWORD-unset}\" \
                  \"${ELECT_ETCD_PASSWORD-unset}\" > env.out";
    let mut cmd = env.elect();
    cmd.args([
        "run",
        "--lock",
        &lock,
        "--id",
        "job-env-id",
        "--",
        "sh",
        "-c",
        report,
    ]);
    // Secret variables of the backends not under test (setting the one in use would change
    // how it connects).
    if !env.scheme().starts_with("redis") {
        cmd.env("ELECT_REDIS_PASSWORD", "redis-secret-for-elect");
    }
    if !env.scheme().starts_with("etcd") {
        cmd.env("ELECT_ETCD_PASSWORD", "etcd-secret-for-elect");
    }
    env.run_command(cmd).assert_code(0);
    let lines = env.lines("env.out");
    assert_eq!(lines.len(), 6, "env.out: {lines:?}");
    assert_eq!(lines[0], lock, "ELECT_LOCK");
    let token: u64 = lines[1]
        .parse()
        .unwrap_or_else(|_| panic!("ELECT_FENCING_TOKEN is not a number: {:?}", lines[1]));
    assert!(token >= 1, "a fencing token is positive: {token}");
    assert_eq!(lines[2], "job-env-id", "ELECT_HOLDER_ID honours --id");
    let backend = &lines[3];
    assert!(
        backend.starts_with(&format!("{}://", env.scheme())),
        "ELECT_BACKEND names the backend: {backend:?}"
    );
    if let Some(dir) = env.lock_dir() {
        assert_eq!(
            *backend,
            format!("file://{}", dir.display()),
            "ELECT_BACKEND"
        );
    }
    if let Some(password) = env.backend_password() {
        assert!(
            !backend.contains(password),
            "ELECT_BACKEND must not carry the password: {backend:?}"
        );
    }
    assert_eq!(
        lines[4..],
        ["unset", "unset"],
        "elect's secret variables must not reach the job"
    );

    // Without --id: HOSTNAME:PID of elect.
    let mut run = env.spawn([
        "run",
        "--lock",
        &lock,
        "--",
        "sh",
        "-c",
        "echo \"$ELECT_HOLDER_ID\" > id.out",
    ]);
    let pid = run.pid();
    run.wait().assert_code(0);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(
        env.lines("id.out"),
        [format!("{}:{pid}", host.trim())],
        "the default holder id is HOSTNAME:PID"
    );
}

/// ELECT_FENCING_TOKEN strictly increases over three sequential runs.
pub fn fencing_token_increases(env: &TestEnv) {
    let lock = env.lock("token");
    for _ in 0..3 {
        env.run([
            "run",
            "--lock",
            &lock,
            "--",
            "sh",
            "-c",
            "echo \"$ELECT_FENCING_TOKEN\" >> tokens",
        ])
        .assert_code(0);
    }
    let tokens: Vec<u64> = env
        .lines("tokens")
        .iter()
        .map(|t| t.parse().unwrap_or_else(|_| panic!("not a token: {t:?}")))
        .collect();
    assert_eq!(tokens.len(), 3, "{tokens:?}");
    assert!(
        tokens[0] < tokens[1] && tokens[1] < tokens[2],
        "tokens must strictly increase: {tokens:?}"
    );
}

/// A job (perl, which may trap any signal) that forks a child in its own process group; both
/// append the signal's name to `TAG.got.main` / `TAG.got.child` each time it arrives, and end
/// when `TAG.done` appears.
const TRAP_PL: &str = r#"
use strict;
use warnings;
my ($sig, $tag) = @ARGV;
my $kid = fork();
die "fork: $!" unless defined $kid;
my $who = $kid ? "main" : "child";
$SIG{$sig} = sub {
    open(my $f, '>>', "$tag.got.$who") or die "open: $!";
    print $f "$sig\n";
    close $f;
};
open(my $r, '>', "$tag.ready.$who.tmp") or die "open: $!";
print $r "$$\n";
close $r;
rename("$tag.ready.$who.tmp", "$tag.ready.$who") or die "rename: $!";
for (1 .. 3000) {
    last if -e "$tag.done";
    select(undef, undef, undef, 0.01);
}
waitpid($kid, 0) if $kid;
exit 0;
"#;

/// Each of HUP INT QUIT TERM USR1 USR2 WINCH ALRM sent to elect reaches the job exactly once,
/// and the job's child in its process group too.
pub fn signals_reach_the_job_group_once(env: &TestEnv) {
    std::fs::write(env.file("trap.pl"), TRAP_PL).unwrap();
    let signals = [
        "HUP", "INT", "QUIT", "TERM", "USR1", "USR2", "WINCH", "ALRM",
    ];
    let results: Vec<(String, Result<(), String>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = signals
            .iter()
            .map(|sig| (sig, scope.spawn(move || forward_one(env, sig))))
            .collect();
        handles
            .into_iter()
            .map(|(sig, h)| {
                let result = h.join().unwrap_or_else(|panic| {
                    Err(panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "panicked".into()))
                });
                (sig.to_string(), result)
            })
            .collect()
    });
    let failures: Vec<String> = results
        .into_iter()
        .filter_map(|(sig, r)| r.err().map(|e| format!("SIG{sig}: {e}")))
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

fn forward_one(env: &TestEnv, sig: &str) -> Result<(), String> {
    let lock = env.lock(&format!("sig-{sig}"));
    let mut run = env.spawn(["run", "--lock", &lock, "--", "perl", "trap.pl", sig, sig]);
    env.read_pid(&format!("{sig}.ready.main"));
    env.read_pid(&format!("{sig}.ready.child"));
    run.signal(sig);
    let arrived = becomes(Duration::from_secs(5), || {
        !env.lines(&format!("{sig}.got.main")).is_empty()
            && !env.lines(&format!("{sig}.got.child")).is_empty()
    });
    // Time for a second delivery, if there is one, before the job ends.
    std::thread::sleep(Duration::from_millis(300));
    touch(env, &format!("{sig}.done"));
    let out = run.wait();
    let main = env.lines(&format!("{sig}.got.main")).len();
    let child = env.lines(&format!("{sig}.got.child")).len();
    if !arrived || main != 1 || child != 1 || out.status.code() != Some(0) {
        return Err(format!(
            "expected the job and its child to get the signal once each and elect to exit 0; \
             the job got it {main} times, its child {child} times; {out}"
        ));
    }
    Ok(())
}

/// elect killed with SIGKILL while the job runs: the job and its background grandchild die
/// within grace + 1 s.
pub fn job_dies_when_elect_is_killed(env: &TestEnv) {
    let lock = env.lock("kill9");
    let script = format!(
        "sleep 100 & echo $! > gc.pid.tmp && mv gc.pid.tmp gc.pid; {}; wait",
        write_pid("main.pid")
    );
    let mut args = vec!["run", "--lock", &lock];
    args.extend(SHORT);
    args.extend(["--", "sh", "-c", &script]);
    let mut run = env.spawn(&args);
    let main = env.read_pid("main.pid");
    let gc = env.read_pid("gc.pid");
    assert!(is_alive(main) && is_alive(gc));
    run.signal("KILL");
    let killed_at = Instant::now();
    let out = run.wait();
    assert_eq!(out.killed_by(), Some(9), "{out}");
    let limit = SHORT_GRACE + Duration::from_secs(1);
    assert!(
        dies_within(main, limit.saturating_sub(killed_at.elapsed())),
        "the job (pid {main}) outlived a SIGKILLed elect by more than {limit:?}"
    );
    assert!(
        dies_within(gc, limit.saturating_sub(killed_at.elapsed())),
        "the job's grandchild (pid {gc}) outlived a SIGKILLed elect by more than {limit:?}"
    );
}

/// elect killed with SIGKILL while a grandchild of the job ignores SIGTERM and lives until the
/// SIGKILL after the grace: meanwhile the lock is not free (a contender gets 75); once every
/// process of the job is gone, a contender gets the lock.
pub fn lock_stays_held_while_a_job_process_lives(env: &TestEnv) {
    let lock = env.lock("outlive");
    let grace = Duration::from_secs(3);
    let script = format!(
        "(trap '' TERM; exec sleep 100) & echo $! > gc.pid.tmp && mv gc.pid.tmp gc.pid; {}; wait",
        write_pid("main.pid")
    );
    let mut run = env.spawn([
        "run", "--lock", &lock, "--ttl", "10s", "--grace", "3s", "--", "sh", "-c", &script,
    ]);
    let main = env.read_pid("main.pid");
    let gc = env.read_pid("gc.pid");
    run.signal("KILL");
    let killed_at = Instant::now();
    assert_eq!(run.wait().killed_by(), Some(9));
    assert!(
        dies_within(main, Duration::from_secs(2)),
        "the job's main process should have died of SIGTERM"
    );
    assert!(
        is_alive(gc),
        "the grandchild ignores SIGTERM and should live until the grace ends"
    );
    let contender = env.run(["run", "--lock", &lock, "--", "touch", "contender.ran"]);
    let still_alive = is_alive(gc);
    assert!(
        still_alive,
        "inconclusive: the grandchild died during the check ({:?} after the kill)",
        killed_at.elapsed()
    );
    assert_eq!(
        contender.status.code(),
        Some(75),
        "the lock must stay held while a process of the job runs (grandchild {gc} alive): \
         {contender}"
    );
    assert!(!exists(env, "contender.ran"));
    assert!(
        dies_within(
            gc,
            (grace + Duration::from_secs(1)).saturating_sub(killed_at.elapsed())
        ),
        "the grandchild outlived the grace ({grace:?}) after elect was killed"
    );
    // Once everything is gone the lock is free (a ttl backend frees it by its ttl at the latest).
    let after = env.run([
        "run",
        "--lock",
        &lock,
        "--wait=15s",
        "--",
        "touch",
        "contender.ran",
    ]);
    after.assert_code(0);
    assert!(exists(env, "contender.ran"));
}

/// What the job leaves running when its main process exits is stopped before elect exits, and
/// elect exits only when no process of the job remains, with the main process's code.
pub fn leftovers_are_stopped_before_elect_exits(env: &TestEnv) {
    let lock = env.lock("leftover");
    env.script(
        "slow-to-stop.sh",
        &format!(
            "trap 'sleep 0.5; echo stopped > slow.done; exit 0' TERM\n{}\n{}",
            write_pid("slow.pid"),
            until_exists("never")
        ),
    );
    let script = format!(
        "sleep 100 & echo $! > bg.pid.tmp && mv bg.pid.tmp bg.pid; ./slow-to-stop.sh & {}; exit 7",
        until_exists("slow.pid")
    );
    let mut run = env.spawn(["run", "--lock", &lock, "--", "sh", "-c", &script]);
    let bg = env.read_pid("bg.pid");
    let slow = env.read_pid("slow.pid");
    let out = run.wait();
    out.assert_code(7);
    assert!(
        !is_alive(bg),
        "a background process of the job (pid {bg}) still ran when elect exited: {out}"
    );
    assert!(
        !is_alive(slow),
        "a background process of the job (pid {slow}) still ran when elect exited"
    );
    assert!(
        exists(env, "slow.done"),
        "elect exited before the job's last process had finished stopping"
    );
    // And the lock is free again at once.
    env.run(["run", "--lock", &lock, "--", "true"])
        .assert_code(0);
}

/// A grandchild that left the job's process group and session (setsid) is stopped too: when
/// the main process exits, and when elect is killed.
pub fn setsid_grandchild_is_stopped(env: &TestEnv) {
    let lock = env.lock("setsid");
    env.script(
        "escape.sh",
        &format!("{}\n{}", write_pid("$1"), until_exists("never")),
    );
    // 1. The main process exits, leaving the setsid'd grandchild.
    let script = format!(
        "setsid ./escape.sh gc1.pid & {}; exit 0",
        until_exists("main.go")
    );
    let mut run = env.spawn(["run", "--lock", &lock, "--", "sh", "-c", &script]);
    let gc = env.read_pid("gc1.pid");
    let stat = proc_stat(gc).expect("the grandchild runs");
    assert_eq!(
        stat.session, gc,
        "the grandchild should lead its own session"
    );
    touch(env, "main.go");
    let out = run.wait();
    out.assert_code(0);
    assert!(
        !is_alive(gc),
        "a setsid'd grandchild (pid {gc}) still ran when elect exited: {out}"
    );

    // 2. elect is killed while the main process waits.
    let script = format!(
        "setsid ./escape.sh gc2.pid & {}; {}",
        write_pid("main.pid"),
        until_exists("never")
    );
    let mut args = vec!["run", "--lock", &lock];
    args.extend(SHORT);
    args.extend(["--", "sh", "-c", &script]);
    let mut run = env.spawn(&args);
    env.read_pid("main.pid");
    let gc = env.read_pid("gc2.pid");
    run.signal("KILL");
    let killed_at = Instant::now();
    assert_eq!(run.wait().killed_by(), Some(9));
    let limit = SHORT_GRACE + Duration::from_secs(1);
    assert!(
        dies_within(gc, limit.saturating_sub(killed_at.elapsed())),
        "a setsid'd grandchild (pid {gc}) outlived a SIGKILLed elect by more than {limit:?}"
    );
}

/// `elect status --lock L`: 0 with the holder's id, pid and token while held; 3 when free; the
/// JSON document has the fields of the contract.
pub fn status_of_one_lock(env: &TestEnv) {
    let lock = env.lock("status");
    let id = format!("status-holder-{}", std::process::id());
    let mut holder = env.spawn([
        "run",
        "--lock",
        &lock,
        "--id",
        &id,
        "--",
        "sh",
        "-c",
        &format!(
            "echo $ELECT_FENCING_TOKEN > token; {}; {}",
            write_pid("holder.pid"),
            until_exists("holder.go")
        ),
    ]);
    env.read_pid("holder.pid");
    let pid = holder.pid();
    let token = env.lines("token")[0].clone();

    let text = env.status(["--lock", &lock]);
    text.assert_code(0).assert_no_panic();
    let row = text
        .stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(lock.as_str()))
        .unwrap_or_else(|| panic!("no row for {lock}: {text}"));
    let fields: Vec<&str> = row.split_whitespace().collect();
    for want in ["held", id.as_str(), &pid.to_string(), token.as_str()] {
        assert!(fields.contains(&want), "the row must show {want:?}: {text}");
    }

    let json = env.status(["--lock", &lock, "--json"]);
    json.assert_code(0);
    let doc = serde_json::from_str::<Value>(json.stdout.trim())
        .unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {json}"));
    assert_eq!(doc["lock"].as_str(), Some(lock.as_str()), "{json}");
    assert_eq!(doc["state"].as_str(), Some("held"), "{json}");
    assert_eq!(doc["holder"]["id"].as_str(), Some(id.as_str()), "{json}");
    assert_eq!(doc["holder"]["pid"].as_u64(), Some(pid as u64), "{json}");
    assert!(doc["holder"]["host"].as_str().is_some(), "{json}");
    assert_eq!(
        doc["token"].as_u64().map(|t| t.to_string()),
        Some(token.clone()),
        "{json}"
    );
    let acquired = doc["acquired_at"].as_str().unwrap_or("");
    assert!(
        acquired.len() >= 20 && acquired.as_bytes()[4] == b'-' && acquired.ends_with('Z'),
        "acquired_at must be an RFC 3339 UTC time: {json}"
    );
    let backend = doc["backend"].as_str().unwrap_or("");
    assert!(
        backend.starts_with(&format!("{}://", env.scheme())),
        "backend: {json}"
    );
    if let Some(password) = env.backend_password() {
        assert!(
            !json.stdout.contains(password),
            "status printed the password"
        );
    }
    assert!(
        doc.get("expires_at").is_some(),
        "expires_at must be present: {json}"
    );

    release(env, &mut holder, "holder");
    let free = env.status(["--lock", &lock]);
    free.assert_code(3).assert_no_panic();
    let free_json = env.status(["--lock", &lock, "--json"]);
    free_json.assert_code(3);
    let doc = serde_json::from_str::<Value>(free_json.stdout.trim())
        .unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {free_json}"));
    assert_eq!(doc["state"].as_str(), Some("free"), "{free_json}");
    assert_eq!(doc["holder"], Value::Null, "{free_json}");

    // A lock never used is free too.
    env.status(["--lock", &env.lock("never-used")])
        .assert_code(3);
}

/// `elect status` without `--lock` lists every lock, held and free, as a table and as JSON.
pub fn status_lists_every_lock(env: &TestEnv) {
    let held = env.lock("list-held");
    let free = env.lock("list-free");
    env.run(["run", "--lock", &free, "--", "true"])
        .assert_code(0);
    let mut holder = hold(env, &held, "holder", &[]);

    let text = env.status::<[&str; 0], &str>([]);
    text.assert_code(0);
    let state_of = |name: &str| {
        text.stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .map(str::to_owned)
    };
    assert_eq!(state_of(&held).as_deref(), Some("held"), "{text}");
    assert_eq!(state_of(&free).as_deref(), Some("free"), "{text}");

    let json = env.status(["--json"]);
    json.assert_code(0);
    let doc = serde_json::from_str::<Value>(json.stdout.trim())
        .unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {json}"));
    let docs = doc
        .as_array()
        .unwrap_or_else(|| panic!("status --json without --lock is an array: {json}"));
    let state = |name: &str| {
        docs.iter()
            .find(|d| d["lock"].as_str() == Some(name))
            .and_then(|d| d["state"].as_str())
    };
    assert_eq!(state(&held), Some("held"), "{json}");
    assert_eq!(state(&free), Some("free"), "{json}");

    release(env, &mut holder, "holder");
    if env.is_private() {
        env.status::<[&str; 0], &str>([]).assert_code(3);
    }
}

/// SIGTERM to an elect that waits for the lock: it exits 143 promptly without running the job.
pub fn sigterm_stops_a_wait(env: &TestEnv) {
    let lock = env.lock("term-wait");
    let mut holder = hold(env, &lock, "holder", &[]);
    let mut waiter = env.spawn([
        "run",
        "--lock",
        &lock,
        "--wait",
        "-v",
        "--",
        "touch",
        "waiter.ran",
    ]);
    waiter.wait_for_stderr("waiting", Duration::from_secs(10));
    waiter.signal("TERM");
    let sent = Instant::now();
    let out = waiter.wait();
    out.assert_code(143).assert_no_panic();
    let took = out.finished_at.duration_since(sent);
    assert!(
        took < Duration::from_secs(2),
        "a waiting elect must stop promptly on SIGTERM, took {took:?}: {out}"
    );
    assert!(!exists(env, "waiter.ran"), "the job must not run");
    let errors: Vec<_> = out
        .stderr_lines()
        .into_iter()
        .filter(|l| l.starts_with("elect: error: "))
        .collect();
    assert_eq!(errors.len(), 1, "one error line: {out}");
    // The holder is undisturbed.
    assert!(holder.is_running());
    release(env, &mut holder, "holder");
    assert!(
        !exists(env, "waiter.ran"),
        "the job must not run later either"
    );
}

/// Where a usage error comes from: clap (its own format) or elect (one `elect: error:` line).
#[derive(Debug, Clone, Copy)]
enum Says {
    Clap,
    Elect,
}

/// Bad input exits 2 with a short message, never a panic, and runs nothing.
pub fn bad_input_is_a_usage_error(env: &TestEnv) {
    let job = ["touch", "should-not-run"];
    let with_job = |args: &[&str]| -> Vec<String> {
        args.iter()
            .chain(["--"].iter())
            .chain(job.iter())
            .map(|s| s.to_string())
            .collect()
    };
    let cases: Vec<(Vec<String>, Says, &str)> = vec![
        (with_job(&["run", "--lock", "a/b"]), Says::Clap, "a/b"),
        (with_job(&["run", "--lock", ".."]), Says::Clap, ".."),
        (with_job(&["run", "--lock", "a..b"]), Says::Clap, "a..b"),
        (with_job(&["run", "--lock", ""]), Says::Clap, "lock"),
        (
            with_job(&["run", "--lock", "x", "--ttl", "abc"]),
            Says::Clap,
            "abc",
        ),
        (
            with_job(&["run", "--lock", "x", "--renew", "5s", "--ttl", "5s"]),
            Says::Elect,
            "renew",
        ),
        (
            with_job(&["run", "--lock", "x", "--ttl", "2s", "--grace", "3s"]),
            Says::Elect,
            "grace",
        ),
        (
            vec!["run".into(), "--lock".into(), "x".into(), "--".into()],
            Says::Clap,
            "COMMAND",
        ),
        (with_job(&["run"]), Says::Clap, "--lock"),
        (
            with_job(&["run", "--lock", "x", "--backend", "consul://x"]),
            Says::Elect,
            "consul",
        ),
        (
            with_job(&["run", "--lock", "x", "--wait=soon"]),
            Says::Clap,
            "soon",
        ),
        (
            vec!["status".into(), "--lock".into(), "a/b".into()],
            Says::Clap,
            "a/b",
        ),
        (
            with_job(&["run", "--lock", "x", "--once-per", "abc"]),
            Says::Clap,
            "abc",
        ),
        (
            with_job(&["run", "--lock", "x", "--once-per", "0s"]),
            Says::Clap,
            "0s",
        ),
    ];
    let mut failures = Vec::new();
    for (args, says, mention) in &cases {
        let out = env.run(args);
        let lines = out.stderr_lines();
        let panicked = out.stderr.contains("panicked") || out.stderr.contains("backtrace");
        let shape_ok = match says {
            Says::Elect => {
                lines.len() == 1
                    && lines[0].starts_with("elect: error: ")
                    && lines[0].contains(mention)
            }
            Says::Clap => {
                !lines.is_empty()
                    && lines[0].starts_with("error: ")
                    && out.stderr.contains(mention)
                    && lines.len() <= 6
            }
        };
        if out.status.code() != Some(2) || panicked || !shape_ok {
            failures.push(format!(
                "expected exit 2 and {says:?}'s short message mentioning {mention:?}: {out}"
            ));
        }
    }
    assert!(!exists(env, "should-not-run"), "a usage error ran the job");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// A network backend keeps the lease of a holder lost with its host until its ttl (nothing is
/// left to release it: here elect and its watchdog are stopped and killed together); an operator
/// frees it with `elect release --token N`, which refuses a wrong token and touches nothing then.
pub fn forced_release_frees_a_dead_holders_lease(env: &TestEnv) {
    let lock = env.lock("forced");
    let mut holder = env.spawn([
        "run",
        "--lock",
        &lock,
        "--ttl",
        "60s",
        "--grace",
        "500ms",
        "--",
        "sh",
        "-c",
        "echo $ELECT_FENCING_TOKEN > token.tmp && mv token.tmp token; exec sleep 100",
    ]);
    env.wait_for_file("token", Duration::from_secs(10));
    let token: u64 = env.lines("token")[0].parse().expect("a token");
    // Stopped first, so that the watchdog does not see elect die and release the lease.
    let watchdog = watchdog_of(holder.pid()).expect("elect's watchdog");
    holder.signal("STOP");
    signal(watchdog, "STOP");
    holder.signal("KILL");
    signal(watchdog, "KILL");
    assert_eq!(holder.wait().killed_by(), Some(9));

    env.run(["run", "--lock", &lock, "--", "true"])
        .assert_code(75);
    let wrong = (token + 1000).to_string();
    let refused = env.run(["release", "--lock", &lock, "--token", &wrong]);
    refused.assert_code(75).assert_no_panic();
    assert!(
        refused.one_error_line().contains("not under token"),
        "{refused}"
    );
    env.run(["run", "--lock", &lock, "--", "true"])
        .assert_code(75);

    env.run(["release", "--lock", &lock, "--token", &token.to_string()])
        .assert_code(0);
    env.run(["release", "--lock", &lock, "--token", &token.to_string()])
        .assert_code(3);
    env.run([
        "run",
        "--lock",
        &lock,
        "--",
        "sh",
        "-c",
        "echo $ELECT_FENCING_TOKEN > next",
    ])
    .assert_code(0);
    let next: u64 = env.lines("next")[0].parse().expect("a token");
    assert!(
        next > token,
        "tokens grow after a forced release: {token} then {next}"
    );
}

/// The `last_run` object of `elect status --lock LOCK --json`.
fn last_run(env: &TestEnv, lock: &str) -> Value {
    let out = env.status(["--lock", lock, "--json"]);
    out.assert_no_panic();
    let doc = serde_json::from_str::<Value>(out.stdout.trim())
        .unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {out}"));
    doc["last_run"].clone()
}

/// The LAST RUN cell of `elect status --lock LOCK`: the text after the WAITERS column.
fn last_run_text(env: &TestEnv, lock: &str) -> String {
    let out = env.status(["--lock", lock]);
    let header = out.stdout.lines().next().unwrap_or("").to_owned();
    let at = header
        .find("LAST RUN")
        .unwrap_or_else(|| panic!("no LAST RUN column: {out}"));
    let row = out
        .stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(lock))
        .unwrap_or_else(|| panic!("no row for {lock}: {out}"));
    row.get(at..).unwrap_or("").trim().to_owned()
}

/// Every release records the run: holder, host, pid, token, times, duration and how it ended
/// (exit code or signal), shown by `status` as JSON and in the LAST RUN column, whether the lock
/// is free or held again.
pub fn release_records_the_last_run(env: &TestEnv) {
    let lock = env.lock("history");
    assert_eq!(last_run(env, &lock), Value::Null, "no run yet");
    let id = format!("history-{}", std::process::id());
    env.run([
        "run",
        "--lock",
        &lock,
        "--id",
        &id,
        "--",
        "sh",
        "-c",
        "echo $ELECT_FENCING_TOKEN > token; sleep 0.3",
    ])
    .assert_code(0);
    let token = env.lines("token")[0].clone();
    let run = last_run(env, &lock);
    assert_eq!(run["holder"].as_str(), Some(id.as_str()), "{run:?}");
    assert_eq!(
        run["token"].as_u64().map(|t| t.to_string()),
        Some(token),
        "{run:?}"
    );
    assert_eq!(run["exit_code"].as_u64(), Some(0), "{run:?}");
    assert!(run.get("signal").is_none(), "{run:?}");
    assert!(run["host"].as_str().is_some_and(|h| !h.is_empty()));
    assert!(run["pid"].as_u64().is_some_and(|p| p > 0));
    let duration = run["duration_ms"].as_u64().unwrap_or(0);
    assert!(
        (250..10_000).contains(&duration),
        "the job slept 300 ms: {run:?}"
    );
    for key in ["started_at", "finished_at"] {
        let t = run[key].as_str().unwrap_or("");
        assert!(t.ends_with('Z') && t.len() >= 20, "{key}: {run:?}");
    }
    let text = last_run_text(env, &lock);
    assert!(
        text.starts_with("ok ") && text.contains(" ago on "),
        "{text}"
    );

    env.run(["run", "--lock", &lock, "--", "sh", "-c", "exit 3"])
        .assert_code(3);
    assert_eq!(last_run(env, &lock)["exit_code"].as_u64(), Some(3));
    assert!(last_run_text(env, &lock).starts_with("exit 3 "));

    env.run(["run", "--lock", &lock, "--", "sh", "-c", "kill -KILL $$"])
        .assert_code(137);
    let run = last_run(env, &lock);
    assert_eq!(run["signal"].as_u64(), Some(9), "{run:?}");
    assert!(run.get("exit_code").is_none(), "{run:?}");
    assert!(last_run_text(env, &lock).starts_with("SIGKILL "));

    // While a new holder runs, the last finished run is still shown.
    let mut holder = hold(env, &lock, "holder", &[]);
    assert_eq!(last_run(env, &lock)["signal"].as_u64(), Some(9));
    release(env, &mut holder, "holder");
    assert_eq!(last_run(env, &lock)["exit_code"].as_u64(), Some(0));
}

/// `--once-per 1h`: five contenders fire within about a second, one of them with its wall clock
/// five seconds ahead (libfaketime): exactly one runs the ~200 ms job; every other one exits 75
/// with one line, and a contender that comes after the run names when and where it last ran.
pub fn once_per_runs_once_across_skewed_contenders(env: &TestEnv) {
    let lock = env.lock("once");
    let mut racers = Vec::new();
    for i in 0..5 {
        let mut cmd = env.elect();
        cmd.args([
            "run",
            "--lock",
            &lock,
            "--once-per",
            "1h",
            "--id",
            &format!("racer-{i}"),
            "--",
            "sh",
            "-c",
            "touch started.$$; sleep 0.2",
        ]);
        if i == 2 {
            // The wall clock runs 5 s ahead; the monotonic clocks of the lease deadlines are
            // left alone.
            cmd.env("LD_PRELOAD", FAKETIME_LIB)
                .env("FAKETIME", "+5s")
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
                .env("FAKETIME_NO_CACHE", "1");
        }
        racers.push(env.spawn_command(cmd));
        std::thread::sleep(Duration::from_millis(230));
    }
    let outcomes = wait_all(&mut racers);
    let started = started_jobs(env);
    assert_eq!(started, 1, "exactly one job must run: {outcomes:#?}");
    let winners: Vec<usize> = (0..5).filter(|&i| outcomes[i].code() == 0).collect();
    assert_eq!(winners.len(), 1, "exactly one elect exits 0: {outcomes:#?}");
    let winner = format!("racer-{}", winners[0]);
    for out in outcomes.iter().filter(|o| o.code() != 0) {
        out.assert_code(75).assert_no_panic();
        let line = out.one_error_line();
        assert!(
            line.contains(&format!("held by {winner}")) || line.contains("last ran ok at"),
            "a skipped contender names the holder or the last run: {line}"
        );
    }
    // After the run, the marker stands: a later contender skips, saying when and where.
    let late = env.run([
        "run",
        "--lock",
        &lock,
        "--once-per",
        "1h",
        "--",
        "touch",
        "late",
    ]);
    late.assert_code(75).assert_no_panic();
    let line = late.one_error_line();
    assert!(
        line.contains("last ran ok at")
            && line.contains(&winner)
            && line.contains(" on ")
            && line.contains(&lock),
        "the line must say when and where the job last ran: {line}"
    );
    assert!(!exists(env, "late"), "a skipped job must not run");
    // Without --once-per the marker does not matter.
    env.run(["run", "--lock", &lock, "--", "touch", "plain"])
        .assert_code(0);
    assert!(exists(env, "plain"));
}

/// A failed run leaves no `--once-per` marker, so the next trigger retries; a success then
/// leaves one.
pub fn once_per_failed_run_leaves_no_marker(env: &TestEnv) {
    let lock = env.lock("once-fail");
    let once = |job: &[&str]| {
        let mut args = vec!["run", "--lock", &lock, "--once-per", "1h", "--"];
        args.extend_from_slice(job);
        env.run(args)
    };
    once(&["sh", "-c", "exit 1"]).assert_code(1);
    once(&["sh", "-c", "kill -TERM $$"]).assert_code(143);
    once(&["touch", "retried"]).assert_code(0);
    assert!(exists(env, "retried"), "the run after a failure must run");
    let skipped = once(&["touch", "again"]);
    skipped.assert_code(75);
    assert!(skipped.one_error_line().contains("last ran ok at"));
    assert!(!exists(env, "again"));
    // --conflict-exit-code applies to this skip too.
    let mut args = vec!["run", "--lock", &lock, "--once-per", "1h"];
    args.extend_from_slice(&["--conflict-exit-code", "0", "--", "touch", "again"]);
    let quiet = env.run(args);
    quiet.assert_code(0);
    assert!(quiet.stderr.is_empty(), "{quiet}");
    assert!(!exists(env, "again"));
}

/// libfaketime as Debian installs it (package `faketime`).
const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

fn started_jobs(env: &TestEnv) -> usize {
    std::fs::read_dir(env.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("started.")
        })
        .count()
}

/// A lease that is lost while the job runs records no history: the run before it stays the last
/// one. The lease is taken away as an operator would: `elect release --token N` on a network
/// backend, removing the lock file on the file backend.
pub fn a_lost_lease_records_no_history(env: &TestEnv) {
    let lock = env.lock("lost-history");
    env.run([
        "run",
        "--lock",
        &lock,
        "--",
        "sh",
        "-c",
        "echo $ELECT_FENCING_TOKEN > first",
    ])
    .assert_code(0);
    let first: u64 = env.lines("first")[0].parse().expect("a token");
    let mut holder = env.spawn([
        "run",
        "--lock",
        &lock,
        "--ttl",
        "3s",
        "--grace",
        "500ms",
        "--once-per",
        "1h",
        "--",
        "sh",
        "-c",
        "echo $ELECT_FENCING_TOKEN > token.tmp && mv token.tmp token; exec sleep 100",
    ]);
    env.wait_for_file("token", Duration::from_secs(10));
    let token: u64 = env.lines("token")[0].parse().expect("a token");
    match env.lock_dir() {
        Some(dir) => std::fs::remove_file(dir.join(format!("{lock}.lock"))).expect("remove"),
        None => {
            env.run(["release", "--lock", &lock, "--token", &token.to_string()])
                .assert_code(0)
                .assert_no_panic();
        }
    }
    holder.wait_timeout(Duration::from_secs(10)).assert_code(76);
    let run = last_run(env, &lock);
    if env.lock_dir().is_some() {
        // A new lock file starts without history.
        assert_eq!(run, Value::Null, "{run:?}");
    } else {
        assert_eq!(run["token"].as_u64(), Some(first), "{run:?}");
    }
    // Nor a --once-per marker: the next run runs.
    env.run([
        "run",
        "--lock",
        &lock,
        "--once-per",
        "1h",
        "--",
        "touch",
        "ran",
    ])
    .assert_code(0);
    assert!(exists(env, "ran"));
}

/// `--holders 2`: five concurrent runs without `--wait`: exactly two run the job, each with its
/// own fencing token; the three others exit 75 at once.
pub fn holders_admit_n_at_once(env: &TestEnv) {
    let lock = env.lock("holders");
    let outcomes = race(
        env,
        &lock,
        &["--holders", "2"],
        "echo $ELECT_FENCING_TOKEN > started.$$; sleep 4",
    );
    assert_eq!(
        started_jobs(env),
        2,
        "exactly two jobs must run: {outcomes:#?}"
    );
    let winners = outcomes.iter().filter(|o| o.code() == 0).count();
    assert_eq!(winners, 2, "exactly two elects exit 0: {outcomes:#?}");
    for out in outcomes.iter().filter(|o| o.code() != 0) {
        out.assert_code(75).assert_no_panic();
        out.one_error_line();
        assert!(
            out.elapsed < NO_WAIT_EXIT,
            "a contender that does not wait must exit while the holder's job still runs: {out}"
        );
    }
    let mut tokens: Vec<String> = std::fs::read_dir(env.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("started."))
        .map(|e| std::fs::read_to_string(e.path()).unwrap().trim().to_owned())
        .collect();
    tokens.sort();
    tokens.dedup();
    assert_eq!(tokens.len(), 2, "each holder has its own token: {tokens:?}");
}

/// `--holders 2`: two holders show in `status` (text and JSON), a `--wait`ing third gets in when
/// one of them ends, with a greater token, and a run without `--holders` still sees the lock.
pub fn holders_wait_for_a_free_place(env: &TestEnv) {
    let lock = env.lock("places");
    let two = ["--holders", "2"];
    let token = |name: &str| token_of(env, name);
    let mut a = hold(env, &lock, "a", &two);
    let mut b = hold(env, &lock, "b", &two);

    let text = env.status(["--lock", &lock]);
    text.assert_code(0).assert_no_panic();
    let rows: Vec<&str> = text
        .stdout
        .lines()
        .filter(|l| l.split_whitespace().next() == Some(lock.as_str()))
        .collect();
    assert_eq!(rows.len(), 2, "one row per holder: {text}");
    for (row, name) in rows.iter().zip(["a", "b"]) {
        let fields: Vec<&str> = row.split_whitespace().collect();
        assert!(
            fields.contains(&"held") && fields.contains(&name),
            "row for {name}: {text}"
        );
    }
    let json = env.status(["--lock", &lock, "--json"]);
    json.assert_code(0);
    let doc = serde_json::from_str::<Value>(json.stdout.trim())
        .unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {json}"));
    let holders = doc["holders"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let ids: Vec<&str> = holders.iter().filter_map(|h| h["id"].as_str()).collect();
    assert_eq!(ids, ["a", "b"], "holders in the order they came: {json}");
    let tokens: Vec<u64> = holders.iter().filter_map(|h| h["token"].as_u64()).collect();
    assert_eq!(tokens, [token("a"), token("b")], "{json}");
    assert_eq!(doc["holder"]["id"].as_str(), Some("a"), "{json}");

    // Full: a third without --wait is turned away; a plain mutex user is too.
    let third = env.run([
        "run",
        "--lock",
        &lock,
        "--holders",
        "2",
        "--",
        "sh",
        "-c",
        "touch ran.third",
    ]);
    third.assert_code(75).assert_no_panic();
    let plain = env.run(["run", "--lock", &lock, "--", "sh", "-c", "touch ran.plain"]);
    plain.assert_code(75).assert_no_panic();
    assert!(!exists(env, "ran.third") && !exists(env, "ran.plain"));

    let mut c = spawn_holder(env, &lock, "c", &["--holders", "2", "--wait"]);
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        c.is_running() && !exists(env, "c.pid"),
        "a --wait contender must block while both places are taken"
    );
    release(env, &mut b, "b");
    env.read_pid("c.pid");
    assert!(
        token("c") > token("a").max(token("b")),
        "tokens grow across places: a {} b {} c {}",
        token("a"),
        token("b"),
        token("c")
    );
    let json = env.status(["--lock", &lock, "--json"]);
    let doc = serde_json::from_str::<Value>(json.stdout.trim()).expect("JSON");
    let ids: Vec<String> = doc["holders"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|h| h["id"].as_str().map(str::to_owned))
        .collect();
    assert!(
        ids.len() == 2 && ids.contains(&"a".to_owned()) && ids.contains(&"c".to_owned()),
        "a and c hold: {json}"
    );
    release(env, &mut a, "a");
    release(env, &mut c, "c");
    env.status(["--lock", &lock]).assert_code(3);
}

/// `--holders 3 --wait`: seven contenders all run in the end, never more than three at once,
/// and three at once at some point.
pub fn holders_never_exceed_n(env: &TestEnv) {
    let lock = env.lock("crowd");
    let mut runs: Vec<Running> = (0..7)
        .map(|_| {
            env.spawn([
                "run",
                "--lock",
                &lock,
                "--holders",
                "3",
                "--wait",
                "--",
                "sh",
                "-c",
                "echo start >> events; sleep 0.6; echo end >> events",
            ])
        })
        .collect();
    let outcomes = wait_all(&mut runs);
    for out in &outcomes {
        out.assert_code(0).assert_no_panic();
    }
    let events = env.lines("events");
    let (mut now, mut most) = (0i32, 0i32);
    for e in &events {
        now += if e == "start" { 1 } else { -1 };
        most = most.max(now);
    }
    assert_eq!(events.len(), 14, "every job ran: {events:?}");
    assert_eq!(
        most, 3,
        "at most, and at some point, three at once: {events:?}"
    );
}

/// `--holders 2`, ttl 2 s: one of two holders' elect is killed with SIGKILL; a `--wait`ing third
/// gets the freed place within ttl + 1.5 s (at once on the file backend), with a larger token,
/// while the other holder runs on undisturbed.
pub fn holders_a_killed_holder_frees_its_place(env: &TestEnv) {
    let lock = env.lock("places-kill9");
    let mut extra = vec!["--holders", "2"];
    extra.extend(SHORT);
    let token = |name: &str| token_of(env, name);
    let mut a = hold(env, &lock, "a", &extra);
    let mut b = spawn_holder(env, &lock, "b", &extra);
    let b_job = env.read_pid("b.pid");
    let mut waiting = extra.clone();
    waiting.push("--wait");
    let mut c = spawn_holder(env, &lock, "c", &waiting);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !exists(env, "c.pid"),
        "the waiter got in while both places were taken"
    );

    b.signal("KILL");
    let killed_at = Instant::now();
    assert_eq!(b.wait().killed_by(), Some(9));
    env.read_pid("c.pid");
    let took = killed_at.elapsed();
    assert!(
        took < Duration::from_millis(3500),
        "the killed holder's place was free only after {took:?} (ttl 2 s)"
    );
    assert!(!is_alive(b_job), "the killed holder's job still runs");
    assert!(token("c") > token("a").max(token("b")), "tokens grow");
    assert!(a.is_running(), "the other holder must run on");
    release(env, &mut a, "a");
    release(env, &mut c, "c");
}

/// `ps` tells the watchdog from elect: `elect: watchdog for LOCK`, short name `lease-watchdog`.
pub fn watchdog_is_named(env: &TestEnv) {
    let lock = env.lock("named");
    let script = format!("{}; {}", write_pid("main.pid"), until_exists("done"));
    let mut run = env.spawn(["run", "--lock", &lock, "--", "sh", "-c", &script]);
    env.read_pid("main.pid");
    let watchdog = watchdog_of(run.pid()).expect("elect has a child named lease-watchdog");
    // The watchdog names itself just after it reports the start, so perhaps after the job ran.
    let expected = format!("elect: watchdog for {lock}");
    let mut shown = String::new();
    let named = becomes(Duration::from_secs(5), || {
        let cmdline = std::fs::read(format!("/proc/{watchdog}/cmdline")).unwrap_or_default();
        shown = String::from_utf8_lossy(&cmdline)
            .trim_end_matches('\0')
            .to_owned();
        shown == expected
    });
    assert!(
        named,
        "the watchdog's command line is {shown:?}, not {expected:?}"
    );
    std::fs::write(env.file("done"), "").expect("write done");
    run.wait().assert_code(0);
}

/// Issue "two guards", case 1: `kill -9` of the watchdog alone. The job's main process dies with
/// it; elect stops what the job left in the background (here a process that ignores SIGTERM, so
/// SIGKILL after the grace), releases the lease only once it is gone, and exits 70.
pub fn job_is_stopped_when_the_watchdog_is_killed(env: &TestEnv) {
    let lock = env.lock("wd-killed");
    let script = format!(
        "(trap '' TERM; exec sleep 100) & echo $! > bg.pid.tmp && mv bg.pid.tmp bg.pid; {}; wait",
        write_pid("main.pid")
    );
    let mut args = vec!["run", "--lock", &lock];
    args.extend(SHORT);
    args.extend(["--", "sh", "-c", &script]);
    let mut run = env.spawn(args);
    let main = env.read_pid("main.pid");
    let bg = env.read_pid("bg.pid");
    let watchdog = watchdog_of(run.pid()).expect("elect's watchdog");
    signal(watchdog, "KILL");
    let killed_at = Instant::now();
    // A newcomer at once: the lease is still held (elect keeps it while it stops the job).
    let early = env.run(["run", "--lock", &lock, "--", "touch", "early.ran"]);
    let bg_alive = is_alive(bg);
    let out = run.wait();
    out.assert_code(70);
    assert!(
        out.stderr.contains("watchdog") && out.stderr.contains("stopped the job itself"),
        "{out}"
    );
    assert!(
        !is_alive(main),
        "the job's main process dies with the watchdog"
    );
    assert!(
        !is_alive(bg),
        "the job's background process outlived elect ({:?} after the kill)",
        killed_at.elapsed()
    );
    if bg_alive {
        assert_eq!(
            early.status.code(),
            Some(75),
            "a newcomer ran while the old job's background process ({bg}) lived: {early}"
        );
    }
    // Released: a newcomer runs at once.
    env.run(["run", "--lock", &lock, "--", "touch", "after.ran"])
        .assert_code(0);
    assert!(exists(env, "after.ran"));
}

/// Shell that writes the pid of the shell running it, as the machine numbers it, into `file`:
/// `$$` is the pid in the job's own PID namespace, `/proc/self` (the machine's /proc) is not.
fn write_host_pid(file: &str) -> String {
    format!("read p _ < /proc/self/stat; echo $p > {file}.tmp && mv {file}.tmp {file}")
}

/// The times (ns since the epoch) written one a line into `name`.
fn beats(env: &TestEnv, name: &str) -> Vec<u128> {
    env.lines(name)
        .iter()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "--pid-namespace needs root: run these tests as root"
    );
}

/// Issue "two guards", case 3, with `--pid-namespace`: `kill -9` of elect and its watchdog
/// together. The job's processes, a setsid'd background one that ignores SIGTERM included, die
/// with the watchdog (the kernel empties the namespace when its init dies). A newcomer at once
/// and one that waits past the ttl never run while any of them does: the background process's
/// last beat comes before either newcomer's job starts.
pub fn job_dies_with_elect_and_watchdog_in_a_pid_namespace(env: &TestEnv) {
    require_root();
    let lock = env.lock("pidns-both");
    let script = format!(
        "setsid sh -c '{}; trap \"\" TERM; while :; do date +%s%N >> bg.beats; sleep 0.05; done' & {}; wait",
        write_host_pid("bg.pid"),
        write_host_pid("main.pid")
    );
    let mut args = vec!["run", "--lock", &lock, "--pid-namespace"];
    args.extend(SHORT);
    args.extend(["--", "sh", "-c", &script]);
    let mut run = env.spawn(args);
    let bg = env.read_pid("bg.pid");
    let main = env.read_pid("main.pid");
    // By pid and start time: pids are reused quickly on a busy machine (pid_max 32768).
    let started = |pid: i32| proc_stat(pid).expect("a live process").start;
    let (bg_start, main_start) = (started(bg), started(main));
    let lives = move |pid: i32, start: u64| {
        proc_stat(pid).is_some_and(|s| s.start == start && s.state != 'Z' && s.state != 'X')
    };
    assert!(becomes(APPEAR, || !beats(env, "bg.beats").is_empty()));
    let watchdog = watchdog_of(run.pid()).expect("elect's watchdog");
    // Stopped first, so that neither sees the other die and stops the job.
    run.signal("STOP");
    signal(watchdog, "STOP");
    signal(watchdog, "KILL");
    run.signal("KILL");
    let killed = Instant::now();
    assert_eq!(run.wait().killed_by(), Some(9));
    assert!(
        becomes(Duration::from_secs(5), || !lives(bg, bg_start)),
        "the job's setsid'd background process outlived elect and its watchdog"
    );
    eprintln!(
        "the background process was gone {:?} after the kill",
        killed.elapsed()
    );
    assert!(
        !lives(main, main_start),
        "the job's main process outlived the watchdog"
    );
    let newcomer = |name: &str, wait: &[&str]| {
        let mut args = vec!["run", "--lock", &lock];
        args.extend(wait);
        let job = format!("date +%s%N > {name}.at");
        args.extend(["--", "sh", "-c", &job]);
        let out = env.run(args);
        (out.status.code() == Some(0)).then(|| beats(env, &format!("{name}.at"))[0])
    };
    let at_once = newcomer("at-once", &[]);
    let later = newcomer("later", &["--wait=10s"]).expect("a newcomer runs after the ttl");
    let last_beat = *beats(env, "bg.beats").iter().max().unwrap();
    for start in at_once.into_iter().chain([later]) {
        assert!(
            start > last_beat,
            "a newcomer's job started {} ms before the old job's last beat",
            (last_beat - start) / 1_000_000
        );
    }
}

/// Issue "lost replies", 5: an `--on-acquired` hook runs while the lease is held, so it is fenced
/// like the job. elect is stopped (it can enforce neither the deadline nor the hook's timeout),
/// the ttl passes, and the watchdog stops the job by the deadline: the hook, which writes in a
/// loop, stops with it, before a newcomer's job starts. The same when the job has ended already
/// and elect, stopped, waits for the hook with the lease still held.
pub fn on_acquired_hook_is_fenced_when_elect_is_stopped(env: &TestEnv) {
    hook_is_fenced(env, "while-job-runs", &["sleep", "60"], 76);
    // A job that outlives the hook's start, so that the hook joins its group.
    hook_is_fenced(env, "after-job-ended", &["sleep", "0.5"], 0);
}

fn hook_is_fenced(env: &TestEnv, case: &str, job: &[&str], code: i32) {
    let lock = env.lock(&format!("hook-fenced-{case}"));
    let _ = std::fs::remove_file(env.file("hook.pid"));
    let _ = std::fs::remove_file(env.file("hook.beats"));
    let hook = format!(
        "{}; while :; do date +%s%N >> hook.beats; sleep 0.05; done",
        write_host_pid("hook.pid")
    );
    let mut args = vec!["run", "--lock", &lock, "--hook-timeout", "60s"];
    args.extend(SHORT);
    args.extend(["--on-acquired", &hook, "--"]);
    args.extend(job);
    let mut run = env.spawn(args);
    let hook_pid = env.read_pid("hook.pid");
    // By pid and start time: pids are reused quickly on a busy machine.
    let hook_start = proc_stat(hook_pid).expect("the hook runs").start;
    assert!(becomes(APPEAR, || !beats(env, "hook.beats").is_empty()));
    run.signal("STOP");
    let stopped = Instant::now();
    // The lease expires within the ttl (2 s) of elect's stop; a newcomer waits for it.
    let newcomer = env.run([
        "run",
        "--lock",
        &lock,
        "--wait=10s",
        "--",
        "sh",
        "-c",
        "date +%s%N > newcomer.at",
    ]);
    newcomer.assert_code(0);
    let hook_alive = proc_stat(hook_pid).is_some_and(|s| s.start == hook_start && s.state != 'Z');
    let last_beat = *beats(env, "hook.beats").iter().max().unwrap();
    if hook_alive {
        signal(hook_pid, "KILL");
    }
    assert!(
        !hook_alive,
        "{case}: the hook still ran {:?} after elect was stopped, past the lease deadline",
        stopped.elapsed()
    );
    run.signal("CONT");
    run.wait().assert_code(code);
    let start = beats(env, "newcomer.at")[0];
    assert!(
        start > last_beat,
        "{case}: the hook wrote {} ms after the newcomer's job started",
        (last_beat - start) / 1_000_000
    );
}
