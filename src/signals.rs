//! The signals elect passes on to the job, in every process that handles them: elect forwards
//! them, the front passes them to elect, and the watchdog and the launcher ignore them so that
//! only forwarding delivers them.

use nix::sys::signal::Signal;

/// Signals elect forwards to the job.
pub const FORWARDED: [Signal; 8] = [
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGTERM,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
    Signal::SIGALRM,
];
