//! tokengate's own JSON API under `/tokengate/v1/`: self-service token reset and password
//! change, and the admin API. Every action calls the same `Users`/`Tokens`/`Admin` code as the
//! CLI. Errors are `{"error": ..., "message": ...}`; 401 only when the caller is not
//! authenticated, 403 when authenticated but not allowed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use serde::Deserialize;

use super::App;
use super::body;
use super::{Client, ReqBody};
use crate::admin::{AdminError, NewUser, UserView};
use crate::auth::{Attempt, AuthError, Dialect};
use crate::mail::{ComplianceBcc, MailError, TokenReason};
use crate::store::User;
use crate::tokens::TokenError;
use crate::wire::credentials::{self, HeaderCredential};
use crate::wire::{Body, JSON, json_error, respond};

fn json(status: StatusCode, v: &serde_json::Value) -> Response<Body> {
    respond(status, JSON, v.to_string())
}

fn unauthenticated() -> Response<Body> {
    let mut r = json_error(
        StatusCode::UNAUTHORIZED,
        "invalid_session",
        "authenticate with a session (Authorization: Bearer) or HTTP Basic",
    );
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(r#"Basic realm="tokengate", charset="UTF-8""#),
    );
    r
}

fn too_many(wait: Duration) -> Response<Body> {
    let mut r = json_error(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        "too many requests; retry later",
    );
    r.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(crate::limit::retry_after_secs(wait)),
    );
    r
}

fn busy() -> Response<Body> {
    let mut r = json_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "busy",
        "server busy; retry shortly",
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

fn internal(e: &dyn std::fmt::Display) -> Response<Body> {
    tracing::error!(error = %e, "internal error in the API");
    json_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "internal error",
    )
}

fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut r = json_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        &format!("use {allow}"),
    );
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

fn token_error(e: TokenError) -> Response<Body> {
    match e {
        TokenError::Delivery(MailError::NotConfigured) => json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "mail_not_configured",
            "email delivery is not configured; no token can be issued",
        ),
        TokenError::Delivery(e) => {
            tracing::warn!(error = %e, "token email failed");
            json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "mail_delivery_failed",
                "the new token could not be emailed, so the current token stays valid; try again later",
            )
        }
        TokenError::NoSuchUser(_) => json_error(StatusCode::NOT_FOUND, "not_found", "no such user"),
        TokenError::Disabled => json_error(
            StatusCode::CONFLICT,
            "user_disabled",
            "the user is disabled",
        ),
        TokenError::Policy(p) => json_error(
            StatusCode::BAD_REQUEST,
            "password_policy",
            &format!("the new password must have {p}"),
        ),
        TokenError::Period | TokenError::Supplied => {
            json_error(StatusCode::BAD_REQUEST, "invalid_request", &e.to_string())
        }
        e @ (TokenError::Store(_) | TokenError::Secret(_)) => internal(&e),
    }
}

fn admin_error(e: AdminError) -> Response<Body> {
    match e {
        AdminError::NoSuchUser(_) => json_error(StatusCode::NOT_FOUND, "not_found", "no such user"),
        AdminError::Store(crate::store::StoreError::UserExists(_)) => json_error(
            StatusCode::CONFLICT,
            "user_exists",
            "a user with that username exists",
        ),
        AdminError::Token(t) => token_error(t),
        AdminError::Synthetic(m) => json_error(StatusCode::FORBIDDEN, "synthetic_users_refused", m),
        e @ (AdminError::Username(_)
        | AdminError::Email(_)
        | AdminError::Password(_)
        | AdminError::FullName(_)
        | AdminError::Period(_)
        | AdminError::Range(_)
        | AdminError::Mail(MailError::Address(_))) => {
            json_error(StatusCode::BAD_REQUEST, "invalid_request", &e.to_string())
        }
        e => internal(&e),
    }
}

/// Reads a JSON request body into `T`, answering a clear 400/413/415 otherwise.
async fn json_body<T: serde::de::DeserializeOwned>(
    app: &App,
    req: Request<ReqBody>,
) -> Result<T, Response<Body>> {
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/json")
        });
    if !is_json {
        return Err(json_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request",
            "Content-Type must be application/json",
        ));
    }
    let (parts, incoming) = req.into_parts();
    let (bytes, _held) = body::read(
        incoming,
        &parts.headers,
        app.cfg.server.max_login_body_bytes,
        app.cfg.server.body_read_timeout,
        &app.bodies,
    )
    .await
    .map_err(|e| {
        let status = match e {
            body::BodyError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            body::BodyError::Busy => return busy(),
            _ => StatusCode::BAD_REQUEST,
        };
        json_error(status, "invalid_request", &e.to_string())
    })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        json_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &json_problem(&e),
        )
    })
}

/// What is wrong with a JSON body, for the caller. serde_json quotes the offending value in
/// type errors ("invalid type: string \"...\""), which may be a password: only field-name
/// errors are passed on verbatim.
pub(crate) fn json_problem(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let what = if text.starts_with("missing field") || text.starts_with("unknown field") {
        text.split(" at line").next().unwrap_or_default().to_owned()
    } else if e.is_data() {
        "a field has a value of the wrong type".to_owned()
    } else {
        "the body is not valid JSON".to_owned()
    };
    format!(
        "invalid JSON body ({what}, line {} column {})",
        e.line(),
        e.column()
    )
}

/// Every JSON body the API reads, parsed from `data` as it would be: the fuzz targets' entry.
/// Returns the caller-facing problem of each body type that refused it.
pub(crate) fn parse_bodies(data: &[u8]) -> Vec<String> {
    fn one<T: serde::de::DeserializeOwned>(data: &[u8], out: &mut Vec<String>) {
        if let Err(e) = serde_json::from_slice::<T>(data) {
            out.push(json_problem(&e));
        }
    }
    let mut out = Vec::new();
    one::<PasswordChange>(data, &mut out);
    one::<NewUserBody>(data, &mut out);
    one::<RangesBody>(data, &mut out);
    one::<ComplianceBody>(data, &mut out);
    out
}

/// How a caller proved who it is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Proof {
    /// A session id alone: proves nothing of the password.
    Session,
    /// Basic credentials verified in this request (the password, and the token unless from a
    /// trusted network).
    Password,
}

/// Who is calling: a session's user, or Basic `username:password+token`.
async fn caller(
    app: &App,
    req: &Request<ReqBody>,
    peer: Client,
) -> Result<(Arc<User>, Proof), Response<Body>> {
    match credentials::from_headers(req.headers()) {
        Some(HeaderCredential::Session(sid)) => {
            let session = app
                .sessions
                .lookup(sid, peer.ip)
                .ok_or_else(unauthenticated)?;
            match app.store.user_by_id(&session.user_id) {
                Ok(Some(u)) if !u.disabled => Ok((u, Proof::Session)),
                Ok(_) => Err(unauthenticated()),
                Err(e) => Err(internal(&e)),
            }
        }
        Some(HeaderCredential::Basic(u, secret)) => {
            let attempt = Attempt {
                username: &u,
                secret: &secret,
                ip: peer.ip,
                dialect: Dialect::Basic,
                api_version: None,
                client: req
                    .headers()
                    .get("user-agent")
                    .and_then(|v| v.to_str().ok()),
                tls: peer.tls,
                password_only: false,
            };
            match app.auth.login(&attempt).await {
                Ok(v) => Ok((v.user, Proof::Password)),
                Err(AuthError::Rejected(_) | AuthError::Locked { proven: false, .. }) => {
                    Err(unauthenticated())
                }
                Err(AuthError::Locked {
                    until,
                    proven: true,
                }) => Err(crate::wire::rest::locked(until)),
                Err(AuthError::RateLimited { retry_after }) => Err(too_many(retry_after)),
                Err(AuthError::Busy) => Err(busy()),
                Err(AuthError::Store(e)) => Err(internal(&e)),
            }
        }
        _ => Err(unauthenticated()),
    }
}

pub async fn handle(app: Arc<App>, req: Request<ReqBody>, peer: Client) -> Response<Body> {
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let Some(rest) = path.strip_prefix("/tokengate/v1/") else {
        return json_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such tokengate endpoint",
        );
    };
    let segments: Vec<&str> = rest.split('/').collect();
    match segments.as_slice() {
        ["token", "reset"] => self_service_reset(app, req, peer).await,
        ["password"] => change_password(app, req, peer).await,
        ["admin", rest @ ..] => {
            let user = match caller(&app, &req, peer).await {
                Ok((u, _)) => u,
                Err(r) => return r,
            };
            if !user.admin {
                return json_error(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "this endpoint is for administrators",
                );
            }
            let rest: Vec<String> = rest.iter().map(|s| percent_decode(s)).collect();
            let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
            admin(app, req, &rest).await
        }
        _ => json_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such tokengate endpoint",
        ),
    }
}

fn percent_decode(s: &str) -> String {
    // Usernames in paths are percent-encoded (`a%40example.com`); decode with the form decoder
    // (a literal '+' is protected first, since paths do not use it for spaces).
    serde_urlencoded::from_str::<Vec<(String, String)>>(&format!("v={}", s.replace('+', "%2B")))
        .ok()
        .and_then(|v| v.into_iter().next())
        .map_or_else(|| s.to_owned(), |(_, v)| v)
}

/// `POST /tokengate/v1/token/reset`: a session of the user, or Basic `username:password` with
/// the password alone (for a user who lost the token).
///
/// Every request that gets this far gets the same 202 and the same body, after the same time
/// (the failure delay), whether the password was right, wrong, the user unknown or locked, the
/// per-user quota spent or the mail server down: the answer must not tell a password guesser
/// anything, nor give a stranger a lever on the owner's quota. Wrong passwords count toward
/// lockout and go to the login history (dialect `reset`), like any login. A verified request
/// spends the user's quota and the rotation runs on its own, off the answer; its failure is
/// logged and counted, and the old token stays valid (the user who gets no mail asks again).
async fn self_service_reset(app: Arc<App>, req: Request<ReqBody>, peer: Client) -> Response<Body> {
    if req.method() != Method::POST {
        return method_not_allowed("POST");
    }
    let started = Instant::now();
    if let Err(wait) = app.reset_per_ip.check(&crate::limit::ip_key(peer.ip)) {
        return too_many(wait);
    }
    let verified = match credentials::from_headers(req.headers()) {
        Some(HeaderCredential::Session(sid)) => {
            let Some(s) = app.sessions.lookup(sid, peer.ip) else {
                return unauthenticated();
            };
            match app.store.user_by_id(&s.user_id) {
                Ok(u) => u.filter(|u| !u.disabled),
                Err(e) => return internal(&e),
            }
        }
        Some(HeaderCredential::Basic(username, password)) => {
            let attempt = Attempt {
                username: &username,
                secret: &password,
                ip: peer.ip,
                dialect: Dialect::Reset,
                api_version: None,
                client: req
                    .headers()
                    .get("user-agent")
                    .and_then(|v| v.to_str().ok()),
                tls: peer.tls,
                password_only: true,
            };
            match app.auth.login(&attempt).await {
                Ok(v) => Some(v.user),
                Err(AuthError::Rejected(_) | AuthError::Locked { .. }) => None,
                // Limits are checked before the password is: they say nothing of it.
                Err(AuthError::RateLimited { retry_after }) => return too_many(retry_after),
                Err(AuthError::Busy) => return busy(),
                Err(AuthError::Store(e)) => return internal(&e),
            }
        }
        _ => return unauthenticated(),
    };
    if let Some(user) = verified {
        if app.reset_per_user.check(&user.username).is_err() {
            tracing::info!(user = %user.username, "self-service reset over the per-user quota; no token sent");
        } else {
            app.tokens
                .rotate_detached(user, TokenReason::Requested, &app.reset_slots);
        }
    }
    tokio::time::sleep_until((started + app.auth.limits().failure_delay()).into()).await;
    json(
        StatusCode::ACCEPTED,
        &serde_json::json!({
            "status": "accepted",
            "message": "If the credentials were right, a new security token is on its way to the email address on file.",
        }),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PasswordChange {
    new_password: String,
    /// Required when the caller authenticated with a session alone.
    #[serde(default)]
    current_password: Option<String>,
}

/// `POST /tokengate/v1/password` `{"new_password": ..., "current_password": ...}`,
/// authenticated by Basic `username:password+token`, or by a session with the current password
/// in the body (a session alone is not enough: a stolen session id must not buy the password,
/// which opens the console). The current password is verified like a login: a wrong one counts
/// toward lockout and goes to the login history (dialect `password`). The password changes and
/// a new token is emailed, both or neither.
async fn change_password(app: Arc<App>, req: Request<ReqBody>, peer: Client) -> Response<Body> {
    if req.method() != Method::POST {
        return method_not_allowed("POST");
    }
    let (user, proof) = match caller(&app, &req, peer).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let client = req
        .headers()
        .get("user-agent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body: PasswordChange = match json_body(&app, req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    if proof == Proof::Session {
        let Some(current) = body.current_password.as_deref() else {
            return json_error(
                StatusCode::FORBIDDEN,
                "current_password_required",
                "a session alone cannot change the password: send current_password too",
            );
        };
        let attempt = Attempt {
            username: &user.username,
            secret: current,
            ip: peer.ip,
            dialect: Dialect::Password,
            api_version: None,
            client: client.as_deref(),
            tls: peer.tls,
            password_only: true,
        };
        match app.auth.login(&attempt).await {
            Ok(v) if v.user.id == user.id => {}
            Ok(_) | Err(AuthError::Rejected(_) | AuthError::Locked { .. }) => {
                return json_error(
                    StatusCode::FORBIDDEN,
                    "current_password_mismatch",
                    "the current password is not right",
                );
            }
            Err(AuthError::RateLimited { retry_after }) => return too_many(retry_after),
            Err(AuthError::Busy) => return busy(),
            Err(AuthError::Store(e)) => return internal(&e),
        }
    }
    match app
        .tokens
        .change_password(&user.id, &body.new_password)
        .await
    {
        Ok(r) => json(
            StatusCode::OK,
            &serde_json::json!({
                "status": "changed",
                "message": if app.tokens.mailer().is_configured() {
                    format!("Your password was changed and a new security token was emailed to {}.", r.masked_email)
                } else {
                    "Your password was changed.".to_owned()
                },
                "sent_to": app.tokens.mailer().is_configured().then_some(r.masked_email),
            }),
        ),
        Err(e) => token_error(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUserBody {
    username: String,
    email: String,
    #[serde(default)]
    full_name: String,
    #[serde(default)]
    admin: bool,
    password: String,
    #[serde(default)]
    loadtest: bool,
    #[serde(default)]
    token: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RangesBody {
    ranges: Vec<String>,
}

/// `GET /tokengate/v1/admin/history?user=&since=&outcome=&limit=&format=json|csv`.
async fn history(app: &App, req: &Request<ReqBody>) -> Response<Body> {
    let pairs: Vec<(String, String)> = match req.uri().query() {
        Some(q) => match serde_urlencoded::from_str(q) {
            Ok(p) => p,
            Err(_) => {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "unreadable query string",
                );
            }
        },
        None => Vec::new(),
    };
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let limit = match get("limit").map(str::parse::<usize>) {
        None => 100,
        Some(Ok(n)) if (1..=100_000).contains(&n) => n,
        Some(_) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "limit must be 1 to 100000",
            );
        }
    };
    let filter = match crate::history::filter(get("user"), get("since"), get("outcome"), limit) {
        Ok(f) => f,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, "invalid_request", &e),
    };
    let store = app.store.clone();
    let rows = match tokio::task::spawn_blocking(move || store.history_query(&filter)).await {
        Ok(Ok(rows)) => rows,
        Ok(Err(e)) => return internal(&e),
        Err(e) => return internal(&e),
    };
    match get("format") {
        Some("csv") => crate::wire::history_csv(&rows),
        None | Some("json") => json(StatusCode::OK, &serde_json::json!({ "rows": rows })),
        Some(_) => json_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "format must be json or csv",
        ),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ComplianceBody {
    enabled: bool,
    #[serde(default)]
    address: Option<String>,
    #[serde(default = "yes")]
    redact_secrets: bool,
}

fn yes() -> bool {
    true
}

async fn admin(app: Arc<App>, req: Request<ReqBody>, path: &[&str]) -> Response<Body> {
    let method = req.method().clone();
    match (path, method) {
        (["users"], Method::GET) => {
            let users = app.users.clone();
            match tokio::task::spawn_blocking(move || users.list()).await {
                Ok(Ok(list)) => json(StatusCode::OK, &serde_json::json!({ "users": list })),
                Ok(Err(e)) => admin_error(e),
                Err(e) => internal(&e),
            }
        }
        (["users"], Method::POST) => {
            let b: NewUserBody = match json_body(&app, req).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            let new = NewUser {
                username: b.username,
                email: b.email,
                full_name: b.full_name,
                admin: b.admin,
                password: b.password,
                loadtest: b.loadtest,
                token: b.token,
            };
            // The token is never returned over HTTP: it is emailed (when mail is configured).
            match app.admin.add_user(new).await {
                Ok((user, _token, note)) => json(
                    StatusCode::CREATED,
                    &serde_json::json!({ "user": user, "note": note }),
                ),
                Err(e) => admin_error(e),
            }
        }
        (["users"], _) => method_not_allowed("GET, POST"),
        (["users", name], Method::DELETE) => {
            let (users, name) = (app.users.clone(), name.to_string());
            match tokio::task::spawn_blocking(move || users.delete(&name)).await {
                Ok(Ok(())) => json(StatusCode::OK, &serde_json::json!({ "status": "deleted" })),
                Ok(Err(e)) => admin_error(e),
                Err(e) => internal(&e),
            }
        }
        (["users", name], Method::GET) => match app.users.show(name) {
            Ok(u) => json(StatusCode::OK, &serde_json::json!({ "user": u })),
            Err(e) => admin_error(e),
        },
        (["users", name, "token", "reset"], Method::POST) => {
            let user = match app.tokens.find(name) {
                Ok(u) => u,
                Err(e) => return token_error(e),
            };
            match app
                .tokens
                .rotate(&user.id, TokenReason::AdminRotation)
                .await
            {
                Ok(r) => json(
                    StatusCode::ACCEPTED,
                    &serde_json::json!({
                        "status": "accepted",
                        "message": format!("A new security token was emailed to {}.", r.masked_email),
                        "sent_to": r.masked_email,
                        "user": UserView::from(&r.user),
                    }),
                ),
                Err(e) => token_error(e),
            }
        }
        (["users", _, "token", "reset"], _) => method_not_allowed("POST"),
        (["users", name, "unlock"], Method::POST) => match app.users.unlock(name) {
            Ok(u) => json(StatusCode::OK, &serde_json::json!({ "user": u })),
            Err(e) => admin_error(e),
        },
        (["users", name, "login-ranges"], Method::PUT) => {
            let b: RangesBody = match json_body(&app, req).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            let ranges = match crate::admin::parse_ranges(&b.ranges.join(",")) {
                Ok(r) => r,
                Err(e) => return admin_error(e),
            };
            match app.users.set_login_ranges(name, ranges) {
                Ok(u) => json(StatusCode::OK, &serde_json::json!({ "user": u })),
                Err(e) => admin_error(e),
            }
        }
        (["history"], Method::GET) => history(&app, &req).await,
        (["settings", "compliance-bcc"], Method::GET) => {
            match ComplianceBcc::load(app.store.as_ref()) {
                Ok(s) => json(
                    StatusCode::OK,
                    &serde_json::to_value(s).expect("serialisable"),
                ),
                Err(e) => internal(&e),
            }
        }
        (["settings", "compliance-bcc"], Method::PUT) => {
            let b: ComplianceBody = match json_body(&app, req).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            if b.enabled && b.address.as_deref().is_none_or(str::is_empty) {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "an address is required to enable the copy",
                );
            }
            let setting = ComplianceBcc {
                enabled: b.enabled,
                address: b.address.map(|a| a.trim().to_owned()),
                redact_secrets: b.redact_secrets,
            };
            match setting.save(app.store.as_ref()) {
                Ok(()) => json(
                    StatusCode::OK,
                    &serde_json::to_value(setting).expect("serialisable"),
                ),
                Err(MailError::Address(_)) => json_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "the address is not a valid email address",
                ),
                Err(e) => internal(&e),
            }
        }
        (["settings", "compliance-bcc"], _) => method_not_allowed("GET, PUT"),
        _ => json_error(StatusCode::NOT_FOUND, "not_found", "no such admin endpoint"),
    }
}
