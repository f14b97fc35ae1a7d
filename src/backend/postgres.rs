//! The PostgreSQL backend: `postgres://user[:password]@host[:port]/database[?sslmode=...]`
//! (also `postgresql://`).
//!
//! # How it works
//! A lease is one row of a table (`public.elect_leases`, or `?table=`, always schema-qualified so
//! that no role's `search_path` picks another), created at open time if missing:
//! the lock name (primary key), the holder metadata, a random secret that proves ownership, the
//! fencing token and `expires_at`. `sql.rs` has the schema and the statements.
//!
//! - **Acquire** is one `INSERT ... ON CONFLICT (name) DO UPDATE ... WHERE expires_at IS NULL OR
//!   expires_at <= clock_timestamp() RETURNING token`: it creates the row, or takes it over when
//!   it is released or expired, and bumps the token. Expiry is judged by the server's clock in
//!   the same statement that takes the row, so no client clock takes part and two contenders
//!   cannot both win. The row stays after a release, so the token never repeats.
//! - **Renew** is one `UPDATE` that extends `expires_at` only where name, secret and token match
//!   and the lease has not expired; no row means the lease is lost.
//! - **Release** is the same check, setting `expires_at` to NULL and notifying the channel
//!   `elect_released` with the lock name, in one statement: the notification goes out when the
//!   release commits.
//! - **Several holders** (`--holders N`): place 0 is the row `NAME` as above, place K >= 1 the
//!   row `NAME/K` (lock names cannot contain '/', so it is never another lock's row). One
//!   statement picks the first place that is free, released or expired and takes it on the same
//!   condition, re-checked on the row's latest version, so the database settles every race; a
//!   contender that loses one tries again at once while a place looks free. Tokens come from one
//!   counter per lock, kept on the place-0 row: place 0 takes the greater of its `token` and
//!   `top_token` plus one into `token`, a place K the same into `top_token` (creating the
//!   place-0 row free if missing) and then into its own row. Place 0's lease is proved by its
//!   `token`, which a place K never changes. Renew and release address the lease's place; every
//!   release records the run on the place-0 row (history is per lock) and notifies the lock
//!   name. `status` shows the lowest held place as the holder, the others as co-holders. A
//!   table from before `top_token` gets it at open time; a role that may not add it gets no
//!   `--holders` above 1. An older elect on the same lock would count from `token` alone.
//! - **Waiting**: waiters stand in line, one line per lock: a session advisory lock on a key
//!   hashed from the table and the lock name, which the server grants to one session at a time,
//!   in the order asked, and frees when the session ends. Only the first in line runs
//!   `LISTEN elect_released` and tries when its lock name is notified (the release of any
//!   place); the others block in the server's lock queue and send nothing, so that a release
//!   wakes one waiter, not every one. The first leaves the line when it takes the lock, and the
//!   next, now first, listens and tries once. Without a notification (the holder died, or the
//!   notification was lost) the first retries at the soonest expiry of the places it may take as
//!   the server reports it, at most 10 s later (`HEARING_RECHECK`). A first in line that is
//!   killed frees its place with its session; one that is stopped or cut off silently keeps it,
//!   so every waiter behind it re-checks after 30 s in line (plus up to 2.5 s of spread) and
//!   lines up again. Once per session a waiter checks that notifications reach it at all: a
//!   second, short-lived session notifies a channel only it listens on. Through a
//!   transaction-pooling proxy none arrives (and a session lock would stay behind on a pooled
//!   server session), so such a waiter stands in no line and retries every 2 s at most
//!   (`RECHECK`).
//! - **Sessions**: holding needs no session state (no advisory lock, no open transaction, no
//!   prepared statement left on the server), so it works through PgBouncer in transaction mode,
//!   and a dropped session loses nothing: the next call reconnects and the row is still ours.
//! - **Timeouts**: connect 3 s (TCP, TLS, authentication), every statement 2 s, measured here so
//!   that a stopped server makes calls fail rather than hang. A session that failed or timed out
//!   is closed and replaced on the next call.
//! - **Lost answers**: an acquire whose answer never came may hold a place under its secret.
//!   The secret is kept: the next acquire of the lock sends it again (and takes that place back),
//!   and giving up frees whichever place holds it, on a new session (`settle`, or `Drop` for a
//!   future that was dropped).
//! - **`--once-per`**: `claim` records the run as it starts, so that a run whose release is lost
//!   still counts; the release replaces that record after a success and removes it otherwise.
//! - **Standbys** are refused at open time: a standby takes no writes, and what it shows of the
//!   leases may lag behind the primary.
//!
//! # Layout
//! `connect` (from the URL to a session; `pgpass`, `tls`), `session` (one statement on the
//! session, and the wake-ups), `table` (the table's name, and readying it at open time), `sql`
//! (the statements), `place` (the rows of a lock's places, and the states they make), `settle`
//! (an acquire without an answer).

mod connect;
mod pgpass;
mod place;
mod session;
mod settle;
mod sql;
mod table;
mod tls;

use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::types::{ToSql, Type};

use self::connect::{Conn, Target};
use self::place::{column, locks, place_name, row_to_place};
use self::settle::Unsettled;
use self::sql::{Schema, Statements};
use super::retry::Retry;
use super::{
    random, AcquireRequest, Backend, BackendError, BackendOptions, BackendUrl, Expiry,
    ForcedRelease, Result, WaitMode,
};
use crate::lease::{
    Acquire, FencingToken, History, HolderInfo, LastRun, Lease, LockName, LockState, Renewal,
};

/// The longest a waiter sleeps between two attempts when no release wakes it.
const RECHECK: Duration = Duration::from_secs(2);
/// The same for a waiter whose session hears releases: a bound only for a session cut off
/// without a reset (a partition), which would miss the release's notification.
const HEARING_RECHECK: Duration = Duration::from_secs(10);
/// Spread added to each waiter's sleep, so that waiters behind an expired lease do not all
/// arrive in the same millisecond.
const JITTER_MS: u64 = 50;
/// How often a no-wait acquire retries when the row it found busy turned free in between.
const RACE_RETRIES: usize = 3;
/// The most places a lock can have (`--holders` is at most 1000): `inspect` and
/// `force_release` look at this many.
const MOST_PLACES: i32 = 1000;
/// The oldest server with everything the statements use.
const MIN_SERVER_VERSION: i32 = 120_000;

/// libpq's password variable, which elect reads like libpq does; the job does not inherit it.
pub const SECRET_VARIABLES: &[&str] = &["PGPASSWORD"];

type Params<'a> = [(&'a (dyn ToSql + Sync), Type)];

#[derive(Debug)]
pub struct PostgresBackend {
    /// Boxed: the client configuration is large, and `AnyBackend` is moved around.
    target: Box<Target>,
    describe: String,
    /// Shared so that a statement's text can be borrowed while `self` is borrowed mutably.
    statements: Arc<Statements>,
    /// Which of the later columns the table has; decided at open time.
    schema: Schema,
    /// The open session, if the last call left a good one. A call takes it out while it runs and
    /// puts it back only after an answer, so a call whose future is dropped (an outer timeout,
    /// such as the lease keeper's bound on a renew attempt) drops its session with it: the next
    /// call opens a new one rather than waiting on a stalled socket.
    conn: Option<Conn>,
    /// An acquire that was sent but whose answer never came (a timeout, a dropped future): the
    /// server may hold a place under its secret that nobody will renew or release. The next
    /// acquire of the lock reuses the secret (and so takes that place back as its own); an
    /// acquire that gives up settles it first ([`Self::settle`]), and so does dropping the
    /// backend.
    unsettled: Option<Unsettled>,
}

/// What one acquire attempt found.
enum Attempt {
    Acquired(Lease),
    Held {
        holder: HolderInfo,
        /// Remaining time of the holder's lease, by the server's clock.
        remaining: Duration,
    },
    /// The row was busy for the acquire and free for the read after it: try again.
    Changed,
}

impl PostgresBackend {
    /// Connects, refuses a standby, and creates the table if needed, so that a wrong address,
    /// password, database, privilege or TLS setup is reported before any job starts.
    pub async fn open(url: &BackendUrl, options: &BackendOptions) -> Result<Self> {
        let mut backend = Self::new(url, options)?;
        backend.prepare_table().await?;
        Ok(backend)
    }

    /// [`PostgresBackend::open`] for a contender that will wait for `lock`: while the server
    /// gives no answer (no connection, a reset, no answer in time, no free connection slot, a
    /// server starting up), it connects again, with backoff and jitter, until `until` (`None`:
    /// for ever), as a wait rides out an outage. A refusal (a wrong password, no such database,
    /// TLS, a privilege) still fails at once.
    pub async fn open_until(
        url: &BackendUrl,
        options: &BackendOptions,
        lock: &str,
        until: Option<tokio::time::Instant>,
    ) -> Result<Self> {
        let mut backend = Self::new(url, options)?;
        let mut retry = Retry::new();
        let conn = loop {
            match backend.target.connect().await {
                Ok(conn) => {
                    retry.succeeded(lock);
                    break conn;
                }
                Err(err)
                    if !err.is_refusal()
                        && until.is_none_or(|u| tokio::time::Instant::now() < u) =>
                {
                    let pause = retry.failed(lock, "connecting", &err.to_string());
                    let pause =
                        pause + random::jitter(u64::try_from(pause.as_millis() / 2).unwrap_or(0));
                    let wake = tokio::time::Instant::now() + pause;
                    tokio::time::sleep_until(until.map_or(wake, |u| wake.min(u))).await;
                }
                Err(err) => return Err(backend.unavailable("cannot connect", err)),
            }
        };
        backend.conn = Some(conn);
        backend.prepare_table().await?;
        Ok(backend)
    }

    fn new(url: &BackendUrl, options: &BackendOptions) -> Result<Self> {
        let target = Box::new(Target::from_url(url, options)?);
        let statements = Arc::new(Statements::new(&target.table, Schema::CURRENT));
        Ok(Self {
            describe: explicit(url, &target).redacted(),
            target,
            statements,
            schema: Schema::CURRENT,
            conn: None,
            unsettled: None,
        })
    }

    async fn attempt(&mut self, req: &AcquireRequest, secret: &str) -> Result<Attempt> {
        let statements = Arc::clone(&self.statements);
        let holder = &req.holder;
        let name = req.name.as_str();
        let pid = i64::from(holder.pid);
        let ttl_ms = millis(req.ttl);
        let places = i32::try_from(req.holders.max(1)).unwrap_or(MOST_PLACES);
        let params: &Params = &[
            (&name, Type::TEXT),
            (&holder.id, Type::TEXT),
            (&holder.host, Type::TEXT),
            (&pid, Type::INT8),
            (&holder.version, Type::TEXT),
            (&holder.acquired_at, Type::TIMESTAMPTZ),
            (&ttl_ms, Type::INT8),
            (&secret, Type::TEXT),
            (&places, Type::INT4),
        ];
        let (sql, params) = if places == 1 {
            (&statements.acquire, &params[..8])
        } else {
            (&statements.acquire_place, params)
        };
        // Until an answer says otherwise, the server may hold a place under this secret.
        self.unsettled = Some(Unsettled {
            name: req.name.clone(),
            row: req.name.to_string(),
            secret: secret.to_owned(),
        });
        let (rows, sent_at) = self.query("acquire", sql, params).await?;
        self.unsettled = None;
        if let Some(row) = rows.first() {
            let token = column::<i64>(row, "token")
                .and_then(|t| u64::try_from(t).ok())
                .ok_or_else(|| self.unavailable("acquire", "the row holds an invalid token"))?;
            let slot = column::<i32>(row, "slot")
                .and_then(|s| u32::try_from(s).ok())
                .ok_or_else(|| self.unavailable("acquire", "unexpected answer"))?;
            let mut holder = req.holder.clone();
            holder.token = FencingToken(token);
            holder.ttl = req.ttl;
            return Ok(Attempt::Acquired(Lease {
                name: req.name.clone(),
                holder,
                sent_at,
                secret: secret.to_owned(),
                kernel_lock: None,
                slot,
            }));
        }
        // Every place was taken when the statement ran. All still busy: the one that ends first
        // is reported, for the wake-up; otherwise one has turned free since.
        let busy: Vec<(HolderInfo, Duration)> = self
            .places(&req.name, places)
            .await?
            .into_iter()
            .filter_map(|p| p.held)
            .collect();
        if busy.len() < req.holders.max(1) as usize {
            return Ok(Attempt::Changed);
        }
        let Some((holder, remaining)) = busy.into_iter().min_by_key(|(_, remaining)| *remaining)
        else {
            return Ok(Attempt::Changed);
        };
        Ok(Attempt::Held { holder, remaining })
    }
}

impl Backend for PostgresBackend {
    fn describe(&self) -> &str {
        &self.describe
    }

    fn expiry(&self) -> Expiry {
        Expiry::Ttl
    }

    async fn acquire(&mut self, req: &AcquireRequest, wait: WaitMode) -> Result<Acquire> {
        // One secret for every attempt of this acquire, so that an attempt retried after a lost
        // answer recognises its own row.
        self.check_places(req)?;
        if self.unsettled.as_ref().is_some_and(|u| u.name != req.name) {
            self.settle().await;
        }
        // An earlier acquire of this lock that got no answer: its place, if it took one, is
        // ours again.
        let secret = match &self.unsettled {
            Some(unsettled) => unsettled.secret.clone(),
            None => random::secret()?,
        };
        // A contender that loses a place to another may find the next one free: each lost race
        // means another contender got in, so at most one per place.
        let race_retries = RACE_RETRIES + req.holders.max(1) as usize - 1;
        let mut races = 0;
        loop {
            if wait == WaitMode::Wait {
                self.line_up(&req.name).await;
            }
            let attempt = match self.attempt(req, &secret).await {
                Ok(attempt) => attempt,
                Err(err) => {
                    // Giving up: nothing may stay held under the secret just sent.
                    self.settle().await;
                    return Err(err);
                }
            };
            match attempt {
                Attempt::Acquired(lease) => {
                    if wait == WaitMode::Wait {
                        self.leave_line().await;
                    }
                    return Ok(Acquire::Acquired(lease));
                }
                Attempt::Changed if wait == WaitMode::NoWait && races >= race_retries => {
                    return Ok(Acquire::Held(None))
                }
                Attempt::Changed => races += 1,
                Attempt::Held { holder, .. } if wait == WaitMode::NoWait => {
                    return Ok(Acquire::Held(Some(holder)))
                }
                Attempt::Held { remaining, .. } => {
                    // The first in line re-checks only for a holder that died without a
                    // release: at the expiry the server reported. One further back has just
                    // made its slow re-check, and gets back in line.
                    let limit = match &self.conn {
                        Some(conn) if conn.ticket.is_some() => remaining.min(HEARING_RECHECK),
                        Some(conn) if conn.hears => continue,
                        _ => remaining.min(RECHECK),
                    } + random::jitter(JITTER_MS);
                    self.wait_for_release(&req.name, limit).await;
                }
            }
        }
    }

    async fn renew(&mut self, lease: &Lease) -> Result<Renewal> {
        let statements = Arc::clone(&self.statements);
        let token = token_param(lease)?;
        let ttl_ms = millis(lease.holder.ttl);
        let place = place_name(&lease.name, lease.slot);
        let (rows, _) = self
            .query(
                "renew",
                &statements.renew,
                &[
                    (&place, Type::TEXT),
                    (&lease.secret, Type::TEXT),
                    (&token, Type::INT8),
                    (&ttl_ms, Type::INT8),
                ],
            )
            .await?;
        if rows.is_empty() {
            return Ok(Renewal::Lost(format!(
                "the lease row of {} expired or was taken over (token {} is no longer current)",
                lease.name,
                lease.token()
            )));
        }
        Ok(Renewal::Renewed)
    }

    async fn release(&mut self, lease: &Lease, history: Option<&History>) -> Result<()> {
        let statements = Arc::clone(&self.statements);
        let token = token_param(lease)?;
        let last_run = history
            .map(|h| serde_json::to_string(&h.last_run))
            .transpose()
            .map_err(|e| BackendError::Config(format!("run history: {e}")))?;
        let once_ms = history.and_then(|h| h.once_per).map(millis);
        let place = place_name(&lease.name, lease.slot);
        let params: &Params = &[
            (&place, Type::TEXT),
            (&lease.secret, Type::TEXT),
            (&token, Type::INT8),
            (&last_run, Type::TEXT),
            (&once_ms, Type::INT8),
            (&lease.name.as_str(), Type::TEXT),
        ];
        // Place 0 records the run on its own row; place K on the lock's place-0 row ($6).
        let (sql, params) = match (lease.slot, self.schema.history) {
            (0, true) => (&statements.release, &params[..5]),
            (0, false) => (&statements.release, &params[..3]),
            _ => (&statements.release_place, params),
        };
        self.query("release", sql, params).await?;
        Ok(())
    }

    async fn fresh_run(&mut self, name: &LockName) -> Result<Option<LastRun>> {
        self.require_history()?;
        let statements = Arc::clone(&self.statements);
        let (rows, _) = self
            .query(
                "read the --once-per marker",
                &statements.fresh_run,
                &[(&name.as_str(), Type::TEXT)],
            )
            .await?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        // A marker whose run elect cannot read still says that the job ran in the window.
        Ok(Some(
            column::<Option<String>>(row, "last_run")
                .flatten()
                .and_then(|text| serde_json::from_str(&text).ok())
                .unwrap_or_else(|| LastRun::unreadable_marker(name)),
        ))
    }

    async fn claim_run(&mut self, lease: &Lease, window: Duration) -> Result<Option<LastRun>> {
        self.require_history()?;
        let statements = Arc::clone(&self.statements);
        let token = token_param(lease)?;
        let started = serde_json::to_string(&LastRun::unfinished(lease))
            .map_err(|e| BackendError::Config(format!("run history: {e}")))?;
        let window_ms = millis(window);
        let place = place_name(&lease.name, lease.slot);
        let (rows, _) = self
            .query(
                "record the --once-per run",
                &statements.claim,
                &[
                    (&place, Type::TEXT),
                    (&lease.secret, Type::TEXT),
                    (&token, Type::INT8),
                    (&lease.name.as_str(), Type::TEXT),
                    (&started, Type::TEXT),
                    (&window_ms, Type::INT8),
                ],
            )
            .await?;
        let row = rows
            .first()
            .ok_or_else(|| self.unavailable("record the --once-per run", "unexpected answer"))?;
        let count = |name| column::<i64>(row, name).unwrap_or(0);
        if count("mine") == 0 {
            return Err(self.unavailable(
                "record the --once-per run",
                format_args!("the lease on lock {} is no longer ours", lease.name),
            ));
        }
        if count("claimed") == 1 {
            return Ok(None);
        }
        // A marker lives; one whose run elect cannot read (or that another holder of a
        // --holders lock wrote at the same moment) still says that the job ran in the window.
        Ok(Some(
            column::<Option<String>>(row, "marker")
                .flatten()
                .and_then(|text| serde_json::from_str(&text).ok())
                .unwrap_or_else(|| LastRun::unreadable_marker(&lease.name)),
        ))
    }

    async fn force_release(
        &mut self,
        name: &LockName,
        token: FencingToken,
    ) -> Result<ForcedRelease> {
        let statements = Arc::clone(&self.statements);
        let token = i64::try_from(token.0)
            .map_err(|_| BackendError::Config(format!("token {token} is out of range")))?;
        let (rows, _) = self
            .query(
                "force release",
                &statements.force_release,
                &[
                    (&name.as_str(), Type::TEXT),
                    (&MOST_PLACES, Type::INT4),
                    (&token, Type::INT8),
                ],
            )
            .await?;
        if !rows.is_empty() {
            return Ok(ForcedRelease::Released);
        }
        Ok(match self.inspect(name).await?.holder {
            None => ForcedRelease::NotHeld,
            holder => ForcedRelease::Mismatch(holder),
        })
    }

    async fn inspect(&mut self, name: &LockName) -> Result<LockState> {
        let places = self.places(name, MOST_PLACES).await?;
        Ok(locks(places)
            .pop()
            .unwrap_or_else(|| LockState::free(name.clone())))
    }

    async fn list(&mut self) -> Result<Vec<LockState>> {
        let statements = Arc::clone(&self.statements);
        let (rows, _) = self.query("list", &statements.list, &[]).await?;
        Ok(locks(rows.iter().filter_map(row_to_place).collect()))
    }
}

/// The URL as `status`, errors and the job show it: the database and the schema-qualified table
/// written out, whether the URL gave them or they came from PGDATABASE and the default.
fn explicit(url: &BackendUrl, target: &Target) -> BackendUrl {
    let mut shown = url.clone();
    if shown.path.trim_start_matches('/').is_empty() {
        shown.path = format!("/{}", target.database);
    }
    let table = ("table".to_owned(), target.table.name().to_owned());
    match shown.query.iter_mut().find(|(k, _)| k == "table") {
        Some(given) => *given = table,
        None => shown.query.push(table),
    }
    shown
}

fn token_param(lease: &Lease) -> Result<i64> {
    i64::try_from(lease.token().0)
        .map_err(|_| BackendError::Config(format!("token {} is out of range", lease.token())))
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
