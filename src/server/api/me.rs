//! The self-service endpoints: a user resets their own token or changes their own password,
//! and manages their own named tokens (`/tokengate/v1/token/reset`, `/password`, `/tokens`).

use super::*;

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
pub(super) async fn self_service_reset(call: Call) -> Answer {
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
pub(super) struct PasswordChange {
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
pub(super) async fn change_password(call: Call) -> Answer {
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

/// The caller of a self-service token endpoint (a session or Basic), as the user whose tokens
/// it manages and as the audit trail's actor: only the caller's own tokens are reachable.
pub(super) async fn token_owner(call: &Call) -> Result<(Arc<crate::store::User>, Actor), Refusal> {
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
pub(super) async fn my_tokens(call: Call) -> Answer {
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
pub(super) async fn add_my_token(call: Call) -> Answer {
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
pub(super) async fn reset_my_token(call: Call) -> Answer {
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
pub(super) async fn revoke_my_token(call: Call) -> Answer {
    let (user, actor) = token_owner(&call).await?;
    let op = revoke_request(user.username.clone(), call.param(0))?;
    token_op(&call.app, &actor, op).await
}
