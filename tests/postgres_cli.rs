//! `elect` end to end on the PostgreSQL backend: the built binary, real jobs, a real PostgreSQL.

mod support {
    pub mod certs;
    pub mod cli_scenarios;
    pub mod env;
    pub mod net;
    pub mod postgres_server;
    pub mod process;
    pub mod proxy;
}

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::cli_scenarios::code;
use support::env::TestEnv;
use support::postgres_server::{PostgresServer, DATABASE, USER};
use support::{cli_scenarios, postgres_server, proxy};

fn elect(server: &PostgresServer) -> Command {
    cli_scenarios::elect(&server.url())
}

#[test]
fn three_concurrent_runs_one_runs_the_others_exit_75() {
    let server = PostgresServer::start();
    cli_scenarios::three_concurrent_runs_one_runs_the_others_exit_75(&server.url());
}

#[test]
fn the_jobs_exit_code_passes_through() {
    let server = PostgresServer::start();
    cli_scenarios::the_jobs_exit_code_passes_through(&server.url());
}

#[test]
fn the_job_sees_its_token_and_a_redacted_backend() {
    let server = PostgresServer::start();
    let out = elect(&server)
        .args(["run", "--lock", "env", "--", "sh", "-c"])
        .arg("echo \"$ELECT_FENCING_TOKEN $ELECT_BACKEND\"")
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("1 postgres://elect:***@"), "{stdout}");
    assert!(!stdout.contains(postgres_server::PASSWORD), "{stdout}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains(postgres_server::PASSWORD));
}

#[test]
fn a_wrong_password_exits_69_with_one_line() {
    let server = PostgresServer::start();
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let out = elect(&server)
        .env(
            "ELECT_BACKEND",
            server.url_for(USER, "not-the-Passw0rd", DATABASE),
        )
        .args(["run", "--lock", "auth", "--", "touch"])
        .arg(&marker)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(code(&out), 69, "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("password authentication failed"),
        "{stderr}"
    );
    assert!(!stderr.contains("not-the-Passw0rd"), "{stderr}");
    assert!(!marker.exists(), "the job must not run");
}

#[test]
fn a_release_wakes_a_waiting_contender_fast() {
    let server = PostgresServer::start();
    cli_scenarios::a_release_wakes_a_waiting_contender_fast(&server.url());
}

#[test]
fn a_stopped_server_stops_the_job_before_the_ttl_and_exits_76() {
    let server = PostgresServer::start();
    cli_scenarios::a_stopped_server_stops_the_job_before_the_ttl_and_exits_76(
        &server.url(),
        || server.freeze(),
        || server.thaw(),
    );
}

#[test]
fn status_shows_a_held_lock_and_exits_3_for_a_free_one() {
    let server = PostgresServer::start();
    cli_scenarios::status_shows_a_held_lock_and_exits_3_for_a_free_one(&server.url());
}

#[test]
fn pgpassword_is_used_and_not_passed_on_to_the_job() {
    let server = PostgresServer::start();
    let out = elect(&server)
        .env(
            "ELECT_BACKEND",
            format!(
                "postgres://{USER}@127.0.0.1:{}/{DATABASE}?sslmode=disable",
                server.port
            ),
        )
        .env("PGPASSWORD", postgres_server::PASSWORD)
        .args(["run", "--lock", "pgpassword", "--", "sh", "-c"])
        .arg("echo \"[${PGPASSWORD-unset}]\"")
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[unset]");
}

/// Child processes killed and waited for when dropped.
struct Reap(Vec<Child>);

impl Drop for Reap {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits for `done`, checked every 200 ms, failing with `what` after `limit`.
fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waiters stand in line (a session advisory lock per lock) and only the first listens: one
/// release wakes one of twenty waiting elects, not all of them, counted in the server's log. A
/// waiter killed while first leaves its place to the next. Before, every waiter listened and
/// tried once per release: N waiters cost 2N statements per release, N² over N handovers.
#[test]
fn a_release_wakes_one_waiter_not_every_one() {
    const WAITERS: usize = 16;
    let server = PostgresServer::start();
    server.psql("ALTER SYSTEM SET log_statement = 'all'");
    server.psql("SELECT pg_reload_conf()");
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    // Each elect names its session, so that the first in line can be told apart.
    let spawn = |session: &str, args: &[&str]| {
        elect(&server)
            .env(
                "ELECT_BACKEND",
                format!("{}&application_name={session}", server.url()),
            )
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let holder_pid = path("holder.pid");
    // Reaped on every way out, a failed assertion included.
    let mut elects = Reap(vec![spawn(
        "holder",
        &[
            "run",
            "--lock",
            "line",
            "--",
            "sh",
            "-c",
            &format!("echo $$ > {}; exec sleep 60", holder_pid.display()),
        ],
    )]);
    wait_until(Duration::from_secs(20), "the holder did not start", || {
        std::fs::read_to_string(&holder_pid).is_ok_and(|s| !s.trim().is_empty())
    });
    let ran = path("ran");
    elects.0.extend((0..WAITERS).map(|i| {
        spawn(
            &format!("w{i}"),
            &[
                "run",
                "--lock",
                "line",
                "--wait",
                "--",
                "sh",
                "-c",
                &format!("echo x >> {}; exec sleep 60", ran.display()),
            ],
        )
    }));
    let count = |sql: &str| {
        server
            .psql_in(DATABASE, sql)
            .trim()
            .parse::<usize>()
            .unwrap()
    };
    let in_line = || {
        count(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE wait_event_type = 'Lock' AND wait_event = 'advisory'",
        )
    };
    let first = || {
        server
            .psql_in(
                DATABASE,
                "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a USING (pid) \
                 WHERE l.locktype = 'advisory' AND l.granted",
            )
            .trim()
            .to_owned()
    };
    // A generous bound: every elect logs in twice (SCRAM), on a machine that may be busy.
    wait_until(
        Duration::from_secs(60),
        "the waiters did not line up",
        || in_line() == WAITERS - 1 && !first().is_empty(),
    );

    // The first in line dies: the next takes its place.
    let killed = first();
    let index: usize = killed.trim_start_matches('w').parse().unwrap();
    let first_waiter = &mut elects.0[1 + index];
    first_waiter.kill().unwrap();
    first_waiter.wait().unwrap();
    wait_until(
        Duration::from_secs(10),
        "no waiter took the first place",
        || {
            let now = first();
            !now.is_empty() && now != killed && in_line() == WAITERS - 2
        },
    );

    let log_before = server.log().len();
    let job = std::fs::read_to_string(&holder_pid).unwrap();
    Command::new("kill").arg(job.trim()).status().unwrap();
    wait_until(Duration::from_secs(10), "no waiter took over", || {
        std::fs::read_to_string(&ran).is_ok_and(|s| !s.is_empty())
    });
    std::thread::sleep(Duration::from_secs(1));
    let log = server.log();
    let statements: Vec<&str> = log[log_before..]
        .lines()
        .filter(|l| l.contains("LOG:  statement: ") || l.contains("LOG:  execute "))
        .collect();
    let started = std::fs::read_to_string(&ran).unwrap().lines().count();
    let standing = in_line();
    drop(elects);
    assert_eq!(started, 1, "one release started {started} jobs");
    // The release, the new holder's acquire and its leaving the line, the next first's LISTEN
    // and attempt (acquire, read): six, and none per waiter (before: two per waiter, 30 more).
    assert!(
        statements.len() <= 10,
        "{} statements after one release:\n{}",
        statements.len(),
        statements.join("\n")
    );
    assert_eq!(standing, WAITERS - 3);
}

/// A waiter whose first connect gets no answer (every connection reset) keeps trying within its
/// wait instead of exiting 69 at once, and runs once the server answers; a bounded wait gives
/// up with 69 when its bound passes; a refusal (a wrong password) exits 69 at once, wait or not.
#[test]
fn a_waiter_that_cannot_connect_at_first_tries_again_within_its_wait() {
    let server = PostgresServer::start();
    let proxy = proxy::Proxy::start(format!("127.0.0.1:{}", server.port).parse().unwrap());
    proxy.set_mode(proxy::Mode::Reset);
    let through = |password: &str| {
        format!(
            "postgres://{USER}:{password}@127.0.0.1:{}/{DATABASE}?sslmode=disable",
            proxy.port
        )
    };
    let env = TestEnv::with_backend(&through(postgres_server::PASSWORD));
    let mut waiter = env.spawn(["run", "--lock", "late", "--wait", "--", "touch", "ran"]);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        waiter.is_running(),
        "gave up at once: {:?}",
        waiter.try_finish()
    );
    proxy.set_mode(proxy::Mode::Pass);
    waiter.wait_timeout(Duration::from_secs(20)).assert_code(0);
    assert!(env.file("ran").exists());

    let wrong = TestEnv::with_backend(&through("not-the-Passw0rd"));
    let begun = Instant::now();
    let out = wrong.run(["run", "--lock", "late", "--wait", "--", "touch", "wrong"]);
    out.assert_code(69);
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("password authentication failed"),
        "{}",
        out.stderr
    );
    assert!(
        begun.elapsed() < Duration::from_secs(10),
        "took {:?}",
        begun.elapsed()
    );
    assert!(!wrong.file("wrong").exists());

    proxy.set_mode(proxy::Mode::Reset);
    let begun = Instant::now();
    let out = env.run(["run", "--lock", "late", "--wait=2s", "--", "touch", "again"]);
    out.assert_code(69);
    let took = begun.elapsed();
    assert!(took >= Duration::from_secs(2), "gave up after {took:?}");
    assert!(took < Duration::from_secs(15), "gave up after {took:?}");
    assert!(!env.file("again").exists());
}

/// A waiting run whose first try gets no answer in time waits it out and runs once an answer
/// comes, rather than exiting 69 as it does for a refusal. Here the lock's row stays locked by
/// another transaction for longer than elect's 2 s statement bound; a server swamped by a
/// thousand waiters logging in at once leaves first tries unanswered the same way.
#[test]
fn a_waiter_whose_first_try_gets_no_answer_waits_it_out() {
    let server = PostgresServer::start();
    let env = TestEnv::with_backend(&server.url());
    env.run(["run", "--lock", "slow", "--", "true"])
        .assert_code(0);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            server.psql_in(
                DATABASE,
                "BEGIN; SELECT 1 FROM public.elect_leases WHERE name = 'slow' FOR UPDATE; \
                 SELECT pg_sleep(5); COMMIT;",
            )
        });
        std::thread::sleep(Duration::from_millis(500));
        let begun = Instant::now();
        let out = env.run(["run", "--lock", "slow", "--wait=30s", "--", "touch", "ran"]);
        out.assert_code(0).assert_no_panic();
        assert!(
            out.stderr.contains("no answer to the first try"),
            "{}",
            out.stderr
        );
        assert!(
            begun.elapsed() >= Duration::from_secs(3),
            "ran while the row was still locked"
        );
    });
    assert!(env.file("ran").exists());
}
