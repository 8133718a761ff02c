//! The `backfill-worker` binary: configuration, telemetry and connections come from the shared runtime;
//! the work is in the library.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let res = fleet_shared::fleet::worker_main(
        fleet_shared::topology::Topology::default(),
        backfill_worker::USES_REDIS,
        backfill_worker::run,
    )
    .await;
    fleet_shared::fleet::exit_code(res)
}
