//! The backend-independent battery of `tests/support/battery.rs` on a real redis-server, one
//! server (with a password, so that redaction is checked too) per scenario.

mod support {
    pub mod battery;
    pub mod battery_tests;
    pub mod certs;
    pub mod env;
    pub mod net;
    pub mod process;
    pub mod programs;
    pub mod redis_server;
}

use support::battery_tests;
use support::env::TestEnv;
use support::redis_server::{Options, RedisServer};

/// A battery scenario on a Redis of its own, with a password (so that its redaction is checked
/// too).
fn on_redis(_test: &str, scenario: fn(&TestEnv)) {
    let server = RedisServer::with(Options {
        password: Some("battery-secret".into()),
        ..Options::default()
    });
    scenario(&TestEnv::with_backend(&server.url()).private());
}

battery_tests::tests!(
    on_redis;
    common,
    job_dies_with_elect_and_watchdog_in_a_pid_namespace,
    forced_release_frees_a_dead_holders_lease,
    on_acquired_hook_is_fenced_when_elect_is_stopped,
);
