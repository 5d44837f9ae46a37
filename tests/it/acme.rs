//! `[tls] acme`: a certificate ordered from a real ACME CA (Pebble, started by the test) with
//! the TLS-ALPN-01 challenge answered by tokengate's own listener, served to clients that trust
//! only that CA, and kept across a restart without a new order.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokengate::config::AcmeConfig;

use crate::support::pebble::{self, Pebble};
use crate::support::{TestServer, Upstream};

/// The certificate's name; Pebble's DNS answers 127.0.0.1 for every name.
pub(crate) const DOMAIN: &str = "api.tokengate.test";

/// How long the first order may take (account, order, validation, issuance).
pub(crate) const ORDER_TIMEOUT: Duration = Duration::from_secs(60);

/// A TLS client for `DOMAIN` that trusts only `root_pem`.
pub(crate) fn client_trusting(root_pem: &str) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

/// Connects to the server as `DOMAIN` until the handshake verifies (the placeholder does not)
/// and `GET /tokengate/ready` answers; returns the served leaf certificate and the status.
pub(crate) async fn served_certificate(
    connector: &tokio_rustls::TlsConnector,
    ts: &TestServer,
    pebble: &Pebble,
    within: Duration,
) -> (Vec<u8>, http::StatusCode) {
    let deadline = Instant::now() + within;
    let mut last = String::new();
    while Instant::now() < deadline {
        let attempt = async {
            let tcp = tokio::net::TcpStream::connect(ts.addr)
                .await
                .map_err(|e| e.to_string())?;
            let name = ServerName::try_from(DOMAIN).unwrap();
            let tls = connector
                .connect(name, tcp)
                .await
                .map_err(|e| e.to_string())?;
            let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            let req = http::Request::get("/tokengate/ready")
                .header("host", DOMAIN)
                .body(Empty::<bytes::Bytes>::new())
                .unwrap();
            let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status();
            let _ = resp.into_body().collect().await;
            Ok::<_, String>((leaf, status))
        };
        match tokio::time::timeout(Duration::from_secs(5), attempt).await {
            Ok(Ok(r)) => return r,
            Ok(Err(e)) => last = e,
            Err(_) => last = "timed out".into(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!(
        "no certificate from Pebble was served within {within:?} (last: {last})\n{}",
        pebble.logs()
    );
}

pub(crate) fn issuer(der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    cert.issuer().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_acme_certificate_is_ordered_by_tls_alpn_served_and_kept_across_a_restart() {
    // Pebble's validator dials the port tokengate will listen on.
    let listen = pebble::free_addr();
    let Some(pebble) = Pebble::start(listen.port()) else {
        return;
    };
    let root = pebble.root().await;
    let connector = client_trusting(&root);
    let upstream = Upstream::start().await;
    let (directory, ca) = (pebble.directory(), pebble.https_ca());
    let ts = TestServer::start_with(&upstream.url(), |cfg| {
        cfg.server.listen = listen;
        cfg.tls.acme = Some(AcmeConfig {
            domains: vec![DOMAIN.into()],
            contact: Some("mailto:ops@tokengate.test".into()),
            directory,
            ca_roots: Some(ca),
            cache: cfg.store.path.join("acme"),
        });
    })
    .await;

    // Until the CA has issued, the placeholder is served: a client trusting only the CA refuses
    // it; then the CA's certificate is served and a request goes through.
    let (first, status) = served_certificate(&connector, &ts, &pebble, ORDER_TIMEOUT).await;
    assert_eq!(status, http::StatusCode::OK);
    assert!(issuer(&first).contains("Pebble"), "{}", issuer(&first));
    assert_eq!(pebble.orders(), 1, "{}", pebble.logs());
    let metrics = ts.metrics();
    assert!(
        metrics.contains("tokengate_acme_orders_total{outcome=\"issued\"} 1"),
        "{metrics}"
    );
    // A single node keeps the cache directory; on PostgreSQL the cache is the database, which
    // acme_replicas.rs tests (and `tls status` on it).
    if !crate::support::on_postgres() {
        let cache = ts.cfg.store.path.join("acme");
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&cache).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "the ACME cache is the owner's only");
        }

        // `tokengate tls status` reads the same configuration's cache: the certificate in use.
        let toml = ts.dir.path().join("acme-cli.toml");
        std::fs::write(
            &toml,
            format!(
                "[store]\npath = \"{}\"\n[tls]\nacme = {{ domains = [\"{DOMAIN}\"], directory = \"{}\", ca_roots = \"{}\" }}\n",
                ts.cfg.store.path.display(),
                pebble.directory(),
                pebble.https_ca().display(),
            ),
        )
        .unwrap();
        let out = tokio::task::block_in_place(|| {
            crate::support::process::run(&toml, &["tls", "status"], None, &[])
        });
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains(&format!("names: {DOMAIN}")), "{stdout}");
        assert!(stdout.contains("issuer: CN=Pebble"), "{stdout}");
        assert!(stdout.contains("next renewal: "), "{stdout}");
        assert!(stdout.contains("source: ACME, https://"), "{stdout}");
    }

    // A restart serves the cached certificate without ordering again.
    let ts = ts.restart().await;
    let (again, status) =
        served_certificate(&connector, &ts, &pebble, Duration::from_secs(20)).await;
    assert_eq!(status, http::StatusCode::OK);
    assert_eq!(
        again, first,
        "the cached certificate is served after a restart"
    );
    assert_eq!(pebble.orders(), 1, "no new order after a restart");
    assert!(
        ts.metrics()
            .contains("tokengate_acme_orders_total{outcome=\"issued\"} 0")
    );
    ts.stop().await;
}

#[tokio::test]
async fn a_failing_acme_ca_leaves_the_placeholder_served_and_readiness_degraded() {
    // A directory nobody listens on: every order fails at once.
    let (hold, closed) = crate::support::refusing_address();
    let upstream = Upstream::start().await;
    let ts = TestServer::start_with(&upstream.url(), |cfg| {
        cfg.tls.acme = Some(AcmeConfig {
            domains: vec![DOMAIN.into()],
            contact: None,
            directory: format!("https://{closed}/dir"),
            ca_roots: None,
            cache: cfg.store.path.join("acme"),
        });
    })
    .await;
    // The placeholder is the generated self-signed pair, which the test client trusts: the
    // listener stays up and answers while the CA is unreachable.
    let deadline = Instant::now() + Duration::from_secs(20);
    let ready = loop {
        let r = ts.client().get("/tokengate/ready", &[]).await;
        assert_eq!(r.status, http::StatusCode::OK, "{}", r.text());
        if r.json()["acme"] == "degraded" || Instant::now() > deadline {
            break r.json();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(ready["acme"], "degraded", "{ready}");
    assert_eq!(ready["status"], "ready", "{ready}");
    let metrics = ts.metrics();
    assert!(
        !metrics.contains("tokengate_acme_orders_total{outcome=\"failed\"} 0"),
        "{metrics}"
    );
    ts.stop().await;
    drop(hold);
}
