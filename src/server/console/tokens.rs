//! My Settings → Integration tokens: the user's named tokens, one per integration. Listed with
//! their last use (never a token); added, reset or revoked by the user — reset and revoke after
//! a confirmation page, as every destructive console action. Each action is the same
//! `Admin::perform` request as the self-service API's, with the user as the audit trail's
//! actor, so the rules (names, the per-user maximum, mail delivery) are decided in one place.
//! A new value is emailed, never shown.

use http::{Response, StatusCode};
use minijinja::context;
use serde::Serialize;

use super::form::FormErrors;
use super::page::Page;
use super::session::Flash;
use super::users::{When, when_ms};
use super::{BASE, Form};
use crate::admin::{AdminError, Answer, Request};
use crate::audit::{Actor, Channel};
use crate::mail::mask_email;
use crate::server::refusal::Refusal;
use crate::server::{App, Client};
use crate::store::User;
use crate::wire::Body;

/// One row of the table: what the user may know of a token (never a value).
#[derive(Serialize)]
pub(super) struct Row {
    name: String,
    /// "active", or "unconfirmed" while only a value whose delivery was cut short exists.
    state: String,
    created: When,
    last_used: Option<When>,
    last_client_ip: Option<String>,
    last_dialect: Option<String>,
}

/// The user's named tokens, in the order they were added.
pub(super) fn rows(user: &User, zone: &jiff::tz::TimeZone) -> Vec<Row> {
    crate::tokens::named::list(user)
        .into_iter()
        .map(|t| Row {
            name: t.name,
            state: t.state,
            created: when_ms(t.created_at * 1000, zone),
            last_used: t.last_used_at.map(|s| when_ms(s * 1000, zone)),
            last_client_ip: t.last_client_ip,
            last_dialect: t.last_dialect,
        })
        .collect()
}

/// `settings/tokens/{name}/{reset|revoke}`: the name and the action, when the path is one
/// (a name the rules allow; "default" is reserved, so the default token is not reachable
/// here — "Reset My Security Token" resets it).
fn parse(path: &str) -> Option<(String, &str)> {
    let (name, action) = path.strip_prefix("settings/tokens/")?.rsplit_once('/')?;
    let name = crate::wire::decode_component(name);
    (matches!(action, "reset" | "revoke") && crate::tokens::named::validate_name(&name).is_ok())
        .then_some((name, action))
}

/// GET of a reset or revoke: the confirmation page (the action needs a POST with
/// `confirm=yes`); `None` when the path is not a token's.
pub(super) fn confirm_page(page: &Page<'_>, user: &User, path: &str) -> Option<Response<Body>> {
    let (name, action) = parse(path)?;
    if !user.named_tokens.iter().any(|t| *t.name == *name) {
        return Some(page.done(
            &format!("{BASE}/settings"),
            Flash::error(format!("You hold no token named {name}.")),
        ));
    }
    let masked = mask_email(&user.email);
    let (title, label, consequence) = match action {
        "reset" => (
            format!("Reset the token {name}"),
            "Reset token",
            format!(
                "A new value of the token {name} is emailed to {masked}. The current value stops \
                 working at once and the sessions it opened end, so the integration that uses it \
                 logs in again only with the new value. Your other tokens keep working."
            ),
        ),
        _ => (
            format!("Revoke the token {name}"),
            "Revoke token",
            format!(
                "The token {name} stops working at once and the sessions it opened end; the \
                 integration that uses it can no longer log in. Your other tokens keep working."
            ),
        ),
    };
    Some(page.render(
        StatusCode::OK,
        "confirm_token.html",
        &title,
        "settings",
        context! {
            heading => title, label, consequence,
            post_to => format!("{BASE}/{path}"),
        },
    ))
}

/// A POST under `settings/tokens`: add (`settings/tokens`), or reset / revoke once confirmed.
/// `None` when the path is not one of these.
pub(super) async fn post(
    app: &App,
    page: &Page<'_>,
    me: &User,
    path: &str,
    f: &Form,
    peer: Client,
) -> Option<Response<Body>> {
    let get = |k: &str| f.get(k).map(String::as_str).unwrap_or_default();
    let actor = Actor::admin(&me.username, peer.ip, Channel::Console);
    let settings = format!("{BASE}/settings");
    if path == "settings/tokens" {
        let name = get("name").trim().to_owned();
        let req = Request::TokenAdd {
            username: me.username.clone(),
            name: name.clone(),
        };
        return Some(match app.admin.perform(&actor, req).await {
            Ok(Answer::Rotated { masked_email, .. }) => page.done(
                &settings,
                Flash::success(format!(
                    "The token {name} was added and emailed to {masked_email}."
                )),
            ),
            Ok(_) => page.done(&settings, Flash::error("Unexpected answer.")),
            // A refused name is the field's error, shown with what was typed.
            Err(e) => {
                let errors = FormErrors::on("token-name", Some(say(e)));
                super::settings::settings_typed(page, me, errors, &name).await
            }
        });
    }
    let (name, action) = parse(path)?;
    if get("confirm") != "yes" {
        return confirm_page(page, me, path);
    }
    let req = match action {
        "reset" => Request::TokenReset {
            username: me.username.clone(),
            name: Some(name.clone()),
        },
        _ => Request::TokenRevoke {
            username: me.username.clone(),
            name: name.clone(),
        },
    };
    let flash = match app.admin.perform(&actor, req).await {
        Ok(Answer::Rotated { masked_email, .. }) => Flash::success(format!(
            "A new value of the token {name} was emailed to {masked_email}."
        )),
        Ok(_) => Flash::success(format!("The token {name} was revoked; its sessions ended.")),
        Err(e) => Flash::error(say(e)),
    };
    Some(page.done(&settings, flash))
}

/// A refusal in the user's words.
/// What a person is told of a refused action: the refusal's sentence (`refusal`), never an
/// internal detail.
fn say(e: AdminError) -> String {
    match e {
        AdminError::UndeliverableToken => "Email delivery is not configured on the server, so \
            a new token could not be delivered; nothing was added. Ask your administrator."
            .into(),
        e => Refusal::from(e).sentence().into_owned(),
    }
}
