//! Thin: parse, run, turn the outcome into the process status.

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

use elect::cli::{Cli, Command};
use elect::config::{BackendConfig, RunConfig};
use elect::exit::Failure;

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.len() == 1 && args[0] == elect::handoff::ARGV0 {
        return ExitCode::from(elect::handoff::serve());
    }
    let sources = match elect::conffile::load_into_env(&args) {
        Ok(sources) => sources,
        Err(failure) => {
            eprintln!("elect: error: {}", failure.message);
            return ExitCode::from(failure.code);
        }
    };
    // Before anything else grows the process (see `run::prepare`); reported once logging is set.
    let prepared = elect::cli::names_run(&args).then(elect::run::prepare);
    let matches = Cli::command().get_matches_from(args);
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(err) => err.exit(),
    };
    let (_, sub) = matches.subcommand().expect("a subcommand is required");
    let outcome = match cli.command {
        Command::Run(args) => {
            elect::logging::init(&args.backend.log);
            RunConfig::from_args(*args, sub).and_then(|cfg| {
                let link = prepared.unwrap_or_else(elect::run::prepare)?;
                elect::run::run(cfg, link)
            })
        }
        Command::Status(args) => {
            elect::logging::init(&args.backend.log);
            BackendConfig::from_args(&args.backend, sub)
                .and_then(|backend| elect::status::status(backend, args.lock, args.json))
        }
        Command::Release(args) => {
            elect::logging::init(&args.backend.log);
            BackendConfig::from_args(&args.backend, sub).and_then(|backend| {
                elect::release::release(backend, args.lock, elect::lease::FencingToken(args.token))
            })
        }
        Command::Config => {
            print!("{}", elect::conffile::show(&sources));
            Ok(0)
        }
        Command::Generate { dir } => elect::generate::write_all(&dir)
            .map(|()| 0)
            .map_err(|e| Failure::new(1, format!("cannot write under {}: {e}", dir.display()))),
    };
    ExitCode::from(outcome.unwrap_or_else(report))
}

/// Prints the one line that explains a failure, and returns its code.
fn report(failure: Failure) -> u8 {
    if !failure.message.is_empty() {
        tracing::error!("{}", failure.message);
    }
    failure.code
}
