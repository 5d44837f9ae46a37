//! A [`Refusal`] as each dialect answers it: a SOAP fault, an OAuth error, a REST error
//! array, the Bulk 1.0 XML error, or tokengate's own `{"error", "message"}`.

use super::*;

impl Refusal {
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
pub(super) fn upstream_words(u: UpstreamFailure) -> (&'static str, &'static str) {
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
