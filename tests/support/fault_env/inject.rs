//! The injector: applying one fault to the current holder or to the server.

use std::time::{Duration, Instant};

use super::arena::Arena;
use super::server::Server;
use super::setup::{BackendKind, Fault};
use super::TTL;
use crate::netns::Cut;
use crate::process::{signal, watchdog_of};
use crate::proxy::Mode;

/// How long [`Fault::HandOffUnreachable`] holds all traffic: longer than the release's own
/// bound (2.5 s), so that it gives up.
pub const BLACKHOLE_AT_KILL: Duration = Duration::from_secs(3);

/// A fault as applied.
#[derive(Debug, Clone)]
pub struct Event {
    pub fault: Fault,
    pub at: Instant,
    /// The holder at the time: its run and its life (index in the witness record).
    pub holder: Option<(u64, usize)>,
    /// When the fault was over (the host thawed, the partition healed); `at` for one that is a
    /// single act.
    pub ended: Instant,
}

/// Applies `fault`; returns when it ended (the thaw, the heal), or now.
pub(super) fn apply(
    fault: Fault,
    arena: &Arena,
    server: &Server,
    holder: Option<(u64, usize, i32)>,
) -> Instant {
    let hold = TTL + Duration::from_secs(1);
    let mut ended = None;
    let proxy_for = |server: &Server, mode: Mode, how_long: Duration| {
        if let Some(p) = server.proxy() {
            p.set_mode(mode);
            std::thread::sleep(how_long);
            p.set_mode(Mode::Pass);
        }
    };
    match fault {
        Fault::KillHolder | Fault::HandOff => {
            if let Some((run, _, pid)) = holder {
                arena.shared.killed.lock().unwrap().insert(run);
                signal(pid, "KILL");
            }
        }
        Fault::StopHolder => {
            if let Some((_, _, pid)) = holder {
                signal(pid, "STOP");
                std::thread::sleep(hold);
                signal(pid, "CONT");
            }
        }
        Fault::HandOffUnreachable => {
            if let (Some((run, _, pid)), Some(p)) = (holder, server.proxy()) {
                p.set_mode(Mode::Blackhole);
                arena.shared.killed.lock().unwrap().insert(run);
                signal(pid, "KILL");
                std::thread::sleep(BLACKHOLE_AT_KILL);
                p.set_mode(Mode::Pass);
            }
        }
        Fault::StopThenKill => {
            if let Some((run, _, pid)) = holder {
                signal(pid, "STOP");
                std::thread::sleep(hold);
                arena.shared.killed.lock().unwrap().insert(run);
                signal(pid, "KILL");
            }
        }
        Fault::StopServer => {
            server.freeze();
            std::thread::sleep(hold);
            server.thaw();
        }
        Fault::RestartServer => server.restart(),
        Fault::RestartServerClean => server.restart_clean(),
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
                    signal(watchdog, "KILL");
                }
            }
        }
        Fault::StopWatchdog => {
            if let Some((_, _, pid)) = holder {
                if let Some(watchdog) = watchdog_of(pid) {
                    signal(watchdog, "STOP");
                    match server.kind() {
                        BackendKind::File => {
                            if let Some(path) = server.lock_file(&arena.lock) {
                                let _ = std::fs::remove_file(path);
                            }
                            std::thread::sleep(hold);
                        }
                        _ => proxy_for(server, Mode::Blackhole, hold),
                    }
                    signal(watchdog, "CONT");
                }
            }
        }
        Fault::FreezeHost => {
            if let Some(freezer) = host_of(arena, holder).and_then(|i| arena.hosts.freezer(i)) {
                freezer.freeze();
                std::thread::sleep(hold);
                ended = Some(Instant::now());
                freezer.thaw();
            }
        }
        Fault::Partition | Fault::PartitionReplies => {
            if let Some(host) = host_of(arena, holder).and_then(|i| arena.hosts.host(i)) {
                host.cut(if fault == Fault::Partition {
                    Cut::Both
                } else {
                    Cut::Replies
                });
                std::thread::sleep(hold);
                ended = Some(Instant::now());
                host.cut(Cut::None);
            }
        }
        Fault::PartitionHeals => {
            if let Some(host) = host_of(arena, holder).and_then(|i| arena.hosts.host(i)) {
                host.cut(Cut::Both);
                // Until another host's job has started (the takeover), and a little after.
                let run = holder.map(|h| h.0);
                let deadline = Instant::now() + TTL * 5;
                while Instant::now() < deadline
                    && !arena
                        .witness
                        .open_lives()
                        .iter()
                        .any(|l| l.run.is_some() && l.run != run)
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                std::thread::sleep(Duration::from_millis(500));
                ended = Some(Instant::now());
                host.cut(Cut::None);
            }
        }
        Fault::KillLeader => {
            if let Some(cluster) = server.etcd_cluster() {
                cluster.kill_leader(hold);
            }
        }
        Fault::PartitionLeader => {
            if let Some(cluster) = server.etcd_cluster() {
                cluster.partition_leader(hold + Duration::from_secs(1));
            }
        }
        Fault::RollingRestart => {
            if let Some(cluster) = server.etcd_cluster() {
                cluster.rolling_restart(Duration::from_millis(500));
            }
        }
        Fault::KillBoth => {
            if let Some((run, _, pid)) = holder {
                if let Some(watchdog) = watchdog_of(pid) {
                    arena.shared.killed.lock().unwrap().insert(run);
                    arena.shared.watchdog_killed.lock().unwrap().insert(run);
                    // Stopped first, so that neither sees the other die and stops the job.
                    signal(pid, "STOP");
                    signal(watchdog, "STOP");
                    signal(pid, "KILL");
                    signal(watchdog, "KILL");
                }
            }
        }
    }
    ended.unwrap_or_else(Instant::now)
}

/// The contender (and so the host) whose run holds the lease.
fn host_of(arena: &Arena, holder: Option<(u64, usize, i32)>) -> Option<usize> {
    let (run, _, _) = holder?;
    let runs = arena.shared.runs.lock().unwrap();
    runs.iter().find(|r| r.run == run).map(|r| r.contender)
}
