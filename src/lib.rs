//! elect: run a command under a named lease, so that one holder at a time runs it.
//!
//! # Layout
//! - [`cli`]: the clap definition; its doc comments are the `--help` text.
//! - [`conffile`]: `/etc/elect.conf` and friends: settings that sit under the environment.
//! - [`config`]: raw arguments validated once into settings in which invalid states cannot exist.
//! - [`exit`]: the one table of exit codes.
//! - [`lease`]: lock names, fencing tokens, holder metadata, leases.
//! - [`clock`]: CLOCK_BOOTTIME, the clock of every lease deadline.
//! - [`timing`]: the lease math of the safety rule (deadline, SIGTERM and SIGKILL times).
//! - [`backend`]: the backend trait, the closed set of backends, URL parsing and redaction, and
//!   what the backends share (`retry`, `random`, `tls`).
//! - [`keeper`]: the renew loop; turns renewals into deadlines, or declares the lease lost.
//! - [`front`] (runs in the front): at a terminal, the process the shell sees, so that Ctrl-Z
//!   and `fg` work while elect keeps renewing.
//! - [`watchdog`] (runs in the watchdog): a forked helper process that owns the job: spawns it in
//!   its own process group, reaps it as a subreaper, and kills it by the deadline on its own even
//!   if elect is stopped. Its modules: `launcher` (runs in the job's process until the exec;
//!   with `--pid-namespace`, `launcher::namespace` runs in it and in the namespace's init),
//!   `placement` (CPUs; watchdog and launcher), `title` (the names in `ps`; watchdog and
//!   launcher), `protocol` (the messages; shared with elect), `releaser` (starts [`handoff`]),
//!   and, in the watchdog alone, `stop` (SIGTERM, grace, SIGKILL by the deadline),
//!   `job_control` (Ctrl-Z and `fg` at a terminal) and `linger` (after the job's end).
//! - [`job`] (runs in elect): elect's handle on the watchdog and the job's launcher: the fork,
//!   the sockets, the start order and its answer, the orders that follow, the reap; and
//!   `job::guard`, elect as the job's second guard when the watchdog is killed or stopped.
//! - [`procfs`]: descendants and states of processes, from `/proc` (watchdog and elect).
//! - [`signals`]: the signals elect forwards to the job (elect, front and watchdog).
//! - [`supervisor`] (runs in elect): one `select!` that feeds deadlines, forwards signals, drives
//!   the guard and collects the exit status.
//! - [`run`]: `elect run`: acquire, supervise, release. Its modules: `acquire` (taking the lease,
//!   waiting), `end` (how a run ended, one value, and what follows from it).
//! - [`home`]: the home directory whose files elect may read (as root, root's own).
//! - [`hooks`]: `--on-acquired`, `--on-busy`, `--on-lost` commands.
//! - [`jobenv`]: the environment of the job and the hooks: the run's variables, no secrets.
//! - [`notify`]: systemd readiness, status and watchdog notifications.
//! - [`metrics`]: `--metrics-file`, Prometheus text format.
//! - [`status`]: `elect status`, text and JSON.
//! - [`release`]: `elect release --token N`, an operator's compare-and-delete.
//! - [`handoff`] (runs in a process the watchdog starts): the release of the lease when elect
//!   alone died; the watchdog's side is `watchdog::releaser`.
//! - [`logging`]: one line per event on stderr, text or JSON.
//! - [`show`]: how values that others can write are shown to people (escaped, invalid times).
//! - [`generate`], [`manual`]: the man page and shell completions, generated from [`cli`].

pub mod backend;
pub mod cli;
pub mod clock;
pub mod conffile;
pub mod config;
pub mod exit;
pub mod front;
pub mod generate;
pub mod handoff;
pub mod home;
pub mod hooks;
pub mod job;
pub mod jobenv;
pub mod keeper;
pub mod lease;
pub mod logging;
pub mod manual;
pub mod metrics;
pub mod notify;
pub mod procfs;
pub mod release;
pub mod run;
pub mod show;
pub mod signals;
pub mod status;
pub mod supervisor;
pub mod timing;
pub mod watchdog;
