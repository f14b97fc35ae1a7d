//! The row of the table for one test: printed for a reader, and as a `FAULTS|` line that
//! `scripts/faults.sh` aggregates.

use std::time::Duration;

/// The row of the table for one test.
#[derive(Debug, Clone)]
pub struct Row {
    pub scenario: String,
    pub backend: String,
    pub runs: usize,
    pub handovers: usize,
    pub overlaps: Overlaps,
    pub takeovers: Vec<Duration>,
    pub monotonic: bool,
    /// The fenced register's count.
    pub fenced: Fenced,
    /// How the row's faults are made (signals, the proxy, nftables in namespaces, the freezer).
    pub mechanism: String,
    pub violations: Vec<String>,
    /// For a lock file deleted or replaced under a job: how long the old job ran on after the
    /// fault, and the margin between its end and the next job's start, one pair per fault.
    pub windows: Vec<Window>,
    /// For a frozen host: what happened after each thaw.
    pub frozen: Vec<Frozen>,
}

/// Jobs that started while another ran.
#[derive(Debug, Clone, Default)]
pub struct Overlaps {
    /// Against the promise: each is a violation.
    pub violations: usize,
    /// Beside a job frozen with its host, whose lease had expired: outside the promise.
    pub frozen: usize,
    /// How long each of those lasted: from the newcomer's start to the stale job's end.
    pub frozen_windows: Vec<Duration>,
}

/// What the fenced register saw.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fenced {
    pub accepted: usize,
    /// Writes with a token lower than the highest accepted: a stale holder's, stopped by the fence.
    pub refused: usize,
    /// Writes accepted after a later holder's: what fencing exists to prevent.
    pub stale: usize,
}

/// A host frozen past the ttl, after its thaw.
#[derive(Debug, Clone)]
pub struct Frozen {
    /// Whether another contender's job started while the host was frozen.
    pub taken_over: bool,
    /// From the thaw to the end of the stale job.
    pub ran_after_thaw: Duration,
    /// The stale job's writes to the fenced register after the thaw, and how many were accepted.
    pub writes_after_thaw: usize,
    pub accepted_after_thaw: usize,
    /// elect's exit code, and the last line it wrote on stderr.
    pub code: Option<i32>,
    pub line: String,
}

/// What remains of the window after a lock file was deleted or replaced.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// From the fault to the end of the old holder's job: how long it ran without a lock file.
    pub stop: Duration,
    /// From the end of the old job to the start of the next one, in ms; negative is an overlap.
    pub margin_ms: i128,
}

impl Row {
    pub fn print(&self) {
        let mut sorted = self.takeovers.clone();
        sorted.sort();
        let max = sorted
            .last()
            .map_or("-".into(), |d| d.as_millis().to_string());
        let median = if sorted.is_empty() {
            "-".into()
        } else {
            sorted[sorted.len() / 2].as_millis().to_string()
        };
        println!(
            "\n{:<22} {:<9} {:<14} {:>5} {:>9} {:>8} {:>12} {:>15} {:>9} {:>7} {:>5} {:>10}",
            "scenario",
            "backend",
            "mechanism",
            "runs",
            "handovers",
            "overlaps",
            "max takeover",
            "median takeover",
            "monotonic",
            "refused",
            "stale",
            "violations"
        );
        println!(
            "{:<22} {:<9} {:<14} {:>5} {:>9} {:>8} {:>10}ms {:>13}ms {:>9} {:>7} {:>5} {:>10}",
            self.scenario,
            self.backend,
            self.mechanism,
            self.runs,
            self.handovers,
            self.overlaps.violations,
            max,
            median,
            if self.monotonic { "yes" } else { "no" },
            self.fenced.refused,
            self.fenced.stale,
            self.violations.len()
        );
        let takeovers: Vec<String> = self
            .takeovers
            .iter()
            .map(|d| d.as_millis().to_string())
            .collect();
        let frozen_window = self
            .overlaps
            .frozen_windows
            .iter()
            .max()
            .copied()
            .unwrap_or_default();
        // New fields go at the end: scripts/faults.sh reads them by position.
        println!(
            "FAULTS|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}",
            self.scenario,
            self.backend,
            self.runs,
            self.handovers,
            self.overlaps.violations,
            if self.monotonic { "yes" } else { "no" },
            self.violations.len(),
            takeovers.join(","),
            self.fenced.refused,
            self.fenced.stale,
            self.mechanism,
            self.overlaps.frozen,
            frozen_window.as_millis()
        );
        if self.overlaps.frozen > 0 {
            println!(
                "{} job(s) started beside a job frozen with its host (outside the promise: only the \
                 fencing token protects there); the longest such overlap lasted {} ms",
                self.overlaps.frozen,
                frozen_window.as_millis()
            );
        }
        for z in &self.frozen {
            println!(
                "host frozen past the ttl{}: the stale job ran {} ms after the thaw, wrote {} time(s) \
                 ({} accepted); elect exited {:?}: {}",
                if z.taken_over { ", taken over" } else { "" },
                z.ran_after_thaw.as_millis(),
                z.writes_after_thaw,
                z.accepted_after_thaw,
                z.code,
                z.line
            );
            println!(
                "FROZEN|{}|{}|{}|{}|{}|{}|{}|{}",
                self.scenario,
                self.backend,
                if z.taken_over { "yes" } else { "no" },
                z.ran_after_thaw.as_millis(),
                z.writes_after_thaw,
                z.accepted_after_thaw,
                z.code.map_or("-".into(), |c| c.to_string()),
                z.line
            );
        }
        if !self.windows.is_empty() {
            let stop = self
                .windows
                .iter()
                .map(|w| w.stop)
                .max()
                .unwrap_or_default();
            let margin = self
                .windows
                .iter()
                .map(|w| w.margin_ms)
                .min()
                .unwrap_or_default();
            println!(
                "lock file changed under a job {} time(s): the old job ran on for at most {} ms; \
                 the next job started at least {margin} ms after it ended (negative: overlap)",
                self.windows.len(),
                stop.as_millis()
            );
            println!(
                "WINDOW|{}|{}|{}|{}|{margin}",
                self.scenario,
                self.backend,
                self.windows.len(),
                stop.as_millis()
            );
        }
    }
}
