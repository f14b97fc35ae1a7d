//! The Redis backend: `redis://[user:password@]host[:port][/db]` and `rediss://` (TLS).
//!
//! # How it works
//! A lease is one string key with a PX expiry, `elect:{NAME}`, holding a random secret and the
//! holder metadata; the fencing token comes from a counter key in the same hash slot. Acquire,
//! renew and release are Lua scripts, so each is one atomic step on the server and a holder can
//! never extend or delete a lease that is not its own (`redis/scripts.rs` has the key layout and
//! the scripts).
//!
//! - **Places** (`--holders N`): each of the N holders has a lease key of its own, place 0
//!   `elect:{NAME}` (so a mutex is what it always was) and place K `elect:{NAME}:K`. Acquire
//!   takes the first free place in order, with a token from the one shared counter, so tokens
//!   grow across places; a lease renews and releases its own place (`Lease::slot`). The largest N
//!   used is kept in `elect:{NAME}:places`, so that `status` and `release --token`, which are not
//!   told N, read every place that can be held in one script, without a SCAN.
//! - **Waiting**: a release by the holder also pushes one element on the list
//!   `elect:{NAME}:baton` (unless N are there already, one for a mutex; it expires after a few
//!   seconds if nobody takes it). A waiter whose attempt finds the lock held blocks on that list with `BLPOP`, on the
//!   connection its attempts use (on a node; in a cluster, on one of its own); the server hands the element to the client that has blocked longest,
//!   so a release wakes exactly one waiter, first come, first served, and the others send
//!   nothing. The woken waiter tries to acquire (every place); if a contender that does not wait
//!   took the lock in between, it blocks again. A block also ends just past the holder's expiry
//!   (the PTTL its attempt saw, the smallest among the places, plus jitter), so a holder that died without releasing is taken over within about
//!   its ttl, and after at most 10 s anyway, which bounds what a lost baton costs (a waiter killed
//!   between taking it and acquiring). A waiter thus costs one attempt and one `BLPOP` per
//!   release that reaches it, per expiry of the lease it waits behind, or per 10 s, whichever
//!   comes first. `redis/baton.rs` has the details.
//! - **Timeouts**: every call is bounded (connect 3 s, response 2 s), so a stopped or
//!   unreachable server makes calls fail rather than hang; the lease keeper decides what a
//!   failed renew means. A connection that failed is replaced on the next call, and so is one
//!   whose request was given up on before its answer came (the keeper's attempt bound is
//!   shorter than the reply timeout): a stalled socket never takes every retry. One found dead by
//!   a renew, release or status read (reset while idle) is replaced at once and the call sent
//!   again, since those may run twice without harm. A renew is
//!   bounded by a third of the ttl, connecting included.
//! - **Lost answers**: an acquire whose answer never came may have taken a lease under its
//!   secret. The secret is kept: a retry sends it again (and finds that lease its own), and
//!   giving up settles it on a new connection (compare-and-delete, plus a void marker that makes
//!   a late request take nothing), in `settle`, or in `Drop` for a future that was dropped.
//! - **Listing**: `list` SCANs for `elect:{*` and takes the lock name from both lease keys and
//!   counters, so a lock that is free but was used before (only its counter is left) is listed
//!   as free; place keys K >= 1 are not locks of their own but holders of the lock they name,
//!   which `inspect` reports as co-holders. No registry of names is kept: it would live in one slot of a cluster, apart from
//!   the locks' own keys, and could not be updated atomically with them.
//!
//! # Layout
//! `connect` (from the URL, read by `url`, to a checked connection), `conn` (one connection,
//! a node's or the cluster's), `call` (one request on the shared connection), `error` (what a
//! client error means), `scripts` (the key layout and the Lua scripts), `reply` (reading their
//! answers), `baton` (waiting), `settle` (an acquire without an answer).

mod baton;
mod call;
mod conn;
mod connect;
mod error;
mod reply;
mod scripts;
mod settle;
mod url;

use std::time::Duration;

use ::redis::Value;

use self::baton::Waiter;
use self::conn::Conn;
use self::connect::Target;
use self::error::{breaks_connection, describe};
use self::reply::{
    holder_without_token, parse_acquire_reply, parse_holder, parse_inspect_reply, pttl_duration,
    unknown_holder,
};
use self::scripts::SCRIPTS;
use self::settle::Unsettled;
use super::{
    random, AcquireRequest, Backend, BackendError, BackendOptions, BackendUrl, Expiry,
    ForcedRelease, Result, WaitMode,
};
use crate::clock::BootTime;
use crate::lease::{
    Acquire, FencingToken, History, HolderInfo, Holding, LastRun, Lease, LockName, LockState,
    Renewal,
};

/// SCAN batch size: large enough to make few round trips, small enough not to block the server.
const SCAN_COUNT: u32 = 500;

#[derive(Debug)]
pub struct RedisBackend {
    /// Boxed: the client's connection details are large, and `AnyBackend` is moved around.
    target: Box<Target>,
    describe: String,
    /// The open connection, if the last call left a good one. Dropped after a network error so
    /// that the next call connects afresh instead of reusing a connection in an unknown state.
    conn: Option<Conn>,
    /// Set while a request waits for its answer. A call whose future was dropped before the
    /// answer came (an outer timeout, such as the lease keeper's bound on a renew attempt, which
    /// is shorter than the client's own) leaves it set, and the next call opens a new
    /// connection: a request left unanswered makes its connection suspect, and every retry
    /// must not go to the same stalled socket.
    in_flight: bool,
    /// An acquire that was sent but whose answer never came (a timeout, a dropped future): the
    /// server may hold a lease under its secret that nobody will renew or release. The next
    /// attempt reuses the secret (and so finds that lease its own); an acquire that gives up
    /// settles it first ([`Self::settle`]), and so does dropping the backend.
    unsettled: Option<Unsettled>,
}

/// What one acquire attempt found.
enum Attempt {
    Acquired(Lease),
    Held {
        holder: Option<HolderInfo>,
        /// Remaining time of the first lease to expire among the places; `None` when none has
        /// an expiry.
        pttl: Option<Duration>,
    },
    /// The secret was abandoned (an earlier settle reached the server after all): try again
    /// with a new one.
    Void,
}

impl RedisBackend {
    /// Connects and checks the connection (PING), so that a wrong address, password, database or
    /// TLS setup is reported before any job starts.
    pub async fn open(url: &BackendUrl, options: &BackendOptions) -> Result<Self> {
        let target = Box::new(Target::from_url(url, options)?);
        let mut backend = Self {
            target,
            describe: url.redacted(),
            conn: None,
            in_flight: false,
            unsettled: None,
        };
        backend
            .connection()
            .await
            .map_err(|e| backend.unavailable("cannot connect", &e))?;
        Ok(backend)
    }

    async fn try_acquire(&mut self, req: &AcquireRequest) -> Result<Attempt> {
        let places = req.holders.max(1);
        // A lease an unanswered acquire may hold elsewhere (another lock, other places) would
        // not be found by this one: settle it first.
        if self
            .unsettled
            .as_ref()
            .is_some_and(|u| u.name != req.name || u.places != places)
        {
            self.settle().await;
        }
        let secret = match &self.unsettled {
            Some(unsettled) => unsettled.secret.clone(),
            None => random::secret()?,
        };
        let mut holder = req.holder.clone();
        holder.ttl = req.ttl;
        holder.places = places;
        let mut call = SCRIPTS.acquire.prepare_invoke();
        call.key(scripts::token_key(&req.name))
            .key(scripts::places_key(&req.name))
            .key(scripts::void_key(&req.name, &secret));
        for place in scripts::place_keys(&req.name, places) {
            call.key(place);
        }
        call.arg(&secret)
            .arg(millis(req.ttl))
            .arg(holder_without_token(&holder)?)
            .arg(places);
        // Until an answer says otherwise, the server may hold a lease under this secret.
        self.unsettled = Some(Unsettled {
            name: req.name.clone(),
            secret: secret.clone(),
            places,
            ttl: req.ttl,
        });
        // The backend cannot expire the lease before `sent_at + ttl` only if `sent_at` is taken
        // before the request leaves: taken after, a slow answer would stretch the deadline.
        let mut sent_at = BootTime::now();
        let reply: Value = self
            .send("acquire", async |conn| {
                sent_at = BootTime::now();
                call.invoke_async(conn).await
            })
            .await?;
        let attempt = parse_acquire_reply(reply, &req.name, holder, secret, sent_at)?;
        self.unsettled = None;
        Ok(attempt)
    }
}

impl Backend for RedisBackend {
    fn describe(&self) -> &str {
        &self.describe
    }

    fn expiry(&self) -> Expiry {
        Expiry::Ttl
    }

    async fn acquire(&mut self, req: &AcquireRequest, wait: WaitMode) -> Result<Acquire> {
        // Opened at the first attempt that finds the lock held, and closed when we return (or
        // when the caller drops this future), which takes us out of the server's queue.
        let mut waiter: Option<Waiter> = None;
        // Whether the last block ended with the baton: the attempt that follows is our turn.
        let mut woken = false;
        // Whether the last block failed and its connection was replaced.
        let mut reopened = false;
        loop {
            let attempt = match self.try_acquire(req).await {
                Ok(attempt) => attempt,
                Err(e) => {
                    // Giving up: nothing may stay held under the secret just sent.
                    self.settle().await;
                    if let (true, Some(waiter)) = (woken, waiter.as_ref()) {
                        hand_on(waiter, &self.target, &req.name).await;
                    }
                    return Err(e);
                }
            };
            let (holder, pttl) = match attempt {
                Attempt::Acquired(lease) => {
                    let key = scripts::place_key(&lease.name, lease.slot);
                    if let Err(e) = self.acknowledge("acquire", &key).await {
                        // Not on enough replicas: a failover could hand the lock to someone
                        // else. Undone with the same compare-and-delete as a lost answer.
                        self.undo(Unsettled {
                            name: req.name.clone(),
                            secret: lease.secret.clone(),
                            places: req.holders.max(1),
                            ttl: req.ttl,
                        })
                        .await;
                        return Err(e);
                    }
                    return Ok(Acquire::Acquired(lease));
                }
                Attempt::Held { holder, pttl } => (holder, pttl),
                Attempt::Void => continue,
            };
            if wait == WaitMode::NoWait {
                return Ok(Acquire::Held(holder));
            }
            let blocked = match &mut waiter {
                Some(waiter) => waiter,
                None => {
                    let shared = self
                        .connection()
                        .await
                        .map_err(|e| self.unavailable("connect to wait for a release", &e))?;
                    waiter.insert(
                        Waiter::open(&self.target, shared, &req.name, req.holders)
                            .await
                            .map_err(|e| self.failed("connect to wait for a release", &e))?,
                    )
                }
            };
            // On a node the block holds the backend's connection: given up before its answer
            // (this future dropped), it leaves that connection in flight, to be replaced.
            self.in_flight = true;
            let block = blocked.block(pttl).await;
            self.in_flight = false;
            woken = match block {
                Ok(woken) => woken,
                // A failover unblocked us (the node became a replica) or took the connection
                // down: wait again on a new one, after an attempt that shows whether the
                // backend is there at all. Twice in a row is a real failure.
                Err(e) if !reopened && breaks_connection(&e) => {
                    tracing::debug!(lock = %req.name, error = %describe(&e), "the wait was cut short; waiting again on a new connection");
                    self.conn = None;
                    waiter = None;
                    reopened = true;
                    continue;
                }
                Err(e) => return Err(self.unavailable("wait for a release", &e)),
            };
            reopened = false;
        }
    }

    async fn renew(&mut self, lease: &Lease) -> Result<Renewal> {
        let key = scripts::place_key(&lease.name, lease.slot);
        let mut call = SCRIPTS.renew.prepare_invoke();
        call.key(&key)
            .arg(&lease.secret)
            .arg(millis(lease.holder.ttl));
        // Within the keeper's budget for one attempt (at most a third of the ttl by default),
        // connecting included: an answer that cannot come in time is not waited for.
        let bound = renew_bound(lease.holder.ttl);
        let renewed = async {
            let answer: i64 = self.invoke_again("renew", &call).await?;
            if answer == 1 {
                self.acknowledge("renew", &key).await?;
            }
            Ok(answer)
        };
        let answer: i64 = match tokio::time::timeout(bound, renewed).await {
            Ok(answer) => answer?,
            Err(_) => {
                return Err(BackendError::Unavailable(format!(
                    "renew (Redis at {}): no answer within {}",
                    self.target.addr,
                    crate::timing::Fmt(bound)
                )))
            }
        };
        Ok(match answer {
            1 => Renewal::Renewed,
            0 => Renewal::Lost(format!("the lease key {key} is gone (expired or deleted)")),
            _ => Renewal::Lost(format!("the lease key {key} now belongs to another holder")),
        })
    }

    async fn release(&mut self, lease: &Lease, history: Option<&History>) -> Result<()> {
        let key = scripts::place_key(&lease.name, lease.slot);
        let last_run = match history {
            Some(h) => serde_json::to_string(&h.last_run)
                .map_err(|e| BackendError::Config(format!("run history: {e}")))?,
            None => String::new(),
        };
        let once_ms = history.and_then(|h| h.once_per).map_or(0, millis);
        let mut call = SCRIPTS.release.prepare_invoke();
        call.key(&key)
            .key(scripts::baton_key(&lease.name))
            .key(scripts::last_key(&lease.name))
            .key(scripts::once_key(&lease.name))
            .arg(&lease.secret)
            .arg(millis(scripts::BATON_TTL))
            .arg(last_run)
            .arg(once_ms)
            .arg(lease.holder.places.max(1));
        let released: i64 = self.invoke_again("release", &call).await?;
        if released != 1 {
            tracing::warn!(
                lock = %lease.name,
                "the lease was no longer ours at release (it expired, or another holder has it)"
            );
        }
        Ok(())
    }

    async fn fresh_run(&mut self, name: &LockName) -> Result<Option<LastRun>> {
        let key = scripts::once_key(name);
        let value: Option<Vec<u8>> = self
            .send("read the --once-per marker", async |conn| {
                ::redis::cmd("GET").arg(&key).query_async(conn).await
            })
            .await?;
        // A marker elect cannot read still says that the job ran in the window.
        Ok(value.map(|v| {
            serde_json::from_slice(&v).unwrap_or_else(|_| LastRun::unreadable_marker(name))
        }))
    }

    async fn claim_run(&mut self, lease: &Lease, window: Duration) -> Result<Option<LastRun>> {
        let started = serde_json::to_string(&LastRun::unfinished(lease))
            .map_err(|e| BackendError::Config(format!("run history: {e}")))?;
        let mut call = SCRIPTS.claim.prepare_invoke();
        call.key(scripts::place_key(&lease.name, lease.slot))
            .key(scripts::once_key(&lease.name))
            .arg(&lease.secret)
            .arg(started)
            .arg(millis(window));
        let reply: Value = self.invoke("record the --once-per run", &call).await?;
        match reply {
            Value::Array(items) => match items.as_slice() {
                [Value::Int(0)] => Ok(None),
                // A marker elect cannot read still says that the job ran in the window.
                [Value::Int(1), Value::BulkString(marker)] => Ok(Some(
                    serde_json::from_slice(marker).unwrap_or_else(|_| LastRun::unreadable_marker(&lease.name)),
                )),
                [Value::Int(-1)] => Err(BackendError::Unavailable(format!(
                    "record the --once-per run (Redis at {}): the lease on lock {} is no longer ours",
                    self.target.addr, lease.name
                ))),
                _ => Err(self.failed_reply("record the --once-per run", &lease.name)),
            },
            _ => Err(self.failed_reply("record the --once-per run", &lease.name)),
        }
    }

    async fn force_release(
        &mut self,
        name: &LockName,
        token: FencingToken,
    ) -> Result<ForcedRelease> {
        let mut call = SCRIPTS.force_release.prepare_invoke();
        call.key(scripts::lease_key(name))
            .key(scripts::baton_key(name))
            .key(scripts::places_key(name))
            .key(scripts::once_key(name))
            .arg(token.0)
            .arg(millis(scripts::BATON_TTL));
        let answer: (i64, Option<Vec<u8>>) = self.invoke("force release", &call).await?;
        Ok(match answer {
            (1, _) => ForcedRelease::Released,
            (0, _) => ForcedRelease::NotHeld,
            (_, value) => ForcedRelease::Mismatch(value.as_deref().and_then(parse_holder)),
        })
    }

    async fn inspect(&mut self, name: &LockName) -> Result<LockState> {
        let mut call = SCRIPTS.inspect.prepare_invoke();
        call.key(scripts::lease_key(name))
            .key(scripts::last_key(name))
            .key(scripts::places_key(name));
        let reply: Value = self.invoke_again("inspect", &call).await?;
        let (last, held) = parse_inspect_reply(reply, name)?;
        let last_run = last.and_then(|l| serde_json::from_slice(&l).ok());
        // Held places in order: the lowest is `holder`, the others co-holders.
        let held = held.into_iter().map(|place| Holding {
            holder: parse_holder(&place.value).unwrap_or_else(|| unknown_holder(name)),
            expires_in: pttl_duration(place.pttl),
        });
        Ok(LockState::held_by(name.clone(), held, last_run))
    }

    async fn list(&mut self) -> Result<Vec<LockState>> {
        // On a cluster, every primary is scanned: each lock lives in the slot of its name.
        let keys = self
            .send("list locks", async |conn| {
                conn.scan_all(scripts::SCAN_PATTERN, SCAN_COUNT).await
            })
            .await?;
        let names: std::collections::BTreeSet<LockName> = keys
            .iter()
            .filter_map(|k| std::str::from_utf8(k).ok())
            .filter_map(scripts::lock_of_key)
            .collect();
        let mut states = Vec::with_capacity(names.len());
        for name in &names {
            states.push(self.inspect(name).await?);
        }
        Ok(states)
    }
}

/// Passes on a baton we took but could not use, so that the next waiter is not left to wait for
/// its timeout. Best effort, within the usual reply timeout, connecting included: the error that
/// made the attempt fail may well stop this too.
async fn hand_on(waiter: &Waiter, target: &Target, name: &LockName) {
    let why = match tokio::time::timeout(connect::RESPONSE_TIMEOUT, waiter.hand_on(target)).await {
        Ok(Ok(true)) => {
            tracing::debug!(lock = %name, "passed the baton on to the next waiter");
            return;
        }
        Ok(Ok(false)) => return,
        Ok(Err(e)) => describe(&e),
        Err(_) => format!(
            "no answer within {}",
            crate::timing::Fmt(connect::RESPONSE_TIMEOUT)
        ),
    };
    tracing::debug!(
        lock = %name,
        "could not pass the baton on ({why}); the next waiter re-checks within 10 s"
    );
}

/// The longest one renew may take, connecting included: the client's reply timeout, but no more
/// than the default renew interval (a third of the ttl), which bounds the lease keeper's attempt.
fn renew_bound(ttl: Duration) -> Duration {
    connect::RESPONSE_TIMEOUT.min(ttl / 3)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}
