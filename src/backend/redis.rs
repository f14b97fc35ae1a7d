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
//!   seconds if nobody takes it). A waiter whose attempt finds the lock held blocks on that list with `BLPOP`, on a
//!   connection of its own; the server hands the element to the client that has blocked longest,
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

mod baton;
mod conn;
mod connect;
mod error;
mod scripts;
mod url;

use std::time::Duration;

use ::redis::{RedisError, Value};

use self::baton::Waiter;
use self::conn::Conn;
use self::connect::Target;
use self::error::{breaks_connection, describe};
use self::scripts::SCRIPTS;
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

/// An acquire whose outcome is unknown.
#[derive(Debug, Clone)]
struct Unsettled {
    name: LockName,
    secret: String,
    places: u32,
    ttl: Duration,
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

/// How long an acquire that gives up may spend settling the lease its lost request may have
/// taken; past that, dropping the backend tries once more, and then the ttl applies.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long dropping the backend may take to settle an unfinished acquire.
const DROP_SETTLE_TIMEOUT: Duration = Duration::from_secs(1);

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

    async fn connection(&mut self) -> std::result::Result<Conn, RedisError> {
        if std::mem::take(&mut self.in_flight) {
            self.conn = None;
        }
        if let Some(conn) = &self.conn {
            // A clone shares the one connection; it is cheap.
            return Ok(conn.clone());
        }
        let conn = self.target.connect().await?;
        self.conn = Some(conn.clone());
        Ok(conn)
    }

    /// Turns a client error into a one-line `Unavailable`, and forgets a connection it broke.
    fn unavailable(&mut self, doing: &str, err: &RedisError) -> BackendError {
        if breaks_connection(err) {
            self.conn = None;
        }
        self.failed(doing, err)
    }

    /// A client error as a one-line `Unavailable`, leaving the shared connection alone.
    fn failed(&self, doing: &str, err: &RedisError) -> BackendError {
        BackendError::Unavailable(format!(
            "{doing} (Redis at {}): {}",
            self.target.addr,
            describe(err)
        ))
    }

    /// An answer a script cannot give.
    fn failed_reply(&self, doing: &str, name: &LockName) -> BackendError {
        BackendError::Unavailable(format!(
            "{doing} (Redis at {}): unexpected answer for lock {name}",
            self.target.addr
        ))
    }

    /// With `?wait=N`: whether N replicas have the write just made to `key` (`WAIT`, on the
    /// connection that made it). Fewer, or no answer, is an error: the write does not count.
    async fn acknowledge(&mut self, doing: &str, key: &str) -> Result<()> {
        let Some(ack) = self.target.ack else {
            return Ok(());
        };
        let key = key.to_owned();
        let acknowledged = self
            .send(doing, async |conn| conn.acknowledged(&key, ack).await)
            .await?;
        if acknowledged >= i64::from(ack.replicas) {
            return Ok(());
        }
        Err(BackendError::Unavailable(format!(
            "{doing} (Redis at {}): acknowledged by {acknowledged} of the {} replicas required (wait={}) within {}",
            self.target.addr,
            ack.replicas,
            ack.replicas,
            crate::timing::Fmt(ack.timeout)
        )))
    }

    /// Sends one request on the shared connection, mapping errors with `doing`. The request is
    /// in flight (see `in_flight`) from the moment it is sent until its answer is read.
    async fn send<T>(
        &mut self,
        doing: &str,
        request: impl AsyncFnOnce(&mut Conn) -> ::redis::RedisResult<T>,
    ) -> Result<T> {
        let mut conn = match self.connection().await {
            Ok(conn) => conn,
            Err(e) => return Err(self.unavailable(doing, &e)),
        };
        self.in_flight = true;
        let result = request(&mut conn).await;
        self.in_flight = false;
        result.map_err(|e| self.unavailable(doing, &e))
    }

    /// Runs one script call on the shared connection, mapping errors with `doing`.
    async fn invoke<T: ::redis::FromRedisValue>(
        &mut self,
        doing: &str,
        call: &::redis::ScriptInvocation<'_>,
    ) -> Result<T> {
        self.send(doing, async |conn| call.invoke_async::<T>(conn).await)
            .await
    }

    /// [`Self::invoke`] for a call that may run twice without harm (renew, release, inspect): if
    /// the shared connection died since its last use (reset while idle, a server restart), the
    /// call is sent once more on a new connection instead of failing, so that a release after a
    /// network blip frees the lock at once rather than by expiry. A call that timed out is not
    /// sent again here.
    async fn invoke_again<T: ::redis::FromRedisValue>(
        &mut self,
        doing: &str,
        call: &::redis::ScriptInvocation<'_>,
    ) -> Result<T> {
        let reused = self.conn.is_some() && !self.in_flight;
        let mut conn = match self.connection().await {
            Ok(conn) => conn,
            Err(e) => return Err(self.unavailable(doing, &e)),
        };
        self.in_flight = true;
        let first = call.invoke_async::<T>(&mut conn).await;
        self.in_flight = false;
        match first {
            Ok(value) => return Ok(value),
            Err(e) if reused && e.is_connection_dropped() => {
                tracing::debug!(error = %describe(&e), "{doing}: the connection had died; once more on a new one");
                self.conn = None;
            }
            // A failover demoted the node: a new connection reaches the new primary (through
            // the sentinels, or the cluster's new slot map).
            Err(e) if error::is_demoted(&e) => {
                tracing::info!(error = %describe(&e), "{doing}: the node is no longer the primary; once more on the new one");
                self.conn = None;
            }
            Err(e) => return Err(self.unavailable(doing, &e)),
        }
        self.invoke(doing, call).await
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

    /// Undoes an acquire that was not acknowledged by enough replicas: the same compare-and-delete
    /// as for a lost answer, on the connection that took it; if that fails, it is settled as a
    /// lost answer would be.
    async fn undo(&mut self, taken: Unsettled) {
        self.unsettled = Some(taken.clone());
        let undone = self
            .send("undo the unacknowledged acquire", async |conn| {
                abandon(conn, &taken).await
            })
            .await;
        match undone {
            Ok(_) => self.unsettled = None,
            Err(e) => {
                tracing::debug!(lock = %taken.name, "{e}; settling on a new connection");
                self.settle().await;
            }
        }
    }

    /// Settles an acquire whose answer never came: deletes the lease it may have taken, if
    /// that still holds its secret, and leaves a marker that makes the request take nothing
    /// should it reach the server only now. On a new connection: the old one is in doubt.
    /// Bounded; one that cannot settle now is left for the next attempt or for the drop.
    async fn settle(&mut self) {
        let Some(unsettled) = self.unsettled.clone() else {
            return;
        };
        self.conn = None;
        let settled = tokio::time::timeout(SETTLE_TIMEOUT, async {
            let mut conn = self.target.connect().await?;
            abandon(&mut conn, &unsettled).await
        })
        .await;
        match settled {
            Ok(Ok(released)) => {
                self.unsettled = None;
                if released {
                    tracing::info!(lock = %unsettled.name, "released the lease that an acquire without an answer had taken");
                }
            }
            Ok(Err(e)) => tracing::warn!(
                lock = %unsettled.name,
                "an acquire got no answer, and the lease it may have taken cannot be released now ({}); trying again on exit, else it expires by its ttl",
                describe(&e)
            ),
            Err(_) => tracing::warn!(
                lock = %unsettled.name,
                "an acquire got no answer, and releasing the lease it may have taken got none either; trying again on exit, else it expires by its ttl"
            ),
        }
    }
}

/// Runs the abandon script for an unsettled acquire; true when it deleted a lease.
async fn abandon(conn: &mut Conn, unsettled: &Unsettled) -> std::result::Result<bool, RedisError> {
    let mut call = SCRIPTS.abandon.prepare_invoke();
    call.key(scripts::void_key(&unsettled.name, &unsettled.secret))
        .key(scripts::baton_key(&unsettled.name));
    for place in scripts::place_keys(&unsettled.name, unsettled.places) {
        call.key(place);
    }
    call.arg(&unsettled.secret)
        .arg(millis(scripts::void_ttl(unsettled.ttl)))
        .arg(millis(scripts::BATON_TTL));
    let released: i64 = call.invoke_async(conn).await?;
    Ok(released == 1)
}

impl Drop for RedisBackend {
    /// Settles an acquire whose answer never came (its future was dropped: a signal, the
    /// `--wait` bound), so that the lease it may have taken does not keep every contender out
    /// until its ttl ends.
    ///
    /// The connection cannot be used here: it is driven by the runtime that is running this
    /// drop, or is already gone. So a thread of its own connects afresh and settles, and the drop
    /// waits for it at most [`DROP_SETTLE_TIMEOUT`]; past that the lease expires by its ttl.
    fn drop(&mut self) {
        let Some(unsettled) = self.unsettled.take() else {
            return;
        };
        let target = self.target.clone();
        let (done, finished) = std::sync::mpsc::channel();
        let settler = std::thread::Builder::new()
            .name("redis-settle".into())
            .spawn(move || {
                if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    runtime.block_on(async {
                        let _ = tokio::time::timeout(DROP_SETTLE_TIMEOUT, async {
                            let mut conn = target.connect().await?;
                            abandon(&mut conn, &unsettled).await
                        })
                        .await;
                    });
                }
                let _ = done.send(());
            });
        if settler.is_ok() {
            let _ = finished.recv_timeout(DROP_SETTLE_TIMEOUT + Duration::from_millis(100));
        }
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
                    if let (true, Some(waiter)) = (woken, waiter.as_mut()) {
                        hand_on(waiter, &req.name).await;
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
                None => waiter.insert(
                    Waiter::open(&self.target, &req.name, req.holders)
                        .await
                        .map_err(|e| self.failed("connect to wait for a release", &e))?,
                ),
            };
            woken = match blocked.block(pttl).await {
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
                Err(e) => return Err(self.failed("wait for a release", &e)),
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
/// its timeout. Best effort: the error that made the attempt fail may well stop this too.
async fn hand_on(waiter: &mut Waiter, name: &LockName) {
    match waiter.hand_on().await {
        Ok(true) => tracing::debug!(lock = %name, "passed the baton on to the next waiter"),
        Ok(false) => {}
        Err(e) => tracing::debug!(
            lock = %name,
            "could not pass the baton on ({}); the next waiter re-checks within 10 s",
            describe(&e)
        ),
    }
}

/// The longest one renew may take, connecting included: the client's reply timeout, but no more
/// than the default renew interval (a third of the ttl), which bounds the lease keeper's attempt.
fn renew_bound(ttl: Duration) -> Duration {
    connect::RESPONSE_TIMEOUT.min(ttl / 3)
}

/// Reads the acquire script's answer: `{1, token, place}`, `{0, value, pttl}` or `{-1}`.
fn parse_acquire_reply(
    reply: Value,
    name: &LockName,
    mut holder: HolderInfo,
    secret: String,
    sent_at: BootTime,
) -> Result<Attempt> {
    let unexpected = || {
        BackendError::Unavailable(format!(
            "unexpected answer from the acquire script for lock {name}"
        ))
    };
    let Value::Array(items) = reply else {
        return Err(unexpected());
    };
    match items.as_slice() {
        [Value::Int(1), Value::Int(token), Value::Int(slot)] => {
            let token = u64::try_from(*token).map_err(|_| unexpected())?;
            let slot = u32::try_from(*slot).map_err(|_| unexpected())?;
            holder.token = FencingToken(token);
            Ok(Attempt::Acquired(Lease {
                name: name.clone(),
                holder,
                sent_at,
                secret,
                kernel_lock: None,
                slot,
            }))
        }
        [Value::Int(-1)] => Ok(Attempt::Void),
        [Value::Int(0), Value::BulkString(value), Value::Int(pttl)] => Ok(Attempt::Held {
            holder: Some(parse_holder(value).unwrap_or_else(|| unknown_holder(name))),
            pttl: pttl_duration(*pttl),
        }),
        _ => Err(unexpected()),
    }
}

/// One held place, as the inspect script read it.
#[derive(Debug, PartialEq)]
struct HeldPlace {
    /// The lease value, `<secret>\n<holder JSON>`.
    value: Vec<u8>,
    pttl: i64,
}

/// Reads the inspect script's answer: `{last run or nil, K, value, pttl, ...}`, one triple per
/// held place in order. Returns the last run and the held places.
fn parse_inspect_reply(reply: Value, name: &LockName) -> Result<(Option<Vec<u8>>, Vec<HeldPlace>)> {
    let unexpected = || {
        BackendError::Unavailable(format!(
            "unexpected answer from the inspect script for lock {name}"
        ))
    };
    let Value::Array(items) = reply else {
        return Err(unexpected());
    };
    let (last, places) = items.split_first().ok_or_else(unexpected)?;
    let last = match last {
        Value::Nil => None,
        Value::BulkString(last) => Some(last.clone()),
        _ => return Err(unexpected()),
    };
    if places.len() % 3 != 0 {
        return Err(unexpected());
    }
    let held = places
        .chunks_exact(3)
        .map(|place| match place {
            [Value::Int(_), Value::BulkString(value), Value::Int(pttl)] => Ok(HeldPlace {
                value: value.clone(),
                pttl: *pttl,
            }),
            _ => Err(unexpected()),
        })
        .collect::<Result<_>>()?;
    Ok((last, held))
}

/// The holder metadata of a lease value `<secret>\n<holder JSON>`; `None` if it is not one.
fn parse_holder(value: &[u8]) -> Option<HolderInfo> {
    let newline = value.iter().position(|&b| b == b'\n')?;
    serde_json::from_slice(&value[newline + 1..]).ok()
}

/// A lease key whose value elect cannot read (written by something else): held, by nobody we
/// can name.
fn unknown_holder(name: &LockName) -> HolderInfo {
    HolderInfo {
        host: "unknown".into(),
        version: format!("unreadable lease value for lock {name}"),
        ..HolderInfo::unknown("unknown".into(), FencingToken(0))
    }
}

/// The holder's JSON object without its `token` field, which the acquire script fills in.
fn holder_without_token(holder: &HolderInfo) -> Result<String> {
    let mut value = serde_json::to_value(holder)
        .map_err(|e| BackendError::Config(format!("holder metadata: {e}")))?;
    match value.as_object_mut() {
        Some(object) => {
            object.remove("token");
            if object.is_empty() {
                return Err(BackendError::Config("empty holder metadata".into()));
            }
        }
        None => {
            return Err(BackendError::Config(
                "holder metadata is not an object".into(),
            ))
        }
    }
    Ok(value.to_string())
}

/// PTTL answers -2 (no key) and -1 (no expiry) besides a time.
fn pttl_duration(pttl: i64) -> Option<Duration> {
    u64::try_from(pttl).ok().map(Duration::from_millis)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holder_json_drops_only_the_token() {
        let holder = HolderInfo::this_process(Some("web-1:7".into()), Duration::from_secs(5));
        let json = holder_without_token(&holder).unwrap();
        assert!(json.starts_with('{'));
        assert!(!json.contains("\"token\""));
        // What the acquire script stores, read back.
        let value = format!("abc\n{{\"token\":17,{}", &json[1..]);
        let back = parse_holder(value.as_bytes()).unwrap();
        assert_eq!(back.token, FencingToken(17));
        assert_eq!(back.id, "web-1:7");
    }

    #[test]
    fn unreadable_values() {
        assert!(parse_holder(b"no newline").is_none());
        assert!(parse_holder(b"s\nnot json").is_none());
    }

    #[test]
    fn inspect_answers() {
        let name = LockName::new("pair").unwrap();
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let reply = Value::Array(vec![
            Value::Nil,
            Value::Int(0),
            bulk("s\n{}"),
            Value::Int(900),
            Value::Int(2),
            bulk("t\n{}"),
            Value::Int(-1),
        ]);
        let (last, held) = parse_inspect_reply(reply, &name).unwrap();
        assert_eq!(last, None);
        assert_eq!(
            held,
            [
                HeldPlace {
                    value: b"s\n{}".to_vec(),
                    pttl: 900
                },
                HeldPlace {
                    value: b"t\n{}".to_vec(),
                    pttl: -1
                },
            ]
        );
        let free = Value::Array(vec![bulk("{}")]);
        let (last, held) = parse_inspect_reply(free, &name).unwrap();
        assert_eq!(last.as_deref(), Some(&b"{}"[..]));
        assert!(held.is_empty());
        let torn = Value::Array(vec![Value::Nil, Value::Int(0), bulk("s\n{}")]);
        assert!(parse_inspect_reply(torn, &name).is_err());
        assert!(parse_inspect_reply(Value::Int(1), &name).is_err());
    }

    #[test]
    fn pttl_answers() {
        assert_eq!(pttl_duration(-2), None);
        assert_eq!(pttl_duration(-1), None);
        assert_eq!(pttl_duration(1500), Some(Duration::from_millis(1500)));
    }
}
