//! Ctrl-Z at a terminal: a tmux pane, bash's job control, and a contender waiting meanwhile.

use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::arena::{contend, Arena};
use super::check::check;
use super::report::Row;
use super::server::Server;
use super::setup::{BackendKind, Setup};
use super::{GRACE, JOB_CODE, TTL};
use crate::programs;

/// Scenario 11: elect runs a job in the foreground of a tmux pane; Ctrl-Z is typed, and `fg`
/// after longer than the ttl. The job and the front (the process bash started) stop, bash says
/// so, elect and its watchdog go on, the lease stays renewed past the ttl so that a waiting
/// contender does not get in, and after `fg` the job finishes normally with its own exit code.
pub fn ctrl_z(kind: BackendKind) -> Row {
    let tmux = programs::require("tmux", "install the tmux package");
    let server = Server::start(kind);
    let arena = Arena::new("ctrl-z");
    let setup = Setup::new("ctrl-z-tmux", kind, &[]).mode("beat");
    let socket = arena.dir.path().join("tmux.sock");
    let exit_file = arena.dir.path().join("tmux.exit");
    let work = Duration::from_secs(6);
    let tmux_cmd = |args: &[&str]| {
        let out = Command::new(&tmux)
            .arg("-S")
            .arg(&socket)
            .args(args)
            .output()
            .expect("run tmux");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let (key, value) = server.env();
    let line = format!(
        "cd {dir} && {key}='{value}' FAULT_WITNESS={w} FAULT_PROBE={p} FAULT_RUN=0 FAULT_MODE=beat \
         FAULT_WORK_MS={work} {elect} run --lock {lock} --ttl {ttl}ms --grace {grace}ms -- perl {job}",
        dir = arena.dir.path().display(),
        w = arena.witness.path().display(),
        p = arena.probe.display(),
        work = work.as_millis(),
        elect = env!("CARGO_BIN_EXE_elect"),
        lock = arena.lock,
        ttl = TTL.as_millis(),
        grace = GRACE.as_millis(),
        job = arena.job.display(),
    );
    tmux_cmd(&[
        "new-session",
        "-d",
        "-s",
        "faults",
        "-x",
        "200",
        "-y",
        "50",
        "env -i PATH=/usr/bin:/bin TERM=screen HOME=/tmp bash --norc --noprofile",
    ]);
    struct KillTmux<'a>(&'a dyn Fn(&[&str]) -> String);
    impl Drop for KillTmux<'_> {
        fn drop(&mut self) {
            (self.0)(&["kill-server"]);
        }
    }
    let _guard = KillTmux(&tmux_cmd);
    std::thread::sleep(Duration::from_millis(300));
    tmux_cmd(&["send-keys", "-t", "faults", &line, "Enter"]);
    let mut v = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let life = loop {
        let record = arena.witness.snapshot();
        if let Some(l) = record.lives.iter().find(|l| l.run == Some(0)) {
            break l.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the job in tmux never started; pane:\n{}",
            tmux_cmd(&["capture-pane", "-p", "-t", "faults"])
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let parent = |pid: i32| -> i32 {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|t| {
                t.rsplit_once(") ")
                    .and_then(|(_, r)| r.split_whitespace().nth(1).and_then(|p| p.parse().ok()))
            })
            .unwrap_or(0)
    };
    let state = |pid: i32| -> char {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|t| t.rsplit_once(") ").and_then(|(_, r)| r.chars().next()))
            .unwrap_or('-')
    };
    let watchdog = parent(life.pid);
    let elect = parent(watchdog);
    let front = parent(elect);
    arena.witness.watch(0, elect);
    let ctrl_z_at = std::thread::scope(|scope| {
        let contender = scope.spawn(|| contend(&arena, &server, &setup, 1));
        std::thread::sleep(Duration::from_millis(500));
        let at = Instant::now();
        tmux_cmd(&["send-keys", "-t", "faults", "C-z"]);
        std::thread::sleep(Duration::from_millis(400));
        for (what, pid, stopped) in [
            ("job", life.pid, true),
            ("front", front, true),
            ("watchdog", watchdog, false),
            ("elect", elect, false),
        ] {
            if (state(pid) == 'T') != stopped {
                v.push(format!(
                    "CTRL-Z: the {what} (pid {pid}) is {} 400 ms after Ctrl-Z",
                    if stopped { "not stopped" } else { "stopped" }
                ));
            }
        }
        let pane = tmux_cmd(&["capture-pane", "-p", "-t", "faults"]);
        if !pane.contains("Stopped") {
            v.push(format!(
                "CTRL-Z: bash did not report the job stopped; pane:\n{pane}"
            ));
        }
        std::thread::sleep((TTL + Duration::from_secs(1)).saturating_sub(at.elapsed()));
        let fg = format!("fg; echo $? > {}", exit_file.display());
        tmux_cmd(&["send-keys", "-t", "faults", &fg, "Enter"]);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !exit_file.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        arena.shared.stop.store(true, Ordering::SeqCst);
        let _ = contender.join();
        at
    });
    std::thread::sleep(Duration::from_secs(1));
    let pane = tmux_cmd(&["capture-pane", "-p", "-t", "faults"]);
    println!("tmux pane after Ctrl-Z and fg:\n{}", pane.trim_end());
    let code = std::fs::read_to_string(&exit_file).unwrap_or_default();
    if code.trim() != JOB_CODE.to_string() {
        v.push(format!(
            "CTRL-Z: elect in tmux exited {:?}, expected the job's {JOB_CODE}; pane:\n{pane}",
            code.trim()
        ));
    }
    arena.witness.catch_up();
    let record = arena.witness.snapshot();
    let life = record
        .lives
        .iter()
        .find(|l| l.run == Some(0))
        .cloned()
        .expect("the tmux job's life");
    if !life.done {
        v.push("CTRL-Z: the job in tmux did not finish by itself".to_owned());
    }
    if life.close.is_none_or(|c| c < ctrl_z_at + TTL) {
        v.push(format!(
            "CTRL-Z: the job in tmux ended {:?} ms after Ctrl-Z, before the ttl: the lease was not kept",
            life.close.map(|c| c.saturating_duration_since(ctrl_z_at).as_millis())
        ));
    }
    let gap = life
        .beats
        .windows(2)
        .map(|w| w[1].duration_since(w[0]))
        .max()
        .unwrap_or_default();
    if gap < TTL {
        v.push(format!(
            "CTRL-Z: the job never stopped beating for longer than the ttl (longest gap {} ms)",
            gap.as_millis()
        ));
    }
    if let Some(first_other) = record.lives.iter().find(|l| l.run != Some(0)) {
        if life.close.is_some_and(|c| first_other.connect < c) {
            v.push("CTRL-Z: the contender got in while the tmux job ran".to_owned());
        }
    }
    let mut row = check(&setup, &arena, &[]);
    row.violations.extend(v);
    row.print();
    drop(server);
    if !row.violations.is_empty() {
        let kept = arena.dir.keep();
        panic!(
            "ctrl-z-tmux on {}: {} violation(s) (files kept in {}):\n{}",
            kind.name(),
            row.violations.len(),
            kept.display(),
            row.violations.join("\n")
        );
    }
    row
}
