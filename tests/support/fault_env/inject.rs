//! The injector: applying one fault to the current holder or to the server.

use std::time::{Duration, Instant};

use super::arena::Arena;
use super::process::{kill, watchdog_of};
use super::server::Server;
use super::setup::{BackendKind, Fault};
use super::TTL;
use crate::proxy::Mode;

/// A fault as applied.
#[derive(Debug, Clone)]
pub struct Event {
    pub fault: Fault,
    pub at: Instant,
    /// The holder at the time: its run and its life (index in the witness record).
    pub holder: Option<(u64, usize)>,
}

pub(super) fn apply(
    fault: Fault,
    arena: &Arena,
    server: &Server,
    holder: Option<(u64, usize, i32)>,
) {
    let hold = TTL + Duration::from_secs(1);
    let proxy_for = |server: &Server, mode: Mode, how_long: Duration| {
        if let Some(p) = server.proxy() {
            p.set_mode(mode);
            std::thread::sleep(how_long);
            p.set_mode(Mode::Pass);
        }
    };
    match fault {
        Fault::KillHolder => {
            if let Some((run, _, pid)) = holder {
                arena.shared.killed.lock().unwrap().insert(run);
                kill(pid, "KILL");
            }
        }
        Fault::StopHolder => {
            if let Some((_, _, pid)) = holder {
                kill(pid, "STOP");
                std::thread::sleep(hold);
                kill(pid, "CONT");
            }
        }
        Fault::StopServer => {
            server.freeze();
            std::thread::sleep(hold);
            server.thaw();
        }
        Fault::RestartServer => server.restart(),
        Fault::Blackhole => proxy_for(server, Mode::Blackhole, hold),
        Fault::DropReplies => proxy_for(server, Mode::DropReplies, hold),
        Fault::Latency => proxy_for(
            server,
            Mode::Latency(Duration::from_secs(1)),
            Duration::from_secs(3),
        ),
        Fault::Reset => proxy_for(server, Mode::Reset, Duration::from_millis(500)),
        Fault::DeleteLockFile => {
            if let Some(path) = server.lock_file(&arena.lock) {
                let _ = std::fs::remove_file(path);
            }
        }
        Fault::ReplaceLockFile => {
            if let Some(path) = server.lock_file(&arena.lock) {
                let tmp = path.with_extension("new");
                if std::fs::copy(&path, &tmp).is_ok() {
                    let _ = std::fs::rename(&tmp, &path);
                }
            }
        }
        Fault::TerminateBackend => server.terminate_sessions(),
        Fault::KillWatchdog => {
            if let Some((run, _, pid)) = holder {
                if let Some(watchdog) = watchdog_of(pid) {
                    arena.shared.watchdog_killed.lock().unwrap().insert(run);
                    kill(watchdog, "KILL");
                }
            }
        }
        Fault::StopWatchdog => {
            if let Some((_, _, pid)) = holder {
                if let Some(watchdog) = watchdog_of(pid) {
                    kill(watchdog, "STOP");
                    match server.kind() {
                        BackendKind::File => {
                            if let Some(path) = server.lock_file(&arena.lock) {
                                let _ = std::fs::remove_file(path);
                            }
                            std::thread::sleep(hold);
                        }
                        _ => proxy_for(server, Mode::Blackhole, hold),
                    }
                    kill(watchdog, "CONT");
                }
            }
        }
        Fault::KillBoth => {
            if let Some((run, _, pid)) = holder {
                if let Some(watchdog) = watchdog_of(pid) {
                    arena.shared.killed.lock().unwrap().insert(run);
                    arena.shared.watchdog_killed.lock().unwrap().insert(run);
                    // Stopped first, so that neither sees the other die and stops the job.
                    kill(pid, "STOP");
                    kill(watchdog, "STOP");
                    kill(pid, "KILL");
                    kill(watchdog, "KILL");
                }
            }
        }
    }
}
