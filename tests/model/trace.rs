//! A counterexample as a reader wants it: one line per step, in server time, with what changed.

use std::fmt::Write;

use elect::clock::BootTime;
use stateright::Path;

use super::{Action, Body, Contender, Elect, LeaseModel, Rate, State, Tick, BOOT_OFFSET};

impl LeaseModel {
    /// Server seconds at tick `t`.
    fn secs(&self, t: Tick) -> String {
        format!("{:.3}s", self.tick.as_secs_f64() * t as f64)
    }

    /// A boot time of contender `c`, shown as the server time at which its clock reads it.
    fn on_server(&self, c: usize, rate: Rate, at: BootTime) -> String {
        let nanos = at.as_nanos() - BOOT_OFFSET * (c as u64 + 1);
        let server = match rate {
            Rate::Slow => nanos as f64 * 50.0 / 49.0,
            Rate::Exact => nanos as f64,
            Rate::Fast => nanos as f64 * 50.0 / 51.0,
        };
        format!("{:.3}s", server / 1e9)
    }

    /// Renders a path of the checker, one step a line.
    pub fn render(&self, path: &Path<State, Action>) -> String {
        let steps = path.clone().into_vec();
        let mut out = String::new();
        let first = &steps[0].0;
        let rates: Vec<String> = first
            .contenders
            .iter()
            .enumerate()
            .map(|(i, c)| format!("c{i} {:?}", c.rate))
            .collect();
        let _ = writeln!(
            out,
            "rule {:?}; {:?}, margin {:?}; clocks: {}; server time in ticks of {:?} \
             (a watchdog acts at the first tick at or after its instant)",
            self.rule,
            self.timing,
            self.timing.margin(),
            rates.join(", "),
            self.tick,
        );
        for pair in steps.windows(2) {
            let (before, Some(action)) = &pair[0] else {
                continue;
            };
            let after = &pair[1].0;
            let mut line = self.describe(before, *action);
            self.changes(before, after, &mut line);
            if !line.is_empty() {
                let _ = writeln!(out, "  t={:>7}  {line}", self.secs(after.now));
            }
        }
        let alive: Vec<String> = steps
            .last()
            .unwrap()
            .0
            .contenders
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.job.as_ref().map(|j| format!("c{i} (token {})", j.token)))
            .collect();
        let _ = writeln!(out, "  end: jobs alive: {}", alive.join(", "));
        out
    }

    fn describe(&self, s: &State, action: Action) -> String {
        match action {
            Action::Tick => String::new(),
            Action::Freeze(c) => format!("host of c{c} freezes (elect, watchdog and job)"),
            Action::Thaw(c) => format!("host of c{c} thaws"),
            Action::SendAcquire(c) => format!("elect c{c} sends acquire"),
            Action::AbandonAcquire(c) => format!("elect c{c} stops waiting for its acquire"),
            Action::SendRenew(c) => format!("elect c{c} sends renew"),
            Action::RenewTimeout(c) => format!("elect c{c}: renew timed out"),
            Action::GiveUp(c) => format!("elect c{c}: D - grace passed without renew, lease lost"),
            Action::Write(c) => {
                let token = s.contenders[c as usize].job.as_ref().map_or(0, |j| j.token);
                let verdict = if token < s.fenced.high {
                    "refuses it"
                } else {
                    "accepts it"
                };
                format!("job of c{c} writes with token {token}: the fenced register {verdict}")
            }
            Action::Deliver(i) => {
                let m = s.net[i as usize];
                let c = m.contender;
                let sent = self.secs(m.sent);
                match m.body {
                    Body::Acquire => format!("server gets c{c}'s acquire (sent t={sent})"),
                    Body::Renew { token } => {
                        format!("server gets c{c}'s renew of token {token} (sent t={sent})")
                    }
                    Body::Granted { token, .. } => {
                        format!("elect c{c} reads: granted, token {token} (request sent t={sent})")
                    }
                    Body::Busy => format!("elect c{c} reads: busy"),
                    Body::Renewed => format!("elect c{c} reads: renewed (request sent t={sent})"),
                    Body::Lost => format!("elect c{c} reads: lease lost"),
                }
            }
        }
    }

    fn changes(&self, before: &State, after: &State, line: &mut String) {
        let mut note = |text: String| {
            if !line.is_empty() {
                line.push_str("; ");
            }
            line.push_str(&text);
        };
        if after.now > before.now && after.net.len() < before.net.len() {
            note(format!(
                "{} message(s) lost",
                before.net.len() - after.net.len()
            ));
        }
        match (&before.server.lease, &after.server.lease) {
            (_, Some(g)) if before.server.lease.map(|b| b.seq) != Some(g.seq) => note(format!(
                "server grants c{} token {}, valid until t={:.3}s",
                g.holder,
                g.token,
                g.expires as f64 / 1e9
            )),
            (Some(b), Some(g)) if b.expires != g.expires => note(format!(
                "server extends to t={:.3}s",
                g.expires as f64 / 1e9
            )),
            _ => {}
        }
        for (i, (b, a)) in before.contenders.iter().zip(&after.contenders).enumerate() {
            self.contender_changes(i, b, a, &mut note);
        }
        if after.fenced.stale_accepted && !before.fenced.stale_accepted {
            note("** the fenced register accepts a stale write **".into());
        }
        if after.unfenced.stale_accepted && !before.unfenced.stale_accepted {
            note("** the unfenced register accepts a stale write **".into());
        }
        let alive = after.contenders.iter().filter(|c| c.job.is_some()).count();
        if alive > 1 {
            note(format!("** {alive} JOBS ALIVE **"));
        }
    }

    fn contender_changes(
        &self,
        i: usize,
        b: &Contender,
        a: &Contender,
        note: &mut impl FnMut(String),
    ) {
        match (&b.job, &a.job) {
            (None, Some(j)) => note(format!(
                "job of c{i} starts with token {}, D at t={}",
                j.token,
                self.on_server(i, a.rate, j.deadline)
            )),
            (Some(_), None) => note(format!("watchdog of c{i}: KILL, job dead")),
            (Some(x), Some(y)) if !x.termed && y.termed => {
                note(format!("watchdog of c{i}: TERM (job still running)"))
            }
            (Some(x), Some(y)) if x.deadline != y.deadline => note(format!(
                "watchdog of c{i} gets D at t={}",
                self.on_server(i, a.rate, y.deadline)
            )),
            _ => {}
        }
        if let (Elect::Holding(h), Elect::Holding(_) | Elect::Acquiring { .. }) =
            (&a.elect, &b.elect)
        {
            if !h.started && matches!(b.elect, Elect::Acquiring { .. }) {
                note(format!(
                    "elect c{i}: too little time left to start, renews first"
                ));
            }
        }
    }
}
