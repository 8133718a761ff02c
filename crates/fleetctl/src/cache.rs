//! `fleetctl cache invalidate | preview`: clear an org's cache through the fleet, or see what
//! that would delete.
//!
//! `invalidate` publishes the event (`org.updated`, and `session.changed` with `--session`)
//! with a fresh `Nats-Msg-Id`, so the running invalidator does the work with its guarantees
//! (escaping, coalescing, retries). `preview` reads the same rules (built-in plus
//! `FLEET_CONFIG`) and counts, per rule, the keys they match now with `SCAN`; it deletes
//! nothing. The org code is validated first, so a glob never reaches Redis from the CLI either.

use anyhow::Context as _;
use clap::Subcommand;
use fleet_shared::events::{OrgUpdated, SessionChanged, ORG_UPDATED, SESSION_CHANGED};
use fleet_shared::Code;

use crate::output;

#[derive(Subcommand)]
pub enum Cmd {
    /// Publish org.updated for an org (and session.changed with --session)
    Invalidate {
        /// The org code, e.g. acme_org
        #[arg(long)]
        org: String,
        /// Also publish session.changed (clears sessions:{org}:*)
        #[arg(long)]
        session: bool,
        #[arg(long)]
        json: bool,
    },
    /// Count, per rule, the keys an invalidation of the org would delete (deletes nothing)
    Preview {
        #[arg(long)]
        org: String,
        #[arg(long)]
        json: bool,
    },
}

fn org_code(raw: &str) -> anyhow::Result<Code> {
    Code::parse(raw).with_context(|| "--org".to_string())
}

pub async fn run(cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Invalidate { org, session, json } => invalidate(org_code(&org)?, session, json).await,
        Cmd::Preview { org, json } => preview(org_code(&org)?, json).await,
    }
}

async fn invalidate(org: Code, session: bool, json: bool) -> anyhow::Result<()> {
    let settings = output::settings()?;
    let js = output::jetstream(&settings).await?;
    let mut published = Vec::new();
    let id = uuid::Uuid::new_v4().to_string();
    let body = OrgUpdated {
        org_code: org.clone(),
        tenant_code: None,
    };
    let ack = fleet_shared::publish::publish_json(&js, ORG_UPDATED, &id, &body, None).await?;
    published.push((ORG_UPDATED, id, ack.sequence));
    if session {
        let id = uuid::Uuid::new_v4().to_string();
        let body = SessionChanged {
            org_code: org.clone(),
            session_id: None,
        };
        let ack =
            fleet_shared::publish::publish_json(&js, SESSION_CHANGED, &id, &body, None).await?;
        published.push((SESSION_CHANGED, id, ack.sequence));
    }
    if json {
        let rows: Vec<_> = published
            .iter()
            .map(|(s, id, seq)| serde_json::json!({"subject": s, "msg_id": id, "sequence": seq, "org_code": org}))
            .collect();
        return output::print_json(&rows);
    }
    for (s, id, seq) in published {
        outln!("published {s} for {org} (seq {seq}, msg-id {id})");
    }
    Ok(())
}

async fn preview(org: Code, json: bool) -> anyhow::Result<()> {
    let settings = output::settings()?;
    let rows = cache_invalidator::preview(&settings, &org)
        .await
        .context("Failed to preview the invalidation")?;
    if json {
        return output::print_json(&rows);
    }
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.rule.clone(),
                r.subject.clone(),
                r.patterns.join(" "),
                r.keys.to_string(),
            ]
        })
        .collect();
    output::print_table(&["RULE", "SUBJECT", "PATTERNS", "KEYS"], &table)?;
    Ok(())
}
