//! `fleetctl up`: every worker of the fleet in one process, sharing one set of connections and
//! one health/metrics port. For production, run each worker's own binary instead: replicas share
//! the same durable consumers either way.

use fleet_shared::config::DEFAULT_BIN_HTTP_ADDR;
use fleet_shared::fleet::{shutdown_on_signals, Fleet};
use fleet_shared::topology::Topology;
use tokio::task::JoinSet;

/// Each worker by name, with whether it needs Redis (its crate says so: `/readyz` then checks
/// Redis only when a worker that uses it runs here).
const WORKERS: &[(&str, bool)] = &[
    (provisioner::NAME, provisioner::USES_REDIS),
    (cache_invalidator::NAME, cache_invalidator::USES_REDIS),
    (backfill_worker::NAME, backfill_worker::USES_REDIS),
    (scheduler::NAME, scheduler::USES_REDIS),
    (followups_consumer::NAME, followups_consumer::USES_REDIS),
];

#[derive(clap::Args)]
pub struct Args {
    /// Run only these workers (comma-separated); default: all of them
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Do not serve the operator console (FLEET_CONSOLE_ADDR)
    #[arg(long)]
    no_console: bool,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    for w in &args.only {
        if !WORKERS.iter().any(|(name, _)| name == w) {
            let names: Vec<&str> = WORKERS.iter().map(|(name, _)| *name).collect();
            anyhow::bail!(
                "--only: unknown worker {w:?} (workers: {})",
                names.join(", ")
            );
        }
    }
    let enabled = |name: &str| args.only.is_empty() || args.only.iter().any(|w| w == name);
    let uses_redis = WORKERS.iter().any(|(name, uses)| *uses && enabled(name));
    let settings = fleet_shared::Settings::from_env(DEFAULT_BIN_HTTP_ADDR)?;
    fleet_shared::telemetry::init(settings.log_format);
    let shutdown = shutdown_on_signals();
    let fleet = Fleet::connect(settings, Topology::default()).await?;
    let (addr, http) = fleet_shared::http::serve(
        fleet.settings.http_addr,
        fleet.http_state(uses_redis),
        shutdown.clone(),
    )
    .await?;

    let console = if args.no_console {
        None
    } else {
        let c = fleet_console::Console::new(
            fleet.nats.clone(),
            fleet.pg.clone(),
            (*fleet.settings).clone(),
        )?;
        // The console is a window on the fleet, not part of it: a taken port is logged and the
        // workers run anyway.
        match fleet_console::serve(c, fleet.settings.console_addr, shutdown.clone()).await {
            Ok((_, handle)) => Some(handle),
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "operator console not started; the fleet runs without it");
                None
            }
        }
    };

    let mut set: JoinSet<(&'static str, anyhow::Result<()>)> = JoinSet::new();
    macro_rules! start {
        ($krate:ident) => {
            if enabled($krate::NAME) {
                let (f, s) = (fleet.clone(), shutdown.clone());
                set.spawn(async move { ($krate::NAME, $krate::run(f, s).await) });
            }
        };
    }
    start!(provisioner);
    start!(cache_invalidator);
    start!(backfill_worker);
    start!(scheduler);
    start!(followups_consumer);
    tracing::info!(http = %addr, workers = set.len(), "fleet is up; Ctrl-C to stop");

    let mut failed = None;
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((name, Ok(()))) => tracing::info!(worker = name, "worker finished"),
            Ok((name, Err(e))) => {
                tracing::error!(worker = name, error = %format!("{e:#}"), "worker failed; stopping the fleet");
                failed.get_or_insert_with(|| e.context(format!("worker {name} failed")));
                shutdown.cancel();
            }
            Err(e) => {
                tracing::error!(error = %e, "worker task panicked; stopping the fleet");
                failed.get_or_insert_with(|| anyhow::anyhow!("a worker panicked: {e}"));
                shutdown.cancel();
            }
        }
    }
    shutdown.cancel();
    let _ = http.await;
    if let Some(c) = console {
        let _ = c.await;
    }
    let _ = fleet.nats.drain().await;
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
