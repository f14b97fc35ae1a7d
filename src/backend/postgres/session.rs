//! The session behind the backend: opened on demand, every statement bounded in time, and
//! replaced after anything that leaves it in doubt; and the waiting on it for releases.

use std::time::Duration;

use tokio_postgres::Row;

use super::connect::{describe, Conn, ConnectError, STATEMENT_TIMEOUT};
use super::sql::CHANNEL;
use super::{Params, PostgresBackend};
use crate::backend::{BackendError, Result};
use crate::clock::BootTime;
use crate::lease::LockName;

/// How long a waiter whose session does not listen sleeps before it tries again (and listens).
const UNHEARD_RECHECK: Duration = Duration::from_millis(100);
/// How long a listening session may take to hear another session's notification (see
/// [`PostgresBackend::hears_others`]): a direct session hears it within milliseconds.
const PROBE_WAIT: Duration = Duration::from_millis(500);

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
            QueryError::TimedOut => self.unavailable(
                doing,
                format_args!(
                    "no answer within {}s (is the server stopped or overloaded?)",
                    STATEMENT_TIMEOUT.as_secs()
                ),
            ),
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

    /// Makes sure the session listens for releases. A pooler or server that refuses LISTEN
    /// leaves the waiter with expiry-timed retries, which is slower but still correct.
    pub(super) async fn listen(&mut self) {
        let Ok(mut conn) = self.take_connection().await else {
            return;
        };
        if !conn.listening {
            let listen = format!("LISTEN {CHANNEL}");
            match tokio::time::timeout(STATEMENT_TIMEOUT, conn.client.batch_execute(&listen)).await
            {
                Ok(Ok(())) => conn.hears = self.hears_others(&mut conn).await,
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
}

impl PostgresBackend {
    /// Whether `conn`, listening, hears a notification that another session sends while `conn`
    /// sits idle, as a release's would be: once per session, at the cost of one short-lived
    /// second session. No (a transaction-pooling proxy, or no answer within [`PROBE_WAIT`]):
    /// the waiter keeps re-checking every [`super::RECHECK`].
    async fn hears_others(&self, conn: &mut Conn) -> bool {
        let Ok(tag) = crate::backend::random::secret() else {
            return false;
        };
        let tag = format!("probe {tag}");
        let sent = async {
            let other = self.target.connect().await.ok()?;
            // The tag is hex: nothing to quote.
            let notify = format!("NOTIFY {CHANNEL}, '{tag}'");
            other.client.batch_execute(&notify).await.ok()
        };
        if tokio::time::timeout(STATEMENT_TIMEOUT, sent)
            .await
            .ok()
            .flatten()
            .is_none()
        {
            return false;
        }
        let heard = async {
            while let Some(payload) = conn.released.recv().await {
                if payload == tag {
                    return true;
                }
            }
            false
        };
        tokio::time::timeout(PROBE_WAIT, heard)
            .await
            .unwrap_or(false)
    }
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
