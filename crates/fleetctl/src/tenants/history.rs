//! `fleetctl tenants history CODE`: the audit trail of every tenant that had the code (a code
//! archived and re-created shows both, told apart by tenant_id), oldest first.

use provisioner::lifecycle::audit;

use crate::output;

pub async fn run(code: String, json: bool) -> anyhow::Result<()> {
    let code = fleet_shared::Code::parse(&code)?;
    let settings = output::settings()?;
    let pg = output::pg(&settings).await?;
    let rows = audit::history(&pg, code.as_str()).await?;
    output::list(
        json,
        &rows,
        &format!("no lifecycle changes recorded for {code}"),
        &[
            "ID",
            "AT (UTC)",
            "EVENT",
            "STATUS",
            "ACTOR",
            "EVENT ID",
            "TENANT ID",
            "CHANGE",
        ],
        |r| {
            vec![
                r.id.to_string(),
                r.at.format("%Y-%m-%d %H:%M:%S").to_string(),
                r.event.clone(),
                r.status.clone(),
                r.actor.clone(),
                r.event_id.clone(),
                r.tenant_id.to_string(),
                format!("{} -> {}", r.old, r.new),
            ]
        },
    )
}
