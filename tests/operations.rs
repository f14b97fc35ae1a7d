//! Production operations, end to end: --max-runtime, hooks, systemd notifications, the config
//! file and `elect config`, metrics. Forced release runs in the battery on every backend.

mod support {
    pub mod battery;
    pub mod env;
    pub mod process;
}

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use support::env::TestEnv;
use support::process::is_alive;

#[test]
fn max_runtime_stops_the_job_and_exits_124() {
    let env = TestEnv::new();
    let lock = env.lock("maxrt");
    let started = Instant::now();
    let out = env.run([
        "run",
        "--lock",
        &lock,
        "--max-runtime",
        "500ms",
        "--grace",
        "300ms",
        "--",
        "sh",
        "-c",
        "echo $$ > job.pid; trap '' TERM; sleep 30",
    ]);
    out.assert_code(124).assert_no_panic();
    assert!(out.one_error_line().contains("--max-runtime"), "{out}");
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(5),
        "a job ignoring SIGTERM must be killed after the grace: {elapsed:?}"
    );
    let job: i32 = env.lines("job.pid")[0].parse().unwrap();
    assert!(!is_alive(job));
    // The lock was released after the job was gone.
    env.run(["run", "--lock", &lock, "--", "true"])
        .assert_code(0);
}

#[test]
fn hooks_run_on_acquired_busy_and_lost() {
    let env = TestEnv::new();
    let lock = env.lock("hooks");
    let log = env.file("hooks.log");
    let log = log.display();
    let mut holder = env.spawn([
        "run",
        "--lock",
        &lock,
        "--ttl",
        "2s",
        "--grace",
        "300ms",
        "--on-acquired",
        &format!("echo acquired $ELECT_LOCK $ELECT_FENCING_TOKEN >> {log}"),
        "--on-lost",
        &format!("echo lost $ELECT_LOCK >> {log}; sleep 30"),
        "--hook-timeout",
        "1s",
        "--",
        "sh",
        "-c",
        "touch started; sleep 30",
    ]);
    env.wait_for_file("started", Duration::from_secs(10));
    let busy = env.run([
        "run",
        "--lock",
        &lock,
        "--on-busy",
        &format!("echo busy $ELECT_LOCK held-by $ELECT_HELD_BY_PID >> {log}"),
        "--",
        "true",
    ]);
    busy.assert_code(75);
    // Losing the lease: the lock file deleted under the holder.
    let lock_file = env.lock_dir().unwrap().join(format!("{lock}.lock"));
    std::fs::remove_file(lock_file).unwrap();
    let started = Instant::now();
    let out = holder.wait();
    assert_eq!(out.code(), 76, "{out}");
    // The on-lost hook sleeps 30 s and is killed after its 1 s timeout; it must not hold the
    // stop of the job or elect's exit for longer than that.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let lines = env.lines("hooks.log");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("acquired {lock} "))),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l == &format!("busy {lock} held-by {}", holder.pid())),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l == &format!("lost {lock}")),
        "{lines:?}"
    );
}

#[test]
fn a_failing_hook_does_not_change_the_exit_code() {
    let env = TestEnv::new();
    let lock = env.lock("badhook");
    let out = env.run([
        "run",
        "--lock",
        &lock,
        "--on-acquired",
        "exit 9",
        "--",
        "sh",
        "-c",
        "exit 3",
    ]);
    out.assert_code(3);
}

#[test]
fn systemd_gets_ready_status_and_watchdog_pings() {
    let env = TestEnv::new();
    let lock = env.lock("notify");
    let socket_path = env.file("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut cmd = env.elect();
    cmd.env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "2000000")
        .args([
            "run",
            "--lock",
            &lock,
            "--ttl",
            "1s",
            "--grace",
            "200ms",
            "--",
            "sh",
            "-c",
            "echo ${NOTIFY_SOCKET:-unset} > job.notify; sleep 1.2",
        ]);
    env.run_command(cmd).assert_code(0);
    let mut messages = Vec::new();
    let mut buf = [0u8; 512];
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    while let Ok(n) = socket.recv(&mut buf) {
        messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(
        messages[0].starts_with("READY=1\nSTATUS=holding"),
        "{messages:?}"
    );
    let pings = messages.iter().filter(|m| *m == "WATCHDOG=1").count();
    assert!(pings >= 2, "a renew every ~333 ms for 1.2 s: {messages:?}");
    assert_eq!(messages.last().map(String::as_str), Some("STOPPING=1"));
    assert_eq!(
        env.lines("job.notify"),
        ["unset"],
        "the job must not inherit NOTIFY_SOCKET"
    );
}

#[test]
fn config_file_sits_between_environment_and_defaults() {
    let env = TestEnv::new();
    let other = env.file("other-locks");
    let conf = env.file("elect.conf");
    std::fs::write(
        &conf,
        format!(
            "# settings\nELECT_LOCK_DIR={}\nELECT_TTL=30s\nELECT_GRACE=\"4s\"\n",
            other.display()
        ),
    )
    .unwrap();
    let conf_arg = conf.display().to_string();
    // The file's lock directory is used: the environment does not set one for --config runs.
    let mut cmd = env.elect();
    cmd.env_remove("ELECT_LOCK_DIR")
        .env("ELECT_TTL", "20s")
        .args(["--config", &conf_arg, "config"]);
    let out = env.run_command(cmd);
    out.assert_code(0);
    let text = out.stdout.clone();
    let row = |key: &str| {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(key))
            .unwrap_or_else(|| panic!("no {key} in:\n{text}"))
            .to_owned()
    };
    assert!(row("ELECT_TTL").contains("20s") && row("ELECT_TTL").ends_with("environment"));
    assert!(row("ELECT_GRACE").contains("4s") && row("ELECT_GRACE").contains("file"));
    assert!(row("ELECT_RENEW").ends_with("unset"));
    assert!(row("ELECT_CONFLICT_EXIT_CODE").ends_with("default"));

    let mut cmd = env.elect();
    cmd.env_remove("ELECT_LOCK_DIR").args([
        "run",
        "--config",
        &conf_arg,
        "--lock",
        "from-conf",
        "--",
        "true",
    ]);
    env.run_command(cmd).assert_code(0);
    assert!(other.join("from-conf.lock").exists());
}

#[test]
fn config_file_with_a_password_must_be_private() {
    let env = TestEnv::new();
    let conf = env.file("secret.conf");
    std::fs::write(&conf, "ELECT_BACKEND=redis://:hunter2@127.0.0.1:1\n").unwrap();
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o644)).unwrap();
    let conf_arg = conf.display().to_string();
    let out = env.run(["--config", &conf_arg, "config"]);
    out.assert_code(2).assert_no_panic();
    let line = out.one_error_line();
    assert!(
        line.contains("chmod 600") && !line.contains("hunter2"),
        "{line}"
    );
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = env.run(["--config", &conf_arg, "config"]);
    out.assert_code(0);
    let text = &out.stdout;
    assert!(
        text.contains("redis://:***@127.0.0.1:1") && !text.contains("hunter2"),
        "{text}"
    );
    let bad = env.file("bad.conf");
    std::fs::write(&bad, "ELECT_TTLL=3s\n").unwrap();
    let out = env.run(["--config", &bad.display().to_string(), "config"]);
    out.assert_code(2);
    assert!(
        out.one_error_line().contains("unknown key ELECT_TTLL"),
        "{out}"
    );
}

#[test]
fn metrics_file_records_the_outcome() {
    let env = TestEnv::new();
    let lock = env.lock("metrics");
    let metrics = env.file("run.prom");
    let path = metrics.display().to_string();
    env.run([
        "run",
        "--lock",
        &lock,
        "--metrics-file",
        &path,
        "--",
        "sh",
        "-c",
        "exit 5",
    ])
    .assert_code(5);
    let text = std::fs::read_to_string(&metrics).unwrap();
    assert!(
        text.contains(&format!(
            "elect_outcome{{lock=\"{lock}\",outcome=\"ran\"}} 1"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("elect_exit_code{{lock=\"{lock}\"}} 5")),
        "{text}"
    );
    assert!(
        text.contains("# TYPE elect_renewals_total counter"),
        "{text}"
    );

    let mut holder = env.spawn([
        "run",
        "--lock",
        &lock,
        "--",
        "sh",
        "-c",
        "touch held; sleep 30",
    ]);
    env.wait_for_file("held", Duration::from_secs(10));
    env.run([
        "run",
        "--lock",
        &lock,
        "--metrics-file",
        &path,
        "--",
        "true",
    ])
    .assert_code(75);
    let text = std::fs::read_to_string(&metrics).unwrap();
    assert!(
        text.contains(&format!(
            "elect_outcome{{lock=\"{lock}\",outcome=\"skipped\"}} 1"
        )),
        "{text}"
    );
    holder.signal("TERM");
    holder.wait();
}
