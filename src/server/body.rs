//! Reading request bodies that tokengate must look at (logins, SOAP envelopes): size-capped,
//! time-capped, and gzip-decoded when the client compressed them (WSC and Beatbox do,
//! reference §1.2). Bodies that are only forwarded are never read here.

use std::io::Read as _;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http::header::CONTENT_ENCODING;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the request body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the request body did not arrive in time")]
    Timeout,
    #[error("the request body could not be read")]
    Io,
    #[error("the gzip request body is corrupt")]
    BadGzip,
    #[error("content encoding '{0}' is not supported (use gzip or none)")]
    UnsupportedEncoding(String),
}

pub async fn read(
    body: Incoming,
    headers: &HeaderMap,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, BodyError> {
    let collected = tokio::time::timeout(timeout, Limited::new(body, limit).collect())
        .await
        .map_err(|_| BodyError::Timeout)?;
    let raw = match collected {
        Ok(c) => c.to_bytes(),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return Err(BodyError::TooLarge(limit));
        }
        Err(_) => return Err(BodyError::Io),
    };
    let encoding = headers
        .get(CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase())
        .unwrap_or_default();
    match encoding.as_str() {
        "" | "identity" => Ok(raw),
        "gzip" | "x-gzip" => {
            // The decoded size is capped too, so a small gzip bomb cannot blow up memory.
            let mut out = Vec::with_capacity(raw.len() * 4);
            let mut dec = flate2::read::GzDecoder::new(&raw[..]).take(limit as u64 + 1);
            dec.read_to_end(&mut out).map_err(|_| BodyError::BadGzip)?;
            if out.len() > limit {
                return Err(BodyError::TooLarge(limit));
            }
            Ok(out.into())
        }
        other => Err(BodyError::UnsupportedEncoding(
            other.chars().take(40).collect(),
        )),
    }
}
