//! The etcd backend through the library API, against a real `etcd` and the real `etcdctl`.

mod support {
    pub mod certs;
    pub mod cli_scenarios;
    pub mod etcd_server;
    pub mod lost_replies;
    pub mod net;
    pub mod process;
    pub mod programs;
    pub mod proxy;
    pub mod reconnect;
}

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use elect::backend::{AcquireRequest, AnyBackend, Backend, BackendError, BackendOptions, WaitMode};
use elect::lease::{Acquire, HolderInfo, Lease, LockName, Renewal};
use support::etcd_server::{EtcdServer, Options};
use support::net::free_port;
use support::{lost_replies, proxy, reconnect};

const TTL: Duration = Duration::from_secs(2);

fn request(name: &str, id: &str) -> AcquireRequest {
    AcquireRequest {
        name: LockName::new(name).unwrap(),
        holder: HolderInfo::this_process(Some(id.to_owned()), TTL),
        ttl: TTL,
        holders: 1,
    }
}

async fn open(url: &str) -> AnyBackend {
    AnyBackend::open(Some(url), &BackendOptions::default())
        .await
        .unwrap_or_else(|e| panic!("open {url}: {e}"))
}

async fn open_err(url: &str, options: &BackendOptions) -> String {
    match AnyBackend::open(Some(url), options).await {
        Ok(_) => panic!("{url} opened"),
        Err(BackendError::Unavailable(msg)) => {
            eprintln!("{url}: {msg}");
            msg
        }
        Err(other) => panic!("{url}: expected Unavailable, got {other:?}"),
    }
}

async fn take(backend: &mut AnyBackend, name: &str, id: &str) -> Lease {
    match backend.acquire(&request(name, id), WaitMode::NoWait).await {
        Ok(Acquire::Acquired(lease)) => lease,
        other => panic!("acquire {name}: {other:?}"),
    }
}

async fn wait_take(backend: &mut AnyBackend, name: &str, id: &str) -> Lease {
    match backend.acquire(&request(name, id), WaitMode::Wait).await {
        Ok(Acquire::Acquired(lease)) => lease,
        other => panic!("acquire {name}: {other:?}"),
    }
}

/// Waits until the queue of `name` has `n` keys.
async fn wait_queue_len(server: &EtcdServer, name: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.keys(&format!("elect/{name}/")).len() != n {
        assert!(
            Instant::now() < deadline,
            "queue of {name} never had {n} keys: {:?}",
            server.keys(&format!("elect/{name}/"))
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `etcdctl lock elect/NAME`, returned once it holds the lock (it prints its key then).
fn etcdctl_lock(server: &EtcdServer, name: &str) -> Child {
    let mut child = server
        .etcdctl_command(&["lock", &format!("elect/{name}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start etcdctl lock");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read etcdctl");
    assert!(line.starts_with(&format!("elect/{name}/")), "{line:?}");
    child
}

#[tokio::test]
async fn acquire_renew_release() {
    let server = EtcdServer::start();
    let mut backend = open(&server.url()).await;
    let started = elect::clock::BootTime::now();
    let lease = take(&mut backend, "billing", "a").await;
    assert!(lease.sent_at >= started);
    let key = format!("elect/billing/{}", lease.secret);
    assert_eq!(server.keys("elect/billing/"), std::slice::from_ref(&key));
    let value = server.etcdctl_ok(&["get", "--print-value-only", &key]);
    assert!(value.contains("\"id\":\"a\""), "{value}");

    let mut other = open(&server.url()).await;
    match other
        .acquire(&request("billing", "b"), WaitMode::NoWait)
        .await
    {
        Ok(Acquire::Held(Some(holder))) => {
            assert_eq!(holder.id, "a");
            assert_eq!(holder.token, lease.token());
        }
        other => panic!("{other:?}"),
    }
    // Renewals keep it past its ttl.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(backend.renew(&lease).await.unwrap(), Renewal::Renewed);
    }
    assert_eq!(server.keys("elect/billing/"), [key]);
    backend.release(&lease, None).await.unwrap();
    assert!(server.keys("elect/billing/").is_empty());
    // Free at once for the next one.
    let again = take(&mut other, "billing", "b").await;
    assert!(again.token() > lease.token());
}

#[tokio::test]
async fn no_wait_on_a_held_lock_leaves_no_key_behind() {
    let server = EtcdServer::start();
    let mut holder = open(&server.url()).await;
    let lease = take(&mut holder, "busy", "a").await;
    let mut other = open(&server.url()).await;
    for _ in 0..3 {
        let got = other
            .acquire(&request("busy", "b"), WaitMode::NoWait)
            .await
            .unwrap();
        assert!(matches!(got, Acquire::Held(Some(_))), "{got:?}");
    }
    assert_eq!(
        server.keys("elect/busy/"),
        [format!("elect/busy/{}", lease.secret)]
    );
    // And no lease either: only the holder's.
    let leases = server.etcdctl_ok(&["lease", "list"]);
    assert!(leases.starts_with("found 1 leases"), "{leases}");
}

#[tokio::test]
async fn tokens_strictly_increase() {
    let server = EtcdServer::start();
    let mut backend = open(&server.url()).await;
    let mut last = 0;
    for _ in 0..5 {
        let lease = take(&mut backend, "tokens", "a").await;
        assert!(lease.token().0 > last, "{} after {last}", lease.token());
        last = lease.token().0;
        // Other writes in between move the revision on; the token still only grows.
        server.etcdctl_ok(&["put", "unrelated", "x"]);
        backend.release(&lease, None).await.unwrap();
    }
}

#[tokio::test]
async fn an_etcdctl_lock_holder_is_seen_as_held() {
    let server = EtcdServer::start();
    let mut etcdctl = etcdctl_lock(&server, "shared");
    let mut backend = open(&server.url()).await;
    let got = backend
        .acquire(&request("shared", "a"), WaitMode::NoWait)
        .await
        .unwrap();
    assert!(matches!(got, Acquire::Held(None)), "{got:?}");
    let state = backend
        .inspect(&LockName::new("shared").unwrap())
        .await
        .unwrap();
    let holder = state.holder.expect("held");
    assert!(holder.id.contains("unknown"), "{}", holder.id);
    // etcdctl unlocks on SIGINT; then elect gets it.
    etcd_server_signal(&etcdctl, "-INT");
    let _ = etcdctl.wait();
    let lease = wait_take(&mut backend, "shared", "a").await;
    backend.release(&lease, None).await.unwrap();
}

#[tokio::test]
async fn etcdctl_lock_waits_for_an_elect_holder() {
    let server = EtcdServer::start();
    let mut backend = open(&server.url()).await;
    let lease = take(&mut backend, "shared", "a").await;
    let mut etcdctl = server
        .etcdctl_command(&["lock", "elect/shared", "echo", "got it"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_queue_len(&server, "shared", 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        etcdctl.try_wait().unwrap().is_none(),
        "etcdctl did not wait"
    );
    // The holder keeps renewing; etcdctl keeps waiting.
    assert_eq!(backend.renew(&lease).await.unwrap(), Renewal::Renewed);
    backend.release(&lease, None).await.unwrap();
    let released = Instant::now();
    let out = etcdctl.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("got it"));
    assert!(released.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn waiters_are_served_first_come_first_served() {
    let server = EtcdServer::start();
    let mut holder = open(&server.url()).await;
    let lease = take(&mut holder, "fifo", "holder").await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for i in 0..3 {
        let mut backend = open(&server.url()).await;
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            let lease = wait_take(&mut backend, "fifo", &format!("w{i}")).await;
            tx.send(i).unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            backend.release(&lease, None).await.unwrap();
        }));
        // Queue them one after the other.
        wait_queue_len(&server, "fifo", i + 2).await;
    }
    // Waiting through more than a ttl: the waiters keep their leases alive meanwhile.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(holder.renew(&lease).await.unwrap(), Renewal::Renewed);
    }
    assert_eq!(server.keys("elect/fifo/").len(), 4);
    holder.release(&lease, None).await.unwrap();
    let mut order = Vec::new();
    for _ in 0..3 {
        order.push(rx.recv().await.unwrap());
    }
    assert_eq!(order, [0, 1, 2]);
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn a_release_wakes_the_next_waiter_fast() {
    let server = EtcdServer::start();
    let mut holder = open(&server.url()).await;
    let lease = take(&mut holder, "fast", "holder").await;
    let mut waiter = open(&server.url()).await;
    let wait = tokio::spawn(async move {
        let lease = wait_take(&mut waiter, "fast", "waiter").await;
        (Instant::now(), lease, waiter)
    });
    wait_queue_len(&server, "fast", 2).await;
    let released = Instant::now();
    holder.release(&lease, None).await.unwrap();
    let (acquired, next, mut waiter) = wait.await.unwrap();
    let took = acquired.duration_since(released);
    assert!(took < Duration::from_millis(200), "took {took:?}");
    assert!(next.token() > lease.token());
    waiter.release(&next, None).await.unwrap();
}

/// An acquire for one of `holders` places.
fn request_places(name: &str, id: &str, holders: u32) -> AcquireRequest {
    AcquireRequest {
        holders,
        ..request(name, id)
    }
}

async fn acquire_places(
    backend: &mut AnyBackend,
    name: &str,
    id: &str,
    holders: u32,
    wait: WaitMode,
) -> Acquire {
    backend
        .acquire(&request_places(name, id, holders), wait)
        .await
        .unwrap_or_else(|e| panic!("acquire {name} for {id}: {e}"))
}

async fn take_place(backend: &mut AnyBackend, name: &str, id: &str, holders: u32) -> Lease {
    match acquire_places(backend, name, id, holders, WaitMode::NoWait).await {
        Acquire::Acquired(lease) => lease,
        other => panic!("acquire {name} for {id}: {other:?}"),
    }
}

#[tokio::test]
async fn holders_two_take_places_and_a_third_is_turned_away() {
    let server = EtcdServer::start();
    let mut a = open(&server.url()).await;
    let mut b = open(&server.url()).await;
    let mut c = open(&server.url()).await;
    let first = take_place(&mut a, "pair", "a", 2).await;
    let second = take_place(&mut b, "pair", "b", 2).await;
    assert!(second.token() > first.token());
    // The key says how many places it takes part in.
    let value = server.etcdctl_ok(&[
        "get",
        "--print-value-only",
        &format!("elect/pair/{}", second.secret),
    ]);
    assert!(value.contains("\"places\":2"), "{value}");

    for _ in 0..2 {
        match acquire_places(&mut c, "pair", "c", 2, WaitMode::NoWait).await {
            Acquire::Held(Some(holder)) => assert_eq!(holder.id, "a"),
            other => panic!("{other:?}"),
        }
    }
    // A mutex user is turned away as well.
    let got = acquire_places(&mut c, "pair", "c", 1, WaitMode::NoWait).await;
    assert!(matches!(got, Acquire::Held(Some(_))), "{got:?}");
    // Nothing of theirs is left behind: two keys, two leases.
    assert_eq!(server.keys("elect/pair/").len(), 2);
    let leases = server.etcdctl_ok(&["lease", "list"]);
    assert!(leases.starts_with("found 2 leases"), "{leases}");

    let state = c.inspect(&LockName::new("pair").unwrap()).await.unwrap();
    let holder = state.holder.expect("held");
    assert_eq!((holder.id.as_str(), holder.token), ("a", first.token()));
    assert!(state.expires_in.is_some());
    let co: Vec<_> = state
        .co_holders
        .iter()
        .map(|h| (h.holder.id.as_str(), h.holder.token, h.expires_in.is_some()))
        .collect();
    assert_eq!(co, [("b", second.token(), true)]);
    assert_eq!(state.waiters, Some(0));

    // Both renew; the first one's release frees a place for the third.
    assert_eq!(a.renew(&first).await.unwrap(), Renewal::Renewed);
    assert_eq!(b.renew(&second).await.unwrap(), Renewal::Renewed);
    a.release(&first, None).await.unwrap();
    let third = take_place(&mut c, "pair", "c", 2).await;
    assert!(third.token() > second.token());
    b.release(&second, None).await.unwrap();
    c.release(&third, None).await.unwrap();
    assert!(server.keys("elect/pair/").is_empty());
}

#[tokio::test]
async fn holders_mutex_and_semaphore_users_do_not_share() {
    let server = EtcdServer::start();
    let mut a = open(&server.url()).await;
    let mut b = open(&server.url()).await;
    // A mutex holder is not joined by a contender with more places.
    let lease = take(&mut a, "mixed", "a").await;
    let got = acquire_places(&mut b, "mixed", "b", 2, WaitMode::NoWait).await;
    assert!(matches!(got, Acquire::Held(Some(_))), "{got:?}");
    a.release(&lease, None).await.unwrap();
    // Nor is an etcdctl holder.
    let mut etcdctl = etcdctl_lock(&server, "mixed");
    let got = acquire_places(&mut b, "mixed", "b", 2, WaitMode::NoWait).await;
    assert!(matches!(got, Acquire::Held(None)), "{got:?}");
    // Once it unlocks, a waiter for one of two places gets in.
    etcd_server_signal(&etcdctl, "-INT");
    let _ = etcdctl.wait();
    match acquire_places(&mut b, "mixed", "b", 2, WaitMode::Wait).await {
        Acquire::Acquired(lease) => b.release(&lease, None).await.unwrap(),
        other => panic!("{other:?}"),
    }
}

/// A waiter for one of two places gets in when either holder leaves, whichever key it was: here
/// first the second holder (not the first, two places ahead), then the first (not the key just
/// ahead of the last waiter).
#[tokio::test]
async fn holders_a_waiter_gets_in_when_either_holder_releases() {
    let server = EtcdServer::start();
    let mut a = open(&server.url()).await;
    let mut b = open(&server.url()).await;
    let first = take_place(&mut a, "places", "a", 2).await;
    let second = take_place(&mut b, "places", "b", 2).await;
    let mut waiters = Vec::new();
    for id in ["c", "d"] {
        let mut backend = open(&server.url()).await;
        waiters.push(tokio::spawn(async move {
            let got = acquire_places(&mut backend, "places", id, 2, WaitMode::Wait).await;
            let Acquire::Acquired(lease) = got else {
                panic!("{got:?}")
            };
            (Instant::now(), lease, backend)
        }));
        let n = server.keys("elect/places/").len() + 1;
        wait_queue_len(&server, "places", n).await;
    }
    // Waiting through more than a ttl: both places stay taken, the waiters keep waiting.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(a.renew(&first).await.unwrap(), Renewal::Renewed);
        assert_eq!(b.renew(&second).await.unwrap(), Renewal::Renewed);
    }
    assert!(waiters.iter().all(|w| !w.is_finished()));
    let state = a.inspect(&LockName::new("places").unwrap()).await.unwrap();
    assert_eq!(state.co_holders.len(), 1);
    assert_eq!(state.waiters, Some(2));

    let released = Instant::now();
    b.release(&second, None).await.unwrap();
    let mut d = waiters.pop().unwrap();
    let (acquired, third, mut c) = waiters.pop().unwrap().await.unwrap();
    let took = acquired.duration_since(released);
    assert!(took < Duration::from_millis(500), "took {took:?}");
    assert!(third.token() > second.token());
    assert_eq!(third.holder.id, "c");
    // One place freed, one waiter in: the other still waits.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!d.is_finished());

    // Now the first holder leaves: the last waiter gets in.
    a.release(&first, None).await.unwrap();
    let (_, fourth, mut backend) = tokio::time::timeout(Duration::from_secs(5), &mut d)
        .await
        .expect("the last waiter got in")
        .unwrap();
    assert!(fourth.token() > third.token());
    let state = c.inspect(&LockName::new("places").unwrap()).await.unwrap();
    let ids: Vec<_> = std::iter::once(state.holder.expect("held").id)
        .chain(state.co_holders.into_iter().map(|h| h.holder.id))
        .collect();
    assert_eq!(ids, ["c", "d"]);
    c.release(&third, None).await.unwrap();
    backend.release(&fourth, None).await.unwrap();
}

#[tokio::test]
async fn a_revoked_lease_is_lost() {
    let server = EtcdServer::start();
    let mut backend = open(&server.url()).await;
    let lease = take(&mut backend, "revoked", "a").await;
    server.etcdctl_ok(&["lease", "revoke", &lease.secret]);
    match backend.renew(&lease).await.unwrap() {
        Renewal::Lost(why) => assert!(why.contains("expired or was revoked"), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_deleted_key_is_lost() {
    let server = EtcdServer::start();
    let mut backend = open(&server.url()).await;
    let lease = take(&mut backend, "deleted", "a").await;
    assert_eq!(backend.renew(&lease).await.unwrap(), Renewal::Renewed);
    server.etcdctl_ok(&["del", &format!("elect/deleted/{}", lease.secret)]);
    match backend.renew(&lease).await.unwrap() {
        Renewal::Lost(why) => assert!(why.contains("deleted"), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_stopped_etcd_makes_renew_fail_in_bounded_time() {
    let server = EtcdServer::start();
    let mut backend = open(&server.url()).await;
    let lease = take(&mut backend, "frozen", "a").await;
    assert_eq!(backend.renew(&lease).await.unwrap(), Renewal::Renewed);
    server.stop();
    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(20), backend.renew(&lease)).await;
    let took = started.elapsed();
    // Stopped for longer than the ttl: a renew gives up within a third of it.
    tokio::time::sleep((TTL + Duration::from_secs(1)).saturating_sub(took)).await;
    server.resume();
    let result = result.expect("renew hung on a stopped etcd");
    assert!(result.is_err(), "{result:?}");
    assert!(took < Duration::from_secs(12), "{took:?}");
    // Once etcd is back, it answers again, and says that the lease expired meanwhile (the
    // stop lasted longer than its ttl).
    let deadline = Instant::now() + Duration::from_secs(15);
    let answer = loop {
        match backend.renew(&lease).await {
            Ok(answer) => break answer,
            Err(e) => assert!(Instant::now() < deadline, "etcd never answered again: {e}"),
        }
    };
    assert!(matches!(answer, Renewal::Lost(_)), "{answer:?}");
}

#[tokio::test]
async fn wrong_password_is_unavailable() {
    let server = EtcdServer::with(Options {
        root_password: Some("s3cret".into()),
        tls: false,
    });
    let bad = format!("etcd://root:wrong@{}", server.endpoint());
    let msg = open_err(&bad, &BackendOptions::default()).await;
    assert!(msg.contains("password"), "{msg}");
    assert!(!msg.contains('\n'), "{msg}");
    assert!(!msg.contains("wrong"), "{msg}");
    let msg = open_err(
        &format!("etcd://{}", server.endpoint()),
        &BackendOptions::default(),
    )
    .await;
    assert!(!msg.contains('\n'), "{msg}");
    // The right password works, with a lock and everything.
    let mut backend = open(&server.url()).await;
    let lease = take(&mut backend, "auth", "a").await;
    assert_eq!(backend.renew(&lease).await.unwrap(), Renewal::Renewed);
    backend.release(&lease, None).await.unwrap();
}

#[tokio::test]
async fn an_unreachable_endpoint_is_unavailable() {
    let url = format!("etcd://127.0.0.1:{}", free_port());
    let started = Instant::now();
    let msg = open_err(&url, &BackendOptions::default()).await;
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(!msg.contains('\n'), "{msg}");
    assert!(msg.contains("127.0.0.1"), "{msg}");
}

#[tokio::test]
async fn fails_over_past_a_dead_endpoint() {
    let server = EtcdServer::start();
    let url = format!("etcd://127.0.0.1:{},{}", free_port(), server.endpoint());
    let mut backend = open(&url).await;
    for _ in 0..3 {
        let lease = take(&mut backend, "failover", "a").await;
        assert_eq!(backend.renew(&lease).await.unwrap(), Renewal::Renewed);
        backend.release(&lease, None).await.unwrap();
    }
}

#[tokio::test]
async fn status_shows_holder_expiry_and_waiters() {
    let server = EtcdServer::start();
    let mut holder = open(&server.url()).await;
    let lease = take(&mut holder, "watched", "holder").await;
    let mut waiters = Vec::new();
    for i in 0..2 {
        let mut backend = open(&server.url()).await;
        waiters.push(tokio::spawn(async move {
            let lease = wait_take(&mut backend, "watched", &format!("w{i}")).await;
            backend.release(&lease, None).await.unwrap();
        }));
    }
    wait_queue_len(&server, "watched", 3).await;
    let mut status = open(&server.url()).await;
    let state = status
        .inspect(&LockName::new("watched").unwrap())
        .await
        .unwrap();
    assert_eq!(state.holder.as_ref().map(|h| h.id.as_str()), Some("holder"));
    assert_eq!(state.holder.as_ref().map(|h| h.token), Some(lease.token()));
    assert_eq!(state.waiters, Some(2));
    let expires = state.expires_in.expect("a ttl");
    assert!(expires <= TTL, "{expires:?}");
    let free = status
        .inspect(&LockName::new("nothing").unwrap())
        .await
        .unwrap();
    assert!(free.holder.is_none());
    let all = status.list().await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].lock.as_str(), "watched");
    assert_eq!(all[0].waiters, Some(2));
    holder.release(&lease, None).await.unwrap();
    for w in waiters {
        w.await.unwrap();
    }
    assert!(status.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn an_abandoned_wait_is_cleaned_up() {
    let server = EtcdServer::start();
    let mut holder = open(&server.url()).await;
    let lease = take(&mut holder, "abandoned", "holder").await;
    let mut waiter = open(&server.url()).await;
    let gave_up = tokio::time::timeout(
        Duration::from_millis(500),
        waiter.acquire(&request("abandoned", "w"), WaitMode::Wait),
    )
    .await;
    assert!(gave_up.is_err());
    assert_eq!(server.keys("elect/abandoned/").len(), 2);
    // The next call on that backend revokes the abandoned lease first.
    let got = waiter
        .acquire(&request("abandoned", "w"), WaitMode::NoWait)
        .await
        .unwrap();
    assert!(matches!(got, Acquire::Held(Some(_))));
    assert_eq!(server.keys("elect/abandoned/").len(), 1);
    // Dropping a backend inside a runtime does too.
    let gave_up = tokio::time::timeout(
        Duration::from_millis(500),
        waiter.acquire(&request("abandoned", "w"), WaitMode::Wait),
    )
    .await;
    assert!(gave_up.is_err());
    drop(waiter);
    wait_queue_len(&server, "abandoned", 1).await;
    holder.release(&lease, None).await.unwrap();
}

#[tokio::test]
async fn tls_with_a_client_certificate() {
    let server = EtcdServer::with(Options {
        root_password: None,
        tls: true,
    });
    let options = BackendOptions {
        tls_ca: Some(server.ca_file()),
        tls_cert: Some(server.client_cert()),
        tls_key: Some(server.client_key()),
    };
    let mut backend = AnyBackend::open(Some(&server.url()), &options)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let lease = take(&mut backend, "tls", "a").await;
    assert_eq!(backend.renew(&lease).await.unwrap(), Renewal::Renewed);
    backend.release(&lease, None).await.unwrap();

    // Without the CA, the server's certificate does not verify.
    let no_ca = BackendOptions {
        tls_ca: None,
        ..options.clone()
    };
    let msg = open_err(&server.url(), &no_ca).await;
    assert!(!msg.contains('\n'), "{msg}");
    // Plain etcd:// to a TLS server fails too, in one line.
    let msg = open_err(
        &format!("etcd://{}", server.endpoint()),
        &BackendOptions::default(),
    )
    .await;
    assert!(!msg.contains('\n'), "{msg}");
}

fn etcd_server_signal(child: &Child, sig: &str) {
    let status = std::process::Command::new("kill")
        .arg(sig)
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn fails_over_when_its_member_dies() {
    let mut members = EtcdServer::cluster(3);
    let endpoints: Vec<String> = members.iter().map(EtcdServer::endpoint).collect();
    let url = format!("etcd://{}", endpoints.join(","));
    let mut backend = open(&url).await;
    // A longer ttl than elsewhere: a leader election may come in between.
    let ttl = Duration::from_secs(5);
    let req = AcquireRequest {
        ttl,
        ..request("cluster", "a")
    };
    let lease = match backend.acquire(&req, WaitMode::NoWait).await {
        Ok(Acquire::Acquired(lease)) => lease,
        other => panic!("{other:?}"),
    };
    assert_eq!(backend.renew(&lease).await.unwrap(), Renewal::Renewed);
    // The backend talks to the first endpoint; it goes away.
    members[0].kill();
    let killed = Instant::now();
    let mut failures = 0;
    loop {
        match backend.renew(&lease).await {
            Ok(Renewal::Renewed) => {
                eprintln!(
                    "renewed through another member after {failures} failures, {:?}",
                    killed.elapsed()
                );
                break;
            }
            Ok(Renewal::Lost(why)) => panic!("lost: {why}"),
            Err(e) => {
                failures += 1;
                assert!(
                    killed.elapsed() < ttl,
                    "no renewal after {failures} tries: {e}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    // Still the holder, as seen through the surviving members.
    let mut other = open(&format!("etcd://{}", endpoints[1..].join(","))).await;
    match other
        .acquire(&request("cluster", "b"), WaitMode::NoWait)
        .await
    {
        Ok(Acquire::Held(Some(holder))) => assert_eq!(holder.token, lease.token()),
        other => panic!("{other:?}"),
    }
    backend.release(&lease, None).await.unwrap();
    let again = take(&mut other, "cluster", "b").await;
    other.release(&again, None).await.unwrap();
}

/// With many waiters, a release wakes only the next one: the others watch keys that did not
/// change, so they send nothing. Counted with etcd's own request counters.
#[tokio::test]
async fn a_release_wakes_one_waiter_not_all() {
    const WAITERS: usize = 20;
    let server = EtcdServer::start();
    let mut holder = open(&server.url()).await;
    let lease = take(&mut holder, "herd", "holder").await;
    let (acquired_tx, mut acquired) = tokio::sync::mpsc::unbounded_channel();
    let (may_release, release_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for i in 0..WAITERS {
        let mut backend = open(&server.url()).await;
        let (acquired_tx, mut release_rx) = (acquired_tx.clone(), release_rx.clone());
        tasks.push(tokio::spawn(async move {
            let lease = wait_take(&mut backend, "herd", &format!("w{i}")).await;
            acquired_tx.send(i).unwrap();
            release_rx.wait_for(|go| *go).await.unwrap();
            backend.release(&lease, None).await.unwrap();
        }));
        // Queue them one after the other, so that their order is known.
        wait_queue_len(&server, "herd", i + 2).await;
    }
    let requests = || server.metric("etcd_mvcc_range_total") + server.metric("etcd_mvcc_txn_total");
    let before = requests();
    holder.release(&lease, None).await.unwrap();
    assert_eq!(
        acquired.recv().await,
        Some(0),
        "the first in line goes first"
    );
    // Time for a herd to show itself, if there were one.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = requests();
    assert!(
        after - before < 5.0,
        "{} reads and transactions for one hand-over among {WAITERS} waiters",
        after - before
    );
    assert_eq!(server.keys("elect/herd/").len(), WAITERS);
    may_release.send(true).unwrap();
    let mut order = vec![0];
    for _ in 1..WAITERS {
        order.push(acquired.recv().await.unwrap());
    }
    assert_eq!(order, (0..WAITERS).collect::<Vec<_>>());
    for t in tasks {
        t.await.unwrap();
    }
}

/// A waiter whose member dies moves to another member and waits on with the same key: it keeps
/// its place in the line, and no error reaches the caller.
#[tokio::test]
async fn a_wait_broken_by_a_dead_member_resumes_through_another() {
    let mut members = EtcdServer::cluster(3);
    let endpoints: Vec<String> = members.iter().map(EtcdServer::endpoint).collect();
    let long = |id: &str| AcquireRequest {
        ttl: Duration::from_secs(30),
        ..request("resume", id)
    };
    let mut holder = open(&format!("etcd://{}", endpoints[1..].join(","))).await;
    let lease = match holder.acquire(&long("holder"), WaitMode::NoWait).await {
        Ok(Acquire::Acquired(lease)) => lease,
        other => panic!("{other:?}"),
    };
    let mut waiter = open(&format!("etcd://{}", endpoints.join(","))).await;
    let req = long("waiter");
    let waiting = tokio::spawn(async move {
        let first = waiter.acquire(&req, WaitMode::Wait).await;
        (first, waiter)
    });
    wait_queue_len(&members[1], "resume", 2).await;
    let before = members[1].keys("elect/resume/");
    members[0].kill();
    // Time for the waiter to notice and move on.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        members[1].keys("elect/resume/"),
        before,
        "the same keys, in line"
    );
    holder.release(&lease, None).await.unwrap();
    let (first, mut waiter) = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the waiter took the lock")
        .unwrap();
    let mine = match first {
        Ok(Acquire::Acquired(mine)) => mine,
        other => panic!("{other:?}"),
    };
    assert!(before.contains(&format!("elect/resume/{}", mine.secret)));
    waiter.release(&mine, None).await.unwrap();
}

/// The proxy-reset fault scenario once starved waiters: each reset ended their wait, they
/// revoked their key and queued again at the back, and with resets coming faster than their turn
/// they never got it. A waiter now keeps its key through resets: the first in line still goes
/// first, before a contender that queued behind it on a path without resets.
#[tokio::test]
async fn a_waiter_keeps_its_place_through_resets() {
    let server = EtcdServer::start();
    let proxy = proxy::Proxy::start(server.endpoint().parse().unwrap());
    let proxied = format!("etcd://127.0.0.1:{}", proxy.port);
    let long = |id: &str| AcquireRequest {
        ttl: Duration::from_secs(10),
        ..request("place", id)
    };
    let mut holder = open(&server.url()).await;
    let lease = match holder.acquire(&long("holder"), WaitMode::NoWait).await {
        Ok(Acquire::Acquired(lease)) => lease,
        other => panic!("{other:?}"),
    };
    let (acquired, mut order) = tokio::sync::mpsc::unbounded_channel();
    let contend = |url: String, id: &'static str| {
        let acquired = acquired.clone();
        tokio::spawn(async move {
            let mut backend = open(&url).await;
            // Retries on errors, as `elect run --wait` does.
            let lease = loop {
                match backend.acquire(&long(id), WaitMode::Wait).await {
                    Ok(Acquire::Acquired(lease)) => break lease,
                    Ok(held) => panic!("{held:?}"),
                    Err(err) => {
                        eprintln!("{id}: {err}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            };
            acquired.send(id).unwrap();
            backend.release(&lease, None).await.unwrap();
        })
    };
    let first = contend(proxied, "first");
    wait_queue_len(&server, "place", 2).await;
    let second = contend(server.url(), "second");
    wait_queue_len(&server, "place", 3).await;
    let flapping = std::thread::spawn(move || {
        // Reset windows longer than a wait's pause before it reads the line again, as in the
        // fault scenario.
        let (reset, pass) = (Duration::from_millis(600), Duration::from_millis(400));
        reconnect::flap_with(&proxy, Duration::from_secs(3), reset, pass);
        proxy
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    holder.release(&lease, None).await.unwrap();
    let _proxy = flapping.join().unwrap();
    for expected in ["first", "second"] {
        let next = tokio::time::timeout(Duration::from_secs(15), order.recv()).await;
        assert_eq!(next.expect("a contender took the lock"), Some(expected));
    }
    first.await.unwrap();
    second.await.unwrap();
}

reconnect_tests!(behind_proxy);

/// A server and a proxy in front of it: (server, proxy, URL through the proxy).
fn behind_proxy() -> (EtcdServer, proxy::Proxy, String) {
    let server = EtcdServer::start();
    let proxy = proxy::Proxy::start(server.endpoint().parse().unwrap());
    let url = format!("etcd://127.0.0.1:{}", proxy.port);
    (server, proxy, url)
}

/// The holder's connection freezes (new ones still pass): the next renew moves to a new channel
/// instead of waiting on the old one, and the job finishes.
#[test]
fn a_stalled_connection_is_replaced_for_the_next_renew() {
    let (_server, proxy, url) = behind_proxy();
    lost_replies::a_stalled_connection_is_replaced_for_the_next_renew(&url, &proxy);
}

/// `--once-per`: a release lost after a successful run does not let a newcomer run again.
#[test]
fn a_lost_release_does_not_let_once_per_run_twice() {
    let (server, proxy, url) = behind_proxy();
    lost_replies::a_lost_release_does_not_let_once_per_run_twice(&url, &server.url(), &proxy);
}
