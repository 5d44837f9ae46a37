//! Bad input gets a clear error in the caller's own dialect: never a panic, a hang, or a
//! secret echoed back.

use std::io::Write as _;
use std::time::Duration;

use crate::support::*;
use http::{Method, StatusCode};

const ENVELOPE_OPEN: &str =
    r#"<se:Envelope xmlns:se="http://schemas.xmlsoap.org/soap/envelope/"><se:Body>"#;

#[tokio::test]
async fn malformed_soap_gets_a_soap_client_fault() {
    let up = Upstream::start().await;
    let ts = TestServer::start(&up.url()).await;
    let c = ts.client();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("not xml", b"<se:Envelope".to_vec()),
        ("not soap", b"<login><username>a</username></login>".to_vec()),
        ("dtd", br#"<?xml version="1.0"?><!DOCTYPE lol [<!ENTITY lol "lol">]><se:Envelope xmlns:se="http://schemas.xmlsoap.org/soap/envelope/"/>"#.to_vec()),
        ("missing password", format!(r#"{ENVELOPE_OPEN}<login xmlns="urn:partner.soap.sforce.com"><username>a</username></login></se:Body></se:Envelope>"#).into_bytes()),
        ("non-utf8", [ENVELOPE_OPEN.as_bytes(), b"\xff\xfe", b"</se:Body></se:Envelope>"].concat()),
        ("empty", Vec::new()),
    ];
    for (what, body) in cases {
        let r = c.post("/services/Soap/u/59.0", "text/xml", body).await;
        assert_eq!(
            r.status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "{what}: {}",
            r.text()
        );
        assert_eq!(
            r.header("content-type"),
            Some("text/xml; charset=utf-8"),
            "{what}"
        );
        assert!(
            r.text().contains("<faultcode>soapenv:Client</faultcode>"),
            "{what}: {}",
            r.text()
        );
    }
    let r = c
        .post("/services/Soap/u/59.0", "application/json", "{}")
        .await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(r.text().contains("soapenv:Fault"));
    let r = c.get("/services/Soap/u/59.0", &[]).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    let r = c.post("/services/Soap/u/latest", "text/xml", "<x/>").await;
    assert!(r.text().contains("UNSUPPORTED_API_VERSION"), "{}", r.text());
}

#[tokio::test]
async fn oversized_and_badly_encoded_bodies_are_refused() {
    let up = Upstream::start().await;
    let ts = TestServer::start_with(&up.url(), |c| {
        c.server.max_soap_body_bytes = 64 * 1024;
        c.server.max_login_body_bytes = 8 * 1024;
    })
    .await;
    let c = ts.client();
    let huge = format!(
        "{ENVELOPE_OPEN}<login xmlns=\"urn:partner.soap.sforce.com\"><username>{}</username><password>x</password></login></se:Body></se:Envelope>",
        "a".repeat(100 * 1024)
    );
    let r = c.post("/services/Soap/u/59.0", "text/xml", huge).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(r.text().contains("soapenv:Fault"));

    // A gzip bomb: tiny compressed, far over the limit once inflated.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(ENVELOPE_OPEN.as_bytes()).unwrap();
    gz.write_all(&vec![b' '; 10 * 1024 * 1024]).unwrap();
    let bomb = gz.finish().unwrap();
    assert!(bomb.len() < 64 * 1024);
    let b = c
        .request(Method::POST, "/services/Soap/u/59.0")
        .header("content-type", "text/xml")
        .header("content-encoding", "gzip");
    assert_eq!(c.call(b, bomb).await.status, StatusCode::PAYLOAD_TOO_LARGE);

    let b = c
        .request(Method::POST, "/services/Soap/u/59.0")
        .header("content-type", "text/xml")
        .header("content-encoding", "gzip");
    let r = c.call(b, "this is not gzip").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.text().contains("gzip"));

    let b = c
        .request(Method::POST, "/services/Soap/u/59.0")
        .header("content-type", "text/xml")
        .header("content-encoding", "br");
    assert_eq!(
        c.call(b, "x").await.status,
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );

    let form = format!("grant_type=password&username={}", "a".repeat(20 * 1024));
    let r = c
        .post(
            "/services/oauth2/token",
            "application/x-www-form-urlencoded",
            form,
        )
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.json()["error"], "invalid_request");
}

#[tokio::test]
async fn malformed_forms_and_basic_headers_get_clear_errors() {
    let up = Upstream::start().await;
    let ts = TestServer::start(&up.url()).await;
    let c = ts.client();
    let r = c
        .post(
            "/services/oauth2/token",
            "application/x-www-form-urlencoded",
            b"grant_type=%FF%FE&x=\xff".to_vec(),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["error"], "invalid_request");

    for auth in [
        "Basic !!!not-base64!!!",
        "Basic Zm9vYmFy",
        "Basic /w==",
        "Digest abc",
        "Bearer",
    ] {
        let r = c
            .get("/services/data/v59.0/sobjects", &[("authorization", auth)])
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{auth}");
        assert_eq!(r.json()[0]["errorCode"], "INVALID_AUTH_HEADER", "{auth}");
    }
    // A password that is not valid UTF-8 inside valid base64.
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD.encode(b"user@example.com:\xff\xfe");
    let r = c
        .get(
            "/services/data/v59.0/sobjects",
            &[("authorization", &format!("Basic {raw}"))],
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(up.requests().is_empty());
}

#[tokio::test]
async fn huge_headers_are_refused_and_slow_clients_are_cut_off() {
    let up = Upstream::start().await;
    let ts = TestServer::start_with(&up.url(), |c| {
        c.server.header_read_timeout = Duration::from_millis(700);
        c.server.max_header_bytes = 16 * 1024;
    })
    .await;
    let big = "a".repeat(64 * 1024);
    let raw = format!("GET /services/data/v59.0/ HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
    let answer = raw_exchange(&ts.ca, ts.addr, raw.as_bytes(), Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{:.200}", answer);

    // Slowloris: half a request line, then silence. The server closes the connection.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = raw_tls(&ts.ca, ts.addr).await;
    s.write_all(b"GET /services/data/v59.0/ HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let started = std::time::Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    assert!(closed.is_ok(), "the server kept a silent client open");
    // The 700 ms header timeout, not some other, longer one.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "cut off after {:?}",
        started.elapsed()
    );

    // The server still serves others.
    assert_eq!(
        ts.client().get("/tokengate/health", &[]).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_keep_alive_client_that_stalls_in_a_later_request_head_is_cut_off() {
    // The header timeout of every request after the first is hyper's, kept without a timer
    // per request: the connection's alarm is what wakes a silent connection to check it. With
    // the idle close a minute away, only that check can close this one within seconds.
    let up = Upstream::start().await;
    let ts = TestServer::start_with(&up.url(), |c| {
        c.server.header_read_timeout = Duration::from_millis(700);
        c.server.idle_timeout = Duration::from_secs(60);
    })
    .await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = raw_tls(&ts.ca, ts.addr).await;
    // One whole request, answered, on a keep-alive connection.
    s.write_all(b"GET /tokengate/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&answer).contains("\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("the first request is answered")
            .unwrap();
        assert!(n > 0, "closed before answering");
        answer.extend_from_slice(&buf[..n]);
    }
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    // Then half of the next head, and silence.
    s.write_all(b"GET /services/data/v59.0/ HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue, // the rest of the health answer's body, or a 408
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the server kept a stalled keep-alive client open"
    );
    // Within the 700 ms header timeout and one tick of the alarm (700 ms), with slack.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "cut off after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn secrets_are_not_echoed_in_error_answers() {
    let up = Upstream::start().await;
    let ts = TestServer::start(&up.url()).await;
    let token = ts.add_user("echo@example.com").await;
    let c = ts.client();
    let secret = format!("{PASSWORD}{token}");
    let r = c
        .post(
            "/services/Soap/u/59.0",
            "text/xml",
            format!("{ENVELOPE_OPEN}<login xmlns=\"urn:partner.soap.sforce.com\"><username>echo@example.com</username><password>{secret}</password><x>&bogus;</x></login></se:Body></se:Envelope>"),
        )
        .await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(!r.text().contains(&token));
    assert!(!r.text().contains(PASSWORD));
}

/// Sends `head` (a request that announces 100 bytes of body), two bytes of it, then nothing;
/// returns what the server answers within 5 s.
async fn answer_to_a_stalled_body(ts: &TestServer, head: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = raw_tls(&ts.ca, ts.addr).await;
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(b"a=").await.unwrap();
    s.flush().await.unwrap();
    let mut out = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    // Until the server closes, or has been silent for a while after answering.
    loop {
        let wait = if out.is_empty() {
            deadline.saturating_duration_since(tokio::time::Instant::now())
        } else {
            Duration::from_millis(300)
        };
        match tokio::time::timeout(wait, s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn stalled(method_path: &str, content_type: &str, extra: &str) -> String {
    format!(
        "{method_path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\nContent-Length: 100\r\n{extra}\r\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_is_408_on_oauth_the_json_api_and_the_console() {
    let up = Upstream::start().await;
    let ts = TestServer::start_with(&up.url(), |c| {
        c.server.body_read_timeout = Duration::from_millis(400);
    })
    .await;
    let token = ts.add_user("slowbody@example.com").await;
    let form = "application/x-www-form-urlencoded";

    let oauth =
        answer_to_a_stalled_body(&ts, &stalled("POST /services/oauth2/token", form, "")).await;
    assert!(oauth.starts_with("HTTP/1.1 408"), "{oauth}");
    assert!(oauth.contains(r#""error":"invalid_request""#), "{oauth}");

    let auth = basic("slowbody@example.com", &format!("{PASSWORD}{token}"));
    let api = answer_to_a_stalled_body(
        &ts,
        &stalled(
            "POST /tokengate/v1/password",
            "application/json",
            &format!("Authorization: {auth}\r\n"),
        ),
    )
    .await;
    assert!(api.starts_with("HTTP/1.1 408"), "{api}");
    assert!(api.contains(r#""error":"invalid_request""#), "{api}");
    assert!(api.contains("did not arrive in time"), "{api}");

    // The console's sign-in form, and a signed-in user's form.
    let signin =
        answer_to_a_stalled_body(&ts, &stalled("POST /tokengate/console/signin", form, "")).await;
    assert!(signin.starts_with("HTTP/1.1 408"), "{signin}");
    assert!(signin.contains("did not arrive in time"), "{signin}");
    let browser = crate::console::Browser::sign_in(&ts, "slowbody@example.com", PASSWORD)
        .await
        .unwrap_or_else(|r| panic!("signed in: {}", r.status));
    let page = answer_to_a_stalled_body(
        &ts,
        &stalled(
            "POST /tokengate/console/settings/reset-token",
            form,
            &format!("Cookie: {}\r\n", browser.cookie()),
        ),
    )
    .await;
    assert!(page.starts_with("HTTP/1.1 408"), "{page}");
    assert!(page.contains("Request Timeout"), "{page}");
    assert!(
        page.contains("The request body did not arrive in time."),
        "{page}"
    );
}

#[tokio::test]
async fn an_oversized_console_form_is_413_with_its_reason() {
    let up = Upstream::start().await;
    let ts = TestServer::start(&up.url()).await;
    ts.add_user("bigform@example.com").await;
    let browser = crate::console::Browser::sign_in(&ts, "bigform@example.com", PASSWORD)
        .await
        .unwrap_or_else(|r| panic!("signed in: {}", r.status));
    let limit = ts.app().cfg.server.max_login_body_bytes;
    let big = "x".repeat(limit + 1);
    let r = crate::console::post_form(
        &ts,
        Some(&browser.cookie()),
        "/settings/reset-token",
        &[("csrf", "whatever"), ("filler", &big)],
    )
    .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.text());
    assert!(
        r.text()
            .contains(&format!("The request body is larger than {limit} bytes.")),
        "{}",
        r.text()
    );
}
