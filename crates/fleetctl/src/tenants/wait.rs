//! Publishing a lifecycle event from the CLI and waiting for its outcome.
//!
//! The event gets `Nats-Msg-Id = fleetctl:<uuid>` and `Fleet-Actor = fleetctl:<user>@<host>`
//! (the audit trail's "who"). Unless `--no-wait`, the command then waits for the provisioner's
//! decision: the audit row with that event id (success, printed), or a dead letter carrying that
//! original message id (refused: its one-line reason, exit 1). Nothing answering within
//! `--timeout` is an error too, naming the message id so the outcome can be looked up later.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use fleet_shared::config::Settings;
use fleet_shared::dlq::H_ORIGINAL_MSG_ID;
use fleet_shared::topology::DLQ_STREAM;
use provisioner::lifecycle::request::{self, Request};
use provisioner::lifecycle::AuditRow;

use crate::output;

#[derive(clap::Args, Clone)]
pub struct Wait {
    /// Publish and return at once, without waiting for the provisioner's decision
    #[arg(long)]
    pub no_wait: bool,
    /// How long to wait for the decision (e.g. 30s, 2m)
    #[arg(long, default_value = "30s", value_parser = fleet_shared::duration::parse)]
    pub timeout: Duration,
    /// Print the audit row as JSON
    #[arg(long)]
    pub json: bool,
}

/// `fleetctl:<user>@<host>`
pub fn actor() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("fleetctl:{user}@{host}")
}

async fn dlq_last_seq(js: &jetstream::Context) -> u64 {
    match js.get_stream(DLQ_STREAM).await {
        Ok(mut s) => s.info().await.map(|i| i.state.last_sequence).unwrap_or(0),
        Err(_) => 0,
    }
}

/// The reason of a dead letter stored after `after` for message `id`, if any.
async fn dead_letter_for(js: &jetstream::Context, after: u64, id: &str) -> Option<String> {
    let letters = fleet_shared::dlq::list(js, Some(provisioner::NAME), 10_000)
        .await
        .ok()?;
    letters
        .into_iter()
        .filter(|l| l.seq > after)
        .find(|l| fleet_shared::publish::header_value(&l.headers, H_ORIGINAL_MSG_ID) == Some(id))
        .map(|l| l.error)
}

/// Publishes `req` and (unless told not to) waits for the outcome.
pub async fn publish_and_wait(
    settings: &Settings,
    pg: &sqlx::PgPool,
    req: &Request,
    wait: &Wait,
) -> anyhow::Result<()> {
    let js = output::jetstream(settings).await?;
    let subject = req.subject;
    let id = format!("fleetctl:{}", uuid::Uuid::new_v4());
    let after = dlq_last_seq(&js).await;
    request::publish(&js, req, &id, &actor())
        .await
        .with_context(|| format!("cannot publish {subject}"))?;
    if wait.no_wait {
        outln!("published {subject} msg-id {id}");
        return Ok(());
    }
    let deadline = tokio::time::Instant::now() + wait.timeout;
    let mut polls = 0u32;
    loop {
        let row: Option<AuditRow> = sqlx::query_as(
            "SELECT id, tenant_id, code, org_code, event, event_id, actor, status, old, new, at
               FROM fleet.tenant_events WHERE event_id = $1 ORDER BY id DESC LIMIT 1",
        )
        .bind(&id)
        .fetch_optional(pg)
        .await
        .context("Failed to read fleet.tenant_events")?;
        if let Some(row) = row {
            if wait.json {
                return output::print_json(&row);
            }
            outln!(
                "{}: tenant {} is {} (audit #{}): {} -> {}",
                row.event,
                row.code,
                row.status,
                row.id,
                row.old,
                row.new
            );
            return Ok(());
        }
        // Dead letters are rarer and costlier to read: every fourth poll.
        if polls.is_multiple_of(4) {
            if let Some(reason) = dead_letter_for(&js, after, &id).await {
                anyhow::bail!("refused: {reason}");
            }
        }
        polls += 1;
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!(
                "published {subject} (msg-id {id}) but the provisioner did not decide on it within {}; is it running? `fleetctl tenants history` shows it once applied",
                fleet_shared::duration::format(wait.timeout)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
