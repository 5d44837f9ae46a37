//! Named tokens, one per integration, through the running server with real email: each logs
//! in over SOAP, OAuth and Basic; a reset or revocation of one ends that one (its old value,
//! its cached verifications, its sessions) and leaves the default token and the others alone;
//! names are checked and bounded; a password change resets them all (unless configured not
//! to); the history, the access log, the metrics and the audit trail name or count them
//! without ever holding a token; the self-service API reaches only the caller's own tokens.

use std::time::Duration;

use crate::support::smtp::SmtpSink;
use crate::support::*;
use http::{Method, StatusCode};

struct Env {
    _up: Upstream,
    sink: SmtpSink,
    ts: TestServer,
    admin: String,
}

async fn env_with(tweak: impl FnOnce(&mut tokengate::config::Config)) -> Env {
    let up = Upstream::start().await;
    let sink = SmtpSink::start().await;
    let ts = TestServer::start_with(&up.url(), |c| {
        mail_to(c, &sink, "PatronManager");
        tweak(c);
    })
    .await;
    let token = ts.add_user_with("admin@example.com", PASSWORD, true).await;
    let admin = basic("admin@example.com", &format!("{PASSWORD}{token}"));
    Env {
        _up: up,
        sink,
        ts,
        admin,
    }
}

async fn env() -> Env {
    env_with(|_| {}).await
}

fn email_of(user: &str) -> String {
    format!("{}@example.com", user.replace('@', "."))
}

async fn api(
    ts: &TestServer,
    auth: &str,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Reply {
    ts.client().api(auth, method, path, body).await
}

impl Env {
    /// Adds the named token `name` to `user` through the admin API and returns it, as the
    /// user's mailbox received it.
    async fn add(&self, user: &str, name: &str) -> String {
        let before = self.sink.to(&email_of(user)).len();
        let r = api(
            &self.ts,
            &self.admin,
            Method::POST,
            &format!("admin/users/{user}/tokens"),
            Some(serde_json::json!({ "name": name })),
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
        self.mailed(user, name, before).await
    }

    /// The token in the message about `name` after the first `before` messages to `user`.
    async fn mailed(&self, user: &str, name: &str, before: usize) -> String {
        let mails = self
            .sink
            .wait_for(&email_of(user), before + 1, Duration::from_secs(5))
            .await;
        let m = &mails[before];
        assert_eq!(
            m.header("subject").unwrap(),
            format!("Your new security token for {name}")
        );
        m.token()
    }

    async fn reset(&self, user: &str, name: &str) -> Reply {
        api(
            &self.ts,
            &self.admin,
            Method::POST,
            &format!("admin/users/{user}/tokens/{name}/reset"),
            None,
        )
        .await
    }
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

async fn basic_status(ts: &TestServer, user: &str, secret: &str) -> StatusCode {
    ts.client()
        .get(
            "/services/data/v59.0/sobjects",
            &[("authorization", &basic(user, secret))],
        )
        .await
        .status
}

async fn session_status(ts: &TestServer, sid: &str) -> StatusCode {
    ts.client()
        .get_with_session("/services/data/v59.0/sobjects", sid)
        .await
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mailed_named_token_logs_in_over_soap_oauth_and_basic_beside_the_default_one() {
    let e = env().await;
    let default = e.ts.add_user("bob@example.com").await;
    let loader = e.add("bob@example.com", "dataloader").await;
    let forms = e.add("bob@example.com", "formtool").await;
    assert_ne!(loader, forms);
    assert_eq!(loader.len(), default.len());
    let mail = &e.sink.to(&email_of("bob@example.com"))[0];
    assert!(mail.text().contains("\"dataloader\": use it there only"));

    for token in [&default, &loader, &forms] {
        let secret = format!("{PASSWORD}{token}");
        assert!(soap_ok(&e.ts, "bob@example.com", &secret).await);
        let r = e.ts.client().oauth_login("bob@example.com", &secret).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(
            basic_status(&e.ts, "bob@example.com", &secret).await,
            StatusCode::OK
        );
    }
    // A named token is one user's: another user's password with it is refused.
    let carol = e.ts.add_user("carol@example.com").await;
    assert!(!soap_ok(&e.ts, "carol@example.com", &format!("{PASSWORD}{loader}")).await);
    assert!(soap_ok(&e.ts, "carol@example.com", &format!("{PASSWORD}{carol}")).await);
    // The wrong password with a right named token is refused too.
    assert!(
        !soap_ok(
            &e.ts,
            "bob@example.com",
            &format!("wrong-{PASSWORD}{loader}")
        )
        .await
    );
    assert_not_stored(&e.ts, &[&loader, &forms]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resetting_one_named_token_ends_only_that_token_its_cache_and_its_sessions() {
    let e = env().await;
    let default = e.ts.add_user("bob@example.com").await;
    let loader = e.add("bob@example.com", "dataloader").await;
    let forms = e.add("bob@example.com", "formtool").await;
    let secret = |t: &str| format!("{PASSWORD}{t}");
    let s_default = e.ts.soap_login("bob@example.com", &secret(&default)).await;
    let s_loader = e.ts.soap_login("bob@example.com", &secret(&loader)).await;
    let s_forms = e.ts.soap_login("bob@example.com", &secret(&forms)).await;
    // Basic calls cached with each token (the cache-hit counter proves each entry exists).
    for t in [&default, &loader, &forms] {
        assert_basic_cached(&e.ts, "bob@example.com", &secret(t)).await;
    }

    let before = e.sink.to(&email_of("bob@example.com")).len();
    let r = e.reset("bob@example.com", "dataloader").await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    assert_eq!(r.json()["sent_to"], "b***@example.com");
    let new_loader = e.mailed("bob@example.com", "dataloader", before).await;
    assert_ne!(new_loader, loader);
    assert!(!r.text().contains(&new_loader));

    // The old value is refused everywhere, its cached Basic verification first (on the very
    // next request), then a fresh login.
    assert_eq!(
        basic_status(&e.ts, "bob@example.com", &secret(&loader)).await,
        StatusCode::UNAUTHORIZED
    );
    assert!(!soap_ok(&e.ts, "bob@example.com", &secret(&loader)).await);
    assert_eq!(
        session_status(&e.ts, &s_loader).await,
        StatusCode::UNAUTHORIZED
    );
    // Everything else holds: the other sessions, cached and fresh logins with the others.
    assert_eq!(session_status(&e.ts, &s_default).await, StatusCode::OK);
    assert_eq!(session_status(&e.ts, &s_forms).await, StatusCode::OK);
    for t in [&default, &forms, &new_loader] {
        assert_eq!(
            basic_status(&e.ts, "bob@example.com", &secret(t)).await,
            StatusCode::OK
        );
        assert!(soap_ok(&e.ts, "bob@example.com", &secret(t)).await);
    }
    // And a restart (sessions read back from the store) keeps it so.
    let e = Env {
        ts: e.ts.restart().await,
        ..e
    };
    assert_eq!(
        session_status(&e.ts, &s_loader).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(session_status(&e.ts, &s_forms).await, StatusCode::OK);
    assert!(!soap_ok(&e.ts, "bob@example.com", &secret(&loader)).await);
    assert!(soap_ok(&e.ts, "bob@example.com", &secret(&new_loader)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_named_token_stops_working_with_its_sessions_and_the_others_stay() {
    let e = env().await;
    let default = e.ts.add_user("bob@example.com").await;
    let loader = e.add("bob@example.com", "dataloader").await;
    let secret = |t: &str| format!("{PASSWORD}{t}");
    let s_default = e.ts.soap_login("bob@example.com", &secret(&default)).await;
    let s_loader = e.ts.soap_login("bob@example.com", &secret(&loader)).await;
    assert_eq!(
        basic_status(&e.ts, "bob@example.com", &secret(&loader)).await,
        StatusCode::OK
    );

    let r = api(
        &e.ts,
        &e.admin,
        Method::DELETE,
        "admin/users/bob@example.com/tokens/dataloader",
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["status"], "revoked");

    assert_eq!(
        basic_status(&e.ts, "bob@example.com", &secret(&loader)).await,
        StatusCode::UNAUTHORIZED
    );
    assert!(!soap_ok(&e.ts, "bob@example.com", &secret(&loader)).await);
    assert_eq!(
        session_status(&e.ts, &s_loader).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(session_status(&e.ts, &s_default).await, StatusCode::OK);
    assert!(soap_ok(&e.ts, "bob@example.com", &secret(&default)).await);
    // Gone: a second revocation and a reset find nothing.
    let r = api(
        &e.ts,
        &e.admin,
        Method::DELETE,
        "admin/users/bob@example.com/tokens/dataloader",
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.json()["error"], "no_such_token");
    // The name is free again: a new token under it is a new value.
    let again = e.add("bob@example.com", "dataloader").await;
    assert_ne!(again, loader);
    assert!(soap_ok(&e.ts, "bob@example.com", &secret(&again)).await);
    assert_eq!(
        session_status(&e.ts, &s_loader).await,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_names_are_checked_unique_and_bounded_in_the_apis_own_words() {
    let e = env_with(|c| c.tokens.max_named_per_user = 2).await;
    e.ts.add_user("bob@example.com").await;
    let add = |name: &str| {
        let body = serde_json::json!({ "name": name });
        api(
            &e.ts,
            &e.admin,
            Method::POST,
            "admin/users/bob@example.com/tokens",
            Some(body),
        )
    };
    for bad in [
        "default",
        "DataLoader",
        "-x",
        ".x",
        "a b",
        "ü",
        "",
        &"a".repeat(33),
    ] {
        let r = add(bad).await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{bad:?}: {}",
            r.text()
        );
        assert_eq!(r.json()["error"], "invalid_token_name");
    }
    e.add("bob@example.com", "dataloader").await;
    let r = add("dataloader").await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.json()["error"], "token_exists");
    e.add("bob@example.com", &"a".repeat(32)).await;
    let r = add("third").await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text());
    assert_eq!(r.json()["error"], "too_many_tokens");
    let r = e.reset("bob@example.com", "nosuch").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.json()["error"], "no_such_token");
    let r = api(
        &e.ts,
        &e.admin,
        Method::DELETE,
        "admin/users/bob@example.com/tokens/default",
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    // A body that is not the expected one, and an unknown user.
    let r = api(
        &e.ts,
        &e.admin,
        Method::POST,
        "admin/users/bob@example.com/tokens",
        Some(serde_json::json!({ "name": "x", "token": "chosen" })),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["error"], "invalid_request");
    let r = api(
        &e.ts,
        &e.admin,
        Method::GET,
        "admin/users/nobody@example.com/tokens",
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_shows_names_and_last_uses_and_never_a_token() {
    let e = env().await;
    let default = e.ts.add_user("bob@example.com").await;
    let loader = e.add("bob@example.com", "dataloader").await;
    let r =
        e.ts.client()
            .oauth_login("bob@example.com", &format!("{PASSWORD}{loader}"))
            .await;
    assert_eq!(r.status, StatusCode::OK);

    let r = api(
        &e.ts,
        &e.admin,
        Method::GET,
        "admin/users/bob@example.com/tokens",
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let tokens = r.json()["tokens"].as_array().unwrap().clone();
    assert_eq!(tokens.len(), 2);
    assert_eq!(tokens[0]["name"], "default");
    let t = &tokens[1];
    assert_eq!(t["name"], "dataloader");
    assert_eq!(t["state"], "active");
    assert_eq!(t["last_client_ip"], "127.0.0.1");
    assert_eq!(t["last_dialect"], "oauth");
    assert!(t["last_used_at"].as_u64().unwrap() > 0);
    for secret in [&default, &loader] {
        assert!(!r.text().contains(secret.as_str()));
    }

    // The CLI, through the admin socket: a table and JSON, no token either.
    let table = cli(&e.ts, &["token", "list", "bob@example.com"], None);
    assert!(table.contains("dataloader"), "{table}");
    assert!(
        table.contains("127.0.0.1") && table.contains("oauth"),
        "{table}"
    );
    let json = cli(&e.ts, &["token", "list", "bob@example.com", "--json"], None);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v[1]["name"], "dataloader");
    for out in [&table, &json] {
        assert!(!out.contains(&loader) && !out.contains(&default));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_adds_resets_and_revokes_named_tokens_by_mail() {
    let e = env().await;
    let default = e.ts.add_user("bob@example.com").await;
    let out = cli(
        &e.ts,
        &["token", "add", "bob@example.com", "--name", "nightly-sync"],
        None,
    );
    assert!(
        out.contains("nightly-sync") && out.contains("b***@example.com"),
        "{out}"
    );
    let sync = e.mailed("bob@example.com", "nightly-sync", 0).await;
    assert!(!out.contains(&sync));
    assert!(soap_ok(&e.ts, "bob@example.com", &format!("{PASSWORD}{sync}")).await);

    cli(
        &e.ts,
        &[
            "token",
            "reset",
            "bob@example.com",
            "--name",
            "nightly-sync",
        ],
        None,
    );
    let new_sync = e.mailed("bob@example.com", "nightly-sync", 1).await;
    assert!(!soap_ok(&e.ts, "bob@example.com", &format!("{PASSWORD}{sync}")).await);
    assert!(soap_ok(&e.ts, "bob@example.com", &format!("{PASSWORD}{new_sync}")).await);
    assert!(soap_ok(&e.ts, "bob@example.com", &format!("{PASSWORD}{default}")).await);

    // Without --name, today's reset of the default token; the named one stays.
    cli(&e.ts, &["token", "reset", "bob@example.com"], None);
    let mails = e
        .sink
        .wait_for(&email_of("bob@example.com"), 3, Duration::from_secs(5))
        .await;
    assert_eq!(
        mails[2].header("subject").unwrap(),
        "Your new PatronManager security token"
    );
    assert!(!soap_ok(&e.ts, "bob@example.com", &format!("{PASSWORD}{default}")).await);
    assert!(soap_ok(&e.ts, "bob@example.com", &format!("{PASSWORD}{new_sync}")).await);

    cli(
        &e.ts,
        &[
            "token",
            "revoke",
            "bob@example.com",
            "--name",
            "nightly-sync",
        ],
        None,
    );
    assert!(!soap_ok(&e.ts, "bob@example.com", &format!("{PASSWORD}{new_sync}")).await);

    // Refusals in the CLI's words, exit status 1.
    let o = tokio::task::block_in_place(|| {
        process::run(
            &cli_config(&e.ts),
            &["token", "add", "bob@example.com", "--name", "Bad Name"],
            None,
            &[],
        )
    });
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("invalid token name"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_a_named_token_is_refused_when_no_mail_could_carry_it() {
    let up = Upstream::start().await;
    let ts = TestServer::start(&up.url()).await;
    let admin_token = ts.add_user_with("admin@example.com", PASSWORD, true).await;
    let admin = basic("admin@example.com", &format!("{PASSWORD}{admin_token}"));
    ts.add_user("bob@example.com").await;
    let r = api(
        &ts,
        &admin,
        Method::POST,
        "admin/users/bob@example.com/tokens",
        Some(serde_json::json!({ "name": "dataloader" })),
    )
    .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    assert_eq!(r.json()["error"], "mail_not_configured");
    let o = tokio::task::block_in_place(|| {
        process::run(
            &cli_config(&ts),
            &["token", "add", "bob@example.com", "--name", "dataloader"],
            None,
            &[],
        )
    });
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("nobody would ever see the new token"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let user = ts
        .app()
        .store
        .user_by_name("bob@example.com")
        .unwrap()
        .unwrap();
    assert!(user.named_tokens.is_empty(), "nothing was added");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undeliverable_named_token_is_not_added_and_a_failed_reset_keeps_the_old_value() {
    let e = env().await;
    e.ts.add_user("bob@example.com").await;
    let loader = e.add("bob@example.com", "dataloader").await;
    e.sink.set(crate::support::smtp::Behaviour {
        refuse_data: true,
        ..Default::default()
    });
    let r = api(
        &e.ts,
        &e.admin,
        Method::POST,
        "admin/users/bob@example.com/tokens",
        Some(serde_json::json!({ "name": "formtool" })),
    )
    .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    let r = e.reset("bob@example.com", "dataloader").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    let user =
        e.ts.app()
            .store
            .user_by_name("bob@example.com")
            .unwrap()
            .unwrap();
    assert_eq!(user.named_tokens.len(), 1, "formtool was not added");
    assert!(user.named_tokens[0].pending.is_none());
    assert!(soap_ok(&e.ts, "bob@example.com", &format!("{PASSWORD}{loader}")).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_value_whose_delivery_a_crash_cut_short_works_until_the_next_reset_commits() {
    let e = env().await;
    e.ts.add_user("bob@example.com").await;
    let loader = e.add("bob@example.com", "dataloader").await;
    // What a process that died between the pending write and the commit leaves: a pending
    // value owned by another incarnation, whose mail may have gone out.
    let app = e.ts.app();
    let left = app.secrets.generate_token(24).unwrap();
    let user = app.store.user_by_name("bob@example.com").unwrap().unwrap();
    app.store
        .update_user(&user.id, &mut |u| {
            u.named_tokens[0].pending = Some(tokengate::store::TokenRecord {
                tag: app.secrets.token_tag(&left),
                length: left.len(),
                at: 0,
                owner: 0,
            });
        })
        .unwrap();
    assert!(soap_ok(&e.ts, "bob@example.com", &format!("{PASSWORD}{left}")).await);
    assert!(soap_ok(&e.ts, "bob@example.com", &format!("{PASSWORD}{loader}")).await);
    // The next reset keeps it valid while its own mail is on its way, then drops both.
    let r = e.reset("bob@example.com", "dataloader").await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let new = e.mailed("bob@example.com", "dataloader", 1).await;
    assert!(!soap_ok(&e.ts, "bob@example.com", &format!("{PASSWORD}{left}")).await);
    assert!(!soap_ok(&e.ts, "bob@example.com", &format!("{PASSWORD}{loader}")).await);
    assert!(soap_ok(&e.ts, "bob@example.com", &format!("{PASSWORD}{new}")).await);
}

async fn change_password(ts: &TestServer, user: &str, old: &str, new_password: &str) {
    let b = ts
        .client()
        .request(Method::POST, "/tokengate/v1/password")
        .header("authorization", basic(user, old))
        .header("content-type", "application/json");
    let r = ts
        .client()
        .call(
            b,
            serde_json::json!({ "new_password": new_password }).to_string(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_change_resets_and_mails_every_named_token() {
    let e = env().await;
    let default = e.ts.add_user("bob@example.com").await;
    let loader = e.add("bob@example.com", "dataloader").await;
    let forms = e.add("bob@example.com", "formtool").await;
    const NEW: &str = "Another-Passw0rd-2";
    change_password(
        &e.ts,
        "bob@example.com",
        &format!("{PASSWORD}{default}"),
        NEW,
    )
    .await;
    let mails = e
        .sink
        .wait_for(&email_of("bob@example.com"), 5, Duration::from_secs(5))
        .await;
    let subject = |i: usize| mails[i].header("subject").unwrap();
    assert_eq!(subject(2), "Your new PatronManager security token");
    let mut named: Vec<_> = (3..5).map(|i| (subject(i), mails[i].token())).collect();
    named.sort();
    assert_eq!(named[0].0, "Your new security token for dataloader");
    assert_eq!(named[1].0, "Your new security token for formtool");
    let new_default = mails[2].token();
    for old in [&default, &loader, &forms] {
        assert!(!soap_ok(&e.ts, "bob@example.com", &format!("{NEW}{old}")).await);
    }
    for new in [&new_default, &named[0].1, &named[1].1] {
        assert!(soap_ok(&e.ts, "bob@example.com", &format!("{NEW}{new}")).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_keep_named_tokens_a_password_change_resets_the_default_token_only() {
    let e = env_with(|c| c.tokens.keep_named_tokens_on_password_change = true).await;
    let default = e.ts.add_user("bob@example.com").await;
    let loader = e.add("bob@example.com", "dataloader").await;
    const NEW: &str = "Another-Passw0rd-2";
    change_password(
        &e.ts,
        "bob@example.com",
        &format!("{PASSWORD}{default}"),
        NEW,
    )
    .await;
    let mails = e
        .sink
        .wait_for(&email_of("bob@example.com"), 2, Duration::from_secs(5))
        .await;
    // The change answered once every mail it sends was accepted (delivery before commit), so
    // a mail for the named token would already be here.
    assert_eq!(e.sink.to(&email_of("bob@example.com")).len(), 2, "one mail");
    assert!(soap_ok(&e.ts, "bob@example.com", &format!("{NEW}{loader}")).await);
    assert!(
        soap_ok(
            &e.ts,
            "bob@example.com",
            &format!("{NEW}{}", mails[1].token())
        )
        .await
    );
    assert!(!soap_ok(&e.ts, "bob@example.com", &format!("{PASSWORD}{loader}")).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_names_the_token_and_the_metrics_count_its_kind_never_its_name() {
    let e = env().await;
    let default = e.ts.add_user("bob@example.com").await;
    let loader = e.add("bob@example.com", "dataloader").await;
    let named_before = metric(
        &e.ts.metrics(),
        "tokengate_token_logins_total{kind=\"named\"}",
    );
    let default_before = metric(
        &e.ts.metrics(),
        "tokengate_token_logins_total{kind=\"default\"}",
    );
    assert!(soap_ok(&e.ts, "bob@example.com", &format!("{PASSWORD}{loader}")).await);
    assert!(soap_ok(&e.ts, "bob@example.com", &format!("{PASSWORD}{loader}")).await);
    assert!(soap_ok(&e.ts, "bob@example.com", &format!("{PASSWORD}{default}")).await);
    assert!(!soap_ok(&e.ts, "bob@example.com", &format!("{PASSWORD}x{loader}")).await);

    let text = e.ts.metrics();
    assert_eq!(
        metric(&text, "tokengate_token_logins_total{kind=\"named\"}"),
        named_before + 2
    );
    assert_eq!(
        metric(&text, "tokengate_token_logins_total{kind=\"default\"}"),
        default_before + 1
    );
    assert!(!text.contains("dataloader"));

    e.ts.history_written().await;
    let r = api(
        &e.ts,
        &e.admin,
        Method::GET,
        "admin/history?user=bob@example.com",
        None,
    )
    .await;
    let rows = r.json()["rows"].as_array().unwrap().clone();
    let tokens: Vec<_> = rows
        .iter()
        .map(|r| (r["outcome"].as_str().unwrap(), r["token"].as_str()))
        .collect();
    assert_eq!(
        tokens,
        [
            ("bad_credentials", None),
            ("success", Some("default")),
            ("success", Some("dataloader")),
            ("success", Some("dataloader")),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_changes_are_audited_with_names_and_never_a_token() {
    let e = env().await;
    e.ts.add_user("bob@example.com").await;
    let loader = e.add("bob@example.com", "dataloader").await;
    let r = e.reset("bob@example.com", "dataloader").await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let new = e.mailed("bob@example.com", "dataloader", 1).await;
    let r = api(
        &e.ts,
        &e.admin,
        Method::DELETE,
        "admin/users/bob@example.com/tokens/dataloader",
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);

    let r = api(&e.ts, &e.admin, Method::GET, "admin/audit?limit=100", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let text = r.text();
    assert!(!text.contains(&loader) && !text.contains(&new));
    let records = r.json()["records"].as_array().unwrap().clone();
    let actions: Vec<_> = records
        .iter()
        .filter(|r| r["target"] == "bob@example.com")
        .map(|r| r["action"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(actions, ["token.revoke", "token.reset", "token.add"]);
    for r in records.iter().filter(|r| r["target"] == "bob@example.com") {
        assert_eq!(r["actor"], "admin@example.com");
    }
    let add = &records.iter().find(|r| r["action"] == "token.add").unwrap()["changes"];
    let fields: Vec<_> = add
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["field"].as_str().unwrap().to_owned())
        .collect();
    assert!(fields.contains(&"named_tokens".to_owned()), "{fields:?}");
    assert!(
        fields.contains(&"token dataloader".to_owned()),
        "{fields:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_self_service_api_reaches_only_the_callers_own_tokens() {
    let e = env().await;
    let bob = e.ts.add_user("bob@example.com").await;
    let alice = e.ts.add_user("alice@example.com").await;
    let alice_loader = e.add("alice@example.com", "dataloader").await;
    let bob_sid =
        e.ts.soap_login("bob@example.com", &format!("{PASSWORD}{bob}"))
            .await;
    let as_bob = format!("Bearer {bob_sid}");

    let r = api(
        &e.ts,
        &as_bob,
        Method::POST,
        "tokens",
        Some(serde_json::json!({ "name": "dataloader" })),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let bob_loader = e.mailed("bob@example.com", "dataloader", 0).await;
    assert!(soap_ok(&e.ts, "bob@example.com", &format!("{PASSWORD}{bob_loader}")).await);

    let r = api(&e.ts, &as_bob, Method::GET, "tokens", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["username"], "bob@example.com");
    assert_eq!(r.json()["tokens"].as_array().unwrap().len(), 2);

    let r = api(
        &e.ts,
        &as_bob,
        Method::POST,
        "tokens/dataloader/reset",
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let bob_new = e.mailed("bob@example.com", "dataloader", 1).await;
    let r = api(&e.ts, &as_bob, Method::DELETE, "tokens/dataloader", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(!soap_ok(&e.ts, "bob@example.com", &format!("{PASSWORD}{bob_new}")).await);
    // Alice's token of the same name was never touched, and no mail went to her.
    assert!(
        soap_ok(
            &e.ts,
            "alice@example.com",
            &format!("{PASSWORD}{alice_loader}")
        )
        .await
    );
    assert_eq!(e.sink.to(&email_of("alice@example.com")).len(), 1);
    assert!(soap_ok(&e.ts, "alice@example.com", &format!("{PASSWORD}{alice}")).await);
    // Bob cannot name another user: the admin endpoints refuse him.
    let r = api(
        &e.ts,
        &as_bob,
        Method::DELETE,
        "admin/users/alice@example.com/tokens/dataloader",
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // No credential: 401.
    let r = e.ts.client().get("/tokengate/v1/tokens", &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // A self-service change is in the audit trail with the user as the actor.
    let r = api(&e.ts, &e.admin, Method::GET, "admin/audit?limit=100", None).await;
    let records = r.json()["records"].as_array().unwrap().clone();
    assert!(
        records
            .iter()
            .any(|r| r["action"] == "token.add" && r["actor"] == "bob@example.com")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_carries_named_tokens_to_the_restored_store() {
    let e = env().await;
    e.ts.add_user("bob@example.com").await;
    let loader = e.add("bob@example.com", "dataloader").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup.jsonl");
    let store = e.ts.app().store.clone();
    let f = file.clone();
    tokio::task::spawn_blocking(move || tokengate::backup::backup(store.as_ref(), &f).unwrap())
        .await
        .unwrap();
    let restored =
        tokengate::store::sled::SledStore::open(&dir.path().join("db"), 8 << 20).unwrap();
    tokengate::backup::restore(&restored, &file).unwrap();
    use tokengate::store::Store as _;
    let user = restored.user_by_name("bob@example.com").unwrap().unwrap();
    let t = user.named_token("dataloader").expect("the named token");
    assert_eq!(t.tag, Some(e.ts.app().secrets.token_tag(&loader)));
    assert_eq!(t.serial, user.named_token_serial);
    assert!(!std::fs::read_to_string(&file).unwrap().contains(&loader));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_the_console_a_user_adds_resets_and_revokes_their_integration_tokens_after_confirming() {
    let e = env().await;
    let user = "bob@example.com";
    let default = e.ts.add_user(user).await;
    let b = crate::console::Browser::sign_in(&e.ts, user, PASSWORD)
        .await
        .unwrap();
    let secret = |t: &str| format!("{PASSWORD}{t}");

    // Add: the token is emailed (never shown) and listed by name.
    let before = e.sink.to(&email_of(user)).len();
    let r = b
        .submit_raw("/settings", "/settings/tokens", &[("name", "dataloader")])
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
    let loader = e.mailed(user, "dataloader", before).await;
    let page = b.get("/settings").await.text();
    assert!(
        page.contains("The token dataloader was added and emailed to b***@example.com."),
        "{page}"
    );
    assert!(
        page.contains(r#"<td data-label="Name">dataloader</td>"#),
        "{page}"
    );
    assert!(!page.contains(&loader));
    assert!(soap_ok(&e.ts, user, &secret(&loader)).await);

    // A name the rules refuse: the field's error, the typed name kept, nothing added.
    let r = b
        .submit("/settings", "/settings/tokens", &[("name", "Data Loader")])
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let html = r.text();
    assert!(html.contains(r##"<a href="#token-name">"##), "{html}");
    assert!(html.contains(r#"value="Data Loader""#), "{html}");
    assert!(
        html.contains(r#"aria-invalid="true" aria-describedby="token-name-error token-name-hint""#)
    );
    assert_eq!(e.sink.to(&email_of(user)).len(), before + 1);

    // Reset and revoke first show a confirmation; without confirm=yes nothing changes.
    let confirm = b.get("/settings/tokens/dataloader/reset").await;
    assert_eq!(confirm.status, StatusCode::OK);
    assert!(
        confirm
            .text()
            .contains("A new value of the token dataloader is emailed")
    );
    let r = b
        .submit_raw("/settings", "/settings/tokens/dataloader/revoke", &[])
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.text().contains("Revoke the token dataloader"));
    assert!(soap_ok(&e.ts, user, &secret(&loader)).await);

    // Reset, confirmed: a new value is mailed, the old one is refused, the default still works.
    let before = e.sink.to(&email_of(user)).len();
    let r = b
        .submit_raw(
            "/settings",
            "/settings/tokens/dataloader/reset",
            &[("confirm", "yes")],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
    let fresh = e.mailed(user, "dataloader", before).await;
    assert!(!soap_ok(&e.ts, user, &secret(&loader)).await);
    assert!(soap_ok(&e.ts, user, &secret(&fresh)).await);
    assert!(soap_ok(&e.ts, user, &secret(&default)).await);

    // Revoke, confirmed: the token no longer logs in and is no longer listed.
    let r = b
        .submit(
            "/settings",
            "/settings/tokens/dataloader/revoke",
            &[("confirm", "yes")],
        )
        .await;
    let page = r.text();
    assert!(page.contains("The token dataloader was revoked"), "{page}");
    assert!(!page.contains(r#"<td data-label="Name">dataloader"#));
    assert!(!soap_ok(&e.ts, user, &secret(&fresh)).await);
    assert!(soap_ok(&e.ts, user, &secret(&default)).await);

    // Someone else's token name, or the default one, is not reachable from here.
    let r = b.get("/settings/tokens/default/revoke").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

/// The token endpoint with a form, for the refresh tests.
async fn token_endpoint(ts: &TestServer, fields: &[(&str, &str)]) -> Reply {
    let c = ts.client();
    let b = c
        .request(Method::POST, "/services/oauth2/token")
        .header("content-type", "application/x-www-form-urlencoded");
    c.call(b, serde_urlencoded::to_string(fields).unwrap())
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_token_ends_with_the_named_token_its_login_used_and_outlives_the_others() {
    let e = env_with(|c| {
        let mut client = tokengate::config::OAuthClient::new("sync-client", "sync-secret");
        client.refresh_tokens = true;
        c.oauth_clients.push(client);
    })
    .await;
    let user = "bob@example.com";
    let default = e.ts.add_user(user).await;
    let loader = e.add(user, "dataloader").await;
    let login = |token: String| {
        let ts = &e.ts;
        async move {
            let pw = format!("{PASSWORD}{token}");
            let r = token_endpoint(
                ts,
                &[
                    ("grant_type", "password"),
                    ("client_id", "sync-client"),
                    ("client_secret", "sync-secret"),
                    ("username", user),
                    ("password", &pw),
                ],
            )
            .await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
            r.json()["refresh_token"].as_str().unwrap().to_owned()
        }
    };
    let refresh = |rt: String| {
        let ts = &e.ts;
        async move {
            token_endpoint(
                ts,
                &[
                    ("grant_type", "refresh_token"),
                    ("client_id", "sync-client"),
                    ("client_secret", "sync-secret"),
                    ("refresh_token", &rt),
                ],
            )
            .await
        }
    };
    let with_loader = login(loader.clone()).await;
    let with_default = login(default.clone()).await;

    // Redeemed, the family's session is the named token's: it ends with that token.
    let r = refresh(with_loader).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let sid = r.json()["access_token"].as_str().unwrap().to_owned();
    let with_loader = r.json()["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(session_status(&e.ts, &sid).await, StatusCode::OK);

    let before = e.sink.to(&email_of(user)).len();
    assert_eq!(
        e.reset(user, "dataloader").await.status,
        StatusCode::ACCEPTED
    );
    e.mailed(user, "dataloader", before).await;
    let r = refresh(with_loader).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert_eq!(r.json()["error"], "invalid_grant");
    assert_eq!(session_status(&e.ts, &sid).await, StatusCode::UNAUTHORIZED);

    // The family the default token started is untouched by the named token's reset.
    let r = refresh(with_default).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}
