//! `fleetctl tenants export CODE --out DIR`: one tenant as a self-describing bundle (see
//! `bundle.rs` for the layout).
//!
//! Everything is read in one `REPEATABLE READ READ ONLY` transaction whose snapshot is handed to
//! `pg_dump --snapshot`, so the DDL, every table's rows, the ledger, the registry row and the
//! configs are one consistent picture even while the tenant is in use. Table data is streamed
//! from `COPY ... TO STDOUT` straight to its file, hashed on the way, so memory stays bounded
//! whatever the table's size. The bundle is written to `DIR.partial-<id>` and renamed to `DIR`
//! only when complete, so a failed export leaves no half-bundle behind.
//!
//! The schema is read on the database the registry names (`fleet.tenants.database`), with that
//! database's URL (handed to `pg_dump` in its environment, never printed). On the control
//! database, registry and data share the one snapshot; on another server they are two
//! `REPEATABLE READ` snapshots, the registry's taken first (the tenant's lock is not taken, so a
//! config changed in between is the only thing that can differ).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use fleet_shared::databases::{Databases, CONTROL};
use fleet_shared::secret::{ExposeSecret, SecretUrl};
use fleet_shared::Code;
use futures::StreamExt as _;
use sha2::{Digest, Sha256};
use sqlx::{Connection as _, PgConnection};
use tokio::io::AsyncWriteExt as _;

use super::bundle::{self, FileEntry, LedgerRow, Manifest, SequenceRow, TableEntry};
use super::catalog::{self, qualified, quote_ident};
use super::ddl;

/// Exports `code` to `out`; returns the manifest written.
pub async fn export(databases: &Databases, code: &Code, out: &Path) -> anyhow::Result<Manifest> {
    if out.exists() {
        let empty = out.is_dir() && std::fs::read_dir(out)?.next().is_none();
        anyhow::ensure!(
            empty,
            "{} already exists and is not an empty directory; choose a new --out",
            out.display()
        );
    }
    let partial = partial_dir(out)?;
    std::fs::create_dir_all(partial.join("data"))
        .with_context(|| format!("cannot create {}", partial.display()))?;
    let res = write_bundle(databases, code, &partial).await;
    match res {
        Ok(manifest) => {
            if out.exists() {
                std::fs::remove_dir(out)?;
            }
            std::fs::rename(&partial, out).with_context(|| {
                format!("cannot move {} to {}", partial.display(), out.display())
            })?;
            Ok(manifest)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&partial);
            Err(e)
        }
    }
}

fn partial_dir(out: &Path) -> anyhow::Result<PathBuf> {
    let name = out
        .file_name()
        .with_context(|| format!("--out {} has no directory name", out.display()))?;
    let mut partial = name.to_os_string();
    partial.push(format!(".partial-{}", uuid::Uuid::new_v4().simple()));
    Ok(out.with_file_name(partial))
}

async fn write_bundle(databases: &Databases, code: &Code, dir: &Path) -> anyhow::Result<Manifest> {
    let control_url = &databases.control().url;
    let mut con = PgConnection::connect(control_url.expose_secret())
        .await
        .context("Failed to connect to the database")?;
    let mut tx = snapshot(&mut con).await?;

    let tenant: Option<Registered> = sqlx::query_as(
        "SELECT to_jsonb(t) AS row, tenant_id, schema_name, schema_version, org_code, status, database,
                own_database
               FROM fleet.tenants t WHERE code = $1 AND status <> 'deleted'",
    )
    .bind(code.as_str())
    .fetch_optional(&mut *tx)
    .await
    .context("Failed to read fleet.tenants")?;
    let Registered {
        row,
        tenant_id,
        schema_name: schema,
        schema_version: version,
        org_code,
        status,
        database,
        own_database,
    } = tenant.with_context(|| format!("no tenant with code {code}"))?;
    anyhow::ensure!(
        matches!(status.as_str(), "active" | "suspended"),
        "tenant {code} is {status}; only an active or suspended tenant can be exported"
    );
    // As stored: an encrypted value stays ciphertext (with its key id), never decrypted here.
    let configs: Vec<serde_json::Value> = sqlx::query_scalar(
        "SELECT to_jsonb(c) - 'id' - 'tenant_id' FROM fleet.tenant_configurations c
          WHERE tenant_id = $1 ORDER BY config_key",
    )
    .bind(tenant_id)
    .fetch_all(&mut *tx)
    .await
    .context("Failed to read the tenant's configs")?;

    let data = if database == CONTROL && own_database.is_none() {
        dump_schema(&mut tx, control_url, code, &schema, dir).await?
    } else {
        let url = databases
            .tenant_url(&database, own_database.as_deref())
            .map_err(|e| anyhow::anyhow!("tenant {code}: {e}"))?;
        let mut tcon = PgConnection::connect(url.expose_secret())
            .await
            .with_context(|| format!("Failed to connect to database {database}"))?;
        let mut ttx = snapshot(&mut tcon).await?;
        let data = dump_schema(&mut ttx, &url, code, &schema, dir).await?;
        ttx.commit().await?;
        data
    };
    let mut files = data.files;
    files.push(bundle::write_json(dir, bundle::CONFIGS, &configs).await?);
    files.push(bundle::write_json(dir, bundle::TENANT, &row).await?);
    tx.commit().await?;

    let manifest = Manifest {
        format: bundle::FORMAT.into(),
        format_version: bundle::FORMAT_VERSION,
        code: code.as_str().into(),
        schema,
        schema_version: version,
        org_code,
        exported_at: chrono::Utc::now(),
        server_version: data.server_version,
        files,
        tables: data.tables,
    };
    bundle::write_json(dir, bundle::MANIFEST, &manifest).await?;
    Ok(manifest)
}

/// The registry row of the exported tenant: as JSON (for `tenant.json`) and the fields used here.
struct Registered {
    row: serde_json::Value,
    tenant_id: uuid::Uuid,
    schema_name: String,
    schema_version: i64,
    org_code: Option<String>,
    status: String,
    database: String,
    own_database: Option<String>,
}
fleet_shared::from_row!(Registered {
    row,
    tenant_id,
    schema_name,
    schema_version,
    org_code,
    status,
    database,
    own_database
});

/// A `REPEATABLE READ READ ONLY` transaction: one snapshot for everything read in it.
async fn snapshot(con: &mut PgConnection) -> anyhow::Result<sqlx::Transaction<'_, sqlx::Postgres>> {
    let mut tx = con.begin().await?;
    sqlx::Executor::execute(
        &mut *tx,
        "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY",
    )
    .await?;
    Ok(tx)
}

/// What the tenant's database contributes to a bundle.
struct Dumped {
    files: Vec<FileEntry>,
    tables: Vec<TableEntry>,
    server_version: String,
}

/// The schema's DDL (`pg_dump` on `url`, reading this transaction's snapshot), every table's
/// rows, the ledger and the sequences, all from `con`'s snapshot.
async fn dump_schema(
    con: &mut PgConnection,
    url: &SecretUrl,
    code: &Code,
    schema: &str,
    dir: &Path,
) -> anyhow::Result<Dumped> {
    anyhow::ensure!(
        schema == code.schema_name() && catalog::schema_exists(&mut *con, schema).await?,
        "tenant {code}'s schema {schema} does not exist"
    );
    let server_version: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(&mut *con)
        .await?;
    let snapshot: String = sqlx::query_scalar("SELECT pg_export_snapshot()")
        .fetch_one(&mut *con)
        .await?;

    let mut files: Vec<FileEntry> = Vec::new();
    for (section, name) in [
        ("pre-data", bundle::SCHEMA_PRE),
        ("post-data", bundle::SCHEMA_POST),
    ] {
        let sql = ddl::pg_dump(url, schema, section, &snapshot).await?;
        files.push(bundle::write_bytes(dir, name, sql.into_bytes()).await?);
    }

    let mut tables = Vec::new();
    let names = catalog::tables(&mut *con, schema).await?;
    for (i, table) in names.iter().enumerate() {
        let columns = catalog::columns(&mut *con, schema, table).await?;
        let file = bundle::data_file(i + 1);
        let (entry, rows) = copy_out(&mut *con, dir, &file, schema, table, &columns).await?;
        outln!("  {table}: {rows} rows");
        files.push(entry);
        tables.push(TableEntry {
            name: table.clone(),
            columns,
            rows,
            file,
        });
    }

    let ledger = LedgerRow::read(&mut *con, schema)
        .await
        .context("Failed to read the migration ledger")?;
    files.push(bundle::write_json(dir, bundle::LEDGER, &ledger).await?);

    let mut sequences = Vec::new();
    for seq in catalog::sequences(&mut *con, schema).await? {
        let (last_value, is_called): (i64, bool) = sqlx::query_as(&format!(
            "SELECT last_value, is_called FROM {}",
            qualified(schema, &seq)
        ))
        .fetch_one(&mut *con)
        .await
        .with_context(|| format!("Failed to read sequence {seq}"))?;
        sequences.push(SequenceRow {
            name: seq,
            last_value,
            is_called,
        });
    }
    files.push(bundle::write_json(dir, bundle::SEQUENCES, &sequences).await?);
    Ok(Dumped {
        files,
        tables,
        server_version,
    })
}

/// Streams one table's rows to `dir/file` as CSV with a header; returns the file's entry and the
/// number of rows.
async fn copy_out(
    con: &mut PgConnection,
    dir: &Path,
    file: &str,
    schema: &str,
    table: &str,
    columns: &[String],
) -> anyhow::Result<(FileEntry, u64)> {
    let rows: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {}",
        qualified(schema, table)
    ))
    .fetch_one(&mut *con)
    .await
    .with_context(|| format!("Failed to count {table}"))?;
    let cols: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
    let copy = format!(
        "COPY {} ({}) TO STDOUT WITH (FORMAT csv, HEADER true)",
        qualified(schema, table),
        cols.join(", ")
    );
    let path = dir.join(file);
    let f = tokio::fs::File::create(&path)
        .await
        .with_context(|| format!("cannot create {}", path.display()))?;
    let mut w = tokio::io::BufWriter::with_capacity(256 * 1024, f);
    let mut h = Sha256::new();
    let mut bytes = 0u64;
    let mut stream = con
        .copy_out_raw(&copy)
        .await
        .with_context(|| format!("Failed to start COPY of {table}"))?;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.with_context(|| format!("COPY of {table} failed"))?;
        h.update(&chunk);
        bytes += chunk.len() as u64;
        w.write_all(&chunk).await?;
    }
    drop(stream);
    w.flush().await?;
    w.into_inner().sync_all().await?;
    Ok((
        FileEntry {
            path: file.into(),
            bytes,
            sha256: bundle::hex(&h.finalize()),
        },
        rows as u64,
    ))
}
