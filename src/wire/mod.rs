//! The dialects clients speak: SOAP `login()` (`soap`), the OAuth 2.0 password grant
//! (`oauth`), HTTP Basic and session headers (`credentials`), and the REST/Bulk error shapes
//! (`rest`). Parsing requests and rendering byte-compatible answers lives here; nothing here
//! touches storage or hashing.

pub mod credentials;
pub mod oauth;
pub mod rest;
pub mod soap;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::BoxBody};

/// Why a body stopped before its end: the upstream's connection failed, or went quiet.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// The one body type of every response, local or streamed from the upstream (and of the
/// requests tokengate sends upstream).
pub type Body = BoxBody<Bytes, BodyError>;

pub const TEXT_XML: &str = "text/xml; charset=utf-8";
/// Salesforce's REST content type, byte for byte (docs/salesforce-protocol.md §3.2).
pub const JSON_SF: &str = "application/json;charset=UTF-8";
pub const JSON: &str = "application/json";

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// An empty body. `Empty` has no size, so boxing it allocates nothing.
pub fn empty() -> Body {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed()
}

/// A locally generated response. Never cached: answers carry sessions or personal data.
pub fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache,must-revalidate,max-age=0,no-store,private"),
    );
    r
}

/// The login history as a CSV download (console and admin API alike).
pub fn history_csv(rows: &[crate::store::HistoryRow]) -> Response<Body> {
    csv_download(crate::history::to_csv(rows, true), "login-history.csv")
}

/// CSV text as a download named `filename` (the login history, the audit trail).
pub fn csv_download(csv: String, filename: &'static str) -> Response<Body> {
    let mut r = respond(StatusCode::OK, "text/csv; charset=utf-8", csv);
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{filename}\"")) {
        r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    r
}

/// What [`encode_component`] leaves as it is: letters, digits and `-._*` (what HTML forms
/// leave, so links match the form actions a browser builds).
const COMPONENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'*');

/// A value made safe for a path segment or a query value (`a@b.c` → `a%40b.c`).
pub fn encode_component(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, COMPONENT).to_string()
}

/// A percent-encoded path segment decoded (RFC 3986 §2.1); `+` stays `+` in a path.
pub fn decode_component(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// A JSON answer in tokengate's own shape (`{"error": ..., "message": ...}`).
pub fn json_error(status: StatusCode, error: &str, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": error, "message": message });
    respond(status, JSON, body.to_string())
}
