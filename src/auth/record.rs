//! What a decided login leaves behind: a failure counted toward lockout (and the lock notice
//! it may send), and the row in the login history.

use super::{Attempt, AuthError, Authenticator, Verified};
use crate::clock::now_ms;
use crate::domain::{Outcome, Reason, canonical_username};
use crate::store::{HistoryRow, User};

impl Authenticator {
    /// Counts a failed login toward lockout (the same wrong secret once) and rejects it; a
    /// failure that locks the account tells its owner by email.
    pub(super) fn fail(
        &self,
        user: &User,
        a: &Attempt<'_>,
        secret: &str,
        reason: Reason,
        now: u64,
    ) -> Result<Verified, AuthError> {
        if self.lockout.enabled()
            && !user.lockout.is_locked(now)
            && self.lockout.first_failure_of(&user.id, secret, now)
        {
            let mut locked = false;
            let updated = self.store.update_user(&user.id, &mut |u| {
                locked = self.lockout.register_failure(&mut u.lockout, now);
                if locked {
                    // Kills cached verifications and sessions at once.
                    u.end_access();
                }
            })?;
            if locked {
                self.metrics.lockout();
                tracing::warn!(user = %updated.username, "account locked after repeated failed logins");
                self.notify_locked(updated, a, now);
            }
        }
        Err(AuthError::Rejected(reason))
    }

    /// Queues the email that tells a user the account was locked. Never waits: a full queue
    /// drops the notice with an error log.
    fn notify_locked(&self, user: User, a: &Attempt<'_>, now: u64) {
        let Some(tx) = &self.lock_notices else {
            return;
        };
        let notice = crate::mail::LockNotice {
            until: user.lockout.locked_until.unwrap_or(u64::MAX),
            user,
            at: now,
            ip: a.ip,
        };
        if tx.try_send(notice).is_err() {
            tracing::error!("the lock-notice queue is full; a lock notice was not sent");
        }
    }

    /// Records in the login history (and the metrics) a login decided outside the password
    /// pipeline: a refresh token redeemed or refused, client credentials, a client's policy.
    pub fn record_decided(&self, a: &Attempt<'_>, result: &Result<Verified, AuthError>) {
        if let Some(outcome) = outcome_of(result) {
            self.metrics.login_decided(a.dialect, outcome);
        }
        self.record(a, result);
    }

    pub(super) fn record(&self, a: &Attempt<'_>, result: &Result<Verified, AuthError>) {
        let token = result
            .as_ref()
            .ok()
            .and_then(|v| v.token.name())
            .map(str::to_owned);
        let (outcome, reason, user_id) = match result {
            Ok(v) if v.superseded => (Outcome::SupersededToken, None, Some(v.user.id.clone())),
            Ok(v) => (Outcome::Success, None, Some(v.user.id.clone())),
            Err(AuthError::Rejected(r)) => (r.outcome(), Some(r.as_str()), None),
            Err(AuthError::Locked { .. }) => (Outcome::Locked, None, None),
            Err(AuthError::RateLimited { .. }) => (Outcome::RateLimited, None, None),
            Err(AuthError::Busy | AuthError::Store(_) | AuthError::Unavailable) => return,
        };
        let user_id = user_id.or_else(|| {
            self.store
                .user_by_name(&canonical_username(a.username))
                .ok()
                .flatten()
                .map(|u| u.id.clone())
        });
        let clip = |s: &str, n: usize| s.chars().take(n).collect::<String>();
        self.history.record(HistoryRow {
            at_ms: now_ms(),
            username: clip(a.username, 120),
            user_id,
            source_ip: a.ip.to_string(),
            dialect: a.dialect.as_str().to_owned(),
            api_version: a.api_version.map(|v| clip(v, 16)),
            client: a.client.map(|c| clip(c, 200)),
            tls: a.tls.map(str::to_owned),
            outcome: outcome.as_str().to_owned(),
            reason: reason.map(str::to_owned),
            token,
        });
    }
}

pub(super) fn outcome_of(result: &Result<Verified, AuthError>) -> Option<Outcome> {
    Some(match result {
        Ok(v) if v.superseded => Outcome::SupersededToken,
        Ok(_) => Outcome::Success,
        Err(AuthError::Rejected(r)) => r.outcome(),
        Err(AuthError::Locked { .. }) => Outcome::Locked,
        Err(AuthError::RateLimited { .. }) => Outcome::RateLimited,
        Err(AuthError::Busy | AuthError::Store(_) | AuthError::Unavailable) => return None,
    })
}
