//! The key layout and the Lua scripts of the Redis backend.
//!
//! # How it works
//! Every key of one lock carries the lock name as a hash tag, so that a Redis Cluster keeps them
//! in one slot and a script may touch them together:
//!
//! | key / channel | type | what |
//! |---|---|---|
//! | `elect:{NAME}` | string, with a PX expiry | the lease: `<secret>\n<holder JSON>` |
//! | `elect:{NAME}:token` | integer, no expiry | the fencing-token counter; never reset |
//! | `elect:{NAME}:released` | pub/sub channel | a release publishes here to wake waiters |
//!
//! - **acquire** runs in one script: if the lease key exists it answers who holds it and the
//!   remaining PTTL; otherwise it `INCR`s the counter and `SET lease value NX PX ttl`, with the new
//!   token written into the holder JSON. The counter has no expiry and is never deleted, so a
//!   token is never handed out twice (as long as the data survive: see the README).
//! - **renew** extends the expiry only if the lease still starts with our secret: a holder can
//!   never extend another holder's lease. It answers `1` renewed, `0` gone, `-1` someone else's.
//! - **release** deletes the lease only if it is still ours, and then publishes on the channel,
//!   so a waiter learns at once that it may try again.
//! - **inspect** reads the lease value and its PTTL together, for `status`.
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

/// The channel a release publishes on: `elect:{NAME}:released`.
pub fn released_channel(name: &LockName) -> String {
    format!("{PREFIX}{{{name}}}:released")
}

/// The SCAN pattern that finds every key of every lock (lease keys and counters).
pub const SCAN_PATTERN: &str = "elect:{*";

/// The lock name of a key elect owns: `elect:{NAME}` or `elect:{NAME}:token`. Anything else
/// under the prefix (a key some other tool wrote) is not a lock.
pub fn lock_of_key(key: &str) -> Option<LockName> {
    let rest = key.strip_prefix(PREFIX)?.strip_prefix('{')?;
    let (name, suffix) = rest.split_once('}')?;
    if !matches!(suffix, "" | ":token") {
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

/// KEYS: lease. ARGV: secret, channel. Returns 1 released, 0 not ours (or gone).
///
/// The channel is an argument, not a key: channels live outside the keyspace.
const RELEASE: &str = r#"
local current = redis.call('GET', KEYS[1])
if current and string.sub(current, 1, #ARGV[1] + 1) == ARGV[1] .. '\n' then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], 'released')
  return 1
end
return 0
"#;

/// KEYS: lease. Returns `{value or nil, pttl}` read atomically.
const INSPECT: &str = r#"
return {redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1])}
"#;

/// The scripts, hashed once per process: `invoke_async` sends EVALSHA and loads a script only
/// when the server does not know it yet.
pub struct Scripts {
    pub acquire: Script,
    pub renew: Script,
    pub release: Script,
    pub inspect: Script,
}

pub static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    acquire: Script::new(ACQUIRE),
    renew: Script::new(RENEW),
    release: Script::new(RELEASE),
    inspect: Script::new(INSPECT),
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_a_hash_tag() {
        let name = LockName::new("billing").unwrap();
        assert_eq!(lease_key(&name), "elect:{billing}");
        assert_eq!(token_key(&name), "elect:{billing}:token");
        assert_eq!(released_channel(&name), "elect:{billing}:released");
    }

    #[test]
    fn scanned_keys_map_to_locks() {
        let name = |k| lock_of_key(k).map(|n| n.to_string());
        assert_eq!(name("elect:{billing}").as_deref(), Some("billing"));
        assert_eq!(name("elect:{billing}:token").as_deref(), Some("billing"));
        assert_eq!(name("elect:{billing}:other"), None);
        assert_eq!(name("elect:{a}b}"), None);
        assert_eq!(name("elect:{}"), None);
        assert_eq!(name("elect:billing"), None);
        assert_eq!(name("other:{billing}"), None);
    }
}
