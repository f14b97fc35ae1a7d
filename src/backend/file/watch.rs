//! inotify watches of waiters: on the lock directory (a waiter for one of several places), and on
//! the lock file a waiter is blocked on.
//!
//! A waiter watches the file it waits on (through `/proc/self/fd`, so that the watch is on that
//! inode whatever the path names by then) for `IN_ATTRIB` (its link count fell: deleted, or
//! replaced by a rename over it), `IN_MOVE_SELF` and `IN_DELETE_SELF`, and the directory for a
//! file created, moved in, moved out or deleted, and for the directory itself moved or deleted.
//! Any event makes it check again whether the path still names that file.
//!
//! Holders do not use inotify: closing an inotify instance that has watches waits for a grace
//! period of the kernel's (fsnotify frees the marks under SRCU: 5 to 20 ms on a virtual machine),
//! and a holder's instance would close as its run ends, every run. A waiter's closes while it
//! takes over, which is why a watch is retired rather than closed (see `Drop`).

use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::Path;
use std::time::Duration;

use nix::sys::inotify::{AddWatchFlags, InitFlags, WatchDescriptor};
use tokio::io::unix::AsyncFd;

use crate::backend::{BackendError, Result};

/// An inotify instance registered with the runtime, and its watches.
pub struct Watch {
    /// `None` only once retired.
    fd: Option<AsyncFd<Inotify>>,
    watches: Vec<WatchDescriptor>,
}

pub struct Inotify(nix::sys::inotify::Inotify);

impl AsRawFd for Inotify {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Watch")
    }
}

impl Watch {
    /// A waiter's watch: wakes when a lock file in `dir` is closed, deleted or moved in.
    pub fn directory(dir: &Path) -> Result<Self> {
        Self::new(&[(
            dir,
            AddWatchFlags::IN_CLOSE_WRITE | AddWatchFlags::IN_DELETE | AddWatchFlags::IN_MOVED_TO,
        )])
    }

    /// A waiter's watch on the open lock file `fd` in `dir`.
    pub fn lock_file(fd: RawFd, dir: &Path) -> Result<Self> {
        let own = format!("/proc/self/fd/{fd}");
        Self::new(&[
            (
                Path::new(&own),
                AddWatchFlags::IN_ATTRIB
                    | AddWatchFlags::IN_MOVE_SELF
                    | AddWatchFlags::IN_DELETE_SELF,
            ),
            (
                dir,
                AddWatchFlags::IN_CREATE
                    | AddWatchFlags::IN_MOVED_TO
                    | AddWatchFlags::IN_MOVED_FROM
                    | AddWatchFlags::IN_DELETE
                    | AddWatchFlags::IN_MOVE_SELF
                    | AddWatchFlags::IN_DELETE_SELF,
            ),
        ])
    }

    fn new(watches: &[(&Path, AddWatchFlags)]) -> Result<Self> {
        let inotify =
            nix::sys::inotify::Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
                .map_err(|e| BackendError::unavailable("inotify", e))?;
        let mut added = Vec::with_capacity(watches.len());
        for (path, flags) in watches {
            let watch = inotify.add_watch(*path, *flags).map_err(|e| {
                BackendError::unavailable(format_args!("inotify on {}", path.display()), e)
            })?;
            added.push(watch);
        }
        // SAFETY: the inotify descriptor is owned by the `Inotify` inside the AsyncFd, so it
        // stays open and the same for as long as the AsyncFd lives.
        let registered = unsafe {
            AsyncFd::register_with_interest(Inotify(inotify), tokio::io::Interest::READABLE)
        };
        registered
            .map(|fd| Self {
                fd: Some(fd),
                watches: added,
            })
            .map_err(|e| BackendError::unavailable("inotify", e.into_parts().1))
    }

    /// Returns after an event, or after `at_most`.
    pub async fn changed(&self, at_most: Duration) -> Result<()> {
        match tokio::time::timeout(at_most, self.event()).await {
            Ok(result) => result,
            Err(_) => Ok(()),
        }
    }

    /// Returns after the next event.
    pub async fn event(&self) -> Result<()> {
        let fd = self.fd.as_ref().expect("a live watch has its descriptor");
        let mut guard = fd
            .readable()
            .await
            .map_err(|e| BackendError::unavailable("inotify", e))?;
        // Drain every queued event; one look answers them all.
        while guard.get_inner().0.read_events().is_ok() {}
        guard.clear_ready();
        Ok(())
    }
}

impl Drop for Watch {
    /// Removes the watches and leaves the instance open until the process exits. Closing an
    /// instance waits until the kernel has freed its watches, which takes a grace period; removed
    /// first, they are freed in the background, and the close at exit finds nothing left to wait
    /// for. One descriptor per watch made, and a process makes only a few.
    fn drop(&mut self) {
        if let Some(fd) = self.fd.take() {
            let inotify = fd.into_inner();
            for watch in self.watches.drain(..) {
                let _ = inotify.0.rm_watch(watch);
            }
            std::mem::forget(inotify);
        }
    }
}
