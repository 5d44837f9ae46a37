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
            Refusal::Upstream(u) => upstream_words(*u).1.into(),
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

    /// The answer, in the caller's dialect.
    pub fn render(&self, dialect: Dialect) -> Response<Body> {
        let mut r = match (self, dialect) {
            // Not the caller's API refusing: tokengate's own answer, the same in every dialect
            // (a SOAP client gets no fault it could mistake for Salesforce's).
            (Refusal::Upstream(_), _) => self.api(),
            (_, Dialect::Soap(flavor)) => self.soap(flavor),
            (_, Dialect::OAuth) => self.oauth(),
            (_, Dialect::Rest) => self.rest(),
            (Refusal::InvalidSession | Refusal::MalformedAuthorization, Dialect::Bulk) => {
                rest::bulk_invalid_session()
            }
            (_, Dialect::Bulk) => self.rest(),
            (_, Dialect::Api) => self.api(),
        };
        if let Some(secs) = self.retry_after() {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Refusal::MethodNotAllowed { allow } = self
            && let Ok(allow) = HeaderValue::from_str(allow)
        {
            r.headers_mut().insert(header::ALLOW, allow);
        }
        r
    }

    fn soap(&self, flavor: Flavor) -> Response<Body> {
        let fault = |status, detail, code, message: &str| {
            respond(status, TEXT_XML, soap::fault(flavor, detail, code, message))
        };
        let processing = StatusCode::INTERNAL_SERVER_ERROR;
        match self {
            // A lock is not told in SOAP: the client has nowhere to show it.
            Refusal::BadCredentials | Refusal::Locked { .. } => {
                respond(processing, TEXT_XML, soap::login_fault(flavor))
            }
            Refusal::InvalidSession | Refusal::MalformedAuthorization => {
                respond(processing, TEXT_XML, soap::invalid_session_fault(flavor))
            }
            Refusal::RateLimited { .. } => fault(
                processing,
                "LoginFault",
                "REQUEST_LIMIT_EXCEEDED",
                "Too many login attempts; retry later",
            ),
            Refusal::Busy => fault(
                processing,
                "UnexpectedErrorFault",
                "SERVER_UNAVAILABLE",
                "Server busy; retry shortly",
            ),
            // Before the envelope is read: the HTTP status says it.
            Refusal::Overloaded => fault(
                StatusCode::SERVICE_UNAVAILABLE,
                "UnexpectedErrorFault",
                "SERVER_UNAVAILABLE",
                "Server busy; retry shortly",
            ),
            Refusal::Internal | Refusal::Unavailable { .. } => fault(
                processing,
                "UnexpectedErrorFault",
                "UNKNOWN_EXCEPTION",
                "An internal error occurred",
            ),
            Refusal::Invalid { message, .. } => {
                respond(processing, TEXT_XML, soap::client_fault(message))
            }
            Refusal::UnsupportedApiVersion => fault(
                processing,
                "UnexpectedErrorFault",
                "UNSUPPORTED_API_VERSION",
                &self.message(),
            ),
            Refusal::MethodNotAllowed { allow } => respond(
                self.status(),
                TEXT_XML,
                soap::client_fault(&format!("SOAP requests must use {allow}")),
            ),
            other => respond(
                other.status(),
                TEXT_XML,
                soap::client_fault(&other.message()),
            ),
        }
    }

    fn oauth(&self) -> Response<Body> {
        let with_status = |mut r: Response<Body>, status| {
            *r.status_mut() = status;
            r
        };
        match self {
            Refusal::BadCredentials | Refusal::Locked { .. } => oauth::invalid_grant(),
            Refusal::RateLimited { .. } => oauth::error(
                "rate_limit_exceeded",
                "too many login attempts; retry later",
            ),
            Refusal::Busy | Refusal::Overloaded => {
                oauth::error("temporarily_unavailable", "server busy; retry shortly")
            }
            Refusal::InvalidSession | Refusal::MalformedAuthorization => with_status(
                oauth::error("invalid_token", "invalid token"),
                self.status(),
            ),
            Refusal::Internal | Refusal::Unavailable { .. } => with_status(
                oauth::error("server_error", "internal error"),
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
            Refusal::Invalid { code, message } => oauth::error(code, message),
            Refusal::Token(t) => {
                let (error, description) = t.words();
                let mut r = with_status(oauth::error(error, description), self.status());
                if self.status() == StatusCode::UNAUTHORIZED {
                    r.headers_mut().insert(
                        header::WWW_AUTHENTICATE,
                        HeaderValue::from_static(r#"Basic realm="tokengate""#),
                    );
                }
                r
            }
            Refusal::BodyTooLarge { .. } => with_status(
                oauth::error("invalid_request", "request body too large"),
                self.status(),
            ),
            // RFC 6749 §3.2 and §5.2: a request the token endpoint cannot use (here, not a
            // form) is a 400 `invalid_request`.
            Refusal::UnsupportedMedia(m) => oauth::error("invalid_request", m),
            Refusal::MethodNotAllowed { allow } => with_status(
                oauth::error("invalid_request", &format!("must use HTTP {allow}")),
                self.status(),
            ),
            other => with_status(
                oauth::error("invalid_request", &other.message()),
                other.status(),
            ),
        }
    }

    fn rest(&self) -> Response<Body> {
        match self {
            Refusal::BadCredentials => rest::basic_login_failed(),
            Refusal::Locked { until } => rest::locked(*until),
            Refusal::InvalidSession => rest::invalid_session(),
            Refusal::MalformedAuthorization => rest::error(
                StatusCode::UNAUTHORIZED,
                "INVALID_AUTH_HEADER",
                "INVALID_HEADER_TYPE",
            ),
            Refusal::RateLimited { .. } => rest::error(
                self.status(),
                "REQUEST_LIMIT_EXCEEDED",
                "Too many login attempts; retry later",
            ),
            Refusal::Busy | Refusal::Overloaded => rest::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "SERVER_UNAVAILABLE",
                "Server busy; retry shortly",
            ),
            Refusal::Internal | Refusal::Unavailable { .. } => rest::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "UNKNOWN_EXCEPTION",
                "internal error",
            ),
            Refusal::Forbidden { message, .. } => {
                rest::error(self.status(), "INSUFFICIENT_ACCESS", message)
            }
            Refusal::NotFound(m) => rest::error(self.status(), "NOT_FOUND", m),
            other => rest::error(other.status(), "INVALID_REQUEST", &other.message()),
        }
    }

    fn api(&self) -> Response<Body> {
        let status = self.status();
        match self {
            // Rejected credentials and a missing or dead session look the same to an API
            // caller: authenticate again.
            Refusal::BadCredentials | Refusal::InvalidSession | Refusal::MalformedAuthorization => {
                let mut r = json_error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_session",
                    &Refusal::InvalidSession.message(),
                );
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(r#"Basic realm="tokengate", charset="UTF-8""#),
                );
                r
            }
            Refusal::Locked { until } => rest::locked(*until),
            Refusal::RateLimited { .. } => json_error(status, "rate_limited", &self.message()),
            Refusal::Busy | Refusal::Overloaded => json_error(status, "busy", &self.message()),
            Refusal::Invalid { code, message }
            | Refusal::Unprocessable { code, message }
            | Refusal::Forbidden { code, message } => json_error(status, code, message),
            Refusal::Missing { code, message } => json_error(status, code, message),
            Refusal::Conflict { code, message } | Refusal::Unavailable { code, message } => {
                json_error(status, code, message)
            }
            Refusal::NotFound(m) => json_error(status, "not_found", m),
            Refusal::MethodNotAllowed { .. } => {
                json_error(status, "method_not_allowed", &self.message())
            }
            Refusal::Internal => json_error(status, "internal", "internal error"),
            Refusal::Token(t) => json_error(status, t.words().0, t.words().1),
            Refusal::UnsupportedApiVersion => json_error(status, "not_found", &self.message()),
            Refusal::Upstream(u) => json_error(status, upstream_words(*u).0, upstream_words(*u).1),
            Refusal::BodyTooLarge { .. }
            | Refusal::UnauthenticatedTooLarge { .. }
            | Refusal::BodyTimeout
            | Refusal::BadRequest(_)
            | Refusal::Misdirected(_)
            | Refusal::UnsupportedMedia(_) => {
                json_error(status, "invalid_request", &self.message())
            }
        }
    }
}

/// `(code, message)` of an upstream failure, tokengate's own JSON in every dialect.
fn upstream_words(u: UpstreamFailure) -> (&'static str, &'static str) {
    match u {
        UpstreamFailure::Malformed => (
            "bad_gateway",
            "the upstream service sent a malformed response",
        ),
        UpstreamFailure::Saturated => (
            "upstream_busy",
            "every connection to the upstream service is in use; retry shortly",
        ),
        UpstreamFailure::Unreachable => ("bad_gateway", "the upstream service is unreachable"),
        UpstreamFailure::Timeout => (
            "gateway_timeout",
            "the upstream service did not answer in time",
        ),
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    async fn text(r: Response<Body>) -> String {
        let b = r.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(b.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn a_failed_login_is_one_answer_per_dialect_and_a_lock_is_told_only_with_proof() {
        let locked = Refusal::from(AuthError::Locked {
            until: u64::MAX,
            proven: false,
        });
        assert_eq!(locked, Refusal::BadCredentials);
        for d in [
            Dialect::Soap(Flavor::Partner),
            Dialect::Soap(Flavor::Enterprise),
            Dialect::OAuth,
        ] {
            let a = Refusal::BadCredentials.render(d);
            let b = Refusal::Locked { until: 1 }.render(d);
            assert_eq!(a.status(), b.status(), "{d:?}");
            assert_eq!(text(a).await, text(b).await, "{d:?}");
        }
        let r = Refusal::Locked { until: u64::MAX }.render(Dialect::Rest);
        assert_eq!(r.status(), StatusCode::LOCKED);
        assert!(text(r).await.contains("PASSWORD_LOCKOUT"));
    }

    #[tokio::test]
    async fn a_slow_body_is_408_in_every_dialect() {
        for d in [
            Dialect::Soap(Flavor::Partner),
            Dialect::OAuth,
            Dialect::Rest,
            Dialect::Api,
        ] {
            let r = Refusal::from(BodyError::Timeout).render(d);
            assert_eq!(r.status(), StatusCode::REQUEST_TIMEOUT, "{d:?}");
        }
    }

    #[test]
    fn only_waiting_refusals_say_when_to_retry() {
        let wait = Refusal::RateLimited {
            retry_after: Duration::from_millis(2500),
        };
        for d in [
            Dialect::Soap(Flavor::Partner),
            Dialect::OAuth,
            Dialect::Rest,
            Dialect::Api,
        ] {
            assert_eq!(wait.render(d).headers()[header::RETRY_AFTER], "3", "{d:?}");
            assert_eq!(Refusal::Busy.render(d).headers()[header::RETRY_AFTER], "1");
            assert!(
                Refusal::BadCredentials
                    .render(d)
                    .headers()
                    .get(header::RETRY_AFTER)
                    .is_none()
            );
        }
    }

    #[tokio::test]
    async fn an_upstream_failure_is_tokengates_json_in_every_dialect() {
        for (failure, status, code) in [
            (UpstreamFailure::Malformed, 502, "bad_gateway"),
            (UpstreamFailure::Unreachable, 502, "bad_gateway"),
            (UpstreamFailure::Saturated, 503, "upstream_busy"),
            (UpstreamFailure::Timeout, 504, "gateway_timeout"),
        ] {
            for d in [
                Dialect::Soap(Flavor::Partner),
                Dialect::OAuth,
                Dialect::Rest,
                Dialect::Bulk,
                Dialect::Api,
            ] {
                let r = Refusal::Upstream(failure).render(d);
                assert_eq!(r.status().as_u16(), status, "{failure:?} {d:?}");
                assert_eq!(r.headers()[header::CONTENT_TYPE], crate::wire::JSON);
                let retry = r.headers().get(header::RETRY_AFTER).cloned();
                assert_eq!(retry.is_some(), failure == UpstreamFailure::Saturated);
                let body: serde_json::Value = serde_json::from_str(&text(r).await).unwrap();
                assert_eq!(body["error"], code, "{failure:?} {d:?}");
            }
        }
    }

    #[test]
    fn an_unreachable_store_is_503_whichever_error_carries_it() {
        let down = || crate::store::StoreError::Unavailable("connection refused".into());
        let from_admin = Refusal::from(AdminError::Store(down()));
        let from_token = Refusal::from(TokenError::Store(down()));
        assert_eq!(from_admin, from_token);
        assert_eq!(from_admin.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(!from_admin.sentence().contains("connection refused"));
    }
}
