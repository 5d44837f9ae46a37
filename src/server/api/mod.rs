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
//!
//! The handlers live with their resource: `me` (what a user does to their own account),
//! `users` and `tokens` (the admin endpoints on users and their tokens), `history` (the login
//! history and the audit trail) and `settings`. This file holds what they share: the route
//! table and its dispatch, who may call, the OpenAPI document, and the admin helpers.

mod history;
mod me;
mod settings;
mod tokens;
mod users;

use history::*;
use me::*;
use settings::*;
use tokens::*;
use users::*;

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

/// Runs an admin request for the calling administrator through `Admin::perform`, the one
/// place every change is made and recorded in the audit trail.
async fn perform(call: &Parts, op: AdminRequest) -> Result<AdminAnswer, Refusal> {
    let actor = call.actor.as_ref().ok_or(Refusal::Internal)?;
    match call.app.admin.perform(actor, op).await? {
        AdminAnswer::Error { message } => Err(Refusal::invalid(message)),
        answer => Ok(answer),
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
