//! The token lifecycle: resets (self-service, admin, password change, schedule), grace windows
//! and delivery-safe rotation. Knows *that* a token must be emailed, not how (`mail`).
//!
//! Delivery-safe rotation, step by step, each step one atomic store write:
//! 1. the new token's keyed hash is recorded as *pending* (never valid for login);
//! 2. the message carrying it is sent; nothing changes until the SMTP server accepts it;
//! 3. the pending token replaces the current one, the epoch moves on (killing cached
//!    verifications and, by configuration, sessions), and the store is flushed.
//!
//! A crash after 3 leaves the new token valid. A crash between 1 and 3 leaves an outcome nobody
//! knows: the message may or may not have been accepted. The pending token then carries the
//! id of a process that no longer runs ([`incarnation`]), and logins accept it beside the
//! current token (the old one stays valid too) until the next successful rotation, which
//! keeps it as *unconfirmed* while its own message is on its way and drops it at its commit.
//! So a crash never leaves a user holding a mailed token that fails, and never neither token.
//! An explicit failure of the send (the SMTP server refused, timed out, or is unreachable)
//! clears the pending token and reports the failure: the old token stays the only one.

pub mod named;

use std::sync::Arc;
use std::time::Duration;

use crate::auth::session::Sessions;
use crate::config::{PasswordPolicy, TokensConfig};
use crate::ids::incarnation;
use crate::mail::{MailError, Mailer, TokenMail, TokenReason, mask_email};
use crate::secret::{SecretError, Secrets};
use crate::store::{Store, StoreError, TokenRecord, User};

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("no user '{0}'")]
    NoSuchUser(String),
    #[error("the user is disabled")]
    Disabled,
    #[error("the new token could not be emailed, so the current token stays valid: {0}")]
    Delivery(#[source] MailError),
    #[error("the password does not meet the policy: {0}")]
    Policy(String),
    #[error("a token may be supplied only for load-test users, as 16 to 64 letters and digits")]
    Supplied,
    #[error("the rotation period must be between 1 second and 365 days")]
    Period,
    #[error(
        "invalid token name: use 1 to 32 of a-z, 0-9, '.', '_' and '-', starting with a letter or digit; \"default\" is reserved"
    )]
    InvalidName,
    #[error("the user already has a token named '{0}'")]
    NamedExists(String),
    #[error("the user has no token named '{0}'")]
    NoSuchToken(String),
    #[error(
        "the user already holds {0} named tokens, the most allowed ([tokens] max_named_per_user)"
    )]
    TooManyNamed(usize),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Secret(#[from] SecretError),
}

/// What a successful rotation reports (never the token).
#[derive(Debug, Clone)]
pub struct Rotated {
    pub user: User,
    pub masked_email: String,
}

/// Serialises rotations per user: two concurrent resets of one user must not interleave their
/// pending/commit steps. Striped, so the lock table has a fixed size.
const LOCK_STRIPES: usize = 64;

pub struct Tokens {
    store: Arc<dyn Store>,
    secrets: Arc<Secrets>,
    mailer: Arc<Mailer>,
    sessions: Option<Arc<Sessions>>,
    cfg: TokensConfig,
    token_length: usize,
    policy: PasswordPolicy,
    locks: Vec<tokio::sync::Mutex<()>>,
    /// Where scheduled rotations are recorded (actor `system`).
    audit: Option<Arc<crate::audit::Audit>>,
}

impl Tokens {
    pub fn new(
        store: Arc<dyn Store>,
        secrets: Arc<Secrets>,
        mailer: Arc<Mailer>,
        sessions: Option<Arc<Sessions>>,
        cfg: TokensConfig,
        token_length: usize,
        policy: PasswordPolicy,
    ) -> Self {
        Self {
            store,
            secrets,
            mailer,
            sessions,
            cfg,
            token_length,
            policy,
            locks: (0..LOCK_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            audit: None,
        }
    }

    /// Records scheduled rotations in `audit`.
    pub fn audited(mut self, audit: Arc<crate::audit::Audit>) -> Self {
        self.audit = Some(audit);
        self
    }

    pub fn mailer(&self) -> &Arc<Mailer> {
        &self.mailer
    }

    pub fn policy(&self) -> &PasswordPolicy {
        &self.policy
    }

    fn lock_for(&self, user_id: &str) -> &tokio::sync::Mutex<()> {
        let h = user_id
            .bytes()
            .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize));
        &self.locks[h % LOCK_STRIPES]
    }

    pub fn find(&self, username: &str) -> Result<Arc<User>, TokenError> {
        self.store
            .user_by_name(&crate::domain::canonical_username(username))?
            .ok_or_else(|| TokenError::NoSuchUser(username.chars().take(80).collect()))
    }

    /// Issues and emails a new token; see the module docs for the delivery-safe steps.
    pub async fn rotate(&self, user_id: &str, reason: TokenReason) -> Result<Rotated, TokenError> {
        self.rotate_with(user_id, reason, None).await
    }

    /// Starts a rotation that nobody waits for (the self-service reset answers before the mail
    /// goes out, so its answer cannot tell how the mail went). At most as many run at once as
    /// `slots` has permits; beyond, the request is dropped with an error log. A failure is
    /// logged and counted; the old token stays valid.
    pub fn rotate_detached(
        self: &Arc<Self>,
        user: Arc<User>,
        reason: TokenReason,
        slots: &Arc<tokio::sync::Semaphore>,
    ) {
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::error!(user = %user.username, "too many token resets in progress; this one was dropped");
            return;
        };
        let tokens = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = tokens.rotate(&user.id, reason).await {
                tracing::warn!(user = %user.username, error = %e, "self-service token reset failed; the current token stays valid");
            }
        });
    }

    /// Changes the password and emails a new token, both or neither. Without a configured mail
    /// transport, only the password changes.
    pub async fn change_password(
        &self,
        user_id: &str,
        new_password: &str,
    ) -> Result<Rotated, TokenError> {
        self.policy
            .check(new_password)
            .map_err(TokenError::Policy)?;
        let secrets = self.secrets.clone();
        let pw = new_password.to_owned();
        let hash = tokio::task::spawn_blocking(move || secrets.hash_password(&pw))
            .await
            .map_err(|_| SecretError::Hash("the hashing task failed".into()))??;
        if !self.mailer.is_configured() {
            let _guard = self.lock_for(user_id).lock().await;
            let now = crate::now_secs();
            let user = self.store.update_user(user_id, &mut |u| {
                u.password_hash = hash.clone();
                u.password_changed_at = now;
                u.end_access();
            })?;
            self.after_commit(&user, true)?;
            return Ok(Rotated {
                masked_email: mask_email(&user.email),
                user,
            });
        }
        let rotated = self
            .rotate_with(user_id, TokenReason::PasswordChange, Some(hash))
            .await?;
        // As Salesforce does, a new password comes with new tokens: every named token too,
        // one message each, unless `[tokens] keep_named_tokens_on_password_change`.
        if !self.cfg.keep_named_tokens_on_password_change && !rotated.user.named_tokens.is_empty() {
            self.reset_all_named(user_id).await;
            if let Some(user) = self.store.user_by_id(user_id)? {
                return Ok(Rotated {
                    masked_email: rotated.masked_email,
                    user: (*user).clone(),
                });
            }
        }
        Ok(rotated)
    }

    async fn rotate_with(
        &self,
        user_id: &str,
        reason: TokenReason,
        new_password_hash: Option<String>,
    ) -> Result<Rotated, TokenError> {
        let _guard = self.lock_for(user_id).lock().await;
        let user = self
            .store
            .user_by_id(user_id)?
            .ok_or_else(|| TokenError::NoSuchUser(user_id.to_owned()))?;
        if user.disabled {
            return Err(TokenError::Disabled);
        }
        if !self.mailer.is_configured() {
            return Err(TokenError::Delivery(MailError::NotConfigured));
        }
        let token = self.secrets.generate_token(self.token_length)?;
        let now = crate::now_secs();
        let pending = TokenRecord {
            tag: self.secrets.token_tag(&token),
            length: token.len(),
            at: now,
            owner: incarnation(),
        };

        // Step 1: record the pending token (durably: a crash must not forget it was issued). A
        // pending token a crashed process left may have been mailed: it stays valid, as the
        // unconfirmed one, until this rotation commits.
        let user = self.store.update_user(user_id, &mut |u| {
            if let Some(left) = u.pending_token.take()
                && left.owner != incarnation()
            {
                u.unconfirmed_token = Some(left);
            }
            u.pending_token = Some(pending.clone());
        })?;
        self.store.flush()?;

        // Step 2: the message must be accepted before anything else changes.
        let grace = self.cfg.grace_period;
        let previous_valid_until = (!grace.is_zero()).then(|| now + grace.as_secs().max(1));
        let mail = TokenMail {
            user: &user,
            token: &token,
            reason,
            at: now,
            previous_valid_until,
            named: None,
        };
        if let Err(e) = self.mailer.send_token(&mail).await {
            tracing::warn!(user = %user.username, reason = ?reason, error = %e, "token email failed; the current token stays valid");
            let _ = self.store.update_user(user_id, &mut |u| {
                if u.pending_token.as_ref() == Some(&pending) {
                    u.pending_token = None;
                }
            });
            return Err(TokenError::Delivery(e));
        }

        // Step 3: commit, only if our pending token is still the pending one.
        let ends_sessions = self.cfg.revoke_sessions_on_reset || new_password_hash.is_some();
        let mut committed = false;
        let user = self.store.update_user(user_id, &mut |u| {
            committed = u.pending_token.as_ref() == Some(&pending);
            if !committed {
                return;
            }
            u.previous_token = previous_valid_until.map(|until| TokenRecord {
                tag: u.token_tag,
                length: u.token_length,
                at: until,
                owner: 0,
            });
            u.token_tag = pending.tag;
            u.token_length = pending.length;
            u.pending_token = None;
            u.unconfirmed_token = None;
            u.token_reset_at = now;
            if let Some(h) = &new_password_hash {
                u.password_hash = h.clone();
                u.password_changed_at = now;
            }
            if let Some(every) = u.rotate_every_secs {
                u.next_rotation_at = Some(now + every);
            }
            if ends_sessions {
                u.end_access();
            } else {
                // Cached verifications of the old token die; sessions stay.
                u.epoch += 1;
            }
        })?;
        if !committed {
            // Cannot happen while the per-user lock is held; kept so a bug shows in the logs.
            tracing::error!(user = %user.username, "a concurrent change replaced the pending token");
            return Err(TokenError::Store(StoreError::Corrupt(
                "pending token replaced".into(),
            )));
        }
        self.store.flush()?;
        self.after_commit(&user, ends_sessions)?;
        self.mailer.metrics().token_rotated(reason);
        tracing::info!(user = %user.username, reason = ?reason, "security token rotated and emailed");
        Ok(Rotated {
            masked_email: mask_email(&user.email),
            user,
        })
    }

    /// Frees the sessions a commit ended (they are already refused: their epoch is behind).
    fn after_commit(&self, user: &User, ended_sessions: bool) -> Result<(), TokenError> {
        if ended_sessions {
            match &self.sessions {
                Some(s) => {
                    let _ = s.revoke_user(&user.id);
                }
                None => {
                    self.store.delete_user_sessions(&user.id)?;
                }
            }
        }
        self.store.flush()?;
        Ok(())
    }

    /// Sets (or with `None` turns off) scheduled rotation; the first one is due one period
    /// from now.
    pub fn set_rotation(
        &self,
        username: &str,
        every: Option<Duration>,
    ) -> Result<User, TokenError> {
        if let Some(d) = every
            && (d < Duration::from_secs(1) || d > Duration::from_secs(365 * 86_400))
        {
            return Err(TokenError::Period);
        }
        let user = self.find(username)?;
        let now = crate::now_secs();
        let user = self.store.update_user(&user.id, &mut |u| {
            u.rotate_every_secs = every.map(|d| d.as_secs());
            u.next_rotation_at = every.map(|d| now + d.as_secs());
        })?;
        self.store.flush()?;
        Ok(user)
    }

    /// Rotates every token whose scheduled time has come (including those missed while the
    /// server was down). A failed rotation stays due and is tried again on the next pass.
    pub async fn run_due(&self) -> usize {
        // Several replicas on one database: only the leader rotates, so a rotation is emailed
        // once.
        if !self.store.leader() {
            return 0;
        }
        let now = crate::now_secs();
        let ids = match self.store.due_rotations(now) {
            Ok(ids) => ids,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the rotation schedule");
                return 0;
            }
        };
        let due: Vec<_> = ids
            .iter()
            .filter_map(|id| self.store.user_by_id(id).ok().flatten())
            .filter(|u| !u.disabled && u.next_rotation_at.is_some_and(|t| t <= now))
            .collect();
        let mut done = 0;
        for u in due {
            match self.rotate(&u.id, TokenReason::Scheduled).await {
                Ok(r) => {
                    done += 1;
                    if let Some(audit) = &self.audit {
                        let at = |t: u64| Some(t.to_string());
                        audit.record(crate::audit::Entry {
                            actor: crate::audit::Actor::system(),
                            action: "user.token_rotation",
                            target: u.username.clone(),
                            changes: vec![crate::audit::Change {
                                field: "token_reset_at".into(),
                                before: at(u.token_reset_at),
                                after: at(r.user.token_reset_at),
                            }],
                        });
                    }
                }
                Err(e) => {
                    tracing::warn!(user = %u.username, error = %e, "scheduled rotation failed; will retry")
                }
            }
        }
        done
    }

    pub fn check_interval(&self) -> Duration {
        self.cfg.rotation_check_interval
    }
}
