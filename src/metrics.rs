//! `--metrics-file`: Prometheus text-format metrics of one run, written at exit for
//! node_exporter's textfile collector (atomically: a temporary file renamed over the old one).
//!
//! elect may write there as root, into a directory other users can write (a shared textfile
//! directory, `/tmp`), under directories that other users might control. So:
//! - the directory is reached by walking its path from `/` through checked directory
//!   descriptors ([`walk`]): every directory above it must belong to root or elect's user and be
//!   writable by nobody else unless sticky, and every symlink on the way must belong to root or
//!   elect's user. Otherwise nothing is written, and a warning says which directory is wrong.
//!   Nobody can then swap a directory on the way, or point a link of theirs elsewhere (`/etc`).
//! - everything after that is relative to the directory's descriptor: the temporary file is
//!   created afresh with `O_CREAT | O_EXCL | O_NOFOLLOW` (a symlink or file planted at a name
//!   elect might choose makes that name fail, never redirects the write), then renamed over the
//!   target with `renameat`, which replaces the name itself, never what a link there names, and
//!   never writes into a file someone else made.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use crate::backend::file::walk::{self, Missing};
use crate::keeper::RenewStats;
use crate::lease::LockName;

/// How a run ended, as operators count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The job ran (whatever its exit code).
    Ran,
    /// The lock was held elsewhere.
    Skipped,
    /// The lease was lost while the job ran.
    Lost,
    /// `--max-runtime` stopped the job.
    TimedOut,
    /// elect could not run the job (backend unavailable, bad command, ...).
    Error,
}

impl Outcome {
    const ALL: [Outcome; 5] = [
        Outcome::Ran,
        Outcome::Skipped,
        Outcome::Lost,
        Outcome::TimedOut,
        Outcome::Error,
    ];

    fn label(self) -> &'static str {
        match self {
            Outcome::Ran => "ran",
            Outcome::Skipped => "skipped",
            Outcome::Lost => "lost",
            Outcome::TimedOut => "timed_out",
            Outcome::Error => "error",
        }
    }
}

/// What one run measured.
#[derive(Debug, Clone, Default)]
pub struct RunRecord {
    pub wait: Duration,
    pub hold: Duration,
    pub renewals: RenewStats,
    pub outcome: Option<Outcome>,
}

pub fn render(lock: &LockName, record: &RunRecord, exit_code: u8) -> String {
    let l = format!("lock=\"{lock}\"");
    let outcome = record.outcome.unwrap_or(Outcome::Error);
    let secs = |d: Duration| format!("{:.6}", d.as_secs_f64());
    let one = |name: &str, value: String| vec![format!("{name}{{{l}}} {value}")];
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let renewals = [
        ("ok", record.renewals.ok),
        ("failed", record.renewals.failed),
    ];
    // Name, help, type, and the samples.
    let families = [
        (
            "elect_wait_seconds",
            "Time spent waiting for the lease.",
            "gauge",
            one("elect_wait_seconds", secs(record.wait)),
        ),
        (
            "elect_hold_seconds",
            "Time the lease was held while the job ran.",
            "gauge",
            one("elect_hold_seconds", secs(record.hold)),
        ),
        (
            "elect_renewals_total",
            "Lease renewals by result.",
            "counter",
            renewals
                .iter()
                .map(|(result, n)| format!("elect_renewals_total{{{l},result=\"{result}\"}} {n}"))
                .collect(),
        ),
        (
            "elect_renew_latency_max_seconds",
            "The slowest renewal of the run.",
            "gauge",
            one(
                "elect_renew_latency_max_seconds",
                secs(record.renewals.worst),
            ),
        ),
        (
            "elect_outcome",
            "How the run ended (1 for the outcome that happened).",
            "gauge",
            Outcome::ALL
                .iter()
                .map(|o| {
                    let happened = u8::from(*o == outcome);
                    format!("elect_outcome{{{l},outcome=\"{}\"}} {happened}", o.label())
                })
                .collect(),
        ),
        (
            "elect_exit_code",
            "elect's exit code.",
            "gauge",
            one("elect_exit_code", exit_code.to_string()),
        ),
        (
            "elect_last_run_timestamp_seconds",
            "When the run ended (Unix time).",
            "gauge",
            one(
                "elect_last_run_timestamp_seconds",
                now.as_secs().to_string(),
            ),
        ),
    ];
    let mut out = String::new();
    for (name, help, kind, samples) in families {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for sample in samples {
            out.push_str(&sample);
            out.push('\n');
        }
    }
    out
}

/// Writes the metrics atomically; a failure is logged, never fatal.
pub fn write(path: &Path, lock: &LockName, record: &RunRecord, exit_code: u8) {
    let text = render(lock, record, exit_code);
    if let Err(e) = replace(path, text.as_bytes()) {
        tracing::warn!("cannot write metrics to {}: {e}", path.display());
    }
}

/// Replaces `path` with a file holding `bytes`, through a fresh temporary file beside it.
fn replace(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("the path names no file"))?;
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let euid = nix::unistd::geteuid().as_raw();
    let dir = walk::walk(&std::path::absolute(parent)?, euid, Missing::Refuse)
        .map_err(std::io::Error::other)?;
    let (tmp, file) = create_fresh(&dir.fd, name)?;
    let result = File::from(file).write_all(bytes).and_then(|()| {
        Ok(nix::fcntl::renameat(
            &dir.fd,
            tmp.as_os_str(),
            &dir.fd,
            name,
        )?)
    });
    if result.is_err() {
        let _ = nix::unistd::unlinkat(
            &dir.fd,
            tmp.as_os_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
    }
    result
}

/// A new file in `dir` beside `name`, under a name nobody had used: never an existing file or a
/// link.
fn create_fresh(dir: &OwnedFd, name: &OsStr) -> std::io::Result<(OsString, OwnedFd)> {
    let mut last = Errno::EEXIST;
    for attempt in 0..16u32 {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let mut tmp = OsString::from(".");
        tmp.push(name);
        tmp.push(format!(".{}.{nanos:x}{attempt}.tmp", std::process::id()));
        if tmp.as_bytes().len() > 255 {
            return Err(std::io::Error::other("the file name is too long"));
        }
        match nix::fcntl::openat(
            dir,
            tmp.as_os_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o644),
        ) {
            Ok(file) => return Ok((tmp, file)),
            // Someone holds that name (perhaps on purpose): take another.
            Err(Errno::EEXIST) => last = Errno::EEXIST,
            Err(e) => return Err(e.into()),
        }
    }
    Err(last.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_one_hot_outcome() {
        let record = RunRecord {
            wait: Duration::from_millis(1500),
            outcome: Some(Outcome::Lost),
            ..Default::default()
        };
        let text = render(&LockName::new("billing").unwrap(), &record, 76);
        assert!(text.contains("elect_wait_seconds{lock=\"billing\"} 1.500000"));
        assert!(text.contains("elect_outcome{lock=\"billing\",outcome=\"lost\"} 1"));
        assert!(text.contains("elect_outcome{lock=\"billing\",outcome=\"ran\"} 0"));
        assert!(text.contains("elect_exit_code{lock=\"billing\"} 76"));
    }
}
