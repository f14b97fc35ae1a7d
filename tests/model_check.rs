//! The safety rule, model-checked: every interleaving of message delays, losses, stops and clock
//! drift within the bounds of [`bounds`], on the real lease math of `elect::timing`. The model is
//! in `tests/model/mod.rs`.
//!
//! `ELECT_MODEL_DEEP=1` (or `scripts/model-check.sh --deep`) checks three contenders.
//! `ELECT_MODEL_HORIZON=N` sets the horizon (in ticks), `ELECT_MODEL_ALL_RATES=1` checks every
//! combination of slow, exact and fast clocks, and `ELECT_MODEL_STATES=N` stops a check after
//! about N states.

mod model;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use elect::timing::LeaseTiming;
use model::{LeaseModel, Rate, Rule};
use stateright::{Checker, HasDiscoveries, Model};

const fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

fn deep() -> bool {
    std::env::var_os("ELECT_MODEL_DEEP").is_some_and(|v| v != "0")
}

/// ttl 1 s, renew 250 ms, grace 250 ms (margin 250 ms): the tightest settings `LeaseTiming`
/// accepts at this tick, so that a lease lives four ticks and the horizon fits several handovers.
fn bounds(rule: Rule) -> LeaseModel {
    let timing = LeaseTiming::new(ms(1000), Some(ms(250)), ms(250)).expect("valid settings");
    let contenders = if deep() { 3 } else { 2 };
    // A freeze, an expiry and a takeover fit in five ticks; the writes multiply the states.
    let mut horizon = if rule == Rule::FrozenHost { 5 } else { 7 };
    if let Some(h) = std::env::var("ELECT_MODEL_HORIZON")
        .ok()
        .and_then(|h| h.parse().ok())
    {
        horizon = h;
    }
    LeaseModel {
        timing,
        tick: ms(250),
        contenders,
        // A slow clock is the one that can make a job outlive its lease; ELECT_MODEL_ALL_RATES
        // adds every other combination (27 starting states with three contenders).
        rates: if std::env::var_os("ELECT_MODEL_ALL_RATES").is_some() {
            vec![Rate::Slow, Rate::Exact, Rate::Fast]
        } else {
            vec![Rate::Slow]
        },
        max_delay: 2,
        horizon,
        rule,
        writes: rule == Rule::FrozenHost,
    }
}

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

fn check_all(model: LeaseModel) -> (impl Checker<LeaseModel>, Duration) {
    let started = Instant::now();
    let mut builder = model.checker().threads(threads());
    if let Some(n) = std::env::var("ELECT_MODEL_STATES")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        builder = builder.target_state_count(n);
    }
    let checker = builder.spawn_bfs().join();
    (checker, started.elapsed())
}

fn report(name: &str, checker: &impl Checker<LeaseModel>, took: Duration) {
    let m = checker.model();
    eprintln!(
        "{name}: {} states ({} unique), depth {}, in {:.1}s; {} contenders, clocks {:?}, \
         delay up to {} ticks of {:?}, horizon {} ticks",
        checker.state_count(),
        checker.unique_state_count(),
        checker.max_depth(),
        took.as_secs_f64(),
        m.contenders,
        m.rates,
        m.max_delay,
        m.tick,
        m.horizon,
    );
}

/// Runs `rule` until `property` fails and returns the counterexample, rendered.
fn counterexample(rule: Rule, property: &'static str) -> String {
    let started = Instant::now();
    let checker = bounds(rule)
        .checker()
        .threads(threads())
        .finish_when(HasDiscoveries::AnyOf(BTreeSet::from([property])))
        .spawn_bfs()
        .join();
    report(&format!("{rule:?}"), &checker, started.elapsed());
    let path = checker
        .discovery(property)
        .unwrap_or_else(|| panic!("{rule:?}: no counterexample to \"{property}\""));
    let trace = checker.model().render(&path);
    eprintln!("{rule:?} breaks \"{property}\":\n{trace}");
    trace
}

#[test]
fn elect_rule_holds_in_every_interleaving() {
    let (checker, took) = check_all(bounds(Rule::Elect));
    report("elect's rule", &checker, took);
    for property in [
        model::ONE_JOB,
        model::TOKENS_INCREASE,
        model::START_UNDER_LEASE,
    ] {
        if let Some(path) = checker.discovery(property) {
            panic!("\"{property}\" fails:\n{}", checker.model().render(&path));
        }
    }
    // The bounds reach what matters: a handover, and a job on a renewed lease.
    for example in [model::HANDOVER, model::RENEWED] {
        let path = checker
            .discovery(example)
            .unwrap_or_else(|| panic!("the bounds never reach \"{example}\""));
        eprintln!("{example}:\n{}", checker.model().render(&path));
    }
}

#[test]
fn mutant_deadline_from_receive_time_is_caught() {
    let trace = counterexample(Rule::DeadlineFromReceive, model::ONE_JOB);
    assert!(trace.contains("2 JOBS ALIVE"), "{trace}");
}

#[test]
fn mutant_without_drift_margin_is_caught() {
    let trace = counterexample(Rule::NoDriftMargin, model::ONE_JOB);
    assert!(
        trace.contains("Slow"),
        "only a slow clock can overrun: {trace}"
    );
}

#[test]
fn mutant_kill_after_deadline_is_caught() {
    counterexample(Rule::KillAfterDeadline, model::ONE_JOB);
}

/// A frozen host stops the watchdog too: two jobs can be alive, and a resource without fencing
/// takes a stale write. The fenced register refuses every one of them, in every interleaving.
#[test]
fn frozen_host_is_caught_and_fencing_holds() {
    let (checker, took) = check_all(bounds(Rule::FrozenHost));
    report("frozen host", &checker, took);
    for property in [model::ONE_JOB, model::UNFENCED_NO_STALE_WRITE] {
        let path = checker
            .discovery(property)
            .unwrap_or_else(|| panic!("frozen host: no counterexample to \"{property}\""));
        eprintln!(
            "frozen host breaks \"{property}\":\n{}",
            checker.model().render(&path)
        );
    }
    for property in [
        model::FENCED_NO_STALE_WRITE,
        model::TOKENS_INCREASE,
        model::START_UNDER_LEASE,
    ] {
        if let Some(path) = checker.discovery(property) {
            panic!(
                "frozen host: \"{property}\" fails:\n{}",
                checker.model().render(&path)
            );
        }
    }
}
