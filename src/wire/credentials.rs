//! Credentials carried in headers: HTTP Basic (RFC 7617) on any proxied call, and the session
//! id in `Authorization: Bearer|OAuth` or `X-SFDC-Session` (docs/salesforce-protocol.md §3.1).

use base64::Engine as _;
use http::HeaderMap;

#[derive(Debug, PartialEq, Eq)]
pub enum HeaderCredential<'a> {
    /// `username`, `password‖token`.
    Basic(Basic),
    Session(&'a str),
    /// An `Authorization` header we cannot read (unknown scheme, bad base64, no colon).
    Malformed,
}

/// HTTP Basic credentials as decoded: `user-id ":" password` in one string (one allocation,
/// the decoding's), split at the first colon (RFC 7617 §2: the user-id cannot contain one).
#[derive(PartialEq, Eq)]
pub struct Basic {
    text: String,
    colon: usize,
}

impl Basic {
    pub fn username(&self) -> &str {
        &self.text[..self.colon]
    }

    /// The password, with the security token appended.
    pub fn secret(&self) -> &str {
        &self.text[self.colon + 1..]
    }
}

/// The secret never appears in a debug print.
impl std::fmt::Debug for Basic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Basic")
            .field("username", &self.username())
            .finish_non_exhaustive()
    }
}

pub const X_SFDC_SESSION: &str = "x-sfdc-session";

/// Reads the credential a request carries in its headers, if any.
pub fn from_headers(headers: &HeaderMap) -> Option<HeaderCredential<'_>> {
    if let Some(v) = headers.get(http::header::AUTHORIZATION) {
        let Ok(v) = v.to_str() else {
            return Some(HeaderCredential::Malformed);
        };
        let (scheme, rest) = v.trim().split_once(' ').unwrap_or((v, ""));
        let rest = rest.trim();
        // Schemes are case-insensitive (RFC 9110 §11.1); restforce sends "OAuth".
        return Some(
            if scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("oauth") {
                if rest.is_empty() {
                    HeaderCredential::Malformed
                } else {
                    HeaderCredential::Session(rest)
                }
            } else if scheme.eq_ignore_ascii_case("basic") {
                parse_basic(rest).unwrap_or(HeaderCredential::Malformed)
            } else {
                HeaderCredential::Malformed
            },
        );
    }
    headers
        .get(X_SFDC_SESSION)
        .and_then(|v| v.to_str().ok())
        .map(|s| HeaderCredential::Session(s.trim()))
}

fn parse_basic(b64: &str) -> Option<HeaderCredential<'static>> {
    let raw = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    let text = String::from_utf8(raw).ok()?;
    // RFC 7617 §2: the user-id cannot contain a colon; the password may.
    let colon = text.find(':')?;
    if colon == 0 {
        return None;
    }
    Some(HeaderCredential::Basic(Basic { text, colon }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn with(name: &'static str, v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn bearer_and_oauth_schemes_are_case_insensitive() {
        for v in [
            "Bearer 00D!abc",
            "bearer 00D!abc",
            "OAuth 00D!abc",
            "OAUTH  00D!abc",
        ] {
            assert_eq!(
                from_headers(&with("authorization", v)),
                Some(HeaderCredential::Session("00D!abc")),
                "{v}"
            );
        }
    }

    #[test]
    fn basic_splits_at_the_first_colon() {
        let b = base64::engine::general_purpose::STANDARD.encode("alice:pa:ss");
        assert_eq!(
            from_headers(&with("authorization", &format!("Basic {b}"))),
            Some(HeaderCredential::Basic(Basic {
                text: "alice:pa:ss".into(),
                colon: 5
            }))
        );
        let Some(HeaderCredential::Basic(b)) =
            from_headers(&with("authorization", &format!("Basic {b}")))
        else {
            unreachable!()
        };
        assert_eq!((b.username(), b.secret()), ("alice", "pa:ss"));
        assert!(
            !format!("{b:?}").contains("pa:ss"),
            "the secret is not printed"
        );
    }

    #[test]
    fn unreadable_authorization_is_malformed() {
        for v in ["Basic !!!", "Basic Zm9v", "Digest x", "Bearer"] {
            assert_eq!(
                from_headers(&with("authorization", v)),
                Some(HeaderCredential::Malformed),
                "{v}"
            );
        }
    }

    #[test]
    fn bulk_session_header_is_read() {
        assert_eq!(
            from_headers(&with("x-sfdc-session", "00D!xyz")),
            Some(HeaderCredential::Session("00D!xyz"))
        );
        assert_eq!(from_headers(&HeaderMap::new()), None);
    }
}
