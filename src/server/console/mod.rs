//! The web console under `/tokengate/console/`: sign-in, My Settings ("Reset My Security
//! Token", Change Password, recent logins) and, for admins, Setup pages for users, Compliance BCC
//! Email and the login history.
//!
//! Server-rendered with minijinja, which escapes every value in `.html` templates; one small
//! stylesheet; no JavaScript. Console sessions are separate from API sessions and live in a
//! `__Host-` cookie (`Secure; HttpOnly; SameSite=Strict`) with idle and absolute timeouts;
//! every form carries a CSRF token bound to the console session. Every action calls the same
//! `Users`/`Tokens`/`Admin` code as the admin API and the CLI.
//!
//! Every form answers 303 See Other to a page (Post/Redirect/Get), its outcome carried across
//! as the session's one-time flash, so a reload never repeats an action; a form that fails
//! validation is shown again (400) with what was typed. The one answer to a POST that shows a
//! secret, the recovery codes after a new authenticator is confirmed, stays a 200 page (a
//! redirect would have to keep the codes to show them again): a reload re-sends the code for an
//! enrolment already confirmed, which is refused, so no new codes are made.
//!
//! Here: the routing of every console request. `session`: console sessions, their cookie and
//! CSRF token, flash and half-finished sign-ins. `page`: the page frame, templates and
//! security headers; `form`: a form's errors as the pages show them. `signin`, `mfa` (the
//! second factor), `settings` (the user's own account), `users` (Setup → Users: list, new user,
//! each user's page, confirmations, bulk actions) and `setup` (the other admin pages) handle
//! their pages and forms; `chart` draws the login
//! history's charts that open Setup → Login History.

mod chart;
mod form;
mod mfa;
mod page;
mod session;
mod settings;
mod setup;
mod signin;
mod tokens;
mod users;

use std::collections::HashMap;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use minijinja::context;

use crate::mail::mask_email;
use crate::server::App;
use crate::server::refusal::Refusal;
use crate::server::{Client, ReqBody, caller};
use crate::wire::Body;

use page::{Page, redirect};
pub use session::Console;
use session::{clear_cookie, cookie_value};

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("template error: {0}")]
    Template(#[from] minijinja::Error),
}

pub use crate::proxy::sanitise::CONSOLE_COOKIE as COOKIE;
pub(super) const BASE: &str = super::target::CONSOLE_BASE;
pub(super) const PAGE_SIZE: usize = 20;
pub(super) const MAX_SESSIONS: usize = 10_000;

/// A console session and its user.
type SignedIn = (Arc<session::ConsoleSession>, Arc<crate::store::User>);

/// The console session behind the cookie `sid` and its user, while both allow the console
/// (the same rule as API sessions: the user has not moved on since sign-in and is inside the
/// login ranges); `Err` when the database cannot say.
fn signed_in(app: &App, sid: &str, peer: Client) -> Result<Option<SignedIn>, Refusal> {
    let Some(s) = app.console.lookup(sid).map_err(|e| Refusal::store(&e))? else {
        return Ok(None);
    };
    match caller::session_user(app, &s.user_id, s.epoch, Some(peer.ip)) {
        // An API-only user has no console, whatever session it still holds.
        Ok(u) => Ok((!u.api_only).then_some((s, u))),
        Err(Refusal::InvalidSession) => Ok(None),
        Err(refusal) => Err(refusal),
    }
}

/// The page for a request whose sign-in could not be checked (the database is unavailable):
/// 503, the cookie kept, so an outage signs nobody out.
fn cannot_tell(app: &App, refusal: &Refusal) -> Response<Body> {
    let sentence = match refusal {
        Refusal::Busy => {
            "The database cannot be reached; you are still signed in. Try again in a moment.".into()
        }
        other => other.sentence(),
    };
    Page::signed_out(app).message(refusal.status(), "Unavailable", &sentence, BASE)
}

/// A 403 page with `message`, for requests refused before the console saw them.
pub fn forbidden(app: &App, message: &str) -> Response<Body> {
    Page::signed_out(app).message(StatusCode::FORBIDDEN, "Forbidden", message, BASE)
}

/// The console's 404 page, for requests refused before the console saw them.
pub fn not_found(app: &App) -> Response<Body> {
    Page::signed_out(app).message(
        StatusCode::NOT_FOUND,
        "Not found",
        "There is no such page.",
        BASE,
    )
}

/// A posted form's fields, in the order sent (bounded by the body's size limit).
pub(super) struct Form {
    pairs: Vec<(String, String)>,
}

impl Form {
    /// The first field named `name`.
    pub(super) fn get(&self, name: &str) -> Option<&String> {
        self.pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    /// Every field named `name` (a group of checkboxes).
    pub(super) fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.pairs
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A posted form, or the refusal that says why it cannot be read (a slow body is 408, one
/// over its limit 413, as in every dialect: `refusal`).
pub(super) async fn form(app: &App, req: Request<ReqBody>) -> Result<Form, Refusal> {
    let (_, bytes, _held) =
        crate::server::read::body_of(app, req, crate::server::read::Kind::Form).await?;
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&bytes)
        .map_err(|_| Refusal::invalid("the form could not be read"))?;
    Ok(Form { pairs })
}

pub(super) fn query(req: &Request<ReqBody>) -> HashMap<String, String> {
    req.uri()
        .query()
        .and_then(|q| serde_urlencoded::from_str::<Vec<(String, String)>>(q).ok())
        .unwrap_or_default()
        .into_iter()
        .collect()
}

/// The Users list a page was opened from (its `list` parameter), to go back to.
fn list_of(q: &HashMap<String, String>) -> users::ListState {
    users::ListState::from_list(q.get("list").map(String::as_str))
}

pub async fn handle(app: Arc<App>, req: Request<ReqBody>, peer: Client) -> Response<Body> {
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let rest = path
        .strip_prefix(BASE)
        .unwrap_or("")
        .trim_start_matches('/')
        .to_owned();
    let method = req.method().clone();
    if rest == "style.css" {
        let mut r = crate::wire::respond(
            StatusCode::OK,
            "text/css; charset=utf-8",
            include_str!("../../../templates/console/style.css"),
        );
        r.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=3600"),
        );
        return r;
    }
    if rest == "signin" {
        return signin::signin(&app, req, peer, method).await;
    }
    // Everything else needs a console session whose user has not moved on since sign-in and
    // is used from inside the user's login ranges (the same rule as API sessions).
    let sid = cookie_value(&req);
    let signed_in = match sid.as_deref() {
        Some(sid) => signed_in(&app, sid, peer),
        None => Ok(None),
    };
    let signed_in = match signed_in {
        Ok(s) => s,
        // The database cannot say: the cookie is kept, and the page tried again later.
        Err(refusal) => return cannot_tell(&app, &refusal),
    };
    let Some((session, user)) = signed_in else {
        // Half signed in (password accepted, second factor owed): only the second factor's
        // pages and sign-out, under the same rule.
        let pending = match sid.as_deref().map(|sid| app.console.lookup_pending(sid)) {
            Some(Ok(p)) => p,
            Some(Err(e)) => return cannot_tell(&app, &Refusal::store(&e)),
            None => None,
        };
        if let Some(p) = pending {
            match caller::session_user(&app, &p.user_id, p.epoch, Some(peer.ip)) {
                Ok(u) => return mfa::half_signed_in(&app, req, peer, p, u, &rest).await,
                Err(Refusal::InvalidSession) => app.console.end_pending(&p),
                Err(refusal) => return cannot_tell(&app, &refusal),
            }
        }
        let expired = sid.is_some();
        return redirect(
            &format!("{BASE}/signin{}", if expired { "?expired=1" } else { "" }),
            expired.then(clear_cookie),
        );
    };
    // A session opened before the user owed a second factor (made admin since, under
    // `mfa = "admins"`): every sign-in that owes one ends enrolled, so this one did not.
    if mfa::owed(&app, &user) && !user.mfa.enrolled() {
        app.console.end(&session.csrf);
        return redirect(&format!("{BASE}/signin?expired=1"), Some(clear_cookie()));
    }
    let page = Page {
        app: &app,
        me: Some(&user),
        csrf: session.csrf.clone(),
        session: Some(session.clone()),
    };
    if rest.starts_with("setup/") && !user.admin {
        return page.message(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "Setup pages are for administrators.",
            &format!("{BASE}/settings"),
        );
    }
    if method == Method::POST {
        let f = match form(&app, req).await {
            Ok(f) => f,
            Err(refusal) => return page.refused(&refusal, BASE),
        };
        let sent = f.get("csrf").map(String::as_str).unwrap_or_default();
        if !session.csrf_matches(sent) {
            return page.message(StatusCode::FORBIDDEN, "Forbidden", "The form was not sent from this console (invalid or missing CSRF token). Reload the page and try again.", BASE);
        }
        return settings::post(&app, &page, &user, &rest, f, peer).await;
    }
    match rest.as_str() {
        "" => redirect(&format!("{BASE}/settings"), None),
        "settings" => settings::settings(&page, &user, form::FormErrors::none()).await,
        "settings/reset-token" => page.render(
            StatusCode::OK,
            "confirm_reset.html",
            "Reset My Security Token",
            "settings",
            context! { masked_email => mask_email(&user.email) },
        ),
        s if s.starts_with("settings/tokens/") => {
            tokens::confirm_page(&page, &user, s).unwrap_or_else(|| not_found(&app))
        }
        s if s.starts_with("setup/") => {
            let q = query(&req);
            match s {
                "setup/users" => {
                    let list = users::ListState::from_query(|k| q.get(k).cloned());
                    users::users_page(&page, &list).await
                }
                "setup/new-user" => {
                    let list = list_of(&q);
                    users::new_user_page(&page, &list, None, form::FormErrors::none())
                }
                "setup/compliance" => setup::compliance_page(&page, None, None),
                "setup/history" => setup::history_page(&page, &q).await,
                "setup/history.csv" => setup::history_csv(&app, &q).await,
                "setup/audit" => setup::audit_page(&page, &q),
                "setup/audit.csv" => setup::audit_csv(&app, &q),
                s if s.starts_with("setup/users/") => {
                    let name = crate::wire::decode_component(&s["setup/users/".len()..]);
                    users::user_page(&page, &name, &list_of(&q), None, form::FormErrors::none())
                        .await
                }
                _ => page.message(
                    StatusCode::NOT_FOUND,
                    "Not found",
                    "There is no such page.",
                    BASE,
                ),
            }
        }
        _ => page.message(
            StatusCode::NOT_FOUND,
            "Not found",
            "There is no such page.",
            BASE,
        ),
    }
}
