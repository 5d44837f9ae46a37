//! The OAuth 2.0 endpoints: the password grant on `/services/oauth2/token` (a login) and
//! `/services/oauth2/revoke`.

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};

use super::log_login;
use crate::auth::Attempt;
use crate::domain::Dialect;
use crate::server::read;
use crate::server::refusal::{self, Refusal};
use crate::server::{App, Client, ReqBody};
use crate::wire::{Body, JSON, oauth, respond};

const AS_OAUTH: refusal::Dialect = refusal::Dialect::OAuth;

async fn read_form(
    app: &App,
    req: Request<ReqBody>,
) -> Result<(http::request::Parts, oauth::Form), Response<Body>> {
    let (parts, bytes, _held) =
        read::body_of(app, req, read::Kind::Form)
            .await
            .map_err(|e| match e {
                // The OAuth spec's answer to a wrong content type (RFC 6749 §3.2) is a 400.
                Refusal::UnsupportedMedia(m) => oauth::error("invalid_request", &m),
                e => e.render(AS_OAUTH),
            })?;
    match oauth::Form::parse(&bytes) {
        Ok(f) => Ok((parts, f)),
        Err(e) => Err(Refusal::invalid(e.to_string()).render(AS_OAUTH)),
    }
}

pub async fn oauth_token(app: Arc<App>, req: Request<ReqBody>, peer: Client) -> Response<Body> {
    if req.method() != Method::POST {
        let mut r = oauth::error("invalid_request", "must use HTTP POST");
        *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return r;
    }
    let (_, form) = match read_form(&app, req).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    match form.get("grant_type") {
        Some("password") => {}
        Some(_) => return oauth::error("unsupported_grant_type", "grant type not supported"),
        None => return oauth::error("invalid_request", "grant_type is required"),
    }
    let Some(client_id) = form.get("client_id") else {
        return oauth::error("invalid_client_id", "client identifier invalid");
    };
    let live = app.live();
    let Some(client) = live.oauth_clients.iter().find(|c| c.client_id == client_id) else {
        return oauth::error("invalid_client_id", "client identifier invalid");
    };
    let secret_ok = form.get("client_secret").is_some_and(|s| {
        crate::secret::constant_time_eq(s.as_bytes(), client.client_secret.as_bytes())
    });
    if !secret_ok {
        return oauth::error("invalid_client", "invalid client credentials");
    }
    let (Some(username), Some(password)) = (form.get("username"), form.get("password")) else {
        return oauth::error("invalid_request", "username and password are required");
    };
    let attempt = Attempt {
        username,
        secret: password,
        ip: peer.ip,
        dialect: Dialect::OAuth,
        api_version: None,
        client: Some(client_id),
        tls: peer.tls,
        password_only: false,
    };
    let result = app.auth.login(&attempt).await;
    log_login("oauth", username, &result, Some(client_id));
    match result.map(|v| (v.user, v.token)) {
        Ok((user, token)) => match app.sessions.create_with(&user, &token) {
            Ok(sid) => {
                let id_url = format!("{}/id/{}/{}", app.origin, app.cfg.server.org.id18, user.id);
                let issued_at = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_millis();
                oauth::token_response(&sid, &app.origin, &id_url, issued_at, &client.client_secret)
            }
            Err(e) => {
                tracing::error!(error = %e, "could not create a session");
                Refusal::Busy.render(AS_OAUTH)
            }
        },
        Err(e) => Refusal::from(e).render(AS_OAUTH),
    }
}

pub fn query_param(uri: &http::Uri, name: &str) -> Option<String> {
    let q = uri.query()?;
    serde_urlencoded::from_str::<Vec<(String, String)>>(q)
        .ok()?
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// `POST /services/oauth2/revoke` with `token` in the body or the query (docs/salesforce-protocol.md §2.4).
pub async fn oauth_revoke(app: Arc<App>, req: Request<ReqBody>) -> Response<Body> {
    let from_query = query_param(req.uri(), "token");
    let token = match from_query {
        Some(t) => Some(t),
        None if req.method() == Method::POST && read::Kind::Form.matches(req.headers()) => {
            match read_form(&app, req).await {
                Ok((_, form)) => form.get("token").map(str::to_owned),
                Err(r) => return r,
            }
        }
        None => None,
    };
    let Some(token) = token else {
        return oauth::error("invalid_request", "token is required");
    };
    if app.sessions.revoke(&token) {
        respond(StatusCode::OK, JSON, "")
    } else {
        oauth::error("invalid_token", "invalid token")
    }
}
