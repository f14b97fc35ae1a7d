//! The key layout and the Lua scripts of the Redis backend.
//!
//! # How it works
//! Every key of one lock carries the lock name as a hash tag, so that a Redis Cluster keeps them
//! in one slot and a script may touch them together:
//!
//! | key | type | what |
//! |---|---|---|
//! | `elect:{NAME}` | string, with a PX expiry | the lease in place 0 (the only place of a mutex): `<secret>\n<holder JSON>` |
//! | `elect:{NAME}:K` | string, with a PX expiry | the lease in place K >= 1 under `--holders N` (K < N), same value |
//! | `elect:{NAME}:places` | integer, no expiry | the largest N a holder of this lock took a place with, written only for N > 1; absent means 1 |
//! | `elect:{NAME}:token` | integer, no expiry | the fencing-token counter, shared by all places; never reset |
//! | `elect:{NAME}:baton` | list of at most N elements, PX expiry of a few seconds | a release leaves one for the longest waiter |
//! | `elect:{NAME}:last` | string, no expiry | the last run (JSON), written by the release that ended it |
//! | `elect:{NAME}:once` | string, PX expiry of `--once-per` | the run that succeeded in the window, or the run under way (JSON, end `unfinished`) |
//! | `elect:{NAME}:void:SECRET` | string, PX expiry of at least a minute | an abandoned acquire: its request, should it arrive late, takes nothing |
//!
//! - **places**: `--holders N` lets N leases hold the lock at once, one per place key, places
//!   0 to N-1. A mutex (N = 1) uses place 0 only, `elect:{NAME}`, and writes no `:places` key,
//!   so its keys are the same as before places existed. A lease knows its place (`Lease::slot`)
//!   and renews and releases that key only.
//! - **finding the places** without knowing N (`status` and `release --token` are not told it):
//!   `elect:{NAME}:places` holds the largest N ever used on the lock, raised by the acquire
//!   script in the same step that takes a place, so every place that can be held is below it.
//!   `inspect` and `force release` read it and then the place keys below it, in one script: one
//!   round trip and at most 1000 `GET`s, with no `SCAN` of the keyspace. The place keys are
//!   built inside those scripts from the declared place-0 key (same hash tag, so same slot).
//! - **acquire** runs in one script and is given N and the N place keys: it answers with the
//!   place that holds its secret already (a retry after a lost answer), else takes the first
//!   free place, in order, with the next token (the greater of the counter plus one and the
//!   server's clock in microseconds, written back to the counter) and `SET place value NX PX
//!   ttl`, the new token written into the holder JSON. The counter has no expiry and is never
//!   deleted, and the clock covers a counter that a restart rewound, so a token is never handed
//!   out twice, whatever the place (see the README). An acquire whose secret was abandoned
//!   does nothing.
//! - **abandon** settles an acquire whose answer was lost: deletes the place holding its secret
//!   and leaves the void marker.
//! - **claim** (`--once-per`, before the job starts) answers the live marker, or makes the run
//!   under way the marker, so that a run whose release is lost still counts. When all N places are held it answers the holder of the lowest place and the
//!   smallest remaining PTTL among them, which a waiter uses to wake at the first expiry.
//! - **renew** extends the expiry of the lease's own place only if it still starts with our
//!   secret: a holder can never extend another holder's lease. It answers `1` renewed, `0` gone,
//!   `-1` someone else's.
//! - **release** deletes the lease's place only if it is still ours, records the run (and the
//!   `--once-per` marker, whose expiry the server's clock judges; or, after anything but a
//!   success, removes the marker its claim left) in the same step, and then
//!   pushes one element on the baton list (keeping at most N there, N from the lease) with a
//!   short expiry. Waiters block on the list with `BLPOP`, which the server serves in the order
//!   the clients blocked and one element to one client: a release wakes exactly the longest
//!   waiter, which then tries every place. An untaken baton expires after [`BATON_TTL`], so it
//!   does not linger for a waiter that comes much later; the cap of N lets N releases that come
//!   before their waiters block still wake N waiters, and a mutex keeps at most one.
//! - **hand on** pushes the baton again, only if one of the waiter's N places is free: a woken
//!   waiter that could not acquire for a network error passes its turn on instead of losing it.
//! - **inspect** reads every held place's value and PTTL together (and the last run), for
//!   `status`.
//! - **force release** (`elect release --token T`) deletes the place whose lease has token T,
//!   whichever place it is.
//!
//! Waiters that wait with different N on one lock share one baton list, so a baton may wake a
//! waiter for whom the freed place is out of reach; the others then re-check at the smallest
//! expiry they saw or after 10 s. Use one N per lock, as with `consul lock -n`.
//!
//! The secret is 128 random bits in hex, fresh for each acquisition; it never appears in logs or
//! in status output.

use std::sync::LazyLock;

use ::redis::Script;

use crate::lease::LockName;

/// Every key elect owns starts with this.
pub const PREFIX: &str = "elect:";

/// The lease key: `elect:{NAME}`.
pub fn lease_key(name: &LockName) -> String {
    format!("{PREFIX}{{{name}}}")
}

/// The lease key of place `slot` under `--holders N`: `elect:{NAME}` for place 0 (a mutex's
/// only place), `elect:{NAME}:K` for place K >= 1.
pub fn place_key(name: &LockName, slot: u32) -> String {
    match slot {
        0 => lease_key(name),
        k => format!("{PREFIX}{{{name}}}:{k}"),
    }
}

/// The lease keys of places 0 to `places - 1` (at least place 0).
pub fn place_keys(name: &LockName, places: u32) -> Vec<String> {
    (0..places.max(1)).map(|k| place_key(name, k)).collect()
}

/// The largest `--holders N` used on the lock: `elect:{NAME}:places`.
pub fn places_key(name: &LockName) -> String {
    format!("{PREFIX}{{{name}}}:places")
}

/// The fencing-token counter: `elect:{NAME}:token`.
pub fn token_key(name: &LockName) -> String {
    format!("{PREFIX}{{{name}}}:token")
}

/// The baton list waiters block on: `elect:{NAME}:baton`.
pub fn baton_key(name: &LockName) -> String {
    format!("{PREFIX}{{{name}}}:baton")
}

/// The last run: `elect:{NAME}:last`.
pub fn last_key(name: &LockName) -> String {
    format!("{PREFIX}{{{name}}}:last")
}

/// The marker of an abandoned acquire: `elect:{NAME}:void:SECRET`.
pub fn void_key(name: &LockName, secret: &str) -> String {
    format!("{PREFIX}{{{name}}}:void:{secret}")
}

/// How long the marker of an abandoned acquire stays: longer than any request lingers in the
/// network, and at least the lease's ttl.
pub fn void_ttl(ttl: std::time::Duration) -> std::time::Duration {
    ttl.max(std::time::Duration::from_secs(60))
}

/// The `--once-per` marker: `elect:{NAME}:once`.
pub fn once_key(name: &LockName) -> String {
    format!("{PREFIX}{{{name}}}:once")
}

/// How long a baton nobody takes stays: longer than the gap between a waiter's failed attempt and
/// its `BLPOP` (which may include opening its connection, bounded by 3 s), so that a release in
/// that gap still wakes it; short enough that a much later waiter rarely finds a stale one (which
/// costs it one extra attempt, nothing more).
pub const BATON_TTL: std::time::Duration = std::time::Duration::from_secs(5);

/// The SCAN pattern that finds every key of every lock (lease keys and counters).
pub const SCAN_PATTERN: &str = "elect:{*";

/// The lock name of a key elect owns: `elect:{NAME}`, `elect:{NAME}:token` or
/// `elect:{NAME}:last`. The short-lived baton, the places K >= 1 and their marker (a lock that
/// has them has a counter too), and anything else under the prefix (a key some other tool
/// wrote) do not make a lock.
pub fn lock_of_key(key: &str) -> Option<LockName> {
    let rest = key.strip_prefix(PREFIX)?.strip_prefix('{')?;
    let (name, suffix) = rest.split_once('}')?;
    if !matches!(suffix, "" | ":token" | ":last") {
        return None;
    }
    LockName::new(name).ok()
}

/// KEYS: counter, places marker, the secret's void marker, then the N place keys in order. ARGV:
/// secret, ttl in ms, holder JSON without its token (an object), N. Returns `{1, token, place}`
/// when acquired (place counted from 0), `{0, value, pttl}` when all N places are held: the value
/// of the lowest place and the smallest remaining PTTL among them (-1 when none has an expiry),
/// and `{-1}` when this secret was abandoned (its void marker exists): nothing was done.
///
/// A place that holds this secret already is the answer, its expiry reset: the same acquire,
/// sent again after its first answer was lost, finds the lease it took rather than a second one.
///
/// The token is the greater of the counter plus one and the server's clock in microseconds, and
/// is written back to the counter: tokens grow even when a restart lost the counter's last
/// increments (AOF `everysec`, RDB snapshots) or the whole counter, as long as the server's clock
/// does not step back. It is spliced in front of the holder's other fields rather than through
/// cjson, whose number formatting and escaping would change what elect wrote; `%d` because Lua
/// writes large numbers in exponent form.
const ACQUIRE: &str = r#"
if redis.call('EXISTS', KEYS[3]) == 1 then
  return {-1}
end
local n = tonumber(ARGV[4])
local mine = ARGV[1] .. '\n'
local first, soonest, free = false, -1, false
for k = 0, n - 1 do
  local key = KEYS[4 + k]
  local current = redis.call('GET', key)
  if not current then
    if not free then
      free = k
    end
  elseif string.sub(current, 1, #mine) == mine then
    redis.call('PEXPIRE', key, ARGV[2])
    return {1, tonumber(string.match(current, '\n{"token":(%d+),')), k}
  else
    if not first then
      first = current
    end
    local pttl = redis.call('PTTL', key)
    if pttl >= 0 and (soonest < 0 or pttl < soonest) then
      soonest = pttl
    end
  end
end
if not free then
  return {0, first, soonest}
end
if n > 1 and (tonumber(redis.call('GET', KEYS[2])) or 1) < n then
  redis.call('SET', KEYS[2], n)
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local token = string.format('%d', math.max((tonumber(redis.call('GET', KEYS[1])) or 0) + 1, now))
redis.call('SET', KEYS[1], token)
local value = mine .. '{"token":' .. token .. ',' .. string.sub(ARGV[3], 2)
redis.call('SET', KEYS[4 + free], value, 'NX', 'PX', ARGV[2])
return {1, tonumber(token), free}
"#;

/// KEYS: the secret's void marker, baton, then the N place keys. ARGV: secret, void marker ttl in
/// ms, baton ttl in ms. Settles an acquire whose answer was lost: deletes the place it may have
/// taken (only if it holds this secret) and passes the baton on for it, and leaves the void
/// marker, so that the acquire, should it reach the server only now, takes nothing. Returns 1
/// when a lease was deleted, 0 when none held the secret.
const ABANDON: &str = r#"
redis.call('SET', KEYS[1], '1', 'PX', ARGV[2])
local mine = ARGV[1] .. '\n'
local cap = #KEYS - 2
for k = 3, #KEYS do
  local current = redis.call('GET', KEYS[k])
  if current and string.sub(current, 1, #mine) == mine then
    redis.call('DEL', KEYS[k])
    if redis.call('RPUSH', KEYS[2], '1') > cap then
      redis.call('LTRIM', KEYS[2], 0, cap - 1)
    end
    redis.call('PEXPIRE', KEYS[2], ARGV[3])
    return 1
  end
end
return 0
"#;

/// KEYS: the lease's place. ARGV: secret, ttl in ms. Returns 1 renewed, 0 gone, -1 someone
/// else's.
const RENEW: &str = r#"
local current = redis.call('GET', KEYS[1])
if not current then
  return 0
end
if string.sub(current, 1, #ARGV[1] + 1) ~= ARGV[1] .. '\n' then
  return -1
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"#;

/// KEYS: the lease's place, baton, last run, once marker. ARGV: secret, baton ttl in ms, last
/// run JSON (empty: record nothing), marker ttl in ms (0: no marker), N the lease was taken with.
/// Returns 1 released, 0 not ours (or gone): a lease that is no longer ours records no history.
///
/// Without a marker to write (the run failed, or never started), the marker this lease's
/// [`CLAIM`] left is deleted: it is recognised by the lease's token and its unfinished end.
///
/// The list never holds more than N batons (`LTRIM` only runs when untaken ones were there):
/// releases nobody waited for must not later wake more waiters than there are places. A client
/// blocked on the list is served after the script ends, so the `PEXPIRE` applies to a key that
/// still exists.
const RELEASE: &str = r#"
local current = redis.call('GET', KEYS[1])
if current and string.sub(current, 1, #ARGV[1] + 1) == ARGV[1] .. '\n' then
  redis.call('DEL', KEYS[1])
  if ARGV[3] ~= '' then
    redis.call('SET', KEYS[3], ARGV[3])
  end
  if tonumber(ARGV[4]) > 0 then
    redis.call('SET', KEYS[4], ARGV[3], 'PX', ARGV[4])
  else
    local token = string.match(current, '\n{"token":(%d+),')
    local marker = redis.call('GET', KEYS[4])
    if marker and string.find(marker, ',"token":' .. token .. ',', 1, true)
        and string.find(marker, ',"unfinished":null}', 1, true) then
      redis.call('DEL', KEYS[4])
    end
  end
  local cap = tonumber(ARGV[5])
  if redis.call('RPUSH', KEYS[2], '1') > cap then
    redis.call('LTRIM', KEYS[2], 0, cap - 1)
  end
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  return 1
end
return 0
"#;

/// KEYS: the lease's place, once marker. ARGV: secret, the run as started (JSON, its end
/// unfinished), window in ms. `--once-per`, before the job starts: returns `{1, marker}` when a
/// marker lives (the job ran in the window), else sets this run as the marker and returns `{0}`;
/// `{-1}` when the lease is no longer ours (nothing is written).
const CLAIM: &str = r#"
local current = redis.call('GET', KEYS[1])
if not current or string.sub(current, 1, #ARGV[1] + 1) ~= ARGV[1] .. '\n' then
  return {-1}
end
local marker = redis.call('GET', KEYS[2])
if marker then
  return {1, marker}
end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return {0}
"#;

/// KEYS: baton, then the waiter's N place keys. ARGV: baton ttl in ms. Returns 1 when the baton
/// was passed on (a place is free), 0 when all are held (their holders' releases will pass one
/// on).
const HAND_ON: &str = r#"
local free = false
for k = 2, #KEYS do
  if redis.call('EXISTS', KEYS[k]) == 0 then
    free = true
    break
  end
end
if not free then
  return 0
end
local cap = #KEYS - 1
if redis.call('RPUSH', KEYS[1], '1') > cap then
  redis.call('LTRIM', KEYS[1], 0, cap - 1)
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"#;

/// KEYS: place 0, baton, places marker, once marker. ARGV: token, baton ttl in ms. An operator's
/// compare-and-delete: deletes the place whose holder JSON carries this token (the acquire
/// script writes it first), among the places below the marker, and the `--once-per` record of
/// that holder's run under way (the operator ended it: it does not count). Returns `{1, nil}` released,
/// `{0, nil}` all places free, `{-1, value}` held under other tokens, with the value of the
/// lowest held place (Lua `false` is a nil reply, and keeps the array two long).
///
/// Places K >= 1 are named from place 0's key (see [`PLACE_KEY`]).
const FORCE_RELEASE: &str = r#"
local n = tonumber(redis.call('GET', KEYS[3])) or 1
local first = false
for k = 0, n - 1 do
  local key = place_key(k)
  local current = redis.call('GET', key)
  if current then
    if string.match(current, '\n{"token":(%d+),') == ARGV[1] then
      redis.call('DEL', key)
      local marker = redis.call('GET', KEYS[4])
      if marker and string.find(marker, ',"token":' .. ARGV[1] .. ',', 1, true)
          and string.find(marker, ',"unfinished":null}', 1, true) then
        redis.call('DEL', KEYS[4])
      end
      if redis.call('RPUSH', KEYS[2], '1') > n then
        redis.call('LTRIM', KEYS[2], 0, n - 1)
      end
      redis.call('PEXPIRE', KEYS[2], ARGV[2])
      return {1, false}
    end
    if not first then
      first = current
    end
  end
end
if first then
  return {-1, first}
end
return {0, false}
"#;

/// KEYS: place 0, last run, places marker. Returns `{last run or nil, K, value, pttl, ...}` read
/// atomically: one triple per held place, in the order of the places.
///
/// Places K >= 1 are named from place 0's key (see [`PLACE_KEY`]).
const INSPECT: &str = r#"
local n = tonumber(redis.call('GET', KEYS[3])) or 1
local reply = {redis.call('GET', KEYS[2])}
for k = 0, n - 1 do
  local key = place_key(k)
  local current = redis.call('GET', key)
  if current then
    table.insert(reply, k)
    table.insert(reply, current)
    table.insert(reply, redis.call('PTTL', key))
  end
end
return reply
"#;

/// The scripts, hashed once per process: `invoke_async` sends EVALSHA and loads a script only
/// when the server does not know it yet.
/// A Lua prelude for the scripts that find places without knowing N in advance: place K's key
/// from place 0's (`KEYS[1]`). The keys share its hash tag, so its cluster slot.
const PLACE_KEY: &str = r#"
local function place_key(k)
  if k == 0 then
    return KEYS[1]
  end
  return KEYS[1] .. ':' .. k
end
"#;

pub struct Scripts {
    pub acquire: Script,
    pub abandon: Script,
    pub renew: Script,
    pub release: Script,
    pub claim: Script,
    pub hand_on: Script,
    pub inspect: Script,
    pub force_release: Script,
}

pub static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    acquire: Script::new(ACQUIRE),
    abandon: Script::new(ABANDON),
    renew: Script::new(RENEW),
    release: Script::new(RELEASE),
    claim: Script::new(CLAIM),
    hand_on: Script::new(HAND_ON),
    inspect: Script::new(&format!("{PLACE_KEY}{INSPECT}")),
    force_release: Script::new(&format!("{PLACE_KEY}{FORCE_RELEASE}")),
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_a_hash_tag() {
        let name = LockName::new("billing").unwrap();
        assert_eq!(lease_key(&name), "elect:{billing}");
        assert_eq!(token_key(&name), "elect:{billing}:token");
        assert_eq!(baton_key(&name), "elect:{billing}:baton");
        assert_eq!(last_key(&name), "elect:{billing}:last");
        assert_eq!(once_key(&name), "elect:{billing}:once");
        assert_eq!(places_key(&name), "elect:{billing}:places");
        assert_eq!(place_key(&name, 0), "elect:{billing}");
        assert_eq!(place_key(&name, 7), "elect:{billing}:7");
        assert_eq!(place_keys(&name, 0), ["elect:{billing}"]);
        assert_eq!(
            place_keys(&name, 3),
            ["elect:{billing}", "elect:{billing}:1", "elect:{billing}:2"]
        );
    }

    #[test]
    fn scanned_keys_map_to_locks() {
        let name = |k| lock_of_key(k).map(|n| n.to_string());
        assert_eq!(name("elect:{billing}").as_deref(), Some("billing"));
        assert_eq!(name("elect:{billing}:token").as_deref(), Some("billing"));
        assert_eq!(name("elect:{billing}:last").as_deref(), Some("billing"));
        assert_eq!(name("elect:{billing}:once"), None);
        assert_eq!(name("elect:{billing}:other"), None);
        assert_eq!(name("elect:{billing}:baton"), None);
        // Places and the places marker belong to a lock found by its counter.
        assert_eq!(name("elect:{billing}:1"), None);
        assert_eq!(name("elect:{billing}:places"), None);
        assert_eq!(name("elect:{a}b}"), None);
        assert_eq!(name("elect:{}"), None);
        assert_eq!(name("elect:billing"), None);
        assert_eq!(name("other:{billing}"), None);
    }
}
