//! The configuration file: the same keys as the environment variables, one `KEY=VALUE` a line, so
//! that thirty crontab lines need not each repeat the backend.
//!
//! Files: `--config PATH` (or `ELECT_CONFIG`) alone if given; otherwise `/etc/elect.conf`, then
//! `$XDG_CONFIG_HOME/elect.conf` (or `~/.config/elect.conf`), the later overriding the earlier.
//! Precedence is flag > environment > file > default: a key from a file is put into elect's
//! environment only where the environment does not already have it, and clap's own `env`
//! handling does the rest. That happens before clap parses and before any thread starts.
//!
//! A file that holds a password (a `*_PASSWORD` key, or a URL with one) must not be readable by
//! anyone but its owner; elect refuses it otherwise.
//!
//! # Whose files
//! elect often runs as root, and a file decides which backend the job's lease lives on and which
//! hooks run. So, as sshd's StrictModes and sudo do, a file is read only when no other user can
//! have written it: the file must be a regular file owned by root or the effective uid and not
//! writable by group or others, and so must every directory above it (a sticky directory such as
//! `/tmp` is allowed: others cannot rename or replace what is in it). Anything else is refused
//! (exit 2). The per-user file of root is the one under root's home in the password database, not
//! under `$HOME` or `$XDG_CONFIG_HOME`, which `sudo -E` keeps from the user who called it.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use clap::CommandFactory;

use crate::backend::{redact, BackendUrl};
use crate::cli::Cli;
use crate::exit::Failure;

/// Variables elect reads that are not flags.
const EXTRA_KEYS: [&str; 7] = [
    "ELECT_LOG",
    "ELECT_LOCK_DIR",
    "ELECT_REDIS_PASSWORD",
    "ELECT_REDIS_SENTINEL_PASSWORD",
    "ELECT_ETCD_USER",
    "ELECT_ETCD_PASSWORD",
    "ELECT_ZK_PASSWORD",
];

/// One setting from a file.
#[derive(Debug, Clone)]
pub struct Entry {
    pub key: String,
    pub value: String,
    pub file: PathBuf,
}

/// Where each setting came from, for `elect config`: the settings taken from files (those the
/// environment did not override); anything else set came from the environment.
#[derive(Debug, Default)]
pub struct Sources {
    pub files: Vec<Entry>,
}

/// Every key a file may hold: the `env` names of the flags, and a few more.
pub fn known_keys() -> Vec<String> {
    let cmd = Cli::command();
    let mut keys: Vec<String> = std::iter::once(&cmd)
        .chain(cmd.get_subcommands())
        .flat_map(|c| c.get_arguments())
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .chain(EXTRA_KEYS.iter().map(|k| k.to_string()))
        .filter(|k| k != "ELECT_CONFIG")
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// `--config PATH` or `--config=PATH` among the arguments (before `--`), else `ELECT_CONFIG`.
pub fn explicit_path(args: &[OsString]) -> Option<PathBuf> {
    let mut iter = args.iter().skip(1);
    while let Some(arg) = iter.next() {
        let arg = arg.to_string_lossy();
        if arg == "--" {
            break;
        }
        if arg == "--config" {
            return iter.next().map(PathBuf::from);
        }
        if let Some(path) = arg.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    std::env::var_os("ELECT_CONFIG")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

/// Reads the files and puts their settings into the environment where it has none.
/// Must run before any thread starts (it changes the environment).
pub fn load_into_env(args: &[OsString]) -> Result<Sources, Failure> {
    let paths = match explicit_path(args) {
        Some(path) => vec![(path, true)],
        None => default_paths().into_iter().map(|p| (p, false)).collect(),
    };
    let mut merged: BTreeMap<String, Entry> = BTreeMap::new();
    for (path, required) in paths {
        let text = match read_trusted(&path) {
            Ok(text) => text,
            Err(Unreadable::Missing) if !required => continue,
            Err(Unreadable::Missing) => {
                return Err(Failure::usage(format!(
                    "cannot read config file {}: it does not exist",
                    path.display()
                )))
            }
            Err(Unreadable::Refused(why)) => {
                return Err(Failure::usage(format!(
                    "config file {}: {why}",
                    path.display()
                )))
            }
        };
        // Built only when there is a file: most runs have none, and building the clap
        // definition is not free.
        let known = known_keys();
        let entries = parse(&text, &path, &known)?;
        check_secret_permissions(&path, &entries)?;
        for entry in entries {
            merged.insert(entry.key.clone(), entry);
        }
    }
    let mut files = Vec::new();
    for (key, entry) in merged {
        if std::env::var_os(&key).is_none() {
            // SAFETY: called from main before any other thread exists, so nothing reads the
            // environment concurrently.
            unsafe { std::env::set_var(&key, &entry.value) };
            files.push(entry);
        }
    }
    Ok(Sources { files })
}

fn default_paths() -> Vec<PathBuf> {
    let mut paths = vec![PathBuf::from("/etc/elect.conf")];
    if let Some(dir) = user_config_dir() {
        paths.push(dir.join("elect.conf"));
    }
    paths
}

/// Where the per-user file lives: `$XDG_CONFIG_HOME` or `~/.config`; as root, only under root's
/// own home from the password database (see the module doc).
fn user_config_dir() -> Option<PathBuf> {
    if nix::unistd::geteuid().is_root() {
        return crate::home::dir().map(|home| home.join(".config"));
    }
    std::env::var_os("XDG_CONFIG_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| crate::home::dir().map(|home| home.join(".config")))
}

/// Why a config file was not read.
#[derive(Debug)]
pub(crate) enum Unreadable {
    Missing,
    /// Unsafe or unreadable: the reason, with the fix.
    Refused(String),
}

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Missing => f.write_str("it does not exist"),
            Self::Refused(why) => f.write_str(why),
        }
    }
}

/// The file's text, if no user but root and the effective uid can have written it or a directory
/// above it. Symlinks are resolved first and the real path is checked; the file itself is opened
/// without following a link and checked on the open descriptor, with `O_NONBLOCK` so that a FIFO
/// planted there cannot hang elect.
pub(crate) fn read_trusted(path: &Path) -> Result<String, Unreadable> {
    let real = match std::fs::canonicalize(path) {
        Ok(real) => real,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Unreadable::Missing),
        Err(e) => return Err(Unreadable::Refused(format!("cannot read it: {e}"))),
    };
    let me = nix::unistd::geteuid().as_raw();
    for dir in real.ancestors().skip(1) {
        let meta = std::fs::metadata(dir)
            .map_err(|e| Unreadable::Refused(format!("cannot check {}: {e}", dir.display())))?;
        trusted(&meta, me, true)
            .map_err(|why| Unreadable::Refused(format!("the directory {} {why}", dir.display())))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(&real)
        .map_err(|e| Unreadable::Refused(format!("cannot read it: {e}")))?;
    let meta = file
        .metadata()
        .map_err(|e| Unreadable::Refused(format!("cannot check it: {e}")))?;
    if !meta.is_file() {
        return Err(Unreadable::Refused("it is not a regular file".into()));
    }
    trusted(&meta, me, false).map_err(|why| Unreadable::Refused(format!("it {why}")))?;
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(|e| Unreadable::Refused(format!("cannot read it: {e}")))?;
    Ok(text)
}

/// Whether only root and `me` can change a file or directory: `Err` says why not, and the fix.
fn trusted(meta: &std::fs::Metadata, me: u32, directory: bool) -> Result<(), String> {
    let mode = meta.mode() & 0o7777;
    if meta.uid() != 0 && meta.uid() != me {
        return Err(format!(
            "is owned by uid {}, not by root or uid {me}: another user controls it; \
             move the file somewhere only root and you can write",
            meta.uid()
        ));
    }
    let sticky = directory && mode & 0o1000 != 0;
    if mode & 0o022 != 0 && !sticky {
        return Err(format!(
            "is writable by group or others (mode {mode:04o}): chmod go-w it"
        ));
    }
    Ok(())
}

fn parse(text: &str, path: &Path, known: &[String]) -> Result<Vec<Entry>, Failure> {
    let mut entries = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |why: &str| Failure::usage(format!("{}:{}: {why}", path.display(), n + 1));
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| bad("expected KEY=VALUE"))?;
        let key = key
            .trim()
            .strip_prefix("export ")
            .unwrap_or(key.trim())
            .trim();
        if !known.iter().any(|k| k == key) {
            return Err(bad(&format!(
                "unknown key {key} (known: the ELECT_* variables of `elect config`)"
            )));
        }
        let value = unquote(value.trim());
        entries.push(Entry {
            key: key.to_owned(),
            value,
            file: path.to_owned(),
        });
    }
    Ok(entries)
}

fn unquote(value: &str) -> String {
    for quote in ['"', '\''] {
        if let Some(inner) = value
            .strip_prefix(quote)
            .and_then(|v| v.strip_suffix(quote))
        {
            return inner.to_owned();
        }
    }
    value.to_owned()
}

fn is_secret(key: &str, value: &str) -> bool {
    key.ends_with("PASSWORD")
        || (key == "ELECT_BACKEND"
            && BackendUrl::parse(value).map_or(value.contains('@'), |url| url.holds_secret()))
}

fn check_secret_permissions(path: &Path, entries: &[Entry]) -> Result<(), Failure> {
    let Some(secret) = entries.iter().find(|e| is_secret(&e.key, &e.value)) else {
        return Ok(());
    };
    let meta = std::fs::metadata(path)
        .map_err(|e| Failure::usage(format!("cannot stat {}: {e}", path.display())))?;
    let me = nix::unistd::geteuid().as_raw();
    if meta.mode() & 0o077 != 0 || (meta.uid() != me && meta.uid() != 0) {
        return Err(Failure::usage(format!(
            "config file {} holds a password ({}) but is readable by others (mode {:04o}, owner uid {}); \
             chmod 600 it",
            path.display(),
            secret.key,
            meta.mode() & 0o7777,
            meta.uid()
        )));
    }
    Ok(())
}

/// `elect config`: every setting, its value (secrets redacted) and where it came from.
pub fn show(sources: &Sources) -> String {
    show_with(sources, |key| std::env::var(key).ok())
}

/// [`show`], reading the environment through `var`.
pub(crate) fn show_with(sources: &Sources, var: impl Fn(&str) -> Option<String>) -> String {
    let cmd = Cli::command();
    let defaults: BTreeMap<String, String> = cmd
        .get_subcommands()
        .flat_map(|c| c.get_arguments())
        .filter_map(|a| {
            let env = a.get_env()?.to_string_lossy().into_owned();
            let default = a
                .get_default_values()
                .first()?
                .to_string_lossy()
                .into_owned();
            Some((env, default))
        })
        .collect();
    let mut rows = vec![("KEY".to_owned(), "VALUE".to_owned(), "SOURCE".to_owned())];
    for key in known_keys() {
        let value = var(&key);
        let source = if let Some(entry) = sources.files.iter().find(|e| e.key == key) {
            format!("file {}", entry.file.display())
        } else if value.is_some() {
            "environment".to_owned()
        } else if defaults.contains_key(&key) {
            "default".to_owned()
        } else {
            "unset".to_owned()
        };
        let shown = match (&value, defaults.get(&key)) {
            (Some(v), _) if key.ends_with("PASSWORD") => {
                if v.is_empty() {
                    String::new()
                } else {
                    "***".to_owned()
                }
            }
            (Some(v), _) if key == "ELECT_BACKEND" => redact(v),
            (Some(v), _) => v.clone(),
            (None, Some(d)) => d.clone(),
            (None, None) => "-".to_owned(),
        };
        rows.push((key, crate::show::text(&shown).into_owned(), source));
    }
    let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let w1 = rows.iter().map(|r| r.1.len()).max().unwrap_or(0).min(60);
    rows.iter()
        .map(|(k, v, s)| format!("{k:<w0$}  {v:<w1$}  {s}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_keys_values_and_comments() {
        let known = known_keys();
        let text =
            "# comment\nELECT_TTL=30s\nexport ELECT_GRACE = \"5s\"\n\nELECT_BACKEND='redis://h'\n";
        let entries = parse(text, Path::new("x.conf"), &known).unwrap();
        let pairs: Vec<(&str, &str)> = entries
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("ELECT_TTL", "30s"),
                ("ELECT_GRACE", "5s"),
                ("ELECT_BACKEND", "redis://h")
            ]
        );
    }

    #[test]
    fn rejects_unknown_keys_and_garbage() {
        let known = known_keys();
        let err = parse("ELECT_TTLL=3s\n", Path::new("x.conf"), &known).unwrap_err();
        assert!(
            err.message.contains("x.conf:1: unknown key ELECT_TTLL"),
            "{}",
            err.message
        );
        assert!(parse("just words\n", Path::new("x.conf"), &known).is_err());
    }

    #[test]
    fn knows_the_flag_variables() {
        let known = known_keys();
        for key in [
            "ELECT_BACKEND",
            "ELECT_TTL",
            "ELECT_WAIT",
            "ELECT_LOCK_DIR",
            "ELECT_LOG",
        ] {
            assert!(known.iter().any(|k| k == key), "{key}");
        }
    }

    #[test]
    fn secrets() {
        assert!(is_secret("ELECT_REDIS_PASSWORD", "x"));
        assert!(is_secret("ELECT_BACKEND", "redis://:pw@h"));
        assert!(!is_secret("ELECT_BACKEND", "redis://h"));
    }
}
