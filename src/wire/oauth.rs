//! The OAuth 2.0 token endpoint as Salesforce serves it (docs/salesforce-protocol.md §2,
//! RFC 6749 §4.3), token revocation (RFC 7009 as Salesforce shapes it) and the identity and
//! userinfo documents.

use std::collections::HashMap;

use base64::Engine as _;
use http::{Response, StatusCode};
use ring::hmac;

use super::{Body, JSON, respond};

/// The fields of a token request. Each may appear at most once (RFC 6749 §3.2: "Request and
/// response parameters MUST NOT be included more than once").
#[derive(Debug, Default)]
pub struct Form(HashMap<String, String>);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormError {
    #[error("the body is not application/x-www-form-urlencoded")]
    Malformed,
    #[error("the form is not valid UTF-8")]
    NotUtf8,
    #[error("parameter {0} is repeated")]
    Repeated(String),
}

impl Form {
    pub fn parse(body: &[u8]) -> Result<Self, FormError> {
        let text = std::str::from_utf8(body).map_err(|_| FormError::NotUtf8)?;
        let pairs: Vec<(String, String)> =
            serde_urlencoded::from_str(text).map_err(|_| FormError::Malformed)?;
        // The decoder replaces invalid percent-encoded UTF-8 with U+FFFD instead of failing;
        // a replacement character the client did not send itself means the input was bad.
        let sent_replacement =
            text.contains('\u{FFFD}') || text.to_ascii_lowercase().contains("%ef%bf%bd");
        if !sent_replacement
            && pairs
                .iter()
                .any(|(k, v)| k.contains('\u{FFFD}') || v.contains('\u{FFFD}'))
        {
            return Err(FormError::NotUtf8);
        }
        let mut map = HashMap::with_capacity(pairs.len());
        for (k, v) in pairs {
            if map.contains_key(&k) {
                return Err(FormError::Repeated(k));
            }
            map.insert(k, v);
        }
        Ok(Self(map))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

/// How a client authenticated to the token endpoint (RFC 6749 §2.3).
#[derive(Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// `client_id` (and `client_secret`) in the form body.
    Form,
    /// `client_secret_basic` (RFC 6749 §2.3.1): `Authorization: Basic`.
    Basic { id: String, secret: String },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClientAuthError {
    #[error("the Authorization header is not readable client credentials")]
    Malformed,
    /// RFC 6749 §2.3: "The client MUST NOT use more than one authentication method in each
    /// request."
    #[error("the client authenticated more than one way")]
    SeveralMethods,
}

/// The client authentication a token request carries: HTTP Basic (RFC 6749 §2.3.1: the
/// client id and secret each `application/x-www-form-urlencoded` before being joined by a
/// colon and base64-encoded), or the form's `client_id`/`client_secret`. A `client_secret`
/// in the form next to Basic credentials is a second method; a `client_id` in the form may
/// accompany them only if it names the same client.
pub fn client_auth(headers: &http::HeaderMap, form: &Form) -> Result<ClientAuth, ClientAuthError> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Ok(ClientAuth::Form);
    };
    let value = value.to_str().map_err(|_| ClientAuthError::Malformed)?;
    let (scheme, b64) = value.trim().split_once(' ').unwrap_or((value, ""));
    // Only Basic authenticates a client here; a stale Bearer header some SDKs keep sending is
    // not a second method (the token endpoint never read it).
    if !scheme.eq_ignore_ascii_case("basic") {
        return Ok(ClientAuth::Form);
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|_| ClientAuthError::Malformed)?;
    let text = std::str::from_utf8(&raw).map_err(|_| ClientAuthError::Malformed)?;
    let (id, secret) = text.split_once(':').ok_or(ClientAuthError::Malformed)?;
    let (id, secret) = (form_decode(id)?, form_decode(secret)?);
    if id.is_empty() {
        return Err(ClientAuthError::Malformed);
    }
    if form.get("client_secret").is_some() || form.get("client_id").is_some_and(|f| f != id) {
        return Err(ClientAuthError::SeveralMethods);
    }
    Ok(ClientAuth::Basic { id, secret })
}

/// One `application/x-www-form-urlencoded` value: `+` is a space, then percent-decoding
/// (WHATWG URL, "application/x-www-form-urlencoded parsing").
fn form_decode(s: &str) -> Result<String, ClientAuthError> {
    let spaced = s.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| ClientAuthError::Malformed)
}

/// 400 `{"error": ..., "error_description": ...}`; Salesforce uses 400 for every token error,
/// bad credentials included (docs/salesforce-protocol.md §2.3).
pub fn error(error: &str, description: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": error, "error_description": description });
    respond(StatusCode::BAD_REQUEST, JSON, body.to_string())
}

/// The answer to every failed password check, whatever the reason.
pub fn invalid_grant() -> Response<Body> {
    error("invalid_grant", "authentication failure")
}

/// `signature = Base64(HMAC-SHA256(client_secret, id + issued_at))` (docs/salesforce-protocol.md §2.2).
pub fn signature(client_secret: &str, id_url: &str, issued_at: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, client_secret.as_bytes());
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(id_url.as_bytes());
    ctx.update(issued_at.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(ctx.sign().as_ref())
}

/// The token endpoint's success (docs/salesforce-protocol.md §2.2), with a `refresh_token`
/// when one was issued (RFC 6749 §5.1); `scope` then says `refresh_token` too, as Salesforce
/// does.
pub fn token_response(
    access_token: &str,
    instance_url: &str,
    id_url: &str,
    issued_at_ms: u128,
    client_secret: &str,
    refresh_token: Option<&str>,
) -> Response<Body> {
    let issued_at = issued_at_ms.to_string();
    let mut body = serde_json::json!({
        "access_token": access_token,
        "instance_url": instance_url,
        "id": id_url,
        "token_type": "Bearer",
        "issued_at": issued_at,
        "signature": signature(client_secret, id_url, &issued_at),
        "scope": "api",
    });
    if let Some(r) = refresh_token {
        body["refresh_token"] = r.into();
        body["scope"] = "refresh_token api".into();
    }
    respond(StatusCode::OK, JSON, body.to_string())
}

/// Who the identity and userinfo documents describe.
pub struct Identity<'a> {
    pub origin: &'a str,
    pub org18: &'a str,
    pub user_id: &'a str,
    pub username: &'a str,
    pub full_name: &'a str,
    pub email: &'a str,
    pub last_modified: u64,
}

impl Identity<'_> {
    fn display_name(&self) -> &str {
        if self.full_name.is_empty() {
            self.username
        } else {
            self.full_name
        }
    }

    fn names(&self) -> (&str, &str) {
        match self.display_name().rsplit_once(' ') {
            Some((first, last)) => (first, last),
            None => ("", self.display_name()),
        }
    }

    fn urls(&self) -> serde_json::Value {
        let o = self.origin;
        let org = &self.org18[..15];
        serde_json::json!({
            "enterprise": format!("{o}/services/Soap/c/{{version}}/{org}"),
            "metadata": format!("{o}/services/Soap/m/{{version}}/{org}"),
            "partner": format!("{o}/services/Soap/u/{{version}}/{org}"),
            "rest": format!("{o}/services/data/v{{version}}/"),
            "sobjects": format!("{o}/services/data/v{{version}}/sobjects/"),
            "search": format!("{o}/services/data/v{{version}}/search/"),
            "query": format!("{o}/services/data/v{{version}}/query/"),
            "profile": format!("{o}/{}", self.user_id),
        })
    }

    /// The identity URL document (`GET /id/{org}/{user}`, docs/salesforce-protocol.md §2.7).
    pub fn id_document(&self) -> serde_json::Value {
        let (first, last) = self.names();
        serde_json::json!({
            "id": format!("{}/id/{}/{}", self.origin, self.org18, self.user_id),
            "asserted_user": true,
            "user_id": self.user_id,
            "organization_id": self.org18,
            "username": self.username,
            "nick_name": self.username.split('@').next().unwrap_or(self.username),
            "display_name": self.display_name(),
            "email": self.email,
            "email_verified": true,
            "first_name": first,
            "last_name": last,
            "timezone": "GMT",
            "active": true,
            "user_type": "STANDARD",
            "language": "en_US",
            "locale": "en_US",
            "utcOffset": 0,
            "last_modified_date": httpdate_iso(self.last_modified),
            "urls": self.urls(),
        })
    }

    /// The OpenID Connect userinfo document (`GET /services/oauth2/userinfo`).
    pub fn userinfo_document(&self) -> serde_json::Value {
        let (first, last) = self.names();
        serde_json::json!({
            "sub": format!("{}/id/{}/{}", self.origin, self.org18, self.user_id),
            "user_id": self.user_id,
            "organization_id": self.org18,
            "preferred_username": self.username,
            "nickname": self.username.split('@').next().unwrap_or(self.username),
            "name": self.display_name(),
            "email": self.email,
            "email_verified": true,
            "given_name": first,
            "family_name": last,
            "zoneinfo": "GMT",
            "active": true,
            "user_type": "STANDARD",
            "language": "en_US",
            "locale": "en_US",
            "utcOffset": 0,
            "updated_at": httpdate_iso(self.last_modified),
            "urls": self.urls(),
        })
    }
}

/// Seconds since the epoch as `2024-01-31T12:00:00Z` (RFC 3339).
fn httpdate_iso(secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_of_id_and_issued_at() {
        // Independent computation with ring's one-shot API.
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"secret");
        let expected = base64::engine::general_purpose::STANDARD
            .encode(hmac::sign(&key, b"https://h/id/00D/0051719999999999").as_ref());
        assert_eq!(
            signature("secret", "https://h/id/00D/005", "1719999999999"),
            expected
        );
    }

    #[test]
    fn basic_client_credentials_are_form_decoded_and_one_method_only() {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let h = |v: String| {
            let mut h = http::HeaderMap::new();
            h.insert("authorization", v.parse().unwrap());
            h
        };
        let empty = Form::default();
        assert_eq!(
            client_auth(&h(format!("Basic {}", b64("my%3Aapp:s%2Bcr+t%25"))), &empty),
            Ok(ClientAuth::Basic {
                id: "my:app".into(),
                secret: "s+cr t%".into()
            })
        );
        assert_eq!(
            client_auth(&http::HeaderMap::new(), &empty),
            Ok(ClientAuth::Form)
        );
        let both = Form::parse(b"client_secret=x").unwrap();
        assert_eq!(
            client_auth(&h(format!("Basic {}", b64("a:b"))), &both),
            Err(ClientAuthError::SeveralMethods)
        );
        let same_id = Form::parse(b"client_id=a").unwrap();
        assert!(client_auth(&h(format!("Basic {}", b64("a:b"))), &same_id).is_ok());
        let other_id = Form::parse(b"client_id=z").unwrap();
        assert_eq!(
            client_auth(&h(format!("Basic {}", b64("a:b"))), &other_id),
            Err(ClientAuthError::SeveralMethods)
        );
        assert_eq!(
            client_auth(&h("Bearer x".into()), &empty),
            Ok(ClientAuth::Form)
        );
        for bad in [
            "Basic !!",
            &format!("Basic {}", b64("nocolon")),
            &format!("Basic {}", b64(":s")),
        ] {
            assert_eq!(
                client_auth(&h(bad.to_owned()), &empty),
                Err(ClientAuthError::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn forms_reject_repeats_and_read_fields() {
        let f = Form::parse(b"grant_type=password&username=a%40b.com&password=p+w").unwrap();
        assert_eq!(f.get("username"), Some("a@b.com"));
        assert_eq!(f.get("password"), Some("p w"));
        assert_eq!(f.get("client_id"), None);
        assert_eq!(Form::parse(b"a=%FF").unwrap_err(), FormError::NotUtf8);
        assert_eq!(Form::parse(b"a=\xff").unwrap_err(), FormError::NotUtf8);
        assert_eq!(
            Form::parse("a=%EF%BF%BD".as_bytes()).unwrap().get("a"),
            Some("\u{FFFD}")
        );
        assert_eq!(
            Form::parse(b"a=1&a=2").unwrap_err(),
            FormError::Repeated("a".into())
        );
    }
}
