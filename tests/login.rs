//! The three login dialects against the real server over TLS: SOAP `login()` as each client
//! sends it, the OAuth 2.0 password grant, and HTTP Basic on a proxied call; and the one
//! generic answer every failure gets.

mod support;

use std::io::Write as _;

use http::{Method, StatusCode};
use support::*;

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

    // Revoke: the token dies; a second revoke is an invalid_token error.
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
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["error"], "invalid_token");
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

/// Wrong password, wrong token, unknown user, disabled user, and a secret too short to hold a
/// token all get byte-identical answers in each dialect.
#[tokio::test]
async fn every_login_failure_gets_a_byte_identical_answer() {
    let up = Upstream::start().await;
    let ts = TestServer::start(&up.url()).await;
    let token = ts.add_user("victim@example.com").await;
    let disabled_token = ts.add_user("gone@example.com").await;
    let users = ts.app().users.clone();
    tokio::task::spawn_blocking(move || users.set_disabled("gone@example.com", true).unwrap())
        .await
        .unwrap();
    let mut wrong_token = token.clone();
    wrong_token.replace_range(0..1, if token.starts_with('A') { "B" } else { "A" });
    let attempts = [
        ("victim@example.com", format!("WrongPass1{token}")),
        ("victim@example.com", format!("{PASSWORD}{wrong_token}")),
        ("victim@example.com", PASSWORD.to_owned()),
        ("nobody@example.com", format!("{PASSWORD}{token}")),
        ("gone@example.com", format!("{PASSWORD}{disabled_token}")),
    ];
    let c = ts.client();
    let mut soap = Vec::new();
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
        soap.push(r.body.clone());
        let r = c.oauth_login(user, secret).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        oauth.push(r.body.clone());
        let r = c
            .get(
                "/services/data/v59.0/sobjects",
                &[("authorization", &basic(user, secret))],
            )
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        basic_answers.push(r.body.clone());
    }
    for answers in [&soap, &oauth, &basic_answers] {
        assert!(
            answers.windows(2).all(|w| w[0] == w[1]),
            "answers differ: {answers:?}"
        );
    }
    assert_eq!(
        String::from_utf8_lossy(&soap[0]),
        tokengate::wire::soap::login_fault(tokengate::wire::soap::Flavor::Partner)
    );
    assert_eq!(
        &oauth[0][..],
        br#"{"error":"invalid_grant","error_description":"authentication failure"}"#
    );
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
