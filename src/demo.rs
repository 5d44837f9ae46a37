//! The zero-setup demo: a built-in echo upstream on loopback that answers every call with a
//! Salesforce-shaped query result describing what it received, so a newcomer can watch a
//! login and a proxied call work end to end.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

/// Starts the echo upstream on `127.0.0.1:0` and returns its address.
pub async fn start_echo_upstream() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut http = hyper::server::conn::http1::Builder::new();
                http.timer(TokioTimer::new());
                let _ = http
                    .serve_connection(TokioIo::new(tcp), service_fn(echo))
                    .await;
            });
        }
    });
    Ok(addr)
}

async fn echo(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let h = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let record = serde_json::json!({
        "attributes": { "type": "EchoedRequest" },
        "Method": req.method().as_str(),
        "Path": req.uri().path_and_query().map_or("/", |p| p.as_str()),
        "User": h("x-tokengate-user"),
        "UserId": h("x-tokengate-user-id"),
        "ForwardedFor": h("x-forwarded-for"),
        "CredentialsForwarded": req.headers().contains_key("authorization"),
    });
    let body = serde_json::json!({ "totalSize": 1, "done": true, "records": [record] });
    Ok(Response::builder()
        .header("content-type", "application/json;charset=UTF-8")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("static response"))
}
