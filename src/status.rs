//! `elect status`: who holds which lock, as a table or as JSON.
//!
//! Exit 0 when the lock (or, without `--lock`, any lock) is held, 3 when free.

use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::backend::{AnyBackend, Backend};
use crate::config::BackendConfig;
use crate::exit::{code, Failure};
use crate::lease::{LockName, LockState};

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
    pub backend: String,
}

#[derive(Debug, Serialize)]
pub struct HolderDoc {
    pub id: String,
    pub host: String,
    pub pid: u32,
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
            backend: backend.to_owned(),
        }
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// A table with one line per lock.
pub fn table(states: &[LockState]) -> String {
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
            ],
        };
        rows.push(row);
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

fn short(d: Duration) -> String {
    humantime::format_duration(Duration::from_millis(d.as_millis() as u64)).to_string()
}
