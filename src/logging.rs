//! One line per event on stderr: `elect: ...` for people, JSON for log shippers.
//!
//! The default level is info, and a run that goes as planned logs nothing at info: cron mails
//! whatever a job prints, so elect stays as quiet as flock(1) unless something needs attention.
//! `-v` shows every lease event (acquired, renewed, released, child exited). The one exception
//! is a `--wait` at a terminal, where someone watches: elect says once what it waits for.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

use crate::cli::{LogArgs, LogFormat};

pub fn init(args: &LogArgs) {
    let filter = match (args.quiet, args.verbose) {
        (q, _) if q > 0 => EnvFilter::new("error"),
        // The ZooKeeper client announces every session at info: for elect that is debug.
        (_, 1) => EnvFilter::new("debug,zookeeper_client=info"),
        (_, v) if v > 1 => EnvFilter::new("trace"),
        _ => EnvFilter::try_from_env("ELECT_LOG")
            .unwrap_or_else(|_| EnvFilter::new("info,zookeeper_client=warn")),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false);
    let _ = match args.log_format {
        LogFormat::Text => builder.event_format(Text).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// `elect: message key=value`, with `error:` / `warning:` before problems.
struct Text;

impl<S, N> FormatEvent<S, N> for Text
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        writer.write_str("elect: ")?;
        match *event.metadata().level() {
            Level::ERROR => writer.write_str("error: ")?,
            Level::WARN => writer.write_str("warning: ")?,
            _ => {}
        }
        // Messages carry holder records and history from the backend: one event stays one line,
        // and no field can reach the terminal's control sequences.
        let mut fields = String::new();
        ctx.field_format()
            .format_fields(Writer::new(&mut fields), event)?;
        writer.write_str(&crate::show::text(&fields))?;
        writeln!(writer)
    }
}
