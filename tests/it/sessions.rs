//! Session lifetimes: idle and absolute expiry, revocation by disabling the user or changing
//! the password, and persistence across a restart; and an ended session (logged out, or its
//! user disabled) refused by every route that takes one, each in its own dialect.

use std::time::Duration;

use crate::support::*;
use http::StatusCode;

async fn call(ts: &TestServer, sid: &str) -> StatusCode {
    ts.client()
        .get_with_session("/services/data/v59.0/sobjects", sid)
        .await
        .status
}

#[tokio::test]
async fn sessions_survive_a_restart_until_they_expire() {
    let up = Upstream::start().await;
    let ts = TestServer::start(&up.url()).await;
    let token = ts.add_user("persist@example.com").await;
    let sid = ts
        .soap_login("persist@example.com", &format!("{PASSWORD}{token}"))
        .await;
    let revoked = ts
        .soap_login("persist@example.com", &format!("{PASSWORD}{token}"))
        .await;
    assert_eq!(call(&ts, &sid).await, StatusCode::OK);
    let r = ts
        .client()
        .post(
            "/services/oauth2/revoke",
            "application/x-www-form-urlencoded",
            format!("token={revoked}"),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);

    let ts = ts.restart().await;
    assert_eq!(
        call(&ts, &sid).await,
        StatusCode::OK,
        "the session outlived the restart"
    );
    assert_eq!(
        call(&ts, &revoked).await,
        StatusCode::UNAUTHORIZED,
        "a revoked session stays dead"
    );
    // The token still works after the restart too (the server key is persisted).
    ts.soap_login("persist@example.com", &format!("{PASSWORD}{token}"))
        .await;
    assert_eq!(up.last().headers["x-tokengate-user"], "persist@example.com");
    ts.stop().await;
}

#[tokio::test]
async fn idle_sessions_expire_and_soap_says_so() {
    let up = Upstream::start().await;
    let ts = TestServer::start_with(&up.url(), |c| {
        c.auth.session_idle_timeout = Duration::from_secs(1);
        c.auth.session_lifetime = Duration::from_secs(60);
    })
    .await;
    let token = ts.add_user("idle@example.com").await;
    let r = ts
        .client()
        .post(
            "/services/Soap/u/59.0",
            "text/xml",
            soap_login_body("idle@example.com", &format!("{PASSWORD}{token}")),
        )
        .await;
    assert_eq!(extract(&r.text(), "sessionSecondsValid").unwrap(), "1");
    let sid = extract(&r.text(), "sessionId").unwrap();
    assert_eq!(call(&ts, &sid).await, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(call(&ts, &sid).await, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn sessions_end_at_their_lifetime_even_when_busy() {
    let up = Upstream::start().await;
    let ts = TestServer::start_with(&up.url(), |c| {
        c.auth.session_idle_timeout = Duration::from_secs(2);
        c.auth.session_lifetime = Duration::from_secs(3);
    })
    .await;
    let token = ts.add_user("life@example.com").await;
    let sid = ts
        .soap_login("life@example.com", &format!("{PASSWORD}{token}"))
        .await;
    // Session times are whole seconds, so a 3 s lifetime ends between 2 and 4 s after the
    // login. Calls every 300 ms keep the session from ever being idle for its 2 s.
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_millis(1800) {
        assert_eq!(call(&ts, &sid).await, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut ended = false;
    while !ended && started.elapsed() < Duration::from_millis(4500) {
        ended = call(&ts, &sid).await == StatusCode::UNAUTHORIZED;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(ended, "a busy session outlived its lifetime");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_a_user_or_changing_the_password_ends_sessions_and_logins() {
    let up = Upstream::start().await;
    let ts = TestServer::start(&up.url()).await;
    let token = ts.add_user("cut@example.com").await;
    let secret = format!("{PASSWORD}{token}");
    let sid = ts.soap_login("cut@example.com", &secret).await;
    // Through the CLI, as an operator does, while the server runs.
    cli(&ts, &["user", "disable", "cut@example.com"], None);
    assert_eq!(call(&ts, &sid).await, StatusCode::UNAUTHORIZED);
    let r = ts.client().oauth_login("cut@example.com", &secret).await;
    assert_eq!(r.json()["error"], "invalid_grant");

    cli(&ts, &["user", "enable", "cut@example.com"], None);
    let sid = ts.soap_login("cut@example.com", &secret).await;
    // Without mail configured, a password change changes the password only.
    cli(
        &ts,
        &["user", "passwd", "cut@example.com", "--password-stdin"],
        Some("NewPassw0rd\n"),
    );
    assert_eq!(call(&ts, &sid).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        ts.client()
            .oauth_login("cut@example.com", &secret)
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    ts.soap_login("cut@example.com", &format!("NewPassw0rd{token}"))
        .await;
}

#[tokio::test]
async fn a_keep_alive_connection_switching_session_ids_acts_for_each_ids_user_until_it_ends() {
    // A connection remembers the last session id it presented (to skip hashing it again);
    // what it remembers must never stand in for the session itself.
    let up = Upstream::start().await;
    let ts = TestServer::start(&up.url()).await;
    let t1 = ts.add_user("first@example.com").await;
    let t2 = ts.add_user("second@example.com").await;
    let first = ts
        .soap_login("first@example.com", &format!("{PASSWORD}{t1}"))
        .await;
    let second = ts
        .soap_login("second@example.com", &format!("{PASSWORD}{t2}"))
        .await;
    // One client, calls one after another: one keep-alive connection.
    let client = ts.client();
    let path = "/services/data/v59.0/sobjects";
    for (sid, user) in [
        (&first, "first@example.com"),
        (&first, "first@example.com"),
        (&second, "second@example.com"),
        (&first, "first@example.com"),
    ] {
        assert_eq!(
            client.get_with_session(path, sid).await.status,
            StatusCode::OK
        );
        assert_eq!(up.last().headers["x-tokengate-user"], user);
    }
    // The first session ends on another connection; this one presented it last.
    let revoked = ts
        .client()
        .post(
            "/services/oauth2/revoke",
            "application/x-www-form-urlencoded",
            format!("token={first}"),
        )
        .await;
    assert_eq!(revoked.status, StatusCode::OK);
    let seen = up.requests().len();
    let refused = client.get_with_session(path, &first).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert!(
        refused.text().contains("INVALID_SESSION_ID"),
        "{}",
        refused.text()
    );
    assert_eq!(
        up.requests().len(),
        seen,
        "nothing forwarded for an ended session"
    );
    // A made-up id differing from the remembered one in its last character is no session.
    let mut forged = second.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    assert_eq!(
        client.get_with_session(path, &second).await.status,
        StatusCode::OK
    );
    assert_eq!(
        client.get_with_session(path, &forged).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        client.get_with_session(path, &second).await.status,
        StatusCode::OK
    );
    assert_eq!(up.last().headers["x-tokengate-user"], "second@example.com");
}

/// A SOAP envelope carrying `sid` in its `SessionHeader`, with `call` as its body.
fn envelope_with_session(sid: &str, call: &str) -> String {
    format!(
        r#"<se:Envelope xmlns:se="http://schemas.xmlsoap.org/soap/envelope/"><se:Header><SessionHeader xmlns="urn:partner.soap.sforce.com"><sessionId>{sid}</sessionId></SessionHeader></se:Header><se:Body>{call}</se:Body></se:Envelope>"#
    )
}

/// Asks every route that takes a session with `sid`, an ended one: each refuses it in its own
/// dialect, and nothing reaches the upstream.
async fn every_route_refuses(ts: &TestServer, up: &Upstream, sid: &str, org: &str, uid: &str) {
    let c = ts.client();
    let forwarded = up.requests().len();
    let rest_refusal = |what: &str, r: &Reply| {
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what}: {}", r.text());
        assert_eq!(
            r.json()[0]["errorCode"],
            "INVALID_SESSION_ID",
            "{what}: {}",
            r.text()
        );
    };
    let r = c
        .get_with_session("/services/data/v59.0/sobjects", sid)
        .await;
    rest_refusal("REST", &r);
    let r = c
        .get("/services/data/v59.0/query?q=x", &[("x-sfdc-session", sid)])
        .await;
    rest_refusal("REST, X-SFDC-Session", &r);
    let r = c
        .get("/services/async/59.0/job/750x", &[("x-sfdc-session", sid)])
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "Bulk: {}", r.text());
    assert!(r.text().contains("InvalidSessionId"), "Bulk: {}", r.text());

    let query = r#"<query xmlns="urn:partner.soap.sforce.com"><queryString>SELECT Id FROM Account</queryString></query>"#;
    let user_info = r#"<getUserInfo xmlns="urn:partner.soap.sforce.com"/>"#;
    for (what, call) in [("SOAP call", query), ("SOAP getUserInfo", user_info)] {
        let r = c
            .post(
                "/services/Soap/u/59.0",
                "text/xml",
                envelope_with_session(sid, call),
            )
            .await;
        assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{what}");
        assert!(
            r.text().contains("INVALID_SESSION_ID") && r.text().contains("faultcode"),
            "{what}: {}",
            r.text()
        );
    }

    let r = c.get_with_session(&format!("/id/{org}/{uid}"), sid).await;
    rest_refusal("/id", &r);
    let r = c
        .get(&format!("/id/{org}/{uid}?oauth_token={sid}"), &[])
        .await;
    rest_refusal("/id?oauth_token", &r);
    let r = c.get_with_session("/services/oauth2/userinfo", sid).await;
    rest_refusal("userinfo", &r);

    let bearer = format!("Bearer {sid}");
    for (method, path) in [
        (http::Method::GET, "/tokengate/v1/tokens"),
        (http::Method::GET, "/tokengate/v1/admin/users"),
        (http::Method::POST, "/tokengate/v1/token/reset"),
    ] {
        let r = c
            .call(c.request(method, path).header("authorization", &bearer), "")
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{path}: {}", r.text());
        assert_eq!(r.json()["error"], "invalid_session", "{path}");
    }

    // The console takes only its own cookie: the id there is no console session either.
    let r = c
        .get(
            "/tokengate/console/settings",
            &[("cookie", &format!("__Host-tg_console={sid}"))],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "console");
    assert_eq!(
        r.header("location"),
        Some("/tokengate/console/signin?expired=1")
    );

    assert_eq!(up.requests().len(), forwarded, "nothing was forwarded");
}

/// Logs in with SOAP: the session id, the org id and the user id.
async fn soap_session(ts: &TestServer, username: &str, secret: &str) -> (String, String, String) {
    let r = ts
        .client()
        .post(
            "/services/Soap/u/59.0",
            "text/xml",
            soap_login_body(username, secret),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let xml = r.text();
    let field = |tag| extract(&xml, tag).unwrap_or_else(|| panic!("no {tag}: {xml}"));
    (field("sessionId"), field("organizationId"), field("userId"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logged_out_session_is_refused_by_every_route_in_its_own_dialect() {
    let up = Upstream::start().await;
    let ts = TestServer::start(&up.url()).await;
    let token = ts.add_user_with("gone@example.com", PASSWORD, true).await;
    let secret = format!("{PASSWORD}{token}");
    let (sid, org, uid) = soap_session(&ts, "gone@example.com", &secret).await;
    // Alive first, so that the refusals below are the logout's doing.
    assert_eq!(call(&ts, &sid).await, StatusCode::OK);
    let r = ts
        .client()
        .get_with_session(&format!("/id/{org}/{uid}"), &sid)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let browser = crate::console::Browser::sign_in(&ts, "gone@example.com", PASSWORD)
        .await
        .unwrap_or_else(|r| panic!("signed in: {}", r.status));

    let r = ts
        .client()
        .post(
            "/services/Soap/u/59.0",
            "text/xml",
            envelope_with_session(&sid, r#"<logout xmlns="urn:partner.soap.sforce.com"/>"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    every_route_refuses(&ts, &up, &sid, &org, &uid).await;

    // The console's own session, signed out, is refused the same way.
    let r = browser.submit_raw("/settings", "/signout", &[]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let r = browser.get("/settings").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(
        r.header("location"),
        Some("/tokengate/console/signin?expired=1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_users_session_is_refused_by_every_route_in_its_own_dialect() {
    let up = Upstream::start().await;
    let ts = TestServer::start(&up.url()).await;
    // Another administrator, so that this one may be disabled.
    ts.add_user_with("boss@example.com", PASSWORD, true).await;
    let token = ts.add_user_with("off@example.com", PASSWORD, true).await;
    let secret = format!("{PASSWORD}{token}");
    let (sid, org, uid) = soap_session(&ts, "off@example.com", &secret).await;
    assert_eq!(call(&ts, &sid).await, StatusCode::OK);
    let browser = crate::console::Browser::sign_in(&ts, "off@example.com", PASSWORD)
        .await
        .unwrap_or_else(|r| panic!("signed in: {}", r.status));
    assert_eq!(browser.get("/settings").await.status, StatusCode::OK);

    cli(&ts, &["user", "disable", "off@example.com"], None);
    every_route_refuses(&ts, &up, &sid, &org, &uid).await;
    let r = browser.get("/settings").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "console");
    assert_eq!(
        r.header("location"),
        Some("/tokengate/console/signin?expired=1")
    );
}
