//! The rows of a lock's places, and the lock states they make: place 0 is the row `NAME`,
//! place K the row `NAME/K`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_postgres::types::Type;
use tokio_postgres::Row;

use super::PostgresBackend;
use crate::backend::Result;
use crate::lease::{FencingToken, HolderInfo, Holding, LastRun, LockName, LockState};

impl PostgresBackend {
    /// The rows of the lock's first `count` places, as they are now.
    pub(super) async fn places(&mut self, name: &LockName, count: i32) -> Result<Vec<Place>> {
        let statements = Arc::clone(&self.statements);
        let (rows, _) = self
            .query(
                "inspect",
                &statements.places,
                &[(&name.as_str(), Type::TEXT), (&count, Type::INT4)],
            )
            .await?;
        Ok(rows.iter().filter_map(row_to_place).collect())
    }
}

/// One row: a place of a lock.
pub(super) struct Place {
    pub(super) lock: LockName,
    /// 0 for the lock's own row `NAME`, K for `NAME/K`.
    pub(super) slot: u32,
    /// The holder and the remaining time of its lease; `None` when released or expired.
    pub(super) held: Option<(HolderInfo, Duration)>,
    /// The last run, which only the place-0 row records.
    pub(super) last_run: Option<LastRun>,
}

/// The row name of a place: the lock's own name for place 0, `NAME/K` for place K (lock names
/// cannot contain '/', so it is never another lock's name).
pub(super) fn place_name(lock: &LockName, slot: u32) -> String {
    match slot {
        0 => lock.as_str().to_owned(),
        k => format!("{lock}/{k}"),
    }
}

/// The lock and the place a row name stands for; `None` for a row elect did not write.
pub(super) fn parse_place_name(name: &str) -> Option<(LockName, u32)> {
    let (lock, slot) = match name.split_once('/') {
        None => (name, 0),
        Some((lock, k)) => {
            let slot: u32 = k.parse().ok()?;
            // `NAME/K` as `place_name` writes it: no sign, no leading zero, not 0.
            if slot == 0 || slot.to_string() != k {
                return None;
            }
            (lock, slot)
        }
    };
    Some((LockName::new(lock).ok()?, slot))
}

/// The locks the rows are places of, each once, in the order they first appear: the lowest held
/// place is the holder (place 0 when it is held), the other held places its co-holders, in the
/// order of their places; the place-0 row has the last run.
pub(super) fn locks(places: Vec<Place>) -> Vec<LockState> {
    let mut order: Vec<LockName> = Vec::new();
    let mut by_lock: HashMap<LockName, Vec<Place>> = HashMap::new();
    for place in places {
        if !by_lock.contains_key(&place.lock) {
            order.push(place.lock.clone());
        }
        by_lock.entry(place.lock.clone()).or_default().push(place);
    }
    order
        .into_iter()
        .map(|lock| {
            let mut places = by_lock.remove(&lock).unwrap_or_default();
            places.sort_by_key(|p| p.slot);
            let last_run = places
                .iter()
                .find(|p| p.slot == 0)
                .and_then(|p| p.last_run.clone());
            let held = places.into_iter().filter_map(|p| p.held);
            let holdings = held.map(|(holder, remaining)| Holding {
                holder,
                expires_in: Some(remaining),
            });
            LockState::held_by(lock, holdings, last_run)
        })
        .collect()
}

/// A row as `status` shows it; a released or expired row is free. `None` for a row elect did
/// not write (a name that is neither a lock name nor a place of one).
pub(super) fn row_to_place(row: &Row) -> Option<Place> {
    let (lock, slot) = parse_place_name(&column::<String>(row, "name")?)?;
    let last_run: Option<LastRun> = column::<Option<String>>(row, "last_run")
        .flatten()
        .and_then(|text| serde_json::from_str(&text).ok());
    let remaining = column::<Option<i64>>(row, "remaining_ms")?
        .filter(|ms| *ms > 0)
        .map(|ms| Duration::from_millis(ms.unsigned_abs()));
    let held = match remaining {
        None => None,
        Some(remaining) => Some((
            HolderInfo {
                id: column(row, "holder_id")?,
                host: column(row, "host")?,
                pid: u32::try_from(column::<i64>(row, "pid")?).unwrap_or(0),
                acquired_at: column::<SystemTime>(row, "acquired_at")?,
                ttl: Duration::from_millis(
                    u64::try_from(column::<i64>(row, "ttl_ms")?).unwrap_or(0),
                ),
                token: FencingToken(u64::try_from(column::<i64>(row, "token")?).ok()?),
                version: column(row, "version")?,
                places: 1,
            },
            remaining,
        )),
    };
    Some(Place {
        lock,
        slot,
        held,
        last_run,
    })
}

/// A column by name; `None` when it is missing or of another type (a table altered by hand).
pub(super) fn column<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a Row,
    name: &str,
) -> Option<T> {
    row.try_get(name).ok()
}
