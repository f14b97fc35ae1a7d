//! An acquire whose answer never came may have taken a lease under its secret: settling deletes
//! that lease (compare-and-delete) and leaves a void marker, so that the request, should it
//! reach the server only now, takes nothing. On a new connection, since the old one is in doubt;
//! from `Drop`, on a thread of its own.

use std::time::Duration;

use ::redis::RedisError;

use super::conn::Conn;
use super::error::describe;
use super::scripts::{self, SCRIPTS};
use super::{millis, RedisBackend};
use crate::backend::settling;
use crate::lease::LockName;

/// An acquire whose outcome is unknown.
#[derive(Debug, Clone)]
pub(super) struct Unsettled {
    pub(super) name: LockName,
    pub(super) secret: String,
    pub(super) places: u32,
    pub(super) ttl: Duration,
}

/// How long an acquire that gives up may spend settling the lease its lost request may have
/// taken; past that, dropping the backend tries once more, and then the ttl applies.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(2);

impl RedisBackend {
    /// Undoes an acquire that was not acknowledged by enough replicas: the same compare-and-delete
    /// as for a lost answer, on the connection that took it; if that fails, it is settled as a
    /// lost answer would be.
    pub(super) async fn undo(&mut self, taken: Unsettled) {
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
    pub(super) async fn settle(&mut self) {
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
    /// Settles an acquire whose answer never came (see [`settling`]).
    fn drop(&mut self) {
        let Some(unsettled) = self.unsettled.take() else {
            return;
        };
        let target = self.target.clone();
        settling::on_drop("redis-settle", move || async move {
            if let Ok(mut conn) = target.connect().await {
                let _ = abandon(&mut conn, &unsettled).await;
            }
        });
    }
}
