//! Request ids and the access log: an id on every answer (refusals too), taken from a trusted
//! proxy only when sane, replaced otherwise, the same one upstream; one access line per
//! request with the fields operators filter on, the id on every line about the request, and
//! no secret. Also the OpenAPI document, served without credentials.

use std::path::Path;

use http::{Method, StatusCode};

use crate::support::process::{self, Serve};
use crate::support::*;

const ID: &str = "x-request-id";

/// The last request the upstream saw, and its `X-Request-Id`.
fn upstream_id(up: &Upstream) -> String {
    up.last()
        .headers
        .get(ID)
        .expect("the upstream gets a request id")
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_carries_a_request_id_that_an_untrusted_client_cannot_choose() {
    let up = Upstream::start().await;
    let ts = TestServer::start(&up.url()).await;
    let token = ts.add_user("ids@example.com").await;
    let sid = ts
        .soap_login("ids@example.com", &format!("{PASSWORD}{token}"))
        .await;
    let c = ts.client();

    // A forwarded call: the client's id is replaced, upstream and in the answer alike.
    let r = c
        .get(
            "/services/data/v59.0/",
            &[
                ("authorization", &format!("Bearer {sid}")),
                (ID, "chosen-by-the-client"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let id = r.header(ID).expect("an id on the answer").to_owned();
    assert_ne!(id, "chosen-by-the-client");
    assert_eq!(upstream_id(&up), id);
    // A client that names it in Connection cannot take it off the forwarded request.
    let r = c
        .get(
            "/services/data/v59.0/",
            &[
                ("authorization", &format!("Bearer {sid}")),
                ("connection", "x-request-id"),
            ],
        )
        .await;
    assert_eq!(upstream_id(&up), r.header(ID).unwrap());
    // Ids differ from request to request.
    assert_ne!(r.header(ID).unwrap(), id);

    // Refusals of every kind carry one: no credential, a bad target, an unknown endpoint, a
    // cross-site request, tokengate's own answers.
    let no_session = c.get("/services/data/v59.0/", &[]).await;
    assert_eq!(no_session.status, StatusCode::UNAUTHORIZED);
    let b = c
        .request(Method::GET, "/services/data/v59.0/")
        .header("host", "elsewhere.example");
    let misdirected = c.call(b, "").await;
    assert_eq!(misdirected.status, StatusCode::MISDIRECTED_REQUEST);
    let unknown = c.get("/tokengate/v1/nothing", &[]).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let b = c
        .request(Method::POST, "/tokengate/v1/password")
        .header("sec-fetch-site", "cross-site");
    let cross = c.call(b, "").await;
    assert_eq!(cross.status, StatusCode::FORBIDDEN);
    let health = c.get("/tokengate/health", &[]).await;
    let soap_fault = c
        .post(
            "/services/Soap/u/59.0",
            "text/xml",
            soap_login_body("ids@example.com", "wrong"),
        )
        .await;
    for (what, r) in [
        ("401", &no_session),
        ("421", &misdirected),
        ("404", &unknown),
        ("cross-site 403", &cross),
        ("health", &health),
        ("SOAP fault", &soap_fault),
    ] {
        let id = r
            .header(ID)
            .unwrap_or_else(|| panic!("{what}: no request id"));
        assert!(
            (17..=33).contains(&id.len()) && id.split_once('-').is_some(),
            "{what}: {id}"
        );
    }
    // Over HTTP/2 too.
    let r = ts
        .h2_client()
        .get("/tokengate/health", &[(ID, "mine")])
        .await;
    assert_ne!(r.header(ID).unwrap(), "mine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxys_sane_request_id_is_kept_and_an_insane_one_replaced() {
    let up = Upstream::start().await;
    let ts = TestServer::start_with(&up.url(), |c| {
        c.server.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    let token = ts.add_user("proxied@example.com").await;
    let sid = ts
        .soap_login("proxied@example.com", &format!("{PASSWORD}{token}"))
        .await;
    let c = ts.client();
    let bearer = format!("Bearer {sid}");
    let call = async |id: &str| {
        c.get(
            "/services/data/v59.0/",
            &[("authorization", &bearer), (ID, id)],
        )
        .await
    };
    let kept = "lb-1f2e3d4c/5b6a:7980";
    let r = call(kept).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header(ID), Some(kept));
    assert_eq!(upstream_id(&up), kept);
    let longest = "a".repeat(128);
    assert_eq!(call(&longest).await.header(ID), Some(longest.as_str()));
    for insane in ["a".repeat(129), "two words".into(), "tab\there".into()] {
        let r = call(&insane).await;
        let id = r.header(ID).unwrap();
        assert_ne!(id, insane);
        assert_eq!(upstream_id(&up), id);
    }
    // Refusals keep the proxy's id too: the operator follows it into tokengate's log.
    let r = c.get("/services/data/v59.0/", &[(ID, kept)]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.header(ID), Some(kept));
}

#[tokio::test]
async fn the_openapi_document_is_served_without_credentials() {
    let up = Upstream::start().await;
    let ts = TestServer::start(&up.url()).await;
    let r = ts.client().get("/tokengate/v1/openapi.json", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("application/json")
    );
    let doc = r.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    assert!(doc["paths"]["/tokengate/v1/admin/users/{username}/token/reset"]["post"].is_object());
    // It holds no data: the same bytes for everyone, and no user in it.
    ts.add_user("undocumented@example.com").await;
    let again = ts.client().get("/tokengate/v1/openapi.json", &[]).await;
    assert_eq!(again.body, r.body);
    assert!(!again.text().contains("undocumented@example.com"));
}

/// The access lines of a log (JSON lines), by request id.
fn access_lines(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["target"] == "tokengate::access")
        .collect()
}

fn config(dir: &Path, upstream: &str, extra: &str) -> std::path::PathBuf {
    let path = dir.join("tokengate.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"{upstream}\"\n[store]\npath = \"data\"\n{}{extra}\n",
            store_backend_toml()
        ),
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_has_one_line_per_request_with_its_id_and_no_secret() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &up.url(), "");
    let token = process::add_user(&cfg, "accessed@example.com", PASSWORD, false);
    let secret = format!("{PASSWORD}{token}");

    let server = Serve::start(&cfg, &["--log-format", "json"], &[]);
    let c = HttpsClient::new(&dir.path().join("data/tls/cert.pem"), server.addr, false);
    let soap = c
        .post(
            "/services/Soap/u/59.0",
            "text/xml",
            soap_login_body("accessed@example.com", &secret),
        )
        .await;
    let sid = extract(&soap.text(), "sessionId").unwrap();
    let call = c
        .get(
            "/services/data/v59.0/query?q=SELECT+Id+FROM+Account&oauth_token=QUERY-SECRET",
            &[("authorization", &format!("Bearer {sid}"))],
        )
        .await;
    assert_eq!(call.status, StatusCode::OK);
    let basic_call = c
        .get(
            "/services/data/v59.0/",
            &[("authorization", &basic("accessed@example.com", &secret))],
        )
        .await;
    let refused = c.get("/services/data/v59.0/sobjects", &[]).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    let log = server.stop();

    let lines = access_lines(&log);
    let line = |r: &Reply| {
        let id = r.header(ID).unwrap();
        let mine: Vec<_> = lines.iter().filter(|l| l["request_id"] == id).collect();
        assert_eq!(mine.len(), 1, "one access line for {id} in\n{log}");
        mine[0].clone()
    };
    let l = line(&call);
    assert_eq!(l["level"], "INFO");
    assert_eq!(l["method"], "GET");
    assert_eq!(
        l["path"], "/services/data/v59.0/query",
        "never the query string"
    );
    assert_eq!(l["status"], 200);
    assert_eq!(l["dialect"], "rest");
    assert_eq!(l["client"], "127.0.0.1");
    assert_eq!(l["bytes_out"].as_u64(), Some(call.body.len() as u64));
    assert!(l["duration_us"].as_u64().is_some());
    let user_id = l["user_id"]
        .as_str()
        .expect("the session's user")
        .to_owned();
    assert!(user_id.starts_with("005"), "{user_id}");
    assert_eq!(
        l["token"], "default",
        "the token the session logged in with"
    );
    let l = line(&basic_call);
    assert_eq!(
        l["user_id"],
        user_id.as_str(),
        "Basic callers are named too"
    );
    assert_eq!(l["token"], "default");
    let l = line(&soap);
    assert_eq!(l["token"], "default", "a login names its token");
    assert_eq!(
        (l["method"].as_str(), l["dialect"].as_str()),
        (Some("POST"), Some("soap"))
    );
    assert_eq!(
        l["bytes_in"].as_u64(),
        Some(soap_login_body("accessed@example.com", &secret).len() as u64)
    );
    let l = line(&refused);
    assert_eq!(l["status"], 401);
    assert!(l.get("user_id").is_none(), "{l}");
    assert!(l.get("token").is_none(), "{l}");

    // The other lines about a request carry its id (the request's span).
    let soap_id = soap.header(ID).unwrap();
    let login_line = log
        .lines()
        .find(|l| l.contains("login succeeded"))
        .expect("the login is logged");
    assert!(login_line.contains(soap_id), "{login_line}");

    for s in crate::support::spellings(&secret)
        .into_iter()
        .chain(crate::support::spellings(&sid))
        .chain(["QUERY-SECRET".to_owned()])
    {
        assert!(!log.contains(&s), "the log holds a secret");
    }

    // `[log] access = false` turns it off; the ids stay.
    let cfg = config(dir.path(), &up.url(), "[log]\naccess = false\n");
    let server = Serve::start(&cfg, &["--log-format", "json"], &[]);
    let c = HttpsClient::new(&dir.path().join("data/tls/cert.pem"), server.addr, false);
    let r = c.get("/tokengate/health", &[]).await;
    assert!(r.header(ID).is_some());
    let log = server.stop();
    assert!(access_lines(&log).is_empty(), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_text_access_log_is_filtered_by_its_target() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &up.url(), "");
    // On by default, in the text format; RUST_LOG can route it off by its target.
    let server = Serve::start(&cfg, &[], &[]);
    let c = HttpsClient::new(&dir.path().join("data/tls/cert.pem"), server.addr, false);
    let r = c.get("/tokengate/health", &[]).await;
    let id = r.header(ID).unwrap().to_owned();
    let log = server.stop();
    let line = log
        .lines()
        .find(|l| l.contains("tokengate::access") && l.contains(&id))
        .unwrap_or_else(|| panic!("no access line for {id} in\n{log}"));
    assert!(
        line.contains(r#"path="/tokengate/health""#) && line.contains("status=200"),
        "{line}"
    );

    let server = Serve::start(&cfg, &[], &[("RUST_LOG", "info,tokengate::access=off")]);
    let c = HttpsClient::new(&dir.path().join("data/tls/cert.pem"), server.addr, false);
    c.get("/tokengate/health", &[]).await;
    let log = server.stop();
    assert!(!log.contains("tokengate::access"), "{log}");
}
