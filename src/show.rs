//! How values that others can write are shown to people.
//!
//! Holder records, run history and key names come from backends that other parties can write
//! (a lock file, a Redis key, an etcd key, a PostgreSQL row). In text meant for a terminal, a
//! control character in them could clear the screen, move the cursor or add a line that looks
//! like elect's own; so every human-readable output escapes them. JSON output is left to the JSON
//! encoder, which escapes control characters itself.
//!
//! Times from a backend may be anything the backend can store (before 1970, after 9999,
//! PostgreSQL's `infinity`); they are shown as `invalid time`, never a crash.

use std::borrow::Cow;
use std::fmt::Write;
use std::time::{Duration, SystemTime};

/// The text with every control character (C0, DEL, C1) and every bidirectional formatting
/// character written as an escape: `\x1b`, `\r`, `\u{202e}`. Anything else, backslashes included,
/// is left as it is.
pub fn text(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x100 && needs_escape(c) => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// The last instant RFC 3339 can write with a four-digit year (9999-12-31T23:59:59.999Z).
const LAST_WRITABLE: Duration = Duration::from_secs(253_402_300_800);

/// RFC 3339 with milliseconds, or `None` for a time outside 1970..=9999.
pub fn rfc3339(t: SystemTime) -> Option<String> {
    let since_epoch = t.duration_since(SystemTime::UNIX_EPOCH).ok()?;
    (since_epoch < LAST_WRITABLE).then(|| humantime::format_rfc3339_millis(t).to_string())
}

/// [`rfc3339`] for people: `invalid time` where there is none.
pub fn time(t: SystemTime) -> String {
    rfc3339(t).unwrap_or_else(|| "invalid time".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(text("web-1"), "web-1");
        assert_eq!(
            text("a\x1b[2J\r\nelect: error: fake\x07\u{9b}31m\u{202e}"),
            "a\\x1b[2J\\r\\nelect: error: fake\\x07\\x9b31m\\u{202e}"
        );
        assert_eq!(text("é ü 日本 \\x"), "é ü 日本 \\x");
    }

    #[test]
    fn times_outside_rfc3339_are_invalid() {
        let epoch = SystemTime::UNIX_EPOCH;
        assert_eq!(time(epoch), "1970-01-01T00:00:00.000Z");
        assert_eq!(time(epoch - Duration::from_secs(1)), "invalid time");
        assert_eq!(
            time(epoch + LAST_WRITABLE - Duration::from_millis(1)),
            "9999-12-31T23:59:59.999Z"
        );
        assert_eq!(time(epoch + LAST_WRITABLE), "invalid time");
        assert_eq!(
            time(epoch + Duration::from_secs(i64::MAX as u64 / 2)),
            "invalid time"
        );
    }
}
