//! Console sessions: a random id in a `__Host-` cookie, kept as its keyed hash; a CSRF token
//! per session that every form must return (derived from the id by a keyed hash, so nothing
//! secret is stored for it); idle and absolute timeouts (`[console]`), whole seconds, never
//! shorter than configured. A console session ends with the user's API sessions (its session
//! epoch) and is renewed after the user's own password change or token reset. A session holds
//! at most one flash, the outcome of its last form, taken by the next page it is shown (in this
//! replica's memory: with several replicas, a redirect answered by another one shows the page
//! without the message; the action itself is done either way).
//!
//! A user who owes a second factor (`[console] mfa`) is only half signed in after the password:
//! a [`PendingSignIn`] under the same cookie, for at most [`PENDING_SECS`], that opens nothing
//! but the code (or enrolment) page and sign-out. Its key and CSRF token are derived under
//! labels of their own, so a pending id can never be read as a console session's.
//!
//! On a shared store (several replicas on one database) console sessions are kept in the store
//! beside API sessions (under keys of their own), so a load balancer may send an admin's
//! requests to any replica: a replica reads a sign-in made elsewhere on its first use, writes
//! the idle timer back at most once per tenth of the idle time, and forgets a sign-out made
//! elsewhere when the store reports it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use http::header::{self, HeaderValue};
use http::{Request, Response};
use minijinja::Environment;

use super::page::Page;
use super::{COOKIE, ConsoleError, MAX_SESSIONS};
use crate::mfa::Policy;
use crate::secret::{Domain, Secrets, Tag, constant_time_eq};
use crate::server::{App, ReqBody};
use crate::store::{SessionChange, SessionRecord, Store, StoreError, User};
use crate::wire::Body;

pub(super) struct ConsoleSession {
    key: Tag,
    pub(super) user_id: String,
    username: String,
    /// The user's session epoch at sign-in: a console session ends with the user's API
    /// sessions (disable, password change, token reset, lock, login-range change).
    pub(super) epoch: u64,
    pub(super) csrf: String,
    pub(super) created: u64,
    pub(super) last_seen: AtomicU64,
    /// The idle timer as last written to a shared store.
    persisted_seen: AtomicU64,
    /// The outcome of the last form, shown once by the next page this session gets
    /// (Post/Redirect/Get): at most one message, kept in this replica's memory only.
    flash: Mutex<Option<Flash>>,
}

/// Whether a [`Flash`] reports a success or an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FlashKind {
    Success,
    Error,
}

/// A form's outcome carried across its redirect to the page that shows it.
#[derive(Debug, Clone)]
pub(super) struct Flash {
    pub(super) kind: FlashKind,
    pub(super) text: String,
}

/// A flash longer than this is cut (a bulk action's report names at most a page of users).
const FLASH_CHARS: usize = 2_000;

impl Flash {
    pub(super) fn success(text: impl Into<String>) -> Self {
        Self::new(FlashKind::Success, text.into())
    }

    pub(super) fn error(text: impl Into<String>) -> Self {
        Self::new(FlashKind::Error, text.into())
    }

    fn new(kind: FlashKind, mut text: String) -> Self {
        if let Some((at, _)) = text.char_indices().nth(FLASH_CHARS) {
            text.truncate(at);
            text.push('…');
        }
        Self { kind, text }
    }
}

impl ConsoleSession {
    /// Whole seconds, as for API sessions: at least the idle time and lifetime, never less.
    fn live(&self, now: u64, limits: &Limits) -> bool {
        now <= self.created + limits.lifetime
            && now <= self.last_seen.load(Ordering::Relaxed) + limits.idle
    }

    fn record(&self) -> SessionRecord {
        SessionRecord {
            user_id: self.user_id.clone(),
            username: self.username.clone(),
            epoch: self.epoch,
            created_at: self.created,
            last_seen: self.last_seen.load(Ordering::Relaxed),
            policy: Default::default(),
            token_serial: 0,
            token: None,
        }
    }
}

/// How long a console sign-in lasts, in seconds (`[console]`).
pub(super) struct Limits {
    pub(super) idle: u64,
    pub(super) lifetime: u64,
}

/// How long the half-signed-in state between password and code lasts.
pub(super) const PENDING_SECS: u64 = 5 * 60;
/// Half-signed-in browsers held at once, at most.
pub(super) const MAX_PENDING: usize = 10_000;

/// A browser whose password was accepted and that owes the second factor.
pub(super) struct PendingSignIn {
    key: Tag,
    pub(super) user_id: String,
    username: String,
    /// The user's session epoch at the password: a lock, disable or reset ends it.
    pub(super) epoch: u64,
    pub(super) csrf: String,
    created: u64,
}

impl PendingSignIn {
    fn live(&self, now: u64) -> bool {
        now <= self.created + PENDING_SECS
    }

    /// Whether a form's CSRF token is this sign-in's (compared in constant time).
    pub(super) fn csrf_matches(&self, sent: &str) -> bool {
        constant_time_eq(sent.as_bytes(), self.csrf.as_bytes())
    }
}

pub struct Console {
    pub(super) env: Environment<'static>,
    pub(super) sessions: Arc<DashMap<Tag, Arc<ConsoleSession>>>,
    pub(super) pending: Arc<DashMap<Tag, Arc<PendingSignIn>>>,
    pub(super) secrets: Arc<Secrets>,
    pub(super) limits: Limits,
    /// `[console] mfa`.
    pub(super) mfa: Policy,
    store: Arc<dyn Store>,
}

impl ConsoleSession {
    /// Whether a form's CSRF token is this session's (compared in constant time).
    pub(super) fn csrf_matches(&self, sent: &str) -> bool {
        constant_time_eq(sent.as_bytes(), self.csrf.as_bytes())
    }

    /// Keeps `flash` for the next page (replacing one not shown yet).
    pub(super) fn set_flash(&self, flash: Flash) {
        *self.flash.lock().unwrap_or_else(|p| p.into_inner()) = Some(flash);
    }

    /// The flash kept for this page, taken: it shows once.
    pub(super) fn take_flash(&self) -> Option<Flash> {
        self.flash.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl Console {
    pub fn new(
        secrets: Arc<Secrets>,
        store: Arc<dyn Store>,
        cfg: crate::config::ConsoleConfig,
    ) -> Result<Self, ConsoleError> {
        let env = super::page::templates()?;
        let sessions: Arc<DashMap<Tag, Arc<ConsoleSession>>> = Arc::default();
        let pending: Arc<DashMap<Tag, Arc<PendingSignIn>>> = Arc::default();
        let (weak, weak_pending) = (Arc::downgrade(&sessions), Arc::downgrade(&pending));
        // A sign-out on another replica (the store reports what it deleted).
        store.observe_sessions(Arc::new(move |change| {
            let (Some(sessions), Some(pending)) = (weak.upgrade(), weak_pending.upgrade()) else {
                return;
            };
            match change {
                SessionChange::Ended(key) => {
                    sessions.remove(key);
                    pending.remove(key);
                }
                SessionChange::Unknown => {
                    sessions.clear();
                    pending.clear();
                }
            }
        }));
        Ok(Self {
            env,
            sessions,
            pending,
            mfa: cfg.mfa,
            secrets,
            limits: Limits {
                idle: cfg.session_idle_timeout.as_secs().max(1),
                lifetime: cfg.session_lifetime.as_secs().max(1),
            },
            store,
        })
    }

    fn key(&self, sid: &str) -> Tag {
        // Console sessions use the session domain with a prefix, apart from API sessions.
        self.secrets
            .tag(Domain::Session, &[b"console", sid.as_bytes()])
    }

    /// The session's CSRF token: a keyed hash of its id, so a replica that reads the session
    /// from the store derives the same one and the store holds nothing to forge it from.
    fn csrf(&self, sid: &str) -> String {
        self.secrets
            .tag(Domain::Session, &[b"console-csrf", sid.as_bytes()])
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn pending_key(&self, sid: &str) -> Tag {
        self.secrets
            .tag(Domain::Session, &[b"console-pending", sid.as_bytes()])
    }

    fn pending_csrf(&self, sid: &str) -> String {
        self.secrets
            .tag(Domain::Session, &[b"console-pending-csrf", sid.as_bytes()])
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Half signs `user` in: the password was accepted, the second factor is owed.
    pub(super) fn create_pending(&self, user: &User) -> Option<(String, Arc<PendingSignIn>)> {
        let now = crate::now_secs();
        if self.pending.len() >= MAX_PENDING {
            self.pending.retain(|_, p| p.live(now));
            if self.pending.len() >= MAX_PENDING {
                return None;
            }
        }
        let sid = self.secrets.generate_session_secret().ok()?;
        let key = self.pending_key(&sid);
        let p = Arc::new(PendingSignIn {
            key,
            user_id: user.id.clone(),
            username: user.username.clone(),
            epoch: user.session_epoch,
            csrf: self.pending_csrf(&sid),
            created: now,
        });
        if self.store.shared() {
            let rec = SessionRecord {
                user_id: p.user_id.clone(),
                username: p.username.clone(),
                epoch: p.epoch,
                created_at: now,
                last_seen: now,
                policy: Default::default(),
                token_serial: 0,
                token: None,
            };
            if let Err(e) = self.store.put_session(&key, &rec) {
                tracing::warn!(error = %e, "could not store a half-finished console sign-in");
                return None;
            }
        }
        self.pending.insert(key, p.clone());
        Some((sid, p))
    }

    /// The half-finished sign-in behind a cookie, while it lasts (read from a shared store
    /// when it was made on another replica). Fails only when a shared store cannot answer.
    pub(super) fn lookup_pending(
        &self,
        sid: &str,
    ) -> Result<Option<Arc<PendingSignIn>>, StoreError> {
        if sid.len() > 128 {
            return Ok(None);
        }
        let key = self.pending_key(sid);
        let p = match self.pending.get(&key).map(|r| r.value().clone()) {
            Some(p) => p,
            None if self.store.shared() && self.pending.len() < MAX_PENDING => {
                let Some(rec) = self.store.session(&key)? else {
                    return Ok(None);
                };
                let p = Arc::new(PendingSignIn {
                    key,
                    user_id: rec.user_id,
                    username: rec.username,
                    epoch: rec.epoch,
                    csrf: self.pending_csrf(sid),
                    created: rec.created_at,
                });
                self.pending.insert(key, p.clone());
                p
            }
            None => return Ok(None),
        };
        if !p.live(crate::now_secs()) {
            self.end_pending(&p);
            return Ok(None);
        }
        Ok(Some(p))
    }

    /// Ends a half-finished sign-in (completed, signed out or expired).
    pub(super) fn end_pending(&self, p: &PendingSignIn) {
        self.pending.remove(&p.key);
        self.forget_in_store(&[p.key]);
    }

    /// The cookie of a half-finished sign-in: it lasts as long as the sign-in may.
    pub(super) fn pending_cookie(&self, sid: &str) -> String {
        console_cookie(sid, cookie::time::Duration::seconds(PENDING_SECS as i64))
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
        let key = self.key(&sid);
        let session = Arc::new(ConsoleSession {
            key,
            user_id: user.id.clone(),
            username: user.username.clone(),
            epoch: user.session_epoch,
            csrf: self.csrf(&sid),
            created: now,
            last_seen: AtomicU64::new(now),
            persisted_seen: AtomicU64::new(now),
            flash: Mutex::default(),
        });
        if self.store.shared()
            && let Err(e) = self.store.put_session(&key, &session.record())
        {
            tracing::warn!(error = %e, "could not store a console session");
            return None;
        }
        self.sessions.insert(key, session.clone());
        Some((sid, session))
    }

    /// Ends the console session whose CSRF token is `csrf` (sign-out, renewal).
    pub(super) fn end(&self, csrf: &str) {
        let mut ended = Vec::new();
        self.sessions.retain(|k, s| {
            let keep = s.csrf != csrf;
            if !keep {
                ended.push(*k);
            }
            keep
        });
        self.forget_in_store(&ended);
    }

    fn forget_in_store(&self, keys: &[Tag]) {
        if !self.store.shared() {
            return;
        }
        for key in keys {
            if let Err(e) = self.store.delete_session(key) {
                tracing::warn!(error = %e, "could not delete a console session from the store");
            }
        }
    }

    /// The console session behind a cookie, while it lasts. Fails only when a shared store
    /// cannot answer (the caller then answers "unavailable" and keeps the cookie: an outage
    /// signs nobody out).
    pub(super) fn lookup(&self, sid: &str) -> Result<Option<Arc<ConsoleSession>>, StoreError> {
        if sid.len() > 128 {
            return Ok(None);
        }
        let key = self.key(sid);
        let (s, fetched) = match self.sessions.get(&key).map(|r| r.value().clone()) {
            Some(s) => (s, false),
            None => match self.fetch(sid, key)? {
                Some(s) => (s, true),
                None => return Ok(None),
            },
        };
        let now = crate::now_secs();
        if !s.live(now, &self.limits) && !self.used_elsewhere(&s, now)? {
            self.sessions.remove(&key);
            self.forget_in_store(&[key]);
            return Ok(None);
        }
        // A replica that may have missed a sign-out elsewhere asks the database (the user's
        // own record is checked by the caller, from the database too while not fresh).
        if !fetched && !self.store.fresh() && self.store.session(&key)?.is_none() {
            self.sessions.remove(&key);
            return Ok(None);
        }
        s.last_seen.store(now, Ordering::Relaxed);
        // Another replica judges idleness by the stored timer: keep it within a tenth.
        if self.store.shared()
            && now.saturating_sub(s.persisted_seen.load(Ordering::Relaxed))
                >= (self.limits.idle / 10).max(1)
            && self.store.put_session(&key, &s.record()).is_ok()
        {
            s.persisted_seen.store(now, Ordering::Relaxed);
        }
        Ok(Some(s))
    }

    /// A sign-in made on another replica, read from the shared store.
    fn fetch(&self, sid: &str, key: Tag) -> Result<Option<Arc<ConsoleSession>>, StoreError> {
        if !self.store.shared() || self.sessions.len() >= MAX_SESSIONS {
            return Ok(None);
        }
        let Some(rec) = self.store.session(&key)? else {
            return Ok(None);
        };
        let s = Arc::new(ConsoleSession {
            key,
            user_id: rec.user_id,
            username: rec.username,
            epoch: rec.epoch,
            csrf: self.csrf(sid),
            created: rec.created_at,
            last_seen: AtomicU64::new(rec.last_seen),
            persisted_seen: AtomicU64::new(rec.last_seen),
            flash: Mutex::default(),
        });
        self.sessions.insert(key, s.clone());
        Ok(Some(s))
    }

    /// Whether another replica has seen the session used since this one last did.
    fn used_elsewhere(&self, s: &ConsoleSession, now: u64) -> Result<bool, StoreError> {
        if !self.store.shared() || now > s.created + self.limits.lifetime {
            return Ok(false);
        }
        let Some(rec) = self.store.session(&s.key)? else {
            return Ok(false);
        };
        s.last_seen.fetch_max(rec.last_seen, Ordering::Relaxed);
        Ok(s.live(now, &self.limits))
    }

    /// Ends every console session of a user (after a credential change or a disable), and
    /// any half-finished sign-in.
    pub fn end_user(&self, user_id: &str) {
        let mut ended = Vec::new();
        self.sessions.retain(|k, s| {
            let keep = s.user_id != user_id;
            if !keep {
                ended.push(*k);
            }
            keep
        });
        self.pending.retain(|k, p| {
            let keep = p.user_id != user_id;
            if !keep {
                ended.push(*k);
            }
            keep
        });
        self.forget_in_store(&ended);
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
