//! `elect` end to end on the ZooKeeper backend: the shared battery of scenarios, then what only
//! ZooKeeper has (the session timeout's bounds, digest credentials, kazoo's `Lock` on the same
//! queue, a three-server ensemble whose server under the holder's session is stopped or
//! killed). One server for the whole binary (Java takes seconds to start); each test has a base
//! path of its own in it, so that `status` sees only the test's own locks.

mod support {
    pub mod battery;
    pub mod battery_tests;
    pub mod env;
    pub mod net;
    pub mod process;
    pub mod programs;
    pub mod zk_server;
}

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::battery_tests;
use support::env::{until_exists, wait_for, write_pid, Running, TestEnv};
use support::zk_server;
use support::zk_server::ZkServer;

/// A test's own namespace on the shared server, with digest credentials (so that the
/// password's redaction is checked too).
fn env_for(test: &str) -> TestEnv {
    let server = ZkServer::shared();
    let url = format!("zk://battery:battery-secret@{}/{test}", server.endpoint());
    TestEnv::with_backend(&url).private()
}

/// A battery scenario under a base path of its own on the shared server. A used lock stays listed
/// by `status` (as free) through its `<name>.last` history node.
fn on_zk(test: &str, scenario: fn(&TestEnv)) {
    scenario(&env_for(test));
}

battery_tests::tests!(on_zk; common, forced_release_frees_a_dead_holders_lease);

const SHORT: [&str; 4] = ["--ttl", "2s", "--grace", "500ms"];

/// `elect run --lock LOCK OPTIONS... -- sh -c SCRIPT`, in the background.
fn run_sh(env: &TestEnv, lock: &str, options: &[&str], script: &str) -> Running {
    let mut args = vec!["run", "--lock", lock];
    args.extend_from_slice(options);
    args.extend_from_slice(&["--", "sh", "-c", script]);
    env.spawn(args)
}

/// The children of a node, through kazoo (the `python3-kazoo` package).
fn children(path: &str) -> Vec<String> {
    let out = kazoo(&format!(
        "print('\\n'.join(zk.get_children({path:?})) if zk.exists({path:?}) else '')"
    ));
    out.lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Runs a Python snippet with `zk`, a started KazooClient on the shared server; its stdout.
fn kazoo(body: &str) -> String {
    let out = kazoo_command(body).output().expect("run python3");
    assert!(
        out.status.success(),
        "kazoo script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn kazoo_command(body: &str) -> Command {
    // Debian's python3-kazoo lives in the system Python, whatever `python3` is first on PATH.
    let python = ["/usr/bin/python3", "python3"]
        .into_iter()
        .find(|p| {
            Command::new(p)
                .args(["-c", "import kazoo"])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .unwrap_or_else(|| {
            panic!("kazoo not found: install the python3-kazoo package (apt-get install python3-kazoo)")
        });
    let script = format!(
        "import sys, time\n\
         from kazoo.client import KazooClient\n\
         zk = KazooClient(hosts={:?}, timeout=10)\n\
         zk.start()\n\
         {body}\n\
         zk.stop()\n",
        ZkServer::shared().endpoint()
    );
    let mut cmd = Command::new(python);
    cmd.args(["-c", &script]).stdin(Stdio::null());
    cmd
}

#[test]
fn losers_leave_nothing_in_the_queue() {
    let env = env_for("losers");
    let lock = env.lock("three");
    let mut runs: Vec<_> = (0..3)
        .map(|i| run_sh(&env, &lock, &[], &format!("echo {i} >> ran; sleep 1.5")))
        .collect();
    let mut codes: Vec<i32> = runs.iter_mut().map(|r| r.wait().code()).collect();
    codes.sort();
    assert_eq!(codes, [0, 75, 75]);
    assert_eq!(env.lines("ran").len(), 1, "exactly one job ran");
    assert_eq!(children(&format!("/losers/{lock}")), Vec::<String>::new());
    let mut left = children("/losers");
    left.sort();
    assert_eq!(
        left,
        [lock.clone(), format!("{lock}.last")],
        "only the lock's node and its history stay"
    );
}

#[test]
fn a_waiter_takes_over_within_the_session_timeout_after_the_holder_is_killed() {
    let env = env_for("crash");
    let lock = env.lock("crash");
    let holder_script = format!("{}; {}", write_pid("holder.pid"), until_exists("never"));
    let mut holder = run_sh(&env, &lock, &SHORT, &holder_script);
    env.read_pid("holder.pid");
    let mut waiter = run_sh(
        &env,
        &lock,
        &[&SHORT[..], &["--wait", "-v"]].concat(),
        "date +%s%N > took-over",
    );
    waiter.wait_for_stderr("waiting", Duration::from_secs(10));
    let killed = Instant::now();
    holder.signal("KILL");
    let _ = holder.wait();
    env.wait_for_file("took-over", Duration::from_secs(10));
    let took = killed.elapsed();
    // At once when the watchdog releases the dead elect's lease (see `handoff`); else the
    // session timeout (2 s) plus the server's expiry tick, on a loaded machine.
    assert!(took < Duration::from_secs(5), "takeover took {took:?}");
    waiter.wait().assert_code(0);
}

#[test]
fn a_ttl_above_the_servers_maximum_session_timeout_is_refused() {
    let env = env_for("bounds");
    let lock = env.lock("long");
    let too_long = format!("{}s", zk_server::MAX_SESSION_MS / 1000 + 30);
    let out = env.run([
        "run", "--lock", &lock, "--ttl", &too_long, "--", "touch", "ran",
    ]);
    out.assert_code(2);
    let line = out.one_error_line();
    assert!(
        line.contains("granted a session timeout of 1m") && line.contains("maxSessionTimeout"),
        "{line}"
    );
    assert!(!env.file("ran").exists());
}

#[test]
fn other_credentials_cannot_join_or_delete_the_queue() {
    let env = env_for("acl");
    let lock = env.lock("acl");
    let mut holder = run_sh(&env, &lock, &[], &until_exists("go"));
    wait_for("the holder to hold", Duration::from_secs(10), || {
        env.status(["--lock", &lock]).code() == 0
    });
    let server = ZkServer::shared();
    let intruder = TestEnv::with_backend(&format!(
        "zk://intruder:other-secret@{}/acl",
        server.endpoint()
    ));
    let out = intruder.run(["run", "--lock", &lock, "--wait=2s", "--", "touch", "ran"]);
    out.assert_code(69);
    assert!(out.one_error_line().contains("not authorized"), "{out}");
    assert!(!out.stderr.contains("other-secret"), "{out}");
    // Reading is open: status without credentials names the holder.
    let anonymous = TestEnv::with_backend(&format!("zk://{}/acl", server.endpoint()));
    anonymous.status(["--lock", &lock]).assert_code(0);
    // And kazoo without credentials cannot delete the holder's node.
    let deleted = kazoo_command(&format!(
        "from kazoo.exceptions import NoAuthError\n\
         try:\n    [zk.delete('/acl/{lock}/' + c) for c in zk.get_children('/acl/{lock}')]\n    print('deleted')\n\
         except NoAuthError:\n    print('refused')"
    ))
    .output()
    .expect("python3");
    assert_eq!(String::from_utf8_lossy(&deleted.stdout).trim(), "refused");
    std::fs::write(env.file("go"), "").unwrap();
    holder.wait().assert_code(0);
}

#[test]
fn the_password_from_the_environment_is_used_and_withheld() {
    let server = ZkServer::shared();
    let env = TestEnv::with_backend(&format!("zk://envuser@{}/envpw", server.endpoint()));
    let lock = env.lock("envpw");
    let mut cmd = env.elect();
    cmd.env("ELECT_ZK_PASSWORD", "zk-env-secret").args([
        "run",
        "--lock",
        &lock,
        "--",
        "sh",
        "-c",
        "echo \"${ELECT_ZK_PASSWORD-unset} $ELECT_BACKEND\" > env.out",
    ]);
    env.run_command(cmd).assert_code(0);
    assert_eq!(
        env.lines("env.out"),
        [format!("unset zk://envuser@{}/envpw", server.endpoint())]
    );
    // Without it: a user and no password is a usage error, said in one line.
    let out = env.run(["run", "--lock", &lock, "--", "true"]);
    out.assert_code(2);
    assert!(out.one_error_line().contains("ELECT_ZK_PASSWORD"), "{out}");
}

#[test]
fn kazoo_holds_and_elect_skips_or_waits() {
    let env = TestEnv::with_backend(&format!("zk://{}/kz1", ZkServer::shared().endpoint()));
    let lock = env.lock("kazoo");
    let go = env.file("kazoo.go");
    let held = env.file("kazoo.held");
    let mut holder = Command::new("sh");
    let script = format!(
        "lock = zk.Lock('/kz1/{lock}', 'kazoo-holder')\n\
         lock.acquire()\n\
         open({held:?}, 'w').close()\n\
         import os\n\
         while not os.path.exists({go:?}): time.sleep(0.02)\n\
         time.sleep(0.5)\n\
         lock.release()"
    );
    let _ = &mut holder;
    let mut holder = kazoo_command(&script).spawn().expect("start kazoo");
    support::env::wait_for_file(&held, Duration::from_secs(15));
    // Busy: 75, naming a holder without elect's metadata.
    let out = env.run(["run", "--lock", &lock, "--", "touch", "ran"]);
    out.assert_code(75);
    assert!(!env.file("ran").exists());
    let status = env.status(["--lock", &lock, "--json"]);
    status.assert_code(0);
    assert!(status.stdout.contains("kazoo-holder"), "{status}");
    // Waiting: runs once kazoo releases.
    let mut waiter = env.spawn(["run", "--lock", &lock, "--wait", "-v", "--", "touch", "ran"]);
    waiter.wait_for_stderr("waiting", Duration::from_secs(10));
    assert!(!env.file("ran").exists());
    std::fs::write(&go, "").unwrap();
    waiter.wait().assert_code(0);
    assert!(env.file("ran").exists());
    assert!(holder.wait().expect("kazoo").success());
}

#[test]
fn elect_holds_and_kazoo_cannot_acquire() {
    let env = TestEnv::with_backend(&format!("zk://{}/kz2", ZkServer::shared().endpoint()));
    let lock = env.lock("elect");
    let mut holder = run_sh(&env, &lock, &[], &until_exists("go"));
    wait_for("elect to hold", Duration::from_secs(10), || {
        env.status(["--lock", &lock]).code() == 0
    });
    let tried = kazoo(&format!(
        "lock = zk.Lock('/kz2/{lock}')\n\
         print(lock.acquire(blocking=False))\n\
         print(len(lock.contenders()))"
    ));
    assert_eq!(tried.split_whitespace().collect::<Vec<_>>(), ["False", "1"]);
    std::fs::write(env.file("go"), "").unwrap();
    holder.wait().assert_code(0);
    let after = kazoo(&format!(
        "lock = zk.Lock('/kz2/{lock}')\n\
         print(lock.acquire(blocking=False))\n\
         lock.release()"
    ));
    assert_eq!(after.trim(), "True");
}

#[test]
fn fifo_across_elect_and_kazoo() {
    let env = TestEnv::with_backend(&format!("zk://{}/kz3", ZkServer::shared().endpoint()));
    let lock = env.lock("fifo");
    let path = format!("/kz3/{lock}");
    let order = env.file("order");
    let mut first = run_sh(
        &env,
        &lock,
        &[],
        &format!("echo elect-1 >> order; {}", until_exists("go")),
    );
    wait_for("elect-1 to hold", Duration::from_secs(10), || {
        env.lines("order").len() == 1
    });
    // Then, in this order: kazoo, elect-2, kazoo-2, each queued before the next starts.
    let kazoo_waiter = |name: &str| {
        kazoo_command(&format!(
            "lock = zk.Lock({path:?}, {name:?})\n\
             lock.acquire()\n\
             open({order:?}, 'a').write({name:?} + '\\n')\n\
             time.sleep(0.2)\n\
             lock.release()"
        ))
        .spawn()
        .expect("start kazoo")
    };
    let queued = |n: usize| {
        wait_for("the queue to grow", Duration::from_secs(15), || {
            children(&path).len() == n
        })
    };
    let mut k1 = kazoo_waiter("kazoo-1");
    queued(2);
    let mut second = run_sh(&env, &lock, &["--wait"], "echo elect-2 >> order; sleep 0.2");
    queued(3);
    let mut k2 = kazoo_waiter("kazoo-2");
    queued(4);
    std::fs::write(env.file("go"), "").unwrap();
    first.wait().assert_code(0);
    second.wait().assert_code(0);
    assert!(k1.wait().expect("kazoo").success());
    assert!(k2.wait().expect("kazoo").success());
    assert_eq!(
        env.lines("order"),
        ["elect-1", "kazoo-1", "elect-2", "kazoo-2"]
    );
}

#[test]
fn a_deleted_node_is_a_lost_lease() {
    let env = env_for("deleted");
    let lock = env.lock("deleted");
    let mut holder = run_sh(&env, &lock, &SHORT, &until_exists("never"));
    wait_for("the holder to hold", Duration::from_secs(10), || {
        children(&format!("/deleted/{lock}")).len() == 1
    });
    let node = children(&format!("/deleted/{lock}")).remove(0);
    // The holder's credentials (the node's ACL is theirs).
    kazoo(&format!(
        "zk.add_auth('digest', 'battery:battery-secret')\nzk.delete('/deleted/{lock}/{node}')"
    ));
    let out = holder.wait_timeout(Duration::from_secs(10));
    out.assert_code(76);
    assert!(out.stderr.contains("was deleted"), "{out}");
}

#[test]
fn status_counts_waiters_and_shows_the_token_as_the_nodes_czxid() {
    let env = env_for("czxid");
    let lock = env.lock("czxid");
    let mut holder = run_sh(
        &env,
        &lock,
        &[],
        &format!("echo $ELECT_FENCING_TOKEN > token; {}", until_exists("go")),
    );
    env.wait_for_file("token", Duration::from_secs(10));
    let mut waiter = env.spawn(["run", "--lock", &lock, "--wait", "-v", "--", "true"]);
    waiter.wait_for_stderr("waiting", Duration::from_secs(10));
    let doc = env.status(["--lock", &lock, "--json"]);
    let json = serde_json::from_str::<Value>(doc.stdout.trim()).expect("status JSON");
    assert_eq!(json["waiters"].as_u64(), Some(1), "{doc}");
    let token = env.lines("token")[0].clone();
    let czxid = kazoo(&format!(
        "c = sorted(zk.get_children('/czxid/{lock}'), key=lambda n: n[-10:])[0]\n\
         print(zk.get('/czxid/{lock}/' + c)[1].czxid)"
    ));
    assert_eq!(czxid.trim(), token);
    std::fs::write(env.file("go"), "").unwrap();
    holder.wait().assert_code(0);
    waiter.wait().assert_code(0);
}

#[test]
fn bad_urls_are_one_line_usage_errors_that_hide_the_password() {
    let env = TestEnv::new();
    for (url, mention) in [
        ("zk://app:hunter2secret@h:99999", "invalid port"),
        ("zk://app:hunter2secret@h/a/../b", "base path"),
        ("zk://app:hunter2secret@h//x", "base path"),
        ("zk://app:hunter2secret@h/zookeeper", "base path"),
        ("zk://app:hunter2secret@h?prefix=x", "query parameter"),
        ("zk://app:hunter2/secret@h", "unencoded reserved character"),
        ("zk://app@h", "ELECT_ZK_PASSWORD"),
        ("zk://", "no host"),
    ] {
        for args in [
            &["run", "--backend", url, "--lock", "x", "--", "touch", "ran"][..],
            &["status", "--backend", url],
        ] {
            let out = env.run(args);
            out.assert_code(2).assert_no_panic();
            let line = out.one_error_line();
            assert!(line.contains(mention), "{url}: {line}");
            assert!(!out.stderr.contains("hunter2"), "{url}: {out}");
        }
    }
    assert!(!env.file("ran").exists());
}

/// The ensemble test's ttl: the client drops a silent connection after 2/5 of it.
const ENSEMBLE_TTL: &str = "8s";

/// The session that owns the first contender of `lock` (the holder's), as `0x...`, read with
/// kazoo (the `python3-kazoo` package).
fn holder_session(hosts: &str, lock: &str) -> Option<String> {
    let script = format!(
        "from kazoo.client import KazooClient\n\
         zk = KazooClient(hosts={hosts:?}, timeout=10)\n\
         zk.start()\n\
         path = '/elect/{lock}'\n\
         c = sorted(zk.get_children(path), key=lambda n: n[-10:])[0]\n\
         print(hex(zk.get(path + '/' + c)[1].ephemeralOwner))\n\
         zk.stop()"
    );
    let out = std::process::Command::new("/usr/bin/python3")
        .args(["-c", &script])
        .output()
        .expect("python3 with kazoo (apt-get install python3-kazoo)");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The member the session `sid` is connected to, by its `cons` list.
fn connected(servers: &[ZkServer], sid: &str) -> Option<usize> {
    let needle = format!("sid={sid},");
    servers
        .iter()
        .position(|s| s.pid() != 0 && s.four_letters("cons").contains(&needle))
}

/// Runs a holder whose job takes `work`, applies `fault` to the server its session is on, and
/// checks that the job ran to its end (exit 0), the session moved, and a waiter's job started
/// only after the holder's ended.
fn survives(env: &TestEnv, servers: &mut [ZkServer], fault: impl FnOnce(&mut ZkServer)) {
    let lock = env.lock("moved");
    let _ = std::fs::remove_file(env.file("log"));
    let job =
        |secs: &str| format!("echo \"start $$\" >> log; sleep {secs}; echo \"end $$\" >> log");
    let mut holder = run_sh(
        env,
        &lock,
        &["--ttl", ENSEMBLE_TTL, "--grace", "500ms", "-v"],
        &job("11"),
    );
    wait_for("the holder's job to start", Duration::from_secs(15), || {
        env.file("log").exists()
    });
    let mut waiter = run_sh(
        env,
        &lock,
        &["--ttl", ENSEMBLE_TTL, "--grace", "500ms", "--wait", "-v"],
        &job("0.1"),
    );
    waiter.wait_for_stderr("waiting", Duration::from_secs(10));
    let hosts: Vec<String> = servers
        .iter()
        .filter(|s| s.pid() != 0)
        .map(ZkServer::endpoint)
        .collect();
    let sid = holder_session(&hosts.join(","), &lock).expect("the holder's session");
    let mut on = None;
    wait_for(
        "the holder's session to show",
        Duration::from_secs(5),
        || {
            on = connected(servers, &sid);
            on.is_some()
        },
    );
    let on = on.unwrap();
    let faulted = Instant::now();
    fault(&mut servers[on]);
    let out = holder.wait_timeout(Duration::from_secs(30));
    out.assert_code(0);
    let now_on = connected(servers, &sid);
    assert!(
        now_on.is_none() || now_on != Some(on),
        "the session left the faulted server"
    );
    assert!(
        faulted.elapsed() > Duration::from_secs(4),
        "the holder's job ran on after the fault"
    );
    waiter.wait_timeout(Duration::from_secs(30)).assert_code(0);
    let log = env.lines("log");
    assert_eq!(log.len(), 4, "{log:?}");
    let field = |i: usize, n: usize| log[i].split_whitespace().nth(n).unwrap().to_owned();
    assert!(
        log[0].starts_with("start") && log[1].starts_with("end"),
        "{log:?}"
    );
    assert_eq!(field(0, 1), field(1, 1), "one job ran at a time: {log:?}");
    assert!(
        log[2].starts_with("start") && log[3].starts_with("end"),
        "{log:?}"
    );
}

#[test]
fn in_an_ensemble_the_session_moves_when_its_server_is_stopped_or_killed() {
    let mut servers = ZkServer::ensemble(3);
    let hosts: Vec<String> = servers.iter().map(ZkServer::endpoint).collect();
    let env = TestEnv::with_backend(&format!("zk://{}", hosts.join(",")));
    // SIGSTOP past the ttl: the client drops the silent connection and reconnects elsewhere.
    let mut stopped = None;
    survives(&env, &mut servers, |server| {
        server.stop();
        stopped = Some(server.pid());
        std::thread::sleep(Duration::from_secs(9));
        server.resume();
    });
    assert!(stopped.is_some());
    // kill -9: the connection breaks at once.
    survives(&env, &mut servers, ZkServer::kill);
}

#[test]
fn a_wait_that_gives_up_leaves_no_node_in_the_queue() {
    let env = env_for("abandoned");
    let lock = env.lock("abandoned");
    let path = format!("/abandoned/{lock}");
    let mut holder = run_sh(&env, &lock, &[], &until_exists("go"));
    wait_for("the holder to hold", Duration::from_secs(10), || {
        children(&path).len() == 1
    });
    let gave_up = env.run(["run", "--lock", &lock, "--wait=1s", "--", "touch", "ran"]);
    gave_up.assert_code(75);
    // Deleted on the way out, not when the session expires (15 s, the default ttl).
    assert_eq!(children(&path).len(), 1, "the waiter's node is gone");
    std::fs::write(env.file("go"), "").unwrap();
    holder.wait().assert_code(0);
    assert!(!env.file("ran").exists());
}
