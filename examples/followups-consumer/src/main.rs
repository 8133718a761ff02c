//! The `followups-consumer` binary: the example job consumer alone (`fleetctl up` also runs it).

#[tokio::main]
async fn main() -> std::process::ExitCode {
    fleet_shared::fleet::worker_main(followups_consumer::USES_REDIS, followups_consumer::run).await
}
