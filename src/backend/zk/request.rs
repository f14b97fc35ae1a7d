//! One request to ZooKeeper: its own timeout, and errors that say what was being done.

use std::future::Future;

use super::REQUEST_TIMEOUT;
use crate::backend::{BackendError, Result};

/// How a request that may find its node gone ended.
pub enum Missing {
    /// The node does not exist (`NoNode`).
    Gone,
    Failed(BackendError),
}

/// Runs one request within [`REQUEST_TIMEOUT`]; `NoNode` apart, naming what was being done on
/// any other failure.
pub async fn timed<T>(
    what: &str,
    request: impl Future<Output = std::result::Result<T, zookeeper_client::Error>>,
) -> std::result::Result<T, Missing> {
    match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(zookeeper_client::Error::NoNode)) => Err(Missing::Gone),
        Ok(Err(err)) => Err(Missing::Failed(request_error(what, &err))),
        Err(_) => Err(Missing::Failed(BackendError::Unavailable(format!(
            "{what}: ZooKeeper did not answer within {}s",
            REQUEST_TIMEOUT.as_secs()
        )))),
    }
}

/// [`timed`] for a request where a missing node is an error too.
pub async fn request<T>(
    what: &str,
    request: impl Future<Output = std::result::Result<T, zookeeper_client::Error>>,
) -> Result<T> {
    match timed(what, request).await {
        Ok(value) => Ok(value),
        Err(Missing::Gone) => Err(BackendError::Unavailable(format!(
            "{what}: the node does not exist"
        ))),
        Err(Missing::Failed(err)) => Err(err),
    }
}

pub fn request_error(what: &str, err: &zookeeper_client::Error) -> BackendError {
    BackendError::Unavailable(format!("{what}: {}", describe(err)))
}

/// The words for an error of the client, with what to do where there is something to do.
pub fn describe(err: &zookeeper_client::Error) -> String {
    use zookeeper_client::Error as E;
    match err {
        E::NoAuth => "not authorized (the node's ACL refuses these credentials: check the \
                      user and password of the URL)"
            .into(),
        E::AuthFailed => "authentication failed".into(),
        E::NoHosts => "no server answered".into(),
        E::SessionExpired => "the session expired".into(),
        E::ConnectionLoss => "the connection was lost".into(),
        other => other.to_string(),
    }
}

/// Why a request's error means the session, and so the lease, is gone.
pub fn session_end(err: &zookeeper_client::Error) -> Option<String> {
    use zookeeper_client::Error as E;
    match err {
        E::SessionExpired => {
            Some("the ZooKeeper session expired, and its lock node with it".into())
        }
        E::AuthFailed => Some("ZooKeeper refused the session's credentials".into()),
        E::ClientClosed => Some("the ZooKeeper session was closed".into()),
        _ => None,
    }
}
