//! The second factor at the console (`[console] mfa`): the code page between the password and
//! the console session, enrolment (at the first sign-in that owes a factor, or from My
//! Settings), and the recovery codes shown once.
//!
//! While half signed in ([`PendingSignIn`]) a browser reaches only these pages and sign-out.
//! A code is checked against the user's record inside `Store::update_user`, so a time step or
//! a recovery code is accepted once even when two replicas race; the outcome is counted by
//! `Authenticator::second_factor` like a password (lockout, login history, failure delay).
//! An enrolment secret is kept sealed in the record as `pending` and becomes the user's
//! factor only when a code from it is confirmed.

use std::sync::Arc;
use std::time::Instant;

use http::{Method, Request, Response, StatusCode};
use minijinja::context;

use super::form::FormErrors;
use super::page::{Page, form_status, redirect};
use super::session::{PendingSignIn, clear_cookie, with_cookie};
use super::{BASE, form};
use crate::auth::{Attempt, AuthError};
use crate::domain::{Dialect, Reason};
use crate::mfa::{self, TotpSecret};
use crate::server::caller;
use crate::server::refusal::Refusal;
use crate::server::{App, Client, ReqBody};
use crate::store::{MfaRecord, StoreError, User};
use crate::wire::Body;

const WRONG_CODE: &str = "The code is not right. Codes change every 30 seconds: use the one the app shows now, or a recovery code.";
const WRONG_ENROL_CODE: &str = "The code is not right. Check that the app added the key shown here and that the device's clock is right, then try the code it shows now.";
const NOT_CHECKED: &str = "The code could not be checked just now; try again.";

/// Whether `user` must present a second factor at this console.
pub(super) fn owed(app: &App, user: &User) -> bool {
    app.console.mfa.applies_to(user)
}

fn user_agent(req: &Request<ReqBody>) -> Option<String> {
    req.headers()
        .get("user-agent")
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(200).collect())
}

/// Every request of a half-signed-in browser: the code or enrolment page, their forms, and
/// sign-out. Anything else sends it back to the page it owes.
pub(super) async fn half_signed_in(
    app: &App,
    req: Request<ReqBody>,
    peer: Client,
    pending: Arc<PendingSignIn>,
    user: Arc<User>,
    rest: &str,
) -> Response<Body> {
    let page = Page {
        app,
        me: None,
        csrf: pending.csrf.clone(),
        session: None,
    };
    if req.method() != Method::POST {
        return match rest {
            "mfa" => owed_page(&page, &user, None),
            _ => redirect(&format!("{BASE}/mfa"), None),
        };
    }
    let client = user_agent(&req);
    let f = match form(app, req).await {
        Ok(f) => f,
        Err(refusal) => return page.refused(&refusal, &format!("{BASE}/mfa")),
    };
    let sent = f.get("csrf").map(String::as_str).unwrap_or_default();
    if !pending.csrf_matches(sent) {
        return page.message(StatusCode::FORBIDDEN, "Forbidden", "The form was not sent from this console (invalid or missing CSRF token). Reload the page and try again.", &format!("{BASE}/mfa"));
    }
    let code = f.get("code").map(String::as_str).unwrap_or_default();
    match rest {
        "signout" => {
            app.console.end_pending(&pending);
            redirect(&format!("{BASE}/signin"), Some(clear_cookie()))
        }
        "mfa" if user.mfa.enrolled() => {
            match verify(app, &user, code, peer, client.as_deref()).await {
                Ok(()) => complete(app, &pending, &user, None),
                Err(e) => code_page(&page, Some(e)),
            }
        }
        "mfa/enrol" if !user.mfa.enrolled() => match confirm(app, &user, code, peer) {
            Ok(codes) => complete(app, &pending, &user, Some(codes)),
            Err(e) => owed_page(&page, &user, Some(e)),
        },
        _ => redirect(&format!("{BASE}/mfa"), None),
    }
}

/// The page a half-signed-in user owes: the code page once enrolled, else enrolment.
fn owed_page(page: &Page<'_>, user: &User, error: Option<String>) -> Response<Body> {
    if user.mfa.enrolled() {
        return code_page(page, error);
    }
    match enrolment_secret(page.app, user) {
        Ok(secret) => enrol_page(page, user, &secret, &format!("{BASE}/mfa/enrol"), error),
        Err(e) => failed(page, &e),
    }
}

fn code_page(page: &Page<'_>, error: Option<String>) -> Response<Body> {
    page.render(
        form_status(&error),
        "mfa_code.html",
        "Verify it's you",
        "",
        context! {
            form_errors => FormErrors::on("code", error).context(),
            issuer => &page.app.cfg.server.org_name,
        },
    )
}

/// The enrolment page for `secret`: its QR code, the key as text, and the confirmation form
/// that posts to `action`.
pub(super) fn enrol_page(
    page: &Page<'_>,
    user: &User,
    secret: &TotpSecret,
    action: &str,
    error: Option<String>,
) -> Response<Body> {
    let issuer = &page.app.cfg.server.org_name;
    let drawn = secret
        .uri(issuer, &user.username)
        .and_then(|uri| mfa::qr_svg(&uri).map(|svg| (uri, svg)));
    let (uri, svg) = match drawn {
        Ok(d) => d,
        Err(e) => return failed(page, &e),
    };
    // Four characters at a time, as authenticator apps print keys.
    let b32 = secret.base32();
    let grouped = b32
        .as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    page.render(
        form_status(&error),
        "mfa_enrol.html",
        "Set up two-factor authentication",
        "settings",
        context! {
            form_errors => FormErrors::on("code", error).context(),
            action, uri, issuer, account => &user.username, secret => grouped,
            // Drawn by the qrcode crate from the URI: path data only, nothing from a client.
            qr => minijinja::Value::from_safe_string(svg),
        },
    )
}

fn failed(page: &Page<'_>, e: &dyn std::fmt::Display) -> Response<Body> {
    tracing::error!(error = %e, "the second factor could not be set up");
    page.message(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Something went wrong",
        "Two-factor authentication could not be set up just now; try again.",
        BASE,
    )
}

/// The secret being enrolled: the one kept in the record as pending, or a fresh one.
fn enrolment_secret(app: &App, user: &User) -> Result<TotpSecret, String> {
    if let Some(sealed) = &user.mfa.pending
        && let Ok(s) = TotpSecret::open(&app.secrets, &user.id, sealed)
    {
        return Ok(s);
    }
    fresh_enrolment(app, user)
}

/// A new enrolment secret, kept sealed as the user's pending one (the factor in force, if
/// any, is untouched until a code from the new one is confirmed).
pub(super) fn fresh_enrolment(app: &App, user: &User) -> Result<TotpSecret, String> {
    let secret = TotpSecret::generate(&app.secrets).map_err(|e| e.to_string())?;
    let sealed = secret
        .seal(&app.secrets, &user.id)
        .map_err(|e| e.to_string())?;
    app.store
        .update_user(&user.id, &mut |u| u.mfa.pending = Some(sealed.clone()))
        .map_err(|e| e.to_string())?;
    Ok(secret)
}

/// Confirms the pending enrolment with a code from it: the pending secret becomes the user's
/// factor, with fresh recovery codes (returned, to be shown once). Wrong enrolment codes are
/// held to the login limits but do not count toward lockout: nothing is being guessed, the
/// user is setting up a device with the key on screen.
fn confirm(app: &App, user: &User, code: &str, peer: Client) -> Result<Vec<String>, String> {
    let attempt = code_attempt(user, code, peer, None);
    if let Err(e) = app.auth.second_factor_admit(&attempt) {
        return Err(Refusal::from(e).sentence().into_owned());
    }
    let Some(sealed) = user.mfa.pending.clone() else {
        return Err("The setup expired; start again.".into());
    };
    let secret = TotpSecret::open(&app.secrets, &user.id, &sealed).map_err(|e| e.to_string())?;
    let now = crate::now_secs();
    let Some(step) = secret.check(code, now) else {
        return Err(WRONG_ENROL_CODE.into());
    };
    let (codes, tags) = mfa::recovery_codes(&app.secrets, &user.id).map_err(|e| e.to_string())?;
    let mut confirmed = false;
    app.store
        .update_user(&user.id, &mut |u| {
            // Another sign-in may have replaced the pending secret meanwhile.
            confirmed = u.mfa.pending.as_ref() == Some(&sealed);
            if confirmed {
                u.mfa = MfaRecord {
                    secret: Some(sealed.clone()),
                    pending: None,
                    recovery: tags.clone(),
                    last_step: step,
                    enrolled_at: now,
                };
            }
        })
        .map_err(|e| {
            tracing::error!(error = %e, "cannot store a confirmed second factor");
            NOT_CHECKED.to_owned()
        })?;
    if !confirmed {
        return Err("A newer setup was started for this account; use the key shown now.".into());
    }
    tracing::info!(user = %user.username, "console second factor enrolled");
    Ok(codes)
}

fn code_attempt<'a>(
    user: &'a User,
    code: &'a str,
    peer: Client,
    client: Option<&'a str>,
) -> Attempt<'a> {
    Attempt {
        username: &user.username,
        secret: code,
        ip: peer.ip,
        dialect: Dialect::Console,
        api_version: None,
        client,
        tls: peer.tls,
        password_only: true,
        relax_ranges: false,
    }
}

/// Checks a code (TOTP or recovery code) of an enrolled user and counts the outcome like a
/// login's; the error is the sentence to show.
pub(super) async fn verify(
    app: &App,
    user: &User,
    code: &str,
    peer: Client,
    client: Option<&str>,
) -> Result<(), String> {
    let started = Instant::now();
    let attempt = code_attempt(user, code, peer, client);
    if let Err(e) = app.auth.second_factor_admit(&attempt) {
        return Err(Refusal::from(e).sentence().into_owned());
    }
    let verdict = match consume(app, user, code, crate::now_secs()) {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(error = %e, "cannot check a second-factor code");
            return Err(NOT_CHECKED.into());
        }
    };
    match app
        .auth
        .second_factor(&attempt, user, verdict, started)
        .await
    {
        Ok(()) => Ok(()),
        Err(e @ (AuthError::RateLimited { .. } | AuthError::Busy | AuthError::Unavailable)) => {
            Err(Refusal::from(e).sentence().into_owned())
        }
        Err(AuthError::Store(_)) => Err(NOT_CHECKED.into()),
        // A lock reads like a wrong code: the code page tells a guesser nothing.
        Err(AuthError::Rejected(_) | AuthError::Locked { .. }) => Err(WRONG_CODE.into()),
    }
}

/// Accepts `typed` once: a TOTP code whose time step is later than the last one accepted, or
/// an unused recovery code (then spent). Decided inside the store's atomic update.
fn consume(
    app: &App,
    user: &User,
    typed: &str,
    now: u64,
) -> Result<Result<(), Reason>, StoreError> {
    let Some(sealed) = user.mfa.secret.clone() else {
        return Ok(Err(Reason::WrongCode));
    };
    let digits = typed
        .chars()
        .filter(|c| !c.is_whitespace())
        .all(|c| c.is_ascii_digit());
    if digits {
        let secret = match TotpSecret::open(&app.secrets, &user.id, &sealed) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, user = %user.username, "cannot open the user's second-factor secret");
                return Ok(Err(Reason::WrongCode));
            }
        };
        let Some(step) = secret.check(typed, now) else {
            return Ok(Err(Reason::WrongCode));
        };
        let mut verdict = Err(Reason::WrongCode);
        app.store.update_user(&user.id, &mut |u| {
            verdict = if u.mfa.secret.as_ref() != Some(&sealed) {
                // Reset or re-enrolled since the record was read.
                Err(Reason::WrongCode)
            } else if step <= u.mfa.last_step {
                Err(Reason::ReplayedCode)
            } else {
                u.mfa.last_step = step;
                Ok(())
            };
        })?;
        return Ok(verdict);
    }
    let Some(tag) = mfa::recovery_tag(&app.secrets, &user.id, typed) else {
        return Ok(Err(Reason::WrongCode));
    };
    let mut verdict = Err(Reason::WrongCode);
    let updated = app.store.update_user(&user.id, &mut |u| {
        verdict = match mfa::find_recovery(&u.mfa.recovery, &tag) {
            Some(i) if u.mfa.secret.as_ref() == Some(&sealed) => {
                u.mfa.recovery.remove(i);
                Ok(())
            }
            _ => Err(Reason::WrongCode),
        };
    })?;
    if verdict.is_ok() {
        tracing::info!(user = %user.username, left = updated.mfa.recovery.len(), "a console recovery code was used");
    }
    Ok(verdict)
}

/// The second factor is done: the half-finished sign-in gives way to a console session under
/// a new id. After an enrolment, the recovery codes are shown (once) on the way in.
fn complete(
    app: &App,
    pending: &PendingSignIn,
    user: &User,
    codes: Option<Vec<String>>,
) -> Response<Body> {
    app.console.end_pending(pending);
    let Some((sid, session)) = app.console.create(user) else {
        return Page::signed_out(app).message(
            StatusCode::SERVICE_UNAVAILABLE,
            "Sign in",
            "Too many console sessions; try again later.",
            &format!("{BASE}/signin"),
        );
    };
    match codes {
        None => redirect(
            &format!("{BASE}/settings"),
            Some(app.console.session_cookie(&sid)),
        ),
        Some(codes) => {
            let page = Page {
                app,
                me: Some(user),
                csrf: session.csrf.clone(),
                session: Some(session.clone()),
            };
            with_cookie(
                &app.console,
                recovery_page(&page, codes),
                Some((sid, session)),
            )
        }
    }
}

/// Recovery codes, shown to their owner once.
pub(super) fn recovery_page(page: &Page<'_>, codes: Vec<String>) -> Response<Body> {
    page.render(
        StatusCode::OK,
        "mfa_recovery.html",
        "Two-factor authentication is on",
        "settings",
        context! {
            codes,
            notice => "Two-factor authentication is on for your account.",
        },
    )
}

/// My Settings → "Set up a new authenticator": proven by a current code or the password, a new
/// secret is shown for enrolment; the factor in force stays until it is confirmed.
pub(super) async fn start_again(
    app: &App,
    page: &Page<'_>,
    user: &User,
    code: &str,
    password: &str,
    peer: Client,
) -> Result<Response<Body>, String> {
    if !code.trim().is_empty() && user.mfa.enrolled() {
        verify(app, user, code, peer, None).await?;
    } else if !password.is_empty() {
        if caller::reprove_password(app, user, password, peer, None)
            .await
            .is_err()
        {
            return Err("The password is not right.".into());
        }
    } else {
        return Err("Enter a current code or your password.".into());
    }
    let secret = fresh_enrolment(app, user)?;
    Ok(enrol_page(
        page,
        user,
        &secret,
        &format!("{BASE}/settings/mfa/confirm"),
        None,
    ))
}

/// My Settings → confirming the new authenticator: new recovery codes, shown once.
pub(super) fn confirm_again(
    app: &App,
    page: &Page<'_>,
    user: &User,
    code: &str,
    peer: Client,
) -> Response<Body> {
    match confirm(app, user, code, peer) {
        Ok(codes) => recovery_page(page, codes),
        Err(e) => match enrolment_secret(app, user) {
            Ok(secret) => enrol_page(
                page,
                user,
                &secret,
                &format!("{BASE}/settings/mfa/confirm"),
                Some(e),
            ),
            Err(e) => failed(page, &e),
        },
    }
}

/// Half signs in a user whose password was accepted and who owes the second factor; a user
/// not enrolled yet gets a fresh enrolment secret for this sign-in.
pub(super) fn begin(app: &App, user: &User) -> Response<Body> {
    if !user.mfa.enrolled()
        && let Err(e) = fresh_enrolment(app, user)
    {
        tracing::warn!(error = %e, "could not prepare a second-factor enrolment");
    }
    match app.console.create_pending(user) {
        Some((sid, _)) => redirect(
            &format!("{BASE}/mfa"),
            Some(app.console.pending_cookie(&sid)),
        ),
        None => Page::signed_out(app).message(
            StatusCode::SERVICE_UNAVAILABLE,
            "Sign in",
            "Too many sign-ins in progress; try again later.",
            &format!("{BASE}/signin"),
        ),
    }
}
