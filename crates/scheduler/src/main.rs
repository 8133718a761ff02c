//! The `scheduler` binary: configuration, telemetry and connections come from the shared runtime;
//! the work is in the library.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    fleet_shared::fleet::worker_main(scheduler::USES_REDIS, scheduler::run).await
}
