//! Reading a request body of a given kind, one way for every endpoint that takes one: the
//! content type is checked first (415 otherwise), then at most `max_login_body_bytes` are read
//! within `body_read_timeout`, counted against the memory all buffered bodies share
//! (`body::Budget`). SOAP envelopes are read by their handler (`handlers::soap`), which may
//! read past that limit once the caller's session is known.

use bytes::Bytes;
use http::Request;
use http::header;

use super::App;
use super::body::{self, Held, ReqBody};
use super::refusal::Refusal;

/// What a body must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `application/json`.
    Json,
    /// `application/x-www-form-urlencoded` (HTML forms, the OAuth token endpoint).
    Form,
}

impl Kind {
    fn media_type(self) -> &'static str {
        match self {
            Kind::Json => "application/json",
            Kind::Form => "application/x-www-form-urlencoded",
        }
    }

    /// Whether a request's `Content-Type` is this kind (parameters such as a charset allowed).
    pub fn matches(self, headers: &http::HeaderMap) -> bool {
        headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.trim_start()
                    .to_ascii_lowercase()
                    .starts_with(self.media_type())
            })
    }
}

/// The request's head and its body, whole, or the refusal that says why not.
pub async fn body_of(
    app: &App,
    req: Request<ReqBody>,
    kind: Kind,
) -> Result<(http::request::Parts, Bytes, Held), Refusal> {
    if !kind.matches(req.headers()) {
        return Err(Refusal::UnsupportedMedia(
            format!("Content-Type must be {}", kind.media_type()).into(),
        ));
    }
    let (parts, incoming) = req.into_parts();
    let s = &app.cfg.server;
    let (bytes, held) = body::read(
        incoming,
        &parts.headers,
        s.max_login_body_bytes,
        s.body_read_timeout,
        &app.bodies,
    )
    .await?;
    Ok((parts, bytes, held))
}

/// A JSON body parsed into `T`; a problem is named (a field, a position) without quoting a
/// value, which may be a password.
pub async fn json<T: serde::de::DeserializeOwned>(
    app: &App,
    req: Request<ReqBody>,
) -> Result<T, Refusal> {
    let (_, bytes, _held) = body_of(app, req, Kind::Json).await?;
    serde_json::from_slice(&bytes).map_err(|e| Refusal::invalid(json_problem(&e)))
}

/// What is wrong with a JSON body, for the caller. serde_json quotes the offending value in
/// type errors ("invalid type: string \"...\""), which may be a password: only field-name
/// errors are passed on verbatim.
pub fn json_problem(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let what = if text.starts_with("missing field") || text.starts_with("unknown field") {
        text.split(" at line").next().unwrap_or_default().to_owned()
    } else if e.is_data() {
        "a field has a value of the wrong type".to_owned()
    } else {
        "the body is not valid JSON".to_owned()
    };
    format!(
        "invalid JSON body ({what}, line {} column {})",
        e.line(),
        e.column()
    )
}
