//! `elect status`: who holds which lock, as a table or as JSON.
//!
//! Exit 0 when the lock (or, without `--lock`, any lock) is held, 3 when free.

use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::backend::{AnyBackend, Backend};
use crate::config::BackendConfig;
use crate::exit::{code, Failure};
use crate::lease::{HolderInfo, LastRun, LockName, LockState};
use crate::show;
use crate::timing::Fmt;

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
        text.map_err(|e| Failure::new(code::INTERNAL, format!("cannot write JSON: {e}")))? + "\n"
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
    /// `null` where the backend's record holds a time RFC 3339 cannot write.
    pub acquired_at: Option<String>,
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
            acquired_at: show::rfc3339(h.acquired_at),
            expires_at: expires_at(now, expires_in),
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
            acquired_at: holder.and_then(|h| show::rfc3339(h.acquired_at)),
            expires_at: holder.and_then(|_| expires_at(now, state.expires_in)),
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

/// When a lease with `left` to run ends; `None` if that cannot be written (a backend's huge ttl).
fn expires_at(now: SystemTime, left: Option<Duration>) -> Option<String> {
    left.and_then(|left| now.checked_add(left))
        .and_then(show::rfc3339)
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
    let dash = || "-".to_owned();
    for state in states {
        let lock = state.lock.to_string();
        let waiters = state.waiters.map_or_else(dash, |w| w.to_string());
        let last = last_run(state.last_run.as_ref(), now);
        rows.push(match &state.holder {
            Some(h) => held_row(&lock, h, state.expires_in, waiters, last),
            None => free_row(&lock, waiters, last),
        });
        // Further holders (`--holders N`): the lock's waiters and last run are on its first row.
        for c in &state.co_holders {
            rows.push(held_row(
                &lock,
                &c.holder,
                c.expires_in,
                String::new(),
                String::new(),
            ));
        }
    }
    aligned(&rows)
}

/// The rows in columns, two spaces apart.
fn aligned(rows: &[[String; 10]]) -> String {
    // Escaped before widths are measured: holder ids, hosts and history come from the backend.
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.iter().map(|c| show::text(c).into_owned()).collect())
        .collect();
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
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

/// The table row of a free lock.
fn free_row(lock: &str, waiters: String, last_run: String) -> [String; 10] {
    let dash = || "-".to_owned();
    [
        lock.to_owned(),
        "free".into(),
        dash(),
        dash(),
        dash(),
        dash(),
        dash(),
        dash(),
        waiters,
        last_run,
    ]
}

/// The table row of one holder.
fn held_row(
    lock: &str,
    h: &HolderInfo,
    expires_in: Option<Duration>,
    waiters: String,
    last_run: String,
) -> [String; 10] {
    [
        lock.to_owned(),
        "held".into(),
        h.id.clone(),
        h.host.clone(),
        h.pid.to_string(),
        h.token.to_string(),
        show::time(h.acquired_at),
        expires_in.map_or_else(|| "-".to_owned(), |d| Fmt(d).to_string()),
        waiters,
        last_run,
    ]
}

/// `ok 12s ago on web-1`, `exit 3 2h ago on web-1`, `SIGKILL 5m ago on web-2`; `-` for none.
fn last_run(run: Option<&LastRun>, now: SystemTime) -> String {
    let Some(run) = run else {
        return "-".to_owned();
    };
    let ago = match now.duration_since(run.finished_at) {
        Ok(d) => format!("{} ago", Fmt::rough(d)),
        // The holder's clock is ahead of ours.
        Err(_) => "just now".to_owned(),
    };
    format!("{} {ago} on {}", run.end, run.host)
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

    #[test]
    fn one_row_and_one_json_entry_per_holder() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let holder = |id: &str, token| HolderInfo {
            id: id.into(),
            token: FencingToken(token),
            acquired_at: now,
            ..HolderInfo::this_process(None, Duration::from_secs(15))
        };
        let state = LockState {
            lock: LockName::new("pool").unwrap(),
            holder: Some(holder("w1", 7)),
            last_run: None,
            expires_in: Some(Duration::from_secs(9)),
            waiters: Some(2),
            co_holders: vec![crate::lease::Holding {
                holder: holder("w2", 8),
                expires_in: Some(Duration::from_secs(4)),
            }],
        };
        let text = table_at(std::slice::from_ref(&state), now);
        let rows: Vec<Vec<&str>> = text
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(rows.len(), 2, "{text}");
        assert_eq!(rows[0][..3], ["pool", "held", "w1"], "{text}");
        assert_eq!(rows[1][..3], ["pool", "held", "w2"], "{text}");
        assert!(rows[0].contains(&"9s") && rows[1].contains(&"4s"), "{text}");
        let doc = Document::new(&state, "file:///x", now);
        let tokens: Vec<u64> = doc.holders.iter().map(|h| h.token).collect();
        assert_eq!(tokens, [7, 8]);
        assert_eq!(doc.token, Some(7));
    }

    #[test]
    fn forged_records_are_escaped_and_extreme_values_shown_as_invalid() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let forged = HolderInfo {
            id: "evil\x1b[2J\r\nelect: error: fake".into(),
            host: "h\x07\u{9b}".into(),
            acquired_at: SystemTime::UNIX_EPOCH - Duration::from_secs(86_400 * 365 * 100),
            token: FencingToken(u64::MAX),
            pid: u32::MAX,
            ..HolderInfo::this_process(None, Duration::from_secs(15))
        };
        let far = SystemTime::UNIX_EPOCH + Duration::from_secs(i64::MAX as u64 / 2);
        let states = [
            LockState {
                lock: LockName::new("forged").unwrap(),
                holder: Some(forged.clone()),
                last_run: Some(LastRun {
                    holder: "x\x1b]0;title\x07".into(),
                    host: "web\r\nelect: error: fake".into(),
                    pid: 1,
                    token: FencingToken(1),
                    started_at: far,
                    finished_at: far,
                    duration: Duration::MAX,
                    end: RunEnd::Signal(i32::MAX),
                }),
                expires_in: Some(Duration::MAX),
                waiters: Some(u64::MAX),
                co_holders: Vec::new(),
            },
            LockState {
                lock: LockName::new("fine").unwrap(),
                holder: None,
                last_run: None,
                expires_in: None,
                waiters: None,
                co_holders: Vec::new(),
            },
        ];
        let text = table_at(&states, now);
        assert_eq!(text.lines().count(), 3, "{text}");
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{text:?}"
        );
        assert!(
            text.contains("evil\\x1b[2J\\r\\nelect: error: fake"),
            "{text}"
        );
        assert!(text.contains("invalid time"), "{text}");
        assert!(text.lines().nth(2).unwrap().starts_with("fine"), "{text}");
        assert!(!forged.to_string().chars().any(char::is_control));

        let doc = Document::new(&states[0], "redis://h", now);
        assert_eq!(doc.acquired_at, None);
        assert_eq!(doc.expires_at, None);
        let json = serde_json::to_string(&doc).unwrap();
        // JSON keeps the value, escaped as JSON escapes it.
        assert!(
            json.contains(r#""id":"evil\u001b[2J\r\nelect: error: fake""#),
            "{json}"
        );
        assert!(json.contains(r#""finished_at":null"#), "{json}");
        let _ = crate::hooks::holder_env(Some(&forged));
    }
}
