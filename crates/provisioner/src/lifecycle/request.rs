//! A lifecycle request as an operator tool builds it before publishing: `fleetctl tenants …` and
//! the console's tenant actions both come through here, so they check the same things, refuse
//! with the same one-line reason, and publish the same event.
//!
//! The checks are what can be known without deciding anything: the code, the key, the plan
//! (against the [`Plans`] the provisioner loads from the same config) and whether a live tenant
//! with the code is in a status the change allows. A refusal here publishes nothing. The
//! provisioner still checks everything again under the tenant's lock, so a request that passes
//! here can still be refused there (dead-lettered with its reason).

use async_nats::jetstream;
use async_nats::jetstream::publish::PublishAck;
use async_nats::HeaderMap;
use fleet_shared::events::{
    DeleteMode, TenantConfigSet, TenantConfigUnset, TenantDeleted, TenantResumed, TenantSuspended,
    TenantUpdated, FLEET_ACTOR, TENANT_CONFIG_SET, TENANT_CONFIG_UNSET, TENANT_DELETED,
    TENANT_RESUMED, TENANT_SUSPENDED, TENANT_UPDATED,
};
use fleet_shared::Code;
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::plans::Plans;

/// Why a request was not published. `Display` is the one line an operator sees.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// The input itself is wrong (a code, a key, a plan, nothing to change).
    #[error("{0}")]
    BadInput(String),
    #[error("{event}: no tenant with code {code} (deleted tenants cannot be changed)")]
    NoTenant { event: &'static str, code: Code },
    #[error("{event}: tenant {code} is {status}; only a tenant that is {allowed} can be {doing}")]
    WrongStatus {
        event: &'static str,
        code: Code,
        status: String,
        allowed: String,
        doing: &'static str,
    },
    #[error("Failed to read fleet.tenants")]
    Db(#[source] sqlx::Error),
}

/// An event ready to publish: its subject, the tenant it addresses, and its body.
#[derive(Debug, Clone)]
pub struct Request {
    pub subject: &'static str,
    pub code: Code,
    pub body: serde_json::Value,
}

impl Request {
    fn new<T: Serialize>(subject: &'static str, code: &Code, body: &T) -> Request {
        Request {
            subject,
            code: code.clone(),
            // The event types are plain data: serializing them cannot fail.
            body: serde_json::to_value(body).expect("a lifecycle event serializes"),
        }
    }
}

fn code_of(raw: &str) -> Result<Code, Refused> {
    Code::parse(raw).map_err(|e| Refused::BadInput(e.to_string()))
}

fn check_key(event: &'static str, key: &str) -> Result<(), Refused> {
    fleet_shared::names::check_config_key(key)
        .map_err(|e| Refused::BadInput(format!("{event}: {e}")))
}

/// Checks `code` and finds its live tenant's status, refusing unless it is in `allowed`.
async fn live(
    pg: &PgPool,
    event: &'static str,
    code: &str,
    allowed: &[&str],
    doing: &'static str,
) -> Result<Code, Refused> {
    let code = code_of(code)?;
    let status: Option<String> = sqlx::query_scalar(
        "SELECT status FROM fleet.tenants WHERE code = $1 AND status <> 'deleted'",
    )
    .bind(code.as_str())
    .fetch_optional(pg)
    .await
    .map_err(Refused::Db)?;
    match status {
        None => Err(Refused::NoTenant { event, code }),
        Some(status) if !allowed.contains(&status.as_str()) => Err(Refused::WrongStatus {
            event,
            code,
            status,
            allowed: allowed.join(" or "),
            doing,
        }),
        Some(_) => Ok(code),
    }
}

/// A config value as typed: JSON (`5000`, `true`, `{"a":1}`) or, if it does not parse as JSON
/// (or `as_string`), the text itself.
pub fn config_value(text: &str, as_string: bool) -> serde_json::Value {
    if as_string {
        return serde_json::Value::String(text.to_owned());
    }
    serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.to_owned()))
}

/// `tenant.updated`: any of name, org code and plan (a known one).
pub async fn update(
    pg: &PgPool,
    plans: &Plans,
    code: &str,
    name: Option<String>,
    org_code: Option<&str>,
    plan: Option<String>,
) -> Result<Request, Refused> {
    let code = live(
        pg,
        TENANT_UPDATED,
        code,
        &["active", "suspended"],
        "updated",
    )
    .await?;
    if let Some(p) = &plan {
        if plans.get(p).is_none() {
            return Err(Refused::BadInput(format!(
                "{TENANT_UPDATED}: unknown plan {} (known plans: {})",
                fleet_shared::errors::quoted(p),
                plans.names().collect::<Vec<_>>().join(", ")
            )));
        }
    }
    let body = TenantUpdated {
        code,
        name,
        org_code: org_code.map(code_of).transpose()?,
        plan,
    };
    body.validate().map_err(|e| Refused::BadInput(e.0))?;
    Ok(Request::new(TENANT_UPDATED, &body.code, &body))
}

/// `tenant.config.set`. With `encrypted` the provisioner stores the value encrypted; whoever
/// calls this must not show or log `value`.
pub async fn config_set(
    pg: &PgPool,
    code: &str,
    key: String,
    value: serde_json::Value,
    encrypted: bool,
) -> Result<Request, Refused> {
    check_key(TENANT_CONFIG_SET, &key)?;
    let code = live(
        pg,
        TENANT_CONFIG_SET,
        code,
        &["active", "suspended"],
        "configured",
    )
    .await?;
    let body = TenantConfigSet {
        code,
        key,
        value,
        encrypted,
    };
    Ok(Request::new(TENANT_CONFIG_SET, &body.code, &body))
}

/// `tenant.config.unset`: back to the plan's default, or gone if the plan has none.
pub async fn config_unset(pg: &PgPool, code: &str, key: String) -> Result<Request, Refused> {
    check_key(TENANT_CONFIG_UNSET, &key)?;
    let code = live(
        pg,
        TENANT_CONFIG_UNSET,
        code,
        &["active", "suspended"],
        "configured",
    )
    .await?;
    let body = TenantConfigUnset { code, key };
    Ok(Request::new(TENANT_CONFIG_UNSET, &body.code, &body))
}

/// `tenant.suspended`, of an active tenant.
pub async fn suspend(pg: &PgPool, code: &str, reason: Option<String>) -> Result<Request, Refused> {
    let code = live(pg, TENANT_SUSPENDED, code, &["active"], "suspended").await?;
    let body = TenantSuspended { code, reason };
    Ok(Request::new(TENANT_SUSPENDED, &body.code, &body))
}

/// `tenant.resumed`, of a suspended tenant.
pub async fn resume(pg: &PgPool, code: &str) -> Result<Request, Refused> {
    let code = live(pg, TENANT_RESUMED, code, &["suspended"], "resumed").await?;
    let body = TenantResumed { code };
    Ok(Request::new(TENANT_RESUMED, &body.code, &body))
}

/// `tenant.deleted`: the live tenant of `code`, or with `tenant_id` one tenant exactly (an
/// archived one, whose code may have been reused; the provisioner checks it).
pub async fn delete(
    pg: &PgPool,
    code: &str,
    mode: DeleteMode,
    tenant_id: Option<Uuid>,
) -> Result<Request, Refused> {
    let code = match tenant_id {
        Some(_) => code_of(code)?,
        None => {
            live(
                pg,
                TENANT_DELETED,
                code,
                &["provisioning", "active", "suspended", "failed"],
                "deleted",
            )
            .await?
        }
    };
    let body = TenantDeleted {
        code,
        mode,
        tenant_id,
    };
    Ok(Request::new(TENANT_DELETED, &body.code, &body))
}

/// Publishes `req` with message id `msg_id` and `Fleet-Actor: actor` (the audit trail's "who").
pub async fn publish(
    js: &jetstream::Context,
    req: &Request,
    msg_id: &str,
    actor: &str,
) -> anyhow::Result<PublishAck> {
    let mut headers = HeaderMap::new();
    headers.insert(FLEET_ACTOR, actor);
    let payload = serde_json::to_vec(&req.body)?;
    fleet_shared::publish::publish(js, req.subject, msg_id, Some(headers), payload.into()).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_config_value_is_json_if_it_parses_else_text() {
        assert_eq!(config_value("5000", false), json!(5000));
        assert_eq!(config_value(r#"{"a":1}"#, false), json!({"a": 1}));
        assert_eq!(config_value("5000", true), json!("5000"));
        assert_eq!(config_value("not json", false), json!("not json"));
        assert_eq!(config_value("", false), json!(""));
    }
}
