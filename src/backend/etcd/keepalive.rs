//! One LeaseKeepAlive request and its response at a time, on a stream kept open between calls.
//!
//! etcd keeps a lease alive through a bidirectional stream: each request on it resets the lease's
//! ttl on the server, each response says the new ttl (0: the lease is gone). Opening the stream
//! (`lease_keep_alive`) sends the first request and reads its response; later calls send one
//! request and read one response on the open stream.
//!
//! A response must be matched to the request of the same call: the holder's deadline is counted
//! from the time *this* request was sent. A call that was cancelled (an outer timeout dropped it)
//! may leave its response in the stream, and reading that stale response would report a renewal
//! that never reached the server. So the stream is thrown away unless the previous call read its
//! own response, and the next call opens a fresh one.

use etcd_client::{Client, LeaseKeepAliveStream, LeaseKeeper};

use super::{describe, REQUEST_TIMEOUT};
use crate::backend::{BackendError, Result};

/// What the server said about the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Alive {
    /// The ttl was reset.
    Yes,
    /// The lease expired or was revoked: its keys are gone.
    Gone,
}

pub(super) struct KeepAlive {
    id: i64,
    stream: Option<(LeaseKeeper, LeaseKeepAliveStream)>,
    /// False from sending a request until its response is read: a stream left in that state by a
    /// cancelled call may hold a stale response.
    in_step: bool,
}

impl KeepAlive {
    pub fn new(id: i64) -> Self {
        Self {
            id,
            stream: None,
            in_step: false,
        }
    }

    pub fn id(&self) -> i64 {
        self.id
    }

    /// Sends one keepalive and reads its answer, within [`REQUEST_TIMEOUT`].
    pub async fn once(&mut self, client: &mut Client) -> Result<Alive> {
        if self.in_step {
            self.stream = None;
        }
        self.in_step = true;
        let result = tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(client)).await;
        self.in_step = false;
        match result {
            Ok(Ok(alive)) => Ok(alive),
            Ok(Err(err)) => {
                self.stream = None;
                Err(err)
            }
            Err(_) => {
                self.stream = None;
                Err(BackendError::Unavailable(format!(
                    "lease keepalive: etcd did not answer within {}s",
                    REQUEST_TIMEOUT.as_secs()
                )))
            }
        }
    }

    async fn exchange(&mut self, client: &mut Client) -> Result<Alive> {
        if let Some((keeper, stream)) = &mut self.stream {
            let sent = keeper.keep_alive().await;
            let answer = match sent {
                Ok(()) => stream.message().await,
                Err(e) => Err(e),
            };
            match answer {
                Ok(Some(resp)) if resp.id() == self.id => {
                    return Ok(if resp.ttl() > 0 {
                        Alive::Yes
                    } else {
                        Alive::Gone
                    });
                }
                // The stream broke (the endpoint went away, a leader change): open a new one
                // below, which may reach another endpoint. The request on the broken stream got
                // no answer, so nothing stale can be read from the new one.
                _ => self.stream = None,
            }
        }
        match client.lease_keep_alive(self.id).await {
            Ok(pair) => {
                self.stream = Some(pair);
                Ok(Alive::Yes)
            }
            // The client reports a first answer with ttl 0 as this error; a broken stream is
            // another kind. Ask the server which it was rather than parse the message.
            Err(etcd_client::Error::LeaseKeepAliveError(_)) => self.ask_time_to_live(client).await,
            Err(etcd_client::Error::GRpcStatus(status))
                if status.code() == tonic::Code::NotFound =>
            {
                Ok(Alive::Gone)
            }
            Err(e) => Err(BackendError::Unavailable(format!(
                "lease keepalive: {}",
                describe(&e)
            ))),
        }
    }

    async fn ask_time_to_live(&self, client: &mut Client) -> Result<Alive> {
        match client.lease_time_to_live(self.id, None).await {
            // Alive, but this keepalive did not reach it: no renewal to report.
            Ok(resp) if resp.ttl() > 0 => Err(BackendError::Unavailable(
                "lease keepalive: the keepalive stream failed".into(),
            )),
            Ok(_) => Ok(Alive::Gone),
            Err(etcd_client::Error::GRpcStatus(status))
                if status.code() == tonic::Code::NotFound =>
            {
                Ok(Alive::Gone)
            }
            Err(e) => Err(BackendError::Unavailable(format!(
                "lease keepalive: {}",
                describe(&e)
            ))),
        }
    }
}
