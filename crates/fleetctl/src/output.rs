//! Shared plumbing of the CLI: settings, connections and output.

use std::time::Duration;

use anyhow::Context as _;
use fleet_shared::config::Settings;

/// Settings for CLI commands (HTTP address is irrelevant here). A bad variable is reported as
/// the one-line config error.
pub fn settings() -> anyhow::Result<Settings> {
    Settings::from_env("127.0.0.1:0").map_err(anyhow::Error::from)
}

/// A NATS connection for a CLI command: fails fast (5 s) instead of waiting for the server.
pub async fn nats(settings: &Settings) -> anyhow::Result<async_nats::Client> {
    fleet_shared::fleet::connect_nats(&settings.nats, "fleetctl", Duration::from_secs(5)).await
}

/// JetStream with the fleet's streams ensured (a fresh install may have none yet).
pub async fn jetstream(settings: &Settings) -> anyhow::Result<async_nats::jetstream::Context> {
    let js = async_nats::jetstream::new(nats(settings).await?);
    fleet_shared::topology::ensure_streams(
        &js,
        &fleet_shared::topology::Topology {
            replicas: settings.stream_replicas,
            ..Default::default()
        },
    )
    .await?;
    Ok(js)
}

/// A Postgres pool for a CLI command, with the control plane migrated.
pub async fn pg(settings: &Settings) -> anyhow::Result<sqlx::PgPool> {
    let pool = fleet_shared::db::lazy_pool(&settings.database_url, 2)?;
    fleet_shared::db::migrate_control_plane(&pool)
        .await
        .with_context(|| format!("cannot use the database at {}", settings.database_url))?;
    Ok(pool)
}

/// Prints `value` as pretty JSON.
pub fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Prints rows as an aligned table with a header.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}
