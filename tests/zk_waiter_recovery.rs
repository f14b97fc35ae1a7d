//! A waiter on the ZooKeeper backend through network faults: its session expires while the
//! network is cut, which takes its place in the queue with it, and when the network comes back it
//! must queue again at once, fault after fault, ahead of any elect that arrives after the heal,
//! and take the lock when the holder lets go.
//!
//! The regression: each partition ended the waiter's session, and it queued again only after a
//! pause that grew with every partition (to half a second), so newcomers got ahead of it every
//! time; with a fault at every handover (the fault suite's proxy rows) it waited until killed.

mod support;

#[path = "support/net.rs"]
mod net;
#[path = "support/programs.rs"]
mod programs;
#[path = "support/proxy.rs"]
mod proxy;
#[path = "support/zk_server.rs"]
mod zk_server;

use std::time::{Duration, Instant};

use proxy::{Mode, Proxy};
use support::{until_exists, write_pid, Running, TestEnv};
use zk_server::ZkServer;

/// The session timeout is the ttl: 2 s, which the client declares expired after 2.8 s without
/// an answer.
const TTL: [&str; 4] = ["--ttl", "2s", "--grace", "500ms"];
/// As long as the fault suite's blackhole (ttl + 1 s): the session expires on both sides.
const PARTITION: Duration = Duration::from_secs(3);
/// Partitions before the one after which a newcomer arrives: the waiter's pauses grew with
/// each before the fix (0.1, 0.2, 0.4 s, then 0.5 s).
const EARLIER_PARTITIONS: usize = 4;

/// How many times the waiter has joined the queue and begun to wait, by its `-v` log.
fn joins(waiter: &Running) -> usize {
    waiter
        .stderr_so_far()
        .matches("waiting in the lock queue lock=")
        .count()
}

/// A job that appends its name to `order` once it holds the lock.
fn job(name: &str) -> [String; 4] {
    [
        "--".into(),
        "sh".into(),
        "-c".into(),
        format!("echo {name} >> order"),
    ]
}

#[test]
fn a_waiter_cut_off_again_and_again_queues_again_ahead_of_newcomers() {
    let server = ZkServer::shared();
    let proxy = Proxy::start(server.endpoint().parse().expect("the server's address"));
    let env = TestEnv::with_backend(&server.url_under("recovery"));
    let lock = env.lock("recovery");
    let holder_script = format!("{}; {}", write_pid("holder.pid"), until_exists("release"));
    let mut holder = env.spawn(["run", "--lock", &lock].into_iter().chain(TTL).chain([
        "--",
        "sh",
        "-c",
        &holder_script,
    ]));
    env.read_pid("holder.pid");

    // The waiter alone reaches the server through the proxy.
    let mut cmd = env.elect();
    cmd.env(
        "ELECT_BACKEND",
        format!("zk://127.0.0.1:{}/recovery", proxy.port),
    )
    .args(["run", "--lock", &lock, "--wait", "-v"])
    .args(TTL)
    .args(job("waiter"));
    let mut waiter = env.spawn_command(cmd);
    waiter.wait_for_stderr("waiting in the lock queue", Duration::from_secs(10));

    let mut back_after = Vec::new();
    for _ in 0..=EARLIER_PARTITIONS {
        let before = joins(&waiter);
        proxy.set_mode(Mode::Blackhole);
        std::thread::sleep(PARTITION);
        proxy.set_mode(Mode::Pass);
        let healed = Instant::now();
        if back_after.len() == EARLIER_PARTITIONS {
            // A newcomer arrives as the network comes back: the waiter queues again first.
            let mut newcomer = env.spawn(
                ["run", "--lock", &lock, "--wait", "-v"]
                    .into_iter()
                    .map(str::to_owned)
                    .chain(TTL.map(str::to_owned))
                    .chain(job("newcomer")),
            );
            newcomer.wait_for_stderr("waiting in the lock queue", Duration::from_secs(10));
            while joins(&waiter) == before && healed.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(5));
            }
            back_after.push(healed.elapsed());
            let released = Instant::now();
            std::fs::write(env.file("release"), "").expect("release the holder");
            holder.wait().assert_code(0);
            waiter.wait().assert_code(0);
            let took = released.elapsed();
            newcomer.wait().assert_code(0);
            assert_eq!(
                env.lines("order"),
                ["waiter", "newcomer"],
                "the waiter cut off by the partition queued again behind a newcomer that arrived \
                 after the network came back (back in the queue after each heal: \
                 {back_after:?}); its log:\n{}",
                waiter.stderr_so_far()
            );
            // A handover on a live session: a watch event and two requests.
            assert!(
                took < Duration::from_secs(3),
                "the waiter took {took:?} to run after the holder let go"
            );
            return;
        }
        while joins(&waiter) == before && healed.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(5));
        }
        back_after.push(healed.elapsed());
        assert!(
            joins(&waiter) > before,
            "the waiter did not queue again within 10 s of the heal; its log:\n{}",
            waiter.stderr_so_far()
        );
    }
}
