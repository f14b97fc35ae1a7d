//! The password file of libpq: `~/.pgpass`, or the file `PGPASSFILE` names.
//!
//! Each line is `host:port:database:user:password`; `*` in any of the first four fields matches
//! anything, `\:` and `\\` stand for a literal colon and backslash, `#` starts a comment line.
//! The first matching line wins. Like libpq, a file that group or others may read is ignored
//! with a warning: a password readable by other users is a password leaked.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

/// What to look up: the connection's host, port, database and user.
#[derive(Debug, Clone, Copy)]
pub struct Lookup<'a> {
    pub host: &'a str,
    pub port: u16,
    pub database: &'a str,
    pub user: &'a str,
}

/// The password for `lookup` from the password file, if there is one and it matches.
pub fn password(lookup: Lookup<'_>) -> Option<String> {
    let path = file_path()?;
    let meta = std::fs::metadata(&path).ok()?;
    if !meta.is_file() {
        return None;
    }
    if meta.mode() & 0o077 != 0 {
        tracing::warn!(
            file = %path.display(),
            "ignoring the password file: it is readable by group or others (chmod 0600 it)"
        );
        return None;
    }
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) => {
            tracing::warn!(file = %path.display(), %err, "cannot read the password file");
            return None;
        }
    };
    find(&text, lookup)
}

fn file_path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PGPASSFILE").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    // As root, root's own home (see `crate::home`), not the `HOME` that `sudo -E` keeps.
    Some(crate::home::dir()?.join(".pgpass"))
}

/// The password of the first line of `text` that matches `lookup`.
pub fn find(text: &str, lookup: Lookup<'_>) -> Option<String> {
    let port = lookup.port.to_string();
    let wanted = [lookup.host, port.as_str(), lookup.database, lookup.user];
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter_map(split_fields)
        .find(|fields| {
            fields[..4]
                .iter()
                .zip(wanted)
                .all(|(field, want)| field == "*" || field == want)
        })
        .map(|mut fields| fields.swap_remove(4))
}

/// Splits a line into its five fields, undoing `\:` and `\\`. Lines with fewer fields are
/// skipped, as libpq does; a password may itself contain unescaped colons.
fn split_fields(line: &str) -> Option<Vec<String>> {
    let mut fields = Vec::with_capacity(5);
    let mut current = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    current.push(next);
                }
            }
            ':' if fields.len() < 4 => fields.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    fields.push(current);
    (fields.len() == 5).then_some(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOOKUP: Lookup<'static> = Lookup {
        host: "db.example",
        port: 5432,
        database: "app",
        user: "elect",
    };

    #[test]
    fn first_matching_line_wins() {
        let text = "# comment\n\
                    other:5432:app:elect:nope\n\
                    db.example:5432:app:elect:first\n\
                    *:*:*:*:second\n";
        assert_eq!(find(text, LOOKUP).as_deref(), Some("first"));
    }

    #[test]
    fn wildcards_and_escapes() {
        assert_eq!(
            find("*:*:app:*:s\\:e\\\\cret", LOOKUP).as_deref(),
            Some("s:e\\cret")
        );
        assert_eq!(
            find("db.example:*:*:elect:a:b", LOOKUP).as_deref(),
            Some("a:b")
        );
        assert_eq!(find("db.example:5433:*:*:x", LOOKUP), None);
        assert_eq!(find("too:few:fields", LOOKUP), None);
        let escaped_host = Lookup {
            host: "a:b",
            ..LOOKUP
        };
        assert_eq!(find("a\\:b:*:*:*:y", escaped_host).as_deref(), Some("y"));
    }
}
