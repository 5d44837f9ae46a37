//! The identity URLs: `GET /id/{org}/{user}` and `GET /services/oauth2/userinfo`, by a session
//! in `Authorization` or the `oauth_token` parameter.

use std::sync::Arc;

use http::{Request, Response, StatusCode};

use super::identity_of;
use super::oauth::query_param;
use crate::server::caller::{self, Credential, Login};
use crate::server::refusal::{Dialect, Refusal};
use crate::server::{App, Client, ReqBody};
use crate::store::User;
use crate::wire::{Body, JSON, respond};

/// The user of an identity request's session: in a session header, or the `oauth_token`
/// parameter. Only a session will do (Basic credentials are not an OAuth token).
async fn session_user(
    app: &App,
    req: &Request<ReqBody>,
    peer: Client,
) -> Result<(String, Arc<User>), Refusal> {
    let credential = match Credential::from_headers(req.headers()) {
        session @ Credential::Session(_) => session,
        _ => Credential::None.or_session(query_param(req.uri(), "oauth_token")),
    };
    let who = caller::identify(app, credential, peer, || Login::BASIC).await?;
    Ok((who.user_id().to_owned(), who.user(app)?))
}

pub async fn userinfo(app: Arc<App>, req: Request<ReqBody>, peer: Client) -> Response<Body> {
    match session_user(&app, &req, peer).await {
        Ok((_, user)) => respond(
            StatusCode::OK,
            JSON,
            identity_of(&app, &user).userinfo_document().to_string(),
        ),
        Err(r) => r.render(Dialect::Rest),
    }
}

/// `GET /id/{org}/{user}`: the identity document of the session's own user; another user's
/// is refused (403), whether or not that user exists.
pub async fn identity(app: Arc<App>, req: Request<ReqBody>, peer: Client) -> Response<Body> {
    let (session_user_id, user) = match session_user(&app, &req, peer).await {
        Ok(s) => s,
        Err(r) => return r.render(Dialect::Rest),
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
        if full != session_user_id {
            return Refusal::Forbidden {
                code: "forbidden",
                message: "a session may read only its own user's identity".into(),
            }
            .render(Dialect::Rest);
        }
        true
    } else {
        false
    };
    if !found {
        return Refusal::NotFound("Bad_Id").render(Dialect::Rest);
    }
    respond(
        StatusCode::OK,
        JSON,
        identity_of(&app, &user).id_document().to_string(),
    )
}
