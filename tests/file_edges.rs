//! The file backend's edges, each attack run for real: what a job can do with the lock file it
//! inherits (as a second user it drops to), a lock file renamed while held, lock directories and
//! metrics directories that a second user races or plants links in.

mod support {
    pub mod env;
    pub mod process;
}

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::env::{write_pid, TestEnv};
use support::process;

const NOBODY: u32 = 65534;

/// The open flags and the results of attacks on the lock file descriptor the job inherited, as
/// the job sees them: it finds the descriptor by its target, then drops to `nobody` (as a job
/// that runs untrusted code should) and tries to rewrite, truncate and reopen it for writing.
fn job_attacks_its_descriptor(lock_file: &Path) -> String {
    format!(
        r#"lock=$(readlink -f {lock}); n=
for f in /proc/$$/fd/*; do [ "$(readlink "$f")" = "$lock" ] && n=${{f##*/}}; done
[ -n "$n" ] || {{ echo "no descriptor of $lock" > attack.out; exit 1; }}
sed -n 's/^flags:[[:space:]]*//p' /proc/$$/fdinfo/$n > flags
setpriv --reuid={NOBODY} --regid={NOBODY} --clear-groups -- /usr/bin/python3 -c '
import os, sys
n = int(sys.argv[1])
tries = [
    ("write", lambda: os.pwrite(n, b"{{\"id\":\"forged\",\"token\":1}}", 0)),
    ("truncate", lambda: os.ftruncate(n, 0)),
    ("reopen", lambda: os.open("/proc/self/fd/%d" % n, os.O_WRONLY)),
]
for name, attack in tries:
    try:
        attack()
        print(name, "done")
    except OSError as e:
        print(name, "refused", e.strerror)
' "$n" > attack.out 2>&1"#,
        lock = lock_file.display()
    )
}

/// The job inherits the lock file read-only: dropped to another user, it can neither rewrite the
/// record nor truncate the file, and the next holder's token follows on.
#[test]
fn the_job_cannot_rewrite_the_lock_file_it_inherits() {
    let env = TestEnv::new();
    let lock = env.lock("inherit");
    let path = env.lock_dir().unwrap().join(format!("{lock}.lock"));
    // A first run creates the lock file, so the job's attack finds it.
    env.run(["run", "--lock", &lock, "--", "true"])
        .assert_code(0);
    let out = env.run([
        "run",
        "--lock",
        &lock,
        "--",
        "sh",
        "-c",
        &job_attacks_its_descriptor(&path),
    ]);
    let attack = std::fs::read_to_string(env.file("attack.out")).unwrap_or_default();
    out.assert_code(0).assert_no_panic();
    let flags = std::fs::read_to_string(env.file("flags")).unwrap();
    let flags = u32::from_str_radix(flags.trim(), 8).unwrap();
    assert_eq!(
        flags & 0o3,
        0,
        "the job's lock descriptor is open read-only (flags {flags:o})"
    );
    for attack_line in ["write refused", "truncate refused", "reopen refused"] {
        assert!(attack.contains(attack_line), "{attack_line}: {attack}");
    }
    let record = std::fs::read_to_string(&path).unwrap();
    assert!(
        !record.contains("forged") && record.len() >= 2048,
        "the record is intact: {record:?}"
    );
    let token_of = |env: &TestEnv| {
        let out = env.status(["--lock", &lock, "--json"]);
        let json = serde_json::from_str::<serde_json::Value>(&out.stdout).unwrap();
        json["last_run"]["token"].as_u64().unwrap()
    };
    let before = token_of(&env);
    env.run(["run", "--lock", &lock, "--", "true"])
        .assert_code(0);
    assert_eq!(token_of(&env), before + 1, "tokens follow on");
}

/// A lock file renamed while held behaves as a replaced one: the old holder's job ignores
/// SIGTERM and lives on for its grace; a newcomer without `--wait` exits 75 naming it, and one
/// with `--wait` runs only once that job is gone.
fn newcomer_defers_to_a_renamed_file(
    rename_to: impl FnOnce(&TestEnv, &Path) -> std::path::PathBuf,
) {
    let env = TestEnv::new();
    let lock = env.lock("renamed");
    let mut old = hold_ignoring_term(&env, &lock, "3s");
    let old_job = env.read_pid("old.pid");
    let path = env.lock_dir().unwrap().join(format!("{lock}.lock"));
    let to = rename_to(&env, &path);
    std::fs::rename(&path, &to).unwrap();
    let out = env.run(["run", "--lock", &lock, "--", "touch", "ran"]);
    out.assert_code(75).assert_no_panic();
    let line = out.one_error_line();
    assert!(
        line.contains("renamed"),
        "the line names the old holder: {line}"
    );
    assert!(
        !env.file("ran").exists(),
        "the newcomer ran beside the old job"
    );
    env.assert_waiter_runs_after(&lock, old_job);
    old.wait().assert_code(76);
}

#[test]
fn a_lock_file_renamed_in_its_directory_behaves_as_replaced() {
    newcomer_defers_to_a_renamed_file(|_, path| path.with_extension("old"));
}

#[test]
fn a_lock_file_moved_to_another_directory_behaves_as_replaced() {
    newcomer_defers_to_a_renamed_file(|env, path| {
        let elsewhere = env.file("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        elsewhere.join(path.file_name().unwrap())
    });
}

/// A lock file moved away and back while another holder held the file made in its place: the
/// file that comes back carries its last holder's record, which names its own path and inode,
/// but the renames show in its change time, so a newcomer still looks for holders of earlier
/// files and defers to the one in between. Trusting the record alone, it ran beside it.
#[test]
fn a_lock_file_moved_back_into_place_defers_to_the_holder_in_between() {
    let env = TestEnv::new();
    let lock = env.lock("moved-back");
    env.run(["run", "--lock", &lock, "--", "true"])
        .assert_code(0);
    let path = env.lock_dir().unwrap().join(format!("{lock}.lock"));
    let away = path.with_extension("away");
    std::fs::rename(&path, &away).unwrap();
    let mut between = hold_ignoring_term(&env, &lock, "3s");
    let between_job = env.read_pid("old.pid");
    std::fs::rename(&away, &path).unwrap();
    let out = env.run(["run", "--lock", &lock, "--", "touch", "ran"]);
    out.assert_code(75).assert_no_panic();
    assert!(
        !env.file("ran").exists(),
        "the newcomer ran beside the holder in between"
    );
    env.assert_waiter_runs_after(&lock, between_job);
    between.wait().assert_code(76);
}

/// Runs a shell command as `nobody`.
fn as_nobody(script: &str) {
    let out = Command::new("setpriv")
        .args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
            "--",
            "sh",
            "-c",
            script,
        ])
        .output()
        .expect("setpriv");
    assert!(out.status.success(), "as nobody: {script}: {out:?}");
}

/// The test's directory made like /tmp (sticky, world-writable), so that `nobody` can plant
/// things in it.
fn open_up(env: &TestEnv) {
    std::fs::set_permissions(env.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
}

/// A process of the test, killed when the test ends, whether it passes or fails.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// While `nobody` flips `race` between missing and a symlink to a directory of theirs, root's
/// runs with a lock directory below `race` never create anything in that directory: a missing
/// lock directory is created from checked directory descriptors, never by name.
#[test]
fn a_lock_directory_is_never_created_through_a_raced_symlink() {
    let env = TestEnv::new();
    open_up(&env);
    let theirs = env.file("theirs");
    let race = env.file("race");
    as_nobody(&format!("mkdir {}", theirs.display()));
    let flip = format!(
        "import os\nwhile True:\n    try: os.symlink({theirs:?}, {race:?})\n    except OSError: pass\n    try: os.unlink({race:?})\n    except OSError: pass\n",
        theirs = theirs.to_str().unwrap(),
        race = race.to_str().unwrap(),
    );
    let _attacker = KillOnDrop(
        Command::new("setpriv")
            .args([
                &format!("--reuid={NOBODY}"),
                &format!("--regid={NOBODY}"),
                "--clear-groups",
                "--",
                "/usr/bin/python3",
                "-c",
                &flip,
            ])
            .spawn()
            .expect("setpriv"),
    );
    let lock = env.lock("race");
    let started = Instant::now();
    let mut runs = 0;
    let mut created = 0;
    while runs < 200 && started.elapsed() < Duration::from_secs(4) {
        let mut run = env.elect();
        run.env("ELECT_LOCK_DIR", race.join("sub/locks"))
            .args(["run", "--lock", &lock, "--", "true"]);
        let out = env.run_command(run);
        out.assert_no_panic();
        match out.code() {
            0 => created += 1,
            69 => assert!(out.one_error_line().contains("uid 65534"), "{out}"),
            _ => panic!("the run must succeed or refuse the link: {out}"),
        }
        runs += 1;
        let planted = std::fs::read_dir(&theirs).unwrap().count();
        assert_eq!(
            planted, 0,
            "run {runs} created a directory through the link"
        );
        if std::fs::symlink_metadata(&race).is_ok_and(|m| m.is_dir()) {
            std::fs::remove_dir_all(&race).unwrap();
        }
    }
    eprintln!("{runs} runs, {created} created the directory");
}

/// The directories above `--metrics-file` are checked as a lock directory's are: a symlink that
/// another user planted, a directory another user owns or can write (without the sticky bit)
/// on the way makes elect write nothing there and say why; the run itself is unaffected.
#[test]
fn metrics_are_never_written_through_a_directory_another_user_controls() {
    let env = TestEnv::new();
    open_up(&env);
    let root_only = env.file("root-only");
    std::fs::create_dir(&root_only).unwrap();
    let link = env.file("link");
    as_nobody(&format!("ln -s {} {}", root_only.display(), link.display()));
    let writable = env.file("writable");
    std::fs::create_dir_all(writable.join("sub")).unwrap();
    std::fs::set_permissions(&writable, std::fs::Permissions::from_mode(0o777)).unwrap();
    let theirs = env.file("theirs");
    as_nobody(&format!("mkdir -p {}/sub", theirs.display()));
    let lock = env.lock("metrics");
    for (target, wrong) in [
        (link.join("m.prom"), "uid 65534"),
        (writable.join("sub/m.prom"), "writable by others"),
        (theirs.join("sub/m.prom"), "uid 65534"),
    ] {
        let out = env.run([
            "run",
            "--lock",
            &lock,
            "--metrics-file",
            target.to_str().unwrap(),
            "--",
            "true",
        ]);
        out.assert_code(0).assert_no_panic();
        assert!(
            out.stderr.contains("cannot write metrics") && out.stderr.contains(wrong),
            "{}: {out}",
            target.display()
        );
        assert!(!target.exists(), "{} was written", target.display());
    }
    assert_eq!(std::fs::read_dir(&root_only).unwrap().count(), 0);
    // A directory of theirs at the end is fine: the file is replaced there, never written into.
    let textfile = env.file("textfile");
    as_nobody(&format!(
        "mkdir {d}; echo theirs > {d}/m.prom; ln {d}/m.prom {d}/kept",
        d = textfile.display()
    ));
    let target = textfile.join("m.prom");
    env.run([
        "run",
        "--lock",
        &lock,
        "--metrics-file",
        target.to_str().unwrap(),
        "--",
        "true",
    ])
    .assert_code(0);
    assert!(std::fs::read_to_string(&target)
        .unwrap()
        .contains("elect_exit_code"));
    assert_eq!(
        std::fs::read_to_string(textfile.join("kept")).unwrap(),
        "theirs\n"
    );
}

/// A btrfs filesystem in a file of the test, loop-mounted on the test's lock directory;
/// unmounted on drop. `None` where it cannot be made (no mkfs.btrfs, no loop device).
struct Btrfs(std::path::PathBuf);

impl Btrfs {
    fn mount(env: &TestEnv) -> Option<Self> {
        let image = env.file("btrfs.img");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(120 << 20))
            .ok()?;
        let made = Command::new("mkfs.btrfs")
            .args(["-q", image.to_str()?])
            .output()
            .ok()?;
        if !made.status.success() {
            return None;
        }
        let dir = env.lock_dir()?.to_owned();
        std::fs::create_dir_all(&dir).ok()?;
        let mounted = Command::new("mount")
            .args(["-o", "loop", image.to_str()?, dir.to_str()?])
            .output()
            .ok()?;
        mounted.status.success().then_some(Self(dir))
    }
}

impl Drop for Btrfs {
    fn drop(&mut self) {
        let quiet = |args: &[&str]| {
            Command::new("umount")
                .args(args)
                .arg(&self.0)
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if !quiet(&[]) {
            quiet(&["-l"]);
        }
    }
}

/// On btrfs, `stat` and `/proc/locks` name different devices for a lock file. `status` still
/// sees the holder, and a newcomer still waits for the holder of a replaced lock file.
#[test]
fn locks_on_btrfs_are_seen_where_stat_names_another_device() {
    let env = TestEnv::new();
    let Some(_btrfs) = Btrfs::mount(&env) else {
        eprintln!("skipped: cannot mount a btrfs image here");
        return;
    };
    let lock = env.lock("btrfs");
    let mut old = hold_ignoring_term(&env, &lock, "2s");
    env.read_pid("old.pid");
    let status = env.status(["--lock", &lock]);
    status.assert_code(0).assert_no_panic();
    let path = env.lock_dir().unwrap().join(format!("{lock}.lock"));
    let new = path.with_extension("new");
    std::fs::write(&new, "").unwrap();
    std::fs::rename(&new, &path).unwrap();
    let out = env.run(["run", "--lock", &lock, "--", "touch", "ran"]);
    out.assert_code(75).assert_no_panic();
    assert!(
        !env.file("ran").exists(),
        "the newcomer ran beside the old job"
    );
    old.wait().assert_code(76);
}

/// A job that releases the lock it inherited (`flock -u`) loses the lease: a newcomer can then
/// start, and the holder stops its own job at the next renew, exit 76, rather than run beside
/// the newcomer's for ever.
#[test]
fn a_job_that_unlocks_its_lock_loses_the_lease() {
    let env = TestEnv::new();
    let lock = env.lock("unlock");
    let path = env.lock_dir().unwrap().join(format!("{lock}.lock"));
    env.run(["run", "--lock", &lock, "--", "true"])
        .assert_code(0);
    let job = format!(
        r#"lock=$(readlink -f {lock}); n=
for f in /proc/$$/fd/*; do [ "$(readlink "$f")" = "$lock" ] && n=${{f##*/}}; done
flock -u "$n" && touch unlocked; sleep 30"#,
        lock = path.display()
    );
    let mut holder = env.spawn([
        "run", "--lock", &lock, "--ttl", "6s", "--renew", "1s", "--grace", "1s", "--", "sh", "-c",
        &job,
    ]);
    env.wait_for_file("unlocked", Duration::from_secs(10));
    let out = holder.wait_timeout(Duration::from_secs(15));
    out.assert_code(76).assert_no_panic();
    assert!(out.stderr.contains("flock -u"), "{out}");
}

/// A waiter blocked on a lock file that is then deleted follows the path to the new file at once,
/// rather than waiting until the old file's last holder (a job that ignores SIGTERM, for its
/// grace) is gone: it is first in line for the new file, ahead of a contender that came after
/// the deletion. Before, that contender won, and under steady contention a waiter could lose
/// every round for as long as lock files kept being replaced.
#[test]
fn a_waiter_follows_a_deleted_lock_file_to_the_new_one() {
    let env = TestEnv::new();
    let lock = env.lock("follow");
    let mut old = hold_ignoring_term(&env, &lock, "3s");
    env.read_pid("old.pid");
    let first = "echo first >> order";
    let mut waiter = env.spawn([
        "run",
        "--lock",
        &lock,
        "--wait=30s",
        "--",
        "sh",
        "-c",
        first,
    ]);
    // The waiter blocks on the lock file before it is deleted.
    std::thread::sleep(Duration::from_millis(700));
    let path = env.lock_dir().unwrap().join(format!("{lock}.lock"));
    std::fs::remove_file(&path).unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let second = "echo second >> order";
    let mut later = env.spawn([
        "run",
        "--lock",
        &lock,
        "--wait=30s",
        "--",
        "sh",
        "-c",
        second,
    ]);
    waiter.wait().assert_code(0);
    later.wait().assert_code(0);
    old.wait().assert_code(76);
    let order = std::fs::read_to_string(env.file("order")).unwrap();
    assert_eq!(
        order, "first\nsecond\n",
        "the waiter that was in line before the deletion runs first"
    );
}

/// A watchdog stopped while elect ends (here: the lease lost to a deleted lock file, the job
/// stopped by elect itself) is killed as elect exits: stopped, it kept its copy of the old lock
/// file's descriptor, and every newcomer waited for it (exit 75 without `--wait`).
#[test]
fn a_stopped_watchdog_does_not_outlive_its_elect() {
    let env = TestEnv::new();
    let lock = env.lock("stopped-watchdog");
    let job = format!("{}; sleep 30", write_pid("job.pid"));
    let mut run = env.spawn([
        "run", "--lock", &lock, "--grace", "1s", "--", "sh", "-c", &job,
    ]);
    env.read_pid("job.pid");
    let watchdog = process::watchdog_of(run.pid()).expect("elect's watchdog");
    process::signal(watchdog, "STOP");
    let path = env.lock_dir().unwrap().join(format!("{lock}.lock"));
    std::fs::remove_file(&path).unwrap();
    let ended = run.wait();
    let lingering = process::is_alive(watchdog);
    if lingering {
        process::signal(watchdog, "KILL");
    }
    ended.assert_code(76);
    assert!(!lingering, "the stopped watchdog outlived elect");
    env.run(["run", "--lock", &lock, "--", "true"])
        .assert_code(0);
}

/// A holder whose job ignores SIGTERM (it lives on for its grace once the lease is lost) and
/// writes its pid to `old.pid`.
fn hold_ignoring_term(env: &TestEnv, lock: &str, grace: &str) -> support::env::Running {
    let job = format!(
        "trap '' TERM; {}; while :; do sleep 0.05; done",
        write_pid("old.pid")
    );
    env.spawn([
        "run", "--lock", lock, "--ttl", "60s", "--grace", grace, "--", "sh", "-c", &job,
    ])
}
