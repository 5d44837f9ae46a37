//! `[upstream] public_paths`: paths forwarded without authentication, without identity, and
//! without whatever credentials the client sent anyway; everything else still needs a session.

use bytes::Bytes;
use http::{Method, StatusCode};

use crate::support::*;

fn public(cfg: &mut tokengate::config::Config) {
    cfg.upstream.public_paths =
        tokengate::config::PublicPaths::new(vec!["/status".into()], vec!["/public/".into()]);
}

#[tokio::test]
async fn public_paths_are_forwarded_without_authentication_or_identity() {
    let up = Upstream::start().await;
    let ts = TestServer::start_with(&up.url(), public).await;
    let c = ts.client();
    for path in ["/status", "/public/docs/a?x=1", "//public//docs"] {
        let r = c.get(path, &[]).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text());
    }
    // The router's canonical path is what reached the upstream.
    assert_eq!(up.last().uri, "/public/docs");
    // An exact entry is exact: `/status/` and `/statusx` are not `/status`.
    for path in [
        "/status/",
        "/statusx",
        "/publicx",
        "/public",
        "/services/data/v59.0/",
    ] {
        let before = up.requests().len();
        let r = c.get(path, &[]).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{path}: {}", r.text());
        assert_eq!(up.requests().len(), before, "{path} reached the upstream");
    }
}

#[tokio::test]
async fn credentials_sent_to_a_public_path_never_reach_the_upstream() {
    let up = Upstream::start().await;
    let ts = TestServer::start_with(&up.url(), public).await;
    let token = ts.add_user("pub@example.com").await;
    let sid = ts
        .soap_login("pub@example.com", &format!("{PASSWORD}{token}"))
        .await;
    let c = ts.client();
    let cases: [(&str, String); 3] = [
        ("authorization", format!("Bearer {sid}")),
        (
            "authorization",
            basic("pub@example.com", &format!("{PASSWORD}{token}")),
        ),
        ("x-sfdc-session", sid.clone()),
    ];
    for (name, value) in &cases {
        let b = c
            .request(Method::GET, "/public/info")
            .header(*name, value)
            .header(
                "cookie",
                format!("sid={sid}; theme=dark; __Host-tg_console=x"),
            )
            .header("x-tokengate-user", "admin@example.com")
            .header("x_tokengate_user_id", "005000000000009AAA")
            .header("x-forwarded-for", "6.6.6.6");
        let r = c.call(b, Bytes::new()).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        let h = up.last().headers;
        for gone in [
            "authorization",
            "x-sfdc-session",
            "x-tokengate-user",
            "x-tokengate-user-id",
            "x_tokengate_user_id",
        ] {
            assert!(h.get(gone).is_none(), "{gone} reached the upstream: {h:?}");
        }
        assert_eq!(h["cookie"], "theme=dark");
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        let text = format!("{h:?}");
        assert!(!text.contains(&sid) && !text.contains(&token), "{text}");
    }
    // A Basic credential on a public path is not a login: nothing in the history.
    ts.history_written().await;
    let rows = ts
        .app()
        .store
        .history_query(&tokengate::store::HistoryFilter {
            limit: 100,
            ..Default::default()
        })
        .expect("history");
    assert_eq!(rows.len(), 1, "only the SOAP login: {rows:?}");
}

#[tokio::test]
async fn dot_segments_cannot_climb_out_of_a_public_prefix() {
    let up = Upstream::start().await;
    let ts = TestServer::start_with(&up.url(), public).await;
    let c = ts.client();
    for path in [
        "/public/../services/data/v59.0/sobjects",
        "/public/%2e%2e/services/data/v59.0/sobjects",
        "/public/%2E%2E/services/data",
        "/public/.%2e/services/data",
        "/public/..%2fservices/data",
        "/public/%2f../services/data",
        "/public/./../services/data",
    ] {
        let r = c.get(path, &[]).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path}: {}", r.text());
    }
    assert_eq!(up.requests().len(), 0, "{:?}", up.requests());
}

#[test]
fn public_paths_are_validated() {
    let load = |paths: &str| {
        tokengate::config::Config::from_toml(
            &format!("[upstream]\npublic_paths = {paths}\n"),
            std::path::Path::new("t.toml"),
        )
    };
    assert!(load(r#"["/services/data/", "/status/*", "/x"]"#).is_ok());
    for bad in [
        r#"["/tokengate/health"]"#,
        r#"["/tokengate/*"]"#,
        r#"["/tokengate"]"#,
        r#"["/tok*"]"#,
        r#"["/*"]"#,
        r#"["status"]"#,
        r#"["/a/*/b"]"#,
        r#"["/a/../b"]"#,
        r#"["/a/%2e%2e/b"]"#,
        r#"["/a//b"]"#,
    ] {
        let e = load(bad).expect_err(bad).to_string();
        assert!(e.contains("upstream.public_paths"), "{bad}: {e}");
    }
}
