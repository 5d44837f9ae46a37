//! `[tls] acme`: a certificate ordered from a real ACME CA (Pebble, started by the test) with
//! the TLS-ALPN-01 challenge answered by tokengate's own listener, served to clients that trust
//! only that CA, and kept across a restart without a new order; readiness before the first
//! certificate; renewal of a short-lived certificate under traffic; a CA that is down, or that
//! stalls, during a renewal (and the certificate's end while it does); bad directory URLs.
//!
//! With `TOKENGATE_TEST_STORE=postgres` each test's server is a lone replica of the shared
//! path (`acme_shared`): it leads, so it orders and renews from the database under the same
//! driving task and watchdog and reports readiness as a single node does; every test here
//! means the same there. Only the cache directory and `tls status` on it are sled's
//! (`acme_replicas.rs` covers the database's).

use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokengate::config::AcmeConfig;

use crate::support::pebble::{self, Pebble, SilentCa, StallingRelay};
use crate::support::{PASSWORD, TestServer, Upstream, basic, metric};

/// The certificate's name; Pebble's DNS answers 127.0.0.1 for every name.
pub(crate) const DOMAIN: &str = "api.tokengate.test";

/// How long the first order may take (account, order, validation, issuance).
pub(crate) const ORDER_TIMEOUT: Duration = Duration::from_secs(60);

/// `[tls] acme` for `DOMAIN` in the test server's data directory.
pub(crate) fn acme_config(
    cfg: &tokengate::config::Config,
    directory: String,
    ca_roots: Option<std::path::PathBuf>,
) -> AcmeConfig {
    AcmeConfig {
        domains: vec![DOMAIN.into()],
        contact: Some("mailto:ops@tokengate.test".into()),
        directory,
        ca_roots,
        order_timeout: tokengate::config::ACME_ORDER_TIMEOUT,
        cache: cfg.store.path.join("acme"),
    }
}

/// A test server on `listen` (the port Pebble validates) with its certificate from `pebble`.
async fn server_on_pebble(pebble: &Pebble, listen: std::net::SocketAddr) -> (Upstream, TestServer) {
    let upstream = Upstream::start().await;
    let (directory, ca) = (pebble.directory(), pebble.https_ca());
    let ts = TestServer::start_with(&upstream.url(), |cfg| {
        cfg.server.listen = listen;
        cfg.tls.acme = Some(acme_config(cfg, directory, Some(ca)));
    })
    .await;
    (upstream, ts)
}

pub(crate) fn orders(ts: &TestServer, outcome: &str) -> u64 {
    metric(
        &ts.metrics(),
        &format!("tokengate_acme_orders_total{{outcome=\"{outcome}\"}}"),
    )
}

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
    // Every connection a full handshake: a resumed session shows the certificate it began with.
    cfg.resumption = rustls::client::Resumption::disabled();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

/// One request on a new connection to `addr` as `DOMAIN`: the leaf certificate the server
/// presented, the status and the body.
pub(crate) async fn fetch(
    connector: &tokio_rustls::TlsConnector,
    addr: std::net::SocketAddr,
    path: &str,
    authorization: Option<&str>,
) -> Result<(Vec<u8>, http::StatusCode, bytes::Bytes), String> {
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(addr)
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
        let mut req = http::Request::get(path).header("host", DOMAIN);
        if let Some(a) = authorization {
            req = req.header("authorization", a);
        }
        let req = req.body(Empty::<bytes::Bytes>::new()).unwrap();
        let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok::<_, String>((leaf, status, body))
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
}

/// Connects to the server as `DOMAIN` until the handshake verifies (the placeholder does not)
/// and `GET /tokengate/ready` answers; returns the served leaf certificate, the status and
/// the readiness document.
pub(crate) async fn served_certificate(
    connector: &tokio_rustls::TlsConnector,
    ts: &TestServer,
    pebble: &Pebble,
    within: Duration,
) -> (Vec<u8>, http::StatusCode, serde_json::Value) {
    let deadline = Instant::now() + within;
    let mut last = String::new();
    while Instant::now() < deadline {
        match fetch(connector, ts.addr, "/tokengate/ready", None).await {
            Ok((leaf, status, body)) => {
                return (leaf, status, serde_json::from_slice(&body).unwrap());
            }
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!(
        "no certificate from Pebble was served within {within:?} (last: {last})\n{}",
        pebble.logs()
    );
}

/// The serial number and start of a certificate.
fn serial(der: &[u8]) -> (String, i64) {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    (
        cert.raw_serial_as_string(),
        cert.validity().not_before.timestamp(),
    )
}

/// When the certificate ends and when (two thirds into its lifetime) it is renewed.
pub(crate) fn end_and_renewal(der: &[u8]) -> (Instant, Instant) {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    let (start, end) = (
        cert.validity().not_before.timestamp() as u64,
        cert.validity().not_after.timestamp() as u64,
    );
    let at = |t: u64| {
        let now = tokengate::now_secs();
        Instant::now() + Duration::from_secs(t.saturating_sub(now))
    };
    (at(end), at(tokengate::acme::renewal_due(start, end)))
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
    let (_upstream, ts) = server_on_pebble(&pebble, listen).await;

    // Until the CA has issued, the placeholder is served: a client trusting only the CA refuses
    // it; then the CA's certificate is served and a request goes through.
    let (first, status, _) = served_certificate(&connector, &ts, &pebble, ORDER_TIMEOUT).await;
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
        let store = format!("path = \"{}\"", ts.cfg.store.path.display());
        let stdout = tls_status(ts.dir.path(), &store, &pebble);
        assert!(stdout.contains("next renewal: "), "{stdout}");
        assert!(stdout.contains("source: ACME, https://"), "{stdout}");
    }

    // A restart serves the cached certificate without ordering again.
    let ts = ts.restart().await;
    let (again, status, _) =
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

#[tokio::test(flavor = "multi_thread")]
async fn readiness_is_pending_with_503_until_the_first_certificate_then_ok() {
    let listen = pebble::free_addr();
    let Some(mut pebble) = Pebble::start(listen.port()) else {
        return;
    };
    // The CA is down when tokengate starts: every order fails, the placeholder is served.
    pebble.stop_ca();
    let (_upstream, ts) = server_on_pebble(&pebble, listen).await;
    // The placeholder is the generated self-signed pair, which the test client trusts: the
    // listener answers, but a load balancer must not send it traffic.
    crate::support::eventually("an order failed", Duration::from_secs(10), async || {
        orders(&ts, "failed") >= 1
    })
    .await;
    let r = ts.client().get("/tokengate/ready", &[]).await;
    assert_eq!(
        r.status,
        http::StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        r.text()
    );
    assert_eq!(r.json()["acme"], "pending", "{}", r.text());
    assert_eq!(r.json()["status"], "not ready", "{}", r.text());
    assert_eq!(r.json()["checks"]["store"], "ok", "{}", r.text());

    // The CA comes up: the next retry orders, and the replica is ready.
    pebble.start_ca();
    let connector = client_trusting(&pebble.root().await);
    let (leaf, status, body) = served_certificate(&connector, &ts, &pebble, ORDER_TIMEOUT).await;
    assert!(issuer(&leaf).contains("Pebble"), "{}", issuer(&leaf));
    assert_eq!(status, http::StatusCode::OK, "{body}");
    assert_eq!(body["acme"], "ok", "{body}");
    assert_eq!(body["status"], "ready", "{body}");
    assert_eq!(orders(&ts, "issued"), 1);
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_acme_ca_that_never_answers_times_out_each_order_and_the_server_keeps_serving() {
    let silent = SilentCa::start().await;
    let upstream = Upstream::start().await;
    let directory = format!("https://{}/dir", silent.addr);
    let ts = TestServer::start_with(&upstream.url(), |cfg| {
        let mut acme = acme_config(cfg, directory, None);
        acme.order_timeout = Duration::from_millis(700);
        cfg.tls.acme = Some(acme);
    })
    .await;
    // Each order stalls on the first request; the watchdog gives up on it after the timeout,
    // counts a failure, closes the stalled connection and starts again.
    crate::support::eventually(
        "two orders timed out",
        Duration::from_secs(15),
        async || orders(&ts, "failed") >= 2,
    )
    .await;
    assert!(silent.accepted() >= 2, "{} connections", silent.accepted());
    crate::support::eventually(
        "the stalled connections were closed",
        Duration::from_secs(5),
        async || silent.closed() >= 1,
    )
    .await;
    assert_eq!(orders(&ts, "issued"), 0);
    // The server answered throughout, with the placeholder, and says why it is not ready.
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        ts.client().get("/tokengate/ready", &[]),
    )
    .await
    .expect("the server answers while the CA stalls");
    assert_eq!(
        r.status,
        http::StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        r.text()
    );
    assert_eq!(r.json()["acme"], "pending", "{}", r.text());
    // Nothing waits on the stalled CA: shutdown is prompt.
    tokio::time::timeout(Duration::from_secs(10), ts.stop())
        .await
        .expect("the server stops while the CA stalls");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_short_lived_certificate_is_renewed_while_requests_keep_flowing() {
    // A 30 s certificate is renewed 20 s into its life.
    let listen = pebble::free_addr();
    let Some(pebble) = Pebble::start_with(listen.port(), Some(Duration::from_secs(30))) else {
        return;
    };
    let connector = client_trusting(&pebble.root().await);
    let (upstream, ts) = server_on_pebble(&pebble, listen).await;
    let (first, _, _) = served_certificate(&connector, &ts, &pebble, ORDER_TIMEOUT).await;
    let (end, renewal) = end_and_renewal(&first);
    let auth = basic(
        "flow@example.com",
        &format!("{PASSWORD}{}", ts.add_user("flow@example.com").await),
    );

    // A client calls the API through the proxy, one new connection (so one handshake, which
    // shows the certificate served) per call, across the renewal.
    let mut certs = Vec::<Vec<u8>>::new();
    let (mut calls, mut failed) = (0, Vec::new());
    let deadline = end - Duration::from_secs(2);
    assert!(renewal < deadline, "the renewal is due before the end");
    while Instant::now() < deadline {
        calls += 1;
        match fetch(
            &connector,
            ts.addr,
            "/services/data/v59.0/sobjects",
            Some(&auth),
        )
        .await
        {
            Ok((leaf, http::StatusCode::OK, _)) => {
                if certs.last() != Some(&leaf) {
                    certs.push(leaf);
                }
            }
            Ok((_, status, body)) => failed.push(format!("{status}: {body:?}")),
            Err(e) => failed.push(e),
        }
        // Once the second certificate has been served for a while, the point is made.
        if certs.len() >= 2 && calls % 20 == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        failed.is_empty(),
        "{} of {calls} calls failed: {failed:?}",
        failed.len()
    );
    assert_eq!(
        certs.len(),
        2,
        "the certificates served over {calls} calls\n{}",
        pebble.logs()
    );
    let (before, after) = (serial(&certs[0]), serial(&certs[1]));
    assert_ne!(before.0, after.0, "a new serial");
    assert!(after.1 >= before.1, "a later start: {before:?} {after:?}");
    assert!(upstream.arrived("/services/data/v59.0/sobjects") >= calls - failed.len());
    assert_eq!(orders(&ts, "issued"), 2);
    assert_eq!(orders(&ts, "failed"), 0);
    assert_eq!(pebble.orders(), 2);
    let audit = crate::support::cli(&ts, &["audit", "--format", "json", "--limit", "1000"], None);
    assert_eq!(
        audit.matches("tls.certificate_issued").count(),
        2,
        "{audit}"
    );
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ca_down_at_renewal_leaves_the_old_certificate_served_and_degraded_until_it_returns() {
    // A 36 s certificate is due for renewal 24 s into its life.
    let listen = pebble::free_addr();
    let Some(mut pebble) = Pebble::start_with(listen.port(), Some(Duration::from_secs(36))) else {
        return;
    };
    let connector = client_trusting(&pebble.root().await);
    let (_upstream, ts) = server_on_pebble(&pebble, listen).await;
    let (first, _, body) = served_certificate(&connector, &ts, &pebble, ORDER_TIMEOUT).await;
    assert_eq!(body["acme"], "ok", "{body}");
    let (end, renewal) = end_and_renewal(&first);

    // The CA goes away (its process killed: its accounts and orders are lost with it).
    pebble.stop_ca();
    tokio::time::sleep_until(renewal.into()).await;
    crate::support::eventually("the renewal failed", Duration::from_secs(5), async || {
        orders(&ts, "failed") >= 1
    })
    .await;
    let (leaf, status, body) = fetch(&connector, ts.addr, "/tokengate/ready", None)
        .await
        .expect("the old certificate still verifies");
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(leaf, first, "the old certificate is still served");
    assert_eq!(
        status,
        http::StatusCode::OK,
        "still ready while it is valid: {body}"
    );
    assert_eq!(body["acme"], "degraded", "{body}");
    assert_eq!(orders(&ts, "issued"), 1);

    // The CA returns with a new root and no memory of the account: the next retry registers
    // the account again (the cached key) and a renewal lands before the old one ends.
    pebble.start_ca();
    let connector = client_trusting(&pebble.root().await);
    let (leaf, status, body) = served_certificate(
        &connector,
        &ts,
        &pebble,
        end.saturating_duration_since(Instant::now()),
    )
    .await;
    assert_ne!(serial(&leaf).0, serial(&first).0);
    assert_eq!(status, http::StatusCode::OK, "{body}");
    assert_eq!(body["acme"], "ok", "{body}");
    assert_eq!(orders(&ts, "issued"), 2);
    assert!(orders(&ts, "failed") >= 1);
    ts.stop().await;
}

/// A configuration file for the binary with `[tls] acme` at `directory`.
fn acme_toml(dir: &std::path::Path, name: &str, acme: &str) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"http://127.0.0.1:9\"\n[store]\npath = \"{name}\"\n{}[tls]\nacme = {{ domains = [\"{DOMAIN}\"], {acme} }}\n",
            crate::support::store_backend_toml()
        ),
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_acme_directory_is_a_clear_error_from_check_config_and_at_start() {
    use crate::support::process;
    let dir = tempfile::tempdir().unwrap();
    let run = |toml: &std::path::Path, cmd: &str| {
        let o = tokio::task::block_in_place(|| process::run(toml, &[cmd], None, &[]));
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            err,
        )
    };

    // Unparsable, not https, no host: the configuration is refused by both, in one line.
    for (i, directory) in [
        "not a url",
        "http://ca.example/directory",
        "https://",
        "ldap://ca.example/",
    ]
    .into_iter()
    .enumerate()
    {
        let toml = acme_toml(
            dir.path(),
            &format!("bad{i}"),
            &format!("directory = \"{directory}\""),
        );
        for cmd in ["check-config", "serve"] {
            let (ok, _, err) = run(&toml, cmd);
            assert!(!ok, "{cmd} with {directory}");
            assert!(
                err.contains("tls.acme.directory")
                    && err.contains(&format!("'{directory}' is not an https:// URL")),
                "{cmd} with {directory}: {err}"
            );
            assert_eq!(err.trim().lines().count(), 1, "{err}");
        }
    }

    // Well formed but nobody answers there: check-config says so and fails; serve says so
    // at start and serves anyway (a CA outage must not keep the listener down).
    let (hold, closed) = crate::support::refusing_address();
    let url = format!("https://{closed}/dir");
    let toml = acme_toml(dir.path(), "unreachable", &format!("directory = \"{url}\""));
    let (ok, _, err) = run(&toml, "check-config");
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "tls.acme.directory {url}: cannot connect to {closed}"
        )),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let serve = tokio::task::block_in_place(|| process::Serve::start(&toml, &[], &[]));
    crate::support::eventually("the start-up error", Duration::from_secs(10), async || {
        serve.log().contains(&format!(
            "tls.acme.directory {url}: cannot connect to {closed}"
        ))
    })
    .await;
    let log = tokio::task::block_in_place(|| serve.stop());
    assert!(log.contains("ERROR"), "{log}");
    drop(hold);

    // An https URL that answers but is not an ACME directory (Pebble's root certificate), and
    // Pebble's directory itself, which passes.
    let Some(pebble) = Pebble::start(pebble::free_addr().port()) else {
        return;
    };
    let roots = format!("ca_roots = \"{}\"", pebble.https_ca().display());
    let not_acme = pebble.directory().replace("/dir", "/nonce-plz");
    let toml = acme_toml(
        dir.path(),
        "notacme",
        &format!("directory = \"{not_acme}\", {roots}"),
    );
    let (ok, _, err) = run(&toml, "check-config");
    assert!(!ok);
    assert!(
        err.contains(&format!("tls.acme.directory {not_acme}: ")),
        "{err}"
    );
    assert!(err.contains("not an ACME directory"), "{err}");
    let good = acme_toml(
        dir.path(),
        "good",
        &format!("directory = \"{}\", {roots}", pebble.directory()),
    );
    let (ok, out, err) = run(&good, "check-config");
    assert!(ok, "{err}");
    assert!(out.contains(": ok"), "{out}");
}

/// `tokengate tls status` run on a configuration with this `[store]` section and the test's
/// ACME settings: its output, once it succeeded and named Pebble's certificate for `DOMAIN`.
pub(crate) fn tls_status(dir: &std::path::Path, store: &str, pebble: &Pebble) -> String {
    let toml = dir.join("acme-cli.toml");
    std::fs::write(
        &toml,
        format!(
            "[store]\n{store}\n[tls]\nacme = {{ domains = [\"{DOMAIN}\"], directory = \"{}\", ca_roots = \"{}\" }}\n",
            pebble.directory(),
            pebble.https_ca().display(),
        ),
    )
    .unwrap();
    let out = tokio::task::block_in_place(|| {
        crate::support::process::run(&toml, &["tls", "status"], None, &[])
    });
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&format!("names: {DOMAIN}")), "{stdout}");
    assert!(stdout.contains("issuer: CN=Pebble"), "{stdout}");
    stdout
}

/// A TLS client for `DOMAIN` that accepts any certificate, expired ones too (the handshake
/// signature is still checked): to ask a server whose certificate has ended how it stands.
pub(crate) fn client_accepting_anything() -> tokio_rustls::TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(tokengate::tls::AnyCertificate::new(provider)))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    cfg.resumption = rustls::client::Resumption::disabled();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ca_that_stalls_at_renewal_is_given_up_on_each_order_timeout_until_it_answers_again() {
    // A 27 s certificate, due for renewal 18 s into its life; every ACME request goes through
    // a relay that can make the CA accept connections and never answer. An order takes 2 to
    // 3 s (rustls-acme waits a second before each poll): the timeout leaves room for one.
    let listen = pebble::free_addr();
    let Some(pebble) = Pebble::start_with(listen.port(), Some(Duration::from_secs(27))) else {
        return;
    };
    let relay = StallingRelay::start(pebble.acme_addr()).await;
    let connector = client_trusting(&pebble.root().await);
    let upstream = Upstream::start().await;
    let (directory, ca) = (format!("https://{}/dir", relay.addr), pebble.https_ca());
    let ts = TestServer::start_with(&upstream.url(), |cfg| {
        cfg.server.listen = listen;
        let mut acme = acme_config(cfg, directory, Some(ca));
        acme.order_timeout = Duration::from_secs(5);
        cfg.tls.acme = Some(acme);
    })
    .await;
    let (first, _, body) = served_certificate(&connector, &ts, &pebble, ORDER_TIMEOUT).await;
    assert_eq!(body["acme"], "ok", "{body}");
    let (end, renewal) = end_and_renewal(&first);

    // The CA stalls: each renewal attempt is given up after the order timeout, counted, and
    // the certificate in force is still served, valid, the replica ready.
    relay.stall(true);
    tokio::time::sleep_until(renewal.into()).await;
    crate::support::eventually("a renewal given up", Duration::from_secs(7), async || {
        orders(&ts, "failed") >= 1
    })
    .await;
    let (leaf, status, body) = fetch(&connector, ts.addr, "/tokengate/ready", None)
        .await
        .expect("the certificate in force still verifies");
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(leaf, first, "the certificate in force is still served");
    assert_eq!(status, http::StatusCode::OK, "{body}");
    assert_eq!(body["acme"], "degraded", "{body}");

    // Past its end, still served (nothing better exists) but the replica is no longer ready.
    tokio::time::sleep_until((end + Duration::from_millis(1500)).into()).await;
    let anything = client_accepting_anything();
    let (leaf, status, body) = fetch(&anything, ts.addr, "/tokengate/ready", None)
        .await
        .expect("the server answers");
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(leaf, first, "the ended certificate is what there is");
    assert_eq!(status, http::StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["acme"], "expired", "{body}");

    // The CA answers again: the next attempt orders, and all is well without a restart.
    relay.stall(false);
    let (leaf, status, body) =
        served_certificate(&connector, &ts, &pebble, Duration::from_secs(20)).await;
    assert_ne!(serial(&leaf).0, serial(&first).0);
    assert_eq!(status, http::StatusCode::OK, "{body}");
    assert_eq!(body["acme"], "ok", "{body}");
    assert_eq!(orders(&ts, "issued"), 2);
    ts.stop().await;
}
