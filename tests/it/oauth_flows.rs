//! The OAuth grants beyond the password grant, per registered client: refresh tokens (rotated,
//! reuse revokes the family, RFC 9700 §4.14.2), client credentials (RFC 6749 §4.4), client
//! authentication by HTTP Basic (RFC 6749 §2.3.1), the client's policy (permitted users, IP
//! relaxation, its own session idle timeout), revocation (RFC 7009) and the token endpoint's
//! error answers, each as Salesforce words it.

use std::time::Duration;

use base64::Engine as _;
use http::{Method, StatusCode};
use tokengate::config::{Config, OAuthClient};

use crate::support::*;

const REFRESHING: &str = "refreshing-client";
const REFRESHING_SECRET: &str = "refreshing-secret";

fn refreshing(cfg: &mut Config) {
    let mut c = OAuthClient::new(REFRESHING, REFRESHING_SECRET);
    c.refresh_tokens = true;
    cfg.oauth_clients.push(c);
}

async fn token(ts: &TestServer, fields: &[(&str, &str)], headers: &[(&str, &str)]) -> Reply {
    let c = ts.client();
    let mut b = c
        .request(Method::POST, "/services/oauth2/token")
        .header("content-type", "application/x-www-form-urlencoded");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    c.call(b, serde_urlencoded::to_string(fields).unwrap())
        .await
}

async fn password_grant(
    ts: &TestServer,
    client: &str,
    secret: &str,
    user: &str,
    pw: &str,
) -> Reply {
    token(
        ts,
        &[
            ("grant_type", "password"),
            ("client_id", client),
            ("client_secret", secret),
            ("username", user),
            ("password", pw),
        ],
        &[],
    )
    .await
}

async fn refresh_grant(ts: &TestServer, refresh_token: &str) -> Reply {
    token(
        ts,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
            ("client_id", REFRESHING),
            ("client_secret", REFRESHING_SECRET),
        ],
        &[],
    )
    .await
}

/// A user and the refresh token of a fresh login through the refreshing client.
async fn login_with_refresh(ts: &TestServer, user: &str) -> (String, String) {
    let t = ts.add_user(user).await;
    let r = password_grant(
        ts,
        REFRESHING,
        REFRESHING_SECRET,
        user,
        &format!("{PASSWORD}{t}"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let j = r.json();
    assert_eq!(j["scope"], "refresh_token api");
    (
        t,
        j["refresh_token"]
            .as_str()
            .expect("a refresh_token")
            .to_owned(),
    )
}

fn assert_expired(r: &Reply) {
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert_eq!(
        r.json(),
        serde_json::json!({"error": "invalid_grant", "error_description": "expired access/refresh token"})
    );
}

async fn calls_work(ts: &TestServer, sid: &str) -> bool {
    let r = ts
        .client()
        .get_with_session("/services/data/v59.0/sobjects", sid)
        .await;
    r.status == StatusCode::OK
}

async fn history_rows(ts: &TestServer, user: &str) -> Vec<tokengate::store::HistoryRow> {
    ts.history_written().await;
    ts.app()
        .store
        .history_query(&tokengate::store::HistoryFilter {
            user: Some(user.into()),
            limit: 100,
            ..Default::default()
        })
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_tokens_rotate_and_a_reused_one_revokes_its_whole_family() {
    let up = Upstream::start().await;
    let ts = TestServer::start_with(&up.url(), refreshing).await;
    let (_, first) = login_with_refresh(&ts, "rot@example.com").await;
    // The password grant of a client without refresh tokens carries none.
    let t2 = ts.add_user("plain@example.com").await;
    let plain = ts
        .client()
        .oauth_login("plain@example.com", &format!("{PASSWORD}{t2}"))
        .await;
    assert!(
        plain.json().get("refresh_token").is_none(),
        "{}",
        plain.text()
    );
    assert_eq!(plain.json()["scope"], "api");

    let r = refresh_grant(&ts, &first).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let j = r.json();
    let second = j["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(second, first, "a new refresh token each time");
    let sid = j["access_token"].as_str().unwrap().to_owned();
    assert!(calls_work(&ts, &sid).await);
    assert_eq!(j["instance_url"], ts.origin.as_str());
    // The signature is the password grant's (docs/salesforce-protocol.md §2.2).
    let sig = tokengate::wire::oauth::signature(
        REFRESHING_SECRET,
        j["id"].as_str().unwrap(),
        j["issued_at"].as_str().unwrap(),
    );
    assert_eq!(j["signature"], sig.as_str());

    let r = refresh_grant(&ts, &second).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let third = r.json()["refresh_token"].as_str().unwrap().to_owned();

    // The first token again: refused, and the family is gone — the newest token too.
    assert_expired(&refresh_grant(&ts, &first).await);
    assert_expired(&refresh_grant(&ts, &third).await);
    // The sessions it made are sessions like any other: they last their own time.
    assert!(calls_work(&ts, &sid).await);

    let rows = history_rows(&ts, "rot@example.com").await;
    let reused: Vec<_> = rows
        .iter()
        .filter(|r| r.reason.as_deref() == Some("refresh token reused; its family was revoked"))
        .collect();
    assert_eq!(reused.len(), 1, "{rows:?}");
    assert_eq!(reused[0].outcome, "bad_credentials");
    assert_eq!(reused[0].dialect, "oauth");
    assert_eq!(reused[0].client.as_deref(), Some(REFRESHING));
    // The login and two refreshes succeeded.
    assert_eq!(
        rows.iter().filter(|r| r.outcome == "success").count(),
        3,
        "{rows:?}"
    );
    // All are counted as OAuth logins; only the two password grants were verifications, so
    // only they are in the login-latency histogram (a refresh is no zero-second login).
    let m = ts.metrics();
    let oauth = |outcome: &str| {
        metric(
            &m,
            &format!("tokengate_logins_total{{dialect=\"oauth\",outcome=\"{outcome}\"}}"),
        )
    };
    assert_eq!(oauth("success"), 4, "{m}");
    assert_eq!(oauth("bad_credentials"), 1, "{m}");
    assert_eq!(
        metric(&m, "tokengate_login_duration_seconds_count"),
        2,
        "{m}"
    );

    // Unknown and malformed tokens get the same answer, and so does another client's token.
    for bad in ["", "x", &"A".repeat(200), &format!("{}.x", &first[..22])] {
        let r = refresh_grant(&ts, bad).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.text());
    }
    let (_, other) = login_with_refresh(&ts, "rot2@example.com").await;
    let r = token(
        &ts,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &other),
            ("client_id", CLIENT_ID),
            ("client_secret", CLIENT_SECRET),
        ],
        &[],
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["error"], "unauthorized_client", "{}", r.text());
    // ... and still works for its own client.
    assert_eq!(refresh_grant(&ts, &other).await.status, StatusCode::OK);
    assert_not_stored(&ts, &[&first, &second, &third, &other]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_tokens_end_on_password_change_disable_token_reset_and_revocation() {
    let up = Upstream::start().await;
    let sink = crate::support::smtp::SmtpSink::start().await;
    let ts = TestServer::start_with(&up.url(), |cfg| {
        refreshing(cfg);
        mail_to(cfg, &sink, "tokengate");
    })
    .await;
    let app = ts.app();

    let (_, r) = login_with_refresh(&ts, "pw@example.com").await;
    let id = app.users.show("pw@example.com").unwrap().id;
    app.tokens
        .change_password(&id, "NewPassw0rd")
        .await
        .unwrap();
    assert_expired(&refresh_grant(&ts, &r).await);

    let (_, r) = login_with_refresh(&ts, "off@example.com").await;
    app.users.set_disabled("off@example.com", true).unwrap();
    assert_expired(&refresh_grant(&ts, &r).await);
    app.users.set_disabled("off@example.com", false).unwrap();
    assert_expired(&refresh_grant(&ts, &r).await);

    let (_, r) = login_with_refresh(&ts, "reset@example.com").await;
    let id = app.users.show("reset@example.com").unwrap().id;
    app.tokens
        .rotate(&id, tokengate::mail::TokenReason::AdminRotation)
        .await
        .unwrap();
    assert_expired(&refresh_grant(&ts, &r).await);

    // RFC 7009: revoking any token of a family ends it; unknown tokens get 200 too.
    let (_, r) = login_with_refresh(&ts, "rev@example.com").await;
    let next = refresh_grant(&ts, &r).await.json()["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let c = ts.client();
    let revoke = |t: String| {
        let c = &c;
        async move {
            c.post(
                "/services/oauth2/revoke",
                "application/x-www-form-urlencoded",
                serde_urlencoded::to_string([("token", t)]).unwrap(),
            )
            .await
        }
    };
    let answer = revoke(next.clone()).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_expired(&refresh_grant(&ts, &next).await);
    for unknown in ["nothing-like-a-token", "00D000000000001!abc"] {
        let answer = revoke(unknown.into()).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
        assert_eq!(answer.text(), "");
    }
    // An access token (session id) ends its session.
    let (_, r) = login_with_refresh(&ts, "sess@example.com").await;
    let j = refresh_grant(&ts, &r).await.json();
    let sid = j["access_token"].as_str().unwrap().to_owned();
    assert!(calls_work(&ts, &sid).await);
    assert_eq!(revoke(sid.clone()).await.status, StatusCode::OK);
    assert!(!calls_work(&ts, &sid).await);
    // ... and leaves the refresh family alone.
    let fresh = j["refresh_token"].as_str().unwrap();
    assert_eq!(refresh_grant(&ts, fresh).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_families_expire_when_idle_and_at_their_lifetime() {
    let up = Upstream::start().await;
    let ts = TestServer::start_with(&up.url(), |cfg| {
        let mut c = OAuthClient::new(REFRESHING, REFRESHING_SECRET);
        c.refresh_tokens = true;
        c.refresh_token_idle = Duration::from_secs(2);
        c.refresh_token_lifetime = Duration::from_secs(4);
        cfg.oauth_clients.push(c);
    })
    .await;
    let (_, idle) = login_with_refresh(&ts, "idle@example.com").await;
    let (_, kept) = login_with_refresh(&ts, "kept@example.com").await;
    let mut kept = kept;
    // Used every 1.5 s, the second family outlives the idle time but not its lifetime.
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let r = refresh_grant(&ts, &kept).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        kept = r.json()["refresh_token"].as_str().unwrap().to_owned();
    }
    // 3 s without use: past the idle time.
    assert_expired(&refresh_grant(&ts, &idle).await);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    // 5.2 s after its login: past the lifetime, though used 2.2 s ago.
    assert_expired(&refresh_grant(&ts, &kept).await);
}

#[tokio::test]
async fn clients_may_authenticate_with_http_basic_but_not_two_ways_at_once() {
    let up = Upstream::start().await;
    let ts = TestServer::start(&up.url()).await;
    let t = ts.add_user("basic@example.com").await;
    let secret = format!("{PASSWORD}{t}");
    let basic_of = |id: &str, s: &str| {
        // RFC 6749 §2.3.1: each form-urlencoded, then joined and base64-encoded.
        let enc = |v: &str| serde_urlencoded::to_string([("", v)]).unwrap()[1..].to_owned();
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", enc(id), enc(s)))
        )
    };
    let fields = [
        ("grant_type", "password"),
        ("username", "basic@example.com"),
        ("password", secret.as_str()),
    ];
    let ok = token(
        &ts,
        &fields,
        &[("authorization", &basic_of(CLIENT_ID, CLIENT_SECRET))],
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());
    assert!(calls_work(&ts, ok.json()["access_token"].as_str().unwrap()).await);
    // A client_id in the body naming the same client is allowed next to Basic.
    let same = [fields.as_slice(), &[("client_id", CLIENT_ID)]].concat();
    let ok = token(
        &ts,
        &same,
        &[("authorization", &basic_of(CLIENT_ID, CLIENT_SECRET))],
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());

    // Basic and client_secret in the body: two methods (RFC 6749 §2.3).
    let both = [
        fields.as_slice(),
        &[("client_id", CLIENT_ID), ("client_secret", CLIENT_SECRET)],
    ]
    .concat();
    let r = token(
        &ts,
        &both,
        &[("authorization", &basic_of(CLIENT_ID, CLIENT_SECRET))],
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert_eq!(r.json()["error"], "invalid_request");
    let other_id = [fields.as_slice(), &[("client_id", "someone-else")]].concat();
    let r = token(
        &ts,
        &other_id,
        &[("authorization", &basic_of(CLIENT_ID, CLIENT_SECRET))],
    )
    .await;
    assert_eq!(r.json()["error"], "invalid_request", "{}", r.text());

    // A wrong secret by Basic: 401 with a challenge (RFC 6749 §5.2); in the body: 400.
    let r = token(
        &ts,
        &fields,
        &[("authorization", &basic_of(CLIENT_ID, "wrong-secret"))],
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    assert_eq!(
        r.json(),
        serde_json::json!({"error": "invalid_client", "error_description": "invalid client credentials"})
    );
    assert_eq!(
        r.header("www-authenticate"),
        Some(r#"Basic realm="tokengate""#)
    );
    let r = token(&ts, &fields, &[("authorization", "Basic !!!")]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    assert_eq!(r.json()["error"], "invalid_client");
    assert_eq!(
        r.header("www-authenticate"),
        Some(r#"Basic realm="tokengate""#)
    );
    let r = token(
        &ts,
        &fields,
        &[("authorization", &basic_of("unknown-client", "x"))],
    )
    .await;
    assert_eq!(r.json()["error"], "invalid_client_id", "{}", r.text());
}

#[tokio::test]
async fn the_token_endpoint_answers_each_error_as_salesforce_does() {
    let up = Upstream::start().await;
    let ts = TestServer::start_with(&up.url(), refreshing).await;
    let t = ts.add_user("err@example.com").await;
    let secret = format!("{PASSWORD}{t}");
    // The form, then the status, `error` and `error_description` of the answer.
    type Case<'a> = (Vec<(&'a str, &'a str)>, u16, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec![
                ("grant_type", "authorization_code"),
                ("client_id", CLIENT_ID),
            ],
            400,
            "unsupported_grant_type",
            "grant type not supported",
        ),
        (
            vec![
                ("grant_type", "password"),
                ("client_id", "nobody"),
                ("client_secret", "x"),
            ],
            400,
            "invalid_client_id",
            "client identifier invalid",
        ),
        (
            vec![("grant_type", "refresh_token"), ("refresh_token", "x")],
            400,
            "invalid_client_id",
            "client identifier invalid",
        ),
        (
            vec![
                ("grant_type", "password"),
                ("client_id", CLIENT_ID),
                ("client_secret", "wrong"),
            ],
            400,
            "invalid_client",
            "invalid client credentials",
        ),
        (
            vec![
                ("grant_type", "password"),
                ("client_id", CLIENT_ID),
                ("client_secret", CLIENT_SECRET),
                ("username", "err@example.com"),
                ("password", "wrong"),
            ],
            400,
            "invalid_grant",
            "authentication failure",
        ),
        (
            vec![
                ("grant_type", "refresh_token"),
                ("client_id", REFRESHING),
                ("client_secret", REFRESHING_SECRET),
                ("refresh_token", "AAAAAAAAAAAAAAAAAAAAAA.bbbb"),
            ],
            400,
            "invalid_grant",
            "expired access/refresh token",
        ),
        (
            vec![
                ("grant_type", "refresh_token"),
                ("client_id", CLIENT_ID),
                ("client_secret", CLIENT_SECRET),
                ("refresh_token", "x"),
            ],
            400,
            "unauthorized_client",
            "this client is not allowed this grant type",
        ),
        (
            vec![
                ("grant_type", "client_credentials"),
                ("client_id", CLIENT_ID),
                ("client_secret", CLIENT_SECRET),
            ],
            400,
            "invalid_grant",
            "no client credentials user enabled",
        ),
        (
            vec![
                ("grant_type", "refresh_token"),
                ("client_id", REFRESHING),
                ("client_secret", REFRESHING_SECRET),
            ],
            400,
            "invalid_request",
            "refresh_token is required",
        ),
    ];
    for (fields, status, error, description) in cases {
        let r = token(&ts, &fields, &[]).await;
        assert_eq!(r.status.as_u16(), status, "{fields:?}: {}", r.text());
        assert_eq!(
            r.header("content-type"),
            Some("application/json"),
            "{fields:?}"
        );
        assert_eq!(
            r.json(),
            serde_json::json!({"error": error, "error_description": description}),
            "{fields:?}"
        );
        assert!(r.header("www-authenticate").is_none(), "{fields:?}");
    }
    // The password still works: none of the above counted against it.
    let r = password_grant(&ts, CLIENT_ID, CLIENT_SECRET, "err@example.com", &secret).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

async fn add_api_user(ts: &TestServer, username: &str, api_only: bool) {
    let users = ts.app().users.clone();
    let username = username.to_owned();
    tokio::task::spawn_blocking(move || {
        users
            .add(tokengate::admin::NewUser {
                email: format!("{}@example.com", username.replace('@', ".")),
                username,
                full_name: "Integration".into(),
                password: PASSWORD.into(),
                api_only,
                ..Default::default()
            })
            .unwrap()
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn client_credentials_act_as_the_clients_api_only_user() {
    let up = Upstream::start().await;
    let ts = TestServer::start_with(&up.url(), |cfg| {
        let mut c = OAuthClient::new("svc", "svc-secret-1");
        c.run_as = Some("integration@example.com".into());
        cfg.oauth_clients.push(c);
        let mut c = OAuthClient::new("svc-person", "svc-secret-2");
        c.run_as = Some("person@example.com".into());
        cfg.oauth_clients.push(c);
        let mut c = OAuthClient::new("svc-allowed", "svc-secret-3");
        c.run_as = Some("person@example.com".into());
        c.allow_interactive_run_as = true;
        cfg.oauth_clients.push(c);
        let mut c = OAuthClient::new("svc-ghost", "svc-secret-4");
        c.run_as = Some("ghost@example.com".into());
        cfg.oauth_clients.push(c);
    })
    .await;
    add_api_user(&ts, "integration@example.com", true).await;
    add_api_user(&ts, "person@example.com", false).await;
    let cc = |id: &'static str, secret: &'static str| {
        let ts = &ts;
        async move {
            token(
                ts,
                &[
                    ("grant_type", "client_credentials"),
                    ("client_id", id),
                    ("client_secret", secret),
                ],
                &[],
            )
            .await
        }
    };
    let r = cc("svc", "svc-secret-1").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let j = r.json();
    assert!(j.get("refresh_token").is_none(), "RFC 6749 §4.4.3");
    let sid = j["access_token"].as_str().unwrap();
    assert!(calls_work(&ts, sid).await);
    assert_eq!(
        up.last().headers["x-tokengate-user"],
        "integration@example.com"
    );

    let wrong = cc("svc", "svc-secret-2").await;
    assert_eq!(wrong.json()["error"], "invalid_client", "{}", wrong.text());
    for (id, secret) in [
        ("svc-person", "svc-secret-2"),
        ("svc-ghost", "svc-secret-4"),
    ] {
        let r = cc(id, secret).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{id}: {}", r.text());
        assert_eq!(
            r.json()["error_description"],
            "no client credentials user enabled"
        );
    }
    let r = cc("svc-allowed", "svc-secret-3").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());

    ts.app()
        .users
        .set_disabled("integration@example.com", true)
        .unwrap();
    let r = cc("svc", "svc-secret-1").await;
    assert_eq!(r.json()["error"], "invalid_grant", "{}", r.text());
    assert_eq!(r.json()["error_description"], "authentication failure");

    let rows = history_rows(&ts, "integration@example.com").await;
    let outcomes: Vec<(&str, Option<&str>, Option<&str>)> = rows
        .iter()
        .map(|r| {
            (
                r.outcome.as_str(),
                r.client.as_deref(),
                Some(r.dialect.as_str()),
            )
        })
        .collect();
    assert!(
        outcomes.contains(&("success", Some("svc"), Some("oauth"))),
        "{outcomes:?}"
    );
    assert!(
        outcomes.contains(&("disabled", Some("svc"), Some("oauth"))),
        "{outcomes:?}"
    );
    let person = history_rows(&ts, "person@example.com").await;
    assert!(
        person
            .iter()
            .any(|r| r.reason.as_deref() == Some("client credentials user not usable")),
        "{person:?}"
    );
}

#[tokio::test]
async fn a_client_logs_in_only_its_permitted_users() {
    let up = Upstream::start().await;
    let ts = TestServer::start_with(&up.url(), |cfg| {
        let mut c = OAuthClient::new("narrow", "narrow-secret");
        c.permitted_users = Some(vec!["in@example.com".into()]);
        cfg.oauth_clients.push(c);
    })
    .await;
    let t_in = ts.add_user("in@example.com").await;
    let t_out = ts.add_user("out@example.com").await;
    let r = password_grant(
        &ts,
        "narrow",
        "narrow-secret",
        "IN@example.com",
        &format!("{PASSWORD}{t_in}"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = password_grant(
        &ts,
        "narrow",
        "narrow-secret",
        "out@example.com",
        &format!("{PASSWORD}{t_out}"),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert_eq!(
        r.json(),
        serde_json::json!({"error": "invalid_grant", "error_description": "authentication failure"})
    );
    // Another client is not narrowed.
    let r = ts
        .client()
        .oauth_login("out@example.com", &format!("{PASSWORD}{t_out}"))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let rows = history_rows(&ts, "out@example.com").await;
    assert!(
        rows.iter().any(
            |r| r.reason.as_deref() == Some("not permitted for this OAuth client")
                && r.client.as_deref() == Some("narrow")
        ),
        "{rows:?}"
    );
}

#[test]
fn oauth_client_settings_are_validated() {
    let load = |client: &str| {
        Config::from_toml(
            &format!(
                "[[oauth.clients]]\nclient_id = \"c\"\nclient_secret = \"12345678\"\n{client}\n"
            ),
            std::path::Path::new("t.toml"),
        )
    };
    let ok = load(
        "refresh_tokens = true\nrefresh_token_lifetime = \"10s\"\nrefresh_token_idle = \"5s\"\n\
         run_as = \" Svc@Example.com \"\npermitted_users = [\"A@example.com\"]\n\
         ip_relaxation = \"relax\"\nsession_idle_timeout = \"5m\"",
    )
    .unwrap();
    let c = &ok.oauth_clients[0];
    assert_eq!(c.run_as.as_deref(), Some("svc@example.com"));
    assert_eq!(c.permitted_users, Some(vec!["a@example.com".to_owned()]));
    assert!(c.relax_ip && c.refresh_tokens);
    assert_eq!(c.session_idle_timeout, Some(Duration::from_secs(300)));
    // The global defaults fill in.
    let d = load("").unwrap();
    assert_eq!(
        d.oauth_clients[0].refresh_token_lifetime,
        Duration::from_secs(90 * 86_400)
    );
    assert_eq!(
        d.oauth_clients[0].refresh_token_idle,
        Duration::from_secs(30 * 86_400)
    );
    for (bad, key) in [
        ("refresh_token_idle = \"0s\"", "refresh_token_idle"),
        (
            "refresh_token_lifetime = \"1s\"\nrefresh_token_idle = \"2s\"",
            "refresh_token_idle",
        ),
        ("ip_relaxation = \"loose\"", "ip_relaxation"),
        ("permitted_users = []", "permitted_users"),
        (
            "allow_interactive_run_as = true",
            "allow_interactive_run_as",
        ),
        ("run_as = \"  \"", "run_as"),
        ("session_idle_timeout = \"0s\"", "session_idle_timeout"),
    ] {
        let e = load(bad).expect_err(bad).to_string();
        assert!(e.contains(&format!("oauth.clients[0].{key}")), "{bad}: {e}");
    }
    let e = Config::from_toml(
        "[oauth]\nmax_refresh_families_per_user = 0\n",
        std::path::Path::new("t.toml"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("oauth.max_refresh_families_per_user"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relaxing_client_logs_in_from_outside_the_login_ranges_but_still_needs_the_token() {
    let up = Upstream::start().await;
    let ts = TestServer::start_with(&up.url(), |cfg| {
        let mut c = OAuthClient::new("relaxed", "relaxed-secret");
        c.relax_ip = true;
        c.refresh_tokens = true;
        cfg.oauth_clients.push(c);
        refreshing(cfg);
    })
    .await;
    let t = ts.add_user("ranged@example.com").await;
    let secret = format!("{PASSWORD}{t}");
    // A login with a refresh token from the enforcing client while the ranges still allow it.
    let enforced = password_grant(
        &ts,
        REFRESHING,
        REFRESHING_SECRET,
        "ranged@example.com",
        &secret,
    )
    .await;
    let enforced_refresh = enforced.json()["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    ts.app()
        .users
        .set_login_ranges("ranged@example.com", vec!["10.0.0.0/8".parse().unwrap()])
        .unwrap();
    // The tests connect from 127.0.0.1: outside the ranges.
    let r = ts.client().oauth_login("ranged@example.com", &secret).await;
    assert_eq!(r.json()["error"], "invalid_grant", "{}", r.text());
    let r = password_grant(
        &ts,
        "relaxed",
        "relaxed-secret",
        "ranged@example.com",
        &secret,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let sid = r.json()["access_token"].as_str().unwrap().to_owned();
    let refresh = r.json()["refresh_token"].as_str().unwrap().to_owned();
    assert!(
        calls_work(&ts, &sid).await,
        "its session is not held to the ranges either"
    );
    // The token is still required: the password alone fails, as does a wrong token.
    for wrong in [
        PASSWORD.to_owned(),
        format!("{PASSWORD}{}", "x".repeat(t.len())),
    ] {
        let r = password_grant(
            &ts,
            "relaxed",
            "relaxed-secret",
            "ranged@example.com",
            &wrong,
        )
        .await;
        assert_eq!(r.json()["error"], "invalid_grant", "{}", r.text());
    }
    let r = token(
        &ts,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh),
            ("client_id", "relaxed"),
            ("client_secret", "relaxed-secret"),
        ],
        &[],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    // The enforcing client's family was ended by the range change (the user's epoch moved).
    assert_expired(&refresh_grant(&ts, &enforced_refresh).await);

    // The policy is kept with the session: after a restart it is still relaxed.
    let ts = ts.restart().await;
    assert!(
        calls_work(&ts, &sid).await,
        "the relaxed session outlived the restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_sessions_end_after_its_own_idle_timeout() {
    let up = Upstream::start().await;
    let ts = TestServer::start_with(&up.url(), |cfg| {
        let mut c = OAuthClient::new("brief", "brief-secret");
        c.session_idle_timeout = Some(Duration::from_secs(1));
        cfg.oauth_clients.push(c);
    })
    .await;
    let t = ts.add_user("idle2@example.com").await;
    let secret = format!("{PASSWORD}{t}");
    let brief = password_grant(&ts, "brief", "brief-secret", "idle2@example.com", &secret).await;
    let brief = brief.json()["access_token"].as_str().unwrap().to_owned();
    let usual = ts.client().oauth_login("idle2@example.com", &secret).await;
    let usual = usual.json()["access_token"].as_str().unwrap().to_owned();
    assert!(calls_work(&ts, &brief).await);
    tokio::time::sleep(Duration::from_millis(2300)).await;
    assert!(
        !calls_work(&ts, &brief).await,
        "idle past its client's timeout"
    );
    assert!(
        calls_work(&ts, &usual).await,
        "[auth]'s idle timeout is two hours"
    );
}
