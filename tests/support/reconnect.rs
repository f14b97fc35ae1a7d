//! Connection resets between a waiting `elect run --wait` and its server: the scenarios that the
//! network backends' tests share.
//!
//! The waiter reaches the server through a [`Proxy`] that resets its connections; the holder
//! (with a ttl long enough that it renews nothing during a test) releases when told to, through
//! the same proxy or directly. What is measured is how long after the release, or after the path
//! healed, the waiter's job starts; and that `status` and `release` end in bounded time.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::process::signal;
use super::proxy::{Mode, Proxy};

/// How soon after the path heals (and the lock is free) the waiter must run.
pub const BOUND: Duration = Duration::from_secs(2);

/// `elect` with only PATH in its environment and `url` as its backend.
fn elect(url: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_elect"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("ELECT_BACKEND", url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Nanoseconds since the epoch, as `date +%s%N` writes them.
fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn stamp(file: &Path) -> Option<u128> {
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

/// Resets every connection through `proxy` every 0.4 s for `span` (each reset window 50 ms,
/// during which new connections are reset too), then lets everything through.
pub fn flap(proxy: &Proxy, span: Duration) {
    flap_with(
        proxy,
        span,
        Duration::from_millis(50),
        Duration::from_millis(350),
    );
}

/// Like [`flap`], with reset windows of `reset` and clear ones of `pass` in turn.
pub fn flap_with(proxy: &Proxy, span: Duration, reset: Duration, pass: Duration) {
    let end = Instant::now() + span;
    while Instant::now() < end {
        proxy.set_mode(Mode::Reset);
        std::thread::sleep(reset);
        proxy.set_mode(Mode::Pass);
        std::thread::sleep(pass);
    }
}

/// A holder, whose job runs until `go` exists and then notes its end in `end`.
struct Holder {
    child: Child,
    go: PathBuf,
    end: PathBuf,
}

impl Holder {
    fn start(url: &str, lock: &str, dir: &Path) -> Self {
        let (started, go, end) = (dir.join("h-started"), dir.join("h-go"), dir.join("h-end"));
        let script = format!(
            "touch {s}; while [ ! -e {g} ]; do sleep 0.02; done; date +%s%N > {e}",
            s = started.display(),
            g = go.display(),
            e = end.display()
        );
        let mut child = elect(url)
            // No renew within a test: the release is the first call after the resets.
            .args([
                "run", "--ttl", "60s", "--lock", lock, "--", "sh", "-c", &script,
            ])
            .spawn()
            .expect("start the holder");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !started.exists() {
            if let Ok(Some(_)) = child.try_wait() {
                let mut err = String::new();
                let _ = std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err);
                panic!("the holder ended before its job started: {err}");
            }
            assert!(Instant::now() < deadline, "the holder's job did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, go, end }
    }

    /// Ends the job; elect releases the lock as it exits.
    fn release(self) -> u128 {
        std::fs::write(&self.go, b"").unwrap();
        let out = self.child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "holder: {}", text(&out));
        stamp(&self.end).expect("the holder's end")
    }
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A waiter on `proxied` whose job notes its start in `start`, returned once it waits (its
/// stderr goes to `log`).
fn start_waiter(proxied: &str, lock: &str, dir: &Path, extra: &[&str]) -> Waiter {
    let start = dir.join("w-start");
    let log = dir.join("w-log");
    let script = format!("date +%s%N > {}", start.display());
    let child = elect(proxied)
        .env("ELECT_LOG", "elect=debug")
        .stderr(std::fs::File::create(&log).unwrap())
        .args(["run", "--lock", lock])
        .args(if extra.is_empty() {
            &["--wait"][..]
        } else {
            extra
        })
        .args(["--", "sh", "-c", &script])
        .spawn()
        .expect("start the waiter");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("waiting: held by")
    {
        assert!(Instant::now() < deadline, "the waiter did not queue");
        std::thread::sleep(Duration::from_millis(20));
    }
    Waiter { child, start, log }
}

struct Waiter {
    child: Child,
    start: PathBuf,
    log: PathBuf,
}

impl Waiter {
    /// Its exit code, its job's start and its log.
    fn finish(self) -> (Option<i32>, Option<u128>, String) {
        let out = finish(self.child, "the waiter");
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        (out.status.code(), stamp(&self.start), log)
    }
}

fn finish(child: Child, what: &str) -> Output {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            signal(pid as i32, "KILL");
            panic!("{what} still ran 30 s later");
        }
    }
}

/// Resets while a contender waits, the path heals, and 2 s later the holder releases: the
/// waiter runs within [`BOUND`] of the release (it reconnected meanwhile and armed its
/// wake-up again). The holder sits behind the same proxy: its release is its first call after
/// the resets, on a connection that died while idle.
pub fn resets_while_waiting_then_a_release(proxied: &str, proxy: &Proxy) {
    let dir = tempfile::tempdir().unwrap();
    let lock = "flapping";
    let holder = Holder::start(proxied, lock, dir.path());
    let waiter = start_waiter(proxied, lock, dir.path(), &[]);
    std::thread::sleep(Duration::from_millis(300));
    flap(proxy, Duration::from_secs(4));
    std::thread::sleep(Duration::from_secs(2));
    let released = holder.release();
    let (code, started, log) = waiter.finish();
    assert_eq!(code, Some(0), "waiter: {log}");
    let started = started.expect("the waiter's job ran");
    let gap = Duration::from_nanos(u64::try_from(started.saturating_sub(released)).unwrap());
    eprintln!("the waiter ran {gap:?} after the release");
    assert!(
        gap < BOUND,
        "the waiter ran {gap:?} after the release (bound {BOUND:?}); its log:\n{log}"
    );
    warnings_are_paced(&log);
}

/// The lock is released while the resets go on: the waiter runs within [`BOUND`] of the path
/// healing.
pub fn a_release_during_resets(direct: &str, proxied: &str, proxy: &Proxy) {
    let dir = tempfile::tempdir().unwrap();
    let lock = "released-in-the-storm";
    let holder = Holder::start(direct, lock, dir.path());
    let waiter = start_waiter(proxied, lock, dir.path(), &[]);
    std::thread::sleep(Duration::from_millis(300));
    flap(proxy, Duration::from_millis(1200));
    proxy.set_mode(Mode::Reset);
    let _ = holder.release();
    std::thread::sleep(Duration::from_secs(3));
    proxy.set_mode(Mode::Pass);
    let healed = now_ns();
    let (code, started, log) = waiter.finish();
    assert_eq!(code, Some(0), "waiter: {log}");
    let started = started.expect("the waiter's job ran");
    let gap = Duration::from_nanos(u64::try_from(started.saturating_sub(healed)).unwrap());
    eprintln!("the waiter ran {gap:?} after the path healed");
    assert!(
        gap < BOUND,
        "the waiter ran {gap:?} after the path healed (bound {BOUND:?}); its log:\n{log}"
    );
    warnings_are_paced(&log);
}

/// `--wait=3s` still ends the wait on time while every connection is reset, with the conflict
/// exit, and the job does not run.
pub fn the_wait_limit_holds_while_resetting(direct: &str, proxied: &str, proxy: &Proxy) {
    let dir = tempfile::tempdir().unwrap();
    let lock = "limited";
    let holder = Holder::start(direct, lock, dir.path());
    let begun = Instant::now();
    let waiter = start_waiter(proxied, lock, dir.path(), &["--wait=3s"]);
    proxy.set_mode(Mode::Reset);
    let (code, started, log) = waiter.finish();
    let took = begun.elapsed();
    proxy.set_mode(Mode::Pass);
    let _ = holder.release();
    assert_eq!(code, Some(75), "waiter: {log}");
    assert!(started.is_none(), "the job must not run");
    // 3 s of waiting, plus start-up and a loaded machine.
    assert!(took < Duration::from_secs(6), "took {took:?}: {log}");
}

/// The retry warnings come at most once per few seconds, each saying when the next try is.
fn warnings_are_paced(log: &str) {
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("warning") && l.contains("unavailable"))
        .collect();
    // The resets last about 4 s: a warning per second would be 4 or more.
    assert!(
        warnings.len() <= 3,
        "{} warnings:\n{}",
        warnings.len(),
        warnings.join("\n")
    );
    for w in &warnings {
        assert!(w.contains("next try in"), "the warning says when: {w}");
    }
}

/// `elect status` and `elect release` while every connection is reset end in bounded time with
/// the unavailable exit (69), and right after the path heals they work.
pub fn status_and_release_resume_after_resets(direct: &str, proxied: &str, proxy: &Proxy) {
    let dir = tempfile::tempdir().unwrap();
    let lock = "operated";
    let holder = Holder::start(direct, lock, dir.path());
    let timed = |args: &[&str]| {
        let begun = Instant::now();
        let out = finish(elect(proxied).args(args).spawn().unwrap(), "elect");
        (out, begun.elapsed())
    };
    proxy.set_mode(Mode::Reset);
    for args in [
        &["status", "--lock", lock][..],
        &["release", "--lock", lock, "--token", "1"],
    ] {
        let (out, took) = timed(args);
        assert_eq!(out.status.code(), Some(69), "{args:?}: {}", text(&out));
        assert!(took < Duration::from_secs(10), "{args:?} took {took:?}");
    }
    proxy.set_mode(Mode::Pass);
    let (out, took) = timed(&["status", "--lock", lock, "--json"]);
    assert_eq!(out.status.code(), Some(0), "status: {}", text(&out));
    assert!(took < BOUND, "status took {took:?}");
    let json = String::from_utf8_lossy(&out.stdout).into_owned();
    let token = json
        .split("\"token\":")
        .nth(1)
        .and_then(|rest| {
            rest.split(|c: char| !c.is_ascii_digit())
                .find(|s| !s.is_empty())
        })
        .unwrap_or_else(|| panic!("no token in {json}"))
        .to_owned();
    let (out, took) = timed(&["release", "--lock", lock, "--token", &token]);
    assert_eq!(out.status.code(), Some(0), "release: {}", text(&out));
    assert!(took < BOUND, "release took {took:?}");
    let (out, _) = timed(&["status", "--lock", lock]);
    assert_eq!(out.status.code(), Some(3), "free now: {}", text(&out));
    // The holder learns of it at its next renew; end its job now.
    std::fs::write(&holder.go, b"").unwrap();
    let _ = finish(holder.child, "the holder");
}

/// The `#[test]`s of the scenarios above for a backend whose `$behind_proxy()` gives `(server,
/// proxy, url)` (elect reaching the server through the proxy).
#[macro_export]
macro_rules! reconnect_tests {
    ($behind_proxy:path) => {
        #[test]
        fn resets_while_waiting_then_a_release() {
            use $crate::support::reconnect as scenario;
            let (_server, proxy, proxied) = $behind_proxy();
            scenario::resets_while_waiting_then_a_release(&proxied, &proxy);
        }

        #[test]
        fn a_release_during_resets() {
            use $crate::support::reconnect as scenario;
            let (server, proxy, proxied) = $behind_proxy();
            scenario::a_release_during_resets(&server.url(), &proxied, &proxy);
        }

        #[test]
        fn the_wait_limit_holds_while_resetting() {
            use $crate::support::reconnect as scenario;
            let (server, proxy, proxied) = $behind_proxy();
            scenario::the_wait_limit_holds_while_resetting(&server.url(), &proxied, &proxy);
        }

        #[test]
        fn status_and_release_resume_after_resets() {
            use $crate::support::reconnect as scenario;
            let (server, proxy, proxied) = $behind_proxy();
            scenario::status_and_release_resume_after_resets(&server.url(), &proxied, &proxy);
        }
    };
}
