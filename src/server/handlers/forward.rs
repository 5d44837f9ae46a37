//! Every path tokengate does not answer itself: authenticated by a session or HTTP Basic
//! (`caller`), then forwarded (`proxy`). A refusal is the API's own (Bulk 1.0 under
//! `/services/async/`, REST elsewhere). A public path (`[upstream] public_paths`) is
//! forwarded without authentication, identity or credentials (`proxy::sanitise`).

use std::sync::Arc;

use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Body as _;

use super::header_str;
use crate::domain::Dialect;
use crate::server::caller::{self, Credential, Login};
use crate::server::peer::PerConnection;
use crate::server::refusal;
use crate::server::{App, Client, ReqBody};
use crate::wire::Body;

/// Any other path: authenticate by session or Basic, then forward.
#[allow(
    clippy::manual_async_fn,
    reason = "an `async fn` keeps its arguments twice (as arguments and as locals), and this future is copied on every forwarded call"
)]
pub fn forward(
    app: &Arc<App>,
    req: Request<ReqBody>,
    peer: Client,
    host: Option<http::HeaderValue>,
    conn: &PerConnection,
) -> impl Future<Output = Response<Body>> {
    async move {
        let path = req.uri().path();
        // The check costs one emptiness test when nothing is public (the default).
        let public = &app.cfg.upstream.public_paths;
        if !public.is_empty() && public.matches(path) {
            return Box::pin(forward_public(
                app.clone(),
                req,
                conn.forwarded_for(peer.ip),
                host,
            ))
            .await;
        }
        let bulk_v1 = path.starts_with("/services/async/");
        let dialect = if bulk_v1 {
            refusal::Dialect::Bulk
        } else {
            refusal::Dialect::Rest
        };
        // What the login history records of a Basic login; not looked at for a session.
        let login = || Login {
            dialect: Dialect::Basic,
            api_version: path
                .strip_prefix("/services/data/v")
                .or_else(|| path.strip_prefix("/services/async/"))
                .and_then(|p| p.split('/').next()),
            client: header_str(req.headers(), "user-agent"),
            password_only: false,
        };
        let who = match caller::identify_on(
            app,
            Credential::from_headers(req.headers()),
            peer,
            login,
            Some(&conn.last_credential),
        )
        .await
        {
            Ok(c) => c,
            Err(r) => return r.render(dialect),
        };
        app.upstream
            .forward(
                req.map(upstream_body),
                conn.forwarded_for(peer.ip),
                Some(who.identity()),
                host,
            )
            .await
            .unwrap_or_else(|failure| refusal::Refusal::Upstream(failure).render(dialect))
    }
}

/// A public path: whatever credential the request carries is not looked at, and
/// `proxy::sanitise` strips it (with tokengate's identity headers and the session cookies).
async fn forward_public(
    app: Arc<App>,
    req: Request<ReqBody>,
    forwarded_for: http::HeaderValue,
    host: Option<http::HeaderValue>,
) -> Response<Body> {
    app.upstream
        .forward(req.map(upstream_body), forwarded_for, None, host)
        .await
        // An upstream failure is answered alike in every dialect (`refusal`).
        .unwrap_or_else(|failure| {
            refusal::Refusal::Upstream(failure).render(refusal::Dialect::Rest)
        })
}

/// The request's body as it goes upstream: streamed, or, when there is none (most calls),
/// an empty body that costs no allocation.
fn upstream_body(body: ReqBody) -> Body {
    if body.is_end_stream() {
        crate::wire::empty()
    } else {
        body.map_err(Into::into).boxed()
    }
}
