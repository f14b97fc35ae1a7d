//! The lease table and the statements on it.
//!
//! Every statement that decides ownership is one atomic statement whose notion of "now" is the
//! server's `clock_timestamp()`, so no client clock ever takes part in a lease decision. The
//! statements take typed parameters and need no prepared statement kept on the server: they work
//! through a transaction-pooling proxy, where consecutive statements may run on different server
//! sessions.

use crate::backend::{BackendError, Result};

/// The channel a release notifies; the payload is the lock name.
pub const CHANNEL: &str = "elect_released";
pub const DEFAULT_TABLE: &str = "elect_leases";

/// A validated, quoted table name: `table` or `schema.table`, each part an SQL identifier of
/// letters, digits and underscores (not starting with a digit), at most 63 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// `"schema"."table"`, ready to splice into SQL.
    quoted: String,
}

impl Table {
    pub fn parse(text: &str) -> Result<Self> {
        let parts: Vec<&str> = text.split('.').collect();
        if parts.len() > 2 || !parts.iter().all(|p| is_identifier(p)) {
            return Err(BackendError::Config(format!(
                "invalid table name {text:?}: expected an identifier (letters, digits, underscores, \
                 not starting with a digit, at most 63 characters), optionally schema.table"
            )));
        }
        let quoted = parts
            .iter()
            .map(|p| format!("\"{p}\""))
            .collect::<Vec<_>>()
            .join(".");
        Ok(Self { quoted })
    }

    pub fn quoted(&self) -> &str {
        &self.quoted
    }
}

fn is_identifier(part: &str) -> bool {
    let mut chars = part.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    part.len() <= 63
        && (first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Whether the table has the run-history columns (`last_run`, `once_until`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    WithHistory,
    /// A table an older elect created, which the role may not alter: leases work, history and
    /// `--once-per` do not.
    WithoutHistory,
}

/// The statement texts for one table.
#[derive(Debug, Clone)]
pub struct Statements {
    pub create: String,
    /// Adds the history columns to a table an older elect created.
    pub migrate: String,
    pub fresh_run: String,
    pub acquire: String,
    pub renew: String,
    pub release: String,
    pub force_release: String,
    pub inspect: String,
    pub list: String,
}

/// The columns `inspect` and `list` read, in the order `row_to_state` expects.
const STATE_COLUMNS: &str = "name, holder_id, host, pid, version, acquired_at, ttl_ms, token, \
     (extract(epoch FROM (expires_at - clock_timestamp())) * 1000)::int8 AS remaining_ms";

/// The columns a table needs besides those of the first release (`CREATE TABLE IF NOT EXISTS`
/// leaves an old table as it is): checked at open time, added when missing.
pub const HISTORY_COLUMNS: [&str; 2] = ["last_run", "once_until"];

impl Statements {
    pub fn new(table: &Table, schema: Schema) -> Self {
        let t = table.quoted();
        let (last_run, record) = match schema {
            Schema::WithHistory => (
                "last_run",
                ", last_run = COALESCE($4::text, last_run),
                   once_until = CASE WHEN $5::int8 IS NULL THEN once_until
                       ELSE clock_timestamp() + $5::int8 * interval '1 millisecond' END",
            ),
            Schema::WithoutHistory => ("NULL::text AS last_run", ""),
        };
        Self {
            // `expires_at` NULL means released. The row outlives its lease so that the token
            // keeps counting up across holders and never repeats.
            create: format!(
                "CREATE TABLE IF NOT EXISTS {t} (
                    name        text PRIMARY KEY,
                    holder_id   text NOT NULL,
                    host        text NOT NULL,
                    pid         bigint NOT NULL,
                    version     text NOT NULL,
                    acquired_at timestamptz NOT NULL,
                    ttl_ms      bigint NOT NULL,
                    secret      text NOT NULL,
                    token       bigint NOT NULL,
                    expires_at  timestamptz,
                    last_run    text,
                    once_until  timestamptz
                )"
            ),
            // `last_run` is the JSON of the last run; `once_until` the end of the `--once-per`
            // marker, by the server's clock.
            // One line: error messages quote it for the table's owner to run.
            migrate: format!(
                "ALTER TABLE {t} ADD COLUMN IF NOT EXISTS last_run text, \
                 ADD COLUMN IF NOT EXISTS once_until timestamptz"
            ),
            fresh_run: format!(
                "SELECT last_run FROM {t} WHERE name = $1 AND once_until > clock_timestamp()"
            ),
            // Takes a free, released or expired row, or creates it. The conflict arm locks the
            // row and re-checks the condition on its latest version, so two contenders cannot
            // both win. `secret = excluded.secret` makes a retried acquire (whose first attempt
            // reached the server but whose answer was lost) win again instead of finding itself
            // the holder.
            acquire: format!(
                "INSERT INTO {t} AS l
                    (name, holder_id, host, pid, version, acquired_at, ttl_ms, secret, token, expires_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 1,
                         clock_timestamp() + $7 * interval '1 millisecond')
                 ON CONFLICT (name) DO UPDATE SET
                    holder_id = excluded.holder_id, host = excluded.host, pid = excluded.pid,
                    version = excluded.version, acquired_at = excluded.acquired_at,
                    ttl_ms = excluded.ttl_ms, secret = excluded.secret,
                    token = l.token + 1,
                    expires_at = clock_timestamp() + excluded.ttl_ms * interval '1 millisecond'
                 WHERE l.expires_at IS NULL OR l.expires_at <= clock_timestamp()
                    OR l.secret = excluded.secret
                 RETURNING token"
            ),
            // Extends only our own, unexpired lease: an expired one may already have been
            // promised to someone else.
            renew: format!(
                "UPDATE {t} SET expires_at = clock_timestamp() + $4 * interval '1 millisecond'
                 WHERE name = $1 AND secret = $2 AND token = $3 AND expires_at > clock_timestamp()
                 RETURNING token"
            ),
            // Frees the row at once and wakes the waiters, in one statement: the notification is
            // delivered when it commits, never for a release that did not happen. The run ($4,
            // NULL: record nothing) and the `--once-per` marker ($5 ms, NULL: none) are written
            // by the same statement, so only a release that happens records them.
            release: format!(
                "WITH released AS (
                    UPDATE {t} SET expires_at = NULL{record}
                    WHERE name = $1 AND secret = $2 AND token = $3
                      AND expires_at > clock_timestamp()
                    RETURNING name)
                 SELECT pg_notify('{CHANNEL}', name) FROM released"
            ),
            // An operator's compare-and-delete: by token alone, for a holder known to be dead.
            force_release: format!(
                "WITH released AS (
                    UPDATE {t} SET expires_at = NULL
                    WHERE name = $1 AND token = $2 AND expires_at > clock_timestamp()
                    RETURNING name)
                 SELECT pg_notify('{CHANNEL}', name) FROM released"
            ),
            inspect: format!("SELECT {STATE_COLUMNS}, {last_run} FROM {t} WHERE name = $1"),
            list: format!("SELECT {STATE_COLUMNS}, {last_run} FROM {t} ORDER BY name"),
        }
    }
}

/// Whether the server reports that `create` lost a race with a concurrent create of the same
/// table: `IF NOT EXISTS` checks before it inserts into the catalog, so two sessions can both
/// pass the check and one then fails on the catalog's unique index.
pub fn lost_create_race(err: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    matches!(
        err.code(),
        Some(c) if *c == SqlState::UNIQUE_VIOLATION
            || *c == SqlState::DUPLICATE_TABLE
            || *c == SqlState::DUPLICATE_OBJECT
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names() {
        assert_eq!(
            Table::parse("elect_leases").unwrap().quoted(),
            "\"elect_leases\""
        );
        assert_eq!(
            Table::parse("ops.Leases2").unwrap().quoted(),
            "\"ops\".\"Leases2\""
        );
        for bad in [
            "",
            "1x",
            "a-b",
            "a.b.c",
            "x\"; drop table y",
            "a.",
            &"x".repeat(64),
        ] {
            assert!(Table::parse(bad).is_err(), "{bad:?}");
        }
    }
}
