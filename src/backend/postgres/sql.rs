//! The lease table and the statements on it.
//!
//! Every statement that decides ownership is one atomic statement whose notion of "now" is the
//! server's `clock_timestamp()`, so no client clock ever takes part in a lease decision. The
//! statements take typed parameters and need no prepared statement kept on the server: they work
//! through a transaction-pooling proxy, where consecutive statements may run on different server
//! sessions.

use super::table::Table;

/// The channel a release notifies; the payload is the lock name.
pub const CHANNEL: &str = "elect_released";
/// Which of the columns later releases added the table has. A table an older elect created, which
/// the role may not alter, lacks some of them: leases work, and what needs the missing columns is
/// refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schema {
    /// `last_run`, `once_until` and `once_run`: run history and `--once-per`.
    pub history: bool,
    /// `top_token`: `--holders` above 1.
    pub places: bool,
}

impl Schema {
    /// The table as `create` makes it.
    pub const CURRENT: Self = Self {
        history: true,
        places: true,
    };
}

/// The statement texts for one table.
#[derive(Debug, Clone)]
pub struct Statements {
    pub create: String,
    /// Adds the columns of later releases to a table an older elect created.
    pub migrate: String,
    pub fresh_run: String,
    /// Records a `--once-per` run as it starts, unless a marker lives.
    pub claim: String,
    /// Takes place 0 (`--holders 1`).
    pub acquire: String,
    /// Takes the first free place of `--holders N`.
    pub acquire_place: String,
    /// Renews one place's row.
    pub renew: String,
    /// Releases place 0.
    pub release: String,
    /// Releases a place K >= 1.
    pub release_place: String,
    pub force_release: String,
    /// Settles an acquire whose answer was lost: frees whichever place holds its secret.
    pub abandon: String,
    /// Every place row of one lock.
    pub places: String,
    pub list: String,
}

/// The columns `places` and `list` read, in the order `row_to_place` expects.
const STATE_COLUMNS: &str = "name, holder_id, host, pid, version, acquired_at, ttl_ms, token, \
     (extract(epoch FROM (expires_at - clock_timestamp())) * 1000)::int8 AS remaining_ms";

/// The columns a table needs besides those of the first release (`CREATE TABLE IF NOT EXISTS`
/// leaves an old table as it is): checked at open time, added when missing.
pub const HISTORY_COLUMNS: [&str; 3] = ["last_run", "once_until", "once_run"];
pub const PLACES_COLUMN: &str = "top_token";

/// Whether the `--once-per` marker is the unfinished run of the lease with token $3 (see
/// `claim`), recognised by its token and its end as elect writes them (JSON escaping keeps a
/// holder id from imitating either).
const OWN_CLAIM: &str = "once_run LIKE '%,\"token\":' || $3::int8 || ',%'
        AND once_run LIKE '%,\"unfinished\":null}'";

/// The `--once-per` marker after a release of the lease with token $3: the run $4 for the
/// window ($5 ms) from now after a success; none after anything else if the marker is this
/// lease's own unfinished run, so that a failed run can be retried; else as it was.
fn once_after_release() -> String {
    format!(
        "once_until = CASE
            WHEN $5::int8 IS NOT NULL THEN clock_timestamp() + $5::int8 * interval '1 millisecond'
            WHEN {OWN_CLAIM} THEN NULL
            ELSE once_until END,
         once_run = CASE
            WHEN $5::int8 IS NOT NULL THEN $4::text
            WHEN {OWN_CLAIM} THEN NULL
            ELSE once_run END"
    )
}

/// The names of places 1 to $2 - 1 of the lock $1 (`NAME/K`), for `= ANY(...)`: a lookup by the
/// primary key for each, whatever the table's collation.
const PLACE_NAMES: &str =
    "ARRAY(SELECT $1::text || '/' || k FROM generate_series(1, $2::int4 - 1) AS k)";

impl Statements {
    pub fn new(table: &Table, schema: Schema) -> Self {
        let t = table.quoted();
        Self {
            create: create(t),
            migrate: migrate(t),
            fresh_run: fresh_run(t),
            claim: claim(t),
            acquire: acquire(t, schema),
            acquire_place: acquire_place(t),
            renew: renew(t),
            release: release(t, schema),
            release_place: release_place(t, schema),
            force_release: force_release(t, schema),
            abandon: abandon(t),
            places: format!(
                "SELECT {STATE_COLUMNS}, {} FROM {t}
                 WHERE name = $1 OR name = ANY({PLACE_NAMES})",
                last_run_column(schema)
            ),
            list: format!(
                "SELECT {STATE_COLUMNS}, {} FROM {t} ORDER BY name",
                last_run_column(schema)
            ),
        }
    }
}

/// `expires_at` NULL means released. The row outlives its lease so that the token keeps
/// counting up across holders and never repeats.
fn create(t: &str) -> String {
    format!(
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
            once_until  timestamptz,
            once_run    text,
            top_token   bigint
        )"
    )
}

/// `last_run` is the JSON of the last run; `once_until` the end of the `--once-per` marker, by
/// the server's clock, and `once_run` the run it stands for (the run under way, until its
/// release); `top_token` the last token a place K >= 1 took. One line: error messages quote it
/// for the table's owner to run.
fn migrate(t: &str) -> String {
    format!(
        "ALTER TABLE {t} ADD COLUMN IF NOT EXISTS last_run text, \
         ADD COLUMN IF NOT EXISTS once_until timestamptz, \
         ADD COLUMN IF NOT EXISTS once_run text, \
         ADD COLUMN IF NOT EXISTS top_token bigint"
    )
}

fn fresh_run(t: &str) -> String {
    format!(
        "SELECT COALESCE(once_run, last_run) AS last_run FROM {t}
         WHERE name = $1 AND once_until > clock_timestamp()"
    )
}

/// While the lease on row $1 (secret $2, token $3) is ours: the marker on the lock's row $4 if
/// one lives; else this run ($5, unfinished) becomes the marker for $6 ms (the last run stays
/// as it was). `marker` is read from the statement's snapshot, before the update.
fn claim(t: &str) -> String {
    format!(
        "WITH mine AS (
            SELECT 1 FROM {t}
            WHERE name = $1 AND secret = $2 AND token = $3
              AND expires_at > clock_timestamp()),
         claimed AS (
            UPDATE {t} SET once_run = $5,
               once_until = clock_timestamp() + $6::int8 * interval '1 millisecond'
            WHERE name = $4
              AND (once_until IS NULL OR once_until <= clock_timestamp())
              AND EXISTS (SELECT 1 FROM mine)
            RETURNING name)
         SELECT (SELECT count(*) FROM mine) AS mine,
                (SELECT count(*) FROM claimed) AS claimed,
                (SELECT COALESCE(once_run, last_run) FROM {t}
                 WHERE name = $4 AND once_until > clock_timestamp()) AS marker"
    )
}

/// The columns an acquire writes into a lease row (`INSERT INTO {t} AS l`).
const LEASE_COLUMNS: &str =
    "(name, holder_id, host, pid, version, acquired_at, ttl_ms, secret, token, expires_at)";

/// How an acquire's `INSERT` takes over a row that is there already, giving it `token`: only a
/// free, released or expired row, a condition the conflict arm re-checks on the row's latest
/// version after locking it, so two contenders cannot both win. `secret = excluded.secret`
/// makes a retried acquire (whose first attempt reached the server but whose answer was lost)
/// win again instead of finding itself the holder.
fn take_over(token: &str) -> String {
    format!(
        "ON CONFLICT (name) DO UPDATE SET
            holder_id = excluded.holder_id, host = excluded.host, pid = excluded.pid,
            version = excluded.version, acquired_at = excluded.acquired_at,
            ttl_ms = excluded.ttl_ms, secret = excluded.secret,
            token = {token},
            expires_at = clock_timestamp() + excluded.ttl_ms * interval '1 millisecond'
         WHERE l.expires_at IS NULL OR l.expires_at <= clock_timestamp()
            OR l.secret = excluded.secret"
    )
}

/// The lock's last token, on its place-0 row `l`: places K >= 1 count on in `top_token`, so that
/// taking one never changes the place-0 lease's own `token`.
fn last_token(schema: Schema) -> &'static str {
    if schema.places {
        "GREATEST(l.token, l.top_token)"
    } else {
        "l.token"
    }
}

/// Takes place 0 (a free, released or expired row, see [`take_over`]), or creates it.
fn acquire(t: &str, schema: Schema) -> String {
    format!(
        "INSERT INTO {t} AS l
            {LEASE_COLUMNS}
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 1,
                 clock_timestamp() + $7 * interval '1 millisecond')
         {}
         RETURNING 0::int4 AS slot, token",
        take_over(&format!("{} + 1", last_token(schema)))
    )
}

/// `--holders $9`: `pick` is the first place that is free, released or expired (one this
/// acquire already holds first, for a retried acquire), by the statement's snapshot. Place 0 is
/// taken as by `acquire`. A place K >= 1 takes its token from the place-0 row, which `bump`
/// creates free if missing and locks, so that contenders for any place of the lock draw tokens
/// one at a time; then `take` takes row K on the same condition as `acquire`, re-checked on its
/// latest version, so two contenders cannot both win. A contender that loses the race to `take`
/// has used up a token: tokens grow, but may skip values.
fn acquire_place(t: &str) -> String {
    let first = take_over(&format!("{} + 1", last_token(Schema::CURRENT)));
    let take = take_over("excluded.token");
    format!(
        "WITH pick AS (
            SELECT c.k, c.place
            FROM (SELECT k, CASE WHEN k = 0 THEN $1::text ELSE $1::text || '/' || k END
                         AS place
                  FROM generate_series(0, $9::int4 - 1) AS k) AS c
            LEFT JOIN {t} AS p ON p.name = c.place
            WHERE p.name IS NULL OR p.expires_at IS NULL
               OR p.expires_at <= clock_timestamp() OR p.secret = $8
            ORDER BY p.secret IS NOT DISTINCT FROM $8 DESC, c.k
            LIMIT 1),
         first AS (
            INSERT INTO {t} AS l
                {LEASE_COLUMNS}
            SELECT $1, $2, $3, $4, $5, $6, $7, $8, 1,
                   clock_timestamp() + $7 * interval '1 millisecond'
            FROM pick WHERE pick.k = 0
            {first}
            RETURNING token),
         bump AS (
            INSERT INTO {t} AS l
                (name, holder_id, host, pid, version, acquired_at, ttl_ms, secret, token,
                 expires_at, top_token)
            SELECT $1, '', '', 0, '', clock_timestamp(), 0, '', 0, NULL, 1
            FROM pick WHERE pick.k > 0
            ON CONFLICT (name) DO UPDATE SET top_token = GREATEST(l.token, l.top_token) + 1
            RETURNING top_token),
         take AS (
            INSERT INTO {t} AS l
                {LEASE_COLUMNS}
            SELECT pick.place, $2, $3, $4, $5, $6, $7, $8, bump.top_token,
                   clock_timestamp() + $7 * interval '1 millisecond'
            FROM pick, bump
            {take}
            RETURNING token)
         SELECT pick.k AS slot, taken.token
         FROM pick, (SELECT token FROM first UNION ALL SELECT token FROM take) AS taken"
    )
}

/// Extends only our own, unexpired lease: an expired one may already have been promised to
/// someone else. $1 is the place's row.
fn renew(t: &str) -> String {
    format!(
        "UPDATE {t} SET expires_at = clock_timestamp() + $4 * interval '1 millisecond'
         WHERE name = $1 AND secret = $2 AND token = $3 AND expires_at > clock_timestamp()
         RETURNING token"
    )
}

/// What a release records, in the `SET` of the row that keeps the lock's history: the run $4
/// (NULL: record nothing) and the `--once-per` marker ([`once_after_release`]).
fn record_run() -> String {
    format!(
        "last_run = COALESCE($4::text, last_run), {}",
        once_after_release()
    )
}

/// Frees the row at once and wakes the waiters, in one statement: the notification is delivered
/// when it commits, never for a release that did not happen. The run ($4, NULL: record nothing)
/// and the `--once-per` marker ($5 ms, NULL: none) are written by the same statement, so only a
/// release that happens records them.
fn release(t: &str, schema: Schema) -> String {
    let record = if schema.history {
        format!(", {}", record_run())
    } else {
        String::new()
    };
    format!(
        "WITH released AS (
            UPDATE {t} SET expires_at = NULL{record}
            WHERE name = $1 AND secret = $2 AND token = $3
              AND expires_at > clock_timestamp()
            RETURNING name)
         SELECT pg_notify('{CHANNEL}', name) FROM released"
    )
}

/// The same for the row $1 of a place K >= 1 of the lock $6: the run is recorded on the lock's
/// place-0 row (`recorded`), and the notification names the lock. `base` locks the place-0 row
/// before row $1, in the order `acquire_place` takes them, so that a release and an acquire of
/// the same place cannot deadlock.
fn release_place(t: &str, schema: Schema) -> String {
    let recorded = if schema.history {
        format!(
            ", recorded AS (
            UPDATE {t} SET {}
            WHERE name = $6 AND EXISTS (SELECT 1 FROM released)
            RETURNING name)",
            record_run()
        )
    } else {
        String::new()
    };
    format!(
        "WITH base AS (SELECT name FROM {t} WHERE name = $6 FOR UPDATE),
         released AS (
            UPDATE {t} SET expires_at = NULL
            WHERE name = $1 AND secret = $2 AND token = $3
              AND expires_at > clock_timestamp()
              AND (SELECT count(*) FROM base) >= 0
            RETURNING name){recorded}
         SELECT pg_notify('{CHANNEL}', $6) FROM released"
    )
}

/// An operator's compare-and-delete: by token alone, for a holder known to be dead, on
/// whichever of the lock's first $3 places holds it. With history, the `--once-per` record of
/// the run under way under that token goes too (the operator ended the run: it does not count).
fn force_release(t: &str, schema: Schema) -> String {
    let forced_once = if schema.history {
        format!(
            ", once_until = CASE WHEN name = $1 AND {OWN_CLAIM} THEN NULL ELSE once_until END,
               once_run = CASE WHEN name = $1 AND {OWN_CLAIM} THEN NULL ELSE once_run END"
        )
    } else {
        String::new()
    };
    format!(
        "WITH released AS (
            UPDATE {t} SET expires_at = NULL{forced_once}
            WHERE (name = $1 OR name = ANY({PLACE_NAMES}))
              AND token = $3 AND expires_at > clock_timestamp()
            RETURNING name)
         SELECT pg_notify('{CHANNEL}', $1) FROM released"
    )
}

/// An acquire whose answer never came may hold one of the lock's first $2 places under its
/// secret $3: free it, as a release does, and wake the waiters.
fn abandon(t: &str) -> String {
    format!(
        "WITH released AS (
            UPDATE {t} SET expires_at = NULL
            WHERE (name = $1 OR name = ANY({PLACE_NAMES}))
              AND secret = $3 AND expires_at > clock_timestamp()
            RETURNING name)
         SELECT pg_notify('{CHANNEL}', $1) FROM released"
    )
}

/// The last run as `places` and `list` read it: NULL from a table without history.
fn last_run_column(schema: Schema) -> &'static str {
    if schema.history {
        "last_run"
    } else {
        "NULL::text AS last_run"
    }
}
