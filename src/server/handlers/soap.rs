//! SOAP on `/services/Soap/{u|c|m}/{version}`: `login()` (a login), `logout`, `getUserInfo`,
//! and every other call, forwarded once its session is valid with the `SessionHeader` cut out.
//!
//! Before a call is authenticated at most `max_login_body_bytes` of its body is read (and
//! decoded): a body that fits is parsed whole; a longer one is read only as far as the start
//! of its `Body`, where the session is found and checked, and only for a valid session is the
//! rest read, under `max_soap_body_bytes`. Large envelopes are decoded and parsed off the
//! async workers.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};

use super::{header_str, user_info};
use crate::auth::Attempt;
use crate::domain::Dialect;
use crate::proxy::{forwarded_for, sanitise};
use crate::server::access::log_login;
use crate::server::body::{self, BodyError};
use crate::server::caller::{self, Credential, Login};
use crate::server::refusal::{self, Refusal};
use crate::server::{App, Client, ReqBody};
use crate::wire::soap::{self, Flavor, Op};
use crate::wire::{self, Body, TEXT_XML, respond};

fn soap_response(status: StatusCode, xml: String) -> Response<Body> {
    respond(status, TEXT_XML, xml)
}

/// Envelopes up to this size are parsed on the async worker; larger ones on the blocking pool.
const INLINE_PARSE_BYTES: usize = 64 * 1024;

/// Reads a SOAP envelope under the rules in the module docs: the whole of a small one, and of
/// a large one only once the session in its head is valid.
async fn read_envelope(
    app: &App,
    body: ReqBody,
    headers: &http::HeaderMap,
    peer: Client,
    flavor: Flavor,
) -> Result<(Bytes, body::Held), Response<Body>> {
    let s = &app.cfg.server;
    let as_soap = refusal::Dialect::Soap(flavor);
    let body_error = |e: BodyError| Refusal::from(e).render(as_soap);
    let mut reader =
        body::Reader::new(body, headers, &app.bodies, s.body_read_timeout).map_err(body_error)?;
    if reader
        .fill(s.max_login_body_bytes)
        .await
        .map_err(body_error)?
        == body::Fill::Full
    {
        let too_large = || {
            Refusal::UnauthenticatedTooLarge {
                limit: s.max_login_body_bytes,
            }
            .render(as_soap)
        };
        let head = match soap::parse_head(reader.decoded()) {
            Ok(Some(head)) => head,
            Ok(None) => return Err(too_large()),
            Err(e) => return Err(Refusal::invalid(e.to_string()).render(as_soap)),
        };
        match session_of(&head, headers) {
            // No session at all: a login, or a call without credentials; too large either way.
            Credential::Session(sid) => {
                let credential = Credential::Session(sid);
                if let Err(r) = caller::identify(app, credential, peer, || Login::BASIC).await {
                    return Err(r.render(as_soap));
                }
            }
            _ => return Err(too_large()),
        }
        if reader
            .fill(s.max_soap_body_bytes)
            .await
            .map_err(body_error)?
            == body::Fill::Full
        {
            return Err(body_error(BodyError::TooLarge(s.max_soap_body_bytes)));
        }
    }
    Ok(reader.into_bytes())
}

pub async fn soap_call(
    app: Arc<App>,
    req: Request<ReqBody>,
    peer: Client,
    host: Option<HeaderValue>,
) -> Response<Body> {
    let Some(sp) = soap::parse_path(req.uri().path()) else {
        // A client fault, which names no flavor.
        return Refusal::NotFound("No service available at this path")
            .render(refusal::Dialect::Soap(Flavor::Partner));
    };
    let as_soap = refusal::Dialect::Soap(sp.flavor);
    if req.method() != Method::POST {
        return Refusal::MethodNotAllowed {
            allow: "POST".into(),
        }
        .render(as_soap);
    }
    if !sp.version_is_valid() {
        return Refusal::UnsupportedApiVersion.render(as_soap);
    }
    // SOAP 1.1 is text/xml with any charset; a missing Content-Type is tolerated.
    if let Some(ct) = req.headers().get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or_default().to_ascii_lowercase();
        if !ct.trim_start().starts_with("text/xml") {
            return Refusal::UnsupportedMedia(
                "Content-Type must be text/xml for SOAP 1.1 requests".into(),
            )
            .render(as_soap);
        }
    }
    let (parts, body) = req.into_parts();
    let (bytes, held) = match read_envelope(&app, body, &parts.headers, peer, sp.flavor).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let parse = move || -> Result<(soap::Envelope, Bytes), String> {
        if std::str::from_utf8(&bytes).is_err() {
            return Err("The request is not valid UTF-8".to_owned());
        }
        soap::parse(&bytes)
            .map(|env| (env, bytes))
            .map_err(|e| e.to_string())
    };
    // A large envelope is parsed off the async workers.
    let parsed = if held.bytes() <= INLINE_PARSE_BYTES {
        parse()
    } else {
        tokio::task::spawn_blocking(parse)
            .await
            .unwrap_or_else(|_| Err("The request could not be parsed".to_owned()))
    };
    let (env, bytes) = match parsed {
        Ok(p) => p,
        Err(e) => return Refusal::invalid(e).render(as_soap),
    };
    let flavor = sp.flavor;
    match env.op {
        Op::Login {
            ref username,
            ref password,
        } if flavor != Flavor::Metadata => {
            let client = env
                .client
                .as_deref()
                .or_else(|| header_str(&parts.headers, "sforce-call-options"))
                .or_else(|| header_str(&parts.headers, "user-agent"));
            let attempt = Attempt {
                username,
                secret: password,
                ip: peer.ip,
                dialect: Dialect::Soap,
                api_version: Some(&sp.version),
                client,
                tls: peer.tls,
                password_only: false,
                relax_ranges: false,
            };
            let result = app.auth.login(&attempt).await;
            log_login("soap", username, &result, client);
            match result.map(|v| (v.user, v.token)) {
                Ok((user, token)) => {
                    match app.sessions.create_with(&user, &token, Default::default()) {
                        Ok(sid) => soap_response(
                            StatusCode::OK,
                            soap::login_response(
                                flavor,
                                &app.origin,
                                &sp.version,
                                &sid,
                                &user_info(&app, &user),
                            ),
                        ),
                        Err(e) => {
                            tracing::error!(error = %e, "could not create a session");
                            Refusal::Busy.render(as_soap)
                        }
                    }
                }
                Err(e) => Refusal::from(e).render(as_soap),
            }
        }
        Op::Logout => match session_of(&env, &parts.headers) {
            Credential::Session(sid) if app.sessions.revoke(&sid) => {
                soap_response(StatusCode::OK, soap::logout_response(flavor))
            }
            _ => Refusal::InvalidSession.render(as_soap),
        },
        Op::GetUserInfo => {
            let credential = session_of(&env, &parts.headers);
            let user = match caller::identify(&app, credential, peer, || Login::BASIC).await {
                Ok(who) => who.user(&app),
                Err(r) => Err(r),
            };
            match user {
                Ok(user) => soap_response(
                    StatusCode::OK,
                    soap::get_user_info_response(flavor, &user_info(&app, &user)),
                ),
                Err(r) => r.render(as_soap),
            }
        }
        _ => {
            let credential = session_of(&env, &parts.headers);
            let who = match caller::identify(&app, credential, peer, || Login::BASIC).await {
                Ok(who) => who,
                Err(r) => return r.render(as_soap),
            };
            let forwarded = sanitise::cut_session_header(bytes, env.session_header.clone());
            let mut parts = parts;
            parts.headers.remove(header::CONTENT_ENCODING);
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(forwarded.len()));
            let req = Request::from_parts(parts, wire::full(forwarded));
            let answer = app
                .upstream
                .forward(req, forwarded_for(peer.ip), Some(who.identity()), host)
                .await
                .unwrap_or_else(|failure| Refusal::Upstream(failure).render(as_soap));
            // The envelope's memory is counted until it has gone upstream.
            drop(held);
            answer
        }
    }
}

/// The credential of a SOAP call: its `SessionHeader`, else the HTTP request's session
/// header. Only a session counts (a SOAP call is not authenticated by Basic).
fn session_of<'a>(env: &soap::Envelope, headers: &'a http::HeaderMap) -> Credential<'a> {
    match Credential::from_headers(headers) {
        session @ Credential::Session(_) => session,
        _ => Credential::None,
    }
    .or_session(env.session_id.clone())
}
