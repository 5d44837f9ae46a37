//! Refresh tokens (RFC 6749 §6) for the OAuth clients that have them: issued with the password
//! grant's answer, rotated on every use, and reuse-detected (RFC 9700 §4.14.2).
//!
//! A token is `{family id}.{secret}` (both URL-safe base64): the family is the chain of tokens
//! one login started. The store keeps, under the keyed hash of the family id, the family's
//! owner, client, lifetimes and the keyed hash of its *current* token (`store::RefreshFamily`)
//! — never a token. Redeeming a token swaps the current hash for the next token's with one
//! atomic compare-and-swap (a conditional `UPDATE` on PostgreSQL), so of two uses of the same
//! token — on one replica or several — exactly one gets the next token. A token of a live
//! family that is not its current one was used already (or was raced): RFC 9700 §4.14.2 says
//! the server cannot tell the attacker from the client, so the whole family ends, its newest
//! token included.
//!
//! A family ends when its user's credential epoch (`User::epoch`) moves on: a password change,
//! a reset or rotation of the default token (whatever `[tokens] revoke_sessions_on_reset`
//! says: a refresh token outlives sessions by months), disable, lock, login-range or email
//! change. A family started with a named token also ends when that token's value is reset or
//! revoked (which moves no epoch): it remembers the value's serial. It also ends `refresh_token_lifetime` after the login
//! and `refresh_token_idle` after its last use (the client's settings when the family was
//! made and last used), on revocation (RFC 7009), and when its user holds more than
//! `[oauth] max_refresh_families_per_user` (the oldest goes).

use std::sync::Arc;

use base64::Engine as _;

use crate::auth::TokenUsed;
use crate::config::OAuthClient;
use crate::domain::Reason;
use crate::secret::{Domain, SecretError, Secrets, Tag};
use crate::store::{RefreshFamily, Store, StoreError, User};

#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    /// Unknown, malformed, expired, of another client, or its user moved on: one answer.
    #[error("the refresh token is not valid")]
    Invalid,
    /// Refused for a reason the login history records: a used token of a live family (the
    /// family was ended), or the client's policy (the family stays).
    #[error("refresh refused ({})", .reason.as_str())]
    Refused { username: String, reason: Reason },
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Tokens longer than this are not ours and are not hashed.
const MAX_TOKEN_LEN: usize = 128;

pub struct RefreshTokens {
    store: Arc<dyn Store>,
    secrets: Arc<Secrets>,
    max_per_user: usize,
}

/// A redeemed token: the next one, and the user it acts for.
pub struct Redeemed {
    pub token: String,
    pub user: Arc<User>,
    /// The token the family's login presented: the session it opens ends with that token.
    pub login_token: TokenUsed,
}

impl RefreshTokens {
    pub fn new(store: Arc<dyn Store>, secrets: Arc<Secrets>, max_per_user: usize) -> Self {
        Self {
            store,
            secrets,
            max_per_user: max_per_user.max(1),
        }
    }

    fn family_key(&self, family_id: &str) -> Tag {
        self.secrets
            .tag(Domain::RefreshFamily, &[family_id.as_bytes()])
    }

    fn token_hash(&self, token: &str) -> Tag {
        self.secrets.tag(Domain::RefreshToken, &[token.as_bytes()])
    }

    fn new_token(&self, family_id: &str) -> Result<String, SecretError> {
        Ok(format!(
            "{family_id}.{}",
            self.secrets.generate_session_secret()?
        ))
    }

    /// The family id of a token, if it has the shape of one.
    fn family_of(token: &str) -> Option<&str> {
        if token.len() > MAX_TOKEN_LEN {
            return None;
        }
        let (family, secret) = token.split_once('.')?;
        (family.len() == 22 && !secret.is_empty()).then_some(family)
    }

    /// Starts a family for a login `user` just made through `client`; returns its first token.
    /// Starts a family for `user`'s login through `client` with `token`, and returns its first
    /// refresh token.
    pub fn issue(
        &self,
        user: &User,
        client: &OAuthClient,
        login_token: &TokenUsed,
    ) -> Result<String, RefreshError> {
        let id: [u8; 16] = self.secrets.random_bytes()?;
        let family_id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id);
        let token = self.new_token(&family_id)?;
        let now = crate::now_secs();
        let expires_at = now.saturating_add(client.refresh_token_lifetime.as_secs());
        let family = RefreshFamily {
            user_id: user.id.clone(),
            username: user.username.clone(),
            client_id: client.client_id.clone(),
            epoch: user.epoch,
            created_at: now,
            expires_at,
            idle_until: now
                .saturating_add(client.refresh_token_idle.as_secs())
                .min(expires_at),
            current: self.token_hash(&token),
            token_serial: login_token.serial(),
        };
        self.store
            .refresh_insert(&self.family_key(&family_id), &family, self.max_per_user)?;
        Ok(token)
    }

    /// Redeems `token` for `client` from `ip`: the next token of its family, and the user,
    /// whose state and the client's policy still allow it. A used token ends its family.
    pub fn redeem(
        &self,
        token: &str,
        client: &OAuthClient,
        ip: std::net::IpAddr,
    ) -> Result<Redeemed, RefreshError> {
        let Some(family_id) = Self::family_of(token) else {
            return Err(RefreshError::Invalid);
        };
        let key = self.family_key(family_id);
        let Some(family) = self.store.refresh_family(&key)? else {
            return Err(RefreshError::Invalid);
        };
        // RFC 6749 §6: the token must have been issued to the authenticated client.
        if family.client_id != client.client_id {
            return Err(RefreshError::Invalid);
        }
        let presented = self.token_hash(token);
        if !crate::secret::constant_time_eq(&presented, &family.current) {
            return Err(self.reused(&key, family));
        }
        let now = crate::now_secs();
        if now > family.ends_at() {
            self.store.refresh_delete(&key)?;
            return Err(RefreshError::Invalid);
        }
        let user = self
            .store
            .user_by_id(&family.user_id)?
            .filter(|u| u.epoch == family.epoch && !u.disabled && !u.lockout.is_locked(now));
        // The named token's value the login presented, while the user still holds it.
        let login_token = user.as_ref().and_then(|u| match family.token_serial {
            0 => Some(TokenUsed::Default),
            serial => {
                u.named_tokens
                    .iter()
                    .find(|t| t.serial == serial)
                    .map(|t| TokenUsed::Named {
                        name: t.name.as_str().into(),
                        serial,
                    })
            }
        });
        let (Some(user), Some(login_token)) = (user, login_token) else {
            self.store.refresh_delete(&key)?;
            return Err(RefreshError::Invalid);
        };
        // The client's policy now (a family outlives configuration changes): refused without
        // using the token up, so the family works again once the policy allows it.
        let refused = if !client.permits(&user.username) {
            Some(Reason::NotPermittedForClient)
        } else if !client.relax_ip && !user.allows(ip) {
            Some(Reason::OutsideLoginRange)
        } else {
            None
        };
        if let Some(reason) = refused {
            return Err(RefreshError::Refused {
                username: user.username.clone(),
                reason,
            });
        }
        let next_token = self.new_token(family_id)?;
        let next = RefreshFamily {
            idle_until: now
                .saturating_add(client.refresh_token_idle.as_secs())
                .min(family.expires_at),
            current: self.token_hash(&next_token),
            ..family.clone()
        };
        if !self.store.refresh_rotate(&key, &presented, &next)? {
            // Another use of the same token won the swap a moment ago: a reuse all the same.
            return Err(self.reused(&key, family));
        }
        Ok(Redeemed {
            token: next_token,
            user,
            login_token,
        })
    }

    fn reused(&self, key: &Tag, family: RefreshFamily) -> RefreshError {
        if let Err(e) = self.store.refresh_delete(key) {
            return RefreshError::Store(e);
        }
        tracing::warn!(
            user = %family.username,
            client = %family.client_id,
            "a refresh token was used twice: its family is revoked"
        );
        RefreshError::Refused {
            username: family.username,
            reason: Reason::RefreshTokenReused,
        }
    }

    /// Ends the family of `token` (RFC 7009: any of its tokens, used or current, revokes it).
    /// Returns whether there was one.
    pub fn revoke(&self, token: &str) -> Result<bool, RefreshError> {
        match Self::family_of(token) {
            Some(family_id) => Ok(self.store.refresh_delete(&self.family_key(family_id))?),
            None => Ok(false),
        }
    }

    /// Deletes the families that ended (the leader's housekeeping).
    pub fn prune(&self) -> Result<usize, RefreshError> {
        Ok(self.store.refresh_prune(crate::now_secs())?)
    }
}
