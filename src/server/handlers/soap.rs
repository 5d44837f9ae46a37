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

use super::{busy, header_str, log_login, retry_after_header, user_info};
use crate::auth::session::SessionError;
use crate::auth::{Attempt, AuthError, Dialect};
use crate::proxy::Principal;
use crate::server::body::{self, BodyError};
use crate::server::{App, Client, ReqBody};
use crate::wire::credentials::{self, HeaderCredential};
use crate::wire::soap::{self, Flavor, Op};
use crate::wire::{self, Body, TEXT_XML, respond};

fn soap_response(status: StatusCode, xml: String) -> Response<Body> {
    respond(status, TEXT_XML, xml)
}

fn soap_client_fault(status: StatusCode, message: &str) -> Response<Body> {
    soap_response(status, soap::client_fault(message))
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
    let mut reader = body::Reader::new(body, headers, &app.bodies, s.body_read_timeout)
        .map_err(soap_body_error)?;
    if reader
        .fill(s.max_login_body_bytes)
        .await
        .map_err(soap_body_error)?
        == body::Fill::Full
    {
        let too_large = || {
            soap_client_fault(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!(
                    "Before the session is checked, the envelope's Header must arrive within its first {} bytes",
                    s.max_login_body_bytes
                ),
            )
        };
        let head = match soap::parse_head(reader.decoded()) {
            Ok(Some(head)) => head,
            Ok(None) => return Err(too_large()),
            Err(e) => {
                return Err(soap_client_fault(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &e.to_string(),
                ));
            }
        };
        match soap_session(&head, headers) {
            // No session at all: a login, or a call without credentials; too large either way.
            None => return Err(too_large()),
            Some(sid) if app.sessions.lookup(&sid, peer.ip).is_none() => {
                return Err(soap_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    soap::invalid_session_fault(flavor),
                ));
            }
            Some(_) => {}
        }
        if reader
            .fill(s.max_soap_body_bytes)
            .await
            .map_err(soap_body_error)?
            == body::Fill::Full
        {
            return Err(soap_body_error(BodyError::TooLarge(s.max_soap_body_bytes)));
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
        return soap_client_fault(StatusCode::NOT_FOUND, "No service available at this path");
    };
    if req.method() != Method::POST {
        let mut r = soap_client_fault(
            StatusCode::METHOD_NOT_ALLOWED,
            "SOAP requests must use POST",
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return r;
    }
    if !sp.version_is_valid() {
        return soap_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            soap::fault(
                sp.flavor,
                "UnexpectedErrorFault",
                "UNSUPPORTED_API_VERSION",
                "Invalid Api version specified on URL",
            ),
        );
    }
    // SOAP 1.1 is text/xml with any charset; a missing Content-Type is tolerated.
    if let Some(ct) = req.headers().get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or_default().to_ascii_lowercase();
        if !ct.trim_start().starts_with("text/xml") {
            return soap_client_fault(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Content-Type must be text/xml for SOAP 1.1 requests",
            );
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
        Err(e) => return soap_client_fault(StatusCode::INTERNAL_SERVER_ERROR, &e),
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
            };
            let result = app.auth.login(&attempt).await;
            log_login("soap", username, &result, client);
            match result.map(|v| v.user) {
                Ok(user) => match app.sessions.create(&user) {
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
                    Err(e) => soap_server_busy(flavor, &e),
                },
                // A locked account answers like a wrong password in SOAP.
                Err(AuthError::Rejected(_) | AuthError::Locked { .. }) => {
                    soap_response(StatusCode::INTERNAL_SERVER_ERROR, soap::login_fault(flavor))
                }
                Err(AuthError::RateLimited { retry_after }) => retry_after_header(
                    soap_response(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        soap::fault(
                            flavor,
                            "LoginFault",
                            "REQUEST_LIMIT_EXCEEDED",
                            "Too many login attempts; retry later",
                        ),
                    ),
                    retry_after,
                ),
                Err(AuthError::Busy) => busy(soap_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    soap::fault(
                        flavor,
                        "UnexpectedErrorFault",
                        "SERVER_UNAVAILABLE",
                        "Server busy; retry shortly",
                    ),
                )),
                Err(AuthError::Store(e)) => {
                    tracing::error!(error = %e, "store error during login");
                    soap_unknown(flavor)
                }
            }
        }
        Op::Logout => match soap_session(&env, &parts.headers) {
            Some(sid) if app.sessions.revoke(&sid) => {
                soap_response(StatusCode::OK, soap::logout_response(flavor))
            }
            _ => soap_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                soap::invalid_session_fault(flavor),
            ),
        },
        Op::GetUserInfo => {
            let session = soap_session(&env, &parts.headers)
                .and_then(|sid| app.sessions.lookup(&sid, peer.ip));
            let Some(session) = session else {
                return soap_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    soap::invalid_session_fault(flavor),
                );
            };
            match app.store.user_by_id(&session.user_id) {
                Ok(Some(user)) => soap_response(
                    StatusCode::OK,
                    soap::get_user_info_response(flavor, &user_info(&app, &user)),
                ),
                Ok(None) => soap_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    soap::invalid_session_fault(flavor),
                ),
                Err(e) => {
                    tracing::error!(error = %e, "store error in getUserInfo");
                    soap_unknown(flavor)
                }
            }
        }
        _ => {
            let session = soap_session(&env, &parts.headers)
                .and_then(|sid| app.sessions.lookup(&sid, peer.ip));
            let Some(session) = session else {
                return soap_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    soap::invalid_session_fault(flavor),
                );
            };
            // The session id is a credential: cut the SessionHeader out of what goes upstream.
            let forwarded: Bytes = match env.session_header {
                Some(span) => {
                    let mut v = Vec::with_capacity(bytes.len());
                    v.extend_from_slice(&bytes[..span.start]);
                    v.extend_from_slice(&bytes[span.end..]);
                    v.into()
                }
                None => bytes,
            };
            let mut parts = parts;
            parts.headers.remove(header::CONTENT_ENCODING);
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(forwarded.len()));
            let req = Request::from_parts(parts, wire::full(forwarded));
            let who = Principal {
                username: &session.username,
                user_id: &session.user_id,
            };
            let answer = app.upstream.forward(req, peer.ip, who, host).await;
            // The envelope's memory is counted until it has gone upstream.
            drop(held);
            answer
        }
    }
}

/// The session id of a SOAP call: its SessionHeader, else a session header of the HTTP request.
fn soap_session(env: &soap::Envelope, headers: &http::HeaderMap) -> Option<String> {
    if let Some(sid) = &env.session_id {
        return Some(sid.clone());
    }
    match credentials::from_headers(headers) {
        Some(HeaderCredential::Session(s)) => Some(s.to_owned()),
        _ => None,
    }
}

fn soap_body_error(e: BodyError) -> Response<Body> {
    let status = match e {
        BodyError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        BodyError::Timeout => StatusCode::REQUEST_TIMEOUT,
        BodyError::UnsupportedEncoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        BodyError::BadGzip | BodyError::Io => StatusCode::BAD_REQUEST,
        BodyError::Busy => {
            return busy(soap_response(
                StatusCode::SERVICE_UNAVAILABLE,
                soap::fault(
                    Flavor::Partner,
                    "UnexpectedErrorFault",
                    "SERVER_UNAVAILABLE",
                    "Server busy; retry shortly",
                ),
            ));
        }
    };
    soap_client_fault(status, &e.to_string())
}

fn soap_unknown(flavor: Flavor) -> Response<Body> {
    soap_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        soap::fault(
            flavor,
            "UnexpectedErrorFault",
            "UNKNOWN_EXCEPTION",
            "An internal error occurred",
        ),
    )
}

fn soap_server_busy(flavor: Flavor, e: &SessionError) -> Response<Body> {
    tracing::error!(error = %e, "could not create a session");
    busy(soap_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        soap::fault(
            flavor,
            "UnexpectedErrorFault",
            "SERVER_UNAVAILABLE",
            "Server busy; retry shortly",
        ),
    ))
}
