//! The audit trail and the user lifecycle through every door: changes made with the admin
//! API, the console and the CLI are recorded with their actor, address, channel and what
//! changed (never a secret); the chain verifies and a tampered record is named; an email
//! change tells the old address first; API-only users never reach the console.

use std::time::Duration;

use http::{Method, StatusCode};

use super::console::{Browser, table_rows};
use crate::support::smtp::SmtpSink;
use crate::support::*;

async fn env() -> (Upstream, SmtpSink, TestServer) {
    let up = Upstream::start().await;
    let sink = SmtpSink::start().await;
    let ts = TestServer::start_with(&up.url(), |c| mail_to(c, &sink, "PatronManager")).await;
    (up, sink, ts)
}

/// An admin API call as `admin` (Basic password+token).
async fn api(
    ts: &TestServer,
    auth: &str,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Reply {
    let path = format!("admin/{path}");
    ts.client().api(auth, method, &path, body).await
}

fn records(reply: &Reply) -> Vec<serde_json::Value> {
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    reply.json()["records"].as_array().unwrap().clone()
}

/// The change of `field` in a record, as "before → after".
fn change(record: &serde_json::Value, field: &str) -> Option<(String, String)> {
    record["changes"].as_array()?.iter().find_map(|c| {
        (c["field"] == field).then(|| {
            let s = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
            (s(&c["before"]), s(&c["after"]))
        })
    })
}

fn local_user() -> String {
    let o = std::process::Command::new("id")
        .arg("-un")
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_admin_change_through_the_api_console_and_cli_is_in_the_audit_trail() {
    let (_up, _sink, ts) = env().await;
    let token = ts.add_user_with("boss@example.com", PASSWORD, true).await;
    let auth = basic("boss@example.com", &format!("{PASSWORD}{token}"));
    let new_password = "Sup3rSecretPassw0rd";

    // The API: create, change every field, reset the token, unlock, disable/enable.
    let r = api(
        &ts,
        &auth,
        Method::POST,
        "users",
        Some(serde_json::json!({
            "username": "int@example.com", "email": "int@example.com",
            "full_name": "Integration", "password": new_password, "api_only": true,
        })),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert_eq!(r.json()["user"]["api_only"], true);
    for (method, path, body) in [
        (
            Method::PATCH,
            "users/int@example.com",
            Some(serde_json::json!({ "full_name": "Formstack", "api_only": false })),
        ),
        (Method::POST, "users/int@example.com/disable", None),
        (Method::POST, "users/int@example.com/enable", None),
        (
            Method::PUT,
            "users/int@example.com/admin",
            Some(serde_json::json!({ "admin": true })),
        ),
        (
            Method::PUT,
            "users/int@example.com/rotation",
            Some(serde_json::json!({ "every": "24h" })),
        ),
        (
            Method::PUT,
            "users/int@example.com/login-ranges",
            Some(serde_json::json!({ "ranges": ["127.0.0.0/8"] })),
        ),
        (Method::POST, "users/int@example.com/token/reset", None),
        (Method::POST, "users/int@example.com/unlock", None),
        (
            Method::PUT,
            "settings/compliance-bcc",
            Some(serde_json::json!({ "enabled": true, "address": "audit@example.com" })),
        ),
    ] {
        let r = api(&ts, &auth, method.clone(), path, body).await;
        assert!(r.status.is_success(), "{method} {path}: {}", r.text());
    }
    // The console: disable.
    let browser = Browser::sign_in(&ts, "boss@example.com", PASSWORD)
        .await
        .unwrap_or_else(|r| panic!("sign-in: {}", r.text()));
    let r = browser
        .submit(
            "/setup/users/int%40example.com",
            "/setup/users/int%40example.com/disable",
            &[("confirm", "yes")],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    // The CLI, through the running server's admin socket: enable, revoke admin.
    cli(&ts, &["user", "enable", "int@example.com"], None);
    cli(&ts, &["user", "revoke-admin", "int@example.com"], None);
    cli(&ts, &["user", "mfa-reset", "int@example.com"], None);

    let all = records(&api(&ts, &auth, Method::GET, "audit?limit=1000", None).await);
    let actions: Vec<&str> = all
        .iter()
        .rev()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "user.create",
            "user.update",
            "user.disable",
            "user.enable",
            "user.admin.grant",
            "user.rotation",
            "user.login_ranges",
            "user.token_reset",
            "user.unlock",
            "compliance_bcc.set",
            "user.disable",
            "user.enable",
            "user.admin.revoke",
            "user.mfa_reset",
        ]
    );
    let by_action = |a: &str, channel: &str| {
        all.iter()
            .find(|r| r["action"] == a && r["channel"] == channel)
            .unwrap_or_else(|| panic!("no {a} on {channel}: {all:#?}"))
            .clone()
    };
    let created = by_action("user.create", "api");
    assert_eq!(created["actor"], "boss@example.com");
    assert_eq!(created["address"], "127.0.0.1");
    assert_eq!(created["target"], "int@example.com");
    assert_eq!(
        change(&created, "api_only"),
        Some(("-".into(), "true".into()))
    );
    let updated = by_action("user.update", "api");
    assert_eq!(
        change(&updated, "full_name"),
        Some(("Integration".into(), "Formstack".into()))
    );
    assert_eq!(
        change(&updated, "api_only"),
        Some(("true".into(), "false".into()))
    );
    assert_eq!(
        change(&by_action("user.disable", "console"), "disabled"),
        Some(("false".into(), "true".into()))
    );
    assert_eq!(
        by_action("user.disable", "console")["actor"],
        "boss@example.com"
    );
    let revoked = by_action("user.admin.revoke", "cli");
    assert_eq!(revoked["actor"], format!("cli:{}", local_user()));
    assert_eq!(revoked["address"], "local");
    assert_eq!(
        change(&revoked, "admin"),
        Some(("true".into(), "false".into()))
    );
    assert_eq!(
        change(&by_action("user.login_ranges", "api"), "login_ranges"),
        Some(("[]".into(), "[\"127.0.0.0/8\"]".into()))
    );
    assert_eq!(
        change(&by_action("compliance_bcc.set", "api"), "address"),
        Some(("none".into(), "audit@example.com".into()))
    );
    let reset = by_action("user.token_reset", "api");
    assert_eq!(
        change(&reset, "token").unwrap().1,
        "emailed to i***@example.com",
        "{reset}"
    );

    // Filters, CSV, the CLI's view and the log line agree; no secret anywhere.
    let mine = records(
        &api(
            &ts,
            &auth,
            Method::GET,
            "audit?actor=boss%40example.com&target=int%40example.com",
            None,
        )
        .await,
    );
    assert_eq!(mine.len(), 10, "{mine:#?}");
    let csv = api(&ts, &auth, Method::GET, "audit?format=csv", None).await;
    assert_eq!(csv.header("content-type"), Some("text/csv; charset=utf-8"));
    assert!(
        csv.text()
            .starts_with("seq,time,actor,address,channel,action,target,changes,hash\r\n")
    );
    let cli_json: serde_json::Value = serde_json::from_str(&cli(
        &ts,
        &["audit", "--format", "json", "--limit", "1000"],
        None,
    ))
    .unwrap();
    assert_eq!(cli_json.as_array().unwrap().len(), all.len());
    let table = cli(
        &ts,
        &["audit", "--target", "int@example.com", "--limit", "3"],
        None,
    );
    assert_eq!(table.lines().count(), 4, "{table}");
    let everything = format!("{all:?}{}{table}", csv.text());
    for secret in [new_password, PASSWORD, token.as_str()] {
        assert!(!everything.contains(secret), "a secret in the audit trail");
    }
    let m = ts.metrics();
    assert_eq!(
        metric(&m, "tokengate_audit_records_total"),
        all.len() as u64
    );

    // The chain verifies, through the API and the CLI.
    let v = api(&ts, &auth, Method::GET, "audit/verify", None).await;
    assert_eq!(v.status, StatusCode::OK, "{}", v.text());
    assert_eq!(v.json()["verified"]["records"], all.len());
    assert!(cli(&ts, &["audit", "verify"], None).contains("audit trail intact: 14 records"));

    // The console's Setup → Audit Trail shows them, filtered.
    let page = browser.get("/setup/audit?actor=cli%3A").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(table_rows(&page.text())[0][0].contains("No records match"));
    let page = browser.get("/setup/audit?target=int%40example.com").await;
    let rows = table_rows(&page.text());
    assert_eq!(rows.len(), 13);
    assert_eq!(rows[0][5], "user.mfa_reset");
    assert_eq!(rows[1][5], "user.admin.revoke");
    let csv = browser
        .get("/setup/audit.csv?target=int%40example.com")
        .await;
    assert_eq!(csv.status, StatusCode::OK);
    assert_eq!(
        csv.header("x-frame-options"),
        Some("DENY"),
        "a console answer"
    );
    assert_eq!(csv.text().lines().count(), 14, "{}", csv.text());
    let bad = api(&ts, &auth, Method::GET, "audit?since=yesterday-ish", None).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.json()["message"].as_str().unwrap().contains("since"));
    let page = browser.get("/setup/audit?since=yesterday-ish").await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST);
    assert!(rows[1][7].contains("admin: true → false"), "{:?}", rows[1]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tampered_or_removed_audit_record_is_named_by_audit_verify() {
    let (_up, _sink, ts) = env().await;
    ts.add_user_with("boss@example.com", PASSWORD, true).await;
    for name in ["a", "b", "c", "d"] {
        cli(
            &ts,
            &[
                "user",
                "add",
                &format!("{name}@example.com"),
                "--email",
                &format!("{name}@example.com"),
                "--password-stdin",
            ],
            Some("Passw0rd1\n"),
        );
    }
    cli(&ts, &["user", "disable", "b@example.com"], None);
    assert!(cli(&ts, &["audit", "verify"], None).contains("intact: 5 records"));
    let store = ts.app().store.clone();

    // Someone with write access to the store edits record 3 (hides who was created).
    let mut third = None;
    store
        .audit_scan(&mut |r| {
            if r.seq == 3 {
                third = Some(r);
            }
            true
        })
        .unwrap();
    let original = third.unwrap();
    let mut forged = original.clone();
    forged.target = "innocent@example.com".into();
    tamper(&ts, &forged).await;
    let o = run_cli(&ts, &["audit", "verify"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("broken at record 3"), "{err}");
    assert!(err.contains("do not match its hash"), "{err}");

    // Recomputing its hash does not help: the next record's link breaks.
    forged.hash = forged.computed_hash();
    tamper(&ts, &forged).await;
    let err = String::from_utf8_lossy(&run_cli(&ts, &["audit", "verify"]).stderr).into_owned();
    assert!(err.contains("broken at record 4"), "{err}");
    assert!(err.contains("previous-record hash"), "{err}");
    tamper(&ts, &original).await;
    assert!(cli(&ts, &["audit", "verify"], None).contains("intact"));
}

/// Overwrites one stored audit record as someone with database access would.
async fn tamper(ts: &TestServer, record: &tokengate::audit::Record) {
    ts.app()
        .store
        .import("audit", &record.seq.to_be_bytes(), &record.encode())
        .unwrap();
}

fn run_cli(ts: &TestServer, args: &[&str]) -> std::process::Output {
    tokio::task::block_in_place(|| process::run(&cli_config(ts), args, None, &[]))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_email_change_tells_the_old_address_first_then_the_new_one() {
    let (_up, sink, ts) = env().await;
    let token = ts.add_user_with("boss@example.com", PASSWORD, true).await;
    let auth = basic("boss@example.com", &format!("{PASSWORD}{token}"));
    ts.add_user("mover@example.com").await;
    let r = api(
        &ts,
        &auth,
        Method::PATCH,
        "users/mover@example.com",
        Some(serde_json::json!({ "email": "new-home@example.org" })),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["user"]["email"], "new-home@example.org");
    assert!(r.json()["note"].is_null(), "{}", r.text());
    let before = "mover.example.com@example.com";
    let old = sink.wait_for(before, 1, Duration::from_secs(5)).await;
    let new = sink
        .wait_for("new-home@example.org", 1, Duration::from_secs(5))
        .await;
    assert_eq!((old.len(), new.len()), (1, 1));
    let order: Vec<String> = sink
        .mails()
        .iter()
        .filter(|m| {
            m.header("subject")
                .is_some_and(|s| s.contains("email address"))
        })
        .map(|m| m.to[0].clone())
        .collect();
    assert_eq!(order, [before, "new-home@example.org"]);
    assert!(
        old[0].text().contains("go to new-home@example.org"),
        "{}",
        old[0].text()
    );
    assert!(old[0].text().contains("by boss@example.com"));
    assert!(
        new[0].text().contains(&format!("went to {before}")),
        "{}",
        new[0].text()
    );

    // Token mail now goes to the new address only; the CLI changes it too, and a bad
    // address is refused with nothing changed.
    cli(&ts, &["token", "reset", "mover@example.com"], None);
    assert_eq!(
        sink.wait_for("new-home@example.org", 2, Duration::from_secs(5))
            .await
            .len(),
        2
    );
    assert_eq!(sink.to(before).len(), 1);
    let r = api(
        &ts,
        &auth,
        Method::PATCH,
        "users/mover@example.com",
        Some(serde_json::json!({ "email": "not an address" })),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["error"], "invalid_request", "{}", r.text());
    let r = api(
        &ts,
        &auth,
        Method::PATCH,
        "users/mover@example.com",
        Some(serde_json::json!({})),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    let r = api(
        &ts,
        &auth,
        Method::PATCH,
        "users/mover@example.com",
        Some(serde_json::json!({ "password": "x" })),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    let shown = cli(
        &ts,
        &[
            "user",
            "set",
            "mover@example.com",
            "--full-name",
            "Mover Two",
            "--email",
            "third@example.net",
        ],
        None,
    );
    assert!(shown.contains("third@example.net"), "{shown}");
    assert_eq!(
        sink.wait_for("third@example.net", 1, Duration::from_secs(5))
            .await
            .len(),
        1
    );
    assert_eq!(
        sink.wait_for("new-home@example.org", 3, Duration::from_secs(5))
            .await
            .len(),
        3
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn api_only_users_log_in_through_the_apis_but_never_to_the_console() {
    let (_up, _sink, ts) = env().await;
    let token = ts.add_user_with("boss@example.com", PASSWORD, true).await;
    let auth = basic("boss@example.com", &format!("{PASSWORD}{token}"));
    let t = ts.add_user("int@example.com").await;
    // Signed in to the console, then made API only: the session ends on its next use.
    let browser = Browser::sign_in(&ts, "int@example.com", PASSWORD)
        .await
        .unwrap_or_else(|r| panic!("{}", r.text()));
    assert_eq!(browser.get("/settings").await.status, StatusCode::OK);
    cli(
        &ts,
        &["user", "set", "int@example.com", "--api-only", "true"],
        None,
    );
    let r = browser.get("/settings").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    // A correct password no longer opens the console, with a sentence that says why.
    let r = Browser::sign_in(&ts, "int@example.com", PASSWORD)
        .await
        .err()
        .expect("refused");
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.text().contains("API only"), "{}", r.text());
    // A wrong password gets the usual answer (API only says nothing to a guesser): the 401
    // and the page an unknown user gets, but for the username the form shows again.
    let r = Browser::sign_in(&ts, "int@example.com", "Wr0ngPassword")
        .await
        .err()
        .unwrap();
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    let stranger = Browser::sign_in(&ts, "nobody@example.com", "Wr0ngPassword")
        .await
        .err()
        .unwrap();
    assert_eq!(stranger.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.text().replace("int@example.com", "USER"),
        stranger.text().replace("nobody@example.com", "USER")
    );
    assert!(!r.text().contains("API only"));
    // The APIs work.
    ts.soap_login("int@example.com", &format!("{PASSWORD}{t}"))
        .await;
    let show = api(&ts, &auth, Method::GET, "users/int@example.com", None).await;
    assert_eq!(show.json()["user"]["api_only"], true);
    assert!(
        cli(&ts, &["user", "show", "int@example.com"], None).contains("API only:          true")
    );
    // And back.
    let r = api(
        &ts,
        &auth,
        Method::PATCH,
        "users/int@example.com",
        Some(serde_json::json!({ "api_only": false })),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        Browser::sign_in(&ts, "int@example.com", PASSWORD)
            .await
            .is_ok()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_edits_login_ranges_profiles_and_deletes_users() {
    let (_up, sink, ts) = env().await;
    ts.add_user_with("boss@example.com", PASSWORD, true).await;
    let t = ts.add_user("old@example.com").await;
    let browser = Browser::sign_in(&ts, "boss@example.com", PASSWORD)
        .await
        .ok()
        .unwrap();
    let page = "/setup/users/old%40example.com";
    assert_eq!(browser.get(page).await.status, StatusCode::OK);
    let r = browser
        .submit(
            page,
            "/setup/users/old%40example.com/login-ranges",
            &[("from", "user"), ("ranges", "192.0.2.0/24\n198.51.100.7")],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(r.text().contains("login ranges were saved"), "{}", r.text());
    assert_eq!(
        ts.app().users.show("old@example.com").unwrap().login_ranges,
        ["192.0.2.0/24", "198.51.100.7/32"]
    );
    // Outside the ranges now (the tests connect from 127.0.0.1).
    let soap = ts
        .client()
        .post(
            "/services/Soap/u/59.0",
            "text/xml",
            soap_login_body("old@example.com", &format!("{PASSWORD}{t}")),
        )
        .await;
    assert_eq!(soap.status, StatusCode::INTERNAL_SERVER_ERROR);
    let r = browser
        .submit(
            page,
            "/setup/users/old%40example.com/login-ranges",
            &[("from", "user"), ("ranges", "bogus")],
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.text().contains("Invalid login range"), "{}", r.text());
    let r = browser
        .submit(
            page,
            "/setup/users/old%40example.com/profile",
            &[
                ("from", "user"),
                ("email", "moved@example.org"),
                ("full_name", "Old <b>Timer</b>"),
                ("api_only", "on"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(r.text().contains("Old &lt;b&gt;Timer") && !r.text().contains("<b>Timer"));
    assert_eq!(
        sink.wait_for("moved@example.org", 1, Duration::from_secs(5))
            .await
            .len(),
        1
    );
    // Deleting asks first: anything but `confirm=yes` shows the confirmation page.
    for confirm in [None, Some("wrong")] {
        let fields: Vec<(&str, &str)> = confirm.map(|c| ("confirm", c)).into_iter().collect();
        let r = browser
            .submit(page, "/setup/users/old%40example.com/delete", &fields)
            .await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.text().contains("cannot be undone"), "{}", r.text());
        assert!(ts.app().users.show("old@example.com").is_ok());
    }
    let r = browser
        .submit(
            page,
            "/setup/users/old%40example.com/delete",
            &[("confirm", "yes")],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(r.text().contains("old@example.com was deleted"));
    assert!(ts.app().users.show("old@example.com").is_err());
    let audit = ts
        .app()
        .admin
        .audit
        .query(&tokengate::audit::Filter {
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    let actions: Vec<&str> = audit.iter().map(|r| r.action.as_str()).collect();
    assert_eq!(actions, ["user.delete", "user.update", "user.login_ranges"]);
    assert!(
        audit
            .iter()
            .all(|r| r.channel == tokengate::audit::Channel::Console)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_deletes_and_grants_admin_and_records_restore_and_backup() {
    let (_up, _sink, ts) = env().await;
    ts.add_user("gone@example.com").await;
    ts.add_user("promoted@example.com").await;
    let o = run_cli(&ts, &["user", "delete", "gone@example.com"]);
    assert!(!o.status.success(), "no terminal, no --yes: refused");
    assert!(String::from_utf8_lossy(&o.stderr).contains("--yes"));
    assert!(
        cli(&ts, &["user", "delete", "gone@example.com", "--yes"], None)
            .contains("deleted gone@example.com")
    );
    assert!(
        cli(&ts, &["user", "grant-admin", "promoted@example.com"], None)
            .contains("admin:             true")
    );
    let backup = ts.dir.path().join("b.json");
    cli(&ts, &["backup", backup.to_str().unwrap()], None);
    let audit = ts
        .app()
        .admin
        .audit
        .query(&tokengate::audit::Filter {
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    let actions: Vec<(&str, &str)> = audit
        .iter()
        .map(|r| (r.action.as_str(), r.target.as_str()))
        .collect();
    assert_eq!(
        actions,
        [
            ("backup", backup.to_str().unwrap()),
            ("user.admin.grant", "promoted@example.com"),
            ("user.delete", "gone@example.com"),
        ]
    );
    assert_eq!(
        audit[2]
            .changes
            .iter()
            .find(|c| c.field == "username")
            .map(|c| (c.before.clone(), c.after.clone())),
        Some((Some("gone@example.com".into()), None))
    );
}
