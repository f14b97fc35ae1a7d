//! The one table of exit codes (DESIGN section 2), and the error that carries one.

/// Exit codes that elect itself produces. A child's own code passes through unchanged.
pub mod code {
    pub const OK: u8 = 0;
    /// Usage error: bad flag, duration, lock name, URL, inconsistent lease settings.
    pub const USAGE: u8 = 2;
    /// `elect status`: the lock is free (LSB "program is not running").
    pub const FREE: u8 = 3;
    /// EX_UNAVAILABLE: the backend could not be used before the child started.
    pub const UNAVAILABLE: u8 = 69;
    /// EX_SOFTWARE: elect itself failed (its watchdog died, a system call that cannot fail did).
    pub const INTERNAL: u8 = 70;
    /// `--max-runtime` stopped the job (as timeout(1) exits).
    pub const TIMED_OUT: u8 = 124;
    /// EX_TEMPFAIL: the lease is held elsewhere; `--conflict-exit-code` changes it.
    pub const CONFLICT: u8 = 75;
    /// EX_PROTOCOL: the lease was lost while the child ran; the child was stopped.
    pub const LOST: u8 = 76;
    /// COMMAND exists but cannot be executed.
    pub const NOT_EXECUTABLE: u8 = 126;
    /// COMMAND was not found.
    pub const NOT_FOUND: u8 = 127;

    /// The shell convention for a child killed by signal `n`.
    pub fn signaled(n: i32) -> u8 {
        128u8.saturating_add(n.clamp(0, 127) as u8)
    }
}

/// An outcome that ends elect with a code and one line on stderr.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(code::USAGE, message)
    }
}
