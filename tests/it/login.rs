//! The three login dialects against the real server over TLS: SOAP `login()` as each client
//! sends it, the OAuth 2.0 password grant, and HTTP Basic on a proxied call; and the one
//! generic answer every failure gets.

use std::io::Write as _;

use crate::support::*;
use http::{Method, StatusCode};

#[tokio::test]
async fn soap_login_returns_a_salesforce_shaped_result() {
    let up = Upstream::start().await;
    let ts = TestServer::start(&up.url()).await;
    let token = ts.add_user("Integration@Example.com").await;

    // Usernames are case-insensitive.
    let r = ts
        .client()
        .post(
            "/services/Soap/u/59.0",
            "text/xml",
            soap_login_body("INTEGRATION@example.COM", &format!("{PASSWORD}{token}")),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("text/xml; charset=utf-8"));
    let xml = r.text();
    let org15 = &ts.cfg.server.org.id15;
    assert_eq!(
        extract(&xml, "serverUrl").unwrap(),
        format!("{}/services/Soap/u/59.0/{org15}", ts.origin)
    );
    assert_eq!(
        extract(&xml, "metadataServerUrl").unwrap(),
        format!("{}/services/Soap/m/59.0/{org15}", ts.origin)
    );
    let sid = extract(&xml, "sessionId").unwrap();
    assert!(sid.starts_with(&format!("{org15}!")), "{sid}");
    assert!(!sid.contains(['&', '<', '>', '"', '\'', '.']), "{sid}");
    assert_eq!(extract(&xml, "userId").unwrap().len(), 18);
    assert_eq!(
        extract(&xml, "organizationId").unwrap(),
        ts.cfg.server.org.id18
    );
    assert_eq!(extract(&xml, "sessionSecondsValid").unwrap(), "7200");
    assert_eq!(extract(&xml, "passwordExpired").unwrap(), "false");
    assert_eq!(
        extract(&xml, "userName").unwrap(),
        "integration@example.com"
    );
    assert!(xml.starts_with(r#"<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns="urn:partner.soap.sforce.com""#));

    // The session works for a proxied call.
    let r = ts
        .client()
        .get_with_session("/services/data/v59.0/sobjects", &sid)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

#[tokio::test]
async fn soap_login_accepts_every_client_variant() {
    let up = Upstream::start().await;
    let ts = TestServer::start(&up.url()).await;
    let token = ts.add_user("dl@example.com").await;
    let secret = format!("{PASSWORD}{token}");
    let c = ts.client();

    // Data Loader: trailing slash, charset, empty SOAPAction, gzip-compressed body.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(soap_login_body("dl@example.com", &secret).as_bytes())
        .unwrap();
    let b = c
        .request(Method::POST, "/services/Soap/u/64.0/")
        .header("content-type", "text/xml; charset=UTF-8")
        .header("soapaction", "\"\"")
        .header("content-encoding", "gzip")
        .header("accept", "text/xml");
    let r = c.call(b, gz.finish().unwrap()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());

    // simple-salesforce: declaration, CallOptions, prefixed elements, SOAPAction login.
    let ss = format!(
        r#"<?xml version="1.0" encoding="utf-8" ?>
<env:Envelope xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
    xmlns:env="http://schemas.xmlsoap.org/soap/envelope/" xmlns:urn="urn:partner.soap.sforce.com">
  <env:Header><urn:CallOptions><urn:client>simple-salesforce</urn:client><urn:defaultNamespace>sf</urn:defaultNamespace></urn:CallOptions></env:Header>
  <env:Body><n1:login xmlns:n1="urn:partner.soap.sforce.com"><n1:username>dl@example.com</n1:username><n1:password>{secret}</n1:password></n1:login></env:Body>
</env:Envelope>"#
    );
    let b = c
        .request(Method::POST, "/services/Soap/u/59.0")
        .header("content-type", "text/xml")
        .header("charset", "UTF-8")
        .header("soapaction", "login");
    assert_eq!(c.call(b, ss).await.status, StatusCode::OK);

    // Enterprise endpoint answers in the enterprise namespace with a /Soap/c/ serverUrl.
    let r = c
        .post(
            "/services/Soap/c/42.0",
            "text/xml",
            soap_login_body("dl@example.com", &secret),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.text()
            .contains(r#"xmlns="urn:enterprise.soap.sforce.com""#)
    );
    assert!(
        extract(&r.text(), "serverUrl")
            .unwrap()
            .contains("/services/Soap/c/42.0/")
    );

    // Beatbox sends the absolute URL in the request line.
    let body = soap_login_body("dl@example.com", &secret);
    let raw = format!(
        "POST https://127.0.0.1:{port}/services/Soap/u/36.0 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: text/xml; charset=utf-8\r\nSOAPAction: \"\"\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len(),
        port = ts.addr.port()
    );
    let answer = raw_exchange(
        &ts.ca,
        ts.addr,
        raw.as_bytes(),
        std::time::Duration::from_secs(10),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("<sessionId>"));
}

#[tokio::test]
async fn oauth_password_grant_returns_a_signed_token() {
    let up = Upstream::start().await;
    let ts = TestServer::start(&up.url()).await;
    let token = ts.add_user("oauth@example.com").await;
    let r = ts
        .client()
        .oauth_login("oauth@example.com", &format!("{PASSWORD}{token}"))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let j = r.json();
    assert_eq!(j["instance_url"], ts.origin.as_str());
    assert_eq!(j["token_type"], "Bearer");
    let id = j["id"].as_str().unwrap();
    assert!(
        id.starts_with(&format!("{}/id/{}/005", ts.origin, ts.cfg.server.org.id18)),
        "{id}"
    );
    let issued_at = j["issued_at"].as_str().unwrap();
    assert!(issued_at.parse::<u128>().unwrap() > 1_600_000_000_000);
    // omniauth-salesforce verifies this signature.
    assert_eq!(
        j["signature"].as_str().unwrap(),
        tokengate::wire::oauth::signature(CLIENT_SECRET, id, issued_at)
    );
    let sid = j["access_token"].as_str().unwrap();

    // Identity URL with the oauth_token parameter, and userinfo with the Bearer header.
    let path = id.strip_prefix(&ts.origin).unwrap();
    let r = ts
        .client()
        .get(&format!("{path}?format=json&oauth_token={sid}"), &[])
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["username"], "oauth@example.com");
    assert_eq!(r.json()["organization_id"], ts.cfg.server.org.id18.as_str());
    let r = ts
        .client()
        .get_with_session("/services/oauth2/userinfo", sid)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["preferred_username"], "oauth@example.com");

    // Revoke: the token dies; a second revoke is answered 200 too (RFC 7009 §2.2: an invalid
    // token is no error, so revocation tells nothing about a token).
    let r = ts
        .client()
        .post(
            "/services/oauth2/revoke",
            "application/x-www-form-urlencoded",
            format!("token={sid}"),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = ts
        .client()
        .get_with_session("/services/data/v59.0/limits", sid)
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = ts
        .client()
        .post(
            &format!("/services/oauth2/revoke?token={sid}"),
            "application/x-www-form-urlencoded",
            "",
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.text(), "");
}

#[tokio::test]
async fn oauth_client_and_request_errors_are_oauth_shaped() {
    let up = Upstream::start().await;
    let ts = TestServer::start(&up.url()).await;
    let token = ts.add_user("o@example.com").await;
    let secret = format!("{PASSWORD}{token}");
    let c = ts.client();
    let form = |pairs: &[(&str, &str)]| serde_urlencoded::to_string(pairs).unwrap();
    let cases = [
        (
            form(&[
                ("grant_type", "password"),
                ("client_id", "nobody"),
                ("client_secret", CLIENT_SECRET),
                ("username", "o@example.com"),
                ("password", &secret),
            ]),
            "invalid_client_id",
        ),
        (
            form(&[
                ("grant_type", "password"),
                ("client_id", CLIENT_ID),
                ("client_secret", "wrong-secret"),
                ("username", "o@example.com"),
                ("password", &secret),
            ]),
            "invalid_client",
        ),
        (
            form(&[
                ("grant_type", "authorization_code"),
                ("client_id", CLIENT_ID),
                ("client_secret", CLIENT_SECRET),
            ]),
            "unsupported_grant_type",
        ),
        (form(&[("client_id", CLIENT_ID)]), "invalid_request"),
        (
            form(&[
                ("grant_type", "password"),
                ("client_id", CLIENT_ID),
                ("client_secret", CLIENT_SECRET),
                ("username", "o@example.com"),
            ]),
            "invalid_request",
        ),
        (
            "grant_type=password&grant_type=password".to_owned(),
            "invalid_request",
        ),
    ];
    for (body, error) in cases {
        let r = c
            .post(
                "/services/oauth2/token",
                "application/x-www-form-urlencoded",
                body.clone(),
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text());
        assert_eq!(r.json()["error"], error, "{body}");
        assert!(!r.text().contains(&secret));
    }
    let r = c
        .post("/services/oauth2/token", "application/json", "{}")
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["error"], "invalid_request");
    let r = c.get("/services/oauth2/token", &[]).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn basic_credentials_on_a_proxied_call_are_accepted_and_not_forwarded() {
    let up = Upstream::start().await;
    let ts = TestServer::start(&up.url()).await;
    let token = ts.add_user("basic@example.com").await;
    let auth = basic("basic@example.com", &format!("{PASSWORD}{token}"));
    let r = ts
        .client()
        .get(
            "/services/data/v59.0/query?q=SELECT+Id+FROM+Account",
            &[("authorization", &auth)],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let seen = up.last();
    assert!(seen.headers.get("authorization").is_none());
    assert_eq!(seen.headers["x-tokengate-user"], "basic@example.com");
    assert_eq!(
        seen.uri,
        "/services/data/v59.0/query?q=SELECT+Id+FROM+Account"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_connection_repeating_basic_credentials_is_checked_on_every_call() {
    // A connection remembers the last Basic credential it presented (to skip hashing it
    // again); what it remembers must never stand in for another secret or another user, nor
    // outlive a change to the user. A proxy in front of tokengate sends many clients' calls
    // over one connection, so the attacker is the next request on it.
    let up = Upstream::start().await;
    let ts = TestServer::start(&up.url()).await;
    let t1 = ts.add_user("first@example.com").await;
    let t2 = ts.add_user("second@example.com").await;
    let first = basic("first@example.com", &format!("{PASSWORD}{t1}"));
    let second = basic("second@example.com", &format!("{PASSWORD}{t2}"));
    let mut off_by_one = t1.clone();
    let last = off_by_one.pop().unwrap();
    off_by_one.push(if last == 'A' { 'B' } else { 'A' });
    let guesses = [
        basic("first@example.com", &format!("{PASSWORD}{off_by_one}")),
        basic("first@example.com", &format!("{PASSWORD}{t1}x")),
        basic("first@example.com", &format!("{PASSWORD}{t2}")),
        basic("first@example.com", PASSWORD),
        basic("second@example.com", &format!("{PASSWORD}{t1}")),
    ];
    // Every call below on one keep-alive connection.
    let mut conn = OneConnection::open(&ts).await;
    async fn call(conn: &mut OneConnection, auth: &str) -> StatusCode {
        conn.get("/services/data/v59.0/sobjects", &[("authorization", auth)])
            .await
    }
    for (auth, user) in [
        (&first, "first@example.com"),
        (&first, "first@example.com"),
        (&second, "second@example.com"),
        (&first, "first@example.com"),
    ] {
        assert_eq!(call(&mut conn, auth).await, StatusCode::OK);
        assert_eq!(up.last().headers["x-tokengate-user"], user);
    }
    for guess in &guesses {
        assert_eq!(call(&mut conn, &first).await, StatusCode::OK);
        let forwarded = up.requests().len();
        assert_eq!(
            call(&mut conn, guess).await,
            StatusCode::UNAUTHORIZED,
            "a wrong secret right after the right one is refused"
        );
        assert_eq!(up.requests().len(), forwarded, "and nothing is forwarded");
    }
    // The user is disabled from elsewhere; this connection presented the credential last.
    assert_eq!(call(&mut conn, &first).await, StatusCode::OK);
    cli(&ts, &["user", "disable", "first@example.com"], None);
    assert_eq!(call(&mut conn, &first).await, StatusCode::UNAUTHORIZED);
    assert_eq!(call(&mut conn, &second).await, StatusCode::OK);
    cli(&ts, &["user", "enable", "first@example.com"], None);
    assert_eq!(call(&mut conn, &first).await, StatusCode::OK);
    assert_eq!(up.last().headers["x-tokengate-user"], "first@example.com");
}

/// Every header but `Date`, and the body: what a caller sees of an answer.
fn seen(r: &Reply) -> (StatusCode, Vec<(String, String)>, String) {
    let mut headers: Vec<(String, String)> = r
        .headers
        .iter()
        // The date and the request id differ from any request to the next, whatever its
        // outcome: they tell nothing of it.
        .filter(|(k, _)| *k != "date" && *k != "x-request-id")
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    headers.sort();
    (r.status, headers, r.text())
}

/// Wrong password, wrong token, a password without its token, an unknown user, a disabled
/// user, a locked user with the right credentials and a user outside its login ranges with
/// the right credentials all get the same answer — status, every header but `Date`, and body
/// — in each dialect: SOAP on the partner and enterprise endpoints, OAuth, Basic, and the
/// console's sign-in (where the password alone is the secret).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_login_failure_gets_a_byte_identical_answer() {
    let up = Upstream::start().await;
    let ts = TestServer::start_with(&up.url(), |c| c.lockout.max_failures = 3).await;
    let mut tokens = std::collections::HashMap::new();
    for user in [
        "wrongpw",
        "wrongtoken",
        "notoken",
        "gone",
        "locked",
        "ranged",
    ] {
        let name = format!("{user}@example.com");
        tokens.insert(user, ts.add_user(&name).await);
    }
    let admin = ts.add_user_with("admin@example.com", PASSWORD, true).await;
    let admin = basic("admin@example.com", &format!("{PASSWORD}{admin}"));
    cli(&ts, &["user", "disable", "gone@example.com"], None);
    let c = ts.client();
    let b = c
        .request(
            Method::PUT,
            "/tokengate/v1/admin/users/ranged@example.com/login-ranges",
        )
        .header("authorization", &admin)
        .header("content-type", "application/json");
    assert_eq!(
        c.call(b, r#"{"ranges": ["203.0.113.0/24"]}"#).await.status,
        StatusCode::OK
    );
    for guess in ["Wrong1aaa", "Wrong2bbb", "Wrong3ccc"] {
        c.post(
            "/services/Soap/u/59.0",
            "text/xml",
            soap_login_body("locked@example.com", guess),
        )
        .await;
    }
    let token = |u: &str| tokens[u].clone();
    let mut wrong = token("wrongtoken");
    wrong.replace_range(0..1, if wrong.starts_with('A') { "B" } else { "A" });
    // (username, secret): every kind of failure, the locked and ranged users with their right
    // password and token.
    let attempts = [
        (
            "wrongpw@example.com",
            format!("WrongPass1{}", token("wrongpw")),
        ),
        ("wrongtoken@example.com", format!("{PASSWORD}{wrong}")),
        ("notoken@example.com", PASSWORD.to_owned()),
        (
            "nobody@example.com",
            format!("{PASSWORD}{}", token("wrongpw")),
        ),
        ("gone@example.com", format!("{PASSWORD}{}", token("gone"))),
        (
            "locked@example.com",
            format!("{PASSWORD}{}", token("locked")),
        ),
        (
            "ranged@example.com",
            format!("{PASSWORD}{}", token("ranged")),
        ),
    ];
    let mut partner = Vec::new();
    let mut enterprise = Vec::new();
    let mut oauth = Vec::new();
    let mut basic_answers = Vec::new();
    for (user, secret) in &attempts {
        let r = c
            .post(
                "/services/Soap/u/59.0",
                "text/xml",
                soap_login_body(user, secret),
            )
            .await;
        assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
        partner.push(seen(&r));
        let r = c
            .post(
                "/services/Soap/c/59.0",
                "text/xml",
                soap_login_body(user, secret),
            )
            .await;
        enterprise.push(seen(&r));
        oauth.push(seen(&c.oauth_login(user, secret).await));
        // Basic with the locked user's right token would truthfully say 423 (the token cannot
        // be guessed); with its password alone it must not.
        let secret = if user.starts_with("locked") {
            PASSWORD.to_owned()
        } else {
            secret.clone()
        };
        let r = c
            .get(
                "/services/data/v59.0/sobjects",
                &[("authorization", &basic(user, &secret))],
            )
            .await;
        basic_answers.push(seen(&r));
    }
    for (name, answers) in [
        ("partner", &partner),
        ("enterprise", &enterprise),
        ("oauth", &oauth),
        ("basic", &basic_answers),
    ] {
        for (i, a) in answers.iter().enumerate() {
            assert_eq!(
                a, &answers[0],
                "{name}: attempt {i} ({}) differs",
                attempts[i].0
            );
        }
    }
    assert_eq!(
        partner[0].2,
        tokengate::wire::soap::login_fault(tokengate::wire::soap::Flavor::Partner)
    );
    assert_eq!(
        enterprise[0].2,
        tokengate::wire::soap::login_fault(tokengate::wire::soap::Flavor::Enterprise)
    );
    assert_eq!(oauth[0].0, StatusCode::BAD_REQUEST);
    assert_eq!(
        oauth[0].2,
        r#"{"error":"invalid_grant","error_description":"authentication failure"}"#
    );
    assert_eq!(basic_answers[0].0, StatusCode::UNAUTHORIZED);

    // The console: the password alone. Each user's right password answers as a wrong one
    // does; across users the answers differ only by the username the form shows again.
    let sign_in = async |user: &str, password: &str| {
        let b = c
            .request(Method::POST, "/tokengate/console/signin")
            .header("content-type", "application/x-www-form-urlencoded");
        let form =
            serde_urlencoded::to_string([("username", user), ("password", password)]).unwrap();
        let mut s = seen(&c.call(b, form).await);
        // The page shows the username typed: take it out, and the length it changes.
        s.2 = s.2.replace(user, "USER");
        s.1.retain(|(k, _)| k != "content-length");
        s
    };
    let reference = sign_in("wrongpw@example.com", "WrongPass1").await;
    assert_eq!(reference.0, StatusCode::UNAUTHORIZED);
    for user in ["nobody", "gone", "locked", "ranged"] {
        let user = format!("{user}@example.com");
        assert_eq!(
            sign_in(&user, PASSWORD).await,
            reference,
            "{user}, right password"
        );
        assert_eq!(
            sign_in(&user, "WrongPass9").await,
            reference,
            "{user}, wrong password"
        );
    }
    assert!(
        up.requests().is_empty(),
        "no failed login reaches the upstream"
    );
}

#[tokio::test]
async fn logout_and_get_user_info_work_with_the_soap_session_header() {
    let up = Upstream::start().await;
    let ts = TestServer::start(&up.url()).await;
    let token = ts.add_user("soapy@example.com").await;
    let sid = ts
        .soap_login("soapy@example.com", &format!("{PASSWORD}{token}"))
        .await;
    let call = |op: &str| {
        format!(
            r#"<se:Envelope xmlns:se="http://schemas.xmlsoap.org/soap/envelope/"><se:Header><SessionHeader xmlns="urn:partner.soap.sforce.com"><sessionId>{sid}</sessionId></SessionHeader></se:Header><se:Body><{op} xmlns="urn:partner.soap.sforce.com"/></se:Body></se:Envelope>"#
        )
    };
    let c = ts.client();
    let r = c
        .post(
            "/services/Soap/u/59.0/00D000000000001",
            "text/xml",
            call("getUserInfo"),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(extract(&r.text(), "userName").unwrap(), "soapy@example.com");
    assert!(
        r.text()
            .contains("<getUserInfoResponse><result><accessibilityMode>")
    );

    let r = c
        .post(
            "/services/Soap/u/59.0/00D000000000001",
            "text/xml",
            call("logout"),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.text().contains("<logoutResponse/>"));

    // After logout the session is dead in every dialect.
    let r = c
        .post(
            "/services/Soap/u/59.0/00D000000000001",
            "text/xml",
            call("getUserInfo"),
        )
        .await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        r.text()
            .contains("<faultcode>sf:INVALID_SESSION_ID</faultcode>")
    );
    assert!(r.text().contains("Illegal Session"));
    let r = c
        .get_with_session("/services/data/v59.0/sobjects", &sid)
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}
