//! The file backend at its trust boundaries, each attack run for real: a second user (through
//! `setpriv`, with numeric ids that need no account), planted and forged files, lock files deleted
//! or replaced under a running job.
//!
//! Users and groups are numeric ids of this file's own (no account needed: the kernel only checks
//! numbers), distinct per test, so that tests running in parallel never share a default directory.

mod support {
    pub mod env;
    pub mod process;
}

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::env::{until_exists, write_pid, TestEnv};

const NOBODY: u32 = 65534;
/// The ids of the users and the group of these tests.
const SPLIT_USER: u32 = 64_901;
const SQUAT_USER: u32 = 64_902;
const MEMBER_A: u32 = 64_903;
const MEMBER_B: u32 = 64_904;
const SHARED_GROUP: u32 = 64_950;

/// `elect` as user `uid` (group `gid`, extra `groups`), in `env`, with no lock directory given:
/// the default directory of that uid, unless the caller sets one.
fn elect_as(env: &TestEnv, uid: u32, gid: u32, groups: &[u32]) -> Command {
    let template = env.elect();
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"));
    if groups.is_empty() {
        cmd.arg("--clear-groups");
    } else {
        let list: Vec<String> = groups.iter().map(u32::to_string).collect();
        cmd.arg(format!("--groups={}", list.join(",")));
    }
    cmd.arg("--").arg(env!("CARGO_BIN_EXE_elect"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ELECT_") {
            cmd.env_remove(key);
        }
    }
    cmd.env_remove("ELECT_LOCK_DIR")
        .env("HOME", template.get_current_dir().unwrap())
        .current_dir(template.get_current_dir().unwrap())
        .stdin(std::process::Stdio::null());
    cmd
}

/// `elect` as root with no lock directory given (the default one).
fn elect_default(env: &TestEnv) -> Command {
    let mut cmd = env.elect();
    cmd.env_remove("ELECT_LOCK_DIR");
    cmd
}

/// Runs a shell command as `uid`.
fn sh_as(uid: u32, script: &str) {
    let out = Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
        ])
        .args(["--", "sh", "-c", script])
        .output()
        .expect("setpriv");
    assert!(out.status.success(), "as uid {uid}: {script}: {out:?}");
}

/// Makes the test's directory reachable and writable for the other users of a test: sticky, as
/// /tmp, so that it stays a directory elect can trust.
fn open_up(env: &TestEnv) {
    std::fs::set_permissions(env.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
}

/// Removes a default directory made by a test, with what is in it.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn user_dir(uid: u32) -> PathBuf {
    PathBuf::from(format!("/run/lock/elect-{uid}"))
}

/// A job that writes its pid and waits for `go`.
fn held_job(pid_file: &str, go: &str) -> String {
    format!("{}; {}", write_pid(pid_file), until_exists(go))
}

/// Two runs of one lock by one user, with different XDG_RUNTIME_DIR, HOME and TMPDIR (as under
/// cron and in a login shell), meet the same lock file and exclude each other.
fn environment_does_not_split(env: &TestEnv, mut elect: impl FnMut() -> Command, dir: &Path) {
    let lock = env.lock("split");
    let mut first = elect();
    first
        .env("XDG_RUNTIME_DIR", env.file("xdg-a"))
        .env("HOME", env.file("home-a"))
        .env("TMPDIR", env.file("tmp-a"))
        .args([
            "run",
            "--lock",
            &lock,
            "--",
            "sh",
            "-c",
            &held_job("first.pid", "first.go"),
        ]);
    let mut first = env.spawn_command(first);
    env.read_pid("first.pid");
    assert!(
        dir.join(format!("{lock}.lock")).is_file(),
        "the lock file is in {}",
        dir.display()
    );
    let mut second = elect();
    second
        .env_remove("XDG_RUNTIME_DIR")
        .env("HOME", "/")
        .env("TMPDIR", "/var/tmp")
        .args(["run", "--lock", &lock, "--", "touch", "second.ran"]);
    let out = env.run_command(second);
    out.assert_code(75).assert_no_panic();
    assert!(
        !env.file("second.ran").exists(),
        "two runs of one lock ran at once"
    );
    std::fs::write(env.file("first.go"), "").unwrap();
    first.wait().assert_code(0);
    let _ = std::fs::remove_file(dir.join(format!("{lock}.lock")));
}

#[test]
fn root_default_directory_depends_only_on_the_uid() {
    let env = TestEnv::new();
    let dir = Path::new("/run/lock/elect");
    if let Ok(meta) = std::fs::symlink_metadata(dir) {
        if meta.is_dir() && meta.uid() == 0 && meta.mode() & 0o022 != 0 {
            // The world-writable directory of an older elect: refused, with the fix.
            let lock = env.lock("old");
            let mut cmd = elect_default(&env);
            cmd.args(["run", "--lock", &lock, "--", "touch", "ran"]);
            let out = env.run_command(cmd);
            out.assert_code(69).assert_no_panic();
            let line = out.one_error_line();
            assert!(
                line.contains("/run/lock/elect") && line.contains("mode"),
                "{line}"
            );
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    environment_does_not_split(&env, || elect_default(&env), dir);
    let meta = std::fs::symlink_metadata(dir).unwrap();
    assert!(
        meta.is_dir() && meta.uid() == 0 && meta.mode() & 0o7777 == 0o755,
        "{meta:?}"
    );
}

#[test]
fn user_default_directory_depends_only_on_the_uid() {
    let env = TestEnv::new();
    open_up(&env);
    let dir = user_dir(SPLIT_USER);
    let _ = std::fs::remove_dir_all(&dir);
    let _cleanup = RemoveOnDrop(dir.clone());
    environment_does_not_split(&env, || elect_as(&env, SPLIT_USER, SPLIT_USER, &[]), &dir);
    let meta = std::fs::symlink_metadata(&dir).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o7777), (SPLIT_USER, 0o700));
}

/// Another user creates the default directory first: a clear exit 69, never another directory.
#[test]
fn a_squatted_default_directory_is_refused_not_replaced() {
    let env = TestEnv::new();
    open_up(&env);
    let dir = user_dir(SQUAT_USER);
    let _ = std::fs::remove_dir_all(&dir);
    let _cleanup = RemoveOnDrop(dir.clone());
    sh_as(NOBODY, &format!("mkdir -m 0700 {}", dir.display()));
    let lock = env.lock("squat");
    let mut cmd = elect_as(&env, SQUAT_USER, SQUAT_USER, &[]);
    cmd.env("XDG_RUNTIME_DIR", env.path())
        .args(["run", "--lock", &lock, "--", "touch", "ran"]);
    let out = env.run_command(cmd);
    out.assert_code(69).assert_no_panic();
    let line = out.one_error_line();
    assert!(
        line.contains(&dir.display().to_string())
            && line.contains("uid 65534")
            && line.contains("install -d"),
        "the line names the directory, its owner and the fix: {line}"
    );
    assert!(!env.file("ran").exists());
    // A symlink planted there instead: refused as well.
    std::fs::remove_dir(&dir).unwrap();
    std::os::unix::fs::symlink(env.path(), &dir).unwrap();
    let mut cmd = elect_as(&env, SQUAT_USER, SQUAT_USER, &[]);
    cmd.args(["run", "--lock", &lock, "--", "touch", "ran"]);
    let out = env.run_command(cmd);
    out.assert_code(69).assert_no_panic();
    assert!(out.one_error_line().contains("symlink"), "{out}");
    std::fs::remove_file(&dir).unwrap();
}

/// In a sticky, world-writable directory (/tmp's kind), a lock file that another user planted
/// is refused, naming it and its owner; so are files anyone could write, or linked elsewhere.
#[test]
fn planted_lock_files_are_refused() {
    let env = TestEnv::new();
    open_up(&env);
    let dir = env.file("sticky");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let lock = env.lock("planted");
    let path = dir.join(format!("{lock}.lock"));
    sh_as(NOBODY, &format!("printf '' > {}", path.display()));
    let run = |expect: &str| {
        let mut cmd = env.elect();
        cmd.env("ELECT_LOCK_DIR", &dir)
            .args(["run", "--lock", &lock, "--", "touch", "ran"]);
        let out = env.run_command(cmd);
        out.assert_code(69).assert_no_panic();
        let line = out.one_error_line().to_owned();
        assert!(
            line.contains(&path.display().to_string()) && line.contains(expect),
            "{line}"
        );
        assert!(
            !env.file("ran").exists(),
            "the job ran on a planted lock file"
        );
    };
    run("uid 65534");
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, "").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    run("writable by group or others");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::hard_link(&path, dir.join("elsewhere")).unwrap();
    run("hard links");
}

/// flock(2) needs only a descriptor open for reading: another user who can read a lock file can
/// hold its lock for ever. Root's lock files are readable by root alone, and an older one with
/// wider read bits is narrowed at the next run.
#[test]
fn another_user_cannot_open_a_lock_file_to_hold_it() {
    let env = TestEnv::new();
    open_up(&env);
    let dir = env.file("private");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let lock = env.lock("unreadable");
    let path = dir.join(format!("{lock}.lock"));
    let run = || {
        let mut cmd = env.elect();
        cmd.env("ELECT_LOCK_DIR", &dir)
            .args(["run", "--lock", &lock, "--", "true"]);
        env.run_command(cmd).assert_code(0);
    };
    let nobody_can_open = || {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .args(["flock", "-n"])
            .arg(&path)
            .arg("true")
            .status()
            .expect("setpriv")
            .success()
    };
    run();
    assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
    assert!(
        !nobody_can_open(),
        "another user could open and lock root's lock file"
    );
    // A lock file an older elect made world-readable.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(
        nobody_can_open(),
        "the test must start from a readable file"
    );
    run();
    assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
    assert!(!nobody_can_open(), "the old lock file was not narrowed");
}

/// The check for holders of an earlier lock file reads link targets, which are only text: another
/// user in a mount namespace of their own binds a directory of theirs over the lock directory and
/// holds a file of their own under the lock's very path. That file cannot be an earlier lock file
/// of root's, so root's run goes ahead.
#[test]
fn a_file_of_another_user_under_the_locks_name_holds_nobody_up() {
    let env = TestEnv::new();
    open_up(&env);
    let dir = env.file("private");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let theirs = env.file("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(NOBODY), Some(NOBODY)).unwrap();
    let lock = env.lock("spoofed");
    let path = dir.join(format!("{lock}.lock"));
    sh_as(NOBODY, &format!("touch {}/{lock}.lock", theirs.display()));
    let mut spoof = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(["unshare", "-Urm", "sh", "-c"])
        .arg(format!(
            "mount --bind {} {} && exec flock -x {} sleep 30",
            theirs.display(),
            dir.display(),
            path.display()
        ))
        .spawn()
        .expect("setpriv");
    let deadline = Instant::now() + Duration::from_secs(5);
    let holding = || {
        let ino = std::fs::metadata(theirs.join(format!("{lock}.lock")))
            .unwrap()
            .ino();
        std::fs::read_to_string("/proc/locks")
            .unwrap()
            .lines()
            .any(|l| l.contains("FLOCK") && l.contains(&format!(":{ino} ")))
    };
    while !holding() {
        if spoof.try_wait().unwrap().is_some() || Instant::now() > deadline {
            // No unprivileged user namespaces here: the attack cannot be made at all.
            eprintln!("unprivileged user namespaces unavailable; the spoof cannot be set up");
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut cmd = env.elect();
    cmd.env("ELECT_LOCK_DIR", &dir)
        .args(["run", "--lock", &lock, "--", "touch", "ran"]);
    let out = env.run_command(cmd);
    let _ = spoof.kill();
    let _ = spoof.wait();
    out.assert_code(0);
    assert!(env.file("ran").exists());
}

/// Forged records: a token that cannot grow and garbage are exit 69, never a wrap or a panic.
#[test]
fn forged_records_are_refused() {
    let env = TestEnv::new();
    let lock = env.lock("forged");
    env.run(["run", "--lock", &lock, "--", "true"])
        .assert_code(0);
    let path = env.lock_dir().unwrap().join(format!("{lock}.lock"));
    let text = std::fs::read_to_string(&path).unwrap();
    let record: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let mut forged = record.clone();
    forged["token"] = serde_json::json!(u64::MAX);
    let mut bytes = serde_json::to_vec(&forged).unwrap();
    bytes.resize(1023, b' ');
    bytes.push(b'\n');
    std::fs::write(&path, &bytes).unwrap();
    let out = env.run(["run", "--lock", &lock, "--", "touch", "ran"]);
    out.assert_code(69).assert_no_panic();
    assert!(out.one_error_line().contains("cannot grow"), "{out}");
    assert!(!env.file("ran").exists());
    // status still shows it, as it is.
    env.status(["--lock", &lock])
        .assert_code(3)
        .assert_no_panic();

    let mut huge = record.clone();
    huge["pid"] = serde_json::json!(u64::MAX);
    huge["ttl"] = serde_json::json!(-1);
    std::fs::write(&path, serde_json::to_vec(&huge).unwrap()).unwrap();
    let out = env.run(["run", "--lock", &lock, "--", "touch", "ran"]);
    out.assert_code(69).assert_no_panic();
    out.one_error_line();

    // The counter of a lock with several places.
    let places = env.lock("forged-places");
    env.run(["run", "--holders", "2", "--lock", &places, "--", "true"])
        .assert_code(0);
    let meta = env.lock_dir().unwrap().join(format!("{places}.lock.meta"));
    for bad in [u64::MAX.to_string(), "-3".to_owned(), "garbage".to_owned()] {
        let mut text = bad.into_bytes();
        text.resize(31, b' ');
        text.push(b'\n');
        std::fs::write(&meta, &text).unwrap();
        let out = env.run([
            "run",
            "--holders",
            "2",
            "--lock",
            &places,
            "--",
            "touch",
            "ran",
        ]);
        out.assert_code(69).assert_no_panic();
        out.one_error_line();
        assert!(!env.file("ran").exists());
    }
}

/// A directory shared with a group on purpose (setgid, group-writable): two users of the group
/// exclude each other, lock files are created for the group, and a user outside it is refused.
#[test]
fn two_users_of_a_group_share_a_setgid_directory() {
    let env = TestEnv::new();
    open_up(&env);
    let dir = env.file("shared");
    std::fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(0), Some(SHARED_GROUP)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o2770)).unwrap();
    let lock = env.lock("shared");
    let member = |uid: u32| {
        let mut cmd = elect_as(&env, uid, uid, &[SHARED_GROUP]);
        cmd.env("ELECT_LOCK_DIR", &dir);
        cmd
    };
    let mut a = member(MEMBER_A);
    a.args([
        "run",
        "--lock",
        &lock,
        "--",
        "sh",
        "-c",
        &held_job("a.pid", "a.go"),
    ]);
    let mut a = env.spawn_command(a);
    env.read_pid("a.pid");
    let path = dir.join(format!("{lock}.lock"));
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(
        (meta.gid(), meta.mode() & 0o777),
        (SHARED_GROUP, 0o660),
        "created for the group"
    );
    let mut b = member(MEMBER_B);
    b.args(["run", "--lock", &lock, "--", "touch", "b.ran"]);
    env.run_command(b).assert_code(75).assert_no_panic();
    std::fs::write(env.file("a.go"), "").unwrap();
    a.wait().assert_code(0);
    let mut b = member(MEMBER_B);
    b.args(["run", "--lock", &lock, "--", "touch", "b.ran"]);
    env.run_command(b).assert_code(0);
    assert!(env.file("b.ran").exists());

    // Not a member: no way in, and a clear line.
    let mut outsider = elect_as(&env, NOBODY, NOBODY, &[]);
    outsider.env("ELECT_LOCK_DIR", &dir).args([
        "run",
        "--lock",
        &lock,
        "--",
        "touch",
        "outsider.ran",
    ]);
    let out = env.run_command(outsider);
    out.assert_code(69).assert_no_panic();
    out.one_error_line();

    // A lock file there of another group is refused.
    let other = env.lock("other-group");
    let other_path = dir.join(format!("{other}.lock"));
    std::fs::write(&other_path, "").unwrap();
    std::os::unix::fs::chown(&other_path, Some(MEMBER_A), Some(MEMBER_A)).unwrap();
    let mut b = member(MEMBER_B);
    b.env("ELECT_LOCK_DIR", &dir)
        .args(["run", "--lock", &other, "--", "true"]);
    let out = env.run_command(b);
    out.assert_code(69);
    assert!(out.one_error_line().contains("group"), "{out}");

    // Group-writable without setgid: refused, with the fix.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o0770)).unwrap();
    let mut b = member(MEMBER_B);
    b.args(["run", "--lock", &lock, "--", "true"]);
    let out = env.run_command(b);
    out.assert_code(69);
    assert!(out.one_error_line().contains("g+s"), "{out}");
}

/// An explicit directory under one that another user can change is refused.
#[test]
fn an_explicit_directory_under_another_users_directory_is_refused() {
    let env = TestEnv::new();
    open_up(&env);
    let theirs = env.file("theirs");
    sh_as(NOBODY, &format!("mkdir -m 0755 {}", theirs.display()));
    let inside = theirs.join("locks");
    sh_as(NOBODY, &format!("mkdir -m 0755 {}", inside.display()));
    let mut cmd = env.elect();
    cmd.env("ELECT_LOCK_DIR", &inside)
        .args(["run", "--lock", "x", "--", "touch", "ran"]);
    let out = env.run_command(cmd);
    out.assert_code(69).assert_no_panic();
    assert!(out.one_error_line().contains("uid 65534"), "{out}");
    assert!(!env.file("ran").exists());
    // Nor does root create directories through it.
    let deeper = theirs.join("new").join("deeper");
    let mut cmd = env.elect();
    cmd.env("ELECT_LOCK_DIR", &deeper)
        .args(["run", "--lock", "x", "--", "touch", "ran"]);
    let out = env.run_command(cmd);
    out.assert_code(69).assert_no_panic();
    assert!(out.one_error_line().contains("uid 65534"), "{out}");
    assert!(
        !theirs.join("new").exists(),
        "elect created a directory in another user's"
    );
}

/// status on a directory with a FIFO, a symlink, a foreign file and garbage: it does not hang,
/// lists the good lock, and warns about each bad entry.
#[test]
fn status_lists_the_rest_and_never_blocks() {
    let env = TestEnv::new();
    let good = env.lock("good");
    let mut holder = env.spawn([
        "run",
        "--lock",
        &good,
        "--",
        "sh",
        "-c",
        &held_job("h.pid", "h.go"),
    ]);
    env.read_pid("h.pid");
    let dir = env.lock_dir().unwrap();
    let fifo = dir.join("fifo.lock");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    std::os::unix::fs::symlink("/etc/passwd", dir.join("link.lock")).unwrap();
    std::fs::write(dir.join("garbage.lock"), "not a record\n").unwrap();
    let foreign = dir.join("foreign.lock");
    std::fs::write(&foreign, "").unwrap();
    std::os::unix::fs::chown(&foreign, Some(NOBODY), Some(NOBODY)).unwrap();
    let started = Instant::now();
    let out = env.status(Vec::<String>::new());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "status took {:?}",
        started.elapsed()
    );
    out.assert_code(0).assert_no_panic();
    assert!(out.stdout.contains(&good), "the good lock is listed: {out}");
    for bad in ["fifo", "link", "garbage", "foreign"] {
        assert!(
            out.stderr
                .lines()
                .any(|l| l.contains(&format!("{bad}.lock"))),
            "a warning names {bad}.lock: {out}"
        );
    }
    let json = env.status(["--json"]);
    json.assert_code(0);
    assert!(json.stdout.contains(&good), "{json}");
    for bad in ["fifo", "link", "garbage", "foreign"] {
        let one = env.status(["--lock", bad]);
        one.assert_code(69).assert_no_panic();
        one.one_error_line();
    }
    std::fs::write(env.file("h.go"), "").unwrap();
    holder.wait().assert_code(0);
}

/// The reproduction of the replaced lock file: a holder writes a heartbeat every 20 ms; the file
/// is replaced (or deleted) and a newcomer runs at once. The newcomer's job must start after the
/// holder's last heartbeat, and the holder must stop within its grace, not its renew interval.
fn no_overlap_when(tamper: impl FnOnce(&Path)) {
    let env = TestEnv::new();
    let lock = env.lock("rep");
    let hb = env.file("hb");
    let beat = format!(
        "{}; while :; do date +%s%N >> {}; sleep 0.02; done",
        write_pid("old.pid"),
        hb.display()
    );
    // A ttl of 60 s: renewals alone (every 20 s) would notice far too late.
    let mut old = env.spawn([
        "run", "--lock", &lock, "--ttl", "60s", "--grace", "1s", "--", "sh", "-c", &beat,
    ]);
    env.read_pid("old.pid");
    std::thread::sleep(Duration::from_millis(300));
    let path = env.lock_dir().unwrap().join(format!("{lock}.lock"));
    let tampered = Instant::now();
    tamper(&path);
    // As in the report: at once, without --wait (it runs, or exits 75 naming the old holder);
    // then with --wait, which must run.
    let starts = env.file("new.starts");
    for wait in [None, Some("--wait=20s")] {
        let mut newcomer = env.elect();
        newcomer
            .args(["run", "--lock", &lock])
            .args(wait)
            .args(["--", "sh", "-c"])
            .arg(format!("date +%s%N >> {}", starts.display()));
        let out = env.run_command(newcomer);
        match out.code() {
            0 => {}
            75 if wait.is_none() => {
                assert!(
                    out.one_error_line().contains("deleted or replaced"),
                    "{out}"
                )
            }
            _ => panic!("the newcomer must run or exit 75: {out}"),
        }
    }
    let out = old.wait();
    out.assert_code(76).assert_no_panic();
    let took = out.finished_at.duration_since(tampered);
    assert!(
        took < Duration::from_secs(4),
        "the holder stopped {took:?} after the change: {out}"
    );
    let last_beat: u128 = std::fs::read_to_string(&hb)
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .max()
        .unwrap();
    let started: u128 = std::fs::read_to_string(&starts)
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .min()
        .unwrap();
    assert!(
        started > last_beat,
        "the newcomer's job started {} ms before the old job's last heartbeat",
        (last_beat - started) / 1_000_000
    );
}

#[test]
fn replaced_lock_file_does_not_let_two_jobs_run() {
    no_overlap_when(|path| {
        let new = path.with_extension("new");
        std::fs::write(&new, "").unwrap();
        std::fs::rename(&new, path).unwrap();
    });
}

/// A copy carries the old holder's record, which names the path (and the old file): the
/// newcomer must not take the copy's record as its own file's.
#[test]
fn lock_file_replaced_by_a_copy_does_not_let_two_jobs_run() {
    no_overlap_when(|path| {
        let new = path.with_extension("new");
        std::fs::copy(path, &new).unwrap();
        std::fs::rename(&new, path).unwrap();
    });
}

#[test]
fn deleted_lock_file_does_not_let_two_jobs_run() {
    no_overlap_when(|path| std::fs::remove_file(path).unwrap());
}

/// The old holder's job ignores SIGTERM, so it holds on for the grace after the file is
/// replaced: a newcomer without --wait exits 75 naming it; with --wait it runs after it is gone.
/// The same when elect itself was killed and only its watchdog still holds the old file.
fn newcomer_defers_to_the_old_holder(kill_elect: bool) {
    let env = TestEnv::new();
    let lock = env.lock("stubborn");
    let job = format!(
        "trap '' TERM; {}; while :; do sleep 0.05; done",
        write_pid("old.pid")
    );
    let mut old = env.spawn([
        "run", "--lock", &lock, "--ttl", "60s", "--grace", "3s", "--", "sh", "-c", &job,
    ]);
    let old_job = env.read_pid("old.pid");
    if kill_elect {
        old.signal("KILL");
        assert_eq!(old.wait().killed_by(), Some(9));
    }
    let path = env.lock_dir().unwrap().join(format!("{lock}.lock"));
    let new = path.with_extension("new");
    std::fs::write(&new, "").unwrap();
    std::fs::rename(&new, &path).unwrap();
    let out = env.run(["run", "--lock", &lock, "--", "touch", "ran"]);
    out.assert_code(75).assert_no_panic();
    let line = out.one_error_line();
    assert!(
        line.contains("deleted or replaced"),
        "the line names the old holder: {line}"
    );
    assert!(!env.file("ran").exists());
    env.assert_waiter_runs_after(&lock, old_job);
    if !kill_elect {
        old.wait().assert_code(76);
    }
}

#[test]
fn newcomer_defers_to_the_holder_of_a_replaced_file() {
    newcomer_defers_to_the_old_holder(false);
}

#[test]
fn newcomer_defers_to_the_watchdog_of_a_killed_holder() {
    newcomer_defers_to_the_old_holder(true);
}
