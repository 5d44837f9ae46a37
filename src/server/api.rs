//! tokengate's own JSON API under `/tokengate/v1/`: self-service token reset and password
//! change, and the admin API. Every action calls the same `Users`/`Tokens`/`Admin` code as the
//! CLI. Refusals are `{"error": ..., "message": ...}` (`refusal`, the API dialect); 401 only
//! when the caller is not authenticated, 403 when authenticated but not allowed.
//!
//! The endpoints are one table, [`ROUTES`]: method, path template, who may call, handler. The
//! router walks it, and so does the OpenAPI document (`GET /tokengate/v1/openapi.json`, built
//! by [`openapi`] from each handler's `#[utoipa::path]` annotation); a test checks that the
//! two name the same endpoints. Adding an endpoint is one `route!` line and its handler's
//! annotation.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::time::Instant;

use http::{Method, Request, Response, StatusCode};
use serde::Deserialize;

use super::caller::{self, Caller, Credential, Login, Proof};
use super::handlers::header_str;
use super::refusal::{Dialect as As, Refusal};
use super::{App, Client, ReqBody, read};
use crate::admin::{NewUser, UserView};
use crate::auth::Attempt;
use crate::domain::Dialect;
use crate::mail::{ComplianceBcc, MailError, TokenReason};
use crate::wire::{Body, JSON, respond};

/// What an API handler ends in: an answer, or a refusal rendered in the API's dialect.
type Answer = Result<Response<Body>, Refusal>;

fn json(status: StatusCode, v: &serde_json::Value) -> Response<Body> {
    respond(status, JSON, v.to_string())
}

/// Runs blocking store work off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, crate::admin::AdminError> + Send + 'static,
) -> Result<T, Refusal> {
    match tokio::task::spawn_blocking(work).await {
        Ok(r) => r.map_err(Refusal::from),
        Err(e) => Err(Refusal::internal(&e)),
    }
}

/// Every JSON body the API reads, parsed from `data` as it would be: the fuzz targets' entry.
/// Returns the caller-facing problem of each body type that refused it.
pub(crate) fn parse_bodies(data: &[u8]) -> Vec<String> {
    fn one<T: serde::de::DeserializeOwned>(data: &[u8], out: &mut Vec<String>) {
        if let Err(e) = serde_json::from_slice::<T>(data) {
            out.push(read::json_problem(&e));
        }
    }
    let mut out = Vec::new();
    one::<PasswordChange>(data, &mut out);
    one::<NewUserBody>(data, &mut out);
    one::<RangesBody>(data, &mut out);
    one::<ComplianceBody>(data, &mut out);
    out
}

/// Who is calling an API endpoint: a session, or Basic `username:password+token`.
async fn caller(app: &App, req: &Request<ReqBody>, peer: Client) -> Result<Caller, Refusal> {
    let credential = Credential::from_headers(req.headers());
    caller::identify(app, credential, peer, || Login {
        client: header_str(req.headers(), "user-agent"),
        ..Login::BASIC
    })
    .await
}

/// Who may call an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Anyone: the endpoint holds no data.
    Public,
    /// An authenticated user; the handler identifies the caller itself (each self-service
    /// endpoint has its own rules for it).
    User,
    /// Administrators, checked before the handler runs.
    Admin,
}

/// What a handler of the table is given.
pub(crate) struct Call {
    app: Arc<App>,
    req: Request<ReqBody>,
    peer: Client,
    /// The path's `{...}` segments, percent-decoded, in order.
    params: Vec<String>,
}

impl Call {
    fn param(&self, i: usize) -> &str {
        self.params.get(i).map_or("", String::as_str)
    }
}

type Pending = Pin<Box<dyn Future<Output = Answer> + Send>>;

/// One endpoint: its method and path template (OpenAPI's, `{name}` for a segment), who may
/// call it, its handler, and its OpenAPI operation (the handler's annotation).
pub(crate) struct Route {
    pub method: Method,
    pub path: &'static str,
    pub access: Access,
    run: fn(Call) -> Pending,
    doc: fn(utoipa::openapi::path::PathsBuilder) -> utoipa::openapi::path::PathsBuilder,
}

/// A table entry: `route!(METHOD "/path/{param}", Access, handler, __path_handler)`, the last
/// being the type `#[utoipa::path]` made for the handler.
macro_rules! route {
    ($method:ident $path:literal, $access:ident, $handler:ident, $doc:ident) => {
        Route {
            method: Method::$method,
            path: $path,
            access: Access::$access,
            run: |call| Box::pin($handler(call)),
            doc: |paths| paths.path_from::<$doc>(),
        }
    };
}

/// Every endpoint of the JSON API.
pub(crate) static ROUTES: &[Route] = &[
    route!(GET "/tokengate/v1/openapi.json", Public, openapi_json, __path_openapi_json),
    route!(POST "/tokengate/v1/token/reset", User, self_service_reset, __path_self_service_reset),
    route!(POST "/tokengate/v1/password", User, change_password, __path_change_password),
    route!(GET "/tokengate/v1/admin/users", Admin, list_users, __path_list_users),
    route!(POST "/tokengate/v1/admin/users", Admin, add_user, __path_add_user),
    route!(GET "/tokengate/v1/admin/users/{username}", Admin, show_user, __path_show_user),
    route!(DELETE "/tokengate/v1/admin/users/{username}", Admin, delete_user, __path_delete_user),
    route!(POST "/tokengate/v1/admin/users/{username}/token/reset", Admin, reset_token, __path_reset_token),
    route!(POST "/tokengate/v1/admin/users/{username}/unlock", Admin, unlock_user, __path_unlock_user),
    route!(PUT "/tokengate/v1/admin/users/{username}/login-ranges", Admin, set_login_ranges, __path_set_login_ranges),
    route!(GET "/tokengate/v1/admin/history", Admin, history, __path_history),
    route!(GET "/tokengate/v1/admin/settings/compliance-bcc", Admin, compliance_bcc, __path_compliance_bcc),
    route!(PUT "/tokengate/v1/admin/settings/compliance-bcc", Admin, set_compliance_bcc, __path_set_compliance_bcc),
];

/// The `{...}` segments of `path` if it fits `template`, else `None`.
fn fit(template: &str, path: &str) -> Option<Vec<String>> {
    let mut params = Vec::new();
    let (mut t, mut p) = (template.split('/'), path.split('/'));
    loop {
        match (t.next(), p.next()) {
            (None, None) => return Some(params),
            (Some(want), Some(got)) if want.starts_with('{') && !got.is_empty() => {
                params.push(crate::wire::decode_component(got));
            }
            (Some(want), Some(got)) if want == got => {}
            _ => return None,
        }
    }
}

pub async fn handle(app: Arc<App>, req: Request<ReqBody>, peer: Client) -> Response<Body> {
    dispatch(app, req, peer)
        .await
        .unwrap_or_else(|r| r.render(As::Api))
}

/// Finds the endpoint and runs it. Under `/tokengate/v1/admin/`, the caller must be an admin
/// before anything else is said (which endpoints exist, which methods they take).
async fn dispatch(app: Arc<App>, req: Request<ReqBody>, peer: Client) -> Answer {
    let path = req.uri().path();
    let path = path
        .strip_suffix('/')
        .filter(|p| !p.is_empty())
        .unwrap_or(path);
    let mut found = None;
    let mut allow = Vec::new();
    for route in ROUTES {
        if let Some(params) = fit(route.path, path) {
            if route.method == req.method() {
                found = Some((route, params));
                break;
            }
            allow.push(route.method.as_str());
        }
    }
    let admin_area = path == "/tokengate/v1/admin" || path.starts_with("/tokengate/v1/admin/");
    if admin_area
        || found
            .as_ref()
            .is_some_and(|(r, _)| r.access == Access::Admin)
    {
        let who = caller(&app, &req, peer).await?;
        if !who.user(&app)?.admin {
            return Err(Refusal::Forbidden {
                code: "forbidden",
                message: "this endpoint is for administrators".into(),
            });
        }
    }
    match found {
        Some((route, params)) => {
            (route.run)(Call {
                app,
                req,
                peer,
                params,
            })
            .await
        }
        None if allow.is_empty() && admin_area => Err(Refusal::NotFound("no such admin endpoint")),
        None if allow.is_empty() => Err(Refusal::NotFound("no such tokengate endpoint")),
        None => Err(Refusal::MethodNotAllowed {
            allow: allow.join(", ").into(),
        }),
    }
}

/// The JSON API's OpenAPI 3.1 document, built once from [`ROUTES`].
pub(crate) fn openapi() -> &'static str {
    static DOC: LazyLock<String> = LazyLock::new(|| {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        use utoipa::openapi::{ComponentsBuilder, InfoBuilder, OpenApiBuilder};
        let paths = ROUTES
            .iter()
            .fold(utoipa::openapi::path::PathsBuilder::new(), |p, r| {
                (r.doc)(p)
            });
        let doc = OpenApiBuilder::new()
            .info(
                InfoBuilder::new()
                    .title("tokengate JSON API")
                    .version(env!("CARGO_PKG_VERSION"))
                    .description(Some(
                        "Self-service token reset and password change, and the admin API. \
                         Refusals are {\"error\", \"message\"} objects.",
                    ))
                    .build(),
            )
            .paths(paths.build())
            .components(Some(
                ComponentsBuilder::new()
                    .security_scheme(
                        "basic",
                        SecurityScheme::Http(Http::new(HttpAuthScheme::Basic)),
                    )
                    .security_scheme(
                        "session",
                        SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
                    )
                    .build(),
            ))
            .build();
        doc.to_json().expect("the document serialises")
    });
    &DOC
}

/// A refusal, as every endpoint answers one (for the document only).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct Problem {
    /// A stable code, such as `invalid_request` or `forbidden`.
    error: String,
    /// What went wrong, for people.
    message: String,
}

/// `GET /tokengate/v1/openapi.json`: this document.
#[utoipa::path(
    get,
    path = "/tokengate/v1/openapi.json",
    tag = "meta",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", content_type = "application/json"))
)]
async fn openapi_json(_: Call) -> Answer {
    Ok(respond(StatusCode::OK, JSON, openapi()))
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
#[utoipa::path(
    post,
    path = "/tokengate/v1/token/reset",
    tag = "self-service",
    security(("session" = []), ("basic" = [])),
    responses(
        (status = 202, description = "The same answer whatever happened: if the credentials were right, a new token is on its way", content_type = "application/json"),
        (status = 401, description = "No credential, or a session that does not hold", body = inline(Problem)),
        (status = 429, description = "Too many resets from this address", body = inline(Problem)),
    )
)]
async fn self_service_reset(call: Call) -> Answer {
    let Call { app, req, peer, .. } = call;
    let started = Instant::now();
    if let Err(retry_after) = app.reset_per_ip.check(&crate::limit::ip_key(peer.ip)) {
        return Err(Refusal::RateLimited { retry_after });
    }
    let credential = Credential::from_headers(req.headers());
    if matches!(credential, Credential::None | Credential::Malformed) {
        return Err(Refusal::InvalidSession);
    }
    let is_session = matches!(credential, Credential::Session(_));
    let verified = caller::identify(&app, credential, peer, || Login {
        dialect: Dialect::Reset,
        client: header_str(req.headers(), "user-agent"),
        password_only: true,
        ..Login::BASIC
    })
    .await;
    let user = match verified {
        Ok(who) => who.user(&app).ok(),
        // A session that does not hold is the caller's own business to hear.
        Err(r) if is_session => return Err(r),
        // Limits are checked before the password is: they say nothing of it.
        Err(r @ (Refusal::RateLimited { .. } | Refusal::Busy | Refusal::Internal)) => {
            return Err(r);
        }
        Err(_) => None,
    };
    if let Some(user) = user {
        if app.reset_per_user.check(&user.username).is_err() {
            tracing::info!(user = %user.username, "self-service reset over the per-user quota; no token sent");
        } else {
            app.tokens
                .rotate_detached(user, TokenReason::Requested, &app.reset_slots);
        }
    }
    tokio::time::sleep_until((started + app.auth.limits().failure_delay()).into()).await;
    Ok(json(
        StatusCode::ACCEPTED,
        &serde_json::json!({
            "status": "accepted",
            "message": "If the credentials were right, a new security token is on its way to the email address on file.",
        }),
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
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
#[utoipa::path(
    post,
    path = "/tokengate/v1/password",
    tag = "self-service",
    security(("basic" = []), ("session" = [])),
    request_body(content = inline(PasswordChange), content_type = "application/json"),
    responses(
        (status = 200, description = "The password was changed (and a new token emailed, when mail is configured)", content_type = "application/json"),
        (status = 400, description = "The body or the new password is not acceptable", body = inline(Problem)),
        (status = 401, description = "Not authenticated", body = inline(Problem)),
        (status = 403, description = "A session without the right current_password", body = inline(Problem)),
        (status = 503, description = "The token email could not be sent; nothing changed", body = inline(Problem)),
    )
)]
async fn change_password(call: Call) -> Answer {
    let Call { app, req, peer, .. } = call;
    let who = caller(&app, &req, peer).await?;
    let user = who.user(&app)?;
    let client = header_str(req.headers(), "user-agent").map(str::to_owned);
    let body: PasswordChange = read::json(&app, req).await?;
    if who.proof() == Proof::Session {
        let Some(current) = body.current_password.as_deref() else {
            return Err(Refusal::Forbidden {
                code: "current_password_required",
                message: "a session alone cannot change the password: send current_password too"
                    .into(),
            });
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
        match app.auth.login(&attempt).await.map_err(Refusal::from) {
            Ok(v) if v.user.id == user.id => {}
            Ok(_) | Err(Refusal::BadCredentials | Refusal::Locked { .. }) => {
                return Err(Refusal::Forbidden {
                    code: "current_password_mismatch",
                    message: "the current password is not right".into(),
                });
            }
            Err(r) => return Err(r),
        }
    }
    let r = app
        .tokens
        .change_password(&user.id, &body.new_password)
        .await?;
    let mailed = app.tokens.mailer().is_configured();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({
            "status": "changed",
            "message": if mailed {
                format!("Your password was changed and a new security token was emailed to {}.", r.masked_email)
            } else {
                "Your password was changed.".to_owned()
            },
            "sent_to": mailed.then_some(r.masked_email),
        }),
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
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

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RangesBody {
    ranges: Vec<String>,
}

/// `GET /tokengate/v1/admin/history?user=&since=&outcome=&limit=&format=json|csv`.
#[utoipa::path(
    get,
    path = "/tokengate/v1/admin/history",
    tag = "admin",
    security(("basic" = []), ("session" = [])),
    params(
        ("user" = Option<String>, Query, description = "Only this user's logins"),
        ("since" = Option<String>, Query, description = "Only logins since this time"),
        ("outcome" = Option<String>, Query, description = "Only this outcome, such as success or bad_credentials"),
        ("limit" = Option<usize>, Query, description = "At most this many rows, 1 to 100000 (default 100)"),
        ("format" = Option<String>, Query, description = "json (default) or csv"),
    ),
    responses(
        (status = 200, description = "The login history: {\"rows\": [...]}, or CSV"),
        (status = 400, description = "A filter that cannot be read", body = inline(Problem)),
        (status = 401, description = "Not authenticated", body = inline(Problem)),
        (status = 403, description = "Not an administrator", body = inline(Problem)),
    )
)]
async fn history(call: Call) -> Answer {
    let Call { app, req, .. } = call;
    let pairs: Vec<(String, String)> = match req.uri().query() {
        Some(q) => serde_urlencoded::from_str(q)
            .map_err(|_| Refusal::invalid("unreadable query string"))?,
        None => Vec::new(),
    };
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let limit = match get("limit").map(str::parse::<usize>) {
        None => 100,
        Some(Ok(n)) if (1..=100_000).contains(&n) => n,
        Some(_) => return Err(Refusal::invalid("limit must be 1 to 100000")),
    };
    let filter = crate::history::filter(get("user"), get("since"), get("outcome"), limit)
        .map_err(Refusal::invalid)?;
    let store = app.store.clone();
    let rows = blocking(move || Ok(store.history_query(&filter)?)).await?;
    match get("format") {
        Some("csv") => Ok(crate::wire::history_csv(&rows)),
        None | Some("json") => Ok(json(StatusCode::OK, &serde_json::json!({ "rows": rows }))),
        Some(_) => Err(Refusal::invalid("format must be json or csv")),
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
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

/// `{"user": ...}`, as every admin endpoint about one user answers.
fn user_answer(status: StatusCode, u: UserView) -> Response<Body> {
    json(status, &serde_json::json!({ "user": u }))
}

#[utoipa::path(
    get,
    path = "/tokengate/v1/admin/users",
    tag = "admin",
    security(("basic" = []), ("session" = [])),
    responses(
        (status = 200, description = "Every user: {\"users\": [...]}", content_type = "application/json"),
        (status = 401, description = "Not authenticated", body = inline(Problem)),
        (status = 403, description = "Not an administrator", body = inline(Problem)),
    )
)]
async fn list_users(call: Call) -> Answer {
    let users = call.app.users.clone();
    let list = blocking(move || users.list()).await?;
    Ok(json(StatusCode::OK, &serde_json::json!({ "users": list })))
}

#[utoipa::path(
    post,
    path = "/tokengate/v1/admin/users",
    tag = "admin",
    security(("basic" = []), ("session" = [])),
    request_body(content = inline(NewUserBody), content_type = "application/json"),
    responses(
        (status = 201, description = "The user was created: {\"user\": ..., \"note\": ...}; the token is emailed, never returned", content_type = "application/json"),
        (status = 400, description = "The body, the username or the password is not acceptable", body = inline(Problem)),
        (status = 401, description = "Not authenticated", body = inline(Problem)),
        (status = 403, description = "Not an administrator", body = inline(Problem)),
        (status = 409, description = "The username is taken", body = inline(Problem)),
    )
)]
async fn add_user(call: Call) -> Answer {
    let Call { app, req, .. } = call;
    let b: NewUserBody = read::json(&app, req).await?;
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
    let (user, _token, note) = app.admin.add_user(new).await?;
    Ok(json(
        StatusCode::CREATED,
        &serde_json::json!({ "user": user, "note": note }),
    ))
}

#[utoipa::path(
    get,
    path = "/tokengate/v1/admin/users/{username}",
    tag = "admin",
    security(("basic" = []), ("session" = [])),
    params(("username" = String, Path, description = "The user's username")),
    responses(
        (status = 200, description = "The user: {\"user\": ...}", content_type = "application/json"),
        (status = 401, description = "Not authenticated", body = inline(Problem)),
        (status = 403, description = "Not an administrator", body = inline(Problem)),
        (status = 404, description = "No such user", body = inline(Problem)),
    )
)]
async fn show_user(call: Call) -> Answer {
    Ok(user_answer(
        StatusCode::OK,
        call.app.users.show(call.param(0))?,
    ))
}

#[utoipa::path(
    delete,
    path = "/tokengate/v1/admin/users/{username}",
    tag = "admin",
    security(("basic" = []), ("session" = [])),
    params(("username" = String, Path, description = "The user's username")),
    responses(
        (status = 200, description = "Deleted: {\"status\": \"deleted\"}", content_type = "application/json"),
        (status = 401, description = "Not authenticated", body = inline(Problem)),
        (status = 403, description = "Not an administrator", body = inline(Problem)),
        (status = 404, description = "No such user", body = inline(Problem)),
    )
)]
async fn delete_user(call: Call) -> Answer {
    let (users, name) = (call.app.users.clone(), call.param(0).to_owned());
    blocking(move || users.delete(&name)).await?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "status": "deleted" }),
    ))
}

#[utoipa::path(
    post,
    path = "/tokengate/v1/admin/users/{username}/token/reset",
    tag = "admin",
    security(("basic" = []), ("session" = [])),
    params(("username" = String, Path, description = "The user's username")),
    responses(
        (status = 202, description = "A new token was emailed: {\"status\", \"message\", \"sent_to\" (masked), \"user\"}", content_type = "application/json"),
        (status = 401, description = "Not authenticated", body = inline(Problem)),
        (status = 403, description = "Not an administrator", body = inline(Problem)),
        (status = 404, description = "No such user", body = inline(Problem)),
        (status = 503, description = "The token email could not be sent; the current token stays valid", body = inline(Problem)),
    )
)]
async fn reset_token(call: Call) -> Answer {
    let app = &call.app;
    let user = app.tokens.find(call.param(0))?;
    let r = app
        .tokens
        .rotate(&user.id, TokenReason::AdminRotation)
        .await?;
    Ok(json(
        StatusCode::ACCEPTED,
        &serde_json::json!({
            "status": "accepted",
            "message": format!("A new security token was emailed to {}.", r.masked_email),
            "sent_to": r.masked_email,
            "user": UserView::from(&r.user),
        }),
    ))
}

#[utoipa::path(
    post,
    path = "/tokengate/v1/admin/users/{username}/unlock",
    tag = "admin",
    security(("basic" = []), ("session" = [])),
    params(("username" = String, Path, description = "The user's username")),
    responses(
        (status = 200, description = "Unlocked: {\"user\": ...}", content_type = "application/json"),
        (status = 401, description = "Not authenticated", body = inline(Problem)),
        (status = 403, description = "Not an administrator", body = inline(Problem)),
        (status = 404, description = "No such user", body = inline(Problem)),
    )
)]
async fn unlock_user(call: Call) -> Answer {
    Ok(user_answer(
        StatusCode::OK,
        call.app.users.unlock(call.param(0))?,
    ))
}

#[utoipa::path(
    put,
    path = "/tokengate/v1/admin/users/{username}/login-ranges",
    tag = "admin",
    security(("basic" = []), ("session" = [])),
    params(("username" = String, Path, description = "The user's username")),
    request_body(content = inline(RangesBody), content_type = "application/json"),
    responses(
        (status = 200, description = "The ranges are in force (the user's sessions ended): {\"user\": ...}", content_type = "application/json"),
        (status = 400, description = "A range that cannot be read", body = inline(Problem)),
        (status = 401, description = "Not authenticated", body = inline(Problem)),
        (status = 403, description = "Not an administrator", body = inline(Problem)),
        (status = 404, description = "No such user", body = inline(Problem)),
    )
)]
async fn set_login_ranges(call: Call) -> Answer {
    let name = call.param(0).to_owned();
    let Call { app, req, .. } = call;
    let b: RangesBody = read::json(&app, req).await?;
    let ranges = crate::admin::parse_ranges(&b.ranges.join(","))?;
    Ok(user_answer(
        StatusCode::OK,
        app.users.set_login_ranges(&name, ranges)?,
    ))
}

#[utoipa::path(
    get,
    path = "/tokengate/v1/admin/settings/compliance-bcc",
    tag = "admin",
    security(("basic" = []), ("session" = [])),
    responses(
        (status = 200, description = "The Compliance copy setting: {\"enabled\", \"address\", \"redact_secrets\"}", content_type = "application/json"),
        (status = 401, description = "Not authenticated", body = inline(Problem)),
        (status = 403, description = "Not an administrator", body = inline(Problem)),
    )
)]
async fn compliance_bcc(call: Call) -> Answer {
    let s = ComplianceBcc::load(call.app.store.as_ref()).map_err(|e| Refusal::internal(&e))?;
    Ok(json(
        StatusCode::OK,
        &serde_json::to_value(s).expect("serialisable"),
    ))
}

#[utoipa::path(
    put,
    path = "/tokengate/v1/admin/settings/compliance-bcc",
    tag = "admin",
    security(("basic" = []), ("session" = [])),
    request_body(content = inline(ComplianceBody), content_type = "application/json"),
    responses(
        (status = 200, description = "The setting as saved", content_type = "application/json"),
        (status = 400, description = "No address, or not a valid one, for an enabled copy", body = inline(Problem)),
        (status = 401, description = "Not authenticated", body = inline(Problem)),
        (status = 403, description = "Not an administrator", body = inline(Problem)),
    )
)]
async fn set_compliance_bcc(call: Call) -> Answer {
    let Call { app, req, .. } = call;
    let b: ComplianceBody = read::json(&app, req).await?;
    if b.enabled && b.address.as_deref().is_none_or(str::is_empty) {
        return Err(Refusal::invalid(
            "an address is required to enable the copy",
        ));
    }
    let setting = ComplianceBcc {
        enabled: b.enabled,
        address: b.address.map(|a| a.trim().to_owned()),
        redact_secrets: b.redact_secrets,
    };
    match setting.save(app.store.as_ref()) {
        Ok(()) => Ok(json(
            StatusCode::OK,
            &serde_json::to_value(setting).expect("serialisable"),
        )),
        Err(MailError::Address(_)) => {
            Err(Refusal::invalid("the address is not a valid email address"))
        }
        Err(e) => Err(Refusal::internal(&e)),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn paths_fit_templates_segment_by_segment() {
        let t = "/tokengate/v1/admin/users/{username}/unlock";
        assert_eq!(
            fit(t, "/tokengate/v1/admin/users/a%40b.example/unlock"),
            Some(vec!["a@b.example".to_owned()])
        );
        // An encoded slash stays inside its segment.
        assert_eq!(
            fit(t, "/tokengate/v1/admin/users/a%2Fb/unlock"),
            Some(vec!["a/b".to_owned()])
        );
        for path in [
            "/tokengate/v1/admin/users//unlock",
            "/tokengate/v1/admin/users/a/unlock/more",
            "/tokengate/v1/admin/users/a",
            "/tokengate/v1/admin/users/a/lock",
        ] {
            assert_eq!(fit(t, path), None, "{path}");
        }
    }

    #[test]
    fn the_openapi_document_is_3_1_and_names_exactly_the_routed_endpoints() {
        let doc: serde_json::Value = serde_json::from_str(openapi()).unwrap();
        assert!(
            doc["openapi"].as_str().unwrap().starts_with("3.1."),
            "{}",
            doc["openapi"]
        );
        // A well-kept parser of OpenAPI 3.1 reads it too.
        let parsed = oas3::from_json(openapi()).expect("a valid OpenAPI 3.1 document");
        let version = parsed.validate_version().expect("a version oas3 supports");
        assert_eq!((version.major, version.minor), (3, 1));

        let mut documented = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            let ops = item.as_object().unwrap();
            assert!(!ops.is_empty(), "{path} has no operation");
            for (method, op) in ops {
                let responses = op["responses"].as_object();
                assert!(
                    responses.is_some_and(|r| !r.is_empty()),
                    "{method} {path} has no responses"
                );
                documented.insert((method.to_ascii_uppercase(), path.clone()));
            }
        }
        let routed: BTreeSet<(String, String)> = ROUTES
            .iter()
            .map(|r| (r.method.as_str().to_owned(), r.path.to_owned()))
            .collect();
        assert_eq!(routed.len(), ROUTES.len(), "a route is in the table twice");
        let undocumented: Vec<_> = routed.difference(&documented).collect();
        let unrouted: Vec<_> = documented.difference(&routed).collect();
        assert!(
            undocumented.is_empty() && unrouted.is_empty(),
            "routed but not documented (or documented under another method or path): \
             {undocumented:?}; documented but not routed: {unrouted:?}"
        );
        // Every `{param}` of a path is described.
        for r in ROUTES {
            let params: Vec<&str> = r
                .path
                .split('/')
                .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
                .collect();
            let op = &doc["paths"][r.path][r.method.as_str().to_ascii_lowercase()];
            for p in params {
                assert!(
                    op["parameters"]
                        .as_array()
                        .is_some_and(|ps| ps.iter().any(|x| x["name"] == p && x["in"] == "path")),
                    "{} {}: {{{p}}} is not described",
                    r.method,
                    r.path
                );
            }
        }
    }
}
