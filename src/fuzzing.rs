//! The fuzz targets' bodies: one function per parser that reads untrusted bytes before (or
//! while) a caller is authenticated. Each takes arbitrary bytes, runs the parser as the server
//! does, and panics when a property the rest of tokengate relies on does not hold. The
//! cargo-fuzz targets under `fuzz/` call these (coverage-guided, on nightly); the test
//! `tests/it/fuzz_corpora.rs` replays every saved input through them on stable, so a finding
//! stays fixed.
//!
//! Not part of the API: it exists for the fuzzers and the regression test.

use http::{HeaderMap, HeaderName, HeaderValue};

/// SOAP envelopes. A parsed envelope's `SessionHeader` span lies inside the body, starts an
/// element, and cutting it out (as forwarding does) leaves an envelope that still parses and
/// carries no session id: the credential never reaches the upstream.
pub fn soap_envelope(data: &[u8]) {
    let Ok(env) = crate::wire::soap::parse(data) else {
        return;
    };
    if let crate::wire::soap::Op::Login { username, .. } = &env.op {
        assert_eq!(username.trim(), username, "usernames are trimmed");
    }
    if let Some(span) = env.session_header {
        assert!(span.start < span.end && span.end <= data.len(), "{span:?}");
        assert_eq!(data[span.start], b'<', "the span starts an element");
        let mut rest = data[..span.start].to_vec();
        rest.extend_from_slice(&data[span.end..]);
        let again = crate::wire::soap::parse(&rest)
            .expect("an envelope without its SessionHeader still parses");
        assert_eq!(again.session_id, None, "the session id was cut out");
        assert!(again.session_header.is_none());
    }
}

/// The addresses a fuzz input stands for: a byte picks one of a few, so the interesting cases
/// (trusted proxies, outsiders, IPv6) come up often.
fn address(b: u8) -> std::net::IpAddr {
    const ADDRS: [&str; 8] = [
        "127.0.0.1",
        "10.1.2.3",
        "10.200.0.9",
        "203.0.113.7",
        "198.51.100.50",
        "2001:db8::1",
        "fd00::5",
        "192.0.2.1",
    ];
    ADDRS[(b % 8) as usize].parse().expect("valid")
}

/// Client-address resolution from `X-Forwarded-For`. The first byte picks the peer; the rest
/// is the header, one line per `\n`. The result is the peer when the peer is not a trusted
/// proxy; otherwise the nearest entry that is not a trusted proxy, walking from the right,
/// with a malformed entry ending the walk as an unidentified client, as a straightforward
/// second reading of the same rule computes it.
pub fn client_address(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let trusted: Vec<ipnet::IpNet> = vec![
        "127.0.0.0/8".parse().expect("valid"),
        "10.0.0.0/8".parse().expect("valid"),
        "fd00::/8".parse().expect("valid"),
    ];
    let is_trusted = |ip: &std::net::IpAddr| trusted.iter().any(|n| n.contains(ip));
    let peer = address(first);
    let mut headers = HeaderMap::new();
    for line in rest.split(|&b| b == b'\n') {
        if let Ok(v) = HeaderValue::from_bytes(line) {
            headers.append("x-forwarded-for", v);
        }
    }
    let got = crate::server::conn::client_ip(&trusted, peer, &headers);
    // The second reading: every entry, left to right, then the rule from the right.
    let expected = if !is_trusted(&peer) {
        peer
    } else {
        let mut entries: Vec<Option<std::net::IpAddr>> = Vec::new();
        for v in headers.get_all("x-forwarded-for") {
            match v.to_str() {
                Ok(text) => {
                    for e in text.split(',') {
                        let e = e.trim_matches([' ', '\t']);
                        let ip = e
                            .parse::<std::net::IpAddr>()
                            .ok()
                            .or_else(|| e.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()));
                        entries.push(ip.filter(|ip| !ip.is_unspecified()));
                    }
                }
                Err(_) => entries.push(None),
            }
        }
        let mut client = peer;
        let mut i = entries.len();
        loop {
            if i == 0 {
                break client;
            }
            i -= 1;
            match entries[i] {
                None => break crate::server::conn::UNIDENTIFIED_CLIENT,
                Some(ip) if is_trusted(&ip) => client = ip,
                Some(ip) => break ip,
            }
        }
    };
    assert_eq!(got, expected, "{headers:?} from {peer}");
}

/// Header sanitising before forwarding, as `proxy::forward` runs it (`sanitise::outbound`).
/// The input is a list of `name:value` lines; each line also plants one of the names a client
/// must never pass (an oracle of its own, not `is_protected`), spelled with the line's `_`/`-`
/// pattern, and the request carries tokengate's own `X-Request-Id`. Afterwards no planted name
/// is left in any spelling, and the headers tokengate sets appear once each, in their own
/// spelling, with tokengate's values.
pub fn sanitise_headers(data: &[u8]) {
    /// Every name a client must not pass, exactly, and the prefixes (SECURITY.md, README).
    const PROTECTED: [&str; 15] = [
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
        "x-request-id",
        "x-tokengate-user",
        "x-tokengate-user-id",
        "x-forwarded-for",
    ];
    const PREFIXES: [&str; 2] = ["x-tokengate-", "x-forwarded-"];
    /// What `outbound` sets, and to what.
    const SET: [(&str, &str); 7] = [
        ("x-request-id", "tokengate-request-id"),
        ("x-tokengate-user", "fuzz@example.com"),
        ("x-tokengate-user-id", "005000000000001AAA"),
        ("x-forwarded-for", "192.0.2.7"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "proxy.example.com"),
        ("host", "proxy.example.com"),
    ];
    let mut headers = HeaderMap::new();
    headers.insert(
        crate::server::access::X_REQUEST_ID,
        HeaderValue::from_static("tokengate-request-id"),
    );
    for (i, line) in data.split(|&b| b == b'\n').enumerate() {
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(at) => (&line[..at], &line[at + 1..]),
            None => (line, &b""[..]),
        };
        let planted: String = PROTECTED[i % PROTECTED.len()]
            .chars()
            .zip(name.iter().cycle())
            .map(|(c, &b)| if c == '-' && b % 2 == 1 { '_' } else { c })
            .collect();
        let value = HeaderValue::from_bytes(value).unwrap_or(HeaderValue::from_static("x"));
        // tokengate's own request id is never the client's: plant the dash spelling only with
        // an underscore somewhere (the client's `X-Request-Id` was replaced before forwarding).
        if planted != "x-request-id"
            && let Ok(n) = HeaderName::from_bytes(planted.as_bytes())
        {
            headers.append(n, value.clone());
        }
        if let Ok(n) = HeaderName::from_bytes(name)
            && n != crate::server::access::X_REQUEST_ID
        {
            headers.append(n, value);
        }
    }
    let upstream: http::uri::Authority = "upstream.internal".parse().unwrap();
    crate::proxy::sanitise::outbound(
        &mut headers,
        crate::proxy::sanitise::Outbound {
            from_http2: false,
            who: Some(crate::domain::Identity::new(
                "fuzz@example.com",
                "005000000000001AAA",
            )),
            forwarded_for: crate::proxy::forwarded_for("192.0.2.7".parse().unwrap()),
            host: Some(HeaderValue::from_static("proxy.example.com")),
            upstream: &upstream,
        },
    );
    for name in headers.keys() {
        let folded = name.as_str().replace('_', "-");
        let set = SET.iter().any(|(n, _)| *n == name.as_str());
        assert!(
            set || !(PROTECTED.contains(&folded.as_str())
                || PREFIXES.iter().any(|p| folded.starts_with(p))),
            "{name} survived"
        );
    }
    for (name, value) in SET {
        let all: Vec<_> = headers.get_all(name).iter().collect();
        assert_eq!(all, [value], "{name}: {all:?}");
    }
    assert!(!headers.contains_key(http::header::CONNECTION));
}

/// Request targets: the path and `Host` of a request (the input, split at its first
/// newline). Whatever the spelling, an accepted target's path has no dot segment (raw or
/// percent-encoded), no encoded slash or backslash and no repeated slash, and checking it
/// again changes nothing; an accepted host carries no userinfo and is one of ours.
pub fn request_target(data: &[u8]) {
    let (path, host) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &b"proxy.example.com"[..]),
    };
    let Ok(uri) = http::Uri::builder().path_and_query(path).build() else {
        return;
    };
    let Ok(host) = HeaderValue::from_bytes(host) else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.insert(http::header::HOST, host);
    let hosts = ["proxy.example.com".to_owned()];
    let Ok(t) = crate::server::target::check(
        &http::Method::GET,
        http::Version::HTTP_11,
        &uri,
        &headers,
        &hosts,
    ) else {
        return;
    };
    let p = t.path.as_ref();
    assert!(!p.contains("//"), "{p}");
    assert!(!p.contains('\\'), "{p}");
    let lower = p.to_ascii_lowercase();
    assert!(!lower.contains("%2f") && !lower.contains("%5c"), "{p}");
    for segment in lower.replace("%2e", ".").split('/') {
        assert!(segment != "." && segment != "..", "{p}");
    }
    let h = t.host.expect("HTTP/1.1 has a host");
    let h = h.to_str().expect("a checked host is text");
    assert!(!h.contains('@'), "{h}");
    // The health endpoints answer whatever host a load balancer probes them by (an address).
    let health = matches!(
        p.trim_end_matches('/'),
        "/tokengate/health" | "/tokengate/ready"
    );
    assert!(
        health || h.to_ascii_lowercase().starts_with("proxy.example.com"),
        "{h}"
    );
    let again = http::Uri::builder()
        .path_and_query(p)
        .build()
        .expect("the canonical path is a path");
    let t2 = crate::server::target::check(
        &http::Method::GET,
        http::Version::HTTP_11,
        &again,
        &headers,
        &hosts,
    )
    .expect("the canonical path is accepted");
    assert_eq!(t2.path.as_ref(), p);
}

/// Credentials in headers (`Authorization: Basic|Bearer|OAuth`, `X-SFDC-Session`) and the
/// `oauth_token` query parameter. A Basic user-id is never empty and never holds a colon
/// (RFC 7617 §2); a session id is taken from the header as sent.
pub fn credentials(data: &[u8]) {
    use crate::wire::credentials::{HeaderCredential, from_headers};
    let (first, rest) = data.split_at(data.len().min(1));
    let name = if first.first().is_some_and(|b| b % 2 == 0) {
        "authorization"
    } else {
        "x-sfdc-session"
    };
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_bytes(rest) {
        headers.insert(name, v);
    }
    match from_headers(&headers) {
        Some(HeaderCredential::Basic(basic)) => {
            let user = basic.username();
            assert!(!user.is_empty() && !user.contains(':'), "{user:?}");
        }
        Some(HeaderCredential::Session(sid)) => {
            let sent = headers.get(name).expect("present").as_bytes();
            let sid = sid.as_bytes();
            assert!(
                sent.windows(sid.len().max(1)).any(|w| w == sid) || sid.is_empty(),
                "a session id comes from the header"
            );
        }
        Some(HeaderCredential::Malformed) | None => {}
    }
    // The same bytes as a query string carrying `oauth_token`.
    if let Ok(q) = std::str::from_utf8(rest)
        && let Ok(uri) = format!("/id/x?{q}").parse::<http::Uri>()
    {
        let _ = crate::server::handlers::oauth::query_param(&uri, "oauth_token");
    }
}

/// The OAuth token endpoint's form. A form that parses holds each parameter once.
pub fn oauth_form(data: &[u8]) {
    if let Ok(form) = crate::wire::oauth::Form::parse(data) {
        for key in [
            "grant_type",
            "client_id",
            "client_secret",
            "username",
            "password",
        ] {
            let _ = form.get(key);
        }
    }
}

/// The JSON bodies of the self-service and admin APIs. An error never quotes a value from the
/// body (it may be a password): only field names and positions. (A field name is the
/// caller's own text and may be quoted, "unknown field `pasword`"; a value that also occurs
/// in a field name proves nothing either way.)
pub fn json_bodies(data: &[u8]) {
    let problems = crate::server::api::parse_bodies(data);
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let (mut values, mut keys) = (Vec::new(), Vec::new());
    collect_strings(&value, &mut values, &mut keys);
    for p in &problems {
        for s in &values {
            // A short string, or one that is part of the message's own words or of a field
            // name, proves nothing when it shows up.
            let innocent = s.chars().count() < 6
                || JSON_PROBLEM_WORDS.contains(s.as_str())
                || keys.iter().any(|k| k.contains(s.as_str()));
            if !innocent {
                assert!(!p.contains(s.as_str()), "{p:?} quotes the value {s:?}");
            }
        }
    }
}

/// Every word a JSON-body problem is made of, apart from the caller's field names.
const JSON_PROBLEM_WORDS: &str = "invalid JSON body (the body is not valid JSON, a field has a \
    value of the wrong type, missing field `new_password` `current_password` `username` \
    `email` `full_name` `admin` `password` `loadtest` `token` `ranges` `enabled` `address` \
    `redact_secrets` unknown field, expected one of, line column)";

fn collect_strings(v: &serde_json::Value, values: &mut Vec<String>, keys: &mut Vec<String>) {
    match v {
        serde_json::Value::String(s) => values.push(s.clone()),
        serde_json::Value::Array(a) => a.iter().for_each(|v| collect_strings(v, values, keys)),
        serde_json::Value::Object(o) => {
            for (k, v) in o {
                keys.push(k.clone());
                collect_strings(v, values, keys);
            }
        }
        _ => {}
    }
}

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// Every target by name, for the corpus replay and `fuzz/run.sh`.
pub const TARGETS: [(&str, Target); 7] = [
    ("soap_envelope", soap_envelope),
    ("request_target", request_target),
    ("client_address", client_address),
    ("sanitise_headers", sanitise_headers),
    ("credentials", credentials),
    ("oauth_form", oauth_form),
    ("json_bodies", json_bodies),
];
