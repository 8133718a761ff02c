//! The `followups-consumer` binary: the example job consumer alone (`fleetctl up` also runs it).

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let res = fleet_shared::fleet::worker_main(
        fleet_shared::topology::Topology::default(),
        followups_consumer::USES_REDIS,
        followups_consumer::run,
    )
    .await;
    fleet_shared::fleet::exit_code(res)
}
