//! Every path tokengate does not answer itself: authenticated by a session or HTTP Basic,
//! then forwarded (`proxy`). Unauthenticated calls get the API's own invalid-session answer
//! (Bulk 1.0 under `/services/async/`, REST elsewhere).

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;

use super::{busy, header_str, log_login, retry_after_header};
use crate::auth::{Attempt, AuthError, Dialect};
use crate::proxy::Principal;
use crate::server::{App, Client, ReqBody};
use crate::wire::credentials::{self, HeaderCredential};
use crate::wire::{Body, rest};

/// Any other path: authenticate by session or Basic, then forward. Unauthenticated calls get
/// the API's own invalid-session answer (Bulk 1.0 under `/services/async/`, REST elsewhere).
pub async fn forward(
    app: Arc<App>,
    req: Request<ReqBody>,
    peer: Client,
    host: Option<http::HeaderValue>,
) -> Response<Body> {
    let bulk_v1 = req.uri().path().starts_with("/services/async/");
    let invalid = || {
        if bulk_v1 {
            rest::bulk_invalid_session()
        } else {
            rest::invalid_session()
        }
    };
    // One upstream call below for both kinds of credential: two would each keep a copy of the
    // forwarding future's state in this one, which hyper moves once per request.
    let (session, user);
    let who = match credentials::from_headers(req.headers()) {
        Some(HeaderCredential::Session(sid)) => match app.sessions.lookup(sid, peer.ip) {
            Some(s) => {
                session = s;
                Principal {
                    username: &session.username,
                    user_id: &session.user_id,
                }
            }
            None => return invalid(),
        },
        Some(HeaderCredential::Basic(username, secret)) => {
            match basic_login(&app, &req, peer, &username, &secret).await {
                Ok(u) => {
                    user = u;
                    Principal {
                        username: &user.username,
                        user_id: &user.id,
                    }
                }
                Err(refused) => return refused,
            }
        }
        Some(HeaderCredential::Malformed) if !bulk_v1 => {
            return rest::error(
                StatusCode::UNAUTHORIZED,
                "INVALID_AUTH_HEADER",
                "INVALID_HEADER_TYPE",
            );
        }
        Some(HeaderCredential::Malformed) | None => return invalid(),
    };
    app.upstream
        .forward(
            req.map(|b| b.map_err(Into::into).boxed()),
            peer.ip,
            who,
            host,
        )
        .await
}

/// Basic credentials on a forwarded call: the user they verify as, or the REST answer that
/// refuses them.
async fn basic_login(
    app: &App,
    req: &Request<ReqBody>,
    peer: Client,
    username: &str,
    secret: &str,
) -> Result<Arc<crate::store::User>, Response<Body>> {
    let path = req.uri().path();
    let api_version = path
        .strip_prefix("/services/data/v")
        .or_else(|| path.strip_prefix("/services/async/"))
        .and_then(|p| p.split('/').next());
    let client = header_str(req.headers(), "user-agent");
    let attempt = Attempt {
        username,
        secret,
        ip: peer.ip,
        dialect: Dialect::Basic,
        api_version,
        client,
        tls: peer.tls,
        password_only: false,
    };
    let result = app.auth.login(&attempt).await;
    if result.is_err() {
        log_login("basic", username, &result, client);
    }
    match result {
        Ok(v) => Ok(v.user),
        Err(AuthError::Rejected(_)) => Err(rest::basic_login_failed()),
        // Only a caller whose secret carried the right token learns of the lock, with its end.
        Err(AuthError::Locked {
            until,
            proven: true,
        }) => Err(rest::locked(until)),
        Err(AuthError::Locked { proven: false, .. }) => Err(rest::basic_login_failed()),
        Err(AuthError::RateLimited { retry_after }) => Err(retry_after_header(
            rest::error(
                StatusCode::TOO_MANY_REQUESTS,
                "REQUEST_LIMIT_EXCEEDED",
                "Too many login attempts; retry later",
            ),
            retry_after,
        )),
        Err(AuthError::Busy) => Err(busy(rest::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "SERVER_UNAVAILABLE",
            "Server busy; retry shortly",
        ))),
        Err(AuthError::Store(e)) => {
            tracing::error!(error = %e, "store error during Basic login");
            Err(rest::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "UNKNOWN_EXCEPTION",
                "internal error",
            ))
        }
    }
}
