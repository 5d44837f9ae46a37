//! The route table: what happens to every request, in order.
//!
//! 1. The target is checked (`target`): no `CONNECT`, one of tokengate's hosts, no dot
//!    segments; the path to route on has repeated slashes collapsed.
//! 2. With `[console] listen` set, the console and the admin API are served on the console's
//!    listener only, and that listener serves nothing else (404 in the path's dialect).
//! 3. A state-changing request under `/tokengate/` sent by a page of another site is refused.
//! 4. The request goes to its handler (`handlers`, `api`, `console`), or is forwarded.
//! 5. On the way out: a body the handler left unread is drained or the connection is marked
//!    for closing (`body`), and tokengate's Strict-Transport-Security is set.

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, Version};
use hyper::body::{Body as _, Incoming};

use super::App;
use super::body::{self, ReqBody};
use super::handlers::{forward, health, identity, oauth, soap};
use super::peer::{Client, Conn, Listener};
use super::refusal::{self, Refusal};
use super::target::{self, TargetError};
use crate::wire::Body;

/// A body left unread is drained up to this much, within `DRAIN_WITHIN`, to keep the
/// connection; beyond, the answer says `Connection: close`.
const DRAIN_MAX: usize = 64 * 1024;
const DRAIN_WITHIN: std::time::Duration = std::time::Duration::from_secs(1);

#[allow(
    clippy::manual_async_fn,
    reason = "an `async fn` keeps its arguments twice (as arguments and as locals), and this future is copied on every forwarded call"
)]
pub fn handle(req: Request<Incoming>, conn: Conn) -> impl Future<Output = Response<Body>> {
    async move {
        // Borrowed from the connection; the rare branches below take a reference of their own.
        let app = &conn.local.app;
        // A request with a body on HTTP/1 may be answered with some of it unread (the rare case:
        // logins, uploads, refusals of either): what is left comes back to be drained.
        let mut leftover = None;
        let mut req = if req.version() < Version::HTTP_2 && !req.body().is_end_stream() {
            req.map(|body| {
                let (body, slot) = ReqBody::track(body);
                leftover = Some(slot);
                body
            })
        } else {
            req.map(ReqBody::plain)
        };
        let hsts = app.cfg.server.hsts.clone();
        let peer = Client {
            ip: conn.local.client_ip(app, req.headers()),
            tls: conn.tls,
        };
        let checked = target::check(
            req.method(),
            req.version(),
            req.uri(),
            req.headers(),
            &app.hosts,
        )
        .map(|t| (t.host, t.path.into_owned_if_changed()));
        let host = match checked {
            Ok((host, canonical)) => {
                if let Some(path) = canonical {
                    set_path(&mut req, &path);
                }
                host
            }
            Err(e) => {
                // Refused before any handler: the body (a POST's, say) is left whole, and goes the
                // way of every unread body, drained or announced with `Connection: close`.
                let resp = refuse_target(e, req.uri().path());
                drop(req);
                let resp = match leftover {
                    Some(slot) => Box::pin(after_body(resp, slot)).await,
                    None => resp,
                };
                return with_hsts(resp, hsts);
            }
        };
        // Every branch but the forwarded call is boxed: hyper moves this future once per request,
        // and unboxed it would be as large as the largest branch (SOAP, the console), not the
        // forwarded call that most requests are.
        let path = req.uri().path();
        let apart = conn.listener == Listener::Console || app.cfg.console.listen.is_some();
        let resp = if apart && let Some(r) = elsewhere(app, conn.listener, path) {
            r
        } else if path.starts_with("/tokengate/") && cross_site(app, &req) {
            Box::pin(refuse_cross_site(app.clone(), req)).await
        } else if path.starts_with("/services/Soap/") {
            Box::pin(soap::soap_call(app.clone(), req, peer, host)).await
        } else {
            // tokengate's own endpoints answer with or without a trailing slash.
            match path
                .strip_suffix('/')
                .filter(|p| !p.is_empty())
                .unwrap_or(path)
            {
                "/services/oauth2/token" => {
                    Box::pin(oauth::oauth_token(app.clone(), req, peer)).await
                }
                "/services/oauth2/revoke" => Box::pin(oauth::oauth_revoke(app.clone(), req)).await,
                "/services/oauth2/userinfo" => {
                    Box::pin(identity::userinfo(app.clone(), req, peer)).await
                }
                "/tokengate/health" => health::health(),
                "/tokengate/ready" => Box::pin(health::ready(app)).await,
                p if p.starts_with("/id/") => {
                    Box::pin(identity::identity(app.clone(), req, peer)).await
                }
                p if super::target::is_console(p) => {
                    Box::pin(super::console::handle(app.clone(), req, peer)).await
                }
                p if p == "/tokengate" || p.starts_with("/tokengate/") => {
                    Box::pin(super::api::handle(app.clone(), req, peer)).await
                }
                _ => forward::forward(app, req, peer, host, &conn.local).await,
            }
        };
        let resp = match leftover {
            Some(slot) => Box::pin(after_body(resp, slot)).await,
            None => resp,
        };
        with_hsts(resp, hsts)
    }
}

/// With the console on its own listener: the 404 for a path the listener that received it
/// does not serve, in the path's dialect (the console's page for its own prefix).
fn elsewhere(app: &App, listener: Listener, path: &str) -> Option<Response<Body>> {
    let console = super::target::is_console(path);
    let admin = super::api::is_admin(path);
    let served = match listener {
        Listener::Console => console || admin,
        Listener::Public => !console && !admin,
    };
    if served {
        return None;
    }
    if console {
        return Some(super::console::not_found(app));
    }
    let dialect = refusal::Dialect::of_path(path);
    Some(Refusal::NotFound("no such tokengate endpoint").render(dialect))
}

/// Drains what the handler left of a request body, or marks the connection for closing.
async fn after_body(mut resp: Response<Body>, slot: body::Leftover) -> Response<Body> {
    let unread = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(unread) = unread
        && !body::drain(unread, DRAIN_MAX, DRAIN_WITHIN).await
    {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// tokengate's own Strict-Transport-Security, whatever the upstream said.
fn with_hsts(mut resp: Response<Body>, hsts: Option<HeaderValue>) -> Response<Body> {
    if let Some(v) = hsts {
        resp.headers_mut()
            .insert(header::STRICT_TRANSPORT_SECURITY, v);
    }
    resp
}

/// Only a path with repeated slashes is rewritten (and allocates).
trait IfChanged {
    fn into_owned_if_changed(self) -> Option<String>;
}

impl IfChanged for std::borrow::Cow<'_, str> {
    fn into_owned_if_changed(self) -> Option<String> {
        match self {
            std::borrow::Cow::Borrowed(_) => None,
            std::borrow::Cow::Owned(s) => Some(s),
        }
    }
}

/// Replaces the request's path (keeping its query), so every handler sees the canonical one.
fn set_path(req: &mut Request<ReqBody>, path: &str) {
    let pq = match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let mut parts = req.uri().clone().into_parts();
    if let Ok(pq) = pq.parse() {
        parts.path_and_query = Some(pq);
        if let Ok(uri) = http::Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
}

/// The refusal of a target, in the dialect its path implies.
fn refuse_target(e: TargetError, path: &str) -> Response<Body> {
    let refusal = match e {
        TargetError::Connect => Refusal::MethodNotAllowed {
            allow: "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS".into(),
        },
        TargetError::Misdirected => Refusal::Misdirected(e.to_string().into()),
        _ => Refusal::BadRequest(e.to_string().into()),
    };
    refusal.render(refusal::Dialect::of_path(path))
}

/// Whether a state-changing request under `/tokengate/` was sent by a page of another site: a
/// browser that holds the console cookie or Basic credentials must not act for that page.
/// Browsers say so in `Sec-Fetch-Site` and `Origin`; clients that send neither (curl, SDKs,
/// the CLI) are not browsers and are unaffected.
fn cross_site(app: &App, req: &Request<ReqBody>) -> bool {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return false;
    }
    let h = req.headers();
    if h.get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"))
    {
        return true;
    }
    let Some(origin) = h.get(header::ORIGIN) else {
        return false;
    };
    let Ok(origin) = origin.to_str() else {
        return true;
    };
    // The page's origin must be tokengate's own: the public origin, or the origin of the
    // host this request was sent to (an admin who reaches it by another of its names).
    let host = h
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()));
    let own = |o: &str| origin.eq_ignore_ascii_case(o);
    !(own(&app.origin) || host.is_some_and(|host| own(&format!("https://{host}"))))
}

/// The 403 for a cross-site request, in the console's or the API's format.
async fn refuse_cross_site(app: Arc<App>, req: Request<ReqBody>) -> Response<Body> {
    tracing::warn!(path = %req.uri().path(), "cross-site request refused");
    let message = "cross-site request refused: this request came from a page of another site";
    if super::target::is_console(req.uri().path()) {
        return super::console::forbidden(&app, message);
    }
    Refusal::Forbidden {
        code: "cross_site_request",
        message: message.into(),
    }
    .render(refusal::Dialect::Api)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future a function returns, without calling it.
    fn future_size<A, B, F: Future>(_: fn(A, B) -> F) -> usize {
        size_of::<F>()
    }

    #[test]
    fn a_request_future_stays_as_small_as_a_forwarded_call() {
        // The request's future is copied into its box once per request, and each function on
        // the forwarding path copies its callee's into its own; it was 7.3 KiB while the rare
        // branches (SOAP, the console, the upstream's connect path) were inline (copying it
        // cost about 6 % of the session path's CPU), then about 4 KiB while each `async fn`
        // on the path kept its arguments twice.
        let size = future_size(handle);
        assert!(
            size <= 3 * 1024,
            "routes::handle's future is {size} bytes: box the large, rare branches, and keep \
             the forwarding path's functions from holding their arguments twice"
        );
    }
}
