//! The target of a load run and how to talk to it: its address, how its certificate is trusted
//! (a `--ca` file, whose certificates are pinned or trusted as CAs, the system roots, or
//! `--insecure`'s no verification at all), one keep-alive
//! HTTP/1.1 connection (`Conn`) with its timeouts, and the requests every scenario builds
//! (Basic credentials, the SOAP login and the session it yields).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;

use super::{LoadError, LoadUser};

/// Where the target is and how to trust it.
#[derive(Clone)]
pub struct Target {
    pub uri: Uri,
    pub addr: SocketAddr,
    pub server_name: ServerName<'static>,
    pub host_header: String,
    /// `None` for an `http://` target: an upstream measured directly, without credentials.
    pub(super) tls: Option<Arc<rustls::ClientConfig>>,
}

impl Target {
    pub async fn new(url: &str, ca: Option<&Path>, insecure: bool) -> Result<Self, LoadError> {
        let uri: Uri = url.parse().map_err(|_| LoadError::Target(url.into()))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(LoadError::Target(url.into())),
        };
        let host = uri
            .host()
            .ok_or_else(|| LoadError::Target(url.into()))?
            .to_owned();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let host_for_lookup = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let addr = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::net::lookup_host((host_for_lookup.as_str(), port)),
        )
        .await
        .map_err(|_| LoadError::Connect {
            addr: url.into(),
            reason: "name lookup timed out".into(),
        })?
        .map_err(|e| LoadError::Connect {
            addr: url.into(),
            reason: e.to_string(),
        })?
        .next()
        .ok_or_else(|| LoadError::Target(url.into()))?;
        let server_name = ServerName::try_from(host_for_lookup.clone())
            .map_err(|_| LoadError::Target(url.into()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let mut tls = if insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(crate::tls::AnyCertificate::new(
                    provider,
                )))
                .with_no_client_auth()
        } else if let Some(ca) = ca {
            // The file's certificates pinned (a self-signed server certificate), or CAs.
            let verifier =
                crate::tls::PinnedOrChained::from_pem_file(ca, provider).map_err(|reason| {
                    LoadError::Ca {
                        path: ca.display().to_string(),
                        reason,
                    }
                })?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_no_client_auth()
        } else {
            let roots = crate::tls::client_roots(None).map_err(|reason| LoadError::Ca {
                path: String::new(),
                reason,
            })?;
            builder.with_root_certificates(roots).with_no_client_auth()
        };
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            host_header: uri.authority().map(|a| a.to_string()).unwrap_or(host),
            uri,
            addr,
            server_name,
            tls: https.then(|| Arc::new(tls)),
        })
    }
}

/// One keep-alive HTTP/1.1 connection over TLS.
pub struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

impl Conn {
    pub async fn open(t: &Target) -> Result<Self, LoadError> {
        let err = |reason: String| LoadError::Connect {
            addr: t.addr.to_string(),
            reason,
        };
        let connect = async {
            let tcp = tokio::net::TcpStream::connect(t.addr).await?;
            tcp.set_nodelay(true)?;
            Ok::<_, std::io::Error>(tcp)
        };
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| err("timed out".into()))?
            .map_err(|e| err(e.to_string()))?;
        let Some(tls) = &t.tls else {
            return Self::handshake(tcp).await.map_err(err);
        };
        let tls = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio_rustls::TlsConnector::from(tls.clone()).connect(t.server_name.clone(), tcp),
        )
        .await
        .map_err(|_| err("TLS handshake timed out".into()))?
        .map_err(|e| err(e.to_string()))?;
        Self::handshake(tls).await.map_err(err)
    }

    async fn handshake<T>(io: T) -> Result<Self, String>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = tokio::time::timeout(
            CONNECT_TIMEOUT,
            hyper::client::conn::http1::handshake(TokioIo::new(io)),
        )
        .await
        .map_err(|_| "HTTP handshake timed out".to_owned())?
        .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Self { sender })
    }

    /// Sends one request and reads the whole answer.
    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes), String> {
        let exchange = async {
            self.sender.ready().await.map_err(|e| e.to_string())?;
            let resp = self
                .sender
                .send_request(req)
                .await
                .map_err(|e| e.to_string())?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| "timeout".to_owned())?
    }
}

/// A request to the target, with its `Host` header.
pub fn request(
    t: &Target,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", &t.host_header);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(body)).expect("valid request")
}

/// An HTTP Basic `Authorization` value.
pub fn basic(user: &str, secret: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{secret}"))
    )
}

fn xml_escape(s: &str) -> String {
    quick_xml::escape::escape(s).into_owned()
}

/// A SOAP `login()` envelope, as Salesforce clients send it.
pub(super) fn soap_login_body(user: &str, secret: &str) -> Bytes {
    Bytes::from(format!(
        r#"<se:Envelope xmlns:se="http://schemas.xmlsoap.org/soap/envelope/"><se:Body><login xmlns="urn:partner.soap.sforce.com"><username>{}</username><password>{}</password></login></se:Body></se:Envelope>"#,
        xml_escape(user),
        xml_escape(secret)
    ))
}

/// A SOAP login on `c`; the session id.
pub(super) async fn login_session(
    t: &Target,
    c: &mut Conn,
    u: &LoadUser,
) -> Result<String, String> {
    let req = request(
        t,
        Method::POST,
        "/services/Soap/u/59.0",
        &[("content-type", "text/xml")],
        soap_login_body(&u.username, &u.secret),
    );
    match c.send(req).await {
        Ok((StatusCode::OK, body)) => String::from_utf8_lossy(&body)
            .split_once("<sessionId>")
            .and_then(|(_, r)| r.split_once("</sessionId>"))
            .map(|(s, _)| s.to_owned())
            .ok_or_else(|| "login answer without a sessionId".to_owned()),
        Ok((status, _)) => Err(format!("login {status}")),
        Err(e) => Err(short(&e)),
    }
}

/// An error message cut to a length that keeps the report's error table readable.
pub(super) fn short(e: &str) -> String {
    e.chars().take(80).collect()
}
