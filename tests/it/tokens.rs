//! The token lifecycle with email: the tests' own SMTP server on loopback (`support::smtp`)
//! receives every message; the emailed token works and the old one does not; Compliance BCC
//! copies; delivery failures leave the old token valid; grace windows; scheduled rotation and
//! its persistence. (The SMTP transport itself, against a real server, is `mail.rs`.)

use std::time::Duration;

use crate::support::smtp::{Behaviour, SmtpSink};
use crate::support::*;
use http::{Method, StatusCode};

struct Env {
    up: Upstream,
    sink: SmtpSink,
    ts: TestServer,
}

async fn env_with(tweak: impl FnOnce(&mut tokengate::config::Config)) -> Env {
    let up = Upstream::start().await;
    let sink = SmtpSink::start().await;
    let ts = TestServer::start_with(&up.url(), |c| {
        mail_to(c, &sink, "PatronManager");
        tweak(c);
    })
    .await;
    Env { up, sink, ts }
}

async fn env() -> Env {
    env_with(|_| {}).await
}

fn email_of(user: &str) -> String {
    format!("{}@example.com", user.replace('@', "."))
}

async fn soap_ok(ts: &TestServer, user: &str, secret: &str) -> bool {
    let r = ts
        .client()
        .post(
            "/services/Soap/u/59.0",
            "text/xml",
            soap_login_body(user, secret),
        )
        .await;
    r.status == StatusCode::OK
}

async fn admin_reset(ts: &TestServer, admin_auth: &str, user: &str) -> Reply {
    let b = ts
        .client()
        .request(
            Method::POST,
            &format!("/tokengate/v1/admin/users/{user}/token/reset"),
        )
        .header("authorization", admin_auth);
    ts.client().call(b, "").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_reset_emails_a_token_that_works_while_the_old_one_fails() {
    let e = env().await;
    let admin_token =
        e.ts.add_user_with("admin@example.com", PASSWORD, true)
            .await;
    let admin = basic("admin@example.com", &format!("{PASSWORD}{admin_token}"));
    let old = e.ts.add_user("bob@example.com").await;
    let sid =
        e.ts.soap_login("bob@example.com", &format!("{PASSWORD}{old}"))
            .await;
    // The old Basic credential is in the verification cache before the reset.
    assert_basic_cached(&e.ts, "bob@example.com", &format!("{PASSWORD}{old}")).await;

    let r = admin_reset(&e.ts, &admin, "bob@example.com").await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    assert_eq!(r.json()["sent_to"], "b***@example.com");
    assert!(!r.text().contains(&old));

    let mails = e.sink.to(&email_of("bob@example.com"));
    assert_eq!(mails.len(), 1);
    let m = &mails[0];
    assert_eq!(m.to, vec![email_of("bob@example.com")]);
    assert_eq!(m.from, "noreply@tokengate.test");
    assert_eq!(
        m.header("subject").unwrap(),
        "Your new PatronManager security token"
    );
    let text = m.text();
    assert!(text.contains("Hello Test User"), "{text}");
    assert!(text.contains("bob@example.com"));
    assert!(text.contains("administrator reset your security token"));
    assert!(text.contains("Append it to your password"));
    assert!(text.contains("did not ask for a new token"));
    assert!(text.contains("text/html"), "an HTML part");
    let new = m.token();
    assert_eq!(new.len(), 24);
    assert!(
        text.matches(new.as_str()).count() >= 2,
        "the token is in the text and HTML parts"
    );

    // The cached old Basic credential fails on the very next request.
    let r =
        e.ts.client()
            .get(
                "/services/data/v59.0/",
                &[(
                    "authorization",
                    &basic("bob@example.com", &format!("{PASSWORD}{old}")),
                )],
            )
            .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(soap_ok(&e.ts, "bob@example.com", &format!("{PASSWORD}{new}")).await);
    assert!(!soap_ok(&e.ts, "bob@example.com", &format!("{PASSWORD}{old}")).await);
    // The reset ended the user's sessions (the default).
    let r =
        e.ts.client()
            .get_with_session("/services/data/v59.0/", &sid)
            .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // Neither token, nor the password, nor the session id is in the store, or in a backup of it.
    assert_not_stored(&e.ts, &[&new, &old, PASSWORD, &sid]);
    let backup = e.ts.dir.path().join("out.backup");
    cli(&e.ts, &["backup", backup.to_str().unwrap()], None);
    // Records are base64 in the file: search the file as it is and every record decoded.
    let text = std::fs::read_to_string(&backup).unwrap();
    let mut decoded = Vec::new();
    for line in text.lines() {
        let record: serde_json::Value = serde_json::from_str(line).unwrap();
        for field in ["k", "v"] {
            if let Some(b) = record[field].as_str() {
                use base64::Engine as _;
                decoded.extend(base64::engine::general_purpose::STANDARD.decode(b).unwrap());
            }
        }
    }
    let decoded = String::from_utf8_lossy(&decoded);
    assert!(decoded.contains("bob@example.com"), "a backup of the users");
    for secret in [&new, &old, PASSWORD, &sid] {
        assert!(!decoded.contains(secret), "a backup record holds a secret");
        for form in spellings(secret) {
            assert!(!text.contains(&form), "the backup holds a secret");
        }
    }
    drop(e.up);
}

#[tokio::test]
async fn the_admin_api_refuses_non_admins_with_403_and_strangers_with_401() {
    let e = env().await;
    let token = e.ts.add_user("plain@example.com").await;
    let plain = basic("plain@example.com", &format!("{PASSWORD}{token}"));
    let r = admin_reset(&e.ts, &plain, "plain@example.com").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let sid =
        e.ts.soap_login("plain@example.com", &format!("{PASSWORD}{token}"))
            .await;
    let r =
        e.ts.client()
            .get_with_session("/tokengate/v1/admin/settings/compliance-bcc", &sid)
            .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = e.ts.client().get("/tokengate/v1/admin/users", &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = admin_reset(
        &e.ts,
        &basic("plain@example.com", "wrong"),
        "plain@example.com",
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(e.sink.mails().is_empty());
}

#[tokio::test]
async fn self_service_reset_works_with_the_password_alone_and_hides_unknown_users() {
    let e = env_with(|c| c.tokens.reset_per_user_per_hour = std::num::NonZeroU32::new(3).unwrap())
        .await;
    let old = e.ts.add_user("self@example.com").await;
    let c = e.ts.client();
    let reset = |auth: String| {
        let b = c
            .request(Method::POST, "/tokengate/v1/token/reset")
            .header("authorization", auth);
        c.call(b, "")
    };
    // A user who lost the token: Basic with the password alone. The answer names no address
    // and says nothing of the outcome; the mail follows.
    let r = reset(basic("self@example.com", PASSWORD)).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let accepted = r.body.clone();
    assert!(!r.text().contains("@"), "no address: {}", r.text());
    let mails = e
        .sink
        .wait_for(&email_of("self@example.com"), 1, Duration::from_secs(10))
        .await;
    assert_eq!(mails.len(), 1);
    assert!(
        mails[0]
            .text()
            .contains("you asked for a new security token")
    );
    let new = mails[0].token();
    assert!(soap_ok(&e.ts, "self@example.com", &format!("{PASSWORD}{new}")).await);
    assert!(!soap_ok(&e.ts, "self@example.com", &format!("{PASSWORD}{old}")).await);
    assert_not_stored(&e.ts, &[&new, &old, PASSWORD]);

    // Unknown users and wrong passwords: the same status and bytes, and no mail.
    for auth in [
        basic("ghost@example.com", PASSWORD),
        basic("self@example.com", "WrongPassw0rd"),
    ] {
        let r = reset(auth).await;
        assert_eq!(r.status, StatusCode::ACCEPTED);
        assert_eq!(r.body, accepted);
    }
    assert_eq!(e.sink.mails().len(), 1);

    // With a session of the user.
    let sid =
        e.ts.soap_login("self@example.com", &format!("{PASSWORD}{new}"))
            .await;
    let r = reset(format!("Bearer {sid}")).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    assert_eq!(r.body, accepted);
    e.sink
        .wait_for(&email_of("self@example.com"), 2, Duration::from_secs(10))
        .await;
    assert_eq!(e.sink.to(&email_of("self@example.com")).len(), 2);

    // The per-user quota (3 an hour here) is spent by verified requests only (two so far, the
    // two failures above did not count): the 3rd is sent, the 4th answers the same but sends
    // nothing, so a stranger cannot tell it from the others.
    let r = reset(basic("self@example.com", PASSWORD)).await;
    assert_eq!(r.body, accepted);
    e.sink
        .wait_for(&email_of("self@example.com"), 3, Duration::from_secs(10))
        .await;
    let r = reset(basic("self@example.com", PASSWORD)).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    assert_eq!(r.body, accepted);
    // This waits for time, not for an event: a self-service reset is mailed after its answer,
    // and one refused by the quota leaves nothing to wait on.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(e.sink.to(&email_of("self@example.com")).len(), 3);

    // No credentials at all.
    let r = c
        .call(c.request(Method::POST, "/tokengate/v1/token/reset"), "")
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = c.get("/tokengate/v1/token/reset", &[]).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn compliance_bcc_receives_a_redacted_copy_by_default_and_verbatim_when_configured() {
    let e = env().await;
    let admin_token =
        e.ts.add_user_with("admin@example.com", PASSWORD, true)
            .await;
    let admin = basic("admin@example.com", &format!("{PASSWORD}{admin_token}"));
    e.ts.add_user("carl@example.com").await;
    let c = e.ts.client();
    let put = |body: &'static str| {
        let b = c
            .request(Method::PUT, "/tokengate/v1/admin/settings/compliance-bcc")
            .header("authorization", admin.as_str())
            .header("content-type", "application/json");
        c.call(b, body)
    };
    let r = put(r#"{"enabled": true, "address": "compliance@example.org"}"#).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["redact_secrets"], true);
    let r = c
        .get(
            "/tokengate/v1/admin/settings/compliance-bcc",
            &[("authorization", &admin)],
        )
        .await;
    assert_eq!(r.json()["address"], "compliance@example.org");

    assert_eq!(
        admin_reset(&e.ts, &admin, "carl@example.com").await.status,
        StatusCode::ACCEPTED
    );
    let user_mail = &e.sink.to(&email_of("carl@example.com"))[0];
    let token = user_mail.token();
    let copies = e
        .sink
        .wait_for("compliance@example.org", 1, Duration::from_secs(5))
        .await;
    assert_eq!(copies.len(), 1);
    let copy = &copies[0];
    assert_eq!(
        copy.to,
        vec!["compliance@example.org".to_owned()],
        "the copy goes by envelope only"
    );
    assert_eq!(
        copy.header("to").unwrap(),
        format!("\"Test User\" <{}>", email_of("carl@example.com"))
    );
    assert_eq!(copy.header("subject"), user_mail.header("subject"));
    assert!(copy.header("bcc").is_none());
    // Every part, decoded: the token appears in none of them.
    assert!(user_mail.carries(&token), "the user's own mail has it");
    assert!(!copy.carries(&token), "redacted by default");
    let parts = copy.decoded_parts();
    assert_eq!(parts.len(), 2, "text and HTML");
    for part in &parts {
        assert!(
            part.contains(&format!("{}{}", "*".repeat(20), &token[20..])),
            "{part}"
        );
    }

    let r =
        put(r#"{"enabled": true, "address": "compliance@example.org", "redact_secrets": false}"#)
            .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        admin_reset(&e.ts, &admin, "carl@example.com").await.status,
        StatusCode::ACCEPTED
    );
    let token = e.sink.to(&email_of("carl@example.com"))[1].token();
    let copies = e
        .sink
        .wait_for("compliance@example.org", 2, Duration::from_secs(5))
        .await;
    assert!(
        copies[1].decoded_parts().iter().all(|p| p.contains(&token)),
        "verbatim when configured, in every part"
    );
    // A verbatim copy is made from the token in memory: neither token reached the store.
    let first = e.sink.to(&email_of("carl@example.com"))[0].token();
    assert_not_stored(&e.ts, &[&first, &token]);

    // Bad settings are refused with a clear error.
    for bad in [
        r#"{"enabled": true}"#,
        r#"{"enabled": true, "address": "not an address"}"#,
        r#"{"enable": true}"#,
        "{",
    ] {
        assert_eq!(put(bad).await.status, StatusCode::BAD_REQUEST, "{bad}");
    }
    // serde_json quotes a wrongly typed string in its message; the answer must not.
    let r = put(r#"{"enabled": "Leaky9Secret"}"#).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(!r.text().contains("Leaky9Secret"), "{}", r.text());
    assert!(r.text().contains("wrong type"), "{}", r.text());
    assert_eq!(put(r#"{"enabled": false}"#).await.status, StatusCode::OK);
    assert_eq!(
        admin_reset(&e.ts, &admin, "carl@example.com").await.status,
        StatusCode::ACCEPTED
    );
    // An admin reset answers once its mail and the compliance copy were sent (the copy in the
    // same send, before the 202): a copy made now would already be here.
    assert_eq!(e.sink.to(&email_of("carl@example.com")).len(), 3);
    assert_eq!(
        e.sink.to("compliance@example.org").len(),
        2,
        "no copy once disabled"
    );
}

#[tokio::test]
async fn a_failed_compliance_copy_never_undoes_the_rotation_and_is_retried() {
    let e = env().await;
    let admin_token =
        e.ts.add_user_with("admin@example.com", PASSWORD, true)
            .await;
    let admin = basic("admin@example.com", &format!("{PASSWORD}{admin_token}"));
    e.ts.add_user("dora@example.com").await;
    let set_compliance = async |redact: bool| {
        let r = admin_call(
            &e.ts,
            &admin,
            Method::PUT,
            "/settings/compliance-bcc",
            Some(serde_json::json!({
                "enabled": true,
                "address": "audit@example.org",
                "redact_secrets": redact,
            })),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    };
    let queued = || metric(&e.ts.metrics(), "tokengate_compliance_queue");
    set_compliance(true).await;
    e.sink.set(Behaviour {
        refuse_rcpt: vec!["audit@example.org".into()],
        ..Behaviour::default()
    });
    assert_eq!(
        admin_reset(&e.ts, &admin, "dora@example.com").await.status,
        StatusCode::ACCEPTED
    );
    let token = e.sink.to(&email_of("dora@example.com"))[0].token();
    assert!(soap_ok(&e.ts, "dora@example.com", &format!("{PASSWORD}{token}")).await);
    assert!(e.sink.to("audit@example.org").is_empty());
    assert_eq!(queued(), 1);

    e.sink.set(Behaviour::default());
    let copies = e
        .sink
        .wait_for("audit@example.org", 1, Duration::from_secs(10))
        .await;
    assert_eq!(copies.len(), 1, "the queued copy was retried");
    assert!(!copies[0].carries(&token));
    // The sender takes the copy off the queue once the server has accepted it.
    eventually("the queue empties", Duration::from_secs(5), async || {
        queued() == 0
    })
    .await;
    assert_not_stored(&e.ts, &[&token]);

    // A verbatim copy that fails waits in memory only: the store never holds a token.
    set_compliance(false).await;
    e.sink.set(Behaviour {
        refuse_rcpt: vec!["audit@example.org".into()],
        ..Behaviour::default()
    });
    assert_eq!(
        admin_reset(&e.ts, &admin, "dora@example.com").await.status,
        StatusCode::ACCEPTED
    );
    let token = e.sink.to(&email_of("dora@example.com"))[1].token();
    assert_eq!(queued(), 1);
    // The verbatim copy waiting for its retry is not in the store, in any spelling.
    assert_not_stored(&e.ts, &[&token]);
    e.sink.set(Behaviour::default());
    let copies = e
        .sink
        .wait_for("audit@example.org", 2, Duration::from_secs(10))
        .await;
    assert!(
        copies[1].carries(&token),
        "the verbatim copy went out on retry"
    );
}

#[tokio::test]
async fn smtp_down_refusing_or_hanging_gives_503_and_the_old_token_stays_valid() {
    let e = env_with(|c| c.mail.timeout = Duration::from_millis(800)).await;
    let admin_token =
        e.ts.add_user_with("admin@example.com", PASSWORD, true)
            .await;
    let admin = basic("admin@example.com", &format!("{PASSWORD}{admin_token}"));
    let old = e.ts.add_user("eve@example.com").await;
    for behaviour in [
        Behaviour {
            refuse_data: true,
            ..Behaviour::default()
        },
        Behaviour {
            refuse_rcpt: vec![email_of("eve@example.com")],
            ..Behaviour::default()
        },
        Behaviour {
            hang: true,
            ..Behaviour::default()
        },
    ] {
        e.sink.set(behaviour.clone());
        let r = admin_reset(&e.ts, &admin, "eve@example.com").await;
        assert_eq!(
            r.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{behaviour:?}: {}",
            r.text()
        );
        assert_eq!(r.json()["error"], "mail_delivery_failed");
        assert!(
            soap_ok(&e.ts, "eve@example.com", &format!("{PASSWORD}{old}")).await,
            "{behaviour:?}"
        );
    }
    // The token made for the refused message (the sink kept it) never works and is never
    // stored; neither is the old one.
    let refused = e.sink.refused();
    assert_eq!(refused.len(), 1, "one message was refused at DATA");
    let refused = refused[0].token();
    assert_ne!(refused, old);
    assert!(!soap_ok(&e.ts, "eve@example.com", &format!("{PASSWORD}{refused}")).await);
    e.sink.set(Behaviour::default());
    e.sink.stop();
    let r = admin_reset(&e.ts, &admin, "eve@example.com").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(soap_ok(&e.ts, "eve@example.com", &format!("{PASSWORD}{old}")).await);
    assert_not_stored(&e.ts, &[&refused, &old, PASSWORD]);
    let user = e.ts.app().tokens.find("eve@example.com").unwrap();
    assert!(
        user.pending_token.is_none(),
        "a failed send leaves nothing pending"
    );
}

#[tokio::test]
async fn without_mail_configured_resets_are_refused_clearly() {
    let up = Upstream::start().await;
    let ts = TestServer::start(&up.url()).await;
    let token = ts.add_user_with("admin@example.com", PASSWORD, true).await;
    let admin = basic("admin@example.com", &format!("{PASSWORD}{token}"));
    let r = admin_reset(&ts, &admin, "admin@example.com").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.json()["error"], "mail_not_configured");
    assert!(soap_ok(&ts, "admin@example.com", &format!("{PASSWORD}{token}")).await);
}

#[tokio::test]
async fn the_grace_window_keeps_the_old_token_working_for_a_while() {
    let e = env_with(|c| c.tokens.grace_period = Duration::from_secs(2)).await;
    let admin_token =
        e.ts.add_user_with("admin@example.com", PASSWORD, true)
            .await;
    let admin = basic("admin@example.com", &format!("{PASSWORD}{admin_token}"));
    let old = e.ts.add_user("gus@example.com").await;
    assert_eq!(
        admin_reset(&e.ts, &admin, "gus@example.com").await.status,
        StatusCode::ACCEPTED
    );
    let mail = &e.sink.to(&email_of("gus@example.com"))[0];
    assert!(mail.text().contains("keeps working until"));
    let new = mail.token();
    assert!(soap_ok(&e.ts, "gus@example.com", &format!("{PASSWORD}{new}")).await);
    assert!(
        soap_ok(&e.ts, "gus@example.com", &format!("{PASSWORD}{old}")).await,
        "still inside the grace window"
    );
    // Each use of the superseded token is in the history, for admins to find the integration.
    e.ts.history_written().await;
    let r = admin_call(
        &e.ts,
        &admin,
        Method::GET,
        "/history?user=gus@example.com&outcome=superseded_token",
        None,
    )
    .await;
    assert_eq!(
        r.json()["rows"].as_array().unwrap().len(),
        1,
        "{}",
        r.text()
    );
    tokio::time::sleep(Duration::from_millis(2900)).await;
    assert!(
        !soap_ok(&e.ts, "gus@example.com", &format!("{PASSWORD}{old}")).await,
        "the window closed"
    );
    assert!(soap_ok(&e.ts, "gus@example.com", &format!("{PASSWORD}{new}")).await);
    assert_not_stored(&e.ts, &[&new, &old, PASSWORD]);
}

#[tokio::test]
async fn changing_the_password_emails_a_new_token() {
    let e = env().await;
    let old = e.ts.add_user("hal@example.com").await;
    let c = e.ts.client();
    let change = |auth: String, body: &'static str| {
        let b = c
            .request(Method::POST, "/tokengate/v1/password")
            .header("authorization", auth)
            .header("content-type", "application/json");
        c.call(b, body)
    };
    let auth = basic("hal@example.com", &format!("{PASSWORD}{old}"));
    let r = change(auth.clone(), r#"{"new_password": "short"}"#).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("at least 8 characters")
    );
    assert_eq!(
        change(auth.clone(), r#"{"password": "x"}"#).await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        change(auth.clone(), "not json").await.status,
        StatusCode::BAD_REQUEST
    );
    // A wrongly typed value is not quoted back: it may be a password.
    let r = change(auth.clone(), r#"{"new_password": ["Leaky9Secret"]}"#).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(!r.text().contains("Leaky9Secret"), "{}", r.text());
    let r = change(auth.clone(), r#"{"password": "Leaky9Secret"}"#).await;
    assert!(
        r.text().contains("unknown field `password`") && !r.text().contains("Leaky9Secret"),
        "{}",
        r.text()
    );

    let r = change(auth, r#"{"new_password": "Brand1NewPass"}"#).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let mail = &e.sink.to(&email_of("hal@example.com"))[0];
    assert!(mail.text().contains("your password was changed"));
    let new = mail.token();
    assert!(soap_ok(&e.ts, "hal@example.com", &format!("Brand1NewPass{new}")).await);
    assert!(!soap_ok(&e.ts, "hal@example.com", &format!("{PASSWORD}{old}")).await);
    assert!(!soap_ok(&e.ts, "hal@example.com", &format!("Brand1NewPass{old}")).await);
    assert_not_stored(&e.ts, &[&new, &old, PASSWORD, "Brand1NewPass"]);

    // SMTP down: neither the password nor the token changes.
    e.sink.stop();
    let sid =
        e.ts.soap_login("hal@example.com", &format!("Brand1NewPass{new}"))
            .await;
    let r = change(
        format!("Bearer {sid}"),
        r#"{"new_password": "Another1Pass", "current_password": "Brand1NewPass"}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(soap_ok(&e.ts, "hal@example.com", &format!("Brand1NewPass{new}")).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_rotation_emails_due_tokens() {
    const CHECK: Duration = Duration::from_millis(250);
    const EVERY: Duration = Duration::from_secs(3);
    let e = env_with(|c| c.tokens.rotation_check_interval = CHECK).await;
    let first = e.ts.add_user("vendor@example.com").await;
    let set_at = std::time::Instant::now();
    cli(
        &e.ts,
        &["user", "set", "vendor@example.com", "--rotate-every", "3s"],
        None,
    );
    let inbox = email_of("vendor@example.com");
    let mails = e.sink.wait_for(&inbox, 1, EVERY * 3).await;
    assert_eq!(mails.len(), 1, "rotated on schedule");
    let rotated_at = set_at.elapsed();
    assert!(
        rotated_at >= EVERY - Duration::from_secs(1),
        "not before it was due: {rotated_at:?}"
    );
    assert!(mails[0].text().contains("rotated on a schedule"));
    // Three more checks find nothing due: exactly one mail per due rotation.
    tokio::time::sleep(CHECK * 3).await;
    assert_eq!(e.sink.to(&inbox).len(), 1, "a rotation ran twice");
    // Turn it off, then the last emailed token is the one that works.
    cli(
        &e.ts,
        &["user", "set", "vendor@example.com", "--rotate-every", "off"],
        None,
    );
    let mails = e.sink.to(&inbox);
    let last = mails.last().unwrap().token();
    assert!(soap_ok(&e.ts, "vendor@example.com", &format!("{PASSWORD}{last}")).await);
    assert!(!soap_ok(&e.ts, "vendor@example.com", &format!("{PASSWORD}{first}")).await);
    assert_not_stored(&e.ts, &[&last, &first, PASSWORD]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rotation_schedule_survives_a_restart_and_missed_rotations_run_at_start() {
    let e = env_with(|c| c.tokens.rotation_check_interval = Duration::from_millis(200)).await;
    let first = e.ts.add_user("sched@example.com").await;
    cli(
        &e.ts,
        &["user", "set", "sched@example.com", "--rotate-every", "1h"],
        None,
    );
    // Another user due a second from now: its mail after the restart proves the scheduler
    // has run its passes over sched@ too (an event, not a sleep).
    e.ts.add_user("tick@example.com").await;
    cli(
        &e.ts,
        &["user", "set", "tick@example.com", "--rotate-every", "1s"],
        None,
    );
    let due =
        e.ts.app()
            .tokens
            .find("sched@example.com")
            .unwrap()
            .next_rotation_at
            .unwrap();
    let ts = e.ts.restart().await;
    // Counted once the old server is down: the next tick is the new server's.
    let ticks = e.sink.to(&email_of("tick@example.com")).len();
    let ticked = e
        .sink
        .wait_for(
            &email_of("tick@example.com"),
            ticks + 1,
            Duration::from_secs(10),
        )
        .await;
    assert!(ticked.len() > ticks, "the scheduler runs after the restart");
    cli(
        &ts,
        &["user", "set", "tick@example.com", "--rotate-every", "off"],
        None,
    );
    let user = ts.app().tokens.find("sched@example.com").unwrap();
    assert_eq!(
        user.next_rotation_at,
        Some(due),
        "neither skipped nor repeated"
    );
    assert!(
        e.sink.to(&email_of("sched@example.com")).is_empty(),
        "nothing was due"
    );

    // A rotation that fell due while the server was down runs at start.
    let store = ts.app().store.clone();
    store
        .update_user(&user.id, &mut |u| {
            u.next_rotation_at = Some(tokengate::now_secs() - 60)
        })
        .unwrap();
    drop(store); // the restart needs the store's directory lock back
    let ts = ts.restart().await;
    let mails = e
        .sink
        .wait_for(&email_of("sched@example.com"), 1, Duration::from_secs(10))
        .await;
    assert_eq!(mails.len(), 1);
    // The rotation commits (new token, next date) once the mail server has accepted the mail,
    // so the sink can hold the mail a moment before the record changes.
    eventually(
        "the next rotation is a period away",
        Duration::from_secs(10),
        async || {
            let user = ts.app().tokens.find("sched@example.com").unwrap();
            user.next_rotation_at.unwrap() >= tokengate::now_secs() + 3500
        },
    )
    .await;
    let mailed = mails[0].token();
    assert!(soap_ok(&ts, "sched@example.com", &format!("{PASSWORD}{mailed}")).await);
    assert!(!soap_ok(&ts, "sched@example.com", &format!("{PASSWORD}{first}")).await);
    // Neither the token rotated at start nor the one it replaced is in the store.
    assert_not_stored(&ts, &[&mailed, &first, PASSWORD]);
    drop(e.up);
}

#[tokio::test]
async fn self_service_resets_are_limited_to_thirty_an_hour_per_address() {
    // The default limit, not a test value: the README promises 30.
    let e = env_with(|c| {
        c.server.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
        c.limits.failure_delay = Duration::from_millis(50);
        c.lockout.max_failures = 0;
    })
    .await;
    assert_eq!(e.ts.app().cfg.tokens.reset_per_ip_per_hour.get(), 30);
    e.ts.add_user("limited@example.com").await;
    let c = e.ts.client();
    let reset = |from: &'static str, user: String| {
        let b = c
            .request(Method::POST, "/tokengate/v1/token/reset")
            .header("x-forwarded-for", from)
            .header("authorization", basic(&user, "Wrong-password-1"));
        c.call(b, "")
    };
    // Thirty requests from one address, whatever they carry, are answered as usual...
    for i in 0..30 {
        let r = reset("192.0.2.7", format!("u{i}@example.com")).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "request {i}: {}", r.text());
    }
    // ...the 31st is refused, even for a real user, and says when to come back.
    let r = reset("192.0.2.7", "limited@example.com".into()).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text());
    assert_eq!(r.json()["error"], "rate_limited");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=3600).contains(&retry), "retry-after {retry}");
    // Another address is not affected.
    let r = reset("192.0.2.8", "limited@example.com".into()).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
}

/// An admin API call with a JSON body (or none).
async fn admin_call(
    ts: &TestServer,
    admin_auth: &str,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Reply {
    let c = ts.client();
    let mut b = c
        .request(method, &format!("/tokengate/v1/admin{path}"))
        .header("authorization", admin_auth);
    if body.is_some() {
        b = b.header("content-type", "application/json");
    }
    c.call(b, body.map(|v| v.to_string()).unwrap_or_default())
        .await
}

#[tokio::test]
async fn the_admin_api_shows_a_user_sets_login_ranges_and_never_takes_a_chosen_token() {
    let e = env().await;
    let admin_token =
        e.ts.add_user_with("admin@example.com", PASSWORD, true)
            .await;
    let admin = basic("admin@example.com", &format!("{PASSWORD}{admin_token}"));
    let token = e.ts.add_user("ranged@example.com").await;
    let call = async |m: Method, p: &str, b: Option<serde_json::Value>| {
        admin_call(&e.ts, &admin, m, p, b).await
    };
    let login = async || {
        let r =
            e.ts.client()
                .post(
                    "/services/Soap/u/59.0",
                    "text/xml",
                    soap_login_body("ranged@example.com", &format!("{PASSWORD}{token}")),
                )
                .await;
        (r.status, extract(&r.text(), "sf:exceptionCode"))
    };

    // GET /users/{u}: the user's record, with no secret in it; an unknown user is 404.
    let r = call(Method::GET, "/users/Ranged@Example.com", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let user = &r.json()["user"];
    assert_eq!(user["username"], "ranged@example.com");
    assert_eq!(user["email"], email_of("ranged@example.com"));
    assert_eq!(user["login_ranges"], serde_json::json!([]));
    assert_eq!(user["disabled"], false);
    for secret in [
        token.as_str(),
        PASSWORD,
        "argon2",
        "token_tag",
        "password_hash",
    ] {
        assert!(!r.text().contains(secret), "{secret} in {}", r.text());
    }
    let r = call(Method::GET, "/users/nobody@example.com", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.json()["error"], "not_found");

    // PUT /users/{u}/login-ranges: a range without this address refuses the login at once...
    let r = call(
        Method::PUT,
        "/users/ranged@example.com/login-ranges",
        Some(serde_json::json!({ "ranges": ["10.0.0.0/8", "192.0.2.1"] })),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        r.json()["user"]["login_ranges"],
        serde_json::json!(["10.0.0.0/8", "192.0.2.1/32"])
    );
    assert_eq!(
        call(Method::GET, "/users/ranged@example.com", None)
            .await
            .json()["user"]["login_ranges"],
        serde_json::json!(["10.0.0.0/8", "192.0.2.1/32"])
    );
    let (status, code) = login().await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    // Answered like a wrong password: the range is not disclosed.
    assert_eq!(code.as_deref(), Some("INVALID_LOGIN"));
    // ...one that holds it lets it in, an empty list lifts the restriction, and a bad range
    // changes nothing.
    let r = call(
        Method::PUT,
        "/users/ranged@example.com/login-ranges",
        Some(serde_json::json!({ "ranges": ["127.0.0.0/8"] })),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(login().await.0, StatusCode::OK);
    let r = call(
        Method::PUT,
        "/users/ranged@example.com/login-ranges",
        Some(serde_json::json!({ "ranges": ["10.0.0.0/99"] })),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["error"], "invalid_request");
    assert!(r.text().contains("10.0.0.0/99"), "{}", r.text());
    assert_eq!(
        call(Method::GET, "/users/ranged@example.com", None)
            .await
            .json()["user"]["login_ranges"],
        serde_json::json!(["127.0.0.0/8"])
    );
    let r = call(
        Method::PUT,
        "/users/ranged@example.com/login-ranges",
        Some(serde_json::json!({ "ranges": [] })),
    )
    .await;
    assert_eq!(r.json()["user"]["login_ranges"], serde_json::json!([]));
    assert_eq!(login().await.0, StatusCode::OK);
    let r = call(
        Method::PUT,
        "/users/nobody@example.com/login-ranges",
        Some(serde_json::json!({ "ranges": [] })),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // POST /users with a token of the caller's choosing: refused, and no user is made. (Only a
    // load-test server makes synthetic users with chosen tokens.)
    let chosen = "ChosenByTheCaller0123456789";
    let r = call(
        Method::POST,
        "/users",
        Some(serde_json::json!({
            "username": "chosen@example.com",
            "email": "chosen@example.com",
            "password": PASSWORD,
            "token": chosen,
        })),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert_eq!(r.json()["error"], "invalid_request");
    assert!(!r.text().contains(chosen));
    let r = call(
        Method::POST,
        "/users",
        Some(serde_json::json!({
            "username": "chosen@example.com",
            "email": "chosen@example.com",
            "password": PASSWORD,
            "token": chosen,
            "loadtest": true,
        })),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    assert_eq!(r.json()["error"], "synthetic_users_refused");
    assert_eq!(
        call(Method::GET, "/users/chosen@example.com", None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert!(e.sink.to("chosen@example.com").is_empty());
}
