//! The `cache-invalidator` binary: configuration, telemetry and connections come from the shared runtime;
//! the work is in the library.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    fleet_shared::fleet::worker_main(cache_invalidator::USES_REDIS, cache_invalidator::run).await
}
