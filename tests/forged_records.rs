//! Records that someone else wrote into the backend are shown escaped: a holder id, a host or a
//! history entry cannot clear the screen or add a line that looks like elect's own. JSON keeps
//! them as JSON escapes them. A key elect cannot read does not hide the other locks.

mod support {
    pub mod certs;
    pub mod net;
    pub mod postgres_server;
    pub mod process;
    pub mod programs;
    pub mod redis_server;
}

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::postgres_server::{PostgresServer, DATABASE};
use support::redis_server::RedisServer;

const FORGED_HOLDER: &str = r#"{"id":"evil\u001b[2J\r\nelect: error: fake","host":"h\u0007\u009b\u202e\nMAINPID=1","pid":1,"acquired_at":"2026-01-01T00:00:00Z","ttl":1000,"token":5,"version":"x"}"#;
const FORGED_RUN: &str = r#"{"last_run":{"holder":"x\u001b]0;title\u0007","host":"web\r\nelect: error: fake","pid":1,"token":4,"started_at":"2026-01-01T00:00:00Z","finished_at":"2026-01-01T00:00:01Z","duration_ms":1000,"exit_code":0}}"#;

fn elect(backend: &str, dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_elect"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ELECT_") {
            cmd.env_remove(key);
        }
    }
    if let Some(lock_dir) = backend.strip_prefix("file://") {
        cmd.env("ELECT_LOCK_DIR", lock_dir);
    } else {
        cmd.env("ELECT_BACKEND", backend);
    }
    cmd.env("HOME", dir)
        .env_remove("XDG_CONFIG_HOME")
        .current_dir(dir)
        .stdin(Stdio::null());
    cmd
}

fn output(mut cmd: Command) -> Output {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run elect")
}

/// No control character but the line ends, and no line that pretends to be elect's.
fn assert_escaped(what: &str, text: &str, lines: usize) {
    assert!(
        !text
            .chars()
            .any(|c| (c.is_control() && c != '\n') || c == '\u{202e}'),
        "{what} holds a raw control character: {text:?}"
    );
    assert_eq!(text.lines().count(), lines, "{what}: {text}");
    assert!(
        !text.lines().any(|l| l.starts_with("elect: error: fake")),
        "{what}: {text}"
    );
}

/// What every backend must show for the forged lock `forged` next to the honest lock `fine`.
fn check_outputs(backend: &str, dir: &Path) {
    check_outputs_and(backend, dir, |_| {});
}

/// [`check_outputs`], with more checks of the status table.
fn check_outputs_and(backend: &str, dir: &Path, check_extra: impl Fn(&str)) {
    let mut run = elect(backend, dir);
    run.args(["run", "--lock", "forged", "--", "true"]);
    let out = output(run);
    assert_eq!(out.status.code(), Some(75), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_escaped("the held-by line", &err, 1);
    assert!(err.contains(r"evil\x1b[2J\r\nelect: error: fake"), "{err}");

    let mut status = elect(backend, dir);
    status.arg("status");
    let out = output(status);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let table = String::from_utf8_lossy(&out.stdout);
    assert_escaped("the status table", &table, 3);
    assert!(table.lines().any(|l| l.starts_with("fine ")), "{table}");
    check_extra(&table);

    let mut json = elect(backend, dir);
    json.args(["status", "--json", "--lock", "forged"]);
    let out = output(json);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(doc["holder"]["id"], "evil\u{1b}[2J\r\nelect: error: fake");
}

#[test]
fn a_forged_redis_record_is_shown_escaped() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let url = server.url();
    let mut fine = elect(&url, dir.path());
    fine.args(["run", "--lock", "fine", "--", "true"]);
    assert!(output(fine).status.success());
    // The holder key, as redis-cli SET would write it: secret, newline, JSON.
    let value = format!("abc\n{FORGED_HOLDER}");
    let set = server.command(&["SET", "elect:{forged}", &value, "PX", "60000"]);
    assert!(set.contains("OK"), "{set}");
    check_outputs(&url, dir.path());

    // systemd's notifications while waiting name the holder's host: one assignment per line.
    let socket_path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut wait = elect(&url, dir.path());
    wait.env("NOTIFY_SOCKET", &socket_path).args([
        "run",
        "--lock",
        "forged",
        "--wait=1s",
        "--",
        "true",
    ]);
    let out = output(wait);
    assert_eq!(out.status.code(), Some(75), "{out:?}");
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).expect("a notification");
    let message = String::from_utf8_lossy(&buf[..n]);
    assert!(
        message.starts_with("STATUS=waiting for forged held by h"),
        "{message:?}"
    );
    assert_eq!(message.lines().count(), 1, "{message:?}");

    // A forged history record, and a key that is not UTF-8.
    let mut cli = Command::new("redis-cli");
    cli.args(["-p", &server.port.to_string(), "-x", "SET"]);
    let mut key = b"elect:{".to_vec();
    key.extend_from_slice(&[0xff, 0xfe]);
    key.push(b'}');
    let mut child = cli
        .arg(std::ffi::OsStr::from_bytes(&key))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-cli");
    child.stdin.take().unwrap().write_all(b"junk").unwrap();
    child.wait().unwrap();
    let mut status = elect(&url, dir.path());
    status.arg("status");
    let out = output(status);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_escaped("status", &String::from_utf8_lossy(&out.stdout), 3);
}

/// Holds a flock on `path` from another process until killed.
fn hold_flock(path: &Path) -> Child {
    let child = Command::new("flock")
        .arg(path)
        .args(["sleep", "60"])
        .spawn()
        .expect("flock(1)");
    let ino = format!(":{} ", std::fs::metadata(path).unwrap().ino());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string("/proc/locks")
        .unwrap_or_default()
        .contains(&ino)
    {
        assert!(
            Instant::now() < deadline,
            "flock(1) never locked {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

#[test]
fn a_forged_lock_file_record_is_shown_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let locks = dir.path().join("locks");
    let url = format!("file://{}", locks.display());
    let mut fine = elect(&url, dir.path());
    fine.args(["run", "--lock", "fine", "--", "true"]);
    let out = output(fine);
    assert!(out.status.success(), "{out:?}");
    // The record layout of a lock file: the holder at 0, the history at 1024, space-padded.
    let path = locks.join("forged.lock");
    let file = std::fs::File::create(&path).unwrap();
    let mut records = vec![b' '; 2048];
    records[..FORGED_HOLDER.len()].copy_from_slice(FORGED_HOLDER.as_bytes());
    records[1024..1024 + FORGED_RUN.len()].copy_from_slice(FORGED_RUN.as_bytes());
    file.write_all_at(&records, 0).unwrap();
    drop(file);
    let mut holder = hold_flock(&path);
    check_outputs(&url, dir.path());
    let _ = holder.kill();
    let _ = holder.wait();
}

/// A row written by hand: control characters, a time no clock shows (`infinity`), a pid and a
/// history entry elect would never write.
#[test]
fn a_forged_postgres_row_is_shown_escaped() {
    let server = PostgresServer::start();
    let dir = tempfile::tempdir().unwrap();
    let url = server.url();
    for lock in ["fine", "forged"] {
        let mut run = elect(&url, dir.path());
        run.args(["run", "--lock", lock, "--", "true"]);
        let out = output(run);
        assert!(out.status.success(), "{out:?}");
    }
    server.psql_in(
        DATABASE,
        &format!(
            "UPDATE elect_leases SET holder_id = E'evil\\x1b[2J\\r\\nelect: error: fake', \
             host = E'h\\x07', pid = 99999999999, acquired_at = 'infinity', \
             expires_at = now() + interval '1 hour', \
             last_run = '{}' WHERE name = 'forged'",
            FORGED_RUN
                .strip_prefix("{\"last_run\":")
                .and_then(|run| run.strip_suffix('}'))
                .unwrap()
        ),
    );
    check_outputs_and(&url, dir.path(), |table| {
        assert!(table.contains("invalid time"), "{table}");
    });
}
