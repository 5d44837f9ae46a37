//! What may leave tokengate for the upstream, and what may come back: every rule in one
//! place.
//!
//! Out: hop-by-hop headers go (RFC 9110 §7.6.1: "a proxy or gateway MUST parse a received
//! Connection header field before a message is forwarded and, for each connection-option in
//! this field, remove any header or trailer field(s) from the message with the same name as
//! the connection-option, and then remove the Connection header field itself"; the fixed
//! names below are RFC 9110 §7.6.1's plus the historic `Keep-Alive` and `Proxy-Connection`),
//! and so do the client's credentials and any identity or forwarding header it made up
//! ([`is_protected`]), and tokengate's own cookies; tokengate then sets the identity headers
//! (`X-Tokengate-User`, `X-Tokengate-User-Id`), `X-Forwarded-For|Proto|Host` and `Host`, and
//! keeps the request's `X-Request-Id`, which is tokengate's own (`server::access`). A
//! SOAP call's `SessionHeader` is cut out of its envelope ([`cut_session_header`]).
//!
//! In: an answer that cannot be relayed safely is refused ([`inbound`]); hop-by-hop headers
//! go, and no `Set-Cookie` may set one of tokengate's own cookies.

use std::net::IpAddr;

use bytes::Bytes;
use http::StatusCode;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::Authority;

use crate::domain::Identity;

/// `Connection` first: [`hop_by_hop_present`]'s bit 0.
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

/// Which of [`HOP_BY_HOP`] a message carries, one bit each (bit 0: `Connection`), found in
/// one pass over its names: a removal hashes the name (and a name outside the standard set,
/// "keep-alive" or "proxy-connection", byte by byte), while most messages carry none of them
/// or only `Connection`, and comparing a name with a standard one is one byte.
fn hop_by_hop_present(headers: &HeaderMap) -> u16 {
    headers
        .keys()
        .fold(0, |found, k| match HOP_BY_HOP.iter().position(|n| n == k) {
            Some(i) => found | 1 << i,
            None => found,
        })
}

/// Removes hop-by-hop headers, including every header the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let found = hop_by_hop_present(headers);
    strip_found(headers, found);
}

/// [`strip_hop_by_hop`] for the names `found` ([`hop_by_hop_present`]) says are there.
fn strip_found(headers: &mut HeaderMap, found: u16) {
    if found == 0 {
        return;
    }
    // The names a `Connection` value lists are removed by `&str`, which parses them without
    // making a `HeaderName` (that allocates for every name outside the standard set,
    // "keep-alive" included). Most messages carry one `Connection` line: it is taken out whole
    // (a reference count); several lines are copied first.
    if found & 1 != 0 {
        let mut lines = headers.get_all(header::CONNECTION).iter();
        lines.next();
        if lines.next().is_none() {
            if let Some(line) = headers.remove(header::CONNECTION) {
                remove_listed(headers, &line);
            }
        } else {
            let all: Vec<HeaderValue> = headers
                .get_all(header::CONNECTION)
                .iter()
                .cloned()
                .collect();
            headers.remove(header::CONNECTION);
            for line in &all {
                remove_listed(headers, line);
            }
        }
    }
    for (i, n) in HOP_BY_HOP.iter().enumerate().skip(1) {
        if found & 1 << i != 0 {
            headers.remove(n);
        }
    }
}

/// Removes every header a `Connection` line names (RFC 9110 §7.6.1).
fn remove_listed(headers: &mut HeaderMap, line: &HeaderValue) {
    let Ok(line) = line.to_str() else { return };
    for name in line.split(',') {
        headers.remove(name.trim());
    }
}

/// Whether a client header must not reach the upstream: a credential, or an identity,
/// forwarding or routing header that tokengate sets itself or that upstreams trust. Names are
/// compared with `_` read as `-`: CGI, WSGI and Rack map `X_Tokengate_User` and
/// `X-Tokengate-User` to the same `HTTP_X_TOKENGATE_USER` (CVE-2024-45614), so a client must
/// not be able to pass either spelling. (Other names with underscores pass: some APIs use
/// them, unlike nginx's default of dropping them all.)
pub fn is_protected(name: &str) -> bool {
    const EXACT: [&str; 12] = [
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
        // tokengate's own (`server::access`), which `outbound` keeps: a client's `X_Request_Id`
        // beside it would reach a CGI upstream as the same `HTTP_X_REQUEST_ID`.
        "x-request-id",
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
/// identity or forwarding header it made up (tokengate sets its own), but not `keep`
/// (tokengate's own request id, which `server::access` put there).
fn strip_client_credentials(headers: &mut HeaderMap, keep: &HeaderName) {
    // `Authorization`, the usual credential, goes by name (a standard name hashes in one
    // step); a scan finds the rest, which only a client that made one up (or a Bulk API
    // client's `X-SFDC-Session`) has.
    headers.remove(header::AUTHORIZATION);
    let protected = |k: &HeaderName| k != keep && is_protected(k.as_str());
    if !headers.keys().any(protected) {
        return;
    }
    let doomed: Vec<HeaderName> = headers.keys().filter(|k| protected(k)).cloned().collect();
    for k in doomed {
        headers.remove(k);
    }
}

/// The web console's session cookie (`server::console`), named here because it is the one
/// cookie that must never cross to the upstream: the server uses this name, the proxy never
/// imports the server.
pub const CONSOLE_COOKIE: &str = "__Host-tg_console";

/// The request id header: tokengate's own (`server::access` assigns it), relayed upstream as
/// tokengate set it.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// tokengate's own cookies: never sent upstream, never set by the upstream.
pub const OWN_COOKIES: [&str; 1] = [CONSOLE_COOKIE];

/// Cookies that carry a Salesforce session id (`sid`, as the Salesforce UI and Visualforce
/// send it): a credential, never relayed on a public path, where nobody vouched for it.
pub const SESSION_COOKIES: [&str; 1] = ["sid"];

fn is_own_cookie(name: &str) -> bool {
    OWN_COOKIES
        .iter()
        .any(|c| c.eq_ignore_ascii_case(name.trim()))
}

fn is_session_cookie(name: &str) -> bool {
    is_own_cookie(name)
        || SESSION_COOKIES
            .iter()
            .any(|c| c.eq_ignore_ascii_case(name.trim()))
}

/// Removes tokengate's own cookies from the `Cookie` header (and, with `anonymous`, the
/// session cookies too) and, for a request that came over HTTP/2, joins its `cookie` fields
/// into one with "; " (RFC 9113 §8.2.3): an HTTP/1.1 upstream expects one `Cookie` line, and
/// WSGI servers keep only one.
pub fn clean_cookies(headers: &mut HeaderMap, from_http2: bool, anonymous: bool) {
    let Some(first) = headers.get(header::COOKIE) else {
        return;
    };
    let doomed: fn(&str) -> bool = if anonymous {
        is_session_cookie
    } else {
        is_own_cookie
    };
    let several = from_http2 && headers.get_all(header::COOKIE).iter().nth(1).is_some();
    let ours = |v: &HeaderValue| {
        v.to_str().map_or(true, |v| {
            v.split(';')
                .any(|pair| doomed(pair.split('=').next().unwrap_or("")))
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
        .filter(|pair| !pair.is_empty() && !doomed(pair.split('=').next().unwrap_or("")))
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

/// What the outbound headers are made from.
pub struct Outbound<'a> {
    /// The request came over HTTP/2 (its cookies may be split over several fields).
    pub from_http2: bool,
    /// Who the request acts for; `None` on a public path (`[upstream] public_paths`): no
    /// identity headers, and no session cookie either.
    pub who: Option<Identity>,
    /// The client's address (`server::peer::client_ip`) as an `X-Forwarded-For` value
    /// ([`forwarded_for`]; made once per connection on the forwarding path).
    pub forwarded_for: HeaderValue,
    /// The request's validated host (`server::target`), so the upstream sees the name the
    /// client used; `None` for an HTTP/1.0 request without one.
    pub host: Option<HeaderValue>,
    /// The upstream's own authority, the `Host` when the client sent none.
    pub upstream: &'a Authority,
}

/// The `X-Forwarded-For` value tokengate sends for a client address: the address alone
/// (tokengate is the edge; a chain it trusted has been resolved by `client_ip`).
pub fn forwarded_for(client: IpAddr) -> HeaderValue {
    crate::domain::shared_value(client.to_string()).expect("an IP address is a valid header value")
}

/// Makes a client's request headers fit to leave for the upstream (module docs).
pub fn outbound(h: &mut HeaderMap, o: Outbound<'_>) {
    // The request id on the request is tokengate's (`server::access` replaced the client's):
    // kept even if the client's `Connection` header names it, and not a protected name here.
    // Taken out (a hash of its name, and another to put it back) only when a hop-by-hop
    // header could name it.
    let hop = hop_by_hop_present(h);
    let request_id = if hop != 0 {
        h.remove(X_REQUEST_ID)
    } else {
        None
    };
    strip_found(h, hop);
    strip_client_credentials(h, &X_REQUEST_ID);
    clean_cookies(h, o.from_http2, o.who.is_none());
    if let Some(who) = o.who {
        if let Some(v) = who.username {
            h.insert(X_TOKENGATE_USER, v);
        }
        if let Some(v) = who.user_id {
            h.insert(X_TOKENGATE_USER_ID, v);
        }
    }
    h.insert(X_FORWARDED_FOR, o.forwarded_for);
    h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
    if let Some(id) = request_id {
        h.insert(X_REQUEST_ID, id);
    }
    match o.host {
        Some(host) => {
            h.insert(X_FORWARDED_HOST, host.clone());
            h.insert(header::HOST, host);
        }
        // HTTP/1.1 requires a Host (RFC 9112 §3.2); an HTTP/1.0 client may not have sent one.
        None => {
            if let Ok(v) = HeaderValue::from_str(o.upstream.as_str()) {
                h.insert(header::HOST, v);
            }
        }
    }
}

/// Makes an upstream answer fit to relay, or says why it is not.
pub fn inbound(parts: &mut http::response::Parts) -> Result<(), &'static str> {
    if let Some(why) = malformed_response(parts) {
        return Err(why);
    }
    strip_hop_by_hop(&mut parts.headers);
    strip_our_cookies(&mut parts.headers);
    Ok(())
}

/// A SOAP envelope without its `SessionHeader` (the byte range the parser found): the session
/// id is a credential, and the upstream never sees one.
pub fn cut_session_header(envelope: Bytes, span: Option<std::ops::Range<usize>>) -> Bytes {
    match span {
        Some(span) => {
            let mut v = Vec::with_capacity(envelope.len() - span.len());
            v.extend_from_slice(&envelope[..span.start]);
            v.extend_from_slice(&envelope[span.end..]);
            v.into()
        }
        None => envelope,
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
        clean_cookies(&mut h, true, false);
        assert_eq!(h.get_all("cookie").iter().count(), 1);
        assert_eq!(h["cookie"], "a=1; b=2");
        let mut h = HeaderMap::new();
        h.insert("cookie", HeaderValue::from_static("__host-tg_console=x"));
        clean_cookies(&mut h, false, false);
        assert!(!h.contains_key("cookie"));
        let mut h = HeaderMap::new();
        h.insert("cookie", HeaderValue::from_static("sid=1; other=2"));
        clean_cookies(&mut h, false, false);
        assert_eq!(h["cookie"], "sid=1; other=2");
        // A public path's request carries nobody's session: `sid` goes too.
        clean_cookies(&mut h, false, true);
        assert_eq!(h["cookie"], "other=2");
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
    fn the_session_header_is_cut_from_the_envelope() {
        let env = Bytes::from_static(b"<e><h><sid>x</sid></h><b/></e>");
        assert_eq!(
            cut_session_header(env.clone(), Some(6..18)),
            Bytes::from_static(b"<e><h></h><b/></e>")
        );
        assert_eq!(cut_session_header(env.clone(), None), env);
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
            "x_request_id",
            "X_Request-Id",
        ] {
            h.insert(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_static("x"),
            );
        }
        h.insert("accept", HeaderValue::from_static("*/*"));
        h.insert("x_custom_header", HeaderValue::from_static("kept"));
        h.insert("x-tokengateway", HeaderValue::from_static("kept"));
        h.insert(X_REQUEST_ID, HeaderValue::from_static("tokengate's own"));
        strip_client_credentials(&mut h, &X_REQUEST_ID);
        assert_eq!(h.len(), 4, "{h:?}");
        assert_eq!(h[X_REQUEST_ID], "tokengate's own");
    }
}
