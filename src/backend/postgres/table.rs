//! The lease table: its name, what opening the backend does with it (refuse a standby or an old
//! server, create the table if missing, add the columns of later releases, check the role's
//! privileges), and refusing what a table without those columns cannot do.

use std::sync::Arc;

use tokio_postgres::types::Type;

use super::session::QueryError;
use super::sql::{Schema, Statements, HISTORY_COLUMNS, PLACES_COLUMN};
use super::{PostgresBackend, MIN_SERVER_VERSION};
use crate::backend::{AcquireRequest, BackendError, Result};

pub const DEFAULT_TABLE: &str = "elect_leases";
/// The schema of a table named without one.
pub const DEFAULT_SCHEMA: &str = "public";

/// A validated table name, always with its schema: `schema.table`, or `table` for
/// `public.table`. Each part is an SQL identifier of letters, digits and underscores (not
/// starting with a digit), at most 63 bytes.
///
/// The schema is never left to the role's `search_path`: under PostgreSQL 15's default
/// (`"$user", public`) with a schema per role, each role would resolve (and create) a table of
/// its own, and contenders logged in as two roles would both hold the lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// `"schema"."table"`, ready to splice into SQL.
    quoted: String,
    /// `schema.table`, for messages.
    name: String,
    /// The bare table name when no schema was given: what an older elect resolved through
    /// `search_path`.
    unqualified: Option<String>,
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
        let (schema, table, unqualified) = match parts.as_slice() {
            [table] => (DEFAULT_SCHEMA, *table, Some((*table).to_owned())),
            [schema, table] => (*schema, *table, None),
            _ => unreachable!("checked above"),
        };
        Ok(Self {
            quoted: format!("\"{schema}\".\"{table}\""),
            name: format!("{schema}.{table}"),
            unqualified,
        })
    }

    pub fn quoted(&self) -> &str {
        &self.quoted
    }

    /// `schema.table`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bare name, when the URL gave no schema.
    pub fn unqualified(&self) -> Option<&str> {
        self.unqualified.as_deref()
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

impl PostgresBackend {
    /// Readies the lease table, so that a wrong server, privilege or table is reported before
    /// any job starts.
    pub(super) async fn prepare_table(&mut self) -> Result<()> {
        let table = self.target.table.quoted().to_owned();
        if !self.check_server(&table).await? {
            self.create_table().await?;
        }
        self.migrate_table(&table).await?;
        self.check_privileges(&table).await
    }

    /// Refuses a standby or a server too old; warns of a table an older elect may use instead of
    /// ours. Whether the table exists.
    async fn check_server(&mut self, table: &str) -> Result<bool> {
        let bare = self.target.table.unqualified().map(str::to_owned);
        // The fourth column: the table the bare name resolves to through this role's
        // search_path (what an older elect used), schema-qualified, when that is not ours.
        let rows = self
            .query(
                "cannot connect",
                "SELECT pg_is_in_recovery(), current_setting('server_version_num')::int4, \
                 to_regclass($1::text) IS NOT NULL, \
                 (SELECT n.nspname || '.' || c.relname FROM pg_class c \
                  JOIN pg_namespace n ON n.oid = c.relnamespace \
                  WHERE c.oid = to_regclass(quote_ident($2::text)) \
                    AND c.oid IS DISTINCT FROM to_regclass($1::text))",
                &[(&table, Type::TEXT), (&bare, Type::TEXT)],
            )
            .await?
            .0;
        let (in_recovery, version, exists): (bool, i32, bool) = rows
            .first()
            .and_then(|r| Some((r.try_get(0).ok()?, r.try_get(1).ok()?, r.try_get(2).ok()?)))
            .ok_or_else(|| self.unavailable("check the server", "unexpected answer"))?;
        let elsewhere: Option<String> = rows.first().and_then(|r| r.try_get(3).ok()).flatten();
        if let Some(found) = elsewhere {
            // An older elect named its table without a schema, so that a role with a schema of
            // its own (`CREATE SCHEMA AUTHORIZATION`, `search_path = "$user", public`) created
            // and used a table there, apart from every other role.
            tracing::warn!(
                "a lease table {found} is on this role's search_path, but elect uses {} in \
                 database {}: locks held in {found} (by an older elect) are not seen here; let \
                 them end before every contender is upgraded, or name the table with ?table=",
                self.target.table.name(),
                self.target.database
            );
        }
        if in_recovery {
            return Err(self.unavailable(
                "refusing the server",
                "it is a standby (in recovery), where a lease cannot be written or would not be \
                 seen by the primary; point elect at the primary",
            ));
        }
        if version < MIN_SERVER_VERSION {
            return Err(self.unavailable(
                "refusing the server",
                format_args!("PostgreSQL 12 or newer is needed (server_version_num {version})"),
            ));
        }
        Ok(exists)
    }

    /// Creates the table; one that a contender created meanwhile is just as good.
    async fn create_table(&mut self) -> Result<()> {
        let statements = Arc::clone(&self.statements);
        match self.query_raw(&statements.create, &[]).await {
            Ok(_) => Ok(()),
            Err(QueryError::Client(err)) if lost_create_race(&err) => Ok(()),
            Err(err) => {
                let doing = format!(
                    "cannot create the lease table {} in database {} (an administrator can \
                     create it and grant this role SELECT, INSERT, UPDATE on it, see the \
                     README; or name a schema this role may create it in with \
                     ?table=schema.table, the same for every contender)",
                    self.target.table.name(),
                    self.target.database
                );
                Err(self.failed(&doing, err))
            }
        }
    }

    /// Adds the history and places columns to a table an older elect created. Checked first, so
    /// that a role that may not alter the table works with a table that has them already. A role
    /// that may not alter a table without them still gets working leases, without what the
    /// missing columns carry (history and `--once-per`, `--holders` above 1).
    async fn migrate_table(&mut self, table: &str) -> Result<()> {
        let columns: Vec<String> = HISTORY_COLUMNS
            .iter()
            .chain([&PLACES_COLUMN])
            .map(|c| c.to_string())
            .collect();
        let rows = self
            .query(
                "check the lease table's columns",
                "SELECT attname::text FROM pg_attribute \
                 WHERE attrelid = to_regclass($1::text) AND NOT attisdropped \
                   AND attname = ANY($2::text[])",
                &[(&table, Type::TEXT), (&columns, Type::TEXT_ARRAY)],
            )
            .await?
            .0;
        let present: Vec<String> = rows.iter().filter_map(|r| r.try_get(0).ok()).collect();
        if present.len() == columns.len() {
            return Ok(());
        }
        let statements = Arc::clone(&self.statements);
        match self.query_raw(&statements.migrate, &[]).await {
            Ok(_) => Ok(()),
            Err(QueryError::Client(err)) if lost_create_race(&err) => Ok(()),
            Err(QueryError::Client(err)) if not_owner(&err) => {
                let has = |c: &str| present.iter().any(|p| p == c);
                let schema = Schema {
                    history: HISTORY_COLUMNS.iter().all(|c| has(c)),
                    places: has(PLACES_COLUMN),
                };
                tracing::debug!(
                    history = schema.history,
                    places = schema.places,
                    "the lease table {table} lacks columns and this role may not add them; \
                     what needs them is off (its owner can run: {})",
                    statements.migrate
                );
                self.schema = schema;
                self.statements = Arc::new(Statements::new(&self.target.table, schema));
                Ok(())
            }
            Err(err) => Err(self.failed(
                &format!("cannot add the new columns to the lease table {table}"),
                err,
            )),
        }
    }
    /// Refuses `--once-per` on a table without the columns it needs.
    pub(super) fn require_history(&self) -> Result<()> {
        if self.schema.history {
            return Ok(());
        }
        Err(self.unavailable(
            "--once-per",
            format_args!(
                "the lease table {} has no once_until column and this role may not add it; \
                 its owner can run: {}",
                self.target.table.quoted(),
                self.statements.migrate
            ),
        ))
    }

    /// Refuses `--holders` above 1 on a table without the column it needs.
    pub(super) fn check_places(&self, req: &AcquireRequest) -> Result<()> {
        if req.holders <= 1 || self.schema.places {
            return Ok(());
        }
        Err(self.unavailable(
            "--holders",
            format_args!(
                "the lease table {} has no {PLACES_COLUMN} column and this role may not add it; \
                 its owner can run: {}",
                self.target.table.quoted(),
                self.statements.migrate
            ),
        ))
    }

    /// Refuses a role that cannot use the table.
    async fn check_privileges(&mut self, table: &str) -> Result<()> {
        let rows = self
            .query(
                "check privileges",
                "SELECT has_table_privilege($1::text, 'SELECT') \
                    AND has_table_privilege($1::text, 'INSERT') \
                    AND has_table_privilege($1::text, 'UPDATE')",
                &[(&table, Type::TEXT)],
            )
            .await?
            .0;
        let allowed: bool = rows
            .first()
            .and_then(|r| r.try_get(0).ok())
            .unwrap_or(false);
        if !allowed {
            return Err(self.unavailable(
                "insufficient privilege",
                format_args!("the role needs SELECT, INSERT and UPDATE on the table {table}"),
            ));
        }
        Ok(())
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

/// Whether the server refused an `ALTER TABLE` because the role does not own the table.
fn not_owner(err: &tokio_postgres::Error) -> bool {
    err.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names() {
        assert_eq!(
            Table::parse("elect_leases").unwrap().quoted(),
            "\"public\".\"elect_leases\""
        );
        assert_eq!(
            Table::parse("elect_leases").unwrap().name(),
            "public.elect_leases"
        );
        assert_eq!(
            Table::parse("elect_leases").unwrap().unqualified(),
            Some("elect_leases")
        );
        assert_eq!(Table::parse("ops.leases").unwrap().unqualified(), None);
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
