//! The checker: every invariant over what the witness and the runs recorded, one function each.
//!
//! [`check`] gathers the record once into [`Facts`] and calls each check in turn; a check
//! returns the violations it found, one line each.

use std::collections::HashSet;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::{Duration, Instant};

use super::arena::{Arena, RunRec};
use super::inject::Event;
use super::inject::BLACKHOLE_AT_KILL;
use super::report::{Fenced, Frozen, Overlaps, Row, Window};
use super::setup::{Fault, Setup};
use super::{GRACE, JOB_CODE, LOCK_FILE_REACTION, RUN_LIMIT, TTL, WATCHDOG_SLACK};
use crate::witness::{Life, Record};

/// Checks every invariant over what was recorded.
pub fn check(setup: &Setup, arena: &Arena, events: &[Event]) -> Row {
    let facts = Facts::gather(arena);
    let mut v = Vec::new();
    let (overlaps, found) = overlaps(&facts, events);
    v.extend(found);
    v.extend(unfinished(&facts));
    let (monotonic, found) = tokens(&facts);
    v.extend(found);
    v.extend(outlived(setup, &facts));
    v.extend(exit_codes(&facts, events));
    v.extend(hung(&facts));
    v.extend(one_life_per_run(&facts));
    let (fenced, found) = fenced_writes(&facts);
    v.extend(found);
    let PerFault {
        takeovers,
        windows,
        frozen,
        violations,
    } = per_fault(setup, &facts, events);
    v.extend(violations);
    Row {
        scenario: setup.scenario.to_owned(),
        backend: setup.backend.name().to_owned(),
        runs: facts.runs.len(),
        handovers: facts.record.lives.len().saturating_sub(1),
        overlaps,
        takeovers,
        monotonic,
        fenced,
        mechanism: setup.mechanism(),
        violations: v,
        windows,
        frozen,
    }
}

/// What the witness and the contenders recorded, taken once.
struct Facts {
    record: Record,
    runs: Vec<RunRec>,
    killed: HashSet<u64>,
    watchdog_killed: HashSet<u64>,
    terminated: HashSet<u64>,
    hung: Vec<u64>,
    /// The first job's start: times in messages are relative to it.
    t0: Instant,
}

impl Facts {
    fn gather(arena: &Arena) -> Self {
        let record = arena.witness.snapshot();
        let t0 = record
            .lives
            .first()
            .map_or_else(Instant::now, |l| l.connect);
        Self {
            runs: arena.shared.runs.lock().unwrap().clone(),
            killed: arena.shared.killed.lock().unwrap().clone(),
            watchdog_killed: arena.shared.watchdog_killed.lock().unwrap().clone(),
            terminated: arena.shared.terminated.lock().unwrap().clone(),
            hung: arena.shared.hung.lock().unwrap().clone(),
            record,
            t0,
        }
    }

    fn rel(&self, t: Instant) -> u128 {
        t.saturating_duration_since(self.t0).as_millis()
    }

    fn describe(&self, l: &Life) -> String {
        format!(
            "job pid {} token {:?} run {:?} (connected at +{} ms, closed at {})",
            l.pid,
            l.token,
            l.run,
            self.rel(l.connect),
            l.close
                .map_or("never".into(), |c| format!("+{} ms", self.rel(c)))
        )
    }

    /// The last lines of a run's stderr, indented, for a violation's message.
    fn stderr_of(&self, run: Option<u64>) -> String {
        run.and_then(|r| self.runs.iter().find(|x| x.run == r))
            .map(|r| format!("\n      {}", stderr_tail(&r.stderr)))
            .unwrap_or_default()
    }
}

fn stderr_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(6)..].join("\n      ")
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

/// Lifetimes that overlap, proven by the witness or by the jobs' flock probe.
///
/// A job on a frozen host overlaps the job that took over while it was frozen: the lease has
/// expired, but nothing on a frozen host can act on that until it is thawed. That overlap is
/// outside the promise (only the fencing token protects there); it is counted apart, with its
/// length, and the stale job's end after the thaw is bounded by [`after_thaw`].
fn overlaps(f: &Facts, events: &[Event]) -> (Overlaps, Vec<String>) {
    let lives = &f.record.lives;
    let mut v = Vec::new();
    let mut overlapping: HashSet<usize> = HashSet::new();
    let mut frozen: HashSet<usize> = HashSet::new();
    let mut windows = Vec::new();
    // Whether life `b` started while life `a` was frozen with its host, `a` still open.
    let frozen_over = |a: usize, b: usize| {
        events.iter().any(|e| {
            e.fault == Fault::FreezeHost
                && e.holder.is_some_and(|h| h.1 == a)
                && lives[b].connect >= e.at
                && lives[a].close.is_none_or(|c| c > lives[b].connect)
        })
    };
    for &(a, b) in &f.record.overlaps {
        if frozen_over(a, b) {
            frozen.insert(b);
            if let Some(close) = lives[a].close {
                windows.push(close.saturating_duration_since(lives[b].connect));
            }
            continue;
        }
        overlapping.insert(b);
        v.push(format!(
            "OVERLAP (witness): {} was still open when {} connected{}{}",
            f.describe(&lives[a]),
            f.describe(&lives[b]),
            f.stderr_of(lives[a].run),
            f.stderr_of(lives[b].run)
        ));
    }
    for (i, l) in lives.iter().enumerate() {
        if !l.busy || overlapping.contains(&i) || frozen.contains(&i) {
            continue;
        }
        if (0..i).any(|a| frozen_over(a, i)) {
            frozen.insert(i);
            continue;
        }
        overlapping.insert(i);
        v.push(format!(
            "OVERLAP (flock probe): {} started while another job held the probe lock{}",
            f.describe(l),
            f.stderr_of(l.run)
        ));
    }
    let counted = Overlaps {
        violations: overlapping.len(),
        frozen: frozen.len(),
        frozen_windows: windows,
    };
    (counted, v)
}

/// Every job has ended by the time the test checks.
fn unfinished(f: &Facts) -> Vec<String> {
    f.record
        .lives
        .iter()
        .filter(|l| l.close.is_none())
        .map(|l| format!("job still running after the test: {}", f.describe(l)))
        .collect()
}

/// Tokens strictly increase in the order the jobs started: whether they did, and the violations.
fn tokens(f: &Facts) -> (bool, Vec<String>) {
    let mut v = Vec::new();
    // A job killed before it said its token (its holder killed at once) tells nothing here; its
    // lifetime still counts for the overlap check.
    let told: Vec<_> = f
        .record
        .lives
        .iter()
        .filter(|l| l.token.is_some())
        .collect();
    for pair in told.windows(2) {
        match (pair[0].token, pair[1].token) {
            (Some(a), Some(b)) if b > a => {}
            _ => v.push(format!(
                "TOKEN not increasing: {} then {}",
                f.describe(pair[0]),
                f.describe(pair[1])
            )),
        }
    }
    (v.is_empty(), v)
}

/// No job outlives its elect; a killed elect's job by at most the grace and the watchdog's slack.
fn outlived(setup: &Setup, f: &Facts) -> Vec<String> {
    let lives = &f.record.lives;
    let mut v = Vec::new();
    for &i in &f.record.outlived {
        let l = &lives[i];
        let Some(run) = l.run else { continue };
        let exit = f.record.exits[&run];
        let over = l.close.map(|c| c.saturating_duration_since(exit));
        if f.killed.contains(&run) && f.watchdog_killed.contains(&run) && setup.pid_namespace {
            // elect and its watchdog killed together, the job in a PID namespace: the kernel
            // kills every process of the job as the watchdog dies.
            if over.is_none_or(|o| o > WATCHDOG_SLACK) {
                v.push(format!(
                    "OUTLIVED: {} ran {:?} ms after elect and its watchdog were killed, in a PID namespace (allowed: {} ms)",
                    f.describe(l),
                    over.map(ms),
                    ms(WATCHDOG_SLACK)
                ));
            }
        } else if f.killed.contains(&run) && f.watchdog_killed.contains(&run) {
            // elect and its watchdog killed together: the job's other processes run on. On the
            // file backend they hold the lock (checked as overlaps); elsewhere nothing guards
            // them.
            if setup.backend.expires() {
                v.push(format!(
                    "OUTLIVED: {} ran on after elect and its watchdog were killed",
                    f.describe(l)
                ));
            }
        } else if f.killed.contains(&run) {
            if over.is_none_or(|o| o > GRACE + WATCHDOG_SLACK) {
                v.push(format!(
                    "OUTLIVED: {} ran {:?} ms after its elect was killed (allowed: grace {} ms + {} ms)",
                    f.describe(l),
                    over.map(ms),
                    ms(GRACE),
                    ms(WATCHDOG_SLACK)
                ));
            }
        } else {
            v.push(format!(
                "OUTLIVED: {} was still running after its elect (run {run}) exited, for {:?} ms{}",
                f.describe(l),
                over.map(ms),
                f.stderr_of(Some(run))
            ));
        }
    }
    v
}

/// elect's exit code says what happened to the job, for every run.
fn exit_codes(f: &Facts, events: &[Event]) -> Vec<String> {
    let mut v = Vec::new();
    // A job thawed after its lease expired may finish its last step as elect stops it: elect
    // says 76, the lease having been lost while the job ran.
    let frozen: HashSet<u64> = events
        .iter()
        .filter(|e| e.fault == Fault::FreezeHost)
        .filter_map(|e| e.holder.map(|h| h.0))
        .collect();
    for r in &f.runs {
        let Some(status) = r.status else {
            v.push(format!("run {} has no exit status", r.run));
            continue;
        };
        let life = f.record.lives.iter().find(|l| l.run == Some(r.run));
        if f.killed.contains(&r.run) {
            // A kill that lands after the run ended by itself finds a process already exiting:
            // the job's own code, its job done, is as good.
            let ended_first = status.code() == Some(JOB_CODE) && life.is_some_and(|l| l.done);
            if status.signal() != Some(9) && !ended_first {
                v.push(format!(
                    "run {} was killed with SIGKILL but ended with {status:?}",
                    r.run
                ));
            }
            continue;
        }
        if f.watchdog_killed.contains(&r.run) {
            // elect stopped the job itself and says so (70), or 76 if the lease was lost too.
            let ok = matches!(status.code(), Some(70 | 76))
                || (status.code() == Some(JOB_CODE) && life.is_some_and(|l| l.done));
            if !ok {
                v.push(format!(
                    "EXIT CODE: run {} whose watchdog was killed ended with {status:?} (expected 70){}",
                    r.run,
                    f.stderr_of(Some(r.run))
                ));
            }
            continue;
        }
        if f.terminated.contains(&r.run) {
            // SIGTERM while waiting; if it had just acquired, the job got the SIGTERM. A run on a
            // host cut off from the server may have been failing to connect (69) meanwhile.
            let ok = match (life, status.code()) {
                (Some(l), Some(code)) if l.done => code == JOB_CODE || code == 143,
                (None, Some(69)) => true,
                (_, Some(code)) => code == 143 || code == 76,
                (_, None) => false,
            };
            if !ok {
                v.push(format!(
                    "EXIT CODE: run {} got SIGTERM while waiting and ended with {status:?}{}",
                    r.run,
                    f.stderr_of(Some(r.run))
                ));
            }
            continue;
        }
        let ok = match (life, status.code()) {
            // A job that got SIGTERM had begun to be stopped: elect says 76 even if it then
            // finished its work by itself.
            (Some(l), Some(code)) if l.done && (l.got_term || frozen.contains(&r.run)) => {
                code == JOB_CODE || code == 76
            }
            (Some(l), Some(code)) if l.done => code == JOB_CODE,
            (Some(_), Some(code)) => code == 76,
            (None, Some(code)) => [69, 75, 76].contains(&code),
            (_, None) => false,
        };
        if !ok {
            v.push(format!(
                "EXIT CODE: run {} ended with {status:?}; the job {}{}",
                r.run,
                match life {
                    Some(l) if l.done => format!("finished by itself (expected {JOB_CODE})"),
                    Some(_) => "was stopped (expected 76)".to_owned(),
                    None => "never ran (expected 69, 75 or 76)".to_owned(),
                },
                f.stderr_of(Some(r.run))
            ));
        }
    }
    v
}

/// A run's job starts once: a holder cut off and back (a partition healed, a host thawed) does
/// not run its job again without acquiring the lease again, which is a new run.
fn one_life_per_run(f: &Facts) -> Vec<String> {
    let mut seen = HashSet::new();
    f.record
        .lives
        .iter()
        .filter(|l| l.run.is_some_and(|r| !seen.insert(r)))
        .map(|l| format!("RAN AGAIN: a second job in one run: {}", f.describe(l)))
        .collect()
}

/// The fenced register's history, with a violation for each stale write it accepted.
fn fenced_writes(f: &Facts) -> (Fenced, Vec<String>) {
    let (fenced, stale) = fenced(&f.record);
    let v = stale
        .into_iter()
        .map(|i| {
            let w = &f.record.writes[i];
            format!(
                "STALE WRITE accepted at +{} ms from {}, after a later holder's write",
                f.rel(w.at),
                f.describe(&f.record.lives[w.life])
            )
        })
        .collect();
    (fenced, v)
}

/// How many writes the register accepted and refused, and which accepted writes (indices into
/// `record.writes`) were stale.
///
/// A write is stale when the register had already accepted a write from a later holder: the
/// accepted writes must come in blocks, one per job, in the order of the jobs' tokens. The
/// register refuses a lower token by itself; what it cannot tell apart is two holders with the
/// same token.
pub fn fenced(record: &Record) -> (Fenced, Vec<usize>) {
    let lives = &record.lives;
    let mut fenced = Fenced::default();
    let mut stale = Vec::new();
    let mut current: Option<usize> = None;
    let mut left: HashSet<usize> = HashSet::new();
    for (i, w) in record.writes.iter().enumerate() {
        if !w.accepted {
            fenced.refused += 1;
            continue;
        }
        fenced.accepted += 1;
        if let Some(c) = current.filter(|&c| c != w.life) {
            left.insert(c);
        }
        let superseded = left
            .iter()
            .any(|&j| j != w.life && lives[j].token >= w.token);
        if left.contains(&w.life) || superseded {
            fenced.stale += 1;
            stale.push(i);
        }
        current = Some(w.life);
    }
    (fenced, stale)
}

/// No run ran past the harness's limit.
fn hung(f: &Facts) -> Vec<String> {
    f.hung
        .iter()
        .map(|run| {
            format!(
                "HUNG: run {run} still ran after {RUN_LIMIT:?}{}",
                f.stderr_of(Some(*run))
            )
        })
        .collect()
}

/// What the faults' own bounds measured.
struct PerFault {
    /// The takeover times after every fault that stopped a holder.
    takeovers: Vec<Duration>,
    /// What is left of the window after a lock file changed.
    windows: Vec<Window>,
    /// What a frozen host did after its thaw.
    frozen: Vec<Frozen>,
    violations: Vec<String>,
}

/// The bounds each fault has of its own.
fn per_fault(setup: &Setup, f: &Facts, events: &[Event]) -> PerFault {
    let lives = &f.record.lives;
    let mut v = Vec::new();
    let mut takeovers = Vec::new();
    let mut windows = Vec::new();
    let mut frozen = Vec::new();
    for e in events {
        let Some((run, li)) = e.holder else { continue };
        let held = &lives[li];
        let next = lives
            .iter()
            .skip(li + 1)
            .find(|l| l.connect >= e.at && l.run != Some(run));
        if !held.done {
            if let Some(n) = next {
                takeovers.push(n.connect.duration_since(e.at));
            }
        }
        match e.fault {
            // With the suite's short ttl, a release by the watchdog and an expiry are close in
            // time on a loaded machine: tests/crash_takeover.rs tells them apart (ttl 30 s).
            // Here the release is checked for safety: no overlap, tokens that grow.
            Fault::KillHolder | Fault::HandOff => v.extend(takeover_after_kill(e, run, held, next)),
            // Every contender is cut off too: none can take over before the path heals, and
            // then not before its client has reconnected (PostgreSQL's takes up to about 0.8 s,
            // more on a loaded host).
            Fault::HandOffUnreachable => v.extend(takeover_within(
                e,
                run,
                held,
                next,
                BLACKHOLE_AT_KILL.max(TTL) + Duration::from_secs(2),
                "kill -9 of elect alone with the server unreachable",
            )),
            Fault::StopThenKill => {
                v.extend(dead_by_deadline(f, e, run, held, "the SIGSTOPped holder"))
            }
            Fault::DeleteLockFile | Fault::ReplaceLockFile if !held.done => {
                let (window, found) = lock_file_window(f, e, run, held, next);
                windows.extend(window);
                v.extend(found);
            }
            Fault::StopWatchdog => v.extend(dead_by_deadline(
                f,
                e,
                run,
                held,
                "the holder whose watchdog was SIGSTOPped",
            )),
            Fault::StopHolder if setup.backend.expires() => {
                v.extend(dead_by_deadline(f, e, run, held, "the SIGSTOPped holder"))
            }
            // Cut off, elect cannot renew: its own deadline stops the job, as for a SIGSTOP.
            Fault::Partition | Fault::PartitionReplies => {
                v.extend(dead_by_deadline(f, e, run, held, "the partitioned holder"))
            }
            Fault::PartitionHeals => {
                v.extend(dead_by_deadline(f, e, run, held, "the partitioned holder"));
                let taken_over = lives[li + 1..]
                    .iter()
                    .any(|l| l.connect < e.ended && l.run != Some(run));
                if !held.done && !taken_over {
                    v.push(format!(
                        "HEAL: no other host took over while the holder (run {run}) was cut off"
                    ));
                }
            }
            Fault::FreezeHost => {
                let (measured, found) = after_thaw(f, e, run, li);
                frozen.extend(measured);
                v.extend(found);
            }
            _ => {}
        }
    }
    PerFault {
        takeovers,
        windows,
        frozen,
        violations: v,
    }
}

/// A host frozen past the ttl, then thawed: how long its job ran on after the thaw, what it
/// wrote meanwhile, and how its elect ended. The job must be gone within the grace and the
/// watchdog's slack after the thaw, plus a second for a loaded machine to schedule the thawed
/// processes; that a write of it was accepted after a newer holder's is checked with every write.
fn after_thaw(f: &Facts, e: &Event, run: u64, li: usize) -> (Option<Frozen>, Option<String>) {
    let held = &f.record.lives[li];
    if held.done && held.close.is_some_and(|c| c <= e.ended) {
        return (None, None);
    }
    let Some(close) = held.close else {
        return (None, None);
    };
    let taken_over = f.record.lives[li + 1..]
        .iter()
        .any(|l| l.connect < e.ended && l.run != Some(run));
    let writes: Vec<_> = f
        .record
        .writes
        .iter()
        .filter(|w| w.life == li && w.at >= e.ended)
        .collect();
    let rec = f.runs.iter().find(|r| r.run == run);
    let measured = Frozen {
        taken_over,
        ran_after_thaw: close.saturating_duration_since(e.ended),
        writes_after_thaw: writes.len(),
        accepted_after_thaw: writes.iter().filter(|w| w.accepted).count(),
        code: rec.and_then(|r| r.status).and_then(|s| s.code()),
        line: rec
            .map(|r| {
                std::fs::read_to_string(&r.stderr)
                    .unwrap_or_default()
                    .lines()
                    .last()
                    .unwrap_or_default()
                    .to_owned()
            })
            .unwrap_or_default(),
    };
    let bound = GRACE + WATCHDOG_SLACK + Duration::from_secs(1);
    let violation = (measured.ran_after_thaw > bound).then(|| {
        format!(
            "THAW: the job of the frozen host (run {run}) ran {} ms after the thaw (bound: {} ms){}",
            ms(measured.ran_after_thaw),
            ms(bound),
            f.stderr_of(Some(run))
        )
    });
    (Some(measured), violation)
}

/// After kill -9 of the holder, the next job starts within ttl + 1 s.
fn takeover_after_kill(e: &Event, run: u64, held: &Life, next: Option<&Life>) -> Option<String> {
    let took = next?.connect.duration_since(e.at);
    (!held.done && took > TTL + Duration::from_secs(1)).then(|| {
        format!(
            "TAKEOVER after kill -9 of the holder (run {run}) took {} ms (bound: ttl + 1 s)",
            ms(took)
        )
    })
}

/// The next job starts within `bound` of the fault.
fn takeover_within(
    e: &Event,
    run: u64,
    held: &Life,
    next: Option<&Life>,
    bound: Duration,
    what: &str,
) -> Option<String> {
    let took = next?.connect.duration_since(e.at);
    (!held.done && took > bound).then(|| {
        format!(
            "TAKEOVER after {what} (run {run}) took {} ms (bound: {} ms)",
            ms(took),
            ms(bound)
        )
    })
}

/// The holder learns of a deleted or replaced lock file through inotify and stops its job; a
/// newcomer does not start while the old file's flock is held. Measures what is left of the
/// window.
fn lock_file_window(
    f: &Facts,
    e: &Event,
    run: u64,
    held: &Life,
    next: Option<&Life>,
) -> (Option<Window>, Option<String>) {
    let Some(close) = held.close else {
        return (None, None);
    };
    let stop = close.saturating_duration_since(e.at);
    let margin_ms = next.map_or(i128::MAX, |n| {
        if n.connect >= close {
            n.connect.duration_since(close).as_millis() as i128
        } else {
            -(close.duration_since(n.connect).as_millis() as i128)
        }
    });
    let violation = (stop > GRACE + LOCK_FILE_REACTION).then(|| {
        format!(
            "LOCK FILE: the job of run {run} ran on {} ms after its lock file was {} \
             (bound: grace {} ms + {} ms to notice){}",
            ms(stop),
            if e.fault == Fault::DeleteLockFile {
                "deleted"
            } else {
                "replaced"
            },
            ms(GRACE),
            ms(LOCK_FILE_REACTION),
            f.stderr_of(Some(run))
        )
    });
    (Some(Window { stop, margin_ms }), violation)
}

/// A holder stopped past the ttl (itself, or its watchdog before its lease was lost) has its job
/// dead by `stop + ttl`: elect enforces the lease deadline itself.
fn dead_by_deadline(f: &Facts, e: &Event, run: u64, held: &Life, who: &str) -> Option<String> {
    let c = held.close?;
    (c > e.at + TTL).then(|| {
        format!(
            "DEADLINE: the job of {who} (run {run}) lived {} ms after the stop (bound: ttl {} ms){}",
            ms(c.duration_since(e.at)),
            ms(TTL),
            f.stderr_of(Some(run))
        )
    })
}
