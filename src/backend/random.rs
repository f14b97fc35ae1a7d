//! The randomness the network backends need: a secret that proves a lease is ours, and the
//! jitter that spreads waiters who would otherwise wake in the same millisecond.

use std::io::Read;
use std::time::{Duration, SystemTime};

use super::{BackendError, Result};

/// 128 random bits in hex, from `/dev/urandom`: whoever shows them may renew and release the
/// lease they were taken with. Hex, so that they need no quoting anywhere.
pub fn secret() -> Result<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| BackendError::unavailable("read /dev/urandom", e))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Less than `most_ms` milliseconds, from the sub-second part of the wall clock: enough to
/// spread waiters, and it needs no random source.
pub fn jitter(most_ms: u64) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()));
    Duration::from_millis(nanos % most_ms.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_fresh_hex() {
        let a = secret().unwrap();
        let b = secret().unwrap();
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn jitter_stays_below_its_bound() {
        for _ in 0..100 {
            assert!(jitter(50) < Duration::from_millis(50));
        }
        assert_eq!(jitter(0), Duration::ZERO);
    }
}
