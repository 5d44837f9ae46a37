//! The console's flow: every form answers 303 See Other to a page that shows its outcome once
//! (Post/Redirect/Get), destructive actions ask first, no administrator disables or demotes
//! themselves and the last enabled one is never taken (console, admin API and CLI alike, and
//! under concurrent demotions), and Setup → Users' views, natural sort, bulk actions and the
//! list kept across them.

use crate::console::{Browser, env, inbox, run_browser, step, table_rows};
use crate::support::*;
use http::{Method, StatusCode};

const BASE: &str = "/tokengate/console";

/// Posts `fields` (and the session's CSRF token) to `action`; the raw answer.
async fn post(b: &Browser<'_>, action: &str, fields: &[(&str, &str)]) -> Reply {
    b.submit_raw("/settings", action, fields).await
}

/// An admin API call; `body` is JSON, or empty for none.
async fn api(ts: &TestServer, auth: &str, method: Method, path: &str, body: &str) -> Reply {
    let body = (!body.is_empty()).then(|| serde_json::from_str(body).unwrap());
    let path = format!("admin/{path}");
    ts.client().api(auth, method, &path, body).await
}

/// A form: where it posts, its fields, and what the page it leads to says.
type Form<'a> = (String, Vec<(&'a str, &'a str)>, &'a str);

#[tokio::test]
async fn every_console_form_answers_see_other_to_a_page_that_shows_its_outcome_once() {
    let (_up, sink, ts) = env().await;
    ts.add_user_with("boss@example.com", PASSWORD, true).await;
    ts.add_user_with("deputy@example.com", PASSWORD, true).await;
    ts.add_user("emp@example.com").await;
    let b = Browser::sign_in(&ts, "boss@example.com", PASSWORD)
        .await
        .unwrap();
    let emp = "/setup/users/emp%40example.com";
    let list = "view=active&q=emp&sort=email&dir=desc&page=1";
    // Every form, with fields that make it act (or be refused without a change).
    let forms: Vec<Form> = vec![
        (
            "/settings/reset-token".into(),
            vec![],
            "A new security token was emailed",
        ),
        (
            "/settings/password".into(),
            vec![
                ("current_password", PASSWORD),
                ("new_password", "Changed1pass"),
            ],
            "Your password was changed",
        ),
        (
            "/setup/compliance".into(),
            vec![("enabled", "on"), ("address", "audit@example.org")],
            "Saved.",
        ),
        (
            "/setup/users".into(),
            vec![
                ("username", "made@example.com"),
                ("email", "made@example.com"),
                ("password", "Made1pass!"),
            ],
            "User made@example.com was created",
        ),
        (
            format!("{emp}/disable"),
            vec![("confirm", "yes"), ("list", list)],
            "emp@example.com is now disabled.",
        ),
        (
            format!("{emp}/enable"),
            vec![("list", list)],
            "emp@example.com is now enabled.",
        ),
        (
            format!("{emp}/unlock"),
            vec![],
            "emp@example.com was unlocked.",
        ),
        (
            format!("{emp}/grant-admin"),
            vec![],
            "emp@example.com is now an administrator.",
        ),
        (
            format!("{emp}/revoke-admin"),
            vec![("confirm", "yes")],
            "emp@example.com is no longer an administrator.",
        ),
        (
            format!("{emp}/reset-token"),
            vec![("confirm", "yes")],
            "A new security token for emp@example.com",
        ),
        (
            format!("{emp}/reset-mfa"),
            vec![],
            "two-factor authentication was reset",
        ),
        (
            format!("{emp}/rotation"),
            vec![("every", "24h")],
            "now rotates every 1day",
        ),
        (
            format!("{emp}/login-ranges"),
            vec![("ranges", "127.0.0.1")],
            "login ranges were saved",
        ),
        (
            format!("{emp}/profile"),
            vec![("email", "emp@example.com"), ("full_name", "Emp")],
            "emp@example.com was saved.",
        ),
        (
            "/setup/users/bulk".into(),
            vec![
                ("action", "reset-token"),
                ("user", "emp@example.com"),
                ("confirm", "yes"),
                ("list", list),
            ],
            "1 reset.",
        ),
        // Refused, nothing changed: redirected too, with the error.
        (
            "/setup/users/boss%40example.com/revoke-admin".into(),
            vec![("confirm", "yes")],
            "cannot disable, demote or delete their own account",
        ),
        (
            format!("{emp}/delete"),
            vec![("confirm", "yes"), ("list", list)],
            "emp@example.com was deleted.",
        ),
        ("/signout".into(), vec![], "Sign in"),
    ];
    for (action, fields, shown) in &forms {
        let r = post(&b, action, fields).await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{action}: {}", r.text());
        let to = r.header("location").unwrap().to_owned();
        assert!(to.starts_with(BASE), "{action} → {to}");
        let page = ts.client().get(&to, &[("cookie", &b.cookie())]).await;
        assert_eq!(page.status, StatusCode::OK, "{action} → {to}");
        assert!(
            page.text().contains(shown),
            "{action} → {to}: {}",
            page.text()
        );
        // Shown once: the same page again has no message.
        if action != "/signout" {
            let again = ts.client().get(&to, &[("cookie", &b.cookie())]).await;
            assert!(!again.text().contains(shown), "{action}: shown twice");
        }
        // A list's actions go back to the same list, search and view kept.
        if fields.contains(&("list", list)) {
            assert!(
                to.contains("view%3Dactive%26q%3Demp%26sort%3Demail%26dir%3Ddesc")
                    || to.ends_with(&format!("?{list}")),
                "{action} → {to}"
            );
        }
    }
    assert!(ts.app().users.show("emp@example.com").is_err());
    assert!(ts.app().users.show("boss@example.com").unwrap().admin);
    assert!(ts.app().users.show("made@example.com").is_ok());
    assert_eq!(
        sink.to(&inbox("boss@example.com")).len(),
        2,
        "one mail for the reset, one for the password change"
    );
}

#[tokio::test]
async fn destructive_actions_show_a_confirmation_and_change_nothing_without_confirm_yes() {
    let (_up, sink, ts) = env().await;
    ts.add_user_with("boss@example.com", PASSWORD, true).await;
    ts.add_user_with("alice@example.com", PASSWORD, true).await;
    let b = Browser::sign_in(&ts, "boss@example.com", PASSWORD)
        .await
        .unwrap();
    let alice = "/setup/users/alice%40example.com";
    for (action, says) in [
        (
            "disable",
            "alice@example.com&#x27;s sessions end at once and their integrations stop logging in until an admin enables",
        ),
        ("revoke-admin", "will no longer reach the Setup pages"),
        (
            "reset-token",
            "A new security token is emailed to alice@example.com (a***@example.com)",
        ),
        ("delete", "this cannot be undone"),
    ] {
        for fields in [vec![], vec![("confirm", "no")]] {
            let r = post(&b, &format!("{alice}/{action}"), &fields).await;
            assert_eq!(r.status, StatusCode::OK, "{action}");
            // minijinja escapes '/' in attributes as "&#x2f;", which browsers read as '/'.
            let html = r.text().replace("&#x2f;", "/");
            assert!(html.contains(says), "{action}: {html}");
            assert!(html.contains(r#"name="confirm" value="yes""#), "{action}");
            assert!(
                html.contains(&format!(r#"action="{BASE}{alice}/{action}""#)),
                "{action}: the Confirm button posts the same form"
            );
            assert!(
                html.contains(&format!(r#"<a href="{BASE}{alice}?"#)),
                "{action}: Cancel goes back to the user's page"
            );
        }
    }
    let shown = ts.app().users.show("alice@example.com").unwrap();
    assert!(!shown.disabled && shown.admin, "nothing changed: {shown:?}");
    assert!(sink.mails().is_empty(), "no token was reset");
    // Confirmed: done.
    let r = post(&b, &format!("{alice}/disable"), &[("confirm", "yes")]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert!(ts.app().users.show("alice@example.com").unwrap().disabled);
    // Actions that end nothing need no confirmation.
    let r = post(&b, &format!("{alice}/enable"), &[]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert!(!ts.app().users.show("alice@example.com").unwrap().disabled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_admin_demotes_themselves_and_the_last_enabled_admin_stays_in_every_dialect() {
    let (_up, _sink, ts) = env().await;
    let token = ts.add_user_with("boss@example.com", PASSWORD, true).await;
    ts.add_user_with("gone@example.com", PASSWORD, true).await;
    ts.add_user("emp@example.com").await;
    let auth = basic("boss@example.com", &format!("{PASSWORD}{token}"));
    // The admin API: self-demotion, in every form, is 409 self_demotion.
    for (method, path, body) in [
        (Method::POST, "users/boss@example.com/disable", ""),
        (
            Method::PUT,
            "users/boss@example.com/admin",
            r#"{"admin": false}"#,
        ),
        (Method::DELETE, "users/boss@example.com", ""),
    ] {
        let r = api(&ts, &auth, method.clone(), path, body).await;
        assert_eq!(
            r.status,
            StatusCode::CONFLICT,
            "{method} {path}: {}",
            r.text()
        );
        assert_eq!(r.json()["error"], "self_demotion", "{method} {path}");
        assert!(
            r.json()["message"]
                .as_str()
                .unwrap()
                .contains("cannot disable, demote or delete their own account")
        );
    }
    // Another admin, disabled: boss is the last enabled one. The CLI (which acts as a local
    // account, never as boss) cannot take boss away either.
    let r = api(
        &ts,
        &auth,
        Method::POST,
        "users/gone@example.com/disable",
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    for args in [
        vec!["user", "disable", "boss@example.com"],
        vec!["user", "revoke-admin", "boss@example.com"],
        vec!["user", "delete", "boss@example.com", "--yes"],
    ] {
        let o = tokio::task::block_in_place(|| process::run(&cli_config(&ts), &args, None, &[]));
        assert!(!o.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("would leave no enabled administrator"),
            "{args:?}: {err}"
        );
    }
    let boss = ts.app().users.show("boss@example.com").unwrap();
    assert!(boss.admin && !boss.disabled);
    // The console: self-demotion refused with the error on the user's page.
    let b = Browser::sign_in(&ts, "boss@example.com", PASSWORD)
        .await
        .unwrap();
    let r = b
        .submit(
            "/setup/users/boss%40example.com",
            "/setup/users/boss%40example.com/disable",
            &[("confirm", "yes")],
        )
        .await;
    assert!(
        r.text()
            .contains("Administrators cannot disable, demote or delete their own account"),
        "{}",
        r.text()
    );
    // ... and the last admin, when a bulk action names them among others.
    let r = b
        .submit(
            "/setup/users",
            "/setup/users/bulk",
            &[
                ("action", "disable"),
                ("user", "emp@example.com"),
                ("user", "boss@example.com"),
                ("confirm", "yes"),
            ],
        )
        .await;
    assert!(
        r.text()
            .contains("1 disabled, 1 refused: boss@example.com (Administrators cannot"),
        "{}",
        r.text()
    );
    assert!(ts.app().users.show("emp@example.com").unwrap().disabled);
    assert!(!ts.app().users.show("boss@example.com").unwrap().disabled);
    // Enabling another admin makes boss's demotion possible (by that admin).
    let r = api(
        &ts,
        &auth,
        Method::POST,
        "users/gone@example.com/enable",
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    cli(&ts, &["user", "revoke-admin", "boss@example.com"], None);
    assert!(!ts.app().users.show("boss@example.com").unwrap().admin);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_admins_demoting_each_other_at_once_never_leave_no_admin() {
    let (_up, _sink, ts) = env().await;
    let admin = ts.app().admin.clone();
    // Each round: exactly two enabled admins, a and b, and each takes the other away at the
    // same moment; the survivor of a round is demoted (by the CLI) once the next pair exists.
    let mut survivor: Option<String> = None;
    for round in 0..20 {
        let (a, b) = (
            format!("a{round}@example.com"),
            format!("b{round}@example.com"),
        );
        ts.add_user_with(&a, PASSWORD, true).await;
        ts.add_user_with(&b, PASSWORD, true).await;
        if let Some(prev) = survivor.take() {
            cli(&ts, &["user", "revoke-admin", &prev], None);
        }
        let take = |actor: &str, subject: &str, disable: bool| {
            let (admin, actor, subject) = (admin.clone(), actor.to_owned(), subject.to_owned());
            tokio::spawn(async move {
                let actor = tokengate::audit::Actor::admin(
                    &actor,
                    "127.0.0.1".parse().unwrap(),
                    tokengate::audit::Channel::Api,
                );
                let req = if disable {
                    tokengate::admin::Request::UserSetDisabled {
                        username: subject,
                        disabled: true,
                    }
                } else {
                    tokengate::admin::Request::UserSetAdmin {
                        username: subject,
                        admin: false,
                    }
                };
                admin.perform(&actor, req).await
            })
        };
        let (x, y) = tokio::join!(take(&a, &b, round % 2 == 0), take(&b, &a, false));
        let (x, y) = (x.unwrap(), y.unwrap());
        assert!(
            x.is_ok() != y.is_ok(),
            "round {round}: exactly one succeeds: {:?} / {:?}",
            x.as_ref().err(),
            y.as_ref().err()
        );
        let refused = x.err().or(y.err()).unwrap();
        assert!(
            matches!(refused, tokengate::admin::AdminError::LastAdmin),
            "{refused}"
        );
        let active: Vec<String> = ts
            .app()
            .users
            .list()
            .unwrap()
            .into_iter()
            .filter(|u| u.admin && !u.disabled)
            .map(|u| u.username)
            .collect();
        assert_eq!(active.len(), 1, "round {round}: {active:?}");
        survivor = active.into_iter().next();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_page_views_sort_naturally_and_keep_search_view_and_page_after_a_bulk_reset() {
    let (_up, sink, ts) = env().await;
    ts.add_user_with("boss@example.com", PASSWORD, true).await;
    for n in [10, 2, 1, 30, 21, 3] {
        ts.add_user(&format!("user.{n}@example.com")).await;
    }
    for n in 0..25 {
        ts.add_user(&format!("page{n:02}@example.com")).await;
    }
    ts.add_user("api@example.com").await;
    cli(
        &ts,
        &["user", "set", "api@example.com", "--api-only", "true"],
        None,
    );
    cli(&ts, &["user", "disable", "user.3@example.com"], None);
    let b = Browser::sign_in(&ts, "boss@example.com", PASSWORD)
        .await
        .unwrap();
    let names = |html: &str| -> Vec<String> {
        table_rows(html)
            .into_iter()
            .filter_map(|r| r.get(1).cloned())
            .collect()
    };
    // Natural order, both ways.
    let html = b.get("/setup/users?q=user.&sort=username").await.text();
    assert_eq!(
        names(&html),
        [
            "user.1", "user.2", "user.3", "user.10", "user.21", "user.30"
        ]
        .map(|n| format!("{n}@example.com"))
    );
    assert!(html.contains(r#"aria-sort="ascending""#));
    let html = b
        .get("/setup/users?q=user.&sort=username&dir=desc")
        .await
        .text();
    assert_eq!(names(&html)[0], "user.30@example.com");
    assert!(html.contains(r#"aria-sort="descending""#));
    // Views.
    let view = async |v: &str| names(&b.get(&format!("/setup/users?view={v}")).await.text());
    assert_eq!(view("disabled").await, ["user.3@example.com"]);
    assert_eq!(view("admins").await, ["boss@example.com"]);
    assert_eq!(view("api").await, ["api@example.com"]);
    assert!(
        !view("active")
            .await
            .contains(&"user.3@example.com".to_owned())
    );
    // Page 2 of a search, then a bulk reset of two users on it: one confirmation naming both,
    // one mail each, and back on page 2 of the same search and view.
    let list = "/setup/users?view=active&q=page&sort=username&dir=asc&page=2";
    let html = b.get(list).await.text();
    assert_eq!(
        names(&html),
        ["page20", "page21", "page22", "page23", "page24"].map(|n| format!("{n}@example.com"))
    );
    let state = "view=active&q=page&sort=username&dir=asc&page=2";
    let picked = [
        ("user", "page21@example.com"),
        ("user", "page23@example.com"),
    ];
    let mut fields = vec![("action", "reset-token"), ("list", state)];
    fields.extend(picked);
    let r = b.submit_raw(list, "/setup/users/bulk", &fields).await;
    assert_eq!(r.status, StatusCode::OK);
    let confirm = r.text();
    assert!(
        confirm.contains("<li>page21@example.com</li><li>page23@example.com</li>"),
        "{confirm}"
    );
    assert!(confirm.contains("Reset token 2 users"));
    assert!(sink.mails().is_empty(), "nothing before the confirmation");
    fields.push(("confirm", "yes"));
    let r = b.submit_raw(list, "/setup/users/bulk", &fields).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(
        r.header("location"),
        Some(&*format!("{BASE}/setup/users?{state}"))
    );
    let page = b
        .get(&r.header("location").unwrap()[BASE.len()..])
        .await
        .text();
    assert!(page.contains("2 reset."), "{page}");
    assert!(page.contains(r#"value="page""#), "the search is kept");
    assert!(page.contains("Page 2 of 2"), "{page}");
    for u in ["page21@example.com", "page23@example.com"] {
        assert_eq!(sink.to(&inbox(u)).len(), 1, "{u}");
    }
    assert_eq!(sink.mails().len(), 2);
    // Last login: the sign-in above is boss's.
    ts.history_written().await;
    let html = b.get("/setup/users?view=admins").await.text();
    let row = &table_rows(&html)[0];
    assert!(row[4].ends_with("UTC"), "{row:?}");
    assert!(html.contains("<time datetime=\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_chromium_an_admin_cancels_a_disable_and_resets_two_tokens_in_bulk() {
    let (_up, sink, ts) = env().await;
    ts.add_user_with("chief@example.com", "Chief1pass", true)
        .await;
    for n in [1, 2, 10] {
        ts.add_user(&format!("bulk.{n}@example.com")).await;
    }
    // Screenshots go to TG_SCREENSHOTS (the README's come from here) or a temporary directory.
    let tmp = tempfile::tempdir().unwrap();
    let shots = std::env::var_os("TG_SCREENSHOTS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| tmp.path().to_owned());
    std::fs::create_dir_all(&shots).unwrap();
    let steps = tokio::task::block_in_place(|| {
        run_browser(
            &ts,
            "flow",
            &shots,
            &[
                ("TG_USER", "bulk.1@example.com"),
                ("TG_ADMIN", "chief@example.com"),
                ("TG_ADMIN_PASSWORD", "Chief1pass"),
                ("TG_BULK", "bulk.2@example.com,bulk.10@example.com"),
            ],
        )
    });
    let cancelled = step(&steps, "cancelled");
    assert!(
        cancelled["asked"]
            .as_str()
            .unwrap()
            .contains("bulk.1@example.com's sessions end at once"),
        "{cancelled}"
    );
    assert_eq!(cancelled["status"], "active", "{cancelled}");
    assert!(!ts.app().users.show("bulk.1@example.com").unwrap().disabled);
    let bulk = step(&steps, "bulk-reset");
    assert_eq!(
        bulk["listed"],
        serde_json::json!([
            "bulk.10@example.com",
            "bulk.2@example.com",
            "bulk.1@example.com"
        ]),
        "natural order, descending"
    );
    let confirm = bulk["confirm"].as_str().unwrap();
    assert!(
        confirm.contains("bulk.2@example.com") && confirm.contains("bulk.10@example.com"),
        "{confirm}"
    );
    assert_eq!(bulk["notice"], "2 reset.");
    assert_eq!(bulk["search"], "bulk");
    assert_eq!(bulk["view"], "active");
    assert!(bulk["url"].as_str().unwrap().contains("dir=desc"), "{bulk}");
    for u in ["bulk.2@example.com", "bulk.10@example.com"] {
        assert_eq!(sink.to(&inbox(u)).len(), 1, "{u}");
    }
    assert!(sink.to(&inbox("bulk.1@example.com")).is_empty());
    // Clicking through Revoke admin on one's own page, confirmed, is refused with a message;
    // the admin keeps Setup.
    let own = step(&steps, "self-demotion");
    assert!(
        own["alert"]
            .as_str()
            .unwrap()
            .contains("Administrators cannot disable, demote or delete their own account"),
        "{own}"
    );
    assert_eq!(own["setup"], 1, "{own}");
    let narrow = step(&steps, "narrow");
    for page in ["list", "table", "user", "confirm"] {
        assert!(narrow[page].as_u64().unwrap() <= 390, "{page}: {narrow}");
    }
    for name in ["confirm-disable", "confirm-bulk", "users", "users-narrow"] {
        assert!(shots.join(format!("{name}.png")).exists(), "{name}.png");
    }
}

#[tokio::test]
async fn a_refused_new_user_or_profile_names_its_field_and_keeps_what_was_typed() {
    let (_up, _sink, ts) = env().await;
    ts.add_user_with("boss@example.com", PASSWORD, true).await;
    ts.add_user("emp@example.com").await;
    let b = Browser::sign_in(&ts, "boss@example.com", PASSWORD)
        .await
        .unwrap();
    // (form, fields, the field's id, what the error says, a typed value shown again)
    for (page, action, fields, id, says, kept) in [
        (
            "/setup/new-user",
            "/setup/users",
            vec![
                ("username", "fresh@example.com"),
                ("email", "not-an-email"),
                ("full_name", "Fresh Person"),
                ("password", "Fresh1pass"),
            ],
            "ne",
            "Invalid email address",
            r#"value="Fresh Person""#,
        ),
        (
            "/setup/new-user",
            "/setup/users",
            vec![
                ("username", "emp@example.com"),
                ("email", "emp2@example.com"),
                ("password", "Fresh1pass"),
            ],
            "nu",
            "A user with that username exists.",
            r#"value="emp2@example.com""#,
        ),
        (
            "/setup/users/emp%40example.com",
            "/setup/users/emp%40example.com/login-ranges",
            vec![("ranges", "10.0.0.0/8\nbogus")],
            "lr",
            "Invalid login range",
            "10.0.0.0&#x2f;8\nbogus", // minijinja writes / as &#x2f;
        ),
    ] {
        let r = b.submit_raw(page, action, &fields).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{action}");
        let html = r.text();
        assert!(
            html.contains(&format!(r#"id="{id}""#))
                && html.contains(&format!(r#"aria-describedby="{id}-error"#))
                && html.contains(&format!(r#"<p id="{id}-error" class="field-error">"#)),
            "{action}: {html}"
        );
        assert!(html.contains(says), "{action}: {html}");
        assert!(html.contains(kept), "{action}: typed value kept: {html}");
        assert!(
            !html.contains("Fresh1pass"),
            "a password is never typed back"
        );
    }
    assert!(ts.app().users.show("fresh@example.com").is_err());
    assert!(
        ts.app()
            .users
            .show("emp@example.com")
            .unwrap()
            .login_ranges
            .is_empty()
    );
}
