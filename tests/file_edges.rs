//! The file backend's edges, each attack run for real: what a job can do with the lock file it
//! inherits (as a second user it drops to), a lock file renamed while held, lock directories and
//! metrics directories that a second user races or plants links in.

mod support;

use std::path::Path;

use support::{write_pid, TestEnv};

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
        let json = support::Json::parse(&out.stdout).unwrap();
        json.get("last_run").get("token").as_u64().unwrap()
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
    let job = format!(
        "trap '' TERM; {}; while :; do sleep 0.05; done",
        write_pid("old.pid")
    );
    let mut old = env.spawn([
        "run", "--lock", &lock, "--ttl", "60s", "--grace", "3s", "--", "sh", "-c", &job,
    ]);
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
    let mut waiter = env.elect();
    waiter
        .args(["run", "--lock", &lock, "--wait=20s", "--", "sh", "-c"])
        .arg(format!(
            "kill -0 {old_job} 2>/dev/null && echo overlap > overlap; touch ran"
        ));
    env.run_command(waiter).assert_code(0);
    assert!(env.file("ran").exists());
    assert!(
        !env.file("overlap").exists(),
        "the newcomer ran while the old job lived"
    );
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

