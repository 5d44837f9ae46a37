//! Setup pages, for admins: users, Compliance BCC Email and the login history.

use std::collections::HashMap;

use std::time::Duration;

use http::{Response, StatusCode};
use minijinja::context;
use serde::Serialize;

use super::page::{Page, form_status, harden, page_after};
use super::session::{renew, with_cookie};
use super::settings::token_failure;
use super::{BASE, PAGE_SIZE};
use crate::admin::NewUser;
use crate::domain::Outcome;
use crate::history::format_ms;
use crate::mail::{ComplianceBcc, TokenReason};
use crate::server::App;
use crate::store::{HistoryFilter, User};
use crate::wire::Body;

pub(super) async fn setup_post(
    app: &App,
    page: &Page<'_>,
    me: &User,
    path: &str,
    f: &HashMap<String, String>,
) -> Response<Body> {
    let get = |k: &str| f.get(k).map(String::as_str).unwrap_or_default();
    let none = HashMap::new();
    if path == "setup/users" {
        let new = NewUser {
            username: get("username").into(),
            email: get("email").into(),
            full_name: get("full_name").into(),
            admin: get("admin") == "on",
            password: get("password").into(),
            ..Default::default()
        };
        return match app.admin.add_user(new).await {
            Ok((u, _token, note)) => {
                let mut msg = format!(
                    "User {} was created; the security token was emailed.",
                    u.username
                );
                if let Some(n) = note {
                    msg = format!("User {} was created, but {n}.", u.username);
                }
                users_page(page, &none, Some(msg), None)
            }
            Err(e) => users_page(page, &none, None, Some(e.to_string())),
        };
    }
    if path == "setup/compliance" {
        let setting = ComplianceBcc {
            enabled: get("enabled") == "on",
            address: Some(get("address").trim().to_owned()).filter(|a| !a.is_empty()),
            redact_secrets: get("redact_secrets") == "on",
        };
        if setting.enabled && setting.address.is_none() {
            return compliance_page(
                page,
                None,
                Some("An address is required to enable the copy.".into()),
            );
        }
        return match setting.save(app.store.as_ref()) {
            Ok(()) => compliance_page(page, Some("Saved.".into()), None),
            Err(e) => compliance_page(page, None, Some(e.to_string())),
        };
    }
    let Some((name, action)) = path
        .strip_prefix("setup/users/")
        .and_then(|r| r.rsplit_once('/'))
    else {
        return page.message(
            StatusCode::NOT_FOUND,
            "Not found",
            "There is no such form.",
            BASE,
        );
    };
    let name = crate::wire::decode_component(name);
    let users = app.users.clone();
    let result: Result<String, String> = match action {
        "disable" | "enable" => users
            .set_disabled(&name, action == "disable")
            .map(|u| {
                if u.disabled {
                    app.console.end_user(&u.id);
                }
                format!(
                    "{} is now {}.",
                    u.username,
                    if u.disabled { "disabled" } else { "enabled" }
                )
            })
            .map_err(|e| e.to_string()),
        "reset-mfa" => users
            .reset_mfa(&name)
            .map(|u| {
                app.console.end_user(&u.id);
                format!(
                    "{}'s two-factor authentication was reset: they set it up again at their next sign-in.",
                    u.username
                )
            })
            .map_err(|e| e.to_string()),
        "unlock" => users
            .unlock(&name)
            .map(|u| format!("{} was unlocked.", u.username))
            .map_err(|e| e.to_string()),
        "grant-admin" | "revoke-admin" => users
            .set_admin(&name, action == "grant-admin")
            .map(|u| {
                format!(
                    "{} is {} an administrator.",
                    u.username,
                    if u.admin { "now" } else { "no longer" }
                )
            })
            .map_err(|e| e.to_string()),
        "reset-token" => match app.tokens.find(&name) {
            Ok(u) => match app.tokens.rotate(&u.id, TokenReason::AdminRotation).await {
                Ok(r) => {
                    let msg = format!(
                        "A new security token for {} was emailed to {}.",
                        r.user.username, r.masked_email
                    );
                    // An admin who reset their own token stays signed in.
                    if r.user.id == me.id {
                        let renewed = renew(app, page, me, &r.user);
                        let next = page_after(app, page, &r.user, &renewed);
                        return with_cookie(
                            &app.console,
                            users_page(&next, &none, Some(msg), None),
                            renewed,
                        );
                    }
                    Ok(msg)
                }
                Err(e) => Err(token_failure(e).1),
            },
            Err(e) => Err(e.to_string()),
        },
        "rotation" => {
            let every = get("every").trim();
            let period = match every {
                "off" | "" => Ok(None),
                s => humantime::parse_duration(s)
                    .map(Some)
                    .map_err(|_| format!("'{s}' is not a duration such as 24h, or off")),
            };
            match period {
                Ok(p) => app
                    .tokens
                    .set_rotation(&name, p)
                    .map(|u| match p {
                        Some(d) => format!(
                            "{}'s token now rotates every {}.",
                            u.username,
                            humantime::format_duration(d)
                        ),
                        None => format!("Scheduled rotation is off for {}.", u.username),
                    })
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e),
            }
        }
        _ => Err("There is no such action.".into()),
    };
    match result {
        Ok(msg) => users_page(page, &none, Some(msg), None),
        Err(e) => users_page(page, &none, None, Some(e)),
    }
}

#[derive(Serialize)]
pub(super) struct Action {
    pub(super) action: &'static str,
    pub(super) label: &'static str,
}

#[derive(Serialize)]
pub(super) struct UserRow {
    pub(super) username: String,
    pub(super) path: String,
    pub(super) full_name: String,
    pub(super) email: String,
    pub(super) disabled: bool,
    pub(super) locked: bool,
    pub(super) admin: bool,
    pub(super) rotation: String,
    pub(super) actions: Vec<Action>,
}

pub(super) fn users_page(
    page: &Page<'_>,
    q: &HashMap<String, String>,
    notice: Option<String>,
    error: Option<String>,
) -> Response<Body> {
    let needle = q
        .get("q")
        .map(|s| s.trim().to_lowercase())
        .unwrap_or_default();
    let all = page.app.users.list().unwrap_or_default();
    let matching: Vec<_> = all
        .into_iter()
        .filter(|u| {
            needle.is_empty()
                || u.username.contains(&needle)
                || u.email.to_lowercase().contains(&needle)
                || u.full_name.to_lowercase().contains(&needle)
        })
        .collect();
    let pages = matching.len().div_ceil(PAGE_SIZE).max(1);
    let pg = q
        .get("page")
        .and_then(|p| p.parse::<usize>().ok())
        .unwrap_or(1)
        .clamp(1, pages);
    let link = |p: usize| {
        format!(
            "{BASE}/setup/users?q={}&page={p}",
            crate::wire::encode_component(&needle)
        )
    };
    let users: Vec<UserRow> = matching
        .iter()
        .skip((pg - 1) * PAGE_SIZE)
        .take(PAGE_SIZE)
        .map(|u| {
            let mut actions = vec![
                if u.disabled {
                    Action {
                        action: "enable",
                        label: "Enable",
                    }
                } else {
                    Action {
                        action: "disable",
                        label: "Disable",
                    }
                },
                Action {
                    action: "reset-token",
                    label: "Reset token",
                },
                if u.admin {
                    Action {
                        action: "revoke-admin",
                        label: "Revoke admin",
                    }
                } else {
                    Action {
                        action: "grant-admin",
                        label: "Grant admin",
                    }
                },
            ];
            if u.locked_until.is_some() {
                actions.push(Action {
                    action: "unlock",
                    label: "Unlock",
                });
            }
            if u.mfa_enrolled {
                actions.push(Action {
                    action: "reset-mfa",
                    label: "Reset 2FA",
                });
            }
            UserRow {
                path: crate::wire::encode_component(&u.username),
                username: u.username.clone(),
                full_name: u.full_name.clone(),
                email: u.email.clone(),
                disabled: u.disabled,
                locked: u.locked_until.is_some(),
                admin: u.admin,
                rotation: u
                    .rotate_every_secs
                    .map(|s| {
                        format!(
                            "every {}",
                            humantime::format_duration(Duration::from_secs(s))
                        )
                    })
                    .unwrap_or_else(|| "off".into()),
                actions,
            }
        })
        .collect();
    page.render(
        form_status(&error),
        "users.html",
        "Setup: Users",
        "users",
        context! {
            users, q => needle, page => pg, pages,
            prev => (pg > 1).then(|| link(pg - 1)),
            next => (pg < pages).then(|| link(pg + 1)),
            policy => page.app.tokens.policy().describe(),
            notice, error,
        },
    )
}

pub(super) fn compliance_page(
    page: &Page<'_>,
    notice: Option<String>,
    error: Option<String>,
) -> Response<Body> {
    let setting = ComplianceBcc::load(page.app.store.as_ref()).unwrap_or_default();
    page.render(
        form_status(&error),
        "compliance.html",
        "Setup: Compliance BCC Email",
        "compliance",
        context! { setting, notice, error },
    )
}

pub(super) fn history_filter(q: &HashMap<String, String>) -> Result<HistoryFilter, String> {
    let get = |k: &str| q.get(k).map(String::as_str);
    crate::history::filter(get("user"), get("since"), get("outcome"), 50)
}

pub(super) async fn history_page(page: &Page<'_>, q: &HashMap<String, String>) -> Response<Body> {
    let (filter, error) = match history_filter(q) {
        Ok(f) => (f, None),
        Err(e) => (
            HistoryFilter {
                limit: 50,
                ..Default::default()
            },
            Some(e),
        ),
    };
    let pg = q
        .get("page")
        .and_then(|p| p.parse::<usize>().ok())
        .unwrap_or(1)
        .clamp(1, 1000);
    let mut found = rows(
        page.app,
        &HistoryFilter {
            limit: 51,
            ..filter.clone()
        },
        (pg - 1) * 50,
        true,
    )
    .await;
    let more = found.len() > 50;
    found.truncate(50);
    let params = |p: usize| {
        format!(
            "user={}&outcome={}&since={}&page={p}",
            crate::wire::encode_component(q.get("user").map(String::as_str).unwrap_or_default()),
            crate::wire::encode_component(q.get("outcome").map(String::as_str).unwrap_or_default()),
            crate::wire::encode_component(q.get("since").map(String::as_str).unwrap_or_default()),
        )
    };
    let outcomes: Vec<&str> = Outcome::ALL.iter().map(|o| o.as_str()).collect();
    page.render(
        if error.is_some() {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::OK
        },
        "history.html",
        "Setup: Login History",
        "history",
        context! {
            rows => found, show_reason => true, outcomes, page => pg,
            f_user => q.get("user").cloned().unwrap_or_default(),
            f_outcome => q.get("outcome").cloned().unwrap_or_default(),
            f_since => q.get("since").cloned().unwrap_or_default(),
            prev => (pg > 1).then(|| format!("{BASE}/setup/history?{}", params(pg - 1))),
            next => more.then(|| format!("{BASE}/setup/history?{}", params(pg + 1))),
            csv => format!("{BASE}/setup/history.csv?{}", params(1)),
            error,
        },
    )
}

pub(super) async fn history_csv(app: &App, q: &HashMap<String, String>) -> Response<Body> {
    let Ok(mut filter) = history_filter(q) else {
        return harden(crate::wire::respond(
            StatusCode::BAD_REQUEST,
            "text/plain; charset=utf-8",
            "bad filter",
        ));
    };
    filter.limit = 100_000;
    // Up to 100,000 rows: off the async workers, and a store error is an error, not an empty
    // file.
    let store = app.store.clone();
    match tokio::task::spawn_blocking(move || store.history_query(&filter)).await {
        Ok(Ok(rows)) => harden(crate::wire::history_csv(&rows)),
        failed => {
            let e = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => "the query task failed".to_owned(),
            };
            tracing::error!(error = %e, "cannot read the login history");
            harden(crate::wire::respond(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain; charset=utf-8",
                "internal error",
            ))
        }
    }
}

#[derive(Serialize)]
pub(super) struct Row {
    pub(super) time: String,
    pub(super) username: String,
    pub(super) source_ip: String,
    pub(super) dialect: String,
    pub(super) client: Option<String>,
    pub(super) outcome: String,
    pub(super) reason: Option<String>,
}

/// Login-history rows for a page. The query runs on the blocking pool: a late page of the
/// history skips up to 50,000 rows.
pub(super) async fn rows(
    app: &App,
    filter: &HistoryFilter,
    skip: usize,
    with_reason: bool,
) -> Vec<Row> {
    let mut f = filter.clone();
    f.limit += skip;
    let store = app.store.clone();
    let found = match tokio::task::spawn_blocking(move || store.history_query(&f)).await {
        Ok(Ok(rows)) => rows,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot read the login history");
            Vec::new()
        }
        Err(e) => {
            tracing::error!(error = %e, "the login-history query task failed");
            Vec::new()
        }
    };
    found
        .into_iter()
        .skip(skip)
        .map(|r| Row {
            time: format_ms(r.at_ms),
            username: r.username,
            source_ip: r.source_ip,
            dialect: r.dialect,
            client: r.client,
            outcome: r.outcome,
            reason: if with_reason { r.reason } else { None },
        })
        .collect()
}
