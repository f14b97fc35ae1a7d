//! No panic from any input: numbers and durations elect cannot represent are usage errors
//! (exit 2), from flags, the environment, configuration files and URLs; the longest accepted
//! values run a job to its end, release and record; a start order too long for the job's
//! launcher never starts the job.

mod support {
    pub mod env;
    pub mod process;
}

use support::env::TestEnv;

/// Exit 2, an `error:` line naming the problem, and no panic.
fn assert_usage(out: &support::env::Outcome, what: &str) {
    out.assert_code(2);
    let err = &out.stderr;
    assert!(!err.contains("panicked"), "{what}: {err}");
    assert!(err.contains("error"), "{what}: {err}");
}

#[test]
fn unrepresentable_durations_are_usage_errors() {
    let env = TestEnv::new();
    let lock = env.lock("big");
    for flag in [
        "--grace=18446744073709551615s",
        "--ttl=600000y",
        "--ttl=18446744073709551615s",
        "--renew=101y",
        "--once-per=18446744073709551615s",
        "--once-per=584542046090y",
        "--max-runtime=600000y",
        "--hook-timeout=18446744073709551615s",
        "--wait=18446744073709551615s",
        "--ttl=18446744073709551616s",
    ] {
        let out = env.run(["run", "--lock", &lock, flag, "--", "true"]);
        assert_usage(&out, flag);
        assert!(
            out.stderr.contains("at most 100 years") || out.stderr.contains("too large"),
            "{flag}: {}",
            out.stderr
        );
    }
    // From the environment and from a configuration file.
    let mut cmd = env.elect();
    cmd.env("ELECT_GRACE", "18446744073709551615s")
        .args(["run", "--lock", &lock, "--", "true"]);
    assert_usage(&env.run_command(cmd), "ELECT_GRACE");
    let conf = env.file("big.conf");
    std::fs::write(&conf, "ELECT_ONCE_PER=600000y\n").unwrap();
    let out = env.run([
        "--config",
        conf.to_str().unwrap(),
        "run",
        "--lock",
        &lock,
        "--",
        "true",
    ]);
    assert_usage(&out, "config file");
    // From a URL.
    let mut cmd = env.elect();
    cmd.env(
        "ELECT_BACKEND",
        "postgres://u@127.0.0.1:1/db?connect_timeout=18446744073709551615",
    )
    .args(["run", "--lock", &lock, "--", "true"]);
    assert_usage(&env.run_command(cmd), "connect_timeout");
    assert!(!env.file("ran").exists(), "no job ran on a refused setting");
}

#[test]
fn the_longest_settings_run_release_and_record() {
    let env = TestEnv::new();
    let lock = env.lock("long");
    let out = env.run([
        "run",
        "--lock",
        &lock,
        "--ttl=100y",
        "--grace=10y",
        "--once-per=100y",
        "--max-runtime=100y",
        "--hook-timeout=100y",
        "--on-acquired=true",
        "--wait=100y",
        "--",
        "sh",
        "-c",
        "echo ran >> ran",
    ]);
    out.assert_code(0);
    // The release recorded the --once-per marker: the next run is skipped.
    let out = env.run([
        "run",
        "--lock",
        &lock,
        "--once-per=100y",
        "--",
        "sh",
        "-c",
        "echo ran >> ran",
    ]);
    out.assert_code(75);
    assert_eq!(env.lines("ran"), ["ran"]);
}

#[test]
fn a_start_order_too_long_for_the_launcher_never_starts_the_job() {
    let env = TestEnv::new();
    let lock = env.lock("order");
    let mut cmd = env.elect();
    // Each is withheld from the job, so each name rides in the start order: 12 KiB of them.
    for i in 0..500 {
        cmd.env(format!("ELECT_LONG_NAME_{i:04}_PASSWORD"), "s");
    }
    cmd.args(["run", "--lock", &lock, "--", "sh", "-c", "env > ran"]);
    let out = env.run_command(cmd);
    assert_ne!(out.code(), 0, "{}", out.stderr);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    assert!(
        !env.file("ran").exists(),
        "the job ran with a cut start order"
    );
}

#[test]
fn a_fifo_for_a_file_elect_reads_is_refused_without_hanging() {
    let env = TestEnv::new();
    let fifo = env.file("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let fifo = fifo.to_str().unwrap();
    let out = env.run(["run", "--lock", "x", "--backend-file", fifo, "--", "true"]);
    assert_usage(&out, "--backend-file");
    assert!(out.stderr.contains("not a regular file"), "{}", out.stderr);
    let out = env.run(["--config", fifo, "config"]);
    assert_usage(&out, "--config");
    assert!(out.stderr.contains("not a regular file"), "{}", out.stderr);
}
