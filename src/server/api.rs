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
use crate::admin::{
    Answer as AdminAnswer, NewUser, Request as AdminRequest, UserChanges, UserView,
};
use crate::audit::{Actor, Channel};

use crate::domain::Dialect;
use crate::mail::{ComplianceBcc, TokenReason};
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
    one::<UserPatchBody>(data, &mut out);
    one::<AdminBody>(data, &mut out);
    one::<RotationBody>(data, &mut out);
    one::<TokenBody>(data, &mut out);
    out
}

/// Whether `path` is the admin API's (with the console on its own listener, only that
/// listener serves it).
pub fn is_admin(path: &str) -> bool {
    path.strip_prefix("/tokengate/v1/admin")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
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
    /// The administrator calling an `Admin` endpoint, as the audit trail names them.
    actor: Option<Actor>,
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
    route!(GET "/tokengate/v1/tokens", User, my_tokens, __path_my_tokens),
    route!(POST "/tokengate/v1/tokens", User, add_my_token, __path_add_my_token),
    route!(POST "/tokengate/v1/tokens/{name}/reset", User, reset_my_token, __path_reset_my_token),
    route!(DELETE "/tokengate/v1/tokens/{name}", User, revoke_my_token, __path_revoke_my_token),
    route!(GET "/tokengate/v1/admin/users", Admin, list_users, __path_list_users),
    route!(POST "/tokengate/v1/admin/users", Admin, add_user, __path_add_user),
    route!(GET "/tokengate/v1/admin/users/{username}", Admin, show_user, __path_show_user),
    route!(DELETE "/tokengate/v1/admin/users/{username}", Admin, delete_user, __path_delete_user),
    route!(POST "/tokengate/v1/admin/users/{username}/token/reset", Admin, reset_token, __path_reset_token),
    route!(GET "/tokengate/v1/admin/users/{username}/tokens", Admin, list_tokens, __path_list_tokens),
    route!(POST "/tokengate/v1/admin/users/{username}/tokens", Admin, add_token, __path_add_token),
    route!(POST "/tokengate/v1/admin/users/{username}/tokens/{name}/reset", Admin, reset_named_token, __path_reset_named_token),
    route!(DELETE "/tokengate/v1/admin/users/{username}/tokens/{name}", Admin, revoke_token, __path_revoke_token),
    route!(PATCH "/tokengate/v1/admin/users/{username}", Admin, update_user, __path_update_user),
    route!(POST "/tokengate/v1/admin/users/{username}/unlock", Admin, unlock_user, __path_unlock_user),
    route!(POST "/tokengate/v1/admin/users/{username}/disable", Admin, disable_user, __path_disable_user),
    route!(POST "/tokengate/v1/admin/users/{username}/enable", Admin, enable_user, __path_enable_user),
    route!(PUT "/tokengate/v1/admin/users/{username}/admin", Admin, set_admin, __path_set_admin),
    route!(PUT "/tokengate/v1/admin/users/{username}/rotation", Admin, set_rotation, __path_set_rotation),
    route!(PUT "/tokengate/v1/admin/users/{username}/login-ranges", Admin, set_login_ranges, __path_set_login_ranges),
    route!(POST "/tokengate/v1/admin/users/{username}/mfa/reset", Admin, reset_mfa, __path_reset_mfa),
    route!(GET "/tokengate/v1/admin/history", Admin, history, __path_history),
    route!(GET "/tokengate/v1/admin/audit", Admin, audit_trail, __path_audit_trail),
    route!(GET "/tokengate/v1/admin/audit/verify", Admin, audit_verify, __path_audit_verify),
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
    let admin_area = is_admin(path);
    let mut actor = None;
    if admin_area
        || found
            .as_ref()
            .is_some_and(|(r, _)| r.access == Access::Admin)
    {
        let who = caller(&app, &req, peer).await?.user(&app)?;
        if !who.admin {
            return Err(Refusal::Forbidden {
                code: "forbidden",
                message: "this endpoint is for administrators".into(),
            });
        }
        actor = Some(Actor::admin(&who.username, peer.ip, Channel::Api));
    }
    match found {
        Some((route, params)) => {
            (route.run)(Call {
                app,
                req,
                peer,
                params,
                actor,
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
        match caller::reprove_password(&app, &user, current, peer, client.as_deref()).await {
            Ok(()) => {}
            Err(Refusal::BadCredentials) => {
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
    /// An integration's account: APIs only, no console.
    #[serde(default)]
    api_only: bool,
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

/// Runs an admin request for the calling administrator through `Admin::perform`, the one
/// place every change is made and recorded in the audit trail.
async fn perform(call: &Parts, op: AdminRequest) -> Result<AdminAnswer, Refusal> {
    let actor = call.actor.as_ref().ok_or(Refusal::Internal)?;
    match call.app.admin.perform(actor, op).await? {
        AdminAnswer::Error { message } => Err(Refusal::invalid(message)),
        answer => Ok(answer),
    }
}

/// `{"user": ..., "note": ...}`, as every admin endpoint about one user answers.
fn user_json(status: StatusCode, answer: AdminAnswer) -> Answer {
    match answer {
        AdminAnswer::User { user, note, .. } => Ok(json(
            status,
            &serde_json::json!({ "user": user, "note": note }),
        )),
        _ => Err(Refusal::Internal),
    }
}

/// A call with its request body taken (read by the handler).
struct Parts {
    app: Arc<App>,
    actor: Option<Actor>,
    username: String,
}

impl Call {
    /// The request (to read its body) and what the admin handlers need besides.
    fn split(self) -> (Request<ReqBody>, Parts) {
        let username = self.param(0).to_owned();
        let Call {
            app, req, actor, ..
        } = self;
        (
            req,
            Parts {
                app,
                actor,
                username,
            },
        )
    }
}

/// A change to one user: the request made from the path's username, answered with the user.
async fn user_change(call: Parts, op: impl FnOnce(String) -> AdminRequest) -> Answer {
    let answer = perform(&call, op(call.username.clone())).await?;
    user_json(StatusCode::OK, answer)
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
        (status = 503, description = "No mail transport: the token could not reach anyone, so no user was created", body = inline(Problem)),
    )
)]
async fn add_user(call: Call) -> Answer {
    let (req, call) = call.split();
    let b: NewUserBody = read::json(&call.app, req).await?;
    let new = NewUser {
        username: b.username,
        email: b.email,
        full_name: b.full_name,
        admin: b.admin,
        password: b.password,
        loadtest: b.loadtest,
        token: b.token,
        api_only: b.api_only,
        // The token is never returned over HTTP: it is emailed, and without a mail
        // transport the user is not created (503 `mail_not_configured`).
        show_token: false,
    };
    let answer = perform(&call, AdminRequest::UserAdd(new)).await?;
    user_json(StatusCode::CREATED, answer)
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
    let user: UserView = call.app.users.show(call.param(0))?;
    Ok(json(StatusCode::OK, &serde_json::json!({ "user": user })))
}

/// What `PATCH /users/{username}` may change; absent fields stay as they are.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct UserPatchBody {
    /// A new address: the old and the new one are both told.
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    full_name: Option<String>,
    /// An integration's account: APIs only, no console.
    #[serde(default)]
    api_only: Option<bool>,
}

#[utoipa::path(
    patch,
    path = "/tokengate/v1/admin/users/{username}",
    tag = "admin",
    security(("basic" = []), ("session" = [])),
    params(("username" = String, Path, description = "The user's username")),
    request_body(content = inline(UserPatchBody), content_type = "application/json"),
    responses(
        (status = 200, description = "The user as changed: {\"user\": ..., \"note\": ...} (a note when a change notice could not be emailed)", content_type = "application/json"),
        (status = 400, description = "Nothing to change, an unknown field, or a value that is not acceptable", body = inline(Problem)),
        (status = 401, description = "Not authenticated", body = inline(Problem)),
        (status = 403, description = "Not an administrator", body = inline(Problem)),
        (status = 404, description = "No such user", body = inline(Problem)),
    )
)]
async fn update_user(call: Call) -> Answer {
    let (req, call) = call.split();
    let b: UserPatchBody = read::json(&call.app, req).await?;
    let changes = UserChanges {
        email: b.email,
        full_name: b.full_name,
        api_only: b.api_only,
    };
    user_change(call, |username| AdminRequest::UserSet { username, changes }).await
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
        (status = 409, description = "Refused, nothing changed: {\"error\": \"self_demotion\"} (an admin disabling, demoting or deleting their own account) or {\"error\": \"last_admin\"} (it would leave no enabled administrator)", body = inline(Problem)),
    )
)]
async fn delete_user(call: Call) -> Answer {
    let (_, call) = call.split();
    let username = call.username.clone();
    perform(&call, AdminRequest::UserDelete { username }).await?;
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
    let (_, call) = call.split();
    let username = call.username.clone();
    match perform(
        &call,
        AdminRequest::TokenReset {
            username,
            name: None,
        },
    )
    .await?
    {
        AdminAnswer::Rotated {
            user, masked_email, ..
        } => Ok(json(
            StatusCode::ACCEPTED,
            &serde_json::json!({
                "status": "accepted",
                "message": format!("A new security token was emailed to {masked_email}."),
                "sent_to": masked_email,
                "user": user,
            }),
        )),
        _ => Err(Refusal::Internal),
    }
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
    user_change(call.split().1, |username| AdminRequest::UserUnlock {
        username,
    })
    .await
}

#[utoipa::path(
    post,
    path = "/tokengate/v1/admin/users/{username}/disable",
    tag = "admin",
    security(("basic" = []), ("session" = [])),
    params(("username" = String, Path, description = "The user's username")),
    responses(
        (status = 200, description = "Disabled, the user's sessions ended: {\"user\": ...}", content_type = "application/json"),
        (status = 401, description = "Not authenticated", body = inline(Problem)),
        (status = 403, description = "Not an administrator", body = inline(Problem)),
        (status = 404, description = "No such user", body = inline(Problem)),
        (status = 409, description = "Refused, nothing changed: {\"error\": \"self_demotion\"} (an admin disabling, demoting or deleting their own account) or {\"error\": \"last_admin\"} (it would leave no enabled administrator)", body = inline(Problem)),
    )
)]
async fn disable_user(call: Call) -> Answer {
    user_change(call.split().1, |username| AdminRequest::UserSetDisabled {
        username,
        disabled: true,
    })
    .await
}

#[utoipa::path(
    post,
    path = "/tokengate/v1/admin/users/{username}/enable",
    tag = "admin",
    security(("basic" = []), ("session" = [])),
    params(("username" = String, Path, description = "The user's username")),
    responses(
        (status = 200, description = "Enabled: {\"user\": ...}", content_type = "application/json"),
        (status = 401, description = "Not authenticated", body = inline(Problem)),
        (status = 403, description = "Not an administrator", body = inline(Problem)),
        (status = 404, description = "No such user", body = inline(Problem)),
    )
)]
async fn enable_user(call: Call) -> Answer {
    user_change(call.split().1, |username| AdminRequest::UserSetDisabled {
        username,
        disabled: false,
    })
    .await
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct AdminBody {
    admin: bool,
}

#[utoipa::path(
    put,
    path = "/tokengate/v1/admin/users/{username}/admin",
    tag = "admin",
    security(("basic" = []), ("session" = [])),
    params(("username" = String, Path, description = "The user's username")),
    request_body(content = inline(AdminBody), content_type = "application/json"),
    responses(
        (status = 200, description = "The admin flag as set: {\"user\": ...}", content_type = "application/json"),
        (status = 400, description = "A body that cannot be read", body = inline(Problem)),
        (status = 401, description = "Not authenticated", body = inline(Problem)),
        (status = 403, description = "Not an administrator, or a synthetic load-test user", body = inline(Problem)),
        (status = 404, description = "No such user", body = inline(Problem)),
        (status = 409, description = "Refused, nothing changed: {\"error\": \"self_demotion\"} (an admin disabling, demoting or deleting their own account) or {\"error\": \"last_admin\"} (it would leave no enabled administrator)", body = inline(Problem)),
    )
)]
async fn set_admin(call: Call) -> Answer {
    let (req, call) = call.split();
    let b: AdminBody = read::json(&call.app, req).await?;
    user_change(call, |username| AdminRequest::UserSetAdmin {
        username,
        admin: b.admin,
    })
    .await
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RotationBody {
    /// A duration such as "24h" or "7d", or "off".
    every: String,
}

#[utoipa::path(
    put,
    path = "/tokengate/v1/admin/users/{username}/rotation",
    tag = "admin",
    security(("basic" = []), ("session" = [])),
    params(("username" = String, Path, description = "The user's username")),
    request_body(content = inline(RotationBody), content_type = "application/json"),
    responses(
        (status = 200, description = "The schedule in force: {\"user\": ...}", content_type = "application/json"),
        (status = 400, description = "Not a duration, or off", body = inline(Problem)),
        (status = 401, description = "Not authenticated", body = inline(Problem)),
        (status = 403, description = "Not an administrator", body = inline(Problem)),
        (status = 404, description = "No such user", body = inline(Problem)),
    )
)]
async fn set_rotation(call: Call) -> Answer {
    let (req, call) = call.split();
    let b: RotationBody = read::json(&call.app, req).await?;
    user_change(call, |username| AdminRequest::UserSetRotation {
        username,
        every: b.every,
    })
    .await
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
    let (req, call) = call.split();
    let b: RangesBody = read::json(&call.app, req).await?;
    let ranges = if b.ranges.is_empty() {
        "none".to_owned()
    } else {
        b.ranges.join(",")
    };
    user_change(call, |username| AdminRequest::UserSetLoginRanges {
        username,
        ranges,
    })
    .await
}

#[utoipa::path(
    post,
    path = "/tokengate/v1/admin/users/{username}/mfa/reset",
    tag = "admin",
    security(("basic" = []), ("session" = [])),
    params(("username" = String, Path, description = "The user's username")),
    responses(
        (status = 200, description = "The console second factor was cleared (the user enrols again at the next sign-in; the user's sessions ended): {\"user\": ...}", content_type = "application/json"),
        (status = 401, description = "Not authenticated", body = inline(Problem)),
        (status = 403, description = "Not an administrator", body = inline(Problem)),
        (status = 404, description = "No such user", body = inline(Problem)),
    )
)]
async fn reset_mfa(call: Call) -> Answer {
    user_change(call.split().1, |username| AdminRequest::UserMfaReset {
        username,
    })
    .await
}

/// `GET /tokengate/v1/admin/audit?since=&actor=&target=&limit=&format=json|csv`.
#[utoipa::path(
    get,
    path = "/tokengate/v1/admin/audit",
    tag = "admin",
    security(("basic" = []), ("session" = [])),
    params(
        ("since" = Option<String>, Query, description = "Only records since this time (RFC 3339) or this long ago (24h)"),
        ("actor" = Option<String>, Query, description = "Only changes by this actor (an admin's username, cli:root, system)"),
        ("target" = Option<String>, Query, description = "Only changes to this target (a username, compliance_bcc)"),
        ("limit" = Option<usize>, Query, description = "At most this many records, 1 to 100000 (default 100)"),
        ("format" = Option<String>, Query, description = "json (default) or csv"),
    ),
    responses(
        (status = 200, description = "The audit trail, newest first: {\"records\": [...]}, or CSV"),
        (status = 400, description = "A filter that cannot be read", body = inline(Problem)),
        (status = 401, description = "Not authenticated", body = inline(Problem)),
        (status = 403, description = "Not an administrator", body = inline(Problem)),
    )
)]
async fn audit_trail(call: Call) -> Answer {
    let Call { app, req, .. } = call;
    let pairs: Vec<(String, String)> = match req.uri().query() {
        Some(q) => serde_urlencoded::from_str(q)
            .map_err(|_| Refusal::invalid("unreadable query string"))?,
        None => Vec::new(),
    };
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let filter = crate::audit::Filter::from_query(get, 100).map_err(Refusal::invalid)?;
    let format = get("format");
    if !matches!(format, None | Some("json" | "csv")) {
        return Err(Refusal::invalid("format must be json or csv"));
    }
    let audit = app.admin.audit.clone();
    let records = blocking(move || Ok(audit.query(&filter)?)).await?;
    Ok(match format {
        Some("csv") => crate::wire::csv_download(crate::audit::to_csv(&records), "audit-trail.csv"),
        _ => json(StatusCode::OK, &serde_json::json!({ "records": records })),
    })
}

#[utoipa::path(
    get,
    path = "/tokengate/v1/admin/audit/verify",
    tag = "admin",
    security(("basic" = []), ("session" = [])),
    responses(
        (status = 200, description = "The chain is intact: {\"status\": \"intact\", \"verified\": {\"records\", \"first_seq\", \"last_seq\", \"anchored\"}}", content_type = "application/json"),
        (status = 401, description = "Not authenticated", body = inline(Problem)),
        (status = 403, description = "Not an administrator", body = inline(Problem)),
        (status = 409, description = "The chain is broken: {\"error\": \"audit_trail_broken\", \"message\", \"seq\"} names the first record where it breaks", body = inline(Problem)),
    )
)]
async fn audit_verify(call: Call) -> Answer {
    match perform(&call.split().1, AdminRequest::AuditVerify).await? {
        AdminAnswer::Verified { verified } => Ok(json(
            StatusCode::OK,
            &serde_json::json!({ "status": "intact", "verified": verified }),
        )),
        AdminAnswer::AuditBroken { seq, reason } => Ok(json(
            StatusCode::CONFLICT,
            &serde_json::json!({
                "error": "audit_trail_broken",
                "message": format!("the audit trail is broken at record {seq}: {reason}"),
                "seq": seq,
            }),
        )),
        _ => Err(Refusal::Internal),
    }
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
    let (req, call) = call.split();
    let b: ComplianceBody = read::json(&call.app, req).await?;
    let address = b
        .address
        .map(|a| a.trim().to_owned())
        .filter(|a| !a.is_empty());
    if b.enabled && address.is_none() {
        return Err(Refusal::invalid(
            "an address is required to enable the copy",
        ));
    }
    let op = AdminRequest::ComplianceSet {
        address,
        disable: !b.enabled,
        redact: Some(b.redact_secrets),
    };
    match perform(&call, op).await? {
        AdminAnswer::Compliance { setting } => Ok(json(
            StatusCode::OK,
            &serde_json::to_value(setting).expect("serialisable"),
        )),
        _ => Err(Refusal::Internal),
    }
}

/// `POST …/tokens` `{"name": "dataloader"}`: the named token to add.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    /// `[a-z0-9][a-z0-9._-]{0,31}`, not "default".
    name: String,
}

/// Runs a token operation through `Admin::perform` (so it is audited) and answers it: a list
/// with 200, an added token with 201, a reset with 202, a revocation with 200.
async fn token_op(app: &App, actor: &Actor, op: AdminRequest) -> Answer {
    let revoked = match &op {
        AdminRequest::TokenRevoke { name, .. } => Some(name.clone()),
        _ => None,
    };
    let added = matches!(op, AdminRequest::TokenAdd { .. });
    match app.admin.perform(actor, op).await? {
        AdminAnswer::Tokens { username, tokens } => Ok(json(
            StatusCode::OK,
            &serde_json::json!({ "username": username, "tokens": tokens }),
        )),
        AdminAnswer::Rotated {
            masked_email,
            token,
            user,
        } => {
            let name = token.as_deref().unwrap_or(crate::store::DEFAULT_TOKEN_NAME);
            Ok(json(
                if added {
                    StatusCode::CREATED
                } else {
                    StatusCode::ACCEPTED
                },
                &serde_json::json!({
                    "status": if added { "created" } else { "accepted" },
                    "message": format!("A new security token for {name} was emailed to {masked_email}."),
                    "name": name,
                    "sent_to": masked_email,
                    "username": user.username,
                }),
            ))
        }
        AdminAnswer::User { user, .. } if revoked.is_some() => Ok(json(
            StatusCode::OK,
            &serde_json::json!({
                "status": "revoked",
                "name": revoked,
                "username": user.username,
            }),
        )),
        AdminAnswer::Error { message } => Err(Refusal::invalid(message)),
        _ => Err(Refusal::Internal),
    }
}

/// A reset of the token `name`: "default" is the default token.
fn reset_request(username: String, name: &str) -> AdminRequest {
    AdminRequest::TokenReset {
        username,
        name: (name != crate::store::DEFAULT_TOKEN_NAME).then(|| name.to_owned()),
    }
}

/// The admin calling an admin endpoint (set by `dispatch`).
fn admin_actor(call: &Call) -> Result<Actor, Refusal> {
    call.actor.clone().ok_or(Refusal::Internal)
}

#[utoipa::path(
    get,
    path = "/tokengate/v1/admin/users/{username}/tokens",
    tag = "admin",
    security(("basic" = []), ("session" = [])),
    params(("username" = String, Path, description = "The user's username")),
    responses(
        (status = 200, description = "The user's tokens, the default one first: {\"username\", \"tokens\": [{name, state, created_at, reset_at, last_used_at, last_client_ip, last_dialect}]}; never a token", content_type = "application/json"),
        (status = 401, description = "Not authenticated", body = inline(Problem)),
        (status = 403, description = "Not an administrator", body = inline(Problem)),
        (status = 404, description = "No such user", body = inline(Problem)),
    )
)]
async fn list_tokens(call: Call) -> Answer {
    let actor = admin_actor(&call)?;
    let username = call.param(0).to_owned();
    token_op(&call.app, &actor, AdminRequest::TokenList { username }).await
}

#[utoipa::path(
    post,
    path = "/tokengate/v1/admin/users/{username}/tokens",
    tag = "admin",
    security(("basic" = []), ("session" = [])),
    params(("username" = String, Path, description = "The user's username")),
    request_body(content = inline(TokenBody), content_type = "application/json"),
    responses(
        (status = 201, description = "The named token was added and emailed to the user (never returned)", content_type = "application/json"),
        (status = 401, description = "Not authenticated", body = inline(Problem)),
        (status = 403, description = "Not an administrator", body = inline(Problem)),
        (status = 404, description = "No such user", body = inline(Problem)),
        (status = 409, description = "`token_exists`, or `too_many_tokens` ([tokens] max_named_per_user)", body = inline(Problem)),
        (status = 422, description = "`invalid_token_name`", body = inline(Problem)),
        (status = 503, description = "The token could not be emailed; nothing was added", body = inline(Problem)),
    )
)]
async fn add_token(call: Call) -> Answer {
    let actor = admin_actor(&call)?;
    let (req, call) = call.split();
    let b: TokenBody = read::json(&call.app, req).await?;
    let op = AdminRequest::TokenAdd {
        username: call.username,
        name: b.name,
    };
    token_op(&call.app, &actor, op).await
}

#[utoipa::path(
    post,
    path = "/tokengate/v1/admin/users/{username}/tokens/{name}/reset",
    tag = "admin",
    security(("basic" = []), ("session" = [])),
    params(
        ("username" = String, Path, description = "The user's username"),
        ("name" = String, Path, description = "The token's name (\"default\": the default token)"),
    ),
    responses(
        (status = 202, description = "A new value was emailed; the old one, and the sessions made with it, ended", content_type = "application/json"),
        (status = 401, description = "Not authenticated", body = inline(Problem)),
        (status = 403, description = "Not an administrator", body = inline(Problem)),
        (status = 404, description = "No such user, or `no_such_token`", body = inline(Problem)),
        (status = 503, description = "The token email could not be sent; the current value stays valid", body = inline(Problem)),
    )
)]
async fn reset_named_token(call: Call) -> Answer {
    let actor = admin_actor(&call)?;
    let op = reset_request(call.param(0).to_owned(), call.param(1));
    token_op(&call.app, &actor, op).await
}

#[utoipa::path(
    delete,
    path = "/tokengate/v1/admin/users/{username}/tokens/{name}",
    tag = "admin",
    security(("basic" = []), ("session" = [])),
    params(
        ("username" = String, Path, description = "The user's username"),
        ("name" = String, Path, description = "The named token's name"),
    ),
    responses(
        (status = 200, description = "Revoked: {\"status\": \"revoked\", \"name\"}; its sessions ended", content_type = "application/json"),
        (status = 401, description = "Not authenticated", body = inline(Problem)),
        (status = 403, description = "Not an administrator", body = inline(Problem)),
        (status = 404, description = "No such user, or `no_such_token`", body = inline(Problem)),
        (status = 422, description = "`invalid_token_name` (the default token cannot be revoked)", body = inline(Problem)),
    )
)]
async fn revoke_token(call: Call) -> Answer {
    let actor = admin_actor(&call)?;
    let op = revoke_request(call.param(0).to_owned(), call.param(1))?;
    token_op(&call.app, &actor, op).await
}

/// A revocation of the named token `name` (never the default token).
fn revoke_request(username: String, name: &str) -> Result<AdminRequest, Refusal> {
    crate::tokens::named::validate_name(name)?;
    Ok(AdminRequest::TokenRevoke {
        username,
        name: name.to_owned(),
    })
}

/// The caller of a self-service token endpoint (a session or Basic), as the user whose tokens
/// it manages and as the audit trail's actor: only the caller's own tokens are reachable.
async fn token_owner(call: &Call) -> Result<(Arc<crate::store::User>, Actor), Refusal> {
    let user = caller(&call.app, &call.req, call.peer)
        .await?
        .user(&call.app)?;
    let actor = Actor::admin(&user.username, call.peer.ip, Channel::Api);
    Ok((user, actor))
}

/// `GET /tokengate/v1/tokens`: the caller's own tokens.
#[utoipa::path(
    get,
    path = "/tokengate/v1/tokens",
    tag = "self-service",
    security(("session" = []), ("basic" = [])),
    responses(
        (status = 200, description = "The caller's tokens, the default one first (never a token)", content_type = "application/json"),
        (status = 401, description = "Not authenticated", body = inline(Problem)),
    )
)]
async fn my_tokens(call: Call) -> Answer {
    let (user, actor) = token_owner(&call).await?;
    let op = AdminRequest::TokenList {
        username: user.username.clone(),
    };
    token_op(&call.app, &actor, op).await
}

/// `POST /tokengate/v1/tokens` `{"name": ...}`: adds a named token for the caller, emailed to
/// the caller's address.
#[utoipa::path(
    post,
    path = "/tokengate/v1/tokens",
    tag = "self-service",
    security(("session" = []), ("basic" = [])),
    request_body(content = inline(TokenBody), content_type = "application/json"),
    responses(
        (status = 201, description = "Added and emailed (never returned)", content_type = "application/json"),
        (status = 401, description = "Not authenticated", body = inline(Problem)),
        (status = 409, description = "`token_exists` or `too_many_tokens`", body = inline(Problem)),
        (status = 422, description = "`invalid_token_name`", body = inline(Problem)),
        (status = 503, description = "The token could not be emailed; nothing was added", body = inline(Problem)),
    )
)]
async fn add_my_token(call: Call) -> Answer {
    let (user, actor) = token_owner(&call).await?;
    let app = call.app.clone();
    let b: TokenBody = read::json(&app, call.req).await?;
    let op = AdminRequest::TokenAdd {
        username: user.username.clone(),
        name: b.name,
    };
    token_op(&app, &actor, op).await
}

/// `POST /tokengate/v1/tokens/{name}/reset`: a new value of one of the caller's tokens.
#[utoipa::path(
    post,
    path = "/tokengate/v1/tokens/{name}/reset",
    tag = "self-service",
    security(("session" = []), ("basic" = [])),
    params(("name" = String, Path, description = "The token's name (\"default\": the default token)")),
    responses(
        (status = 202, description = "A new value was emailed", content_type = "application/json"),
        (status = 401, description = "Not authenticated", body = inline(Problem)),
        (status = 404, description = "`no_such_token`", body = inline(Problem)),
        (status = 503, description = "The token email could not be sent; the current value stays valid", body = inline(Problem)),
    )
)]
async fn reset_my_token(call: Call) -> Answer {
    let (user, actor) = token_owner(&call).await?;
    let op = reset_request(user.username.clone(), call.param(0));
    token_op(&call.app, &actor, op).await
}

/// `DELETE /tokengate/v1/tokens/{name}`: revokes one of the caller's named tokens.
#[utoipa::path(
    delete,
    path = "/tokengate/v1/tokens/{name}",
    tag = "self-service",
    security(("session" = []), ("basic" = [])),
    params(("name" = String, Path, description = "The named token's name")),
    responses(
        (status = 200, description = "Revoked; its sessions ended", content_type = "application/json"),
        (status = 401, description = "Not authenticated", body = inline(Problem)),
        (status = 404, description = "`no_such_token`", body = inline(Problem)),
        (status = 422, description = "`invalid_token_name` (the default token cannot be revoked)", body = inline(Problem)),
    )
)]
async fn revoke_my_token(call: Call) -> Answer {
    let (user, actor) = token_owner(&call).await?;
    let op = revoke_request(user.username.clone(), call.param(0))?;
    token_op(&call.app, &actor, op).await
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
