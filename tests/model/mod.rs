//! A bounded model of the lease rule, checked exhaustively with stateright.
//!
//! # What is modelled
//! - A lease **server** that judges expiry by its own clock (server time is the model's time,
//!   counted in ticks), grants a lease when none is valid, renews only the valid lease with the
//!   same token, and hands out fencing tokens from a counter.
//! - Two or three **contenders**, each an elect process with its own CLOCK_BOOTTIME. A contender's
//!   clock runs at the server's rate times `1 - 1/50`, `1` or `1 + 1/50` (the `ttl / 50` in
//!   `LeaseTiming::margin` is the drift that elect covers), from an offset of its own, so no
//!   agreement between clocks is assumed. A constant extreme rate is the worst case for safety:
//!   what decides whether a job outlives its lease is how much server time passes while the
//!   holder's clock counts `ttl - margin`, and that is largest when the clock runs slow all along.
//! - **Messages** (acquire, renew and their replies) are delivered after any delay up to
//!   `max_delay` ticks, in any order, or never.
//! - **elect** may be stopped (SIGSTOP) at any step, for any time. Every step of elect (send,
//!   read a reply, renew when due, retry, give up at `D - grace`) may happen at any time from when
//!   it is enabled, or never: that is exactly what stopping elect at any step does, so there is no
//!   stop flag (which would only double the states without adding a behaviour), and a slow or
//!   starved elect is covered too. [`Rule::FrozenHost`] adds the flag back, as a freeze of the
//!   whole host, to show what happens when the watchdog stops too.
//! - The **watchdog** of each contender, not stopped with elect, sends TERM at `D - grace` and KILL
//!   at `D`, measured on its contender's clock; the job is dead at KILL. It acts when server time
//!   reaches the first tick at or after that instant, which is never earlier than the real one.
//!
//! Every deadline, renew time, retry time, attempt timeout and start check is computed by
//! `elect::timing::LeaseTiming` on `BootTime` values: the model holds no copy of the lease math.
//!
//! # What is checked
//! See [`LeaseModel::properties`]. The mutants in [`Rule`] break the rule in the ways a reader
//! might get it wrong, and each must produce a counterexample.

pub mod trace;

use std::time::Duration;

use elect::clock::BootTime;
use elect::timing::LeaseTiming;
use stateright::{Model, Property};

/// Server time, in ticks of [`LeaseModel::tick`].
pub type Tick = u16;

/// The rate of a contender's clock against the server's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rate {
    /// `1 - 1/50`: this contender's deadlines come late in server time.
    Slow,
    Exact,
    /// `1 + 1/50`.
    Fast,
}

impl Rate {
    fn scale(self, nanos: u64) -> u64 {
        match self {
            Rate::Slow => nanos * 49 / 50,
            Rate::Exact => nanos,
            Rate::Fast => nanos * 51 / 50,
        }
    }
}

/// The rule the model runs: elect's, or a mutant of it that the checker must catch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// elect's rule, as in `timing.rs`.
    Elect,
    /// The deadline counted from when the reply arrived, not from when the request was sent.
    DeadlineFromReceive,
    /// `D = s + ttl`: no margin for clock drift.
    NoDriftMargin,
    /// SIGTERM at `D`, SIGKILL a grace later: the job outlives its deadline.
    KillAfterDeadline,
    /// A stop freezes the whole host: elect, its watchdog and the job.
    FrozenHost,
}

/// The bounds and settings of one check.
#[derive(Clone, Debug)]
pub struct LeaseModel {
    pub timing: LeaseTiming,
    /// The length of one tick of server time.
    pub tick: Duration,
    pub contenders: usize,
    /// The clock rates each contender may have; every combination is checked.
    pub rates: Vec<Rate>,
    /// The longest a message may travel, in ticks.
    pub max_delay: Tick,
    /// Server time stops here.
    pub horizon: Tick,
    pub rule: Rule,
    /// Whether jobs write to the two downstream registers (fenced and unfenced).
    pub writes: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct State {
    pub now: Tick,
    pub server: Server,
    pub contenders: Vec<Contender>,
    /// Messages in flight, kept sorted so that the order of sending does not make new states.
    pub net: Vec<Msg>,
    /// A downstream register that refuses tokens lower than the highest it has accepted.
    pub fenced: Register,
    /// The same register without the check.
    pub unfenced: Register,
    pub ghost: Ghost,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Server {
    pub lease: Option<Grant>,
    pub next_token: u64,
    /// How many leases were granted: the ground truth of who is older than whom, kept apart from
    /// the tokens so that the fencing check does not assume what it checks.
    pub grants: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Grant {
    pub holder: u8,
    pub token: u64,
    pub seq: u8,
    /// Server time, in nanoseconds, from which the lease is no longer valid.
    pub expires: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Contender {
    pub rate: Rate,
    /// The host is frozen: elect, watchdog and job (only with [`Rule::FrozenHost`]).
    pub frozen: bool,
    pub elect: Elect,
    /// The job, as its watchdog sees it; `None` once dead (or before it starts).
    pub job: Option<Job>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Elect {
    Idle,
    /// An acquire sent at this tick awaits its reply.
    Acquiring {
        sent: Tick,
    },
    Holding(Hold),
    /// The lease is lost; elect waits for the job to die.
    Stopping,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Hold {
    pub token: u64,
    pub seq: u8,
    /// `D`, on this contender's clock.
    pub deadline: BootTime,
    /// When the next renew is due, on this contender's clock.
    pub next: BootTime,
    /// The send tick of the renew that awaits its reply.
    pub renewing: Option<Tick>,
    /// Whether the job was started (a slow acquire renews once more before starting it).
    pub started: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Job {
    pub token: u64,
    /// Which grant the job runs under (a ghost: the job knows only its token).
    pub seq: u8,
    /// The deadline the watchdog holds, on its contender's clock.
    pub deadline: BootTime,
    /// elect's order to stop the job now: KILL at this instant (if before `D`).
    pub stop_by: Option<BootTime>,
    pub termed: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Msg {
    pub deliver_by: Tick,
    pub contender: u8,
    /// The send tick of the request; a reply carries its request's, so elect can match it.
    pub sent: Tick,
    pub body: Body,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Body {
    Acquire,
    Renew { token: u64 },
    Granted { token: u64, seq: u8 },
    Busy,
    Renewed,
    Lost,
}

impl Body {
    fn to_server(self) -> bool {
        matches!(self, Body::Acquire | Body::Renew { .. })
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Register {
    /// The highest token whose write was accepted.
    pub high: u64,
    /// The newest grant whose job's write was accepted.
    pub newest: u8,
    /// A write was accepted from a holder older than one whose write was accepted before.
    pub stale_accepted: bool,
}

/// Facts about the history that the properties need and the state would otherwise forget.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ghost {
    pub last_token: u64,
    pub token_not_increasing: bool,
    pub started_without_lease: bool,
    pub jobs_started: u8,
    /// Some renew succeeded.
    pub renewed: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Server time advances one tick; late messages are lost; watchdogs act.
    Tick,
    /// The whole host of a contender freezes (a paused VM), or thaws.
    Freeze(u8),
    Thaw(u8),
    SendAcquire(u8),
    /// elect gives up waiting for the reply to its acquire.
    AbandonAcquire(u8),
    SendRenew(u8),
    /// A renew attempt times out after `attempt_timeout`; the next is due after `retry_interval`.
    RenewTimeout(u8),
    /// `D - grace` came without a renew: elect declares the lease lost.
    GiveUp(u8),
    /// The message at this index of `net` arrives.
    Deliver(u8),
    /// The job writes to the downstream registers with its fencing token.
    Write(u8),
}

/// Boot times start far from zero, and differ between contenders.
const BOOT_OFFSET: u64 = 1_000_000_000_000;

impl LeaseModel {
    fn tick_nanos(&self) -> u64 {
        self.tick.as_nanos() as u64
    }

    fn server_nanos(&self, t: Tick) -> u64 {
        t as u64 * self.tick_nanos()
    }

    /// Contender `c`'s CLOCK_BOOTTIME at server tick `t`.
    pub fn local(&self, c: usize, rate: Rate, t: Tick) -> BootTime {
        BootTime::from_nanos(BOOT_OFFSET * (c as u64 + 1) + rate.scale(self.server_nanos(t)))
    }

    fn now_at(&self, s: &State, c: usize) -> BootTime {
        self.local(c, s.contenders[c].rate, s.now)
    }

    /// `D` for a lease whose request was sent at tick `sent` and answered at tick `now`.
    fn deadline(&self, c: usize, rate: Rate, sent: Tick, now: Tick) -> BootTime {
        let t = &self.timing;
        match self.rule {
            Rule::DeadlineFromReceive => t.deadline(self.local(c, rate, now)),
            Rule::NoDriftMargin => t.deadline(self.local(c, rate, sent)) + t.margin(),
            _ => t.deadline(self.local(c, rate, sent)),
        }
    }

    /// When the watchdog kills a job with deadline `d`.
    fn kill_at(&self, job: &Job) -> BootTime {
        let at = match self.rule {
            Rule::KillAfterDeadline => job.deadline + self.timing.grace(),
            _ => job.deadline,
        };
        job.stop_by.map_or(at, |stop| stop.min(at))
    }

    fn send(&self, s: &mut State, contender: usize, sent: Tick, body: Body) {
        s.net.push(Msg {
            deliver_by: s.now + self.max_delay,
            contender: contender as u8,
            sent,
            body,
        });
        // Identical messages (same sender, tick and body) are one: the server answers them alike.
        s.net.sort_unstable();
        s.net.dedup();
    }

    fn tick(&self, s: &mut State) {
        s.now += 1;
        let now = s.now;
        s.net.retain(|m| m.deliver_by >= now);
        for c in 0..s.contenders.len() {
            let local = self.now_at(s, c);
            let con = &s.contenders[c];
            if con.frozen {
                continue;
            }
            let Some(job) = &con.job else { continue };
            if local >= self.kill_at(job) {
                s.contenders[c].job = None;
            } else if local >= self.timing.term_at(job.deadline) {
                s.contenders[c].job.as_mut().unwrap().termed = true;
            }
        }
    }

    /// The server handles a request.
    fn serve(&self, s: &mut State, m: Msg) {
        let now = self.server_nanos(s.now);
        let valid = s.server.lease.filter(|g| now < g.expires);
        let reply = match m.body {
            Body::Acquire if valid.is_none() => {
                let token = s.server.next_token;
                s.server.next_token += 1;
                if token <= s.ghost.last_token {
                    s.ghost.token_not_increasing = true;
                }
                s.ghost.last_token = token;
                s.server.grants += 1;
                let seq = s.server.grants;
                s.server.lease = Some(Grant {
                    holder: m.contender,
                    token,
                    seq,
                    expires: now + self.timing.ttl().as_nanos() as u64,
                });
                Body::Granted { token, seq }
            }
            Body::Acquire => Body::Busy,
            Body::Renew { token } => match valid {
                Some(g) if g.token == token && g.holder == m.contender => {
                    s.server.lease.as_mut().unwrap().expires =
                        now + self.timing.ttl().as_nanos() as u64;
                    Body::Renewed
                }
                _ => Body::Lost,
            },
            _ => unreachable!("replies go to contenders"),
        };
        self.send(s, m.contender as usize, m.sent, reply);
    }

    /// Contender `c`'s elect reads a reply.
    fn receive(&self, s: &mut State, c: usize, m: Msg) {
        let rate = s.contenders[c].rate;
        let local = self.now_at(s, c);
        let elect = s.contenders[c].elect.clone();
        match (elect, m.body) {
            (Elect::Acquiring { sent }, Body::Granted { token, seq }) if sent == m.sent => {
                let hold = Hold {
                    token,
                    seq,
                    deadline: self.deadline(c, rate, sent, s.now),
                    next: self.local(c, rate, sent) + self.timing.renew(),
                    renewing: None,
                    started: false,
                };
                s.contenders[c].elect = Elect::Holding(hold);
                if !self.try_start(s, c) {
                    // Too little time left: renew at once, and start if that helps.
                    if let Elect::Holding(hold) = &mut s.contenders[c].elect {
                        hold.next = local;
                    }
                }
            }
            (Elect::Acquiring { sent }, Body::Busy) if sent == m.sent => {
                s.contenders[c].elect = Elect::Idle;
            }
            (Elect::Holding(mut hold), Body::Renewed) if hold.renewing == Some(m.sent) => {
                hold.deadline = self.deadline(c, rate, m.sent, s.now);
                hold.next = self.local(c, rate, m.sent) + self.timing.renew();
                hold.renewing = None;
                let started = hold.started;
                let deadline = hold.deadline;
                s.contenders[c].elect = Elect::Holding(hold);
                s.ghost.renewed = true;
                if started {
                    // elect hands the new deadline to the watchdog.
                    if let Some(job) = &mut s.contenders[c].job {
                        job.deadline = deadline;
                    }
                } else if !self.try_start(s, c) {
                    s.contenders[c].elect = Elect::Stopping;
                }
            }
            (Elect::Holding(hold), Body::Lost) if hold.renewing == Some(m.sent) => {
                // Stop the job at once: SIGTERM, SIGKILL after min(grace, D - now).
                if let Some(job) = &mut s.contenders[c].job {
                    job.stop_by = Some(local + self.timing.grace());
                }
                s.contenders[c].elect = Elect::Stopping;
            }
            // A reply nobody waits for any more.
            _ => {}
        }
    }

    /// With a fresh lease, start the job if it would survive one failed renew.
    fn try_start(&self, s: &mut State, c: usize) -> bool {
        let local = self.now_at(s, c);
        let Elect::Holding(hold) = &mut s.contenders[c].elect else {
            unreachable!()
        };
        if !self.timing.may_start(local, hold.deadline) {
            return false;
        }
        hold.started = true;
        let (token, seq, deadline) = (hold.token, hold.seq, hold.deadline);
        let now = self.server_nanos(s.now);
        let valid = s
            .server
            .lease
            .is_some_and(|g| g.token == token && g.holder == c as u8 && now < g.expires);
        if !valid {
            s.ghost.started_without_lease = true;
        }
        s.ghost.jobs_started = s.ghost.jobs_started.saturating_add(1);
        s.contenders[c].job = Some(Job {
            token,
            seq,
            deadline,
            stop_by: None,
            termed: false,
        });
        true
    }

    fn write(&self, s: &mut State, c: usize) {
        let job = s.contenders[c].job.as_ref().unwrap();
        let (token, seq) = (job.token, job.seq);
        for (reg, fenced) in [(&mut s.fenced, true), (&mut s.unfenced, false)] {
            if fenced && token < reg.high {
                continue;
            }
            if seq < reg.newest {
                reg.stale_accepted = true;
            }
            reg.high = reg.high.max(token);
            reg.newest = reg.newest.max(seq);
        }
    }

    fn elect_actions(&self, s: &State, c: usize, actions: &mut Vec<Action>) {
        let con = &s.contenders[c];
        let id = c as u8;
        if con.frozen {
            actions.push(Action::Thaw(id));
            return;
        }
        if self.rule == Rule::FrozenHost {
            actions.push(Action::Freeze(id));
        }
        if self.writes && con.job.is_some() {
            actions.push(Action::Write(id));
        }
        let local = self.now_at(s, c);
        match &con.elect {
            Elect::Idle | Elect::Stopping if con.job.is_none() => {
                actions.push(Action::SendAcquire(id));
            }
            Elect::Idle | Elect::Stopping => {}
            // elect gives up on an acquire whose request or reply is lost. Giving up while the
            // reply is on its way, and ignoring it when it comes, is the same for every property.
            Elect::Acquiring { sent } => {
                let pending = s.net.iter().any(|m| m.contender == id && m.sent == *sent);
                if !pending {
                    actions.push(Action::AbandonAcquire(id));
                }
            }
            Elect::Holding(hold) if hold.started && con.job.is_none() => {
                // The job is gone (killed by the watchdog): elect ends the run.
                actions.push(Action::SendAcquire(id));
            }
            Elect::Holding(hold) => {
                // The keeper checks `D - grace` before each attempt.
                if local >= self.timing.term_at(hold.deadline) {
                    actions.push(Action::GiveUp(id));
                    return;
                }
                match hold.renewing {
                    None if local >= hold.next => actions.push(Action::SendRenew(id)),
                    None => {}
                    Some(sent) => {
                        let sent = self.local(c, con.rate, sent);
                        let timeout = self.timing.attempt_timeout(sent, hold.deadline);
                        if local >= sent + timeout {
                            actions.push(Action::RenewTimeout(id));
                        }
                    }
                }
            }
        }
    }
}

impl Model for LeaseModel {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        let mut rate_sets: Vec<Vec<Rate>> = vec![vec![]];
        for _ in 0..self.contenders {
            rate_sets = rate_sets
                .into_iter()
                .flat_map(|set| {
                    self.rates.iter().map(move |r| {
                        let mut set = set.clone();
                        set.push(*r);
                        set
                    })
                })
                .collect();
        }
        rate_sets
            .into_iter()
            .map(|rates| State {
                now: 0,
                server: Server {
                    lease: None,
                    next_token: 1,
                    grants: 0,
                },
                contenders: rates
                    .into_iter()
                    .map(|rate| Contender {
                        rate,
                        frozen: false,
                        elect: Elect::Idle,
                        job: None,
                    })
                    .collect(),
                net: Vec::new(),
                fenced: Register::default(),
                unfenced: Register::default(),
                ghost: Ghost::default(),
            })
            .collect()
    }

    fn actions(&self, s: &State, actions: &mut Vec<Action>) {
        if s.now < self.horizon {
            actions.push(Action::Tick);
        }
        for c in 0..s.contenders.len() {
            self.elect_actions(s, c, actions);
        }
        for (i, m) in s.net.iter().enumerate() {
            // A frozen elect reads nothing; its replies wait in flight until lost.
            if m.body.to_server() || !s.contenders[m.contender as usize].frozen {
                actions.push(Action::Deliver(i as u8));
            }
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut s = last.clone();
        match action {
            Action::Tick => self.tick(&mut s),
            Action::Freeze(c) => s.contenders[c as usize].frozen = true,
            Action::Thaw(c) => s.contenders[c as usize].frozen = false,
            Action::SendAcquire(c) => {
                let sent = s.now;
                s.contenders[c as usize].elect = Elect::Acquiring { sent };
                self.send(&mut s, c as usize, sent, Body::Acquire);
            }
            Action::AbandonAcquire(c) => s.contenders[c as usize].elect = Elect::Idle,
            Action::SendRenew(c) => {
                let sent = s.now;
                let Elect::Holding(hold) = &mut s.contenders[c as usize].elect else {
                    unreachable!()
                };
                hold.renewing = Some(sent);
                let token = hold.token;
                self.send(&mut s, c as usize, sent, Body::Renew { token });
            }
            Action::RenewTimeout(c) => {
                let c = c as usize;
                let local = self.now_at(&s, c);
                let Elect::Holding(hold) = &mut s.contenders[c].elect else {
                    unreachable!()
                };
                if !hold.started {
                    s.contenders[c].elect = Elect::Stopping;
                } else {
                    hold.renewing = None;
                    hold.next = (local + self.timing.retry_interval())
                        .min(self.timing.term_at(hold.deadline));
                }
            }
            Action::GiveUp(c) => s.contenders[c as usize].elect = Elect::Stopping,
            Action::Deliver(i) => {
                let m = s.net.remove(i as usize);
                if m.body.to_server() {
                    self.serve(&mut s, m);
                } else {
                    self.receive(&mut s, m.contender as usize, m);
                }
            }
            Action::Write(c) => self.write(&mut s, c as usize),
        }
        Some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always(ONE_JOB, |_, s: &State| {
                s.contenders.iter().filter(|c| c.job.is_some()).count() <= 1
            }),
            Property::always(TOKENS_INCREASE, |_, s: &State| {
                !s.ghost.token_not_increasing
            }),
            Property::always(START_UNDER_LEASE, |_, s: &State| {
                !s.ghost.started_without_lease
            }),
            Property::always(FENCED_NO_STALE_WRITE, |_, s: &State| {
                !s.fenced.stale_accepted
            }),
            Property::always(UNFENCED_NO_STALE_WRITE, |_, s: &State| {
                !s.unfenced.stale_accepted
            }),
            // Not failures: proof that the bounds reach the interesting cases at all.
            Property::sometimes(HANDOVER, |_, s: &State| s.ghost.jobs_started >= 2),
            Property::sometimes(RENEWED, |_, s: &State| {
                s.ghost.renewed && s.contenders.iter().any(|c| c.job.is_some())
            }),
        ]
    }
}

pub const ONE_JOB: &str = "at most one job alive at any moment of server time";
pub const TOKENS_INCREASE: &str = "fencing tokens handed out strictly increase";
pub const START_UNDER_LEASE: &str = "a job starts only under a lease the server holds valid";
pub const FENCED_NO_STALE_WRITE: &str = "the fenced register accepts no stale write";
pub const UNFENCED_NO_STALE_WRITE: &str = "the unfenced register sees no stale write";
pub const HANDOVER: &str = "a second holder's job starts";
pub const RENEWED: &str = "a job runs on a renewed lease";
