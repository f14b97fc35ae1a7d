//! The PostgreSQL backend against a real PostgreSQL server, through the library API.

mod support {
    pub mod certs;
    pub mod cli_scenarios;
    pub mod lost_replies;
    pub mod net;
    pub mod postgres_server;
    pub mod process;
    pub mod proxy;
    pub mod reconnect;
}

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant, SystemTime};

use elect::backend::{AcquireRequest, AnyBackend, Backend, BackendError, BackendOptions, WaitMode};
use elect::clock::BootTime;
use elect::lease::{Acquire, History, HolderInfo, LastRun, Lease, LockName, Renewal, RunEnd};
use support::postgres_server::{PostgresServer, DATABASE, PASSWORD, USER};
use support::proxy::Proxy;
use support::{certs, net, postgres_server};

/// Only the acquire statements take a row on conflict.
const ACQUIRE_REQUEST: &[u8] = b"ON CONFLICT";

/// A server and a proxy in front of it: (server, proxy, URL through the proxy).
fn behind_proxy() -> (PostgresServer, Proxy, String) {
    let server = PostgresServer::start();
    let proxy = Proxy::start(([127, 0, 0, 1], server.port).into());
    let url = format!(
        "postgres://{USER}:{PASSWORD}@127.0.0.1:{}/{DATABASE}?sslmode=disable",
        proxy.port
    );
    (server, proxy, url)
}

fn request(name: &str, id: &str, ttl: Duration) -> AcquireRequest {
    AcquireRequest {
        name: LockName::new(name).unwrap(),
        holder: HolderInfo::this_process(Some(id.into()), ttl),
        ttl,
        holders: 1,
    }
}

async fn open(url: &str) -> AnyBackend {
    AnyBackend::open(Some(url), &BackendOptions::default())
        .await
        .unwrap_or_else(|e| panic!("open {url}: {e}"))
}

async fn open_err(url: &str) -> String {
    let started = Instant::now();
    match AnyBackend::open(Some(url), &BackendOptions::default()).await {
        Ok(_) => panic!("{url} should be unavailable"),
        Err(BackendError::Unavailable(msg)) => {
            assert!(
                started.elapsed() < Duration::from_secs(8),
                "took {:?}",
                started.elapsed()
            );
            assert!(!msg.contains('\n'), "one line: {msg}");
            eprintln!("unavailable: {msg}");
            msg
        }
        Err(other) => panic!("{url}: expected Unavailable, got {other:?}"),
    }
}

fn acquired(a: Acquire) -> Lease {
    match a {
        Acquire::Acquired(lease) => lease,
        Acquire::Held(h) => panic!("expected to acquire, held by {h:?}"),
    }
}

/// `req` acquired on `backend`; fails the test on an error or if the lock is held.
async fn acquire(backend: &mut AnyBackend, req: &AcquireRequest, mode: WaitMode) -> Lease {
    acquired(backend.acquire(req, mode).await.unwrap())
}

async fn take(backend: &mut AnyBackend, name: &str, id: &str, ttl: Duration) -> Lease {
    acquire(backend, &request(name, id, ttl), WaitMode::NoWait).await
}

#[tokio::test]
async fn acquire_hold_renew_release() {
    let server = PostgresServer::start();
    let mut a = open(&server.url()).await;
    let mut b = open(&server.url()).await;
    let ttl = Duration::from_secs(10);

    let before = BootTime::now();
    let lease = take(&mut a, "billing", "a", ttl).await;
    assert!(lease.sent_at >= before && lease.sent_at <= BootTime::now());
    assert_eq!(lease.secret.len(), 32);
    assert_eq!(lease.holder.id, "a");

    match b
        .acquire(&request("billing", "b", ttl), WaitMode::NoWait)
        .await
        .unwrap()
    {
        Acquire::Held(Some(holder)) => {
            assert_eq!(holder.id, "a");
            assert_eq!(holder.token, lease.token());
            assert_eq!(holder.ttl, ttl);
            assert_eq!(holder.pid, std::process::id());
        }
        other => panic!("expected held by a, got {other:?}"),
    }
    assert_eq!(a.renew(&lease).await.unwrap(), Renewal::Renewed);
    a.release(&lease, None).await.unwrap();
    // Free at once after a release, not after the ttl.
    let next = take(&mut b, "billing", "b", ttl).await;
    assert!(next.token() > lease.token());
    // The released holder cannot renew its old lease.
    assert!(matches!(a.renew(&lease).await.unwrap(), Renewal::Lost(_)));
}

#[tokio::test]
async fn tokens_strictly_increase() {
    let server = PostgresServer::start();
    let mut a = open(&server.url()).await;
    let mut b = open(&server.url()).await;
    let ttl = Duration::from_secs(10);
    let mut last = None;
    for i in 0..6 {
        let backend = if i % 2 == 0 { &mut a } else { &mut b };
        let lease = take(backend, "tokens", "x", ttl).await;
        if let Some(last) = last {
            assert!(lease.token() > last, "{} after {last}", lease.token());
        }
        last = Some(lease.token());
        backend.release(&lease, None).await.unwrap();
    }
}

fn places_request(name: &str, id: &str, ttl: Duration, holders: u32) -> AcquireRequest {
    AcquireRequest {
        holders,
        ..request(name, id, ttl)
    }
}

/// `--holders 2`: two leases on their own places with their own tokens, a third turned away;
/// the place-1 lease renews and releases without touching place 0, and its release is recorded
/// on the lock and frees the place for the next contender.
#[tokio::test]
async fn two_holders_take_two_places() {
    let server = PostgresServer::start();
    let mut a = open(&server.url()).await;
    let mut b = open(&server.url()).await;
    let mut c = open(&server.url()).await;
    let ttl = Duration::from_secs(10);
    let name = LockName::new("pair").unwrap();

    let first = acquire(
        &mut a,
        &places_request("pair", "a", ttl, 2),
        WaitMode::NoWait,
    )
    .await;
    let second = acquire(
        &mut b,
        &places_request("pair", "b", ttl, 2),
        WaitMode::NoWait,
    )
    .await;
    assert_eq!((first.slot, second.slot), (0, 1));
    assert!(second.token() > first.token(), "{second:?} after {first:?}");
    match c
        .acquire(&places_request("pair", "c", ttl, 2), WaitMode::NoWait)
        .await
        .unwrap()
    {
        Acquire::Held(Some(holder)) => assert!(["a", "b"].contains(&holder.id.as_str())),
        other => panic!("both places are taken: {other:?}"),
    }
    // A mutex user of the same lock finds it held.
    assert!(matches!(
        c.acquire(&request("pair", "c", ttl), WaitMode::NoWait)
            .await
            .unwrap(),
        Acquire::Held(Some(_))
    ));

    let state = c.inspect(&name).await.unwrap();
    assert_eq!(state.holder.as_ref().map(|h| h.token), Some(first.token()));
    let co: Vec<(&str, u64)> = state
        .co_holders
        .iter()
        .map(|h| (h.holder.id.as_str(), h.holder.token.0))
        .collect();
    assert_eq!(co, [("b", second.token().0)], "{state:?}");
    assert!(state.co_holders[0].expires_in.is_some());

    // Place 1 renews and releases its own row; place 0's lease is untouched.
    assert_eq!(b.renew(&second).await.unwrap(), Renewal::Renewed);
    assert_eq!(a.renew(&first).await.unwrap(), Renewal::Renewed);
    b.release(&second, Some(&history_of(&second)))
        .await
        .unwrap();
    assert!(matches!(b.renew(&second).await.unwrap(), Renewal::Lost(_)));
    assert_eq!(a.renew(&first).await.unwrap(), Renewal::Renewed);
    let state = c.inspect(&name).await.unwrap();
    assert_eq!(state.holder.as_ref().map(|h| h.token), Some(first.token()));
    assert!(state.co_holders.is_empty(), "{state:?}");
    assert_eq!(state.last_run.map(|r| r.token), Some(second.token()));
    assert!(a.fresh_run(&name).await.unwrap().is_some());

    // The freed place goes to the next contender, with a greater token.
    let third = acquire(
        &mut c,
        &places_request("pair", "c", ttl, 2),
        WaitMode::NoWait,
    )
    .await;
    assert_eq!(third.slot, 1);
    assert!(third.token() > second.token());

    // With place 0 free, the lowest held place shows as the holder; `list` shows the lock once.
    a.release(&first, None).await.unwrap();
    let state = b.inspect(&name).await.unwrap();
    assert_eq!(state.holder.as_ref().map(|h| h.token), Some(third.token()));
    assert!(state.co_holders.is_empty());
    let listed = b.list().await.unwrap();
    let names: Vec<&str> = listed.iter().map(|s| s.lock.as_str()).collect();
    assert_eq!(names, ["pair"]);
    assert_eq!(listed[0].holder.as_ref().map(|h| h.id.as_str()), Some("c"));

    // A place 0 taken now counts on from the places' tokens.
    let fourth = acquire(
        &mut a,
        &places_request("pair", "a", ttl, 2),
        WaitMode::NoWait,
    )
    .await;
    assert_eq!(fourth.slot, 0);
    assert!(fourth.token() > third.token());
    assert_eq!(c.renew(&third).await.unwrap(), Renewal::Renewed);
}

/// An operator's forced release finds the place holding the token, and wakes a waiter for the
/// lock.
#[tokio::test]
async fn forced_release_finds_the_place_and_wakes_a_waiter() {
    let server = PostgresServer::start();
    let mut a = open(&server.url()).await;
    let mut b = open(&server.url()).await;
    let mut admin = open(&server.url()).await;
    let ttl = Duration::from_secs(30);
    let name = LockName::new("trio").unwrap();
    let zero = take_places(&mut a, "trio", "a", ttl, 2).await;
    let one = take_places(&mut b, "trio", "b", ttl, 2).await;
    assert_eq!((zero.slot, one.slot), (0, 1));

    let waiter = tokio::spawn(async move {
        let mut c = open(&server.url()).await;
        let started = Instant::now();
        let lease = acquire(&mut c, &places_request("trio", "c", ttl, 2), WaitMode::Wait).await;
        (lease, started.elapsed(), server)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiter.is_finished());
    match admin.force_release(&name, one.token()).await.unwrap() {
        elect::backend::ForcedRelease::Released => {}
        other => panic!("place 1 holds the token: {other:?}"),
    }
    let (lease, waited, _server) = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the waiter gets in")
        .unwrap();
    assert_eq!(lease.slot, 1);
    assert!(lease.token() > one.token());
    assert!(
        waited < Duration::from_secs(5),
        "woken by the release: {waited:?}"
    );
    assert_eq!(a.renew(&zero).await.unwrap(), Renewal::Renewed);
}

async fn take_places(
    backend: &mut AnyBackend,
    name: &str,
    id: &str,
    ttl: Duration,
    holders: u32,
) -> Lease {
    acquire(
        backend,
        &places_request(name, id, ttl, holders),
        WaitMode::NoWait,
    )
    .await
}

#[tokio::test]
async fn another_holders_secret_can_neither_renew_nor_release() {
    let server = PostgresServer::start();
    let mut a = open(&server.url()).await;
    let mut b = open(&server.url()).await;
    let ttl = Duration::from_secs(10);
    let lease = take(&mut a, "mine", "a", ttl).await;

    let mut forged = lease.clone();
    forged.secret = "0".repeat(32);
    assert!(matches!(b.renew(&forged).await.unwrap(), Renewal::Lost(_)));
    b.release(&forged, None).await.unwrap();
    let mut stale = lease.clone();
    stale.holder.token = elect::lease::FencingToken(lease.token().0 + 1);
    assert!(matches!(b.renew(&stale).await.unwrap(), Renewal::Lost(_)));

    // Still a's.
    assert!(matches!(
        b.acquire(&request("mine", "b", ttl), WaitMode::NoWait)
            .await
            .unwrap(),
        Acquire::Held(Some(_))
    ));
    assert_eq!(a.renew(&lease).await.unwrap(), Renewal::Renewed);
}

#[tokio::test]
async fn two_lock_names_at_once() {
    let server = PostgresServer::start();
    let mut a = open(&server.url()).await;
    let ttl = Duration::from_secs(10);
    let one = take(&mut a, "one", "a", ttl).await;
    let two = take(&mut a, "two", "a", ttl).await;
    assert_eq!(a.renew(&one).await.unwrap(), Renewal::Renewed);
    assert_eq!(a.renew(&two).await.unwrap(), Renewal::Renewed);
    let held: Vec<String> = a
        .list()
        .await
        .unwrap()
        .into_iter()
        .filter(|s| s.holder.is_some())
        .map(|s| s.lock.to_string())
        .collect();
    assert_eq!(held, ["one", "two"]);
}

#[tokio::test]
async fn a_release_wakes_a_waiter_at_once() {
    let server = PostgresServer::start();
    let mut a = open(&server.url()).await;
    let mut b = open(&server.url()).await;
    let ttl = Duration::from_secs(10);
    let lease = take(&mut a, "wake", "a", ttl).await;

    let waiter = tokio::spawn(async move {
        let lease = acquire(&mut b, &request("wake", "b", ttl), WaitMode::Wait).await;
        (Instant::now(), lease)
    });
    // Long enough for the waiter to be listening, short of its first periodic re-check.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!waiter.is_finished());
    let released = Instant::now();
    a.release(&lease, None).await.unwrap();
    let (woke, next) = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the waiter acquires")
        .unwrap();
    let delay = woke.duration_since(released);
    assert!(delay < Duration::from_millis(200), "woke after {delay:?}");
    assert!(next.token() > lease.token());
}

/// A waiter whose session hears releases sends nothing while the holder's lease runs: it would
/// re-check at the holder's expiry (a holder that died without a release), and the release
/// wakes it at once. (It used to re-check every 2 s: 200 waiters cost 159 statements/s.)
#[tokio::test]
async fn an_idle_waiter_waits_for_the_release_not_a_timer() {
    let server = PostgresServer::start();
    server.psql("ALTER SYSTEM SET log_statement = 'all'");
    server.psql("SELECT pg_reload_conf()");
    let mut a = open(&server.url()).await;
    let mut b = open(&server.url()).await;
    let ttl = Duration::from_secs(30);
    let lease = take(&mut a, "idle", "a", ttl).await;
    let waiter = tokio::spawn(async move {
        let lease = acquire(&mut b, &request("idle", "b", ttl), WaitMode::Wait).await;
        (Instant::now(), lease)
    });
    // Time to listen, check that notifications arrive, and try once.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let acquires = || server.log().matches("ON CONFLICT").count();
    let before = acquires();
    assert!(before > 0, "statements are not logged: {}", server.log());
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle = acquires() - before;
    assert_eq!(idle, 0, "the waiter polled while the lease ran");
    assert!(!waiter.is_finished());
    let released = Instant::now();
    a.release(&lease, None).await.unwrap();
    let (woke, next) = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the waiter acquires")
        .unwrap();
    let delay = woke.duration_since(released);
    assert!(delay < Duration::from_millis(500), "woke after {delay:?}");
    assert!(next.token() > lease.token());
}

#[tokio::test]
async fn an_expired_holder_is_taken_over_after_its_ttl() {
    let server = PostgresServer::start();
    let mut a = open(&server.url()).await;
    let mut b = open(&server.url()).await;
    let ttl = Duration::from_secs(1);
    let lease = take(&mut a, "crash", "a", ttl).await;
    let started = Instant::now();
    let next = acquired(
        tokio::time::timeout(
            Duration::from_secs(5),
            b.acquire(&request("crash", "b", ttl), WaitMode::Wait),
        )
        .await
        .expect("taken over in time")
        .unwrap(),
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_millis(2500),
        "waited {waited:?}"
    );
    assert!(next.token() > lease.token());
    assert!(matches!(a.renew(&lease).await.unwrap(), Renewal::Lost(_)));
}

#[tokio::test]
async fn a_terminated_session_does_not_lose_the_lease() {
    let server = PostgresServer::start();
    let mut a = open(&server.url()).await;
    let lease = take(&mut a, "session", "a", Duration::from_secs(10)).await;
    let kill_sessions = || {
        server.psql(&format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = '{DATABASE}' AND usename = '{USER}'"
        ))
    };
    assert_eq!(kill_sessions(), "1");
    // At once: the termination may arrive as the answer to the renew itself.
    assert_eq!(a.renew(&lease).await.unwrap(), Renewal::Renewed);
    assert_eq!(kill_sessions(), "1");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(a.renew(&lease).await.unwrap(), Renewal::Renewed);
    a.release(&lease, None).await.unwrap();
}

#[tokio::test]
async fn wrong_password_is_unavailable_and_not_printed() {
    let server = PostgresServer::start();
    let msg = open_err(&server.url_for(USER, "Wr0ngPassw0rd", DATABASE)).await;
    assert!(!msg.contains("Wr0ngPassw0rd"), "{msg}");
    assert!(!msg.contains(PASSWORD), "{msg}");
    assert!(msg.contains("password"), "{msg}");
}

#[tokio::test]
async fn a_missing_database_is_unavailable() {
    let server = PostgresServer::start();
    let msg = open_err(&server.url_for(USER, PASSWORD, "nosuchdb")).await;
    assert!(msg.contains("nosuchdb"), "{msg}");
}

#[tokio::test]
async fn a_role_that_cannot_create_the_table_is_unavailable() {
    let server = PostgresServer::start();
    server.psql("CREATE ROLE limited LOGIN PASSWORD 'lpw'");
    server.psql("CREATE DATABASE fresh");
    let msg = open_err(&server.url_for("limited", "lpw", "fresh")).await;
    assert!(msg.contains("permission denied"), "{msg}");
    assert!(msg.contains("elect_leases"), "{msg}");

    // Once an owner has created the table and granted row access, the same role works.
    server.psql_in(
        "fresh",
        "CREATE TABLE elect_leases (name text PRIMARY KEY, holder_id text NOT NULL, \
         host text NOT NULL, pid bigint NOT NULL, version text NOT NULL, \
         acquired_at timestamptz NOT NULL, ttl_ms bigint NOT NULL, secret text NOT NULL, \
         token bigint NOT NULL, expires_at timestamptz); \
         GRANT SELECT, INSERT, UPDATE ON elect_leases TO limited;",
    );
    let mut b = open(&server.url_for("limited", "lpw", "fresh")).await;
    let lease = take(&mut b, "granted", "b", Duration::from_secs(5)).await;

    // The table predates run history and the role may not add its columns: leases still work,
    // without history, and --once-per says what the owner must run.
    let history = history_of(&lease);
    b.release(&lease, Some(&history)).await.unwrap();
    let name = LockName::new("granted").unwrap();
    let state = b.inspect(&name).await.unwrap();
    assert!(
        state.holder.is_none() && state.last_run.is_none(),
        "{state:?}"
    );
    match b.fresh_run(&name).await {
        Err(BackendError::Unavailable(msg)) => {
            assert!(msg.contains("ALTER TABLE") && !msg.contains('\n'), "{msg}")
        }
        other => panic!("--once-per without the columns must fail: {other:?}"),
    }
    // Nor can it take more than one holder: tokens would have no counter beyond place 0.
    match b
        .acquire(
            &places_request("granted", "b", Duration::from_secs(5), 2),
            WaitMode::NoWait,
        )
        .await
    {
        Err(BackendError::Unavailable(msg)) => {
            assert!(
                msg.contains("top_token") && msg.contains("ALTER TABLE"),
                "{msg}"
            )
        }
        other => panic!("--holders 2 without the column must fail: {other:?}"),
    }
}

/// What `elect run` records for a successful run under `--once-per 1h`.
fn history_of(lease: &Lease) -> History {
    History {
        last_run: LastRun {
            holder: lease.holder.id.clone(),
            host: lease.holder.host.clone(),
            pid: lease.holder.pid,
            token: lease.token(),
            started_at: SystemTime::now(),
            finished_at: SystemTime::now(),
            duration: Duration::from_millis(5),
            end: RunEnd::ExitCode(0),
        },
        once_per: Some(Duration::from_secs(3600)),
    }
}

/// A lease table an older elect created (without the history columns) gets them when its owner
/// opens it, and keeps its rows and tokens.
#[tokio::test]
async fn an_old_table_gains_the_history_columns() {
    let server = PostgresServer::start();
    server.psql_in(
        DATABASE,
        &format!(
            "CREATE TABLE elect_leases (name text PRIMARY KEY, holder_id text NOT NULL, \
             host text NOT NULL, pid bigint NOT NULL, version text NOT NULL, \
             acquired_at timestamptz NOT NULL, ttl_ms bigint NOT NULL, secret text NOT NULL, \
             token bigint NOT NULL, expires_at timestamptz); \
             INSERT INTO elect_leases VALUES ('old', 'x', 'h', 1, 'v', now(), 1000, 's', 41, NULL); \
             ALTER TABLE elect_leases OWNER TO {USER};"
        ),
    );
    let mut a = open(&server.url()).await;
    let lease = take(&mut a, "old", "a", Duration::from_secs(5)).await;
    assert_eq!(lease.token().0, 42, "the token keeps counting");
    let name = LockName::new("old").unwrap();
    assert!(a.fresh_run(&name).await.unwrap().is_none());
    a.release(&lease, Some(&history_of(&lease))).await.unwrap();
    let run = a.fresh_run(&name).await.unwrap().expect("a marker");
    assert_eq!(run.token.0, 42);
    let state = a.inspect(&name).await.unwrap();
    assert_eq!(state.last_run.map(|r| r.holder), Some("a".to_owned()));
    // A second open finds the columns and alters nothing.
    let mut b = open(&server.url()).await;
    assert!(b.fresh_run(&name).await.unwrap().is_some());
}

#[tokio::test]
async fn connection_refused_is_unavailable() {
    let port = net::free_port();
    let msg = open_err(&format!("postgres://u:pw@127.0.0.1:{port}/db")).await;
    assert!(msg.to_ascii_lowercase().contains("refused"), "{msg}");
}

#[tokio::test]
async fn a_standby_is_refused() {
    let primary = PostgresServer::start();
    // The standby must see the role, the database and the table from the primary.
    open(&primary.url()).await;
    let standby = primary.standby();
    let msg = open_err(&standby.url()).await;
    assert!(msg.contains("standby"), "{msg}");
}

#[tokio::test]
async fn a_frozen_server_makes_renew_fail_in_bounded_time() {
    let server = PostgresServer::start();
    let mut a = open(&server.url()).await;
    let lease = take(&mut a, "frozen", "a", Duration::from_secs(10)).await;
    server.freeze();
    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(15), a.renew(&lease))
        .await
        .expect("renew returns on its own");
    let took = started.elapsed();
    assert!(result.is_err(), "renew on a frozen server: {result:?}");
    assert!(took < Duration::from_secs(7), "took {took:?}");
    // A new connection to a frozen server is bounded too.
    let started = Instant::now();
    assert!(a.renew(&lease).await.is_err());
    assert!(started.elapsed() < Duration::from_secs(7));
    server.thaw();
    assert_eq!(a.renew(&lease).await.unwrap(), Renewal::Renewed);
}

#[tokio::test]
async fn status_lists_locks_with_their_remaining_time() {
    let server = PostgresServer::start();
    let mut a = open(&server.url()).await;
    let ttl = Duration::from_secs(10);
    let held = take(&mut a, "held", "a", ttl).await;
    let released = take(&mut a, "released", "a", ttl).await;
    a.release(&released, None).await.unwrap();

    let states = a.list().await.unwrap();
    let names: Vec<&str> = states.iter().map(|s| s.lock.as_str()).collect();
    assert_eq!(names, ["held", "released"]);
    let remaining = states[0].expires_in.expect("remaining time");
    assert!(
        remaining > Duration::from_secs(8) && remaining <= ttl,
        "{remaining:?}"
    );
    let holder = states[0].holder.as_ref().expect("a holder");
    assert_eq!(holder.token, held.token());
    assert_eq!(holder.id, "a");
    assert!(states[1].holder.is_none());
    assert!(states[1].expires_in.is_none());

    let one = a.inspect(&LockName::new("held").unwrap()).await.unwrap();
    assert!(one.holder.is_some());
    let never = a.inspect(&LockName::new("never").unwrap()).await.unwrap();
    assert!(never.holder.is_none());
}

#[tokio::test]
async fn concurrent_opens_create_the_table_once_under_its_own_name() {
    let server = PostgresServer::start();
    let url = format!("{}&table=custom_leases", server.url());
    let opens = (0..6).map(|_| {
        let url = url.clone();
        async move { AnyBackend::open(Some(&url), &BackendOptions::default()).await }
    });
    let results = futures_join_all(opens).await;
    for result in results {
        result.unwrap_or_else(|e| panic!("open: {e}"));
    }
    let mut a = open(&url).await;
    take(&mut a, "custom", "a", Duration::from_secs(5)).await;
    assert_eq!(
        server.psql_in(DATABASE, "SELECT name FROM custom_leases"),
        "custom"
    );
}

/// Runs futures concurrently on separate tasks, so that their connects really overlap.
async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

#[tokio::test]
async fn the_password_can_come_from_a_pgpass_file() {
    let server = PostgresServer::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pgpass");
    std::fs::write(
        &file,
        format!("# elect\n127.0.0.1:{}:*:{USER}:{PASSWORD}\n", server.port),
    )
    .unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    // Only this test sets PGPASSFILE; the others give the password in the URL, which wins.
    std::env::set_var("PGPASSFILE", &file);
    let url = format!(
        "postgres://{USER}@127.0.0.1:{}/{DATABASE}?sslmode=disable",
        server.port
    );
    open(&url).await;

    // Readable by others: ignored, as libpq does.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let msg = open_err(&url).await;
    assert!(msg.contains("password"), "{msg}");
    std::env::remove_var("PGPASSFILE");
}

#[tokio::test]
async fn tls_modes_verify_what_they_promise() {
    // The certificate names another host than the 127.0.0.1 elect connects to.
    let server = PostgresServer::start_tls("DNS:db.example");
    let base = format!(
        "postgres://{USER}:{PASSWORD}@127.0.0.1:{}/{DATABASE}",
        server.port
    );
    let with_ca = BackendOptions {
        tls_ca: Some(server.ca_file()),
        ..BackendOptions::default()
    };
    let open_with = |url: String, options: BackendOptions| async move {
        AnyBackend::open(Some(&url), &options).await
    };

    // require: encrypted, nothing verified.
    let mut a = open_with(format!("{base}?sslmode=require"), BackendOptions::default())
        .await
        .unwrap_or_else(|e| panic!("require: {e}"));
    take(&mut a, "tls", "a", Duration::from_secs(5)).await;
    assert_eq!(
        server.psql(
            "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
                     WHERE ssl AND usename = 'elect'"
        ),
        "1",
        "the session is encrypted"
    );
    // verify-ca: the chain is checked (CA from --tls-ca or sslrootcert=), the name is not.
    open_with(format!("{base}?sslmode=verify-ca"), with_ca.clone())
        .await
        .unwrap_or_else(|e| panic!("verify-ca with the CA: {e}"));
    let ca = server.ca_file().display().to_string();
    open_with(
        format!("{base}?sslmode=verify-ca&sslrootcert={ca}"),
        BackendOptions::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("verify-ca with sslrootcert: {e}"));
    // verify-full: the name must match too.
    match open_with(format!("{base}?sslmode=verify-full"), with_ca).await {
        Err(BackendError::Unavailable(msg)) => {
            eprintln!("unavailable: {msg}");
            assert!(msg.contains("TLS"), "{msg}");
        }
        other => panic!("verify-full against a certificate for another name: {other:?}"),
    }
    // verify-ca without our CA: the system's roots do not know it.
    match open_with(
        format!("{base}?sslmode=verify-ca"),
        BackendOptions::default(),
    )
    .await
    {
        Err(BackendError::Unavailable(msg)) => {
            eprintln!("unavailable: {msg}");
            assert!(msg.contains("TLS"), "{msg}");
        }
        other => panic!("verify-ca with an unknown CA: {other:?}"),
    }
}

/// As libpq: a CA given with `require` (or `prefer`, once TLS is in use) is used, as with
/// `verify-ca`; a CA given with `disable` is a warning.
#[tokio::test]
async fn a_ca_given_with_require_or_prefer_verifies_the_chain() {
    let server = PostgresServer::start_tls("DNS:db.example");
    // A CA that did not sign the server's certificate.
    let other = tempfile::tempdir().unwrap();
    certs::ca(other.path());
    let other_ca = other.path().join("ca.crt");
    let base = format!(
        "postgres://{USER}:{PASSWORD}@127.0.0.1:{}/{DATABASE}",
        server.port
    );
    let with_ca = |ca: &std::path::Path| BackendOptions {
        tls_ca: Some(ca.to_owned()),
        ..BackendOptions::default()
    };
    for mode in ["require", "prefer"] {
        // The right CA: the chain is good, and the name is not checked (as verify-ca).
        AnyBackend::open(
            Some(&format!("{base}?sslmode={mode}")),
            &with_ca(&server.ca_file()),
        )
        .await
        .unwrap_or_else(|e| panic!("{mode} with the server's CA: {e}"));
        // Another CA, from --tls-ca or from sslrootcert=: refused.
        let by_option =
            AnyBackend::open(Some(&format!("{base}?sslmode={mode}")), &with_ca(&other_ca)).await;
        let url = format!("{base}?sslmode={mode}&sslrootcert={}", other_ca.display());
        let by_url = AnyBackend::open(Some(&url), &BackendOptions::default()).await;
        for (how, result) in [("--tls-ca", by_option), ("sslrootcert=", by_url)] {
            match result {
                Err(BackendError::Unavailable(msg)) => assert!(msg.contains("TLS"), "{msg}"),
                other => panic!("{mode} with another CA by {how}: {other:?}"),
            }
        }
    }

    // libpq's default CA, ~/.postgresql/root.crt, through the binary (HOME is per process), as a
    // user other than root: root reads only its own home's files, never those of the HOME that
    // `sudo -E` keeps.
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir(home.path().join(".postgresql")).unwrap();
    std::fs::copy(&other_ca, home.path().join(".postgresql/root.crt")).unwrap();
    for path in [home.path(), &home.path().join(".postgresql")] {
        std::os::unix::fs::chown(path, Some(65534), Some(65534)).unwrap();
    }
    std::fs::set_permissions(
        home.path().join(".postgresql/root.crt"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let status = |url: &str, home: &std::path::Path, as_nobody: bool, extra: &[&str]| {
        let mut cmd = if as_nobody {
            let mut cmd = std::process::Command::new("setpriv");
            cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
                .arg(env!("CARGO_BIN_EXE_elect"));
            cmd
        } else {
            std::process::Command::new(env!("CARGO_BIN_EXE_elect"))
        };
        cmd.env("HOME", home)
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("ELECT_CONFIG")
            .current_dir("/")
            .args(["status", "--backend", url])
            .args(extra)
            .output()
            .unwrap()
    };
    let require = format!("{base}?sslmode=require");
    let out = status(&require, home.path(), true, &[]);
    assert_eq!(
        out.status.code(),
        Some(69),
        "root.crt of another CA: {out:?}"
    );
    let out = status(&require, home.path(), false, &[]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "root must not take the CA of another user's HOME: {out:?}"
    );
    std::fs::copy(server.ca_file(), home.path().join(".postgresql/root.crt")).unwrap();
    let out = status(&require, home.path(), true, &[]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "root.crt of the server's CA: {out:?}"
    );

    // disable cannot use a CA: a warning, and the connection is made in the clear.
    let ca = server.ca_file().display().to_string();
    let out = status(
        &format!("{base}?sslmode=disable"),
        other.path(),
        false,
        &["--tls-ca", &ca],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(
        err.contains("warning: sslmode=disable: the TLS CA") && err.contains(&ca),
        "{err}"
    );
}

#[tokio::test]
async fn verify_full_accepts_a_certificate_for_the_host() {
    let server = PostgresServer::start_tls("IP:127.0.0.1,DNS:localhost");
    let url = format!(
        "postgres://{USER}:{PASSWORD}@127.0.0.1:{}/{DATABASE}?sslmode=verify-full",
        server.port
    );
    let options = BackendOptions {
        tls_ca: Some(server.ca_file()),
        ..BackendOptions::default()
    };
    AnyBackend::open(Some(&url), &options)
        .await
        .unwrap_or_else(|e| panic!("verify-full: {e}"));
}

#[tokio::test]
async fn works_through_pgbouncer_in_transaction_mode() {
    let server = PostgresServer::start();
    // The table is created through the pooler too.
    let bouncer = postgres_server::PgBouncer::start(&server);
    let mut a = open(&bouncer.url()).await;
    let mut b = open(&bouncer.url()).await;
    let ttl = Duration::from_secs(10);
    let lease = take(&mut a, "pooled", "a", ttl).await;
    match b
        .acquire(&request("pooled", "b", ttl), WaitMode::NoWait)
        .await
        .unwrap()
    {
        Acquire::Held(Some(holder)) => assert_eq!(holder.id, "a"),
        other => panic!("expected held by a, got {other:?}"),
    }
    for _ in 0..3 {
        assert_eq!(a.renew(&lease).await.unwrap(), Renewal::Renewed);
        assert!(b.list().await.unwrap()[0].holder.is_some());
    }

    // A waiter behind the pooler may not hear the release, but finds the lock free at its next
    // re-check.
    let waiter = tokio::spawn(async move {
        b.acquire(&request("pooled", "b", ttl), WaitMode::Wait)
            .await
            .map(acquired)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.release(&lease, None).await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(4), waiter)
        .await
        .expect("the waiter acquires within one re-check")
        .unwrap()
        .unwrap();
    assert!(next.token() > lease.token());
}

// Lost replies: the request reached the server, its answer did not come back.

lost_replies_tests!(behind_proxy, ACQUIRE_REQUEST);

/// An acquire retried after its answer was lost (a later call of the same backend) takes over
/// the place its first request took, as its own (with the next token: the lost one was never
/// handed out).
#[tokio::test]
async fn a_retried_acquire_finds_the_lease_its_lost_request_took() {
    let (server, proxy, url) = behind_proxy();
    let req = request("retried", "a", Duration::from_secs(30));
    let mut direct = open(&server.url()).await;
    let mut backend = open(&url).await;
    proxy.lose_replies_after(ACQUIRE_REQUEST);
    let first = tokio::time::timeout(
        Duration::from_millis(800),
        backend.acquire(&req, WaitMode::NoWait),
    )
    .await;
    assert!(
        first.is_err(),
        "the answer should have been lost: {first:?}"
    );
    assert!(proxy.lost_replies());
    let taken = direct.inspect(&req.name).await.unwrap().holder;
    let taken = taken.expect("the lost request took the lock").token;
    proxy.thaw();
    let lease = acquire(&mut backend, &req, WaitMode::NoWait).await;
    assert!(lease.token() > taken, "{} then {}", taken, lease.token());
    assert_eq!(backend.renew(&lease).await.unwrap(), Renewal::Renewed);
    backend.release(&lease, None).await.unwrap();
    assert!(direct.inspect(&req.name).await.unwrap().holder.is_none());
}

// Shared names: every contender of a lock uses one table, whichever role it logs in as.

/// PostgreSQL 15's recommended pattern: a schema per role (`CREATE SCHEMA AUTHORIZATION`, the
/// default `search_path = "$user", public`), and both roles may create in `public`. Two hosts that
/// log in as two roles must still contend for one lock in one table.
#[tokio::test]
async fn two_roles_with_schemas_of_their_own_contend_in_one_table() {
    let server = PostgresServer::start();
    server.psql_in(
        DATABASE,
        "CREATE ROLE lockers; \
         CREATE ROLE alice LOGIN PASSWORD 'pw-alice' IN ROLE lockers; \
         CREATE ROLE bob LOGIN PASSWORD 'pw-bob' IN ROLE lockers; \
         CREATE SCHEMA AUTHORIZATION alice; \
         CREATE SCHEMA AUTHORIZATION bob; \
         GRANT CREATE ON SCHEMA public TO lockers; \
         ALTER DEFAULT PRIVILEGES FOR ROLE alice IN SCHEMA public \
             GRANT SELECT, INSERT, UPDATE ON TABLES TO lockers; \
         ALTER DEFAULT PRIVILEGES FOR ROLE bob IN SCHEMA public \
             GRANT SELECT, INSERT, UPDATE ON TABLES TO lockers;",
    );
    let ttl = Duration::from_secs(30);
    let mut alice = open(&server.url_for("alice", "pw-alice", DATABASE)).await;
    let mut bob = open(&server.url_for("bob", "pw-bob", DATABASE)).await;
    let lease = take(&mut alice, "billing", "alice", ttl).await;
    match bob
        .acquire(&request("billing", "bob", ttl), WaitMode::NoWait)
        .await
        .unwrap()
    {
        Acquire::Held(Some(holder)) => assert_eq!(holder.id, "alice"),
        other => panic!("bob must find the lock held by alice: {other:?}"),
    }
    // One table, in public; none in the roles' own schemas.
    let tables = server.psql_in(
        DATABASE,
        "SELECT string_agg(schemaname || '.' || tablename, ',') FROM pg_tables \
         WHERE tablename = 'elect_leases'",
    );
    assert_eq!(tables, "public.elect_leases");
    // status and errors name the database and the table.
    assert!(
        bob.describe()
            .ends_with("/elect?sslmode=disable&table=public.elect_leases"),
        "{}",
        bob.describe()
    );
    alice.release(&lease, None).await.unwrap();
}

/// A role that may not create in `public` gets an error naming the database and the table, and
/// elect does not create the table in the role's own schema instead.
#[tokio::test]
async fn the_table_is_never_created_in_a_roles_own_schema() {
    let server = PostgresServer::start();
    server.psql_in(
        DATABASE,
        "CREATE ROLE carol LOGIN PASSWORD 'pw-carol'; CREATE SCHEMA AUTHORIZATION carol;",
    );
    let msg = open_err(&server.url_for("carol", "pw-carol", DATABASE)).await;
    assert!(
        msg.contains("public.elect_leases") && msg.contains("database elect"),
        "{msg}"
    );
    let tables = server.psql_in(
        DATABASE,
        "SELECT count(*) FROM pg_tables WHERE tablename = 'elect_leases'",
    );
    assert_eq!(tables, "0");
}

/// libpq would take a database named after the user: a URL that names none is refused.
#[tokio::test]
async fn a_url_without_a_database_is_refused() {
    let server = PostgresServer::start();
    let url = format!(
        "postgres://{USER}:{PASSWORD}@127.0.0.1:{}?sslmode=disable",
        server.port
    );
    match AnyBackend::open(Some(&url), &BackendOptions::default()).await {
        Err(BackendError::Config(msg)) => assert!(msg.contains("names no database"), "{msg}"),
        other => panic!("expected a usage error, got {other:?}"),
    }
}

reconnect_tests!(behind_proxy);
