//! Abuse defences against the real server: lockout (and its persistence, unlock, stale-secret
//! replay), rate limits in each dialect, trusted networks, login ranges, X-Forwarded-For trust,
//! the login history, the verified-credential cache's invalidation, and bounded limiter memory
//! under a flood of random usernames.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use crate::support::*;
use http::{Method, StatusCode};
use tokengate::auth::Attempt;
use tokengate::domain::Dialect;

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

async fn soap(ts: &TestServer, user: &str, secret: &str, headers: &[(&str, &str)]) -> Reply {
    let c = ts.client();
    let mut b = c
        .request(Method::POST, "/services/Soap/u/59.0")
        .header("content-type", "text/xml");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    c.call(b, soap_login_body(user, secret)).await
}

async fn basic_call(ts: &TestServer, user: &str, secret: &str) -> Reply {
    ts.client()
        .get(
            "/services/data/v59.0/sobjects",
            &[("authorization", &basic(user, secret))],
        )
        .await
}

/// Waits until the history writer has stored every row recorded so far, then queries the
/// admin API.
async fn history(ts: &TestServer, admin: &str, query: &str) -> Vec<serde_json::Value> {
    ts.history_written().await;
    let r = ts
        .client()
        .get(
            &format!("/tokengate/v1/admin/history?{query}"),
            &[("authorization", admin)],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    r.json()["rows"].as_array().unwrap().clone()
}

#[tokio::test]
async fn lockout_after_n_distinct_failures_survives_a_restart_and_unlock_ends_it() {
    let up = Upstream::start().await;
    let ts = TestServer::start_with(&up.url(), |c| c.lockout.max_failures = 3).await;
    let token = ts.add_user("lock@example.com").await;
    let good = format!("{PASSWORD}{token}");
    // The generic failure, from a user that does not exist (the bytes are the same for all).
    let wrong = soap(&ts, "nobody@example.com", "NotThePassw0rd", &[])
        .await
        .body;

    // Two distinct wrong secrets, and a success, which resets the count.
    for s in [format!("Wrong1pass{token}"), format!("Wrong2pass{token}")] {
        assert_eq!(
            soap(&ts, "lock@example.com", &s, &[]).await.status,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
    assert_eq!(
        soap(&ts, "lock@example.com", &good, &[]).await.status,
        StatusCode::OK
    );
    // Three distinct wrong secrets lock (wrong tokens count too).
    for s in [
        format!("Wrong3pass{token}"),
        format!("{PASSWORD}AAAAAAAAAAAAAAAAAAAAAAAA"),
        format!("Wrong4pass{token}"),
    ] {
        assert_eq!(
            soap(&ts, "lock@example.com", &s, &[]).await.status,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    // Locked: the right credentials get exactly the wrong-password answer in SOAP and OAuth...
    let r = soap(&ts, "lock@example.com", &good, &[]).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(r.body, wrong);
    let r = ts.client().oauth_login("lock@example.com", &good).await;
    assert_eq!(
        &r.body[..],
        br#"{"error":"invalid_grant","error_description":"authentication failure"}"#
    );
    // ...and Basic with the right credentials learns of the lock and its end; a wrong secret
    // gets the ordinary answer.
    let r = basic_call(&ts, "lock@example.com", &good).await;
    assert_eq!(r.status, StatusCode::LOCKED, "{}", r.text());
    assert_eq!(r.json()[0]["errorCode"], "PASSWORD_LOCKOUT");
    let until = r.json()[0]["lockedUntil"].as_u64().unwrap();
    assert!(until > tokengate::now_secs() + 800 && until <= tokengate::now_secs() + 900);
    assert!(r.header("retry-after").is_some());
    let r = basic_call(&ts, "lock@example.com", &format!("Wrong9pass{token}")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.body,
        basic_call(&ts, "nobody@example.com", &good).await.body
    );

    // A restart does not unlock.
    let ts = ts.restart().await;
    assert_eq!(
        basic_call(&ts, "lock@example.com", &good).await.status,
        StatusCode::LOCKED
    );
    assert_eq!(
        ts.app()
            .users
            .show("lock@example.com")
            .unwrap()
            .locked_until,
        Some(until)
    );

    // The admin API unlocks.
    let admin_token = ts.add_user_with("admin@example.com", PASSWORD, true).await;
    let admin = basic("admin@example.com", &format!("{PASSWORD}{admin_token}"));
    let b = ts
        .client()
        .request(
            Method::POST,
            "/tokengate/v1/admin/users/lock@example.com/unlock",
        )
        .header("authorization", admin.as_str());
    let r = ts.client().call(b, "").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        soap(&ts, "lock@example.com", &good, &[]).await.status,
        StatusCode::OK
    );
    assert_eq!(
        basic_call(&ts, "lock@example.com", &good).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn the_same_stale_secret_replayed_does_not_lock_the_account() {
    let up = Upstream::start().await;
    let ts = TestServer::start_with(&up.url(), |c| c.lockout.max_failures = 3).await;
    let token = ts.add_user("stale@example.com").await;
    // An integration with an old token retries forever, in every dialect.
    let stale = format!("{PASSWORD}ZZZZZZZZZZZZZZZZZZZZZZZZ");
    for _ in 0..10 {
        soap(&ts, "stale@example.com", &stale, &[]).await;
        ts.client().oauth_login("stale@example.com", &stale).await;
        basic_call(&ts, "stale@example.com", &stale).await;
    }
    assert_eq!(
        soap(&ts, "stale@example.com", &format!("{PASSWORD}{token}"), &[])
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn rate_limits_answer_in_each_dialect_with_retry_after() {
    let up = Upstream::start().await;
    let ts = TestServer::start_with(&up.url(), |c| {
        c.limits.login_per_user = nz(2);
        c.lockout.max_failures = 0;
    })
    .await;
    let token = ts.add_user("rl@example.com").await;
    let good = format!("{PASSWORD}{token}");
    // Two attempts per user per hour; the limit counts before any hashing.
    for _ in 0..2 {
        soap(&ts, "rl-soap@example.com", "x", &[]).await;
        ts.client().oauth_login("rl-oauth@example.com", "x").await;
        basic_call(&ts, "rl-basic@example.com", "x").await;
    }
    let r = soap(&ts, "rl-soap@example.com", "x", &[]).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        r.text()
            .contains("<sf:exceptionCode>REQUEST_LIMIT_EXCEEDED</sf:exceptionCode>"),
        "{}",
        r.text()
    );
    assert!(r.header("retry-after").unwrap().parse::<u64>().unwrap() >= 1);
    let r = ts.client().oauth_login("rl-oauth@example.com", "x").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["error"], "rate_limit_exceeded");
    assert!(r.header("retry-after").is_some());
    let r = basic_call(&ts, "rl-basic@example.com", "x").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.json()[0]["errorCode"], "REQUEST_LIMIT_EXCEEDED");
    assert!(r.header("retry-after").is_some());

    // Legitimate Basic traffic with cached credentials is not a login and is not limited.
    for _ in 0..10 {
        assert_eq!(
            basic_call(&ts, "rl@example.com", &good).await.status,
            StatusCode::OK
        );
    }
}

#[tokio::test]
async fn trusted_networks_accept_the_password_alone() {
    let up = Upstream::start().await;
    let ts = TestServer::start_with(&up.url(), |c| {
        c.auth.trusted_networks = vec!["127.0.0.0/8".parse().unwrap()];
    })
    .await;
    let token = ts.add_user("office@example.com").await;
    assert_eq!(
        soap(&ts, "office@example.com", PASSWORD, &[]).await.status,
        StatusCode::OK
    );
    assert_eq!(
        soap(
            &ts,
            "office@example.com",
            &format!("{PASSWORD}{token}"),
            &[]
        )
        .await
        .status,
        StatusCode::OK
    );
    assert_eq!(
        soap(&ts, "office@example.com", "WrongPassw0rd", &[])
            .await
            .status,
        StatusCode::INTERNAL_SERVER_ERROR
    );

    // Elsewhere, the token is required.
    let up = Upstream::start().await;
    let ts = TestServer::start_with(&up.url(), |c| {
        c.auth.trusted_networks = vec!["10.0.0.0/8".parse().unwrap()];
    })
    .await;
    ts.add_user("office@example.com").await;
    assert_eq!(
        soap(&ts, "office@example.com", PASSWORD, &[]).await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_ranges_and_forwarded_for_trust() {
    let up = Upstream::start().await;
    let ts = TestServer::start(&up.url()).await;
    let token = ts.add_user("ranged@example.com").await;
    let good = format!("{PASSWORD}{token}");
    let set = |ranges: &str| {
        cli(
            &ts,
            &[
                "user",
                "set",
                "ranged@example.com",
                "--login-ranges",
                ranges,
            ],
            None,
        );
    };
    set("203.0.113.0/24");
    let refused = soap(&ts, "ranged@example.com", &good, &[]).await;
    assert_eq!(refused.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        refused.body,
        soap(&ts, "ranged@example.com", "WrongPassw0rd", &[])
            .await
            .body
    );
    // A spoofed X-Forwarded-For from an untrusted peer changes nothing.
    let r = soap(
        &ts,
        "ranged@example.com",
        &good,
        &[("x-forwarded-for", "203.0.113.9")],
    )
    .await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    set("127.0.0.0/8,203.0.113.0/24");
    assert_eq!(
        soap(&ts, "ranged@example.com", &good, &[]).await.status,
        StatusCode::OK
    );

    // From a trusted proxy, X-Forwarded-For is the client address.
    let up = Upstream::start().await;
    let ts = TestServer::start_with(&up.url(), |c| {
        c.server.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    let token = ts.add_user_with("ranged@example.com", PASSWORD, true).await;
    let good = format!("{PASSWORD}{token}");
    cli(
        &ts,
        &[
            "user",
            "set",
            "ranged@example.com",
            "--login-ranges",
            "203.0.113.0/24",
        ],
        None,
    );
    assert_eq!(
        soap(&ts, "ranged@example.com", &good, &[]).await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    let r = soap(
        &ts,
        "ranged@example.com",
        &good,
        &[("x-forwarded-for", "198.51.100.1, 203.0.113.7")],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let sid = extract(&r.text(), "sessionId").unwrap();
    ts.client()
        .get(
            "/services/data/v59.0/",
            &[
                ("authorization", &format!("Bearer {sid}")),
                ("x-forwarded-for", "203.0.113.7"),
            ],
        )
        .await;
    assert_eq!(up.last().headers["x-forwarded-for"], "203.0.113.7");
    // The session is the user's only from inside the ranges: the same session without the
    // forwarded address (the client is then the proxy itself) is refused.
    let outside = ts
        .client()
        .get_with_session("/services/data/v59.0/", &sid)
        .await;
    assert_eq!(
        outside.status,
        StatusCode::UNAUTHORIZED,
        "{}",
        outside.text()
    );
    ts.history_written().await;
    let r = ts
        .client()
        .get(
            "/tokengate/v1/admin/history?user=ranged@example.com&outcome=success",
            &[
                ("authorization", &format!("Bearer {sid}")),
                ("x-forwarded-for", "203.0.113.7"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["rows"][0]["source_ip"], "203.0.113.7");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_records_every_outcome_with_its_details() {
    let up = Upstream::start().await;
    let ts = TestServer::start_with(&up.url(), |c| {
        c.lockout.max_failures = 2;
        c.limits.login_per_user = nz(20);
    })
    .await;
    let admin_token = ts.add_user_with("admin@example.com", PASSWORD, true).await;
    let admin = basic("admin@example.com", &format!("{PASSWORD}{admin_token}"));
    let token = ts.add_user("hist@example.com").await;
    let good = format!("{PASSWORD}{token}");
    soap(
        &ts,
        "Hist@Example.com",
        &good,
        &[("user-agent", "DataLoader/64")],
    )
    .await;
    ts.client()
        .oauth_login("hist@example.com", &format!("Wrong1pass{token}"))
        .await;
    soap(
        &ts,
        "hist@example.com",
        &format!("{PASSWORD}BBBBBBBBBBBBBBBBBBBBBBBB"),
        &[],
    )
    .await;
    soap(&ts, "ghost@example.com", &good, &[]).await;
    basic_call(&ts, "hist@example.com", &good).await; // locked: 423
    let ranged = ts.add_user("ranged@example.com").await;
    cli(
        &ts,
        &[
            "user",
            "set",
            "ranged@example.com",
            "--login-ranges",
            "10.0.0.0/8",
        ],
        None,
    );
    soap(
        &ts,
        "ranged@example.com",
        &format!("{PASSWORD}{ranged}"),
        &[],
    )
    .await;
    let off = ts.add_user("off@example.com").await;
    cli(&ts, &["user", "disable", "off@example.com"], None);
    soap(&ts, "off@example.com", &format!("{PASSWORD}{off}"), &[]).await;
    for _ in 0..25 {
        ts.client().oauth_login("flooded@example.com", "x").await;
    }

    let rows = history(&ts, &admin, "user=hist@example.com&limit=50").await;
    let outcomes: Vec<&str> = rows
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        ["locked", "bad_credentials", "bad_credentials", "success"],
        "{rows:#?}"
    );
    let success = &rows[3];
    assert_eq!(
        success["username"], "Hist@Example.com",
        "the username as sent"
    );
    assert!(success["user_id"].as_str().unwrap().starts_with("005"));
    assert_eq!(success["source_ip"], "127.0.0.1");
    assert_eq!(success["dialect"], "soap");
    assert_eq!(success["api_version"], "59.0");
    assert_eq!(success["client"], "DataLoader/64");
    assert_eq!(success["tls"], "TLSv1.3");
    assert_eq!(rows[2]["dialect"], "oauth");
    assert_eq!(rows[2]["client"], CLIENT_ID);
    assert_eq!(rows[2]["reason"], "wrong password");
    assert_eq!(rows[1]["reason"], "wrong token");
    assert_eq!(rows[0]["dialect"], "basic");

    let one = |q: &'static str| {
        let (ts, admin) = (&ts, &admin);
        async move { history(ts, admin, q).await }
    };
    assert_eq!(
        one("user=ghost@example.com").await[0]["reason"],
        "unknown user"
    );
    assert_eq!(
        one("user=ranged@example.com").await[0]["outcome"],
        "outside_login_range"
    );
    assert_eq!(one("user=off@example.com").await[0]["outcome"], "disabled");
    let limited = one("user=flooded@example.com&outcome=rate_limited").await;
    assert_eq!(limited.len(), 5);
    assert_eq!(one("since=1h&limit=3").await.len(), 3);
    assert!(one("since=2099-01-01T00:00:00Z").await.is_empty());

    // CSV download, and bad filters.
    let r = ts
        .client()
        .get(
            "/tokengate/v1/admin/history?user=hist@example.com&format=csv",
            &[("authorization", &admin)],
        )
        .await;
    assert_eq!(r.header("content-type"), Some("text/csv; charset=utf-8"));
    assert!(r.text().starts_with(tokengate::history::CSV_HEADER));
    assert_eq!(r.text().lines().count(), 5);
    assert!(!r.text().contains(&token), "no secret in the history");
    for q in ["since=someday", "outcome=maybe", "limit=0", "format=xml"] {
        let r = ts
            .client()
            .get(
                &format!("/tokengate/v1/admin/history?{q}"),
                &[("authorization", &admin)],
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{q}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_credential_change_invalidates_cached_basic_credentials_at_once() {
    let up = Upstream::start().await;
    let ts = TestServer::start_with(&up.url(), |c| c.lockout.max_failures = 2).await;
    let admin_token = ts.add_user_with("admin@example.com", PASSWORD, true).await;
    let admin = basic("admin@example.com", &format!("{PASSWORD}{admin_token}"));
    let token = ts.add_user("cache@example.com").await;
    let status = |ts: &TestServer, secret: String| {
        let c = ts.client();
        async move {
            c.get(
                "/services/data/v59.0/",
                &[("authorization", &basic("cache@example.com", &secret))],
            )
            .await
            .status
        }
    };
    // Verified once, then answered from the cache: the hits counter proves it was cached
    // before each change, so a refusal after the change proves the entry was killed.
    let cached = async |secret: &String| {
        assert_eq!(status(&ts, secret.clone()).await, StatusCode::OK);
        let before = ts.app().auth.cache_hits();
        assert_eq!(status(&ts, secret.clone()).await, StatusCode::OK);
        assert!(
            ts.app().auth.cache_hits() > before,
            "the credential is cached"
        );
    };
    let good = format!("{PASSWORD}{token}");

    // A password change through the admin socket (the CLI, with the server running).
    cached(&good).await;
    cli(
        &ts,
        &["user", "passwd", "cache@example.com", "--password-stdin"],
        Some("Second1pass\n"),
    );
    assert_eq!(status(&ts, good.clone()).await, StatusCode::UNAUTHORIZED);
    let good = format!("Second1pass{token}");

    // Disable (the CLI), then enable.
    cached(&good).await;
    cli(&ts, &["user", "disable", "cache@example.com"], None);
    assert_eq!(status(&ts, good.clone()).await, StatusCode::UNAUTHORIZED);
    cli(&ts, &["user", "enable", "cache@example.com"], None);

    // A login-range change (the admin API).
    cached(&good).await;
    let c = ts.client();
    let put_ranges = async |ranges: &str| {
        let b = c
            .request(
                Method::PUT,
                "/tokengate/v1/admin/users/cache@example.com/login-ranges",
            )
            .header("authorization", &admin)
            .header("content-type", "application/json");
        assert_eq!(
            c.call(b, format!(r#"{{"ranges": [{ranges}]}}"#))
                .await
                .status,
            StatusCode::OK
        );
    };
    put_ranges(r#""10.0.0.0/8""#).await;
    assert_eq!(status(&ts, good.clone()).await, StatusCode::UNAUTHORIZED);
    put_ranges("").await;

    // A lock (two distinct failures): the cached credential now meets the lock.
    cached(&good).await;
    status(&ts, format!("Wrong1pass{token}")).await;
    status(&ts, format!("Wrong2pass{token}")).await;
    assert_eq!(status(&ts, good.clone()).await, StatusCode::LOCKED);
    cli(&ts, &["user", "unlock", "cache@example.com"], None);

    // A token reset cannot be tested without mail here; `tests/it/tokens.rs` covers it.
    cached(&good).await;
    drop(up);
}

#[tokio::test]
async fn a_flood_of_random_usernames_keeps_the_limiters_under_their_key_cap() {
    let up = Upstream::start().await;
    let ts = TestServer::start_with(&up.url(), |c| c.limits.max_keys = 10_000).await;
    let auth = &ts.app().auth;
    // 200,000 random usernames from 200,000 addresses straight into the limiters...
    for i in 0..200_000u32 {
        let ip = IpAddr::from((0x0a00_0000 | i).to_be_bytes());
        let _ = auth.limits().check(
            ip,
            &format!("random-{i:x}-{}", i.wrapping_mul(2_654_435_761)),
        );
    }
    let (ips, users) = auth.limits().keys();
    assert!(
        ips <= 10_000 && users <= 10_000,
        "keys: {ips} addresses, {users} usernames"
    );
    // ...and 2,000 through the whole login pipeline.
    for i in 0..2_000u32 {
        let user = format!("flood-{i}@example.com");
        let attempt = Attempt {
            username: &user,
            secret: "WrongPassw0rdAAAAAAAAAAAAAAAAAAAAAAAA",
            ip: IpAddr::from((0x0b00_0000 | i).to_be_bytes()),
            dialect: Dialect::OAuth,
            api_version: None,
            client: None,
            tls: None,
            password_only: false,
            relax_ranges: false,
        };
        assert!(auth.login(&attempt).await.is_err());
    }
    let (ips, users) = auth.limits().keys();
    assert!(
        ips <= 10_000 && users <= 10_000,
        "keys: {ips} addresses, {users} usernames"
    );
    // Housekeeping keeps working and the server still serves a legitimate user.
    auth.housekeep();
    let token = ts.add_user("legit@example.com").await;
    ts.soap_login("legit@example.com", &format!("{PASSWORD}{token}"))
        .await;
}

/// A call's reply and how long it took.
async fn timed(call: impl Future<Output = Reply>) -> (Reply, Duration) {
    let t = std::time::Instant::now();
    let r = call.await;
    (r, t.elapsed())
}

#[tokio::test]
async fn failures_are_answered_after_the_failure_delay_and_successes_are_not() {
    // The delay, not a second one stacked on it or a slow path after it.
    const SLACK: Duration = Duration::from_millis(300);
    let up = Upstream::start().await;
    let delay = Duration::from_millis(1500);
    let ts = TestServer::start_with(&up.url(), |c| c.limits.failure_delay = delay).await;
    let token = ts.add_user("slow@example.com").await;
    let good = format!("{PASSWORD}{token}");

    // Every kind of failure, in every dialect, takes at least the delay: an unknown user, a
    // wrong token (no argon2) and a wrong password (argon2) cannot be told apart by timing.
    let wrong_password = format!("Wrong-{PASSWORD}{token}");
    for (user, secret) in [
        ("nobody@example.com", good.as_str()),
        ("slow@example.com", "Passw0rdWRONGTOKENWRONGTOKEN"),
        ("slow@example.com", wrong_password.as_str()),
    ] {
        let (r, took) = timed(soap(&ts, user, secret, &[])).await;
        assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(r.text().contains("INVALID_LOGIN"), "{}", r.text());
        assert!(
            took >= delay && took < delay + SLACK,
            "SOAP failure answered after {took:?}"
        );

        let (r, took) = timed(basic_call(&ts, user, secret)).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert!(
            took >= delay && took < delay + SLACK,
            "Basic failure answered after {took:?}"
        );
    }
    let client = ts.client();
    let (r, took) = timed(client.oauth_login("nobody@example.com", &good)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        took >= delay && took < delay + SLACK,
        "OAuth failure answered after {took:?}"
    );

    // A right login is not held back.
    let (r, took) = timed(soap(&ts, "slow@example.com", &good, &[])).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(took < delay, "a success waited {took:?}");
}

#[tokio::test]
async fn failures_beyond_max_delayed_failures_are_answered_at_once() {
    let up = Upstream::start().await;
    let ts = TestServer::start_with(&up.url(), |c| {
        c.limits.failure_delay = Duration::from_secs(10);
        c.limits.max_delayed_failures = 2;
    })
    .await;
    // This server's own registry: no other test moves its counts.
    let overflowed = || metric(&ts.metrics(), "tokengate_failure_delay_overflow_total");
    assert_eq!(overflowed(), 0);
    // Two failures hold both places for 10 s; the third is answered without waiting.
    let waiting: Vec<_> = (0..2)
        .map(|i| {
            let c = ts.client();
            tokio::spawn(async move {
                let b = c
                    .request(Method::POST, "/services/Soap/u/59.0")
                    .header("content-type", "text/xml");
                c.call(
                    b,
                    soap_login_body(&format!("held{i}@example.com"), "x1234567"),
                )
                .await
            })
        })
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while ts.app().auth.limits().delayed_failures() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the two failures never waited"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (r, took) = timed(soap(&ts, "third@example.com", "x1234567", &[])).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        took < Duration::from_secs(1),
        "the third failure waited {took:?}"
    );
    assert_eq!(overflowed(), 1);
    for w in waiting {
        w.abort();
    }
    // Clients that went away gave their places back.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while ts.app().auth.limits().delayed_failures() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "places were not given back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_rate_limited_login_runs_no_password_verification() {
    let up = Upstream::start().await;
    let ts = TestServer::start_with(&up.url(), |c| {
        c.limits.login_per_user = nz(2);
        c.limits.failure_delay = Duration::ZERO;
        c.lockout.max_failures = 0;
    })
    .await;
    let token = ts.add_user("hashed@example.com").await;
    let good = format!("{PASSWORD}{token}");
    let verifications = || metric(&ts.metrics(), "tokengate_argon2_verifications_total");
    // The right token with a wrong password: each attempt runs argon2.
    let wrong = format!("Wrong-{PASSWORD}{token}");
    for n in 1..=2 {
        let r = soap(&ts, "hashed@example.com", &wrong, &[]).await;
        assert!(r.text().contains("INVALID_LOGIN"), "{}", r.text());
        assert_eq!(verifications(), n);
    }
    // The user's limit is spent: the right secret, in every dialect, is refused before any
    // hashing.
    let r = soap(&ts, "hashed@example.com", &good, &[]).await;
    assert!(r.text().contains("REQUEST_LIMIT_EXCEEDED"), "{}", r.text());
    let r = ts.client().oauth_login("hashed@example.com", &good).await;
    assert_eq!(r.json()["error"], "rate_limit_exceeded");
    let r = basic_call(&ts, "hashed@example.com", &good).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(verifications(), 2);

    // The same per address: a second server allowing two logins per address.
    let ts = TestServer::start_with(&up.url(), |c| {
        c.limits.login_per_ip = nz(2);
        c.limits.failure_delay = Duration::ZERO;
    })
    .await;
    let token = ts.add_user("ip@example.com").await;
    let wrong = format!("Wrong-{PASSWORD}{token}");
    for _ in 0..2 {
        soap(&ts, "ip@example.com", &wrong, &[]).await;
    }
    assert_eq!(verifications_of(&ts), 2);
    let r = soap(&ts, "ip@example.com", &format!("{PASSWORD}{token}"), &[]).await;
    assert!(r.text().contains("REQUEST_LIMIT_EXCEEDED"), "{}", r.text());
    assert_eq!(verifications_of(&ts), 2);
}

fn verifications_of(ts: &TestServer) -> u64 {
    metric(&ts.metrics(), "tokengate_argon2_verifications_total")
}
