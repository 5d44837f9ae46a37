//! The page frame: templates, the signed-in user's header, messages, redirects, and the
//! security headers on every console answer.

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use minijinja::{Environment, context};
use serde::Serialize;

use super::ConsoleError;
use super::session::{ConsoleSession, Flash, FlashKind};
use crate::server::App;
use crate::server::refusal::Refusal;
use crate::store::User;
use crate::wire::{Body, full};

/// The console's templates, compiled into the binary.
pub(super) fn templates() -> Result<Environment<'static>, ConsoleError> {
    let mut env = Environment::new();
    for (name, src) in [
        (
            "base.html",
            include_str!("../../../templates/console/base.html"),
        ),
        (
            "form_errors.html",
            include_str!("../../../templates/console/form_errors.html"),
        ),
        (
            "signin.html",
            include_str!("../../../templates/console/signin.html"),
        ),
        (
            "settings.html",
            include_str!("../../../templates/console/settings.html"),
        ),
        (
            "confirm_reset.html",
            include_str!("../../../templates/console/confirm_reset.html"),
        ),
        (
            "confirm_token.html",
            include_str!("../../../templates/console/confirm_token.html"),
        ),
        (
            "history_table.html",
            include_str!("../../../templates/console/history_table.html"),
        ),
        (
            "users.html",
            include_str!("../../../templates/console/users.html"),
        ),
        (
            "compliance.html",
            include_str!("../../../templates/console/compliance.html"),
        ),
        (
            "history.html",
            include_str!("../../../templates/console/history.html"),
        ),
        (
            "message.html",
            include_str!("../../../templates/console/message.html"),
        ),
        (
            "user.html",
            include_str!("../../../templates/console/user.html"),
        ),
        (
            "user_new.html",
            include_str!("../../../templates/console/user_new.html"),
        ),
        (
            "confirm_action.html",
            include_str!("../../../templates/console/confirm_action.html"),
        ),
        (
            "audit.html",
            include_str!("../../../templates/console/audit.html"),
        ),
        (
            "mfa_code.html",
            include_str!("../../../templates/console/mfa_code.html"),
        ),
        (
            "mfa_cancel.html",
            include_str!("../../../templates/console/mfa_cancel.html"),
        ),
        (
            "mfa_enrol.html",
            include_str!("../../../templates/console/mfa_enrol.html"),
        ),
        (
            "mfa_recovery.html",
            include_str!("../../../templates/console/mfa_recovery.html"),
        ),
    ] {
        env.add_template(name, src)?;
    }
    Ok(env)
}

/// Security headers every console answer carries.
pub(super) fn harden(mut r: Response<Body>) -> Response<Body> {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Not "no-referrer": under it browsers send `Origin: null` with the console's own form
    // posts, which the cross-site check cannot tell from a sandboxed attacker's.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

pub(super) fn redirect(to: &str, cookie: Option<String>) -> Response<Body> {
    let mut r = Response::new(full(""));
    *r.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    if let Some(c) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        r.headers_mut().insert(header::SET_COOKIE, c);
    }
    harden(r)
}

#[derive(Serialize)]
pub(super) struct Me {
    pub(super) username: String,
    pub(super) admin: bool,
}

pub(super) struct Page<'a> {
    pub(super) app: &'a App,
    pub(super) me: Option<&'a User>,
    pub(super) csrf: String,
    /// The signed-in console session: where a form's outcome waits for the next page.
    pub(super) session: Option<Arc<ConsoleSession>>,
}

impl<'a> Page<'a> {
    /// A page for someone not signed in (sign-in, the second factor, refusals before the
    /// console saw the request).
    pub(super) fn signed_out(app: &'a App) -> Self {
        Page {
            app,
            me: None,
            csrf: String::new(),
            session: None,
        }
    }

    pub(super) fn render(
        &self,
        status: StatusCode,
        template: &str,
        title: &str,
        section: &str,
        extra: minijinja::Value,
    ) -> Response<Body> {
        let ctx = context! {
            title, section,
            brand => self.app.tokens.mailer().brand(),
            me => self.me.map(|u| Me { username: u.username.clone(), admin: u.admin }),
            csrf => &self.csrf,
            ..extra
        };
        // The outcome of the form that redirected here, shown once (it comes first, so it
        // wins over the page's own message).
        let ctx = match self.session.as_ref().and_then(|s| s.take_flash()) {
            Some(f) => {
                let (notice, error) = match f.kind {
                    FlashKind::Success => (Some(f.text), None),
                    FlashKind::Error => (None, Some(f.text)),
                };
                context! { notice, error, ..ctx }
            }
            None => ctx,
        };
        let html = match self
            .app
            .console
            .env
            .get_template(template)
            .and_then(|t| t.render(ctx))
        {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(error = %e, template, "console template failed");
                return harden(crate::wire::respond(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain; charset=utf-8",
                    "internal error",
                ));
            }
        };
        harden(crate::wire::respond(
            status,
            "text/html; charset=utf-8",
            html,
        ))
    }

    /// Post/Redirect/Get: a form's outcome is kept for the next page and the browser is sent
    /// there with 303 See Other, so a reload repeats the GET, never the form.
    pub(super) fn done(&self, to: &str, flash: Flash) -> Response<Body> {
        if let Some(s) = &self.session {
            s.set_flash(flash);
        }
        redirect(to, None)
    }

    /// A refused request as a page: the refusal's own status and sentence (`refusal`), and
    /// `Retry-After` when waiting helps.
    pub(super) fn refused(&self, refusal: &Refusal, back: &str) -> Response<Body> {
        let status = refusal.status();
        let title = match status {
            StatusCode::BAD_REQUEST => "Bad request",
            s => s.canonical_reason().unwrap_or("Refused"),
        };
        let mut r = self.message(status, title, &refusal.sentence(), back);
        if let Some(secs) = refusal.retry_after() {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        r
    }

    pub(super) fn message(
        &self,
        status: StatusCode,
        title: &str,
        message: &str,
        back: &str,
    ) -> Response<Body> {
        self.render(
            status,
            "message.html",
            title,
            "",
            context! { message, back },
        )
    }
}

/// A page that shows a form's outcome: 400 when it carries an error, else 200.
pub(super) fn form_status(error: &Option<String>) -> StatusCode {
    if error.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    }
}

/// The page to render after an action by `user`: with the renewed session's CSRF token when
/// the session was renewed.
pub(super) fn page_after<'a>(
    app: &'a App,
    page: &Page<'_>,
    user: &'a User,
    renewed: &Option<(String, Arc<ConsoleSession>)>,
) -> Page<'a> {
    Page {
        app,
        me: Some(user),
        csrf: renewed
            .as_ref()
            .map_or_else(|| page.csrf.clone(), |(_, s)| s.csrf.clone()),
        session: renewed
            .as_ref()
            .map_or_else(|| page.session.clone(), |(_, s)| Some(s.clone())),
    }
}
