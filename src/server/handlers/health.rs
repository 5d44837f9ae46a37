//! `GET /tokengate/health` (liveness) and `GET /tokengate/ready` (readiness).

use http::{Response, StatusCode};

use crate::server::App;
use crate::wire::{Body, JSON, respond};

/// Liveness: the process answers.
pub fn health() -> Response<Body> {
    respond(StatusCode::OK, JSON, r#"{"status":"ok"}"#)
}

/// Readiness: the store answers and the upstream accepts connections: 200 when both do, 503
/// otherwise; JSON either way. The SMTP server (when mail goes over SMTP) is checked and
/// reported, but an outage of it only makes the answer `"mail": "degraded"`: logins and
/// forwarded calls do not need mail (token mails wait or fail on their own, and the
/// Compliance copies queue for a retry), so a load balancer must keep the replica. Likewise
/// with `[tls] acme`, `"acme": "degraded"` while the latest certificate order failed but the
/// certificate in force is valid; `"pending"` (no certificate from the CA yet, the
/// placeholder is served) and `"expired"` are 503: clients would refuse the certificate.
pub async fn ready(app: &App) -> Response<Body> {
    const PROBE: std::time::Duration = std::time::Duration::from_secs(2);
    // The answer names the failing check and nothing more (anyone may ask); the reason goes
    // to the log.
    async fn connect(what: &str, host: &str, port: u16) -> &'static str {
        match tokio::time::timeout(PROBE, tokio::net::TcpStream::connect((host, port))).await {
            Ok(Ok(_)) => "ok",
            Ok(Err(e)) => {
                tracing::warn!(check = what, error = %e, "readiness check failed");
                "error"
            }
            Err(_) => {
                tracing::warn!(check = what, "readiness check timed out");
                "error"
            }
        }
    }
    let store = match app.store.setting("readiness") {
        Ok(_) => "ok",
        Err(e) => {
            tracing::warn!(check = "store", error = %e, "readiness check failed");
            "error"
        }
    };
    let url = &app.cfg.upstream.url;
    let port = url
        .port_u16()
        .unwrap_or(if url.scheme_str() == Some("https") {
            443
        } else {
            80
        });
    let host = url
        .host()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let upstream = connect("upstream", host, port).await;
    let smtp = match &app.cfg.mail.transport {
        crate::config::MailTransport::Smtp { host, port, .. } => connect("smtp", host, *port).await,
        crate::config::MailTransport::File { .. } => "file",
        crate::config::MailTransport::None => "not configured",
    };
    let acme = app.acme().map(crate::acme::Acme::readiness);
    let ok = store == "ok"
        && upstream == "ok"
        && acme.is_none_or(crate::acme::Readiness::serves_trusted);
    let mut body = serde_json::json!({
        "status": if ok { "ready" } else { "not ready" },
        "mail": match smtp {
            "error" => "degraded",
            "not configured" => "not configured",
            _ => "ok",
        },
        "checks": { "store": store, "upstream": upstream, "smtp": smtp },
    });
    // `[tls] acme`: a failing order leaves the certificate in force served, so the instance
    // stays ready; "degraded" asks for attention before the certificate ends.
    if let Some(acme) = acme {
        body["acme"] = acme.as_str().into();
    }
    respond(
        if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        JSON,
        body.to_string(),
    )
}
