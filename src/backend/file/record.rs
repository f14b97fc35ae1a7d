//! The records inside a lock file, and the fencing-token counter.
//!
//! A lock file holds two fixed-size records, each written in one `pwrite` and padded with spaces
//! (the file is never truncated): at offset 0 the holder record (the holder metadata and the
//! fencing token), at [`RECORD_LEN`] the history record (the last run and the `--once-per`
//! marker). A lock with several places keeps its counter in `<name>.lock.meta`, a decimal number.
//!
//! Everything read here may have been forged by whoever could write the file: tokens grow with
//! checked arithmetic, and a record whose counter cannot grow, or that is not a record elect
//! wrote, is refused (exit 69), never wrapped or guessed around.

use std::fs::File;
use std::io::{self, ErrorKind};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::backend::{BackendError, Result};
use crate::lease::{FencingToken, History, HolderInfo, LastRun};

/// Size of the record at the start of a lock file.
pub const RECORD_LEN: usize = 1024;
/// Size of the history record that follows the holder record.
const HISTORY_LEN: usize = 1024;
/// Size of the counter of a lock with several places.
const COUNTER_LEN: usize = 32;

/// The second record of a lock file: what the last release recorded.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct HistoryRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<LastRun>,
    /// Wall-clock milliseconds since the epoch until which a `--once-per` marker lives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub once_until_ms: Option<u64>,
}

pub fn read_holder(file: &File, path: &Path) -> Result<Option<HolderInfo>> {
    let mut buf = vec![0u8; RECORD_LEN];
    let n = read_at_full(file, &mut buf, 0)
        .map_err(|e| BackendError::unavailable(format_args!("read {}", path.display()), e))?;
    parse_holder(&buf[..n]).map_err(|why| {
        BackendError::Unavailable(format!(
            "{} is not an elect lock file ({why}); if no job uses it, move it away",
            path.display()
        ))
    })
}

/// The holder record as written: the holder, and the lock file it was taken as.
#[derive(serde::Serialize)]
struct Written<'a> {
    #[serde(flatten)]
    holder: &'a HolderInfo,
    /// The real path of the lock file (no symlink in it) when the lock was taken: how a newcomer
    /// recognises a file of its lock that was renamed while held (see `stale`). Left out when
    /// it would not fit in the record (a very long directory path).
    #[serde(skip_serializing_if = "Option::is_none")]
    lock_file: Option<String>,
    /// The device and inode of that file: with `lock_file`, how the next holder knows that the
    /// file it locked is the one this holder took at that path (see `take::vouches`).
    #[serde(skip_serializing_if = "Option::is_none")]
    lock_inode: Option<[u64; 2]>,
}

/// What a holder record says of the lock file it was written in.
#[derive(Debug, Default, PartialEq, Eq, serde::Deserialize)]
pub struct TakenAs {
    /// Its real path when the lock was taken.
    pub lock_file: Option<String>,
    /// Its device and inode then.
    pub lock_inode: Option<[u64; 2]>,
}

/// Writes the holder record of the lock file whose real path is `real`.
pub fn write_holder(file: &File, path: &Path, real: &Path, holder: &HolderInfo) -> Result<()> {
    let meta = file
        .metadata()
        .map_err(|e| BackendError::unavailable(format_args!("stat {}", path.display()), e))?;
    let mut written = Written {
        holder,
        lock_file: Some(real.to_string_lossy().into_owned()),
        lock_inode: Some([meta.dev(), meta.ino()]),
    };
    let mut record = serde_json::to_vec(&written).expect("holder metadata serializes");
    if record.len() >= RECORD_LEN {
        written.lock_file = None;
        record = serde_json::to_vec(&written).expect("holder metadata serializes");
    }
    write_padded(file, path, record, 0, RECORD_LEN)
}

/// What the holder record in `bytes` says of its lock file; nothing when it is not a record.
pub fn taken_as(bytes: &[u8]) -> TakenAs {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return TakenAs::default();
    };
    let text = text.trim_matches(|c: char| c.is_ascii_whitespace() || c == '\0');
    serde_json::from_str(text).unwrap_or_default()
}

/// What the holder record of `file` says of it.
pub fn read_taken_as(file: &File) -> TakenAs {
    let mut buf = vec![0u8; RECORD_LEN];
    match read_at_full(file, &mut buf, 0) {
        Ok(n) => taken_as(&buf[..n]),
        Err(_) => TakenAs::default(),
    }
}

/// The token after the last holder's record, refusing one that cannot grow: `None` for a file
/// never held.
pub fn token_after(previous: Option<&HolderInfo>, path: &Path) -> Result<Option<FencingToken>> {
    previous.map(|p| grow(p.token.0, path)).transpose()
}

fn grow(last: u64, path: &Path) -> Result<FencingToken> {
    last.checked_add(1).map(FencingToken).ok_or_else(|| {
        BackendError::Unavailable(format!(
            "the fencing token in {} is {last} and cannot grow; the file was damaged or forged: \
             move it away when no job uses it (tokens then start again from the clock)",
            path.display()
        ))
    })
}

/// The history record; an unreadable one (a torn write of a crashed release) counts as none:
/// history is for people, and must not stop the lock from working.
pub fn read_history(file: &File) -> HistoryRecord {
    let mut buf = vec![0u8; HISTORY_LEN];
    let n = read_at_full(file, &mut buf, RECORD_LEN as u64).unwrap_or(0);
    let text = String::from_utf8_lossy(&buf[..n]);
    let text = text.trim_matches(|c: char| c.is_ascii_whitespace() || c == '\0');
    if text.is_empty() {
        return HistoryRecord::default();
    }
    serde_json::from_str(text).unwrap_or_default()
}

pub fn write_history(file: &File, path: &Path, history: &History) -> Result<()> {
    let mut record = read_history(file);
    record.last_run = Some(history.last_run.clone());
    if let Some(window) = history.once_per {
        // A window past the clock's range keeps the marker for ever rather than losing it.
        let ms = SystemTime::now()
            .checked_add(window)
            .map_or(u64::MAX, millis_since_epoch);
        record.once_until_ms = Some(ms);
    }
    let bytes = serde_json::to_vec(&record).expect("history serializes");
    write_padded(file, path, bytes, RECORD_LEN as u64, HISTORY_LEN)
}

pub fn millis_since_epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The next value of the counter `<name>.lock.meta` (locked by the caller), written back, and
/// never below `at_least` (the place's own previous token plus one).
pub fn bump_counter(
    meta: &File,
    path: &Path,
    at_least: Option<FencingToken>,
) -> Result<FencingToken> {
    let mut buf = [0u8; COUNTER_LEN];
    let n = read_at_full(meta, &mut buf, 0)
        .map_err(|e| BackendError::unavailable(format_args!("read {}", path.display()), e))?;
    let text = std::str::from_utf8(&buf[..n]).unwrap_or("?");
    let text = text.trim_matches(|c: char| c.is_ascii_whitespace() || c == '\0');
    let mut next = if text.is_empty() {
        first_token()
    } else {
        let last = text.parse::<u64>().map_err(|_| {
            BackendError::Unavailable(format!(
                "{} is not an elect token counter; if no job uses the lock, move it away",
                path.display()
            ))
        })?;
        grow(last, path)?
    };
    if let Some(floor) = at_least {
        next = next.max(floor);
    }
    write_padded(meta, path, next.0.to_string().into_bytes(), 0, COUNTER_LEN)?;
    Ok(next)
}

/// The token of a lock file's first acquisition: the wall clock in microseconds since 1970, not
/// 1, so that a lock file deleted and created again (which loses its counter) still hands out
/// tokens larger than any it handed out before, as long as the clock does not step back.
pub fn first_token() -> FencingToken {
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    FencingToken(micros.max(1))
}

/// Writes `record` at `offset`, padded with spaces to `len` bytes and ending in a newline, in one
/// `pwrite`: the file is never truncated.
fn write_padded(
    file: &File,
    path: &Path,
    mut record: Vec<u8>,
    offset: u64,
    len: usize,
) -> Result<()> {
    if record.len() >= len {
        return Err(BackendError::Config(
            "holder metadata is too long for a lock file; use a shorter --id".into(),
        ));
    }
    record.resize(len - 1, b' ');
    record.push(b'\n');
    file.write_all_at(&record, offset)
        .map_err(|e| BackendError::unavailable(format_args!("write {}", path.display()), e))
}

pub fn read_at_full(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// An empty file is a lock never held; anything else must be a record we wrote.
pub fn parse_holder(bytes: &[u8]) -> std::result::Result<Option<HolderInfo>, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "it is not text".to_owned())?;
    let text = text.trim_matches(|c: char| c.is_ascii_whitespace() || c == '\0');
    if text.is_empty() {
        return Ok(None);
    }
    serde_json::from_str(text)
        .map(Some)
        .map_err(|e| format!("unreadable record: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holder_records_name_their_lock_file() {
        let file = tempfile::tempfile().unwrap();
        let mut holder = HolderInfo::this_process(None, std::time::Duration::from_secs(1));
        holder.token = FencingToken(7);
        let real = Path::new("/run/lock/elect/x.lock");
        write_holder(&file, Path::new("x.lock"), real, &holder).unwrap();
        let mut buf = vec![0u8; RECORD_LEN];
        let n = read_at_full(&file, &mut buf, 0).unwrap();
        assert_eq!(
            parse_holder(&buf[..n]).unwrap().unwrap().token,
            FencingToken(7)
        );
        let meta = file.metadata().unwrap();
        assert_eq!(
            taken_as(&buf[..n]),
            TakenAs {
                lock_file: Some("/run/lock/elect/x.lock".into()),
                lock_inode: Some([meta.dev(), meta.ino()]),
            }
        );
        assert_eq!(read_taken_as(&file), taken_as(&buf[..n]));
        assert_eq!(taken_as(b"{\"id\":\"old\"}"), TakenAs::default());
        assert_eq!(taken_as(b"garbage"), TakenAs::default());
    }

    #[test]
    fn records() {
        assert_eq!(parse_holder(b"").unwrap(), None);
        assert_eq!(parse_holder(&[b' '; 64]).unwrap(), None);
        assert!(parse_holder(b"garbage").is_err());
        assert!(parse_holder(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn tokens_never_wrap() {
        let path = Path::new("/x.lock");
        assert_eq!(grow(41, path).unwrap(), FencingToken(42));
        let err = grow(u64::MAX, path).unwrap_err().to_string();
        assert!(err.contains("cannot grow"), "{err}");
    }

    #[test]
    fn counters_never_wrap_or_guess() {
        let file = tempfile::tempfile().unwrap();
        let path = Path::new("/x.lock.meta");
        file.write_all_at(b"41", 0).unwrap();
        assert_eq!(bump_counter(&file, path, None).unwrap(), FencingToken(42));
        file.write_all_at(u64::MAX.to_string().as_bytes(), 0)
            .unwrap();
        assert!(bump_counter(&file, path, None).is_err());
        file.write_all_at(b"garbage                  ", 0).unwrap();
        assert!(bump_counter(&file, path, None).is_err());
    }
}
