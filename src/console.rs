//! The web console under `/tokengate/console/`: sign-in, My Settings ("Reset My Security
//! Token", Change Password, recent logins) and, for admins, Setup pages for users, Compliance BCC
//! Email and the login history.
//!
//! Server-rendered with minijinja, which escapes every value in `.html` templates; one small
//! stylesheet; no JavaScript. Console sessions are separate from API sessions and live in a
//! `__Host-` cookie (`Secure; HttpOnly; SameSite=Strict`) with idle and absolute timeouts;
//! every form carries a CSRF token bound to the console session. Every action calls the same
//! `Users`/`Tokens`/`Admin` code as the admin API and the CLI.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use minijinja::{Environment, context};
use serde::Serialize;

use crate::admin::NewUser;
use crate::auth::{Attempt, AuthError, Dialect};
use crate::history::{Outcome, format_ms};
use crate::mail::{ComplianceBcc, TokenReason, mask_email};
use crate::secret::{Domain, Secrets, Tag, constant_time_eq};
use crate::server::App;
use crate::server::{Client, ReqBody};
use crate::store::{HistoryFilter, User};
use crate::wire::{Body, full};

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("template error: {0}")]
    Template(#[from] minijinja::Error),
}

pub const COOKIE: &str = "__Host-tg_console";
const BASE: &str = "/tokengate/console";
const PAGE_SIZE: usize = 20;
const MAX_SESSIONS: usize = 10_000;

struct ConsoleSession {
    user_id: String,
    /// The user's session epoch at sign-in: a console session ends with the user's API
    /// sessions (disable, password change, token reset, lock, login-range change).
    epoch: u64,
    csrf: String,
    created: u64,
    last_seen: AtomicU64,
}

impl ConsoleSession {
    /// Whole seconds, as for API sessions: at least the idle time and lifetime, never less.
    fn live(&self, now: u64, limits: &Limits) -> bool {
        now <= self.created + limits.lifetime
            && now <= self.last_seen.load(Ordering::Relaxed) + limits.idle
    }
}

/// How long a console sign-in lasts, in seconds (`[console]`).
struct Limits {
    idle: u64,
    lifetime: u64,
}

pub struct Console {
    env: Environment<'static>,
    sessions: DashMap<Tag, Arc<ConsoleSession>>,
    secrets: Arc<Secrets>,
    limits: Limits,
}

impl Console {
    pub fn new(
        secrets: Arc<Secrets>,
        cfg: crate::config::ConsoleConfig,
    ) -> Result<Self, ConsoleError> {
        let mut env = Environment::new();
        for (name, src) in [
            ("base.html", include_str!("../templates/console/base.html")),
            (
                "signin.html",
                include_str!("../templates/console/signin.html"),
            ),
            (
                "settings.html",
                include_str!("../templates/console/settings.html"),
            ),
            (
                "confirm_reset.html",
                include_str!("../templates/console/confirm_reset.html"),
            ),
            (
                "history_table.html",
                include_str!("../templates/console/history_table.html"),
            ),
            (
                "users.html",
                include_str!("../templates/console/users.html"),
            ),
            (
                "compliance.html",
                include_str!("../templates/console/compliance.html"),
            ),
            (
                "history.html",
                include_str!("../templates/console/history.html"),
            ),
            (
                "message.html",
                include_str!("../templates/console/message.html"),
            ),
        ] {
            env.add_template(name, src)?;
        }
        Ok(Self {
            env,
            sessions: DashMap::new(),
            secrets,
            limits: Limits {
                idle: cfg.session_idle_timeout.as_secs().max(1),
                lifetime: cfg.session_lifetime.as_secs().max(1),
            },
        })
    }

    fn key(&self, sid: &str) -> Tag {
        // Console sessions use the session domain with a prefix, apart from API sessions.
        self.secrets
            .tag(Domain::Session, &[b"console", sid.as_bytes()])
    }

    fn create(&self, user: &User) -> Option<(String, Arc<ConsoleSession>)> {
        let now = crate::now_secs();
        if self.sessions.len() >= MAX_SESSIONS {
            self.sessions.retain(|_, s| s.live(now, &self.limits));
            if self.sessions.len() >= MAX_SESSIONS {
                return None;
            }
        }
        let sid = self.secrets.generate_session_secret().ok()?;
        let csrf = self.secrets.generate_session_secret().ok()?;
        let session = Arc::new(ConsoleSession {
            user_id: user.id.clone(),
            epoch: user.session_epoch,
            csrf,
            created: now,
            last_seen: AtomicU64::new(now),
        });
        self.sessions.insert(self.key(&sid), session.clone());
        Some((sid, session))
    }

    /// Ends the console session whose CSRF token is `csrf` (sign-out, renewal).
    fn end(&self, csrf: &str) {
        self.sessions.retain(|_, s| s.csrf != csrf);
    }

    fn lookup(&self, sid: &str) -> Option<Arc<ConsoleSession>> {
        if sid.len() > 128 {
            return None;
        }
        let key = self.key(sid);
        let s = self.sessions.get(&key).map(|r| r.value().clone())?;
        let now = crate::now_secs();
        if !s.live(now, &self.limits) {
            self.sessions.remove(&key);
            return None;
        }
        s.last_seen.store(now, Ordering::Relaxed);
        Some(s)
    }

    /// Ends every console session of a user (after a credential change or a disable).
    pub fn end_user(&self, user_id: &str) {
        self.sessions.retain(|_, s| s.user_id != user_id);
    }
}

/// Whether `path` is the console's.
pub fn owns(path: &str) -> bool {
    path == BASE || path.starts_with("/tokengate/console/")
}

/// A 403 page with `message`, for requests refused before the console saw them.
pub fn forbidden(app: &App, message: &str) -> Response<Body> {
    Page {
        app,
        me: None,
        csrf: String::new(),
    }
    .message(StatusCode::FORBIDDEN, "Forbidden", message, BASE)
}

/// After the signed-in user's own action moved their session epoch on (a password change, a
/// token reset), the console session has ended with the others: a fresh one keeps the user
/// who acted signed in. None when nothing ended it.
fn renew(
    app: &App,
    old: &Page<'_>,
    before: &User,
    after: &User,
) -> Option<(String, Arc<ConsoleSession>)> {
    if after.session_epoch == before.session_epoch || after.disabled {
        return None;
    }
    app.console.end(&old.csrf);
    app.console.create(after)
}

/// The page to render after an action by `user`: with the renewed session's CSRF token when
/// the session was renewed.
fn page_after<'a>(
    app: &'a App,
    page: &Page<'_>,
    user: &'a User,
    renewed: &Option<(String, Arc<ConsoleSession>)>,
) -> Page<'a> {
    Page {
        app,
        me: Some(user),
        csrf: renewed
            .as_ref()
            .map_or_else(|| page.csrf.clone(), |(_, s)| s.csrf.clone()),
    }
}

/// Sets the renewed session's cookie on `r`.
fn with_cookie(
    console: &Console,
    mut r: Response<Body>,
    renewed: Option<(String, Arc<ConsoleSession>)>,
) -> Response<Body> {
    if let Some((sid, _)) = renewed
        && let Ok(v) = HeaderValue::from_str(&console.session_cookie(&sid))
    {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

fn cookie_value(req: &Request<ReqBody>) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_owned())
}

/// Security headers every console answer carries.
fn harden(mut r: Response<Body>) -> Response<Body> {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Not "no-referrer": under it browsers send `Origin: null` with the console's own form
    // posts, which the cross-site check cannot tell from a sandboxed attacker's.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn redirect(to: &str, cookie: Option<String>) -> Response<Body> {
    let mut r = Response::new(full(""));
    *r.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    if let Some(c) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        r.headers_mut().insert(header::SET_COOKIE, c);
    }
    harden(r)
}

impl Console {
    fn session_cookie(&self, sid: &str) -> String {
        let max_age = self.limits.lifetime;
        format!("{COOKIE}={sid}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={max_age}")
    }
}

fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0")
}

#[derive(Serialize)]
struct Me {
    username: String,
    admin: bool,
}

struct Page<'a> {
    app: &'a App,
    me: Option<&'a User>,
    csrf: String,
}

impl Page<'_> {
    fn render(
        &self,
        status: StatusCode,
        template: &str,
        title: &str,
        section: &str,
        extra: minijinja::Value,
    ) -> Response<Body> {
        let ctx = context! {
            title, section,
            brand => self.app.tokens.mailer().brand(),
            me => self.me.map(|u| Me { username: u.username.clone(), admin: u.admin }),
            csrf => &self.csrf,
            ..extra
        };
        let html = match self
            .app
            .console
            .env
            .get_template(template)
            .and_then(|t| t.render(ctx))
        {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(error = %e, template, "console template failed");
                return harden(crate::wire::respond(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain; charset=utf-8",
                    "internal error",
                ));
            }
        };
        harden(crate::wire::respond(
            status,
            "text/html; charset=utf-8",
            html,
        ))
    }

    fn message(
        &self,
        status: StatusCode,
        title: &str,
        message: &str,
        back: &str,
    ) -> Response<Body> {
        self.render(
            status,
            "message.html",
            title,
            "",
            context! { message, back },
        )
    }
}

async fn form(app: &App, req: Request<ReqBody>) -> Option<HashMap<String, String>> {
    let (parts, body) = req.into_parts();
    let (bytes, _held) = crate::server::body::read(
        body,
        &parts.headers,
        app.cfg.server.max_login_body_bytes,
        app.cfg.server.body_read_timeout,
        &app.bodies,
    )
    .await
    .ok()?;
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&bytes).ok()?;
    let mut map = HashMap::new();
    for (k, v) in pairs {
        map.entry(k).or_insert(v);
    }
    Some(map)
}

fn query(req: &Request<ReqBody>) -> HashMap<String, String> {
    req.uri()
        .query()
        .and_then(|q| serde_urlencoded::from_str::<Vec<(String, String)>>(q).ok())
        .unwrap_or_default()
        .into_iter()
        .collect()
}

fn enc(s: &str) -> String {
    serde_urlencoded::to_string([("", s)])
        .map(|e| e[1..].to_owned())
        .unwrap_or_default()
}

#[derive(Serialize)]
struct Row {
    time: String,
    username: String,
    source_ip: String,
    dialect: String,
    client: Option<String>,
    outcome: String,
    reason: Option<String>,
}

/// Login-history rows for a page. The query runs on the blocking pool: a late page of the
/// history skips up to 50,000 rows.
async fn rows(app: &App, filter: &HistoryFilter, skip: usize, with_reason: bool) -> Vec<Row> {
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
            include_str!("../templates/console/style.css"),
        );
        r.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=3600"),
        );
        return r;
    }
    if rest == "signin" {
        return signin(&app, req, peer, method).await;
    }
    // Everything else needs a console session whose user has not moved on since sign-in and
    // is used from inside the user's login ranges (the same rule as API sessions).
    let Some((session, user)) = cookie_value(&req).and_then(|sid| {
        let s = app.console.lookup(&sid)?;
        let u = app
            .store
            .user_by_id(&s.user_id)
            .ok()
            .flatten()
            .filter(|u| !u.disabled && u.session_epoch == s.epoch && u.allows(peer.ip))?;
        Some((s, u))
    }) else {
        let expired = cookie_value(&req).is_some();
        return redirect(
            &format!("{BASE}/signin{}", if expired { "?expired=1" } else { "" }),
            expired.then(clear_cookie),
        );
    };
    let page = Page {
        app: &app,
        me: Some(&user),
        csrf: session.csrf.clone(),
    };
    if method == Method::POST {
        let Some(f) = form(&app, req).await else {
            return page.message(
                StatusCode::BAD_REQUEST,
                "Bad request",
                "The form could not be read.",
                BASE,
            );
        };
        let sent = f.get("csrf").map(String::as_str).unwrap_or_default();
        if !constant_time_eq(sent.as_bytes(), session.csrf.as_bytes()) {
            return page.message(StatusCode::FORBIDDEN, "Forbidden", "The form was not sent from this console (invalid or missing CSRF token). Reload the page and try again.", BASE);
        }
        return post(&app, &page, &user, &rest, f, peer).await;
    }
    match rest.as_str() {
        "" => redirect(&format!("{BASE}/settings"), None),
        "settings" => settings(&page, &user, None, None).await,
        "settings/reset-token" => page.render(
            StatusCode::OK,
            "confirm_reset.html",
            "Reset My Security Token",
            "settings",
            context! { masked_email => mask_email(&user.email) },
        ),
        s if s.starts_with("setup/") => {
            if !user.admin {
                return page.message(
                    StatusCode::FORBIDDEN,
                    "Forbidden",
                    "Setup pages are for administrators.",
                    &format!("{BASE}/settings"),
                );
            }
            let q = query(&req);
            match s {
                "setup/users" => users_page(&page, &q, None, None),
                "setup/compliance" => compliance_page(&page, None, None),
                "setup/history" => history_page(&page, &q).await,
                "setup/history.csv" => history_csv(&app, &q).await,
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

async fn signin(app: &App, req: Request<ReqBody>, peer: Client, method: Method) -> Response<Body> {
    let page = Page {
        app,
        me: None,
        csrf: String::new(),
    };
    if method != Method::POST {
        let expired = query(&req).contains_key("expired");
        let notice = expired.then_some("Your console session expired. Sign in again.");
        return page.render(
            StatusCode::OK,
            "signin.html",
            "Sign in",
            "",
            context! { notice, username => "" },
        );
    }
    let client = req
        .headers()
        .get("user-agent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let Some(f) = form(app, req).await else {
        return page.render(
            StatusCode::BAD_REQUEST,
            "signin.html",
            "Sign in",
            "",
            context! { error => "The form could not be read.", username => "" },
        );
    };
    let username = f.get("username").cloned().unwrap_or_default();
    let password = f.get("password").cloned().unwrap_or_default();
    let attempt = Attempt {
        username: &username,
        secret: &password,
        ip: peer.ip,
        dialect: Dialect::Console,
        api_version: None,
        client: client.as_deref(),
        tls: peer.tls,
        password_only: true,
    };
    let fail = |status: StatusCode, error: String| {
        page.render(
            status,
            "signin.html",
            "Sign in",
            "",
            context! { error, username => username.clone() },
        )
    };
    match app.auth.login(&attempt).await {
        Ok(v) => match app.console.create(&v.user) {
            Some((sid, _)) => redirect(
                &format!("{BASE}/settings"),
                Some(app.console.session_cookie(&sid)),
            ),
            None => fail(
                StatusCode::SERVICE_UNAVAILABLE,
                "Too many console sessions; try again later.".into(),
            ),
        },
        // A password alone proves nothing a guesser could not have tried: a locked account
        // answers exactly like a wrong password, or the lock would confirm the guess. The
        // owner learns of the lock by email.
        Err(AuthError::Rejected(_) | AuthError::Locked { .. }) => fail(
            StatusCode::UNAUTHORIZED,
            "Invalid username or password, or the account is locked.".into(),
        ),
        Err(AuthError::RateLimited { retry_after }) => fail(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "Too many sign-in attempts. Try again in {} seconds.",
                crate::limit::retry_after_secs(retry_after)
            ),
        ),
        Err(AuthError::Busy) => fail(
            StatusCode::SERVICE_UNAVAILABLE,
            "The server is busy; try again in a moment.".into(),
        ),
        Err(AuthError::Store(_)) => fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            "An internal error occurred.".into(),
        ),
    }
}

async fn settings(
    page: &Page<'_>,
    user: &User,
    notice: Option<String>,
    error: Option<String>,
) -> Response<Body> {
    let filter = HistoryFilter {
        user: Some(user.id.clone()),
        limit: 10,
        ..Default::default()
    };
    let status = if error.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    page.render(
        status,
        "settings.html",
        "My Settings",
        "settings",
        context! {
            user => crate::admin::UserView::from(user),
            token_reset => format_ms(user.token_reset_at * 1000),
            masked_email => mask_email(&user.email),
            policy => page.app.tokens.policy().describe(),
            rows => rows(page.app, &filter, 0, false).await,
            show_reason => false,
            notice, error,
        },
    )
}

fn token_failure(e: &crate::tokens::TokenError) -> (StatusCode, String) {
    use crate::tokens::TokenError;
    match e {
        TokenError::Delivery(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "The new security token could not be emailed, so your current token still works. Try again later.".into(),
        ),
        TokenError::Policy(p) => (StatusCode::BAD_REQUEST, format!("The new password must have {p}.")),
        other => (StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
    }
}

async fn post(
    app: &App,
    page: &Page<'_>,
    me: &User,
    rest: &str,
    f: HashMap<String, String>,
    peer: Client,
) -> Response<Body> {
    let get = |k: &str| f.get(k).map(String::as_str).unwrap_or_default();
    match rest {
        "signout" => {
            app.console.end(&page.csrf);
            redirect(&format!("{BASE}/signin"), Some(clear_cookie()))
        }
        "settings/reset-token" => match app.tokens.rotate(&me.id, TokenReason::Requested).await {
            Ok(r) => {
                let renewed = renew(app, page, me, &r.user);
                let next = page_after(app, page, &r.user, &renewed);
                let notice = format!("A new security token was emailed to {}.", r.masked_email);
                with_cookie(
                    &app.console,
                    settings(&next, &r.user, Some(notice), None).await,
                    renewed,
                )
            }
            Err(e) => {
                let (status, msg) = token_failure(&e);
                page.message(
                    status,
                    "Reset My Security Token",
                    &msg,
                    &format!("{BASE}/settings"),
                )
            }
        },
        "settings/password" => {
            // Verified like a login: a wrong one counts toward lockout and is in the history.
            let attempt = Attempt {
                username: &me.username,
                secret: get("current_password"),
                ip: peer.ip,
                dialect: Dialect::Password,
                api_version: None,
                client: None,
                tls: peer.tls,
                password_only: true,
            };
            if !matches!(app.auth.login(&attempt).await, Ok(v) if v.user.id == me.id) {
                return settings(
                    page,
                    me,
                    None,
                    Some("The current password is not right.".into()),
                )
                .await;
            }
            match app
                .tokens
                .change_password(&me.id, get("new_password"))
                .await
            {
                Ok(r) => {
                    let notice = if app.tokens.mailer().is_configured() {
                        format!(
                            "Your password was changed and a new security token was emailed to {}.",
                            r.masked_email
                        )
                    } else {
                        "Your password was changed.".into()
                    };
                    let renewed = renew(app, page, me, &r.user);
                    let next = page_after(app, page, &r.user, &renewed);
                    with_cookie(
                        &app.console,
                        settings(&next, &r.user, Some(notice), None).await,
                        renewed,
                    )
                }
                Err(e) => settings(page, me, None, Some(token_failure(&e).1)).await,
            }
        }
        s if s.starts_with("setup/") => {
            if !me.admin {
                return page.message(
                    StatusCode::FORBIDDEN,
                    "Forbidden",
                    "Setup pages are for administrators.",
                    &format!("{BASE}/settings"),
                );
            }
            setup_post(app, page, me, s, &f).await
        }
        _ => page.message(
            StatusCode::NOT_FOUND,
            "Not found",
            "There is no such form.",
            BASE,
        ),
    }
}

async fn setup_post(
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
    let name = serde_urlencoded::from_str::<Vec<(String, String)>>(&format!(
        "u={}",
        name.replace('+', "%2B")
    ))
    .ok()
    .and_then(|v| v.into_iter().next())
    .map(|(_, v)| v)
    .unwrap_or_default();
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
                Err(e) => Err(token_failure(&e).1),
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
struct Action {
    action: &'static str,
    label: &'static str,
}

#[derive(Serialize)]
struct UserRow {
    username: String,
    path: String,
    full_name: String,
    email: String,
    disabled: bool,
    locked: bool,
    admin: bool,
    rotation: String,
    actions: Vec<Action>,
}

fn users_page(
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
    let link = |p: usize| format!("{BASE}/setup/users?q={}&page={p}", enc(&needle));
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
            UserRow {
                path: enc(&u.username),
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
    let status = if error.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    page.render(
        status,
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

fn compliance_page(
    page: &Page<'_>,
    notice: Option<String>,
    error: Option<String>,
) -> Response<Body> {
    let setting = ComplianceBcc::load(page.app.store.as_ref()).unwrap_or_default();
    let status = if error.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    page.render(
        status,
        "compliance.html",
        "Setup: Compliance BCC Email",
        "compliance",
        context! { setting, notice, error },
    )
}

fn history_filter(q: &HashMap<String, String>) -> Result<HistoryFilter, String> {
    let get = |k: &str| q.get(k).map(String::as_str);
    crate::history::filter(get("user"), get("since"), get("outcome"), 50)
}

async fn history_page(page: &Page<'_>, q: &HashMap<String, String>) -> Response<Body> {
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
            enc(q.get("user").map(String::as_str).unwrap_or_default()),
            enc(q.get("outcome").map(String::as_str).unwrap_or_default()),
            enc(q.get("since").map(String::as_str).unwrap_or_default()),
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

async fn history_csv(app: &App, q: &HashMap<String, String>) -> Response<Body> {
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
