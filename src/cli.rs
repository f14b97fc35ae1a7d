//! The command line. Doc comments here are the `--help` text.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::lease::LockName;

const EXAMPLES: &str = "\
Examples:
  elect run --lock billing -- ./bill-customers.sh     # skip (exit 75) if held
  elect run --lock billing --wait=10m -- ./bill.sh    # wait up to 10 minutes
  ELECT_BACKEND=redis://cache:6379 elect run --lock db-migrate -- ./migrate
  elect status --lock billing --json";

const RUN_AFTER_HELP: &str = "\
Exit codes: COMMAND's own, 128+N if killed by signal N; 2 usage; 69 backend unavailable;
  75 held elsewhere; 76 lease lost while running; 124 --max-runtime reached;
  126/127 COMMAND not executable / not found

Examples:
  elect run --lock billing -- ./bill-customers.sh     # skip (exit 75) if held
  elect run --lock billing --wait=10m -- ./bill.sh    # wait up to 10 minutes
  ELECT_BACKEND=redis://cache:6379 elect run --lock db-migrate -- ./migrate";

/// Run a command under a named lease, so that one holder at a time runs it, on one machine or
/// across many.
#[derive(Debug, Parser)]
#[command(name = "elect", version, after_help = EXAMPLES, max_term_width = 100)]
pub struct Cli {
    /// Read settings from this file instead of /etc/elect.conf and ~/.config/elect.conf
    #[arg(long, global = true, env = "ELECT_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Take the lease, run COMMAND, release the lease when it exits
    #[command(after_help = RUN_AFTER_HELP)]
    Run(Box<RunArgs>),
    /// Show who holds which lock (exit 0 held, 3 free, 69 backend unavailable)
    Status(StatusArgs),
    /// Free a lock whose holder is known dead, only if its fencing token is still N
    Release(ReleaseArgs),
    /// Show every setting, its value and where it came from (flag > environment > file > default)
    Config,
    /// Write the man page and shell completions under DIR (for packaging).
    #[command(hide = true)]
    Generate {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct BackendArgs {
    /// Where leases live: file:///DIR, redis://, rediss://, redis+sentinel://, redis+cluster://,
    /// etcd://, etcds://, postgres://, zk://
    /// [default: the local lock directory]
    #[arg(
        long,
        env = "ELECT_BACKEND",
        value_name = "URL",
        hide_env_values = true
    )]
    pub backend: Option<String>,

    /// Read the backend URL from a file, so that secrets stay out of argv
    #[arg(long, env = "ELECT_BACKEND_FILE", value_name = "PATH")]
    pub backend_file: Option<PathBuf>,

    /// CA certificate that verifies a TLS backend
    #[arg(
        long,
        env = "ELECT_TLS_CA",
        value_name = "PATH",
        hide_short_help = true
    )]
    pub tls_ca: Option<PathBuf>,

    /// Client certificate for a TLS backend
    #[arg(
        long,
        env = "ELECT_TLS_CERT",
        value_name = "PATH",
        hide_short_help = true
    )]
    pub tls_cert: Option<PathBuf>,

    /// Client key for a TLS backend
    #[arg(
        long,
        env = "ELECT_TLS_KEY",
        value_name = "PATH",
        hide_short_help = true
    )]
    pub tls_key: Option<PathBuf>,

    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, Args)]
pub struct LogArgs {
    /// Only errors on stderr (ELECT_LOG takes a tracing filter instead)
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub quiet: u8,

    /// More detail on stderr: -v every lease event, -vv everything
    #[arg(short, long, action = clap::ArgAction::Count, global = true, conflicts_with = "quiet")]
    pub verbose: u8,

    /// Log line format on stderr
    #[arg(long, env = "ELECT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, hide_short_help = true)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Lease name: a letter or digit, then up to 127 of A-Z a-z 0-9 . _ -
    #[arg(long, env = "ELECT_LOCK", value_name = "NAME", value_parser = parse_lock)]
    pub lock: LockName,

    /// Lease time-to-live on the backend
    #[arg(long, env = "ELECT_TTL", value_name = "DURATION", default_value = "15s", value_parser = parse_duration)]
    pub ttl: Duration,

    /// How often the holder renews [default: ttl / 3]
    #[arg(long, env = "ELECT_RENEW", value_name = "DURATION", value_parser = parse_duration)]
    pub renew: Option<Duration>,

    /// SIGTERM-to-SIGKILL grace when the job must stop
    #[arg(long, env = "ELECT_GRACE", value_name = "DURATION", default_value = "3s", value_parser = parse_duration)]
    pub grace: Duration,

    /// Wait for the lock instead of exiting 75: for ever, or at most DURATION (--wait=30s)
    #[arg(
        long,
        env = "ELECT_WAIT",
        value_name = "DURATION",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "forever",
        value_parser = parse_wait
    )]
    pub wait: Option<Wait>,

    /// Exit code when the lock is held elsewhere (0 makes a skip silent, for cron)
    #[arg(
        long,
        env = "ELECT_CONFLICT_EXIT_CODE",
        value_name = "N",
        default_value_t = 75
    )]
    pub conflict_exit_code: u8,

    /// After a successful run (exit 0), skip the job (exit 75) until DURATION has passed, by the
    /// backend's clock: once per window across every machine
    #[arg(long, env = "ELECT_ONCE_PER", value_name = "DURATION", value_parser = parse_window)]
    pub once_per: Option<Duration>,

    /// At most N holders of the lock at once across every machine, each with its own fencing
    /// token (every contender of the lock must use the same N)
    #[arg(long, env = "ELECT_HOLDERS", value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub holders: u32,

    /// Stop the job after DURATION (SIGTERM, SIGKILL after --grace) and exit 124
    #[arg(long, env = "ELECT_MAX_RUNTIME", value_name = "DURATION", value_parser = parse_duration)]
    pub max_runtime: Option<Duration>,

    /// Run the job in a PID namespace of its own (root only), so that every process it starts,
    /// daemons included, dies with elect's watchdog; the job then sees its own pids only
    #[arg(long, env = "ELECT_PID_NAMESPACE", value_name = "BOOL", num_args = 0..=1,
          require_equals = true, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub pid_namespace: Option<bool>,

    /// Run CMD (with sh -c) when the lease is taken
    #[arg(long, env = "ELECT_ON_ACQUIRED", value_name = "CMD")]
    pub on_acquired: Option<String>,

    /// Run CMD when the run is skipped because the lock is held
    #[arg(long, env = "ELECT_ON_BUSY", value_name = "CMD")]
    pub on_busy: Option<String>,

    /// Run CMD when the lease is lost while the job runs
    #[arg(long, env = "ELECT_ON_LOST", value_name = "CMD")]
    pub on_lost: Option<String>,

    /// How long a hook may run before it is killed
    #[arg(long, env = "ELECT_HOOK_TIMEOUT", value_name = "DURATION", default_value = "10s", value_parser = parse_duration, hide_short_help = true)]
    pub hook_timeout: Duration,

    /// Write Prometheus metrics of the run to PATH at exit (textfile collector)
    #[arg(long, env = "ELECT_METRICS_FILE", value_name = "PATH")]
    pub metrics_file: Option<PathBuf>,

    /// Holder identity recorded with the lease [default: HOSTNAME:PID]
    #[arg(long, env = "ELECT_ID", value_name = "ID", value_parser = parse_id)]
    pub id: Option<String>,

    #[command(flatten)]
    pub backend: BackendArgs,

    /// The command to run, and its arguments
    #[arg(
        value_name = "COMMAND",
        required = true,
        num_args = 1..,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub command: Vec<OsString>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Show only this lock
    #[arg(long, env = "ELECT_LOCK", value_name = "NAME", value_parser = parse_lock)]
    pub lock: Option<LockName>,

    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub backend: BackendArgs,
}

#[derive(Debug, Args)]
pub struct ReleaseArgs {
    /// The lock to free
    #[arg(long, env = "ELECT_LOCK", value_name = "NAME", value_parser = parse_lock)]
    pub lock: LockName,

    /// Free it only if its holder's fencing token is N (see `elect status`)
    #[arg(long, value_name = "N")]
    pub token: u64,

    #[command(flatten)]
    pub backend: BackendArgs,
}

/// How long `run` waits for a busy lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    No,
    Forever,
    AtMost(Duration),
}

fn parse_lock(text: &str) -> Result<LockName, String> {
    LockName::new(text).map_err(|e| e.to_string())
}

/// The longest duration any setting takes: far beyond any sensible lease, wait or window, and
/// short enough that every clock reading, deadline and backend expiry built from a few of them
/// stays representable (CLOCK_BOOTTIME in u64 nanoseconds lasts 584 years; wall-clock times,
/// Redis PX milliseconds and etcd TTL seconds last longer). A year is 365.25 days, as humantime
/// counts it.
pub const LONGEST: Duration = Duration::from_secs(100 * 31_557_600);

fn parse_duration(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text.trim())
        .map_err(|e| format!("{e}; expected a duration such as 500ms, 15s or 2m"))?;
    if d > LONGEST {
        return Err("too long: at most 100 years".into());
    }
    Ok(d)
}

fn parse_window(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        d if d.is_zero() => Err("the window must be longer than zero".into()),
        d => Ok(d),
    }
}

fn parse_wait(text: &str) -> Result<Wait, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "forever" | "true" | "yes" | "1" => Ok(Wait::Forever),
        "" | "false" | "no" | "0" => Ok(Wait::No),
        _ => parse_duration(text).map(Wait::AtMost),
    }
}

fn parse_id(text: &str) -> Result<String, String> {
    if text.is_empty() || text.len() > 256 || text.chars().any(char::is_control) {
        return Err("an id is 1 to 256 printable characters".into());
    }
    Ok(text.to_owned())
}

/// Whether these arguments (program name first) name the `run` subcommand, read before clap
/// parses them so that `elect run` can fork its helpers early (see `run::prepare`). Only the
/// global options may come first. A miss costs nothing but time: `run` then forks them later.
pub fn names_run(args: &[OsString]) -> bool {
    let mut rest = args.iter().skip(1);
    while let Some(arg) = rest.next() {
        match arg.to_str() {
            Some("--config") => {
                rest.next();
            }
            Some(a) if a.starts_with("--config=") || a == "--quiet" || a == "--verbose" => {}
            // -q, -v, -vv, ...
            Some(a)
                if a.len() > 1
                    && a.strip_prefix('-')
                        .is_some_and(|f| f.bytes().all(|b| b == b'q' || b == b'v')) => {}
            Some(a) => return a == "run",
            None => return false,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn wait_values() {
        assert_eq!(parse_wait("forever"), Ok(Wait::Forever));
        assert_eq!(parse_wait("0"), Ok(Wait::No));
        assert_eq!(parse_wait("30s"), Ok(Wait::AtMost(Duration::from_secs(30))));
        assert!(parse_wait("soon").is_err());
    }

    #[test]
    fn durations_past_the_clocks_range_are_refused() {
        for text in ["18446744073709551615s", "600000y", "101y", "584542046090y"] {
            let err = parse_duration(text).unwrap_err();
            assert!(
                err.contains("too long") || err.contains("overflow"),
                "{text}: {err}"
            );
        }
        assert_eq!(parse_duration("100y"), Ok(LONGEST));
        assert!(parse_window("600000y").is_err());
        assert!(parse_wait("18446744073709551615s").is_err());
    }

    #[test]
    fn once_per_values() {
        assert_eq!(parse_window("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_window("abc").is_err());
        assert!(parse_window("0s").is_err());
    }

    #[test]
    fn command_after_double_dash() {
        let cli = Cli::try_parse_from(["elect", "run", "--lock", "x", "--", "ls", "-l"]).unwrap();
        let Command::Run(run) = cli.command else {
            panic!("not run")
        };
        assert_eq!(run.command, ["ls", "-l"]);
        assert!(Cli::try_parse_from(["elect", "run", "--lock", "x", "--"]).is_err());
        assert!(Cli::try_parse_from(["elect", "run", "--lock", "a/b", "--", "true"]).is_err());
    }

    #[test]
    fn run_is_seen_before_parsing() {
        let names = |args: &[&str]| names_run(&args.iter().map(OsString::from).collect::<Vec<_>>());
        assert!(names(&["elect", "run", "--lock", "x", "--", "true"]));
        assert!(names(&["elect", "-vv", "--config", "/etc/x.conf", "run"]));
        assert!(names(&["elect", "--config=run.conf", "-q", "run"]));
        assert!(!names(&["elect", "--config", "run", "status"]));
        assert!(!names(&["elect", "status", "run"]));
        assert!(!names(&["elect", "--lock", "run"]));
        assert!(!names(&["elect"]));
    }
}
