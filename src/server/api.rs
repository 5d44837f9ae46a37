//! tokengate's own JSON API under `/tokengate/v1/`: self-service token reset and password
//! change, and the admin API. Every action calls the same `Users`/`Tokens`/`Admin` code as the
//! CLI. Refusals are `{"error": ..., "message": ...}` (`refusal`, the API dialect); 401 only
//! when the caller is not authenticated, 403 when authenticated but not allowed.

use std::sync::Arc;
use std::time::Instant;

use http::{Method, Request, Response, StatusCode};
use serde::Deserialize;

use super::caller::{self, Caller, Credential, Login, Proof};
use super::handlers::header_str;
use super::refusal::{Dialect as As, Refusal};
use super::{App, Client, ReqBody, read};
use crate::admin::{Answer as AdminAnswer, NewUser, Request as AdminRequest, UserChanges};
use crate::audit::{Actor, Channel};
use crate::auth::Attempt;
use crate::domain::Dialect;
use crate::mail::TokenReason;
use crate::wire::{Body, JSON, respond};

/// What an API handler ends in: an answer, or a refusal rendered in the API's dialect.
type Answer = Result<Response<Body>, Refusal>;

fn json(status: StatusCode, v: &serde_json::Value) -> Response<Body> {
    respond(status, JSON, v.to_string())
}

fn method_not_allowed(allow: &'static str) -> Refusal {
    Refusal::MethodNotAllowed { allow }
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
    one::<UserChanges>(data, &mut out);
    one::<AdminBody>(data, &mut out);
    one::<RotationBody>(data, &mut out);
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

pub async fn handle(app: Arc<App>, req: Request<ReqBody>, peer: Client) -> Response<Body> {
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let Some(rest) = path.strip_prefix("/tokengate/v1/") else {
        return Refusal::NotFound("no such tokengate endpoint").render(As::Api);
    };
    let segments: Vec<&str> = rest.split('/').collect();
    let answer = match segments.as_slice() {
        ["token", "reset"] => self_service_reset(app, req, peer).await,
        ["password"] => change_password(app, req, peer).await,
        ["admin", rest @ ..] => {
            let rest: Vec<String> = rest
                .iter()
                .map(|s| crate::wire::decode_component(s))
                .collect();
            let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
            admin(app, req, peer, &rest).await
        }
        _ => Err(Refusal::NotFound("no such tokengate endpoint")),
    };
    answer.unwrap_or_else(|r| r.render(As::Api))
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
async fn self_service_reset(app: Arc<App>, req: Request<ReqBody>, peer: Client) -> Answer {
    if req.method() != Method::POST {
        return Err(method_not_allowed("POST"));
    }
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
async fn change_password(app: Arc<App>, req: Request<ReqBody>, peer: Client) -> Answer {
    if req.method() != Method::POST {
        return Err(method_not_allowed("POST"));
    }
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
    #[serde(default)]
    api_only: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RangesBody {
    ranges: Vec<String>,
}

/// `GET /tokengate/v1/admin/history?user=&since=&outcome=&limit=&format=json|csv`.
async fn history(app: &App, req: &Request<ReqBody>) -> Answer {
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

/// The admin API: for callers who are admins. Every change goes through
/// [`crate::admin::Admin::perform`], which records it in the audit trail.
async fn admin(app: Arc<App>, req: Request<ReqBody>, peer: Client, path: &[&str]) -> Answer {
    let who = caller(&app, &req, peer).await?;
    let me = who.user(&app)?;
    if !me.admin {
        return Err(Refusal::Forbidden {
            code: "forbidden",
            message: "this endpoint is for administrators".into(),
        });
    }
    let actor = Actor::admin(&me.username, peer.ip, Channel::Api);
    let method = req.method().clone();
    let name = |n: &str| n.to_owned();
    let op = match (path, method) {
        (["users"], Method::GET) => AdminRequest::UserList,
        (["users"], Method::POST) => {
            let b: NewUserBody = read::json(&app, req).await?;
            AdminRequest::UserAdd(NewUser {
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
            })
        }
        (["users"], _) => return Err(method_not_allowed("GET, POST")),
        (["users", n], Method::GET) => AdminRequest::UserShow { username: name(n) },
        (["users", n], Method::DELETE) => AdminRequest::UserDelete { username: name(n) },
        (["users", n], Method::PATCH) => {
            let changes: UserChanges = read::json(&app, req).await?;
            AdminRequest::UserSet {
                username: name(n),
                changes,
            }
        }
        (["users", _], _) => return Err(method_not_allowed("GET, PATCH, DELETE")),
        (["users", n, "token", "reset"], Method::POST) => {
            AdminRequest::TokenReset { username: name(n) }
        }
        (["users", n, "unlock"], Method::POST) => AdminRequest::UserUnlock { username: name(n) },
        (["users", n, "disable"], Method::POST) => AdminRequest::UserSetDisabled {
            username: name(n),
            disabled: true,
        },
        (["users", n, "enable"], Method::POST) => AdminRequest::UserSetDisabled {
            username: name(n),
            disabled: false,
        },
        (["users", n, "admin"], Method::PUT) => {
            let b: AdminBody = read::json(&app, req).await?;
            AdminRequest::UserSetAdmin {
                username: name(n),
                admin: b.admin,
            }
        }
        (["users", n, "rotation"], Method::PUT) => {
            let b: RotationBody = read::json(&app, req).await?;
            AdminRequest::UserSetRotation {
                username: name(n),
                every: b.every,
            }
        }
        (["users", n, "mfa", "reset"], Method::POST) => {
            AdminRequest::UserMfaReset { username: name(n) }
        }
        (["users", n, "login-ranges"], Method::PUT) => {
            let b: RangesBody = read::json(&app, req).await?;
            AdminRequest::UserSetLoginRanges {
                username: name(n),
                ranges: if b.ranges.is_empty() {
                    "none".into()
                } else {
                    b.ranges.join(",")
                },
            }
        }
        (
            ["users", _, "token" | "mfa", "reset"] | ["users", _, "unlock" | "disable" | "enable"],
            _,
        ) => {
            return Err(method_not_allowed("POST"));
        }
        (["users", _, "admin" | "rotation" | "login-ranges"], _) => {
            return Err(method_not_allowed("PUT"));
        }
        (["history"], Method::GET) => return history(&app, &req).await,
        (["audit"], Method::GET) => return audit_trail(&app, &req).await,
        (["audit", "verify"], Method::GET) => AdminRequest::AuditVerify,
        (["audit"] | ["audit", "verify"], _) => return Err(method_not_allowed("GET")),
        (["settings", "compliance-bcc"], Method::GET) => AdminRequest::ComplianceGet,
        (["settings", "compliance-bcc"], Method::PUT) => {
            let b: ComplianceBody = read::json(&app, req).await?;
            let address = b
                .address
                .map(|a| a.trim().to_owned())
                .filter(|a| !a.is_empty());
            if b.enabled && address.is_none() {
                return Err(Refusal::invalid(
                    "an address is required to enable the copy",
                ));
            }
            AdminRequest::ComplianceSet {
                address,
                disable: !b.enabled,
                redact: Some(b.redact_secrets),
            }
        }
        (["settings", "compliance-bcc"], _) => return Err(method_not_allowed("GET, PUT")),
        _ => return Err(Refusal::NotFound("no such admin endpoint")),
    };
    let created = matches!(op, AdminRequest::UserAdd(_));
    let rotation = matches!(op, AdminRequest::TokenReset { .. });
    let deleted = matches!(op, AdminRequest::UserDelete { .. });
    let answer = app.admin.perform(&actor, op).await?;
    Ok(match answer {
        // The token is never returned over HTTP: it is emailed (when mail is configured).
        AdminAnswer::User { user, note, .. } if created => json(
            StatusCode::CREATED,
            &serde_json::json!({ "user": user, "note": note }),
        ),
        AdminAnswer::User { user, note, .. } => json(
            StatusCode::OK,
            &serde_json::json!({ "user": user, "note": note }),
        ),
        AdminAnswer::Users { .. } if deleted => {
            json(StatusCode::OK, &serde_json::json!({ "status": "deleted" }))
        }
        AdminAnswer::Users { users } => {
            json(StatusCode::OK, &serde_json::json!({ "users": users }))
        }
        AdminAnswer::Rotated { user, masked_email } if rotation => json(
            StatusCode::ACCEPTED,
            &serde_json::json!({
                "status": "accepted",
                "message": format!("A new security token was emailed to {masked_email}."),
                "sent_to": masked_email,
                "user": user,
            }),
        ),
        AdminAnswer::Compliance { setting } => json(
            StatusCode::OK,
            &serde_json::to_value(setting).expect("serialisable"),
        ),
        AdminAnswer::Verified { verified } => json(
            StatusCode::OK,
            &serde_json::json!({ "status": "intact", "verified": verified }),
        ),
        AdminAnswer::AuditBroken { seq, reason } => json(
            StatusCode::CONFLICT,
            &serde_json::json!({
                "error": "audit_trail_broken",
                "message": format!("the audit trail is broken at record {seq}: {reason}"),
                "seq": seq,
            }),
        ),
        AdminAnswer::Error { message } => return Err(Refusal::invalid(message)),
        _ => return Err(Refusal::internal(&"unexpected admin answer")),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminBody {
    admin: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RotationBody {
    /// A duration such as "24h", or "off".
    every: String,
}

/// `GET /tokengate/v1/admin/audit?since=&actor=&target=&limit=&format=json|csv`.
async fn audit_trail(app: &App, req: &Request<ReqBody>) -> Answer {
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
    let since_ms = match get("since") {
        None => None,
        Some(s) => Some(crate::history::parse_since(s).ok_or_else(|| {
            Refusal::invalid("since must be an RFC 3339 time or a duration such as 24h")
        })?),
    };
    let filter = crate::audit::Filter {
        since_ms,
        actor: get("actor").map(str::to_owned),
        target: get("target").map(crate::domain::canonical_username),
        limit,
    };
    let format = get("format");
    if !matches!(format, None | Some("json" | "csv")) {
        return Err(Refusal::invalid("format must be json or csv"));
    }
    let audit = app.admin.audit.clone();
    let records = blocking(move || Ok(audit.query(&filter)?)).await?;
    Ok(match format {
        Some("csv") => {
            let mut r = respond(
                StatusCode::OK,
                "text/csv; charset=utf-8",
                crate::audit::to_csv(&records),
            );
            r.headers_mut().insert(
                http::header::CONTENT_DISPOSITION,
                http::HeaderValue::from_static("attachment; filename=\"audit-trail.csv\""),
            );
            r
        }
        _ => json(StatusCode::OK, &serde_json::json!({ "records": records })),
    })
}
