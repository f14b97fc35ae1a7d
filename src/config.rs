//! Raw arguments, validated once into settings in which invalid states cannot exist.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::ArgMatches;

use crate::backend::{redact, BackendOptions};
use crate::cli::{BackendArgs, RunArgs, Wait};
use crate::exit::Failure;
use crate::hooks::Hooks;
use crate::lease::LockName;
use crate::timing::LeaseTiming;
use crate::watchdog::protocol::Isolation;

/// Where to find the backend, with its secret kept out of `Debug`.
#[derive(Clone, Default)]
pub struct BackendConfig {
    /// The URL as given (may hold a password); `None` for the default file backend.
    pub url: Option<String>,
    pub options: BackendOptions,
}

impl std::fmt::Debug for BackendConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendConfig")
            .field("url", &self.url.as_deref().map(redact))
            .field("options", &self.options)
            .finish()
    }
}

impl BackendConfig {
    /// Flag beats environment: `--backend` > `--backend-file` > `ELECT_BACKEND` >
    /// `ELECT_BACKEND_FILE`.
    pub fn from_args(args: &BackendArgs, matches: &ArgMatches) -> Result<Self, Failure> {
        let from_flag = |id: &str| matches.value_source(id) == Some(ValueSource::CommandLine);
        let url = match (&args.backend, &args.backend_file) {
            (Some(url), Some(_)) if from_flag("backend") => Some(url.clone()),
            (Some(_), Some(path)) if from_flag("backend_file") => Some(read_url_file(path)?),
            (Some(url), _) => Some(url.clone()),
            (None, Some(path)) => Some(read_url_file(path)?),
            (None, None) => None,
        };
        let url = url.map(|u| u.trim().to_owned()).filter(|u| !u.is_empty());
        Ok(Self {
            url,
            options: BackendOptions {
                tls_ca: args.tls_ca.clone(),
                tls_cert: args.tls_cert.clone(),
                tls_key: args.tls_key.clone(),
            },
        })
    }

    /// The URL for messages, before the backend is open.
    pub fn describe(&self) -> String {
        self.url
            .as_deref()
            .map_or_else(|| "file (default lock directory)".to_owned(), redact)
    }
}

/// Reads a `--backend-file` under the rule of the configuration files (see [`crate::conffile`]):
/// it picks where root's leases live, so no other user may have written it.
fn read_url_file(path: &std::path::Path) -> Result<String, Failure> {
    crate::conffile::read_trusted(path).map_err(|why| {
        Failure::usage(format!(
            "cannot read the backend URL from {}: {why}",
            path.display()
        ))
    })
}

/// Where the job runs. A PID namespace takes CAP_SYS_ADMIN, which elect has as root: asked for
/// without root, it is refused before anything starts, rather than failing at the job's start.
fn isolation(pid_namespace: bool, lock: &LockName) -> Result<Isolation, Failure> {
    if !pid_namespace {
        return Ok(Isolation::Shared);
    }
    if !nix::unistd::geteuid().is_root() {
        return Err(Failure::usage(format!(
            "lock {lock}: --pid-namespace (ELECT_PID_NAMESPACE) needs root: only root may create a PID namespace; drop the option, or run elect as root"
        )));
    }
    Ok(Isolation::PidNamespace)
}

/// Everything `elect run` needs, validated.
#[derive(Debug)]
pub struct RunConfig {
    pub lock: LockName,
    pub timing: LeaseTiming,
    pub wait: Wait,
    pub conflict_exit_code: u8,
    pub id: Option<String>,
    pub command: Vec<OsString>,
    pub backend: BackendConfig,
    pub max_runtime: Option<Duration>,
    /// `--once-per`: the window after a successful run in which the job is skipped.
    pub once_per: Option<Duration>,
    /// `--holders`: how many may hold the lock at once.
    pub holders: u32,
    pub hooks: Hooks,
    pub metrics_file: Option<PathBuf>,
    /// `--pid-namespace`: the job in a PID namespace of its own.
    pub isolation: Isolation,
}

impl RunConfig {
    pub fn from_args(args: RunArgs, matches: &ArgMatches) -> Result<Self, Failure> {
        let timing = LeaseTiming::new(args.ttl, args.renew, args.grace)
            .map_err(|e| Failure::usage(format!("lock {}: {e}", args.lock)))?;
        let backend = BackendConfig::from_args(&args.backend, matches)?;
        let isolation = isolation(args.pid_namespace.unwrap_or(false), &args.lock)?;
        Ok(Self {
            isolation,
            lock: args.lock,
            timing,
            wait: args.wait.unwrap_or(Wait::No),
            conflict_exit_code: args.conflict_exit_code,
            id: args.id,
            command: args.command,
            backend,
            max_runtime: args.max_runtime,
            once_per: args.once_per,
            holders: args.holders,
            hooks: Hooks {
                on_acquired: args.on_acquired,
                on_busy: args.on_busy,
                on_lost: args.on_lost,
                timeout: args.hook_timeout,
            },
            metrics_file: args.metrics_file,
        })
    }

    /// The longest the wait may last, if bounded.
    pub fn wait_limit(&self) -> Option<Duration> {
        match self.wait {
            Wait::AtMost(d) => Some(d),
            Wait::No | Wait::Forever => None,
        }
    }
}
