//! Why a lifecycle change did not happen, and whether trying again can help: refusals and bad
//! input are dead-lettered at once with their one-line reason (and are exit 1 in `fleetctl`);
//! an unreachable database, a lock timeout, a deadlock or a failed announcement are retried.

use fleet_shared::config_keys::SealError;
use fleet_shared::errors::{is_transient, sqlstate};
use fleet_shared::events::BadInput;
use fleet_shared::HandleError;

use crate::error::ProvisionError;

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error(transparent)]
    BadInput(#[from] BadInput),
    #[error("{event}: no tenant with code {code} (deleted tenants cannot be changed)")]
    UnknownTenant { event: String, code: String },
    /// A transition or change the tenant's state does not allow; the reason names both.
    #[error("{0}")]
    NotAllowed(String),
    #[error("{event}: unknown plan {plan:?} (known plans: {known})")]
    UnknownPlan {
        event: String,
        plan: String,
        known: String,
    },
    #[error("{event}: config {key}: {source}")]
    Seal {
        event: String,
        key: String,
        #[source]
        source: SealError,
    },
    #[error(transparent)]
    Provision(#[from] ProvisionError),
    #[error("Failed to {what}: {source}")]
    Db {
        what: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("Failed to announce the change: {0:#}")]
    Announce(anyhow::Error),
}

impl LifecycleError {
    pub fn db(what: &'static str) -> impl FnOnce(sqlx::Error) -> LifecycleError {
        move |source| LifecycleError::Db { what, source }
    }

    pub fn is_transient(&self) -> bool {
        match self {
            LifecycleError::Db { source, .. } => {
                // 23505: a concurrent delivery of the same message recorded it first; 42P06: an
                // archive name taken within the same second. A retry decides again.
                is_transient(source)
                    || matches!(sqlstate(source).as_deref(), Some("23505") | Some("42P06"))
            }
            LifecycleError::Provision(e) => e.is_transient(),
            LifecycleError::Announce(_) => true,
            _ => false,
        }
    }
}

impl From<LifecycleError> for HandleError {
    fn from(e: LifecycleError) -> Self {
        if e.is_transient() {
            HandleError::Transient(anyhow::Error::new(e))
        } else {
            HandleError::invalid(e.to_string())
        }
    }
}
