//! `fleetctl jobs pending [--task T] [--json]`: the backlog of scheduled jobs per task in
//! `FLEET_JOBS`, the tenants with the most queued, and what each task's runtime consumer has in
//! flight (see [`fleet_jobs::backlog`]).

use clap::Subcommand;

use crate::output;

#[derive(Subcommand)]
pub enum Cmd {
    /// Jobs waiting per task (jobs.<task>.<tenant_code>), with the tenants that have the most
    Pending {
        /// Only this task
        #[arg(long)]
        task: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Pending { task, json } => {
            if let Some(t) = &task {
                fleet_shared::Name::parse(t).map_err(|e| anyhow::anyhow!("--task: {e}"))?;
            }
            let settings = output::settings()?;
            let js = output::jetstream(&settings).await?;
            let backlog = fleet_jobs::backlog::pending(&js, task.as_deref()).await?;
            let backlog: Vec<_> = if task.is_some() {
                backlog
            } else {
                backlog.into_iter().filter(|b| b.queued > 0).collect()
            };
            output::list(
                json,
                &backlog,
                "no jobs pending",
                &[
                    "TASK",
                    "QUEUED",
                    "TENANTS",
                    "IN FLIGHT",
                    "CONSUMER",
                    "MOST QUEUED",
                ],
                |b| {
                    vec![
                        b.task.clone(),
                        b.queued.to_string(),
                        b.tenants.to_string(),
                        b.in_flight.map(|n| n.to_string()).unwrap_or_default(),
                        b.consumer.clone().unwrap_or_else(|| "none".into()),
                        b.top_tenants
                            .iter()
                            .map(|t| format!("{} {}", t.tenant_code, t.queued))
                            .collect::<Vec<_>>()
                            .join(", "),
                    ]
                },
            )
        }
    }
}
