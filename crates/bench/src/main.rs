//! `fleet-bench`: measures each worker against its raw limit in the same run and prints both
//! and the ratio. Each benchmark runs on private servers (its own `nats-server`, a fresh
//! database, its own `redis-server`) so it never touches a developer's data, and runs the worker
//! as its real binary (built alongside this one) so its RSS can be read.

mod backfill;
mod cluster;
mod common;
mod console;
mod consume;
mod fanout;
mod finalize;
mod invalidate;
mod moving;
mod provision;
mod provision_warm;
mod rollout;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "fleet-bench",
    version,
    about = "Benchmark the fleet against its raw limits"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// tenant.created → tenant.provisioned throughput vs a bare DDL loop
    Provision(provision::Args),
    /// A fleet-wide migration rolled out vs a bare serial DDL loop; migrate status at 10k tenants
    Rollout(rollout::Args),
    /// Cache invalidation events/s vs the naive SCAN+DEL per event
    Invalidate(invalidate::Args),
    /// tenant_codes backfill rows/s vs an in-database DO loop
    Backfill(backfill::Args),
    /// Backfill finalize (NOT NULL, primary keys, foreign keys, indexes) on 3M rows vs the same DDL by hand
    Finalize(finalize::Args),
    /// Scheduler fan-out jobs/s vs a bare pipelined JetStream publisher
    Fanout(fanout::Args),
    /// On 3-node NATS clusters: provisioning and invalidation at R3 vs R1; 1/2/3 provisioners
    Cluster(cluster::Args),
    /// Every console page at 10,000 tenants and 1,000 dead letters (p99 per page), and the RSS the console adds to fleetctl up
    Console(console::Args),
    /// fleetctl tenants move of a tenant with 1M rows between two Postgres servers (total and
    /// cut-over time) vs pg_dump | psql of the same schema
    Move(moving::Args),
    /// Job runtime jobs/s on no-op jobs vs a bare pull consumer; the per-tenant fairness figure
    Consume(consume::Args),
}

fn main() {
    let cli = Cli::parse();
    // The report is what this prints; library logs only when something is wrong (sqlx's
    // slow-statement warnings about the benchmark's own bulk loads are expected, so hidden).
    fleet_shared::telemetry::init_with_default(
        fleet_shared::config::LogFormat::Pretty,
        "warn,sqlx=error",
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    println!("machine: {}", common::machine_description());
    let res = rt.block_on(async move {
        match cli.cmd {
            Cmd::Provision(a) => provision::run(a).await,
            Cmd::Rollout(a) => rollout::run(a).await,
            Cmd::Invalidate(a) => invalidate::run(a).await,
            Cmd::Backfill(a) => backfill::run(a).await,
            Cmd::Fanout(a) => fanout::run(a).await,
            Cmd::Finalize(a) => finalize::run(a).await,
            Cmd::Cluster(a) => cluster::run(a).await,
            Cmd::Consume(a) => consume::run(a).await,
            Cmd::Console(a) => console::run(a).await,
            Cmd::Move(a) => moving::run(a).await,
        }
    });
    if let Err(e) = res {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
