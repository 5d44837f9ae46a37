//! My Settings: the user's own account (token reset, password change, recent logins) and
//! sign-out.

use http::{Response, StatusCode};
use minijinja::context;

use super::form::FormErrors;
use super::page::{Page, page_after, redirect};
use super::session::{Flash, clear_cookie, renew, with_cookie};
use super::setup::{rows, setup_post};
use super::{BASE, Form};
use crate::history::format_ms;
use crate::mail::{TokenReason, mask_email};
use crate::server::caller;
use crate::server::refusal::Refusal;
use crate::server::{App, Client};
use crate::store::{HistoryFilter, User};
use crate::wire::Body;

/// My Settings; `errors` say why the form posted here was refused, tied to their fields.
pub(super) async fn settings(page: &Page<'_>, user: &User, errors: FormErrors) -> Response<Body> {
    settings_typed(page, user, errors, "").await
}

/// [`settings`] with the integration token name the user typed into the refused Add form.
pub(super) async fn settings_typed(
    page: &Page<'_>,
    user: &User,
    errors: FormErrors,
    token_name: &str,
) -> Response<Body> {
    let filter = HistoryFilter {
        user: Some(user.id.clone()),
        limit: 10,
        ..Default::default()
    };
    page.render(
        errors.status(),
        "settings.html",
        "My Settings",
        "settings",
        context! {
            user => crate::admin::UserView::from(user),
            token_reset => super::users::when_ms(
                user.token_reset_at * 1000,
                &page.app.cfg.console.time_zone,
            ),
            masked_email => mask_email(&user.email),
            policy => page.app.tokens.policy().describe(),
            rows => rows(page.app, &filter, 0, false).await,
            show_reason => false,
            mfa => super::mfa::owed(page.app, user).then(|| context! {
                enrolled => user.mfa.enrolled(),
                since => format_ms(user.mfa.enrolled_at * 1000),
                recovery_left => user.mfa.recovery.len(),
            }),
            tokens => super::tokens::rows(user, &page.app.cfg.console.time_zone),
            max_tokens => page.app.tokens.max_named(),
            token_name,
            form_errors => errors.context(),
        },
    )
}

pub(super) fn token_failure(e: crate::tokens::TokenError) -> (StatusCode, String) {
    let refusal = Refusal::from(e);
    (refusal.status(), refusal.sentence().into_owned())
}

pub(super) async fn post(
    app: &App,
    page: &Page<'_>,
    me: &User,
    rest: &str,
    f: Form,
    peer: Client,
) -> Response<Body> {
    let get = |k: &str| f.get(k).map(String::as_str).unwrap_or_default();
    match rest {
        "signout" => {
            app.console.end(&page.csrf);
            redirect(&format!("{BASE}/signin"), Some(clear_cookie()))
        }
        // Post/Redirect/Get: a reload shows My Settings again and sends no second token.
        "settings/reset-token" => match app.tokens.rotate(&me.id, TokenReason::Requested).await {
            Ok(r) => {
                let renewed = renew(app, page, me, &r.user);
                let next = page_after(app, page, &r.user, &renewed);
                let notice = format!("A new security token was emailed to {}.", r.masked_email);
                with_cookie(
                    &app.console,
                    next.done(&format!("{BASE}/settings"), Flash::success(notice)),
                    renewed,
                )
            }
            Err(e) => page.done(
                &format!("{BASE}/settings"),
                Flash::error(token_failure(e).1),
            ),
        },
        "settings/password" => {
            let current = get("current_password");
            if caller::reprove_password(app, me, current, peer, None)
                .await
                .is_err()
            {
                let wrong = Some("The current password is not right.".to_owned());
                return settings(page, me, FormErrors::on("current", wrong)).await;
            }
            match app
                .tokens
                .change_password(&me.id, get("new_password"))
                .await
            {
                Ok(r) => {
                    let notice = if app.tokens.mailer().is_configured() {
                        format!(
                            "Your password was changed and a new security token was emailed to {}.",
                            r.masked_email
                        )
                    } else {
                        "Your password was changed.".into()
                    };
                    let renewed = renew(app, page, me, &r.user);
                    let next = page_after(app, page, &r.user, &renewed);
                    with_cookie(
                        &app.console,
                        next.done(&format!("{BASE}/settings"), Flash::success(notice)),
                        renewed,
                    )
                }
                // The only refusal left is about the new password (the policy, or reuse).
                Err(e) => settings(page, me, FormErrors::on("new", Some(token_failure(e).1))).await,
            }
        }
        "settings/mfa" if super::mfa::owed(app, me) => {
            match super::mfa::start_again(app, page, me, get("code"), get("current_password"), peer)
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    // Proven by a code when one was typed (and the user has a factor),
                    // else by the password: the error belongs to the field that was used.
                    let by_code =
                        !get("code").trim().is_empty() || get("current_password").is_empty();
                    let field = if me.mfa.enrolled() && by_code {
                        "mfa-code"
                    } else {
                        "mfa-password"
                    };
                    settings(page, me, FormErrors::on(field, Some(e))).await
                }
            }
        }
        "settings/mfa/confirm" if super::mfa::owed(app, me) => {
            super::mfa::confirm_again(app, page, me, get("code"), peer)
        }
        s if s.starts_with("settings/tokens") => {
            match super::tokens::post(app, page, me, s, &f, peer).await {
                Some(r) => r,
                None => page.message(
                    StatusCode::NOT_FOUND,
                    "Not found",
                    "There is no such form.",
                    BASE,
                ),
            }
        }
        // Only admins get this far (`handle`).
        s if s.starts_with("setup/") => setup_post(app, page, me, s, &f, peer).await,
        _ => page.message(
            StatusCode::NOT_FOUND,
            "Not found",
            "There is no such form.",
            BASE,
        ),
    }
}
