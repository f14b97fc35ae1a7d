//! The session behind the backend: opened on demand, every statement bounded in time, and
//! replaced after anything that leaves it in doubt; and the waiting on it for releases.

use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::Row;

use super::connect::{describe, Conn, ConnectError, STATEMENT_TIMEOUT};
use super::sql::CHANNEL;
use super::{Params, PostgresBackend};
use crate::backend::{random, BackendError, Result};
use crate::clock::BootTime;
use crate::lease::LockName;

/// How long a waiter whose session does not listen sleeps before it tries again (and listens).
const UNHEARD_RECHECK: Duration = Duration::from_millis(100);
/// How long a listening session may take to hear another session's notification (see
/// [`PostgresBackend::hears_others`]): a direct session hears it within milliseconds.
const PROBE_WAIT: Duration = Duration::from_secs(1);
/// The channels of those probes: this, then a random tag, one per probe.
pub const PROBE_CHANNEL: &str = "elect_probe_";
/// The longest a waiter stands in line before it re-checks the lock itself: the bound for a
/// first in line that is stopped or cut off without a reset (its session, and so its place,
/// outlives it on the server). Each re-check costs a waiter three statements, so that a thousand
/// waiters cost about 100 a second, and one that is not first can wait up to this long more.
const LINE_WAIT: Duration = Duration::from_secs(30);
/// Spread added to [`LINE_WAIT`], so that waiters that lined up together do not re-check
/// together.
const LINE_SPREAD_MS: u64 = 2_500;
/// The first half of every line's advisory-lock key: "elec" in ASCII, so that elect's locks
/// stand apart from an application's one-key locks and from its own two-key classes.
const TICKET_CLASS: i32 = 0x656c_6563;

impl PostgresBackend {
    /// The open session, or a new one.
    pub(super) async fn take_connection(&mut self) -> std::result::Result<Conn, QueryError> {
        if let Some(conn) = self.conn.take() {
            if !conn.client.is_closed() {
                return Ok(conn);
            }
        }
        self.target.connect().await.map_err(QueryError::Connect)
    }

    /// Runs one statement; the time returned was taken just before it was sent.
    ///
    /// A statement that finds its session already closed (the server ended it, a pooler
    /// dropped it) is sent once more on a new session: every statement here may run twice
    /// without harm, which is what lets a dropped session go unnoticed by the lease.
    pub(super) async fn query_raw(
        &mut self,
        sql: &str,
        params: &Params<'_>,
    ) -> std::result::Result<(Vec<Row>, BootTime), QueryError> {
        let mut retried = false;
        loop {
            let conn = self.take_connection().await?;
            let sent_at = BootTime::now();
            match tokio::time::timeout(STATEMENT_TIMEOUT, conn.client.query_typed(sql, params))
                .await
            {
                Ok(Ok(rows)) => {
                    self.conn = Some(conn);
                    return Ok((rows, sent_at));
                }
                Ok(Err(err)) if session_ended(&err) && !retried => retried = true,
                Ok(Err(err)) => {
                    // A server error leaves the session usable; anything else may not.
                    if err.as_db_error().is_some()
                        && !session_ended(&err)
                        && !conn.client.is_closed()
                    {
                        self.conn = Some(conn);
                    }
                    return Err(QueryError::Client(err));
                }
                Err(_) => return Err(QueryError::TimedOut),
            }
        }
    }

    pub(super) async fn query(
        &mut self,
        doing: &str,
        sql: &str,
        params: &Params<'_>,
    ) -> Result<(Vec<Row>, BootTime)> {
        match self.query_raw(sql, params).await {
            Ok(done) => Ok(done),
            Err(err) => Err(self.failed(doing, err)),
        }
    }

    pub(super) fn failed(&self, doing: &str, err: QueryError) -> BackendError {
        match err {
            QueryError::Connect(err) => self.unavailable(doing, err),
            QueryError::Client(err) => self.unavailable(doing, describe(&err)),
            QueryError::TimedOut => BackendError::NoAnswer(format!(
                "{doing} (PostgreSQL at {}): no answer within {}s (is the server stopped or \
                 overloaded?)",
                self.target.addr,
                STATEMENT_TIMEOUT.as_secs()
            )),
        }
    }

    pub(super) fn unavailable(&self, doing: &str, why: impl std::fmt::Display) -> BackendError {
        BackendError::Unavailable(format!(
            "{doing} (PostgreSQL at {}): {why}",
            self.target.addr
        ))
    }

    /// Sleeps until `limit`, or until a release of `name` is notified on the session.
    pub(super) async fn wait_for_release(&mut self, name: &LockName, limit: Duration) {
        let Some(mut conn) = self.conn.take() else {
            tokio::time::sleep(limit).await;
            return;
        };
        // A session that does not listen was opened by the attempt, after the one before it
        // died and LISTEN could not be sent (the server was unreachable a moment earlier): no
        // release would wake it. Soon the next attempt listens first.
        let limit = if conn.listening {
            limit
        } else {
            limit.min(UNHEARD_RECHECK)
        };
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => break,
                payload = conn.released.recv() => match payload {
                    Some(payload) if payload == name.as_str() => break,
                    Some(_) => {}
                    // The session ended: the next attempt opens a new one.
                    None => return,
                },
            }
        }
        self.conn = Some(conn);
    }

    /// Gets in line for `name` before an attempt: on a session that hears other sessions'
    /// notifications, first in the line of waiters for the lock, and listening (see
    /// [`PostgresBackend::take_ticket`]); on any other, listening only. A pooler or server that
    /// refuses LISTEN leaves the waiter with expiry-timed retries, which is slower but still
    /// correct.
    pub(super) async fn line_up(&mut self, name: &LockName) {
        let Ok(mut conn) = self.take_connection().await else {
            return;
        };
        if !conn.probed {
            match self.hears_others(&mut conn).await {
                Some(hears) => {
                    conn.probed = true;
                    conn.hears = hears;
                }
                // No answer (a busy server, no free connection slot): asked again before the
                // next attempt, meanwhile re-checking as a session that does not hear.
                None => conn.hears = false,
            }
        }
        if conn.hears && conn.ticket.is_none() {
            // A session that listened before its probe got an answer stops, so that releases
            // do not pile up for it while it stands in line.
            if conn.listening {
                if !answered(&conn, &format!("UNLISTEN {CHANNEL}")).await {
                    return;
                }
                conn.listening = false;
            }
            match self.take_ticket(&mut conn, name).await {
                Ok(true) => {}
                // Not first yet: the attempt that follows is the slow re-check, and then the
                // waiter gets back in line.
                Ok(false) => {
                    self.conn = Some(conn);
                    return;
                }
                // The session is in doubt: dropping it frees its place in line, and the next
                // attempt opens a new one.
                Err(()) => return,
            }
        }
        if !conn.listening {
            let listen = format!("LISTEN {CHANNEL}");
            match tokio::time::timeout(STATEMENT_TIMEOUT, conn.client.batch_execute(&listen)).await
            {
                Ok(Ok(())) => {}
                Ok(Err(err)) => {
                    tracing::debug!(err = %describe(&err), "LISTEN failed; waiting by expiry only")
                }
                Err(_) => return,
            }
            conn.listening = true;
        }
        // Releases notified before this attempt are answered by the attempt itself.
        while conn.released.try_recv().is_ok() {}
        self.conn = Some(conn);
    }

    /// Waits, at most [`LINE_WAIT`] and a spread, to stand first in the line of waiters for
    /// `name`: a session advisory lock on the lock's key ([`ticket_key`]), which the server
    /// grants to one session at a time, in the order they asked, and frees when the session
    /// ends (a waiter killed while first). Only the first listens, so that a release wakes one
    /// waiter rather than every one; the others sit in the server's lock queue and send nothing.
    /// The statement blocks the session, which is why nothing else is asked of it meanwhile:
    /// a waiter in line has nothing to hear. `true`: first. `false`: not yet, after
    /// [`LINE_WAIT`] (a first that is stuck or cut off), or the server refused the advisory lock
    /// (then this session waits as one that does not hear releases). `Err`: no answer in time,
    /// or the session ended; it was dropped.
    async fn take_ticket(&self, conn: &mut Conn, name: &LockName) -> std::result::Result<bool, ()> {
        let key = ticket_key(self.target.table.name(), name);
        let wait = LINE_WAIT + random::jitter(LINE_SPREAD_MS);
        // One implicit transaction: the two settings hold for this statement only, the advisory
        // lock for the session. The statement timeout overrides a shorter one of the role's.
        let sql = format!(
            "SET LOCAL lock_timeout = {lock}; SET LOCAL statement_timeout = {statement}; \
             SELECT pg_advisory_lock({TICKET_CLASS}, {key})",
            lock = wait.as_millis(),
            statement = (wait + STATEMENT_TIMEOUT).as_millis(),
        );
        let bound = wait + STATEMENT_TIMEOUT + STATEMENT_TIMEOUT;
        match tokio::time::timeout(bound, conn.client.batch_execute(&sql)).await {
            Ok(Ok(())) => {
                conn.ticket = Some(key);
                Ok(true)
            }
            Ok(Err(err)) if err.as_db_error().is_some() && !session_ended(&err) => {
                let waited_out = [SqlState::LOCK_NOT_AVAILABLE, SqlState::QUERY_CANCELED];
                if !err.code().is_some_and(|code| waited_out.contains(code)) {
                    tracing::debug!(err = %describe(&err), "cannot get in line; re-checking by expiry");
                    conn.hears = false;
                }
                Ok(false)
            }
            Ok(Err(_)) | Err(_) => Err(()),
        }
    }

    /// Leaves the line after taking the lock: stops listening and lets the next waiter be
    /// first. On failure the session is dropped, which does both on the server.
    pub(super) async fn leave_line(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        let Some(key) = conn.ticket else {
            self.conn = Some(conn);
            return;
        };
        let sql = format!("UNLISTEN {CHANNEL}; SELECT pg_advisory_unlock({TICKET_CLASS}, {key})");
        if let Ok(Ok(())) =
            tokio::time::timeout(STATEMENT_TIMEOUT, conn.client.batch_execute(&sql)).await
        {
            conn.ticket = None;
            conn.listening = false;
            self.conn = Some(conn);
        }
    }
}

impl PostgresBackend {
    /// Whether `conn` hears a notification that another session sends while `conn` sits idle,
    /// as a release's would be: once per session, at the cost of one short-lived second session.
    /// On a channel of its own, so that no other waiter hears it. No (a transaction-pooling
    /// proxy, or no answer within [`PROBE_WAIT`]): the waiter keeps re-checking every
    /// [`super::RECHECK`]. `None`: the probe itself got no answer (no second session within the
    /// connect timeout, or a statement without an answer), which says nothing about the session.
    async fn hears_others(&self, conn: &mut Conn) -> Option<bool> {
        let tag = random::secret().ok()?;
        // The tag is hex: nothing to quote.
        let channel = format!("{PROBE_CHANNEL}{tag}");
        if !answered(conn, &format!("LISTEN {channel}")).await {
            return None;
        }
        // The connect has its own bound: a login can take a while on a busy client or server.
        let sent = match self.target.connect().await {
            Ok(other) => {
                let notify = format!("NOTIFY {channel}, '{tag}'");
                tokio::time::timeout(STATEMENT_TIMEOUT, other.client.batch_execute(&notify))
                    .await
                    .is_ok_and(|done| done.is_ok())
            }
            Err(err) => {
                tracing::debug!(%err, "cannot open a session to check that notifications arrive");
                false
            }
        };
        let heard = sent && {
            let hear = async {
                while let Some(payload) = conn.released.recv().await {
                    if payload == tag {
                        return true;
                    }
                }
                false
            };
            tokio::time::timeout(PROBE_WAIT, hear)
                .await
                .unwrap_or(false)
        };
        if !answered(conn, &format!("UNLISTEN {channel}")).await || !sent {
            return None;
        }
        Some(heard)
    }
}

/// Runs `sql` on `conn`; whether it succeeded within [`STATEMENT_TIMEOUT`].
async fn answered(conn: &Conn, sql: &str) -> bool {
    matches!(
        tokio::time::timeout(STATEMENT_TIMEOUT, conn.client.batch_execute(sql)).await,
        Ok(Ok(()))
    )
}

/// The key of the line of waiters for a lock: the table (two tables hold two sets of locks)
/// and the lock name, hashed (FNV-1a) to the second half of a two-key advisory lock whose first
/// half is [`TICKET_CLASS`]. Two locks whose keys collide share one line: a waiter first for one
/// holds up the other's, which then re-check every [`LINE_WAIT`].
fn ticket_key(table: &str, name: &LockName) -> i32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in table.bytes().chain([0]).chain(name.as_str().bytes()) {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    i32::from_ne_bytes(hash.to_ne_bytes())
}

/// Whether an error says the session is gone rather than that the statement failed: the client
/// found it closed, or the server ended it (pg_terminate_backend, a restart) with a FATAL error
/// that arrived as the answer to our statement.
fn session_ended(err: &tokio_postgres::Error) -> bool {
    err.is_closed()
        || err
            .as_db_error()
            .is_some_and(|db| matches!(db.severity(), "FATAL" | "PANIC"))
}

/// Why a statement failed.
pub(super) enum QueryError {
    Connect(ConnectError),
    Client(tokio_postgres::Error),
    TimedOut,
}
