//! The auth path attacked as an attacker would, against the running server: each test sends
//! what the attack sends and checks that it no longer works (abandoned sign-ins, one user
//! filling the session table, a name flood, forged forwarding chains, sessions that outlive
//! their user, another user's identity, a session buying the password, synthetic users,
//! cross-site requests, lockout and reset oracles, ambiguous SOAP envelopes, backup files,
//! restored hashes, readiness details).

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use crate::support::smtp::SmtpSink;
use crate::support::*;
use http::{Method, StatusCode};
use tokio::io::AsyncWriteExt;

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

struct Rig {
    up: Upstream,
    sink: SmtpSink,
    ts: TestServer,
    /// The admin's Basic credentials.
    admin: String,
}

async fn rig(tweak: impl FnOnce(&mut tokengate::config::Config)) -> Rig {
    let up = Upstream::start().await;
    let sink = SmtpSink::start().await;
    let ts = TestServer::start_with(&up.url(), |c| {
        mail_to(c, &sink, "tokengate");
        tweak(c);
    })
    .await;
    let token = ts.add_user_with("admin@example.com", PASSWORD, true).await;
    let admin = basic("admin@example.com", &format!("{PASSWORD}{token}"));
    Rig {
        up,
        sink,
        ts,
        admin,
    }
}

impl Rig {
    /// A call to the admin API as the admin.
    async fn admin_call(&self, method: Method, path: &str, json: Option<&str>) -> Reply {
        let c = self.ts.client();
        let mut b = c
            .request(method, &format!("/tokengate/v1/admin{path}"))
            .header("authorization", self.admin.as_str());
        if json.is_some() {
            b = b.header("content-type", "application/json");
        }
        c.call(b, json.unwrap_or_default().to_owned()).await
    }

    async fn soap(&self, user: &str, secret: &str, headers: &[(&str, &str)]) -> Reply {
        let c = self.ts.client();
        let mut b = c
            .request(Method::POST, "/services/Soap/u/59.0")
            .header("content-type", "text/xml");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        c.call(b, soap_login_body(user, secret)).await
    }

    async fn metrics(&self) -> String {
        let addr = self.ts.server.as_ref().unwrap().metrics_addr.unwrap();
        http_get(addr, "/metrics").await
    }
}

// -------------------------------------------------------------------------------------------
// Denial of service

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_ins_abandoned_mid_hash_give_their_places_back() {
    let r = rig(|c| {
        c.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        c.auth.hashing_concurrency = std::num::NonZeroUsize::new(1).unwrap();
        c.auth.hashing_queue = 64;
        c.limits.argon2_per_second = nz(1_000_000);
        c.limits.login_per_ip = nz(1_000_000);
        c.lockout.max_failures = 0;
        // All 300 come from one address, and may be open at once on a loaded machine.
        c.server.max_connections_per_ip = 1000;
    })
    .await;
    let token = r.ts.add_user("victim@example.com").await;
    // 300 console sign-ins whose clients hang up as soon as the request is out: each one is
    // admitted to the hashing queue, then its future is dropped with the connection.
    let body = "username=victim%40example.com&password=NotThePassw0rd";
    let request = format!(
        "POST /tokengate/console/signin HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut tasks = Vec::new();
    for _ in 0..300 {
        let (ca, addr, request) = (r.ts.ca.clone(), r.ts.addr, request.clone());
        tasks.push(tokio::spawn(async move {
            let mut s = raw_tls(&ca, addr).await;
            s.write_all(request.as_bytes()).await.unwrap();
            s.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(s);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    eventually(
        "the argon2 queue drains to 0",
        Duration::from_secs(30),
        async || metric(&r.metrics().await, "tokengate_argon2_queue_depth") == 0,
    )
    .await;
    // A cold login is admitted and succeeds.
    let ok = r
        .soap("victim@example.com", &format!("{PASSWORD}{token}"), &[])
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());
    assert_eq!(
        r.ts.app().auth.inflight(),
        0,
        "no verification left in flight"
    );
}

#[tokio::test]
async fn one_valid_credential_cannot_fill_the_session_table() {
    let r = rig(|c| {
        c.auth.max_sessions_per_user = 5;
        c.limits.login_per_user = nz(20);
    })
    .await;
    let token = r.ts.add_user("busy@example.com").await;
    let secret = format!("{PASSWORD}{token}");
    let mut sessions = Vec::new();
    let mut refused = None;
    for i in 0..40 {
        // After the first, every login is answered from the credential cache.
        let reply = r.ts.client().oauth_login("busy@example.com", &secret).await;
        if reply.status != StatusCode::OK {
            refused = Some((i, reply));
            break;
        }
        sessions.push(reply.json()["access_token"].as_str().unwrap().to_owned());
    }
    let (at, reply) = refused.expect("cached logins are rate limited too");
    assert_eq!(at, 20, "the per-user login limit (20) counts cached logins");
    assert_eq!(reply.json()["error"], "rate_limit_exceeded");
    assert!(reply.header("retry-after").is_some());
    // Only the newest five sessions live; the oldest ended as newer ones came.
    let c = r.ts.client();
    for (i, sid) in sessions.iter().enumerate() {
        let status = c
            .get_with_session("/services/data/v59.0/", sid)
            .await
            .status;
        let want = if i >= 15 {
            StatusCode::OK
        } else {
            StatusCode::UNAUTHORIZED
        };
        assert_eq!(status, want, "session {i}");
    }
    assert_eq!(r.ts.app().sessions.len(), 5);
    // Everyone else still logs in.
    let other = r.ts.add_user("other@example.com").await;
    assert_eq!(
        r.soap("other@example.com", &format!("{PASSWORD}{other}"), &[])
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_flood_of_new_names_leaves_known_users_their_own_limit() {
    let r = rig(|c| {
        c.limits.max_keys = 100;
        c.limits.login_per_user = nz(5);
        c.limits.login_per_ip = nz(1_000_000);
        // Every login of the known user is checked against the limiter.
        c.auth.credential_cache_size = 0;
    })
    .await;
    let token = r.ts.add_user("known@example.com").await;
    let secret = format!("{PASSWORD}{token}");
    // The user logs in once: the limiter knows the name.
    assert_eq!(
        r.soap("known@example.com", &secret, &[]).await.status,
        StatusCode::OK
    );
    // A flood of random names fills the limiter and spends the shared overflow limiter.
    let c = r.ts.client();
    let mut limited = 0;
    for i in 0..300 {
        let reply = c
            .post(
                "/services/Soap/u/59.0",
                "text/xml",
                soap_login_body(&format!("flood-{i}@example.com"), "Wr0ngPassword"),
            )
            .await;
        limited += usize::from(reply.text().contains("REQUEST_LIMIT_EXCEEDED"));
    }
    assert!(limited > 0, "new names past the bound share one limiter");
    // The known user still has their own four remaining logins.
    for _ in 0..4 {
        let reply = r.soap("known@example.com", &secret, &[]).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
}

// -------------------------------------------------------------------------------------------
// Identity and trust

#[tokio::test]
async fn a_forged_forwarding_chain_behind_a_trusted_proxy_does_not_pick_the_client_address() {
    let r = rig(|c| {
        c.server.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
        c.auth.trusted_networks = vec!["192.0.2.0/24".parse().unwrap()];
    })
    .await;
    let token = r.ts.add_user("ranged@example.com").await;
    let set = r
        .admin_call(
            Method::PUT,
            "/users/ranged@example.com/login-ranges",
            Some(r#"{"ranges": ["203.0.113.0/24"]}"#),
        )
        .await;
    assert_eq!(set.status, StatusCode::OK, "{}", set.text());
    let good = format!("{PASSWORD}{token}");
    // The attacker (198.51.100.50, appended by our proxy) writes an allowed address in front,
    // then something the old parser stopped at.
    for chain in [
        "203.0.113.7, x, 198.51.100.50",
        "203.0.113.7,,198.51.100.50",
        "203.0.113.7, unknown",
        "203.0.113.7, 999.1.1.1",
    ] {
        let reply = r
            .soap("ranged@example.com", &good, &[("x-forwarded-for", chain)])
            .await;
        assert_eq!(
            reply.status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "{chain}: refused as from outside the login ranges"
        );
    }
    // The honest chain still works.
    let reply = r
        .soap(
            "ranged@example.com",
            &good,
            &[("x-forwarded-for", "198.51.100.50, 203.0.113.7")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    // A forged trusted-network address buys no password-only login either.
    let plain = r.ts.add_user("plain@example.com").await;
    let _ = plain;
    for chain in ["192.0.2.9, x, 198.51.100.50", "192.0.2.9,,198.51.100.50"] {
        let reply =
            r.ts.client()
                .get(
                    "/services/data/v59.0/",
                    &[
                        ("authorization", &basic("plain@example.com", PASSWORD)),
                        ("x-forwarded-for", chain),
                    ],
                )
                .await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{chain}");
    }
    // The history shows the address that was really used, not the forged one.
    r.ts.history_written().await;
    let h = r
        .admin_call(
            Method::GET,
            "/history?user=ranged@example.com&outcome=outside_login_range",
            None,
        )
        .await;
    let rows = h.json()["rows"].as_array().unwrap().clone();
    assert!(!rows.is_empty());
    assert!(
        rows.iter().all(|row| row["source_ip"] != "203.0.113.7"),
        "{rows:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_created_by_a_login_that_raced_a_disable_is_dead() {
    let r = rig(|c| {
        c.auth.hashing_concurrency = std::num::NonZeroUsize::new(1).unwrap();
        // However slow the 30 decoys ahead of it, the victim's login waits its turn rather
        // than coming back Busy: the race is always run.
        c.auth.hashing_queue_timeout = Duration::from_secs(120);
        c.auth.credential_cache_size = 0;
        c.lockout.max_failures = 0;
        c.limits.argon2_per_second = nz(1_000_000);
    })
    .await;
    // The admin's Basic credential is verified once now, so disabling later is quick.
    assert_eq!(
        r.admin_call(Method::GET, "/users", None).await.status,
        StatusCode::OK
    );
    let token = r.ts.add_user("racer@example.com").await;
    let decoy = r.ts.add_user("decoy@example.com").await;
    // Cold verifications of a decoy (each a different wrong password, so none is shared) fill
    // the single hashing slot; the victim's login reads the user record and then waits behind
    // them.
    const DECOYS: usize = 30;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut decoys = Vec::new();
    for i in 0..DECOYS {
        let (c, done) = (r.ts.client(), done.clone());
        let body = soap_login_body("decoy@example.com", &format!("Wrong{i}pass{decoy}"));
        decoys.push(tokio::spawn(async move {
            let reply = c.post("/services/Soap/u/59.0", "text/xml", body).await;
            done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            reply
        }));
    }
    // The pool's depth counts the callers waiting for or holding the slot. A decoy answered
    // has left it, so `depth + answered` reaches DECOYS only once every decoy is in the pool
    // (or through it), and exceeds what the decoys account for only once the victim is in.
    let pool = r.ts.app().auth.hash_pool();
    let answered = || done.load(std::sync::atomic::Ordering::SeqCst);
    eventually(
        "every decoy is in the hashing pool",
        Duration::from_secs(20),
        async || {
            let n = answered();
            pool.depth() + n == DECOYS
        },
    )
    .await;
    let c = r.ts.client();
    let body = soap_login_body("racer@example.com", &format!("{PASSWORD}{token}"));
    let login =
        tokio::spawn(async move { c.post("/services/Soap/u/59.0", "text/xml", body).await });
    eventually(
        "the login waits behind the decoys for the hashing slot",
        Duration::from_secs(20),
        async || {
            let n = answered();
            pool.depth() + n == DECOYS + 1
        },
    )
    .await;
    // Disabled through the CLI, as an operator would, while the login waits.
    cli(&r.ts, &["user", "disable", "racer@example.com"], None);
    // The disable landed before the login got its turn (the slot is first come, first
    // served, so a decoy still in the pool is ahead of it): the race was run, not lost.
    assert!(
        pool.depth() >= 2 && !login.is_finished(),
        "the login reached the hashing slot before the disable: nothing was raced"
    );
    let login = login.await.unwrap();
    for d in decoys {
        d.await.unwrap();
    }
    // The login read the user before the disable and was let through: its session must not be.
    assert_eq!(login.status, StatusCode::OK, "{}", login.text());
    let sid = extract(&login.text(), "sessionId").unwrap();
    let call =
        r.ts.client()
            .get_with_session("/services/data/v59.0/", &sid)
            .await;
    assert_eq!(
        call.status,
        StatusCode::UNAUTHORIZED,
        "a session of a disabled user"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_end_when_the_login_ranges_change_and_are_refused_from_outside_them() {
    let r = rig(|c| c.server.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()]).await;
    let token = r.ts.add_user("roamer@example.com").await;
    let good = format!("{PASSWORD}{token}");
    let login = |ip: &'static str| {
        let (c, good) = (r.ts.client(), good.clone());
        async move {
            let b = c
                .request(Method::POST, "/services/Soap/u/59.0")
                .header("content-type", "text/xml")
                .header("x-forwarded-for", ip);
            let reply = c
                .call(b, soap_login_body("roamer@example.com", &good))
                .await;
            extract(&reply.text(), "sessionId").expect("a session")
        }
    };
    let call = |sid: String, ip: &'static str| {
        let c = r.ts.client();
        async move {
            c.get(
                "/services/data/v59.0/",
                &[
                    ("authorization", &format!("Bearer {sid}")),
                    ("x-forwarded-for", ip),
                ],
            )
            .await
            .status
        }
    };
    // No ranges yet: a session from anywhere, then the ranges change to exclude it.
    let sid = login("198.51.100.7").await;
    assert_eq!(call(sid.clone(), "198.51.100.7").await, StatusCode::OK);
    let set = r
        .admin_call(
            Method::PUT,
            "/users/roamer@example.com/login-ranges",
            Some(r#"{"ranges": ["203.0.113.0/24"]}"#),
        )
        .await;
    assert_eq!(set.status, StatusCode::OK);
    assert_eq!(
        call(sid, "198.51.100.7").await,
        StatusCode::UNAUTHORIZED,
        "the range change ended it"
    );
    // A session made inside the ranges is refused when used from outside them.
    let sid = login("203.0.113.7").await;
    assert_eq!(call(sid.clone(), "203.0.113.7").await, StatusCode::OK);
    assert_eq!(
        call(sid.clone(), "198.51.100.7").await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(sid, "203.0.113.8").await,
        StatusCode::OK,
        "still the user's inside the ranges"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_sessions_end_with_a_password_change_or_a_token_reset() {
    let r = rig(|c| c.lockout.max_failures = 2).await;
    let token = r.ts.add_user("webby@example.com").await;
    let sign_in = async || {
        let c = r.ts.client();
        let b = c
            .request(Method::POST, "/tokengate/console/signin")
            .header("content-type", "application/x-www-form-urlencoded");
        let reply = c
            .call(
                b,
                format!("username=webby%40example.com&password={PASSWORD}"),
            )
            .await;
        assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.text());
        reply
            .header("set-cookie")
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned()
    };
    let settings = async |cookie: &str| {
        r.ts.client()
            .get("/tokengate/console/settings", &[("cookie", cookie)])
            .await
            .status
    };
    // A token reset by an admin.
    let cookie = sign_in().await;
    assert_eq!(settings(&cookie).await, StatusCode::OK);
    let reset = r
        .admin_call(Method::POST, "/users/webby@example.com/token/reset", None)
        .await;
    assert_eq!(reset.status, StatusCode::ACCEPTED, "{}", reset.text());
    assert_eq!(settings(&cookie).await, StatusCode::SEE_OTHER, "signed out");
    // A password change (through the API, with the password and the new token).
    let cookie = sign_in().await;
    let new_token = r
        .sink
        .wait_for("webby.example.com@example.com", 2, Duration::from_secs(5))
        .await
        .last()
        .unwrap()
        .token();
    assert_ne!(new_token, token);
    let c = r.ts.client();
    let b = c
        .request(Method::POST, "/tokengate/v1/password")
        .header(
            "authorization",
            basic("webby@example.com", &format!("{PASSWORD}{new_token}")),
        )
        .header("content-type", "application/json");
    let changed = c.call(b, r#"{"new_password": "Fresh2Password"}"#).await;
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.text());
    assert_eq!(settings(&cookie).await, StatusCode::SEE_OTHER, "signed out");
}

#[tokio::test]
async fn sessions_restored_at_start_are_checked_against_their_user() {
    let up = Upstream::start().await;
    let ts = TestServer::start(&up.url()).await;
    let token = ts.add_user("sleeper@example.com").await;
    let kept = ts.add_user("keeper@example.com").await;
    let sid = ts
        .soap_login("sleeper@example.com", &format!("{PASSWORD}{token}"))
        .await;
    let other = ts
        .soap_login("keeper@example.com", &format!("{PASSWORD}{kept}"))
        .await;
    // While the server is down, an admin changes the user's login ranges (the offline CLI's
    // operation, which does not touch sessions itself).
    let dir = ts.dir.clone();
    let cfg = ts.cfg.clone();
    ts.stop().await;
    let admin = tokengate::services::offline_admin(&cfg).unwrap();
    admin
        .users
        .set_login_ranges(
            "sleeper@example.com",
            tokengate::admin::parse_ranges("203.0.113.0/24").unwrap(),
        )
        .unwrap();
    admin.store.flush().unwrap();
    drop(admin);
    let ts = TestServer::start_with(&up.url(), |c| *c = cfg.clone()).await;
    let _ = dir;
    let c = ts.client();
    assert_eq!(
        c.get_with_session("/services/data/v59.0/", &sid)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        c.get_with_session("/services/data/v59.0/", &other)
            .await
            .status,
        StatusCode::OK,
        "other sessions are restored"
    );
}

#[tokio::test]
async fn a_session_reads_only_its_own_identity_document() {
    let r = rig(|_| {}).await;
    let a = r.ts.add_user("alice@example.com").await;
    r.ts.add_user("bob@example.com").await;
    let sid =
        r.ts.soap_login("alice@example.com", &format!("{PASSWORD}{a}"))
            .await;
    let users = r.admin_call(Method::GET, "/users", None).await.json();
    let id_of = |name: &str| {
        users["users"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["username"] == name)
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let org = &r.ts.cfg.server.org.id18;
    let c = r.ts.client();
    let own = c
        .get_with_session(&format!("/id/{org}/{}", id_of("alice@example.com")), &sid)
        .await;
    assert_eq!(own.status, StatusCode::OK);
    assert_eq!(own.json()["username"], "alice@example.com");
    for path in [
        format!("/id/{org}/{}", id_of("bob@example.com")),
        format!("/id/{org}/{}", &id_of("bob@example.com")[..15]),
        format!("/id/{org}/005000000000999AAA"),
    ] {
        let other = c.get_with_session(&path, &sid).await;
        assert_eq!(other.status, StatusCode::FORBIDDEN, "{path}");
        assert!(!other.text().contains("bob"), "{}", other.text());
    }
}

#[tokio::test]
async fn a_session_alone_cannot_change_the_password() {
    let r = rig(|c| c.lockout.max_failures = 3).await;
    let token = r.ts.add_user("pw@example.com").await;
    let sid =
        r.ts.soap_login("pw@example.com", &format!("{PASSWORD}{token}"))
            .await;
    let change = async |body: &str| {
        let c = r.ts.client();
        let b = c
            .request(Method::POST, "/tokengate/v1/password")
            .header("authorization", format!("Bearer {sid}"))
            .header("content-type", "application/json");
        c.call(b, body.to_owned()).await
    };
    let reply = change(r#"{"new_password": "Stolen1Password"}"#).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text());
    assert_eq!(reply.json()["error"], "current_password_required");
    // A wrong current password is a failed login: it counts toward lockout and is recorded.
    for guess in ["Guess1one", "Guess2two"] {
        let reply = change(&format!(
            r#"{{"new_password": "Stolen1Password", "current_password": "{guess}"}}"#
        ))
        .await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text());
        assert_eq!(reply.json()["error"], "current_password_mismatch");
    }
    r.ts.history_written().await;
    let h = r
        .admin_call(Method::GET, "/history?user=pw@example.com", None)
        .await
        .json();
    let password_rows = h["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|row| row["dialect"] == "password" && row["outcome"] == "bad_credentials")
        .count();
    assert_eq!(password_rows, 2);
    // The password did not change; the right current password changes it.
    assert_eq!(
        r.soap("pw@example.com", &format!("{PASSWORD}{token}"), &[])
            .await
            .status,
        StatusCode::OK
    );
    let reply = change(&format!(
        r#"{{"new_password": "Chosen1Password", "current_password": "{PASSWORD}"}}"#
    ))
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
}

#[tokio::test]
async fn synthetic_users_with_a_chosen_token_are_refused_unless_allowed_and_never_admins() {
    let body = r#"{"username": "ghost@loadtest.invalid", "email": "ghost@loadtest.invalid", "password": "Passw0rdGhost", "loadtest": true, "token": "AAAAAAAAAAAAAAAAAAAAAAAA"}"#;
    let r = rig(|_| {}).await;
    let reply = r.admin_call(Method::POST, "/users", Some(body)).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text());
    assert!(reply.text().contains("allow_synthetic_users"));
    assert_eq!(
        r.soap(
            "ghost@loadtest.invalid",
            "Passw0rdGhostAAAAAAAAAAAAAAAAAAAAAAAA",
            &[]
        )
        .await
        .status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "no such user"
    );
    // Allowed on a test server, but never as an admin, and never promoted to one.
    let r = rig(|c| c.allow_synthetic_users = true).await;
    let admin_body = body.replace(r#""loadtest": true"#, r#""loadtest": true, "admin": true"#);
    let reply = r
        .admin_call(Method::POST, "/users", Some(&admin_body))
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text());
    let reply = r.admin_call(Method::POST, "/users", Some(body)).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    assert_eq!(reply.json()["user"]["loadtest"], true);
    let users = r.ts.app().users.clone();
    let promoted =
        tokio::task::spawn_blocking(move || users.set_admin("ghost@loadtest.invalid", true))
            .await
            .unwrap();
    assert!(promoted.is_err());
}

#[tokio::test]
async fn cross_site_requests_under_tokengate_are_refused() {
    let r = rig(|_| {}).await;
    let token = r.ts.add_user("csrf@example.com").await;
    let c = r.ts.client();
    let post = async |path: &str, headers: &[(&str, &str)], auth: Option<String>| {
        let mut b = c
            .request(Method::POST, path)
            .header("content-type", "application/x-www-form-urlencoded");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        c.call(b, "username=csrf%40example.com&password=x").await
    };
    let creds = Some(basic("csrf@example.com", PASSWORD));
    for headers in [
        vec![("sec-fetch-site", "cross-site")],
        vec![("origin", "https://evil.example")],
        vec![("origin", "null")],
        vec![
            ("sec-fetch-site", "same-site"),
            ("origin", "https://sub.evil.example"),
        ],
    ] {
        let reply = post("/tokengate/v1/token/reset", &headers, creds.clone()).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{headers:?}");
        assert_eq!(reply.json()["error"], "cross_site_request");
        let reply = post("/tokengate/console/signin", &headers, None).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{headers:?}");
        assert!(reply.text().contains("cross-site"));
        let reply = post("/tokengate/v1/admin/users", &headers, Some(r.admin.clone())).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{headers:?}");
    }
    // This waits for time, not for an event: a self-service reset is mailed after its answer,
    // and a refused request leaves nothing to wait on.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(r.sink.mails().len() <= 2, "no reset was made");
    // Same-origin pages and clients that send neither header are unaffected.
    let origin = r.ts.origin.clone();
    let reply = post(
        "/tokengate/v1/token/reset",
        &[
            ("origin", origin.as_str()),
            ("sec-fetch-site", "same-origin"),
        ],
        creds.clone(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text());
    let reply = post("/tokengate/v1/token/reset", &[], creds).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED);
    let _ = token;
}

// -------------------------------------------------------------------------------------------
// Oracles

#[tokio::test]
async fn a_locked_account_answers_password_only_guesses_like_a_wrong_password_and_mails_its_owner()
{
    let r = rig(|c| {
        c.lockout.max_failures = 3;
        c.auth.trusted_networks = vec!["127.0.0.0/8".parse().unwrap()];
    })
    .await;
    let token = r.ts.add_user("locked@example.com").await;
    // Compliance BCC on: the lock notice is copied too.
    let on = r
        .admin_call(
            Method::PUT,
            "/settings/compliance-bcc",
            Some(r#"{"enabled": true, "address": "compliance@example.org"}"#),
        )
        .await;
    assert_eq!(on.status, StatusCode::OK);
    for guess in ["Wrong1aaa", "Wrong2bbb", "Wrong3ccc"] {
        r.soap("locked@example.com", guess, &[]).await;
    }
    let notices = r
        .sink
        .wait_for("locked.example.com@example.com", 2, Duration::from_secs(10))
        .await;
    let notice = notices
        .iter()
        .find(|m| {
            m.header("subject")
                .is_some_and(|s| s.contains("account was locked"))
        })
        .expect("the owner is told of the lock");
    let text = notice.text();
    assert!(text.contains("127.0.0.1"), "from which address: {text}");
    assert!(text.contains("stays locked until"), "{text}");
    assert!(
        r.sink
            .wait_for("compliance@example.org", 1, Duration::from_secs(5))
            .await
            .iter()
            .any(|m| m.text().contains("account was locked"))
    );
    // The console: the right password answers exactly like a wrong one.
    let sign_in = async |password: &str| {
        let c = r.ts.client();
        let b = c
            .request(Method::POST, "/tokengate/console/signin")
            .header("content-type", "application/x-www-form-urlencoded");
        c.call(
            b,
            format!("username=locked%40example.com&password={password}"),
        )
        .await
    };
    let right = sign_in(PASSWORD).await;
    let wrong = sign_in("Wrong9zzz").await;
    assert_eq!(right.status, wrong.status);
    assert_eq!(right.body, wrong.body);
    // A trusted network (password alone, Basic): the same.
    let basic_call = async |secret: &str| {
        r.ts.client()
            .get(
                "/services/data/v59.0/",
                &[("authorization", &basic("locked@example.com", secret))],
            )
            .await
    };
    let right = basic_call(PASSWORD).await;
    let wrong = basic_call("Wrong9zzz").await;
    assert_eq!(
        (right.status, right.body.clone()),
        (wrong.status, wrong.body)
    );
    // With the token, the truth may be told: it cannot be guessed.
    let proven = basic_call(&format!("{PASSWORD}{token}")).await;
    assert_eq!(proven.status, StatusCode::LOCKED);
}

#[tokio::test]
async fn the_self_service_reset_tells_a_guesser_nothing_and_a_stranger_cannot_spend_the_quota() {
    let r = rig(|c| {
        c.lockout.max_failures = 4;
        c.tokens.reset_per_user_per_hour = nz(2);
        c.limits.failure_delay = Duration::from_millis(200);
    })
    .await;
    r.ts.add_user("owner@example.com").await;
    let c = r.ts.client();
    let reset = async |auth: String| {
        let b = c
            .request(Method::POST, "/tokengate/v1/token/reset")
            .header("authorization", auth);
        let started = Instant::now();
        let reply = c.call(b, "").await;
        (reply, started.elapsed())
    };
    // A stranger's three wrong guesses: the same answer as the owner's right password, after
    // at least the failure delay each.
    let mut bodies = Vec::new();
    for guess in ["Guess1one", "Guess2two", "Guess3three"] {
        let (reply, took) = reset(basic("owner@example.com", guess)).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED);
        assert!(took >= Duration::from_millis(200), "{took:?}");
        bodies.push(reply.body);
    }
    let (right, took) = reset(basic("owner@example.com", PASSWORD)).await;
    assert!(took >= Duration::from_millis(200), "{took:?}");
    assert_eq!(right.status, StatusCode::ACCEPTED);
    assert!(bodies.iter().all(|b| *b == right.body));
    // The failures did not spend the owner's quota (2 an hour): the owner's two resets mail.
    let (_, _) = reset(basic("owner@example.com", PASSWORD)).await;
    let mails = r
        .sink
        .wait_for("owner.example.com@example.com", 2, Duration::from_secs(10))
        .await;
    assert_eq!(mails.len(), 2, "both of the owner's resets were sent");
    // The guesses count toward lockout and are in the history as `reset` logins.
    r.ts.history_written().await;
    let h = r
        .admin_call(Method::GET, "/history?user=owner@example.com", None)
        .await
        .json();
    let failed = h["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|row| row["dialect"] == "reset" && row["outcome"] == "bad_credentials")
        .count();
    assert_eq!(failed, 3);
    // The owner's success reset the count; four more wrong guesses lock the account.
    for guess in ["Guess4four", "Guess5five", "Guess6six", "Guess7seven"] {
        let (reply, _) = reset(basic("owner@example.com", guess)).await;
        assert_eq!(reply.body, right.body);
    }
    let show = r
        .admin_call(Method::GET, "/users/owner@example.com", None)
        .await
        .json();
    assert!(
        show["user"]["locked_until"].is_u64(),
        "four wrong passwords lock: {show}"
    );
}

// -------------------------------------------------------------------------------------------
// SOAP envelope confusion

#[tokio::test]
async fn ambiguous_soap_envelopes_are_refused_and_nothing_is_forwarded() {
    let r = rig(|_| {}).await;
    let token = r.ts.add_user("soapy@example.com").await;
    let sid =
        r.ts.soap_login("soapy@example.com", &format!("{PASSWORD}{token}"))
            .await;
    let ns = r#"xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" xmlns:p="urn:partner.soap.sforce.com""#;
    let sh =
        |id: &str| format!("<p:SessionHeader><p:sessionId>{id}</p:sessionId></p:SessionHeader>");
    let cases = [
        // Authenticated with the last SessionHeader, forwarded with the first.
        format!(
            "<s:Envelope {ns}><s:Header>{}{}</s:Header><s:Body><p:query/></s:Body></s:Envelope>",
            sh("00D000000000001!forged"),
            sh(&sid)
        ),
        // A login with a second call: it became an ordinary call, forwarded with the password.
        format!(
            "<s:Envelope {ns}><s:Header>{}</s:Header><s:Body><p:login><p:username>soapy@example.com</p:username><p:password>{PASSWORD}{token}</p:password></p:login><p:query/></s:Body></s:Envelope>",
            sh(&sid)
        ),
        format!(
            "<s:Envelope {ns}><s:Header>{}</s:Header><s:Body><p:query/><p:login><p:username>soapy@example.com</p:username><p:password>{PASSWORD}{token}</p:password></p:login></s:Body></s:Envelope>",
            sh(&sid)
        ),
        format!(
            "<s:Envelope {ns}><s:Header>{}</s:Header><s:Header/><s:Body><p:query/></s:Body></s:Envelope>",
            sh(&sid)
        ),
    ];
    for body in &cases {
        let reply =
            r.ts.client()
                .post("/services/Soap/u/59.0", "text/xml", body.clone())
                .await;
        assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
        assert!(reply.text().contains("soapenv:Fault"), "{}", reply.text());
        assert!(reply.text().contains("ambiguous"), "{}", reply.text());
    }
    assert!(r.up.requests().is_empty(), "nothing reached the upstream");
    // A byte order mark in front (found by the fuzzer) does not move the cut: exactly the
    // SessionHeader element is taken out of what the upstream gets.
    let body = format!(
        "\u{feff}<s:Envelope {ns}><s:Header><p:CallOptions><p:client>x</p:client></p:CallOptions>{}</s:Header><s:Body><p:query/></s:Body></s:Envelope>",
        sh(&sid)
    );
    let reply =
        r.ts.client()
            .post("/services/Soap/u/59.0", "text/xml", body.clone())
            .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let seen = String::from_utf8_lossy(&r.up.last().body).into_owned();
    assert_eq!(seen, body.replace(&sh(&sid), ""));
}

// -------------------------------------------------------------------------------------------
// Files

#[tokio::test]
async fn a_backup_never_takes_the_mode_or_owner_of_a_file_planted_beside_it() {
    use std::os::unix::fs::PermissionsExt as _;
    let up = Upstream::start().await;
    let ts = TestServer::start(&up.url()).await;
    ts.add_user("backed@example.com").await;
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("backup.jsonl");
    // Someone planted world-writable files where the old code wrote its temporary file.
    for planted in ["backup.partial", "backup.jsonl.partial"] {
        let p = out.path().join(planted);
        std::fs::write(&p, "planted").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
    }
    let store = ts.app().store.clone();
    let path = file.clone();
    tokio::task::spawn_blocking(move || tokengate::backup::backup(store.as_ref(), &path))
        .await
        .unwrap()
        .unwrap();
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    for planted in ["backup.partial", "backup.jsonl.partial"] {
        assert_eq!(
            std::fs::read_to_string(out.path().join(planted)).unwrap(),
            "planted",
            "left alone"
        );
    }
    let names: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 3, "no temporary file left: {names:?}");
}

#[tokio::test]
async fn a_restore_refuses_password_hashes_with_parameters_beyond_the_bounds() {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let up = Upstream::start().await;
    let ts = TestServer::start(&up.url()).await;
    ts.add_user("costly@example.com").await;
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("backup.jsonl");
    let store = ts.app().store.clone();
    let path = file.clone();
    tokio::task::spawn_blocking(move || tokengate::backup::backup(store.as_ref(), &path))
        .await
        .unwrap()
        .unwrap();
    ts.stop().await;
    // Rewrite the user's hash to ask for 4 GiB and 100,000 passes per verification.
    let text = std::fs::read_to_string(&file).unwrap();
    let tampered: Vec<String> = text
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            if v["c"] == "users" {
                let mut user: serde_json::Value =
                    serde_json::from_slice(&b64.decode(v["v"].as_str().unwrap()).unwrap()).unwrap();
                let phc = user["password_hash"].as_str().unwrap().to_owned();
                let at = phc.find("$m=").unwrap();
                let end = phc[at + 1..].find('$').unwrap() + at + 1;
                user["password_hash"] =
                    format!("{}$m=4194304,t=100000,p=1{}", &phc[..at], &phc[end..]).into();
                v["v"] = b64.encode(serde_json::to_vec(&user).unwrap()).into();
            }
            v.to_string()
        })
        .collect();
    std::fs::write(&file, tampered.join("\n") + "\n").unwrap();
    let fresh = tempfile::tempdir().unwrap();
    let mut cfg = test_config(fresh.path(), &up.url());
    cfg.store.path = fresh.path().join("data");
    // As `tokengate restore` opens it: no server key of its own (on PostgreSQL a stored key
    // would make the database count as in use).
    let store = tokengate::services::DataDir::open_store(&cfg).unwrap();
    let err = tokengate::backup::restore(store.as_ref(), &file).unwrap_err();
    assert!(err.to_string().contains("memory"), "{err}");
    assert!(store.is_empty().unwrap(), "nothing was written");
}

#[tokio::test]
async fn readiness_names_the_failing_check_without_internal_details() {
    let up = Upstream::start().await;
    // An upstream that refuses connections.
    let (_held, dead) = refusing_address();
    let port = dead.port();
    let ts = TestServer::start_with(&up.url(), |c| {
        c.upstream.url = format!("http://127.0.0.1:{port}").parse().unwrap();
    })
    .await;
    let reply = ts.client().get("/tokengate/ready", &[]).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.json()["checks"]["upstream"], "error");
    let text = reply.text().to_lowercase();
    for leak in ["refused", "os error", "connection", "127.0.0.1"] {
        assert!(!text.contains(leak), "{leak}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verified_self_service_reset_the_mail_server_refuses_is_answered_like_any_other_logged_and_counted()
 {
    use crate::support::process::{self, Serve};
    use crate::support::smtp::Behaviour;
    let up = Upstream::start().await;
    let sink = SmtpSink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let cfg = dir.path().join("tokengate.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"{}\"\n[store]\npath = \"data\"\n{}\
             [mail]\ntransport = \"smtp\"\nhost = \"127.0.0.1\"\nport = {}\nsecurity = \"none\"\n\
             timeout = \"5s\"\nfrom = \"tokengate <noreply@tokengate.test>\"\n\
             [metrics]\nlisten = \"{metrics}\"\n",
            up.url(),
            store_backend_toml(),
            sink.addr.port()
        ),
    )
    .unwrap();
    let old = process::add_user(&cfg, "unlucky@example.com", PASSWORD, false);
    let server = Serve::start(&cfg, &[], &[]);
    let c = HttpsClient::new(&dir.path().join("data/tls/cert.pem"), server.addr, false);
    let reset = async |auth: String| {
        let b = c
            .request(Method::POST, "/tokengate/v1/token/reset")
            .header("authorization", auth);
        c.call(b, "").await
    };
    let failed = async || {
        metric(
            &http_get(metrics, "/metrics").await,
            "tokengate_emails_failed_total{kind=\"user\"}",
        )
    };
    assert_eq!(failed().await, 0);
    // The mail server now refuses every message.
    sink.set(Behaviour {
        refuse_data: true,
        ..Default::default()
    });
    let guessed = reset(basic("unlucky@example.com", "Wrong-Passw0rd")).await;
    let verified = reset(basic("unlucky@example.com", PASSWORD)).await;
    assert_eq!(verified.status, StatusCode::ACCEPTED, "{}", verified.text());
    assert_eq!(guessed.status, verified.status);
    assert_eq!(
        guessed.body, verified.body,
        "the same bytes whatever happened"
    );
    eventually(
        "the delivery failure is counted",
        Duration::from_secs(15),
        async || failed().await == 1,
    )
    .await;
    // The old token still works: nothing was rotated.
    let login = c
        .post(
            "/services/Soap/u/59.0",
            "text/xml",
            soap_login_body("unlucky@example.com", &format!("{PASSWORD}{old}")),
        )
        .await;
    assert_eq!(login.status, StatusCode::OK, "{}", login.text());
    let log = server.stop();
    assert!(
        log.lines()
            .any(|l| l.contains("self-service token reset failed")
                && l.contains("unlucky@example.com")),
        "{log}"
    );
    assert!(!log.contains(&old) && !log.contains(PASSWORD), "{log}");
}
