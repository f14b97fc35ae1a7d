//! An acquire whose answer never came may hold a place under its secret: settling frees that
//! place, on a new session (the old one went with the call that failed), or from `Drop`, on a
//! thread of its own.

use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::types::{ToSql, Type};

use super::connect::Target;
use super::{PostgresBackend, MOST_PLACES};
use crate::backend::settling;
use crate::lease::LockName;

/// An acquire whose outcome is unknown.
#[derive(Debug, Clone)]
pub(super) struct Unsettled {
    pub(super) name: LockName,
    /// The lock name as a statement parameter.
    pub(super) row: String,
    pub(super) secret: String,
}

/// How long an acquire that gives up may spend settling the place its lost request may have
/// taken; past that, dropping the backend tries once more, and then the ttl applies.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(3);

impl PostgresBackend {
    /// Settles an acquire whose answer never came: frees the place it may have taken, if that
    /// still holds its secret. On a new session (the old one is dropped with the call that
    /// failed). Bounded; one that cannot settle now is left for the next acquire or for the drop.
    pub(super) async fn settle(&mut self) {
        let Some(unsettled) = self.unsettled.clone() else {
            return;
        };
        let statements = Arc::clone(&self.statements);
        let settled = tokio::time::timeout(
            SETTLE_TIMEOUT,
            self.query_raw(&statements.abandon, &abandon_params(&unsettled)),
        )
        .await;
        match settled {
            Ok(Ok((rows, _))) => {
                self.unsettled = None;
                if !rows.is_empty() {
                    tracing::info!(lock = %unsettled.name, "released the lease that an acquire without an answer had taken");
                }
            }
            Ok(Err(err)) => {
                let err = self.failed("release", err);
                tracing::warn!(lock = %unsettled.name, "an acquire got no answer, and the lease it may have taken cannot be released now ({err}); trying again on exit, else it expires by its ttl");
            }
            Err(_) => tracing::warn!(
                lock = %unsettled.name,
                "an acquire got no answer, and releasing the lease it may have taken got none either; trying again on exit, else it expires by its ttl"
            ),
        }
    }
}

impl Drop for PostgresBackend {
    /// Settles an acquire whose answer never came (see [`settling`]).
    fn drop(&mut self) {
        let Some(unsettled) = self.unsettled.take() else {
            return;
        };
        let target = Target::clone(&self.target);
        let sql = self.statements.abandon.clone();
        settling::on_drop("postgres-settle", move || async move {
            if let Ok(conn) = target.connect().await {
                let _ = conn
                    .client
                    .query_typed(&sql, &abandon_params(&unsettled))
                    .await;
            }
        });
    }
}

/// The parameters of the abandon statement: the lock, how many places to look at, the secret.
fn abandon_params(unsettled: &Unsettled) -> [(&(dyn ToSql + Sync), Type); 3] {
    [
        (&unsettled.row, Type::TEXT),
        (&MOST_PLACES, Type::INT4),
        (&unsettled.secret, Type::TEXT),
    ]
}
