//! Every refusal tokengate answers itself: what went wrong is decided once, as a [`Refusal`],
//! from the error that caused it (`AuthError`, `BodyError`, `TokenError`, `AdminError`), and
//! each dialect only renders it ([`Refusal::render`]): a SOAP fault, an OAuth error, a REST
//! error array, the Bulk 1.0 XML error, or tokengate's own `{"error", "message"}`. The console
//! shows [`Refusal::status`] and [`Refusal::message`] in a page.
//!
//! Decisions made here for every dialect:
//! - A failed login is one answer, whatever the reason (unknown user, wrong password or token,
//!   disabled, outside the login ranges, locked without proof of the right secret). A lock is
//!   told only where the protocol has a place for it (REST and the JSON API, 423), and only to
//!   a caller who presented the right credentials.
//! - A body that does not arrive in time is `408 Request Timeout` (RFC 9110 §15.5.9); one over
//!   its limit `413`; an unknown content coding `415`.
//! - SOAP faults produced while processing an envelope are HTTP 500 (SOAP 1.1 §6.2); refusals
//!   before an envelope is read keep their HTTP status.
//! - Waiting helps with `Busy` and `Overloaded` (`Retry-After: 1`), with an upstream whose
//!   connections are all in use (the same), and with `RateLimited` (the limiter's wait); no
//!   other refusal carries `Retry-After`.
//! - An upstream that gives no usable answer (`proxy::UpstreamFailure`) is 502, 503 or 504
//!   with tokengate's own JSON in every dialect: it is not the caller's API refusing.
//! - A store that cannot be reached is 503 (`Refusal::store`), whichever error carried it.
//!
//! Here: the refusals and what a person is told of each; each error's refusal in `from`; each
//! dialect's answer in `render`.

use std::borrow::Cow;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use super::body::BodyError;
use crate::admin::AdminError;
use crate::auth::AuthError;
use crate::mail::MailError;
use crate::proxy::UpstreamFailure;
use crate::tokens::TokenError;
use crate::wire::soap::{self, Flavor};
use crate::wire::{Body, TEXT_XML, json_error, oauth, respond, rest};

mod from;
mod render;
#[cfg(test)]
mod tests;

/// The message of a failed login, in every dialect that has a message.
const LOGIN_FAILED: &str = soap::LOGIN_FAILED_MESSAGE;
/// Seconds a client should wait when a bounded resource is full.
const BUSY_RETRY_SECS: u64 = 1;

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A login failed (see the module docs: one answer for every reason).
    BadCredentials,
    /// The account is locked, and the caller presented the right credentials.
    Locked {
        until: u64,
    },
    /// No session, or one that ended or was never valid.
    InvalidSession,
    /// An `Authorization` header that is neither Basic nor a session (REST only).
    MalformedAuthorization,
    RateLimited {
        retry_after: Duration,
    },
    /// Password verification is saturated (argon2 admission).
    Busy,
    /// A bounded resource other than hashing is spent (the memory for request bodies).
    Overloaded,
    BodyTooLarge {
        limit: usize,
    },
    /// A SOAP body whose `Header` (and so its session) does not arrive within the `limit`
    /// bytes read before the caller is known (`handlers::soap`).
    UnauthenticatedTooLarge {
        limit: usize,
    },
    BodyTimeout,
    /// The HTTP message itself cannot be used: its target or host (`server::target`), or a
    /// body that cannot be read or decoded (a broken connection, corrupt gzip). Refused
    /// before any dialect's processing, so SOAP answers it with 400 too.
    BadRequest(Cow<'static, str>),
    /// The request names a host that is not tokengate's (RFC 9110 §15.5.20).
    Misdirected(Cow<'static, str>),
    UnsupportedMedia(Cow<'static, str>),
    /// The request cannot be read or makes no sense; `code` for the JSON API.
    Invalid {
        code: &'static str,
        message: Cow<'static, str>,
    },
    /// Authenticated, but not allowed to do this.
    Forbidden {
        code: &'static str,
        message: Cow<'static, str>,
    },
    NotFound(&'static str),
    /// A named thing inside a found one is not there (a user's named token); `code` for the
    /// JSON API.
    Missing {
        code: &'static str,
        message: &'static str,
    },
    /// Well-formed, but a value breaks a rule (RFC 9110 §15.5.21: 422); `code` for the API.
    Unprocessable {
        code: &'static str,
        message: Cow<'static, str>,
    },
    Conflict {
        code: &'static str,
        message: &'static str,
    },
    /// A dependency the request needs is missing or failed (mail).
    Unavailable {
        code: &'static str,
        message: &'static str,
    },
    MethodNotAllowed {
        allow: Cow<'static, str>,
    },
    /// A SOAP path with an API version that does not exist.
    UnsupportedApiVersion,
    /// The upstream gave no usable answer (`proxy`).
    Upstream(UpstreamFailure),
    /// Something broke on our side; logged where it happened, never described to the caller.
    Internal,
    /// A refusal of the OAuth token endpoint's own (RFC 6749 §5.2).
    Token(TokenRefusal),
}

/// The token endpoint's refusals, as Salesforce's token endpoint words them
/// (docs/salesforce-protocol.md §2.3): all 400, but a client that authenticated with HTTP
/// Basic and failed gets 401 with `WWW-Authenticate` (RFC 6749 §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRefusal {
    UnsupportedGrantType,
    /// No `client_id`, or one that is not registered.
    InvalidClientId,
    /// The client's secret is missing or wrong; `basic`: it was presented with HTTP Basic.
    InvalidClient {
        basic: bool,
    },
    /// An `Authorization: Basic` header that is not readable client credentials.
    MalformedClientAuth,
    /// More than one client authentication method (RFC 6749 §2.3).
    SeveralClientMethods,
    /// A refresh token that is unknown, already used, revoked or expired.
    ExpiredRefreshToken,
    /// The client is not allowed this grant type (RFC 6749 §5.2 `unauthorized_client`).
    UnauthorizedClient,
    /// client_credentials for a client without a `run_as` user (Salesforce's words).
    NoClientCredentialsUser,
}

impl TokenRefusal {
    /// `(error, error_description)`.
    fn words(self) -> (&'static str, &'static str) {
        match self {
            TokenRefusal::UnsupportedGrantType => {
                ("unsupported_grant_type", "grant type not supported")
            }
            TokenRefusal::InvalidClientId => ("invalid_client_id", "client identifier invalid"),
            TokenRefusal::InvalidClient { .. } => ("invalid_client", "invalid client credentials"),
            TokenRefusal::MalformedClientAuth => (
                "invalid_client",
                "the Authorization header is not readable client credentials",
            ),
            TokenRefusal::SeveralClientMethods => (
                "invalid_request",
                "use one client authentication method: HTTP Basic or client_secret in the body",
            ),
            TokenRefusal::ExpiredRefreshToken => ("invalid_grant", "expired access/refresh token"),
            TokenRefusal::UnauthorizedClient => (
                "unauthorized_client",
                "this client is not allowed this grant type",
            ),
            TokenRefusal::NoClientCredentialsUser => {
                ("invalid_grant", "no client credentials user enabled")
            }
        }
    }
}

/// How the caller speaks, which decides the shape of a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Soap(Flavor),
    OAuth,
    /// Salesforce REST: calls forwarded to the upstream, the identity URLs.
    Rest,
    /// Bulk API 1.0 (`/services/async/`).
    Bulk,
    /// tokengate's own JSON API.
    Api,
}

impl Dialect {
    /// The dialect a request's path implies, for refusals made before its handler runs.
    pub fn of_path(path: &str) -> Self {
        if path.starts_with("/services/Soap/") {
            let flavor = soap::parse_path(path).map_or(Flavor::Partner, |p| p.flavor);
            Dialect::Soap(flavor)
        } else if path.starts_with("/services/oauth2/") {
            Dialect::OAuth
        } else if path.starts_with("/tokengate/") {
            Dialect::Api
        } else if path.starts_with("/services/async/") {
            Dialect::Bulk
        } else {
            Dialect::Rest
        }
    }
}

impl Refusal {
    pub fn invalid(message: impl Into<Cow<'static, str>>) -> Self {
        Refusal::Invalid {
            code: "invalid_request",
            message: message.into(),
        }
    }

    /// A store failure, for every error that carries one (`TokenError`, `AdminError`): an unreachable database is the server being unavailable (503 with
    /// `Retry-After`, and `SERVER_UNAVAILABLE` in SOAP, as when it is busy); anything else is
    /// internal (logged, 500).
    pub fn store(e: &crate::store::StoreError) -> Self {
        if let crate::store::StoreError::Unavailable(_) = e {
            tracing::warn!(error = %e, "refused: the database is unavailable");
            return Refusal::Busy;
        }
        Refusal::internal(e)
    }

    /// Logs `e` (it is ours to look at, not the caller's) and refuses with 500.
    pub fn internal(e: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %e, "internal error");
        Refusal::Internal
    }

    /// The HTTP status outside SOAP, where faults keep their own rule.
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::BadCredentials | Refusal::InvalidSession | Refusal::MalformedAuthorization => {
                StatusCode::UNAUTHORIZED
            }
            Refusal::Locked { .. } => StatusCode::LOCKED,
            Refusal::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Refusal::Busy | Refusal::Overloaded | Refusal::Unavailable { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Refusal::BodyTooLarge { .. } | Refusal::UnauthenticatedTooLarge { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            Refusal::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Refusal::UnsupportedMedia(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Refusal::Invalid { .. } | Refusal::BadRequest(_) => StatusCode::BAD_REQUEST,
            Refusal::Misdirected(_) => StatusCode::MISDIRECTED_REQUEST,
            Refusal::Forbidden { .. } => StatusCode::FORBIDDEN,
            Refusal::NotFound(_) | Refusal::Missing { .. } | Refusal::UnsupportedApiVersion => {
                StatusCode::NOT_FOUND
            }
            Refusal::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Refusal::Conflict { .. } => StatusCode::CONFLICT,
            Refusal::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Refusal::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Refusal::Upstream(UpstreamFailure::Malformed | UpstreamFailure::Unreachable) => {
                StatusCode::BAD_GATEWAY
            }
            Refusal::Upstream(UpstreamFailure::Saturated) => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::Upstream(UpstreamFailure::Timeout) => StatusCode::GATEWAY_TIMEOUT,
            // RFC 6749 §5.2: a client that tried HTTP Basic and failed gets 401.
            Refusal::Token(
                TokenRefusal::InvalidClient { basic: true } | TokenRefusal::MalformedClientAuth,
            ) => StatusCode::UNAUTHORIZED,
            Refusal::Token(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// What a person is told (the console, and the JSON API's `message`).
    pub fn message(&self) -> Cow<'static, str> {
        match self {
            Refusal::BadCredentials => LOGIN_FAILED.into(),
            Refusal::Locked { until } => rest::locked_message(*until).into(),
            Refusal::InvalidSession => {
                "authenticate with a session (Authorization: Bearer) or HTTP Basic".into()
            }
            Refusal::MalformedAuthorization => "INVALID_HEADER_TYPE".into(),
            Refusal::RateLimited { .. } => "too many requests; retry later".into(),
            Refusal::Busy | Refusal::Overloaded => "server busy; retry shortly".into(),
            Refusal::BodyTooLarge { limit } => BodyError::TooLarge(*limit).to_string().into(),
            Refusal::BodyTimeout => BodyError::Timeout.to_string().into(),
            Refusal::UnauthenticatedTooLarge { limit } => format!(
                "Before the session is checked, the envelope's Header must arrive within its first {limit} bytes"
            )
            .into(),
            Refusal::UnsupportedApiVersion => "Invalid Api version specified on URL".into(),
            Refusal::Upstream(u) => render::upstream_words(*u).1.into(),
            Refusal::UnsupportedMedia(m)
            | Refusal::BadRequest(m)
            | Refusal::Misdirected(m)
            | Refusal::Invalid { message: m, .. }
            | Refusal::Unprocessable { message: m, .. }
            | Refusal::Forbidden { message: m, .. } => m.clone(),
            Refusal::NotFound(m) | Refusal::Missing { message: m, .. } => Cow::Borrowed(m),
            Refusal::Conflict { message, .. } | Refusal::Unavailable { message, .. } => {
                Cow::Borrowed(message)
            }
            Refusal::MethodNotAllowed { allow } => format!("use {allow}").into(),
            Refusal::Internal => "internal error".into(),
            Refusal::Token(t) => t.words().1.into(),
        }
    }

    /// What a person reading a page is told (the console): a sentence, never an internal
    /// detail.
    pub fn sentence(&self) -> Cow<'static, str> {
        match self {
            // A password alone proves nothing a guesser could not have tried: a lock is told
            // like a wrong password (the owner learns of it by email).
            Refusal::BadCredentials | Refusal::Locked { .. } => {
                "Invalid username or password, or the account is locked.".into()
            }
            Refusal::InvalidSession => "Your console session expired. Sign in again.".into(),
            Refusal::RateLimited { retry_after } => format!(
                "Too many attempts. Try again in {} seconds.",
                crate::limit::retry_after_secs(*retry_after)
            )
            .into(),
            Refusal::Busy | Refusal::Overloaded => {
                "The server is busy; try again in a moment.".into()
            }
            Refusal::Unavailable {
                code: "mail_delivery_failed",
                ..
            } => "The new security token could not be emailed, so your current token still works. Try again later.".into(),
            Refusal::Unavailable { .. } => {
                "Email delivery is not configured, so no new security token can be issued.".into()
            }
            Refusal::Internal => "An internal error occurred.".into(),
            other => {
                let m = other.message();
                let mut s = m[..1].to_uppercase() + &m[1..];
                if !s.ends_with('.') {
                    s.push('.');
                }
                s.into()
            }
        }
    }

    /// The seconds a client should wait, when waiting helps.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Refusal::RateLimited { retry_after } => {
                Some(crate::limit::retry_after_secs(*retry_after))
            }
            Refusal::Busy | Refusal::Overloaded | Refusal::Upstream(UpstreamFailure::Saturated) => {
                Some(BUSY_RETRY_SECS)
            }
            _ => None,
        }
    }
}
