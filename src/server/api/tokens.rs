//! The admin endpoints on a user's tokens (`/tokengate/v1/admin/users/{username}/tokens…`,
//! `…/token/reset`), and the token operation the self-service endpoints share.

use super::*;

/// `POST …/tokens` `{"name": "dataloader"}`: the named token to add.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct TokenBody {
    /// `[a-z0-9][a-z0-9._-]{0,31}`, not "default".
    pub(super) name: String,
}

/// Runs a token operation through `Admin::perform` (so it is audited) and answers it: a list
/// with 200, an added token with 201, a reset with 202, a revocation with 200.
pub(super) async fn token_op(app: &App, actor: &Actor, op: AdminRequest) -> Answer {
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
pub(super) fn reset_request(username: String, name: &str) -> AdminRequest {
    AdminRequest::TokenReset {
        username,
        name: (name != crate::store::DEFAULT_TOKEN_NAME).then(|| name.to_owned()),
    }
}

/// The admin calling an admin endpoint (set by `dispatch`).
pub(super) fn admin_actor(call: &Call) -> Result<Actor, Refusal> {
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
pub(super) async fn list_tokens(call: Call) -> Answer {
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
pub(super) async fn add_token(call: Call) -> Answer {
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
pub(super) async fn reset_named_token(call: Call) -> Answer {
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
pub(super) async fn revoke_token(call: Call) -> Answer {
    let actor = admin_actor(&call)?;
    let op = revoke_request(call.param(0).to_owned(), call.param(1))?;
    token_op(&call.app, &actor, op).await
}

/// A revocation of the named token `name` (never the default token).
pub(super) fn revoke_request(username: String, name: &str) -> Result<AdminRequest, Refusal> {
    crate::tokens::named::validate_name(name)?;
    Ok(AdminRequest::TokenRevoke {
        username,
        name: name.to_owned(),
    })
}
