//! The release by the watchdog: when elect alone dies (SIGKILL, the OOM killer) while it holds a
//! lease whose backend would keep it until the ttl, the lease is released as soon as no process
//! of the job is left, so that a standby takes over in the job's stop time rather than the ttl.
//!
//! # How it works
//! - Once elect holds such a lease, and before it starts the job, it sends the watchdog the
//!   lease's [`Identity`] (order `hold`): the backend URL with its credentials, the TLS files,
//!   the lock, the secret, the place and the holder record. The watchdog keeps the bytes without
//!   reading them: it stays single-threaded and free of network code.
//! - elect's own ending sends `forget` before it hangs up: elect releases the lease itself.
//! - When elect's socket ends without a `forget` (elect died) and no process of the job is left,
//!   the watchdog forks and `fexecve`s the binary it opened at start-up (`/proc/self/exe`, so
//!   that a binary replaced on disk since does not matter), with argv[0] [`ARGV0`] and the
//!   identity on its stdin, a pipe: never in argv or the environment, which `ps` and other
//!   users may read (see `watchdog::releaser`).
//! - That process ([`serve`], here) releases with the same compare-and-delete as elect's own
//!   release, within [`LIMIT`]: a backend it cannot reach in time keeps the lease until its
//!   ttl, as before. A lease that was lost and taken by another holder carries another secret
//!   (or lease id, or row token): the release changes nothing then.
//! - A wait that leaves a lease on the server (etcd's queue key, which stands ahead of every
//!   later waiter) is handed over the same way while elect waits, and revoked should elect die
//!   then (see `AnyBackend::announce_queued`).
//! - Nothing of it delays the job's stop: the watchdog forks the release only after the stop,
//!   and does not wait for it.
//!
//! The file backend needs none of this: the kernel drops its lock with the last process.

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backend::{AnyBackend, Backend, BackendOptions};
use crate::clock::BootTime;
use crate::config::BackendConfig;
use crate::lease::{HolderInfo, Lease, LockName};

/// The argv[0] of the release mode: what `ps` shows, and how `main` knows the mode. Not a
/// subcommand, so that it stays out of `--help`, the man page and the completions.
pub const ARGV0: &str = "elect: release after elect died";

/// How long the release mode tries before it leaves the lease to its ttl.
pub const LIMIT: Duration = Duration::from_millis(2500);

/// The longest identity elect hands to the watchdog; a longer one (a very long URL) is not
/// handed over, and the ttl applies. Well under the watchdog's order buffer.
const MAX_LEN: usize = 4096;

/// What the release mode needs to release one lease, and nothing more.
#[derive(Debug, Serialize, Deserialize)]
pub struct Identity {
    /// The backend URL as given, credentials included.
    url: String,
    tls_ca: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    lock: String,
    secret: String,
    slot: u32,
    holder: HolderInfo,
}

impl Identity {
    /// The identity of `lease`, encoded for the `hold` order; `None` for the file backend (or a
    /// URL too long to hand over).
    pub fn encode(backend: &BackendConfig, lease: &Lease) -> Option<Vec<u8>> {
        let url = backend.url.clone()?;
        let identity = Identity {
            url,
            tls_ca: backend.options.tls_ca.clone(),
            tls_cert: backend.options.tls_cert.clone(),
            tls_key: backend.options.tls_key.clone(),
            lock: lease.name.to_string(),
            secret: lease.secret.clone(),
            slot: lease.slot,
            holder: lease.holder.clone(),
        };
        serde_json::to_vec(&identity)
            .ok()
            .filter(|bytes| bytes.len() <= MAX_LEN)
    }

    fn lease(self) -> Option<(BackendOptions, Lease)> {
        let options = BackendOptions {
            tls_ca: self.tls_ca,
            tls_cert: self.tls_cert,
            tls_key: self.tls_key,
        };
        let lease = Lease {
            name: LockName::new(&self.lock).ok()?,
            holder: self.holder,
            sent_at: BootTime::now(),
            secret: self.secret,
            kernel_lock: None,
            slot: self.slot,
        };
        Some((options, lease))
    }
}

/// The release mode: reads an [`Identity`] on stdin, releases that lease, and says on stderr
/// (elect's) what it did. Exit 0 when the compare-and-delete went through (whether or not the
/// lease was still this holder's), 69 when the backend could not be reached in time, 2 for an
/// identity it cannot read.
pub fn serve() -> u8 {
    // Named like the watchdog (`lease-watchdog`), not `elect`; argv[0] already says what it is.
    let _ = nix::sys::prctl::set_name(c"lease-release");
    let Some((url, (options, lease))) = read_identity() else {
        eprintln!("elect: error: the release after elect died got no lease to release");
        return crate::exit::code::USAGE;
    };
    let describe = crate::backend::redact(&url);
    // What the backend says (a lease no longer this holder's) goes to elect's stderr too.
    crate::logging::init(&crate::cli::LogArgs {
        quiet: 0,
        verbose: 0,
        log_format: log_format(),
    });
    let released = release_within_limit(&url, &options, &lease);
    let lock = &lease.name;
    let token = lease.token();
    match released {
        Ok(()) => {
            tracing::info!(
                "elect died with a lease on lock {lock} (token {token}); no process of its job \
                 is left, and the lease is released where it was still its own (backend \
                 {describe})"
            );
            crate::exit::code::OK
        }
        Err(e) => {
            tracing::warn!(
                "elect died with a lease on lock {lock} (token {token}); no process of its job \
                 is left, but the lease could not be released ({e}); it expires by its ttl \
                 (backend {describe})"
            );
            crate::exit::code::UNAVAILABLE
        }
    }
}

/// The identity on stdin, read whole (within [`MAX_LEN`]): the backend's URL, its options and
/// the lease.
fn read_identity() -> Option<(String, (BackendOptions, Lease))> {
    let mut bytes = Vec::new();
    std::io::stdin()
        .take(MAX_LEN as u64 + 1)
        .read_to_end(&mut bytes)
        .ok()?;
    let id = serde_json::from_slice::<Identity>(&bytes).ok()?;
    Some((id.url.clone(), id.lease()?))
}

/// Opens the backend and releases the lease, all within [`LIMIT`].
fn release_within_limit(url: &str, options: &BackendOptions, lease: &Lease) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let released = runtime.block_on(async {
        let release = async {
            let mut backend = AnyBackend::open(Some(url), options).await?;
            backend.release(lease, None).await
        };
        match tokio::time::timeout(LIMIT, release).await {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(_) => Err(format!("no answer within {}", crate::timing::Fmt(LIMIT))),
        }
    });
    // A name lookup still blocking a thread must not hold the exit past the bound.
    runtime.shutdown_background();
    released
}

/// elect's log format, from the environment the release inherits.
fn log_format() -> crate::cli::LogFormat {
    match std::env::var("ELECT_LOG_FORMAT").as_deref() {
        Ok("json") => crate::cli::LogFormat::Json,
        _ => crate::cli::LogFormat::Text,
    }
}
