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

/// Users a bulk action may name at once: a page of the list.
const MAX_BULK: usize = PAGE_SIZE;

/// The list's views (`view=`), the first the default.
const VIEWS: [(&str, &str); 6] = [
    ("all", "All users"),
    ("active", "Active"),
    ("disabled", "Disabled"),
    ("locked", "Locked"),
    ("admins", "Admins"),
    ("api", "API only"),
];

/// The sortable columns (`sort=`): the key and the column's header.
const SORTS: [(&str, &str); 6] = [
    ("username", "Username"),
    ("full_name", "Full name"),
    ("email", "Email"),
    ("last_login", "Last login"),
    ("token_reset", "Token last reset"),
    ("status", "Status"),
];

/// Where the list stands: view, search, sort and page, read from a query string (the page's
/// own, or a form's `list` field) and written back as one; anything unknown falls back to the
/// default, so a query string never names more than these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ListState {
    pub(super) view: &'static str,
    pub(super) q: String,
    pub(super) sort: &'static str,
    pub(super) desc: bool,
    pub(super) page: usize,
}

impl Default for ListState {
    fn default() -> Self {
        Self {
            view: VIEWS[0].0,
            q: String::new(),
            sort: SORTS[0].0,
            desc: false,
            page: 1,
        }
    }
}

impl ListState {
    pub(super) fn from_query(get: impl Fn(&str) -> Option<String>) -> Self {
        let pick = |k: &str, options: &[(&'static str, &str)]| {
            get(k).and_then(|v| options.iter().find(|(o, _)| *o == v).map(|(o, _)| *o))
        };
        let d = Self::default();
        Self {
            view: pick("view", &VIEWS).unwrap_or(d.view),
            q: get("q")
                .map(|q| q.trim().chars().take(100).collect())
                .unwrap_or_default(),
            sort: pick("sort", &SORTS).unwrap_or(d.sort),
            desc: get("dir").as_deref() == Some("desc"),
            page: get("page")
                .and_then(|p| p.parse().ok())
                .unwrap_or(1)
                .clamp(1, 100_000),
        }
    }

    /// The state carried in a `list` parameter (a form's field, or a user page's query).
    pub(super) fn from_list(list: Option<&str>) -> Self {
        let pairs: Vec<(String, String)> = list
            .and_then(|l| serde_urlencoded::from_str(l).ok())
            .unwrap_or_default();
        Self::from_query(|k| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
    }

    /// The query string of this state (percent-encoded by `serde_urlencoded`).
    pub(super) fn query(&self) -> String {
        serde_urlencoded::to_string([
            ("view", self.view),
            ("q", self.q.as_str()),
            ("sort", self.sort),
            ("dir", if self.desc { "desc" } else { "asc" }),
            ("page", &self.page.to_string()),
        ])
        .unwrap_or_default()
    }

    pub(super) fn url(&self) -> String {
        format!("{BASE}/setup/users?{}", self.query())
    }

    /// `list=` and this state, for a link to a page that comes back here.
    pub(super) fn param(&self) -> String {
        serde_urlencoded::to_string([("list", self.query())]).unwrap_or_default()
    }

    fn with(&self, change: impl FnOnce(&mut Self)) -> Self {
        let mut s = self.clone();
        change(&mut s);
        s
    }

    fn shows(&self, u: &UserView) -> bool {
        let locked = u.locked_until.is_some();
        let in_view = match self.view {
            "active" => !u.disabled && !locked,
            "disabled" => u.disabled,
            "locked" => locked,
            "admins" => u.admin,
            "api" => u.api_only,
            _ => true,
        };
        let needle = self.q.to_lowercase();
        in_view
            && (needle.is_empty()
                || u.username.contains(&needle)
                || u.email.to_lowercase().contains(&needle)
                || u.full_name.to_lowercase().contains(&needle))
    }
}

/// "active", "locked" or "disabled".
fn status(u: &UserView) -> &'static str {
    if u.disabled {
        "disabled"
    } else if u.locked_until.is_some() {
        "locked"
    } else {
        "active"
    }
}

/// Text in natural order (digits compared as numbers: `user.2` before `user.10`), ignoring
/// case; ties broken by the exact text so the order is total.
pub(super) fn natural(a: &str, b: &str) -> Ordering {
    alphanumeric_sort::compare_str(a.to_lowercase(), b.to_lowercase()).then_with(|| a.cmp(b))
}

/// Sorts `users` by `sort` (the username breaks ties); `last` is each user's last login.
fn sort_users(users: &mut [UserView], sort: &str, desc: bool, last: &HashMap<String, u64>) {
    users.sort_by(|a, b| {
        let by = match sort {
            "full_name" => natural(&a.full_name, &b.full_name),
            "email" => natural(&a.email, &b.email),
            "token_reset" => a.token_reset_at.cmp(&b.token_reset_at),
            "status" => status(a).cmp(status(b)),
            "last_login" => last.get(&a.id).cmp(&last.get(&b.id)),
            _ => Ordering::Equal,
        };
        let by = by.then_with(|| natural(&a.username, &b.username));
        if desc { by.reverse() } else { by }
    });
}

/// Each user's last successful login (Unix milliseconds), from the login history. For a whole
/// list sorted by it, one pass over the history's successes, newest first, that stops once
/// every user is found; rows beyond [`LAST_LOGIN_ROWS`] are not read.
async fn last_logins(app: &App, ids: Vec<String>) -> HashMap<String, u64> {
    let store = app.store.clone();
    let found = tokio::task::spawn_blocking(move || {
        let mut last = HashMap::new();
        if ids.len() <= PAGE_SIZE {
            // A page: one query per user, each stopping at the user's newest success.
            for id in ids {
                let f = HistoryFilter {
                    user: Some(id.clone()),
                    outcome: Some(crate::domain::Outcome::Success.as_str().into()),
                    limit: 1,
                    ..Default::default()
                };
                if let Some(r) = store.history_query(&f)?.first() {
                    last.insert(id, r.at_ms);
                }
            }
        } else {
            let f = HistoryFilter {
                outcome: Some(crate::domain::Outcome::Success.as_str().into()),
                limit: LAST_LOGIN_ROWS,
                ..Default::default()
            };
            let wanted: std::collections::HashSet<String> = ids.into_iter().collect();
            for r in store.history_query(&f)? {
                if let Some(id) = r.user_id.filter(|id| wanted.contains(id)) {
                    last.entry(id).or_insert(r.at_ms);
                }
            }
        }
        Ok::<_, crate::store::StoreError>(last)
    })
    .await;
    match found {
        Ok(Ok(last)) => last,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot read the login history");
            HashMap::new()
        }
        Err(_) => HashMap::new(),
    }
}

/// The newest successful logins read to sort the whole list by last login.
const LAST_LOGIN_ROWS: usize = 100_000;

/// A time for people in the console's zone (`[console] time_zone`; the server cannot know
/// the browser's): "29 Nov 2026, 12:05 EST", with the RFC 3339 UTC value for
/// `<time datetime>` and the hover title.
#[derive(Serialize)]
pub(super) struct When {
    pub(super) text: String,
    pub(super) iso: String,
}

pub(super) fn when_ms(ms: u64, zone: &jiff::tz::TimeZone) -> When {
    let at = i64::try_from(ms)
        .ok()
        .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    When {
        text: at
            .to_zoned(zone.clone())
            .strftime("%-d %b %Y, %H:%M %Z")
            .to_string(),
        iso: format_ms(ms),
    }
}

#[derive(Serialize)]
struct Row {
    username: String,
    path: String,
    full_name: String,
    email: String,
    status: &'static str,
    admin: bool,
    api_only: bool,
    last_login: Option<When>,
    token_reset: When,
}

#[derive(Serialize)]
struct Column {
    key: &'static str,
    label: &'static str,
    href: String,
    /// `aria-sort` of the column the list is sorted by.
    aria_sort: Option<&'static str>,
}

/// `setup/users`: the list.
pub(super) async fn users_page(page: &Page<'_>, list: &ListState) -> Response<Body> {
    let (mut matching, error) = match page.app.users.list() {
        Ok(all) => (
            all.into_iter()
                .filter(|u| list.shows(u))
                .collect::<Vec<_>>(),
            None,
        ),
        Err(e) => (
            Vec::new(),
            Some(format!("The users could not be read: {e}")),
        ),
    };
    let sorted_by_login = list.sort == "last_login";
    let mut last = if sorted_by_login {
        last_logins(page.app, matching.iter().map(|u| u.id.clone()).collect()).await
    } else {
        HashMap::new()
    };
    sort_users(&mut matching, list.sort, list.desc, &last);
    let pages = matching.len().div_ceil(PAGE_SIZE).max(1);
    let pg = list.page.min(pages);
    let shown: Vec<UserView> = matching
        .into_iter()
        .skip((pg - 1) * PAGE_SIZE)
        .take(PAGE_SIZE)
        .collect();
    if !sorted_by_login {
        last = last_logins(page.app, shown.iter().map(|u| u.id.clone()).collect()).await;
    }
    let here = list.with(|s| s.page = pg);
    let zone = &page.app.cfg.console.time_zone;
    let users: Vec<Row> = shown
        .iter()
        .map(|u| Row {
            username: u.username.clone(),
            path: encode_component(&u.username),
            full_name: u.full_name.clone(),
            email: u.email.clone(),
            status: status(u),
            admin: u.admin,
            api_only: u.api_only,
            last_login: last.get(&u.id).map(|ms| when_ms(*ms, zone)),
            token_reset: when_ms(u.token_reset_at.saturating_mul(1000), zone),
        })
        .collect();
    let columns: Vec<Column> = SORTS
        .iter()
        .map(|(key, label)| {
            let current = list.sort == *key;
            Column {
                key,
                label,
                // A second click on the sorted column turns the order round.
                href: here
                    .with(|s| {
                        s.sort = key;
                        s.desc = current && !list.desc;
                        s.page = 1;
                    })
                    .url(),
                aria_sort: current.then_some(if list.desc { "descending" } else { "ascending" }),
            }
        })
        .collect();
    let views: Vec<_> = VIEWS
        .iter()
        .map(|(value, label)| context! { value, label })
        .collect();
    page.render(
        form_status(&error),
        "users.html",
        "Setup: Users",
        "users",
        context! {
            users, columns, views,
            view => list.view, q => &list.q, sort => list.sort,
            dir => if list.desc { "desc" } else { "asc" },
            list => here.query(), list_q => here.param(),
            page => pg, pages,
            prev => (pg > 1).then(|| here.with(|s| s.page = pg - 1).url()),
            next => (pg < pages).then(|| here.with(|s| s.page = pg + 1).url()),
            error,
        },
    )
}

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

/// Bulk "Reset token" or "Disable" for the selected users: one confirmation page naming them,
/// then each through `Admin::perform` (audited one by one, each under the same rules).
async fn bulk(
    app: &App,
    page: &Page<'_>,
    me: &User,
    f: &Form,
    actor: &Actor,
    list: &ListState,
) -> Response<Body> {
    let action = f.get("action").map(String::as_str).unwrap_or_default();
    if !matches!(action, "reset-token" | "disable") {
        return page.done(&list.url(), Flash::error("There is no such action."));
    }
    let mut users: Vec<String> = Vec::new();
    for u in f.all("user") {
        let u = crate::domain::canonical_username(u);
        if !u.is_empty() && !users.contains(&u) {
            users.push(u);
        }
    }
    if users.is_empty() {
        return page.done(&list.url(), Flash::error("Select at least one user."));
    }
    if users.len() > MAX_BULK {
        return page.done(
            &list.url(),
            Flash::error(format!("Select at most {MAX_BULK} users at once.")),
        );
    }
    if f.get("confirm").map(String::as_str) != Some("yes") {
        return confirm_page(
            page,
            action,
            &users,
            &format!("{BASE}/setup/users/bulk"),
            true,
            list,
            &list.url(),
        );
    }
    let (mut done, mut refused) = (0usize, Vec::new());
    let mut me_reset = false;
    for username in &users {
        let req = match action {
            "disable" => Request::UserSetDisabled {
                username: username.clone(),
                disabled: true,
            },
            _ => Request::TokenReset {
                username: username.clone(),
                name: None,
            },
        };
        match app.admin.perform(actor, req).await {
            Ok(answer) => {
                end_console(app, action, &answer);
                me_reset |= matches!(&answer, Answer::Rotated { user, .. } if user.id == me.id);
                done += 1;
            }
            Err(e) => refused.push(format!("{username} ({})", say(e).trim_end_matches('.'))),
        }
    }
    let verb = if action == "disable" {
        "disabled"
    } else {
        "reset"
    };
    let flash = if refused.is_empty() {
        Flash::success(format!("{done} {verb}."))
    } else {
        Flash::error(format!(
            "{done} {verb}, {} refused: {}.",
            refused.len(),
            refused.join("; ")
        ))
    };
    if me_reset && let Ok(Some(fresh)) = app.store.user_by_id(&me.id) {
        let renewed = renew(app, page, me, &fresh);
        let next = page_after(app, page, &fresh, &renewed);
        return with_cookie(&app.console, next.done(&list.url(), flash), renewed);
    }
    page.done(&list.url(), flash)
}

fn not_found(page: &Page<'_>) -> Response<Body> {
    page.message(
        StatusCode::NOT_FOUND,
        "Not found",
        "There is no such form.",
        BASE,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_in_natural_order() {
        let mut names = vec!["user.10", "User.2", "user.1", "alice", "user.2", "bob.03"];
        names.sort_by(|a, b| natural(a, b));
        assert_eq!(
            names,
            ["alice", "bob.03", "user.1", "User.2", "user.2", "user.10"]
        );
    }

    #[test]
    fn list_state_reads_back_what_it_writes_and_nothing_else() {
        let s = ListState {
            view: "locked",
            q: "a&b=c d%".into(),
            sort: "email",
            desc: true,
            page: 3,
        };
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(&s.query()).unwrap();
        let back =
            ListState::from_query(|k| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()));
        assert_eq!(back, s);
        let odd = ListState::from_query(|k| match k {
            "view" => Some("everyone".into()),
            "sort" => Some("password_hash".into()),
            "page" => Some("-1".into()),
            _ => None,
        });
        assert_eq!(odd, ListState::default());
    }

    #[test]
    fn times_read_as_people_write_them_in_the_consoles_zone() {
        let utc = jiff::tz::TimeZone::UTC;
        let w = when_ms(1_795_971_900_000, &utc);
        assert_eq!(w.text, "29 Nov 2026, 17:05 UTC");
        assert_eq!(w.iso, "2026-11-29T17:05:00.000Z");
        // The zone's own time and abbreviation (summer time included); the hover value stays
        // UTC.
        let ny = jiff::tz::TimeZone::get("America/New_York").unwrap();
        let w = when_ms(1_795_971_900_000, &ny);
        assert_eq!(w.text, "29 Nov 2026, 12:05 EST");
        assert_eq!(w.iso, "2026-11-29T17:05:00.000Z");
        let w = when_ms(1_783_000_000_000, &ny);
        assert_eq!(w.text, "2 Jul 2026, 09:46 EDT");
        let london = jiff::tz::TimeZone::get("Europe/London").unwrap();
        assert_eq!(
            when_ms(1_783_000_000_000, &london).text,
            "2 Jul 2026, 14:46 BST"
        );
    }
}
