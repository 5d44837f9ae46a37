//! REST and Bulk error shapes, byte-compatible with Salesforce's (docs/salesforce-protocol.md §3.2).

use http::{HeaderValue, Response, StatusCode, header};

use super::{Body, JSON_SF, respond};

/// REST and Bulk 2.0: 401 with a JSON *array*; simple-salesforce indexes `[0]['errorCode']`.
pub fn invalid_session() -> Response<Body> {
    respond(
        StatusCode::UNAUTHORIZED,
        JSON_SF,
        r#"[{"message":"Session expired or invalid","errorCode":"INVALID_SESSION_ID"}]"#,
    )
}

/// Bulk API 1.0 (`/services/async/...`): 400 with the asyncapi XML error.
pub fn bulk_invalid_session() -> Response<Body> {
    respond(
        StatusCode::BAD_REQUEST,
        "application/xml",
        r#"<?xml version="1.0" encoding="UTF-8"?><error xmlns="http://www.force.com/2009/06/asyncapi/dataload"><exceptionCode>InvalidSessionId</exceptionCode><exceptionMessage>Invalid session id</exceptionMessage></error>"#,
    )
}

/// A failed HTTP Basic login on a proxied call: 401 with a Basic challenge (RFC 7617 §2) and
/// the generic message every other dialect uses.
pub fn basic_login_failed() -> Response<Body> {
    let mut r = respond(
        StatusCode::UNAUTHORIZED,
        JSON_SF,
        r#"[{"message":"Invalid username, password, security token; or user locked out.","errorCode":"INVALID_LOGIN"}]"#,
    );
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(r#"Basic realm="tokengate", charset="UTF-8""#),
    );
    r
}

/// What a locked account is told: until when (`u64::MAX`: until an administrator unlocks it).
pub fn locked_message(until: u64) -> String {
    let when = if until == u64::MAX {
        "until an administrator unlocks it".to_owned()
    } else {
        format!(
            "until {}",
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(until)
            )
        )
    };
    format!("Your account is locked after too many failed logins, {when}.")
}

/// 423 for a locked account, told only to a caller who presented the right credentials.
pub fn locked(until: u64) -> Response<Body> {
    let body = serde_json::json!([{
        "message": locked_message(until),
        "errorCode": "PASSWORD_LOCKOUT",
        "lockedUntil": (until != u64::MAX).then_some(until),
    }]);
    let mut r = respond(StatusCode::LOCKED, JSON_SF, body.to_string());
    if until != u64::MAX {
        let secs = until.saturating_sub(crate::now_secs()).max(1);
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    r
}

/// A REST-dialect error that is not about the session (bad request, busy, forbidden).
pub fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let body = serde_json::json!([{ "message": message, "errorCode": code }]);
    respond(status, JSON_SF, body.to_string())
}
