//! The backend-independent battery of `tests/support/battery.rs` on a real PostgreSQL, one
//! cluster per scenario, reached with a password so that redaction is checked too.

mod support {
    pub mod battery;
    pub mod battery_tests;
    pub mod certs;
    pub mod env;
    pub mod net;
    pub mod postgres_server;
    pub mod process;
}

use support::battery_tests;
use support::env::TestEnv;
use support::postgres_server::PostgresServer;

/// A battery scenario on a PostgreSQL of its own.
fn on_postgres(_test: &str, scenario: fn(&TestEnv)) {
    let server = PostgresServer::start();
    scenario(&TestEnv::with_backend(&server.url()).private());
}

battery_tests::tests!(
    on_postgres;
    common,
    job_dies_with_elect_and_watchdog_in_a_pid_namespace,
    forced_release_frees_a_dead_holders_lease,
    on_acquired_hook_is_fenced_when_elect_is_stopped,
);
