//! The lifecycle actions on `/tenants/<code>`: suspend, resume, change plan, set and unset a
//! config key, delete. Each is a `POST /tenants/<code>/<action>` with the session's CSRF token,
//! checked and built by `provisioner::lifecycle::request` (what `fleetctl tenants …` uses), so the
//! console refuses with the CLI's one-line reason and publishes the CLI's event; only the actor
//! (`console`) and the message id differ. A refusal publishes nothing.
//!
//! A config value is never shown back: not in the form (always empty), not in the message after
//! the action, not in a log line. A delete needs the tenant's code typed again.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Form};
use fleet_shared::events::DeleteMode;
use maud::{html, Markup};
use provisioner::lifecycle::request::{self, Refused};
use serde::Deserialize;
use uuid::Uuid;

use crate::auth::{check_action, done};
use crate::{layout, Page, Refusal, Shared, Visitor};

/// The statuses a tenant can be in for each action (the request module refuses the rest too;
/// this only decides which forms are shown).
fn changeable(status: &str) -> bool {
    matches!(status, "active" | "suspended")
}

fn deletable(status: &str) -> bool {
    matches!(status, "provisioning" | "active" | "suspended" | "failed")
}

/// The action forms for a tenant in `status` on `plan`.
pub fn forms(c: &Shared, v: &Visitor, base: &str, status: &str, plan: &str) -> Markup {
    html! {
        div.actions {
            @if status == "active" {
                form.inline method="post" action={ (base) "/suspend" } {
                    input type="hidden" name="csrf" value=(v.csrf);
                    input type="text" name="reason" maxlength="200" placeholder="reason (optional)";
                    button type="submit" id="suspend" disabled[!v.authed] { "Suspend" }
                }
            }
            @if status == "suspended" { (layout::button(v, &format!("{base}/resume"), "Resume", "resume")) }
        }
        @if changeable(status) {
            h2 { "Change" }
            form.action method="post" action={ (base) "/plan" } {
                input type="hidden" name="csrf" value=(v.csrf);
                label { "plan " select name="plan" id="plan" {
                    @for p in c.plans.names() { option value=(p) selected[p == plan] { (p) } }
                } }
                " " button type="submit" id="change-plan" disabled[!v.authed] { "Change plan" }
            }
            form.action method="post" action={ (base) "/config-set" } {
                input type="hidden" name="csrf" value=(v.csrf);
                input type="text" name="key" id="config-key" maxlength="255" placeholder="key" required;
                " "
                input type="text" name="value" id="config-value" placeholder="value (JSON or text)" autocomplete="off";
                " " label { input type="checkbox" name="string" value="on"; " as text" }
                " " label { input type="checkbox" name="encrypted" value="on" id="config-encrypted"; " encrypted" }
                " " button type="submit" id="config-set" disabled[!v.authed] { "Set" }
            }
            form.action method="post" action={ (base) "/config-unset" } {
                input type="hidden" name="csrf" value=(v.csrf);
                input type="text" name="key" maxlength="255" placeholder="key" required;
                " " button type="submit" id="config-unset" disabled[!v.authed] { "Unset (back to the plan's default)" }
            }
        }
        @if deletable(status) {
            form.action method="post" action={ (base) "/delete" } {
                input type="hidden" name="csrf" value=(v.csrf);
                select name="mode" {
                    option value="archive" selected { "archive (frees the code)" }
                    option value="purge" { "purge (drops the schema)" }
                }
                " " input type="text" name="confirm" id="delete-confirm" autocomplete="off" placeholder="type the code to confirm";
                " " button type="submit" id="delete" disabled[!v.authed] { "Delete" }
            }
        }
    }
}

#[derive(Deserialize)]
pub struct ActForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    plan: String,
    #[serde(default)]
    key: String,
    #[serde(default)]
    value: String,
    /// A checkbox: present (any value) when ticked.
    #[serde(default)]
    encrypted: Option<String>,
    #[serde(default)]
    string: Option<String>,
    #[serde(default)]
    mode: String,
    #[serde(default)]
    confirm: String,
}

fn refusal(e: Refused) -> Refusal {
    match e {
        Refused::BadInput(_) => Refusal::bad(format!("refused: {e}; nothing was changed")),
        Refused::NoTenant { .. } => Refusal::not_found(format!("refused: {e}")),
        Refused::WrongStatus { .. } => Refusal(
            StatusCode::CONFLICT,
            format!("refused: {e}; nothing was changed"),
        ),
        Refused::Db(_) => anyhow::Error::new(e).into(),
    }
}

pub async fn act(
    State(c): State<Shared>,
    Extension(v): Extension<Visitor>,
    Path((code, action)): Path<(String, String)>,
    Form(f): Form<ActForm>,
) -> Page {
    check_action(&v, &f.csrf)?;
    let req = match action.as_str() {
        "suspend" => {
            let reason = fleet_shared::errors::one_line(f.reason.trim());
            let reason = (!reason.is_empty()).then(|| reason.chars().take(200).collect());
            request::suspend(&c.pg, &code, reason).await
        }
        "resume" => request::resume(&c.pg, &code).await,
        "plan" => request::update(&c.pg, &c.plans, &code, None, None, Some(f.plan)).await,
        "config-set" => {
            // An empty field is far more often a slip than a wish for "" (which would overwrite,
            // perhaps an encrypted value, with nothing visible on the page afterwards).
            if f.value.is_empty() {
                return Err(Refusal::bad(
                    "refused: the value is empty (to remove an override, use unset); nothing was changed",
                ));
            }
            let value = request::config_value(&f.value, f.string.is_some());
            request::config_set(&c.pg, &code, f.key, value, f.encrypted.is_some()).await
        }
        "config-unset" => request::config_unset(&c.pg, &code, f.key).await,
        "delete" => {
            let mode = match f.mode.as_str() {
                "" | "archive" => DeleteMode::Archive,
                "purge" => DeleteMode::Purge,
                _ => return Err(Refusal::bad("refused: a delete is archive or purge")),
            };
            if f.confirm.trim() != code {
                return Err(Refusal::bad(
                    "refused: type the tenant's code to confirm the delete; nothing was changed",
                ));
            }
            request::delete(&c.pg, &code, mode, None).await
        }
        _ => {
            return Err(Refusal::not_found(format!(
                "no action {} on tenants",
                fleet_shared::errors::quoted(&action)
            )))
        }
    };
    let req = req.map_err(refusal)?;
    let id = Uuid::new_v4().to_string();
    request::publish(&c.js, &req, &id, "console").await?;
    // What was changed, never the value set.
    let what = match action.as_str() {
        "plan" | "config-set" | "config-unset" => {
            let detail = req.body.get("plan").or_else(|| req.body.get("key"));
            format!(" ({})", detail.and_then(|d| d.as_str()).unwrap_or_default())
        }
        _ => String::new(),
    };
    Ok(done(
        &c,
        &v,
        &format!("/tenants/{}", req.code),
        format!(
            "published {}{what} for {}; the provisioner applies it",
            req.subject, req.code
        ),
    ))
}
