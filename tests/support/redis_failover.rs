//! Witness-checked contenders on a Redis topology while the harness forces a failover.
//!
//! A few contenders loop `elect run --lock LOCK --wait=10s -- perl WITNESS_JOB` (a 300 ms job)
//! on one lock; after a while the harness runs the fault (a `SENTINEL FAILOVER`, a `kill -9` of
//! the primary, ...), the contenders go on for a while, then stop. The witness
//! (`tests/support/witness.rs`) sees every job's lifetime from the kernel's side, so an overlap
//! is proven, not inferred. [`Round`] carries what a test asserts and what the fault table and
//! the figures report.
//!
//! The binary's `mod support` block declares the `battery`, `env` and `witness` modules beside
//! this one.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::witness::{Record, Witness, JOB};

/// The witness job's exit code when it ran to its end.
pub const JOB_CODE: i32 = 42;

/// One run of one contender.
#[derive(Debug, Clone)]
pub struct Run {
    pub code: Option<i32>,
    pub started: Instant,
    pub stderr: String,
}

/// What a round saw.
#[derive(Debug)]
pub struct Round {
    pub runs: Vec<Run>,
    pub record: Record,
    /// When the fault began, and how long the harness saw it take (to a new primary that
    /// answers as one).
    pub fault_at: Instant,
    pub fault_took: Duration,
}

impl Round {
    /// Runs whose job ran to its end (the lease held throughout).
    pub fn completed(&self) -> usize {
        self.runs
            .iter()
            .filter(|r| r.code == Some(JOB_CODE))
            .count()
    }

    /// Runs that started after the fault was over and completed: new runs follow the new
    /// primary without any change of configuration.
    pub fn completed_after_fault(&self) -> usize {
        let over = self.fault_at + self.fault_took;
        self.runs
            .iter()
            .filter(|r| r.started >= over && r.code == Some(JOB_CODE))
            .count()
    }

    /// The longest time without a job running, from the fault on: the takeover time.
    pub fn longest_gap_after_fault(&self) -> Duration {
        let mut lives: Vec<(Instant, Instant)> = self
            .record
            .lives
            .iter()
            .filter_map(|l| Some((l.connect, l.close?)))
            .collect();
        lives.sort();
        let mut longest = Duration::ZERO;
        let mut covered = self.fault_at;
        for (start, end) in lives {
            if end < self.fault_at {
                continue;
            }
            if start > covered {
                longest = longest.max(start - covered);
            }
            covered = covered.max(end);
        }
        longest
    }

    /// Exit codes other than a completed job, 69 (backend unavailable during the failover),
    /// 75 (the bounded wait ran out) and 76 (lease lost): a panic or anything unexplained.
    pub fn unexpected(&self) -> Vec<&Run> {
        self.runs
            .iter()
            .filter(|r| {
                !matches!(r.code, Some(JOB_CODE | 69 | 75 | 76)) || r.stderr.contains("panicked")
            })
            .collect()
    }

    /// Counts by exit code, for the report.
    pub fn codes(&self) -> String {
        let mut counts = std::collections::BTreeMap::new();
        for r in &self.runs {
            *counts.entry(r.code.unwrap_or(-1)).or_insert(0) += 1;
        }
        counts
            .iter()
            .map(|(code, n)| format!("{code}:{n}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The first error line of each failing exit code, for a failed assertion.
    pub fn errors(&self) -> String {
        let mut seen = std::collections::BTreeMap::new();
        for r in self.runs.iter().filter(|r| r.code != Some(JOB_CODE)) {
            seen.entry(r.code.unwrap_or(-1))
                .or_insert_with(|| r.stderr.lines().next().unwrap_or_default().to_owned());
        }
        seen.iter()
            .map(|(code, line)| format!("{code}: {line}"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Whether fencing tokens strictly increase in the order the jobs started.
    pub fn monotonic(&self) -> bool {
        let mut lives: Vec<_> = self.record.lives.iter().collect();
        lives.sort_by_key(|l| l.connect);
        lives
            .windows(2)
            .all(|w| matches!((w[0].token, w[1].token), (Some(a), Some(b)) if a < b))
    }

    /// The `FAULTS|` line that `scripts/faults.sh` adds to its table: scenario, backend, runs,
    /// handovers (jobs that ran to their end), overlaps, tokens monotonic, violations (exit
    /// codes that are not explained, and overlaps where acknowledgement was on), and the
    /// takeover: the longest time without a job from the fault on.
    pub fn fault_row(&self, scenario: &str, backend: &str, acknowledged: bool) -> String {
        let violations = self.unexpected().len()
            + if acknowledged {
                self.record.overlaps.len()
            } else {
                0
            };
        format!(
            "FAULTS|{scenario}|{backend}|{}|{}|{}|{}|{violations}|{}",
            self.runs.len(),
            self.completed(),
            self.record.overlaps.len(),
            if self.monotonic() { "yes" } else { "no" },
            self.longest_gap_after_fault().as_millis()
        )
    }

    /// One line for the fault table.
    pub fn summary(&self, what: &str) -> String {
        format!(
            "{what}: runs {} (exit codes {}), overlaps {}, failover {} ms, longest gap after it {} ms, completed after it {}",
            self.runs.len(),
            self.codes(),
            self.record.overlaps.len(),
            self.fault_took.as_millis(),
            self.longest_gap_after_fault().as_millis(),
            self.completed_after_fault(),
        )
    }
}

/// Runs `contenders` looping on `lock` through `url`, `fault` after `before`, for `after` more.
pub fn contend(
    url: &str,
    lock: &str,
    contenders: usize,
    before: Duration,
    after: Duration,
    fault: impl FnOnce() -> Duration,
) -> Round {
    let dir = tempfile::tempdir().expect("temporary directory");
    let job = dir.path().join("job.pl");
    std::fs::write(&job, JOB).expect("write the witness job");
    let witness = Arc::new(Witness::start(&dir.path().join("w.sock")));
    let stop = Arc::new(AtomicBool::new(false));
    let next_run = Arc::new(AtomicU64::new(1));
    let runs = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..contenders)
        .map(|c| {
            let (url, lock, job) = (url.to_owned(), lock.to_owned(), job.clone());
            let (witness, stop, next_run, runs) = (
                Arc::clone(&witness),
                Arc::clone(&stop),
                Arc::clone(&next_run),
                Arc::clone(&runs),
            );
            let probe = dir.path().join("probe");
            let out_dir = dir.path().to_owned();
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let id = next_run.fetch_add(1, Ordering::SeqCst);
                    let stderr_path = out_dir.join(format!("run-{id}.err"));
                    let started = Instant::now();
                    let mut child = Command::new(env!("CARGO_BIN_EXE_elect"))
                        .args(["run", "--lock", &lock, "--id"])
                        .arg(format!("contender-{c}"))
                        .args([
                            "--ttl",
                            "3s",
                            "--grace",
                            "500ms",
                            "--wait=10s",
                            "--",
                            "perl",
                        ])
                        .arg(&job)
                        .env_remove("ELECT_REDIS_PASSWORD")
                        .env("ELECT_BACKEND", &url)
                        .env("FAULT_WITNESS", witness.path())
                        .env("FAULT_PROBE", &probe)
                        .env("FAULT_RUN", id.to_string())
                        .env("FAULT_WORK_MS", "300")
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
                        .spawn()
                        .expect("start elect");
                    witness.watch(id, child.id() as i32);
                    let deadline = Instant::now() + Duration::from_secs(40);
                    let status = loop {
                        if let Some(status) = child.try_wait().expect("wait for elect") {
                            break Some(status);
                        }
                        if Instant::now() > deadline {
                            let _ = child.kill();
                            let _ = child.wait();
                            break None;
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    };
                    let failed = status.and_then(|s| s.code()) != Some(JOB_CODE);
                    runs.lock().unwrap().push(Run {
                        code: status.and_then(|s| s.code()),
                        started,
                        stderr: std::fs::read_to_string(&stderr_path).unwrap_or_default(),
                    });
                    if failed {
                        // As a supervisor would pause before a retry: no busy loop while the
                        // primary is away.
                        std::thread::sleep(Duration::from_millis(250));
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(before);
    let fault_at = Instant::now();
    let fault_took = fault();
    std::thread::sleep(after);
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().expect("a contender thread panicked");
    }
    // Let the witness see the last closes.
    std::thread::sleep(Duration::from_millis(200));
    let runs = std::mem::take(&mut *runs.lock().unwrap());
    Round {
        runs,
        record: witness.snapshot(),
        fault_at,
        fault_took,
    }
}

/// A battery scenario by name.
pub type Scenario = (&'static str, fn(&super::env::TestEnv));

/// The battery's scenarios that talk to the backend (the job-process ones run on standalone Redis
/// only): what every topology runs.
pub fn backend_scenarios() -> Vec<Scenario> {
    use super::battery;
    macro_rules! scenarios {
        ($($scenario:ident),* $(,)?) => {
            vec![$((stringify!($scenario), battery::$scenario as fn(&super::env::TestEnv))),*]
        };
    }
    scenarios!(
        five_concurrent_runs_run_the_job_once,
        conflict_exit_code_zero_skips_silently,
        wait_runs_the_job_after_the_holder,
        bounded_wait_gives_up_with_75,
        job_environment,
        fencing_token_increases,
        status_of_one_lock,
        status_lists_every_lock,
        sigterm_stops_a_wait,
        forced_release_frees_a_dead_holders_lease,
        release_records_the_last_run,
        once_per_runs_once_across_skewed_contenders,
        a_lost_lease_records_no_history,
        holders_admit_n_at_once,
        holders_wait_for_a_free_place,
        holders_never_exceed_n,
        holders_a_killed_holder_frees_its_place,
        once_per_failed_run_leaves_no_marker,
        job_dies_when_elect_is_killed,
        job_is_stopped_when_the_watchdog_is_killed,
    )
}

/// Runs every scenario on a few threads at once, each in a `TestEnv` of its own on `url`, and
/// panics listing every scenario that failed.
pub fn battery_on(url: &str, scenarios: &[Scenario], threads: usize) {
    let queue = Mutex::new(scenarios.iter());
    let failed = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let Some((name, scenario)) = queue.lock().unwrap().next() else {
                    return;
                };
                let env = super::env::TestEnv::with_backend(url);
                let result =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| scenario(&env)));
                if let Err(e) = result {
                    let why = e
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                        .unwrap_or_default();
                    failed.lock().unwrap().push(format!("{name}: {why}"));
                }
            });
        }
    });
    let failed = failed.into_inner().unwrap();
    assert!(
        failed.is_empty(),
        "battery scenarios failed:\n{}",
        failed.join("\n\n")
    );
}
