//! The identity URLs: `GET /id/{org}/{user}` and `GET /services/oauth2/userinfo`, by a session
//! in `Authorization` or the `oauth_token` parameter.

use std::sync::Arc;

use http::{Request, Response, StatusCode};

use super::identity_of;
use super::oauth::query_param;
use crate::auth::session::Session;
use crate::server::{App, Client, ReqBody};
use crate::wire::credentials::{self, HeaderCredential};
use crate::wire::{Body, JSON, respond, rest};

/// The session of an identity request: `Authorization` or the `oauth_token` parameter.
fn identity_session(app: &App, req: &Request<ReqBody>, peer: Client) -> Option<Arc<Session>> {
    let sid = match credentials::from_headers(req.headers()) {
        Some(HeaderCredential::Session(s)) => s.to_owned(),
        _ => query_param(req.uri(), "oauth_token")?,
    };
    app.sessions.lookup(&sid, peer.ip)
}

pub async fn userinfo(app: Arc<App>, req: Request<ReqBody>, peer: Client) -> Response<Body> {
    let Some(session) = identity_session(&app, &req, peer) else {
        return rest::invalid_session();
    };
    match app.store.user_by_id(&session.user_id) {
        Ok(Some(user)) => respond(
            StatusCode::OK,
            JSON,
            identity_of(&app, &user).userinfo_document().to_string(),
        ),
        Ok(None) => rest::invalid_session(),
        Err(e) => {
            tracing::error!(error = %e, "store error in userinfo");
            rest::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "UNKNOWN_EXCEPTION",
                "internal error",
            )
        }
    }
}

/// `GET /id/{org}/{user}`: the identity document of the session's own user; another user's
/// is refused (403), whether or not that user exists.
pub async fn identity(app: Arc<App>, req: Request<ReqBody>, peer: Client) -> Response<Body> {
    let Some(session) = identity_session(&app, &req, peer) else {
        return rest::invalid_session();
    };
    let mut segs = req
        .uri()
        .path()
        .trim_start_matches("/id/")
        .trim_end_matches('/')
        .split('/');
    let (org, uid) = (
        segs.next().unwrap_or_default(),
        segs.next().unwrap_or_default(),
    );
    let org_ok = org == app.cfg.server.org.id18 || org == app.cfg.server.org.id15;
    let found = if org_ok && segs.next().is_none() && (uid.len() == 15 || uid.len() == 18) {
        // Accept the 15-character form too: the 18-character id is that plus a suffix.
        let full = if uid.len() == 15 {
            crate::ids::to_18(uid)
        } else {
            uid.to_owned()
        };
        if full != session.user_id {
            return rest::error(
                StatusCode::FORBIDDEN,
                "INSUFFICIENT_ACCESS",
                "a session may read only its own user's identity",
            );
        }
        app.store.user_by_id(&full)
    } else {
        Ok(None)
    };
    match found {
        Ok(Some(user)) => respond(
            StatusCode::OK,
            JSON,
            identity_of(&app, &user).id_document().to_string(),
        ),
        Ok(None) => rest::error(StatusCode::NOT_FOUND, "NOT_FOUND", "Bad_Id"),
        Err(e) => {
            tracing::error!(error = %e, "store error in identity");
            rest::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "UNKNOWN_EXCEPTION",
                "internal error",
            )
        }
    }
}
