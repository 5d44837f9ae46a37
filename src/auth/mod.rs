//! The login pipeline shared by every dialect: one [`Authenticator::login`] that turns a
//! username and a "password‖token" secret into a user or a generic failure, plus the
//! verified-credential cache (`cache`) and the session table (`session`). The steps' parts
//! that stand alone have files of their own: argon2's admission control (`hash_pool`), which
//! token a secret carries (`token_match`), and what a decided login records (`record`).
//!
//! The order of the steps:
//! 1. the verified-credential cache: a hit costs a keyed hash (none when the connection
//!    presented the same credential last: `last`) and one record lookup;
//! 2. rate limits per address and per username, before any hashing;
//! 3. the user (or a dummy record for unknown and disabled users, so they walk the same steps);
//! 4. the user's login ranges, then the token with a keyed hash in constant time (or, from a
//!    trusted network, the password alone);
//! 5. the global argon2 cap, then argon2id on a bounded pool off the async executor;
//! 6. lockout: a locked account fails like a wrong password unless the credentials were right;
//!    failures are counted (the same wrong secret once);
//! 7. the outcome goes to the login history, off the request path;
//! 8. a failure is answered no sooner than the failure delay after the attempt arrived
//!    (`limit::LoginLimits::delay_failure`).

pub mod cache;
mod hash_pool;
pub mod last;
mod record;
pub mod refresh;
pub mod session;
mod token_match;

use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::config::Config;
use crate::domain::{Dialect, Reason, canonical_username};
use crate::history::History;
use crate::limit::{Lockout, LoginLimits};
use crate::metrics::Metrics;
use crate::secret::Secrets;
use crate::store::{Store, StoreError, User};
use cache::CredentialCache;
pub use hash_pool::HashPool;
use last::{Kind, LastCredential};
use record::outcome_of;
pub use token_match::TokenUsed;

#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    #[error("invalid credentials ({})", .0.as_str())]
    Rejected(Reason),
    /// The credentials were right but the account is locked (`u64::MAX`: until unlocked).
    /// `proven`: the secret carried a valid token, which cannot be guessed, so telling the
    /// caller of the lock reveals nothing. Without one (a password alone: the console, a
    /// trusted network, the self-service reset) the lock must answer exactly like a wrong
    /// password, or it would confirm a guessed password.
    #[error("the account is locked")]
    Locked { until: u64, proven: bool },
    #[error("too many login attempts")]
    RateLimited { retry_after: Duration },
    #[error("password verification is saturated; retry shortly")]
    Busy,
    #[error("storage error: {0}")]
    Store(String),
    /// The database could not be reached in time (a shared store): no answer either way.
    #[error("the database is unavailable")]
    Unavailable,
}

impl From<StoreError> for AuthError {
    fn from(e: StoreError) -> Self {
        if let StoreError::Unavailable(_) = e {
            tracing::warn!(error = %e, "login refused: the database is unavailable");
            return AuthError::Unavailable;
        }
        AuthError::Store(e.to_string())
    }
}

/// [`canonical_username`] without a copy when the name already is canonical, as integration
/// tools send it on every Basic call.
fn canonical_cow(name: &str) -> std::borrow::Cow<'_, str> {
    // ASCII only: outside it, lower-casing is Unicode's business (`to_lowercase`).
    if name.is_ascii()
        && name.trim().len() == name.len()
        && !name.bytes().any(|b| b.is_ascii_uppercase())
    {
        std::borrow::Cow::Borrowed(name)
    } else {
        std::borrow::Cow::Owned(canonical_username(name))
    }
}

/// One login attempt as the wire layer parsed it.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    pub username: &'a str,
    /// The password with the token appended.
    pub secret: &'a str,
    /// The client's address (the peer, or X-Forwarded-For from a trusted proxy).
    pub ip: IpAddr,
    pub dialect: Dialect,
    pub api_version: Option<&'a str>,
    /// User-Agent, SOAP CallOptions client or OAuth client_id.
    pub client: Option<&'a str>,
    pub tls: Option<&'static str>,
    /// The password alone, with no token (the console's sign-in, the self-service reset, a
    /// password change's current password).
    pub password_only: bool,
    /// The user's login ranges do not apply (an OAuth client with `ip_relaxation = "relax"`,
    /// Salesforce's "Relax IP restrictions"); the token is still required.
    pub relax_ranges: bool,
}

pub struct Authenticator {
    store: Arc<dyn Store>,
    secrets: Arc<Secrets>,
    pool: HashPool,
    /// Stands in for unknown and disabled users, with fields of realistic size. Real users come
    /// from the store's in-memory cache as a shared record, and so does the dummy: both paths
    /// cost the same.
    dummy: Arc<User>,
    max_secret_bytes: usize,
    /// `[tokens] max_named_per_user`: the named-token slots every verification checks.
    max_named_per_user: usize,
    // Reloadable on SIGHUP: read once per login, swapped whole.
    trusted_networks: RwLock<Arc<Vec<ipnet::IpNet>>>,
    limits: RwLock<Arc<LoginLimits>>,
    lockout: Lockout,
    /// `[console] mfa`: a console password accepted for a user who owes a second factor does
    /// not clear counted failures (the code does), or wrong codes could never add up to a lock.
    console_mfa: crate::mfa::Policy,
    cache: CredentialCache<Result<Verified, AuthError>>,
    history: Arc<History>,
    /// Where lock notices go to be emailed (bounded; none in the CLI and benchmarks).
    lock_notices: Option<tokio::sync::mpsc::Sender<crate::mail::LockNotice>>,
    metrics: Arc<Metrics>,
}

/// A successful verification.
#[derive(Debug, Clone)]
pub struct Verified {
    pub user: Arc<User>,
    /// The login used the previous token during its grace window.
    pub superseded: bool,
    /// Which token the secret carried.
    pub token: TokenUsed,
}

impl Authenticator {
    pub fn new(
        store: Arc<dyn Store>,
        secrets: Arc<Secrets>,
        cfg: &Config,
        history: Arc<History>,
        lock_notices: Option<tokio::sync::mpsc::Sender<crate::mail::LockNotice>>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, crate::secret::SecretError> {
        let a = &cfg.auth;
        // The dummy's token tag is a random value no token hashes to, and its password hash
        // is real, so a dummy walk costs what a wrong token for a real user costs.
        let mut dummy = User::new(
            crate::ids::from_number("005", 0),
            "dummy.user@example.invalid".into(),
            "dummy.user@example.invalid".into(),
            secrets.hash_password(&secrets.generate_password()?)?,
            secrets.random_bytes()?,
            a.token_length,
            0,
        );
        dummy.full_name = "Dummy User".into();
        dummy.disabled = true;
        Ok(Self {
            store,
            secrets,
            pool: HashPool::new(
                a.hashing_concurrency.get(),
                a.hashing_queue,
                a.hashing_queue_timeout,
                metrics.clone(),
            ),
            dummy: Arc::new(dummy),
            max_secret_bytes: a.max_secret_bytes,
            max_named_per_user: cfg.tokens.max_named_per_user,
            trusted_networks: RwLock::new(Arc::new(a.trusted_networks.clone())),
            limits: RwLock::new(Arc::new(LoginLimits::new(&cfg.limits, metrics.clone()))),
            lockout: Lockout::new(&cfg.lockout),
            console_mfa: cfg.console.mfa,
            cache: CredentialCache::new(a.credential_cache_ttl, a.credential_cache_size),
            history,
            lock_notices,
            metrics,
        })
    }

    pub fn hash_pool(&self) -> &HashPool {
        &self.pool
    }

    pub fn limits(&self) -> Arc<LoginLimits> {
        self.limits
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Applies a reloaded configuration: limits (their counters start afresh), trusted
    /// networks and the lockout policy.
    pub fn reload(&self, cfg: &Config) {
        *self.limits.write().unwrap_or_else(|p| p.into_inner()) =
            Arc::new(LoginLimits::new(&cfg.limits, self.metrics.clone()));
        *self
            .trusted_networks
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Arc::new(cfg.auth.trusted_networks.clone());
        self.lockout.reload(&cfg.lockout);
    }

    pub fn lockout(&self) -> &Lockout {
        &self.lockout
    }

    pub fn cache_len(&self) -> usize {
        self.cache.len()
    }

    /// Verifications this authenticator answered from its cache.
    /// Verifications answered from the cache by this authenticator.
    pub fn cache_hits(&self) -> u64 {
        self.metrics.cache_hits()
    }

    /// Verifications in flight (0 at rest: every entry is released when its callers end).
    pub fn inflight(&self) -> usize {
        self.cache.inflight()
    }

    /// Periodic upkeep: stale limiter keys and expired cache entries.
    pub fn housekeep(&self) {
        self.limits().housekeep();
        self.cache.sweep(crate::now_secs());
    }

    fn dummy_user(&self) -> Arc<User> {
        self.dummy.clone()
    }

    fn trusted(&self, ip: IpAddr) -> bool {
        !ip.is_unspecified()
            && self
                .trusted_networks
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .any(|n| n.contains(&ip))
    }

    /// Verifies a login attempt in any dialect and records it in the login history.
    pub async fn login(&self, a: &Attempt<'_>) -> Result<Verified, AuthError> {
        self.login_on(a, None).await
    }

    /// [`Self::login`] for an attempt on a connection that remembers the last credential it
    /// presented ([`LastCredential`]): the same username and secret again skip the keyed hash
    /// that names them in the credential cache. Nothing else is skipped: the cache entry and
    /// the user's current record are checked as on every other attempt.
    pub async fn login_on(
        &self,
        a: &Attempt<'_>,
        last: Option<&LastCredential>,
    ) -> Result<Verified, AuthError> {
        let started = std::time::Instant::now();
        let (result, cached) = self.login_unrecorded(a, last).await;
        if cached {
            self.metrics.cache_hit();
        }
        if let Some(outcome) = outcome_of(&result) {
            self.metrics.login(a.dialect, outcome, started.elapsed());
        }
        if let Some(kind) = result.as_ref().ok().and_then(|v| v.token.kind()) {
            self.metrics.token_login(kind);
        }
        // A Basic call answered from the cache is an authenticated call, not a login: only
        // real verifications of Basic credentials go to the history.
        if !(cached && a.dialect == Dialect::Basic) {
            self.record(a, &result);
        }
        if matches!(
            result,
            Err(AuthError::Rejected(_) | AuthError::Locked { .. } | AuthError::RateLimited { .. })
        ) {
            // Boxed, as the miss below: a failure is the rare case, and its timer would
            // otherwise make every Basic call's future (which hyper moves per request) larger.
            Box::pin(self.limits().delay_failure(started)).await;
        }
        result
    }

    /// The result, and whether it came from the cache.
    async fn login_unrecorded(
        &self,
        a: &Attempt<'_>,
        last: Option<&LastCredential>,
    ) -> (Result<Verified, AuthError>, bool) {
        match self.login_inner(a, last).await {
            Ok((v, cached)) => (Ok(v), cached),
            Err(e) => (Err(e), false),
        }
    }

    async fn login_inner(
        &self,
        a: &Attempt<'_>,
        last: Option<&LastCredential>,
    ) -> Result<(Verified, bool), AuthError> {
        if a.username.is_empty()
            || a.username.len() > 256
            || a.secret.is_empty()
            || a.secret.len() > self.max_secret_bytes
        {
            return Err(AuthError::Rejected(Reason::Malformed));
        }
        let canonical = canonical_cow(a.username);
        let parts = [canonical.as_bytes(), a.secret.as_bytes()];
        let remembered = last.and_then(|l| l.key(Kind::Basic, parts));
        let key = remembered.unwrap_or_else(|| self.cache.key(&canonical, a.secret));
        // Remembered once the credential has proved itself, and only when it is new.
        let remember = |key| {
            if let (Some(last), None) = (last, remembered) {
                last.remember(Kind::Basic, parts, key);
            }
        };
        let now = crate::now_secs();
        if let Some(hit) = self.cache.get(&key, now) {
            match self.store.user_by_name(&canonical)? {
                Some(user)
                    if *user.id == *hit.user_id
                        && user.epoch == hit.epoch
                        && !user.disabled
                        && !user.lockout.is_locked(now)
                        // The trusted networks (a lock) are read only for a password alone.
                        && (!hit.password_only || a.password_only || self.trusted(a.ip))
                        && (a.relax_ranges || user.allows(a.ip))
                        && hit.named.as_ref().is_none_or(|(serial, _)| {
                            user.named_tokens.iter().any(|t| t.serial == *serial)
                        }) =>
                {
                    // A login that opens a session counts against the limits like any other,
                    // or one valid credential could open sessions without end. A Basic call
                    // is an authenticated call, not a login.
                    if a.dialect != Dialect::Basic {
                        if let Err(retry_after) = self.limits().check(a.ip, &canonical) {
                            return Err(AuthError::RateLimited { retry_after });
                        }
                        self.shared_user_limit(&user.id, now)?;
                    }
                    let token = match hit.named {
                        Some((serial, name)) => TokenUsed::Named { name, serial },
                        None if hit.password_only => TokenUsed::None,
                        None => TokenUsed::Default,
                    };
                    let v = Verified {
                        user,
                        superseded: hit.superseded,
                        token,
                    };
                    remember(key);
                    return Ok((v, true));
                }
                _ => self.cache.remove(&key),
            }
        }
        self.metrics.cache_miss();
        if let Err(retry_after) = self.limits().check(a.ip, &canonical) {
            return Err(AuthError::RateLimited { retry_after });
        }
        let trusted = a.password_only || self.trusted(a.ip);
        // A miss runs argon2 on the hashing pool and writes the history: boxed, so a cached
        // Basic call's future (moved by hyper once per request) does not carry its state.
        let verified = Box::pin(
            self.cache
                .single_flight(key, || self.verify(a, &canonical, trusted)),
        )
        .await?;
        remember(key);
        Ok((verified, false))
    }

    /// Several replicas on one database: the user's logins are also counted in the database,
    /// so attempts spread over the replicas meet one `login_per_user` limit.
    fn shared_user_limit(&self, user_id: &str, now: u64) -> Result<(), AuthError> {
        let limits = self.limits();
        let (window, _) = limits.per_user_window(now);
        match self.store.count_login(user_id, window)? {
            Some(count) => match limits.over_shared_limit(count, now) {
                Some(retry_after) => Err(AuthError::RateLimited { retry_after }),
                None => Ok(()),
            },
            None => Ok(()),
        }
    }

    /// The uncached verification (steps 3–6).
    async fn verify(
        &self,
        a: &Attempt<'_>,
        canonical: &str,
        trusted: bool,
    ) -> Result<Verified, AuthError> {
        let now = crate::now_secs();
        let (user, substitute) = match self.store.user_by_name(canonical)? {
            Some(u) if !u.disabled => (u, None),
            Some(_) => (self.dummy_user(), Some(Reason::Disabled)),
            None => (self.dummy_user(), Some(Reason::UnknownUser)),
        };
        if substitute.is_none() && !a.relax_ranges && !user.allows(a.ip) {
            return Err(AuthError::Rejected(Reason::OutsideLoginRange));
        }
        if substitute.is_none() {
            self.shared_user_limit(&user.id, now)?;
        }
        let secret = a.secret;

        let (matched_token, token) = self.match_token(&user, secret, now);
        let mut matched = matched_token.map(|(at, superseded)| (&secret[..at], superseded, false));
        // From a trusted network the password alone is accepted (Salesforce's trusted IP
        // ranges, docs/salesforce-protocol.md §5); the token may still be appended, as handled above.
        let token = if matched.is_none() && trusted {
            matched = Some((secret, false, true));
            TokenUsed::None
        } else {
            token
        };
        let Some((password, superseded, password_only)) = matched else {
            if let Some(r) = substitute {
                return Err(AuthError::Rejected(r));
            }
            return self.fail(&user, a, secret, Reason::WrongToken, now);
        };
        if let Err(retry_after) = self.limits().check_argon2() {
            return Err(AuthError::RateLimited { retry_after });
        }
        let ok = self.check_password(&user, password).await?;
        if let Some(r) = substitute {
            return Err(AuthError::Rejected(r));
        }
        if !ok {
            return self.fail(&user, a, secret, Reason::WrongPassword, now);
        }
        // Only a caller holding the right credentials learns that the account is locked, and
        // only one whose secret carried a token may be told (see `AuthError::Locked`).
        if let Some(until) = user
            .lockout
            .locked_until
            .filter(|_| user.lockout.is_locked(now))
        {
            return Err(AuthError::Locked {
                until,
                proven: !password_only,
            });
        }
        let second_factor_owed =
            a.dialect == Dialect::Console && self.console_mfa.applies_to(&user);
        let user = if (user.lockout.failures > 0 || user.lockout.locked_until.is_some())
            && !second_factor_owed
        {
            self.lockout.forget(&user.id);
            // The record as stored now decides: another writer (another replica on a shared
            // store) may have locked the account since `user` was read.
            let fresh = self
                .store
                .update_user(&user.id, &mut |u| {
                    if !u.lockout.is_locked(now) {
                        u.lockout = Default::default();
                    }
                })
                .map(Arc::new)?;
            if let Some(until) = fresh
                .lockout
                .locked_until
                .filter(|_| fresh.lockout.is_locked(now))
            {
                return Err(AuthError::Locked {
                    until,
                    proven: !password_only,
                });
            }
            fresh
        } else {
            user
        };
        // A verification with the superseded token lasts no longer than its grace window.
        let grace_end = if superseded {
            user.previous_token.as_ref().map_or(now, |p| p.at)
        } else {
            0
        };
        self.cache.insert(
            self.cache.key(canonical, secret),
            cache::Entry {
                user_id: user.id.as_str().into(),
                epoch: user.epoch,
                password_only,
                superseded,
                expires: grace_end,
                named: match &token {
                    TokenUsed::Named { serial, name } => Some((*serial, name.clone())),
                    _ => None,
                },
            },
            now,
        );
        let user = self.note_named_use(user, &token, a, now);
        Ok(Verified {
            user,
            superseded,
            token,
        })
    }

    /// Admits a console second-factor attempt (`mfa`) under the same per-address and per-user
    /// limits as a login, before the code is looked at.
    pub fn second_factor_admit(&self, a: &Attempt<'_>) -> Result<(), AuthError> {
        self.limits()
            .check(a.ip, &canonical_cow(a.username))
            .map_err(|retry_after| AuthError::RateLimited { retry_after })
    }

    /// Counts the outcome of a console second-factor attempt, whose code the console checked
    /// against `user`'s record (`a.secret` is the code as typed). A wrong or replayed code is
    /// a failed login: it counts toward lockout (the same wrong code once), goes to the login
    /// history and is answered after the failure delay from `started`. A right one clears the
    /// failures that the password step left counted, unless the account locked meanwhile.
    pub async fn second_factor(
        &self,
        a: &Attempt<'_>,
        user: &User,
        verdict: Result<(), Reason>,
        started: std::time::Instant,
    ) -> Result<(), AuthError> {
        let now = crate::now_secs();
        let result = match verdict {
            Err(reason) => self.fail(user, a, a.secret, reason, now).map(|_| ()),
            Ok(()) if user.lockout.failures > 0 || user.lockout.locked_until.is_some() => {
                self.lockout.forget(&user.id);
                let fresh = self.store.update_user(&user.id, &mut |u| {
                    if !u.lockout.is_locked(now) {
                        u.lockout = Default::default();
                    }
                })?;
                match fresh
                    .lockout
                    .locked_until
                    .filter(|_| fresh.lockout.is_locked(now))
                {
                    Some(until) => Err(AuthError::Locked {
                        until,
                        proven: false,
                    }),
                    None => Ok(()),
                }
            }
            Ok(()) => Ok(()),
        };
        if let Err(e) = &result {
            let failed: Result<Verified, AuthError> = Err(e.clone());
            self.record(a, &failed);
            if matches!(e, AuthError::Rejected(_) | AuthError::Locked { .. }) {
                self.limits().delay_failure(started).await;
            }
        }
        result
    }

    async fn check_password(&self, user: &User, password: &str) -> Result<bool, AuthError> {
        if password.is_empty() {
            return Ok(false);
        }
        let secrets = self.secrets.clone();
        let phc = user.password_hash.clone();
        let password = password.to_owned();
        self.pool
            .run(move || secrets.verify_password(&phc, &password))
            .await
    }
}

#[cfg(test)]
mod tests;
