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
    pub overlaps: usize,
    pub takeovers: Vec<Duration>,
    pub monotonic: bool,
    pub violations: Vec<String>,
    /// For a lock file deleted or replaced under a job: how long the old job ran on after the
    /// fault, and the margin between its end and the next job's start, one pair per fault.
    pub windows: Vec<Window>,
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
            "\n{:<22} {:<9} {:>5} {:>9} {:>8} {:>12} {:>15} {:>9} {:>10}",
            "scenario",
            "backend",
            "runs",
            "handovers",
            "overlaps",
            "max takeover",
            "median takeover",
            "monotonic",
            "violations"
        );
        println!(
            "{:<22} {:<9} {:>5} {:>9} {:>8} {:>10}ms {:>13}ms {:>9} {:>10}",
            self.scenario,
            self.backend,
            self.runs,
            self.handovers,
            self.overlaps,
            max,
            median,
            if self.monotonic { "yes" } else { "no" },
            self.violations.len()
        );
        let takeovers: Vec<String> = self
            .takeovers
            .iter()
            .map(|d| d.as_millis().to_string())
            .collect();
        println!(
            "FAULTS|{}|{}|{}|{}|{}|{}|{}|{}",
            self.scenario,
            self.backend,
            self.runs,
            self.handovers,
            self.overlaps,
            if self.monotonic { "yes" } else { "no" },
            self.violations.len(),
            takeovers.join(",")
        );
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
