//! Routing: which requests tokengate answers itself (logins, logout, identity, health) and
//! which it authenticates and forwards. Each handler parses with `wire`, decides with `auth`,
//! and answers in the caller's own dialect.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::App;
use super::body::{self, BodyError};
use crate::auth::session::{Session, SessionError};
use crate::auth::{Attempt, AuthError, Dialect, Verified};
use crate::proxy::Principal;
use crate::store::User;
use crate::wire::credentials::{self, HeaderCredential};
use crate::wire::soap::{self, Flavor, Op};
use crate::wire::{self, Body, JSON, TEXT_XML, oauth, respond, rest};

/// Seconds a client should wait before retrying when argon2 admission is saturated.
const BUSY_RETRY_AFTER: &str = "1";

/// What the server knows of a connection.
#[derive(Debug, Clone, Copy)]
pub struct Conn {
    pub peer: SocketAddr,
    pub tls: Option<&'static str>,
}

/// The request's client address and TLS version, as the handlers use them.
#[derive(Debug, Clone, Copy)]
pub struct Client {
    pub ip: IpAddr,
    pub tls: Option<&'static str>,
}

/// The client address recorded for a request whose forwarded chain could not be read: in no
/// trusted network and no login range, one shared limiter key, `0.0.0.0` in the history.
pub const UNIDENTIFIED_CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);

/// The client's address: the socket's peer, or, when the peer is a trusted proxy, the
/// nearest address in `X-Forwarded-For` that is not a trusted proxy. Each proxy appends the
/// address it received the request from, so only the entries on the right were written by
/// proxies we trust: the header is walked right to left, trusted proxies are skipped, and the
/// first other entry is the client. An entry that cannot be read (empty, `unknown`, garbage)
/// ends the walk as an unidentified client ([`UNIDENTIFIED_CLIENT`]): whatever stands left
/// of it was written by someone we do not trust. When every entry is a trusted proxy, the
/// leftmost is the client.
pub fn client_ip(
    trusted_proxies: &[ipnet::IpNet],
    peer: IpAddr,
    headers: &http::HeaderMap,
) -> IpAddr {
    let trusted = |ip: &IpAddr| trusted_proxies.iter().any(|n| n.contains(ip));
    if !trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    // Several header lines are one list, in order (RFC 9110 §5.3).
    for line in headers.get_all("x-forwarded-for").iter().rev() {
        let Ok(text) = line.to_str() else {
            return UNIDENTIFIED_CLIENT;
        };
        for hop in text.rsplit(',') {
            match parse_hop(hop) {
                Some(ip) if trusted(&ip) => client = ip,
                Some(ip) => return ip,
                None => return UNIDENTIFIED_CLIENT,
            }
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, or an address with a port as some load balancers
/// write it (`192.0.2.1:4711`, `[2001:db8::1]:4711`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim_matches([' ', '\t']);
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .filter(|ip| !ip.is_unspecified())
}

pub async fn handle(app: Arc<App>, req: Request<Incoming>, conn: Conn) -> Response<Body> {
    let peer = Client {
        ip: client_ip(
            &app.cfg.server.trusted_proxies,
            conn.peer.ip(),
            req.headers(),
        ),
        tls: conn.tls,
    };
    // Every branch but the forwarded call is boxed: hyper moves this future once per request,
    // and unboxed it would be as large as the largest branch (SOAP, the console), not the
    // forwarded call that most requests are.
    let path = req.uri().path();
    if path.starts_with("/tokengate/") && cross_site(&app, &req) {
        return Box::pin(refuse_cross_site(app, req)).await;
    }
    if path.starts_with("/services/Soap/") {
        return Box::pin(soap_call(app, req, peer)).await;
    }
    match path {
        "/services/oauth2/token" => Box::pin(oauth_token(app, req, peer)).await,
        "/services/oauth2/revoke" => Box::pin(oauth_revoke(app, req)).await,
        "/services/oauth2/userinfo" => Box::pin(userinfo(app, req, peer)).await,
        "/tokengate/health" => wire::respond(StatusCode::OK, JSON, r#"{"status":"ok"}"#),
        "/tokengate/ready" => Box::pin(ready(&app)).await,
        p if p.starts_with("/id/") => Box::pin(identity(app, req, peer)).await,
        p if p == "/tokengate/console" || p.starts_with("/tokengate/console/") => {
            Box::pin(crate::console::handle(app, req, peer)).await
        }
        p if p.starts_with("/tokengate/") => Box::pin(super::api::handle(app, req, peer)).await,
        _ => forward(app, req, peer).await,
    }
}

/// Whether a state-changing request under `/tokengate/` was sent by a page of another site: a
/// browser that holds the console cookie or Basic credentials must not act for that page.
/// Browsers say so in `Sec-Fetch-Site` and `Origin`; clients that send neither (curl, SDKs,
/// the CLI) are not browsers and are unaffected.
fn cross_site(app: &App, req: &Request<Incoming>) -> bool {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return false;
    }
    let h = req.headers();
    if header_str(h, "sec-fetch-site").is_some_and(|v| v.eq_ignore_ascii_case("cross-site")) {
        return true;
    }
    let Some(origin) = h.get(header::ORIGIN) else {
        return false;
    };
    let Ok(origin) = origin.to_str() else {
        return true;
    };
    // The page's origin must be tokengate's own: the public origin, or the origin of the
    // host this request was sent to (an admin who reaches it by another name).
    let host = h
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()));
    let own = |o: &str| origin.eq_ignore_ascii_case(o);
    !(own(&app.origin) || host.is_some_and(|host| own(&format!("https://{host}"))))
}

/// The 403 for a cross-site request, in the console's or the API's format.
async fn refuse_cross_site(app: Arc<App>, req: Request<Incoming>) -> Response<Body> {
    tracing::warn!(path = %req.uri().path(), "cross-site request refused");
    let message = "cross-site request refused: this request came from a page of another site";
    if crate::console::owns(req.uri().path()) {
        return crate::console::forbidden(&app, message);
    }
    wire::json_error(StatusCode::FORBIDDEN, "cross_site_request", message)
}

/// Readiness: the store answers, the upstream accepts connections, and the SMTP server does
/// when mail goes over SMTP. 200 when all are fine, 503 otherwise; JSON either way.
async fn ready(app: &App) -> Response<Body> {
    const PROBE: std::time::Duration = std::time::Duration::from_secs(2);
    // The answer names the failing check and nothing more (anyone may ask); the reason goes
    // to the log.
    async fn connect(what: &str, host: &str, port: u16) -> &'static str {
        match tokio::time::timeout(PROBE, tokio::net::TcpStream::connect((host, port))).await {
            Ok(Ok(_)) => "ok",
            Ok(Err(e)) => {
                tracing::warn!(check = what, error = %e, "readiness check failed");
                "error"
            }
            Err(_) => {
                tracing::warn!(check = what, "readiness check timed out");
                "error"
            }
        }
    }
    let store = match app.store.setting("readiness") {
        Ok(_) => "ok",
        Err(e) => {
            tracing::warn!(check = "store", error = %e, "readiness check failed");
            "error"
        }
    };
    let url = &app.cfg.upstream.url;
    let port = url
        .port_u16()
        .unwrap_or(if url.scheme_str() == Some("https") {
            443
        } else {
            80
        });
    let host = url
        .host()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let upstream = connect("upstream", host, port).await;
    let smtp = match &app.cfg.mail.transport {
        crate::config::MailTransport::Smtp { host, port, .. } => connect("smtp", host, *port).await,
        crate::config::MailTransport::File { .. } => "file",
        crate::config::MailTransport::None => "not configured",
    };
    let ok = store == "ok" && upstream == "ok" && smtp != "error";
    let body = serde_json::json!({
        "status": if ok { "ready" } else { "not ready" },
        "checks": { "store": store, "upstream": upstream, "smtp": smtp },
    });
    respond(
        if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        JSON,
        body.to_string(),
    )
}

fn header_str<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn retry_after_header(mut r: Response<Body>, wait: std::time::Duration) -> Response<Body> {
    r.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(crate::limit::retry_after_secs(wait)),
    );
    r
}

fn busy<T: Into<Response<Body>>>(r: T) -> Response<Body> {
    let mut r = r.into();
    r.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from_static(BUSY_RETRY_AFTER),
    );
    r
}

fn user_info<'a>(app: &'a App, user: &'a User) -> soap::UserInfo<'a> {
    soap::UserInfo {
        org: &app.cfg.server.org,
        org_name: &app.cfg.server.org_name,
        user_id: &user.id,
        username: &user.username,
        full_name: &user.full_name,
        email: &user.email,
        session_seconds_valid: app.sessions.idle_timeout_secs(),
    }
}

fn identity_of<'a>(app: &'a App, user: &'a User) -> oauth::Identity<'a> {
    oauth::Identity {
        origin: &app.origin,
        org18: &app.cfg.server.org.id18,
        user_id: &user.id,
        username: &user.username,
        full_name: &user.full_name,
        email: &user.email,
        last_modified: user.password_changed_at.max(user.token_reset_at),
    }
}

fn log_login(
    dialect: &str,
    username: &str,
    result: &Result<Verified, AuthError>,
    client: Option<&str>,
) {
    match result {
        Ok(v) => tracing::info!(
            dialect,
            user = %v.user.username,
            client,
            superseded_token = v.superseded,
            "login succeeded"
        ),
        Err(AuthError::Rejected(r)) => tracing::info!(
            dialect,
            user = %username.chars().take(80).collect::<String>(),
            reason = r.as_str(),
            client,
            "login failed"
        ),
        Err(e) => tracing::warn!(dialect, error = %e, "login could not be checked"),
    }
}

// ---------------------------------------------------------------------------------------
// SOAP

fn soap_response(status: StatusCode, xml: String) -> Response<Body> {
    respond(status, TEXT_XML, xml)
}

fn soap_client_fault(status: StatusCode, message: &str) -> Response<Body> {
    soap_response(status, soap::client_fault(message))
}

async fn soap_call(app: Arc<App>, req: Request<Incoming>, peer: Client) -> Response<Body> {
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
    let (parts, incoming) = req.into_parts();
    let limit = app.cfg.server.max_soap_body_bytes;
    let bytes = match body::read(
        incoming,
        &parts.headers,
        limit,
        app.cfg.server.body_read_timeout,
    )
    .await
    {
        Ok(b) => b,
        Err(e) => return soap_body_error(e),
    };
    if std::str::from_utf8(&bytes).is_err() {
        return soap_client_fault(
            StatusCode::INTERNAL_SERVER_ERROR,
            "The request is not valid UTF-8",
        );
    }
    let env = match soap::parse(&bytes) {
        Ok(env) => env,
        Err(e) => return soap_client_fault(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
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
            app.upstream.forward(req, peer.ip, who).await
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

// ---------------------------------------------------------------------------------------
// OAuth 2.0

fn is_form(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        })
}

async fn read_form(
    app: &App,
    req: Request<Incoming>,
) -> Result<(http::request::Parts, oauth::Form), Response<Body>> {
    if !is_form(req.headers()) {
        return Err(oauth::error(
            "invalid_request",
            "Content-Type must be application/x-www-form-urlencoded",
        ));
    }
    let (parts, incoming) = req.into_parts();
    let limit = app.cfg.server.max_login_body_bytes;
    let bytes = match body::read(
        incoming,
        &parts.headers,
        limit,
        app.cfg.server.body_read_timeout,
    )
    .await
    {
        Ok(b) => b,
        Err(BodyError::TooLarge(_)) => {
            let mut r = oauth::error("invalid_request", "request body too large");
            *r.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
            return Err(r);
        }
        Err(e) => return Err(oauth::error("invalid_request", &e.to_string())),
    };
    match oauth::Form::parse(&bytes) {
        Ok(f) => Ok((parts, f)),
        Err(e) => Err(oauth::error("invalid_request", &e.to_string())),
    }
}

async fn oauth_token(app: Arc<App>, req: Request<Incoming>, peer: Client) -> Response<Body> {
    if req.method() != Method::POST {
        let mut r = oauth::error("invalid_request", "must use HTTP POST");
        *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return r;
    }
    let (_, form) = match read_form(&app, req).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    match form.get("grant_type") {
        Some("password") => {}
        Some(_) => return oauth::error("unsupported_grant_type", "grant type not supported"),
        None => return oauth::error("invalid_request", "grant_type is required"),
    }
    let Some(client_id) = form.get("client_id") else {
        return oauth::error("invalid_client_id", "client identifier invalid");
    };
    let live = app.live();
    let Some(client) = live.oauth_clients.iter().find(|c| c.client_id == client_id) else {
        return oauth::error("invalid_client_id", "client identifier invalid");
    };
    let secret_ok = form.get("client_secret").is_some_and(|s| {
        crate::secret::constant_time_eq(s.as_bytes(), client.client_secret.as_bytes())
    });
    if !secret_ok {
        return oauth::error("invalid_client", "invalid client credentials");
    }
    let (Some(username), Some(password)) = (form.get("username"), form.get("password")) else {
        return oauth::error("invalid_request", "username and password are required");
    };
    let attempt = Attempt {
        username,
        secret: password,
        ip: peer.ip,
        dialect: Dialect::OAuth,
        api_version: None,
        client: Some(client_id),
        tls: peer.tls,
        password_only: false,
    };
    let result = app.auth.login(&attempt).await;
    log_login("oauth", username, &result, Some(client_id));
    match result.map(|v| v.user) {
        Ok(user) => match app.sessions.create(&user) {
            Ok(sid) => {
                let id_url = format!("{}/id/{}/{}", app.origin, app.cfg.server.org.id18, user.id);
                let issued_at = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_millis();
                oauth::token_response(&sid, &app.origin, &id_url, issued_at, &client.client_secret)
            }
            Err(e) => {
                tracing::error!(error = %e, "could not create a session");
                busy(oauth::error(
                    "temporarily_unavailable",
                    "server busy; retry shortly",
                ))
            }
        },
        Err(AuthError::Rejected(_) | AuthError::Locked { .. }) => oauth::invalid_grant(),
        Err(AuthError::RateLimited { retry_after }) => retry_after_header(
            oauth::error(
                "rate_limit_exceeded",
                "too many login attempts; retry later",
            ),
            retry_after,
        ),
        Err(AuthError::Busy) => busy(oauth::error(
            "temporarily_unavailable",
            "server busy; retry shortly",
        )),
        Err(AuthError::Store(e)) => {
            tracing::error!(error = %e, "store error during login");
            let mut r = oauth::error("server_error", "internal error");
            *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            r
        }
    }
}

pub fn query_param(uri: &http::Uri, name: &str) -> Option<String> {
    let q = uri.query()?;
    serde_urlencoded::from_str::<Vec<(String, String)>>(q)
        .ok()?
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// `POST /services/oauth2/revoke` with `token` in the body or the query (reference §2.4).
async fn oauth_revoke(app: Arc<App>, req: Request<Incoming>) -> Response<Body> {
    let from_query = query_param(req.uri(), "token");
    let token = match from_query {
        Some(t) => Some(t),
        None if req.method() == Method::POST && is_form(req.headers()) => {
            match read_form(&app, req).await {
                Ok((_, form)) => form.get("token").map(str::to_owned),
                Err(r) => return r,
            }
        }
        None => None,
    };
    let Some(token) = token else {
        return oauth::error("invalid_request", "token is required");
    };
    if app.sessions.revoke(&token) {
        respond(StatusCode::OK, JSON, "")
    } else {
        oauth::error("invalid_token", "invalid token")
    }
}

/// The session of an identity request: `Authorization` or the `oauth_token` parameter.
fn identity_session(app: &App, req: &Request<Incoming>, peer: Client) -> Option<Arc<Session>> {
    let sid = match credentials::from_headers(req.headers()) {
        Some(HeaderCredential::Session(s)) => s.to_owned(),
        _ => query_param(req.uri(), "oauth_token")?,
    };
    app.sessions.lookup(&sid, peer.ip)
}

async fn userinfo(app: Arc<App>, req: Request<Incoming>, peer: Client) -> Response<Body> {
    let Some(session) = identity_session(&app, &req, peer) else {
        return rest::invalid_session();
    };
    match app.store.user_by_id(&session.user_id) {
        Ok(Some(user)) => respond(
            StatusCode::OK,
            JSON,
            identity_of(&app, &user).userinfo_document().to_string(),
        ),
        Ok(None) => rest::invalid_session(),
        Err(e) => {
            tracing::error!(error = %e, "store error in userinfo");
            rest::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "UNKNOWN_EXCEPTION",
                "internal error",
            )
        }
    }
}

/// `GET /id/{org}/{user}`: the identity document of the session's own user; another user's
/// is refused (403), whether or not that user exists.
async fn identity(app: Arc<App>, req: Request<Incoming>, peer: Client) -> Response<Body> {
    let Some(session) = identity_session(&app, &req, peer) else {
        return rest::invalid_session();
    };
    let mut segs = req
        .uri()
        .path()
        .trim_start_matches("/id/")
        .trim_end_matches('/')
        .split('/');
    let (org, uid) = (
        segs.next().unwrap_or_default(),
        segs.next().unwrap_or_default(),
    );
    let org_ok = org == app.cfg.server.org.id18 || org == app.cfg.server.org.id15;
    let found = if org_ok && segs.next().is_none() && (uid.len() == 15 || uid.len() == 18) {
        // Accept the 15-character form too: the 18-character id is that plus a suffix.
        let full = if uid.len() == 15 {
            crate::ids::to_18(uid)
        } else {
            uid.to_owned()
        };
        if full != session.user_id {
            return rest::error(
                StatusCode::FORBIDDEN,
                "INSUFFICIENT_ACCESS",
                "a session may read only its own user's identity",
            );
        }
        app.store.user_by_id(&full)
    } else {
        Ok(None)
    };
    match found {
        Ok(Some(user)) => respond(
            StatusCode::OK,
            JSON,
            identity_of(&app, &user).id_document().to_string(),
        ),
        Ok(None) => rest::error(StatusCode::NOT_FOUND, "NOT_FOUND", "Bad_Id"),
        Err(e) => {
            tracing::error!(error = %e, "store error in identity");
            rest::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "UNKNOWN_EXCEPTION",
                "internal error",
            )
        }
    }
}

// ---------------------------------------------------------------------------------------
// Forwarded calls

/// Any other path: authenticate by session or Basic, then forward. Unauthenticated calls get
/// the API's own invalid-session answer (Bulk 1.0 under `/services/async/`, REST elsewhere).
async fn forward(app: Arc<App>, req: Request<Incoming>, peer: Client) -> Response<Body> {
    let bulk_v1 = req.uri().path().starts_with("/services/async/");
    let invalid = || {
        if bulk_v1 {
            rest::bulk_invalid_session()
        } else {
            rest::invalid_session()
        }
    };
    // One upstream call below for both kinds of credential: two would each keep a copy of the
    // forwarding future's state in this one, which hyper moves once per request.
    let (session, user);
    let who = match credentials::from_headers(req.headers()) {
        Some(HeaderCredential::Session(sid)) => match app.sessions.lookup(sid, peer.ip) {
            Some(s) => {
                session = s;
                Principal {
                    username: &session.username,
                    user_id: &session.user_id,
                }
            }
            None => return invalid(),
        },
        Some(HeaderCredential::Basic(username, secret)) => {
            match basic_login(&app, &req, peer, &username, &secret).await {
                Ok(u) => {
                    user = u;
                    Principal {
                        username: &user.username,
                        user_id: &user.id,
                    }
                }
                Err(refused) => return refused,
            }
        }
        Some(HeaderCredential::Malformed) if !bulk_v1 => {
            return rest::error(
                StatusCode::UNAUTHORIZED,
                "INVALID_AUTH_HEADER",
                "INVALID_HEADER_TYPE",
            );
        }
        Some(HeaderCredential::Malformed) | None => return invalid(),
    };
    app.upstream
        .forward(req.map(|b| b.boxed()), peer.ip, who)
        .await
}

/// Basic credentials on a forwarded call: the user they verify as, or the REST answer that
/// refuses them.
async fn basic_login(
    app: &App,
    req: &Request<Incoming>,
    peer: Client,
    username: &str,
    secret: &str,
) -> Result<Arc<crate::store::User>, Response<Body>> {
    let path = req.uri().path();
    let api_version = path
        .strip_prefix("/services/data/v")
        .or_else(|| path.strip_prefix("/services/async/"))
        .and_then(|p| p.split('/').next());
    let client = header_str(req.headers(), "user-agent");
    let attempt = Attempt {
        username,
        secret,
        ip: peer.ip,
        dialect: Dialect::Basic,
        api_version,
        client,
        tls: peer.tls,
        password_only: false,
    };
    let result = app.auth.login(&attempt).await;
    if result.is_err() {
        log_login("basic", username, &result, client);
    }
    match result {
        Ok(v) => Ok(v.user),
        Err(AuthError::Rejected(_)) => Err(rest::basic_login_failed()),
        // Only a caller whose secret carried the right token learns of the lock, with its end.
        Err(AuthError::Locked {
            until,
            proven: true,
        }) => Err(rest::locked(until)),
        Err(AuthError::Locked { proven: false, .. }) => Err(rest::basic_login_failed()),
        Err(AuthError::RateLimited { retry_after }) => Err(retry_after_header(
            rest::error(
                StatusCode::TOO_MANY_REQUESTS,
                "REQUEST_LIMIT_EXCEEDED",
                "Too many login attempts; retry later",
            ),
            retry_after,
        )),
        Err(AuthError::Busy) => Err(busy(rest::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "SERVER_UNAVAILABLE",
            "Server busy; retry shortly",
        ))),
        Err(AuthError::Store(e)) => {
            tracing::error!(error = %e, "store error during Basic login");
            Err(rest::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "UNKNOWN_EXCEPTION",
                "internal error",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_is_the_nearest_untrusted_hop_and_a_malformed_hop_is_unidentified() {
        let trusted: Vec<ipnet::IpNet> = vec![
            "127.0.0.1/32".parse().unwrap(),
            "10.0.0.0/8".parse().unwrap(),
        ];
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        let outsider: IpAddr = "192.0.2.99".parse().unwrap();
        let unknown = UNIDENTIFIED_CLIENT.to_string();
        // (X-Forwarded-For lines, peer, the client address)
        let table: &[(&[&str], IpAddr, &str)] = &[
            // An untrusted peer: its headers mean nothing.
            (&["203.0.113.7"], outsider, "192.0.2.99"),
            (&[], outsider, "192.0.2.99"),
            // A trusted peer with no header: the peer is the client.
            (&[], peer, "127.0.0.1"),
            (&["203.0.113.7"], peer, "203.0.113.7"),
            (&["203.0.113.7, 198.51.100.50"], peer, "198.51.100.50"),
            (&["198.51.100.50, 10.1.2.3"], peer, "198.51.100.50"),
            (&["198.51.100.50,10.1.2.3,10.9.9.9"], peer, "198.51.100.50"),
            // Every hop trusted: the leftmost is the client.
            (&["10.1.2.3, 10.4.5.6"], peer, "10.1.2.3"),
            // Several lines are one list, in order.
            (&["203.0.113.7", "198.51.100.50"], peer, "198.51.100.50"),
            (&["198.51.100.50", "10.1.2.3"], peer, "198.51.100.50"),
            // Forged entries left of a malformed one are never reached.
            (&["203.0.113.7, x, 198.51.100.50"], peer, "198.51.100.50"),
            (&["203.0.113.7,,198.51.100.50"], peer, "198.51.100.50"),
            (&["203.0.113.7, x"], peer, &unknown),
            (&["203.0.113.7,"], peer, &unknown),
            (&["203.0.113.7, unknown, 10.1.2.3"], peer, &unknown),
            (&["203.0.113.7, 999.0.0.1"], peer, &unknown),
            (&[""], peer, &unknown),
            (&["0.0.0.0"], peer, &unknown),
            (&["203.0.113.7", "garbage"], peer, &unknown),
            // Ports as some load balancers write them.
            (&["198.51.100.50:4711"], peer, "198.51.100.50"),
            (&["[2001:db8::1]:4711, 10.1.2.3"], peer, "2001:db8::1"),
            (&["2001:db8::2"], peer, "2001:db8::2"),
            (&["  198.51.100.50\t"], peer, "198.51.100.50"),
        ];
        for (lines, peer, want) in table {
            let mut h = http::HeaderMap::new();
            for l in *lines {
                h.append("x-forwarded-for", HeaderValue::from_str(l).unwrap());
            }
            assert_eq!(
                client_ip(&trusted, *peer, &h).to_string(),
                *want,
                "{lines:?} from {peer}"
            );
        }
        // A value that is not text ends the walk too.
        let mut h = http::HeaderMap::new();
        h.append(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"203.0.113.7, \xff").unwrap(),
        );
        assert_eq!(client_ip(&trusted, peer, &h), UNIDENTIFIED_CLIENT);
    }

    /// The size of the future an async fn returns, without calling it.
    fn future_size<A, B, C, F: Future>(_: fn(A, B, C) -> F) -> usize {
        size_of::<F>()
    }

    #[test]
    fn a_request_future_stays_as_small_as_a_forwarded_call() {
        // hyper moves the service's future into the connection's slot once per request; it was
        // 7.3 KiB while the rare branches (SOAP, the console, the upstream's connect path)
        // were inline, and copying it cost about 6 % of the session path's CPU.
        let size = future_size(handle);
        assert!(
            size <= 4096,
            "routes::handle's future is {size} bytes: box the large, rare branches"
        );
    }
}
