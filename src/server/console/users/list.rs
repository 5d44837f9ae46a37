//! The Users list: its views, search, natural sort and pages ([`ListState`], travelling with
//! every form), the last login of each user on the page, and the bulk actions on the users
//! ticked in it.

use super::*;

/// Users a bulk action may name at once: a page of the list.
pub(super) const MAX_BULK: usize = PAGE_SIZE;

/// The list's views (`view=`), the first the default.
pub(super) const VIEWS: [(&str, &str); 6] = [
    ("all", "All users"),
    ("active", "Active"),
    ("disabled", "Disabled"),
    ("locked", "Locked"),
    ("admins", "Admins"),
    ("api", "API only"),
];

/// The sortable columns (`sort=`): the key and the column's header.
pub(super) const SORTS: [(&str, &str); 6] = [
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
pub(in crate::server::console) struct ListState {
    pub(in crate::server::console) view: &'static str,
    pub(in crate::server::console) q: String,
    pub(in crate::server::console) sort: &'static str,
    pub(in crate::server::console) desc: bool,
    pub(in crate::server::console) page: usize,
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
    pub(in crate::server::console) fn from_query(get: impl Fn(&str) -> Option<String>) -> Self {
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
    pub(in crate::server::console) fn from_list(list: Option<&str>) -> Self {
        let pairs: Vec<(String, String)> = list
            .and_then(|l| serde_urlencoded::from_str(l).ok())
            .unwrap_or_default();
        Self::from_query(|k| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
    }

    /// The query string of this state (percent-encoded by `serde_urlencoded`).
    pub(in crate::server::console) fn query(&self) -> String {
        serde_urlencoded::to_string([
            ("view", self.view),
            ("q", self.q.as_str()),
            ("sort", self.sort),
            ("dir", if self.desc { "desc" } else { "asc" }),
            ("page", &self.page.to_string()),
        ])
        .unwrap_or_default()
    }

    pub(in crate::server::console) fn url(&self) -> String {
        format!("{BASE}/setup/users?{}", self.query())
    }

    /// `list=` and this state, for a link to a page that comes back here.
    pub(in crate::server::console) fn param(&self) -> String {
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
pub(super) fn status(u: &UserView) -> &'static str {
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
pub(in crate::server::console) fn natural(a: &str, b: &str) -> Ordering {
    alphanumeric_sort::compare_str(a.to_lowercase(), b.to_lowercase()).then_with(|| a.cmp(b))
}

/// Sorts `users` by `sort` (the username breaks ties); `last` is each user's last login.
pub(super) fn sort_users(
    users: &mut [UserView],
    sort: &str,
    desc: bool,
    last: &HashMap<String, u64>,
) {
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
pub(super) async fn last_logins(app: &App, ids: Vec<String>) -> HashMap<String, u64> {
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
pub(super) const LAST_LOGIN_ROWS: usize = 100_000;

/// A time for people in the console's zone (`[console] time_zone`; the server cannot know
/// the browser's): "29 Nov 2026, 12:05 EST", with the RFC 3339 UTC value for
/// `<time datetime>` and the hover title.
#[derive(Serialize)]
pub(in crate::server::console) struct When {
    pub(in crate::server::console) text: String,
    pub(in crate::server::console) iso: String,
}

pub(in crate::server::console) fn when_ms(ms: u64, zone: &jiff::tz::TimeZone) -> When {
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
pub(super) struct Row {
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
pub(super) struct Column {
    key: &'static str,
    label: &'static str,
    href: String,
    /// `aria-sort` of the column the list is sorted by.
    aria_sort: Option<&'static str>,
}

/// `setup/users`: the list.
pub(in crate::server::console) async fn users_page(
    page: &Page<'_>,
    list: &ListState,
) -> Response<Body> {
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

/// Bulk "Reset token" or "Disable" for the selected users: one confirmation page naming them,
/// then each through `Admin::perform` (audited one by one, each under the same rules).
pub(super) async fn bulk(
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
