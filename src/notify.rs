//! systemd's notification protocol (sd_notify), without libsystemd.
//!
//! When `NOTIFY_SOCKET` is set, elect sends `READY=1` once the lease is held and the job started,
//! `STATUS=` lines while it waits and holds, and `WATCHDOG=1` after each successful renew (only
//! when systemd asked for it with `WATCHDOG_USEC`), so that `WatchdogSec=` restarts a unit whose
//! lease keeping is stuck. The job does not inherit `NOTIFY_SOCKET`: elect speaks for the unit.

use std::os::unix::net::{SocketAddr, UnixDatagram};

#[derive(Debug, Default)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    /// Whether systemd watches this unit (`WATCHDOG_USEC` set, and `WATCHDOG_PID` unset or ours).
    watchdog: bool,
}

impl Notifier {
    pub fn from_env() -> Self {
        let Some(path) = std::env::var_os("NOTIFY_SOCKET").filter(|p| !p.is_empty()) else {
            return Self::default();
        };
        let path = path.to_string_lossy().into_owned();
        let addr = match path.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name.as_bytes())
            }
            None => SocketAddr::from_pathname(&path),
        };
        let target = match (UnixDatagram::unbound(), addr) {
            (Ok(socket), Ok(addr)) => Some((socket, addr)),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!("NOTIFY_SOCKET={path} is unusable ({e}); not notifying systemd");
                None
            }
        };
        let ours = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            .is_none_or(|pid| pid == std::process::id());
        let watchdog = ours && std::env::var_os("WATCHDOG_USEC").is_some();
        Self { target, watchdog }
    }

    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={}", crate::show::text(status)));
    }

    /// The status may name a holder from the backend: escaped, so that a newline in it cannot
    /// add an assignment of its own (`MAINPID=`, `READY=1`) to the notification.
    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={}", crate::show::text(status)));
    }

    /// A renew succeeded.
    pub fn alive(&self) {
        if self.watchdog {
            self.send("WATCHDOG=1");
        }
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }

    fn send(&self, message: &str) {
        if let Some((socket, addr)) = &self.target {
            if let Err(e) = socket.send_to_addr(message.as_bytes(), addr) {
                tracing::debug!("systemd notification failed: {e}");
            }
        }
    }
}
