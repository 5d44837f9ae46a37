//! The admin endpoints on users (`/tokengate/v1/admin/users…`): list, add, show, change,
//! delete, unlock, disable, enable, administrator, rotation, login ranges, second factor.

use super::*;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewUserBody {
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
pub(super) struct RangesBody {
    ranges: Vec<String>,
}

/// `{"user": ..., "note": ...}`, as every admin endpoint about one user answers.
pub(super) fn user_json(status: StatusCode, answer: AdminAnswer) -> Answer {
    match answer {
        AdminAnswer::User { user, note, .. } => Ok(json(
            status,
            &serde_json::json!({ "user": user, "note": note }),
        )),
        _ => Err(Refusal::Internal),
    }
}

/// A change to one user: the request made from the path's username, answered with the user.
pub(super) async fn user_change(call: Parts, op: impl FnOnce(String) -> AdminRequest) -> Answer {
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
pub(super) async fn list_users(call: Call) -> Answer {
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
pub(super) async fn add_user(call: Call) -> Answer {
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
pub(super) async fn show_user(call: Call) -> Answer {
    let user: UserView = call.app.users.show(call.param(0))?;
    Ok(json(StatusCode::OK, &serde_json::json!({ "user": user })))
}

/// What `PATCH /users/{username}` may change; absent fields stay as they are.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct UserPatchBody {
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
pub(super) async fn update_user(call: Call) -> Answer {
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
pub(super) async fn delete_user(call: Call) -> Answer {
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
pub(super) async fn reset_token(call: Call) -> Answer {
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
pub(super) async fn unlock_user(call: Call) -> Answer {
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
pub(super) async fn disable_user(call: Call) -> Answer {
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
pub(super) async fn enable_user(call: Call) -> Answer {
    user_change(call.split().1, |username| AdminRequest::UserSetDisabled {
        username,
        disabled: false,
    })
    .await
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct AdminBody {
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
pub(super) async fn set_admin(call: Call) -> Answer {
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
pub(super) struct RotationBody {
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
pub(super) async fn set_rotation(call: Call) -> Answer {
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
pub(super) async fn set_login_ranges(call: Call) -> Answer {
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
pub(super) async fn reset_mfa(call: Call) -> Answer {
    user_change(call.split().1, |username| AdminRequest::UserMfaReset {
        username,
    })
    .await
}
