//! Setup pages, for admins: users, Compliance BCC Email and the login history.

use std::collections::HashMap;

use std::time::Duration;

use http::{Response, StatusCode};
use minijinja::context;
use serde::Serialize;

use super::chart;
use super::page::{Page, form_status, harden, page_after};
use super::session::{renew, with_cookie};
use super::settings::token_failure;
use super::{BASE, PAGE_SIZE};
use crate::admin::{AdminError, Answer, NewUser, Request, UserChanges};
use crate::audit::{Actor, Channel};
use crate::domain::Outcome;
use crate::history::format_ms;
use crate::mail::ComplianceBcc;
use crate::server::{App, Client};
use crate::store::{HistoryFilter, User};
use crate::wire::Body;

pub(super) async fn setup_post(
    app: &App,
    page: &Page<'_>,
    me: &User,
    path: &str,
    f: &HashMap<String, String>,
    peer: Client,
) -> Response<Body> {
    let get = |k: &str| f.get(k).map(String::as_str).unwrap_or_default();
    let none = HashMap::new();
    let actor = Actor::admin(&me.username, peer.ip, Channel::Console);
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
                let mut msg = format!(
                    "User {} was created; the security token was emailed.",
                    u.username
                );
                if let Some(n) = note {
                    msg = format!("User {} was created, but {n}.", u.username);
                }
                users_page(page, &none, Some(msg), None)
            }
            Err(crate::admin::AdminError::Undeliverable) => users_page(
                page,
                &none,
                None,
                Some("Email delivery is not configured, so the new user's security token could not be delivered; no user was created. Configure [mail] on the server, or create the user with tokengate user add --show-token.".into()),
            ),
            Ok(_) => users_page(page, &none, None, Some("Unexpected answer.".into())),
            Err(e) => users_page(page, &none, None, Some(e.to_string())),
        };
    }
    if path == "setup/compliance" {
        let address = Some(get("address").trim().to_owned()).filter(|a| !a.is_empty());
        let enabled = get("enabled") == "on";
        if enabled && address.is_none() {
            return compliance_page(
                page,
                None,
                Some("An address is required to enable the copy.".into()),
            );
        }
        let req = Request::ComplianceSet {
            address,
            disable: !enabled,
            redact: Some(get("redact_secrets") == "on"),
        };
        return match app.admin.perform(&actor, req).await {
            Ok(_) => compliance_page(page, Some("Saved.".into()), None),
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
    let username = crate::wire::decode_component(name);
    let user = |s: &str| s.to_owned();
    let req = match action {
        "disable" | "enable" => Request::UserSetDisabled {
            username: user(&username),
            disabled: action == "disable",
        },
        "unlock" => Request::UserUnlock {
            username: user(&username),
        },
        "reset-mfa" => Request::UserMfaReset {
            username: user(&username),
        },
        "grant-admin" | "revoke-admin" => Request::UserSetAdmin {
            username: user(&username),
            admin: action == "grant-admin",
        },
        "reset-token" => Request::TokenReset {
            username: user(&username),
            name: None,
        },
        "rotation" => Request::UserSetRotation {
            username: user(&username),
            every: match get("every").trim() {
                "" => "off".into(),
                s => s.into(),
            },
        },
        "profile" => Request::UserSet {
            username: user(&username),
            changes: UserChanges {
                email: Some(get("email").to_owned()),
                full_name: Some(get("full_name").to_owned()),
                api_only: Some(get("api_only") == "on"),
            },
        },
        "login-ranges" => Request::UserSetLoginRanges {
            username: user(&username),
            ranges: match get("ranges").trim() {
                "" => "none".into(),
                s => s.replace(['\n', '\r', ' '], ","),
            },
        },
        "delete" => {
            // Deleting cannot be undone: the form asks for the username again.
            if crate::domain::canonical_username(get("confirm"))
                != crate::domain::canonical_username(&username)
            {
                return user_page(
                    page,
                    &username,
                    None,
                    Some("Type the username to confirm the deletion.".into()),
                );
            }
            Request::UserDelete {
                username: user(&username),
            }
        }
        _ => {
            return users_page(page, &none, None, Some("There is no such action.".into()));
        }
    };
    // Changes made on a user's own page go back to it; the table's buttons to the table.
    let back_to_user =
        matches!(action, "profile" | "login-ranges" | "rotation") && get("from") == "user";
    let answer = app.admin.perform(&actor, req).await;
    let result: Result<String, String> = match answer {
        Ok(Answer::Users { .. }) => Ok(format!("{username} was deleted.")),
        Ok(Answer::Rotated {
            user: u,
            masked_email,
            ..
        }) => {
            let msg = format!(
                "A new security token for {} was emailed to {masked_email}.",
                u.username
            );
            // An admin who reset their own token stays signed in.
            if u.id == me.id
                && let Ok(Some(fresh)) = app.store.user_by_id(&u.id)
            {
                let renewed = renew(app, page, me, &fresh);
                let next = page_after(app, page, &fresh, &renewed);
                return with_cookie(
                    &app.console,
                    users_page(&next, &none, Some(msg), None),
                    renewed,
                );
            }
            Ok(msg)
        }
        Ok(Answer::User { user: u, note, .. }) => {
            if u.disabled || u.api_only {
                app.console.end_user(&u.id);
            }
            let msg = match action {
                "disable" | "enable" => format!(
                    "{} is now {}.",
                    u.username,
                    if u.disabled { "disabled" } else { "enabled" }
                ),
                "reset-mfa" => {
                    app.console.end_user(&u.id);
                    format!(
                        "{}'s two-factor authentication was reset: they set it up again at their next sign-in.",
                        u.username
                    )
                }
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
            Ok(match note {
                Some(n) => format!("{msg} Note: {n}."),
                None => msg,
            })
        }
        Ok(_) => Err("Unexpected answer.".into()),
        Err(AdminError::Token(e)) => Err(token_failure(e).1),
        Err(e) => Err(e.to_string()),
    };
    if back_to_user || (result.is_err() && matches!(action, "profile" | "login-ranges" | "delete"))
    {
        let (notice, error) = match result {
            Ok(m) => (Some(m), None),
            Err(e) => (None, Some(e)),
        };
        return user_page(page, &username, notice, error);
    }
    match result {
        Ok(msg) => users_page(page, &none, Some(msg), None),
        Err(e) => users_page(page, &none, None, Some(e)),
    }
}

/// `setup/users/{username}`: one user's details and every change an admin can make to it.
pub(super) fn user_page(
    page: &Page<'_>,
    username: &str,
    notice: Option<String>,
    error: Option<String>,
) -> Response<Body> {
    let u = match page.app.users.show(username) {
        Ok(u) => u,
        Err(_) => {
            return page.message(
                StatusCode::NOT_FOUND,
                "Not found",
                "There is no such user.",
                &format!("{BASE}/setup/users"),
            );
        }
    };
    let when = |t: u64| format_ms(t.saturating_mul(1000));
    page.render(
        form_status(&error),
        "user.html",
        &format!("Setup: User {}", u.username),
        "users",
        context! {
            path => crate::wire::encode_component(&u.username),
            ranges => u.login_ranges.join("\n"),
            rotation => u.rotate_every_secs.map(|s| humantime::format_duration(Duration::from_secs(s)).to_string()).unwrap_or_default(),
            created => when(u.created_at),
            password_changed => when(u.password_changed_at),
            token_reset => when(u.token_reset_at),
            locked => u.locked_until.is_some(),
            u, notice, error,
        },
    )
}

/// `setup/audit`: the audit trail, newest first, filtered by actor, target and time.
pub(super) fn audit_page(page: &Page<'_>, q: &HashMap<String, String>) -> Response<Body> {
    let get = |k: &str| q.get(k).map(|s| s.trim()).filter(|s| !s.is_empty());
    let (records, error) = match crate::audit::Filter::from_query(get, 200) {
        Ok(filter) => match page.app.admin.audit.query(&filter) {
            Ok(r) => (r, None),
            Err(e) => (
                Vec::new(),
                Some(format!("The audit trail could not be read: {e}")),
            ),
        },
        Err(e) => (Vec::new(), Some(format!("{e}."))),
    };
    let rows: Vec<_> = records
        .iter()
        .map(|r| {
            context! {
                seq => r.seq, at => format_ms(r.at_ms), actor => &r.actor,
                address => &r.address, channel => r.channel.as_str(), action => &r.action,
                target => &r.target, changes => r.describe_changes(),
            }
        })
        .collect();
    let csv_query = serde_urlencoded::to_string(
        ["since", "actor", "target"]
            .iter()
            .filter_map(|k| get(k).map(|v| (*k, v)))
            .collect::<Vec<_>>(),
    )
    .unwrap_or_default();
    page.render(
        form_status(&error),
        "audit.html",
        "Setup: Audit Trail",
        "audit",
        context! {
            rows,
            since => get("since").unwrap_or_default(),
            actor => get("actor").unwrap_or_default(),
            target => get("target").unwrap_or_default(),
            csv_query, error,
        },
    )
}

/// `setup/audit.csv`: the filtered trail as CSV.
pub(super) fn audit_csv(app: &App, q: &HashMap<String, String>) -> Response<Body> {
    let get = |k: &str| q.get(k).map(String::as_str);
    let records = crate::audit::Filter::from_query(get, 100_000)
        .ok()
        .and_then(|f| app.admin.audit.query(&f).ok())
        .unwrap_or_default();
    harden(crate::wire::csv_download(
        crate::audit::to_csv(&records),
        "audit-trail.csv",
    ))
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
    pub(super) api_only: bool,
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
                api_only: u.api_only,
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

/// The ranges Setup → Login History offers (`range=`), the first the default: the table, the
/// charts and the CSV cover the range unless `since=` names another start.
const RANGES: [(&str, &str, u64); 3] = [
    ("24h", "Last 24 hours", 24),
    ("7d", "Last 7 days", 7 * 24),
    ("30d", "Last 30 days", 30 * 24),
];
/// The charts count at most this many rows of the range, the newest (as the CSV holds).
const CHART_ROWS: usize = 100_000;

/// The `range=` parameter: one of [`RANGES`], the first when absent.
fn history_range(
    q: &HashMap<String, String>,
) -> Result<&'static (&'static str, &'static str, u64), String> {
    match q.get("range").map(|r| r.trim()).filter(|r| !r.is_empty()) {
        None => Ok(&RANGES[0]),
        Some(r) => RANGES.iter().find(|(v, _, _)| *v == r).ok_or_else(|| {
            let known: Vec<&str> = RANGES.iter().map(|(v, _, _)| *v).collect();
            format!("range: '{r}' is not one of {}", known.join(", "))
        }),
    }
}

/// The page's filter: user, outcome, and the start of the range (`since=`, else `range=`
/// back from `now_ms`).
pub(super) fn history_filter(
    q: &HashMap<String, String>,
    now_ms: u64,
) -> Result<HistoryFilter, String> {
    let get = |k: &str| q.get(k).map(String::as_str);
    let (_, _, hours) = history_range(q)?;
    let mut filter = crate::history::filter(get("user"), get("since"), get("outcome"), 50)?;
    filter
        .since_ms
        .get_or_insert(now_ms.saturating_sub(hours * 3_600_000));
    Ok(filter)
}

pub(super) async fn history_page(page: &Page<'_>, q: &HashMap<String, String>) -> Response<Body> {
    let now = crate::history::now_ms();
    let (filter, error) = match history_filter(q, now) {
        Ok(f) => (f, None),
        Err(e) => (
            HistoryFilter {
                since_ms: Some(now.saturating_sub(RANGES[0].2 * 3_600_000)),
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
    let charts = history_charts(page.app, &filter, now).await;
    let param =
        |k: &str| crate::wire::encode_component(q.get(k).map(String::as_str).unwrap_or_default());
    let params = |p: usize| {
        format!(
            "user={}&outcome={}&range={}&since={}&page={p}",
            param("user"),
            param("outcome"),
            param("range"),
            param("since"),
        )
    };
    let outcomes: Vec<&str> = Outcome::ALL.iter().map(|o| o.as_str()).collect();
    let ranges: Vec<_> = RANGES
        .iter()
        .map(|(value, label, _)| context! { value, label })
        .collect();
    let f_range = history_range(q).map_or(RANGES[0].0, |r| r.0);
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
            rows => found, show_reason => true, outcomes, ranges, page => pg,
            empty => "No logins in this range.",
            f_user => q.get("user").cloned().unwrap_or_default(),
            f_outcome => q.get("outcome").cloned().unwrap_or_default(),
            f_since => q.get("since").cloned().unwrap_or_default(),
            f_range,
            prev => (pg > 1).then(|| format!("{BASE}/setup/history?{}", params(pg - 1))),
            next => more.then(|| format!("{BASE}/setup/history?{}", params(pg + 1))),
            csv => format!("{BASE}/setup/history.csv?{}", params(1)),
            charts,
            error,
        },
    )
}

/// The charts of the page's range, drawn from the same query as the table but with up to
/// [`CHART_ROWS`] rows; the note says when the range holds more than were counted, or that the
/// history could not be read.
async fn history_charts(app: &App, filter: &HistoryFilter, now_ms: u64) -> minijinja::Value {
    let start_ms = filter.since_ms.unwrap_or(0);
    let wanted = HistoryFilter {
        limit: CHART_ROWS + 1,
        ..filter.clone()
    };
    let store = app.store.clone();
    let mut found = match tokio::task::spawn_blocking(move || store.history_query(&wanted)).await {
        Ok(Ok(rows)) => rows,
        failed => {
            match failed {
                Ok(Err(e)) => tracing::error!(error = %e, "cannot read the login history"),
                _ => tracing::error!("the login-history query task failed"),
            }
            return context! {
                note => "The charts cannot be drawn: the login history could not be read.",
            };
        }
    };
    let partial = found.len() > CHART_ROWS;
    found.truncate(CHART_ROWS);
    // Rows written while the query ran are inside the range too.
    let end_ms = crate::history::now_ms().max(now_ms) + 1;
    let tally = chart::Tally::count(&found, chart::Range { start_ms, end_ms }, partial);
    let note = partial.then(|| {
        format!(
            "The charts count the newest {} logins of this range, back to {}; older logins \
             in the range are not counted (the table lists them all).",
            thousands(CHART_ROWS),
            found.last().map(|r| format_ms(r.at_ms)).unwrap_or_default()
        )
    });
    context! {
        periods => minijinja::Value::from_safe_string(tally.periods_svg()),
        clients => minijinja::Value::from_safe_string(tally.clients_svg()),
        note,
    }
}

/// 100000 as "100,000".
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub(super) async fn history_csv(app: &App, q: &HashMap<String, String>) -> Response<Body> {
    let Ok(mut filter) = history_filter(q, crate::history::now_ms()) else {
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
