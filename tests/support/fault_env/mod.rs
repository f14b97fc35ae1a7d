//! Fault injection: contenders looping on one lock, a fault injector, and the checker.
//!
//! A [`Setup`] names a scenario and a backend. [`run`] starts the backend (behind a [`Proxy`]
//! for the network backends, so that its traffic can be held, delayed or reset and the server
//! restarted), a [`Witness`], and several contenders, each a thread that runs
//! `elect run --wait ... -- perl JOB` again each time it exits. The injector applies the
//! scenario's faults one at a time, in order and then at random, to the current holder or to
//! the server. When the time is up the contenders stop looping and every run finishes by itself.
//!
//! The checker then looks at what the witness and the runs recorded:
//! - no two lifetimes of the lock overlap (proven by the witness, or by the jobs' flock probe),
//!   except beside a job frozen with its host, which is counted apart (outside the promise);
//! - tokens strictly increase in the order the jobs started;
//! - the fenced register (the witness) never accepted a write after a later holder's;
//! - a run's job starts once: a holder cut off and back does not run again;
//! - no job outlives its elect (an elect the harness killed with SIGKILL: by at most the grace,
//!   plus [`WATCHDOG_SLACK`] for the watchdog's own wake-ups);
//! - elect's exit code is the job's (42) when the job finished, 76 when the job was stopped, and
//!   69, 75 or 76 when no job ran;
//! - per fault: a holder SIGSTOPped past the ttl has its job dead by `stop + ttl` (the lease
//!   deadline is earlier still); after a holder is killed (elect alone, whose watchdog then
//!   releases the lease, or with the server cut off), the next job starts within ttl + 1 s;
//!   a holder whose watchdog was SIGSTOPped before its lease was lost has its job dead by
//!   `stop + ttl` too (elect enforces the deadline itself), and so has a holder whose host was
//!   cut off from the server; a frozen host's job ends within the grace (and slack) of its thaw;
//! - a holder whose watchdog was killed ends with 70 (or 76 if its lease was lost meanwhile),
//!   and its job does not outlive it; when elect and its watchdog are killed together, the job's
//!   processes may run on, but on the file backend they hold the lock, so no overlap.
//!
//! Each test prints its row of the table (`FAULTS|...`, which `scripts/faults.sh` aggregates)
//! and fails with every violation listed.
//!
//! One concept per file:
//! - `setup`: a scenario's [`Setup`], the [`BackendKind`]s and the [`Fault`]s. A new backend kind
//!   is a variant there and an arm in `server`; a new fault is a variant there, its action in
//!   `inject` and, when it has a bound of its own, a function in `check`;
//! - `server`: starting, freezing and restarting each backend's server, behind its proxy;
//!   `etcd_cluster`: three etcd members on hosts of their own, and their faults;
//! - `arena`: the lock, the witness, the job program and the contenders that loop on them;
//! - `inject`: applying a fault to the holder or the server; `rng`: the replayable order;
//! - `check`: the invariants, one function each; `report`: the row of the table;
//! - `hosts`: contenders as hosts of their own (network namespaces, freezer cgroups);
//! - `ctrl_z`: the tmux scenario.
//!
//! The test crate declares the `certs`, `freezer`, `net`, `netns`, `postgres_server`, `process`,
//! `programs`, `proxy` and `witness` modules of `tests/support` beside this one, and names them
//! at its root (`use support::{...}`), where this module finds them as `crate::NAME`.

mod arena;
mod check;
mod ctrl_z;
mod etcd_cluster;
mod hosts;
mod inject;
mod report;
mod rng;
mod server;
mod setup;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use arena::{contend, drain, wait_holder, Arena};
use inject::{apply, Event};
use rng::Rng;
use server::Server;

pub use check::{check, fenced};
pub use ctrl_z::ctrl_z;
pub use report::Row;
pub use setup::{BackendKind, Fault, Setup};

pub const TTL: Duration = Duration::from_secs(2);
pub const GRACE: Duration = Duration::from_millis(400);
/// The job's exit code when it finishes by itself.
pub const JOB_CODE: i32 = 42;
/// How long a holder may take to notice that its lock file was deleted or replaced (inotify:
/// milliseconds on an idle machine; slack for a loaded one).
pub const LOCK_FILE_REACTION: Duration = Duration::from_millis(1000);
/// What the watchdog may add to the grace when elect was killed: it learns of elect's death
/// from a socket's end-of-file and acts on a timer, each a wake-up of a process on a loaded
/// machine; 250 ms covers two scheduling delays with room to spare.
pub const WATCHDOG_SLACK: Duration = Duration::from_millis(250);
/// The longest any one elect may run before the harness calls it hung.
pub const RUN_LIMIT: Duration = Duration::from_secs(90);

/// Runs a scenario and checks it; panics with every violation found.
pub fn run(setup: Setup) -> Row {
    let server = Server::start(setup.backend);
    let mut arena = Arena::new(setup.scenario);
    arena.hosts = hosts::Hosts::start(&setup, &server);
    let mut rng = Rng::seeded(setup.seed);
    println!(
        "scenario {} on {} ({}): seed {} (ELECT_FAULTS_SEED replays the fault order), lock {}, files in {}",
        setup.scenario,
        setup.backend.name(),
        setup
            .faults
            .iter()
            .map(|f| f.name())
            .collect::<Vec<_>>()
            .join(", "),
        rng.seed(),
        arena.lock,
        arena.dir.path().display()
    );
    let duration = setup.effective_duration();
    let mut events = Vec::new();
    std::thread::scope(|scope| {
        // The contenders stop even when a fault panics: the scope waits for them before it
        // passes the panic on, and would otherwise wait for ever.
        let _stop = StopOnDrop(&arena.shared.stop);
        let server_ref = &server;
        let mut handles = Vec::new();
        for i in 0..setup.contenders {
            let (arena, setup) = (&arena, &setup);
            handles.push(scope.spawn(move || contend(arena, server_ref, setup, i)));
        }
        drop(handles);
        let started = Instant::now();
        let mut order = setup.faults.clone();
        let mut next = 0usize;
        while started.elapsed() < duration {
            let Some(h) = wait_holder(&arena, setup.work, Duration::from_secs(15)) else {
                break;
            };
            let fault = if next < order.len() {
                next += 1;
                order[next - 1]
            } else if setup.random {
                order[rng.below(order.len())]
            } else {
                next = 1;
                order[0]
            };
            let at = Instant::now();
            let ended = apply(fault, &arena, server_ref, Some(h));
            events.push(Event {
                fault,
                at,
                holder: Some((h.0, h.1)),
                ended,
            });
            std::thread::sleep(setup.pause + Duration::from_millis(300 + rng.below(1200) as u64));
        }
        order.clear();
        arena.shared.stop.store(true, Ordering::SeqCst);
        drain(&arena);
    });
    // Every contender has returned: each run ended by itself (or was killed as hung). A job whose
    // elect and watchdog were killed together may still run, until its background process ends.
    let settle = Instant::now() + setup.daemon + Duration::from_secs(2);
    while Instant::now() < settle
        && !arena.shared.watchdog_killed.lock().unwrap().is_empty()
        && arena
            .witness
            .snapshot()
            .lives
            .iter()
            .any(|l| l.close.is_none())
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(100));
    arena.witness.catch_up();
    let row = check(&setup, &arena, &events);
    row.print();
    drop(server);
    if !row.violations.is_empty() {
        // Keep the files for a look.
        let kept = arena.dir.keep();
        panic!(
            "{} on {}: {} violation(s) (files kept in {}):\n{}",
            setup.scenario,
            setup.backend.name(),
            row.violations.len(),
            kept.display(),
            row.violations.join("\n")
        );
    }
    row
}

/// Sets the contenders' stop flag when dropped, on a panic too.
struct StopOnDrop<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}
