//! What a request is addressed to, checked before it is routed or forwarded: the method (no
//! `CONNECT`), the host (one, without userinfo, one of tokengate's own), and the path (no dot
//! segments or encoded separators, repeated slashes collapsed).
//!
//! - Host (RFC 9112 §3.2 and §3.2.2, RFC 9113 §8.3.1): an HTTP/1.1 request carries exactly
//!   one `Host`; an absolute-form target's authority replaces it; on HTTP/2 `:authority`
//!   wins and a `host` header that disagrees makes the request malformed. Userinfo is never
//!   accepted (it would reach the upstream as `Host` and `X-Forwarded-Host`). A host that is
//!   not tokengate's is answered 421 Misdirected Request, except on the health endpoints,
//!   which load balancers probe by address.
//! - Path: `..` and `.` segments, raw or percent-encoded, are refused: an upstream behind a
//!   base path would resolve `/api/v1/../../internal` to `/internal` (RFC 3986 §5.2.4), with
//!   tokengate's identity headers on it. Encoded slashes and backslashes are refused as well,
//!   since a server that decodes them sees other segments than tokengate routed. Repeated
//!   slashes are collapsed, so `//services/oauth2/token` (a login URL configured with a
//!   trailing slash) reaches the handler its canonical form reaches.
//!
//! It also says which path space of tokengate's own a path is in where more than one module
//! asks (the console's: [`is_console`], for the route table and the access log).

use std::borrow::Cow;

use http::header::{HOST, HeaderValue};
use http::{HeaderMap, Method, Uri, Version};

/// Where the web console is served.
pub const CONSOLE_BASE: &str = "/tokengate/console";

/// Whether `path` is the console's.
pub fn is_console(path: &str) -> bool {
    path.strip_prefix(CONSOLE_BASE)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Why a request target is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("the CONNECT method is not supported")]
    Connect,
    #[error("the request has no Host")]
    NoHost,
    #[error("the request has more than one Host")]
    SeveralHosts,
    #[error("the Host is not a valid host")]
    BadHost,
    #[error("the Host and the :authority of the request disagree")]
    HostMismatch,
    #[error("this server does not answer for that host")]
    Misdirected,
    #[error("the path contains dot segments or encoded separators")]
    BadPath,
}

/// A checked target: the host to forward (validated, without userinfo) and the path to route.
#[derive(Debug)]
pub struct Target<'a> {
    /// `None` for an HTTP/1.0 request without a host (the upstream's own is used).
    pub host: Option<HeaderValue>,
    /// The path with repeated slashes collapsed.
    pub path: Cow<'a, str>,
}

/// Checks a request's target; `hosts` are tokengate's lower-case host names.
pub fn check<'a>(
    method: &Method,
    version: Version,
    uri: &'a Uri,
    headers: &HeaderMap,
    hosts: &[String],
) -> Result<Target<'a>, TargetError> {
    if method == Method::CONNECT {
        return Err(TargetError::Connect);
    }
    let path = canonical_path(uri.path())?;
    let exempt = matches!(
        path.trim_end_matches('/'),
        "/tokengate/health" | "/tokengate/ready"
    );
    let host = host_of(version, uri, headers)?;
    if let Some(h) = &host
        && !exempt
    {
        let name = host_name(h.as_bytes()).ok_or(TargetError::BadHost)?;
        if !hosts
            .iter()
            .any(|allowed| allowed.as_bytes().eq_ignore_ascii_case(name))
        {
            return Err(TargetError::Misdirected);
        }
    }
    Ok(Target { host, path })
}

/// The request's host, as RFC 9112 §3.2 and RFC 9113 §8.3.1 define it.
fn host_of(
    version: Version,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Option<HeaderValue>, TargetError> {
    let mut host_headers = headers.get_all(HOST).iter();
    let host_header = host_headers.next();
    if host_headers.next().is_some() {
        return Err(TargetError::SeveralHosts);
    }
    let from_authority = |a: &http::uri::Authority| {
        if a.as_str().contains('@') {
            return Err(TargetError::BadHost);
        }
        HeaderValue::from_str(a.as_str()).map_err(|_| TargetError::BadHost)
    };
    let host = match uri.authority() {
        // HTTP/2's :authority, or an HTTP/1 absolute-form target's authority: it wins.
        Some(a) => {
            let host = from_authority(a)?;
            if version == Version::HTTP_2
                && let Some(h) = host_header
                && !h.as_bytes().eq_ignore_ascii_case(host.as_bytes())
            {
                return Err(TargetError::HostMismatch);
            }
            Some(host)
        }
        None => match host_header {
            Some(h) => Some(h.clone()),
            None if version == Version::HTTP_10 => None,
            None => return Err(TargetError::NoHost),
        },
    };
    if let Some(h) = &host {
        host_name(h.as_bytes()).ok_or(TargetError::BadHost)?;
    }
    Ok(host)
}

/// The host name of a `Host` value (`name`, `name:port`, `[v6]`, `[v6]:port`), without the
/// port and brackets; `None` when the value is not one (userinfo, spaces, bad port). Works on
/// bytes: it runs on every request.
fn host_name(value: &[u8]) -> Option<&[u8]> {
    let (name, port) = if let Some(rest) = value.strip_prefix(b"[") {
        let close = rest.iter().position(|&b| b == b']')?;
        let (inside, after) = (&rest[..close], &rest[close + 1..]);
        std::str::from_utf8(inside)
            .ok()?
            .parse::<std::net::Ipv6Addr>()
            .ok()?;
        let port = match after {
            [] => None,
            [b':', port @ ..] => Some(port),
            _ => return None,
        };
        (inside, port)
    } else {
        match value.iter().rposition(|&b| b == b':') {
            Some(i) => (&value[..i], Some(&value[i + 1..])),
            None => (value, None),
        }
    };
    if let Some(p) = port
        && (p.is_empty() || p.len() > 5 || !p.iter().all(u8::is_ascii_digit))
    {
        return None;
    }
    let host_chars = |&b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':');
    (!name.is_empty() && name.len() <= 253 && name.iter().all(host_chars)).then_some(name)
}

/// The path with repeated slashes collapsed, or an error for dot segments (`.`, `..`, raw or
/// percent-encoded) and encoded slashes or backslashes.
fn canonical_path(path: &str) -> Result<Cow<'_, str>, TargetError> {
    let bytes = path.as_bytes();
    // The common path has no `\`, no `%`, no `/.` and no `//`: one pass clears it.
    let (mut suspect, mut doubled) = (false, false);
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'\\' => return Err(TargetError::BadPath),
            b'%' => suspect = true,
            b'/' => match bytes.get(i + 1) {
                Some(b'/') => doubled = true,
                Some(b'.') => suspect = true,
                _ => {}
            },
            _ => {}
        }
    }
    if suspect {
        let encoded_separator = |w: &[u8]| {
            w[0] == b'%'
                && matches!(
                    [w[1].to_ascii_lowercase(), w[2].to_ascii_lowercase()],
                    [b'2', b'f'] | [b'5', b'c']
                )
        };
        if bytes.windows(3).any(encoded_separator) || path.split('/').any(is_dot_segment) {
            return Err(TargetError::BadPath);
        }
    }
    if !doubled {
        return Ok(Cow::Borrowed(path));
    }
    let mut out = String::with_capacity(path.len());
    let mut last_slash = false;
    for c in path.chars() {
        if c == '/' && last_slash {
            continue;
        }
        last_slash = c == '/';
        out.push(c);
    }
    Ok(Cow::Owned(out))
}

/// Whether a path segment is `.` or `..` once `%2e` is read as a dot.
fn is_dot_segment(segment: &str) -> bool {
    let b = segment.as_bytes();
    let (mut i, mut dots) = (0, 0);
    while i < b.len() {
        if b[i] == b'.' {
            i += 1;
        } else if b[i..].len() >= 3 && b[i] == b'%' && b[i + 1] == b'2' && b[i + 2] | 0x20 == b'e' {
            i += 3;
        } else {
            return false;
        }
        dots += 1;
    }
    dots == 1 || dots == 2
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts() -> Vec<String> {
        vec!["proxy.example.com".into(), "127.0.0.1".into()]
    }

    fn check_h1(target: &str, host_headers: &[&str]) -> Result<String, TargetError> {
        let uri: Uri = target.parse().unwrap();
        let mut h = HeaderMap::new();
        for v in host_headers {
            h.append(HOST, HeaderValue::from_str(v).unwrap());
        }
        check(&Method::GET, Version::HTTP_11, &uri, &h, &hosts())
            .map(|t| format!("{:?} {}", t.host, t.path))
    }

    #[test]
    fn paths_with_dot_segments_or_encoded_separators_are_refused() {
        for bad in [
            "/../../internal",
            "/%2e%2e/%2e%2e/internal",
            "/%2E%2e/internal",
            "/services/data/../../../../internal",
            "/services/data/./v59.0",
            "/services/data/%2e/v59.0",
            "/a/..",
            "/a%2fb",
            "/a%2Fb",
            "/a%5cb",
            "/a\\b",
        ] {
            assert_eq!(
                check_h1(bad, &["proxy.example.com"]),
                Err(TargetError::BadPath),
                "{bad}"
            );
        }
        for ok in ["/services/data/v59.0/", "/a..b/.c/d.", "/%2e%2e%2e", "/"] {
            assert!(check_h1(ok, &["proxy.example.com"]).is_ok(), "{ok}");
        }
    }

    #[test]
    fn repeated_slashes_are_collapsed() {
        assert_eq!(
            check_h1("//services/oauth2/token", &["proxy.example.com"]).unwrap(),
            r#"Some("proxy.example.com") /services/oauth2/token"#
        );
        assert_eq!(
            canonical_path("/services//Soap///u/59.0/").unwrap(),
            "/services/Soap/u/59.0/"
        );
    }

    #[test]
    fn the_host_is_one_of_ours_and_carries_no_userinfo() {
        assert!(check_h1("/x", &["proxy.example.com:8443"]).is_ok());
        assert!(check_h1("/x", &["PROXY.example.COM"]).is_ok());
        assert!(check_h1("/x", &["127.0.0.1:8443"]).is_ok());
        assert_eq!(check_h1("/x", &[]), Err(TargetError::NoHost));
        assert_eq!(
            check_h1("/x", &["proxy.example.com", "proxy.example.com"]),
            Err(TargetError::SeveralHosts)
        );
        assert_eq!(
            check_h1("/x", &["evil.example"]),
            Err(TargetError::Misdirected)
        );
        assert_eq!(
            check_h1("/x", &["user:pw@proxy.example.com"]),
            Err(TargetError::BadHost)
        );
        assert_eq!(
            check_h1("/x", &["proxy.example.com:80x"]),
            Err(TargetError::BadHost)
        );
        // An absolute-form target's authority replaces the Host header.
        assert_eq!(
            check_h1("https://evil.example/x", &["proxy.example.com"]),
            Err(TargetError::Misdirected)
        );
        assert!(check_h1("https://proxy.example.com/x", &["evil.example"]).is_ok());
        assert_eq!(
            check_h1("https://u:p@proxy.example.com/x", &["proxy.example.com"]),
            Err(TargetError::BadHost)
        );
        // Health checks come by address.
        assert!(check_h1("/tokengate/health", &["10.0.0.7:8443"]).is_ok());
        assert!(check_h1("/tokengate/ready/", &["10.0.0.7"]).is_ok());
        assert_eq!(
            check_h1("/tokengate/healthz", &["10.0.0.7"]),
            Err(TargetError::Misdirected)
        );
    }

    #[test]
    fn on_http2_the_authority_wins_and_a_disagreeing_host_is_malformed() {
        let uri: Uri = "https://proxy.example.com/x".parse().unwrap();
        let mut h = HeaderMap::new();
        let t = check(&Method::GET, Version::HTTP_2, &uri, &h, &hosts()).unwrap();
        assert_eq!(t.host.unwrap(), "proxy.example.com");
        h.insert(HOST, HeaderValue::from_static("evil.example"));
        assert_eq!(
            check(&Method::GET, Version::HTTP_2, &uri, &h, &hosts()).unwrap_err(),
            TargetError::HostMismatch
        );
        let uri: Uri = "https://user:pw@evil.com/x".parse().unwrap();
        assert_eq!(
            check(
                &Method::GET,
                Version::HTTP_2,
                &uri,
                &HeaderMap::new(),
                &hosts()
            )
            .unwrap_err(),
            TargetError::BadHost
        );
    }

    #[test]
    fn connect_is_refused() {
        let uri: Uri = "proxy.example.com:443".parse().unwrap();
        assert_eq!(
            check(
                &Method::CONNECT,
                Version::HTTP_11,
                &uri,
                &HeaderMap::new(),
                &hosts()
            )
            .unwrap_err(),
            TargetError::Connect
        );
    }
}
