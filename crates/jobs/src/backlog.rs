//! The jobs backlog (`fleetctl jobs pending`): what `FLEET_JOBS` holds per task and per tenant,
//! and what each task's runtime consumer (`jobs-<task>`) has in flight.
//!
//! Counts come from the stream's per-subject totals (`jobs.<task>.<tenant_code>`), so a job in
//! flight (delivered, not yet acked) is still counted as queued: on a work queue a job leaves the
//! stream only when it is acked or terminated.

use std::collections::BTreeMap;

use anyhow::Context as _;
use async_nats::jetstream;
use futures::TryStreamExt;
use serde::Serialize;

use fleet_shared::topology::JOBS_STREAM;

/// How many of the tenants with the most queued jobs are listed per task.
pub const TOP_TENANTS: usize = 5;

#[derive(Debug, Clone, Serialize)]
pub struct TenantBacklog {
    pub tenant_code: String,
    pub queued: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TaskBacklog {
    pub task: String,
    /// Jobs in the stream (including those in flight).
    pub queued: u64,
    pub tenants: usize,
    /// The runtime's consumer, if it exists.
    pub consumer: Option<String>,
    /// Delivered and not yet acked.
    pub in_flight: Option<usize>,
    /// The tenants with the most queued jobs, most first.
    pub top_tenants: Vec<TenantBacklog>,
}

/// The backlog of every task (or only `task`), largest first.
pub async fn pending(
    js: &jetstream::Context,
    task: Option<&str>,
) -> anyhow::Result<Vec<TaskBacklog>> {
    let stream = js
        .get_stream(JOBS_STREAM)
        .await
        .with_context(|| format!("Failed to look up stream {JOBS_STREAM}"))?;
    let filter = match task {
        Some(t) => format!("jobs.{t}.>"),
        None => "jobs.>".to_owned(),
    };
    let mut per_task: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    let mut subjects = stream
        .info_with_subjects(&filter)
        .await
        .context("Failed to read the jobs stream's subjects")?;
    while let Some((subject, count)) = subjects
        .try_next()
        .await
        .context("Failed to read the jobs stream's subjects")?
    {
        let tokens: Vec<&str> = subject.split('.').collect();
        if tokens.len() < 3 {
            continue;
        }
        *per_task
            .entry(tokens[1].to_owned())
            .or_default()
            .entry(tokens[tokens.len() - 1].to_owned())
            .or_default() += count as u64;
    }
    if let Some(t) = task {
        per_task.entry(t.to_owned()).or_default();
    }
    let mut out = Vec::new();
    for (task, tenants) in per_task {
        let durable = format!("jobs-{task}");
        let info = stream.consumer_info(&durable).await.ok();
        let mut top: Vec<TenantBacklog> = tenants
            .iter()
            .map(|(code, n)| TenantBacklog {
                tenant_code: code.clone(),
                queued: *n,
            })
            .collect();
        top.sort_by(|a, b| {
            b.queued
                .cmp(&a.queued)
                .then(a.tenant_code.cmp(&b.tenant_code))
        });
        top.truncate(TOP_TENANTS);
        out.push(TaskBacklog {
            queued: tenants.values().sum(),
            tenants: tenants.len(),
            consumer: info.as_ref().map(|_| durable),
            in_flight: info.map(|i| i.num_ack_pending),
            top_tenants: top,
            task,
        });
    }
    out.sort_by(|a, b| b.queued.cmp(&a.queued).then(a.task.cmp(&b.task)));
    Ok(out)
}
