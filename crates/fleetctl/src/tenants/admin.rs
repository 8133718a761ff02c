//! The direct actions: `fleetctl tenants purge --older-than` and `fleetctl tenants rotate-keys`.
//! They run the provisioner's own transactions (one per tenant, under its lock, audited) from
//! the CLI rather than through an event: purging needs no running provisioner, and re-sealing
//! needs the keys, which the operator's environment holds. Each prints a line per tenant.
//! Their announcements (`tenant.lifecycle.purged` / `.keys_rotated`) are published best effort:
//! the change is committed either way.

use std::time::Duration;

use provisioner::lifecycle::{announce, purge, rotate, AuditRow};

use super::wait::actor;
use crate::output;

async fn announce_all(settings: &fleet_shared::Settings, rows: &[AuditRow]) {
    if rows.is_empty() {
        return;
    }
    let js = match output::jetstream(settings).await {
        Ok(js) => js,
        Err(e) => {
            eprintln!("warning: changes committed, but NATS is unreachable for their announcements: {e:#}");
            return;
        }
    };
    for r in rows {
        if let Err(e) = announce::announce(&js, r, None).await {
            eprintln!(
                "warning: tenant {}: change committed, but not announced: {e}",
                r.code
            );
        }
    }
}

pub async fn purge(older_than: Option<Duration>, dry_run: bool, json: bool) -> anyhow::Result<()> {
    let settings = output::settings()?;
    let older_than = match older_than {
        Some(d) => d,
        None => provisioner::config::ProvisionerConfig::from_settings(&settings)?
            .purge_after()
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "give --older-than (e.g. 30d), or set [provisioner] purge_after in FLEET_CONFIG"
                )
            })?,
    };
    let pg = output::pg(&settings).await?;
    if dry_run {
        let due = purge::due(&pg, older_than).await?;
        if json {
            return output::print_json(&due);
        }
        outln!(
            "{} archived tenant(s) older than {} would be purged",
            due.len(),
            fleet_shared::duration::format(older_than)
        );
        for a in &due {
            outln!(
                "  {} {} {} archived {}",
                a.code,
                a.tenant_id,
                a.schema_name,
                a.deleted_at
            );
        }
        return Ok(());
    }
    let pools =
        fleet_shared::databases::DatabasePools::new(settings.databases.clone(), pg.clone(), 2);
    let rows = purge::purge_older_than(&pools, &actor(), older_than, |a, row| {
        // A progress line only: a reader that went away must not stop the purge half-way.
        if !json {
            let _ = output::write(
                format_args!(
                    "purged {} ({}): dropped {} (archived {}), audit #{}",
                    a.code, a.tenant_id, a.schema_name, a.deleted_at, row.id
                ),
                true,
            );
        }
    })
    .await?;
    announce_all(&settings, &rows).await;
    if json {
        return output::print_json(&rows);
    }
    outln!("{} tenant(s) purged", rows.len());
    Ok(())
}

pub async fn rotate_keys(json: bool) -> anyhow::Result<()> {
    let settings = output::settings()?;
    let keys = settings.config_keys.clone().ok_or_else(|| {
        anyhow::anyhow!(
            "FLEET_CONFIG_KEYS is not set: rotate-keys needs every key in use and the new one last"
        )
    })?;
    let pg = output::pg(&settings).await?;
    let report = rotate::rotate_keys(&pg, &keys, &actor(), |code, n| {
        // A progress line only: a reader that went away must not stop the rotation half-way.
        if !json {
            let _ = output::write(
                format_args!(
                    "tenant {code}: {n} value(s) re-encrypted under {}",
                    keys.current_id()
                ),
                true,
            );
        }
    })
    .await?;
    if json {
        return output::print_json(&report);
    }
    outln!(
        "{} value(s) of {} tenant(s) re-encrypted; every encrypted config is now under key {}",
        report.values,
        report.tenants,
        report.key_id
    );
    Ok(())
}
