//! `fleetctl tenants import DIR [--code NEW] [--org-code NEW_ORG]`: a bundle restored as a new
//! tenant, all or nothing.
//!
//! Before anything is written, the manifest is checked and every file's size and SHA-256
//! compared with it; a mismatch refuses the bundle with one line. Then one transaction, under the
//! tenant's advisory lock (the provisioner's, so a concurrent `tenant.created` for the same code
//! waits and then finds it taken): the pre-data DDL (schema, tables, sequences) renamed for the
//! target schema, every table's rows by `COPY ... FROM STDIN` streamed from its file (and hashed
//! again on the way: a file changed after the check rolls everything back), the code columns
//! rewritten, sequence positions, the post-data DDL (indexes, constraints, triggers: built after
//! the load, as `pg_restore` does), the registry row and the configs. Any failure rolls back all
//! of it: no schema, no row, no config.
//!
//! What a clone (`--code NEW`) does with code columns in the data:
//! - `tenant_code`: every row whose `tenant_code` is the exported code gets the new code, in
//!   every table that has the column. Rows that already named another tenant are left as they
//!   were (the isolation check reports them, as it did for the source).
//! - `organization_code`: kept, because a clone belongs to the same organisation unless told
//!   otherwise; with `--org-code NEW_ORG` the registry row and every `organization_code` equal
//!   to the exported org code get the new one.
//!
//! Without `--code` the tenant keeps its code and its `tenant_id` (the second half of a move to
//! another server); with it, the clone gets a fresh `tenant_id`. Encrypted configs are copied as
//! stored: they decrypt wherever the same `FLEET_CONFIG_KEYS` are set.
//!
//! Where the tenant goes: `--database NAME` (a configured tenant home), else where a new tenant
//! of its plan would go (`[provisioner] plan_databases`, else the home with the fewest live
//! tenants relative to its capacity), never the bundle's own `database`, which names a database
//! of the fleet it came from. On another database the schema is restored there and the
//! registry row, naming it, on the control plane; the command prints where and why.

use std::path::Path;

use anyhow::Context as _;
use fleet_shared::databases::{Isolation, CONTROL};
use fleet_shared::migrate::exec_simple;
use fleet_shared::secret::ExposeSecret;
use fleet_shared::Code;
use provisioner::own_db;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::{Connection as _, PgConnection};
use tokio::io::AsyncReadExt as _;

use super::bundle::{self, LedgerRow, Manifest, SequenceRow};
use super::catalog::{self, qualified, quote_ident};
use super::ddl;

/// Where an import puts the tenant: `--database`, else the placement of a new tenant.
pub struct Target<'a> {
    pub placement: &'a provisioner::placement::Placement,
    /// `--database NAME` (a configured tenant home).
    pub named: Option<&'a str>,
}

pub struct Imported {
    pub code: Code,
    pub tenant_id: uuid::Uuid,
    pub tables: usize,
    pub rows: u64,
    pub configs: usize,
    pub schema_version: i64,
    /// The `[databases.<name>]` the tenant was placed on, and why.
    pub database: String,
    /// Its own database there (`isolation = "database"`), if any.
    pub own_database: Option<String>,
    pub placed_by: &'static str,
}

/// What the schema restore needs from the bundle.
struct Restore<'a> {
    dir: &'a Path,
    manifest: &'a Manifest,
    pre: &'a str,
    post: &'a str,
    ledger: &'a [LedgerRow],
    sequences: &'a [SequenceRow],
    schema: &'a str,
    /// `Some(exported code)` for a clone: `tenant_code` columns are rewritten from it.
    clone_from: Option<&'a Code>,
    code: &'a Code,
    new_org: Option<&'a Code>,
}

pub async fn import(
    target: Target<'_>,
    dir: &Path,
    new_code: Option<Code>,
    new_org: Option<Code>,
) -> anyhow::Result<Imported> {
    let manifest = Manifest::read(dir).await?;
    manifest.check(dir).await?;
    let source = Code::parse(&manifest.code)?;
    let clone = new_code.as_ref().is_some_and(|c| *c != source);
    let code = new_code.unwrap_or_else(|| source.clone());
    let schema = code.schema_name();

    let mut tenant: serde_json::Map<String, Value> =
        match bundle::read_json(dir, bundle::TENANT).await? {
            Value::Object(m) => m,
            _ => anyhow::bail!(
                "bundle {} refused: tenant.json is not an object",
                dir.display()
            ),
        };
    let configs: Vec<Value> = bundle::read_json(dir, bundle::CONFIGS).await?;
    let ledger: Vec<LedgerRow> = bundle::read_json(dir, bundle::LEDGER).await?;
    let sequences: Vec<SequenceRow> = bundle::read_json(dir, bundle::SEQUENCES).await?;
    let pre = tokio::fs::read_to_string(dir.join(bundle::SCHEMA_PRE)).await?;
    let post = tokio::fs::read_to_string(dir.join(bundle::SCHEMA_POST)).await?;

    let tenant_id = if clone {
        uuid::Uuid::new_v4()
    } else {
        tenant
            .get("tenant_id")
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok())
            .context("tenant.json has no tenant_id")?
    };
    let plan = tenant
        .get("plan")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let placement = target.placement;
    if let Some(n) = target.named {
        placement
            .check_home(n)
            .map_err(|e| anyhow::anyhow!("--database: {e}"))?;
    }

    let pools = &placement.pools;
    let control_url = &pools.databases().control().url;
    let mut con = PgConnection::connect(control_url.expose_secret())
        .await
        .context("Failed to connect to the database")?;
    let mut tx = con.begin().await?;
    provisioner::tenant_lock::lock_tenant(&mut tx, code.as_str()).await?;
    let taken: Option<String> = sqlx::query_scalar(
        "SELECT code FROM fleet.tenants WHERE (code = $1 AND status <> 'deleted') OR tenant_id = $2 LIMIT 1",
    )
    .bind(code.as_str())
    .bind(tenant_id)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(existing) = taken {
        if existing == code.as_str() {
            if let Some(done) =
                finish_rename(pools, &mut tx, &code, &manifest, configs.len()).await?
            {
                return Ok(done);
            }
            anyhow::bail!("tenant code {code} already exists; import with --code NEW to clone it");
        }
        anyhow::bail!(
            "tenant_id {tenant_id} already exists as tenant {existing}; import with --code NEW to clone it"
        );
    }
    let placed_by = placement.reason(target.named, &plan);
    let database = placement
        .choose(&mut tx, target.named, &plan)
        .await
        .map_err(|e| anyhow::anyhow!("cannot place the tenant: {e}"))?;

    let restore = Restore {
        dir,
        manifest: &manifest,
        pre: &pre,
        post: &post,
        ledger: &ledger,
        sequences: &sequences,
        schema: &schema,
        clone_from: clone.then_some(&source),
        code: &code,
        new_org: new_org.as_ref(),
    };
    // A home with `isolation = "database"`: the tenant gets a database of its own there, made
    // like the provisioner makes one: a staging database filled in one transaction with the
    // marker, registered, and renamed only once the registry has committed. A failure before
    // that commit drops the staging database again; a crash leaves it under its staging name,
    // which a re-run recognises by its marker (dropped when the registry does not know it,
    // renamed when it does).
    let own = pools
        .databases()
        .get(&database)
        .is_ok_and(|d| d.isolation == Isolation::Database)
        .then(|| schema.clone());
    if let Some(own) = &own {
        drop_leftovers(pools, &mut tx, &database, &code).await?;
        if own_db::exists_on(pools, &database, own).await? {
            // Ours when its marker names this very tenant, which the registry does not know
            // (checked above): what an import killed after an early rename left.
            let marked = own_db::marked_tenant(pools, &database, own).await?;
            anyhow::ensure!(
                marked.is_some_and(|(id, _)| id == tenant_id),
                "database {own} already exists on database server {database}; drop or rename it first"
            );
            own_db::drop_database(pools, &database, own).await?;
        }
    }
    // On another database the schema is restored there, in a transaction of its own under the
    // tenant's lock there, and committed just before the registry: a failure before that commit
    // leaves nothing anywhere; a failed registry commit drops the restored schema again.
    let mut tcon = None;
    if database != CONTROL && own.is_none() {
        let db = pools
            .databases()
            .get(&database)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        tcon = Some(
            PgConnection::connect(db.url.expose_secret())
                .await
                .with_context(|| format!("Failed to connect to database {database}"))?,
        );
    }
    let mut ttx = match tcon.as_mut() {
        Some(c) => Some(c.begin().await?),
        None => None,
    };
    let rows = match (ttx.as_mut(), &own) {
        (_, Some(own)) => {
            let made = async {
                let mut c = own_db::fresh_staging(pools, &database, tenant_id).await?;
                let mut t = c.begin().await?;
                provisioner::tenant_lock::lock_tenant(&mut t, code.as_str()).await?;
                own_db::write_marker(&mut t, tenant_id, code.as_str()).await?;
                let rows = restore_schema(&mut t, &restore).await?;
                t.commit().await?;
                c.close().await?;
                anyhow::Ok(rows)
            }
            .await;
            match made {
                Ok(rows) => rows,
                Err(e) => {
                    let _ = own_db::drop_staging(pools, &database, tenant_id).await;
                    return Err(
                        e.context(format!("in database {own} on database server {database}"))
                    );
                }
            }
        }
        (Some(ttx), None) => {
            provisioner::tenant_lock::lock_tenant(ttx, code.as_str()).await?;
            restore_schema(ttx, &restore)
                .await
                .with_context(|| format!("on database {database}"))?
        }
        (None, None) => restore_schema(&mut tx, &restore).await?,
    };

    tenant.insert("tenant_id".into(), Value::String(tenant_id.to_string()));
    tenant.insert("code".into(), Value::String(code.as_str().into()));
    tenant.insert("schema_name".into(), Value::String(schema.clone()));
    tenant.insert("database".into(), Value::String(database.clone()));
    tenant.insert(
        "own_database".into(),
        own.clone().map(Value::String).unwrap_or(Value::Null),
    );
    tenant.insert(
        "updated_at".into(),
        Value::String(chrono::Utc::now().to_rfc3339()),
    );
    if let Some(org) = &new_org {
        tenant.insert("org_code".into(), Value::String(org.as_str().into()));
    }
    if clone {
        let now = Value::String(chrono::Utc::now().to_rfc3339());
        tenant.insert("created_at".into(), now.clone());
        tenant.insert("provisioned_at".into(), now);
    }
    let configs: Vec<Value> = configs
        .into_iter()
        .map(|mut c| {
            if let Value::Object(m) = &mut c {
                m.remove("id");
                m.insert("tenant_id".into(), Value::String(tenant_id.to_string()));
            }
            c
        })
        .collect();
    let registered = async {
        insert_json(&mut tx, "tenants", &[Value::Object(tenant)]).await?;
        insert_json(&mut tx, "tenant_configurations", &configs).await?;
        record_event(&mut tx, tenant_id, &code, &source, dir).await
    }
    .await;
    if let Err(e) = registered {
        if own.is_some() {
            let _ = own_db::drop_staging(pools, &database, tenant_id).await;
        }
        return Err(e);
    }
    let remote = {
        let ttx = ttx;
        match ttx {
            Some(ttx) => {
                ttx.commit().await.with_context(|| {
                    format!("Failed to commit the schema on database {database}")
                })?;
                true
            }
            None => false,
        }
    };
    if let Err(e) = tx.commit().await {
        if own.is_some() {
            let staging = own_db::staging_name(tenant_id);
            let undo = own_db::drop_staging(pools, &database, tenant_id).await;
            return Err(anyhow::Error::from(e).context(match undo {
                Ok(()) => format!(
                    "Failed to commit the import (database {staging} on {database} was dropped again)"
                ),
                Err(_) => format!(
                    "Failed to commit the import; drop database {staging} on {database} by hand"
                ),
            }));
        }
        let Some(tcon) = tcon.as_mut().filter(|_| remote) else {
            return Err(anyhow::Error::from(e).context("Failed to commit the import"));
        };
        let undo = exec_simple(
            tcon,
            &format!("DROP SCHEMA IF EXISTS {} CASCADE", quote_ident(&schema)),
        )
        .await;
        return Err(anyhow::Error::from(e).context(match undo {
            Ok(()) => format!(
                "Failed to commit the import (the schema restored on {database} was dropped again)"
            ),
            Err(_) => format!(
                "Failed to commit the import; drop schema {schema} on database {database} by hand"
            ),
        }));
    }
    if let Some(own) = &own {
        own_db::adopt_staging(pools, &database, tenant_id, own)
            .await
            .with_context(|| {
                format!(
                    "the import is registered but its database is still named {} on {database}; run the import again to finish it",
                    own_db::staging_name(tenant_id)
                )
            })?;
    }
    Ok(Imported {
        code,
        tenant_id,
        tables: manifest.tables.len(),
        rows,
        configs: configs.len(),
        schema_version: manifest.schema_version,
        database,
        own_database: own,
        placed_by,
    })
}

/// Drops what an earlier import of `code` into a database of its own left on `server` when it
/// failed or was killed before its registry commit: a staging database whose marker names
/// `code` and a tenant the registry does not know. Any other staging database is left alone
/// (one being provisioned is registered; one of another code is not ours).
async fn drop_leftovers(
    pools: &fleet_shared::databases::DatabasePools,
    tx: &mut PgConnection,
    server: &str,
    code: &Code,
) -> anyhow::Result<()> {
    for name in own_db::staging_databases(pools, server).await? {
        let Some((id, marked)) = own_db::marked_tenant(pools, server, &name).await? else {
            continue;
        };
        if marked != code.as_str() {
            continue;
        }
        let known: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM fleet.tenants WHERE tenant_id = $1)")
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
        if !known {
            tracing::info!(database = %name, server, "dropping what an interrupted import left");
            own_db::drop_database(pools, server, &name).await?;
        }
    }
    Ok(())
}

/// A re-run of an import that was registered but killed before its database got its name:
/// the registry names `code`'s own database, which does not exist, and the staging database
/// of that tenant (marked as its) does. It is renamed now, and the import is done.
async fn finish_rename(
    pools: &fleet_shared::databases::DatabasePools,
    tx: &mut PgConnection,
    code: &Code,
    manifest: &Manifest,
    configs: usize,
) -> anyhow::Result<Option<Imported>> {
    let row: Option<(uuid::Uuid, String, Option<String>)> = sqlx::query_as(
        "SELECT tenant_id, database, own_database FROM fleet.tenants WHERE code = $1 AND status <> 'deleted'",
    )
    .bind(code.as_str())
    .fetch_optional(&mut *tx)
    .await?;
    let Some((tenant_id, database, Some(own))) = row else {
        return Ok(None);
    };
    if pools.databases().get(&database).is_err()
        || own_db::exists_on(pools, &database, &own).await?
    {
        return Ok(None);
    }
    let staging = own_db::staging_name(tenant_id);
    if !own_db::exists_on(pools, &database, &staging).await?
        || own_db::marked_tenant(pools, &database, &staging)
            .await?
            .map(|(id, _)| id)
            != Some(tenant_id)
    {
        return Ok(None);
    }
    own_db::adopt_staging(pools, &database, tenant_id, &own).await?;
    Ok(Some(Imported {
        code: code.clone(),
        tenant_id,
        tables: manifest.tables.len(),
        rows: manifest.tables.iter().map(|t| t.rows).sum(),
        configs,
        schema_version: manifest.schema_version,
        database,
        own_database: Some(own),
        placed_by: "an interrupted import finished",
    }))
}

/// The schema from the bundle, in `con`'s transaction: DDL, rows, code rewrites, sequences,
/// indexes and constraints, and the ledger checked against `ledger.json`. Returns the rows loaded.
async fn restore_schema(con: &mut PgConnection, r: &Restore<'_>) -> anyhow::Result<u64> {
    let (dir, manifest, schema) = (r.dir, r.manifest, r.schema);
    anyhow::ensure!(
        !catalog::schema_exists(&mut *con, schema).await?,
        "schema {schema} already exists but no live tenant owns it; drop or rename it first"
    );

    exec_simple(
        &mut *con,
        &ddl::rename_schema(r.pre, &manifest.schema, schema),
    )
    .await
    .context("the bundle's schema DDL failed")?;
    // pg_dump's preamble empties search_path for the session; nothing below relies on it.
    let mut rows = 0u64;
    for t in &manifest.tables {
        let have = catalog::columns(&mut *con, schema, &t.name).await?;
        anyhow::ensure!(
            t.columns.iter().all(|c| have.contains(c)),
            "bundle {} refused: table {} in the manifest does not match its DDL",
            dir.display(),
            t.name
        );
        let entry = manifest
            .file(&t.file)
            .context("table data file missing from the manifest")?;
        let n = copy_in(
            &mut *con,
            dir,
            &entry.path,
            &entry.sha256,
            schema,
            &t.name,
            &t.columns,
        )
        .await?;
        anyhow::ensure!(
            n == t.rows,
            "bundle {} refused: {} holds {n} rows, the manifest says {}",
            dir.display(),
            t.name,
            t.rows
        );
        rows += n;
    }

    if let Some(source) = r.clone_from {
        for table in catalog::tables_with_column(&mut *con, schema, "tenant_code").await? {
            sqlx::query(&format!(
                "UPDATE {} SET tenant_code = $1 WHERE tenant_code = $2",
                qualified(schema, &table)
            ))
            .bind(r.code.as_str())
            .bind(source.as_str())
            .execute(&mut *con)
            .await
            .with_context(|| format!("Failed to rewrite tenant_code in {table}"))?;
        }
    }
    if let (Some(new), Some(old)) = (r.new_org, &manifest.org_code) {
        if new.as_str() != old {
            for table in catalog::tables_with_column(&mut *con, schema, "organization_code").await?
            {
                sqlx::query(&format!(
                    "UPDATE {} SET organization_code = $1 WHERE organization_code = $2",
                    qualified(schema, &table)
                ))
                .bind(new.as_str())
                .bind(old)
                .execute(&mut *con)
                .await
                .with_context(|| format!("Failed to rewrite organization_code in {table}"))?;
            }
        }
    }

    for s in r.sequences {
        sqlx::query("SELECT setval($1::regclass, $2, $3)")
            .bind(qualified(schema, &s.name))
            .bind(s.last_value)
            .bind(s.is_called)
            .execute(&mut *con)
            .await
            .with_context(|| format!("Failed to set sequence {}", s.name))?;
    }
    exec_simple(
        &mut *con,
        &ddl::rename_schema(r.post, &manifest.schema, schema),
    )
    .await
    .context("the bundle's index and constraint DDL failed")?;

    let restored = LedgerRow::read(&mut *con, schema)
        .await
        .context("the bundle restored no migration ledger")?;
    anyhow::ensure!(
        restored == r.ledger,
        "bundle {} refused: the restored ledger differs from ledger.json",
        dir.display()
    );
    Ok(rows)
}

/// Streams a data file into its table, hashing it again; a file that changed since the
/// manifest check fails the import.
async fn copy_in(
    con: &mut PgConnection,
    dir: &Path,
    file: &str,
    sha256: &str,
    schema: &str,
    table: &str,
    columns: &[String],
) -> anyhow::Result<u64> {
    let cols: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
    let sql = format!(
        "COPY {} ({}) FROM STDIN WITH (FORMAT csv, HEADER true)",
        qualified(schema, table),
        cols.join(", ")
    );
    let mut f = tokio::fs::File::open(dir.join(file)).await?;
    let mut copy = con
        .copy_in_raw(&sql)
        .await
        .with_context(|| format!("Failed to start COPY into {table}"))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        if let Err(e) = copy.send(&buf[..n]).await {
            let _ = copy.abort("send failed").await;
            return Err(e).with_context(|| format!("COPY into {table} failed"));
        }
    }
    if bundle::hex(&h.finalize()) != sha256 {
        let _ = copy.abort("checksum mismatch").await;
        anyhow::bail!("bundle refused: {file} changed while it was being imported");
    }
    copy.finish()
        .await
        .with_context(|| format!("COPY into {table} failed"))
}

/// Inserts JSON rows into `fleet.<table>` by column name: only keys that are columns here are
/// written, and columns the bundle lacks take their defaults.
async fn insert_json(con: &mut PgConnection, table: &str, rows: &[Value]) -> anyhow::Result<()> {
    let columns = catalog::fleet_columns(con, table).await?;
    for row in rows {
        let Value::Object(m) = row else {
            anyhow::bail!("bundle refused: a {table} row is not a JSON object");
        };
        let cols: Vec<String> = columns
            .iter()
            .filter(|c| m.contains_key(c.as_str()))
            .map(|c| quote_ident(c))
            .collect();
        let target = qualified("fleet", table);
        sqlx::query(&format!(
            "INSERT INTO {target} ({cols}) SELECT {cols} FROM jsonb_populate_record(NULL::{target}, $1)",
            cols = cols.join(", ")
        ))
        .bind(row)
        .execute(&mut *con)
        .await
        .with_context(|| format!("Failed to write fleet.{table}"))?;
    }
    Ok(())
}

/// Adds the import to the lifecycle audit trail, where the control plane has one.
async fn record_event(
    con: &mut PgConnection,
    tenant_id: uuid::Uuid,
    code: &Code,
    source: &Code,
    dir: &Path,
) -> anyhow::Result<()> {
    let has_trail: bool =
        sqlx::query_scalar("SELECT to_regclass('fleet.tenant_events') IS NOT NULL")
            .fetch_one(&mut *con)
            .await?;
    if !has_trail {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO fleet.tenant_events (tenant_id, code, org_code, event, event_id, actor, status, old, new)
         SELECT tenant_id, code, org_code, 'tenant.imported', $2, 'fleetctl', status, '{}'::jsonb,
                jsonb_build_object('from_code', $3::text, 'bundle', $4::text)
           FROM fleet.tenants WHERE tenant_id = $1",
    )
    .bind(tenant_id)
    .bind(format!("import:{}", uuid::Uuid::new_v4()))
    .bind(source.as_str())
    .bind(dir.display().to_string())
    .execute(&mut *con)
    .await
    .context("Failed to record the import in fleet.tenant_events")?;
    let _ = code;
    Ok(())
}
