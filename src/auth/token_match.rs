//! Which of a user's tokens a login's secret ends with ([`TokenUsed`]), checked against every
//! candidate in constant time, and the throttled note of a named token's last use.

use std::sync::Arc;

use super::{Attempt, Authenticator};
use crate::store::User;

/// How often, at most, a named token's last use is written to the store (seconds).
const LAST_USED_EVERY_SECS: u64 = 60;

/// The token a login presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenUsed {
    /// None: the password alone (a trusted network, the console, the self-service reset).
    None,
    /// The user's default token (its current, superseded or unconfirmed value).
    Default,
    /// A named token, by name and the serial of the value it had.
    Named { name: Arc<str>, serial: u64 },
}

impl TokenUsed {
    /// The name the history and the access log give it: "default", the token's name, or none.
    pub fn name(&self) -> Option<&str> {
        match self {
            TokenUsed::None => None,
            TokenUsed::Default => Some(crate::store::DEFAULT_TOKEN_NAME),
            TokenUsed::Named { name, .. } => Some(name),
        }
    }

    /// The metrics' label: never the name (a name per series would be unbounded).
    pub fn kind(&self) -> Option<&'static str> {
        match self {
            TokenUsed::None => None,
            TokenUsed::Default => Some("default"),
            TokenUsed::Named { .. } => Some("named"),
        }
    }

    /// The serial a session made with this token carries (0: not a named token).
    pub fn serial(&self) -> u64 {
        match self {
            TokenUsed::Named { serial, .. } => *serial,
            _ => 0,
        }
    }
}

impl Authenticator {
    /// Which of the user's tokens `secret` ends with: the split point (where the password
    /// ends) and whether it was the superseded default token, and which token it was.
    ///
    /// Every token the user may hold is a candidate: the default token, its superseded value
    /// while its grace window lasts, a value whose delivery a crash cut short (`tokens`), and
    /// the same for each named token. Every candidate is checked, whichever matches, with no
    /// early exit, so the time does not tell which one did. The keyed hash of the secret's
    /// tail is computed once per distinct token length (all tokens share the configured
    /// length, so once), and every candidate costs one 32-byte constant-time comparison; the
    /// named candidates are padded with comparisons against the dummy's tag up to
    /// `max_named_per_user` slots, so the work does not tell how many named tokens the user
    /// holds either (up to the bound).
    pub(super) fn match_token(
        &self,
        user: &User,
        secret: &str,
        now: u64,
    ) -> (Option<(usize, bool)>, TokenUsed) {
        let me = crate::ids::incarnation();
        let mut tails: Vec<(usize, Option<(usize, crate::secret::Tag)>)> = Vec::with_capacity(2);
        let mut tail_tag = |length: usize| -> Option<(usize, crate::secret::Tag)> {
            if let Some((_, t)) = tails.iter().find(|(l, _)| *l == length) {
                return *t;
            }
            let t = secret
                .len()
                .checked_sub(length)
                .filter(|&i| i > 0 && secret.is_char_boundary(i))
                .map(|at| (at, self.secrets.token_tag(&secret[at..])));
            tails.push((length, t));
            t
        };
        let mut check = |tag: &crate::secret::Tag, length: usize| -> Option<usize> {
            let (at, computed) = tail_tag(length)?;
            crate::secret::constant_time_eq(&computed, tag).then_some(at)
        };

        let mut matched: Option<(usize, bool)> = None;
        let mut token = TokenUsed::None;
        let default = [
            Some((user.token_tag, user.token_length, false)),
            user.previous_token
                .as_ref()
                .filter(|p| p.at > now)
                .map(|p| (p.tag, p.length, true)),
            user.unconfirmed_token
                .as_ref()
                .map(|p| (p.tag, p.length, false)),
            user.pending_token
                .as_ref()
                .filter(|p| p.owner != me)
                .map(|p| (p.tag, p.length, false)),
        ];
        for (tag, length, superseded) in default.into_iter().flatten() {
            if let Some(at) = check(&tag, length)
                && matched.is_none()
            {
                matched = Some((at, superseded));
                token = TokenUsed::Default;
            }
        }
        for t in &user.named_tokens {
            let values = [
                t.tag.map(|tag| (tag, t.length)),
                t.unconfirmed.as_ref().map(|p| (p.tag, p.length)),
                t.pending
                    .as_ref()
                    .filter(|p| p.owner != me)
                    .map(|p| (p.tag, p.length)),
            ];
            for (tag, length) in values.into_iter().flatten() {
                if let Some(at) = check(&tag, length)
                    && matched.is_none()
                {
                    matched = Some((at, false));
                    token = TokenUsed::Named {
                        name: t.name.as_str().into(),
                        serial: t.serial,
                    };
                }
            }
        }
        // The padding: as many comparisons as the missing slots would have cost.
        let dummy = self.dummy.token_tag;
        for _ in user.named_tokens.len()..self.max_named_per_user {
            std::hint::black_box(check(&dummy, user.token_length));
        }
        (matched, token)
    }

    /// Notes when and from where a named token was last used: a store write at most once a
    /// minute per token (a login verified without the cache, never a cached one), so busy
    /// integrations do not turn logins into writes.
    pub(super) fn note_named_use(
        &self,
        user: Arc<User>,
        token: &TokenUsed,
        a: &Attempt<'_>,
        now: u64,
    ) -> Arc<User> {
        let TokenUsed::Named { serial, .. } = token else {
            return user;
        };
        let due = user
            .named_tokens
            .iter()
            .find(|t| t.serial == *serial)
            .is_some_and(|t| {
                t.last_used_at
                    .is_none_or(|at| now >= at.saturating_add(LAST_USED_EVERY_SECS))
            });
        if !due {
            return user;
        }
        let ip = a.ip.to_string();
        let dialect = a.dialect.as_str();
        let written = self.store.update_user(&user.id, &mut |u| {
            if let Some(t) = u.named_tokens.iter_mut().find(|t| t.serial == *serial) {
                t.last_used_at = Some(now);
                t.last_client_ip = Some(ip.clone());
                t.last_dialect = Some(dialect.to_owned());
            }
        });
        match written {
            Ok(u) => Arc::new(u),
            Err(e) => {
                tracing::warn!(error = %e, "could not note a named token's use");
                user
            }
        }
    }
}
