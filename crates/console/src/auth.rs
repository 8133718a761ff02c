//! Sessions, the console token and CSRF.
//!
//! Every visitor gets a session cookie (`fleet_console`, `HttpOnly`, `SameSite=Strict`, random
//! 128-bit id) on the first page, with a CSRF token of its own that every form carries. A `POST`
//! is accepted only when its form's `csrf` equals the session's (compared in constant time) and,
//! for actions, the session has logged in with `FLEET_CONSOLE_TOKEN` (also compared in constant
//! time). Logging in replaces the session id (no fixation). The token is never stored in the
//! cookie, rendered or logged. Sessions live in memory: at most [`MAX_SESSIONS`] of visitors
//! who have not logged in and [`MAX_LOGGED_IN`] logged in, the oldest of its kind going first, so
//! requests without a cookie can never push a logged-in operator out. Restarting the console
//! logs everyone out.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use fleet_shared::secret::ExposeSecret;
use rand::Rng;
use serde::Deserialize;

use crate::{Refusal, Shared};

pub const COOKIE: &str = "fleet_console";
pub const MAX_SESSIONS: usize = 10_000;
/// Logged-in sessions kept (only a login with the token makes one).
pub const MAX_LOGGED_IN: usize = 1_000;

#[derive(Clone)]
struct Session {
    csrf: String,
    authed: bool,
    flash: Option<String>,
}

#[derive(Default)]
pub struct Sessions {
    inner: Mutex<Store>,
}

/// Every session by id, and the ids of each kind oldest first.
#[derive(Default)]
struct Store {
    by_id: HashMap<String, Session>,
    visitors: VecDeque<String>,
    logged_in: VecDeque<String>,
}

fn random_hex() -> String {
    let v: u128 = rand::rng().random();
    format!("{v:032x}")
}

impl Sessions {
    fn create(&self, authed: bool) -> (String, Session) {
        let id = random_hex();
        let s = Session {
            csrf: random_hex(),
            authed,
            flash: None,
        };
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let g = &mut *g;
        let (queue, cap) = if authed {
            (&mut g.logged_in, MAX_LOGGED_IN)
        } else {
            (&mut g.visitors, MAX_SESSIONS)
        };
        if queue.len() >= cap {
            if let Some(old) = queue.pop_front() {
                g.by_id.remove(&old);
            }
        }
        queue.push_back(id.clone());
        g.by_id.insert(id.clone(), s.clone());
        (id, s)
    }

    fn get(&self, id: &str) -> Option<Session> {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.by_id.get(id).cloned()
    }

    fn remove(&self, id: &str) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if g.by_id.remove(id).is_some() {
            g.visitors.retain(|x| x != id);
            g.logged_in.retain(|x| x != id);
        }
    }

    fn take_flash(&self, id: &str) -> Option<String> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.by_id.get_mut(id).and_then(|s| s.flash.take())
    }

    pub fn set_flash(&self, id: &str, msg: String) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = g.by_id.get_mut(id) {
            s.flash = Some(msg);
        }
    }
}

/// Who is asking: their session, its CSRF token, whether it may act, and a message left by the
/// last action.
#[derive(Clone)]
pub struct Visitor {
    pub session: String,
    pub csrf: String,
    pub authed: bool,
    pub writable: bool,
    pub flash: Option<String>,
}

fn cookie_value(headers: &HeaderMap) -> Option<String> {
    for h in headers.get_all(header::COOKIE) {
        let Ok(s) = h.to_str() else { continue };
        for part in s.split(';') {
            if let Some(v) = part.trim().strip_prefix(&format!("{COOKIE}=")) {
                if v.len() == 32 && v.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Some(v.to_owned());
                }
            }
        }
    }
    None
}

fn set_cookie(id: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict"))
        .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Gives every request a [`Visitor`]; a request without a known session gets a new one.
pub async fn session_layer(State(c): State<Shared>, mut req: Request, next: Next) -> Response {
    let known = cookie_value(req.headers()).and_then(|id| c.sessions.get(&id).map(|s| (id, s)));
    let (id, s, new) = match known {
        Some((id, s)) => (id, s, false),
        None => {
            let (id, s) = c.sessions.create(false);
            (id, s, true)
        }
    };
    let flash = if req.method() == axum::http::Method::GET {
        c.sessions.take_flash(&id)
    } else {
        None
    };
    req.extensions_mut().insert(Visitor {
        session: id.clone(),
        csrf: s.csrf,
        authed: s.authed && c.writable(),
        writable: c.writable(),
        flash,
    });
    let mut res = next.run(req).await;
    if new {
        res.headers_mut()
            .append(header::SET_COOKIE, set_cookie(&id));
    }
    res
}

fn same(a: &str, b: &str) -> bool {
    use sha2::Digest as _;
    // Equal-length digests compared without an early exit.
    let (x, y) = (sha2::Sha256::digest(a), sha2::Sha256::digest(b));
    x.iter()
        .zip(y.iter())
        .fold(0u8, |acc, (p, q)| acc | (p ^ q))
        == 0
}

/// Refuses a form whose CSRF token is not the session's.
pub fn check_csrf(v: &Visitor, form_csrf: &str) -> Result<(), Refusal> {
    if form_csrf.is_empty() || !same(form_csrf, &v.csrf) {
        return Err(Refusal(
            StatusCode::FORBIDDEN,
            "refused: the form's CSRF token is missing or not this session's (reload the page and try again); nothing was changed".into(),
        ));
    }
    Ok(())
}

/// Refuses an action unless the console is writable, the session logged in and the CSRF token
/// is the session's.
pub fn check_action(v: &Visitor, form_csrf: &str) -> Result<(), Refusal> {
    if !v.writable {
        return Err(Refusal(
            StatusCode::FORBIDDEN,
            "refused: the console is read-only (FLEET_CONSOLE_TOKEN is not set); nothing was changed".into(),
        ));
    }
    check_csrf(v, form_csrf)?;
    if !v.authed {
        return Err(Refusal(
            StatusCode::FORBIDDEN,
            "refused: log in with the console token first; nothing was changed".into(),
        ));
    }
    Ok(())
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    token: String,
    /// The page the form was on.
    #[serde(default)]
    back: String,
}

pub async fn login(
    State(c): State<Shared>,
    Extension(v): Extension<Visitor>,
    Form(f): Form<LoginForm>,
) -> Result<Response, Refusal> {
    check_csrf(&v, &f.csrf)?;
    let Some(token) = &c.settings.console_token else {
        return Err(Refusal(
            StatusCode::FORBIDDEN,
            "refused: the console is read-only (FLEET_CONSOLE_TOKEN is not set)".into(),
        ));
    };
    if !same(f.token.trim(), token.expose_secret()) {
        tracing::warn!("console login with a wrong token");
        return Err(Refusal(
            StatusCode::FORBIDDEN,
            "refused: that is not the console token".into(),
        ));
    }
    c.sessions.remove(&v.session);
    let (id, _) = c.sessions.create(true);
    c.sessions
        .set_flash(&id, "logged in: actions are enabled".into());
    tracing::info!("console login");
    let mut res = Redirect::to(&safe_path(&f.back)).into_response();
    res.headers_mut()
        .append(header::SET_COOKIE, set_cookie(&id));
    Ok(res)
}

#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    pub csrf: String,
}

pub async fn logout(
    State(c): State<Shared>,
    Extension(v): Extension<Visitor>,
    Form(f): Form<CsrfForm>,
) -> Result<Response, Refusal> {
    check_csrf(&v, &f.csrf)?;
    c.sessions.remove(&v.session);
    Ok(Redirect::to("/").into_response())
}

/// `path` if it is a path on this site, else `/` (no open redirect).
pub fn safe_path(path: &str) -> String {
    let ok = path.starts_with('/')
        && !path.starts_with("//")
        && !path.contains('\\')
        && path.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        path.to_owned()
    } else {
        "/".to_owned()
    }
}

/// After an action: the message for the next page, and a redirect to `to`.
pub fn done(c: &Shared, v: &Visitor, to: &str, msg: String) -> Response {
    tracing::info!(action = %msg, "console action");
    c.sessions.set_flash(&v.session, msg);
    Redirect::to(to).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visitors_without_a_cookie_cannot_push_a_logged_in_session_out() {
        let sessions = Sessions::default();
        let (operator, _) = sessions.create(true);
        let (first_visitor, _) = sessions.create(false);
        for _ in 0..MAX_SESSIONS {
            sessions.create(false);
        }
        assert!(sessions.get(&operator).is_some_and(|s| s.authed));
        assert!(
            sessions.get(&first_visitor).is_none(),
            "the oldest visitor went"
        );
        for _ in 0..MAX_LOGGED_IN {
            sessions.create(true);
        }
        assert!(
            sessions.get(&operator).is_none(),
            "logins push out the oldest login"
        );
    }
}
