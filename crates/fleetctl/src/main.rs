//! `fleetctl`: the operator CLI of the tenant fleet.
//!
//! Every command reads the same environment as the workers (`NATS_URL`, `DATABASE_URL`,
//! `REDIS_URL`, `FLEET_CONFIG`). Read commands take `--json` for scripts. Errors go to stderr as
//! one line, with a non-zero exit.

// Every line a command prints goes through `outln!`/`out!`, which turn a closed pipe into a quiet
// exit 141; a `println!` would panic there instead (`fleetctl … | head -1`).
#![deny(clippy::print_stdout)]

// First, so that its `outln!`/`out!` macros are visible in every command module.
#[macro_use]
mod output;

mod backfill;
mod cache;
mod console;
mod dlq;
mod jobs;
mod migrate;
mod publish;
mod schedule;
mod schedule_catalog;
mod schedule_edit;
mod tenants;
mod up;
mod verify;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "fleetctl", version, about = "Operate the tenant fleet", long_about = None)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run every worker of the fleet in one process (health and metrics on FLEET_HTTP_ADDR)
    Up(up::Args),
    /// The operator console in the browser (on FLEET_CONSOLE_ADDR; actions need FLEET_CONSOLE_TOKEN)
    Console(console::Args),
    /// Publish an event (JSON body) with a Nats-Msg-Id
    Publish(publish::Args),
    /// The tenant registry
    #[command(subcommand)]
    Tenants(tenants::Cmd),
    /// Dead letters: list, show, replay (one, edited, or in bulk), discard, purge
    #[command(subcommand)]
    Dlq(dlq::Cmd),
    /// Backfill jobs: submit, watch, pause, resume, cancel, retry
    #[command(subcommand)]
    Backfill(backfill::Cmd),
    /// Tenant cache: invalidate and preview
    #[command(subcommand)]
    Cache(cache::Cmd),
    /// Scheduled per-tenant jobs
    #[command(subcommand)]
    Schedule(schedule::Cmd),
    /// The jobs the schedules fanned out: backlog per task and tenant
    #[command(subcommand)]
    Jobs(jobs::Cmd),
    /// Fleet-wide tenant migrations: status, rollout, rollback, undo, verify
    #[command(subcommand)]
    Migrate(migrate::Cmd),
    /// Write a new tenant migration (up and down files)
    #[command(subcommand)]
    Migration(migrate::MigrationCmd),
}

fn main() {
    // A usage error is bad input like any other: one line on stderr and exit 1 (help and
    // --version still print in full and exit 0).
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            eprintln!(
                "error: {} (see --help)",
                first.trim_start_matches("error: ").trim()
            );
            std::process::exit(1);
        }
    };
    // Library diagnostics only (warnings by default, RUST_LOG to see more); `up` installs the
    // workers' own format. Secrets are masked at every level either way.
    if !matches!(cli.cmd, Cmd::Up(_) | Cmd::Console(_)) {
        fleet_shared::telemetry::init_with_default(fleet_shared::config::LogFormat::Pretty, "warn");
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let res = rt.block_on(async move {
        match cli.cmd {
            Cmd::Up(a) => up::run(a).await,
            Cmd::Console(a) => console::run(a).await,
            Cmd::Publish(a) => publish::run(a).await,
            Cmd::Tenants(c) => tenants::run(c).await,
            Cmd::Dlq(c) => dlq::run(c).await,
            Cmd::Backfill(c) => backfill::run(c).await,
            Cmd::Cache(c) => cache::run(c).await,
            Cmd::Schedule(c) => schedule::run(c).await,
            Cmd::Jobs(c) => jobs::run(c).await,
            Cmd::Migrate(c) => migrate::run(c).await,
            Cmd::Migration(c) => migrate::run_migration(c).await,
        }
    });
    if let Err(e) = res {
        if e.chain().any(|c| c.is::<output::StdoutClosed>()) {
            std::process::exit(output::STDOUT_CLOSED_STATUS);
        }
        let line: Vec<String> = e.chain().map(|c| c.to_string()).collect();
        eprintln!(
            "error: {}",
            fleet_shared::telemetry::redact(&fleet_shared::errors::one_line(&line.join(": ")))
        );
        std::process::exit(1);
    }
}
