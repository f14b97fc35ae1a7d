//! `elect status`: who holds which lock, as a table or as JSON.
//!
//! Exit 0 when the lock (or, without `--lock`, any lock) is held, 3 when free.

use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::backend::{AnyBackend, Backend};
use crate::config::BackendConfig;
use crate::exit::{code, Failure};
use crate::lease::{HolderInfo, LastRun, LockName, LockState};

pub fn status(backend: BackendConfig, lock: Option<LockName>, json: bool) -> Result<u8, Failure> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(code::INTERNAL, format!("cannot start: {e}")))?;
    let (states, describe) = runtime.block_on(async {
        let mut opened = AnyBackend::open(backend.url.as_deref(), &backend.options)
            .await
            .map_err(|e| e.into_failure(&backend.describe()))?;
        let describe = opened.describe().to_owned();
        let states = match &lock {
            Some(name) => opened.inspect(name).await.map(|s| vec![s]),
            None => opened.list().await,
        };
        states
            .map(|s| (s, describe.clone()))
            .map_err(|e| e.into_failure(&describe))
    })?;
    let now = SystemTime::now();
    let docs: Vec<Document> = states
        .iter()
        .map(|s| Document::new(s, &describe, now))
        .collect();
    let out = if json {
        let text = match (&lock, docs.as_slice()) {
            (Some(_), [doc]) => serde_json::to_string(doc),
            _ => serde_json::to_string(&docs),
        };
        text.expect("status documents serialize") + "\n"
    } else if states.is_empty() {
        format!("no locks under {describe}\n")
    } else {
        table(&states)
    };
    print!("{out}");
    let held = states.iter().any(|s| s.holder.is_some());
    Ok(if held { code::OK } else { code::FREE })
}

/// The stable JSON document of one lock (DESIGN section 6).
#[derive(Debug, Serialize)]
pub struct Document {
    pub lock: LockName,
    pub state: &'static str,
    pub holder: Option<HolderDoc>,
    pub token: Option<u64>,
    pub acquired_at: Option<String>,
    pub expires_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiters: Option<u64>,
    /// Every holder, `holder` first: more than one only under `--holders N`.
    pub holders: Vec<HoldingDoc>,
    /// The last run recorded by a release (null when none was): `{holder, host, pid, token,
    /// started_at, finished_at, duration_ms, exit_code | signal}`.
    pub last_run: Option<LastRun>,
    pub backend: String,
}

#[derive(Debug, Serialize)]
pub struct HolderDoc {
    pub id: String,
    pub host: String,
    pub pid: u32,
}

/// One entry of `holders`.
#[derive(Debug, Serialize)]
pub struct HoldingDoc {
    #[serde(flatten)]
    pub holder: HolderDoc,
    pub token: u64,
    pub acquired_at: String,
    pub expires_at: Option<String>,
}

impl HoldingDoc {
    fn new(h: &HolderInfo, expires_in: Option<Duration>, now: SystemTime) -> Self {
        Self {
            holder: HolderDoc {
                id: h.id.clone(),
                host: h.host.clone(),
                pid: h.pid,
            },
            token: h.token.0,
            acquired_at: rfc3339(h.acquired_at),
            expires_at: expires_in.map(|left| rfc3339(now + left)),
        }
    }
}

impl Document {
    pub fn new(state: &LockState, backend: &str, now: SystemTime) -> Self {
        let holder = state.holder.as_ref();
        Self {
            lock: state.lock.clone(),
            state: if holder.is_some() { "held" } else { "free" },
            holder: holder.map(|h| HolderDoc {
                id: h.id.clone(),
                host: h.host.clone(),
                pid: h.pid,
            }),
            token: holder.map(|h| h.token.0),
            acquired_at: holder.map(|h| rfc3339(h.acquired_at)),
            expires_at: holder.and(state.expires_in).map(|left| rfc3339(now + left)),
            waiters: state.waiters,
            holders: holder
                .map(|h| HoldingDoc::new(h, state.expires_in, now))
                .into_iter()
                .chain(
                    state
                        .co_holders
                        .iter()
                        .map(|c| HoldingDoc::new(&c.holder, c.expires_in, now)),
                )
                .collect(),
            last_run: state.last_run.clone(),
            backend: backend.to_owned(),
        }
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// A table with one line per lock.
pub fn table(states: &[LockState]) -> String {
    table_at(states, SystemTime::now())
}

/// The table, with "ago" counted from `now`.
pub fn table_at(states: &[LockState], now: SystemTime) -> String {
    let mut rows = vec![[
        "LOCK",
        "STATE",
        "HOLDER",
        "HOST",
        "PID",
        "TOKEN",
        "SINCE",
        "EXPIRES IN",
        "WAITERS",
        "LAST RUN",
    ]
    .map(String::from)];
    for state in states {
        let dash = || "-".to_owned();
        let row = match &state.holder {
            Some(h) => [
                state.lock.to_string(),
                "held".into(),
                h.id.clone(),
                h.host.clone(),
                h.pid.to_string(),
                h.token.to_string(),
                rfc3339(h.acquired_at),
                state.expires_in.map_or_else(dash, short),
                state.waiters.map_or_else(dash, |w| w.to_string()),
                last_run(state.last_run.as_ref(), now),
            ],
            None => [
                state.lock.to_string(),
                "free".into(),
                dash(),
                dash(),
                dash(),
                dash(),
                dash(),
                dash(),
                state.waiters.map_or_else(dash, |w| w.to_string()),
                last_run(state.last_run.as_ref(), now),
            ],
        };
        rows.push(row);
        for c in &state.co_holders {
            let h = &c.holder;
            rows.push([
                state.lock.to_string(),
                "held".into(),
                h.id.clone(),
                h.host.clone(),
                h.pid.to_string(),
                h.token.to_string(),
                rfc3339(h.acquired_at),
                c.expires_in.map_or_else(dash, short),
                "".into(),
                "".into(),
            ]);
        }
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `ok 12s ago on web-1`, `exit 3 2h ago on web-1`, `SIGKILL 5m ago on web-2`; `-` for none.
fn last_run(run: Option<&LastRun>, now: SystemTime) -> String {
    let Some(run) = run else {
        return "-".to_owned();
    };
    let ago = match now.duration_since(run.finished_at) {
        Ok(d) => format!(
            "{} ago",
            humantime::format_duration(Duration::from_secs(d.as_secs()))
        ),
        // The holder's clock is ahead of ours.
        Err(_) => "just now".to_owned(),
    };
    format!("{} {ago} on {}", run.end, run.host)
}

fn short(d: Duration) -> String {
    humantime::format_duration(Duration::from_millis(d.as_millis() as u64)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::{FencingToken, RunEnd};

    #[test]
    fn last_run_column() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut run = LastRun {
            holder: "web-1:7".into(),
            host: "web-1".into(),
            pid: 7,
            token: FencingToken(4),
            started_at: now - Duration::from_secs(20),
            finished_at: now - Duration::from_millis(12_400),
            duration: Duration::from_secs(8),
            end: RunEnd::ExitCode(0),
        };
        assert_eq!(last_run(Some(&run), now), "ok 12s ago on web-1");
        run.end = RunEnd::ExitCode(3);
        assert_eq!(last_run(Some(&run), now), "exit 3 12s ago on web-1");
        run.end = RunEnd::Signal(9);
        run.finished_at = now + Duration::from_secs(2);
        assert_eq!(last_run(Some(&run), now), "SIGKILL just now on web-1");
        assert_eq!(last_run(None, now), "-");
        let state = LockState {
            lock: LockName::new("billing").unwrap(),
            holder: None,
            last_run: Some(run),
            expires_in: None,
            waiters: None,
            co_holders: Vec::new(),
        };
        let text = table_at(&[state], now);
        assert!(text.lines().next().unwrap().ends_with("LAST RUN"), "{text}");
        assert!(text.contains("SIGKILL just now on web-1"), "{text}");
    }
}
