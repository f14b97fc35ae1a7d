//! `elect release --lock NAME --token N`: an operator frees a lock whose holder is known dead,
//! and only if its fencing token is still N (compare-and-delete on the backend), so that a lock
//! a new holder took in the meantime is never touched.
//!
//! Exit 0 released, 3 free already, 75 held under another token (or not releasable), 69 backend
//! unavailable.

use crate::backend::{AnyBackend, Backend, ForcedRelease};
use crate::config::BackendConfig;
use crate::exit::{code, Failure};
use crate::lease::{FencingToken, LockName};

pub fn release(backend: BackendConfig, lock: LockName, token: FencingToken) -> Result<u8, Failure> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(code::INTERNAL, format!("cannot start: {e}")))?;
    runtime.block_on(async {
        let mut opened = AnyBackend::open(backend.url.as_deref(), &backend.options)
            .await
            .map_err(|e| e.into_failure(&backend.describe()))?;
        let describe = opened.describe().to_owned();
        let found = opened
            .force_release(&lock, token)
            .await
            .map_err(|e| e.into_failure(&describe))?;
        match found {
            ForcedRelease::Released => {
                println!("released lock {lock} (token {token}) on {describe}");
                Ok(code::OK)
            }
            ForcedRelease::NotHeld => {
                println!("lock {lock} is not held on {describe}; nothing to release");
                Ok(code::FREE)
            }
            ForcedRelease::Mismatch(holder) => Err(Failure::new(
                code::CONFLICT,
                format!(
                    "lock {lock} is held by {} now, not under token {token}; nothing released \
                     (backend {describe})",
                    holder.map_or_else(|| "another process".to_owned(), |h| h.to_string())
                ),
            )),
            ForcedRelease::Refused(why) => Err(Failure::new(
                code::CONFLICT,
                format!("lock {lock} cannot be released here: {why} (backend {describe})"),
            )),
        }
    })
}
