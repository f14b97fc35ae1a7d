//! Settling an acquire whose answer never came when the backend is dropped with it (the
//! acquire's future was dropped: a signal, the `--wait` bound), so that the lease it may have
//! taken does not keep every contender out until its ttl ends.
//!
//! The backend's connection cannot be used there: it is driven by the runtime that is running
//! the drop, or is already gone. So a thread of its own, with a runtime of its own, connects
//! afresh and settles, and the drop waits for it at most [`DROP_SETTLE_TIMEOUT`]; past that the
//! lease expires by its ttl.

use std::future::Future;
use std::time::Duration;

/// How long dropping a backend may take to settle an unfinished acquire.
pub const DROP_SETTLE_TIMEOUT: Duration = Duration::from_secs(1);

/// Runs the future `settle` makes on a thread named `thread`, for at most
/// [`DROP_SETTLE_TIMEOUT`], and waits for it.
pub fn on_drop<F>(thread: &str, settle: impl FnOnce() -> F + Send + 'static)
where
    F: Future<Output = ()>,
{
    let (done, finished) = std::sync::mpsc::channel();
    let settler = std::thread::Builder::new()
        .name(thread.into())
        .spawn(move || {
            if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                runtime.block_on(async {
                    let _ = tokio::time::timeout(DROP_SETTLE_TIMEOUT, settle()).await;
                });
            }
            let _ = done.send(());
        });
    if settler.is_ok() {
        let _ = finished.recv_timeout(DROP_SETTLE_TIMEOUT + Duration::from_millis(100));
    }
}
