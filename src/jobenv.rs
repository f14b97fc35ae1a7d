//! The environment of the job and of the hooks: one computation for both, so that a hook never
//! sees a secret the job is spared.
//!
//! Both inherit elect's environment (the job through the watchdog, which was forked after the
//! configuration files were read; a hook from elect itself) with these changes:
//! - the `ELECT_*` variables of the run are set, `ELECT_BACKEND` to the redacted URL whatever
//!   elect's own `ELECT_BACKEND` holds;
//! - secrets elect read are removed: every `ELECT_*PASSWORD` variable, the backend's own secret
//!   variables (`PGPASSWORD`), whether they came from the environment or a configuration file;
//! - `NOTIFY_SOCKET` is removed: elect speaks to systemd for the unit.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

use crate::lease::{Lease, LockName};

/// Withheld whether or not they are set: a configuration file may have put them into elect's
/// environment.
const WITHHELD: [&str; 4] = [
    "ELECT_ETCD_PASSWORD",
    "ELECT_REDIS_PASSWORD",
    "ELECT_ZK_PASSWORD",
    "NOTIFY_SOCKET",
];

/// Variables to set and variables to remove, on top of elect's own environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobEnv {
    set: Vec<(String, String)>,
    withheld: Vec<OsString>,
}

impl JobEnv {
    /// What every hook and the job share: the lock, the backend (redacted), no secrets.
    /// `backend_secrets` are the variables the open backend read a secret from.
    pub fn new(lock: &LockName, describe: &str, backend_secrets: &[&str]) -> Self {
        let mut withheld: Vec<OsString> = WITHHELD
            .iter()
            .chain(backend_secrets)
            .map(OsString::from)
            .collect();
        let named: Vec<OsString> = std::env::vars_os()
            .map(|(k, _)| k)
            .filter(|k| is_secret_name(k) && !withheld.contains(k))
            .collect();
        withheld.extend(named);
        Self {
            set: vec![
                ("ELECT_LOCK".into(), lock.to_string()),
                ("ELECT_BACKEND".into(), describe.to_owned()),
            ],
            withheld,
        }
    }

    /// The environment of a lease's job: adds its token and holder id.
    pub fn for_lease(&self, lease: &Lease) -> Self {
        self.clone().with([
            ("ELECT_FENCING_TOKEN".into(), lease.token().to_string()),
            ("ELECT_HOLDER_ID".into(), lease.holder.id.clone()),
        ])
    }

    /// Adds (or replaces) variables; a withheld name stays withheld.
    pub fn with(mut self, vars: impl IntoIterator<Item = (String, String)>) -> Self {
        for (key, value) in vars {
            if self.withheld.iter().any(|k| *k == *key) {
                continue;
            }
            self.set.retain(|(k, _)| *k != key);
            self.set.push((key, value));
        }
        self
    }

    /// The variables set.
    pub fn vars(&self) -> &[(String, String)] {
        &self.set
    }

    /// The variables removed.
    pub fn withheld(&self) -> &[OsString] {
        &self.withheld
    }

    /// As the start order carries it: `Some` to set, `None` to remove.
    pub fn changes(&self) -> Vec<(OsString, Option<OsString>)> {
        self.set
            .iter()
            .map(|(k, v)| (OsString::from(k), Some(OsString::from(v))))
            .chain(self.withheld.iter().map(|k| (k.clone(), None)))
            .collect()
    }

    /// Applies the changes to a hook's command.
    pub fn apply(&self, cmd: &mut tokio::process::Command) {
        for key in &self.withheld {
            cmd.env_remove(key);
        }
        cmd.envs(self.set.iter().map(|(k, v)| (k, v)));
    }
}

/// `ELECT_*PASSWORD`: the names of elect's own secrets, present and future (bytes: a name need
/// not be UTF-8).
fn is_secret_name(name: &OsStr) -> bool {
    let name = name.as_bytes();
    name.starts_with(b"ELECT_") && name.ends_with(b"PASSWORD")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_stay_withheld() {
        let lock = LockName::new("billing").unwrap();
        let env = JobEnv::new(&lock, "redis://app:***@cache", &["PGPASSWORD"]).with([
            ("PGPASSWORD".into(), "x".into()),
            ("ELECT_HELD_BY_ID".into(), "web-1".into()),
        ]);
        for key in ["ELECT_REDIS_PASSWORD", "PGPASSWORD", "NOTIFY_SOCKET"] {
            assert!(env.withheld().iter().any(|k| k == key), "{key}");
            assert!(!env.vars().iter().any(|(k, _)| k == key), "{key}");
        }
        assert!(env
            .vars()
            .contains(&("ELECT_BACKEND".into(), "redis://app:***@cache".into())));
        assert!(env.vars().iter().any(|(k, _)| k == "ELECT_HELD_BY_ID"));
        assert!(is_secret_name(OsStr::new("ELECT_ZK_PASSWORD")));
        assert!(is_secret_name(OsStr::from_bytes(b"ELECT_\xff_PASSWORD")));
        assert!(!is_secret_name(OsStr::new("ELECT_PASSWORD_FILE")));
    }
}
