//! The pre-flight check of the CA's directory (`check-config`, and the start): fetched the
//! way the ACME client will fetch it (the same trust roots), bounded in time and size, and
//! checked to name the resources an order needs.

use std::sync::Arc;
use std::time::Duration;

use super::{AbortOnDrop, AcmeError};
use crate::config::AcmeConfig;

/// How long the directory check waits for the CA (connect, TLS, answer).
pub const DIRECTORY_TIMEOUT: Duration = Duration::from_secs(10);

/// The most of a directory document read (Let's Encrypt's is under 1 KiB).
const DIRECTORY_MAX_BYTES: usize = 64 << 10;

/// Fetches the CA's directory the way the ACME client will (the same trust roots) and checks
/// that it is one: a JSON object naming the `newNonce`, `newAccount` and `newOrder` resources
/// (RFC 8555 §7.1.1). Bounded by [`DIRECTORY_TIMEOUT`]. For `check-config` and the start.
pub async fn check_directory(cfg: &AcmeConfig) -> Result<(), AcmeError> {
    let err = |reason: String| AcmeError::Directory {
        url: cfg.directory.clone(),
        reason,
    };
    match tokio::time::timeout(DIRECTORY_TIMEOUT, fetch_directory(cfg)).await {
        Ok(Ok(doc)) => {
            let missing: Vec<_> = ["newNonce", "newAccount", "newOrder"]
                .into_iter()
                .filter(|k| !doc.get(k).is_some_and(serde_json::Value::is_string))
                .collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(err(format!(
                    "not an ACME directory (no {})",
                    missing.join(", ")
                )))
            }
        }
        Ok(Err(reason)) => Err(err(reason)),
        Err(_) => Err(err(format!(
            "no answer within {}s",
            DIRECTORY_TIMEOUT.as_secs()
        ))),
    }
}

/// `GET` the directory URL over HTTPS/1.1; its JSON document, or why not.
async fn fetch_directory(cfg: &AcmeConfig) -> Result<serde_json::Value, String> {
    use http_body_util::BodyExt as _;
    let uri: http::Uri = cfg
        .directory
        .parse()
        .map_err(|e| format!("not a URL: {e}"))?;
    let (Some(authority), Some(host)) = (uri.authority(), uri.host()) else {
        return Err("not a URL with a host".into());
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let roots = crate::tls::client_roots(cfg.ca_roots.as_deref())?;
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("cannot connect to {authority}: {e}"))?;
    let name = rustls_pki_types::ServerName::try_from(host.clone())
        .map_err(|e| format!("'{host}': {e}"))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS with {authority} failed: {e}"))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    // The connection is driven beside the request and ends with it (or with the timeout).
    let conn = AbortOnDrop(tokio::spawn(conn));
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let req = http::Request::get(path)
        .header(http::header::HOST, authority.as_str())
        .header(
            http::header::USER_AGENT,
            concat!("tokengate/", env!("CARGO_PKG_VERSION")),
        )
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    if !status.is_success() {
        return Err(format!("answered {status}, not an ACME directory"));
    }
    let body = http_body_util::Limited::new(resp.into_body(), DIRECTORY_MAX_BYTES)
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes();
    drop(conn);
    serde_json::from_slice(&body).map_err(|_| "not an ACME directory (not JSON)".to_owned())
}
