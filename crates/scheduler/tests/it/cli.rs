//! The real `scheduler` binary's command line: help, version, and one line for anything else.

#[test]
fn help_version_and_unknown_arguments() {
    fleet_testkit::assert_worker_cli(env!("CARGO_BIN_EXE_scheduler"), "scheduler");
}
