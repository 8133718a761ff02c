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

/// A Postgres pool on an existing control plane: refuses (one line) a database that has no
/// `fleet` control plane instead of creating one there, since pointing `DATABASE_URL` at an
/// application database by mistake must not leave a `fleet` schema in it. An existing control
/// plane is brought up to date.
pub async fn pg_existing(settings: &Settings) -> anyhow::Result<sqlx::PgPool> {
    let pool = fleet_shared::db::lazy_pool(&settings.database_url, 2)?;
    let present: bool = sqlx::query_scalar("SELECT to_regclass('fleet.backfill_jobs') IS NOT NULL")
        .fetch_one(&pool)
        .await
        .with_context(|| format!("cannot use the database at {}", settings.database_url))?;
    anyhow::ensure!(
        present,
        "DATABASE_URL {} has no fleet control plane (fleet.backfill_jobs): point DATABASE_URL at the fleet's database (the workers create it at start); name other databases in FLEET_CONFIG [databases.<name>] and in the job's \"database\"",
        settings.database_url
    );
    fleet_shared::db::migrate_control_plane(&pool)
        .await
        .with_context(|| format!("cannot use the database at {}", settings.database_url))?;
    Ok(pool)
}

/// stdout was closed by the reader (`fleetctl … | head -1`): the command ends quietly with the
/// shell's conventional status for SIGPIPE instead of panicking or printing an error.
#[derive(Debug, thiserror::Error)]
#[error("stdout closed")]
pub struct StdoutClosed;

/// The exit status of a command whose reader went away: 128 + SIGPIPE, as a shell reports it.
pub const STDOUT_CLOSED_STATUS: i32 = 141;

/// Writes to stdout; a closed pipe becomes [`StdoutClosed`], any other failure an error that says
/// what could not be written.
pub fn write(args: std::fmt::Arguments<'_>, newline: bool) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let res = out
        .write_fmt(args)
        .and_then(|()| {
            if newline {
                out.write_all(b"\n")
            } else {
                Ok(())
            }
        })
        .and_then(|()| out.flush());
    match res {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        Err(e) => Err(anyhow::Error::new(e).context("cannot write to stdout")),
    }
}

/// `println!` for commands: a closed stdout ends the command quietly (see [`StdoutClosed`]).
macro_rules! outln {
    () => {{ $crate::output::write(format_args!(""), true)?; }};
    ($($arg:tt)*) => {{ $crate::output::write(format_args!($($arg)*), true)?; }};
}

/// `print!` for commands (progress lines redrawn in place).
macro_rules! out {
    ($($arg:tt)*) => {{ $crate::output::write(format_args!($($arg)*), false)?; }};
}

/// Prints `value` as pretty JSON (`--json`).
pub fn print_json<T: serde::Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    outln!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Prints one JSON document per line (`--watch --json`: a stream of snapshots).
pub fn print_json_line<T: serde::Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    outln!("{}", serde_json::to_string(value)?);
    Ok(())
}

/// The one way a read command prints a list: the items as a JSON array with `--json`, else
/// `empty` as one line when there are none, else an aligned table of `row(item)` under `header`.
pub fn list<T: serde::Serialize>(
    json: bool,
    items: &[T],
    empty: &str,
    header: &[&str],
    row: impl Fn(&T) -> Vec<String>,
) -> anyhow::Result<()> {
    if json {
        return print_json(items);
    }
    if items.is_empty() {
        outln!("{empty}");
        return Ok(());
    }
    print_table(header, &items.iter().map(row).collect::<Vec<_>>())
}

/// Prints rows as an aligned table with a header; the last column is never padded.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) -> anyhow::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[&str]| -> anyhow::Result<()> {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                let pad = widths.get(i).copied().unwrap_or(0);
                s.push_str(&format!("{c:<pad$}  "));
            }
        }
        outln!("{}", s.trim_end());
        Ok(())
    };
    line(header)?;
    for r in rows {
        line(&r.iter().map(String::as_str).collect::<Vec<_>>())?;
    }
    Ok(())
}
