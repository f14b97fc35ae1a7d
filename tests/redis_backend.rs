//! The Redis backend against a real redis-server, through the library API.

mod support {
    pub mod certs;
    pub mod cli_scenarios;
    pub mod lost_replies;
    pub mod net;
    pub mod process;
    pub mod programs;
    pub mod proxy;
    pub mod reconnect;
    pub mod redis_server;
}

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use elect::backend::{
    AcquireRequest, AnyBackend, Backend, BackendError, BackendOptions, ForcedRelease, WaitMode,
};
use elect::lease::{Acquire, HolderInfo, Lease, LockName, Renewal};
use support::net::free_port;
use support::proxy;
use support::proxy::Proxy;
use support::redis_server::{Options, RedisServer};

/// Only the acquire script names the token counter among its keys.
const ACQUIRE_REQUEST: &[u8] = b":token";

/// A server and a proxy in front of it: (server, proxy, URL through the proxy).
fn behind_proxy() -> (RedisServer, Proxy, String) {
    let server = RedisServer::start();
    let proxy = Proxy::start(([127, 0, 0, 1], server.port).into());
    let url = format!("redis://127.0.0.1:{}", proxy.port);
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

async fn open_err(url: &str, options: &BackendOptions) -> String {
    let started = Instant::now();
    match AnyBackend::open(Some(url), options).await {
        Ok(_) => panic!("{url} should be unavailable"),
        Err(BackendError::Unavailable(msg)) => {
            assert!(
                started.elapsed() < Duration::from_secs(8),
                "took {:?}",
                started.elapsed()
            );
            assert!(!msg.contains('\n'), "one line: {msg}");
            msg
        }
        Err(other) => panic!("{url}: expected Unavailable, got {other:?}"),
    }
}

/// A request for one of `holders` places (`--holders N`).
fn request_n(name: &str, id: &str, ttl: Duration, holders: u32) -> AcquireRequest {
    AcquireRequest {
        holders,
        ..request(name, id, ttl)
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

#[tokio::test]
async fn acquire_hold_renew_release() {
    let server = RedisServer::start();
    let mut a = open(&server.url()).await;
    let mut b = open(&server.url()).await;
    let ttl = Duration::from_secs(10);

    let before = elect::clock::BootTime::now();
    let lease = acquire(&mut a, &request("billing", "a", ttl), WaitMode::NoWait).await;
    assert!(lease.sent_at >= before && lease.sent_at <= elect::clock::BootTime::now());
    assert_eq!(lease.secret.len(), 32);

    match b
        .acquire(&request("billing", "b", ttl), WaitMode::NoWait)
        .await
        .unwrap()
    {
        Acquire::Held(Some(holder)) => {
            assert_eq!(holder.id, "a");
            assert_eq!(holder.token, lease.token());
        }
        other => panic!("expected held by a, got {other:?}"),
    }
    assert_eq!(a.renew(&lease).await.unwrap(), Renewal::Renewed);
    a.release(&lease, None).await.unwrap();

    let second = acquire(&mut b, &request("billing", "b", ttl), WaitMode::NoWait).await;
    assert!(second.token() > lease.token());
    // The old holder's renew after a release: the key belongs to b now.
    assert!(matches!(a.renew(&lease).await.unwrap(), Renewal::Lost(_)));
}

#[tokio::test]
async fn tokens_strictly_increase() {
    let server = RedisServer::start();
    let mut backend = open(&server.url()).await;
    let mut last = 0;
    for _ in 0..20 {
        let lease = acquire(
            &mut backend,
            &request("tokens", "t", Duration::from_secs(5)),
            WaitMode::NoWait,
        )
        .await;
        assert!(lease.token().0 > last, "{} after {last}", lease.token());
        last = lease.token().0;
        backend.release(&lease, None).await.unwrap();
    }
}

#[tokio::test]
async fn another_holders_secret_can_neither_renew_nor_release() {
    let server = RedisServer::start();
    let mut backend = open(&server.url()).await;
    let lease = acquire(
        &mut backend,
        &request("mine", "a", Duration::from_secs(10)),
        WaitMode::NoWait,
    )
    .await;
    let mut forged = lease.clone();
    forged.secret = "0".repeat(32);
    assert!(matches!(
        backend.renew(&forged).await.unwrap(),
        Renewal::Lost(_)
    ));
    backend.release(&forged, None).await.unwrap();
    let state = backend.inspect(&lease.name).await.unwrap();
    assert_eq!(
        state.holder.map(|h| h.id).as_deref(),
        Some("a"),
        "still held by a"
    );
    assert_eq!(backend.renew(&lease).await.unwrap(), Renewal::Renewed);
}

#[tokio::test]
async fn renew_after_expiry_is_lost() {
    let server = RedisServer::start();
    let mut backend = open(&server.url()).await;
    let lease = acquire(
        &mut backend,
        &request("short", "a", Duration::from_millis(200)),
        WaitMode::NoWait,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(matches!(
        backend.renew(&lease).await.unwrap(),
        Renewal::Lost(_)
    ));
}

#[tokio::test]
async fn a_release_wakes_a_waiter_at_once() {
    let server = RedisServer::start();
    let mut holder = open(&server.url()).await;
    let mut waiter = open(&server.url()).await;
    let lease = acquire(
        &mut holder,
        &request("wake", "a", Duration::from_secs(30)),
        WaitMode::NoWait,
    )
    .await;
    let req = request("wake", "b", Duration::from_secs(30));
    let wait = async {
        let got = waiter.acquire(&req, WaitMode::Wait).await.unwrap();
        (Instant::now(), got)
    };
    let release = async {
        // Long enough for the waiter to subscribe, try, and go to sleep.
        tokio::time::sleep(Duration::from_millis(700)).await;
        let at = Instant::now();
        holder.release(&lease, None).await.unwrap();
        at
    };
    let ((woke, got), released) = tokio::join!(wait, release);
    let second = acquired(got);
    assert!(second.token() > lease.token());
    let delay = woke.duration_since(released);
    assert!(delay < Duration::from_millis(200), "woken after {delay:?}");
}

#[tokio::test]
async fn a_crashed_holder_is_taken_over_after_its_ttl() {
    let server = RedisServer::start();
    let mut crashed = open(&server.url()).await;
    let mut waiter = open(&server.url()).await;
    let ttl = Duration::from_secs(2);
    let started = Instant::now();
    // Acquired and never released nor renewed: the key is left to expire.
    let lease = acquire(&mut crashed, &request("crash", "a", ttl), WaitMode::NoWait).await;
    let taken = acquire(&mut waiter, &request("crash", "b", ttl), WaitMode::Wait).await;
    let waited = started.elapsed();
    assert!(taken.token() > lease.token());
    assert!(
        waited >= Duration::from_millis(1900),
        "took over after {waited:?}"
    );
    assert!(
        waited < ttl + Duration::from_millis(500),
        "took over only after {waited:?}"
    );
}

#[tokio::test]
async fn many_waiters_do_not_hammer_the_server() {
    let server = RedisServer::start();
    let mut holder = open(&server.url()).await;
    let lease = acquire(
        &mut holder,
        &request("herd", "h", Duration::from_secs(30)),
        WaitMode::NoWait,
    )
    .await;
    let calls_before = command_calls(&server);
    let mut waiters = Vec::new();
    for _ in 0..10 {
        waiters.push(open(&server.url()).await);
    }
    let req = request("herd", "w", Duration::from_secs(30));
    let waiting = futures_util::future::select_all(waiters.iter_mut().map(|w| {
        Box::pin(tokio::time::timeout(
            Duration::from_secs(3),
            w.acquire(&req, WaitMode::Wait),
        ))
    }));
    let (first, _, _) = waiting.await;
    assert!(first.is_err(), "nobody should acquire a held lock");
    let calls = command_calls(&server) - calls_before;
    // Each waiter: its connection set-up, one attempt, its waiting connection's set-up, one
    // BLPOP; the lease has 30 s left, so none re-checks within 3 s.
    assert!(calls < 10 * 8, "{calls} commands in 3 s from 10 waiters");
    holder.release(&lease, None).await.unwrap();
}

/// Total commands the server has processed, from INFO stats.
fn command_calls(server: &RedisServer) -> u64 {
    let info = server.command(&["INFO", "stats"]);
    info.lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no total_commands_processed in {info}"))
}

/// A connection of the test's own, to watch the server without blocking the runtime.
struct Probe(redis::aio::MultiplexedConnection);

impl Probe {
    async fn open(server: &RedisServer) -> Self {
        let client = redis::Client::open(server.url()).unwrap();
        Self(client.get_multiplexed_async_connection().await.unwrap())
    }

    async fn info(&mut self, section: &str, field: &str) -> u64 {
        let info: String = redis::cmd("INFO")
            .arg(section)
            .query_async(&mut self.0)
            .await
            .unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in {info}"))
    }

    /// Commands processed so far. The INFO that reads it counts too, once, in the next reading.
    async fn commands(&mut self) -> u64 {
        self.info("stats", "total_commands_processed").await
    }

    /// Requests clients sent so far: every command but those elect's scripts run inside. The
    /// INFO that reads it counts too, once, in the next reading.
    async fn requests(&mut self) -> u64 {
        const IN_SCRIPTS: &[&str] = &[
            "get", "set", "incr", "del", "pttl", "pexpire", "rpush", "ltrim", "exists", "time",
        ];
        let redis::Value::BulkString(info) = self.query(&["INFO", "commandstats"]).await else {
            panic!("INFO answers a string")
        };
        String::from_utf8_lossy(&info)
            .lines()
            .filter_map(|l| l.strip_prefix("cmdstat_"))
            .filter_map(|l| l.split_once(":calls="))
            .filter(|(name, _)| !IN_SCRIPTS.contains(name))
            .map(|(_, rest)| rest.split(',').next().unwrap().parse::<u64>().unwrap())
            .sum()
    }

    /// Waits until `n` clients are blocked (in BLPOP).
    async fn until_blocked(&mut self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let blocked = self.info("clients", "blocked_clients").await;
            if blocked == n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{blocked} clients blocked, not {n}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn query(&mut self, args: &[&str]) -> redis::Value {
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query_async(&mut self.0).await.unwrap()
    }
}

/// Starts a waiter on its own backend connection; it reports `(id, when acquired)` and then
/// holds the lease for `hold` before releasing it (`None`: never releases).
fn spawn_waiter(
    server: &RedisServer,
    lock: &'static str,
    id: usize,
    ttl: Duration,
    hold: Option<Duration>,
    acquired_tx: tokio::sync::mpsc::UnboundedSender<(usize, Instant)>,
) -> tokio::task::JoinHandle<()> {
    let url = server.url();
    tokio::spawn(async move {
        let mut backend = open(&url).await;
        let lease = acquire(
            &mut backend,
            &request(lock, &format!("w{id}"), ttl),
            WaitMode::Wait,
        )
        .await;
        let _ = acquired_tx.send((id, Instant::now()));
        if let Some(hold) = hold {
            tokio::time::sleep(hold).await;
            backend.release(&lease, None).await.unwrap();
        } else {
            std::future::pending::<()>().await;
        }
    })
}

#[tokio::test]
async fn waiters_are_served_first_come_first_served() {
    let server = RedisServer::start();
    let mut probe = Probe::open(&server).await;
    let mut holder = open(&server.url()).await;
    let ttl = Duration::from_secs(30);
    let lease = acquire(&mut holder, &request("fifo", "h", ttl), WaitMode::NoWait).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for id in 0..3 {
        tasks.push(spawn_waiter(
            &server,
            "fifo",
            id,
            ttl,
            Some(Duration::from_millis(50)),
            tx.clone(),
        ));
        probe.until_blocked(id as u64 + 1).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let released = Instant::now();
    holder.release(&lease, None).await.unwrap();
    let mut order = Vec::new();
    let mut last = released;
    for _ in 0..3 {
        let (id, at) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("the next waiter acquires")
            .unwrap();
        // Each acquisition follows the previous holder's 50 ms hold at once.
        let after = at.duration_since(last);
        assert!(
            after < Duration::from_millis(300),
            "w{id} acquired {after:?} after the previous"
        );
        order.push(id);
        last = at;
    }
    assert_eq!(
        order,
        [0, 1, 2],
        "acquired in the order they started waiting"
    );
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test]
async fn one_release_wakes_one_waiter_of_fifty() {
    const WAITERS: usize = 50;
    let server = RedisServer::start();
    let mut probe = Probe::open(&server).await;
    let mut holder = open(&server.url()).await;
    let ttl = Duration::from_secs(30);
    let lease = acquire(&mut holder, &request("herd", "h", ttl), WaitMode::NoWait).await;
    // Loads the release script, as any earlier release on this server would have.
    let other = acquire(&mut holder, &request("warm-up", "h", ttl), WaitMode::NoWait).await;
    holder.release(&other, None).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let tasks: Vec<_> = (0..WAITERS)
        .map(|id| spawn_waiter(&server, "herd", id, ttl, None, tx.clone()))
        .collect();
    probe.until_blocked(WAITERS as u64).await;

    let requests_before = probe.requests().await;
    let before = probe.commands().await;
    holder.release(&lease, None).await.unwrap();
    let (first, _) = tokio::time::timeout(Duration::from_secs(2), rx.recv())
        .await
        .expect("a waiter acquires at once")
        .unwrap();
    // The probe's own INFOs are taken out: one in `spent`, three in `requests`.
    let spent = probe.commands().await - before - 1;
    let requests = probe.requests().await - requests_before - 3;
    // The release and the woken waiter's attempt; its BLPOP was counted when it blocked.
    assert_eq!(
        requests, 2,
        "requests from one release to the next acquisition"
    );
    // With the commands the two scripts run: 5 in the release (with the read of a --once-per
    // record to remove); 6 in the acquire (the void marker, the place, the clock, the counter
    // read and written, the lease).
    assert!(
        spent <= 13,
        "{spent} commands from one release to the next acquisition"
    );
    eprintln!("one release of {WAITERS} waiters: {requests} requests, {spent} commands");

    let mark = probe.requests().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let quiet = probe.requests().await - mark - 1;
    assert_eq!(quiet, 0, "requests while the others kept waiting");
    assert!(rx.try_recv().is_err(), "only w{first} should have acquired");
    probe.until_blocked(WAITERS as u64 - 1).await;
    for task in tasks {
        task.abort();
    }
}

#[tokio::test]
async fn idle_waiters_cost_almost_nothing() {
    const WAITERS: u64 = 20;
    let server = RedisServer::start();
    let mut probe = Probe::open(&server).await;
    let mut holder = open(&server.url()).await;
    // elect's default ttl; the holder renews every second.
    let ttl = Duration::from_secs(15);
    let lease = acquire(&mut holder, &request("idle", "h", ttl), WaitMode::NoWait).await;
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let tasks: Vec<_> = (0..WAITERS as usize)
        .map(|id| spawn_waiter(&server, "idle", id, ttl, None, tx.clone()))
        .collect();
    probe.until_blocked(WAITERS).await;
    // One connection per waiter (it blocks on the one its attempts use), the holder's and the
    // probe's: a server's `maxclients` bounds the waiters, not half of them.
    let clients = probe.info("clients", "connected_clients").await;
    assert!(
        clients <= WAITERS + 2,
        "{clients} connections for {WAITERS} idle waiters, a holder and a probe"
    );
    // Loads the renew script, as the holder's first renewal would have.
    assert_eq!(holder.renew(&lease).await.unwrap(), Renewal::Renewed);

    let before = probe.requests().await;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(holder.renew(&lease).await.unwrap(), Renewal::Renewed);
    }
    let spent = probe.requests().await - before;
    // Five renewals and the probe's first INFO are not the waiters'.
    let by_waiters = spent - 6;
    eprintln!("{WAITERS} idle waiters: {by_waiters} requests in 5 s");
    assert!(
        by_waiters < WAITERS,
        "{by_waiters} commands in 5 s from {WAITERS} idle waiters"
    );
    for task in tasks {
        task.abort();
    }
}

#[tokio::test]
async fn one_of_several_waiters_takes_over_a_crashed_holder() {
    let server = RedisServer::start();
    let mut probe = Probe::open(&server).await;
    let mut crashed = open(&server.url()).await;
    let ttl = Duration::from_secs(2);
    let started = Instant::now();
    // Acquired and never released nor renewed: the key is left to expire.
    acquire(
        &mut crashed,
        &request("crashed", "a", ttl),
        WaitMode::NoWait,
    )
    .await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let tasks: Vec<_> = (0..5)
        .map(|id| {
            spawn_waiter(
                &server,
                "crashed",
                id,
                Duration::from_secs(30),
                None,
                tx.clone(),
            )
        })
        .collect();
    probe.until_blocked(5).await;
    let (_, at) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("a waiter takes over")
        .unwrap();
    let waited = at.duration_since(started);
    assert!(
        waited >= Duration::from_millis(1900),
        "took over after {waited:?}"
    );
    assert!(
        waited < ttl + Duration::from_millis(500),
        "took over only after {waited:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(rx.try_recv().is_err(), "only one waiter should take over");
    probe.until_blocked(4).await;
    for task in tasks {
        task.abort();
    }
}

#[tokio::test]
async fn a_stale_baton_costs_one_attempt_and_the_waiter_keeps_waiting() {
    let server = RedisServer::start();
    let mut probe = Probe::open(&server).await;
    let mut backend = open(&server.url()).await;
    let ttl = Duration::from_secs(30);
    // Two releases that nobody waited for leave one baton, which expires soon.
    for _ in 0..2 {
        let lease = acquire(&mut backend, &request("stale", "a", ttl), WaitMode::NoWait).await;
        backend.release(&lease, None).await.unwrap();
    }
    assert_eq!(
        probe.query(&["LLEN", "elect:{stale}:baton"]).await,
        redis::Value::Int(1)
    );
    let redis::Value::Int(left) = probe.query(&["PTTL", "elect:{stale}:baton"]).await else {
        panic!("PTTL answers a number")
    };
    assert!(left > 0 && left <= 5000, "baton PTTL {left}");

    // A contender takes the lock without waiting; a waiter then finds the stale baton, tries
    // once, and blocks again until the contender's release.
    let lease = acquire(&mut backend, &request("stale", "c", ttl), WaitMode::NoWait).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let task = spawn_waiter(&server, "stale", 0, ttl, None, tx);
    probe.until_blocked(1).await;
    assert!(rx.try_recv().is_err(), "the lock is held");
    assert_eq!(
        probe.query(&["EXISTS", "elect:{stale}:baton"]).await,
        redis::Value::Int(0),
        "the stale baton was taken"
    );
    let released = Instant::now();
    backend.release(&lease, None).await.unwrap();
    let (_, at) = tokio::time::timeout(Duration::from_secs(2), rx.recv())
        .await
        .expect("the waiter acquires at the release")
        .unwrap();
    let delay = at.duration_since(released);
    assert!(delay < Duration::from_millis(200), "woken after {delay:?}");
    task.abort();
}

#[tokio::test]
async fn a_released_lock_leaves_no_lasting_keys_but_its_counter() {
    let server = RedisServer::start();
    let mut probe = Probe::open(&server).await;
    let mut backend = open(&server.url()).await;
    let lease = acquire(
        &mut backend,
        &request("tidy", "a", Duration::from_secs(30)),
        WaitMode::NoWait,
    )
    .await;
    backend.release(&lease, None).await.unwrap();
    // The baton left for nobody is listed nowhere and expires.
    let states = backend.list().await.unwrap();
    assert_eq!(states.len(), 1);
    assert!(states[0].holder.is_none());
    tokio::time::sleep(Duration::from_millis(5200)).await;
    let redis::Value::Array(keys) = probe.query(&["KEYS", "elect:*"]).await else {
        panic!("KEYS answers an array")
    };
    assert_eq!(
        keys,
        [redis::Value::BulkString(b"elect:{tidy}:token".to_vec())]
    );
}

#[tokio::test]
async fn status_lists_locks_with_their_remaining_ttl() {
    let server = RedisServer::start();
    let mut backend = open(&server.url()).await;
    let held = acquire(
        &mut backend,
        &request("held-one", "a", Duration::from_secs(10)),
        WaitMode::NoWait,
    )
    .await;
    let used = acquire(
        &mut backend,
        &request("used-once", "a", Duration::from_secs(10)),
        WaitMode::NoWait,
    )
    .await;
    backend.release(&used, None).await.unwrap();
    // A key that is not an elect lock must not show up.
    server.command(&["SET", "elect:{x}:other", "1"]);
    server.command(&["SET", "unrelated", "1"]);

    let states = backend.list().await.unwrap();
    let names: Vec<&str> = states.iter().map(|s| s.lock.as_str()).collect();
    assert_eq!(names, ["held-one", "used-once"]);
    let held_state = &states[0];
    assert_eq!(
        held_state.holder.as_ref().map(|h| h.token),
        Some(held.token())
    );
    let left = held_state.expires_in.expect("a remaining ttl");
    assert!(
        left > Duration::from_secs(8) && left <= Duration::from_secs(10),
        "{left:?}"
    );
    assert!(states[1].holder.is_none(), "a released lock is free");

    let unknown = backend
        .inspect(&LockName::new("never").unwrap())
        .await
        .unwrap();
    assert!(unknown.holder.is_none());
}

/// The remaining ttl of a key in ms, as the server says (-2: no key).
fn pttl(server: &RedisServer, key: &str) -> i64 {
    let reply = server.command(&["PTTL", key]);
    reply
        .trim()
        .strip_prefix(':')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("PTTL {key}: {reply:?}"))
}

#[tokio::test]
async fn holders_take_their_own_places_and_tokens() {
    let server = RedisServer::start();
    let mut backend = open(&server.url()).await;
    let (short, long) = (Duration::from_secs(10), Duration::from_secs(30));
    let a = acquire(
        &mut backend,
        &request_n("pair", "a", short, 2),
        WaitMode::NoWait,
    )
    .await;
    let b = acquire(
        &mut backend,
        &request_n("pair", "b", long, 2),
        WaitMode::NoWait,
    )
    .await;
    assert_eq!((a.slot, b.slot), (0, 1));
    assert!(b.token() > a.token(), "{} then {}", a.token(), b.token());
    assert_eq!((a.holder.places, b.holder.places), (2, 2));

    // Both places taken: a third is told the holder of place 0; a mutex user too.
    for holders in [2, 1] {
        match backend
            .acquire(&request_n("pair", "c", short, holders), WaitMode::NoWait)
            .await
            .unwrap()
        {
            Acquire::Held(Some(holder)) => assert_eq!(holder.token, a.token()),
            other => panic!("expected held by a, got {other:?}"),
        }
    }

    let state = backend.inspect(&a.name).await.unwrap();
    assert_eq!(state.holder.as_ref().map(|h| h.token), Some(a.token()));
    let co: Vec<_> = state.co_holders.iter().map(|h| h.holder.token).collect();
    assert_eq!(co, [b.token()]);
    let left = state.co_holders[0].expires_in.expect("a remaining ttl");
    assert!(left > Duration::from_secs(25), "{left:?}");
    // Place 1 is a holder of the lock, not a lock of its own.
    let listed = backend.list().await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].co_holders.len(), 1);

    // Renewing and releasing place 1 leaves place 0 alone.
    assert_eq!(backend.renew(&b).await.unwrap(), Renewal::Renewed);
    assert!(pttl(&server, "elect:{pair}") <= 10_000);
    assert!(pttl(&server, "elect:{pair}:1") > 25_000);
    backend.release(&b, None).await.unwrap();
    assert_eq!(pttl(&server, "elect:{pair}:1"), -2);
    let state = backend.inspect(&a.name).await.unwrap();
    assert_eq!(state.holder.as_ref().map(|h| h.token), Some(a.token()));
    assert!(state.co_holders.is_empty());

    // The freed place goes to the next, with a greater token.
    let c = acquire(
        &mut backend,
        &request_n("pair", "c", short, 2),
        WaitMode::NoWait,
    )
    .await;
    assert_eq!(c.slot, 1);
    assert!(c.token() > b.token());

    // With place 0 free, the lowest held place is the holder.
    backend.release(&a, None).await.unwrap();
    let state = backend.inspect(&a.name).await.unwrap();
    assert_eq!(state.holder.as_ref().map(|h| h.token), Some(c.token()));
    assert!(state.co_holders.is_empty());
    assert_eq!(backend.renew(&c).await.unwrap(), Renewal::Renewed);
    backend.release(&c, None).await.unwrap();
    assert!(backend.inspect(&a.name).await.unwrap().holder.is_none());
}

#[tokio::test]
async fn forced_release_finds_the_place_of_its_token() {
    let server = RedisServer::start();
    let mut backend = open(&server.url()).await;
    let ttl = Duration::from_secs(30);
    let leases: Vec<Lease> = {
        let mut leases = Vec::new();
        for id in ["a", "b", "c"] {
            leases.push(
                acquire(
                    &mut backend,
                    &request_n("three", id, ttl, 3),
                    WaitMode::NoWait,
                )
                .await,
            );
        }
        leases
    };
    let name = leases[0].name.clone();
    let unused = elect::lease::FencingToken(leases[2].token().0 + 100);
    match backend.force_release(&name, unused).await.unwrap() {
        ForcedRelease::Mismatch(Some(holder)) => assert_eq!(holder.token, leases[0].token()),
        other => panic!("expected a mismatch naming a, got {other:?}"),
    }
    assert!(matches!(
        backend
            .force_release(&name, leases[1].token())
            .await
            .unwrap(),
        ForcedRelease::Released
    ));
    let state = backend.inspect(&name).await.unwrap();
    let tokens: Vec<_> = state
        .holder
        .iter()
        .map(|h| h.token)
        .chain(state.co_holders.iter().map(|h| h.holder.token))
        .collect();
    assert_eq!(tokens, [leases[0].token(), leases[2].token()]);
    // The holder of place 2 is left alone.
    assert_eq!(backend.renew(&leases[2]).await.unwrap(), Renewal::Renewed);
    for lease in [&leases[0], &leases[2]] {
        assert!(matches!(
            backend.force_release(&name, lease.token()).await.unwrap(),
            ForcedRelease::Released
        ));
    }
    assert!(matches!(
        backend
            .force_release(&name, leases[0].token())
            .await
            .unwrap(),
        ForcedRelease::NotHeld
    ));
}

#[tokio::test]
async fn a_waiter_takes_the_first_place_to_expire() {
    let server = RedisServer::start();
    let mut crashed = open(&server.url()).await;
    let mut waiter = open(&server.url()).await;
    let started = Instant::now();
    // Two holders that never renew nor release: place 1 runs out first.
    let _long = acquire(
        &mut crashed,
        &request_n("expiring", "a", Duration::from_secs(30), 2),
        WaitMode::NoWait,
    )
    .await;
    let short = acquire(
        &mut crashed,
        &request_n("expiring", "b", Duration::from_secs(2), 2),
        WaitMode::NoWait,
    )
    .await;
    let taken = acquire(
        &mut waiter,
        &request_n("expiring", "c", Duration::from_secs(30), 2),
        WaitMode::Wait,
    )
    .await;
    let waited = started.elapsed();
    assert_eq!(taken.slot, short.slot);
    assert!(taken.token() > short.token());
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_millis(2600),
        "took over after {waited:?}"
    );
}

#[tokio::test]
async fn wrong_password_is_unavailable_and_not_printed() {
    let server = RedisServer::with(Options {
        password: Some("right-pass".into()),
        ..Options::default()
    });
    let good = open(&server.url()).await;
    drop(good);
    let url = format!("redis://:wrong-pass@127.0.0.1:{}", server.port);
    let msg = open_err(&url, &BackendOptions::default()).await;
    assert!(!msg.contains("wrong-pass"), "{msg}");
    let missing = open_err(
        &format!("redis://127.0.0.1:{}", server.port),
        &BackendOptions::default(),
    )
    .await;
    assert!(missing.to_lowercase().contains("auth"), "{missing}");
}

#[tokio::test]
async fn wrong_database_is_unavailable() {
    let server = RedisServer::start();
    let msg = open_err(
        &format!("redis://127.0.0.1:{}/99", server.port),
        &BackendOptions::default(),
    )
    .await;
    assert!(msg.contains("database"), "{msg}");
    open(&format!("redis://127.0.0.1:{}/3", server.port)).await;
}

#[tokio::test]
async fn connection_refused_is_unavailable() {
    let port = free_port();
    let msg = open_err(
        &format!("redis://127.0.0.1:{port}"),
        &BackendOptions::default(),
    )
    .await;
    assert!(msg.contains("refused"), "{msg}");
}

/// A TCP server that speaks something else: it answers `greeting` (if any) and then holds the
/// connection open without a word.
fn fake_server(greeting: &'static [u8]) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let _ = stream.write_all(greeting);
                let mut buf = [0u8; 1024];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                }
            });
        }
    });
    port
}

#[tokio::test]
async fn a_port_that_is_not_redis_is_unavailable() {
    for greeting in [
        &b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n"[..],
        &b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"[..],
        &b""[..],
    ] {
        let port = fake_server(greeting);
        open_err(
            &format!("redis://127.0.0.1:{port}"),
            &BackendOptions::default(),
        )
        .await;
    }
}

#[tokio::test]
async fn tls_with_the_ca_works_and_without_it_is_refused() {
    let server = RedisServer::with(Options {
        tls: true,
        ..Options::default()
    });
    let with_ca = BackendOptions {
        tls_ca: Some(server.ca_file()),
        ..BackendOptions::default()
    };
    let mut backend = AnyBackend::open(Some(&server.url()), &with_ca)
        .await
        .unwrap_or_else(|e| panic!("TLS with the CA: {e}"));
    let lease = acquire(
        &mut backend,
        &request("tls", "a", Duration::from_secs(5)),
        WaitMode::NoWait,
    )
    .await;
    assert_eq!(backend.renew(&lease).await.unwrap(), Renewal::Renewed);
    backend.release(&lease, None).await.unwrap();

    let msg = open_err(&server.url(), &BackendOptions::default()).await;
    assert!(
        msg.to_lowercase().contains("tls") || msg.contains("certificate"),
        "{msg}"
    );
    // Plain text against the TLS port must fail too, not hang.
    open_err(
        &format!("redis://127.0.0.1:{}", server.port),
        &BackendOptions::default(),
    )
    .await;
}

#[tokio::test]
async fn a_stopped_server_makes_renew_fail_in_bounded_time() {
    let server = RedisServer::start();
    let mut backend = open(&server.url()).await;
    let lease = acquire(
        &mut backend,
        &request("frozen", "a", Duration::from_secs(10)),
        WaitMode::NoWait,
    )
    .await;
    server.stop();
    let started = Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(10), backend.renew(&lease)).await;
    let took = started.elapsed();
    // A second call reconnects, and must be bounded as well.
    let again = tokio::time::timeout(Duration::from_secs(10), backend.renew(&lease)).await;
    let took_again = started.elapsed() - took;
    server.resume();
    assert!(
        matches!(outcome, Ok(Err(BackendError::Unavailable(_)))),
        "{outcome:?}"
    );
    assert!(
        took < Duration::from_secs(4),
        "renew failed only after {took:?}"
    );
    assert!(
        matches!(again, Ok(Err(BackendError::Unavailable(_)))),
        "{again:?}"
    );
    assert!(
        took_again < Duration::from_secs(5),
        "second renew failed after {took_again:?}"
    );
    // Once the server answers again, so does the backend.
    assert_eq!(backend.renew(&lease).await.unwrap(), Renewal::Renewed);
}

// Lost replies: the request reached the server, its answer did not come back.

lost_replies_tests!(behind_proxy, ACQUIRE_REQUEST);

/// An acquire retried after its answer was lost finds the lease its first request took: one
/// lease, one token, no second place.
#[tokio::test]
async fn a_retried_acquire_finds_the_lease_its_lost_request_took() {
    let (server, proxy, url) = behind_proxy();
    let req = request("retried", "a", Duration::from_secs(30));
    // Loads the scripts, so that the held answer is the acquire's own.
    let mut direct = open(&server.url()).await;
    direct.inspect(&req.name).await.unwrap();
    acquire(
        &mut direct,
        &request("warm", "w", Duration::from_secs(30)),
        WaitMode::NoWait,
    )
    .await;
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
    proxy.thaw();
    let lease = acquire(&mut backend, &req, WaitMode::NoWait).await;
    // A bulk string: `$LEN`, then the value.
    let reply = server.command(&["GET", "elect:{retried}:token"]);
    let counter: u64 = reply.lines().nth(1).unwrap().trim().parse().unwrap();
    assert_eq!(lease.token().0, counter, "the retry took a second token");
    let state = direct.inspect(&req.name).await.unwrap();
    assert_eq!(state.holder.map(|h| h.token), Some(lease.token()));
    assert_eq!(backend.renew(&lease).await.unwrap(), Renewal::Renewed);
    backend.release(&lease, None).await.unwrap();
    assert!(direct.inspect(&req.name).await.unwrap().holder.is_none());
}

/// An acquire held up in the network until after it was given up (and settled) takes nothing
/// when it reaches the server at last.
#[tokio::test]
async fn an_acquire_that_arrives_after_it_was_settled_takes_nothing() {
    let (server, proxy, url) = behind_proxy();
    let req = request("late", "a", Duration::from_secs(30));
    let mut direct = open(&server.url()).await;
    acquire(
        &mut direct,
        &request("warm", "w", Duration::from_secs(30)),
        WaitMode::NoWait,
    )
    .await;
    let mut backend = open(&url).await;
    // The open connection holds the request itself; the settle goes through a new one.
    proxy.freeze_existing();
    let given_up = backend.acquire(&req, WaitMode::NoWait).await;
    assert!(
        matches!(given_up, Err(BackendError::Unavailable(_))),
        "{given_up:?}"
    );
    // Now the request reaches the server.
    proxy.thaw();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let state = direct.inspect(&req.name).await.unwrap();
    assert!(
        state.holder.is_none(),
        "the late acquire took the lock: {state:?}"
    );
    acquire(&mut direct, &req, WaitMode::NoWait).await;
    drop(backend);
}

/// Tokens come from the server's clock when that is ahead of the counter: a counter that lost
/// its last increments (a restart with `appendfsync everysec`) or was lost whole still hands out
/// larger tokens than before.
#[tokio::test]
async fn tokens_stay_above_a_counter_that_lost_increments() {
    let server = RedisServer::start();
    let mut backend = open(&server.url()).await;
    let req = request("rewound", "a", Duration::from_secs(30));
    let first = acquire(&mut backend, &req, WaitMode::NoWait).await;
    backend.release(&first, None).await.unwrap();
    // What a restart that lost the counter's last increments looks like.
    server.command(&["SET", "elect:{rewound}:token", "3"]);
    let second = acquire(&mut backend, &req, WaitMode::NoWait).await;
    assert!(
        second.token() > first.token(),
        "{} then {}",
        first.token(),
        second.token()
    );
    backend.release(&second, None).await.unwrap();
    server.command(&["DEL", "elect:{rewound}:token"]);
    let third = acquire(&mut backend, &req, WaitMode::NoWait).await;
    assert!(
        third.token() > second.token(),
        "{} then {}",
        second.token(),
        third.token()
    );
    // A counter ahead of the clock still counts up by one.
    let ahead = 9_000_000_000_000_000u64;
    backend.release(&third, None).await.unwrap();
    server.command(&["SET", "elect:{rewound}:token", &ahead.to_string()]);
    let fourth = acquire(&mut backend, &req, WaitMode::NoWait).await;
    assert_eq!(fourth.token().0, ahead + 1);
}

reconnect_tests!(behind_proxy);

/// A connection reset while idle is found dead by the next call: a release then goes out on a
/// new connection and frees the lock at once, instead of failing and leaving the lease to expire
/// (which once kept a waiter behind resets waiting 8 s after the release).
#[tokio::test]
async fn a_release_after_an_idle_reset_frees_the_lock_at_once() {
    let (server, proxy, proxied) = behind_proxy();
    let mut holder = open(&proxied).await;
    let ttl = Duration::from_secs(10);
    let lease = acquire(&mut holder, &request("idle", "a", ttl), WaitMode::NoWait).await;
    let reset = || async {
        proxy.set_mode(proxy::Mode::Reset);
        tokio::time::sleep(Duration::from_millis(50)).await;
        proxy.set_mode(proxy::Mode::Pass);
        // Time for the client to see the reset on its idle connection.
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    reset().await;
    assert_eq!(holder.renew(&lease).await.unwrap(), Renewal::Renewed);
    reset().await;
    holder.release(&lease, None).await.unwrap();
    let mut other = open(&server.url()).await;
    acquire(&mut other, &request("idle", "b", ttl), WaitMode::NoWait).await;
}
