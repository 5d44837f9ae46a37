//! The HTTP layer attacked as an attacker would, against the running server, with the bytes
//! the attack sends (raw TLS sockets and raw HTTP/2 frames where a client library would not
//! send them), and upstreams that answer with hostile responses: bodies before login,
//! XML floods, silent connections, smuggled identity headers, dot segments, hosts, cookies,
//! CONNECT, upstream responses, trailing slashes, and refusals sent before the body.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::*;
use bytes::Bytes;
use http::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends raw bytes on a fresh TLS connection and reads the first answer's head and body (up to
/// `timeout`).
async fn raw(ts: &TestServer, request: &[u8]) -> String {
    raw_exchange(&ts.ca, ts.addr, request, Duration::from_secs(5)).await
}

fn status_of(answer: &str) -> u16 {
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {answer:?}"))
}

fn soap_with_session(sid: &str, body_call: &str) -> String {
    format!(
        r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" xmlns:p="urn:partner.soap.sforce.com"><s:Header><p:SessionHeader><p:sessionId>{sid}</p:sessionId></p:SessionHeader></s:Header><s:Body>{body_call}</s:Body></s:Envelope>"#
    )
}

// -------------------------------------------------------------------------------------------
// Bounded before authentication

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soap_body_before_login_is_read_only_up_to_the_login_bound() {
    let up = Upstream::start().await;
    let ts = TestServer::start(&up.url()).await;
    // Streams that announce 15 MiB and send 1 MiB without a session: each is refused with 413
    // once 64 KiB are in, long before its body ends, and nothing stays held.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (ca, addr) = (ts.ca.clone(), ts.addr);
        tasks.push(tokio::spawn(async move {
            let mut s = raw_tls(&ca, addr).await;
            let head = "POST /services/Soap/u/59.0 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/xml\r\nContent-Length: 15728640\r\n\r\n";
            s.write_all(head.as_bytes()).await.unwrap();
            let filler = format!(
                r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Header>{}"#,
                "<x/>".repeat(40_000)
            );
            // The server stops reading and answers; a write may then fail.
            let _ = s.write_all(filler.as_bytes()).await;
            let mut out = vec![0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut out))
                .await
                .expect("answered before the body ends")
                .unwrap();
            String::from_utf8_lossy(&out[..n]).into_owned()
        }));
    }
    for t in tasks {
        let answer = t.await.unwrap();
        assert_eq!(status_of(&answer), 413, "{answer}");
        assert!(answer.contains("first 65536 bytes"), "{answer}");
    }
    let bodies = ts.app().bodies.clone();
    let deadline = Instant::now() + Duration::from_secs(5);
    while bodies.used() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(bodies.used(), 0, "no body memory held");
    assert!(up.requests().is_empty());
}

/// The same attack as one client sends it over HTTP/2: one connection, many streams of SOAP
/// calls without a session that announce 15 MiB and send it slowly, never finishing. Each
/// stream is held to the login bound and answered 413 while its body is still coming; the
/// server's own accounting of buffered body bytes stays within that bound per stream for the
/// whole attack; health answers, on that connection and on another, while every stream is
/// held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_unfinished_soap_streams_on_one_http2_connection_are_each_held_to_the_login_bound() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    const STREAMS: usize = 48;
    // Sent at once by every stream: under the login bound, so the server holds it and waits.
    const FIRST: usize = 48 * 1024;
    // Then a piece every 20 ms, up to this much of the announced 15 MiB.
    const PIECE: usize = 8 * 1024;
    const SENT_AT_MOST: usize = 512 * 1024;
    // A stream's last DATA frame may carry it past the bound by up to one frame: the default
    // SETTINGS_MAX_FRAME_SIZE (RFC 9113, section 6.5.2).
    const MAX_FRAME: usize = 16_384;
    let up = Upstream::start().await;
    let ts = TestServer::start(&up.url()).await;
    let login_bound = ts.app().cfg.server.max_login_body_bytes;
    assert!(FIRST < login_bound && login_bound < SENT_AT_MOST);
    let bodies = ts.app().bodies.clone();

    // The peak of buffered body bytes, sampled through the attack.
    let peak = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn({
        let (bodies, peak, done) = (bodies.clone(), peak.clone(), done.clone());
        async move {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(bodies.used(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    });

    let mut conn = h2_conn(&ts).await;
    let mut envelope = format!(
        r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Header>{}"#,
        "<x/>".repeat(SENT_AT_MOST / 4)
    )
    .into_bytes();
    envelope.truncate(SENT_AT_MOST);
    let envelope = Bytes::from(envelope);
    let (go, go_rx) = tokio::sync::watch::channel(false);
    let mut streams = Vec::new();
    for _ in 0..STREAMS {
        let mut send = conn.clone().ready().await.unwrap();
        let req = http::Request::post(format!(
            "https://127.0.0.1:{}/services/Soap/u/59.0",
            ts.addr.port()
        ))
        .header("content-type", "text/xml")
        .header("content-length", "15728640")
        .body(())
        .unwrap();
        let (answer, mut body) = send.send_request(req, false).unwrap();
        body.send_data(envelope.slice(..FIRST), false).unwrap();
        let (envelope, mut go) = (envelope.clone(), go_rx.clone());
        let sender = tokio::spawn(async move {
            let _ = go.wait_for(|go| *go).await;
            let mut at = FIRST;
            while at < SENT_AT_MOST {
                // Fails once the server has answered and reset the stream.
                if body
                    .send_data(envelope.slice(at..at + PIECE), false)
                    .is_err()
                {
                    return;
                }
                at += PIECE;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // Never finished: the stream stays open until the test ends.
            std::future::pending::<()>().await;
        });
        streams.push((answer, sender));
    }

    // Every stream's first part is held, and nothing more.
    let deadline = Instant::now() + Duration::from_secs(10);
    while bodies.used() < STREAMS * FIRST && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        bodies.used(),
        STREAMS * FIRST,
        "every stream's first part is held"
    );
    // Health answers meanwhile, on the attacking connection and on a fresh one.
    let health = http::Request::get(format!(
        "https://127.0.0.1:{}/tokengate/health",
        ts.addr.port()
    ))
    .body(())
    .unwrap();
    let (status, _) = tokio::time::timeout(Duration::from_secs(2), h2_call(&mut conn, health))
        .await
        .expect("health answers on the attacking connection");
    assert_eq!(status, 200);
    let other = tokio::time::timeout(
        Duration::from_secs(2),
        ts.client().get("/tokengate/health", &[]),
    )
    .await
    .expect("health answers on another connection");
    assert_eq!(other.status, StatusCode::OK);

    // The streams go on sending; each is answered once the login bound is in, long before
    // its body could end (every stream sends 512 KiB within 1.3 s).
    go.send(true).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut answers = Vec::new();
    for (answer, sender) in streams {
        let Ok(answer) = tokio::time::timeout_at(deadline, answer).await else {
            break;
        };
        let answer = answer.unwrap();
        let status = answer.status();
        let mut body = answer.into_body();
        let mut text = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            let _ = body.flow_control().release_capacity(chunk.len());
            text.extend_from_slice(&chunk);
        }
        answers.push((status, String::from_utf8_lossy(&text).into_owned()));
        sender.abort();
    }
    done.store(true, Ordering::Relaxed);
    sampler.await.unwrap();
    let peak = peak.load(Ordering::Relaxed);
    assert!(
        peak <= STREAMS * (login_bound + MAX_FRAME),
        "{peak} bytes buffered at the peak for {STREAMS} streams"
    );
    assert_eq!(
        answers.len(),
        STREAMS,
        "every stream answered before its body ends"
    );
    for (status, text) in &answers {
        assert_eq!(*status, StatusCode::PAYLOAD_TOO_LARGE, "{text}");
        assert!(text.contains("first 65536 bytes"), "a SOAP fault: {text}");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while bodies.used() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(bodies.used(), 0, "no body memory held after the attack");
    assert!(up.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_soap_call_with_a_valid_session_is_read_and_forwarded() {
    let up = Upstream::start().await;
    let ts = TestServer::start(&up.url()).await;
    let token = ts.add_user("big@example.com").await;
    let sid = ts
        .soap_login("big@example.com", &format!("{PASSWORD}{token}"))
        .await;
    let records = "<p:sObjects><p:Name>Acme</p:Name></p:sObjects>".repeat(40_000);
    let body = soap_with_session(&sid, &format!("<p:create>{records}</p:create>"));
    assert!(body.len() > 1 << 20);
    let r = ts
        .client()
        .post("/services/Soap/u/59.0", "text/xml", body.clone())
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let seen = up.last();
    assert_eq!(
        seen.body.len(),
        body.len()
            - body.find("<p:SessionHeader>").map_or(0, |_| {
                format!("<p:SessionHeader><p:sessionId>{sid}</p:sessionId></p:SessionHeader>").len()
            })
    );
    assert!(!String::from_utf8_lossy(&seen.body).contains(&sid));
    // A bad session in a large call's head: refused without reading the rest (the client is
    // still sending when the answer comes).
    let bad = soap_with_session(
        "00D000000000001!nope",
        &format!("<p:create>{records}</p:create>"),
    );
    let mut c = raw_tls(&ts.ca, ts.addr).await;
    let head = format!(
        "POST /services/Soap/u/59.0 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\r\n",
        bad.len()
    );
    c.write_all(head.as_bytes()).await.unwrap();
    c.write_all(&bad.as_bytes()[..200_000]).await.unwrap();
    let mut out = vec![0u8; 8192];
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut out))
        .await
        .expect("answered before the body ends")
        .unwrap();
    let answer = String::from_utf8_lossy(&out[..n]);
    assert_eq!(status_of(&answer), 500, "{answer}");
    assert!(answer.contains("INVALID_SESSION_ID"), "{answer}");
    assert_eq!(up.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_past_the_global_budget_are_answered_503_in_the_callers_dialect() {
    let up = Upstream::start().await;
    let ts = TestServer::start_with(&up.url(), |c| {
        c.server.max_buffered_body_bytes = 200 * 1024;
        c.server.body_read_timeout = Duration::from_secs(20);
    })
    .await;
    // Eight logins that send 60 KiB of a body and hold: four fit in the budget.
    let mut held = Vec::new();
    for _ in 0..8 {
        let mut s = raw_tls(&ts.ca, ts.addr).await;
        let head = "POST /services/Soap/u/59.0 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/xml\r\nContent-Length: 65000\r\n\r\n";
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&vec![b' '; 60_000]).await.unwrap();
        s.flush().await.unwrap();
        held.push(s);
    }
    let mut refused = 0;
    for s in &mut held {
        let mut out = vec![0u8; 4096];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(2), s.read(&mut out)).await {
            let answer = String::from_utf8_lossy(&out[..n]).into_owned();
            assert_eq!(status_of(&answer), 503, "{answer}");
            assert!(
                answer.contains("SERVER_UNAVAILABLE"),
                "a SOAP fault: {answer}"
            );
            refused += 1;
        }
    }
    assert!(
        refused >= 4,
        "bodies past the budget are refused: {refused}"
    );
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_gzipped_namespace_flood_is_refused_at_once() {
    use std::io::Write as _;
    let up = Upstream::start().await;
    let ts = TestServer::start(&up.url()).await;
    // Duplicate declarations and empty elements: quadratic name resolution before the bounds
    // (small enough once inflated to be parsed before authentication).
    let declarations = r#" xmlns:a="urn:x""#.repeat(1500);
    let inner = format!("<a:e{declarations}/>{}", "<a:e/>".repeat(5000));
    let xml = format!(
        r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>{inner}</s:Body></s:Envelope>"#
    );
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(xml.as_bytes()).unwrap();
    let compressed = gz.finish().unwrap();
    assert!(compressed.len() < 4096, "{}", compressed.len());
    let c = ts.client();
    let b = c
        .request(Method::POST, "/services/Soap/u/59.0")
        .header("content-type", "text/xml")
        .header("content-encoding", "gzip");
    let started = Instant::now();
    let r = c.call(b, compressed).await;
    let took = started.elapsed();
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", r.text());
    assert!(r.text().contains("too many attributes"), "{}", r.text());
    assert!(took < Duration::from_secs(1), "refused in {took:?}");
    // Health during a sustained attack:
    // `large_gzipped_bodies_and_namespace_floods_never_hold_the_async_workers`.
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_send_nothing_or_only_a_preface_are_closed() {
    let up = Upstream::start().await;
    let ts = TestServer::start_with(&up.url(), |c| {
        c.server.max_connections = 12;
        c.server.header_read_timeout = Duration::from_millis(700);
        c.server.idle_timeout = Duration::from_millis(700);
    })
    .await;
    // Four that send nothing after the handshake (no ALPN: the preface would decide), four
    // that send only the HTTP/2 preface, four that send nothing over HTTP/1.1.
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(raw_tls_alpn(&ts.ca, ts.addr, &[]).await);
    }
    for _ in 0..4 {
        let mut s = raw_tls_alpn(&ts.ca, ts.addr, &[b"h2"]).await;
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            .await
            .unwrap();
        silent.push(s);
    }
    for _ in 0..4 {
        silent.push(raw_tls(&ts.ca, ts.addr).await);
    }
    // Each is closed by the server within the deadlines (read returns EOF, or an error once
    // the server's GOAWAY has been read).
    let started = Instant::now();
    for mut s in silent {
        let mut buf = vec![0u8; 1024];
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue, // SETTINGS, GOAWAY
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "a silent connection stays open");
    }
    // Within the 700 ms deadlines (a header timeout, or an idle spell and a header timeout's
    // grace), not some longer default.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "closed after {:?}",
        started.elapsed()
    );
    // And the server takes new clients.
    assert_eq!(
        ts.client().get("/tokengate/health", &[]).await.status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_hold_more_than_its_share_of_connections() {
    let up = Upstream::start().await;
    let ts = TestServer::start_with(&up.url(), |c| c.server.max_connections_per_ip = 3).await;
    let mut kept = Vec::new();
    for _ in 0..3 {
        kept.push(raw_tls(&ts.ca, ts.addr).await);
    }
    // A fourth from the same address is closed at once (the handshake fails).
    assert!(
        tls_handshake_fails(&ts).await,
        "the fourth connection is refused"
    );
    drop(kept);
    eventually(
        "places come back when connections close",
        Duration::from_secs(5),
        async || {
            ts.client()
                .send_result(
                    ts.client()
                        .request(http::Method::GET, "/tokengate/health")
                        .body(empty_body())
                        .unwrap(),
                )
                .await
                .is_ok_and(|r| r.status == StatusCode::OK)
        },
    )
    .await;
}

/// The worker threads of `[server] workers = "per-core"` in this process (a thread's name is
/// cut to 15 bytes in `comm`).
fn per_core_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim_end() == "tokengate-worke")
        .count()
}

async fn tls_handshake_fails(ts: &TestServer) -> bool {
    let mut cfg = client_tls(&ts.ca);
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(ts.addr).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(
            rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap(),
            tcp,
        )
        .await
        .is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_core_workers_serve_calls_share_the_connection_bounds_and_end_with_the_server() {
    // The only test that runs per-core workers, so the thread count below is this server's.
    let up = Upstream::start().await;
    let ts = TestServer::start_with(&up.url(), |c| {
        c.server.workers = tokengate::config::Workers::PerCore;
        c.server.max_connections_per_ip = 1;
    })
    .await;
    // One worker thread per core (a new thread names itself once it runs).
    let cores = std::thread::available_parallelism().unwrap().get();
    eventually(
        "one worker thread per core",
        Duration::from_secs(5),
        async || per_core_threads() == cores,
    )
    .await;

    // One connection held: every other one from the address is refused, whichever worker's
    // socket the kernel hands it to (with the bound kept per worker, one of five would land
    // on another worker and pass, but for a chance of 1 in 2^5 on two cores).
    let kept = raw_tls(&ts.ca, ts.addr).await;
    for attempt in 0..5 {
        assert!(
            tls_handshake_fails(&ts).await,
            "attempt {attempt}: a second connection from one address was accepted"
        );
    }
    drop(kept);

    // Calls, each on a connection of its own, are authenticated and forwarded.
    let token = ts.add_user("cores@example.com").await;
    let credentials = basic("cores@example.com", &format!("{PASSWORD}{token}"));
    for call in 0..6 {
        assert_eq!(
            call_on_a_new_connection(&ts, &credentials).await,
            StatusCode::OK,
            "call {call}"
        );
    }
    assert_eq!(up.arrived("/services/data/v59.0/"), 6);
    assert_eq!(
        up.last().headers.get("x-tokengate-user").unwrap(),
        "cores@example.com"
    );

    // Stopping the server drains and ends every worker thread, and the port closes.
    let addr = ts.addr;
    ts.stop().await;
    assert_eq!(per_core_threads(), 0, "worker threads outlived the server");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

/// A forwarded call with HTTP Basic on a connection of its own, retried while the previous
/// connection's place (one per address in that test) has not come back yet.
async fn call_on_a_new_connection(ts: &TestServer, authorization: &str) -> StatusCode {
    let mut status = None;
    eventually(
        "a place for the call's connection",
        Duration::from_secs(5),
        async || {
            let client = ts.client();
            let req = client
                .request(Method::GET, "/services/data/v59.0/")
                .header("authorization", authorization)
                .body(empty_body())
                .unwrap();
            status = client.send_result(req).await.ok().map(|r| r.status);
            status.is_some()
        },
    )
    .await;
    status.unwrap()
}

// -------------------------------------------------------------------------------------------
// What reaches the upstream

#[tokio::test]
async fn identity_headers_in_any_spelling_and_the_console_cookie_never_reach_the_upstream() {
    let up = Upstream::start().await;
    let ts = TestServer::start(&up.url()).await;
    let token = ts.add_user("clean@example.com").await;
    let sid = ts
        .soap_login("clean@example.com", &format!("{PASSWORD}{token}"))
        .await;
    let request = format!(
        "GET /services/data/v59.0/ HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {sid}\r\nX_Tokengate_User: admin@example.com\r\nx_tokengate_user_id: 005000000000001AAA\r\nX-Real-IP: 6.6.6.6\r\nTrue-Client-IP: 6.6.6.6\r\nClient-IP: 6.6.6.6\r\nX_Forwarded_For: 6.6.6.6\r\nX-Original-URL: /admin\r\nX-Rewrite-URL: /admin\r\nCookie: app=1; __Host-tg_console=stolen; other=2\r\nConnection: close\r\n\r\n"
    );
    let answer = raw(&ts, request.as_bytes()).await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    let seen = up.last();
    for (name, _) in seen.headers.iter() {
        let n = name.as_str().replace('_', "-");
        assert!(
            ![
                "x-real-ip",
                "true-client-ip",
                "client-ip",
                "x-original-url",
                "x-rewrite-url"
            ]
            .contains(&n.as_str()),
            "{name} reached the upstream"
        );
        if n.starts_with("x-tokengate-") || n.starts_with("x-forwarded-") {
            assert!(!name.as_str().contains('_'), "{name} reached the upstream");
        }
    }
    assert_eq!(seen.headers.get_all("x-tokengate-user").iter().count(), 1);
    assert_eq!(seen.headers["x-tokengate-user"], "clean@example.com");
    assert_eq!(seen.headers["cookie"], "app=1; other=2");
}

#[tokio::test]
async fn dot_segments_never_escape_the_upstream_base_path() {
    let up = Upstream::start().await;
    let ts = TestServer::start_with(&up.url(), |c| {
        c.upstream.url = format!("{}/api/v1", up.url()).parse().unwrap();
    })
    .await;
    let token = ts.add_user("dots@example.com").await;
    let auth = basic("dots@example.com", &format!("{PASSWORD}{token}"));
    for path in [
        "/../../internal",
        "/%2e%2e/%2e%2e/internal",
        "/%2E%2E/internal",
        "/services/data/../../../../internal",
        "/services/data/./x",
        "/services/data%2f..%2finternal",
        "/services/data/..%5cinternal",
    ] {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n"
        );
        let answer = raw(&ts, request.as_bytes()).await;
        assert_eq!(status_of(&answer), 400, "{path}: {answer}");
    }
    assert!(up.requests().is_empty(), "nothing reached the upstream");
    // The canonical path still works, under the base path.
    let request = format!(
        "GET /services//data/v59.0 HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(status_of(&raw(&ts, request.as_bytes()).await), 200);
    assert_eq!(up.last().uri, "/api/v1/services/data/v59.0");
}

#[tokio::test]
async fn requests_must_name_one_of_our_hosts_once_without_userinfo() {
    let up = Upstream::start().await;
    let ts = TestServer::start(&up.url()).await;
    let cases: [(&str, u16); 7] = [
        (
            "GET /services/data/ HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\n",
            400,
        ),
        ("GET /services/data/ HTTP/1.1\r\n", 400),
        (
            "GET /services/data/ HTTP/1.1\r\nHost: evil.example\r\n",
            421,
        ),
        (
            "GET https://evil.example/services/data/ HTTP/1.1\r\nHost: 127.0.0.1\r\n",
            421,
        ),
        (
            "GET https://user:pw@127.0.0.1/services/data/ HTTP/1.1\r\nHost: 127.0.0.1\r\n",
            400,
        ),
        // Load balancers probe health by address: exempt.
        (
            "GET /tokengate/health HTTP/1.1\r\nHost: 10.1.2.3:8443\r\n",
            200,
        ),
        ("CONNECT 127.0.0.1:443 HTTP/1.1\r\nHost: 127.0.0.1\r\n", 405),
    ];
    for (head, want) in cases {
        let answer = raw(&ts, format!("{head}Connection: close\r\n\r\n").as_bytes()).await;
        assert_eq!(status_of(&answer), want, "{head:?}: {answer}");
    }
    assert!(up.requests().is_empty());
}

/// An HTTP/2 connection with raw frames (the `h2` crate), trusting the server's certificate.
async fn h2_conn(ts: &TestServer) -> h2::client::SendRequest<Bytes> {
    let s = raw_tls_alpn(&ts.ca, ts.addr, &[b"h2"]).await;
    let (send, conn) = h2::client::handshake(s).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

async fn h2_call(
    send: &mut h2::client::SendRequest<Bytes>,
    req: http::Request<()>,
) -> (u16, String) {
    let send = send.clone().ready().await.unwrap();
    let mut send = send;
    let (resp, _) = send.send_request(req, true).unwrap();
    let resp = resp.await.unwrap();
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut out = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        out.extend_from_slice(&chunk);
    }
    (status, String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test]
async fn on_http2_the_authority_decides_carries_no_userinfo_and_cookies_are_joined() {
    let up = Upstream::start().await;
    let ts = TestServer::start(&up.url()).await;
    let token = ts.add_user("h2@example.com").await;
    let auth = basic("h2@example.com", &format!("{PASSWORD}{token}"));
    let mut send = h2_conn(&ts).await;
    let port = ts.addr.port();
    // Userinfo in :authority.
    let req = http::Request::get("https://user:pw@evil.com/services/data/")
        .header("authorization", &auth)
        .body(())
        .unwrap();
    assert_eq!(h2_call(&mut send, req).await.0, 400);
    // A host header that disagrees with :authority.
    let req = http::Request::get(format!("https://127.0.0.1:{port}/services/data/"))
        .header("host", "evil.example")
        .header("authorization", &auth)
        .body(())
        .unwrap();
    assert_eq!(h2_call(&mut send, req).await.0, 400);
    assert!(up.requests().is_empty());
    // Two cookie fields become one Cookie line; ours is gone.
    let req = http::Request::get(format!("https://127.0.0.1:{port}/services/data/"))
        .header("authorization", &auth)
        .header("cookie", "a=1")
        .header("cookie", "__Host-tg_console=x")
        .header("cookie", "b=2")
        .body(())
        .unwrap();
    assert_eq!(h2_call(&mut send, req).await.0, 200);
    let seen = up.last();
    assert_eq!(seen.headers.get_all("cookie").iter().count(), 1);
    assert_eq!(seen.headers["cookie"], "a=1; b=2");
    assert_eq!(seen.headers["host"], format!("127.0.0.1:{port}"));
    assert_eq!(
        seen.headers["x-forwarded-host"],
        format!("127.0.0.1:{port}")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_bounded_and_a_waiting_request_gets_503() {
    let up = Upstream::start().await;
    let ts = TestServer::start_with(&up.url(), |c| {
        c.upstream.max_connections = 2;
        c.upstream.connect_timeout = Duration::from_millis(500);
        c.upstream.response_timeout = Duration::from_secs(10);
    })
    .await;
    let token = ts.add_user("bound@example.com").await;
    let auth = basic("bound@example.com", &format!("{PASSWORD}{token}"));
    let mut slow = Vec::new();
    for _ in 0..2 {
        let (c, auth) = (ts.client(), auth.clone());
        slow.push(tokio::spawn(async move {
            c.get("/slow", &[("authorization", &auth)]).await.status
        }));
    }
    eventually(
        "both slow calls hold a connection",
        Duration::from_secs(5),
        async || up.arrived("/slow") == 2,
    )
    .await;
    let started = Instant::now();
    let r = ts
        .client()
        .get("/services/data/", &[("authorization", &auth)])
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    assert_eq!(r.json()["error"], "upstream_busy");
    assert!(started.elapsed() < Duration::from_secs(2));
    for s in slow {
        assert_eq!(s.await.unwrap(), StatusCode::OK);
    }
    assert!(up.connections.load(std::sync::atomic::Ordering::SeqCst) <= 2);
}

// -------------------------------------------------------------------------------------------
// What comes back from the upstream

async fn against(
    answer: &'static [u8],
    tweak: impl FnOnce(&mut tokengate::config::Config),
) -> (RawUpstream, TestServer, String) {
    let up = RawUpstream::start(answer).await;
    let ts = TestServer::start_with(&up.url(), tweak).await;
    let token = ts.add_user("up@example.com").await;
    let auth = basic("up@example.com", &format!("{PASSWORD}{token}"));
    (up, ts, auth)
}

#[tokio::test]
async fn an_upstream_answer_with_both_length_and_chunking_is_refused() {
    let (_up, ts, auth) = against(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n",
        |_| {},
    )
    .await;
    let r = ts.client().get("/x", &[("authorization", &auth)]).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
}

#[tokio::test]
async fn an_unrequested_switch_of_protocols_is_refused() {
    let (_up, ts, auth) = against(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        |_| {},
    )
    .await;
    let r = ts.client().get("/x", &[("authorization", &auth)]).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
}

#[tokio::test]
async fn an_upstream_body_that_stalls_is_aborted_after_its_idle_timeout() {
    let (_up, ts, auth) = against(
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\nstart of a body that never ends",
        |c| c.upstream.body_idle_timeout = Duration::from_millis(500),
    )
    .await;
    let started = Instant::now();
    let result = tokio::time::timeout(
        Duration::from_secs(5),
        ts.client().send_result(
            ts.client()
                .request(Method::GET, "/x")
                .header("authorization", &auth)
                .body(empty_body())
                .unwrap(),
        ),
    )
    .await
    .expect("the client is not held for ever");
    assert!(result.is_err(), "the response fails: {result:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn the_upstream_cannot_set_our_cookie_or_our_security_policy() {
    let up = Upstream::start().await;
    let ts = TestServer::start(&up.url()).await;
    let token = ts.add_user("policy@example.com").await;
    let auth = basic("policy@example.com", &format!("{PASSWORD}{token}"));
    let r = ts
        .client()
        .get("/set-cookies", &[("authorization", &auth)])
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let cookies: Vec<_> = r.headers.get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["app=1; Path=/"]);
    assert_eq!(
        r.header("strict-transport-security"),
        Some("max-age=31536000")
    );
    // Every answer carries it, tokengate's own too.
    let r = ts.client().get("/tokengate/health", &[]).await;
    assert_eq!(
        r.header("strict-transport-security"),
        Some("max-age=31536000")
    );
}

#[tokio::test]
async fn the_generated_certificate_is_valid_for_a_year() {
    let up = Upstream::start().await;
    let ts = TestServer::start(&up.url()).await;
    let end = tokengate::tls::not_after(&ts.ca).unwrap();
    let now = tokengate::now_secs();
    assert!(
        end > now + 360 * 86_400 && end < now + 368 * 86_400,
        "{end}"
    );
}

// -------------------------------------------------------------------------------------------
// Robust with real clients

#[tokio::test]
async fn a_login_url_with_a_trailing_slash_reaches_the_login_handlers() {
    let up = Upstream::start().await;
    let ts = TestServer::start(&up.url()).await;
    let token = ts.add_user("slash@example.com").await;
    let secret = format!("{PASSWORD}{token}");
    let c = ts.client();
    let r = c
        .post(
            "//services/Soap/u/42.0",
            "text/xml",
            soap_login_body("slash@example.com", &secret),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(r.text().contains("<sessionId>"));
    for path in ["//services/oauth2/token", "/services/oauth2/token/"] {
        let form = serde_urlencoded::to_string([
            ("grant_type", "password"),
            ("client_id", CLIENT_ID),
            ("client_secret", CLIENT_SECRET),
            ("username", "slash@example.com"),
            ("password", secret.as_str()),
        ])
        .unwrap();
        let r = c
            .post(path, "application/x-www-form-urlencoded", form)
            .await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text());
        assert!(r.json()["access_token"].is_string());
    }
    let r = c.get("//tokengate//health/", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(up.requests().is_empty(), "no login was forwarded");
}

#[tokio::test]
async fn a_refusal_sent_before_the_body_leaves_a_usable_connection_or_says_close() {
    let up = Upstream::start().await;
    let ts = TestServer::start(&up.url()).await;
    let mut s = raw_tls(&ts.ca, ts.addr).await;
    // A POST with an expired session and a small body: the connection stays usable.
    let body = "x".repeat(1000);
    let request = format!(
        "POST /services/data/v59.0/sobjects/Account HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer 00D000000000001!expired\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).await.unwrap();
    let first = read_answer(&mut s).await;
    assert_eq!(status_of(&first), 401, "{first}");
    assert!(
        !first.to_ascii_lowercase().contains("connection: close"),
        "{first}"
    );
    // The same connection at once, as jsforce re-logging in would.
    s.write_all(b"GET /tokengate/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let second = read_answer(&mut s).await;
    assert_eq!(status_of(&second), 200, "{second}");

    // A body too large to drain: the refusal says the connection closes.
    let mut s = raw_tls(&ts.ca, ts.addr).await;
    let head = "POST /services/data/v59.0/sobjects/Account HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer 00D000000000001!expired\r\nContent-Type: application/json\r\nContent-Length: 10000000\r\n\r\n";
    s.write_all(head.as_bytes()).await.unwrap();
    let _ = s.write_all(&vec![b'x'; 200_000]).await;
    let answer = read_answer(&mut s).await;
    assert_eq!(status_of(&answer), 401, "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// Reads one HTTP/1.1 answer (head and a `Content-Length` body), or up to EOF.
async fn read_answer(s: &mut Tls) -> String {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 8192];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&out);
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if out.len() >= end + 4 + len {
                break;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Sends `head` and a 40 KiB body in two halves (the second after the server has had time to
/// answer from the head alone), then a health check on the same connection, and reads to the
/// end. Returns the first answer, after checking that it either said the connection closes or
/// the connection served the health check.
async fn refused_with_a_body_then_reused(ts: &TestServer, head: &str) -> String {
    let body = vec![b'x'; 40 * 1024];
    let head = head.replace("{len}", &body.len().to_string());
    let mut s = raw_tls(&ts.ca, ts.addr).await;
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&body[..1024]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The server may have closed by now (the bug): a write error is its answer too.
    let _ = s.write_all(&body[1024..]).await;
    let _ = s
        .write_all(
            b"GET /tokengate/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        )
        .await;
    answered_then_reused(&mut s).await
}

/// Reads a connection to its end; the first answer, after checking that it said
/// `Connection: close` or was followed by the health check's 200.
async fn answered_then_reused(s: &mut Tls) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let all = String::from_utf8_lossy(&out).into_owned();
    let second = all[1..].find("HTTP/1.1 ").map(|at| at + 1);
    let first = all[..second.unwrap_or(all.len())].to_owned();
    if !first.to_ascii_lowercase().contains("connection: close") {
        assert!(
            second.is_some_and(|at| all[at..].starts_with("HTTP/1.1 200")),
            "an answer without `Connection: close` on a connection that served nothing more: {all:?}"
        );
    }
    first
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_refusals_of_a_posted_body_leave_a_usable_connection_or_say_close() {
    let up = Upstream::start().await;
    let ts = TestServer::start_with(&up.url(), |c| {
        c.tokens.reset_per_ip_per_hour = std::num::NonZeroU32::new(1).unwrap();
    })
    .await;
    // Refused at the target, before any handler: dot segments, another host, CONNECT.
    for (head, want) in [
        (
            "POST /services/data/../../internal HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n",
            400,
        ),
        (
            "POST /services/data/v59.0/sobjects/Account HTTP/1.1\r\nHost: evil.example\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n",
            421,
        ),
        (
            "CONNECT 127.0.0.1:443 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len}\r\n\r\n",
            405,
        ),
        // Refused by a handler before the body: cross-site, a SOAP body past the login bound
        // without a session, the self-service reset's per-address limit.
        (
            "POST /tokengate/v1/token/reset HTTP/1.1\r\nHost: 127.0.0.1\r\nSec-Fetch-Site: cross-site\r\nAuthorization: Basic Zm9vOmJhcg==\r\nContent-Length: {len}\r\n\r\n",
            403,
        ),
    ] {
        let first = refused_with_a_body_then_reused(&ts, head).await;
        assert_eq!(status_of(&first), want, "{head:?}: {first}");
    }
    let envelope = "POST /services/Soap/u/59.0 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/xml\r\nContent-Length: {len}\r\n\r\n";
    let mut s = raw_tls(&ts.ca, ts.addr).await;
    let body = format!(
        r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Header>{}"#,
        "<x/>".repeat(25_000)
    );
    s.write_all(
        envelope
            .replace("{len}", &body.len().to_string())
            .as_bytes(),
    )
    .await
    .unwrap();
    let _ = s.write_all(body.as_bytes()).await;
    let _ = s
        .write_all(
            b"GET /tokengate/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        )
        .await;
    let first = answered_then_reused(&mut s).await;
    assert_eq!(status_of(&first), 413, "{first}");
    // The reset's per-address limit (one an hour here): the first spends it.
    let r = ts
        .client()
        .call(
            ts.client()
                .request(Method::POST, "/tokengate/v1/token/reset")
                .header("authorization", basic("ghost@example.com", PASSWORD)),
            "",
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let first = refused_with_a_body_then_reused(
        &ts,
        "POST /tokengate/v1/token/reset HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic Zm9vOmJhcg==\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&first), 429, "{first}");
    assert!(up.requests().is_empty(), "nothing was forwarded");
}

#[tokio::test]
async fn a_request_id_spelled_with_underscores_never_reaches_the_upstream() {
    let up = Upstream::start().await;
    let ts = TestServer::start(&up.url()).await;
    let token = ts.add_user("traced@example.com").await;
    let auth = basic("traced@example.com", &format!("{PASSWORD}{token}"));
    let request = format!(
        "GET /services/data/v59.0/ HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {auth}\r\nX_Request_Id: forged-1\r\nx_request-id: forged-2\r\nX-Request-Id: forged-3\r\nConnection: close\r\n\r\n"
    );
    let answer = raw(&ts, request.as_bytes()).await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    let ours = answer
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("x-request-id:")
                .map(|v| v.trim().to_owned())
        })
        .expect("tokengate names the request");
    let seen = up.last();
    let ids: Vec<(String, String)> = seen
        .headers
        .iter()
        .filter(|(n, _)| n.as_str().replace('_', "-") == "x-request-id")
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
        .collect();
    // tokengate's own id alone, in its own spelling: the upstream's HTTP_X_REQUEST_ID is ours.
    assert_eq!(ids, [("x-request-id".to_owned(), ours.clone())], "{ids:?}");
    assert!(!ours.starts_with("forged"), "{ours}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authenticated_batch_that_redeclares_its_namespace_on_every_field_is_forwarded() {
    let up = Upstream::start().await;
    let ts = TestServer::start(&up.url()).await;
    let token = ts.add_user("dotnet@example.com").await;
    let sid = ts
        .soap_login("dotnet@example.com", &format!("{PASSWORD}{token}"))
        .await;
    // As .NET's XmlSerializer writes partner sObjects: every field declares its namespace.
    let ns = r#"xmlns="urn:sobject.partner.soap.sforce.com""#;
    let records = (0..500)
        .map(|i| {
            format!(
                r#"<p:sObjects><type {ns}>Account</type><Name {ns}>Acme {i}</Name><Phone {ns}>555-{i:04}</Phone></p:sObjects>"#
            )
        })
        .collect::<String>();
    let body = soap_with_session(&sid, &format!("<p:create>{records}</p:create>"));
    let r = ts
        .client()
        .post("/services/Soap/u/59.0", "text/xml", body)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let seen = up.last();
    let forwarded = String::from_utf8_lossy(&seen.body);
    assert_eq!(forwarded.matches(ns).count(), 1500);
    assert!(forwarded.contains("Acme 499"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_gzipped_bodies_and_namespace_floods_never_hold_the_async_workers() {
    use std::io::Write as _;
    let up = Upstream::start().await;
    let ts = TestServer::start(&up.url()).await;
    let token = ts.add_user("zipped@example.com").await;
    let sid = ts
        .soap_login("zipped@example.com", &format!("{PASSWORD}{token}"))
        .await;
    let gzip = |xml: &[u8]| {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(xml).unwrap();
        gz.finish().unwrap()
    };
    // An authenticated call (answered by tokengate itself) that inflates to 15 MiB of
    // whitespace (under the 16 MiB bound) from about 15 KiB, and the pre-authentication flood
    // of declarations.
    let open = soap_with_session(&sid, "<p:getUserInfo/>");
    let at = open.find("</s:Body>").unwrap();
    let mut big = open.as_bytes()[..at].to_vec();
    big.resize(big.len() + (15 << 20), b' ');
    big.extend_from_slice(&open.as_bytes()[at..]);
    let big = gzip(&big);
    assert!(big.len() < 64 * 1024, "{}", big.len());
    let flood = gzip(
        format!(
            r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><a:e{}/>{}</s:Body></s:Envelope>"#,
            r#" xmlns:a="urn:x""#.repeat(1500),
            "<a:e/>".repeat(5000)
        )
        .as_bytes(),
    );
    // The probe's connection is made (and its TLS handshake done) before the attack starts:
    // what is timed is the answer alone.
    let c = ts.client();
    assert_eq!(c.get("/tokengate/health", &[]).await.status, StatusCode::OK);
    // Three attackers, more than the server has async workers, each sending one after another.
    let attacking = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let mut attackers = Vec::new();
    for body in [big.clone(), big, flood] {
        let (c, attacking) = (ts.client(), attacking.clone());
        attackers.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            while attacking.load(std::sync::atomic::Ordering::Relaxed) {
                let b = c
                    .request(Method::POST, "/services/Soap/u/59.0")
                    .header("content-type", "text/xml")
                    .header("content-encoding", "gzip");
                statuses.push(c.call(b, body.clone()).await.status);
            }
            statuses
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut took = Vec::new();
    for _ in 0..20 {
        let started = Instant::now();
        assert_eq!(c.get("/tokengate/health", &[]).await.status, StatusCode::OK);
        took.push(started.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    attacking.store(false, std::sync::atomic::Ordering::Relaxed);
    let mut outcomes = Vec::new();
    for a in attackers {
        outcomes.push(a.await.unwrap());
    }
    assert!(
        outcomes[0]
            .iter()
            .chain(&outcomes[1])
            .all(|s| *s == StatusCode::OK),
        "{outcomes:?}"
    );
    assert!(
        outcomes[2]
            .iter()
            .all(|s| *s == StatusCode::INTERNAL_SERVER_ERROR),
        "{outcomes:?}"
    );
    // Health is answered while the bodies are inflated, not after.
    let slowest = took.iter().max().unwrap();
    assert!(
        *slowest < Duration::from_millis(100),
        "health took {slowest:?} during the attack: {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_goes_quiet_after_a_request_is_closed_at_its_idle_timeout() {
    let up = Upstream::start().await;
    let ts = TestServer::start_with(&up.url(), |c| {
        // Well apart: hyper's header timeout also ends a quiet HTTP/1.1 connection.
        c.server.header_read_timeout = Duration::from_secs(8);
        c.server.idle_timeout = Duration::from_millis(500);
    })
    .await;
    // HTTP/1.1: one request, then nothing.
    let mut s = raw_tls(&ts.ca, ts.addr).await;
    s.write_all(b"GET /tokengate/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(status_of(&read_answer(&mut s).await), 200);
    let quiet = Instant::now();
    let mut buf = [0u8; 256];
    let eof = tokio::time::timeout(Duration::from_secs(4), s.read(&mut buf)).await;
    assert!(
        matches!(eof, Ok(Ok(0) | Err(_))),
        "HTTP/1.1 still open after {:?}: {eof:?}",
        quiet.elapsed()
    );
    // HTTP/2: one request, then a GOAWAY ends the connection.
    let tls = raw_tls_alpn(&ts.ca, ts.addr, &[b"h2"]).await;
    let (mut send, conn) = h2::client::handshake(tls).await.unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::get("https://127.0.0.1/tokengate/health")
        .body(())
        .unwrap();
    assert_eq!(h2_call(&mut send, req).await.0, 200);
    let quiet = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(4), conn).await;
    assert!(
        ended.is_ok(),
        "HTTP/2 still open after {:?}",
        quiet.elapsed()
    );
    drop(send);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxy_is_not_held_to_the_per_address_cap() {
    let up = Upstream::start().await;
    let ts = TestServer::start_with(&up.url(), |c| {
        c.server.max_connections_per_ip = 2;
        c.server.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    // Five connections from the proxy's one address, all open at once, all served.
    let mut open = Vec::new();
    for _ in 0..5 {
        open.push(raw_tls(&ts.ca, ts.addr).await);
    }
    for s in &mut open {
        s.write_all(b"GET /tokengate/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Forwarded-For: 198.51.100.9\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(status_of(&read_answer(s).await), 200);
    }
}
