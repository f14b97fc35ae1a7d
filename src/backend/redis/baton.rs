//! The waiting side of the baton: a waiter blocks on `elect:{NAME}:baton` with `BLPOP`, on a
//! connection of its own, until a release hands it the baton or the holder's lease may have run
//! out (under `--holders N`: until a release of any place, or the soonest expiry among the
//! places).
//!
//! # How it works
//! The server serves clients blocked on a list in the order they blocked, one element to one
//! client, and the release script pushes at most one element. So a release wakes exactly one
//! waiter, the one that has waited longest; the others stay blocked and send nothing.
//!
//! A block ends without a baton after [`block_for`]: just past the expiry of the holder's lease
//! (the PTTL the last attempt saw, plus up to [`JITTER_MS`]), so that a holder that died without
//! releasing is taken over promptly, but never later than [`MAX_BLOCK`], so that a lost baton (a
//! waiter killed between taking it and acquiring) or a renewed lease costs at most that much. A
//! block of exactly [`MAX_BLOCK`] carries no jitter: waiters that blocked in some order time out,
//! re-check and block again in the same order, which keeps the queue first come, first served.
//!
//! The order is first come, first served with two exceptions: a woken waiter that finds the lock
//! taken (by a contender that does not wait) blocks again at the back of the queue, and waiters
//! behind a lease with less than [`MAX_BLOCK`] left all re-check at its expiry and block again
//! in the order their jitter gives.
//!
//! A baton is lost when its waiter goes away between taking it and acquiring: killed, or its
//! wait given up (the future dropped) while the `BLPOP` answer was on its way. The next waiter
//! then finds the lock free at its next re-check, within [`MAX_BLOCK`]. A woken waiter whose
//! attempt fails for a network error passes the baton on instead ([`Waiter::hand_on`]).
//!
//! A blocking command holds its connection until it answers. Attempts and blocks alternate, so
//! on a node (standalone, or the primary the sentinels named) the waiter blocks on the backend's
//! own connection: one connection per waiter, which is what bounds how many can wait on one
//! server (`maxclients`). Its handle's reply timeout is raised above each block's length, or the
//! client's usual 2 s bound would cut every block short; the backend's handle keeps its own. A
//! block given up before its answer leaves the connection in flight, so the next call opens a
//! new one. A cluster connection keeps the reply timeout it was opened with, so a waiter in a
//! cluster opens one of its own from the client made for waiting, and closes it with the wait.

use std::time::Duration;

use ::redis::{RedisError, Value};

use super::conn::Conn;
use super::connect::{Target, RESPONSE_TIMEOUT, WAIT_RESPONSE_TIMEOUT};
use super::scripts::{self, BATON_TTL, SCRIPTS};
use crate::backend::random;
use crate::lease::LockName;

/// The longest one block lasts: what a lost baton can cost a waiter, and how often a waiter
/// behind a long-held lock re-checks it (one acquire attempt and one `BLPOP` per block).
pub const MAX_BLOCK: Duration = Duration::from_secs(10);
/// Spread added to a block that aims at the expiry of the holder's lease, so that waiters behind
/// a crashed holder do not all arrive in the same millisecond.
pub const JITTER_MS: u64 = 100;
/// `BLPOP` with timeout 0 blocks for ever; never ask for that.
const MIN_BLOCK: Duration = Duration::from_millis(10);

/// A waiter's own connection, blocked on the baton list between attempts.
pub struct Waiter {
    conn: Conn,
    /// The place keys the waiter may take (`--holders N`: places 0 to N-1).
    places: Vec<String>,
    baton: String,
}

impl Waiter {
    /// A waiter for one of `places` places of `name`, blocking on `shared` (the backend's
    /// connection) on a node, on a connection of its own in a cluster.
    pub async fn open(
        target: &Target,
        shared: Conn,
        name: &LockName,
        places: u32,
    ) -> Result<Self, RedisError> {
        let conn = match shared {
            // A clone shares the socket but has a reply timeout of its own, set per block.
            Conn::Node(_) => shared,
            // Keeps this bound for every command.
            Conn::Cluster(_) => target.connect_with(WAIT_RESPONSE_TIMEOUT).await?,
        };
        Ok(Self {
            conn,
            places: scripts::place_keys(name, places),
            baton: scripts::baton_key(name),
        })
    }

    /// Blocks until a release hands us the baton (`true`) or the block times out (`false`).
    /// `pttl` is the holder's remaining time as the last attempt saw it.
    pub async fn block(&mut self, pttl: Option<Duration>) -> Result<bool, RedisError> {
        let wait = block_for(pttl);
        self.conn.set_response_timeout(wait + RESPONSE_TIMEOUT);
        let reply: Value = ::redis::cmd("BLPOP")
            .arg(&self.baton)
            .arg(format!("{:.3}", wait.as_secs_f64()))
            .query_async(&mut self.conn)
            .await?;
        Ok(!matches!(reply, Value::Nil))
    }

    /// Pushes the baton back when one of our places is free: called when we took it but could
    /// not use it (the attempt failed for a network error), so that the next waiter is not left
    /// waiting for a timeout. Answers whether the baton was passed on. On a new connection: the
    /// failed attempt leaves the one it used in doubt, and on a node that is the waiter's too.
    pub async fn hand_on(&self, target: &Target) -> Result<bool, RedisError> {
        let mut conn = target.connect().await?;
        let mut call = SCRIPTS.hand_on.prepare_invoke();
        call.key(&self.baton);
        for place in &self.places {
            call.key(place);
        }
        call.arg(u64::try_from(BATON_TTL.as_millis()).unwrap_or(u64::MAX));
        let passed: i64 = call.invoke_async(&mut conn).await?;
        Ok(passed == 1)
    }
}

/// How long to block: just past the holder's expiry, at most [`MAX_BLOCK`].
pub fn block_for(pttl: Option<Duration>) -> Duration {
    match pttl {
        Some(left) => (left + random::jitter(JITTER_MS)).min(MAX_BLOCK),
        // No expiry on the key (something other than elect wrote it): re-check now and then.
        None => MAX_BLOCK,
    }
    .max(MIN_BLOCK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_aim_past_the_expiry_and_are_capped() {
        let short = block_for(Some(Duration::from_millis(1500)));
        assert!(short >= Duration::from_millis(1500));
        assert!(short < Duration::from_millis(1500 + JITTER_MS));
        // Capped blocks carry no jitter, so waiters keep their order.
        assert_eq!(block_for(Some(Duration::from_secs(60))), MAX_BLOCK);
        assert_eq!(block_for(None), MAX_BLOCK);
        // Never 0, which BLPOP reads as "for ever".
        assert!(block_for(Some(Duration::ZERO)) >= MIN_BLOCK);
    }
}
