//! The refusal each error decides: from `AuthError`, `BodyError`, `TokenError` and
//! `AdminError`, once, whatever the dialect.

use super::*;

impl From<AuthError> for Refusal {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Rejected(_) | AuthError::Locked { proven: false, .. } => {
                Refusal::BadCredentials
            }
            AuthError::Locked {
                until,
                proven: true,
            } => Refusal::Locked { until },
            AuthError::RateLimited { retry_after } => Refusal::RateLimited { retry_after },
            AuthError::Busy => Refusal::Busy,
            AuthError::Unavailable => Refusal::Busy,
            AuthError::Store(e) => Refusal::internal(&e),
        }
    }
}

impl From<BodyError> for Refusal {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::TooLarge(limit) => Refusal::BodyTooLarge { limit },
            BodyError::Timeout => Refusal::BodyTimeout,
            BodyError::Busy => Refusal::Overloaded,
            BodyError::UnsupportedEncoding(_) => Refusal::UnsupportedMedia(e.to_string().into()),
            BodyError::BadGzip | BodyError::Io => Refusal::BadRequest(e.to_string().into()),
        }
    }
}

impl From<TokenError> for Refusal {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::Delivery(MailError::NotConfigured) => Refusal::Unavailable {
                code: "mail_not_configured",
                message: "email delivery is not configured; no token can be issued",
            },
            TokenError::Delivery(e) => {
                tracing::warn!(error = %e, "token email failed");
                Refusal::Unavailable {
                    code: "mail_delivery_failed",
                    message: "the new token could not be emailed, so the current token stays valid; try again later",
                }
            }
            TokenError::NoSuchUser(_) => Refusal::NotFound("no such user"),
            TokenError::Disabled => Refusal::Conflict {
                code: "user_disabled",
                message: "the user is disabled",
            },
            TokenError::Policy(p) => Refusal::Invalid {
                code: "password_policy",
                message: format!("the new password must have {p}").into(),
            },
            TokenError::Period | TokenError::Supplied => Refusal::invalid(e.to_string()),
            TokenError::InvalidName => Refusal::Unprocessable {
                code: "invalid_token_name",
                message: e.to_string().into(),
            },
            TokenError::NamedExists(_) => Refusal::Conflict {
                code: "token_exists",
                message: "the user already has a token with that name",
            },
            TokenError::TooManyNamed(_) => Refusal::Conflict {
                code: "too_many_tokens",
                message: "the user holds the most named tokens allowed ([tokens] max_named_per_user); revoke one first",
            },
            TokenError::NoSuchToken(_) => Refusal::Missing {
                code: "no_such_token",
                message: "the user has no token with that name",
            },
            TokenError::Store(e) => Refusal::store(&e),
            e @ TokenError::Secret(_) => Refusal::internal(&e),
        }
    }
}

impl From<AdminError> for Refusal {
    fn from(e: AdminError) -> Self {
        match e {
            AdminError::NoSuchUser(_) => Refusal::NotFound("no such user"),
            AdminError::Store(crate::store::StoreError::UserExists(_)) => Refusal::Conflict {
                code: "user_exists",
                message: "a user with that username exists",
            },
            // A store failure is decided once, in `Refusal::store` (an unreachable database
            // is 503, whichever operation met it).
            AdminError::Store(e) => Refusal::store(&e),
            AdminError::Token(t) => t.into(),
            AdminError::LastAdmin => Refusal::Conflict {
                code: "last_admin",
                message: "this would leave no enabled administrator; make another user an administrator first",
            },
            AdminError::SelfDemotion => Refusal::Conflict {
                code: "self_demotion",
                message: "administrators cannot disable, demote or delete their own account; ask another administrator",
            },
            AdminError::Undeliverable => Refusal::Unavailable {
                code: "mail_not_configured",
                message: "email delivery is not configured, so the new user's security token could not be delivered; no user was created",
            },
            AdminError::UndeliverableToken => Refusal::Unavailable {
                code: "mail_not_configured",
                message: "email delivery is not configured, so the new token could not be delivered; nothing was added",
            },
            AdminError::Synthetic(m) => Refusal::Forbidden {
                code: "synthetic_users_refused",
                message: m.into(),
            },
            e @ (AdminError::Username(_)
            | AdminError::Email(_)
            | AdminError::Password(_)
            | AdminError::FullName(_)
            | AdminError::Period(_)
            | AdminError::Range(_)
            | AdminError::Invalid(_)
            | AdminError::Mail(MailError::Address(_))) => Refusal::invalid(e.to_string()),
            e => Refusal::internal(&e),
        }
    }
}
