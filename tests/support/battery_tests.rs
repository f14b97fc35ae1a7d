//! The `#[test]` functions of a backend's binary that runs the battery
//! (`tests/support/battery.rs`): `battery_tests::tests!(...)`.

/// One `#[test]` per scenario named, each calling `$run(TEST_NAME, SCENARIO)`: `$run` makes the
/// scenario's environment (a server of its own, a namespace of its own) and runs it there.
/// `common` stands for the scenarios that every backend runs; a binary names the others.
macro_rules! tests {
    ($run:path; common $(, $extra:ident)* $(,)?) => {
        $crate::support::battery_tests::tests!(
            $run;
            five_concurrent_runs_run_the_job_once,
            conflict_exit_code_zero_skips_silently,
            wait_runs_the_job_after_the_holder,
            bounded_wait_gives_up_with_75,
            exit_codes_pass_through,
            signal_deaths_exit_128_plus_n,
            missing_command_exits_127,
            non_executable_command_exits_126,
            job_environment,
            fencing_token_increases,
            signals_reach_the_job_group_once,
            job_dies_when_elect_is_killed,
            lock_stays_held_while_a_job_process_lives,
            leftovers_are_stopped_before_elect_exits,
            setsid_grandchild_is_stopped,
            watchdog_is_named,
            job_is_stopped_when_the_watchdog_is_killed,
            status_of_one_lock,
            status_lists_every_lock,
            sigterm_stops_a_wait,
            bad_input_is_a_usage_error,
            release_records_the_last_run,
            once_per_runs_once_across_skewed_contenders,
            once_per_failed_run_leaves_no_marker,
            a_lost_lease_records_no_history,
            holders_admit_n_at_once,
            holders_wait_for_a_free_place,
            holders_never_exceed_n,
            holders_a_killed_holder_frees_its_place,
            $($extra),*
        );
    };
    ($run:path; $($scenario:ident),* $(,)?) => {
        $(
            #[test]
            fn $scenario() {
                $run(stringify!($scenario), $crate::support::battery::$scenario);
            }
        )*
    };
}
pub(crate) use tests;
