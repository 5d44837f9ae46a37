//! Forwarding to the upstream: the target URI, streaming bodies both ways, timeouts and why
//! an upstream failed ([`UpstreamFailure`]). What may leave for the upstream, and what may come back
//! from it, is decided in `sanitise`; the connections themselves are in `pool`.

pub mod pool;
pub mod sanitise;

pub use sanitise::{X_TOKENGATE_USER, X_TOKENGATE_USER_ID, forwarded_for};

use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderValue;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use http_body_util::BodyExt;
use rustls_pki_types::ServerName;

use crate::config::UpstreamConfig;
use crate::domain::Identity;
use crate::wire::Body;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot read upstream CA file {path}: {reason}")]
    Ca { path: String, reason: String },
    #[error("TLS client configuration failed: {0}")]
    Tls(#[from] rustls::Error),
    #[error("the upstream host '{0}' is not a valid TLS server name")]
    ServerName(String),
}

/// Why the upstream gave no usable answer. Logged here, where the cause is known; the
/// answer the client gets is decided with every other refusal, in `server::refusal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// Its response broke the rules `sanitise::inbound` enforces.
    Malformed,
    /// Every connection to it is in use (`pool`'s bound): waiting helps.
    Saturated,
    /// No connection could be made, or the exchange broke off.
    Unreachable,
    /// No answer head within `response_timeout`.
    Timeout,
}

pub struct Upstream {
    pool: Arc<pool::Pool>,
    authority: Authority,
    /// Path prefix of the upstream URL, without a trailing slash.
    prefix: String,
    response_timeout: Duration,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Upstream {
    /// `per_runtime`: calls come from several runtimes (`[server] workers = "per-core"`), and
    /// each keeps to the upstream connections it made (`pool`).
    pub fn new(
        cfg: &UpstreamConfig,
        metrics: Arc<crate::metrics::Metrics>,
        per_runtime: bool,
    ) -> Result<Self, ProxyError> {
        let roots =
            crate::tls::client_roots(cfg.ca.as_deref()).map_err(|reason| ProxyError::Ca {
                // Only a configured file can fail.
                path: cfg
                    .ca
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                reason,
            })?;
        let url = &cfg.url;
        let scheme = url.scheme().cloned().unwrap_or(Scheme::HTTP);
        let authority = url.authority().cloned().expect("validated by config");
        // The URI keeps IPv6 literals in brackets; connecting and TLS names want them bare.
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let https = scheme == Scheme::HTTPS;
        let tls = if https {
            let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
            tls.alpn_protocols = vec![b"http/1.1".to_vec()];
            let name = ServerName::try_from(host.clone())
                .map_err(|_| ProxyError::ServerName(host.clone()))?;
            Some((tokio_rustls::TlsConnector::from(Arc::new(tls)), name))
        } else {
            None
        };
        let endpoint = pool::Endpoint {
            port: authority.port_u16().unwrap_or(if https { 443 } else { 80 }),
            host,
            tls,
            connect_timeout: cfg.connect_timeout,
        };
        Ok(Self {
            pool: pool::Pool::new(
                endpoint,
                pool::Limits {
                    max_connections: cfg.max_connections,
                    max_idle: cfg.pool_max_idle_per_host,
                    idle_timeout: cfg.pool_idle_timeout,
                    body_idle_timeout: cfg.body_idle_timeout,
                    per_runtime,
                },
            ),
            authority,
            prefix: url.path().trim_end_matches('/').to_owned(),
            response_timeout: cfg.response_timeout,
            metrics,
        })
    }

    /// Closes the upstream connections idle for longer than `pool_idle_timeout`.
    pub fn sweep_idle(&self) {
        self.pool.sweep();
    }

    /// How often the server calls [`Upstream::sweep_idle`].
    pub fn sweep_every(&self) -> Duration {
        // Half the timeout keeps a connection at most 1.5 timeouts; a floor keeps a tiny
        // timeout from spinning, a ceiling keeps a huge one from overflowing the timer.
        (self.pool.idle_timeout() / 2).clamp(Duration::from_millis(100), Duration::from_secs(60))
    }

    fn target(&self, original: &Uri) -> Uri {
        let pq = match original.path_and_query() {
            // The path passes through unchanged: the same bytes (a reference count, no copy).
            Some(pq) if self.prefix.is_empty() => Ok(pq.clone()),
            Some(pq) => PathAndQuery::from_maybe_shared(format!("{}{pq}", self.prefix)),
            None => PathAndQuery::from_maybe_shared(format!("{}/", self.prefix)),
        };
        // Origin-form (RFC 9112 §3.2.1): the connection already goes to the upstream.
        let mut parts = http::uri::Parts::default();
        parts.path_and_query = Some(pq.unwrap_or_else(|_| PathAndQuery::from_static("/")));
        Uri::from_parts(parts).expect("a path alone is a valid URI")
    }

    /// Sends `req` upstream on behalf of `who` and streams the answer back, or says why the
    /// upstream gave none (`server::refusal` answers that), never a hang.
    /// `host` is the request's validated host (`server::target`), kept so the upstream sees
    /// the name the client used; `None` for an HTTP/1.0 request without one. `who` is `None`
    /// on a public path: the request goes without identity.
    #[allow(
        clippy::manual_async_fn,
        reason = "an `async fn` keeps its arguments twice (as arguments and as locals), and this future is copied on every forwarded call"
    )]
    pub fn forward(
        &self,
        mut req: Request<Body>,
        forwarded_for: HeaderValue,
        who: Option<Identity>,
        host: Option<HeaderValue>,
    ) -> impl Future<Output = Result<Response<Body>, UpstreamFailure>> {
        async move {
            let from_http2 = req.version() == Version::HTTP_2;
            *req.uri_mut() = self.target(req.uri());
            // HTTP/2 clients are served to an HTTP/1.1 upstream.
            *req.version_mut() = Version::HTTP_11;
            sanitise::outbound(
                req.headers_mut(),
                sanitise::Outbound {
                    from_http2,
                    who,
                    forwarded_for,
                    host,
                    upstream: &self.authority,
                },
            );

            let started = tokio::time::Instant::now();
            let answer = self.pool.send(req, started + self.response_timeout).await;
            let status = match &answer {
                Ok(resp) => Some(resp.status().as_u16()),
                _ => None,
            };
            let timed_out = matches!(answer, Err(pool::PoolError::Timeout));
            self.metrics.upstream(status, timed_out, started.elapsed());
            match answer {
                Ok(resp) => {
                    let (mut parts, body) = resp.into_parts();
                    if let Err(refusal) = sanitise::inbound(&mut parts) {
                        tracing::warn!(status = %parts.status, refusal, "malformed upstream response refused");
                        return Err(UpstreamFailure::Malformed);
                    }
                    Ok(Response::from_parts(parts, body.boxed()))
                }
                Err(pool::PoolError::Saturated) => {
                    tracing::warn!("every upstream connection is in use; request refused");
                    Err(UpstreamFailure::Saturated)
                }
                Err(pool::PoolError::Timeout) => {
                    tracing::warn!(timeout = ?self.response_timeout, "upstream did not answer in time");
                    Err(UpstreamFailure::Timeout)
                }
                Err(e) => {
                    tracing::warn!(error = %e, source = ?std::error::Error::source(&e), "upstream request failed");
                    Err(UpstreamFailure::Unreachable)
                }
            }
        }
    }
}
