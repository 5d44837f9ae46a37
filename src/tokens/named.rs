//! Named tokens: one security token per integration (Data Loader, a form tool, a nightly
//! sync), held beside the default token and added, reset and revoked on its own, so that
//! resetting one integration's token leaves every other tool logging in.
//!
//! A named token is stored inside its user's record (`store::NamedToken`), as a keyed hash
//! like the default token, and is as crash-safe: each new value is written as *pending*,
//! mailed, and committed only once the SMTP server accepted the message (the steps of the
//! parent module). A pending value left by a crashed process is accepted for login, and kept
//! as *unconfirmed* until the token's next committed reset, exactly as for the default token;
//! a `token add` cut short by a crash leaves the token with only such a value (listed as
//! unconfirmed), which `token reset` completes. Unlike the default token a named token has no
//! grace window: it is reset because that one integration's value is in question, and only
//! that integration needs the new one.
//!
//! Every committed value gets a new serial (`User::next_named_serial`); the credential cache
//! and the session table hold the serial a login used, so a reset or a revocation ends the
//! cached verifications and the sessions made with that token and no other (the user's epochs
//! do not move).

use serde::{Deserialize, Serialize};

use super::{Rotated, TokenError, Tokens, incarnation};
use crate::mail::{TokenMail, TokenReason, mask_email};
use crate::store::{DEFAULT_TOKEN_NAME, NamedToken, StoreError, TokenRecord, User};

/// The longest name (the pattern is `[a-z0-9][a-z0-9._-]{0,31}`).
pub const MAX_NAME_LEN: usize = 32;

/// Checks a token name: `[a-z0-9][a-z0-9._-]{0,31}`, and not "default" (the default token's).
pub fn validate_name(name: &str) -> Result<(), TokenError> {
    let b = name.as_bytes();
    let first_ok = b
        .first()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest_ok = b
        .iter()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(c));
    if !first_ok || !rest_ok || b.len() > MAX_NAME_LEN || name == DEFAULT_TOKEN_NAME {
        return Err(TokenError::InvalidName);
    }
    Ok(())
}

/// What may be shown of a named token: never the token or its hash.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct NamedTokenView {
    pub name: String,
    /// "active", or "unconfirmed" while only a value whose delivery a crash cut short exists
    /// (`token reset` completes it).
    pub state: String,
    /// Unix seconds.
    pub created_at: u64,
    /// When the current value was committed (Unix seconds).
    pub reset_at: u64,
    pub last_used_at: Option<u64>,
    pub last_client_ip: Option<String>,
    pub last_dialect: Option<String>,
}

impl From<&NamedToken> for NamedTokenView {
    fn from(t: &NamedToken) -> Self {
        Self {
            name: t.name.clone(),
            state: if t.tag.is_some() {
                "active"
            } else {
                "unconfirmed"
            }
            .to_owned(),
            created_at: t.created_at,
            reset_at: t.reset_at,
            last_used_at: t.last_used_at,
            last_client_ip: t.last_client_ip.clone(),
            last_dialect: t.last_dialect.clone(),
        }
    }
}

/// The user's named tokens as they may be shown.
pub fn list(user: &User) -> Vec<NamedTokenView> {
    user.named_tokens.iter().map(NamedTokenView::from).collect()
}

/// [`list`] after a row for the default token (its use is in the login history, not noted
/// on the record).
pub fn list_with_default(user: &User) -> Vec<NamedTokenView> {
    let mut out = vec![NamedTokenView {
        name: DEFAULT_TOKEN_NAME.to_owned(),
        state: "active".to_owned(),
        created_at: user.created_at,
        reset_at: user.token_reset_at,
        last_used_at: None,
        last_client_ip: None,
        last_dialect: None,
    }];
    out.extend(list(user));
    out
}

impl Tokens {
    /// Named tokens a user may hold (`[tokens] max_named_per_user`).
    pub fn max_named(&self) -> usize {
        self.cfg.max_named_per_user
    }

    /// Adds the named token `name` to the user and emails its value: the token exists (for
    /// login) only once the message was accepted. Refused for a name taken, past the bound,
    /// or when mail cannot be sent.
    pub async fn add_named(&self, user_id: &str, name: &str) -> Result<Rotated, TokenError> {
        let reason = TokenReason::IntegrationAdded;
        validate_name(name)?;
        let _guard = self.lock_for(user_id).lock().await;
        let user = self.live_user(user_id)?;
        let max = self.cfg.max_named_per_user;
        check_room(&user, name, max)?;
        let token = self.secrets.generate_token(self.token_length)?;
        let now = crate::now_secs();
        let pending = self.pending_record(&token, now);

        // Step 1: the token, with only its pending value (never valid for login while this
        // process lives).
        let mut refused = None;
        let user = self.store.update_user(user_id, &mut |u| {
            refused = check_room(u, name, max).err();
            if refused.is_some() {
                return;
            }
            let serial = u.next_named_serial();
            u.named_tokens.push(NamedToken {
                name: name.to_owned(),
                serial,
                tag: None,
                length: pending.length,
                created_at: now,
                reset_at: now,
                pending: Some(pending.clone()),
                unconfirmed: None,
                last_used_at: None,
                last_client_ip: None,
                last_dialect: None,
            });
        })?;
        if let Some(e) = refused {
            return Err(e);
        }
        self.store.flush()?;

        // Step 2: the message.
        if let Err(e) = self.mail_named(&user, name, &token, now, reason).await {
            let _ = self.store.update_user(user_id, &mut |u| {
                u.named_tokens
                    .retain(|t| !(t.name == name && t.pending.as_ref() == Some(&pending)));
            });
            let _ = self.store.flush();
            return Err(TokenError::Delivery(e));
        }

        // Step 3: commit.
        self.commit_named(user_id, name, &pending, now, reason)
    }

    /// Resets the named token `name`: a new value, emailed, in force once the message was
    /// accepted; the old value, the cached verifications and the sessions made with it end
    /// at the commit. The user's other tokens and their sessions are untouched.
    pub async fn reset_named(
        &self,
        user_id: &str,
        name: &str,
        reason: TokenReason,
    ) -> Result<Rotated, TokenError> {
        let _guard = self.lock_for(user_id).lock().await;
        self.reset_named_locked(user_id, name, reason).await
    }

    /// [`Self::reset_named`] with the user's rotation lock held by the caller.
    async fn reset_named_locked(
        &self,
        user_id: &str,
        name: &str,
        reason: TokenReason,
    ) -> Result<Rotated, TokenError> {
        let user = self.live_user(user_id)?;
        if user.named_token(name).is_none() {
            return Err(TokenError::NoSuchToken(clip(name)));
        }
        if !self.mailer.is_configured() {
            return Err(TokenError::Delivery(crate::mail::MailError::NotConfigured));
        }
        let token = self.secrets.generate_token(self.token_length)?;
        let now = crate::now_secs();
        let pending = self.pending_record(&token, now);

        // Step 1: pending; a value a crashed process left pending stays valid as unconfirmed.
        let mut found = false;
        let user = self.store.update_user(user_id, &mut |u| {
            let Some(t) = u.named_tokens.iter_mut().find(|t| t.name == name) else {
                found = false;
                return;
            };
            found = true;
            if let Some(left) = t.pending.take()
                && left.owner != incarnation()
            {
                t.unconfirmed = Some(left);
            }
            t.pending = Some(pending.clone());
        })?;
        if !found {
            return Err(TokenError::NoSuchToken(clip(name)));
        }
        self.store.flush()?;

        // Step 2: the message, with the reason in it.
        let mail = TokenMail {
            user: &user,
            token: &token,
            reason,
            at: now,
            previous_valid_until: None,
            named: Some(name),
        };
        if let Err(e) = self.mailer.send_token(&mail).await {
            tracing::warn!(user = %user.username, token = name, error = %e, "named token email failed; the current value stays valid");
            let _ = self.store.update_user(user_id, &mut |u| {
                if let Some(t) = u.named_tokens.iter_mut().find(|t| t.name == name)
                    && t.pending.as_ref() == Some(&pending)
                {
                    t.pending = None;
                }
            });
            return Err(TokenError::Delivery(e));
        }

        // Step 3: commit.
        self.commit_named(user_id, name, &pending, now, reason)
    }

    /// Removes the named token `name`: its value stops working at once, and so do the cached
    /// verifications and sessions made with it (their serial is gone).
    pub async fn revoke_named(&self, user_id: &str, name: &str) -> Result<User, TokenError> {
        let _guard = self.lock_for(user_id).lock().await;
        let mut found = false;
        let user = self.store.update_user(user_id, &mut |u| {
            let before = u.named_tokens.len();
            u.named_tokens.retain(|t| t.name != name);
            found = u.named_tokens.len() != before;
        })?;
        if !found {
            return Err(TokenError::NoSuchToken(clip(name)));
        }
        self.store.flush()?;
        tracing::info!(user = %user.username, token = name, "named token revoked");
        Ok(user)
    }

    /// After a password change: resets every named token and emails each new value, one
    /// message per token. A failed message leaves that token's old value in force (it is
    /// useless without the new password) and is reported in the log and the returned count.
    pub(super) async fn reset_all_named(&self, user_id: &str) -> usize {
        let _guard = self.lock_for(user_id).lock().await;
        let names: Vec<String> = match self.store.user_by_id(user_id) {
            Ok(Some(u)) => u.named_tokens.iter().map(|t| t.name.clone()).collect(),
            _ => return 0,
        };
        let mut failed = 0;
        for name in names {
            if let Err(e) = self
                .reset_named_locked(user_id, &name, TokenReason::PasswordChange)
                .await
            {
                failed += 1;
                tracing::warn!(user_id, token = %name, error = %e, "a named token was not reset with the password");
            }
        }
        failed
    }

    fn live_user(&self, user_id: &str) -> Result<std::sync::Arc<User>, TokenError> {
        let user = self
            .store
            .user_by_id(user_id)?
            .ok_or_else(|| TokenError::NoSuchUser(user_id.to_owned()))?;
        if user.disabled {
            return Err(TokenError::Disabled);
        }
        if !self.mailer.is_configured() {
            return Err(TokenError::Delivery(crate::mail::MailError::NotConfigured));
        }
        Ok(user)
    }

    fn pending_record(&self, token: &str, now: u64) -> TokenRecord {
        TokenRecord {
            tag: self.secrets.token_tag(token),
            length: token.len(),
            at: now,
            owner: incarnation(),
        }
    }

    async fn mail_named(
        &self,
        user: &User,
        name: &str,
        token: &str,
        now: u64,
        reason: TokenReason,
    ) -> Result<(), crate::mail::MailError> {
        let mail = TokenMail {
            user,
            token,
            reason,
            at: now,
            previous_valid_until: None,
            named: Some(name),
        };
        self.mailer.send_token(&mail).await.inspect_err(|e| {
            tracing::warn!(user = %user.username, token = name, error = %e, "named token email failed; nothing was added");
        })
    }

    /// Step 3 for a named token: the pending value becomes the value, under a new serial,
    /// only if it still is the pending one.
    fn commit_named(
        &self,
        user_id: &str,
        name: &str,
        pending: &TokenRecord,
        now: u64,
        reason: TokenReason,
    ) -> Result<Rotated, TokenError> {
        let mut committed = false;
        let user = self.store.update_user(user_id, &mut |u| {
            let serial = u.named_token_serial + 1;
            let Some(t) = u.named_tokens.iter_mut().find(|t| t.name == name) else {
                committed = false;
                return;
            };
            committed = t.pending.as_ref() == Some(pending);
            if !committed {
                return;
            }
            t.tag = Some(pending.tag);
            t.length = pending.length;
            t.pending = None;
            t.unconfirmed = None;
            t.reset_at = now;
            t.serial = serial;
            u.named_token_serial = serial;
        })?;
        if !committed {
            // Cannot happen while the per-user lock is held (a revocation takes it too).
            tracing::error!(user = %user.username, token = name, "a concurrent change replaced the pending named token");
            return Err(TokenError::Store(StoreError::Corrupt(
                "pending named token replaced".into(),
            )));
        }
        self.store.flush()?;
        self.mailer.metrics().token_rotated(reason);
        tracing::info!(user = %user.username, token = name, reason = ?reason, "named security token issued and emailed");
        Ok(Rotated {
            masked_email: mask_email(&user.email),
            user,
        })
    }
}

/// Whether `user` may take a token called `name`.
fn check_room(user: &User, name: &str, max: usize) -> Result<(), TokenError> {
    if user.named_token(name).is_some() {
        return Err(TokenError::NamedExists(clip(name)));
    }
    if user.named_tokens.len() >= max {
        return Err(TokenError::TooManyNamed(max));
    }
    Ok(())
}

fn clip(name: &str) -> String {
    name.chars().take(MAX_NAME_LEN).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_pattern_and_default_is_reserved() {
        for ok in ["dataloader", "a", "0", "form-tool.v2_x", &"a".repeat(32)] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "default",
            "Dataloader",
            "-x",
            ".x",
            "_x",
            "a b",
            "a/b",
            "é",
            &"a".repeat(33),
        ] {
            assert!(
                matches!(validate_name(bad), Err(TokenError::InvalidName)),
                "{bad}"
            );
        }
    }
}
