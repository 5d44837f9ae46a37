//! Setup pages, for admins: Compliance BCC Email, the login history and the audit trail
//! (Setup → Users is `users`).

use std::collections::HashMap;

use http::{Response, StatusCode};
use minijinja::context;
use serde::Serialize;

use super::chart;
use super::form::FormErrors;
use super::page::{Page, harden};
use super::session::Flash;
use super::{BASE, Form};
use crate::admin::Request;
use crate::audit::{Actor, Channel};
use crate::domain::Outcome;
use crate::history::format_ms;
use crate::mail::ComplianceBcc;
use crate::server::{App, Client};
use crate::store::{HistoryFilter, User};
use crate::wire::Body;

/// The Setup forms: Compliance BCC Email here, Setup → Users in `users`.
pub(super) async fn setup_post(
    app: &App,
    page: &Page<'_>,
    me: &User,
    path: &str,
    f: &Form,
    peer: Client,
) -> Response<Body> {
    let get = |k: &str| f.get(k).map(String::as_str).unwrap_or_default();
    if path == "setup/users" || path.starts_with("setup/users/") {
        return super::users::post(app, page, me, path, f, peer).await;
    }
    if path != "setup/compliance" {
        return page.message(
            StatusCode::NOT_FOUND,
            "Not found",
            "There is no such form.",
            BASE,
        );
    }
    let actor = Actor::admin(&me.username, peer.ip, Channel::Console);
    let address = Some(get("address").trim().to_owned()).filter(|a| !a.is_empty());
    let enabled = get("enabled") == "on";
    if enabled && address.is_none() {
        return compliance_page(
            page,
            Some(f),
            Some("An address is required to enable the copy.".into()),
        );
    }
    let req = Request::ComplianceSet {
        address,
        disable: !enabled,
        redact: Some(get("redact_secrets") == "on"),
    };
    match app.admin.perform(&actor, req).await {
        Ok(_) => page.done(
            &format!("{BASE}/setup/compliance"),
            Flash::success("Saved."),
        ),
        Err(e) => compliance_page(page, Some(f), Some(e.to_string())),
    }
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
    let errors = FormErrors::naming(error, &[("since", "as"), ("actor", "aa"), ("target", "at")]);
    page.render(
        errors.status(),
        "audit.html",
        "Setup: Audit Trail",
        "audit",
        context! {
            rows,
            since => get("since").unwrap_or_default(),
            actor => get("actor").unwrap_or_default(),
            target => get("target").unwrap_or_default(),
            csv_query, form_errors => errors.context(),
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

/// `setup/compliance`; `typed` is what a refused form held, shown again.
pub(super) fn compliance_page(
    page: &Page<'_>,
    typed: Option<&Form>,
    error: Option<String>,
) -> Response<Body> {
    let mut setting = ComplianceBcc::load(page.app.store.as_ref()).unwrap_or_default();
    if let Some(f) = typed {
        setting.enabled = f.get("enabled").map(String::as_str) == Some("on");
        setting.address = f.get("address").map(|a| a.trim().to_owned());
        setting.redact_secrets = f.get("redact_secrets").map(String::as_str) == Some("on");
    }
    let errors = FormErrors::on("address", error);
    page.render(
        errors.status(),
        "compliance.html",
        "Setup: Compliance BCC Email",
        "compliance",
        context! { setting, form_errors => errors.context() },
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
    let errors = FormErrors::naming(
        error,
        &[
            ("range", "hr"),
            ("user", "hu"),
            ("outcome", "ho"),
            ("since", "hs"),
        ],
    );
    page.render(
        errors.status(),
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
            form_errors => errors.context(),
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
    /// When, readable ("29 Nov 2026, 17:05 UTC") and as RFC 3339.
    pub(super) at: super::users::When,
    pub(super) username: String,
    pub(super) source_ip: String,
    pub(super) dialect: String,
    pub(super) client: Option<String>,
    /// The client's short name ("jsforce 3.10", "Data Loader 59.0", "curl 8.5").
    pub(super) client_short: Option<String>,
    pub(super) outcome: String,
    pub(super) reason: Option<String>,
}

/// Characters of a client named by no product token (an OAuth client_id) shown in a table.
const CLIENT_CHARS: usize = 24;

/// A login's client in a few words: the product and its version to the minor from a
/// User-Agent (RFC 9110 §10.1.5: `product/version` tokens, the first naming the client), the
/// browser and its major version for a browser's, Data Loader by its name; anything else cut
/// to [`CLIENT_CHARS`].
pub(super) fn short_client(full: &str) -> String {
    let full = full.trim();
    let version = |v: &str, parts: usize| {
        v.split(|c: char| !(c.is_ascii_alphanumeric() || c == '.'))
            .next()
            .unwrap_or_default()
            .split('.')
            .take(parts)
            .collect::<Vec<_>>()
            .join(".")
    };
    let after = |token: &str| full.find(token).map(|i| &full[i + token.len()..]);
    if full.starts_with("Mozilla/") {
        // Order matters: Edge and Opera say Chrome too, Chrome says Safari too.
        for (token, name) in [
            ("Edg/", "Edge"),
            ("OPR/", "Opera"),
            ("Firefox/", "Firefox"),
            ("Chrome/", "Chrome"),
            ("Version/", "Safari"),
        ] {
            if let Some(v) = after(token) {
                return format!("{name} {}", version(v, 1));
            }
        }
        return "Browser".into();
    }
    let first = full.split_whitespace().next().unwrap_or_default();
    let short = match first.split_once('/') {
        Some((name, v)) if name.starts_with("DataLoader") => {
            format!("Data Loader {}", version(v, 2))
        }
        Some((name, v)) if !name.is_empty() && !v.is_empty() => {
            format!("{name} {}", version(v, 2))
        }
        _ => first.to_owned(),
    };
    match short.char_indices().nth(CLIENT_CHARS) {
        Some((at, _)) => format!("{}…", &short[..at]),
        None => short,
    }
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
            at: super::users::when_ms(r.at_ms, &app.cfg.console.time_zone),
            username: r.username,
            source_ip: r.source_ip,
            dialect: r.dialect,
            client_short: r.client.as_deref().map(short_client),
            client: r.client,
            outcome: r.outcome,
            reason: if with_reason { r.reason } else { None },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::short_client;

    #[test]
    fn clients_get_short_names() {
        for (full, short) in [
            ("jsforce/3.10.16", "jsforce 3.10"),
            ("curl/8.5.0", "curl 8.5"),
            ("python-requests/2.31.0", "python-requests 2.31"),
            ("DataLoaderBulkUI/59.0.0 (Windows)", "Data Loader 59.0"),
            (
                "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.6099.71 Safari/537.36",
                "Chrome 120",
            ),
            (
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36 Edg/120.0.2210.91",
                "Edge 120",
            ),
            (
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_1) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Safari/605.1.15",
                "Safari 17",
            ),
            (
                "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
                "Firefox 121",
            ),
            ("MyIntegration", "MyIntegration"),
            (
                "3MVG9xOCXq4ID1uFCFhsNqXNRmGQ6BdaJyklO2XSeYMUDAaVNkX",
                "3MVG9xOCXq4ID1uFCFhsNqXN…",
            ),
        ] {
            assert_eq!(short_client(full), short, "{full}");
        }
    }
}
