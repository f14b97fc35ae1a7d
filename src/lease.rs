//! The vocabulary every backend shares: lock names, fencing tokens, holder metadata, leases.

use std::fmt;
use std::fs::File;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::clock::BootTime;
use crate::show;

/// A validated lock name: `[A-Za-z0-9][A-Za-z0-9._-]{0,127}`.
///
/// The pattern keeps names safe as a file name (no `/`, no `..` component, no leading dot), as a
/// Redis hash tag (no braces) and as an etcd key segment, so no backend needs its own escaping.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct LockName(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid lock name {name:?}: {why} (allowed: a letter or digit, then up to 127 of A-Z a-z 0-9 . _ -)")]
pub struct InvalidLockName {
    name: String,
    why: &'static str,
}

impl LockName {
    pub const MAX_LEN: usize = 128;

    pub fn new(name: &str) -> Result<Self, InvalidLockName> {
        let invalid = |why| {
            Err(InvalidLockName {
                name: name.to_owned(),
                why,
            })
        };
        let Some(first) = name.chars().next() else {
            return invalid("it is empty");
        };
        if name.len() > Self::MAX_LEN {
            return invalid("it is longer than 128 characters");
        }
        if !first.is_ascii_alphanumeric() {
            return invalid("it must start with a letter or digit");
        }
        if name.contains('/') {
            return invalid("it contains '/'");
        }
        if name.contains("..") {
            return invalid("it contains '..'");
        }
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return invalid("it contains a character outside the allowed set");
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LockName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Grows on every acquisition of a lock and never repeats, so that a downstream system can reject
/// writes from a holder that has been superseded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FencingToken(pub u64);

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Who holds a lease, as recorded on the backend so that `elect status` and contenders can name
/// the holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HolderInfo {
    pub id: String,
    pub host: String,
    pub pid: u32,
    /// Wall clock at acquisition, for people reading status; never used for lease decisions.
    #[serde(with = "rfc3339")]
    pub acquired_at: SystemTime,
    #[serde(with = "millis")]
    pub ttl: Duration,
    pub token: FencingToken,
    pub version: String,
    /// The `--holders N` the holder took the lock with (1, a mutex, is left out of records).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub places: u32,
}

fn one() -> u32 {
    1
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

impl HolderInfo {
    /// Metadata for this process, before the backend has assigned a token.
    pub fn this_process(id: Option<String>, ttl: Duration) -> Self {
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".to_owned());
        let pid = std::process::id();
        Self {
            id: id.unwrap_or_else(|| format!("{host}:{pid}")),
            host,
            pid,
            acquired_at: SystemTime::now(),
            ttl,
            token: FencingToken(0),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            places: 1,
        }
    }

    /// A holder the backend shows but elect cannot name (its record was written by another
    /// client, or cannot be read). A lock state without a holder means free, and reporting such
    /// a lock as free would invite a contender to believe it could take it: so one is made up,
    /// `id` saying what is known. Nobody knows when it was acquired: the epoch.
    pub fn unknown(id: String, token: FencingToken) -> Self {
        Self {
            id,
            host: String::new(),
            pid: 0,
            acquired_at: SystemTime::UNIX_EPOCH,
            ttl: Duration::ZERO,
            token,
            version: String::new(),
            places: 1,
        }
    }
}

impl fmt::Display for HolderInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A record from the backend: anyone who can write there wrote these.
        write!(
            f,
            "{} (host {}, pid {}, token {}, since {})",
            show::text(&self.id),
            show::text(&self.host),
            self.pid,
            self.token,
            show::time(self.acquired_at)
        )
    }
}

/// A lease this process holds.
#[derive(Debug, Clone)]
pub struct Lease {
    pub name: LockName,
    pub holder: HolderInfo,
    /// Local time at which the request that won (or last renewed) the lease was sent: the backend
    /// cannot expire the lease before `sent_at + ttl`.
    pub sent_at: BootTime,
    /// Backend-specific proof of ownership (a random value, a lease id, a row token).
    pub secret: String,
    /// The open lock file of the file backend. The watchdog keeps a copy of it, so that the
    /// kernel lock outlives elect for as long as any process of the job runs.
    pub kernel_lock: Option<Arc<File>>,
    /// Which of the lock's `--holders` places this lease took: 0 with a single holder. Backends
    /// that keep one record per place (file, Redis, PostgreSQL) renew and release by it.
    pub slot: u32,
}

impl Lease {
    pub fn token(&self) -> FencingToken {
        self.holder.token
    }
}

/// The answer to an acquire: enums, not booleans.
#[derive(Debug)]
pub enum Acquire {
    Acquired(Lease),
    /// Someone else holds it; `None` when the holder is known to exist but left no metadata
    /// (an `etcdctl lock` holder, a file locked by another tool).
    Held(Option<HolderInfo>),
}

/// The answer to a renew.
#[derive(Debug, PartialEq, Eq)]
pub enum Renewal {
    Renewed,
    /// The backend says outright that the lease is gone or belongs to someone else.
    Lost(String),
}

/// How a recorded run ended.
///
/// Serialized flattened into [`LastRun`] as `"exit_code": N` or `"signal": N`, so that a reader
/// of the JSON sees exactly one of the two.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunEnd {
    /// The job exited by itself with this code (126 / 127 when it could not be started).
    ExitCode(i32),
    /// The job was killed by this signal.
    Signal(i32),
    /// The run started and its end was never recorded: a `--once-per` run recorded when it
    /// started, whose release did not reach the backend (or whose elect died). Serialized as
    /// `"unfinished": null`.
    Unfinished,
}

impl RunEnd {
    pub fn succeeded(self) -> bool {
        self == Self::ExitCode(0)
    }
}

impl fmt::Display for RunEnd {
    /// `ok`, `exit 3`, `SIGKILL`: the words of the LAST RUN column.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::ExitCode(0) => f.write_str("ok"),
            Self::ExitCode(code) => write!(f, "exit {code}"),
            Self::Signal(n) => match nix::sys::signal::Signal::try_from(n) {
                Ok(sig) => f.write_str(sig.as_str()),
                Err(_) => write!(f, "signal {n}"),
            },
            Self::Unfinished => f.write_str("unfinished"),
        }
    }
}

/// The last run of a lock, recorded by the holder with its release, so that "did billing run
/// today, where, and did it succeed?" has a one-command answer (`elect status`).
///
/// Wall-clock times are the holder's, for people to read; nothing decides on them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastRun {
    /// The holder id (`--id`, or `HOST:PID`).
    pub holder: String,
    pub host: String,
    pub pid: u32,
    pub token: FencingToken,
    #[serde(with = "rfc3339")]
    pub started_at: SystemTime,
    #[serde(with = "rfc3339")]
    pub finished_at: SystemTime,
    /// Measured on the holder's monotonic clock, so that a wall-clock step does not distort it.
    #[serde(rename = "duration_ms", with = "millis")]
    pub duration: Duration,
    #[serde(flatten)]
    pub end: RunEnd,
}

impl LastRun {
    /// A `--once-per` run as recorded when it starts: its end is not known yet.
    pub fn unfinished(lease: &Lease) -> Self {
        let now = SystemTime::now();
        Self {
            holder: lease.holder.id.clone(),
            host: lease.holder.host.clone(),
            pid: lease.holder.pid,
            token: lease.token(),
            started_at: now,
            finished_at: now,
            duration: Duration::ZERO,
            end: RunEnd::Unfinished,
        }
    }

    /// The run a `--once-per` marker of `name` stands for when elect cannot read the marker: it
    /// still says that the job ran in the window.
    pub fn unreadable_marker(name: &LockName) -> Self {
        Self {
            holder: format!("unknown (unreadable marker of lock {name})"),
            host: "unknown".into(),
            pid: 0,
            token: FencingToken(0),
            started_at: SystemTime::UNIX_EPOCH,
            finished_at: SystemTime::UNIX_EPOCH,
            duration: Duration::ZERO,
            end: RunEnd::ExitCode(0),
        }
    }

    /// How the run reads in one line: `ok at 2026-11-22T09:00:00.123Z on web-1 (id web-1:42,
    /// token 17, took 12s)`.
    pub fn describe(&self) -> String {
        if self.end == RunEnd::Unfinished {
            return format!(
                "(started at {} on {}, id {}, token {}; its end was never recorded, so it counts as a run)",
                show::time(self.started_at),
                self.host,
                self.holder,
                self.token
            );
        }
        format!(
            "{} at {} on {} (id {}, token {}, took {})",
            self.end,
            show::time(self.finished_at),
            show::text(&self.host),
            show::text(&self.holder),
            self.token,
            crate::timing::Fmt(self.duration)
        )
    }
}

/// What a release records besides freeing the lock: the run, and the `--once-per` marker when
/// the run succeeded. A lease that was lost records nothing (its release is never called).
#[derive(Debug, Clone)]
pub struct History {
    pub last_run: LastRun,
    /// Leave a marker that expires after this long, judged by the backend's clock: set only for
    /// a successful run under `--once-per`.
    pub once_per: Option<Duration>,
}

/// What `elect status` reports for one lock.
#[derive(Debug, Clone, Serialize)]
pub struct LockState {
    pub lock: LockName,
    pub holder: Option<HolderInfo>,
    /// The last run recorded with a release, whether or not the lock is held now.
    pub last_run: Option<LastRun>,
    /// Remaining time on the backend, where the backend keeps one.
    pub expires_in: Option<Duration>,
    /// Waiters queued behind the holder, where the backend knows.
    pub waiters: Option<u64>,
    /// With `--holders N`: the holders besides `holder`, in the order of their places.
    pub co_holders: Vec<Holding>,
}

impl LockState {
    /// A lock nobody holds, with no run recorded.
    pub fn free(lock: LockName) -> Self {
        Self {
            lock,
            holder: None,
            last_run: None,
            expires_in: None,
            waiters: None,
            co_holders: Vec::new(),
        }
    }

    /// A lock held by `holdings`, in the order of their places: the first is the holder, the
    /// others its co-holders. Free when there are none.
    pub fn held_by(
        lock: LockName,
        holdings: impl IntoIterator<Item = Holding>,
        last_run: Option<LastRun>,
    ) -> Self {
        let mut holdings = holdings.into_iter();
        let first = holdings.next();
        Self {
            expires_in: first.as_ref().and_then(|h| h.expires_in),
            holder: first.map(|h| h.holder),
            last_run,
            co_holders: holdings.collect(),
            ..Self::free(lock)
        }
    }
}

/// One holder of a lock that has several (`--holders N`).
#[derive(Debug, Clone, Serialize)]
pub struct Holding {
    pub holder: HolderInfo,
    /// Remaining time on the backend, where the backend keeps one.
    pub expires_in: Option<Duration>,
}

mod rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::SystemTime;

    /// `null` for a time RFC 3339 cannot write (only a backend's own columns can hold one).
    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        match crate::show::rfc3339(*t) {
            Some(text) => s.serialize_str(&text),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_rfc3339_weak(&text).map_err(serde::de::Error::custom)
    }
}

mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_is_held_by_its_first_holding() {
        let name = LockName::new("pair").unwrap();
        let holding = |id: &str, left: Option<u64>| Holding {
            holder: HolderInfo::unknown(id.into(), FencingToken(1)),
            expires_in: left.map(Duration::from_secs),
        };
        let free = LockState::held_by(name.clone(), [], None);
        assert!(free.holder.is_none() && free.co_holders.is_empty());
        assert_eq!(free.expires_in, None);
        let held = LockState::held_by(name, [holding("a", Some(3)), holding("b", None)], None);
        assert_eq!(held.holder.map(|h| h.id).as_deref(), Some("a"));
        assert_eq!(held.expires_in, Some(Duration::from_secs(3)));
        assert_eq!(held.co_holders.len(), 1);
        assert_eq!(held.co_holders[0].holder.id, "b");
        assert_eq!(held.waiters, None);
    }

    #[test]
    fn lock_names() {
        for good in ["billing", "a", "A-1.b_c", &"x".repeat(128)] {
            assert!(LockName::new(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "a/b",
            "..",
            "a..b",
            ".hidden",
            "-x",
            "a b",
            "{x}",
            "é",
            &"x".repeat(129),
        ] {
            assert!(LockName::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn holder_round_trips_through_json() {
        let mut h = HolderInfo::this_process(Some("web-1:1".into()), Duration::from_secs(15));
        h.token = FencingToken(17);
        let text = serde_json::to_string(&h).unwrap();
        let back: HolderInfo = serde_json::from_str(&text).unwrap();
        assert_eq!(back.token, FencingToken(17));
        assert_eq!(back.id, "web-1:1");
        assert_eq!(back.ttl, Duration::from_secs(15));
    }

    #[test]
    fn last_run_json_has_exit_code_or_signal() {
        let mut run = LastRun {
            holder: "web-1:1".into(),
            host: "web-1".into(),
            pid: 1,
            token: FencingToken(3),
            started_at: SystemTime::UNIX_EPOCH,
            finished_at: SystemTime::UNIX_EPOCH + Duration::from_secs(2),
            duration: Duration::from_millis(2000),
            end: RunEnd::ExitCode(0),
        };
        let text = serde_json::to_string(&run).unwrap();
        assert!(text.contains("\"exit_code\":0"), "{text}");
        assert!(text.contains("\"duration_ms\":2000"), "{text}");
        assert!(!text.contains("signal"), "{text}");
        assert_eq!(serde_json::from_str::<LastRun>(&text).unwrap(), run);
        run.end = RunEnd::Signal(9);
        let text = serde_json::to_string(&run).unwrap();
        assert!(
            text.contains("\"signal\":9") && !text.contains("exit_code"),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<LastRun>(&text).unwrap(), run);
        assert_eq!(RunEnd::Signal(9).to_string(), "SIGKILL");
        assert_eq!(RunEnd::ExitCode(3).to_string(), "exit 3");
        assert_eq!(RunEnd::ExitCode(0).to_string(), "ok");
        // The backends recognise an unfinished run's record by `,"token":T,` and this field.
        run.end = RunEnd::Unfinished;
        let text = serde_json::to_string(&run).unwrap();
        assert!(
            text.contains(",\"token\":3,") && text.ends_with(",\"unfinished\":null}"),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<LastRun>(&text).unwrap(), run);
        assert!(!RunEnd::Unfinished.succeeded());
        assert_eq!(RunEnd::Unfinished.to_string(), "unfinished");
    }
}
