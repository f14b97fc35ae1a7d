//! The PostgreSQL backend: `postgres://user[:password]@host[:port]/database[?sslmode=...]`
//! (also `postgresql://`).
//!
//! # How it works
//! A lease is one row of a table (`elect_leases`, or `?table=`), created at open time if missing:
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
//! - **Waiting**: a waiter runs `LISTEN elect_released` on its session before each attempt and
//!   retries when its lock name is notified. Without a notification (the holder died, or LISTEN
//!   does not reach it through a pooler) it sleeps until the holder's expiry as the server
//!   reports it, at most 2 s (`RECHECK`).
//! - **Sessions**: holding needs no session state (no advisory lock, no open transaction, no
//!   prepared statement left on the server), so it works through PgBouncer in transaction mode,
//!   and a dropped session loses nothing: the next call reconnects and the row is still ours.
//! - **Timeouts**: connect 3 s (TCP, TLS, authentication), every statement 2 s, measured here so
//!   that a stopped server makes calls fail rather than hang. A session that failed or timed out
//!   is closed and replaced on the next call.
//! - **Standbys** are refused at open time: a standby takes no writes, and what it shows of the
//!   leases may lag behind the primary.

mod connect;
mod pgpass;
mod session;
mod sql;
mod tls;

use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Row;

use self::connect::{Conn, Target};
use self::session::QueryError;
use self::sql::{lost_create_race, Schema, Statements, HISTORY_COLUMNS};
use super::{
    AcquireRequest, Backend, BackendError, BackendOptions, BackendUrl, Expiry, ForcedRelease,
    Result, WaitMode,
};
use crate::lease::{
    Acquire, FencingToken, History, HolderInfo, LastRun, Lease, LockName, LockState, Renewal,
};

/// The longest a waiter sleeps between two attempts when no release wakes it.
const RECHECK: Duration = Duration::from_secs(2);
/// Spread added to each waiter's sleep, so that waiters behind an expired lease do not all
/// arrive in the same millisecond.
const JITTER_MS: u64 = 50;
/// How often a no-wait acquire retries when the row it found busy turned free in between.
const RACE_RETRIES: usize = 3;
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
    /// Whether the table has the history columns; decided at open time.
    schema: Schema,
    /// The open session, if the last call left a good one.
    conn: Option<Conn>,
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
        let target = Box::new(Target::from_url(url, options)?);
        let statements = Arc::new(Statements::new(&target.table, Schema::WithHistory));
        let mut backend = Self {
            target,
            describe: url.redacted(),
            statements,
            schema: Schema::WithHistory,
            conn: None,
        };
        backend.prepare_table().await?;
        Ok(backend)
    }

    async fn prepare_table(&mut self) -> Result<()> {
        let table = self.target.table.quoted().to_owned();
        let rows = self
            .query(
                "cannot connect",
                "SELECT pg_is_in_recovery(), current_setting('server_version_num')::int4, \
                 to_regclass($1::text) IS NOT NULL",
                &[(&table, Type::TEXT)],
            )
            .await?
            .0;
        let (in_recovery, version, exists): (bool, i32, bool) = rows
            .first()
            .and_then(|r| Some((r.try_get(0).ok()?, r.try_get(1).ok()?, r.try_get(2).ok()?)))
            .ok_or_else(|| self.unavailable("check the server", "unexpected answer"))?;
        if in_recovery {
            return Err(self.unavailable(
                "refusing the server",
                "it is a standby (in recovery), where a lease cannot be written or would not be \
                 seen by the primary; point elect at the primary",
            ));
        }
        if version < MIN_SERVER_VERSION {
            return Err(self.unavailable(
                "refusing the server",
                format_args!("PostgreSQL 12 or newer is needed (server_version_num {version})"),
            ));
        }
        if !exists {
            let statements = Arc::clone(&self.statements);
            match self.query_raw(&statements.create, &[]).await {
                Ok(_) => {}
                Err(QueryError::Client(err)) if lost_create_race(&err) => {}
                Err(err) => {
                    return Err(self.failed(&format!("cannot create the lease table {table}"), err))
                }
            }
        }
        self.migrate_table(&table).await?;
        let rows = self
            .query(
                "check privileges",
                "SELECT has_table_privilege($1::text, 'SELECT') \
                    AND has_table_privilege($1::text, 'INSERT') \
                    AND has_table_privilege($1::text, 'UPDATE')",
                &[(&table, Type::TEXT)],
            )
            .await?
            .0;
        let allowed: bool = rows
            .first()
            .and_then(|r| r.try_get(0).ok())
            .unwrap_or(false);
        if !allowed {
            return Err(self.unavailable(
                "insufficient privilege",
                format_args!("the role needs SELECT, INSERT and UPDATE on the table {table}"),
            ));
        }
        Ok(())
    }

    /// Adds the history columns to a table an older elect created. Checked first, so that a role
    /// that may not alter the table works with a table that has them already. A role that may
    /// not alter a table without them still gets working leases, without history.
    async fn migrate_table(&mut self, table: &str) -> Result<()> {
        let columns: Vec<String> = HISTORY_COLUMNS.iter().map(|c| c.to_string()).collect();
        let rows = self
            .query(
                "check the lease table's columns",
                "SELECT count(*) FROM pg_attribute \
                 WHERE attrelid = to_regclass($1::text) AND NOT attisdropped \
                   AND attname = ANY($2::text[])",
                &[(&table, Type::TEXT), (&columns, Type::TEXT_ARRAY)],
            )
            .await?
            .0;
        let present: i64 = rows.first().and_then(|r| r.try_get(0).ok()).unwrap_or(0);
        if present == HISTORY_COLUMNS.len() as i64 {
            return Ok(());
        }
        let statements = Arc::clone(&self.statements);
        match self.query_raw(&statements.migrate, &[]).await {
            Ok(_) => Ok(()),
            Err(QueryError::Client(err)) if lost_create_race(&err) => Ok(()),
            Err(QueryError::Client(err)) if not_owner(&err) => {
                tracing::debug!(
                    "the lease table {table} has no run-history columns and this role may not \
                     add them; run history and --once-per are off (its owner can run: {})",
                    statements.migrate
                );
                self.schema = Schema::WithoutHistory;
                self.statements =
                    Arc::new(Statements::new(&self.target.table, Schema::WithoutHistory));
                Ok(())
            }
            Err(err) => Err(self.failed(
                &format!("cannot add the run-history columns to the lease table {table}"),
                err,
            )),
        }
    }

    async fn attempt(&mut self, req: &AcquireRequest, secret: &str) -> Result<Attempt> {
        let statements = Arc::clone(&self.statements);
        let holder = &req.holder;
        let name = req.name.as_str();
        let pid = i64::from(holder.pid);
        let ttl_ms = millis(req.ttl);
        let (rows, sent_at) = self
            .query(
                "acquire",
                &statements.acquire,
                &[
                    (&name, Type::TEXT),
                    (&holder.id, Type::TEXT),
                    (&holder.host, Type::TEXT),
                    (&pid, Type::INT8),
                    (&holder.version, Type::TEXT),
                    (&holder.acquired_at, Type::TIMESTAMPTZ),
                    (&ttl_ms, Type::INT8),
                    (&secret, Type::TEXT),
                ],
            )
            .await?;
        if let Some(row) = rows.first() {
            let token = column::<i64>(row, "token")
                .and_then(|t| u64::try_from(t).ok())
                .ok_or_else(|| self.unavailable("acquire", "the row holds an invalid token"))?;
            let mut holder = req.holder.clone();
            holder.token = FencingToken(token);
            holder.ttl = req.ttl;
            return Ok(Attempt::Acquired(Lease {
                name: req.name.clone(),
                holder,
                sent_at,
                secret: secret.to_owned(),
                kernel_lock: None,
                slot: 0,
            }));
        }
        let state = self.inspect(&req.name).await?;
        Ok(match (state.holder, state.expires_in) {
            (Some(holder), Some(remaining)) => Attempt::Held { holder, remaining },
            _ => Attempt::Changed,
        })
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
        let secret = random_secret()?;
        let mut races = 0;
        loop {
            if wait == WaitMode::Wait {
                self.listen().await;
            }
            match self.attempt(req, &secret).await? {
                Attempt::Acquired(lease) => return Ok(Acquire::Acquired(lease)),
                Attempt::Changed if wait == WaitMode::NoWait && races >= RACE_RETRIES => {
                    return Ok(Acquire::Held(None))
                }
                Attempt::Changed => races += 1,
                Attempt::Held { holder, .. } if wait == WaitMode::NoWait => {
                    return Ok(Acquire::Held(Some(holder)))
                }
                Attempt::Held { remaining, .. } => {
                    let limit = remaining.min(RECHECK) + jitter();
                    self.wait_for_release(&req.name, limit).await;
                }
            }
        }
    }

    async fn renew(&mut self, lease: &Lease) -> Result<Renewal> {
        let statements = Arc::clone(&self.statements);
        let token = token_param(lease)?;
        let ttl_ms = millis(lease.holder.ttl);
        let (rows, _) = self
            .query(
                "renew",
                &statements.renew,
                &[
                    (&lease.name.as_str(), Type::TEXT),
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
        let params: &Params = &[
            (&lease.name.as_str(), Type::TEXT),
            (&lease.secret, Type::TEXT),
            (&token, Type::INT8),
            (&last_run, Type::TEXT),
            (&once_ms, Type::INT8),
        ];
        let params = match self.schema {
            Schema::WithHistory => params,
            Schema::WithoutHistory => &params[..3],
        };
        self.query("release", &statements.release, params).await?;
        Ok(())
    }

    async fn fresh_run(&mut self, name: &LockName) -> Result<Option<LastRun>> {
        if self.schema == Schema::WithoutHistory {
            return Err(self.unavailable(
                "--once-per",
                format_args!(
                    "the lease table {} has no once_until column and this role may not add it; \
                     its owner can run: {}",
                    self.target.table.quoted(),
                    self.statements.migrate
                ),
            ));
        }
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
                .unwrap_or_else(|| unknown_run(name)),
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
                &[(&name.as_str(), Type::TEXT), (&token, Type::INT8)],
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
        let statements = Arc::clone(&self.statements);
        let (rows, _) = self
            .query(
                "inspect",
                &statements.inspect,
                &[(&name.as_str(), Type::TEXT)],
            )
            .await?;
        match rows.first() {
            Some(row) => Ok(row_to_state(row).unwrap_or_else(|| free(name.clone()))),
            None => Ok(free(name.clone())),
        }
    }

    async fn list(&mut self) -> Result<Vec<LockState>> {
        let statements = Arc::clone(&self.statements);
        let (rows, _) = self.query("list", &statements.list, &[]).await?;
        Ok(rows.iter().filter_map(row_to_state).collect())
    }
}

/// A row as `status` shows it; a released or expired row is free. `None` for a row elect did
/// not write (a name that is not a lock name).
fn row_to_state(row: &Row) -> Option<LockState> {
    let name = LockName::new(&column::<String>(row, "name")?).ok()?;
    let last_run: Option<LastRun> = column::<Option<String>>(row, "last_run")
        .flatten()
        .and_then(|text| serde_json::from_str(&text).ok());
    let remaining = column::<Option<i64>>(row, "remaining_ms")?
        .filter(|ms| *ms > 0)
        .map(|ms| Duration::from_millis(ms.unsigned_abs()));
    let Some(remaining) = remaining else {
        return Some(LockState {
            last_run,
            ..free(name)
        });
    };
    let holder = HolderInfo {
        id: column(row, "holder_id")?,
        host: column(row, "host")?,
        pid: u32::try_from(column::<i64>(row, "pid")?).unwrap_or(0),
        acquired_at: column::<SystemTime>(row, "acquired_at")?,
        ttl: Duration::from_millis(u64::try_from(column::<i64>(row, "ttl_ms")?).unwrap_or(0)),
        token: FencingToken(u64::try_from(column::<i64>(row, "token")?).ok()?),
        version: column(row, "version")?,
        places: 1,
    };
    Some(LockState {
        lock: name,
        holder: Some(holder),
        last_run,
        expires_in: Some(remaining),
        waiters: None,
        co_holders: Vec::new(),
    })
}

/// A column by name; `None` when it is missing or of another type (a table altered by hand).
fn column<'a, T: tokio_postgres::types::FromSql<'a>>(row: &'a Row, name: &str) -> Option<T> {
    row.try_get(name).ok()
}

fn free(name: LockName) -> LockState {
    LockState {
        lock: name,
        holder: None,
        last_run: None,
        expires_in: None,
        waiters: None,
        co_holders: Vec::new(),
    }
}

/// Whether the server refused an `ALTER TABLE` because the role does not own the table.
fn not_owner(err: &tokio_postgres::Error) -> bool {
    err.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
}

/// A `--once-per` marker whose run elect cannot read.
fn unknown_run(name: &LockName) -> LastRun {
    LastRun {
        holder: format!("unknown (unreadable run of lock {name})"),
        host: "unknown".into(),
        pid: 0,
        token: FencingToken(0),
        started_at: SystemTime::UNIX_EPOCH,
        finished_at: SystemTime::UNIX_EPOCH,
        duration: Duration::ZERO,
        end: crate::lease::RunEnd::ExitCode(0),
    }
}

fn token_param(lease: &Lease) -> Result<i64> {
    i64::try_from(lease.token().0)
        .map_err(|_| BackendError::Config(format!("token {} is out of range", lease.token())))
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn random_secret() -> Result<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| BackendError::unavailable("read /dev/urandom", e))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Up to [`JITTER_MS`], from the sub-second part of the wall clock: enough to spread waiters,
/// and it needs no random source.
fn jitter() -> Duration {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()));
    Duration::from_millis(nanos % JITTER_MS)
}
