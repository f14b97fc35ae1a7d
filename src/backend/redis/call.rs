//! One request on the shared connection: when the connection is replaced, when a request is
//! sent once more, and how a failure reads.

use ::redis::RedisError;

use super::conn::Conn;
use super::error::{breaks_connection, describe, is_demoted};
use super::RedisBackend;
use crate::backend::{BackendError, Result};
use crate::lease::LockName;

impl RedisBackend {
    pub(super) async fn connection(&mut self) -> std::result::Result<Conn, RedisError> {
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
    pub(super) fn unavailable(&mut self, doing: &str, err: &RedisError) -> BackendError {
        if breaks_connection(err) {
            self.conn = None;
        }
        self.failed(doing, err)
    }

    /// A client error as a one-line `Unavailable`, leaving the shared connection alone.
    pub(super) fn failed(&self, doing: &str, err: &RedisError) -> BackendError {
        BackendError::Unavailable(format!(
            "{doing} (Redis at {}): {}",
            self.target.addr,
            describe(err)
        ))
    }

    /// An answer a script cannot give.
    pub(super) fn failed_reply(&self, doing: &str, name: &LockName) -> BackendError {
        BackendError::Unavailable(format!(
            "{doing} (Redis at {}): unexpected answer for lock {name}",
            self.target.addr
        ))
    }

    /// With `?wait=N`: whether N replicas have the write just made to `key` (`WAIT`, on the
    /// connection that made it). Fewer, or no answer, is an error: the write does not count.
    pub(super) async fn acknowledge(&mut self, doing: &str, key: &str) -> Result<()> {
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
    pub(super) async fn send<T>(
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
    pub(super) async fn invoke<T: ::redis::FromRedisValue>(
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
    pub(super) async fn invoke_again<T: ::redis::FromRedisValue>(
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
            Err(e) if is_demoted(&e) => {
                tracing::info!(error = %describe(&e), "{doing}: the node is no longer the primary; once more on the new one");
                self.conn = None;
            }
            Err(e) => return Err(self.unavailable(doing, &e)),
        }
        self.invoke(doing, call).await
    }
}
