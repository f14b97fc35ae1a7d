//! What a Redis URL says besides its hosts and credentials: the topology its scheme names, the
//! options its query may carry, the database or master its path names, and replica
//! acknowledgement.

use std::time::Duration;

use crate::backend::{BackendError, BackendUrl, Result, Scheme};

/// The default and the largest `wait_timeout`: `WAIT` must answer within [`RESPONSE_TIMEOUT`](super::connect::RESPONSE_TIMEOUT)
/// and within a renew's bound (a third of the ttl).
pub const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_millis(500);
pub const MAX_WAIT_TIMEOUT: Duration = Duration::from_secs(1);

/// Replica acknowledgement (`?wait=N`): an acquire or renew counts only once `WAIT N timeout`
/// says that N replicas have the write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub replicas: u32,
    pub timeout: Duration,
}

/// The transport of a URL: whether it uses TLS and which topology it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    Single,
    Sentinel,
    Cluster,
}

impl Topology {
    /// The topology a scheme names, and whether it uses TLS.
    pub fn of(scheme: Scheme) -> Result<(Self, bool)> {
        Ok(match scheme {
            Scheme::Redis => (Self::Single, false),
            Scheme::Rediss => (Self::Single, true),
            Scheme::RedisSentinel => (Self::Sentinel, false),
            Scheme::RedissSentinel => (Self::Sentinel, true),
            Scheme::RedisCluster => (Self::Cluster, false),
            Scheme::RedissCluster => (Self::Cluster, true),
            other => {
                return Err(BackendError::Config(format!(
                    "not a Redis URL (scheme {})",
                    other.name()
                )))
            }
        })
    }
}

/// Refuses a query key the topology does not take: most likely a typo.
pub fn check_options(url: &BackendUrl, topology: Topology) -> Result<()> {
    let options_known: &[&str] = match topology {
        Topology::Sentinel => &["wait", "wait_timeout", "sentinel_user", "sentinel_password"],
        Topology::Single | Topology::Cluster => &["wait", "wait_timeout"],
    };
    match url
        .query
        .iter()
        .find(|(k, _)| !options_known.contains(&k.as_str()))
    {
        Some((key, _)) => Err(BackendError::Config(format!(
            "unknown Redis URL option {key:?} (known here: {})",
            options_known.join(", ")
        ))),
        None => Ok(()),
    }
}

/// `?wait=N[&wait_timeout=D]`: N replicas, D at most [`MAX_WAIT_TIMEOUT`].
pub fn parse_ack(url: &BackendUrl) -> Result<Option<Ack>> {
    let timeout = match url.query_value("wait_timeout") {
        None => DEFAULT_WAIT_TIMEOUT,
        Some(text) => humantime::parse_duration(text.trim())
            .ok()
            .filter(|d| !d.is_zero() && *d <= MAX_WAIT_TIMEOUT)
            .ok_or_else(|| {
                BackendError::Config(format!(
                    "invalid wait_timeout {text:?} in the Redis URL: a duration from 1ms to {}, as in wait_timeout=500ms",
                    humantime::format_duration(MAX_WAIT_TIMEOUT)
                ))
            })?,
    };
    let Some(text) = url.query_value("wait") else {
        if url.query_value("wait_timeout").is_some() {
            return Err(BackendError::Config(
                "wait_timeout in the Redis URL needs wait=N (the number of replicas)".into(),
            ));
        }
        return Ok(None);
    };
    let replicas = text.parse::<u32>().ok().filter(|n| *n >= 1).ok_or_else(|| {
        BackendError::Config(format!(
            "invalid wait {text:?} in the Redis URL: the number of replicas that must acknowledge, 1 or more, as in wait=1"
        ))
    })?;
    Ok(Some(Ack { replicas, timeout }))
}

/// `/master[/db]` of a Sentinel URL.
pub fn parse_master(path: &str) -> Result<(String, i64)> {
    let usage = "redis+sentinel://[user:password@]host:26379[,host:26379...]/master[/db]";
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let master = parts.next().unwrap_or_default();
    if master.is_empty() {
        return Err(BackendError::Config(format!(
            "a Sentinel URL names the master after the sentinels: {usage}"
        )));
    }
    if master.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(BackendError::Config(format!(
            "invalid master name {master:?} in the Sentinel URL: {usage}"
        )));
    }
    let db = match parts.next() {
        None => 0,
        Some(db) => parse_db(&format!("/{db}"))?,
    };
    Ok((master.to_owned(), db))
}

/// `/N` selects database N; no path or `/` is database 0.
pub fn parse_db(path: &str) -> Result<i64> {
    let db = path.trim_start_matches('/');
    if db.is_empty() {
        return Ok(0);
    }
    db.parse::<u16>().map(i64::from).map_err(|_| {
        BackendError::Config(format!(
            "invalid Redis database {db:?} in the URL path: expected a number, as in redis://host:6379/0"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_numbers() {
        assert_eq!(parse_db("").unwrap(), 0);
        assert_eq!(parse_db("/").unwrap(), 0);
        assert_eq!(parse_db("/3").unwrap(), 3);
        assert!(parse_db("/x").is_err());
        assert!(parse_db("/-1").is_err());
    }
}
