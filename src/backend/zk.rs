//! The ZooKeeper backend: a session, and an ephemeral sequential node in the queue of kazoo's
//! `Lock` recipe.
//!
//! # Node layout
//! The lock `billing` under the default base `/elect` is the node `/elect/billing`. Each
//! contender creates one ephemeral sequential child `/elect/billing/<uuid hex>__lock__<seq>`
//! whose data is elect's holder metadata as JSON; the lowest sequence number holds (see
//! `queue`). This is exactly what kazoo's `Lock("/elect/billing")` does (its data is the
//! identifier it was given, which `status` shows as a holder without metadata), so the two
//! exclude each other and share one first-come first-served queue. Beside the lock's node,
//! never under it: `<name>.last` (the last run) and `<name>.once` (the `--once-per` marker),
//! see `history`.
//!
//! # The lease is the session
//! The node goes when the session that created it ends: closed, or expired by the ensemble when
//! no packet from the client reached it for the session timeout. elect asks for a session
//! timeout equal to `--ttl`. The server grants a timeout between its `minSessionTimeout` and
//! `maxSessionTimeout`, by default 2 and 20 times its `tickTime` (4 s to 40 s with the usual
//! `tickTime=2000`):
//! - granted shorter than `--ttl`: the server could expire the session before elect's deadline,
//!   so elect refuses to take the lock (exit 2), naming the granted timeout;
//! - granted longer: safe (the session outlives the deadline), but a crashed holder's node stays
//!   for the longer time; elect warns.
//!
//! # The safety rule
//! A renewal is one read of the holder's node (`exists`), sent at `s`: its answer proves the
//! session alive when the server received it, after `s`, and the server counts the session's
//! timeout from the last packet it received, so the session cannot expire before `s + ttl`, and
//! the lease keeper's deadline counts from `s` like every backend's. The client library pings by
//! itself in between; a lost connection is not a lost session (the library reconnects, to
//! another server of the ensemble if there is one), but a renewal that cannot get an answer
//! lets the deadline come, and the job is stopped before the session could expire. One caveat,
//! documented in the README: on a follower, the touch reaches the leader (which expires
//! sessions) with the follower's next ping, within half a `tickTime`.
//!
//! An expired session is a lost lease: the renewal's read fails with `SessionExpired`, or
//! [`Backend::lost`] hears it from the library's session events first; either way exit 76.
//! A node that is gone, or owned by another session, is lost too.
//!
//! # Fencing token
//! The creation zxid (`czxid`) of the holder's node: zxids grow with every write to the
//! ensemble (the epoch of the leader in the high 32 bits), are persisted in its log, and never
//! repeat, so a later acquisition of any lock gets a larger token, across restarts and leader
//! changes.
//!
//! # Calls
//! The session is opened lazily: an acquire opens one with its ttl as the session timeout
//! (reopened if a later acquire asks for another ttl); `status` and `release` open one with
//! [`DEFAULT_SESSION`]. Every request has its own timeout ([`REQUEST_TIMEOUT`]).

mod acquire;
pub mod connect;
mod history;
mod node;
mod queue;
mod request;
mod status;

use std::time::Duration;

use zookeeper_client::{Client, CreateMode, SessionState};

use self::connect::Target;
pub use self::request::describe;
use self::request::{request, request_error, session_end, timed, Missing};
use super::{
    AcquireRequest, Backend, BackendError, BackendUrl, Expiry, ForcedRelease, Result, WaitMode,
};
use crate::lease::{Acquire, FencingToken, History, LastRun, Lease, LockName, LockState, Renewal};
use Missing::{Failed, Gone};

pub use self::connect::PASSWORD_VARIABLE;

/// How long one request may take before the call fails.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long opening a session may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The session timeout asked for by calls that hold nothing (`status`, `release`).
pub const DEFAULT_SESSION: Duration = Duration::from_secs(10);
/// How long dropping the backend waits for the nodes of abandoned waits to be deleted.
const DROP_CLEANUP_TIMEOUT: Duration = Duration::from_secs(1);

pub struct ZkBackend {
    target: Target,
    session: Option<Session>,
    describe: String,
    /// Contender nodes (full paths) of acquires that did not finish: an error, or the future
    /// was dropped while waiting (`--wait=DURATION` ran out). They stand in the queue ahead of
    /// later waiters until deleted, so the next call, or dropping the backend, deletes them.
    pending: Vec<String>,
    /// The holder node whose `--once-per` claim wrote the marker: its release removes the
    /// marker unless the run succeeded.
    claimed: Option<String>,
}

/// How a session is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Opening {
    /// One try of every server: a call that fails tells the user at once.
    Once,
    /// Tries side by side until one gets through ([`connect::Target::connect_soon`]): a wait.
    Soon,
}

/// One ZooKeeper session, and the timeout it asked for.
struct Session {
    client: Client,
    asked: Duration,
}

impl std::fmt::Debug for ZkBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZkBackend")
            .field("backend", &self.describe)
            .field("base", &self.target.base)
            .finish_non_exhaustive()
    }
}

impl ZkBackend {
    /// Takes the URL apart; the session is opened by the first call that needs one (an acquire
    /// asks for its own ttl as the session timeout).
    pub async fn open(url: &BackendUrl) -> Result<Self> {
        Ok(Self {
            target: Target::from_url(url)?,
            session: None,
            describe: url.redacted(),
            pending: Vec::new(),
            claimed: None,
        })
    }

    /// The node under which locks live.
    pub fn base(&self) -> &str {
        &self.target.base
    }

    /// The node of a lock: its contenders are its children.
    pub fn lock_path(&self, name: &LockName) -> String {
        format!("{}/{name}", self.target.base)
    }

    /// The node of a lease.
    pub fn node_of(&self, lease: &Lease) -> String {
        format!("{}/{}", self.lock_path(&lease.name), lease.secret)
    }

    /// The client of a live session, opened (again) if there is none, it ended, or it asked for
    /// another timeout than `timeout` (`None`: any will do).
    async fn client(&mut self, timeout: Option<Duration>) -> Result<Client> {
        self.client_opened(timeout, Opening::Once).await
    }

    /// [`ZkBackend::client`], opening a session as `opening` says.
    async fn client_opened(
        &mut self,
        timeout: Option<Duration>,
        opening: Opening,
    ) -> Result<Client> {
        let usable = self.session.as_ref().is_some_and(|s| {
            !s.client.state().is_terminated() && timeout.is_none_or(|t| t == s.asked)
        });
        if !usable {
            let asked = timeout.unwrap_or(DEFAULT_SESSION);
            // The old session closes when its client is dropped, and its nodes go with it.
            self.session = None;
            let client = match opening {
                Opening::Once => self.target.connect(asked).await?,
                Opening::Soon => self.target.connect_soon(asked).await?,
            };
            self.session = Some(Session { client, asked });
        }
        let session = self.session.as_ref().expect("a session was just opened");
        Ok(session.client.clone())
    }

    /// Deletes the nodes of unfinished acquires; one that fails stays for the next call.
    async fn delete_pending(&mut self, client: &Client) {
        let mut left = Vec::new();
        for path in std::mem::take(&mut self.pending) {
            match timed(
                "delete an abandoned place in the queue",
                client.delete(&path, None),
            )
            .await
            {
                Ok(()) | Err(Gone) => {}
                Err(Failed(err)) => {
                    tracing::debug!(error = %err, node = path, "deleting an abandoned queue node failed; trying again later");
                    left.push(path);
                }
            }
        }
        self.pending = left;
    }
}

impl Backend for ZkBackend {
    fn describe(&self) -> &str {
        &self.describe
    }

    fn expiry(&self) -> Expiry {
        Expiry::Ttl
    }

    async fn acquire(&mut self, req: &AcquireRequest, wait: WaitMode) -> Result<Acquire> {
        self.acquire_here(req, wait).await
    }

    async fn renew(&mut self, lease: &Lease) -> Result<Renewal> {
        let Some(session) = &self.session else {
            return Ok(Renewal::Lost("the ZooKeeper session is gone".into()));
        };
        let client = session.client.clone();
        let path = self.node_of(lease);
        let bound = REQUEST_TIMEOUT.min(lease.holder.ttl / 3);
        let answer = match tokio::time::timeout(bound, client.check_stat(&path)).await {
            Ok(answer) => answer,
            Err(_) => {
                return Err(BackendError::Unavailable(format!(
                    "renew: ZooKeeper did not answer within {}",
                    crate::timing::Fmt(bound)
                )))
            }
        };
        match answer {
            Ok(Some(stat))
                if stat.ephemeral_owner == client.session_id().0
                    && token_of(stat.czxid) == lease.token() =>
            {
                Ok(Renewal::Renewed)
            }
            Ok(Some(_)) => Ok(Renewal::Lost(format!(
                "the lock node {path} belongs to another session"
            ))),
            Ok(None) => Ok(Renewal::Lost(format!("the lock node {path} was deleted"))),
            Err(err) => match session_end(&err) {
                Some(why) => Ok(Renewal::Lost(why)),
                None => Err(BackendError::Unavailable(format!(
                    "renew: {}",
                    describe(&err)
                ))),
            },
        }
    }

    async fn lost(&mut self, lease: &Lease) -> String {
        let _ = lease;
        let Some(session) = &self.session else {
            return "the ZooKeeper session is gone".into();
        };
        let mut watcher = session.client.state_watcher();
        let mut state = watcher.peek_state();
        loop {
            match state {
                SessionState::Expired => {
                    return "the ZooKeeper session expired, and its lock node with it".into()
                }
                SessionState::AuthFailed => {
                    return "ZooKeeper refused the session's credentials".into()
                }
                SessionState::Closed => return "the ZooKeeper session was closed".into(),
                _ => state = watcher.changed().await,
            }
        }
    }

    async fn release(&mut self, lease: &Lease, history: Option<&History>) -> Result<()> {
        self.release_here(lease, history).await
    }

    async fn fresh_run(&mut self, name: &LockName) -> Result<Option<LastRun>> {
        let client = self.client(None).await?;
        self.fresh_run_here(&client, name).await
    }

    async fn claim_run(&mut self, lease: &Lease, window: Duration) -> Result<Option<LastRun>> {
        let client = self.client(None).await?;
        self.claim_here(&client, lease, window).await
    }

    async fn inspect(&mut self, name: &LockName) -> Result<LockState> {
        let client = self.client(None).await?;
        self.state_of(&client, name).await
    }

    async fn list(&mut self) -> Result<Vec<LockState>> {
        let client = self.client(None).await?;
        self.list_here(&client).await
    }

    async fn force_release(
        &mut self,
        name: &LockName,
        token: FencingToken,
    ) -> Result<ForcedRelease> {
        let client = self.client(None).await?;
        self.force_release_here(&client, name, token).await
    }
}

impl ZkBackend {
    async fn release_here(&mut self, lease: &Lease, history: Option<&History>) -> Result<()> {
        let client = self.client(None).await?;
        let node = self.node_of(lease);
        // Recorded before the delete, while the node still proves the lease ours; a failure to
        // record must not keep the lock from being released.
        let mut recorded = false;
        if let Some(history) = history {
            match self.record(&client, lease, history).await {
                Ok(done) => recorded = done,
                Err(err) => tracing::warn!(lock = %lease.name, "cannot record the run ({err})"),
            }
        }
        if self.claimed.take_if(|claimed| *claimed == node).is_some() {
            // The claim's unfinished marker goes after a run that did not succeed (the next
            // trigger retries); a success's own marker replaced it.
            let succeeded = history.is_some_and(|h| h.once_per.is_some());
            if !succeeded || !recorded {
                if let Err(err) = self
                    .drop_claim_of(&client, &lease.name, lease.token())
                    .await
                {
                    tracing::warn!(lock = %lease.name, "cannot remove the --once-per claim ({err})");
                }
            }
        }
        match timed("delete the lock node", client.delete(&node, None)).await {
            Ok(()) | Err(Gone) => Ok(()),
            Err(Failed(err)) => Err(err),
        }
    }
}

impl Drop for ZkBackend {
    /// Deletes the nodes of abandoned waits, so that they do not hold up the waiters behind them
    /// until the session expires. Closing the session would delete them too, but the client
    /// closes it from a task of the runtime that is running this drop, or is already gone; so
    /// a thread of its own opens a session and deletes them, and the drop waits for it at most
    /// [`DROP_CLEANUP_TIMEOUT`]. Past that the nodes go when the session expires.
    fn drop(&mut self) {
        let paths = std::mem::take(&mut self.pending);
        if paths.is_empty() {
            return;
        }
        let target = self.target.clone();
        let (done, finished) = std::sync::mpsc::channel();
        let cleaner = std::thread::Builder::new()
            .name("zk-cleanup".into())
            .spawn(move || {
                if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    runtime.block_on(async {
                        let _ = tokio::time::timeout(DROP_CLEANUP_TIMEOUT, async {
                            if let Ok(client) = target.connect(DEFAULT_SESSION).await {
                                for path in paths {
                                    let _ = client.delete(&path, None).await;
                                }
                            }
                        })
                        .await;
                    });
                }
                let _ = done.send(());
            });
        if cleaner.is_ok() {
            let _ = finished.recv_timeout(DROP_CLEANUP_TIMEOUT + Duration::from_millis(100));
        }
    }
}

fn token_of(czxid: i64) -> FencingToken {
    FencingToken(u64::try_from(czxid).unwrap_or(0))
}

/// Persistent nodes elect creates: the lock's node and the history beside it.
fn persistent(target: &Target) -> zookeeper_client::CreateOptions<'static> {
    CreateMode::Persistent.with_acls(target.acls())
}
