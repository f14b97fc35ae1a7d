//! The key layout and the Lua scripts of the Redis backend.
//!
//! # How it works
//! Every key of one lock carries the lock name as a hash tag, so that a Redis Cluster keeps them
//! in one slot and a script may touch them together:
//!
//! | key | type | what |
//! |---|---|---|
//! | `elect:{NAME}` | string, with a PX expiry | the lease: `<secret>\n<holder JSON>` |
//! | `elect:{NAME}:token` | integer, no expiry | the fencing-token counter; never reset |
//! | `elect:{NAME}:baton` | list of at most one element, PX expiry of a few seconds | a release leaves it for the longest waiter |
//! | `elect:{NAME}:last` | string, no expiry | the last run (JSON), written by the release that ended it |
//! | `elect:{NAME}:once` | string, PX expiry of `--once-per` | the run that succeeded in the window (JSON) |
//!
//! - **acquire** runs in one script: if the lease key exists it answers who holds it and the
//!   remaining PTTL; otherwise it `INCR`s the counter and `SET lease value NX PX ttl`, with the new
//!   token written into the holder JSON. The counter has no expiry and is never deleted, so a
//!   token is never handed out twice (as long as the data survive: see the README).
//! - **renew** extends the expiry only if the lease still starts with our secret: a holder can
//!   never extend another holder's lease. It answers `1` renewed, `0` gone, `-1` someone else's.
//! - **release** deletes the lease only if it is still ours, records the run (and the
//!   `--once-per` marker, whose expiry the server's clock judges) in the same step, and then
//!   pushes one element on the baton list (unless one is there already) with a short expiry. Waiters block on the list with
//!   `BLPOP`, which the server serves in the order the clients blocked and one element to one
//!   client: a release wakes exactly the longest waiter. An untaken baton expires after
//!   [`BATON_TTL`], so it does not linger for a waiter that comes much later.
//! - **hand on** pushes the baton again, only if the lease key is absent: a woken waiter that
//!   could not acquire for a network error passes its turn on instead of losing it.
//! - **inspect** reads the lease value and its PTTL together, for `status`.
//! - **force release** (`elect release --token N`) deletes the lease only if its token is N.
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

/// The lock name of a key elect owns: `elect:{NAME}` or `elect:{NAME}:token`. The short-lived
/// baton, and anything else under the prefix (a key some other tool wrote), does not make a lock.
pub fn lock_of_key(key: &str) -> Option<LockName> {
    let rest = key.strip_prefix(PREFIX)?.strip_prefix('{')?;
    let (name, suffix) = rest.split_once('}')?;
    if !matches!(suffix, "" | ":token" | ":last") {
        return None;
    }
    LockName::new(name).ok()
}

/// KEYS: lease, counter. ARGV: secret, ttl in ms, holder JSON without its token (an object).
/// Returns `{1, token}` when acquired, `{0, value, pttl}` when held.
///
/// The token is spliced in front of the holder's other fields rather than through cjson, whose
/// number formatting and escaping would change what elect wrote.
const ACQUIRE: &str = r#"
local current = redis.call('GET', KEYS[1])
if current then
  return {0, current, redis.call('PTTL', KEYS[1])}
end
local token = redis.call('INCR', KEYS[2])
local value = ARGV[1] .. '\n{"token":' .. token .. ',' .. string.sub(ARGV[3], 2)
redis.call('SET', KEYS[1], value, 'NX', 'PX', ARGV[2])
return {1, token}
"#;

/// KEYS: lease. ARGV: secret, ttl in ms. Returns 1 renewed, 0 gone, -1 someone else's.
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

/// KEYS: lease, baton, last run, once marker. ARGV: secret, baton ttl in ms, last run JSON (empty:
/// record nothing), marker ttl in ms (0: no marker). Returns 1 released, 0 not ours (or gone):
/// a lease that is no longer ours records no history.
///
/// The list never holds more than one baton (`LTRIM` only runs when an untaken one was there):
/// two releases nobody waited for must not later wake two waiters. A client blocked on the list is served after the script ends, so the `PEXPIRE`
/// applies to a key that still exists.
const RELEASE: &str = r#"
local current = redis.call('GET', KEYS[1])
if current and string.sub(current, 1, #ARGV[1] + 1) == ARGV[1] .. '\n' then
  redis.call('DEL', KEYS[1])
  if ARGV[3] ~= '' then
    redis.call('SET', KEYS[3], ARGV[3])
    if tonumber(ARGV[4]) > 0 then
      redis.call('SET', KEYS[4], ARGV[3], 'PX', ARGV[4])
    end
  end
  if redis.call('RPUSH', KEYS[2], '1') > 1 then
    redis.call('LTRIM', KEYS[2], 0, 0)
  end
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  return 1
end
return 0
"#;

/// KEYS: lease, baton. ARGV: baton ttl in ms. Returns 1 when the baton was passed on (the lock is
/// free), 0 when the lock is held (its holder's release will pass one on).
const HAND_ON: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
if redis.call('RPUSH', KEYS[2], '1') > 1 then
  redis.call('LTRIM', KEYS[2], 0, 0)
end
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return 1
"#;

/// KEYS: lease, baton. ARGV: token, baton ttl in ms. An operator's compare-and-delete: deletes
/// the lease only if its holder JSON carries this token (the acquire script writes it first).
/// Returns `{1, nil}` released, `{0, nil}` free already, `{-1, value}` held under another token
/// (Lua `false` is a nil reply, and keeps the array two long).
const FORCE_RELEASE: &str = r#"
local current = redis.call('GET', KEYS[1])
if not current then
  return {0, false}
end
if string.match(current, '\n{"token":(%d+),') ~= ARGV[1] then
  return {-1, current}
end
redis.call('DEL', KEYS[1])
if redis.call('RPUSH', KEYS[2], '1') > 1 then
  redis.call('LTRIM', KEYS[2], 0, 0)
end
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return {1, false}
"#;

/// KEYS: lease, last run. Returns `{value or nil, pttl, last run or nil}` read atomically.
const INSPECT: &str = r#"
return {redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1]), redis.call('GET', KEYS[2])}
"#;

/// The scripts, hashed once per process: `invoke_async` sends EVALSHA and loads a script only
/// when the server does not know it yet.
pub struct Scripts {
    pub acquire: Script,
    pub renew: Script,
    pub release: Script,
    pub hand_on: Script,
    pub inspect: Script,
    pub force_release: Script,
}

pub static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    acquire: Script::new(ACQUIRE),
    renew: Script::new(RENEW),
    release: Script::new(RELEASE),
    hand_on: Script::new(HAND_ON),
    inspect: Script::new(INSPECT),
    force_release: Script::new(FORCE_RELEASE),
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
        assert_eq!(name("elect:{a}b}"), None);
        assert_eq!(name("elect:{}"), None);
        assert_eq!(name("elect:billing"), None);
        assert_eq!(name("other:{billing}"), None);
    }
}
