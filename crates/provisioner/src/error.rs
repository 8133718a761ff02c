//! Why provisioning or migrating a tenant did not happen, and whether trying again can help.
//!
//! The split decides the message's fate (see [`fleet_shared::worker`]): a conflict, bad input or a
//! migration whose SQL fails is permanent and dead-lettered at once with a one-line reason; a
//! database that is unreachable, a deadlock or a lost race is transient and retried with backoff.

use fleet_shared::errors::{is_transient, sqlstate};
use fleet_shared::events::BadInput;
use fleet_shared::migrate::MigrationError;
use fleet_shared::HandleError;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error(transparent)]
    BadInput(#[from] BadInput),
    #[error("tenant.created: unknown plan {plan} (known plans: {known})")]
    /// `plan` is already quoted (and bounded) by [`fleet_shared::events::quoted`].
    UnknownPlan { plan: String, known: String },
    #[error("conflict: tenant code {code} already belongs to tenant_id {existing}, not {requested}; the existing tenant is left untouched")]
    CodeTaken {
        code: String,
        existing: Uuid,
        requested: Uuid,
    },
    #[error("conflict: tenant_id {tenant_id} is already registered with code {existing}, not {requested}; the existing tenant is left untouched")]
    IdTaken {
        tenant_id: Uuid,
        existing: String,
        requested: String,
    },
    #[error("tenant {code} is {status}; it cannot be provisioned or migrated")]
    WrongStatus { code: String, status: String },
    /// A move to another database is running (see [`crate::moves`]): wait for it.
    #[error("tenant {code} is {moving}")]
    Moving {
        code: String,
        moving: crate::moves::InFlight,
    },
    #[error("tenant.migrate: no tenant with code {0}")]
    UnknownTenant(String),
    #[error("schema {0} already exists but no tenant owns it; refusing to provision into it (drop or rename it first)")]
    OrphanSchema(String),
    #[error("database {0} already exists but no tenant owns it; refusing to provision into it (drop or rename it first)")]
    OrphanDatabase(String),
    #[error(transparent)]
    Migration(#[from] MigrationError),
    #[error("Failed to {what}: {source}")]
    Db {
        what: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("Failed to publish tenant.provisioned: {0:#}")]
    Announce(anyhow::Error),
}

impl ProvisionError {
    /// A closure for `map_err` on a database call.
    pub fn db(what: &'static str) -> impl FnOnce(sqlx::Error) -> ProvisionError {
        move |source| ProvisionError::Db { what, source }
    }

    /// Bad input whose one-line reason is `e` (an unknown database name, say).
    pub fn bad_input(e: impl std::fmt::Display) -> ProvisionError {
        ProvisionError::BadInput(BadInput::new(e.to_string()))
    }

    /// Whether a later attempt can succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            ProvisionError::Db { source, .. } => {
                // 23505: another delivery inserted the same tenant between our check and insert
                // (two codes racing for one tenant_id); the retry sees its row and decides.
                is_transient(source) || sqlstate(source).as_deref() == Some("23505")
            }
            ProvisionError::Migration(e) => e.is_transient(),
            ProvisionError::Announce(_) => true,
            ProvisionError::Moving { .. } => true,
            _ => false,
        }
    }
}

impl From<ProvisionError> for HandleError {
    fn from(e: ProvisionError) -> Self {
        if e.is_transient() {
            HandleError::Transient(anyhow::Error::new(e))
        } else {
            HandleError::invalid(e.to_string())
        }
    }
}
