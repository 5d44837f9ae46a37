//! Sign-in: the password, verified like any login (dialect `console`); then, for a user who
//! owes a second factor (`[console] mfa`), the code page (`mfa`).

use http::{Method, Request, Response, StatusCode};
use minijinja::context;

use super::form::FormErrors;
use super::page::{Page, redirect};
use super::{BASE, form, query};
use crate::auth::Attempt;
use crate::domain::Dialect;
use crate::server::refusal::Refusal;
use crate::server::{App, Client, ReqBody};
use crate::wire::Body;

pub(super) async fn signin(
    app: &App,
    req: Request<ReqBody>,
    peer: Client,
    method: Method,
) -> Response<Body> {
    let page = Page::signed_out(app);
    if method != Method::POST {
        let expired = query(&req).contains_key("expired");
        let notice = expired.then_some("Your console session expired. Sign in again.");
        return page.render(
            StatusCode::OK,
            "signin.html",
            "Sign in",
            "",
            context! { notice, username => "" },
        );
    }
    let client = req
        .headers()
        .get("user-agent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let f = match form(app, req).await {
        Ok(f) => f,
        Err(refusal) => {
            return page.render(
                refusal.status(),
                "signin.html",
                "Sign in",
                "",
                context! { error => refusal.sentence(), username => "" },
            );
        }
    };
    let username = f.get("username").cloned().unwrap_or_default();
    let password = f.get("password").cloned().unwrap_or_default();
    let attempt = Attempt {
        username: &username,
        secret: &password,
        ip: peer.ip,
        dialect: Dialect::Console,
        api_version: None,
        client: client.as_deref(),
        tls: peer.tls,
        password_only: true,
        relax_ranges: false,
    };
    // The username typed is shown again; the password never is.
    let fail = |status: StatusCode, errors: FormErrors| {
        page.render(
            status,
            "signin.html",
            "Sign in",
            "",
            context! { form_errors => errors.context(), username => username.clone() },
        )
    };
    let whole = |message: &str| {
        let mut e = FormErrors::none();
        e.add(None, message);
        e
    };
    match app.auth.login(&attempt).await {
        Ok(v) if v.user.api_only => fail(
            StatusCode::FORBIDDEN,
            FormErrors::on(
                "username",
                Some(
                    "This user is API only: it logs in through the APIs, not to the console."
                        .into(),
                ),
            ),
        ),
        Ok(v) if super::mfa::owed(app, &v.user) => super::mfa::begin(app, &v.user),
        Ok(v) => match app.console.create(&v.user) {
            Some((sid, _)) => redirect(
                &format!("{BASE}/settings"),
                Some(app.console.session_cookie(&sid)),
            ),
            None => fail(
                StatusCode::SERVICE_UNAVAILABLE,
                whole("Too many console sessions; try again later."),
            ),
        },
        Err(e) => {
            // A password alone never proves the token, so a lock is `BadCredentials` here. The
            // sentence names no field (it must not say which was wrong); it is tied to the
            // password, the field to type again.
            let refusal = Refusal::from(e);
            fail(
                refusal.status(),
                FormErrors::on("password", Some(refusal.sentence().into_owned())),
            )
        }
    }
}
