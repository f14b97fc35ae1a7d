//! `elect` end to end on the file backend: the shared battery of scenarios, then what only the
//! file backend has (the lock file on disk, its directory, the terminal).

mod support {
    pub mod battery;
    pub mod battery_tests;
    pub mod env;
    pub mod process;
}

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use support::battery_tests;
use support::env::{until_exists, wait_for, write_pid, TestEnv};
use support::process::is_alive;

/// A battery scenario on a file backend of its own.
fn on_file(_test: &str, scenario: fn(&TestEnv)) {
    scenario(&TestEnv::new());
}

battery_tests::tests!(on_file; common, job_dies_with_elect_and_watchdog_in_a_pid_namespace);

fn lock_path(env: &TestEnv, lock: &str) -> PathBuf {
    env.lock_dir()
        .expect("a file backend")
        .join(format!("{lock}.lock"))
}

/// Runs a job under `--ttl 2s --grace 500ms`, does `tamper` to its lock file, and checks that
/// the job is stopped and elect exits 76 within renew (ttl / 3) + grace + 1 s.
fn lease_is_lost_when(tamper: impl FnOnce(&Path)) {
    let env = TestEnv::new();
    let lock = env.lock("tampered");
    let script = format!("{}; {}", write_pid("main.pid"), until_exists("never"));
    let mut run = env.spawn([
        "run", "--lock", &lock, "--ttl", "2s", "--grace", "500ms", "--", "sh", "-c", &script,
    ]);
    let main = env.read_pid("main.pid");
    let path = lock_path(&env, &lock);
    assert!(path.is_file(), "the lock file {} exists", path.display());
    tamper(&path);
    let tampered = Instant::now();
    let out = run.wait();
    out.assert_code(76).assert_no_panic();
    let bound = Duration::from_millis(667 + 500 + 1000);
    let took = out.finished_at.duration_since(tampered);
    assert!(
        took < bound,
        "elect must notice within a renew interval and stop the job within the grace: took \
         {took:?}, bound {bound:?}: {out}"
    );
    assert!(
        !is_alive(main),
        "the job (pid {main}) still runs after exit 76"
    );
    let errors: Vec<_> = out
        .stderr_lines()
        .into_iter()
        .filter(|l| l.starts_with("elect: error: "))
        .collect();
    assert!(
        errors.len() == 1 && errors[0].contains(&lock),
        "one error line naming the lock: {out}"
    );
    // The lock can be taken again (on the new file).
    env.run(["run", "--lock", &lock, "--", "true"])
        .assert_code(0);
}

#[test]
fn deleted_lock_file_loses_the_lease() {
    lease_is_lost_when(|path| std::fs::remove_file(path).unwrap());
}

#[test]
fn replaced_lock_file_loses_the_lease() {
    lease_is_lost_when(|path| {
        let other = path.with_extension("other");
        std::fs::write(&other, "").unwrap();
        std::fs::rename(&other, path).unwrap();
    });
}

#[test]
fn symlink_at_the_lock_path_is_refused() {
    let env = TestEnv::new();
    let lock = env.lock("planted");
    std::fs::create_dir_all(env.lock_dir().unwrap()).unwrap();
    let path = lock_path(&env, &lock);

    // To a file that does not exist: it must not be created.
    let missing = env.file("missing-target");
    std::os::unix::fs::symlink(&missing, &path).unwrap();
    let out = env.run(["run", "--lock", &lock, "--", "touch", "ran"]);
    out.assert_code(69).assert_no_panic();
    let line = out.one_error_line();
    assert!(line.contains("symlink"), "the line says why: {line}");
    assert!(
        !missing.exists(),
        "elect followed the symlink and created its target"
    );

    // To a file that exists: it must not be modified.
    std::fs::remove_file(&path).unwrap();
    let precious = env.file("precious");
    std::fs::write(&precious, "precious data\n").unwrap();
    let before = std::fs::metadata(&precious).unwrap().modified().unwrap();
    std::os::unix::fs::symlink(&precious, &path).unwrap();
    let out = env.run(["run", "--lock", &lock, "--", "touch", "ran"]);
    out.assert_code(69);
    out.one_error_line();
    assert_eq!(
        std::fs::read_to_string(&precious).unwrap(),
        "precious data\n"
    );
    assert_eq!(
        std::fs::metadata(&precious).unwrap().modified().unwrap(),
        before
    );
    assert!(!env.file("ran").exists(), "the job must not run");

    let status = env.status(["--lock", &lock]);
    status.assert_code(69).assert_no_panic();
    status.one_error_line();
}

#[test]
fn garbage_in_the_lock_file_is_refused() {
    let env = TestEnv::new();
    let lock = env.lock("garbage");
    std::fs::create_dir_all(env.lock_dir().unwrap()).unwrap();
    let path = lock_path(&env, &lock);
    let garbage = "this is not an elect lock file\n";
    std::fs::write(&path, garbage).unwrap();
    let out = env.run(["run", "--lock", &lock, "--", "touch", "ran"]);
    out.assert_code(69).assert_no_panic();
    let line = out.one_error_line();
    assert!(line.contains(&lock), "the line names the lock file: {line}");
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        garbage,
        "elect must not overwrite a file it did not write"
    );
    assert!(!env.file("ran").exists(), "the job must not run");
}

/// Lock directories that cannot be used, even by root: below a regular file, or a regular file.
#[test]
fn unusable_lock_directory_exits_69() {
    let env = TestEnv::new();
    let plain = env.file("plain-file");
    std::fs::write(&plain, "").unwrap();
    for dir in [plain.join("sub"), plain.clone()] {
        let mut cmd = env.elect();
        cmd.env("ELECT_LOCK_DIR", &dir)
            .args(["run", "--lock", "x", "--", "touch", "ran"]);
        let out = env.run_command(cmd);
        out.assert_code(69).assert_no_panic();
        let line = out.one_error_line();
        assert!(
            line.contains(&*plain.to_string_lossy()),
            "the line names the directory: {line}"
        );
    }
    assert!(!env.file("ran").exists(), "the job must not run");
}

/// Checks that a run with `args` uses the lock directory `dir`, and that status finds it there.
fn uses_directory(env: &TestEnv, dir: &Path, args: &[&str]) {
    let lock = env.lock("by-url");
    let mut run = env.elect();
    run.arg("run")
        .args(args)
        .args(["--lock", &lock, "--", "sh", "-c"])
        .arg(format!(
            "echo \"$ELECT_BACKEND\" > backend.out; {}; {}",
            write_pid("job.pid"),
            until_exists("job.go")
        ));
    let mut running = env.spawn_command(run);
    env.read_pid("job.pid");
    assert!(
        dir.join(format!("{lock}.lock")).is_file(),
        "the lock file must be in {}",
        dir.display()
    );
    assert!(
        !lock_path(env, &lock).exists(),
        "the URL must win over ELECT_LOCK_DIR"
    );
    assert_eq!(
        env.lines("backend.out"),
        [format!("file://{}", dir.display())]
    );
    let mut status = env.elect();
    status.arg("status").args(args).args(["--lock", &lock]);
    env.run_command(status).assert_code(0);
    std::fs::write(env.file("job.go"), "").unwrap();
    running.wait().assert_code(0);
}

#[test]
fn backend_url_names_the_directory() {
    let env = TestEnv::new();
    let dir = env.file("by-url");
    uses_directory(
        &env,
        &dir,
        &["--backend", &format!("file://{}", dir.display())],
    );
}

#[test]
fn backend_file_holds_the_url() {
    let env = TestEnv::new();
    let dir = env.file("by-file");
    let url_file = env.file("backend.url");
    std::fs::write(&url_file, format!("file://{}\n", dir.display())).unwrap();
    uses_directory(&env, &dir, &["--backend-file", &url_file.to_string_lossy()]);
}

/// A tmux server of a test's own (its socket in the test's directory), killed on drop.
struct Tmux {
    socket: PathBuf,
    session: String,
}

impl Tmux {
    /// Starts a detached 120x30 session running `command` (a shell command line).
    fn start(env: &TestEnv, name: &str, command: &str) -> Self {
        let tmux = Self {
            socket: env.file("tmux.sock"),
            session: format!("elect-{name}-{}", std::process::id()),
        };
        let out = tmux
            .command()
            .args(["-f", "/dev/null", "new-session", "-d", "-s", &tmux.session])
            .args(["-x", "120", "-y", "30", command])
            .output()
            .expect("tmux is needed for the interactive tests: apt-get install tmux");
        assert_success("tmux new-session", &out);
        tmux
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new("tmux");
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ELECT_") || key == "TMUX" {
                cmd.env_remove(key);
            }
        }
        cmd.arg("-S").arg(&self.socket);
        cmd
    }

    fn send_keys(&self, keys: &[&str]) {
        let out = self
            .command()
            .args(["send-keys", "-t", &self.session])
            .args(keys)
            .output()
            .unwrap();
        assert_success("tmux send-keys", &out);
    }

    fn screen(&self) -> String {
        let out = self
            .command()
            .args(["capture-pane", "-p", "-t", &self.session])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.command().arg("kill-server").output();
    }
}

fn assert_success(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A script that runs `elect run --lock LOCK -- JOB...` in this environment and writes elect's
/// exit code into `code`.
fn elect_script(env: &TestEnv, lock: &str, job: &str) -> String {
    let script = env.script(
        "interactive.sh",
        &format!(
            "cd '{dir}'\nELECT_LOCK_DIR='{locks}' '{elect}' run --lock {lock} -- {job}\necho $? > code",
            dir = env.path().display(),
            locks = env.lock_dir().unwrap().display(),
            elect = env!("CARGO_BIN_EXE_elect"),
        ),
    );
    format!("sh '{}'", script.display())
}

/// In a terminal, the job is in the foreground: an interactive shell under elect reads what is
/// typed and runs it.
#[test]
fn interactive_job_reads_the_terminal() {
    let env = TestEnv::new();
    let lock = env.lock("tty");
    let tmux = Tmux::start(
        &env,
        "tty",
        &elect_script(&env, &lock, "bash --norc --noprofile -i"),
    );
    let expected = format!("hi-{lock}");
    let mut screen = String::new();
    // Typed before bash is ready, the keys wait in the terminal's input queue.
    tmux.send_keys(&["echo hi-$ELECT_LOCK", "Enter"]);
    let shown = support::env::becomes(Duration::from_secs(10), || {
        screen = tmux.screen();
        screen.lines().any(|l| l.trim() == expected)
    });
    assert!(
        shown,
        "the job did not run the typed command; screen:\n{screen}"
    );
    tmux.send_keys(&["exit", "Enter"]);
    wait_for("elect to exit", Duration::from_secs(10), || {
        !env.lines("code").is_empty()
    });
    assert_eq!(env.lines("code"), ["0"], "screen:\n{}", tmux.screen());
}

/// Ctrl-C at the terminal reaches the job once (from the kernel, not again from elect).
#[test]
fn ctrl_c_reaches_the_job_once() {
    let env = TestEnv::new();
    let lock = env.lock("ctrl-c");
    env.script(
        "trap-int.sh",
        &format!(
            "trap 'echo got-int >> ints' INT\n{}\nsleep 5\nsleep 1",
            write_pid("ready")
        ),
    );
    let tmux = Tmux::start(&env, "ctrl-c", &elect_script(&env, &lock, "./trap-int.sh"));
    let job = env.read_pid("ready");
    // Ctrl-C once the job's `sleep 5` runs (before, it would reach the shell alone).
    wait_for("the job's sleep to start", Duration::from_secs(10), || {
        let children =
            std::fs::read_to_string(format!("/proc/{job}/task/{job}/children")).unwrap_or_default();
        children.split_whitespace().any(|child| {
            std::fs::read_to_string(format!("/proc/{child}/comm"))
                .is_ok_and(|c| c.trim() == "sleep")
        })
    });
    tmux.send_keys(&["C-c"]);
    let sent = Instant::now();
    // The shell creates the file before it writes the code into it: wait for the line.
    wait_for("the job to end", Duration::from_secs(10), || {
        !env.lines("code").is_empty()
    });
    assert!(!is_alive(job));
    assert_eq!(
        env.lines("ints"),
        ["got-int"],
        "the job must get SIGINT exactly once; screen:\n{}",
        tmux.screen()
    );
    assert!(
        sent.elapsed() < Duration::from_secs(4),
        "Ctrl-C did not interrupt the job's sleep"
    );
    assert_eq!(env.lines("code"), ["0"]);
}

/// With `--pid-namespace` the terminal behaves as without it: in an interactive bash, Ctrl-Z stops
/// the job and bash reports it stopped, `fg` continues it, and Ctrl-C reaches it once.
#[test]
fn terminal_works_in_a_pid_namespace() {
    let env = TestEnv::new();
    let lock = env.lock("tty-pidns");
    env.script(
        "ticks.sh",
        "trap 'echo got-int >> ints; exit 0' INT\n\
         read p _ < /proc/self/stat; echo $p > ready.tmp && mv ready.tmp ready\n\
         while :; do echo x >> ticks; sleep 0.1; done",
    );
    let tmux = Tmux::start(
        &env,
        "tty-pidns",
        "env -i PATH=/usr/bin:/bin TERM=screen HOME=/tmp bash --norc --noprofile",
    );
    let line = format!(
        "cd '{dir}' && ELECT_LOCK_DIR='{locks}' '{elect}' run --lock {lock} --pid-namespace -- ./ticks.sh",
        dir = env.path().display(),
        locks = env.lock_dir().unwrap().display(),
        elect = env!("CARGO_BIN_EXE_elect"),
    );
    tmux.send_keys(&[&line, "Enter"]);
    let job = env.read_pid("ready");
    let ticks = || env.lines("ticks").len();
    wait_for("the job to tick", Duration::from_secs(10), || ticks() >= 3);
    tmux.send_keys(&["C-z"]);
    wait_for("the job to stop", Duration::from_secs(10), || {
        support::process::proc_stat(job).is_some_and(|s| s.state == 'T')
    });
    wait_for(
        "bash to report the job stopped",
        Duration::from_secs(10),
        || tmux.screen().contains("Stopped"),
    );
    let stopped_at = ticks();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(ticks(), stopped_at, "the stopped job ran on");
    tmux.send_keys(&["fg", "Enter"]);
    wait_for("the job to run again", Duration::from_secs(10), || {
        ticks() > stopped_at
    });
    tmux.send_keys(&["C-c"]);
    wait_for("the job to end", Duration::from_secs(10), || !is_alive(job));
    // After a stop, bash would run the rest of a line at once: `fg`'s status, typed after.
    tmux.send_keys(&["echo $? > code", "Enter"]);
    wait_for("elect to exit", Duration::from_secs(10), || {
        !env.lines("code").is_empty()
    });
    assert_eq!(
        env.lines("ints"),
        ["got-int"],
        "the job must get SIGINT exactly once; screen:\n{}",
        tmux.screen()
    );
    assert_eq!(env.lines("code"), ["0"], "screen:\n{}", tmux.screen());
}

/// A file lock belongs to the kernel: `elect release` cannot take it from a live holder, says
/// so, and finds nothing to do once the holder is gone.
#[test]
fn forced_release_of_a_file_lock_is_refused_while_held() {
    let env = TestEnv::new();
    let lock = env.lock("forced");
    let mut holder = env.spawn([
        "run",
        "--lock",
        &lock,
        "--",
        "sh",
        "-c",
        "echo $ELECT_FENCING_TOKEN > token.tmp && mv token.tmp token; exec sleep 100",
    ]);
    env.wait_for_file("token", Duration::from_secs(10));
    let token = env.lines("token")[0].clone();
    let refused = env.run(["release", "--lock", &lock, "--token", &token]);
    refused.assert_code(75).assert_no_panic();
    assert!(refused.one_error_line().contains("kernel"), "{refused}");
    holder.signal("TERM");
    holder.wait();
    env.run(["release", "--lock", &lock, "--token", &token])
        .assert_code(3);
}

/// The job starts with every signal at its default disposition and an empty mask, even when
/// elect was started with some ignored (`nohup`), and on every CPU elect may use, though elect's
/// watchdog ignores signals and starts on a CPU of its own.
#[test]
fn job_starts_with_default_signals_and_elects_cpus() {
    use std::os::unix::process::CommandExt;

    let env = TestEnv::new();
    let lock = env.lock("inherit");
    let status_line = |text: &str, key: &str| -> String {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in {text}"))
            .trim()
            .to_owned()
    };
    let ours = std::fs::read_to_string("/proc/self/status").unwrap();
    let mut cmd = env.elect();
    cmd.args([
        "run",
        "--lock",
        &lock,
        "--",
        "cp",
        "/proc/self/status",
        "job.status",
    ]);
    // As `nohup` does.
    // SAFETY: between fork and exec only signal(2) is called, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::signal::signal(
                nix::sys::signal::Signal::SIGHUP,
                nix::sys::signal::SigHandler::SigIgn,
            )?;
            Ok(())
        });
    }
    env.run_command(cmd).assert_code(0);
    let job = std::fs::read_to_string(env.path().join("job.status")).unwrap();
    assert_eq!(
        status_line(&job, "SigIgn:"),
        "0000000000000000",
        "no signal ignored"
    );
    assert_eq!(
        status_line(&job, "SigBlk:"),
        "0000000000000000",
        "no signal blocked"
    );
    assert_eq!(
        status_line(&job, "Cpus_allowed_list:"),
        status_line(&ours, "Cpus_allowed_list:"),
        "the job may run on every CPU elect may"
    );
}

/// Issue "two guards", case 3: `kill -9` of elect and its watchdog together. The job's processes
/// hold a descriptor of the lock file (as under flock(1)), so the lock stays held, visibly in
/// `elect status`, while the background process the job left runs, and is free once it ends.
#[test]
fn job_holds_the_lock_when_elect_and_watchdog_are_killed() {
    let env = TestEnv::new();
    let lock = env.lock("both-killed");
    let script = format!(
        "sleep 3 & echo $! > bg.pid.tmp && mv bg.pid.tmp bg.pid; {}; wait",
        write_pid("main.pid")
    );
    let mut run = env.spawn(["run", "--lock", &lock, "--", "sh", "-c", &script]);
    let bg = env.read_pid("bg.pid");
    env.read_pid("main.pid");
    let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", run.pid()))
        .expect("elect's children");
    let watchdog: i32 = children
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .find(|c: &i32| {
            std::fs::read_to_string(format!("/proc/{c}/comm"))
                .is_ok_and(|name| name.trim() == "lease-watchdog")
        })
        .expect("elect's watchdog");
    // Stopped first, so that neither sees the other die and stops the job.
    run.signal("STOP");
    support::process::signal(watchdog, "STOP");
    support::process::signal(watchdog, "KILL");
    run.signal("KILL");
    assert_eq!(run.wait().killed_by(), Some(9));
    let newcomer = env.run(["run", "--lock", &lock, "--", "touch", "newcomer.ran"]);
    let status = env.status(["--lock", &lock]);
    let bg_alive = is_alive(bg);
    assert!(
        bg_alive,
        "inconclusive: the background process ended before the checks"
    );
    assert_eq!(
        newcomer.status.code(),
        Some(75),
        "a newcomer ran beside the old job's background process: {newcomer}"
    );
    assert!(status.stdout.contains("held"), "{status}");
    // Once the background process ends, the lock is free.
    let after = env.run([
        "run",
        "--lock",
        &lock,
        "--wait=10s",
        "--",
        "touch",
        "after.ran",
    ]);
    after.assert_code(0);
    assert!(!is_alive(bg));
}

/// Only root may make a PID namespace: `--pid-namespace` as another user is refused before
/// anything starts, with one line that says so (exit 2).
#[test]
fn pid_namespace_needs_root() {
    let out = Command::new("runuser")
        .args(["-u", "nobody", "--", env!("CARGO_BIN_EXE_elect")])
        .args(["run", "--lock", "x", "--pid-namespace", "--", "true"])
        .env_remove("ELECT_LOCK_DIR")
        .output()
        .expect("runuser");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--pid-namespace") && stderr.contains("needs root"));
}
