//! Forwarding: what the upstream receives (identity headers, no credentials, the original
//! Host, HTTP/1.1 whatever the client spoke), what the client receives back, and failures.

use std::time::Duration;

use crate::support::*;
use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::BodyExt;

async fn logged_in(ts: &TestServer, name: &str) -> String {
    let token = ts.add_user(name).await;
    ts.soap_login(name, &format!("{PASSWORD}{token}")).await
}

#[tokio::test]
async fn proxied_calls_carry_identity_headers_and_no_credentials() {
    let up = Upstream::start().await;
    let ts = TestServer::start(&up.url()).await;
    let sid = logged_in(&ts, "fwd@example.com").await;
    let c = ts.client();
    let b = c
        .request(
            Method::GET,
            "/services/data/v59.0/sobjects/Account/001000000000001AAA?fields=Name",
        )
        .header("authorization", format!("Bearer {sid}"))
        .header("x-tokengate-user", "admin@example.com")
        .header("X-Tokengate-User-Id", "005000000000009AAA")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-host", "evil.example")
        .header("forwarded", "for=6.6.6.6")
        .header("x-pretty-print", "1");
    let r = c.call(b, Bytes::new()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["records"][0]["Name"], "Acme");
    // Hop-by-hop headers from the upstream (and those its Connection header names) stop here.
    assert!(r.header("x-upstream-hop").is_none());

    let seen = up.last();
    assert_eq!(
        seen.uri,
        "/services/data/v59.0/sobjects/Account/001000000000001AAA?fields=Name"
    );
    assert_eq!(seen.version, http::Version::HTTP_11);
    let h = &seen.headers;
    assert_eq!(h["x-tokengate-user"], "fwd@example.com");
    assert!(
        h["x-tokengate-user-id"]
            .to_str()
            .unwrap()
            .starts_with("005")
    );
    assert_ne!(h["x-tokengate-user-id"], "005000000000009AAA");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(
        h["x-forwarded-host"],
        format!("127.0.0.1:{}", ts.addr.port()).as_str()
    );
    assert_eq!(h["host"], format!("127.0.0.1:{}", ts.addr.port()).as_str());
    assert_eq!(h["x-pretty-print"], "1");
    assert!(h.get("authorization").is_none());
    assert!(h.get("forwarded").is_none());
    assert_eq!(h.get_all("x-tokengate-user").iter().count(), 1);
    assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
}

#[tokio::test]
async fn bulk_session_header_is_accepted_and_stripped() {
    let up = Upstream::start().await;
    let ts = TestServer::start(&up.url()).await;
    let sid = logged_in(&ts, "bulk@example.com").await;
    let r = ts
        .client()
        .post("/services/async/59.0/job", "application/xml", "<jobInfo/>")
        .await;
    assert_eq!(
        r.status,
        StatusCode::BAD_REQUEST,
        "no session: Bulk 1.0 error"
    );
    assert!(
        r.text()
            .contains("<exceptionCode>InvalidSessionId</exceptionCode>")
    );
    let b = ts
        .client()
        .request(Method::POST, "/services/async/59.0/job")
        .header("x-sfdc-session", sid.as_str())
        .header("content-type", "application/xml");
    let r = ts.client().call(b, "<jobInfo/>").await;
    assert_eq!(r.status, StatusCode::OK);
    let seen = up.last();
    assert!(seen.headers.get("x-sfdc-session").is_none());
    assert_eq!(seen.body, Bytes::from_static(b"<jobInfo/>"));
}

#[tokio::test]
async fn soap_calls_are_forwarded_without_their_session_header() {
    let up = Upstream::start().await;
    let ts = TestServer::start(&up.url()).await;
    let sid = logged_in(&ts, "soapq@example.com").await;
    let query = format!(
        r#"<se:Envelope xmlns:se="http://schemas.xmlsoap.org/soap/envelope/"><se:Header><SessionHeader xmlns="urn:partner.soap.sforce.com"><sessionId>{sid}</sessionId></SessionHeader></se:Header><se:Body><query xmlns="urn:partner.soap.sforce.com"><queryString>SELECT Id FROM Account</queryString></query></se:Body></se:Envelope>"#
    );
    let r = ts
        .client()
        .post(
            "/services/Soap/u/59.0/00D000000000001",
            "text/xml; charset=UTF-8",
            query,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let seen = up.last();
    let body = String::from_utf8(seen.body.to_vec()).unwrap();
    assert!(
        body.contains("<queryString>SELECT Id FROM Account</queryString>"),
        "{body}"
    );
    assert!(!body.contains(&sid), "{body}");
    assert!(!body.contains("SessionHeader"), "{body}");
    assert_eq!(
        seen.headers["content-length"],
        body.len().to_string().as_str()
    );
    assert_eq!(seen.headers["x-tokengate-user"], "soapq@example.com");

    // Without a valid session, a SOAP call gets the SOAP invalid-session fault.
    let r = ts
        .client()
        .post(
            "/services/Soap/u/59.0",
            "text/xml",
            r#"<se:Envelope xmlns:se="http://schemas.xmlsoap.org/soap/envelope/"><se:Body><query xmlns="urn:partner.soap.sforce.com"/></se:Body></se:Envelope>"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        r.text()
            .contains("<faultcode>sf:INVALID_SESSION_ID</faultcode>")
    );
}

#[tokio::test]
async fn http2_clients_reach_an_http1_upstream_with_the_original_authority() {
    let up = Upstream::start().await;
    let ts = TestServer::start(&up.url()).await;
    let sid = logged_in(&ts, "h2@example.com").await;
    let r = ts
        .h2_client()
        .get(
            "/services/data/v59.0/limits",
            &[("authorization", &format!("OAuth {sid}"))],
        )
        .await;
    assert_eq!(r.version, http::Version::HTTP_2);
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let seen = up.last();
    assert_eq!(seen.version, http::Version::HTTP_11);
    assert_eq!(
        seen.headers["host"],
        format!("127.0.0.1:{}", ts.addr.port()).as_str()
    );
}

/// Streaming is shown by order, not by size: the client holds its last chunk until the
/// upstream has received bytes of the body, and the upstream holds the rest of its answer
/// until the client has received the first part. A proxy that buffered either body would
/// wait for the whole of it, and these exchanges would never finish.
#[tokio::test]
async fn bodies_stream_both_ways() {
    let up = Upstream::start().await;
    let ts = TestServer::start(&up.url()).await;
    let sid = logged_in(&ts, "big@example.com").await;
    // Request: 4 MiB in 64 KiB chunks, the last one held back.
    let big = pattern(4 * 1024 * 1024);
    let chunks: Vec<Bytes> = big.chunks(64 * 1024).map(Bytes::copy_from_slice).collect();
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let req = ts
        .client()
        .request(Method::PUT, "/stream-in")
        .header("authorization", format!("Bearer {sid}"))
        .body(ChannelBody(rx).boxed())
        .unwrap();
    let c = ts.client();
    let answer = tokio::spawn(async move { c.send(req).await });
    let (last, rest) = chunks.split_last().unwrap();
    for chunk in rest {
        tx.send(chunk.clone()).await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while up.streamed_in.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the upstream saw nothing before the client's body ended: the request was buffered"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tx.send(last.clone()).await.unwrap();
    drop(tx);
    let r = answer.await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body == big, "the body arrived whole and in order");

    // Response: the first part reaches the client while the upstream holds the rest.
    let req = ts
        .client()
        .request(Method::GET, "/stream-out")
        .header("authorization", format!("Bearer {sid}"))
        .body(empty_body())
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), ts.client().send_streaming(req))
        .await
        .expect("the head arrives")
        .unwrap();
    let mut body = resp.into_body();
    let first = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("the first part arrives before the upstream sends the rest: not buffered")
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap();
    assert_eq!(&first[..], b"first,");
    up.release_out.notify_one();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(&rest[..], b"second,third");
}

/// The upstream's `/echo-body` records what it received and answers it back: a JSON body, a
/// binary one (every byte value, NUL and invalid UTF-8 included) and an empty one reach the
/// upstream and come back byte for byte, over HTTP/1.1 and HTTP/2.
#[tokio::test]
async fn request_bodies_reach_the_upstream_byte_exact_text_and_binary() {
    let up = Upstream::start().await;
    let ts = TestServer::start(&up.url()).await;
    let sid = logged_in(&ts, "echo@example.com").await;
    let json =
        Bytes::from_static(r#"{"Name":"Café \"Acme\"","Notes":"line1\r\nline2"}"#.as_bytes());
    let binary: Bytes = (0..=255u8).cycle().take(70_000).collect::<Vec<u8>>().into();
    for client in [ts.client(), ts.h2_client()] {
        for (content_type, body) in [
            ("application/json", json.clone()),
            ("application/octet-stream", binary.clone()),
            ("application/octet-stream", Bytes::new()),
        ] {
            let b = client
                .request(Method::POST, "/echo-body")
                .header("authorization", format!("Bearer {sid}"))
                .header("content-type", content_type);
            let r = client.call(b, body.clone()).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
            let seen = up.last();
            assert_eq!(seen.uri, "/echo-body");
            assert_eq!(seen.method, Method::POST);
            assert_eq!(seen.headers["content-type"], content_type);
            assert!(
                seen.body == body,
                "{:?}, {content_type}: the upstream received {} bytes, not the {} sent",
                r.version,
                seen.body.len(),
                body.len()
            );
            assert!(r.body == body, "{:?}: the echo came back whole", r.version);
        }
    }
}

/// A multi-megabyte answer (not a multiple of any buffer size) arrives byte for byte, over
/// HTTP/1.1 and HTTP/2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_megabyte_answer_arrives_byte_exact_over_http1_and_h2() {
    let up = Upstream::start().await;
    let ts = TestServer::start(&up.url()).await;
    let sid = logged_in(&ts, "large@example.com").await;
    const N: usize = 5 * 1024 * 1024 + 4093;
    let expected = pattern(N);
    for (client, version) in [
        (ts.client(), http::Version::HTTP_11),
        (ts.h2_client(), http::Version::HTTP_2),
    ] {
        let r = client
            .get_with_session(&format!("/large?bytes={N}"), &sid)
            .await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.version, version);
        assert_eq!(r.body.len(), N, "{version:?}");
        assert!(r.body == expected, "{version:?}: the bytes differ");
        assert_eq!(up.last().uri, format!("/large?bytes={N}"));
    }
}

/// An upstream's error is the upstream's answer: its 500, its content type and its body reach
/// the client unchanged (tokengate's own 502 is for an upstream it could not reach).
#[tokio::test]
async fn an_upstream_500_passes_through_with_its_status_and_body_unchanged() {
    let up = Upstream::start().await;
    let ts = TestServer::start(&up.url()).await;
    let sid = logged_in(&ts, "error@example.com").await;
    for client in [ts.client(), ts.h2_client()] {
        let r = client.get_with_session("/error", &sid).await;
        assert_eq!(
            r.status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "{:?}",
            r.version
        );
        assert_eq!(
            r.text(),
            r#"[{"message":"upstream failure","errorCode":"UNKNOWN_EXCEPTION"}]"#
        );
        assert_eq!(
            r.header("content-type"),
            Some("application/json;charset=UTF-8")
        );
        assert_eq!(up.last().uri, "/error");
    }
}

/// An answer the upstream sends chunked (no length known in advance) is relayed whole, and
/// tokengate invents no length for it.
#[tokio::test]
async fn a_chunked_answer_is_relayed_whole() {
    let up = Upstream::start().await;
    let ts = TestServer::start(&up.url()).await;
    let sid = logged_in(&ts, "chunked@example.com").await;
    for client in [ts.client(), ts.h2_client()] {
        let r = client.get_with_session("/chunked", &sid).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.version);
        assert_eq!(r.text(), "first,second,third", "{:?}", r.version);
        assert_eq!(r.header("content-length"), None, "{:?}", r.version);
    }
    assert_eq!(up.arrived("/chunked"), 2);
}

#[tokio::test]
async fn unreachable_upstream_gives_502_and_slow_upstream_gives_504() {
    // A port that refuses connections.
    let (_held, dead) = refusing_address();
    let ts = TestServer::start(&format!("http://{dead}")).await;
    let sid = logged_in(&ts, "down@example.com").await;
    let r = ts
        .client()
        .get_with_session("/services/data/v59.0/", &sid)
        .await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(r.json()["error"], "bad_gateway");
    assert!(!r.text().contains(&sid));

    let up = Upstream::start().await;
    let ts = TestServer::start_with(&up.url(), |c| {
        c.upstream.response_timeout = Duration::from_millis(500)
    })
    .await;
    let sid = logged_in(&ts, "slow@example.com").await;
    let started = std::time::Instant::now();
    let r = ts.client().get_with_session("/slow", &sid).await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(r.json()["error"], "gateway_timeout");
    // The 500 ms timeout, not the upstream's 5 s answer.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answered after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn each_call_on_a_reused_upstream_connection_gets_its_own_response_timeout() {
    // An upstream connection keeps one timer for the response timeout and moves it forward
    // for each call: a call on a connection that an earlier call used is timed from its own
    // start (not the earlier call's), and its timeout still fires.
    let up = Upstream::start().await;
    let ts = TestServer::start_with(&up.url(), |c| {
        c.upstream.response_timeout = Duration::from_millis(1000)
    })
    .await;
    let sid = logged_in(&ts, "slow-again@example.com").await;
    let c = ts.client();
    for round in 0..2 {
        let r = c.get_with_session("/services/data/v59.0/", &sid).await;
        assert_eq!(r.status, StatusCode::OK, "round {round}");
        // 600 ms later, on the same connection, an answer that takes 600 ms: inside its own
        // second, past the first call's.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let r = c.get_with_session("/delay/600", &sid).await;
        assert_eq!(r.status, StatusCode::OK, "round {round}: {}", r.text());
        // At once, a call the upstream answers only after 5 s.
        let started = std::time::Instant::now();
        let r = c.get_with_session("/slow", &sid).await;
        assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT, "round {round}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "round {round}: answered after {:?}",
            started.elapsed()
        );
    }
    // Two connections were made: each timed-out one was dropped, not reused.
    assert_eq!(up.connections.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_answer_that_streams_for_longer_than_the_idle_timeout_is_sent_whole() {
    // A connection whose answer is still streaming is not idle, however long the body takes.
    let up = Upstream::start().await;
    let ts = TestServer::start_with(&up.url(), |c| {
        c.server.idle_timeout = Duration::from_millis(700);
        c.server.header_read_timeout = Duration::from_millis(700);
    })
    .await;
    let sid = logged_in(&ts, "drip@example.com").await;
    let c = ts.client();
    // Ten chunks over three seconds: more than the idle close and its grace together.
    let req = c
        .request(http::Method::GET, "/drip")
        .header("authorization", format!("Bearer {sid}"))
        .body(empty_body())
        .unwrap();
    let r = c.send_result(req).await.expect("the whole body");
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.len(), 1000);
}

#[tokio::test]
async fn unauthenticated_calls_get_the_rest_invalid_session_error() {
    let up = Upstream::start().await;
    let ts = TestServer::start(&up.url()).await;
    let c = ts.client();
    for headers in [
        vec![],
        vec![("authorization", "Bearer 00D000000000001!nope")],
        vec![("authorization", "OAuth garbage")],
        vec![("x-sfdc-session", "00D000000000001!nope")],
    ] {
        let r = c.get("/services/data/v59.0/sobjects", &headers).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{headers:?}");
        assert_eq!(
            r.header("content-type"),
            Some("application/json;charset=UTF-8")
        );
        assert_eq!(
            r.text(),
            r#"[{"message":"Session expired or invalid","errorCode":"INVALID_SESSION_ID"}]"#
        );
    }
    assert!(up.requests().is_empty());
}

#[tokio::test]
async fn forwarded_calls_reuse_one_upstream_connection_and_replace_a_closed_one() {
    reuse_one_upstream_connection().await;
}

/// The same on two worker threads: idle connections are kept per thread, and a call on the
/// other thread takes the one idle connection rather than opening another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_on_any_worker_thread_reuse_the_idle_upstream_connection() {
    reuse_one_upstream_connection().await;
}

async fn reuse_one_upstream_connection() {
    let up = Upstream::start().await;
    let ts = TestServer::start(&up.url()).await;
    let sid = logged_in(&ts, "pool@example.com").await;
    let auth = format!("Bearer {sid}");
    let c = ts.client();
    let connections = || up.connections.load(std::sync::atomic::Ordering::SeqCst);
    // Sequential calls, bodies of every shape (a HEAD answer has none), one connection.
    for i in 0..30 {
        let method = if i % 3 == 0 {
            Method::HEAD
        } else {
            Method::GET
        };
        let b = c
            .request(method.clone(), "/services/data/v59.0/limits")
            .header("authorization", &auth);
        let r = c.call(b, Bytes::new()).await;
        assert_eq!(r.status, StatusCode::OK, "{method} {}", r.text());
        if method == Method::GET {
            assert_eq!(r.json()["records"][0]["Name"], "Acme");
        }
    }
    assert_eq!(
        connections(),
        1,
        "sequential calls opened new upstream connections"
    );
    // An answer with `Connection: close` ends that connection; the next call opens another.
    let r = c.get("/close", &[("authorization", &auth)]).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = c
        .get("/services/data/v59.0/limits", &[("authorization", &auth)])
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(connections(), 2);
    // Concurrent calls each get a connection, and all of them are kept for reuse.
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let c = ts.client();
            let auth = auth.clone();
            tokio::spawn(async move { c.get("/slowish", &[("authorization", &auth)]).await.status })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap(), StatusCode::OK);
    }
    let after_burst = connections();
    for _ in 0..8 {
        let r = c
            .get("/services/data/v59.0/limits", &[("authorization", &auth)])
            .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    assert_eq!(
        connections(),
        after_burst,
        "idle connections were not reused"
    );
}

/// An upstream that answers one request per connection with keep-alive headers, then closes
/// the connection 100 ms later, as a server with a short idle timeout does. It counts the
/// connections it accepted and those it has closed.
async fn impatient_upstream() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted: std::sync::Arc<std::sync::atomic::AtomicUsize> = Default::default();
    let count = accepted.clone();
    let closed: std::sync::Arc<std::sync::atomic::AtomicUsize> = Default::default();
    let closes = closed.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let closes = closes.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = tcp
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}")
                    .await;
                tokio::time::sleep(Duration::from_millis(100)).await;
                drop(tcp);
                closes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            });
        }
    });
    (addr, accepted, closed)
}

#[tokio::test]
async fn an_idle_connection_the_upstream_closed_is_not_used_again() {
    let (addr, accepted, closed) = impatient_upstream().await;
    let ts = TestServer::start(&format!("http://{addr}")).await;
    let sid = logged_in(&ts, "idle@example.com").await;
    let auth = format!("Bearer {sid}");
    for i in 1..=3 {
        let r = ts
            .client()
            .get("/services/data/v59.0/limits", &[("authorization", &auth)])
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        // The next request goes once the upstream has closed this idle connection.
        eventually(
            "the upstream closes the idle connection",
            Duration::from_secs(5),
            async || closed.load(std::sync::atomic::Ordering::SeqCst) == i,
        )
        .await;
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
}

#[tokio::test]
async fn idle_upstream_connections_are_closed_after_the_idle_timeout_on_a_quiet_proxy() {
    let up = Upstream::start().await;
    let ts = TestServer::start_with(&up.url(), |c| {
        c.upstream.pool_idle_timeout = Duration::from_millis(400);
    })
    .await;
    let sid = logged_in(&ts, "quiet@example.com").await;
    let r = ts
        .client()
        .get_with_session("/services/data/v59.0/limits", &sid)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let open = || up.open.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(open(), 1, "the connection stays open for reuse at first");
    // No further call takes the connection: only the server's sweep can close it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while open() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(open(), 0, "the idle upstream connection was never closed");
}
