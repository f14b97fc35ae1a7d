//! Files elect reads or writes as root, attacked by a real second user (`nobody`, through
//! runuser): configuration files another user can write are refused, root never reads another
//! user's per-user file, and a symlink planted where the metrics go never redirects the write.
//!
//! These tests need root (to become `nobody` and to own what `nobody` cannot touch).

mod support {
    pub mod env;
    pub mod process;
}

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use support::env::TestEnv;

const NOBODY: u32 = 65534;

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests attack elect as a second user: run them as root"
    );
}

/// Runs a shell command as `nobody`.
fn as_nobody(script: &str) {
    let out = Command::new("runuser")
        .args(["-u", "nobody", "--", "sh", "-c", script])
        .output()
        .expect("runuser");
    assert!(out.status.success(), "as nobody: {script}: {out:?}");
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn chown(path: &Path, uid: u32) {
    std::os::unix::fs::chown(path, Some(uid), None).unwrap();
}

/// `elect --config PATH config`: exit 2 with one line naming `what`.
fn assert_refused(env: &TestEnv, conf: &Path, what: &str) {
    let out = env.run(["--config", conf.to_str().unwrap(), "config"]);
    out.assert_code(2);
    let line = out.one_error_line();
    assert!(line.contains(what), "expected {what:?} in: {line}");
    assert!(!out.stdout.contains("from-the-attacker"), "{}", out.stdout);
}

#[test]
fn config_files_another_user_can_write_are_refused() {
    require_root();
    let env = TestEnv::new();
    chmod(env.path(), 0o755);
    let dir = env.file("conf");
    std::fs::create_dir(&dir).unwrap();
    let conf = dir.join("elect.conf");
    std::fs::write(&conf, "ELECT_ID=from-the-attacker\n").unwrap();
    chmod(&conf, 0o644);
    let out = env.run(["--config", conf.to_str().unwrap(), "config"]);
    out.assert_code(0);
    assert!(
        out.stdout.contains("from-the-attacker"),
        "a safe file is read"
    );

    // The file is another user's.
    chown(&conf, NOBODY);
    assert_refused(&env, &conf, "is owned by uid 65534");
    chown(&conf, 0);
    // The file is writable by others.
    chmod(&conf, 0o666);
    assert_refused(&env, &conf, "writable by group or others (mode 0666)");
    chmod(&conf, 0o620);
    assert_refused(&env, &conf, "writable by group or others (mode 0620)");
    chmod(&conf, 0o644);
    // A directory above it is another user's: they could replace the file.
    chown(&dir, NOBODY);
    assert_refused(&env, &conf, &format!("the directory {}", dir.display()));
    chown(&dir, 0);
    chmod(&dir, 0o777);
    assert_refused(&env, &conf, "(mode 0777)");
    // Sticky, as /tmp: others cannot replace the root-owned file in it.
    chmod(&dir, 0o1777);
    env.run(["--config", conf.to_str().unwrap(), "config"])
        .assert_code(0);
    // ... but a file they planted there is theirs.
    let planted = dir.join("planted.conf");
    as_nobody(&format!(
        "echo ELECT_ID=from-the-attacker > {}",
        planted.display()
    ));
    assert_refused(&env, &planted, "is owned by uid 65534");
    // A link to a file that is unsafe is as unsafe: the real path is checked.
    let link = env.file("link.conf");
    std::os::unix::fs::symlink(&planted, &link).unwrap();
    assert_refused(&env, &link, "is owned by uid 65534");
    // A FIFO never hangs elect.
    let fifo = env.file("fifo.conf");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    assert_refused(&env, &fifo, "not a regular file");
    // A backend file picks where root's leases live: the same rule.
    let url_file = dir.join("backend.url");
    as_nobody(&format!(
        "echo file://{} > {}",
        dir.display(),
        url_file.display()
    ));
    let out = env.run([
        "run",
        "--lock",
        "x",
        "--backend-file",
        url_file.to_str().unwrap(),
        "--",
        "touch",
        "ran",
    ]);
    out.assert_code(2);
    assert!(
        out.one_error_line().contains("is owned by uid 65534"),
        "{}",
        out.stderr
    );
    // The same through ELECT_CONFIG, on `run`: nothing runs.
    let mut cmd = env.elect();
    cmd.env("ELECT_CONFIG", &planted)
        .args(["run", "--lock", "x", "--", "touch", "ran"]);
    env.run_command(cmd).assert_code(2);
    assert!(!env.file("ran").exists());
}

#[test]
fn root_does_not_read_another_users_per_user_file() {
    require_root();
    let env = TestEnv::new();
    chmod(env.path(), 0o755);
    let home = env.file("home");
    std::fs::create_dir(&home).unwrap();
    chown(&home, NOBODY);
    as_nobody(&format!(
        "mkdir -p {0}/.config && echo ELECT_ID=from-the-attacker > {0}/.config/elect.conf",
        home.display()
    ));
    // As after `sudo -E`: HOME (and XDG_CONFIG_HOME) still name the user's.
    let mut cmd = env.elect();
    cmd.env("HOME", &home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .arg("config");
    let out = env.run_command(cmd);
    out.assert_code(0);
    assert!(
        !out.stdout.contains("from-the-attacker"),
        "root read another user's file:\n{}",
        out.stdout
    );
    // The user themself reads it.
    let out = Command::new("runuser")
        .args(["-u", "nobody", "--", "env"])
        .arg(format!("HOME={}", home.display()))
        .args([env!("CARGO_BIN_EXE_elect"), "config"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("from-the-attacker"));
}

#[test]
fn a_planted_symlink_never_redirects_the_metrics_file() {
    require_root();
    let env = TestEnv::new();
    chmod(env.path(), 0o755);
    // A textfile directory that the monitoring user (here nobody) owns.
    let textfile = env.file("textfile");
    std::fs::create_dir(&textfile).unwrap();
    chown(&textfile, NOBODY);
    let victim = env.file("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    let target = textfile.join("elect.prom");
    as_nobody(&format!("ln -s {} {}", victim.display(), target.display()));
    // The job plants links at the names an elect of this pid would have used for its
    // temporary file, then lets it write.
    let lock = env.lock("metrics");
    let plant = format!(
        "for n in $PPID $(cat elect.pid); do \
           runuser -u nobody -- ln -sf {victim} {dir}/elect.tmp.$n; \
           runuser -u nobody -- ln -sf {victim} {dir}/.elect.prom.$n.tmp; \
         done",
        victim = victim.display(),
        dir = textfile.display()
    );
    let mut run = env.spawn([
        "run",
        "--lock",
        &lock,
        "--metrics-file",
        target.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        &format!("while [ ! -s elect.pid ]; do sleep 0.01; done; {plant}"),
    ]);
    std::fs::write(env.file("elect.pid"), format!("{}\n", run.pid())).unwrap();
    run.wait().assert_code(0);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    let meta = std::fs::symlink_metadata(&target).unwrap();
    assert!(meta.is_file(), "the metrics file replaces the link");
    assert_eq!(meta.uid(), 0);
    let text = std::fs::read_to_string(&target).unwrap();
    assert!(text.contains("elect_exit_code{lock=\""), "{text}");
}
