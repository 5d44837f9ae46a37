//! Console sessions: a random id in a `__Host-` cookie, kept as its keyed hash; a CSRF token
//! per session that every form must return; idle and absolute timeouts (`[console]`), whole
//! seconds, never shorter than configured. A console session ends with the user's API sessions
//! (its session epoch) and is renewed after the user's own password change or token reset.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use http::header::{self, HeaderValue};
use http::{Request, Response};
use minijinja::Environment;

use super::page::Page;
use super::{COOKIE, ConsoleError, MAX_SESSIONS};
use crate::secret::{Domain, Secrets, Tag, constant_time_eq};
use crate::server::{App, ReqBody};
use crate::store::User;
use crate::wire::Body;

pub(super) struct ConsoleSession {
    pub(super) user_id: String,
    /// The user's session epoch at sign-in: a console session ends with the user's API
    /// sessions (disable, password change, token reset, lock, login-range change).
    pub(super) epoch: u64,
    pub(super) csrf: String,
    pub(super) created: u64,
    pub(super) last_seen: AtomicU64,
}

impl ConsoleSession {
    /// Whole seconds, as for API sessions: at least the idle time and lifetime, never less.
    fn live(&self, now: u64, limits: &Limits) -> bool {
        now <= self.created + limits.lifetime
            && now <= self.last_seen.load(Ordering::Relaxed) + limits.idle
    }
}

/// How long a console sign-in lasts, in seconds (`[console]`).
pub(super) struct Limits {
    pub(super) idle: u64,
    pub(super) lifetime: u64,
}

pub struct Console {
    pub(super) env: Environment<'static>,
    pub(super) sessions: DashMap<Tag, Arc<ConsoleSession>>,
    pub(super) secrets: Arc<Secrets>,
    pub(super) limits: Limits,
}

impl ConsoleSession {
    /// Whether a form's CSRF token is this session's (compared in constant time).
    pub(super) fn csrf_matches(&self, sent: &str) -> bool {
        constant_time_eq(sent.as_bytes(), self.csrf.as_bytes())
    }
}

impl Console {
    pub fn new(
        secrets: Arc<Secrets>,
        cfg: crate::config::ConsoleConfig,
    ) -> Result<Self, ConsoleError> {
        let env = super::page::templates()?;
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

    pub(super) fn create(&self, user: &User) -> Option<(String, Arc<ConsoleSession>)> {
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
    pub(super) fn end(&self, csrf: &str) {
        self.sessions.retain(|_, s| s.csrf != csrf);
    }

    pub(super) fn lookup(&self, sid: &str) -> Option<Arc<ConsoleSession>> {
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

impl Console {
    pub(super) fn session_cookie(&self, sid: &str) -> String {
        let max_age = i64::try_from(self.limits.lifetime).unwrap_or(i64::MAX);
        console_cookie(sid, cookie::time::Duration::seconds(max_age))
    }
}

/// After the signed-in user's own action moved their session epoch on (a password change, a
/// token reset), the console session has ended with the others: a fresh one keeps the user
/// who acted signed in. None when nothing ended it.
pub(super) fn renew(
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

/// Sets the renewed session's cookie on `r`.
pub(super) fn with_cookie(
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

/// The console cookie a request carries, if any (every `Cookie` field, RFC 6265 §5.4).
pub(super) fn cookie_value(req: &Request<ReqBody>) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == COOKIE)
        .map(|c| c.value().to_owned())
}

/// The `Set-Cookie` value of the console cookie: `__Host-` (RFC 6265bis §4.1.3.2: Secure,
/// Path=/, no Domain), HttpOnly, SameSite=Strict.
fn console_cookie(value: &str, max_age: cookie::time::Duration) -> String {
    cookie::Cookie::build((COOKIE, value))
        .path("/")
        .secure(true)
        .http_only(true)
        .same_site(cookie::SameSite::Strict)
        .max_age(max_age)
        .build()
        .to_string()
}

/// The `Set-Cookie` value that ends the console cookie in the browser.
pub(super) fn clear_cookie() -> String {
    console_cookie("", cookie::time::Duration::ZERO)
}
