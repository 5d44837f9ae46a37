//! Forwarding to the upstream: header hygiene, identity headers, streaming bodies, timeouts;
//! the connections themselves are in `pool`. Knows nothing of credentials beyond removing them.
//!
//! RFC 9110 §7.6.1: "a proxy or gateway MUST parse a received Connection header field before a
//! message is forwarded and, for each connection-option in this field, remove any header or
//! trailer field(s) from the message with the same name as the connection-option, and then
//! remove the Connection header field itself". The fixed hop-by-hop names below are the ones
//! §7.6.1 lists plus the historic `Keep-Alive` and `Proxy-Connection`.

pub mod pool;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use rustls_pki_types::ServerName;

use crate::config::UpstreamConfig;
use crate::wire::{Body, json_error};

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot read upstream CA file {path}: {reason}")]
    Ca { path: String, reason: String },
    #[error("TLS client configuration failed: {0}")]
    Tls(#[from] rustls::Error),
    #[error("the upstream host '{0}' is not a valid TLS server name")]
    ServerName(String),
}

const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

pub const X_TOKENGATE_USER: HeaderName = HeaderName::from_static("x-tokengate-user");
pub const X_TOKENGATE_USER_ID: HeaderName = HeaderName::from_static("x-tokengate-user-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Removes hop-by-hop headers, including every header the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(n);
    }
}

/// Whether a client header must not reach the upstream: a credential, or an identity,
/// forwarding or routing header that tokengate sets itself or that upstreams trust. Names are
/// compared with `_` read as `-`: CGI, WSGI and Rack map `X_Tokengate_User` and
/// `X-Tokengate-User` to the same `HTTP_X_TOKENGATE_USER` (CVE-2024-45614), so a client must
/// not be able to pass either spelling. (Other names with underscores pass: some APIs use
/// them, unlike nginx's default of dropping them all.)
pub fn is_protected(name: &str) -> bool {
    const EXACT: [&str; 11] = [
        "authorization",
        "proxy-authorization",
        "x-sfdc-session",
        "forwarded",
        "x-real-ip",
        "true-client-ip",
        "client-ip",
        "x-client-ip",
        "x-cluster-client-ip",
        "x-original-url",
        "x-rewrite-url",
    ];
    const PREFIXES: [&str; 2] = ["x-tokengate-", "x-forwarded-"];
    let n = name.as_bytes();
    // Every request's headers pass here: most names are ruled out by their first letter or
    // their length (the shortest protected name has 9 bytes).
    if n.len() < 9 || !matches!(n[0] | 0x20, b'a' | b'c' | b'f' | b'p' | b't' | b'x') {
        return false;
    }
    // Header names reach here lower case (the http crate's form); fold anyway, a name is short.
    let same = |a: u8, b: u8| {
        let a = a.to_ascii_lowercase();
        a == b || (a == b'_' && b == b'-')
    };
    let starts = |p: &str| n.len() >= p.len() && n.iter().zip(p.bytes()).all(|(&a, b)| same(a, b));
    EXACT.iter().any(|e| e.len() == n.len() && starts(e)) || PREFIXES.iter().any(|p| starts(p))
}

/// Removes what a client must not pass upstream ([`is_protected`]): its credentials, and any
/// identity or forwarding header it made up (tokengate sets its own).
pub fn strip_client_credentials(headers: &mut HeaderMap) {
    // The credential headers go by name (no allocation on the hot path); a scan finds the
    // rest, which only a client that made one up has.
    headers.remove(header::AUTHORIZATION);
    headers.remove(crate::wire::credentials::X_SFDC_SESSION);
    if !headers.keys().any(|k| is_protected(k.as_str())) {
        return;
    }
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|k| is_protected(k.as_str()))
        .cloned()
        .collect();
    for k in doomed {
        headers.remove(k);
    }
}

/// tokengate's own cookies: never sent upstream, never set by the upstream.
pub const OWN_COOKIES: [&str; 1] = [crate::console::COOKIE];

fn is_own_cookie(name: &str) -> bool {
    OWN_COOKIES
        .iter()
        .any(|c| c.eq_ignore_ascii_case(name.trim()))
}

/// Removes tokengate's own cookies from the `Cookie` header and, for a request that came over
/// HTTP/2, joins its `cookie` fields into one with "; " (RFC 9113 §8.2.3): an HTTP/1.1
/// upstream expects one `Cookie` line, and WSGI servers keep only one.
pub fn clean_cookies(headers: &mut HeaderMap, from_http2: bool) {
    let Some(first) = headers.get(header::COOKIE) else {
        return;
    };
    let several = from_http2 && headers.get_all(header::COOKIE).iter().nth(1).is_some();
    let ours = |v: &HeaderValue| {
        v.to_str().map_or(true, |v| {
            v.split(';')
                .any(|pair| is_own_cookie(pair.split('=').next().unwrap_or("")))
        })
    };
    if !several && !ours(first) {
        return;
    }
    let kept: Vec<String> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|pair| !pair.is_empty() && !is_own_cookie(pair.split('=').next().unwrap_or("")))
        .map(str::to_owned)
        .collect();
    headers.remove(header::COOKIE);
    if let Ok(v) = HeaderValue::from_str(&kept.join("; "))
        && !kept.is_empty()
    {
        headers.insert(header::COOKIE, v);
    }
}

/// Removes `Set-Cookie` lines that would set one of tokengate's own cookies (cookie tossing:
/// an upstream must not plant a console session).
pub fn strip_our_cookies(headers: &mut HeaderMap) {
    if !headers.contains_key(header::SET_COOKIE) {
        return;
    }
    let kept: Vec<HeaderValue> = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter(|v| {
            v.to_str()
                .is_ok_and(|v| !is_own_cookie(v.split(['=', ';']).next().unwrap_or("")))
        })
        .cloned()
        .collect();
    headers.remove(header::SET_COOKIE);
    for v in kept {
        headers.append(header::SET_COOKIE, v);
    }
}

/// Why an upstream response cannot be relayed, if it cannot: an unrequested `101 Switching
/// Protocols` (tokengate never forwards `Upgrade`), or both `Transfer-Encoding` and
/// `Content-Length` (RFC 9112 §6.3: the length is unreliable, and relaying it with the
/// decoded body would truncate it for an HTTP/1.1 client).
fn malformed_response(parts: &http::response::Parts) -> Option<&'static str> {
    if parts.status == StatusCode::SWITCHING_PROTOCOLS {
        return Some("an unrequested 101 Switching Protocols");
    }
    if parts.headers.contains_key(header::TRANSFER_ENCODING)
        && parts.headers.contains_key(header::CONTENT_LENGTH)
    {
        return Some("both Transfer-Encoding and Content-Length");
    }
    None
}

/// Who the forwarded request acts for.
pub struct Principal<'a> {
    pub username: &'a str,
    pub user_id: &'a str,
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
    pub fn new(
        cfg: &UpstreamConfig,
        metrics: Arc<crate::metrics::Metrics>,
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
        let pq = original.path_and_query().map_or("/", PathAndQuery::as_str);
        let pq = if self.prefix.is_empty() {
            PathAndQuery::try_from(pq)
        } else {
            PathAndQuery::from_maybe_shared(format!("{}{pq}", self.prefix))
        };
        // Origin-form (RFC 9112 §3.2.1): the connection already goes to the upstream.
        let mut parts = http::uri::Parts::default();
        parts.path_and_query = Some(pq.unwrap_or_else(|_| PathAndQuery::from_static("/")));
        Uri::from_parts(parts).expect("a path alone is a valid URI")
    }

    /// Sends `req` upstream on behalf of `who` and streams the answer back. Failures become
    /// 502 (unreachable) or 504 (no answer in time) with a JSON body, never a hang.
    /// `host` is the request's validated host (`server::target`), kept so the upstream sees
    /// the name the client used; `None` for an HTTP/1.0 request without one.
    pub async fn forward(
        &self,
        mut req: Request<Body>,
        peer: IpAddr,
        who: Principal<'_>,
        host: Option<HeaderValue>,
    ) -> Response<Body> {
        let from_http2 = req.version() == Version::HTTP_2;
        *req.uri_mut() = self.target(req.uri());
        // HTTP/2 clients are served to an HTTP/1.1 upstream.
        *req.version_mut() = Version::HTTP_11;

        let h = req.headers_mut();
        strip_hop_by_hop(h);
        strip_client_credentials(h);
        clean_cookies(h, from_http2);
        if let Ok(v) = HeaderValue::from_str(who.username) {
            h.insert(X_TOKENGATE_USER, v);
        }
        if let Ok(v) = HeaderValue::from_str(who.user_id) {
            h.insert(X_TOKENGATE_USER_ID, v);
        }
        if let Ok(v) = HeaderValue::from_str(&peer.to_string()) {
            h.insert(X_FORWARDED_FOR, v);
        }
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        match host {
            Some(host) => {
                h.insert(X_FORWARDED_HOST, host.clone());
                h.insert(header::HOST, host);
            }
            // HTTP/1.1 requires a Host (RFC 9112 §3.2); an HTTP/1.0 client may not have sent one.
            None => {
                if let Ok(v) = HeaderValue::from_str(self.authority.as_str()) {
                    h.insert(header::HOST, v);
                }
            }
        }

        let started = std::time::Instant::now();
        let answer = tokio::time::timeout(self.response_timeout, self.pool.send(req)).await;
        let status = match &answer {
            Ok(Ok(resp)) => Some(resp.status().as_u16()),
            _ => None,
        };
        self.metrics
            .upstream(status, answer.is_err(), started.elapsed());
        match answer {
            Ok(Ok(resp)) => {
                let (mut parts, body) = resp.into_parts();
                if let Some(refusal) = malformed_response(&parts) {
                    tracing::warn!(status = %parts.status, refusal, "malformed upstream response refused");
                    return json_error(
                        StatusCode::BAD_GATEWAY,
                        "bad_gateway",
                        "the upstream service sent a malformed response",
                    );
                }
                strip_hop_by_hop(&mut parts.headers);
                strip_our_cookies(&mut parts.headers);
                Response::from_parts(parts, body.boxed())
            }
            Ok(Err(pool::PoolError::Saturated)) => {
                tracing::warn!("every upstream connection is in use; request refused");
                let mut r = json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "upstream_busy",
                    "every connection to the upstream service is in use; retry shortly",
                );
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                r
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, source = ?std::error::Error::source(&e), "upstream request failed");
                json_error(
                    StatusCode::BAD_GATEWAY,
                    "bad_gateway",
                    "the upstream service is unreachable",
                )
            }
            Err(_) => {
                tracing::warn!(timeout = ?self.response_timeout, "upstream did not answer in time");
                json_error(
                    StatusCode::GATEWAY_TIMEOUT,
                    "gateway_timeout",
                    "the upstream service did not answer in time",
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_connection_named_and_fixed_hop_by_hop_headers_in_any_case() {
        let mut h = HeaderMap::new();
        h.insert(
            "Connection",
            HeaderValue::from_static("close, X-Secret-Hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("Keep-Alive", HeaderValue::from_static("timeout=5"));
        h.insert("Transfer-Encoding", HeaderValue::from_static("chunked"));
        h.insert("TE", HeaderValue::from_static("trailers"));
        h.insert("Content-Type", HeaderValue::from_static("text/plain"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("content-type"));
    }

    #[test]
    fn cookies_are_joined_for_http1_and_ours_never_travel() {
        let mut h = HeaderMap::new();
        h.append("cookie", HeaderValue::from_static("a=1"));
        h.append(
            "cookie",
            HeaderValue::from_static("__Host-tg_console=secret; b=2"),
        );
        clean_cookies(&mut h, true);
        assert_eq!(h.get_all("cookie").iter().count(), 1);
        assert_eq!(h["cookie"], "a=1; b=2");
        let mut h = HeaderMap::new();
        h.insert("cookie", HeaderValue::from_static("__host-tg_console=x"));
        clean_cookies(&mut h, false);
        assert!(!h.contains_key("cookie"));
        let mut h = HeaderMap::new();
        h.insert("cookie", HeaderValue::from_static("sid=1; other=2"));
        clean_cookies(&mut h, false);
        assert_eq!(h["cookie"], "sid=1; other=2");
        let mut h = HeaderMap::new();
        h.append(
            "set-cookie",
            HeaderValue::from_static("__Host-tg_console=planted; Path=/"),
        );
        h.append("set-cookie", HeaderValue::from_static("app=1; Path=/"));
        strip_our_cookies(&mut h);
        assert_eq!(h.get_all("set-cookie").iter().count(), 1);
        assert_eq!(h["set-cookie"], "app=1; Path=/");
    }

    #[test]
    fn removes_credentials_and_spoofed_identity() {
        let mut h = HeaderMap::new();
        for n in [
            "authorization",
            "x-sfdc-session",
            "x-tokengate-user",
            "X-Tokengate-Anything",
            "x_tokengate_user",
            "X_Tokengate-User-Id",
            "x-forwarded-for",
            "x_forwarded_host",
            "forwarded",
            "x-real-ip",
            "true-client-ip",
            "client_ip",
            "x-original-url",
            "x_rewrite_url",
            "proxy_authorization",
            "x_sfdc_session",
        ] {
            h.insert(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_static("x"),
            );
        }
        h.insert("accept", HeaderValue::from_static("*/*"));
        h.insert("x_custom_header", HeaderValue::from_static("kept"));
        h.insert("x-tokengateway", HeaderValue::from_static("kept"));
        strip_client_credentials(&mut h);
        assert_eq!(h.len(), 3, "{h:?}");
    }
}
