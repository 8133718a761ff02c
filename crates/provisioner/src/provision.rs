//! `tenant.created`: one transaction per tenant, all or nothing.
//!
//! Under `pg_advisory_xact_lock` keyed by the code (so two deliveries of the same tenant, or two
//! replicas, never interleave), the transaction registers the tenant (`provisioning`), creates
//! `tenant_<code>`, applies the tenant migrations with their ledger, upserts the plan's configs
//! and marks the tenant `active`. Postgres DDL is transactional, so a migration that fails leaves
//! no schema, no row and no config behind. The migrations go through the one apply path every
//! caller shares ([`fleet_shared::migrate::migrate_to`]): for a schema this transaction creates
//! there is no ledger to read, so the whole set is one batch, and a failing file is named.
//!
//! Idempotence comes from the registry itself, not from message ids: a delivery that finds an
//! `active` tenant with the same `tenant_id` and code changes nothing and reports it, so the
//! caller re-announces it (deduplicated by its message id). The same code with another
//! `tenant_id`, or the same `tenant_id` with another code, is a conflict and touches nothing.

use std::collections::BTreeMap;

use fleet_shared::events::TenantCreated;
use fleet_shared::migrate::{self, Migration, Start};
use serde_json::Value;
use sqlx::{PgConnection, Postgres, Transaction};
use uuid::Uuid;

use crate::error::ProvisionError;
use crate::lifecycle::Cause;
use crate::placement::Placement;
use fleet_shared::databases::{Isolation, CONTROL};

/// Where a tenant's schema goes: the `[databases.<name>]`, and its own database there if any.
#[derive(Debug, Clone, Copy)]
struct Home<'a> {
    database: &'a str,
    own: Option<&'a str>,
}

/// The registry row of a tenant as the provisioner reads it.
#[derive(Debug, Clone)]
pub struct TenantRow {
    pub tenant_id: Uuid,
    pub code: String,
    pub plan: String,
    pub status: String,
    pub schema_name: String,
    pub schema_version: i64,
    /// The database holding the schema (`control`: `DATABASE_URL`).
    pub database: String,
    /// The tenant's own database on `database`'s server (`isolation = "database"`), if any.
    pub own_database: Option<String>,
}
fleet_shared::from_row!(TenantRow {
    tenant_id,
    code,
    plan,
    status,
    schema_name,
    schema_version,
    database,
    own_database
});

/// The columns of [`TenantRow`], for `SELECT` and `RETURNING`.
pub const TENANT_ROW: &str =
    "tenant_id, code, plan, status, schema_name, schema_version, database, own_database";

/// What a `tenant.created` delivery did.
#[derive(Debug, Clone)]
pub struct Provisioned {
    pub tenant: TenantRow,
    /// Versions this delivery applied (empty when the tenant was already active).
    pub applied: Vec<i64>,
    /// False when the tenant was already active (a duplicate delivery).
    pub created: bool,
    /// True when the schema was a claimed warm-pool schema (see `pool.rs`).
    pub from_pool: bool,
}

/// Provisions `req` with `configs` (its plan's defaults merged with its overrides).
pub async fn provision(
    placement: &Placement,
    migrations: &[Migration],
    req: &TenantCreated,
    configs: &BTreeMap<String, Value>,
    cause: &Cause,
) -> Result<Provisioned, ProvisionError> {
    let pg = placement.pools.control();
    let code = req.code.as_str();
    let schema = req.code.schema_name();
    let mut tx = pg
        .begin()
        .await
        .map_err(ProvisionError::db("begin a transaction"))?;
    crate::tenant_lock::lock_tenant(&mut tx, code).await?;

    let existing: Vec<TenantRow> = sqlx::query_as(&format!(
        "SELECT {TENANT_ROW}
           FROM fleet.tenants WHERE (code = $1 AND status <> 'deleted') OR tenant_id = $2
            FOR UPDATE"
    ))
    .bind(code)
    .bind(req.tenant_id)
    .fetch_all(&mut *tx)
    .await
    .map_err(ProvisionError::db("read the tenant registry"))?;

    let mut resume = false;
    for row in &existing {
        if row.code == code && row.tenant_id != req.tenant_id {
            return Err(ProvisionError::CodeTaken {
                code: code.into(),
                existing: row.tenant_id,
                requested: req.tenant_id,
            });
        }
        if row.tenant_id == req.tenant_id && row.code != code {
            return Err(ProvisionError::IdTaken {
                tenant_id: req.tenant_id,
                existing: row.code.clone(),
                requested: code.into(),
            });
        }
        match row.status.as_str() {
            "active" => {
                // A redelivery, or a second copy under another message id: nothing to do.
                tx.rollback()
                    .await
                    .map_err(ProvisionError::db("end a read-only transaction"))?;
                return Ok(Provisioned {
                    tenant: row.clone(),
                    applied: Vec::new(),
                    created: false,
                    from_pool: false,
                });
            }
            "deleted" => {
                return Err(ProvisionError::WrongStatus {
                    code: code.into(),
                    status: row.status.clone(),
                })
            }
            // `provisioning` or `failed` left by an operator or an older version: finish it.
            _ => resume = true,
        }
    }

    // A tenant being provisioned keeps the database it was registered with (and its own
    // database, if it has one); a new one is placed, and gets a database of its own on a home
    // with `isolation = "database"`.
    let (database, own) = match existing.iter().find(|r| r.tenant_id == req.tenant_id) {
        Some(row) => (row.database.clone(), row.own_database.clone()),
        None => {
            let database = placement
                .choose(&mut tx, req.database.as_deref(), &req.plan)
                .await?;
            let own = placement
                .pools
                .databases()
                .get(&database)
                .is_ok_and(|d| d.isolation == Isolation::Database)
                .then(|| schema.clone());
            (database, own)
        }
    };
    if database != CONTROL || own.is_some() {
        let home = Home {
            database: &database,
            own: own.as_deref(),
        };
        return provision_elsewhere(placement, tx, migrations, req, configs, cause, resume, home)
            .await;
    }

    let latest = migrate::latest_version(migrations);
    let version;
    let applied;
    if resume {
        provisioning_again(&mut tx, req).await?;
        // The schema may exist, with part of a ledger: the ledger is read, checked and completed.
        let report =
            migrate::migrate_to(&mut tx, &schema, migrations, latest, Start::Existing).await?;
        (version, applied) = (report.version, report.applied);
    } else {
        sqlx::query(
            "INSERT INTO fleet.tenants (tenant_id, code, name, plan, org_code, status, schema_name)
             VALUES ($1, $2, $3, $4, $5, 'provisioning', $6)",
        )
        .bind(req.tenant_id)
        .bind(code)
        .bind(req.name.trim())
        .bind(&req.plan)
        .bind(req.org_code.as_ref().map(|c| c.as_str()))
        .bind(&schema)
        .execute(&mut *tx)
        .await
        .map_err(ProvisionError::db("insert the tenant row"))?;
        // Warm pool: a pre-migrated schema renamed to ours, in this transaction; else cold.
        if let Some(version) = crate::pool::claim(&mut tx, &schema, migrations).await? {
            let tenant = activate(&mut tx, req, version, configs, cause).await?;
            tx.commit()
                .await
                .map_err(ProvisionError::db("commit the provisioning transaction"))?;
            return Ok(Provisioned {
                tenant,
                applied: Vec::new(),
                created: true,
                from_pool: true,
            });
        }
        // CREATE SCHEMA without IF NOT EXISTS (Start::Fresh): a schema nobody registered may hold
        // someone's data, and running our migrations into it would mix the two. `schema` is
        // tenant_ + a validated code ([a-z0-9_]), so it is a safe identifier.
        let report =
            match migrate::migrate_to(&mut tx, &schema, migrations, latest, Start::Fresh).await {
                Err(e) if e.sqlstate().as_deref() == Some("42P06") => {
                    return Err(ProvisionError::OrphanSchema(schema))
                }
                other => other?,
            };
        (version, applied) = (report.version, report.applied);
    }

    let tenant = activate(&mut tx, req, version, configs, cause).await?;
    tx.commit()
        .await
        .map_err(ProvisionError::db("commit the provisioning transaction"))?;
    Ok(Provisioned {
        tenant,
        applied,
        created: true,
        from_pool: false,
    })
}

/// Upserts every config and marks the tenant active, in one statement (one round trip whatever
/// the plan's size). A key among the event's `config_overrides` is recorded with source
/// `override`, every other one with `plan:<plan>` (see `lifecycle/update.rs` for why). The
/// creation's audit row (`fleet.tenant_events`, event `tenant.created`) is written by the same
/// statement, so it commits with the tenant.
async fn activate(
    con: &mut PgConnection,
    req: &TenantCreated,
    version: i64,
    configs: &BTreeMap<String, Value>,
    cause: &Cause,
) -> Result<TenantRow, ProvisionError> {
    let overrides: Vec<&str> = req
        .config_overrides
        .iter()
        .flat_map(|o| o.keys().map(String::as_str))
        .collect();
    sqlx::query_as(
        "WITH configs AS (
             INSERT INTO fleet.tenant_configurations (tenant_id, config_key, config_value, source)
             SELECT $1, key, value,
                    CASE WHEN key = ANY($4) THEN 'override' ELSE 'plan:' || $5 END
               FROM jsonb_each($3::jsonb)
             ON CONFLICT (tenant_id, config_key)
             DO UPDATE SET config_value = EXCLUDED.config_value, source = EXCLUDED.source,
                           is_encrypted = false, updated_at = now()
         ), audit AS (
             INSERT INTO fleet.tenant_events (tenant_id, code, org_code, event, event_id, actor, status, new)
             SELECT $1, code, org_code, 'tenant.created', $6, $7, 'active',
                    jsonb_build_object('name', name, 'plan', plan, 'org_code', org_code,
                                       'schema', schema_name, 'schema_version', $2::bigint,
                                       'overrides', $4::text[])
               FROM fleet.tenants WHERE tenant_id = $1
         )
         UPDATE fleet.tenants
            SET status = 'active', schema_version = $2, provisioned_at = now(), updated_at = now()
          WHERE tenant_id = $1
         RETURNING tenant_id, code, plan, status, schema_name, schema_version, database, own_database",
    )
    .bind(req.tenant_id)
    .bind(version)
    .bind(sqlx::types::Json(configs))
    .bind(&overrides)
    .bind(&req.plan)
    .bind(&cause.event_id)
    .bind(&cause.actor)
    .fetch_one(&mut *con)
    .await
    .map_err(ProvisionError::db(
        "write the configurations and activate the tenant",
    ))
}

/// Provisioning on a database other than the control plane's (or in a database of the tenant's
/// own, see [`crate::own_db`]): the registry and the schema are on two servers, so it is three
/// transactions, each redone or skipped on redelivery:
///
/// 1. control plane: the tenant row, `provisioning`, with its `database` (committed first, so a
///    schema on the tenant database always has a registry row that names it);
/// 2. tenant database: the schema and its migrations with their ledger, under the same per-tenant
///    advisory lock (all or nothing, as on one server);
/// 3. control plane: configs, audit row, `active`.
///
/// A crash after 1 leaves a `provisioning` row: the redelivery finds it, keeps its database and
/// completes the schema from its ledger (`Start::Existing`). A crash after 2 finds the ledger
/// complete and only activates. A schema that exists on the tenant database before this tenant
/// was registered is somebody else's: the row from step 1 is removed again and the event is
/// refused, as on the control plane.
#[allow(clippy::too_many_arguments)]
async fn provision_elsewhere(
    placement: &Placement,
    mut tx: Transaction<'static, Postgres>,
    migrations: &[Migration],
    req: &TenantCreated,
    configs: &BTreeMap<String, Value>,
    cause: &Cause,
    resume: bool,
    home: Home<'_>,
) -> Result<Provisioned, ProvisionError> {
    let database = home.database;
    let code = req.code.as_str();
    let schema = req.code.schema_name();
    if resume {
        provisioning_again(&mut tx, req).await?;
    } else {
        sqlx::query(
            "INSERT INTO fleet.tenants (tenant_id, code, name, plan, org_code, status, schema_name, database, own_database)
             VALUES ($1, $2, $3, $4, $5, 'provisioning', $6, $7, $8)",
        )
        .bind(req.tenant_id)
        .bind(code)
        .bind(req.name.trim())
        .bind(&req.plan)
        .bind(req.org_code.as_ref().map(|c| c.as_str()))
        .bind(&schema)
        .bind(database)
        .bind(home.own)
        .execute(&mut *tx)
        .await
        .map_err(ProvisionError::db("insert the tenant row"))?;
    }
    tx.commit()
        .await
        .map_err(ProvisionError::db("commit the tenant registration"))?;

    let report = match home.own {
        Some(own) => prepare_own(placement, migrations, req, database, own).await?,
        None => prepare_schema(placement, migrations, req, resume, database).await?,
    };
    finish_elsewhere(placement, req, configs, cause, report).await
}

/// Step 2 with a database of its own (see [`crate::own_db`]), under the tenant's lock on the
/// control plane (held by a transaction of its own for the whole step). A database that is not
/// ours is refused: the registration of step 1 and our staging database are removed again.
async fn prepare_own(
    placement: &Placement,
    migrations: &[Migration],
    req: &TenantCreated,
    database: &str,
    own: &str,
) -> Result<migrate::ApplyReport, ProvisionError> {
    let pools = &placement.pools;
    let mut lock = pools
        .control()
        .begin()
        .await
        .map_err(ProvisionError::db("begin a transaction"))?;
    crate::tenant_lock::lock_tenant(&mut lock, req.code.as_str()).await?;
    let schema = req.code.schema_name();
    let res = crate::own_db::prepare(
        pools,
        database,
        own,
        &schema,
        req.tenant_id,
        req.code.as_str(),
        migrations,
    )
    .await;
    if let Err(ProvisionError::OrphanDatabase(_)) = &res {
        crate::own_db::drop_staging(pools, database, req.tenant_id).await?;
        sqlx::query("DELETE FROM fleet.tenants WHERE tenant_id = $1 AND status = 'provisioning'")
            .bind(req.tenant_id)
            .execute(&mut *lock)
            .await
            .map_err(ProvisionError::db("remove the refused registration"))?;
        lock.commit()
            .await
            .map_err(ProvisionError::db("remove the refused registration"))?;
    }
    res
}

/// Step 2 in a shared database: the schema, its migrations and ledger in one transaction there.
async fn prepare_schema(
    placement: &Placement,
    migrations: &[Migration],
    req: &TenantCreated,
    resume: bool,
    database: &str,
) -> Result<migrate::ApplyReport, ProvisionError> {
    let code = req.code.as_str();
    let schema = req.code.schema_name();

    let target = placement
        .pools
        .get(database)
        .map_err(ProvisionError::bad_input)?;
    let latest = migrate::latest_version(migrations);
    let mut ttx = target.begin().await.map_err(ProvisionError::db(
        "begin a transaction on the tenant database",
    ))?;
    crate::tenant_lock::lock_tenant(&mut ttx, code).await?;
    let start = if resume {
        Start::Existing
    } else {
        Start::Fresh
    };
    let report = match migrate::migrate_to(&mut ttx, &schema, migrations, latest, start).await {
        Err(e) if e.sqlstate().as_deref() == Some("42P06") => {
            drop(ttx);
            // Not ours: forget the registration of step 1 so no later delivery adopts it.
            sqlx::query(
                "DELETE FROM fleet.tenants WHERE tenant_id = $1 AND status = 'provisioning'",
            )
            .bind(req.tenant_id)
            .execute(placement.pools.control())
            .await
            .map_err(ProvisionError::db("remove the refused registration"))?;
            return Err(ProvisionError::OrphanSchema(format!(
                "{schema} (database {database})"
            )));
        }
        other => other?,
    };
    ttx.commit().await.map_err(ProvisionError::db(
        "commit the schema on the tenant database",
    ))?;
    Ok(report)
}

/// Step 3: configs, audit row and `active` on the control plane, unless another delivery (or an
/// operator) changed the tenant meanwhile.
async fn finish_elsewhere(
    placement: &Placement,
    req: &TenantCreated,
    configs: &BTreeMap<String, Value>,
    cause: &Cause,
    report: migrate::ApplyReport,
) -> Result<Provisioned, ProvisionError> {
    let code = req.code.as_str();
    let mut tx = placement
        .pools
        .control()
        .begin()
        .await
        .map_err(ProvisionError::db("begin a transaction"))?;
    crate::tenant_lock::lock_tenant(&mut tx, code).await?;
    let status: Option<String> =
        sqlx::query_scalar("SELECT status FROM fleet.tenants WHERE tenant_id = $1 FOR UPDATE")
            .bind(req.tenant_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(ProvisionError::db("read the tenant registry"))?;
    if status.as_deref() != Some("provisioning") {
        // Another delivery finished (or an operator changed) the tenant meanwhile.
        let row: TenantRow = sqlx::query_as(&format!(
            "SELECT {TENANT_ROW} FROM fleet.tenants WHERE tenant_id = $1"
        ))
        .bind(req.tenant_id)
        .fetch_one(&mut *tx)
        .await
        .map_err(ProvisionError::db("read the tenant registry"))?;
        return Ok(Provisioned {
            tenant: row,
            applied: Vec::new(),
            created: false,
            from_pool: false,
        });
    }
    let tenant = activate(&mut tx, req, report.version, configs, cause).await?;
    tx.commit()
        .await
        .map_err(ProvisionError::db("commit the provisioning transaction"))?;
    Ok(Provisioned {
        tenant,
        applied: report.applied,
        created: true,
        from_pool: false,
    })
}

/// A redelivered `tenant.created` for a tenant whose earlier attempt stopped half-way: the row
/// takes the event's name, plan and org code and is `provisioning` again.
async fn provisioning_again(
    con: &mut PgConnection,
    req: &TenantCreated,
) -> Result<(), ProvisionError> {
    sqlx::query(
        "UPDATE fleet.tenants SET name = $2, plan = $3, org_code = $4,
                status = 'provisioning', updated_at = now()
          WHERE tenant_id = $1",
    )
    .bind(req.tenant_id)
    .bind(req.name.trim())
    .bind(&req.plan)
    .bind(req.org_code.as_ref().map(|c| c.as_str()))
    .execute(&mut *con)
    .await
    .map_err(ProvisionError::db("update the tenant row"))?;
    Ok(())
}
