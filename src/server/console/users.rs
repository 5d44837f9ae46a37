//! Setup → Users, as Salesforce admins know it: the list (views, search, sortable columns in
//! natural order, a page of [`PAGE_SIZE`], a checkbox per row and bulk actions), the "New user"
//! page, each user's own page with every action on that user, and the confirmation page that
//! stands before each destructive action (disable, revoke admin, another user's token reset,
//! delete, and the bulk actions).
//!
//! Every form answers 303 See Other to a page (Post/Redirect/Get) with its outcome in the
//! session's flash, except a form that fails validation: it is shown again (400) with what was
//! typed. The list's view, search, sort and page travel with every form (`list`, a query
//! string read back through [`ListState`]) so an action returns to the same list.
//!
//! Here: the new-user and user pages, the confirmations and every form's handling; the list,
//! its state and the bulk actions are in `list`.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::time::Duration;

use http::{Response, StatusCode};
use minijinja::context;
use serde::Serialize;

use super::form::FormErrors;
use super::page::{Page, form_status, page_after};
use super::session::{Flash, renew, with_cookie};
use super::setup::rows;
use super::{BASE, Form, PAGE_SIZE};
use crate::admin::{AdminError, Answer, NewUser, Request, UserChanges, UserView};
use crate::audit::{Actor, Channel};
use crate::history::format_ms;
use crate::mail::mask_email;
use crate::server::refusal::Refusal;
use crate::server::{App, Client};
use crate::store::{HistoryFilter, User};
use crate::wire::{Body, encode_component};

mod list;
#[cfg(test)]
mod tests;

pub(super) use list::*;

/// `setup/new-user`: the form that creates a user; `typed` is what a refused form held.
pub(super) fn new_user_page(
    page: &Page<'_>,
    list: &ListState,
    typed: Option<&Form>,
    errors: FormErrors,
) -> Response<Body> {
    let field = |k: &str| typed.and_then(|f| f.get(k)).cloned().unwrap_or_default();
    page.render(
        errors.status(),
        "user_new.html",
        "Setup: New User",
        "users",
        context! {
            policy => page.app.tokens.policy().describe(),
            username => field("username"), email => field("email"),
            full_name => field("full_name"),
            admin => field("admin") == "on", api_only => field("api_only") == "on",
            list => list.query(), back => list.url(),
            form_errors => errors.context(),
        },
    )
}

/// `setup/users/{username}`: one user's details, recent logins and every change an admin can
/// make to it; `typed` is what a refused form held.
pub(super) async fn user_page(
    page: &Page<'_>,
    username: &str,
    list: &ListState,
    typed: Option<&Form>,
    errors: FormErrors,
) -> Response<Body> {
    let u = match page.app.users.show(username) {
        Ok(u) => u,
        Err(_) => {
            return page.message(
                StatusCode::NOT_FOUND,
                "Not found",
                "There is no such user.",
                &list.url(),
            );
        }
    };
    let when = |t: u64| when_ms(t.saturating_mul(1000), &page.app.cfg.console.time_zone);
    let typed_or =
        |k: &str, stored: String| typed.and_then(|f| f.get(k)).cloned().unwrap_or(stored);
    let filter = HistoryFilter {
        user: Some(u.id.clone()),
        limit: 10,
        ..Default::default()
    };
    let logins = rows(page.app, &filter, 0, true).await;
    let action = |action, label| context! { action, label };
    let mut actions = vec![
        if u.disabled {
            action("enable", "Enable")
        } else {
            action("disable", "Disable")
        },
        action("reset-token", "Reset token"),
        if u.admin {
            action("revoke-admin", "Revoke admin")
        } else {
            action("grant-admin", "Grant admin")
        },
    ];
    if u.locked_until.is_some() {
        actions.push(action("unlock", "Unlock"));
    }
    if u.mfa_enrolled {
        actions.push(action("reset-mfa", "Reset 2FA"));
    }
    actions.push(action("delete", "Delete"));
    page.render(
        errors.status(),
        "user.html",
        &format!("Setup: User {}", u.username),
        "users",
        context! {
            path => encode_component(&u.username),
            email => typed_or("email", u.email.clone()),
            full_name => typed_or("full_name", u.full_name.clone()),
            ranges => typed_or("ranges", u.login_ranges.join("\n")),
            rotation => typed_or("every", u.rotate_every_secs.map(|s| humantime::format_duration(Duration::from_secs(s)).to_string()).unwrap_or_default()),
            created => when(u.created_at),
            password_changed => when(u.password_changed_at),
            token_reset => when(u.token_reset_at),
            locked => u.locked_until.is_some(),
            status => status(&u),
            rows => logins, show_reason => true, empty => "No logins yet.", actions,
            list => list.query(), back => list.url(),
            form_errors => errors.context(),
            u,
        },
    )
}

/// An action that ends access or cannot be undone: shown on a confirmation page first.
fn needs_confirmation(action: &str, me: &User, username: &str) -> bool {
    match action {
        "disable" | "revoke-admin" | "delete" => true,
        // A user's own reset has its own confirmation (My Settings); an admin resetting
        // someone else's token breaks that user's integrations.
        "reset-token" => crate::domain::canonical_username(username) != me.username,
        _ => false,
    }
}

/// What confirming `action` does to `users`, in words.
fn consequence(app: &App, action: &str, users: &[String]) -> String {
    let names = join_names(users);
    let one = users.len() == 1;
    match action {
        "disable" if one => format!(
            "{names}'s sessions end at once and their integrations stop logging in until an admin enables {names} again."
        ),
        "disable" => format!(
            "The sessions of {names} end at once and their integrations stop logging in until an admin enables each of them again."
        ),
        "revoke-admin" => format!(
            "{names} will no longer reach the Setup pages or the admin API; their logins are not changed."
        ),
        "reset-token" => {
            let to: Vec<String> = users
                .iter()
                .map(|u| match app.users.show(u) {
                    Ok(v) => format!("{u} ({})", mask_email(&v.email)),
                    Err(_) => u.clone(),
                })
                .collect();
            format!(
                "A new security token is emailed to {}. Every integration that logs in with the current token stops working until it is given the new one.",
                join_names(&to)
            )
        }
        "delete" => format!(
            "{names} will be deleted: sessions end, logins stop, and this cannot be undone."
        ),
        _ => String::new(),
    }
}

fn join_names(names: &[String]) -> String {
    match names {
        [] => String::new(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

fn action_label(action: &str) -> &'static str {
    match action {
        "disable" => "Disable",
        "revoke-admin" => "Revoke admin",
        "reset-token" => "Reset token",
        "delete" => "Delete",
        _ => "Confirm",
    }
}

/// The confirmation page: the users, what happens, Confirm (the same form again with
/// `confirm=yes`) and Cancel (back where the admin came from).
fn confirm_page(
    page: &Page<'_>,
    action: &str,
    users: &[String],
    post_to: &str,
    bulk: bool,
    list: &ListState,
    cancel: &str,
) -> Response<Body> {
    let label = action_label(action);
    let title = if bulk {
        format!("Confirm: {label} {} users", users.len())
    } else {
        format!("Confirm: {label} {}", users.join(""))
    };
    page.render(
        StatusCode::OK,
        "confirm_action.html",
        &title,
        "users",
        context! {
            users, consequence => consequence(page.app, action, users),
            post_to, bulk, action, label, list => list.query(), cancel,
        },
    )
}

/// The request an action on the user page names.
fn request_for(action: &str, username: &str, f: &Form) -> Option<Request> {
    let get = |k: &str| f.get(k).map(String::as_str).unwrap_or_default();
    let username = username.to_owned();
    Some(match action {
        "disable" | "enable" => Request::UserSetDisabled {
            username,
            disabled: action == "disable",
        },
        "unlock" => Request::UserUnlock { username },
        "reset-mfa" => Request::UserMfaReset { username },
        "grant-admin" | "revoke-admin" => Request::UserSetAdmin {
            username,
            admin: action == "grant-admin",
        },
        "reset-token" => Request::TokenReset {
            username,
            name: None,
        },
        "delete" => Request::UserDelete { username },
        "rotation" => Request::UserSetRotation {
            username,
            every: match get("every").trim() {
                "" => "off".into(),
                s => s.into(),
            },
        },
        "profile" => Request::UserSet {
            username,
            changes: UserChanges {
                email: Some(get("email").to_owned()),
                full_name: Some(get("full_name").to_owned()),
                api_only: Some(get("api_only") == "on"),
            },
        },
        "login-ranges" => Request::UserSetLoginRanges {
            username,
            ranges: match get("ranges").trim() {
                "" => "none".into(),
                s => s.replace(['\n', '\r', ' '], ","),
            },
        },
        _ => return None,
    })
}

/// An error a form's own fields caused: the form is shown again with what was typed.
fn is_validation(e: &AdminError) -> bool {
    matches!(
        e,
        AdminError::Email(_)
            | AdminError::FullName(_)
            | AdminError::Period(_)
            | AdminError::Range(_)
            | AdminError::Invalid(_)
            | AdminError::Username(_)
            | AdminError::Password(_)
    )
}

/// The field of the New user page (`user_new.html`'s element ids) an error is about.
fn new_user_field(e: &AdminError) -> Option<&'static str> {
    match e {
        AdminError::Username(_) | AdminError::Store(crate::store::StoreError::UserExists(_)) => {
            Some("nu")
        }
        AdminError::Email(_) => Some("ne"),
        AdminError::FullName(_) => Some("nn"),
        AdminError::Password(_) => Some("np"),
        _ => None,
    }
}

/// The field of the user's page (`user.html`'s element ids) an error is about.
fn user_page_field(e: &AdminError) -> Option<&'static str> {
    match e {
        AdminError::Email(_) => Some("pe"),
        AdminError::FullName(_) => Some("pn"),
        AdminError::Range(_) => Some("lr"),
        AdminError::Period(_) => Some("re"),
        _ => None,
    }
}

/// A refused form's error, tied to `field` (or to the form as a whole).
fn refused(field: Option<&str>, message: String) -> FormErrors {
    let mut errors = FormErrors::none();
    errors.add(field, message);
    errors
}

/// An admin error in the console's words.
/// What a person is told of a refused action: the refusal's sentence (`refusal`), which never
/// carries an internal detail such as a store error's text.
fn say(e: AdminError) -> String {
    match e {
        // The console can say what to do about it.
        AdminError::Undeliverable => "Email delivery is not configured, so the new user's security token could not be delivered; no user was created. Configure [mail] on the server, or create the user with tokengate user add --show-token.".into(),
        e => Refusal::from(e).sentence().into_owned(),
    }
}

/// What an action did, in words.
fn said(action: &str, answer: &Answer, username: &str) -> Result<String, String> {
    let u = match answer {
        Answer::Users { .. } => return Ok(format!("{username} was deleted.")),
        Answer::Rotated {
            user, masked_email, ..
        } => {
            return Ok(format!(
                "A new security token for {} was emailed to {masked_email}.",
                user.username
            ));
        }
        Answer::User { user, .. } => user,
        _ => return Err("Unexpected answer.".into()),
    };
    let msg = match action {
        "disable" | "enable" => format!(
            "{} is now {}.",
            u.username,
            if u.disabled { "disabled" } else { "enabled" }
        ),
        "reset-mfa" => format!(
            "{}'s two-factor authentication was reset: they set it up again at their next sign-in.",
            u.username
        ),
        "unlock" => format!("{} was unlocked.", u.username),
        "grant-admin" | "revoke-admin" => format!(
            "{} is {} an administrator.",
            u.username,
            if u.admin { "now" } else { "no longer" }
        ),
        "rotation" => match u.rotate_every_secs {
            Some(d) => format!(
                "{}'s token now rotates every {}.",
                u.username,
                humantime::format_duration(Duration::from_secs(d))
            ),
            None => format!("Scheduled rotation is off for {}.", u.username),
        },
        "login-ranges" => format!("{}'s login ranges were saved.", u.username),
        _ => format!("{} was saved.", u.username),
    };
    Ok(match answer {
        Answer::User { note: Some(n), .. } => format!("{msg} Note: {n}."),
        _ => msg,
    })
}

/// After an action: a disabled, API-only or second-factor-reset user's console sessions end
/// now rather than at their next request.
fn end_console(app: &App, action: &str, answer: &Answer) {
    if let Answer::User { user, .. } = answer
        && (user.disabled || user.api_only || action == "reset-mfa")
    {
        app.console.end_user(&user.id);
    }
}

/// Every form of Setup → Users (create, bulk, and each user's actions).
pub(super) async fn post(
    app: &App,
    page: &Page<'_>,
    me: &User,
    path: &str,
    f: &Form,
    peer: Client,
) -> Response<Body> {
    let get = |k: &str| f.get(k).map(String::as_str).unwrap_or_default();
    let actor = Actor::admin(&me.username, peer.ip, Channel::Console);
    let list = ListState::from_list(f.get("list").map(String::as_str));
    if path == "setup/users" {
        let new = NewUser {
            username: get("username").into(),
            email: get("email").into(),
            full_name: get("full_name").into(),
            admin: get("admin") == "on",
            api_only: get("api_only") == "on",
            password: get("password").into(),
            ..Default::default()
        };
        return match app.admin.perform(&actor, Request::UserAdd(new)).await {
            Ok(Answer::User { user: u, note, .. }) => {
                let msg = match note {
                    Some(n) => format!("User {} was created, but {n}.", u.username),
                    None => format!(
                        "User {} was created; the security token was emailed.",
                        u.username
                    ),
                };
                page.done(
                    &format!("{BASE}/setup/users/{}", encode_component(&u.username)),
                    Flash::success(msg),
                )
            }
            Ok(_) => new_user_page(
                page,
                &list,
                Some(f),
                refused(None, "Unexpected answer.".into()),
            ),
            Err(e) => {
                let field = new_user_field(&e);
                new_user_page(page, &list, Some(f), refused(field, say(e)))
            }
        };
    }
    if path == "setup/users/bulk" {
        return bulk(app, page, me, f, &actor, &list).await;
    }
    let Some((name, action)) = path
        .strip_prefix("setup/users/")
        .and_then(|r| r.rsplit_once('/'))
    else {
        return not_found(page);
    };
    let username = crate::wire::decode_component(name);
    let user_url = format!(
        "{BASE}/setup/users/{}?{}",
        encode_component(&username),
        list.param()
    );
    let Some(req) = request_for(action, &username, f) else {
        return page.done(&user_url, Flash::error("There is no such action."));
    };
    if needs_confirmation(action, me, &username) && get("confirm") != "yes" {
        return match app.users.show(&username) {
            Ok(u) => confirm_page(
                page,
                action,
                &[u.username],
                &format!("{BASE}/{path}"),
                false,
                &list,
                &user_url,
            ),
            Err(_) => page.done(&list.url(), Flash::error("There is no such user.")),
        };
    }
    let answer = match app.admin.perform(&actor, req).await {
        Ok(a) => a,
        Err(e) if is_validation(&e) => {
            let field = user_page_field(&e);
            return user_page(page, &username, &list, Some(f), refused(field, say(e))).await;
        }
        Err(e) => return page.done(&user_url, Flash::error(say(e))),
    };
    end_console(app, action, &answer);
    let flash = match said(action, &answer, &username) {
        Ok(m) => Flash::success(m),
        Err(e) => Flash::error(e),
    };
    // An admin who reset their own token stays signed in, under a renewed session.
    if let Answer::Rotated { user: u, .. } = &answer
        && u.id == me.id
        && let Ok(Some(fresh)) = app.store.user_by_id(&u.id)
    {
        let renewed = renew(app, page, me, &fresh);
        let next = page_after(app, page, &fresh, &renewed);
        return with_cookie(&app.console, next.done(&user_url, flash), renewed);
    }
    match answer {
        Answer::Users { .. } => page.done(&list.url(), flash),
        _ => page.done(&user_url, flash),
    }
}

fn not_found(page: &Page<'_>) -> Response<Body> {
    page.message(
        StatusCode::NOT_FOUND,
        "Not found",
        "There is no such form.",
        BASE,
    )
}
