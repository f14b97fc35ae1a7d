//! What a Redis client error means: whether the connection survives it, and how to say it in
//! one line with a hint at the usual cause.

use ::redis::{ErrorKind, RedisError, ServerErrorKind};

/// Whether an error leaves the connection in doubt, so that the next call should open a new one.
/// A server's error reply (a script error, NOPERM) does not.
///
/// READONLY does: the node is no longer the primary (demoted by a failover), and a new
/// connection, through the sentinels or the slot map, finds the one that is.
pub fn breaks_connection(err: &RedisError) -> bool {
    is_demoted(err) || !matches!(err.kind(), ErrorKind::Server(_) | ErrorKind::Extension)
}

/// The node answered as a replica: the primary moved.
pub fn is_demoted(err: &RedisError) -> bool {
    err.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly)
        || err.to_string().contains("UNBLOCKED")
}

/// A client error on one line, with a hint at the usual cause.
pub fn describe(err: &RedisError) -> String {
    let text = one_line(err);
    let lower = text.to_ascii_lowercase();
    let hint = if err.kind() == ErrorKind::AuthenticationFailed
        || lower.contains("wrongpass")
        || lower.contains("invalid password")
    {
        "check the user and password in the URL or ELECT_REDIS_PASSWORD"
    } else if lower.contains("noauth") {
        "the server requires a password: redis://user:password@host/ or ELECT_REDIS_PASSWORD"
    } else if lower.contains("db index") || lower.contains("select") {
        "check the database number in the URL path"
    } else if err.is_connection_refusal() {
        "is redis-server running there?"
    } else if err.is_timeout() {
        "no answer in time; is the server stopped or overloaded, or is this not a Redis port?"
    } else if lower.contains("certificate")
        || lower.contains("tls")
        || lower.contains("handshake")
        || lower.contains("invalid peer")
    {
        "TLS failed: check --tls-ca (the CA that signed the server's certificate) and the host name"
    } else if err.kind() == ErrorKind::Parse
        || lower.contains("parse")
        || lower.contains("protocol")
        || err.is_connection_dropped()
    {
        "the server closed the connection or does not speak the Redis protocol; is this a Redis port (use rediss:// for TLS)?"
    } else {
        ""
    };
    if hint.is_empty() {
        text
    } else {
        format!("{text} ({hint})")
    }
}

pub fn one_line(err: &RedisError) -> String {
    err.to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}
