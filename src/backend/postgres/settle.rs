//! An acquire whose answer never came may hold a place under its secret: settling frees that
//! place, on a new session (the old one went with the call that failed), or from `Drop`, on a
//! thread of its own.

use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::types::{ToSql, Type};

use super::connect::Target;
use super::{PostgresBackend, MOST_PLACES};
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
/// How long dropping the backend may take to settle an unfinished acquire.
const DROP_SETTLE_TIMEOUT: Duration = Duration::from_secs(1);
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
    /// Settles an acquire whose answer never came (its future was dropped: a signal, the
    /// `--wait` bound), so that the place it may have taken does not keep every contender out
    /// until its ttl ends.
    ///
    /// The session cannot be used here: it is driven by the runtime that is running this drop,
    /// or is already gone. So a thread of its own connects afresh and settles, and the drop
    /// waits for it at most [`DROP_SETTLE_TIMEOUT`]; past that the lease expires by its ttl.
    fn drop(&mut self) {
        let Some(unsettled) = self.unsettled.take() else {
            return;
        };
        let target = Target::clone(&self.target);
        let sql = self.statements.abandon.clone();
        let (done, finished) = std::sync::mpsc::channel();
        let settler = std::thread::Builder::new()
            .name("postgres-settle".into())
            .spawn(move || {
                if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    runtime.block_on(async {
                        let _ = tokio::time::timeout(DROP_SETTLE_TIMEOUT, async {
                            if let Ok(conn) = target.connect().await {
                                let _ = conn
                                    .client
                                    .query_typed(&sql, &abandon_params(&unsettled))
                                    .await;
                            }
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

/// The parameters of the abandon statement: the lock, how many places to look at, the secret.
fn abandon_params(unsettled: &Unsettled) -> [(&(dyn ToSql + Sync), Type); 3] {
    [
        (&unsettled.row, Type::TEXT),
        (&MOST_PLACES, Type::INT4),
        (&unsettled.secret, Type::TEXT),
    ]
}
