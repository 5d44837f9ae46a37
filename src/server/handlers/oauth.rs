//! The OAuth 2.0 endpoints: `/services/oauth2/token` with the password grant (a login), the
//! refresh_token grant (RFC 6749 §6, rotated: `auth::refresh`) and the client_credentials
//! grant (RFC 6749 §4.4, acting as the client's `run_as` user), each for the registered
//! clients that allow it; and `/services/oauth2/revoke` (RFC 7009).
//!
//! The client authenticates with its secret in the form body or with HTTP Basic (RFC 6749
//! §2.3.1), never both. Its policy applies to every grant: `permitted_users`,
//! `ip_relaxation`, its session idle timeout.

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};

use crate::auth::refresh::RefreshError;
use crate::auth::{Attempt, AuthError, TokenUsed, Verified};
use crate::config::OAuthClient;
use crate::domain::{Dialect, Reason, canonical_username};
use crate::server::access::log_login;
use crate::server::read;
use crate::server::refusal::{self, Refusal, TokenRefusal};
use crate::server::{App, Client, ReqBody};
use crate::store::User;
use crate::wire::{Body, JSON, oauth, respond};

const AS_OAUTH: refusal::Dialect = refusal::Dialect::OAuth;

async fn read_form(
    app: &App,
    req: Request<ReqBody>,
) -> Result<(http::request::Parts, oauth::Form), Response<Body>> {
    let (parts, bytes, _held) = read::body_of(app, req, read::Kind::Form)
        .await
        .map_err(|e| e.render(AS_OAUTH))?;
    match oauth::Form::parse(&bytes) {
        Ok(f) => Ok((parts, f)),
        Err(e) => Err(Refusal::invalid(e.to_string()).render(AS_OAUTH)),
    }
}

#[derive(Clone, Copy)]
enum Grant {
    Password,
    Refresh,
    ClientCredentials,
}

pub async fn oauth_token(app: Arc<App>, req: Request<ReqBody>, peer: Client) -> Response<Body> {
    if req.method() != Method::POST {
        return Refusal::MethodNotAllowed {
            allow: "POST".into(),
        }
        .render(AS_OAUTH);
    }
    let (parts, form) = match read_form(&app, req).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let grant = match form.get("grant_type") {
        Some("password") => Grant::Password,
        Some("refresh_token") => Grant::Refresh,
        Some("client_credentials") => Grant::ClientCredentials,
        Some(_) => return Refusal::Token(TokenRefusal::UnsupportedGrantType).render(AS_OAUTH),
        None => return Refusal::invalid("grant_type is required").render(AS_OAUTH),
    };
    let live = app.live();
    let client = match authenticate_client(&live.oauth_clients, &parts.headers, &form) {
        Ok(c) => c,
        Err(r) => return r.render(AS_OAUTH),
    };
    let answer = match grant {
        Grant::Password => password(&app, &form, client, peer).await,
        Grant::Refresh => refresh(&app, &form, client, peer),
        Grant::ClientCredentials => client_credentials(&app, client, peer),
    };
    answer.unwrap_or_else(|r| r.render(AS_OAUTH))
}

/// The registered client the request authenticates as (RFC 6749 §2.3), or the refusal.
fn authenticate_client<'a>(
    clients: &'a [OAuthClient],
    headers: &http::HeaderMap,
    form: &oauth::Form,
) -> Result<&'a OAuthClient, Refusal> {
    let auth = oauth::client_auth(headers, form).map_err(|e| {
        Refusal::Token(match e {
            oauth::ClientAuthError::Malformed => TokenRefusal::MalformedClientAuth,
            oauth::ClientAuthError::SeveralMethods => TokenRefusal::SeveralClientMethods,
        })
    })?;
    let (id, secret, basic) = match &auth {
        oauth::ClientAuth::Basic { id, secret } => (id.as_str(), Some(secret.as_str()), true),
        oauth::ClientAuth::Form => (
            form.get("client_id")
                .ok_or(Refusal::Token(TokenRefusal::InvalidClientId))?,
            form.get("client_secret"),
            false,
        ),
    };
    let client = clients
        .iter()
        .find(|c| c.client_id == id)
        .ok_or(Refusal::Token(TokenRefusal::InvalidClientId))?;
    let secret_ok = secret.is_some_and(|s| {
        crate::secret::constant_time_eq(s.as_bytes(), client.client_secret.as_bytes())
    });
    if !secret_ok {
        return Err(Refusal::Token(TokenRefusal::InvalidClient { basic }));
    }
    Ok(client)
}

/// The history's view of a grant decided without a password.
fn attempt<'a>(username: &'a str, client: &'a OAuthClient, peer: Client) -> Attempt<'a> {
    Attempt {
        username,
        secret: "",
        ip: peer.ip,
        dialect: Dialect::OAuth,
        api_version: None,
        client: Some(&client.client_id),
        tls: peer.tls,
        password_only: false,
        relax_ranges: client.relax_ip,
    }
}

async fn password(
    app: &App,
    form: &oauth::Form,
    client: &OAuthClient,
    peer: Client,
) -> Result<Response<Body>, Refusal> {
    let (Some(username), Some(password)) = (form.get("username"), form.get("password")) else {
        return Err(Refusal::invalid("username and password are required"));
    };
    let attempt = Attempt {
        username,
        secret: password,
        ..attempt(username, client, peer)
    };
    // A user the client does not permit is refused before any hashing, with the answer of a
    // failed login (and its delay): the client's list is not for callers to probe.
    if !client.permits(&canonical_username(username)) {
        let started = std::time::Instant::now();
        let refused = Err(AuthError::Rejected(Reason::NotPermittedForClient));
        app.auth.record_decided(&attempt, &refused);
        log_login("oauth", username, &refused, Some(&client.client_id));
        app.auth.limits().delay_failure(started).await;
        return Err(Refusal::BadCredentials);
    }
    let result = app.auth.login(&attempt).await;
    log_login("oauth", username, &result, Some(&client.client_id));
    let verified = result.map_err(Refusal::from)?;
    let user = verified.user;
    let refresh = if client.refresh_tokens {
        Some(
            app.refresh
                .issue(&user, client, &verified.token)
                .map_err(refresh_failure)?,
        )
    } else {
        None
    };
    answer(app, &user, &verified.token, client, refresh.as_deref())
}

fn refresh(
    app: &App,
    form: &oauth::Form,
    client: &OAuthClient,
    peer: Client,
) -> Result<Response<Body>, Refusal> {
    if !client.refresh_tokens {
        return Err(Refusal::Token(TokenRefusal::UnauthorizedClient));
    }
    let Some(token) = form.get("refresh_token") else {
        return Err(Refusal::invalid("refresh_token is required"));
    };
    match app.refresh.redeem(token, client, peer.ip) {
        Ok(r) => {
            let ok = Ok(Verified {
                user: r.user.clone(),
                superseded: false,
                token: r.login_token.clone(),
            });
            app.auth
                .record_decided(&attempt(&r.user.username, client, peer), &ok);
            log_login("oauth", &r.user.username, &ok, Some(&client.client_id));
            answer(app, &r.user, &r.login_token, client, Some(&r.token))
        }
        Err(RefreshError::Refused { username, reason }) => {
            let refused = Err(AuthError::Rejected(reason));
            app.auth
                .record_decided(&attempt(&username, client, peer), &refused);
            log_login("oauth", &username, &refused, Some(&client.client_id));
            Err(Refusal::Token(TokenRefusal::ExpiredRefreshToken))
        }
        Err(e) => Err(refresh_failure(e)),
    }
}

fn refresh_failure(e: RefreshError) -> Refusal {
    match e {
        RefreshError::Invalid | RefreshError::Refused { .. } => {
            Refusal::Token(TokenRefusal::ExpiredRefreshToken)
        }
        RefreshError::Store(e) => Refusal::store(&e),
        RefreshError::Secret(e) => Refusal::internal(&e),
    }
}

fn client_credentials(
    app: &App,
    client: &OAuthClient,
    peer: Client,
) -> Result<Response<Body>, Refusal> {
    let Some(run_as) = client.run_as.as_deref() else {
        return Err(Refusal::Token(TokenRefusal::NoClientCredentialsUser));
    };
    let refuse = |reason: Reason| {
        let refused = Err(AuthError::Rejected(reason));
        app.auth
            .record_decided(&attempt(run_as, client, peer), &refused);
        log_login("oauth", run_as, &refused, Some(&client.client_id));
    };
    let user = app
        .store
        .user_by_name(run_as)
        .map_err(|e| Refusal::store(&e))?;
    let Some(user) = user.filter(|u| u.api_only || client.allow_interactive_run_as) else {
        // The configuration names nobody usable: the operator's to fix, said in the log.
        tracing::warn!(
            client = %client.client_id,
            "client_credentials refused: run_as names no user, or one who is not API-only \
             (allow_interactive_run_as is not set)"
        );
        refuse(Reason::RunAsRefused);
        return Err(Refusal::Token(TokenRefusal::NoClientCredentialsUser));
    };
    let now = crate::now_secs();
    if user.disabled || user.lockout.is_locked(now) {
        refuse(Reason::Disabled);
        return Err(Refusal::BadCredentials);
    }
    if !client.relax_ip && !user.allows(peer.ip) {
        refuse(Reason::OutsideLoginRange);
        return Err(Refusal::BadCredentials);
    }
    let ok = Ok(Verified {
        user: user.clone(),
        superseded: false,
        token: TokenUsed::None,
    });
    app.auth.record_decided(&attempt(run_as, client, peer), &ok);
    log_login("oauth", run_as, &ok, Some(&client.client_id));
    // RFC 6749 §4.4.3: no refresh token for client credentials.
    answer(app, &user, &TokenUsed::None, client, None)
}

/// A session for `user` (logged in with `token`) through `client`, and the token endpoint's
/// answer.
fn answer(
    app: &App,
    user: &User,
    token: &TokenUsed,
    client: &OAuthClient,
    refresh: Option<&str>,
) -> Result<Response<Body>, Refusal> {
    let policy = crate::store::SessionPolicy {
        idle_secs: client.session_idle_timeout.map(|d| d.as_secs()),
        relax_ranges: client.relax_ip,
    };
    let sid = app.sessions.create_with(user, token, policy).map_err(|e| {
        tracing::error!(error = %e, "could not create a session");
        Refusal::Busy
    })?;
    let id_url = format!("{}/id/{}/{}", app.origin, app.cfg.server.org.id18, user.id);
    let issued_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    Ok(oauth::token_response(
        &sid,
        &app.origin,
        &id_url,
        issued_at,
        &client.client_secret,
        refresh,
    ))
}

pub fn query_param(uri: &http::Uri, name: &str) -> Option<String> {
    let q = uri.query()?;
    serde_urlencoded::from_str::<Vec<(String, String)>>(q)
        .ok()?
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// `POST /services/oauth2/revoke` with `token` in the body or the query
/// (docs/salesforce-protocol.md §2.4): a session id ends that session, a refresh token its
/// whole family. RFC 7009 §2.2: the answer is 200 whether or not the token was known
/// ("invalid tokens do not cause an error response"), so revocation tells a caller nothing
/// about a token.
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
        return Refusal::invalid("token is required").render(AS_OAUTH);
    };
    if !app.sessions.revoke(&token)
        && let Err(e) = app.refresh.revoke(&token)
    {
        return refresh_failure(e).render(AS_OAUTH);
    }
    respond(StatusCode::OK, JSON, "")
}
